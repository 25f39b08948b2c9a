//! Checkpoints: round trips, typed errors that name the tensor and leave the model alone,
//! optimiser state that resumes training bit for bit, atomic saves, and loading a PyTorch
//! `state_dict` of the pytorch/examples VAE.

mod common;

use std::collections::HashMap;

use anyhow::{Result, bail, ensure};
use candle_core::{DType, Module, Tensor};
use candle_vae::{
    Adam, AdamConfig, Checkpoint, ElboLoss, ElboLossConfig, Encoder, Error, MlpDecoder,
    MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, NoiseSource, NoiseState, ParamStore, Reduction,
    StandardLikelihood, Vae,
};
use common::{
    CPU, Snapshot, TempDir, assert_all_close, assert_bit_identical, assert_close,
    assert_same_snapshot, mlp_vae, scalar, snapshot, tensor, values,
};

type MlpVae = Vae<MlpEncoder, MlpDecoder>;

fn model(seed: u64) -> Result<(ParamStore, MlpVae)> {
    let store = ParamStore::new(seed);
    let vae = mlp_vae(
        &store,
        10,
        &[8],
        3,
        StandardLikelihood::Bernoulli,
        DType::F32,
    )?;
    Ok((store, vae))
}

fn data() -> Result<Tensor> {
    Ok(NoiseSource::new(77).uniform((16, 10), DType::F32, &CPU)?)
}

/// Encoder mean, log-variance and decoder output on fixed inputs.
fn outputs(vae: &MlpVae) -> Result<Vec<Tensor>> {
    let xs = data()?;
    let q = vae.encode(&xs)?;
    let z = NoiseSource::new(78).standard_normal((16, 3), DType::F32, &CPU)?;
    Ok(vec![q.mean().clone(), q.log_var().clone(), vae.decode(&z)?])
}

#[test]
fn save_load_round_trip_gives_identical_outputs() -> Result<()> {
    let dir = TempDir::new("round-trip")?;
    let path = dir.path().join("model.safetensors");
    let (store, vae) = model(1)?;
    let mut checkpoint = Checkpoint::from_params(&store)?;
    checkpoint.set_json("encoder", vae.encoder().config())?;
    checkpoint.save(&path)?;

    let (fresh_store, fresh) = model(2)?;
    let before = outputs(&fresh)?;
    let loaded = Checkpoint::load(&path, &CPU)?;
    loaded.restore(&fresh_store)?;
    for (i, (a, b)) in outputs(&vae)?.iter().zip(outputs(&fresh)?).enumerate() {
        assert_bit_identical(&format!("output {i}"), a, &b)?;
    }
    // The fresh model really started elsewhere.
    ensure!(
        values(&before[0])? != values(&outputs(&vae)?[0])?,
        "seeds 1 and 2 gave the same model"
    );
    // Metadata comes back too.
    let config: MlpEncoderConfig = loaded.json("encoder")?;
    assert_eq!(&config, vae.encoder().config());
    assert_eq!(loaded.source(), path.as_path());
    Ok(())
}

/// The last parameter name in sorted order: restore visits it last, so a restore that
/// wrote as it went would already have changed every other tensor.
const LAST: &str = "enc.fc22.weight";

#[test]
fn wrong_shape_is_an_error_naming_the_tensor_and_changes_nothing() -> Result<()> {
    let dir = TempDir::new("wrong-shape")?;
    let path = dir.path().join("bad.safetensors");
    let (source, _) = model(1)?;
    let names: Vec<String> = source.named_vars()?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.last().map(String::as_str), Some(LAST));
    let mut checkpoint = Checkpoint::from_params(&source)?;
    checkpoint.insert(LAST, Tensor::zeros((3, 7), DType::F32, &CPU)?);
    checkpoint.save(&path)?;

    let (target, _) = model(2)?;
    let before = snapshot(&target)?;
    match Checkpoint::load(&path, &CPU)?.restore(&target) {
        Err(Error::TensorShape {
            path: p,
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, LAST);
            assert_eq!(expected, vec![3, 8]);
            assert_eq!(found, vec![3, 7]);
            assert_eq!(p, path);
        }
        other => bail!("expected Error::TensorShape, got {other:?}"),
    }
    let err = Checkpoint::load(&path, &CPU)?
        .restore(&target)
        .err()
        .ok_or_else(|| anyhow::anyhow!("no error"))?;
    let msg = err.to_string();
    ensure!(
        msg.contains(LAST) && msg.contains("[3, 7]") && msg.contains("[3, 8]"),
        "message: {msg}"
    );
    assert_same_snapshot("store after a failed restore", &before, &snapshot(&target)?)?;
    Ok(())
}

