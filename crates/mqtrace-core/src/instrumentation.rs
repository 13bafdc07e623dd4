//! [`Instrumentation`]: the tracer, instruments and propagator a traced client works with.
//!
//! Built once per wrapper (cheap to clone). By default it uses the global tracer provider,
//! meter provider and propagator; tests and applications that keep their own providers pass
//! them with the builder.
//!
//! The global tracer is followed, not captured: an instrumentation (or wrapper) built before
//! a provider is installed traces with it once it is, at once with `mqtrace_telemetry::init`
//! or after [`refresh_global_tracer`], else within a second. The global meter is captured
//! when the instrumentation is built, so build it *after* the meter provider is installed
//! (`mqtrace_telemetry::init` installs both).

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::global::BoxedTracer;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::trace::{Span as _, SpanBuilder, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope};

use crate::carrier::HeaderSource;
use crate::early_sampling::EarlySampler;
use crate::metrics::MessagingMetrics;
use crate::propagation::{ExtractOutcome, Extracted, Propagation};
use crate::sampling::{DeclaredSampling, Sampling};
use crate::semconv;

pub use crate::global_tracer::refresh as refresh_global_tracer;

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
    tracer: TracerSource,
    meter: Meter,
    metrics: Arc<MessagingMetrics>,
    propagation: Propagation,
    /// The tracer's sampler, when declared or known for a given provider: spans it drops
    /// are started without being built. The global provider's comes with it when resolved.
    early: Option<Arc<EarlySampler>>,
}

/// Where spans are started.
#[derive(Clone)]
enum TracerSource {
    /// A provider given to the builder: its tracer, boxed for [`Instrumentation::tracer`],
    /// and the same tracer with its own span type, for mqtrace's messaging spans.
    Provider {
        tracer: Arc<BoxedTracer>,
        starter: Arc<dyn SpanStarter>,
    },
    /// Whatever provider is installed globally now (`global_tracer`).
    Global,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumentation")
            .field(
                "tracer",
                &match self.tracer {
                    TracerSource::Provider { .. } => "provider",
                    TracerSource::Global => "global",
                },
            )
            .field("propagation", &self.propagation)
            .field("sampler_declared", &self.early.is_some())
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

    /// The tracer spans are started with: the given provider's, or the global provider's
    /// as installed now (a tracer taken from it keeps that provider; take it per use).
    pub fn tracer(&self) -> Arc<BoxedTracer> {
        match &self.tracer {
            TracerSource::Provider { tracer, .. } => Arc::clone(tracer),
            TracerSource::Global => crate::global_tracer::with_current(Instant::now(), |global| {
                Arc::clone(&global.tracer)
            }),
        }
    }

    /// Starts a span from `builder` as a child of `parent` and returns `parent` with it
    /// active. A span the sampler dropped is not kept behind the context: the context
    /// carries its span context (for injection and children) and nothing else.
    /// `now` is the caller's clock reading (the global tracer is re-resolved by it).
    pub(crate) fn start_in_context(
        &self,
        builder: SpanBuilder,
        parent: &Context,
        now: Instant,
    ) -> Context {
        match &self.tracer {
            TracerSource::Provider { starter, .. } => starter.start_in_context(builder, parent),
            TracerSource::Global => crate::global_tracer::with_current(now, |global| {
                global.tracer.start_in_context(builder, parent)
            }),
        }
    }

    /// `parent` with the context of a span the tracer's sampler drops whatever its kind,
    /// name, attributes and links, decided before anything is built; `None` when the span
    /// must be built and started (see `early_sampling`).
    pub(crate) fn dropped_early(&self, parent: &Context, now: Instant) -> Option<Context> {
        match (&self.early, &self.tracer) {
            (Some(declared), _) => declared.dropped(parent),
            (None, TracerSource::Provider { .. }) => None,
            (None, TracerSource::Global) => crate::global_tracer::with_current(now, |global| {
                global.early.as_ref()?.dropped(parent)
            }),
        }
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
    early: Option<EarlySampler>,
}

impl fmt::Debug for InstrumentationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentationBuilder")
            .field("custom_tracer", &self.tracer.is_some())
            .field("custom_meter", &self.meter.is_some())
            .field("propagation", &self.propagation)
            .field("sampler_known", &self.early.is_some())
            .finish()
    }
}

impl InstrumentationBuilder {
    /// Start spans with a tracer from `provider` instead of the global one.
    ///
    /// mqtrace cannot see which sampler `provider` uses, so every span is built in full
    /// before the sampler decides; say which one with
    /// [`InstrumentationBuilder::with_sampling`] to skip that for spans it drops.
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

    /// Declares that the tracer provider given with
    /// [`InstrumentationBuilder::with_tracer_provider`] samples with `sampling` (the SDK's
    /// built-in sampler of that name). mqtrace then decides like that sampler before
    /// building a span, and a span it drops is started without its name, attributes or
    /// links being made: an unsampled message costs propagation and metrics, not spans.
    /// Spans it keeps are built and sampled by the provider as before.
    ///
    /// It must be the provider's own sampler: with another one, spans the provider would
    /// keep could be dropped. `mqtrace_telemetry::init` (through `Instrumentation::global()`)
    /// and `mqtrace_telemetry::TelemetryGuard::instrumentation` know it without this.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::Instrumentation;
    /// use mqtrace_core::sampling::Sampling;
    /// use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    ///
    /// let provider = SdkTracerProvider::builder()
    ///     .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01))))
    ///     .build();
    /// let instrumentation = Instrumentation::builder()
    ///     .with_tracer_provider(&provider)
    ///     .with_sampling(Sampling::ParentBasedTraceIdRatio(0.01))
    ///     .build();
    /// # let _ = instrumentation;
    /// ```
    pub fn with_sampling(self, sampling: Sampling) -> Self {
        self.with_early_sampler(EarlySampler::new(sampling, None))
    }

    /// Like [`with_sampling`](Self::with_sampling), for as long as `declared` is in force:
    /// once it is withdrawn (the provider shut down), every span goes through the provider.
    pub fn with_declared_sampling(self, declared: &DeclaredSampling) -> Self {
        self.with_early_sampler(EarlySampler::declared(declared))
    }

    pub(crate) fn with_early_sampler(mut self, early: EarlySampler) -> Self {
        self.early = Some(early);
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
        let tracer = match self.tracer {
            Some((boxed, starter)) => TracerSource::Provider {
                tracer: Arc::new(boxed),
                starter,
            },
            // Resolved per thread as spans start, so a provider installed after this still
            // gets the spans (`global_tracer`).
            None => TracerSource::Global,
        };
        Instrumentation {
            tracer,
            metrics: Arc::new(MessagingMetrics::new(&meter)),
            meter,
            propagation: self.propagation,
            early: self.early.filter(EarlySampler::ever_drops).map(Arc::new),
        }
    }
}
