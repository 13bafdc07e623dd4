//! The yardsticks mqtrace's hot path is held to: what the bare OpenTelemetry SDK needs to
//! record the same telemetry (the *floor*), and what a careful user would write by hand.
//!
//! - [`KafkaFloor`] / [`AmqpFloor`] record, per message, exactly the spans, attributes,
//!   link, parent and measurements mqtrace records for a Kafka send + process (or an AMQP
//!   publish + process + ack), straight through the SDK tracer and (bound, with feature `bound-instruments`) instruments, with
//!   no broker and no propagation. They are written out by hand, not derived from mqtrace,
//!   so they cannot shrink when mqtrace sheds work; [`check_shapes`] fails the benchmark when
//!   mqtrace's spans and the floor's stop matching (a span, attribute or link added to or
//!   dropped from either side), so the floor cannot silently drift either.
//! - [`HandKafka`] is the raw rdkafka client plus the bare SDK recording the same spans, link
//!   and measurements by hand, with the SDK's W3C propagators on the client's own headers.
//! - [`CountingAllocator`] counts allocations (all threads) while [`count_allocations`] is on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use mqtrace::core::semconv;
use mqtrace::kafka::rdkafka::ClientConfig;
use mqtrace::kafka::rdkafka::consumer::StreamConsumer;
use mqtrace::kafka::rdkafka::message::{BorrowedHeaders, Header, Headers, Message, OwnedHeaders};
use mqtrace::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use opentelemetry::context::FutureExt as _;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{
    Link, Span as _, SpanBuilder, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData};

use super::{InProcessTelemetry, KAFKA_PARTITIONS, KafkaSide, assign_all};

// ---------------------------------------------------------------------------------------
// Counting allocations and CPU time
// ---------------------------------------------------------------------------------------

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting allocations (every thread) while counting is on. Off, it
/// costs one relaxed load per allocation, so the timed rounds are not disturbed.
pub(crate) struct CountingAllocator;

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Turns allocation counting on or off; returns the allocations counted so far.
pub(crate) fn count_allocations(on: bool) -> usize {
    COUNTING.store(on, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// CPU seconds (user + system) this process has used so far, all threads, exited ones
/// included (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond resolution).
pub(crate) fn process_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant Linux knows.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// CPU seconds (user + system) the calling thread has used so far
/// (`CLOCK_THREAD_CPUTIME_ID`): what it did, not what other processes took from it.
pub(crate) fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant Linux knows.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

// ---------------------------------------------------------------------------------------
// What a traced message records, for the floor and the by-hand side
// ---------------------------------------------------------------------------------------

/// A string attribute value whose clones share one allocation (a `String` value would be
/// copied on every clone).
fn shared(text: &str) -> StringValue {
    StringValue::from(std::sync::Arc::<str>::from(text))
}

/// The strings a Kafka client records on every message, made once per client.
#[derive(Clone)]
struct KafkaStrings {
    topic: StringValue,
    group: StringValue,
    address: StringValue,
    port: i64,
    send_name: String,
    process_name: String,
}

impl KafkaStrings {
    fn new(topic: &str, group: &str, bootstrap: &str) -> Self {
        let (address, port) = mqtrace::core::span::parse_server(bootstrap).unwrap_or_default();
        Self {
            topic: shared(topic),
            group: shared(group),
            address: shared(&address),
            port,
            send_name: format!("send {topic}"),
            process_name: format!("process {topic}"),
        }
    }

    /// The PRODUCER span's attributes at start (7; partition and offset follow the delivery
    /// report).
    fn send_attributes(&self, body: usize) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(9);
        attributes.extend([
            KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "send"),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(self.topic.clone()),
            ),
            KeyValue::new(semconv::SERVER_ADDRESS, Value::String(self.address.clone())),
            KeyValue::new(semconv::SERVER_PORT, self.port),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "send"),
            KeyValue::new(semconv::MESSAGING_MESSAGE_BODY_SIZE, body as i64),
        ]);
        attributes
    }

    /// The CONSUMER span's 10 attributes.
    fn process_attributes(&self, partition: i32, offset: i64, body: usize) -> Vec<KeyValue> {
        vec![
            KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "process"),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(self.topic.clone()),
            ),
            KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                Value::String(self.group.clone()),
            ),
            KeyValue::new(semconv::SERVER_ADDRESS, Value::String(self.address.clone())),
            KeyValue::new(semconv::SERVER_PORT, self.port),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "process"),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_PARTITION_ID,
                mqtrace::core::span::partition_id(partition),
            ),
            KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, offset),
            KeyValue::new(semconv::MESSAGING_MESSAGE_BODY_SIZE, body as i64),
        ]
    }

    /// The four bound measurements' attribute sets.
    fn bind(&self, meter: &Meter) -> KafkaMeasurements {
        let send = [
            KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "send"),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(self.topic.clone()),
            ),
            KeyValue::new(semconv::SERVER_ADDRESS, Value::String(self.address.clone())),
            KeyValue::new(semconv::SERVER_PORT, self.port),
        ];
        let poll = [
            KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "poll"),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(self.topic.clone()),
            ),
            KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                Value::String(self.group.clone()),
            ),
        ];
        let process = [
            KeyValue::new(semconv::MESSAGING_SYSTEM, "kafka"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "process"),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(self.topic.clone()),
            ),
            KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                Value::String(self.group.clone()),
            ),
            KeyValue::new(semconv::SERVER_ADDRESS, Value::String(self.address.clone())),
            KeyValue::new(semconv::SERVER_PORT, self.port),
        ];
        let instruments = Instruments::new(meter);
        KafkaMeasurements {
            send_duration: Floor::bind(&instruments.operation_duration, &send),
            sent: Floor::bind(&instruments.sent, &send),
            consumed: Floor::bind(&instruments.consumed, &poll),
            process_duration: Floor::bind(&instruments.process_duration, &process),
        }
    }
}

