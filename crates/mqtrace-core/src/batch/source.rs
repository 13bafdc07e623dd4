//! The consuming side of a batch worker: [`InboundMessage`] and [`MessageSource`].

use std::future::Future;
use std::time::SystemTime;

use opentelemetry::trace::Link;
use opentelemetry::{Context, KeyValue};

use crate::propagation::Extracted;

/// One consumed message, as a batch worker sees it.
pub trait InboundMessage: Send + Sync {
    /// The producer's context extracted from the headers, and whether it was usable.
    fn extracted(&self) -> &Extracted;

    /// The message body.
    fn payload(&self) -> &[u8];

    /// The message key, when the broker has one (Kafka).
    fn key(&self) -> Option<&[u8]>;

    /// Where the message was consumed from (topic, or AMQP `{exchange}:{routing key}:{queue}`).
    fn destination(&self) -> &str;

    /// When the broker received the message, when it says (queue wait starts here).
    fn enqueued_at(&self) -> Option<SystemTime>;

    /// The application's message id, when the message carries one.
    fn message_id(&self) -> Option<&str>;

    /// Attributes identifying the message within its destination: partition and offset, or
    /// delivery tag; plus the message id when present. Recorded on links to it.
    fn identity(&self) -> Vec<KeyValue>;

    /// A link to the producer's span carrying [`InboundMessage::identity`], or `None` when
    /// the message had no usable context.
    fn link(&self) -> Option<Link> {
        self.extracted()
            .remote_span_context()
            .map(|span_context| Link::new(span_context, self.identity(), 0))
    }
}

/// What a receive error means for the source that reported it
/// ([`MessageSource::receive_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveFailure {
    /// The source recovers on its own (the client reconnects): receiving again can succeed.
    Transient,
    /// The source cannot go on (its channel or consumer is gone, a fatal client error).
    Fatal,
}

/// A stream of consumed messages that can settle what was processed.
///
/// Implementations must make [`MessageSource::next_message`] cancel-safe: a batch collector
/// races it against a timer, and a message must never be lost when the timer wins.
pub trait MessageSource: Send {
    /// The messages this source yields.
    type Message: InboundMessage + 'static;
    /// What receiving or settling can fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// `messaging.system` of the broker behind the source.
    fn system(&self) -> &'static str;

    /// `messaging.consumer.group.name`, when the broker has consumer groups.
    fn consumer_group(&self) -> Option<&str> {
        None
    }

    /// `messaging.client.id`: which client this is (Kafka's `client.id`), so that the batch
    /// spans of several workers in one group can be told apart.
    fn client_id(&self) -> Option<&str> {
        None
    }

    /// Whether a receive error leaves the source usable. [`ReceiveFailure::Transient`] (the
    /// broker is down or restarting, a connection dropped, and the client reconnects on its
    /// own): a worker counts it and keeps receiving. [`ReceiveFailure::Fatal`]: the worker
    /// stops with it. The default is fatal; sources that can tell say which.
    fn receive_failure(&self, error: &Self::Error) -> ReceiveFailure {
        let _ = error;
        ReceiveFailure::Fatal
    }

    /// The next message, or `None` when the source has ended. Cancel-safe.
    fn next_message(
        &mut self,
    ) -> impl Future<Output = Option<Result<Self::Message, Self::Error>>> + Send;

    /// Settles a processed batch (commits its offsets, acknowledges its deliveries). Call it
    /// only once everything the batch produced is confirmed: that is what makes processing
    /// at-least-once. Settle spans are children of `parent`.
    fn settle(
        &mut self,
        messages: &[Self::Message],
        parent: &Context,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
