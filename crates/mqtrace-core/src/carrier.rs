//! Header carriers: OpenTelemetry [`Extractor`]/[`Injector`] over any broker's message headers.
//!
//! Broker crates implement [`HeaderSource`] for their client's header type (rdkafka
//! `BorrowedHeaders`, lapin `FieldTable`, ...). [`HeaderExtractor`] then applies mqtrace's
//! header rules on top of it, the same for every broker:
//!
//! - keys compare case-insensitively;
//! - values are raw bytes and must be UTF-8 to be read (strings and byte arrays alike);
//! - when a key occurs several times the **last** occurrence wins (forwarders that append
//!   put the newest value last), while [`Extractor::get_all`] still shows every occurrence;
//! - a value that is not UTF-8, is not a text value, or is longer than
//!   [`HeaderPolicy::max_value_len`] is ignored and remembered as an [`InvalidHeader`], never
//!   a panic.
//!
//! On the write side, [`InjectedHeaders`] collects what a propagator writes so that the broker
//! crate can *replace* the propagator's fields in the outgoing headers instead of appending.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fmt;

use opentelemetry::propagation::{Extractor, Injector};

/// Default upper bound on the length of one propagation header value, in bytes.
///
/// The W3C Baggage specification allows at most 8192 bytes; `traceparent` is 55 bytes and
/// `tracestate` is recommended to stay under 512, so anything beyond this is garbage.
pub const DEFAULT_MAX_VALUE_LEN: usize = 8192;

/// Read access to a message's headers, in wire order.
///
/// Implemented by the broker crates for their header types. A header whose value is not a
/// byte or string value (an AMQP integer, a Kafka null) is reported with `None`.
///
/// # Example
///
/// ```
/// use mqtrace_core::carrier::HeaderSource;
///
/// struct Pairs(Vec<(String, Vec<u8>)>);
///
/// impl HeaderSource for Pairs {
///     fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
///         for (key, value) in &self.0 {
///             visit(key, Some(value));
///         }
///     }
/// }
/// ```
pub trait HeaderSource {
    /// Calls `visit` once for every header, in order, with its key and raw value.
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>));
}

impl<S: HeaderSource + ?Sized> HeaderSource for &S {
    fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
        (**self).for_each_header(visit)
    }
}

/// The empty header set, for messages that carry no headers at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl HeaderSource for NoHeaders {
    fn for_each_header<'a>(&'a self, _visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {}
}

/// Limits applied when reading propagation headers.
///
/// # Example
///
/// ```
/// use mqtrace_core::carrier::HeaderPolicy;
///
/// let policy = HeaderPolicy::default().with_max_value_len(1024);
/// assert_eq!(policy.max_value_len(), 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPolicy {
    max_value_len: usize,
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        Self {
            max_value_len: DEFAULT_MAX_VALUE_LEN,
        }
    }
}

impl HeaderPolicy {
    /// Values longer than `len` bytes are ignored (and counted as oversized).
    pub fn with_max_value_len(mut self, len: usize) -> Self {
        self.max_value_len = len;
        self
    }

    /// The longest value, in bytes, that is read.
    pub fn max_value_len(&self) -> usize {
        self.max_value_len
    }
}

/// Why a propagation header was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidReason {
    /// The value's bytes are not UTF-8.
    NotUtf8,
    /// The value is longer than [`HeaderPolicy::max_value_len`].
    Oversized,
    /// The header is null or of a non-text type (e.g. an AMQP integer).
    NotText,
    /// The value was read but the propagator found no valid context in it.
    Rejected,
}

