//! Invalid configurations fail at construction with a typed error naming the config, the
//! field, the rule and the value; shape errors at run time name the shapes.

mod common;

use anyhow::{Result, bail, ensure};
use candle_core::{DType, Module, Tensor};
use candle_vae::estimate::log_likelihood;
use candle_vae::{
    Adam, AdamConfig, ConditionalVae, ConvDecoder, ConvDecoderConfig, ConvEncoder,
    ConvEncoderConfig, DiagonalGaussian, ElboLoss, ElboLossConfig, Encoder, Error, GaussianMean,
    ImageShape, ImportanceSamplingConfig, KlSchedule, MlpDecoder, MlpDecoderConfig, MlpEncoder,
    MlpEncoderConfig, NoiseSource, ParamStore, Reparameterize, StandardLikelihood, Vae,
    WeightDecay, parse_device,
};
use common::{CPU, mlp_vae};

/// Checks `result` is `Error::InvalidConfig` for `config.field`, whose message names the
/// field, the rule (`rule` is a fragment of it) and the value (as formatted).
fn expect_invalid<T: std::fmt::Debug>(
    result: candle_vae::Result<T>,
    config: &str,
    field: &str,
    value: &str,
    rule: &str,
) -> Result<()> {
    let err = match result {
        Err(err) => err,
        Ok(built) => bail!("{config}.{field} = {value}: accepted, built {built:?}"),
    };
    let msg = err.to_string();
    let Error::InvalidConfig {
        config: c,
        field: f,
        value: v,
        rule: r,
    } = err
    else {
        bail!("{config}.{field} = {value}: expected InvalidConfig, got {msg}");
    };
    ensure!(
        c == config && f == field,
        "expected {config}.{field}, got {c}.{f} ({msg})"
    );
    ensure!(
        v == value,
        "{config}.{field}: value {v:?}, expected {value:?}"
    );
    ensure!(
        r.contains(rule),
        "{config}.{field}: rule {r:?} lacks {rule:?}"
    );
    ensure!(
        msg.contains(field) && msg.contains(value) && msg.contains(r),
        "message does not name field, value and rule: {msg}"
    );
    Ok(())
}

fn vb(store: &ParamStore) -> candle_nn::VarBuilder<'static> {
    store.var_builder(DType::F32, &CPU)
}

#[test]
fn mlp_configs_reject_zero_sizes() -> Result<()> {
    let s = ParamStore::new(0);
    let enc = |c: MlpEncoderConfig| MlpEncoder::new(&c, vb(&s).pp("e"));
    expect_invalid(
        enc(MlpEncoderConfig::new(0, &[4], 2)),
        "MlpEncoderConfig",
        "input_dim",
        "0",
        "> 0",
    )?;
    expect_invalid(
        enc(MlpEncoderConfig::new(6, &[4], 0)),
        "MlpEncoderConfig",
        "latent_dim",
        "0",
        "> 0",
    )?;
    expect_invalid(
        enc(MlpEncoderConfig::new(6, &[4, 0], 2)),
        "MlpEncoderConfig",
        "hidden",
        "[4, 0]",
        "> 0",
    )?;
    let dec = |c: MlpDecoderConfig| MlpDecoder::new(&c, vb(&s).pp("d"));
    expect_invalid(
        dec(MlpDecoderConfig::new(0, &[4], 6)),
        "MlpDecoderConfig",
        "latent_dim",
        "0",
        "> 0",
    )?;
    expect_invalid(
        dec(MlpDecoderConfig::new(2, &[4], 0)),
        "MlpDecoderConfig",
        "output_dim",
        "0",
        "> 0",
    )?;
    expect_invalid(
        dec(MlpDecoderConfig::new(2, &[0], 6)),
        "MlpDecoderConfig",
        "hidden",
        "[0]",
        "> 0",
    )?;
    expect_invalid(
        dec(MlpDecoderConfig::new(2, &[4], 6).with_params_per_element(0)),
        "MlpDecoderConfig",
        "params_per_element",
        "0",
        "≥ 1",
    )?;
    // Nothing was created by the failed constructors.
    ensure!(s.is_empty(), "failed constructors left {} tensors", s.len());
    // The defaults are valid (and are the pytorch/examples sizes).
    MlpEncoderConfig::default().validate()?;
    MlpDecoderConfig::default().validate()?;
    assert_eq!(
        MlpEncoderConfig::default(),
        MlpEncoderConfig::new(784, &[400], 20)
    );
    Ok(())
}

