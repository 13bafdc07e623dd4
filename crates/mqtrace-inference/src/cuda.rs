//! [`CudaModel`] (feature `cuda`): the fraud-scoring [`Mlp`] on an NVIDIA GPU.
//!
//! The driver, cuBLAS and NVRTC are loaded at run time (cudarc's `dynamic-loading`), so the
//! crate builds without a CUDA toolkit and runs without a GPU; [`CudaModel::new`] says
//! clearly when no driver is there, and the caller can fall back to the CPU.
//!
//! Each layer is an SGEMM (cuBLAS) followed by a bias + activation kernel compiled at run
//! time with NVRTC. A batch reports three phases timed with CUDA events — device time:
//! `gpu.h2d` (the feature matrix to the device, with its bytes), `gpu.compute` (every GEMM
//! and kernel) and `gpu.d2h` (the scores back). Device memory in use is reported as
//! `hw.gpu.memory.usage` / `hw.gpu.memory.limit`.
#![allow(unsafe_code)] // cuBLAS calls and kernel launches are unsafe in cudarc

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use opentelemetry::KeyValue;

use crate::mlp::Mlp;
use crate::model::{DeviceInfo, DeviceKind, Model, ModelError, Phase, Phases};

/// `mqtrace.transfer.bytes` on copy phases.
pub const TRANSFER_BYTES: &str = "mqtrace.transfer.bytes";

const KERNEL_SOURCE: &str = r#"
extern "C" __global__ void bias_activation(float* y, const float* bias, int rows, int cols, int sigmoid) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * cols) {
        float v = y[i] + bias[i % cols];
        y[i] = sigmoid ? 1.0f / (1.0f + expf(-v)) : fmaxf(v, 0.0f);
    }
}
"#;

/// Why the CUDA backend is not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaUnavailable {
    /// A CUDA library could not be loaded.
    #[error(
        "the CUDA {0} library is not installed or not on the library path (use --device cpu, or install the NVIDIA driver / CUDA runtime libraries)"
    )]
    Library(&'static str),
    /// The driver is there but the device could not be set up.
    #[error("CUDA device {ordinal} could not be initialised: {message}")]
    Device {
        /// Device ordinal.
        ordinal: usize,
        /// The driver's error.
        message: String,
    },
}

struct DeviceLayer {
    inputs: usize,
    outputs: usize,
    weights: CudaSlice<f32>,
    biases: CudaSlice<f32>,
}

/// The MLP on a GPU.
pub struct CudaModel {
    name: String,
    version: String,
    input_width: usize,
    device: DeviceInfo,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernel: CudaFunction,
    layers: Vec<DeviceLayer>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("device", &self.device)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

fn device_error(ordinal: usize) -> impl Fn(&dyn std::fmt::Debug) -> CudaUnavailable {
    move |error| CudaUnavailable::Device {
        ordinal,
        message: format!("{error:?}"),
    }
}

/// Whether the CUDA driver, cuBLAS and NVRTC libraries can be loaded.
pub fn libraries_present() -> Result<(), CudaUnavailable> {
    // SAFETY: these only try to dlopen the libraries; nothing is called through them.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Err(CudaUnavailable::Library("driver (libcuda)"));
        }
        if !cudarc::cublas::sys::is_culib_present() {
            return Err(CudaUnavailable::Library("cuBLAS (libcublas)"));
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Err(CudaUnavailable::Library("NVRTC (libnvrtc)"));
        }
    }
    Ok(())
}

