//! Glue shared by the examples (`#[path = "../common/mod.rs"] mod common;`): the
//! command-line flags every training example takes, progress bars, the fixed-width epoch
//! line, and the train / test / checkpoint / resume loop around the library's
//! [`candle_vae::train`] functions.

#![allow(dead_code)] // each example uses a different part

pub mod download;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use candle_vae::data::DataLoader;
use candle_vae::train::{
    BatchModel, EpochRecord, LikelihoodEstimate, Objective, TrainingState, evaluate,
    importance_sampled, train_epoch,
};
use candle_vae::{
    Adam, AdamConfig, ElboLoss, ElboLossConfig, ImportanceSamplingConfig, KlEstimator, KlSchedule,
    NoiseSource, ParamStore, Reduction,
};
use candle_vae::{Checkpoint, finite};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Noise stream (of the run's seed) for the per-epoch test pass: the same ε every epoch,
/// so test curves compare epochs rather than draws.
pub const TEST_STREAM: u64 = 3;
/// Noise stream for the final importance-sampled evaluation.
pub const EVAL_STREAM: u64 = 4;
/// Noise stream for the pictures (prior samples).
pub const PICTURE_STREAM: u64 = 5;

/// Flags of every training run: data, schedule, checkpoints, output, device.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Directory with the dataset's files [default: $CANDLE_VAE_DATA/<dataset>, else
    /// ./data/<dataset>].
    #[arg(long)]
    pub data: Option<PathBuf>,

    /// Training epochs (in total: a resumed run continues up to this number).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,

    /// Examples per training batch (the last partial batch is kept).
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,

    /// Seed of the parameter initialisation, data order, binarization and noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Checkpoint file, rewritten atomically after every epoch [default: <out>/checkpoint.safetensors].
    #[arg(long)]
    pub save: Option<PathBuf>,

    /// Continue from the checkpoint (--save) instead of starting afresh; the losses are
    /// the uninterrupted run's, bit for bit.
    #[arg(long)]
    pub resume: bool,

    /// Directory for the pictures (and, by default, the checkpoint) [default:
    /// runs/<example>].
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Device: auto, cpu, cuda[:N], metal[:N].
    #[arg(long, default_value = "auto")]
    pub device: String,

    /// Importance samples per test example for the final NLL estimate (Burda et al.
    /// use 5000); 0 skips the final evaluation.
    #[arg(long, default_value_t = 1000)]
    pub eval_k: usize,
}

impl RunArgs {
    /// The output directory: --out, or `runs/<example>`.
    pub fn out_dir(&self, example: &str) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(example))
    }

    /// The checkpoint path: --save, or `checkpoint.safetensors` in the output directory.
    pub fn checkpoint(&self, example: &str) -> PathBuf {
        self.save
            .clone()
            .unwrap_or_else(|| self.out_dir(example).join("checkpoint.safetensors"))
    }

    /// The device named by --device.
    pub fn device(&self) -> Result<Device> {
        Ok(candle_vae::parse_device(&self.device)?)
    }
}

/// Flags of the optimiser.
#[derive(Debug, Clone, Args, Serialize, serde::Deserialize, PartialEq)]
pub struct OptimArgs {
    /// Adam learning rate (no weight decay, β = (0.9, 0.999), as PyTorch's default).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,

    /// Learning-rate schedule: constant, or burda (stage i = 0, 1, … lasts 3^i epochs at
    /// lr·10^(−i/7): 3,280 epochs for i ≤ 7, Burda et al. 2015).
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    pub lr_schedule: LrSchedule,

    /// Adam's ε (PyTorch's default 1e-8; Burda et al. 2015 use 1e-4).
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
}

/// How the learning rate changes over epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
pub enum LrSchedule {
    /// The same rate every epoch.
    Constant,
    /// Burda et al. (2015): 3^i epochs at lr·10^(−i/7), i = 0, 1, 2, …
    Burda,
}

impl OptimArgs {
    /// Adam with these settings.
    pub fn adam_config(&self) -> AdamConfig {
        AdamConfig::new(self.lr).with_eps(self.adam_eps)
    }

    /// The learning rate of epoch `epoch` (counted from 1).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Burda => {
                // Stage i covers epochs (3^i − 1)/2 + 1 ..= (3^(i+1) − 1)/2.
                let mut stage = 0u32;
                let mut end = 1usize;
                while epoch > end {
                    stage += 1;
                    end += 3usize.pow(stage);
                }
                self.lr * 10f64.powf(-f64::from(stage) / 7.0)
            }
        }
    }
}

