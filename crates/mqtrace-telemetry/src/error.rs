//! The error type of `mqtrace-core`.

use std::path::PathBuf;

/// What can go wrong while setting up telemetry. Propagation and span creation never fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable holds a value mqtrace cannot use.
    #[error("environment variable {name}={value:?} is not valid: {expected}")]
    InvalidEnv {
        /// The variable's name.
        name: &'static str,
        /// Its value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// The telemetry directory or one of its files could not be created.
    #[error(
        "cannot write telemetry to {path}: {source} (set MQTRACE_TELEMETRY_DIR to a writable directory)"
    )]
    TelemetryFile {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC exporter was asked for outside a Tokio runtime.
    #[error(
        "OTLP over gRPC needs a Tokio runtime: call telemetry::init from within one (e.g. in #[tokio::main]), or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
    )]
    NoTokioRuntime,
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {source}")]
    Exporter {
        /// `traces`, `metrics` or `logs`.
        signal: &'static str,
        /// The configured endpoint.
        endpoint: String,
        /// The exporter's own error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// mqtrace's own OTLP/HTTP exporter could not be set up.
    #[error("cannot set up the OTLP/HTTP {signal} exporter for {endpoint}: {reason}")]
    ExporterSetup {
        /// `traces`.
        signal: &'static str,
        /// The URL it would export to.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
