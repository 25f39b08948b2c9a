//! Convolutional encoder and decoder for `(N, C, H, W)` images of any declared size.
//!
//! # Geometry
//! Each encoder stage is a 4×4 convolution with stride 2 and padding 1, which maps a side
//! of length s to ⌊s/2⌋: 28 → 14 → 7 → 3, 64 → 32 → 16 → 8 → 4. The decoder mirrors it
//! with 4×4 transposed convolutions (stride 2, padding 1), which map s to 2s; where the
//! encoder rounded an odd side down, the decoder adds an output padding of one and crops
//! the other side if only one was odd, so every stage lands on exactly the encoder's size.
//!
//! # Tensor names
//! Encoder: `conv1` … `convL`, `hidden` (optional), `mean`, `log_var`.
//! Decoder: `hidden` (optional), `project`, `deconvL` … `deconv1` (deconv i undoes conv i).

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::component::{Dims, Encoder};
use crate::distribution::DiagonalGaussian;
use crate::error::{Error, elements, ensure, ensure_layer};
use crate::fused;
use crate::layers::{Activation, conv_transpose2d, conv2d, linear};
use crate::networks::architecture::Architecture;
pub use crate::shape::ImageShape;

const KERNEL: usize = 4;

/// The spatial size after each stride-2 stage, starting with the input's.
fn stage_sizes(image: ImageShape, stages: usize) -> Vec<(usize, usize)> {
    let mut sizes = vec![(image.height, image.width)];
    for _ in 0..stages {
        let (h, w) = sizes[sizes.len() - 1];
        sizes.push((h / 2, w / 2));
    }
    sizes
}

fn validate_geometry(
    config: &'static str,
    image: ImageShape,
    channels: &[usize],
) -> crate::Result<()> {
    ensure(
        image.channels > 0,
        config,
        "image.channels",
        image.channels,
        "must be > 0",
    )?;
    ensure(
        !channels.is_empty(),
        config,
        "channels",
        channels,
        "needs at least one stage",
    )?;
    ensure(
        channels.iter().all(|&c| c > 0),
        config,
        "channels",
        channels,
        "every stage width must be > 0",
    )?;
    let sizes = stage_sizes(image, channels.len());
    let fits = sizes[..channels.len()]
        .iter()
        .all(|&(h, w)| h >= 2 && w >= 2);
    ensure(
        fits,
        config,
        "image",
        (image.height, image.width),
        "each stride-2 stage needs a side ≥ 2: use fewer stages or a larger image",
    )?;
    // Size products, checked: the image, every stage's feature map, every kernel.
    let mut in_channels = image.channels;
    let maps = std::iter::once((image.channels, sizes[0]))
        .chain(channels.iter().copied().zip(sizes[1..].iter().copied()));
    for (c, (h, w)) in maps {
        ensure(
            elements(&[c, h, w]).is_some(),
            config,
            "image",
            (image.channels, image.height, image.width),
            "too large: an image or feature map must hold at most 2^60 values",
        )?;
    }
    for &c in channels {
        ensure(
            elements(&[in_channels, c, KERNEL, KERNEL]).is_some(),
            config,
            "channels",
            channels,
            "too large: a kernel must hold at most 2^60 weights",
        )?;
        in_channels = c;
    }
    Ok(())
}

/// The width of the flattened last feature map (checked by [`validate_geometry`]).
fn flat_width(image: ImageShape, channels: &[usize]) -> (&'static str, usize) {
    let sizes = stage_sizes(image, channels.len());
    let (h, w) = sizes[channels.len()];
    let c = channels.last().copied().unwrap_or(image.channels);
    ("image", c.saturating_mul(h).saturating_mul(w))
}

/// Pads the even side of a `(N, C, H, W)` map with one zero row (bottom) or column (right)
/// when H and W differ in parity; otherwise returns it as it is.
///
/// candle 0.11's conv2d backward takes the output padding of its transposed convolution
/// from the height alone and applies it to the width too, so an input such as 3×2 fails
/// in `backward` with a shape mismatch. The extra zeros do not change the output: with
/// kernel 4, stride 2 and padding 1 the last window of an even side ends on the zero
/// padding's position, which the new zero row/column now occupies.
fn match_parity(h: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, height, width) = h.dims4()?;
    match (height % 2, width % 2) {
        (1, 0) => h.pad_with_zeros(3, 0, 1),
        (0, 1) => h.pad_with_zeros(2, 0, 1),
        _ => Ok(h.clone()),
    }
}

