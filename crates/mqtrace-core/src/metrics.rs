//! The semconv messaging metrics, plus mqtrace's propagation counter.
//!
//! | instrument | kind | unit |
//! |---|---|---|
//! | `messaging.client.operation.duration` | histogram | `s` |
//! | `messaging.client.sent.messages` | counter | `{message}` |
//! | `messaging.client.consumed.messages` | counter | `{message}` |
//! | `messaging.process.duration` | histogram | `s` |
//! | `mqtrace.propagation.invalid` | counter | `{message}` |
//!
//! Durations use the semconv bucket advice ([`semconv::DURATION_BUCKETS_SECONDS`]).
//! With the feature `bound-instruments` (opt-in: it turns on OpenTelemetry's experimental
//! bound instruments), recording goes through bound instruments cached per thread
//! (`bound_metrics`), so a message's measurements do not hash their attributes each time.
//! Only low-cardinality attributes are recorded: system, operation name, destination,
//! consumer group, server address and `error.type`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue};

#[cfg(feature = "bound-instruments")]
use crate::bound_metrics::{self, InstrumentId};
use crate::carrier::InvalidReason;
use crate::semconv;
#[cfg(not(feature = "bound-instruments"))]
use unbound as bound_metrics;
#[cfg(not(feature = "bound-instruments"))]
use unbound::InstrumentId;

/// Whether this build records through bound instruments (mqtrace-core's feature
/// `bound-instruments`), which the SDK must support too.
pub const BOUND_INSTRUMENTS: bool = cfg!(feature = "bound-instruments");

/// Gives every `MessagingMetrics` its own id, so cached bindings never mix instruments of
/// two meter providers.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

const OPERATION_DURATION: u8 = 0;
const SENT_MESSAGES: u8 = 1;
const CONSUMED_MESSAGES: u8 = 2;
const PROCESS_DURATION: u8 = 3;

/// The instruments every traced client records into.
///
/// # Example
///
/// ```
/// use mqtrace_core::metrics::MessagingMetrics;
///
/// let meter = opentelemetry::global::meter("example");
/// let metrics = MessagingMetrics::new(&meter);
/// metrics.record_sent(&[], 1);
/// ```
#[derive(Debug, Clone)]
pub struct MessagingMetrics {
    owner: u64,
    operation_duration: Histogram<f64>,
    sent_messages: Counter<u64>,
    consumed_messages: Counter<u64>,
    process_duration: Histogram<f64>,
    propagation_invalid: Counter<u64>,
}

