//! One epoch of training, an evaluation pass, the importance-sampled likelihood over a
//! dataset, and the state a checkpoint needs to resume (re-exported by [`train`](crate::train)).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::component::{Decoder, EncoderT};
use crate::data::{Batch, BatchSource};
use crate::error::{Result, ensure};
use crate::estimate::{
    ActiveUnits, ImportanceSamplingConfig, WeightSums, iwae_bound, log_importance_weights,
};
use crate::likelihood::Likelihood;
use crate::loss::{ElboLoss, ElboLossConfig, KlEstimator, Reduction};
use crate::noise::{NoiseSource, NoiseState};
use crate::optim::OptimizerState;
use crate::params::Parameters;
use crate::prior::Prior;
use crate::reparameterize::Reparameterize;
use crate::vae::{ConditionalVae, Vae, VaeOutput};

/// A model the functions of this module drive, one [`Batch`] at a time: a [`Vae`] reads
/// the images, a [`ConditionalVae`] also the labels, one-hot encoded as its condition.
pub trait BatchModel {
    /// The posterior family of the encoder.
    type Posterior: Reparameterize;
    /// The likelihood p(x|z).
    type Likelihood: Likelihood;
    /// The prior p(z).
    type Prior: Prior;

    /// One forward pass on `batch`: one posterior sample per example (`samples` = `None`,
    /// z of shape `(N, D)`) or k (`Some(k)`, z of shape `(k, N, D)`), drawn from `noise`.
    ///
    /// # Errors
    /// If the batch does not fit the model (for a conditional model: if it has no labels,
    /// or a label is not below the condition width).
    fn forward_batch(
        &self,
        batch: &Batch,
        samples: Option<usize>,
        noise: &mut NoiseSource,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, Self::Posterior, Self::Likelihood, Self::Prior>>;
}

impl<E, D, L, P> BatchModel for Vae<E, D, L, P>
where
    E: EncoderT,
    D: Decoder,
    L: Likelihood,
    P: Prior,
{
    type Posterior = E::Posterior;
    type Likelihood = L;
    type Prior = P;

    fn forward_batch(
        &self,
        batch: &Batch,
        samples: Option<usize>,
        noise: &mut NoiseSource,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        match samples {
            None => self.forward_t(&batch.images, noise, train),
            Some(k) => self.forward_samples_t(&batch.images, k, noise, train),
        }
    }
}

impl<E, D, L, P> BatchModel for ConditionalVae<E, D, L, P>
where
    E: EncoderT,
    D: Decoder,
    L: Likelihood,
    P: Prior,
{
    type Posterior = E::Posterior;
    type Likelihood = L;
    type Prior = P;

    fn forward_batch(
        &self,
        batch: &Batch,
        samples: Option<usize>,
        noise: &mut NoiseSource,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        let labels = batch.labels.clone().ok_or_else(|| {
            candle_core::Error::Msg("a conditional VAE needs a labelled dataset".into())
        })?;
        let cond = candle_nn::encoding::one_hot(labels, self.condition_dim(), 1f32, 0f32)?
            .to_dtype(batch.images.dtype())?;
        match samples {
            None => self.forward_t(&batch.images, &cond, noise, train),
            Some(k) => self.forward_samples_t(&batch.images, &cond, k, noise, train),
        }
    }
}

/// What a training step minimises.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// The negative ELBO of an [`ElboLoss`] (with its β, free bits, KL schedule and
    /// reduction), one posterior sample per example (Kingma & Welling 2013).
    Elbo(ElboLoss),
    /// The negative IWAE bound −L_k with `samples` = k posterior samples per example
    /// (Burda et al. 2015, eq. 8); k = 1 is the ELBO.
    Iwae {
        /// k, samples per example (≥ 1).
        samples: usize,
        /// How the per-example bounds are reduced.
        reduction: Reduction,
    },
}

