//! Fully connected encoder and decoder.
//!
//! # Tensor names
//! Layers are numbered as in the pytorch/examples VAE, generalised to any depth. With L
//! hidden layers the encoder has `fc1` … `fcL`, then the heads `fc{L+1}1` (mean) and
//! `fc{L+1}2` (log-variance); the decoder continues the count: `fc{L+2}` … `fc{2L+2}`.
//! With one hidden layer that is exactly PyTorch's `fc1`, `fc21`, `fc22`, `fc3`, `fc4`, so a
//! PyTorch `state_dict` saved as safetensors loads into an encoder and decoder built on
//! the same root [`VarBuilder`].

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::component::{Dims, Encoder};
use crate::distribution::DiagonalGaussian;
use crate::error::{Error, ensure, ensure_layer};
use crate::fused::linear as fused;
use crate::layers::{Activation, linear};
use crate::networks::architecture::Architecture;

/// The hidden layers `input → widths[0] → widths[1] → …`, named `fc{first}`,
/// `fc{first + 1}`, … under `vb`; with the width of the last one (`input` if there is none).
///
/// # Errors
/// If the parameters cannot be created or have another shape in `vb`'s store.
pub(crate) fn hidden_layers(
    input: usize,
    widths: &[usize],
    first: usize,
    vb: &VarBuilder,
) -> candle_core::Result<(Vec<Linear>, usize)> {
    let mut layers = Vec::with_capacity(widths.len());
    let mut width = input;
    for (i, &h) in widths.iter().enumerate() {
        layers.push(linear(width, h, vb.pp(format!("fc{}", first + i)))?);
        width = h;
    }
    Ok((layers, width))
}

/// `h` through `layers`, each followed by `activation` (the fused linear kernel where it
/// applies).
///
/// # Errors
/// If `h` does not fit the first layer.
pub(crate) fn through_hidden(
    mut h: Tensor,
    layers: &[Linear],
    activation: Activation,
) -> candle_core::Result<Tensor> {
    for layer in layers {
        h = fused::linear(&h, layer, Some(activation))?;
    }
    Ok(h)
}

/// Configuration of an [`MlpEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpEncoderConfig {
    /// Width of a flattened example (784 for MNIST), condition included.
    pub input_dim: usize,
    /// Widths of the hidden layers, in order (may be empty: a linear encoder).
    pub hidden: Vec<usize>,
    /// Width D of the latent code.
    pub latent_dim: usize,
    /// Non-linearity after each hidden layer.
    pub activation: Activation,
}

impl Default for MlpEncoderConfig {
    /// The pytorch/examples MNIST encoder: 784-400-(20, 20), ReLU.
    fn default() -> Self {
        Self::new(784, &[400], 20)
    }
}

impl MlpEncoderConfig {
    /// An encoder `input_dim → hidden… → (latent_dim, latent_dim)` with ReLU.
    pub fn new(input_dim: usize, hidden: &[usize], latent_dim: usize) -> Self {
        Self {
            input_dim,
            hidden: hidden.to_vec(),
            latent_dim,
            activation: Activation::Relu,
        }
    }

