//! The training helpers: resuming from a checkpoint repeats the uninterrupted run
//! exactly; the importance-sampled estimates keep their ordering and agree with
//! `estimate::log_likelihood`.

use anyhow::Result;
use candle_core::{DType, Device};
use candle_vae::data::{Binarization, DataLoader, DataLoaderConfig, Order};
use candle_vae::estimate::log_likelihood;
use candle_vae::train::{
    EpochSummary, Evaluation, Objective, TrainingState, evaluate, importance_sampled, train_epoch,
};
use candle_vae::{
    Adam, AdamConfig, ElboLoss, ElboLossConfig, ImportanceSamplingConfig, KlSchedule, MlpDecoder,
    MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, NoiseSource, ParamStore, Reduction,
    StandardLikelihood, Vae,
};
use candle_vae::{Error, NonFinitePart};

#[path = "common/toy.rs"]
mod toy;
use toy::{bits, candle_vae_on, synthetic};

type MlpVae = Vae<MlpEncoder, MlpDecoder>;

fn model(seed: u64) -> Result<(ParamStore, MlpVae, Adam)> {
    let params = ParamStore::new(seed);
    let vb = params.var_builder(DType::F32, &Device::Cpu);
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(36, &[16], 3), vb.clone())?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(3, &[16], 36), vb)?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
    let adam = Adam::from_store(&params, AdamConfig::new(3e-3))?;
    Ok((params, vae, adam))
}

fn objective() -> Result<Objective> {
    Ok(Objective::Elbo(ElboLoss::new(
        ElboLossConfig::default()
            .with_reduction(Reduction::Sum)
            .with_kl_schedule(KlSchedule::Linear { warmup_steps: 20 }),
    )?))
}

/// One epoch of training and a test pass, as the examples run them.
fn epoch(
    vae: &MlpVae,
    adam: &mut Adam,
    loaders: &(DataLoader, DataLoader),
    state: &mut TrainingState,
) -> Result<(EpochSummary, Evaluation)> {
    let mut summary = train_epoch(
        vae,
        adam,
        &objective()?,
        &loaders.0,
        state,
        &Device::Cpu,
        |_, _| {},
    )?;
    summary.seconds = 0.0; // the only field allowed to differ
    state.epoch += 1;
    let eval = evaluate(
        vae,
        &loaders.1,
        &mut NoiseSource::new(9),
        &Device::Cpu,
        |_| {},
    )?;
    Ok((summary, eval))
}

#[test]
fn resume_reproduces_the_uninterrupted_run() -> Result<()> {
    let data = synthetic(300)?;
    // Shuffled, dynamically binarized training data: both data streams matter.
    let loaders = (
        DataLoader::new(
            data.clone(),
            DataLoaderConfig::new(32).with_binarization(Binarization::Dynamic),
        )?,
        DataLoader::new(
            data,
            DataLoaderConfig::new(64)
                .with_order(Order::Sequential)
                .with_binarization(Binarization::Fixed { seed: 1 }),
        )?,
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run.safetensors");
    let config = "test-config";

    // Two epochs straight.
    let (params, vae, mut adam) = model(5)?;
    let mut state = TrainingState::new(5);
    let straight = [
        epoch(&vae, &mut adam, &loaders, &mut state)?,
        epoch(&vae, &mut adam, &loaders, &mut state)?,
    ];
    let straight_params = params.tensors()?;

    // One epoch, a checkpoint, a fresh process (new objects), resume, one more.
    let (params, vae, mut adam) = model(5)?;
    let mut state = TrainingState::new(5);
    let first = epoch(&vae, &mut adam, &loaders, &mut state)?;
    state.save(&path, &params, &adam, config)?;
    drop((params, vae, adam, state));

    let (params, vae, mut adam) = model(999)?; // other initial weights: all must be restored
    let (mut state, saved): (TrainingState, String) =
        TrainingState::resume(&path, &Device::Cpu, &params, &mut adam)?;
    assert_eq!(saved, config);
    assert_eq!((state.epoch, state.step), (1, 10)); // 300 / 32 → 10 steps
    let second = epoch(&vae, &mut adam, &loaders, &mut state)?;

    assert_eq!(first, straight[0]);
    assert_eq!(second, straight[1]);
    // The parameters agree bit for bit.
    for (name, tensor) in params.tensors()? {
        let a = tensor.flatten_all()?.to_vec1::<f32>()?;
        let b = straight_params[&name].flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b, "parameter {name}");
    }
    // And training did something: the second epoch's loss is lower than the first's.
    assert!(
        second.0.neg_elbo < first.0.neg_elbo,
        "{} vs {}",
        second.0.neg_elbo,
        first.0.neg_elbo
    );
    Ok(())
}

