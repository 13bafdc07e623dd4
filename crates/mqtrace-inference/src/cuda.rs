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
        "the CUDA {library} library could not be loaded: looked for {} on LD_LIBRARY_PATH ({}) and the system library path. Install the NVIDIA driver and the CUDA 12 or 13 libraries (cuBLAS, NVRTC), add their directory to LD_LIBRARY_PATH, or use --device cpu",
        .looked_for.join(", "),
        library_path()
    )]
    Library {
        /// Which library: `driver (libcuda)`, `cuBLAS (libcublas)` or `NVRTC (libnvrtc)`.
        library: &'static str,
        /// The file names tried, in order (CUDA 13's first, then 12's and older).
        looked_for: Vec<String>,
    },
    /// The driver is there but the device could not be set up.
    #[error("CUDA device {ordinal} could not be initialised: {message}")]
    Device {
        /// Device ordinal.
        ordinal: usize,
        /// The driver's error.
        message: String,
    },
}

/// `LD_LIBRARY_PATH` as the error shows it.
fn library_path() -> String {
    match std::env::var("LD_LIBRARY_PATH") {
        Ok(path) if !path.is_empty() => path,
        _ => "unset".to_owned(),
    }
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

/// Whether the CUDA driver, cuBLAS and NVRTC libraries can be loaded; the error names the
/// first that cannot and the file names looked for.
///
/// The libraries are found at run time (cudarc's `dynamic-loading`, built for CUDA 13): for
/// each, `lib{name}.so`, then the versioned names of CUDA 13, 12, 11 and older, so a machine
/// with either CUDA 12 or CUDA 13 libraries loads them.
pub fn libraries_present() -> Result<(), CudaUnavailable> {
    let missing = |library: &'static str, name: &str| {
        let mut looked_for: Vec<String> = Vec::new();
        for candidate in cudarc::get_lib_name_candidates(name) {
            if !looked_for.contains(&candidate) {
                looked_for.push(candidate);
            }
        }
        CudaUnavailable::Library {
            library,
            looked_for,
        }
    };
    // SAFETY: these only try to dlopen the libraries; nothing is called through them.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Err(missing("driver (libcuda)", "cuda"));
        }
        if !cudarc::cublas::sys::is_culib_present() {
            return Err(missing("cuBLAS (libcublas)", "cublas"));
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Err(missing("NVRTC (libnvrtc)", "nvrtc"));
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
        let device_id = context
            .uuid()
            .map_or_else(|_| format!("gpu{ordinal}"), |uuid| gpu_uuid(&uuid.bytes));
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
            device: DeviceInfo::new(DeviceKind::Cuda, device_name).with_id(device_id),
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
            // The kernel indexes `rows × cols` in 32-bit ints: checked as a product.
            let elements = elements(rows, layer.outputs)?;
            let mut out = self
                .stream
                .alloc_zeros::<f32>(elements)
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
            let launch_elements = u32::try_from(elements).map_err(|_| too_large(elements))?;
            unsafe { launch.launch(LaunchConfig::for_num_elems(launch_elements)) }
                .map_err(|e| gpu_error("gpu.compute", &e))?;
            activations = out;
        }
        Ok(activations)
    }
}

/// A GPU's UUID as `nvidia-smi -L` prints it: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn gpu_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
    let mut id = String::from("GPU-");
    for (index, byte) in bytes.iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push_str(&format!("{:02x}", *byte as u8));
    }
    id
}

fn to_int(n: usize) -> Result<i32, ModelError> {
    i32::try_from(n).map_err(|_| too_large(n))
}

fn too_large(n: usize) -> ModelError {
    ModelError::Device {
        device: "cuda",
        phase: "gpu.compute",
        message: format!("size {n} exceeds cuBLAS's and the kernel's 32-bit sizes"),
    }
}

