//! Properties of header extraction and injection that hold for every broker's header type,
//! checked against an oracle written without mqtrace's carrier code.
//!
//! The fuzz targets (`fuzz/`, `scripts/fuzz`) and the property tests
//! (`tests/header_properties.rs`) build a client's header list (rdkafka headers, a lapin
//! `FieldTable`) from generated input, describe what it holds as a plain [`Model`], and call
//! [`check_extraction`] and [`check_merge`]:
//!
//! - the carrier reports exactly the model's headers;
//! - extraction finds a context exactly when the last `traceparent` (any case) is text, at most
//!   [`DEFAULT_MAX_VALUE_LEN`] bytes, UTF-8 and valid ([`expected_context`]), with the same
//!   trace id, span id and sampled flag; `Missing` only when no span-context header is there;
//! - the re-injected `tracestate` is exactly what the W3C rules make of the last `tracestate`
//!   ([`expected_tracestate`]): its members canonical, or none at all when one member is
//!   malformed (a key with an empty tenant or system id or several `@` included);
//! - extract → inject → extract is a fixed point;
//! - a merge keeps every foreign header (keys that are not UTF-8 included), leaves exactly the
//!   injected propagation headers, and reads back as the injected context.
//!
//! ```
//! use mqtrace_testkit::header_oracle::{Model, Pairs, check_extraction};
//!
//! let model: Model = vec![(
//!     b"TraceParent".to_vec(),
//!     Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
//! )];
//! let extracted = check_extraction(&Pairs(&model), &model);
//! assert!(extracted.remote_span_context().is_some());
//! ```

use std::sync::{Arc, OnceLock};

use mqtrace_core::carrier::{DEFAULT_MAX_VALUE_LEN, HeaderSource, InjectedHeaders};
use mqtrace_core::propagation::{ExtractOutcome, Extracted, Propagation, strict_w3c_propagator};
use mqtrace_core::trace_context::parse_traceparent;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// A header list as plain bytes: what the broker's header type must report.
pub type Model = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// mqtrace's default propagators (strict W3C Trace Context, then Baggage), pinned so that no
/// global state matters.
pub fn propagation() -> &'static Propagation {
    static PROPAGATION: OnceLock<Propagation> = OnceLock::new();
    PROPAGATION.get_or_init(|| Propagation::custom(Arc::new(strict_w3c_propagator())))
}

/// Every header `source` reports, as bytes, in its order.
pub fn visited<S: HeaderSource + ?Sized>(source: &S) -> Model {
    let mut seen = Vec::new();
    source.for_each_header(&mut |key, value| {
        seen.push((key.as_bytes().to_vec(), value.map(<[u8]>::to_vec)));
    });
    seen
}

fn is_key(key: &[u8], name: &str) -> bool {
    key.eq_ignore_ascii_case(name.as_bytes())
}

/// The span context extraction must find in `model` (the headers as the carrier reports
/// them), worked out from the W3C rules without mqtrace's carrier: the *last* `traceparent`
/// (any case) wins; its value must be text, at most [`DEFAULT_MAX_VALUE_LEN`] bytes, UTF-8,
/// and a valid traceparent.
pub fn expected_context(model: &Model) -> Option<(TraceId, SpanId, bool)> {
    let (_, value) = model
        .iter()
        .rev()
        .find(|(key, _)| is_key(key, "traceparent"))?;
    let value = value.as_deref()?;
    if value.len() > DEFAULT_MAX_VALUE_LEN {
        return None;
    }
    let parsed = parse_traceparent(std::str::from_utf8(value).ok()?)?;
    Some((parsed.trace_id, parsed.parent_id, parsed.flags.is_sampled()))
}

