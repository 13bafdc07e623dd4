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
//! Only low-cardinality attributes are recorded: system, operation name, destination,
//! consumer group, server address and `error.type`.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::carrier::InvalidReason;
use crate::semconv;

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
        self.operation_duration.record(seconds, attributes);
    }

    /// Counts messages a producer attempted to send.
    pub fn record_sent(&self, attributes: &[KeyValue], count: u64) {
        self.sent_messages.add(count, attributes);
    }

    /// Counts messages delivered to the application.
    pub fn record_consumed(&self, attributes: &[KeyValue], count: u64) {
        self.consumed_messages.add(count, attributes);
    }

    /// Records how long the application took to process a message or batch.
    pub fn record_process_duration(&self, attributes: &[KeyValue], seconds: f64) {
        self.process_duration.record(seconds, attributes);
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
