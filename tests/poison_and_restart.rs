//! Fault drills of issue 16 for the batch worker and the main job, on real brokers:
//!
//! - a poison pill: a 4 MiB malformed request, then 100 good ones. The worker dead-letters
//!   the big one (truncated: its whole letter is more than the producer's `message.max.bytes`)
//!   and answers all 100, in process ([`Worker`] on the testkit's Kafka) and in the main job's
//!   worker-only process (`examples/batch_inference.rs --bootstrap`), which keeps running
//!   until SIGTERM and then exits cleanly;
//! - restart: the main job run twice against one external `mqtrace mock-kafka` process; both
//!   runs answer every request (the second without the control port).
//!
//! The drills with processes build the example and the `mqtrace` binary with the cargo that
//! runs the tests (`cargo build`, a no-op when they are current). Waits are on conditions,
//! with generous timeouts that only decide when to give up.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::InMemoryFeatureStore;
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::{
    BatchConfig, DLQ_PAYLOAD_SIZE_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_OFFSET_HEADER,
    DLQ_SOURCE_PARTITION_HEADER, DLQ_TRUNCATED_HEADER, INPUT_WIDTH, Shutdown, Worker, WorkerConfig,
};
use mqtrace::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use mqtrace::kafka::rdkafka::message::{BorrowedMessage, Headers, Message};
use mqtrace::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace_testkit::capture::TelemetryCapture;
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use mqtrace_testkit::kafka_control::CONTROL_ENV;
use opentelemetry::Value;

/// Longest any one condition may take before the drill fails.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The poison pill's size.
const POISON_BYTES: usize = 4 * 1024 * 1024;

/// Good requests after the poison pill.
const GOOD: usize = 100;

fn good_request(tag: &str, i: usize) -> String {
    format!(
        r#"{{"request_id":"{tag}-{i}","user_id":"user-{}","amount":{}.5,"merchant_category":"travel","country":"DE","hour":{},"card_present":true}}"#,
        i % 100,
        (i * 37) % 9000,
        i % 24,
    )
}

/// 4 MiB that are not a request: what a broken producer, or an attacker, sends.
fn poison() -> Vec<u8> {
    let mut body = b"{\"request_id\":\"poison\",\"blob\":\"".to_vec();
    body.resize(POISON_BYTES, b'x');
    body
}

/// A producer that can send the poison pill (librdkafka refuses more than 1 MB by default).
fn big_message_producer(kafka: &KafkaFixture) -> FutureProducer {
    kafka
        .producer_config()
        .set("message.max.bytes", (8 * 1024 * 1024).to_string())
        .create()
        .expect("producer")
}

/// Sends the poison pill, then `GOOD` good requests, all with one key (one partition: the
/// good ones queue behind the poison pill).
async fn send_poison_then_good(producer: &FutureProducer, topic: &str, tag: &str) {
    let poison = poison();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(topic)
                .payload(&poison)
                .key("one-partition"),
            TIMEOUT,
        )
        .await
        .expect("the poison pill is in the topic");
    for i in 0..GOOD {
        producer
            .send(
                FutureRecord::<str, str>::to(topic)
                    .payload(&good_request(tag, i))
                    .key("one-partition"),
                TIMEOUT,
            )
            .await
            .expect("request delivered");
    }
}

fn request_id(payload: &[u8]) -> String {
    let reply: serde_json::Value = serde_json::from_slice(payload).expect("reply is JSON");
    reply["request_id"].as_str().expect("request_id").to_owned()
}

/// A consumer of every partition of `topic`, from the beginning.
fn reader(kafka: &KafkaFixture, topic: &str, partitions: i32) -> TracedConsumer {
    let consumer = TracedConsumer::from_config(&kafka.consumer_config(&unique_name("reader")))
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.inner().assign(&assignment).expect("assign");
    consumer
}

/// Reads `reader` until a reply came for every one of `GOOD` requests tagged `tag`.
async fn read_all_answers(reader: &TracedConsumer, tag: &str) -> HashSet<String> {
    let mut answered = HashSet::new();
    while answered.len() < GOOD {
        let reply = tokio::time::timeout(TIMEOUT, reader.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {GOOD} requests after the poison pill were answered",
                    answered.len()
                )
            })
            .expect("reply");
        let id = request_id(reply.payload().expect("payload"));
        if id.starts_with(&format!("{tag}-")) {
            answered.insert(id);
        }
    }
    answered
}

/// Messages on partition 0 of `topic` (its high watermark).
fn messages_in(kafka: &KafkaFixture, topic: &str) -> i64 {
    let client: BaseConsumer = kafka.client_config().create().expect("client");
    let (low, high) = client
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    high - low
}

