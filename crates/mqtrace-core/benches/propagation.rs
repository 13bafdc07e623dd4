//! Extract and inject: mqtrace's strict W3C Trace Context propagator against the
//! OpenTelemetry SDK's `TraceContextPropagator`, on the same carrier (a `HashMap`), so the
//! difference is the parser alone.
//!
//! `cargo bench -p mqtrace-core --bench propagation` runs the criterion groups, then prints
//! one interleaved comparison per input as `propagation_<input>: ratio=X.XX` (strict / SDK
//! time per extract+inject; below 1.00 means mqtrace is faster). `-- --quick` skips the
//! criterion groups and prints only the ratios.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use mqtrace_core::trace_context::W3cTraceContextPropagator;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn inputs() -> Vec<(&'static str, HashMap<String, String>)> {
    let only = HashMap::from([("traceparent".to_owned(), TRACEPARENT.to_owned())]);
    let mut with_state = only.clone();
    with_state.insert(
        "tracestate".to_owned(),
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,tenant@vendor=abc".to_owned(),
    );
    vec![
        ("traceparent", only),
        ("traceparent_tracestate", with_state),
    ]
}

fn round_trip(propagator: &dyn TextMapPropagator, headers: &HashMap<String, String>) -> usize {
    let cx = propagator.extract(headers);
    let mut out: HashMap<String, String> = HashMap::with_capacity(2);
    propagator.inject_context(&cx, &mut out);
    out.len()
}

fn bench(c: &mut Criterion) {
    let strict = W3cTraceContextPropagator::new();
    let sdk = TraceContextPropagator::new();
    for (name, headers) in inputs() {
        let mut group = c.benchmark_group(format!("extract_inject/{name}"));
        group.bench_function("mqtrace_strict", |b| {
            b.iter(|| round_trip(&strict, black_box(&headers)))
        });
        group.bench_function("sdk", |b| b.iter(|| round_trip(&sdk, black_box(&headers))));
        group.finish();
        let mut group = c.benchmark_group(format!("extract/{name}"));
        group.bench_function("mqtrace_strict", |b| {
            b.iter(|| strict.extract(black_box(&headers)))
        });
        group.bench_function("sdk", |b| b.iter(|| sdk.extract(black_box(&headers))));
        group.finish();
    }
}

criterion_group!(benches, bench);

/// Interleaved rounds, median of per-round ratios: robust to a busy machine.
fn ratio(
    strict: &dyn TextMapPropagator,
    sdk: &dyn TextMapPropagator,
    headers: &HashMap<String, String>,
) -> f64 {
    const ITERATIONS: usize = 20_000;
    let time = |p: &dyn TextMapPropagator| {
        let start = Instant::now();
        for _ in 0..ITERATIONS {
            black_box(round_trip(p, black_box(headers)));
        }
        start.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..15).map(|_| time(strict) / time(sdk)).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !quick {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    let strict = W3cTraceContextPropagator::new();
    let sdk = TraceContextPropagator::new();
    for (name, headers) in inputs() {
        println!(
            "propagation_{name}: ratio={:.2}",
            ratio(&strict, &sdk, &headers)
        );
    }
}
