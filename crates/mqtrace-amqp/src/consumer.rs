//! [`TracedConsumer`]: a lapin `Consumer` whose deliveries carry the producer's context, with
//! handlers run inside CONSUMER `process {destination}` spans and traced settlement.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use mqtrace_core::propagation::{ExtractOutcome, Extracted};
use mqtrace_core::{
    Instrumentation, MessagingSpan, MessagingSpanBuilder, OperationType, ParentMode,
};
use opentelemetry::trace::Link;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute::{
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY, MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
};

use crate::destination::consume_destination;
use crate::error::{Error, Result, error_type};
use crate::headers::AmqpHeaders;
use crate::{SYSTEM, server_of};

/// `messaging.rabbitmq.message.redelivered`: whether the broker delivered this message before.
pub const REDELIVERED: &str = "messaging.rabbitmq.message.redelivered";

/// A delivery with the producer's context extracted from its headers. Settle it with
/// [`TracedDelivery::ack`], [`TracedDelivery::nack`] or [`TracedDelivery::reject`], each a
/// CLIENT `settle` span linked to the message: a child of the current span (the process
/// span, inside the handler), else of the message's producer context
/// ([`ParentMode::settle_parent`]).
pub struct TracedDelivery {
    delivery: Delivery,
    extracted: Extracted,
    destination: String,
    instrumentation: Instrumentation,
    server: Option<(String, i64)>,
    parent_mode: ParentMode,
}

impl fmt::Debug for TracedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedDelivery")
            .field("destination", &self.destination)
            .field("delivery_tag", &self.delivery.delivery_tag)
            .field("redelivered", &self.delivery.redelivered)
            .field("outcome", &self.extracted.outcome)
            .finish()
    }
}

impl TracedDelivery {
    /// The lapin delivery (payload, properties, acker).
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The producer's context, or an empty one when the message carried none or garbage.
    pub fn context(&self) -> &Context {
        &self.extracted.context
    }

    /// The extraction result, including whether the headers were missing or invalid.
    pub fn extracted(&self) -> &Extracted {
        &self.extracted
    }

    /// `{exchange}:{routing key}:{queue}` with empty and repeated parts left out.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// A link to the producer's span carrying this delivery's tag and message id, or `None`
    /// when the message had no usable context. For batch spans.
    pub fn link(&self) -> Option<Link> {
        self.extracted.remote_span_context().map(|sc| {
            let mut attributes = vec![KeyValue::new(
                MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                delivery_tag(&self.delivery),
            )];
            if let Some(id) = self.delivery.properties.message_id() {
                attributes.push(KeyValue::new(
                    mqtrace_core::semconv::MESSAGING_MESSAGE_ID,
                    id.as_str().to_owned(),
                ));
            }
            Link::new(sc, attributes, 0)
        })
    }

    /// Gives back the lapin delivery.
    pub fn into_inner(self) -> Delivery {
        self.delivery
    }

    fn span(&self, operation_type: OperationType, operation: &'static str) -> MessagingSpanBuilder {
        let mut builder = MessagingSpanBuilder::new(SYSTEM, operation_type, operation)
            .with_destination(self.destination.clone())
            .with_attribute(KeyValue::new(
                MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                delivery_tag(&self.delivery),
            ))
            .with_attribute(KeyValue::new(REDELIVERED, self.delivery.redelivered));
        let routing_key = self.delivery.routing_key.as_str();
        if !routing_key.is_empty() {
            builder = builder.with_attribute(KeyValue::new(
                MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                routing_key.to_owned(),
            ));
        }
        if let Some(id) = self.delivery.properties.message_id() {
            builder = builder.with_message_id(id.as_str().to_owned());
        }
        if let Some(conversation) = self.delivery.properties.correlation_id() {
            builder = builder.with_attribute(KeyValue::new(
                mqtrace_core::semconv::MESSAGING_MESSAGE_CONVERSATION_ID,
                conversation.as_str().to_owned(),
            ));
        }
        if let Some((address, port)) = &self.server {
            builder = builder.with_server(address.clone(), *port);
        }
        builder
    }

    async fn settle<F>(&self, operation: &'static str, settle: F) -> Result<()>
    where
        F: std::future::Future<Output = lapin::Result<bool>>,
    {
        let mut builder = self.span(OperationType::Settle, operation);
        if let Some(link) = self.link() {
            builder = builder.with_link(link);
        }
        let parent = self.parent_mode.settle_parent(&self.extracted);
        let span = builder.start(&self.instrumentation, &parent);
        match settle.await {
            Ok(_) => {
                span.end();
                Ok(())
            }
            Err(source) => {
                span.end_with_error(error_type(&source), source.to_string());
                Err(Error::Settle {
                    operation,
                    delivery_tag: self.delivery.delivery_tag,
                    source,
                })
            }
        }
    }

    /// Acknowledges the delivery, traced as an `ack {destination}` settle span.
    pub async fn ack(&self, options: BasicAckOptions) -> Result<()> {
        self.settle("ack", self.delivery.acker.ack(options)).await
    }

    /// Negatively acknowledges the delivery (requeue per `options`), traced as `nack`.
    pub async fn nack(&self, options: BasicNackOptions) -> Result<()> {
        self.settle("nack", self.delivery.acker.nack(options)).await
    }

    /// Rejects the delivery (requeue per `options`), traced as `reject`.
    pub async fn reject(&self, options: BasicRejectOptions) -> Result<()> {
        self.settle("reject", self.delivery.acker.reject(options))
            .await
    }
}

impl std::ops::Deref for TracedDelivery {
    type Target = Delivery;

    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}

fn delivery_tag(delivery: &Delivery) -> i64 {
    i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX)
}

