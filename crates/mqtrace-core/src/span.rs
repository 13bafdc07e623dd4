//! Messaging spans: `send` (PRODUCER), `receive` (CLIENT), `process` (CONSUMER) and
//! `settle` (CLIENT), named `{operation} {destination}` and attributed per the OpenTelemetry
//! messaging semantic conventions.
//!
//! A [`MessagingSpan`] records the matching semconv metrics when it ends, so the span and the
//! metrics can never disagree. If it is dropped without being ended (the caller's future was
//! cancelled), it ends with `error.type = cancelled`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue, StringValue, Value};

use crate::error_type::ErrorType;
pub use crate::error_type::error_type_name;
use crate::instrumentation::Instrumentation;
use crate::metrics::MessagingMetrics;
use crate::propagation::Extracted;
use crate::semconv;
use crate::trace_context::RANDOM_FLAG;

/// The kind of messaging operation (`messaging.operation.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OperationType {
    /// A message is created (batch publishing only).
    Create,
    /// One or more messages are handed to the broker (PRODUCER span).
    Send,
    /// One or more messages are requested by a consumer (CLIENT span).
    Receive,
    /// One or more messages are processed by the application (CONSUMER span).
    Process,
    /// One or more messages are settled: commit, ack, nack, reject (CLIENT span).
    Settle,
}

impl OperationType {
    /// The semconv value of `messaging.operation.type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OperationType::Create => "create",
            OperationType::Send => "send",
            OperationType::Receive => "receive",
            OperationType::Process => "process",
            OperationType::Settle => "settle",
        }
    }

    /// The span kind the conventions give this operation.
    pub fn span_kind(&self) -> SpanKind {
        match self {
            OperationType::Create | OperationType::Send => SpanKind::Producer,
            OperationType::Receive | OperationType::Settle => SpanKind::Client,
            OperationType::Process => SpanKind::Consumer,
        }
    }
}

/// How a consumer's `process` span relates to the producer's context.
///
/// The messaging conventions (v1.44) make links the default relation and allow a parent for
/// single messages. mqtrace defaults to [`ParentMode::Parent`] *and* adds the link: that gives
/// one connected trace per request in Jaeger or Tempo (as the OpenTelemetry Java agent does),
/// while link-aware tools still see the creation context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ParentMode {
    /// The process span is a child of the producer's span, and links to it.
    #[default]
    Parent,
    /// The process span starts a new trace (or joins the consumer's current one) and only
    /// links to the producer's span.
    Link,
}

impl ParentMode {
    /// The parent context and links for a span that processes the message `extracted` came from.
    ///
    /// With no usable producer context, the span's parent is the caller's current context.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::carrier::NoHeaders;
    /// use mqtrace_core::propagation::Propagation;
    /// use mqtrace_core::span::ParentMode;
    ///
    /// let extracted = Propagation::global().extract(&NoHeaders);
    /// let (_parent, links) = ParentMode::Parent.parent_and_links(&extracted);
    /// assert!(links.is_empty());
    /// ```
    pub fn parent_and_links(&self, extracted: &Extracted) -> (Context, Vec<Link>) {
        let (parent, link) = self.parent_and_link(extracted);
        (parent, link.into_iter().collect())
    }

    /// Like [`ParentMode::parent_and_links`], with the one link (to the producer's
    /// context, when there is one) as an `Option`, so nothing is allocated for it until a
    /// span is built ([`MessagingSpanBuilder::with_link`] takes a spare vector).
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::carrier::NoHeaders;
    /// use mqtrace_core::propagation::Propagation;
    /// use mqtrace_core::span::ParentMode;
    ///
    /// let extracted = Propagation::global().extract(&NoHeaders);
    /// let (_parent, link) = ParentMode::Link.parent_and_link(&extracted);
    /// assert!(link.is_none());
    /// ```
    pub fn parent_and_link(&self, extracted: &Extracted) -> (Context, Option<Link>) {
        match (extracted.remote_span_context(), self) {
            (None, _) => (current_with_message_baggage(&extracted.context), None),
            (Some(remote), ParentMode::Parent) => {
                (extracted.context.clone(), Some(Link::with_context(remote)))
            }
            (Some(remote), ParentMode::Link) => (
                current_with_message_baggage(&extracted.context),
                Some(Link::with_context(remote)),
            ),
        }
    }
}