#[test]
fn conv_configs_reject_bad_geometry() -> Result<()> {
    let s = ParamStore::new(0);
    let img = ImageShape::new(1, 28, 28);
    let enc = |c: ConvEncoderConfig| ConvEncoder::new(&c, vb(&s).pp("e"));
    expect_invalid(
        enc(ConvEncoderConfig::new(img, &[], 2)),
        "ConvEncoderConfig",
        "channels",
        "[]",
        "at least one",
    )?;
    expect_invalid(
        enc(ConvEncoderConfig::new(img, &[8, 0], 2)),
        "ConvEncoderConfig",
        "channels",
        "[8, 0]",
        "> 0",
    )?;
    expect_invalid(
        enc(ConvEncoderConfig::new(ImageShape::new(0, 28, 28), &[8], 2)),
        "ConvEncoderConfig",
        "image.channels",
        "0",
        "> 0",
    )?;
    expect_invalid(
        enc(ConvEncoderConfig::new(img, &[8], 0)),
        "ConvEncoderConfig",
        "latent_dim",
        "0",
        "> 0",
    )?;
    expect_invalid(
        enc(ConvEncoderConfig::new(img, &[8], 2).with_hidden(0)),
        "ConvEncoderConfig",
        "hidden",
        "Some(0)",
        "> 0",
    )?;
    // 3×3 → 1×1 after one stage: a second stride-2 stage has nothing to work on.
    expect_invalid(
        enc(ConvEncoderConfig::new(ImageShape::new(1, 3, 3), &[4, 4], 2)),
        "ConvEncoderConfig",
        "image",
        "(3, 3)",
        "side ≥ 2",
    )?;
    let dec = |c: ConvDecoderConfig| ConvDecoder::new(&c, vb(&s).pp("d"));
    expect_invalid(
        dec(ConvDecoderConfig::new(0, img, &[8])),
        "ConvDecoderConfig",
        "latent_dim",
        "0",
        "> 0",
    )?;
    expect_invalid(
        dec(ConvDecoderConfig::new(2, img, &[])),
        "ConvDecoderConfig",
        "channels",
        "[]",
        "at least one",
    )?;
    expect_invalid(
        dec(ConvDecoderConfig::new(2, img, &[8]).with_params_per_element(0)),
        "ConvDecoderConfig",
        "params_per_element",
        "0",
        "≥ 1",
    )?;
    expect_invalid(
        dec(ConvDecoderConfig::new(2, ImageShape::new(1, 28, 1), &[8])),
        "ConvDecoderConfig",
        "image",
        "(28, 1)",
        "side ≥ 2",
    )?;
    ensure!(s.is_empty(), "failed constructors left {} tensors", s.len());
    Ok(())
}

#[test]
fn vae_rejects_parts_that_do_not_fit() -> Result<()> {
    let s = ParamStore::new(0);
    let enc = || MlpEncoder::new(&MlpEncoderConfig::new(6, &[4], 2), vb(&s).pp("e"));
    // Encoder latent 2, decoder latent 3.
    match Vae::new(
        enc()?,
        MlpDecoder::new(&MlpDecoderConfig::new(3, &[4], 6), vb(&s).pp("d3"))?,
        StandardLikelihood::Bernoulli,
    ) {
        Err(
            err @ Error::LatentMismatch {
                encoder: 2,
                decoder: 3,
                condition: 0,
            },
        ) => {
            let msg = err.to_string();
            ensure!(msg.contains('2') && msg.contains('3'), "message: {msg}");
        }
        other => bail!("expected LatentMismatch, got {other:?}"),
    }
    // Data width 6 in, 5 out.
    match Vae::new(
        enc()?,
        MlpDecoder::new(&MlpDecoderConfig::new(2, &[4], 5), vb(&s).pp("d5"))?,
        StandardLikelihood::Bernoulli,
    ) {
        Err(err @ Error::DataShapeMismatch { .. }) => {
            let msg = err.to_string();
            ensure!(msg.contains("[6]") && msg.contains("[5]"), "message: {msg}");
        }
        other => bail!("expected DataShapeMismatch, got {other:?}"),
    }
    // A per-element Gaussian needs 2 parameters per element: 12 outputs, not 6.
    let dec6 = MlpDecoder::new(&MlpDecoderConfig::new(2, &[4], 6), vb(&s).pp("d6"))?;
    match Vae::new(
        enc()?,
        dec6.clone(),
        StandardLikelihood::gaussian_per_element(GaussianMean::Identity),
    ) {
        Err(Error::DataShapeMismatch {
            expected,
            params_per_element: 2,
            ..
        }) => assert_eq!(expected, vec![12]),
        other => bail!("expected DataShapeMismatch, got {other:?}"),
    }
    // A conditional VAE needs the condition's width on both sides.
    expect_invalid(
        ConditionalVae::new(enc()?, dec6.clone(), StandardLikelihood::Bernoulli, 0),
        "ConditionalVae",
        "condition_dim",
        "0",
        "> 0",
    )?;
    ensure!(matches!(
        ConditionalVae::new(enc()?, dec6, StandardLikelihood::Bernoulli, 3),
        Err(Error::LatentMismatch {
            encoder: 2,
            decoder: 2,
            condition: 3
        })
    ));
    Ok(())
}

