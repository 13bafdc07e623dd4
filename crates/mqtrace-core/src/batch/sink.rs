//! The sending side of a batch worker: [`MessageSink`], [`Outgoing`], [`SendFailure`].

use std::future::Future;

use opentelemetry::trace::Link;
use opentelemetry::{Context, KeyValue};

/// A message to send through a [`MessageSink`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Outgoing<'a> {
    /// Topic (Kafka) or routing key on the default exchange, i.e. the queue (AMQP).
    pub destination: &'a str,
    /// Message key (Kafka partitioning); ignored by brokers without keys.
    pub key: Option<&'a [u8]>,
    /// The body.
    pub payload: &'a [u8],
    /// Application headers to send along (trace headers are added by the sink).
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Message id, where the broker has a property for it (AMQP `message_id`).
    pub message_id: Option<&'a str>,
    /// Extra attributes for the send span (low-cardinality: a decision, a bucket).
    pub span_attributes: &'a [KeyValue],
}

impl<'a> Outgoing<'a> {
    /// A message with a destination and a body, nothing else.
    pub fn new(destination: &'a str, payload: &'a [u8]) -> Self {
        Self {
            destination,
            key: None,
            payload,
            headers: &[],
            message_id: None,
            span_attributes: &[],
        }
    }

    /// Sets extra send-span attributes.
    pub fn with_span_attributes(mut self, attributes: &'a [KeyValue]) -> Self {
        self.span_attributes = attributes;
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: Option<&'a [u8]>) -> Self {
        self.key = key;
        self
    }

    /// Sets application headers.
    pub fn with_headers(mut self, headers: &'a [(&'a str, &'a [u8])]) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the message id.
    pub fn with_message_id(mut self, message_id: Option<&'a str>) -> Self {
        self.message_id = message_id;
        self
    }
}

/// What a failed send means for sending the same message again.
///
/// A batch worker retries a [`SendFailure::Transient`] failure with backoff, and stops
/// retrying at once on [`SendFailure::Rejected`]: a dead letter the broker rejects as too
/// large, for one, is sent again in a truncated form instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendFailure {
    /// The broker may take the message later (it is down, slow, or its queue is full):
    /// sending it again can succeed.
    Transient,
    /// The broker refuses this message for good (too large, invalid, not authorized, no such
    /// destination): sending it again fails the same way.
    Rejected,
}

/// Sends messages with a traced `send` span per message.
pub trait MessageSink: Send + Sync {
    /// What sending can fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether sending a message again after `error` could succeed. The default treats every
    /// failure as [`SendFailure::Transient`] (retried, with a bounded number of attempts);
    /// sinks that can tell a message the broker refuses for good say
    /// [`SendFailure::Rejected`]. Wrappers should forward to the sink they wrap.
    fn classify(&self, error: &Self::Error) -> SendFailure {
        let _ = error;
        SendFailure::Transient
    }

    /// Sends `message` as a child of `parent`; its send span also links to `links`. Resolves
    /// once the broker confirmed the message (delivery report, publisher confirm).
    fn send(
        &self,
        message: Outgoing<'_>,
        parent: &Context,
        links: Vec<Link>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
