//! [`MessagingSpan`]: a started messaging span that records its semconv metrics when it
//! ends, and the W3C random flag kept for spans the sampler drops.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue, StringValue, Value};

use super::OperationType;
use crate::error_type::{ErrorType, error_type_name};
use crate::metrics::MessagingMetrics;
use crate::semconv;
use crate::trace_context::RANDOM_FLAG;

/// `parent` with `span` active, the W3C Level 2 *random* flag of the trace kept.
///
/// OpenTelemetry's SDK (0.33.1) gives a span its sampler drops the flags `00`, whatever the
/// trace it continues carries, so a `02` (random, not sampled) context would leave the
/// process as `00` (upstream: open-telemetry/opentelemetry-rust#3270). The specification
/// asks that the flag stay as long as the trace id does. When `span` does not record and
/// continues `parent`'s trace without the random flag `parent` has, the context carries
/// `span`'s span context with that flag set instead of `span` itself: a dropped SDK span
/// records nothing and exports nothing, so only its context is kept, and that costs one
/// allocation fewer than the boxed span. Any other span is put in the context unchanged.
///
/// mqtrace's messaging spans go through this; use it for your own spans that carry a
/// message's context onward.
///
/// # Example
///
/// ```
/// use mqtrace_core::span::with_span_keeping_random;
/// use opentelemetry::trace::{
///     Span, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
///     TracerProvider,
/// };
/// use opentelemetry::Context;
/// use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
///
/// let provider = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOff).build();
/// let tracer = provider.tracer("example");
/// let parent = Context::new().with_remote_span_context(SpanContext::new(
///     TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
///     SpanId::from(0xb7ad6b7169203331),
///     TraceFlags::new(0x02),
///     true,
///     TraceState::NONE,
/// ));
/// let span = tracer.start_with_context("process orders", &parent);
/// assert_eq!(span.span_context().trace_flags(), TraceFlags::new(0x00)); // the SDK's flags
/// let cx = with_span_keeping_random(&parent, span);
/// assert_eq!(cx.span().span_context().trace_flags(), TraceFlags::new(0x02));
/// ```
pub fn with_span_keeping_random<S>(parent: &Context, span: S) -> Context
where
    S: opentelemetry::trace::Span + Send + Sync + 'static,
{
    if !span.is_recording()
        && let Some(kept) = keeping_random(parent, span.span_context())
    {
        return parent.with_remote_span_context(kept);
    }
    parent.with_span(span)
}

/// The span context of a dropped span `sc` with the random flag of the trace it continues
/// in `parent`, when the SDK left it out; `None` when nothing needs to change.
pub(crate) fn keeping_random(parent: &Context, sc: &SpanContext) -> Option<SpanContext> {
    let parent_span = parent.span();
    let continued = parent_span.span_context();
    let random = continued.trace_flags() & RANDOM_FLAG;
    (random == RANDOM_FLAG
        && sc.trace_flags() & RANDOM_FLAG != RANDOM_FLAG
        && sc.is_valid()
        && sc.trace_id() == continued.trace_id())
    .then(|| {
        SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags() | random,
            false,
            sc.trace_state().clone(),
        )
    })
}

/// A started messaging span. End it with [`MessagingSpan::end`] or
/// [`MessagingSpan::end_with_error`]; the matching semconv metrics are recorded then.
pub struct MessagingSpan {
    pub(super) cx: Context,
    pub(super) started: Instant,
    pub(super) operation_type: OperationType,
    /// Shared with the client's other spans; `error.type` is added in a copy.
    pub(super) metric_attributes: Arc<[KeyValue]>,
    pub(super) message_count: u64,
    pub(super) metrics: Option<Arc<MessagingMetrics>>,
}

impl fmt::Debug for MessagingSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessagingSpan")
            .field("span_context", self.cx.span().span_context())
            .field("operation_type", &self.operation_type)
            .field("message_count", &self.message_count)
            .finish_non_exhaustive()
    }
}