/// Flags of the training objective.
#[derive(Debug, Clone, Args, Serialize, serde::Deserialize, PartialEq)]
pub struct ObjectiveArgs {
    /// Weight β of the KL term (1: the ELBO; > 1: a β-VAE, Higgins et al. 2017).
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,

    /// Steps of linear KL warm-up from 0 to β (0: none).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,

    /// Free bits λ in nats per latent dimension (Kingma et al. 2016; 0: none).
    #[arg(long, default_value_t = 0.0)]
    pub free_bits: f64,

    /// Posterior samples per example of the training objective: 1 trains the ELBO, k > 1
    /// the IWAE bound L_k (Burda et al. 2015).
    #[arg(long, default_value_t = 1)]
    pub iwae_k: usize,

    /// How the ELBO's KL term is computed: auto (the closed form where the prior has one
    /// for the posterior, else Monte-Carlo), analytic, or mc.
    #[arg(long, value_enum, default_value_t = KlArg::Auto)]
    #[serde(default)]
    pub kl: KlArg,
}

/// The `--kl` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, serde::Deserialize)]
pub enum KlArg {
    /// Analytic where a closed form exists, else Monte-Carlo.
    #[default]
    Auto,
    /// The closed form (an error where there is none).
    Analytic,
    /// The Monte-Carlo estimate at the sampled z.
    Mc,
}

impl ObjectiveArgs {
    /// The KL estimator of `--kl`, given whether the model's prior has a closed form for
    /// its posterior.
    pub fn kl_estimator(&self, analytic_available: bool) -> Result<KlEstimator> {
        match (self.kl, analytic_available) {
            (KlArg::Auto, true) | (KlArg::Analytic, true) => Ok(KlEstimator::Analytic),
            (KlArg::Auto, false) | (KlArg::Mc, _) => Ok(KlEstimator::MonteCarlo),
            (KlArg::Analytic, false) => {
                bail!(
                    "--kl analytic: this prior has no closed-form KL from this posterior; use --kl mc"
                )
            }
        }
    }

    /// The objective, with losses summed over the batch as PyTorch's example does.
    pub fn objective(&self, kl: KlEstimator) -> Result<Objective> {
        if self.iwae_k > 1 {
            if self.beta != 1.0 || self.warmup_steps > 0 || self.free_bits > 0.0 {
                bail!(
                    "--beta, --warmup-steps and --free-bits shape the ELBO; use them with --iwae-k 1"
                );
            }
            return Ok(Objective::Iwae {
                samples: self.iwae_k,
                reduction: Reduction::Sum,
            });
        }
        let schedule = if self.warmup_steps > 0 {
            KlSchedule::Linear {
                warmup_steps: self.warmup_steps,
            }
        } else {
            KlSchedule::Constant
        };
        Ok(Objective::Elbo(ElboLoss::new(
            ElboLossConfig::default()
                .with_beta(self.beta)
                .with_kl_estimator(kl)
                .with_free_bits(self.free_bits)
                .with_kl_schedule(schedule)
                .with_reduction(Reduction::Sum),
        )?))
    }

    /// The objective in words, for the log.
    pub fn describe(&self) -> String {
        if self.iwae_k > 1 {
            format!("IWAE bound, k = {} (summed over the batch)", self.iwae_k)
        } else {
            format!(
                "ELBO, β = {}, KL warm-up {} steps, free bits {} (summed over the batch)",
                self.beta, self.warmup_steps, self.free_bits
            )
        }
    }

    /// k of the IWAE bound to report at the end: the training k, or 5 (Burda et al.'s).
    pub fn bound_k(&self) -> usize {
        if self.iwae_k > 1 { self.iwae_k } else { 5 }
    }
}

/// A progress bar over `len` items (hidden when stderr is not a terminal).
pub fn progress_bar(len: usize, prefix: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::new(len as u64).with_prefix(prefix.into());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec:>12} eta {eta:>4} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The header of the per-epoch table.
pub fn epoch_header() -> String {
    format!(
        "{:>5} {:>12} {:>11} {:>10} {:>8} {:>4} {:>8} {:>9}",
        "epoch", "train -ELBO", "test -ELBO", "test rec", "test KL", "AU", "seconds", "images/s"
    )
}

