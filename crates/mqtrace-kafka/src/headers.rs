//! Kafka headers as mqtrace carriers.
//!
//! [`KafkaHeaders`] lets the propagator read rdkafka's `BorrowedHeaders` or `OwnedHeaders`
//! without copying (Kafka header values are raw bytes; UTF-8 values are read, others
//! ignored). [`merge_injected`] writes injected context into a record's headers, replacing
//! any `traceparent`/`tracestate`/`baggage` already there and keeping every other header in
//! its order, in place.
//!
//! Header keys are strings by convention only: the Kafka protocol carries bytes, and some
//! clients (Go's sarama, librdkafka's C API) send keys that are not UTF-8. rdkafka 0.39's
//! accessors (`Headers::get`, `try_get`, `iter`) panic on such a key, so one message from such
//! a client would crash every consumer that reads it, again after each restart. mqtrace reads
//! headers through librdkafka's C API instead ([`raw_headers`]): a key that is not UTF-8 is
//! never a propagation header, so extraction skips it and injection keeps it untouched.

use mqtrace_core::carrier::{HeaderSource, InjectedHeaders};
use rdkafka::message::{BorrowedHeaders, Header, OwnedHeaders};

/// A rdkafka header list ([`BorrowedHeaders`] of a consumed message, or [`OwnedHeaders`]),
/// readable by mqtrace's extractor. Headers whose key is not UTF-8 are skipped.
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

impl HeaderSource for KafkaHeaders<'_, BorrowedHeaders> {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        visit_utf8_keys(self.0, visit);
    }
}

impl HeaderSource for KafkaHeaders<'_, OwnedHeaders> {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        visit_utf8_keys(self.0.as_borrowed(), visit);
    }
}

/// Headers a [`HeaderSnapshot`] holds; a message with more is read from librdkafka on each
/// lookup instead.
const SNAPSHOT_HEADERS: usize = 8;

/// A consumed message's headers read from librdkafka once, on the stack: extraction looks
/// them up once per propagation field (`traceparent`, `tracestate`, `baggage`), and each
/// direct lookup would go through librdkafka's C API again for every header. Same headers,
/// same order, same rules as [`KafkaHeaders`].
pub(crate) struct HeaderSnapshot<'h> {
    headers: &'h BorrowedHeaders,
    read: [(&'h str, Option<&'h [u8]>); SNAPSHOT_HEADERS],
    len: usize,
    complete: bool,
}

impl<'h> HeaderSnapshot<'h> {
    pub(crate) fn new(headers: &'h BorrowedHeaders) -> Self {
        let mut snapshot = Self {
            headers,
            read: [("", None); SNAPSHOT_HEADERS],
            len: 0,
            complete: true,
        };
        for (key, value) in raw_headers(headers) {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            match snapshot.read.get_mut(snapshot.len) {
                Some(slot) => {
                    *slot = (key, value);
                    snapshot.len += 1;
                }
                None => {
                    snapshot.complete = false;
                    break;
                }
            }
        }
        snapshot
    }
}

impl HeaderSource for HeaderSnapshot<'_> {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        if self.complete {
            for (key, value) in &self.read[..self.len] {
                visit(key, *value);
            }
        } else {
            visit_utf8_keys(self.headers, visit);
        }
    }
}

fn visit_utf8_keys<'a>(
    headers: &'a BorrowedHeaders,
    visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>),
) {
    for (key, value) in raw_headers(headers) {
        if let Ok(key) = std::str::from_utf8(key) {
            visit(key, value);
        }
    }
}

/// Every header of `headers`, in order, as `(key, value)` bytes, whatever the key's bytes
/// (`None` for a null value). Unlike rdkafka's own accessors it never panics on a key that is
/// not UTF-8.
///
/// # Example
///
/// ```
/// use mqtrace_kafka::headers::raw_headers;
/// use rdkafka::message::{Header, OwnedHeaders};
///
/// let headers = OwnedHeaders::new()
///     .insert(Header { key: "app", value: Some("1") })
///     .insert(Header { key: "tombstone", value: None::<&[u8]> });
/// let all: Vec<_> = raw_headers(headers.as_borrowed()).collect();
/// assert_eq!(all, [(&b"app"[..], Some(&b"1"[..])), (&b"tombstone"[..], None)]);
/// ```
pub fn raw_headers(headers: &BorrowedHeaders) -> RawHeaders<'_> {
    RawHeaders {
        count: native::count(headers),
        headers,
        next: 0,
    }
}

