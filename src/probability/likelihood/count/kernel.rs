//! The CPU kernel: the count log-probabilities element by element in `f64`, with
//! closed-form gradients, as a candle custom op.

use candle_core::{DType, Tensor};

/// Whether the element-wise CPU kernel computes the count log-probabilities for `t`: on
/// the CPU, in `f32` or `f64`, where the ELBO kernels are enabled
/// ([`FusedKernels::elbo`](crate::fused::FusedKernels), so
/// [`with_fused_kernels`](crate::fused::with_fused_kernels) turns it off for comparisons).
/// Elsewhere the candle-op forms above run.
pub(super) fn use_kernel(t: &Tensor) -> bool {
    t.device().is_cpu()
        && matches!(t.dtype(), DType::F32 | DType::F64)
        && crate::fused::fused_kernels().elbo
}

/// Scalar forms of the functions above, in `f64`.
pub(super) mod scalar {
    use super::super::{STIRLING_DIFF_FROM, STIRLING_FROM};
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

    /// ln Γ(z), z > 0 (as `ops::lgamma`).
    pub(super) fn lgamma(z: f64) -> f64 {
        if z >= STIRLING_FROM {
            return stirling(z);
        }
        let prod: f64 = (0..8).map(|k| z + f64::from(k)).product();
        stirling(z + STIRLING_FROM) - prod.ln()
    }

    /// ln Γ(x + θ) − ln Γ(θ) (as `ops::lgamma_ratio`); `log_theta` = ln θ.
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

    /// θ ln(1 + μ/θ) from m = ln μ, t = ln θ (as `ops::theta_log1p_ratio`).
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
pub(super) enum CountKind {
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
pub(super) struct CountKernel {
    kind: CountKind,
    /// The data, broadcast to the parameters' shape, flattened.
    x: Vec<f64>,
}

/// A contiguous CPU storage's values as `f64`.
pub(super) fn storage_values(
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
pub(super) fn storage_of(
    values: Vec<f64>,
    dtype: DType,
) -> candle_core::Result<candle_core::CpuStorage> {
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
pub(super) fn kernel_log_prob(
    kind: CountKind,
    x: &Tensor,
    args: &[&Tensor],
) -> candle_core::Result<Tensor> {
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
