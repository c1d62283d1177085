//! The packed GEMM: weights repacked into 16-column panels, a 6×16 register-blocked
//! micro-kernel (AVX2/FMA, or portable), and the store epilogue (bias, activation, residual).

use rayon::prelude::*;

use super::math::{apply_act, Act};
use super::{tile_rows, Isa, Line, ShapeError, SyncPtr, MR, NR};

/// Depth of one K block (a 16-column panel slice of `KC` rows is 16 KiB: it stays in L1).
const KC: usize = 256;
/// Rows of one M block (its `MC × KC` slice of A, 96 KiB, stays in L2).
const MC: usize = 96;

/// A linear layer `y = x · Wᵀ + b` with `W` (`[n, k]`, PyTorch layout) repacked into
/// `ceil(n/16)` panels of `k` lines of 16 columns (zero-padded), 64-byte aligned.
///
/// The fields are private: `linear` trusts `k` and `n` to describe `panels` and `bias`.
pub struct PackedLinear {
    k: usize,
    n: usize,
    panels: Vec<Line>,
    bias: Vec<f32>,
}

impl PackedLinear {
    /// Packs `w` (`[n, k]` row-major) and `bias` (`[n]`, zero when absent).
    pub fn new(w: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight shape");
        let np = n.div_ceil(NR);
        let mut panels = vec![Line::default(); np * k];
        for j in 0..n {
            let (p, c) = (j / NR, j % NR);
            for kk in 0..k {
                panels[p * k + kk].0[c] = w[j * k + kk];
            }
        }
        let mut b = vec![0f32; np * NR];
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "bias shape");
            b[..n].copy_from_slice(bias);
        }
        PackedLinear { k, n, panels, bias: b }
    }

    /// Input width (columns of `x`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output width (columns of `y`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Start of panel `p` at depth `k0`: 64-byte aligned, `k - k0` lines follow.
    pub(super) fn panel_ptr(&self, p: usize, k0: usize) -> *const f32 {
        self.panels[p * self.k + k0..].as_ptr() as *const f32
    }
}

/// What happens to `acc = A · Wᵀ + b` when it is stored into `C`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// `C = act(acc)`.
    Set(Act),
    /// `C += acc` (the residual connection, in place).
    Add,
}

/// `C[m, n] (store) A[m, k] · Wᵀ + b`, row-major, `lda = k`, `ldc = n`; split over the
/// pool's threads when `par`; `isa` picks the micro-kernel. Fails, writing nothing, when `a`
/// or `c` is too small for `m` rows.
pub fn linear(
    a: &[f32],
    m: usize,
    w: &PackedLinear,
    c: &mut [f32],
    store: Store,
    par: bool,
    isa: Isa,
) -> Result<(), ShapeError> {
    let (k, n) = (w.k, w.n);
    // Checked products: a wrapped `m * k` would let a huge `m` pass with small buffers.
    match (m.checked_mul(k), m.checked_mul(n)) {
        (Some(mk), Some(mn)) if a.len() >= mk && c.len() >= mn => {}
        _ => return Err(ShapeError("linear: buffers too small for m rows")),
    }
    if m == 0 {
        return Ok(());
    }
    let np = n.div_ceil(NR);
    // M blocks of at most MC rows, as equal as possible (multiples of MR but the last).
    let nmb = m.div_ceil(MC);
    let mc = m.div_ceil(nmb).div_ceil(MR) * MR;
    let nmb = m.div_ceil(mc);
    let threads = if par { rayon::current_num_threads().max(1) } else { 1 };
    // At least 4 tasks per thread, so that work stealing evens out unequal blocks (and a
    // core taken by another process); column parts as equal as possible.
    let nparts = if threads > 1 { (4 * threads).div_ceil(nmb).clamp(1, np) } else { 1 };
    let tasks = nmb * nparts;
    let cp = SyncPtr(c.as_mut_ptr());
    let ap = a.as_ptr() as usize;
    let run = move |t: usize| {
        let cp = cp;
        let (mb, pc) = (t / nparts, t % nparts);
        let r0 = mb * mc;
        let rows = mc.min(m - r0);
        let (p0, p1) = (pc * np / nparts, (pc + 1) * np / nparts);
        // SAFETY: `a` and `c` hold `m` rows (checked above) and `r0 + rows <= m`; `p1 <= np`;
        // the (row block, panel range) of every task is its own, so no two tasks touch the
        // same part of C, and A (a shared borrow) is not written while they run.
        unsafe { block(ap as *const f32, r0, rows, w, cp.0, p0, p1, store, isa) }
    };
    if tasks == 1 || threads == 1 {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().with_max_len(1).for_each(run);
    }
    Ok(())
}

