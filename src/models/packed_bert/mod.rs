//! A padding-free BERT encoder for CPU.
//!
//! The sequences of a batch are *packed*: every linear layer (fused Q/K/V, attention output,
//! both feed-forward layers) runs on one `[T, H]` matrix whose `T` rows are the real tokens of
//! all sequences, with no pad rows, and attention runs per sequence over that sequence's own
//! tokens only. A batch of 128 sentences of 12-20 words padded to its longest does 20-30%
//! more work than this, and candle's masked attention more again.
//!
//! The matrix products are our own: weights are repacked at load time into 16-column panels
//! and multiplied by a 6×16 AVX2/FMA register-blocked micro-kernel (a portable kernel is used
//! where AVX2/FMA is missing), with the bias, GELU or the residual add applied as the tile is
//! stored. Work is split over rayon's global pool (`RAYON_NUM_THREADS`), the same pool candle
//! uses. Buffers live in a small pool of [`Scratch`]es held by the model, so steady state
//! allocates nothing per batch here; the pool holds one scratch per concurrent caller.
//!
//! Numerics: f32 throughout; GELU uses erf (|error| < 3e-7) and
//! softmax an `exp` with relative error ~1e-7, so outputs agree with candle's `BertModel`
//! to cosine > 0.99999 (`tests/packed_bert.rs`).

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use parking_lot::Mutex;

use crate::execute::staging::HostStaging;

pub use kernels::{Act, PackedLinear};

