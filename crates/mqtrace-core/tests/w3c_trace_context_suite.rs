//! The W3C Trace Context test suite, ported case by case to mqtrace's strict propagator.
//!
//! # Source
//!
//! Every `test_*` method of `test/test.py` in <https://github.com/w3c/trace-context> (commit
//! `acab820`, classes `TraceContextTest`, `AdvancedTest` and `TraceContext2Test`, strict level
//! 2, spec level 2) that has a meaning at the propagator level is ported here; a method that
//! sends several requests becomes several cases. A case is named after its W3C method (without
//! `test_`), then `__` and the sub-case, e.g. `traceparent_version_0xcc__with_future_fields`
//! is the second request of `test_traceparent_version_0xcc`. Cases named `sdk_deviation__*` do
//! not come from the suite: they pin the places where OpenTelemetry's SDK
//! `TraceContextPropagator` is lenient or drops information and
//! [`W3cTraceContextPropagator`] must not, and most of them also check that the SDK really
//! differs there.
//!
//! Left out: `AdvancedTest.test_multiple_requests_without_traceparent`, which only checks
//! that the service generates a distinct span id per outgoing call (span creation, not
//! propagation). In the other methods the suite's checks that the outgoing `parent-id`
//! differs from the incoming one are about the service's new span, so they are not ported: here
//! the extracted context is injected again unchanged, and its `parent-id` must be the incoming
//! one.
//!
//! # What a case checks
//!
//! The case's headers, in order, are read through the real message carrier
//! ([`HeaderExtractor`] over a [`HeaderSource`]: names compare case-insensitively, `get` answers
//! the last occurrence, `get_all` all of them), extracted, and the extracted context is
//! injected into [`InjectedHeaders`]. Then:
//!
//! - `Continues { trace_id, parent_id, flags }`: a valid remote context with exactly those
//!   values was extracted, and exactly `00-{trace_id}-{parent_id}-{flags}` was injected (a
//!   future version comes out as `00`).
//! - `NewTrace`: no valid context was extracted and nothing at all was injected. Where the
//!   suite only asserts that the outgoing trace id differs from an invalid incoming one, this
//!   is the precise form of it.
//! - `Tracestate::Kept(s)`: exactly `s` was injected as `tracestate` (canonical `k=v,k2=v2`,
//!   OWS removed, empty members dropped). `Tracestate::Discarded`: a `tracestate` (or a
//!   misnamed one) was sent and none was injected. `Tracestate::None`: no `tracestate` was
//!   sent and none was injected.
//!
//! # Several occurrences of a header: the one translation
//!
//! The suite is written for HTTP, where two `traceparent` headers void the request and several
//! `tracestate` headers are combined in order. Message headers are appended to by forwarders,
//! so mqtrace's carriers hand the propagator the **last** occurrence, and with the default
//! [`DuplicateHeaders::Carrier`] policy the last `traceparent` is continued and only the last
//! `tracestate` counts. Every multi-header case is therefore ported twice: `__carrier_last_wins`
//! (translated expectation, commented) and `__http_*`, run with
//! [`DuplicateHeaders::Http`] and expecting exactly what the suite expects. The table test
//! checks that no multi-header case lacks its HTTP sibling.
//!
//! # Reading a failure
//!
//! Each case is its own `#[test]` named after the case, so `cargo test` lists the failing
//! cases by name; `all_cases_in_one_table` runs the whole table once more and panics with one
//! block per failing case: its name, policy, headers, the expected and the observed
//! `Observed { remote, traceparent, tracestate }`, and, for an `sdk_deviation__*` case, whether
//! the SDK unexpectedly agreed.

use mqtrace_core::carrier::{HeaderExtractor, HeaderPolicy, HeaderSource, InjectedHeaders};
use mqtrace_core::trace_context::{DuplicateHeaders, W3cTraceContextPropagator};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use Expect::{Continues, NewTrace};

/// The suite's trace id and parent id.
const TID: &str = "12345678901234567890123456789012";
const PID: &str = "1234567890123456";
/// The suite's valid `traceparent`s, sampled and not sampled.
const TP_01: &str = "00-12345678901234567890123456789012-1234567890123456-01";
const TP_00: &str = "00-12345678901234567890123456789012-1234567890123456-00";
/// A second, different valid `traceparent` (the first header of `test_traceparent_duplicated`).
const TP_OTHER: &str = "00-12345678901234567890123456789011-1234567890123456-01";

