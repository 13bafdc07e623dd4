//! Attribute strings shared instead of made per span: partition ids, destination names,
//! span names and the metric attribute lists of a client's operations.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::{KeyValue, StringValue, Value};

use crate::semconv;

/// A partition number as the string value of `messaging.destination.partition.id`.
///
/// Partitions 0 to 1023 are slices of one string made on first use and kept for the life of
/// the process, so recording a partition on every message's spans and links costs no
/// allocation and no reference count (a value shared through an `Arc` would have its count
/// bumped by the thread that records and dropped by the export thread, one contended cache
/// line for every link of a batch); others are formatted.
///
/// # Example
///
/// ```
/// assert_eq!(mqtrace_core::span::partition_id(3).as_str(), "3");
/// assert_eq!(mqtrace_core::span::partition_id(1023).as_str(), "1023");
/// assert_eq!(mqtrace_core::span::partition_id(-1).as_str(), "-1");
/// ```
pub fn partition_id(partition: i32) -> StringValue {
    const SHARED: usize = 1024;
    /// "0123…10231023": every shared id, and where each one ends.
    struct Ids {
        digits: String,
        ends: Vec<usize>,
    }
    static IDS: std::sync::OnceLock<Ids> = std::sync::OnceLock::new();
    match usize::try_from(partition) {
        Ok(index) if index < SHARED => {
            let ids: &'static Ids = IDS.get_or_init(|| {
                let mut digits = String::new();
                let mut ends = Vec::with_capacity(SHARED);
                for p in 0..SHARED {
                    digits.push_str(&p.to_string());
                    ends.push(digits.len());
                }
                Ids { digits, ends }
            });
            let start = index.checked_sub(1).map_or(0, |before| ids.ends[before]);
            let id: &'static str = &ids.digits[start..ids.ends[index]];
            StringValue::from(id)
        }
        _ => StringValue::from(partition.to_string()),
    }
}

/// A destination (topic, queue, exchange) name as an attribute string, shared between the
/// messages that name it.
///
/// A client records its destination on every message's spans and metrics; copying the name
/// each time is an allocation per span. The name is made once ([`attribute_string`]: kept
/// for the life of the process, so recording it is a plain copy of a `&'static str` — no
/// reference count bumped on the recording thread and dropped again on the export thread),
/// and each thread keeps the last few names it saw (`DESTINATION_CACHE` of them, most recent
/// first), so a hit costs a short string compare: no lock, no allocation.
///
/// # Example
///
/// ```
/// use mqtrace_core::span::destination_name;
///
/// let first = destination_name("orders");
/// let second = destination_name("orders");
/// assert_eq!(first.as_str(), "orders");
/// assert!(std::ptr::eq(first.as_str(), second.as_str())); // the same string, not a copy
/// ```
pub fn destination_name(name: &str) -> StringValue {
    const DESTINATION_CACHE: usize = 16;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<StringValue>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let cached = RECENT.try_with(|recent| {
        let mut recent = recent.borrow_mut();
        match recent.iter().position(|seen| seen.as_str() == name) {
            Some(index) => {
                recent[..=index].rotate_right(1);
                recent[0].clone()
            }
            None => {
                let made = attribute_string(name);
                recent.truncate(DESTINATION_CACHE - 1);
                recent.insert(0, made.clone());
                made
            }
        }
    });
    // Only while the thread is being torn down is the cache gone.
    cached.unwrap_or_else(|_| attribute_string(name))
}

/// Distinct attribute strings kept for the life of the process (see [`attribute_string`]).
const INTERNED_STRINGS: usize = 1024;

