//! OTLP-JSON written straight from the SDK's [`SpanData`]: one
//! `ExportTraceServiceRequest` per call, byte for byte the shape the OpenTelemetry Collector's
//! file exporter writes (and `opentelemetry-proto`'s serde encoding produces), without building
//! the intermediate protobuf structs first.
//!
//! The encoding follows the [OTLP/JSON rules]: field names in lowerCamelCase, trace and span
//! ids as hex strings, 64-bit integers as decimal strings, enums as numbers. Every field the
//! protobuf encoding writes is written, in the same order, so readers that compare against the
//! serde form (the testkit, `mqtrace journeys`, the Collector's `otlpjsonfile` receiver) see
//! the same document.
//!
//! Cost: one pass over each span, appending to one reused buffer; no allocation per span or
//! attribute. Strings are escaped only where they need it (a scan first, one copy when clean).
//!
//! [OTLP/JSON rules]: https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding

use opentelemetry::trace::{Event, Link, SpanContext, SpanId};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

use super::otlp_proto::{
    group_by_scope, span_flags, span_kind, status_code, status_description, unix_nanos,
};

/// Encodes batches of spans of one resource as OTLP-JSON `ExportTraceServiceRequest`s.
#[derive(Debug, Default)]
pub(crate) struct TraceRequestEncoder {
    /// `"resource":{...}` of the resource, encoded once when it is set.
    resource: Vec<u8>,
    /// The resource's schema URL, encoded as a JSON string.
    resource_schema_url: Vec<u8>,
    /// Per batch: the distinct scopes in order of first appearance, and which scope each
    /// span belongs to (reused between batches).
    scope_of_span: Vec<usize>,
}

impl TraceRequestEncoder {
    /// An encoder for spans of `resource`.
    pub(crate) fn new(resource: &Resource) -> Self {
        let mut encoder = Self::default();
        encoder.set_resource(resource);
        encoder
    }

    /// Spans from now on belong to `resource`.
    pub(crate) fn set_resource(&mut self, resource: &Resource) {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"attributes\":[");
        for (i, (key, value)) in resource.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            key_value(&mut out, key.as_str(), value);
        }
        out.extend_from_slice(b"],\"droppedAttributesCount\":0,\"entityRefs\":[]}");
        self.resource = out;
        self.resource_schema_url.clear();
        string(
            &mut self.resource_schema_url,
            resource.schema_url().unwrap_or_default(),
        );
    }

    /// Appends one request holding `spans` (grouped by instrumentation scope, in order of
    /// first appearance, spans in their order) to `out`, without a trailing newline.
    pub(crate) fn encode(&mut self, spans: &[SpanData], out: &mut Vec<u8>) {
        let scopes = group_by_scope(spans, &mut self.scope_of_span);

        out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":");
        out.extend_from_slice(&self.resource);
        out.extend_from_slice(b",\"scopeSpans\":[");
        for (index, scope) in scopes.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"scope\":");
            instrumentation_scope(out, scope);
            out.extend_from_slice(b",\"spans\":[");
            let mut first = true;
            for (span, _) in spans
                .iter()
                .zip(&self.scope_of_span)
                .filter(|(_, of)| **of == index)
            {
                if !first {
                    out.push(b',');
                }
                first = false;
                span_json(out, span);
            }
            out.extend_from_slice(b"],\"schemaUrl\":");
            string(out, scope.schema_url().unwrap_or_default());
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"schemaUrl\":");
        out.extend_from_slice(&self.resource_schema_url);
        out.extend_from_slice(b"}]}");
    }
}

fn instrumentation_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    out.extend_from_slice(b"{\"name\":");
    string(out, scope.name());
    out.extend_from_slice(b",\"version\":");
    string(out, scope.version().unwrap_or_default());
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, scope.attributes());
    out.extend_from_slice(b",\"droppedAttributesCount\":0}");
}

fn span_json(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    out.extend_from_slice(b"{\"traceId\":\"");
    hex(out, &context.trace_id().to_bytes());
    out.extend_from_slice(b"\",\"spanId\":\"");
    hex(out, &context.span_id().to_bytes());
    out.extend_from_slice(b"\",\"traceState\":");
    trace_state(out, context);
    out.extend_from_slice(b",\"parentSpanId\":\"");
    if span.parent_span_id != SpanId::INVALID {
        hex(out, &span.parent_span_id.to_bytes());
    }
    out.extend_from_slice(b"\",\"flags\":");
    number(
        out,
        u64::from(span_flags(
            span.parent_span_is_remote,
            context.trace_flags().to_u8(),
        )),
    );
    out.extend_from_slice(b",\"name\":");
    string(out, &span.name);
    out.extend_from_slice(b",\"kind\":");
    number(out, span_kind(&span.span_kind));
    out.extend_from_slice(b",\"startTimeUnixNano\":");
    quoted_number(out, unix_nanos(span.start_time));
    out.extend_from_slice(b",\"endTimeUnixNano\":");
    quoted_number(out, unix_nanos(span.end_time));
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &span.attributes);
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, u64::from(span.dropped_attributes_count));
    out.extend_from_slice(b",\"events\":[");
    for (i, event) in span.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        event_json(out, event);
    }
    out.extend_from_slice(b"],\"droppedEventsCount\":");
    number(out, u64::from(span.events.dropped_count));
    out.extend_from_slice(b",\"links\":[");
    for (i, link) in span.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        link_json(out, link);
    }
    out.extend_from_slice(b"],\"droppedLinksCount\":");
    number(out, u64::from(span.links.dropped_count));
    out.extend_from_slice(b",\"status\":{\"message\":");
    string(out, status_description(&span.status));
    out.extend_from_slice(b",\"code\":");
    number(out, status_code(&span.status));
    out.extend_from_slice(b"}}");
}

