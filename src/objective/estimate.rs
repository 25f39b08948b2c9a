//! Estimators: the importance-weighted bound (IWAE), the importance-sampled
//! log-likelihood, and active units.
//!
//! # Math
//! With K samples z_k ~ q(z|x), the log importance weights are
//! log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), and
//!
//! L_K(x) = log (1/K) Σ_k w_k ≤ log p(x)
//!
//! is the IWAE bound of Burda et al. (2015): L_1 is the ELBO, L_K grows with K and tends
//! to log p(x) as K → ∞. Evaluated with a large K (5,000 in Burda et al.) on a trained
//! model it is the standard estimate of the test log-likelihood. Sums of weights go
//! through log-sum-exp, never through exp.

use candle_core::{DType, Device, Tensor};

use crate::component::{Decoder, EncoderT};
use crate::error::{Error, ensure};
use crate::likelihood::Likelihood;
use crate::noise::NoiseSource;
use crate::prior::Prior;
use crate::reparameterize::Reparameterize;
use crate::vae::{Vae, VaeOutput};

/// log w = log p(x|z) + log p(z) − log q(z|x) for every sample.
///
/// # Shapes
/// `out` from a pass over `xs` (`(N, …)`) with K samples → `(K, N)`; a one-sample pass
/// gives `(1, N)`.
///
/// # Errors
/// If `xs` is not the batch `out` was computed from.
pub fn log_importance_weights<Q, L, P>(
    out: &VaeOutput<'_, Q, L, P>,
    xs: &Tensor,
) -> candle_core::Result<Tensor>
where
    Q: Reparameterize,
    L: Likelihood,
    P: Prior,
{
    let log_w = ((out.reconstruction_log_prob(xs)? + out.prior_log_prob()?)?
        - out.posterior_log_prob()?)?;
    if log_w.rank() == 1 {
        log_w.unsqueeze(0)
    } else {
        Ok(log_w)
    }
}

/// The IWAE bound L_K = log-sum-exp_k(log w_k) − log K per example; differentiable, so
/// −mean(L_K) is the IWAE training objective.
///
/// # Shapes
/// `out` with K samples over `xs` (`(N, …)`) → `(N,)`.
///
/// # Errors
/// If `xs` is not the batch `out` was computed from.
pub fn iwae_bound<Q, L, P>(out: &VaeOutput<'_, Q, L, P>, xs: &Tensor) -> candle_core::Result<Tensor>
where
    Q: Reparameterize,
    L: Likelihood,
    P: Prior,
{
    let log_w = log_importance_weights(out, xs)?;
    let k = log_w.dim(0)? as f64;
    log_w.log_sum_exp(0)? - k.ln()
}

/// Settings of the importance-sampled log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportanceSamplingConfig {
    /// K, importance samples per example (5,000 in Burda et al. 2015).
    pub samples: usize,
    /// Samples per forward pass. [`log_likelihood`] also cuts the images into blocks that
    /// keep a pass within 2^21 likelihood parameters (at least one image per block);
    /// [`log_likelihood_with`] and [`train::importance_sampled`](crate::train::importance_sampled)
    /// pass `chunk_size × N` rows of their batch at once. The estimate depends on it
    /// through its random draws only.
    pub chunk_size: usize,
}

impl ImportanceSamplingConfig {
    /// K samples per example, 100 per pass.
    pub fn new(samples: usize) -> Self {
        Self {
            samples,
            chunk_size: 100,
        }
    }

    /// Sets the samples per forward pass.
    #[must_use]
    pub fn with_chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Checks every rule.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `samples` or `chunk_size` is 0.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.samples > 0,
            "ImportanceSamplingConfig",
            "samples",
            self.samples,
            "must be ≥ 1",
        )?;
        ensure(
            self.chunk_size > 0,
            "ImportanceSamplingConfig",
            "chunk_size",
            self.chunk_size,
            "must be ≥ 1",
        )
    }
}

