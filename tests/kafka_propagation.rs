//! End to end through a real Kafka-protocol broker: context travels in headers, spans form
//! the expected graph, and bad headers never cost a message.

mod common;

use common::{Harness, TIMEOUT, process_ok, recv};
use mqtrace::core::ParentMode;
use mqtrace::core::propagation::ExtractOutcome;
use mqtrace::kafka::rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use mqtrace::kafka::rdkafka::producer::{FutureRecord, Producer};
use opentelemetry::Context;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn process_span_is_child_of_send_span_and_links_to_it() {
    let h = Harness::new("parent").await;
    let producer = h.producer();
    let consumer = h.consumer();

    let tracer = h.capture.tracer_provider().tracer("test");
    let request = tracer.start("inference.request");
    let cx = Context::current_with_span(request);
    producer
        .send_with_context(
            FutureRecord::<str, str>::to(&h.topic).payload("x"),
            TIMEOUT,
            &cx,
        )
        .await
        .expect("delivered");
    cx.span().end();

    let message = recv(&consumer).await;
    assert_eq!(message.extracted().outcome, ExtractOutcome::Found);
    process_ok(&consumer, &message).await;

    let spans = h.capture.spans();
    let request = spans.one("inference.request");
    let send = spans.one(&format!("send {}", h.topic));
    let process = spans.one(&format!("process {}", h.topic));
    spans.assert_kind(send, SpanKind::Producer);
    spans.assert_kind(process, SpanKind::Consumer);
    spans.assert_child_of(send, request);
    spans.assert_child_of(process, send);
    spans.assert_links_to(process, send);

    spans.assert_attr(send, "messaging.system", "kafka");
    spans.assert_attr(send, "messaging.operation.type", "send");
    spans.assert_attr(send, "messaging.operation.name", "send");
    spans.assert_attr(send, "messaging.destination.name", h.topic.clone());
    spans.assert_attr(send, "messaging.destination.partition.id", "0");
    spans.assert_attr(send, "messaging.kafka.offset", 0_i64);
    spans.assert_attr(send, "messaging.message.body.size", 1_i64);
    assert!(spans.attr(send, "server.address").is_some());
    assert!(spans.attr(send, "server.port").is_some());
    spans.assert_attr(process, "messaging.operation.type", "process");
    spans.assert_attr(process, "messaging.kafka.offset", 0_i64);
    assert!(
        spans
            .attr(process, "messaging.consumer.group.name")
            .is_some()
    );
    spans.assert_no_attr(send, "messaging.kafka.message.key");
}

#[tokio::test]
async fn link_mode_starts_a_new_trace_with_only_a_link() {
    let h = Harness::new("link").await;
    let producer = h.producer();
    let consumer = h.consumer().with_parent_mode(ParentMode::Link);
    h.send_root(&producer).await;
    let message = recv(&consumer).await;
    process_ok(&consumer, &message).await;

    let spans = h.capture.spans();
    let send = spans.one(&format!("send {}", h.topic));
    let process = spans.one(&format!("process {}", h.topic));
    spans.assert_root(process);
    assert_ne!(
        process.span_context.trace_id(),
        send.span_context.trace_id()
    );
    spans.assert_links_to(process, send);
}

#[tokio::test]
async fn application_headers_are_preserved_and_stale_context_replaced() {
    let h = Harness::new("headers").await;
    let producer = h.producer();
    let consumer = h.consumer();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "app-id",
            value: Some("42"),
        })
        .insert(Header {
            key: "TraceParent",
            value: Some(VALID),
        })
        .insert(Header {
            key: "tracestate",
            value: Some("stale=1"),
        })
        .insert(Header {
            key: "binary",
            value: Some(&[0_u8, 159, 146, 150][..]),
        });
    producer
        .send_with_context(
            FutureRecord::<str, str>::to(&h.topic)
                .payload("x")
                .headers(headers),
            TIMEOUT,
            &Context::new(),
        )
        .await
        .expect("delivered");

    let message = recv(&consumer).await;
    let received = message.headers().expect("headers");
    let all: Vec<(String, Option<Vec<u8>>)> = received
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["app-id", "binary", "traceparent"],
        "headers: {all:?}"
    );
    assert_eq!(all[0].1.as_deref(), Some(&b"42"[..]));
    assert_eq!(all[1].1.as_deref(), Some(&[0_u8, 159, 146, 150][..]));
    let send = h.capture.spans().one(&format!("send {}", h.topic)).clone();
    let sent_context = message.extracted().remote_span_context().expect("context");
    assert_eq!(sent_context.span_id(), send.span_context.span_id());
}

