//! Priors p(z) over the latent code.
//!
//! [`Prior`] is the trait every prior implements; the crate's own are the standard normal
//! [`StandardNormal`] (the default of a [`Vae`](crate::Vae)), a diagonal Gaussian with
//! any mean and scale [`GaussianPrior`], a learned mixture of Gaussians [`MixturePrior`],
//! and the [`VampPrior`] of Tomczak & Welling (2018). A learned prior creates its
//! parameters under a `VarBuilder`, so they live in the same parameter tree as the
//! networks and the same optimiser trains them.

mod mixture;
mod vamp;

use std::any::{Any, TypeId};

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::distribution::DiagonalGaussian;
use crate::error::{Error, ensure};
use crate::noise::NoiseSource;
use crate::ops::LN_2PI;

pub use mixture::{MixturePrior, MixturePriorConfig};
pub use vamp::{VampPrior, VampPriorConfig};

/// A prior p(z) over latent codes of width D.
///
/// [`Vae`](crate::Vae), [`ElboLoss`](crate::ElboLoss) and the estimators use only these
/// methods, so a user's prior works everywhere the crate's do.
///
/// # Analytic KL
/// [`KlEstimator::Analytic`](crate::KlEstimator::Analytic) asks the prior for a closed
/// form of KL(q ‖ p) for the posterior at hand through
/// [`analytic_kl_per_dim`](Self::analytic_kl_per_dim); the posterior arrives as `&dyn Any`
/// so that a prior can recognise the families it has closed forms for
/// (`posterior.downcast_ref::<DiagonalGaussian>()`), including a user's own.
/// [`has_analytic_kl`](Self::has_analytic_kl) says so before any data is seen, which is
/// what [`Vae::elbo_loss`](crate::Vae::elbo_loss) checks at construction. The defaults say
/// "no closed form"; [`KlEstimator::MonteCarlo`](crate::KlEstimator::MonteCarlo) always
/// works.
pub trait Prior: 'static {
    /// Width D of z.
    fn latent_dim(&self) -> usize;

    /// log p(z), summed over the latent dimensions.
    ///
    /// # Shapes
    /// `z`: `(N, D)` → `(N,)`, or `(K, N, D)` → `(K, N)`.
    ///
    /// # Errors
    /// If the last axis of `z` is not D.
    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor>;

    /// log p(z) per latent dimension, where p factorises over dimensions (`None` where it
    /// does not, as for a mixture).
    ///
    /// # Shapes
    /// `z`: `(N, D)` or `(K, N, D)` → the same shape.
    fn log_prob_per_dim(&self, z: &Tensor) -> Option<candle_core::Result<Tensor>> {
        let _ = z;
        None
    }

    /// `n` draws z ~ p(z), in `dtype` on `device` (where the model's parameters live).
    ///
    /// # Shapes
    /// `(n, D)`.
    ///
    /// # Errors
    /// If `dtype` or `device` is not the one a learned prior's parameters live in.
    fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor>;

    /// Whether [`analytic_kl_per_dim`](Self::analytic_kl_per_dim) has a closed form for
    /// posteriors of the type `posterior` (a [`TypeId`] of a
    /// [`Reparameterize`](crate::Reparameterize) family).
    fn has_analytic_kl(&self, posterior: TypeId) -> bool {
        let _ = posterior;
        false
    }

    /// KL(q ‖ p) per latent dimension in closed form, or `None` where this prior has none
    /// for the family of `posterior`.
    ///
    /// # Shapes
    /// A posterior over `(N, D)` → `(N, D)`.
    fn analytic_kl_per_dim(&self, posterior: &dyn Any) -> Option<candle_core::Result<Tensor>> {
        let _ = posterior;
        None
    }
}

/// Checks that the last axis of `z` is `dim` (for a prior called `op`).
pub(crate) fn check_latent(op: &'static str, z: &Tensor, dim: usize) -> candle_core::Result<()> {
    if z.rank() < 2 || z.dims().last() != Some(&dim) {
        return Err(Error::shape(
            op,
            format!("z of shape (N, {dim}) or (K, N, {dim})"),
            z.dims(),
        )
        .into());
    }
    Ok(())
}

/// The standard normal p(z) = N(0, I) (Kingma & Welling 2013): the default prior.
///
/// # Math
/// log p(z) = −½ Σ_d (log 2π + z_d²); against a diagonal Gaussian posterior the KL has the
/// closed form ½ Σ_d (μ_d² + σ_d² − 1 − log σ_d²) (Kingma & Welling 2013, appendix B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardNormal {
    dim: usize,
}

impl StandardNormal {
    /// N(0, I) over `dim` dimensions.
    ///
    /// # Errors
    /// If `dim` is 0.
    pub fn new(dim: usize) -> crate::Result<Self> {
        ensure(dim > 0, "StandardNormal", "dim", dim, "must be > 0")?;
        Ok(Self { dim })
    }
}

impl Prior for StandardNormal {
    fn latent_dim(&self) -> usize {
        self.dim
    }

    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        check_latent("StandardNormal::log_prob", z, self.dim)?;
        z.sqr()?
            .sum(D::Minus1)?
            .affine(-0.5, -0.5 * LN_2PI * self.dim as f64)
    }

    fn log_prob_per_dim(&self, z: &Tensor) -> Option<candle_core::Result<Tensor>> {
        Some(
            check_latent("StandardNormal::log_prob", z, self.dim)
                .and_then(|()| z.sqr()?.affine(-0.5, -0.5 * LN_2PI)),
        )
    }

    fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        noise.standard_normal((n, self.dim), dtype, device)
    }

    fn has_analytic_kl(&self, posterior: TypeId) -> bool {
        posterior == TypeId::of::<DiagonalGaussian>()
    }

    fn analytic_kl_per_dim(&self, posterior: &dyn Any) -> Option<candle_core::Result<Tensor>> {
        posterior
            .downcast_ref::<DiagonalGaussian>()
            .map(DiagonalGaussian::kl_standard_normal_per_dim)
    }
}

