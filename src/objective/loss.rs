//! The training objective: the negative evidence lower bound and its variants.

use std::any::{Any, TypeId};

use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};

use crate::component::{Decoder, EncoderT};
use crate::distribution::DiagonalGaussian;
use crate::error::{Error, ensure};
use crate::fused;
use crate::likelihood::{Likelihood, StandardLikelihood};
use crate::prior::{Prior, StandardNormal};
use crate::reparameterize::Reparameterize;
use crate::vae::{ConditionalVae, Vae, VaeOutput};

/// How per-example losses become one number.
///
/// The pytorch/examples VAE sums over the batch and divides by N only when it prints;
/// [`Sum`](Self::Sum) reproduces its gradients exactly. [`BatchMean`](Self::BatchMean) is
/// the per-example −ELBO that papers report, and keeps the gradient scale independent of
/// the batch size. (A mean over *elements*, the default of `BCELoss`, is not offered: it
/// rescales the reconstruction term against the KL term and so changes the model.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Reduction {
    /// Σ over the batch.
    Sum,
    /// Σ over the batch / N.
    #[default]
    BatchMean,
}

impl Reduction {
    /// Reduces a `(N,)` tensor of per-example values to a scalar.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn apply(self, per_example: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Reduction::Sum => per_example.sum_all(),
            Reduction::BatchMean => per_example.mean_all(),
        }
    }

    /// The weight of one example in the reduced value of a batch of `n`.
    pub(crate) fn example_weight(self, n: usize) -> f64 {
        match self {
            Reduction::Sum => 1.0,
            Reduction::BatchMean => 1.0 / n as f64,
        }
    }
}

/// How the KL term is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KlEstimator {
    /// The closed form the prior has for the posterior family
    /// ([`Prior::analytic_kl_per_dim`]), e.g. ½ Σ (μ² + σ² − 1 − log σ²) for a Gaussian
    /// posterior and N(0, I) (Kingma & Welling 2013, appendix B). A pair without one is
    /// an error ([`Error::NoAnalyticKl`]), never a silent
    /// fallback.
    #[default]
    Analytic,
    /// The single-sample estimate log q(z|x) − log p(z) at the sampled z (averaged over the
    /// samples of a multi-sample pass): unbiased, noisier, and usable with any posterior
    /// and prior.
    MonteCarlo,
}

/// A KL weight that changes with the training step (KL warm-up, or annealing).
///
/// The weight multiplies β: the objective at step t is −E[log p(x|z)] + β·w(t)·KL.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum KlSchedule {
    /// w(t) = 1.
    #[default]
    Constant,
    /// w(t) = min(1, t / warmup_steps): the linear warm-up of Bowman et al. (2016) and
    /// Sønderby et al. (2016).
    Linear {
        /// Steps until the weight reaches 1 (> 0).
        warmup_steps: usize,
    },
    /// Cyclical annealing (Fu et al. 2019): with τ = (t mod period) / period, the weight
    /// rises linearly as min(1, τ / ramp) and then holds at 1 until the period ends.
    Cyclical {
        /// Steps per cycle (> 0).
        period: usize,
        /// Fraction of each cycle spent rising, in (0, 1].
        ramp: f64,
    },
}

impl KlSchedule {
    /// The weight w(t) at training step `step` (counted from 0).
    pub fn weight(&self, step: usize) -> f64 {
        match *self {
            KlSchedule::Constant => 1.0,
            KlSchedule::Linear { warmup_steps } => {
                (step as f64 / warmup_steps.max(1) as f64).min(1.0)
            }
            KlSchedule::Cyclical { period, ramp } => {
                let tau = (step % period.max(1)) as f64 / period.max(1) as f64;
                (tau / ramp).min(1.0)
            }
        }
    }
}

