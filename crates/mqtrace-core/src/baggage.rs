//! A W3C Baggage propagator (<https://www.w3.org/TR/baggage/>) built on the OpenTelemetry
//! API alone, so that mqtrace-core needs no `opentelemetry_sdk`.
//!
//! [`W3cBaggagePropagator`] is a drop-in replacement for the SDK's `BaggagePropagator`
//! (0.33): for the same input it extracts the same [`Baggage`] (keys, values and metadata) and
//! injects a byte-identical `baggage` header. A differential property test against the SDK
//! pins this. In short:
//!
//! - **Extract.** The header is split on `,` into list members (at most the first 64 are
//!   looked at, valid or not, and a header over 8192 bytes is ignored whole: these bound the
//!   work an oversized header can cause; [`Baggage`] itself then enforces 64 entries and 8192
//!   bytes of content). A member is `key=value` followed by optional `;`-separated properties.
//!   Key, value and each property are percent-decoded (`%XX`, either case; a `%` not followed
//!   by two hex digits stays as it is) and then trimmed of whitespace. A member without `=`,
//!   or whose key or value does not decode to UTF-8, is skipped, as is a property that does
//!   not; [`Baggage`] drops keys that are not tokens. When the header is present the
//!   extracted baggage *replaces* the context's baggage (an empty or all-invalid header thus
//!   clears it); when it is absent or too long, the context is returned unchanged. The
//!   carrier decides which occurrence of a repeated header [`Extractor::get`] returns.
//! - **Inject.** Nothing is written for empty baggage. Otherwise one `baggage` header:
//!   members `key=value[;metadata]` joined by `,` in the baggage's iteration order, key and
//!   value trimmed and percent-encoded exactly where the SDK encodes (controls, DEL, space,
//!   `"`, `,`, `;`, `=` and every non-ASCII byte, as uppercase `%XX`), metadata written as
//!   stored.
//!
//! ## Where it differs from the SDK
//!
//! One input, where the SDK breaks a MUST NOT of the specification: a value may contain `=`
//! ("Parsers MUST NOT assume that the equal sign is only used to separate key and value").
//! The SDK keeps only the text up to the second `=`, so `token=abc==` gives `abc`; this
//! propagator keeps `abc==`. Such values are common (base64), and Go's OpenTelemetry, for one,
//! sends `=` unescaped.
//!
//! Kept as the SDK does, though the specification does not ask for it (changing them would
//! change what existing OpenTelemetry Rust services send or see): keys are percent-decoded
//! too; decoded whitespace (`%20`, and any Unicode whitespace) at either end is trimmed;
//! values with octets the specification excludes (inner spaces, `"`, `\`, non-ASCII) are
//! accepted; properties are decoded on extract but injected as stored, unencoded; `%` is not
//! encoded on inject.

use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};

#[cfg(doc)]
use opentelemetry::baggage::Baggage;

/// The `baggage` header name.
pub const BAGGAGE_HEADER: &str = "baggage";

/// A header longer than this is ignored whole, as the SDK does (the specification's limit
/// for a baggage string).
const MAX_HEADER_BYTES: usize = 8192;

/// Only the first this many `,`-separated members (valid or not) are parsed, as the SDK
/// does. [`Baggage`] separately caps the entries it keeps at 64.
const MAX_MEMBERS: usize = 64;

static FIELDS: LazyLock<[String; 1]> = LazyLock::new(|| [BAGGAGE_HEADER.to_owned()]);

