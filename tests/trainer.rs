//! The library's `Trainer`: a run stopped and resumed from its checkpoint (into a fresh
//! `VarMap` and a fresh optimiser) ends with the uninterrupted run's parameters and
//! history bit for bit; a changed setting is named on resume; a diverging run or a
//! failing hook keeps the last good checkpoint; the hooks see every example; the
//! learning-rate schedule reaches the optimiser.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use candle_vae::data::{DataLoader, DataLoaderConfig, Order};
use candle_vae::train::{
    EpochRecord, LearningRateSchedule, Objective, Trainer, TrainerConfig, TrainerHooks,
    TrainingState,
};
#[path = "common/toy.rs"]
mod toy;
use toy::{Bits, bits, candle_vae_on, synthetic};

use candle_vae::{
    Adam, AdamConfig, ElboLoss, ElboLossConfig, Error, NoiseSource, Parameters, Reduction, Vae,
    WeightDecay,
};

fn loaders() -> Result<(DataLoader, DataLoader)> {
    let data = synthetic(200)?;
    Ok((
        DataLoader::new(data.clone(), DataLoaderConfig::new(32))?,
        DataLoader::new(
            data,
            DataLoaderConfig::new(50).with_order(Order::Sequential),
        )?,
    ))
}

fn adamw(varmap: &VarMap) -> Result<Adam> {
    Ok(Adam::from_varmap(
        varmap,
        AdamConfig::new(1e-2).with_weight_decay(0.01, WeightDecay::Decoupled),
    )?)
}

fn objective() -> Result<Objective> {
    Ok(Objective::Elbo(ElboLoss::new(
        ElboLossConfig::default().with_reduction(Reduction::Sum),
    )?))
}

/// The history with the wall-clock fields, the only ones allowed to differ, zeroed.
fn timeless(history: &[EpochRecord]) -> Vec<EpochRecord> {
    history
        .iter()
        .map(|r| EpochRecord {
            seconds: 0.0,
            images_per_sec: 0.0,
            ..r.clone()
        })
        .collect()
}

fn config(epochs: usize, dir: &Path) -> TrainerConfig {
    TrainerConfig::new(epochs, 11)
        .with_checkpoint(dir.join("run.safetensors"))
        .with_history_csv(dir.join("history.csv"))
}

/// Trains `epochs` epochs in one go, or stops after `stop` and resumes in a "new process"
/// (a fresh VarMap of other random values, a fresh optimiser, a fresh Trainer).
fn run(epochs: usize, stop: Option<usize>, dir: &Path) -> Result<(Bits, Vec<EpochRecord>)> {
    let (train, test) = loaders()?;
    let varmap = VarMap::new();
    let vae = candle_vae_on(&varmap, 5)?;
    let first = stop.unwrap_or(epochs);
    let mut trainer = Trainer::new(
        &vae,
        &varmap,
        adamw(&varmap)?,
        objective()?,
        train.clone(),
        test.clone(),
        config(first, dir),
    )?
    .with_run_config(&("latent", 3))?;
    trainer.fit(&mut ())?;
    if stop.is_none() {
        return Ok((bits(&varmap)?, trainer.state().history.clone()));
    }
    let fresh = VarMap::new();
    let vae = candle_vae_on(&fresh, 99)?;
    let mut trainer = Trainer::new(
        &vae,
        &fresh,
        adamw(&fresh)?,
        objective()?,
        train,
        test,
        config(epochs, dir),
    )?
    .with_run_config(&("latent", 3))?;
    trainer.resume(dir.join("run.safetensors"), &Device::Cpu)?;
    anyhow::ensure!(
        trainer.state().epoch == first,
        "resumed at {}",
        trainer.state().epoch
    );
    trainer.fit(&mut ())?;
    Ok((bits(&fresh)?, trainer.state().history.clone()))
}

