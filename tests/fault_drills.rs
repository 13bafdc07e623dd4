//! Fault drills against the real brokers: each drill counts the messages that go in and the
//! ones that come out, and asserts that none is lost and every one is processed at least once
//! (duplicates are allowed and reported).
//!
//! - drill 3: a RabbitMQ connection cut from the broker's side in the middle of publishing
//!   (`rabbitmqctl close_connection`); the publisher reconnects and republishes what the broker
//!   did not confirm, each message in its own trace;
//! - drill 4: the only Kafka broker goes down and comes back while messages are produced and
//!   consumed;
//! - drill 5: a batch worker crashes in the middle of a batch; a new one joins the same consumer
//!   group and answers everything, the crashed batch again;
//! - drill 6: 1,000 messages with hostile headers through Kafka, and as many through RabbitMQ:
//!   every one delivered with a usable context, none panics, unusable headers are counted, and
//!   memory stays bounded.
//!
//! Drills 1 and 2 (the OTLP receiver) live with the telemetry tests. The drills run one at a
//! time (see [`one_at_a_time`]): they load the machine, and drill 6 measures the process's
//! memory. Waits are on conditions with generous timeouts; the one fixed pause is the length
//! of drill 4's outage, which shapes the fault and decides nothing.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::amqp::AmqpHarness;
use common::fraud_requests::{request_id, valid_request};
use common::stalling_sink::StallingSink;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use mqtrace::amqp::lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use mqtrace::amqp::lapin::types::{AMQPValue, ByteArray, FieldTable, LongString};
use mqtrace::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use mqtrace::amqp::publisher::RESEND_COUNT;
use mqtrace::amqp::{Published, TracedPublisher, Unconfirmed};
use mqtrace::core::propagation::{ExtractOutcome, Extracted, Propagation};
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::InMemoryFeatureStore;
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::{BatchConfig, INPUT_WIDTH, Shutdown, Worker, WorkerConfig};
use mqtrace::kafka::headers::{KafkaHeaders, raw_headers};
use mqtrace::kafka::rdkafka::ClientConfig;
use mqtrace::kafka::rdkafka::consumer::Consumer;
use mqtrace::kafka::rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use mqtrace::kafka::rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace_testkit::amqp::{close_connection, connections_named};
use mqtrace_testkit::capture::{SpanGraph, TelemetryCapture};
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry::trace::{Link, SpanId, Status, TraceContextExt, TraceId};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::trace::SpanData;

/// How long any one condition of a drill may take before the drill fails.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Runs the drills one after the other, whatever the test harness's thread count.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static DRILLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    DRILLS.lock().await
}

/// Polls `done` every 10 ms until it holds; fails the drill with `what` after [`TIMEOUT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future`, failing the drill with `what` after [`TIMEOUT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Receives ids from `ids` until every id of `expected` came; returns how often each came.
async fn collect_ids(
    ids: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    expected: &HashSet<String>,
) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut missing = expected.clone();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, ids.recv()).await {
            Ok(Some(id)) => {
                missing.remove(&id);
                *seen.entry(id).or_default() += 1;
            }
            Ok(None) => panic!("the consumer stopped early (see its panic above)"),
            Err(_) => panic!(
                "{} of {} ids never arrived, e.g. {:?}",
                missing.len(),
                expected.len(),
                missing.iter().take(10).collect::<Vec<_>>()
            ),
        }
    }
    seen
}

fn duplicates(seen: &HashMap<String, usize>) -> usize {
    seen.values().map(|n| n - 1).sum()
}

fn int_attr(spans: &SpanGraph, span: &SpanData, key: &str) -> Option<i64> {
    match spans.attr(span, key) {
        Some(Value::I64(v)) => Some(*v),
        _ => None,
    }
}

