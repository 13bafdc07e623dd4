//! The batch traits of [`mqtrace_core::batch`] for Kafka: [`TracedConsumer`] is a
//! [`MessageSource`] of [`OwnedTracedMessage`]s whose batches settle by committing offsets,
//! and [`TracedProducer`] is a [`MessageSink`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mqtrace_core::batch::{
    InboundMessage, MessageSink, MessageSource, Outgoing, ReceiveFailure, SendFailure,
};
use mqtrace_core::propagation::Extracted;
use mqtrace_core::span::SpanExtras;
use mqtrace_core::{MessagingSpanBuilder, OperationType, semconv};
use opentelemetry::trace::Link;
use opentelemetry::{Context, KeyValue, StringValue};
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, error_type};
use crate::{SYSTEM, TracedConsumer, TracedMessage, TracedProducer};

/// How long a [`MessageSink`] send waits for room in the producer's queue.
const SINK_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumed message detached from its consumer (payload, key and headers copied), with the
/// producer's context. What [`TracedConsumer`] yields as a [`MessageSource`].
#[derive(Debug)]
pub struct OwnedTracedMessage {
    message: OwnedMessage,
    extracted: Extracted,
}

impl OwnedTracedMessage {
    /// The rdkafka message.
    pub fn message(&self) -> &OwnedMessage {
        &self.message
    }

    /// The producer's context, or an empty context.
    pub fn context(&self) -> &Context {
        &self.extracted.context
    }
}

impl crate::consumer::ConsumedMessage for OwnedTracedMessage {
    type Message = OwnedMessage;

    fn kafka_message(&self) -> &OwnedMessage {
        &self.message
    }

    fn extracted(&self) -> &Extracted {
        &self.extracted
    }
}

impl TracedMessage<'_> {
    /// Copies the message out of the consumer's buffer, so it can outlive the borrow: spawn
    /// its handling onto a task, and still trace it with [`TracedConsumer::process`] and
    /// settle it with [`TracedConsumer::commit_message`] (both take an owned message).
    pub fn detach(&self) -> OwnedTracedMessage {
        OwnedTracedMessage {
            message: self.message.detach(),
            extracted: self.extracted.clone(),
        }
    }
}

impl InboundMessage for OwnedTracedMessage {
    fn extracted(&self) -> &Extracted {
        &self.extracted
    }

    fn payload(&self) -> &[u8] {
        self.message.payload().unwrap_or_default()
    }

    fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }

    fn destination(&self) -> &str {
        self.message.topic()
    }

    fn enqueued_at(&self) -> Option<SystemTime> {
        let millis = self.message.timestamp().to_millis()?;
        let millis = u64::try_from(millis).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_millis(millis))
    }

    fn message_id(&self) -> Option<&str> {
        None
    }

    fn identity(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_PARTITION_ID,
                mqtrace_core::span::partition_id(self.message.partition()),
            ),
            KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, self.message.offset()),
        ]
    }
}

/// Where a batch stops, per partition: the offsets to commit (last offset + 1).
fn commit_offsets(messages: &[OwnedTracedMessage]) -> BTreeMap<(&str, i32), i64> {
    let mut next = BTreeMap::new();
    for message in messages {
        let message = &message.message;
        let entry = next
            .entry((message.topic(), message.partition()))
            .or_insert(i64::MIN);
        *entry = (*entry).max(message.offset() + 1);
    }
    next
}

impl<C: ConsumerContext + 'static> MessageSource for TracedConsumer<C> {
    type Message = OwnedTracedMessage;
    type Error = Error;

    fn system(&self) -> &'static str {
        SYSTEM
    }

    fn consumer_group(&self) -> Option<&str> {
        self.group.as_ref().map(StringValue::as_str)
    }

    fn client_id(&self) -> Option<&str> {
        self.client_id.as_ref().map(StringValue::as_str)
    }

    /// librdkafka reports broker outages to the consumer as errors (`AllBrokersDown`,
    /// `BrokerTransportFailure`...) and reconnects by itself: every receive error is transient
    /// but a fatal one (`KafkaError::MessageConsumptionFatal`).
    fn receive_failure(&self, error: &Error) -> ReceiveFailure {
        match error {
            Error::Receive(KafkaError::MessageConsumptionFatal(_)) => ReceiveFailure::Fatal,
            Error::Receive(_) => ReceiveFailure::Transient,
            _ => ReceiveFailure::Fatal,
        }
    }

    /// Cancel-safe, like rdkafka's `StreamConsumer::recv`.
    async fn next_message(&mut self) -> Option<Result<OwnedTracedMessage, Error>> {
        Some(self.recv().await.map(|message| message.detach()))
    }

    /// Commits, per partition, the offset after the batch's last message (asynchronously
    /// unless [`TracedConsumer::with_batch_commit_mode`] says otherwise; a commit that is lost
    /// only means the batch is delivered again). Traced as a `commit {topic}` settle span per
    /// topic.
    ///
    /// For at-least-once processing the consumer must not commit on its own: create it with
    /// `enable.auto.commit=false` (or `enable.auto.offset.store=false`).
    async fn settle(
        &mut self,
        messages: &[OwnedTracedMessage],
        parent: &Context,
    ) -> Result<(), Error> {
        let offsets = commit_offsets(messages);
        if offsets.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for ((topic, partition), offset) in &offsets {
            // Adding to a fresh list cannot fail for a valid offset.
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        let topic = offsets.keys().next().map(|(t, _)| *t).unwrap_or_default();
        let same_topic = offsets.keys().all(|(t, _)| *t == topic);
        let mut builder = MessagingSpanBuilder::new(SYSTEM, OperationType::Settle, "commit");
        if same_topic {
            builder = builder.with_destination(topic.to_owned());
        }
        let mut span = self
            .with_client_attributes(builder)
            .start(self.instrumentation(), parent);
        span.set_message_count(messages.len() as u64);
        match self.inner().commit(&list, self.batch_commit_mode) {
            Ok(()) => {
                span.end();
                Ok(())
            }
            Err(source) => {
                span.end_with_error(error_type(&source), source.to_string());
                let offsets = offsets
                    .iter()
                    .map(|((topic, partition), offset)| format!("{topic}[{partition}]@{offset}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                Err(Error::CommitBatch { offsets, source })
            }
        }
    }
}

impl<C> MessageSink for TracedProducer<C>
where
    C: rdkafka::client::ClientContext + 'static,
    TracedProducer<C>: Sync,
{
    type Error = Error;

    /// [`SendFailure::Rejected`] when [`Error::is_rejected`]: a message too large for
    /// `message.max.bytes`, an unknown topic, a refused authorization.
    fn classify(&self, error: &Error) -> SendFailure {
        if error.is_rejected() {
            SendFailure::Rejected
        } else {
            SendFailure::Transient
        }
    }

    /// Sends to topic `message.destination`; resolves at the delivery report.
    async fn send(
        &self,
        message: Outgoing<'_>,
        parent: &Context,
        links: Vec<Link>,
    ) -> Result<(), Error> {
        let mut record =
            FutureRecord::<[u8], [u8]>::to(message.destination).payload(message.payload);
        if let Some(key) = message.key {
            record = record.key(key);
        }
        if !message.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
            for (key, value) in message.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(*value),
                });
            }
            record = record.headers(headers);
        }
        let extras = SpanExtras::new(links, message.span_attributes.to_vec());
        self.send_with_links(record, SINK_QUEUE_TIMEOUT, parent, extras)
            .await
            .map(drop)
    }
}
