//! The run's summary of journeys: whether the telemetry is complete (spans the pipeline
//! dropped), counts, stage percentiles over complete journeys, the slowest requests, the
//! broken ones and the incomplete ones with their reasons — as a text table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::metrics_json::MetricSet;
use super::otlp_json::LineError;
use super::rebuild::{BrokenReason, Gap, Journey, Journeys, Outcome, Stage};

/// p50/p95/p99 of one stage, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self {
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
                mean: 0.0,
            };
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[index.clamp(1, values.len()) - 1]
        };
        Self {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// The summary of a set of journeys.
#[derive(Debug)]
pub struct Report<'j> {
    /// The journeys.
    pub journeys: &'j Journeys,
    /// Lines that could not be read.
    pub line_errors: &'j [LineError],
    /// Per stage, over complete journeys (a stage a journey skipped counts as 0).
    pub stages: Vec<(Stage, Percentiles)>,
    /// End-to-end latency over complete journeys.
    pub end_to_end: Percentiles,
    /// The slowest complete journeys, slowest first.
    pub slowest: Vec<&'j Journey>,
    /// The broken journeys: the context did not go on.
    pub broken: Vec<(&'j Journey, BrokenReason)>,
    /// The incomplete journeys: cut where telemetry is missing.
    pub incomplete: Vec<(&'j Journey, Gap)>,
    /// The metrics read beside the traces, if any.
    pub metrics: Option<&'j MetricSet>,
    /// Requests sent per the producers' `messaging.client.sent.messages` to the request
    /// destinations, when the metrics count them.
    pub requests_sent: Option<u64>,
    /// Complete journeys.
    pub complete: usize,
    /// Dead-lettered requests.
    pub dead_lettered: usize,
    /// Requests delivered more than once.
    pub redelivered: usize,
}

impl<'j> Report<'j> {
    /// Summarises `journeys`, keeping the `top` slowest.
    pub fn new(journeys: &'j Journeys, line_errors: &'j [LineError], top: usize) -> Self {
        let complete: Vec<&Journey> = journeys
            .journeys
            .iter()
            .filter(|j| j.outcome == Outcome::Complete)
            .collect();
        let stages = Stage::ALL
            .into_iter()
            .map(|stage| {
                let values = complete.iter().map(|j| j.stage_ms(stage)).collect();
                (stage, Percentiles::of(values))
            })
            .collect();
        let end_to_end = Percentiles::of(complete.iter().map(|j| j.total_ms()).collect());
        let mut slowest = complete.clone();
        slowest.sort_by(|a, b| b.total_ms().total_cmp(&a.total_ms()));
        slowest.truncate(top);
        let broken = journeys
            .journeys
            .iter()
            .filter_map(|j| match j.outcome {
                Outcome::Broken(reason) => Some((j, reason)),
                _ => None,
            })
            .collect();
        let incomplete = journeys
            .journeys
            .iter()
            .filter_map(|j| match j.outcome {
                Outcome::Incomplete(gap) => Some((j, gap)),
                _ => None,
            })
            .collect();
        Self {
            journeys,
            line_errors,
            stages,
            end_to_end,
            slowest,
            broken,
            incomplete,
            metrics: None,
            requests_sent: None,
            complete: complete.len(),
            dead_lettered: journeys
                .journeys
                .iter()
                .filter(|j| j.outcome == Outcome::DeadLettered)
                .count(),
            redelivered: journeys
                .journeys
                .iter()
                .filter(|j| j.deliveries > 1)
                .count(),
        }
    }

    /// Adds what the metrics beside the traces tell: requests sent (so requests that left
    /// no span are counted) and, for the header, which files were read.
    pub fn with_metrics(mut self, metrics: &'j MetricSet) -> Self {
        let destinations = self
            .journeys
            .request_destinations
            .iter()
            .chain(metrics.batch_destinations())
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>();
        self.requests_sent = metrics.sent_to(destinations);
        self.metrics = Some(metrics);
        self
    }

    /// Requests rebuilt from spans (complete, dead-lettered, broken or incomplete).
    pub fn requests_with_spans(&self) -> usize {
        self.journeys.journeys.len()
    }

    /// Requests the producers' metrics count but that left no span the rebuild could use
    /// (unsampled, or all their spans dropped).
    pub fn requests_without_spans(&self) -> u64 {
        self.requests_sent.map_or(0, |sent| {
            sent.saturating_sub(self.requests_with_spans() as u64)
        })
    }

    /// Every request known: rebuilt from spans, plus those only the metrics count.
    pub fn requests(&self) -> u64 {
        self.requests_with_spans() as u64 + self.requests_without_spans()
    }

    /// Requests whose send span is missing (known from downstream spans only).
    pub fn start_missing(&self) -> usize {
        self.journeys
            .journeys
            .iter()
            .filter(|j| !j.request_read)
            .count()
    }

    /// Broken journeys per reason.
    pub fn broken_by_reason(&self) -> BTreeMap<BrokenReason, usize> {
        let mut counts = BTreeMap::new();
        for (_, reason) in &self.broken {
            *counts.entry(*reason).or_default() += 1;
        }
        counts
    }

    /// Incomplete journeys per gap.
    pub fn incomplete_by_reason(&self) -> BTreeMap<Gap, usize> {
        let mut counts = BTreeMap::new();
        for (_, gap) in &self.incomplete {
            *counts.entry(*gap).or_default() += 1;
        }
        counts
    }

    /// The first line of the report when spans were dropped: `telemetry incomplete: N spans
    /// dropped (queue_full …, export_failed …)`.
    pub fn telemetry_line(&self) -> Option<String> {
        let dropped = &self.journeys.dropped;
        dropped.any().then(|| {
            format!(
                "telemetry incomplete: {} spans dropped ({})",
                dropped.total(),
                dropped.breakdown()
            )
        })
    }

    /// What to do about dropped spans, one hint per reason that lost any.
    fn telemetry_advice(&self) -> String {
        let dropped = &self.journeys.dropped.by_reason;
        let lost = |reason: &str| dropped.get(reason).copied().unwrap_or(0) > 0;
        let mut advice = Vec::new();
        if lost("queue_full") {
            advice.push("queue_full: raise OTEL_BSP_MAX_QUEUE_SIZE");
        }
        if lost("export_failed") {
            advice.push("export_failed: check the collector (or the telemetry directory)");
        }
        if lost("shutdown") {
            advice.push("shutdown: the export did not finish in OTEL_BSP_EXPORT_TIMEOUT");
        }
        advice.join("; ")
    }

    fn gap_json(journey: &Journey, code: &str, explanation: &str) -> Value {
        json!({
            "trace_id": format!("{:032x}", journey.request.trace_id),
            "span_id": format!("{:016x}", journey.request.span_id),
            "reason": code,
            "explanation": explanation,
        })
    }

    /// The `telemetry` object of the JSON report.
    fn telemetry_json(&self) -> Value {
        let dropped = &self.journeys.dropped;
        json!({
            "incomplete": dropped.any(),
            "message": self.telemetry_line(),
            "spans_dropped": dropped.total(),
            "spans_dropped_by_reason": dropped.by_reason,
            "metrics_files": self.metrics.map(|m| {
                m.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>()
            }).unwrap_or_default(),
            "dropped_counter_read": self.metrics.is_some_and(MetricSet::has_dropped_counter),
            "requests_sent": self.requests_sent,
            "metric_line_errors": self.metrics.map(|m| {
                m.errors.iter().map(ToString::to_string).collect::<Vec<_>>()
            }).unwrap_or_default(),
        })
    }

    /// The report as JSON: `telemetry` (`{incomplete, message, spans_dropped,
    /// spans_dropped_by_reason, metrics_files, dropped_counter_read, requests_sent}`),
    /// `requests` (every request known), `requests_with_spans`, `requests_without_spans`,
    /// `start_missing`, `complete`, `broken`, `incomplete`, `dead_lettered`, `stages`
    /// (`{name: {p50_ms, p95_ms, p99_ms, mean_ms}}`), `end_to_end`, `slowest`
    /// (`[{trace_id, total_ms, batch_span_id, stages, critical_path, phases}]`),
    /// `broken_by_reason`, `broken_journeys` and `incomplete_by_reason`,
    /// `incomplete_journeys` (`[{trace_id, span_id, reason, explanation}]`), `line_errors`.
    pub fn to_json(&self) -> Value {
        let percentiles = |p: &Percentiles| json!({"p50_ms": p.p50, "p95_ms": p.p95, "p99_ms": p.p99, "mean_ms": p.mean});
        let stages: serde_json::Map<String, Value> = self
            .stages
            .iter()
            .map(|(stage, p)| (stage.as_str().to_owned(), percentiles(p)))
            .collect();
        let slowest: Vec<Value> = self.slowest.iter().map(|j| journey_json(j)).collect();
        let broken: Vec<Value> = self
            .broken
            .iter()
            .map(|(j, reason)| Self::gap_json(j, reason.as_str(), reason.explain()))
            .collect();
        let incomplete: Vec<Value> = self
            .incomplete
            .iter()
            .map(|(j, gap)| Self::gap_json(j, gap.as_str(), gap.explain()))
            .collect();
        json!({
            "telemetry": self.telemetry_json(),
            "requests": self.requests(),
            "requests_with_spans": self.requests_with_spans(),
            "requests_without_spans": self.requests_without_spans(),
            "start_missing": self.start_missing(),
            "complete": self.complete,
            "broken": self.broken.len(),
            "incomplete": self.incomplete.len(),
            "dead_lettered": self.dead_lettered,
            "redelivered": self.redelivered,
            "batches": self.journeys.batches,
            "spans": self.journeys.spans,
            "stages": stages,
            "end_to_end": percentiles(&self.end_to_end),
            "broken_by_reason": self
                .broken_by_reason()
                .into_iter()
                .map(|(reason, count)| (reason.as_str().to_owned(), json!(count)))
                .collect::<serde_json::Map<_, _>>(),
            "slowest": slowest,
            "broken_journeys": broken,
            "incomplete_by_reason": self
                .incomplete_by_reason()
                .into_iter()
                .map(|(gap, count)| (gap.as_str().to_owned(), json!(count)))
                .collect::<serde_json::Map<_, _>>(),
            "incomplete_journeys": incomplete,
            "line_errors": self.line_errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }

    /// The report as a text table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_telemetry(&mut out);
        let _ = writeln!(
            out,
            "journeys: {} requests, {} complete, {} dead-lettered, {} broken, {} incomplete ({} batches, {} spans read)",
            self.requests(),
            self.complete,
            self.dead_lettered,
            self.broken.len(),
            self.incomplete.len(),
            self.journeys.batches,
            self.journeys.spans,
        );
        let start_missing = self.start_missing();
        if start_missing > 0 {
            let _ = writeln!(
                out,
                "  {start_missing} requests are known only downstream: their send span is missing"
            );
        }
        if self.requests_without_spans() > 0 {
            let _ = writeln!(
                out,
                "  {} requests left no span (the producers' metrics count {} sent): unsampled, or all their spans dropped",
                self.requests_without_spans(),
                self.requests_sent.unwrap_or(0),
            );
        }
        if self.redelivered > 0 {
            let _ = writeln!(
                out,
                "  {} requests were delivered more than once",
                self.redelivered
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>7}",
            "stage", "p50 ms", "p95 ms", "p99 ms", "mean ms", "share"
        );
        let total_mean = self.end_to_end.mean.max(f64::MIN_POSITIVE);
        for (stage, p) in &self.stages {
            let _ = writeln!(
                out,
                "  {:<16} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>6.1}%",
                stage.as_str(),
                p.p50,
                p.p95,
                p.p99,
                p.mean,
                p.mean / total_mean * 100.0
            );
        }
        let e = &self.end_to_end;
        let _ = writeln!(
            out,
            "  {:<16} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            "end_to_end", e.p50, e.p95, e.p99, e.mean
        );
        if !self.slowest.is_empty() {
            let _ = writeln!(out, "\nslowest requests:");
            for journey in &self.slowest {
                let _ = writeln!(
                    out,
                    "  {:032x}  {:>9.2} ms  mostly {}  path: {}",
                    journey.request.trace_id,
                    journey.total_ms(),
                    journey.dominant().map(Stage::as_str).unwrap_or("-"),
                    journey
                        .critical_path()
                        .filter(|s| s.ms() >= 0.05)
                        .map(|s| format!("{} {:.1}", s.stage, s.ms()))
                        .collect::<Vec<_>>()
                        .join(" > ")
                );
            }
        }
        if !self.broken.is_empty() {
            let _ = writeln!(out, "\nbroken journeys:");
            for (reason, count) in self.broken_by_reason() {
                let _ = writeln!(
                    out,
                    "  {count:>6} {}: {}",
                    reason.as_str(),
                    reason.explain()
                );
            }
            for (journey, reason) in self.broken.iter().take(20) {
                let _ = writeln!(
                    out,
                    "  {:032x}  {}",
                    journey.request.trace_id,
                    reason.as_str()
                );
            }
            if self.broken.len() > 20 {
                let _ = writeln!(
                    out,
                    "  ... {} more (--json lists all)",
                    self.broken.len() - 20
                );
            }
        }
        self.write_incomplete(&mut out);
        if !self.line_errors.is_empty() {
            let _ = writeln!(out, "\n{} unreadable line(s):", self.line_errors.len());
            for error in self.line_errors.iter().take(10) {
                let _ = writeln!(out, "  {error}");
            }
        }
        out
    }
}

impl Report<'_> {
    /// The header: spans dropped (or that nobody said), before anything else.
    fn write_telemetry(&self, out: &mut String) {
        if let Some(line) = self.telemetry_line() {
            let _ = writeln!(out, "{line}");
            let _ = writeln!(
                out,
                "  journeys cut where a span is missing are listed as incomplete, not broken; {}",
                self.telemetry_advice()
            );
        } else if self.metrics.is_none_or(|m| !m.has_dropped_counter()) {
            let _ = writeln!(
                out,
                "telemetry: no {} counter read (metrics.jsonl beside the traces, or --metrics): spans the pipeline may have dropped are not known",
                super::metrics_json::SPANS_DROPPED
            );
        }
    }

    /// The incomplete journeys, per gap, then the first of them.
    fn write_incomplete(&self, out: &mut String) {
        if self.incomplete.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\nincomplete journeys (telemetry missing, not a break):"
        );
        for (gap, count) in self.incomplete_by_reason() {
            let _ = writeln!(out, "  {count:>6} {}: {}", gap.as_str(), gap.explain());
        }
        for (journey, gap) in self.incomplete.iter().take(20) {
            let _ = writeln!(out, "  {:032x}  {}", journey.request.trace_id, gap.as_str());
        }
        if self.incomplete.len() > 20 {
            let _ = writeln!(
                out,
                "  ... {} more (--json lists all)",
                self.incomplete.len() - 20
            );
        }
    }
}

/// One journey as JSON.
pub fn journey_json(journey: &Journey) -> Value {
    let stages: serde_json::Map<String, Value> = Stage::ALL
        .into_iter()
        .map(|stage| (stage.as_str().to_owned(), json!(journey.stage_ms(stage))))
        .collect();
    json!({
        "trace_id": format!("{:032x}", journey.request.trace_id),
        "total_ms": journey.total_ms(),
        "batch_span_id": journey.batch.map(|b| format!("{:016x}", b.span_id)),
        "dominant_stage": journey.dominant().map(Stage::as_str),
        "stages": stages,
        "critical_path": journey.critical_path().map(|s| json!({
            "stage": s.stage.as_str(),
            "ms": s.ms(),
            "span_id": s.span.map(|id| format!("{:016x}", id.span_id)),
        })).collect::<Vec<_>>(),
        "phases": journey.phases.iter().map(|p| json!({
            "name": p.name, "ms": p.ms, "device_ms": p.device_ms,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert_eq!(p.mean, 50.5);
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Percentiles::of(Vec::new()).p50, 0.0);
    }
}
