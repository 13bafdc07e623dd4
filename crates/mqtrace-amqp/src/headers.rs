//! AMQP headers (`FieldTable`) as mqtrace carriers.
//!
//! AMQP clients write string headers differently: lapin and most clients use LongString,
//! some ByteArray, a few ShortString. [`AmqpHeaders`] reads all three as bytes; any other
//! type (an integer, a table) is reported as non-text and ignored. (RabbitMQ itself cannot
//! parse ShortString table values and closes the connection of a client that publishes
//! one, so through RabbitMQ only LongString and ByteArray arrive; other brokers differ.) [`merge_injected`]
//! writes injected context as LongString values, replacing `traceparent`/`tracestate`/
//! `baggage` in any case and keeping every other header.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use mqtrace_core::carrier::{HeaderSource, InjectedHeaders};

/// A `FieldTable`, readable by mqtrace's extractor.
///
/// # Example
///
/// ```
/// use lapin::types::{AMQPValue, FieldTable, ShortString};
/// use mqtrace_amqp::headers::AmqpHeaders;
/// use mqtrace_core::propagation::{ExtractOutcome, Propagation};
///
/// let mut table = FieldTable::default();
/// table.insert(
///     "traceparent".into(),
///     AMQPValue::ShortString(ShortString::from("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
/// );
/// let extracted = Propagation::global().extract(&AmqpHeaders(&table));
/// assert_eq!(extracted.outcome, ExtractOutcome::Found);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AmqpHeaders<'h>(pub &'h FieldTable);

/// The bytes of a string-like AMQP value, `None` for other types.
pub fn value_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

impl HeaderSource for AmqpHeaders<'_> {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        for (key, value) in self.0 {
            visit(key.as_str(), value_bytes(value));
        }
    }
}