/// The `tracestate` re-injected after extracting from `model`, worked out from the W3C rules
/// without mqtrace's parser: `None` when no context is found, or the *last* `tracestate` (any
/// case) is not text of at most [`DEFAULT_MAX_VALUE_LEN`] UTF-8 bytes, or it must be
/// discarded: a member that is not `key=value` with a valid key and value, or more than 32
/// members. Otherwise its members, OWS trimmed, empty ones skipped and a repeated key's later
/// entries dropped, joined by `,` (`None` when that leaves nothing).
///
/// A key is 1 to 256 characters, the first a lowercase letter or a digit; it is one id or
/// `tenant@system`, each id non-empty and made of lowercase letters, digits, `_`, `-`, `*` and
/// `/`. A value is 1 to 256 printable ASCII characters other than `,` and `=`, not ending in
/// a space.
///
/// ```
/// use mqtrace_testkit::header_oracle::{Model, expected_tracestate};
///
/// let with = |tracestate: &str| -> Model {
///     vec![
///         (b"traceparent".to_vec(), Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec())),
///         (b"tracestate".to_vec(), Some(tracestate.as_bytes().to_vec())),
///     ]
/// };
/// assert_eq!(expected_tracestate(&with(" a=1 ,, t@s=2,a=3")).as_deref(), Some("a=1,t@s=2"));
/// assert_eq!(expected_tracestate(&with("foo@=1,bar=2")), None);
/// assert_eq!(expected_tracestate(&with("foo@bar@baz=1,bar=2")), None);
/// ```
pub fn expected_tracestate(model: &Model) -> Option<String> {
    expected_context(model)?;
    let (_, value) = model
        .iter()
        .rev()
        .find(|(key, _)| is_key(key, "tracestate"))?;
    let value = value.as_deref()?;
    if value.len() > DEFAULT_MAX_VALUE_LEN {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let members: Vec<&str> = text
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
        .filter(|member| !member.is_empty())
        .collect();
    if members.len() > 32 {
        return None;
    }
    let mut kept: Vec<(&str, &str)> = Vec::new();
    for member in members {
        let (key, value) = member.split_once('=')?;
        if !oracle_key(key) || !oracle_value(value) {
            return None;
        }
        if !kept.iter().any(|(seen, _)| *seen == key) {
            kept.push((key, value));
        }
    }
    let joined: Vec<String> = kept.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (!joined.is_empty()).then(|| joined.join(","))
}

fn oracle_key(key: &str) -> bool {
    let id_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-*/".contains(c);
    let ids: Vec<&str> = key.split('@').collect();
    key.len() <= 256
        && key.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && ids.len() <= 2
        && ids
            .iter()
            .all(|id| !id.is_empty() && id.chars().all(id_char))
}

fn oracle_value(value: &str) -> bool {
    let printable = |c: char| (' '..='~').contains(&c) && c != ',' && c != '=';
    (1..=256).contains(&value.len()) && value.chars().all(printable) && !value.ends_with(' ')
}

/// Extracts from `source` and checks the result against `model`, which must be exactly what
/// `source` reports (checked first). Returns the extraction.
///
/// # Panics
///
/// When a property does not hold: that is the fuzzer's finding.
pub fn check_extraction<S: HeaderSource + ?Sized>(source: &S, model: &Model) -> Extracted {
    assert_eq!(&visited(source), model, "the carrier reports other headers");
    let extracted = propagation().extract(source);
    let found = extracted.remote_span_context();
    let expected = expected_context(model);
    match (&extracted.outcome, &found, expected) {
        (ExtractOutcome::Found, Some(sc), Some((trace_id, span_id, sampled))) => {
            assert_eq!(sc.trace_id(), trace_id);
            assert_eq!(sc.span_id(), span_id);
            assert_eq!(sc.is_sampled(), sampled);
            assert!(sc.is_remote());
        }
        (ExtractOutcome::Missing, None, None) => {
            assert!(
                !model
                    .iter()
                    .any(|(k, _)| is_key(k, "traceparent") || is_key(k, "tracestate")),
                "a span-context header was present but the outcome is Missing"
            );
        }
        (ExtractOutcome::Invalid(invalid), None, None) => {
            assert!(
                ["traceparent", "tracestate", "baggage"].contains(&invalid.key.as_ref()),
                "invalid header reported under key {:?}",
                invalid.key
            );
        }
        (outcome, found, expected) => {
            panic!("outcome {outcome:?}, found {found:?}, expected {expected:?}")
        }
    }
    // Extract → inject → extract is a fixed point: what a forwarder re-sends reads back the same.
    if let Some(sc) = found {
        let reinjected = propagation().inject(&extracted.context);
        let reinjected_model: Model = reinjected
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
            .collect();
        let tracestate = reinjected
            .iter()
            .find(|(key, _)| *key == "tracestate")
            .map(|(_, value)| value.to_owned());
        assert_eq!(
            tracestate,
            expected_tracestate(model),
            "the re-injected tracestate is not what the W3C rules make of the last one"
        );
        let again = propagation().extract(&Pairs(&reinjected_model));
        let again = again
            .remote_span_context()
            .expect("a re-injected context reads back");
        assert_eq!(again.trace_id(), sc.trace_id());
        assert_eq!(again.span_id(), sc.span_id());
        assert_eq!(again.trace_flags(), sc.trace_flags());
        assert_eq!(again.trace_state().header(), sc.trace_state().header());
    }
    extracted
}

/// A plain header list as a carrier (keys that are not UTF-8 are skipped, as the broker
/// carriers do).
#[derive(Debug)]
pub struct Pairs<'m>(pub &'m Model);

