//! [`MessagingSpanBuilder`]: a messaging span's name, attributes and links, started into a
//! [`MessagingSpan`].

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::Link;
use opentelemetry::{Context, KeyValue, StringValue, Value};

use super::shared_strings::interned_span_name;
use super::{MessagingSpan, OperationType, partition_id, shared_attributes};
use crate::instrumentation::Instrumentation;
use crate::semconv;

/// Links and attributes a caller adds to a span beyond the standard ones (a reply's send
/// span linking to the batch that produced it, with its decision, for one).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SpanExtras {
    /// Links.
    pub links: Vec<Link>,
    /// Attributes; keep them low-cardinality.
    pub attributes: Vec<KeyValue>,
}

impl SpanExtras {
    /// These links and attributes.
    pub fn new(links: Vec<Link>, attributes: Vec<KeyValue>) -> Self {
        Self { links, attributes }
    }
}

/// Attributes a messaging span is built with room for: up to six metric attributes,
/// `messaging.operation.type`, three of the client's own (a Kafka process span's partition,
/// offset and body size) and two spare slots for attributes known only after the start.
const ATTRIBUTE_CAPACITY: usize = 12;

/// Spare attribute and link vectors each thread keeps for span builders (see
/// [`spare_vec`]).
const SPARE_VECTORS: usize = 4;