fn header<'m>(message: &'m BorrowedMessage<'_>, name: &str) -> Option<&'m str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The one dead letter on `topic`: truncated, saying why and where the request is.
async fn assert_one_truncated_dead_letter(kafka: &KafkaFixture, topic: &str, offset: i64) {
    assert_eq!(messages_in(kafka, topic), 1, "exactly one dead letter");
    let dlq = reader(kafka, topic, 1);
    let letter = tokio::time::timeout(TIMEOUT, dlq.recv())
        .await
        .expect("the dead letter in time")
        .expect("dead letter");
    assert_eq!(header(&letter, DLQ_REASON_HEADER), Some("too_large"));
    assert!(header(&letter, DLQ_SOURCE_PARTITION_HEADER).is_some());
    assert_eq!(
        header(&letter, DLQ_SOURCE_OFFSET_HEADER),
        Some(offset.to_string().as_str())
    );
    assert_eq!(
        header(&letter, DLQ_PAYLOAD_SIZE_HEADER),
        Some(POISON_BYTES.to_string().as_str())
    );
    let why = header(&letter, DLQ_TRUNCATED_HEADER).expect("says why it is truncated");
    assert!(why.contains("too large"), "{why}");
    assert_eq!(letter.payload().unwrap_or_default().len(), 0, "no payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_malformed_request_is_dead_lettered_truncated_and_the_next_100_are_answered() {
    let kafka = KafkaFixture::start().expect("Kafka");
    let requests = kafka.create_topic("poison", 1).await.expect("topic");
    let replies = kafka
        .create_topic("poison-replies", 1)
        .await
        .expect("topic");
    let dead_letters = kafka.create_topic("poison-dlq", 1).await.expect("topic");
    send_poison_then_good(&big_message_producer(&kafka), &requests, "r").await;

    let capture = TelemetryCapture::new();
    let consumer = TracedConsumer::from_config(&kafka.consumer_config(&unique_name("scorers")))
        .expect("consumer")
        .with_instrumentation(capture.instrumentation());
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&requests, 0, Offset::Stored)
        .expect("partition");
    consumer.inner().assign(&assignment).expect("assign");
    // The replies' and dead letters' producer keeps librdkafka's default message.max.bytes
    // (1 MB, a real broker's default too): the whole dead letter cannot be sent.
    let producer = TracedProducer::from_config(&kafka.producer_config())
        .expect("producer")
        .with_instrumentation(capture.instrumentation());
    let mut worker = Worker::with_instrumentation(
        consumer,
        producer,
        InMemoryFeatureStore::generated(100, 7),
        CpuModel::new("fraud-mlp", "poison", Mlp::seeded(INPUT_WIDTH, &[16], 7)),
        WorkerConfig::new(&replies, &dead_letters)
            .with_batch(BatchConfig::new(32, Duration::from_millis(20))),
        capture.instrumentation(),
    );
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { worker.run(&stop).await });

    let answered = read_all_answers(&reader(&kafka, &replies, 1), "r").await;
    assert_eq!(answered.len(), GOOD);
    assert!(!running.is_finished(), "the worker keeps running");
    shutdown.trigger();
    let stats = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("the worker stops when asked")
        .expect("worker task")
        .expect("the worker never failed");
    assert_eq!(stats.replies, GOOD as u64, "{stats:?}");
    assert_eq!(
        (
            stats.dead_lettered,
            stats.dead_letters_truncated,
            stats.dead_letters_skipped
        ),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_one_truncated_dead_letter(&kafka, &dead_letters, 0).await;

    // The telemetry tells the same: one truncated dead letter, and why.
    let metrics = capture.metrics();
    assert_eq!(metrics.total("mqtrace.worker.dead_lettered"), 1.0);
    assert_eq!(metrics.total("mqtrace.worker.dead_letter.truncated"), 1.0);
    assert_eq!(metrics.total("mqtrace.worker.dead_letter.skipped"), 0.0);
    let spans = capture.spans();
    let sends = spans.named(&format!("send {dead_letters}"));
    assert_eq!(sends.len(), 2, "the whole letter, then the truncated one");
    let failed: Vec<_> = sends
        .iter()
        .filter(|s| spans.attr(s, "error.type").is_some())
        .copied()
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        spans.attr(failed[0], "error.type"),
        Some(&Value::from("MessageSizeTooLarge"))
    );
    let truncated_events = spans
        .named(&format!("process {requests}"))
        .iter()
        .flat_map(|batch| batch.events.iter())
        .filter(|e| e.name == "request.dead_lettered")
        .filter(|e| {
            e.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "mqtrace.dead_letter.truncated")
        })
        .count();
    assert_eq!(truncated_events, 1);
}

