//! [`TracedConsumer`]: a rdkafka `StreamConsumer` that extracts each message's context and
//! runs handlers inside CONSUMER `process {topic}` spans.

use std::fmt;
use std::time::{Duration, SystemTime};

use mqtrace_core::propagation::{ExtractOutcome, Extracted};
use mqtrace_core::span::{destination_name, parse_server, partition_id};
use mqtrace_core::{
    Instrumentation, KeyCapture, MessagingSpan, MessagingSpanBuilder, OperationType, ParentMode,
    semconv,
};
use opentelemetry::trace::Link;
use opentelemetry::{Context, KeyValue, StringValue};
use rdkafka::consumer::{
    CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::SYSTEM;
use crate::client_config::config_value;
use crate::error::{Error, Result, error_type};
use crate::headers::HeaderSnapshot;

/// A consumed message with the producer's context extracted from its headers.
///
/// Dereferences to the rdkafka [`BorrowedMessage`].
pub struct TracedMessage<'c> {
    pub(crate) message: BorrowedMessage<'c>,
    pub(crate) extracted: Extracted,
}

impl fmt::Debug for TracedMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedMessage")
            .field("topic", &self.message.topic())
            .field("partition", &self.message.partition())
            .field("offset", &self.message.offset())
            .field("outcome", &self.extracted.outcome)
            .finish()
    }
}

impl<'c> TracedMessage<'c> {
    /// The rdkafka message.
    pub fn message(&self) -> &BorrowedMessage<'c> {
        &self.message
    }

    /// The producer's context (its span context and baggage), or an empty context when the
    /// message carried none or an unusable one.
    pub fn context(&self) -> &Context {
        &self.extracted.context
    }

    /// The extraction result, including whether the headers were missing or invalid.
    pub fn extracted(&self) -> &Extracted {
        &self.extracted
    }

    /// A link to the producer's span carrying this message's partition and offset, or `None`
    /// when the message had no usable context. For batch spans.
    pub fn link(&self) -> Option<Link> {
        self.producer_link()
    }

    /// Gives back the rdkafka message.
    pub fn into_inner(self) -> BorrowedMessage<'c> {
        self.message
    }
}

impl<'c> std::ops::Deref for TracedMessage<'c> {
    type Target = BorrowedMessage<'c>;

    fn deref(&self) -> &Self::Target {
        &self.message
    }
}

/// A consumed message with its producer's context: a [`TracedMessage`] borrowed from the
/// consumer, or an [`OwnedTracedMessage`](crate::OwnedTracedMessage) detached from it (to
/// spawn its handling onto a task). [`TracedConsumer::process`],
/// [`TracedConsumer::process_span`] and [`TracedConsumer::commit_message`] take either.
pub trait ConsumedMessage {
    /// The rdkafka message type (`BorrowedMessage` or `OwnedMessage`).
    type Message: Message;

    /// The rdkafka message.
    fn kafka_message(&self) -> &Self::Message;

    /// The extraction result.
    fn extracted(&self) -> &Extracted;

    /// A link to the producer's span carrying the message's partition and offset, or `None`
    /// when the message had no usable context.
    fn producer_link(&self) -> Option<Link> {
        let message = self.kafka_message();
        self.extracted().remote_span_context().map(|sc| {
            Link::new(
                sc,
                vec![
                    KeyValue::new(
                        semconv::MESSAGING_DESTINATION_PARTITION_ID,
                        partition_id(message.partition()),
                    ),
                    KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, message.offset()),
                ],
                0,
            )
        })
    }
}

impl<'c> ConsumedMessage for TracedMessage<'c> {
    type Message = BorrowedMessage<'c>;

    fn kafka_message(&self) -> &BorrowedMessage<'c> {
        &self.message
    }

    fn extracted(&self) -> &Extracted {
        &self.extracted
    }
}