#[test]
fn missing_tensor_is_an_error_naming_it_and_changes_nothing() -> Result<()> {
    let dir = TempDir::new("missing")?;
    let path = dir.path().join("partial.safetensors");
    let (source, _) = model(1)?;
    let mut partial = Checkpoint::new();
    for (name, tensor) in Checkpoint::from_params(&source)?.tensors() {
        if name != LAST {
            partial.insert(name.clone(), tensor.clone());
        }
    }
    partial.save(&path)?;
    let (target, _) = model(2)?;
    let before = snapshot(&target)?;
    let err = Checkpoint::load(&path, &CPU)?
        .restore(&target)
        .err()
        .ok_or_else(|| anyhow::anyhow!("no error"))?;
    ensure!(err.to_string().contains(LAST), "message: {err}");
    match err {
        Error::MissingTensor { name, path: p } => {
            assert_eq!(name, LAST);
            assert_eq!(p, path);
        }
        other => bail!("expected Error::MissingTensor, got {other:?}"),
    }
    assert_same_snapshot("store after a failed restore", &before, &snapshot(&target)?)?;
    // Missing metadata is a typed error naming the key.
    match Checkpoint::load(&path, &CPU)?.json::<MlpEncoderConfig>("encoder") {
        Err(Error::Metadata { key, .. }) => assert_eq!(key, "encoder"),
        other => bail!("expected Error::Metadata, got {other:?}"),
    }
    // A file that is not there is an I/O error naming it.
    match Checkpoint::load(dir.path().join("nope.safetensors"), &CPU) {
        Err(Error::Io { path: p, .. }) => ensure!(p.ends_with("nope.safetensors")),
        other => bail!("expected Error::Io, got {other:?}"),
    }
    Ok(())
}

/// `steps` Adam steps on the fixed batch; the losses as bits.
fn train(vae: &MlpVae, opt: &mut Adam, noise: &mut NoiseSource, steps: usize) -> Result<Vec<u32>> {
    let xs = data()?;
    let loss = ElboLoss::new(ElboLossConfig::default())?;
    let mut losses = Vec::new();
    for _ in 0..steps {
        let out = vae.forward_t(&xs, noise, true)?;
        let elbo = loss.forward(&out, &xs)?;
        losses.push(elbo.loss.to_scalar::<f32>()?.to_bits());
        opt.backward_step(&elbo.loss)?;
    }
    Ok(losses)
}