/// A measurement's series as a careful SDK user records it: bound once when mqtrace records
/// through bound instruments (feature `bound-instruments`), else the instrument and its
/// attributes, recorded together each time (what the SDK's stable API allows).
trait Floor {
    type Series;
    fn bind(instrument: &Self, attributes: &[KeyValue]) -> Self::Series;
}

#[cfg(feature = "bound-instruments")]
type FloorCounter = opentelemetry::metrics::BoundCounter<u64>;
#[cfg(feature = "bound-instruments")]
type FloorHistogram = opentelemetry::metrics::BoundHistogram<f64>;

#[cfg(feature = "bound-instruments")]
impl Floor for Counter<u64> {
    type Series = FloorCounter;
    fn bind(instrument: &Self, attributes: &[KeyValue]) -> FloorCounter {
        instrument.bind(attributes)
    }
}

#[cfg(feature = "bound-instruments")]
impl Floor for Histogram<f64> {
    type Series = FloorHistogram;
    fn bind(instrument: &Self, attributes: &[KeyValue]) -> FloorHistogram {
        instrument.bind(attributes)
    }
}

#[cfg(not(feature = "bound-instruments"))]
struct FloorCounter(Counter<u64>, Vec<KeyValue>);
#[cfg(not(feature = "bound-instruments"))]
struct FloorHistogram(Histogram<f64>, Vec<KeyValue>);

#[cfg(not(feature = "bound-instruments"))]
impl FloorCounter {
    fn add(&self, value: u64) {
        self.0.add(value, &self.1);
    }
}

#[cfg(not(feature = "bound-instruments"))]
impl FloorHistogram {
    fn record(&self, value: f64) {
        self.0.record(value, &self.1);
    }
}

#[cfg(not(feature = "bound-instruments"))]
impl Floor for Counter<u64> {
    type Series = FloorCounter;
    fn bind(instrument: &Self, attributes: &[KeyValue]) -> FloorCounter {
        FloorCounter(instrument.clone(), attributes.to_vec())
    }
}

#[cfg(not(feature = "bound-instruments"))]
impl Floor for Histogram<f64> {
    type Series = FloorHistogram;
    fn bind(instrument: &Self, attributes: &[KeyValue]) -> FloorHistogram {
        FloorHistogram(instrument.clone(), attributes.to_vec())
    }
}

