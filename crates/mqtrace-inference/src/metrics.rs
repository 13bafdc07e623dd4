//! The worker's metrics.
//!
//! | instrument | kind | unit | attributes |
//! |---|---|---|---|
//! | `mqtrace.worker.batch.size` | histogram | `{message}` | `messaging.destination.name` |
//! | `mqtrace.worker.queue.wait` | histogram | `s` | `messaging.destination.name` |
//! | `mqtrace.worker.messages.in_flight` | up-down counter | `{message}` | |
//! | `mqtrace.worker.dead_lettered` | counter | `{message}` | `mqtrace.dead_letter.reason` |
//! | `mqtrace.worker.dead_letter.truncated` | counter | `{message}` | `mqtrace.dead_letter.reason`, `error.type` |
//! | `mqtrace.worker.dead_letter.skipped` | counter | `{message}` | `mqtrace.dead_letter.reason`, `error.type` |
//! | `mqtrace.inference.duration` | histogram | `s` | `ml.model.name`, `ml.device.type` |
//! | `mqtrace.inference.decisions` | counter | `{request}` | `ml.decision` |
//! | `mqtrace.inference.feature.missing` | counter | `{value}` | `ml.feature.name` |
//! | `mqtrace.inference.schema.mismatch` | counter | `{value}` | `ml.feature.name` |
//! | `hw.gpu.memory.usage` | gauge | `By` | `hw.id` (the GPU's UUID), `hw.type` = `gpu`, `ml.device.name` |
//! | `hw.gpu.memory.limit` | gauge | `By` | `hw.id` (the GPU's UUID), `hw.type` = `gpu`, `ml.device.name` |
//!
//! Feature names come from the request schema's fixed set, so the data-quality counters stay
//! low-cardinality. On the dead-letter fallback counters, `error.type` says why the letter
//! before could not be sent: [`DEAD_LETTER_REJECTED`] or [`DEAD_LETTER_RETRIES_EXHAUSTED`].
//! `mqtrace.worker.dead_lettered` counts truncated dead letters too; a skipped message is in
//! no dead-letter destination at all.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};

use crate::model::{DeviceInfo, ML_DEVICE_NAME};

/// `ml.feature.name` on the data-quality counters.
pub const ML_FEATURE_NAME: &str = "ml.feature.name";
/// `ml.decision` on the decisions counter and postprocess spans.
pub const ML_DECISION: &str = "ml.decision";
/// Why a request was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "mqtrace.dead_letter.reason";
/// `error.type` of a dead letter the destination refused for good (too large, invalid, not
/// authorized).
pub const DEAD_LETTER_REJECTED: &str = "rejected";
/// `error.type` of a dead letter that still failed after every retry (destination down).
pub const DEAD_LETTER_RETRIES_EXHAUSTED: &str = "retries_exhausted";

const BATCH_SIZE_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0,
];

/// The worker's instruments; cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    batch_size: Histogram<u64>,
    queue_wait: Histogram<f64>,
    in_flight: UpDownCounter<i64>,
    dead_lettered: Counter<u64>,
    dead_letter_truncated: Counter<u64>,
    dead_letter_skipped: Counter<u64>,
    inference_duration: Histogram<f64>,
    decisions: Counter<u64>,
    feature_missing: Counter<u64>,
    schema_mismatch: Counter<u64>,
    gpu_memory_usage: Gauge<u64>,
    gpu_memory_limit: Gauge<u64>,
}

