//! The posterior family: a distribution over z whose samples are differentiable functions
//! of the encoder's outputs (the reparameterization trick, Kingma & Welling 2013, §2.4).

use candle_core::Tensor;

use crate::error::Error;
use crate::noise::NoiseSource;

/// A distribution q(z) over latent codes that draws *differentiable* samples:
/// z = g_φ(ε), with ε from a fixed base distribution that does not depend on φ.
///
/// An [`Encoder`](crate::Encoder) returns one of these for a batch (its associated type
/// `Posterior`); [`ElboLoss`](crate::ElboLoss), the [`estimate`](crate::estimate)
/// functions and the trainer only go through this trait. [`DiagonalGaussian`](crate::DiagonalGaussian)
/// and [`FlowPosterior`](crate::FlowPosterior) implement it; so can a user's family.
///
/// Two methods draw: [`rsample`](Self::rsample) takes noise from a seeded
/// [`NoiseSource`], and its deterministic twin [`rsample_with`](Self::rsample_with)
/// takes ε (as `rand_distr`'s `Normal::from_zscore`).
///
/// # Shapes
/// A batch of N distributions over D dimensions. ε and z are `(N, D)` for one sample each
/// or `(K, N, D)` for K; log-densities are `(N,)` or `(K, N)`.
pub trait Reparameterize: 'static {
    /// Width D of z.
    fn latent_dim(&self) -> usize;

    /// Draws the base noise ε that [`rsample_with`](Self::rsample_with) maps to z: one
    /// draw per distribution (`samples = None`, shape `(N, D)`) or k (`Some(k)`,
    /// `(k, N, D)`).
    ///
    /// # Errors
    /// If `samples` is `Some(0)`, or candle's own.
    fn draw_noise(
        &self,
        samples: Option<usize>,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor>;

    /// z = g_φ(ε): the reparameterized sample for given noise; gradients flow to the
    /// distribution's parameters, not to ε.
    ///
    /// # Shapes
    /// `eps`: `(N, D)` → `(N, D)`, or `(K, N, D)` → `(K, N, D)`.
    ///
    /// # Errors
    /// If `eps` does not have one of those shapes.
    fn rsample_with(&self, eps: &Tensor) -> candle_core::Result<Tensor>;

    /// log q(z), summed over the latent dimensions.
    ///
    /// # Shapes
    /// `z`: `(N, D)` → `(N,)`, or `(K, N, D)` → `(K, N)`.
    ///
    /// # Errors
    /// If `z` has the wrong shape, or the family has no tractable density at an arbitrary
    /// z (a flow without an inverse: use [`log_prob_of_sample`](Self::log_prob_of_sample)).
    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor>;

    /// log q(z) at a sample z = g_φ(ε) drawn from `eps`, which is all the ELBO and
    /// importance sampling need. The default is [`log_prob`](Self::log_prob)`(z)`; a flow
    /// overrides it with the change of variables along the path from ε.
    ///
    /// # Shapes
    /// As [`log_prob`](Self::log_prob); `eps` has the shape of `z`.
    ///
    /// # Errors
    /// As [`log_prob`](Self::log_prob).
    fn log_prob_of_sample(&self, eps: &Tensor, z: &Tensor) -> candle_core::Result<Tensor> {
        let _ = eps;
        self.log_prob(z)
    }

    /// log q(z) per latent dimension, where q factorises over dimensions (`None` where it
    /// does not): what the per-dimension KL and free bits need.
    ///
    /// # Shapes
    /// `z`: `(N, D)` or `(K, N, D)` → the same shape.
    fn log_prob_per_dim(&self, z: &Tensor) -> Option<candle_core::Result<Tensor>> {
        let _ = z;
        None
    }

    /// A point summary of q for each example, `(N, D)`: what reconstructions, latent
    /// scatter plots and active units use. The mean for a Gaussian; for a flow, the flow
    /// applied to its base distribution's mean.
    ///
    /// # Errors
    /// Only candle's own.
    fn location(&self) -> candle_core::Result<Tensor>;

    /// One reparameterized sample per distribution, ε drawn from `noise`.
    ///
    /// # Shapes
    /// `(N, D)`.
    ///
    /// # Errors
    /// Only candle's own.
    fn rsample(&self, noise: &mut NoiseSource) -> candle_core::Result<Tensor> {
        self.rsample_with(&self.draw_noise(None, noise)?)
    }

    /// `k` reparameterized samples per distribution (for IWAE and importance sampling).
    ///
    /// # Shapes
    /// `(k, N, D)`.
    ///
    /// # Errors
    /// If `k` is 0.
    fn rsample_n(&self, k: usize, noise: &mut NoiseSource) -> candle_core::Result<Tensor> {
        if k == 0 {
            return Err(Error::config("rsample_n", "k", k, "must be ≥ 1").into());
        }
        self.rsample_with(&self.draw_noise(Some(k), noise)?)
    }
}
