//! `mqtrace mock-kafka` serves another process: this test process produces to and consumes
//! from the broker the `mqtrace` binary runs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn another_process_can_produce_and_consume() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args([
            "mock-kafka",
            "--brokers",
            "1",
            "--topics",
            "greetings",
            "--duration",
            "120",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mqtrace mock-kafka");
    let stdout = child.stdout.take().expect("stdout");
    let _guard = KillOnDrop(child);
    let mut lines = BufReader::new(stdout);
    let mut first = String::new();
    lines.read_line(&mut first).expect("first line");
    let mut second = String::new();
    lines.read_line(&mut second).expect("second line");
    let control = second
        .trim()
        .strip_prefix("control=")
        .unwrap_or_else(|| panic!("second line should be control=..., got {second:?}"))
        .to_owned();
    let bootstrap = first
        .trim()
        .strip_prefix("bootstrap=")
        .unwrap_or_else(|| panic!("first line should be bootstrap=..., got {first:?}"))
        .to_owned();

    // Another process creates a 3-partition topic through the control port.
    mqtrace_testkit::kafka_control::request(&control, "create-topic three-partitions 3")
        .await
        .expect("create-topic over the control port");
    let metadata_client: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("metadata client");
    let metadata = metadata_client
        .fetch_metadata(Some("three-partitions"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 3);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    let delivery = producer
        .send(
            FutureRecord::<str, str>::to("greetings")
                .payload("hello")
                .key("k"),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "mock-kafka-test")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("greetings", delivery.partition, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("message in time")
        .expect("recv");
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    assert_eq!(message.key(), Some(&b"k"[..]));
}

#[test]
fn bad_arguments_fail_clearly() {
    let output = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args(["mock-kafka", "--brokers", "0"])
        .output()
        .expect("run mqtrace");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--brokers must be at least 1"), "{stderr}");
}