/// Propagates [`Baggage`] in the W3C `baggage` header, behaving as the OpenTelemetry SDK's
/// `BaggagePropagator` does (see the [module documentation](self) for the rules and the one
/// difference), with only the OpenTelemetry API as a dependency.
///
/// # Example
///
/// ```
/// use std::collections::HashMap;
///
/// use mqtrace_core::baggage::W3cBaggagePropagator;
/// use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::{Context, StringValue};
///
/// let propagator = W3cBaggagePropagator::new();
///
/// // Extract: values are percent-decoded and trimmed; properties follow `;`.
/// let headers = HashMap::from([(
///     "baggage".to_owned(),
///     "userId=alice, serverNode = DF%2028;region=eu".to_owned(),
/// )]);
/// let cx = propagator.extract(&headers);
/// assert_eq!(cx.baggage().get("userId"), Some(&StringValue::from("alice")));
/// let (node, properties) = cx.baggage().get_with_metadata("serverNode").expect("extracted");
/// assert_eq!((node.as_str(), properties.as_str()), ("DF 28", "region=eu"));
///
/// // Inject: one header, values percent-encoded.
/// let cx = Context::new().with_baggage([KeyValueMetadata::new("userId", "alice, bob", "")]);
/// let mut out = HashMap::new();
/// propagator.inject_context(&cx, &mut out);
/// assert_eq!(out.get("baggage").map(String::as_str), Some("userId=alice%2C%20bob"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct W3cBaggagePropagator {
    _private: (),
}

impl W3cBaggagePropagator {
    /// A new baggage propagator.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TextMapPropagator for W3cBaggagePropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let baggage = cx.baggage();
        if baggage.is_empty() {
            return;
        }
        // Size the header exactly, so it is the one allocation.
        let commas = baggage.len() - 1;
        let len = baggage
            .iter()
            .map(|(key, (value, metadata))| {
                let metadata = metadata.as_str().trim();
                encoded_len(key.as_str().trim())
                    + 1
                    + encoded_len(value.as_str().trim())
                    + if metadata.is_empty() {
                        0
                    } else {
                        1 + metadata.len()
                    }
            })
            .sum::<usize>()
            + commas;
        let mut header = String::with_capacity(len);
        for (i, (key, (value, metadata))) in baggage.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            encode_into(&mut header, key.as_str().trim());
            header.push('=');
            encode_into(&mut header, value.as_str().trim());
            let metadata = metadata.as_str().trim();
            if !metadata.is_empty() {
                header.push(';');
                header.push_str(metadata);
            }
        }
        debug_assert_eq!(header.len(), len);
        injector.set(BAGGAGE_HEADER, header);
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some(header) = extractor.get(BAGGAGE_HEADER) else {
            return cx.clone();
        };
        if header.len() > MAX_HEADER_BYTES {
            return cx.clone();
        }
        let mut scratch = Scratch::new(header.len());
        cx.with_baggage(
            header
                .split(',')
                .take(MAX_MEMBERS)
                .filter_map(|member| parse_member(member, &mut scratch)),
        )
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(FIELDS.as_slice())
    }
}

/// Buffers for decoding, reused across one header's members and allocated (at the header's
/// length, which no decoded text exceeds) only when a member needs decoding, so that
/// extraction allocates little beyond the strings the [`Baggage`] keeps.
struct Scratch {
    capacity: usize,
    bytes: Vec<u8>,
    text: String,
}

