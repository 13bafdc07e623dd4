//! # mqtrace-inference
//!
//! Batch-inference workers whose every request keeps its story:
//!
//! - [`BatchCollector`] forms batches (`max_batch` or `max_wait`) from any
//!   [`MessageSource`](mqtrace_core::batch::MessageSource) — the traced Kafka and RabbitMQ
//!   consumers implement it — and drains the open batch on [`Shutdown`];
//! - [`Worker`] runs each batch inside one CONSUMER `process` span linked to every request
//!   (links beyond the span limit go onto child spans), with `features.fetch`,
//!   `features.preprocess`, `model.execute` and `postprocess` stages, replies to each request
//!   in the request's own trace (linked back to the batch), dead-letters malformed and
//!   oversized requests (truncated, or skipped and counted, when even the dead letter cannot
//!   be sent: never a poison pill), and settles (commits, acks) only after every reply was
//!   confirmed: at-least-once;
//! - [`model::Model`] with [`model::InstrumentedModel`]: a `model.execute` span whose children
//!   are the phases the device really went through; [`cpu::CpuModel`] runs the fraud-scoring
//!   [`mlp::Mlp`] on the CPU, and `cuda::CudaModel` (feature `cuda`) runs it on a GPU with
//!   phases timed by CUDA events;
//! - [`metrics::WorkerMetrics`]: batch size, queue wait, inference duration, in-flight,
//!   dead letters, data quality, GPU memory.
//!
//! The crate knows no broker: it takes messages through the traits of
//! [`mqtrace_core::batch`].

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod collector;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod features;
pub mod metrics;
pub mod mlp;
pub mod model;
pub mod postprocess;
pub mod request;
mod worker;

pub use collector::{BatchCollector, BatchConfig, Shutdown};
pub use mqtrace_core::batch::LinkAttributes;
pub use worker::{
    DEFAULT_MAX_REQUEST_BYTES, DLQ_ERROR_HEADER, DLQ_PAYLOAD_SIZE_HEADER, DLQ_REASON_HEADER,
    DLQ_SOURCE_HEADER, DLQ_SOURCE_MESSAGE_ID_HEADER, DLQ_SOURCE_OFFSET_HEADER,
    DLQ_SOURCE_PARTITION_HEADER, DLQ_TRUNCATED_HEADER, INPUT_WIDTH, MQTRACE_BATCH_FORMATION_MS,
    RECEIVE_RETRY_PAUSE, Worker, WorkerConfig, WorkerError, WorkerStats,
};