impl InvalidReason {
    /// A short, low-cardinality name, used as the `reason` attribute of the
    /// `mqtrace.propagation.invalid` counter.
    pub fn as_str(&self) -> &'static str {
        match self {
            InvalidReason::NotUtf8 => "not_utf8",
            InvalidReason::Oversized => "oversized",
            InvalidReason::NotText => "not_text",
            InvalidReason::Rejected => "rejected",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A propagation header that was present but ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHeader {
    /// The header's key, as the propagator asked for it.
    pub key: Cow<'static, str>,
    /// Why it was ignored.
    pub reason: InvalidReason,
}

/// An [`Extractor`] over any [`HeaderSource`], applying mqtrace's header rules.
///
/// Reading never allocates except in [`Extractor::keys`] and [`Extractor::get_all`], whose
/// signatures return vectors.
///
/// # Example
///
/// ```
/// use mqtrace_core::carrier::{HeaderExtractor, HeaderPolicy, HeaderSource};
/// use opentelemetry::propagation::Extractor;
///
/// struct Pairs(Vec<(&'static str, &'static [u8])>);
/// impl HeaderSource for Pairs {
///     fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
///         for (key, value) in &self.0 {
///             visit(key, Some(value));
///         }
///     }
/// }
///
/// let headers = Pairs(vec![("TraceParent", b"old"), ("traceparent", b"new")]);
/// let extractor = HeaderExtractor::new(&headers, HeaderPolicy::default());
/// assert_eq!(extractor.get("traceparent"), Some("new"));
/// assert_eq!(extractor.get_all("traceparent"), Some(vec!["old", "new"]));
/// ```
pub struct HeaderExtractor<'a, S: ?Sized> {
    source: &'a S,
    policy: HeaderPolicy,
    invalid: Cell<Option<(&'static str, InvalidReason)>>,
}

impl<S: ?Sized> fmt::Debug for HeaderExtractor<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderExtractor")
            .field("policy", &self.policy)
            .field("invalid", &self.invalid.get())
            .finish_non_exhaustive()
    }
}

impl<'a, S: HeaderSource + ?Sized> HeaderExtractor<'a, S> {
    /// Wraps `source`, reading it under `policy`.
    pub fn new(source: &'a S, policy: HeaderPolicy) -> Self {
        Self {
            source,
            policy,
            invalid: Cell::new(None),
        }
    }

    /// The first propagation header that was asked for and ignored, if any.
    pub fn invalid(&self) -> Option<InvalidHeader> {
        self.invalid.get().map(|(key, reason)| InvalidHeader {
            key: Cow::Borrowed(key),
            reason,
        })
    }

    pub(crate) fn mark_invalid(&self, key: &str, reason: InvalidReason) {
        if self.invalid.get().is_none() {
            self.invalid.set(Some((static_key(key), reason)));
        }
    }

    /// Whether a header named `key` (any case) is present, whatever its value.
    pub fn contains(&self, key: &str) -> bool {
        let mut found = false;
        self.source.for_each_header(&mut |k, _| {
            found |= k.eq_ignore_ascii_case(key);
        });
        found
    }

    fn validate(&self, value: Option<&'a [u8]>) -> Result<&'a str, InvalidReason> {
        let bytes = value.ok_or(InvalidReason::NotText)?;
        if bytes.len() > self.policy.max_value_len {
            return Err(InvalidReason::Oversized);
        }
        std::str::from_utf8(bytes).map_err(|_| InvalidReason::NotUtf8)
    }
}

impl<S: HeaderSource + ?Sized> Extractor for HeaderExtractor<'_, S> {
    fn get(&self, key: &str) -> Option<&str> {
        let mut last: Option<Option<&[u8]>> = None;
        self.source.for_each_header(&mut |k, v| {
            if k.eq_ignore_ascii_case(key) {
                last = Some(v);
            }
        });
        match self.validate(last?) {
            Ok(value) => Some(value),
            Err(reason) => {
                self.mark_invalid(key, reason);
                None
            }
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        self.source.for_each_header(&mut |k, _| {
            if !keys.iter().any(|seen| seen.eq_ignore_ascii_case(k)) {
                keys.push(k);
            }
        });
        keys
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let mut values = Vec::new();
        self.source.for_each_header(&mut |k, v| {
            if k.eq_ignore_ascii_case(key) {
                match self.validate(v) {
                    Ok(value) => values.push(value),
                    Err(reason) => self.mark_invalid(key, reason),
                }
            }
        });
        (!values.is_empty()).then_some(values)
    }
}

/// The well-known propagation keys.
const KNOWN: [&str; 3] = ["traceparent", "tracestate", "baggage"];

/// The index of `key` (any case) in [`KNOWN`].
fn known_index(key: &str) -> Option<usize> {
    KNOWN
        .iter()
        .position(|known| known.eq_ignore_ascii_case(key))
}

/// Maps the well-known propagation keys to static strings, so recording them costs nothing.
pub(crate) fn static_key(key: &str) -> &'static str {
    known_index(key).map_or("other", |index| KNOWN[index])
}

