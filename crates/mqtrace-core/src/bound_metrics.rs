//! Bound instruments as metric series (feature `bound-instruments`): OpenTelemetry's
//! `Counter::bind`/`Histogram::bind` resolve a series once, and the per-thread
//! [`series_cache`](crate::series_cache) keeps the bindings. The SDK never evicts a bound
//! series.
//!
//! Bound instruments are an experimental OpenTelemetry API
//! (`opentelemetry/experimental_metrics_bound_instruments`), which the SDK must support too.

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundHistogram, Counter, Histogram};

use crate::series_cache::{Cache, InstrumentId, with_series};

thread_local! {
    static COUNTERS: Cache<BoundCounter<u64>> = const { RefCell::new(Vec::new()) };
    static HISTOGRAMS: Cache<BoundHistogram<f64>> = const { RefCell::new(Vec::new()) };
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
    if !with_series(&COUNTERS, instrument, attributes, shared, bind, |b| {
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
    if !with_series(&HISTOGRAMS, instrument, attributes, shared, bind, |b| {
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
