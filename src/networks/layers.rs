//! The layers encoders and decoders are built from, initialised as PyTorch does.
//!
//! PyTorch's `nn.Linear`, `nn.Conv2d` and `nn.ConvTranspose2d` draw weights and biases
//! from U(−1/√fan_in, 1/√fan_in) (Kaiming-uniform with a = √5); candle-nn's `linear` draws
//! weights from a Kaiming normal. Matching PyTorch's initialisation is what lets our MNIST
//! model reach the numbers of the PyTorch example, so the constructors here use it.

use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Init, VarBuilder};

pub use crate::ops::Activation;

fn uniform_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A fully connected layer `y = x·Wᵀ + b` with PyTorch's default initialisation.
/// Its tensors are `weight` `(out, in)` and `bias` `(out,)`, as in PyTorch.
///
/// # Errors
/// If the parameters cannot be created or have another shape in `vb`'s store.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
) -> candle_core::Result<candle_nn::Linear> {
    let init = uniform_init(in_dim);
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = vb.get_with_hints(out_dim, "bias", init)?;
    Ok(candle_nn::Linear::new(weight, Some(bias)))
}

/// A 2-D convolution with PyTorch's default initialisation; `weight` is
/// `(out, in, k, k)`.
///
/// # Errors
/// If the parameters cannot be created.
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    let init = uniform_init(in_channels * kernel * kernel);
    let weight = vb.get_with_hints((out_channels, in_channels, kernel, kernel), "weight", init)?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    Ok(Conv2d::new(weight, Some(bias), config))
}

/// A 2-D transposed convolution with PyTorch's default initialisation; `weight` is
/// `(in, out, k, k)` and PyTorch computes its fan-in from `out·k·k`.
///
/// # Errors
/// If the parameters cannot be created.
pub fn conv_transpose2d(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    config: ConvTranspose2dConfig,
    vb: VarBuilder,
) -> candle_core::Result<ConvTranspose2d> {
    let init = uniform_init(out_channels * kernel * kernel);
    let weight = vb.get_with_hints((in_channels, out_channels, kernel, kernel), "weight", init)?;
    let bias = vb.get_with_hints(out_channels, "bias", init)?;
    Ok(ConvTranspose2d::new(weight, Some(bias), config))
}
