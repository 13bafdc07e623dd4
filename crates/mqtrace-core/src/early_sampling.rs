//! Sampling decided before a span is built, so a span the sampler drops costs neither its
//! name, nor its attributes, nor its links.
//!
//! OpenTelemetry's SDK asks its sampler only once the whole [`SpanBuilder`] is made (name,
//! attributes, links), because a sampler may look at them. The built-in samplers
//! ([`Sampling`]) do not: they decide from the parent's sampled flag and the trace id alone.
//! When mqtrace knows the provider samples with one of them, it makes the same decision
//! first, before building anything (the ratio samplers with the SDK's arithmetic on the
//! trace id). A span it drops gets the context the SDK would give it (a fresh span id,
//! flags `00` with the trace's W3C random flag kept, the parent's tracestate), so injection
//! and children carry on unchanged, and nothing else is made. A span it keeps is built and
//! goes through the SDK as before, whose sampler then decides the same with the full
//! attributes.
//!
//! mqtrace knows the sampler in two cases:
//! - the global tracer provider declares it ([`DeclaredSampling::announce`], which the
//!   provider `mqtrace-telemetry` installs does), on the building thread, while
//!   `Instrumentation::global()` makes its tracer. A provider installed by anyone else tells
//!   nothing, so its spans always go through the SDK. Once the declaration is withdrawn (the
//!   provider shut down), early decisions stop (the SDK then gives every span an empty
//!   context).
//! - the application says so, with
//!   [`InstrumentationBuilder::with_sampling`](crate::instrumentation::InstrumentationBuilder::with_sampling)
//!   or [`with_declared_sampling`](crate::instrumentation::InstrumentationBuilder::with_declared_sampling).
//!
//! A root span whose fate depends on the trace id the SDK is about to draw (a ratio strictly
//! between 0 and 1 and no parent) is never decided early: the SDK draws its own id, and
//! deciding on another one would sample such traces at the square of the ratio.
//!
//! [`SpanBuilder`]: opentelemetry::trace::SpanBuilder

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};

use crate::sampling::{DeclaredSampling, Sampling};

/// A built-in sampler mqtrace asks before building a span.
#[derive(Debug, Clone)]
pub(crate) struct EarlySampler {
    rule: Rule,
    /// Cleared when the provider this sampler belongs to is shut down.
    alive: Option<Arc<AtomicBool>>,
}

/// What a built-in sampler decides, in the terms that matter before a span is built.
#[derive(Debug, Clone)]
enum Rule {
    /// Keeps every span (`always_on`, or a ratio of 1 ignoring the parent).
    Keep,
    /// Drops every span (`always_off`, or a ratio of 0 ignoring the parent).
    Drop,
    /// The parent's sampled flag decides; a root span is dropped (`Some(true)`), kept
    /// (`Some(false)`) or left to the SDK (`None`: a ratio strictly between 0 and 1, which
    /// needs the trace id the SDK is about to draw).
    ByParent { root_dropped: Option<bool> },
    /// `traceidratio` strictly between 0 and 1, ignoring the parent: decided from a parent's
    /// trace id as the SDK does; roots are left to the SDK.
    Ratio(f64),
}

impl EarlySampler {
    /// The sampler of `sampling`, deciding for as long as `alive` is set (always without it).
    pub(crate) fn new(sampling: Sampling, alive: Option<Arc<AtomicBool>>) -> Self {
        let rule = match sampling {
            Sampling::AlwaysOn => Rule::Keep,
            Sampling::AlwaysOff => Rule::Drop,
            Sampling::TraceIdRatio(ratio) if ratio >= 1.0 => Rule::Keep,
            Sampling::TraceIdRatio(ratio) if ratio <= 0.0 || ratio.is_nan() => Rule::Drop,
            Sampling::TraceIdRatio(ratio) => Rule::Ratio(ratio),
            Sampling::ParentBasedAlwaysOn => Rule::ByParent {
                root_dropped: Some(false),
            },
            Sampling::ParentBasedAlwaysOff => Rule::ByParent {
                root_dropped: Some(true),
            },
            Sampling::ParentBasedTraceIdRatio(ratio) => Rule::ByParent {
                root_dropped: if ratio >= 1.0 {
                    Some(false)
                } else if ratio <= 0.0 || ratio.is_nan() {
                    Some(true)
                } else {
                    None
                },
            },
        };
        Self { rule, alive }
    }

