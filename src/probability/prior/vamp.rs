//! The VampPrior: a mixture of the posterior at learned pseudo-inputs.

use std::any::Any;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;

use super::{Prior, check_latent, gaussian_components_log_prob};
use crate::component::EncoderT;
use crate::distribution::DiagonalGaussian;
use crate::error::{Error, ensure};
use crate::noise::NoiseSource;
use crate::reparameterize::Reparameterize;

/// Configuration of a [`VampPrior`].
#[derive(Debug, Clone, PartialEq)]
pub struct VampPriorConfig {
    /// K, the number of pseudo-inputs (> 0; 500 in Tomczak & Welling 2018).
    pub components: usize,
    /// Shape of one pseudo-input, as the encoder reads one example (`[784]`, `[1, 28, 28]`).
    pub data_shape: Vec<usize>,
    /// Mean of the pseudo-inputs' initial values (0.05 in Tomczak & Welling's code).
    pub init_mean: f64,
    /// Standard deviation of their initial values (0.01 there; > 0).
    pub init_std: f64,
    /// Interval the pseudo-inputs are clamped to before the encoder sees them (their
    /// hard-tanh onto [0, 1] for pixels), or `None` for unbounded data.
    pub range: Option<(f64, f64)>,
}

impl Default for VampPriorConfig {
    /// 500 pseudo-inputs of 784 pixels, initialised as in Tomczak & Welling (2018).
    fn default() -> Self {
        Self {
            components: 500,
            data_shape: vec![784],
            init_mean: 0.05,
            init_std: 0.01,
            range: Some((0.0, 1.0)),
        }
    }
}

impl VampPriorConfig {
    /// K pseudo-inputs of shape `data_shape`, the other settings as in the paper.
    pub fn new(components: usize, data_shape: &[usize]) -> Self {
        Self {
            components,
            data_shape: data_shape.to_vec(),
            ..Self::default()
        }
    }

    /// Sets the initial mean and standard deviation of the pseudo-inputs.
    #[must_use]
    pub fn with_init(mut self, mean: f64, std: f64) -> Self {
        self.init_mean = mean;
        self.init_std = std;
        self
    }

    /// Sets the interval the pseudo-inputs are clamped to (`None`: unbounded).
    #[must_use]
    pub fn with_range(mut self, range: Option<(f64, f64)>) -> Self {
        self.range = range;
        self
    }

    /// Checks every rule; [`VampPrior::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.components > 0,
            "VampPriorConfig",
            "components",
            self.components,
            "must be > 0",
        )?;
        let elements = self
            .data_shape
            .iter()
            .try_fold(self.components, |acc, &d| acc.checked_mul(d));
        ensure(
            !self.data_shape.is_empty() && matches!(elements, Some(e) if e > 0),
            "VampPriorConfig",
            "data_shape",
            &self.data_shape,
            "must be non-empty, with every size > 0 and components × Π sizes within usize",
        )?;
        ensure(
            self.init_mean.is_finite() && self.init_std.is_finite() && self.init_std > 0.0,
            "VampPriorConfig",
            "init_std",
            self.init_std,
            "must be finite and > 0 (and init_mean finite)",
        )?;
        if let Some((lo, hi)) = self.range {
            ensure(
                lo.is_finite() && hi.is_finite() && lo < hi,
                "VampPriorConfig",
                "range",
                (lo, hi),
                "must be finite with low < high",
            )?;
        }
        Ok(())
    }
}

/// The VampPrior (Tomczak & Welling 2018): the prior is the encoder's own posterior,
/// averaged over K learned pseudo-inputs u_1 … u_K,
///
/// p(z) = (1/K) Σ_k q(z | u_k).
///
/// The pseudo-inputs are parameters (`pseudo_inputs`, `(K, …)`, under the `VarBuilder`
/// given to [`new`](Self::new)) trained with the rest of the model; the encoder is the
/// VAE's own (a clone shares its weights), run in evaluation mode. A sample picks k
/// uniformly and draws z ~ q(z|u_k), which is the mixture (not N(0, I), the mistake of
/// some implementations).
///
/// # Math
/// log p(z) = log-sum-exp_k log q(z|u_k) − log K; for a Gaussian posterior family the K
/// log-densities of every z come from three matrix products. There is no closed-form KL:
/// train with [`KlEstimator::MonteCarlo`](crate::KlEstimator::MonteCarlo).
#[derive(Debug, Clone)]
pub struct VampPrior<E> {
    encoder: E,
    pseudo_inputs: Tensor,
    range: Option<(f64, f64)>,
    latent_dim: usize,
}

