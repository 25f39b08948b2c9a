//! VQ-VAE (van den Oord et al. 2017): a convolutional encoder to a grid of D-vectors, the
//! [`VectorQuantizer`], a convolutional decoder, and any [`Likelihood`].

use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, VarBuilder};

use crate::component::Decoder;
use crate::discrete::quantizer::{Quantized, VectorQuantizer};
use crate::error::{Error, ensure};
use crate::fused;
use crate::layers::{conv_transpose2d, conv2d};
use crate::likelihood::Likelihood;
use crate::noise::NoiseSource;
use crate::ops::Activation;
use crate::shape::ImageShape;

/// Configuration of a [`VqEncoder`] and of the [`VqDecoder`] that mirrors it.
#[derive(Debug, Clone, PartialEq)]
pub struct VqConvConfig {
    /// The images.
    pub image: ImageShape,
    /// Channels of each stride-2 stage (at least one); the latent grid is
    /// (H / 2^L, W / 2^L).
    pub channels: Vec<usize>,
    /// D, the width of the latent vectors (the codebook's `dim`).
    pub dim: usize,
    /// Likelihood parameters per data element the decoder produces (1 for Bernoulli).
    pub params_per_element: usize,
    /// Activation between layers.
    pub activation: Activation,
}

impl VqConvConfig {
    /// Stages of `channels` down to a grid of D-vectors; one parameter per element, ReLU.
    pub fn new(image: ImageShape, channels: &[usize], dim: usize) -> Self {
        Self {
            image,
            channels: channels.to_vec(),
            dim,
            params_per_element: 1,
            activation: Activation::Relu,
        }
    }

    /// Sets the likelihood parameters per element.
    #[must_use]
    pub fn with_params_per_element(mut self, params_per_element: usize) -> Self {
        self.params_per_element = params_per_element;
        self
    }

    /// Checks every rule.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        const C: &str = "VqConvConfig";
        ensure(
            self.image.channels > 0,
            C,
            "image.channels",
            self.image.channels,
            "must be > 0",
        )?;
        ensure(
            !self.channels.is_empty() && self.channels.len() < 16,
            C,
            "channels",
            &self.channels,
            "needs 1 to 15 stages",
        )?;
        ensure(
            self.channels.iter().all(|&c| c > 0),
            C,
            "channels",
            &self.channels,
            "every stage width must be > 0",
        )?;
        ensure(self.dim > 0, C, "dim", self.dim, "must be > 0")?;
        ensure(
            self.params_per_element > 0,
            C,
            "params_per_element",
            self.params_per_element,
            "must be > 0",
        )?;
        let scale = 1usize << self.channels.len();
        ensure(
            self.image.height % scale == 0
                && self.image.width % scale == 0
                && self.image.height > 0
                && self.image.width > 0,
            C,
            "image",
            (self.image.height, self.image.width),
            "each side must be a positive multiple of 2^stages",
        )
    }

    /// The latent grid (H / 2^L, W / 2^L).
    pub fn grid(&self) -> (usize, usize) {
        let scale = 1usize << self.channels.len().min(15);
        (self.image.height / scale, self.image.width / scale)
    }
}

fn down() -> Conv2dConfig {
    Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    }
}

fn up() -> ConvTranspose2dConfig {
    ConvTranspose2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    }
}

/// The VQ-VAE encoder: 4×4 stride-2 convolutions (`conv1` … `convL`, each followed by the
/// activation), then a 1×1 convolution `project` to D channels, with no activation: z_e.
///
/// # Shapes
/// `(N, C, H, W)` → `(N, D, H / 2^L, W / 2^L)`.
#[derive(Debug, Clone)]
pub struct VqEncoder {
    convs: Vec<Conv2d>,
    project: Conv2d,
    config: VqConvConfig,
}

impl VqEncoder {
    /// The encoder for `config`, its parameters created under `vb`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config; candle's for the parameters.
    pub fn new(config: &VqConvConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let mut convs = Vec::with_capacity(config.channels.len());
        let mut c_in = config.image.channels;
        for (i, &c) in config.channels.iter().enumerate() {
            convs.push(conv2d(c_in, c, 4, down(), vb.pp(format!("conv{}", i + 1)))?);
            c_in = c;
        }
        let project = conv2d(
            c_in,
            config.dim,
            1,
            Conv2dConfig::default(),
            vb.pp("project"),
        )?;
        Ok(Self {
            convs,
            project,
            config: config.clone(),
        })
    }
}