#[test]
fn optimizer_and_noise_state_resume_training_bit_for_bit() -> Result<()> {
    let dir = TempDir::new("resume")?;
    let path = dir.path().join("step5.safetensors");
    let config = AdamConfig::new(1e-2);

    // Ten steps straight.
    let (store, vae) = model(1)?;
    let mut opt = Adam::from_store(&store, config)?;
    let mut noise = NoiseSource::new(9);
    let straight = train(&vae, &mut opt, &mut noise, 10)?;
    let straight_params = snapshot(&store)?;

    // Five steps, save parameters + Adam moments + noise position.
    let (store, vae) = model(1)?;
    let mut opt = Adam::from_store(&store, config)?;
    let mut noise = NoiseSource::new(9);
    let first = train(&vae, &mut opt, &mut noise, 5)?;
    let mut checkpoint = Checkpoint::from_params(&store)?;
    opt.save_state(&mut checkpoint)?;
    checkpoint.set_json("noise", &noise.state())?;
    checkpoint.save(&path)?;

    // A fresh process: another initialisation, a new optimiser; restore and continue.
    let resume = |with_optimizer: bool| -> Result<(Vec<u32>, Snapshot)> {
        let (store, vae) = model(123)?;
        let mut opt = Adam::from_store(&store, config)?;
        let loaded = Checkpoint::load(&path, &CPU)?;
        loaded.restore(&store)?;
        if with_optimizer {
            opt.load_state(&loaded)?;
            assert_eq!(opt.steps(), 5);
        }
        let mut noise = NoiseSource::from_state(loaded.json::<NoiseState>("noise")?);
        let rest = train(&vae, &mut opt, &mut noise, 5)?;
        Ok((rest, snapshot(&store)?))
    };
    let (rest, params) = resume(true)?;
    let resumed: Vec<u32> = first.into_iter().chain(rest).collect();
    ensure!(
        resumed == straight,
        "resumed losses differ:\n{resumed:?}\n{straight:?}"
    );
    assert_same_snapshot("parameters after 5 + 5 steps", &params, &straight_params)?;

    // Without the optimiser state (fresh moments, step 0) the run diverges at once: the
    // state is what makes the match.
    let (rest, _) = resume(false)?;
    ensure!(
        rest[1] != straight[6],
        "resuming without Adam state matched anyway"
    );
    Ok(())
}

#[test]
fn adam_load_state_rejects_incomplete_state() -> Result<()> {
    let (store, _) = model(1)?;
    let mut opt = Adam::from_store(&store, AdamConfig::default())?;
    // No step counts in the metadata.
    ensure!(matches!(
        opt.load_state(&Checkpoint::from_params(&store)?),
        Err(Error::Metadata { .. })
    ));
    // A moment with the wrong shape is named.
    let mut checkpoint = Checkpoint::new();
    opt.save_state(&mut checkpoint)?;
    checkpoint.insert(
        format!("optimizer.adam.m.{LAST}"),
        Tensor::zeros(2, DType::F32, &CPU)?,
    );
    match opt.load_state(&checkpoint) {
        Err(Error::TensorShape { name, .. }) => {
            assert_eq!(name, format!("optimizer.adam.m.{LAST}"))
        }
        other => bail!("expected Error::TensorShape, got {other:?}"),
    }
    Ok(())
}

#[test]
fn save_is_atomic_and_replaces_existing_files() -> Result<()> {
    let dir = TempDir::new("atomic")?;
    let path = dir.path().join("ckpt.safetensors");
    let mut first = Checkpoint::new();
    first.insert("a", Tensor::new(&[1f32, 2.0], &CPU)?);
    first.set_metadata("version", "1");
    first.save(&path)?;
    assert_eq!(dir.entries()?, vec!["ckpt.safetensors".to_string()]);

    let mut second = Checkpoint::new();
    second.insert("b", Tensor::new(&[3f32], &CPU)?);
    second.set_metadata("version", "2");
    second.save(&path)?;
    // Still one file, no temporary left behind, and it holds the new content.
    assert_eq!(dir.entries()?, vec!["ckpt.safetensors".to_string()]);
    let loaded = Checkpoint::load(&path, &CPU)?;
    assert_eq!(loaded.metadata("version"), Some("2"));
    ensure!(
        loaded.tensor("a").is_none(),
        "old tensor survived the replace"
    );
    assert_eq!(
        values(loaded.tensor("b").ok_or_else(|| anyhow::anyhow!("no b"))?)?,
        vec![3.0]
    );

    // Saving into a missing directory fails with an I/O error naming the target and
    // leaves nothing behind.
    let bad = dir.path().join("no-such-dir").join("x.safetensors");
    match second.save(&bad) {
        Err(Error::Io { path, .. }) => assert_eq!(path, bad),
        other => bail!("expected Error::Io, got {other:?}"),
    }
    assert_eq!(dir.entries()?, vec!["ckpt.safetensors".to_string()]);
    Ok(())
}

