//! One call to set up traces, metrics and logs from the standard OpenTelemetry environment.
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | resource (read by the SDK) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | export OTLP there; unset: write OTLP-JSON files |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | head sampling ([`Sampling`]; default `parentbased_traceidratio` 1.0) |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` | span export queue and batches ([`SpanBatchSettings`]) |
//! | `OTEL_SDK_DISABLED` | `true`: record and export nothing |
//! | `MQTRACE_TELEMETRY_DIR` | where the files go (default `./telemetry`) |
//! | `MQTRACE_ENVIRONMENT` | `deployment.environment.name` (default `development`) |
//!
//! Spans and logs are exported by batch processors with bounded queues on their own threads;
//! metrics by a periodic reader. Nothing here ever blocks a producer or consumer: when the
//! queue is full, telemetry is dropped, not messages, and every span lost on the way is
//! counted in `mqtrace.telemetry.spans.dropped` (attribute `reason`: `queue_full` or
//! `export_failed`). The returned [`TelemetryGuard`] flushes and shuts everything down when
//! dropped.

mod config;
pub mod file;
mod span_queue;

use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogExporter, SdkLoggerProvider};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};

pub use config::{Destination, OtlpProtocol, Sampling, TelemetryConfig};
pub use span_queue::SpanBatchSettings;

use opentelemetry::metrics::MeterProvider as _;

use crate::error::{Error, Result};
use crate::semconv;
use span_queue::CountingBatchSpanProcessor;

/// Keeps the telemetry pipeline alive; flushes and shuts it down on drop.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    destination: Destination,
}

impl TelemetryGuard {
    /// Where telemetry goes, for a line in the program's summary.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The tracer provider (installed globally too), `None` when disabled.
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracer_provider.as_ref()
    }

    /// The meter provider (installed globally too), `None` when disabled.
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.meter_provider.as_ref()
    }

    /// The logger provider, for a log bridge (e.g. `opentelemetry-appender-tracing`).
    pub fn logger_provider(&self) -> Option<&SdkLoggerProvider> {
        self.logger_provider.as_ref()
    }

    /// Exports everything recorded so far. Blocks up to the exporters' timeouts: call it
    /// at a quiet moment (e.g. before printing a summary), not per message.
    pub fn flush(&self) {
        if let Some(p) = &self.tracer_provider {
            let _ = p.force_flush();
        }
        if let Some(p) = &self.meter_provider {
            let _ = p.force_flush();
        }
        if let Some(p) = &self.logger_provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.tracer_provider.take() {
            let _ = p.shutdown();
        }
        if let Some(p) = self.meter_provider.take() {
            let _ = p.shutdown();
        }
        if let Some(p) = self.logger_provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Sets up telemetry from the environment ([`TelemetryConfig::from_env`]) and installs it
/// globally, with the W3C Trace Context + Baggage propagator.
///
/// With gRPC export, call it from within a Tokio runtime.
///
/// # Example
///
/// ```no_run
/// # fn main() -> Result<(), mqtrace_core::Error> {
/// let _telemetry = mqtrace_core::telemetry::init()?;
/// // ... build traced producers and consumers after this line ...
/// # Ok(()) }
/// ```
pub fn init() -> Result<TelemetryGuard> {
    init_with(TelemetryConfig::from_env()?)
}

