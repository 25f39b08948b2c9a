//! Count likelihoods for single-cell RNA-seq and other count data: Poisson, negative
//! binomial and zero-inflated negative binomial, in the parameterisation of scVI
//! (Lopez et al. 2018, "Deep generative modeling for single-cell transcriptomics",
//! Nature Methods 15:1053).
//!
//! Every log-density is written with the stable forms below, so it is finite (and its
//! gradient is finite) for counts from 0 to well beyond 10⁵, log-means and
//! log-dispersions anywhere in ±60 in `f32` (tested; wider in `f64`), and zero-inflation logits of
//! any finite size:
//!
//! * **log-gamma.** Candle has no `lgamma` op, so [`lgamma`] is built from candle ops:
//!   Stirling's series ln Γ(w) = (w − ½) ln w − w + ½ ln 2π + 1/(12w) − 1/(360w³) +
//!   1/(1260w⁵) − 1/(1680w⁷) + 1/(1188w⁹) (Abramowitz & Stegun 6.1.41), used for w ≥ 8
//!   where its truncation error is below 691/(360360·8¹¹) ≈ 2·10⁻¹³, and for 0 < z < 8 the recurrence
//!   ln Γ(z) = ln Γ(z + 8) − ln[z(z + 1)…(z + 7)].
//! * **ln Γ(x + θ) − ln Γ(θ).** For θ ≥ 10 it is the difference of the two Stirling
//!   series, x ln(x + θ) + (θ − ½) log1p(x/θ) − x + S(x + θ) − S(θ), which does not
//!   cancel catastrophically when θ ≫ x (in `f32`, ln Γ(10⁸) alone has an error of ~100
//!   nats); below it, ln Γ(x + θ) − ln Γ(θ + 1) + ln θ, with ln θ taken from the decoder's
//!   log θ so that a θ that underflows to 0 stays finite; x = 0 gives exactly 0.
//! * **θ ln(1 + μ/θ)**, the NB's log-probability of a zero, is μ · log1p(r)/r with
//!   r = μ/θ when μ ≤ θ (a plain θ·softplus(ln μ − ln θ) is 0 in `f32` once
//!   μ/θ < 10⁻⁸, whatever μ), and θ·softplus(ln μ − ln θ) otherwise.
//! * log1p(u) uses Goldberg's identity log1p(u) = ln(w)·u/(w − 1), w = 1 + u (exact to
//!   a few ulps in IEEE arithmetic; Goldberg 1991, "What every computer scientist should
//!   know about floating-point arithmetic", Theorem 4), and softplus is
//!   relu(a) + log1p(e^{−|a|}).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use rand_distr::Distribution;

use super::{Likelihood, split_channels, split_params, sum_per_example};
use crate::error::Error;
use crate::noise::NoiseSource;
use crate::ops::LN_2PI;

/// Below this argument [`lgamma`] shifts by the recurrence before Stirling's series.
const STIRLING_FROM: f64 = 8.0;
/// From this θ on, ln Γ(x + θ) − ln Γ(θ) is the difference of two Stirling series.
const STIRLING_DIFF_FROM: f64 = 10.0;

// ---------------------------------------------------------------------------------------
// Stable element-wise functions.

/// ln(1 + u) for u > −1, accurate for small |u| (Goldberg's identity, see the module docs).
///
/// Both branches are finite everywhere, so the gradient is too.
pub(crate) fn log1p(u: &Tensor) -> candle_core::Result<Tensor> {
    let w = u.affine(1.0, 1.0)?;
    let w_minus_1 = w.affine(1.0, -1.0)?;
    let exact = w_minus_1.eq(0.0)?;
    let safe_den = exact.where_cond(&w.ones_like()?, &w_minus_1)?;
    let general = ((w.log()? * u)? / safe_den)?;
    exact.where_cond(u, &general)
}

/// softplus(a) = ln(1 + eᵃ) = relu(a) + log1p(e^{−|a|}), accurate also where it is tiny
/// (a ≪ 0), unlike ln(1 + e^{−|a|}) evaluated as written.
pub(crate) fn softplus(a: &Tensor) -> candle_core::Result<Tensor> {
    a.relu()? + log1p(&a.abs()?.neg()?.exp()?)?
}

/// log1p(r)/r for r ≥ 0, → 1 as r → 0.
fn log1p_over(r: &Tensor) -> candle_core::Result<Tensor> {
    let w = r.affine(1.0, 1.0)?;
    let w_minus_1 = w.affine(1.0, -1.0)?;
    let exact = w_minus_1.eq(0.0)?;
    let safe_den = exact.where_cond(&w.ones_like()?, &w_minus_1)?;
    exact.where_cond(&w.ones_like()?, &(w.log()? / safe_den)?)
}

/// The correction S(w) = 1/(12w) − 1/(360w³) + 1/(1260w⁵) − 1/(1680w⁷) + 1/(1188w⁹) of
/// Stirling's series (Abramowitz & Stegun 6.1.41), evaluated by Horner's rule in 1/w².
fn stirling_correction(w: &Tensor) -> candle_core::Result<Tensor> {
    let r = w.recip()?;
    let r2 = r.sqr()?;
    // ((((r2/1188 − 1/1680)·r2 + 1/1260)·r2 − 1/360)·r2 + 1/12)·r
    let mut acc = r2.affine(1.0 / 1188.0, -1.0 / 1680.0)?;
    for c in [1.0 / 1260.0, -1.0 / 360.0, 1.0 / 12.0] {
        acc = (acc * &r2)?.affine(1.0, c)?;
    }
    acc * r
}