/// Merges `injected` into `existing` headers: headers the propagator owns are replaced (any
/// case), others kept; injected values are written as LongString. Returns `existing`
/// unchanged when nothing was injected. An injected key longer than an AMQP field name can
/// be (255 bytes; only a custom propagator could write one) is left out.
///
/// # Example
///
/// ```
/// use lapin::types::{AMQPValue, FieldTable, LongString};
/// use mqtrace_amqp::headers::merge_injected;
/// use mqtrace_core::carrier::InjectedHeaders;
/// use opentelemetry::propagation::Injector;
///
/// let mut existing = FieldTable::default();
/// existing.insert("TraceParent".into(), AMQPValue::LongString(LongString::from("stale")));
/// existing.insert("app".into(), AMQPValue::LongInt(7));
/// let mut injected = InjectedHeaders::default();
/// injected.add_field("traceparent");
/// injected.set("traceparent", "fresh".into());
///
/// let merged = merge_injected(Some(existing), &injected).unwrap();
/// let keys: Vec<_> = merged.inner().keys().map(|k| k.as_str()).collect();
/// assert_eq!(keys, ["app", "traceparent"]);
/// ```
pub fn merge_injected(
    existing: Option<FieldTable>,
    injected: &InjectedHeaders,
) -> Option<FieldTable> {
    if injected.is_empty() {
        return existing;
    }
    let mut table = match existing {
        // `FieldTable` has no remove: only a table holding a stale propagation header is
        // rebuilt; the common one (none there) takes the injected headers in place.
        Some(table)
            if table
                .inner()
                .keys()
                .any(|key| injected.replaces(key.as_str())) =>
        {
            FieldTable::from(
                table
                    .inner()
                    .iter()
                    .filter(|(key, _)| !injected.replaces(key.as_str()))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect::<BTreeMap<ShortString, AMQPValue>>(),
            )
        }
        Some(table) => table,
        None => FieldTable::default(),
    };
    for (key, value) in injected.iter() {
        // AMQP field names are short strings (at most 255 bytes). The W3C and Baggage
        // propagators' keys are short; a custom propagator's longer key cannot be an AMQP
        // header at all, so it is left out rather than panicking in `ShortString::from`.
        if let Ok(key) = ShortString::try_new(key) {
            table.insert(key, AMQPValue::LongString(LongString::from(value)));
        }
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtrace_core::carrier::{HeaderExtractor, HeaderPolicy};
    use opentelemetry::propagation::{Extractor, Injector};
    use proptest::prelude::*;

    fn injected(value: &str) -> InjectedHeaders {
        let mut inj = InjectedHeaders::default();
        for field in ["traceparent", "tracestate", "baggage"] {
            inj.add_field(field);
        }
        inj.set("traceparent", value.to_owned());
        inj
    }

    #[test]
    fn reads_long_short_and_byte_array_values() {
        for value in [
            AMQPValue::LongString(LongString::from("v")),
            AMQPValue::ShortString(ShortString::from("v")),
            AMQPValue::ByteArray(b"v".to_vec().into()),
        ] {
            let mut table = FieldTable::default();
            table.insert("traceparent".into(), value);
            let carrier = AmqpHeaders(&table);
            let extractor = HeaderExtractor::new(&carrier, HeaderPolicy::default());
            assert_eq!(extractor.get("traceparent"), Some("v"));
        }
    }

    #[test]
    fn other_types_are_not_text() {
        let mut table = FieldTable::default();
        table.insert("traceparent".into(), AMQPValue::LongLongInt(1));
        let carrier = AmqpHeaders(&table);
        let extractor = HeaderExtractor::new(&carrier, HeaderPolicy::default());
        assert_eq!(extractor.get("traceparent"), None);
        assert!(extractor.invalid().is_some());
    }

    #[test]
    fn an_injected_key_too_long_for_amqp_is_left_out_without_panicking() {
        // Found by the amqp_headers fuzz target's harness: `ShortString::from` panics past
        // 255 bytes, and a custom propagator may write any key.
        let long_key = "k".repeat(256);
        let mut inj = injected("fresh");
        inj.set(&long_key, "value".to_owned());
        let merged = merge_injected(None, &inj).expect("headers");
        let keys: Vec<_> = merged
            .inner()
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect();
        assert_eq!(keys, ["traceparent"]);
    }

    fn arb_value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..100)
                .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            "[ -~]{0,40}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
            proptest::collection::vec(any::<u8>(), 0..100)
                .prop_map(|b| AMQPValue::ByteArray(b.into())),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<bool>().prop_map(AMQPValue::Boolean),
        ]
    }

    fn arb_table() -> impl Strategy<Value = FieldTable> {
        let key = prop_oneof![
            Just("traceparent".to_owned()),
            Just("TraceParent".to_owned()),
            Just("tracestate".to_owned()),
            Just("baggage".to_owned()),
            "[a-zA-Z-]{1,12}",
        ];
        proptest::collection::btree_map(key, arb_value(), 0..10).prop_map(|map| {
            FieldTable::from(
                map.into_iter()
                    .map(|(k, v)| (ShortString::from(k), v))
                    .collect::<BTreeMap<_, _>>(),
            )
        })
    }

    proptest! {
        #[test]
        fn any_table_extracts_without_panic(table in arb_table()) {
            let _ = mqtrace_core::propagation::Propagation::global().extract(&AmqpHeaders(&table));
        }

        #[test]
        fn merge_leaves_exactly_one_traceparent_and_keeps_app_headers(table in arb_table()) {
            let merged = merge_injected(Some(table.clone()), &injected("fresh")).expect("headers");
            let traceparents: Vec<_> = merged
                .inner()
                .iter()
                .filter(|(k, _)| k.as_str().eq_ignore_ascii_case("traceparent"))
                .map(|(_, v)| value_bytes(v).map(<[u8]>::to_vec))
                .collect();
            prop_assert_eq!(traceparents, vec![Some(b"fresh".to_vec())]);
            let is_app = |k: &str| !["traceparent", "tracestate", "baggage"].iter().any(|f| f.eq_ignore_ascii_case(k));
            let app_in: Vec<_> = table.inner().iter().filter(|(k, _)| is_app(k.as_str())).collect();
            let app_out: Vec<_> = merged.inner().iter().filter(|(k, _)| is_app(k.as_str())).collect();
            prop_assert_eq!(app_in, app_out);
        }
    }
}