    /// The sampler `declared` names, deciding while it is in force.
    pub(crate) fn declared(declared: &DeclaredSampling) -> Self {
        Self::new(declared.sampling(), Some(declared.alive()))
    }

    /// Whether this sampler can ever drop a span early (`always_on` cannot).
    pub(crate) fn ever_drops(&self) -> bool {
        !matches!(self.rule, Rule::Keep)
    }

    /// `parent` with the context of a span that the sampler drops, whatever its kind, name,
    /// attributes and links; `None` when the span may record (or cannot be decided here)
    /// and must be built and started through the tracer.
    pub(crate) fn dropped(&self, parent: &Context) -> Option<Context> {
        let parent_span = parent.span();
        let continued = parent_span.span_context();
        let dropped = match &self.rule {
            Rule::Keep => false,
            Rule::Drop => true,
            Rule::ByParent { root_dropped } => {
                if continued.is_valid() {
                    !continued.is_sampled()
                } else {
                    (*root_dropped)?
                }
            }
            Rule::Ratio(ratio) => {
                if !continued.is_valid() {
                    return None;
                }
                !ratio_keeps(*ratio, continued.trace_id())
            }
        };
        if !dropped
            || parent.is_telemetry_suppressed()
            || self
                .alive
                .as_ref()
                .is_some_and(|alive| !alive.load(Ordering::Relaxed))
        {
            return None;
        }
        let trace_id = if continued.is_valid() {
            continued.trace_id()
        } else {
            random_trace_id()
        };
        // What the SDK gives a dropped span (opentelemetry_sdk 0.33.1 `build_with_context`:
        // the built-in samplers pass the parent's tracestate on), with the trace's random
        // flag kept as mqtrace does for every dropped span.
        let sc = SpanContext::new(
            trace_id,
            random_span_id(),
            TraceFlags::default(),
            false,
            continued.trace_state().clone(),
        );
        let sc = crate::span::keeping_random(parent, &sc).unwrap_or(sc);
        Some(parent.with_remote_span_context(sc))
    }
}

/// Whether `traceidratio` with `ratio` keeps the trace `trace_id`: the SDK's arithmetic
/// (opentelemetry_sdk 0.33.1 `sample_based_on_probability`): the low 63 bits of the trace id
/// against the ratio's share of 2^63.
fn ratio_keeps(ratio: f64, trace_id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let upper_bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
    (low >> 1) < upper_bound
}

