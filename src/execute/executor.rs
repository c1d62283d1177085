//! The executor boundary: a small synchronous trait owned by one lane thread.
//!
//! A lane stages a batch into [`Executor::staging`], starts it with [`Executor::submit`] and
//! takes the output with [`Executor::collect`]. The CPU executor computes inside `submit`.
//! The CUDA executor (feature `cuda`) has `depth() == 2`: two page-locked staging slots, so the
//! lane fills the next slot while the previous batch's copy and kernels run on its stream,
//! and `collect` waits on that batch's event rather than on the whole device.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::core::{BatchCaps, BatchOutput, HostStaging};
use crate::models::{LoadedModel, ModelError};

/// Runs staged batches for one lane.
pub trait Executor: Send {
    /// A short description for logs ("cpu", "cuda:0/stream1").
    fn describe(&self) -> String;
    /// Batches that may be in flight at once (staging slots).
    fn depth(&self) -> usize;
    /// The staging slot for the next batch.
    fn staging(&mut self) -> &mut HostStaging;
    /// Starts the batch staged in the current slot, then moves to the next slot.
    fn submit(&mut self, model: &Arc<LoadedModel>) -> Result<(), ModelError>;
    /// Waits for the oldest submitted batch and returns its output.
    fn collect(&mut self) -> Result<BatchOutput, ModelError>;
}

/// The CPU executor: one reusable staging buffer, computed synchronously by candle.
pub struct CpuExecutor {
    staging: HostStaging,
    done: VecDeque<Result<BatchOutput, ModelError>>,
}

impl CpuExecutor {
    /// A CPU executor with staging sized for batches up to `caps`.
    pub fn new(caps: BatchCaps) -> Self {
        CpuExecutor {
            staging: HostStaging::with_capacity(caps.max_rows, caps.max_tokens, caps.max_rows * 64),
            done: VecDeque::with_capacity(1),
        }
    }
}

impl Executor for CpuExecutor {
    fn describe(&self) -> String {
        "cpu".into()
    }

    fn depth(&self) -> usize {
        1
    }

    fn staging(&mut self) -> &mut HostStaging {
        &mut self.staging
    }

    fn submit(&mut self, model: &Arc<LoadedModel>) -> Result<(), ModelError> {
        let out = model.forward(&self.staging);
        self.done.push_back(out);
        Ok(())
    }

    fn collect(&mut self) -> Result<BatchOutput, ModelError> {
        self.done.pop_front().unwrap_or_else(|| {
            Err(ModelError::Inference("collect without a submitted batch".into()))
        })
    }
}
