//! # mqtrace-telemetry
//!
//! One call to set up traces, metrics and logs from the standard OpenTelemetry environment,
//! for services traced with mqtrace (`mqtrace-core`, `mqtrace-kafka`, `mqtrace-amqp`): the
//! OpenTelemetry SDK, loss-counting export queues, OTLP over HTTP or gRPC, and OTLP-JSON
//! files when no endpoint is set. The instrumentation itself depends on the OpenTelemetry
//! API only; a service that sets up its own SDK pipeline does not need this crate.
//!
//! ```no_run
//! # fn main() -> Result<(), mqtrace_telemetry::Error> {
//! let telemetry = mqtrace_telemetry::init()?; // OTEL_* from the environment
//! // ... build traced producers and consumers, serve ...
//! let stats = telemetry.shutdown(); // exports what is queued, bounded by OTEL_BSP_EXPORT_TIMEOUT
//! eprintln!("{} spans exported, {} lost", stats.spans.exported, stats.spans.dropped());
//! # Ok(()) }
//! ```
//!
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | resource (read by the SDK) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | export OTLP there; unset: write OTLP-JSON files |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | head sampling ([`Sampling`]; default `parentbased_traceidratio` 1.0) |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` | span export queue and batches ([`SpanBatchSettings`]; queue default 65,536) |
//! | `OTEL_BSP_EXPORT_TIMEOUT` | longest a flush or the shutdown waits (default 5000 ms), and one OTLP request unless `OTEL_EXPORTER_OTLP_TIMEOUT` is set |
//! | `OTEL_BSP_MAX_CONCURRENT_EXPORTS` | OTLP/HTTP span export requests in flight at once (default 4) |
//! | `OTEL_BLRP_MAX_QUEUE_SIZE` | log record export queue (default 2048) |
//! | `OTEL_SDK_DISABLED` | `true`: record and export nothing |
//! | `MQTRACE_TELEMETRY_DIR` | where the files go (default `./telemetry`) |
//! | `MQTRACE_ENVIRONMENT` | `deployment.environment.name` (default `development`) |
//!
//! Spans and logs are exported by batch processors with bounded queues on their own threads;
//! metrics by a periodic reader. Nothing here ever blocks a producer or consumer: when the
//! queue is full, telemetry is dropped, not messages — and never silently. Every span or log
//! record lost on the way is counted in `mqtrace.telemetry.spans.dropped` /
//! `mqtrace.telemetry.logs.dropped` (attribute `reason`: `queue_full`, `export_failed` or
//! `shutdown`), warned about on stderr while it happens (at most every 10 s,
//! [`TelemetryConfig::with_loss_warnings`]), and accounted for in [`TelemetryStats`]
//! ([`TelemetryGuard::stats`], [`TelemetryGuard::shutdown`]) for the program's summary.
//!
//! Shutdown is bounded: [`TelemetryGuard::shutdown`] (or dropping the guard) exports what is
//! queued and shuts the three pipelines down side by side, waiting at most
//! `OTEL_BSP_EXPORT_TIMEOUT` (5 s) whatever the collector does; what could not be delivered by
//! then is counted and told.

mod config;
mod error;
mod export_queue;
pub mod file;
mod log_queue;
mod marked_provider;
mod metric_export;
mod otlp_grpc;
mod otlp_http;
mod otlp_json;
mod otlp_proto;
mod otlp_retry;
mod span_queue;
mod stats;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{LogExporter, SdkLoggerProvider};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};

pub use config::{Destination, OtlpProtocol, TelemetryConfig};
pub use error::{Error, Result};
pub use mqtrace_core::sampling::Sampling;
pub use otlp_http::OtlpHttpSpanExporter;
pub use span_queue::SpanBatchSettings;
pub use stats::{MetricExportStats, SignalStats, TelemetryStats};

use opentelemetry::metrics::MeterProvider as _;

use marked_provider::MarkedTracerProvider;
use mqtrace_core::sampling::DeclaredSampling;
use mqtrace_core::semconv;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::Sampler;

// mqtrace-core's bound instruments need the SDK's: without them the SDK's default binding
// drops every bound measurement.
const _: () = assert!(
    !mqtrace_core::metrics::BOUND_INSTRUMENTS || cfg!(feature = "bound-instruments"),
    "mqtrace-core's feature `bound-instruments` is on: turn on mqtrace-telemetry's too, which also turns on opentelemetry_sdk's `experimental_metrics_bound_instruments`"
);

/// The SDK sampler that `sampling` names.
///
/// # Example
///
/// ```
/// use mqtrace_telemetry::{Sampling, sdk_sampler};
/// use opentelemetry_sdk::trace::SdkTracerProvider;
///
/// let provider = SdkTracerProvider::builder()
///     .with_sampler(sdk_sampler(Sampling::ParentBasedTraceIdRatio(0.1)))
///     .build();
/// # let _ = provider;
/// ```
pub fn sdk_sampler(sampling: Sampling) -> Sampler {
    match sampling {
        Sampling::AlwaysOn => Sampler::AlwaysOn,
        Sampling::AlwaysOff => Sampler::AlwaysOff,
        Sampling::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        Sampling::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        Sampling::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Sampling::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
        // `Sampling` is non-exhaustive: a sampler added there and not here samples
        // everything rather than nothing.
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

/// The OpenTelemetry SDK's lenient `TraceContextPropagator` followed by W3C Baggage, for
/// applications that must behave exactly like other OpenTelemetry Rust services. Install it
/// with `opentelemetry::global::set_text_map_propagator(sdk_w3c_propagator())` after
/// [`init`], or pin it with `mqtrace_core::propagation::Propagation::custom`.
pub fn sdk_w3c_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

use export_queue::{LossWarnings, SignalCounters};
use log_queue::CountingBatchLogProcessor;
use metric_export::{CountingMetricExporter, MetricExportCounters};
use span_queue::CountingBatchSpanProcessor;

/// Keeps the telemetry pipeline alive; flushes and shuts it down on drop (bounded by the
/// export timeout), warning on stderr if anything was lost.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    logger_provider: Option<SdkLoggerProvider>,
    destination: Destination,
    accounts: Accounts,
    /// The tracer provider's sampler, which mqtrace asks before building a span
    /// (`mqtrace_core::sampling`), until it is withdrawn at shutdown.
    sampling: DeclaredSampling,
}

/// The pipelines' counters, read for [`TelemetryStats`].
#[derive(Debug, Default)]
struct Accounts {
    spans: Arc<SignalCounters>,
    logs: Arc<SignalCounters>,
    metrics: Arc<MetricExportCounters>,
    span_queue_size: usize,
    log_queue_size: usize,
    export_timeout: Duration,
    warn_on_drop: bool,
    shutdown_took: Option<Duration>,
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

    /// An [`Instrumentation`](mqtrace_core::Instrumentation) with this guard's tracer and meter
    /// providers, for traced clients of a pipeline that is not installed globally
    /// ([`build`]). It knows the provider's sampler, so a span the sampler drops is started
    /// without building its name, attributes or links (as with [`init`] and
    /// `Instrumentation::global()`). With telemetry disabled, the global (no-op) providers.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_telemetry::{Destination, TelemetryConfig};
    ///
    /// let dir = std::env::temp_dir().join("mqtrace-doc-guard-instrumentation");
    /// let guard = mqtrace_telemetry::build(
    ///     TelemetryConfig::default().with_destination(Destination::Files { dir }),
    /// )?;
    /// let instrumentation = guard.instrumentation();
    /// # let _ = instrumentation;
    /// # Ok::<_, mqtrace_telemetry::Error>(())
    /// ```
    pub fn instrumentation(&self) -> mqtrace_core::Instrumentation {
        let mut builder = mqtrace_core::Instrumentation::builder();
        if let Some(traces) = &self.tracer_provider {
            builder = builder
                .with_tracer_provider(traces)
                .with_declared_sampling(&self.sampling);
        }
        if let Some(metrics) = &self.meter_provider {
            builder = builder.with_meter_provider(metrics);
        }
        builder.build()
    }

    /// What was exported and what was lost so far (spans still queued are in neither).
    pub fn stats(&self) -> TelemetryStats {
        let a = &self.accounts;
        TelemetryStats {
            spans: a.spans.snapshot(),
            logs: a.logs.snapshot(),
            metrics: a.metrics.snapshot(),
            span_queue_size: a.span_queue_size,
            log_queue_size: a.log_queue_size,
            export_timeout: a.export_timeout,
            shutdown_took: a.shutdown_took,
            destination: describe(&self.destination),
        }
    }

    /// Exports everything recorded so far, the three signals side by side, waiting at most
    /// the export timeout (`OTEL_BSP_EXPORT_TIMEOUT`, 5 s) in all: call it at a quiet moment
    /// (e.g. before printing a summary), not per message.
    pub fn flush(&self) {
        let pipelines = Pipeline::all(
            self.tracer_provider.clone(),
            self.meter_provider.clone(),
            self.logger_provider.clone(),
        );
        run_bounded(pipelines, self.accounts.export_timeout, |p, _| p.flush());
    }

    /// Exports what is queued and shuts the pipelines down, side by side, waiting at most the
    /// export timeout (`OTEL_BSP_EXPORT_TIMEOUT`, 5 s) whatever the collector does; returns the
    /// final account, with what could not be delivered by then counted as lost. The program's
    /// summary should print it ([`TelemetryStats::loss_warning`] on stderr). Telemetry
    /// recorded after this is discarded.
    pub fn shutdown(mut self) -> TelemetryStats {
        self.shutdown_pipelines();
        // Told by the caller now, not again on drop.
        self.accounts.warn_on_drop = false;
        self.stats()
    }

    fn shutdown_pipelines(&mut self) {
        // From now on the SDK gives every span an empty context; so does mqtrace.
        self.sampling.withdraw();
        let pipelines = Pipeline::all(
            self.tracer_provider.take(),
            self.meter_provider.take(),
            self.logger_provider.take(),
        );
        if pipelines.is_empty() {
            return;
        }
        let started = Instant::now();
        run_bounded(pipelines, self.accounts.export_timeout, Pipeline::shutdown);
        self.accounts.shutdown_took = Some(started.elapsed());
    }
}

/// One of the three pipelines, to flush or shut down on a thread of its own.
enum Pipeline {
    Traces(SdkTracerProvider),
    Metrics(SdkMeterProvider),
    Logs(SdkLoggerProvider),
}

impl Pipeline {
    fn all(
        traces: Option<SdkTracerProvider>,
        metrics: Option<SdkMeterProvider>,
        logs: Option<SdkLoggerProvider>,
    ) -> Vec<Self> {
        let traces = traces.map(Self::Traces);
        let metrics = metrics.map(Self::Metrics);
        let logs = logs.map(Self::Logs);
        [traces, metrics, logs].into_iter().flatten().collect()
    }

    fn flush(&self) {
        let _ = match self {
            Self::Traces(p) => p.force_flush(),
            Self::Metrics(p) => p.force_flush(),
            Self::Logs(p) => p.force_flush(),
        };
    }

    fn shutdown(&self, timeout: Duration) {
        let _ = match self {
            Self::Traces(p) => p.shutdown_with_timeout(timeout),
            Self::Metrics(p) => p.shutdown_with_timeout(timeout),
            Self::Logs(p) => p.shutdown_with_timeout(timeout),
        };
    }
}

/// Runs `work` on each pipeline, each on its own thread, and waits for them, at most
/// `timeout` in all (plus a little for the threads to answer); one still running then is
/// left behind, its thread detached.
fn run_bounded(pipelines: Vec<Pipeline>, timeout: Duration, work: fn(&Pipeline, Duration)) {
    let deadline = Instant::now() + timeout + Duration::from_millis(100);
    let (done, finished) = mpsc::channel();
    let mut running = 0;
    for pipeline in pipelines {
        let done = done.clone();
        let spawned = std::thread::Builder::new()
            .name("mqtrace-telemetry-stop".into())
            .spawn(move || {
                work(&pipeline, timeout);
                let _ = done.send(());
            });
        if spawned.is_ok() {
            running += 1;
        }
    }
    while running > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if finished.recv_timeout(left).is_err() {
            return;
        }
        running -= 1;
    }
}

