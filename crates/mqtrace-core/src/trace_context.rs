//! A strict W3C Trace Context (Level 2) propagator, written from the specification
//! (<https://www.w3.org/TR/trace-context-2/>).
//!
//! OpenTelemetry's SDK `TraceContextPropagator` is lenient where the W3C test suite is not:
//! it accepts trailing dashes, uppercase or wrong-length versions, short ids (left-padded)
//! and one- or three-digit flags; it drops the Level 2 *random* flag; and on `tracestate` it
//! keeps the first 32 of 33 members instead of discarding the header, accepts `foo=,bar=3`
//! and `foo@=1`, and rejects valid Level 2 keys (14 or more characters after `@`). The
//! W3C test suite's cases, ported in `tests/w3c_trace_context_suite.rs`, pin each of these.
//! [`W3cTraceContextPropagator`] gets each of these right:
//!
//! - `traceparent`: version `00` must be exactly 55 characters; a future version (not `ff`) is
//!   parsed by its first four fields and must continue with `-` if longer; lowercase hex only;
//!   all-zero trace or parent ids are invalid; the sampled and random flags are kept; leading
//!   and trailing OWS (spaces, tabs) is ignored. Injection always writes canonical version
//!   `00` with only the flags this version defines.
//! - `tracestate`: keys of 1–256 characters, first a lowercase letter or digit, with at most
//!   one `@` and then a non-empty tenant id before it and a non-empty system id after it
//!   (`foo@=1`, `@foo=1`, `foo@@bar=1` and `foo@bar@baz=1` discard the header, as the W3C
//!   test suite and the Go, .NET and Python implementations do), values of 1–256 allowed
//!   characters, OWS around members, empty members skipped, at most 32 members, a repeated
//!   key dropped (the first entry kept). An invalid `tracestate` is discarded while the
//!   `traceparent` is kept. Entries OpenTelemetry's `TraceState` type cannot hold (e.g. more
//!   than 13 characters after `@`) are carried in the context unchanged and re-injected as
//!   received.
//!
//! ## Several occurrences of a header
//!
//! In HTTP the specification voids a request carrying two `traceparent` headers and combines
//! several `tracestate` headers into one list. Message headers are different: their order is
//! meaningful and duplicates come from forwarders that append instead of replace, so the
//! newest value is the last one. mqtrace's message carriers therefore answer
//! [`Extractor::get`] with the **last** occurrence (as the OpenTelemetry Java agent does), and
//! this propagator, by default, trusts the carrier ([`DuplicateHeaders::Carrier`]). For HTTP
//! carriers that expose every occurrence through [`Extractor::get_all`], choose
//! [`DuplicateHeaders::Http`] to get the specification's HTTP behaviour.

use std::borrow::Cow;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";
/// The Level 2 *random* flag: the trace id's right-most 7 bytes are random.
pub const RANDOM_FLAG: TraceFlags = TraceFlags::new(0x02);
/// The flags version `00` defines: sampled and random.
const KNOWN_FLAGS: u8 = 0x03;
/// The most list members a `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// How the propagator treats several occurrences of `traceparent` or `tracestate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DuplicateHeaders {
    /// Use the value the carrier's [`Extractor::get`] returns. mqtrace's message carriers
    /// return the last occurrence. The default.
    #[default]
    Carrier,
    /// HTTP rules: two or more `traceparent` values are invalid; several `tracestate` values
    /// are combined, in order, into one list.
    Http,
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// The version byte (`00`, or a future version).
    pub version: u8,
    /// The trace id (never all zeroes).
    pub trace_id: TraceId,
    /// The parent (span) id (never all zeroes).
    pub parent_id: SpanId,
    /// The sampled and random flags; other bits are dropped.
    pub flags: TraceFlags,
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn lower_hex(bytes: &[u8]) -> Option<u128> {
    bytes.iter().try_fold(0_u128, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(digit))
    })
}

