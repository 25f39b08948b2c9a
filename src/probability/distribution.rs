//! The diagonal Gaussian: the approximate posterior q(z|x) and the prior p(z).

use candle_core::{D, DType, Device, Tensor};

use crate::error::Error;
use crate::noise::NoiseSource;
use crate::ops::LN_2PI;
use crate::reparameterize::Reparameterize;

/// A Gaussian with diagonal covariance, N(μ, diag σ²), parameterised by its mean μ and
/// log-variance log σ² (the encoder's two heads).
///
/// Tensors are `(N, D)`: a batch of N distributions over D latent dimensions. Every
/// density and divergence below is computed per dimension and summed over the last axis.
///
/// # Math
/// For one dimension with mean μ and variance σ²:
///
/// * log-density: log N(z; μ, σ²) = −½ [ log 2π + log σ² + (z − μ)² / σ² ]
/// * entropy: H = ½ [ log 2π + 1 + log σ² ]
/// * KL to the standard normal: KL(q ‖ N(0,1)) = ½ [ μ² + σ² − 1 − log σ² ]
///   (Kingma & Welling 2013, appendix B)
/// * KL between two Gaussians: KL(q ‖ p) = ½ [ log σp² − log σq² + (σq² + (μq − μp)²) / σp² − 1 ]
///
/// # Reparameterization
/// As a [`Reparameterize`] family, [`rsample`](Reparameterize::rsample) draws z = μ + σ·ε with ε ~ N(0, I) from a seeded
/// [`NoiseSource`], so z is a differentiable function of μ and log σ² (Kingma & Welling
/// 2013, §2.4). [`rsample_with`](Self::rsample_with) is its deterministic twin: it takes ε.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    mean: Tensor,
    log_var: Tensor,
}

impl DiagonalGaussian {
    /// N(mean, diag exp(log_var)).
    ///
    /// # Errors
    /// If the two tensors differ in shape or are not of rank ≥ 1.
    pub fn new(mean: Tensor, log_var: Tensor) -> candle_core::Result<Self> {
        if mean.dims() != log_var.dims() || mean.rank() == 0 {
            return Err(Error::shape(
                "DiagonalGaussian::new",
                format!("log_var of the mean's shape {:?}, rank ≥ 1", mean.dims()),
                log_var.dims(),
            )
            .into());
        }
        Ok(Self { mean, log_var })
    }