#[tokio::test]
async fn forwarding_carries_the_current_context_not_the_incoming_one() {
    let h = Harness::new("forward-in").await;
    let out_topic = h.kafka.create_topic("forward-out", 1).await.expect("topic");
    let producer = h.producer();
    let consumer = h.consumer();
    let downstream = h.consumer_of(&out_topic);
    h.send_root(&producer).await;

    let message = recv(&consumer).await;
    consumer
        .process(&message, async {
            // Forward the message as is, headers included (traceparent of the first hop).
            let headers = message.headers().map(|h| h.detach());
            let mut record = FutureRecord::<[u8], [u8]>::to(&out_topic);
            record.headers = headers;
            producer.send(record, TIMEOUT).await.map(|_| ())
        })
        .await
        .expect("forwarded");

    let forwarded = recv(&downstream).await;
    let traceparents = forwarded
        .headers()
        .expect("headers")
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case("traceparent"))
        .count();
    assert_eq!(traceparents, 1, "exactly one traceparent after forwarding");

    let spans = h.capture.spans();
    let process = spans.one(&format!("process {}", h.topic));
    let forward_send = spans.one(&format!("send {out_topic}"));
    spans.assert_child_of(forward_send, process);
    let carried = forwarded
        .extracted()
        .remote_span_context()
        .expect("context");
    assert_eq!(carried.span_id(), forward_send.span_context.span_id());
}

#[tokio::test]
async fn duplicate_traceparent_headers_last_one_wins() {
    let h = Harness::new("duplicates").await;
    let consumer = h.consumer();
    let last = "00-11111111111111111111111111111111-2222222222222222-01";
    h.send_raw(
        OwnedHeaders::new()
            .insert(Header {
                key: "traceparent",
                value: Some(VALID),
            })
            .insert(Header {
                key: "TRACEPARENT",
                value: Some(last),
            }),
    )
    .await;
    let message = recv(&consumer).await;
    let context = message.extracted().remote_span_context().expect("context");
    assert_eq!(
        context.trace_id().to_string(),
        "11111111111111111111111111111111"
    );
    assert_eq!(context.span_id().to_string(), "2222222222222222");
}

async fn assert_bad_header_starts_new_root(prefix: &str, value: &[u8], reason: &str) {
    let h = Harness::new(prefix).await;
    let consumer = h.consumer();
    h.send_raw(OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some(value),
    }))
    .await;
    let message = recv(&consumer).await;
    assert_eq!(
        message.payload(),
        Some(&b"raw"[..]),
        "the message is still delivered"
    );
    assert!(matches!(
        message.extracted().outcome,
        ExtractOutcome::Invalid(_)
    ));
    process_ok(&consumer, &message).await;

    let spans = h.capture.spans();
    let process = spans.one(&format!("process {}", h.topic));
    spans.assert_root(process);
    assert!(
        process.links.is_empty(),
        "no link to a context that does not exist"
    );

    let metrics = h.capture.metrics();
    let points = metrics.points("mqtrace.propagation.invalid");
    assert!(
        points.iter().any(|p| p.value == 1.0
            && p.has("mqtrace.propagation.invalid_reason", reason.to_owned())
            && p.has("messaging.system", "kafka")),
        "counter with reason {reason}: {points:?}"
    );
    metrics.assert_unit("mqtrace.propagation.invalid", "{message}");
}

