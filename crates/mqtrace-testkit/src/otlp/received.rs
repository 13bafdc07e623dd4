//! What an [`OtlpReceiver`](super::OtlpReceiver) received, flattened for assertions: one
//! [`ReceivedSpan`], [`ReceivedMetric`] or [`ReceivedLog`] per item, each with its resource,
//! instrumentation scope and the protocol it came over.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};

use crate::prometheus::MetricKind;

/// The OTLP transport a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

/// The value of attribute `key` in `attributes`, if present.
pub fn find_attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// A value rendered as a string (strings as is, numbers and booleans formatted, arrays as
/// `[a, b]`), for comparisons that do not care about the wire type.
pub fn value_to_string(value: &any_value::Value) -> String {
    match value {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BytesValue(b) => hex(b),
        any_value::Value::ArrayValue(a) => {
            let items: Vec<String> = a
                .values
                .iter()
                .filter_map(|v: &AnyValue| v.value.as_ref().map(value_to_string))
                .collect();
            format!("[{}]", items.join(", "))
        }
        any_value::Value::KvlistValue(l) => {
            let items: Vec<String> = l
                .values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                    format!("{}={}", kv.key, v.map(value_to_string).unwrap_or_default())
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        // Variants added to the protocol later (e.g. references into a dictionary).
        #[allow(unreachable_patterns)]
        _ => String::new(),
    }
}

/// Lower-case hex of `bytes` (trace and span ids).
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Resource and scope shared by the items of one export request.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The protocol the request came over.
    pub protocol: Protocol,
    /// The resource (service.name, ...).
    pub resource: Arc<Resource>,
    /// The instrumentation scope.
    pub scope: Arc<InstrumentationScope>,
}

impl Origin {
    fn new(
        protocol: Protocol,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
    ) -> Self {
        Self {
            protocol,
            resource: Arc::new(resource.cloned().unwrap_or_default()),
            scope: Arc::new(scope.cloned().unwrap_or_default()),
        }
    }

    /// A resource attribute as a string.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        find_attr(&self.resource.attributes, key).map(value_to_string)
    }

    /// The instrumentation scope's name.
    pub fn scope_name(&self) -> &str {
        &self.scope.name
    }
}

/// One span as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Where it came from.
    pub origin: Origin,
    /// The span itself.
    pub span: Span,
}

impl ReceivedSpan {
    /// The span name.
    pub fn name(&self) -> &str {
        &self.span.name
    }

    /// The span kind.
    pub fn kind(&self) -> span::SpanKind {
        span::SpanKind::try_from(self.span.kind).unwrap_or(span::SpanKind::Unspecified)
    }

    /// Trace id, lower-case hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// Span id, lower-case hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Parent span id, lower-case hex, or `None` for a root span.
    pub fn parent_span_id(&self) -> Option<String> {
        (!self.span.parent_span_id.is_empty()).then(|| hex(&self.span.parent_span_id))
    }

    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&any_value::Value> {
        find_attr(&self.span.attributes, key)
    }

    /// An attribute's value as a string (see [`value_to_string`]).
    pub fn attr_string(&self, key: &str) -> Option<String> {
        self.attr(key).map(value_to_string)
    }

    /// An integer attribute.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    /// `(trace id, span id)` of each link, lower-case hex.
    pub fn links(&self) -> Vec<(String, String)> {
        self.span
            .links
            .iter()
            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
            .collect()
    }

    /// Whether this span links to `other`.
    pub fn links_to(&self, other: &ReceivedSpan) -> bool {
        self.span
            .links
            .iter()
            .any(|l| l.trace_id == other.span.trace_id && l.span_id == other.span.span_id)
    }

    /// Whether `parent` is this span's parent (same trace, parent id = its span id).
    pub fn is_child_of(&self, parent: &ReceivedSpan) -> bool {
        self.span.trace_id == parent.span.trace_id
            && self.span.parent_span_id == parent.span.span_id
    }

