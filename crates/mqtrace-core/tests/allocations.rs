//! Parsing a valid header allocates nothing beyond what the returned `SpanContext` and
//! `TraceState` need. Counted with a global allocator, so the numbers are exact, not timed;
//! per thread, so the test harness's own threads allocating meanwhile do not count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

use mqtrace_core::trace_context::{W3cTraceContextPropagator, parse_traceparent, parse_tracestate};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;

struct Counting;

thread_local! {
    // A const-initialised Cell: reading it never allocates, so the allocator may use it.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03";
const TRACESTATE: &str = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,,tenant@vendor=abc";

#[test]
fn parsing_valid_headers_allocates_nothing() {
    assert_eq!(
        allocations(|| assert!(parse_traceparent(TRACEPARENT).is_some())),
        0
    );
    assert_eq!(
        allocations(|| assert_eq!(parse_tracestate(TRACESTATE).map(Iterator::count), Some(3))),
        0
    );

    // Extraction allocates only the returned context: the Context's entries and, for a
    // tracestate, its members' key and value strings and their list.
    let headers = HashMap::from([("traceparent".to_owned(), TRACEPARENT.to_owned())]);
    let propagator = W3cTraceContextPropagator::new();
    let mut cx = None;
    let traceparent_only = allocations(|| cx = Some(propagator.extract(&headers)));
    assert!(
        cx.as_ref()
            .is_some_and(|cx| cx.span().span_context().is_valid())
    );

    let mut with_state = headers.clone();
    with_state.insert("tracestate".to_owned(), TRACESTATE.to_owned());
    let with_tracestate = allocations(|| cx = Some(propagator.extract(&with_state)));
    let trace_state_needs = 3 * 2 + 1; // 3 keys + 3 values + the list
    assert!(
        with_tracestate <= traceparent_only + trace_state_needs,
        "tracestate extraction allocated {with_tracestate}, the context alone {traceparent_only}"
    );
}

/// Keeping the W3C random flag on a span the sampler drops costs no allocation: a process
/// span continuing `02` (random, not sampled) allocates no more than one continuing `00`.
#[test]
fn keeping_the_random_flag_of_a_dropped_span_allocates_nothing_extra() {
    use mqtrace_core::instrumentation::Instrumentation;
    use mqtrace_core::span::{MessagingSpanBuilder, OperationType};
    use opentelemetry::Context;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    let provider = SdkTracerProvider::builder().build(); // parent-based, always on
    let instrumentation = Instrumentation::builder()
        .with_tracer_provider(&provider)
        .build();
    let parent = |flags: u8| {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
            SpanId::from(0xb7ad_6b71_6920_3331),
            TraceFlags::new(flags),
            true,
            TraceState::NONE,
        ))
    };
    let start = |parent: &Context| {
        let mut span = None;
        let count = allocations(|| {
            span = Some(
                MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
                    .with_destination("orders")
                    .start(&instrumentation, parent),
            );
        });
        // Ending it (the metrics) is not what is counted.
        let span = span.expect("started");
        let flags = span.span_context().trace_flags().to_u8();
        span.end();
        (count, flags)
    };
    let (plain, random) = (parent(0x00), parent(0x02));
    start(&plain); // first use of the tracer and instruments
    let (plain_allocations, plain_flags) = start(&plain);
    let (random_allocations, random_flags) = start(&random);
    assert_eq!((plain_flags, random_flags), (0x00, 0x02));
    assert!(
        random_allocations <= plain_allocations,
        "02 allocated {random_allocations}, 00 {plain_allocations}"
    );
}

/// Baggage extraction allocates what building the same `Baggage` directly does, escapes and
/// properties included; injection allocates the one header string.
#[test]
fn baggage_allocates_only_the_baggage_and_the_header() {
    use mqtrace_core::baggage::W3cBaggagePropagator;
    use opentelemetry::Context;
    use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
    use opentelemetry::propagation::{Extractor, Injector};

    const HEADER: &str = "userId=alice, serverNode = DF%2028;region=%20eu ;x, a=b==,bad=%FF";
    let direct = || {
        Context::new().with_baggage([
            KeyValueMetadata::new("userId".to_owned(), "alice".to_owned(), ""),
            KeyValueMetadata::new("serverNode".to_owned(), "DF 28".to_owned(), "region=eu;x"),
            KeyValueMetadata::new("a".to_owned(), "b==".to_owned(), ""),
        ])
    };
    // A carrier that allocates nothing itself (a HashMap's lowercases the key).
    struct OneHeader(Option<String>);
    impl Extractor for OneHeader {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "baggage").then_some(self.0.as_deref()).flatten()
        }
        fn keys(&self) -> Vec<&str> {
            vec!["baggage"]
        }
    }
    impl Injector for OneHeader {
        fn set(&mut self, _key: &str, value: String) {
            self.0 = Some(value);
        }
    }

    let propagator = W3cBaggagePropagator::new();
    let headers = OneHeader(Some(HEADER.to_owned()));
    let mut cx = None;
    let _ = propagator.extract(&headers); // warm up lazily initialised statics
    let _ = direct();
    let extracted = allocations(|| cx = Some(propagator.extract(&headers)));
    let built = allocations(|| cx = Some(direct()));
    // Decoding took two buffers, each allocated once: one for bytes, one for properties.
    assert_eq!(
        extracted,
        built + 2,
        "extraction allocated {extracted}, building the baggage {built}"
    );
    // Without escapes or whitespace to trim in properties, nothing more than the baggage.
    let plain = OneHeader(Some(
        "userId=alice, serverNode = DF 28;region=eu;x,a=b==,bad".to_owned(),
    ));
    let _ = propagator.extract(&plain);
    let extracted = allocations(|| cx = Some(propagator.extract(&plain)));
    assert_eq!(
        extracted, built,
        "extraction allocated {extracted}, building the baggage {built}"
    );

    let cx = cx.expect("built");
    let mut out = OneHeader(None);
    assert_eq!(allocations(|| propagator.inject_context(&cx, &mut out)), 1);
    assert!(out.0.is_some_and(|h| h.len() > 40));
}