/// The semconv messaging instruments, as mqtrace declares them.
struct Instruments {
    operation_duration: opentelemetry::metrics::Histogram<f64>,
    sent: opentelemetry::metrics::Counter<u64>,
    consumed: opentelemetry::metrics::Counter<u64>,
    process_duration: opentelemetry::metrics::Histogram<f64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        Self {
            operation_duration: meter
                .f64_histogram(semconv::MESSAGING_CLIENT_OPERATION_DURATION)
                .with_unit("s")
                .with_boundaries(semconv::DURATION_BUCKETS_SECONDS.to_vec())
                .build(),
            sent: meter
                .u64_counter(semconv::MESSAGING_CLIENT_SENT_MESSAGES)
                .with_unit("{message}")
                .build(),
            consumed: meter
                .u64_counter(semconv::MESSAGING_CLIENT_CONSUMED_MESSAGES)
                .with_unit("{message}")
                .build(),
            process_duration: meter
                .f64_histogram(semconv::MESSAGING_PROCESS_DURATION)
                .with_unit("s")
                .with_boundaries(semconv::DURATION_BUCKETS_SECONDS.to_vec())
                .build(),
        }
    }
}

/// The four measurements of a Kafka message, bound once (what a careful SDK user does).
struct KafkaMeasurements {
    send_duration: FloorHistogram,
    sent: FloorCounter,
    consumed: FloorCounter,
    process_duration: FloorHistogram,
}

/// A tracer straight from the SDK provider (no `BoxedTracer`), under mqtrace's scope.
fn sdk_tracer(provider: &SdkTracerProvider) -> SdkTracer {
    provider.tracer_with_scope(mqtrace::core::instrumentation::scope())
}

fn meter(telemetry: &InProcessTelemetry) -> Meter {
    telemetry
        .meter_provider
        .meter_with_scope(mqtrace::core::instrumentation::scope())
}

// ---------------------------------------------------------------------------------------
// The Kafka floor
// ---------------------------------------------------------------------------------------

/// The bare SDK recording one Kafka message's telemetry, no broker: the PRODUCER `send`
/// span (7 attributes, then partition and offset as from a delivery report), the CONSUMER
/// `process` span (10 attributes, a child of the producer's remote context and linked to
/// it, current while a no-op handler runs), and the four bound measurements (send duration,
/// sent, consumed, process duration), through the same batch processor and exporter as the
/// traced side.
pub(crate) struct KafkaFloor {
    tracer: SdkTracer,
    strings: KafkaStrings,
    measurements: KafkaMeasurements,
    remote: Context,
}

impl KafkaFloor {
    pub(crate) fn new(telemetry: &InProcessTelemetry, topic: &str, bootstrap: &str) -> Self {
        let strings = KafkaStrings::new(topic, "floor", bootstrap);
        Self {
            tracer: sdk_tracer(&telemetry.tracer_provider),
            measurements: strings.bind(&meter(telemetry)),
            strings,
            remote: super::remote_context(),
        }
    }

    /// One message: send span, measurements, process span.
    pub(crate) fn message(&self, offset: i64, body: usize) {
        let strings = &self.strings;
        let started = Instant::now();
        let mut send = self.tracer.build_with_context(
            SpanBuilder::from_name(strings.send_name.clone())
                .with_kind(SpanKind::Producer)
                .with_attributes(strings.send_attributes(body)),
            &Context::current(),
        );
        send.set_attribute(KeyValue::new(
            semconv::MESSAGING_DESTINATION_PARTITION_ID,
            mqtrace::core::span::partition_id(1),
        ));
        send.set_attribute(KeyValue::new(semconv::MESSAGING_KAFKA_OFFSET, offset));
        send.end();
        let m = &self.measurements;
        m.send_duration.record(started.elapsed().as_secs_f64());
        m.sent.add(1);

        m.consumed.add(1);
        let started = Instant::now();
        let remote = self.remote.span().span_context().clone();
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(strings.process_name.clone())
                .with_kind(SpanKind::Consumer)
                .with_attributes(strings.process_attributes(1, offset, body))
                .with_links(vec![Link::with_context(remote)]),
            &self.remote,
        );
        let cx = self.remote.with_span(span);
        {
            let _current = cx.clone().attach();
            std::hint::black_box(body);
        }
        m.process_duration.record(started.elapsed().as_secs_f64());
        cx.span().end();
    }
}

// ---------------------------------------------------------------------------------------
// The AMQP floor
// ---------------------------------------------------------------------------------------