#[test]
fn loss_configs_reject_bad_values() -> Result<()> {
    let d = ElboLossConfig::default;
    expect_invalid(
        ElboLoss::new(d().with_beta(-0.5)),
        "ElboLossConfig",
        "beta",
        "-0.5",
        "≥ 0",
    )?;
    expect_invalid(
        ElboLoss::new(d().with_beta(f64::NAN)),
        "ElboLossConfig",
        "beta",
        "NaN",
        "finite",
    )?;
    expect_invalid(
        ElboLoss::new(d().with_beta(f64::INFINITY)),
        "ElboLossConfig",
        "beta",
        "inf",
        "finite",
    )?;
    expect_invalid(
        ElboLoss::new(d().with_free_bits(-0.1)),
        "ElboLossConfig",
        "free_bits",
        "-0.1",
        "≥ 0",
    )?;
    expect_invalid(
        ElboLoss::new(d().with_kl_schedule(KlSchedule::Linear { warmup_steps: 0 })),
        "ElboLossConfig",
        "kl_schedule.warmup_steps",
        "0",
        "> 0",
    )?;
    expect_invalid(
        ElboLoss::new(d().with_kl_schedule(KlSchedule::Cyclical {
            period: 0,
            ramp: 0.5,
        })),
        "ElboLossConfig",
        "kl_schedule.period",
        "0",
        "> 0",
    )?;
    for ramp in [0.0, 1.5, -0.2] {
        expect_invalid(
            ElboLoss::new(d().with_kl_schedule(KlSchedule::Cyclical { period: 10, ramp })),
            "ElboLossConfig",
            "kl_schedule.ramp",
            &format!("{ramp:?}"),
            "(0, 1]",
        )?;
    }
    // β = 0 (an autoencoder with a KL report) and λ = 0 are allowed.
    ElboLoss::new(d().with_beta(0.0).with_free_bits(0.0))?;
    Ok(())
}

#[test]
fn sample_counts_must_be_positive() -> Result<()> {
    expect_invalid(
        ImportanceSamplingConfig::new(0).validate(),
        "ImportanceSamplingConfig",
        "samples",
        "0",
        "≥ 1",
    )?;
    expect_invalid(
        ImportanceSamplingConfig::new(10)
            .with_chunk_size(0)
            .validate(),
        "ImportanceSamplingConfig",
        "chunk_size",
        "0",
        "≥ 1",
    )?;
    // log_likelihood validates before sampling.
    let store = ParamStore::new(0);
    let vae = mlp_vae(
        &store,
        6,
        &[4],
        2,
        StandardLikelihood::Bernoulli,
        DType::F32,
    )?;
    let xs = Tensor::zeros((2, 6), DType::F32, &CPU)?;
    expect_invalid(
        log_likelihood(
            &vae,
            &xs,
            &ImportanceSamplingConfig::new(0),
            &mut NoiseSource::new(0),
        ),
        "ImportanceSamplingConfig",
        "samples",
        "0",
        "≥ 1",
    )?;
    // rsample_n(0) and forward_samples_t(k = 0) are errors that say k must be ≥ 1.
    let q = DiagonalGaussian::standard(2, 3, DType::F32, &CPU)?;
    let msg = q
        .rsample_n(0, &mut NoiseSource::new(0))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        msg.contains("k = 0") && msg.contains("≥ 1"),
        "rsample_n(0): {msg:?}"
    );
    ensure!(
        vae.forward_samples_t(&xs, 0, &mut NoiseSource::new(0), false)
            .is_err(),
        "k = 0 accepted"
    );
    Ok(())
}

