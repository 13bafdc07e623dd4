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
