//! Telemetry never hurts messaging: with the collector absent for a whole run, killed and
//! restarted mid-run, or hanging on every export, every message is still produced and
//! consumed, producers never wait for the collector, and every span that could not be
//! delivered is counted in `mqtrace.telemetry.spans.dropped` — which reaches the collector
//! as soon as one is there again. The collector is the testkit's real OTLP receiver, over
//! gRPC and HTTP/protobuf. (How much throughput telemetry costs is measured by
//! `cargo bench --bench overhead`, not asserted here.)

use std::collections::HashSet;
use std::time::Duration;

use mqtrace::core::Instrumentation;
use mqtrace::kafka::rdkafka::consumer::Consumer;
use mqtrace::kafka::rdkafka::message::Message;
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace::telemetry::{
    self, Destination, OtlpProtocol, SpanBatchSettings, TelemetryConfig, TelemetryGuard,
};
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use mqtrace_testkit::otlp::{Behaviour, OtlpReceiver, find_attr, value_to_string};
use opentelemetry::Context;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};

const TIMEOUT: Duration = Duration::from_secs(60);
const DROPPED: &str = "mqtrace.telemetry.spans.dropped";

fn endpoint(receiver: &OtlpReceiver, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::Grpc => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    }
}

/// Telemetry to `receiver` without global state (tests in this file run in parallel).
fn pipeline(
    receiver: &OtlpReceiver,
    protocol: OtlpProtocol,
    batch: SpanBatchSettings,
) -> (TelemetryGuard, Instrumentation) {
    let guard = telemetry::build(
        TelemetryConfig::default()
            .with_default_service_name("telemetry-faults")
            .with_span_batch(batch)
            .with_destination(Destination::Otlp {
                endpoint: endpoint(receiver, protocol),
                protocol,
            }),
    )
    .expect("telemetry");
    let instrumentation = Instrumentation::builder()
        .with_tracer_provider(guard.tracer_provider().expect("traces"))
        .with_meter_provider(guard.meter_provider().expect("metrics"))
        .build();
    (guard, instrumentation)
}

/// Produces `count` messages, each sent inside a caller span named `phase`, and consumes
/// them all with a traced consumer (a `process` span each); returns how many distinct
/// messages were consumed.
async fn flow(
    kafka: &KafkaFixture,
    guard: &TelemetryGuard,
    instrumentation: &Instrumentation,
    phase: &str,
    count: usize,
) -> usize {
    let topic = kafka.create_topic(phase, 1).await.expect("topic");
    let producer = TracedProducer::from_config(&kafka.producer_config())
        .expect("producer")
        .with_instrumentation(instrumentation.clone());
    let consumer = TracedConsumer::from_config(&kafka.consumer_config(&unique_name("g")))
        .expect("consumer")
        .with_instrumentation(instrumentation.clone());
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.inner().assign(&assignment).expect("assign");
    let tracer = guard.tracer_provider().expect("traces").tracer("caller");

    for i in 0..count {
        let cx = Context::current_with_span(tracer.start(phase.to_owned()));
        producer
            .send_with_context(
                FutureRecord::<str, str>::to(&topic).payload(&format!("{phase}-{i}")),
                TIMEOUT,
                &cx,
            )
            .await
            .expect("every send is delivered whatever the collector does");
        cx.span().end();
    }
    let mut seen = HashSet::new();
    while seen.len() < count {
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .expect("message in time")
            .expect("message");
        consumer
            .process(&message, async { Ok::<_, std::io::Error>(()) })
            .await
            .expect("processed");
        seen.insert(message.payload().map(<[u8]>::to_vec));
    }
    seen.len()
}

/// The dropped-spans counter's value for `reason`, as last received (it is cumulative).
fn dropped(receiver: &OtlpReceiver, reason: &str) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    let mut latest = 0.0;
    for metric in receiver.metrics().iter().filter(|m| m.name() == DROPPED) {
        let Some(Data::Sum(sum)) = &metric.metric.data else {
            continue;
        };
        for point in &sum.data_points {
            let this_reason = find_attr(&point.attributes, "reason").map(value_to_string);
            if this_reason.as_deref() == Some(reason) {
                latest = match point.value {
                    Some(Value::AsInt(i)) => i as f64,
                    Some(Value::AsDouble(d)) => d,
                    None => latest,
                };
            }
        }
    }
    latest
}

/// Exports the metrics now and waits until the receiver has the dropped-spans counter.
async fn report_drops(receiver: &OtlpReceiver, guard: &TelemetryGuard, reason: &str) -> f64 {
    let provider = guard.meter_provider().expect("metrics").clone();
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .expect("flush task")
        .expect("metrics exported to the receiver");
    assert!(
        receiver
            .wait_until(TIMEOUT, |r| r.metrics().iter().any(|m| m.name() == DROPPED))
            .await,
        "the dropped-spans counter arrives"
    );
    dropped(receiver, reason)
}

