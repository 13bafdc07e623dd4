//! The batch-inference worker end to end on the embedded Kafka: batch spans link every
//! request, replies stay in their requests' traces, malformed requests are dead-lettered,
//! a worker killed mid-batch loses nothing, two workers share a group through rebalances,
//! and profiles come from the real Redis (MQTRACE_REDIS_URL) as well as from memory.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::stalling_sink::StallingSink;
use mqtrace::core::batch::{MessageSink, Outgoing};
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::{FeatureStore, InMemoryFeatureStore, RedisFeatureStore};
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::{
    BatchConfig, DLQ_REASON_HEADER, INPUT_WIDTH, LinkAttributes, Shutdown, Worker, WorkerConfig,
    WorkerStats,
};
use mqtrace::kafka::rdkafka::consumer::Consumer;
use mqtrace::kafka::rdkafka::message::{Headers, Message};
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace_testkit::capture::TelemetryCapture;
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry::trace::{
    Link, SpanId, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::SpanData;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Pipeline {
    kafka: KafkaFixture,
    capture: TelemetryCapture,
    requests: String,
    replies: String,
    dead_letters: String,
    group: String,
}

impl Pipeline {
    async fn new(prefix: &str, partitions: i32) -> Self {
        let kafka = KafkaFixture::start().expect("Kafka fixture");
        let requests = kafka.create_topic(prefix, partitions).await.expect("topic");
        let replies = kafka.create_topic("replies", 1).await.expect("topic");
        let dead_letters = kafka.create_topic("dlq", 1).await.expect("topic");
        Self {
            kafka,
            capture: TelemetryCapture::new(),
            requests,
            replies,
            dead_letters,
            group: unique_name("scorers"),
        }
    }

    fn producer(&self) -> TracedProducer {
        TracedProducer::from_config(&self.kafka.producer_config())
            .expect("producer")
            .with_instrumentation(self.capture.instrumentation())
    }

    /// A consumer of `topic`'s `partitions`, resuming from the group's committed offsets
    /// (assigned directly: no group-join wait).
    fn consumer(&self, group: &str, topic: &str, partitions: i32) -> TracedConsumer {
        let consumer = TracedConsumer::from_config(&self.kafka.consumer_config(group))
            .expect("consumer")
            .with_instrumentation(self.capture.instrumentation());
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Stored)
                .expect("partition");
        }
        consumer.inner().assign(&assignment).expect("assign");
        consumer
    }

    fn worker<K: MessageSink>(
        &self,
        sink: K,
        partitions: i32,
        config: WorkerConfig,
    ) -> Worker<TracedConsumer, K, InMemoryFeatureStore, CpuModel> {
        self.worker_with(
            self.consumer(&self.group, &self.requests, partitions),
            sink,
            profiles(),
            config,
        )
    }

    fn worker_with<K: MessageSink, F: FeatureStore>(
        &self,
        consumer: TracedConsumer,
        sink: K,
        store: F,
        config: WorkerConfig,
    ) -> Worker<TracedConsumer, K, F, CpuModel> {
        Worker::with_instrumentation(
            consumer,
            sink,
            store,
            CpuModel::new("fraud-mlp", "test", Mlp::seeded(INPUT_WIDTH, &[32, 16], 7)),
            config,
            self.capture.instrumentation(),
        )
    }

    /// A consumer of the request topic that joins `group` (partitions assigned by the group).
    fn group_member(&self, group: &str, client_id: &str) -> TracedConsumer {
        let mut config = self.kafka.consumer_config(group);
        config.set("client.id", client_id);
        let consumer = TracedConsumer::from_config(&config)
            .expect("consumer")
            .with_instrumentation(self.capture.instrumentation());
        consumer
            .inner()
            .subscribe(&[&self.requests])
            .expect("subscribe");
        consumer
    }

    fn config(&self, max_batch: usize, max_wait: Duration) -> WorkerConfig {
        WorkerConfig::new(&self.replies, &self.dead_letters)
            .with_batch(BatchConfig::new(max_batch, max_wait))
            .with_link_limit(128)
    }

    /// Sends `bodies`, each in its own `inference.request` trace; returns request id →
    /// that request's trace id.
    async fn send_requests(&self, bodies: &[(String, String)]) -> HashMap<String, TraceId> {
        self.send_requests_keyed(bodies, |_| "user-1").await
    }

    /// [`Self::send_requests`] with each request's key chosen by `key` (from its id).
    async fn send_requests_keyed<'k>(
        &self,
        bodies: &'k [(String, String)],
        key: impl Fn(&'k str) -> &'k str,
    ) -> HashMap<String, TraceId> {
        let producer = self.producer();
        let tracer = self.capture.tracer_provider().tracer("caller");
        let mut traces = HashMap::new();
        for (id, body) in bodies {
            let cx = Context::current_with_span(tracer.start("inference.request"));
            producer
                .send_with_context(
                    FutureRecord::<str, str>::to(&self.requests)
                        .payload(body)
                        .key(key(id)),
                    TIMEOUT,
                    &cx,
                )
                .await
                .expect("request delivered");
            traces.insert(id.clone(), cx.span().span_context().trace_id());
            cx.span().end();
        }
        traces
    }

    /// Reads `count` messages of `topic` (one partition) from the beginning.
    async fn read(
        &self,
        topic: &str,
        count: usize,
    ) -> Vec<mqtrace::kafka::rdkafka::message::OwnedMessage> {
        let consumer = self.consumer(&unique_name("reader"), topic, 1);
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            let message = tokio::time::timeout(TIMEOUT, consumer.recv())
                .await
                .expect("message in time")
                .expect("message");
            messages.push(message.detach().message().clone());
        }
        messages
    }
}

