//! The standard likelihoods of image VAEs: Bernoulli, continuous Bernoulli, Gaussian.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{Likelihood, split_channels, split_params, sum_per_example};
use crate::fused;
use crate::noise::NoiseSource;
use crate::ops::{self, LN_2PI};
const LN_2: f64 = std::f64::consts::LN_2;
/// Below this |logit| the continuous-Bernoulli terms use their Taylor series.
const CB_TAYLOR_BELOW: f64 = 0.1;

/// The decoder's output distribution p(x|z) for images: a fixed menu that implements
/// [`Likelihood`] (so a run can choose it from a flag), with the fused CPU kernels behind
/// the Bernoulli case.
///
/// The decoder produces *parameters* (logits or means, and for [`GaussianVariance::PerElement`]
/// also log-variances); the likelihood turns them and the data into log p(x|z), summed over
/// every element of an example.
///
/// # Parameter layout
/// For data `x` of shape `(N, C, …)` (or `(N, D)`), the parameters have shape
/// `(N, P·C, …)`, where `P` = [`params_per_element`](Self::params_per_element): with `P = 2`
/// the first `C` channels are the means, the next `C` the log-variances. A leading sample
/// axis is allowed, `(K, N, P·C, …)`, for K posterior samples per example.
///
/// # Math (per element, logit l, mean μ, log-variance s)
/// * [`Bernoulli`](Self::Bernoulli): log p = x·l − softplus(l), computed as
///   −[relu(l) − l·x + log(1 + e^{−|l|})]; with x ∈ [0, 1] this is PyTorch's BCE.
/// * [`ContinuousBernoulli`](Self::ContinuousBernoulli) (Loaiza-Ganem & Cunningham 2019):
///   the Bernoulli term plus the log-normaliser log C(l) = log(l / tanh(l/2)), which
///   makes it a proper density on [0, 1]; near l = 0, log C = log 2 + l²/12 − 7l⁴/1440.
/// * [`Gaussian`](Self::Gaussian): log N(x; μ, e^s) = −½ [log 2π + s + (x − μ)² e^{−s}].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StandardLikelihood {
    /// Bernoulli with logits: binary pixels, or grayscale pixels scored by cross-entropy.
    Bernoulli,
    /// Continuous Bernoulli with logits: a normalised density for pixels in [0, 1].
    ContinuousBernoulli,
    /// Gaussian, with the mean as given or through a sigmoid, and a variance that is fixed
    /// or learned.
    Gaussian {
        /// How the decoder's mean output maps to μ.
        mean: GaussianMean,
        /// Where σ² comes from.
        variance: GaussianVariance,
    },
}

/// How a Gaussian decoder's raw mean output becomes μ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum GaussianMean {
    /// μ is the decoder output.
    #[default]
    Identity,
    /// μ = sigmoid(output), for data in [0, 1] (Kingma & Welling 2013, Frey Face).
    Sigmoid,
}

/// Where a Gaussian likelihood's variance comes from.
#[derive(Debug, Clone)]
pub enum GaussianVariance {
    /// σ is a fixed constant.
    Fixed {
        /// The standard deviation σ > 0.
        std: f64,
    },
    /// The decoder predicts log σ² for every element (it outputs 2·C channels).
    PerElement,
    /// One learned log σ² shared by every element: a parameter of shape `(1,)`.
    Shared(Tensor),
}

impl StandardLikelihood {
    /// A Gaussian with fixed σ and identity mean.
    ///
    /// # Errors
    /// If `std` is not finite and > 0.
    pub fn gaussian(std: f64) -> crate::Result<Self> {
        crate::error::ensure(
            std.is_finite() && std > 0.0,
            "StandardLikelihood::Gaussian",
            "std",
            std,
            "must be finite and > 0",
        )?;
        Ok(StandardLikelihood::Gaussian {
            mean: GaussianMean::Identity,
            variance: GaussianVariance::Fixed { std },
        })
    }

    /// A Gaussian whose decoder predicts μ (through `mean`) and log σ² per element, as in
    /// Kingma & Welling (2013) for Frey Face.
    pub fn gaussian_per_element(mean: GaussianMean) -> Self {
        StandardLikelihood::Gaussian {
            mean,
            variance: GaussianVariance::PerElement,
        }
    }