/// A destination in words, for messages.
fn describe(destination: &Destination) -> String {
    match destination {
        Destination::Files { dir } => dir.display().to_string(),
        Destination::Otlp { endpoint, .. } => format!("OTLP {endpoint}"),
        Destination::Disabled => "nowhere (OTEL_SDK_DISABLED)".to_owned(),
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if self.tracer_provider.is_none()
            && self.meter_provider.is_none()
            && self.logger_provider.is_none()
        {
            return;
        }
        self.shutdown_pipelines();
        if self.accounts.warn_on_drop
            && let Some(warning) = self.stats().loss_warning()
        {
            eprintln!("mqtrace: {warning}");
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
/// # fn main() -> Result<(), mqtrace_telemetry::Error> {
/// let _telemetry = mqtrace_telemetry::init()?;
/// // ... build traced producers and consumers after this line ...
/// # Ok(()) }
/// ```
pub fn init() -> Result<TelemetryGuard> {
    init_with(TelemetryConfig::from_env()?)
}

/// Sets up telemetry with `config` and installs it globally.
pub fn init_with(config: TelemetryConfig) -> Result<TelemetryGuard> {
    mqtrace_core::propagation::install_default_propagator();
    let guard = build(config)?;
    if let Some(provider) = guard.tracer_provider() {
        // Marked, so that `Instrumentation::global()` knows the sampler (`early_sampling`).
        opentelemetry::global::set_tracer_provider(MarkedTracerProvider::new(
            provider.clone(),
            guard.sampling.clone(),
        ));
        // Instrumentation built before this picks the new provider up at its next span.
        mqtrace_core::instrumentation::refresh_global_tracer();
    }
    if let Some(provider) = guard.meter_provider() {
        opentelemetry::global::set_meter_provider(provider.clone());
    }
    Ok(guard)
}

/// Sets up telemetry with `config` without installing anything globally: for processes that
/// keep several pipelines, and for tests. Hand the providers to the traced clients with
/// [`mqtrace_core::Instrumentation::builder`].
///
/// # Example
///
/// ```
/// use mqtrace_core::Instrumentation;
/// use mqtrace_telemetry::{Destination, TelemetryConfig};
///
/// let dir = std::env::temp_dir().join("mqtrace-doc-build");
/// let guard = mqtrace_telemetry::build(
///     TelemetryConfig::default().with_destination(Destination::Files { dir }),
/// )?;
/// let mut instrumentation = Instrumentation::builder();
/// if let (Some(traces), Some(metrics)) = (guard.tracer_provider(), guard.meter_provider()) {
///     instrumentation = instrumentation
///         .with_tracer_provider(traces)
///         .with_meter_provider(metrics);
/// }
/// let _instrumentation = instrumentation.build();
/// # Ok::<_, mqtrace_telemetry::Error>(())
/// ```
pub fn build(config: TelemetryConfig) -> Result<TelemetryGuard> {
    let destination = config.destination().clone();
    let mut accounts = Accounts {
        span_queue_size: config.span_batch().max_queue_size,
        log_queue_size: config.log_queue_size(),
        export_timeout: config.span_batch().export_timeout,
        warn_on_drop: config.loss_warnings().is_some(),
        ..Accounts::default()
    };
    let providers = match &destination {
        Destination::Files { dir } => Some(file_providers(dir, &config, &mut accounts)?),
        Destination::Otlp { endpoint, protocol } => {
            Some(otlp_providers(endpoint, *protocol, &config, &mut accounts)?)
        }
        Destination::Disabled => None,
    };
    let (tracer_provider, meter_provider, logger_provider) = match providers {
        Some((t, m, l)) => (Some(t), Some(m), Some(l)),
        None => (None, None, None),
    };
    Ok(TelemetryGuard {
        tracer_provider,
        meter_provider,
        logger_provider,
        destination,
        accounts,
        sampling: DeclaredSampling::new(config.sampling()),
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

/// Batch span and log processors (bounded queues, own threads; losses counted) and a
/// periodic metric reader (exports counted), with the configured sampler.
fn providers(
    config: &TelemetryConfig,
    accounts: &mut Accounts,
    spans: impl SpanExporter + 'static,
    concurrent_spans: bool,
    metrics: impl PushMetricExporter,
    logs: impl LogExporter + 'static,
) -> Providers {
    let resource = resource(config);
    let warnings = LossWarnings(config.loss_warnings());
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_reader(
            PeriodicReader::builder(CountingMetricExporter::new(
                metrics,
                Arc::clone(&accounts.metrics),
            ))
            .build(),
        )
        .build();
    let meter = meter_provider.meter_with_scope(mqtrace_core::instrumentation::scope());
    let span_processor = CountingBatchSpanProcessor::with_warnings(
        spans,
        concurrent_spans,
        config.span_batch(),
        &meter,
        warnings,
    );
    accounts.spans = span_processor.counters();
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_sampler(sdk_sampler(config.sampling()))
        .with_span_processor(span_processor)
        .build();
    let log_processor = CountingBatchLogProcessor::new(
        logs,
        config.log_queue_size(),
        config.span_batch().export_timeout,
        &meter,
        warnings,
    );
    accounts.logs = log_processor.counters();
    let logger_provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(log_processor)
        .build();
    (tracer_provider, meter_provider, logger_provider)
}

fn file_providers(
    dir: &Path,
    config: &TelemetryConfig,
    accounts: &mut Accounts,
) -> Result<Providers> {
    file::ensure_dir(dir)?;
    let spans = file::FileSpanExporter::create(dir.join("traces.jsonl"))?;
    let metrics = file::FileMetricExporter::create(dir.join("metrics.jsonl"))?;
    let logs = file::FileLogExporter::create(dir.join("logs.jsonl"))?;
    Ok(providers(config, accounts, spans, false, metrics, logs))
}

fn otlp_providers(
    endpoint: &str,
    protocol: OtlpProtocol,
    config: &TelemetryConfig,
    accounts: &mut Accounts,
) -> Result<Providers> {
    use opentelemetry_otlp::WithExportConfig;
    // One request never outlasts the export timeout, so a hanging collector cannot hold the
    // export thread (or the shutdown) longer; an OTEL_EXPORTER_OTLP_*TIMEOUT set by the user
    // is read by the exporter instead.
    let request_timeout = config.otlp_request_timeout();
    fn timed<B: WithExportConfig>(builder: B, timeout: Option<Duration>) -> B {
        match timeout {
            Some(timeout) => builder.with_timeout(timeout),
            None => builder,
        }
    }
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
            // mqtrace's own exporter (no protobuf structs per batch, several calls in
            // flight), unless compression is asked for, which only the SDK's implements.
            let spans = if config.otlp_compression() {
                OtlpSpanExporter::Sdk(
                    timed(
                        opentelemetry_otlp::SpanExporter::builder()
                            .with_tonic()
                            .with_endpoint(endpoint),
                        request_timeout,
                    )
                    .build()
                    .map_err(failed("traces"))?,
                )
            } else {
                let headers = otlp_http::headers_from(|name| config.otlp_header_variable(name))?;
                OtlpSpanExporter::Grpc(otlp_grpc::OtlpGrpcSpanExporter::new(
                    endpoint,
                    config.otlp_traces_timeout(),
                    &headers,
                )?)
            };
            (
                spans,
                timed(
                    opentelemetry_otlp::MetricExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint),
                    request_timeout,
                )
                .build()
                .map_err(failed("metrics"))?,
                timed(
                    opentelemetry_otlp::LogExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint),
                    request_timeout,
                )
                .build()
                .map_err(failed("logs"))?,
            )
        }
        OtlpProtocol::HttpProtobuf => {
            let base = endpoint.trim_end_matches('/');
            let traces = format!("{base}/v1/traces");
            // mqtrace's own exporter (no protobuf structs per batch), unless compression is
            // asked for, which only the SDK's implements.
            let spans = if config.otlp_compression() {
                OtlpSpanExporter::Sdk(
                    timed(
                        opentelemetry_otlp::SpanExporter::builder()
                            .with_http()
                            .with_endpoint(traces),
                        request_timeout,
                    )
                    .build()
                    .map_err(failed("traces"))?,
                )
            } else {
                let headers = otlp_http::headers_from(|name| config.otlp_header_variable(name))?;
                OtlpSpanExporter::Http(otlp_http::OtlpHttpSpanExporter::with_headers(
                    traces,
                    config.otlp_traces_timeout(),
                    headers,
                )?)
            };
            (
                spans,
                timed(
                    opentelemetry_otlp::MetricExporter::builder()
                        .with_http()
                        .with_endpoint(format!("{base}/v1/metrics")),
                    request_timeout,
                )
                .build()
                .map_err(failed("metrics"))?,
                timed(
                    opentelemetry_otlp::LogExporter::builder()
                        .with_http()
                        .with_endpoint(format!("{base}/v1/logs")),
                    request_timeout,
                )
                .build()
                .map_err(failed("logs"))?,
            )
        }
    };
    let concurrent = !matches!(spans, OtlpSpanExporter::Sdk(_));
    Ok(providers(
        config, accounts, spans, concurrent, metrics, logs,
    ))
}

/// The OTLP span exporter in use: mqtrace's own, over HTTP or gRPC, or
/// `opentelemetry-otlp`'s (when compression is asked for).
#[derive(Debug)]
enum OtlpSpanExporter {
    Sdk(opentelemetry_otlp::SpanExporter),
    Http(otlp_http::OtlpHttpSpanExporter),
    Grpc(otlp_grpc::OtlpGrpcSpanExporter),
}

impl SpanExporter for OtlpSpanExporter {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        match self {
            Self::Sdk(e) => e.export(batch).await,
            Self::Http(e) => e.export(batch).await,
            Self::Grpc(e) => e.export(batch).await,
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        match self {
            Self::Sdk(e) => e.shutdown_with_timeout(timeout),
            Self::Http(e) => e.shutdown_with_timeout(timeout),
            Self::Grpc(e) => e.shutdown_with_timeout(timeout),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Self::Sdk(e) => e.set_resource(resource),
            Self::Http(e) => e.set_resource(resource),
            Self::Grpc(e) => e.set_resource(resource),
        }
    }
}