fn valid_request(i: usize) -> (String, String) {
    let id = format!("r-{i}");
    let body = format!(
        r#"{{"request_id":"{id}","user_id":"user-{}","amount":{}.5,"merchant_category":"travel","country":"DE","hour":{},"card_present":{}}}"#,
        i % 100,
        (i * 37) % 9000,
        i % 24,
        !i.is_multiple_of(3)
    );
    (id, body)
}

fn request_id(payload: &[u8]) -> String {
    let reply: serde_json::Value = serde_json::from_slice(payload).expect("reply is JSON");
    reply["request_id"].as_str().expect("request_id").to_owned()
}

fn profiles() -> InMemoryFeatureStore {
    InMemoryFeatureStore::generated(100, 7)
}

/// Runs `worker` until `replies` replies are on the reply topic, then shuts it down.
async fn run_until_answered<K: MessageSink + 'static, F: FeatureStore + 'static>(
    pipeline: &Pipeline,
    worker: Worker<TracedConsumer, K, F, CpuModel>,
    replies: usize,
) -> (WorkerStats, Vec<String>) {
    let (stats, answered) = run_until_replied(pipeline, worker, &pipeline.replies, replies).await;
    let ids = answered
        .iter()
        .map(|m| request_id(m.payload().expect("payload")))
        .collect();
    (stats, ids)
}

/// Runs `worker` until `count` replies are on `topic`, then shuts it down; returns its stats
/// and the replies.
async fn run_until_replied<K: MessageSink + 'static, F: FeatureStore + 'static>(
    pipeline: &Pipeline,
    mut worker: Worker<TracedConsumer, K, F, CpuModel>,
    topic: &str,
    count: usize,
) -> (
    WorkerStats,
    Vec<mqtrace::kafka::rdkafka::message::OwnedMessage>,
) {
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { worker.run(&stop).await });
    let answered = pipeline.read(topic, count).await;
    shutdown.trigger();
    let stats = tokio::time::timeout(TIMEOUT, running)
        .await
        .expect("worker stops")
        .expect("worker task")
        .expect("worker ran");
    (stats, answered)
}

fn int(spans: &mqtrace_testkit::capture::SpanGraph, span: &SpanData, key: &str) -> i64 {
    match spans.attr(span, key) {
        Some(Value::I64(v)) => *v,
        other => panic!("{key} on {}: {other:?}", span.name),
    }
}

fn link_attr<'l>(link: &'l Link, key: &str) -> Option<&'l Value> {
    link.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// Every link of a batch span and its `batch.links` children.
