//! mqtrace with `tracing`: a service whose handlers use `tracing` spans and events, bridged
//! to OpenTelemetry by tracing-opentelemetry (spans) and opentelemetry-appender-tracing
//! (logs), keeps one trace per message, with tracing-opentelemetry's context activation on
//! (its default) and off.
//!
//! - on: a `tracing` span current at send time is the send span's parent, as is;
//! - off: the same takes one call, `send_with_context(.., &tracing::Span::current().context())`
//!   (`tracing_opentelemetry::OpenTelemetrySpanExt`), since the `tracing` span is then not
//!   the OpenTelemetry current context;
//! - both: `tracing` spans opened in a handler run by `process` are children of the process
//!   span, and `tracing::info!` there carries the message's trace id.

mod common;

use common::{Harness, TIMEOUT, recv};
use mqtrace::kafka::rdkafka::producer::FutureRecord;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Records `tracing` spans into the harness's tracer provider and `tracing` events into
/// `logs`, with or without context activation, for the current thread.
fn subscribe(
    h: &Harness,
    context_activation: bool,
    logs: &InMemoryLogExporter,
) -> (tracing::subscriber::DefaultGuard, SdkLoggerProvider) {
    let logger_provider = SdkLoggerProvider::builder()
        .with_simple_exporter(logs.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(h.capture.tracer_provider().tracer("orders-service"))
                .with_context_activation(context_activation),
        )
        .with(OpenTelemetryTracingBridge::new(&logger_provider));
    (
        tracing::subscriber::set_default(subscriber),
        logger_provider,
    )
}

/// Sends one order inside a `tracing` span `place_order`, consumes it and handles it inside
/// a `tracing` span `score_order` that logs `order scored`; then checks the trace.
async fn one_order_in_one_trace(context_activation: bool) {
    let h = Harness::new(if context_activation {
        "tracing-on"
    } else {
        "tracing-off"
    })
    .await;
    let logs = InMemoryLogExporter::default();
    let (_subscriber, logger_provider) = subscribe(&h, context_activation, &logs);
    let producer = h.producer();
    let consumer = h.consumer();

    async {
        let record = FutureRecord::<str, str>::to(&h.topic).payload("order-1");
        if context_activation {
            // The `tracing` span is the OpenTelemetry current context: nothing to do.
            producer.send(record, TIMEOUT).await
        } else {
            // The one call that does it without context activation.
            let parent = tracing::Span::current().context();
            producer.send_with_context(record, TIMEOUT, &parent).await
        }
        .expect("delivered");
    }
    .instrument(tracing::info_span!("place_order"))
    .await;

    let message = recv(&consumer).await;
    consumer
        .process(&message, async {
            let scoring = tracing::info_span!("score_order");
            let _entered = scoring.enter();
            tracing::info!(order = "order-1", "order scored");
            Ok::<_, std::io::Error>(())
        })
        .await
        .expect("handled");

    let spans = h.capture.spans();
    let place = spans.one("place_order");
    let send = spans.one(&format!("send {}", h.topic));
    let process = spans.one(&format!("process {}", h.topic));
    let score = spans.one("score_order");
    spans.assert_child_of(send, place);
    spans.assert_child_of(process, send);
    spans.assert_child_of(score, process);

    let _ = logger_provider.force_flush();
    let emitted = logs.get_emitted_logs().expect("logs");
    let scored = emitted
        .iter()
        .find(|log| {
            log.record
                .body()
                .is_some_and(|body| format!("{body:?}").contains("order scored"))
        })
        .unwrap_or_else(|| panic!("the handler's event was bridged: {} logs", emitted.len()));
    let trace = scored
        .record
        .trace_context()
        .expect("the event carries a trace context");
    assert_eq!(
        trace.trace_id,
        process.span_context.trace_id(),
        "the event is in the message's trace"
    );
    let expected_span = if context_activation {
        // Entering `score_order` made it the OpenTelemetry current span.
        score.span_context.span_id()
    } else {
        // Without activation the current OpenTelemetry span is still the process span.
        process.span_context.span_id()
    };
    assert_eq!(trace.span_id, expected_span);
    let _ = logger_provider.shutdown();
}

#[tokio::test]
async fn with_context_activation_a_message_and_its_handler_share_one_trace() {
    one_order_in_one_trace(true).await;
}

#[tokio::test]
async fn without_context_activation_one_call_keeps_the_trace_whole() {
    one_order_in_one_trace(false).await;
}

/// Without context activation and without that call, the send does not see the `tracing`
/// span: it starts a trace of its own. This is why the call is needed (and documented).
#[tokio::test]
async fn without_context_activation_a_plain_send_starts_its_own_trace() {
    let h = Harness::new("tracing-off-plain").await;
    let logs = InMemoryLogExporter::default();
    let (_subscriber, logger_provider) = subscribe(&h, false, &logs);
    let producer = h.producer();
    async {
        producer
            .send(
                FutureRecord::<str, str>::to(&h.topic).payload("order-2"),
                TIMEOUT,
            )
            .await
            .expect("delivered");
    }
    .instrument(tracing::info_span!("place_order"))
    .await;
    let spans = h.capture.spans();
    spans.assert_root(spans.one(&format!("send {}", h.topic)));
    let _ = logger_provider.shutdown();
}
