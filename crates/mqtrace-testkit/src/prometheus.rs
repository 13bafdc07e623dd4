//! Prometheus names of OpenTelemetry metrics, as the Collector's Prometheus exporter writes
//! them.

/// The kind of an OpenTelemetry instrument, which decides its Prometheus suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A monotonic sum (`_total`).
    Counter,
    /// A non-monotonic sum.
    UpDownCounter,
    /// A gauge.
    Gauge,
    /// A histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
}