impl<E> VampPrior<E>
where
    E: EncoderT + 'static,
{
    /// A VampPrior over `encoder`'s posterior, with its pseudo-inputs created under `vb`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config; candle's error if the encoder does not
    /// read pseudo-inputs of `config.data_shape`.
    pub fn new(encoder: E, config: &VampPriorConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let mut shape = vec![config.components];
        shape.extend_from_slice(&config.data_shape);
        let pseudo_inputs = vb.get_with_hints(
            shape,
            "pseudo_inputs",
            candle_nn::Init::Randn {
                mean: config.init_mean,
                stdev: config.init_std,
            },
        )?;
        Self::from_pseudo_inputs(encoder, pseudo_inputs, config.range)
    }

    /// A VampPrior with given pseudo-inputs `(K, …)`, clamped to `range` if set.
    ///
    /// # Errors
    /// If `pseudo_inputs` has no component, or the encoder does not read it.
    pub fn from_pseudo_inputs(
        encoder: E,
        pseudo_inputs: Tensor,
        range: Option<(f64, f64)>,
    ) -> crate::Result<Self> {
        if pseudo_inputs.rank() < 2 || pseudo_inputs.dim(0)? == 0 {
            return Err(Error::shape(
                "VampPrior",
                "pseudo-inputs of shape (K, …) with K > 0",
                pseudo_inputs.dims(),
            ));
        }
        let mut prior = Self {
            encoder,
            pseudo_inputs,
            range,
            latent_dim: 0,
        };
        prior.latent_dim = prior.components_posterior()?.latent_dim();
        Ok(prior)
    }

    /// K, the number of pseudo-inputs.
    pub fn components(&self) -> usize {
        self.pseudo_inputs.dims()[0]
    }

    /// The pseudo-inputs as the encoder sees them (clamped to the range), `(K, …)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn pseudo_inputs(&self) -> candle_core::Result<Tensor> {
        match self.range {
            Some((lo, hi)) => self.pseudo_inputs.clamp(lo, hi),
            None => Ok(self.pseudo_inputs.clone()),
        }
    }

    /// q(z|u_k) for every pseudo-input: a batch of K posteriors.
    ///
    /// # Errors
    /// Only candle's own (and the encoder's).
    pub fn components_posterior(&self) -> candle_core::Result<E::Posterior> {
        self.encoder.encode_t(&self.pseudo_inputs()?, false)
    }
}

impl<E> Prior for VampPrior<E>
where
    E: EncoderT + 'static,
{
    fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        check_latent("VampPrior::log_prob", z, self.latent_dim)?;
        let q = self.components_posterior()?;
        let k = self.components();
        let per_component = match (&q as &dyn Any).downcast_ref::<DiagonalGaussian>() {
            Some(gaussian) => gaussian_components_log_prob(z, gaussian.mean(), gaussian.log_var())?,
            None => {
                // Any other family: evaluate every z under every component through the
                // trait, as a (M, K, D) batch of "K-sample" draws.
                let dims = z.dims().to_vec();
                let d = self.latent_dim;
                let flat = z.reshape(((), d))?;
                let m = flat.dim(0)?;
                let tiled = flat.unsqueeze(1)?.broadcast_as((m, k, d))?.contiguous()?;
                let mut out = dims;
                if let Some(last) = out.last_mut() {
                    *last = k;
                }
                q.log_prob(&tiled)?.reshape(out)?
            }
        };
        per_component.log_sum_exp(D::Minus1)? - (k as f64).ln()
    }

    fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let k = self.components();
        let picks: Vec<u32> = (0..n)
            .map(|_| noise.rng().random_range(0..k) as u32)
            .collect();
        let index = Tensor::new(picks.as_slice(), self.pseudo_inputs.device())?;
        let inputs = self.pseudo_inputs()?.index_select(&index, 0)?;
        let q = self.encoder.encode_t(&inputs, false)?;
        q.rsample(noise)?.to_dtype(dtype)?.to_device(device)
    }
}
