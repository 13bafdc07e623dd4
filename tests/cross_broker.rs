//! One request's trace across two brokers: a request produced to Kafka is handled by a
//! traced consumer whose handler answers over RabbitMQ; the reply's consumer span is in the
//! request's trace.

mod common;

use common::amqp::{AmqpHarness, next};
use common::{Harness, TIMEOUT, recv};
use mqtrace::amqp::lapin::BasicProperties;
use mqtrace::amqp::lapin::options::{BasicAckOptions, BasicPublishOptions};
use mqtrace::amqp::{TracedConsumer as AmqpConsumer, TracedPublisher};
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use opentelemetry::Context;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};

#[tokio::test]
async fn kafka_request_answered_over_rabbitmq_stays_in_one_trace() {
    let kafka = Harness::new("requests").await;
    let rabbit = AmqpHarness::new("replies").await;
    // Both sides record into the Kafka harness's capture, as one process would.
    let instrumentation = kafka.capture.instrumentation();
    let producer = kafka.producer();
    let consumer = kafka.consumer();
    let replies = TracedPublisher::open(rabbit.rabbit.connection())
        .await
        .expect("publisher")
        .with_instrumentation(instrumentation.clone());
    let channel = rabbit.rabbit.channel().await.expect("channel");
    let reply_consumer = channel
        .basic_consume(
            rabbit.queue.as_str().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("consume");
    let mut reply_consumer =
        AmqpConsumer::new(reply_consumer).with_instrumentation(instrumentation);

    let tracer = kafka.capture.tracer_provider().tracer("client");
    let request = Context::current_with_span(tracer.start("inference.request"));
    producer
        .send_with_context(
            FutureRecord::<str, str>::to(&kafka.topic).payload("score me"),
            TIMEOUT,
            &request,
        )
        .await
        .expect("request delivered");
    request.span().end();

    let message = recv(&consumer).await;
    consumer
        .process(&message, async {
            replies
                .publish(
                    "",
                    &rabbit.queue,
                    BasicPublishOptions::default(),
                    b"0.93",
                    BasicProperties::default(),
                )
                .await
        })
        .await
        .expect("answered");

    let reply = next(&mut reply_consumer).await;
    reply_consumer
        .process(&reply, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("reply handled");
    reply.ack(BasicAckOptions::default()).await.expect("ack");

    let spans = kafka.capture.spans();
    let request = spans.one("inference.request");
    let kafka_send = spans.one(&format!("send {}", kafka.topic));
    let kafka_process = spans.one(&format!("process {}", kafka.topic));
    let reply_send = spans.one(&format!("send {}", rabbit.queue));
    let reply_process = spans.one(&format!("process {}", rabbit.queue));
    spans.assert_child_of(kafka_send, request);
    spans.assert_child_of(kafka_process, kafka_send);
    spans.assert_child_of(reply_send, kafka_process);
    spans.assert_child_of(reply_process, reply_send);
    spans.assert_attr(kafka_send, "messaging.system", "kafka");
    spans.assert_attr(reply_send, "messaging.system", "rabbitmq");
    let trace = request.span_context.trace_id();
    for span in [kafka_send, kafka_process, reply_send, reply_process] {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{} in the request's trace",
            span.name
        );
    }
}