impl ParentMode {
    /// The parent of a settle span (commit, ack, nack, reject) for the message `extracted`
    /// came from: the current span when there is one (the process span, when the message is
    /// settled inside its handler); else, with [`ParentMode::Parent`], the producer's
    /// context, so that a message settled after its handler joins its own trace instead of
    /// starting a one-span trace. With [`ParentMode::Link`] (new traces per message, by
    /// choice) or without a producer context, the current context: a root that links to the
    /// message.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::carrier::NoHeaders;
    /// use mqtrace_core::propagation::Propagation;
    /// use mqtrace_core::span::ParentMode;
    /// use opentelemetry::trace::TraceContextExt;
    ///
    /// let extracted = Propagation::global().extract(&NoHeaders);
    /// let parent = ParentMode::Parent.settle_parent(&extracted);
    /// assert!(!parent.span().span_context().is_valid()); // no producer, no current span
    /// ```
    pub fn settle_parent(&self, extracted: &Extracted) -> Context {
        let current = Context::current();
        let inside_a_span = current.span().span_context().is_valid();
        match self {
            ParentMode::Parent if !inside_a_span && extracted.remote_span_context().is_some() => {
                extracted.context.clone()
            }
            _ => current,
        }
    }
}

/// The caller's current context, carrying the message's baggage.
fn current_with_message_baggage(message: &Context) -> Context {
    let baggage = message.baggage();
    if baggage.is_empty() {
        return Context::current();
    }
    Context::current_with_baggage(baggage.iter().map(|(key, (value, metadata))| {
        KeyValueMetadata::new(key.clone(), value.clone(), metadata.clone())
    }))
}

/// Whether message keys are recorded on spans. Payloads never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyCapture {
    /// Keys are not recorded (default).
    #[default]
    Off,
    /// A stable 64-bit FNV-1a hash of the key, as 16 hex digits: lets you correlate messages
    /// with the same key without storing the key. Small key spaces can still be brute-forced.
    Hashed,
    /// The key itself (UTF-8 as is; other bytes hex-encoded).
    Raw,
}

