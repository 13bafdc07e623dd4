//! In-memory telemetry for tests: spans and metrics captured by the OpenTelemetry SDK's own
//! in-memory exporters, with assertions on the span graph (names, kinds, parents, links,
//! attributes) and on metrics (name, unit, attributes).
//!
//! Spans are exported synchronously as they end, so a test can assert right after the
//! operation returns, without sleeping.

use std::fmt::Write as _;

use mqtrace_core::Instrumentation;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// Tracer and meter providers that keep everything in memory.
///
/// # Example
///
/// ```
/// use mqtrace_core::{MessagingSpanBuilder, OperationType};
/// use mqtrace_testkit::capture::TelemetryCapture;
/// use opentelemetry::Context;
///
/// let capture = TelemetryCapture::new();
/// MessagingSpanBuilder::new("kafka", OperationType::Send, "send")
///     .with_destination("orders")
///     .start(&capture.instrumentation(), &Context::new())
///     .end();
/// let spans = capture.spans();
/// let send = spans.one("send orders");
/// assert_eq!(send.span_kind, opentelemetry::trace::SpanKind::Producer);
/// spans.assert_attr(send, "messaging.system", "kafka");
/// ```
#[derive(Debug)]
pub struct TelemetryCapture {
    span_exporter: InMemorySpanExporter,
    tracer_provider: SdkTracerProvider,
    metric_exporter: InMemoryMetricExporter,
    meter_provider: SdkMeterProvider,
}

impl Default for TelemetryCapture {
    fn default() -> Self {
        Self::new()
    }
}

impl TelemetryCapture {
    /// Fresh providers with empty in-memory exporters.
    pub fn new() -> Self {
        let span_exporter = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(span_exporter.clone())
            .build();
        let metric_exporter = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metric_exporter.clone()).build())
            .build();
        Self {
            span_exporter,
            tracer_provider,
            metric_exporter,
            meter_provider,
        }
    }

    /// An [`Instrumentation`] recording into this capture (global propagator).
    pub fn instrumentation(&self) -> Instrumentation {
        Instrumentation::builder()
            .with_tracer_provider(&self.tracer_provider)
            .with_meter_provider(&self.meter_provider)
            .build()
    }

    /// The tracer provider, for spans of the test's own.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// The meter provider.
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }

    /// Every span that has ended so far.
    pub fn spans(&self) -> SpanGraph {
        SpanGraph::new(self.span_exporter.get_finished_spans().unwrap_or_default())
    }

    /// Collects and returns the current metric values.
    pub fn metrics(&self) -> MetricsSnapshot {
        let _ = self.meter_provider.force_flush();
        let exports = self
            .metric_exporter
            .get_finished_metrics()
            .unwrap_or_default();
        MetricsSnapshot {
            latest: exports.into_iter().last(),
        }
    }
}

/// A set of finished spans with graph assertions. Assertion methods panic with a listing of
/// the spans, so a failing test shows what was there.
#[derive(Debug, Clone)]
pub struct SpanGraph {
    spans: Vec<SpanData>,
}

impl SpanGraph {
    /// Wraps finished spans.
    pub fn new(spans: Vec<SpanData>) -> Self {
        Self { spans }
    }

    /// All spans.
    pub fn all(&self) -> &[SpanData] {
        &self.spans
    }