fn key_cow(key: &str) -> Cow<'static, str> {
    match static_key(key) {
        "other" => Cow::Owned(key.to_ascii_lowercase()),
        known => Cow::Borrowed(known),
    }
}

/// What a propagator wrote, ready to be merged into a message's headers.
///
/// Broker crates remove every header named in [`InjectedHeaders::replaces`] (any case) from
/// the outgoing message and append [`InjectedHeaders::iter`], so an existing `traceparent`,
/// `tracestate` or `baggage` is replaced, never duplicated. When the propagator wrote nothing
/// (no valid context), [`InjectedHeaders::is_empty`] is true and the headers pass through
/// untouched.
///
/// # Example
///
/// ```
/// use mqtrace_core::carrier::InjectedHeaders;
/// use opentelemetry::propagation::Injector;
///
/// let mut injected = InjectedHeaders::default();
/// injected.set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
/// assert!(injected.replaces("TraceParent"));
/// assert_eq!(injected.iter().count(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InjectedHeaders {
    /// The first header written (usually the only one: `traceparent`), kept inline so an
    /// injection allocates nothing but its values.
    first: Option<(Cow<'static, str>, String)>,
    /// The others, in order.
    rest: Vec<(Cow<'static, str>, String)>,
    /// The well-known fields the propagator owns, one bit per [`KNOWN`] key: recorded on
    /// every send, so without an allocation.
    known_fields: u8,
    /// The propagator's other fields, lowercased.
    fields: Vec<Cow<'static, str>>,
}

thread_local! {
    /// Header value strings of [`InjectedHeaders`] dropped on this thread, for the next
    /// injection's values ([`header_value_buffer`]): a message's `traceparent` then
    /// allocates nothing once the thread has sent one.
    static SPARE_VALUES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Spare value strings kept per thread, and the largest one kept (bigger ones are freed).
const SPARE_VALUES_KEPT: usize = 4;
const SPARE_VALUE_MAX_CAPACITY: usize = 512;

/// An empty string with room for `capacity` bytes, for a header value a propagator is about
/// to [`Injector::set`]: one of this thread's spares when there is one (the values of
/// [`InjectedHeaders`] dropped here), else a new one. mqtrace's W3C propagator writes its
/// `traceparent` into one; any propagator may.
///
/// # Example
///
/// ```
/// use mqtrace_core::carrier::header_value_buffer;
///
/// let mut value = header_value_buffer(55);
/// value.push_str("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
/// assert_eq!(value.len(), 55);
/// ```
pub fn header_value_buffer(capacity: usize) -> String {
    let spare = SPARE_VALUES
        .try_with(|spares| spares.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    match spare {
        Some(mut value) => {
            value.clear();
            value.reserve(capacity);
            value
        }
        None => String::with_capacity(capacity),
    }
}

fn give_back_value(value: String) {
    if value.capacity() == 0 || value.capacity() > SPARE_VALUE_MAX_CAPACITY {
        return;
    }
    let _ = SPARE_VALUES.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut()
            && spares.len() < SPARE_VALUES_KEPT
        {
            spares.push(value);
        }
    });
}

impl Drop for InjectedHeaders {
    fn drop(&mut self) {
        if let Some((_, value)) = self.first.take() {
            give_back_value(value);
        }
        for (_, value) in self.rest.drain(..) {
            give_back_value(value);
        }
    }
}

impl InjectedHeaders {
    /// Records that the propagator owns `field`: an existing header of that name is dropped
    /// from the outgoing message whenever anything is injected.
    pub fn add_field(&mut self, field: &str) {
        match known_index(field) {
            Some(index) => self.known_fields |= 1 << index,
            None => {
                if !self.fields.iter().any(|f| f.eq_ignore_ascii_case(field)) {
                    self.fields.push(key_cow(field));
                }
            }
        }
    }

    /// Whether a header named `key` must be removed before appending the injected ones.
    pub fn replaces(&self, key: &str) -> bool {
        !self.is_empty()
            && (known_index(key).is_some_and(|index| self.known_fields & (1 << index) != 0)
                || self.fields.iter().any(|f| f.eq_ignore_ascii_case(key))
                || self.entries().any(|(k, _)| k.eq_ignore_ascii_case(key)))
    }

    /// True when the propagator wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The injected headers, in the order the propagator wrote them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    fn entries(&self) -> impl Iterator<Item = &(Cow<'static, str>, String)> {
        self.first.iter().chain(&self.rest)
    }
}

