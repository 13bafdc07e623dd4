//! Property tests of header extraction and injection on each broker's header type: the same
//! properties the fuzz targets check (`fuzz/`, `scripts/fuzz`), run by CI on every change.
//!
//! Inputs lean the way the fuzzer's do: propagation keys in any letter case, keys that are not
//! UTF-8 or hold a NUL, null and non-text values, values that almost parse as a
//! `traceparent`, list-shaped values, and now and then a value past the 8 KiB read limit.
//! [`mqtrace_testkit::header_oracle`] says what must come out.

use mqtrace::amqp::headers::AmqpHeaders;
use mqtrace::amqp::lapin::types::parsing::parse_field_table;
use mqtrace::amqp::lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use mqtrace::kafka::headers::{KafkaHeaders, raw_headers};
use mqtrace_testkit::header_oracle::{
    Model, cased, check_extraction, check_merge, fresh_context, inject, kafka_headers, visited,
};
use proptest::prelude::*;

/// A key: a propagation key with some letters upper-cased, or any bytes.
fn key() -> impl Strategy<Value = Vec<u8>> {
    let cased = |name: &'static str| any::<u16>().prop_map(move |mask| cased(name, mask));
    prop_oneof![
        3 => cased("traceparent"),
        2 => cased("tracestate"),
        1 => cased("baggage"),
        2 => proptest::collection::vec(any::<u8>(), 0..24),
        1 => "[a-z-]{1,16}".prop_map(String::into_bytes),
    ]
}

/// A value: null, any bytes, a nearly valid traceparent, a `k=v` list, or a huge value.
fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
    let traceparent = (
        prop_oneof![Just(0_u8), any::<u8>()],
        prop_oneof![Just(0_u128), any::<u128>()],
        prop_oneof![Just(0_u64), any::<u64>()],
        any::<u8>(),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => proptest::collection::vec(any::<u8>(), 0..8)
        ],
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(version, trace, span, flags, tail, upper)| {
            let text = format!("{version:02x}-{trace:032x}-{span:016x}-{flags:02x}");
            let mut bytes = if upper {
                text.to_ascii_uppercase().into_bytes()
            } else {
                text.into_bytes()
            };
            bytes.extend_from_slice(&tail);
            bytes
        });
    let list = proptest::collection::vec(("[a-z0-9@*/_-]{0,8}", "[ -~]{0,12}"), 0..6).prop_map(
        |members| {
            members
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
                .into_bytes()
        },
    );
    let huge = (8_000_usize..70_000, any::<u8>()).prop_map(|(len, fill)| vec![fill; len]);
    prop_oneof![
        1 => Just(None),
        3 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        4 => traceparent.prop_map(Some),
        2 => list.prop_map(Some),
        1 => huge.prop_map(Some),
    ]
}

/// A `tracestate` member whose key is built around `@`: tenant and system ids that may be
/// empty, and up to three `@`.
fn tracestate_member() -> impl Strategy<Value = String> {
    let id = "[a-z0-9][a-z0-9_*/-]{0,4}|";
    (
        id,
        proptest::collection::vec(("@{1,2}", id), 0..3),
        "[!-+--<>-~]{1,6}",
    )
        .prop_map(|(first, rest, value)| {
            let key: String = rest
                .into_iter()
                .fold(first, |key, (at, id)| key + &at + &id);
            format!("{key}={value}")
        })
}

fn headers() -> impl Strategy<Value = Model> {
    proptest::collection::vec((key(), value()), 0..12)
}

/// A `FieldTable` holding `generated` (later duplicates win, as in a map), and its model.
fn amqp_table(generated: &Model, encodings: &[u8]) -> (FieldTable, Model) {
    let mut table = FieldTable::default();
    let mut expected = std::collections::BTreeMap::new();
    for ((key, value), encoding) in generated.iter().zip(encodings.iter().cycle()) {
        let Ok(key) = ShortString::try_new(String::from_utf8_lossy(key)) else {
            continue;
        };
        let (value, reads_as) = match (value, encoding % 5) {
            (None, _) => (AMQPValue::Void, None),
            (Some(bytes), 0) => (
                AMQPValue::LongString(LongString::from(bytes.clone())),
                Some(bytes.clone()),
            ),
            (Some(bytes), 1) => match std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| ShortString::try_new(text).ok())
            {
                Some(text) => (AMQPValue::ShortString(text), Some(bytes.clone())),
                None => (
                    AMQPValue::ByteArray(ByteArray::from(bytes.clone())),
                    Some(bytes.clone()),
                ),
            },
            (Some(bytes), 2) => (
                AMQPValue::ByteArray(ByteArray::from(bytes.clone())),
                Some(bytes.clone()),
            ),
            (Some(_), 3) => (AMQPValue::LongLongInt(7), None),
            (Some(bytes), _) => {
                let mut inner = FieldTable::default();
                inner.insert(
                    "value".into(),
                    AMQPValue::LongString(LongString::from(bytes.clone())),
                );
                (AMQPValue::FieldTable(inner), None)
            }
        };
        expected.insert(key.as_str().as_bytes().to_vec(), reads_as);
        table.insert(key, value);
    }
    (table, expected.into_iter().collect())
}

