//! AMQP from the wire: arbitrary bytes parsed as a header table by lapin's own AMQP parser
//! (what a hostile or broken publisher can make a consumer see), then read by
//! `AmqpHeaders`, rewritten by `merge_injected`, and encoded again: the merged table must
//! survive the wire and still carry the injected context.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run amqp_wire_headers` (or `scripts/fuzz`).

#![no_main]

use lapin::types::generation::gen_field_table;
use lapin::types::parsing::parse_field_table;
use lapin::types::{AMQPValue, FieldTable};
use libfuzzer_sys::fuzz_target;
use mqtrace_amqp::headers::{AmqpHeaders, merge_injected};
use mqtrace_fuzz::{
    Model, check_extraction, check_merge, fresh_context, inject, propagation, visited,
};

/// What a value must read as, written from the AMQP types, not from mqtrace's code.
fn reads_as(value: &AMQPValue) -> Option<Vec<u8>> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Some(b.as_slice().to_vec()),
        _ => None,
    }
}

fn model(table: &FieldTable) -> Model {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes().to_vec(), reads_as(v)))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok((_, table)) = parse_field_table(data) else {
        return;
    };
    let before = model(&table);
    check_extraction(&AmqpHeaders(&table), &before);

    let seed = data
        .iter()
        .fold(0_u64, |h, b| h.rotate_left(5) ^ u64::from(*b));
    let cx = fresh_context(seed);
    let injected = inject(&cx);
    let merged = merge_injected(Some(table), &injected).expect("something was injected");
    check_merge(
        &before,
        &injected,
        &visited(&AmqpHeaders(&merged)),
        &cx,
        false,
    );

    // Encode and parse again: the context survives the wire.
    let Ok(wire) = cookie_factory::gen_simple(gen_field_table(&merged), Vec::new()) else {
        return; // a table the encoder refuses never reaches the wire
    };
    let (_, reparsed) = parse_field_table(&wire[..]).expect("lapin parses what it encoded");
    assert!(
        propagation()
            .extract(&AmqpHeaders(&reparsed))
            .remote_span_context()
            .is_some(),
        "the injected context did not survive encoding"
    );
});
