//! [`TracedProducer`]: a rdkafka `FutureProducer` that propagates context and traces sends.

use std::fmt;

use mqtrace_core::span::{SpanExtras, destination_name, parse_server, partition_id};
use mqtrace_core::{Instrumentation, KeyCapture, MessagingSpanBuilder, OperationType, semconv};
use opentelemetry::{Context, KeyValue, StringValue};
use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::message::ToBytes;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

pub use rdkafka::producer::future_producer::Delivery;

use crate::SYSTEM;
use crate::client_config::config_value;
use crate::error::{Error, Result, error_type};
use crate::headers::merge_injected;

/// A `FutureProducer` whose sends carry the current trace context in the message headers
/// and are traced as PRODUCER `send {topic}` spans.
///
/// The span ends when the delivery report arrives and records the partition and
/// `messaging.kafka.offset` the broker assigned; a failed delivery ends it with error status
/// and `error.type` (the librdkafka error code), and the caller gets [`Error::Delivery`] with
/// the message back. `messaging.client.sent.messages` and
/// `messaging.client.operation.duration` are recorded with it.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtrace_kafka::TracedProducer;
/// use rdkafka::ClientConfig;
/// use rdkafka::producer::FutureRecord;
/// use std::time::Duration;
///
/// let producer = TracedProducer::from_config(
///     ClientConfig::new().set("bootstrap.servers", "localhost:9092"),
/// )?;
/// let delivery = producer
///     .send(FutureRecord::<str, str>::to("requests").payload("hello"), Duration::from_secs(5))
///     .await?;
/// println!("stored at offset {}", delivery.offset);
/// # Ok(()) }
/// ```
///
/// Like `FutureProducer`, it is `Clone`: a clone is cheap (reference counts) and shares
/// the same librdkafka client and the same instrumentation, so each task can own one and
/// its sends are traced exactly like the original's.
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use mqtrace_kafka::TracedProducer;
/// use rdkafka::ClientConfig;
///
/// let producer = TracedProducer::from_config(
///     ClientConfig::new().set("bootstrap.servers", "localhost:9092"),
/// )?;
/// let for_the_task = producer.clone(); // no second client
/// # let _ = for_the_task;
/// # Ok(()) }
/// ```
pub struct TracedProducer<C: ClientContext + 'static = DefaultClientContext> {
    inner: FutureProducer<C>,
    instrumentation: Instrumentation,
    key_capture: KeyCapture,
    server: Option<(StringValue, i64)>,
}

impl<C: ClientContext + 'static> fmt::Debug for TracedProducer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedProducer")
            .field("instrumentation", &self.instrumentation)
            .field("key_capture", &self.key_capture)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

// Not derived: `FutureProducer<C>` is `Clone` for any context, and a derive would demand
// `C: Clone` as well.
impl<C: ClientContext + 'static> Clone for TracedProducer<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            instrumentation: self.instrumentation.clone(),
            key_capture: self.key_capture,
            server: self.server.clone(),
        }
    }
}

impl TracedProducer<DefaultClientContext> {
    /// Creates the producer from `config`; `server.address`/`server.port` come from its
    /// `bootstrap.servers`.
    pub fn from_config(config: &ClientConfig) -> Result<Self> {
        let inner: FutureProducer = config.create().map_err(|source| Error::Create {
            client: "producer",
            source,
        })?;
        Ok(Self::new(inner))
    }
}

