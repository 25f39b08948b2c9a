//! The reusable parts of a training loop: an objective, one epoch of training, an
//! evaluation pass, the importance-sampled likelihood over a dataset, and the state a
//! checkpoint needs so that a resumed run repeats the uninterrupted one exactly.
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_vae::data::{DataLoader, DataLoaderConfig, ImageDataset, Order};
//! use candle_vae::train::{Objective, TrainingState, evaluate, train_epoch};
//! use candle_vae::*;
//!
//! let device = Device::Cpu;
//! let pixels: Vec<u8> = (0..40 * 16).map(|i| (i * 37 % 256) as u8).collect();
//! let data = ImageDataset::new(pixels, 4, 4, None)?;
//! let train = DataLoader::new(data.clone(), DataLoaderConfig::new(8))?;
//! let test = DataLoader::new(data, DataLoaderConfig::new(8).with_order(Order::Sequential))?;
//!
//! let params = ParamStore::new(1);
//! let vb = params.var_builder(DType::F32, &device);
//! let enc = MlpEncoder::new(&MlpEncoderConfig::new(16, &[8], 2), vb.pp("enc"))?;
//! let dec = MlpDecoder::new(&MlpDecoderConfig::new(2, &[8], 16), vb.pp("dec"))?;
//! let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
//! let mut adam = Adam::from_store(&params, AdamConfig::new(1e-2))?;
//! let objective = Objective::Elbo(ElboLoss::new(ElboLossConfig::default())?);
//! let mut state = TrainingState::new(7);
//!
//! let summary = train_epoch(&vae, &mut adam, &objective, &train, &mut state, &device, |_, _| {})?;
//! let eval = evaluate(&vae, &test, &mut NoiseSource::new(0), &device, |_| {})?;
//! assert_eq!((summary.examples, eval.examples, state.step), (40, 40, 5));
//! # Ok::<(), candle_vae::Error>(())
//! ```
//!
//! # The training layer
//! * [`params`]: where the parameters live ([`ParamStore`](crate::ParamStore), seeded, or
//!   candle's `VarMap`) behind the [`Parameters`](crate::Parameters) trait.
//! * [`optim`]: the crate's [`Adam`](crate::Adam) and the [`OptimizerState`](crate::OptimizerState)
//!   trait through which any optimiser's state reaches a checkpoint.
//! * [`checkpoint`]: atomic safetensors files of parameters, optimiser state and metadata.
//! * [`model_file`]: model-only files that PyTorch loads strictly, and
//!   [`Vae::from_checkpoint`](crate::Vae::from_checkpoint), which rebuilds a VAE of the
//!   crate's networks from the file alone.
//! * [`finite`]: the guard that stops a diverging run before a step is taken.
//! * [`Trainer`]: the whole loop — epochs, evaluation, a checkpoint and the history after
//!   each epoch, resume, a learning-rate schedule, and [`TrainerHooks`] for progress and
//!   pictures — for any model, any `Parameters` and any optimiser with state.
//! * This module: one epoch ([`train_epoch`]), evaluation ([`evaluate`]), the
//!   importance-sampled likelihood ([`importance_sampled`]) and the resumable
//!   [`TrainingState`].

pub mod checkpoint;
mod epoch;
pub mod finite;
pub mod model_file;
pub mod optim;
pub mod params;
mod trainer;

pub use epoch::{
    BatchModel, CONFIG_KEY, EpochRecord, EpochSummary, Evaluation, LikelihoodEstimate, Objective,
    STATE_KEY, TrainingState, evaluate, importance_sampled, train_epoch,
};
pub use trainer::{
    EVALUATION_STREAM, LearningRateSchedule, TEST_STREAM, Trainer, TrainerConfig, TrainerHooks,
    history_csv,
};
