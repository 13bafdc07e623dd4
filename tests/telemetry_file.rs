//! With no OTLP endpoint, telemetry lands in OTLP-JSON lines files, and the round trip's
//! trace graph can be read back from them: every `process` span's parent is a `send` span of
//! the same trace. (One test per file: telemetry::init installs global providers.)

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TIMEOUT, recv};
use mqtrace::kafka::rdkafka::consumer::{CommitMode, Consumer};
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace::telemetry::{self, Destination, TelemetryConfig};
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_is_written_as_otlp_json_lines() {
    let dir = std::env::temp_dir().join(unique_name("mqtrace-telemetry"));
    let guard = telemetry::init_with(
        TelemetryConfig::default()
            .with_default_service_name("telemetry-file-test")
            .with_environment("test")
            .with_destination(Destination::Files { dir: dir.clone() }),
    )
    .expect("telemetry");

    let kafka = KafkaFixture::start().expect("kafka");
    let topic = kafka.create_topic("file-export", 1).await.expect("topic");
    let producer = TracedProducer::from_config(&kafka.producer_config()).expect("producer");
    let consumer =
        TracedConsumer::from_config(&kafka.consumer_config(&unique_name("g"))).expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.inner().assign(&assignment).expect("assign");

    for i in 0..5 {
        producer
            .send(
                FutureRecord::<str, str>::to(&topic).payload(&format!("m{i}")),
                TIMEOUT,
            )
            .await
            .expect("delivered");
    }
    for _ in 0..5 {
        let message = recv(&consumer).await;
        consumer
            .process(&message, async { Ok::<_, std::io::Error>(()) })
            .await
            .expect("processed");
        consumer
            .commit_message(&message, CommitMode::Sync)
            .expect("commit");
    }
    guard.flush();
    drop(guard);
    tokio::time::sleep(Duration::from_millis(10)).await;

    let traces = std::fs::read_to_string(dir.join("traces.jsonl")).expect("traces.jsonl");
    let mut spans: HashMap<String, (String, String, String, i64)> = HashMap::new();
    for line in traces.lines() {
        let request: Value = serde_json::from_str(line).expect("each line is one JSON request");
        for resource_spans in request["resourceSpans"].as_array().expect("resourceSpans") {
            let attributes = resource_spans["resource"]["attributes"]
                .as_array()
                .expect("resource");
            let resource = |key: &str| {
                attributes.iter().find(|kv| kv["key"] == key).map(|kv| {
                    kv["value"]["stringValue"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
            };
            assert_eq!(
                resource("service.name").as_deref(),
                Some("telemetry-file-test")
            );
            assert_eq!(
                resource("deployment.environment.name").as_deref(),
                Some("test")
            );
            assert!(resource("service.version").is_some());
            for scope in resource_spans["scopeSpans"].as_array().expect("scopeSpans") {
                for span in scope["spans"].as_array().expect("spans") {
                    let id = span["spanId"].as_str().expect("spanId").to_owned();
                    spans.insert(
                        id,
                        (
                            span["name"].as_str().expect("name").to_owned(),
                            span["traceId"].as_str().expect("traceId").to_owned(),
                            span["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                            span["kind"].as_i64().expect("kind"),
                        ),
                    );
                }
            }
        }
    }
    let processes: Vec<_> = spans
        .values()
        .filter(|(name, ..)| name.starts_with("process "))
        .collect();
    assert_eq!(
        processes.len(),
        5,
        "five process spans in {}",
        dir.display()
    );
    for (name, trace, parent, kind) in processes {
        assert_eq!(*kind, 5, "{name} is CONSUMER");
        let (parent_name, parent_trace, _, parent_kind) =
            spans.get(parent).expect("parent exported");
        assert!(
            parent_name.starts_with("send "),
            "parent of {name} is {parent_name}"
        );
        assert_eq!(parent_trace, trace);
        assert_eq!(*parent_kind, 4, "parent is PRODUCER");
    }
    assert_eq!(
        spans
            .values()
            .filter(|(name, ..)| name.starts_with("commit "))
            .count(),
        5
    );

    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    for name in [
        "messaging.client.operation.duration",
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
        "messaging.process.duration",
    ] {
        assert!(
            metrics.contains(&format!("\"name\":\"{name}\"")),
            "metric {name} exported"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