fn batch_links<'s>(
    spans: &'s mqtrace_testkit::capture::SpanGraph,
    batch: &'s SpanData,
) -> Vec<&'s Link> {
    let mut links: Vec<&Link> = batch.links.iter().collect();
    for child in spans.named("batch.links") {
        if child.parent_span_id == batch.span_context.span_id() {
            links.extend(child.links.iter());
        }
    }
    links
}

#[tokio::test]
async fn batch_spans_link_every_request_and_replies_stay_in_request_traces() {
    let pipeline = Pipeline::new("requests", 2).await;
    let bodies: Vec<_> = (0..300).map(valid_request).collect();
    let traces = pipeline.send_requests(&bodies).await;
    let worker = pipeline.worker(
        pipeline.producer(),
        2,
        pipeline.config(100, Duration::from_millis(50)),
    );
    let (stats, answered) = run_until_answered(&pipeline, worker, 300).await;
    assert_eq!(stats.messages, 300);
    assert_eq!(stats.replies, 300);
    assert_eq!(answered.iter().collect::<HashSet<_>>().len(), 300);

    let spans = pipeline.capture.spans();
    let batch_name = format!("process {}", pipeline.requests);
    let batches = spans.named(&batch_name);
    assert!(!batches.is_empty());
    let mut linked = HashSet::new();
    let mut counted = 0;
    for batch in &batches {
        spans.assert_kind(batch, SpanKind::Consumer);
        spans.assert_root(batch);
        spans.assert_attr(
            batch,
            "messaging.consumer.group.name",
            pipeline.group.clone(),
        );
        let count = int(&spans, batch, "messaging.batch.message_count");
        counted += count;
        let links = batch_links(&spans, batch);
        assert_eq!(
            links.len() as i64,
            count,
            "links count equals messages consumed"
        );
        for link in links {
            assert!(link_attr(link, "messaging.destination.partition.id").is_some());
            assert!(link_attr(link, "messaging.kafka.offset").is_some());
            linked.insert(link.span_context.trace_id());
        }
        // the stages, each a child of the batch span
        for stage in [
            "features.fetch",
            "features.preprocess",
            "model.execute",
            "postprocess",
        ] {
            let stage_span = spans
                .in_trace(batch.span_context.trace_id())
                .into_iter()
                .find(|s| s.name == stage)
                .unwrap_or_else(|| panic!("{stage} in the batch trace"));
            spans.assert_child_of(stage_span, batch);
        }
        let model = spans
            .in_trace(batch.span_context.trace_id())
            .into_iter()
            .find(|s| s.name == "model.execute")
            .expect("model.execute");
        spans.assert_attr(model, "ml.inference.batch_size", count);
        spans.assert_attr(model, "ml.model.name", "fraud-mlp");
        spans.assert_attr(model, "ml.device.type", "cpu");
        let compute = spans
            .in_trace(batch.span_context.trace_id())
            .into_iter()
            .find(|s| s.name == "cpu.compute")
            .expect("cpu.compute phase");
        spans.assert_child_of(compute, model);
        let commit = spans
            .in_trace(batch.span_context.trace_id())
            .into_iter()
            .find(|s| s.name.starts_with("commit "))
            .expect("commit span");
        spans.assert_child_of(commit, batch);
    }
    assert_eq!(counted, 300);
    let request_traces: HashSet<TraceId> = traces.values().copied().collect();
    assert_eq!(
        linked, request_traces,
        "the batches link exactly the 300 request traces"
    );

    // Every reply's send span: in its request's trace, child of the request's send span,
    // linked to the batch that answered it, with the decision (never the raw score).
    let batch_ids: HashSet<SpanId> = batches.iter().map(|b| b.span_context.span_id()).collect();
    let reply_spans = spans.named(&format!("send {}", pipeline.replies));
    assert_eq!(reply_spans.len(), 300);
    for reply in reply_spans {
        spans.assert_kind(reply, SpanKind::Producer);
        let parent = spans
            .by_id(reply.parent_span_id)
            .expect("reply parent exported");
        assert_eq!(parent.name, format!("send {}", pipeline.requests));
        assert!(request_traces.contains(&reply.span_context.trace_id()));
        assert!(
            reply
                .links
                .iter()
                .any(|l| batch_ids.contains(&l.span_context.span_id())),
            "reply links to its batch"
        );
        assert!(spans.attr(reply, "ml.decision").is_some());
        assert!(spans.attr(reply, "ml.output.score_bucket").is_some());
        assert!(spans.attr(reply, "ml.output.score").is_none());
    }

    let metrics = pipeline.capture.metrics();
    for name in [
        "mqtrace.worker.batch.size",
        "mqtrace.worker.queue.wait",
        "mqtrace.inference.duration",
        "mqtrace.inference.decisions",
    ] {
        assert!(
            metrics.find(name).is_some(),
            "{name} in {:?}",
            metrics.names()
        );
    }
    assert_eq!(metrics.total("mqtrace.inference.decisions"), 300.0);
}

