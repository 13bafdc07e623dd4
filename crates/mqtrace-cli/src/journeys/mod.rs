//! `mqtrace journeys`: rebuilds each request's journey across span links from exported
//! OTLP-JSON traces — request send, queue wait, batch wait, the batch's feature, model and
//! postprocess stages, reply send, reply delivery — with its critical path, stage percentiles
//! for the run, the slowest requests and the requests whose chain is broken (and why).
//!
//! It also reads the metrics beside the traces (`metrics.jsonl`): when the span pipeline
//! reported dropped spans (`mqtrace.telemetry.spans.dropped`), the report says the telemetry
//! is incomplete, and journeys cut where a span is missing are told apart from real context
//! breaks ([`Outcome::Incomplete`] vs [`Outcome::Broken`], see [`rebuild_with`]). Requests
//! that left no span at all are counted from the producers' `messaging.client.sent.messages`.
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//! use mqtrace_cli::journeys::{MetricSet, Report, SpanSet, metrics_beside, rebuild_with};
//!
//! let dir = Path::new("telemetry");
//! let mut spans = SpanSet::new();
//! spans.read_path(dir)?;
//! let mut metrics = MetricSet::new();
//! for file in metrics_beside(dir) {
//!     metrics.read_file(&file)?;
//! }
//! let journeys = rebuild_with(&spans, &metrics.dropped_spans());
//! let report = Report::new(&journeys, &spans.errors, 10).with_metrics(&metrics);
//! println!("{}", report.to_text());
//! # Ok::<_, mqtrace_cli::journeys::ReadError>(())
//! ```

mod html;
mod metrics_json;
mod otlp_json;
mod rebuild;
mod report;

pub use html::{MAX_ROWS, render as render_html};
pub use metrics_json::{DroppedSpans, MetricSet, SPANS_DROPPED, metrics_beside};
pub use otlp_json::{Kind, LineError, ReadError, SpanRecord, SpanRef, SpanSet};
pub use rebuild::{
    BrokenReason, Gap, Journey, Journeys, Outcome, Phase, Stage, Step, rebuild, rebuild_with,
};
pub use report::{Percentiles, Report, journey_json};