impl<C: ClientContext + 'static> TracedProducer<C> {
    /// Wraps an existing producer, with the global telemetry providers;
    /// `server.address`/`server.port` are read from the client's own `bootstrap.servers`
    /// (its first broker), as [`TracedProducer::from_config`] does.
    pub fn new(inner: FutureProducer<C>) -> Self {
        let server = config_value(inner.client(), "bootstrap.servers")
            .as_deref()
            .and_then(parse_server)
            .map(|(address, port)| (crate::shared(&address), port));
        Self {
            inner,
            instrumentation: Instrumentation::global(),
            key_capture: KeyCapture::Off,
            server,
        }
    }

    /// Uses these providers and propagation settings instead of the global ones.
    pub fn with_instrumentation(mut self, instrumentation: Instrumentation) -> Self {
        self.instrumentation = instrumentation;
        self
    }

    /// Records message keys (`messaging.kafka.message.key`); off by default.
    pub fn with_key_capture(mut self, key_capture: KeyCapture) -> Self {
        self.key_capture = key_capture;
        self
    }

    /// Sets `server.address`/`server.port` (done by [`TracedProducer::from_config`]).
    pub fn with_server(self, address: impl Into<String>, port: u16) -> Self {
        self.with_server_option(Some((crate::shared(&address.into()), i64::from(port))))
    }

    fn with_server_option(mut self, server: Option<(StringValue, i64)>) -> Self {
        self.server = server;
        self
    }

    /// The wrapped producer, for everything mqtrace does not pass through (transactions,
    /// purge...; `flush` and `in_flight_count` are methods of this type).
    pub fn inner(&self) -> &FutureProducer<C> {
        &self.inner
    }

    /// Sends `record` as a child of the caller's current context.
    ///
    /// Existing `traceparent`/`tracestate`/`baggage` headers on the record (e.g. copied from
    /// a consumed message being forwarded) are replaced by the current context; the
    /// application's other headers are kept. Cancel-safe in the sense of rdkafka's own
    /// `send`: once enqueued, the message is delivered even if this future is dropped (the
    /// span then ends as `cancelled`).
    pub async fn send<K, P, T>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: T,
    ) -> Result<Delivery>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        let parent = Context::current();
        self.send_with_context(record, queue_timeout, &parent).await
    }

    /// Sends `record` as a child of `parent`.
    pub async fn send_with_context<K, P, T>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: T,
        parent: &Context,
    ) -> Result<Delivery>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        self.send_with_links(record, queue_timeout, parent, SpanExtras::default())
            .await
    }

    /// Sends `record` as a child of `parent`, its send span also carrying `extras`' links (a
    /// reply sent from a batch links to the batch span, for one) and attributes.
    pub async fn send_with_links<K, P, T>(
        &self,
        mut record: FutureRecord<'_, K, P>,
        queue_timeout: T,
        parent: &Context,
        extras: SpanExtras,
    ) -> Result<Delivery>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        let mut builder = MessagingSpanBuilder::new(SYSTEM, OperationType::Send, "send")
            .with_extras(extras)
            .with_destination(destination_name(record.topic))
            .with_body_size(record.payload.map_or(0, |p| p.to_bytes().len()));
        let partition_known = record.partition.is_some();
        if let Some(partition) = record.partition {
            builder = builder.with_partition(partition);
        }
        if let Some(key) = record
            .key
            .and_then(|k| self.key_capture.capture(k.to_bytes()))
        {
            builder =
                builder.with_attribute(KeyValue::new(semconv::MESSAGING_KAFKA_MESSAGE_KEY, key));
        }
        if let Some((address, port)) = &self.server {
            builder = builder.with_server(address.clone(), *port);
        }
        let span = builder.start(&self.instrumentation, parent);

        let injected = self.instrumentation.propagation().inject(span.context());
        record.headers = merge_injected(record.headers.take(), &injected);
        // Now, on this thread: its value strings go back to the thread's spares.
        drop(injected);
        let topic = record.topic;

        match self.inner.send(record, queue_timeout).await {
            Ok(delivery) => {
                if !partition_known {
                    span.set_attribute(KeyValue::new(
                        semconv::MESSAGING_DESTINATION_PARTITION_ID,
                        partition_id(delivery.partition),
                    ));
                }
                span.set_attribute(KeyValue::new(
                    semconv::MESSAGING_KAFKA_OFFSET,
                    delivery.offset,
                ));
                span.end();
                Ok(delivery)
            }
            Err((source, message)) => {
                span.end_with_error(error_type(&source), source.to_string());
                Err(Error::Delivery {
                    topic: topic.to_owned(),
                    source,
                    message: Box::new(message),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client context that is not `Clone` itself, as a user's own may be.
    struct NotClone;
    impl ClientContext for NotClone {}

    #[test]
    fn cloneable_whatever_the_client_context() {
        fn assert_clone<T: Clone + Send + Sync>() {}
        assert_clone::<TracedProducer>();
        assert_clone::<TracedProducer<NotClone>>();
    }
}