/// A diagonal Gaussian prior p(z) = N(m, diag s²) with any mean and scale, fixed or
/// learned.
///
/// # Math
/// log p(z) = −½ Σ_d [log 2π + log s_d² + (z_d − m_d)² / s_d²]; against a diagonal
/// Gaussian posterior KL(q ‖ p) = ½ Σ_d [log s_d² − log σ_d² + (σ_d² + (μ_d − m_d)²) / s_d² − 1].
#[derive(Debug, Clone)]
pub struct GaussianPrior {
    mean: Tensor,
    log_var: Tensor,
}

impl GaussianPrior {
    /// N(mean, diag exp(log_var)) from two `(D,)` tensors (constants, or `Var`s to learn).
    ///
    /// # Errors
    /// If the tensors are not both `(D,)` with D > 0.
    pub fn new(mean: Tensor, log_var: Tensor) -> crate::Result<Self> {
        if mean.rank() != 1 || mean.dims() != log_var.dims() || mean.elem_count() == 0 {
            return Err(Error::shape(
                "GaussianPrior::new",
                format!(
                    "mean and log_var of one shape (D,), D > 0 (mean is {:?})",
                    mean.dims()
                ),
                log_var.dims(),
            ));
        }
        Ok(Self { mean, log_var })
    }

    /// A learned prior: the mean (`mean`, initialised to 0) and log-variance (`log_var`,
    /// initialised to 0) of `dim` dimensions created under `vb`.
    ///
    /// # Errors
    /// If `dim` is 0 or the parameters cannot be created.
    pub fn learned(dim: usize, vb: VarBuilder) -> crate::Result<Self> {
        ensure(dim > 0, "GaussianPrior", "dim", dim, "must be > 0")?;
        let mean = vb.get_with_hints(dim, "mean", candle_nn::Init::Const(0.0))?;
        let log_var = vb.get_with_hints(dim, "log_var", candle_nn::Init::Const(0.0))?;
        Self::new(mean, log_var)
    }

    /// m, `(D,)`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// log s², `(D,)`.
    pub fn log_var(&self) -> &Tensor {
        &self.log_var
    }

    fn as_gaussian(&self) -> candle_core::Result<DiagonalGaussian> {
        DiagonalGaussian::new(self.mean.unsqueeze(0)?, self.log_var.unsqueeze(0)?)
    }
}

impl Prior for GaussianPrior {
    fn latent_dim(&self) -> usize {
        self.mean.elem_count()
    }

    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        check_latent("GaussianPrior::log_prob", z, self.latent_dim())?;
        self.as_gaussian()?.log_prob(z)
    }

    fn log_prob_per_dim(&self, z: &Tensor) -> Option<candle_core::Result<Tensor>> {
        Some(
            check_latent("GaussianPrior::log_prob", z, self.latent_dim())
                .and_then(|()| self.as_gaussian()?.log_prob_per_dim(z)),
        )
    }

    fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let eps = noise.standard_normal((n, self.latent_dim()), dtype, device)?;
        let std = (self.log_var.to_dtype(dtype)? * 0.5)?.exp()?;
        eps.broadcast_mul(&std)?
            .broadcast_add(&self.mean.to_dtype(dtype)?)
    }

    fn has_analytic_kl(&self, posterior: TypeId) -> bool {
        posterior == TypeId::of::<DiagonalGaussian>()
    }

    fn analytic_kl_per_dim(&self, posterior: &dyn Any) -> Option<candle_core::Result<Tensor>> {
        let q = posterior.downcast_ref::<DiagonalGaussian>()?;
        Some(self.as_gaussian().and_then(|p| q.kl_per_dim(&p)))
    }
}

/// log N(z; μ_k, diag σ_k²) summed over d, for every z and every component k, as three
/// matrix products instead of a `(…, K, D)` broadcast:
/// Σ_d (z_d − μ_kd)²/σ_kd² = z² · a_kᵀ − 2 z · (μ_k a_k)ᵀ + Σ_d μ_kd² a_kd, a = 1/σ².
///
/// # Shapes
/// `z`: `(…, D)`; `means`, `log_vars`: `(K, D)` → `(…, K)`.
pub(crate) fn gaussian_components_log_prob(
    z: &Tensor,
    means: &Tensor,
    log_vars: &Tensor,
) -> candle_core::Result<Tensor> {
    let dims = z.dims().to_vec();
    let d = dims.last().copied().unwrap_or(0);
    let k = means.dim(0)?;
    let flat = z.reshape(((), d))?;
    let precision = log_vars.neg()?.exp()?; // (K, D)
    let quadratic = flat.sqr()?.matmul(&precision.t()?)?; // (M, K)
    let cross = flat.matmul(&(means * &precision)?.t()?)?; // (M, K)
    let constant = ((means.sqr()? * &precision)? + log_vars)?
        .sum(D::Minus1)?
        .affine(1.0, LN_2PI * d as f64)?; // (K,)
    let mahalanobis = (quadratic - (cross * 2.0)?)?.broadcast_add(&constant)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = k;
    }
    (mahalanobis * -0.5)?.reshape(out)
}
