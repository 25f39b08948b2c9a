//! The interfaces a [`Vae`](crate::Vae) composes: an encoder x → q(z|x) and a decoder
//! z → parameters of p(x|z), each of which may declare its widths ([`Dims`]) so a VAE can
//! check them when it is built.

use candle_core::{ModuleT, Tensor};

use crate::reparameterize::Reparameterize;

/// An inference network x → q(z|x) whose forward pass is the same in training and
/// evaluation (the encoder analogue of candle's [`Module`](candle_core::Module)).
///
/// Implement this, or [`EncoderT`] when dropout or batch-norm make the two differ; every
/// `Encoder` is an `EncoderT` through a blanket implementation.
pub trait Encoder {
    /// The posterior family: [`DiagonalGaussian`](crate::DiagonalGaussian) for the
    /// crate's encoders, any [`Reparameterize`] type for a user's.
    type Posterior: Reparameterize;

    /// The approximate posterior q(z|x) for a batch.
    ///
    /// # Shapes
    /// `xs`: `(N, …)` → a posterior over `(N, D)`.
    ///
    /// # Errors
    /// If `xs` does not have the shape the encoder was built for.
    fn encode(&self, xs: &Tensor) -> candle_core::Result<Self::Posterior>;
}

/// An inference network whose forward pass depends on training mode (the encoder analogue
/// of candle's [`ModuleT`]).
pub trait EncoderT {
    /// The posterior family (see [`Encoder::Posterior`]).
    type Posterior: Reparameterize;

    /// The approximate posterior q(z|x); `train` selects training behaviour.
    ///
    /// # Shapes
    /// `xs`: `(N, …)` → a posterior over `(N, D)`.
    ///
    /// # Errors
    /// If `xs` does not have the shape the encoder was built for.
    fn encode_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Self::Posterior>;
}

impl<E: Encoder + ?Sized> EncoderT for E {
    type Posterior = E::Posterior;

    fn encode_t(&self, xs: &Tensor, _train: bool) -> candle_core::Result<E::Posterior> {
        self.encode(xs)
    }
}

/// A generative network z → parameters of p(x|z).
///
/// Any candle [`ModuleT`] (and so any [`Module`](candle_core::Module)) is a decoder: this
/// trait only names the role. Its output has the layout described in
/// [`Likelihood`](crate::Likelihood).
pub trait Decoder: ModuleT {}

impl<M: ModuleT + ?Sized> Decoder for M {}

/// The widths an encoder or decoder declares before it sees data.
///
/// [`Vae::new`](crate::Vae::new) compares them, so a mismatched pair fails when the model is
/// built rather than at the first batch.
pub trait Dims {
    /// Width D of the latent code: what an encoder produces; what a decoder takes (for a
    /// conditional decoder, z and the condition together).
    fn latent_dim(&self) -> usize;

    /// Shape of one example on the data side, without the batch axis: what an encoder
    /// reads (condition channels included), what a decoder produces (all likelihood
    /// parameters included), e.g. `[784]` or `[1, 28, 28]`.
    fn data_shape(&self) -> Vec<usize>;
}