impl Scratch {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            bytes: Vec::new(),
            text: String::new(),
        }
    }

    /// The byte buffer, empty; allocated on first use.
    fn bytes(bytes: &mut Vec<u8>, capacity: usize) -> &mut Vec<u8> {
        if bytes.capacity() == 0 {
            bytes.reserve_exact(capacity);
        }
        bytes.clear();
        bytes
    }

    /// A member's key and value, percent-decoded and trimmed; `None` when either is not
    /// UTF-8 once decoded.
    fn key_value(&mut self, key: &str, value: &str) -> Option<(String, String)> {
        if !key.contains('%') && !value.contains('%') {
            return Some((key.trim().to_owned(), value.trim().to_owned()));
        }
        let bytes = Self::bytes(&mut self.bytes, self.capacity);
        bytes.extend(PercentDecode(key.as_bytes()));
        let (key, value) = {
            let split = bytes.len();
            bytes.extend(PercentDecode(value.as_bytes()));
            bytes.split_at(split)
        };
        let (key, value) = (
            std::str::from_utf8(key).ok()?,
            std::str::from_utf8(value).ok()?,
        );
        Some((key.trim().to_owned(), value.trim().to_owned()))
    }

    /// The properties after a member's first `;`, as the SDK stores them: each property
    /// percent-decoded and trimmed, those that are not UTF-8 once decoded left out, the rest
    /// joined with `;`.
    fn properties<'a>(&'a mut self, properties: &'a str) -> &'a str {
        let trimmed = |p: &str| p.trim().len() == p.len();
        if !properties.contains('%') && properties.split(';').all(trimmed) {
            // Decoding and trimming change nothing: the properties are stored as received.
            return properties;
        }
        if self.text.capacity() == 0 {
            self.text.reserve_exact(self.capacity);
        }
        self.text.clear();
        let mut first = true;
        for property in properties.split(';') {
            let bytes = Self::bytes(&mut self.bytes, self.capacity);
            bytes.extend(PercentDecode(property.as_bytes()));
            let Ok(property) = std::str::from_utf8(bytes) else {
                continue;
            };
            if !first {
                self.text.push(';');
            }
            first = false;
            self.text.push_str(property.trim());
        }
        &self.text
    }
}

/// One list member, or `None` when it has no `=` or its key or value is not UTF-8 once
/// decoded. Whether the key is a valid token is left to [`Baggage`], as in the SDK.
fn parse_member(member: &str, scratch: &mut Scratch) -> Option<KeyValueMetadata> {
    let (key_value, properties) = match member.split_once(';') {
        Some((key_value, properties)) => (key_value, Some(properties)),
        None => (member, None),
    };
    // Spec, not SDK: the value is everything after the first `=` (the SDK cuts it at the next
    // `=`). "Parsers MUST NOT assume that the equal sign is only used to separate key and
    // value." See the module documentation.
    let (key, value) = key_value.split_once('=')?;
    let (key, value) = scratch.key_value(key, value)?;
    let metadata = match properties {
        Some(properties) => scratch.properties(properties),
        None => "",
    };
    Some(KeyValueMetadata::new(key, value, metadata))
}

/// Percent-decoding as the `percent-encoding` crate does it: `%` and two hex digits (either
/// case) become that byte; any other byte, a lone `%` included, is kept.
struct PercentDecode<'a>(&'a [u8]);

impl Iterator for PercentDecode<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        if let [b'%', high, low, rest @ ..] = self.0
            && let (Some(high), Some(low)) = (hex_digit(*high), hex_digit(*low))
        {
            self.0 = rest;
            return Some((high << 4) | low);
        }
        let (&byte, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(byte)
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The bytes the SDK percent-encodes in keys and values: its `FRAGMENT` set
/// (`CONTROLS` + space, `"`, `;`, `,`, `=`), plus every non-ASCII byte, which
/// `utf8_percent_encode` always encodes.
fn needs_encoding(byte: u8) -> bool {
    !byte.is_ascii() || byte.is_ascii_control() || matches!(byte, b' ' | b'"' | b';' | b',' | b'=')
}

fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| if needs_encoding(b) { 3 } else { 1 })
        .sum()
}

