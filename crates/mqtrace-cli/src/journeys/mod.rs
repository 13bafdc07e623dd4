//! `mqtrace journeys`: rebuilds each request's journey across span links from exported
//! OTLP-JSON traces — request send, queue wait, batch wait, the batch's feature, model and
//! postprocess stages, reply send, reply delivery — with its critical path, stage percentiles
//! for the run, the slowest requests and the requests whose chain is broken (and why).
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//! use mqtrace_cli::journeys::{Report, SpanSet, rebuild};
//!
//! let mut spans = SpanSet::new();
//! spans.read_path(Path::new("telemetry"))?;
//! let journeys = rebuild(&spans);
//! let report = Report::new(&journeys, &spans.errors, 10);
//! println!("{}", report.to_text());
//! # Ok::<_, mqtrace_cli::journeys::ReadError>(())
//! ```

mod html;
mod otlp_json;
mod rebuild;
mod report;

pub use html::{MAX_ROWS, render as render_html};
pub use otlp_json::{Kind, LineError, ReadError, SpanRecord, SpanRef, SpanSet};
pub use rebuild::{BrokenReason, Journey, Journeys, Outcome, Phase, Stage, Step, rebuild};
pub use report::{Percentiles, Report, journey_json};
