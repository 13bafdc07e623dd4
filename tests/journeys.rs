//! `mqtrace journeys` on the traces of a real run: requests through the embedded Kafka, a
//! batch worker and replies consumed by the caller, exported as OTLP-JSON lines by mqtrace's
//! file exporter, then rebuilt into journeys. Also a run with deliberately broken chains (a
//! consumer that drops the trace headers, a batch span that does not link its messages).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mqtrace::core::Instrumentation;
use mqtrace::core::batch::{InboundMessage, MessageSource};
use mqtrace::core::propagation::{ExtractOutcome, Extracted};
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::InMemoryFeatureStore;
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::{BatchConfig, INPUT_WIDTH, Shutdown, Worker, WorkerConfig};
use mqtrace::kafka::rdkafka::consumer::Consumer;
use mqtrace::kafka::rdkafka::message::Message;
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{OwnedTracedMessage, TracedConsumer, TracedProducer};
use mqtrace::telemetry::file::FileSpanExporter;
use mqtrace_cli::journeys::{BrokenReason, Outcome, Report, SpanSet, Step, rebuild};
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracerProvider;

const TIMEOUT: Duration = Duration::from_secs(60);

/// What a tampering consumer does to a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tamper {
    Nothing,
    /// Drops the trace headers (as a consumer that rebuilds messages without them would).
    DropHeaders,
    /// Keeps the context but gives the batch span no link to the message.
    NoLink,
}

fn request_number(payload: &[u8]) -> usize {
    let request: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
    request["request_id"].as_str().expect("request_id")[2..]
        .parse()
        .expect("number")
}

/// A Kafka message after a [`Tamper`].
struct Tampered {
    inner: OwnedTracedMessage,
    extracted: Extracted,
    linked: bool,
}

impl InboundMessage for Tampered {
    fn extracted(&self) -> &Extracted {
        &self.extracted
    }
    fn payload(&self) -> &[u8] {
        self.inner.payload()
    }
    fn key(&self) -> Option<&[u8]> {
        self.inner.key()
    }
    fn destination(&self) -> &str {
        self.inner.destination()
    }
    fn enqueued_at(&self) -> Option<std::time::SystemTime> {
        self.inner.enqueued_at()
    }
    fn message_id(&self) -> Option<&str> {
        self.inner.message_id()
    }
    fn identity(&self) -> Vec<KeyValue> {
        self.inner.identity()
    }
    fn link(&self) -> Option<Link> {
        // what the worker sees: the (possibly stripped) context, unless links are off
        let span_context = self
            .extracted
            .remote_span_context()
            .filter(|_| self.linked)?;
        Some(Link::new(span_context, self.identity(), 0))
    }
}

/// The traced Kafka consumer with a [`Tamper`] chosen per request number.
struct TamperingSource {
    inner: TracedConsumer,
    tamper: fn(usize) -> Tamper,
}

impl MessageSource for TamperingSource {
    type Message = Tampered;
    type Error = mqtrace::kafka::Error;

    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn next_message(&mut self) -> Option<Result<Tampered, Self::Error>> {
        let message = match self.inner.next_message().await? {
            Ok(message) => message,
            Err(error) => return Some(Err(error)),
        };
        let tamper = (self.tamper)(request_number(message.payload()));
        let extracted = match tamper {
            Tamper::DropHeaders => Extracted {
                context: Context::new(),
                outcome: ExtractOutcome::Missing,
            },
            _ => message.extracted().clone(),
        };
        Some(Ok(Tampered {
            inner: message,
            extracted,
            linked: tamper != Tamper::NoLink,
        }))
    }

    /// The partitions are assigned (no group) and read once: nothing to commit.
    async fn settle(&mut self, _: &[Tampered], _: &Context) -> Result<(), Self::Error> {
        Ok(())
    }
}

struct Run {
    dir: PathBuf,
    /// Request number → its trace.
    traces: HashMap<usize, TraceId>,
}

