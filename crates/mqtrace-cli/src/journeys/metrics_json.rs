//! Reads what the journeys need from OTLP-JSON metrics lines (one
//! `ExportMetricsServiceRequest`, `{"resourceMetrics": [...]}`, per line, as mqtrace's
//! telemetry module and the Collector's file exporter write `metrics.jsonl`):
//!
//! - `mqtrace.telemetry.spans.dropped{reason}` (`queue_full`, `export_failed`, `shutdown`):
//!   spans the pipeline lost, so the report can
//!   say the traces are incomplete and the rebuild can tell a dropped span from a break;
//! - `messaging.client.sent.messages{messaging.destination.name}`: how many requests were
//!   sent, so requests that left no span at all are still counted;
//! - the destinations of `mqtrace.worker.batch.size`: which destinations batch workers
//!   consume (the request destinations, even when every batch span was dropped).
//!
//! # How values add up
//!
//! A series is one metric with one set of point attributes, from one resource and scope,
//! with one start time. mqtrace exports cumulative sums, so each export repeats the running
//! total: a series counts with its largest value (the latest), never the sum of its exports.
//! Different series add up: the two `reason`s, several processes writing one file (each has
//! its own resource or, for identical resources, its own start time), runs appended to the
//! same file. Delta sums (from a Collector configured for them) add up point by point.
//! Lines that are not OTLP-JSON are reported with their number and skipped, as for traces.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::otlp_json::{LineError, ReadError, any_string, as_u64, read_lines};

/// The dropped-spans counter (`mqtrace_core::semconv::MQTRACE_TELEMETRY_SPANS_DROPPED`).
pub const SPANS_DROPPED: &str = "mqtrace.telemetry.spans.dropped";
/// The semconv counter of messages a producer attempted to send.
const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// The worker's batch-size histogram; its destinations are the batch-consumed ones.
const BATCH_SIZE: &str = "mqtrace.worker.batch.size";

const DESTINATION: &str = "messaging.destination.name";
const REASON: &str = "reason";
/// The `reason`s mqtrace's span pipeline counts, in the order reports list them.
const KNOWN_REASONS: [&str; 3] = ["queue_full", "export_failed", "shutdown"];
/// `AGGREGATION_TEMPORALITY_DELTA` in metrics.proto.
const DELTA: u64 = 1;

/// Spans the telemetry pipeline reported lost, by `reason` (`queue_full`, `export_failed`,
/// `shutdown`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DroppedSpans {
    /// Spans lost per reason.
    pub by_reason: BTreeMap<String, u64>,
}

impl DroppedSpans {
    /// Spans lost in all.
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// Whether any span was lost.
    pub fn any(&self) -> bool {
        self.total() > 0
    }

