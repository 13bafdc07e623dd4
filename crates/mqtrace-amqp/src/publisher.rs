//! [`TracedPublisher`]: publishes over a lapin channel with trace context in the headers and a
//! PRODUCER `send {destination}` span per message; [`Unconfirmed`]: a publish the broker never
//! confirmed, handed back in the error so that it can be republished in the same trace.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, RwLock};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use mqtrace_core::span::SpanExtras;
use mqtrace_core::{Instrumentation, MessagingSpan, MessagingSpanBuilder, OperationType};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY;

use crate::confirm::{Kept, PendingConfirm, Sent};
use crate::destination::publish_destination;
use crate::error::{Error, Result, error_type};
use crate::headers::merge_injected;
use crate::{SYSTEM, server_of};

/// Send span attribute: how often this message was published before, on a republish of an
/// [`Unconfirmed`] message (absent on a first publish). Modelled on OpenTelemetry's
/// `http.request.resend_count`; the messaging conventions have no equivalent yet.
pub const RESEND_COUNT: &str = "mqtrace.message.resend_count";

/// Where a message is published: an exchange (empty for the default exchange) and a
/// routing key (the queue name, on the default exchange).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The exchange; `""` is the default exchange.
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
}

impl<'a> Target<'a> {
    /// The default exchange, routing straight to `queue`.
    pub fn queue(queue: &'a str) -> Self {
        Self {
            exchange: "",
            routing_key: queue,
        }
    }
}

/// What the broker said about a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// Publisher confirms are on and the broker acknowledged the message.
    Confirmed,
    /// Publisher confirms are off: the frame was written, nothing more is known.
    Sent,
}

/// A message whose publish the broker did not confirm: the channel or the connection closed
/// before the confirm arrived (a broker restart, `rabbitmqctl close_connection`, a network
/// cut), the publish could not be written, or the broker nacked it. The broker may or may not
/// have stored it, so publishing it again is at-least-once delivery: consumers may see it
/// twice.
///
/// It comes back inside the error ([`Error::Publish`] or [`Error::Nacked`]; take it with
/// [`Error::into_unconfirmed`]) with everything needed to publish it again: destination,
/// options, payload, the application's properties and headers, the send span's links and
/// attributes, and the failed send span itself. [`TracedPublisher::republish`] publishes it
/// **in the same trace**: the new send span is a child of the failed one, carries
/// [`RESEND_COUNT`], and its context is what the message carries, so the consumer's process
/// span continues the trace through the attempt that worked.
///
/// Republishing after the connection closed needs a new connection first:
/// [`TracedPublisher::reconnect`].
///
/// # Example
///
/// ```no_run
/// # async fn run(url: &str, publisher: mqtrace_amqp::TracedPublisher) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use lapin::options::BasicPublishOptions;
/// use lapin::{BasicProperties, Connection, ConnectionProperties};
///
/// let sent = publisher
///     .publish("", "requests", BasicPublishOptions::default(), b"{}", BasicProperties::default())
///     .await;
/// if let Err(error) = sent {
///     // Other errors (e.g. an unroutable message) come back as they were.
///     let unconfirmed = error.into_unconfirmed()?;
///     if !publisher.connection().status().connected() {
///         let connection = Connection::connect(url, ConnectionProperties::default()).await?;
///         publisher.reconnect(Arc::new(connection)).await?;
///     }
///     publisher.republish(unconfirmed).await?;
/// }
/// # Ok(()) }
/// ```
pub struct Unconfirmed {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) options: BasicPublishOptions,
    pub(crate) payload: Vec<u8>,
    pub(crate) properties: BasicProperties,
    pub(crate) extras: SpanExtras,
    /// The failed send span, active in its parent's context (baggage included).
    pub(crate) attempt: Context,
    pub(crate) resend_count: u32,
}

impl fmt::Debug for Unconfirmed {
    /// Never shows the payload or the headers, only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unconfirmed")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("payload_len", &self.payload.len())
            .field("message_id", self.properties.message_id())
            .field("resend_count", &self.resend_count)
            .finish_non_exhaustive()
    }
}

impl Unconfirmed {
    /// The exchange (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The destination, as span names show it (`exchange:routing key`).
    pub fn destination(&self) -> String {
        publish_destination(&self.exchange, &self.routing_key)
    }