impl Objective {
    /// Checks the rules [`train_epoch`] relies on.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if an IWAE objective has 0
    /// samples.
    pub fn validate(&self) -> Result<()> {
        match self {
            Objective::Elbo(_) => Ok(()),
            Objective::Iwae { samples, .. } => ensure(
                *samples >= 1,
                "Objective::Iwae",
                "samples",
                samples,
                "must be ≥ 1",
            ),
        }
    }
}

/// Everything a run must carry from one epoch to the next, besides the parameters and
/// the optimiser: the epoch and step counters, the two noise streams, and the history.
///
/// Data order and dynamic binarization draw from `data_noise`; the reparameterization
/// noise from `model_noise`. Both are stored in checkpoints by [`save`](Self::save), so
/// [`resume`](Self::resume) continues the exact streams.
#[derive(Debug, Clone)]
pub struct TrainingState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken (the `t` of KL schedules).
    pub step: usize,
    /// The source of batch order and dynamic binarization.
    pub data_noise: NoiseSource,
    /// The source of the reparameterization noise ε.
    pub model_noise: NoiseSource,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
}

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, counted from 1.
    pub epoch: usize,
    /// Training −ELBO per example, averaged over the epoch's batches as they were trained.
    pub train_neg_elbo: f64,
    /// Test −ELBO per example.
    pub test_neg_elbo: f64,
    /// Test reconstruction term −E_q[log p(x|z)] per example.
    pub test_reconstruction: f64,
    /// Test KL(q(z|x) ‖ p(z)) per example.
    pub test_kl: f64,
    /// Active units on the test set (Burda et al. 2015).
    pub active_units: usize,
    /// Wall time of the training pass, seconds.
    pub seconds: f64,
    /// Training throughput, images per second.
    pub images_per_sec: f64,
}

/// The part of [`TrainingState`] that goes into checkpoint metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedState {
    epoch: usize,
    step: usize,
    data_noise: NoiseState,
    model_noise: NoiseState,
    history: Vec<EpochRecord>,
}

/// Metadata key of the training state.
pub const STATE_KEY: &str = "training.state";
/// Metadata key of the run's configuration.
pub const CONFIG_KEY: &str = "training.config";

impl TrainingState {
    /// The state of a new run: the noise streams are substreams 1 (data) and 2 (model)
    /// of `seed`, independent of the parameter initialisation's streams.
    pub fn new(seed: u64) -> Self {
        let root = NoiseSource::new(seed);
        Self {
            epoch: 0,
            step: 0,
            data_noise: root.substream(1),
            model_noise: root.substream(2),
            history: Vec::new(),
        }
    }

    /// Writes a checkpoint to `path` atomically: the parameters of `params`, the state of
    /// `optimizer`, this state, and `config` (as JSON under [`CONFIG_KEY`]).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) naming the file; serialisation errors.
    pub fn save<C: Serialize + ?Sized, P, O>(
        &self,
        path: impl AsRef<Path>,
        params: &P,
        optimizer: &O,
        config: &C,
    ) -> Result<()>
    where
        P: Parameters + ?Sized,
        O: OptimizerState + ?Sized,
    {
        let mut checkpoint = Checkpoint::from_params(params)?;
        optimizer.save_state(&mut checkpoint)?;
        checkpoint.set_json(
            STATE_KEY,
            &SavedState {
                epoch: self.epoch,
                step: self.step,
                data_noise: self.data_noise.state(),
                model_noise: self.model_noise.state(),
                history: self.history.clone(),
            },
        )?;
        checkpoint.set_json(CONFIG_KEY, config)?;
        checkpoint.save(path)
    }

