//! Glue shared by the examples (`#[path = "../common/mod.rs"] mod common;`): the
//! command-line flags every training example takes, progress (bars on a terminal, a line
//! every 30 s elsewhere), the fixed-width epoch line, and the hooks through which the
//! examples use the library's [`candle_vae::train::Trainer`], which runs the loop.

#![allow(dead_code)] // each example uses a different part

pub mod download;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use candle_vae::data::DataLoader;
use candle_vae::train::{
    BatchModel, EVALUATION_STREAM, EpochRecord, LearningRateSchedule, LikelihoodEstimate,
    Objective, Trainer, TrainerConfig, TrainerHooks, importance_sampled,
};
use candle_vae::{
    Adam, AdamConfig, ElboLoss, ElboLossConfig, ImportanceSamplingConfig, KlEstimator, KlSchedule,
    NoiseSource, ParamStore, Reduction,
};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

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

    /// The learning-rate schedule of --lr and --lr-schedule.
    pub fn schedule(&self) -> LearningRateSchedule {
        match self.lr_schedule {
            LrSchedule::Constant => LearningRateSchedule::Constant(self.lr),
            LrSchedule::Burda => LearningRateSchedule::Burda { initial: self.lr },
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

/// Progress over `len` items on stderr: a bar on a terminal; elsewhere (a log file, CI)
/// one line every [`Progress::LOG_EVERY`], so that a long evaluation is not silent.
pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: String,
    len: usize,
    done: usize,
    start: Instant,
    last_line: Instant,
}

impl Progress {
    /// Interval of the progress lines when stderr is not a terminal.
    pub const LOG_EVERY: Duration = Duration::from_secs(30);

    /// Starts counting `len` items under `prefix`.
    pub fn new(len: usize, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(len as u64).with_prefix(prefix.clone());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec:>12} eta {eta:>4} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            prefix,
            len,
            done: 0,
            start: now,
            last_line: now,
        }
    }

    /// `n` more items done; `message` (the running loss) is shown beside the count.
    pub fn inc(&mut self, n: usize, message: Option<String>) {
        self.done += n;
        match &self.bar {
            Some(bar) => {
                bar.inc(n as u64);
                if let Some(message) = message {
                    bar.set_message(message);
                }
            }
            None if self.last_line.elapsed() >= Self::LOG_EVERY => {
                self.last_line = Instant::now();
                let seconds = self.start.elapsed().as_secs_f64();
                let left =
                    seconds * (self.len.saturating_sub(self.done)) as f64 / self.done.max(1) as f64;
                eprintln!(
                    "{}: {}/{} ({:.0}%) after {:.0} s, about {:.0} s left{}",
                    self.prefix,
                    self.done,
                    self.len,
                    100.0 * self.done as f64 / self.len.max(1) as f64,
                    seconds,
                    left,
                    message.map(|m| format!(", {m}")).unwrap_or_default()
                );
            }
            None => {}
        }
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
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

/// The library's [`Trainer`] as the examples use it: the crate's Adam over a
/// [`ParamStore`], a checkpoint after every epoch (--save), `history.csv` in the output
/// directory, the learning-rate schedule of `optim`, and `settings` stored in (and, with
/// --resume, compared with) the checkpoint.
#[allow(clippy::too_many_arguments)]
pub fn trainer<'m, M: BatchModel, C: Serialize>(
    model: &'m M,
    params: &'m ParamStore,
    optim: &OptimArgs,
    objective: Objective,
    train: DataLoader,
    test: DataLoader,
    run: &RunArgs,
    example: &str,
    settings: &C,
) -> Result<Trainer<'m, M, ParamStore, Adam>> {
    let checkpoint = run.checkpoint(example);
    let config = TrainerConfig::new(run.epochs, run.seed)
        .with_checkpoint(&checkpoint)
        .with_history_csv(run.out_dir(example).join("history.csv"))
        .with_learning_rate(optim.schedule());
    let optimizer = Adam::from_store(params, optim.adam_config())?;
    let mut trainer = Trainer::new(model, params, optimizer, objective, train, test, config)?
        .with_device(run.device()?)
        .with_run_config(settings)?;
    if run.resume {
        trainer
            .resume(&checkpoint, &run.device()?)
            .with_context(|| format!("resuming from {}", checkpoint.display()))?;
        let state = trainer.state();
        println!(
            "resumed from {} after epoch {} (step {})",
            checkpoint.display(),
            state.epoch,
            state.step
        );
    }
    Ok(trainer)
}

/// The examples' hooks: progress on stderr, the epoch line on stdout, then `pictures`.
struct ExampleHooks<F> {
    progress: Option<Progress>,
    pictures: F,
}