    /// The status code (unset when absent).
    pub fn status_code(&self) -> status::StatusCode {
        self.span
            .status
            .as_ref()
            .and_then(|s| status::StatusCode::try_from(s.code).ok())
            .unwrap_or(status::StatusCode::Unset)
    }
}

/// One metric as it arrived in one export.
#[derive(Debug, Clone)]
pub struct ReceivedMetric {
    /// Where it came from.
    pub origin: Origin,
    /// The metric with its data points.
    pub metric: Metric,
}

impl ReceivedMetric {
    /// The instrument name.
    pub fn name(&self) -> &str {
        &self.metric.name
    }

    /// The unit (UCUM, e.g. `s`, `By`, `{message}`).
    pub fn unit(&self) -> &str {
        &self.metric.unit
    }

    /// The instrument kind, or `None` for data the testkit does not classify (exponential
    /// histograms, summaries).
    pub fn kind(&self) -> Option<MetricKind> {
        match self.metric.data.as_ref()? {
            metric::Data::Sum(sum) if sum.is_monotonic => Some(MetricKind::Counter),
            metric::Data::Sum(_) => Some(MetricKind::UpDownCounter),
            metric::Data::Gauge(_) => Some(MetricKind::Gauge),
            metric::Data::Histogram(_) => Some(MetricKind::Histogram),
            _ => None,
        }
    }

    /// The attributes of each data point, as sorted string maps.
    pub fn point_attributes(&self) -> Vec<BTreeMap<String, String>> {
        let attrs: Vec<&[KeyValue]> = match self.metric.data.as_ref() {
            Some(metric::Data::Sum(s)) => s.data_points.iter().map(|p| &p.attributes[..]).collect(),
            Some(metric::Data::Gauge(g)) => {
                g.data_points.iter().map(|p| &p.attributes[..]).collect()
            }
            Some(metric::Data::Histogram(h)) => {
                h.data_points.iter().map(|p| &p.attributes[..]).collect()
            }
            Some(metric::Data::ExponentialHistogram(h)) => {
                h.data_points.iter().map(|p| &p.attributes[..]).collect()
            }
            Some(metric::Data::Summary(s)) => {
                s.data_points.iter().map(|p| &p.attributes[..]).collect()
            }
            None => Vec::new(),
        };
        attrs.into_iter().map(attribute_map).collect()
    }

    /// The sum over data points: the value of counters and gauges, the count of histograms.
    pub fn total(&self) -> f64 {
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
        let number = |v: &Option<Value>| match v {
            Some(Value::AsDouble(d)) => *d,
            #[allow(clippy::cast_precision_loss)]
            Some(Value::AsInt(i)) => *i as f64,
            None => 0.0,
        };
        match self.metric.data.as_ref() {
            Some(metric::Data::Sum(s)) => s.data_points.iter().map(|p| number(&p.value)).sum(),
            Some(metric::Data::Gauge(g)) => g.data_points.iter().map(|p| number(&p.value)).sum(),
            #[allow(clippy::cast_precision_loss)]
            Some(metric::Data::Histogram(h)) => h.data_points.iter().map(|p| p.count as f64).sum(),
            _ => 0.0,
        }
    }
}

/// One log record as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    /// Where it came from.
    pub origin: Origin,
    /// The record.
    pub record: LogRecord,
}

impl ReceivedLog {
    /// The body as a string (empty when absent).
    pub fn body(&self) -> String {
        self.record
            .body
            .as_ref()
            .and_then(|b| b.value.as_ref())
            .map(value_to_string)
            .unwrap_or_default()
    }

    /// Trace id, lower-case hex, or `None` when the record carries none.
    pub fn trace_id(&self) -> Option<String> {
        (!self.record.trace_id.is_empty()).then(|| hex(&self.record.trace_id))
    }

