//! The SDK tracer provider [`crate::init`] installs globally, wrapped so that it declares its
//! sampler to mqtrace's instrumentation (`mqtrace_core::sampling`): a span the sampler drops
//! is then dropped before it is built.

use mqtrace_core::sampling::DeclaredSampling;
use opentelemetry::InstrumentationScope;
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// An [`SdkTracerProvider`] that announces its sampler whenever it makes a tracer. Everything
/// else is the SDK's.
#[derive(Debug, Clone)]
pub(crate) struct MarkedTracerProvider {
    inner: SdkTracerProvider,
    declared: DeclaredSampling,
}

impl MarkedTracerProvider {
    /// `inner`, which samples as `declared` says.
    pub(crate) fn new(inner: SdkTracerProvider, declared: DeclaredSampling) -> Self {
        Self { inner, declared }
    }
}

impl TracerProvider for MarkedTracerProvider {
    type Tracer = SdkTracer;

    fn tracer_with_scope(&self, scope: InstrumentationScope) -> SdkTracer {
        self.declared.announce();
        self.inner.tracer_with_scope(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtrace_core::sampling::Sampling;
    use mqtrace_core::{Instrumentation, MessagingSpanBuilder, OperationType};
    use opentelemetry::Context;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn the_global_instrumentation_learns_the_marked_providers_sampler() {
        // `always_off` on the SDK side too, so what decides is visible only in what is
        // built: an early drop makes a non-recording span without asking the SDK.
        let sdk = SdkTracerProvider::builder()
            .with_sampler(crate::sdk_sampler(Sampling::AlwaysOff))
            .build();
        let declared = DeclaredSampling::new(Sampling::AlwaysOff);
        let marked = MarkedTracerProvider::new(sdk, declared.clone());
        opentelemetry::global::set_tracer_provider(marked);
        mqtrace_core::instrumentation::refresh_global_tracer();
        let span = MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
            .with_destination("orders")
            .start(&Instrumentation::global(), &Context::new());
        assert!(!span.context().span().is_recording());
        assert!(
            span.span_context().is_valid(),
            "a dropped span keeps a context"
        );
        declared.withdraw();
    }
}
