//! Self-attention per sequence over packed rows, on the GEMM micro-kernel.

use super::gemm::micro;
use super::math::{exp_impl, sum};
use super::{par_ranges, tile_rows, Isa, Line, SyncPtr, MR, NR};

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
/// head. Units of (sequence, head) run in parallel when `par`; `isa` picks the kernels.
pub fn attention(at: &Attention<'_>, ctx: &mut [f32], par: bool, isa: Isa) {
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
                if isa.is_avx2_fma() {
                    unsafe { attend_avx2(at, s, h, cp.0, &mut scratch) };
                    continue;
                }
                unsafe { attend_body::<false>(at, s, h, cp.0, &mut scratch) };
            }
        });
    });
}
