//! `mqtrace journeys` on runs that lose spans on purpose: the main job
//! (`examples/batch_inference.rs`, its own embedded Kafka) with a span queue of one, so
//! nearly every span finds the queue full and is dropped and counted, then with a small one. The rebuild must say
//! the telemetry is incomplete, call none of the cut journeys a context break, and count every
//! request the job sent.
//!
//! The drops do not depend on timing: with room for one span, a burst of two span ends
//! (every request is two, and a batch ends dozens at once) always drops one. The test checks
//! that first, so a pipeline that stopped dropping would fail here rather than pass vacuously.

mod common;

use std::path::Path;
use std::process::Command;

use mqtrace_cli::journeys::{
    BrokenReason, MetricSet, Outcome, Report, SpanSet, metrics_beside, rebuild_with,
};
use serde_json::Value;

/// Requests the main job sends; more than one batch's 128 links, so `batch.links` spans are
/// made (and dropped).
const REQUESTS: u64 = 400;

/// The main job's warm-up request: sent before the timed run, in an unsampled trace, so it
/// leaves no span but its producer counts it in `messaging.client.sent.messages`.
const WARM_UP_REQUESTS: u64 = 1;

/// Runs the main job with `queue`, its telemetry going to `telemetry`; returns its summary.
fn lossy_run(telemetry: &Path, queue: &Queue) -> Value {
    let summary = telemetry.with_file_name("summary.json");
    let output = Command::new(common::built::main_job())
        .args(["--messages", &REQUESTS.to_string()])
        .args([
            "--max-batch",
            "256",
            "--max-wait-ms",
            "50",
            "--hidden",
            "16,16",
        ])
        .args(["--device", "cpu", "--timeout-secs", "120"])
        .arg("--summary-json")
        .arg(&summary)
        .env("MQTRACE_TELEMETRY_DIR", telemetry)
        .env("OTEL_BSP_MAX_QUEUE_SIZE", queue.size)
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", queue.batch)
        .env("OTEL_BSP_SCHEDULE_DELAY", queue.delay_ms)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .output()
        .expect("the main job runs");
    assert!(
        output.status.success(),
        "the main job failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = std::fs::read(&summary).expect("summary written");
    serde_json::from_slice(&summary).expect("summary JSON")
}

/// A span queue for a run: `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and
/// `OTEL_BSP_SCHEDULE_DELAY` (ms; short, so some spans get through a tiny queue).
struct Queue {
    size: &'static str,
    batch: &'static str,
    delay_ms: &'static str,
    /// Whether this queue always drops (room for one span).
    always_drops: bool,
}

/// Room for one span: drops, whatever the timing. Then a small queue that drops under the
/// job's bursts in practice and leaves more journeys half there — cut journeys with their
/// send span read, which are what a wrong rule would call `context_lost` — with assertions
/// that hold whether it dropped or not.
const QUEUES: [Queue; 2] = [
    Queue {
        size: "1",
        batch: "1",
        delay_ms: "1",
        always_drops: true,
    },
    Queue {
        size: "64",
        batch: "4",
        delay_ms: "5",
        always_drops: false,
    },
];

#[test]
fn journeys_of_a_run_that_dropped_spans_are_incomplete_not_broken_and_all_counted() {
    for queue in &QUEUES {
        check_run(queue);
    }
}

fn check_run(queue: &Queue) {
    let dir = std::env::temp_dir().join(format!(
        "mqtrace-journeys-drops-{}-{}",
        std::process::id(),
        queue.size
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let telemetry = dir.join("telemetry");
    std::fs::create_dir_all(&telemetry).expect("temp dir");
    let summary = lossy_run(&telemetry, queue);
    let sent = summary["requests"].as_u64().expect("summary.requests");
    assert_eq!(sent, REQUESTS);

    // `mqtrace journeys DIR`, as the binary does it: traces, and the metrics beside them
    let mut spans = SpanSet::new();
    spans.read_path(&telemetry).expect("traces readable");
    assert!(spans.errors.is_empty(), "{:?}", spans.errors);
    let mut metrics = MetricSet::new();
    for file in metrics_beside(&telemetry) {
        metrics.read_file(&file).expect("metrics readable");
    }
    assert!(metrics.errors.is_empty(), "{:?}", metrics.errors);
    assert!(metrics.has_dropped_counter(), "{:?}", metrics.files);
    let dropped = metrics.dropped_spans();
    if queue.always_drops {
        assert!(
            dropped.any(),
            "a span queue of 1 must drop spans; nothing was counted in {:?}",
            metrics.files
        );
    }

    let journeys = rebuild_with(&spans, &dropped);
    let report = Report::new(&journeys, &spans.errors, 5).with_metrics(&metrics);
    let text = report.to_text();
    let json = report.to_json();
    let context = format!(
        "queue {}: {}",
        queue.size,
        text.lines().take(4).collect::<Vec<_>>().join(" / ")
    );

    // told at the top, in the text and in the JSON
    let first = text.lines().next().unwrap_or_default();
    if dropped.any() {
        assert_eq!(
            first,
            format!(
                "telemetry incomplete: {} spans dropped ({})",
                dropped.total(),
                dropped.breakdown()
            )
        );
    } else {
        assert!(!first.starts_with("telemetry incomplete"), "{context}");
        assert!(report.incomplete.is_empty(), "{context}");
    }
    assert_eq!(json["telemetry"]["incomplete"], dropped.any());
    assert_eq!(json["telemetry"]["spans_dropped"], dropped.total());
    // the same count the job's own summary gives
    assert_eq!(
        summary["telemetry"]["spans"]["dropped"].as_u64(),
        Some(dropped.total()),
        "{context}"
    );

    // cut journeys are telemetry gaps, never context breaks: the job loses no context
    assert!(
        json["broken_by_reason"].get("context_lost").is_none(),
        "context_lost in a run that lost only spans: {:?} ({context})",
        json["broken_by_reason"]
    );
    let broken = journeys
        .journeys
        .iter()
        .filter(|j| matches!(j.outcome, Outcome::Broken(_)))
        .count();
    assert_eq!(broken, 0, "{:?} ({context})", json["broken_by_reason"]);
    assert!(
        !journeys
            .journeys
            .iter()
            .any(|j| j.outcome == Outcome::Broken(BrokenReason::ContextLost))
    );
    assert_eq!(json["broken"], 0);
    assert_eq!(json["incomplete"], report.incomplete.len());
    assert_eq!(
        report.requests_with_spans(),
        report.complete + report.dead_lettered + report.incomplete.len(),
        "every journey rebuilt is complete, dead-lettered or cut by missing telemetry"
    );

    // every request counted: rebuilt from its spans (also from downstream when its send
    // span was dropped), or counted from the producers' metrics when it left no span
    assert!(report.requests_with_spans() as u64 <= REQUESTS, "{context}");
    assert_eq!(report.requests(), sent + WARM_UP_REQUESTS, "{context}");
    assert_eq!(json["requests"], sent + WARM_UP_REQUESTS);
    assert_eq!(
        json["requests_with_spans"].as_u64().unwrap_or_default()
            + json["requests_without_spans"].as_u64().unwrap_or_default(),
        sent + WARM_UP_REQUESTS
    );
    let _ = std::fs::remove_dir_all(&dir);
}
