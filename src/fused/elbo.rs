//! The negative ELBO with Bernoulli logits and the analytic KL, forward and backward, as
//! one candle op; and the Bernoulli log-likelihood alone.
//!
//! For logits l, data x ∈ [0, 1], posterior N(μ, e^s) over D dimensions and N examples:
//!
//! * log p(x_n | z_n) = −Σ_p [relu(l) − l·x + log(1 + e^{−|l|})], the stable BCE;
//! * KL_{n,d} = ½ (μ² + e^s − 1 − s) (Kingma & Welling 2013, appendix B);
//! * the op returns, packed in one vector, the loss r·Σ_n(−log p_n) + w·r·Σ_n KL_n, the
//!   reconstruction term, the KL term (r = 1 for a sum, 1/N for a batch mean; w the KL
//!   weight), the KL per dimension averaged over the batch, and KL_n − log p_n per example.
//!
//! Its backward is the exact vector–Jacobian product of all those outputs, with
//! ∂log p_n/∂l = x − σ(l), ∂KL/∂μ = μ and ∂KL/∂s = ½(e^s − 1), so a gradient taken from any
//! of the five (not only the loss) is right. Plain candle needs about 35 small ops and 15
//! single-threaded passes over the `(N, P)` logits for the same; here the logits are read
//! once forwards and once backwards, by all threads.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Device, Layout, Shape, Tensor, bail};

use super::math::{bce_with_logit, exp, sigmoid, vectorized};
use super::parallel::for_each;
use super::storage::{is_cpu_f32, slice, with_slice};

/// Rows of the logits per parallel task are chosen to give about this many elements.
const ELEMENTS_PER_TASK: usize = 1 << 14;
/// Below this many logits one thread does all the work.
const PARALLEL_ABOVE: usize = 1 << 16;

/// The five terms of [`Elbo`](crate::Elbo), computed by the fused op.
pub(crate) struct ElboTerms {
    pub(crate) loss: Tensor,
    pub(crate) reconstruction: Tensor,
    pub(crate) kl: Tensor,
    pub(crate) kl_per_dim: Tensor,
    pub(crate) per_example: Tensor,
}

/// The fused negative ELBO, if it applies: enabled, CPU `f32` tensors, data that needs no
/// gradient, logits in the data's shape (one sample per example) and a posterior of shape
/// `(N, D)`. `Ok(None)` otherwise. `example_weight` is each example's weight in the reduced
/// terms: 1 for a sum, 1/N for a batch mean.
///
/// # Errors
/// Only candle's own.
pub(crate) fn try_elbo(
    logits: &Tensor,
    x: &Tensor,
    mean: &Tensor,
    log_var: &Tensor,
    kl_weight: f64,
    example_weight: f64,
) -> candle_core::Result<Option<ElboTerms>> {
    let applies = super::fused_kernels().elbo
        && [logits, x, mean, log_var].iter().all(|t| is_cpu_f32(t))
        && !x.track_op()
        && x.rank() >= 2
        && logits.dims() == x.dims()
        && mean.rank() == 2
        && mean.dims() == log_var.dims()
        && mean.dim(0)? == x.dim(0)?
        && mean.elem_count() > 0
        && x.elem_count() > 0;
    if !applies {
        return Ok(None);
    }
    let (n, d) = mean.dims2()?;
    let op = ElboOp {
        x: x.contiguous()?,
        n,
        p: x.elem_count() / n,
        d,
        kl_weight,
        scale: example_weight,
    };
    let packed = logits
        .contiguous()?
        .apply_op3(&mean.contiguous()?, &log_var.contiguous()?, op)?;
    let scalar = |i: usize| packed.narrow(0, i, 1)?.reshape(());
    Ok(Some(ElboTerms {
        loss: scalar(0)?,
        reconstruction: scalar(1)?,
        kl: scalar(2)?,
        kl_per_dim: packed.narrow(0, 3, d)?,
        per_example: packed.narrow(0, 3 + d, n)?,
    }))
}

