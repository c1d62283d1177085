//! Page-locked host memory for staging slots and outputs, and device memory readings.

use std::sync::Arc;

use cudarc::driver::{CudaContext, DeviceRepr, DriverError, PinnedHostSlice, ValidAsZeroBits};

use crate::core::PinnedBlock;

/// A page-locked host block of a CUDA context, zero-initialised. Plain (not write-combined)
/// pinned memory: the lane reads staged row counts back and the CPU reads outputs from it.
pub struct PinnedHostBlock<T> {
    mem: PinnedHostSlice<T>,
    ptr: *mut T,
    len: usize,
}

// SAFETY: `ptr` points into `mem` (Send + Sync in cudarc) and lives exactly as long as it;
// access goes through `&self` (shared slices) and `&mut self` (the only mutable slice), so
// Rust's aliasing rules hold across threads.
unsafe impl<T: Send> Send for PinnedHostBlock<T> {}
// SAFETY: as above; `&self` hands out only shared `&[T]`.
unsafe impl<T: Sync> Sync for PinnedHostBlock<T> {}

impl<T: DeviceRepr + ValidAsZeroBits + Copy> PinnedHostBlock<T> {
    /// Allocates `len` (at least 1) zeroed elements of page-locked memory in `ctx`.
    pub fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self, DriverError> {
        let len = len.max(1);
        // SAFETY: the memory is zeroed below before anything reads it, and zero is a valid
        // bit pattern of T (`ValidAsZeroBits`). Flags 0: cached, not write-combined.
        let mut mem = unsafe { ctx.alloc_pinned_with_flags::<T>(len, 0) }?;
        let ptr = mem.as_mut_ptr()?;
        // SAFETY: `ptr` is valid for `len` elements of T, freshly allocated and unaliased.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedHostBlock { mem, ptr, len })
    }

    /// Elements in the block.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty (never: blocks hold at least one element).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + 'static> PinnedBlock<T>
    for PinnedHostBlock<T>
{
    fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` is valid for `len` initialised elements while `mem` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn reallocate(&self, len: usize) -> Option<Box<dyn PinnedBlock<T>>> {
        match PinnedHostBlock::<T>::new(self.mem.context(), len) {
            Ok(b) => Some(Box::new(b)),
            Err(e) => {
                tracing::warn!(error = %e, elements = len, "page-locked allocation failed");
                None
            }
        }
    }
}

/// `(free, total)` bytes of the device of `ctx` (`cuMemGetInfo`).
pub fn device_memory(ctx: &Arc<CudaContext>) -> Result<(usize, usize), DriverError> {
    ctx.mem_get_info()
}