/// One fixed-width line per epoch: losses in nats per example.
pub fn epoch_line(r: &EpochRecord) -> String {
    format!(
        "{:>5} {:>12.4} {:>11.4} {:>10.4} {:>8.4} {:>4} {:>8.2} {:>9.0}",
        r.epoch,
        r.train_neg_elbo,
        r.test_neg_elbo,
        r.test_reconstruction,
        r.test_kl,
        r.active_units,
        r.seconds,
        r.images_per_sec
    )
}

/// Writes the per-epoch history (the numbers of [`epoch_line`]) as CSV: the training
/// curve, for plotting.
pub fn write_history(path: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut csv = String::from(
        "epoch,train_neg_elbo,test_neg_elbo,test_reconstruction,test_kl,active_units,seconds,images_per_sec\n",
    );
    for r in history {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            r.epoch,
            r.train_neg_elbo,
            r.test_neg_elbo,
            r.test_reconstruction,
            r.test_kl,
            r.active_units,
            r.seconds,
            r.images_per_sec
        ));
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// Draws the training curve with [`candle_vae::viz::scatter`]: −ELBO per example against
/// the epoch, train in colour 0 (blue), test in colour 1 (orange). The y axis spans the
/// points after the first 5% of the epochs, so the first steep epochs do not flatten the
/// rest (earlier points outside it are left out).
pub fn save_training_curve(path: &Path, history: &[EpochRecord]) -> Result<()> {
    use candle_vae::viz::{ScatterConfig, scatter};
    if history.is_empty() {
        return Ok(());
    }
    let mut points = Vec::with_capacity(4 * history.len());
    let mut labels = Vec::with_capacity(2 * history.len());
    for r in history {
        for (label, value) in [(0u8, r.train_neg_elbo), (1, r.test_neg_elbo)] {
            points.extend([r.epoch as f32, value as f32]);
            labels.push(label);
        }
    }
    let last = history.len();
    let settled = history.iter().filter(|r| r.epoch * 20 >= last);
    let (lo, hi) = settled
        .flat_map(|r| [r.train_neg_elbo, r.test_neg_elbo])
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let range = [0.0, last as f32 + 1.0, (lo - pad) as f32, (hi + pad) as f32];
    let points = candle_core::Tensor::from_vec(points, (labels.len(), 2), &Device::Cpu)?;
    let config = ScatterConfig::default()
        .with_size(400)
        .with_points(1.5, 1.0)
        .with_range(range);
    scatter(&points, Some(&labels), &config)?.save_png(path)?;
    Ok(())
}

/// A training run in progress: the model (a `Vae`, or a `ConditionalVae` fed the batch
/// labels), its optimiser, the data and the run state.
pub struct Session<'a, M> {
    /// The model.
    pub vae: &'a M,
    /// Its parameters.
    pub params: &'a ParamStore,
    /// The optimiser over `params`.
    pub optimizer: Adam,
    /// What the steps minimise.
    pub objective: Objective,
    /// Training batches.
    pub train: DataLoader,
    /// Test batches (sequential).
    pub test: DataLoader,
    /// Epoch, step, noise streams, history.
    pub state: TrainingState,
    /// Learning rate and its schedule.
    pub optim: OptimArgs,
    /// Where the tensors live.
    pub device: Device,
    /// The run's seed.
    pub seed: u64,
}

