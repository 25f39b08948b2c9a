//! Numerically stable element-wise functions built from candle ops.

use candle_core::Tensor;

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
