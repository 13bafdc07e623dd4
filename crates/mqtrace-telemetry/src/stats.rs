//! What the telemetry pipeline delivered and what it lost, for the program's summary and for
//! the warning a run that lost anything ends with.
//!
//! # Example
//!
//! ```
//! use mqtrace_telemetry::{Destination, TelemetryConfig};
//!
//! let dir = std::env::temp_dir().join("mqtrace-doc-stats");
//! let telemetry = mqtrace_telemetry::build(
//!     TelemetryConfig::default().with_destination(Destination::Files { dir }),
//! )?;
//! // ... traced work ...
//! let stats = telemetry.shutdown();
//! println!("spans exported {}, dropped {}", stats.spans.exported, stats.spans.dropped());
//! if let Some(warning) = stats.loss_warning() {
//!     eprintln!("{warning}");
//! }
//! # Ok::<_, mqtrace_telemetry::Error>(())
//! ```

use std::fmt::Write as _;
use std::time::Duration;

/// Items of one signal (spans, log records) by fate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignalStats {
    /// Delivered to the exporter's destination.
    pub exported: u64,
    /// Dropped because the export queue was full (the exporter could not keep up).
    pub dropped_queue_full: u64,
    /// In a batch the exporter failed to deliver (collector down, refusing, timing out).
    pub dropped_export_failed: u64,
    /// Still queued or being exported when shutdown stopped waiting for the collector.
    pub dropped_at_shutdown: u64,
}

impl SignalStats {
    /// Everything lost, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_export_failed + self.dropped_at_shutdown
    }
}

/// Metric exports by outcome. Metrics are aggregated in the process (cumulative), so a
/// failed export loses nothing while a later one succeeds; the last one before exit cannot
/// be retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricExportStats {
    /// Exports delivered.
    pub exported: u64,
    /// Exports that failed.
    pub failed: u64,
}

/// The pipeline's account: what was exported and what was lost, by signal and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TelemetryStats {
    /// Spans.
    pub spans: SignalStats,
    /// Log records.
    pub logs: SignalStats,
    /// Metric exports.
    pub metrics: MetricExportStats,
    /// The span queue's size (`OTEL_BSP_MAX_QUEUE_SIZE`), named in warnings.
    pub span_queue_size: usize,
    /// The log record queue's size (`OTEL_BLRP_MAX_QUEUE_SIZE`), named in warnings.
    pub log_queue_size: usize,
    /// How long flush and shutdown wait for the exporter (`OTEL_BSP_EXPORT_TIMEOUT`).
    pub export_timeout: Duration,
    /// How long the last shutdown took, once shut down.
    pub shutdown_took: Option<Duration>,
    /// Where telemetry went, for messages (`./telemetry`, an OTLP endpoint).
    pub destination: String,
}

impl TelemetryStats {
    /// Nothing was lost.
    pub fn is_complete(&self) -> bool {
        self.spans.dropped() == 0 && self.logs.dropped() == 0 && self.metrics.failed == 0
    }

    /// A warning for stderr when anything was lost: how many, why, and which setting to
    /// raise or what to check. `None` when nothing was lost.
    pub fn loss_warning(&self) -> Option<String> {
        if self.is_complete() {
            return None;
        }
        let mut text = String::from("warning: telemetry incomplete:");
        for (what, stats) in [("spans", &self.spans), ("log records", &self.logs)] {
            if stats.dropped() == 0 {
                continue;
            }
            let _ = write!(
                text,
                "\n  {} of {} {what} dropped",
                stats.dropped(),
                stats.dropped() + stats.exported
            );
            if stats.dropped_queue_full > 0 {
                let _ = write!(
                    text,
                    "\n    {} because the export queue was full: raise {} (now {}) or export faster",
                    stats.dropped_queue_full,
                    if what == "spans" {
                        "OTEL_BSP_MAX_QUEUE_SIZE"
                    } else {
                        "OTEL_BLRP_MAX_QUEUE_SIZE"
                    },
                    if what == "spans" {
                        self.span_queue_size
                    } else {
                        self.log_queue_size
                    }
                );
            }
            if stats.dropped_export_failed > 0 {
                let _ = write!(
                    text,
                    "\n    {} because export to {} failed: check that the collector is up and accepts OTLP",
                    stats.dropped_export_failed, self.destination
                );
            }
            if stats.dropped_at_shutdown > 0 {
                let _ = write!(
                    text,
                    "\n    {} still unexported when shutdown stopped waiting after {} ms: the collector at {} did not answer (OTEL_BSP_EXPORT_TIMEOUT)",
                    stats.dropped_at_shutdown,
                    self.export_timeout.as_millis(),
                    self.destination
                );
            }
        }
        if self.metrics.failed > 0 {
            let _ = write!(
                text,
                "\n  {} of {} metric exports to {} failed",
                self.metrics.failed,
                self.metrics.failed + self.metrics.exported,
                self.destination
            );
        }
        Some(text)
    }

    /// The account as JSON, for a program's machine-readable summary.
    pub fn to_json(&self) -> serde_json::Value {
        let signal = |s: &SignalStats| {
            serde_json::json!({
                "exported": s.exported,
                "dropped": s.dropped(),
                "dropped_by_reason": {
                    "queue_full": s.dropped_queue_full,
                    "export_failed": s.dropped_export_failed,
                    "shutdown": s.dropped_at_shutdown,
                },
            })
        };
        serde_json::json!({
            "complete": self.is_complete(),
            "destination": self.destination,
            "spans": signal(&self.spans),
            "logs": signal(&self.logs),
            "metric_exports": {"exported": self.metrics.exported, "failed": self.metrics.failed},
            "shutdown_s": self.shutdown_took.map(|d| d.as_secs_f64()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_run_has_no_warning() {
        let stats = TelemetryStats {
            spans: SignalStats {
                exported: 10,
                ..SignalStats::default()
            },
            ..TelemetryStats::default()
        };
        assert!(stats.is_complete());
        assert_eq!(stats.loss_warning(), None);
        assert_eq!(stats.to_json()["spans"]["dropped"], 0);
    }

    #[test]
    fn the_warning_says_how_many_why_and_what_to_raise() {
        let stats = TelemetryStats {
            spans: SignalStats {
                exported: 90,
                dropped_queue_full: 7,
                dropped_export_failed: 2,
                dropped_at_shutdown: 1,
            },
            span_queue_size: 2048,
            export_timeout: Duration::from_millis(5000),
            destination: "OTLP http://collector:4318".into(),
            ..TelemetryStats::default()
        };
        let warning = stats.loss_warning().expect("a warning");
        assert!(warning.contains("10 of 100 spans dropped"), "{warning}");
        assert!(
            warning.contains(
                "7 because the export queue was full: raise OTEL_BSP_MAX_QUEUE_SIZE (now 2048)"
            ),
            "{warning}"
        );
        assert!(
            warning.contains("2 because export to OTLP http://collector:4318 failed"),
            "{warning}"
        );
        assert!(warning.contains("1 still unexported"), "{warning}");
        assert!(!warning.contains("log records"), "{warning}");
        let json = stats.to_json();
        assert_eq!(json["complete"], false);
        assert_eq!(json["spans"]["dropped"], 10);
        assert_eq!(json["spans"]["dropped_by_reason"]["queue_full"], 7);
    }
}