/// Rows `r0..r0 + rows`, panels `p0..p1` of `C` for [`linear`], on the kernels `isa` picks.
///
/// # Safety
///
/// - `a` points to a row-major `[m, w.k]` matrix valid for reads and not written during the
///   call, `c` to a row-major `[m, w.n]` matrix valid for reads and writes, and
///   `r0 + rows <= m`;
/// - `p0 <= p1 <= w.n.div_ceil(NR)`;
/// - nothing else accesses rows `r0..r0 + rows`, columns `p0 * NR..min(p1 * NR, w.n)` of `c`
///   during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    a: *const f32,
    r0: usize,
    rows: usize,
    w: &PackedLinear,
    c: *mut f32,
    p0: usize,
    p1: usize,
    store: Store,
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx2_fma() {
        // SAFETY: the caller's contract is `block_avx2`'s; an AVX2/FMA `Isa` exists only on a
        // CPU with both features.
        return unsafe { block_avx2(a, r0, rows, w, c, p0, p1, store) };
    }
    // SAFETY: the caller's contract is `block_body`'s (which needs no CPU feature when not
    // SIMD).
    unsafe { block_body::<false>(a, r0, rows, w, c, p0, p1, store) }
}

/// [`block`] compiled with AVX2 and FMA enabled.
///
/// # Safety
///
/// [`block`]'s contract, and the CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2(
    a: *const f32,
    r0: usize,
    rows: usize,
    w: &PackedLinear,
    c: *mut f32,
    p0: usize,
    p1: usize,
    store: Store,
) {
    // SAFETY: the caller's contract, CPU features included.
    unsafe { block_body::<true>(a, r0, rows, w, c, p0, p1, store) }
}

/// The body of [`block`]; `SIMD` selects the AVX2 micro-kernel and fused multiply-adds.
///
/// # Safety
///
/// [`block`]'s contract; when `SIMD`, the CPU supports AVX2 and FMA.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_body<const SIMD: bool>(
    a: *const f32,
    r0: usize,
    rows: usize,
    w: &PackedLinear,
    c: *mut f32,
    p0: usize,
    p1: usize,
    store: Store,
) {
    let (k, n) = (w.k, w.n);
    let ntiles = rows.div_ceil(MR);
    let mut tile = [[0f32; NR]; MR];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let first = k0 == 0;
        let last = k0 + kc == k;
        for p in p0..p1 {
            let bp = w.panel_ptr(p, k0);
            let c0 = p * NR;
            let ncols = NR.min(n - c0);
            let bias = &w.bias[c0..c0 + NR];
            for t in 0..ntiles {
                let (ts, mr) = tile_rows(rows, t, ntiles);
                let row = r0 + ts;
                // SAFETY: the tiles split the block, so rows `row..row + mr` lie in
                // `r0..r0 + rows`, inside `a` (caller's contract), and `k0 < k`.
                let ap = unsafe { a.add(row * k + k0) };
                // SAFETY: `1 <= mr <= MR` (`tile_rows`); those rows of A have columns
                // `k0..k0 + kc` (`k0 + kc <= k`); `bp` starts `kc` aligned lines of panel
                // `p < p1 <= w.n.div_ceil(NR)` (`panel_ptr`); SIMD only with AVX2/FMA (caller).
                unsafe { micro::<SIMD>(mr, ap, k, bp, kc, &mut tile) };
                // SAFETY: row `row` of `c` (as for `ap`), column `c0 < w.n` (`p < p1`).
                let cp = unsafe { c.add(row * n + c0) };
                // Accumulate into C when a previous K block (or the residual) is there.
                let accumulate = !first || store == Store::Add;
                let act = match store {
                    Store::Set(act) if last => Some(act),
                    Store::Add if last => Some(Act::None),
                    _ => None,
                };
                // SAFETY: rows `row..row + mr`, columns `c0..c0 + ncols` of `c` (`ncols <= NR`,
                // `c0 + ncols <= w.n`) are in this call's region, which nothing else touches.
                unsafe {
                    store_tile::<SIMD>(&tile, mr, ncols, cp, n, accumulate, act.map(|a| (bias, a)))
                };
            }
        }
        k0 += kc;
    }
}