/// The importance-sampled estimate of log p(x) per example,
/// log (1/K) Σ_k p(x, z_k) / q(z_k|x) with z_k ~ q(z|x), computed in chunks of samples
/// so that K = 5,000 fits in memory. The model runs in evaluation mode.
///
/// The images go through in blocks, each encoded once and then decoded `chunk_size`
/// samples at a time, with blocks small enough that one pass's likelihood parameters fit
/// in 8 MiB: the cache-sized passes run 1.6× faster than one pass over all images. The
/// noise is drawn block by block, so the estimate depends on `chunk_size` and N through
/// its random draws only.
///
/// # Shapes
/// `xs`: `(N, …)` → `(N,)` in `f64`.
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad `config`; candle's error if `xs` does not fit.
pub fn log_likelihood<E, D, L, P>(
    vae: &Vae<E, D, L, P>,
    xs: &Tensor,
    config: &ImportanceSamplingConfig,
    noise: &mut NoiseSource,
) -> crate::Result<Tensor>
where
    E: EncoderT,
    D: Decoder,
    L: Likelihood,
    P: Prior,
{
    config.validate()?;
    let n = xs.dim(0)?;
    if n == 0 {
        return Ok(Tensor::zeros(0, DType::F64, &Device::Cpu)?);
    }
    let per_sample = xs.elem_count() / n * vae.likelihood().params_per_element();
    let per_block = images_per_block(n, per_sample, config.chunk_size);
    let mut blocks = Vec::with_capacity(n.div_ceil(per_block));
    for first in (0..n).step_by(per_block) {
        let block = xs.narrow(0, first, per_block.min(n - first))?;
        let posterior = vae.encoder().encode_t(&block, false)?;
        blocks.push(log_likelihood_with(config, noise, |k, noise| {
            let eps = posterior.draw_noise(Some(k), noise)?;
            let z = posterior.rsample_with(&eps)?;
            let params = vae.decode_samples(&z, &block, None, false)?;
            (vae.likelihood().log_prob(&block, &params)? + vae.prior().log_prob(&z)?)?
                - posterior.log_prob_of_sample(&eps, &z)?
        })?);
    }
    Ok(Tensor::cat(&blocks, 0)?)
}

/// Likelihood parameters per decoder pass of [`log_likelihood`], at most (8 MiB in `f32`,
/// 2,674 rows of MNIST logits): a pass's activations then stay in the last-level cache
/// instead of streaming hundreds of megabytes through memory, which made the estimate 1.6×
/// faster (docs/PERFORMANCE.md §2b).
const VALUES_PER_PASS: usize = 1 << 21;

/// Images per block of [`log_likelihood`] out of `n`: as many as keep `chunk_size`
/// samples of `per_sample` likelihood parameters each within [`VALUES_PER_PASS`], at
/// least one.
fn images_per_block(n: usize, per_sample: usize, chunk_size: usize) -> usize {
    (VALUES_PER_PASS / (per_sample.max(1) * chunk_size.max(1))).clamp(1, n.max(1))
}

/// [`log_likelihood`] for any model: `log_weights(k, noise)` returns the `(k, N)` log
/// importance weights of k fresh samples (e.g. from a
/// [`ConditionalVae`](crate::ConditionalVae) and [`log_importance_weights`]).
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad `config`; whatever `log_weights` returns.
pub fn log_likelihood_with<F>(
    config: &ImportanceSamplingConfig,
    noise: &mut NoiseSource,
    mut log_weights: F,
) -> crate::Result<Tensor>
where
    F: FnMut(usize, &mut NoiseSource) -> candle_core::Result<Tensor>,
{
    config.validate()?;
    let mut sums: Option<WeightSums> = None;
    let mut done = 0;
    while done < config.samples {
        let k = config.chunk_size.min(config.samples - done);
        let log_w = log_weights(k, noise)?;
        if log_w.rank() != 2 || log_w.dim(0)? != k {
            return Err(Error::shape(
                "log_likelihood_with",
                format!("log weights of shape ({k}, N)"),
                log_w.dims(),
            ));
        }
        let n = log_w.dim(1)?;
        let sums = sums.get_or_insert_with(|| WeightSums::new(n, 1, config.samples));
        sums.add_chunk(&log_w)?;
        done += k;
    }
    let sums =
        sums.ok_or_else(|| Error::config("ImportanceSamplingConfig", "samples", 0, "must be ≥ 1"))?;
    Ok(Tensor::new(sums.log_likelihood(), &Device::Cpu)?)
}

/// Running sums over chunks of log importance weights of N examples, in `f64` on the host:
/// the log-sum-exp of all weights (→ log p(x)), the sum of log w (→ ELBO), and the sum over
/// completed disjoint groups of k samples of their log-mean-exp (→ the IWAE bound L_k).
/// The one implementation behind [`log_likelihood_with`] and
/// [`train::importance_sampled`](crate::train::importance_sampled).
#[derive(Debug, Clone)]
pub(crate) struct WeightSums {
    lse: Vec<f64>,
    total: Vec<f64>,
    bound: Vec<f64>,
    /// Weights of the group of k being filled, per example.
    open_group: Vec<Vec<f64>>,
    bound_k: usize,
    groups: usize,
    groups_done: usize,
    seen: usize,
}

impl WeightSums {
    /// Sums for `n` examples, groups of `bound_k` out of `samples` in all.
    pub(crate) fn new(n: usize, bound_k: usize, samples: usize) -> Self {
        Self {
            lse: vec![f64::NEG_INFINITY; n],
            total: vec![0.0; n],
            bound: vec![0.0; n],
            open_group: vec![Vec::with_capacity(bound_k); n],
            bound_k: bound_k.max(1),
            groups: samples / bound_k.max(1),
            groups_done: 0,
            seen: 0,
        }
    }

