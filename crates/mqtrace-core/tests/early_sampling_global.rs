//! Early sampling through the global provider: `telemetry::init` installs a provider whose
//! sampler `Instrumentation::global()` learns, a provider installed by anyone else tells
//! nothing, and shutdown ends early decisions.
//!
//! One test in its own binary: it sets the process-wide tracer provider.

use mqtrace_core::Instrumentation;
use mqtrace_core::span::{MessagingSpan, MessagingSpanBuilder, OperationType};
use mqtrace_core::telemetry::{self, Destination, Sampling, TelemetryConfig};
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

#[test]
fn the_installed_sampler_decides_early_until_shutdown_and_only_for_its_own_provider() {
    let dir = std::env::temp_dir().join(format!("mqtrace-early-sampling-{}", std::process::id()));
    let guard = telemetry::init_with(
        TelemetryConfig::default()
            .with_destination(Destination::Files { dir: dir.clone() })
            .with_sampling(Sampling::ParentBasedAlwaysOff),
    )
    .expect("telemetry");
    let ours = Instrumentation::global();
    assert!(
        format!("{ours:?}").contains("sampler_known: true"),
        "{ours:?}"
    );

    // A root is dropped early (parent-based, always off for roots) yet carries a context on.
    let root = send(&ours, &Context::new());
    let sc = root.span_context();
    assert!(!root.context().span().is_recording());
    assert!(sc.is_valid());
    assert_eq!(sc.trace_flags(), TraceFlags::new(0x00));
    root.end();
    // A sampled parent's child is built and recorded by the SDK; a random one stays random.
    let kept = send(&ours, &remote(0x01));
    assert!(kept.context().span().is_recording());
    kept.end();
    let random = send(&ours, &remote(0x02));
    assert_eq!(random.span_context().trace_flags(), TraceFlags::new(0x02));
    random.end();

    // Someone else's provider, installed over ours, says nothing about its sampler: its
    // spans are built and sampled by the SDK (always on here).
    let exporter = InMemorySpanExporter::default();
    let theirs_provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(theirs_provider.clone());
    let theirs = Instrumentation::global();
    assert!(
        format!("{theirs:?}").contains("sampler_known: false"),
        "{theirs:?}"
    );
    send(&theirs, &Context::new()).end();
    assert_eq!(exporter.get_finished_spans().expect("spans").len(), 1);

    // After shutdown the SDK gives spans an empty context, and early decisions stop too.
    let _ = guard.shutdown();
    let after = send(&ours, &Context::new());
    assert!(!after.span_context().is_valid());
    after.end();
    let _ = theirs_provider.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
