//! A per-thread cache of metric series, so that recording a message's metrics does not hash
//! its attributes.
//!
//! The SDK finds the series a measurement belongs to by hashing all its attributes (SipHash
//! over every key and value) and comparing them, on every call: for the five or six
//! messaging attributes that is about 2,200 instructions per measurement, four measurements
//! per message, the single largest cost of tracing a Kafka message. Each thread keeps the
//! last [`CACHE_SIZE`] series of each kind it recorded into, most recent first, keyed by the
//! instruments' owner, the instrument and the attributes, compared by value (a few short
//! string compares; no hashing, no lock, no allocation on a hit); a miss resolves the series
//! once. What a series is depends on the build: a bound instrument with the feature
//! `bound-instruments` (`bound_metrics`), else mqtrace's own counter of an observable
//! counter (`observed_counter`).

use std::cell::RefCell;
use std::sync::Arc;
use std::thread::LocalKey;

use opentelemetry::{KeyValue, Value};

use crate::span::same_str;

/// Bindings kept per thread and instrument kind (counters, histograms). A client uses a
/// handful (an operation per destination, plus the error variants), so a thread serving many
/// clients and topics still hits.
pub(crate) const CACHE_SIZE: usize = 32;

/// One instrument of one [`crate::metrics::MessagingMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstrumentId {
    /// Which `MessagingMetrics` (unique per instance, shared by its clones).
    pub(crate) owner: u64,
    /// Which of its instruments.
    pub(crate) slot: u8,
}

/// A cached series: its instrument, attributes and handle.
pub(crate) struct Entry<B> {
    instrument: InstrumentId,
    /// Kept alive by the entry, so a list at this address is this list.
    attributes: Arc<[KeyValue]>,
    bound: B,
}

/// One thread's entries for one kind of series, most recent first.
pub(crate) type Cache<B> = RefCell<Vec<Entry<B>>>;

/// Runs `use_bound` on this thread's binding of (`instrument`, `attributes`) in `cache`,
/// binding it with `bind` first on a miss. Returns `false`, doing nothing, when the cache is
/// unavailable (the thread is being torn down): the caller then records unbound.
///
/// `shared` is `attributes` as a shared list (a span's metric attributes), if it is one: the
/// entry then keeps that list, and the next measurement with the same list is found by its
/// address alone.
pub(crate) fn with_series<B: 'static>(
    cache: &'static LocalKey<Cache<B>>,
    instrument: InstrumentId,
    attributes: &[KeyValue],
    shared: Option<&Arc<[KeyValue]>>,
    bind: impl FnOnce() -> B,
    use_bound: impl FnOnce(&B),
) -> bool {
    cache
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return false;
            };
            let found = cache.iter().position(|e| {
                e.instrument == instrument
                    && ((std::ptr::eq(e.attributes.as_ptr(), attributes.as_ptr())
                        && e.attributes.len() == attributes.len())
                        || same(&e.attributes, attributes))
            });
            match found {
                // Most recent first: one shift brings a hit to the front.
                Some(index) => cache[..=index].rotate_right(1),
                None => {
                    cache.truncate(CACHE_SIZE - 1);
                    cache.insert(
                        0,
                        Entry {
                            instrument,
                            attributes: shared.map_or_else(|| Arc::from(attributes), Arc::clone),
                            bound: bind(),
                        },
                    );
                }
            }
            use_bound(&cache[0].bound);
            true
        })
        .unwrap_or(false)
}

/// Whether two attribute lists are equal, in order. The same as `==`, cheaper for the way
/// clients record: their keys are static strings and their string values shared
/// (`Arc<str>`), so the same text usually sits at the same address, and comparing the
/// address and length settles it without comparing the bytes.
pub(crate) fn same(cached: &[KeyValue], attributes: &[KeyValue]) -> bool {
    cached.len() == attributes.len()
        && cached.iter().zip(attributes).all(|(a, b)| {
            same_str(a.key.as_str(), b.key.as_str()) && same_value(&a.value, &b.value)
        })
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => same_str(a.as_str(), b.as_str()),
        (Value::I64(a), Value::I64(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn same_agrees_with_eq() {
        let shared = opentelemetry::StringValue::from(Arc::<str>::from("orders"));
        let a = [
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", Value::String(shared.clone())),
            KeyValue::new("server.port", 9092_i64),
        ];
        let copy = [
            KeyValue::new("messaging.system".to_owned(), "kafka".to_owned()),
            KeyValue::new("messaging.destination.name", "orders".to_owned()),
            KeyValue::new("server.port", 9092_i64),
        ];
        let other = [
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", "orderz"),
            KeyValue::new("server.port", 9092_i64),
        ];
        assert!(same(&a, &a) && a[..] == a[..]);
        assert!(same(&a, &copy) && a[..] == copy[..]);
        assert!(!same(&a, &other) && a[..] != other[..]);
        assert!(!same(&a, &a[..2]));
        let port = [KeyValue::new("server.port", 9093_i64)];
        assert!(!same(&a[2..], &port));
        let mixed = [KeyValue::new("server.port", "9092")];
        assert!(!same(&a[2..], &mixed));
    }
}