fn assigned(
    kafka: &KafkaFixture,
    instrumentation: &Instrumentation,
    topic: &str,
    partitions: i32,
) -> TracedConsumer {
    let consumer = TracedConsumer::from_config(&kafka.consumer_config(&unique_name("g")))
        .expect("consumer")
        .with_instrumentation(instrumentation.clone());
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.inner().assign(&assignment).expect("assign");
    consumer
}

/// Sends `count` requests, each in its own trace, through a worker whose source tampers as
/// `tamper` says; the caller consumes every reply in a `process` span. Traces go to
/// `traces.jsonl` in a fresh directory.
async fn run(name: &str, count: usize, tamper: fn(usize) -> Tamper) -> Run {
    let dir = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(FileSpanExporter::create(dir.join("traces.jsonl")).expect("file"))
        .build();
    let instrumentation = Instrumentation::builder()
        .with_tracer_provider(&provider)
        .build();
    let kafka = KafkaFixture::start().expect("Kafka fixture");
    let requests = kafka.create_topic("requests", 2).await.expect("topic");
    let replies = kafka.create_topic("replies", 1).await.expect("topic");
    let dead_letters = kafka.create_topic("dlq", 1).await.expect("topic");

    let producer = TracedProducer::from_config(&kafka.producer_config())
        .expect("producer")
        .with_instrumentation(instrumentation.clone());
    let tracer = provider.tracer("caller");
    let mut traces = HashMap::new();
    for i in 0..count {
        let body = format!(
            r#"{{"request_id":"r-{i}","user_id":"user-{}","amount":{}.5,"merchant_category":"travel","country":"DE","hour":{},"card_present":true}}"#,
            i % 100,
            (i * 37) % 9000,
            i % 24
        );
        let cx = Context::current_with_span(
            tracer
                .span_builder("inference.request")
                .with_kind(SpanKind::Client)
                .start(&tracer),
        );
        producer
            .send_with_context(
                FutureRecord::<str, str>::to(&requests)
                    .payload(&body)
                    .key(&format!("k{i}")),
                TIMEOUT,
                &cx,
            )
            .await
            .expect("request delivered");
        traces.insert(i, cx.span().span_context().trace_id());
        cx.span().end();
    }

    let mut worker = Worker::with_instrumentation(
        TamperingSource {
            inner: assigned(&kafka, &instrumentation, &requests, 2),
            tamper,
        },
        producer,
        InMemoryFeatureStore::generated(100, 7),
        CpuModel::new("fraud-mlp", "test", Mlp::seeded(INPUT_WIDTH, &[32, 16], 7)),
        WorkerConfig::new(&replies, &dead_letters)
            .with_batch(BatchConfig::new(64, Duration::from_millis(30))),
        instrumentation.clone(),
    );
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { worker.run(&stop).await });

    // The caller processes every reply in a CONSUMER span (the journey's last stage).
    let caller = assigned(&kafka, &instrumentation, &replies, 1);
    let mut answered = HashSet::new();
    while answered.len() < count {
        let message = tokio::time::timeout(TIMEOUT, caller.recv())
            .await
            .expect("reply in time")
            .expect("reply");
        caller
            .process(&message, async { Ok::<_, std::io::Error>(()) })
            .await
            .expect("processed");
        let reply: serde_json::Value =
            serde_json::from_slice(message.payload().expect("payload")).expect("JSON");
        answered.insert(reply["request_id"].as_str().expect("id").to_owned());
    }
    shutdown.trigger();
    tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("worker stops")
        .expect("worker task")
        .expect("worker ran");
    provider.shutdown().expect("traces flushed");
    Run { dir, traces }
}