/// The bare SDK recording one AMQP message's telemetry as mqtrace does (PRODUCER `send`,
/// CONSUMER `process` child of and linked to the remote context, CLIENT `ack` settle span
/// linked to it; send and ack durations, sent, consumed and process duration), no broker.
pub(crate) struct AmqpFloor {
    tracer: SdkTracer,
    queue: StringValue,
    address: StringValue,
    port: i64,
    send_name: String,
    process_name: String,
    ack_name: String,
    send_duration: FloorHistogram,
    sent: FloorCounter,
    consumed: FloorCounter,
    process_duration: FloorHistogram,
    ack_duration: FloorHistogram,
    remote: Context,
}

impl AmqpFloor {
    pub(crate) fn new(telemetry: &InProcessTelemetry, queue: &str, url: &str) -> Self {
        let (address, port) = mqtrace::core::span::parse_server(
            url.rsplit_once('@')
                .map_or(url, |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or(""),
        )
        .unwrap_or_default();
        let queue_value = shared(queue);
        let address = shared(&address);
        let base = |operation: &'static str| {
            vec![
                KeyValue::new(semconv::MESSAGING_SYSTEM, "rabbitmq"),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation),
                KeyValue::new(
                    semconv::MESSAGING_DESTINATION_NAME,
                    Value::String(queue_value.clone()),
                ),
                KeyValue::new(semconv::SERVER_ADDRESS, Value::String(address.clone())),
                KeyValue::new(semconv::SERVER_PORT, port),
            ]
        };
        let instruments = Instruments::new(&meter(telemetry));
        Self {
            tracer: sdk_tracer(&telemetry.tracer_provider),
            send_duration: Floor::bind(&instruments.operation_duration, &base("send")),
            sent: Floor::bind(&instruments.sent, &base("send")),
            consumed: Floor::bind(&instruments.consumed, &base("deliver")[..3]),
            process_duration: Floor::bind(&instruments.process_duration, &base("process")),
            ack_duration: Floor::bind(&instruments.operation_duration, &base("ack")),
            queue: queue_value,
            address,
            port,
            send_name: format!("send {queue}"),
            process_name: format!("process {queue}"),
            ack_name: format!("ack {queue}"),
            remote: super::remote_context(),
        }
    }

    fn attributes(
        &self,
        operation: &'static str,
        kind: &'static str,
        extra: usize,
    ) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(6 + extra);
        attributes.extend([
            KeyValue::new(semconv::MESSAGING_SYSTEM, "rabbitmq"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation),
            KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(self.queue.clone()),
            ),
            KeyValue::new(semconv::SERVER_ADDRESS, Value::String(self.address.clone())),
            KeyValue::new(semconv::SERVER_PORT, self.port),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, kind),
        ]);
        attributes
    }

    /// One message: publish span, process span, ack span and their measurements.
    pub(crate) fn message(&self, tag: i64, body: usize) {
        let started = Instant::now();
        let mut attributes = self.attributes("send", "send", 2);
        attributes.extend([
            KeyValue::new(semconv::MESSAGING_MESSAGE_BODY_SIZE, body as i64),
            KeyValue::new(AMQP_ROUTING_KEY, Value::String(self.queue.clone())),
        ]);
        let send = self.tracer.build_with_context(
            SpanBuilder::from_name(self.send_name.clone())
                .with_kind(SpanKind::Producer)
                .with_attributes(attributes),
            &Context::current(),
        );
        drop(send);
        self.send_duration.record(started.elapsed().as_secs_f64());
        self.sent.add(1);

        self.consumed.add(1);
        let remote = self.remote.span().span_context().clone();
        let started = Instant::now();
        let mut attributes = self.attributes("process", "process", 4);
        attributes.extend([
            KeyValue::new(AMQP_ROUTING_KEY, Value::String(self.queue.clone())),
            KeyValue::new(AMQP_DELIVERY_TAG, tag),
            KeyValue::new(AMQP_REDELIVERED, false),
            KeyValue::new(semconv::MESSAGING_MESSAGE_BODY_SIZE, body as i64),
        ]);
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(self.process_name.clone())
                .with_kind(SpanKind::Consumer)
                .with_attributes(attributes)
                .with_links(vec![Link::with_context(remote.clone())]),
            &self.remote,
        );
        let cx = self.remote.with_span(span);
        {
            let _current = cx.clone().attach();
            std::hint::black_box(body);
        }
        self.process_duration
            .record(started.elapsed().as_secs_f64());
        cx.span().end();

        let started = Instant::now();
        let mut attributes = self.attributes("ack", "settle", 3);
        attributes.extend([
            KeyValue::new(AMQP_ROUTING_KEY, Value::String(self.queue.clone())),
            KeyValue::new(AMQP_DELIVERY_TAG, tag),
            KeyValue::new(AMQP_REDELIVERED, false),
        ]);
        let ack = self.tracer.build_with_context(
            SpanBuilder::from_name(self.ack_name.clone())
                .with_kind(SpanKind::Client)
                .with_attributes(attributes)
                .with_links(vec![Link::new(
                    remote,
                    vec![KeyValue::new(AMQP_DELIVERY_TAG, tag)],
                    0,
                )]),
            // Acked after the handler, outside any span: a child of the producer's context,
            // as mqtrace's settle spans are (`ParentMode::settle_parent`).
            &self.remote,
        );
        drop(ack);
        self.ack_duration.record(started.elapsed().as_secs_f64());
    }
}

