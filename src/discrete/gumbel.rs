//! The relaxed categorical posterior: Gumbel-softmax (Jang et al. 2017), also called the
//! Concrete distribution (Maddison et al. 2017).

use candle_core::{D, DType, Device, Shape, Tensor};
use rand::Rng;

use crate::error::{Error, ensure};
use crate::noise::NoiseSource;
use crate::reparameterize::Reparameterize;

/// How a relaxed categorical sample reaches the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GumbelEstimator {
    /// The relaxed sample y = softmax((ℓ + g)/τ) itself (Jang et al. 2017, eq. 2).
    #[default]
    Relaxed,
    /// The one-hot arg-max of ℓ + g in the forward pass, the gradient of the relaxed y in
    /// the backward pass: z = one_hot + (y − sg(y)) ("Straight-Through Gumbel-Softmax",
    /// Jang et al. 2017, §2.2).
    StraightThrough,
}

/// An annealing schedule of the temperature by training step (Jang et al. 2017, §4.1):
///
/// τ(t) = max(τ_min, τ₀ · exp(−r · ⌊t / N⌋ · N)),
///
/// the step t counted from 0 and τ updated every N steps. Jang et al. use τ₀ = 1,
/// τ_min = 0.5, r ∈ {1e-5, 1e-4}, N ∈ {500, 1000}.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemperatureSchedule {
    /// τ₀ (finite, > 0).
    pub initial: f64,
    /// τ_min (finite, in (0, τ₀]).
    pub minimum: f64,
    /// r (finite, ≥ 0); 0 is a constant temperature.
    pub rate: f64,
    /// N, steps between updates (> 0).
    pub every: usize,
}

impl Default for TemperatureSchedule {
    /// Jang et al.'s schedule: τ₀ = 1, τ_min = 0.5, r = 1e-5, N = 500.
    fn default() -> Self {
        Self {
            initial: 1.0,
            minimum: 0.5,
            rate: 1e-5,
            every: 500,
        }
    }
}

impl TemperatureSchedule {
    /// A constant temperature τ.
    pub fn constant(tau: f64) -> Self {
        Self {
            initial: tau,
            minimum: tau,
            rate: 0.0,
            every: 1,
        }
    }

    /// Sets r.
    #[must_use]
    pub fn with_rate(mut self, rate: f64) -> Self {
        self.rate = rate;
        self
    }

    /// Sets τ_min.
    #[must_use]
    pub fn with_minimum(mut self, minimum: f64) -> Self {
        self.minimum = minimum;
        self
    }

    /// Sets N.
    #[must_use]
    pub fn with_every(mut self, every: usize) -> Self {
        self.every = every;
        self
    }

    /// Checks every rule.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule (τ ≤ 0 among them).
    pub fn validate(&self) -> crate::Result<()> {
        const C: &str = "TemperatureSchedule";
        ensure(
            self.initial.is_finite() && self.initial > 0.0,
            C,
            "initial",
            self.initial,
            "the temperature must be finite and > 0",
        )?;
        ensure(
            self.minimum.is_finite() && self.minimum > 0.0 && self.minimum <= self.initial,
            C,
            "minimum",
            self.minimum,
            "must be finite, > 0 and ≤ initial",
        )?;
        ensure(
            self.rate.is_finite() && self.rate >= 0.0,
            C,
            "rate",
            self.rate,
            "must be finite and ≥ 0",
        )?;
        ensure(self.every > 0, C, "every", self.every, "must be > 0")
    }

    /// τ at training step `step`.
    pub fn temperature(&self, step: usize) -> f64 {
        let every = self.every.max(1);
        let t = (step / every * every) as f64;
        (self.initial * (-self.rate * t).exp()).max(self.minimum)
    }
}

/// Checks a temperature at construction.
pub(crate) fn check_temperature(op: &'static str, tau: f64) -> crate::Result<()> {
    ensure(
        tau.is_finite() && tau > 0.0,
        op,
        "temperature",
        tau,
        "must be finite and > 0",
    )
}

