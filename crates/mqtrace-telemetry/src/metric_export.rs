//! A metric exporter wrapper that counts exports by outcome, so a run can tell the user
//! when its metrics did not reach the collector. Metrics are aggregated in the process with
//! cumulative temporality, so a failed export loses nothing as long as a later one succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;

use super::stats::MetricExportStats;

/// Exports by outcome.
#[derive(Debug, Default)]
pub(crate) struct MetricExportCounters {
    exported: AtomicU64,
    failed: AtomicU64,
}

impl MetricExportCounters {
    pub(crate) fn snapshot(&self) -> MetricExportStats {
        MetricExportStats {
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// `E`, with every export counted in `counters`.
#[derive(Debug)]
pub(crate) struct CountingMetricExporter<E> {
    inner: E,
    counters: Arc<MetricExportCounters>,
}

impl<E> CountingMetricExporter<E> {
    pub(crate) fn new(inner: E, counters: Arc<MetricExportCounters>) -> Self {
        Self { inner, counters }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        let counter = if result.is_ok() {
            &self.counters.exported
        } else {
            &self.counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