const AMQP_ROUTING_KEY: &str = "messaging.rabbitmq.destination.routing_key";
const AMQP_DELIVERY_TAG: &str = "messaging.rabbitmq.message.delivery_tag";
const AMQP_REDELIVERED: &str = "messaging.rabbitmq.message.redelivered";

// ---------------------------------------------------------------------------------------
// Kafka instrumented by hand
// ---------------------------------------------------------------------------------------

/// What a careful user writes without mqtrace: raw `FutureProducer`/`StreamConsumer`, the
/// SDK tracer (no `BoxedTracer`), the SDK's W3C Trace Context + Baggage propagators on the
/// client's own headers, bound instruments made once, the same spans, link and
/// measurements as mqtrace records.
pub(crate) struct HandKafka {
    producer: FutureProducer,
    consumer: StreamConsumer,
    tracer: SdkTracer,
    propagator: TextMapCompositePropagator,
    strings: std::sync::OnceLock<KafkaStrings>,
    measurements: std::sync::OnceLock<KafkaMeasurements>,
    meter: Meter,
    group: String,
    bootstrap: String,
}

/// Writes injected headers into an rdkafka header list.
struct HeaderInjector(Option<OwnedHeaders>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        let headers = self
            .0
            .take()
            .unwrap_or_else(|| OwnedHeaders::new_with_capacity(2));
        self.0 = Some(headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        }));
    }
}

/// Reads a consumed message's headers (UTF-8 keys and values; the last occurrence wins).
struct HeaderExtractor<'h>(Option<&'h BorrowedHeaders>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let headers = self.0?;
        headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(key))
            .last()
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map_or_else(Vec::new, |h| h.iter().map(|h| h.key).collect())
    }
}

impl KafkaSide for HandKafka {
    fn create(
        producer: &ClientConfig,
        consumer: &ClientConfig,
        telemetry: &InProcessTelemetry,
    ) -> anyhow::Result<Self> {
        let group = consumer.get("group.id").unwrap_or_default().to_owned();
        let bootstrap = producer
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            producer: producer.create()?,
            consumer: consumer.create()?,
            tracer: sdk_tracer(&telemetry.tracer_provider),
            propagator: TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]),
            strings: std::sync::OnceLock::new(),
            measurements: std::sync::OnceLock::new(),
            meter: meter(telemetry),
            group,
            bootstrap,
        })
    }

    fn assign(&self, topic: &str) -> anyhow::Result<()> {
        assign_all(&self.consumer, topic, KAFKA_PARTITIONS)
    }

    async fn send<'a>(&'a self, record: FutureRecord<'a, [u8], [u8]>) -> anyhow::Result<()> {
        let strings = self.strings(record.topic);
        let started = Instant::now();
        let body = record.payload.map_or(0, <[u8]>::len);
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(strings.send_name.clone())
                .with_kind(SpanKind::Producer)
                .with_attributes(strings.send_attributes(body)),
            &Context::current(),
        );
        let cx = Context::current_with_span(span);
        let mut injector = HeaderInjector(None);
        self.propagator.inject_context(&cx, &mut injector);
        let record = match injector.0 {
            Some(headers) => record.headers(headers),
            None => record,
        };
        let measurements = self.measurements(&strings);
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => {
                let span = cx.span();
                span.set_attribute(KeyValue::new(
                    semconv::MESSAGING_DESTINATION_PARTITION_ID,
                    mqtrace::core::span::partition_id(delivery.partition),
                ));
                span.set_attribute(KeyValue::new(
                    semconv::MESSAGING_KAFKA_OFFSET,
                    delivery.offset,
                ));
                span.end();
                measurements
                    .send_duration
                    .record(started.elapsed().as_secs_f64());
                measurements.sent.add(1);
                Ok(())
            }
            Err((error, _)) => bail!("delivery failed: {error}"),
        }
    }

    async fn receive(&self) -> anyhow::Result<usize> {
        let message = self.consumer.recv().await?;
        let strings = self.strings(message.topic());
        let measurements = self.measurements(&strings);
        measurements.consumed.add(1);
        let parent = self.propagator.extract(&HeaderExtractor(message.headers()));
        let len = message.payload().map_or(0, <[u8]>::len);
        let started = Instant::now();
        let remote = parent.span().span_context().clone();
        let mut builder = SpanBuilder::from_name(strings.process_name.clone())
            .with_kind(SpanKind::Consumer)
            .with_attributes(strings.process_attributes(
                message.partition(),
                message.offset(),
                len,
            ));
        if remote.is_valid() {
            builder = builder.with_links(vec![Link::with_context(remote)]);
        }
        let span = self.tracer.build_with_context(builder, &parent);
        let cx = parent.with_span(span);
        let result = async { Ok::<_, Infallible>(len) }
            .with_context(cx.clone())
            .await;
        measurements
            .process_duration
            .record(started.elapsed().as_secs_f64());
        cx.span().end();
        let Ok(len) = result;
        Ok(len)
    }
}

