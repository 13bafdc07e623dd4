//! A per-thread cache of bound metric instruments, so that recording a message's metrics does
//! not hash its attributes.
//!
//! The SDK finds the series a measurement belongs to by hashing all its attributes (SipHash
//! over every key and value) and comparing them, on every call: for the five or six
//! messaging attributes that was about 2,200 instructions per measurement, four measurements
//! per message, the single largest cost of tracing a Kafka message. A *bound* instrument
//! (OpenTelemetry's `Counter::bind`/`Histogram::bind`) resolves its series once. Each thread
//! keeps the last [`CACHE_SIZE`] bindings it used, most recent first, keyed by the
//! instruments' owner, the instrument and the attributes, compared by value (a few short
//! string compares; no hashing, no lock, no allocation on a hit). A miss binds once through
//! the SDK. Bindings live as long as their cache entry; the SDK never evicts a bound series.

use std::cell::RefCell;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram};

/// Bindings kept per thread. A client uses a handful (an operation per destination, plus
/// the error variants), so a thread serving many clients and topics still hits.
pub(crate) const CACHE_SIZE: usize = 32;

/// One instrument of one [`crate::metrics::MessagingMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstrumentId {
    /// Which `MessagingMetrics` (unique per instance, shared by its clones).
    pub(crate) owner: u64,
    /// Which of its instruments.
    pub(crate) slot: u8,
}

enum Bound {
    Counter(BoundCounter<u64>),
    Histogram(BoundHistogram<f64>),
}

struct Entry {
    instrument: InstrumentId,
    attributes: Vec<KeyValue>,
    bound: Bound,
}

thread_local! {
    static CACHE: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Runs `use_bound` on this thread's binding of (`instrument`, `attributes`), binding it with
/// `bind` first on a miss. Returns `false`, doing nothing, when the cache is unavailable
/// (the thread is being torn down): the caller then records unbound.
fn with_bound(
    instrument: InstrumentId,
    attributes: &[KeyValue],
    bind: impl FnOnce() -> Bound,
    use_bound: impl FnOnce(&Bound),
) -> bool {
    CACHE
        .try_with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return false;
            };
            let found = cache
                .iter()
                .position(|e| e.instrument == instrument && e.attributes == attributes);
            match found {
                Some(0) => {}
                Some(index) => {
                    let hit = cache.remove(index);
                    cache.insert(0, hit);
                }
                None => {
                    cache.truncate(CACHE_SIZE - 1);
                    cache.insert(
                        0,
                        Entry {
                            instrument,
                            attributes: attributes.to_vec(),
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

/// Adds `value` to `counter`'s series for `attributes`.
pub(crate) fn add(
    instrument: InstrumentId,
    counter: &Counter<u64>,
    value: u64,
    attributes: &[KeyValue],
) {
    let recorded = with_bound(
        instrument,
        attributes,
        || Bound::Counter(counter.bind(attributes)),
        |bound| {
            if let Bound::Counter(bound) = bound {
                bound.add(value);
            }
        },
    );
    if !recorded {
        counter.add(value, attributes);
    }
}

/// Records `value` in `histogram`'s series for `attributes`.
pub(crate) fn record(
    instrument: InstrumentId,
    histogram: &Histogram<f64>,
    value: f64,
    attributes: &[KeyValue],
) {
    let recorded = with_bound(
        instrument,
        attributes,
        || Bound::Histogram(histogram.bind(attributes)),
        |bound| {
            if let Bound::Histogram(bound) = bound {
                bound.record(value);
            }
        },
    );
    if !recorded {
        histogram.record(value, attributes);
    }
}

/// How many bindings this thread holds (for tests).
#[cfg(test)]
pub(crate) fn cached() -> usize {
    CACHE.with(|cache| cache.borrow().len())
}