impl MessagingSpan {
    /// The parent context with this span active: run the work it measures inside it.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// This span's span context.
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// Adds an attribute known only after the span started (e.g. the offset from a
    /// delivery report).
    pub fn set_attribute(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    /// How many messages the operation covered (default 1); counted into
    /// `messaging.client.sent.messages` or `messaging.client.consumed.messages` at the end,
    /// and recorded as `messaging.batch.message_count` when it is not 1.
    pub fn set_message_count(&mut self, count: u64) {
        self.message_count = count;
        if count != 1 {
            self.set_attribute(KeyValue::new(
                semconv::MESSAGING_BATCH_MESSAGE_COUNT,
                i64::try_from(count).unwrap_or(i64::MAX),
            ));
        }
    }

    /// Runs `work` with this span's context current (so the work's own spans and logs join
    /// the trace), then ends the span: successfully on `Ok`, with error status and
    /// `error.type` = the error's full type path ([`error_type_name`], e.g.
    /// `std::io::error::Error`) on `Err`. Dropping the returned future before it completes
    /// ends the span as cancelled. For an error that supplies its own `error.type`, see
    /// [`MessagingSpan::run_with_error_type`].
    ///
    /// # Example
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use mqtrace_core::instrumentation::Instrumentation;
    /// use mqtrace_core::span::{MessagingSpanBuilder, OperationType};
    /// use opentelemetry::Context;
    ///
    /// let span = MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
    ///     .with_destination("orders")
    ///     .start(&Instrumentation::global(), &Context::current());
    /// let answer = span.run(async { Ok::<_, std::io::Error>(42) }).await?;
    /// assert_eq!(answer, 42);
    /// # Ok::<_, std::io::Error>(()) }).unwrap();
    /// ```
    pub async fn run<F, T, E>(self, work: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        use opentelemetry::context::FutureExt;
        let result = work.with_context(self.cx.clone()).await;
        match &result {
            Ok(_) => self.end(),
            Err(error) => self.end_with_error(error_type_name::<E>(), error.to_string()),
        }
        result
    }

    /// Like [`MessagingSpan::run`], but `error.type` on `Err` is the error's own
    /// [`ErrorType::error_type`] (an error code, say) instead of its type path.
    ///
    /// # Example
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::borrow::Cow;
    /// use mqtrace_core::instrumentation::Instrumentation;
    /// use mqtrace_core::span::{MessagingSpanBuilder, OperationType};
    /// use mqtrace_core::ErrorType;
    /// use opentelemetry::Context;
    ///
    /// #[derive(Debug)]
    /// struct Rejected;
    /// impl std::fmt::Display for Rejected {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("the model rejected the input")
    ///     }
    /// }
    /// impl ErrorType for Rejected {
    ///     fn error_type(&self) -> Cow<'static, str> {
    ///         "rejected".into()
    ///     }
    /// }
    ///
    /// let span = MessagingSpanBuilder::new("kafka", OperationType::Process, "process")
    ///     .with_destination("orders")
    ///     .start(&Instrumentation::global(), &Context::current());
    /// // The process span ends with error status and `error.type = rejected`.
    /// let result = span.run_with_error_type(async { Err::<(), _>(Rejected) }).await;
    /// assert!(result.is_err());
    /// # })
    /// ```
    pub async fn run_with_error_type<F, T, E>(self, work: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: fmt::Display + ErrorType,
    {
        use opentelemetry::context::FutureExt;
        let result = work.with_context(self.cx.clone()).await;
        match &result {
            Ok(_) => self.end(),
            Err(error) => self.end_with_error(error.error_type(), error.to_string()),
        }
        result
    }

    /// Ends the span successfully.
    pub fn end(mut self) {
        self.finish(None);
    }

    /// Ends the span with error status, `error.type = error_type` (low-cardinality: an error
    /// code or the full type path, see [`error_type_name`]) and `description` as the status
    /// message.
    pub fn end_with_error(
        mut self,
        error_type: impl Into<StringValue>,
        description: impl Into<Cow<'static, str>>,
    ) {
        self.finish(Some((error_type.into(), description.into())));
    }

    fn finish(&mut self, error: Option<(StringValue, Cow<'static, str>)>) {
        let Some(metrics) = self.metrics.take() else {
            return;
        };
        let seconds = self.started.elapsed().as_secs_f64();
        let span = self.cx.span();
        let with_error: Vec<KeyValue>;
        let shared = Some(&self.metric_attributes);
        let (attributes, shared): (&[KeyValue], _) = match error {
            Some((error_type, description)) => {
                let error_type = KeyValue::new(semconv::ERROR_TYPE, Value::String(error_type));
                span.set_attribute(error_type.clone());
                span.set_status(Status::error(description));
                with_error = self
                    .metric_attributes
                    .iter()
                    .cloned()
                    .chain(std::iter::once(error_type))
                    .collect();
                (&with_error, None)
            }
            None => (&self.metric_attributes, shared),
        };
        let count = self.message_count;
        match self.operation_type {
            OperationType::Create | OperationType::Send => {
                metrics.record_operation_duration_in(attributes, shared, seconds);
                metrics.record_sent_in(attributes, shared, count);
            }
            OperationType::Receive => {
                metrics.record_operation_duration_in(attributes, shared, seconds);
                metrics.record_consumed_in(attributes, shared, count);
            }
            OperationType::Settle => {
                metrics.record_operation_duration_in(attributes, shared, seconds);
            }
            OperationType::Process => {
                metrics.record_process_duration_in(attributes, shared, seconds)
            }
        }
        span.end();
    }
}

impl Drop for MessagingSpan {
    fn drop(&mut self) {
        if self.metrics.is_some() {
            self.finish(Some((
                semconv::ERROR_TYPE_CANCELLED.into(),
                "operation dropped before it completed".into(),
            )));
        }
    }
}