#[tokio::test]
async fn a_1000_message_batch_is_fully_linked() {
    let pipeline = Pipeline::new("big", 1).await;
    let bodies: Vec<_> = (0..1000).map(valid_request).collect();
    let traces = pipeline.send_requests(&bodies).await;
    let worker = pipeline.worker(
        pipeline.producer(),
        1,
        pipeline.config(1000, Duration::from_secs(20)),
    );
    let (stats, _) = run_until_answered(&pipeline, worker, 1000).await;
    assert_eq!(stats.batches, 1, "all 1000 requests in one batch");

    let spans = pipeline.capture.spans();
    let batch = spans.one(&format!("process {}", pipeline.requests));
    spans.assert_attr(batch, "messaging.batch.message_count", 1000_i64);
    assert_eq!(
        batch.links.len(),
        128,
        "the batch span holds the link limit"
    );
    assert_eq!(batch.links.dropped_count, 0);
    let children: Vec<_> = spans
        .named("batch.links")
        .into_iter()
        .filter(|c| c.parent_span_id == batch.span_context.span_id())
        .collect();
    assert_eq!(children.len(), 7, "872 more links in chunks of 128");
    assert!(children.iter().all(|c| c.links.dropped_count == 0));
    let linked: HashSet<TraceId> = batch_links(&spans, batch)
        .iter()
        .map(|l| l.span_context.trace_id())
        .collect();
    assert_eq!(linked, traces.values().copied().collect::<HashSet<_>>());
}

#[tokio::test]
async fn a_worker_configured_for_bare_links_links_every_request_without_attributes() {
    let pipeline = Pipeline::new("bare-links", 1).await;
    let bodies: Vec<_> = (0..300).map(valid_request).collect();
    let traces = pipeline.send_requests(&bodies).await;
    let worker = pipeline.worker(
        pipeline.producer(),
        1,
        pipeline
            .config(300, Duration::from_secs(20))
            .with_link_attributes(LinkAttributes::None),
    );
    let (stats, _) = run_until_answered(&pipeline, worker, 300).await;
    assert_eq!(stats.batches, 1, "all 300 requests in one batch");

    let spans = pipeline.capture.spans();
    let batch = spans.one(&format!("process {}", pipeline.requests));
    let links = batch_links(&spans, batch);
    assert_eq!(
        links.len(),
        300,
        "128 on the batch span, 172 on two batch.links spans"
    );
    assert!(
        links.iter().all(|l| l.attributes.is_empty()),
        "span contexts only"
    );
    let linked: HashSet<TraceId> = links.iter().map(|l| l.span_context.trace_id()).collect();
    assert_eq!(linked, traces.values().copied().collect::<HashSet<_>>());
}

