//! The OTLP end-to-end scenario, run once per protocol (tests/otlp_grpc.rs,
//! tests/otlp_http.rs: one test per file, because `telemetry::init_with` installs global
//! providers and the `tracing` log bridge is the global subscriber, as in the main job).
//!
//! Telemetry is set up exactly as a user sets it up, pointed at the testkit's real OTLP
//! receiver. The scenario: a Kafka round trip whose handler logs inside its `process` span, a
//! send that fails, and the batch-inference worker answering 20 requests and dead-lettering one.
//! Then it asserts what arrived the way a collector sees it: resource attributes, the span
//! graph, error status, metrics by name/unit/attributes, logs carrying trace and span ids —
//! and that every metric the Grafana dashboard queries is one of the metrics received.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use mqtrace::core::propagation::ExtractOutcome;
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::InMemoryFeatureStore;
use mqtrace::inference::metrics::WorkerMetrics;
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::model::{DeviceInfo, DeviceKind};
use mqtrace::inference::{BatchConfig, INPUT_WIDTH, Shutdown, Worker, WorkerConfig};
use mqtrace::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use mqtrace::kafka::rdkafka::message::{Header, OwnedHeaders};
use mqtrace::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace::telemetry::{self, Destination, OtlpProtocol, TelemetryConfig};
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use mqtrace_testkit::otlp::{OtlpReceiver, Protocol, ReceivedMetric, ReceivedSpan};
use mqtrace_testkit::prometheus::{dashboard_metric_names, prometheus_series};
use opentelemetry::Context;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tracing_subscriber::layer::SubscriberExt;

const TIMEOUT: Duration = Duration::from_secs(60);
const SERVICE: &str = "otlp-e2e";
const VERSION: &str = "9.9.9-e2e";
const ENVIRONMENT: &str = "e2e";
const REQUESTS: usize = 20;