impl Module for VqEncoder {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.config.image.check_batch("VqEncoder::forward", xs)?;
        let mut h = xs.clone();
        for conv in &self.convs {
            h = fused::conv2d_activated(&h, conv, self.config.activation)?;
        }
        fused::conv2d(&h, &self.project)
    }
}

/// The VQ-VAE decoder, the encoder's mirror: a 1×1 convolution `expand` from D channels,
/// the activation, then 4×4 stride-2 transposed convolutions `deconvL` … `deconv1` (the
/// activation between them, none after the last), to the likelihood's raw parameters.
///
/// # Shapes
/// `(N, D, H / 2^L, W / 2^L)` → `(N, P·C, H, W)`.
#[derive(Debug, Clone)]
pub struct VqDecoder {
    expand: Conv2d,
    deconvs: Vec<ConvTranspose2d>,
    config: VqConvConfig,
}

impl VqDecoder {
    /// The decoder for `config`, its parameters created under `vb`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config; candle's for the parameters.
    pub fn new(config: &VqConvConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let stages = config.channels.len();
        let last = config.channels[stages - 1];
        let expand = conv2d(
            config.dim,
            last,
            1,
            Conv2dConfig::default(),
            vb.pp("expand"),
        )?;
        let mut deconvs = Vec::with_capacity(stages);
        for i in (0..stages).rev() {
            let c_out = if i == 0 {
                config.image.channels * config.params_per_element
            } else {
                config.channels[i - 1]
            };
            deconvs.push(conv_transpose2d(
                config.channels[i],
                c_out,
                4,
                up(),
                vb.pp(format!("deconv{}", i + 1)),
            )?);
        }
        Ok(Self {
            expand,
            deconvs,
            config: config.clone(),
        })
    }
}

impl Module for VqDecoder {
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let (h, w) = self.config.grid();
        if z.rank() != 4 || z.dims()[1..] != [self.config.dim, h, w] {
            return Err(Error::shape(
                "VqDecoder::forward",
                format!("(N, {}, {h}, {w})", self.config.dim),
                z.dims(),
            )
            .into());
        }
        let activation = self.config.activation;
        let mut x = fused::conv2d_activated(z, &self.expand, activation)?;
        let last = self.deconvs.len().saturating_sub(1);
        for (i, deconv) in self.deconvs.iter().enumerate() {
            x = if i < last {
                fused::conv_transpose2d_activated(&x, deconv, activation)?
            } else {
                fused::conv_transpose2d(&x, deconv)?
            };
        }
        Ok(x)
    }
}

/// A VQ-VAE: encoder x → z_e, the [`VectorQuantizer`] z_e → z_q (straight-through),
/// decoder z_q → parameters of p(x|z_q) under any [`Likelihood`].
///
/// The objective (van den Oord et al. 2017, eq. 3) per example is
///
/// L = −log p(x | z_q(x)) + ‖sg(z_e) − e‖² + β ‖z_e − sg(e)‖²
///
/// (the codebook term only with the gradient codebook update): [`VqVaeOutput::loss`].
/// With a uniform prior over the K codes at each of the L latent positions, the KL term
/// of the ELBO is the constant L·ln K and is left out, as in the paper.
///
/// A training step is `forward_t`, `loss`, the optimiser step, then
/// [`VectorQuantizer::update`] for the EMA codebook and dead-code restarts
/// ([`VqVae::update`]).
#[derive(Debug, Clone)]
pub struct VqVae<E, Dec, L> {
    encoder: E,
    quantizer: VectorQuantizer,
    decoder: Dec,
    likelihood: L,
}

/// One forward pass of a [`VqVae`].
#[derive(Debug, Clone)]
pub struct VqVaeOutput<'m, L> {
    /// The encoder output z_e, `(N, D, …)`.
    pub z_e: Tensor,
    /// The quantiser's output (z_q, codes, losses, counts).
    pub quantized: Quantized,
    /// The decoder's likelihood parameters, in the data layout `(N, P·C, …)`.
    pub params: Tensor,
    /// The likelihood that scores them.
    pub likelihood: &'m L,
}

