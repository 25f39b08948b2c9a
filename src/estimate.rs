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

use candle_core::{DType, Tensor};

use crate::component::{Decoder, Dims, EncoderT};
use crate::error::{Error, ensure};
use crate::noise::NoiseSource;
use crate::vae::{Vae, VaeOutput};

/// log w = log p(x|z) + log p(z) − log q(z|x) for every sample.
///
/// # Shapes
/// `out` from a pass over `xs` (`(N, …)`) with K samples → `(K, N)`; a one-sample pass
/// gives `(1, N)`.
///
/// # Errors
/// If `xs` is not the batch `out` was computed from.
pub fn log_importance_weights(out: &VaeOutput, xs: &Tensor) -> candle_core::Result<Tensor> {
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
pub fn iwae_bound(out: &VaeOutput, xs: &Tensor) -> candle_core::Result<Tensor> {
    let log_w = log_importance_weights(out, xs)?;
    let k = log_w.dim(0)? as f64;
    log_w.log_sum_exp(0)? - k.ln()
}

/// Settings of the importance-sampled log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportanceSamplingConfig {
    /// K, importance samples per example (5,000 in Burda et al. 2015).
    pub samples: usize,
    /// Samples per forward pass. Memory grows with `chunk_size × N × (decoder widths)`;
    /// the result does not depend on it beyond floating-point rounding.
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
/// # Shapes
/// `xs`: `(N, …)` → `(N,)` in `f64`.
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad `config`; candle's error if `xs` does not fit.
pub fn log_likelihood<E, D>(
    vae: &Vae<E, D>,
    xs: &Tensor,
    config: &ImportanceSamplingConfig,
    noise: &mut NoiseSource,
) -> crate::Result<Tensor>
where
    E: EncoderT + Dims,
    D: Decoder + Dims,
{
    log_likelihood_with(config, noise, |k, noise| {
        let out = vae.forward_samples_t(xs, k, noise, false)?;
        log_importance_weights(&out, xs)
    })
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
    let mut running: Option<Tensor> = None;
    let mut done = 0;
    while done < config.samples {
        let k = config.chunk_size.min(config.samples - done);
        let log_w = log_weights(k, noise)?.detach().to_dtype(DType::F64)?;
        if log_w.rank() != 2 || log_w.dim(0)? != k {
            return Err(Error::shape(
                "log_likelihood_with",
                format!("log weights of shape ({k}, N)"),
                log_w.dims(),
            ));
        }
        let chunk = log_w.log_sum_exp(0)?;
        running = Some(match running {
            None => chunk,
            Some(previous) => Tensor::stack(&[&previous, &chunk], 0)?.log_sum_exp(0)?,
        });
        done += k;
    }
    let total = running
        .ok_or_else(|| Error::config("ImportanceSamplingConfig", "samples", 0, "must be ≥ 1"))?;
    Ok((total - (config.samples as f64).ln())?)
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