/// Standard Gumbel noise g = −ln(−ln u), u ~ U(0, 1), from the seeded `noise` (u = 0 is
/// replaced by the smallest positive f64, so every draw is finite).
///
/// # Errors
/// If the tensor cannot be made on `device` in `dtype`.
pub fn gumbel_noise(
    shape: impl Into<Shape>,
    dtype: DType,
    device: &Device,
    noise: &mut NoiseSource,
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let n = crate::error::elements(shape.dims())
        .ok_or_else(|| crate::error::too_large("gumbel_noise", shape.dims()))?;
    let rng = noise.rng();
    let values: Vec<f64> = (0..n)
        .map(|_| {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            -(-u.ln()).ln()
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// ln Γ(c) = ln (c − 1)! for a whole c ≥ 1.
fn ln_factorial_below(c: usize) -> f64 {
    (2..c).map(|k| (k as f64).ln()).sum()
}

/// The last axis of `t` split into (M, C).
fn grouped(t: &Tensor, groups: usize, classes: usize) -> candle_core::Result<Tensor> {
    let mut dims = t.dims().to_vec();
    dims.pop();
    dims.push(groups);
    dims.push(classes);
    t.reshape(dims)
}

/// The last two axes of `t` merged back into one.
fn ungrouped(t: &Tensor) -> candle_core::Result<Tensor> {
    t.flatten_from(t.rank().saturating_sub(2))
}

/// log p_{α,τ}(y) of the Concrete distribution over the simplex of each group
/// (Maddison et al. 2017, eq. 10 / Definition 1), summed over groups:
///
/// log p(y) = ln Γ(C) + (C − 1) ln τ + Σ_c (ln α_c − (τ + 1) ln y_c) − C ln Σ_c α_c y_c^{−τ},
///
/// with ln α = `logits` (any offset per group cancels) and `log_y` = ln y.
///
/// # Shapes
/// `logits`: `(…, M, C)` broadcast against `log_y` `(…, M, C)` → `(…)` (the two last
/// axes summed).
///
/// # Errors
/// Only candle's own.
pub fn concrete_log_density(
    logits: &Tensor,
    log_y: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let classes = log_y.dim(D::Minus1)?;
    let c = classes as f64;
    let constant = ln_factorial_below(classes) + (c - 1.0) * temperature.ln();
    let logits = logits.broadcast_as(log_y.shape())?;
    let first = (&logits - (log_y * (temperature + 1.0))?)?.sum(D::Minus1)?;
    let lse = (&logits - (log_y * temperature)?)?.log_sum_exp(D::Minus1)?;
    let per_group = ((first - (lse * c)?)? + constant)?;
    per_group.sum(D::Minus1)
}

/// A relaxed categorical posterior over M independent categorical variables with C
/// classes each (Jang et al. 2017; Maddison et al. 2017): logits ℓ `(N, M·C)`, class
/// probabilities π = softmax(ℓ) per group, and at temperature τ the reparameterised
/// sample
///
/// y = softmax((ℓ + g) / τ),   g_c ~ Gumbel(0, 1) i.i.d.,
///
/// which tends to the one-hot arg-max of ℓ + g (a draw from Categorical(π)) as τ → 0.
///
/// * [`rsample_with`](Reparameterize::rsample_with) takes the Gumbel noise g as ε;
///   [`GumbelEstimator::StraightThrough`] returns the one-hot arg-max with the relaxed
///   gradient.
/// * [`kl_uniform_per_dim`](Self::kl_uniform_per_dim): the KL of Categorical(π) to the
///   uniform categorical, Σ_m Σ_c π_mc ln(π_mc · C), what Jang et al.'s ELBO uses;
///   [`UniformCategorical`](crate::discrete::UniformCategorical) offers it to
///   [`ElboLoss`](crate::objective::loss::ElboLoss) as the analytic KL.
/// * [`log_prob`](Reparameterize::log_prob): the Concrete log-density of a relaxed y
///   ([`concrete_log_density`]); at a sample,
///   [`log_prob_of_sample`](Reparameterize::log_prob_of_sample) evaluates it at the
///   relaxed y of its noise (also for the straight-through estimator, whose one-hot z has
///   no density on the simplex's interior).
///
/// # Shapes
/// The latent width is D = M·C, group m occupying columns m·C … m·C + C − 1.
#[derive(Debug, Clone)]
pub struct RelaxedCategorical {
    logits: Tensor,
    groups: usize,
    classes: usize,
    temperature: f64,
    estimator: GumbelEstimator,
}

impl RelaxedCategorical {
    /// The posterior with logits `(N, M·C)` at temperature τ.
    ///
    /// # Errors
    /// [`Error::CategoricalWidth`] if the logits are not `(N, groups·classes)`;
    /// [`Error::InvalidConfig`] if `groups` or `classes` is 0, or τ is not finite and > 0.
    pub fn new(
        logits: Tensor,
        groups: usize,
        classes: usize,
        temperature: f64,
        estimator: GumbelEstimator,
    ) -> crate::Result<Self> {
        ensure(
            groups > 0,
            "RelaxedCategorical",
            "groups",
            groups,
            "must be > 0",
        )?;
        ensure(
            classes > 0,
            "RelaxedCategorical",
            "classes",
            classes,
            "must be > 0",
        )?;
        check_temperature("RelaxedCategorical", temperature)?;
        let expected = groups * classes;
        match logits.dims() {
            &[_, w] if w == expected => {}
            dims => {
                return Err(Error::CategoricalWidth {
                    op: "RelaxedCategorical::new",
                    groups,
                    classes,
                    expected,
                    found: if dims.len() == 2 {
                        dims[1]
                    } else {
                        dims.iter().product()
                    },
                });
            }
        }
        Ok(Self {
            logits,
            groups,
            classes,
            temperature,
            estimator,
        })
    }

    /// ℓ, `(N, M·C)`.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// M.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// C.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// τ.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The estimator.
    pub fn estimator(&self) -> GumbelEstimator {
        self.estimator
    }

    /// π = softmax(ℓ) per group, `(N, M·C)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn probs(&self) -> candle_core::Result<Tensor> {
        ungrouped(&candle_nn::ops::softmax(
            &grouped(&self.logits, self.groups, self.classes)?,
            D::Minus1,
        )?)
    }

    /// KL(Categorical(π) ‖ Uniform(C)) per latent column, `(N, M·C)`: π_mc ln(π_mc · C);
    /// the sum over the columns is Σ_m Σ_c π_mc ln(π_mc C), which is ≥ 0, 0 exactly at
    /// uniform π and M ln C at one-hot π.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn kl_uniform_per_dim(&self) -> candle_core::Result<Tensor> {
        let g = grouped(&self.logits, self.groups, self.classes)?;
        let log_p = candle_nn::ops::log_softmax(&g, D::Minus1)?;
        let kl = (log_p.exp()? * (log_p + (self.classes as f64).ln())?)?;
        ungrouped(&kl)
    }

    /// ln y of the relaxed sample for Gumbel noise g: log_softmax((ℓ + g)/τ), grouped
    /// `(…, M, C)`.
    fn relaxed_log(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        self.check_eps(eps)?;
        let shifted = eps.broadcast_add(&self.logits)?;
        candle_nn::ops::log_softmax(
            &(grouped(&shifted, self.groups, self.classes)? / self.temperature)?,
            D::Minus1,
        )
    }

    fn check_eps(&self, eps: &Tensor) -> candle_core::Result<()> {
        let (n, w) = self.logits.dims2()?;
        let ok = match eps.dims() {
            [a, b] => *a == n && *b == w,
            [_, a, b] => *a == n && *b == w,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::shape(
                "RelaxedCategorical",
                format!("noise of shape ({n}, {w}) or (K, {n}, {w})"),
                eps.dims(),
            )
            .into())
        }
    }

    /// The one-hot arg-max of ℓ + g per group (ties to the lowest class), grouped.
    fn hard(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        let shifted = grouped(&eps.broadcast_add(&self.logits)?, self.groups, self.classes)?;
        one_hot_argmax(&shifted)
    }
}