    /// Restores a run from the checkpoint at `path`: sets `params` and `optimizer` and
    /// returns the state with the configuration the run was saved with, for the caller
    /// to compare with its own. Nothing changes unless every tensor is present with the
    /// right shape.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the file cannot be read;
    /// [`Error::MissingTensor`](crate::Error::MissingTensor),
    /// [`Error::TensorShape`](crate::Error::TensorShape) or
    /// [`Error::Metadata`](crate::Error::Metadata) naming what does not fit.
    pub fn resume<C: DeserializeOwned, P, O>(
        path: impl AsRef<Path>,
        device: &Device,
        params: &P,
        optimizer: &mut O,
    ) -> Result<(Self, C)>
    where
        P: Parameters + ?Sized,
        O: OptimizerState + ?Sized,
    {
        let checkpoint = Checkpoint::load(path, device)?;
        let config: C = checkpoint.json(CONFIG_KEY)?;
        let state = Self::restore(&checkpoint, params, optimizer)?;
        Ok((state, config))
    }

    /// As [`resume`](Self::resume), from a checkpoint already loaded, leaving the run's
    /// configuration to the caller ([`Trainer`](crate::train::Trainer) compares it
    /// setting by setting before it calls this).
    ///
    /// # Errors
    /// As [`resume`](Self::resume).
    pub fn restore<P, O>(checkpoint: &Checkpoint, params: &P, optimizer: &mut O) -> Result<Self>
    where
        P: Parameters + ?Sized,
        O: OptimizerState + ?Sized,
    {
        let saved: SavedState = checkpoint.json(STATE_KEY)?;
        // Check the optimiser's state before changing anything.
        optimizer.check_state(checkpoint)?;
        checkpoint.restore(params)?;
        optimizer.load_state(checkpoint)?;
        Ok(Self {
            epoch: saved.epoch,
            step: saved.step,
            data_noise: NoiseSource::from_state(saved.data_noise),
            model_noise: NoiseSource::from_state(saved.model_noise),
            history: saved.history,
        })
    }
}

/// Sums over the batches of a training epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    /// Examples seen.
    pub examples: usize,
    /// The objective per example (with β, warm-up and free bits, or −L_k).
    pub loss: f64,
    /// −ELBO per example (β = 1, no free bits).
    pub neg_elbo: f64,
    /// −E_q[log p(x|z)] per example.
    pub reconstruction: f64,
    /// KL(q(z|x) ‖ p(z)) per example.
    pub kl: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The plain −ELBO (β = 1, summed) that training and evaluation report: with the