/// An ordered list of (name, value) message headers.
struct Headers<'h>(Vec<(&'h str, &'h str)>);

impl HeaderSource for Headers<'_> {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        for (name, value) in &self.0 {
            visit(name, Some(value.as_bytes()));
        }
    }
}

/// What extraction must find.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The remote context is valid with exactly these values (lowercase hex ids).
    Continues {
        trace_id: &'static str,
        parent_id: &'static str,
        flags: u8,
    },
    /// No valid remote context: the receiver starts a new trace.
    NewTrace,
}

/// What must come out as `tracestate` after extract → inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracestate {
    /// Exactly this value is injected.
    Kept(&'static str),
    /// A tracestate was sent, none is injected.
    Discarded,
    /// No tracestate was sent, none is injected.
    None,
}

/// Whether the case also checks OpenTelemetry's SDK propagator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sdk {
    NotChecked,
    /// The SDK's `TraceContextPropagator` must NOT give the expected result.
    Deviates,
}

#[derive(Debug, Clone)]
struct Case {
    duplicates: DuplicateHeaders,
    headers: Vec<(&'static str, &'static str)>,
    expect: Expect,
    tracestate: Tracestate,
    sdk: Sdk,
}

/// A case run with the default policy ([`DuplicateHeaders::Carrier`]).
fn case(headers: &[(&'static str, &'static str)], expect: Expect, tracestate: Tracestate) -> Case {
    Case {
        duplicates: DuplicateHeaders::Carrier,
        headers: headers.to_vec(),
        expect,
        tracestate,
        sdk: Sdk::NotChecked,
    }
}

impl Case {
    /// Run with [`DuplicateHeaders::Http`].
    fn http(mut self) -> Self {
        self.duplicates = DuplicateHeaders::Http;
        self
    }

    /// Also check that the SDK's propagator does not give the expected result.
    fn sdk_deviates(mut self) -> Self {
        self.sdk = Sdk::Deviates;
        self
    }

    fn expected(&self) -> Observed {
        let (remote, traceparent) = match self.expect {
            Continues {
                trace_id,
                parent_id,
                flags,
            } => (
                Some(Remote {
                    trace_id: trace_id.to_owned(),
                    parent_id: parent_id.to_owned(),
                    flags: format!("{flags:02x}"),
                    is_remote: true,
                }),
                Some(format!("00-{trace_id}-{parent_id}-{flags:02x}")),
            ),
            NewTrace => (None, None),
        };
        let tracestate = match self.tracestate {
            Tracestate::Kept(value) => Some(value.to_owned()),
            Tracestate::Discarded | Tracestate::None => None,
        };
        Observed {
            remote,
            traceparent,
            tracestate,
        }
    }

    fn has_duplicate_trace_headers(&self) -> bool {
        ["traceparent", "tracestate"].iter().any(|field| {
            self.headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(field))
                .count()
                > 1
        })
    }
}

/// The extracted remote span context.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Remote {
    trace_id: String,
    parent_id: String,
    flags: String,
    is_remote: bool,
}

/// What one propagator made of a case's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    /// The valid context extracted, if any.
    remote: Option<Remote>,
    /// The injected `traceparent`, if any.
    traceparent: Option<String>,
    /// The injected `tracestate`, if any.
    tracestate: Option<String>,
}

/// Extracts from `headers` through mqtrace's message carrier, then injects what was extracted.
fn run(propagator: &dyn TextMapPropagator, headers: &[(&str, &str)]) -> Observed {
    let source = Headers(headers.to_vec());
    let extractor = HeaderExtractor::new(&source, HeaderPolicy::default());
    let cx = propagator.extract(&extractor);
    let span = cx.span();
    let sc = span.span_context();
    let remote = sc.is_valid().then(|| Remote {
        trace_id: sc.trace_id().to_string(),
        parent_id: sc.span_id().to_string(),
        flags: format!("{:02x}", sc.trace_flags().to_u8()),
        is_remote: sc.is_remote(),
    });
    let mut injected = InjectedHeaders::default();
    propagator.inject_context(&cx, &mut injected);
    let get = |field: &str| {
        injected
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(field))
            .map(|(_, value)| value.to_owned())
    };
    Observed {
        remote,
        traceparent: get("traceparent"),
        tracestate: get("tracestate"),
    }
}