    /// A Gaussian with one learned log σ², created (initialised to `init_log_var`) as the
    /// parameter `log_var` under `vb`.
    ///
    /// # Errors
    /// If the parameter cannot be created.
    pub fn gaussian_shared(
        mean: GaussianMean,
        init_log_var: f64,
        vb: VarBuilder,
    ) -> crate::Result<Self> {
        let log_var = vb.get_with_hints(1, "log_var", candle_nn::Init::Const(init_log_var))?;
        Ok(StandardLikelihood::Gaussian {
            mean,
            variance: GaussianVariance::Shared(log_var),
        })
    }

    /// log p(x|z) for every element.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, P·C, …)` → `(N, C, …)`, or
    /// `(K, N, P·C, …)` → `(K, N, C, …)`.
    ///
    /// # Errors
    /// [`Error::Shape`](crate::Error::Shape) (inside candle's error) if `params` does not match `x` as above.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let mut groups =
            split_params(self.name(), x, params, self.params_per_element())?.into_iter();
        let (first, second) = match (groups.next(), groups.next()) {
            (Some(first), second) => (first, second),
            (None, _) => return Err(candle_core::Error::Msg("no likelihood parameters".into())),
        };
        match self {
            StandardLikelihood::Bernoulli => {
                ops::binary_cross_entropy_with_logits(&first, x)?.neg()
            }
            StandardLikelihood::ContinuousBernoulli => {
                let bernoulli = ops::binary_cross_entropy_with_logits(&first, x)?.neg()?;
                bernoulli + continuous_bernoulli_log_norm(&first)?
            }
            StandardLikelihood::Gaussian { mean, variance } => {
                let mu = match mean {
                    GaussianMean::Identity => first,
                    GaussianMean::Sigmoid => ops::sigmoid(&first)?,
                };
                let sq = mu.broadcast_sub(x)?.sqr()?;
                match variance {
                    GaussianVariance::Fixed { std } => {
                        let log_var = 2.0 * std.ln();
                        sq.affine(-0.5 / (std * std), -0.5 * (LN_2PI + log_var))
                    }
                    GaussianVariance::PerElement => {
                        let log_var = second.ok_or_else(|| {
                            candle_core::Error::Msg(
                                "per-element Gaussian without log-variance".into(),
                            )
                        })?;
                        let scaled = (sq * log_var.neg()?.exp()?)?;
                        (scaled + log_var)?.affine(-0.5, -0.5 * LN_2PI)
                    }
                    GaussianVariance::Shared(log_var) => {
                        let scaled = sq.broadcast_mul(&log_var.neg()?.exp()?)?;
                        scaled.broadcast_add(log_var)?.affine(-0.5, -0.5 * LN_2PI)
                    }
                }
            }
        }
    }
}

impl Likelihood for StandardLikelihood {
    /// 2 for a Gaussian with per-element variance, else 1.
    fn params_per_element(&self) -> usize {
        match self {
            StandardLikelihood::Gaussian {
                variance: GaussianVariance::PerElement,
                ..
            } => 2,
            _ => 1,
        }
    }

    fn name(&self) -> &str {
        match self {
            StandardLikelihood::Bernoulli => "bernoulli",
            StandardLikelihood::ContinuousBernoulli => "continuous-bernoulli",
            StandardLikelihood::Gaussian { variance, .. } => match variance {
                GaussianVariance::Fixed { .. } => "gaussian-fixed",
                GaussianVariance::PerElement => "gaussian-per-element",
                GaussianVariance::Shared(_) => "gaussian-shared",
            },
        }
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        if let StandardLikelihood::Bernoulli = self {
            if let Some(log_prob) = fused::elbo::try_bernoulli_log_prob(x, params)? {
                return Ok(log_prob);
            }
        }
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// Bernoulli: σ(l). Continuous Bernoulli: 1/(1 − e^{−l}) − 1/l (½ + l/12 − l³/720 near
    /// 0), which is *not* σ(l). Gaussian: μ.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let first = &groups[0];
        match self {
            StandardLikelihood::Bernoulli => ops::sigmoid(first),
            StandardLikelihood::ContinuousBernoulli => continuous_bernoulli_mean(first),
            StandardLikelihood::Gaussian { mean, .. } => gaussian_mu(*mean, first),
        }
    }