/// Parses a `traceparent` value strictly; `None` when it is invalid.
///
/// # Example
///
/// ```
/// use mqtrace_core::trace_context::parse_traceparent;
///
/// let tp = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03").unwrap();
/// assert!(tp.flags.is_sampled());
/// assert_eq!(tp.flags.to_u8() & 0x02, 0x02); // random flag kept
/// assert!(parse_traceparent("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01").is_none());
/// assert!(parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-").is_none());
/// ```
pub fn parse_traceparent(value: &str) -> Option<Traceparent> {
    let v = trim_ows(value).as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = u8::try_from(lower_hex(&v[0..2])?).ok()?;
    match version {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = lower_hex(&v[3..35])?;
    let parent_id = u64::try_from(lower_hex(&v[36..52])?).ok()?;
    let flags = u8::try_from(lower_hex(&v[53..55])?).ok()?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some(Traceparent {
        version,
        trace_id: TraceId::from(trace_id),
        parent_id: SpanId::from(parent_id),
        flags: TraceFlags::new(flags & KNOWN_FLAGS),
    })
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// Whether `key` is a valid `tracestate` key: 1 to 256 characters, the first a lowercase
/// letter or a digit, the rest lowercase letters, digits, `_`, `-`, `*`, `/` or `@`, with at
/// most one `@`, which must have a tenant id before it and a system id after it
/// (`tenant@system`). Keys with an empty tenant or system id or several `@` (`@foo`, `foo@`,
/// `foo@@bar`, `foo@bar@baz`) are invalid, as the W3C test suite
/// (`test_tracestate_key_illegal_vendor_format`) and the Go, .NET and Python implementations
/// hold. Neither side has a length limit of its own beyond the key's 256 characters.
///
/// # Example
///
/// ```
/// use mqtrace_core::trace_context::valid_tracestate_key;
///
/// assert!(valid_tracestate_key("congo"));
/// assert!(valid_tracestate_key("1tenant@vendor"));
/// assert!(!valid_tracestate_key("foo@"));
/// assert!(!valid_tracestate_key("@foo"));
/// assert!(!valid_tracestate_key("foo@@bar"));
/// assert!(!valid_tracestate_key("foo@bar@baz"));
/// ```
pub fn valid_tracestate_key(key: &str) -> bool {
    let k = key.as_bytes();
    let (Some(&first), Some(&last)) = (k.first(), k.last()) else {
        return false;
    };
    // One pass: every character allowed, at most one `@`. A leading `@` fails the first
    // character's rule (empty tenant id), a trailing one the last's (empty system id).
    let mut at_signs = 0_u8;
    k.len() <= 256
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && last != b'@'
        && k.iter().all(|&b| {
            at_signs += u8::from(b == b'@');
            is_key_char(b) || (b == b'@' && at_signs == 1)
        })
}

/// Whether `value` is a valid `tracestate` value: 1 to 256 printable ASCII characters other
/// than `,` and `=`, spaces allowed except at the end.
pub fn valid_tracestate_value(value: &str) -> bool {
    let v = value.as_bytes();
    let nblk = |b: u8| (0x21..=0x7e).contains(&b) && b != b',' && b != b'=';
    !v.is_empty()
        && v.len() <= 256
        && v.iter().all(|&b| b == b' ' || nblk(b))
        && v.last().is_some_and(|&b| nblk(b))
}

/// The `key=value` members of a `tracestate` value, OWS trimmed, empty members skipped.
fn members(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').map(trim_ows).filter(|m| !m.is_empty())
}

fn split_member(member: &str) -> Option<(&str, &str)> {
    let (key, value) = member.split_once('=')?;
    (valid_tracestate_key(key) && valid_tracestate_value(value)).then_some((key, value))
}

/// The validated members of a `tracestate`, in order, borrowed from the header: an iterator
/// of `(key, value)` that needs no allocation (at most 32 members are held inline).
#[derive(Debug, Clone)]
pub struct TracestateMembers<'a> {
    items: [(&'a str, &'a str); MAX_TRACESTATE_MEMBERS],
    len: usize,
    next: usize,
}

impl<'a> Iterator for TracestateMembers<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.items[..self.len].get(self.next).copied();
        self.next += usize::from(item.is_some());
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for TracestateMembers<'_> {}

/// Validates a `tracestate` value strictly and returns its members in order, or `None` when
/// the whole header must be discarded (a malformed member, more than 32 members). A key that
/// occurs again is dropped, keeping its first (left-most, most recent) entry, as the
/// specification allows. An empty or all-blank header gives `Some` of nothing. Allocates
/// nothing.
///
/// # Example
///
/// ```
/// use mqtrace_core::trace_context::parse_tracestate;
///
/// let members: Vec<_> = parse_tracestate(" foo=1 ,, tenant@vendor=x y ").unwrap().collect();
/// assert_eq!(members, [("foo", "1"), ("tenant@vendor", "x y")]);
/// assert!(parse_tracestate("foo=,bar=3").is_none());
/// ```
pub fn parse_tracestate(header: &str) -> Option<TracestateMembers<'_>> {
    let mut parsed = TracestateMembers {
        items: [("", ""); MAX_TRACESTATE_MEMBERS],
        len: 0,
        next: 0,
    };
    for (index, member) in members(header).enumerate() {
        let (key, value) = split_member(member)?;
        if index == MAX_TRACESTATE_MEMBERS {
            return None;
        }
        if !parsed.items[..parsed.len].iter().any(|(k, _)| *k == key) {
            parsed.items[parsed.len] = (key, value);
            parsed.len += 1;
        }
    }
    Some(parsed)
}

/// The raw `tracestate` of an extracted context, kept when OpenTelemetry's `TraceState` type
/// could not hold all of it, so that it is re-injected unchanged.
#[derive(Debug, Clone, PartialEq)]
struct CarriedTraceState {
    trace_id: TraceId,
    representable: TraceState,
    header: String,
}