#[test]
fn a_resumed_varmap_run_repeats_the_uninterrupted_one_bit_for_bit() -> Result<()> {
    let straight_dir = tempfile::tempdir()?;
    let resumed_dir = tempfile::tempdir()?;
    let (straight, straight_history) = run(4, None, straight_dir.path())?;
    let (resumed, resumed_history) = run(4, Some(2), resumed_dir.path())?;
    anyhow::ensure!(straight == resumed, "the resumed parameters differ");
    anyhow::ensure!(
        timeless(&straight_history) == timeless(&resumed_history),
        "the resumed history differs:\n{straight_history:?}\n{resumed_history:?}"
    );
    anyhow::ensure!(
        straight_history.len() == 4,
        "{} epochs",
        straight_history.len()
    );
    // Training moved the parameters and lowered the loss.
    anyhow::ensure!(
        straight_history[3].train_neg_elbo < straight_history[0].train_neg_elbo - 1.0,
        "−ELBO {} → {}",
        straight_history[0].train_neg_elbo,
        straight_history[3].train_neg_elbo
    );
    // The CSV holds the same numbers, one row per epoch.
    let csv = std::fs::read_to_string(resumed_dir.path().join("history.csv"))?;
    let rows: Vec<&str> = csv.lines().collect();
    anyhow::ensure!(rows.len() == 5, "{} lines", rows.len());
    for (row, record) in rows[1..].iter().zip(&resumed_history) {
        let fields: Vec<f64> = row.split(',').map(str::parse).collect::<Result<_, _>>()?;
        anyhow::ensure!(
            fields[0] == record.epoch as f64
                && fields[1] == record.train_neg_elbo
                && fields[2] == record.test_neg_elbo
                && fields[5] == record.active_units as f64,
            "row {row} for {record:?}"
        );
    }
    Ok(())
}

#[test]
fn resume_names_the_setting_that_changed_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (train, test) = loaders()?;
    let varmap = VarMap::new();
    let vae = candle_vae_on(&varmap, 5)?;
    let settings = serde_json::json!({"model": {"latent": 3, "hidden": [16]}, "seed": 11});
    let mut trainer = Trainer::new(
        &vae,
        &varmap,
        adamw(&varmap)?,
        objective()?,
        train.clone(),
        test.clone(),
        config(1, dir.path()),
    )?
    .with_run_config(&settings)?;
    trainer.fit(&mut ())?;

    let fresh = VarMap::new();
    let vae = candle_vae_on(&fresh, 99)?;
    let before = bits(&fresh)?;
    let changed = serde_json::json!({"model": {"latent": 2, "hidden": [16]}, "seed": 11});
    let mut trainer = Trainer::new(
        &vae,
        &fresh,
        adamw(&fresh)?,
        objective()?,
        train,
        test,
        config(2, dir.path()),
    )?
    .with_run_config(&changed)?;
    match trainer.resume(dir.path().join("run.safetensors"), &Device::Cpu) {
        Err(Error::RunConfigMismatch { differences, .. }) => anyhow::ensure!(
            differences == ["model.latent: saved 3, now 2"],
            "{differences:?}"
        ),
        other => anyhow::bail!("expected RunConfigMismatch, got {other:?}"),
    }
    anyhow::ensure!(
        bits(&fresh)? == before,
        "a refused resume changed the parameters"
    );
    anyhow::ensure!(
        trainer.state().epoch == 0,
        "a refused resume changed the state"
    );
    Ok(())
}

/// Hooks that count what they see and may fail or poison a parameter.
#[derive(Default)]
struct Recorder {
    epochs_started: Vec<(usize, usize)>,
    trained: usize,
    evaluated: usize,
    ended: Vec<usize>,
    stopped: Option<Option<usize>>,
    fail_after: Option<usize>,
}

impl<M: ?Sized> TrainerHooks<M> for Recorder {
    fn on_epoch_start(&mut self, epoch: usize, examples: usize) {
        self.epochs_started.push((epoch, examples));
    }
    fn on_train_batch(&mut self, examples: usize, loss: f64) {
        assert!(loss.is_finite());
        self.trained += examples;
    }
    fn on_evaluation_batch(&mut self, examples: usize) {
        self.evaluated += examples;
    }
    fn on_epoch_end(
        &mut self,
        _model: &M,
        record: &EpochRecord,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.ended.push(record.epoch);
        if self.fail_after == Some(record.epoch) {
            return Err("the picture could not be drawn".into());
        }
        Ok(())
    }
    fn on_stop(&mut self, _error: &Error, kept: Option<usize>) {
        self.stopped = Some(kept);
    }
}