#[tokio::test]
async fn malformed_requests_are_dead_lettered_with_a_link_to_the_original() {
    let pipeline = Pipeline::new("dlq-source", 1).await;
    let mut bodies: Vec<_> = (0..7).map(valid_request).collect();
    bodies.push(("bad-json".into(), r#"{"request_id":"bad-json","#.into()));
    bodies.push((
        "no-user".into(),
        r#"{"request_id":"no-user","amount":3}"#.into(),
    ));
    bodies.push((
        "bad-amount".into(),
        r#"{"request_id":"bad-amount","user_id":"user-1","amount":"x"}"#.into(),
    ));
    let traces = pipeline.send_requests(&bodies).await;
    let worker = pipeline.worker(
        pipeline.producer(),
        1,
        pipeline.config(10, Duration::from_secs(5)),
    );
    let (stats, answered) = run_until_answered(&pipeline, worker, 7).await;
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(stats.replies, 7);
    assert_eq!(answered.len(), 7);

    let letters = pipeline.read(&pipeline.dead_letters, 3).await;
    let mut reasons: Vec<String> = letters
        .iter()
        .map(|m| {
            let headers = m.headers().expect("dead-letter headers");
            let reason = headers
                .iter()
                .find(|h| h.key == DLQ_REASON_HEADER)
                .and_then(|h| h.value)
                .expect("reason header");
            String::from_utf8(reason.to_vec()).expect("utf-8")
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_field", "missing_field", "not_json"]);
    // the original payload is kept as it was
    assert!(
        letters
            .iter()
            .any(|m| m.payload() == Some(br#"{"request_id":"bad-json","#.as_slice()))
    );

    let spans = pipeline.capture.spans();
    let batch = spans.one(&format!("process {}", pipeline.requests));
    let dlq_sends = spans.named(&format!("send {}", pipeline.dead_letters));
    assert_eq!(dlq_sends.len(), 3);
    let bad_traces: HashSet<TraceId> = ["bad-json", "no-user", "bad-amount"]
        .iter()
        .map(|id| traces[*id])
        .collect();
    for send in dlq_sends {
        spans.assert_child_of(send, batch);
        assert_eq!(send.links.len(), 1);
        assert!(bad_traces.contains(&send.links[0].span_context.trace_id()));
    }
    assert_eq!(
        batch
            .events
            .iter()
            .filter(|e| e.name == "request.dead_lettered")
            .count(),
        3
    );
    let metrics = pipeline.capture.metrics();
    assert_eq!(metrics.total("mqtrace.worker.dead_lettered"), 3.0);
}

#[tokio::test]
async fn a_worker_killed_mid_batch_is_replaced_and_every_request_is_answered() {
    let pipeline = Pipeline::new("crash", 1).await;
    let bodies: Vec<_> = (0..200).map(valid_request).collect();
    pipeline.send_requests(&bodies).await;

    // Worker A answers 130 requests, then hangs in the middle of its second batch of 100.
    let dying = Arc::new(StallingSink::after(130, pipeline.producer()));
    let mut first = pipeline.worker(
        SharedSink(Arc::clone(&dying)),
        1,
        pipeline.config(100, Duration::from_millis(50)),
    );
    let shutdown = Shutdown::new();
    let running = tokio::spawn(async move { first.run(&shutdown).await });
    let before_crash = pipeline.read(&pipeline.replies, 130).await;
    assert_eq!(before_crash.len(), 130);
    // Kill it: its second batch was never settled.
    running.abort();
    assert!(running.await.expect_err("aborted").is_cancelled());

    // Worker B, same group, picks up from the committed offsets; run it until every
    // request has an answer on the reply topic (from either worker).
    let mut second = pipeline.worker(
        pipeline.producer(),
        1,
        pipeline.config(100, Duration::from_millis(50)),
    );
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { second.run(&stop).await });
    let expected: HashSet<String> = bodies.iter().map(|(id, _)| id.clone()).collect();
    let reader = pipeline.consumer(&unique_name("reader"), &pipeline.replies, 1);
    let mut answered = HashSet::new();
    while answered != expected {
        let message = tokio::time::timeout(TIMEOUT, reader.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 200 answered", answered.len()))
            .expect("reply");
        answered.insert(request_id(message.payload().expect("payload")));
    }
    shutdown.trigger();
    let stats = running.await.expect("worker task").expect("worker ran");
    assert!(
        stats.messages >= 70,
        "the unsettled batch came back: {stats:?}"
    );
    // A answered requests 0..130 but committed at most 100 of them, so B (which answered
    // everything from A's committed offset on) answered at least 30 of them again.
    assert!(
        130 + stats.replies > 200,
        "at-least-once: the killed batch's replies were sent again ({} by B)",
        stats.replies
    );
}

/// Lets a test keep a handle on the sink it gave a worker.
struct SharedSink<K>(Arc<K>);

impl<K: MessageSink> MessageSink for SharedSink<K> {
    type Error = K::Error;

    async fn send(
        &self,
        message: Outgoing<'_>,
        parent: &Context,
        links: Vec<Link>,
    ) -> Result<(), Self::Error> {
        self.0.send(message, parent, links).await
    }
}

#[tokio::test]
async fn per_message_process_spans_put_each_request_in_its_own_trace() {
    let pipeline = Pipeline::new("per-message", 1).await;
    let bodies: Vec<_> = (0..20).map(valid_request).collect();
    let traces = pipeline.send_requests(&bodies).await;
    let worker = pipeline.worker(
        pipeline.producer(),
        1,
        pipeline
            .config(20, Duration::from_secs(5))
            .with_per_message_spans(true),
    );
    run_until_answered(&pipeline, worker, 20).await;

    let spans = pipeline.capture.spans();
    let process_name = format!("process {}", pipeline.requests);
    let batch = spans
        .named(&process_name)
        .into_iter()
        .find(|s| s.parent_span_id == SpanId::INVALID)
        .expect("the batch span is a root");
    let per_message: Vec<_> = spans
        .named(&process_name)
        .into_iter()
        .filter(|s| s.parent_span_id != SpanId::INVALID)
        .collect();
    assert_eq!(per_message.len(), 20);
    let request_traces: HashSet<TraceId> = traces.values().copied().collect();
    for process in per_message {
        spans.assert_kind(process, SpanKind::Consumer);
        assert!(request_traces.contains(&process.span_context.trace_id()));
        let parent = spans.by_id(process.parent_span_id).expect("parent");
        assert_eq!(parent.name, format!("send {}", pipeline.requests));
        spans.assert_links_to(process, batch);
        assert!(spans.attr(process, "ml.decision").is_some());
        let reply = spans
            .in_trace(process.span_context.trace_id())
            .into_iter()
            .find(|s| s.name == format!("send {}", pipeline.replies))
            .expect("reply in the request's trace");
        spans.assert_child_of(reply, process);
    }
}

fn redis_url() -> String {
    std::env::var("MQTRACE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test]
async fn profiles_from_redis_score_exactly_like_profiles_from_memory() {
    let pipeline = Pipeline::new("redis", 1).await;
    let store = RedisFeatureStore::connect(&redis_url())
        .await
        .expect("Redis (scripts/ensure-redis starts it)")
        .with_key_prefix(format!("{}:", unique_name("mqtrace-test")));
    assert_eq!(store.load(&profiles()).await.expect("profiles loaded"), 100);
    // A value that is not a profile: the worker treats it as a missing profile.
    let mut connection = store.inner().clone();
    redis::cmd("SET")
        .arg(store.key("user-5"))
        .arg("{not a profile")
        .query_async::<()>(&mut connection)
        .await
        .expect("SET");

    let bodies: Vec<_> = (0..60).map(valid_request).collect();
    pipeline.send_requests(&bodies).await;
    let config = |replies: &str| {
        WorkerConfig::new(replies, &pipeline.dead_letters)
            .with_batch(BatchConfig::new(25, Duration::from_millis(50)))
    };
    // The same requests, scored once with Redis and once with the same profiles in memory.
    let from_redis = pipeline.worker_with(
        pipeline.consumer(&unique_name("redis"), &pipeline.requests, 1),
        pipeline.producer(),
        store.clone(),
        config(&pipeline.replies),
    );
    let (redis_stats, redis_replies) =
        run_until_replied(&pipeline, from_redis, &pipeline.replies, 60).await;
    let memory_topic = pipeline
        .kafka
        .create_topic("replies-memory", 1)
        .await
        .expect("topic");
    let from_memory = pipeline.worker_with(
        pipeline.consumer(&unique_name("memory"), &pipeline.requests, 1),
        pipeline.producer(),
        profiles(),
        config(&memory_topic),
    );
    let (_, memory_replies) = run_until_replied(&pipeline, from_memory, &memory_topic, 60).await;

    let by_id = |replies: &[mqtrace::kafka::rdkafka::message::OwnedMessage]| {
        replies
            .iter()
            .map(|m| {
                let payload = m.payload().expect("payload");
                (request_id(payload), payload.to_vec())
            })
            .collect::<HashMap<_, _>>()
    };
    let (redis_by_id, memory_by_id) = (by_id(&redis_replies), by_id(&memory_replies));
    assert_eq!(redis_by_id.len(), 60);
    for (id, reply) in &memory_by_id {
        if id != "r-5" {
            assert_eq!(
                String::from_utf8_lossy(&redis_by_id[id]),
                String::from_utf8_lossy(reply),
                "request {id}: Redis and memory profiles give the same reply"
            );
        }
    }

    let spans = pipeline.capture.spans();
    let fetches: Vec<_> = spans
        .named("features.fetch")
        .into_iter()
        .filter(|s| spans.attr(s, "db.system.name") == Some(&Value::from("redis")))
        .collect();
    assert_eq!(
        fetches.len() as u64,
        redis_stats.batches,
        "one fetch span (one MGET) per batch"
    );
    for fetch in &fetches {
        spans.assert_attr(fetch, "db.operation.name", "MGET");
        assert!(spans.attr(fetch, "server.address").is_some());
        assert!(spans.attr(fetch, "server.port").is_some());
    }
    assert_eq!(
        fetches
            .iter()
            .flat_map(|s| s.events.iter())
            .filter(|e| e.name == "feature_store.corrupt_values")
            .count(),
        1,
        "the corrupt profile is reported on its batch's fetch span"
    );
    let missing_profiles: f64 = pipeline
        .capture
        .metrics()
        .points("mqtrace.inference.feature.missing")
        .iter()
        .filter(|p| p.has("ml.feature.name", "user_profile"))
        .map(|p| p.value)
        .sum();
    assert_eq!(missing_profiles, 1.0, "only r-5's profile was missing");
    assert_eq!(store.clear().await.expect("clear"), 100);
}

/// A producer sink that counts what it sent, so a test can tell which worker answered.
struct CountingSink {
    inner: TracedProducer,
    sent: AtomicUsize,
}

impl MessageSink for CountingSink {
    type Error = mqtrace::kafka::Error;

    async fn send(
        &self,
        message: Outgoing<'_>,
        parent: &Context,
        links: Vec<Link>,
    ) -> Result<(), Self::Error> {
        MessageSink::send(&self.inner, message, parent, links).await?;
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Reads replies from `reader` until every id of `expected` has been answered; counts every
/// reply per request id in `answered`.
async fn await_answers(
    reader: &TracedConsumer,
    answered: &mut HashMap<String, usize>,
    expected: &HashSet<String>,
) {
    while !expected.iter().all(|id| answered.contains_key(id)) {
        let message = tokio::time::timeout(TIMEOUT, reader.recv())
            .await
            .unwrap_or_else(|_| {
                let missing = expected.iter().filter(|id| !answered.contains_key(*id));
                panic!(
                    "unanswered after {TIMEOUT:?}: {:?}",
                    missing.collect::<Vec<_>>()
                )
            })
            .expect("reply");
        *answered
            .entry(request_id(message.payload().expect("payload")))
            .or_default() += 1;
    }
}

#[tokio::test]
async fn two_workers_in_one_group_answer_everything_through_rebalances() {
    let pipeline = Pipeline::new("rebalance", 4).await;
    let config = || pipeline.config(20, Duration::from_millis(20));
    let spawn = |mut worker: Worker<_, _, InMemoryFeatureStore, CpuModel>| {
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        (
            shutdown,
            tokio::spawn(async move { worker.run(&stop).await }),
        )
    };
    let sink = || {
        Arc::new(CountingSink {
            inner: pipeline.producer(),
            sent: AtomicUsize::new(0),
        })
    };
    let reader = pipeline.consumer(&unique_name("reader"), &pipeline.replies, 1);
    let mut answered: HashMap<String, usize> = HashMap::new();
    let mut traces: HashMap<String, TraceId> = HashMap::new();
    let mut next_request = 0;
    // Requests keyed by their own id, so they spread over the 4 partitions.
    let mut send = async |count: usize| {
        let bodies: Vec<_> = (next_request..next_request + count)
            .map(valid_request)
            .collect();
        next_request += count;
        let sent = pipeline.send_requests_keyed(&bodies, |id| id).await;
        traces.extend(sent.clone());
        sent.into_keys().collect::<HashSet<_>>()
    };

    // Worker A alone owns the 4 partitions.
    let a_sink = sink();
    let (stop_a, a) = spawn(pipeline.worker_with(
        pipeline.group_member(&pipeline.group, "worker-a"),
        SharedSink(Arc::clone(&a_sink)),
        profiles(),
        config(),
    ));
    let first = send(100).await;
    await_answers(&reader, &mut answered, &first).await;

    // Worker B joins: the group rebalances while requests keep coming, until B answers some.
    let b_sink = sink();
    let (stop_b, b) = spawn(pipeline.worker_with(
        pipeline.group_member(&pipeline.group, "worker-b"),
        SharedSink(Arc::clone(&b_sink)),
        profiles(),
        config(),
    ));
    let mut rounds = 0;
    while b_sink.sent.load(Ordering::SeqCst) == 0 {
        rounds += 1;
        assert!(rounds <= 60, "worker B never got a partition");
        let round = send(20).await;
        await_answers(&reader, &mut answered, &round).await;
    }

    // Worker A leaves (graceful: its open batch is answered and committed); B takes over.
    stop_a.trigger();
    let a_stats = tokio::time::timeout(TIMEOUT, a)
        .await
        .expect("A stops")
        .expect("A's task")
        .expect("A ran");
    let last = send(100).await;
    await_answers(&reader, &mut answered, &last).await;
    stop_b.trigger();
    let b_stats = tokio::time::timeout(TIMEOUT, b)
        .await
        .expect("B stops")
        .expect("B's task")
        .expect("B ran");

    // Every request answered; every delivery answered exactly once.
    let all: HashSet<String> = traces.keys().cloned().collect();
    assert_eq!(answered.keys().cloned().collect::<HashSet<_>>(), all);
    assert!(
        a_stats.messages > 0 && b_stats.messages > 0,
        "{a_stats:?} {b_stats:?}"
    );
    assert_eq!(
        a_stats.replies + b_stats.replies,
        a_stats.messages + b_stats.messages,
        "one reply per delivery"
    );
    assert_eq!(
        (a_sink.sent.load(Ordering::SeqCst) + b_sink.sent.load(Ordering::SeqCst)) as u64,
        a_stats.replies + b_stats.replies
    );
    let replies_on_topic: usize = answered.values().sum();
    let delivered = (a_stats.replies + b_stats.replies) as usize;
    assert!(replies_on_topic <= delivered);
    let rest: Vec<_> = pipeline.read(&pipeline.replies, delivered).await;
    assert_eq!(
        rest.len(),
        delivered,
        "the reply topic holds one reply per delivery"
    );

    // Each batch span belongs to one worker; every request's journey is intact: its reply's
    // send span is in the request's trace and links to a batch span that links back to the
    // request.
    let spans = pipeline.capture.spans();
    let batches: HashMap<SpanId, &SpanData> = spans
        .named(&format!("process {}", pipeline.requests))
        .into_iter()
        .map(|b| (b.span_context.span_id(), b))
        .collect();
    let mut workers_seen = HashSet::new();
    for batch in batches.values() {
        match spans.attr(batch, "messaging.client.id") {
            Some(Value::String(id)) => workers_seen.insert(id.as_str().to_owned()),
            other => panic!("batch span without messaging.client.id: {other:?}"),
        };
    }
    assert_eq!(
        workers_seen,
        HashSet::from(["worker-a".to_owned(), "worker-b".to_owned()])
    );
    let reply_name = format!("send {}", pipeline.replies);
    for (id, trace) in &traces {
        let journey = spans.in_trace(*trace);
        let request_send = journey
            .iter()
            .find(|s| s.name == format!("send {}", pipeline.requests))
            .unwrap_or_else(|| panic!("{id}: request send span"));
        let reply = journey
            .iter()
            .find(|s| s.name == reply_name)
            .unwrap_or_else(|| panic!("{id}: no reply span in the request's trace"));
        spans.assert_child_of(reply, request_send);
        let batch = reply
            .links
            .iter()
            .find_map(|l| batches.get(&l.span_context.span_id()))
            .unwrap_or_else(|| panic!("{id}: the reply links to no batch"));
        assert!(
            batch_links(&spans, batch)
                .iter()
                .any(|l| l.span_context.span_id() == request_send.span_context.span_id()),
            "{id}: its batch links back to the request"
        );
    }
}