fn to_trace_state<'a>(
    members: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> (TraceState, bool) {
    match TraceState::from_key_value(members.clone()) {
        Ok(state) => (state, true),
        Err(_) => {
            let kept = members.filter(|kv| TraceState::from_key_value([*kv]).is_ok());
            (TraceState::from_key_value(kept).unwrap_or_default(), false)
        }
    }
}

/// The strict W3C Trace Context Level 2 propagator (`traceparent` and `tracestate`).
///
/// # Example
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace_core::trace_context::W3cTraceContextPropagator;
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::trace::TraceContextExt;
///
/// let propagator = W3cTraceContextPropagator::new();
/// let mut headers = HashMap::new();
/// headers.insert(
///     "traceparent".to_string(),
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02".to_string(),
/// );
/// let cx = propagator.extract(&headers);
/// assert_eq!(cx.span().span_context().trace_flags().to_u8(), 0x02);
///
/// let mut out = HashMap::new();
/// propagator.inject_context(&cx, &mut out);
/// assert_eq!(out["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02");
/// ```
#[derive(Debug, Clone)]
pub struct W3cTraceContextPropagator {
    duplicates: DuplicateHeaders,
    fields: [String; 2],
}

impl Default for W3cTraceContextPropagator {
    fn default() -> Self {
        Self::new()
    }
}

impl W3cTraceContextPropagator {
    /// A propagator that trusts the carrier's choice among duplicate headers.
    pub fn new() -> Self {
        Self {
            duplicates: DuplicateHeaders::Carrier,
            fields: [TRACEPARENT.to_owned(), TRACESTATE.to_owned()],
        }
    }

    /// How several occurrences of a header are treated.
    pub fn with_duplicate_headers(mut self, duplicates: DuplicateHeaders) -> Self {
        self.duplicates = duplicates;
        self
    }

    fn traceparent<'e>(&self, extractor: &'e dyn Extractor) -> Option<&'e str> {
        match self.duplicates {
            DuplicateHeaders::Carrier => extractor.get(TRACEPARENT),
            DuplicateHeaders::Http => match extractor.get_all(TRACEPARENT)?.as_slice() {
                [only] => Some(only),
                _ => None,
            },
        }
    }

    fn tracestate<'e>(&self, extractor: &'e dyn Extractor) -> Option<Cow<'e, str>> {
        match self.duplicates {
            DuplicateHeaders::Carrier => extractor.get(TRACESTATE).map(Cow::Borrowed),
            DuplicateHeaders::Http => {
                let all = extractor.get_all(TRACESTATE)?;
                match all.as_slice() {
                    [only] => Some(Cow::Borrowed(only)),
                    _ => Some(Cow::Owned(all.join(","))),
                }
            }
        }
    }
}

/// `00-{trace id}-{span id}-{flags}`, hex-encoded by hand: `format!` through the ids'
/// `Display` impls took two thirds of the inject (a third as many instructions now).
fn traceparent(sc: &SpanContext) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn push_hex(out: &mut String, bytes: &[u8]) {
        for byte in bytes {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    let mut out = crate::carrier::header_value_buffer(55);
    out.push_str("00-");
    push_hex(&mut out, &sc.trace_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &sc.span_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &[sc.trace_flags().to_u8() & KNOWN_FLAGS]);
    out
}

impl TextMapPropagator for W3cTraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set(TRACEPARENT, traceparent(sc));
        let carried = cx
            .get::<CarriedTraceState>()
            .filter(|c| c.trace_id == sc.trace_id() && &c.representable == sc.trace_state());
        let tracestate = match carried {
            Some(carried) => carried.header.clone(),
            None => sc.trace_state().header(),
        };
        if !tracestate.is_empty() {
            injector.set(TRACESTATE, tracestate);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some(traceparent) = self.traceparent(extractor).and_then(parse_traceparent) else {
            return cx.clone();
        };
        let tracestate = self.tracestate(extractor);
        let members = tracestate.as_deref().and_then(parse_tracestate);
        let (trace_state, complete) = match members.clone() {
            Some(members) => to_trace_state(members),
            None => (TraceState::NONE, true),
        };
        // Only a tracestate the SDK type could not hold fully is kept raw as well (and only
        // then is the TraceState cloned): the common path allocates nothing extra.
        let carried = match members {
            Some(members) if !complete => Some(CarriedTraceState {
                trace_id: traceparent.trace_id,
                representable: trace_state.clone(),
                header: members
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            }),
            _ => None,
        };
        let span_context = SpanContext::new(
            traceparent.trace_id,
            traceparent.parent_id,
            traceparent.flags,
            true,
            trace_state,
        );
        let extracted = cx.with_remote_span_context(span_context);
        match carried {
            Some(carried) => extracted.with_value(carried),
            None => extracted,
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}
