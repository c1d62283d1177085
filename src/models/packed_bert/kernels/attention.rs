//! Self-attention per sequence over packed rows, on the GEMM micro-kernel.

use super::gemm::micro;
use super::math::{exp_impl, sum};
use super::{par_ranges, tile_rows, Isa, Line, ShapeError, SyncPtr, MR, NR};

/// Where the tokens of each sequence are: rows `offsets[s] - base..offsets[s+1] - base`
/// of `qkv` (and of the output).
///
/// The fields are private and [`Attention::new`] checks them: [`attention`] writes through
/// raw pointers at these offsets, so safe code must not be able to build a bad one.
pub struct Attention<'a> {
    /// `[rows, 3H]`: Q (pre-scaled by 1/√d), K, V of every token.
    qkv: &'a [f32],
    offsets: &'a [usize],
    base: usize,
    hidden: usize,
    heads: usize,
}

impl<'a> Attention<'a> {
    /// Sequences at `offsets` (rows `offsets[s] - base..offsets[s+1] - base` of `qkv`, which
    /// is `[rows, 3 * hidden]`), with `heads` heads. Fails unless `offsets` is non-empty,
    /// non-decreasing and starts at or after `base`, its rows fit in `qkv`, and `heads` is
    /// non-zero and divides `hidden`. O(sequences).
    pub fn new(
        qkv: &'a [f32],
        offsets: &'a [usize],
        base: usize,
        hidden: usize,
        heads: usize,
    ) -> Result<Self, ShapeError> {
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return Err(ShapeError("attention: no offsets"));
        };
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(ShapeError("attention: hidden size not a multiple of the head count"));
        }
        if first < base || offsets.windows(2).any(|w| w[1] < w[0]) {
            return Err(ShapeError("attention: offsets decrease or start before base"));
        }
        // Checked: a wrapped product would let huge offsets pass with a small `qkv`. It also
        // bounds `total * hidden`, which `attention` then computes unchecked.
        match (last - base).checked_mul(3).and_then(|x| x.checked_mul(hidden)) {
            Some(need) if qkv.len() >= need => Ok(Attention { qkv, offsets, base, hidden, heads }),
            _ => Err(ShapeError("attention: offsets run past the end of qkv")),
        }
    }
}

/// One (sequence, head) unit. K is packed transposed into 16-key panels and V into
/// 16-column panels, so that S = QKᵀ and O = softmax(S)V both run on the GEMM
/// micro-kernel, six queries at a time.
///
/// # Safety
///
/// - `s + 1 < at.offsets.len()` and `h < at.heads`;
/// - `ctx` points to a `[T, at.hidden]` matrix (`T = offsets[last] - base`) valid for writes,
///   and nothing else accesses rows `offsets[s] - base..offsets[s + 1] - base`, columns
///   `h * hd..(h + 1) * hd` (`hd = hidden / heads`) of it during the call;
/// - when `SIMD`, the CPU supports AVX2 and FMA.
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
        // SAFETY: row `o + ts < e <= T` of `qkv`, which `Attention::new` checked holds
        // `T × 3H` floats; column `qc < H`.
        let q = unsafe { qkv.as_ptr().add((o + ts) * ld + qc) };
        for p in 0..kp {
            // SAFETY: `1 <= mr <= MR`; Q rows `o + ts..o + ts + mr <= e`, columns
            // `qc..qc + hd` of `qkv`; `kt[p * hd..]` is `hd` aligned lines of panel `p < kp`;
            // SIMD only with AVX2/FMA (caller).
            unsafe { micro::<SIMD>(mr, q, ld, kt[p * hd..].as_ptr() as *const f32, hd, &mut tile) };
            for (r, trow) in tile.iter().enumerate().take(mr) {
                // SAFETY: row `r < MR`, columns `p * NR..(p + 1) * NR <= sld` of the scores,
                // which `sc` holds (`MR × kp` lines); `tile` is a separate local.
                unsafe {
                    std::ptr::copy_nonoverlapping(trow.as_ptr(), sp.add(r * sld + p * NR), NR)
                };
            }
        }
        for r in 0..mr {
            // SAFETY: score row `r < MR`, its first `len <= sld` columns, inside `sc`; no
            // other reference to `sc` is live while `row` is.
            let row = unsafe { std::slice::from_raw_parts_mut(sp.add(r * sld), len) };
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            row.iter_mut().for_each(|x| *x = exp_impl::<SIMD>(*x - max));
            let inv = 1.0 / sum(row);
            row.iter_mut().for_each(|x| *x *= inv);
        }
        for p in 0..vp {
            // SAFETY: `1 <= mr <= MR` score rows of `len <= sld` columns, inside `sc`;
            // `vt[p * len..]` is `len` aligned lines of panel `p < vp`; SIMD as above.
            unsafe {
                micro::<SIMD>(mr, sp, sld, vt[p * len..].as_ptr() as *const f32, len, &mut tile)
            };
            let ncols = NR.min(hd - p * NR);
            for (r, trow) in tile.iter().enumerate().take(mr) {
                // SAFETY: row `o + ts + r < e` of `ctx`, columns `qc + p * NR..` up to
                // `qc + hd`: this unit's own rows × head columns (caller's contract).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        trow.as_ptr(),
                        ctx.add((o + ts + r) * at.hidden + qc + p * NR),
                        ncols,
                    )
                };
            }
        }
    }
}