/// `value` as an attribute string for a low-cardinality value a client records on every
/// message (a destination, a consumer group, a broker address): kept for the life of the
/// process (at most 1,024 distinct ones, a few tens of KiB), so a span or metric that
/// records it copies a `&'static str` and touches no reference count. Past that bound, a
/// reference-counted string as before. Takes a lock: call it once per value (when a client
/// is built, or through a per-thread cache like [`destination_name`]), not per message.
///
/// # Example
///
/// ```
/// use mqtrace_core::span::attribute_string;
///
/// let group = attribute_string("scorers");
/// assert_eq!(group.as_str(), "scorers");
/// assert!(std::ptr::eq(group.as_str(), attribute_string("scorers").as_str()));
/// ```
pub fn attribute_string(value: &str) -> StringValue {
    static STRINGS: Interned = Interned::new(INTERNED_STRINGS);
    match STRINGS.intern(value.to_owned()) {
        Ok(kept) => StringValue::from(kept),
        Err(value) => StringValue::from(Arc::<str>::from(value)),
    }
}

/// The metric attributes of a messaging operation (`messaging.system`,
/// `messaging.operation.name`, then the destination, consumer group and server, those that
/// are given), shared per thread: see [`shared_metric_attributes`].
pub(crate) fn shared_attributes(
    system: &'static str,
    operation_name: &'static str,
    destination: Option<StringValue>,
    consumer_group: Option<StringValue>,
    server: Option<(StringValue, i64)>,
) -> Arc<[KeyValue]> {
    shared_metric_attributes(MetricKey {
        system,
        operation_name,
        destination,
        consumer_group,
        server,
    })
}

/// Distinct span names kept for the life of the process (see [`interned_span_name`]).
const INTERNED_NAMES: usize = 1024;

/// The span name `{operation} {destination}` (or the bare operation), interned.
///
/// Span names are low-cardinality by design (an operation and a destination), and the SDK
/// keeps each span's name as a `Cow<'static, str>`: made per span, it is an allocation and
/// a copy for every message, freed again on the export thread. Instead each distinct name
/// is made once and kept for the life of the process (at most [`INTERNED_NAMES`] of them,
/// a few tens of KiB; beyond that, names are made per span as before), and each thread
/// remembers the last few it used, so a span finds its name with a short compare.
pub(super) fn interned_span_name(
    operation: &'static str,
    destination: Option<&str>,
) -> Cow<'static, str> {
    const RECENT_NAMES: usize = 16;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<&'static str>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let Some(destination) = destination else {
        return Cow::Borrowed(operation);
    };
    let is_name = |name: &str| {
        name.len() == operation.len() + 1 + destination.len()
            && name.starts_with(operation)
            && name.as_bytes()[operation.len()] == b' '
            && name.ends_with(destination)
    };
    let recent = RECENT.try_with(|recent| {
        let mut recent = recent.try_borrow_mut().ok()?;
        if let Some(name) = recent.iter().find(|name| is_name(name)) {
            return Some(Cow::Borrowed(*name));
        }
        match intern(format!("{operation} {destination}")) {
            Ok(interned) => {
                recent.truncate(RECENT_NAMES - 1);
                recent.insert(0, interned);
                Some(Cow::Borrowed(interned))
            }
            // The table is full: the name made for it serves this span.
            Err(name) => Some(Cow::Owned(name)),
        }
    });
    match recent {
        Ok(Some(name)) => name,
        _ => Cow::Owned(format!("{operation} {destination}")),
    }
}

/// Strings kept for the life of the process, at most `limit` of them.
struct Interned {
    kept: std::sync::Mutex<Vec<&'static str>>,
    full: std::sync::atomic::AtomicBool,
    limit: usize,
}

impl Interned {
    const fn new(limit: usize) -> Self {
        Self {
            kept: std::sync::Mutex::new(Vec::new()),
            full: std::sync::atomic::AtomicBool::new(false),
            limit,
        }
    }

    /// `value` as a string that lives as long as the process, or `value` back once `limit`
    /// strings are kept. A full table is known without taking the lock, so past it a value
    /// costs what it did before interning, not a locked search.
    fn intern(&self, value: String) -> Result<&'static str, String> {
        if self.full.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(value);
        }
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(same) = kept.iter().find(|same| **same == value) {
            return Ok(same);
        }
        if kept.len() >= self.limit {
            self.full.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(value);
        }
        let leaked: &'static str = Box::leak(value.into_boxed_str());
        kept.push(leaked);
        Ok(leaked)
    }
}