fn encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in s.bytes() {
        if needs_encoding(byte) {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        } else {
            // Not encoded means ASCII, so the byte is a whole character.
            out.push(char::from(byte));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use opentelemetry::baggage::Baggage;
    use opentelemetry::{KeyValue, StringValue, Value};
    use opentelemetry_sdk::propagation::BaggagePropagator;

    use super::*;

    type Entries = BTreeMap<String, (String, String)>;

    fn entries(baggage: &Baggage) -> Entries {
        baggage
            .iter()
            .map(|(k, (v, m))| {
                (
                    k.as_str().to_owned(),
                    (v.as_str().to_owned(), m.as_str().to_owned()),
                )
            })
            .collect()
    }

    fn headers(header: &str) -> HashMap<String, String> {
        HashMap::from([(BAGGAGE_HEADER.to_owned(), header.to_owned())])
    }

    fn extract(header: &str) -> Entries {
        entries(
            W3cBaggagePropagator::new()
                .extract(&headers(header))
                .baggage(),
        )
    }

    fn sdk_extract(header: &str) -> Entries {
        entries(BaggagePropagator::new().extract(&headers(header)).baggage())
    }

    fn expected(members: &[(&str, &str, &str)]) -> Entries {
        members
            .iter()
            .map(|(k, v, m)| ((*k).to_owned(), ((*v).to_owned(), (*m).to_owned())))
            .collect()
    }

    fn inject(cx: &Context) -> Option<String> {
        let mut out = HashMap::new();
        W3cBaggagePropagator::new().inject_context(cx, &mut out);
        out.remove(BAGGAGE_HEADER)
    }

    fn sdk_inject(cx: &Context) -> Option<String> {
        let mut out = HashMap::new();
        BaggagePropagator::new().inject_context(cx, &mut out);
        out.remove(BAGGAGE_HEADER)
    }

    #[test]
    fn fields_are_baggage() {
        let p = W3cBaggagePropagator::new();
        assert_eq!(p.fields().collect::<Vec<_>>(), ["baggage"]);
    }

    #[test]
    fn spec_example_with_properties_and_whitespace() {
        let header = "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue";
        let want = expected(&[
            ("key1", "value1", "property1;property2"),
            ("key2", "value2", ""),
            ("key3", "value3", "propertyKey=propertyValue"),
        ]);
        assert_eq!(extract(header), want);
        assert_eq!(sdk_extract(header), want);
    }

    #[test]
    fn spec_examples_of_headers() {
        let want = expected(&[
            ("userId", "alice", ""),
            ("serverNode", "DF 28", ""),
            ("isProduction", "false", ""),
        ]);
        assert_eq!(
            extract("userId=alice,serverNode=DF%2028,isProduction=false"),
            want
        );
        assert_eq!(
            extract("userId =   alice,serverNode = DF%2028, isProduction = false"),
            want
        );
        assert_eq!(
            extract("\tuserId\t=\talice\t"),
            expected(&[("userId", "alice", "")])
        );
    }

    #[test]
    fn percent_decoding_of_values() {
        assert_eq!(
            extract("a=val2%2Cval3,b=%e2%82%ac,c=%3B%3d"),
            expected(&[("a", "val2,val3", ""), ("b", "€", ""), ("c", ";=", "")])
        );
        // A `%` not followed by two hex digits is kept as it is.
        assert_eq!(
            extract("a=100%,b=%4,c=%zz1,d=%%41"),
            expected(&[
                ("a", "100%", ""),
                ("b", "%4", ""),
                ("c", "%zz1", ""),
                ("d", "%A", "")
            ])
        );
        // Decoded whitespace at either end is trimmed, as the SDK does.
        assert_eq!(extract("a=%20x%20y%09"), expected(&[("a", "x y", "")]));
        assert_eq!(extract("a=%C2%A0x"), expected(&[("a", "x", "")]));
    }

    #[test]
    fn value_may_contain_equal_signs() {
        // Spec: "Parsers MUST NOT assume that the equal sign is only used to separate key and
        // value." The SDK keeps only `abc`: the one deliberate difference.
        assert_eq!(
            extract("token=abc==,q=a=b=c;p=x=y"),
            expected(&[("q", "a=b=c", "p=x=y"), ("token", "abc==", "")])
        );
        assert_eq!(
            sdk_extract("token=abc==,q=a=b=c;p=x=y"),
            expected(&[("q", "a", "p=x=y"), ("token", "abc", "")])
        );
    }

    #[test]
    fn empty_value_is_kept() {
        assert_eq!(
            extract("key1=,key2=val2"),
            expected(&[("key1", "", ""), ("key2", "val2", "")])
        );
    }

    #[test]
    fn invalid_members_are_skipped() {
        let want = expected(&[("key1", "val1", ""), ("key2", "val2", "")]);
        for header in [
            "key1=val1,key2=val2,a,val3",
            "key1=val1,,key2=val2, ,",
            "key1=val1,=v,key2=val2",
            "key1=val1,a b=1,key2=val2",
            "key1=val1,(k)=1,k@=2,key2=val2",
            "key1=val1,k=%FF,%C3=1,key2=val2",
            "key1=val1,k=%C3,key2=val2",
            "key1=val1,ключ=1,key2=val2",
            "key1=val1,k;x=y,key2=val2",
        ] {
            assert_eq!(extract(header), want, "{header:?}");
            assert_eq!(sdk_extract(header), want, "{header:?}");
        }
    }

    #[test]
    fn keys_are_decoded_as_the_sdk_does() {
        for header in ["%6B=1", "%20k=1", "k%20=1"] {
            assert_eq!(extract(header), expected(&[("k", "1", "")]), "{header:?}");
            assert_eq!(extract(header), sdk_extract(header));
        }
        // Decoding to a non-token drops the member.
        assert_eq!(extract("a%2Cb=1"), Entries::new());
    }

    #[test]
    fn properties() {
        for (header, metadata) in [
            ("k=v;prop=1", "prop=1"),
            ("k=v;prop1", "prop1"),
            ("k=v; a ; b = 2 ", "a;b = 2"),
            ("k=v;", ""),
            ("k=v; ", ""),
            ("k=v;;", ";"),
            ("k=v;;a", ";a"),
            ("k=v;p=%2C%3B", "p=,;"),
            ("k=v;p=%20x%20", "p= x"),
            ("k=v;bad=%FF;good=1", "good=1"),
            ("k=v;bad=%FF", ""),
            ("k=v;a=%zz", "a=%zz"),
        ] {
            let want = expected(&[("k", "v", metadata)]);
            assert_eq!(extract(header), want, "{header:?}");
            assert_eq!(sdk_extract(header), want, "{header:?}");
        }
    }

    #[test]
    fn later_duplicate_wins() {
        assert_eq!(
            extract("k=1;a,k=2,j=0"),
            expected(&[("j", "0", ""), ("k", "2", "")])
        );
    }

    #[test]
    fn present_header_replaces_context_baggage_absent_keeps_it() {
        let p = W3cBaggagePropagator::new();
        let base = Context::new().with_baggage([KeyValue::new("pre", "1")]);
        let replaced = p.extract_with_context(&base, &headers("k=v"));
        assert_eq!(entries(replaced.baggage()), expected(&[("k", "v", "")]));
        let cleared = p.extract_with_context(&base, &headers("not a member"));
        assert!(cleared.baggage().is_empty());
        let none = HashMap::<String, String>::new();
        let kept = p.extract_with_context(&base, &none);
        assert_eq!(entries(kept.baggage()), expected(&[("pre", "1", "")]));
        for header in ["k=v", "not a member", ""] {
            let sdk = BaggagePropagator::new().extract_with_context(&base, &headers(header));
            let ours = p.extract_with_context(&base, &headers(header));
            assert_eq!(
                entries(ours.baggage()),
                entries(sdk.baggage()),
                "{header:?}"
            );
        }
        let sdk = BaggagePropagator::new().extract_with_context(&base, &none);
        assert_eq!(entries(sdk.baggage()), entries(kept.baggage()));
    }

    #[test]
    fn oversized_header_is_ignored() {
        let p = W3cBaggagePropagator::new();
        let base = Context::new().with_baggage([KeyValue::new("pre", "1")]);
        let fits = format!("k={}", "x".repeat(MAX_HEADER_BYTES - 2));
        let over = format!("{fits}x");
        let cx = p.extract_with_context(&base, &headers(&fits));
        assert_eq!(cx.baggage().len(), 1);
        assert!(cx.baggage().get("k").is_some());
        let cx = p.extract_with_context(&base, &headers(&over));
        assert_eq!(entries(cx.baggage()), expected(&[("pre", "1", "")]));
        assert_eq!(
            entries(
                BaggagePropagator::new()
                    .extract_with_context(&base, &headers(&over))
                    .baggage()
            ),
            expected(&[("pre", "1", "")])
        );
    }

    #[test]
    fn only_the_first_64_members_are_parsed() {
        // Invalid members count: 10 empty ones leave room for 54.
        let members: Vec<String> = (0..70).map(|i| format!("k{i}=v")).collect();
        let header = format!("{}{}", ",".repeat(10), members.join(","));
        assert_eq!(extract(&header).len(), 54);
        assert_eq!(extract(&header), sdk_extract(&header));
        assert_eq!(extract(&members.join(",")).len(), 64);
    }

    #[test]
    fn inject_nothing_for_empty_baggage() {
        assert_eq!(inject(&Context::new()), None);
        let cleared = Context::new()
            .with_baggage([KeyValue::new("k", "v")])
            .with_cleared_baggage();
        assert_eq!(inject(&cleared), None);
    }

    #[test]
    fn inject_encodes_as_the_sdk() {
        let cx = Context::new().with_baggage([
            KeyValueMetadata::new("a", " x, y=z;\"q\" ", ""),
            KeyValueMetadata::new("b", "é€\u{7f}\u{1}\t", " p=1; q "),
            KeyValueMetadata::new("c", "100%~!#$&'()*+-./:<>?@[\\]^_`{|}", "x=1"),
        ]);
        let ours = inject(&cx).expect("injected");
        assert_eq!(Some(&ours), sdk_inject(&cx).as_ref());
        let mut members: Vec<&str> = ours.split(',').collect();
        members.sort_unstable();
        assert_eq!(
            members,
            [
                "a=x%2C%20y%3Dz%3B%22q%22",
                "b=%C3%A9%E2%82%AC%7F%01;p=1; q",
                "c=100%~!#$&'()*+-./:<>?@[\\]^_`{|};x=1",
            ]
        );
    }

    #[test]
    fn inject_every_ascii_byte_as_the_sdk() {
        let value: String = (1_u8..0x80).map(char::from).collect();
        let cx = Context::new().with_baggage([KeyValue::new("k", format!("a{value}a"))]);
        assert_eq!(inject(&cx), sdk_inject(&cx));
    }

    #[test]
    fn inject_typed_values_as_the_sdk() {
        let cx = Context::new().with_baggage([
            KeyValue::new("key1", true),
            KeyValue::new("key2", Value::I64(123)),
            KeyValue::new("key3", Value::F64(123.567)),
            KeyValue::new(
                "key4",
                Value::Array(vec![StringValue::from("v1"), StringValue::from("v2")].into()),
            ),
        ]);
        assert_eq!(inject(&cx), sdk_inject(&cx));
        let header = inject(&cx).expect("injected");
        assert!(header.contains("key4=[%22v1%22%2C%22v2%22]"), "{header}");
    }

    #[test]
    fn round_trip() {
        let cx = Context::new().with_baggage([
            KeyValueMetadata::new("userId", "alice, bob = ok; é", "region=eu;x"),
            KeyValueMetadata::new("n", "", ""),
        ]);
        let mut out = HashMap::new();
        let p = W3cBaggagePropagator::new();
        p.inject_context(&cx, &mut out);
        assert_eq!(entries(p.extract(&out).baggage()), entries(cx.baggage()));
    }

    mod differential {
        use super::*;
        use proptest::prelude::*;

        /// The SDK's answer for `header` as this propagator reads it: raw `=` in a member's
        /// value (after the key's `=`) handed to the SDK as `%3D`, which it decodes to the
        /// `=` the specification keeps (see `value_may_contain_equal_signs`). `None` when
        /// that rewrite alone takes the header over the size limit.
        fn sdk_oracle(header: &str) -> Option<String> {
            if header.len() > MAX_HEADER_BYTES {
                return Some(header.to_owned());
            }
            let rewritten: Vec<String> = header
                .split(',')
                .map(|member| {
                    let (key_value, properties) = match member.split_once(';') {
                        Some((kv, p)) => (kv, Some(p)),
                        None => (member, None),
                    };
                    let mut out = match key_value.split_once('=') {
                        Some((k, v)) => format!("{k}={}", v.replace('=', "%3D")),
                        None => key_value.to_owned(),
                    };
                    if let Some(p) = properties {
                        out.push(';');
                        out.push_str(p);
                    }
                    out
                })
                .collect();
            let rewritten = rewritten.join(",");
            (rewritten.len() <= MAX_HEADER_BYTES).then_some(rewritten)
        }

        fn atoms(extra: &'static [&'static str], plain: &'static str) -> BoxedStrategy<String> {
            let escapes: &'static [&'static str] = &[
                "%41",
                "%6b",
                "%2C",
                "%2c",
                "%3B",
                "%3D",
                "%25",
                "%20",
                "%09",
                "%22",
                "%C3%A9",
                "%e2%82%ac",
                "%F0%9F%98%8A",
                "%C2%A0",
                "%FF",
                "%C3",
                "%E2%82",
                "%80",
                "%00",
                "%",
                "%4",
                "%zz",
                "%%",
                "%G1",
                " ",
                "\t",
                "é",
                "\u{a0}",
                "😊",
            ];
            prop_oneof![
                4 => plain,
                2 => proptest::sample::select(escapes).prop_map(str::to_owned),
                1 => proptest::sample::select(extra).prop_map(str::to_owned),
                1 => "\\PC{1,3}",
            ]
            .boxed()
        }

        fn text(extra: &'static [&'static str], plain: &'static str) -> BoxedStrategy<String> {
            proptest::collection::vec(atoms(extra, plain), 0..4)
                .prop_map(|parts| parts.concat())
                .boxed()
        }

        fn ows() -> impl Strategy<Value = &'static str> {
            proptest::sample::select(&["", "", " ", "  ", "\t", " \t"][..])
        }

        fn key() -> BoxedStrategy<String> {
            text(
                &["(", "@", "/", "\"", "\\"],
                "[a-zA-Z0-9!#$&'*+.^_`|~-]{1,6}",
            )
        }

        fn value() -> BoxedStrategy<String> {
            text(
                &["=", "==", "\"", "\\", "(", "/"],
                "[!#-+\\--:<-\\[\\]-~]{1,6}",
            )
        }

        fn property() -> BoxedStrategy<String> {
            prop_oneof![
                (ows(), key(), ows()).prop_map(|(a, k, b)| format!("{a}{k}{b}")),
                (ows(), key(), ows(), ows(), value(), ows())
                    .prop_map(|(a, k, b, c, v, d)| format!("{a}{k}{b}={c}{v}{d}")),
                Just(String::new()),
            ]
            .boxed()
        }

        fn member() -> BoxedStrategy<String> {
            prop_oneof![
                8 => (ows(), key(), ows(), ows(), value(), ows(),
                      proptest::collection::vec(property(), 0..3))
                    .prop_map(|(a, k, b, c, v, d, props)| {
                        let mut m = format!("{a}{k}{b}={c}{v}{d}");
                        for p in props {
                            m.push(';');
                            m.push_str(&p);
                        }
                        m
                    }),
                1 => Just(String::new()),
                1 => ows().prop_map(str::to_owned),
                1 => key(),
                1 => "[ -~]{0,12}",
                1 => "\\PC{0,8}",
            ]
            .boxed()
        }

        fn header(members: std::ops::Range<usize>) -> impl Strategy<Value = String> {
            let separator = proptest::sample::select(&[",", ",", ", ", " ,", ",,"][..]);
            proptest::collection::vec((member(), separator), members).prop_map(|parts| {
                let mut h = String::new();
                for (m, s) in parts {
                    h.push_str(&m);
                    h.push_str(s);
                }
                h
            })
        }

        /// Long headers and many members, around the 64-member and 8192-byte limits.
        fn big_header() -> impl Strategy<Value = String> {
            let member = prop_oneof![
                4 => ("[a-z]{1,4}", 0_usize..300).prop_map(|(k, n)| format!("{k}={}", "x".repeat(n))),
                1 => Just(String::new()),
                1 => "[a-z]{1,3}",
            ];
            proptest::collection::vec(member, 0..100).prop_map(|m| m.join(","))
        }

        fn base_context() -> impl Strategy<Value = Context> {
            prop_oneof![
                Just(Context::new()),
                Just(Context::new().with_baggage([KeyValueMetadata::new("pre", "1", "p")])),
            ]
        }

        fn check_extract(header: &str, base: &Context) -> Result<(), TestCaseError> {
            let ours = W3cBaggagePropagator::new().extract_with_context(base, &headers(header));
            let Some(oracle) = sdk_oracle(header) else {
                return Err(TestCaseError::reject("the rewrite alone is over the limit"));
            };
            let sdk = BaggagePropagator::new().extract_with_context(base, &headers(&oracle));
            prop_assert_eq!(
                entries(ours.baggage()),
                entries(sdk.baggage()),
                "header {:?}",
                header
            );
            // Re-injected, the two contexts give the same members. Two Baggage maps, so two
            // iteration orders: compare the `,`-separated pieces as sorted lists.
            let pieces = |h: Option<String>| {
                let mut p: Vec<String> = h
                    .iter()
                    .flat_map(|h| h.split(','))
                    .map(str::to_owned)
                    .collect();
                p.sort_unstable();
                p
            };
            prop_assert_eq!(pieces(inject(&ours)), pieces(sdk_inject(&sdk)));
            Ok(())
        }

        fn baggage_value() -> BoxedStrategy<Value> {
            prop_oneof![
                8 => "\\PC{0,10}".prop_map(Value::from),
                2 => proptest::collection::vec(any::<char>(), 0..8)
                    .prop_map(|c| Value::from(c.into_iter().collect::<String>())),
                1 => any::<i64>().prop_map(Value::I64),
                1 => any::<f64>().prop_map(Value::F64),
                1 => any::<bool>().prop_map(Value::Bool),
            ]
            .boxed()
        }

        proptest! {
            #[test]
            fn extract_matches_sdk(header in header(0..8), base in base_context()) {
                check_extract(&header, &base)?;
            }

            #[test]
            fn inject_matches_sdk(
                members in proptest::collection::vec(
                    (key(), baggage_value(), prop_oneof![Just(String::new()), "\\PC{0,10}", property()]),
                    0..12,
                ),
            ) {
                let cx = Context::new().with_baggage(
                    members.into_iter().map(|(k, v, m)| KeyValueMetadata::new(k, v, m)),
                );
                // Both iterate the same Baggage (one HashMap, unchanged), so its order is the
                // same and the headers compare as strings.
                prop_assert_eq!(inject(&cx), sdk_inject(&cx));
                if let Some(header) = inject(&cx) {
                    // What one injects the other reads alike.
                    prop_assert_eq!(
                        entries(W3cBaggagePropagator::new().extract(&headers(&header)).baggage()),
                        entries(BaggagePropagator::new().extract(&headers(&header)).baggage())
                    );
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn extract_big_headers_matches_sdk(header in big_header(), base in base_context()) {
                check_extract(&header, &base)?;
            }
        }
    }
}