thread_local! {
    static SPARE_ATTRIBUTES: std::cell::RefCell<Vec<Vec<KeyValue>>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static SPARE_LINKS: std::cell::RefCell<Vec<Vec<Link>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

type Spares<T> = std::thread::LocalKey<std::cell::RefCell<Vec<Vec<T>>>>;

/// An empty vector with room for `capacity`, from this thread's spares when there is one.
///
/// A span builder collects attributes and links before the sampler decides. A span the
/// sampler drops early gives its vectors back ([`give_back`]), so the next builder takes
/// them instead of allocating: an unsampled message allocates nothing for its spans. A kept
/// span's vectors go to the SDK with the span, as they always did.
fn spare_vec<T>(spares: &'static Spares<T>, capacity: usize) -> Vec<T> {
    spares
        .try_with(|spares| spares.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// `vector`, emptied, kept as a spare for the next builder on this thread.
fn give_back<T>(spares: &'static Spares<T>, mut vector: Vec<T>) {
    if vector.capacity() == 0 {
        return;
    }
    vector.clear();
    let _ = spares.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut()
            && spares.len() < SPARE_VECTORS
        {
            spares.push(vector);
        }
    });
}

/// Builds a messaging span with the semconv attributes.
///
/// When the tracer's sampler is known and drops the span, its name and attribute list are
/// never made, and the vectors its attributes and links were collected in are kept for the
/// next builder on the thread (see
/// [`InstrumentationBuilder::with_sampling`](crate::instrumentation::InstrumentationBuilder::with_sampling)).
///
/// # Example
///
/// ```
/// use mqtrace_core::instrumentation::Instrumentation;
/// use mqtrace_core::span::{MessagingSpanBuilder, OperationType};
/// use opentelemetry::Context;
///
/// let instrumentation = Instrumentation::global();
/// let span = MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
///     .with_destination("orders")
///     .with_partition(3)
///     .start(&instrumentation, &Context::current());
/// span.end();
/// ```
#[derive(Debug, Clone)]
pub struct MessagingSpanBuilder {
    system: &'static str,
    operation_type: OperationType,
    operation_name: &'static str,
    destination: Option<StringValue>,
    consumer_group: Option<StringValue>,
    server: Option<(StringValue, i64)>,
    partition: Option<i32>,
    body_size: Option<i64>,
    /// Empty until an attribute is given; then a spare vector or a new one (see
    /// [`spare_vec`]).
    attributes: Vec<KeyValue>,
    links: Vec<Link>,
}

impl MessagingSpanBuilder {
    /// A span for `operation_name` (e.g. `send`, `process`, `commit`, `ack`) on `system`
    /// (`messaging.system`, e.g. `kafka`, `rabbitmq`).
    #[inline]
    pub fn new(
        system: &'static str,
        operation_type: OperationType,
        operation_name: &'static str,
    ) -> Self {
        Self {
            system,
            operation_type,
            operation_name,
            destination: None,
            consumer_group: None,
            server: None,
            partition: None,
            body_size: None,
            attributes: Vec::new(),
            links: Vec::new(),
        }
    }

    /// `messaging.destination.name`, also the second word of the span name.
    #[inline]
    pub fn with_destination(mut self, destination: impl Into<StringValue>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// `messaging.destination.partition.id`.
    #[inline]
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// `messaging.consumer.group.name`.
    #[inline]
    pub fn with_consumer_group(mut self, group: impl Into<StringValue>) -> Self {
        self.consumer_group = Some(group.into());
        self
    }

    /// `messaging.client.id`: which client (worker instance) did this.
    #[inline]
    pub fn with_client_id(self, id: impl Into<StringValue>) -> Self {
        self.with_attribute(KeyValue::new(
            semconv::MESSAGING_CLIENT_ID,
            Value::String(id.into()),
        ))
    }

    /// `messaging.message.id`.
    #[inline]
    pub fn with_message_id(self, id: impl Into<StringValue>) -> Self {
        self.with_attribute(KeyValue::new(
            semconv::MESSAGING_MESSAGE_ID,
            Value::String(id.into()),
        ))
    }

    /// `messaging.message.body.size`, in bytes. The body itself is never recorded.
    #[inline]
    pub fn with_body_size(mut self, bytes: usize) -> Self {
        self.body_size = Some(i64::try_from(bytes).unwrap_or(i64::MAX));
        self
    }

    /// `server.address` and `server.port` of the broker.
    #[inline]
    pub fn with_server(mut self, address: impl Into<StringValue>, port: i64) -> Self {
        self.server = Some((address.into(), port));
        self
    }

    /// Any other attribute (e.g. `messaging.kafka.offset`).
    #[inline]
    pub fn with_attribute(mut self, attribute: KeyValue) -> Self {
        self.push_attribute(attribute);
        self
    }

    fn push_attribute(&mut self, attribute: KeyValue) {
        if self.attributes.capacity() == 0 {
            self.attributes = spare_vec(&SPARE_ATTRIBUTES, ATTRIBUTE_CAPACITY);
        }
        self.attributes.push(attribute);
    }

    /// Adds attributes specific to this message or operation (keep them low-cardinality).
    #[inline]
    pub fn with_attributes(mut self, attributes: impl IntoIterator<Item = KeyValue>) -> Self {
        for attribute in attributes {
            self.push_attribute(attribute);
        }
        self
    }

    /// Adds `extras`' links and attributes.
    #[inline]
    pub fn with_extras(self, extras: SpanExtras) -> Self {
        self.with_links(extras.links)
            .with_attributes(extras.attributes)
    }

    /// Links the span to another span's context (e.g. a message's creation context).
    #[inline]
    pub fn with_link(mut self, link: Link) -> Self {
        if self.links.capacity() == 0 {
            self.links = spare_vec(&SPARE_LINKS, 1);
        }
        self.links.push(link);
        self
    }

    /// Links the span to several contexts.
    #[inline]
    pub fn with_links(mut self, links: impl IntoIterator<Item = Link>) -> Self {
        if self.links.is_empty() && self.links.capacity() == 0 {
            let mut links = links.into_iter();
            match links.next() {
                // One link (a process span's, to its message): a spare vector holds it.
                Some(first) => self = self.with_link(first),
                None => return self,
            }
            self.links.extend(links);
        } else {
            self.links.extend(links);
        }
        self
    }

    /// Like [`MessagingSpanBuilder::with_links`], taking over `links`' buffer when the span
    /// has no links yet instead of copying them (a batch span's hundred-odd links).
    pub(crate) fn with_link_vec(mut self, links: Vec<Link>) -> Self {
        if self.links.is_empty() {
            give_back(&SPARE_LINKS, std::mem::replace(&mut self.links, links));
        } else {
            self.links.extend(links);
        }
        self
    }

    /// The span's attributes: `front`, `operation_type`, then the builder's own in the
    /// order given, with two spare slots (attributes known only after the start then need
    /// no reallocation). Built in the builder's vector when it has the room, so the SDK
    /// keeps that one and no second vector is allocated.
    fn take_attributes(&mut self, front: &[KeyValue], operation_type: KeyValue) -> Vec<KeyValue> {
        if let Some(partition) = self.partition {
            self.push_attribute(KeyValue::new(
                semconv::MESSAGING_DESTINATION_PARTITION_ID,
                partition_id(partition),
            ));
        }
        if let Some(bytes) = self.body_size {
            self.push_attribute(KeyValue::new(semconv::MESSAGING_MESSAGE_BODY_SIZE, bytes));
        }
        let mut attributes = std::mem::take(&mut self.attributes);
        let before = front.len() + 1;
        if attributes.capacity() - attributes.len() >= before + 2 {
            // Appended, then turned to the front (`splice` costs several times more).
            attributes.extend_from_slice(front);
            attributes.push(operation_type);
            attributes.rotate_right(before);
        } else {
            let mut grown = Vec::with_capacity(before + attributes.len() + 2);
            grown.extend_from_slice(front);
            grown.push(operation_type);
            grown.append(&mut attributes);
            give_back(&SPARE_ATTRIBUTES, attributes);
            attributes = grown;
        }
        attributes
    }

    /// The metric attributes, taking the destination, group and server out of the builder:
    /// the same list for every message of a client, so it is shared
    /// (`shared_strings::shared_metric_attributes`) rather than made per span.
    fn take_metric_attributes(&mut self) -> Arc<[KeyValue]> {
        shared_attributes(
            self.system,
            self.operation_name,
            self.destination.take(),
            self.consumer_group.take(),
            self.server.take(),
        )
    }
}

impl MessagingSpanBuilder {
    /// Starts the span as a child of `parent`, with the instrumentation's tracer.
    #[inline]
    pub fn start(mut self, instrumentation: &Instrumentation, parent: &Context) -> MessagingSpan {
        self.start_inner(instrumentation, parent, None)
    }

    /// Like [`MessagingSpanBuilder::start`], for an operation that began at `started` (e.g. a
    /// batch receive whose span is created once messages arrived).
    #[inline]
    pub fn start_at(
        mut self,
        instrumentation: &Instrumentation,
        parent: &Context,
        started: std::time::SystemTime,
    ) -> MessagingSpan {
        self.start_inner(instrumentation, parent, Some(started))
    }

    /// Starts the span from the builder where it lies (it is a few hundred bytes: taken by
    /// reference, not moved), leaving it empty.
    fn start_inner(
        &mut self,
        instrumentation: &Instrumentation,
        parent: &Context,
        started: Option<std::time::SystemTime>,
    ) -> MessagingSpan {
        let kind = self.operation_type.span_kind();
        let now = Instant::now();
        let mut clock = now;
        if let Some(started) = started {
            clock -= started.elapsed().unwrap_or_default();
        }
        if let Some(cx) = instrumentation.dropped_early(parent, now) {
            // The sampler drops the span whatever it carries: no name or attribute list is
            // made (the vectors go back to the spares), only the metric attributes its
            // measurements need.
            give_back(&SPARE_ATTRIBUTES, std::mem::take(&mut self.attributes));
            give_back(&SPARE_LINKS, std::mem::take(&mut self.links));
            return MessagingSpan {
                cx,
                started: clock,
                operation_type: self.operation_type,
                metric_attributes: self.take_metric_attributes(),
                message_count: 1,
                metrics: Some(instrumentation.metrics_arc()),
            };
        }
        let name = interned_span_name(
            self.operation_name,
            self.destination.as_ref().map(StringValue::as_str),
        );
        let metric_attributes = self.take_metric_attributes();
        let operation_type = KeyValue::new(
            semconv::MESSAGING_OPERATION_TYPE,
            self.operation_type.as_str(),
        );
        // The span's attributes: the metric attributes, the operation type, then the
        // builder's own, with two spare slots: the SDK keeps this vector for the span, and
        // attributes known only later (a delivery's partition and offset, an error type)
        // then need no reallocation.
        let attributes = self.take_attributes(&metric_attributes, operation_type);
        let mut span_builder = opentelemetry::trace::SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .with_links(std::mem::take(&mut self.links));
        if let Some(started) = started {
            span_builder = span_builder.with_start_time(started);
        }
        // A span the sampler dropped records nothing: its context only carries the span
        // context onward (injection, children), with no boxed span behind it, and with the
        // W3C random flag of the trace it continues (`with_span_keeping_random`).
        let cx = instrumentation.start_in_context(span_builder, parent, now);
        MessagingSpan {
            cx,
            started: clock,
            operation_type: self.operation_type,
            metric_attributes,
            message_count: 1,
            metrics: Some(instrumentation.metrics_arc()),
        }
    }
}
