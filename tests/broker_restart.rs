//! The broker-restart drill, against a real Kafka-protocol broker with durable storage
//! (tansu on SQLite, `scripts/test-tansu`): a batch worker serves a steady stream of
//! requests while the broker process is killed with SIGKILL and started again on the same
//! storage. Every request is answered at least once, duplicates stay within one batch per
//! restart with synchronous batch commits (two with asynchronous ones, the default: a commit
//! in flight at the kill is lost), and every reply continues its request's trace.
//!
//! It needs the broker named by `MQTRACE_KAFKA_BOOTSTRAP` and the command that restarts it,
//! `MQTRACE_TANSU_RESTART` (both written by `scripts/ensure-tansu start sqlite`). Without them
//! it says so and does nothing; `MQTRACE_REQUIRE_TANSU=1` (set by `scripts/test-tansu`) makes
//! that a failure.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fraud_requests::{request_id, valid_request};
use futures::StreamExt as _;
use mqtrace::inference::cpu::CpuModel;
use mqtrace::inference::features::InMemoryFeatureStore;
use mqtrace::inference::mlp::Mlp;
use mqtrace::inference::{BatchConfig, INPUT_WIDTH, Shutdown, Worker, WorkerConfig};
use mqtrace::kafka::rdkafka::consumer::CommitMode;
use mqtrace::kafka::rdkafka::message::Message as _;
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
use mqtrace::kafka::{TracedConsumer, TracedProducer};
use mqtrace_testkit::capture::TelemetryCapture;
use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry::Context;
use opentelemetry::trace::{Status, TraceId};

const REQUESTS: usize = 1500;
/// Requests in flight at once: a steady stream, not a burst.
const WINDOW: usize = 20;
/// How far requests may run ahead of the replies, so the stream is still flowing when the
/// broker is killed.
const LAG: usize = 200;
const MAX_BATCH: usize = 50;
const DEADLINE: Duration = Duration::from_secs(240);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} within {DEADLINE:?}"))
}

/// Reads replies, counting them per request id, until `until` requests are answered. Errors
/// while the broker is away are reported by the consumer, which keeps fetching.
async fn read_replies(
    reader: &TracedConsumer,
    answered: &mut HashMap<String, usize>,
    progress: &AtomicUsize,
    until: usize,
) {
    while answered.len() < until {
        let Ok(reply) = reader.recv().await else {
            continue;
        };
        *answered
            .entry(request_id(reply.payload().expect("payload")))
            .or_default() += 1;
        progress.store(answered.len(), Ordering::SeqCst);
    }
}

/// Kills the broker and starts it again on the same storage (blocking; a few seconds).
fn restart_broker(command: &str) {
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(command)
        .status()
        .expect("the restart command runs");
    assert!(status.success(), "`{command}` failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_stream_loses_no_request() {
    let (Ok(bootstrap), Ok(restart)) = (
        std::env::var("MQTRACE_KAFKA_BOOTSTRAP"),
        std::env::var("MQTRACE_TANSU_RESTART"),
    ) else {
        let required = std::env::var("MQTRACE_REQUIRE_TANSU").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "MQTRACE_REQUIRE_TANSU=1 but no durable broker: run `scripts/ensure-tansu start sqlite` and source integration/kafka/tansu.env"
        );
        println!(
            "broker-restart drill skipped: it needs a durable tansu (MQTRACE_KAFKA_BOOTSTRAP and MQTRACE_TANSU_RESTART; scripts/test-tansu runs it)"
        );
        return;
    };
    // One after the other: each kills the broker the other would be using.
    // Synchronous batch commits: only the batch in progress can come back.
    drill(&bootstrap, &restart, CommitMode::Sync, MAX_BATCH).await;
    // Asynchronous (the default): a commit in flight at the kill is lost too.
    drill(&bootstrap, &restart, CommitMode::Async, 2 * MAX_BATCH).await;
}