/// Stirling's series for ln Γ(w), w ≥ 8.
fn stirling(w: &Tensor) -> candle_core::Result<Tensor> {
    let main = ((w.affine(1.0, -0.5)? * w.log()?)? - w)?.affine(1.0, 0.5 * LN_2PI)?;
    main + stirling_correction(w)?
}

/// ln Γ(z) element-wise for z > 0, from candle ops (candle 0.11 has no `lgamma`).
///
/// # Math
/// Stirling's series (Abramowitz & Stegun 6.1.41) with five correction terms for z ≥ 8
/// (truncation error < 2.2·10⁻¹³); for 0 < z < 8, ln Γ(z) = ln Γ(z + 8) − ln ∏_{k<8}(z + k).
/// Absolute error ≲ 10⁻¹² in `f64` (against SciPy's `gammaln`), a few ulps of the result in
/// `f32`. ln Γ(0) = +∞.
///
/// # Errors
/// Only candle's own.
pub(crate) fn lgamma(z: &Tensor) -> candle_core::Result<Tensor> {
    let big = z.ge(STIRLING_FROM)?;
    let ones = z.ones_like()?;
    let z_big = big.where_cond(z, &(&ones * STIRLING_FROM)?)?;
    let z_small = big.where_cond(&ones, z)?;
    let mut prod = z_small.clone();
    for k in 1..8 {
        prod = (prod * z_small.affine(1.0, k as f64)?)?;
    }
    let small = (stirling(&z_small.affine(1.0, STIRLING_FROM)?)? - prod.log()?)?;
    big.where_cond(&stirling(&z_big)?, &small)
}

/// ln Γ(x + θ) − ln Γ(θ) for x ≥ 0, θ = e^{log_theta} (see the module docs); all three of
/// the same shape.
fn lgamma_ratio(x: &Tensor, theta: &Tensor, log_theta: &Tensor) -> candle_core::Result<Tensor> {
    let ones = theta.ones_like()?;
    let zeros = theta.zeros_like()?;
    let big = theta.ge(STIRLING_DIFF_FROM)?;
    // θ ≥ 10: difference of Stirling series.
    let tb = big.where_cond(theta, &(&ones * STIRLING_DIFF_FROM)?)?;
    let x_plus = (x + &tb)?;
    let diff = (((x * x_plus.log()?)? + (tb.affine(1.0, -0.5)? * log1p(&(x / &tb)?)?)?)? - x)?;
    let diff = ((diff + stirling_correction(&x_plus)?)? - stirling_correction(&tb)?)?;
    // θ < 10: ln Γ(x + θ) − ln Γ(θ + 1) + ln θ, and exactly 0 at x = 0.
    let ts = big.where_cond(&ones, theta)?;
    let log_ts = big.where_cond(&zeros, log_theta)?;
    let positive = x.gt(0.0)?;
    let xs = positive.where_cond(x, &ones)?;
    let direct = ((lgamma(&(xs + &ts)?)? - lgamma(&ts.affine(1.0, 1.0)?)?)? + log_ts)?;
    let direct = positive.where_cond(&direct, &zeros)?;
    big.where_cond(&diff, &direct)
}

/// θ ln(1 + μ/θ) = −ln NB(0; μ, θ), from m = ln μ and t = ln θ (see the module docs).
fn theta_log1p_ratio(m: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let d = (m - t)?;
    let below = d.le(0.0)?;
    let zeros = d.zeros_like()?;
    // μ ≤ θ: μ · log1p(r)/r, r = e^{m − t} ∈ (0, 1].
    let r = below.where_cond(&d, &zeros)?.exp()?;
    let small = (m.exp()? * log1p_over(&r)?)?;
    // μ > θ: θ · softplus(m − t).
    let large = (t.exp()? * softplus(&d)?)?;
    below.where_cond(&small, &large)
}

/// Broadcasts every tensor to their common shape (so that `where_cond` can mix them).
fn broadcast_all(tensors: &[&Tensor]) -> candle_core::Result<Vec<Tensor>> {
    let mut shape = tensors
        .first()
        .map(|t| t.shape().clone())
        .ok_or_else(|| candle_core::Error::Msg("broadcast_all of nothing".into()))?;
    for t in &tensors[1..] {
        shape = shape.broadcast_shape_binary_op(t.shape(), "broadcast_all")?;
    }
    tensors
        .iter()
        .map(|t| t.broadcast_as(&shape)?.contiguous())
        .collect()
}

/// ln NB(x; μ, θ) element-wise from x, m = ln μ, t = ln θ (broadcasting).
fn nb_log_prob(x: &Tensor, m: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    let all = broadcast_all(&[x, m, t])?;
    let (x, m, t) = (&all[0], &all[1], &all[2]);
    if use_kernel(m) {
        return kernel_log_prob(CountKind::Nb, x, &[m, t]);
    }
    let theta = t.exp()?;
    let ratio = lgamma_ratio(x, &theta, t)?;
    let log_x_fact = lgamma(&x.affine(1.0, 1.0)?)?;
    let zero_term = theta_log1p_ratio(m, t)?;
    let count_term = (x * softplus(&(t - m)?)?)?;
    ((ratio - log_x_fact)? - zero_term)? - count_term
}