impl<M: BatchModel> Session<'_, M> {
    /// With `resume`, restores parameters, optimiser and state from `checkpoint`, after
    /// checking that it was saved with `config`; prints the epochs it already holds.
    pub fn maybe_resume<C>(&mut self, resume: bool, checkpoint: &Path, config: &C) -> Result<()>
    where
        C: DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        if !resume {
            return Ok(());
        }
        let (state, saved): (TrainingState, C) =
            TrainingState::resume(checkpoint, &self.device, self.params, &mut self.optimizer)
                .with_context(|| format!("resuming from {}", checkpoint.display()))?;
        if &saved != config {
            bail!(
                "{} was saved by a run with another configuration:\n  saved: {saved:?}\n  now:   {config:?}",
                checkpoint.display()
            );
        }
        self.state = state;
        println!(
            "resumed from {} after epoch {} (step {})",
            checkpoint.display(),
            self.state.epoch,
            self.state.step
        );
        Ok(())
    }

    /// Trains up to `epochs`, printing one line per epoch, saving a checkpoint (with
    /// `config`) after each, then calling `after_epoch`.
    pub fn fit<C: Serialize>(
        &mut self,
        epochs: usize,
        checkpoint: &Path,
        config: &C,
        mut after_epoch: impl FnMut(&M, &EpochRecord) -> Result<()>,
    ) -> Result<()> {
        // A checkpoint that cannot be written should stop the run now, not after an epoch.
        Checkpoint::check_writable(checkpoint).with_context(|| {
            format!(
                "the checkpoint (--save) {} cannot be written",
                checkpoint.display()
            )
        })?;
        println!("{}", epoch_header());
        for record in &self.state.history {
            println!("{}", epoch_line(record));
        }
        while self.state.epoch < epochs {
            let epoch = self.state.epoch + 1;
            self.optimizer
                .try_set_learning_rate(self.optim.lr_at(epoch))
                .with_context(|| format!("the learning rate of epoch {epoch}"))?;
            let bar = progress_bar(self.train.examples(), format!("epoch {epoch}"));
            let trained = train_epoch(
                self.vae,
                &mut self.optimizer,
                &self.objective,
                &self.train,
                &mut self.state,
                &self.device,
                |n, loss| {
                    bar.inc(n as u64);
                    bar.set_message(format!("loss {loss:.2}"));
                },
            );
            bar.finish_and_clear();
            // A diverging run stops here, before a non-finite step (candle_vae::finite):
            // the checkpoint keeps the last good epoch.
            let summary = trained.inspect_err(|_| self.report_kept_checkpoint(checkpoint))?;
            let bar = progress_bar(self.test.examples(), "test");
            let mut test_noise = NoiseSource::new(self.seed).substream(TEST_STREAM);
            let eval = evaluate(self.vae, &self.test, &mut test_noise, &self.device, |n| {
                bar.inc(n as u64)
            })?;
            bar.finish_and_clear();
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
            println!("{}", epoch_line(&record));
            // Never replace a good checkpoint with non-finite weights.
            let named = self.params.named_vars()?;
            finite::check_parameters(named.iter().map(|(name, var)| (name.as_str(), var)))
                .inspect_err(|_| self.report_kept_checkpoint(checkpoint))?;
            self.state.history.push(record.clone());
            self.state.epoch = epoch;
            self.state
                .save(checkpoint, self.params, &self.optimizer, config)
                .with_context(|| format!("saving {}", checkpoint.display()))?;
            after_epoch(self.vae, &record)?;
        }
        Ok(())
    }

    /// Says on stderr which epoch the checkpoint still holds, when a run stops on an error.
    fn report_kept_checkpoint(&self, checkpoint: &Path) {
        if self.state.epoch > 0 && checkpoint.is_file() {
            eprintln!(
                "{} still holds epoch {}, the last good one: it was not overwritten",
                checkpoint.display(),
                self.state.epoch
            );
        } else {
            eprintln!("no checkpoint was written: no epoch completed");
        }
    }

    /// The final evaluation on the whole test set: −ELBO, the IWAE bound −L_k and the
    /// importance-sampled NLL with `samples` draws per example, `chunk` of them per pass,
    /// printed and returned.
    pub fn final_evaluation(
        &self,
        samples: usize,
        bound_k: usize,
        chunk: usize,
    ) -> Result<LikelihoodEstimate> {
        let bar = progress_bar(self.test.examples(), format!("NLL k={samples}"));
        let mut noise = NoiseSource::new(self.seed).substream(EVAL_STREAM);
        let config = ImportanceSamplingConfig::new(samples).with_chunk_size(chunk);
        let estimate = importance_sampled(
            self.vae,
            &self.test,
            &config,
            bound_k.min(samples),
            &mut noise,
            &self.device,
            |n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
        println!(
            "final test ({} images, k = {}): -ELBO {:.4} | IWAE bound -L_{} {:.4} | NLL (IS, k = {}) {:.4} nats",
            estimate.examples,
            estimate.samples,
            estimate.neg_elbo,
            estimate.bound_k,
            estimate.neg_iwae_bound,
            estimate.samples,
            estimate.nll
        );
        Ok(estimate)
    }
}
