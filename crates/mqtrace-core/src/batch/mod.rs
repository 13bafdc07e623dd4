//! Batches: the traits a batch worker takes messages through and sends them with, and the
//! batch `process` span that links to every message it covers.
//!
//! - [`InboundMessage`]: what a batch needs to know about one consumed message (its
//!   extracted context, payload, identity for the link).
//! - [`MessageSource`]: a cancel-safe stream of inbound messages that can settle (commit or
//!   acknowledge) a processed batch. `mqtrace-kafka` and `mqtrace-amqp` implement it for
//!   their traced consumers, so a worker is written once for both brokers.
//! - [`MessageSink`]: sends a message as a child of a given context, its `send` span linked
//!   to other spans, resolving once the broker confirmed it.
//! - [`BatchSpanBuilder`]: starts the CONSUMER `process {destination}` span of a batch. Every
//!   message with a usable context is linked, carrying its identity; links beyond the span
//!   link limit go onto INTERNAL `batch.links` child spans, so no message of a large batch is
//!   unreachable from it.

mod sink;
mod source;
mod span;

pub use sink::{MessageSink, Outgoing, SendFailure};
pub use source::{InboundMessage, MessageSource, ReceiveFailure};
pub use span::{
    BATCH_LINKS_SPAN_NAME, BatchSpan, BatchSpanBuilder, DEFAULT_LINK_LIMIT, LinkAttributes,
    MQTRACE_BATCH_FIRST_INDEX, MQTRACE_BATCH_LINK_SPANS, MQTRACE_BATCH_UNLINKED,
    link_limit_from_env,
};