#[test]
fn adam_config_rejects_bad_values() -> Result<()> {
    let a = AdamConfig::default;
    expect_invalid(
        Adam::new(Vec::new(), AdamConfig::new(0.0)),
        "AdamConfig",
        "lr",
        "0.0",
        "> 0",
    )?;
    expect_invalid(
        Adam::new(Vec::new(), AdamConfig::new(-1e-3)),
        "AdamConfig",
        "lr",
        "-0.001",
        "> 0",
    )?;
    expect_invalid(
        Adam::new(Vec::new(), AdamConfig::new(f64::NAN)),
        "AdamConfig",
        "lr",
        "NaN",
        "finite",
    )?;
    expect_invalid(
        Adam::new(Vec::new(), a().with_betas(1.0, 0.999)),
        "AdamConfig",
        "beta1",
        "1.0",
        "[0, 1)",
    )?;
    expect_invalid(
        Adam::new(Vec::new(), a().with_betas(0.9, -0.1)),
        "AdamConfig",
        "beta2",
        "-0.1",
        "[0, 1)",
    )?;
    expect_invalid(
        Adam::new(Vec::new(), a().with_eps(0.0)),
        "AdamConfig",
        "eps",
        "0.0",
        "> 0",
    )?;
    expect_invalid(
        Adam::new(
            Vec::new(),
            a().with_weight_decay(-0.01, WeightDecay::Decoupled),
        ),
        "AdamConfig",
        "weight_decay",
        "-0.01",
        "≥ 0",
    )?;
    a().validate()?;
    Ok(())
}

#[test]
fn likelihood_and_device_reject_bad_values() -> Result<()> {
    expect_invalid(
        StandardLikelihood::gaussian(0.0),
        "StandardLikelihood::Gaussian",
        "std",
        "0.0",
        "> 0",
    )?;
    expect_invalid(
        StandardLikelihood::gaussian(-1.0),
        "StandardLikelihood::Gaussian",
        "std",
        "-1.0",
        "> 0",
    )?;
    expect_invalid(
        StandardLikelihood::gaussian(f64::INFINITY),
        "StandardLikelihood::Gaussian",
        "std",
        "inf",
        "finite",
    )?;
    expect_invalid(
        parse_device("gpu"),
        "device",
        "name",
        "\"gpu\"",
        "auto, cpu",
    )?;
    expect_invalid(
        parse_device("cuda:x"),
        "device",
        "ordinal",
        "\"cuda:x\"",
        "number",
    )?;
    ensure!(matches!(parse_device("cpu")?, candle_core::Device::Cpu));
    Ok(())
}

/// The message of a failed tensor operation.
fn message<T>(result: candle_core::Result<T>) -> Result<String> {
    match result {
        Ok(_) => bail!("expected an error"),
        Err(err) => Ok(err.to_string()),
    }
}

#[test]
fn run_time_shape_errors_name_the_shapes() -> Result<()> {
    let s = ParamStore::new(0);
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(6, &[4], 2), vb(&s).pp("e"))?;
    let msg = message(enc.encode(&Tensor::zeros((3, 5), DType::F32, &CPU)?))?;
    ensure!(
        msg.contains("MlpEncoder::encode") && msg.contains("[3, 5]") && msg.contains("(N, 6)"),
        "{msg}"
    );
    // (N, 1, 2, 3) holds 6 elements per example: accepted, flattened.
    enc.encode(&Tensor::zeros((3, 1, 2, 3), DType::F32, &CPU)?)?;

    let dec = MlpDecoder::new(&MlpDecoderConfig::new(2, &[4], 6), vb(&s).pp("d"))?;
    let msg = message(dec.forward(&Tensor::zeros((3, 4), DType::F32, &CPU)?))?;
    ensure!(
        msg.contains("MlpDecoder::forward") && msg.contains("[3, 4]") && msg.contains("(N, 2)"),
        "{msg}"
    );

    let img = ImageShape::new(1, 8, 6);
    let cenc = ConvEncoder::new(&ConvEncoderConfig::new(img, &[2], 2), vb(&s).pp("ce"))?;
    let msg = message(cenc.encode(&Tensor::zeros((2, 1, 6, 8), DType::F32, &CPU)?))?;
    ensure!(
        msg.contains("ConvEncoder::encode")
            && msg.contains("[2, 1, 6, 8]")
            && msg.contains("(N, 1, 8, 6)"),
        "{msg}"
    );
    let cdec = ConvDecoder::new(&ConvDecoderConfig::new(2, img, &[2]), vb(&s).pp("cd"))?;
    let msg = message(cdec.forward(&Tensor::zeros((2, 3), DType::F32, &CPU)?))?;
    ensure!(
        msg.contains("ConvDecoder::forward") && msg.contains("[2, 3]"),
        "{msg}"
    );

    // A conditional VAE with a condition of the wrong width.
    let cvae = ConditionalVae::new(
        MlpEncoder::new(&MlpEncoderConfig::new(6 + 3, &[4], 2), vb(&s).pp("cve"))?,
        MlpDecoder::new(&MlpDecoderConfig::new(2 + 3, &[4], 6), vb(&s).pp("cvd"))?,
        StandardLikelihood::Bernoulli,
        3,
    )?;
    let xs = Tensor::zeros((4, 6), DType::F32, &CPU)?;
    let msg = message(cvae.forward_t(
        &xs,
        &Tensor::zeros((4, 2), DType::F32, &CPU)?,
        &mut NoiseSource::new(0),
        true,
    ))?;
    ensure!(msg.contains("[4, 2]") && msg.contains("(4, 3)"), "{msg}");

    // ε of the wrong shape in the deterministic forward pass.
    let vae = mlp_vae(&s, 6, &[4], 2, StandardLikelihood::Bernoulli, DType::F32)?;
    let msg =
        message(vae.forward_with_noise_t(&xs, &Tensor::zeros((4, 3), DType::F32, &CPU)?, true))?;
    ensure!(msg.contains("[4, 3]") && msg.contains("[4, 2]"), "{msg}");
    Ok(())
}