#[tokio::test]
async fn garbage_traceparent_is_counted_and_message_delivered() {
    assert_bad_header_starts_new_root("garbage", b"00-not-a-trace-context", "rejected").await;
}

#[tokio::test]
async fn non_utf8_traceparent_is_counted_and_message_delivered() {
    assert_bad_header_starts_new_root("non-utf8", &[0xff, 0xfe, 0x00, 0x80], "not_utf8").await;
}

#[tokio::test]
async fn oversized_traceparent_is_counted_and_message_delivered() {
    let huge = vec![b'0'; 64 * 1024];
    assert_bad_header_starts_new_root("oversized", &huge, "oversized").await;
}

#[tokio::test]
async fn failed_delivery_ends_the_send_span_with_an_error() {
    let h = Harness::new("failure").await;
    let config = {
        let mut c = h.kafka.producer_config();
        c.set("message.timeout.ms", "1000").set("retries", "0");
        c
    };
    let producer = mqtrace::kafka::TracedProducer::from_config(&config)
        .expect("producer")
        .with_instrumentation(h.capture.instrumentation());
    // A partition that does not exist fails at the broker round trip, not at enqueue.
    let error = producer
        .send(
            FutureRecord::<str, str>::to(&h.topic)
                .payload("x")
                .partition(7),
            TIMEOUT,
        )
        .await
        .expect_err("delivery must fail");
    assert!(
        matches!(error, mqtrace::kafka::Error::Delivery { .. }),
        "{error}"
    );

    let spans = h.capture.spans();
    let send = spans.one(&format!("send {}", h.topic));
    assert!(
        matches!(send.status, Status::Error { .. }),
        "status {:?}",
        send.status
    );
    assert!(spans.attr(send, "error.type").is_some());

    let metrics = h.capture.metrics();
    assert!(
        metrics
            .points("messaging.client.operation.duration")
            .iter()
            .any(|p| p
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "error.type")),
        "operation duration recorded with error.type"
    );
}

#[tokio::test]
async fn handler_error_marks_the_process_span() {
    #[derive(Debug, thiserror::Error)]
    #[error("model refused the input")]
    struct ScoringError;

    let h = Harness::new("handler-error").await;
    h.send_raw(OwnedHeaders::new()).await;
    let consumer = h.consumer();
    let message = recv(&consumer).await;
    assert_eq!(message.extracted().outcome, ExtractOutcome::Missing);
    let result = consumer
        .process(&message, async { Err::<(), _>(ScoringError) })
        .await;
    assert!(result.is_err());
    let spans = h.capture.spans();
    let process = spans.one(&format!("process {}", h.topic));
    assert_eq!(process.status, Status::error("model refused the input"));
    spans.assert_attr(
        process,
        "error.type",
        "kafka_propagation::handler_error_marks_the_process_span::ScoringError",
    );
}

#[tokio::test]
async fn error_type_is_the_full_type_path_or_the_errors_own() {
    #[derive(Debug, thiserror::Error)]
    #[error("model refused the input")]
    struct Refused;
    impl mqtrace::core::ErrorType for Refused {
        fn error_type(&self) -> std::borrow::Cow<'static, str> {
            "refused".into()
        }
    }

    let h = Harness::new("error-type").await;
    for _ in 0..4 {
        h.send_raw(OwnedHeaders::new()).await;
    }
    let consumer = h.consumer();
    let message = recv(&consumer).await;
    let failed = consumer
        .process(&message, async {
            Err::<(), _>(std::io::Error::other("disk full"))
        })
        .await;
    assert!(failed.is_err());
    let message = recv(&consumer).await;
    let failed = consumer
        .process(&message, async {
            Err::<(), _>(anyhow::anyhow!("no model"))
        })
        .await;
    assert!(failed.is_err());
    let message = recv(&consumer).await;
    let failed = consumer
        .process(&message, async {
            Err::<(), Box<dyn std::error::Error + Send + Sync>>("boxed".into())
        })
        .await;
    assert!(failed.is_err());
    let message = recv(&consumer).await;
    let failed = consumer
        .process_span(&message)
        .run_with_error_type(async { Err::<(), _>(Refused) })
        .await;
    assert!(failed.is_err());

    let spans = h.capture.spans();
    let mut types: Vec<_> = spans
        .named(&format!("process {}", h.topic))
        .iter()
        .map(|s| {
            spans
                .attr(s, "error.type")
                .map(|v| v.as_str().into_owned())
                .expect("error.type")
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "alloc::boxed::Box<dyn core::error::Error + Send + Sync>",
            "anyhow::Error",
            "refused",
            "std::io::error::Error",
        ]
    );
    // The process-duration metric carries the same values as the spans.
    let mut metric_types: Vec<String> = h
        .capture
        .metrics()
        .points("messaging.process.duration")
        .iter()
        .filter_map(|p| {
            p.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "error.type")
                .map(|kv| kv.value.as_str().into_owned())
        })
        .collect();
    metric_types.sort();
    assert_eq!(metric_types, types);
}

