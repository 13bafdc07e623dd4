//! # mqtrace-amqp
//!
//! Traced [lapin](https://docs.rs/lapin) (RabbitMQ, AMQP 0-9-1) publishing and consuming:
//! W3C trace context travels in the message headers (`BasicProperties` headers, written as
//! LongString, read as LongString, ShortString or ByteArray), publishes are PRODUCER spans that
//! end at the broker's confirm, deliveries are processed inside CONSUMER spans that continue
//! the producer's trace, and ack/nack/reject are `settle` spans.
//!
//! - [`TracedPublisher`]: publish with confirms, reopening the channel after the broker
//!   closes it; a publish the broker did not confirm hands its message back as an
//!   [`Unconfirmed`], which [`TracedPublisher::republish`] publishes again in the same trace
//!   (after [`TracedPublisher::reconnect`] when the connection closed);
//! - [`TracedConsumer`] / [`TracedDelivery`]: extracted context, `process`, traced settlement;
//! - [`headers`] and [`destination`]: the carrier and the semconv destination names.
//!
//! Attributes follow the messaging semantic conventions for RabbitMQ
//! (`messaging.system = rabbitmq`, `messaging.rabbitmq.destination.routing_key`,
//! `messaging.rabbitmq.message.delivery_tag`, message and conversation ids, body size).
//! Payloads are never recorded.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
//! use lapin::types::FieldTable;
//! use lapin::{BasicProperties, Connection, ConnectionProperties};
//! use mqtrace_amqp::{TracedConsumer, TracedPublisher};
//!
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! let connection = Arc::new(Connection::connect(url, ConnectionProperties::default()).await?);
//! let publisher = TracedPublisher::open(Arc::clone(&connection)).await?;
//! publisher
//!     .publish("", "requests", BasicPublishOptions::default(), b"{}", BasicProperties::default())
//!     .await?;
//!
//! let channel = connection.create_channel().await?;
//! let consumer = channel
//!     .basic_consume("requests".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
//!     .await?;
//! let mut consumer = TracedConsumer::new(consumer);
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     consumer.process(&delivery, async { Ok::<_, std::io::Error>(()) }).await?;
//!     delivery.ack(BasicAckOptions::default()).await?;
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod batch;
mod confirm;
pub mod consumer;
pub mod destination;
mod error;
pub mod headers;
pub mod publisher;

pub use confirm::PendingConfirm;
pub use consumer::{TracedConsumer, TracedDelivery};
pub use error::{Error, Result, error_type};
pub use publisher::{Published, Target, TracedPublisher, Unconfirmed};

/// The lapin crate mqtrace-amqp is built against, so applications use the same version.
pub use lapin;

/// `messaging.system` for RabbitMQ.
pub const SYSTEM: &str = "rabbitmq";

/// `server.address`/`server.port` of an `amqp://` URL (never its credentials).
pub(crate) fn server_of(url: &str) -> Option<(String, i64)> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    Some((uri.authority.host, i64::from(uri.authority.port)))
}