impl HandKafka {
    /// The per-topic strings: a careful user knows the topic before sending; the benchmark
    /// makes a fresh topic per round, so they are made on first use (one topic per side).
    fn strings(&self, topic: &str) -> Cow<'_, KafkaStrings> {
        let strings = self
            .strings
            .get_or_init(|| KafkaStrings::new(topic, &self.group, &self.bootstrap));
        if strings.topic.as_str() == topic {
            Cow::Borrowed(strings)
        } else {
            Cow::Owned(KafkaStrings::new(topic, &self.group, &self.bootstrap))
        }
    }

    fn measurements(&self, strings: &KafkaStrings) -> &KafkaMeasurements {
        self.measurements.get_or_init(|| strings.bind(&self.meter))
    }
}

// ---------------------------------------------------------------------------------------
// Shape check: the floor records what mqtrace records
// ---------------------------------------------------------------------------------------

/// A span's shape: kind, name with the destination replaced by `{d}`, its attribute keys
/// (sorted), its links' attribute keys, and whether its parent is remote, local or absent.
pub(crate) fn shape(span: &SpanData, destination: &str) -> String {
    let mut keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
    keys.sort_unstable();
    let links: Vec<String> = span
        .links
        .iter()
        .map(|link| {
            let mut keys: Vec<&str> = link.attributes.iter().map(|kv| kv.key.as_str()).collect();
            keys.sort_unstable();
            format!("link[{}]", keys.join(","))
        })
        .collect();
    let parent = if span.parent_span_id == opentelemetry::trace::SpanId::INVALID {
        "root"
    } else if span.parent_span_is_remote {
        "remote parent"
    } else {
        "local parent"
    };
    format!(
        "{:?} {:?} {parent} attrs[{}] {}",
        span.span_kind,
        span.name.replace(destination, "{d}"),
        keys.join(","),
        links.join(" ")
    )
}

/// Fails unless `ours` (what mqtrace recorded for one message) and `floor` (what the floor
/// recorded for one) have the same span shapes, in any order.
pub(crate) fn check_shapes(
    what: &str,
    ours: &[SpanData],
    our_destination: &str,
    floor: &[SpanData],
    floor_destination: &str,
) -> anyhow::Result<()> {
    let mut a: Vec<String> = ours.iter().map(|s| shape(s, our_destination)).collect();
    let mut b: Vec<String> = floor.iter().map(|s| shape(s, floor_destination)).collect();
    a.sort();
    b.sort();
    if a != b {
        bail!(
            "the {what} floor no longer records what mqtrace records; fix the floor (or mqtrace):\n  mqtrace:\n    {}\n  floor:\n    {}",
            a.join("\n    "),
            b.join("\n    ")
        );
    }
    Ok(())
}
