//! Streams spans out of OTLP-JSON lines: one `ExportTraceServiceRequest` (`{"resourceSpans":
//! [...]}`) per line, as mqtrace's telemetry module and the OpenTelemetry Collector's file
//! exporter write them. Files are read line by line and each span is kept only as the slim
//! [`SpanRecord`] the journey rebuild needs, so memory follows the number of spans, not the
//! size of the file. A line that is not valid JSON is reported with its number and skipped.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

/// OTLP span kinds (`SpanKind` in trace.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Unspecified or unknown.
    Unspecified,
    /// INTERNAL.
    Internal,
    /// SERVER.
    Server,
    /// CLIENT.
    Client,
    /// PRODUCER.
    Producer,
    /// CONSUMER.
    Consumer,
}

impl Kind {
    fn from_otlp(value: &Value) -> Self {
        match value {
            Value::Number(n) => match n.as_u64() {
                Some(1) => Self::Internal,
                Some(2) => Self::Server,
                Some(3) => Self::Client,
                Some(4) => Self::Producer,
                Some(5) => Self::Consumer,
                _ => Self::Unspecified,
            },
            Value::String(s) => match s.as_str() {
                "SPAN_KIND_INTERNAL" => Self::Internal,
                "SPAN_KIND_SERVER" => Self::Server,
                "SPAN_KIND_CLIENT" => Self::Client,
                "SPAN_KIND_PRODUCER" => Self::Producer,
                "SPAN_KIND_CONSUMER" => Self::Consumer,
                _ => Self::Unspecified,
            },
            _ => Self::Unspecified,
        }
    }
}

/// A span's identity: trace id and span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanRef {
    /// The trace id.
    pub trace_id: u128,
    /// The span id.
    pub span_id: u64,
}

impl fmt::Display for SpanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}/{:016x}", self.trace_id, self.span_id)
    }
}

/// What the journey rebuild keeps of a span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Trace and span id.
    pub id: SpanRef,
    /// The parent's span id, 0 for a root.
    pub parent_span_id: u64,
    /// The span name (interned: one allocation per distinct name).
    pub name: Arc<str>,
    /// The span kind.
    pub kind: Kind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_ns: u64,
    /// `messaging.destination.name`.
    pub destination: Option<Arc<str>>,
    /// `messaging.batch.message_count`.
    pub batch_message_count: Option<i64>,
    /// `mqtrace.batch.formation_ms`.
    pub batch_formation_ms: Option<f64>,
    /// `mqtrace.batch.link_spans`: how many `batch.links` children a batch span has.
    pub batch_link_spans: Option<i64>,
    /// `mqtrace.device.duration_ms` (device time of a GPU phase).
    pub device_ms: Option<f64>,
    /// The spans this one links to; links to contexts that say they were not sampled are
    /// left out (nothing of theirs was exported, so they name no missing span).
    pub links: Vec<SpanRef>,
    /// Whether its status is ERROR.
    pub error: bool,
}

impl SpanRecord {
    /// The parent's identity, when it has one.
    pub fn parent(&self) -> Option<SpanRef> {
        (self.parent_span_id != 0).then_some(SpanRef {
            trace_id: self.id.trace_id,
            span_id: self.parent_span_id,
        })
    }

    /// Duration in nanoseconds (0 when the end precedes the start).
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The file.
    pub path: PathBuf,
    /// Its 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A directory with no trace files in it.
    #[error(
        "{0} has no trace files (*.jsonl or *.json other than metrics/logs); point at the traces.jsonl the telemetry module or the Collector's file exporter wrote"
    )]
    NoTraceFiles(PathBuf),
}

