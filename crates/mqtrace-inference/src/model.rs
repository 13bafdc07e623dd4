//! The [`Model`] trait and [`InstrumentedModel`], which runs a model inside an INTERNAL
//! `model.execute` span with a child span per phase the backend reports.
//!
//! Backends report phases with their own clocks ([`Phases`]): the CPU backend times its
//! work with the host clock; the CUDA backend with CUDA events, i.e. device time. Each phase
//! becomes a child span whose start and end are the measured times.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::metrics::WorkerMetrics;
use mqtrace_core::Instrumentation;

/// `ml.model.name`.
pub const ML_MODEL_NAME: &str = "ml.model.name";
/// `ml.model.version`.
pub const ML_MODEL_VERSION: &str = "ml.model.version";
/// `ml.inference.batch_size`.
pub const ML_INFERENCE_BATCH_SIZE: &str = "ml.inference.batch_size";
/// `ml.device.type`: `cpu` or `cuda`.
pub const ML_DEVICE_TYPE: &str = "ml.device.type";
/// `ml.device.name`: the CPU or GPU model.
pub const ML_DEVICE_NAME: &str = "ml.device.name";
/// On a phase span: how long it took as measured by the device, in milliseconds.
pub const DEVICE_DURATION_MS: &str = "mqtrace.device.duration_ms";

/// What kind of device a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceKind {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
}

impl DeviceKind {
    /// `cpu` or `cuda`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// The device a model runs on.
///
/// # Example
///
/// ```
/// use mqtrace_inference::model::{DeviceInfo, DeviceKind};
///
/// let gpu = DeviceInfo::new(DeviceKind::Cuda, "NVIDIA H200").with_id("GPU-5a1c…");
/// assert_eq!(gpu.id.as_deref(), Some("GPU-5a1c…"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// CPU or CUDA.
    pub kind: DeviceKind,
    /// A human-readable device name.
    pub name: String,
    /// A stable identifier of the device (`hw.id` on its metrics): a GPU's UUID as
    /// `nvidia-smi -L` prints it (`GPU-…`), or `gpu{ordinal}` when the driver gives none.
    pub id: Option<String>,
}

impl DeviceInfo {
    /// A `kind` device called `name`, with no identifier.
    pub fn new(kind: DeviceKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            id: None,
        }
    }

    /// With identifier `id` (`hw.id`).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// One phase of a model execution, as the backend measured it.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Span name (`cpu.compute`, `gpu.h2d`, ...).
    pub name: &'static str,
    /// When the phase started, relative to [`Phases::anchor`].
    pub offset: Duration,
    /// How long it took.
    pub duration: Duration,
    /// Whether the duration was measured on the device (CUDA events) rather than the host.
    pub device_timed: bool,
    /// Extra attributes (bytes copied, multiply-adds...).
    pub attributes: Vec<KeyValue>,
}

/// The phases of one execution, measured from a common anchor.
#[derive(Debug)]
pub struct Phases {
    anchor_wall: SystemTime,
    anchor: Instant,
    phases: Vec<Phase>,
}

impl Default for Phases {
    fn default() -> Self {
        Self::new()
    }
}

impl Phases {
    /// Anchored now.
    pub fn new() -> Self {
        Self {
            anchor_wall: SystemTime::now(),
            anchor: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// The host instant offsets are measured from.
    pub fn anchor(&self) -> Instant {
        self.anchor
    }

    /// Records a phase measured by the backend.
    pub fn record(&mut self, phase: Phase) {
        self.phases.push(phase);
    }

    /// Runs `work`, timing it with the host clock as phase `name`.
    pub fn time<T>(
        &mut self,
        name: &'static str,
        attributes: Vec<KeyValue>,
        work: impl FnOnce() -> T,
    ) -> T {
        let start = Instant::now();
        let result = work();
        self.phases.push(Phase {
            name,
            offset: start.saturating_duration_since(self.anchor),
            duration: start.elapsed(),
            device_timed: false,
            attributes,
        });
        result
    }

    /// The recorded phases.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }
}

/// Why a model could not score a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The input matrix does not have `rows × input_width` values.
    #[error("model input has {got} values, expected {rows} rows × {width} features")]
    Shape {
        /// Values given.
        got: usize,
        /// Rows requested.
        rows: usize,
        /// The model's input width.
        width: usize,
    },
    /// The device failed (driver, kernel launch, copy...).
    #[error("{device} failed during {phase}: {message}")]
    Device {
        /// `cpu` or `cuda`.
        device: &'static str,
        /// The phase that failed.
        phase: &'static str,
        /// The device's error.
        message: String,
    },
}

impl ModelError {
    /// `Ok` when `inputs` holds exactly `rows × width` values, else [`ModelError::Shape`].
    pub fn check_shape(inputs: &[f32], rows: usize, width: usize) -> Result<(), ModelError> {
        if inputs.len() == rows * width {
            Ok(())
        } else {
            Err(ModelError::Shape {
                got: inputs.len(),
                rows,
                width,
            })
        }
    }
}

/// A model that scores batches of feature rows.
pub trait Model: Send + Sync {
    /// `ml.model.name`.
    fn name(&self) -> &str;
    /// `ml.model.version`.
    fn version(&self) -> &str;
    /// The device it runs on.
    fn device(&self) -> &DeviceInfo;
    /// Features per row.
    fn input_width(&self) -> usize;
    /// Scores `rows` rows of `inputs` (row-major), recording the phases it went through.
    fn score(
        &mut self,
        inputs: &[f32],
        rows: usize,
        phases: &mut Phases,
    ) -> Result<Vec<f32>, ModelError>;
    /// Device memory (used, total) in bytes, for devices that have their own.
    fn memory(&self) -> Option<(u64, u64)> {
        None
    }
}

impl<M: Model + ?Sized> Model for Box<M> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn version(&self) -> &str {
        (**self).version()
    }
    fn device(&self) -> &DeviceInfo {
        (**self).device()
    }
    fn input_width(&self) -> usize {
        (**self).input_width()
    }
    fn score(
        &mut self,
        inputs: &[f32],
        rows: usize,
        phases: &mut Phases,
    ) -> Result<Vec<f32>, ModelError> {
        (**self).score(inputs, rows, phases)
    }
    fn memory(&self) -> Option<(u64, u64)> {
        (**self).memory()
    }
}