// KERNELS-BEGIN (self-contained: std + rayon only)
/// Matrix product, attention and element-wise kernels on f32 slices.
pub mod kernels {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Columns of one packed weight panel (two AVX registers).
    pub const NR: usize = 16;
    /// Rows of one micro-tile.
    pub const MR: usize = 6;
    /// Depth of one K block (a 16-column panel slice of `KC` rows is 16 KiB: it stays in L1).
    const KC: usize = 256;
    /// Rows of one M block (its `MC × KC` slice of A, 96 KiB, stays in L2).
    const MC: usize = 96;

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
    pub fn par_ranges(
        par: bool,
        n: usize,
        min_chunk: usize,
        f: impl Fn(usize, usize) + Sync + Send,
    ) {
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

    /// A linear layer `y = x · Wᵀ + b` with `W` (`[n, k]`, PyTorch layout) repacked into
    /// `ceil(n/16)` panels of `k` lines of 16 columns (zero-padded), 64-byte aligned.
    pub struct PackedLinear {
        pub k: usize,
        pub n: usize,
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

        fn panel_ptr(&self, p: usize, k0: usize) -> *const f32 {
            self.panels[p * self.k + k0..].as_ptr() as *const f32
        }
    }

    /// Activation applied as a tile is stored.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Act {
        None,
        /// `x · Φ(x)` with the exact (erf) normal CDF.
        GeluErf,
        /// The tanh approximation of GELU.
        GeluTanh,
        Relu,
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
    /// pool's threads when `par`.
    pub fn linear(a: &[f32], m: usize, w: &PackedLinear, c: &mut [f32], store: Store, par: bool) {
        let (k, n) = (w.k, w.n);
        assert!(a.len() >= m * k && c.len() >= m * n, "linear: buffers too small");
        if m == 0 {
            return;
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
            // SAFETY: tasks write disjoint (row block, panel range) regions of C; A and the
            // weights are only read; bounds were checked above.
            unsafe { block(ap as *const f32, r0, rows, w, cp.0, p0, p1, store) }
        };
        if tasks == 1 || threads == 1 {
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().with_max_len(1).for_each(run);
        }
    }

    /// Rows of each micro-tile of a block of `rows`: sizes as equal as possible, at most MR.
    #[inline(always)]
    fn tile_rows(rows: usize, t: usize, ntiles: usize) -> (usize, usize) {
        let base = rows / ntiles;
        let extra = rows % ntiles;
        let start = t * base + t.min(extra);
        (start, base + usize::from(t < extra))
    }

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
    ) {
        #[cfg(target_arch = "x86_64")]
        if simd() {
            return block_avx2(a, r0, rows, w, c, p0, p1, store);
        }
        block_body::<false>(a, r0, rows, w, c, p0, p1, store)
    }

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
        block_body::<true>(a, r0, rows, w, c, p0, p1, store)
    }

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
                    let ap = a.add(row * k + k0);
                    micro::<SIMD>(mr, ap, k, bp, kc, &mut tile);
                    let cp = c.add(row * n + c0);
                    // Accumulate into C when a previous K block (or the residual) is there.
                    let accumulate = !first || store == Store::Add;
                    let act = match store {
                        Store::Set(act) if last => Some(act),
                        Store::Add if last => Some(Act::None),
                        _ => None,
                    };
                    store_tile::<SIMD>(&tile, mr, ncols, cp, n, accumulate, act.map(|a| (bias, a)));
                }
            }
            k0 += kc;
        }
    }

    #[inline(always)]
    unsafe fn micro<const SIMD: bool>(
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
            match mr {
                6 => micro_avx2::<6>(a, lda, b, kc, t),
                5 => micro_avx2::<5>(a, lda, b, kc, t),
                4 => micro_avx2::<4>(a, lda, b, kc, t),
                3 => micro_avx2::<3>(a, lda, b, kc, t),
                2 => micro_avx2::<2>(a, lda, b, kc, t),
                _ => micro_avx2::<1>(a, lda, b, kc, t),
            }
            return;
        }
        micro_portable(mr, a, lda, b, kc, tile)
    }

    /// `tile[0..M][0..16] = A[0..M, 0..kc] · B[0..kc, 0..16]`: 2×M accumulators in registers,
    /// A broadcast from its rows, B one 64-byte line per K step.
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
            kk += 2;
        }
        if kk < kc {
            let b0 = _mm256_load_ps(bp);
            let b1 = _mm256_load_ps(bp.add(8));
            for r in 0..M {
                let av = _mm256_broadcast_ss(&*ap.add(r * lda));
                c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
            }
        }
        for r in 0..M {
            _mm256_storeu_ps(tile.add(r * NR), c0[r]);
            _mm256_storeu_ps(tile.add(r * NR + 8), c1[r]);
        }
    }

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
            let brow = std::slice::from_raw_parts(b.add(kk * NR), NR);
            for (r, row) in tile.iter_mut().enumerate().take(mr) {
                let av = *a.add(r * lda + kk);
                for (d, bv) in row.iter_mut().zip(brow) {
                    *d += av * bv;
                }
            }
        }
    }

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
            let dst = std::slice::from_raw_parts_mut(c.add(r * ldc), ncols);
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

    #[inline(always)]
    fn apply_act<const F: bool>(v: &mut [f32], act: Act) {
        match act {
            Act::None => {}
            Act::GeluErf => v.iter_mut().for_each(|x| *x = gelu_erf_impl::<F>(*x)),
            Act::GeluTanh => v.iter_mut().for_each(|x| *x = gelu_tanh_impl::<F>(*x)),
            Act::Relu => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        }
    }

    /// `a · b + c`, fused when `F` (the caller runs with FMA enabled).
    #[inline(always)]
    fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
        if F {
            a.mul_add(b, c)
        } else {
            a * b + c
        }
    }

    /// `e^x` for f32, branch-free (vectorizes): 2^n · p(r), |r| ≤ ln2/2, degree-7 Taylor
    /// polynomial (relative error ~1e-7). Saturates below -87 (→ ~0) and above 88.
    #[inline(always)]
    pub fn exp_f(x: f32) -> f32 {
        exp_impl::<false>(x)
    }

    #[inline(always)]
    fn exp_impl<const F: bool>(x: f32) -> f32 {
        // 1.5 · 2²³: adding it rounds to an integer, which then sits in the low mantissa bits
        // (no float-to-int conversion, which does not vectorize with Rust's saturating `as`).
        const SHIFT: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let big = fma::<F>(x, std::f32::consts::LOG2_E, SHIFT);
        let n = big - SHIFT;
        // ln 2 split in a part exact in f32 and the rest (Cody-Waite reduction).
        let r = fma::<F>(n, 2.121_944_4e-4, fma::<F>(n, -0.693_359_4, x));
        let mut p = 1.0 / 5040.0;
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = fma::<F>(p, r, c);
        }
        // 2^n: n + 127 in the exponent field.
        let e = big.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127) << 23;
        p * f32::from_bits(e)
    }

    /// erf for f32, branch-free: Abramowitz-Stegun 7.1.26 (absolute error < 1.5e-7) for
    /// |x| ≥ 0.5, its Maclaurin series to x¹¹ below that (where 7.1.26 loses to cancellation).
    #[inline(always)]
    pub fn erf_f(x: f32) -> f32 {
        erf_impl::<false>(x)
    }

    #[inline(always)]
    fn erf_impl<const F: bool>(x: f32) -> f32 {
        let a = x.abs();
        let t = 1.0 / fma::<F>(0.327_591_1, a, 1.0);
        let mut poly = 1.061_405_4;
        for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
            poly = fma::<F>(poly, t, c);
        }
        poly *= t;
        let big = fma::<F>(-poly, exp_impl::<F>(-a * a), 1.0).copysign(x);
        let x2 = x * x;
        let mut series = -0.000_854_832_7;
        for c in [
            0.005_223_977_6,
            -0.026_866_17,
            0.112_837_92,
            -0.376_126_4,
            std::f32::consts::FRAC_2_SQRT_PI,
        ] {
            series = fma::<F>(series, x2, c);
        }
        if a < 0.5 {
            x * series
        } else {
            big
        }
    }

    /// GELU with the exact normal CDF: `0.5 x (1 + erf(x / √2))`.
    #[inline(always)]
    pub fn gelu_erf(x: f32) -> f32 {
        gelu_erf_impl::<false>(x)
    }

    #[inline(always)]
    fn gelu_erf_impl<const F: bool>(x: f32) -> f32 {
        let hx = 0.5 * x;
        fma::<F>(hx, erf_impl::<F>(x * std::f32::consts::FRAC_1_SQRT_2), hx)
    }

    /// GELU, tanh approximation.
    #[inline(always)]
    pub fn gelu_tanh(x: f32) -> f32 {
        gelu_tanh_impl::<false>(x)
    }

    #[inline(always)]
    fn gelu_tanh_impl<const F: bool>(x: f32) -> f32 {
        let u = 0.797_884_6 * fma::<F>(0.044_715 * x * x, x, x);
        // tanh(u) = 1 - 2 / (e^{2u} + 1)
        let th = 1.0 - 2.0 / (exp_impl::<F>(2.0 * u) + 1.0);
        let hx = 0.5 * x;
        fma::<F>(hx, th, hx)
    }

    /// Sum of `a[i] * b[i]`, 8 independent lanes (vectorizes without reassociation).
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let mut ca = a.chunks_exact(8);
        let mut cb = b.chunks_exact(8);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            s += x * y;
        }
        s
    }

    #[inline(always)]
    fn sum(a: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let mut ca = a.chunks_exact(8);
        for x in &mut ca {
            for l in 0..8 {
                acc[l] += x[l];
            }
        }
        let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for x in ca.remainder() {
            s += x;
        }
        s
    }

    /// LayerNorm of one row in place: `(x - mean) / sqrt(var + eps) * g + b`.
    #[inline(always)]
    fn layer_norm_row(x: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
        let h = x.len() as f32;
        let mean = sum(x) / h;
        x.iter_mut().for_each(|v| *v -= mean);
        let var = dot(x, x) / h;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in x.iter_mut().zip(g).zip(b) {
            *v = *v * inv * g + b;
        }
    }

    #[inline(always)]
    fn layer_norm_rows_body(x: &mut [f32], h: usize, g: &[f32], b: &[f32], eps: f32) {
        for row in x.chunks_exact_mut(h) {
            layer_norm_row(row, g, b, eps);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn layer_norm_rows_avx2(x: &mut [f32], h: usize, g: &[f32], b: &[f32], eps: f32) {
        layer_norm_rows_body(x, h, g, b, eps)
    }

    /// LayerNorm of every `h`-wide row of `x` in place (rows in parallel when `par`).
    pub fn layer_norm(x: &mut [f32], h: usize, g: &[f32], b: &[f32], eps: f32, par: bool) {
        let rows = x.len() / h;
        let xp = SyncPtr(x.as_mut_ptr());
        par_ranges(par, rows, 32, move |s, e| {
            let xp = xp;
            // SAFETY: disjoint row ranges of `x`.
            let part = unsafe { std::slice::from_raw_parts_mut(xp.0.add(s * h), (e - s) * h) };
            #[cfg(target_arch = "x86_64")]
            if simd() {
                return unsafe { layer_norm_rows_avx2(part, h, g, b, eps) };
            }
            layer_norm_rows_body(part, h, g, b, eps)
        });
    }

    /// Where the tokens of each sequence are: rows `offsets[s] - base..offsets[s+1] - base`
    /// of `qkv` (and of the output).
    pub struct Attention<'a> {
        /// `[rows, 3H]`: Q (pre-scaled by 1/√d), K, V of every token.
        pub qkv: &'a [f32],
        pub offsets: &'a [usize],
        pub base: usize,
        pub hidden: usize,
        pub heads: usize,
    }

    /// One (sequence, head) unit. K is packed transposed into 16-key panels and V into
    /// 16-column panels, so that S = QKᵀ and O = softmax(S)V both run on the GEMM
    /// micro-kernel, six queries at a time.
    #[inline(always)]
    unsafe fn attend_body<const SIMD: bool>(
        at: &Attention<'_>,
        s: usize,
        h: usize,
        ctx: *mut f32,
        scratch: &mut Vec<Line>,
    ) {
        let (o, e) = (at.offsets[s] - at.base, at.offsets[s + 1] - at.base);
        let len = e - o;
        if len == 0 {
            return;
        }
        let hd = at.hidden / at.heads;
        let ld = 3 * at.hidden;
        let (qc, kc, vc) = (h * hd, at.hidden + h * hd, 2 * at.hidden + h * hd);
        let (kp, vp) = (len.div_ceil(NR), hd.div_ceil(NR));
        // Lines: Kᵀ panels (kp × hd), V panels (vp × len), scores (MR × kp lines).
        let need = kp * hd + vp * len + MR * kp;
        if scratch.len() < need {
            scratch.resize(need, Line::default());
        }
        let (kt, rest) = scratch.split_at_mut(kp * hd);
        let (vt, sc) = rest.split_at_mut(vp * len);
        let qkv = at.qkv;
        for p in 0..kp {
            for c in 0..hd {
                let line = &mut kt[p * hd + c].0;
                for (l, x) in line.iter_mut().enumerate() {
                    let j = p * NR + l;
                    *x = if j < len { qkv[(o + j) * ld + kc + c] } else { 0.0 };
                }
            }
        }
        for p in 0..vp {
            for j in 0..len {
                let line = &mut vt[p * len + j].0;
                let row = &qkv[(o + j) * ld + vc..(o + j) * ld + vc + hd];
                for (l, x) in line.iter_mut().enumerate() {
                    let c = p * NR + l;
                    *x = if c < hd { row[c] } else { 0.0 };
                }
            }
        }
        let sld = kp * NR; // score row stride (floats)
        let sp = sc.as_mut_ptr() as *mut f32;
        let mut tile = [[0f32; NR]; MR];
        let ntiles = len.div_ceil(MR);
        for t in 0..ntiles {
            let (ts, mr) = tile_rows(len, t, ntiles);
            let q = qkv.as_ptr().add((o + ts) * ld + qc);
            for p in 0..kp {
                micro::<SIMD>(mr, q, ld, kt[p * hd..].as_ptr() as *const f32, hd, &mut tile);
                for (r, trow) in tile.iter().enumerate().take(mr) {
                    std::ptr::copy_nonoverlapping(trow.as_ptr(), sp.add(r * sld + p * NR), NR);
                }
            }
            for r in 0..mr {
                let row = std::slice::from_raw_parts_mut(sp.add(r * sld), len);
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                row.iter_mut().for_each(|x| *x = exp_impl::<SIMD>(*x - max));
                let inv = 1.0 / sum(row);
                row.iter_mut().for_each(|x| *x *= inv);
            }
            for p in 0..vp {
                micro::<SIMD>(mr, sp, sld, vt[p * len..].as_ptr() as *const f32, len, &mut tile);
                let ncols = NR.min(hd - p * NR);
                for (r, trow) in tile.iter().enumerate().take(mr) {
                    // SAFETY: each (sequence, head) unit writes its own rows × head columns.
                    std::ptr::copy_nonoverlapping(
                        trow.as_ptr(),
                        ctx.add((o + ts + r) * at.hidden + qc + p * NR),
                        ncols,
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(
        at: &Attention<'_>,
        s: usize,
        h: usize,
        ctx: *mut f32,
        scratch: &mut Vec<Line>,
    ) {
        attend_body::<true>(at, s, h, ctx, scratch)
    }

    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Self-attention of every sequence over its own tokens: `ctx[T, H]` = softmax(QKᵀ)V per
    /// head. Units of (sequence, head) run in parallel when `par`.
    pub fn attention(at: &Attention<'_>, ctx: &mut [f32], par: bool) {
        let seqs = at.offsets.len() - 1;
        let total = at.offsets[seqs] - at.base;
        assert!(at.offsets[0] >= at.base);
        assert!(at.qkv.len() >= total * 3 * at.hidden && ctx.len() >= total * at.hidden);
        let units = seqs * at.heads;
        let cp = SyncPtr(ctx.as_mut_ptr());
        // Work per unit ∝ len²; aim for chunks of a few thousand token pairs.
        let pairs: usize =
            (0..seqs).map(|s| (at.offsets[s + 1] - at.offsets[s]).pow(2)).sum::<usize>() * at.heads;
        let min_chunk = (units * 4096).div_ceil(pairs.max(1)).max(1);
        par_ranges(par, units, min_chunk, move |u0, u1| {
            let cp = cp;
            SCRATCH.with(|sc| {
                let mut scratch = sc.borrow_mut();
                for u in u0..u1 {
                    let (s, h) = (u / at.heads, u % at.heads);
                    // SAFETY: bounds checked above; units write disjoint parts of `ctx`.
                    #[cfg(target_arch = "x86_64")]
                    if simd() {
                        unsafe { attend_avx2(at, s, h, cp.0, &mut scratch) };
                        continue;
                    }
                    unsafe { attend_body::<false>(at, s, h, cp.0, &mut scratch) };
                }
            });
        });
    }
}
// KERNELS-END

use kernels::{Attention, Store};

/// Shapes and options of a BERT encoder, from `config.json`.
#[derive(Debug, Clone)]
pub struct PackedConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_position: usize,
    pub eps: f32,
    pub act: Act,
}

impl PackedConfig {
    /// From candle's BERT config.
    pub fn from_bert(c: &candle_transformers::models::bert::Config) -> Self {
        use candle_transformers::models::bert::HiddenAct;
        PackedConfig {
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            max_position: c.max_position_embeddings,
            eps: c.layer_norm_eps as f32,
            act: match c.hidden_act {
                HiddenAct::Gelu => Act::GeluErf,
                HiddenAct::GeluApproximate => Act::GeluTanh,
                HiddenAct::Relu => Act::Relu,
            },
        }
    }
}

struct Layer {
    qkv: PackedLinear,
    attn_out: PackedLinear,
    ln1: (Vec<f32>, Vec<f32>),
    ffn_in: PackedLinear,
    ffn_out: PackedLinear,
    ln2: (Vec<f32>, Vec<f32>),
}

/// Per-call working memory; grows to the largest batch seen, then is reused.
#[derive(Default)]
pub struct Scratch {
    offsets: Vec<usize>,
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    ffn: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// The padding-free encoder: weights repacked for [`kernels::linear`], plus a pool of
/// scratch buffers (one per concurrent caller).
pub struct PackedBert {
    pub config: PackedConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type0: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    scratch: Mutex<Vec<Scratch>>,
}

/// Reads tensors by name from a safetensors file, trying the name prefixes BERT checkpoints use.
struct Weights {
    st: MmapedSafetensors,
    prefix: String,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let full = format!("{}{}", self.prefix, name);
        let t = self.st.load(&full, &Device::Cpu).map_err(|e| format!("tensor {full}: {e}"))?;
        if t.dims() != shape {
            return Err(format!("tensor {full}: shape {:?}, expected {:?}", t.dims(), shape));
        }
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor {full}: {e}"))
    }

    /// A LayerNorm's (weight, bias), or the older (gamma, beta) names.
    fn layer_norm(&self, name: &str, h: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
        match (self.get(&format!("{name}.weight"), &[h]), self.get(&format!("{name}.bias"), &[h])) {
            (Ok(g), Ok(b)) => Ok((g, b)),
            (Err(e), _) | (_, Err(e)) => match (
                self.get(&format!("{name}.gamma"), &[h]),
                self.get(&format!("{name}.beta"), &[h]),
            ) {
                (Ok(g), Ok(b)) => Ok((g, b)),
                _ => Err(e),
            },
        }
    }

    fn linear(&self, name: &str, n: usize, k: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
        Ok((
            self.get(&format!("{name}.weight"), &[n, k])?,
            self.get(&format!("{name}.bias"), &[n])?,
        ))
    }
}

impl PackedBert {
    /// Loads the encoder from `model.safetensors` (candle `BertModel` tensor names, with or
    /// without a `bert.` / `<model_type>.` prefix).
    pub fn load(
        weights: &Path,
        config: PackedConfig,
        model_type: Option<&str>,
    ) -> Result<Self, String> {
        let c = &config;
        if c.heads == 0 || !c.hidden.is_multiple_of(c.heads) {
            return Err(format!("hidden size {} is not a multiple of {} heads", c.hidden, c.heads));
        }
        // SAFETY: mapped read-only; model files are never written while served.
        let st = unsafe { MmapedSafetensors::new(weights) }.map_err(|e| e.to_string())?;
        let probe = "embeddings.word_embeddings.weight";
        let mut prefixes = vec![String::new(), "bert.".to_string()];
        if let Some(t) = model_type {
            prefixes.push(format!("{t}."));
        }
        let prefix = prefixes
            .into_iter()
            .find(|p| st.get(&format!("{p}{probe}")).is_ok())
            .ok_or_else(|| format!("no {probe} (with or without a 'bert.' prefix)"))?;
        let w = Weights { st, prefix };
        let h = c.hidden;
        let word = w.get("embeddings.word_embeddings.weight", &[c.vocab, h])?;
        let position = w.get("embeddings.position_embeddings.weight", &[c.max_position, h])?;
        let tt = w
            .st
            .load(&format!("{}embeddings.token_type_embeddings.weight", w.prefix), &Device::Cpu)
            .map_err(|e| e.to_string())?;
        let types = tt.dims().first().copied().unwrap_or(0);
        let token_type = w.get("embeddings.token_type_embeddings.weight", &[types, h])?;
        if types == 0 {
            return Err("empty token_type_embeddings".into());
        }
        let token_type0 = token_type[..h].to_vec();
        let emb_ln = w.layer_norm("embeddings.LayerNorm", h)?;
        let scale = 1.0 / ((h / c.heads) as f32).sqrt();
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let l = format!("encoder.layer.{i}.");
            // Q, K and V fused into one [3H, H] weight; Q pre-scaled by 1/√d.
            let mut wqkv = Vec::with_capacity(3 * h * h);
            let mut bqkv = Vec::with_capacity(3 * h);
            for (proj, s) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                let (wt, b) = w.linear(&format!("{l}attention.self.{proj}"), h, h)?;
                wqkv.extend(wt.iter().map(|x| x * s));
                bqkv.extend(b.iter().map(|x| x * s));
            }
            let (wo, bo) = w.linear(&format!("{l}attention.output.dense"), h, h)?;
            let (wi, bi) = w.linear(&format!("{l}intermediate.dense"), c.intermediate, h)?;
            let (wf, bf) = w.linear(&format!("{l}output.dense"), h, c.intermediate)?;
            layers.push(Layer {
                qkv: PackedLinear::new(&wqkv, Some(&bqkv), 3 * h, h),
                attn_out: PackedLinear::new(&wo, Some(&bo), h, h),
                ln1: w.layer_norm(&format!("{l}attention.output.LayerNorm"), h)?,
                ffn_in: PackedLinear::new(&wi, Some(&bi), c.intermediate, h),
                ffn_out: PackedLinear::new(&wf, Some(&bf), h, c.intermediate),
                ln2: w.layer_norm(&format!("{l}output.LayerNorm"), h)?,
            });
        }
        Ok(PackedBert {
            config,
            word,
            position,
            token_type0,
            emb_ln,
            layers,
            scratch: Mutex::new(Vec::new()),
        })
    }

    /// Encodes the staged batch (only the first `row_tokens[r]` ids of each row are read) and
    /// calls `f(states, offsets)`: `states` is `[T, H]`, sequence `r` is rows
    /// `offsets[r]..offsets[r+1]`.
    pub fn encode<R: Send>(
        &self,
        st: &HostStaging,
        f: impl FnOnce(&[f32], &[usize]) -> R + Send,
    ) -> Result<R, String> {
        let mut scratch = self.scratch.lock().pop().unwrap_or_default();
        // Run on a pool thread: the parallel sections inside then cost no cross-thread wake-up
        // of the caller.
        let result = if rayon::current_thread_index().is_some() {
            self.run(st, &mut scratch, f)
        } else {
            rayon::scope(|_| self.run(st, &mut scratch, f))
        };
        self.scratch.lock().push(scratch);
        result
    }

    fn run<R>(
        &self,
        st: &HostStaging,
        sc: &mut Scratch,
        f: impl FnOnce(&[f32], &[usize]) -> R,
    ) -> Result<R, String> {
        let c = &self.config;
        let (h, inter) = (c.hidden, c.intermediate);
        let rows = st.rows;
        sc.offsets.clear();
        sc.offsets.push(0);
        let mut t = 0usize;
        for r in 0..rows {
            let n = st.row_tokens[r] as usize;
            if n > st.seq_len || n > c.max_position {
                return Err(format!(
                    "row {r} has {n} tokens (padded length {}, model limit {})",
                    st.seq_len, c.max_position
                ));
            }
            if let Some(&bad) = st.ids[r * st.seq_len..r * st.seq_len + n]
                .iter()
                .find(|&&id| id as usize >= c.vocab)
            {
                return Err(format!("token id {bad} is outside the vocabulary ({})", c.vocab));
            }
            t += n;
            sc.offsets.push(t);
        }
        // Every operation runs on all T rows, split over the pool's threads. (Running groups
        // of whole sequences through the entire encoder as one task each, with no
        // synchronisation between operations, measured 5-10% slower with 2 threads: each
        // thread then streams all the weights on its own instead of both sharing one
        // layer's weights in L3.)
        let offsets = &sc.offsets[..];
        let hidden = grow(&mut sc.hidden, t * h);
        let qkv = grow(&mut sc.qkv, t * 3 * h);
        let ctx = grow(&mut sc.ctx, t * h);
        let ffn = grow(&mut sc.ffn, t * inter);
        let mut clock = profile::Clock::start();
        self.embed(st, offsets, hidden);
        clock.lap(profile::Op::Embed);
        for layer in &self.layers {
            kernels::linear(hidden, t, &layer.qkv, qkv, Store::Set(Act::None), true);
            clock.lap(profile::Op::Qkv);
            kernels::attention(
                &Attention { qkv, offsets, base: 0, hidden: h, heads: c.heads },
                ctx,
                true,
            );
            clock.lap(profile::Op::Attention);
            kernels::linear(ctx, t, &layer.attn_out, hidden, Store::Add, true);
            clock.lap(profile::Op::AttnOut);
            kernels::layer_norm(hidden, h, &layer.ln1.0, &layer.ln1.1, c.eps, true);
            clock.lap(profile::Op::LayerNorm);
            kernels::linear(hidden, t, &layer.ffn_in, ffn, Store::Set(c.act), true);
            clock.lap(profile::Op::FfnIn);
            kernels::linear(ffn, t, &layer.ffn_out, hidden, Store::Add, true);
            clock.lap(profile::Op::FfnOut);
            kernels::layer_norm(hidden, h, &layer.ln2.0, &layer.ln2.1, c.eps, true);
            clock.lap(profile::Op::LayerNorm);
        }
        Ok(f(hidden, offsets))
    }

    /// word + position (0..len per sequence) + token type 0, then LayerNorm.
    fn embed(&self, st: &HostStaging, offsets: &[usize], hidden: &mut [f32]) {
        let h = self.config.hidden;
        for r in 0..offsets.len() - 1 {
            let (o, e) = (offsets[r], offsets[r + 1]);
            for (t, dst) in hidden[o * h..e * h].chunks_exact_mut(h).enumerate() {
                let id = st.ids[r * st.seq_len + t] as usize;
                let w = &self.word[id * h..(id + 1) * h];
                let p = &self.position[t * h..(t + 1) * h];
                for (((d, w), p), y) in dst.iter_mut().zip(w).zip(p).zip(&self.token_type0) {
                    *d = w + p + y;
                }
            }
        }
        kernels::layer_norm(hidden, h, &self.emb_ln.0, &self.emb_ln.1, self.config.eps, true);
    }
}

/// Optional time per encoder operation (off by default; one relaxed atomic load per
/// operation when off). In group mode the times of concurrent tasks add up (CPU time).
pub mod profile {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;

    /// Encoder operations.
    #[derive(Clone, Copy, Debug)]
    pub enum Op {
        Embed,
        Qkv,
        Attention,
        AttnOut,
        LayerNorm,
        FfnIn,
        FfnOut,
    }

    /// Names of the operations, in `Op` order.
    pub const NAMES: [&str; 7] =
        ["embed", "qkv", "attention", "attn_out", "layer_norm", "ffn_in", "ffn_out"];

    static ON: AtomicBool = AtomicBool::new(false);
    static NANOS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

    /// Turns collection on or off.
    pub fn enable(on: bool) {
        ON.store(on, Ordering::Relaxed);
    }

    /// Seconds per operation since the last call (and resets).
    pub fn take() -> [(&'static str, f64); 7] {
        let mut out = [("", 0.0); 7];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (NAMES[i], NANOS[i].swap(0, Ordering::Relaxed) as f64 * 1e-9);
        }
        out
    }

    pub(super) struct Clock(Option<Instant>);

    impl Clock {
        pub(super) fn start() -> Self {
            Clock(ON.load(Ordering::Relaxed).then(Instant::now))
        }

        pub(super) fn lap(&mut self, op: Op) {
            if let Some(t) = &mut self.0 {
                let now = Instant::now();
                NANOS[op as usize].fetch_add((now - *t).as_nanos() as u64, Ordering::Relaxed);
                *t = now;
            }
        }
    }
}

/// Pools packed states (`[T, H]`, sequence `r` = rows `offsets[r]..offsets[r+1]`) into
/// `out[rows, H]`: mean of the sequence's rows or its first (`[CLS]`) row, then optional L2
/// normalisation (eps 1e-12). A sequence without tokens gives zeros.
pub fn pool_packed(
    states: &[f32],
    offsets: &[usize],
    hidden: usize,
    mean: bool,
    normalize: bool,
    out: &mut [f32],
) {
    for (r, dst) in out.chunks_exact_mut(hidden).take(offsets.len() - 1).enumerate() {
        let (o, e) = (offsets[r], offsets[r + 1]);
        dst.fill(0.0);
        if e == o {
            continue;
        }
        if mean {
            for src in states[o * hidden..e * hidden].chunks_exact(hidden) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += *s;
                }
            }
            let inv = 1.0 / (e - o) as f32;
            dst.iter_mut().for_each(|d| *d *= inv);
        } else {
            dst.copy_from_slice(&states[o * hidden..(o + 1) * hidden]);
        }
        if normalize {
            let norm = dst.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            dst.iter_mut().for_each(|d| *d /= norm);
        }
    }
}