/// The fused Bernoulli log-likelihood Σ_p [x·l − softplus(l)] per example, if it applies:
/// enabled, CPU `f32`, data that needs no gradient, logits of the data's shape or with one
/// leading sample axis. `Ok(None)` otherwise.
///
/// # Shapes
/// `x`: `(N, …)`; `logits`: `(N, …)` → `(N,)`, or `(K, N, …)` → `(K, N)`.
///
/// # Errors
/// Only candle's own.
pub(crate) fn try_bernoulli_log_prob(
    x: &Tensor,
    logits: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let sample_axes = logits.rank().wrapping_sub(x.rank());
    let applies = super::fused_kernels().elbo
        && is_cpu_f32(x)
        && is_cpu_f32(logits)
        && !x.track_op()
        && x.rank() >= 2
        && sample_axes <= 1
        && logits.dims()[sample_axes..] == *x.dims()
        && x.elem_count() > 0;
    if !applies {
        return Ok(None);
    }
    let batch_shape: Vec<usize> = logits.dims()[..sample_axes + 1].to_vec();
    let n = x.dim(0)?;
    let op = BernoulliLogProb {
        x: x.contiguous()?,
        n,
        p: x.elem_count() / n,
        batch_shape,
    };
    Ok(Some(logits.contiguous()?.apply_op1(op)?))
}

/// −ELBO terms, packed `[loss, reconstruction, kl, kl_per_dim (D), per_example (N)]`.
struct ElboOp {
    /// The data, contiguous `(N, …)`.
    x: Tensor,
    n: usize,
    /// Elements per example.
    p: usize,
    d: usize,
    kl_weight: f64,
    /// 1 for a sum over the batch, 1/N for a mean.
    scale: f64,
}

