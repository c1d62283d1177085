//! Element-wise math: the store epilogue's activations and the `exp`, `erf` and GELU
//! approximations (branch-free, so loops over them vectorize), plus the sum and dot
//! reductions.

/// Activation applied as a tile is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// The accumulator as is.
    None,
    /// `x · Φ(x)` with the exact (erf) normal CDF.
    GeluErf,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
}

/// Applies `act` to every element (fused multiply-adds when `F`).
#[inline(always)]
pub(super) fn apply_act<const F: bool>(v: &mut [f32], act: Act) {
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

/// [`exp_f`], with fused multiply-adds when `F`.
#[inline(always)]
pub(super) fn exp_impl<const F: bool>(x: f32) -> f32 {
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
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Sum of `a`, 8 independent lanes (vectorizes without reassociation).
#[inline(always)]
pub(super) fn sum(a: &[f32]) -> f32 {
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