/// analytic KL where the prior has a closed form for the posterior family, else the
/// Monte-Carlo estimate at the pass's samples.
fn monitor_loss<Q, L, P>(out: &VaeOutput<'_, Q, L, P>) -> Result<ElboLoss>
where
    Q: Reparameterize,
    L: Likelihood,
    P: Prior,
{
    let estimator = if out.prior.has_analytic_kl(std::any::TypeId::of::<Q>()) {
        KlEstimator::Analytic
    } else {
        KlEstimator::MonteCarlo
    };
    ElboLoss::new(
        ElboLossConfig::default()
            .with_reduction(Reduction::Sum)
            .with_kl_estimator(estimator),
    )
}

/// A scalar tensor as `f64`.
fn scalar(value: &Tensor) -> candle_core::Result<f64> {
    value.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Per-example value of a scalar reduced over `n` examples.
fn per_example(value: &Tensor, reduction: Reduction, n: usize) -> candle_core::Result<f64> {
    let v = scalar(value)?;
    Ok(match reduction {
        Reduction::Sum => v / n as f64,
        Reduction::BatchMean => v,
    })
}

/// Trains `vae` for one epoch of `loader` with `optimizer`, drawing from `state`'s noise
/// streams and advancing `state.step` (not `state.epoch`: the caller does that once the
/// epoch's bookkeeping is done). `on_batch(examples, loss_per_example)` runs after every
/// step, e.g. to move a progress bar.
///
/// # Errors
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a bad objective; candle's
/// error if the data does not fit the model.
pub fn train_epoch<M: BatchModel + ?Sized, O: candle_nn::Optimizer, B: BatchSource + ?Sized>(
    vae: &M,
    optimizer: &mut O,
    objective: &Objective,
    loader: &B,
    state: &mut TrainingState,
    device: &Device,
    mut on_batch: impl FnMut(usize, f64),
) -> Result<EpochSummary> {
    objective.validate()?;
    let start = Instant::now();
    let mut sums = [0f64; 4]; // loss, −ELBO, reconstruction, KL (per-example sums)
    let mut examples = 0;
    let TrainingState {
        data_noise,
        model_noise,
        step,
        ..
    } = state;
    for batch in loader.epoch(data_noise, device) {
        let batch = batch?;
        let xs = &batch.images;
        let n = xs.dim(0)?;
        let (loss, reduction, out) = match objective {
            Objective::Elbo(elbo_loss) => {
                let out = vae.forward_batch(&batch, None, model_noise, true)?;
                let elbo = elbo_loss.forward_at_step(&out, xs, *step)?;
                (elbo.loss, elbo_loss.config().reduction, out)
            }
            Objective::Iwae { samples, reduction } => {
                let out = vae.forward_batch(&batch, Some(*samples), model_noise, true)?;
                let loss = reduction.apply(&iwae_bound(&out, xs)?.neg()?)?;
                (loss, *reduction, out)
            }
        };
        // The non-finite guard (crate::finite): no backward, no step on a NaN/∞ loss.
        let (epoch, next) = (state.epoch.saturating_add(1), step.saturating_add(1));
        crate::finite::guard_step(&loss, || monitor_loss(&out)?.forward(&out, xs), epoch, next)?;
        optimizer
            .backward_step(&loss)
            .map_err(|e| crate::finite::step_error(e, epoch, next))?;
        *step += 1;
        let monitored = monitor_loss(&out)?.forward(&out, xs)?;
        let batch_loss = per_example(&loss, reduction, n)?;
        sums[0] += batch_loss * n as f64;
        sums[1] += scalar(&monitored.loss)?;
        sums[2] += scalar(&monitored.reconstruction)?;
        sums[3] += scalar(&monitored.kl)?;
        examples += n;
        on_batch(n, batch_loss);
    }
    let n = examples.max(1) as f64;
    Ok(EpochSummary {
        examples,
        loss: sums[0] / n,
        neg_elbo: sums[1] / n,
        reconstruction: sums[2] / n,
        kl: sums[3] / n,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Examples evaluated.
    pub examples: usize,
    /// −ELBO per example, one posterior sample each.
    pub neg_elbo: f64,
    /// −E_q[log p(x|z)] per example.
    pub reconstruction: f64,
    /// KL(q(z|x) ‖ p(z)) per example (analytic).
    pub kl: f64,
    /// Activity of the latent dimensions over the data (threshold 0.01).
    pub active_units: ActiveUnits,
}

/// The −ELBO of `vae` on every batch of `loader`, in evaluation mode, with one posterior
/// sample per example drawn from `noise` — as the pytorch/examples VAE tests — and
/// active units from the posterior means. `on_batch(examples)` runs after every batch.
///
/// # Errors
/// Candle's error if the data does not fit the model.
pub fn evaluate<M: BatchModel + ?Sized, B: BatchSource + ?Sized>(
    vae: &M,
    loader: &B,
    noise: &mut NoiseSource,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<Evaluation> {
    // The data order of an evaluation does not depend on `noise` (use Order::Sequential)
    // but a dynamic binarization would; keep it apart from the model noise.
    let mut data_noise = noise.substream(1);
    let mut sums = [0f64; 3];
    let mut examples = 0;
    let mut means = Vec::with_capacity(loader.batches());
    for batch in loader.epoch(&mut data_noise, device) {
        let batch = batch?;
        let xs = &batch.images;
        let n = xs.dim(0)?;
        let out = vae.forward_batch(&batch, None, noise, false)?;
        let elbo = monitor_loss(&out)?.forward(&out, xs)?;
        sums[0] += scalar(&elbo.loss)?;
        sums[1] += scalar(&elbo.reconstruction)?;
        sums[2] += scalar(&elbo.kl)?;
        means.push(out.posterior.location()?.detach());
        examples += n;
        on_batch(n);
    }
    let n = examples.max(1) as f64;
    Ok(Evaluation {
        examples,
        neg_elbo: sums[0] / n,
        reconstruction: sums[1] / n,
        kl: sums[2] / n,
        active_units: ActiveUnits::from_means(means, ActiveUnits::BURDA_THRESHOLD)?,
    })
}

/// The result of [`importance_sampled`], per example, in nats.
#[derive(Debug, Clone, PartialEq)]
pub struct LikelihoodEstimate {
    /// Examples evaluated.
    pub examples: usize,
    /// K, importance samples per example.
    pub samples: usize,
    /// −ELBO estimated from all K samples: −(1/K) Σ_k log w_k.
    pub neg_elbo: f64,
    /// k of the IWAE bound reported.
    pub bound_k: usize,
    /// −L_k, the negative IWAE bound with k samples, averaged over the ⌊K/k⌋ disjoint
    /// groups of the K samples.
    pub neg_iwae_bound: f64,
    /// −log p(x) ≈ −log (1/K) Σ_k w_k: the importance-sampled NLL (−L_K).
    pub nll: f64,
}

/// The importance-sampled negative log-likelihood of every example of `loader`, with
/// `config.samples` = K draws from q(z|x) each (5,000 in Burda et al. 2015), and from the
/// same draws the −ELBO and the IWAE bound −L_k for `bound_k` = k. Samples go through the
/// model `config.chunk_size` at a time (rounded down to a multiple of k, at least k) to
/// bound memory. `on_batch(examples)` runs after every batch.
///
/// With log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x):
/// −ELBO ≈ −mean_k log w_k ≥ −L_k ≥ −L_K ≈ −log p(x) (Burda et al. 2015, Theorem 1).
///
/// # Errors
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a bad `config` or `bound_k`
/// outside 1..=K; candle's error if the data does not fit.
pub fn importance_sampled<M: BatchModel + ?Sized, B: BatchSource + ?Sized>(
    vae: &M,
    loader: &B,
    config: &ImportanceSamplingConfig,
    bound_k: usize,
    noise: &mut NoiseSource,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<LikelihoodEstimate> {
    config.validate()?;
    let samples = config.samples;
    ensure(
        bound_k >= 1 && bound_k <= samples,
        "importance_sampled",
        "bound_k",
        bound_k,
        "must be in 1..=samples",
    )?;
    let chunk = config.chunk_size;
    let chunk = (chunk / bound_k).max(1) * bound_k;
    let mut data_noise = noise.substream(1);
    let (mut sum_elbo, mut sum_bound, mut sum_ll) = (0f64, 0f64, 0f64);
    let mut examples = 0;
    for batch in loader.epoch(&mut data_noise, device) {
        let batch = batch?;
        let xs = &batch.images;
        let n = xs.dim(0)?;
        let mut sums = WeightSums::new(n, bound_k, samples);
        let mut done = 0;
        while done < samples {
            let k = chunk.min(samples - done);
            let out = vae.forward_batch(&batch, Some(k), noise, false)?;
            sums.add_chunk(&log_importance_weights(&out, xs)?)?;
            done += k;
        }
        sum_elbo += sums.elbo().iter().sum::<f64>();
        sum_bound += sums.iwae_bound().iter().sum::<f64>();
        sum_ll += sums.log_likelihood().iter().sum::<f64>();
        examples += n;
        on_batch(n);
    }
    let count = examples.max(1) as f64;
    Ok(LikelihoodEstimate {
        examples,
        samples,
        neg_elbo: -sum_elbo / count,
        bound_k,
        neg_iwae_bound: -sum_bound / count,
        nll: -sum_ll / count,
    })
}