/// Every span read, and the lines that could not be.
#[derive(Debug, Default)]
pub struct SpanSet {
    /// The spans, in file order.
    pub spans: Vec<SpanRecord>,
    /// Lines skipped because they were not OTLP-JSON.
    pub errors: Vec<LineError>,
    /// Lines read.
    pub lines: usize,
    names: HashMap<String, Arc<str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TracesData {
    #[serde(default)]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans {
    #[serde(default, alias = "instrumentationLibrarySpans")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Deserialize)]
struct ScopeSpans {
    #[serde(default)]
    spans: Vec<JsonSpan>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpan {
    trace_id: String,
    span_id: String,
    #[serde(default)]
    parent_span_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: Value,
    #[serde(default)]
    start_time_unix_nano: Value,
    #[serde(default)]
    end_time_unix_nano: Value,
    #[serde(default)]
    attributes: Vec<JsonKeyValue>,
    #[serde(default)]
    links: Vec<JsonLink>,
    #[serde(default)]
    status: Option<JsonStatus>,
}

#[derive(Deserialize)]
struct JsonKeyValue {
    key: String,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonLink {
    trace_id: String,
    span_id: String,
    #[serde(default)]
    flags: Value,
}

/// `SpanFlags` in trace.proto: bits 0-7 are the W3C trace flags; bit 8 says whether the
/// context's remote bit is known — set by every exporter that fills the flags in.
const FLAGS_HAVE_CONTEXT: u64 = 0x100;
const FLAG_SAMPLED: u64 = 0x01;

impl JsonLink {
    /// Whether the flags say the linked context was not sampled (absent flags say nothing).
    fn known_unsampled(&self) -> bool {
        as_u64(&self.flags)
            .is_some_and(|flags| flags & FLAGS_HAVE_CONTEXT != 0 && flags & FLAG_SAMPLED == 0)
    }
}

#[derive(Deserialize)]
struct JsonStatus {
    #[serde(default)]
    code: Value,
}

/// A u64 written as a JSON number or as a string (proto3 JSON writes 64-bit integers as
/// strings).
pub(super) fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// An OTLP `AnyValue` as a number (`intValue` may be a string, `doubleValue` a number).
fn any_number(value: &Value) -> Option<f64> {
    let inner = value.get("intValue").or_else(|| value.get("doubleValue"))?;
    match inner {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn any_string(value: &Value) -> Option<&str> {
    value.get("stringValue")?.as_str()
}

/// Hex ids; the Collector's file exporter and opentelemetry-proto both write lowercase hex.
fn trace_id(hex: &str) -> Option<u128> {
    (hex.len() == 32).then(|| u128::from_str_radix(hex, 16).ok())?
}

fn span_id(hex: &str) -> Option<u64> {
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

impl SpanSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `path`: a file, or a directory whose `*.jsonl`/`*.json` files (except
    /// `metrics*` and `logs*`) are read in name order.
    pub fn read_path(&mut self, path: &Path) -> Result<(), ReadError> {
        let io = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        if !path.is_dir() {
            let file = File::open(path).map_err(io)?;
            return self.read(path, BufReader::new(file));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| is_trace_file(p))
            .collect();
        if files.is_empty() {
            return Err(ReadError::NoTraceFiles(path.to_owned()));
        }
        files.sort();
        for file in files {
            let reader = File::open(&file).map_err(|source| ReadError::Io {
                path: file.clone(),
                source,
            })?;
            self.read(&file, BufReader::new(reader))?;
        }
        Ok(())
    }

    /// Reads OTLP-JSON lines from `reader` (`path` names it in errors).
    pub fn read(&mut self, path: &Path, reader: impl BufRead) -> Result<(), ReadError> {
        let mut errors = std::mem::take(&mut self.errors);
        let read = read_lines(path, reader, &mut errors, |line| self.read_line(line));
        self.errors = errors;
        self.lines += read?;
        Ok(())
    }

    fn read_line(&mut self, line: &[u8]) -> Result<(), String> {
        let data: TracesData = serde_json::from_slice(line).map_err(|e| {
            if e.is_eof() {
                format!("truncated JSON ({e})")
            } else {
                format!("not OTLP-JSON ({e})")
            }
        })?;
        let mut bad_ids = 0;
        for span in data
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
        {
            match self.record(span) {
                Some(record) => self.spans.push(record),
                None => bad_ids += 1,
            }
        }
        if bad_ids > 0 {
            return Err(format!(
                "{bad_ids} span(s) without a valid hex trace/span id skipped"
            ));
        }
        Ok(())
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(interned) = self.names.get(name) {
            return Arc::clone(interned);
        }
        let interned: Arc<str> = Arc::from(name);
        self.names.insert(name.to_owned(), Arc::clone(&interned));
        interned
    }

    fn record(&mut self, span: JsonSpan) -> Option<SpanRecord> {
        let id = SpanRef {
            trace_id: trace_id(&span.trace_id)?,
            span_id: span_id(&span.span_id)?,
        };
        let parent_span_id = if span.parent_span_id.is_empty() {
            0
        } else {
            span_id(&span.parent_span_id)?
        };
        let mut record = SpanRecord {
            id,
            parent_span_id,
            name: self.intern(&span.name),
            kind: Kind::from_otlp(&span.kind),
            start_ns: as_u64(&span.start_time_unix_nano).unwrap_or(0),
            end_ns: as_u64(&span.end_time_unix_nano).unwrap_or(0),
            destination: None,
            batch_message_count: None,
            batch_formation_ms: None,
            batch_link_spans: None,
            device_ms: None,
            links: Vec::with_capacity(span.links.len()),
            error: span
                .status
                .is_some_and(|s| s.code == 2 || s.code == "STATUS_CODE_ERROR"),
        };
        for attribute in &span.attributes {
            match attribute.key.as_str() {
                "messaging.destination.name" => {
                    if let Some(name) = any_string(&attribute.value) {
                        record.destination = Some(self.intern(name));
                    }
                }
                "messaging.batch.message_count" => {
                    record.batch_message_count = any_number(&attribute.value).map(|n| n as i64);
                }
                "mqtrace.batch.formation_ms" => {
                    record.batch_formation_ms = any_number(&attribute.value);
                }
                "mqtrace.batch.link_spans" => {
                    record.batch_link_spans = any_number(&attribute.value).map(|n| n as i64);
                }
                "mqtrace.device.duration_ms" => record.device_ms = any_number(&attribute.value),
                _ => {}
            }
        }
        for link in span.links.iter().filter(|l| !l.known_unsampled()) {
            if let (Some(trace_id), Some(span_id)) =
                (trace_id(&link.trace_id), span_id(&link.span_id))
            {
                record.links.push(SpanRef { trace_id, span_id });
            }
        }
        Some(record)
    }
}

fn is_trace_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.is_file()
        && (name.ends_with(".jsonl") || name.ends_with(".json"))
        && !name.starts_with("metrics")
        && !name.starts_with("logs")
}

/// Reads `reader` line by line (`path` names it in errors), handing each non-empty line,
/// trimmed, to `read_line`; a line it rejects is recorded in `errors` with its number and the
/// rest is read. Returns how many lines were read. Shared by the traces and metrics readers.
pub(super) fn read_lines(
    path: &Path,
    mut reader: impl BufRead,
    errors: &mut Vec<LineError>,
    mut read_line: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<usize, ReadError> {
    let mut buffer = Vec::new();
    let mut number = 0;
    loop {
        buffer.clear();
        let read = reader
            .read_until(b'\n', &mut buffer)
            .map_err(|source| ReadError::Io {
                path: path.to_owned(),
                source,
            })?;
        if read == 0 {
            return Ok(number);
        }
        number += 1;
        let line = buffer.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if let Err(message) = read_line(line) {
            errors.push(LineError {
                path: path.to_owned(),
                line: number,
                message,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"resourceSpans":[{"resource":{},"scopeSpans":[{"scope":{"name":"x"},"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","parentSpanId":"","name":"send requests","kind":4,"startTimeUnixNano":"1000","endTimeUnixNano":2500,"attributes":[{"key":"messaging.destination.name","value":{"stringValue":"requests"}},{"key":"messaging.batch.message_count","value":{"intValue":"3"}}],"links":[{"traceId":"0af7651916cd43dd8448eb211c80319d","spanId":"b7ad6b7169203332"}],"status":{"code":2}}]}]}]}"#;

    fn read(text: &str) -> SpanSet {
        let mut set = SpanSet::new();
        set.read(Path::new("t.jsonl"), text.as_bytes())
            .expect("in-memory read");
        set
    }

    #[test]
    fn reads_the_fields_the_rebuild_needs() {
        let set = read(LINE);
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        let span = &set.spans[0];
        assert_eq!(span.id.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(span.id.span_id, 0xb7ad6b7169203331);
        assert_eq!(span.parent(), None);
        assert_eq!(&*span.name, "send requests");
        assert_eq!(span.kind, Kind::Producer);
        assert_eq!((span.start_ns, span.end_ns), (1000, 2500));
        assert_eq!(span.destination.as_deref(), Some("requests"));
        assert_eq!(span.batch_message_count, Some(3));
        assert_eq!(span.links.len(), 1);
        assert!(span.error);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_the_rest_is_read() {
        let truncated = &LINE[..LINE.len() / 2];
        let text = format!("{LINE}\nnot json at all\n\n{truncated}\n{LINE}\n{truncated}");
        let set = read(&text);
        assert_eq!(set.spans.len(), 2, "both good lines read");
        let lines: Vec<usize> = set.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 4, 6]);
        assert!(set.errors[0].message.starts_with("not OTLP-JSON"));
        assert!(set.errors[1].message.starts_with("truncated JSON"));
        assert_eq!(set.errors[2].to_string().split(':').nth(1), Some("6"));
    }

    #[test]
    fn spans_with_bad_ids_are_skipped_and_reported() {
        let text = LINE.replace("b7ad6b7169203331", "xyz");
        let set = read(&text);
        assert!(set.spans.is_empty());
        assert_eq!(set.errors.len(), 1);
        assert!(set.errors[0].message.contains("hex"));
    }

    #[test]
    fn links_to_unsampled_contexts_are_left_out() {
        let link = r#"{"traceId":"0af7651916cd43dd8448eb211c80319d","spanId":"b7ad6b7169203332""#;
        let flagged = |flags: &str| {
            LINE.replace(&format!("{link}}}"), &format!("{link},\"flags\":{flags}}}"))
        };
        assert_eq!(
            read(&flagged("768")).spans[0].links.len(),
            0,
            "remote, unsampled"
        );
        assert_eq!(
            read(&flagged("769")).spans[0].links.len(),
            1,
            "remote, sampled"
        );
        assert_eq!(read(&flagged("0")).spans[0].links.len(), 1, "flags unknown");
    }

    #[test]
    fn names_are_interned() {
        let set = read(&format!("{LINE}\n{LINE}"));
        assert!(Arc::ptr_eq(&set.spans[0].name, &set.spans[1].name));
    }
}