/// `rows × cols`, checked: it must fit the kernel's and cuBLAS's 32-bit sizes.
fn elements(rows: usize, cols: usize) -> Result<usize, ModelError> {
    let product = rows
        .checked_mul(cols)
        .ok_or_else(|| too_large(usize::MAX))?;
    to_int(product)?;
    Ok(product)
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
        if rows == 0 {
            // Nothing to score, as on the CPU: no launch with an empty grid.
            return Ok(Vec::new());
        }
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

    /// The GPU model on device 0, or `None` (the test is skipped) when this machine has no
    /// usable GPU; with `MQTRACE_REQUIRE_GPU=1` a missing GPU fails the test instead, with
    /// the reason (what was looked for, or what the device said).
    fn gpu_model(mlp: &Mlp) -> Option<CudaModel> {
        match CudaModel::new("fraud-mlp", "test", mlp, 0) {
            Ok(model) => Some(model),
            Err(error) if std::env::var("MQTRACE_REQUIRE_GPU").as_deref() == Ok("1") => {
                panic!("MQTRACE_REQUIRE_GPU=1 but the CUDA backend is unavailable: {error}")
            }
            Err(error) => {
                eprintln!(
                    "skipped (no usable GPU; MQTRACE_REQUIRE_GPU=1 makes this fail): {error}"
                );
                None
            }
        }
    }

    fn inputs(rows: usize, width: usize) -> Vec<f32> {
        (0..rows * width).map(|i| (i % 17) as f32 / 17.0).collect()
    }

    #[test]
    fn a_missing_library_says_what_was_looked_for_and_what_to_do() {
        let error = CudaUnavailable::Library {
            library: "cuBLAS (libcublas)",
            looked_for: cudarc::get_lib_name_candidates("cublas"),
        };
        let message = error.to_string();
        for expected in [
            "libcublas.so.13",
            "libcublas.so.12",
            "LD_LIBRARY_PATH",
            "--device cpu",
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
        // On this machine, whatever it has: either everything loads or the error names
        // the library that does not.
        if let Err(CudaUnavailable::Library {
            library,
            looked_for,
        }) = libraries_present()
        {
            assert!(!looked_for.is_empty(), "{library}");
        }
    }

    #[test]
    fn gpu_ids_read_like_nvidia_smi() {
        let bytes: [std::ffi::c_char; 16] =
            std::array::from_fn(|i| (i as u8 * 17) as std::ffi::c_char);
        assert_eq!(gpu_uuid(&bytes), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn sizes_are_checked_as_products() {
        assert_eq!(elements(1_024, 256).expect("fits"), 262_144);
        assert!(
            elements(65_536, 65_536).is_err(),
            "2^32 elements overflow the kernel's int"
        );
        assert!(elements(usize::MAX, 2).is_err());
    }

    #[test]
    fn gpu_scores_match_the_cpu_on_batches_of_every_size() {
        let mlp = Mlp::seeded(32, &[64, 64], 3);
        let Some(mut model) = gpu_model(&mlp) else {
            return;
        };
        assert!(
            model
                .score(&[], 0, &mut Phases::new())
                .expect("no rows")
                .is_empty(),
            "zero rows give an empty result, as on the CPU"
        );
        for rows in [1, 7, 256, 1_024, 1_025] {
            let inputs = inputs(rows, 32);
            let mut phases = Phases::new();
            let gpu = model.score(&inputs, rows, &mut phases).expect("gpu scores");
            let cpu = mlp.forward(&inputs, rows);
            assert_eq!(gpu.len(), cpu.len(), "{rows} rows");
            for (g, c) in gpu.iter().zip(&cpu) {
                assert!((g - c).abs() <= 1e-5, "{rows} rows: gpu {g} cpu {c}");
            }
            let recorded = phases.phases();
            let names: Vec<_> = recorded.iter().map(|p| p.name).collect();
            assert_eq!(names, ["gpu.h2d", "gpu.compute", "gpu.d2h"], "{rows} rows");
            for pair in recorded.windows(2) {
                assert_eq!(
                    pair[0].offset + pair[0].duration,
                    pair[1].offset,
                    "back to back: {} then {}",
                    pair[0].name,
                    pair[1].name
                );
            }
            assert!(recorded.iter().all(|p| p.device_timed));
            let bytes = |phase: &Phase| {
                phase
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == TRANSFER_BYTES)
                    .map(|kv| kv.value.clone())
            };
            assert_eq!(bytes(&recorded[0]), Some(((rows * 32 * 4) as i64).into()));
            assert_eq!(bytes(&recorded[2]), Some(((gpu.len() * 4) as i64).into()));
        }
    }

    #[test]
    fn gpu_memory_stays_flat_over_many_batches() {
        let mlp = Mlp::seeded(32, &[64, 64], 3);
        let Some(mut model) = gpu_model(&mlp) else {
            return;
        };
        let inputs = inputs(256, 32);
        model
            .score(&inputs, 256, &mut Phases::new())
            .expect("warm-up batch");
        let (before, _) = model.memory().expect("device memory");
        for _ in 0..2_000 {
            model
                .score(&inputs, 256, &mut Phases::new())
                .expect("batch");
        }
        let (after, _) = model.memory().expect("device memory");
        // Device-wide figure: other processes move it too; a leak of one batch's buffers
        // (about 130 KiB here) per batch would show as hundreds of MiB.
        assert!(
            after.abs_diff(before) < 64 << 20,
            "device memory in use went from {before} to {after} bytes over 2,000 batches"
        );
    }
}
