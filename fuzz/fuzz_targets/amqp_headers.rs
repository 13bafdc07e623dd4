//! AMQP: `FieldTable`s of every value type mqtrace may meet (LongString, ShortString,
//! ByteArray, integers, nested tables), read by `AmqpHeaders` and rewritten by
//! `merge_injected`.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run amqp_headers` (or `scripts/fuzz`).

#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;
use mqtrace_amqp::headers::{AmqpHeaders, merge_injected};
use mqtrace_fuzz::{
    FuzzHeader, Model, check_extraction, check_merge, fresh_context, inject, visited,
};

/// How a header's value is encoded in the table.
#[derive(Debug, Arbitrary)]
enum Encoding {
    LongString,
    /// Only for values that are UTF-8 (a `ShortString` is a Rust `String`).
    ShortString,
    ByteArray,
    /// Not text, whatever the value: an integer.
    Integer(i64),
    /// Not text: a nested table holding the value.
    Table,
}

fuzz_target!(|input: (Vec<(FuzzHeader, Encoding)>, u64)| {
    let (generated, seed) = input;
    let mut table = FieldTable::default();
    // The oracle: a map from key to the bytes a text value must read as (None: not text).
    let mut expected: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for (header, encoding) in &generated {
        let Ok(key) = ShortString::try_new(String::from_utf8_lossy(&header.key.bytes())) else {
            continue; // AMQP keys are short strings: at most 255 bytes
        };
        let bytes = header.value.bytes();
        let (value, reads_as) = match (encoding, bytes) {
            (_, None) => (AMQPValue::Void, None),
            (Encoding::LongString, Some(b)) => {
                (AMQPValue::LongString(LongString::from(b.clone())), Some(b))
            }
            (Encoding::ShortString, Some(b)) => {
                match String::from_utf8(b)
                    .map_err(|e| e.into_bytes())
                    .and_then(|text| ShortString::try_new(text).map_err(|_| Vec::new()))
                {
                    Ok(text) => {
                        let reads = Some(text.as_str().as_bytes().to_vec());
                        (AMQPValue::ShortString(text), reads)
                    }
                    // Not UTF-8 or too long for a short string: sent as bytes instead.
                    Err(_) => {
                        let b = header.value.bytes().unwrap_or_default();
                        (AMQPValue::ByteArray(ByteArray::from(b.clone())), Some(b))
                    }
                }
            }
            (Encoding::ByteArray, Some(b)) => {
                (AMQPValue::ByteArray(ByteArray::from(b.clone())), Some(b))
            }
            (Encoding::Integer(n), Some(_)) => (AMQPValue::LongLongInt(*n), None),
            (Encoding::Table, Some(b)) => {
                let mut inner = FieldTable::default();
                inner.insert("value".into(), AMQPValue::LongString(LongString::from(b)));
                (AMQPValue::FieldTable(inner), None)
            }
        };
        expected.insert(key.as_str().to_owned(), reads_as);
        table.insert(key, value);
    }
    let model: Model = expected
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v))
        .collect();
    check_extraction(&AmqpHeaders(&table), &model);

    let cx = fresh_context(seed);
    let injected = inject(&cx);
    let merged = merge_injected(Some(table), &injected).expect("something was injected");
    check_merge(
        &model,
        &injected,
        &visited(&AmqpHeaders(&merged)),
        &cx,
        false,
    );
});
