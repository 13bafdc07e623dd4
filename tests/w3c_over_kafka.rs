//! W3C Trace Context cases end to end through Kafka: each case's headers are produced as raw
//! bytes by a client that knows nothing of tracing, travel through a real Kafka-protocol
//! broker, and are extracted by `TracedConsumer`; the context is then re-injected and must
//! come out canonical. The full W3C suite runs against the propagator in
//! `crates/mqtrace-core/tests/`; these cases prove the transport changes nothing.

mod common;

use common::{Harness, recv};
use mqtrace::core::propagation::ExtractOutcome;
use mqtrace::kafka::rdkafka::message::{Header, Message, OwnedHeaders};

struct Case {
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The re-injected `traceparent`, or `None` for a new trace.
    traceparent: Option<&'static str>,
    /// The re-injected `tracestate` (`None`: no tracestate header).
    tracestate: Option<&'static str>,
}

const TP: &str = "00-12345678901234567890123456789012-1234567890123456-01";

const CASES: &[Case] = &[
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

#[tokio::test]
async fn w3c_cases_survive_kafka_transport() {
    let h = Harness::new("w3c").await;
    for case in CASES {
        let headers = case
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
        h.send_raw(headers).await;
    }
    let consumer = h.consumer();
    let mut failures = Vec::new();
    for case in CASES {
        let message = recv(&consumer).await;
        assert_eq!(
            message.payload(),
            Some(&b"raw"[..]),
            "{}: message delivered",
            case.name
        );
        let injected = consumer
            .instrumentation()
            .propagation()
            .inject(message.context());
        let get = |key: &str| {
            injected
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_owned())
        };
        let traceparent = get("traceparent");
        let tracestate = get("tracestate");
        if traceparent.as_deref() != case.traceparent || tracestate.as_deref() != case.tracestate {
            failures.push(format!(
                "{}: expected traceparent {:?} tracestate {:?}, got {traceparent:?} {tracestate:?}",
                case.name, case.traceparent, case.tracestate
            ));
        }
        let found = message.extracted().outcome == ExtractOutcome::Found;
        if found != case.traceparent.is_some() {
            failures.push(format!(
                "{}: outcome {:?}",
                case.name,
                message.extracted().outcome
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}",
        failures.join("\n")
    );
}
