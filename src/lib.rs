//! # candle-vae
//!
//! Variational auto-encoders on [candle](https://github.com/huggingface/candle): the parts
//! of a VAE as small, composable types, the math written out and tested, and the
//! estimators needed to report honest numbers.
//!
//! * [`Encoder`]/[`EncoderT`]: x → q(z|x), any [`Reparameterize`] family: a
//!   [`DiagonalGaussian`] ([`MlpEncoder`], [`ConvEncoder`]) or a planar-flow
//!   [`FlowPosterior`] ([`FlowEncoder`]).
//! * [`Decoder`]: z → parameters of p(x|z) — any candle `Module` ([`MlpDecoder`],
//!   [`ConvDecoder`]).
//! * [`Likelihood`] (a trait): [`StandardLikelihood`] (Bernoulli, continuous Bernoulli,
//!   Gaussian with fixed or learned σ), [`Poisson`], [`NegativeBinomial`],
//!   [`ZeroInflatedNegativeBinomial`], [`DiscretizedLogistic`].
//! * [`Prior`] (a trait): [`StandardNormal`], [`GaussianPrior`], [`MixturePrior`],
//!   [`VampPrior`].
//! * [`Reparameterize::rsample`]: the reparameterization z = g(ε) with ε from a seeded
//!   [`NoiseSource`], and its deterministic twin `rsample_with(ε)`.
//! * [`Vae`] and [`ConditionalVae`] compose them; [`ElboLoss`] scores a pass (β, free bits,
//!   KL warm-up); [`estimate`] has the IWAE bound, the importance-sampled log-likelihood and
//!   active units.
//! * Discrete latents ([`discrete`]): [`VectorQuantizer`] and [`VqVae`] (VQ-VAE, with the
//!   EMA codebook), and the Gumbel-softmax [`RelaxedCategorical`] posterior with the
//!   [`UniformCategorical`] prior.
//! * [`ParamStore`] initialises parameters from a seed; [`Adam`] matches PyTorch;
//!   [`Checkpoint`] saves both to safetensors atomically. Checkpoints and resume also take
//!   candle's `VarMap` ([`Parameters`]) and any optimiser with state ([`OptimizerState`]);
//!   training takes any `candle_nn::Optimizer`.
//!
//! ## Quickstart
//!
//! An MNIST-sized VAE (the pytorch/examples model) and one training step:
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_vae::{
//!     Adam, AdamConfig, ElboLoss, ElboLossConfig, MlpDecoder, MlpDecoderConfig, MlpEncoder,
//!     MlpEncoderConfig, NoiseSource, ParamStore, StandardLikelihood, Vae,
//! };
//!
//! let device = Device::Cpu;
//! let params = ParamStore::new(42);
//! let vb = params.var_builder(DType::F32, &device);
//! let enc = MlpEncoder::new(&MlpEncoderConfig::new(784, &[400], 20), vb.pp("enc"))?;
//! let dec = MlpDecoder::new(&MlpDecoderConfig::new(20, &[400], 784), vb.pp("dec"))?;
//! let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
//! let loss = ElboLoss::new(ElboLossConfig::default().with_beta(1.0))?;
//! let mut opt = Adam::from_store(&params, AdamConfig::new(1e-3))?;
//! let mut noise = NoiseSource::new(7);
//!
//! let xs = noise.uniform((128, 784), DType::F32, &device)?; // a batch of "images" in [0, 1]
//! let out = vae.forward_t(&xs, &mut noise, true)?; // posterior, z, decoder parameters
//! let elbo = loss.forward(&out, &xs)?; // loss, reconstruction, kl, kl per dim
//! opt.backward_step(&elbo.loss)?;
//! println!("-ELBO {:.2} nats", elbo.loss.to_scalar::<f32>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Features
//! `cuda`, `cudnn`, `metal`, `mkl`, `accelerate` forward to candle's features of the same
//! name; [`best_device`] picks a GPU when one is compiled in and present. `avx512` (on by
//! default) switches on the AVX-512 kernels of candle's `gemm` and of the [`fused`]
//! kernels, chosen at run time on CPUs that have them.
//!
//! ## Speed
//! On the CPU, training and evaluation go through the [`fused`] kernels (Adam, the ELBO,
//! linear layers) wherever they apply, with the same results as plain candle ops up to
//! rounding; `docs/PERFORMANCE.md` has the measurements against PyTorch.

#![deny(missing_docs)]
// Denied everywhere but in `fused::gemm`, which calls the `gemm` crate (see its docs).
#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc = include_str!("../docs/ARCHITECTURE.md")]
pub mod architecture {}
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
#[doc = include_str!("../docs/RELIABILITY.md")]
pub mod reliability {}

// The layers, from the bottom up (docs/ARCHITECTURE.md has the dependency graph).
pub mod device;
pub mod error;
pub mod noise;
pub mod ops;
pub mod shape;

pub mod fused;

pub mod probability;

pub mod networks;

pub mod vae;

pub mod discrete;

pub mod objective;

pub mod train;

pub mod data;
#[cfg(feature = "viz")]
#[cfg_attr(docsrs, doc(cfg(feature = "viz")))]
pub mod viz;

// The modules' public paths from before the layer folders, kept stable.
pub use networks::{conv, layers, mlp};
pub use objective::{estimate, loss};
pub use probability::{component, distribution, flow, likelihood, prior, reparameterize};
pub use train::{checkpoint, finite, optim, params};

pub use checkpoint::Checkpoint;
pub use component::{Decoder, Dims, Encoder, EncoderT};
pub use conv::{ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig};
pub use device::{best_device, parse_device};
pub use discrete::{
    CategoricalEncoder, CategoricalEncoderConfig, CodebookUpdate, DeadCodes, GumbelEstimator,
    Quantized, RelaxedCategorical, TemperatureSchedule, UniformCategorical, VectorQuantizer,
    VectorQuantizerConfig, VqConvConfig, VqDecoder, VqEncoder, VqVae, VqVaeLoss, VqVaeOutput,
};
pub use distribution::DiagonalGaussian;
pub use error::{Error, IdxProblem, MAX_ELEMENTS, NonFinitePart, Result};
pub use estimate::{ActiveUnits, ImportanceSamplingConfig};
pub use flow::{FlowEncoder, FlowPosterior, PlanarFlow, PlanarFlowConfig};
pub use likelihood::{
    DiscretizedLogistic, Dispersion, GaussianMean, GaussianVariance, Likelihood, NegativeBinomial,
    Poisson, StandardLikelihood, ZeroInflatedNegativeBinomial,
};
pub use loss::{Elbo, ElboLoss, ElboLossConfig, KlEstimator, KlSchedule, Reduction};
pub use mlp::{MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig};
pub use networks::architecture::Architecture;
pub use noise::{NoiseSource, NoiseState};
pub use ops::Activation;
pub use optim::{Adam, AdamConfig, OptimizerState, WeightDecay};
pub use params::{ParamStore, Parameters};
pub use prior::{
    GaussianPrior, MixturePrior, MixturePriorConfig, Prior, StandardNormal, VampPrior,
    VampPriorConfig,
};
pub use reparameterize::Reparameterize;
pub use shape::ImageShape;
pub use vae::{ConditionalVae, Vae, VaeOutput};
