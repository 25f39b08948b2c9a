//! Model-only files: `Vae::save_model` writes the weights and the architecture, and
//! `Vae::from_checkpoint` rebuilds the same model from the file alone (the same outputs,
//! bit for bit); a file of other networks, or without an architecture, is refused by name.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_vae::{
    Adam, AdamConfig, Checkpoint, ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig,
    ElboLoss, ElboLossConfig, Error, GaussianMean, ImageShape, MlpDecoder, MlpDecoderConfig,
    MlpEncoder, MlpEncoderConfig, NoiseSource, ParamStore, Parameters, StandardLikelihood, Vae,
};

fn assert_same(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    let a: Vec<u32> = a
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect();
    let b: Vec<u32> = b
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect();
    anyhow::ensure!(a == b, "{what}: the loaded model's output differs");
    Ok(())
}

/// A few Adam steps, so the weights are not those of any initialisation.
fn train_a_little<E, D>(vae: &Vae<E, D>, params: &ParamStore, xs: &Tensor) -> Result<()>
where
    E: candle_vae::EncoderT<Posterior = candle_vae::DiagonalGaussian>,
    D: candle_vae::Decoder,
{
    let loss = ElboLoss::new(ElboLossConfig::default())?;
    let mut adam = Adam::from_store(params, AdamConfig::new(1e-2))?;
    let mut noise = NoiseSource::new(3);
    for _ in 0..5 {
        let out = vae.forward_t(xs, &mut noise, true)?;
        adam.backward_step(&loss.forward(&out, xs)?.loss)?;
    }
    Ok(())
}

#[test]
fn an_mlp_vae_with_a_learned_variance_loads_from_the_file_alone() -> Result<()> {
    let device = Device::Cpu;
    let params = ParamStore::new(4);
    let vb = params.var_builder(DType::F32, &device);
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(12, &[10, 6], 3), vb.pp("enc"))?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(3, &[6, 10], 12), vb.pp("dec"))?;
    let likelihood =
        StandardLikelihood::gaussian_shared(GaussianMean::Sigmoid, -2.0, vb.pp("likelihood"))?;
    let vae = Vae::new(enc, dec, likelihood)?;
    let xs = NoiseSource::new(1).uniform((8, 12), DType::F32, &device)?;
    train_a_little(&vae, &params, &xs)?;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.safetensors");
    vae.save_model(&params, &path)?;
    // Model only: exactly the model's tensors, no optimiser state.
    let file = Checkpoint::load(&path, &device)?;
    let names: Vec<&String> = file.tensors().keys().collect();
    let expected: Vec<String> = params
        .named_parameters()?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    anyhow::ensure!(
        names
            .iter()
            .map(|n| n.as_str())
            .eq(expected.iter().map(String::as_str)),
        "{names:?} vs {expected:?}"
    );

    let (loaded, vars) = Vae::<MlpEncoder, MlpDecoder>::from_checkpoint(&path, &device)?;
    anyhow::ensure!(
        loaded.encoder().config() == vae.encoder().config()
            && loaded.decoder().config() == vae.decoder().config(),
        "the configs differ"
    );
    assert_same(
        "reconstruction",
        &vae.reconstruct(&xs)?,
        &loaded.reconstruct(&xs)?,
    )?;
    let z = NoiseSource::new(2).standard_normal((5, 3), DType::F32, &device)?;
    assert_same("generate", &vae.generate(&z)?, &loaded.generate(&z)?)?;
    // The ELBO uses the learned σ: the same value from the same noise.
    let loss = ElboLoss::new(ElboLossConfig::default())?;
    let a = loss.forward(&vae.forward_t(&xs, &mut NoiseSource::new(6), false)?, &xs)?;
    let b = loss.forward(
        &loaded.forward_t(&xs, &mut NoiseSource::new(6), false)?,
        &xs,
    )?;
    assert_same("−ELBO", &a.loss, &b.loss)?;
    // The VarMap holds the same names, so the loaded model saves (and trains) as the original.
    let loaded_names: Vec<String> = vars
        .named_parameters()?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    anyhow::ensure!(loaded_names == expected, "{loaded_names:?}");
    Ok(())
}

#[test]
fn a_conv_vae_loads_and_other_networks_are_refused_by_name() -> Result<()> {
    let device = Device::Cpu;
    let params = ParamStore::new(8);
    let vb = params.var_builder(DType::F32, &device);
    let image = ImageShape::new(1, 8, 8);
    let enc = ConvEncoder::new(&ConvEncoderConfig::new(image, &[4, 8], 2), vb.pp("encoder"))?;
    let dec = ConvDecoder::new(&ConvDecoderConfig::new(2, image, &[4, 8]), vb.pp("decoder"))?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
    let xs = NoiseSource::new(1).uniform((4, 1, 8, 8), DType::F32, &device)?;
    train_a_little(&vae, &params, &xs)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("conv.safetensors");
    vae.save_model(&params, &path)?;

    let (loaded, _) = Vae::<ConvEncoder, ConvDecoder>::from_checkpoint(&path, &device)?;
    assert_same(
        "reconstruction",
        &vae.reconstruct(&xs)?,
        &loaded.reconstruct(&xs)?,
    )?;

    match Vae::<MlpEncoder, MlpDecoder>::from_checkpoint(&path, &device) {
        Err(Error::ArchitectureMismatch {
            expected, found, ..
        }) => anyhow::ensure!(
            expected == "encoder MlpEncoder" && found == "encoder ConvEncoder",
            "{expected} / {found}"
        ),
        Err(other) => anyhow::bail!("expected ArchitectureMismatch, got {other}"),
        Ok(_) => anyhow::bail!("an MLP was built from a conv file"),
    }

    // Weights without an architecture (a PyTorch state_dict, Checkpoint::from_params).
    let bare = dir.path().join("bare.safetensors");
    Checkpoint::from_params(&params)?.save(&bare)?;
    match Vae::<ConvEncoder, ConvDecoder>::from_checkpoint(&bare, &device) {
        Err(Error::Metadata { key, .. }) => {
            anyhow::ensure!(key == "model.architecture", "{key}")
        }
        Err(other) => anyhow::bail!("expected Metadata, got {other}"),
        Ok(_) => anyhow::bail!("a file without an architecture was accepted"),
    }
    Ok(())
}