impl KeyCapture {
    /// The attribute value to record for `key`, or `None` when keys are not captured.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::span::KeyCapture;
    ///
    /// assert_eq!(KeyCapture::Off.capture(b"user-1"), None);
    /// assert_eq!(KeyCapture::Raw.capture(b"user-1").as_deref(), Some("user-1"));
    /// assert_eq!(KeyCapture::Hashed.capture(b"user-1").map(|h| h.len()), Some(16));
    /// ```
    pub fn capture(&self, key: &[u8]) -> Option<String> {
        match self {
            KeyCapture::Off => None,
            KeyCapture::Raw => Some(match std::str::from_utf8(key) {
                Ok(text) => text.to_owned(),
                Err(_) => hex(key),
            }),
            KeyCapture::Hashed => Some(format!("{:016x}", fnv1a64(key))),
        }
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The first `host:port` of a comma-separated broker list, as `server.address`/`server.port`.
///
/// # Example
///
/// ```
/// use mqtrace_core::span::parse_server;
///
/// assert_eq!(parse_server("kafka-1:9092,kafka-2:9092"), Some(("kafka-1".into(), 9092)));
/// assert_eq!(parse_server("[::1]:9092"), Some(("::1".into(), 9092)));
/// assert_eq!(parse_server(""), None);
/// ```
pub fn parse_server(brokers: &str) -> Option<(String, i64)> {
    let first = brokers.split(',').next()?.trim();
    let first = first.rsplit_once("://").map_or(first, |(_, rest)| rest);
    let (host, port) = first.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: i64 = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// A partition number as the string value of `messaging.destination.partition.id`.
///
/// Partitions 0 to 1023 are slices of one string made on first use and kept for the life of
/// the process, so recording a partition on every message's spans and links costs no
/// allocation and no reference count (a value shared through an `Arc` would have its count
/// bumped by the thread that records and dropped by the export thread, one contended cache
/// line for every link of a batch); others are formatted.
///
/// # Example
///
/// ```
/// assert_eq!(mqtrace_core::span::partition_id(3).as_str(), "3");
/// assert_eq!(mqtrace_core::span::partition_id(1023).as_str(), "1023");
/// assert_eq!(mqtrace_core::span::partition_id(-1).as_str(), "-1");
/// ```
pub fn partition_id(partition: i32) -> StringValue {
    const SHARED: usize = 1024;
    /// "0123…10231023": every shared id, and where each one ends.
    struct Ids {
        digits: String,
        ends: Vec<usize>,
    }
    static IDS: std::sync::OnceLock<Ids> = std::sync::OnceLock::new();
    match usize::try_from(partition) {
        Ok(index) if index < SHARED => {
            let ids: &'static Ids = IDS.get_or_init(|| {
                let mut digits = String::new();
                let mut ends = Vec::with_capacity(SHARED);
                for p in 0..SHARED {
                    digits.push_str(&p.to_string());
                    ends.push(digits.len());
                }
                Ids { digits, ends }
            });
            let start = index.checked_sub(1).map_or(0, |before| ids.ends[before]);
            let id: &'static str = &ids.digits[start..ids.ends[index]];
            StringValue::from(id)
        }
        _ => StringValue::from(partition.to_string()),
    }
}

/// A destination (topic, queue, exchange) name as an attribute string, shared between the
/// messages that name it.
///
/// A client records its destination on every message's spans and metrics; copying the name
/// each time is an allocation per span. Each thread keeps the last few names it saw
/// (`DESTINATION_CACHE` of them, most recent first), so a hit costs a short string compare
/// and a reference-count increment: no lock, no allocation. A miss makes the string once.
///
/// # Example
///
/// ```
/// use mqtrace_core::span::destination_name;
///
/// let first = destination_name("orders");
/// let second = destination_name("orders");
/// assert_eq!(first.as_str(), "orders");
/// assert!(std::ptr::eq(first.as_str(), second.as_str())); // the same string, not a copy
/// ```
pub fn destination_name(name: &str) -> StringValue {
    const DESTINATION_CACHE: usize = 16;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<Arc<str>>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let cached = RECENT.try_with(|recent| {
        let mut recent = recent.borrow_mut();
        let shared = match recent.iter().position(|seen| &**seen == name) {
            Some(index) => {
                recent[..=index].rotate_right(1);
                Arc::clone(&recent[0])
            }
            None => {
                let made = Arc::<str>::from(name);
                recent.truncate(DESTINATION_CACHE - 1);
                recent.insert(0, Arc::clone(&made));
                made
            }
        };
        StringValue::from(shared)
    });
    // Only while the thread is being torn down is the cache gone.
    cached.unwrap_or_else(|_| StringValue::from(name.to_owned()))
}

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
    /// ([`shared_metric_attributes`]) rather than made per span.
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

/// The metric attributes of a messaging operation (`messaging.system`,
/// `messaging.operation.name`, then the destination, consumer group and server, those that
/// are given), shared per thread: see [`shared_metric_attributes`].
pub(crate) fn shared_attributes(
    system: &'static str,
    operation_name: &'static str,
    destination: Option<StringValue>,
    consumer_group: Option<StringValue>,
    server: Option<(StringValue, i64)>,
) -> Arc<[KeyValue]> {
    shared_metric_attributes(MetricKey {
        system,
        operation_name,
        destination,
        consumer_group,
        server,
    })
}

/// Distinct span names kept for the life of the process (see [`interned_span_name`]).
const INTERNED_NAMES: usize = 1024;

/// The span name `{operation} {destination}` (or the bare operation), interned.
///
/// Span names are low-cardinality by design (an operation and a destination), and the SDK
/// keeps each span's name as a `Cow<'static, str>`: made per span, it is an allocation and
/// a copy for every message, freed again on the export thread. Instead each distinct name
/// is made once and kept for the life of the process (at most [`INTERNED_NAMES`] of them,
/// a few tens of KiB; beyond that, names are made per span as before), and each thread
/// remembers the last few it used, so a span finds its name with a short compare.
fn interned_span_name(operation: &'static str, destination: Option<&str>) -> Cow<'static, str> {
    const RECENT_NAMES: usize = 16;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<&'static str>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let Some(destination) = destination else {
        return Cow::Borrowed(operation);
    };
    let is_name = |name: &str| {
        name.len() == operation.len() + 1 + destination.len()
            && name.starts_with(operation)
            && name.as_bytes()[operation.len()] == b' '
            && name.ends_with(destination)
    };
    let recent = RECENT.try_with(|recent| {
        let mut recent = recent.try_borrow_mut().ok()?;
        if let Some(name) = recent.iter().find(|name| is_name(name)) {
            return Some(Cow::Borrowed(*name));
        }
        match intern(format!("{operation} {destination}")) {
            Ok(interned) => {
                recent.truncate(RECENT_NAMES - 1);
                recent.insert(0, interned);
                Some(Cow::Borrowed(interned))
            }
            // The table is full: the name made for it serves this span.
            Err(name) => Some(Cow::Owned(name)),
        }
    });
    match recent {
        Ok(Some(name)) => name,
        _ => Cow::Owned(format!("{operation} {destination}")),
    }
}

/// `name` as a string that lives as long as the process, or `name` back once
/// [`INTERNED_NAMES`] names are kept. A full table is known without taking the lock, so
/// past it a name costs what it did before interning (one `format!`), not a locked search.
fn intern(name: String) -> Result<&'static str, String> {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    static FULL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if FULL.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(name);
    }
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(kept) = names.iter().find(|kept| **kept == name) {
        return Ok(kept);
    }
    if names.len() >= INTERNED_NAMES {
        FULL.store(true, std::sync::atomic::Ordering::Relaxed);
        return Err(name);
    }
    let kept: &'static str = Box::leak(name.into_boxed_str());
    names.push(kept);
    Ok(kept)
}