/// Runs a [`Model`] inside a `model.execute` span with a child span per phase, and records
/// `mqtrace.inference.duration` (and device memory, where the device has its own).
#[derive(Debug)]
pub struct InstrumentedModel<M> {
    model: M,
    instrumentation: Instrumentation,
    metrics: WorkerMetrics,
}

impl<M: Model> InstrumentedModel<M> {
    /// Instruments `model`.
    pub fn new(model: M, instrumentation: Instrumentation) -> Self {
        let metrics = WorkerMetrics::new(instrumentation.meter());
        Self::with_metrics(model, instrumentation, metrics)
    }

    /// Instruments `model`, recording into instruments the caller already holds.
    pub fn with_metrics(
        model: M,
        instrumentation: Instrumentation,
        metrics: WorkerMetrics,
    ) -> Self {
        Self {
            model,
            instrumentation,
            metrics,
        }
    }

    /// The model.
    pub fn inner(&self) -> &M {
        &self.model
    }

    /// Scores `rows` rows inside a `model.execute` span, a child of `parent`.
    pub fn execute(
        &mut self,
        inputs: &[f32],
        rows: usize,
        parent: &Context,
    ) -> Result<Vec<f32>, ModelError> {
        let tracer = self.instrumentation.tracer();
        let device = self.model.device().clone();
        let span = tracer
            .span_builder("model.execute")
            .with_kind(SpanKind::Internal)
            .with_attributes([
                KeyValue::new(ML_MODEL_NAME, self.model.name().to_owned()),
                KeyValue::new(ML_MODEL_VERSION, self.model.version().to_owned()),
                KeyValue::new(ML_INFERENCE_BATCH_SIZE, rows as i64),
                KeyValue::new(ML_DEVICE_TYPE, device.kind.as_str()),
                KeyValue::new(ML_DEVICE_NAME, device.name.clone()),
            ])
            .start_with_context(&*tracer, parent);
        let cx = parent.with_span(span);
        let mut phases = Phases::new();
        let started = Instant::now();
        let result = self.model.score(inputs, rows, &mut phases);
        let seconds = started.elapsed().as_secs_f64();

        for phase in phases.phases() {
            let start = phases.anchor_wall + phase.offset;
            let mut attributes = phase.attributes.clone();
            attributes.push(KeyValue::new(ML_DEVICE_TYPE, device.kind.as_str()));
            if phase.device_timed {
                attributes.push(KeyValue::new(
                    DEVICE_DURATION_MS,
                    phase.duration.as_secs_f64() * 1e3,
                ));
            }
            tracer
                .span_builder(Cow::Borrowed(phase.name))
                .with_kind(SpanKind::Internal)
                .with_start_time(start)
                .with_attributes(attributes)
                .start_with_context(&*tracer, &cx)
                .end_with_timestamp(start + phase.duration);
        }

        let model_attributes = [
            KeyValue::new(ML_MODEL_NAME, self.model.name().to_owned()),
            KeyValue::new(ML_DEVICE_TYPE, device.kind.as_str()),
        ];
        self.metrics.record_inference(&model_attributes, seconds);
        if let Some((used, total)) = self.model.memory() {
            self.metrics.record_device_memory(&device, used, total);
        }
        let span = cx.span();
        if let Err(error) = &result {
            span.set_attribute(KeyValue::new(
                mqtrace_core::semconv::ERROR_TYPE,
                match error {
                    ModelError::Shape { .. } => "shape",
                    ModelError::Device { .. } => "device",
                },
            ));
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
        result
    }
}