#[tokio::test]
async fn batch_receive_links_every_message() {
    let h = Harness::new("batch").await;
    let producer = h.producer();
    for _ in 0..5 {
        h.send_root(&producer).await;
    }
    let consumer = h.consumer();
    let mut batch = Vec::new();
    while batch.len() < 5 {
        let more = consumer
            .recv_batch(5 - batch.len(), TIMEOUT)
            .await
            .expect("batch");
        batch.extend(more);
    }
    assert!(
        batch
            .iter()
            .all(|m| m.extracted().outcome == ExtractOutcome::Found)
    );

    let spans = h.capture.spans();
    let sends = spans.named(&format!("send {}", h.topic));
    let polls = spans.named(&format!("poll {}", h.topic));
    assert!(!polls.is_empty());
    let links: usize = polls.iter().map(|p| p.links.len()).sum();
    assert_eq!(links, 5);
    for send in sends {
        assert!(polls.iter().any(|p| {
            p.links
                .iter()
                .any(|l| l.span_context.span_id() == send.span_context.span_id())
        }));
    }
    for poll in polls {
        spans.assert_kind(poll, SpanKind::Client);
        spans.assert_attr(poll, "messaging.operation.type", "receive");
    }
    let metrics = h.capture.metrics();
    assert_eq!(metrics.total("messaging.client.consumed.messages"), 5.0);
}

#[tokio::test]
async fn commit_is_a_settle_span() {
    let h = Harness::new("commit").await;
    h.send_raw(OwnedHeaders::new()).await;
    let consumer = h.consumer();
    let message = recv(&consumer).await;
    consumer
        .commit_message(
            &message,
            mqtrace::kafka::rdkafka::consumer::CommitMode::Sync,
        )
        .expect("commit");
    let spans = h.capture.spans();
    let commit = spans.one(&format!("commit {}", h.topic));
    spans.assert_kind(commit, SpanKind::Client);
    spans.assert_attr(commit, "messaging.operation.type", "settle");
    spans.assert_attr(commit, "messaging.operation.name", "commit");
    // No producer context and no current span: a root, as there is no trace to join.
    spans.assert_root(commit);
}