impl MessagingMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            operation_duration: meter
                .f64_histogram(semconv::MESSAGING_CLIENT_OPERATION_DURATION)
                .with_unit("s")
                .with_description("Duration of messaging operation initiated by a producer or consumer client.")
                .with_boundaries(semconv::DURATION_BUCKETS_SECONDS.to_vec())
                .build(),
            sent_messages: meter
                .u64_counter(semconv::MESSAGING_CLIENT_SENT_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .build(),
            consumed_messages: meter
                .u64_counter(semconv::MESSAGING_CLIENT_CONSUMED_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .build(),
            process_duration: meter
                .f64_histogram(semconv::MESSAGING_PROCESS_DURATION)
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(semconv::DURATION_BUCKETS_SECONDS.to_vec())
                .build(),
            propagation_invalid: meter
                .u64_counter(semconv::MQTRACE_PROPAGATION_INVALID)
                .with_unit("{message}")
                .with_description("Messages whose trace-context headers were present but unusable; each started a new trace.")
                .build(),
        }
    }

    /// Records the duration of a send, receive or settle operation.
    pub fn record_operation_duration(&self, attributes: &[KeyValue], seconds: f64) {
        self.record_operation_duration_in(attributes, None, seconds);
    }

    /// Counts messages a producer attempted to send.
    pub fn record_sent(&self, attributes: &[KeyValue], count: u64) {
        self.record_sent_in(attributes, None, count);
    }

    /// Counts messages delivered to the application.
    pub fn record_consumed(&self, attributes: &[KeyValue], count: u64) {
        self.record_consumed_in(attributes, None, count);
    }

    /// Records how long the application took to process a message or batch.
    pub fn record_process_duration(&self, attributes: &[KeyValue], seconds: f64) {
        self.record_process_duration_in(attributes, None, seconds);
    }

    /// Counts messages delivered to the application under the standard attributes:
    /// `messaging.system`, `messaging.operation.name` and, when given, the destination and
    /// consumer group. The same as [`MessagingMetrics::record_consumed`] with those
    /// attributes, cheaper per message: the list is shared per thread, as spans share theirs.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::metrics::MessagingMetrics;
    ///
    /// let metrics = MessagingMetrics::new(&opentelemetry::global::meter("example"));
    /// metrics.record_consumed_messages("kafka", "poll", Some("orders".into()), None, 1);
    /// ```
    pub fn record_consumed_messages(
        &self,
        system: &'static str,
        operation_name: &'static str,
        destination: Option<StringValue>,
        consumer_group: Option<StringValue>,
        count: u64,
    ) {
        let attributes = crate::span::shared_attributes(
            system,
            operation_name,
            destination,
            consumer_group,
            None,
        );
        self.record_consumed_in(&attributes, Some(&attributes), count);
    }

    // The same, for attributes that may be a shared list (a span's metric attributes),
    // whose cached binding is then found by the list's address.

    pub(crate) fn record_operation_duration_in(
        &self,
        attributes: &[KeyValue],
        shared: Option<&Arc<[KeyValue]>>,
        seconds: f64,
    ) {
        bound_metrics::record(
            self.id(OPERATION_DURATION),
            &self.operation_duration,
            seconds,
            attributes,
            shared,
        );
    }

    pub(crate) fn record_sent_in(
        &self,
        attributes: &[KeyValue],
        shared: Option<&Arc<[KeyValue]>>,
        count: u64,
    ) {
        bound_metrics::add(
            self.id(SENT_MESSAGES),
            &self.sent_messages,
            count,
            attributes,
            shared,
        );
    }

    pub(crate) fn record_consumed_in(
        &self,
        attributes: &[KeyValue],
        shared: Option<&Arc<[KeyValue]>>,
        count: u64,
    ) {
        bound_metrics::add(
            self.id(CONSUMED_MESSAGES),
            &self.consumed_messages,
            count,
            attributes,
            shared,
        );
    }

    pub(crate) fn record_process_duration_in(
        &self,
        attributes: &[KeyValue],
        shared: Option<&Arc<[KeyValue]>>,
        seconds: f64,
    ) {
        bound_metrics::record(
            self.id(PROCESS_DURATION),
            &self.process_duration,
            seconds,
            attributes,
            shared,
        );
    }

    fn id(&self, slot: u8) -> InstrumentId {
        InstrumentId {
            owner: self.owner,
            slot,
        }
    }

    /// Counts a message whose propagation headers were ignored.
    pub fn record_invalid_context(&self, system: &'static str, reason: InvalidReason) {
        self.propagation_invalid.add(
            1,
            &[
                KeyValue::new(semconv::MESSAGING_SYSTEM, system),
                KeyValue::new(semconv::MQTRACE_INVALID_REASON, reason.as_str()),
            ],
        );
    }
}

/// Without the feature `bound-instruments`: measurements go to the instruments directly,
/// under the same calls as the bound cache's.
#[cfg(not(feature = "bound-instruments"))]
mod unbound {
    use std::sync::Arc;

    use opentelemetry::KeyValue;
    use opentelemetry::metrics::{Counter, Histogram};

    /// Unused without the cache, kept so both builds read the same.
    #[derive(Debug, Clone, Copy)]
    #[allow(dead_code)]
    pub(super) struct InstrumentId {
        pub(super) owner: u64,
        pub(super) slot: u8,
    }

    pub(super) fn add(
        _: InstrumentId,
        counter: &Counter<u64>,
        value: u64,
        attributes: &[KeyValue],
        _: Option<&Arc<[KeyValue]>>,
    ) {
        counter.add(value, attributes);
    }

