//! OTLP protobuf written straight from the SDK's [`SpanData`]: an `ExportTraceServiceRequest`
//! encoded in one pass per span into one reused buffer, without building
//! `opentelemetry-proto`'s message structs first (their strings and vectors, allocated and
//! freed per attribute, were two thirds of the export thread's time in the main job).
//!
//! The bytes decode to exactly the message `opentelemetry-proto`'s conversion builds (checked
//! by decoding them with prost in the tests): every field that conversion sets, proto3
//! defaults left out, `oneof` values always written.
//!
//! Lengths of nested messages come first in protobuf, so every message has a `*_len` function
//! beside the one that writes it (sizes are arithmetic, nothing is encoded twice); the
//! request, resource and scope lengths are sums of the spans' sizes.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: u64) -> usize {
    // 7 bits per byte, at least one byte.
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    // Every field number here is below 16: a one-byte tag.
    out.push((field << 3 | wire) as u8);
}

/// A tag and a length prefix for a nested message or byte string of `len` bytes.
fn len_prefix(out: &mut Vec<u8>, field: u32, len: usize) {
    varint(out, u64::from(field << 3 | LEN));
    varint(out, len as u64);
}

/// The size of a length-delimited field with a body of `len` bytes.
fn len_field(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3 | LEN)) + varint_len(len as u64) + len
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    len_prefix(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

/// A proto3 string/bytes field: left out when empty.
fn non_empty(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        bytes_field(out, field, bytes);
    }
}

fn non_empty_len(field: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        len_field(field, bytes.len())
    }
}

/// A proto3 varint field: left out when zero.
fn non_zero(out: &mut Vec<u8>, field: u32, n: u64) {
    if n != 0 {
        tag(out, field, VARINT);
        varint(out, n);
    }
}

fn non_zero_len(n: u64) -> usize {
    if n == 0 { 0 } else { 1 + varint_len(n) }
}