/// Runs one case; `Err` describes everything that went wrong, naming the case.
fn check(name: &str, case: &Case) -> Result<(), String> {
    let mut problems = Vec::new();
    let has_tracestate = case
        .headers
        .iter()
        .any(|(header, _)| header.eq_ignore_ascii_case("tracestate"));
    if case.tracestate == Tracestate::None && has_tracestate {
        problems.push("  table error: Tracestate::None but a tracestate header is sent".to_owned());
    }
    if matches!(case.tracestate, Tracestate::Kept(_)) && matches!(case.expect, NewTrace) {
        problems.push("  table error: Tracestate::Kept needs Continues".to_owned());
    }

    let expected = case.expected();
    let propagator = W3cTraceContextPropagator::new().with_duplicate_headers(case.duplicates);
    let got = run(&propagator, &case.headers);
    if got != expected {
        problems.push(format!("  expected: {expected:?}\n  got:      {got:?}"));
    }
    if case.sdk == Sdk::Deviates {
        let sdk = run(&TraceContextPropagator::new(), &case.headers);
        if sdk == expected {
            problems.push(format!(
                "  the SDK's TraceContextPropagator was expected to deviate here, but it also \
                 gives {sdk:?}"
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "case `{name}` ({:?} policy), headers {:?}:\n{}",
        case.duplicates,
        case.headers,
        problems.join("\n")
    ))
}

/// A `&'static str` for values built at run time (long keys), as the suite builds them.
fn leak(value: String) -> &'static str {
    Box::leak(value.into_boxed_str())
}

fn repeat(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

/// `key=1` for a key built at run time.
fn member(key: String) -> &'static str {
    leak(format!("{key}=1"))
}

/// `foo=1,{key}=1`: the combined value of the suite's `test_tracestate_key_length_limit`.
fn foo_then(key: String) -> &'static str {
    leak(format!("foo=1,{key}=1"))
}

/// `barNN=NN` for NN in `range`, comma-separated, as in `test_tracestate_member_count_limit`.
fn bars(range: std::ops::RangeInclusive<u32>) -> &'static str {
    leak(
        range
            .map(|i| format!("bar{i:02}={i:02}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// `test_tracestate_all_allowed_characters`'s keys and value, built as the suite builds them.
fn all_allowed_key_without_vendor() -> String {
    let lcalpha: String = (b'a'..=b'z').map(char::from).collect();
    format!("{lcalpha}0123456789_-*/")
}

fn all_allowed_key_with_vendor() -> String {
    format!("{}@a-z0-9_-*/", all_allowed_key_without_vendor())
}

fn all_allowed_value() -> String {
    (0x20_u8..=0x2b)
        .chain(0x2d..=0x3c)
        .chain(0x3e..=0x7e)
        .map(char::from)
        .collect()
}

fn all_allowed(key: String) -> &'static str {
    leak(format!("{key}={}", all_allowed_value()))
}

/// Declares the table: one `#[test]` per case, and `table()` listing them all.
macro_rules! w3c_cases {
    ($($name:ident => $case:expr;)*) => {
        $(
            #[test]
            #[allow(non_snake_case)] // `__` separates the W3C test name from the sub-case
            fn $name() {
                if let Err(failure) = check(stringify!($name), &$case) {
                    panic!("{failure}");
                }
            }
        )*

        /// Every case, by name, in table order.
        fn table() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), $case)),*]
        }
    };
}

