//! # mqtrace-testkit
//!
//! What mqtrace's own tests (and yours) need to prove tracing against real brokers:
//!
//! - [`kafka`]: an embedded Kafka (librdkafka's mock cluster, a real Kafka-protocol broker in
//!   the process) or an external one named by `MQTRACE_KAFKA_BOOTSTRAP`, with unique topics;
//! - [`amqp`]: a RabbitMQ fixture (`MQTRACE_AMQP_URL`, started locally when installed and
//!   down) with unique, self-cleaning queues and exchanges;
//! - [`capture`]: in-memory tracer and meter providers, with assertions on the span graph
//!   (names, kinds, parents, links, attributes) and on metrics.
//!
//! ```
//! use mqtrace_testkit::capture::TelemetryCapture;
//! use mqtrace_testkit::kafka::EmbeddedKafka;
//!
//! let kafka = EmbeddedKafka::start(1)?;
//! kafka.create_topic("requests", 1)?;
//! let capture = TelemetryCapture::new();
//! assert!(capture.spans().all().is_empty());
//! # Ok::<_, mqtrace_testkit::kafka::Error>(())
//! ```

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod amqp;
pub mod capture;
pub mod kafka;
pub mod otlp;
pub mod prometheus;