    /// `queue_full 12, export_failed 0`: the pipeline's two reasons first, any other after.
    pub fn breakdown(&self) -> String {
        let known = KNOWN_REASONS
            .iter()
            .filter_map(|r| self.by_reason.get_key_value(*r));
        let others = self
            .by_reason
            .iter()
            .filter(|(reason, _)| !KNOWN_REASONS.contains(&reason.as_str()));
        known
            .chain(others)
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One time series: which metric, which point attributes, from where, since when.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    metric: &'static str,
    /// The one point attribute the journeys care about (`reason` or the destination).
    label: String,
    /// Resource and scope, as their JSON text (attribute order as written).
    origin: String,
    start_ns: u64,
}

/// The counters read from metrics files.
#[derive(Debug, Default)]
pub struct MetricSet {
    /// Cumulative series: their largest value.
    cumulative: HashMap<SeriesKey, u64>,
    /// Delta series: the sum of their points.
    delta: HashMap<SeriesKey, u64>,
    batch_destinations: BTreeSet<String>,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Lines skipped because they were not OTLP-JSON.
    pub errors: Vec<LineError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricsData {
    #[serde(default)]
    resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceMetrics {
    #[serde(default)]
    resource: Value,
    #[serde(default, alias = "instrumentationLibraryMetrics")]
    scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Deserialize)]
struct ScopeMetrics {
    #[serde(default)]
    scope: Value,
    #[serde(default)]
    metrics: Vec<JsonMetric>,
}

#[derive(Deserialize)]
struct JsonMetric {
    #[serde(default)]
    name: String,
    #[serde(default)]
    sum: Option<JsonSum>,
    #[serde(default)]
    histogram: Option<JsonPoints>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSum {
    #[serde(default)]
    data_points: Vec<JsonPoint>,
    #[serde(default)]
    aggregation_temporality: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonPoints {
    #[serde(default)]
    data_points: Vec<JsonPoint>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonPoint {
    #[serde(default)]
    attributes: Vec<JsonKeyValue>,
    #[serde(default)]
    start_time_unix_nano: Value,
    #[serde(default)]
    as_int: Value,
    #[serde(default)]
    as_double: Value,
}

#[derive(Deserialize)]
struct JsonKeyValue {
    key: String,
    #[serde(default)]
    value: Value,
}

impl JsonPoint {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| any_string(&a.value))
    }

    /// The point's value as a count (`asInt`, a string or a number, or `asDouble`).
    fn count(&self) -> Option<u64> {
        as_u64(&self.as_int).or_else(|| {
            self.as_double
                .as_f64()
                .map(|value| value.max(0.0).round() as u64)
        })
    }
}

fn is_delta(temporality: &Value) -> bool {
    as_u64(temporality) == Some(DELTA) || temporality == "AGGREGATION_TEMPORALITY_DELTA"
}

/// The metrics files beside a traces path: `metrics*.jsonl`/`metrics*.json` in the directory
/// itself, or in the directory of the file.
pub fn metrics_beside(traces: &Path) -> Vec<PathBuf> {
    let dir = if traces.is_dir() {
        traces
    } else {
        match traces.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        }
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| is_metrics_file(p))
        .collect();
    files.sort();
    files
}

fn is_metrics_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.is_file()
        && name.starts_with("metrics")
        && (name.ends_with(".jsonl") || name.ends_with(".json"))
}

impl MetricSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one metrics file. A file already read is not read again.
    pub fn read_file(&mut self, path: &Path) -> Result<(), ReadError> {
        if self.files.iter().any(|f| f == path) {
            return Ok(());
        }
        let file = File::open(path).map_err(|source| ReadError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.files.push(path.to_owned());
        self.read(path, BufReader::new(file))
    }

    /// Reads OTLP-JSON metrics lines from `reader` (`path` names it in errors).
    pub fn read(&mut self, path: &Path, reader: impl BufRead) -> Result<(), ReadError> {
        let mut errors = std::mem::take(&mut self.errors);
        let read = read_lines(path, reader, &mut errors, |line| self.read_line(line));
        self.errors = errors;
        read.map(|_| ())
    }

    fn read_line(&mut self, line: &[u8]) -> Result<(), String> {
        let data: MetricsData = serde_json::from_slice(line).map_err(|e| {
            if e.is_eof() {
                format!("truncated JSON ({e})")
            } else {
                format!("not OTLP-JSON metrics ({e})")
            }
        })?;
        for resource in data.resource_metrics {
            for scope in resource.scope_metrics {
                let origin = format!("{}|{}", resource.resource, scope.scope);
                for metric in scope.metrics {
                    self.record(&origin, metric);
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, origin: &str, metric: JsonMetric) {
        let (name, label_key) = match metric.name.as_str() {
            SPANS_DROPPED => (SPANS_DROPPED, REASON),
            SENT_MESSAGES => (SENT_MESSAGES, DESTINATION),
            BATCH_SIZE => {
                let points = metric.histogram.map(|h| h.data_points).unwrap_or_default();
                self.batch_destinations.extend(
                    points
                        .iter()
                        .filter_map(|p| p.attribute(DESTINATION).map(str::to_owned)),
                );
                return;
            }
            _ => return,
        };
        let Some(sum) = metric.sum else {
            return;
        };
        let delta = is_delta(&sum.aggregation_temporality);
        for point in &sum.data_points {
            let Some(value) = point.count() else {
                continue;
            };
            let key = SeriesKey {
                metric: name,
                label: point.attribute(label_key).unwrap_or_default().to_owned(),
                origin: origin.to_owned(),
                start_ns: as_u64(&point.start_time_unix_nano).unwrap_or(0),
            };
            if delta {
                *self.delta.entry(key).or_default() += value;
            } else {
                let largest = self.cumulative.entry(key).or_default();
                *largest = (*largest).max(value);
            }
        }
    }

    /// Totals of `metric` per label, over all its series.
    fn totals(&self, metric: &str) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for (key, value) in self.cumulative.iter().chain(&self.delta) {
            if key.metric == metric {
                *totals.entry(key.label.clone()).or_default() += value;
            }
        }
        totals
    }

    /// Whether the files held the dropped-spans counter at all (mqtrace's pipeline creates it
    /// at zero, so its absence means the counter was not exported, not that nothing dropped).
    pub fn has_dropped_counter(&self) -> bool {
        self.cumulative
            .keys()
            .chain(self.delta.keys())
            .any(|k| k.metric == SPANS_DROPPED)
    }

    /// The spans the pipeline reported lost.
    pub fn dropped_spans(&self) -> DroppedSpans {
        DroppedSpans {
            by_reason: self.totals(SPANS_DROPPED),
        }
    }

    /// Messages sent to any of `destinations`, per the producers' counters; `None` when no
    /// producer counted a send there.
    pub fn sent_to<'d>(&self, destinations: impl IntoIterator<Item = &'d str>) -> Option<u64> {
        let sent = self.totals(SENT_MESSAGES);
        let counts: Vec<u64> = destinations
            .into_iter()
            .filter_map(|d| sent.get(d).copied())
            .collect();
        (!counts.is_empty()).then(|| counts.iter().sum())
    }

    /// Destinations batch workers consumed (`mqtrace.worker.batch.size`).
    pub fn batch_destinations(&self) -> &BTreeSet<String> {
        &self.batch_destinations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn point(label: (&str, &str), start: &str, value: u64) -> Value {
        json!({
            "attributes": [{"key": label.0, "value": {"stringValue": label.1}}],
            "startTimeUnixNano": start, "timeUnixNano": "9", "asInt": value.to_string(),
        })
    }

    fn line(service: &str, metrics: Vec<Value>) -> String {
        json!({"resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeMetrics": [{"scope": {"name": "mqtrace"}, "metrics": metrics}],
        }]})
        .to_string()
    }

    fn dropped(points: Vec<Value>) -> Value {
        json!({"name": SPANS_DROPPED, "sum": {"dataPoints": points, "aggregationTemporality": 2, "isMonotonic": true}})
    }

    fn read(text: &str) -> MetricSet {
        let mut set = MetricSet::new();
        set.read(Path::new("metrics.jsonl"), text.as_bytes())
            .expect("in-memory read");
        set
    }

    #[test]
    fn a_cumulative_counter_counts_its_latest_value_not_the_sum_of_its_exports() {
        let text = [
            line(
                "a",
                vec![dropped(vec![
                    point((REASON, "queue_full"), "1", 5),
                    point((REASON, "export_failed"), "1", 0),
                ])],
            ),
            line(
                "a",
                vec![dropped(vec![
                    point((REASON, "queue_full"), "1", 12),
                    point((REASON, "export_failed"), "1", 3),
                ])],
            ),
        ]
        .join("\n");
        let set = read(&text);
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        let dropped = set.dropped_spans();
        assert_eq!(dropped.by_reason["queue_full"], 12);
        assert_eq!(dropped.by_reason["export_failed"], 3);
        assert_eq!(dropped.total(), 15);
        assert_eq!(dropped.breakdown(), "queue_full 12, export_failed 3");
        assert!(set.has_dropped_counter());
    }

    #[test]
    fn processes_and_appended_runs_add_up() {
        let text = [
            // two processes with their own resources
            line(
                "worker-1",
                vec![dropped(vec![point((REASON, "queue_full"), "1", 7)])],
            ),
            line(
                "worker-2",
                vec![dropped(vec![point((REASON, "queue_full"), "1", 4)])],
            ),
            // a second run of worker-1 appended to the same file: same resource, new start
            line(
                "worker-1",
                vec![dropped(vec![point((REASON, "queue_full"), "50", 2)])],
            ),
            line(
                "worker-1",
                vec![dropped(vec![point((REASON, "queue_full"), "50", 9)])],
            ),
        ]
        .join("\n");
        assert_eq!(read(&text).dropped_spans().total(), 7 + 4 + 9);
    }

    #[test]
    fn delta_points_add_up() {
        let metric = json!({"name": SPANS_DROPPED, "sum": {"aggregationTemporality": 1, "dataPoints": [
            point((REASON, "queue_full"), "1", 5), point((REASON, "queue_full"), "2", 5),
        ]}});
        let text = [line("a", vec![metric.clone()]), line("a", vec![metric])].join("\n");
        assert_eq!(read(&text).dropped_spans().total(), 20);
    }

    #[test]
    fn sent_messages_count_per_destination_and_batch_destinations_are_known() {
        let sent = json!({"name": SENT_MESSAGES, "sum": {"aggregationTemporality": 2, "dataPoints": [
            point((DESTINATION, "requests"), "1", 100), point((DESTINATION, "replies"), "1", 98),
        ]}});
        let batch = json!({"name": BATCH_SIZE, "histogram": {"aggregationTemporality": 2, "dataPoints": [
            {"attributes": [{"key": DESTINATION, "value": {"stringValue": "requests"}}], "count": "3", "sum": 100},
        ]}});
        let set = read(&line("a", vec![sent, batch]));
        assert_eq!(set.sent_to(["requests"]), Some(100));
        assert_eq!(set.sent_to(["requests", "replies"]), Some(198));
        assert_eq!(set.sent_to(["elsewhere"]), None);
        assert!(set.batch_destinations().contains("requests"));
        assert!(!set.has_dropped_counter());
        assert_eq!(set.dropped_spans().total(), 0);
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_is_read() {
        let good = line(
            "a",
            vec![dropped(vec![point((REASON, "queue_full"), "1", 1)])],
        );
        let set = read(&format!("{good}\nnot json\n{}", &good[..good.len() / 2]));
        assert_eq!(set.dropped_spans().total(), 1);
        let lines: Vec<usize> = set.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3]);
        assert!(set.errors[1].message.starts_with("truncated JSON"));
    }

    #[test]
    fn metrics_files_are_found_beside_traces() {
        let dir =
            std::env::temp_dir().join(format!("mqtrace-metrics-beside-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for name in ["traces.jsonl", "metrics.jsonl", "logs.jsonl"] {
            std::fs::write(dir.join(name), "").expect("file");
        }
        let expected = vec![dir.join("metrics.jsonl")];
        assert_eq!(metrics_beside(&dir), expected);
        assert_eq!(metrics_beside(&dir.join("traces.jsonl")), expected);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
