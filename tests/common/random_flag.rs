//! The random-flag drill shared by the Kafka and AMQP propagation tests: a foreign producer's
//! context with flags `02`, `03`, `00` and `01` (and a tracestate) is forwarded by a traced
//! handler, and what goes onward must keep the trace id, the flags and the tracestate under
//! the forwarding send span's own id; only the sampled hops are exported.

use mqtrace_testkit::capture::SpanGraph;

/// The incoming trace id.
pub const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
/// The foreign producer's span id.
pub const INCOMING_PARENT: &str = "b7ad6b7169203331";
/// The incoming tracestate.
pub const TRACESTATE: &str = "congo=t61rcWkgMzE";
/// The flags sent, in order: random unsampled, random sampled, neither, sampled.
pub const FLAGS: [&str; 4] = ["02", "03", "00", "01"];

/// The `traceparent` the foreign producer sends with `flags`.
pub fn incoming_traceparent(flags: &str) -> String {
    format!("00-{TRACE_ID}-{INCOMING_PARENT}-{flags}")
}

/// What was forwarded for an incoming `flags`: the trace continues under a new span id with
/// the same flags and tracestate.
pub fn assert_forwarded(flags: &str, traceparent: Option<String>, tracestate: Option<String>) {
    let traceparent = traceparent.expect("a traceparent is sent onward");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[1], TRACE_ID, "{flags}: the trace continues");
    assert_ne!(
        fields[2], INCOMING_PARENT,
        "{flags}: the send span's own id"
    );
    assert_eq!(fields[3], flags, "{flags} in, {traceparent} out");
    assert_eq!(tracestate.as_deref(), Some(TRACESTATE), "{flags}");
}

/// The sampled hops (`01`, `03`) are exported with their flags under each of `names`; the
/// unsampled ones export nothing.
pub fn assert_only_sampled_hops_exported(spans: &SpanGraph, names: &[String]) {
    for name in names {
        let mut exported: Vec<u8> = spans
            .named(name)
            .iter()
            .map(|span| span.span_context.trace_flags().to_u8())
            .collect();
        exported.sort_unstable();
        assert_eq!(exported, [0x01, 0x03], "{name}");
    }
}
