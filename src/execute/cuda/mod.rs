//! CUDA lanes (feature `cuda`): an executor per lane thread that owns one CUDA stream, a
//! model replica per model version on that stream's device, two page-locked staging slots
//! and Sluice's own NVRTC kernels.
//!
//! - `executor.rs`: [`CudaExecutor`], the [`Executor`](super::Executor) of a GPU lane
//!   (`depth() == 2`: the lane stages the next batch while the previous one runs).
//! - `kernels.rs`: `kernels/*.cu`, compiled with NVRTC when a lane starts, and their launches.
//! - `memory.rs`: page-locked staging blocks and the device memory reading behind the
//!   `sluice_gpu_memory_*` gauges.
//!
//! **Architecture invariant:** a lane's stream, events and pinned blocks are created and used
//! only on that lane's thread; only this module calls cudarc directly.

mod executor;
pub mod kernels;
pub mod memory;

pub use executor::CudaExecutor;
pub use kernels::Kernels;
pub use memory::PinnedHostBlock;

use crate::models::{is_device_fault_message, is_out_of_memory_message, ModelError};

/// Everything that can go wrong on a GPU lane.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("NVRTC compiling {kernel}: {reason}")]
    Compile { kernel: &'static str, reason: String },
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Other(String),
}

impl From<GpuError> for ModelError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Candle(c) => ModelError::from(c),
            other => {
                let msg = other.to_string();
                if is_out_of_memory_message(&msg) {
                    ModelError::OutOfMemory(msg)
                } else if is_device_fault_message(&msg) {
                    ModelError::Device(msg)
                } else {
                    ModelError::Inference(msg)
                }
            }
        }
    }
}

/// Number of CUDA devices the driver reports; an error when there is no usable driver (no
/// GPU, or only the link-time stub library).
pub fn device_count() -> Result<usize, GpuError> {
    cudarc::driver::result::init()?;
    Ok(cudarc::driver::CudaContext::device_count()?.max(0) as usize)
}
