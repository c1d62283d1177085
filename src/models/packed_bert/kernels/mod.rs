//! Matrix product, attention and element-wise kernels on f32 slices.
//!
//! Self-contained (std and rayon only), so the kernels can be read, tested and benchmarked
//! apart from the encoder.

mod attention;
mod gemm;
mod math;
mod norm;

pub use attention::{attention, Attention};
pub use gemm::{linear, PackedLinear, Store};
pub use math::{erf_f, exp_f, gelu_erf, gelu_tanh, Act};
pub use norm::layer_norm;

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Columns of one packed weight panel (two AVX registers).
pub const NR: usize = 16;
/// Rows of one micro-tile.
pub const MR: usize = 6;

static FORCE_PORTABLE: AtomicBool = AtomicBool::new(false);

/// Forces the portable (non-SIMD) kernels, for tests of that path.
pub fn force_portable(on: bool) {
    FORCE_PORTABLE.store(on, Ordering::Relaxed);
}

/// Whether the AVX2/FMA kernels run.
#[inline]
pub fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !FORCE_PORTABLE.load(Ordering::Relaxed)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A raw pointer that parallel tasks may share; every task writes a disjoint region.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Runs `f(start, end)` over `0..n` in chunks of at least `min_chunk`, in parallel when
/// `par`.
pub fn par_ranges(par: bool, n: usize, min_chunk: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let threads = if par { rayon::current_num_threads() } else { 1 };
    if threads <= 1 || n <= min_chunk {
        if n > 0 {
            f(0, n);
        }
        return;
    }
    let chunks = n.div_ceil(min_chunk.max(1)).min(threads * 4);
    let per = n.div_ceil(chunks);
    (0..chunks).into_par_iter().for_each(|c| {
        let s = c * per;
        let e = ((c + 1) * per).min(n);
        if s < e {
            f(s, e);
        }
    });
}

/// One 64-byte line of a panel: the 16 columns of one K row.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; NR]);

/// Rows of each micro-tile of a block of `rows`: sizes as equal as possible, at most MR.
#[inline(always)]
fn tile_rows(rows: usize, t: usize, ntiles: usize) -> (usize, usize) {
    let base = rows / ntiles;
    let extra = rows % ntiles;
    let start = t * base + t.min(extra);
    (start, base + usize::from(t < extra))
}
