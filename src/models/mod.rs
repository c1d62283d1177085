//! Model repository, cache and the candle models themselves.
//!
//! **Architecture invariant:** only this module and `execute/` touch candle; the rest of Sluice
//! sees a [`LoadedModel`] that stages and runs batches.

pub mod bert;
pub mod cache;
pub mod loaded;
pub mod loader;
pub mod mlp;
pub mod packed_bert;
pub mod repository;
pub mod rollout;
pub mod spec;
pub mod split;
pub mod text;
pub mod wordpiece;

use std::path::PathBuf;

pub use cache::ModelCache;
pub use loaded::{LoadedModel, ModelInput};
pub use loader::{LoadDone, ModelKey, ModelLoader};
pub use repository::{ModelEntry, Repository};
pub use spec::{ModelKind, ModelSpec};

/// Everything that can go wrong finding, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{name}'{}", version.as_ref().map(|v| format!(" version '{v}'")).unwrap_or_default())]
    UnknownModel { name: String, version: Option<String> },
    #[error("invalid model name '{0}': use letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Spec { path: PathBuf, reason: String },
    #[error("loading {name}/{version}: {reason}")]
    Load { name: String, version: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
    /// The device ran out of memory for this batch. Lanes split such a batch until it fits
    /// (down to single requests) without spending its retries.
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    /// The model (or a library under it) panicked on this batch. Lanes split such a batch
    /// like an out-of-memory one, so that the request that triggers it is isolated.
    #[error("the model panicked: {0}")]
    Panicked(String),
    /// The lane's device failed (a sticky CUDA error: the context is unusable, the device
    /// lost). Not the batch's fault: its requests go back to be computed, and a lane that
    /// keeps failing this way is taken out of service.
    #[error("device fault: {0}")]
    Device(String),
}

impl ModelError {
    /// Whether this is a device out-of-memory failure.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, ModelError::OutOfMemory(_))
    }

    /// Whether splitting the batch is the remedy, without spending a retry: the failure
    /// is one of the batch's size (out of memory) or, likely, of one of its requests (a
    /// panic), not a transient one.
    pub fn splits_for_free(&self) -> bool {
        matches!(self, ModelError::OutOfMemory(_) | ModelError::Panicked(_))
    }

    /// Whether the lane's device failed rather than the model or the batch.
    pub fn is_device_fault(&self) -> bool {
        matches!(self, ModelError::Device(_))
    }
}

/// Whether an error message from the CUDA driver (through cudarc or candle) reports a fault
/// of the device or of its context that no retry on the same context can fix: CUDA's
/// "sticky" errors, and a device that is gone.
pub fn is_device_fault_message(msg: &str) -> bool {
    const STICKY: [&str; 12] = [
        "CUDA_ERROR_ILLEGAL_ADDRESS",
        "CUDA_ERROR_LAUNCH_FAILED",
        "CUDA_ERROR_ECC_UNCORRECTABLE",
        "CUDA_ERROR_HARDWARE_STACK_ERROR",
        "CUDA_ERROR_ILLEGAL_INSTRUCTION",
        "CUDA_ERROR_MISALIGNED_ADDRESS",
        "CUDA_ERROR_INVALID_PC",
        "CUDA_ERROR_DEVICE_UNAVAILABLE",
        "CUDA_ERROR_CONTEXT_IS_DESTROYED",
        "CUDA_ERROR_DEINITIALIZED",
        "CUDA_ERROR_NVLINK_UNCORRECTABLE",
        "CUDA_ERROR_DEVICE_NOT_LICENSED",
    ];
    STICKY.iter().any(|code| msg.contains(code))
}

/// Whether an error message from candle, cudarc or cuBLAS reports an exhausted device
/// memory (`CUDA_ERROR_OUT_OF_MEMORY`, `CUBLAS_STATUS_ALLOC_FAILED`).
pub fn is_out_of_memory_message(msg: &str) -> bool {
    msg.contains("CUDA_ERROR_OUT_OF_MEMORY") || msg.contains("CUBLAS_STATUS_ALLOC_FAILED")
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        let msg = e.to_string();
        if is_out_of_memory_message(&msg) {
            ModelError::OutOfMemory(msg)
        } else if is_device_fault_message(&msg) {
            ModelError::Device(msg)
        } else {
            ModelError::Inference(msg)
        }
    }
}
