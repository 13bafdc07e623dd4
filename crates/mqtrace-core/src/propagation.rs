//! Context propagation through message headers, via a pluggable [`TextMapPropagator`].
//!
//! [`Propagation`] decides which propagator runs: by default the one installed globally with
//! [`opentelemetry::global::set_text_map_propagator`], so users can plug in any propagator.
//! When the global slot still holds OpenTelemetry's no-op propagator (nothing was installed),
//! mqtrace falls back to [`default_propagator`] (mqtrace's strict W3C Trace Context Level 2
//! propagator + W3C Baggage), so that
//! context always travels. A specific propagator can be pinned with [`Propagation::custom`],
//! which also skips the global slot's read lock.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::Context;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;

use crate::baggage::W3cBaggagePropagator;
use crate::carrier::{
    HeaderExtractor, HeaderPolicy, HeaderSource, InjectedHeaders, InvalidHeader, InvalidReason,
};
use crate::trace_context::W3cTraceContextPropagator;

/// mqtrace's propagators: the strict W3C Trace Context Level 2 propagator
/// ([`W3cTraceContextPropagator`]) followed by W3C Baggage ([`W3cBaggagePropagator`]).
pub fn strict_w3c_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(W3cTraceContextPropagator::new()),
        Box::new(W3cBaggagePropagator::new()),
    ])
}

/// The propagator mqtrace uses when none was configured: [`strict_w3c_propagator`].
pub fn default_propagator() -> &'static (dyn TextMapPropagator + Send + Sync) {
    static DEFAULT: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    DEFAULT.get_or_init(strict_w3c_propagator)
}

/// Installs [`strict_w3c_propagator`] as the global propagator, in one call.
/// `mqtrace_telemetry::init` calls this for you.
pub fn install_default_propagator() {
    opentelemetry::global::set_text_map_propagator(strict_w3c_propagator());
}

/// Which propagator the wrappers use, and the limits for reading headers.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use mqtrace_core::propagation::Propagation;
/// use opentelemetry_sdk::propagation::TraceContextPropagator;
///
/// // Follow the global propagator (the default):
/// let global = Propagation::global();
/// // Or pin one:
/// let pinned = Propagation::custom(Arc::new(TraceContextPropagator::new()));
/// # let _ = (global, pinned);
/// ```
#[derive(Clone, Default)]
pub struct Propagation {
    custom: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
    policy: HeaderPolicy,
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Propagation")
            .field(
                "propagator",
                &if self.custom.is_some() {
                    "custom"
                } else {
                    "global"
                },
            )
            .field("policy", &self.policy)
            .finish()
    }
}

/// What extraction found in a message's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtractOutcome {
    /// A valid remote span context was found.
    Found,
    /// No propagation header was present: the message starts a new trace.
    Missing,
    /// A propagation header was present but unusable: the message starts a new trace and the
    /// problem is counted in `mqtrace.propagation.invalid`.
    Invalid(InvalidHeader),
}

/// The result of extracting context from a message.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The producer's context (remote span context and baggage), or an empty context.
    pub context: Context,
    /// Whether the headers held a usable context.
    pub outcome: ExtractOutcome,
}

impl Extracted {
    /// The producer's span context, when one was found.
    pub fn remote_span_context(&self) -> Option<opentelemetry::trace::SpanContext> {
        let span = self.context.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.clone())
    }
}

impl Propagation {
    /// Use the globally installed propagator (or [`default_propagator`] if none is).
    pub fn global() -> Self {
        Self::default()
    }

    /// Always use `propagator`, whatever is installed globally.
    pub fn custom(propagator: Arc<dyn TextMapPropagator + Send + Sync>) -> Self {
        Self {
            custom: Some(propagator),
            policy: HeaderPolicy::default(),
        }
    }