// ---- PyTorch compatibility -------------------------------------------------------------
//
// Golden values from PyTorch 2.15 (`$HOME/torch-venv/bin/python golden.py`), where
// golden.py is:
//
// import torch
// import torch.nn as nn
// import torch.nn.functional as F
//
//
// class VAE(nn.Module):
//     """pytorch/examples/vae/main.py's VAE, sizes 784-400-20 shrunk to 6-5-2."""
//
//     def __init__(self):
//         super().__init__()
//         self.fc1 = nn.Linear(6, 5)
//         self.fc21 = nn.Linear(5, 2)
//         self.fc22 = nn.Linear(5, 2)
//         self.fc3 = nn.Linear(2, 5)
//         self.fc4 = nn.Linear(5, 6)
//
//     def encode(self, x):
//         h1 = F.relu(self.fc1(x))
//         return self.fc21(h1), self.fc22(h1)
//
//     def decode_logits(self, z):
//         return self.fc4(F.relu(self.fc3(z)))
//
//
// NAMES = ["fc1.weight", "fc1.bias", "fc21.weight", "fc21.bias", "fc22.weight",
//          "fc22.bias", "fc3.weight", "fc3.bias", "fc4.weight", "fc4.bias"]
//
// model = VAE()
// with torch.no_grad():
//     for p, name in enumerate(NAMES):
//         t = model.state_dict()[name]
//         j = torch.arange(t.numel(), dtype=torch.float64)
//         t.copy_((0.8 * torch.sin(0.37 * j + 1.1 * p)).reshape(t.shape).float())
//
// n = torch.arange(12, dtype=torch.float64)
// x = ((torch.sin(1.3 * n) + 1) / 2).reshape(2, 6).float()
// eps = torch.cos(0.7 * torch.arange(4, dtype=torch.float64)).reshape(2, 2).float()
// with torch.no_grad():
//     mu, logvar = model.encode(x)
//     z = mu + eps * torch.exp(0.5 * logvar)
//     logits = model.decode_logits(z)
//     recon = torch.sigmoid(logits)
//     # loss_function of the example: BCE summed over the batch + KLD.
//     bce = F.binary_cross_entropy(recon, x, reduction="sum")
//     kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
// for label, t in [("MU", mu), ("LOGVAR", logvar), ("Z", z), ("LOGITS", logits), ("RECON", recon)]:
//     print(f"const {label}: [f64; {t.numel()}] = [" + ", ".join("%.9g" % v for v in t.flatten().tolist()) + "];")
// print("const BCE: f64 = %.9g;" % bce.item())
// print("const KLD: f64 = %.9g;" % kld.item())

const MU: [f64; 4] = [1.34913623, -4.39252377, 1.38318264, -4.37646675];
const LOGVAR: [f64; 4] = [-4.44587994, 1.71022546, -4.44452, 1.66841912];
const Z: [f64; 4] = [1.45742655, -2.59389067, 1.40160096, -5.53912354];
const LOGITS: [f64; 12] = [
    -1.24185514,
    -1.38412774,
    0.558894575,
    -0.735697508,
    -2.08585954,
    0.0937722921,
    -1.71218085,
    -1.37746048,
    1.02554536,
    -0.999573529,
    -2.40706706,
    0.534691453,
];
const RECON: [f64; 12] = [
    0.224113226,
    0.200346902,
    0.636196733,
    0.323945701,
    0.110478818,
    0.523425937,
    0.152881071,
    0.201417178,
    0.736051381,
    0.269025266,
    0.0826353803,
    0.63057667,
];
const BCE: f64 = 11.4203606;
const KLD: f64 = 27.2751484;

/// (name, shape) of the PyTorch state_dict, in the order the script numbers them.
const TORCH_TENSORS: [(&str, &[usize]); 10] = [
    ("fc1.weight", &[5, 6]),
    ("fc1.bias", &[5]),
    ("fc21.weight", &[2, 5]),
    ("fc21.bias", &[2]),
    ("fc22.weight", &[2, 5]),
    ("fc22.bias", &[2]),
    ("fc3.weight", &[5, 2]),
    ("fc3.bias", &[5]),
    ("fc4.weight", &[6, 5]),
    ("fc4.bias", &[6]),
];

