//! Matrix product, attention and element-wise kernels on f32 slices.
//!
//! Self-contained (std and rayon only), so the kernels can be read, tested and benchmarked
//! apart from the encoder. Which instruction set runs is an explicit [`Isa`] argument of every
//! entry point, never global state, so tests can run both paths side by side.

mod attention;
mod gemm;
mod math;
mod norm;

pub use attention::{attention, Attention};
pub use gemm::{linear, PackedLinear, Store};
pub use math::{erf_f, exp_f, gelu_erf, gelu_tanh, Act};
pub use norm::layer_norm;

use rayon::prelude::*;

/// Columns of one packed weight panel (two AVX registers).
pub const NR: usize = 16;
/// Rows of one micro-tile.
pub const MR: usize = 6;

/// The kernel set a call runs: AVX2/FMA or portable.
///
/// A struct around a private enum, not a public enum: a value selecting AVX2/FMA can only be
/// obtained from [`Isa::detect`] or [`Isa::avx2_fma`], which check the CPU, so safe code
/// cannot make the kernels execute instructions the CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    // Only built on x86_64, after detection.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2Fma,
    Portable,
}

impl Isa {
    /// The portable kernels (plain Rust, any CPU).
    pub const PORTABLE: Isa = Isa(Kind::Portable);

    /// The AVX2/FMA kernels, when this CPU has both features.
    pub fn avx2_fma() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Isa(Kind::Avx2Fma));
        }
        None
    }

    /// The fastest kernels this CPU runs: AVX2/FMA where available, else portable.
    pub fn detect() -> Isa {
        Self::avx2_fma().unwrap_or(Self::PORTABLE)
    }

    /// Whether this selects the AVX2/FMA kernels (and so the CPU has AVX2 and FMA).
    #[inline]
    pub fn is_avx2_fma(self) -> bool {
        self.0 == Kind::Avx2Fma
    }
}

/// Arguments of a kernel call that do not fit together (a buffer too small for the shape,
/// offsets out of order or out of range). Nothing has been written when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeError(&'static str);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ShapeError {}

/// A raw pointer that parallel tasks may share; every task writes a disjoint region.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: a `SyncPtr` is only dereferenced by tasks that each touch a region of the buffer no
// other task touches (see `linear`, `layer_norm`, `attention`), while the spawning call holds
// the buffer's `&mut` borrow: what sending disjoint `&mut` parts would allow.
unsafe impl Send for SyncPtr {}
// SAFETY: as for `Send`: shared references only copy the pointer out; the writes through it
// go to disjoint regions.
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