/// ln ZINB(x; μ, θ, π) element-wise from x, m = ln μ, t = ln θ, and p = logit π
/// (broadcasting), in the log-sum-exp form of scVI's `log_zinb_positive`.
fn zinb_log_prob(x: &Tensor, m: &Tensor, t: &Tensor, p: &Tensor) -> candle_core::Result<Tensor> {
    let all = broadcast_all(&[x, m, t, p])?;
    let (x, m, t, p) = (&all[0], &all[1], &all[2], &all[3]);
    if use_kernel(m) {
        return kernel_log_prob(CountKind::Zinb, x, &[m, t, p]);
    }
    let nb = nb_log_prob(x, m, t)?;
    // x = 0: ln(π + (1 − π) NB(0)) = softplus(−p + ln NB(0)) − softplus(−p).
    let log_nb0 = theta_log1p_ratio(m, t)?.neg()?;
    let neg_p = p.neg()?;
    let zero = (softplus(&(&neg_p + log_nb0)?)? - softplus(&neg_p)?)?;
    // x > 0: ln(1 − π) + ln NB(x) = −softplus(p) + ln NB(x).
    let positive = (nb - softplus(p)?)?;
    x.eq(0.0)?.where_cond(&zero, &positive)
}

// ---------------------------------------------------------------------------------------
// The CPU kernel: the same formulas element by element in f64, with closed-form gradients.

/// Whether the element-wise CPU kernel computes the count log-probabilities for `t`: on
/// the CPU, in `f32` or `f64`, where the ELBO kernels are enabled
/// ([`FusedKernels::elbo`](crate::fused::FusedKernels), so
/// [`with_fused_kernels`](crate::fused::with_fused_kernels) turns it off for comparisons).
/// Elsewhere the candle-op forms above run.
fn use_kernel(t: &Tensor) -> bool {
    t.device().is_cpu()
        && matches!(t.dtype(), DType::F32 | DType::F64)
        && crate::fused::fused_kernels().elbo
}

/// Scalar forms of the functions above, in `f64`.
mod scalar {
    use super::{STIRLING_DIFF_FROM, STIRLING_FROM};
    use crate::ops::LN_2PI;

    /// Below this argument [`digamma`] recurs upwards before its asymptotic series.
    const DIGAMMA_FROM: f64 = 10.0;

    pub(super) fn softplus(a: f64) -> f64 {
        a.max(0.0) + (-a.abs()).exp().ln_1p()
    }

    pub(super) fn sigmoid(a: f64) -> f64 {
        if a >= 0.0 {
            1.0 / (1.0 + (-a).exp())
        } else {
            let e = a.exp();
            e / (1.0 + e)
        }
    }

    fn stirling_correction(w: f64) -> f64 {
        let r2 = 1.0 / (w * w);
        ((((r2 / 1188.0 - 1.0 / 1680.0) * r2 + 1.0 / 1260.0) * r2 - 1.0 / 360.0) * r2 + 1.0 / 12.0)
            / w
    }

    fn stirling(w: f64) -> f64 {
        (w - 0.5) * w.ln() - w + 0.5 * LN_2PI + stirling_correction(w)
    }

    /// ln Γ(z), z > 0 (as [`super::lgamma`]).
    pub(super) fn lgamma(z: f64) -> f64 {
        if z >= STIRLING_FROM {
            return stirling(z);
        }
        let prod: f64 = (0..8).map(|k| z + f64::from(k)).product();
        stirling(z + STIRLING_FROM) - prod.ln()
    }

    /// ln Γ(x + θ) − ln Γ(θ) (as [`super::lgamma_ratio`]); `log_theta` = ln θ.
    pub(super) fn lgamma_ratio(x: f64, theta: f64, log_theta: f64) -> f64 {
        if theta >= STIRLING_DIFF_FROM {
            x * (x + theta).ln() + (theta - 0.5) * (x / theta).ln_1p() - x
                + stirling_correction(x + theta)
                - stirling_correction(theta)
        } else if x > 0.0 {
            lgamma(x + theta) - lgamma(theta + 1.0) + log_theta
        } else {
            0.0
        }
    }

    /// R(w) with ψ(w) = ln w − 1/(2w) − R(w) (Abramowitz & Stegun 6.3.18), w ≥ 10:
    /// truncation error < 691/(32760·w¹²) ≈ 2·10⁻¹⁴.
    fn digamma_correction(w: f64) -> f64 {
        let r2 = 1.0 / (w * w);
        (((((r2 / 132.0) - 1.0 / 240.0) * r2 + 1.0 / 252.0) * r2 - 1.0 / 120.0) * r2 + 1.0 / 12.0)
            * r2
    }

    /// ψ(w), w > 0, by recurrence up to 10 and the asymptotic series.
    fn digamma(mut w: f64) -> f64 {
        let mut shift = 0.0;
        while w < DIGAMMA_FROM {
            shift -= 1.0 / w;
            w += 1.0;
        }
        shift + w.ln() - 0.5 / w - digamma_correction(w)
    }

    /// ψ(x + θ) − ψ(θ), without cancellation for θ ≫ x.
    pub(super) fn digamma_ratio(x: f64, theta: f64) -> f64 {
        if x == 0.0 {
            0.0
        } else if theta >= DIGAMMA_FROM {
            (x / theta).ln_1p() + x / (2.0 * theta * (x + theta)) - digamma_correction(x + theta)
                + digamma_correction(theta)
        } else {
            digamma(x + theta) - digamma(theta)
        }
    }

    /// θ ln(1 + μ/θ) from m = ln μ, t = ln θ (as [`super::theta_log1p_ratio`]).
    pub(super) fn theta_log1p_ratio(m: f64, t: f64) -> f64 {
        let d = m - t;
        if d <= 0.0 {
            let r = d.exp();
            let ratio = if r == 0.0 { 1.0 } else { r.ln_1p() / r };
            m.exp() * ratio
        } else {
            t.exp() * softplus(d)
        }
    }