fn str_attr<'s>(spans: &SpanGraph, span: &'s SpanData, key: &str) -> Option<&'s str> {
    match spans.attr(span, key) {
        Some(Value::String(v)) => Some(v.as_str()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Drill 3: RabbitMQ connection cut mid-publish.

/// Publishes in flight at once: enough that the cut always catches some unconfirmed.
const AMQP_WINDOW: usize = 64;

async fn named_connection(url: &str, name: &str) -> Arc<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Arc::new(
        Connection::connect(url, properties)
            .await
            .expect("a connection to RabbitMQ"),
    )
}

/// Publishes `id` (as body and message id) to `queue` in a trace of its own.
async fn publish_id(
    publisher: &TracedPublisher,
    queue: &str,
    id: String,
) -> (String, mqtrace::amqp::Result<Published>) {
    let result = publisher
        .publish_with_context(
            "",
            queue,
            BasicPublishOptions::default(),
            id.as_bytes(),
            BasicProperties::default().with_message_id(id.as_str().into()),
            &Context::new(),
        )
        .await;
    (id, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_3_rabbitmq_connection_cut_mid_publish_loses_nothing() {
    let _drill = one_at_a_time().await;
    let started = Instant::now();
    let h = AmqpHarness::new("drill-3").await;
    let url = h.rabbit.url().to_owned();
    // A name of its own, so the drill cuts this connection and no other.
    let name = unique_name("mqtrace-drill-3-publisher");
    let publisher = TracedPublisher::open(named_connection(&url, &name).await)
        .await
        .expect("publisher")
        .with_instrumentation(h.capture.instrumentation())
        .with_server_from_url(&url);

    // The consumer is on the fixture's connection, which the drill leaves alone.
    let (consuming, mut ids) = consume_and_ack(h.consumer().await, |delivery| {
        String::from_utf8(delivery.data.clone()).expect("utf-8 id")
    });

    // Cut the connection from the broker's side once 300 publishes were confirmed, while the
    // publisher keeps AMQP_WINDOW publishes in flight. It is looked up first: rabbitmqctl
    // takes about a second per call.
    let pids = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || connections_named(&name))
            .await
            .expect("rabbitmqctl task")
            .expect("rabbitmqctl list_connections")
    };
    assert_eq!(
        pids.len(),
        1,
        "the drill's connection, by its name: {pids:?}"
    );
    let confirmed = Arc::new(AtomicUsize::new(0));
    let cut = {
        let confirmed = Arc::clone(&confirmed);
        let pid = pids[0].clone();
        tokio::spawn(async move {
            wait_until("300 confirmed publishes", || {
                confirmed.load(Ordering::SeqCst) >= 300
            })
            .await;
            tokio::task::spawn_blocking(move || close_connection(&pid, "fault drill 3"))
                .await
                .expect("rabbitmqctl task")
                .expect("rabbitmqctl close_connection");
        })
    };
    let mut published: HashSet<String> = HashSet::new();
    let mut unconfirmed: Vec<Unconfirmed> = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0_usize;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        while unconfirmed.is_empty() && in_flight.len() < AMQP_WINDOW {
            let id = format!("m-{next}");
            next += 1;
            published.insert(id.clone());
            in_flight.push(publish_id(&publisher, &h.queue, id));
        }
        // After the first failure nothing new is published; what is in flight settles.
        let Some((id, result)) = in_flight.next().await else {
            break;
        };
        match result {
            Ok(outcome) => {
                assert_eq!(outcome, Published::Confirmed, "{id}");
                confirmed.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => unconfirmed.push(
                error
                    .into_unconfirmed()
                    .unwrap_or_else(|e| panic!("{id} failed and cannot be republished: {e}")),
            ),
        }
        assert!(Instant::now() < deadline, "the connection was never cut");
    }
    within("rabbitmqctl", cut).await.expect("cutter task");
    assert!(
        !unconfirmed.is_empty(),
        "the cut caught publishes waiting for their confirm"
    );
    assert!(!publisher.connection().status().connected());
    let before_cut = confirmed.load(Ordering::SeqCst);

    // Reconnect, republish what the broker did not confirm, then keep publishing.
    publisher
        .reconnect(named_connection(&url, &format!("{name}-reconnected")).await)
        .await
        .expect("reconnect");
    let failed_sends: HashMap<String, (TraceId, SpanId)> = unconfirmed
        .iter()
        .map(|u| {
            let sc = u.send_span_context();
            (
                String::from_utf8(u.payload().to_vec()).expect("utf-8 id"),
                (sc.trace_id(), sc.span_id()),
            )
        })
        .collect();
    let resends = unconfirmed.len();
    let mut republishing: FuturesUnordered<_> = unconfirmed
        .into_iter()
        .map(|message| publisher.republish(message))
        .collect();
    while let Some(result) = within("republish", republishing.next()).await {
        assert_eq!(result.expect("republished"), Published::Confirmed);
    }
    drop(republishing);
    let mut after: FuturesUnordered<_> = (next..next + 200)
        .map(|i| {
            let id = format!("m-{i}");
            published.insert(id.clone());
            publish_id(&publisher, &h.queue, id)
        })
        .collect();
    while let Some((id, result)) = within("publishing after the reconnect", after.next()).await {
        assert_eq!(result.expect("confirmed"), Published::Confirmed, "{id}");
    }
    drop(after);

    // Every id published came out at least once.
    let seen = collect_ids(&mut ids, &published).await;
    consuming.abort();
    let extra: Vec<_> = seen.keys().filter(|id| !published.contains(*id)).collect();
    assert!(extra.is_empty(), "ids nobody published: {extra:?}");

    // Each republished message kept its trace: its new send span is a child of the failed one
    // and says it is a resend; a process span of it is in that trace.
    let spans = h.capture.spans();
    let send_name = format!("send {}", h.queue);
    let process_name = format!("process {}", h.queue);
    let resend_spans: Vec<&SpanData> = spans
        .named(&send_name)
        .into_iter()
        .filter(|s| int_attr(&spans, s, RESEND_COUNT) == Some(1))
        .collect();
    assert_eq!(resend_spans.len(), resends, "one resend span per republish");
    for resend in &resend_spans {
        assert_eq!(resend.status, Status::Unset, "the resend was confirmed");
        let id = str_attr(&spans, resend, "messaging.message.id").expect("message id");
        let (trace, failed) = failed_sends[id];
        assert_eq!(resend.span_context.trace_id(), trace, "{id} kept its trace");
        assert_eq!(
            resend.parent_span_id, failed,
            "{id}: child of the failed send"
        );
        let failed_span = spans
            .by_id(failed)
            .expect("the failed send span was exported");
        assert!(
            matches!(failed_span.status, Status::Error { .. }),
            "{id}: the failed send span says it failed"
        );
        assert!(
            spans.in_trace(trace).iter().any(|s| s.name == process_name),
            "{id}: its processing is in its original trace"
        );
    }
    println!(
        "drill 3: {} published, {before_cut} confirmed before the cut, {resends} republished, \
         {} delivered ({} duplicates), {:.1} s",
        published.len(),
        seen.values().sum::<usize>(),
        duplicates(&seen),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Drill 4: Kafka broker down and up during produce and consume.

const KAFKA_MESSAGES: usize = 3000;
/// Sends in flight at once.
const KAFKA_WINDOW: usize = 100;
/// How far production may run ahead of consumption, so that both are under way when the
/// broker goes down (the embedded consumer needs a moment to start fetching).
const KAFKA_LAG: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_4_kafka_broker_down_and_up_loses_nothing() {
    let _drill = one_at_a_time().await;
    let started = Instant::now();
    let kafka = KafkaFixture::embedded(1).expect("embedded Kafka");
    let cluster = kafka.embedded_cluster().expect("embedded");
    let topic = kafka.create_topic("drill-4", 2).await.expect("topic");
    let capture = TelemetryCapture::new();

    // The queued messages must outlive the outage; reconnect quickly once the broker is back.
    let mut producer_config = kafka.producer_config();
    producer_config
        .set("message.timeout.ms", "120000")
        .set("reconnect.backoff.max.ms", "500");
    let producer = Arc::new(
        TracedProducer::from_config(&producer_config)
            .expect("producer")
            .with_instrumentation(capture.instrumentation()),
    );
    let mut consumer_config = kafka.consumer_config(&unique_name("drill-4"));
    consumer_config.set("reconnect.backoff.max.ms", "500");
    let consumer = TracedConsumer::from_config(&consumer_config)
        .expect("consumer")
        .with_instrumentation(capture.instrumentation());
    let mut assignment = TopicPartitionList::new();
    for partition in 0..2 {
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.inner().assign(&assignment).expect("assign");

    let (ids_tx, mut ids) = tokio::sync::mpsc::unbounded_channel();
    let consumed = Arc::new(AtomicUsize::new(0));
    let consumed_by_task = Arc::clone(&consumed);
    let consuming = tokio::spawn(async move {
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                // The broker is down: the consumer reports it and keeps fetching.
                Err(_) => continue,
            };
            assert_eq!(message.extracted().outcome, ExtractOutcome::Found);
            consumer
                .process(&message, async { Ok::<_, std::io::Error>(()) })
                .await
                .expect("handler");
            let id = String::from_utf8(message.payload().expect("payload").to_vec()).expect("id");
            consumed_by_task.fetch_add(1, Ordering::SeqCst);
            if ids_tx.send(id).is_err() {
                return;
            }
        }
    });

    let delivered = Arc::new(AtomicUsize::new(0));
    let producing = {
        let producer = Arc::clone(&producer);
        let delivered = Arc::clone(&delivered);
        let consumed = Arc::clone(&consumed);
        let topic = topic.clone();
        tokio::spawn(async move {
            let results: Vec<_> = futures::stream::iter(0..KAFKA_MESSAGES)
                .map(|i| {
                    let (producer, delivered, consumed, topic) =
                        (&producer, &delivered, &consumed, &topic);
                    async move {
                        wait_until("the consumer to keep up", || {
                            consumed.load(Ordering::SeqCst) + KAFKA_LAG >= i
                        })
                        .await;
                        let id = format!("k-{i}");
                        let result = producer
                            .send_with_context(
                                FutureRecord::<str, str>::to(topic).key(&id).payload(&id),
                                Duration::from_secs(120),
                                &Context::new(),
                            )
                            .await
                            .map_err(|e| format!("{id}: {e}"));
                        delivered.fetch_add(1, Ordering::SeqCst);
                        result
                    }
                })
                .buffer_unordered(KAFKA_WINDOW)
                .collect()
                .await;
            results
        })
    };

    // The broker goes down with a third delivered, a sixth consumed and sends in flight, and
    // comes back later.
    wait_until("a third delivered and a sixth consumed", || {
        delivered.load(Ordering::SeqCst) >= KAFKA_MESSAGES / 3
            && consumed.load(Ordering::SeqCst) >= KAFKA_MESSAGES / 6
    })
    .await;
    cluster.broker_down(1).expect("broker down");
    let at_down = delivered.load(Ordering::SeqCst);
    let consumed_at_down = consumed.load(Ordering::SeqCst);
    // The outage's length shapes the fault; nothing is decided by it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_outage = delivered.load(Ordering::SeqCst);
    cluster.broker_up(1).expect("broker up");
    let results = within("the producer", producing)
        .await
        .expect("producer task");
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "the producer's own retries deliver everything: {} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        during_outage < KAFKA_MESSAGES && consumed_at_down < KAFKA_MESSAGES,
        "the outage caught producer and consumer mid-run ({at_down} delivered and \
         {consumed_at_down} consumed at down, {during_outage} delivered by its end)"
    );

    let expected: HashSet<String> = (0..KAFKA_MESSAGES).map(|i| format!("k-{i}")).collect();
    let seen = collect_ids(&mut ids, &expected).await;
    consuming.abort();
    assert_eq!(seen.len(), KAFKA_MESSAGES);

    // One successful send span per message; every processed message continued its trace.
    let spans = capture.spans();
    let sends = spans.named(&format!("send {topic}"));
    assert_eq!(sends.len(), KAFKA_MESSAGES);
    assert!(sends.iter().all(|s| s.status == Status::Unset));
    let send_ids: HashSet<SpanId> = sends.iter().map(|s| s.span_context.span_id()).collect();
    let processes = spans.named(&format!("process {topic}"));
    assert!(processes.len() >= KAFKA_MESSAGES);
    assert!(
        processes
            .iter()
            .all(|p| send_ids.contains(&p.parent_span_id)),
        "every process span is a child of its message's send span"
    );
    println!(
        "drill 4: {KAFKA_MESSAGES} produced ({at_down} delivered and {consumed_at_down} \
         consumed before the outage, {during_outage} delivered by its end), {} consumed \
         ({} duplicates), {:.1} s",
        seen.values().sum::<usize>(),
        duplicates(&seen),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Drill 5: a batch worker crashes mid-batch; a new one restarts in the same group.

/// Reads replies from `reader`, counting them per request id in `answered`, until `done`.
async fn read_replies(
    reader: &TracedConsumer,
    answered: &mut HashMap<String, usize>,
    done: impl Fn(&HashMap<String, usize>) -> bool,
) {
    while !done(answered) {
        let reply = within("a reply", reader.recv()).await.expect("reply");
        *answered
            .entry(request_id(reply.payload().expect("payload")))
            .or_default() += 1;
    }
}

/// `(partition, offset)` of every message a batch span (and its `batch.links` children) links.
fn linked_offsets(spans: &SpanGraph, batch: &SpanData) -> HashSet<(String, i64)> {
    let mut links: Vec<&Link> = batch.links.iter().collect();
    for child in spans.named("batch.links") {
        if child.parent_span_id == batch.span_context.span_id() {
            links.extend(child.links.iter());
        }
    }
    links
        .iter()
        .map(|link| {
            let attr = |key: &str| {
                link.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.clone())
            };
            let partition = match attr("messaging.destination.partition.id") {
                Some(Value::String(p)) => p.as_str().to_owned(),
                other => panic!("link without a partition: {other:?}"),
            };
            let offset = match attr("messaging.kafka.offset") {
                Some(Value::I64(o)) => o,
                other => panic!("link without an offset: {other:?}"),
            };
            (partition, offset)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_5_worker_crash_mid_batch_and_restart_in_the_group_answers_everything() {
    let _drill = one_at_a_time().await;
    let started = Instant::now();
    let kafka = KafkaFixture::start().expect("Kafka");
    let requests = kafka.create_topic("drill-5", 1).await.expect("topic");
    let replies = kafka
        .create_topic("drill-5-replies", 1)
        .await
        .expect("topic");
    let dead_letters = kafka.create_topic("drill-5-dlq", 1).await.expect("topic");
    let group = unique_name("drill-5-scorers");
    let capture = TelemetryCapture::new();
    let producer = || {
        TracedProducer::from_config(&kafka.producer_config())
            .expect("producer")
            .with_instrumentation(capture.instrumentation())
    };
    const REQUESTS: usize = 300;
    let requester = producer();
    for i in 0..REQUESTS {
        requester
            .send_with_context(
                FutureRecord::<str, str>::to(&requests).payload(&valid_request(i)),
                TIMEOUT,
                &Context::new(),
            )
            .await
            .expect("request delivered");
    }

    // Group members (subscribe, not assign): the group hands the partition over.
    let member = |client_id: &str| {
        let mut config = kafka.consumer_config(&group);
        config.set("client.id", client_id);
        let consumer = TracedConsumer::from_config(&config)
            .expect("consumer")
            .with_instrumentation(capture.instrumentation());
        consumer.subscribe(&[&requests]).expect("subscribe");
        consumer
    };
    let config = || {
        WorkerConfig::new(&replies, &dead_letters)
            .with_batch(BatchConfig::new(100, Duration::from_millis(50)))
            .with_link_limit(128)
    };
    let model = || CpuModel::new("fraud-mlp", "drill", Mlp::seeded(INPUT_WIDTH, &[32, 16], 7));
    let reader = {
        let consumer = TracedConsumer::from_config(&kafka.consumer_config(&unique_name("reader")))
            .expect("reader");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&replies, 0, Offset::Beginning)
            .expect("partition");
        consumer.inner().assign(&assignment).expect("assign");
        consumer
    };
    let mut answered: HashMap<String, usize> = HashMap::new();

    // Worker A answers its first batch (100) and 30 of its second, then hangs mid-batch.
    let mut first = Worker::with_instrumentation(
        member("worker-a"),
        StallingSink::after(130, producer()),
        InMemoryFeatureStore::generated(100, 7),
        model(),
        config(),
        capture.instrumentation(),
    );
    let crashed = tokio::spawn(async move { first.run(&Shutdown::new()).await });
    read_replies(&reader, &mut answered, |a| a.values().sum::<usize>() >= 130).await;
    // Crash: the task dies with its batch unsettled; the worker and its consumer are dropped.
    crashed.abort();
    assert!(
        within("the crash", crashed)
            .await
            .expect_err("aborted")
            .is_cancelled()
    );
    let answered_by_a: HashSet<String> = answered.keys().cloned().collect();
    assert_eq!(answered_by_a.len(), 130);

    // The crashed batch is in the trace: its span ended as cancelled, linking its 100 messages.
    let spans = capture.spans();
    let batch_name = format!("process {requests}");
    let crashed_batches: Vec<&SpanData> = spans
        .named(&batch_name)
        .into_iter()
        .filter(|s| str_attr(&spans, s, "error.type") == Some("cancelled"))
        .collect();
    assert_eq!(crashed_batches.len(), 1, "one batch was cut short");
    let crashed_offsets = linked_offsets(&spans, crashed_batches[0]);
    assert_eq!(crashed_offsets.len(), 100);

    // Worker B joins the same group and answers every request not yet answered.
    let mut second = Worker::with_instrumentation(
        member("worker-b"),
        producer(),
        InMemoryFeatureStore::generated(100, 7),
        model(),
        config(),
        capture.instrumentation(),
    );
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let restarted = tokio::spawn(async move { second.run(&stop).await });
    read_replies(&reader, &mut answered, |a| a.len() == REQUESTS).await;
    shutdown.trigger();
    let b_stats = within("worker B to stop", restarted)
        .await
        .expect("worker B's task")
        .expect("worker B ran");

    // Every request answered at least once; the crashed batch came back to B whole.
    let all: HashSet<String> = (0..REQUESTS).map(|i| format!("r-{i}")).collect();
    assert_eq!(answered.keys().cloned().collect::<HashSet<_>>(), all);
    let spans = capture.spans();
    let b_offsets: HashSet<(String, i64)> = spans
        .named(&batch_name)
        .into_iter()
        .filter(|s| str_attr(&spans, s, "messaging.client.id") == Some("worker-b"))
        .flat_map(|batch| linked_offsets(&spans, batch))
        .collect();
    assert!(
        crashed_offsets.is_subset(&b_offsets),
        "the uncommitted batch was delivered again, to worker B"
    );
    let answered_twice = answered.values().filter(|n| **n > 1).count();
    assert!(
        answered_twice >= 30,
        "the 30 requests A answered in the crashed batch were answered again ({answered_twice})"
    );
    assert!(b_stats.messages >= 200, "{b_stats:?}");
    println!(
        "drill 5: {REQUESTS} requests, A answered 130 and crashed mid-batch, B processed {} \
         ({} replies), {answered_twice} answered twice, {:.1} s",
        b_stats.messages,
        b_stats.replies,
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Drill 6: hostile headers.

/// Counts the bytes the current thread allocates, so a drill can measure one call exactly
/// while other threads run.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts on the calling thread (a
// const-initialised thread local without destructor, so counting never allocates).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + new_size));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated by `f` on this thread, and its result.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATED.with(Cell::get);
    let result = f();
    (ALLOCATED.with(Cell::get) - before, result)
}

/// The process's resident memory, in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .expect("VmRSS")
        * 1024
}

/// A small deterministic generator (xorshift64*), so every run sends the same garbage.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn key(&mut self) -> String {
        let len = 1 + (self.next() % 12) as usize;
        (0..len)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
}

const HOSTILE: usize = 1000;
const MIB: usize = 1024 * 1024;

/// A valid traceparent whose trace id is `n`.
fn traceparent(n: usize) -> String {
    format!("00-{:032x}-{:016x}-01", n + 1, n + 1)
}

/// What extraction must make of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The context of [`traceparent`]`(id)`.
    Found,
    /// A context written by the traced producer.
    Injected,
    /// A new root, counted in `mqtrace.propagation.invalid` with this reason.
    Invalid(&'static str),
}

fn outcome_matches(extracted: &Extracted, expect: Expect, id: usize) -> bool {
    match (expect, &extracted.outcome) {
        (Expect::Found, ExtractOutcome::Found) => {
            extracted.context.span().span_context().trace_id() == TraceId::from((id + 1) as u128)
        }
        (Expect::Injected, ExtractOutcome::Found) => true,
        (Expect::Invalid(reason), ExtractOutcome::Invalid(invalid)) => {
            invalid.reason.as_str() == reason && !extracted.context.span().span_context().is_valid()
        }
        _ => false,
    }
}

/// The Kafka headers of hostile message `i`, and what extraction must make of them. The
/// cases cycle every 20 messages.
fn kafka_hostile(i: usize, garbage: &mut Garbage) -> (OwnedHeaders, Expect, Route) {
    let tp = traceparent(i);
    let add = |headers: OwnedHeaders, key: &str, value: &[u8]| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    };
    let mut headers = OwnedHeaders::new();
    let expect = match i % 20 {
        // Random keys and random bytes, traceparent included (0xff: never UTF-8).
        0 | 10 => {
            for _ in 0..20 {
                let (key, len) = (garbage.key(), (garbage.next() % 200) as usize);
                headers = add(headers, &key, &garbage.bytes(len));
            }
            let mut value = garbage.bytes(55);
            value[0] = 0xff;
            headers = add(headers, "traceparent", &value);
            headers = add(headers, "tracestate", &garbage.bytes(64));
            headers = add(headers, "baggage", &garbage.bytes(64));
            Expect::Invalid("not_utf8")
        }
        // A 1 MiB traceparent.
        1 => {
            headers = add(headers, "traceparent", &vec![b'a'; MIB]);
            Expect::Invalid("oversized")
        }
        // A 1 MiB application header next to a valid traceparent.
        11 => {
            headers = add(headers, "x-blob", &garbage.bytes(MIB));
            headers = add(headers, "traceparent", tp.as_bytes());
            Expect::Found
        }
        // Thousands of headers, the traceparent last.
        2 | 12 => {
            for n in 0..5000 {
                headers = add(headers, &format!("x-h-{n}"), b"v");
            }
            headers = add(headers, "traceparent", tp.as_bytes());
            Expect::Found
        }
        // Thousands of traceparents: garbage, then the valid one last.
        3 => {
            for _ in 0..3000 {
                headers = add(headers, "traceparent", b"garbage");
            }
            headers = add(headers, "traceparent", tp.as_bytes());
            Expect::Found
        }
        // Invalid UTF-8 in an otherwise well-formed traceparent.
        4 | 14 => {
            let mut value = tp.into_bytes();
            value[10] = 0xc3;
            value[11] = 0x28;
            headers = add(headers, "traceparent", &value);
            Expect::Invalid("not_utf8")
        }
        // Upper-case keys.
        5 | 15 => {
            headers = add(headers, "TRACEPARENT", tp.as_bytes());
            headers = add(headers, "TraceState", b"vendor=value");
            Expect::Found
        }
        // Duplicate keys, garbage first: the last one wins.
        6 | 16 => {
            headers = add(headers, "traceparent", b"00-garbage");
            headers = add(headers, "TraceParent", tp.as_bytes());
            Expect::Found
        }
        // Duplicate keys, garbage last: the last one wins, so it is rejected.
        7 | 17 => {
            headers = add(headers, "traceparent", tp.as_bytes());
            headers = add(headers, "traceparent", b"00-garbage");
            Expect::Invalid("rejected")
        }
        // A null traceparent.
        8 | 18 => {
            headers = headers.insert(Header::<&[u8]> {
                key: "traceparent",
                value: None,
            });
            Expect::Invalid("not_text")
        }
        // An empty key, a key with a NUL, an empty value, and a valid traceparent.
        9 => {
            headers = add(headers, "", b"empty key");
            headers = add(headers, "x\0nul", b"nul in key");
            headers = add(headers, "x-empty", b"");
            headers = add(headers, "traceparent", tp.as_bytes());
            Expect::Found
        }
        // A header key that is not UTF-8 (written through librdkafka's C API: see
        // `produce_with_raw_key`), next to a valid traceparent.
        19 => {
            headers = add(headers, "traceparent", tp.as_bytes());
            return (headers, Expect::Found, Route::RawKey);
        }
        // Through the traced producer, over hostile application headers: stale upper-case
        // and duplicate trace headers are replaced, 1000 application headers kept.
        13 => {
            headers = add(headers, "TRACEPARENT", b"stale");
            headers = add(headers, "traceparent", b"stale too");
            for n in 0..1000 {
                headers = add(headers, &format!("app-{n}"), &garbage.bytes(16));
            }
            return (headers, Expect::Injected, Route::Traced);
        }
        _ => unreachable!("cases cycle every 20"),
    };
    (headers, expect, Route::Raw)
}

/// How a hostile Kafka message is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// A plain rdkafka producer (a foreign client).
    Raw,
    /// mqtrace's traced producer.
    Traced,
    /// librdkafka's C API, with a header key that is not UTF-8 added.
    RawKey,
}

/// A header key that is not UTF-8.
const NOT_UTF8_KEY: &[u8] = b"x-\xff\xfe-key";

/// Produces `payload` with `headers` plus one header whose key is [`NOT_UTF8_KEY`], and waits
/// for its delivery. Kafka header keys are strings by convention only: the protocol carries
/// bytes, and some clients (Go's sarama, librdkafka's C API) send any; rdkafka's Rust API takes
/// `&str`, so this goes through the C API.
#[allow(unsafe_code)]
fn produce_with_raw_key(
    producer: &BaseProducer,
    topic: &str,
    payload: &[u8],
    headers: &OwnedHeaders,
) {
    use mqtrace::kafka::rdkafka::bindings as rd;
    use rd::rd_kafka_vtype_t::{
        RD_KAFKA_VTYPE_END, RD_KAFKA_VTYPE_HEADERS, RD_KAFKA_VTYPE_MSGFLAGS, RD_KAFKA_VTYPE_TOPIC,
        RD_KAFKA_VTYPE_VALUE,
    };
    let topic = std::ffi::CString::new(topic).expect("topic name");
    // SAFETY: `native` is the live producer's handle. The headers list is created here, filled
    // with pointers and lengths of live buffers (librdkafka copies them), and handed to
    // rd_kafka_producev, which owns it on success; on failure it is destroyed here. The
    // variadic arguments follow librdkafka's documented (type, value...) pairs, ending with
    // RD_KAFKA_VTYPE_END, with the types rdkafka's own BaseProducer::send passes.
    unsafe {
        let native = producer.client().native_ptr();
        let list = rd::rd_kafka_headers_new(headers.count() + 1);
        for header in headers.iter() {
            let value = header.value.unwrap_or_default();
            rd::rd_kafka_header_add(
                list,
                header.key.as_ptr().cast(),
                header.key.len() as isize,
                value.as_ptr().cast(),
                value.len() as isize,
            );
        }
        rd::rd_kafka_header_add(
            list,
            NOT_UTF8_KEY.as_ptr().cast(),
            NOT_UTF8_KEY.len() as isize,
            b"value".as_ptr().cast(),
            5,
        );
        let error = rd::rd_kafka_producev(
            native,
            RD_KAFKA_VTYPE_TOPIC,
            topic.as_ptr(),
            RD_KAFKA_VTYPE_MSGFLAGS,
            rd::RD_KAFKA_MSG_F_COPY,
            RD_KAFKA_VTYPE_VALUE,
            payload.as_ptr() as *mut std::ffi::c_void,
            payload.len(),
            RD_KAFKA_VTYPE_HEADERS,
            list,
            RD_KAFKA_VTYPE_END,
        );
        if error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            rd::rd_kafka_headers_destroy(list);
            panic!("rd_kafka_producev: {error:?}");
        }
    }
    let deadline = Instant::now() + TIMEOUT;
    while producer.in_flight_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the C API producer never delivered"
        );
        producer.poll(Duration::from_millis(5));
    }
}

