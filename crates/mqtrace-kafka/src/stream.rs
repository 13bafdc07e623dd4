//! [`TracedMessageStream`]: a consumer's messages as a `futures::Stream`, each with its
//! producer's context extracted, as rdkafka's `MessageStream` is for plain messages.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::stream_consumer::MessageStream;
use rdkafka::message::Message;

use crate::consumer::{TracedConsumer, TracedMessage};
use crate::error::{Error, Result};

/// The messages of a [`TracedConsumer`], from [`TracedConsumer::stream`].
///
/// Each message is counted in `messaging.client.consumed.messages` and has its producer's
/// context extracted as it arrives, exactly as with [`TracedConsumer::recv`]; process it
/// with [`TracedConsumer::process`]. Cancel-safe like rdkafka's `MessageStream`: a message
/// is taken from librdkafka only when the stream yields it, so dropping the stream (or a
/// `next()` future, in `select!`) loses none.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use mqtrace_kafka::TracedConsumer;
/// use rdkafka::ClientConfig;
///
/// let consumer = TracedConsumer::from_config(
///     ClientConfig::new()
///         .set("bootstrap.servers", "localhost:9092")
///         .set("group.id", "scorers"),
/// )?;
/// consumer.subscribe(&["requests"])?;
/// let mut messages = consumer.stream();
/// while let Some(message) = messages.next().await {
///     let message = message?;
///     consumer.process(&message, async { Ok::<_, std::io::Error>(()) }).await?;
/// }
/// # Ok(()) }
/// ```
pub struct TracedMessageStream<'a, C: ConsumerContext + 'static> {
    consumer: &'a TracedConsumer<C>,
    inner: MessageStream<'a, C>,
}

impl<C: ConsumerContext + 'static> std::fmt::Debug for TracedMessageStream<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedMessageStream")
            .finish_non_exhaustive()
    }
}

impl<'a, C: ConsumerContext + 'static> TracedMessageStream<'a, C> {
    pub(crate) fn new(consumer: &'a TracedConsumer<C>) -> Self {
        Self {
            consumer,
            inner: consumer.inner().stream(),
        }
    }
}

impl<'a, C: ConsumerContext + 'static> Stream for TracedMessageStream<'a, C> {
    type Item = Result<TracedMessage<'a>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let consumer = self.consumer;
        Pin::new(&mut self.inner).poll_next(cx).map(|next| {
            next.map(|received| match received {
                Ok(message) => {
                    consumer.record_consumed(message.topic(), 1);
                    Ok(consumer.traced(message))
                }
                Err(error) => Err(Error::Receive(error)),
            })
        })
    }
}