/// The f32 values rounded from f64 `scale · sin(step · j + phase)`, j = 0, 1, …
fn sin_values(count: usize, scale: f64, step: f64, phase: f64) -> Vec<f32> {
    (0..count)
        .map(|j| (scale * (step * j as f64 + phase).sin()) as f32)
        .collect()
}

/// Golden values are printed to 9 significant digits (f32 round-trip precision), and
/// both sides compute in f32 through ≤ 3 layers of width ≤ 6: ~10 ulps of 6·10⁻⁸
/// relative, so 1e-5 relative (with a floor of 1e-5 absolute) has ample margin; the sin
/// weights agree to the last f32 bit or one ulp.
fn golden_tol(v: f64) -> f64 {
    1e-5 * v.abs().max(1.0)
}

#[test]
fn pytorch_state_dict_loads_and_matches_pytorch_outputs() -> Result<()> {
    let dir = TempDir::new("torch")?;
    let path = dir.path().join("vae_state_dict.safetensors");
    // Write the state_dict as `safetensors.torch.save_file(model.state_dict(), path)`
    // would: plain names, f32, no prefix. Written with candle's own safetensors writer,
    // not with the crate's Checkpoint.
    let mut state_dict = HashMap::new();
    for (p, (name, shape)) in TORCH_TENSORS.iter().enumerate() {
        let count = shape.iter().product();
        let data = sin_values(count, 0.8, 0.37, 1.1 * p as f64);
        state_dict.insert(name.to_string(), Tensor::from_vec(data, *shape, &CPU)?);
    }
    candle_core::safetensors::save(&state_dict, &path)?;

    // Build the model on the ROOT var builder so its names are fc1, fc21, … exactly.
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &CPU);
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(6, &[5], 2), vb.clone())?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(2, &[5], 6), vb)?;
    let mut names: Vec<String> = store.named_vars()?.into_iter().map(|(n, _)| n).collect();
    let mut torch_names: Vec<String> = TORCH_TENSORS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    torch_names.sort();
    assert_eq!(names, torch_names, "tensor names differ from PyTorch's");
    Checkpoint::load(&path, &CPU)?.restore(&store)?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;

    let x: Vec<f64> = (0..12)
        .map(|n| (((1.3 * n as f64).sin() + 1.0) / 2.0) as f32 as f64)
        .collect();
    let eps: Vec<f64> = (0..4)
        .map(|n| (0.7 * n as f64).cos() as f32 as f64)
        .collect();
    let xs = tensor(&x, &[2, 6])?.to_dtype(DType::F32)?;
    let eps = tensor(&eps, &[2, 2])?.to_dtype(DType::F32)?;
    let check = |what: &str, got: &[f64], want: &[f64]| -> Result<()> {
        ensure!(got.len() == want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_close(&format!("{what}[{i}]"), *g, *w, golden_tol(*w))?;
        }
        Ok(())
    };
    let q = vae.encoder().encode(&xs)?;
    check("mu", &values(q.mean())?, &MU)?;
    check("logvar", &values(q.log_var())?, &LOGVAR)?;
    let out = vae.forward_with_noise_t(&xs, &eps, false)?;
    check("z", &values(&out.z)?, &Z)?;
    check("logits", &values(&out.params)?, &LOGITS)?;
    check(
        "decoder(z)",
        &values(&vae.decoder().forward(&out.z)?)?,
        &LOGITS,
    )?;
    check("recon", &values(&vae.generate(&out.z)?)?, &RECON)?;
    // The example's loss_function (BCE summed over the batch + KLD) is Reduction::Sum.
    let elbo = ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum))?
        .forward(&out, &xs)?;
    assert_close("BCE", scalar(&elbo.reconstruction)?, BCE, golden_tol(BCE))?;
    assert_close("KLD", scalar(&elbo.kl)?, KLD, golden_tol(KLD))?;
    assert_close(
        "loss",
        scalar(&elbo.loss)?,
        BCE + KLD,
        golden_tol(BCE + KLD),
    )?;
    // PyTorch prints the loss divided by the dataset size: that is Reduction::BatchMean.
    let mean = ElboLoss::new(ElboLossConfig::default())?.forward(&out, &xs)?;
    assert_all_close(
        "mean loss",
        &[scalar(&mean.loss)?],
        &[(BCE + KLD) / 2.0],
        golden_tol(BCE),
    )?;
    Ok(())
}

