//! Telemetry configuration read from the standard OpenTelemetry environment variables.

use std::path::PathBuf;

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

/// Settings for [`super::init`].
///
/// # Example
///
/// ```
/// use mqtrace_core::telemetry::{Destination, TelemetryConfig};
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
        }
    }
}

impl TelemetryConfig {
    /// Reads `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// and `MQTRACE_TELEMETRY_DIR`. Service name, resource attributes and sampler are read by
    /// the SDK itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
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
        Ok(config)
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
}