/// A `StreamConsumer` that extracts each message's trace context and traces its processing.
///
/// - [`TracedConsumer::recv`] / [`TracedConsumer::recv_batch`] return [`TracedMessage`]s and
///   count `messaging.client.consumed.messages`; a batch receive is traced as a CLIENT
///   `poll {topic}` span linked to every message.
/// - [`TracedConsumer::process`] runs a handler inside a CONSUMER `process {topic}` span:
///   a child of the producer's span that also links to it ([`ParentMode::Parent`], default),
///   or a new trace with only the link ([`ParentMode::Link`]). The span is current inside
///   the handler and ends when the handler's future completes, with error status if it fails.
/// - [`TracedConsumer::commit_message`] is traced as a `commit {topic}` settle span.
///
/// Messages whose headers are garbage are still delivered: they start a new trace and are
/// counted in `mqtrace.propagation.invalid`.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtrace_kafka::TracedConsumer;
/// use rdkafka::ClientConfig;
///
/// let consumer = TracedConsumer::from_config(
///     ClientConfig::new()
///         .set("bootstrap.servers", "localhost:9092")
///         .set("group.id", "scorers"),
/// )?;
/// consumer.subscribe(&["requests"])?;
/// loop {
///     let message = consumer.recv().await?;
///     consumer
///         .process(&message, async {
///             // spans and logs created here join the producer's trace
///             Ok::<_, std::io::Error>(())
///         })
///         .await?;
/// }
/// # }
/// ```
pub struct TracedConsumer<C: ConsumerContext + 'static = DefaultConsumerContext> {
    inner: StreamConsumer<C>,
    instrumentation: Instrumentation,
    parent_mode: ParentMode,
    key_capture: KeyCapture,
    pub(crate) group: Option<StringValue>,
    pub(crate) client_id: Option<StringValue>,
    server: Option<(StringValue, i64)>,
    pub(crate) batch_commit_mode: CommitMode,
}

impl<C: ConsumerContext + 'static> fmt::Debug for TracedConsumer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedConsumer")
            .field("instrumentation", &self.instrumentation)
            .field("parent_mode", &self.parent_mode)
            .field("key_capture", &self.key_capture)
            .field("group", &self.group)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl TracedConsumer<DefaultConsumerContext> {
    /// Creates the consumer from `config`; the consumer group, `messaging.client.id` and
    /// `server.address` come from its `group.id`, `client.id` and `bootstrap.servers`.
    pub fn from_config(config: &ClientConfig) -> Result<Self> {
        let inner: StreamConsumer = config.create().map_err(|source| Error::Create {
            client: "consumer",
            source,
        })?;
        Ok(Self::new(inner))
    }
}