/// The iterator of [`raw_headers`].
#[derive(Clone)]
pub struct RawHeaders<'h> {
    headers: &'h BorrowedHeaders,
    next: usize,
    count: usize,
}

impl std::fmt::Debug for RawHeaders<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawHeaders")
            .field("next", &self.next)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<'h> Iterator for RawHeaders<'h> {
    type Item = (&'h [u8], Option<&'h [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.count {
            let index = self.next;
            self.next += 1;
            if let Some(header) = native::get(self.headers, index) {
                return Some(header);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.count - self.next))
    }
}

/// Merges `injected` into `existing`: headers the propagator owns are removed (all
/// occurrences, any case), every other header is kept in order (keys that are not UTF-8
/// included), and the injected ones are appended. Works in place: nothing is copied. Returns
/// `existing` unchanged when nothing was injected.
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
    let base = match existing {
        Some(mut headers) => {
            // Each distinct spelling of a replaced key (librdkafka removes by exact key).
            let mut stale: Vec<&str> = Vec::new();
            for (key, _) in raw_headers(headers.as_borrowed()) {
                if let Ok(key) = std::str::from_utf8(key)
                    && injected.replaces(key)
                    && !stale.contains(&key)
                {
                    stale.push(key);
                }
            }
            let stale: Vec<String> = stale.into_iter().map(str::to_owned).collect();
            for key in &stale {
                native::remove(&mut headers, key);
            }
            headers
        }
        None => OwnedHeaders::new_with_capacity(injected.iter().count()),
    };
    Some(injected.iter().fold(base, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    }))
}

/// The few librdkafka header calls rdkafka does not expose without panicking.
#[allow(unsafe_code)]
mod native {
    use std::ffi::{CStr, c_char, c_void};

    use rdkafka::bindings::{
        rd_kafka_header_cnt, rd_kafka_header_get_all, rd_kafka_header_remove, rd_kafka_headers_t,
        rd_kafka_resp_err_t,
    };
    use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

    /// The native list behind `headers`. rdkafka hands out `&BorrowedHeaders` only as a cast
    /// of a live `rd_kafka_headers_t *` (for a consumed message's headers, and from
    /// `OwnedHeaders::as_borrowed`) and casts it back the same way in its own methods; the
    /// list lives as long as the reference.
    fn list(headers: &BorrowedHeaders) -> *const rd_kafka_headers_t {
        std::ptr::from_ref(headers).cast()
    }

    pub(super) fn count(headers: &BorrowedHeaders) -> usize {
        // SAFETY: `list` is a live header list (see `list`).
        unsafe { rd_kafka_header_cnt(list(headers)) }
    }

    /// Header `index`: its key's bytes (up to the first NUL, as librdkafka stores keys) and
    /// its value (`None` when null).
    pub(super) fn get(headers: &BorrowedHeaders, index: usize) -> Option<(&[u8], Option<&[u8]>)> {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0_usize;
        // SAFETY: `list` is a live header list (see `list`); the out-pointers are valid.
        let error = unsafe {
            rd_kafka_header_get_all(list(headers), index, &mut name, &mut value, &mut size)
        };
        if error != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka stores each key NUL-terminated and each value as `size` bytes,
        // owned by the list, which outlives the borrow of `headers`.
        let key = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        Some((key, value))
    }

    /// Removes every header named exactly `key` from `headers`, which the caller owns.
    pub(super) fn remove(headers: &mut OwnedHeaders, key: &str) {
        let Ok(key) = std::ffi::CString::new(key) else {
            return; // librdkafka keys end at a NUL: no stored key contains one
        };
        let list = list(headers.as_borrowed()).cast_mut();
        // SAFETY: the list is live and exclusively ours (`&mut OwnedHeaders`), so nothing
        // reads it while librdkafka edits it; `key` is NUL-terminated. librdkafka returns
        // NOENT when no header has that key, which is fine.
        let _ = unsafe { rd_kafka_header_remove(list, key.as_ptr()) };
    }

