//! W3C Trace Context cases run end to end through each broker's headers (the full suite
//! runs against the propagator in `crates/mqtrace-core/tests/w3c_trace_context_suite.rs`).

pub struct Case {
    pub name: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    /// The re-injected `traceparent`, or `None` for a new trace.
    pub traceparent: Option<&'static str>,
    /// The re-injected `tracestate` (`None`: no tracestate header).
    pub tracestate: Option<&'static str>,
}

pub const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";

pub const CASES: &[Case] = &[
    Case {
        name: "valid",
        headers: &[("traceparent", TP)],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "header_name_casing",
        headers: &[("TrAcEpArEnT", TP), ("TRACESTATE", "foo=1")],
        traceparent: Some(TP),
        tracestate: Some("foo=1"),
    },
    Case {
        name: "random_flag_kept",
        headers: &[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-02",
        )],
        traceparent: Some("00-12345678901234567890123456789012-1234567890123456-02"),
        tracestate: None,
    },
    Case {
        name: "unknown_flags_dropped",
        headers: &[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-ff",
        )],
        traceparent: Some("00-12345678901234567890123456789012-1234567890123456-03"),
        tracestate: None,
    },
    Case {
        name: "future_version_with_extra_fields",
        headers: &[(
            "traceparent",
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        )],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "ows_around_traceparent",
        headers: &[(
            "traceparent",
            "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
        )],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "version_ff_invalid",
        headers: &[(
            "traceparent",
            "ff-12345678901234567890123456789012-1234567890123456-01",
        )],
        traceparent: None,
        tracestate: None,
    },
    Case {
        name: "version_00_trailing_dash",
        headers: &[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-01-",
        )],
        traceparent: None,
        tracestate: None,
    },
    Case {
        name: "uppercase_trace_id",
        headers: &[(
            "traceparent",
            "00-1234567890123456789012345678901A-1234567890123456-01",
        )],
        traceparent: None,
        tracestate: None,
    },
    Case {
        name: "trace_id_31_hex",
        headers: &[(
            "traceparent",
            "00-1234567890123456789012345678901-1234567890123456-01",
        )],
        traceparent: None,
        tracestate: None,
    },
    Case {
        name: "flags_one_digit",
        headers: &[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-1",
        )],
        traceparent: None,
        tracestate: None,
    },
    Case {
        name: "all_zero_parent_id",
        headers: &[(
            "traceparent",
            "00-12345678901234567890123456789012-0000000000000000-01",
        )],
        traceparent: None,
        tracestate: None,
    },
    Case {
        name: "duplicate_traceparent_last_wins",
        headers: &[
            (
                "traceparent",
                "00-12345678901234567890123456789011-1234567890123456-01",
            ),
            ("traceparent", TP),
        ],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "tracestate_ows_and_empty_members",
        headers: &[("traceparent", TP), ("tracestate", " foo=1 ,,\tbar=2 ")],
        traceparent: Some(TP),
        tracestate: Some("foo=1,bar=2"),
    },
    Case {
        name: "tracestate_empty_value_discarded",
        headers: &[("traceparent", TP), ("tracestate", "foo=,bar=3")],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "tracestate_multi_tenant_keys",
        headers: &[
            ("traceparent", TP),
            (
                "tracestate",
                "tenant@system=1,1tenant@vendor=2,t@abcdefghijklmn=3",
            ),
        ],
        traceparent: Some(TP),
        tracestate: Some("tenant@system=1,1tenant@vendor=2,t@abcdefghijklmn=3"),
    },
    Case {
        name: "tracestate_empty_system_id_discarded",
        headers: &[("traceparent", TP), ("tracestate", "foo@=1,bar=2")],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "tracestate_empty_tenant_id_discarded",
        headers: &[("traceparent", TP), ("tracestate", "@foo=1,bar=2")],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "tracestate_double_at_discarded",
        headers: &[("traceparent", TP), ("tracestate", "foo@@bar=1,bar=2")],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "tracestate_two_at_signs_discarded",
        headers: &[("traceparent", TP), ("tracestate", "foo@bar@baz=1,bar=2")],
        traceparent: Some(TP),
        tracestate: None,
    },
    Case {
        name: "tracestate_duplicate_key_first_kept",
        headers: &[("traceparent", TP), ("tracestate", "foo=1,bar=2,foo=3")],
        traceparent: Some(TP),
        tracestate: Some("foo=1,bar=2"),
    },
    Case {
        name: "tracestate_last_header_wins",
        headers: &[
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("tracestate", "bar=2"),
        ],
        traceparent: Some(TP),
        tracestate: Some("bar=2"),
    },
    Case {
        name: "tracestate_without_traceparent",
        headers: &[("tracestate", "foo=1")],
        traceparent: None,
        tracestate: None,
    },
];