    pub(super) fn record(
        _: InstrumentId,
        histogram: &Histogram<f64>,
        value: f64,
        attributes: &[KeyValue],
        _: Option<&Arc<[KeyValue]>>,
    ) {
        histogram.record(value, attributes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    fn provider() -> (SdkMeterProvider, InMemoryMetricExporter) {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        (provider, exporter)
    }

    /// (destination, value) of every data point of `name`: counter sums, histogram counts.
    fn points(exporter: &InMemoryMetricExporter, name: &str) -> Vec<(String, u64)> {
        let mut points = Vec::new();
        let finished = exporter.get_finished_metrics().unwrap_or_default();
        let Some(last) = finished.last() else {
            return points;
        };
        for metric in last.scope_metrics().flat_map(|sm| sm.metrics()) {
            if metric.name() != name {
                continue;
            }
            fn destination<'a>(mut attributes: impl Iterator<Item = &'a KeyValue>) -> String {
                attributes
                    .find(|kv| kv.key.as_str() == semconv::MESSAGING_DESTINATION_NAME)
                    .map(|kv| kv.value.as_str().into_owned())
                    .unwrap_or_default()
            }
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        points.push((destination(p.attributes()), p.value()));
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                    for p in histogram.data_points() {
                        points.push((destination(p.attributes()), p.count()));
                    }
                }
                _ => {}
            }
        }
        points.sort();
        points
    }

    fn attributes(destination: &str) -> Vec<KeyValue> {
        vec![
            KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, destination.to_owned()),
        ]
    }

    #[test]
    fn recording_counts_every_series_even_past_the_bound_cache() {
        let (provider, exporter) = provider();
        let metrics = MessagingMetrics::new(&provider.meter("test"));
        // More destinations than the per-thread cache holds, visited round-robin three times,
        // so every binding is evicted and made again; "hot" stays cached in between.
        let topics: Vec<String> = (0..40).map(|i| format!("topic-{i:02}")).collect();
        for _ in 0..3 {
            for topic in &topics {
                metrics.record_sent(&attributes(topic), 2);
                metrics.record_operation_duration(&attributes(topic), 0.001);
                metrics.record_sent(&attributes("hot"), 1);
            }
        }
        #[cfg(feature = "bound-instruments")]
        {
            const { assert!(bound_metrics::CACHE_SIZE < 40) };
            assert!(bound_metrics::cached() <= bound_metrics::CACHE_SIZE);
        }
        provider.force_flush().expect("flush");

        let sent = points(&exporter, semconv::MESSAGING_CLIENT_SENT_MESSAGES);
        let mut expected: Vec<(String, u64)> = topics.iter().map(|t| (t.clone(), 6)).collect();
        expected.push(("hot".to_owned(), 3 * topics.len() as u64));
        expected.sort();
        assert_eq!(sent, expected);
        let durations = points(&exporter, semconv::MESSAGING_CLIENT_OPERATION_DURATION);
        assert_eq!(durations.len(), topics.len());
        assert!(durations.iter().all(|(_, count)| *count == 3));
    }

    #[test]
    fn two_providers_on_one_thread_keep_their_own_series() {
        let (first_provider, first) = provider();
        let (second_provider, second) = provider();
        let a = MessagingMetrics::new(&first_provider.meter("test"));
        let b = MessagingMetrics::new(&second_provider.meter("test"));
        // Same attributes, same instrument, same thread: only the owner tells them apart.
        a.record_consumed(&attributes("orders"), 5);
        b.record_consumed(&attributes("orders"), 7);
        a.clone().record_consumed(&attributes("orders"), 1); // a clone shares a's series
        first_provider.force_flush().expect("flush");
        second_provider.force_flush().expect("flush");
        let name = semconv::MESSAGING_CLIENT_CONSUMED_MESSAGES;
        assert_eq!(points(&first, name), vec![("orders".to_owned(), 6)]);
        assert_eq!(points(&second, name), vec![("orders".to_owned(), 7)]);
    }
}