// ---- Names, not positions ---------------------------------------------------------------

/// `store`'s variables in name order, with the entries of `a` and `b` swapped.
fn vars_swapping(store: &ParamStore, a: &str, b: &str) -> Result<Vec<candle_core::Var>> {
    let named = store.named_vars()?;
    let position = |name: &str| {
        named
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| anyhow::anyhow!("no parameter {name}"))
    };
    let (i, j) = (position(a)?, position(b)?);
    let mut vars: Vec<_> = named.into_iter().map(|(_, v)| v).collect();
    vars.swap(i, j);
    Ok(vars)
}

/// Adam built through `candle_nn::Optimizer::new` sees only `Var`s, in whatever order the
/// caller lists them (`VarMap::all_vars` is a `HashMap`'s order, new in every process).
/// The moments of two parameters of the same shape (`fc21`, `fc22`) must not be swapped
/// when a run resumes with the other order.
#[test]
fn adam_built_through_the_candle_trait_resumes_by_name_not_position() -> Result<()> {
    use candle_nn::Optimizer;
    let config = AdamConfig::new(1e-2);
    let (store, vae) = model(1)?;
    let mut opt = <Adam as Optimizer>::new(store.vars()?, config)?;
    let mut noise = NoiseSource::new(9);
    let straight = train(&vae, &mut opt, &mut noise, 10)?;

    let (store, vae) = model(1)?;
    let mut opt = <Adam as Optimizer>::new(store.vars()?, config)?;
    let mut noise = NoiseSource::new(9);
    train(&vae, &mut opt, &mut noise, 5)?;
    let mut checkpoint = Checkpoint::from_params(&store)?;
    // Unnamed, its state cannot be saved (by position it would be swapped below)…
    match opt.save_state(&mut checkpoint) {
        Err(Error::UnnamedParameters { count }) => assert_eq!(count, store.len()),
        other => bail!("expected Error::UnnamedParameters, got {other:?}"),
    }
    // …until its Vars are matched, by identity, to their names in the VarMap.
    opt.name_vars(store.varmap())?;
    opt.save_state(&mut checkpoint)?;

    // "Another process": the same parameters listed in another order.
    let (store, vae) = model(123)?;
    checkpoint.restore(&store)?;
    let mut opt = <Adam as Optimizer>::new(
        vars_swapping(&store, "enc.fc21.weight", "enc.fc22.weight")?,
        config,
    )?;
    ensure!(
        matches!(
            opt.load_state(&checkpoint),
            Err(Error::UnnamedParameters { .. })
        ),
        "an unnamed optimiser loaded state by position"
    );
    opt.name_vars(store.varmap())?;
    opt.load_state(&checkpoint)?;
    let rest = train(&vae, &mut opt, &mut noise, 5)?;
    ensure!(
        rest == straight[5..],
        "resumed losses differ from the uninterrupted run's:\n{rest:?}\n{:?}",
        &straight[5..]
    );

    // Loading checks names: state saved for other parameters is named, both ways.
    let other = ParamStore::new(5);
    let _enc = MlpEncoder::new(
        &MlpEncoderConfig::new(10, &[8], 3),
        other.var_builder(DType::F32, &CPU).pp("encoder"),
    )?;
    let mut opt = Adam::from_varmap(other.varmap(), config)?;
    match opt.load_state(&checkpoint) {
        Err(err) => {
            let message = err.to_string();
            let Error::OptimizerStateMismatch {
                missing,
                unexpected,
                ..
            } = err
            else {
                bail!("expected Error::OptimizerStateMismatch, got {message}");
            };
            for needle in ["encoder.fc1.weight", "enc.fc1.weight"] {
                ensure!(message.contains(needle), "`{needle}` not in: {message}");
            }
            // The encoder-only optimiser holds 6 tensors; the file has state for 10.
            assert_eq!((missing.len(), unexpected.len()), (6, 10));
        }
        Ok(()) => bail!("state saved for other parameters was loaded"),
    }
    Ok(())
}

