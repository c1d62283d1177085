//! LayerNorm over the rows of a packed `[T, H]` matrix.

use super::math::{dot, sum};
use super::{par_ranges, Isa, ShapeError, SyncPtr};

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

/// `layer_norm_rows_body` compiled with AVX2 and FMA enabled.
///
/// # Safety
///
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_rows_avx2(x: &mut [f32], h: usize, g: &[f32], b: &[f32], eps: f32) {
    layer_norm_rows_body(x, h, g, b, eps)
}

/// LayerNorm of every `h`-wide row of `x` in place (rows in parallel when `par`), on the
/// kernels `isa` picks. Fails, writing nothing, when `h` is 0 or `g`, `b` are not `h` long.
pub fn layer_norm(
    x: &mut [f32],
    h: usize,
    g: &[f32],
    b: &[f32],
    eps: f32,
    par: bool,
    isa: Isa,
) -> Result<(), ShapeError> {
    if h == 0 || g.len() != h || b.len() != h {
        return Err(ShapeError("layer_norm: row width 0, or scale and shift not one row wide"));
    }
    let rows = x.len() / h;
    let xp = SyncPtr(x.as_mut_ptr());
    par_ranges(par, rows, 32, move |s, e| {
        let xp = xp;
        // SAFETY: rows `s..e <= rows = x.len() / h` of `x`, which stays mutably borrowed by
        // this call; `par_ranges` hands out disjoint ranges, so no two parts overlap.
        let part = unsafe { std::slice::from_raw_parts_mut(xp.0.add(s * h), (e - s) * h) };
        #[cfg(target_arch = "x86_64")]
        if isa.is_avx2_fma() {
            // SAFETY: an AVX2/FMA `Isa` exists only on a CPU with both features.
            return unsafe { layer_norm_rows_avx2(part, h, g, b, eps) };
        }
        layer_norm_rows_body(part, h, g, b, eps)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_widths_are_rejected() {
        let mut x = vec![1f32, 2.0, 3.0, 4.0];
        let isa = Isa::detect();
        assert!(layer_norm(&mut x, 0, &[], &[], 1e-12, false, isa).is_err());
        assert!(layer_norm(&mut x, 2, &[1.0], &[0.0, 0.0], 1e-12, false, isa).is_err());
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        assert!(layer_norm(&mut x, 2, &[1.0, 1.0], &[0.0, 0.0], 1e-12, false, isa).is_ok());
        assert!(x.iter().zip([-1.0, 1.0, -1.0, 1.0]).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
