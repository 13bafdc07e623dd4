//! Telemetry configuration read from the standard OpenTelemetry environment variables.

use std::path::PathBuf;
use std::time::Duration;

use mqtrace_core::sampling::Sampling;

use super::span_queue::SpanBatchSettings;
use crate::error::{Error, Result};

/// How telemetry leaves the process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// OTLP to a collector.
    Otlp {
        /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
        endpoint: String,
        /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
        protocol: OtlpProtocol,
    },
    /// OTLP-JSON lines files in a directory (the Collector file-exporter format).
    Files {
        /// `MQTRACE_TELEMETRY_DIR`, default `./telemetry`.
        dir: PathBuf,
    },
    /// `OTEL_SDK_DISABLED=true`: nothing is recorded or exported.
    Disabled,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// `grpc`.
    Grpc,
    /// `http/protobuf` (the OpenTelemetry default).
    HttpProtobuf,
}

/// Parses `OTEL_TRACES_SAMPLER` (`name`) with `OTEL_TRACES_SAMPLER_ARG` (`arg`).
fn parse_sampling(name: &str, arg: Option<&str>) -> Result<Sampling> {
    let ratio = || -> Result<f64> {
        let Some(arg) = arg else { return Ok(1.0) };
        match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(Error::InvalidEnv {
                name: "OTEL_TRACES_SAMPLER_ARG",
                value: arg.to_owned(),
                expected: "a sampling ratio from 0.0 to 1.0",
            }),
        }
    };
    Ok(match name.trim() {
        "always_on" => Sampling::AlwaysOn,
        "always_off" => Sampling::AlwaysOff,
        "traceidratio" => Sampling::TraceIdRatio(ratio()?),
        "parentbased_always_on" => Sampling::ParentBasedAlwaysOn,
        "parentbased_always_off" => Sampling::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => Sampling::ParentBasedTraceIdRatio(ratio()?),
        _ => {
            return Err(Error::InvalidEnv {
                name: "OTEL_TRACES_SAMPLER",
                value: name.to_owned(),
                expected: "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            });
        }
    })
}

/// Settings for [`super::init`].
///
/// # Example
///
/// ```
/// use mqtrace_telemetry::{Destination, TelemetryConfig};
///
/// let config = TelemetryConfig::default()
///     .with_default_service_name("my-worker")
///     .with_destination(Destination::Disabled);
/// assert_eq!(config.default_service_name(), "my-worker");
/// ```
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    default_service_name: String,
    service_version: String,
    environment: String,
    destination: Destination,
    sampling: Sampling,
    span_batch: SpanBatchSettings,
    log_queue_size: usize,
    otlp_timeout_from_env: bool,
    otlp_traces_timeout: Option<Duration>,
    otlp_compression: bool,
    otlp_headers: Vec<(String, String)>,
    loss_warnings: Option<Duration>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            default_service_name: "mqtrace".to_owned(),
            service_version: env!("CARGO_PKG_VERSION").to_owned(),
            environment: "development".to_owned(),
            destination: Destination::Files {
                dir: PathBuf::from("telemetry"),
            },
            sampling: Sampling::default(),
            span_batch: SpanBatchSettings::default(),
            log_queue_size: super::log_queue::DEFAULT_LOG_QUEUE_SIZE,
            otlp_timeout_from_env: false,
            otlp_traces_timeout: None,
            otlp_compression: false,
            otlp_headers: Vec::new(),
            loss_warnings: Some(Duration::from_secs(10)),
        }
    }
}

