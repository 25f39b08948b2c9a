//! A training loop for any model and any optimiser: epochs, an evaluation on the test set
//! after each, an atomic checkpoint after each, resume, a history CSV, a learning-rate
//! schedule, and hooks for progress bars, logging and pictures.
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_vae::data::{DataLoader, DataLoaderConfig, ImageDataset, Order};
//! use candle_vae::train::{Objective, Trainer, TrainerConfig};
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
//! let adam = Adam::from_store(&params, AdamConfig::new(1e-2))?;
//! let objective = Objective::Elbo(ElboLoss::new(ElboLossConfig::default())?);
//!
//! let dir = tempfile::tempdir()?;
//! let config = TrainerConfig::new(3, 7)
//!     .with_checkpoint(dir.path().join("run.safetensors"))
//!     .with_history_csv(dir.path().join("history.csv"));
//! let mut trainer = Trainer::new(&vae, &params, adam, objective, train, test, config)?;
//! trainer.fit(&mut ())?;
//! assert_eq!(trainer.state().history.len(), 3);
//! assert!(dir.path().join("run.safetensors").is_file());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A resumed run ([`Trainer::resume`]) continues from the checkpoint's epoch and repeats the
//! uninterrupted run bit for bit: the checkpoint holds the parameters, the optimiser's
//! state, both noise streams and the history.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;
use serde_json::Value;

use super::checkpoint::{Checkpoint, write_atomically};
use super::epoch::{
    BatchModel, CONFIG_KEY, EpochRecord, LikelihoodEstimate, Objective, TrainingState, evaluate,
    importance_sampled, train_epoch,
};
use super::finite;
use super::optim::OptimizerState;
use super::params::Parameters;
use crate::data::{BatchSource, DataLoader};
use crate::error::{Error, Result, ensure};
use crate::estimate::ImportanceSamplingConfig;
use crate::noise::NoiseSource;

/// Substream of the run's seed for the test pass after each epoch: the same ε every
/// epoch, so that the test curve compares epochs rather than draws.
pub const TEST_STREAM: u64 = 3;
/// Substream of the run's seed for the final importance-sampled evaluation.
pub const EVALUATION_STREAM: u64 = 4;

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum LearningRateSchedule {
    /// The optimiser's own rate, never changed.
    #[default]
    Unchanged,
    /// The same rate every epoch.
    Constant(f64),
    /// Burda et al. (2015): stage i = 0, 1, 2, … lasts 3^i epochs at
    /// `initial`·10^(−i/7) (3,280 epochs for i ≤ 7).
    Burda {
        /// The rate of stage 0.
        initial: f64,
    },
}

impl LearningRateSchedule {
    /// The rate of epoch `epoch` (counted from 1), or `None` for
    /// [`Unchanged`](Self::Unchanged).
    pub fn rate(&self, epoch: usize) -> Option<f64> {
        match *self {
            Self::Unchanged => None,
            Self::Constant(rate) => Some(rate),
            Self::Burda { initial } => {
                // Stage i covers epochs (3^i − 1)/2 + 1 ..= (3^(i+1) − 1)/2.
                let mut stage = 0u32;
                let mut end = 1usize;
                while epoch > end {
                    stage += 1;
                    end = end.saturating_add(3usize.saturating_pow(stage));
                }
                Some(initial * 10f64.powf(-f64::from(stage) / 7.0))
            }
        }
    }

    fn base(&self) -> Option<f64> {
        match *self {
            Self::Unchanged => None,
            Self::Constant(rate) | Self::Burda { initial: rate } => Some(rate),
        }
    }
}

/// What a [`Trainer`] does: how many epochs, where it writes, the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerConfig {
    /// Epochs in total: a resumed run continues up to this number.
    pub epochs: usize,
    /// The run's seed: the noise of the training state and of the evaluations
    /// ([`TEST_STREAM`], [`EVALUATION_STREAM`]).
    pub seed: u64,
    /// Checkpoint file, rewritten atomically after every epoch (none by default).
    pub checkpoint: Option<PathBuf>,
    /// History file, one CSV row per epoch, rewritten after every epoch (none by default).
    pub history_csv: Option<PathBuf>,
    /// The learning rate of each epoch.
    pub learning_rate: LearningRateSchedule,
}

impl TrainerConfig {
    /// `epochs` epochs of a run seeded with `seed`; no files, the optimiser's own rate.
    pub fn new(epochs: usize, seed: u64) -> Self {
        Self {
            epochs,
            seed,
            checkpoint: None,
            history_csv: None,
            learning_rate: LearningRateSchedule::Unchanged,
        }
    }