    /// ln Poisson(x; eᵐ) and ∂/∂m.
    pub(super) fn poisson(x: f64, m: f64) -> (f64, [f64; 3]) {
        let mu = m.exp();
        (x * m - mu - lgamma(x + 1.0), [x - mu, 0.0, 0.0])
    }

    /// ln NB(x; eᵐ, eᵗ) and (∂/∂m, ∂/∂t):
    /// ∂/∂m = x σ(t − m) − θ σ(m − t) (= θ(x − μ)/(θ + μ));
    /// ∂/∂t = θ[ψ(x + θ) − ψ(θ)] − θ ln(1 + μ/θ) + (μ − x) σ(t − m).
    pub(super) fn nb(x: f64, m: f64, t: f64) -> (f64, [f64; 3]) {
        let theta = t.exp();
        let zero = theta_log1p_ratio(m, t);
        let value = lgamma_ratio(x, theta, t) - lgamma(x + 1.0) - zero - x * softplus(t - m);
        let s = sigmoid(t - m);
        let dm = x * s - theta * sigmoid(m - t);
        let dt = theta * digamma_ratio(x, theta) - zero + m.exp() * s - x * s;
        (value, [dm, dt, 0.0])
    }

    /// ln ZINB(x; eᵐ, eᵗ, σ(p)) and (∂/∂m, ∂/∂t, ∂/∂p). At x = 0, with
    /// L₀ = −θ ln(1 + μ/θ) and a = L₀ − p: value softplus(a) − softplus(−p),
    /// ∂/∂L₀ = σ(a), ∂/∂p = σ(−p) − σ(a), ∂L₀/∂m = −θ σ(m − t),
    /// ∂L₀/∂t = −θ ln(1 + μ/θ) + μ σ(t − m). Above 0: −softplus(p) + ln NB, ∂/∂p = −σ(p).
    pub(super) fn zinb(x: f64, m: f64, t: f64, p: f64) -> (f64, [f64; 3]) {
        if x == 0.0 {
            let zero = theta_log1p_ratio(m, t);
            let a = -zero - p;
            let sa = sigmoid(a);
            let value = softplus(a) - softplus(-p);
            let dl0_dm = -t.exp() * sigmoid(m - t);
            let dl0_dt = -zero + m.exp() * sigmoid(t - m);
            (value, [sa * dl0_dm, sa * dl0_dt, sigmoid(-p) - sa])
        } else {
            let (nb, [dm, dt, _]) = nb(x, m, t);
            (nb - softplus(p), [dm, dt, -sigmoid(p)])
        }
    }
}

/// Which count log-probability a [`CountKernel`] computes.
#[derive(Debug, Clone, Copy)]
enum CountKind {
    Poisson,
    Nb,
    Zinb,
}

impl CountKind {
    fn eval(self, x: f64, a: &[f64; 3]) -> (f64, [f64; 3]) {
        match self {
            CountKind::Poisson => scalar::poisson(x, a[0]),
            CountKind::Nb => scalar::nb(x, a[0], a[1]),
            CountKind::Zinb => scalar::zinb(x, a[0], a[1], a[2]),
        }
    }

    fn arity(self) -> usize {
        match self {
            CountKind::Poisson => 1,
            CountKind::Nb => 2,
            CountKind::Zinb => 3,
        }
    }
}

/// The element-wise count log-probability as a candle custom op over the parameter
/// tensors (1 to 3, contiguous, one shape), the data captured; its backward computes the
/// closed-form gradients.
struct CountKernel {
    kind: CountKind,
    /// The data, broadcast to the parameters' shape, flattened.
    x: Vec<f64>,
}

/// A contiguous CPU storage's values as `f64`.
fn storage_values(
    s: &candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<Vec<f64>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("count kernel: non-contiguous input".into()))?;
    match s {
        candle_core::CpuStorage::F32(v) => {
            Ok(v[start..end].iter().map(|&a| f64::from(a)).collect())
        }
        candle_core::CpuStorage::F64(v) => Ok(v[start..end].to_vec()),
        _ => Err(candle_core::Error::Msg(
            "count kernel: f32 or f64 only".into(),
        )),
    }
}

/// `values` as a storage of `dtype`.
fn storage_of(values: Vec<f64>, dtype: DType) -> candle_core::Result<candle_core::CpuStorage> {
    match dtype {
        DType::F32 => Ok(candle_core::CpuStorage::F32(
            values.into_iter().map(|v| v as f32).collect(),
        )),
        DType::F64 => Ok(candle_core::CpuStorage::F64(values)),
        other => Err(candle_core::Error::Msg(format!("count kernel: {other:?}"))),
    }
}

impl CountKernel {
    fn forward(
        &self,
        args: &[(&candle_core::CpuStorage, &candle_core::Layout)],
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (first, layout) = args
            .first()
            .ok_or_else(|| candle_core::Error::Msg("count kernel: no input".into()))?;
        let values: Vec<Vec<f64>> = args
            .iter()
            .map(|(s, l)| storage_values(s, l))
            .collect::<candle_core::Result<_>>()?;
        if values.iter().any(|v| v.len() != self.x.len()) {
            return Err(candle_core::Error::Msg(
                "count kernel: inputs of different sizes".into(),
            ));
        }
        let out = (0..self.x.len())
            .map(|i| {
                let mut a = [0.0; 3];
                for (slot, v) in a.iter_mut().zip(&values) {
                    *slot = v[i];
                }
                self.kind.eval(self.x[i], &a).0
            })
            .collect();
        let dtype = match first {
            candle_core::CpuStorage::F64(_) => DType::F64,
            _ => DType::F32,
        };
        Ok((storage_of(out, dtype)?, layout.shape().clone()))
    }

