//! End to end through the real RabbitMQ: context travels in AMQP headers, publishes end at
//! the broker's confirm, settlement is traced, and bad headers never cost a message.

mod common;

use common::amqp::{AmqpHarness, next};
use common::w3c_cases::CASES;
use mqtrace::amqp::lapin::BasicProperties;
use mqtrace::amqp::lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions,
};
use mqtrace::amqp::lapin::types::{AMQPValue, ByteArray, FieldTable, LongString};
use mqtrace::amqp::{Error, Published};
use mqtrace::core::ParentMode;
use mqtrace::core::propagation::ExtractOutcome;
use opentelemetry::Context;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn publish_root(h: &AmqpHarness, publisher: &mqtrace::amqp::TracedPublisher) {
    let published = publisher
        .publish_with_context(
            "",
            &h.queue,
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
            &Context::new(),
        )
        .await
        .expect("published");
    assert_eq!(published, Published::Confirmed);
}

#[tokio::test]
async fn process_span_is_child_of_confirmed_send_span() {
    let h = AmqpHarness::new("parent").await;
    let publisher = h.publisher().await;
    let mut consumer = h.consumer().await;

    let tracer = h.capture.tracer_provider().tracer("test");
    let cx = Context::current_with_span(tracer.start("inference.request"));
    publisher
        .publish_with_context(
            "",
            &h.queue,
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default()
                .with_message_id("m-1".into())
                .with_correlation_id("c-1".into()),
            &cx,
        )
        .await
        .expect("confirmed");
    cx.span().end();

    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.extracted().outcome, ExtractOutcome::Found);
    consumer
        .process(&delivery, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("handled");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");

    let spans = h.capture.spans();
    let request = spans.one("inference.request");
    let send = spans.one(&format!("send {}", h.queue));
    let process = spans.one(&format!("process {}", h.queue));
    let ack = spans.one(&format!("ack {}", h.queue));
    spans.assert_kind(send, SpanKind::Producer);
    spans.assert_kind(process, SpanKind::Consumer);
    spans.assert_kind(ack, SpanKind::Client);
    spans.assert_child_of(send, request);
    spans.assert_child_of(process, send);
    spans.assert_links_to(process, send);
    assert_eq!(
        send.status,
        Status::Unset,
        "a confirmed publish is not an error"
    );

    spans.assert_attr(send, "messaging.system", "rabbitmq");
    spans.assert_attr(send, "messaging.operation.type", "send");
    spans.assert_attr(send, "messaging.destination.name", h.queue.clone());
    spans.assert_attr(
        send,
        "messaging.rabbitmq.destination.routing_key",
        h.queue.clone(),
    );
    spans.assert_attr(send, "messaging.message.id", "m-1");
    spans.assert_attr(send, "messaging.message.conversation_id", "c-1");
    spans.assert_attr(send, "messaging.message.body.size", 5_i64);
    spans.assert_attr(send, "server.address", "127.0.0.1");
    spans.assert_attr(send, "server.port", 5672_i64);
    spans.assert_attr(process, "messaging.operation.type", "process");
    spans.assert_attr(process, "messaging.rabbitmq.message.delivery_tag", 1_i64);
    spans.assert_attr(process, "messaging.rabbitmq.message.redelivered", false);
    spans.assert_attr(ack, "messaging.operation.type", "settle");
    spans.assert_attr(ack, "messaging.operation.name", "ack");
    // Acked after the handler, outside any span: in the message's trace, not a stray root.
    spans.assert_child_of(ack, send);
    spans.assert_links_to(ack, send);

    let metrics = h.capture.metrics();
    metrics.assert_unit("messaging.client.sent.messages", "{message}");
    metrics.assert_unit("messaging.client.operation.duration", "s");
    let sent = metrics.points("messaging.client.sent.messages");
    assert!(
        sent.iter()
            .any(|p| p.value == 1.0 && p.has("messaging.system", "rabbitmq")),
        "{sent:?}"
    );
    assert_eq!(metrics.total("messaging.client.consumed.messages"), 1.0);
}