/// One drill: the worker's batches committed with `mode`, at most `bound` duplicate replies.
async fn drill(bootstrap: &str, restart: &str, mode: CommitMode, bound: usize) {
    let restart = restart.to_owned();
    let started = Instant::now();
    let kafka = KafkaFixture::external(bootstrap);
    let requests = kafka.create_topic("restart", 1).await.expect("topic");
    let replies = kafka
        .create_topic("restart-replies", 1)
        .await
        .expect("topic");
    let dead_letters = kafka.create_topic("restart-dlq", 1).await.expect("topic");
    let capture = TelemetryCapture::new();

    // Clients that ride out the outage: queued messages outlive it, reconnects are quick.
    let producer = || {
        let mut config = kafka.producer_config();
        config
            .set("message.timeout.ms", "180000")
            .set("reconnect.backoff.max.ms", "500");
        TracedProducer::from_config(&config)
            .expect("producer")
            .with_instrumentation(capture.instrumentation())
    };
    let consumer_config = |group: &str| {
        let mut config = kafka.consumer_config(group);
        config.set("reconnect.backoff.max.ms", "500");
        config
    };
    let member = TracedConsumer::from_config(&consumer_config(&unique_name("restart-scorers")))
        .expect("consumer")
        .with_instrumentation(capture.instrumentation())
        .with_batch_commit_mode(mode);
    member.subscribe(&[&requests]).expect("subscribe");
    let mut worker = Worker::with_instrumentation(
        member,
        producer(),
        InMemoryFeatureStore::generated(100, 7),
        CpuModel::new(
            "fraud-mlp",
            "restart",
            Mlp::seeded(INPUT_WIDTH, &[32, 16], 7),
        ),
        WorkerConfig::new(&replies, &dead_letters)
            .with_batch(BatchConfig::new(MAX_BATCH, Duration::from_millis(50))),
        capture.instrumentation(),
    );
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let serving = tokio::spawn(async move { worker.run(&stop).await });

    let reader = TracedConsumer::from_config(&consumer_config(&unique_name("restart-reader")))
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&replies, 0, Offset::Beginning)
        .expect("partition");
    reader.assign(&assignment).expect("assign");

    // The steady stream: at most WINDOW requests in flight, each a trace of its own.
    let sent = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(AtomicUsize::new(0));
    let requester = producer();
    let sending = {
        let sent = Arc::clone(&sent);
        let progress = Arc::clone(&progress);
        let requests = requests.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..REQUESTS)
                .map(|i| {
                    let (requester, sent, requests, progress) =
                        (&requester, &sent, &requests, &progress);
                    async move {
                        while progress.load(Ordering::SeqCst) + LAG < i {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        let result = requester
                            .send_with_context(
                                FutureRecord::<str, str>::to(requests).payload(&valid_request(i)),
                                Duration::from_secs(180),
                                &Context::new(),
                            )
                            .await
                            .map_err(|e| format!("r-{i}: {e}"));
                        sent.fetch_add(1, Ordering::SeqCst);
                        result
                    }
                })
                .buffer_unordered(WINDOW)
                .collect::<Vec<_>>()
                .await
        })
    };

    let mut answered: HashMap<String, usize> = HashMap::new();
    within(
        "a third of the replies",
        read_replies(&reader, &mut answered, &progress, REQUESTS / 3),
    )
    .await;
    let sent_at_kill = sent.load(Ordering::SeqCst);
    let answered_at_kill = answered.len();
    tokio::task::spawn_blocking(move || restart_broker(&restart))
        .await
        .expect("restart");
    within(
        "every reply",
        read_replies(&reader, &mut answered, &progress, REQUESTS),
    )
    .await;
    let results = within("the requests", sending).await.expect("sender");
    shutdown.trigger();
    let stats = within("the worker to stop", serving)
        .await
        .expect("worker task")
        .expect("worker ran");

    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "every request delivered: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        sent_at_kill < REQUESTS && answered_at_kill < REQUESTS,
        "the restart came mid-stream ({sent_at_kill} sent, {answered_at_kill} answered)"
    );
    let all: HashSet<String> = (0..REQUESTS).map(|i| format!("r-{i}")).collect();
    assert_eq!(answered.keys().cloned().collect::<HashSet<_>>(), all);
    let duplicates: usize = answered.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= bound,
        "{duplicates} duplicate replies with {mode:?} commits: more than {bound} for one restart"
    );

    // Every reply continues its request's trace; nothing was cut by the restart.
    let spans = capture.spans();
    let request_traces: HashSet<TraceId> = spans
        .named(&format!("send {requests}"))
        .iter()
        .filter(|s| s.status == Status::Unset)
        .map(|s| s.span_context.trace_id())
        .collect();
    assert_eq!(request_traces.len(), REQUESTS, "one send span per request");
    let reply_sends = spans.named(&format!("send {replies}"));
    assert!(
        reply_sends.len() >= REQUESTS,
        "{} reply send spans",
        reply_sends.len()
    );
    assert!(
        reply_sends
            .iter()
            .all(|s| request_traces.contains(&s.span_context.trace_id())),
        "every reply is sent in its request's trace"
    );
    println!(
        "broker-restart drill ({mode:?} batch commits): {REQUESTS} requests, broker killed after {sent_at_kill} sent and \
         {answered_at_kill} answered and restarted on its storage; all answered, {duplicates} \
         duplicate replies, worker: {} batches, {} messages, {} settle failures, {} receive \
         errors ridden out; {:.1} s",
        stats.batches,
        stats.messages,
        stats.settle_failures,
        stats.receive_errors,
        started.elapsed().as_secs_f64()
    );
}