/// `model` encoded as an AMQP field table on the wire (every value a long string, null
/// values as void), written by hand so that the parser under test is lapin's alone.
fn wire_table(model: &Model) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in model {
        let key = &key[..key.len().min(255)];
        body.push(key.len() as u8);
        body.extend_from_slice(key);
        match value {
            None => body.push(b'V'),
            Some(bytes) => {
                body.push(b'S');
                body.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                body.extend_from_slice(bytes);
            }
        }
    }
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    wire
}

/// What a parsed table must read as, from the AMQP types alone.
fn reads_as(table: &FieldTable) -> Model {
    table
        .inner()
        .iter()
        .map(|(k, v)| {
            let bytes = match v {
                AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
                AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
                AMQPValue::ByteArray(b) => Some(b.as_slice().to_vec()),
                _ => None,
            };
            (k.as_str().as_bytes().to_vec(), bytes)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn kafka_headers_extract_and_merge_as_the_oracle_says(generated in headers(), seed in any::<u64>()) {
        let (headers, model) = kafka_headers(&generated);
        let raw: Model = raw_headers(headers.as_borrowed())
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        prop_assert_eq!(&raw, &model);
        let readable: Model = model
            .iter()
            .filter(|(k, _)| std::str::from_utf8(k).is_ok())
            .cloned()
            .collect();
        check_extraction(&KafkaHeaders(&headers), &readable);

        let cx = fresh_context(seed);
        let injected = inject(&cx);
        let merged = mqtrace::kafka::headers::merge_injected(Some(headers), &injected)
            .expect("something was injected");
        let after: Model = raw_headers(merged.as_borrowed())
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        check_merge(&model, &injected, &after, &cx, true);
    }

    #[test]
    fn tracestate_is_kept_or_discarded_as_the_oracle_says(
        members in proptest::collection::vec(tracestate_member(), 0..6),
        seed in any::<u64>(),
        encodings in proptest::collection::vec(any::<u8>(), 1..4),
    ) {
        // A valid traceparent and a tracestate whose keys put "@" anywhere, zero to three
        // times: the oracle decides, independently of mqtrace's parser, what is re-injected.
        let traceparent = format!("00-{:032x}-{:016x}-01", u128::from(seed) << 64 | 1, seed | 1);
        let model: Model = vec![
            (b"traceparent".to_vec(), Some(traceparent.into_bytes())),
            (b"tracestate".to_vec(), Some(members.join(",").into_bytes())),
        ];
        let (headers, stored) = kafka_headers(&model);
        check_extraction(&KafkaHeaders(&headers), &stored);
        let (table, table_model) = amqp_table(&model, &encodings);
        check_extraction(&AmqpHeaders(&table), &table_model);
    }

    #[test]
    fn amqp_tables_extract_and_merge_as_the_oracle_says(
        generated in headers(),
        encodings in proptest::collection::vec(any::<u8>(), 1..12),
        seed in any::<u64>(),
    ) {
        let (table, model) = amqp_table(&generated, &encodings);
        check_extraction(&AmqpHeaders(&table), &model);
        let cx = fresh_context(seed);
        let injected = inject(&cx);
        let merged = mqtrace::amqp::headers::merge_injected(Some(table), &injected)
            .expect("something was injected");
        check_merge(&model, &injected, &visited(&AmqpHeaders(&merged)), &cx, false);
    }

    #[test]
    fn amqp_tables_from_the_wire_extract_as_the_oracle_says(
        generated in headers(),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
        use_garbage in proptest::bool::weighted(0.2),
    ) {
        // A well-formed table, cut short somewhere, or bytes from nowhere.
        let mut wire = wire_table(&generated);
        if use_garbage {
            wire = garbage;
        } else if cut.index(4) == 0 {
            wire.truncate(cut.index(wire.len() + 1));
        }
        if let Ok((_, table)) = parse_field_table(&wire[..]) {
            check_extraction(&AmqpHeaders(&table), &reads_as(&table));
        }
    }
}
