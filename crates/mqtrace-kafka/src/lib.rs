//! # mqtrace-kafka
//!
//! Traced [rust-rdkafka](https://docs.rs/rdkafka) clients: W3C trace context travels in Kafka
//! message headers, sends are PRODUCER spans that end at the broker's delivery report, and
//! consumed messages are processed inside CONSUMER spans that continue the producer's trace.
//!
//! - [`TracedProducer`] wraps `FutureProducer`;
//! - [`TracedConsumer`] wraps `StreamConsumer`, yielding [`TracedMessage`]s;
//! - both implement the batch traits of [`mqtrace_core::batch`] (`MessageSource`,
//!   `MessageSink`), yielding [`OwnedTracedMessage`]s, so batch workers run on Kafka;
//! - [`headers`] adapts rdkafka headers to mqtrace's carriers.
//!
//! Spans, attributes and metrics follow the OpenTelemetry messaging semantic conventions
//! (`messaging.system = kafka`). Message keys are recorded only when opted in with
//! [`KeyCapture`](mqtrace_core::KeyCapture); payloads never.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use mqtrace_kafka::{TracedConsumer, TracedProducer};
//! use rdkafka::ClientConfig;
//! use rdkafka::producer::FutureRecord;
//!
//! let _telemetry = mqtrace_telemetry::init()?;
//! let mut config = ClientConfig::new();
//! config.set("bootstrap.servers", "localhost:9092");
//!
//! let producer = TracedProducer::from_config(&config)?;
//! producer
//!     .send(FutureRecord::<str, str>::to("requests").payload("score me"), Duration::from_secs(5))
//!     .await?;
//!
//! let consumer = TracedConsumer::from_config(config.clone().set("group.id", "scorers"))?;
//! consumer.subscribe(&["requests"])?;
//! let message = consumer.recv().await?;
//! consumer.process(&message, async { Ok::<_, std::io::Error>(()) }).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod batch;
mod client_calls;
mod client_config;
pub mod consumer;
mod error;
pub mod headers;
pub mod producer;
pub mod stream;

pub use batch::OwnedTracedMessage;
pub use consumer::{ConsumedMessage, TracedConsumer, TracedMessage};
pub use error::{Error, Result, error_type};
pub use producer::{Delivery, TracedProducer};
pub use stream::TracedMessageStream;

/// `messaging.system` for Kafka.
pub const SYSTEM: &str = "kafka";

/// `value` as an attribute string kept for the process's life (see
/// [`mqtrace_core::span::attribute_string`]): what a client records on every message's spans
/// (its broker address, group, client id) is copied as a `&'static str`, no reference count.
fn shared(value: &str) -> opentelemetry::StringValue {
    mqtrace_core::span::attribute_string(value)
}

/// The rdkafka crate mqtrace-kafka is built against, so applications use the same version.
pub use rdkafka;
