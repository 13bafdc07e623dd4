//! Kafka: header lists as librdkafka holds them (keys of any bytes, null values, huge
//! values, thousands of headers), read by `KafkaHeaders`/`raw_headers` and rewritten by
//! `merge_injected`.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run kafka_headers` (or `scripts/fuzz`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace_fuzz::{FuzzHeader, Model, check_extraction, check_merge, fresh_context, inject};
use mqtrace_kafka::headers::{KafkaHeaders, merge_injected, raw_headers};
use rdkafka::message::OwnedHeaders;

/// Adds a header with any key bytes, the way a C or Go producer can; librdkafka copies both.
fn add_raw(headers: &mut OwnedHeaders, key: &[u8], value: Option<&[u8]>) {
    let list = std::ptr::from_ref(headers.as_borrowed())
        .cast::<rdkafka::bindings::rd_kafka_headers_t>()
        .cast_mut();
    let (value_ptr, value_len) = match value {
        Some(value) => (value.as_ptr().cast(), value.len() as isize),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `list` is the live list `headers` owns (`as_borrowed` is a cast of it) and we
    // hold it mutably; key and value pointers are valid for the lengths given.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            list,
            key.as_ptr().cast(),
            key.len() as isize,
            value_ptr,
            value_len,
        )
    };
    assert_eq!(
        error,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
}

fuzz_target!(|input: (Vec<FuzzHeader>, u64)| {
    let (generated, seed) = input;
    let mut headers = OwnedHeaders::new_with_capacity(generated.len());
    let mut model: Model = Vec::with_capacity(generated.len());
    for header in &generated {
        let key = header.key.bytes();
        let value = header.value.bytes();
        add_raw(&mut headers, &key, value.as_deref());
        // librdkafka keeps keys NUL-terminated: a key reads up to its first NUL.
        let stored = key.split(|b| *b == 0).next().unwrap_or_default().to_vec();
        model.push((stored, value));
    }

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