#[test]
fn resume_refuses_a_checkpoint_of_another_model() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run.safetensors");
    let (params, _vae, adam) = model(1)?;
    TrainingState::new(1).save(&path, &params, &adam, &1u32)?;

    let other = ParamStore::new(1);
    let vb = other.var_builder(DType::F32, &Device::Cpu);
    let _enc = MlpEncoder::new(&MlpEncoderConfig::new(36, &[8], 3), vb.clone())?;
    let _dec = MlpDecoder::new(&MlpDecoderConfig::new(3, &[8], 36), vb)?;
    let before = other.tensors()?;
    let mut adam = Adam::from_store(&other, AdamConfig::new(1e-3))?;
    let result = TrainingState::resume::<u32, _, _>(&path, &Device::Cpu, &other, &mut adam);
    assert!(
        matches!(result, Err(candle_vae::Error::TensorShape { .. })),
        "{result:?}"
    );
    // Nothing was changed.
    for (name, tensor) in other.tensors()? {
        assert_eq!(
            tensor.flatten_all()?.to_vec1::<f32>()?,
            before[&name].flatten_all()?.to_vec1::<f32>()?
        );
    }
    Ok(())
}

#[test]
fn importance_sampling_orders_the_bounds_and_matches_log_likelihood() -> Result<()> {
    let data = synthetic(300)?.take(40);
    let loader = DataLoader::new(
        data.clone(),
        DataLoaderConfig::new(40)
            .with_order(Order::Sequential)
            .with_binarization(Binarization::Threshold(0.5)),
    )?;
    let (_params, vae, _adam) = model(3)?;
    let config = ImportanceSamplingConfig::new(200).with_chunk_size(50);
    let estimate = importance_sampled(
        &vae,
        &loader,
        &config,
        5,
        &mut NoiseSource::new(4),
        &Device::Cpu,
        |_| {},
    )?;
    // Burda et al. (2015), Theorem 1: −ELBO ≥ −L_5 ≥ −L_200, each an average over the
    // same 200 draws per example.
    assert!(estimate.neg_elbo > estimate.neg_iwae_bound);
    assert!(estimate.neg_iwae_bound > estimate.nll);
    assert_eq!((estimate.examples, estimate.samples), (40, 200));

    // The same draws through estimate::log_likelihood (one batch, same chunks) give the
    // same NLL up to floating-point rounding.
    let xs = loader.dataset().to_tensor(
        &(0..40).collect::<Vec<_>>(),
        Default::default(),
        DType::F32,
        &Device::Cpu,
    )?;
    let ll = log_likelihood(&vae, &xs, &config, &mut NoiseSource::new(4))?;
    let nll = -ll.mean_all()?.to_scalar::<f64>()?;
    assert!(
        (nll - estimate.nll).abs() < 1e-9 * nll.abs(),
        "{nll} vs {}",
        estimate.nll
    );

    // With k = K the IWAE bound is the NLL estimate itself.
    let same = importance_sampled(
        &vae,
        &loader,
        &config,
        200,
        &mut NoiseSource::new(4),
        &Device::Cpu,
        |_| {},
    )?;
    assert!((same.neg_iwae_bound - same.nll).abs() < 1e-9 * same.nll.abs());
    // With k = 1 it is the ELBO estimate.
    let one = importance_sampled(
        &vae,
        &loader,
        &config,
        1,
        &mut NoiseSource::new(4),
        &Device::Cpu,
        |_| {},
    )?;
    assert!((one.neg_iwae_bound - one.neg_elbo).abs() < 1e-9 * one.neg_elbo.abs());
    Ok(())
}