    /// Adds a `(k, N)` chunk of log weights.
    pub(crate) fn add_chunk(&mut self, log_w: &Tensor) -> candle_core::Result<()> {
        let rows = log_w.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
        for row in rows {
            if row.len() != self.lse.len() {
                return Err(Error::shape(
                    "log importance weights",
                    format!("(k, {})", self.lse.len()),
                    &[1, row.len()],
                )
                .into());
            }
            for (i, &lw) in row.iter().enumerate() {
                self.total[i] += lw;
                self.lse[i] = log_add_exp(self.lse[i], lw);
                self.open_group[i].push(lw);
            }
            self.seen += 1;
            if self.seen % self.bound_k == 0 {
                if self.groups_done < self.groups {
                    for (b, group) in self.bound.iter_mut().zip(&self.open_group) {
                        *b += log_mean_exp(group);
                    }
                    self.groups_done += 1;
                }
                self.open_group.iter_mut().for_each(Vec::clear);
            }
        }
        Ok(())
    }

    /// log p(x) ≈ log (1/K) Σ_k w_k per example, K the samples seen.
    pub(crate) fn log_likelihood(&self) -> Vec<f64> {
        let ln_k = (self.seen.max(1) as f64).ln();
        self.lse.iter().map(|l| l - ln_k).collect()
    }

    /// The ELBO estimate (1/K) Σ_k log w_k per example.
    pub(crate) fn elbo(&self) -> Vec<f64> {
        let k = self.seen.max(1) as f64;
        self.total.iter().map(|t| t / k).collect()
    }

    /// L_k averaged over the completed groups, per example.
    pub(crate) fn iwae_bound(&self) -> Vec<f64> {
        let g = self.groups_done.max(1) as f64;
        self.bound.iter().map(|b| b / g).collect()
    }
}

fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        m
    } else {
        m + ((a - m).exp() + (b - m).exp()).ln()
    }
}

fn log_mean_exp(values: &[f64]) -> f64 {
    let m = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + (values.iter().map(|v| (v - m).exp()).sum::<f64>() / values.len() as f64).ln()
}

/// Active units (Burda et al. 2015, §5.2): latent dimension d is active when
/// Cov_x(E_{q(z|x)}\[z_d\]) exceeds a threshold (0.01 in the paper), i.e. when the posterior
/// mean of z_d varies across the data.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveUnits {
    /// Variance over the data of each dimension's posterior mean, `D` values.
    pub variances: Vec<f64>,
    /// The activity threshold used.
    pub threshold: f64,
}

impl ActiveUnits {
    /// The threshold of Burda et al. (2015).
    pub const BURDA_THRESHOLD: f64 = 0.01;

    /// Measures activity from posterior means, given batch by batch as `(N_b, D)` tensors.
    ///
    /// # Errors
    /// If the batches disagree in width, are not rank 2, or hold no example;
    /// [`Error::InvalidConfig`] if `threshold` is not finite and ≥ 0 (a NaN would count
    /// no unit active).
    pub fn from_means<I>(posterior_means: I, threshold: f64) -> crate::Result<Self>
    where
        I: IntoIterator<Item = Tensor>,
    {
        ensure(
            threshold.is_finite() && threshold >= 0.0,
            "ActiveUnits",
            "threshold",
            threshold,
            "must be finite and ≥ 0",
        )?;
        let mut sum: Vec<f64> = Vec::new();
        let mut sum_sq: Vec<f64> = Vec::new();
        let mut count = 0usize;
        for means in posterior_means {
            let rows = means.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            for row in rows {
                if sum.is_empty() {
                    sum = vec![0.0; row.len()];
                    sum_sq = vec![0.0; row.len()];
                }
                if row.len() != sum.len() {
                    return Err(Error::shape(
                        "ActiveUnits::from_means",
                        format!("(N, {})", sum.len()),
                        &[1, row.len()],
                    ));
                }
                for (d, value) in row.into_iter().enumerate() {
                    sum[d] += value;
                    sum_sq[d] += value * value;
                }
                count += 1;
            }
        }
        ensure(
            count > 0,
            "ActiveUnits",
            "posterior_means",
            count,
            "needs at least one example",
        )?;
        let n = count as f64;
        let variances = sum
            .iter()
            .zip(&sum_sq)
            .map(|(s, sq)| (sq / n - (s / n) * (s / n)).max(0.0))
            .collect();
        Ok(Self {
            variances,
            threshold,
        })
    }

    /// Number of active dimensions.
    pub fn count(&self) -> usize {
        self.variances
            .iter()
            .filter(|&&v| v > self.threshold)
            .count()
    }
}