pub(crate) async fn run(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");
    let (endpoint, expected_protocol) = match protocol {
        OtlpProtocol::Grpc => (receiver.grpc_endpoint(), Protocol::Grpc),
        _ => (receiver.http_endpoint(), Protocol::HttpProtobuf),
    };
    let guard = telemetry::init_with(
        TelemetryConfig::default()
            .with_default_service_name(SERVICE)
            .with_service_version(VERSION)
            .with_environment(ENVIRONMENT)
            .with_destination(Destination::Otlp { endpoint, protocol }),
    )
    .expect("telemetry");
    let logger_provider = guard.logger_provider().expect("logs enabled");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(logger_provider),
    ))
    .expect("the only subscriber in this test binary");

    let kafka = KafkaFixture::start().expect("Kafka");
    let round_trip = kafka_round_trip(&kafka).await;
    let failed_topic = failed_send(&kafka).await;
    let worker_run = batch_worker(&kafka).await;
    broken_context(&kafka).await;
    record_instruments_the_scenario_does_not_reach();

    guard.flush();
    let arrived = receiver
        .wait_until(TIMEOUT, |r| {
            let spans = r.spans();
            spans
                .iter()
                .any(|s| s.name() == format!("process {}", worker_run.requests))
                && spans
                    .iter()
                    .any(|s| s.name() == format!("send {failed_topic}"))
                && r.logs().iter().any(|l| l.body() == "handling request")
                && r.metrics()
                    .iter()
                    .any(|m| m.name() == "mqtrace.worker.batch.size")
        })
        .await;
    assert!(arrived, "telemetry arrived over {protocol:?}");
    let spans = receiver.spans();

    // Resource and transport, the way a collector sees them.
    for span in &spans {
        assert_eq!(span.origin.protocol, expected_protocol);
        assert_eq!(
            span.origin.resource_attr("service.name").as_deref(),
            Some(SERVICE)
        );
        assert_eq!(
            span.origin.resource_attr("service.version").as_deref(),
            Some(VERSION)
        );
        assert_eq!(
            span.origin
                .resource_attr("deployment.environment.name")
                .as_deref(),
            Some(ENVIRONMENT)
        );
    }

    // The round trip: caller -> send (PRODUCER) -> process (CONSUMER, child and link).
    let by_id: HashMap<String, &ReceivedSpan> = spans.iter().map(|s| (s.span_id(), s)).collect();
    let sends = all(&spans, &format!("send {}", round_trip.topic));
    assert_eq!(sends.len(), 2);
    let send = *sends
        .iter()
        .find(|s| s.trace_id() == round_trip.trace_id)
        .expect("the caller's send span");
    let processes = all(&spans, &format!("process {}", round_trip.topic));
    assert_eq!(processes.len(), 2, "one good and one failing handler");
    let process = *processes
        .iter()
        .find(|s| s.attr_i64("messaging.kafka.offset") == Some(0))
        .expect("the first message's process span");
    let failed_process = *processes
        .iter()
        .find(|s| s.attr_i64("messaging.kafka.offset") == Some(1))
        .expect("the second message's process span");
    assert_eq!(send.kind(), SpanKind::Producer);
    assert_eq!(process.kind(), SpanKind::Consumer);
    assert_eq!(send.origin.scope_name(), "mqtrace");
    assert_eq!(send.trace_id(), round_trip.trace_id);
    assert_eq!(
        send.parent_span_id().as_deref(),
        Some(round_trip.caller_span_id.as_str())
    );
    assert!(process.is_child_of(send), "process is a child of send");
    assert!(process.links_to(send), "process links to send");
    assert_eq!(
        send.attr_string("messaging.system").as_deref(),
        Some("kafka")
    );
    assert_eq!(
        process.attr_string("messaging.destination.name").as_deref(),
        Some(round_trip.topic.as_str())
    );
    assert_eq!(process.attr_i64("messaging.kafka.offset"), Some(0));

    // A log emitted inside the process span carries its trace and span ids.
    let logs = receiver.logs();
    let log = logs
        .iter()
        .find(|l| l.body() == "handling request")
        .expect("the handler's log record");
    assert_eq!(log.trace_id(), Some(process.trace_id()));
    assert_eq!(log.span_id(), Some(process.span_id()));
    assert_eq!(log.attr_string("request.id").as_deref(), Some("r-42"));
    assert_eq!(
        log.origin.resource_attr("service.name").as_deref(),
        Some(SERVICE)
    );

    // A failed send is an ERROR span with error.type: what the Collector's tail-sampling
    // `status_code: ERROR` policy keys on.
    let failed = one(&spans, &format!("send {failed_topic}"));
    assert_eq!(failed.status_code(), StatusCode::Error);
    assert!(
        failed.attr_string("error.type").is_some(),
        "error.type on the failed send"
    );
    assert_eq!(
        send.status_code(),
        StatusCode::Unset,
        "a good send is not an error"
    );
    assert_eq!(process.status_code(), StatusCode::Unset);
    assert_eq!(
        failed_process.status_code(),
        StatusCode::Error,
        "a failed handler"
    );
    assert!(failed_process.attr_string("error.type").is_some());
    assert_eq!(
        failed_process
            .span
            .status
            .as_ref()
            .map(|s| s.message.as_str()),
        Some("model rejected the input")
    );

    // The batch worker: one batch span links every request's send span; model.execute is its
    // child; each reply's send span continues its request's trace and links to the batch.
    let batches = all(&spans, &format!("process {}", worker_run.requests));
    let request_sends = all(&spans, &format!("send {}", worker_run.requests));
    assert_eq!(
        request_sends.len(),
        REQUESTS + 1,
        "20 requests and a malformed one"
    );
    for request in &request_sends {
        assert!(
            batches.iter().any(|b| b.links_to(request)),
            "request {} linked from a batch",
            request.span_id()
        );
    }
    let linked: usize = batches.iter().map(|b| b.span.links.len()).sum();
    assert_eq!(linked, REQUESTS + 1, "one link per message, no more");
    for batch in &batches {
        assert_eq!(batch.kind(), SpanKind::Consumer);
        assert_eq!(batch.parent_span_id(), None, "batch spans are roots");
        let model = spans
            .iter()
            .find(|s| s.name() == "model.execute" && s.is_child_of(batch))
            .expect("model.execute under each batch");
        assert_eq!(
            model.attr_string("ml.model.name").as_deref(),
            Some("fraud-mlp")
        );
    }
    let replies = all(&spans, &format!("send {}", worker_run.replies));
    assert_eq!(replies.len(), REQUESTS);
    for reply in &replies {
        let parent = reply.parent_span_id().expect("reply has a parent");
        let request = by_id.get(&parent).expect("the reply's parent was exported");
        assert_eq!(request.name(), format!("send {}", worker_run.requests));
        assert!(
            batches.iter().any(|b| reply.links_to(b)),
            "reply links to its batch"
        );
    }
    let dead_letter = one(&spans, &format!("send {}", worker_run.dead_letters));
    assert!(
        batches.iter().any(|b| dead_letter.is_child_of(b)),
        "the dead letter is sent under its batch"
    );

    // Metrics by name, unit and attributes.
    let metrics = receiver.metrics();
    let metric = |name: &str| -> Vec<&ReceivedMetric> {
        metrics.iter().filter(|m| m.name() == name).collect()
    };
    let expect = |name: &str, unit: &str, attributes: &[(&str, &str)]| {
        let found = metric(name);
        assert!(
            !found.is_empty(),
            "metric {name} received; got {:?}",
            names(&metrics)
        );
        for m in &found {
            assert_eq!(m.unit(), unit, "unit of {name}");
            assert_eq!(
                m.origin.resource_attr("service.name").as_deref(),
                Some(SERVICE)
            );
        }
        let points: Vec<BTreeMap<String, String>> =
            found.iter().flat_map(|m| m.point_attributes()).collect();
        assert!(
            points.iter().any(|p| attributes
                .iter()
                .all(|(k, v)| p.get(*k).map(String::as_str) == Some(*v))),
            "{name} has a point with {attributes:?}; points: {points:?}"
        );
    };
    expect(
        "messaging.client.sent.messages",
        "{message}",
        &[
            ("messaging.system", "kafka"),
            ("messaging.destination.name", &round_trip.topic),
        ],
    );
    expect(
        "messaging.client.consumed.messages",
        "{message}",
        &[("messaging.system", "kafka")],
    );
    expect(
        "messaging.process.duration",
        "s",
        &[("messaging.destination.name", &round_trip.topic)],
    );
    expect(
        "messaging.client.operation.duration",
        "s",
        &[("messaging.operation.name", "send")],
    );
    expect(
        "mqtrace.worker.batch.size",
        "{message}",
        &[("messaging.destination.name", &worker_run.requests)],
    );
    expect("mqtrace.worker.queue.wait", "s", &[]);
    expect(
        "mqtrace.inference.duration",
        "s",
        &[("ml.model.name", "fraud-mlp")],
    );
    expect("mqtrace.worker.dead_lettered", "{message}", &[]);
    expect("hw.gpu.memory.usage", "By", &[("hw.id", "gpu0")]);
    expect(
        "mqtrace.propagation.invalid",
        "{message}",
        &[
            ("messaging.system", "kafka"),
            ("mqtrace.propagation.invalid_reason", "rejected"),
        ],
    );
    expect(
        "mqtrace.inference.feature.missing",
        "{value}",
        &[("ml.feature.name", "user_profile")],
    );
    expect(
        "mqtrace.inference.schema.mismatch",
        "{value}",
        &[("ml.feature.name", "hour")],
    );
    expect(
        "mqtrace.telemetry.spans.dropped",
        "{span}",
        &[("reason", "queue_full")],
    );
    let batch_sizes: f64 = metric("mqtrace.worker.batch.size")
        .iter()
        .map(|m| m.total())
        .fold(0.0, f64::max);
    assert!(batch_sizes >= 1.0, "batch sizes recorded");

    check_dashboard(&metrics);

    drop(guard);
}