#[tokio::test]
async fn link_mode_starts_a_new_trace_with_only_a_link() {
    let h = AmqpHarness::new("link").await;
    let publisher = h.publisher().await;
    let mut consumer = h.consumer().await.with_parent_mode(ParentMode::Link);
    publish_root(&h, &publisher).await;
    let delivery = next(&mut consumer).await;
    consumer
        .process(&delivery, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("handled");
    let spans = h.capture.spans();
    let send = spans.one(&format!("send {}", h.queue));
    let process = spans.one(&format!("process {}", h.queue));
    spans.assert_root(process);
    spans.assert_links_to(process, send);
}

#[tokio::test]
async fn application_headers_are_kept_and_stale_context_replaced() {
    let h = AmqpHarness::new("headers").await;
    let publisher = h.publisher().await;
    let mut consumer = h.consumer().await;
    let mut headers = FieldTable::default();
    headers.insert("app-id".into(), AMQPValue::LongInt(42));
    headers.insert(
        "TraceParent".into(),
        AMQPValue::LongString(LongString::from(VALID)),
    );
    headers.insert(
        "tracestate".into(),
        AMQPValue::LongString(LongString::from("stale=1")),
    );
    publisher
        .publish_with_context(
            "",
            &h.queue,
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_headers(headers),
            &Context::new(),
        )
        .await
        .expect("confirmed");
    let delivery = next(&mut consumer).await;
    let received = delivery.properties.headers().clone().expect("headers");
    let keys: Vec<&str> = received.inner().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["app-id", "traceparent"]);
    assert_eq!(
        received.inner().get("app-id"),
        Some(&AMQPValue::LongInt(42))
    );
    let send = h.capture.spans().one(&format!("send {}", h.queue)).clone();
    let carried = delivery.extracted().remote_span_context().expect("context");
    assert_eq!(carried.span_id(), send.span_context.span_id());
}

#[tokio::test]
async fn missing_exchange_fails_clearly_and_the_publisher_recovers() {
    let h = AmqpHarness::new("missing-exchange").await;
    let publisher = h.publisher().await;
    let error = publisher
        .publish_with_context(
            "mqtrace-no-such-exchange",
            "anything",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
            &Context::new(),
        )
        .await
        .expect_err("the exchange does not exist");
    assert!(matches!(error, Error::Publish { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("mqtrace-no-such-exchange:anything"),
        "{error}"
    );

    let spans = h.capture.spans();
    let failed = spans.one("send mqtrace-no-such-exchange:anything");
    assert!(
        matches!(failed.status, Status::Error { .. }),
        "{:?}",
        failed.status
    );
    assert!(spans.attr(failed, "error.type").is_some());

    // The broker closed the channel; the next publish reopens one and succeeds.
    publish_root(&h, &publisher).await;
    let mut consumer = h.consumer().await;
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.data, b"x");
}

#[tokio::test]
async fn unroutable_mandatory_message_is_returned_as_an_error() {
    let h = AmqpHarness::new("unroutable").await;
    let exchange = h
        .rabbit
        .declare_exchange_to("orders", &h.queue, "eu")
        .await
        .expect("exchange");
    let publisher = h.publisher().await;
    let error = publisher
        .publish_with_context(
            &exchange,
            "nowhere",
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"x",
            BasicProperties::default(),
            &Context::new(),
        )
        .await
        .expect_err("no queue is bound with this routing key");
    assert!(
        matches!(
            error,
            Error::Returned {
                reply_code: 312,
                ..
            }
        ),
        "{error}"
    );
    let spans = h.capture.spans();
    let send = spans.one(&format!("send {exchange}:nowhere"));
    assert!(matches!(send.status, Status::Error { .. }));
    spans.assert_attr(send, "error.type", "returned");

    // Routed through the exchange, the consumer destination names exchange, key and queue.
    publisher
        .publish_with_context(
            &exchange,
            "eu",
            BasicPublishOptions::default(),
            b"y",
            BasicProperties::default(),
            &Context::new(),
        )
        .await
        .expect("routed");
    let mut consumer = h.consumer().await;
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.destination(), format!("{exchange}:eu:{}", h.queue));
}