fn read(dir: &Path) -> SpanSet {
    let mut spans = SpanSet::new();
    spans.read_path(dir).expect("traces readable");
    assert!(spans.errors.is_empty(), "{:?}", spans.errors);
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_real_run_is_rebuilt_as_a_complete_journey() {
    let run = run("journeys", 300, |_| Tamper::Nothing).await;
    let spans = read(&run.dir);
    let journeys = rebuild(&spans);
    assert_eq!(journeys.journeys.len(), 300);
    let request_traces: HashSet<TraceId> = run.traces.values().copied().collect();
    let by_id: HashMap<_, _> = spans.spans.iter().map(|s| (s.id, s)).collect();
    for journey in &journeys.journeys {
        assert_eq!(journey.outcome, Outcome::Complete, "{journey:?}");
        assert!(request_traces.contains(&TraceId::from(journey.request.trace_id)));
        // The stages add up to the end-to-end latency, measured here from the spans
        // themselves: request send start → the caller's reply process span end.
        let sum: f64 = journey.steps.iter().map(Step::ms).sum();
        let send = by_id[&journey.request];
        let caller_process = journey.steps.last().and_then(|s| s.span).expect("delivery");
        let end_to_end = (by_id[&caller_process].end_ns - send.start_ns) as f64 / 1e6;
        assert!(
            (sum - end_to_end).abs() <= end_to_end * 0.01,
            "stages {sum} ms vs end to end {end_to_end} ms"
        );
        // The batch was found from the request, and it links back to it (directly or on a
        // batch.links child).
        let batch = journey.batch.expect("batch found");
        let links_back = spans.spans.iter().any(|s| {
            (s.id == batch || (s.parent() == Some(batch) && &*s.name == "batch.links"))
                && s.links.contains(&journey.request)
        });
        assert!(links_back, "batch {batch} links the request");
        assert!(journey.stage_ms(mqtrace_cli::journeys::Stage::ModelExecute) > 0.0);
        assert!(!journey.phases.is_empty(), "model phases found");
    }
    let report = Report::new(&journeys, &spans.errors, 5);
    let json = report.to_json();
    assert_eq!(json["requests"], 300);
    assert_eq!(json["complete"], 300);
    assert_eq!(json["broken"], 0);
    assert_eq!(json["slowest"].as_array().map(Vec::len), Some(5));
    for stage in [
        "produce",
        "queue_wait",
        "batch_wait",
        "feature_fetch",
        "model_execute",
        "reply_send",
        "reply_delivery",
        "untraced",
    ] {
        assert!(json["stages"][stage]["p99_ms"].is_number(), "{stage}");
    }
    let html = mqtrace_cli::journeys::render_html(&report, "test");
    assert!(html.contains("<svg") && html.ends_with("</html>\n"));
    let _ = std::fs::remove_dir_all(&run.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chains_are_reported_with_their_reason() {
    let tamper = |n: usize| match n % 10 {
        3 => Tamper::DropHeaders,
        7 => Tamper::NoLink,
        _ => Tamper::Nothing,
    };
    let run = run("journeys-broken", 60, tamper).await;
    let spans = read(&run.dir);
    let journeys = rebuild(&spans);
    assert_eq!(journeys.journeys.len(), 60);
    let by_trace: HashMap<TraceId, &Outcome> = journeys
        .journeys
        .iter()
        .map(|j| (TraceId::from(j.request.trace_id), &j.outcome))
        .collect();
    for (n, trace) in &run.traces {
        let expected = match tamper(*n) {
            Tamper::DropHeaders => Outcome::Broken(BrokenReason::ContextLost),
            Tamper::NoLink => Outcome::Broken(BrokenReason::MissingLink),
            Tamper::Nothing => Outcome::Complete,
        };
        assert_eq!(by_trace[trace], &expected, "request r-{n}");
    }
    let report = Report::new(&journeys, &spans.errors, 5);
    assert_eq!(report.to_json()["broken"], 12);
    let text = report.to_text();
    assert!(
        text.contains("context_lost") && text.contains("missing_link"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&run.dir);
}
