//! The fuzz targets' input types. What they check is
//! [`mqtrace_testkit::header_oracle`], shared with the property tests that run in CI.

use arbitrary::Arbitrary;

pub use mqtrace_testkit::header_oracle::*;

/// One header as the fuzzer describes it. Keys and values lean towards the propagation
/// headers (in any letter case) and towards values that almost parse, so that the fuzzer
/// spends its time past the first length check.
#[derive(Debug, Clone, Arbitrary)]
pub struct FuzzHeader {
    /// The key.
    pub key: FuzzKey,
    /// The value.
    pub value: FuzzValue,
}

/// A header key.
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzKey {
    /// `traceparent`, each bit of the mask upper-casing one letter.
    Traceparent(u16),
    /// `tracestate`, likewise.
    Tracestate(u16),
    /// `baggage`, likewise.
    Baggage(u16),
    /// Any bytes (UTF-8 or not, NULs included).
    Raw(Vec<u8>),
}

impl FuzzKey {
    /// The key's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            FuzzKey::Traceparent(mask) => cased("traceparent", *mask),
            FuzzKey::Tracestate(mask) => cased("tracestate", *mask),
            FuzzKey::Baggage(mask) => cased("baggage", *mask),
            FuzzKey::Raw(bytes) => bytes.clone(),
        }
    }
}

/// A header value.
#[derive(Debug, Clone, Arbitrary)]
pub enum FuzzValue {
    /// No value (a Kafka null, an AMQP non-text value).
    Null,
    /// Any bytes.
    Raw(Vec<u8>),
    /// `{version}-{trace id}-{span id}-{flags}{tail}`: well-formed or nearly so.
    Traceparent {
        /// The version byte.
        version: u8,
        /// The trace id (zero is invalid).
        trace_id: u128,
        /// The span id (zero is invalid).
        span_id: u64,
        /// The flags byte.
        flags: u8,
        /// Appended as is (empty = a version 00 value).
        tail: Vec<u8>,
        /// Upper-case the hex digits (invalid).
        upper: bool,
    },
    /// `key=value` members joined by `,` (a tracestate or baggage shape).
    List(Vec<(String, String)>),
    /// A huge value: `len` (up to 1 MiB) copies of `fill`.
    Huge {
        /// The length, reduced modulo 1 MiB + 1.
        len: u32,
        /// The byte repeated.
        fill: u8,
    },
}

impl FuzzValue {
    /// The value's bytes, `None` for [`FuzzValue::Null`].
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            FuzzValue::Null => None,
            FuzzValue::Raw(bytes) => Some(bytes.clone()),
            FuzzValue::Traceparent {
                version,
                trace_id,
                span_id,
                flags,
                tail,
                upper,
            } => {
                let text = format!("{version:02x}-{trace_id:032x}-{span_id:016x}-{flags:02x}");
                let mut bytes = if *upper {
                    text.to_ascii_uppercase().into_bytes()
                } else {
                    text.into_bytes()
                };
                bytes.extend_from_slice(tail);
                Some(bytes)
            }
            FuzzValue::List(members) => Some(
                members
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
                    .into_bytes(),
            ),
            FuzzValue::Huge { len, fill } => Some(vec![*fill; (*len as usize) % ((1 << 20) + 1)]),
        }
    }
}
