//! `mqtrace journeys` as a user runs it: a directory of OTLP-JSON lines (with a malformed and
//! a truncated line among them) in, a report out.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

fn span(
    trace: &str,
    id: &str,
    parent: &str,
    name: &str,
    kind: u8,
    start_ms: u64,
    end_ms: u64,
) -> Value {
    json!({
        "traceId": trace, "spanId": id, "parentSpanId": parent, "name": name, "kind": kind,
        "startTimeUnixNano": (start_ms * 1_000_000).to_string(),
        "endTimeUnixNano": (end_ms * 1_000_000).to_string(),
        "attributes": [], "links": [],
    })
}

fn with(mut span: Value, destination: &str, links: &[(&str, &str)]) -> Value {
    span["attributes"] =
        json!([{"key": "messaging.destination.name", "value": {"stringValue": destination}}]);
    span["links"] = links
        .iter()
        .map(|(trace, id)| json!({"traceId": trace, "spanId": id}))
        .collect();
    span
}

fn line(spans: Vec<Value>) -> String {
    json!({"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]})
        .to_string()
}

const REQUEST: &str = "0af7651916cd43dd8448eb211c80319c";
const BATCH: &str = "1af7651916cd43dd8448eb211c80319c";
const OTHER: &str = "2af7651916cd43dd8448eb211c80319c";

#[test]
fn a_directory_of_traces_becomes_a_report_despite_bad_lines() {
    let dir = std::env::temp_dir().join(format!("mqtrace-journeys-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut batch = with(
        span(BATCH, "b000000000000001", "", "process requests", 5, 20, 60),
        "requests",
        &[(REQUEST, "a000000000000001")],
    );
    batch["attributes"]
        .as_array_mut()
        .expect("attributes")
        .push(json!({"key": "messaging.batch.message_count", "value": {"intValue": "1"}}));
    let request_trace = line(vec![
        with(
            span(REQUEST, "a000000000000001", "", "send requests", 4, 0, 2),
            "requests",
            &[],
        ),
        with(
            span(
                REQUEST,
                "a000000000000002",
                "a000000000000001",
                "send replies",
                4,
                40,
                45,
            ),
            "replies",
            &[(BATCH, "b000000000000001")],
        ),
        span(
            REQUEST,
            "a000000000000003",
            "a000000000000002",
            "process replies",
            5,
            47,
            50,
        ),
    ]);
    let batch_trace = line(vec![
        batch,
        span(
            BATCH,
            "b000000000000002",
            "b000000000000001",
            "model.execute",
            1,
            25,
            35,
        ),
    ]);
    let truncated = &batch_trace[..batch_trace.len() / 2];
    std::fs::write(
        dir.join("traces.jsonl"),
        format!("{request_trace}\n{{oops\n{batch_trace}\n{truncated}"),
    )
    .expect("traces");
    // metrics and logs next to the traces are not read as traces
    std::fs::write(dir.join("metrics.jsonl"), "{\"resourceMetrics\":[]}\n").expect("metrics");
    let html: PathBuf = dir.join("journeys.html");

    let output = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .arg("journeys")
        .arg(&dir)
        .arg("--json")
        .arg("--html")
        .arg(&html)
        .output()
        .expect("mqtrace runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("traces.jsonl:2: not OTLP-JSON"), "{stderr}");
    assert!(
        stderr.contains("traces.jsonl:4: truncated JSON"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["requests"], 1);
    assert_eq!(report["complete"], 1);
    assert_eq!(report["broken"], 0);
    assert_eq!(report["end_to_end"]["p50_ms"], 50.0);
    assert_eq!(report["stages"]["model_execute"]["p50_ms"], 10.0);
    assert_eq!(report["slowest"][0]["trace_id"], REQUEST);
    assert_eq!(report["line_errors"].as_array().map(Vec::len), Some(2));
    let page = std::fs::read_to_string(&html).expect("page written");
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("<svg"));
    // self-contained: nothing is fetched
    assert!(!page.contains("src=") && !page.contains("href="));

    // the text report, and a clear error for a path that does not exist
    let text = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args(["journeys"])
        .arg(dir.join("traces.jsonl"))
        .output()
        .expect("mqtrace runs");
    assert!(String::from_utf8_lossy(&text.stdout).contains("1 requests, 1 complete"));
    let missing = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
        .args(["journeys", "/nonexistent/traces.jsonl"])
        .output()
        .expect("mqtrace runs");
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/traces.jsonl")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A metrics line with the dropped-spans counter, as the telemetry module writes it.
fn dropped_line(queue_full: u64, export_failed: u64) -> String {
    let point = |reason: &str, value: u64| {
        json!({
            "attributes": [{"key": "reason", "value": {"stringValue": reason}}],
            "startTimeUnixNano": "1", "timeUnixNano": "2", "asInt": value.to_string(),
        })
    };
    json!({"resourceMetrics": [{"resource": {}, "scopeMetrics": [{"scope": {"name": "mqtrace"}, "metrics": [
        {"name": "mqtrace.telemetry.spans.dropped", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
            "dataPoints": [point("queue_full", queue_full), point("export_failed", export_failed)]}},
        {"name": "messaging.client.sent.messages", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
            "dataPoints": [{"attributes": [{"key": "messaging.destination.name", "value": {"stringValue": "requests"}}],
                "startTimeUnixNano": "1", "timeUnixNano": "2", "asInt": "3"}]}},
    ]}]}]})
    .to_string()
}

#[test]
fn dropped_spans_beside_the_traces_are_told_and_cut_journeys_are_not_called_breaks() {
    let dir =
        std::env::temp_dir().join(format!("mqtrace-journeys-drops-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut batch = with(
        span(BATCH, "b000000000000001", "", "process requests", 5, 20, 60),
        "requests",
        &[(REQUEST, "a000000000000001"), (OTHER, "c000000000000001")],
    );
    batch["attributes"]
        .as_array_mut()
        .expect("attributes")
        .push(json!({"key": "messaging.batch.message_count", "value": {"intValue": "3"}}));
    // request 1: its reply send was dropped, the caller's process of it is in its trace;
    // request 2 (OTHER): its send span was dropped, the batch links it; a third request left
    // no span at all, only the producer's counter knows it
    let traces = [
        line(vec![
            with(
                span(REQUEST, "a000000000000001", "", "send requests", 4, 0, 2),
                "requests",
                &[],
            ),
            span(
                REQUEST,
                "a000000000000003",
                "a000000000000002",
                "process replies",
                5,
                47,
                50,
            ),
        ]),
        line(vec![batch]),
    ]
    .join("\n");
    std::fs::write(dir.join("traces.jsonl"), traces).expect("traces");
    // two exports of the cumulative counter: the latest counts
    std::fs::write(
        dir.join("metrics.jsonl"),
        format!("{}\n{}\n", dropped_line(2, 0), dropped_line(5, 1)),
    )
    .expect("metrics");

    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_mqtrace"))
            .arg("journeys")
            .args(args)
            .output()
            .expect("mqtrace runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let traces_file = dir.join("traces.jsonl");
    let traces_path = traces_file.to_str().expect("utf-8 path");
    let text = run(&[traces_path]);
    assert!(
        text.starts_with("telemetry incomplete: 6 spans dropped (queue_full 5, export_failed 1)\n"),
        "{text}"
    );
    assert!(
        text.contains("journeys: 3 requests, 0 complete, 0 dead-lettered, 0 broken, 2 incomplete"),
        "{text}"
    );
    assert!(!text.contains("context_lost"), "{text}");

    let report: Value = serde_json::from_str(&run(&[traces_path, "--json"])).expect("JSON");
    assert_eq!(report["telemetry"]["spans_dropped"], 6);
    assert_eq!(
        report["telemetry"]["spans_dropped_by_reason"]["queue_full"],
        5
    );
    assert_eq!(report["requests"], 3);
    assert_eq!(report["requests_with_spans"], 2);
    assert_eq!(report["requests_without_spans"], 1);
    assert_eq!(report["start_missing"], 1);
    assert_eq!(report["broken"], 0);
    assert_eq!(report["incomplete_by_reason"]["span_missing"], 1);
    assert_eq!(report["incomplete_by_reason"]["start_missing"], 1);

    // --metrics names the file explicitly (here: one that reports nothing dropped), and
    // then the one beside the traces is not read
    let elsewhere = dir.join("other-metrics.jsonl");
    std::fs::write(&elsewhere, dropped_line(0, 0)).expect("metrics");
    let report: Value = serde_json::from_str(&run(&[
        traces_path,
        "--json",
        "--metrics",
        elsewhere.to_str().expect("utf-8 path"),
    ]))
    .expect("JSON");
    assert_eq!(report["telemetry"]["incomplete"], false);
    assert_eq!(report["telemetry"]["spans_dropped"], 0);
    // nothing dropped: the request that the batch took and nothing answered is no_reply
    // unless something below it shows the trace went on, as here
    assert_eq!(report["incomplete_by_reason"]["span_missing"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}