/// `attend_body::<true>` compiled with AVX2 and FMA enabled.
///
/// # Safety
///
/// `attend_body`'s contract, and the CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    at: &Attention<'_>,
    s: usize,
    h: usize,
    ctx: *mut f32,
    scratch: &mut Vec<Line>,
) {
    // SAFETY: the caller's contract, CPU features included.
    unsafe { attend_body::<true>(at, s, h, ctx, scratch) }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Self-attention of every sequence over its own tokens: `ctx[T, H]` = softmax(QKᵀ)V per
/// head. Units of (sequence, head) run in parallel when `par`; `isa` picks the kernels.
/// Fails, writing nothing, when `ctx` is shorter than the `[T, H]` the offsets span.
pub fn attention(
    at: &Attention<'_>,
    ctx: &mut [f32],
    par: bool,
    isa: Isa,
) -> Result<(), ShapeError> {
    // `Attention::new` checked the offsets against `qkv`; only `ctx` is left.
    let seqs = at.offsets.len() - 1;
    let total = at.offsets[seqs] - at.base;
    if ctx.len() < total * at.hidden {
        return Err(ShapeError("attention: ctx holds fewer rows than the offsets span"));
    }
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
                #[cfg(target_arch = "x86_64")]
                if isa.is_avx2_fma() {
                    // SAFETY: as below; an AVX2/FMA `Isa` exists only on a CPU with both.
                    unsafe { attend_avx2(at, s, h, cp.0, &mut scratch) };
                    continue;
                }
                // SAFETY: `s < seqs`, `h < heads`; `ctx` holds the `T × H` the offsets span
                // (checked above) and stays mutably borrowed by this call; each unit
                // (sequence, head) is handed out once and writes only its rows × head columns.
                unsafe { attend_body::<false>(at, s, h, cp.0, &mut scratch) };
            }
        });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_offsets_are_rejected() {
        let (hidden, heads) = (32, 2);
        let qkv = vec![0.5f32; 10 * 3 * hidden];
        let ok =
            |offsets: &[usize], base| Attention::new(&qkv, offsets, base, hidden, heads).is_ok();
        assert!(ok(&[0, 4, 10], 0));
        assert!(ok(&[5, 9, 15], 5), "a slice of a larger batch");
        assert!(ok(&[0, 0, 3, 3], 0), "empty sequences");
        assert!(!ok(&[], 0), "no offsets");
        assert!(!ok(&[0, 8, 4, 10], 0), "a sequence of negative length");
        assert!(!ok(&[0, 100, 10], 0), "a middle offset past the end");
        assert!(!ok(&[0, 4, 11], 0), "past the end of qkv");
        assert!(!ok(&[3, 6], 4), "before base");
        assert!(!ok(&[0, usize::MAX / 2], 0), "rows × 3H overflows");
        assert!(Attention::new(&qkv, &[0, 10], 0, hidden, 0).is_err());
        assert!(Attention::new(&qkv, &[0, 10], 0, hidden, 3).is_err());
    }

    #[test]
    fn short_ctx_is_rejected_and_left_untouched() {
        let (hidden, heads) = (32, 2);
        let qkv = vec![0.5f32; 10 * 3 * hidden];
        let at = Attention::new(&qkv, &[0, 4, 10], 0, hidden, heads).unwrap();
        let mut ctx = vec![0f32; 10 * hidden];
        for isa in [Isa::PORTABLE, Isa::detect()] {
            assert!(attention(&at, &mut ctx[..9 * hidden], false, isa).is_err());
            assert!(ctx.iter().all(|&x| x == 0.0));
            // All values equal: every output is the value 0.5.
            assert!(attention(&at, &mut ctx, false, isa).is_ok());
            assert!(ctx.iter().all(|&x| (x - 0.5).abs() < 1e-6));
            ctx.fill(0.0);
        }
    }
}