/// Configuration of a [`ConvEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvEncoderConfig {
    /// Shape of an input image, condition channels included.
    pub image: ImageShape,
    /// Output channels of each stride-2 stage, from the image inwards (e.g. `[32, 64]`).
    pub channels: Vec<usize>,
    /// Width of an optional fully connected layer between the last stage and the heads.
    pub hidden: Option<usize>,
    /// Width D of the latent code.
    pub latent_dim: usize,
    /// Non-linearity after every stage and the hidden layer.
    pub activation: Activation,
}

impl ConvEncoderConfig {
    /// An encoder for `image` with the given stage widths, no hidden layer, ReLU.
    pub fn new(image: ImageShape, channels: &[usize], latent_dim: usize) -> Self {
        Self {
            image,
            channels: channels.to_vec(),
            hidden: None,
            latent_dim,
            activation: Activation::Relu,
        }
    }

    /// Adds a fully connected layer of `width` before the heads.
    #[must_use]
    pub fn with_hidden(mut self, width: usize) -> Self {
        self.hidden = Some(width);
        self
    }

    /// Sets the non-linearity.
    #[must_use]
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// The spatial sizes `(h, w)` from the input through every stage.
    pub fn stage_sizes(&self) -> Vec<(usize, usize)> {
        stage_sizes(self.image, self.channels.len())
    }

    /// Checks every rule; [`ConvEncoder::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        validate_geometry("ConvEncoderConfig", self.image, &self.channels)?;
        ensure(
            self.latent_dim > 0,
            "ConvEncoderConfig",
            "latent_dim",
            self.latent_dim,
            "must be > 0",
        )?;
        ensure(
            self.hidden != Some(0),
            "ConvEncoderConfig",
            "hidden",
            self.hidden,
            "must be > 0 when set",
        )?;
        // The flattened map → hidden → heads, checked.
        let flat = flat_width(self.image, &self.channels);
        let latent = ("latent_dim", self.latent_dim);
        match self.hidden {
            Some(hidden) => {
                ensure_layer("ConvEncoderConfig", flat, ("hidden", hidden))?;
                ensure_layer("ConvEncoderConfig", ("hidden", hidden), latent)
            }
            None => ensure_layer("ConvEncoderConfig", flat, latent),
        }
    }
}

/// A convolutional Gaussian encoder: stride-2 convolutions, flatten, an optional hidden
/// layer, then linear heads for μ and log σ².
#[derive(Debug, Clone)]
pub struct ConvEncoder {
    convs: Vec<Conv2d>,
    hidden: Option<Linear>,
    mean: Linear,
    log_var: Linear,
    config: ConvEncoderConfig,
    /// Where its tensors live: the `VarBuilder` prefix it was built under.
    prefix: String,
}