fn event_json(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"{\"timeUnixNano\":");
    quoted_number(out, unix_nanos(event.timestamp));
    out.extend_from_slice(b",\"name\":");
    string(out, &event.name);
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &event.attributes);
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, u64::from(event.dropped_attributes_count));
    out.push(b'}');
}

fn link_json(out: &mut Vec<u8>, link: &Link) {
    let context = &link.span_context;
    out.extend_from_slice(b"{\"traceId\":\"");
    hex(out, &context.trace_id().to_bytes());
    out.extend_from_slice(b"\",\"spanId\":\"");
    hex(out, &context.span_id().to_bytes());
    out.extend_from_slice(b"\",\"traceState\":");
    trace_state(out, context);
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &link.attributes);
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, u64::from(link.dropped_attributes_count));
    out.extend_from_slice(b",\"flags\":");
    number(
        out,
        u64::from(span_flags(
            context.is_remote(),
            context.trace_flags().to_u8(),
        )),
    );
    out.push(b'}');
}

fn trace_state(out: &mut Vec<u8>, context: &SpanContext) {
    let state = context.trace_state();
    if *state == opentelemetry::trace::TraceState::NONE {
        out.extend_from_slice(b"\"\"");
    } else {
        string(out, &state.header());
    }
}

fn attributes<'a>(out: &mut Vec<u8>, attributes: impl IntoIterator<Item = &'a KeyValue>) {
    out.push(b'[');
    for (i, kv) in attributes.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        key_value(out, kv.key.as_str(), &kv.value);
    }
    out.push(b']');
}

fn key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    out.extend_from_slice(b"{\"key\":");
    string(out, key);
    out.extend_from_slice(b",\"value\":");
    any_value(out, value);
    out.push(b'}');
}

fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => {
            out.extend_from_slice(b"{\"stringValue\":");
            string(out, s.as_str());
            out.push(b'}');
        }
        Value::I64(i) => {
            out.extend_from_slice(b"{\"intValue\":\"");
            signed(out, *i);
            out.extend_from_slice(b"\"}");
        }
        Value::Bool(b) => {
            out.extend_from_slice(if *b {
                b"{\"boolValue\":true}"
            } else {
                b"{\"boolValue\":false}"
            });
        }
        Value::F64(f) => {
            out.extend_from_slice(b"{\"doubleValue\":");
            double(out, *f);
            out.push(b'}');
        }
        Value::Array(array) => {
            out.extend_from_slice(b"{\"arrayValue\":{\"values\":[");
            match array {
                Array::Bool(values) => elements(out, values, |out, v| {
                    any_value(out, &Value::Bool(*v));
                }),
                Array::I64(values) => elements(out, values, |out, v| {
                    any_value(out, &Value::I64(*v));
                }),
                Array::F64(values) => elements(out, values, |out, v| {
                    any_value(out, &Value::F64(*v));
                }),
                Array::String(values) => elements(out, values, |out, v: &StringValue| {
                    out.extend_from_slice(b"{\"stringValue\":");
                    string(out, v.as_str());
                    out.push(b'}');
                }),
                // A future array type: its values as text, so nothing is lost silently.
                other => elements(out, &[other.to_string()], |out, v| {
                    out.extend_from_slice(b"{\"stringValue\":");
                    string(out, v);
                    out.push(b'}');
                }),
            }
            out.extend_from_slice(b"]}}");
        }
        // A future value type: as text.
        other => {
            out.extend_from_slice(b"{\"stringValue\":");
            string(out, &other.to_string());
            out.push(b'}');
        }
    }
}

fn elements<T>(out: &mut Vec<u8>, values: &[T], mut one: impl FnMut(&mut Vec<u8>, &T)) {
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        one(out, value);
    }
}

/// A JSON number for `f`, the shortest text that reads back as the same `f64`; JSON has no
/// NaN or infinities, so those are `null` (as serde_json writes them).
fn double(out: &mut Vec<u8>, f: f64) {
    use std::io::Write as _;
    if f.is_finite() {
        // `{:?}` is the shortest round-trip form and always has a `.` or an exponent.
        let _ = write!(out, "{f:?}");
    } else {
        out.extend_from_slice(b"null");
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for byte in bytes {
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0x0f)]);
    }
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn quoted_number(out: &mut Vec<u8>, n: u64) {
    out.push(b'"');
    number(out, n);
    out.push(b'"');
}

