//! A learned mixture of diagonal Gaussians as the prior.

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand_distr::Distribution;
use rand_distr::weighted::WeightedIndex;

use super::{Prior, check_latent, gaussian_components_log_prob};
use crate::error::{Error, ensure};
use crate::noise::NoiseSource;

/// Configuration of a [`MixturePrior`].
#[derive(Debug, Clone, PartialEq)]
pub struct MixturePriorConfig {
    /// K, the number of components (> 0).
    pub components: usize,
    /// D, the latent width (> 0).
    pub latent_dim: usize,
    /// Standard deviation of the initial component means, drawn from N(0, s²) (> 0).
    pub init_mean_std: f64,
}

impl Default for MixturePriorConfig {
    /// 10 components over 2 dimensions, means initialised from N(0, 1).
    fn default() -> Self {
        Self {
            components: 10,
            latent_dim: 2,
            init_mean_std: 1.0,
        }
    }
}

impl MixturePriorConfig {
    /// K components over D dimensions.
    pub fn new(components: usize, latent_dim: usize) -> Self {
        Self {
            components,
            latent_dim,
            ..Self::default()
        }
    }

    /// Sets the standard deviation of the initial means.
    #[must_use]
    pub fn with_init_mean_std(mut self, init_mean_std: f64) -> Self {
        self.init_mean_std = init_mean_std;
        self
    }

    /// Checks every rule; [`MixturePrior::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.components > 0,
            "MixturePriorConfig",
            "components",
            self.components,
            "must be > 0",
        )?;
        ensure(
            self.latent_dim > 0,
            "MixturePriorConfig",
            "latent_dim",
            self.latent_dim,
            "must be > 0",
        )?;
        ensure(
            self.components.checked_mul(self.latent_dim).is_some(),
            "MixturePriorConfig",
            "components",
            self.components,
            "times latent_dim must fit in usize",
        )?;
        ensure(
            self.init_mean_std.is_finite() && self.init_mean_std > 0.0,
            "MixturePriorConfig",
            "init_mean_std",
            self.init_mean_std,
            "must be finite and > 0",
        )
    }
}

/// A mixture of K diagonal Gaussians with learned weights, means and variances, as in
/// TensorFlow Probability's VAE example and Dilokthanakul et al. (2016):
///
/// p(z) = Σ_k π_k N(z; m_k, diag s_k²), π = softmax(w).
///
/// # Math
/// log p(z) = log-sum-exp_k [log π_k + log N(z; m_k, diag s_k²)], computed with three
/// matrix products over all components at once (no `(…, K, D)` temporary). A sample picks
/// k ~ Categorical(π), then z = m_k + s_k ε. There is no closed-form KL from a Gaussian
/// posterior: train with [`KlEstimator::MonteCarlo`](crate::KlEstimator::MonteCarlo).
///
/// # Parameters
/// Under its `VarBuilder`: `logits` `(K,)` (initialised to 0, uniform weights), `means`
/// `(K, D)` (from N(0, s²)), `log_vars` `(K, D)` (0).
#[derive(Debug, Clone)]
pub struct MixturePrior {
    logits: Tensor,
    means: Tensor,
    log_vars: Tensor,
}

impl MixturePrior {
    /// A mixture prior with its parameters created under `vb`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config; candle's error if the parameters cannot
    /// be created.
    pub fn new(config: &MixturePriorConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let (k, d) = (config.components, config.latent_dim);
        let logits = vb.get_with_hints(k, "logits", candle_nn::Init::Const(0.0))?;
        let means = vb.get_with_hints(
            (k, d),
            "means",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: config.init_mean_std,
            },
        )?;
        let log_vars = vb.get_with_hints((k, d), "log_vars", candle_nn::Init::Const(0.0))?;
        Self::from_tensors(logits, means, log_vars)
    }

    /// A mixture from given parameters: `logits` `(K,)`, `means` and `log_vars` `(K, D)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if the shapes do not fit together or K or D is 0.
    pub fn from_tensors(logits: Tensor, means: Tensor, log_vars: Tensor) -> crate::Result<Self> {
        let fits = logits.rank() == 1
            && means.rank() == 2
            && means.dims() == log_vars.dims()
            && means.dim(0)? == logits.dim(0)?
            && means.elem_count() > 0;
        if !fits {
            return Err(Error::shape(
                "MixturePrior",
                format!(
                    "logits (K,), means and log_vars (K, D) with K, D > 0 (logits {:?}, log_vars {:?})",
                    logits.dims(),
                    log_vars.dims()
                ),
                means.dims(),
            ));
        }
        Ok(Self {
            logits,
            means,
            log_vars,
        })
    }

    /// K, the number of components.
    pub fn components(&self) -> usize {
        self.means.dims()[0]
    }

    /// log π, `(K,)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn log_weights(&self) -> candle_core::Result<Tensor> {
        candle_nn::ops::log_softmax(&self.logits, D::Minus1)
    }

    /// The component means m, `(K, D)`.
    pub fn means(&self) -> &Tensor {
        &self.means
    }

    /// The component log-variances log s², `(K, D)`.
    pub fn log_vars(&self) -> &Tensor {
        &self.log_vars
    }
}

impl Prior for MixturePrior {
    fn latent_dim(&self) -> usize {
        self.means.dims()[1]
    }

    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        check_latent("MixturePrior::log_prob", z, self.latent_dim())?;
        let dtype = z.dtype();
        let per_component = gaussian_components_log_prob(
            z,
            &self.means.to_dtype(dtype)?,
            &self.log_vars.to_dtype(dtype)?,
        )?;
        per_component
            .broadcast_add(&self.log_weights()?.to_dtype(dtype)?)?
            .log_sum_exp(D::Minus1)
    }

    fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let weights = candle_nn::ops::softmax(&self.logits, D::Minus1)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let picker = WeightedIndex::new(&weights).map_err(|e| {
            candle_core::Error::Msg(format!(
                "MixturePrior::sample: mixture weights {weights:?}: {e}"
            ))
        })?;
        let picks: Vec<u32> = (0..n).map(|_| picker.sample(noise.rng()) as u32).collect();
        let index = Tensor::new(picks.as_slice(), self.means.device())?;
        let means = self.means.index_select(&index, 0)?.to_dtype(dtype)?;
        let std = (self.log_vars.index_select(&index, 0)? * 0.5)?
            .exp()?
            .to_dtype(dtype)?;
        let eps = noise.standard_normal((n, self.latent_dim()), dtype, device)?;
        (eps.to_device(means.device())? * std)? + means
    }
}
