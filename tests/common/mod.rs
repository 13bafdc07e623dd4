//! Shared setup for the end-to-end Kafka tests: a broker (embedded unless
//! `MQTRACE_KAFKA_BOOTSTRAP` names one), a unique topic, in-memory telemetry, and traced
//! clients recording into it.

#![allow(dead_code, unreachable_pub)]

pub mod amqp;
pub mod built;
pub mod fraud_requests;
pub mod random_flag;
pub mod stalling_sink;
pub mod w3c_cases;

use std::time::Duration;

use mqtrace::kafka::rdkafka::consumer::Consumer;
use mqtrace::kafka::rdkafka::message::OwnedHeaders;
use mqtrace::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedMessage, TracedProducer};
use mqtrace_testkit::capture::TelemetryCapture;
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Harness {
    pub kafka: KafkaFixture,
    pub capture: TelemetryCapture,
    pub topic: String,
}

impl Harness {
    pub async fn new(prefix: &str) -> Self {
        let kafka = KafkaFixture::start().expect("Kafka fixture");
        let topic = kafka.create_topic(prefix, 1).await.expect("topic");
        Self {
            kafka,
            capture: TelemetryCapture::new(),
            topic,
        }
    }

    pub fn producer(&self) -> TracedProducer {
        TracedProducer::from_config(&self.kafka.producer_config())
            .expect("producer")
            .with_instrumentation(self.capture.instrumentation())
    }

    /// A producer that knows nothing of tracing, standing in for foreign clients.
    pub fn raw_producer(&self) -> FutureProducer {
        self.kafka.producer_config().create().expect("raw producer")
    }

    /// A consumer assigned to partition 0 of `topic` from the beginning (no group join wait).
    pub fn consumer_of(&self, topic: &str) -> TracedConsumer {
        let consumer =
            TracedConsumer::from_config(&self.kafka.consumer_config(&unique_name("group")))
                .expect("consumer")
                .with_instrumentation(self.capture.instrumentation());
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.inner().assign(&assignment).expect("assign");
        consumer
    }

    pub fn consumer(&self) -> TracedConsumer {
        self.consumer_of(&self.topic)
    }

    /// Sends a one-byte record through `producer` as a new trace (no parent span).
    pub async fn send_root(&self, producer: &TracedProducer) {
        producer
            .send_with_context(
                FutureRecord::<str, str>::to(&self.topic).payload("x"),
                TIMEOUT,
                &opentelemetry::Context::new(),
            )
            .await
            .expect("delivered");
    }

    /// Sends a raw record with exactly these headers.
    pub async fn send_raw(&self, headers: OwnedHeaders) {
        self.raw_producer()
            .send(
                FutureRecord::<str, str>::to(&self.topic)
                    .payload("raw")
                    .headers(headers),
                TIMEOUT,
            )
            .await
            .expect("raw send");
    }
}

pub async fn recv(consumer: &TracedConsumer) -> TracedMessage<'_> {
    tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("a message within the timeout")
        .expect("recv")
}

pub async fn process_ok(consumer: &TracedConsumer, message: &TracedMessage<'_>) {
    consumer
        .process(message, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("handler");
}
