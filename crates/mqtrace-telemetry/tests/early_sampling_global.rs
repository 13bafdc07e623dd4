//! The global tracer provider, followed: an `Instrumentation::global()` built before any
//! provider is installed traces once one is; `mqtrace_telemetry::init`'s provider tells its sampler
//! (early sampling); a provider installed by anyone else is followed too (at once after
//! `refresh_global_tracer`, else within a second) and tells nothing; shutdown ends early
//! decisions.
//!
//! One test in its own binary: it sets the process-wide tracer provider.

use std::time::Duration;

use mqtrace_core::Instrumentation;
use mqtrace_core::instrumentation::refresh_global_tracer;
use mqtrace_core::span::{MessagingSpan, MessagingSpanBuilder, OperationType};
use mqtrace_telemetry::{Destination, Sampling, TelemetryConfig};
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};

fn send(instrumentation: &Instrumentation, parent: &Context) -> MessagingSpan {
    MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
        .with_destination("orders")
        .start(instrumentation, parent)
}

fn remote(flags: u8) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
        SpanId::from(0xb7ad_6b71_6920_3331),
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    ))
}

fn recording_provider() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

fn exported(exporter: &InMemorySpanExporter) -> usize {
    exporter.get_finished_spans().expect("spans").len()
}

#[test]
fn the_global_provider_is_followed_and_its_sampler_decides_early_until_shutdown() {
    // Built before anything is installed: the no-op provider's spans carry nothing.
    let early_bird = Instrumentation::global();
    assert!(format!("{early_bird:?}").contains("tracer: \"global\""));
    let before = send(&early_bird, &Context::new());
    assert!(!before.span_context().is_valid());
    before.end();

    let dir = std::env::temp_dir().join(format!("mqtrace-early-sampling-{}", std::process::id()));
    let guard = mqtrace_telemetry::init_with(
        TelemetryConfig::default()
            .with_destination(Destination::Files { dir: dir.clone() })
            .with_sampling(Sampling::ParentBasedAlwaysOff),
    )
    .expect("telemetry");

    // The instrumentation built before `init` now traces with its provider: a root is
    // dropped (parent-based, always off for roots) yet carries a context on, a sampled
    // parent's child records, and a random unsampled parent's child stays random.
    let root = send(&early_bird, &Context::new());
    assert!(!root.context().span().is_recording());
    assert!(root.span_context().is_valid());
    assert_eq!(root.span_context().trace_flags(), TraceFlags::new(0x00));
    root.end();
    let kept = send(&early_bird, &remote(0x01));
    assert!(kept.context().span().is_recording());
    kept.end();
    let random = send(&early_bird, &remote(0x02));
    assert_eq!(random.span_context().trace_flags(), TraceFlags::new(0x02));
    random.end();

    // Someone else's provider, installed over it and announced: followed at once, and
    // built in full by the SDK (always on: roots record).
    let (theirs, theirs_spans) = recording_provider();
    opentelemetry::global::set_tracer_provider(theirs.clone());
    refresh_global_tracer();
    send(&early_bird, &Context::new()).end();
    assert_eq!(exported(&theirs_spans), 1);

    // Installed without a word: followed within a second.
    let (third, third_spans) = recording_provider();
    opentelemetry::global::set_tracer_provider(third.clone());
    std::thread::sleep(Duration::from_millis(1_100));
    send(&early_bird, &Context::new()).end();
    assert_eq!(exported(&third_spans), 1);
    assert_eq!(exported(&theirs_spans), 1);

    // mqtrace's guard, shut down: an instrumentation built from it stops deciding early
    // (the SDK then gives every span an empty context).
    let from_guard = guard.instrumentation();
    let dropped = send(&from_guard, &Context::new());
    assert!(dropped.span_context().is_valid());
    dropped.end();
    let _ = guard.shutdown();
    let after = send(&from_guard, &Context::new());
    assert!(!after.span_context().is_valid());
    after.end();

    let _ = theirs.shutdown();
    let _ = third.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
