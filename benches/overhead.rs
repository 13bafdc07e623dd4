//! What tracing costs: every figure runs the raw client (or the untraced work) and the traced
//! one in the same process, interleaved round by round (raw, traced, raw, traced...), so
//! machine noise hits both sides; the figure is the median of the per-pair ratios.
//!
//! ```sh
//! cargo bench --bench overhead              # the issue's sizes (200,000 × 1 KiB on Kafka), plus criterion
//! cargo bench --bench overhead -- --quick   # scaled down, about a minute: one line per figure
//! cargo bench --bench overhead -- --quick kafka amqp   # only the figures whose names contain a word
//! ```
//!
//! Each figure prints one line, `NAME: ratio=X.XX`, then indented detail lines:
//!
//! | figure | ratio | target |
//! |---|---|---|
//! | `kafka_throughput` | traced / raw messages per second, produce + consume through the embedded Kafka (or `MQTRACE_KAFKA_BOOTSTRAP`'s broker) | ≥ 0.98 |
//! | `amqp_throughput` | traced / raw, publish with confirms + consume (and ack) through RabbitMQ | ≥ 0.97 |
//! | `propagation` | inject + extract time, mqtrace on rdkafka / AMQP headers ÷ the SDK's `TraceContextPropagator` on a `HashMap` (the worse of the two carriers) | ≤ 1.0 |
//! | `batch_tracing_share` | tracing time per batch of 1,024 on the real `Worker` (in-process source and sink, the CPU MLP as its model: traced − the same worker with a no-op tracer provider, thread CPU time, interleaved) ÷ the MLP's time for that batch | ≤ 0.005 |
//! | `send_latency_blocked_exporter` | traced send latency with the collector hanging ÷ with it healthy (the worse of p50 and p99) | ≤ 1.05 |
//! | `kafka_by_hand` | raw rdkafka + the bare SDK recording the same spans, link and measurements by hand (what a careful user writes) ÷ raw, msg/s; a third side interleaved in the Kafka pairs | — |
//! | `kafka_vs_hand` | mqtrace traced ÷ by hand, msg/s | ≥ 0.95 |
//! | `unsampled_share` | (traced with an `always_off` sampler − raw) ÷ (traced − raw), CPU per message | ≤ 0.25 |
//! | `allocations_per_message` | allocations mqtrace adds per Kafka message, send + process, all threads (traced − raw; `sampled=`, `unsampled=`); a counting allocator, on only in one short round per side | ≤ 8, ≤ 3 |
//! | `sdk_floor_ratio` | (traced − raw) CPU per message ÷ the bare SDK recording exactly the same spans, attributes, link, parent and measurements with no broker (`kafka=`, `amqp=`), same run | ≤ 1.5 |
//! | `export_spans_per_s` | spans per second one export thread writes: `file=` OTLP-JSON lines (mqtrace's file exporter), `otlp_http=` OTLP/HTTP protobuf to the testkit's receiver on loopback; the main job's span mix, batches of 512 | file ≥ 200,000 |
//!
//! The floor (`sdk_floor` module) is written out by hand against the SDK, not derived from
//! mqtrace, so it cannot shrink when mqtrace sheds work; before the Kafka and AMQP figures
//! run, one message through mqtrace and one through the floor are captured in memory and the
//! benchmark stops if their spans differ in kind, name, attributes, links or parent.
//! Instruction counts (repeatable, unlike time on a shared VM) come from
//! `scripts/callgrind-overhead`, which runs single sides (`--side NAME --messages N`) under
//! callgrind at two message counts and prints the same ratios by instructions.
//!
//! A throughput figure whose traced side lost spans (the export queue overflowed: dropped
//! spans cost less than exported ones and would flatter it) prints `INVALID` after its ratio.
//!
//! The traced side exports for real: spans go through the SDK's batch span processor to an
//! in-process exporter that counts them (so the export thread runs as it would, and the
//! count proves nothing was dropped), metrics through a periodic reader. The send-latency
//! figure uses mqtrace's own pipeline (`telemetry::build`, OTLP over HTTP) to the testkit's
//! OTLP receiver, once answering and once hanging on every export.
//!
//! The throughput figures also print the CPU time per message of this process's threads,
//! raw and traced: unlike the ratio, that difference does not depend on how fast the broker
//! is. Results, the machine they ran on and what was found are in `BENCHMARKS.md`.
//!
//! Kafka is librdkafka's mock cluster in this process; it keeps only a few MiB per partition,
//! so the consumer runs while the producer sends, the producer never gets more than
//! `KAFKA_MAX_LAG` messages ahead of it, and every message is counted. Consumers are
//! *assigned* their partitions and warmed up with one message per partition before the
//! clock starts, so no group join or first fetch is in the timed window. RabbitMQ is the one
//! at `MQTRACE_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use criterion::Criterion;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use mqtrace::amqp::headers::{AmqpHeaders, merge_injected as merge_amqp};
use mqtrace::amqp::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use mqtrace::amqp::lapin::types::FieldTable;
use mqtrace::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use mqtrace::amqp::{TracedConsumer as AmqpTracedConsumer, TracedPublisher};
use mqtrace::core::Instrumentation;
use mqtrace::core::batch::{
    BatchSpanBuilder, DEFAULT_LINK_LIMIT, InboundMessage, LinkAttributes, MessageSink,
    MessageSource, Outgoing,
};
use mqtrace::core::propagation::{ExtractOutcome, Extracted, Propagation};
use mqtrace::core::{MessagingSpanBuilder, OperationType};
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::InMemoryFeatureStore;
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::model::{DeviceInfo, Model, ModelError, Phases};
use mqtrace::inference::{INPUT_WIDTH, Worker, WorkerConfig};
use mqtrace::kafka::headers::{KafkaHeaders, merge_injected as merge_kafka};
use mqtrace::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use mqtrace::kafka::rdkafka::message::Message;
use mqtrace::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use mqtrace::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace::telemetry::{self, Destination, OtlpProtocol, Sampling, TelemetryConfig};
use mqtrace_testkit::amqp::RabbitFixture;
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use mqtrace_testkit::otlp::{Behaviour, OtlpReceiver};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::noop::NoopTracerProvider;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, InMemorySpanExporter, SdkTracerProvider, SpanData,
    SpanExporter,
};
use tokio::runtime::Runtime;

#[path = "overhead/sdk_floor.rs"]
mod sdk_floor;

use sdk_floor::{AmqpFloor, HandKafka, KafkaFloor, count_allocations};

/// Counts allocations for `allocations_per_message` (off, and nearly free, in timed rounds).
#[global_allocator]
static GLOBAL: sdk_floor::CountingAllocator = sdk_floor::CountingAllocator;

/// Message size for both brokers.
const PAYLOAD_BYTES: usize = 1024;
/// Partitions of each Kafka benchmark topic.
const KAFKA_PARTITIONS: i32 = 4;
/// Sends awaiting their delivery report at once: the worker sends a batch's 1,024 replies
/// together. (Each traced send holds a live span until its delivery report: the deeper the
/// pipeline, the more of them fall out of the CPU caches; 4,096 cost about 3 µs more per
/// message than 512 on the 2-vCPU machine of BENCHMARKS.md.)
const KAFKA_WINDOW: usize = 1024;
/// How far the producer may run ahead of the consumer. The mock cluster drops what a
/// partition holds beyond 5 MiB, and librdkafka's sticky partitioner may put a whole burst
/// into one partition: 2,048 × 1 KiB stays far below even then.
const KAFKA_MAX_LAG: usize = 4096;
/// Publishes awaiting their confirm at once.
const AMQP_WINDOW: usize = 512;
/// RabbitMQ consumer prefetch.
const AMQP_PREFETCH: u16 = 1000;
/// A consumer that gets nothing for this long has lost messages: the round stops and says so.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The floor records without a broker to pace it, faster than the export thread drains:
/// it waits for the export every this many messages, so its queue (65,536) never overflows
/// (a dropped span would make the floor cheaper than what it stands for).
const FLOOR_FLUSH_EVERY: usize = 8_192;
/// Batch size of the worker figure.
const BATCH: usize = 1024;
/// Hidden layers of the main job's model (`examples/batch_inference.rs`).
const HIDDEN: [usize; 2] = [256, 256];

/// How much work each figure does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    kafka_messages: usize,
    kafka_pairs: usize,
    amqp_messages: usize,
    amqp_pairs: usize,
    propagation_iterations: usize,
    propagation_rounds: usize,
    batch_rounds: usize,
    latency_sends: usize,
    latency_pairs: usize,
    export_spans: usize,
    export_rounds: usize,
}

impl Sizes {
    const QUICK: Sizes = Sizes {
        kafka_messages: 50_000,
        kafka_pairs: 5,
        amqp_messages: 10_000,
        amqp_pairs: 5,
        propagation_iterations: 20_000,
        propagation_rounds: 21,
        batch_rounds: 60,
        latency_sends: 5_000,
        latency_pairs: 7,
        export_spans: 51_200,
        export_rounds: 3,
    };
    const FULL: Sizes = Sizes {
        kafka_messages: 200_000,
        kafka_pairs: 5,
        amqp_messages: 50_000,
        amqp_pairs: 5,
        propagation_iterations: 50_000,
        propagation_rounds: 21,
        batch_rounds: 100,
        latency_sends: 10_000,
        latency_pairs: 7,
        export_spans: 204_800,
        export_rounds: 5,
    };
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    if let Some(side) = value_of("--side") {
        let messages: usize = value_of("--messages")
            .map(|n| n.parse())
            .transpose()
            .context("--messages takes a number")?
            .unwrap_or(20_000);
        return one_side(side, messages);
    }
    let quick = args.iter().any(|a| a == "--quick");
    // Words that are not flags select figures by name (cargo passes `--bench` itself).
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let sizes = if quick { Sizes::QUICK } else { Sizes::FULL };

