//! The global tracer, followed rather than captured: an [`Instrumentation`] built with the
//! global provider (`Instrumentation::global()`, every wrapper's default) traces with
//! whatever provider is installed *now*, not the one installed when it was built.
//!
//! OpenTelemetry's `global::tracer` hands out a tracer of the provider installed at that
//! moment and keeps it: a wrapper built before `global::set_tracer_provider` would record
//! nothing, forever, and say nothing. Instead each thread keeps the global tracer it last
//! resolved, and resolves it again when `mqtrace_telemetry::init` installs a provider (or
//! [`refresh`] is called) and at most a second after it last did, so a provider installed
//! by any other means is picked up within a second. A span start pays a thread-local read
//! and a comparison of the clock it reads anyway.
//!
//! [`Instrumentation`]: crate::Instrumentation

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::global::BoxedTracer;

use crate::early_sampling::EarlySampler;

/// How long a thread uses the global tracer it resolved before resolving it again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Bumped when the global provider is known to have changed.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The global tracer as resolved on one thread, with the sampler its provider told.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) tracer: Arc<BoxedTracer>,
    pub(crate) early: Option<EarlySampler>,
}

struct Cached {
    generation: u64,
    until: Instant,
    resolved: Resolved,
}

thread_local! {
    static CURRENT: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// Says that the global tracer provider changed, so every thread resolves it again at its
/// next span. `mqtrace_telemetry::init` calls it; call it after installing a provider with
/// `opentelemetry::global::set_tracer_provider` yourself to have wrappers that already exist
/// pick it up at once rather than within a second.
///
/// # Example
///
/// ```
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// let producer_side = mqtrace_core::Instrumentation::global(); // built before the provider
/// let provider = SdkTracerProvider::builder().build();
/// opentelemetry::global::set_tracer_provider(provider.clone());
/// mqtrace_core::instrumentation::refresh_global_tracer();
/// // `producer_side` now starts its spans with `provider`'s tracer.
/// # let _ = (producer_side, provider.shutdown());
/// ```
pub fn refresh() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Runs `f` with the global tracer as this thread last resolved it, when that is recent
/// enough (`now` is the caller's clock reading), else resolved again first. `f` runs inside
/// a shared borrow of the thread's cache: a span started from within it (a processor's own)
/// finds the cache as is, or resolves the tracer for itself.
pub(crate) fn with_current<R>(now: Instant, f: impl FnOnce(&Resolved) -> R) -> R {
    let generation = GENERATION.load(Ordering::Relaxed);
    let fresh = |cached: &Option<Cached>| {
        cached
            .as_ref()
            .is_some_and(|c| c.generation == generation && now < c.until)
    };
    let mut f = Some(f);
    let ran = CURRENT.try_with(|current| {
        let stale = current.try_borrow().map_or(true, |cached| !fresh(&cached));
        if stale && let Ok(mut cached) = current.try_borrow_mut() {
            *cached = Some(Cached {
                generation,
                until: now + REFRESH_EVERY,
                resolved: resolve(),
            });
        }
        let cached = current.try_borrow().ok()?;
        let cached = cached.as_ref().filter(|_| fresh(&cached))?;
        let f = f.take()?;
        Some(f(&cached.resolved))
    });
    match ran.ok().flatten() {
        Some(result) => result,
        // No usable cache (the thread is being torn down, or re-entered while refreshing):
        // resolved for this call alone.
        None => match f.take() {
            Some(f) => f(&resolve()),
            None => unreachable!("`f` is taken only when it runs"),
        },
    }
}

/// The global tracer now, with the early sampler of mqtrace's own provider when it is the
/// one installed (see `early_sampling`).
fn resolve() -> Resolved {
    let (tracer, early) = crate::early_sampling::tracer_with_sampler(|| {
        opentelemetry::global::tracer_with_scope(crate::instrumentation::scope())
    });
    Resolved {
        tracer: Arc::new(tracer),
        early: early.filter(EarlySampler::ever_drops),
    }
}
