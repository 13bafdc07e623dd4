//! Kafka headers as mqtrace carriers.
//!
//! [`KafkaHeaders`] lets the propagator read rdkafka's `BorrowedHeaders` or `OwnedHeaders`
//! without copying (Kafka header values are raw bytes; UTF-8 values are read, others
//! ignored). [`merge_injected`] writes injected context into a record's headers, replacing
//! any `traceparent`/`tracestate`/`baggage` already there and keeping every other header in
//! its order. When nothing needs replacing, the existing headers are extended in place.

use mqtrace_core::carrier::{HeaderSource, InjectedHeaders};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Any rdkafka [`Headers`] type, readable by mqtrace's extractor.
///
/// # Example
///
/// ```
/// use mqtrace_core::propagation::{ExtractOutcome, Propagation};
/// use mqtrace_kafka::headers::KafkaHeaders;
/// use rdkafka::message::{Header, OwnedHeaders};
///
/// let headers = OwnedHeaders::new().insert(Header {
///     key: "traceparent",
///     value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
/// });
/// let extracted = Propagation::global().extract(&KafkaHeaders(&headers));
/// assert_eq!(extracted.outcome, ExtractOutcome::Found);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct KafkaHeaders<'h, H: ?Sized>(pub &'h H);

impl<H: Headers + ?Sized> HeaderSource for KafkaHeaders<'_, H> {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        let headers: &'a H = self.0;
        for idx in 0..headers.count() {
            if let Some(header) = headers.try_get(idx) {
                visit(header.key, header.value);
            }
        }
    }
}

/// Merges `injected` into `existing`: headers the propagator owns are replaced (all
/// occurrences, any case), every other header is kept in order, and the injected ones are
/// appended. Returns `existing` unchanged when nothing was injected.
///
/// # Example
///
/// ```
/// use mqtrace_core::carrier::InjectedHeaders;
/// use mqtrace_kafka::headers::merge_injected;
/// use opentelemetry::propagation::Injector;
/// use rdkafka::message::{Header, Headers, OwnedHeaders};
///
/// let existing = OwnedHeaders::new()
///     .insert(Header { key: "app", value: Some("1") })
///     .insert(Header { key: "TraceParent", value: Some("stale") });
/// let mut injected = InjectedHeaders::default();
/// injected.add_field("traceparent");
/// injected.set("traceparent", "fresh".into());
///
/// let merged = merge_injected(Some(existing), &injected).unwrap();
/// let keys: Vec<_> = merged.iter().map(|h| h.key).collect();
/// assert_eq!(keys, ["app", "traceparent"]);
/// ```
pub fn merge_injected(
    existing: Option<OwnedHeaders>,
    injected: &InjectedHeaders,
) -> Option<OwnedHeaders> {
    if injected.is_empty() {
        return existing;
    }
    let extra = injected.iter().count();
    let base = match existing {
        Some(headers) if headers.iter().any(|h| injected.replaces(h.key)) => {
            let mut kept = OwnedHeaders::new_with_capacity(headers.count() + extra);
            for header in headers.iter().filter(|h| !injected.replaces(h.key)) {
                kept = kept.insert(header);
            }
            kept
        }
        Some(headers) => headers,
        None => OwnedHeaders::new_with_capacity(extra),
    };
    Some(injected.iter().fold(base, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtrace_core::carrier::{HeaderExtractor, HeaderPolicy};
    use opentelemetry::propagation::{Extractor, Injector};
    use proptest::prelude::*;

    fn injected(value: &str) -> InjectedHeaders {
        let mut inj = InjectedHeaders::default();
        for f in ["traceparent", "tracestate", "baggage"] {
            inj.add_field(f);
        }
        inj.set("traceparent", value.to_owned());
        inj
    }

    #[test]
    fn nothing_injected_passes_headers_through() {
        let h = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("keep"),
        });
        let merged = merge_injected(Some(h), &InjectedHeaders::default()).expect("headers");
        assert_eq!(merged.get(0).value, Some(&b"keep"[..]));
    }

    #[test]
    fn stale_tracestate_is_removed_with_traceparent() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "tracestate",
                value: Some("old=1"),
            })
            .insert(Header {
                key: "x",
                value: None::<&[u8]>,
            });
        let merged = merge_injected(Some(h), &injected("new")).expect("headers");
        let all: Vec<_> = merged.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(all, vec![("x", None), ("traceparent", Some(&b"new"[..]))]);
    }

    #[test]
    fn no_existing_headers() {
        let merged = merge_injected(None, &injected("v")).expect("headers");
        assert_eq!(merged.count(), 1);
    }

    fn arb_headers() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
        let key = prop_oneof![
            Just("traceparent".to_owned()),
            Just("TRACEPARENT".to_owned()),
            Just("tracestate".to_owned()),
            Just("baggage".to_owned()),
            "[a-zA-Z-]{0,12}",
        ];
        let value = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200));
        proptest::collection::vec((key, value), 0..12)
    }

    fn owned(list: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
        list.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: v.as_deref(),
            })
        })
    }

    proptest! {
        #[test]
        fn any_headers_extract_without_panic(list in arb_headers()) {
            let headers = owned(&list);
            let carrier = KafkaHeaders(&headers);
            let extractor = HeaderExtractor::new(&carrier, HeaderPolicy::default());
            let _ = extractor.get("traceparent");
            let _ = extractor.get_all("tracestate");
            let _ = extractor.keys();
            let _ = mqtrace_core::propagation::Propagation::global().extract(&KafkaHeaders(&headers));
        }

        #[test]
        fn merge_leaves_exactly_one_traceparent_and_keeps_app_headers(list in arb_headers()) {
            let merged = merge_injected(Some(owned(&list)), &injected("fresh")).expect("headers");
            let traceparents: Vec<_> = merged
                .iter()
                .filter(|h| h.key.eq_ignore_ascii_case("traceparent"))
                .map(|h| h.value)
                .collect();
            prop_assert_eq!(traceparents, vec![Some(&b"fresh"[..])]);
            let app_in: Vec<_> = list
                .iter()
                .filter(|(k, _)| !["traceparent", "tracestate", "baggage"].iter().any(|f| f.eq_ignore_ascii_case(k)))
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            let app_out: Vec<_> = merged
                .iter()
                .filter(|h| !["traceparent", "tracestate", "baggage"].iter().any(|f| f.eq_ignore_ascii_case(h.key)))
                .map(|h| (h.key, h.value))
                .collect();
            prop_assert_eq!(app_in, app_out);
        }
    }
}
