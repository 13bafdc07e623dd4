//! The batch traits of [`mqtrace_core::batch`] for RabbitMQ: [`TracedConsumer`] is a
//! [`MessageSource`] of [`TracedDelivery`]s whose batches settle by acknowledging each
//! delivery, and [`TracedPublisher`] is a [`MessageSink`] publishing through the default
//! exchange.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::try_join_all;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, ByteArray, FieldTable};
use mqtrace_core::batch::{InboundMessage, MessageSink, MessageSource, Outgoing, SendFailure};
use mqtrace_core::propagation::Extracted;
use opentelemetry::trace::Link;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG;

use crate::error::Error;
use crate::publisher::Target;
use crate::{SYSTEM, TracedConsumer, TracedDelivery, TracedPublisher};
use mqtrace_core::span::SpanExtras;

impl InboundMessage for TracedDelivery {
    fn extracted(&self) -> &Extracted {
        TracedDelivery::extracted(self)
    }

    fn payload(&self) -> &[u8] {
        &self.delivery().data
    }

    fn key(&self) -> Option<&[u8]> {
        None
    }

    fn destination(&self) -> &str {
        TracedDelivery::destination(self)
    }

    /// The `timestamp` property (whole seconds), when the publisher set it.
    fn enqueued_at(&self) -> Option<SystemTime> {
        let seconds = (*self.delivery().properties.timestamp())?;
        UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
    }

    fn message_id(&self) -> Option<&str> {
        self.delivery()
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str())
    }

    fn identity(&self) -> Vec<KeyValue> {
        let mut identity = vec![KeyValue::new(
            MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
            i64::try_from(self.delivery().delivery_tag).unwrap_or(i64::MAX),
        )];
        if let Some(id) = self.message_id() {
            identity.push(KeyValue::new(
                mqtrace_core::semconv::MESSAGING_MESSAGE_ID,
                id.to_owned(),
            ));
        }
        identity
    }

    fn link(&self) -> Option<Link> {
        TracedDelivery::link(self)
    }
}

impl MessageSource for TracedConsumer {
    type Message = TracedDelivery;
    type Error = Error;

    fn system(&self) -> &'static str {
        SYSTEM
    }

    /// Cancel-safe: lapin buffers deliveries.
    async fn next_message(&mut self) -> Option<Result<TracedDelivery, Error>> {
        self.next().await
    }

    /// Acknowledges every delivery of the batch, each an `ack` settle span under `parent`.
    async fn settle(&mut self, messages: &[TracedDelivery], parent: &Context) -> Result<(), Error> {
        use opentelemetry::context::FutureExt;
        try_join_all(
            messages
                .iter()
                .map(|delivery| delivery.ack(BasicAckOptions::default())),
        )
        .with_context(parent.clone())
        .await
        .map(drop)
    }
}

impl MessageSink for TracedPublisher {
    type Error = Error;

    /// [`SendFailure::Rejected`] when [`Error::is_rejected`] (unroutable, or refused with
    /// `PRECONDITION_FAILED`); anything else may succeed on a later attempt.
    fn classify(&self, error: &Error) -> SendFailure {
        if error.is_rejected() {
            SendFailure::Rejected
        } else {
            SendFailure::Transient
        }
    }

    /// Publishes to queue `message.destination` through the default exchange; headers are
    /// written as byte arrays, the message id as the `message_id` property. Resolves at the
    /// publisher confirm (when confirms are on).
    async fn send(
        &self,
        message: Outgoing<'_>,
        parent: &Context,
        links: Vec<Link>,
    ) -> Result<(), Error> {
        let mut properties = BasicProperties::default();
        if !message.headers.is_empty() {
            let mut headers = FieldTable::default();
            for (key, value) in message.headers {
                headers.insert(
                    (*key).into(),
                    AMQPValue::ByteArray(ByteArray::from(value.to_vec())),
                );
            }
            properties = properties.with_headers(headers);
        }
        if let Some(id) = message.message_id {
            properties = properties.with_message_id(id.into());
        }
        self.publish_with_links(
            Target::queue(message.destination),
            BasicPublishOptions::default(),
            message.payload,
            properties,
            parent,
            SpanExtras::new(links, message.span_attributes.to_vec()),
        )
        .await
        .map(drop)
    }
}