    /// Writes a checkpoint to `path` after every epoch.
    #[must_use]
    pub fn with_checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(path.into());
        self
    }

    /// Writes the history as CSV to `path` after every epoch.
    #[must_use]
    pub fn with_history_csv(mut self, path: impl Into<PathBuf>) -> Self {
        self.history_csv = Some(path.into());
        self
    }

    /// Sets the learning-rate schedule.
    #[must_use]
    pub fn with_learning_rate(mut self, schedule: LearningRateSchedule) -> Self {
        self.learning_rate = schedule;
        self
    }

    /// Checks the rules: a schedule's rate is finite and > 0.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(rate) = self.learning_rate.base() {
            ensure(
                rate.is_finite() && rate > 0.0,
                "TrainerConfig",
                "learning_rate",
                rate,
                "must be finite and > 0",
            )?;
        }
        Ok(())
    }
}

/// Called by [`Trainer::fit`] as the run goes: progress bars, logging, pictures. Every
/// method has an empty default, and `()` implements the trait for a silent run.
pub trait TrainerHooks<M: ?Sized> {
    /// [`Trainer::fit`] starts after epoch `state.epoch` > 0: a resumed run, or a second
    /// `fit` with more epochs.
    fn on_resume(&mut self, state: &TrainingState) {
        let _ = state;
    }

    /// Training epoch `epoch` (counted from 1) starts, over `examples` examples.
    fn on_epoch_start(&mut self, epoch: usize, examples: usize) {
        let _ = (epoch, examples);
    }

    /// A training batch of `examples` was stepped on; `loss` is its objective per example.
    fn on_train_batch(&mut self, examples: usize, loss: f64) {
        let _ = (examples, loss);
    }

    /// An evaluation over `examples` test examples starts (after each epoch, and in
    /// [`Trainer::estimate_likelihood`]).
    fn on_evaluation_start(&mut self, examples: usize) {
        let _ = examples;
    }

    /// A test batch of `examples` was evaluated.
    fn on_evaluation_batch(&mut self, examples: usize) {
        let _ = examples;
    }

    /// Epoch `record.epoch` is complete and its checkpoint written: report it, draw
    /// pictures. An error stops the run (as [`Error::Hook`]); the checkpoint is kept.
    ///
    /// # Errors
    /// The hook's own, boxed.
    fn on_epoch_end(
        &mut self,
        model: &M,
        record: &EpochRecord,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let _ = (model, record);
        Ok(())
    }

    /// The run stops on an error; the checkpoint holds epoch `kept`, or none was written.
    fn on_stop(&mut self, error: &Error, kept: Option<usize>) {
        let _ = (error, kept);
    }
}

impl<M: ?Sized> TrainerHooks<M> for () {}

/// A training run: a model, its parameters, an optimiser over them, an objective, the
/// data (any [`BatchSource`]: a [`DataLoader`] of images by default, a
/// [`TensorLoader`](crate::data::TensorLoader), or a user's own), and the state that a
/// checkpoint saves.
///
/// `P` is where the parameters live ([`ParamStore`](crate::ParamStore), candle's
/// `VarMap`, or anything that implements [`Parameters`]); `O` is any
/// `candle_nn::Optimizer` whose state can be saved ([`OptimizerState`]: the crate's
/// [`Adam`](crate::Adam), candle's `SGD`). Candle's `AdamW` keeps its moments private, so
/// its state cannot be checkpointed: use [`Adam`](crate::Adam) with
/// [`WeightDecay::Decoupled`](crate::WeightDecay::Decoupled), the same update.
pub struct Trainer<'m, M: ?Sized, P: ?Sized, O, B = DataLoader> {
    model: &'m M,
    params: &'m P,
    optimizer: O,
    objective: Objective,
    train: B,
    test: B,
    state: TrainingState,
    config: TrainerConfig,
    run_config: Value,
    device: Device,
}

