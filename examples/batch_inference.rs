//! The main job: a fraud-scoring batch-inference service on Kafka, traced end to end.
//!
//! A load generator (the caller) sends `--messages` scoring requests, each in its own
//! `inference.request` trace; `--workers` workers in one consumer group take them in batches,
//! score them with an MLP (CPU, or CUDA with `--features cuda`), and reply to each request
//! in the request's own trace; the caller consumes the replies. Every batch span links to
//! every request it served.
//!
//! ```text
//! cargo run --release --example batch_inference                              # embedded Kafka
//! cargo run --release --example batch_inference -- --messages 2000 --summary-json s.json
//! cargo run --release --example batch_inference -- --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run --release --features cuda --example batch_inference -- --device cuda
//! # a service that keeps running: 50 requests/s until Ctrl-C or SIGTERM (docker-compose.yml)
//! cargo run --release --example batch_inference -- --bootstrap kafka:9092 --generate --messages 0 --rate 50
//! ```
//!
//! Traces, metrics and logs go to `./telemetry/*.jsonl` (OTLP-JSON), or over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use mqtrace::amqp::lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use mqtrace::amqp::lapin::types::FieldTable;
use mqtrace::amqp::lapin::{Connection, ConnectionProperties};
use mqtrace::core::batch::{MessageSink, MessageSource};
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::{FeatureStore, InMemoryFeatureStore, RedisFeatureStore};
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::model::Model;
use mqtrace::inference::request::MERCHANT_CATEGORIES;
use mqtrace::inference::{BatchConfig, INPUT_WIDTH, Shutdown, Worker, WorkerConfig, WorkerStats};
use mqtrace::kafka::rdkafka::message::Message;
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace::telemetry::{self, Destination, TelemetryConfig};
use mqtrace_testkit::kafka::{KafkaFixture, NamedTopic, unique_name};
use opentelemetry::trace::{
    SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tokio::task::JoinHandle;

const REQUESTS: &str = "inference-requests";
const REPLIES: &str = "inference-replies";
const DEAD_LETTERS: &str = "inference-requests.dlq";
const USERS: usize = 5_000;
const SEED: u64 = 7;
/// How long a continuous run (`--messages 0`) remembers when each request was sent and
/// answered: older entries are forgotten, so memory stays flat, and the closing latency
/// percentiles cover this last window.
const LATENCY_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceChoice {
    Cpu,
    Cuda,
    Auto,
}

#[derive(Debug, Parser)]
#[command(about = "Batch-inference demo: traced requests, batches, model and replies")]
struct Args {
    /// Requests the load generator sends; 0 keeps sending (at --rate) until Ctrl-C or SIGTERM.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Requests per second the load generator sends; 0 sends as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Most requests per batch.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Longest a batch waits to fill, in milliseconds.
    #[arg(long, default_value_t = 20)]
    max_wait_ms: u64,
    /// Worker instances in the consumer group.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Where the model runs: `auto` uses CUDA when built with it and a driver is present.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Hidden layer widths of the MLP.
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    hidden: Vec<usize>,
    /// External Kafka bootstrap servers (no load generator unless --generate).
    #[arg(long)]
    bootstrap: Option<String>,
    /// With --bootstrap: also run the load generator.
    #[arg(long)]
    generate: bool,
    /// Send replies over RabbitMQ (queue `inference-replies`) instead of Kafka.
    #[arg(long)]
    amqp_url: Option<String>,
    /// Look user profiles up in Redis (one MGET per batch) instead of in process memory; the
    /// demo loads the generated profiles there first (`mqtrace:profile:*` keys).
    #[arg(long)]
    redis_url: Option<String>,
    /// Share of requests sent malformed (they go to the dead-letter topic).
    #[arg(long, default_value_t = 0.0)]
    bad_ratio: f64,
    /// Also trace a `process` span per request in its own trace.
    #[arg(long)]
    per_message_spans: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    summary_json: Option<std::path::PathBuf>,
    /// Give up when the replies have not all arrived after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// One model per worker, on the chosen device.
fn build_model(device: DeviceChoice, hidden: &[usize]) -> anyhow::Result<Box<dyn Model>> {
    let mlp = Mlp::seeded(INPUT_WIDTH, hidden, SEED);
    let version = format!(
        "seed{SEED}-{}",
        hidden
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("x")
    );
    let cpu =
        |mlp| -> Box<dyn Model> { Box::new(CpuModel::new("fraud-mlp", version.clone(), mlp)) };
    match device {
        DeviceChoice::Cpu => Ok(cpu(mlp)),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda | DeviceChoice::Auto => {
            match mqtrace::inference::cuda::CudaModel::new("fraud-mlp", version.clone(), &mlp, 0) {
                Ok(model) => Ok(Box::new(model)),
                Err(error) if device == DeviceChoice::Auto => {
                    tracing::info!(%error, "no usable GPU, running the model on the CPU");
                    eprintln!("device auto: no usable GPU ({error}); using the CPU");
                    Ok(cpu(mlp))
                }
                Err(error) => Err(error.into()),
            }
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda => bail!(
            "this build has no CUDA backend: run with `cargo run --release --features cuda --example batch_inference -- --device cuda`"
        ),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Auto => Ok(cpu(mlp)),
    }
}

/// Request `i` of run `run`: `r-{run}-{i}`. Each run has its own tag, so a caller never
/// mistakes a reply left on the topic by an earlier run against the same broker for its own.
fn request_id(run: &str, i: usize) -> String {
    format!("r-{run}-{i}")
}

/// Whether `id` is a request id of run `run` (its requests, or its warm-up).
fn of_run(id: &str, run: &str) -> bool {
    id.strip_prefix("r-")
        .or_else(|| id.strip_prefix("warmup-"))
        .and_then(|rest| rest.strip_prefix(run))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// A syntactically broken, or schema-breaking, request now and then.
fn request_body(run: &str, i: usize, bad: bool) -> String {
    let id = request_id(run, i);
    if bad {
        return match i % 3 {
            0 => format!("{{\"request_id\":\"{id}\",\"amount\":12.0"),
            1 => format!(
                "{{\"request_id\":\"{id}\",\"user_id\":\"user-{}\"}}",
                i % USERS
            ),
            _ => format!(
                "{{\"request_id\":\"{id}\",\"user_id\":\"user-{}\",\"amount\":\"lots\"}}",
                i % USERS
            ),
        };
    }
    // every known category but the catch-all `other`
    let categories = &MERCHANT_CATEGORIES[..MERCHANT_CATEGORIES.len() - 1];
    const COUNTRIES: [&str; 5] = ["DE", "FR", "GB", "US", "NL"];
    let amount = (i.wrapping_mul(7919) % 10_000) as f64 * 0.73 + 1.0;
    format!(
        "{{\"request_id\":\"{id}\",\"user_id\":\"user-{}\",\"amount\":{amount:.2},\"merchant_category\":\"{}\",\"country\":\"{}\",\"hour\":{},\"card_present\":{}}}",
        i.wrapping_mul(31) % USERS,
        categories[i % categories.len()],
        COUNTRIES[(i / 3) % COUNTRIES.len()],
        i % 24,
        !i.is_multiple_of(4),
    )
}

/// Replies as the caller sees them: request id -> when the reply arrived.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Records a reply to a request of run `run`; replies to other runs' requests are ignored.
fn record_reply(arrivals: &Arrivals, payload: &[u8], run: &str) {
    let Ok(reply) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    if let Some(id) = reply
        .get("request_id")
        .and_then(|v| v.as_str())
        .filter(|id| of_run(id, run))
        && let Ok(mut arrivals) = arrivals.lock()
    {
        arrivals.entry(id.to_owned()).or_insert_with(Instant::now);
    }
}

/// Says so when an existing topic has fewer partitions than the run asked for: it is used
/// as it is (more partitions would move keys to other partitions; that is the operator's
/// call), so some workers of the group may get no partition.
fn warn_if_fewer(name: &str, topic: NamedTopic, asked: i32) {
    if topic.partitions < asked {
        eprintln!(
            "warning: topic {name} exists with {} partitions, fewer than the {asked} asked for; \
             using it as it is (at most {} workers of a group get requests; delete the topic, \
             or add partitions with your Kafka tools, to change that)",
            topic.partitions, topic.partitions
        );
    }
}

/// What a worker-only process (`--bootstrap` without `--generate`) can say about its run:
/// it sends no requests, so it knows no end-to-end throughput or latency.
struct WorkerOnly {
    handled: u64,
    busy_s: f64,
    up_s: f64,
    batches: u64,
}

impl WorkerOnly {
    /// `None` when the process generated the load itself (it reports end-to-end figures).
    fn new(generate: bool, handled: u64, batches: u64, busy_s: f64, up: Duration) -> Option<Self> {
        (!generate).then_some(Self {
            handled,
            busy_s,
            up_s: up.as_secs_f64(),
            batches,
        })
    }

    /// Requests handled per second of batch processing (summed over the workers).
    fn handled_per_busy_s(&self) -> Option<f64> {
        (self.busy_s > 0.0).then(|| self.handled as f64 / self.busy_s)
    }

    /// Mean time from a batch's start to its settle, in ms.
    fn mean_batch_ms(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.busy_s / self.batches as f64 * 1e3)
    }

    fn print(&self) {
        match self.handled_per_busy_s() {
            Some(rate) => println!(
                "  handled while busy  {rate:>10.0} req/s  (busy {:.1} s of {:.1} s up)",
                self.busy_s, self.up_s
            ),
            None => println!(
                "  handled while busy           -  (no batch in {:.1} s up)",
                self.up_s
            ),
        }
        if let Some(ms) = self.mean_batch_ms() {
            println!("  mean batch time     {ms:>10.1} ms (start to settle)");
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "handled": self.handled,
            "handled_per_busy_s": self.handled_per_busy_s(),
            "busy_seconds": self.busy_s,
            "up_seconds": self.up_s,
            "mean_batch_ms": self.mean_batch_ms(),
        })
    }
}

/// Where the workers find user profiles.
#[derive(Clone)]
enum Profiles {
    Memory,
    Redis(RedisFeatureStore),
}

async fn run_worker<K: MessageSink>(
    consumer: TracedConsumer,
    sink: K,
    profiles: Profiles,
    model: Box<dyn Model>,
    config: WorkerConfig,
    shutdown: Shutdown,
) -> anyhow::Result<WorkerStats> {
    match profiles {
        Profiles::Memory => {
            let store = InMemoryFeatureStore::generated(USERS, SEED);
            run_with_store(consumer, sink, store, model, config, shutdown).await
        }
        Profiles::Redis(store) => {
            run_with_store(consumer, sink, store, model, config, shutdown).await
        }
    }
}

async fn run_with_store<K: MessageSink, F: FeatureStore>(
    consumer: TracedConsumer,
    sink: K,
    store: F,
    model: Box<dyn Model>,
    config: WorkerConfig,
    shutdown: Shutdown,
) -> anyhow::Result<WorkerStats> {
    let name = MessageSource::client_id(&consumer)
        .unwrap_or("worker")
        .to_owned();
    let mut worker = Worker::new(consumer, sink, store, model, config);
    worker
        .run(&shutdown)
        .await
        .with_context(|| format!("worker {name} stopped"))
}

/// Whether a worker task has ended: before shutdown, only a worker that failed does.
fn a_worker_ended(workers: &[JoinHandle<anyhow::Result<WorkerStats>>]) -> bool {
    workers.iter().any(JoinHandle::is_finished)
}

/// Resolves once a worker task has ended.
async fn worker_ended(workers: &[JoinHandle<anyhow::Result<WorkerStats>>]) {
    while !a_worker_ended(workers) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After a worker ended on its own: stops the others and gives the error it ended with, for
/// `main` to return at once (non-zero exit, the error on stderr).
async fn stopped_worker(
    shutdown: &Shutdown,
    workers: Vec<JoinHandle<anyhow::Result<WorkerStats>>>,
) -> anyhow::Error {
    shutdown.trigger();
    for worker in workers {
        match worker.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return error,
            Err(join) => return anyhow::Error::new(join).context("a worker panicked"),
        }
    }
    anyhow::anyhow!("a worker stopped before the run was over, without an error")
}

/// Forgets replies older than `window`, and sends older than twice that (a dead-lettered
/// request is never answered); returns how many replies were forgotten.
fn forget_older_than(
    window: Duration,
    sent_at: &Mutex<HashMap<String, Instant>>,
    arrivals: &Arrivals,
) -> usize {
    let mut forgotten = 0;
    if let Ok(mut arrivals) = arrivals.lock() {
        let before = arrivals.len();
        arrivals.retain(|_, at| at.elapsed() < window);
        forgotten = before - arrivals.len();
    }
    if let Ok(mut sent) = sent_at.lock() {
        sent.retain(|_, at| at.elapsed() < window * 2);
    }
    forgotten
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what `docker stop` sends).
async fn stop_requested() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let generate = args.bootstrap.is_none() || args.generate;
    // `--messages 0`: a service that keeps sending until it is stopped
    let continuous = generate && args.messages == 0;
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be a number of requests per second, 0 or more");
    }
    if continuous && args.rate == 0.0 {
        bail!("--messages 0 sends until stopped, so it needs a --rate (e.g. --rate 50)");
    }
    let pace = if args.rate > 0.0 {
        Some(
            Duration::try_from_secs_f64(1.0 / args.rate)
                .map_err(|_| anyhow::anyhow!("--rate {} is too low", args.rate))?,
        )
    } else {
        None
    };

    let telemetry = telemetry::init_with(
        TelemetryConfig::from_env()?.with_default_service_name("fraud-scoring"),
    )?;
    // `tracing` events become OTel log records carrying the current trace and span ids: the
    // application's at INFO and above; the HTTP/gRPC stacks' own chatter (h2, hyper, tonic,
    // tower, reqwest log every frame at TRACE) and OpenTelemetry's internal logs stay out, as
    // opentelemetry-appender-tracing advises, or every export would log more to export.
    if let Some(logger_provider) = telemetry.logger_provider() {
        use tracing_subscriber::filter::{LevelFilter, Targets};
        use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
        let application_logs = [
            "h2",
            "hyper",
            "hyper_util",
            "tonic",
            "tower",
            "reqwest",
            "opentelemetry",
            "opentelemetry_sdk",
            "opentelemetry_otlp",
        ]
        .into_iter()
        .fold(
            Targets::new().with_default(LevelFilter::INFO),
            |targets, noisy| targets.with_target(noisy, LevelFilter::OFF),
        );
        let bridge =
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(logger_provider)
                .with_filter(application_logs);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(bridge))
            .context("installing the log bridge")?;
    }

    let kafka = match &args.bootstrap {
        Some(bootstrap) => KafkaFixture::external(bootstrap),
        None => KafkaFixture::start().context("starting the embedded Kafka")?,
    };
    let partitions = i32::try_from(args.workers.max(1) * 2)
        .unwrap_or(i32::MAX)
        .max(4);
    let topic = kafka.create_named_topic(REQUESTS, partitions).await?;
    warn_if_fewer(REQUESTS, topic, partitions);
    let partitions = topic.partitions;
    warn_if_fewer(REPLIES, kafka.create_named_topic(REPLIES, 4).await?, 4);
    kafka.create_named_topic(DEAD_LETTERS, 1).await?;
    // This run's tag, in every request id: replies to an earlier run's requests, still on
    // the replies topic of a broker used before, are not counted as this run's.
    let run: Arc<str> = RandomIdGenerator::default().new_span_id().to_string()[..8].into();
    eprintln!(
        "kafka {}: {REQUESTS} ({partitions} partitions) -> {} worker(s) -> {}",
        kafka.bootstrap_servers(),
        args.workers,
        if args.amqp_url.is_some() {
            "RabbitMQ queue inference-replies"
        } else {
            REPLIES
        },
    );

    // The reply side, started first so nothing is missed.
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::with_capacity(args.messages)));
    let amqp = match &args.amqp_url {
        Some(url) => {
            let connection = tokio::time::timeout(
                Duration::from_secs(10),
                Connection::connect(url, ConnectionProperties::default()),
            )
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot connect to RabbitMQ at {url} (start it with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`)"))?;
            Some(Arc::new(connection))
        }
        None => None,
    };
    let reply_task = match &amqp {
        Some(connection) => {
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    REPLIES.into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let consumer = channel
                .basic_consume(
                    REPLIES.into(),
                    "caller".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let mut consumer = mqtrace::amqp::TracedConsumer::new(consumer)
                .with_server_from_url(args.amqp_url.as_deref().unwrap_or_default());
            let arrivals = Arc::clone(&arrivals);
            let run = Arc::clone(&run);
            tokio::spawn(async move {
                while let Some(delivery) = consumer.next().await {
                    let delivery = delivery?;
                    consumer
                        .process(&delivery, async {
                            record_reply(&arrivals, &delivery.data, &run);
                            Ok::<_, std::convert::Infallible>(())
                        })
                        .await?;
                }
                anyhow::Ok(())
            })
        }
        None => {
            let consumer =
                TracedConsumer::from_config(&kafka.consumer_config(&unique_name("caller")))?;
            consumer.subscribe(&[REPLIES])?;
            let arrivals = Arc::clone(&arrivals);
            let run = Arc::clone(&run);
            tokio::spawn(async move {
                loop {
                    let message = consumer.recv().await?;
                    consumer
                        .process(&message, async {
                            record_reply(&arrivals, message.payload().unwrap_or_default(), &run);
                            Ok::<_, std::convert::Infallible>(())
                        })
                        .await?;
                }
            })
        }
    };

    let profiles = match &args.redis_url {
        Some(url) => {
            let store = RedisFeatureStore::connect(url).await?;
            let loaded = store
                .load(&InMemoryFeatureStore::generated(USERS, SEED))
                .await?;
            eprintln!("features: {loaded} profiles loaded into Redis at {url}");
            Profiles::Redis(store)
        }
        None => Profiles::Memory,
    };

    // The workers: one consumer group, one model each.
    let shutdown = Shutdown::new();
    let config = WorkerConfig::new(REPLIES, DEAD_LETTERS)
        .with_batch(BatchConfig::new(
            args.max_batch,
            Duration::from_millis(args.max_wait_ms),
        ))
        .with_per_message_spans(args.per_message_spans);
    let mut workers = Vec::with_capacity(args.workers);
    let mut device_name = String::new();
    for n in 0..args.workers.max(1) {
        let mut consumer_config = kafka.consumer_config("fraud-scorers");
        consumer_config.set("client.id", format!("fraud-scorer-{n}"));
        let consumer = TracedConsumer::from_config(&consumer_config)?;
        consumer.subscribe(&[REQUESTS])?;
        let model = build_model(args.device, &args.hidden)?;
        device_name = format!("{} ({})", model.device().kind.as_str(), model.device().name);
        let (config, shutdown, profiles) = (config.clone(), shutdown.clone(), profiles.clone());
        workers.push(match &amqp {
            Some(connection) => {
                let publisher = mqtrace::amqp::TracedPublisher::open(Arc::clone(connection))
                    .await?
                    .with_server_from_url(args.amqp_url.as_deref().unwrap_or_default());
                tokio::spawn(run_worker(
                    consumer, publisher, profiles, model, config, shutdown,
                ))
            }
            None => {
                let producer = TracedProducer::from_config(&kafka.producer_config())?;
                tokio::spawn(run_worker(
                    consumer, producer, profiles, model, config, shutdown,
                ))
            }
        });
    }
    eprintln!(
        "model: fraud-mlp {INPUT_WIDTH}->{:?}->1 on {device_name}",
        args.hidden
    );

    // The load generator: each request in its own trace, as a caller service would send it.
    let bad_every = if args.bad_ratio > 0.0 {
        (1.0 / args.bad_ratio).round().max(1.0) as usize
    } else {
        0
    };
    let expected_bad = if bad_every > 0 && generate {
        args.messages.div_ceil(bad_every)
    } else {
        0
    };
    let expected_replies = if generate {
        args.messages - expected_bad
    } else {
        0
    };
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(args.messages)));
    if generate {
        // Warm-up: one request answered means both consumer groups have joined (a few
        // seconds on any Kafka), so the timed run measures the service, not the join. It is
        // sent in an unsampled trace, so it leaves no journey of its own behind.
        let producer = TracedProducer::from_config(&kafka.producer_config())?;
        let body = request_body(&run, usize::MAX / 2, false).replace(
            &format!("\"request_id\":\"{}\"", request_id(&run, usize::MAX / 2)),
            &format!("\"request_id\":\"warmup-{run}\""),
        );
        let ids = RandomIdGenerator::default();
        let unsampled = Context::new().with_remote_span_context(SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        ));
        producer
            .send_with_context(
                FutureRecord::to(REQUESTS).payload(&body).key("warmup"),
                Duration::from_secs(30),
                &unsampled,
            )
            .await?;
        let joined = Instant::now();
        while arrivals.lock().map(|a| a.is_empty()).unwrap_or(true) {
            if a_worker_ended(&workers) {
                return Err(stopped_worker(&shutdown, workers).await);
            }
            if joined.elapsed() > Duration::from_secs(60) {
                bail!("the warm-up request was not answered within 60 s: is Kafka reachable?");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "warm-up answered after {:.1} s (consumer groups joined)",
            joined.elapsed().as_secs_f64()
        );
        if let Ok(mut arrivals) = arrivals.lock() {
            arrivals.clear();
        }
    }
    let started = Instant::now();
    let mut generator = None;
    if generate {
        let producer = Arc::new(TracedProducer::from_config(&kafka.producer_config())?);
        let sent_at = Arc::clone(&sent_at);
        let run = Arc::clone(&run);
        let messages = if continuous {
            usize::MAX
        } else {
            args.messages
        };
        generator = Some(tokio::spawn(async move {
            let tracer = Arc::new(opentelemetry::global::tracer("load-generator"));
            // request numbers, one per `pace` tick when --rate is set
            let numbers = futures::stream::unfold(
                (0_usize, pace.map(tokio::time::interval)),
                move |(i, mut ticks)| async move {
                    if i >= messages {
                        return None;
                    }
                    if let Some(ticks) = ticks.as_mut() {
                        ticks.tick().await;
                    }
                    Some((i, (i + 1, ticks)))
                },
            );
            numbers
                .map(|i| {
                    let producer = Arc::clone(&producer);
                    let sent_at = Arc::clone(&sent_at);
                    let tracer = Arc::clone(&tracer);
                    let run = Arc::clone(&run);
                    async move {
                        let span = tracer
                            .span_builder("inference.request")
                            .with_kind(SpanKind::Client)
                            .with_attributes([KeyValue::new("app.request.kind", "fraud_score")])
                            .start(tracer.as_ref());
                        let cx = Context::current_with_span(span);
                        let bad = bad_every > 0 && i % bad_every == 0;
                        let body = request_body(&run, i, bad);
                        let key = format!("user-{}", (i * 31) % USERS);
                        if let Ok(mut sent) = sent_at.lock() {
                            sent.insert(request_id(&run, i), Instant::now());
                        }
                        let result = producer
                            .send_with_context(
                                FutureRecord::to(REQUESTS).payload(&body).key(&key),
                                Duration::from_secs(30),
                                &cx,
                            )
                            .await;
                        cx.span().end();
                        result
                    }
                })
                .buffer_unordered(512)
                .for_each(|result| async move {
                    if let Err(error) = result {
                        eprintln!("request not delivered: {error}");
                    }
                })
                .await;
        }));
    }

    // Progress until every reply arrived (or, running continuously, until stopped).
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let tty = std::io::stderr().is_terminal();
    let line_every = Duration::from_secs(if continuous { 10 } else { 2 });
    let mut last_line = Instant::now();
    let mut stop = std::pin::pin!(stop_requested());
    let mut forgotten = 0;
    loop {
        if a_worker_ended(&workers) {
            if tty {
                eprintln!();
            }
            return Err(stopped_worker(&shutdown, workers).await);
        }
        if continuous {
            forgotten += forget_older_than(LATENCY_WINDOW, &sent_at, &arrivals);
        }
        let answered = arrivals.lock().map(|a| a.len()).unwrap_or_default() + forgotten;
        let done = generate && !continuous && answered >= expected_replies;
        if tty || last_line.elapsed() >= line_every || done {
            let per_second = answered as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let width = 30;
            let filled = if expected_replies == 0 {
                0
            } else {
                answered * width / expected_replies.max(1)
            };
            let line = if continuous {
                format!("{answered} replies  {per_second:.0}/s  (Ctrl-C or SIGTERM stops)")
            } else {
                format!(
                    "[{}{}] {answered}/{expected_replies} replies  {per_second:.0}/s",
                    "=".repeat(filled.min(width)),
                    " ".repeat(width - filled.min(width)),
                )
            };
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            last_line = Instant::now();
        }
        if done {
            break;
        }
        if !generate {
            tokio::select! {
                result = stop.as_mut() => {
                    result?;
                    break;
                }
                () = worker_ended(&workers) => continue,
            }
        }
        if continuous {
            tokio::select! {
                result = stop.as_mut() => {
                    result?;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        if Instant::now() > deadline {
            bail!(
                "timed out: {answered} of {expected_replies} replies after {} s",
                args.timeout_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if tty {
        eprintln!();
    }
    let elapsed = started.elapsed();
    if let Some(generator) = generator {
        generator.abort();
    }

    shutdown.trigger();
    let mut batches = 0_u64;
    let (mut messages, mut replies, mut dead_lettered, mut model_s, mut busy_s) =
        (0, 0, 0, 0.0, 0.0);
    let (mut truncated, mut skipped) = (0, 0);
    let warmup = u64::from(generate);
    for worker in workers {
        let stats = worker.await.context("worker panicked")??;
        batches += stats.batches;
        messages += stats.messages;
        replies += stats.replies;
        dead_lettered += stats.dead_lettered;
        truncated += stats.dead_letters_truncated;
        skipped += stats.dead_letters_skipped;
        model_s += stats.model_seconds;
        busy_s += stats.busy_seconds;
    }
    reply_task.abort();
    messages = messages.saturating_sub(warmup);
    batches = batches.saturating_sub(warmup);
    replies = replies.saturating_sub(warmup);

    let mut latencies: Vec<f64> = {
        let sent = sent_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let arrived = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        arrived
            .iter()
            .filter_map(|(id, at)| {
                sent.get(id)
                    .map(|s| at.saturating_duration_since(*s).as_secs_f64() * 1e3)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let answered = latencies.len();
    let throughput = (answered + forgotten) as f64 / elapsed.as_secs_f64().max(1e-9);
    let (p50, p95, p99) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
    );
    let model_share = if busy_s > 0.0 { model_s / busy_s } else { 0.0 };
    // Everything is answered: export what is left and stop the pipelines (bounded by
    // OTEL_BSP_EXPORT_TIMEOUT whatever the collector does), then tell what was lost.
    let destination = telemetry.destination().clone();
    let telemetry_stats = telemetry.shutdown();
    let telemetry_line = match &destination {
        Destination::Files { dir } => {
            format!("{} (OTLP-JSON lines)", dir.join("traces.jsonl").display())
        }
        Destination::Otlp { endpoint, .. } => format!("OTLP {endpoint}"),
        _ => "disabled (OTEL_SDK_DISABLED)".to_owned(),
    };

    println!();
    println!(
        "  requests            {:>10}",
        if generate && !continuous {
            args.messages
        } else {
            messages as usize
        }
    );
    println!("  replies             {:>10}", replies);
    println!("  batches             {:>10}", batches);
    println!(
        "  mean batch size     {:>10.1}",
        if batches > 0 {
            messages as f64 / batches as f64
        } else {
            0.0
        }
    );
    // A worker-only process sends no requests, so it has no end-to-end figures: it tells
    // what it handled, and how fast while it had work.
    let worker_only = WorkerOnly::new(generate, messages, batches, busy_s, elapsed);
    match &worker_only {
        Some(w) => w.print(),
        None => {
            println!("  throughput          {:>10.0} req/s", throughput);
            let window = if continuous {
                format!(" (last {} s)", LATENCY_WINDOW.as_secs())
            } else {
                String::new()
            };
            println!("  latency p50         {:>10.1} ms{window}", p50);
            println!("  latency p95         {:>10.1} ms{window}", p95);
            println!("  latency p99         {:>10.1} ms{window}", p99);
        }
    }
    println!("  model share of work {:>10.1} %", model_share * 100.0);
    println!("  dead-lettered       {:>10}", dead_lettered);
    if truncated + skipped > 0 {
        println!(
            "    of which truncated{truncated:>10}   (too large for the dead-letter topic: headers only)"
        );
        println!("  skipped, no letter  {skipped:>10}   (see the error log for where they are)");
    }
    println!("  device              {device_name}");
    println!("  telemetry           {telemetry_line}");
    if destination != Destination::Disabled {
        let spans = &telemetry_stats.spans;
        println!("  spans exported      {:>10}", spans.exported);
        println!(
            "  spans dropped       {:>10}{}",
            spans.dropped(),
            if spans.dropped() > 0 {
                format!(
                    " (queue full {}, export failed {}, unsent at shutdown {})",
                    spans.dropped_queue_full,
                    spans.dropped_export_failed,
                    spans.dropped_at_shutdown
                )
            } else {
                String::new()
            }
        );
        if telemetry_stats.logs.dropped() > 0 {
            println!(
                "  log records dropped {:>10}",
                telemetry_stats.logs.dropped()
            );
        }
        if let Some(took) = telemetry_stats.shutdown_took {
            println!("  telemetry shutdown  {:>10.2} s", took.as_secs_f64());
        }
    }

    if let Some(path) = &args.summary_json {
        let mut summary = serde_json::json!({
            "requests": if generate && !continuous { args.messages as u64 } else { messages },
            "replies": replies,
            "batches": batches,
            "dead_lettered": dead_lettered,
            "throughput_per_s": throughput,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "mean_batch_size": if batches > 0 { messages as f64 / batches as f64 } else { 0.0 },
            "model_share": model_share,
            "device": device_name,
            "telemetry": telemetry_stats.to_json(),
        });
        summary["dead_letters_truncated"] = truncated.into();
        summary["dead_letters_skipped"] = skipped.into();
        if let (Some(w), Some(fields)) = (&worker_only, summary.as_object_mut()) {
            fields.remove("throughput_per_s");
            fields.remove("latency_ms");
            fields.insert("worker".into(), w.to_json());
        }
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("  summary             {}", path.display());
    }
    if let Destination::Files { dir } = &destination {
        // what `mqtrace journeys` makes of this run: stage table, slowest requests, a page
        let report = dir.join("journeys.html");
        println!("  journeys report     {}", report.display());
        println!(
            "    cargo run -q --release -p mqtrace-cli -- journeys {} --html {} && xdg-open {}",
            dir.display(),
            report.display(),
            report.display()
        );
    }
    if let Some(connection) = &amqp {
        let channel = connection.create_channel().await?;
        let _ = channel
            .queue_delete(REPLIES.into(), QueueDeleteOptions::default())
            .await;
    }
    if let Some(warning) = telemetry_stats.loss_warning() {
        eprintln!("{warning}");
    }
    if generate && (answered < expected_replies || replies < expected_replies as u64) {
        bail!("only {answered} of {expected_replies} requests were answered");
    }
    Ok(())
}