/// `name` as a span name that lives as long as the process, or `name` back once
/// [`INTERNED_NAMES`] names are kept.
fn intern(name: String) -> Result<&'static str, String> {
    static NAMES: Interned = Interned::new(INTERNED_NAMES);
    NAMES.intern(name)
}

/// What a span's metric attributes are made of.
struct MetricKey {
    system: &'static str,
    operation_name: &'static str,
    destination: Option<StringValue>,
    consumer_group: Option<StringValue>,
    server: Option<(StringValue, i64)>,
}

impl MetricKey {
    fn matches(&self, other: &MetricKey) -> bool {
        fn same(a: &Option<StringValue>, b: &Option<StringValue>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => same_str(a.as_str(), b.as_str()),
                (None, None) => true,
                _ => false,
            }
        }
        let server = match (&self.server, &other.server) {
            (Some((a, p)), Some((b, q))) => p == q && same_str(a.as_str(), b.as_str()),
            (None, None) => true,
            _ => false,
        };
        same_str(self.system, other.system)
            && same_str(self.operation_name, other.operation_name)
            && server
            && same(&self.destination, &other.destination)
            && same(&self.consumer_group, &other.consumer_group)
    }

    /// `messaging.system`, `messaging.operation.name`, then the destination, consumer group
    /// and server, those that are set.
    fn attributes(&self) -> Arc<[KeyValue]> {
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new(semconv::MESSAGING_SYSTEM, self.system));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_OPERATION_NAME,
            self.operation_name,
        ));
        if let Some(destination) = &self.destination {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_NAME,
                Value::String(destination.clone()),
            ));
        }
        if let Some(group) = &self.consumer_group {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                Value::String(group.clone()),
            ));
        }
        if let Some((address, port)) = &self.server {
            attributes.push(KeyValue::new(
                semconv::SERVER_ADDRESS,
                Value::String(address.clone()),
            ));
            attributes.push(KeyValue::new(semconv::SERVER_PORT, *port));
        }
        attributes.into()
    }
}

/// The metric attributes for `key`, shared: each thread keeps the last few lists it made
/// (`METRIC_ATTRIBUTE_CACHE` of them, newest first), so the spans of one client share
/// one list instead of each copying five or six attributes into a vector of its own. A hit
/// compares a few addresses (the client's strings are shared); a miss makes the list once.
fn shared_metric_attributes(key: MetricKey) -> Arc<[KeyValue]> {
    const METRIC_ATTRIBUTE_CACHE: usize = 16;
    thread_local! {
        static RECENT: std::cell::RefCell<Vec<(MetricKey, Arc<[KeyValue]>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut key = Some(key);
    let cached = RECENT
        .try_with(|recent| {
            let mut recent = recent.try_borrow_mut().ok()?;
            let probe = key.as_ref()?;
            // Not reordered on a hit: a client alternates between a few lists (send,
            // receive, process), and moving the entries would cost more than the search.
            match recent.iter().find(|(seen, _)| seen.matches(probe)) {
                Some((_, shared)) => Some(Arc::clone(shared)),
                None => {
                    let key = key.take()?;
                    let made = key.attributes();
                    recent.truncate(METRIC_ATTRIBUTE_CACHE - 1);
                    recent.insert(0, (key, Arc::clone(&made)));
                    Some(made)
                }
            }
        })
        .ok()
        .flatten();
    // Without the cache (the thread is being torn down), made for this span alone.
    cached.unwrap_or_else(|| key.map_or_else(|| Arc::from([]), |key| key.attributes()))
}

/// Whether two strings are equal: by address and length first, by bytes otherwise (shared
/// strings usually sit at the same address, which settles it without comparing bytes).
#[inline]
pub(crate) fn same_str(a: &str, b: &str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
}
