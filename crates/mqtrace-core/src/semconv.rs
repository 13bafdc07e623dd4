//! Attribute and metric names: the OpenTelemetry messaging semantic conventions, plus mqtrace's own.
//!
//! Names come from `opentelemetry-semantic-conventions` where it has them, so a typo cannot
//! creep in. mqtrace targets the messaging conventions as of semconv v1.44.

pub use opentelemetry_semantic_conventions::SCHEMA_URL;
pub use opentelemetry_semantic_conventions::attribute::{
    DEPLOYMENT_ENVIRONMENT_NAME, ERROR_TYPE, MESSAGING_BATCH_MESSAGE_COUNT, MESSAGING_CLIENT_ID,
    MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_DESTINATION_NAME, MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_MESSAGE_KEY, MESSAGING_KAFKA_MESSAGE_TOMBSTONE, MESSAGING_KAFKA_OFFSET,
    MESSAGING_MESSAGE_BODY_SIZE, MESSAGING_MESSAGE_CONVERSATION_ID, MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME, MESSAGING_OPERATION_TYPE, MESSAGING_SYSTEM, SERVER_ADDRESS,
    SERVER_PORT, SERVICE_NAME, SERVICE_VERSION,
};
pub use opentelemetry_semantic_conventions::metric::{
    MESSAGING_CLIENT_CONSUMED_MESSAGES, MESSAGING_CLIENT_OPERATION_DURATION,
    MESSAGING_CLIENT_SENT_MESSAGES, MESSAGING_PROCESS_DURATION,
};

/// Counter of messages whose propagation headers were present but unusable
/// (unit `{message}`, attributes `messaging.system` and [`MQTRACE_INVALID_REASON`]).
pub const MQTRACE_PROPAGATION_INVALID: &str = "mqtrace.propagation.invalid";

/// Counter of spans that never reached the collector (unit `{span}`, attribute `reason`:
/// `queue_full` when the export queue was full, `export_failed` when the export failed,
/// `shutdown` when shutdown stopped waiting for a collector that did not answer).
pub const MQTRACE_TELEMETRY_SPANS_DROPPED: &str = "mqtrace.telemetry.spans.dropped";

/// Counter of log records that never reached the collector (unit `{log_record}`, attribute
/// `reason` as for [`MQTRACE_TELEMETRY_SPANS_DROPPED`]).
pub const MQTRACE_TELEMETRY_LOGS_DROPPED: &str = "mqtrace.telemetry.logs.dropped";

/// Why a propagation header was ignored: `not_utf8`, `oversized`, `not_text` or `rejected`.
pub const MQTRACE_INVALID_REASON: &str = "mqtrace.propagation.invalid_reason";

/// Bucket boundaries the messaging semantic conventions advise for duration histograms, in seconds.
pub const DURATION_BUCKETS_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// `error.type` for an operation whose future was dropped before it completed.
pub const ERROR_TYPE_CANCELLED: &str = "cancelled";