    /// Sets the non-linearity.
    #[must_use]
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Checks every rule; [`MlpEncoder::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first field that is zero.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.input_dim > 0,
            "MlpEncoderConfig",
            "input_dim",
            self.input_dim,
            "must be > 0",
        )?;
        ensure(
            self.latent_dim > 0,
            "MlpEncoderConfig",
            "latent_dim",
            self.latent_dim,
            "must be > 0",
        )?;
        ensure(
            self.hidden.iter().all(|&h| h > 0),
            "MlpEncoderConfig",
            "hidden",
            &self.hidden,
            "every hidden width must be > 0",
        )?;
        // Every layer's weight count, checked: input → hidden… → latent (two heads).
        let widths = std::iter::once(("input_dim", self.input_dim))
            .chain(self.hidden.iter().map(|&h| ("hidden", h)))
            .chain(std::iter::once(("latent_dim", self.latent_dim)))
            .collect::<Vec<_>>();
        for pair in widths.windows(2) {
            ensure_layer("MlpEncoderConfig", pair[0], pair[1])?;
        }
        Ok(())
    }
}

/// A fully connected Gaussian encoder: hidden layers with a non-linearity, then two
/// linear heads for μ and log σ².
#[derive(Debug, Clone)]
pub struct MlpEncoder {
    hidden: Vec<Linear>,
    mean: Linear,
    log_var: Linear,
    config: MlpEncoderConfig,
    /// Where its tensors live: the `VarBuilder` prefix it was built under.
    prefix: String,
}

impl MlpEncoder {
    /// Builds the encoder, creating or fetching its tensors under `vb` (names in the
    /// [module docs](self)).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule; candle's error if a tensor
    /// exists in `vb` with another shape.
    pub fn new(config: &MlpEncoderConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let (hidden, width) = hidden_layers(config.input_dim, &config.hidden, 1, &vb)?;
        let head = config.hidden.len() + 1;
        Ok(Self {
            mean: linear(width, config.latent_dim, vb.pp(format!("fc{head}1")))?,
            log_var: linear(width, config.latent_dim, vb.pp(format!("fc{head}2")))?,
            hidden,
            config: config.clone(),
            prefix: vb.prefix(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &MlpEncoderConfig {
        &self.config
    }
}

impl Encoder for MlpEncoder {
    type Posterior = DiagonalGaussian;

    /// # Shapes
    /// `xs`: `(N, input_dim)`, or `(N, …)` whose trailing axes hold `input_dim` elements
    /// (e.g. `(N, 1, 28, 28)`) → q(z|x) over `(N, latent_dim)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if an example does not hold `input_dim` elements.
    fn encode(&self, xs: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        let per_example: usize = xs.dims().iter().skip(1).product();
        if xs.rank() < 2 || per_example != self.config.input_dim {
            return Err(Error::shape(
                "MlpEncoder::encode",
                format!(
                    "(N, {}) or (N, …) with {} elements per example",
                    self.config.input_dim, self.config.input_dim
                ),
                xs.dims(),
            )
            .into());
        }
        let h = through_hidden(xs.flatten_from(1)?, &self.hidden, self.config.activation)?;
        DiagonalGaussian::new(
            fused::linear(&h, &self.mean, None)?,
            fused::linear(&h, &self.log_var, None)?,
        )
    }
}

impl Dims for MlpEncoder {
    fn latent_dim(&self) -> usize {
        self.config.latent_dim
    }

    fn data_shape(&self) -> Vec<usize> {
        vec![self.config.input_dim]
    }
}

/// Configuration of an [`MlpDecoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpDecoderConfig {
    /// Width of the decoder's input: the latent code (plus the condition, if any).
    pub latent_dim: usize,
    /// Widths of the hidden layers, in order.
    pub hidden: Vec<usize>,
    /// Width of a flattened example (784 for MNIST).
    pub output_dim: usize,
    /// Likelihood parameters per element (see
    /// [`Likelihood::params_per_element`](crate::Likelihood::params_per_element)); the last
    /// layer has `params_per_element · output_dim` outputs.
    pub params_per_element: usize,
    /// Non-linearity after each hidden layer.
    pub activation: Activation,
}

impl Default for MlpDecoderConfig {
    /// The pytorch/examples MNIST decoder: 20-400-784, ReLU, one parameter per pixel.
    fn default() -> Self {
        Self::new(20, &[400], 784)
    }
}

impl MlpDecoderConfig {
    /// A decoder `latent_dim → hidden… → output_dim` with ReLU and one parameter per
    /// element.
    pub fn new(latent_dim: usize, hidden: &[usize], output_dim: usize) -> Self {
        Self {
            latent_dim,
            hidden: hidden.to_vec(),
            output_dim,
            params_per_element: 1,
            activation: Activation::Relu,
        }
    }

    /// Sets the number of likelihood parameters per element (2 for a Gaussian with learned
    /// per-element variance).
    #[must_use]
    pub fn with_params_per_element(mut self, params_per_element: usize) -> Self {
        self.params_per_element = params_per_element;
        self
    }