    fn backward(&self, args: &[&Tensor], grad: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let dtype = grad.dtype();
        let values: Vec<Vec<f64>> = args
            .iter()
            .map(|t| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>())
            .collect::<candle_core::Result<_>>()?;
        let g = grad.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let n = self.x.len();
        let mut grads = vec![vec![0.0; n]; self.kind.arity()];
        for i in 0..n {
            let mut a = [0.0; 3];
            for (slot, v) in a.iter_mut().zip(&values) {
                *slot = v[i];
            }
            let (_, d) = self.kind.eval(self.x[i], &a);
            for (k, out) in grads.iter_mut().enumerate() {
                out[i] = g[i] * d[k];
            }
        }
        let shape = grad.shape().clone();
        grads
            .into_iter()
            .map(|v| Tensor::from_vec(v, shape.clone(), &candle_core::Device::Cpu)?.to_dtype(dtype))
            .collect()
    }
}

impl candle_core::CustomOp1 for CountKernel {
    fn name(&self) -> &'static str {
        "candle-vae-poisson-log-prob"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.forward(&[(s, l)])
    }

    fn bwd(&self, m: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(self.backward(&[m], grad)?.into_iter().next())
    }
}

impl candle_core::CustomOp2 for CountKernel {
    fn name(&self) -> &'static str {
        "candle-vae-nb-log-prob"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.forward(&[(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        m: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[m, t], grad)?.into_iter();
        Ok((g.next(), g.next()))
    }
}

impl candle_core::CustomOp3 for CountKernel {
    fn name(&self) -> &'static str {
        "candle-vae-zinb-log-prob"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        self.forward(&[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        m: &Tensor,
        t: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[m, t, p], grad)?.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

/// The count log-probability of `kind` through the CPU kernel; `args` (log μ, log θ,
/// logit π as the kind needs) and `x` all of one shape.
fn kernel_log_prob(kind: CountKind, x: &Tensor, args: &[&Tensor]) -> candle_core::Result<Tensor> {
    let op = CountKernel {
        kind,
        x: x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?,
    };
    match args {
        [m] => m.contiguous()?.apply_op1(op),
        [m, t] => m.contiguous()?.apply_op2(&t.contiguous()?, op),
        [m, t, p] => m
            .contiguous()?
            .apply_op3(&t.contiguous()?, &p.contiguous()?, op),
        _ => Err(candle_core::Error::Msg(
            "count kernel: 1 to 3 parameter tensors".into(),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Host-side sampling.

/// The parameter tensors flattened to `f64` on the host, all broadcast to `shape_of`'s
/// shape.
fn host_values(shape_of: &Tensor, tensors: &[&Tensor]) -> candle_core::Result<Vec<Vec<f64>>> {
    tensors
        .iter()
        .map(|t| {
            t.broadcast_as(shape_of.shape())?
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()
        })
        .collect()
}

/// A tensor of `values` in the shape, dtype and device of `like`.
fn tensor_like(values: Vec<f64>, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, like.shape(), &candle_core::Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

/// x ~ Poisson(λ) on the host; λ = 0 gives 0.
fn draw_poisson(rate: f64, noise: &mut NoiseSource, op: &'static str) -> candle_core::Result<f64> {
    if rate == 0.0 {
        return Ok(0.0);
    }
    let dist = rand_distr::Poisson::new(rate).map_err(|_| {
        Error::config(
            op,
            "rate",
            rate,
            "must be finite, ≥ 0 and ≤ 1.844e19 (rand_distr's Poisson limit)",
        )
    })?;
    Ok(dist.sample(noise.rng()))
}

/// x ~ NB(μ, θ) on the host as the Gamma–Poisson mixture λ ~ Gamma(θ, μ/θ), x ~ Poisson(λ)
/// (θ = ∞ is the Poisson).
fn draw_nb(
    mu: f64,
    theta: f64,
    noise: &mut NoiseSource,
    op: &'static str,
) -> candle_core::Result<f64> {
    if mu == 0.0 {
        return Ok(0.0);
    }
    let rate = if theta.is_infinite() {
        mu
    } else {
        let gamma = rand_distr::Gamma::new(theta, mu / theta).map_err(|_| {
            Error::config(
                op,
                "theta",
                theta,
                "must be finite and > 0 (with μ/θ finite and > 0)",
            )
        })?;
        gamma.sample(noise.rng())
    };
    draw_poisson(rate, noise, op)
}

// ---------------------------------------------------------------------------------------
// The likelihoods.

/// Where the NB's inverse dispersion θ comes from.
#[derive(Debug, Clone)]
pub enum Dispersion {
    /// The decoder predicts log θ for every element (scVI's `dispersion="gene-cell"`).
    PerElement,
    /// One learned log θ per gene (feature), shared by all cells: a parameter of shape
    /// `(C,)` (scVI's `dispersion="gene"`, its default).
    PerGene(Tensor),
}

impl Dispersion {
    /// A learned log θ per gene, created (initialised to `init_log_theta`) as the parameter
    /// `log_theta` of shape `(genes,)` under `vb`.
    ///
    /// # Errors
    /// If the parameter cannot be created (e.g. it exists in `vb` with another shape).
    pub fn per_gene(genes: usize, init_log_theta: f64, vb: VarBuilder) -> crate::Result<Self> {
        crate::error::ensure(
            genes > 0,
            "Dispersion::per_gene",
            "genes",
            genes,
            "must be > 0",
        )?;
        let log_theta =
            vb.get_with_hints(genes, "log_theta", candle_nn::Init::Const(init_log_theta))?;
        Ok(Dispersion::PerGene(log_theta))
    }

    /// Parameters this dispersion takes from the decoder per element (1 or 0).
    fn decoder_params(&self) -> usize {
        match self {
            Dispersion::PerElement => 1,
            Dispersion::PerGene(_) => 0,
        }
    }

    /// The per-gene log θ, if learned per gene.
    fn log_theta(&self) -> Option<&Tensor> {
        match self {
            Dispersion::PerElement => None,
            Dispersion::PerGene(t) => Some(t),
        }
    }
}

/// The per-gene log θ, checked against data of shape `(N, C)`.
fn gene_log_theta<'a>(
    name: &str,
    log_theta: &'a Tensor,
    x_dims: &[usize],
) -> candle_core::Result<&'a Tensor> {
    if x_dims.len() != 2 || log_theta.dims() != [x_dims[1]] {
        return Err(Error::shape(
            "Likelihood::log_prob",
            format!(
                "data of shape (N, {}) for the {name} likelihood with one θ per gene",
                log_theta.dims().first().copied().unwrap_or(0)
            ),
            x_dims,
        )
        .into());
    }
    Ok(log_theta)
}

/// Poisson counts: p(x|z) = Poisson(x; μ) with μ = e^{m}, m the decoder output (P = 1).
///
/// # Math
/// ln p(x) = x·m − eᵐ − ln Γ(x + 1), summed over the elements of an example; E\[x\] = μ,
/// Var\[x\] = μ. ln Γ is computed as in [`NegativeBinomial`] (see its `# Numerics`).
///
/// # Shapes
/// `x`: `(N, C, …)` counts (non-negative; integers for a probability mass); parameters
/// `(N, C, …)` or `(K, N, C, …)` log-rates.
///
/// # Errors
/// [`Error::Shape`] if the parameters do not fit the data.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use candle_vae::{Likelihood, Poisson};
/// let x = Tensor::new(&[[0f64, 3.0]], &Device::Cpu)?;
/// let log_rate = Tensor::new(&[[0f64, 2f64.ln()]], &Device::Cpu)?;
/// let lp = Poisson.log_prob(&x, &log_rate)?.to_vec1::<f64>()?[0];
/// // ln Poisson(0; 1) + ln Poisson(3; 2) = −1 + (3 ln 2 − 2 − ln 6)
/// assert!((lp - (-1.0 + 3.0 * 2f64.ln() - 2.0 - 6f64.ln())).abs() < 1e-9);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Poisson;

impl Poisson {
    /// ln p(x) for every element.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, C, …)` → `(N, C, …)`, `(K, N, C, …)` → `(K, N, C, …)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `params` does not fit `x`.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let groups = split_params(self.name(), x, params, 1)?;
        let m = &groups[0];
        if use_kernel(m) {
            let all = broadcast_all(&[x, m])?;
            return kernel_log_prob(CountKind::Poisson, &all[0], &[&all[1]]);
        }
        let log_x_fact = lgamma(&x.affine(1.0, 1.0)?)?;
        (m.broadcast_mul(x)? - m.exp()?)?.broadcast_sub(&log_x_fact)
    }
}

impl Likelihood for Poisson {
    fn params_per_element(&self) -> usize {
        1
    }

    fn name(&self) -> &str {
        "poisson"
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// μ = eᵐ.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        split_channels(params, channel_axis, 1)?[0].exp()
    }

    /// x ~ Poisson(eᵐ), drawn on the host with `rand_distr`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (in candle's error) if a rate is not finite or above
    /// `rand_distr`'s limit 1.844·10¹⁹.
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let mu = self.mean(params, channel_axis)?;
        let rates = host_values(&mu, &[&mu])?;
        let values = rates[0]
            .iter()
            .map(|&rate| draw_poisson(rate, noise, "Poisson::sample"))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        tensor_like(values, &mu)
    }
}

/// Negative binomial counts with mean μ and inverse dispersion θ, as in scVI (Lopez et al.
/// 2018): the decoder outputs m = ln μ and, with [`Dispersion::PerElement`], t = ln θ
/// (P = 2, in that order); with [`Dispersion::PerGene`] θ is a learned `(C,)` parameter
/// and the decoder outputs only ln μ (P = 1).
///
/// # Math
/// NB(x; μ, θ) = Γ(x + θ) / (Γ(θ) x!) · (θ/(θ + μ))^θ · (μ/(θ + μ))^x (Hilbe 2011,
/// "Negative Binomial Regression", NB2), so
///
/// ln p = ln Γ(x + θ) − ln Γ(θ) − ln Γ(x + 1) − θ ln(1 + μ/θ) − x·softplus(t − m),
///
/// with E\[x\] = μ and Var\[x\] = μ + μ²/θ (θ → ∞ is the Poisson).
///
/// # Numerics
/// Finite, with finite gradients, for counts from 0 to beyond 10⁵ and ln μ, ln θ anywhere
/// in ±60 (`f32`, tested; wider in `f64`):
/// * ln Γ: candle has no `lgamma` op, so it is Stirling's series with five correction
///   terms (Abramowitz & Stegun 6.1.41) for z ≥ 8, and ln Γ(z + 8) − ln ∏_{k<8}(z + k)
///   below: error < 10⁻¹² in `f64`.
/// * ln Γ(x + θ) − ln Γ(θ): for θ ≥ 10 the difference of the two series,
///   x ln(x + θ) + (θ − ½) log1p(x/θ) − x + S(x + θ) − S(θ), which does not cancel when
///   θ ≫ x; below, ln Γ(x + θ) − ln Γ(θ + 1) + ln θ with ln θ the decoder's output; 0 at
///   x = 0.
/// * θ ln(1 + μ/θ) = μ·log1p(r)/r with r = μ/θ when μ ≤ θ, else θ·softplus(ln μ − ln θ);
///   log1p by Goldberg's identity, softplus as relu(a) + log1p(e^{−|a|}).
///
/// On the CPU (`f32`, `f64`) an element-wise kernel computes the same forms in `f64` with
/// closed-form gradients (∂/∂ln μ = θ(x − μ)/(θ + μ); ∂/∂ln θ through a digamma difference
/// that does not cancel either), about ten times faster than the candle ops, which run
/// everywhere else and under
/// [`with_fused_kernels`](crate::fused::with_fused_kernels)`(FusedKernels::NONE, …)`.
///
/// # Shapes
/// `x`: `(N, C, …)` counts (`(N, C)` with a per-gene θ); parameters `(N, P·C, …)` or
/// `(K, N, P·C, …)`.
///
/// # Errors
/// [`Error::Shape`] if the parameters do not fit the data, or a per-gene θ does not have
/// one entry per column of `(N, C)` data.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use candle_vae::{Likelihood, NegativeBinomial};
/// // μ = 2, θ = 1 (a geometric distribution): NB(0) = 1/3.
/// let x = Tensor::new(&[[0f64]], &Device::Cpu)?;
/// let params = Tensor::new(&[[2f64.ln(), 0.0]], &Device::Cpu)?;
/// let lp = NegativeBinomial::new().log_prob(&x, &params)?.to_vec1::<f64>()?[0];
/// assert!((lp - (1.0f64 / 3.0).ln()).abs() < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NegativeBinomial {
    dispersion: Dispersion,
}

impl Default for NegativeBinomial {
    /// [`NegativeBinomial::new`]: θ per element from the decoder.
    fn default() -> Self {
        Self::new()
    }
}

impl NegativeBinomial {
    /// The decoder predicts ln μ and ln θ for every element (P = 2).
    pub fn new() -> Self {
        Self {
            dispersion: Dispersion::PerElement,
        }
    }

    /// With the given dispersion (e.g. [`Dispersion::per_gene`]).
    pub fn with_dispersion(dispersion: Dispersion) -> Self {
        Self { dispersion }
    }

    /// The learned per-gene ln θ, `(C,)`, if the dispersion is [`Dispersion::PerGene`].
    pub fn gene_log_theta(&self) -> Option<&Tensor> {
        self.dispersion.log_theta()
    }

    /// ln p(x) for every element.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, P·C, …)` → `(N, C, …)`, `(K, N, P·C, …)` →
    /// `(K, N, C, …)`.
    ///
    /// # Errors
    /// As the type's.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let groups = split_params(self.name(), x, params, self.params_per_element())?;
        match &self.dispersion {
            Dispersion::PerElement => nb_log_prob(x, &groups[0], &groups[1]),
            Dispersion::PerGene(t) => {
                nb_log_prob(x, &groups[0], gene_log_theta(self.name(), t, x.dims())?)
            }
        }
    }
}

impl Likelihood for NegativeBinomial {
    /// 2 with θ per element, 1 with θ per gene.
    fn params_per_element(&self) -> usize {
        1 + self.dispersion.decoder_params()
    }