impl<'m, M, P, O, B> Trainer<'m, M, P, O, B>
where
    M: BatchModel + ?Sized,
    P: Parameters + ?Sized,
    O: candle_nn::Optimizer + OptimizerState,
    B: BatchSource,
{
    /// A new run, at epoch 0 with the state of [`TrainingState::new`]`(config.seed)`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config or objective.
    pub fn new(
        model: &'m M,
        params: &'m P,
        optimizer: O,
        objective: Objective,
        train: B,
        test: B,
        config: TrainerConfig,
    ) -> Result<Self> {
        config.validate()?;
        objective.validate()?;
        // Batches go where the parameters are (the CPU for a model without any).
        let device = params
            .named_parameters()?
            .first()
            .map_or(Device::Cpu, |(_, var)| var.device().clone());
        Ok(Self {
            model,
            params,
            optimizer,
            objective,
            train,
            test,
            state: TrainingState::new(config.seed),
            config,
            run_config: Value::Null,
            device,
        })
    }

    /// Stores `settings` (the flags or config that define the run's numbers) in every
    /// checkpoint, and compares them with a checkpoint's on [`resume`](Self::resume).
    ///
    /// # Errors
    /// If `settings` cannot be serialised to JSON.
    pub fn with_run_config<C: Serialize + ?Sized>(mut self, settings: &C) -> Result<Self> {
        self.run_config = serde_json::to_value(settings).map_err(|e| Error::Metadata {
            path: PathBuf::new(),
            key: CONFIG_KEY.to_string(),
            reason: format!("cannot serialise the run's settings: {e}"),
        })?;
        Ok(self)
    }

    /// Continues the run from the checkpoint at `path`: parameters, optimiser state, noise
    /// streams and history, after checking that the checkpoint was saved with the same
    /// run settings ([`with_run_config`](Self::with_run_config)). Nothing changes on an
    /// error.
    ///
    /// # Errors
    /// [`Error::RunConfigMismatch`] naming each setting that differs, with both values;
    /// the errors of [`TrainingState::resume`] for a file that does not fit the model or
    /// the optimiser.
    pub fn resume(&mut self, path: impl AsRef<Path>, device: &Device) -> Result<()> {
        let path = path.as_ref();
        let checkpoint = Checkpoint::load(path, device)?;
        let saved: Value = checkpoint.json(CONFIG_KEY)?;
        let mut differences = Vec::new();
        config_differences("", &saved, &self.run_config, &mut differences);
        if !differences.is_empty() {
            return Err(Error::RunConfigMismatch {
                path: path.to_path_buf(),
                differences,
            });
        }
        self.state = TrainingState::restore(&checkpoint, self.params, &mut self.optimizer)?;
        Ok(())
    }

    /// Trains until [`TrainerConfig::epochs`]: for each epoch, sets the learning rate,
    /// trains ([`train_epoch`]), evaluates on the test set ([`evaluate`], noise
    /// [`TEST_STREAM`]), checks that every parameter is finite, writes the checkpoint and
    /// the history, then calls [`TrainerHooks::on_epoch_end`].
    ///
    /// # Errors
    /// A checkpoint path that cannot be written, before any training;
    /// [`Error::NonFinite`] or [`Error::NonFiniteParameter`] for a diverging run, which
    /// never overwrites the last good checkpoint; [`Error::Hook`]; I/O errors naming the
    /// file.
    pub fn fit<H: TrainerHooks<M> + ?Sized>(&mut self, hooks: &mut H) -> Result<()> {
        // A checkpoint that cannot be written should stop the run now, not after an epoch.
        if let Some(path) = &self.config.checkpoint {
            Checkpoint::check_writable(path)?;
        }
        if self.state.epoch > 0 {
            hooks.on_resume(&self.state);
        }
        let device = self.device.clone();
        while self.state.epoch < self.config.epochs {
            let result = self.fit_epoch(hooks, &device);
            if let Err(error) = result {
                let kept = (self.state.epoch > 0
                    && self.config.checkpoint.as_deref().is_some_and(Path::is_file))
                .then_some(self.state.epoch);
                hooks.on_stop(&error, kept);
                return Err(error);
            }
        }
        Ok(())
    }

    fn fit_epoch<H: TrainerHooks<M> + ?Sized>(
        &mut self,
        hooks: &mut H,
        device: &Device,
    ) -> Result<()> {
        let epoch = self.state.epoch + 1;
        if let Some(rate) = self.config.learning_rate.rate(epoch) {
            self.optimizer.set_learning_rate(rate);
        }
        hooks.on_epoch_start(epoch, self.train.examples());
        // A diverging run stops inside, before a non-finite step (crate::finite).
        let summary = train_epoch(
            self.model,
            &mut self.optimizer,
            &self.objective,
            &self.train,
            &mut self.state,
            device,
            |n, loss| hooks.on_train_batch(n, loss),
        )?;
        hooks.on_evaluation_start(self.test.examples());
        let mut test_noise = NoiseSource::new(self.config.seed).substream(TEST_STREAM);
        let eval = evaluate(self.model, &self.test, &mut test_noise, device, |n| {
            hooks.on_evaluation_batch(n)
        })?;
        let record = EpochRecord {
            epoch,
            train_neg_elbo: summary.neg_elbo,
            test_neg_elbo: eval.neg_elbo,
            test_reconstruction: eval.reconstruction,
            test_kl: eval.kl,
            active_units: eval.active_units.count(),
            seconds: summary.seconds,
            images_per_sec: summary.examples as f64 / summary.seconds.max(1e-9),
        };
        // Never replace a good checkpoint with non-finite weights.
        let named = self.params.named_parameters()?;
        finite::check_parameters(named.iter().map(|(name, var)| (name.as_str(), var)))?;
        self.state.history.push(record.clone());
        self.state.epoch = epoch;
        if let Some(path) = &self.config.checkpoint {
            self.state
                .save(path, self.params, &self.optimizer, &self.run_config)?;
        }
        if let Some(path) = &self.config.history_csv {
            write_atomically(path, history_csv(&self.state.history).as_bytes())?;
        }
        hooks
            .on_epoch_end(self.model, &record)
            .map_err(|source| Error::Hook { epoch, source })
    }

    /// The importance-sampled evaluation of the test set ([`importance_sampled`]): −ELBO,
    /// the IWAE bound −L_`bound_k` and the NLL with `config.samples` draws per example,
    /// from the noise stream [`EVALUATION_STREAM`] of the run's seed.
    ///
    /// # Errors
    /// As [`importance_sampled`].
    pub fn estimate_likelihood<H: TrainerHooks<M> + ?Sized>(
        &self,
        config: &ImportanceSamplingConfig,
        bound_k: usize,
        hooks: &mut H,
    ) -> Result<LikelihoodEstimate> {
        let mut noise = NoiseSource::new(self.config.seed).substream(EVALUATION_STREAM);
        hooks.on_evaluation_start(self.test.examples());
        importance_sampled(
            self.model,
            &self.test,
            config,
            bound_k.min(config.samples),
            &mut noise,
            &self.device,
            |n| hooks.on_evaluation_batch(n),
        )
    }

    /// Sends the batches to `device` instead of the parameters' device.
    #[must_use]
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The run's state: epoch, step, noise streams, history.
    pub fn state(&self) -> &TrainingState {
        &self.state
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &O {
        &self.optimizer
    }

    /// The optimiser, to change it between calls of [`fit`](Self::fit).
    pub fn optimizer_mut(&mut self) -> &mut O {
        &mut self.optimizer
    }

    /// The test batches.
    pub fn test_data(&self) -> &B {
        &self.test
    }

    /// The config.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The config, to train for more epochs with another [`fit`](Self::fit).
    pub fn config_mut(&mut self) -> &mut TrainerConfig {
        &mut self.config
    }
}

/// The history as CSV: a header, then one row per epoch with the fields of
/// [`EpochRecord`].
pub fn history_csv(history: &[EpochRecord]) -> String {
    let mut csv = String::from(
        "epoch,train_neg_elbo,test_neg_elbo,test_reconstruction,test_kl,active_units,seconds,images_per_sec\n",
    );
    for r in history {
        // Writing to a String cannot fail.
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{}",
            r.epoch,
            r.train_neg_elbo,
            r.test_neg_elbo,
            r.test_reconstruction,
            r.test_kl,
            r.active_units,
            r.seconds,
            r.images_per_sec
        );
    }
    csv
}