    /// Bernoulli: 1[u < σ(l)]. Continuous Bernoulli: the inverse CDF
    /// log(1 + u(e^l − 1)) / l at u ~ U(0, 1) (u near l = 0). Gaussian: μ + σ·ε.
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let first = &groups[0];
        let (dtype, device) = (first.dtype(), first.device());
        match self {
            StandardLikelihood::Bernoulli => {
                let u = noise.uniform(first.shape(), dtype, device)?;
                u.lt(&ops::sigmoid(first)?)?.to_dtype(dtype)
            }
            StandardLikelihood::ContinuousBernoulli => {
                let u = noise.uniform(first.shape(), dtype, device)?;
                continuous_bernoulli_icdf(first, &u)
            }
            StandardLikelihood::Gaussian { mean, variance } => {
                let mu = gaussian_mu(*mean, first)?;
                let eps = noise.standard_normal(first.shape(), dtype, device)?;
                let scaled = match variance {
                    GaussianVariance::Fixed { std } => (eps * *std)?,
                    GaussianVariance::PerElement => match groups.get(1) {
                        Some(log_var) => (eps * (log_var * 0.5)?.exp()?)?,
                        None => {
                            return Err(candle_core::Error::Msg(
                                "per-element Gaussian without log-variance".into(),
                            ));
                        }
                    },
                    GaussianVariance::Shared(log_var) => {
                        eps.broadcast_mul(&(log_var * 0.5)?.exp()?)?
                    }
                };
                mu + scaled
            }
        }
    }
}

fn gaussian_mu(mean: GaussianMean, first: &Tensor) -> candle_core::Result<Tensor> {
    match mean {
        GaussianMean::Identity => Ok(first.clone()),
        GaussianMean::Sigmoid => ops::sigmoid(first),
    }
}

/// The continuous Bernoulli's inverse CDF at u: log(1 + u(e^l − 1)) / l, computed as
/// u + log1p-free form where it is stable; near l = 0 the distribution is uniform to first
/// order and the Taylor form u + u(1 − u)·l/2 is used.
fn continuous_bernoulli_icdf(logits: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    let near_zero = logits.abs()?.lt(CB_TAYLOR_BELOW)?;
    let safe = near_zero.where_cond(&logits.ones_like()?, logits)?;
    // log(1 + u(e^l − 1)) = l + log(u + (1 − u)e^{−l}) for l > 0, which does not overflow;
    // for l < 0 the plain form is bounded.
    let pos = safe.gt(0.0)?;
    let one_minus_u = u.affine(-1.0, 1.0)?;
    let plus = (safe.clone() + (u + (&one_minus_u * safe.neg()?.exp()?)?)?.log()?)?;
    let minus = ((u * safe.exp()?.affine(1.0, -1.0)?)? + 1.0)?.log()?;
    let closed = (pos.where_cond(&plus, &minus)? / &safe)?;
    let taylor = (u + ((u * &one_minus_u)? * (logits * 0.5)?)?)?;
    near_zero.where_cond(&taylor, &closed)?.clamp(0.0, 1.0)
}

/// log C(l) of the continuous Bernoulli, C(l) = l / tanh(l/2), with its Taylor series
/// near 0 where the closed form is 0/0.
fn continuous_bernoulli_log_norm(logits: &Tensor) -> candle_core::Result<Tensor> {
    let near_zero = logits.abs()?.lt(CB_TAYLOR_BELOW)?;
    // Keep the closed form away from 0 on both branches so its gradient stays finite.
    let safe = near_zero.where_cond(&logits.ones_like()?, logits)?;
    let closed = (safe.abs()?.log()? - (&safe * 0.5)?.tanh()?.abs()?.log()?)?;
    let l2 = logits.sqr()?;
    let taylor = ((&l2 * (1.0 / 12.0))? - (l2.sqr()? * (7.0 / 1440.0))?)?.affine(1.0, LN_2)?;
    near_zero.where_cond(&taylor, &closed)
}

/// E[x] of the continuous Bernoulli with logit l: 1/(1 − e^{−l}) − 1/l.
fn continuous_bernoulli_mean(logits: &Tensor) -> candle_core::Result<Tensor> {
    let near_zero = logits.abs()?.lt(CB_TAYLOR_BELOW)?;
    let safe = near_zero.where_cond(&logits.ones_like()?, logits)?;
    // 1/(1 − e^{−l}) overflows for l ≪ 0; the identity 1/(1 − e^{−l}) = ½ + ½·coth(l/2)
    // does not.
    let coth = (&safe * 0.5)?.tanh()?.recip()?;
    let closed = (coth.affine(0.5, 0.5)? - safe.recip()?)?;
    let cube = (logits * logits.sqr()?)?;
    let taylor = ((logits * (1.0 / 12.0))? - (cube * (1.0 / 720.0))?)?.affine(1.0, 0.5)?;
    near_zero.where_cond(&taylor, &closed)
}