/// What a span's metric attributes are made of.
struct MetricKey {
    system: &'static str,
    operation_name: &'static str,
    destination: Option<StringValue>,
    consumer_group: Option<StringValue>,
    server: Option<(StringValue, i64)>,
}

impl MetricKey {
    fn matches(&self, other: &MetricKey) -> bool {
        fn same(a: &Option<StringValue>, b: &Option<StringValue>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => crate::bound_metrics::same_str(a.as_str(), b.as_str()),
                (None, None) => true,
                _ => false,
            }
        }
        let server = match (&self.server, &other.server) {
            (Some((a, p)), Some((b, q))) => {
                p == q && crate::bound_metrics::same_str(a.as_str(), b.as_str())
            }
            (None, None) => true,
            _ => false,
        };
        crate::bound_metrics::same_str(self.system, other.system)
            && crate::bound_metrics::same_str(self.operation_name, other.operation_name)
            && server
            && same(&self.destination, &other.destination)
            && same(&self.consumer_group, &other.consumer_group)
    }

    /// `messaging.system`, `messaging.operation.name`, then the destination, consumer group
    /// and server, those that are set.
    fn attributes(&self) -> Arc<[KeyValue]> {
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new(semconv::MESSAGING_SYSTEM, self.system));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_OPERATION_NAME,
            self.operation_name,
        ));
        if let Some(destination) = &self.destination {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(destination.clone()),
            ));
        }
        if let Some(group) = &self.consumer_group {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                Value::String(group.clone()),
            ));
        }
        if let Some((address, port)) = &self.server {
            attributes.push(KeyValue::new(
                semconv::SERVER_ADDRESS,
                Value::String(address.clone()),
            ));
            attributes.push(KeyValue::new(semconv::SERVER_PORT, *port));
        }
        attributes.into()
    }
}