/// Appends to `out` one entry per setting that differs between `saved` and `now`,
/// objects compared field by field (`model.latent: saved 20, now 10`).
fn config_differences(path: &str, saved: &Value, now: &Value, out: &mut Vec<String>) {
    match (saved, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => config_differences(&child, x, y, out),
                    (Some(x), None) => out.push(format!("{child}: saved {x}, now absent")),
                    (None, Some(y)) => out.push(format!("{child}: not saved, now {y}")),
                    (None, None) => {}
                }
            }
        }
        _ if saved != now => {
            let name = if path.is_empty() { "settings" } else { path };
            out.push(format!("{name}: saved {saved}, now {now}"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_setting_with_both_values() {
        let saved = serde_json::json!({"model": {"latent": 20, "hidden": [400]}, "seed": 1});
        let now =
            serde_json::json!({"model": {"latent": 10, "hidden": [400]}, "seed": 1, "lr": 0.1});
        let mut out = Vec::new();
        config_differences("", &saved, &now, &mut out);
        assert_eq!(
            out,
            ["lr: not saved, now 0.1", "model.latent: saved 20, now 10"]
        );
    }

    #[test]
    fn burda_schedule_stages() {
        let s = LearningRateSchedule::Burda { initial: 1e-3 };
        let rate = |e| s.rate(e).unwrap_or(f64::NAN);
        // Stage 0: epoch 1; stage 1: epochs 2-4; stage 2: epochs 5-13.
        assert_eq!(rate(1), 1e-3);
        assert_eq!(rate(2), 1e-3 * 10f64.powf(-1.0 / 7.0));
        assert_eq!(rate(4), rate(2));
        assert_eq!(rate(5), 1e-3 * 10f64.powf(-2.0 / 7.0));
        assert_eq!(rate(13), rate(5));
        assert_eq!(rate(14), 1e-3 * 10f64.powf(-3.0 / 7.0));
        assert_eq!(LearningRateSchedule::Unchanged.rate(3), None);
    }
}
