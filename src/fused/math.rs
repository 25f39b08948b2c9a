//! Branch-free `f32` functions that the compiler vectorises, and the dispatch that
//! compiles loops over them for the widest SIMD the CPU has.
//!
//! `exp` is Cephes' `expf` (range reduction by ln 2 in two parts, a degree-6 polynomial,
//! exponent built from the rounded quotient), accurate to about 1 ulp; `log1p` on [0, 1] is
//! 2·atanh(e / (2 + e)) summed to the s¹³ term, accurate to about 1 ulp as well, also for
//! tiny e (where log(1 + e) would round 1 + e). Both avoid libm calls, which do not
//! vectorise, so a loop over them runs 8 (AVX2) or 16 (AVX-512) lanes at a time.

/// Runs `f` compiled for the best instruction set of this CPU (AVX-512, AVX2+FMA, or the
/// baseline), through `pulp`'s runtime dispatch: loops inside `f` over the
/// `#[inline(always)]` functions of this module vectorise for that instruction set.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// 1.5 · 2²³: adding it rounds a float of magnitude < 2²² to an integer held in the low
/// mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// eˣ for x ∈ [−87.3, 88.3] (clamped to that range, which keeps the result a normal float).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let t = x * LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    // The integer n sits in t's low mantissa bits, offset by ROUND_MAGIC's own bits.
    let n_int = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    p * scale
}

/// log(1 + e) for e ∈ [0, 1].
#[inline(always)]
pub(crate) fn log1p_unit(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    let series = (((((s2 * (1.0 / 13.0) + 1.0 / 11.0) * s2 + 1.0 / 9.0) * s2 + 1.0 / 7.0) * s2
        + 1.0 / 5.0)
        * s2
        + 1.0 / 3.0)
        * s2
        + 1.0;
    2.0 * s * series
}

/// Binary cross-entropy with logit l against target x ∈ [0, 1]:
/// relu(l) − l·x + log(1 + e^{−|l|}) = −log p(x | l).
#[inline(always)]
pub(crate) fn bce_with_logit(l: f32, x: f32) -> f32 {
    l.max(0.0) - l * x + log1p_unit(exp(-l.abs()))
}

/// σ(l) = 1 / (1 + e^{−l}), computed from e^{−|l|} so it never overflows.
#[inline(always)]
pub(crate) fn sigmoid(l: f32) -> f32 {
    let e = exp(-l.abs());
    let numerator = if l >= 0.0 { 1.0 } else { e };
    numerator / (1.0 + e)
}

/// The gradient `g` through a ReLU whose output is `y`: `g` where `y` > 0, else 0 (0 at
/// exactly 0, as in PyTorch).
#[inline(always)]
pub(crate) fn relu_gradient(g: f32, y: f32) -> f32 {
    if y > 0.0 { g } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst = 0f64;
        for i in -8730..=8830 {
            let x = i as f32 * 0.01;
            worst = worst.max(rel(f64::from(exp(x)), f64::from(x).exp()));
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn log1p_matches_libm_on_the_unit_interval() {
        let mut worst = 0f64;
        for i in 0..=10_000 {
            let e = i as f32 / 10_000.0;
            worst = worst.max(rel(f64::from(log1p_unit(e)), f64::from(e).ln_1p()));
        }
        // Also far below 1, where log(1 + e) in f32 would lose everything.
        for e in [1e-6f32, 1e-12, 1e-30] {
            worst = worst.max(rel(f64::from(log1p_unit(e)), f64::from(e).ln_1p()));
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn bce_and_sigmoid_are_finite_and_exact_at_extremes() {
        // At l = ±100 the naive forms give NaN or ∞; the stable forms give the limits.
        assert!(bce_with_logit(100.0, 1.0) < 1e-30);
        assert!((bce_with_logit(-100.0, 1.0) - 100.0).abs() < 1e-5);
        assert_eq!(sigmoid(100.0), 1.0);
        assert!(sigmoid(-100.0) < 1e-37);
        // log 2 at l = 0 for any target.
        assert!((bce_with_logit(0.0, 0.3) - std::f32::consts::LN_2).abs() < 1e-7);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