/// A commit inside the handler is a child of the process span; one after it, outside any
/// span, joins the message's trace as a child of its send span (never a one-span trace);
/// both link to the message.
#[tokio::test]
async fn commits_join_the_message_trace_inside_and_after_the_handler() {
    use mqtrace::kafka::rdkafka::consumer::CommitMode;
    let h = Harness::new("commit-joins").await;
    let producer = h.producer();
    h.send_root(&producer).await;
    h.send_root(&producer).await;
    let consumer = h.consumer();
    let inside = recv(&consumer).await;
    consumer
        .process(&inside, async {
            consumer
                .commit_message(&inside, CommitMode::Sync)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .expect("handled and committed");
    let after = recv(&consumer).await;
    process_ok(&consumer, &after).await;
    consumer
        .commit_message(&after, CommitMode::Sync)
        .expect("committed");

    let spans = h.capture.spans();
    let sends = spans.named(&format!("send {}", h.topic));
    let processes = spans.named(&format!("process {}", h.topic));
    let commits = spans.named(&format!("commit {}", h.topic));
    assert_eq!((sends.len(), processes.len(), commits.len()), (2, 2, 2));
    let send_of = |span: &opentelemetry_sdk::trace::SpanData| {
        *sends
            .iter()
            .find(|s| s.span_context.trace_id() == span.span_context.trace_id())
            .expect("the message's send span")
    };
    let in_handler = commits
        .iter()
        .find(|c| {
            processes
                .iter()
                .any(|p| p.span_context.span_id() == c.parent_span_id)
        })
        .expect("the commit made inside the handler is a child of its process span");
    spans.assert_links_to(in_handler, send_of(in_handler));
    let after_handler = commits
        .iter()
        .find(|c| c.span_context.span_id() != in_handler.span_context.span_id())
        .expect("the other commit");
    spans.assert_child_of(after_handler, send_of(after_handler));
    spans.assert_links_to(after_handler, send_of(after_handler));
}

#[tokio::test]
async fn a_cloned_producer_shares_the_client_and_traces_like_the_original() {
    let h = Harness::new("clone").await;
    let original = h
        .producer()
        .with_key_capture(mqtrace::core::KeyCapture::Hashed);
    let clone = original.clone();
    assert_eq!(
        clone.inner().client().native_ptr(),
        original.inner().client().native_ptr(),
        "a clone shares the librdkafka client, it does not create a second one"
    );

    // The clone sends from its own task, inside a caller's span.
    let tracer = h.capture.tracer_provider().tracer("test");
    let request = Context::current_with_span(tracer.start("clone.request"));
    let topic = h.topic.clone();
    let parent = request.clone();
    tokio::spawn(async move {
        clone
            .send_with_context(
                FutureRecord::<str, str>::to(&topic).payload("x").key("k"),
                TIMEOUT,
                &parent,
            )
            .await
            .expect("delivered")
    })
    .await
    .expect("send task");
    request.span().end();
    original
        .send_with_context(
            FutureRecord::<str, str>::to(&h.topic).payload("x").key("k"),
            TIMEOUT,
            &Context::new(),
        )
        .await
        .expect("delivered");

    let consumer = h.consumer();
    let from_clone = recv(&consumer).await;
    assert_eq!(from_clone.extracted().outcome, ExtractOutcome::Found);
    process_ok(&consumer, &from_clone).await;

    let spans = h.capture.spans();
    let sends = spans.named(&format!("send {}", h.topic));
    assert_eq!(
        sends.len(),
        2,
        "both sends recorded by the same instrumentation"
    );
    let by_offset = |offset: i64| {
        *sends
            .iter()
            .find(|s| spans.attr(s, "messaging.kafka.offset") == Some(&offset.into()))
            .expect("send span at offset")
    };
    let (cloned_send, original_send) = (by_offset(0), by_offset(1));
    spans.assert_child_of(cloned_send, spans.one("clone.request"));
    spans.assert_root(original_send);
    spans.assert_child_of(spans.one(&format!("process {}", h.topic)), cloned_send);
    // Same options: server address/port and the hashed key, attribute for attribute.
    for key in [
        "messaging.system",
        "messaging.destination.name",
        "messaging.destination.partition.id",
        "messaging.message.body.size",
        "messaging.kafka.message.key",
        "server.address",
        "server.port",
    ] {
        assert!(
            spans.attr(cloned_send, key).is_some(),
            "{key} on the clone's send"
        );
        assert_eq!(
            spans.attr(cloned_send, key),
            spans.attr(original_send, key),
            "{key}"
        );
    }
}

#[tokio::test]
async fn keys_are_recorded_only_when_opted_in() {
    let h = Harness::new("keys").await;
    let producer = h
        .producer()
        .with_key_capture(mqtrace::core::KeyCapture::Hashed);
    producer
        .send_with_context(
            FutureRecord::<str, str>::to(&h.topic)
                .payload("x")
                .key("user-1"),
            TIMEOUT,
            &Context::new(),
        )
        .await
        .expect("delivered");
    let consumer = h.consumer();
    let message = recv(&consumer).await;
    process_ok(&consumer, &message).await;
    let spans = h.capture.spans();
    let send = spans.one(&format!("send {}", h.topic));
    let hashed = spans
        .attr(send, "messaging.kafka.message.key")
        .expect("hashed key")
        .as_str();
    assert_eq!(hashed.len(), 16);
    assert_ne!(hashed, "user-1");
    spans.assert_no_attr(
        spans.one(&format!("process {}", h.topic)),
        "messaging.kafka.message.key",
    );
}

#[tokio::test]
async fn metrics_have_semconv_names_units_and_attributes() {
    let h = Harness::new("metrics").await;
    let producer = h.producer();
    h.send_root(&producer).await;
    let consumer = h.consumer();
    let message = recv(&consumer).await;
    process_ok(&consumer, &message).await;

    let metrics = h.capture.metrics();
    metrics.assert_unit("messaging.client.operation.duration", "s");
    metrics.assert_unit("messaging.client.sent.messages", "{message}");
    metrics.assert_unit("messaging.client.consumed.messages", "{message}");
    metrics.assert_unit("messaging.process.duration", "s");
    let sent = metrics.points("messaging.client.sent.messages");
    assert_eq!(sent.len(), 1);
    assert!(sent[0].has("messaging.system", "kafka"));
    assert!(sent[0].has("messaging.operation.name", "send"));
    assert!(sent[0].has("messaging.destination.name", h.topic.clone()));
    assert_eq!(sent[0].value, 1.0);
    let processed = metrics.points("messaging.process.duration");
    assert_eq!(processed.len(), 1);
    assert!(
        processed[0]
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "messaging.consumer.group.name")
    );
    for point in sent.iter().chain(&processed) {
        for kv in &point.attributes {
            assert!(
                ![
                    "messaging.kafka.offset",
                    "messaging.destination.partition.id",
                    "messaging.message.id"
                ]
                .contains(&kv.key.as_str()),
                "high-cardinality attribute {} on a metric",
                kv.key
            );
        }
    }
}

/// A foreign producer's context with the W3C Level 2 random flag keeps it through a consumer
/// whose sampler drops the process span (`02`: random, not sampled) as through one that
/// records it (`03`): what the handler forwards carries the incoming trace id, the flags and
/// the tracestate, under the forwarding send span's own id. (The SDK alone would send `00`
/// onward for `02`.)
#[tokio::test]
async fn random_flag_survives_unsampled_and_sampled_hops() {
    use common::random_flag::{
        FLAGS, TRACESTATE, assert_forwarded, assert_only_sampled_hops_exported,
        incoming_traceparent,
    };
    let h = Harness::new("random-in").await;
    let out_topic = h.kafka.create_topic("random-out", 1).await.expect("topic");
    let producer = h.producer();
    let consumer = h.consumer();
    let downstream = h.consumer_of(&out_topic);
    for flags in FLAGS {
        let traceparent = incoming_traceparent(flags);
        h.send_raw(
            OwnedHeaders::new()
                .insert(Header {
                    key: "traceparent",
                    value: Some(&traceparent),
                })
                .insert(Header {
                    key: "tracestate",
                    value: Some(TRACESTATE),
                }),
        )
        .await;
    }

    for flags in FLAGS {
        let message = recv(&consumer).await;
        let incoming = message.extracted().remote_span_context().expect("context");
        assert_eq!(format!("{:02x}", incoming.trace_flags().to_u8()), flags);
        consumer
            .process(&message, async {
                producer
                    .send(
                        FutureRecord::<str, str>::to(&out_topic).payload("forwarded"),
                        TIMEOUT,
                    )
                    .await
                    .map(|_| ())
            })
            .await
            .expect("forwarded");

        let forwarded = recv(&downstream).await;
        let header = |key: &str| {
            forwarded.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        assert_forwarded(flags, header("traceparent"), header("tracestate"));
    }

    assert_only_sampled_hops_exported(
        &h.capture.spans(),
        &[format!("process {}", h.topic), format!("send {out_topic}")],
    );
}

/// Wrapping clients the application already built (`new`) records what `from_config`
/// records: the broker address from `bootstrap.servers` and the consumer group.
#[tokio::test]
async fn wrapped_existing_clients_keep_server_and_group_from_their_config() {
    use mqtrace::kafka::rdkafka::consumer::{Consumer as _, StreamConsumer};
    use mqtrace::kafka::rdkafka::producer::FutureProducer;
    use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};
    use mqtrace::kafka::{TracedConsumer, TracedProducer};

    let h = Harness::new("wrapped").await;
    let raw_producer: FutureProducer = h.kafka.producer_config().create().expect("producer");
    let producer =
        TracedProducer::new(raw_producer).with_instrumentation(h.capture.instrumentation());
    let group = mqtrace_testkit::kafka::unique_name("wrapped-group");
    let raw_consumer: StreamConsumer = h.kafka.consumer_config(&group).create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&h.topic, 0, Offset::Beginning)
        .expect("partition");
    raw_consumer.assign(&assignment).expect("assign");
    let consumer =
        TracedConsumer::new(raw_consumer).with_instrumentation(h.capture.instrumentation());

    h.send_root(&producer).await;
    let message = recv(&consumer).await;
    process_ok(&consumer, &message).await;

    let bootstrap = h
        .kafka
        .producer_config()
        .get("bootstrap.servers")
        .expect("bootstrap.servers")
        .to_owned();
    let (address, port) = mqtrace::core::span::parse_server(&bootstrap).expect("host:port");
    let spans = h.capture.spans();
    let send = spans.one(&format!("send {}", h.topic));
    let process = spans.one(&format!("process {}", h.topic));
    for span in [send, process] {
        spans.assert_attr(span, "server.address", address.clone());
        spans.assert_attr(span, "server.port", port);
    }
    spans.assert_attr(process, "messaging.consumer.group.name", group);
}