/// One-hot rows of the arg-max along the last axis (ties to the lowest index), in the
/// dtype of `xs`.
fn one_hot_argmax(xs: &Tensor) -> candle_core::Result<Tensor> {
    let classes = xs.dim(D::Minus1)?;
    let rows = xs
        .flatten_to(xs.rank().saturating_sub(2))?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let mut out = vec![0f64; rows.len() * classes];
    for (r, row) in rows.iter().enumerate() {
        let mut best = 0;
        for (c, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = c;
            }
        }
        out[r * classes + best] = 1.0;
    }
    Tensor::from_vec(out, xs.shape(), &Device::Cpu)?
        .to_dtype(xs.dtype())?
        .to_device(xs.device())
}

impl Reparameterize for RelaxedCategorical {
    fn latent_dim(&self) -> usize {
        self.groups * self.classes
    }

    /// Gumbel(0, 1) noise of the logits' shape (or `(k, N, M·C)`).
    fn draw_noise(
        &self,
        samples: Option<usize>,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let (n, w) = self.logits.dims2()?;
        let shape: Vec<usize> = match samples {
            None => vec![n, w],
            Some(0) => {
                return Err(Error::config("draw_noise", "samples", 0, "must be ≥ 1").into());
            }
            Some(k) => vec![k, n, w],
        };
        gumbel_noise(shape, self.logits.dtype(), self.logits.device(), noise)
    }

    /// y = softmax((ℓ + g)/τ), or for the straight-through estimator
    /// one_hot(argmax(ℓ + g)) + (y − sg(y)), exactly one-hot in value.
    fn rsample_with(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.relaxed_log(eps)?.exp()?;
        let z = match self.estimator {
            GumbelEstimator::Relaxed => y,
            GumbelEstimator::StraightThrough => (self.hard(eps)? + (&y - y.detach())?)?,
        };
        ungrouped(&z)
    }

    /// The Concrete log-density of y (each group on the interior of its simplex).
    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.check_eps(z)?;
        let log_y = grouped(z, self.groups, self.classes)?.log()?;
        let logits = grouped(&self.logits, self.groups, self.classes)?;
        concrete_log_density(&logits, &log_y, self.temperature)
    }

    /// The Concrete log-density at the relaxed sample of `eps` (computed in log space from
    /// the noise, so it stays finite where y underflows).
    fn log_prob_of_sample(&self, eps: &Tensor, _z: &Tensor) -> candle_core::Result<Tensor> {
        let log_y = self.relaxed_log(eps)?;
        let logits = grouped(&self.logits, self.groups, self.classes)?;
        concrete_log_density(&logits, &log_y, self.temperature)
    }

    /// The mode of the categorical: one-hot arg-max of ℓ per group.
    fn location(&self) -> candle_core::Result<Tensor> {
        ungrouped(&one_hot_argmax(&grouped(
            &self.logits,
            self.groups,
            self.classes,
        )?)?)
    }
}