/// Configuration of an [`ElboLoss`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ElboLossConfig {
    /// Weight β of the KL term (Higgins et al. 2017): 1 is the ELBO, > 1 a β-VAE.
    pub beta: f64,
    /// Analytic or Monte-Carlo KL.
    pub kl_estimator: KlEstimator,
    /// Free bits λ in nats per latent dimension (Kingma et al. 2016), 0 for none: each
    /// dimension's batch-averaged KL enters the objective as max(λ, KL_d), so the
    /// optimiser gains nothing from pushing a dimension's KL below λ.
    pub free_bits: f64,
    /// How the batch is reduced.
    pub reduction: Reduction,
    /// KL weight over training steps.
    pub kl_schedule: KlSchedule,
}

impl Default for ElboLossConfig {
    /// The plain negative ELBO: β = 1, analytic KL, no free bits, mean over the batch.
    fn default() -> Self {
        Self {
            beta: 1.0,
            kl_estimator: KlEstimator::Analytic,
            free_bits: 0.0,
            reduction: Reduction::BatchMean,
            kl_schedule: KlSchedule::Constant,
        }
    }
}

impl ElboLossConfig {
    /// Sets β.
    #[must_use]
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the KL estimator.
    #[must_use]
    pub fn with_kl_estimator(mut self, kl_estimator: KlEstimator) -> Self {
        self.kl_estimator = kl_estimator;
        self
    }

    /// Sets free bits λ (nats per latent dimension).
    #[must_use]
    pub fn with_free_bits(mut self, free_bits: f64) -> Self {
        self.free_bits = free_bits;
        self
    }

    /// Sets the reduction.
    #[must_use]
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Sets the KL schedule.
    #[must_use]
    pub fn with_kl_schedule(mut self, kl_schedule: KlSchedule) -> Self {
        self.kl_schedule = kl_schedule;
        self
    }

    /// Checks every rule; [`ElboLoss::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.beta.is_finite() && self.beta >= 0.0,
            "ElboLossConfig",
            "beta",
            self.beta,
            "must be finite and ≥ 0",
        )?;
        ensure(
            self.free_bits.is_finite() && self.free_bits >= 0.0,
            "ElboLossConfig",
            "free_bits",
            self.free_bits,
            "must be finite and ≥ 0",
        )?;
        match self.kl_schedule {
            KlSchedule::Constant => Ok(()),
            KlSchedule::Linear { warmup_steps } => ensure(
                warmup_steps > 0,
                "ElboLossConfig",
                "kl_schedule.warmup_steps",
                warmup_steps,
                "must be > 0",
            ),
            KlSchedule::Cyclical { period, ramp } => {
                ensure(
                    period > 0,
                    "ElboLossConfig",
                    "kl_schedule.period",
                    period,
                    "must be > 0",
                )?;
                ensure(
                    ramp > 0.0 && ramp <= 1.0,
                    "ElboLossConfig",
                    "kl_schedule.ramp",
                    ramp,
                    "must be in (0, 1]",
                )
            }
        }
    }
}

/// The parts of the objective for one batch.
#[derive(Debug, Clone)]
pub struct Elbo {
    /// The scalar to minimise: reconstruction + β·w(t)·KL (with free bits), reduced.
    pub loss: Tensor,
    /// −E_q[log p(x|z)], reduced (scalar).
    pub reconstruction: Tensor,
    /// KL(q(z|x) ‖ p(z)), reduced (scalar): the true KL, before β, warm-up or free bits.
    pub kl: Tensor,
    /// KL per latent dimension averaged over the batch, `(D,)`: which units are in use.
    /// `None` where the posterior and prior do not both factorise over dimensions (a
    /// mixture prior, a flow posterior).
    pub kl_per_dim: Option<Tensor>,
    /// −ELBO per example, `(N,)`: reconstruction + KL, without β, warm-up or free bits;
    /// an upper bound on −log p(x).
    pub per_example: Tensor,
}