impl<M, F> TrainerHooks<M> for ExampleHooks<F>
where
    M: ?Sized,
    F: FnMut(&M, &EpochRecord) -> Result<()>,
{
    fn on_epoch_start(&mut self, epoch: usize, examples: usize) {
        self.progress = Some(Progress::new(examples, format!("epoch {epoch}")));
    }

    fn on_train_batch(&mut self, examples: usize, loss: f64) {
        if let Some(progress) = &mut self.progress {
            progress.inc(examples, Some(format!("loss {loss:.2}")));
        }
    }

    fn on_evaluation_start(&mut self, examples: usize) {
        if let Some(progress) = &mut self.progress {
            progress.finish();
        }
        self.progress = Some(Progress::new(examples, "test"));
    }

    fn on_evaluation_batch(&mut self, examples: usize) {
        if let Some(progress) = &mut self.progress {
            progress.inc(examples, None);
        }
    }

    fn on_epoch_end(
        &mut self,
        model: &M,
        record: &EpochRecord,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(mut progress) = self.progress.take() {
            progress.finish();
        }
        println!("{}", epoch_line(record));
        (self.pictures)(model, record).map_err(Into::into)
    }

    fn on_stop(&mut self, _error: &candle_vae::Error, kept: Option<usize>) {
        if let Some(mut progress) = self.progress.take() {
            progress.finish();
        }
        match kept {
            Some(epoch) => eprintln!(
                "the checkpoint still holds epoch {epoch}, the last good one: it was not overwritten"
            ),
            None => eprintln!("no checkpoint was written: no epoch completed"),
        }
    }
}

/// Trains to the configured epochs, printing the table (the resumed epochs first) and
/// calling `pictures` after each epoch.
pub fn fit<M: BatchModel>(
    trainer: &mut Trainer<'_, M, ParamStore, Adam>,
    pictures: impl FnMut(&M, &EpochRecord) -> Result<()>,
) -> Result<()> {
    if let Some(path) = &trainer.config().checkpoint {
        candle_vae::Checkpoint::check_writable(path).with_context(|| {
            format!(
                "the checkpoint (--save) {} cannot be written",
                path.display()
            )
        })?;
    }
    println!("{}", epoch_header());
    for record in &trainer.state().history {
        println!("{}", epoch_line(record));
    }
    let mut hooks = ExampleHooks {
        progress: None,
        pictures,
    };
    trainer.fit(&mut hooks)?;
    Ok(())
}

/// Progress of an importance-sampled evaluation.
struct NllHooks {
    samples: usize,
    progress: Option<Progress>,
}

impl<M: ?Sized> TrainerHooks<M> for NllHooks {
    fn on_evaluation_start(&mut self, examples: usize) {
        self.progress = Some(Progress::new(examples, format!("NLL k={}", self.samples)));
    }

    fn on_evaluation_batch(&mut self, examples: usize) {
        if let Some(progress) = &mut self.progress {
            progress.inc(examples, None);
        }
    }
}

/// The final evaluation on the whole test set: −ELBO, the IWAE bound −L_k and the
/// importance-sampled NLL with `samples` draws per example, `chunk` of them per pass,
/// printed and returned.
pub fn final_evaluation<M: BatchModel>(
    trainer: &Trainer<'_, M, ParamStore, Adam>,
    samples: usize,
    bound_k: usize,
    chunk: usize,
) -> Result<LikelihoodEstimate> {
    let config = ImportanceSamplingConfig::new(samples).with_chunk_size(chunk);
    let mut hooks = NllHooks {
        samples,
        progress: None,
    };
    let estimate = trainer.estimate_likelihood(&config, bound_k, &mut hooks)?;
    if let Some(progress) = &mut hooks.progress {
        progress.finish();
    }
    print_estimate(&estimate);
    Ok(estimate)
}

/// The same evaluation of a model that was not trained here (`--eval`): the same noise
/// (stream [`EVALUATION_STREAM`] of `seed`), so a checkpoint evaluates to the numbers its
/// training run printed.
pub fn evaluate_model<M: BatchModel>(
    model: &M,
    test: &DataLoader,
    seed: u64,
    samples: usize,
    bound_k: usize,
    chunk: usize,
    device: &Device,
) -> Result<LikelihoodEstimate> {
    let config = ImportanceSamplingConfig::new(samples).with_chunk_size(chunk);
    let mut noise = NoiseSource::new(seed).substream(EVALUATION_STREAM);
    let mut progress = Progress::new(test.examples(), format!("NLL k={samples}"));
    let estimate = importance_sampled(
        model,
        test,
        &config,
        bound_k.min(samples),
        &mut noise,
        device,
        |n| progress.inc(n, None),
    )?;
    progress.finish();
    print_estimate(&estimate);
    Ok(estimate)
}

fn print_estimate(estimate: &LikelihoodEstimate) {
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
}