#[test]
fn iwae_objective_trains() -> Result<()> {
    let loader = DataLoader::new(
        synthetic(300)?,
        DataLoaderConfig::new(50).with_binarization(Binarization::Threshold(0.5)),
    )?;
    let (_params, vae, mut adam) = model(2)?;
    let mut state = TrainingState::new(2);
    let iwae = Objective::Iwae {
        samples: 5,
        reduction: Reduction::Sum,
    };
    let first = train_epoch(
        &vae,
        &mut adam,
        &iwae,
        &loader,
        &mut state,
        &Device::Cpu,
        |_, _| {},
    )?;
    let mut last = first.clone();
    for _ in 0..4 {
        last = train_epoch(
            &vae,
            &mut adam,
            &iwae,
            &loader,
            &mut state,
            &Device::Cpu,
            |_, _| {},
        )?;
    }
    // −L_5 ≤ the 5-sample average −ELBO on every batch, so on the epoch too.
    assert!(last.loss <= last.neg_elbo + 1e-9);
    assert!(
        last.loss < first.loss - 1.0,
        "{} vs {}",
        last.loss,
        first.loss
    );
    assert_eq!(state.step, 5 * 6);
    Ok(())
}

/// Sets parameter `name` of `params` to `value` everywhere.
fn poison(params: &ParamStore, name: &str, value: f32) -> Result<()> {
    let (_, var) = params
        .named_vars()?
        .into_iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| anyhow::anyhow!("no parameter {name}"))?;
    var.set(&var.as_tensor().ones_like()?.affine(0.0, f64::from(value))?)?;
    Ok(())
}

#[test]
fn a_non_finite_loss_stops_training_before_the_step_naming_epoch_step_and_part() -> Result<()> {
    let loader = DataLoader::new(synthetic(300)?, DataLoaderConfig::new(32))?;
    // fc4 is the decoder's output layer: a NaN bias makes the reconstruction term NaN and
    // leaves the KL finite. fc21 is the posterior mean: μ = 10³⁰ makes the KL overflow
    // (μ²/2 > f32::MAX) while the reconstruction stays finite.
    for (name, value, part, typed) in [
        (
            "fc4.bias",
            f32::NAN,
            "reconstruction",
            NonFinitePart::Reconstruction,
        ),
        ("fc21.bias", 1e30, "KL", NonFinitePart::Kl),
    ] {
        let (params, vae, mut adam) = model(1)?;
        let mut state = TrainingState::new(1);
        // One good epoch first, so the failure is at epoch 2, step 11 (10 steps an epoch).
        train_epoch(
            &vae,
            &mut adam,
            &objective()?,
            &loader,
            &mut state,
            &Device::Cpu,
            |_, _| {},
        )?;
        state.epoch += 1;
        poison(&params, name, value)?;
        let before = bits(&params)?;
        let result = train_epoch(
            &vae,
            &mut adam,
            &objective()?,
            &loader,
            &mut state,
            &Device::Cpu,
            |_, _| {},
        );
        let err = match result {
            Ok(summary) => anyhow::bail!("{name} = {value}: trained through it: {summary:?}"),
            Err(err) => err,
        };
        let message = err.to_string();
        for needle in ["epoch 2", "step 11", part] {
            anyhow::ensure!(message.contains(needle), "`{needle}` not in: {message}");
        }
        match err {
            Error::NonFinite {
                epoch: 2,
                step: 11,
                part,
                value: found,
            } => {
                assert_eq!(part, typed);
                anyhow::ensure!(!found.is_finite(), "reported value {found}");
            }
            other => anyhow::bail!("expected Error::NonFinite at epoch 2, step 11, got {other:?}"),
        }
        anyhow::ensure!(
            bits(&params)? == before,
            "{name} = {value}: the step was taken"
        );
        assert_eq!(state.step, 10, "the refused step is not counted");
    }
    Ok(())
}

