//! [`Instrumentation`]: the tracer, instruments and propagator a traced client works with.
//!
//! Built once per wrapper (cheap to clone). By default it uses the global tracer provider,
//! meter provider and propagator; tests and applications that keep their own providers pass
//! them with the builder.
//!
//! The global tracer and meter are captured when the instrumentation is built, so build it
//! (or the wrapper) *after* [`crate::telemetry::init`].

use std::fmt;
use std::sync::Arc;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::trace::{Span as _, SpanBuilder, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope};

use crate::carrier::HeaderSource;
use crate::metrics::MessagingMetrics;
use crate::propagation::{ExtractOutcome, Extracted, Propagation};
use crate::semconv;

/// The instrumentation scope mqtrace's spans and metrics are reported under.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("mqtrace")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(semconv::SCHEMA_URL)
        .build()
}

/// Tracer, metrics and propagation shared by a traced client.
///
/// # Example
///
/// ```
/// use mqtrace_core::instrumentation::Instrumentation;
/// use opentelemetry_sdk::metrics::SdkMeterProvider;
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// let tracer_provider = SdkTracerProvider::builder().build();
/// let meter_provider = SdkMeterProvider::builder().build();
/// let instrumentation = Instrumentation::builder()
///     .with_tracer_provider(&tracer_provider)
///     .with_meter_provider(&meter_provider)
///     .build();
/// # let _ = instrumentation;
/// ```
#[derive(Clone)]
pub struct Instrumentation {
    tracer: Arc<BoxedTracer>,
    /// The same tracer with its own span type, for mqtrace's messaging spans.
    starter: Arc<dyn SpanStarter>,
    meter: Meter,
    metrics: Arc<MessagingMetrics>,
    propagation: Propagation,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumentation")
            .field("propagation", &self.propagation)
            .finish_non_exhaustive()
    }
}

impl Default for Instrumentation {
    fn default() -> Self {
        Self::global()
    }
}

impl Instrumentation {
    /// Uses the global tracer provider, meter provider and propagator.
    pub fn global() -> Self {
        Self::builder().build()
    }

    /// Starts a builder that defaults to the global providers.
    pub fn builder() -> InstrumentationBuilder {
        InstrumentationBuilder::default()
    }

    /// The tracer spans are started with.
    pub fn tracer(&self) -> &BoxedTracer {
        &self.tracer
    }

    /// Starts a span from `builder` as a child of `parent` and returns `parent` with it
    /// active. A span the sampler dropped is not kept behind the context: the context
    /// carries its span context (for injection and children) and nothing else.
    pub(crate) fn start_in_context(&self, builder: SpanBuilder, parent: &Context) -> Context {
        self.starter.start_in_context(builder, parent)
    }

    /// The meter mqtrace's instruments live on, for components that add their own (the
    /// batch-inference worker's metrics, for one).
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The messaging instruments.
    pub fn metrics(&self) -> &MessagingMetrics {
        &self.metrics
    }

    pub(crate) fn metrics_arc(&self) -> Arc<MessagingMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The propagation settings.
    pub fn propagation(&self) -> &Propagation {
        &self.propagation
    }

    /// Extracts the producer's context from `headers`, counting unusable headers in
    /// `mqtrace.propagation.invalid` under `system`.
    pub fn extract<S: HeaderSource + ?Sized>(
        &self,
        system: &'static str,
        headers: &S,
    ) -> Extracted {
        let extracted = self.propagation.extract(headers);
        if let ExtractOutcome::Invalid(invalid) = &extracted.outcome {
            self.metrics.record_invalid_context(system, invalid.reason);
        }
        extracted
    }
}

/// Starts spans straight into a [`Context`], with the tracer's own span type: a span from a
/// provider's tracer is boxed once, by the context, instead of once by [`BoxedTracer`] and
/// again by the context.
trait SpanStarter: Send + Sync {
    fn start_in_context(&self, builder: SpanBuilder, parent: &Context) -> Context;
}

impl<T> SpanStarter for T
where
    T: Tracer + Send + Sync,
    T::Span: Send + Sync + 'static,
{
    fn start_in_context(&self, builder: SpanBuilder, parent: &Context) -> Context {
        let span = self.build_with_context(builder, parent);
        if span.is_recording() {
            parent.with_span(span)
        } else {
            // The SDK gives a dropped span the flags 00: keep the trace's random flag.
            let sc = crate::span::keeping_random(parent, span.span_context())
                .unwrap_or_else(|| span.span_context().clone());
            parent.with_remote_span_context(sc)
        }
    }
}

/// Builder for [`Instrumentation`].
#[derive(Default)]
pub struct InstrumentationBuilder {
    tracer: Option<(BoxedTracer, Arc<dyn SpanStarter>)>,
    meter: Option<Meter>,
    propagation: Propagation,
}

impl fmt::Debug for InstrumentationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentationBuilder")
            .field("custom_tracer", &self.tracer.is_some())
            .field("custom_meter", &self.meter.is_some())
            .field("propagation", &self.propagation)
            .finish()
    }
}

impl InstrumentationBuilder {
    /// Start spans with a tracer from `provider` instead of the global one.
    pub fn with_tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        let boxed = BoxedTracer::new(Box::new(provider.tracer_with_scope(scope())));
        let starter: Arc<dyn SpanStarter> = Arc::new(provider.tracer_with_scope(scope()));
        self.tracer = Some((boxed, starter));
        self
    }

    /// Record metrics with a meter from `provider` instead of the global one.
    pub fn with_meter_provider<P>(mut self, provider: &P) -> Self
    where
        P: MeterProvider + ?Sized,
    {
        self.meter = Some(provider.meter_with_scope(scope()));
        self
    }

    /// Use these propagation settings (a pinned propagator, header limits).
    pub fn with_propagation(mut self, propagation: Propagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Builds the instrumentation; unset parts come from the global providers.
    pub fn build(self) -> Instrumentation {
        let meter = self
            .meter
            .unwrap_or_else(|| opentelemetry::global::meter_with_scope(scope()));
        let (tracer, starter) = match self.tracer {
            Some((boxed, starter)) => (Arc::new(boxed), starter),
            None => {
                let global = Arc::new(opentelemetry::global::tracer_with_scope(scope()));
                let starter: Arc<dyn SpanStarter> = global.clone();
                (global, starter)
            }
        };
        Instrumentation {
            tracer,
            starter,
            metrics: Arc::new(MessagingMetrics::new(&meter)),
            meter,
            propagation: self.propagation,
        }
    }
}