    /// Span id, lower-case hex, or `None` when the record carries none.
    pub fn span_id(&self) -> Option<String> {
        (!self.record.span_id.is_empty()).then(|| hex(&self.record.span_id))
    }

    /// An attribute as a string.
    pub fn attr_string(&self, key: &str) -> Option<String> {
        find_attr(&self.record.attributes, key).map(value_to_string)
    }
}

fn attribute_map(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let v = kv.value.as_ref()?.value.as_ref()?;
            Some((kv.key.clone(), value_to_string(v)))
        })
        .collect()
}

pub(super) fn flatten_spans(
    protocol: Protocol,
    request: ExportTraceServiceRequest,
) -> Vec<ReceivedSpan> {
    // Spans are moved out of the decoded request, not copied: a receiver that copies every
    // span falls behind a busy exporter on a small machine.
    let mut out = Vec::new();
    for rs in request.resource_spans {
        for ss in rs.scope_spans {
            let origin = Origin::new(protocol, rs.resource.as_ref(), ss.scope.as_ref());
            out.extend(ss.spans.into_iter().map(|span| ReceivedSpan {
                origin: origin.clone(),
                span,
            }));
        }
    }
    out
}

pub(super) fn flatten_metrics(
    protocol: Protocol,
    request: ExportMetricsServiceRequest,
) -> Vec<ReceivedMetric> {
    let mut out = Vec::new();
    for rm in request.resource_metrics {
        for sm in rm.scope_metrics {
            let origin = Origin::new(protocol, rm.resource.as_ref(), sm.scope.as_ref());
            out.extend(sm.metrics.into_iter().map(|metric| ReceivedMetric {
                origin: origin.clone(),
                metric,
            }));
        }
    }
    out
}

pub(super) fn flatten_logs(
    protocol: Protocol,
    request: ExportLogsServiceRequest,
) -> Vec<ReceivedLog> {
    let mut out = Vec::new();
    for rl in request.resource_logs {
        for sl in rl.scope_logs {
            let origin = Origin::new(protocol, rl.resource.as_ref(), sl.scope.as_ref());
            out.extend(sl.log_records.into_iter().map(|record| ReceivedLog {
                origin: origin.clone(),
                record,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn attributes_render_and_last_one_wins() {
        let attrs = vec![
            kv("a", any_value::Value::IntValue(1)),
            kv("a", any_value::Value::StringValue("two".into())),
            kv(
                "list",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::BoolValue(true)),
                    }],
                }),
            ),
        ];
        assert_eq!(
            find_attr(&attrs, "a").map(value_to_string).as_deref(),
            Some("two")
        );
        assert_eq!(
            find_attr(&attrs, "list").map(value_to_string).as_deref(),
            Some("[true]")
        );
        assert!(find_attr(&attrs, "missing").is_none());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn spans_keep_resource_scope_and_graph() {
        let parent = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "parent".into(),
            ..Default::default()
        };
        let child = Span {
            trace_id: vec![1; 16],
            span_id: vec![3; 8],
            parent_span_id: vec![2; 8],
            name: "child".into(),
            kind: span::SpanKind::Consumer as i32,
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue("svc".into()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "mqtrace".into(),
                        ..Default::default()
                    }),
                    spans: vec![parent, child],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let spans = flatten_spans(Protocol::Grpc, request);
        assert_eq!(spans.len(), 2);
        assert_eq!(
            spans[1].origin.resource_attr("service.name").as_deref(),
            Some("svc")
        );
        assert_eq!(spans[1].origin.scope_name(), "mqtrace");
        assert!(spans[1].is_child_of(&spans[0]));
        assert!(!spans[0].is_child_of(&spans[1]));
        assert_eq!(spans[0].parent_span_id(), None);
        assert_eq!(spans[1].kind(), span::SpanKind::Consumer);
        assert_eq!(spans[1].status_code(), status::StatusCode::Unset);
    }
}