// The suite's header values are long: they are kept on one line each, as in the suite.
#[rustfmt::skip]
w3c_cases! {
    // ---------------------------------------------------------------------------------------
    // TraceContextTest
    // ---------------------------------------------------------------------------------------

    // No headers: nothing to continue (the suite only checks that the service starts a trace).
    both_traceparent_and_tracestate_missing => case(
        &[],
        NewTrace, Tracestate::None);

    traceparent_included_tracestate_missing => case(
        &[("traceparent", TP_01)],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);

    // TRANSLATION: in HTTP two traceparent headers void the request (the suite expects a new
    // trace id); a message carrier hands over the last occurrence, so its trace continues.
    traceparent_duplicated__carrier_last_wins => case(
        &[("traceparent", TP_OTHER), ("traceparent", TP_01)],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_duplicated__http_new_trace => case(
        &[("traceparent", TP_OTHER), ("traceparent", TP_01)],
        NewTrace, Tracestate::None).http();

    traceparent_header_name__trace_hyphen_parent => case(
        &[("trace-parent", TP_01)],
        NewTrace, Tracestate::None);
    traceparent_header_name__trace_dot_parent => case(
        &[("trace.parent", TP_01)],
        NewTrace, Tracestate::None);

    traceparent_header_name_valid_casing__pascal_case => case(
        &[("TraceParent", TP_01)],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_header_name_valid_casing__mixed_case => case(
        &[("TrAcEpArEnT", TP_01)],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_header_name_valid_casing__upper_case => case(
        &[("TRACEPARENT", TP_01)],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);

    traceparent_version_0x00__trailing_dot => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-01.")],
        NewTrace, Tracestate::None);
    traceparent_version_0x00__with_future_fields => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like")],
        NewTrace, Tracestate::None);

    traceparent_version_0xcc__exact_length => case(
        &[("traceparent", "cc-12345678901234567890123456789012-1234567890123456-01")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_version_0xcc__with_future_fields => case(
        &[("traceparent", "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_version_0xcc__future_fields_without_dash => case(
        &[("traceparent", "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like")],
        NewTrace, Tracestate::None);

    traceparent_version_0xff => case(
        &[("traceparent", "ff-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_version_illegal_characters__leading_dot => case(
        &[("traceparent", ".0-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None);
    traceparent_version_illegal_characters__trailing_dot => case(
        &[("traceparent", "0.-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_version_too_long__3_hex_digits => case(
        &[("traceparent", "000-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None);
    traceparent_version_too_long__4_hex_digits => case(
        &[("traceparent", "0000-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_version_too_short => case(
        &[("traceparent", "0-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_trace_id_all_zero => case(
        &[("traceparent", "00-00000000000000000000000000000000-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_trace_id_illegal_characters__leading_dot => case(
        &[("traceparent", "00-.2345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None);
    traceparent_trace_id_illegal_characters__trailing_dot => case(
        &[("traceparent", "00-1234567890123456789012345678901.-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_trace_id_too_long => case(
        &[("traceparent", "00-123456789012345678901234567890123-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_trace_id_too_short => case(
        &[("traceparent", "00-1234567890123456789012345678901-1234567890123456-01")],
        NewTrace, Tracestate::None);

    traceparent_parent_id_all_zero => case(
        &[("traceparent", "00-12345678901234567890123456789012-0000000000000000-01")],
        NewTrace, Tracestate::None);

    traceparent_parent_id_illegal_characters__leading_dot => case(
        &[("traceparent", "00-12345678901234567890123456789012-.234567890123456-01")],
        NewTrace, Tracestate::None);
    traceparent_parent_id_illegal_characters__trailing_dot => case(
        &[("traceparent", "00-12345678901234567890123456789012-123456789012345.-01")],
        NewTrace, Tracestate::None);

    traceparent_parent_id_too_long => case(
        &[("traceparent", "00-12345678901234567890123456789012-12345678901234567-01")],
        NewTrace, Tracestate::None);

    traceparent_parent_id_too_short => case(
        &[("traceparent", "00-12345678901234567890123456789012-123456789012345-01")],
        NewTrace, Tracestate::None);

    traceparent_trace_flags_illegal_characters__leading_dot => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-.0")],
        NewTrace, Tracestate::None);
    traceparent_trace_flags_illegal_characters__trailing_dot => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-0.")],
        NewTrace, Tracestate::None);

    traceparent_trace_flags_too_long => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-001")],
        NewTrace, Tracestate::None);

    traceparent_trace_flags_too_short => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-1")],
        NewTrace, Tracestate::None);

    traceparent_ows_handling__leading_space => case(
        &[("traceparent", " 00-12345678901234567890123456789012-1234567890123456-01")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_ows_handling__leading_tab => case(
        &[("traceparent", "\t00-12345678901234567890123456789012-1234567890123456-01")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_ows_handling__trailing_space => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-01 ")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_ows_handling__trailing_tab => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-01\t")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    traceparent_ows_handling__both_sides => case(
        &[("traceparent", "\t 00-12345678901234567890123456789012-1234567890123456-01 \t")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);

    // The suite compares the two outgoing tracestates' lengths; precisely, neither is used.
    tracestate_included_traceparent_missing__one_member => case(
        &[("tracestate", "foo=1")],
        NewTrace, Tracestate::Discarded);
    tracestate_included_traceparent_missing__two_members => case(
        &[("tracestate", "foo=1,bar=2")],
        NewTrace, Tracestate::Discarded);

    tracestate_included_traceparent_included => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1,bar=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1,bar=2"));

    tracestate_header_name__trace_hyphen_state => case(
        &[("traceparent", TP_00), ("trace-state", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_header_name__trace_dot_state => case(
        &[("traceparent", TP_00), ("trace.state", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);

    tracestate_header_name_valid_casing__pascal_case => case(
        &[("traceparent", TP_00), ("TraceState", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_header_name_valid_casing__mixed_case => case(
        &[("traceparent", TP_00), ("TrAcEsTaTe", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_header_name_valid_casing__upper_case => case(
        &[("traceparent", TP_00), ("TRACESTATE", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));

    // "expects the empty tracestate to be discarded": an empty header carries nothing and is
    // not sent on (the spec: vendors SHOULD avoid sending empty tracestate headers).
    tracestate_empty_header__single_empty_header => case(
        &[("traceparent", TP_00), ("tracestate", "")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    // TRANSLATION: the suite combines `foo=1` and `` into `foo=1,`; the carrier hands over only
    // the last, empty, one.
    tracestate_empty_header__member_then_empty__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", "")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_empty_header__member_then_empty__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", "")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1")).http();
    // TRANSLATION: the last header is `foo=1`, which is also what the suite expects.
    tracestate_empty_header__empty_then_member__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", ""), ("tracestate", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_empty_header__empty_then_member__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", ""), ("tracestate", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1")).http();

    // TRANSLATION: the suite expects the three headers combined in order; the carrier hands
    // over only the last one.
    tracestate_multiple_headers_different_keys__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"), ("tracestate", "baz=3")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("baz=3"));
    tracestate_multiple_headers_different_keys__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"), ("tracestate", "baz=3")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1,bar=2,rojo=1,congo=2,baz=3")).http();

    // The suite: "expects the tracestate to be inherited, and the duplicated keys to be either
    // kept as-is or one of them to be discarded". Discarding the whole header is neither. The
    // precise expectation chosen here: the first (left-most, i.e. most recent) occurrence is
    // kept and later ones dropped, as the suite's own parser does ("We opt for dropping it")
    // and as the spec allows ("Vendors MAY also discard duplicate keys").
    tracestate_duplicated_keys__same_value_in_one_header => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1,foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_duplicated_keys__different_values_in_one_header => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1,foo=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    // TRANSLATION: only the last header counts, so there is no duplicate key left.
    tracestate_duplicated_keys__same_value_in_two_headers__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_duplicated_keys__same_value_in_two_headers__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", "foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1")).http();
    // TRANSLATION: only the last header, `foo=2`, counts.
    tracestate_duplicated_keys__different_values_in_two_headers__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", "foo=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=2"));
    tracestate_duplicated_keys__different_values_in_two_headers__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", "foo=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1")).http();

    tracestate_all_allowed_characters__key_without_vendor => case(
        &[("traceparent", TP_00), ("tracestate", all_allowed(all_allowed_key_without_vendor()))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 },
        Tracestate::Kept(all_allowed(all_allowed_key_without_vendor())));
    tracestate_all_allowed_characters__key_with_vendor => case(
        &[("traceparent", TP_00), ("tracestate", all_allowed(all_allowed_key_with_vendor()))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 },
        Tracestate::Kept(all_allowed(all_allowed_key_with_vendor())));

    tracestate_ows_handling__spaces_then_tabs_around_commas => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1 \t , \t bar=2, \t baz=3")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1,bar=2,baz=3"));
    tracestate_ows_handling__tabs_then_spaces_around_commas => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1\t \t,\t \tbar=2,\t \tbaz=3")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1,bar=2,baz=3"));
    tracestate_ows_handling__leading_space => case(
        &[("traceparent", TP_00), ("tracestate", " foo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_ows_handling__leading_tab => case(
        &[("traceparent", TP_00), ("tracestate", "\tfoo=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_ows_handling__trailing_space => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1 ")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_ows_handling__trailing_tab => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1\t")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));
    tracestate_ows_handling__both_sides => case(
        &[("traceparent", TP_00), ("tracestate", "\t foo=1 \t")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1"));

    tracestate_key_illegal_characters__space_before_equals => case(
        &[("traceparent", TP_00), ("tracestate", "foo =1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_key_illegal_characters__uppercase => case(
        &[("traceparent", TP_00), ("tracestate", "FOO=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_key_illegal_characters__dot => case(
        &[("traceparent", TP_00), ("tracestate", "foo.bar=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);

    // A key holds at most one "@", with a tenant id before it and a system id after it: the
    // suite (`test_tracestate_key_illegal_vendor_format`: every request expects the whole
    // header discarded) and the Go, .NET and Python implementations discard these four. The
    // Level 2 ABNF (`keychar` includes "@") would let three of them through; peers do not,
    // and a forwarded copy they reject loses every vendor's entry, so mqtrace follows them.
    // The SDK 0.33.1 keeps `foo@=1`.
    tracestate_key_illegal_vendor_format__trailing_at => case(
        &[("traceparent", TP_00), ("tracestate", "foo@=1,bar=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded).sdk_deviates();
    tracestate_key_illegal_vendor_format__leading_at => case(
        &[("traceparent", TP_00), ("tracestate", "@foo=1,bar=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_key_illegal_vendor_format__double_at => case(
        &[("traceparent", TP_00), ("tracestate", "foo@@bar=1,bar=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_key_illegal_vendor_format__two_at_signs => case(
        &[("traceparent", TP_00), ("tracestate", "foo@bar@baz=1,bar=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);

    // TRANSLATION: the suite sends 32 members over four headers; only the last, 2 members,
    // counts.
    tracestate_member_count_limit__32_members__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10"), ("tracestate", "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20"), ("tracestate", "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30"), ("tracestate", "bar31=31,bar32=32")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("bar31=31,bar32=32"));
    tracestate_member_count_limit__32_members__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10"), ("tracestate", "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20"), ("tracestate", "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30"), ("tracestate", "bar31=31,bar32=32")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(bars(1..=32))).http();
    // TRANSLATION: 33 members over four headers; the last header alone has 3, so it is kept.
    tracestate_member_count_limit__33_members__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10"), ("tracestate", "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20"), ("tracestate", "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30"), ("tracestate", "bar31=31,bar32=32,bar33=33")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("bar31=31,bar32=32,bar33=33"));
    tracestate_member_count_limit__33_members__http_discarded => case(
        &[("traceparent", TP_00), ("tracestate", "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10"), ("tracestate", "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20"), ("tracestate", "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30"), ("tracestate", "bar31=31,bar32=32,bar33=33")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded).http();

    // Each sub-case sends `foo=1`, then `{key}=1` in a second header. TRANSLATION for the
    // carrier: only the second header counts, so `foo=1` is never there; the key alone decides.
    tracestate_key_length_limit__256_char_key__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('z', 256)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(member(repeat('z', 256))));
    tracestate_key_length_limit__256_char_key__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('z', 256)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(foo_then(repeat('z', 256)))).http();
    tracestate_key_length_limit__257_char_key__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('z', 257)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_key_length_limit__257_char_key__http_discarded => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('z', 257)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded).http();
    tracestate_key_length_limit__241_chars_at_14_chars__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('t', 241) + "@" + &repeat('v', 14)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(member(repeat('t', 241) + "@" + &repeat('v', 14))));
    tracestate_key_length_limit__241_chars_at_14_chars__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('t', 241) + "@" + &repeat('v', 14)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(foo_then(repeat('t', 241) + "@" + &repeat('v', 14)))).http();
    // Level 2: 242 characters before the "@" are fine, the key is 244 characters in all.
    tracestate_key_length_limit__242_chars_at_1_char__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('t', 242) + "@v"))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(member(repeat('t', 242) + "@v")));
    tracestate_key_length_limit__242_chars_at_1_char__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member(repeat('t', 242) + "@v"))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(foo_then(repeat('t', 242) + "@v"))).http();
    // Level 2: 15 characters after the "@" are fine, the key is 17 characters in all.
    tracestate_key_length_limit__1_char_at_15_chars__carrier_last_wins => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member("t@".to_owned() + &repeat('v', 15)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(member("t@".to_owned() + &repeat('v', 15))));
    tracestate_key_length_limit__1_char_at_15_chars__http_combined => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1"), ("tracestate", member("t@".to_owned() + &repeat('v', 15)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(foo_then("t@".to_owned() + &repeat('v', 15)))).http();

    tracestate_value_illegal_characters__equals_in_value => case(
        &[("traceparent", TP_00), ("tracestate", "foo=bar=baz")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    tracestate_value_illegal_characters__empty_value => case(
        &[("traceparent", TP_00), ("tracestate", "foo=,bar=3")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);

    // ---------------------------------------------------------------------------------------
    // AdvancedTest (the service's three callbacks are three injections of the same context;
    // their distinct parent ids come from the service's spans, not from the propagator)
    // ---------------------------------------------------------------------------------------

    multiple_requests_with_valid_traceparent => case(
        &[("traceparent", TP_01)],
        Continues { trace_id: TID, parent_id: PID, flags: 0x01 }, Tracestate::None);
    multiple_requests_with_illegal_traceparent => case(
        &[("traceparent", "00-00000000000000000000000000000000-1234567890123456-01")],
        NewTrace, Tracestate::None);

    // ---------------------------------------------------------------------------------------
    // TraceContext2Test (Level 2: the random flag, 0x02)
    // ---------------------------------------------------------------------------------------

    propagates_random_flag => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-02")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x02 }, Tracestate::None);
    propagates_random_flag__sampled_and_random => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-03")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x03 }, Tracestate::None);
    // Bits this version does not define are set to zero ("Vendors MUST set those to zero").
    propagates_random_flag__unknown_bits_dropped => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-ff")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x03 }, Tracestate::None);

    // ---------------------------------------------------------------------------------------
    // Where OpenTelemetry's SDK TraceContextPropagator (0.33.1) is lenient or loses data.
    // `.sdk_deviates()` also checks that the SDK does NOT give the expected result; a case
    // without it is one where the SDK 0.33.1 turned out to agree with the specification.
    // ---------------------------------------------------------------------------------------

    sdk_deviation__traceparent_trailing_dash_on_version_00 => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-01-")],
        NewTrace, Tracestate::None).sdk_deviates();
    sdk_deviation__traceparent_uppercase_version => case(
        &[("traceparent", "CC-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None).sdk_deviates();
    // SDK 0.33.1 rejects uppercase ids too.
    sdk_deviation__traceparent_uppercase_trace_id => case(
        &[("traceparent", "00-1234567890123456789012345678901A-1234567890123456-01")],
        NewTrace, Tracestate::None);
    sdk_deviation__traceparent_uppercase_parent_id => case(
        &[("traceparent", "00-12345678901234567890123456789012-123456789012345A-01")],
        NewTrace, Tracestate::None);
    sdk_deviation__traceparent_version_3_hex_digits => case(
        &[("traceparent", "000-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None).sdk_deviates();
    sdk_deviation__traceparent_version_1_hex_digit => case(
        &[("traceparent", "0-12345678901234567890123456789012-1234567890123456-01")],
        NewTrace, Tracestate::None).sdk_deviates();
    sdk_deviation__traceparent_trace_id_31_hex_digits => case(
        &[("traceparent", "00-1234567890123456789012345678901-1234567890123456-01")],
        NewTrace, Tracestate::None).sdk_deviates();
    sdk_deviation__traceparent_parent_id_15_hex_digits => case(
        &[("traceparent", "00-12345678901234567890123456789012-123456789012345-01")],
        NewTrace, Tracestate::None).sdk_deviates();
    sdk_deviation__traceparent_flags_1_hex_digit => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-1")],
        NewTrace, Tracestate::None).sdk_deviates();
    sdk_deviation__traceparent_flags_3_hex_digits => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-001")],
        NewTrace, Tracestate::None).sdk_deviates();
    sdk_deviation__random_flag_02_kept => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-02")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x02 }, Tracestate::None).sdk_deviates();
    sdk_deviation__random_flag_03_kept => case(
        &[("traceparent", "00-12345678901234567890123456789012-1234567890123456-03")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x03 }, Tracestate::None).sdk_deviates();
    // SDK 0.33.1 trims OWS around members.
    sdk_deviation__tracestate_ows_trimmed => case(
        &[("traceparent", TP_00), ("tracestate", " foo=1 \t, \tbar=2\t")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1,bar=2"));
    // SDK 0.33.1 skips empty members.
    sdk_deviation__tracestate_empty_member_skipped => case(
        &[("traceparent", TP_00), ("tracestate", "foo=1,,bar=2")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("foo=1,bar=2"));
    sdk_deviation__tracestate_33_members_discarded => case(
        &[("traceparent", TP_00), ("tracestate", bars(1..=33))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded).sdk_deviates();
    // The boundary: exactly 32 members are kept (the SDK agrees).
    sdk_deviation__tracestate_32_members_kept => case(
        &[("traceparent", TP_00), ("tracestate", bars(1..=32))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(bars(1..=32)));
    // SDK 0.33.1 has the 256-character key limit.
    sdk_deviation__tracestate_256_char_key_kept => case(
        &[("traceparent", TP_00), ("tracestate", member(repeat('k', 256)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(member(repeat('k', 256))));
    sdk_deviation__tracestate_257_char_key_discarded => case(
        &[("traceparent", TP_00), ("tracestate", member(repeat('k', 257)))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    sdk_deviation__tracestate_empty_value_discarded => case(
        &[("traceparent", TP_00), ("tracestate", "foo=,bar=3")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded).sdk_deviates();
    // Multi-tenant style keys (`tenant@system`) are ordinary Level 2 keys.
    sdk_deviation__tracestate_key_tenant_at_system_kept => case(
        &[("traceparent", TP_00), ("tracestate", "tenant@system=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("tenant@system=1"));
    sdk_deviation__tracestate_key_241_chars_before_at_kept => case(
        &[("traceparent", TP_00), ("tracestate", member(repeat('t', 241) + "@vendor"))],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept(member(repeat('t', 241) + "@vendor")));
    sdk_deviation__tracestate_key_14_chars_after_at_kept => case(
        &[("traceparent", TP_00), ("tracestate", "t@abcdefghijklmn=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("t@abcdefghijklmn=1")).sdk_deviates();
    sdk_deviation__tracestate_key_starting_with_digit_kept => case(
        &[("traceparent", TP_00), ("tracestate", "1tenant@vendor=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("1tenant@vendor=1"));
    // The next three keys were invalid under Level 1 (`simple-key` began with lcalpha; a
    // `multi-tenant-key` was `tenant-id "@" system-id`, system id lcalpha then at most 13
    // characters). Level 2 (TR/trace-context-2 #key, and the suite since
    // w3c/trace-context#584) makes them valid:
    // "A key MUST begin with a lowercase letter or a digit and contain up to 256 characters
    // including lowercase letters (a-z), digits (0-9), underscores (_), dashes (-), asterisks
    // (*), forward slashes (/), and at signs (@)."
    // The fourth, two "@", stays invalid, as `test_tracestate_key_illegal_vendor_format` holds.
    // Any key may begin with a digit, not only a tenant id (the SDK agrees).
    sdk_deviation__tracestate_key_digit_first_without_at_kept => case(
        &[("traceparent", TP_00), ("tracestate", "1vendor=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("1vendor=1"));
    // SDK 0.33.1 accepts a digit after the "@".
    sdk_deviation__tracestate_key_digit_after_at_kept => case(
        &[("traceparent", TP_00), ("tracestate", "tenant@1vendor=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("tenant@1vendor=1"));
    sdk_deviation__tracestate_key_15_chars_after_at_kept => case(
        &[("traceparent", TP_00), ("tracestate", "t@abcdefghijklmno=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Kept("t@abcdefghijklmno=1")).sdk_deviates();
    // Two "@" discard the header (the SDK agrees).
    sdk_deviation__tracestate_key_two_at_signs_discarded => case(
        &[("traceparent", TP_00), ("tracestate", "tenant@system@region=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
    // An empty system id discards the header; the SDK keeps it.
    sdk_deviation__tracestate_key_empty_system_id_discarded => case(
        &[("traceparent", TP_00), ("tracestate", "tenant@=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded).sdk_deviates();
    // Still invalid in Level 2: a key must not begin with "@" (the SDK agrees).
    sdk_deviation__tracestate_key_starting_with_at_discarded => case(
        &[("traceparent", TP_00), ("tracestate", "@vendor=1")],
        Continues { trace_id: TID, parent_id: PID, flags: 0x00 }, Tracestate::Discarded);
}

/// The whole table in one loop: panics once, listing every failing case by name.
#[test]
fn all_cases_in_one_table() {
    let table = table();
    let mut failures: Vec<String> = table
        .iter()
        .filter_map(|(name, case)| check(name, case).err())
        .collect();

    // Every multi-header case under the carrier policy has its HTTP sibling.
    for (name, case) in &table {
        let has_http_sibling = table.iter().any(|(_, other)| {
            other.duplicates == DuplicateHeaders::Http && other.headers == case.headers
        });
        if case.duplicates == DuplicateHeaders::Carrier
            && case.has_duplicate_trace_headers()
            && !has_http_sibling
        {
            failures.push(format!(
                "case `{name}`: multi-header case without a DuplicateHeaders::Http sibling"
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} W3C Trace Context cases failed:\n\n{}",
        failures.len(),
        table.len(),
        failures.join("\n\n")
    );
}