/// `stream()` yields the messages with their contexts, as `recv()` does, and counts them.
#[tokio::test]
async fn the_message_stream_yields_traced_messages_and_counts_them() {
    use futures::StreamExt as _;
    let h = Harness::new("stream").await;
    let producer = h.producer();
    for _ in 0..3 {
        h.send_root(&producer).await;
    }
    let consumer = h.consumer();
    let mut messages = consumer.stream();
    for _ in 0..3 {
        let message = tokio::time::timeout(TIMEOUT, messages.next())
            .await
            .expect("a message within the timeout")
            .expect("the stream does not end")
            .expect("received");
        assert_eq!(message.extracted().outcome, ExtractOutcome::Found);
        process_ok(&consumer, &message).await;
    }
    drop(messages);
    let spans = h.capture.spans();
    let sends = spans.named(&format!("send {}", h.topic));
    let processes = spans.named(&format!("process {}", h.topic));
    assert_eq!(processes.len(), 3);
    for process in processes {
        let send = sends
            .iter()
            .find(|s| s.span_context.trace_id() == process.span_context.trace_id())
            .expect("its send span");
        spans.assert_child_of(process, send);
    }
    assert_eq!(
        h.capture
            .metrics()
            .total("messaging.client.consumed.messages"),
        3.0
    );
}

