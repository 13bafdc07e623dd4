//! [`TracedPublisher`]: publishes over a lapin channel with trace context in the headers and a
//! PRODUCER `send {destination}` span per message.

use std::fmt;
use std::sync::{Arc, RwLock};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use mqtrace_core::span::SpanExtras;
use mqtrace_core::{Instrumentation, MessagingSpan, MessagingSpanBuilder, OperationType};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY;

use crate::destination::publish_destination;
use crate::error::{Error, Result, error_type};
use crate::headers::merge_injected;
use crate::{SYSTEM, server_of};

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
    connection: Arc<Connection>,
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

impl TracedPublisher {
    /// Opens a channel on `connection` with publisher confirms on.
    pub async fn open(connection: Arc<Connection>) -> Result<Self> {
        Self::open_with_confirms(connection, true).await
    }

    /// Opens a channel on `connection`, with or without publisher confirms.
    pub async fn open_with_confirms(connection: Arc<Connection>, confirms: bool) -> Result<Self> {
        let channel = open_channel(&connection, confirms).await?;
        Ok(Self {
            connection,
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
        self.channel
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The connection channels are opened on.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    async fn usable_channel(&self) -> Result<Channel> {
        let channel = self.inner();
        if channel.status().connected() {
            return Ok(channel);
        }
        let fresh = open_channel(&self.connection, self.confirms).await?;
        *self
            .channel
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
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
        let Target {
            exchange,
            routing_key,
        } = target;
        let destination = publish_destination(exchange, routing_key);
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
        let failed = |span: MessagingSpan, source: lapin::Error| {
            span.end_with_error(error_type(&source), source.to_string());
            Error::Publish {
                destination: destination.clone(),
                source,
            }
        };
        let channel = match self.usable_channel().await {
            Ok(channel) => channel,
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
        match confirm.await {
            Err(source) => Err(failed(span, source)),
            Ok(Confirmation::NotRequested) => {
                span.end();
                Ok(Published::Sent)
            }
            Ok(Confirmation::Ack(None)) => {
                span.end();
                Ok(Published::Confirmed)
            }
            Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                let reply_text = returned.reply_text.as_str().to_owned();
                span.end_with_error(
                    "returned",
                    format!("message returned: {} {reply_text}", returned.reply_code),
                );
                Err(Error::Returned {
                    destination,
                    reply_code: returned.reply_code,
                    reply_text,
                })
            }
            Ok(Confirmation::Nack(None)) => {
                span.end_with_error("nack", "the broker nacked the message");
                Err(Error::Nacked { destination })
            }
        }
    }
}