fn hostile_consumer_config(kafka: &KafkaFixture) -> ClientConfig {
    let mut config = kafka.consumer_config(&unique_name("drill-6"));
    // Bounded prefetch: a few MiB, whatever the message sizes.
    config
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.max.bytes", "4194304");
    config
}

#[derive(Debug)]
struct Received {
    id: usize,
    extracted: Extracted,
    /// Bytes the message's headers hold.
    header_bytes: usize,
    /// Bytes extraction allocated for it.
    extraction_allocated: usize,
    /// `traceparent` headers on the message (any case).
    traceparents: usize,
    /// Headers on the message.
    headers: usize,
    /// Whether the message carried the header keyed [`NOT_UTF8_KEY`].
    foreign_key: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_6_hostile_headers_through_kafka_are_all_delivered_without_panic() {
    let _drill = one_at_a_time().await;
    let started = Instant::now();
    // Embedded whatever MQTRACE_KAFKA_BOOTSTRAP says: a real broker refuses 1 MiB headers
    // unless its own message.max.bytes was raised.
    let kafka = KafkaFixture::embedded(1).expect("embedded Kafka");
    let topic = kafka.create_topic("drill-6", 1).await.expect("topic");
    let capture = TelemetryCapture::new();

    // Foreign producers write the hostile headers; 1 MiB values need a larger message limit.
    let mut producer_config = kafka.producer_config();
    producer_config.set("message.max.bytes", "8388608");
    let raw: FutureProducer = producer_config.create().expect("raw producer");
    let raw_key_producer: BaseProducer = producer_config.create().expect("C API producer");
    let traced = TracedProducer::from_config(&producer_config)
        .expect("traced producer")
        .with_instrumentation(capture.instrumentation());

    let consumer = TracedConsumer::from_config(&hostile_consumer_config(&kafka))
        .expect("consumer")
        .with_instrumentation(capture.instrumentation());
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.inner().assign(&assignment).expect("assign");
    let received_count = Arc::new(AtomicUsize::new(0));
    let peak_rss = Arc::new(AtomicUsize::new(0));
    let rss_before = rss_bytes();
    let consuming = {
        let received_count = Arc::clone(&received_count);
        let peak_rss = Arc::clone(&peak_rss);
        tokio::spawn(async move {
            let mut received = Vec::with_capacity(HOSTILE);
            while received.len() < HOSTILE {
                let message = consumer.recv().await.expect("recv");
                let headers = message.headers();
                let id: usize = std::str::from_utf8(message.payload().expect("payload"))
                    .expect("utf-8")
                    .parse()
                    .expect("id");
                let (extraction_allocated, _) = allocated_by(|| match headers {
                    Some(headers) => Propagation::global().extract(&KafkaHeaders(headers)),
                    None => Propagation::global().extract(&mqtrace::core::carrier::NoHeaders),
                });
                let (mut header_bytes, mut traceparents, mut count) = (0, 0, 0);
                let mut foreign_key = false;
                // rdkafka's own `Headers::iter` panics on a key that is not UTF-8.
                for (key, value) in headers.map(raw_headers).into_iter().flatten() {
                    count += 1;
                    header_bytes += key.len() + value.map_or(0, <[u8]>::len);
                    traceparents += usize::from(key.eq_ignore_ascii_case(b"traceparent"));
                    foreign_key |= key == NOT_UTF8_KEY;
                }
                consumer
                    .process(&message, async { Ok::<_, std::io::Error>(()) })
                    .await
                    .expect("handler");
                received.push(Received {
                    id,
                    extracted: message.extracted().clone(),
                    header_bytes,
                    extraction_allocated,
                    traceparents,
                    headers: count,
                    foreign_key,
                });
                received_count.fetch_add(1, Ordering::SeqCst);
                peak_rss.fetch_max(rss_bytes(), Ordering::SeqCst);
            }
            received
        })
    };

    let mut garbage = Garbage(0x9E37_79B9_7F4A_7C15);
    let mut expected = HashMap::new();
    let mut routes = HashMap::new();
    let mut hostile_bytes = 0;
    for i in 0..HOSTILE {
        let (headers, expect, route) = kafka_hostile(i, &mut garbage);
        hostile_bytes += headers
            .iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum::<usize>();
        expected.insert(i, expect);
        routes.insert(i, route);
        let id = i.to_string();
        let record = FutureRecord::<str, str>::to(&topic)
            .payload(&id)
            .headers(headers);
        match route {
            Route::Traced => {
                traced
                    .send_with_context(record, TIMEOUT, &Context::new())
                    .await
                    .expect("delivered");
            }
            Route::Raw => {
                raw.send(record, TIMEOUT)
                    .await
                    .map_err(|(e, _)| e)
                    .expect("delivered");
            }
            Route::RawKey => {
                let headers = record.headers.as_ref().expect("headers");
                tokio::task::block_in_place(|| {
                    produce_with_raw_key(&raw_key_producer, &topic, id.as_bytes(), headers)
                });
            }
        }
        if matches!(i % 20, 1 | 11) {
            // A partition of the embedded broker keeps 5 MiB: let the consumer take each
            // 1 MiB message before the next one pushes it out.
            wait_until("the consumer to catch up", || {
                received_count.load(Ordering::SeqCst) > i || consuming.is_finished()
            })
            .await;
        }
    }
    let received = within("1000 hostile messages", consuming)
        .await
        .expect("the consumer did not panic");
    let rss_after = rss_bytes();

    // Every message delivered once, with the context its headers call for.
    let ids: HashSet<usize> = received.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), HOSTILE, "all 1000 delivered");
    let mut invalid_by_reason: HashMap<&str, usize> = HashMap::new();
    for r in &received {
        let expect = expected[&r.id];
        assert!(
            outcome_matches(&r.extracted, expect, r.id),
            "message {}: expected {expect:?}, got {:?}",
            r.id,
            r.extracted.outcome
        );
        if let Expect::Invalid(reason) = expect {
            *invalid_by_reason.entry(reason).or_default() += 1;
        }
        assert_eq!(
            r.foreign_key,
            routes[&r.id] == Route::RawKey,
            "message {}: the key that is not UTF-8 arrived as sent",
            r.id
        );
        if expect == Expect::Injected {
            assert_eq!(
                r.traceparents, 1,
                "the traced producer left one traceparent"
            );
            assert_eq!(
                r.headers, 1001,
                "1000 application headers kept, plus the context"
            );
        }
    }
    let metrics = capture.metrics();
    for (reason, count) in &invalid_by_reason {
        let counted: f64 = metrics
            .points("mqtrace.propagation.invalid")
            .iter()
            .filter(|p| p.has("mqtrace.propagation.invalid_reason", *reason))
            .map(|p| p.value)
            .sum();
        assert_eq!(counted, *count as f64, "invalid ({reason}) counted");
    }
    assert_eq!(
        metrics.total("mqtrace.propagation.invalid"),
        invalid_by_reason.values().sum::<usize>() as f64
    );

    // Each process span: a child of the producer's context when one was found, else a root.
    let spans = capture.spans();
    let processes = spans.named(&format!("process {topic}"));
    assert_eq!(processes.len(), HOSTILE);
    let roots = processes
        .iter()
        .filter(|p| p.parent_span_id == SpanId::INVALID)
        .count();
    assert_eq!(roots, invalid_by_reason.values().sum::<usize>());

    // Memory: extraction reads values in place (never copies a huge one), and the process
    // does not grow with the hostile volume.
    let largest = received
        .iter()
        .max_by_key(|r| r.header_bytes)
        .expect("messages");
    let most_allocated = received
        .iter()
        .map(|r| r.extraction_allocated)
        .max()
        .unwrap_or(0);
    assert!(largest.header_bytes >= MIB);
    assert!(
        most_allocated < 16 * 1024,
        "extraction allocated {most_allocated} bytes for one message (largest headers: {} bytes)",
        largest.header_bytes
    );
    let peak_growth = peak_rss.load(Ordering::SeqCst).saturating_sub(rss_before);
    assert!(
        peak_growth < 64 * MIB,
        "resident memory grew by {} MiB while {} MiB of hostile headers went through",
        peak_growth / MIB,
        hostile_bytes / MIB
    );
    println!(
        "drill 6 (Kafka): {HOSTILE} delivered, invalid by reason {invalid_by_reason:?}, \
         {} MiB of headers, extraction allocated at most {most_allocated} B per message, \
         RSS {} MiB -> peak {} MiB -> {} MiB, {:.1} s",
        hostile_bytes / MIB,
        rss_before / MIB,
        peak_rss.load(Ordering::SeqCst) / MIB,
        rss_after / MIB,
        started.elapsed().as_secs_f64()
    );
}