impl Injector for InjectedHeaders {
    /// Records `key: value`; a later value for the same key replaces the earlier one. Empty
    /// values are not written (the SDK's Trace Context propagator sets an empty `tracestate`
    /// when there is none, which would only add an empty header to every message).
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let Some(slot) = self
            .first
            .iter_mut()
            .chain(&mut self.rest)
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            slot.1 = value;
        } else if self.first.is_none() {
            self.first = Some((key_cow(key), value));
        } else {
            self.rest.push((key_cow(key), value));
        }
    }

    fn reserve(&mut self, additional: usize) {
        let inline = usize::from(self.first.is_none());
        self.rest.reserve(additional.saturating_sub(inline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pairs(Vec<(String, Option<Vec<u8>>)>);

    impl HeaderSource for Pairs {
        fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
            for (k, v) in &self.0 {
                visit(k, v.as_deref());
            }
        }
    }

    fn pairs(items: &[(&str, Option<&[u8]>)]) -> Pairs {
        Pairs(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
        )
    }

    #[test]
    fn keys_compare_case_insensitively_and_last_wins() {
        let h = pairs(&[("TRACEPARENT", Some(b"a")), ("traceParent", Some(b"b"))]);
        let x = HeaderExtractor::new(&h, HeaderPolicy::default());
        assert_eq!(x.get("traceparent"), Some("b"));
        assert_eq!(x.get_all("traceparent"), Some(vec!["a", "b"]));
        assert_eq!(x.keys(), vec!["TRACEPARENT"]);
        assert!(x.invalid().is_none());
    }

    #[test]
    fn missing_key_is_none_and_not_invalid() {
        let h = pairs(&[("app", Some(b"1"))]);
        let x = HeaderExtractor::new(&h, HeaderPolicy::default());
        assert_eq!(x.get("traceparent"), None);
        assert_eq!(x.get_all("traceparent"), None);
        assert!(x.invalid().is_none());
    }

    #[test]
    fn non_utf8_value_is_ignored_and_reported() {
        let h = pairs(&[("traceparent", Some(&[0xff, 0xfe]))]);
        let x = HeaderExtractor::new(&h, HeaderPolicy::default());
        assert_eq!(x.get("traceparent"), None);
        assert_eq!(
            x.invalid(),
            Some(InvalidHeader {
                key: "traceparent".into(),
                reason: InvalidReason::NotUtf8
            })
        );
    }

    #[test]
    fn last_occurrence_decides_even_when_invalid() {
        let h = pairs(&[("traceparent", Some(b"good")), ("traceparent", None)]);
        let x = HeaderExtractor::new(&h, HeaderPolicy::default());
        assert_eq!(x.get("traceparent"), None);
        assert_eq!(x.invalid().map(|i| i.reason), Some(InvalidReason::NotText));
    }

    #[test]
    fn oversized_value_is_ignored() {
        let big = vec![b'a'; 65];
        let h = pairs(&[("baggage", Some(&big))]);
        let x = HeaderExtractor::new(&h, HeaderPolicy::default().with_max_value_len(64));
        assert_eq!(x.get("baggage"), None);
        assert_eq!(
            x.invalid().map(|i| i.reason),
            Some(InvalidReason::Oversized)
        );
    }

    #[test]
    fn injected_headers_replace_fields_only_when_something_was_written() {
        let mut inj = InjectedHeaders::default();
        inj.add_field("traceparent");
        inj.add_field("tracestate");
        assert!(
            !inj.replaces("traceparent"),
            "nothing injected: pass through"
        );
        inj.set("traceparent", "v1".into());
        inj.set("TraceParent", "v2".into());
        assert!(inj.replaces("TRACESTATE"));
        assert!(!inj.replaces("app"));
        inj.set("tracestate", String::new());
        assert_eq!(inj.iter().collect::<Vec<_>>(), vec![("traceparent", "v2")]);
    }
}