#[test]
fn a_bad_learning_rate_or_gradient_inside_train_epoch_is_typed_and_takes_no_step() -> Result<()> {
    let loader = DataLoader::new(synthetic(300)?, DataLoaderConfig::new(32))?;
    // The crate's own setter refuses at once; the candle trait's cannot, so the next
    // step does, and train_epoch passes on the typed error.
    let (params, vae, mut adam) = model(1)?;
    match adam.try_set_learning_rate(f64::NAN) {
        Err(Error::InvalidConfig { field: "lr", .. }) => {}
        other => anyhow::bail!("expected InvalidConfig for lr, got {other:?}"),
    }
    assert_eq!(adam.config().lr, 3e-3, "a refused rate was kept");
    candle_nn::Optimizer::set_learning_rate(&mut adam, -1.0);
    let before = bits(&params)?;
    let mut state = TrainingState::new(1);
    let result = train_epoch(
        &vae,
        &mut adam,
        &objective()?,
        &loader,
        &mut state,
        &Device::Cpu,
        |_, _| {},
    );
    match result {
        Err(Error::InvalidConfig {
            field: "lr", value, ..
        }) => assert_eq!(value, "-1.0"),
        other => anyhow::bail!("expected InvalidConfig for lr, got {other:?}"),
    }
    anyhow::ensure!(bits(&params)? == before, "a step was taken");
    assert_eq!(state.step, 0);

    // A finite loss with an infinite gradient: with log σ² = 84 the KL term
    // ½Σ(σ² − log σ² − 1 + μ²) ≈ 96 · 1.5·10³⁶ stays below f32::MAX, but its gradient
    // with respect to the fc22 weights, Σ_n h_n · ½(σ² − 1), sums 32 hidden activations
    // of ~10² (fc1's weights set to 10) and overflows. No NaN may reach the parameters.
    let (params, vae, mut adam) = model(1)?;
    poison(&params, "fc22.bias", 84.0)?;
    poison(&params, "fc1.weight", 10.0)?;
    let before = bits(&params)?;
    let mut state = TrainingState::new(1);
    let plain = Objective::Elbo(ElboLoss::new(
        ElboLossConfig::default().with_reduction(Reduction::Sum),
    )?);
    let result = train_epoch(
        &vae,
        &mut adam,
        &plain,
        &loader,
        &mut state,
        &Device::Cpu,
        |_, _| {},
    );
    match result {
        Err(Error::NonFinite {
            epoch: 1,
            step: 1,
            part: NonFinitePart::Gradient { parameter },
            ..
        }) => anyhow::ensure!(parameter.starts_with("fc"), "parameter {parameter}"),
        other => anyhow::bail!("expected a non-finite gradient at epoch 1, step 1, got {other:?}"),
    }
    anyhow::ensure!(bits(&params)? == before, "a step was taken");
    Ok(())
}

// ---- candle's own parts: VarMap, candle_nn layers, any Optimizer ----------------------