/// `tile[0..mr] = A[0..mr, 0..kc] · B[0..kc, 0..16]`, on the AVX2 kernel when `SIMD`.
///
/// # Safety
///
/// - `1 <= mr <= MR`;
/// - `a.add(r * lda + kk)` is valid for reads for every `r < mr`, `kk < kc`;
/// - `b` is valid for reads of `kc * NR` floats and 32-byte aligned (a run of [`Line`]s);
/// - when `SIMD`, the CPU supports AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn micro<const SIMD: bool>(
    mr: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    kc: usize,
    tile: &mut [[f32; NR]; MR],
) {
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        let t = tile.as_mut_ptr() as *mut f32;
        // SAFETY: `tile` holds `MR × NR` floats and `mr <= MR` rows are written (`mr >= 1`, so
        // the last arm is `mr == 1`); A, B and the CPU as the caller guarantees.
        unsafe {
            match mr {
                6 => micro_avx2::<6>(a, lda, b, kc, t),
                5 => micro_avx2::<5>(a, lda, b, kc, t),
                4 => micro_avx2::<4>(a, lda, b, kc, t),
                3 => micro_avx2::<3>(a, lda, b, kc, t),
                2 => micro_avx2::<2>(a, lda, b, kc, t),
                _ => micro_avx2::<1>(a, lda, b, kc, t),
            }
        }
        return;
    }
    // SAFETY: the caller's contract covers `micro_portable`'s.
    unsafe { micro_portable(mr, a, lda, b, kc, tile) }
}

/// `tile[0..M][0..16] = A[0..M, 0..kc] · B[0..kc, 0..16]`: 2×M accumulators in registers,
/// A broadcast from its rows, B one 64-byte line per K step.
///
/// # Safety
///
/// - the CPU supports AVX2 and FMA;
/// - `a.add(r * lda + kk)` is valid for reads for every `r < M`, `kk < kc`;
/// - `b` is valid for reads of `kc * NR` floats and 32-byte aligned;
/// - `tile` is valid for writes of `M * NR` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn micro_avx2<const M: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    kc: usize,
    tile: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut c0 = [_mm256_setzero_ps(); M];
    let mut c1 = [_mm256_setzero_ps(); M];
    let mut bp = b;
    let mut ap = a;
    let mut kk = 0;
    while kk + 2 <= kc {
        // SAFETY: `bp` is line `kk` of B and `ap` column `kk` of A's row 0; `kk + 2 <= kc`,
        // so lines `kk`, `kk + 1` (32-byte aligned: a line is 64 bytes) and columns `kk`,
        // `kk + 1` of rows `r < M` are in the caller's ranges; after the step the pointers are
        // at most one past them.
        unsafe {
            let b0 = _mm256_load_ps(bp);
            let b1 = _mm256_load_ps(bp.add(8));
            for r in 0..M {
                let av = _mm256_broadcast_ss(&*ap.add(r * lda));
                c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
            }
            let b0 = _mm256_load_ps(bp.add(NR));
            let b1 = _mm256_load_ps(bp.add(NR + 8));
            for r in 0..M {
                let av = _mm256_broadcast_ss(&*ap.add(r * lda + 1));
                c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
            }
            bp = bp.add(2 * NR);
            ap = ap.add(2);
        }
        kk += 2;
    }
    if kk < kc {
        // SAFETY: as in the loop, for the one line `kk = kc - 1` left.
        unsafe {
            let b0 = _mm256_load_ps(bp);
            let b1 = _mm256_load_ps(bp.add(8));
            for r in 0..M {
                let av = _mm256_broadcast_ss(&*ap.add(r * lda));
                c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
            }
        }
    }
    for r in 0..M {
        // SAFETY: row `r < M` of `tile`, which the caller makes valid for `M * NR` floats.
        unsafe {
            _mm256_storeu_ps(tile.add(r * NR), c0[r]);
            _mm256_storeu_ps(tile.add(r * NR + 8), c1[r]);
        }
    }
}