    fn name(&self) -> &str {
        match self.dispersion {
            Dispersion::PerElement => "negative-binomial",
            Dispersion::PerGene(_) => "negative-binomial-gene",
        }
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// μ = eᵐ.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        split_channels(params, channel_axis, self.params_per_element())?[0].exp()
    }

    /// x ~ NB(μ, θ) as the Gamma–Poisson mixture, on the host with `rand_distr`. With a
    /// per-gene θ, `channel_axis` must be the last axis.
    ///
    /// # Errors
    /// As [`Likelihood::mean`]; [`Error::InvalidConfig`] (in candle's error) for a θ or
    /// rate that `rand_distr` rejects (not finite, or a rate above 1.844·10¹⁹).
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let m = &groups[0];
        let t = match &self.dispersion {
            Dispersion::PerElement => &groups[1],
            Dispersion::PerGene(t) => t,
        };
        let host = host_values(m, &[m, t])?;
        let values = host[0]
            .iter()
            .zip(&host[1])
            .map(|(&m, &t)| draw_nb(m.exp(), t.exp(), noise, "NegativeBinomial::sample"))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        tensor_like(values, m)
    }
}

/// Zero-inflated negative binomial (scVI, Lopez et al. 2018): with probability π a
/// structural zero, else NB(μ, θ). The decoder outputs ln μ, ln θ and the logit of π
/// (P = 3, in that order), or ln μ and logit π with a [`Dispersion::PerGene`] θ (P = 2).
///
/// # Math
/// With p = logit π and NB as in [`NegativeBinomial`], in the log-sum-exp form of scVI's
/// `log_zinb_positive`:
///
/// * x = 0: ln(π + (1 − π) NB(0)) = softplus(−p + ln NB(0)) − softplus(−p), with
///   ln NB(0) = −θ ln(1 + μ/θ);
/// * x > 0: ln(1 − π) + ln NB(x) = −softplus(p) + ln NB(x).
///
/// E\[x\] = (1 − π) μ; Var\[x\] = (1 − π) μ (1 + μ/θ + π μ). Numerics as in
/// [`NegativeBinomial`].
///
/// # Shapes
/// As [`NegativeBinomial`], with P = 3 (or 2).
///
/// # Errors
/// As [`NegativeBinomial`].
#[derive(Debug, Clone)]
pub struct ZeroInflatedNegativeBinomial {
    dispersion: Dispersion,
}

impl Default for ZeroInflatedNegativeBinomial {
    /// [`ZeroInflatedNegativeBinomial::new`]: θ per element from the decoder.
    fn default() -> Self {
        Self::new()
    }
}

impl ZeroInflatedNegativeBinomial {
    /// The decoder predicts ln μ, ln θ and logit π for every element (P = 3).
    pub fn new() -> Self {
        Self {
            dispersion: Dispersion::PerElement,
        }
    }