impl ConvEncoder {
    /// Builds the encoder under `vb` (names in the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule.
    pub fn new(config: &ConvEncoderConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let conv_config = Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let mut convs = Vec::with_capacity(config.channels.len());
        let mut in_channels = config.image.channels;
        for (i, &out_channels) in config.channels.iter().enumerate() {
            convs.push(conv2d(
                in_channels,
                out_channels,
                KERNEL,
                conv_config,
                vb.pp(format!("conv{}", i + 1)),
            )?);
            in_channels = out_channels;
        }
        let (h, w) = config.stage_sizes()[config.channels.len()];
        let mut width = in_channels * h * w;
        let hidden = match config.hidden {
            Some(units) => {
                let layer = linear(width, units, vb.pp("hidden"))?;
                width = units;
                Some(layer)
            }
            None => None,
        };
        Ok(Self {
            convs,
            hidden,
            mean: linear(width, config.latent_dim, vb.pp("mean"))?,
            log_var: linear(width, config.latent_dim, vb.pp("log_var"))?,
            config: config.clone(),
            prefix: vb.prefix(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ConvEncoderConfig {
        &self.config
    }
}

impl Encoder for ConvEncoder {
    type Posterior = DiagonalGaussian;

    /// # Shapes
    /// `xs`: `(N, C, H, W)` as declared → q(z|x) over `(N, latent_dim)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `xs` is not `(N, C, H, W)`.
    fn encode(&self, xs: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        self.config.image.check_batch("ConvEncoder::encode", xs)?;
        let mut h = xs.clone();
        for conv in &self.convs {
            h = fused::conv2d_activated(&match_parity(&h)?, conv, self.config.activation)?;
        }
        let mut h = h.flatten_from(1)?;
        if let Some(hidden) = &self.hidden {
            h = fused::linear::linear(&h, hidden, Some(self.config.activation))?;
        }
        DiagonalGaussian::new(
            fused::linear::linear(&h, &self.mean, None)?,
            fused::linear::linear(&h, &self.log_var, None)?,
        )
    }
}

impl Dims for ConvEncoder {
    fn latent_dim(&self) -> usize {
        self.config.latent_dim
    }

    fn data_shape(&self) -> Vec<usize> {
        let image = self.config.image;
        vec![image.channels, image.height, image.width]
    }
}

/// Configuration of a [`ConvDecoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvDecoderConfig {
    /// Width of the decoder's input: the latent code (plus the condition, if any).
    pub latent_dim: usize,
    /// Shape of an output image (data channels, without likelihood parameters).
    pub image: ImageShape,
    /// Channels of the mirrored encoder's stages, from the image inwards (the same list
    /// as [`ConvEncoderConfig::channels`]).
    pub channels: Vec<usize>,
    /// Width of an optional fully connected layer after z.
    pub hidden: Option<usize>,
    /// Likelihood parameters per element: the last layer has
    /// `params_per_element · image.channels` channels.
    pub params_per_element: usize,
    /// Non-linearity after every layer but the last.
    pub activation: Activation,
}

impl ConvDecoderConfig {
    /// A decoder mirroring a [`ConvEncoderConfig`] with these stage widths, one parameter
    /// per element, ReLU.
    pub fn new(latent_dim: usize, image: ImageShape, channels: &[usize]) -> Self {
        Self {
            latent_dim,
            image,
            channels: channels.to_vec(),
            hidden: None,
            params_per_element: 1,
            activation: Activation::Relu,
        }
    }

    /// Adds a fully connected layer of `width` after z.
    #[must_use]
    pub fn with_hidden(mut self, width: usize) -> Self {
        self.hidden = Some(width);
        self
    }

    /// Sets the number of likelihood parameters per element.
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

    /// Checks every rule; [`ConvDecoder::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        validate_geometry("ConvDecoderConfig", self.image, &self.channels)?;
        ensure(
            self.latent_dim > 0,
            "ConvDecoderConfig",
            "latent_dim",
            self.latent_dim,
            "must be > 0",
        )?;
        ensure(
            self.hidden != Some(0),
            "ConvDecoderConfig",
            "hidden",
            self.hidden,
            "must be > 0 when set",
        )?;
        ensure(
            self.params_per_element >= 1,
            "ConvDecoderConfig",
            "params_per_element",
            self.params_per_element,
            "must be ≥ 1 (one per parameter of the likelihood)",
        )?;
        // z → hidden → the projection onto the last feature map, checked.
        let flat = flat_width(self.image, &self.channels);
        let latent = ("latent_dim", self.latent_dim);
        match self.hidden {
            Some(hidden) => {
                ensure_layer("ConvDecoderConfig", latent, ("hidden", hidden))?;
                ensure_layer("ConvDecoderConfig", ("hidden", hidden), flat)
            }
            None => ensure_layer("ConvDecoderConfig", latent, flat),
        }
    }
}

/// One upsampling stage: a transposed convolution and the size it must land on.
#[derive(Debug, Clone)]
struct UpStage {
    deconv: ConvTranspose2d,
    target: (usize, usize),
}

/// A convolutional decoder mirroring [`ConvEncoder`]: a linear projection to the last
/// stage's feature map, then stride-2 transposed convolutions back to the image size.
#[derive(Debug, Clone)]
pub struct ConvDecoder {
    hidden: Option<Linear>,
    project: Linear,
    stages: Vec<UpStage>,
    config: ConvDecoderConfig,
    /// Where its tensors live: the `VarBuilder` prefix it was built under.
    prefix: String,
}

impl ConvDecoder {
    /// Builds the decoder under `vb` (names in the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule.
    pub fn new(config: &ConvDecoderConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let stages = config.channels.len();
        let sizes = stage_sizes(config.image, stages);
        let mut width = config.latent_dim;
        let hidden = match config.hidden {
            Some(units) => {
                let layer = linear(width, units, vb.pp("hidden"))?;
                width = units;
                Some(layer)
            }
            None => None,
        };
        let (h, w) = sizes[stages];
        let project = linear(width, config.channels[stages - 1] * h * w, vb.pp("project"))?;
        let mut up = Vec::with_capacity(stages);
        for i in (1..=stages).rev() {
            let in_channels = config.channels[i - 1];
            let out_channels = if i == 1 {
                config.params_per_element * config.image.channels
            } else {
                config.channels[i - 2]
            };
            let (from, target) = (sizes[i], sizes[i - 1]);
            let output_padding = (target.0 - 2 * from.0).max(target.1 - 2 * from.1);
            let deconv_config = ConvTranspose2dConfig {
                padding: 1,
                output_padding,
                stride: 2,
                dilation: 1,
            };
            let deconv = conv_transpose2d(
                in_channels,
                out_channels,
                KERNEL,
                deconv_config,
                vb.pp(format!("deconv{i}")),
            )?;
            up.push(UpStage { deconv, target });
        }
        Ok(Self {
            hidden,
            project,
            stages: up,
            config: config.clone(),
            prefix: vb.prefix(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ConvDecoderConfig {
        &self.config
    }
}

impl Module for ConvDecoder {
    /// # Shapes
    /// `z`: `(N, latent_dim)` → `(N, params_per_element · C, H, W)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `z` is not `(N, latent_dim)`.
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        if z.rank() != 2 || z.dim(1)? != self.config.latent_dim {
            return Err(Error::shape(
                "ConvDecoder::forward",
                format!("(N, {})", self.config.latent_dim),
                z.dims(),
            )
            .into());
        }
        let activation = self.config.activation;
        let mut h = z.clone();
        if let Some(hidden) = &self.hidden {
            h = fused::linear::linear(&h, hidden, Some(activation))?;
        }
        let stages = self.config.channels.len();
        let (fh, fw) = stage_sizes(self.config.image, stages)[stages];
        h = fused::linear::linear(&h, &self.project, Some(activation))?.reshape((
            z.dim(0)?,
            self.config.channels[stages - 1],
            fh,
            fw,
        ))?;
        let last = self.stages.len() - 1;
        for (i, stage) in self.stages.iter().enumerate() {
            // The activation before the crop: element-wise, it commutes with cropping, and
            // so it can run inside the fused kernel.
            h = if i == last {
                fused::conv_transpose2d(&h, &stage.deconv)?
            } else {
                fused::conv_transpose2d_activated(&h, &stage.deconv, activation)?
            };
            let (th, tw) = stage.target;
            if h.dim(2)? != th || h.dim(3)? != tw {
                h = h.narrow(2, 0, th)?.narrow(3, 0, tw)?;
            }
        }
        Ok(h)
    }
}

impl Dims for ConvDecoder {
    fn latent_dim(&self) -> usize {
        self.config.latent_dim
    }

    fn data_shape(&self) -> Vec<usize> {
        let image = self.config.image;
        vec![
            self.config.params_per_element * image.channels,
            image.height,
            image.width,
        ]
    }
}

impl Architecture for ConvEncoder {
    type Spec = ConvEncoderConfig;
    const KIND: &'static str = "ConvEncoder";

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

impl Architecture for ConvDecoder {
    type Spec = ConvDecoderConfig;
    const KIND: &'static str = "ConvDecoder";

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