thread_local! {
    /// This thread's id generator state (SplitMix64), seeded from the process's random
    /// hasher keys, the thread and the time.
    static ID_STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut hasher = std::hash::RandomState::new().build_hasher();
    std::hash::Hash::hash(&std::thread::current().id(), &mut hasher);
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// A random, never zero, 64-bit value (SplitMix64: fast, statistically sound, not for
/// secrets, like the SDK's own generator).
fn random_u64() -> u64 {
    ID_STATE.with(|state| {
        loop {
            let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    })
}

fn random_span_id() -> SpanId {
    SpanId::from(random_u64())
}

fn random_trace_id() -> TraceId {
    TraceId::from((u128::from(random_u64()) << 64) | u128::from(random_u64()))
}

thread_local! {
    /// The sampler a provider announced while making a tracer on this thread, until
    /// [`tracer_with_sampler`] takes it.
    static OFFERED: RefCell<Option<DeclaredSampling>> = const { RefCell::new(None) };
}

/// Records what [`DeclaredSampling::announce`] tells.
pub(crate) fn offer(declared: &DeclaredSampling) {
    OFFERED.with(|offered| *offered.borrow_mut() = Some(declared.clone()));
}

/// Makes a tracer with `make` and, when its provider announced its sampler while making it,
/// the early sampler that goes with it; `None` for any other provider.
pub(crate) fn tracer_with_sampler<T>(make: impl FnOnce() -> T) -> (T, Option<EarlySampler>) {
    OFFERED.with(|offered| offered.borrow_mut().take());
    let tracer = make();
    let early = OFFERED
        .with(|offered| offered.borrow_mut().take())
        .map(|declared| EarlySampler::declared(&declared));
    (tracer, early)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrumentation::Instrumentation;
    use crate::span::{MessagingSpan, MessagingSpanBuilder, OperationType};
    use opentelemetry::trace::{TraceState, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider};

    const TRACE: u128 = 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c;

    const ALL: [Sampling; 10] = [
        Sampling::AlwaysOn,
        Sampling::AlwaysOff,
        Sampling::TraceIdRatio(0.0),
        Sampling::TraceIdRatio(0.5),
        Sampling::TraceIdRatio(1.0),
        Sampling::ParentBasedAlwaysOn,
        Sampling::ParentBasedAlwaysOff,
        Sampling::ParentBasedTraceIdRatio(0.0),
        Sampling::ParentBasedTraceIdRatio(0.5),
        Sampling::ParentBasedTraceIdRatio(1.0),
    ];

    /// Parents a span may continue: none, remote ones with each W3C flag combination, a
    /// local sampled one, and a trace id on either side of a one-half ratio.
    fn parents() -> Vec<(&'static str, Context)> {
        let remote = |trace: u128, flags: u8| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(trace),
                SpanId::from(0xb7ad_6b71_6920_3331),
                TraceFlags::new(flags),
                true,
                TraceState::from_key_value([("congo", "t61rcWkgMzE")]).expect("valid"),
            ))
        };
        let local = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(TRACE),
            SpanId::from(7),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ));
        vec![
            ("root", Context::new()),
            ("remote 00", remote(TRACE, 0x00)),
            ("remote 01", remote(TRACE, 0x01)),
            ("remote 02", remote(TRACE, 0x02)),
            ("remote 03", remote(TRACE, 0x03)),
            ("local 01", local),
            ("low trace id 00", remote(1, 0x00)),
            ("high trace id 00", remote(u128::MAX, 0x00)),
            ("low trace id 01", remote(1, 0x01)),
            ("high trace id 01", remote(u128::MAX, 0x01)),
        ]
    }

    /// The SDK's sampler that `sampling` names.
    fn sdk_sampler(sampling: Sampling) -> Sampler {
        match sampling {
            Sampling::AlwaysOn => Sampler::AlwaysOn,
            Sampling::AlwaysOff => Sampler::AlwaysOff,
            Sampling::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Sampling::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Sampling::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Sampling::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }

    fn instrumentation(
        sampling: Sampling,
        early: bool,
    ) -> (SdkTracerProvider, InMemorySpanExporter, Instrumentation) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sdk_sampler(sampling))
            .with_simple_exporter(exporter.clone())
            .build();
        let mut builder = Instrumentation::builder().with_tracer_provider(&provider);
        if early {
            builder = builder.with_sampling(sampling);
        }
        (provider, exporter, builder.build())
    }

    fn process(instrumentation: &Instrumentation, parent: &Context) -> MessagingSpan {
        MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
            .with_destination("orders")
            .with_partition(1)
            .with_attribute(opentelemetry::KeyValue::new("messaging.kafka.offset", 7))
            .start(instrumentation, parent)
    }

    /// What a span's context carries onward, less its span id (drawn at random).
    fn onward(span: &MessagingSpan) -> (bool, TraceFlags, bool, String, bool) {
        let sc = span.span_context();
        (
            span.context().span().is_recording(),
            sc.trace_flags(),
            sc.is_valid(),
            sc.trace_state().header(),
            sc.is_remote(),
        )
    }

    #[test]
    fn early_decisions_match_the_sdk_for_every_built_in_sampler_and_parent() {
        for sampling in ALL {
            for (name, parent) in parents() {
                let partial_ratio = matches!(
                    sampling,
                    Sampling::TraceIdRatio(0.5) | Sampling::ParentBasedTraceIdRatio(0.5)
                );
                if partial_ratio && name == "root" {
                    // Left to the SDK, which draws a random trace id: a coin toss either
                    // way (`roots_of_a_partial_ratio_are_left_to_the_sdk`).
                    continue;
                }
                let (_p1, sdk_spans, sdk) = instrumentation(sampling, false);
                let (_p2, early_spans, early) = instrumentation(sampling, true);
                let by_sdk = process(&sdk, &parent);
                let decided_early = process(&early, &parent);
                assert_eq!(
                    onward(&decided_early),
                    onward(&by_sdk),
                    "{sampling:?}, {name}"
                );
                let (a, b) = (by_sdk.span_context(), decided_early.span_context());
                if parent.span().span_context().is_valid() {
                    assert_eq!(a.trace_id(), b.trace_id(), "{sampling:?}, {name}");
                }
                by_sdk.end();
                decided_early.end();
                let exported =
                    |spans: &InMemorySpanExporter| spans.get_finished_spans().expect("spans").len();
                assert_eq!(
                    exported(&early_spans),
                    exported(&sdk_spans),
                    "{sampling:?}, {name}"
                );
            }
        }
    }

    #[test]
    fn a_kept_span_is_built_in_full() {
        let (_provider, spans, instrumentation) =
            instrumentation(Sampling::ParentBasedAlwaysOff, true);
        let parent = parents().remove(2).1; // remote 01
        process(&instrumentation, &parent).end();
        let spans = spans.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "process orders");
        let keys: Vec<_> = spans[0].attributes.iter().map(|a| a.key.as_str()).collect();
        for key in [
            "messaging.system",
            "messaging.operation.type",
            "messaging.destination.name",
            "messaging.destination.partition.id",
            "messaging.kafka.offset",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }

    #[test]
    fn roots_of_a_partial_ratio_are_left_to_the_sdk() {
        for sampling in [
            Sampling::TraceIdRatio(0.5),
            Sampling::ParentBasedTraceIdRatio(0.5),
        ] {
            let early = EarlySampler::new(sampling, None);
            assert!(early.dropped(&Context::new()).is_none());
        }
        let early = EarlySampler::new(Sampling::AlwaysOff, None);
        assert!(early.dropped(&Context::new()).is_some());
        assert!(!EarlySampler::new(Sampling::AlwaysOn, None).ever_drops());
    }

    #[test]
    fn nothing_is_decided_early_after_shutdown_or_when_telemetry_is_suppressed() {
        let alive = Arc::new(AtomicBool::new(true));
        let early = EarlySampler::new(Sampling::AlwaysOff, Some(Arc::clone(&alive)));
        assert!(early.dropped(&Context::new()).is_some());
        let suppressed = Context::enter_telemetry_suppressed_scope();
        assert!(early.dropped(&Context::current()).is_none());
        drop(suppressed);
        alive.store(false, Ordering::Relaxed);
        assert!(early.dropped(&Context::new()).is_none());
    }

    #[test]
    fn only_an_announcing_provider_tells_its_sampler() {
        let sdk = SdkTracerProvider::builder().build();
        let declared = DeclaredSampling::new(Sampling::ParentBasedAlwaysOff);
        let (_tracer, early) = tracer_with_sampler(|| {
            declared.announce();
            sdk.tracer_with_scope(crate::instrumentation::scope())
        });
        assert!(early.is_some_and(|e| e.ever_drops()));
        // A plain provider's tracer, even right after another announced, says nothing.
        declared.announce();
        let (_tracer, early) =
            tracer_with_sampler(|| sdk.tracer_with_scope(crate::instrumentation::scope()));
        assert!(early.is_none());
    }

    #[test]
    fn ratio_decisions_are_the_sdks() {
        use opentelemetry::trace::SpanKind;
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        for ratio in [0.0, 1e-9, 0.01, 0.25, 0.5, 0.75, 0.999, 1.0] {
            let sdk = Sampler::TraceIdRatioBased(ratio);
            for trace in [1u128, 2, 3, u128::MAX, u128::MAX >> 1, TRACE, TRACE >> 3] {
                let trace_id = TraceId::from(trace);
                let by_sdk = sdk
                    .should_sample(None, trace_id, "", &SpanKind::Internal, &[], &[])
                    .decision
                    == SamplingDecision::RecordAndSample;
                assert_eq!(ratio_keeps(ratio, trace_id), by_sdk, "{ratio} {trace:x}");
            }
        }
    }

    #[test]
    fn ids_are_random_and_never_zero() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| random_u64()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&0));
        let other = std::thread::spawn(random_u64).join().expect("thread");
        assert!(!ids.contains(&other));
    }
}