fn fixed64_non_zero(out: &mut Vec<u8>, field: u32, n: u64) {
    if n != 0 {
        tag(out, field, FIXED64);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn fixed64_len(n: u64) -> usize {
    if n == 0 { 0 } else { 9 }
}

/// A fixed32 field whose field number may need a two-byte tag (span `flags` is 16).
fn fixed32_non_zero(out: &mut Vec<u8>, field: u32, n: u32) {
    if n != 0 {
        varint(out, u64::from(field << 3 | FIXED32));
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn fixed32_len(field: u32, n: u32) -> usize {
    if n == 0 {
        0
    } else {
        varint_len(u64::from(field << 3 | FIXED32)) + 4
    }
}

/// A [`TraceProtobufEncoder`] behind a lock, with the buffer requests are built in: what
/// the OTLP exporters share (their `export(&self)` may run on several threads at once; the
/// lock is held only while a batch is encoded).
#[derive(Debug, Default)]
pub(crate) struct SharedTraceEncoder {
    state: std::sync::Mutex<(TraceProtobufEncoder, Vec<u8>)>,
}

impl SharedTraceEncoder {
    /// Spans from now on belong to `resource`.
    pub(crate) fn set_resource(&mut self, resource: &Resource) {
        self.state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0 = TraceProtobufEncoder::new(resource);
    }

    /// One `ExportTraceServiceRequest` holding `batch`, as an owned body.
    pub(crate) fn request(&self, batch: &[SpanData]) -> bytes::Bytes {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (encoder, buffer) = &mut *state;
        buffer.clear();
        encoder.encode(batch, buffer);
        let capacity = buffer.len();
        bytes::Bytes::from(std::mem::replace(buffer, Vec::with_capacity(capacity)))
    }
}

/// Encodes batches of spans of one resource as OTLP protobuf `ExportTraceServiceRequest`s.
#[derive(Debug, Default)]
pub(crate) struct TraceProtobufEncoder {
    /// The `Resource` message's body (its attributes), encoded once.
    resource: Vec<u8>,
    resource_schema_url: String,
    /// Per batch, reused: each span's scope index and encoded size.
    scope_of_span: Vec<usize>,
    span_len: Vec<usize>,
}

impl TraceProtobufEncoder {
    /// An encoder for spans of `resource`.
    pub(crate) fn new(resource: &Resource) -> Self {
        let mut encoder = Self::default();
        encoder.set_resource(resource);
        encoder
    }

    /// Spans from now on belong to `resource`.
    pub(crate) fn set_resource(&mut self, resource: &Resource) {
        let mut body = Vec::new();
        for (key, value) in resource.iter() {
            key_value(&mut body, 1, key.as_str(), value);
        }
        self.resource = body;
        self.resource_schema_url = resource.schema_url().unwrap_or_default().to_owned();
    }

    /// Appends one request holding `spans` (grouped by instrumentation scope, in order of
    /// first appearance, spans in their order) to `out`.
    pub(crate) fn encode(&mut self, spans: &[SpanData], out: &mut Vec<u8>) {
        let scopes = group_by_scope(spans, &mut self.scope_of_span);
        self.span_len.clear();
        self.span_len.extend(spans.iter().map(span_len));
        // ScopeSpans: scope (1), spans (2), schema_url (3).
        let scope_lens: Vec<usize> = scopes
            .iter()
            .enumerate()
            .map(|(index, scope)| {
                let spans: usize = self
                    .span_len
                    .iter()
                    .zip(&self.scope_of_span)
                    .filter(|(_, of)| **of == index)
                    .map(|(len, _)| len_field(2, *len))
                    .sum();
                len_field(1, scope_len(scope))
                    + spans
                    + non_empty_len(3, scope.schema_url().unwrap_or_default().as_bytes())
            })
            .collect();
        // ResourceSpans: resource (1), scope_spans (2), schema_url (3).
        let resource_spans_len = len_field(1, self.resource.len())
            + scope_lens
                .iter()
                .map(|len| len_field(2, *len))
                .sum::<usize>()
            + non_empty_len(3, self.resource_schema_url.as_bytes());

        out.reserve(len_field(1, resource_spans_len));
        len_prefix(out, 1, resource_spans_len);
        bytes_field(out, 1, &self.resource);
        for (index, scope) in scopes.iter().enumerate() {
            len_prefix(out, 2, scope_lens[index]);
            len_prefix(out, 1, scope_len(scope));
            scope_body(out, scope);
            for ((span, len), of) in spans.iter().zip(&self.span_len).zip(&self.scope_of_span) {
                if *of == index {
                    len_prefix(out, 2, *len);
                    span_body(out, span);
                }
            }
            non_empty(out, 3, scope.schema_url().unwrap_or_default().as_bytes());
        }
        non_empty(out, 3, self.resource_schema_url.as_bytes());
    }
}

/// The distinct instrumentation scopes of `spans` in order of first appearance, with each
/// span's index among them written to `scope_of_span`. A batch holds spans of a handful of
/// scopes, so a linear search over those seen beats hashing every span's scope.
pub(crate) fn group_by_scope<'a>(
    spans: &'a [SpanData],
    scope_of_span: &mut Vec<usize>,
) -> Vec<&'a InstrumentationScope> {
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    scope_of_span.clear();
    for span in spans {
        let scope = &span.instrumentation_scope;
        let index = match scopes.iter().position(|seen| *seen == scope) {
            Some(index) => index,
            None => {
                scopes.push(scope);
                scopes.len() - 1
            }
        };
        scope_of_span.push(index);
    }
    scopes
}

fn scope_len(scope: &InstrumentationScope) -> usize {
    non_empty_len(1, scope.name().as_bytes())
        + non_empty_len(2, scope.version().unwrap_or_default().as_bytes())
        + scope.attributes().map(key_value_field_len).sum::<usize>()
}

fn scope_body(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    non_empty(out, 1, scope.name().as_bytes());
    non_empty(out, 2, scope.version().unwrap_or_default().as_bytes());
    for kv in scope.attributes() {
        key_value(out, 3, kv.key.as_str(), &kv.value);
    }
}

/// OTLP `SpanFlags`: the trace flags, plus "remote-ness known" and "remote" bits.
pub(crate) fn span_flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let mut flags = u32::from(trace_flags) | 0x100;
    if parent_is_remote {
        flags |= 0x200;
    }
    flags
}

pub(crate) fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The W3C `tracestate` header of `context`, `None` when empty (most spans: no allocation).
fn trace_state(context: &SpanContext) -> Option<String> {
    let state = context.trace_state();
    if *state == TraceState::NONE {
        return None;
    }
    Some(state.header()).filter(|h| !h.is_empty())
}

pub(crate) fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

pub(crate) fn status_code(status: &Status) -> u64 {
    match status {
        Status::Unset => 0,
        Status::Ok => 1,
        Status::Error { .. } => 2,
    }
}

pub(crate) fn status_description(status: &Status) -> &str {
    match status {
        Status::Error { description } => description,
        _ => "",
    }
}

fn span_len(span: &SpanData) -> usize {
    let context = &span.span_context;
    let state = trace_state(context);
    let flags = span_flags(span.parent_span_is_remote, context.trace_flags().to_u8());
    let status = non_empty_len(2, status_description(&span.status).as_bytes())
        + non_zero_len(status_code(&span.status));
    len_field(1, 16)
        + len_field(2, 8)
        + state.as_ref().map_or(0, |s| len_field(3, s.len()))
        + if span.parent_span_id != SpanId::INVALID {
            len_field(4, 8)
        } else {
            0
        }
        + fixed32_len(16, flags)
        + non_empty_len(5, span.name.as_bytes())
        + non_zero_len(span_kind(&span.span_kind))
        + fixed64_len(unix_nanos(span.start_time))
        + fixed64_len(unix_nanos(span.end_time))
        + span
            .attributes
            .iter()
            .map(key_value_field_len)
            .sum::<usize>()
        + non_zero_len(u64::from(span.dropped_attributes_count))
        + span
            .events
            .iter()
            .map(|e| len_field(11, event_len(e)))
            .sum::<usize>()
        + non_zero_len(u64::from(span.events.dropped_count))
        + span
            .links
            .iter()
            .map(|l| len_field(13, link_len(l)))
            .sum::<usize>()
        + non_zero_len(u64::from(span.links.dropped_count))
        + len_field(15, status)
}

fn span_body(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes_field(out, 1, &context.trace_id().to_bytes());
    bytes_field(out, 2, &context.span_id().to_bytes());
    if let Some(state) = trace_state(context) {
        bytes_field(out, 3, state.as_bytes());
    }
    if span.parent_span_id != SpanId::INVALID {
        bytes_field(out, 4, &span.parent_span_id.to_bytes());
    }
    non_empty(out, 5, span.name.as_bytes());
    non_zero(out, 6, span_kind(&span.span_kind));
    fixed64_non_zero(out, 7, unix_nanos(span.start_time));
    fixed64_non_zero(out, 8, unix_nanos(span.end_time));
    for kv in &span.attributes {
        key_value(out, 9, kv.key.as_str(), &kv.value);
    }
    non_zero(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        len_prefix(out, 11, event_len(event));
        event_body(out, event);
    }
    non_zero(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        len_prefix(out, 13, link_len(link));
        link_body(out, link);
    }
    non_zero(out, 14, u64::from(span.links.dropped_count));
    let description = status_description(&span.status).as_bytes();
    let code = status_code(&span.status);
    len_prefix(out, 15, non_empty_len(2, description) + non_zero_len(code));
    non_empty(out, 2, description);
    non_zero(out, 3, code);
    // Field 16 last: prost writes fields in field-number order.
    fixed32_non_zero(
        out,
        16,
        span_flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
}

fn event_len(event: &Event) -> usize {
    fixed64_len(unix_nanos(event.timestamp))
        + non_empty_len(2, event.name.as_bytes())
        + event
            .attributes
            .iter()
            .map(key_value_field_len)
            .sum::<usize>()
        + non_zero_len(u64::from(event.dropped_attributes_count))
}

fn event_body(out: &mut Vec<u8>, event: &Event) {
    fixed64_non_zero(out, 1, unix_nanos(event.timestamp));
    non_empty(out, 2, event.name.as_bytes());
    for kv in &event.attributes {
        key_value(out, 3, kv.key.as_str(), &kv.value);
    }
    non_zero(out, 4, u64::from(event.dropped_attributes_count));
}

fn link_len(link: &Link) -> usize {
    let context = &link.span_context;
    len_field(1, 16)
        + len_field(2, 8)
        + trace_state(context).map_or(0, |s| len_field(3, s.len()))
        + link
            .attributes
            .iter()
            .map(key_value_field_len)
            .sum::<usize>()
        + non_zero_len(u64::from(link.dropped_attributes_count))
        + fixed32_len(
            6,
            span_flags(context.is_remote(), context.trace_flags().to_u8()),
        )
}

fn link_body(out: &mut Vec<u8>, link: &Link) {
    let context = &link.span_context;
    bytes_field(out, 1, &context.trace_id().to_bytes());
    bytes_field(out, 2, &context.span_id().to_bytes());
    if let Some(state) = trace_state(context) {
        bytes_field(out, 3, state.as_bytes());
    }
    for kv in &link.attributes {
        key_value(out, 4, kv.key.as_str(), &kv.value);
    }
    non_zero(out, 5, u64::from(link.dropped_attributes_count));
    fixed32_non_zero(
        out,
        6,
        span_flags(context.is_remote(), context.trace_flags().to_u8()),
    );
}

/// The size of an attribute written as field `field` of its parent (field numbers here all
/// have one-byte tags, so the field number does not change the size).
fn key_value_field_len(kv: &KeyValue) -> usize {
    len_field(1, key_value_len(kv.key.as_str(), &kv.value))
}

fn key_value_len(key: &str, value: &Value) -> usize {
    non_empty_len(1, key.as_bytes()) + len_field(2, any_value_len(value))
}

/// A `KeyValue` as field `field` of its parent.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    len_prefix(out, field, key_value_len(key, value));
    non_empty(out, 1, key.as_bytes());
    len_prefix(out, 2, any_value_len(value));
    any_value(out, value);
}

/// A value type this encoder does not know, as text (so nothing is lost silently).
fn as_text(value: &Value) -> String {
    value.to_string()
}

fn any_value_len(value: &Value) -> usize {
    match value {
        Value::String(s) => len_field(1, s.as_str().len()),
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::Array(array) => len_field(5, array_len(array)),
        other => len_field(1, as_text(other).len()),
    }
}

fn array_len(array: &Array) -> usize {
    match array {
        Array::Bool(values) => values.len() * len_field(1, 2),
        Array::I64(values) => values
            .iter()
            .map(|v| len_field(1, 1 + varint_len(*v as u64)))
            .sum(),
        Array::F64(values) => values.len() * len_field(1, 9),
        Array::String(values) => values
            .iter()
            .map(|v| len_field(1, len_field(1, v.as_str().len())))
            .sum(),
        other => len_field(1, len_field(1, other.to_string().len())),
    }
}

/// An `AnyValue` body: its `oneof` field, written even when it holds the default.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => bytes_field(out, 1, s.as_str().as_bytes()),
        Value::Bool(b) => {
            tag(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        Value::I64(i) => {
            tag(out, 3, VARINT);
            varint(out, *i as u64);
        }
        Value::F64(f) => {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Array(array) => {
            len_prefix(out, 5, array_len(array));
            match array {
                Array::Bool(values) => {
                    for v in values {
                        len_prefix(out, 1, 2);
                        any_value(out, &Value::Bool(*v));
                    }
                }
                Array::I64(values) => {
                    for v in values {
                        len_prefix(out, 1, 1 + varint_len(*v as u64));
                        any_value(out, &Value::I64(*v));
                    }
                }
                Array::F64(values) => {
                    for v in values {
                        len_prefix(out, 1, 9);
                        any_value(out, &Value::F64(*v));
                    }
                }
                Array::String(values) => {
                    for v in values {
                        len_prefix(out, 1, len_field(1, v.as_str().len()));
                        bytes_field(out, 1, v.as_str().as_bytes());
                    }
                }
                other => {
                    let text = other.to_string();
                    len_prefix(out, 1, len_field(1, text.len()));
                    bytes_field(out, 1, text.as_bytes());
                }
            }
        }
        other => bytes_field(out, 1, as_text(other).as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp_json::tests::{sample_resource, sample_spans};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use proptest::prelude::*;
    use prost::Message as _;

    fn via_proto(spans: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    fn direct(spans: &[SpanData], resource: &Resource) -> ExportTraceServiceRequest {
        let mut out = Vec::new();
        TraceProtobufEncoder::new(resource).encode(spans, &mut out);
        ExportTraceServiceRequest::decode(out.as_slice()).expect("valid protobuf")
    }

    #[test]
    fn decodes_to_the_message_the_sdk_conversion_builds() {
        let spans = sample_spans();
        let resource = sample_resource();
        assert_eq!(
            direct(&spans, &resource),
            via_proto(spans.clone(), &resource)
        );
        let empty = Resource::builder_empty().build();
        assert_eq!(direct(&[], &empty), via_proto(vec![], &empty));
    }

    #[test]
    fn the_same_bytes_as_prost() {
        // Field order and every length prefix as prost writes them: byte for byte.
        let spans = sample_spans();
        let resource = sample_resource();
        let mut out = Vec::new();
        TraceProtobufEncoder::new(&resource).encode(&spans, &mut out);
        assert_eq!(out, via_proto(spans, &resource).encode_to_vec());
    }

    #[test]
    fn varint_lengths() {
        for n in [
            0_u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, n);
            assert_eq!(out.len(), varint_len(n), "{n}");
        }
    }

    proptest! {
        #[test]
        fn any_text_and_numbers_round_trip(text in any::<String>(), n in any::<i64>(), f in any::<f64>()) {
            let scope = InstrumentationScope::builder(text.clone()).with_version(text.clone()).build();
            let mut span = sample_spans().remove(0);
            span.instrumentation_scope = scope;
            span.name = text.clone().into();
            span.attributes = vec![
                KeyValue::new(text.clone(), text.clone()),
                KeyValue::new("n", n),
                KeyValue::new("f", f),
                KeyValue::new("a", Value::Array(Array::I64(vec![n, 0, -1]))),
            ];
            let resource = sample_resource();
            let decoded = direct(std::slice::from_ref(&span), &resource);
            let expected = via_proto(vec![span], &resource);
            // NaN != NaN: compare the encodings of both sides instead.
            prop_assert_eq!(decoded.encode_to_vec(), expected.encode_to_vec());
        }
    }
}