    /// The publish options.
    pub fn options(&self) -> BasicPublishOptions {
        self.options
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The properties as the application gave them (headers without the injected trace
    /// context, which a republish writes afresh).
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// The span context of the send span that was not confirmed; a republish's send span is
    /// its child.
    pub fn send_span_context(&self) -> SpanContext {
        self.attempt.span().span_context().clone()
    }

    /// How often the message was published before the failed attempt (0 when it failed on
    /// its first publish).
    pub fn resend_count(&self) -> u32 {
        self.resend_count
    }
}

/// One publish: where, how, what, and its place in the trace.
struct Attempt<'a> {
    target: Target<'a>,
    options: BasicPublishOptions,
    payload: &'a [u8],
    properties: BasicProperties,
    extras: SpanExtras,
    resend_count: u32,
}

impl<'a> Attempt<'a> {
    /// A message's first publish.
    fn first(
        target: Target<'a>,
        options: BasicPublishOptions,
        payload: &'a [u8],
        properties: BasicProperties,
        extras: SpanExtras,
    ) -> Self {
        Self {
            target,
            options,
            payload,
            properties,
            extras,
            resend_count: 0,
        }
    }
}

/// Publishes over a lapin [`Channel`] so that every message carries the current trace
/// context in its headers and is traced as a PRODUCER `send {destination}` span.
///
/// With publisher confirms (the default) the span ends at the broker's confirm: an ack ends
/// it successfully; a nack, or the return of an unroutable mandatory message, ends it with
/// error status and `error.type`, and the caller gets [`Error::Nacked`] or
/// [`Error::Returned`]. Without confirms the span ends once the frame is written.
///
/// When the broker closes the channel (publishing to a missing exchange does that), the
/// publish fails with [`Error::Publish`] and the next publish opens a fresh channel, so one
/// bad destination does not break the publisher.
///
/// When the connection closes, every publish still waiting for its confirm fails with
/// [`Error::Publish`], and so does every later publish until [`TracedPublisher::reconnect`]
/// moves the publisher to a new connection. [`Error::Publish`] and [`Error::Nacked`] hand the
/// message back as an [`Unconfirmed`]; [`TracedPublisher::republish`] publishes it again in
/// the same trace (at least once: the broker may have stored the first attempt).
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use lapin::{BasicProperties, Connection, ConnectionProperties};
/// use lapin::options::BasicPublishOptions;
/// use mqtrace_amqp::TracedPublisher;
///
/// let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// let connection = Arc::new(Connection::connect(url, ConnectionProperties::default()).await?);
/// let publisher = TracedPublisher::open(connection).await?.with_server_from_url(url);
/// publisher
///     .publish("", "requests", BasicPublishOptions::default(), b"{}", BasicProperties::default())
///     .await?;
/// # Ok(()) }
/// ```
pub struct TracedPublisher {
    connection: RwLock<Arc<Connection>>,
    channel: RwLock<Channel>,
    confirms: bool,
    instrumentation: Instrumentation,
    server: Option<(String, i64)>,
}

impl fmt::Debug for TracedPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedPublisher")
            .field("confirms", &self.confirms)
            .field("instrumentation", &self.instrumentation)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

async fn open_channel(connection: &Connection, confirms: bool) -> Result<Channel> {
    let channel = connection.create_channel().await.map_err(Error::Channel)?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(Error::Channel)?;
    }
    Ok(channel)
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
}

impl TracedPublisher {
    /// Opens a channel on `connection` with publisher confirms on.
    pub async fn open(connection: Arc<Connection>) -> Result<Self> {
        Self::open_with_confirms(connection, true).await
    }

    /// Opens a channel on `connection`, with or without publisher confirms.
    pub async fn open_with_confirms(connection: Arc<Connection>, confirms: bool) -> Result<Self> {
        let channel = open_channel(&connection, confirms).await?;
        Ok(Self {
            connection: RwLock::new(connection),
            channel: RwLock::new(channel),
            confirms,
            instrumentation: Instrumentation::global(),
            server: None,
        })
    }

    /// Uses these providers and propagation settings instead of the global ones.
    pub fn with_instrumentation(mut self, instrumentation: Instrumentation) -> Self {
        self.instrumentation = instrumentation;
        self
    }

