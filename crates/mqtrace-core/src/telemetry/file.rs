//! OTLP-JSON lines exporters: one `Export{Trace,Metrics,Logs}ServiceRequest` per line, the
//! format the OpenTelemetry Collector's file exporter writes (and its `otlpjsonfile` receiver
//! reads). Used when no OTLP endpoint is configured, so every run leaves evidence.
//!
//! The exporters run on the SDK's batch threads, never on the caller's.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::error::{Error, Result};

/// Appends JSON lines to one file.
struct JsonLines {
    path: PathBuf,
    out: Mutex<Option<BufWriter<File>>>,
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
            out: Mutex::new(Some(BufWriter::new(file))),
        })
    }

    fn write<T: serde::Serialize>(&self, request: &T) -> OTelSdkResult {
        let mut guard = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("telemetry file lock poisoned".into()))?;
        let out = guard.as_mut().ok_or(OTelSdkError::AlreadyShutdown)?;
        let io = |e: std::io::Error| {
            OTelSdkError::InternalFailure(format!("writing {}: {e}", self.path.display()))
        };
        serde_json::to_writer(&mut *out, request)
            .map_err(|e| OTelSdkError::InternalFailure(format!("encoding OTLP-JSON: {e}")))?;
        out.write_all(b"\n").map_err(io)?;
        out.flush().map_err(io)
    }

    fn close(&self) -> OTelSdkResult {
        let mut guard = self
            .out
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("telemetry file lock poisoned".into()))?;
        match guard.take() {
            Some(mut out) => out
                .flush()
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string())),
            None => Ok(()),
        }
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

/// Writes spans to `traces.jsonl`.
#[derive(Debug)]
pub struct FileSpanExporter {
    lines: JsonLines,
    resource: ResourceAttributesWithSchema,
}

impl FileSpanExporter {
    /// Appends to `path`, creating it if needed.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self {
            lines: JsonLines::create(path.into())?,
            resource: ResourceAttributesWithSchema::default(),
        })
    }
}

impl SpanExporter for FileSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
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