impl TelemetryConfig {
    /// Reads `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_MAX_QUEUE_SIZE`,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_EXPORT_TIMEOUT`,
    /// `OTEL_BSP_MAX_CONCURRENT_EXPORTS`,
    /// `OTEL_BLRP_MAX_QUEUE_SIZE`, `MQTRACE_TELEMETRY_DIR` and `MQTRACE_ENVIRONMENT`, and
    /// notes whether `OTEL_EXPORTER_OTLP_TIMEOUT` (or a per-signal one) is set; a value that is set but invalid is an error naming the
    /// variable (the SDK would silently fall back). Service name and resource attributes
    /// are read by the SDK itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`TelemetryConfig::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut config = Self::default();
        let non_empty = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(value) = non_empty("OTEL_SDK_DISABLED") {
            match value.trim().to_ascii_lowercase().as_str() {
                "true" => {
                    config.destination = Destination::Disabled;
                    return Ok(config);
                }
                "false" => {}
                _ => {
                    return Err(Error::InvalidEnv {
                        name: "OTEL_SDK_DISABLED",
                        value,
                        expected: "true or false",
                    });
                }
            }
        }
        let protocol = match non_empty("OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => OtlpProtocol::HttpProtobuf,
            Some(value) => match value.trim() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                _ => {
                    return Err(Error::InvalidEnv {
                        name: "OTEL_EXPORTER_OTLP_PROTOCOL",
                        value,
                        expected: "grpc or http/protobuf",
                    });
                }
            },
        };
        if let Some(endpoint) = non_empty("OTEL_EXPORTER_OTLP_ENDPOINT") {
            config.destination = Destination::Otlp {
                endpoint: endpoint.trim().to_owned(),
                protocol,
            };
        } else if let Some(dir) = non_empty("MQTRACE_TELEMETRY_DIR") {
            config.destination = Destination::Files {
                dir: PathBuf::from(dir),
            };
        }
        if let Some(environment) = non_empty("MQTRACE_ENVIRONMENT") {
            config.environment = environment;
        }
        if let Some(sampler) = non_empty("OTEL_TRACES_SAMPLER") {
            let arg = non_empty("OTEL_TRACES_SAMPLER_ARG");
            config.sampling = parse_sampling(&sampler, arg.as_deref())?;
        }
        let positive = |name: &'static str| -> Result<Option<u64>> {
            match non_empty(name) {
                None => Ok(None),
                Some(value) => match value.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(Error::InvalidEnv {
                        name,
                        value,
                        expected: "a positive integer",
                    }),
                },
            }
        };
        let mut batch = config.span_batch;
        if let Some(n) = positive("OTEL_BSP_MAX_QUEUE_SIZE")? {
            batch = batch.with_max_queue_size(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(n) = positive("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
            batch = batch.with_max_export_batch_size(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(ms) = positive("OTEL_BSP_SCHEDULE_DELAY")? {
            batch = batch.with_scheduled_delay(Duration::from_millis(ms));
        }
        if let Some(ms) = positive("OTEL_BSP_EXPORT_TIMEOUT")? {
            batch = batch.with_export_timeout(Duration::from_millis(ms));
        }
        if let Some(n) = positive("OTEL_BSP_MAX_CONCURRENT_EXPORTS")? {
            batch = batch.with_max_concurrent_exports(usize::try_from(n).unwrap_or(usize::MAX));
        }
        config.span_batch = batch;
        if let Some(n) = positive("OTEL_BLRP_MAX_QUEUE_SIZE")? {
            config.log_queue_size = usize::try_from(n).unwrap_or(usize::MAX);
        }
        config.otlp_timeout_from_env = [
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
        ]
        .iter()
        .any(|name| non_empty(name).is_some());
        // mqtrace's own OTLP/HTTP span exporter reads what the SDK's would.
        let traces_timeout = match positive("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")? {
            Some(ms) => Some(ms),
            None => positive("OTEL_EXPORTER_OTLP_TIMEOUT")?,
        };
        config.otlp_traces_timeout = traces_timeout.map(Duration::from_millis);
        config.otlp_compression = [
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ]
        .iter()
        .any(|name| non_empty(name).is_some_and(|v| v.trim() != "none"));
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(value) = non_empty(name) {
                config.otlp_headers.push((name.to_owned(), value));
            }
        }
        // Validated now, so a typo is an error at start, not a failed export later.
        super::otlp_http::headers_from(|name| config.otlp_header_variable(name))?;
        Ok(config)
    }

    /// Sets the log record queue size (at least 1; `OTEL_BLRP_MAX_QUEUE_SIZE`, default 2048).
    pub fn with_log_queue_size(mut self, size: usize) -> Self {
        self.log_queue_size = size.max(1);
        self
    }

    /// How often a running pipeline may warn on stderr that it dropped telemetry (default
    /// every 10 s at most; `None`: never — the counters and [`super::TelemetryStats`] still
    /// tell).
    pub fn with_loss_warnings(mut self, interval: Option<Duration>) -> Self {
        self.loss_warnings = interval;
        self
    }

    /// The log record queue size.
    pub fn log_queue_size(&self) -> usize {
        self.log_queue_size
    }

    /// How often a running pipeline may warn about drops (`None`: never).
    pub fn loss_warnings(&self) -> Option<Duration> {
        self.loss_warnings
    }

    /// The timeout of one OTLP request, when mqtrace sets it: the export timeout, unless an
    /// `OTEL_EXPORTER_OTLP_*TIMEOUT` variable is set (then the exporter reads that).
    pub(crate) fn otlp_request_timeout(&self) -> Option<Duration> {
        (!self.otlp_timeout_from_env).then_some(self.span_batch.export_timeout)
    }

    /// The span exporter's request timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, else the export timeout.
    pub(crate) fn otlp_traces_timeout(&self) -> Duration {
        self.otlp_traces_timeout
            .unwrap_or(self.span_batch.export_timeout)
    }

    /// `OTEL_EXPORTER_OTLP_COMPRESSION` (or the traces one) asks for compression.
    pub(crate) fn otlp_compression(&self) -> bool {
        self.otlp_compression
    }

    /// The value of an `OTEL_EXPORTER_OTLP_*HEADERS` variable, as read.
    pub(crate) fn otlp_header_variable(&self, name: &str) -> Option<String> {
        self.otlp_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// `service.name` used when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES`
    /// names the service.
    pub fn with_default_service_name(mut self, name: impl Into<String>) -> Self {
        self.default_service_name = name.into();
        self
    }

    /// `service.version` (default: mqtrace's version).
    pub fn with_service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = version.into();
        self
    }

    /// `deployment.environment.name` unless `OTEL_RESOURCE_ATTRIBUTES` sets it
    /// (default `development`, or `MQTRACE_ENVIRONMENT`).
    pub fn with_environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// Head sampling, instead of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    ///
    /// The default is `parentbased_traceidratio` with ratio 1.0: a span follows its parent's
    /// decision (so a request sampled by its producer stays whole across the queue and the
    /// batch), and new traces are all kept. Keep it at 1.0 when a Collector tail-samples
    /// (`integration/otel-collector.yaml` keeps every error and every slow trace plus a share
    /// of the rest): a trace dropped at the head can never be rescued by an error later on.
    /// Lower the ratio only where no tail sampling runs and volume must fall.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_telemetry::{Sampling, TelemetryConfig};
    ///
    /// let vars = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")];
    /// let config = TelemetryConfig::from_lookup(|name| {
    ///     vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    /// })?;
    /// assert_eq!(config.sampling(), Sampling::ParentBasedTraceIdRatio(0.25));
    /// let config = config.with_sampling(Sampling::AlwaysOn);
    /// assert_eq!(config.sampling(), Sampling::AlwaysOn);
    /// # Ok::<_, mqtrace_telemetry::Error>(())
    /// ```
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// Span export queue and batching.
    pub fn with_span_batch(mut self, settings: SpanBatchSettings) -> Self {
        self.span_batch = settings;
        self
    }

    /// Head sampling.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// Span export queue and batching.
    pub fn span_batch(&self) -> SpanBatchSettings {
        self.span_batch
    }

    /// Where telemetry goes.
    pub fn with_destination(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }

    /// The fallback `service.name`.
    pub fn default_service_name(&self) -> &str {
        &self.default_service_name
    }

    /// `service.version`.
    pub fn service_version(&self) -> &str {
        &self.service_version
    }

    /// `deployment.environment.name`.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// Where telemetry goes.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::from_lookup(|name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn no_endpoint_means_files_in_telemetry_dir() {
        let c = config(&[]).expect("valid");
        assert_eq!(
            c.destination(),
            &Destination::Files {
                dir: "telemetry".into()
            }
        );
        let c = config(&[("MQTRACE_TELEMETRY_DIR", "/tmp/t")]).expect("valid");
        assert_eq!(
            c.destination(),
            &Destination::Files {
                dir: "/tmp/t".into()
            }
        );
    }

    #[test]
    fn endpoint_and_protocol() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect("valid");
        assert_eq!(
            c.destination(),
            &Destination::Otlp {
                endpoint: "http://c:4317".into(),
                protocol: OtlpProtocol::Grpc
            }
        );
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).expect("valid");
        assert!(matches!(
            c.destination(),
            Destination::Otlp {
                protocol: OtlpProtocol::HttpProtobuf,
                ..
            }
        ));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).expect_err("unsupported");
        assert!(err.to_string().contains("grpc or http/protobuf"), "{err}");
        let err = config(&[("OTEL_SDK_DISABLED", "yes")]).expect_err("invalid");
        assert!(err.to_string().contains("OTEL_SDK_DISABLED"), "{err}");
        let c = config(&[("OTEL_SDK_DISABLED", "TRUE")]).expect("valid");
        assert_eq!(c.destination(), &Destination::Disabled);
    }

    #[test]
    fn sampler_default_is_parent_based_keep_all() {
        let c = config(&[]).expect("valid");
        assert_eq!(c.sampling(), Sampling::ParentBasedTraceIdRatio(1.0));
        let c = config(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")]).expect("valid");
        assert_eq!(
            c.sampling(),
            Sampling::ParentBasedTraceIdRatio(1.0),
            "spec: ARG defaults to 1.0"
        );
        let c = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ])
        .expect("valid");
        assert_eq!(c.sampling(), Sampling::TraceIdRatio(0.5));
        let c = config(&[("OTEL_TRACES_SAMPLER", "always_off")]).expect("valid");
        assert_eq!(c.sampling(), Sampling::AlwaysOff);
    }

    #[test]
    fn bad_sampler_settings_are_clear_errors() {
        let err = config(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).expect_err("unsupported");
        assert!(err.to_string().contains("OTEL_TRACES_SAMPLER"), "{err}");
        assert!(
            err.to_string().contains("parentbased_traceidratio"),
            "{err}"
        );
        for arg in ["1.5", "-0.1", "half"] {
            let err = config(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", arg),
            ])
            .expect_err("out of range");
            assert!(err.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{err}");
        }
    }

    #[test]
    fn batch_processor_variables() {
        let c = config(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ])
        .expect("valid");
        assert_eq!(c.span_batch().max_queue_size, 100);
        assert_eq!(c.span_batch().max_export_batch_size, 10);
        assert_eq!(c.span_batch().scheduled_delay, Duration::from_millis(250));
        let err = config(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).expect_err("zero");
        assert!(err.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"), "{err}");
    }

    #[test]
    fn export_timeout_bounds_otlp_requests_unless_the_exporter_variable_is_set() {
        let c = config(&[]).expect("valid");
        assert_eq!(c.span_batch().export_timeout, Duration::from_secs(5));
        assert_eq!(c.otlp_request_timeout(), Some(Duration::from_secs(5)));
        let c = config(&[
            ("OTEL_BSP_EXPORT_TIMEOUT", "1500"),
            ("OTEL_BLRP_MAX_QUEUE_SIZE", "64"),
        ])
        .expect("valid");
        assert_eq!(c.span_batch().export_timeout, Duration::from_millis(1500));
        assert_eq!(c.otlp_request_timeout(), Some(Duration::from_millis(1500)));
        assert_eq!(c.log_queue_size(), 64);
        let c = config(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "20000")]).expect("valid");
        assert_eq!(
            c.otlp_request_timeout(),
            None,
            "the exporter reads its own variable"
        );
        let err = config(&[("OTEL_BSP_EXPORT_TIMEOUT", "soon")]).expect_err("invalid");
        assert!(err.to_string().contains("OTEL_BSP_EXPORT_TIMEOUT"), "{err}");
    }
}