    /// `server.address`/`server.port` from an `amqp://` URL (credentials are not recorded).
    pub fn with_server_from_url(mut self, url: &str) -> Self {
        self.server = server_of(url);
        self
    }

    /// The channel messages are published on now (it is replaced after the broker closes it).
    pub fn inner(&self) -> Channel {
        read(&self.channel)
    }

    /// The connection channels are opened on now (it is replaced by
    /// [`TracedPublisher::reconnect`]). `connection().status().connected()` tells whether a
    /// failed publish needs a reconnect before it is republished.
    pub fn connection(&self) -> Arc<Connection> {
        read(&self.connection)
    }

    /// Moves the publisher to `connection` (a new one, after the old one closed): opens a
    /// channel on it (with confirms, if the publisher uses them) and publishes there from now
    /// on. Publishes still waiting on the old connection are not moved: each fails on its own
    /// with an [`Unconfirmed`] to [`republish`](TracedPublisher::republish). The old
    /// connection is not closed; it is dropped with the last handle to it.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(publisher: mqtrace_amqp::TracedPublisher) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use lapin::{Connection, ConnectionProperties};
    ///
    /// let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// if !publisher.connection().status().connected() {
    ///     let properties = ConnectionProperties::default().with_connection_name("scorer".into());
    ///     publisher.reconnect(Arc::new(Connection::connect(url, properties).await?)).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reconnect(&self, connection: Arc<Connection>) -> Result<()> {
        let channel = open_channel(&connection, self.confirms).await?;
        write(&self.connection, connection);
        write(&self.channel, channel);
        Ok(())
    }

    async fn usable_channel(&self) -> Result<Channel> {
        let channel = self.inner();
        if channel.status().connected() {
            return Ok(channel);
        }
        let fresh = open_channel(&self.connection(), self.confirms).await?;
        write(&self.channel, fresh.clone());
        Ok(fresh)
    }

    /// Publishes `payload` as a child of the caller's current context.
    ///
    /// The application's headers in `properties` are kept; an existing `traceparent`,
    /// `tracestate` or `baggage` (e.g. copied from a consumed message) is replaced by the
    /// current context.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Published> {
        let parent = Context::current();
        self.publish_with_context(exchange, routing_key, options, payload, properties, &parent)
            .await
    }

    /// Publishes `payload` as a child of `parent`.
    pub async fn publish_with_context(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
        parent: &Context,
    ) -> Result<Published> {
        let target = Target {
            exchange,
            routing_key,
        };
        let extras = SpanExtras::default();
        self.publish_with_links(target, options, payload, properties, parent, extras)
            .await
    }

    /// Publishes `payload` to `target` as a child of `parent`, its send span also carrying
    /// `extras`' links (a reply sent from a batch links to the batch span, for one) and
    /// attributes.
    pub async fn publish_with_links(
        &self,
        target: Target<'_>,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
        parent: &Context,
        extras: SpanExtras,
    ) -> Result<Published> {
        let attempt = Attempt::first(target, options, payload, properties, extras);
        self.publish_attempt(attempt, parent).await
    }

    /// Publishes a message the broker did not confirm again, in its trace: the send span is a
    /// child of the failed attempt's send span (so it keeps its trace and baggage whatever
    /// the original parent was), with the same links and attributes plus [`RESEND_COUNT`];
    /// the message carries the new span's context. Fails like any publish, with a new
    /// [`Unconfirmed`] whose [`resend_count`](Unconfirmed::resend_count) is one higher.
    ///
    /// After the connection closed, call [`TracedPublisher::reconnect`] first, or this fails
    /// too.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(publisher: mqtrace_amqp::TracedPublisher) -> Result<(), Box<dyn std::error::Error>> {
    /// use lapin::BasicProperties;
    /// use lapin::options::BasicPublishOptions;
    ///
    /// let mut result = publisher
    ///     .publish("", "requests", BasicPublishOptions::default(), b"{}", BasicProperties::default())
    ///     .await;
    /// // Retry a nacked or unconfirmed message a few times, keeping its trace.
    /// for _ in 0..3 {
    ///     match result {
    ///         Err(error) => result = publisher.republish(error.into_unconfirmed()?).await,
    ///         Ok(_) => break,
    ///     }
    /// }
    /// result?;
    /// # Ok(()) }
    /// ```
    pub async fn republish(&self, unconfirmed: Unconfirmed) -> Result<Published> {
        let Unconfirmed {
            exchange,
            routing_key,
            options,
            payload,
            properties,
            extras,
            attempt: failed,
            resend_count,
        } = unconfirmed;
        let attempt = Attempt {
            target: Target {
                exchange: &exchange,
                routing_key: &routing_key,
            },
            options,
            payload: &payload,
            properties,
            extras,
            resend_count: resend_count.saturating_add(1),
        };
        self.publish_attempt(attempt, &failed).await
    }

    async fn publish_attempt(&self, attempt: Attempt<'_>, parent: &Context) -> Result<Published> {
        self.send_attempt(attempt, parent).await?.confirmed().await
    }

    /// Publishes `payload` as a child of the caller's current context and returns once the
    /// broker has it, before its confirm: awaiting the returned [`PendingConfirm`] gives what
    /// [`TracedPublisher::publish`] gives, and ends the send span. As lapin's
    /// `basic_publish` returns its `PublisherConfirm`, so that many messages can be in
    /// flight at once on one channel.
    ///
    /// The message is kept (payload and properties copied) until its confirm, to hand it back
    /// in [`Error::Nacked`] or [`Error::Publish`]. Dropping the `PendingConfirm` leaves the
    /// message published; its send span then ends as `cancelled`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # async fn run(publisher: mqtrace_amqp::TracedPublisher) -> Result<(), Box<dyn std::error::Error>> {
    /// use lapin::BasicProperties;
    /// use lapin::options::BasicPublishOptions;
    ///
    /// let mut pending = Vec::new();
    /// for n in 0..100 {
    ///     let body = format!("request {n}");
    ///     pending.push(
    ///         publisher
    ///             .begin_publish("", "requests", BasicPublishOptions::default(), body.as_bytes(), BasicProperties::default())
    ///             .await?,
    ///     );
    /// }
    /// for confirm in pending {
    ///     confirm.await?; // Confirmed, or Nacked with the message handed back
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn begin_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm> {
        let target = Target {
            exchange,
            routing_key,
        };
        let attempt = Attempt::first(target, options, payload, properties, SpanExtras::default());
        let parent = Context::current();
        let sent = self.send_attempt(attempt, &parent).await?;
        Ok(PendingConfirm::new(sent.into_owned()))
    }

    /// Starts the send span and publishes, up to the broker's confirm.
    async fn send_attempt<'a>(&self, attempt: Attempt<'a>, parent: &Context) -> Result<Sent<'a>> {
        let Attempt {
            target,
            options,
            payload,
            properties,
            extras,
            resend_count,
        } = attempt;
        let Target {
            exchange,
            routing_key,
        } = target;
        let destination = publish_destination(exchange, routing_key);
        // Kept to hand the message back if the broker does not confirm it.
        let kept = Kept {
            exchange: Cow::Borrowed(exchange),
            routing_key: Cow::Borrowed(routing_key),
            options,
            payload: Cow::Borrowed(payload),
            properties: properties.clone(),
            extras: extras.clone(),
            resend_count,
        };
        let mut builder = MessagingSpanBuilder::new(SYSTEM, OperationType::Send, "send")
            .with_extras(extras)
            .with_destination(destination.clone())
            .with_body_size(payload.len());
        if !routing_key.is_empty() {
            builder = builder.with_attribute(KeyValue::new(
                MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                routing_key.to_owned(),
            ));
        }
        if resend_count > 0 {
            builder = builder.with_attribute(KeyValue::new(RESEND_COUNT, i64::from(resend_count)));
        }
        if let Some(id) = properties.message_id() {
            builder = builder.with_message_id(id.as_str().to_owned());
        }
        if let Some(conversation) = properties.correlation_id() {
            builder = builder.with_attribute(KeyValue::new(
                mqtrace_core::semconv::MESSAGING_MESSAGE_CONVERSATION_ID,
                conversation.as_str().to_owned(),
            ));
        }
        if let Some((address, port)) = &self.server {
            builder = builder.with_server(address.clone(), *port);
        }
        let span = builder.start(&self.instrumentation, parent);

        let injected = self.instrumentation.propagation().inject(span.context());
        let properties = match merge_injected(properties.headers().clone(), &injected) {
            Some(headers) => properties.with_headers(headers),
            None => properties,
        };
        let failed = |span: MessagingSpan, source: lapin::Error| Error::Publish {
            destination: destination.clone(),
            message: kept.unconfirmed(span, error_type(&source), source.to_string()),
            source,
        };
        let channel = match self.usable_channel().await {
            Ok(channel) => channel,
            Err(Error::Channel(source)) => return Err(failed(span, source)),
            Err(error) => {
                span.end_with_error("channel", error.to_string());
                return Err(error);
            }
        };
        let confirm = match channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                payload,
                properties,
            )
            .await
        {
            Ok(confirm) => confirm,
            Err(source) => return Err(failed(span, source)),
        };
        Ok(Sent {
            span,
            confirm,
            destination,
            kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtrace_core::span::SpanExtras;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    fn failed_send() -> SpanContext {
        SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            SpanId::from(0xb7ad6b7169203331),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    }

    fn unconfirmed(resend_count: u32) -> Unconfirmed {
        Unconfirmed {
            exchange: "orders".into(),
            routing_key: "eu".into(),
            options: BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload: b"secret card number".to_vec(),
            properties: BasicProperties::default().with_message_id("m-7".into()),
            extras: SpanExtras::new(Vec::new(), vec![KeyValue::new("ml.decision", "approve")]),
            attempt: Context::new().with_remote_span_context(failed_send()),
            resend_count,
        }
    }

    fn lapin_error() -> lapin::Error {
        lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into()
    }

    #[test]
    fn an_unconfirmed_publish_hands_its_message_back() {
        let error = Error::Publish {
            destination: "orders:eu".into(),
            source: lapin_error(),
            message: Box::new(unconfirmed(0)),
        };
        assert_eq!(
            error.unconfirmed().map(Unconfirmed::destination).as_deref(),
            Some("orders:eu")
        );
        let message = error.into_unconfirmed().expect("the message comes back");
        assert_eq!(message.exchange(), "orders");
        assert_eq!(message.routing_key(), "eu");
        assert!(message.options().mandatory);
        assert_eq!(message.payload(), b"secret card number");
        assert_eq!(
            message
                .properties()
                .message_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some("m-7")
        );
        assert_eq!(message.send_span_context(), failed_send());
        assert_eq!(message.resend_count(), 0);
    }

    #[test]
    fn a_nacked_publish_hands_its_message_back() {
        let error = Error::Nacked {
            destination: "orders:eu".into(),
            message: Box::new(unconfirmed(2)),
        };
        assert!(error.to_string().contains("republish"), "{error}");
        let message = error.into_unconfirmed().expect("the message comes back");
        assert_eq!(message.resend_count(), 2);
    }

    #[test]
    fn other_errors_come_back_unchanged() {
        let returned = Error::Returned {
            destination: "orders:eu".into(),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        };
        assert!(returned.unconfirmed().is_none());
        let error = returned.into_unconfirmed().expect_err("not republishable");
        assert!(matches!(
            error,
            Error::Returned {
                reply_code: 312,
                ..
            }
        ));
        assert!(Error::Channel(lapin_error()).into_unconfirmed().is_err());
    }

    #[test]
    fn the_error_says_what_to_do() {
        let error = Error::Publish {
            destination: "orders:eu".into(),
            source: lapin_error(),
            message: Box::new(unconfirmed(0)),
        };
        let text = error.to_string();
        for hint in [
            "orders:eu",
            "not confirmed",
            "into_unconfirmed",
            "republish",
            "reconnect",
        ] {
            assert!(text.contains(hint), "{hint:?} in {text:?}");
        }
    }

    #[test]
    fn errors_and_unconfirmed_messages_cross_tasks() {
        fn sendable<T: Send + Sync + 'static>() {}
        sendable::<Error>();
        sendable::<Unconfirmed>();
    }

    #[test]
    fn debug_never_shows_the_payload() {
        let debug = format!("{:?}", unconfirmed(1));
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("payload_len: 18"), "{debug}");
        assert!(debug.contains("m-7"), "{debug}");
    }
}