    /// The standard normal N(0, I) of shape `(n, dim)`: the prior p(z).
    ///
    /// # Errors
    /// If the tensors cannot be created on `device`.
    pub fn standard(
        n: usize,
        dim: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            mean: Tensor::zeros((n, dim), dtype, device)?,
            log_var: Tensor::zeros((n, dim), dtype, device)?,
        })
    }

    /// μ, shape `(N, D)`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// log σ², shape `(N, D)`.
    pub fn log_var(&self) -> &Tensor {
        &self.log_var
    }

    /// The mode, which for a Gaussian is μ.
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }

    /// Number of latent dimensions D.
    pub fn dim(&self) -> usize {
        self.mean.dims().last().copied().unwrap_or(0)
    }

    /// σ = exp(½ log σ²), shape `(N, D)`.
    ///
    /// # Errors
    /// Only candle's own (device, dtype).
    pub fn std(&self) -> candle_core::Result<Tensor> {
        (&self.log_var * 0.5)?.exp()
    }

    /// σ², shape `(N, D)`.
    ///
    /// # Errors
    /// Only candle's own (device, dtype).
    pub fn variance(&self) -> candle_core::Result<Tensor> {
        self.log_var.exp()
    }

    /// log q(z) per dimension.
    ///
    /// # Shapes
    /// `z`: `(N, D)` or `(K, N, D)` (K samples per distribution) → same shape.
    ///
    /// # Errors
    /// If `z` does not broadcast against `(N, D)`.
    pub fn log_prob_per_dim(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let centered = z.broadcast_sub(&self.mean)?;
        let scaled = centered.sqr()?.broadcast_mul(&self.log_var.neg()?.exp()?)?;
        scaled
            .broadcast_add(&self.log_var)?
            .affine(-0.5, -0.5 * LN_2PI)
    }

    /// log q(z) = Σ_d log N(z_d; μ_d, σ_d²).
    ///
    /// # Shapes
    /// `z`: `(N, D)` → `(N,)`; `(K, N, D)` → `(K, N)`.
    ///
    /// # Errors
    /// If `z` does not broadcast against `(N, D)`.
    pub fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.log_prob_per_dim(z)?.sum(D::Minus1)
    }

    /// Differential entropy H\[q\] = Σ_d ½ (log 2π + 1 + log σ_d²).
    ///
    /// # Shapes
    /// `(N,)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn entropy(&self) -> candle_core::Result<Tensor> {
        self.log_var
            .affine(0.5, 0.5 * (LN_2PI + 1.0))?
            .sum(D::Minus1)
    }

    /// KL(q ‖ N(0, I)) per dimension: ½ (μ² + σ² − 1 − log σ²).
    ///
    /// # Shapes
    /// `(N, D)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn kl_standard_normal_per_dim(&self) -> candle_core::Result<Tensor> {
        let terms = ((self.mean.sqr()? + self.log_var.exp()?)? - &self.log_var)?;
        terms.affine(0.5, -0.5)
    }

    /// KL(q ‖ N(0, I)), summed over dimensions.
    ///
    /// # Shapes
    /// `(N,)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn kl_standard_normal(&self) -> candle_core::Result<Tensor> {
        self.kl_standard_normal_per_dim()?.sum(D::Minus1)
    }

    /// KL(self ‖ other) per dimension.
    ///
    /// # Shapes
    /// Both `(N, D)` (or broadcastable) → `(N, D)`.
    ///
    /// # Errors
    /// If the shapes do not broadcast.
    pub fn kl_per_dim(&self, other: &DiagonalGaussian) -> candle_core::Result<Tensor> {
        let inv_var_p = other.log_var.neg()?.exp()?;
        let mean_diff_sq = self.mean.broadcast_sub(&other.mean)?.sqr()?;
        let ratio = (self.log_var.exp()? + mean_diff_sq)?.broadcast_mul(&inv_var_p)?;
        let log_ratio = other.log_var.broadcast_sub(&self.log_var)?;
        (log_ratio + ratio)?.affine(0.5, -0.5)
    }

    /// KL(self ‖ other), summed over dimensions.
    ///
    /// # Shapes
    /// `(N,)`.
    ///
    /// # Errors
    /// If the shapes do not broadcast.
    pub fn kl(&self, other: &DiagonalGaussian) -> candle_core::Result<Tensor> {
        self.kl_per_dim(other)?.sum(D::Minus1)
    }

    /// The reparameterized sample z = μ + σ·ε for a given ε (the deterministic twin of
    /// [`rsample`](Self::rsample)). Gradients flow to μ and log σ², not to ε.
    ///
    /// # Shapes
    /// `eps`: `(N, D)` → `(N, D)`, or `(K, N, D)` → `(K, N, D)`.
    ///
    /// # Errors
    /// If `eps` does not broadcast against `(N, D)`.
    pub fn rsample_with(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        if eps.rank() < self.mean.rank()
            || eps.dims()[eps.rank() - self.mean.rank()..] != *self.mean.dims()
        {
            return Err(Error::shape(
                "DiagonalGaussian::rsample_with",
                format!(
                    "ε of shape {:?} or (K, {:?})",
                    self.mean.dims(),
                    self.mean.dims()
                ),
                eps.dims(),
            )
            .into());
        }
        eps.broadcast_mul(&self.std()?)?.broadcast_add(&self.mean)
    }

    /// The same distribution with no gradient path back to the encoder.
    pub fn detach(&self) -> Self {
        Self {
            mean: self.mean.detach(),
            log_var: self.log_var.detach(),
        }
    }
}

impl Reparameterize for DiagonalGaussian {
    fn latent_dim(&self) -> usize {
        self.dim()
    }

    fn draw_noise(
        &self,
        samples: Option<usize>,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let mut shape = Vec::with_capacity(self.mean.rank() + 1);
        if let Some(k) = samples {
            if k == 0 {
                return Err(Error::config(
                    "DiagonalGaussian::draw_noise",
                    "samples",
                    k,
                    "must be ≥ 1",
                )
                .into());
            }
            shape.push(k);
        }
        shape.extend_from_slice(self.mean.dims());
        noise.standard_normal(shape, self.mean.dtype(), self.mean.device())
    }

    fn rsample_with(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        DiagonalGaussian::rsample_with(self, eps)
    }

    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        DiagonalGaussian::log_prob(self, z)
    }

    fn log_prob_per_dim(&self, z: &Tensor) -> Option<candle_core::Result<Tensor>> {
        Some(DiagonalGaussian::log_prob_per_dim(self, z))
    }

    fn location(&self) -> candle_core::Result<Tensor> {
        Ok(self.mean.clone())
    }
}
