//! Message counters on OpenTelemetry's stable API without hashing attributes per message
//! (the build without the feature `bound-instruments`).
//!
//! An [`ObservedCounter`] keeps one atomic total per attribute set and reports the totals
//! through an observable counter, which the SDK reads at each collection: the exported data
//! is the same monotonic sum a synchronous counter gives (same name, unit, description and
//! attributes). Recording finds the atomic through the per-thread
//! [`series_cache`](crate::series_cache) (no hashing, no lock, no allocation on a hit) and adds
//! to it; only a thread's first measurement of a series takes the counter's lock. Totals are
//! never dropped: a series lives as long as its counter.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableCounter};

use crate::series_cache::{Cache, InstrumentId, same, with_series};

thread_local! {
    static TOTALS: Cache<Arc<AtomicU64>> = const { RefCell::new(Vec::new()) };
}

/// One series' running total.
struct Total {
    attributes: Arc<[KeyValue]>,
    value: Arc<AtomicU64>,
}

/// Every series of one counter.
#[derive(Default)]
struct Totals {
    series: Mutex<Vec<Total>>,
}

impl Totals {
    /// The running total of `attributes`, made on first use.
    fn of(&self, attributes: &[KeyValue], shared: Option<&Arc<[KeyValue]>>) -> Arc<AtomicU64> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(total) = series.iter().find(|t| same(&t.attributes, attributes)) {
            return Arc::clone(&total.value);
        }
        let value = Arc::new(AtomicU64::new(0));
        series.push(Total {
            attributes: shared.map_or_else(|| Arc::from(attributes), Arc::clone),
            value: Arc::clone(&value),
        });
        value
    }

    fn report(&self, observe: impl Fn(u64, &[KeyValue])) {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        for total in series.iter() {
            observe(total.value.load(Ordering::Relaxed), &total.attributes);
        }
    }
}

/// A `u64` counter recorded as per-series atomics and exported as an observable counter.
#[derive(Clone)]
pub(crate) struct ObservedCounter {
    totals: Arc<Totals>,
    /// Kept so the instrument (and its callback) lives as long as the counter.
    _instrument: ObservableCounter<u64>,
}

impl fmt::Debug for ObservedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let series = self
            .totals
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("ObservedCounter")
            .field("series", &series)
            .finish_non_exhaustive()
    }
}

impl ObservedCounter {
    /// The counter `name` on `meter`.
    pub(crate) fn new(
        meter: &Meter,
        name: &'static str,
        unit: &'static str,
        description: &'static str,
    ) -> Self {
        let totals = Arc::new(Totals::default());
        let reported = Arc::clone(&totals);
        let instrument = meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |observer| {
                reported.report(|value, attributes| observer.observe(value, attributes));
            })
            .build();
        Self {
            totals,
            _instrument: instrument,
        }
    }

    /// Adds `value` to the series of `attributes` (`shared`: the same list, shared).
    pub(crate) fn add(
        &self,
        instrument: InstrumentId,
        value: u64,
        attributes: &[KeyValue],
        shared: Option<&Arc<[KeyValue]>>,
    ) {
        let resolve = || self.totals.of(attributes, shared);
        if !with_series(&TOTALS, instrument, attributes, shared, resolve, |total| {
            total.fetch_add(value, Ordering::Relaxed);
        }) {
            // The thread is being torn down: no cache, the lock once more.
            self.totals
                .of(attributes, shared)
                .fetch_add(value, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    #[test]
    fn totals_are_exported_as_a_monotonic_sum_per_series() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let counter = ObservedCounter::new(
            &provider.meter("test"),
            "messaging.client.sent.messages",
            "{message}",
            "sent",
        );
        let id = InstrumentId { owner: 1, slot: 0 };
        let orders = [KeyValue::new("messaging.destination.name", "orders")];
        let shared: Arc<[KeyValue]> =
            Arc::from(&[KeyValue::new("messaging.destination.name", "replies")][..]);
        for _ in 0..3 {
            counter.add(id, 2, &orders, None);
            counter.add(id, 1, &shared, Some(&shared));
        }
        // From another thread (its own cache), into the same series.
        let other = counter.clone();
        std::thread::spawn(move || other.add(id, 10, &orders, None))
            .join()
            .expect("thread");
        provider.force_flush().expect("flush");

        let metrics = exporter.get_finished_metrics().expect("metrics");
        let last = metrics.last().expect("a collection");
        let metric = last
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|m| m.name() == "messaging.client.sent.messages")
            .expect("the counter");
        assert_eq!(metric.unit(), "{message}");
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() else {
            panic!("a u64 sum: {:?}", metric.data());
        };
        assert!(sum.is_monotonic());
        let mut points: Vec<(String, u64)> = sum
            .data_points()
            .map(|p| {
                let destination = p
                    .attributes()
                    .find(|kv| kv.key.as_str() == "messaging.destination.name")
                    .map(|kv| kv.value.to_string())
                    .unwrap_or_default();
                (destination, p.value())
            })
            .collect();
        points.sort();
        assert_eq!(points, vec![("orders".into(), 16), ("replies".into(), 3)]);
    }
}