#[test]
fn hooks_see_every_example_and_a_failing_hook_stops_after_the_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (train, test) = loaders()?;
    let varmap = VarMap::new();
    let vae = candle_vae_on(&varmap, 5)?;
    let mut trainer = Trainer::new(
        &vae,
        &varmap,
        adamw(&varmap)?,
        objective()?,
        train,
        test,
        config(3, dir.path()),
    )?;
    let mut hooks = Recorder {
        fail_after: Some(2),
        ..Recorder::default()
    };
    match trainer.fit(&mut hooks) {
        Err(Error::Hook { epoch: 2, source }) => anyhow::ensure!(
            source.to_string() == "the picture could not be drawn",
            "{source}"
        ),
        other => anyhow::bail!("expected Error::Hook after epoch 2, got {other:?}"),
    }
    anyhow::ensure!(
        hooks.epochs_started == [(1, 200), (2, 200)]
            && hooks.trained == 400
            && hooks.evaluated == 400
            && hooks.ended == [1, 2]
            && hooks.stopped == Some(Some(2)),
        "started {:?}, trained {}, evaluated {}, ended {:?}, stopped {:?}",
        hooks.epochs_started,
        hooks.trained,
        hooks.evaluated,
        hooks.ended,
        hooks.stopped
    );
    // The checkpoint of epoch 2 was written before the hook ran.
    let (state, _): (TrainingState, serde_json::Value) = TrainingState::resume(
        dir.path().join("run.safetensors"),
        &Device::Cpu,
        &varmap,
        &mut adamw(&varmap)?,
    )?;
    anyhow::ensure!(
        state.epoch == 2,
        "the checkpoint holds epoch {}",
        state.epoch
    );
    Ok(())
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (train, test) = loaders()?;
    let varmap = VarMap::new();
    let vae = candle_vae_on(&varmap, 5)?;
    let mut trainer = Trainer::new(
        &vae,
        &varmap,
        adamw(&varmap)?,
        objective()?,
        train,
        test,
        config(1, dir.path()),
    )?;
    trainer.fit(&mut ())?;
    let path = dir.path().join("run.safetensors");
    let good = std::fs::read(&path)?;
    // Poison one weight: the next step's loss is NaN.
    let (name, var) = varmap
        .named_parameters()?
        .into_iter()
        .find(|(name, _)| name == "dec.fc2.weight")
        .ok_or_else(|| anyhow::anyhow!("no dec.fc2.weight"))?;
    let poisoned = var.as_tensor().ones_like()?.affine(0.0, f64::NAN)?;
    var.set(&poisoned)?;
    trainer.config_mut().epochs = 2;
    let mut hooks = Recorder::default();
    match trainer.fit(&mut hooks) {
        Err(Error::NonFinite { epoch: 2, step, .. }) => {
            anyhow::ensure!(step == 8, "stopped at step {step} ({name})")
        }
        other => anyhow::bail!("expected NonFinite at epoch 2, got {other:?}"),
    }
    anyhow::ensure!(hooks.stopped == Some(Some(1)), "{:?}", hooks.stopped);
    anyhow::ensure!(
        std::fs::read(&path)? == good,
        "the good checkpoint was overwritten"
    );
    anyhow::ensure!(
        trainer.state().epoch == 1,
        "epoch {}",
        trainer.state().epoch
    );
    Ok(())
}

#[test]
fn the_learning_rate_schedule_reaches_the_optimiser_and_is_validated() -> Result<()> {
    let (train, test) = loaders()?;
    let varmap = VarMap::new();
    let vae = candle_vae_on(&varmap, 5)?;
    let schedule = LearningRateSchedule::Burda { initial: 1e-2 };
    let sgd = candle_nn::SGD::new(varmap.all_vars(), 1.0)?;
    let mut trainer = Trainer::new(
        &vae,
        &varmap,
        sgd,
        objective()?,
        train.clone(),
        test.clone(),
        TrainerConfig::new(2, 1).with_learning_rate(schedule),
    )?;
    trainer.fit(&mut ())?;
    // Epoch 2 is in Burda's stage 1: 1e-2 · 10^(−1/7).
    let expected = 1e-2 * 10f64.powf(-1.0 / 7.0);
    anyhow::ensure!(
        trainer.optimizer().learning_rate() == expected,
        "lr {} after epoch 2, expected {expected}",
        trainer.optimizer().learning_rate()
    );
    let sgd = candle_nn::SGD::new(varmap.all_vars(), 1.0)?;
    let bad = TrainerConfig::new(2, 1).with_learning_rate(LearningRateSchedule::Constant(-1.0));
    match Trainer::new(&vae, &varmap, sgd, objective()?, train, test, bad) {
        Err(Error::InvalidConfig {
            field: "learning_rate",
            ..
        }) => Ok(()),
        Err(other) => anyhow::bail!("expected InvalidConfig, got {other}"),
        Ok(_) => anyhow::bail!("a negative learning rate was accepted"),
    }
}

