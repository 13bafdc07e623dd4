//! # mqtrace-core
//!
//! The broker-agnostic heart of mqtrace: it knows OpenTelemetry, not Kafka or RabbitMQ.
//!
//! - [`baggage`]: the W3C Baggage propagator, on the OpenTelemetry API alone (behaves as the
//!   SDK's `BaggagePropagator`, but keeps `=` inside values as the specification requires).
//! - [`batch`]: the message source/sink traits batch workers use, and the batch `process`
//!   span that links to every message (spreading links beyond the limit over child spans).
//! - [`carrier`]: [`HeaderSource`](carrier::HeaderSource) lets any client's headers be read as
//!   an OpenTelemetry `Extractor` under mqtrace's header rules (case-insensitive keys, bytes or
//!   strings, last occurrence wins, invalid or oversized values ignored);
//!   [`InjectedHeaders`](carrier::InjectedHeaders) collects what a propagator writes so it
//!   replaces, never duplicates, existing trace headers.
//! - [`propagation`]: runs the global (or a pinned) `TextMapPropagator`; mqtrace's strict
//!   W3C Trace Context + Baggage when none is installed.
//! - [`trace_context`]: the strict W3C Trace Context Level 2 propagator (passes the W3C test
//!   suite, keeps the random flag).
//! - [`span`]: `send`/`receive`/`process`/`settle` spans per the messaging semantic conventions,
//!   [`ParentMode`] and [`KeyCapture`].
//! - [`metrics`]: the semconv messaging instruments.
//! - [`instrumentation`]: tracer + instruments + propagation, shared by a wrapper.
//! - [`sampling`]: the built-in head samplers by name, so mqtrace can drop a span the
//!   sampler would drop before building it.
//!
//! It depends on the OpenTelemetry API (`opentelemetry`) only: setting up an SDK pipeline
//! (the `OTEL_*` environment, export queues, OTLP, files) is `mqtrace-telemetry`'s job.
//!
//! Broker crates (`mqtrace-kafka`, ...) implement [`HeaderSource`](carrier::HeaderSource) for
//! their header types and build on the rest.
//!
//! ```
//! use mqtrace_core::carrier::HeaderSource;
//! use mqtrace_core::propagation::{ExtractOutcome, Propagation};
//! use opentelemetry::Context;
//!
//! // Any header type becomes a carrier by listing its headers:
//! struct Headers(Vec<(String, Vec<u8>)>);
//! impl HeaderSource for Headers {
//!     fn for_each_header<'a>(&'a self, visit: &mut dyn FnMut(&'a str, Option<&'a [u8]>)) {
//!         self.0.iter().for_each(|(k, v)| visit(k, Some(v)));
//!     }
//! }
//!
//! let headers = Headers(vec![(
//!     "traceparent".into(),
//!     b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec(),
//! )]);
//! let extracted = Propagation::global().extract(&headers);
//! assert_eq!(extracted.outcome, ExtractOutcome::Found);
//! ```

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod baggage;
pub mod batch;
#[cfg(feature = "bound-instruments")]
mod bound_metrics;
pub mod carrier;
pub(crate) mod early_sampling;
pub mod error_type;
mod global_tracer;
pub mod instrumentation;
pub mod metrics;
pub mod propagation;
pub mod sampling;
pub mod semconv;
pub mod span;
pub mod trace_context;

pub use error_type::{ErrorType, error_type_name};
pub use instrumentation::Instrumentation;
pub use span::{KeyCapture, MessagingSpan, MessagingSpanBuilder, OperationType, ParentMode};