impl CustomOp3 for ElboOp {
    fn name(&self) -> &'static str {
        "candle-vae-elbo"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_l: &Layout,
        mean: &CpuStorage,
        mean_l: &Layout,
        log_var: &CpuStorage,
        log_var_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = (self.n, self.d);
        let logits = slice(logits, logits_l)?;
        let mean = slice(mean, mean_l)?;
        let log_var = slice(log_var, log_var_l)?;
        let log_lik = with_slice(&self.x, |x| row_log_likelihoods(logits, x, self.p))?;
        let mut kl_per_dim = vec![0f64; d];
        let mut kl_per_example = vec![0f64; n];
        for ((mu_row, s_row), kl_n) in mean
            .chunks_exact(d)
            .zip(log_var.chunks_exact(d))
            .zip(kl_per_example.iter_mut())
        {
            for ((&mu, &s), acc) in mu_row.iter().zip(s_row).zip(kl_per_dim.iter_mut()) {
                let kl = f64::from(0.5 * (mu * mu + exp(s) - 1.0 - s));
                *acc += kl;
                *kl_n += kl;
            }
        }
        let reconstruction = -self.scale * log_lik.iter().map(|&v| f64::from(v)).sum::<f64>();
        let kl = self.scale * kl_per_example.iter().sum::<f64>();
        let mut packed = Vec::with_capacity(3 + d + n);
        packed.push((reconstruction + self.kl_weight * kl) as f32);
        packed.push(reconstruction as f32);
        packed.push(kl as f32);
        packed.extend(kl_per_dim.iter().map(|&v| (v / n as f64) as f32));
        packed.extend(
            kl_per_example
                .iter()
                .zip(&log_lik)
                .map(|(&kl_n, &ll_n)| (kl_n - f64::from(ll_n)) as f32),
        );
        Ok((CpuStorage::F32(packed), Shape::from(3 + d + n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        mean: &Tensor,
        log_var: &Tensor,
        _packed: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, d) = (self.n, self.d);
        let grad = grad.contiguous()?.to_vec1::<f32>()?;
        if grad.len() != 3 + d + n {
            bail!(
                "candle-vae-elbo: gradient of {} values for {}",
                grad.len(),
                3 + d + n
            )
        }
        let (g_loss, g_rec, g_kl) = (f64::from(grad[0]), f64::from(grad[1]), f64::from(grad[2]));
        let g_kl_dim = &grad[3..3 + d];
        let g_example = &grad[3 + d..];
        // ∂out/∂log p_n and ∂out/∂KL_{n,d}.
        let ll_coef: Vec<f32> = g_example
            .iter()
            .map(|&ge| (-self.scale * (g_loss + g_rec) - f64::from(ge)) as f32)
            .collect();
        let kl_base = self.scale * (self.kl_weight * g_loss + g_kl);
        let grad_logits = with_slice(logits, |l| {
            with_slice(&self.x, |x| row_gradients(l, x, self.p, &ll_coef))
        })?;
        let (grad_mean, grad_log_var) = with_slice(mean, |mu| {
            with_slice(log_var, |s| {
                let mut grad_mean = Vec::with_capacity(n * d);
                let mut grad_log_var = Vec::with_capacity(n * d);
                for (i, (&mu, &s)) in mu.iter().zip(s).enumerate() {
                    let a = (kl_base
                        + f64::from(g_kl_dim[i % d]) / n as f64
                        + f64::from(g_example[i / d])) as f32;
                    grad_mean.push(a * mu);
                    grad_log_var.push(a * 0.5 * (exp(s) - 1.0));
                }
                Ok((grad_mean, grad_log_var))
            })
        })?;
        Ok((
            Some(Tensor::from_vec(grad_logits, logits.shape(), &Device::Cpu)?),
            Some(Tensor::from_vec(grad_mean, (n, d), &Device::Cpu)?),
            Some(Tensor::from_vec(grad_log_var, (n, d), &Device::Cpu)?),
        ))
    }
}

/// Σ_p [x·l − softplus(l)] per row of `logits`, `(rows, p)` against data `(N, p)`
/// (row r scored against data row r mod N).
struct BernoulliLogProb {
    x: Tensor,
    n: usize,
    p: usize,
    batch_shape: Vec<usize>,
}

impl CustomOp1 for BernoulliLogProb {
    fn name(&self) -> &'static str {
        "candle-vae-bernoulli-log-prob"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let logits = slice(logits, logits_l)?;
        let log_lik = with_slice(&self.x, |x| row_log_likelihoods(logits, x, self.p))?;
        Ok((
            CpuStorage::F32(log_lik),
            Shape::from(self.batch_shape.clone()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let coef = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        if coef.len() * self.p != logits.elem_count() || self.n == 0 {
            bail!(
                "candle-vae-bernoulli-log-prob: gradient of shape {:?}",
                grad.dims()
            )
        }
        let grad_logits = with_slice(logits, |l| {
            with_slice(&self.x, |x| row_gradients(l, x, self.p, &coef))
        })?;
        Ok(Some(Tensor::from_vec(
            grad_logits,
            logits.shape(),
            &Device::Cpu,
        )?))
    }
}

/// Rows of `p` elements per task for `len` logits: all of them in one task below
/// `PARALLEL_ABOVE` (which then runs on the calling thread), else about
/// `ELEMENTS_PER_TASK` elements' worth.
fn rows_per_task(len: usize, p: usize) -> usize {
    let p = p.max(1);
    if len < PARALLEL_ABOVE {
        (len / p).max(1)
    } else {
        (ELEMENTS_PER_TASK / p).max(1)
    }
}

/// log p(x_r | l_r) = −Σ_p bce(l, x) for every row r of `logits` (data row r mod N).
fn row_log_likelihoods(logits: &[f32], x: &[f32], p: usize) -> candle_core::Result<Vec<f32>> {
    let rows = logits.len() / p.max(1);
    let data_rows = (x.len() / p.max(1)).max(1);
    let mut out = vec![0f32; rows];
    let rows_per_task = rows_per_task(logits.len(), p);
    let task = |(t, out): (usize, &mut [f32])| {
        vectorized(
            #[inline(always)]
            || {
                let mut terms = vec![0f32; p];
                for (i, o) in out.iter_mut().enumerate() {
                    let r = t * rows_per_task + i;
                    let l = &logits[r * p..(r + 1) * p];
                    let xr = &x[(r % data_rows) * p..][..p];
                    for ((term, &l), &x) in terms.iter_mut().zip(l).zip(xr) {
                        *term = bce_with_logit(l, x);
                    }
                    *o = -sum(&terms);
                }
            },
        )
    };
    for_each(out.chunks_mut(rows_per_task).enumerate().collect(), task)?;
    Ok(out)
}

/// c_r · (x − σ(l)) for every element of every row r (data row r mod N).
fn row_gradients(
    logits: &[f32],
    x: &[f32],
    p: usize,
    coef: &[f32],
) -> candle_core::Result<Vec<f32>> {
    let data_rows = (x.len() / p.max(1)).max(1);
    let mut out = vec![0f32; logits.len()];
    let rows = rows_per_task(logits.len(), p);
    let task = |(t, out): (usize, &mut [f32])| {
        vectorized(
            #[inline(always)]
            || {
                for (i, o_row) in out.chunks_exact_mut(p).enumerate() {
                    let r = t * rows + i;
                    let c = coef[r];
                    let l = &logits[r * p..(r + 1) * p];
                    let xr = &x[(r % data_rows) * p..][..p];
                    for ((o, &l), &x) in o_row.iter_mut().zip(l).zip(xr) {
                        *o = c * (x - sigmoid(l));
                    }
                }
            },
        )
    };
    for_each(
        out.chunks_mut((rows * p).max(1)).enumerate().collect(),
        task,
    )?;
    Ok(out)
}

/// Σ values with 16 independent accumulators (vectorises; pairwise-like accuracy).
#[inline(always)]
fn sum(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}