    /// A readable listing: one line per span with kind, ids, parent and links.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.spans {
            let _ = writeln!(
                out,
                "  {:?} '{}' trace={} span={} parent={} links={:?}",
                s.span_kind,
                s.name,
                s.span_context.trace_id(),
                s.span_context.span_id(),
                s.parent_span_id,
                s.links
                    .iter()
                    .map(|l| l.span_context.span_id())
                    .collect::<Vec<_>>()
            );
        }
        out
    }

    /// Spans named `name`.
    pub fn named(&self, name: &str) -> Vec<&SpanData> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    /// The only span named `name`; panics if there are none or several.
    pub fn one(&self, name: &str) -> &SpanData {
        let found = self.named(name);
        assert!(
            found.len() == 1,
            "expected exactly one span named '{name}', found {}:\n{}",
            found.len(),
            self.describe()
        );
        found[0]
    }

    /// The span with id `span_id`.
    pub fn by_id(&self, span_id: SpanId) -> Option<&SpanData> {
        self.spans
            .iter()
            .find(|s| s.span_context.span_id() == span_id)
    }

    /// Spans of `trace_id`.
    pub fn in_trace(&self, trace_id: TraceId) -> Vec<&SpanData> {
        self.spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .collect()
    }

    /// Asserts `child`'s parent is `parent` (same trace, parent span id).
    pub fn assert_child_of(&self, child: &SpanData, parent: &SpanData) {
        assert!(
            child.span_context.trace_id() == parent.span_context.trace_id()
                && child.parent_span_id == parent.span_context.span_id(),
            "expected '{}' to be a child of '{}':\n{}",
            child.name,
            parent.name,
            self.describe()
        );
    }

    /// Asserts `span` has no parent.
    pub fn assert_root(&self, span: &SpanData) {
        assert!(
            span.parent_span_id == SpanId::INVALID,
            "expected '{}' to be a root span:\n{}",
            span.name,
            self.describe()
        );
    }

    /// Asserts `span` links to `target`.
    pub fn assert_links_to(&self, span: &SpanData, target: &SpanData) {
        assert!(
            span.links.iter().any(
                |l| l.span_context.span_id() == target.span_context.span_id()
                    && l.span_context.trace_id() == target.span_context.trace_id()
            ),
            "expected '{}' to link to '{}':\n{}",
            span.name,
            target.name,
            self.describe()
        );
    }

    /// Asserts `span` has kind `kind`.
    pub fn assert_kind(&self, span: &SpanData, kind: SpanKind) {
        assert_eq!(span.span_kind, kind, "kind of '{}'", span.name);
    }

    /// The value of attribute `key` on `span`.
    pub fn attr<'s>(&self, span: &'s SpanData, key: &str) -> Option<&'s Value> {
        span.attributes
            .iter()
            .rev()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// Asserts attribute `key` of `span` equals `expected`.
    pub fn assert_attr(&self, span: &SpanData, key: &str, expected: impl Into<Value>) {
        let expected = expected.into();
        assert_eq!(
            self.attr(span, key),
            Some(&expected),
            "attribute '{key}' of span '{}' (attributes: {:?})",
            span.name,
            span.attributes
        );
    }

    /// Asserts `span` has no attribute `key`.
    pub fn assert_no_attr(&self, span: &SpanData, key: &str) {
        assert!(
            self.attr(span, key).is_none(),
            "span '{}' should not have attribute '{key}' (attributes: {:?})",
            span.name,
            span.attributes
        );
    }
}

/// The latest cumulative metric values.
#[derive(Debug)]
pub struct MetricsSnapshot {
    latest: Option<ResourceMetrics>,
}

/// One data point of a metric, flattened for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The point's attributes.
    pub attributes: Vec<KeyValue>,
    /// The counter's sum, or the histogram's count.
    pub value: f64,
}

impl Point {
    /// Whether the point has attribute `key` = `value`.
    pub fn has(&self, key: &str, value: impl Into<Value>) -> bool {
        let value = value.into();
        self.attributes
            .iter()
            .any(|kv| kv.key.as_str() == key && kv.value == value)
    }
}

impl MetricsSnapshot {
    /// The metric named `name`.
    pub fn find(&self, name: &str) -> Option<&Metric> {
        self.latest
            .as_ref()?
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|m| m.name() == name)
    }

    /// The names of every metric present.
    pub fn names(&self) -> Vec<String> {
        self.latest
            .iter()
            .flat_map(|rm| rm.scope_metrics())
            .flat_map(|scope| scope.metrics())
            .map(|m| m.name().to_owned())
            .collect()
    }

    /// The data points of `name`: counter sums, or histogram counts.
    pub fn points(&self, name: &str) -> Vec<Point> {
        let Some(metric) = self.find(name) else {
            return Vec::new();
        };
        match metric.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                .data_points()
                .map(|p| Point {
                    attributes: p.attributes().cloned().collect(),
                    value: p.value() as f64,
                })
                .collect(),
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => histogram
                .data_points()
                .map(|p| Point {
                    attributes: p.attributes().cloned().collect(),
                    value: p.count() as f64,
                })
                .collect(),
            AggregatedMetrics::F64(MetricData::Sum(sum)) => sum
                .data_points()
                .map(|p| Point {
                    attributes: p.attributes().cloned().collect(),
                    value: p.value(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The sum over every point of `name` (counter total or histogram count).
    pub fn total(&self, name: &str) -> f64 {
        self.points(name).iter().map(|p| p.value).sum()
    }

    /// Asserts `name` exists with unit `unit`.
    pub fn assert_unit(&self, name: &str, unit: &str) {
        let metric = self
            .find(name)
            .unwrap_or_else(|| panic!("no metric '{name}'; present: {:?}", self.names()));
        assert_eq!(metric.unit(), unit, "unit of '{name}'");
    }
}