/// A lapin [`lapin::Consumer`] whose deliveries are [`TracedDelivery`]s.
///
/// [`TracedConsumer::process`] runs a handler inside a CONSUMER `process {destination}` span:
/// a child of the producer's span that also links to it ([`ParentMode::Parent`], default), or
/// a new trace with only the link ([`ParentMode::Link`]). The span is current while the
/// handler runs. Header values are read as LongString, ShortString or ByteArray; anything
/// else, or garbage, starts a new trace and is counted in `mqtrace.propagation.invalid`, and
/// the delivery is still handed over.
///
/// # Example
///
/// ```no_run
/// # async fn run(channel: lapin::Channel) -> Result<(), Box<dyn std::error::Error>> {
/// use lapin::options::{BasicAckOptions, BasicConsumeOptions};
/// use lapin::types::FieldTable;
/// use mqtrace_amqp::TracedConsumer;
///
/// let consumer = channel
///     .basic_consume("requests".into(), "scorer".into(), BasicConsumeOptions::default(), FieldTable::default())
///     .await?;
/// let mut consumer = TracedConsumer::new(consumer);
/// while let Some(delivery) = consumer.next().await {
///     let delivery = delivery?;
///     consumer.process(&delivery, async { Ok::<_, std::io::Error>(()) }).await?;
///     delivery.ack(BasicAckOptions::default()).await?;
/// }
/// # Ok(()) }
/// ```
pub struct TracedConsumer {
    inner: lapin::Consumer,
    queue: String,
    instrumentation: Instrumentation,
    parent_mode: ParentMode,
    server: Option<(String, i64)>,
}

/// Traced deliveries as they arrive, like lapin's `Consumer` stream: each extracted and
/// counted as it is taken. Cancel-safe (lapin buffers deliveries); ends when the consumer
/// is cancelled.
impl Stream for TracedConsumer {
    type Item = Result<TracedDelivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(delivered)) => Poll::Ready(Some(self.traced(delivered))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl fmt::Debug for TracedConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedConsumer")
            .field("queue", &self.queue)
            .field("instrumentation", &self.instrumentation)
            .field("parent_mode", &self.parent_mode)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl TracedConsumer {
    /// Wraps a lapin consumer, with the global telemetry providers.
    pub fn new(inner: lapin::Consumer) -> Self {
        Self {
            queue: inner.queue().as_str().to_owned(),
            inner,
            instrumentation: Instrumentation::global(),
            parent_mode: ParentMode::default(),
            server: None,
        }
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

    /// `server.address`/`server.port` from an `amqp://` URL (credentials are not recorded).
    pub fn with_server_from_url(mut self, url: &str) -> Self {
        self.server = server_of(url);
        self
    }

    /// The wrapped consumer.
    pub fn inner(&self) -> &lapin::Consumer {
        &self.inner
    }

    /// The instrumentation this consumer records with.
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.instrumentation
    }

    /// The next delivery, or `None` when the consumer was cancelled. Cancel-safe: lapin
    /// buffers deliveries, so dropping this future loses none. The same as
    /// `StreamExt::next` on this consumer, which is a `Stream` of traced deliveries as lapin's
    /// consumer is one of deliveries.
    pub async fn next(&mut self) -> Option<Result<TracedDelivery>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// `delivered` (one item of lapin's consumer stream) with its producer's context.
    fn traced(&self, delivered: lapin::Result<Delivery>) -> Result<TracedDelivery> {
        let delivery = delivered.map_err(|source| Error::Consume {
            queue: self.queue.clone(),
            source,
        })?;
        let extracted = match delivery.properties.headers() {
            Some(headers) => self.instrumentation.extract(SYSTEM, &AmqpHeaders(headers)),
            None => Extracted {
                context: Context::new(),
                outcome: ExtractOutcome::Missing,
            },
        };
        let destination = consume_destination(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            &self.queue,
        );
        self.instrumentation.metrics().record_consumed(
            &[
                KeyValue::new(mqtrace_core::semconv::MESSAGING_SYSTEM, SYSTEM),
                KeyValue::new(mqtrace_core::semconv::MESSAGING_OPERATION_NAME, "deliver"),
                KeyValue::new(
                    mqtrace_core::semconv::MESSAGING_DESTINATION_NAME,
                    destination.clone(),
                ),
            ],
            1,
        );
        Ok(TracedDelivery {
            delivery,
            extracted,
            destination,
            instrumentation: self.instrumentation.clone(),
            server: self.server.clone(),
            parent_mode: self.parent_mode,
        })
    }

    /// Starts the CONSUMER `process {destination}` span for `delivery` without running
    /// anything in it. [`TracedConsumer::process`] is simpler.
    pub fn process_span(&self, delivery: &TracedDelivery) -> MessagingSpan {
        let (parent, link) = self.parent_mode.parent_and_link(&delivery.extracted);
        delivery
            .span(OperationType::Process, "process")
            .with_body_size(delivery.delivery.data.len())
            .with_links(link)
            .start(&self.instrumentation, &parent)
    }

    /// Runs `handler` inside `delivery`'s process span and returns its result; a reply
    /// published from the handler carries the process span's context.
    ///
    /// On `Err` the span gets error status and `error.type` = the error's full type path
    /// ([`mqtrace_core::error_type_name`], e.g. `anyhow::Error`). For an error that supplies
    /// its own value through [`mqtrace_core::ErrorType`], run the handler with
    /// `self.process_span(..).run_with_error_type(handler)` instead.
    pub async fn process<F, T, E>(
        &self,
        delivery: &TracedDelivery,
        handler: F,
    ) -> std::result::Result<T, E>
    where
        F: std::future::Future<Output = std::result::Result<T, E>>,
        E: fmt::Display,
    {
        self.process_span(delivery).run(handler).await
    }
}