/// 120 cells × 8 genes of Poisson counts whose rates follow two programmes.
fn counts() -> Result<Tensor> {
    let mut noise = NoiseSource::new(17);
    let u = noise
        .uniform((120, 8), DType::F32, &Device::Cpu)?
        .to_vec2::<f32>()?;
    let rows: Vec<f32> = u
        .iter()
        .enumerate()
        .flat_map(|(cell, row)| {
            row.iter()
                .enumerate()
                .map(move |(gene, &v)| {
                    let rate: f32 = if (cell % 2 == 0) == (gene < 4) {
                        6.0
                    } else {
                        0.5
                    };
                    // A Poisson draw by inversion of its CDF at v.
                    let (mut k, mut p) = (0f32, (-rate).exp());
                    let mut cdf = p;
                    while v > cdf && k < 60.0 {
                        k += 1.0;
                        p *= rate / k;
                        cdf += p;
                    }
                    k
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(Tensor::from_vec(rows, (120, 8), &Device::Cpu)?)
}

/// Trains a Poisson VAE on a `TensorLoader` of counts, stopping after `stop` epochs and
/// resuming into a fresh ParamStore of another seed when asked.
fn count_run(stop: Option<usize>, dir: &Path) -> Result<Bits> {
    use candle_vae::data::TensorLoader;
    use candle_vae::{
        MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, ParamStore, Poisson,
    };
    let data = counts()?;
    let train = TensorLoader::new(data.clone(), None, 16, Order::Shuffled)?;
    let test = TensorLoader::new(data, None, 40, Order::Sequential)?;
    let build = |seed: u64| -> Result<(ParamStore, Vae<MlpEncoder, MlpDecoder, Poisson>)> {
        let params = ParamStore::new(seed);
        let vb = params.var_builder(DType::F32, &Device::Cpu);
        let enc = MlpEncoder::new(&MlpEncoderConfig::new(8, &[16], 2), vb.pp("enc"))?;
        let dec = MlpDecoder::new(&MlpDecoderConfig::new(2, &[16], 8), vb.pp("dec"))?;
        Ok((params, Vae::new(enc, dec, Poisson)?))
    };
    let config =
        |epochs| TrainerConfig::new(epochs, 4).with_checkpoint(dir.join("counts.safetensors"));
    let (params, vae) = build(1)?;
    let adam = Adam::from_store(&params, AdamConfig::new(1e-2))?;
    let mut trainer = Trainer::new(
        &vae,
        &params,
        adam,
        objective()?,
        train.clone(),
        test.clone(),
        config(stop.unwrap_or(4)),
    )?;
    trainer.fit(&mut ())?;
    let history = trainer.state().history.clone();
    anyhow::ensure!(
        history.last().map(|r| r.train_neg_elbo) < history.first().map(|r| r.train_neg_elbo),
        "the Poisson VAE did not learn: {history:?}"
    );
    if stop.is_none() {
        return bits(&params);
    }
    let (fresh, vae) = build(2)?;
    let adam = Adam::from_store(&fresh, AdamConfig::new(1e-2))?;
    let mut trainer = Trainer::new(&vae, &fresh, adam, objective()?, train, test, config(4))?;
    trainer.resume(dir.join("counts.safetensors"), &Device::Cpu)?;
    trainer.fit(&mut ())?;
    bits(&fresh)
}

#[test]
fn a_count_model_on_a_tensor_loader_trains_and_resumes_bit_for_bit() -> Result<()> {
    let straight_dir = tempfile::tempdir()?;
    let resumed_dir = tempfile::tempdir()?;
    let straight = count_run(None, straight_dir.path())?;
    let resumed = count_run(Some(2), resumed_dir.path())?;
    anyhow::ensure!(straight == resumed, "the resumed count model differs");
    Ok(())
}
