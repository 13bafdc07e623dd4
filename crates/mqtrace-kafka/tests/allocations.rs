//! Allocations per Kafka message, send + process: the bound of issue 17 (≤ 8 for a traced
//! message, ≤ 3 for one the sampler drops), counted, not timed.
//!
//! Counted with a global allocator, per thread, so the test harness's other threads, the
//! span export thread and librdkafka's own threads (whose C allocations never reach Rust's
//! allocator anyway) do not count. Everything a message costs the caller runs on the test
//! thread: a current-thread runtime drives the sends (span start, injection, the delivery
//! report's span end and measurements) and the receives (extraction, the process span
//! around the handler, its measurements). What mqtrace adds is the traced count minus the
//! raw rdkafka count for the same messages, measured the same way.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::time::Duration;

use mqtrace_core::Instrumentation;
use mqtrace_core::sampling::Sampling;
use mqtrace_kafka::{TracedConsumer, TracedProducer};
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

struct Counting;

thread_local! {
    // A const-initialised Cell: reading it never allocates, so the allocator may use it.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_so_far() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// Messages per measured batch (after a warm-up batch of the same size).
const MESSAGES: usize = 200;
/// Issue 17's bounds, allocations per message (send + process) that mqtrace adds.
const SAMPLED_BOUND: f64 = 8.0;
const UNSAMPLED_BOUND: f64 = 3.0;

/// A span exporter that drops what it is given, on the batch processor's own thread.
#[derive(Debug, Default)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// One side of the measurement: send `MESSAGES` then receive and process them.
trait Side {
    async fn send_all(&self, topic: &str, payload: &[u8]);
    async fn receive_all(&self);
}

struct Raw {
    producer: FutureProducer,
    consumer: StreamConsumer,
}

impl Side for Raw {
    async fn send_all(&self, topic: &str, payload: &[u8]) {
        let sends = (0..MESSAGES).map(|_| {
            self.producer.send(
                FutureRecord::<[u8], [u8]>::to(topic).payload(payload),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            assert!(result.is_ok(), "a raw send failed");
        }
    }

    async fn receive_all(&self) {
        for _ in 0..MESSAGES {
            let message = self.consumer.recv().await.expect("a raw receive");
            std::hint::black_box(message.payload_len());
        }
    }
}

struct Traced {
    producer: TracedProducer,
    consumer: TracedConsumer,
}

impl Side for Traced {
    async fn send_all(&self, topic: &str, payload: &[u8]) {
        let sends = (0..MESSAGES).map(|_| {
            self.producer.send(
                FutureRecord::<[u8], [u8]>::to(topic).payload(payload),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            assert!(result.is_ok(), "a traced send failed");
        }
    }

    async fn receive_all(&self) {
        for _ in 0..MESSAGES {
            let message = self.consumer.recv().await.expect("a traced receive");
            let len = message.payload_len();
            let processed = self
                .consumer
                .process(&message, async { Ok::<_, Infallible>(len) })
                .await;
            assert_eq!(processed.ok(), Some(len));
        }
    }
}

fn assign(consumer: &StreamConsumer, topic: &str) {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
}

/// Allocations per message on this thread for `side`: a warm-up batch, then a counted one.
async fn per_message(side: &impl Side, topic: &str) -> f64 {
    let payload = vec![7_u8; 1024];
    side.send_all(topic, &payload).await;
    side.receive_all().await;
    let before = allocations_so_far();
    side.send_all(topic, &payload).await;
    side.receive_all().await;
    (allocations_so_far() - before) as f64 / MESSAGES as f64
}

/// (raw, traced) allocations per message, traced with a provider sampling with `sampling`,
/// which the instrumentation is told (as `telemetry::init` tells `Instrumentation::global()`).
fn measure(sampling: Sampling) -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tracer_provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(Discard)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(8192)
                        .build(),
                )
                .build(),
        )
        .with_sampler(mqtrace_telemetry::sdk_sampler(sampling))
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    let instrumentation = Instrumentation::builder()
        .with_tracer_provider(&tracer_provider)
        .with_sampling(sampling)
        .with_meter_provider(&meter_provider)
        .build();
    let result = runtime.block_on(async {
        let kafka = KafkaFixture::embedded(1).expect("embedded Kafka");
        let raw_topic = kafka.create_topic("alloc-raw", 1).await.expect("topic");
        let traced_topic = kafka.create_topic("alloc-traced", 1).await.expect("topic");
        let raw = Raw {
            producer: kafka.producer_config().create().expect("producer"),
            consumer: kafka
                .consumer_config(&unique_name("alloc"))
                .create()
                .expect("consumer"),
        };
        assign(&raw.consumer, &raw_topic);
        let traced = Traced {
            producer: TracedProducer::from_config(&kafka.producer_config())
                .expect("producer")
                .with_instrumentation(instrumentation.clone()),
            consumer: TracedConsumer::from_config(&kafka.consumer_config(&unique_name("alloc")))
                .expect("consumer")
                .with_instrumentation(instrumentation),
        };
        assign(traced.consumer.inner(), &traced_topic);
        let raw_count = per_message(&raw, &raw_topic).await;
        let traced_count = per_message(&traced, &traced_topic).await;
        (raw_count, traced_count)
    });
    let _ = tracer_provider.shutdown();
    let _ = meter_provider.shutdown();
    result
}

fn sampled() -> Sampling {
    Sampling::ParentBasedAlwaysOn
}

/// Issue 17: a traced Kafka message (send + process) costs at most 8 allocations more than
/// the raw client's.
#[test]
fn a_traced_kafka_message_adds_at_most_8_allocations() {
    let (raw, traced) = measure(sampled());
    let added = traced - raw;
    // Per message the count is a whole number; a one-off allocation somewhere in the run
    // (a buffer growing inside librdkafka or tokio) adds a few hundredths: rounded.
    assert!(
        added.round() <= SAMPLED_BOUND,
        "a traced message adds {added:.1} allocations (raw {raw:.1}, traced {traced:.1}); the bound is {SAMPLED_BOUND}"
    );
}

/// Issue 17: a message the sampler drops costs at most 3 allocations more than the raw
/// client's (propagation and metrics only).
#[test]
fn an_unsampled_kafka_message_adds_at_most_3_allocations() {
    let (raw, traced) = measure(Sampling::AlwaysOff);
    let added = traced - raw;
    assert!(
        added.round() <= UNSAMPLED_BOUND,
        "an unsampled message adds {added:.1} allocations (raw {raw:.1}, traced {traced:.1}); the bound is {UNSAMPLED_BOUND}"
    );
}

/// A ratchet below the bounds above: the allocations mqtrace adds today, which a change may
/// lower (then lower these numbers too) but not raise.
#[test]
fn allocations_per_message_do_not_grow() {
    const SAMPLED_TODAY: f64 = 8.0;
    const UNSAMPLED_TODAY: f64 = 3.0;
    let (raw, sampled) = measure(sampled());
    let (raw_unsampled, unsampled) = measure(Sampling::AlwaysOff);
    let (added, added_unsampled) = (sampled - raw, unsampled - raw_unsampled);
    println!("allocations added per message: sampled {added:.2}, unsampled {added_unsampled:.2}");
    assert!(
        added <= SAMPLED_TODAY + 0.5,
        "a traced message now adds {added:.1} allocations, up from {SAMPLED_TODAY}"
    );
    assert!(
        added_unsampled <= UNSAMPLED_TODAY + 0.5,
        "an unsampled message now adds {added_unsampled:.1} allocations, up from {UNSAMPLED_TODAY}"
    );
}
