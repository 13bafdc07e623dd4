//! # mqtrace-testkit
//!
//! What mqtrace's own tests (and yours) need to prove tracing against real brokers:
//!
//! - [`kafka`]: an embedded Kafka (librdkafka's mock cluster, a real Kafka-protocol broker in
//!   the process) or an external one named by `MQTRACE_KAFKA_BOOTSTRAP`, with unique topics;
//! - [`amqp`]: a RabbitMQ fixture (`MQTRACE_AMQP_URL`, started locally when installed and
//!   down) with unique, self-cleaning queues and exchanges;
//! - [`kafka_control`]: the control port through which a test process creates topics on an
//!   embedded Kafka running in another process (`mqtrace mock-kafka`);
//! - [`header_oracle`]: properties every broker's header carrier must keep, for fuzz and
//!   property tests;
//! - [`capture`]: in-memory tracer and meter providers, with assertions on the span graph
//!   (names, kinds, parents, links, attributes) and on metrics;
//! - [`otlp`]: a real OTLP receiver (gRPC and HTTP/protobuf) that keeps what it received and
//!   can be stopped, restarted, slowed down or made to refuse;
//! - [`prometheus`]: the Prometheus names the Collector gives OpenTelemetry metrics, and the
//!   metric names a Grafana dashboard queries.
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
pub mod header_oracle;
pub mod kafka;
pub mod kafka_control;
pub mod otlp;
pub mod prometheus;