/// A message detached from the consumer (to hand to a task) is processed and committed like
/// a borrowed one: process span child of the send span, commit span in the same trace.
#[tokio::test]
async fn a_detached_message_is_processed_and_committed_on_another_task() {
    use mqtrace::kafka::rdkafka::consumer::CommitMode;
    let h = Harness::new("detached").await;
    let producer = h.producer();
    h.send_root(&producer).await;
    let consumer = std::sync::Arc::new(h.consumer());
    let owned = recv(&consumer).await.detach();
    let on_task = std::sync::Arc::clone(&consumer);
    tokio::spawn(async move {
        on_task
            .process(&owned, async { Ok::<_, std::io::Error>(()) })
            .await
            .expect("handled");
        on_task
            .commit_message(&owned, CommitMode::Sync)
            .expect("committed");
    })
    .await
    .expect("the task ran");

    let spans = h.capture.spans();
    let send = spans.one(&format!("send {}", h.topic));
    let process = spans.one(&format!("process {}", h.topic));
    let commit = spans.one(&format!("commit {}", h.topic));
    spans.assert_child_of(process, send);
    spans.assert_child_of(commit, send);
    spans.assert_links_to(commit, send);
    spans.assert_attr(commit, "messaging.kafka.offset", 0_i64);
    // The next offset to read was committed, as rdkafka's own `commit_message` does.
    use mqtrace::kafka::rdkafka::consumer::Consumer as _;
    let committed = consumer
        .inner()
        .committed(TIMEOUT)
        .expect("committed offsets");
    let next = committed
        .find_partition(&h.topic, 0)
        .expect("the partition")
        .offset();
    assert_eq!(next, mqtrace::kafka::rdkafka::Offset::Offset(1));
}

