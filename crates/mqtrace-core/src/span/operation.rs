//! The kind of a messaging operation and how a process span relates to the producer's
//! context: [`OperationType`], [`ParentMode`].

use opentelemetry::Context;
use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt};

use crate::propagation::Extracted;

/// The kind of messaging operation (`messaging.operation.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OperationType {
    /// A message is created (batch publishing only).
    Create,
    /// One or more messages are handed to the broker (PRODUCER span).
    Send,
    /// One or more messages are requested by a consumer (CLIENT span).
    Receive,
    /// One or more messages are processed by the application (CONSUMER span).
    Process,
    /// One or more messages are settled: commit, ack, nack, reject (CLIENT span).
    Settle,
}

impl OperationType {
    /// The semconv value of `messaging.operation.type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OperationType::Create => "create",
            OperationType::Send => "send",
            OperationType::Receive => "receive",
            OperationType::Process => "process",
            OperationType::Settle => "settle",
        }
    }

    /// The span kind the conventions give this operation.
    pub fn span_kind(&self) -> SpanKind {
        match self {
            OperationType::Create | OperationType::Send => SpanKind::Producer,
            OperationType::Receive | OperationType::Settle => SpanKind::Client,
            OperationType::Process => SpanKind::Consumer,
        }
    }
}

/// How a consumer's `process` span relates to the producer's context.
///
/// The messaging conventions (v1.44) make links the default relation and allow a parent for
/// single messages. mqtrace defaults to [`ParentMode::Parent`] *and* adds the link: that gives
/// one connected trace per request in Jaeger or Tempo (as the OpenTelemetry Java agent does),
/// while link-aware tools still see the creation context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ParentMode {
    /// The process span is a child of the producer's span, and links to it.
    #[default]
    Parent,
    /// The process span starts a new trace (or joins the consumer's current one) and only
    /// links to the producer's span.
    Link,
}

impl ParentMode {
    /// The parent context and links for a span that processes the message `extracted` came from.
    ///
    /// With no usable producer context, the span's parent is the caller's current context.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::carrier::NoHeaders;
    /// use mqtrace_core::propagation::Propagation;
    /// use mqtrace_core::span::ParentMode;
    ///
    /// let extracted = Propagation::global().extract(&NoHeaders);
    /// let (_parent, links) = ParentMode::Parent.parent_and_links(&extracted);
    /// assert!(links.is_empty());
    /// ```
    pub fn parent_and_links(&self, extracted: &Extracted) -> (Context, Vec<Link>) {
        let (parent, link) = self.parent_and_link(extracted);
        (parent, link.into_iter().collect())
    }

    /// Like [`ParentMode::parent_and_links`], with the one link (to the producer's
    /// context, when there is one) as an `Option`, so nothing is allocated for it until a
    /// span is built ([`MessagingSpanBuilder::with_link`](super::MessagingSpanBuilder::with_link) takes a spare vector).
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::carrier::NoHeaders;
    /// use mqtrace_core::propagation::Propagation;
    /// use mqtrace_core::span::ParentMode;
    ///
    /// let extracted = Propagation::global().extract(&NoHeaders);
    /// let (_parent, link) = ParentMode::Link.parent_and_link(&extracted);
    /// assert!(link.is_none());
    /// ```
    pub fn parent_and_link(&self, extracted: &Extracted) -> (Context, Option<Link>) {
        match (extracted.remote_span_context(), self) {
            (None, _) => (current_with_message_baggage(&extracted.context), None),
            (Some(remote), ParentMode::Parent) => {
                (extracted.context.clone(), Some(Link::with_context(remote)))
            }
            (Some(remote), ParentMode::Link) => (
                current_with_message_baggage(&extracted.context),
                Some(Link::with_context(remote)),
            ),
        }
    }
}

impl ParentMode {
    /// The parent of a settle span (commit, ack, nack, reject) for the message `extracted`
    /// came from: the current span when there is one (the process span, when the message is
    /// settled inside its handler); else, with [`ParentMode::Parent`], the producer's
    /// context, so that a message settled after its handler joins its own trace instead of
    /// starting a one-span trace. With [`ParentMode::Link`] (new traces per message, by
    /// choice) or without a producer context, the current context: a root that links to the
    /// message.
    ///
    /// # Example
    ///
    /// ```
    /// use mqtrace_core::carrier::NoHeaders;
    /// use mqtrace_core::propagation::Propagation;
    /// use mqtrace_core::span::ParentMode;
    /// use opentelemetry::trace::TraceContextExt;
    ///
    /// let extracted = Propagation::global().extract(&NoHeaders);
    /// let parent = ParentMode::Parent.settle_parent(&extracted);
    /// assert!(!parent.span().span_context().is_valid()); // no producer, no current span
    /// ```
    pub fn settle_parent(&self, extracted: &Extracted) -> Context {
        let current = Context::current();
        let inside_a_span = current.span().span_context().is_valid();
        match self {
            ParentMode::Parent if !inside_a_span && extracted.remote_span_context().is_some() => {
                extracted.context.clone()
            }
            _ => current,
        }
    }
}

/// The caller's current context, carrying the message's baggage.
fn current_with_message_baggage(message: &Context) -> Context {
    let baggage = message.baggage();
    if baggage.is_empty() {
        return Context::current();
    }
    Context::current_with_baggage(baggage.iter().map(|(key, (value, metadata))| {
        KeyValueMetadata::new(key.clone(), value.clone(), metadata.clone())
    }))
}