    /// Adds a header whose key may be any bytes, for tests of foreign producers.
    #[cfg(test)]
    pub(super) fn add_raw(headers: &mut OwnedHeaders, key: &[u8], value: &[u8]) {
        let list = list(headers.as_borrowed()).cast_mut();
        // SAFETY: as in `remove`; librdkafka copies `key` and `value` (lengths given).
        let _ = unsafe {
            rdkafka::bindings::rd_kafka_header_add(
                list,
                key.as_ptr().cast(),
                key.len() as isize,
                value.as_ptr().cast(),
                value.len() as isize,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtrace_core::carrier::{HeaderExtractor, HeaderPolicy};
    use opentelemetry::propagation::{Extractor, Injector};
    use proptest::prelude::*;
    use rdkafka::message::Headers;

    /// Every header a source shows, in order.
    fn shown<S: HeaderSource>(source: &S) -> Vec<(String, Option<Vec<u8>>)> {
        let mut all = Vec::new();
        source.for_each_header(&mut |k, v| all.push((k.to_owned(), v.map(<[u8]>::to_vec))));
        all
    }

    #[test]
    fn a_snapshot_shows_what_the_headers_show() {
        for count in [0, 3, SNAPSHOT_HEADERS, SNAPSHOT_HEADERS + 3] {
            let mut headers = OwnedHeaders::new();
            for i in 0..count {
                let key = if i % 2 == 0 { "traceparent" } else { "app" };
                let value = format!("v{i}");
                headers = headers.insert(Header {
                    key,
                    value: (i != 1).then_some(value.as_bytes()),
                });
            }
            let borrowed = headers.as_borrowed();
            assert_eq!(
                shown(&HeaderSnapshot::new(borrowed)),
                shown(&KafkaHeaders(borrowed)),
                "{count} headers"
            );
            let snapshot = HeaderSnapshot::new(borrowed);
            let extractor = HeaderExtractor::new(&snapshot, HeaderPolicy::default());
            let direct = KafkaHeaders(borrowed);
            let reference = HeaderExtractor::new(&direct, HeaderPolicy::default());
            assert_eq!(extractor.get("TraceParent"), reference.get("TraceParent"));
        }
    }

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

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_key_that_is_not_utf8_is_skipped_by_extraction() {
        let mut headers = OwnedHeaders::new();
        native::add_raw(&mut headers, b"x-\xff\xfe", b"foreign");
        let mut headers = headers.insert(Header {
            key: "traceparent",
            value: Some(VALID),
        });
        native::add_raw(&mut headers, b"\xc3\x28", b"more");
        let raw: Vec<_> = raw_headers(headers.as_borrowed()).map(|(k, _)| k).collect();
        assert_eq!(raw, [&b"x-\xff\xfe"[..], b"traceparent", b"\xc3\x28"]);

        let extracted =
            mqtrace_core::propagation::Propagation::global().extract(&KafkaHeaders(&headers));
        assert_eq!(
            extracted.outcome,
            mqtrace_core::propagation::ExtractOutcome::Found
        );
        let carrier = KafkaHeaders(headers.as_borrowed());
        let extractor = HeaderExtractor::new(&carrier, HeaderPolicy::default());
        assert_eq!(extractor.keys(), ["traceparent"]);
    }

    #[test]
    fn merge_keeps_keys_that_are_not_utf8_and_replaces_every_spelling() {
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "TRACEPARENT",
                value: Some("stale"),
            })
            .insert(Header {
                key: "app",
                value: Some("1"),
            });
        native::add_raw(&mut headers, b"x-\xff", b"foreign");
        let headers = headers
            .insert(Header {
                key: "TraceParent",
                value: Some("stale"),
            })
            .insert(Header {
                key: "TRACEPARENT",
                value: Some("stale again"),
            });
        let merged = merge_injected(Some(headers), &injected("fresh")).expect("headers");
        let all: Vec<_> = raw_headers(merged.as_borrowed()).collect();
        assert_eq!(
            all,
            [
                (&b"app"[..], Some(&b"1"[..])),
                (b"x-\xff", Some(b"foreign")),
                (b"traceparent", Some(b"fresh")),
            ]
        );
    }

    proptest! {
        /// `raw_headers` reads the same list rdkafka's own accessors do.
        #[test]
        fn raw_headers_match_rdkafka(list in arb_headers()) {
            let headers = owned(&list);
            let raw: Vec<_> = raw_headers(headers.as_borrowed()).collect();
            let rdkafka: Vec<_> = headers.iter().map(|h| (h.key.as_bytes(), h.value)).collect();
            prop_assert_eq!(raw, rdkafka);
        }

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