/// The rdkafka calls the wrappers pass through behave as rdkafka's, trace nothing, and fail
/// with `Error::Client` naming the call.
#[tokio::test]
async fn client_calls_pass_through_without_inner() {
    use mqtrace::kafka::Error;
    use mqtrace::kafka::rdkafka::consumer::CommitMode;
    use mqtrace::kafka::rdkafka::{Offset, TopicPartitionList};

    let h = Harness::new("calls").await;
    let producer = h.producer();
    for _ in 0..3 {
        h.send_root(&producer).await;
    }
    producer.flush(TIMEOUT).expect("flush");
    assert_eq!(producer.in_flight_count(), 0);

    let consumer = h.consumer(); // assigned to partition 0 from the beginning
    let assigned = consumer.assignment().expect("assignment");
    assert_eq!(assigned.count(), 1);
    assert_eq!(
        consumer
            .fetch_watermarks(&h.topic, 0, TIMEOUT)
            .expect("watermarks"),
        (0, 3)
    );
    let metadata = consumer
        .fetch_metadata(Some(&h.topic), TIMEOUT)
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 1);

    assert_eq!(recv(&consumer).await.offset(), 0);
    assert_eq!(recv(&consumer).await.offset(), 1);
    // Back to the first message: the next one read is offset 0 again.
    consumer
        .seek(&h.topic, 0, Offset::Offset(0), TIMEOUT)
        .expect("seek");
    assert_eq!(recv(&consumer).await.offset(), 0);

    consumer.pause(&assigned).expect("pause");
    consumer.resume(&assigned).expect("resume");
    assert_eq!(recv(&consumer).await.offset(), 1);

    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&h.topic, 0, Offset::Offset(2))
        .expect("offset");
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");
    let committed = consumer.committed(TIMEOUT).expect("committed");
    assert_eq!(
        committed.find_partition(&h.topic, 0).map(|p| p.offset()),
        Some(Offset::Offset(2))
    );
    let position = consumer.position().expect("position");
    assert_eq!(position.count(), 1);

    // A partition that is not assigned cannot be sought: the error names the call.
    match consumer.seek("not-assigned", 0, Offset::Offset(0), TIMEOUT) {
        Err(Error::Client { operation, .. }) => assert_eq!(operation, "seek"),
        other => panic!("seek of an unassigned partition: {other:?}"),
    }
    consumer.unassign().expect("unassign");
    assert_eq!(consumer.assignment().expect("assignment").count(), 0);

    // Only the three sends made spans (receiving alone makes none, nor do the calls).
    let spans = h.capture.spans();
    let names: Vec<String> = spans.all().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("send ")), "{names:?}");
}
