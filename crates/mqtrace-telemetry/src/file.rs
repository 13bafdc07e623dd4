//! OTLP-JSON lines exporters: one `Export{Trace,Metrics,Logs}ServiceRequest` per line, the
//! format the OpenTelemetry Collector's file exporter writes (and its `otlpjsonfile` receiver
//! reads). Used when no OTLP endpoint is configured, so every run leaves evidence.
//!
//! The exporters run on the SDK's batch threads, never on the caller's.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::otlp_json::TraceRequestEncoder;
use crate::error::{Error, Result};

/// Appends JSON lines to one file: each line is built in a reused buffer and written with
/// one `write` call, so a reader never sees half a line from a healthy writer.
struct JsonLines {
    path: PathBuf,
    out: Mutex<Option<Lines>>,
}

/// The open file and the buffer lines are built in.
struct Lines {
    file: File,
    buffer: Vec<u8>,
}

impl JsonLines {
    fn create(path: PathBuf) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::TelemetryFile {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            out: Mutex::new(Some(Lines {
                file,
                buffer: Vec::with_capacity(64 * 1024),
            })),
        })
    }

    /// Writes one line that `encode` appends to the (empty) buffer it is given.
    fn write_with(&self, encode: impl FnOnce(&mut Vec<u8>) -> OTelSdkResult) -> OTelSdkResult {
        let mut guard = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("telemetry file lock poisoned".into()))?;
        let lines = guard.as_mut().ok_or(OTelSdkError::AlreadyShutdown)?;
        lines.buffer.clear();
        encode(&mut lines.buffer)?;
        lines.buffer.push(b'\n');
        let written = lines.file.write_all(&lines.buffer).map_err(|e| {
            OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display()))
        });
        // A batch far above the usual size must not pin its memory for the process's life.
        if lines.buffer.capacity() > 16 * 1024 * 1024 {
            lines.buffer = Vec::with_capacity(64 * 1024);
        }
        written
    }

    /// Writes `request` as one line with its serde encoding.
    fn write<T: serde::Serialize>(&self, request: &T) -> OTelSdkResult {
        self.write_with(|buffer| {
            serde_json::to_writer(buffer, request)
                .map_err(|e| OTelSdkError::InternalFailure(format!("encoding OTLP-JSON: {e}")))
        })
    }

    fn close(&self) -> OTelSdkResult {
        let mut guard = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("telemetry file lock poisoned".into()))?;
        // Lines are written whole with one call each: closing has nothing left to flush.
        guard.take();
        Ok(())
    }
}

impl fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLines")
            .field("path", &self.path)
            .finish()
    }
}

/// Creates `dir` (and parents) if needed.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::TelemetryFile {
        path: dir.to_owned(),
        source,
    })
}

/// Writes spans to `traces.jsonl`, straight from the SDK's span data (no intermediate
/// protobuf structs): one `ExportTraceServiceRequest` line per batch.
#[derive(Debug)]
pub struct FileSpanExporter {
    lines: JsonLines,
    encoder: Mutex<TraceRequestEncoder>,
}

impl FileSpanExporter {
    /// Appends to `path`, creating it if needed.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            lines: JsonLines::create(path.into())?,
            encoder: Mutex::new(TraceRequestEncoder::default()),
        })
    }

    /// Writes `batch` as one line (what [`SpanExporter::export`] does, without a future).
    pub fn write_batch(&self, batch: &[SpanData]) -> OTelSdkResult {
        let mut encoder = self
            .encoder
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("span encoder lock poisoned".into()))?;
        self.lines.write_with(|buffer| {
            encoder.encode(batch, buffer);
            Ok(())
        })
    }
}

impl SpanExporter for FileSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.write_batch(&batch)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.lines.close()
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self
            .encoder
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = TraceRequestEncoder::new(resource);
    }
}

/// Writes metrics to `metrics.jsonl` (cumulative temporality).
#[derive(Debug)]
pub struct FileMetricExporter {
    lines: JsonLines,
}

impl FileMetricExporter {
    /// Appends to `path`, creating it if needed.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            lines: JsonLines::create(path.into())?,
        })
    }
}

impl PushMetricExporter for FileMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.lines
            .write(&ExportMetricsServiceRequest::from(metrics))
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.lines.close()
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// Writes log records to `logs.jsonl`.
#[derive(Debug)]
pub struct FileLogExporter {
    lines: JsonLines,
    resource: ResourceAttributesWithSchema,
}

impl FileLogExporter {
    /// Appends to `path`, creating it if needed.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            lines: JsonLines::create(path.into())?,
            resource: ResourceAttributesWithSchema::default(),
        })
    }
}

impl LogExporter for FileLogExporter {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let request = ExportLogsServiceRequest {
            resource_logs: group_logs_by_resource_and_scope(&batch, &self.resource),
        };
        self.lines.write(&request)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.lines.close()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}