    println!("machine: {}", machine());
    println!(
        "mode: {} (interleaved raw/traced rounds; each figure is the median of per-pair ratios)",
        if quick { "quick" } else { "full" }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;

    let took = |started: Instant| println!("  took {:.1} s", started.elapsed().as_secs_f64());
    if wanted("propagation") {
        if !quick {
            propagation_criterion();
        }
        let started = Instant::now();
        propagation(&sizes);
        took(started);
    }
    if wanted("batch_tracing_share") {
        let started = Instant::now();
        runtime.block_on(batch_tracing_share(&sizes))?;
        took(started);
    }
    let mut floors = FloorRatios::default();
    if wanted("kafka_throughput") {
        let started = Instant::now();
        runtime.block_on(kafka_throughput(&sizes, &mut floors))?;
        took(started);
    }
    if wanted("amqp_throughput") {
        let started = Instant::now();
        runtime.block_on(amqp_throughput(&sizes, &mut floors))?;
        took(started);
    }
    floors.print();
    if wanted("export_spans_per_s") {
        let started = Instant::now();
        export_spans_per_s(&runtime, &sizes)?;
        took(started);
    }
    if wanted("send_latency_blocked_exporter") {
        let started = Instant::now();
        send_latency_blocked_exporter(&runtime, &sizes)?;
        took(started);
    }
    Ok(())
}

/// `--side NAME --messages N`: one round of one side and nothing else, for instruction
/// counts (`scripts/callgrind-overhead` runs each side at two message counts and takes the
/// slope, so setup cancels). Sides: `raw`, `traced`, `unsampled`, `by_hand`, `floor`
/// (Kafka), `amqp_raw`, `amqp_traced`, `amqp_floor`; `batch_links`, `batch_links_none`
/// (batch spans over the batch figure's 1,024 requests, `N / 1,024` of them, with identity
/// link attributes or none: link building alone, no broker); `worker_traced`,
/// `worker_untraced` (`N / 1,024` batches through `batch_tracing_share`'s worker).
fn one_side(side: &str, messages: usize) -> anyhow::Result<()> {
    let link_attributes = match side {
        "batch_links" => Some(LinkAttributes::Identity),
        "batch_links_none" => Some(LinkAttributes::None),
        _ => None,
    };
    if let Some(link_attributes) = link_attributes {
        return batch_links_side(side, link_attributes, messages);
    }
    if let Some(traced) = match side {
        "worker_traced" => Some(true),
        "worker_untraced" => Some(false),
        _ => None,
    } {
        return worker_side(side, traced, messages);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let payload = payload();
    let telemetry = if side == "unsampled" {
        InProcessTelemetry::unsampled()
    } else {
        InProcessTelemetry::new()
    };
    let round = runtime.block_on(async {
        if side.starts_with("amqp") {
            let rabbit = RabbitFixture::connect().await?;
            return match side {
                "amqp_raw" => amqp_round(&rabbit, None, messages, &payload).await,
                "amqp_traced" => amqp_round(&rabbit, Some(&telemetry), messages, &payload).await,
                "amqp_floor" => Ok(amqp_floor_round(&telemetry, rabbit.url(), messages)),
                other => bail!("unknown side {other}"),
            };
        }
        let kafka = KafkaFixture::embedded(1)?;
        match side {
            "raw" => kafka_round::<RawKafka>(&kafka, &telemetry, messages, &payload, false).await,
            "traced" | "unsampled" => {
                kafka_round::<TracedKafka>(&kafka, &telemetry, messages, &payload, false).await
            }
            "by_hand" => {
                kafka_round::<HandKafka>(&kafka, &telemetry, messages, &payload, false).await
            }
            "floor" => Ok(kafka_floor_round(
                &telemetry,
                kafka.bootstrap_servers(),
                messages,
                false,
            )),
            other => bail!("unknown side {other}"),
        }
    })?;
    let exported = telemetry.flush();
    println!(
        "side {side}: {} of {} messages, {:.2} µs CPU each, {} spans exported",
        round.consumed,
        round.sent,
        round.cpu_per_message(),
        exported
    );
    if round.consumed < round.sent {
        bail!("messages were lost: the counts are not comparable");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------

/// CPU, cores, memory and load, for the record.
fn machine() -> String {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or(std::env::consts::ARCH, |(_, name)| name.trim());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = read("/proc/meminfo");
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    let load = read("/proc/loadavg");
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpu}, {cores} CPUs, {mem_gib:.0} GiB, load average {} at start",
        load.join(" ")
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1234567` as `1,234,567`.
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// ` INVALID (...)` when the traced side exported fewer spans than it recorded: the export
/// queue overflowed, and dropped spans cost less than exported ones.
fn invalid_if_spans_lost(exported: usize, expected: usize) -> String {
    if exported < expected {
        format!(
            " INVALID ({} of {} spans dropped on the traced side)",
            thousands((expected - exported) as f64),
            thousands(expected as f64)
        )
    } else {
        String::new()
    }
}

/// A span exporter that counts what it is given and drops it: the in-process sink.
#[derive(Debug, Clone, Default)]
struct CountingExporter {
    spans: Arc<AtomicUsize>,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.fetch_add(batch.len(), Ordering::Relaxed);
        Ok(())
    }
}

/// Traces and metrics exported in-process: the SDK's batch span processor (own thread,
/// bounded queue) to a [`CountingExporter`], and a periodic metric reader.
struct InProcessTelemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    exported: Arc<AtomicUsize>,
    instrumentation: Instrumentation,
}

impl InProcessTelemetry {
    fn new() -> Self {
        Self::with_sampling(Sampling::ParentBasedAlwaysOn)
    }

    /// Like [`InProcessTelemetry::new`], every span dropped by the sampler (`always_off`).
    fn unsampled() -> Self {
        Self::with_sampling(Sampling::AlwaysOff)
    }

    /// Finished spans kept in memory, exported one by one as they end (for shape checks).
    fn capturing() -> (Self, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        (
            Self::from_tracer_provider(
                tracer_provider,
                Sampling::ParentBasedAlwaysOn,
                Arc::default(),
            ),
            exporter,
        )
    }

    /// The provider samples with `sampling`, and the instrumentation is told so
    /// (`with_sampling`), as `telemetry::init` tells `Instrumentation::global()`.
    fn with_sampling(sampling: Sampling) -> Self {
        let exporter = CountingExporter::default();
        let exported = Arc::clone(&exporter.spans);
        // A queue deep enough that a burst of 200,000 messages loses nothing: a dropped
        // span would be cheaper than an exported one and flatter the traced side.
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(65_536)
                    .with_max_export_batch_size(512)
                    .with_scheduled_delay(Duration::from_millis(200))
                    .build(),
            )
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(telemetry::sdk_sampler(sampling))
            .build();
        Self::from_tracer_provider(tracer_provider, sampling, exported)
    }

    fn from_tracer_provider(
        tracer_provider: SdkTracerProvider,
        sampling: Sampling,
        exported: Arc<AtomicUsize>,
    ) -> Self {
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
            .build();
        let instrumentation = Instrumentation::builder()
            .with_tracer_provider(&tracer_provider)
            .with_sampling(sampling)
            .with_meter_provider(&meter_provider)
            .build();
        Self {
            tracer_provider,
            meter_provider,
            exported,
            instrumentation,
        }
    }

    /// Exports what is queued and returns the number of spans exported so far.
    fn flush(&self) -> usize {
        let _ = self.tracer_provider.force_flush();
        self.exported.load(Ordering::Relaxed)
    }
}

impl Drop for InProcessTelemetry {
    fn drop(&mut self) {
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

/// A sampled remote context, as a consumer would extract it.
fn remote_context() -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
        SpanId::from(0xb7ad_6b71_6920_3331),
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    ))
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD_BYTES).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// propagation
// ---------------------------------------------------------------------------------------

/// One message's worth of propagation the way the Kafka wrappers do it: inject into an
/// rdkafka header list, extract from it.
fn kafka_round_trip(propagation: &Propagation, cx: &Context) -> bool {
    let injected = propagation.inject(cx);
    let headers = merge_kafka(None, &injected);
    match &headers {
        Some(headers) => propagation
            .extract(&KafkaHeaders(headers))
            .context
            .has_active_span(),
        None => false,
    }
}

/// The same through an AMQP `FieldTable`, the way the RabbitMQ wrappers do it.
fn amqp_round_trip(propagation: &Propagation, cx: &Context) -> bool {
    let injected = propagation.inject(cx);
    let headers = merge_amqp(None, &injected);
    match &headers {
        Some(headers) => propagation
            .extract(&AmqpHeaders(headers))
            .context
            .has_active_span(),
        None => false,
    }
}

/// The baseline: the bare SDK propagator on a `HashMap`.
fn sdk_round_trip(propagator: &TraceContextPropagator, cx: &Context) -> bool {
    let mut headers: HashMap<String, String> = HashMap::new();
    propagator.inject_context(cx, &mut headers);
    propagator.extract(&headers).has_active_span()
}

/// Criterion groups for the three round trips (full mode only).
fn propagation_criterion() {
    let propagation = Propagation::global();
    let sdk = TraceContextPropagator::new();
    let cx = remote_context();
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("propagation_inject_extract");
    group.bench_function("mqtrace_kafka_headers", |b| {
        b.iter(|| kafka_round_trip(&propagation, black_box(&cx)))
    });
    group.bench_function("mqtrace_amqp_field_table", |b| {
        b.iter(|| amqp_round_trip(&propagation, black_box(&cx)))
    });
    group.bench_function("sdk_trace_context_hashmap", |b| {
        b.iter(|| sdk_round_trip(&sdk, black_box(&cx)))
    });
    group.finish();
    criterion.final_summary();
}

/// `propagation`: inject + extract on mqtrace's native carriers (its default propagator:
/// strict W3C Trace Context + Baggage) ÷ the SDK's `TraceContextPropagator` on a `HashMap`.
fn propagation(sizes: &Sizes) {
    let propagation = Propagation::global();
    let sdk = TraceContextPropagator::new();
    let cx = remote_context();
    assert!(kafka_round_trip(&propagation, &cx) && amqp_round_trip(&propagation, &cx));
    assert!(sdk_round_trip(&sdk, &cx));
    let iterations = sizes.propagation_iterations;
    let time = |round_trip: &dyn Fn() -> bool| {
        let start = Instant::now();
        for _ in 0..iterations {
            black_box(round_trip());
        }
        start.elapsed().as_secs_f64() / iterations as f64
    };
    let kafka = || kafka_round_trip(&propagation, black_box(&cx));
    let amqp = || amqp_round_trip(&propagation, black_box(&cx));
    let bare = || sdk_round_trip(&sdk, black_box(&cx));
    let (mut kafka_ratios, mut amqp_ratios) = (Vec::new(), Vec::new());
    let (mut kafka_ns, mut amqp_ns, mut sdk_ns) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.propagation_rounds {
        let k = time(&kafka);
        let s1 = time(&bare);
        let a = time(&amqp);
        let s2 = time(&bare);
        kafka_ratios.push(k / s1);
        amqp_ratios.push(a / s2);
        kafka_ns.push(k * 1e9);
        amqp_ns.push(a * 1e9);
        sdk_ns.extend([s1 * 1e9, s2 * 1e9]);
    }
    let kafka_ratio = median(&mut kafka_ratios);
    let amqp_ratio = median(&mut amqp_ratios);
    println!("propagation: ratio={:.2}", kafka_ratio.max(amqp_ratio));
    println!(
        "  inject+extract per message: Kafka headers {:.0} ns, AMQP FieldTable {:.0} ns, SDK TraceContextPropagator on a HashMap {:.0} ns (medians)",
        median(&mut kafka_ns),
        median(&mut amqp_ns),
        median(&mut sdk_ns)
    );
    println!(
        "  ratios: Kafka {kafka_ratio:.2}, AMQP {amqp_ratio:.2} ({} rounds × {} round trips each side; the figure is the worse carrier)",
        sizes.propagation_rounds,
        thousands(iterations as f64)
    );
}

// ---------------------------------------------------------------------------------------
// batch_tracing_share
// ---------------------------------------------------------------------------------------

/// Where the bench's requests come from, as the worker sees it.
const REQUEST_TOPIC: &str = "inference-requests";

/// A request body like the main job's load generator sends.
fn request_body(i: usize) -> String {
    const CATEGORIES: [&str; 4] = ["grocery", "travel", "electronics", "restaurants"];
    const COUNTRIES: [&str; 5] = ["DE", "FR", "GB", "US", "NL"];
    let amount = (i.wrapping_mul(7919) % 10_000) as f64 * 0.73 + 1.0;
    format!(
        "{{\"request_id\":\"r-{i}\",\"user_id\":\"user-{}\",\"amount\":{amount:.2},\"merchant_category\":\"{}\",\"country\":\"{}\",\"hour\":{},\"card_present\":{}}}",
        i.wrapping_mul(31) % 5_000,
        CATEGORIES[i % CATEGORIES.len()],
        COUNTRIES[(i / 3) % COUNTRIES.len()],
        i % 24,
        !i.is_multiple_of(4),
    )
}

/// A consumed request as the bench's source yields it: a body like the main job's load
/// generator sends, a sampled producer context of its own (one trace per request), and the
/// identity a Kafka message has (partition id, offset), so its link carries what a real
/// consumed message's does.
#[derive(Debug, Clone)]
struct BenchMessage {
    extracted: Extracted,
    payload: Arc<[u8]>,
    offset: i64,
    enqueued_at: SystemTime,
}

impl BenchMessage {
    fn new(i: usize) -> Self {
        let span_context = SpanContext::new(
            TraceId::from(0x0af7_6519_16cd_43dd_0000_0000_0000_0000 + i as u128 + 1),
            SpanId::from(0xb7ad_6b71_0000_0000 + i as u64 + 1),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        );
        Self {
            extracted: Extracted {
                context: Context::new().with_remote_span_context(span_context),
                outcome: ExtractOutcome::Found,
            },
            payload: Arc::from(request_body(i).into_bytes()),
            offset: i as i64,
            enqueued_at: SystemTime::now(),
        }
    }
}

impl InboundMessage for BenchMessage {
    fn extracted(&self) -> &Extracted {
        &self.extracted
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
    fn key(&self) -> Option<&[u8]> {
        None
    }
    fn destination(&self) -> &str {
        REQUEST_TOPIC
    }
    fn enqueued_at(&self) -> Option<SystemTime> {
        Some(self.enqueued_at)
    }
    fn message_id(&self) -> Option<&str> {
        None
    }
    /// As `mqtrace-kafka`'s `OwnedTracedMessage` identifies itself.
    fn identity(&self) -> Vec<KeyValue> {
        vec![
            KeyValue::new(
                mqtrace::core::semconv::MESSAGING_DESTINATION_PARTITION_ID,
                mqtrace::core::span::partition_id(0),
            ),
            KeyValue::new(mqtrace::core::semconv::MESSAGING_KAFKA_OFFSET, self.offset),
        ]
    }
}

/// The `batch_links` sides: `messages / 1,024` batch spans started and ended over the bench's
/// 1,024 requests (`BatchSpanBuilder::start` as the worker calls it), for callgrind.
fn batch_links_side(
    side: &str,
    link_attributes: LinkAttributes,
    messages: usize,
) -> anyhow::Result<()> {
    let telemetry = InProcessTelemetry::new();
    let batch: Vec<BenchMessage> = (0..BATCH).map(BenchMessage::new).collect();
    let batches = messages.div_ceil(BATCH);
    let started = cpu_seconds();
    for _ in 0..batches {
        BatchSpanBuilder::new("kafka", REQUEST_TOPIC)
            .with_link_limit(DEFAULT_LINK_LIMIT)
            .with_link_attributes(link_attributes)
            .with_consumer_group(Some("scorers"))
            .with_client_id(Some("worker-1"))
            .start(&telemetry.instrumentation, &batch, &Context::new())
            .end();
    }
    let cpu = cpu_seconds() - started;
    let exported = telemetry.flush();
    println!(
        "side {side}: {batches} batches of {BATCH}, {:.1} µs CPU each, {exported} spans exported",
        cpu * 1e6 / batches as f64
    );
    Ok(())
}

/// The `worker_*` sides: `messages / 1,024` batches through the bench worker of
/// `batch_tracing_share`, traced or with a no-op tracer provider, for callgrind (the slope
/// difference is the worker's tracing per batch in instructions, replies' send spans
/// included).
fn worker_side(side: &str, traced: bool, messages: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let telemetry = InProcessTelemetry::new();
    let instrumentation = if traced {
        telemetry.instrumentation.clone()
    } else {
        Instrumentation::builder()
            .with_tracer_provider(&NoopTracerProvider::new())
            .with_meter_provider(&telemetry.meter_provider)
            .build()
    };
    let batch: Vec<BenchMessage> = (0..BATCH).map(BenchMessage::new).collect();
    let batches = messages.div_ceil(BATCH);
    let (mut worker, clocks) = bench_worker(&instrumentation);
    let started = cpu_seconds();
    runtime.block_on(async {
        for _ in 0..batches {
            worker_batch(&mut worker, &clocks, &batch).await?;
        }
        anyhow::Ok(())
    })?;
    let cpu = cpu_seconds() - started;
    let exported = telemetry.flush();
    println!(
        "side {side}: {batches} batches of {BATCH}, {:.1} µs CPU each, {exported} spans exported",
        cpu * 1e6 / batches as f64
    );
    Ok(())
}

/// The worker's source in this figure: batches are handed to [`Worker::process_batch`]
/// directly, so it yields nothing; settling (a commit) costs nothing.
#[derive(Debug)]
struct BenchSource;

impl MessageSource for BenchSource {
    type Message = BenchMessage;
    type Error = Infallible;
    fn system(&self) -> &'static str {
        "kafka"
    }
    fn consumer_group(&self) -> Option<&str> {
        Some("scorers")
    }
    fn client_id(&self) -> Option<&str> {
        Some("worker-1")
    }
    async fn next_message(&mut self) -> Option<Result<BenchMessage, Infallible>> {
        None
    }
    async fn settle(&mut self, _: &[BenchMessage], _: &Context) -> Result<(), Infallible> {
        Ok(())
    }
}

/// The worker's sink: each reply gets its `send` span (parent and links as the worker gives
/// them, the reply's attributes) and its injected context, as a broker sink records them,
/// and is confirmed at once. The time spent in it is counted, so the share can leave the
/// reply spans out (messaging, measured by `kafka_throughput`) and report them beside it.
/// Its clock is the thread's CPU time, as the batch's (the worker polls its sends on the
/// thread that runs it).
#[derive(Debug)]
struct BenchSink {
    instrumentation: Instrumentation,
    nanos: Arc<AtomicU64>,
}

impl MessageSink for BenchSink {
    type Error = Infallible;
    async fn send(
        &self,
        message: Outgoing<'_>,
        parent: &Context,
        links: Vec<opentelemetry::trace::Link>,
    ) -> Result<(), Infallible> {
        let started = sdk_floor::thread_cpu_seconds();
        let span = MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
            .with_links(links)
            .with_attributes(message.span_attributes.iter().cloned())
            .with_destination(message.destination.to_owned())
            .with_body_size(message.payload.len())
            .start(&self.instrumentation, parent);
        black_box(merge_kafka(
            None,
            &self.instrumentation.propagation().inject(span.context()),
        ));
        span.end();
        let nanos = ((sdk_floor::thread_cpu_seconds() - started) * 1e9) as u64;
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        Ok(())
    }
}

/// The main job's MLP on the CPU, its own computation timed: `score` adds the thread CPU
/// time the MLP took (nothing of the `model.execute` span the worker's `InstrumentedModel`
/// wraps around it) to a counter. The model is the fixed cost the share divides by, and
/// taking its exact time off both sides keeps its run-to-run wobble (larger than the
/// tracing) out of the difference.
#[derive(Debug)]
struct TimedModel {
    inner: CpuModel,
    nanos: Arc<AtomicU64>,
}

impl Model for TimedModel {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn device(&self) -> &DeviceInfo {
        self.inner.device()
    }
    fn input_width(&self) -> usize {
        self.inner.input_width()
    }
    fn score(
        &mut self,
        inputs: &[f32],
        rows: usize,
        phases: &mut Phases,
    ) -> Result<Vec<f32>, ModelError> {
        let started = sdk_floor::thread_cpu_seconds();
        let scores = self.inner.score(inputs, rows, phases);
        let nanos = ((sdk_floor::thread_cpu_seconds() - started) * 1e9) as u64;
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
        scores
    }
}

type BenchWorker = Worker<BenchSource, BenchSink, InMemoryFeatureStore, TimedModel>;

/// The counters of a bench worker's sink and model time, in nanoseconds.
#[derive(Debug, Clone, Default)]
struct WorkerClocks {
    sink: Arc<AtomicU64>,
    model: Arc<AtomicU64>,
}

impl WorkerClocks {
    fn read(&self) -> (u64, u64) {
        (
            self.sink.load(Ordering::Relaxed),
            self.model.load(Ordering::Relaxed),
        )
    }
}

/// A worker like the main job's (its MLP, a generated feature store, 128 links per span,
/// identity on every link) recording with `instrumentation`; the clocks of its sink and model.
fn bench_worker(instrumentation: &Instrumentation) -> (BenchWorker, WorkerClocks) {
    let clocks = WorkerClocks::default();
    let sink = BenchSink {
        instrumentation: instrumentation.clone(),
        nanos: Arc::clone(&clocks.sink),
    };
    let model = TimedModel {
        inner: CpuModel::new("fraud-mlp", "1", Mlp::seeded(INPUT_WIDTH, &HIDDEN, 7)),
        nanos: Arc::clone(&clocks.model),
    };
    let worker = Worker::with_instrumentation(
        BenchSource,
        sink,
        InMemoryFeatureStore::generated(5_000, 7),
        model,
        WorkerConfig::new("inference-replies", "inference-requests.dlq")
            .with_link_limit(DEFAULT_LINK_LIMIT),
        instrumentation.clone(),
    );
    (worker, clocks)
}

/// One batch through `worker`, in seconds of this thread's CPU time: (the batch without its
/// sink and without the MLP's own computation, the MLP, the sink). Thread CPU time, not wall
/// clock: on a shared machine the wall clock of a 9 ms batch moves by hundreds of
/// microseconds with what other processes do, more than the tracing this measures.
async fn worker_batch(
    worker: &mut BenchWorker,
    clocks: &WorkerClocks,
    batch: &[BenchMessage],
) -> anyhow::Result<(f64, f64, f64)> {
    let messages = batch.to_vec();
    let replies = worker.stats().replies;
    let (sink_before, model_before) = clocks.read();
    let started = sdk_floor::thread_cpu_seconds();
    worker.process_batch(messages).await?;
    let batch_s = sdk_floor::thread_cpu_seconds() - started;
    let (sink_after, model_after) = clocks.read();
    let answered = worker.stats().replies - replies;
    if answered != batch.len() as u64 {
        bail!("the worker answered {answered} of {} requests", batch.len());
    }
    let sink_s = (sink_after - sink_before) as f64 * 1e-9;
    let model_s = (model_after - model_before) as f64 * 1e-9;
    Ok((batch_s - sink_s - model_s, model_s, sink_s))
}

/// `batch_tracing_share`: the real [`Worker`] processing a batch of 1,024 requests (an
/// in-process source and sink, the CPU MLP as its model), traced against the same worker with
/// a no-op tracer provider, in interleaved rounds. The difference is all the tracing the
/// worker does per batch: the batch span with a link per request (the 896 beyond the 128-link
/// limit on seven `batch.links` child spans), the stage spans and their attributes and
/// events, `model.execute` with its phase span. Divided by the untraced worker's model time.
/// The replies' send spans are left out of the share (the sink's own time is taken off both
/// sides) and reported beside it.
async fn batch_tracing_share(sizes: &Sizes) -> anyhow::Result<()> {
    let telemetry = InProcessTelemetry::new();
    let instrumentation = &telemetry.instrumentation;
    let untraced_instrumentation = Instrumentation::builder()
        .with_tracer_provider(&NoopTracerProvider::new())
        .with_meter_provider(&telemetry.meter_provider)
        .build();
    let batch: Vec<BenchMessage> = (0..BATCH).map(BenchMessage::new).collect();
    let (mut traced, traced_clocks) = bench_worker(instrumentation);
    let (mut untraced, untraced_clocks) = bench_worker(&untraced_instrumentation);

    // The links alone, as `BatchSpanBuilder::start` collects them.
    let collect_links = || {
        let started = Instant::now();
        let links: Vec<opentelemetry::trace::Link> =
            batch.iter().filter_map(InboundMessage::link).collect();
        let elapsed = started.elapsed().as_secs_f64();
        black_box(links);
        elapsed
    };
    // Link building as the worker starts its batch span, with `link_attributes`.
    let build_links = |link_attributes: LinkAttributes| {
        let started = Instant::now();
        let batch_span = BatchSpanBuilder::new("kafka", REQUEST_TOPIC)
            .with_link_limit(DEFAULT_LINK_LIMIT)
            .with_link_attributes(link_attributes)
            .with_consumer_group(Some("scorers"))
            .with_client_id(Some("worker-1"))
            .start(instrumentation, &batch, &Context::new());
        let elapsed = started.elapsed().as_secs_f64();
        batch_span.end();
        elapsed
    };

    // Warm up both, then interleave, alternating which goes first.
    for _ in 0..3 {
        worker_batch(&mut untraced, &untraced_clocks, &batch).await?;
        worker_batch(&mut traced, &traced_clocks, &batch).await?;
    }
    let mut traced_s = Vec::new();
    let mut untraced_s = Vec::new();
    let mut tracing_s = Vec::new();
    let mut model_s = Vec::new();
    let mut traced_model_s = Vec::new();
    let mut reply_s = Vec::new();
    let (mut links_s, mut collect_s, mut bare_s) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..sizes.batch_rounds {
        let (on, off) = if round % 2 == 0 {
            let off = worker_batch(&mut untraced, &untraced_clocks, &batch).await?;
            (
                worker_batch(&mut traced, &traced_clocks, &batch).await?,
                off,
            )
        } else {
            let on = worker_batch(&mut traced, &traced_clocks, &batch).await?;
            (
                on,
                worker_batch(&mut untraced, &untraced_clocks, &batch).await?,
            )
        };
        traced_s.push(on.0);
        untraced_s.push(off.0);
        tracing_s.push(on.0 - off.0);
        traced_model_s.push(on.1);
        model_s.push(off.1);
        reply_s.push(on.2 - off.2);
        for _ in 0..4 {
            collect_s.push(collect_links());
            bare_s.push(build_links(LinkAttributes::None));
            links_s.push(build_links(LinkAttributes::Identity));
        }
    }
    let spread = |values: &mut [f64]| {
        format!(
            "p25–p75 {:.1}–{:.1} µs",
            quantile(values, 0.25) * 1e6,
            quantile(values, 0.75) * 1e6
        )
    };
    let tracing_spread = spread(&mut tracing_s);
    let tracing_time = median(&mut tracing_s);
    let model_time = median(&mut model_s);
    let traced_model_time = median(&mut traced_model_s);
    let traced_time = median(&mut traced_s);
    let untraced_time = median(&mut untraced_s);
    let reply_time = median(&mut reply_s);
    let links_time = median(&mut links_s);
    let collect_time = median(&mut collect_s);
    let bare_time = median(&mut bare_s);
    let exported = telemetry.flush();
    println!(
        "batch_tracing_share: ratio={:.4}",
        tracing_time / model_time
    );
    println!(
        "  model: CpuModel {INPUT_WIDTH}→{}→{}→1 on {BATCH} rows, its own thread CPU time inside the worker: untraced {:.2} ms, traced {:.2} ms (medians of {})",
        HIDDEN[0],
        HIDDEN[1],
        model_time * 1e3,
        traced_model_time * 1e3,
        sizes.batch_rounds
    );
    println!(
        "  tracing per batch of {BATCH}: {:.1} µs ({tracing_spread}), the real Worker::process_batch traced − the same worker with a no-op tracer provider, median of {} interleaved pairs (batch span, {BATCH} links on it and {} batch.links spans, 3 stage spans with attributes and rule events, model.execute + cpu.compute); the batch's thread CPU time less the sink's and the MLP's: traced {:.2} ms, untraced {:.2} ms",
        tracing_time * 1e6,
        sizes.batch_rounds,
        (BATCH - DEFAULT_LINK_LIMIT).div_ceil(DEFAULT_LINK_LIMIT),
        traced_time * 1e3,
        untraced_time * 1e3,
    );
    println!(
        "  link building: {:.1} µs per {BATCH} (BatchSpanBuilder::start with the default identity attributes: the links, the batch span and its batch.links spans; target ≤ 30 µs); the {BATCH} Link values alone {:.1} µs",
        links_time * 1e6,
        collect_time * 1e6
    );
    println!(
        "  link building with LinkAttributes::None (span contexts only, no per-link allocation): {:.1} µs per {BATCH}",
        bare_time * 1e6
    );
    println!(
        "  not in the share: the {BATCH} replies' send spans with injected context, in the sink: {:.1} µs traced − no-op ({:.2} µs each; messaging, measured by kafka_throughput); {} spans exported",
        reply_time * 1e6,
        reply_time * 1e6 / BATCH as f64,
        thousands(exported as f64)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// kafka_throughput
// ---------------------------------------------------------------------------------------

/// Assigns every partition of `topic` from the beginning (no group join).
fn assign_all<C: Consumer>(consumer: &C, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(())
}

/// What one throughput round did.
#[derive(Debug, Clone, Copy)]
struct Round {
    sent: usize,
    consumed: usize,
    elapsed: Duration,
    /// CPU seconds this process used in the round, all threads.
    cpu: f64,
    /// Allocations in the round, all threads (0 unless the round counted them).
    allocations: usize,
}

impl Round {
    fn rate(&self) -> f64 {
        self.consumed as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per message, all of this process's threads.
    fn cpu_per_message(&self) -> f64 {
        self.cpu * 1e6 / self.consumed.max(1) as f64
    }

    fn allocations_per_message(&self) -> f64 {
        self.allocations as f64 / self.consumed.max(1) as f64
    }
}

/// CPU seconds (user + system) this process has used so far, all threads (nanosecond
/// resolution; see [`sdk_floor::process_cpu_seconds`]).
fn cpu_seconds() -> f64 {
    sdk_floor::process_cpu_seconds()
}

/// The two sides of a Kafka round, so raw and traced clients run the same loop.
trait KafkaSide {
    fn create(
        config: &ClientConfig,
        consumer: &ClientConfig,
        telemetry: &InProcessTelemetry,
    ) -> anyhow::Result<Self>
    where
        Self: Sized;
    fn assign(&self, topic: &str) -> anyhow::Result<()>;
    fn send<'a>(
        &'a self,
        record: FutureRecord<'a, [u8], [u8]>,
    ) -> impl Future<Output = anyhow::Result<()>> + 'a;
    /// Receives (and, traced, processes) one message; its payload length.
    fn receive(&self) -> impl Future<Output = anyhow::Result<usize>> + Send + '_;
}

struct RawKafka {
    producer: FutureProducer,
    consumer: StreamConsumer,
}

impl KafkaSide for RawKafka {
    fn create(
        producer: &ClientConfig,
        consumer: &ClientConfig,
        _: &InProcessTelemetry,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            producer: producer.create()?,
            consumer: consumer.create()?,
        })
    }
    fn assign(&self, topic: &str) -> anyhow::Result<()> {
        assign_all(&self.consumer, topic, KAFKA_PARTITIONS)
    }
    async fn send<'a>(&'a self, record: FutureRecord<'a, [u8], [u8]>) -> anyhow::Result<()> {
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)?;
        Ok(())
    }
    async fn receive(&self) -> anyhow::Result<usize> {
        let message = self.consumer.recv().await?;
        Ok(message.payload().map_or(0, <[u8]>::len))
    }
}

struct TracedKafka {
    producer: TracedProducer,
    consumer: TracedConsumer,
}

impl KafkaSide for TracedKafka {
    fn create(
        producer: &ClientConfig,
        consumer: &ClientConfig,
        telemetry: &InProcessTelemetry,
    ) -> anyhow::Result<Self> {
        let instrumentation = telemetry.instrumentation.clone();
        Ok(Self {
            producer: TracedProducer::from_config(producer)?
                .with_instrumentation(instrumentation.clone()),
            consumer: TracedConsumer::from_config(consumer)?.with_instrumentation(instrumentation),
        })
    }
    fn assign(&self, topic: &str) -> anyhow::Result<()> {
        assign_all(self.consumer.inner(), topic, KAFKA_PARTITIONS)
    }
    async fn send<'a>(&'a self, record: FutureRecord<'a, [u8], [u8]>) -> anyhow::Result<()> {
        self.producer.send(record, Duration::from_secs(30)).await?;
        Ok(())
    }
    async fn receive(&self) -> anyhow::Result<usize> {
        let message = self.consumer.recv().await?;
        let len = message.payload().map_or(0, <[u8]>::len);
        Ok(self
            .consumer
            .process(&message, async { Ok::<_, Infallible>(len) })
            .await?)
    }
}

/// One round: `messages` × 1 KiB produced to a fresh topic while a consumer reads them.
///
/// With `count_allocs`, the allocations of the timed window (all threads) are counted.
async fn kafka_round<S: KafkaSide + Send + Sync + 'static>(
    kafka: &KafkaFixture,
    telemetry: &InProcessTelemetry,
    messages: usize,
    payload: &[u8],
    count_allocs: bool,
) -> anyhow::Result<Round> {
    let topic = kafka.create_topic("bench", KAFKA_PARTITIONS).await?;
    let side = Arc::new(S::create(
        &kafka.producer_config(),
        &kafka.consumer_config(&unique_name("bench")),
        telemetry,
    )?);
    side.assign(&topic)?;
    // Warm-up: one message per partition, sent and read before the clock starts.
    for partition in 0..KAFKA_PARTITIONS {
        side.send(
            FutureRecord::<[u8], [u8]>::to(&topic)
                .partition(partition)
                .payload(payload),
        )
        .await?;
    }
    for _ in 0..KAFKA_PARTITIONS {
        tokio::time::timeout(IDLE_TIMEOUT, side.receive())
            .await
            .context("warm-up message")??;
    }

    let consumed = Arc::new(AtomicUsize::new(0));
    let allocations_started = count_allocations(count_allocs);
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let reader = {
        let side = Arc::clone(&side);
        let consumed = Arc::clone(&consumed);
        tokio::spawn(async move {
            let mut last = Instant::now();
            let mut bytes = 0;
            while consumed.load(Ordering::Relaxed) < messages {
                match tokio::time::timeout(IDLE_TIMEOUT, side.receive()).await {
                    Ok(Ok(len)) => bytes += len,
                    Ok(Err(error)) => return Err(error),
                    Err(_) => break, // messages were lost: say so below
                }
                last = Instant::now();
                consumed.fetch_add(1, Ordering::Relaxed);
            }
            black_box(bytes);
            Ok(last)
        })
    };
    let mut in_flight = FuturesUnordered::new();
    for sent in 0..messages {
        while sent.saturating_sub(consumed.load(Ordering::Relaxed)) > KAFKA_MAX_LAG {
            match in_flight.next().await {
                Some(result) => result?,
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        if in_flight.len() >= KAFKA_WINDOW {
            in_flight.next().await.transpose()?;
        }
        in_flight.push(side.send(FutureRecord::<[u8], [u8]>::to(&topic).payload(payload)));
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    let last = reader.await??;
    let cpu = cpu_seconds() - cpu_started;
    let allocations = count_allocations(false) - allocations_started;
    let consumed = consumed.load(Ordering::Relaxed);
    Ok(Round {
        sent: messages,
        consumed,
        elapsed: last.duration_since(started),
        cpu,
        allocations: if count_allocs { allocations } else { 0 },
    })
}

/// The Kafka floor for `messages` messages: [`KafkaFloor`] in a loop, then the export of
/// what it queued; CPU time of the whole process, the export thread included.
fn kafka_floor_round(
    telemetry: &InProcessTelemetry,
    bootstrap: &str,
    messages: usize,
    count_allocs: bool,
) -> Round {
    let floor = KafkaFloor::new(telemetry, &unique_name("bench-floor"), bootstrap);
    floor.message(0, PAYLOAD_BYTES); // first-use costs (bindings, thread-locals)
    telemetry.flush();
    let allocations_started = count_allocations(count_allocs);
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    for offset in 0..messages {
        floor.message(offset as i64, PAYLOAD_BYTES);
        if offset % FLOOR_FLUSH_EVERY == FLOOR_FLUSH_EVERY - 1 {
            telemetry.flush();
        }
    }
    telemetry.flush();
    let cpu = cpu_seconds() - cpu_started;
    let allocations = count_allocations(false) - allocations_started;
    Round {
        sent: messages,
        consumed: messages,
        elapsed: started.elapsed(),
        cpu,
        allocations: if count_allocs { allocations } else { 0 },
    }
}

/// One message through mqtrace's Kafka wrappers and one through [`KafkaFloor`], each
/// captured in memory: the benchmark stops unless their spans have the same shape.
async fn check_kafka_floor(kafka: &KafkaFixture) -> anyhow::Result<()> {
    let (ours, our_spans) = InProcessTelemetry::capturing();
    let topic = kafka.create_topic("bench-shape", 1).await?;
    let side = TracedKafka::create(
        &kafka.producer_config(),
        &kafka.consumer_config(&unique_name("bench")),
        &ours,
    )?;
    assign_all(side.consumer.inner(), &topic, 1)?;
    side.send(FutureRecord::<[u8], [u8]>::to(&topic).payload(&payload()))
        .await?;
    tokio::time::timeout(IDLE_TIMEOUT, side.receive())
        .await
        .context("shape-check message")??;
    let (floor, floor_spans) = InProcessTelemetry::capturing();
    let floor_topic = unique_name("bench-floor");
    KafkaFloor::new(&floor, &floor_topic, kafka.bootstrap_servers()).message(7, PAYLOAD_BYTES);
    sdk_floor::check_shapes(
        "Kafka",
        &our_spans.get_finished_spans()?,
        &topic,
        &floor_spans.get_finished_spans()?,
        &floor_topic,
    )
}

/// `kafka_throughput`: produce + consume through the embedded Kafka, raw rdkafka
/// (`FutureProducer`/`StreamConsumer`) vs `TracedProducer`/`TracedConsumer` (a send span per
/// message ended by its delivery report, a process span per message around the handler).
///
/// Each pair also runs, interleaved: the same client instrumented by hand with the bare SDK
/// ([`HandKafka`]: `kafka_by_hand`, `kafka_vs_hand`), mqtrace with an `always_off` sampler
/// (`unsampled_share`), and the bare-SDK floor with no broker ([`KafkaFloor`]:
/// `sdk_floor_ratio`). After the timed pairs, one shorter round per side counts allocations
/// (`allocations_per_message`).
async fn kafka_throughput(sizes: &Sizes, floors: &mut FloorRatios) -> anyhow::Result<()> {
    let telemetry = InProcessTelemetry::new();
    let hand_telemetry = InProcessTelemetry::new();
    let floor_telemetry = InProcessTelemetry::new();
    let unsampled_telemetry = InProcessTelemetry::unsampled();
    // The embedded mock cluster, or the broker MQTRACE_KAFKA_BOOTSTRAP names (tansu, say).
    let kafka = KafkaFixture::start()?;
    if kafka.embedded_cluster().is_none() {
        println!(
            "kafka_throughput: against the broker at {} (MQTRACE_KAFKA_BOOTSTRAP)",
            kafka.bootstrap_servers()
        );
    }
    check_kafka_floor(&kafka).await?;
    let payload = payload();
    let messages = sizes.kafka_messages;
    let spans_before = telemetry.flush();
    let hand_before = hand_telemetry.flush();
    let floor_before = floor_telemetry.flush();
    let bootstrap = kafka.bootstrap_servers().to_owned();
    let (mut raw, mut traced, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_cpu, mut traced_cpu) = (Vec::new(), Vec::new());
    let (mut hand_ratios, mut vs_hand, mut hand_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut unsampled_cpu, mut unsampled_shares) = (Vec::new(), Vec::new());
    let (mut floor_cpu, mut floor_ratios) = (Vec::new(), Vec::new());
    let mut lost = 0;
    for _ in 0..sizes.kafka_pairs {
        let r = kafka_round::<RawKafka>(&kafka, &telemetry, messages, &payload, false).await?;
        let t = kafka_round::<TracedKafka>(&kafka, &telemetry, messages, &payload, false).await?;
        let h =
            kafka_round::<HandKafka>(&kafka, &hand_telemetry, messages, &payload, false).await?;
        let u = kafka_round::<TracedKafka>(&kafka, &unsampled_telemetry, messages, &payload, false)
            .await?;
        // Twice the messages: the floor is short, and CPU time on a shared machine is noisy.
        let f = kafka_floor_round(&floor_telemetry, &bootstrap, 2 * messages, false);
        for round in [&r, &t, &h, &u] {
            lost += round.sent - round.consumed;
        }
        ratios.push(t.rate() / r.rate());
        hand_ratios.push(h.rate() / r.rate());
        vs_hand.push(t.rate() / h.rate());
        raw.push(r.rate());
        traced.push(t.rate());
        raw_cpu.push(r.cpu_per_message());
        traced_cpu.push(t.cpu_per_message());
        hand_cpu.push(h.cpu_per_message());
        unsampled_cpu.push(u.cpu_per_message());
        floor_cpu.push(f.cpu_per_message());
        let overhead = t.cpu_per_message() - r.cpu_per_message();
        unsampled_shares.push((u.cpu_per_message() - r.cpu_per_message()) / overhead);
        floor_ratios.push(overhead / f.cpu_per_message());
    }
    let exported = telemetry.flush() - spans_before;
    let hand_exported = hand_telemetry.flush() - hand_before;
    let floor_exported = floor_telemetry.flush() - floor_before;
    // Per traced round: a send and a process span per message, warm-up included.
    let expected = sizes.kafka_pairs * 2 * (messages + KAFKA_PARTITIONS as usize);
    let floor_expected = sizes.kafka_pairs * 2 * (2 * messages + 1);

    // Allocations: one shorter round per side, counted.
    let counted = (messages / 5).max(2_000);
    let a_raw = kafka_round::<RawKafka>(&kafka, &telemetry, counted, &payload, true).await?;
    let a_traced = kafka_round::<TracedKafka>(&kafka, &telemetry, counted, &payload, true).await?;
    let a_unsampled =
        kafka_round::<TracedKafka>(&kafka, &unsampled_telemetry, counted, &payload, true).await?;
    let a_hand = kafka_round::<HandKafka>(&kafka, &hand_telemetry, counted, &payload, true).await?;
    let a_floor = kafka_floor_round(&floor_telemetry, &bootstrap, counted, true);
    let added = |round: &Round| round.allocations_per_message() - a_raw.allocations_per_message();

    let ratio = median(&mut ratios.clone());
    println!(
        "kafka_throughput: ratio={ratio:.2}{}",
        invalid_if_spans_lost(exported, expected)
    );
    println!(
        "  raw {} msg/s, traced {} msg/s (medians); per-pair ratios {}",
        thousands(median(&mut raw)),
        thousands(median(&mut traced)),
        list(&ratios, 3)
    );
    println!(
        "  CPU per message, all threads (producer, consumer, librdkafka, the mock broker, span export): raw {:.2} µs, traced {:.2} µs, by hand {:.2} µs, traced unsampled {:.2} µs; the bare-SDK floor (no broker) {:.2} µs",
        median(&mut raw_cpu),
        median(&mut traced_cpu),
        median(&mut hand_cpu),
        median(&mut unsampled_cpu),
        median(&mut floor_cpu),
    );
    println!(
        "  {} pairs × {} messages × {PAYLOAD_BYTES} B each side, {KAFKA_PARTITIONS} partitions, producer ≤ {} ahead; lost: {lost}; spans exported {}/{}",
        sizes.kafka_pairs,
        thousands(messages as f64),
        thousands(KAFKA_MAX_LAG as f64),
        thousands(exported as f64),
        thousands(expected as f64)
    );
    if lost > 0 {
        println!(
            "  WARNING: {lost} messages never reached the consumer; the rounds are not comparable"
        );
    }
    let hand_ratio = median(&mut hand_ratios.clone());
    println!(
        "kafka_by_hand: ratio={hand_ratio:.2}{}",
        invalid_if_spans_lost(hand_exported, expected)
    );
    println!(
        "  raw rdkafka + the bare SDK recording the same spans, link and measurements by hand (SDK tracer, W3C + Baggage propagators, bound instruments) ÷ raw; per-pair {}",
        list(&hand_ratios, 3)
    );
    let vs_hand_ratio = median(&mut vs_hand.clone());
    println!("kafka_vs_hand: ratio={vs_hand_ratio:.2}");
    println!(
        "  mqtrace traced ÷ by hand, msg/s; per-pair {}",
        list(&vs_hand, 3)
    );
    let share = median(&mut unsampled_shares.clone());
    println!("unsampled_share: kafka={share:.2}");
    println!(
        "  (traced with always_off − raw) ÷ (traced − raw), CPU per message; per-pair {} (instructions: scripts/callgrind-overhead)",
        list(&unsampled_shares, 2)
    );
    println!(
        "allocations_per_message: sampled={:.1} unsampled={:.1}",
        added(&a_traced),
        added(&a_unsampled)
    );
    println!(
        "  send + process per Kafka message, all threads, traced − raw ({} messages per side); raw itself {:.1}, by hand adds {:.1}, the bare-SDK floor makes {:.1}",
        thousands(counted as f64),
        a_raw.allocations_per_message(),
        added(&a_hand),
        a_floor.allocations_per_message()
    );
    floors.kafka = Some(median(&mut floor_ratios.clone()));
    floors.kafka_detail = format!(
        "kafka per-pair {} (floor spans exported {}/{}{})",
        list(&floor_ratios, 2),
        thousands(floor_exported as f64),
        thousands(floor_expected as f64),
        if floor_exported < floor_expected {
            ": INVALID, the floor dropped spans"
        } else {
            ""
        }
    );
    Ok(())
}

/// `sdk_floor_ratio` per broker: (traced − raw) CPU per message ÷ the bare-SDK floor's,
/// printed once both figures ran.
#[derive(Debug, Default)]
struct FloorRatios {
    kafka: Option<f64>,
    kafka_detail: String,
    amqp: Option<f64>,
    amqp_detail: String,
}

impl FloorRatios {
    fn print(&self) {
        if self.kafka.is_none() && self.amqp.is_none() {
            return;
        }
        let show =
            |ratio: Option<f64>| ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        println!(
            "sdk_floor_ratio: kafka={} amqp={}",
            show(self.kafka),
            show(self.amqp)
        );
        println!(
            "  (traced − raw) ÷ the bare SDK recording the same spans, attributes, link, parent and measurements with no broker, CPU per message, all threads, same run; target ≤ 1.5. By instructions: scripts/callgrind-overhead"
        );
        for detail in [&self.kafka_detail, &self.amqp_detail] {
            if !detail.is_empty() {
                println!("  {detail}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// amqp_throughput
// ---------------------------------------------------------------------------------------

/// One round on a fresh queue: `messages` published with confirms (up to `AMQP_WINDOW`
/// awaiting their confirm) while a consumer on its own connection receives and acks them.
async fn amqp_round(
    rabbit: &RabbitFixture,
    telemetry: Option<&InProcessTelemetry>,
    messages: usize,
    payload: &[u8],
) -> anyhow::Result<Round> {
    let queue = rabbit.declare_queue("bench").await?;
    let url = rabbit.url().to_owned();
    let consumer_connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let consumer_channel = consumer_connection.create_channel().await?;
    consumer_channel
        .basic_qos(AMQP_PREFETCH, BasicQosOptions::default())
        .await?;
    let lapin_consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&consumed);
    // Both consumers ack every message; the traced one runs a process span around a no-op
    // handler and its ack is a settle span.
    let reader = match telemetry {
        None => tokio::spawn(async move {
            let mut consumer = lapin_consumer;
            let mut last = Instant::now();
            while count.load(Ordering::Relaxed) < messages {
                let delivery = match tokio::time::timeout(IDLE_TIMEOUT, consumer.next()).await {
                    Ok(Some(delivery)) => delivery?,
                    Ok(None) | Err(_) => break,
                };
                black_box(delivery.data.len());
                delivery.ack(BasicAckOptions::default()).await?;
                last = Instant::now();
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(last)
        }),
        Some(telemetry) => {
            let mut consumer = AmqpTracedConsumer::new(lapin_consumer)
                .with_instrumentation(telemetry.instrumentation.clone())
                .with_server_from_url(&url);
            tokio::spawn(async move {
                let mut last = Instant::now();
                while count.load(Ordering::Relaxed) < messages {
                    let delivery = match tokio::time::timeout(IDLE_TIMEOUT, consumer.next()).await {
                        Ok(Some(delivery)) => delivery?,
                        Ok(None) | Err(_) => break,
                    };
                    let len = delivery.data.len();
                    black_box(
                        consumer
                            .process(&delivery, async { Ok::<_, Infallible>(len) })
                            .await?,
                    );
                    delivery.ack(BasicAckOptions::default()).await?;
                    last = Instant::now();
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(last)
            })
        }
    };

    let connection = Arc::new(Connection::connect(&url, ConnectionProperties::default()).await?);
    let started;
    let cpu_started = cpu_seconds();
    match telemetry {
        None => {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            started = Instant::now();
            let (channel, queue) = (&channel, queue.as_str());
            let publish = move || async move {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default(),
                    )
                    .await?;
                let confirmation = confirm.await?;
                if !confirmation.is_ack() {
                    bail!("the broker did not ack a publish: {confirmation:?}");
                }
                Ok(())
            };
            windowed(messages, AMQP_WINDOW, publish).await?;
        }
        Some(telemetry) => {
            let publisher = TracedPublisher::open(Arc::clone(&connection))
                .await?
                .with_instrumentation(telemetry.instrumentation.clone())
                .with_server_from_url(&url);
            started = Instant::now();
            let (publisher, queue) = (&publisher, queue.as_str());
            let publish = move || async move {
                publisher
                    .publish(
                        "",
                        queue,
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default(),
                    )
                    .await?;
                Ok(())
            };
            windowed(messages, AMQP_WINDOW, publish).await?;
        }
    }
    let last = reader.await??;
    let cpu = cpu_seconds() - cpu_started;
    let _ = consumer_connection.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(Round {
        sent: messages,
        consumed: consumed.load(Ordering::Relaxed),
        elapsed: last.duration_since(started),
        cpu,
        allocations: 0,
    })
}

/// The AMQP floor for `messages` messages ([`AmqpFloor`], no broker), export included.
fn amqp_floor_round(telemetry: &InProcessTelemetry, url: &str, messages: usize) -> Round {
    let floor = AmqpFloor::new(telemetry, &unique_name("bench-floor"), url);
    floor.message(0, PAYLOAD_BYTES);
    telemetry.flush();
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    for tag in 1..=messages {
        floor.message(tag as i64, PAYLOAD_BYTES);
        if tag % FLOOR_FLUSH_EVERY == 0 {
            telemetry.flush();
        }
    }
    telemetry.flush();
    Round {
        sent: messages,
        consumed: messages,
        elapsed: started.elapsed(),
        cpu: cpu_seconds() - cpu_started,
        allocations: 0,
    }
}

/// One message through mqtrace's RabbitMQ wrappers and one through [`AmqpFloor`], captured
/// in memory: the benchmark stops unless their spans have the same shape.
async fn check_amqp_floor(rabbit: &RabbitFixture) -> anyhow::Result<()> {
    let (ours, our_spans) = InProcessTelemetry::capturing();
    amqp_round(rabbit, Some(&ours), 1, &payload()).await?;
    let spans = our_spans.get_finished_spans()?;
    let queue = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Producer)
        .and_then(|s| s.name.strip_prefix("send "))
        .map(str::to_owned)
        .context("the traced publish recorded no send span")?;
    let (floor, floor_spans) = InProcessTelemetry::capturing();
    let floor_queue = unique_name("bench-floor");
    AmqpFloor::new(&floor, &floor_queue, rabbit.url()).message(1, PAYLOAD_BYTES);
    sdk_floor::check_shapes(
        "AMQP",
        &spans,
        &queue,
        &floor_spans.get_finished_spans()?,
        &floor_queue,
    )
}

/// Runs `count` operations with up to `window` in flight.
async fn windowed<F, Fut>(count: usize, window: usize, operation: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        if in_flight.len() >= window {
            in_flight.next().await.transpose()?;
        }
        in_flight.push(operation());
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    Ok(())
}

/// `amqp_throughput`: publish with confirms + consume and ack through RabbitMQ, raw lapin vs
/// `TracedPublisher`/`TracedConsumer`.
async fn amqp_throughput(sizes: &Sizes, floors: &mut FloorRatios) -> anyhow::Result<()> {
    let telemetry = InProcessTelemetry::new();
    let floor_telemetry = InProcessTelemetry::new();
    let rabbit = RabbitFixture::connect().await?;
    check_amqp_floor(&rabbit).await?;
    let mut floor_ratios = Vec::new();
    let payload = payload();
    let messages = sizes.amqp_messages;
    // Warm-up: connections, queue declarations and the broker's own caches.
    amqp_round(&rabbit, None, messages / 10, &payload).await?;
    amqp_round(&rabbit, Some(&telemetry), messages / 10, &payload).await?;
    let spans_before = telemetry.flush();
    let (mut raw, mut traced, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_cpu, mut traced_cpu) = (Vec::new(), Vec::new());
    let mut lost = 0;
    for _ in 0..sizes.amqp_pairs {
        let r = amqp_round(&rabbit, None, messages, &payload).await?;
        let t = amqp_round(&rabbit, Some(&telemetry), messages, &payload).await?;
        let f = amqp_floor_round(&floor_telemetry, rabbit.url(), messages);
        floor_ratios.push((t.cpu_per_message() - r.cpu_per_message()) / f.cpu_per_message());
        lost += (r.sent - r.consumed) + (t.sent - t.consumed);
        ratios.push(t.rate() / r.rate());
        raw.push(r.rate());
        traced.push(t.rate());
        raw_cpu.push(r.cpu_per_message());
        traced_cpu.push(t.cpu_per_message());
    }
    let exported = telemetry.flush() - spans_before;
    floors.amqp = Some(median(&mut floor_ratios.clone()));
    floors.amqp_detail = format!(
        "amqp per-pair {} (client CPU only: RabbitMQ runs in its own process)",
        list(&floor_ratios, 2)
    );
    // Per traced message: send, process and ack spans.
    let expected = sizes.amqp_pairs * 3 * messages;
    let ratio = median(&mut ratios.clone());
    println!(
        "amqp_throughput: ratio={ratio:.2}{}",
        invalid_if_spans_lost(exported, expected)
    );
    println!(
        "  raw {} msg/s, traced {} msg/s (medians); per-pair ratios {}",
        thousands(median(&mut raw)),
        thousands(median(&mut traced)),
        list(&ratios, 3)
    );
    println!(
        "  client CPU per message (publisher, consumer, span export; RabbitMQ itself not counted): raw {:.1} µs, traced {:.1} µs",
        median(&mut raw_cpu),
        median(&mut traced_cpu)
    );
    println!(
        "  {} pairs × {} messages × {PAYLOAD_BYTES} B each side, ≤ {AMQP_WINDOW} awaiting confirms, prefetch {AMQP_PREFETCH}, ack per message; lost: {lost}; spans exported {}/{}",
        sizes.amqp_pairs,
        thousands(messages as f64),
        thousands(exported as f64),
        thousands(expected as f64)
    );
    if lost > 0 {
        println!(
            "  WARNING: {lost} messages never reached the consumer; the rounds are not comparable"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// send_latency_blocked_exporter
// ---------------------------------------------------------------------------------------

/// Latencies, in seconds, of `count` traced sends one after the other.
async fn send_latencies(
    producer: &TracedProducer,
    topic: &str,
    count: usize,
    payload: &[u8],
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(topic).payload(payload),
                Duration::from_secs(30),
            )
            .await?;
        latencies.push(started.elapsed().as_secs_f64());
    }
    Ok(latencies)
}

/// `send_latency_blocked_exporter`: one-at-a-time `TracedProducer` sends with mqtrace's own
/// export pipeline (`telemetry::build`, OTLP/HTTP) to a collector that answers, and to one
/// that holds every export forever (the testkit receiver with `Behaviour::Slow(MAX)`): the
/// hanging collector must not show in the send latency.
fn send_latency_blocked_exporter(runtime: &Runtime, sizes: &Sizes) -> anyhow::Result<()> {
    let (healthy_collector, hanging_collector) = runtime.block_on(async {
        Ok::<_, anyhow::Error>((OtlpReceiver::start().await?, OtlpReceiver::start().await?))
    })?;
    hanging_collector.set_behaviour(Behaviour::Slow(Duration::MAX));
    let pipeline = |collector: &OtlpReceiver| {
        telemetry::build(
            TelemetryConfig::default()
                .with_default_service_name("overhead-bench")
                .with_destination(Destination::Otlp {
                    endpoint: collector.http_endpoint(),
                    protocol: OtlpProtocol::HttpProtobuf,
                }),
        )
    };
    // Built outside the runtime: the OTLP/HTTP exporter's blocking client must not be
    // created or dropped on a runtime thread.
    let healthy = pipeline(&healthy_collector)?;
    let hanging = pipeline(&hanging_collector)?;
    let instrumentation = |guard: &telemetry::TelemetryGuard| -> anyhow::Result<Instrumentation> {
        Ok(Instrumentation::builder()
            .with_tracer_provider(guard.tracer_provider().context("traces")?)
            .with_meter_provider(guard.meter_provider().context("metrics")?)
            .build())
    };
    let (healthy_instrumentation, hanging_instrumentation) =
        (instrumentation(&healthy)?, instrumentation(&hanging)?);

    let result = runtime.block_on(async {
        let kafka = KafkaFixture::embedded(1)?;
        let topic = kafka.create_topic("bench-latency", 1).await?;
        let mut config = kafka.producer_config();
        // Latency, not batching: no linger, so the timer is not what is measured.
        config.set("linger.ms", "0");
        let healthy_producer =
            TracedProducer::from_config(&config)?.with_instrumentation(healthy_instrumentation);
        let hanging_producer =
            TracedProducer::from_config(&config)?.with_instrumentation(hanging_instrumentation);
        let payload = payload();
        // Warm-up past the export queue (2,048 spans by default): from here on the hanging
        // pipeline's queue is full and every span it is given is dropped and counted.
        let warm_up = 2_500;
        send_latencies(&healthy_producer, &topic, warm_up, &payload).await?;
        send_latencies(&hanging_producer, &topic, warm_up, &payload).await?;

        let (mut p50_ratios, mut p99_ratios) = (Vec::new(), Vec::new());
        let (mut healthy_all, mut hanging_all) = (Vec::new(), Vec::new());
        for _ in 0..sizes.latency_pairs {
            let mut h =
                send_latencies(&healthy_producer, &topic, sizes.latency_sends, &payload).await?;
            let mut b =
                send_latencies(&hanging_producer, &topic, sizes.latency_sends, &payload).await?;
            p50_ratios.push(quantile(&mut b, 0.5) / quantile(&mut h, 0.5));
            p99_ratios.push(quantile(&mut b, 0.99) / quantile(&mut h, 0.99));
            healthy_all.extend(h);
            hanging_all.extend(b);
        }
        Ok::<_, anyhow::Error>((p50_ratios, p99_ratios, healthy_all, hanging_all))
    });
    let accepted_by_hanging = hanging_collector.accepted_requests();
    // Release the held exports so both pipelines shut down promptly.
    hanging_collector.set_behaviour(Behaviour::Normal);
    drop(healthy);
    drop(hanging);
    let (p50_ratios, p99_ratios, mut healthy_all, mut hanging_all) = result?;
    let p50 = median(&mut p50_ratios.clone());
    let p99 = median(&mut p99_ratios.clone());
    println!("send_latency_blocked_exporter: ratio={:.2}", p50.max(p99));
    println!(
        "  p50 {:.3} ms healthy vs {:.3} ms hanging collector, p99 {:.3} ms vs {:.3} ms (all sends pooled)",
        quantile(&mut healthy_all, 0.5) * 1e3,
        quantile(&mut hanging_all, 0.5) * 1e3,
        quantile(&mut healthy_all, 0.99) * 1e3,
        quantile(&mut hanging_all, 0.99) * 1e3,
    );
    println!(
        "  ratios hanging/healthy: p50 {p50:.3}, p99 {p99:.3} (per pair: p50 {}; p99 {}); {} pairs × {} sequential sends, linger.ms=0; the hanging collector completed {accepted_by_hanging} exports",
        list(&p50_ratios, 3),
        list(&p99_ratios, 3),
        sizes.latency_pairs,
        thousands(sizes.latency_sends as f64)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// export_spans_per_s
// ---------------------------------------------------------------------------------------

/// The main job's spans per request, as they reach the exporter: the caller's root, the
/// request's send, the reply's send (linked to its batch) and the reply's process (remote
/// parent, linked); and per 64 requests a batch `process` span with 128 links and five stage
/// spans.
fn main_job_spans(count: usize) -> Vec<SpanData> {
    use opentelemetry::InstrumentationScope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::borrow::Cow;
    use std::time::SystemTime;

    let scope = InstrumentationScope::builder("mqtrace")
        .with_version("0.1.0")
        .with_schema_url("https://opentelemetry.io/schemas/1.44.0")
        .build();
    let context = |trace: u128, span: u64, remote: bool| {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            TraceState::default(),
        )
    };
    let kafka = |operation: &'static str, destination: &'static str| {
        vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", operation),
            KeyValue::new("messaging.destination.name", destination),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 36313_i64),
            KeyValue::new("messaging.operation.type", operation),
            KeyValue::new("messaging.message.body.size", 128_i64),
            KeyValue::new("messaging.destination.partition.id", "2"),
            KeyValue::new("messaging.kafka.offset", 81_234_i64),
        ]
    };
    let link = |trace: u128, span: u64| {
        opentelemetry::trace::Link::new(
            context(trace, span, true),
            vec![
                KeyValue::new("messaging.destination.partition.id", "1"),
                KeyValue::new("messaging.kafka.offset", 4_321_i64),
            ],
            0,
        )
    };
    let now = SystemTime::now();
    let span = |name: &'static str,
                kind: SpanKind,
                trace: u128,
                id: u64,
                parent: u64,
                attributes: Vec<KeyValue>,
                links: Vec<opentelemetry::trace::Link>| {
        let mut span_links = SpanLinks::default();
        span_links.links = links;
        SpanData {
            span_context: context(trace, id, false),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: parent != 0,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: now,
            end_time: now + Duration::from_micros(420),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: span_links,
            status: opentelemetry::trace::Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    };
    let mut spans = Vec::with_capacity(count);
    let mut request = 0_u128;
    while spans.len() < count {
        request += 1;
        let trace = request << 64 | 0x5eed;
        let id = |n: u64| (request as u64) << 8 | n;
        spans.push(span(
            "inference.request",
            SpanKind::Client,
            trace,
            id(1),
            0,
            vec![KeyValue::new("app.request.kind", "fraud_score")],
            vec![],
        ));
        spans.push(span(
            "send inference-requests",
            SpanKind::Producer,
            trace,
            id(2),
            id(1),
            kafka("send", "inference-requests"),
            vec![],
        ));
        spans.push(span(
            "send inference-replies",
            SpanKind::Producer,
            trace,
            id(3),
            id(2),
            kafka("send", "inference-replies"),
            vec![link(request + 1_000_000, 7)],
        ));
        spans.push(span(
            "process inference-replies",
            SpanKind::Consumer,
            trace,
            id(4),
            id(3),
            kafka("process", "inference-replies"),
            vec![link(trace, id(3))],
        ));
        if request.is_multiple_of(64) {
            let batch = request + 1_000_000;
            spans.push(span(
                "process inference-requests",
                SpanKind::Consumer,
                batch,
                7,
                0,
                kafka("process", "inference-requests"),
                (0..128).map(|i| link(batch + i, 2)).collect(),
            ));
            for stage in [
                "features.fetch",
                "features.preprocess",
                "model.execute",
                "cpu.compute",
                "postprocess",
            ] {
                spans.push(span(
                    stage,
                    SpanKind::Internal,
                    batch,
                    8,
                    7,
                    vec![
                        KeyValue::new("ml.inference.batch_size", 256_i64),
                        KeyValue::new("ml.device.type", "cpu"),
                    ],
                    vec![],
                ));
            }
        }
    }
    spans.truncate(count);
    spans
}

/// Spans per second through `export`, batches of 512 prepared before the clock starts
/// (the SDK hands exporters owned batches); the median of `rounds`.
fn spans_per_second(
    spans: &[SpanData],
    rounds: usize,
    mut export: impl FnMut(Vec<SpanData>) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let batches: Vec<Vec<SpanData>> = spans.chunks(512).map(<[SpanData]>::to_vec).collect();
        let started = Instant::now();
        for batch in batches {
            export(batch)?;
        }
        rates.push(spans.len() as f64 / started.elapsed().as_secs_f64());
    }
    Ok(median(&mut rates))
}

fn export_spans_per_s(runtime: &Runtime, sizes: &Sizes) -> anyhow::Result<()> {
    use mqtrace::telemetry::file::FileSpanExporter;
    use opentelemetry_otlp::WithExportConfig;

    let spans = main_job_spans(sizes.export_spans);
    let dir = std::env::temp_dir().join(unique_name("mqtrace-export-bench"));
    std::fs::create_dir_all(&dir)?;

    // The file exporter, and what it did before (the protobuf structs, then serde).
    let path = dir.join("traces.jsonl");
    let file = FileSpanExporter::create(&path)?;
    let file_rate = spans_per_second(&spans, sizes.export_rounds, |batch| {
        file.write_batch(&batch)
            .map_err(|e| anyhow::anyhow!("file export: {e}"))
    })?;
    let bytes = std::fs::metadata(&path)?.len() as f64 / (spans.len() * sizes.export_rounds) as f64;
    let via_proto_path = dir.join("via-proto.jsonl");
    let mut via_proto = std::io::BufWriter::new(std::fs::File::create(&via_proto_path)?);
    let resource =
        opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema::default();
    let proto_rate = spans_per_second(&spans, sizes.export_rounds, |batch| {
        use std::io::Write as _;
        let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans:
                opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
                    batch, &resource,
                ),
        };
        serde_json::to_writer(&mut via_proto, &request)?;
        via_proto.write_all(b"\n")?;
        via_proto.flush()?;
        Ok(())
    })?;

    // OTLP/HTTP to the testkit's receiver on loopback (decoding on this process's runtime):
    // mqtrace's exporter, and opentelemetry-otlp's, which it replaced.
    let receiver = runtime.block_on(OtlpReceiver::start())?;
    let url = format!("{}/v1/traces", receiver.http_endpoint());
    let exporter = mqtrace::telemetry::OtlpHttpSpanExporter::new(&url, Duration::from_secs(30))?;
    let otlp_rate = spans_per_second(&spans, sizes.export_rounds, |batch| {
        futures_executor::block_on(exporter.export(batch))
            .map_err(|e| anyhow::anyhow!("OTLP/HTTP export: {e}"))
    })?;
    let sdk_exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&url)
        .build()?;
    let sdk_rate = spans_per_second(&spans, sizes.export_rounds, |batch| {
        futures_executor::block_on(sdk_exporter.export(batch))
            .map_err(|e| anyhow::anyhow!("OTLP/HTTP export (opentelemetry-otlp): {e}"))
    })?;
    let received = receiver.span_count();
    let sent = 2 * spans.len() * sizes.export_rounds;
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "export_spans_per_s: file={} otlp_http={}{}",
        thousands(file_rate),
        thousands(otlp_rate),
        if received < sent {
            format!(" INVALID (the receiver got {received} of {sent} spans)")
        } else {
            String::new()
        }
    );
    println!(
        "  one thread, {} spans × {} rounds of the main job's mix (4 per request + a 128-link batch span and 5 stage spans per 64 requests), batches of 512; {bytes:.0} B of OTLP-JSON per span",
        thousands(spans.len() as f64),
        sizes.export_rounds
    );
    println!(
        "  file before (protobuf structs, then serde_json): {} spans/s; the direct writer is {:.1}x that",
        thousands(proto_rate),
        file_rate / proto_rate
    );
    println!(
        "  OTLP/HTTP before (opentelemetry-otlp's exporter, protobuf structs per batch): {} spans/s; mqtrace's is {:.1}x that",
        thousands(sdk_rate),
        otlp_rate / sdk_rate
    );
    Ok(())
}
