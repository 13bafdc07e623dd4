//! [`CpuModel`]: the fraud-scoring [`Mlp`] on the host CPU, single-threaded. It reports one
//! honest phase, `cpu.compute` (the dense layers and activations), with its multiply-adds.

use opentelemetry::KeyValue;

use crate::mlp::Mlp;
use crate::model::{DeviceInfo, DeviceKind, Model, ModelError, Phases};

/// `mqtrace.compute.multiply_adds` on compute phases.
pub const MULTIPLY_ADDS: &str = "mqtrace.compute.multiply_adds";

/// The MLP on the CPU.
///
/// # Example
///
/// ```
/// use mqtrace_inference::cpu::CpuModel;
/// use mqtrace_inference::mlp::Mlp;
/// use mqtrace_inference::model::{Model, Phases};
///
/// let mut model = CpuModel::new("fraud-mlp", "1", Mlp::seeded(4, &[8], 1));
/// let mut phases = Phases::new();
/// let scores = model.score(&[0.1, 0.2, 0.3, 0.4], 1, &mut phases)?;
/// assert_eq!(scores.len(), 1);
/// assert_eq!(phases.phases()[0].name, "cpu.compute");
/// # Ok::<_, mqtrace_inference::model::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CpuModel {
    name: String,
    version: String,
    mlp: Mlp,
    device: DeviceInfo,
}

impl CpuModel {
    /// `mlp` under `name` and `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>, mlp: Mlp) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            mlp,
            device: DeviceInfo::new(DeviceKind::Cpu, cpu_name()),
        }
    }

    /// The network.
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }
}

/// The CPU model from `/proc/cpuinfo`, or the architecture.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

impl Model for CpuModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn device(&self) -> &DeviceInfo {
        &self.device
    }

    fn input_width(&self) -> usize {
        self.mlp.input_width()
    }

    fn score(
        &mut self,
        inputs: &[f32],
        rows: usize,
        phases: &mut Phases,
    ) -> Result<Vec<f32>, ModelError> {
        ModelError::check_shape(inputs, rows, self.mlp.input_width())?;
        let multiply_adds = self.mlp.multiply_adds(rows);
        Ok(phases.time(
            "cpu.compute",
            vec![KeyValue::new(
                MULTIPLY_ADDS,
                i64::try_from(multiply_adds).unwrap_or(i64::MAX),
            )],
            || self.mlp.forward(inputs, rows),
        ))
    }
}