impl HeaderSource for Pairs<'_> {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        for (key, value) in self.0 {
            if let Ok(key) = std::str::from_utf8(key) {
                visit(key, value.as_deref());
            }
        }
    }
}

/// A fresh sampled context to inject, its ids taken from `seed` (never zero).
pub fn fresh_context(seed: u64) -> Context {
    let span_context = SpanContext::new(
        TraceId::from(u128::from(seed) << 64 | 0x5eed),
        SpanId::from(seed | 1),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    Context::new().with_remote_span_context(span_context)
}

/// What injecting `cx` writes.
pub fn inject(cx: &Context) -> InjectedHeaders {
    propagation().inject(cx)
}

/// Checks a merge: `after` (every header of the merged list, keys as bytes) must be `before`
/// without the headers `injected` replaces (any case; keys that are not UTF-8 are never
/// replaced) followed by the injected headers, and extraction from it must find `cx`.
///
/// With `ordered` false (a `FieldTable` is a map sorted by key) the lists are compared as
/// multisets.
///
/// # Panics
///
/// When a property does not hold.
pub fn check_merge(
    before: &Model,
    injected: &InjectedHeaders,
    after: &Model,
    cx: &Context,
    ordered: bool,
) {
    let mut expected: Model = before
        .iter()
        .filter(|(key, _)| std::str::from_utf8(key).map_or(true, |key| !injected.replaces(key)))
        .cloned()
        .collect();
    expected.extend(
        injected
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))),
    );
    let mut actual = after.clone();
    if !ordered {
        expected.sort();
        actual.sort();
    }
    assert_eq!(
        actual, expected,
        "the merge lost, added or reordered headers"
    );
    let read_back = propagation()
        .extract(&Pairs(after))
        .remote_span_context()
        .expect("the merged headers carry the injected context");
    let sent = cx.span().span_context().clone();
    assert_eq!(read_back.trace_id(), sent.trace_id());
    assert_eq!(read_back.span_id(), sent.span_id());
}

/// `name` with the letters whose bit is set in `mask` upper-cased (bit `i % 16` for letter
/// `i`): the spellings of a propagation key a foreign client may send.
///
/// ```
/// assert_eq!(mqtrace_testkit::header_oracle::cased("baggage", 0b101), b"BaGgage");
/// ```
pub fn cased(name: &str, mask: u16) -> Vec<u8> {
    name.bytes()
        .enumerate()
        .map(|(i, b)| {
            if mask & (1 << (i % 16)) != 0 {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

/// A librdkafka header list holding `headers` as a C or Go producer can write them (keys of
/// any bytes, null values), and the model of what it then holds: librdkafka keeps keys
/// NUL-terminated, so a key reads up to its first NUL.
///
/// ```
/// use mqtrace_testkit::header_oracle::kafka_headers;
///
/// let (headers, stored) = kafka_headers(&vec![(b"k\0ey".to_vec(), None)]);
/// assert_eq!(stored, vec![(b"k".to_vec(), None)]);
/// # let _ = headers;
/// ```
#[allow(unsafe_code)]
pub fn kafka_headers(headers: &Model) -> (rdkafka::message::OwnedHeaders, Model) {
    use rdkafka::bindings::{rd_kafka_header_add, rd_kafka_headers_t, rd_kafka_resp_err_t};

    let list = rdkafka::message::OwnedHeaders::new_with_capacity(headers.len());
    let native = std::ptr::from_ref(list.as_borrowed())
        .cast::<rd_kafka_headers_t>()
        .cast_mut();
    let mut stored = Model::with_capacity(headers.len());
    for (key, value) in headers {
        let (value_ptr, value_len) = match value {
            Some(value) => (value.as_ptr().cast(), value.len() as isize),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `native` is the live list `list` owns (rdkafka's `as_borrowed` is a cast
        // of it), which nothing else can reach until it is returned; librdkafka copies the
        // key and value, whose pointers are valid for the lengths given.
        let error = unsafe {
            rd_kafka_header_add(
                native,
                key.as_ptr().cast(),
                key.len() as isize,
                value_ptr,
                value_len,
            )
        };
        assert_eq!(error, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
        let key = key.split(|b| *b == 0).next().unwrap_or_default();
        stored.push((key.to_vec(), value.clone()));
    }
    (list, stored)
}