/// `result` is an `Error::InvalidConfig` of `config` whose message names `field`.
fn expect_invalid_field<T: std::fmt::Debug>(
    result: candle_vae::Result<T>,
    config: &str,
    field: &str,
) -> Result<()> {
    match result {
        Err(err @ Error::InvalidConfig { .. }) => {
            let msg = err.to_string();
            ensure!(
                msg.contains(config) && msg.contains(field),
                "expected {config}.{field}, got: {msg}"
            );
            Ok(())
        }
        other => bail!("{config}.{field}: expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn absurd_sizes_are_config_errors_not_panics() -> Result<()> {
    let s = ParamStore::new(0);
    // usize::MAX × 2 weights overflow usize; usize::MAX / 2 × 2 fit in usize but not in
    // memory (more than isize::MAX bytes at 4 bytes each).
    for input in [usize::MAX, usize::MAX / 2, 1 << 62] {
        expect_invalid_field(
            MlpEncoder::new(&MlpEncoderConfig::new(input, &[2], 2), vb(&s).pp("e")),
            "MlpEncoderConfig",
            "input_dim",
        )?;
    }
    expect_invalid_field(
        MlpEncoder::new(
            &MlpEncoderConfig::new(4, &[2, usize::MAX], 2),
            vb(&s).pp("e"),
        ),
        "MlpEncoderConfig",
        "hidden",
    )?;
    expect_invalid_field(
        MlpDecoder::new(&MlpDecoderConfig::new(2, &[2], usize::MAX), vb(&s).pp("d")),
        "MlpDecoderConfig",
        "output_dim",
    )?;
    expect_invalid_field(
        MlpDecoder::new(
            &MlpDecoderConfig::new(2, &[2], usize::MAX / 2).with_params_per_element(2),
            vb(&s).pp("d"),
        ),
        "MlpDecoderConfig",
        "output_dim",
    )?;
    // A (1, 2^40, 2^40) image has 2^80 pixels.
    let huge = ImageShape::new(1, 1 << 40, 1 << 40);
    expect_invalid_field(
        ConvEncoder::new(&ConvEncoderConfig::new(huge, &[8], 2), vb(&s).pp("e")),
        "ConvEncoderConfig",
        "image",
    )?;
    expect_invalid_field(
        ConvDecoder::new(&ConvDecoderConfig::new(2, huge, &[8]), vb(&s).pp("d")),
        "ConvDecoderConfig",
        "image",
    )?;
    // Sides that fit but whose flattened feature map times the head width does not.
    let wide = ImageShape::new(1, 1 << 31, 1 << 31);
    expect_invalid_field(
        ConvEncoder::new(&ConvEncoderConfig::new(wide, &[8], 2), vb(&s).pp("e")),
        "ConvEncoderConfig",
        "image",
    )?;
    ensure!(s.is_empty(), "failed constructors left {} tensors", s.len());

    // The store itself refuses a parameter it cannot allocate, with an error.
    let vb = vb(&s);
    for shape in [(usize::MAX, 2), (1 << 31, 1 << 31)] {
        let result = vb.get(shape, "w");
        ensure!(result.is_err(), "{shape:?}: a tensor was made");
    }
    Ok(())
}