async fn flush_spans(guard: &TelemetryGuard) -> bool {
    let provider = guard.tracer_provider().expect("traces").clone();
    tokio::task::spawn_blocking(move || provider.force_flush().is_ok())
        .await
        .expect("flush task")
}

/// Waits until the pipeline has accounted for `spans` spans (exported or dropped).
async fn settled(guard: &TelemetryGuard, spans: u64) -> bool {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let stats = guard.stats().spans;
        if stats.exported + stats.dropped() >= spans {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn collector_absent_for_the_whole_run(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    // Nothing listens on its ports while the messages flow.
    receiver.stop().await;
    let (guard, instrumentation) = pipeline(
        &receiver,
        protocol,
        SpanBatchSettings::default()
            .with_max_export_batch_size(64)
            .with_scheduled_delay(Duration::from_millis(100)),
    );
    let kafka = KafkaFixture::start().expect("Kafka");
    let delivered = flow(&kafka, &guard, &instrumentation, "absent", 300).await;
    assert_eq!(delivered, 300, "every message produced and consumed");
    assert!(
        !flush_spans(&guard).await,
        "a flush with no collector reports the failed export"
    );

    // Every span is accounted for once the exporter has given up on each batch (it retries
    // with backoff, so that can outlast one flush).
    assert!(
        settled(&guard, 900).await,
        "all 900 spans accounted for: {:?}",
        guard.stats()
    );
    assert_eq!(guard.stats().spans.exported, 0);

    // A collector appears after the run: it gets the count of what was lost, not the spans.
    receiver.restart().await.expect("restart");
    let lost =
        report_drops(&receiver, &guard, "export_failed").await + dropped(&receiver, "queue_full");
    // Each message had a caller, a send and a process span; none could be delivered.
    assert!(
        lost >= 900.0,
        "all 900 spans counted as dropped, got {lost}"
    );
    assert!(
        receiver.spans().iter().all(|s| s.name() != "absent"),
        "no span of the run arrived"
    );
}

async fn collector_killed_mid_run_and_restarted(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let (guard, instrumentation) = pipeline(
        &receiver,
        protocol,
        SpanBatchSettings::default()
            .with_max_export_batch_size(64)
            .with_scheduled_delay(Duration::from_millis(100)),
    );
    let kafka = KafkaFixture::start().expect("Kafka");
    let before = flow(&kafka, &guard, &instrumentation, "before", 100).await;
    assert!(flush_spans(&guard).await);
    let count =
        |r: &OtlpReceiver, name: &str| r.spans().iter().filter(|s| s.name() == name).count();
    assert_eq!(count(&receiver, "before"), 100);

    receiver.stop().await;
    let during = flow(&kafka, &guard, &instrumentation, "during", 100).await;
    let _ = flush_spans(&guard).await;
    receiver.restart().await.expect("restart on the same ports");
    let after = flow(&kafka, &guard, &instrumentation, "after", 100).await;
    assert!(
        flush_spans(&guard).await,
        "exports succeed again after the restart"
    );

    assert_eq!((before, during, after), (100, 100, 100), "no message lost");
    assert!(
        receiver
            .wait_until(TIMEOUT, |r| count(r, "after") == 100)
            .await,
        "every span after the restart arrives"
    );
    let lost = report_drops(&receiver, &guard, "export_failed").await;
    let arrived_during = count(&receiver, "during") as f64;
    assert!(
        lost >= 1.0 && lost + arrived_during >= 100.0,
        "spans of the outage were counted as dropped ({lost}) or arrived ({arrived_during})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_absent_for_the_whole_run_grpc() {
    collector_absent_for_the_whole_run(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_absent_for_the_whole_run_http() {
    collector_absent_for_the_whole_run(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_run_and_restarted_grpc() {
    collector_killed_mid_run_and_restarted(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_run_and_restarted_http() {
    collector_killed_mid_run_and_restarted(OtlpProtocol::HttpProtobuf).await;
}

/// A collector that accepts connections but holds every export: all messages go through
/// while not a single export has completed, so no send waited for it; the queue overflows
/// and the overflow is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_never_holds_up_a_send() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    receiver.set_behaviour(Behaviour::Slow(Duration::MAX));
    let (guard, instrumentation) = pipeline(
        &receiver,
        OtlpProtocol::Grpc,
        SpanBatchSettings::default()
            .with_max_queue_size(64)
            .with_max_export_batch_size(16)
            .with_scheduled_delay(Duration::from_millis(20)),
    );
    let kafka = KafkaFixture::start().expect("Kafka");
    let delivered = flow(&kafka, &guard, &instrumentation, "hanging", 300).await;
    assert_eq!(delivered, 300);
    assert_eq!(
        receiver.accepted_requests(),
        0,
        "all 300 messages went through while the collector had not answered one export"
    );

    receiver.set_behaviour(Behaviour::Normal);
    assert!(flush_spans(&guard).await);
    let overflow = report_drops(&receiver, &guard, "queue_full").await;
    assert!(
        overflow > 0.0,
        "the full queue dropped spans and counted them"
    );
    let arrived = receiver
        .spans()
        .iter()
        .filter(|s| s.name() == "hanging")
        .count() as f64;
    assert!(
        arrived < 300.0 && arrived + overflow <= 900.0,
        "some spans were dropped ({overflow}), the rest arrived ({arrived})"
    );
}

/// Runs 300 messages (900 spans) against `receiver` with mqtrace's default pipeline settings,
/// then shuts the pipeline down; returns the final account and how long the shutdown took.
async fn run_then_shut_down(
    receiver: &OtlpReceiver,
    protocol: OtlpProtocol,
    phase: &str,
) -> (telemetry::TelemetryStats, Duration) {
    let (guard, instrumentation) = pipeline(receiver, protocol, SpanBatchSettings::default());
    let kafka = KafkaFixture::start().expect("Kafka");
    let delivered = flow(&kafka, &guard, &instrumentation, phase, 300).await;
    assert_eq!(delivered, 300, "every message produced and consumed");
    drop(instrumentation);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let stats = guard.shutdown();
        (stats, started.elapsed())
    })
    .await
    .expect("shutdown task")
}

/// The longest a shutdown may take with the default `OTEL_BSP_EXPORT_TIMEOUT` (5 s), plus
/// room for a loaded CI machine to schedule the threads (before: 58–65 s).
const SHUTDOWN_BOUND: Duration = Duration::from_secs(7);

/// A collector that accepts connections but never answers: shutdown still ends within the
/// export timeout, and the account tells that every span of the run was lost and why.
async fn shutdown_with_a_hanging_collector(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    receiver.set_behaviour(Behaviour::Slow(Duration::MAX));
    let (stats, took) = run_then_shut_down(&receiver, protocol, "hung").await;
    assert!(took <= SHUTDOWN_BOUND, "shutdown took {took:?}");
    assert_eq!(
        receiver.accepted_requests(),
        0,
        "the collector answered nothing"
    );
    assert_eq!(stats.spans.exported, 0, "{stats:?}");
    assert_eq!(
        stats.spans.dropped(),
        900,
        "every span accounted for: {stats:?}"
    );
    let warning = stats.loss_warning().expect("the loss is told");
    assert!(warning.contains("900 of 900 spans dropped"), "{warning}");
    assert!(
        warning.contains(&endpoint(&receiver, protocol)),
        "the warning names the collector: {warning}"
    );
}

/// No collector at all: exports fail, shutdown is short, and the loss is told.
async fn shutdown_with_the_collector_down(protocol: OtlpProtocol) {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    receiver.stop().await;
    let (stats, took) = run_then_shut_down(&receiver, protocol, "down").await;
    assert!(took <= SHUTDOWN_BOUND, "shutdown took {took:?}");
    assert_eq!(stats.spans.exported, 0, "{stats:?}");
    assert_eq!(
        stats.spans.dropped(),
        900,
        "every span accounted for: {stats:?}"
    );
    assert!(
        stats.spans.dropped_export_failed > 0,
        "the refused exports are told as such: {stats:?}"
    );
    let warning = stats.loss_warning().expect("the loss is told");
    assert!(warning.contains("export to OTLP"), "{warning}");
    assert!(!stats.is_complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_hanging_collector_grpc() {
    shutdown_with_a_hanging_collector(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_hanging_collector_http() {
    shutdown_with_a_hanging_collector(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_collector_down_grpc() {
    shutdown_with_the_collector_down(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_collector_down_http() {
    shutdown_with_the_collector_down(OtlpProtocol::HttpProtobuf).await;
}

/// A healthy collector: nothing lost, and the account matches what arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_collector_gets_every_span_and_the_account_says_so() {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let (stats, took) = run_then_shut_down(&receiver, OtlpProtocol::HttpProtobuf, "healthy").await;
    assert!(took <= SHUTDOWN_BOUND, "shutdown took {took:?}");
    assert!(stats.is_complete(), "{stats:?}");
    assert_eq!(stats.loss_warning(), None);
    assert_eq!(stats.spans.exported, 900, "{stats:?}");
    let arrived = receiver.span_count();
    assert_eq!(
        arrived, 900,
        "the receiver has exactly what the account says"
    );
}
