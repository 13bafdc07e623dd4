//! A per-thread cache of bound metric instruments, so that recording a message's metrics does
//! not hash its attributes.
//!
//! The SDK finds the series a measurement belongs to by hashing all its attributes (SipHash
//! over every key and value) and comparing them, on every call: for the five or six
//! messaging attributes that was about 2,200 instructions per measurement, four measurements
//! per message, the single largest cost of tracing a Kafka message. A *bound* instrument
//! (OpenTelemetry's `Counter::bind`/`Histogram::bind`) resolves its series once. Each thread
//! keeps the last [`CACHE_SIZE`] counter and histogram bindings it used, most recent first, keyed by the
//! instruments' owner, the instrument and the attributes, compared by value (a few short
//! string compares; no hashing, no lock, no allocation on a hit). A miss binds once through
//! the SDK. Bindings live as long as their cache entry; the SDK never evicts a bound series.
//!
//! Bound instruments are an experimental OpenTelemetry API
//! (`opentelemetry/experimental_metrics_bound_instruments`), so this cache is built only with
//! mqtrace-core's opt-in feature `bound-instruments`; without it measurements go to the
//! instruments directly.

use std::cell::RefCell;
use std::sync::Arc;
use std::thread::LocalKey;

use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram};
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

struct Entry<B> {
    instrument: InstrumentId,
    /// Kept alive by the entry, so a list at this address is this list.
    attributes: Arc<[KeyValue]>,
    bound: B,
}

type Cache<B> = RefCell<Vec<Entry<B>>>;

thread_local! {
    static COUNTERS: Cache<BoundCounter<u64>> = const { RefCell::new(Vec::new()) };
    static HISTOGRAMS: Cache<BoundHistogram<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `use_bound` on this thread's binding of (`instrument`, `attributes`) in `cache`,
/// binding it with `bind` first on a miss. Returns `false`, doing nothing, when the cache is
/// unavailable (the thread is being torn down): the caller then records unbound.
///
/// `shared` is `attributes` as a shared list (a span's metric attributes), if it is one: the
/// entry then keeps that list, and the next measurement with the same list is found by its
/// address alone.
fn with_bound<B: 'static>(
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
fn same(cached: &[KeyValue], attributes: &[KeyValue]) -> bool {
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

/// Adds `value` to `counter`'s series for `attributes`.
pub(crate) fn add(
    instrument: InstrumentId,
    counter: &Counter<u64>,
    value: u64,
    attributes: &[KeyValue],
    shared: Option<&Arc<[KeyValue]>>,
) {
    let bind = || counter.bind(attributes);
    if !with_bound(&COUNTERS, instrument, attributes, shared, bind, |b| {
        b.add(value)
    }) {
        counter.add(value, attributes);
    }
}

/// Records `value` in `histogram`'s series for `attributes`.
pub(crate) fn record(
    instrument: InstrumentId,
    histogram: &Histogram<f64>,
    value: f64,
    attributes: &[KeyValue],
    shared: Option<&Arc<[KeyValue]>>,
) {
    let bind = || histogram.bind(attributes);
    if !with_bound(&HISTOGRAMS, instrument, attributes, shared, bind, |b| {
        b.record(value)
    }) {
        histogram.record(value, attributes);
    }
}

/// The most bindings this thread holds for one kind of instrument (for tests).
#[cfg(test)]
pub(crate) fn cached() -> usize {
    let counters = COUNTERS.with(|cache| cache.borrow().len());
    let histograms = HISTOGRAMS.with(|cache| cache.borrow().len());
    counters.max(histograms)
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