fn signed(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    number(out, n.unsigned_abs());
}

/// `s` as a JSON string, escaped as serde_json escapes (quotes, backslashes, control
/// characters; everything else as UTF-8).
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut clean_from = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[clean_from..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0x0f)]);
                clean_from = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..i]);
        out.extend_from_slice(escape);
        clean_from = i + 1;
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::trace::{SpanKind, Status};

    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use proptest::prelude::*;

    fn context(trace: u128, span: u64, flags: u8, state: &str, remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::new(flags),
            remote,
            state.parse::<TraceState>().unwrap_or_default(),
        )
    }

    fn span(name: &str, scope: &InstrumentationScope, attributes: Vec<KeyValue>) -> SpanData {
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "rule_triggered",
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            vec![KeyValue::new("rule", "amount\"high\"\n")],
            1,
        ));
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(0xabc, 0xdef, 3, "vendor=1,other=x", true),
            vec![KeyValue::new("messaging.kafka.offset", 42_i64)],
            2,
        ));
        links.dropped_count = 5;
        SpanData {
            span_context: context(0x0102_0304, 0x0a0b, 1, "k=v", false),
            parent_span_id: SpanId::from(0x77),
            parent_span_is_remote: true,
            span_kind: SpanKind::Consumer,
            name: Cow::Owned(name.to_owned()),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_999_000_001),
            attributes,
            dropped_attributes_count: 3,
            events,
            links,
            status: Status::error("broker said \\ no"),
            instrumentation_scope: scope.clone(),
        }
    }

    /// A resource with a schema URL and attributes of two types.
    pub(crate) fn sample_resource() -> Resource {
        resource()
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "fraud-scoring"),
                KeyValue::new("host.cpus", 2_i64),
            ])
            .with_schema_url(
                Vec::<KeyValue>::new(),
                "https://opentelemetry.io/schemas/1.44.0",
            )
            .build()
    }

    /// What the serde encoding of the protobuf structs makes of the same spans.
    fn via_proto(spans: Vec<SpanData>, resource: &Resource) -> serde_json::Value {
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        };
        serde_json::to_value(&request).expect("serde")
    }

    fn direct(spans: &[SpanData], resource: &Resource) -> serde_json::Value {
        let mut out = Vec::new();
        TraceRequestEncoder::new(resource).encode(spans, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    /// Spans of two scopes with every attribute type, events, links, statuses and ids.
    pub(crate) fn sample_spans() -> Vec<SpanData> {
        let mqtrace = InstrumentationScope::builder("mqtrace")
            .with_version("0.1.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.44.0")
            .with_attributes([KeyValue::new("scope.kind", "library")])
            .build();
        let app = InstrumentationScope::builder("load-generator").build();
        let attrs = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.batch.message_count", 256_i64),
            KeyValue::new("negative", -17_i64),
            KeyValue::new("ratio", 0.25_f64),
            KeyValue::new("whole", 3.0_f64),
            KeyValue::new("tiny", 1e-300_f64),
            KeyValue::new("ok", true),
            KeyValue::new("control\u{1}chars\t", "tab\there \u{7f} é 😀"),
            KeyValue::new(
                "list",
                Value::Array(Array::String(vec!["a".into(), "b\"".into()])),
            ),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, 2.0]))),
        ];
        let mut root = span("process requests", &mqtrace, attrs.clone());
        root.parent_span_id = SpanId::INVALID;
        root.parent_span_is_remote = false;
        root.status = Status::Ok;
        root.span_context = context(5, 6, 0, "", false);
        let mut unset = span("send replies", &app, vec![]);
        unset.status = Status::Unset;
        unset.span_kind = SpanKind::Producer;
        vec![
            root,
            unset,
            span("model.execute", &mqtrace, attrs),
            span("e", &app, vec![]),
        ]
    }

    #[test]
    fn matches_the_protobuf_serde_encoding() {
        let spans = sample_spans();
        let resource = resource();
        assert_eq!(
            direct(&spans, &resource),
            via_proto(spans.clone(), &resource)
        );
        // An empty batch and the default resource too.
        assert_eq!(
            direct(&[], &Resource::builder_empty().build()),
            via_proto(vec![], &Resource::builder_empty().build())
        );
    }

    proptest! {
        #[test]
        fn any_text_is_valid_json_that_reads_back(text in any::<String>(), n in any::<i64>()) {
            let scope = InstrumentationScope::builder(text.clone()).build();
            let spans = vec![span(&text, &scope, vec![
                KeyValue::new(text.clone(), text.clone()),
                KeyValue::new("n", n),
            ])];
            let resource = resource();
            prop_assert_eq!(direct(&spans, &resource), via_proto(spans, &resource));
        }
    }
}
