//! # mqtrace
//!
//! Keep OpenTelemetry traces unbroken across message queues.
//!
//! mqtrace wraps message-queue clients so that W3C `traceparent`/`tracestate`/`baggage`
//! travel in message headers, and traces every send, receive, process and settle per the
//! OpenTelemetry messaging semantic conventions. This crate is the facade; the parts are:
//!
//! - [`core`] (`mqtrace-core`, on the OpenTelemetry API only): header carriers,
//!   propagation, messaging spans and metrics, batch links;
//! - [`telemetry`] (`mqtrace-telemetry`, feature `telemetry`, on by default): one-call
//!   OpenTelemetry SDK setup from the `OTEL_*` environment, OTLP or files;
//! - [`kafka`] (`mqtrace-kafka`, feature `kafka`, on by default): traced rust-rdkafka
//!   producer and consumer;
//! - [`amqp`] (`mqtrace-amqp`, feature `amqp`, on by default): traced lapin publisher and
//!   consumer for RabbitMQ;
//! - [`inference`] (`mqtrace-inference`, feature `inference`, on by default): batch-inference
//!   workers (batch spans linked to every message, instrumented model execution on CPU or,
//!   with feature `cuda`, GPU).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use mqtrace::kafka::TracedProducer;
//! use rdkafka::ClientConfig;
//! use rdkafka::producer::FutureRecord;
//!
//! // Traces go to OTLP if OTEL_EXPORTER_OTLP_ENDPOINT is set, else to ./telemetry/*.jsonl
//! let _telemetry = mqtrace::telemetry::init()?;
//! let producer = TracedProducer::from_config(
//!     ClientConfig::new().set("bootstrap.servers", "localhost:9092"),
//! )?;
//! producer
//!     .send(FutureRecord::<str, str>::to("requests").payload("{}"), Duration::from_secs(5))
//!     .await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use mqtrace_core as core;

#[cfg(feature = "telemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "telemetry")))]
pub use mqtrace_telemetry as telemetry;

#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use mqtrace_kafka as kafka;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use mqtrace_amqp as amqp;

#[cfg(feature = "inference")]
#[cfg_attr(docsrs, doc(cfg(feature = "inference")))]
pub use mqtrace_inference as inference;

/// The README's code examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