#[tokio::test]
async fn requeued_deliveries_keep_the_producer_context() {
    let h = AmqpHarness::new("requeue").await;
    let publisher = h.publisher().await;
    let mut consumer = h.consumer().await;
    publish_root(&h, &publisher).await;

    let first = next(&mut consumer).await;
    consumer
        .process(&first, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("handled");
    first
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .expect("nack");

    let second = next(&mut consumer).await;
    assert!(second.redelivered);
    consumer
        .process(&second, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("handled");
    second
        .reject(BasicRejectOptions { requeue: true })
        .await
        .expect("reject");

    let third = next(&mut consumer).await;
    consumer
        .process(&third, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("handled");
    third.ack(BasicAckOptions::default()).await.expect("ack");

    let spans = h.capture.spans();
    let send = spans.one(&format!("send {}", h.queue));
    let processes = spans.named(&format!("process {}", h.queue));
    assert_eq!(processes.len(), 3, "one process span per delivery");
    for process in &processes {
        spans.assert_child_of(process, send);
    }
    assert_eq!(
        processes
            .iter()
            .filter(
                |p| spans.attr(p, "messaging.rabbitmq.message.redelivered") == Some(&true.into())
            )
            .count(),
        2
    );
    for operation in ["nack", "reject", "ack"] {
        let settle = spans.one(&format!("{operation} {}", h.queue));
        spans.assert_attr(settle, "messaging.operation.type", "settle");
        spans.assert_attr(settle, "messaging.operation.name", operation);
        spans.assert_links_to(settle, send);
    }
}

/// ShortString (`s`) table values are read by the carrier too (see the unit tests in
/// `mqtrace-amqp`'s `headers` module), but RabbitMQ itself cannot parse them: a publish that
/// carries one makes the broker close the connection (`INTERNAL_ERROR`, `parse_table`
/// `function_clause` in its log), so no such message can reach a consumer through RabbitMQ.
#[tokio::test]
async fn byte_array_and_long_string_traceparents_are_honoured() {
    let h = AmqpHarness::new("encodings").await;
    h.publish_raw(vec![(
        "traceparent",
        AMQPValue::ByteArray(ByteArray::from(VALID.as_bytes())),
    )])
    .await;
    h.publish_raw(vec![(
        "traceparent",
        AMQPValue::LongString(LongString::from(VALID)),
    )])
    .await;
    let mut consumer = h.consumer().await;
    for encoding in ["ByteArray", "LongString"] {
        let delivery = next(&mut consumer).await;
        let context = delivery
            .extracted()
            .remote_span_context()
            .unwrap_or_else(|| panic!("{encoding} honoured"));
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c",
            "{encoding}"
        );
    }
}

#[tokio::test]
async fn garbage_headers_are_survived_and_counted() {
    let h = AmqpHarness::new("garbage").await;
    h.publish_raw(vec![(
        "traceparent",
        AMQPValue::LongString(LongString::from("garbage")),
    )])
    .await;
    h.publish_raw(vec![("traceparent", AMQPValue::LongLongInt(7))])
        .await;
    h.publish_raw(vec![(
        "traceparent",
        AMQPValue::ByteArray(ByteArray::from(&[0xff_u8, 0xfe][..])),
    )])
    .await;
    let mut consumer = h.consumer().await;
    for reason in ["rejected", "not_text", "not_utf8"] {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.data, b"raw", "still delivered");
        assert!(
            matches!(delivery.extracted().outcome, ExtractOutcome::Invalid(_)),
            "{reason}"
        );
        consumer
            .process(&delivery, async { Ok::<_, std::io::Error>(()) })
            .await
            .expect("handled");
        let points = h.capture.metrics().points("mqtrace.propagation.invalid");
        assert!(
            points
                .iter()
                .any(|p| p.has("mqtrace.propagation.invalid_reason", reason)
                    && p.has("messaging.system", "rabbitmq")),
            "{reason}: {points:?}"
        );
    }
    for process in h.capture.spans().named(&format!("process {}", h.queue)) {
        assert!(process.links.is_empty());
        h.capture.spans().assert_root(process);
    }
}

#[tokio::test]
async fn w3c_cases_survive_amqp_transport_as_strings_and_bytes() {
    let h = AmqpHarness::new("w3c").await;
    type Encode = fn(&str) -> AMQPValue;
    // ShortString values cannot pass through RabbitMQ (see above).
    let encodings: [(&str, Encode); 2] = [
        ("LongString", |v| AMQPValue::LongString(LongString::from(v))),
        ("ByteArray", |v| {
            AMQPValue::ByteArray(ByteArray::from(v.as_bytes()))
        }),
    ];
    // AMQP tables hold one value per key, so the duplicate-header cases do not apply here.
    let cases: Vec<_> = CASES
        .iter()
        .filter(|case| {
            let mut keys: Vec<String> = case
                .headers
                .iter()
                .map(|(k, _)| k.to_ascii_lowercase())
                .collect();
            keys.sort();
            keys.windows(2).all(|w| w[0] != w[1])
        })
        .collect();
    for (_, encode) in encodings {
        for case in &cases {
            h.publish_raw(case.headers.iter().map(|(k, v)| (*k, encode(v))).collect())
                .await;
        }
    }
    let mut consumer = h.consumer().await;
    let mut failures = Vec::new();
    for (encoding, _) in encodings {
        for case in &cases {
            let delivery = next(&mut consumer).await;
            let injected = consumer
                .instrumentation()
                .propagation()
                .inject(delivery.context());
            let get = |key: &str| {
                injected
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_owned())
            };
            let (traceparent, tracestate) = (get("traceparent"), get("tracestate"));
            if traceparent.as_deref() != case.traceparent
                || tracestate.as_deref() != case.tracestate
            {
                failures.push(format!(
                    "{} ({encoding}): expected {:?} {:?}, got {traceparent:?} {tracestate:?}",
                    case.name, case.traceparent, case.tracestate
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}

/// A foreign publisher's context with the W3C Level 2 random flag keeps it through a consumer
/// whose sampler drops the process span (`02`: random, not sampled) as through one that
/// records it (`03`): what the handler publishes onward carries the incoming trace id, the
/// flags and the tracestate, under the forwarding send span's own id. (The SDK alone would
/// send `00` onward for `02`.)
#[tokio::test]
async fn random_flag_survives_unsampled_and_sampled_hops() {
    use common::random_flag::{
        FLAGS, TRACESTATE, assert_forwarded, assert_only_sampled_hops_exported,
        incoming_traceparent,
    };
    let h = AmqpHarness::new("random-in").await;
    let out_queue = h.rabbit.declare_queue("random-out").await.expect("queue");
    let publisher = h.publisher().await;
    let mut consumer = h.consumer().await;
    let mut downstream = h.consumer_of(&out_queue).await;
    for flags in FLAGS {
        let traceparent = incoming_traceparent(flags);
        h.publish_raw(vec![
            (
                "traceparent",
                AMQPValue::LongString(LongString::from(traceparent.as_str())),
            ),
            (
                "tracestate",
                AMQPValue::ByteArray(ByteArray::from(TRACESTATE.as_bytes())),
            ),
        ])
        .await;
    }

    for flags in FLAGS {
        let delivery = next(&mut consumer).await;
        let incoming = delivery.extracted().remote_span_context().expect("context");
        assert_eq!(format!("{:02x}", incoming.trace_flags().to_u8()), flags);
        consumer
            .process(&delivery, async {
                publisher
                    .publish(
                        "",
                        &out_queue,
                        BasicPublishOptions::default(),
                        b"forwarded",
                        BasicProperties::default(),
                    )
                    .await
            })
            .await
            .expect("published onward");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");

        let forwarded = next(&mut downstream).await;
        let headers = forwarded.properties.headers().clone().expect("headers");
        let header = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(value)) => {
                Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
            }
            Some(AMQPValue::ByteArray(value)) => {
                Some(String::from_utf8_lossy(value.as_slice()).into_owned())
            }
            _ => None,
        };
        assert_forwarded(flags, header("traceparent"), header("tracestate"));
    }

    assert_only_sampled_hops_exported(
        &h.capture.spans(),
        &[format!("process {}", h.queue), format!("send {out_queue}")],
    );
}

/// The consumer is a `futures::Stream` of traced deliveries, as lapin's is one of deliveries:
/// stream combinators see every delivery with its producer's context.
#[tokio::test]
async fn the_consumer_is_a_stream_of_traced_deliveries() {
    use futures::StreamExt as _;

    let h = AmqpHarness::new("stream").await;
    let publisher = h.publisher().await;
    let mut consumer = h.consumer().await;
    for _ in 0..3 {
        publish_root(&h, &publisher).await;
    }
    let deliveries: Vec<_> =
        tokio::time::timeout(common::TIMEOUT, (&mut consumer).take(3).collect())
            .await
            .expect("three deliveries in time");
    assert_eq!(deliveries.len(), 3);
    let mut producers = std::collections::HashSet::new();
    for delivery in deliveries {
        let delivery = delivery.expect("delivery");
        assert_eq!(delivery.extracted().outcome, ExtractOutcome::Found);
        producers.insert(
            delivery
                .extracted()
                .remote_span_context()
                .map(|sc| sc.trace_id()),
        );
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(
        producers.len(),
        3,
        "each delivery carries its own producer's context"
    );
}

/// `begin_publish` returns once the broker has the message, like lapin's `basic_publish`:
/// many messages are in flight on one channel, each send span ends at its own confirm, and
/// a confirm dropped unawaited leaves the message published and its span `cancelled`.
#[tokio::test]
async fn publishes_can_be_pipelined_and_confirmed_later() {
    let h = AmqpHarness::new("pipelined").await;
    let publisher = h.publisher().await;
    let mut consumer = h.consumer().await;
    let tracer = h.capture.tracer_provider().tracer("test");
    let cx = Context::current_with_span(tracer.start("batch.request"));
    let _attached = cx.clone().attach();

    let mut pending = Vec::new();
    for n in 0..20 {
        let body = format!("request {n}");
        pending.push(
            publisher
                .begin_publish(
                    "",
                    &h.queue,
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("published"),
        );
    }
    let dropped = pending.pop().expect("twenty");
    drop(dropped);
    for confirm in pending {
        assert_eq!(confirm.await.expect("confirmed"), Published::Confirmed);
    }
    for _ in 0..20 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.extracted().outcome, ExtractOutcome::Found);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    cx.span().end();

    let spans = h.capture.spans();
    let request = spans.one("batch.request");
    let sends: Vec<_> = spans
        .all()
        .iter()
        .filter(|s| s.name == format!("send {}", h.queue))
        .collect();
    assert_eq!(sends.len(), 20);
    assert!(
        sends
            .iter()
            .all(|s| s.parent_span_id == request.span_context.span_id())
    );
    let cancelled = sends
        .iter()
        .filter(|s| matches!(s.status, Status::Error { .. }))
        .count();
    assert_eq!(
        cancelled, 1,
        "the dropped confirm's span, and only it, ends cancelled"
    );
}