impl CudaModel {
    /// Uploads `mlp` to GPU `ordinal` and compiles the activation kernel.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        mlp: &Mlp,
        ordinal: usize,
    ) -> Result<Self, CudaUnavailable> {
        libraries_present()?;
        let fail = device_error(ordinal);
        let context = CudaContext::new(ordinal).map_err(|e| fail(&e))?;
        let device_name = context.name().map_err(|e| fail(&e))?;
        let stream = context.new_stream().map_err(|e| fail(&e))?;
        let blas = CudaBlas::new(Arc::clone(&stream)).map_err(|e| fail(&e))?;
        let ptx = cudarc::nvrtc::compile_ptx(KERNEL_SOURCE).map_err(|e| fail(&e))?;
        let module = context.load_module(ptx).map_err(|e| fail(&e))?;
        let kernel = module
            .load_function("bias_activation")
            .map_err(|e| fail(&e))?;
        let layers = mlp
            .layers()
            .iter()
            .map(|layer| {
                Ok(DeviceLayer {
                    inputs: layer.inputs,
                    outputs: layer.outputs,
                    weights: stream.clone_htod(&layer.weights).map_err(|e| fail(&e))?,
                    biases: stream.clone_htod(&layer.biases).map_err(|e| fail(&e))?,
                })
            })
            .collect::<Result<Vec<_>, CudaUnavailable>>()?;
        stream.synchronize().map_err(|e| fail(&e))?;
        Ok(Self {
            name: name.into(),
            version: version.into(),
            input_width: mlp.input_width(),
            device: DeviceInfo {
                kind: DeviceKind::Cuda,
                name: device_name,
            },
            context,
            stream,
            blas,
            kernel,
            layers,
        })
    }

    fn timing_event(&self) -> Result<CudaEvent, ModelError> {
        self.context
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| gpu_error("event", &e))
    }

    /// The forward pass on the stream, from `x` (`rows × inputs`) to scores on the device.
    fn forward(&self, x: CudaSlice<f32>, rows: usize) -> Result<CudaSlice<f32>, ModelError> {
        let last = self.layers.len() - 1;
        let mut activations = x;
        for (index, layer) in self.layers.iter().enumerate() {
            let mut out = self
                .stream
                .alloc_zeros::<f32>(rows * layer.outputs)
                .map_err(|e| gpu_error("gpu.compute", &e))?;
            // Row-major Y = X · W is column-major Yᵀ = Wᵀ · Xᵀ: cuBLAS sees W as an
            // `outputs × inputs` matrix and X as `inputs × rows`, both without transposes.
            let config = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_N,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: to_int(layer.outputs)?,
                n: to_int(rows)?,
                k: to_int(layer.inputs)?,
                alpha: 1.0f32,
                lda: to_int(layer.outputs)?,
                ldb: to_int(layer.inputs)?,
                beta: 0.0f32,
                ldc: to_int(layer.outputs)?,
            };
            // SAFETY: the slices hold exactly the m×k, k×n and m×n elements the config names.
            unsafe {
                self.blas
                    .gemm(config, &layer.weights, &activations, &mut out)
            }
            .map_err(|e| gpu_error("gpu.compute", &e))?;
            let elements = rows * layer.outputs;
            let (rows_i, cols_i, sigmoid) = (
                to_int(rows)?,
                to_int(layer.outputs)?,
                i32::from(index == last),
            );
            let mut launch = self.stream.launch_builder(&self.kernel);
            launch
                .arg(&mut out)
                .arg(&layer.biases)
                .arg(&rows_i)
                .arg(&cols_i)
                .arg(&sigmoid);
            // SAFETY: the kernel's signature matches the arguments; it touches only indices
            // below rows × cols, which is `out`'s length.
            unsafe { launch.launch(LaunchConfig::for_num_elems(elements as u32)) }
                .map_err(|e| gpu_error("gpu.compute", &e))?;
            activations = out;
        }
        Ok(activations)
    }
}

fn to_int(n: usize) -> Result<i32, ModelError> {
    i32::try_from(n).map_err(|_| ModelError::Device {
        device: "cuda",
        phase: "gpu.compute",
        message: format!("dimension {n} exceeds cuBLAS's 32-bit sizes"),
    })
}

fn gpu_error(phase: &'static str, error: &dyn std::fmt::Debug) -> ModelError {
    ModelError::Device {
        device: "cuda",
        phase,
        message: format!("{error:?}"),
    }
}

fn millis(ms: f32) -> Duration {
    Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3)
}