    /// Read headers under `policy` (e.g. a different maximum value length).
    pub fn with_policy(mut self, policy: HeaderPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The header-reading limits in force.
    pub fn policy(&self) -> HeaderPolicy {
        self.policy
    }

    fn with_propagator<R>(&self, f: impl FnOnce(&dyn TextMapPropagator) -> R) -> R {
        if let Some(custom) = &self.custom {
            return f(custom.as_ref());
        }
        let mut f = Some(f);
        opentelemetry::global::get_text_map_propagator(|global| {
            let f = f
                .take()
                .expect("get_text_map_propagator calls its closure once");
            if global.fields().next().is_none() {
                // Nothing installed: the global slot holds the no-op propagator.
                f(default_propagator())
            } else {
                f(global)
            }
        })
    }

    /// Serialises `cx` into headers with the configured propagator.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::propagation::Propagation;
    /// use opentelemetry::Context;
    ///
    /// // An empty context injects nothing, so a message's headers pass through untouched.
    /// let injected = Propagation::global().inject(&Context::new());
    /// assert!(injected.is_empty());
    /// ```
    pub fn inject(&self, cx: &Context) -> InjectedHeaders {
        self.with_propagator(|propagator| {
            let mut injected = InjectedHeaders::default();
            for field in propagator.fields() {
                injected.add_field(field);
            }
            propagator.inject_context(cx, &mut injected);
            injected
        })
    }

    /// Reads the producer's context from `headers`, following mqtrace's header rules.
    ///
    /// Never fails: unusable headers give an empty context and [`ExtractOutcome::Invalid`].
    pub fn extract<S: HeaderSource + ?Sized>(&self, headers: &S) -> Extracted {
        let extractor = HeaderExtractor::new(headers, self.policy);
        self.with_propagator(|propagator| {
            let context = propagator.extract_with_context(&Context::new(), &extractor);
            let outcome = if context.span().span_context().is_valid() {
                ExtractOutcome::Found
            } else if let Some(invalid) = extractor.invalid() {
                ExtractOutcome::Invalid(invalid)
            } else if let Some(field) = propagator
                .fields()
                .filter(|f| !f.eq_ignore_ascii_case("baggage"))
                .find(|f| extractor.contains(f))
            {
                // A span-context header was there and readable, but the propagator refused it.
                extractor.mark_invalid(field, InvalidReason::Rejected);
                ExtractOutcome::Invalid(extractor.invalid().unwrap_or(InvalidHeader {
                    key: field.to_owned().into(),
                    reason: InvalidReason::Rejected,
                }))
            } else {
                ExtractOutcome::Missing
            };
            Extracted { context, outcome }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::Injector;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    struct Pairs(Vec<(String, Vec<u8>)>);
    impl HeaderSource for Pairs {
        fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
            for (k, v) in &self.0 {
                visit(k, Some(v));
            }
        }
    }
    impl Pairs {
        fn from_injected(injected: &InjectedHeaders) -> Self {
            Pairs(
                injected
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
                    .collect(),
            )
        }
    }

    fn remote(trace: u128, span: u64) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn round_trip_through_default_propagator() {
        let p = Propagation::global();
        let injected = p.inject(&remote(0xabc, 0x123));
        assert!(injected.replaces("traceparent"));
        let extracted = p.extract(&Pairs::from_injected(&injected));
        assert_eq!(extracted.outcome, ExtractOutcome::Found);
        let sc = extracted.remote_span_context().expect("valid context");
        assert_eq!(sc.trace_id(), TraceId::from(0xabc));
        assert_eq!(sc.span_id(), SpanId::from(0x123));
    }

    #[test]
    fn garbage_traceparent_is_rejected() {
        let p = Propagation::global();
        let h = Pairs(vec![("traceparent".into(), b"garbage".to_vec())]);
        let extracted = p.extract(&h);
        assert!(extracted.remote_span_context().is_none());
        assert_eq!(
            extracted.outcome,
            ExtractOutcome::Invalid(InvalidHeader {
                key: "traceparent".into(),
                reason: InvalidReason::Rejected
            })
        );
    }

    #[test]
    fn no_headers_is_missing() {
        let extracted = Propagation::global().extract(&crate::carrier::NoHeaders);
        assert_eq!(extracted.outcome, ExtractOutcome::Missing);
    }

    #[test]
    fn custom_propagator_is_used() {
        #[derive(Debug)]
        struct Fixed;
        impl TextMapPropagator for Fixed {
            fn inject_context(&self, _cx: &Context, injector: &mut dyn Injector) {
                injector.set("x-fixed", "1".into());
            }
            fn extract_with_context(
                &self,
                cx: &Context,
                _extractor: &dyn opentelemetry::propagation::Extractor,
            ) -> Context {
                cx.clone()
            }
            fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
                opentelemetry::propagation::text_map_propagator::FieldIter::new(&[])
            }
        }
        let injected = Propagation::custom(Arc::new(Fixed)).inject(&Context::new());
        assert_eq!(injected.iter().collect::<Vec<_>>(), vec![("x-fixed", "1")]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_valid_context_round_trips(
                trace in 1_u128..,
                span in 1_u64..,
                flag_bits in 0_u8..4,
                state in proptest::collection::vec(("[a-z][a-z0-9_*/-]{0,10}(@[a-z0-9]{1,8})?", "[!-+--<>-~]{1,12}"), 0..5),
            ) {
                // Sampled and random flags, and any valid tracestate, survive the round trip.
                let flags = TraceFlags::new(flag_bits);
                let mut seen = std::collections::HashSet::new();
                let state: Vec<_> = state.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect();
                let trace_state = TraceState::from_key_value(state.clone()).expect("valid members");
                let cx = Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from(trace),
                    SpanId::from(span),
                    flags,
                    true,
                    trace_state.clone(),
                ));
                let p = Propagation::global();
                let extracted = p.extract(&Pairs::from_injected(&p.inject(&cx)));
                prop_assert_eq!(&extracted.outcome, &ExtractOutcome::Found);
                let sc = extracted.remote_span_context().expect("valid");
                prop_assert_eq!(sc.trace_id(), TraceId::from(trace));
                prop_assert_eq!(sc.span_id(), SpanId::from(span));
                prop_assert_eq!(sc.trace_flags(), flags);
                prop_assert_eq!(sc.trace_state(), &trace_state);
            }

            #[test]
            fn any_bytes_never_panic(
                headers in proptest::collection::vec(
                    (prop_oneof![Just("traceparent".to_owned()), Just("tracestate".to_owned()), Just("baggage".to_owned()), ".{0,8}"],
                     proptest::collection::vec(any::<u8>(), 0..300)),
                    0..6,
                ),
            ) {
                let extracted = Propagation::global().extract(&Pairs(headers));
                if extracted.outcome == ExtractOutcome::Found {
                    prop_assert!(extracted.remote_span_context().is_some());
                }
            }
        }
    }
}