/// The AMQP headers of hostile message `i` and what extraction must make of them. RabbitMQ
/// carries a message's headers in one content-header frame, which must fit in the
/// negotiated `frame_max` (128 KiB by default), so the huge value is 64 KiB here (still far
/// over the 8 KiB limit on a propagation header) and "thousands of headers" are 2,000; 1 MiB
/// goes in the body instead. One FieldTable holds each key once, so duplicates differ in
/// case; RabbitMQ refuses ShortString table values, so none are sent.
fn amqp_hostile(i: usize, garbage: &mut Garbage) -> (FieldTable, Vec<u8>, Expect) {
    let tp = traceparent(i);
    let long = |bytes: Vec<u8>| AMQPValue::LongString(LongString::from(bytes));
    let array = |bytes: Vec<u8>| AMQPValue::ByteArray(ByteArray::from(bytes));
    let mut table = FieldTable::default();
    let mut body = i.to_string().into_bytes();
    let expect = match i % 10 {
        0 => {
            for _ in 0..20 {
                let (key, len) = (garbage.key(), (garbage.next() % 200) as usize);
                table.insert(key.as_str().into(), array(garbage.bytes(len)));
            }
            let mut value = garbage.bytes(55);
            value[0] = 0xff;
            table.insert("traceparent".into(), long(value));
            Expect::Invalid("not_utf8")
        }
        1 => {
            table.insert("traceparent".into(), long(vec![b'a'; 64 * 1024]));
            Expect::Invalid("oversized")
        }
        2 => {
            for n in 0..2000 {
                table.insert(format!("x-h-{n}").as_str().into(), long(b"v".to_vec()));
            }
            table.insert("traceparent".into(), long(tp.into_bytes()));
            Expect::Found
        }
        3 => {
            let mut value = tp.into_bytes();
            value[10] = 0xc3;
            value[11] = 0x28;
            table.insert("traceparent".into(), array(value));
            Expect::Invalid("not_utf8")
        }
        4 => {
            table.insert("TRACEPARENT".into(), long(tp.into_bytes()));
            Expect::Found
        }
        // `TraceParent` sorts before `traceparent`, so the lower-case one is last and wins.
        5 => {
            table.insert("TraceParent".into(), long(b"00-garbage".to_vec()));
            table.insert("traceparent".into(), array(tp.into_bytes()));
            Expect::Found
        }
        6 => {
            table.insert("TraceParent".into(), long(tp.into_bytes()));
            table.insert("traceparent".into(), long(b"00-garbage".to_vec()));
            Expect::Invalid("rejected")
        }
        7 => {
            table.insert("traceparent".into(), AMQPValue::LongLongInt(42));
            Expect::Invalid("not_text")
        }
        // A 1 MiB body (the id is its prefix, up to the first space).
        8 => {
            body.push(b' ');
            body.extend(garbage.bytes(MIB));
            table.insert("traceparent".into(), long(tp.into_bytes()));
            Expect::Found
        }
        9 => {
            let mut nested = FieldTable::default();
            nested.insert("traceparent".into(), long(tp.clone().into_bytes()));
            table.insert("x-nested".into(), AMQPValue::FieldTable(nested));
            table.insert("".into(), long(b"empty key".to_vec()));
            table.insert("traceparent".into(), long(tp.into_bytes()));
            Expect::Found
        }
        _ => unreachable!("cases cycle every 10"),
    };
    (table, body, expect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_6_hostile_headers_through_rabbitmq_are_all_delivered_without_panic() {
    let _drill = one_at_a_time().await;
    let started = Instant::now();
    let h = AmqpHarness::new("drill-6").await;
    let (consuming, mut rx) = consume_and_ack(h.consumer().await, |delivery| {
        let id = delivery
            .data
            .split(|b| *b == b' ')
            .next()
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(|id| id.parse::<usize>().ok())
            .expect("id");
        (id, delivery.extracted().clone())
    });

    // A foreign client publishes, with confirms, so every message is known to be stored.
    let channel = h.rabbit.channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut garbage = Garbage(0xD1B5_4A32_D192_ED03);
    let mut expected = HashMap::new();
    for i in 0..HOSTILE {
        let (headers, body, expect) = amqp_hostile(i, &mut garbage);
        expected.insert(i, expect);
        let confirm = channel
            .basic_publish(
                "".into(),
                h.queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap_or_else(|e| panic!("message {i} could not be published: {e}"));
        assert!(
            within("a confirm", confirm)
                .await
                .expect("confirm")
                .is_ack(),
            "message {i} stored"
        );
    }

    let mut received: HashMap<usize, Extracted> = HashMap::new();
    while received.len() < HOSTILE {
        let (id, extracted) = within("1000 hostile deliveries", rx.recv())
            .await
            .expect("the consumer did not panic");
        received.insert(id, extracted);
    }
    consuming.abort();
    let mut invalid = 0;
    for (id, extracted) in &received {
        let expect = expected[id];
        assert!(
            outcome_matches(extracted, expect, *id),
            "message {id}: expected {expect:?}, got {:?}",
            extracted.outcome
        );
        invalid += usize::from(matches!(expect, Expect::Invalid(_)));
    }
    assert_eq!(
        h.capture.metrics().total("mqtrace.propagation.invalid"),
        invalid as f64
    );
    let spans = h.capture.spans();
    let processes = spans.named(&format!("process {}", h.queue));
    assert_eq!(processes.len(), HOSTILE);
    assert_eq!(
        processes
            .iter()
            .filter(|p| p.parent_span_id == SpanId::INVALID)
            .count(),
        invalid
    );
    println!(
        "drill 6 (RabbitMQ): {HOSTILE} delivered, {invalid} with unusable context, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Processes (traced) and acks every delivery of `consumer` on a task, sending what `read`
/// takes from each delivery to the returned channel; the task ends when the channel's
/// receiver is dropped.
fn consume_and_ack<T: Send + 'static>(
    mut consumer: mqtrace::amqp::TracedConsumer,
    read: impl Fn(&mqtrace::amqp::TracedDelivery) -> T + Send + 'static,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<T>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.expect("delivery");
            consumer
                .process(&delivery, async { Ok::<_, std::io::Error>(()) })
                .await
                .expect("handler");
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            if tx.send(read(&delivery)).is_err() {
                return;
            }
        }
    });
    (consuming, rx)
}