/// The metric attributes for `key`, shared: each thread keeps the last few lists it made
/// (`METRIC_ATTRIBUTE_CACHE` of them, newest first), so the spans of one client share
/// one list instead of each copying five or six attributes into a vector of its own. A hit
/// compares a few addresses (the client's strings are shared); a miss makes the list once.
fn shared_metric_attributes(key: MetricKey) -> Arc<[KeyValue]> {
    const METRIC_ATTRIBUTE_CACHE: usize = 16;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<(MetricKey, Arc<[KeyValue]>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut key = Some(key);
    let cached = RECENT
        .try_with(|recent| {
            let mut recent = recent.try_borrow_mut().ok()?;
            let probe = key.as_ref()?;
            // Not reordered on a hit: a client alternates between a few lists (send,
            // receive, process), and moving the entries would cost more than the search.
            match recent.iter().find(|(seen, _)| seen.matches(probe)) {
                Some((_, shared)) => Some(Arc::clone(shared)),
                None => {
                    let key = key.take()?;
                    let made = key.attributes();
                    recent.truncate(METRIC_ATTRIBUTE_CACHE - 1);
                    recent.insert(0, (key, Arc::clone(&made)));
                    Some(made)
                }
            }
        })
        .ok()
        .flatten();
    // Without the cache (the thread is being torn down), made for this span alone.
    cached.unwrap_or_else(|| key.map_or_else(|| Arc::from([]), |key| key.attributes()))
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
        if let Some(cx) = instrumentation.dropped_early(parent, &kind, now) {
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

/// `parent` with `span` active, the W3C Level 2 *random* flag of the trace kept.
///
/// OpenTelemetry's SDK (0.33.1) gives a span its sampler drops the flags `00`, whatever the
/// trace it continues carries, so a `02` (random, not sampled) context would leave the
/// process as `00` (upstream: open-telemetry/opentelemetry-rust#3270). The specification
/// asks that the flag stay as long as the trace id does. When `span` does not record and
/// continues `parent`'s trace without the random flag `parent` has, the context carries
/// `span`'s span context with that flag set instead of `span` itself: a dropped SDK span
/// records nothing and exports nothing, so only its context is kept, and that costs one
/// allocation fewer than the boxed span. Any other span is put in the context unchanged.
///
/// mqtrace's messaging spans go through this; use it for your own spans that carry a
/// message's context onward.
///
/// # Example
///
/// ```
/// use mqtrace_core::span::with_span_keeping_random;
/// use opentelemetry::trace::{
///     Span, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
///     TracerProvider,
/// };
/// use opentelemetry::Context;
/// use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
///
/// let provider = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOff).build();
/// let tracer = provider.tracer("example");
/// let parent = Context::new().with_remote_span_context(SpanContext::new(
///     TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
///     SpanId::from(0xb7ad6b7169203331),
///     TraceFlags::new(0x02),
///     true,
///     TraceState::NONE,
/// ));
/// let span = tracer.start_with_context("process orders", &parent);
/// assert_eq!(span.span_context().trace_flags(), TraceFlags::new(0x00)); // the SDK's flags
/// let cx = with_span_keeping_random(&parent, span);
/// assert_eq!(cx.span().span_context().trace_flags(), TraceFlags::new(0x02));
/// ```
pub fn with_span_keeping_random<S>(parent: &Context, span: S) -> Context
where
    S: opentelemetry::trace::Span + Send + Sync + 'static,
{
    if !span.is_recording()
        && let Some(kept) = keeping_random(parent, span.span_context())
    {
        return parent.with_remote_span_context(kept);
    }
    parent.with_span(span)
}

/// The span context of a dropped span `sc` with the random flag of the trace it continues
/// in `parent`, when the SDK left it out; `None` when nothing needs to change.
pub(crate) fn keeping_random(parent: &Context, sc: &SpanContext) -> Option<SpanContext> {
    let parent_span = parent.span();
    let continued = parent_span.span_context();
    let random = continued.trace_flags() & RANDOM_FLAG;
    (random == RANDOM_FLAG
        && sc.trace_flags() & RANDOM_FLAG != RANDOM_FLAG
        && sc.is_valid()
        && sc.trace_id() == continued.trace_id())
    .then(|| {
        SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags() | random,
            false,
            sc.trace_state().clone(),
        )
    })
}

/// A started messaging span. End it with [`MessagingSpan::end`] or
/// [`MessagingSpan::end_with_error`]; the matching semconv metrics are recorded then.
pub struct MessagingSpan {
    cx: Context,
    started: Instant,
    operation_type: OperationType,
    /// Shared with the client's other spans; `error.type` is added in a copy.
    metric_attributes: Arc<[KeyValue]>,
    message_count: u64,
    metrics: Option<Arc<MessagingMetrics>>,
}

impl fmt::Debug for MessagingSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessagingSpan")
            .field("span_context", self.cx.span().span_context())
            .field("operation_type", &self.operation_type)
            .field("message_count", &self.message_count)
            .finish_non_exhaustive()
    }
}