/// The negative evidence lower bound (Kingma & Welling 2013, eq. 3), with β, free bits and
/// KL warm-up:
///
/// −ELBO(x) = −E_{q(z|x)}[log p(x|z)] + KL(q(z|x) ‖ p(z)) ≥ −log p(x).
///
/// ```
/// # use candle_vae::*;
/// let loss = ElboLoss::new(
///     ElboLossConfig::default()
///         .with_beta(4.0)
///         .with_free_bits(0.25)
///         .with_kl_schedule(KlSchedule::Linear { warmup_steps: 1000 }),
/// )?;
/// assert_eq!(loss.kl_weight(500), 2.0);
/// # Ok::<(), Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ElboLoss {
    config: ElboLossConfig,
}

impl ElboLoss {
    /// A loss with `config`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule.
    pub fn new(config: ElboLossConfig) -> crate::Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &ElboLossConfig {
        &self.config
    }

    /// β·w(t): the KL weight at training step `step`.
    pub fn kl_weight(&self, step: usize) -> f64 {
        self.config.beta * self.config.kl_schedule.weight(step)
    }

    /// The objective with the full KL weight β (the schedule at its end).
    ///
    /// # Shapes
    /// `out` from a forward pass on `xs` (`(N, …)`); a multi-sample pass averages over its
    /// K samples.
    ///
    /// # Errors
    /// If `xs` is not the batch `out` was computed from, or is empty;
    /// [`Error::NoAnalyticKl`] for an analytic KL the pair has
    /// no closed form for; [`Error::NoPerDimensionKl`] for
    /// free bits on a pair that does not factorise.
    pub fn forward<Q, L, P>(
        &self,
        out: &VaeOutput<'_, Q, L, P>,
        xs: &Tensor,
    ) -> candle_core::Result<Elbo>
    where
        Q: Reparameterize,
        L: Likelihood,
        P: Prior,
    {
        self.compute(out, xs, self.config.beta)
    }

    /// The objective at training step `step`, with KL weight β·w(step).
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_at_step<Q, L, P>(
        &self,
        out: &VaeOutput<'_, Q, L, P>,
        xs: &Tensor,
        step: usize,
    ) -> candle_core::Result<Elbo>
    where
        Q: Reparameterize,
        L: Likelihood,
        P: Prior,
    {
        self.compute(out, xs, self.kl_weight(step))
    }