/// Sets up telemetry with `config` and installs it globally.
pub fn init_with(config: TelemetryConfig) -> Result<TelemetryGuard> {
    crate::propagation::install_default_propagator();
    let guard = build(config)?;
    if let Some(provider) = guard.tracer_provider() {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    if let Some(provider) = guard.meter_provider() {
        opentelemetry::global::set_meter_provider(provider.clone());
    }
    Ok(guard)
}

/// Sets up telemetry with `config` without installing anything globally: for processes that
/// keep several pipelines, and for tests. Hand the providers to the traced clients with
/// [`crate::Instrumentation::builder`].
///
/// # Example
///
/// ```
/// use mqtrace_core::Instrumentation;
/// use mqtrace_core::telemetry::{self, Destination, TelemetryConfig};
///
/// let dir = std::env::temp_dir().join("mqtrace-doc-build");
/// let guard = telemetry::build(
///     TelemetryConfig::default().with_destination(Destination::Files { dir }),
/// )?;
/// let mut instrumentation = Instrumentation::builder();
/// if let (Some(traces), Some(metrics)) = (guard.tracer_provider(), guard.meter_provider()) {
///     instrumentation = instrumentation
///         .with_tracer_provider(traces)
///         .with_meter_provider(metrics);
/// }
/// let _instrumentation = instrumentation.build();
/// # Ok::<_, mqtrace_core::Error>(())
/// ```
pub fn build(config: TelemetryConfig) -> Result<TelemetryGuard> {
    let destination = config.destination().clone();
    if destination == Destination::Disabled {
        return Ok(TelemetryGuard {
            tracer_provider: None,
            meter_provider: None,
            logger_provider: None,
            destination,
        });
    }
    let (tracer_provider, meter_provider, logger_provider) = match &destination {
        Destination::Files { dir } => file_providers(dir, &config)?,
        Destination::Otlp { endpoint, protocol } => otlp_providers(endpoint, *protocol, &config)?,
        Destination::Disabled => unreachable!("handled above"),
    };
    Ok(TelemetryGuard {
        tracer_provider: Some(tracer_provider),
        meter_provider: Some(meter_provider),
        logger_provider: Some(logger_provider),
        destination,
    })
}

/// The resource: `service.name` (from the environment, else the config's default),
/// `service.version`, `deployment.environment.name`, plus `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(config: &TelemetryConfig) -> Resource {
    let detected = Resource::builder().build();
    let has = |key: &'static str| {
        detected
            .get(&opentelemetry::Key::from_static_str(key))
            .is_some()
    };
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let mut builder = Resource::builder();
    if !named_by_env {
        builder = builder.with_service_name(config.default_service_name().to_owned());
    }
    let mut extra = Vec::new();
    if !has(semconv::SERVICE_VERSION) {
        extra.push(KeyValue::new(
            semconv::SERVICE_VERSION,
            config.service_version().to_owned(),
        ));
    }
    if !has(semconv::DEPLOYMENT_ENVIRONMENT_NAME) {
        extra.push(KeyValue::new(
            semconv::DEPLOYMENT_ENVIRONMENT_NAME,
            config.environment().to_owned(),
        ));
    }
    builder
        .with_attributes(extra)
        .with_schema_url(Vec::<KeyValue>::new(), semconv::SCHEMA_URL)
        .build()
}

type Providers = (SdkTracerProvider, SdkMeterProvider, SdkLoggerProvider);

/// Batch span and log processors (bounded queues, own threads; lost spans counted) and a
/// periodic metric reader, with the configured sampler.
fn providers(
    config: &TelemetryConfig,
    spans: impl SpanExporter + 'static,
    metrics: impl PushMetricExporter,
    logs: impl LogExporter + 'static,
) -> Providers {
    let resource = resource(config);
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(PeriodicReader::builder(metrics).build())
        .build();
    let meter = meter_provider.meter_with_scope(crate::instrumentation::scope());
    let span_processor = CountingBatchSpanProcessor::new(spans, config.span_batch(), &meter);
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_sampler(config.sampling().to_sampler())
        .with_span_processor(span_processor)
        .build();
    let logger_provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(logs)
        .build();
    (tracer_provider, meter_provider, logger_provider)
}

fn file_providers(dir: &Path, config: &TelemetryConfig) -> Result<Providers> {
    file::ensure_dir(dir)?;
    let spans = file::FileSpanExporter::create(dir.join("traces.jsonl"))?;
    let metrics = file::FileMetricExporter::create(dir.join("metrics.jsonl"))?;
    let logs = file::FileLogExporter::create(dir.join("logs.jsonl"))?;
    Ok(providers(config, spans, metrics, logs))
}

fn otlp_providers(
    endpoint: &str,
    protocol: OtlpProtocol,
    config: &TelemetryConfig,
) -> Result<Providers> {
    use opentelemetry_otlp::WithExportConfig;
    let failed = |signal: &'static str| {
        move |source| Error::Exporter {
            signal,
            endpoint: endpoint.to_owned(),
            source,
        }
    };
    let (spans, metrics, logs) = match protocol {
        OtlpProtocol::Grpc => {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(Error::NoTokioRuntime);
            }
            (
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(failed("traces"))?,
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(failed("metrics"))?,
                opentelemetry_otlp::LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(failed("logs"))?,
            )
        }
        OtlpProtocol::HttpProtobuf => {
            let base = endpoint.trim_end_matches('/');
            (
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/traces"))
                    .build()
                    .map_err(failed("traces"))?,
                opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/metrics"))
                    .build()
                    .map_err(failed("metrics"))?,
                opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/logs"))
                    .build()
                    .map_err(failed("logs"))?,
            )
        }
    };
    Ok(providers(config, spans, metrics, logs))
}