impl MessagingSpan {
    /// The parent context with this span active: run the work it measures inside it.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// This span's span context.
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// Adds an attribute known only after the span started (e.g. the offset from a
    /// delivery report).
    pub fn set_attribute(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    /// How many messages the operation covered (default 1); counted into
    /// `messaging.client.sent.messages` or `messaging.client.consumed.messages` at the end,
    /// and recorded as `messaging.batch.message_count` when it is not 1.
    pub fn set_message_count(&mut self, count: u64) {
        self.message_count = count;
        if count != 1 {
            self.set_attribute(KeyValue::new(
                semconv::MESSAGING_BATCH_MESSAGE_COUNT,
                i64::try_from(count).unwrap_or(i64::MAX),
            ));
        }
    }

    /// Runs `work` with this span's context current (so the work's own spans and logs join
    /// the trace), then ends the span: successfully on `Ok`, with error status and
    /// `error.type` = the error's full type path ([`error_type_name`], e.g.
    /// `std::io::error::Error`) on `Err`. Dropping the returned future before it completes
    /// ends the span as cancelled. For an error that supplies its own `error.type`, see
    /// [`MessagingSpan::run_with_error_type`].
    ///
    /// # Example
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use mqtrace_core::instrumentation::Instrumentation;
    /// use mqtrace_core::span::{MessagingSpanBuilder, OperationType};
    /// use opentelemetry::Context;
    ///
    /// let span = MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
    ///     .with_destination("orders")
    ///     .start(&Instrumentation::global(), &Context::current());
    /// let answer = span.run(async { Ok::<_, std::io::Error>(42) }).await?;
    /// assert_eq!(answer, 42);
    /// # Ok::<_, std::io::Error>(()) }).unwrap();
    /// ```
    pub async fn run<F, T, E>(self, work: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        use opentelemetry::context::FutureExt;
        let result = work.with_context(self.cx.clone()).await;
        match &result {
            Ok(_) => self.end(),
            Err(error) => self.end_with_error(error_type_name::<E>(), error.to_string()),
        }
        result
    }

    /// Like [`MessagingSpan::run`], but `error.type` on `Err` is the error's own
    /// [`ErrorType::error_type`] (an error code, say) instead of its type path.
    ///
    /// # Example
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::borrow::Cow;
    /// use mqtrace_core::instrumentation::Instrumentation;
    /// use mqtrace_core::span::{MessagingSpanBuilder, OperationType};
    /// use mqtrace_core::ErrorType;
    /// use opentelemetry::Context;
    ///
    /// #[derive(Debug)]
    /// struct Rejected;
    /// impl std::fmt::Display for Rejected {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("the model rejected the input")
    ///     }
    /// }
    /// impl ErrorType for Rejected {
    ///     fn error_type(&self) -> Cow<'static, str> {
    ///         "rejected".into()
    ///     }
    /// }
    ///
    /// let span = MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
    ///     .with_destination("orders")
    ///     .start(&Instrumentation::global(), &Context::current());
    /// // The process span ends with error status and `error.type = rejected`.
    /// let result = span.run_with_error_type(async { Err::<(), _>(Rejected) }).await;
    /// assert!(result.is_err());
    /// # })
    /// ```
    pub async fn run_with_error_type<F, T, E>(self, work: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: fmt::Display + ErrorType,
    {
        use opentelemetry::context::FutureExt;
        let result = work.with_context(self.cx.clone()).await;
        match &result {
            Ok(_) => self.end(),
            Err(error) => self.end_with_error(error.error_type(), error.to_string()),
        }
        result
    }

    /// Ends the span successfully.
    pub fn end(mut self) {
        self.finish(None);
    }

    /// Ends the span with error status, `error.type = error_type` (low-cardinality: an error
    /// code or the full type path, see [`error_type_name`]) and `description` as the status
    /// message.
    pub fn end_with_error(
        mut self,
        error_type: impl Into<StringValue>,
        description: impl Into<Cow<'static, str>>,
    ) {
        self.finish(Some((error_type.into(), description.into())));
    }

    fn finish(&mut self, error: Option<(StringValue, Cow<'static, str>)>) {
        let Some(metrics) = self.metrics.take() else {
            return;
        };
        let seconds = self.started.elapsed().as_secs_f64();
        let span = self.cx.span();
        let with_error: Vec<KeyValue>;
        let shared = Some(&self.metric_attributes);
        let (attributes, shared): (&[KeyValue], _) = match error {
            Some((error_type, description)) => {
                let error_type = KeyValue::new(semconv::ERROR_TYPE, Value::String(error_type));
                span.set_attribute(error_type.clone());
                span.set_status(Status::error(description));
                with_error = self
                    .metric_attributes
                    .iter()
                    .cloned()
                    .chain(std::iter::once(error_type))
                    .collect();
                (&with_error, None)
            }
            None => (&self.metric_attributes, shared),
        };
        let count = self.message_count;
        match self.operation_type {
            OperationType::Create | OperationType::Send => {
                metrics.record_operation_duration_in(attributes, shared, seconds);
                metrics.record_sent_in(attributes, shared, count);
            }
            OperationType::Receive => {
                metrics.record_operation_duration_in(attributes, shared, seconds);
                metrics.record_consumed_in(attributes, shared, count);
            }
            OperationType::Settle => {
                metrics.record_operation_duration_in(attributes, shared, seconds);
            }
            OperationType::Process => {
                metrics.record_process_duration_in(attributes, shared, seconds)
            }
        }
        span.end();
    }
}

impl Drop for MessagingSpan {
    fn drop(&mut self) {
        if self.metrics.is_some() {
            self.finish(Some((
                semconv::ERROR_TYPE_CANCELLED.into(),
                "operation dropped before it completed".into(),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_kinds_follow_semconv() {
        assert_eq!(OperationType::Send.span_kind(), SpanKind::Producer);
        assert_eq!(OperationType::Receive.span_kind(), SpanKind::Client);
        assert_eq!(OperationType::Process.span_kind(), SpanKind::Consumer);
        assert_eq!(OperationType::Settle.span_kind(), SpanKind::Client);
    }

    #[test]
    fn hashed_keys_are_stable() {
        // FNV-1a 64 test vector: "a" -> af63dc4c8601ec8c
        assert_eq!(
            KeyCapture::Hashed.capture(b"a").as_deref(),
            Some("af63dc4c8601ec8c")
        );
        assert_eq!(
            KeyCapture::Raw.capture(&[0xff, 0x01]).as_deref(),
            Some("ff01")
        );
    }

    #[test]
    fn destination_names_are_shared_and_the_cache_stays_bounded() {
        let orders = destination_name("orders");
        for i in 0..100 {
            assert_eq!(
                destination_name(&format!("topic-{i}")).as_str(),
                format!("topic-{i}")
            );
        }
        // Evicted after 100 other names: a new string, equal in value.
        let again = destination_name("orders");
        assert_eq!(again.as_str(), orders.as_str());
        let hit = destination_name("orders");
        assert!(std::ptr::eq(again.as_str(), hit.as_str()));
    }

    mod random_flag {
        use super::*;
        use crate::propagation::Propagation;
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

        const TRACE: u128 = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;
        const PARENT: u64 = 0xb7ad_6b71_6920_3331;

        fn instrumentation(sampler: Sampler) -> (SdkTracerProvider, Instrumentation) {
            let provider = SdkTracerProvider::builder().with_sampler(sampler).build();
            let instrumentation = Instrumentation::builder()
                .with_tracer_provider(&provider)
                .build();
            (provider, instrumentation)
        }

        fn remote(flags: u8) -> Context {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(TRACE),
                SpanId::from(PARENT),
                TraceFlags::new(flags),
                true,
                TraceState::from_key_value([("congo", "t61rcWkgMzE")]).expect("valid"),
            ))
        }

        /// The `traceparent` flags and `tracestate` a span's context injects.
        fn injected(cx: &Context) -> (String, String) {
            let injected = Propagation::global().inject(cx);
            let get = |key: &str| {
                injected
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_owned())
                    .unwrap_or_default()
            };
            let traceparent = get("traceparent");
            let flags = traceparent
                .rsplit('-')
                .next()
                .unwrap_or_default()
                .to_owned();
            (flags, get("tracestate"))
        }

        fn process(instrumentation: &Instrumentation, parent: &Context) -> MessagingSpan {
            MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
                .with_destination("orders")
                .start(instrumentation, parent)
        }

        fn send(instrumentation: &Instrumentation, parent: &Context) -> MessagingSpan {
            MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
                .with_destination("replies")
                .start(instrumentation, parent)
        }

        #[test]
        fn random_unsampled_context_stays_random_through_process_and_send() {
            let (_provider, instrumentation) =
                instrumentation(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let process = process(&instrumentation, &remote(0x02));
            let sc = process.span_context();
            assert!(!process.context().span().is_recording());
            assert_eq!(sc.trace_flags(), TraceFlags::new(0x02));
            assert_eq!(sc.trace_id(), TraceId::from(TRACE));
            assert_ne!(
                sc.span_id(),
                SpanId::from(PARENT),
                "the process span's own id"
            );
            assert!(!sc.is_remote());
            assert_eq!(
                injected(process.context()),
                ("02".to_owned(), "congo=t61rcWkgMzE".to_owned())
            );
            let reply = send(&instrumentation, process.context());
            assert_eq!(reply.span_context().trace_flags(), TraceFlags::new(0x02));
            assert_eq!(injected(reply.context()).0, "02");
            reply.end();
            process.end();
        }

        #[test]
        fn random_sampled_context_stays_random_and_sampled() {
            let (_provider, instrumentation) =
                instrumentation(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let process = process(&instrumentation, &remote(0x03));
            assert!(process.context().span().is_recording());
            assert_eq!(injected(process.context()).0, "03");
            let reply = send(&instrumentation, process.context());
            assert_eq!(injected(reply.context()).0, "03");
        }

        #[test]
        fn a_local_drop_clears_sampled_and_keeps_random() {
            let (_provider, instrumentation) = instrumentation(Sampler::AlwaysOff);
            let process = process(&instrumentation, &remote(0x03));
            assert_eq!(injected(process.context()).0, "02");
            let reply = send(&instrumentation, process.context());
            assert_eq!(injected(reply.context()).0, "02");
        }

        #[test]
        fn unsampled_context_without_random_stays_00() {
            let (_provider, instrumentation) =
                instrumentation(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let process = process(&instrumentation, &remote(0x00));
            assert_eq!(injected(process.context()).0, "00");
        }

        #[test]
        fn a_new_trace_does_not_inherit_the_random_flag_of_the_one_it_links_to() {
            // ParentMode::Link: the process span roots a new trace id; the random flag said
            // something about the producer's trace id only.
            let (_provider, instrumentation) = instrumentation(Sampler::AlwaysOff);
            let process = process(&instrumentation, &Context::new());
            let sc = process.span_context();
            assert_ne!(sc.trace_id(), TraceId::from(TRACE));
            assert_eq!(sc.trace_flags(), TraceFlags::new(0x00));
        }

        #[test]
        fn local_roots_carry_no_random_flag_sampled_or_not() {
            // mqtrace's local roots take the SDK's flags: 01 sampled, 00 not. Neither sets the
            // random flag (the SDK 0.33.1 never does for a new trace id), so an unsampled root
            // stays consistent with a sampled one.
            let (_on, sampled) = instrumentation(Sampler::AlwaysOn);
            let (_off, unsampled) = instrumentation(Sampler::AlwaysOff);
            let root = send(&sampled, &Context::new());
            assert_eq!(root.span_context().trace_flags(), TraceFlags::SAMPLED);
            let root = send(&unsampled, &Context::new());
            assert_eq!(root.span_context().trace_flags(), TraceFlags::NOT_SAMPLED);
            assert_eq!(injected(root.context()).0, "00");
        }
    }

    #[test]
    fn a_dropped_span_still_carries_its_context_onward() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build();
        let instrumentation = Instrumentation::builder()
            .with_tracer_provider(&provider)
            .build();
        let trace_id = TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c_u128);
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from(0xb7ad_6b71_6920_3331_u64),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        ));
        let span = MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
            .with_destination("orders")
            .start(&instrumentation, &parent);
        let sc = span.span_context();
        assert!(sc.is_valid() && !sc.is_sampled() && !sc.is_remote());
        assert_eq!(sc.trace_id(), trace_id);
        assert_ne!(sc.span_id(), SpanId::from(0xb7ad_6b71_6920_3331_u64));
        assert!(!span.context().span().is_recording());
        let injected = instrumentation.propagation().inject(span.context());
        let traceparent = injected
            .iter()
            .find(|(key, _)| *key == "traceparent")
            .map(|(_, value)| value.to_owned());
        assert_eq!(
            traceparent,
            Some(format!("00-{trace_id}-{}-00", sc.span_id()))
        );
        span.end();
    }

    #[test]
    fn span_names_are_interned_and_exact() {
        let first = interned_span_name("send", Some("orders"));
        assert_eq!(first, "send orders");
        assert!(matches!(first, Cow::Borrowed(_)));
        let again = interned_span_name("send", Some("orders"));
        assert!(std::ptr::eq(first.as_ptr(), again.as_ptr()));
        // Names that share a prefix or a suffix are not confused.
        assert_eq!(interned_span_name("send", Some("order")), "send order");
        assert_eq!(interned_span_name("sen", Some("d orders")), "sen d orders");
        assert_eq!(
            interned_span_name("process", Some("orders")),
            "process orders"
        );
        assert_eq!(interned_span_name("poll", None), "poll");
    }

    #[test]
    fn parse_server_handles_odd_input() {
        assert_eq!(parse_server("localhost"), None);
        assert_eq!(parse_server("host:notaport"), None);
        assert_eq!(parse_server("PLAINTEXT://k:9093"), Some(("k".into(), 9093)));
    }
}