#[test]
fn restore_fails_when_the_store_lacks_tensors_of_the_file() -> Result<()> {
    let dir = TempDir::new("restore-mismatch")?;
    let path = dir.path().join("model.safetensors");
    let (source, _) = model(1)?;
    Checkpoint::from_params(&source)?.save(&path)?;
    let loaded = Checkpoint::load(&path, &CPU)?;

    // A store that holds none of the file's tensors.
    let empty = ParamStore::new(0);
    let Err(err) = loaded.restore(&empty) else {
        bail!("restore into an empty store returned Ok");
    };
    ensure!(
        err.to_string().contains("dec.fc4.weight"),
        "the message does not name an unexpected tensor: {err}"
    );

    // A store with only the encoder: the decoder's tensors are unexpected.
    let encoder_only = ParamStore::new(2);
    let _enc = MlpEncoder::new(
        &MlpEncoderConfig::new(10, &[8], 3),
        encoder_only.var_builder(DType::F32, &CPU).pp("enc"),
    )?;
    let before = snapshot(&encoder_only)?;
    let Err(err) = loaded.restore(&encoder_only) else {
        bail!("restore of a full model into an encoder-only store returned Ok");
    };
    let message = err.to_string();
    for needle in ["dec.fc3.weight", "dec.fc4.bias"] {
        ensure!(message.contains(needle), "`{needle}` not in: {message}");
    }
    ensure!(
        !message.contains("enc.fc1"),
        "a matching tensor is listed: {message}"
    );
    assert_same_snapshot(
        "store after a failed restore",
        &before,
        &snapshot(&encoder_only)?,
    )?;
    Ok(())
}

/// The pid of a process that has exited.
fn dead_pid() -> Result<u32> {
    let mut child = std::process::Command::new("true").spawn()?;
    let pid = child.id();
    child.wait()?;
    Ok(pid)
}

#[test]
fn stale_temporary_files_of_a_killed_save_are_removed_on_the_next_save_and_load() -> Result<()> {
    if !std::path::Path::new("/proc/self").exists() {
        eprintln!("skipped: no /proc to tell live processes from dead ones");
        return Ok(());
    }
    let dir = TempDir::new("stale")?;
    let path = dir.path().join("ckpt.safetensors");
    let mut checkpoint = Checkpoint::new();
    checkpoint.insert("a", Tensor::new(&[1f32, 2.0], &CPU)?);
    // What a save killed before its rename leaves: `.<name>.<pid>.tmp`.
    let stale = format!(".ckpt.safetensors.{}.tmp", dead_pid()?);
    // A save in progress in a live process, another checkpoint's leftover, and a name
    // that only looks similar: none of them may be touched.
    let mut live = std::process::Command::new("sleep").arg("30").spawn()?;
    let live_tmp = format!(".ckpt.safetensors.{}.tmp", live.id());
    let other = format!(".other.safetensors.{}.tmp", dead_pid()?);
    let odd = ".ckpt.safetensors.notapid.tmp".to_string();
    for name in [&stale, &live_tmp, &other, &odd] {
        std::fs::write(dir.path().join(name), b"partial")?;
    }
    checkpoint.save(&path)?;
    let mut expected = vec![live_tmp.clone(), other.clone(), odd.clone()];
    expected.push("ckpt.safetensors".to_string());
    expected.sort();
    let after_save = dir.entries()?;
    // And on load.
    std::fs::write(dir.path().join(&stale), b"partial")?;
    Checkpoint::load(&path, &CPU)?;
    let after_load = dir.entries()?;
    live.kill()?;
    live.wait()?;
    assert_eq!(after_save, expected, "after save");
    assert_eq!(after_load, expected, "after load");
    Ok(())
}
