//! The OpenTelemetry built-in head samplers, named so that mqtrace can decide like them
//! before a span is built.
//!
//! [`Sampling`] names a built-in sampler (`OTEL_TRACES_SAMPLER`'s values). A tracer
//! provider that samples with one can tell mqtrace so, and mqtrace then drops the spans that
//! sampler would drop before making their names, attributes or links (see
//! [`InstrumentationBuilder::with_sampling`](crate::instrumentation::InstrumentationBuilder::with_sampling)).
//!
//! [`DeclaredSampling`] is how a provider that is installed globally tells
//! [`Instrumentation::global()`](crate::Instrumentation::global) its sampler: `mqtrace-telemetry`
//! wraps the SDK provider it installs in one that announces its sampler whenever it makes a
//! tracer. A provider that announces nothing is asked for every span, as usual.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One of OpenTelemetry's built-in head samplers, as `OTEL_TRACES_SAMPLER` names them.
///
/// # Example
///
/// ```
/// use mqtrace_core::sampling::Sampling;
///
/// assert_eq!(Sampling::default(), Sampling::ParentBasedTraceIdRatio(1.0));
/// assert_eq!(Sampling::ParentBasedAlwaysOff.name(), "parentbased_always_off");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Sampling {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this share of traces, ignoring the parent.
    TraceIdRatio(f64),
    /// `parentbased_always_on`.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` (the default, with 1.0).
    ParentBasedTraceIdRatio(f64),
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::ParentBasedTraceIdRatio(1.0)
    }
}

impl Sampling {
    /// The sampler's name, as `OTEL_TRACES_SAMPLER` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Sampling::AlwaysOn => "always_on",
            Sampling::AlwaysOff => "always_off",
            Sampling::TraceIdRatio(_) => "traceidratio",
            Sampling::ParentBasedAlwaysOn => "parentbased_always_on",
            Sampling::ParentBasedAlwaysOff => "parentbased_always_off",
            Sampling::ParentBasedTraceIdRatio(_) => "parentbased_traceidratio",
        }
    }
}

/// A tracer provider's sampler, declared to mqtrace by whoever built the provider, for as
/// long as the provider samples (until [`withdraw`](Self::withdraw), at its shutdown).
///
/// A provider that is installed globally calls [`announce`](Self::announce) in its
/// `TracerProvider::tracer_with_scope`, before it returns the tracer: the
/// [`Instrumentation::global()`](crate::Instrumentation::global) that asked for the tracer,
/// on that thread, then knows the sampler. Clones share the withdrawal.
///
/// It must be the provider's own sampler: with another one, spans the provider would keep
/// could be dropped.
///
/// # Example
///
/// ```
/// use mqtrace_core::Instrumentation;
/// use mqtrace_core::sampling::{DeclaredSampling, Sampling};
///
/// let declared = DeclaredSampling::new(Sampling::ParentBasedAlwaysOff);
/// // For a provider not installed globally, hand it to the builder:
/// let instrumentation = Instrumentation::builder()
///     .with_declared_sampling(&declared)
///     .build();
/// // At the provider's shutdown (the SDK then gives every span an empty context):
/// declared.withdraw();
/// # let _ = instrumentation;
/// ```
#[derive(Debug, Clone)]
pub struct DeclaredSampling {
    sampling: Sampling,
    alive: Arc<AtomicBool>,
}

impl DeclaredSampling {
    /// Declares `sampling`, in force until [`withdraw`](Self::withdraw).
    pub fn new(sampling: Sampling) -> Self {
        Self {
            sampling,
            alive: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The declared sampler.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// Whether it is still in force.
    pub fn in_force(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Ends early decisions for every instrumentation that learnt this sampler.
    pub fn withdraw(&self) {
        self.alive.store(false, Ordering::Relaxed);
    }

    /// Tells the instrumentation now asking for a tracer on this thread (through
    /// `Instrumentation::global()`) that the tracer samples with this sampler. Call it from
    /// `TracerProvider::tracer_with_scope`.
    pub fn announce(&self) {
        crate::early_sampling::offer(self);
    }

    pub(crate) fn alive(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withdrawal_is_shared_by_clones() {
        let declared = DeclaredSampling::new(Sampling::AlwaysOff);
        let clone = declared.clone();
        assert!(clone.in_force());
        declared.withdraw();
        assert!(!clone.in_force());
        assert_eq!(clone.sampling(), Sampling::AlwaysOff);
    }
}
