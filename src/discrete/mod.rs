//! Discrete latent variables: the vector-quantised VAE (van den Oord et al. 2017) and the
//! relaxed categorical posterior, Gumbel-softmax (Jang et al. 2017) or Concrete (Maddison
//! et al. 2017).
//!
//! * [`VectorQuantizer`]: the nearest-code lookup with the straight-through gradient, the
//!   codebook and commitment losses, the EMA codebook (Razavi et al. 2019) and restarts
//!   of dead codes; [`VqVae`] composes it with [`VqEncoder`]/[`VqDecoder`] (or any
//!   modules) and any likelihood.
//! * [`RelaxedCategorical`]: a [`Reparameterize`](crate::reparameterize::Reparameterize)
//!   family, so a [`Vae`](crate::vae::Vae) of a [`CategoricalEncoder`], any decoder and
//!   the [`UniformCategorical`] prior trains with the crate's
//!   [`ElboLoss`](crate::objective::loss::ElboLoss) (analytic KL to the uniform
//!   categorical); [`TemperatureSchedule`] anneals τ.
//!
//! The Gaussian path (and its fused kernels) is not touched: these are further
//! implementors of the same traits.

mod categorical;
mod gumbel;
mod quantizer;
mod vqvae;

pub use categorical::{CategoricalEncoder, CategoricalEncoderConfig, UniformCategorical};
pub use gumbel::{
    GumbelEstimator, RelaxedCategorical, TemperatureSchedule, concrete_log_density, gumbel_noise,
};
pub use quantizer::{
    CodebookUpdate, DeadCodes, Quantized, VectorQuantizer, VectorQuantizerConfig, perplexity,
};
pub use vqvae::{VqConvConfig, VqDecoder, VqEncoder, VqVae, VqVaeLoss, VqVaeOutput};