impl WorkerMetrics {
    /// Creates the instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self {
            batch_size: meter
                .u64_histogram("mqtrace.worker.batch.size")
                .with_unit("{message}")
                .with_description("Messages per processed batch.")
                .with_boundaries(BATCH_SIZE_BUCKETS.to_vec())
                .build(),
            queue_wait: meter
                .f64_histogram("mqtrace.worker.queue.wait")
                .with_unit("s")
                .with_description(
                    "Time from the broker's message timestamp to the start of its batch.",
                )
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            in_flight: meter
                .i64_up_down_counter("mqtrace.worker.messages.in_flight")
                .with_unit("{message}")
                .with_description("Messages taken from the queue and not yet settled.")
                .build(),
            dead_lettered: meter
                .u64_counter("mqtrace.worker.dead_lettered")
                .with_unit("{message}")
                .with_description("Requests sent to the dead-letter destination.")
                .build(),
            dead_letter_truncated: meter
                .u64_counter("mqtrace.worker.dead_letter.truncated")
                .with_unit("{message}")
                .with_description(
                    "Dead letters sent without their payload because the whole one could not be sent.",
                )
                .build(),
            dead_letter_skipped: meter
                .u64_counter("mqtrace.worker.dead_letter.skipped")
                .with_unit("{message}")
                .with_description(
                    "Requests that could not be dead-lettered, not even truncated, and were skipped.",
                )
                .build(),
            inference_duration: meter
                .f64_histogram("mqtrace.inference.duration")
                .with_unit("s")
                .with_description("Model execution time per batch.")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            decisions: meter
                .u64_counter("mqtrace.inference.decisions")
                .with_unit("{request}")
                .with_description("Scored requests by decision.")
                .build(),
            feature_missing: meter
                .u64_counter("mqtrace.inference.feature.missing")
                .with_unit("{value}")
                .with_description("Feature values that were missing or null.")
                .build(),
            schema_mismatch: meter
                .u64_counter("mqtrace.inference.schema.mismatch")
                .with_unit("{value}")
                .with_description("Feature values of the wrong type or out of range.")
                .build(),
            gpu_memory_usage: meter
                .u64_gauge("hw.gpu.memory.usage")
                .with_unit("By")
                .with_description("GPU memory in use.")
                .build(),
            gpu_memory_limit: meter
                .u64_gauge("hw.gpu.memory.limit")
                .with_unit("By")
                .with_description("GPU memory available in total.")
                .build(),
        }
    }

    /// A batch of `size` messages from `destination` started.
    pub fn record_batch(&self, destination: &KeyValue, size: usize) {
        self.batch_size
            .record(size as u64, std::slice::from_ref(destination));
        self.in_flight
            .add(i64::try_from(size).unwrap_or(i64::MAX), &[]);
    }

    /// A batch of `size` messages was settled (or given up).
    pub fn record_settled(&self, size: usize) {
        self.in_flight
            .add(-i64::try_from(size).unwrap_or(i64::MAX), &[]);
    }

    /// One message waited `seconds` in the queue.
    pub fn record_queue_wait(&self, destination: &KeyValue, seconds: f64) {
        self.queue_wait
            .record(seconds, std::slice::from_ref(destination));
    }

    /// One model execution took `seconds`.
    pub fn record_inference(&self, attributes: &[KeyValue], seconds: f64) {
        self.inference_duration.record(seconds, attributes);
    }

    /// A request was decided.
    pub fn record_decision(&self, decision: &'static str) {
        self.decisions
            .add(1, &[KeyValue::new(ML_DECISION, decision)]);
    }

    /// A request was dead-lettered.
    pub fn record_dead_lettered(&self, reason: &'static str) {
        self.dead_lettered
            .add(1, &[KeyValue::new(DEAD_LETTER_REASON, reason)]);
    }

    /// A request was dead-lettered without its payload, the whole letter having failed with
    /// `error_type` ([`DEAD_LETTER_REJECTED`] or [`DEAD_LETTER_RETRIES_EXHAUSTED`]).
    pub fn record_dead_letter_truncated(&self, reason: &'static str, error_type: &'static str) {
        self.dead_letter_truncated.add(
            1,
            &[
                KeyValue::new(DEAD_LETTER_REASON, reason),
                KeyValue::new(mqtrace_core::semconv::ERROR_TYPE, error_type),
            ],
        );
    }

    /// A request could not be dead-lettered at all and was skipped, the truncated letter
    /// having failed with `error_type`.
    pub fn record_dead_letter_skipped(&self, reason: &'static str, error_type: &'static str) {
        self.dead_letter_skipped.add(
            1,
            &[
                KeyValue::new(DEAD_LETTER_REASON, reason),
                KeyValue::new(mqtrace_core::semconv::ERROR_TYPE, error_type),
            ],
        );
    }

    /// A feature value was missing or null.
    pub fn record_missing(&self, feature: &'static str) {
        self.feature_missing
            .add(1, &[KeyValue::new(ML_FEATURE_NAME, feature)]);
    }

    /// A feature value had the wrong type or was out of range.
    pub fn record_mismatch(&self, feature: &'static str) {
        self.schema_mismatch
            .add(1, &[KeyValue::new(ML_FEATURE_NAME, feature)]);
    }

    /// Device memory of a GPU.
    pub fn record_device_memory(&self, device: &DeviceInfo, used: u64, total: u64) {
        let attributes = [
            KeyValue::new(
                "hw.id",
                device.id.clone().unwrap_or_else(|| "gpu0".to_owned()),
            ),
            KeyValue::new("hw.type", "gpu"),
            KeyValue::new(ML_DEVICE_NAME, device.name.clone()),
        ];
        self.gpu_memory_usage.record(used, &attributes);
        self.gpu_memory_limit.record(total, &attributes);
    }
}