/// Trains `epochs` epochs of a candle_nn VAE on a VarMap with `make_optimizer`, resuming
/// from a checkpoint into a fresh VarMap (and a fresh optimiser) after `stop_after`, and
/// returns the final parameters' bits.
fn varmap_run<O, F>(
    make_optimizer: F,
    epochs: usize,
    stop_after: Option<usize>,
) -> Result<Vec<(String, Vec<u32>)>>
where
    O: candle_nn::Optimizer + candle_vae::OptimizerState,
    F: Fn(&candle_nn::VarMap) -> Result<O>,
{
    let dir = std::env::temp_dir().join(format!(
        "candle-vae-varmap-{}-{}",
        std::process::id(),
        stop_after.unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("run.safetensors");
    let loader = DataLoader::new(synthetic(300)?, DataLoaderConfig::new(32))?;
    let varmap = candle_nn::VarMap::new();
    let mut vae = candle_vae_on(&varmap, 21)?; // the same start for every run
    let mut opt = make_optimizer(&varmap)?;
    let mut state = TrainingState::new(9);
    let objective = objective()?;
    let mut live = varmap;
    for e in 0..epochs {
        train_epoch(
            &vae,
            &mut opt,
            &objective,
            &loader,
            &mut state,
            &Device::Cpu,
            |_, _| {},
        )?;
        state.epoch += 1;
        if stop_after == Some(e + 1) {
            state.save(&path, &live, &opt, "config")?;
            // A fresh process: new VarMap (random values), new optimiser, then resume.
            let fresh = candle_nn::VarMap::new();
            vae = candle_vae_on(&fresh, 99)?;
            opt = make_optimizer(&fresh)?;
            let (resumed, config): (TrainingState, String) =
                TrainingState::resume(&path, &Device::Cpu, &fresh, &mut opt)?;
            anyhow::ensure!(
                config == "config" && resumed.epoch == e + 1,
                "resumed {config} at {}",
                resumed.epoch
            );
            state = resumed;
            live = fresh;
        }
    }
    std::fs::remove_dir_all(&dir)?;
    bits(&live)
}

#[test]
fn a_varmap_model_of_candle_nn_layers_resumes_bit_for_bit() -> Result<()> {
    // The crate's Adam (here as AdamW: decoupled weight decay) on a candle VarMap, and
    // candle's own SGD; both through train_epoch, checkpoint and resume.
    let adamw = |vm: &candle_nn::VarMap| -> Result<Adam> {
        Ok(Adam::from_varmap(
            vm,
            AdamConfig::new(1e-2).with_weight_decay(0.01, candle_vae::WeightDecay::Decoupled),
        )?)
    };
    let straight = varmap_run(adamw, 4, None)?;
    let resumed = varmap_run(adamw, 4, Some(2))?;
    anyhow::ensure!(straight == resumed, "Adam on a VarMap: resumed run differs");
    let sgd = |vm: &candle_nn::VarMap| -> Result<candle_nn::SGD> {
        use candle_nn::Optimizer;
        Ok(candle_nn::SGD::new(vm.all_vars(), 5e-4)?)
    };
    let straight = varmap_run(sgd, 3, None)?;
    let resumed = varmap_run(sgd, 3, Some(1))?;
    anyhow::ensure!(straight == resumed, "SGD on a VarMap: resumed run differs");
    // And the resumed parameters are trained, not the initial ones.
    let untrained = varmap_run(sgd, 0, None)?;
    anyhow::ensure!(untrained != straight, "SGD did not move the parameters");
    Ok(())
}

#[test]
fn candle_adamw_trains_through_train_epoch() -> Result<()> {
    use candle_nn::Optimizer;
    let loader = DataLoader::new(synthetic(300)?, DataLoaderConfig::new(32))?;
    let varmap = candle_nn::VarMap::new();
    let vae = candle_vae_on(&varmap, 21)?;
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )?;
    let mut state = TrainingState::new(3);
    let objective = objective()?;
    let first = train_epoch(
        &vae,
        &mut opt,
        &objective,
        &loader,
        &mut state,
        &Device::Cpu,
        |_, _| {},
    )?;
    let mut last = first.clone();
    for _ in 0..5 {
        last = train_epoch(
            &vae,
            &mut opt,
            &objective,
            &loader,
            &mut state,
            &Device::Cpu,
            |_, _| {},
        )?;
    }
    anyhow::ensure!(
        last.neg_elbo < first.neg_elbo - 1.0,
        "AdamW: −ELBO {} → {}",
        first.neg_elbo,
        last.neg_elbo
    );
    Ok(())
}
