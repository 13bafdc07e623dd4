//! W3C Trace Context cases end to end through Kafka: each case's headers are produced as raw
//! bytes by a client that knows nothing of tracing, travel through a real Kafka-protocol
//! broker, and are extracted by `TracedConsumer`; the context is then re-injected and must
//! come out canonical. The full W3C suite runs against the propagator in
//! `crates/mqtrace-core/tests/`; these cases prove the transport changes nothing.

mod common;

use common::w3c_cases::CASES;
use common::{Harness, recv};
use mqtrace::core::propagation::ExtractOutcome;
use mqtrace::kafka::rdkafka::message::{Header, Message, OwnedHeaders};

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