/// [`micro`] in plain Rust.
///
/// # Safety
///
/// - `a.add(r * lda + kk)` is valid for reads for every `r < min(mr, MR)`, `kk < kc`;
/// - `b` is valid for reads of `kc * NR` floats, f32-aligned, and not written during the call.
#[inline(always)]
unsafe fn micro_portable(
    mr: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    kc: usize,
    tile: &mut [[f32; NR]; MR],
) {
    for row in tile.iter_mut().take(mr) {
        row.fill(0.0);
    }
    for kk in 0..kc {
        // SAFETY: line `kk < kc` of B, in the caller's range and not written meanwhile.
        let brow = unsafe { std::slice::from_raw_parts(b.add(kk * NR), NR) };
        for (r, row) in tile.iter_mut().enumerate().take(mr) {
            // SAFETY: row `r < min(mr, MR)`, column `kk < kc` of A, in the caller's range.
            let av = unsafe { *a.add(r * lda + kk) };
            for (d, bv) in row.iter_mut().zip(brow) {
                *d += av * bv;
            }
        }
    }
}

/// Stores the first `mr` rows, `ncols` columns of `tile` into `C` (row stride `ldc`): added to
/// what is there when `accumulate`, then bias and activation when `fin` (fused multiply-adds
/// when `F`).
///
/// # Safety
///
/// For every `r < min(mr, MR)`, the `ncols` floats at `c.add(r * ldc)` are valid for reads and
/// writes, and nothing else accesses them during the call.
#[inline(always)]
unsafe fn store_tile<const F: bool>(
    tile: &[[f32; NR]; MR],
    mr: usize,
    ncols: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    fin: Option<(&[f32], Act)>,
) {
    for (r, trow) in tile.iter().enumerate().take(mr) {
        // SAFETY: row `r < min(mr, MR)` of the caller's region, which is ours alone.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), ncols) };
        if ncols == NR {
            let mut v = *trow;
            finish::<F>(&mut v, dst, accumulate, fin);
            dst.copy_from_slice(&v);
        } else {
            let mut v = [0f32; NR];
            v[..ncols].copy_from_slice(&trow[..ncols]);
            let mut d = [0f32; NR];
            d[..ncols].copy_from_slice(dst);
            finish::<F>(&mut v, &d, accumulate, fin);
            dst.copy_from_slice(&v[..ncols]);
        }
    }
}

#[inline(always)]
fn finish<const F: bool>(
    v: &mut [f32; NR],
    old: &[f32],
    accumulate: bool,
    fin: Option<(&[f32], Act)>,
) {
    if accumulate {
        for (x, o) in v.iter_mut().zip(old) {
            *x += *o;
        }
    }
    if let Some((bias, act)) = fin {
        for (x, b) in v.iter_mut().zip(bias) {
            *x += *b;
        }
        apply_act::<F>(v, act);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_too_small_for_the_shape_are_rejected() {
        let (n, k) = (3, 5);
        let w = PackedLinear::new(&[0.5; 15], None, n, k);
        let a = vec![1f32; 4 * k];
        let mut c = vec![0f32; 4 * n];
        let isa = Isa::detect();
        assert!(linear(&a, 4, &w, &mut c, Store::Add, false, isa).is_ok());
        assert!(linear(&a, 5, &w, &mut c, Store::Add, false, isa).is_err());
        assert!(linear(&a, 4, &w, &mut c[..11], Store::Add, false, isa).is_err());
        // `m * k` wraps around to a small number.
        let m = usize::MAX / k + 1;
        assert!(linear(&a, m, &w, &mut c, Store::Add, false, isa).is_err());
        // Only the first call wrote: each output is 5 × (1 × 0.5).
        assert!(c.iter().all(|&x| x == 2.5));
    }
}
