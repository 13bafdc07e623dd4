//! Kafka: header lists as librdkafka holds them (keys of any bytes, null values, huge
//! values, many headers), read by `KafkaHeaders`/`raw_headers` and rewritten by
//! `merge_injected`.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run kafka_headers` (or `scripts/fuzz`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace_fuzz::{
    FuzzHeader, Model, check_extraction, check_merge, fresh_context, inject, kafka_headers,
};
use mqtrace_kafka::headers::{KafkaHeaders, merge_injected, raw_headers};

fuzz_target!(|input: (Vec<FuzzHeader>, u64)| {
    let (generated, seed) = input;
    let generated: Model = generated
        .iter()
        .map(|header| (header.key.bytes(), header.value.bytes()))
        .collect();
    let (headers, model) = kafka_headers(&generated);

    // Every header, whatever its key's bytes, in order.
    let raw: Model = raw_headers(headers.as_borrowed())
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(raw, model, "raw_headers lost or changed a header");

    // The carrier reports exactly the headers whose key is UTF-8; extraction follows the oracle.
    let readable: Model = model
        .iter()
        .filter(|(k, _)| std::str::from_utf8(k).is_ok())
        .cloned()
        .collect();
    check_extraction(&KafkaHeaders(&headers), &readable);
    check_extraction(&KafkaHeaders(headers.as_borrowed()), &readable);

    // Injecting a fresh context replaces the propagation headers, keeps the others in order.
    let cx = fresh_context(seed);
    let injected = inject(&cx);
    let merged = merge_injected(Some(headers), &injected).expect("something was injected");
    let after: Model = raw_headers(merged.as_borrowed())
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect();
    check_merge(&model, &injected, &after, &cx, true);
});