impl<C: ConsumerContext + 'static> TracedConsumer<C> {
    /// Wraps an existing consumer, with the global telemetry providers. The consumer group,
    /// `messaging.client.id` and `server.address`/`server.port` are read from the client's
    /// own configuration (`group.id`, `client.id` unless left at librdkafka's default
    /// `rdkafka`, and the first of `bootstrap.servers`), as [`TracedConsumer::from_config`]
    /// does; the `with_*` methods override them.
    pub fn new(inner: StreamConsumer<C>) -> Self {
        let client = inner.client();
        let group = config_value(client, "group.id").map(|group| crate::shared(&group));
        let client_id = config_value(client, "client.id")
            .filter(|id| id != "rdkafka")
            .map(|id| crate::shared(&id));
        let server = config_value(client, "bootstrap.servers")
            .as_deref()
            .and_then(parse_server)
            .map(|(address, port)| (crate::shared(&address), port));
        Self {
            inner,
            instrumentation: Instrumentation::global(),
            parent_mode: ParentMode::default(),
            key_capture: KeyCapture::Off,
            group,
            client_id,
            server,
            batch_commit_mode: CommitMode::Async,
        }
    }

    /// How a batch worker's settle commits a processed batch's offsets (the
    /// [`MessageSource`](mqtrace_core::batch::MessageSource) implementation).
    /// [`CommitMode::Async`] (the default) does not wait for the broker: if the broker goes
    /// away while a commit is in flight, that commit is lost and, with the batch being
    /// processed, up to two batches are delivered again. [`CommitMode::Sync`] waits for the
    /// broker's answer, blocking the calling thread for it as rdkafka's `commit` does, and
    /// holds redelivery after a broker restart to the one batch in progress.
    pub fn with_batch_commit_mode(mut self, mode: CommitMode) -> Self {
        self.batch_commit_mode = mode;
        self
    }

    /// Uses these providers and propagation settings instead of the global ones.
    pub fn with_instrumentation(mut self, instrumentation: Instrumentation) -> Self {
        self.instrumentation = instrumentation;
        self
    }

    /// How process spans relate to the producer's span (default [`ParentMode::Parent`]).
    pub fn with_parent_mode(mut self, parent_mode: ParentMode) -> Self {
        self.parent_mode = parent_mode;
        self
    }

    /// Records message keys on process spans; off by default.
    pub fn with_key_capture(mut self, key_capture: KeyCapture) -> Self {
        self.key_capture = key_capture;
        self
    }

    /// `messaging.consumer.group.name` (set by [`TracedConsumer::from_config`]).
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(crate::shared(&group.into()));
        self
    }

    /// `messaging.client.id` (set by [`TracedConsumer::from_config`] from `client.id`).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(crate::shared(&client_id.into()));
        self
    }

    /// `server.address`/`server.port` (set by [`TracedConsumer::from_config`]).
    pub fn with_server(mut self, address: impl Into<String>, port: u16) -> Self {
        self.server = Some((crate::shared(&address.into()), i64::from(port)));
        self
    }

    /// The wrapped consumer, for everything mqtrace does not pass through (the common calls
    /// are methods of this type: `assign`, `seek`, `pause`, `commit`...).
    pub fn inner(&self) -> &StreamConsumer<C> {
        &self.inner
    }

    /// The instrumentation this consumer records with.
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.instrumentation
    }

    /// Subscribes to `topics` (a pass-through to rdkafka's `subscribe`).
    pub fn subscribe(&self, topics: &[&str]) -> Result<()> {
        self.inner
            .subscribe(topics)
            .map_err(|source| Error::Subscribe {
                topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                source,
            })
    }

    pub(crate) fn traced<'m>(&self, message: BorrowedMessage<'m>) -> TracedMessage<'m> {
        let extracted = match message.headers() {
            Some(headers) => self
                .instrumentation
                .extract(SYSTEM, &HeaderSnapshot::new(headers)),
            None => Extracted {
                context: Context::new(),
                outcome: ExtractOutcome::Missing,
            },
        };
        TracedMessage { message, extracted }
    }

    pub(crate) fn record_consumed(&self, topic: &str, count: u64) {
        // Runs per message: the topic and the attribute list are shared.
        self.instrumentation.metrics().record_consumed_messages(
            SYSTEM,
            "poll",
            Some(destination_name(topic)),
            self.group.clone(),
            count,
        );
    }

    /// The messages as a `futures::Stream` of [`TracedMessage`]s (cancel-safe), as
    /// rdkafka's `StreamConsumer::stream` gives plain messages; see
    /// [`TracedMessageStream`](crate::stream::TracedMessageStream).
    pub fn stream(&self) -> crate::stream::TracedMessageStream<'_, C> {
        crate::stream::TracedMessageStream::new(self)
    }

    /// Waits for the next message. Cancel-safe: dropping the future loses no message.
    pub async fn recv(&self) -> Result<TracedMessage<'_>> {
        let message = self.inner.recv().await.map_err(Error::Receive)?;
        self.record_consumed(message.topic(), 1);
        Ok(self.traced(message))
    }

    /// Collects up to `max` messages, waiting at most `max_wait` in all; returns an empty
    /// batch when nothing arrived in time.
    ///
    /// A non-empty batch is traced as a CLIENT `poll {topic}` span (from the call to the last
    /// message) with `messaging.batch.message_count` and a link to each message's producer
    /// context. If the broker reports an error after some messages were collected, those
    /// messages are returned and the error surfaces on the next call.
    ///
    /// Not cancel-safe: dropping the future drops the messages collected so far, and with
    /// auto offset store on, their offsets may be committed. Do not race it in `select!`.
    pub async fn recv_batch(
        &self,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<TracedMessage<'_>>> {
        let started = SystemTime::now();
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut batch = Vec::with_capacity(max.min(1024));
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.inner.recv()).await {
                Err(_elapsed) => break,
                Ok(Ok(message)) => batch.push(self.traced(message)),
                Ok(Err(error)) if batch.is_empty() => return Err(Error::Receive(error)),
                Ok(Err(_)) => break,
            }
        }
        if !batch.is_empty() {
            self.trace_batch_receive(&batch, started);
        }
        Ok(batch)
    }

    fn trace_batch_receive(&self, batch: &[TracedMessage<'_>], started: SystemTime) {
        let first_topic = batch[0].topic();
        let same_topic = batch.iter().all(|m| m.topic() == first_topic);
        let mut builder = MessagingSpanBuilder::new(SYSTEM, OperationType::Receive, "poll")
            .with_links(batch.iter().filter_map(TracedMessage::link));
        if same_topic {
            builder = builder.with_destination(destination_name(first_topic));
        }
        builder = self.with_client_attributes(builder);
        let mut span = builder.start_at(&self.instrumentation, &Context::current(), started);
        span.set_message_count(batch.len() as u64);
        span.end();
    }

    /// Adds the consumer group and broker address every consumer span carries.
    pub(crate) fn with_client_attributes(
        &self,
        mut builder: MessagingSpanBuilder,
    ) -> MessagingSpanBuilder {
        if let Some(group) = &self.group {
            builder = builder.with_consumer_group(group.clone());
        }
        if let Some(client_id) = &self.client_id {
            builder = builder.with_client_id(client_id.clone());
        }
        if let Some((address, port)) = &self.server {
            builder = builder.with_server(address.clone(), *port);
        }
        builder
    }

    /// Starts the CONSUMER `process {topic}` span for `message` without running anything in
    /// it, for handlers that need manual control. [`TracedConsumer::process`] is simpler.
    pub fn process_span<M: ConsumedMessage + ?Sized>(&self, message: &M) -> MessagingSpan {
        let (parent, link) = self.parent_mode.parent_and_link(message.extracted());
        let message = message.kafka_message();
        let mut builder = MessagingSpanBuilder::new(SYSTEM, OperationType::Process, "process")
            .with_destination(destination_name(message.topic()))
            .with_partition(message.partition())
            .with_attribute(KeyValue::new(
                semconv::MESSAGING_KAFKA_OFFSET,
                message.offset(),
            ))
            .with_body_size(message.payload().map_or(0, <[u8]>::len))
            .with_links(link);
        if message.payload().is_none() {
            builder = builder.with_attribute(KeyValue::new(
                semconv::MESSAGING_KAFKA_MESSAGE_TOMBSTONE,
                true,
            ));
        }
        if let Some(key) = message.key().and_then(|k| self.key_capture.capture(k)) {
            builder =
                builder.with_attribute(KeyValue::new(semconv::MESSAGING_KAFKA_MESSAGE_KEY, key));
        }
        builder = self.with_client_attributes(builder);
        builder.start(&self.instrumentation, &parent)
    }

    /// Runs `handler` inside `message`'s process span and returns its result.
    ///
    /// The span is the current context while the handler runs, so a
    /// [`TracedProducer`](crate::TracedProducer) send inside it (a reply, a forward, a retry)
    /// carries the process span's context, never the stale incoming one.
    ///
    /// On `Err` the span gets error status and `error.type` = the error's full type path
    /// ([`mqtrace_core::error_type_name`], e.g. `anyhow::Error`). For an error that supplies
    /// its own value through [`mqtrace_core::ErrorType`], run the handler with
    /// `self.process_span(..).run_with_error_type(handler)` instead.
    pub async fn process<M, F, T, E>(&self, message: &M, handler: F) -> Result<T, E>
    where
        M: ConsumedMessage + ?Sized,
        F: std::future::Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        self.process_span(message).run(handler).await
    }

    /// Commits `message`'s offset, traced as a CLIENT `commit {topic}` settle span linked
    /// to the message: a child of the current span (the process span, inside the handler),
    /// else of the message's producer context ([`ParentMode::settle_parent`]), so a commit
    /// never starts a trace of its own when the message has one.
    pub fn commit_message<M: ConsumedMessage + ?Sized>(
        &self,
        message: &M,
        mode: CommitMode,
    ) -> Result<()> {
        let extracted = message.extracted();
        let link = message.producer_link();
        let message = message.kafka_message();
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let mut builder = MessagingSpanBuilder::new(SYSTEM, OperationType::Settle, "commit")
            .with_destination(destination_name(topic))
            .with_partition(partition)
            .with_attribute(KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, offset));
        builder = self.with_client_attributes(builder);
        if let Some(link) = link {
            builder = builder.with_link(link);
        }
        let parent = self.parent_mode.settle_parent(extracted);
        let span = builder.start(&self.instrumentation, &parent);
        // What rdkafka's `commit_message` does, for borrowed and owned messages alike: the
        // next offset to read, for the message's partition.
        let mut next = TopicPartitionList::new();
        let committed = next
            .add_partition_offset(topic, partition, Offset::Offset(offset + 1))
            .and_then(|()| self.inner.commit(&next, mode));
        match committed {
            Ok(()) => {
                span.end();
                Ok(())
            }
            Err(source) => {
                span.end_with_error(error_type(&source), source.to_string());
                Err(Error::Commit {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    source,
                })
            }
        }
    }
}