// ---------------------------------------------------------------------------------------------
// The main job as a process.

/// Kills the child process when the drill ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mqtrace mock-kafka` in its own process: the guard, its bootstrap and control addresses.
fn mock_kafka() -> (KillOnDrop, String, String) {
    let bin =
        common::built::cargo_build(&["-p", "mqtrace-cli", "--bin", "mqtrace"]).join("mqtrace");
    let mut child = Command::new(bin)
        .args(["mock-kafka", "--duration", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mqtrace mock-kafka");
    let stdout = child.stdout.take().expect("stdout");
    let guard = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut field = |prefix: &str| {
        let line = lines.next().expect("a line").expect("readable");
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix}..., got {line:?}"))
            .to_owned()
    };
    let bootstrap = field("bootstrap=");
    let control = field("control=");
    (guard, bootstrap, control)
}

/// The main job's command line against `bootstrap`, telemetry off (not what is tested).
fn main_job_command(bootstrap: &str, control: Option<&str>) -> Command {
    let mut command = Command::new(common::built::main_job());
    command
        .args(["--bootstrap", bootstrap, "--hidden", "16"])
        .env("OTEL_SDK_DISABLED", "true")
        .env_remove("MQTRACE_KAFKA_BOOTSTRAP");
    match control {
        Some(control) => command.env(CONTROL_ENV, control),
        None => command.env_remove(CONTROL_ENV),
    };
    command
}

#[test]
fn the_main_job_runs_twice_against_one_external_mock_kafka() {
    let (_broker, bootstrap, control) = mock_kafka();
    let dir = std::env::temp_dir().join(unique_name("restart"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The first run creates the topics through the control port; the second finds them
    // (and runs without the control port, as against any Kafka).
    for (run, control) in [(1, Some(control.as_str())), (2, None)] {
        let summary = dir.join(format!("run-{run}.json"));
        let output = main_job_command(&bootstrap, control)
            .args(["--generate", "--messages", "300", "--bad-ratio", "0.1"])
            .args(["--timeout-secs", "120", "--summary-json"])
            .arg(&summary)
            .stdin(Stdio::null())
            .output()
            .expect("run the main job");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "run {run} failed: {stderr}");
        assert!(!stderr.contains("warning: topic"), "run {run}: {stderr}");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary).expect("summary")).expect("JSON");
        assert_eq!(summary["requests"], 300, "run {run}: {summary}");
        assert_eq!(summary["replies"], 270, "run {run}: {summary}");
        assert_eq!(summary["dead_lettered"], 30, "run {run}: {summary}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends SIGTERM, as `docker stop` does.
fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_only_main_job_survives_a_4_mib_malformed_request() {
    let (_broker, bootstrap, control) = mock_kafka();
    let kafka = KafkaFixture::external(&bootstrap).with_control(&control);
    // The main job's topology, made by the test first: the job reuses it.
    for (topic, partitions) in [
        ("inference-requests", 4),
        ("inference-replies", 1),
        ("inference-requests.dlq", 1),
    ] {
        kafka
            .create_named_topic(topic, partitions)
            .await
            .expect("topic");
    }
    let worker = main_job_command(&bootstrap, Some(&control))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker-only main job");
    let mut worker = KillOnDrop(worker);
    send_poison_then_good(&big_message_producer(&kafka), "inference-requests", "w").await;

    let answered = read_all_answers(&reader(&kafka, "inference-replies", 1), "w").await;
    assert_eq!(answered.len(), GOOD);
    assert!(
        worker.0.try_wait().expect("status").is_none(),
        "the worker-only process keeps running"
    );
    let poison_offset = 0;
    assert_one_truncated_dead_letter(&kafka, "inference-requests.dlq", poison_offset).await;

    terminate(&worker.0);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = worker.0.try_wait().expect("status") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(out) = worker.0.stdout.as_mut() {
        out.read_to_string(&mut stdout).expect("stdout");
    }
    if let Some(err) = worker.0.stderr.as_mut() {
        err.read_to_string(&mut stderr).expect("stderr");
    }
    assert!(status.success(), "exit {status}: {stderr}");
    let line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| {
                l[l.find(label).unwrap_or(0) + label.len()..]
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("no '{label}' line in the summary:\n{stdout}"))
    };
    assert_eq!(line("replies"), GOOD.to_string());
    assert_eq!(line("dead-lettered"), "1");
    assert!(line("handled while busy").contains("req/s"), "{stdout}");
    assert!(
        !stdout.contains("throughput") && !stdout.contains("latency p50"),
        "a worker-only run has no end-to-end figures to show:\n{stdout}"
    );
}