    /// Sets the non-linearity.
    #[must_use]
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Checks every rule; [`MlpDecoder::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first field that breaks a rule.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.latent_dim > 0,
            "MlpDecoderConfig",
            "latent_dim",
            self.latent_dim,
            "must be > 0",
        )?;
        ensure(
            self.output_dim > 0,
            "MlpDecoderConfig",
            "output_dim",
            self.output_dim,
            "must be > 0",
        )?;
        ensure(
            self.params_per_element >= 1,
            "MlpDecoderConfig",
            "params_per_element",
            self.params_per_element,
            "must be ≥ 1 (one per parameter of the likelihood)",
        )?;
        ensure(
            self.hidden.iter().all(|&h| h > 0),
            "MlpDecoderConfig",
            "hidden",
            &self.hidden,
            "every hidden width must be > 0",
        )?;
        // Every layer's weight count, checked: latent → hidden… → output × parameters.
        let outputs = self
            .output_dim
            .checked_mul(self.params_per_element)
            .ok_or_else(|| {
                Error::config(
                    "MlpDecoderConfig",
                    "output_dim",
                    self.output_dim,
                    "too large: output_dim × params_per_element overflows usize",
                )
            })?;
        let widths = std::iter::once(("latent_dim", self.latent_dim))
            .chain(self.hidden.iter().map(|&h| ("hidden", h)))
            .chain(std::iter::once(("output_dim", outputs)))
            .collect::<Vec<_>>();
        for pair in widths.windows(2) {
            ensure_layer("MlpDecoderConfig", pair[0], pair[1])?;
        }
        Ok(())
    }
}

/// A fully connected decoder: hidden layers with a non-linearity, then a linear layer to
/// the likelihood's parameters (logits or means, no output non-linearity).
#[derive(Debug, Clone)]
pub struct MlpDecoder {
    hidden: Vec<Linear>,
    output: Linear,
    config: MlpDecoderConfig,
    /// Where its tensors live: the `VarBuilder` prefix it was built under.
    prefix: String,
}

impl MlpDecoder {
    /// Builds the decoder under `vb` (names in the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule; candle's error if a tensor
    /// exists in `vb` with another shape.
    pub fn new(config: &MlpDecoderConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let first = config.hidden.len() + 2;
        let (hidden, width) = hidden_layers(config.latent_dim, &config.hidden, first, &vb)?;
        let output = linear(
            width,
            config.params_per_element * config.output_dim,
            vb.pp(format!("fc{}", first + config.hidden.len())),
        )?;
        Ok(Self {
            hidden,
            output,
            config: config.clone(),
            prefix: vb.prefix(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &MlpDecoderConfig {
        &self.config
    }
}

impl Module for MlpDecoder {
    /// # Shapes
    /// `z`: `(N, latent_dim)` → `(N, params_per_element · output_dim)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `z` is not `(N, latent_dim)`.
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        if z.rank() != 2 || z.dim(1)? != self.config.latent_dim {
            return Err(Error::shape(
                "MlpDecoder::forward",
                format!("(N, {})", self.config.latent_dim),
                z.dims(),
            )
            .into());
        }
        let h = through_hidden(z.clone(), &self.hidden, self.config.activation)?;
        fused::linear(&h, &self.output, None)
    }
}

impl Dims for MlpDecoder {
    fn latent_dim(&self) -> usize {
        self.config.latent_dim
    }

    fn data_shape(&self) -> Vec<usize> {
        vec![self.config.params_per_element * self.config.output_dim]
    }
}

impl Architecture for MlpEncoder {
    type Spec = MlpEncoderConfig;
    const KIND: &'static str = "MlpEncoder";

    fn spec(&self) -> Self::Spec {
        self.config.clone()
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn build(spec: &Self::Spec, vb: VarBuilder) -> crate::Result<Self> {
        Self::new(spec, vb)
    }
}

impl Architecture for MlpDecoder {
    type Spec = MlpDecoderConfig;
    const KIND: &'static str = "MlpDecoder";

    fn spec(&self) -> Self::Spec {
        self.config.clone()
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn build(spec: &Self::Spec, vb: VarBuilder) -> crate::Result<Self> {
        Self::new(spec, vb)
    }
}