    /// With the given dispersion (e.g. [`Dispersion::per_gene`]: P = 2).
    pub fn with_dispersion(dispersion: Dispersion) -> Self {
        Self { dispersion }
    }

    /// The learned per-gene ln θ, `(C,)`, if the dispersion is [`Dispersion::PerGene`].
    pub fn gene_log_theta(&self) -> Option<&Tensor> {
        self.dispersion.log_theta()
    }

    /// (ln μ, ln θ, logit π) from the parameter groups, ln θ per gene if so.
    fn parts<'a>(&'a self, groups: &'a [Tensor]) -> (&'a Tensor, &'a Tensor, &'a Tensor) {
        match &self.dispersion {
            Dispersion::PerElement => (&groups[0], &groups[1], &groups[2]),
            Dispersion::PerGene(t) => (&groups[0], t, &groups[1]),
        }
    }

    /// ln p(x) for every element.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, P·C, …)` → `(N, C, …)`, `(K, N, P·C, …)` →
    /// `(K, N, C, …)`.
    ///
    /// # Errors
    /// As the type's.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let groups = split_params(self.name(), x, params, self.params_per_element())?;
        let (m, t, p) = self.parts(&groups);
        if let Dispersion::PerGene(t) = &self.dispersion {
            gene_log_theta(self.name(), t, x.dims())?;
        }
        zinb_log_prob(x, m, t, p)
    }
}

