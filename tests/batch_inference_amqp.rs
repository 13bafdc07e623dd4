//! The batch-inference worker on the real RabbitMQ: two workers consume one queue, every
//! request is answered on a reply queue in its own trace, batch links carry delivery tags and
//! message ids, malformed requests are dead-lettered, and every delivery is acknowledged
//! only after its batch was answered.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::amqp::{AmqpHarness, TIMEOUT, next};
use mqtrace::amqp::lapin::options::{BasicAckOptions, BasicPublishOptions, QueueDeclareOptions};
use mqtrace::amqp::lapin::types::{AMQPValue, FieldTable};
use mqtrace::amqp::lapin::{BasicProperties, Channel};
use mqtrace::amqp::{TracedConsumer, TracedPublisher};
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::InMemoryFeatureStore;
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::{
    BatchConfig, DLQ_REASON_HEADER, INPUT_WIDTH, Shutdown, Worker, WorkerConfig,
};
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider};
use opentelemetry::{Context, Value};

/// A worker consuming `queue` on its own channel (prefetch 50), replying through its own
/// publisher.
async fn worker(
    h: &AmqpHarness,
    queue: &str,
    config: WorkerConfig,
) -> (
    Channel,
    Worker<TracedConsumer, TracedPublisher, InMemoryFeatureStore, CpuModel>,
) {
    let (channel, source) = h.consumer_with_prefetch(queue, 50).await;
    let worker = Worker::with_instrumentation(
        source,
        h.publisher().await,
        InMemoryFeatureStore::generated(100, 7),
        CpuModel::new("fraud-mlp", "test", Mlp::seeded(INPUT_WIDTH, &[32, 16], 7)),
        config,
        h.capture.instrumentation(),
    );
    (channel, worker)
}

fn request(i: usize) -> (String, String) {
    let id = format!("r-{i}");
    let body = format!(
        r#"{{"request_id":"{id}","user_id":"user-{}","amount":{}.25,"merchant_category":"grocery","country":"FR","hour":{},"card_present":true}}"#,
        i % 100,
        (i * 53) % 7000,
        i % 24,
    );
    (id, body)
}

#[tokio::test]
async fn two_workers_on_one_queue_answer_every_request_in_its_trace() {
    let h = AmqpHarness::new("inference-requests").await;
    let replies = h
        .rabbit
        .declare_queue("inference-replies")
        .await
        .expect("queue");
    let dead_letters = h
        .rabbit
        .declare_queue("inference-dlq")
        .await
        .expect("queue");
    let config = || {
        WorkerConfig::new(&replies, &dead_letters)
            .with_batch(BatchConfig::new(20, Duration::from_millis(20)))
            .with_link_limit(128)
    };
    // Both consumers are registered before anything is published, so RabbitMQ spreads the
    // deliveries over them.
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (channel, mut worker) = worker(&h, &h.queue, config()).await;
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { worker.run(&stop).await });
        workers.push((channel, shutdown, task));
    }

    // 120 requests, each in its own trace, with message id and timestamp; and one malformed.
    let publisher = h.publisher().await;
    let tracer = h.capture.tracer_provider().tracer("caller");
    let mut traces: HashMap<String, TraceId> = HashMap::new();
    let mut bodies: Vec<_> = (0..120).map(request).collect();
    bodies.push(("broken".into(), r#"{"request_id":"broken""#.into()));
    for (id, body) in &bodies {
        let cx = Context::current_with_span(tracer.start("inference.request"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
        publisher
            .publish_with_context(
                "",
                &h.queue,
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_timestamp(now.as_secs()),
                &cx,
            )
            .await
            .expect("request published");
        traces.insert(id.clone(), cx.span().span_context().trace_id());
        cx.span().end();
    }

    // The caller reads its 120 answers.
    let mut reader = h.consumer_of(&replies).await;
    let mut answered = HashSet::new();
    while answered.len() < 120 {
        let delivery = next(&mut reader).await;
        let reply: serde_json::Value =
            serde_json::from_slice(&delivery.delivery().data).expect("reply is JSON");
        answered.insert(reply["request_id"].as_str().expect("id").to_owned());
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let mut dlq = h.consumer_of(&dead_letters).await;
    let letter = next(&mut dlq).await;
    assert_eq!(letter.delivery().data, br#"{"request_id":"broken""#);
    let reason = letter
        .delivery()
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(DLQ_REASON_HEADER).cloned());
    assert!(matches!(reason, Some(AMQPValue::ByteArray(ref b)) if b.as_slice() == b"not_json"));

    let mut stats = Vec::new();
    for (channel, shutdown, task) in workers {
        shutdown.trigger();
        let worker_stats = tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("worker stops")
            .expect("worker task")
            .expect("worker ran");
        // Closing the channel would give back any unacknowledged delivery.
        channel.close(200, "test done".into()).await.expect("close");
        stats.push(worker_stats);
    }
    assert!(
        stats.iter().all(|s| s.messages > 0),
        "both workers got work: {stats:?}"
    );
    assert_eq!(stats.iter().map(|s| s.messages).sum::<u64>(), 121);
    assert_eq!(stats.iter().map(|s| s.replies).sum::<u64>(), 120);
    let expected: HashSet<String> = (0..120).map(|i| format!("r-{i}")).collect();
    assert_eq!(answered, expected);
    let left = h
        .rabbit
        .channel()
        .await
        .expect("channel")
        .queue_declare(
            h.queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(left.message_count(), 0, "every request was acknowledged");

    let spans = h.capture.spans();
    let batches = spans.named(&format!("process {}", h.queue));
    let batch_ids: HashSet<SpanId> = batches.iter().map(|b| b.span_context.span_id()).collect();
    let mut linked_ids = HashSet::new();
    for batch in &batches {
        spans.assert_kind(batch, SpanKind::Consumer);
        spans.assert_root(batch);
        spans.assert_attr(batch, "messaging.system", "rabbitmq");
        for link in batch.links.iter() {
            let attr = |key: &str| {
                link.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.clone())
            };
            assert!(matches!(
                attr("messaging.rabbitmq.message.delivery_tag"),
                Some(Value::I64(_))
            ));
            match attr("messaging.message.id") {
                Some(Value::String(id)) => linked_ids.insert(id.as_str().to_owned()),
                other => panic!("link without message id: {other:?}"),
            };
        }
        // acks are settle spans of the batch
        let acks = spans
            .in_trace(batch.span_context.trace_id())
            .into_iter()
            .filter(|s| s.name == format!("ack {}", h.queue))
            .count();
        assert_eq!(acks, batch.links.len());
    }
    assert_eq!(linked_ids.len(), 121, "every delivery linked by its batch");
    let reply_spans = spans.named(&format!("send {replies}"));
    assert_eq!(reply_spans.len(), 120);
    for reply in reply_spans {
        spans.assert_kind(reply, SpanKind::Producer);
        let parent = spans.by_id(reply.parent_span_id).expect("reply parent");
        assert_eq!(parent.name, format!("send {}", h.queue));
        assert_eq!(
            parent.span_context.trace_id(),
            reply.span_context.trace_id()
        );
        assert!(
            reply
                .links
                .iter()
                .any(|l| batch_ids.contains(&l.span_context.span_id()))
        );
        assert!(spans.attr(reply, "ml.decision").is_some());
    }
    let dead_letter_send = spans.one(&format!("send {dead_letters}"));
    assert_eq!(
        dead_letter_send.links[0].span_context.trace_id(),
        traces["broken"]
    );
}