    fn compute<Q, L, P>(
        &self,
        out: &VaeOutput<'_, Q, L, P>,
        xs: &Tensor,
        kl_weight: f64,
    ) -> candle_core::Result<Elbo>
    where
        Q: Reparameterize,
        L: Likelihood,
        P: Prior,
    {
        if xs.rank() == 0 || xs.dim(0)? == 0 {
            return Err(Error::shape(
                "ElboLoss::forward",
                "a batch of at least one example",
                xs.dims(),
            )
            .into());
        }
        let likelihood: &dyn Any = out.likelihood;
        let prior: &dyn Any = out.prior;
        let posterior: &dyn Any = &out.posterior;
        // The fused CPU kernel covers the pytorch/examples model: Bernoulli, N(0, I), a
        // diagonal Gaussian posterior, the analytic KL, one sample.
        if let (Some(StandardLikelihood::Bernoulli), true, Some(gaussian)) = (
            likelihood.downcast_ref::<StandardLikelihood>(),
            prior.is::<StandardNormal>(),
            posterior.downcast_ref::<DiagonalGaussian>(),
        ) {
            if self.config.kl_estimator == KlEstimator::Analytic
                && self.config.free_bits == 0.0
                && out.z.rank() == 2
            {
                let fused = fused::elbo::try_elbo(
                    &out.params,
                    xs,
                    gaussian.mean(),
                    gaussian.log_var(),
                    kl_weight,
                    self.config
                        .reduction
                        .example_weight(xs.dims().first().map_or(1, |&n| n)),
                )?;
                if let Some(terms) = fused {
                    return Ok(Elbo {
                        loss: terms.loss,
                        reconstruction: terms.reconstruction,
                        kl: terms.kl,
                        kl_per_dim: Some(terms.kl_per_dim),
                        per_example: terms.per_example,
                    });
                }
            }
        }
        let log_likelihood = out.reconstruction_log_prob(xs)?;
        let log_likelihood = if out.z.rank() == 3 {
            log_likelihood.mean(0)?
        } else {
            log_likelihood
        };
        let average_samples = |t: Tensor| if out.z.rank() == 3 { t.mean(0) } else { Ok(t) };
        let (kl_per_example, kl_dims) = match self.config.kl_estimator {
            KlEstimator::Analytic => {
                let dims = out.prior.analytic_kl_per_dim(posterior).ok_or_else(|| {
                    Error::NoAnalyticKl {
                        prior: std::any::type_name::<P>(),
                        posterior: std::any::type_name::<Q>(),
                    }
                })??;
                (dims.sum(D::Minus1)?, Some(dims))
            }
            KlEstimator::MonteCarlo => match (
                out.posterior.log_prob_per_dim(&out.z),
                out.prior.log_prob_per_dim(&out.z),
            ) {
                (Some(log_q), Some(log_p)) => {
                    let dims = average_samples((log_q? - log_p?)?)?;
                    (dims.sum(D::Minus1)?, Some(dims))
                }
                _ => {
                    let per_sample = (out.posterior_log_prob()? - out.prior_log_prob()?)?;
                    (average_samples(per_sample)?, None)
                }
            },
        };
        let n = kl_per_example.dim(0)? as f64;
        let kl_per_dim = kl_dims.as_ref().map(|d| d.mean(0)).transpose()?;
        let per_example = (&kl_per_example - &log_likelihood)?;

        let reduction = self.config.reduction;
        let reconstruction = reduction.apply(&log_likelihood.neg()?)?;
        let kl = reduction.apply(&kl_per_example)?;
        let kl_objective = if self.config.free_bits > 0.0 {
            let per_dim = kl_per_dim.as_ref().ok_or_else(|| Error::NoPerDimensionKl {
                setting: "free_bits",
                prior: std::any::type_name::<P>(),
                posterior: std::any::type_name::<Q>(),
            })?;
            let clamped = per_dim.maximum(self.config.free_bits)?.sum_all()?;
            match reduction {
                Reduction::Sum => (clamped * n)?,
                Reduction::BatchMean => clamped,
            }
        } else {
            kl.clone()
        };
        let loss = (&reconstruction + (kl_objective * kl_weight)?)?;
        Ok(Elbo {
            loss,
            reconstruction,
            kl,
            kl_per_dim,
            per_example,
        })
    }
}

// The model's constructor of its loss lives here, beside the loss, so that `vae` does not
// depend on `loss` (which depends on `vae` for `VaeOutput`).
impl<E, Dec, L, P> Vae<E, Dec, L, P>
where
    E: EncoderT,
    Dec: Decoder,
    L: Likelihood,
    P: Prior,
{
    /// An [`ElboLoss`] for this model, with the pair of posterior family and prior checked
    /// here: [`KlEstimator::Analytic`] needs a closed form of KL(q ‖ p).
    ///
    /// # Errors
    /// [`Error::NoAnalyticKl`] naming both types if the prior has no closed form for the
    /// encoder's posterior family; [`Error::InvalidConfig`] for a bad config.
    pub fn elbo_loss(&self, config: ElboLossConfig) -> crate::Result<ElboLoss> {
        if config.kl_estimator == KlEstimator::Analytic
            && !self.prior().has_analytic_kl(TypeId::of::<E::Posterior>())
        {
            return Err(Error::NoAnalyticKl {
                prior: std::any::type_name::<P>(),
                posterior: std::any::type_name::<E::Posterior>(),
            });
        }
        ElboLoss::new(config)
    }
}

impl<E, Dec, L, P> ConditionalVae<E, Dec, L, P>
where
    E: EncoderT,
    Dec: Decoder,
    L: Likelihood,
    P: Prior,
{
    /// An [`ElboLoss`] for this model (see [`Vae::elbo_loss`]).
    ///
    /// # Errors
    /// As [`Vae::elbo_loss`].
    pub fn elbo_loss(&self, config: ElboLossConfig) -> crate::Result<ElboLoss> {
        self.inner.elbo_loss(config)
    }
}
