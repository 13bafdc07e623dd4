//! Moving a service onto mqtrace: `examples/orders_untraced.rs` (rust-rdkafka, `tracing`,
//! tracing-opentelemetry) and `examples/orders_traced.rs` (the same on mqtrace). The
//! difference stays small and leaves every public signature as it was, and the traced
//! version keeps each order in one trace where the untraced one breaks it at the queue.

use std::collections::HashSet;

use mqtrace_testkit::kafka::{KafkaFixture, unique_name};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

#[path = "../examples/orders_traced.rs"]
#[allow(dead_code, unreachable_pub)]
mod orders_traced;
#[path = "../examples/orders_untraced.rs"]
#[allow(dead_code, unreachable_pub)]
mod orders_untraced;

const UNTRACED: &str = include_str!("../examples/orders_untraced.rs");
const TRACED: &str = include_str!("../examples/orders_traced.rs");

/// A file's lines without its module doc (`//!`), which describes each file differently.
fn code(file: &str) -> Vec<&str> {
    file.lines().filter(|l| !l.starts_with("//!")).collect()
}

/// (removed, added) lines from `a` to `b`, by their longest common subsequence.
fn diff(a: &[&str], b: &[&str]) -> (usize, usize) {
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let common = lcs[0][0];
    (a.len() - common, b.len() - common)
}

/// Every public function's signature, up to its body, whitespace normalised.
fn public_signatures(lines: &[&str]) -> Vec<String> {
    let mut signatures = Vec::new();
    let mut current: Option<String> = None;
    for line in lines {
        let trimmed = line.trim();
        if current.is_none()
            && (trimmed.starts_with("pub fn ") || trimmed.starts_with("pub async fn "))
        {
            current = Some(String::new());
        }
        if let Some(signature) = current.as_mut() {
            let part = trimmed.split('{').next().unwrap_or_default();
            signature.push_str(part);
            signature.push(' ');
            if trimmed.contains('{') {
                signatures.push(signature.split_whitespace().collect::<Vec<_>>().join(" "));
                current = None;
            }
        }
    }
    signatures
}

#[test]
fn the_migration_is_small_and_changes_no_public_signature() {
    let (untraced, traced) = (code(UNTRACED), code(TRACED));
    let (removed, added) = diff(&untraced, &traced);
    let share = |n: usize| 100.0 * n as f64 / untraced.len() as f64;
    println!(
        "orders_untraced.rs -> orders_traced.rs: {} lines -> {} lines; {removed} removed ({:.1} %), {added} added ({:.1} %)",
        untraced.len(),
        traced.len(),
        share(removed),
        share(added),
    );
    // At most 10 % of the lines, either way.
    assert!(share(added) <= 10.0, "{added} lines added");
    assert!(share(removed) <= 10.0, "{removed} lines removed");

    let before = public_signatures(&untraced);
    let after = public_signatures(&traced);
    assert_eq!(before.len(), 4, "{before:?}");
    assert_eq!(before, after, "a public signature changed");
}

/// Runs one version's service on an embedded Kafka, recording spans in memory (as the
/// examples' `main` does), and returns them.
async fn serve_orders(traced: bool) -> Vec<SpanData> {
    // A broker of its own, embedded even where the suite runs against an external one: the
    // topic names are the service's, and each run must start on empty topics.
    let kafka = KafkaFixture::embedded(1).expect("Kafka");
    kafka.create_named_topic("orders", 1).await.expect("topic");
    kafka
        .create_named_topic("confirmations", 1)
        .await
        .expect("topic");
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    mqtrace::core::instrumentation::refresh_global_tracer();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("orders")));
    let _default = tracing::subscriber::set_default(subscriber);
    let group = unique_name("orders");
    if traced {
        let orders =
            orders_traced::Orders::connect(&kafka.producer_config(), &group).expect("connect");
        for n in 0..10 {
            orders.place(&format!("order-{n}")).await.expect("placed");
        }
        assert_eq!(orders.serve(10).await.expect("served"), 10);
        orders.flush().expect("flush");
    } else {
        let orders =
            orders_untraced::Orders::connect(&kafka.producer_config(), &group).expect("connect");
        for n in 0..10 {
            orders.place(&format!("order-{n}")).await.expect("placed");
        }
        assert_eq!(orders.serve(10).await.expect("served"), 10);
        orders.flush().expect("flush");
    }
    spans.get_finished_spans().expect("spans")
}

#[tokio::test]
async fn the_traced_service_keeps_each_order_in_one_trace() {
    let kafka = KafkaFixture::start().expect("Kafka");
    kafka.create_named_topic("orders", 1).await.expect("topic");
    kafka
        .create_named_topic("confirmations", 1)
        .await
        .expect("topic");

    // Before: only the `tracing` spans of `check`, each a trace of its own.
    let before = serve_orders(false).await;
    assert!(
        before.iter().all(|s| s.name == "check"),
        "{:?}",
        before.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(before.len(), 10);

    // After: per order, send orders -> process orders -> (check, send confirmations), and
    // the commit; all in the order's trace.
    let after = serve_orders(true).await;
    let traces: HashSet<_> = after.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(traces.len(), 10, "one trace per order");
    for name in [
        "send orders",
        "process orders",
        "check",
        "send confirmations",
        "commit orders",
    ] {
        assert_eq!(
            after.iter().filter(|s| s.name == name).count(),
            10,
            "{name}"
        );
    }
    for trace in traces {
        let in_trace: Vec<_> = after
            .iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        let one = |name: &str| {
            in_trace
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} in the trace"))
        };
        let process = one("process orders");
        assert_eq!(
            process.parent_span_id,
            one("send orders").span_context.span_id()
        );
        assert_eq!(one("check").parent_span_id, process.span_context.span_id());
        assert_eq!(
            one("send confirmations").parent_span_id,
            process.span_context.span_id()
        );
    }
}