/// Every metric the Grafana dashboard queries is one this run received, after the
/// Collector's Prometheus translation. A renamed metric fails here.
fn check_dashboard(metrics: &[ReceivedMetric]) {
    let mut exposed = BTreeSet::new();
    for m in metrics {
        if let Some(kind) = m.kind() {
            exposed.extend(prometheus_series(m.name(), m.unit(), kind));
        }
    }
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/integration/grafana/dashboards/mqtrace.json"
    ))
    .expect("dashboard JSON");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let queried = dashboard_metric_names(&dashboard);
    assert!(!queried.is_empty(), "the dashboard queries metrics");
    let unknown: Vec<_> = queried
        .iter()
        .filter(|name| !exposed.contains(*name) && !name.starts_with("traces_span_metrics_"))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries {unknown:?}, which the code did not export; exported: {exposed:?}"
    );
}

fn one<'s>(spans: &'s [ReceivedSpan], name: &str) -> &'s ReceivedSpan {
    let found = all(spans, name);
    assert_eq!(
        found.len(),
        1,
        "exactly one '{name}' span; names: {:?}",
        span_names(spans)
    );
    found[0]
}

fn all<'s>(spans: &'s [ReceivedSpan], name: &str) -> Vec<&'s ReceivedSpan> {
    spans.iter().filter(|s| s.name() == name).collect()
}

