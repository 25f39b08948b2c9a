//! Numerically stable element-wise functions built from candle ops.

use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

/// ln(2π), the constant of every Gaussian log-density.
pub const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// Softplus log(1 + eˣ), computed as relu(x) + log(1 + e^{−|x|}) so it is finite for
/// every finite x (the naive form overflows at x ≈ 89 in `f32`).
///
/// # Errors
/// Only candle's own.
pub fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + log1p_exp_neg_abs(x)?
}

/// log(1 + e^{−|x|}), the bounded part of softplus and of the Bernoulli log-likelihood.
pub(crate) fn log1p_exp_neg_abs(x: &Tensor) -> candle_core::Result<Tensor> {
    (x.abs()?.neg()?.exp()? + 1.0)?.log()
}

/// Binary cross-entropy with logits, element-wise: −[x log σ(l) + (1 − x) log(1 − σ(l))],
/// in the stable form relu(l) − l·x + log(1 + e^{−|l|}).
///
/// Finite for every finite logit, unlike candle-nn's `binary_cross_entropy_with_logit`
/// (NaN at ±100). `x` may be any value in [0, 1] (PyTorch's BCE on grayscale pixels).
///
/// # Shapes
/// `logits` and `targets` broadcast against each other.
///
/// # Errors
/// If the shapes do not broadcast.
pub fn binary_cross_entropy_with_logits(
    logits: &Tensor,
    targets: &Tensor,
) -> candle_core::Result<Tensor> {
    let linear = logits.broadcast_mul(targets)?;
    (logits.relu()? + log1p_exp_neg_abs(logits)?)?.broadcast_sub(&linear)
}

/// The logistic sigmoid 1 / (1 + e^{−x}).
///
/// # Errors
/// Only candle's own.
pub fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::sigmoid(x)
}

/// The non-linearity between layers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Activation {
    /// max(0, x), as in the PyTorch VAE example.
    #[default]
    Relu,
    /// tanh(x), as in Kingma & Welling (2013) and Burda et al. (2015).
    Tanh,
    /// log(1 + eˣ), as in Kingma & Welling's Frey Face model.
    Softplus,
    /// x for x > 0, eˣ − 1 otherwise.
    Elu,
    /// max(x, slope·x).
    LeakyRelu(f64),
    /// x·σ(x).
    Silu,
    /// The erf-based GELU.
    Gelu,
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Relu => xs.relu(),
            Activation::Tanh => xs.tanh(),
            Activation::Softplus => softplus(xs),
            Activation::Elu => xs.elu(1.0),
            Activation::LeakyRelu(slope) => candle_nn::ops::leaky_relu(xs, *slope),
            Activation::Silu => xs.silu(),
            Activation::Gelu => xs.gelu_erf(),
        }
    }
}