impl Model for CudaModel {
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
        self.input_width
    }

    fn score(
        &mut self,
        inputs: &[f32],
        rows: usize,
        phases: &mut Phases,
    ) -> Result<Vec<f32>, ModelError> {
        ModelError::check_shape(inputs, rows, self.input_width)?;
        let events = [
            self.timing_event()?,
            self.timing_event()?,
            self.timing_event()?,
            self.timing_event()?,
        ];
        // Idle stream: the first event then marks (almost) this host instant.
        self.stream
            .synchronize()
            .map_err(|e| gpu_error("gpu.h2d", &e))?;
        let host_start = Instant::now();
        let record =
            |event: &CudaEvent, phase| event.record(&self.stream).map_err(|e| gpu_error(phase, &e));
        record(&events[0], "gpu.h2d")?;
        let x = self
            .stream
            .clone_htod(inputs)
            .map_err(|e| gpu_error("gpu.h2d", &e))?;
        record(&events[1], "gpu.h2d")?;
        let y = self.forward(x, rows)?;
        record(&events[2], "gpu.compute")?;
        let scores = self
            .stream
            .clone_dtoh(&y)
            .map_err(|e| gpu_error("gpu.d2h", &e))?;
        record(&events[3], "gpu.d2h")?;
        events[3]
            .synchronize()
            .map_err(|e| gpu_error("gpu.d2h", &e))?;

        let elapsed = |from: usize, to: usize, phase| {
            events[from]
                .elapsed_ms(&events[to])
                .map(millis)
                .map_err(|e| gpu_error(phase, &e))
        };
        let h2d = elapsed(0, 1, "gpu.h2d")?;
        let compute = elapsed(1, 2, "gpu.compute")?;
        let d2h = elapsed(2, 3, "gpu.d2h")?;
        let base = host_start.saturating_duration_since(phases.anchor());
        let bytes_in = std::mem::size_of_val(inputs) as i64;
        let bytes_out = (scores.len() * std::mem::size_of::<f32>()) as i64;
        phases.record(Phase {
            name: "gpu.h2d",
            offset: base,
            duration: h2d,
            device_timed: true,
            attributes: vec![KeyValue::new(TRANSFER_BYTES, bytes_in)],
        });
        phases.record(Phase {
            name: "gpu.compute",
            offset: base + h2d,
            duration: compute,
            device_timed: true,
            attributes: vec![KeyValue::new(
                "mqtrace.compute.layers",
                self.layers.len() as i64,
            )],
        });
        phases.record(Phase {
            name: "gpu.d2h",
            offset: base + h2d + compute,
            duration: d2h,
            device_timed: true,
            attributes: vec![KeyValue::new(TRANSFER_BYTES, bytes_out)],
        });
        Ok(scores)
    }

    fn memory(&self) -> Option<(u64, u64)> {
        let (free, total) = self.context.mem_get_info().ok()?;
        Some(((total - free) as u64, total as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs everywhere: without a driver the error says what to do; with one, the GPU scores
    /// match the CPU reference.
    #[test]
    fn gpu_scores_match_the_cpu_or_the_error_is_clear() {
        let mlp = Mlp::seeded(32, &[64, 64], 3);
        match CudaModel::new("fraud-mlp", "test", &mlp, 0) {
            Err(CudaUnavailable::Library(library)) => {
                let message = CudaUnavailable::Library(library).to_string();
                assert!(message.contains("--device cpu"), "{message}");
            }
            Err(other) => panic!("a driver is present but the device failed: {other}"),
            Ok(mut model) => {
                let inputs: Vec<f32> = (0..8 * 32).map(|i| (i % 17) as f32 / 17.0).collect();
                let mut phases = Phases::new();
                let gpu = model.score(&inputs, 8, &mut phases).expect("gpu scores");
                let cpu = mlp.forward(&inputs, 8);
                for (g, c) in gpu.iter().zip(&cpu) {
                    assert!((g - c).abs() < 1e-4, "gpu {g} cpu {c}");
                }
                let names: Vec<_> = phases.phases().iter().map(|p| p.name).collect();
                assert_eq!(names, ["gpu.h2d", "gpu.compute", "gpu.d2h"]);
            }
        }
    }
}