fn span_names(spans: &[ReceivedSpan]) -> BTreeSet<&str> {
    spans.iter().map(ReceivedSpan::name).collect()
}

fn names(metrics: &[ReceivedMetric]) -> BTreeSet<&str> {
    metrics.iter().map(ReceivedMetric::name).collect()
}

struct RoundTrip {
    topic: String,
    trace_id: String,
    caller_span_id: String,
}

/// One message through a traced producer and consumer; the handler logs with `tracing`.
async fn kafka_round_trip(kafka: &KafkaFixture) -> RoundTrip {
    let topic = kafka
        .create_topic("otlp-round-trip", 1)
        .await
        .expect("topic");
    let producer = TracedProducer::from_config(&kafka.producer_config()).expect("producer");
    let consumer =
        TracedConsumer::from_config(&kafka.consumer_config(&unique_name("g"))).expect("consumer");
    assign(consumer.inner(), &topic);

    let tracer = opentelemetry::global::tracer("e2e-caller");
    let caller = Context::current_with_span(tracer.start("checkout"));
    producer
        .send_with_context(
            FutureRecord::<str, str>::to(&topic).payload("{}"),
            TIMEOUT,
            &caller,
        )
        .await
        .expect("delivered");
    let trace_id = caller.span().span_context().trace_id().to_string();
    let caller_span_id = caller.span().span_context().span_id().to_string();
    caller.span().end();

    producer
        .send_with_context(
            FutureRecord::<str, str>::to(&topic).payload("{}"),
            TIMEOUT,
            &Context::new(),
        )
        .await
        .expect("delivered");

    let message = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("message in time")
        .expect("message");
    consumer
        .process(&message, async {
            tracing::info!(request.id = "r-42", "handling request");
            Ok::<_, std::io::Error>(())
        })
        .await
        .expect("processed");
    let message = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("message in time")
        .expect("message");
    let failed = consumer
        .process(&message, async {
            Err::<(), _>(std::io::Error::other("model rejected the input"))
        })
        .await;
    assert!(failed.is_err(), "the handler's error comes back");
    RoundTrip {
        topic,
        trace_id,
        caller_span_id,
    }
}

/// A send the broker refuses (the record is larger than the producer allows).
async fn failed_send(kafka: &KafkaFixture) -> String {
    let topic = kafka
        .create_topic("otlp-too-large", 1)
        .await
        .expect("topic");
    let mut config = kafka.producer_config();
    config.set("message.max.bytes", "1000");
    let producer = TracedProducer::from_config(&config).expect("producer");
    let payload = "x".repeat(10_000);
    let result = producer
        .send_with_context(
            FutureRecord::<str, str>::to(&topic).payload(&payload),
            TIMEOUT,
            &Context::new(),
        )
        .await;
    assert!(
        result.is_err(),
        "a 10 kB record over a 1 kB limit is refused"
    );
    topic
}

struct WorkerRun {
    requests: String,
    replies: String,
    dead_letters: String,
}