/// The VQ-VAE objective for a batch, each term the mean over the batch of its
/// per-example value.
#[derive(Debug, Clone)]
pub struct VqVaeLoss {
    /// What to minimise: reconstruction + the quantiser's loss, mean over the batch.
    pub loss: Tensor,
    /// −log p(x | z_q), mean over the batch (nats per example).
    pub reconstruction: Tensor,
    /// ‖sg(z_e) − e‖², mean over the batch (reported for both codebook updates).
    pub codebook: Tensor,
    /// ‖z_e − sg(e)‖² before β, mean over the batch.
    pub commitment: Tensor,
    /// −log p(x | z_q) per example, `(N,)`.
    pub reconstruction_per_example: Tensor,
}

impl<L: Likelihood> VqVaeOutput<'_, L> {
    /// The objective of this pass on `xs`.
    ///
    /// # Shapes
    /// `xs`: the batch `(N, C, H, W)` the pass was computed from.
    ///
    /// # Errors
    /// If `xs` is not that batch.
    pub fn loss(&self, xs: &Tensor) -> candle_core::Result<VqVaeLoss> {
        let rec = self.likelihood.log_prob(xs, &self.params)?.neg()?;
        let loss = (&rec + &self.quantized.loss)?.mean_all()?;
        Ok(VqVaeLoss {
            loss,
            reconstruction: rec.mean_all()?,
            codebook: self.quantized.codebook_loss.mean_all()?,
            commitment: self.quantized.commitment_loss.mean_all()?,
            reconstruction_per_example: rec,
        })
    }

    /// E[x | z_q], the reconstruction, `(N, C, H, W)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn mean(&self) -> candle_core::Result<Tensor> {
        self.likelihood.mean(&self.params, 1)
    }
}

impl<E: ModuleT, Dec: Decoder, L: Likelihood> VqVae<E, Dec, L> {
    /// Composes the parts. Widths are checked at the first batch (candle's errors, and the
    /// quantiser's [`Error::Shape`] if the encoder's channels are not the codebook's D).
    pub fn new(encoder: E, quantizer: VectorQuantizer, decoder: Dec, likelihood: L) -> Self {
        Self {
            encoder,
            quantizer,
            decoder,
            likelihood,
        }
    }

    /// The quantiser.
    pub fn quantizer(&self) -> &VectorQuantizer {
        &self.quantizer
    }

    /// The likelihood.
    pub fn likelihood(&self) -> &L {
        &self.likelihood
    }

    /// Encode, quantise, decode.
    ///
    /// # Shapes
    /// `xs`: `(N, C, H, W)` (or whatever the encoder takes).
    ///
    /// # Errors
    /// If `xs` does not fit the encoder, or the parts do not fit each other.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<VqVaeOutput<'_, L>> {
        let z_e = self.encoder.forward_t(xs, train)?;
        let quantized = self.quantizer.quantize(&z_e)?;
        let params = self.decoder.forward_t(&quantized.z_q, train)?;
        Ok(VqVaeOutput {
            z_e,
            quantized,
            params,
            likelihood: &self.likelihood,
        })
    }

    /// E[x | z_q(x)] in evaluation mode.
    ///
    /// # Errors
    /// As [`forward_t`](Self::forward_t).
    pub fn reconstruct(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(xs, false)?.mean()
    }

    /// The images a grid of codes stands for: E[x | z_q = e_codes].
    ///
    /// # Shapes
    /// `codes`: `(N, h, w)` (or `(N,)` for a vector latent) → the decoder's mean.
    ///
    /// # Errors
    /// If an index is ≥ K or the grid does not fit the decoder.
    pub fn decode_codes(&self, codes: &Tensor) -> candle_core::Result<Tensor> {
        let z = self.quantizer.embed(codes)?;
        self.likelihood.mean(&self.decoder.forward_t(&z, false)?, 1)
    }

    /// The quantiser's training-time update after an optimiser step on `out`
    /// ([`VectorQuantizer::update`]).
    ///
    /// # Errors
    /// As [`VectorQuantizer::update`].
    pub fn update(
        &self,
        out: &VqVaeOutput<'_, L>,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<()> {
        self.quantizer.update(&out.quantized, noise)
    }
}
