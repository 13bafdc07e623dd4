//! Shared setup for the RabbitMQ tests: the real broker (see `mqtrace_testkit::amqp`), a
//! unique queue, in-memory telemetry, and traced clients recording into it.

use std::time::Duration;

use mqtrace::amqp::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use mqtrace::amqp::lapin::types::{AMQPValue, FieldTable};
use mqtrace::amqp::lapin::{BasicProperties, Channel};
use mqtrace::amqp::{TracedConsumer, TracedDelivery, TracedPublisher};
use mqtrace_testkit::amqp::RabbitFixture;
use mqtrace_testkit::capture::TelemetryCapture;

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct AmqpHarness {
    pub rabbit: RabbitFixture,
    pub capture: TelemetryCapture,
    pub queue: String,
}

impl AmqpHarness {
    pub async fn new(prefix: &str) -> Self {
        let rabbit = RabbitFixture::connect().await.expect("RabbitMQ");
        let queue = rabbit.declare_queue(prefix).await.expect("queue");
        Self {
            rabbit,
            capture: TelemetryCapture::new(),
            queue,
        }
    }

    pub async fn publisher(&self) -> TracedPublisher {
        TracedPublisher::open(self.rabbit.connection())
            .await
            .expect("publisher")
            .with_instrumentation(self.capture.instrumentation())
            .with_server_from_url(self.rabbit.url())
    }

    pub async fn consumer_of(&self, queue: &str) -> TracedConsumer {
        self.consumer_on(self.rabbit.channel().await.expect("channel"), queue)
            .await
    }

    /// A consumer of `queue` on its own channel with at most `prefetch` unacknowledged
    /// deliveries; the channel is returned too (closing it gives back unacked deliveries).
    pub async fn consumer_with_prefetch(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> (Channel, TracedConsumer) {
        let channel = self.rabbit.channel().await.expect("channel");
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .expect("qos");
        (channel.clone(), self.consumer_on(channel, queue).await)
    }

    async fn consumer_on(&self, channel: Channel, queue: &str) -> TracedConsumer {
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        TracedConsumer::new(consumer)
            .with_instrumentation(self.capture.instrumentation())
            .with_server_from_url(self.rabbit.url())
    }

    pub async fn consumer(&self) -> TracedConsumer {
        self.consumer_of(&self.queue).await
    }

    /// Publishes `payload` with exactly these headers through plain lapin, as a client that
    /// knows nothing of tracing would, and waits for the broker's confirm.
    ///
    /// Each call opens its own channel, and RabbitMQ does not order messages across
    /// channels: without the confirm, two calls in a row could be queued in either order
    /// (CI once saw the third message delivered second). The confirm means the message is
    /// queued before this returns, so consecutive calls are delivered in call order.
    pub async fn publish_raw(&self, headers: Vec<(&str, AMQPValue)>) {
        let mut table = FieldTable::default();
        for (key, value) in headers {
            table.insert(key.into(), value);
        }
        let channel = self.rabbit.channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirm = channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                b"raw",
                BasicProperties::default().with_headers(table),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker refused the message: {confirm:?}");
    }
}

pub async fn next(consumer: &mut TracedConsumer) -> TracedDelivery {
    tokio::time::timeout(TIMEOUT, consumer.next())
        .await
        .expect("a delivery within the timeout")
        .expect("consumer not cancelled")
        .expect("delivery")
}