/// The batch worker answers 20 requests and dead-letters one malformed request.
async fn batch_worker(kafka: &KafkaFixture) -> WorkerRun {
    let requests = kafka.create_topic("otlp-requests", 1).await.expect("topic");
    let replies = kafka.create_topic("otlp-replies", 1).await.expect("topic");
    let dead_letters = kafka.create_topic("otlp-dlq", 1).await.expect("topic");
    let producer = TracedProducer::from_config(&kafka.producer_config()).expect("producer");
    let tracer = opentelemetry::global::tracer("e2e-caller");
    for i in 0..=REQUESTS {
        // Request 0 has an hour of the wrong type (a schema mismatch), request 1 a user the
        // feature store does not know (a missing profile): both are still scored.
        let user = if i == 1 {
            "user-unknown".to_owned()
        } else {
            format!("user-{i}")
        };
        let hour = if i == 0 {
            r#""noon""#.to_owned()
        } else {
            (i % 24).to_string()
        };
        let body = if i == REQUESTS {
            "{not json".to_owned()
        } else {
            format!(
                r#"{{"request_id":"r-{i}","user_id":"{user}","amount":{i}.5,"merchant_category":"travel","country":"DE","hour":{hour},"card_present":true}}"#
            )
        };
        let cx = Context::current_with_span(tracer.start("inference.request"));
        producer
            .send_with_context(
                FutureRecord::<str, str>::to(&requests).payload(&body),
                TIMEOUT,
                &cx,
            )
            .await
            .expect("request delivered");
        cx.span().end();
    }

    let group = unique_name("otlp-scorers");
    let consumer = TracedConsumer::from_config(&kafka.consumer_config(&group)).expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&requests, 0, Offset::Stored)
        .expect("partition");
    consumer.inner().assign(&assignment).expect("assign");
    let mut worker = Worker::new(
        consumer,
        TracedProducer::from_config(&kafka.producer_config()).expect("producer"),
        InMemoryFeatureStore::generated(100, 7),
        CpuModel::new("fraud-mlp", "e2e", Mlp::seeded(INPUT_WIDTH, &[16], 7)),
        WorkerConfig::new(&replies, &dead_letters)
            .with_batch(BatchConfig::new(64, Duration::from_millis(50))),
    );
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { worker.run(&stop).await });

    let reader: StreamConsumer = kafka
        .consumer_config(&unique_name("reader"))
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    for topic in [&replies, &dead_letters] {
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
    }
    reader.assign(&assignment).expect("assign");
    let mut seen = 0;
    while seen < REQUESTS + 1 {
        tokio::time::timeout(TIMEOUT, reader.recv())
            .await
            .expect("reply in time")
            .expect("reply");
        seen += 1;
    }
    shutdown.trigger();
    let stats = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("worker stops")
        .expect("worker task")
        .expect("worker ran");
    assert_eq!(stats.replies, REQUESTS as u64);
    WorkerRun {
        requests,
        replies,
        dead_letters,
    }
}

/// A message from a client that writes a broken `traceparent` (a raw rdkafka producer, so
/// nothing replaces the header), consumed and processed by a `TracedConsumer`: it is
/// delivered, starts a new trace, and is counted in `mqtrace.propagation.invalid`.
async fn broken_context(kafka: &KafkaFixture) {
    let topic = kafka.create_topic("otlp-broken", 1).await.expect("topic");
    let producer: FutureProducer = kafka.producer_config().create().expect("raw producer");
    producer
        .send(
            FutureRecord::<str, str>::to(&topic)
                .payload("from a client with a bad tracer")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some("00-not-a-trace-context-01"),
                })),
            TIMEOUT,
        )
        .await
        .map_err(|(error, _)| error)
        .expect("delivered");
    let consumer = TracedConsumer::from_config(&kafka.consumer_config(&unique_name("broken")))
        .expect("consumer");
    assign(consumer.inner(), &topic);
    let message = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("message in time")
        .expect("message");
    assert!(
        matches!(message.extracted().outcome, ExtractOutcome::Invalid(_)),
        "the broken header is reported, not used"
    );
    consumer
        .process(&message, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("processed");
}

/// The one instrument this scenario cannot reach on its own: this machine may have no GPU,
/// and the CUDA backend reports device memory only on one. Record a sample through the very
/// instrument the code uses, so the dashboard's GPU panel is checked against the real metric
/// name and unit. (Broken contexts, unknown users and bad values reach their counters for
/// real above.)
fn record_instruments_the_scenario_does_not_reach() {
    let meter = opentelemetry::global::meter_with_scope(mqtrace::core::instrumentation::scope());
    let metrics = WorkerMetrics::new(&meter);
    let device = DeviceInfo::new(DeviceKind::Cuda, "e2e-sample").with_id("gpu0");
    metrics.record_device_memory(&device, 1 << 20, 1 << 30);
}

fn assign<C: mqtrace::kafka::rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
) {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
}