impl Likelihood for ZeroInflatedNegativeBinomial {
    /// 3 with θ per element, 2 with θ per gene.
    fn params_per_element(&self) -> usize {
        2 + self.dispersion.decoder_params()
    }

    fn name(&self) -> &str {
        match self.dispersion {
            Dispersion::PerElement => "zinb",
            Dispersion::PerGene(_) => "zinb-gene",
        }
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// (1 − π) μ = σ(−p)·eᵐ.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let (m, _, p) = self.parts(&groups);
        m.exp()? * crate::ops::sigmoid(&p.neg()?)?
    }

    /// 0 with probability π, else x ~ NB(μ, θ), on the host with `rand_distr`.
    ///
    /// # Errors
    /// As [`NegativeBinomial`]'s `sample`.
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let (m, t, p) = self.parts(&groups);
        let pi = crate::ops::sigmoid(p)?;
        let host = host_values(m, &[m, t, &pi])?;
        let mut values = Vec::with_capacity(host[0].len());
        for ((&m, &t), &pi) in host[0].iter().zip(&host[1]).zip(&host[2]) {
            let u: f64 = rand::Rng::random(noise.rng());
            values.push(if u < pi {
                0.0
            } else {
                draw_nb(
                    m.exp(),
                    t.exp(),
                    noise,
                    "ZeroInflatedNegativeBinomial::sample",
                )?
            });
        }
        tensor_like(values, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// ln Γ against closed forms (Γ(½) = √π, Γ(n) = (n − 1)!) and at
    /// 7.9, 100.5 and 1e-8 against SciPy's `gammaln`
    /// (`python -c "from scipy.special import gammaln; print(gammaln(7.9), gammaln(100.5), gammaln(1e-8))"`).
    #[test]
    fn lgamma_matches_closed_forms() -> candle_core::Result<()> {
        let z = Tensor::new(
            &[0.5f64, 1.0, 2.0, 5.0, 7.9, 8.0, 100.5, 1e-8],
            &Device::Cpu,
        )?;
        let got = lgamma(&z)?.to_vec1::<f64>()?;
        let want = [
            0.5 * std::f64::consts::PI.ln(),
            0.0,
            0.0,
            24f64.ln(),
            // scipy.special.gammaln(7.9)
            8.324_265_868_008_81,
            5040f64.ln(),
            // scipy.special.gammaln(100.5)
            361.435_540_467_777_57,
            // scipy.special.gammaln(1e-8)
            18.420_680_738_180_21,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9 * w.abs().max(1.0), "lgamma {g} vs {w}");
        }
        Ok(())
    }

    /// log1p and softplus keep their precision where the naive forms round to 0.
    #[test]
    fn log1p_and_softplus_are_accurate_when_tiny() -> candle_core::Result<()> {
        let u = Tensor::new(&[1e-10f32, 1e-3, 0.0, 3.0], &Device::Cpu)?;
        let got = log1p(&u)?.to_vec1::<f32>()?;
        let want = [1e-10f64, 1e-3f64.ln_1p(), 0.0, 3f64.ln_1p()];
        for (g, w) in got.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1e-30),
                "{g} vs {w}"
            );
        }
        let a = Tensor::new(&[-30f32], &Device::Cpu)?;
        let sp = f64::from(softplus(&a)?.to_vec1::<f32>()?[0]);
        assert!(
            (sp / (-30f64).exp() - 1.0).abs() < 1e-5,
            "softplus(-30) = {sp}"
        );
        Ok(())
    }
}
