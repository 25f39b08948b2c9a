//! Every public type is `Send + Sync`: checked at compile time, and exercised by running a
//! model on another thread.

mod common;

use anyhow::Result;
use candle_core::DType;
use candle_vae::estimate::ImportanceSamplingConfig;
use candle_vae::{
    Activation, ActiveUnits, Adam, AdamConfig, Checkpoint, ConditionalVae, ConvDecoder,
    ConvDecoderConfig, ConvEncoder, ConvEncoderConfig, DiagonalGaussian, Elbo, ElboLoss,
    ElboLossConfig, Error, GaussianMean, GaussianVariance, ImageShape, KlEstimator, KlSchedule,
    MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, NoiseSource, NoiseState,
    ParamStore, Reduction, StandardLikelihood, StandardNormal, Vae, VaeOutput, WeightDecay,
};
use candle_vae::{
    CategoricalEncoder, CategoricalEncoderConfig, CodebookUpdate, DeadCodes, GumbelEstimator,
    Quantized, RelaxedCategorical, TemperatureSchedule, UniformCategorical, VectorQuantizer,
    VectorQuantizerConfig, VqConvConfig, VqDecoder, VqEncoder, VqVae, VqVaeLoss, VqVaeOutput,
};
use common::{CPU, assert_bit_identical, mlp_vae};

const fn assert_send_sync<T: Send + Sync>() {}

// Compile-time: this fails to build if any type loses Send or Sync.
const _: () = {
    assert_send_sync::<CategoricalEncoder>();
    assert_send_sync::<CategoricalEncoderConfig>();
    assert_send_sync::<CodebookUpdate>();
    assert_send_sync::<DeadCodes>();
    assert_send_sync::<GumbelEstimator>();
    assert_send_sync::<Quantized>();
    assert_send_sync::<RelaxedCategorical>();
    assert_send_sync::<TemperatureSchedule>();
    assert_send_sync::<UniformCategorical>();
    assert_send_sync::<VectorQuantizer>();
    assert_send_sync::<VectorQuantizerConfig>();
    assert_send_sync::<VqConvConfig>();
    assert_send_sync::<VqVae<VqEncoder, VqDecoder, StandardLikelihood>>();
    assert_send_sync::<VqVaeLoss>();
    assert_send_sync::<VqVaeOutput<'static, StandardLikelihood>>();
    assert_send_sync::<Vae<CategoricalEncoder, MlpDecoder, StandardLikelihood, UniformCategorical>>(
    );
    assert_send_sync::<ActiveUnits>();
    assert_send_sync::<Activation>();
    assert_send_sync::<Adam>();
    assert_send_sync::<AdamConfig>();
    assert_send_sync::<Checkpoint>();
    assert_send_sync::<ConditionalVae<MlpEncoder, MlpDecoder>>();
    assert_send_sync::<ConditionalVae<ConvEncoder, ConvDecoder>>();
    assert_send_sync::<ConvDecoder>();
    assert_send_sync::<ConvDecoderConfig>();
    assert_send_sync::<ConvEncoder>();
    assert_send_sync::<ConvEncoderConfig>();
    assert_send_sync::<DiagonalGaussian>();
    assert_send_sync::<Elbo>();
    assert_send_sync::<ElboLoss>();
    assert_send_sync::<ElboLossConfig>();
    assert_send_sync::<Error>();
    assert_send_sync::<GaussianMean>();
    assert_send_sync::<GaussianVariance>();
    assert_send_sync::<ImageShape>();
    assert_send_sync::<ImportanceSamplingConfig>();
    assert_send_sync::<KlEstimator>();
    assert_send_sync::<KlSchedule>();
    assert_send_sync::<StandardLikelihood>();
    assert_send_sync::<StandardNormal>();
    assert_send_sync::<MlpDecoder>();
    assert_send_sync::<MlpDecoderConfig>();
    assert_send_sync::<MlpEncoder>();
    assert_send_sync::<MlpEncoderConfig>();
    assert_send_sync::<NoiseSource>();
    assert_send_sync::<NoiseState>();
    assert_send_sync::<ParamStore>();
    assert_send_sync::<Reduction>();
    assert_send_sync::<Vae<MlpEncoder, MlpDecoder>>();
    assert_send_sync::<Vae<ConvEncoder, ConvDecoder>>();
    assert_send_sync::<VaeOutput>();
    assert_send_sync::<WeightDecay>();
    assert_send_sync::<candle_vae::Result<()>>();
};

#[test]
fn a_model_and_its_noise_run_on_another_thread() -> Result<()> {
    let store = ParamStore::new(1);
    let vae = mlp_vae(
        &store,
        8,
        &[6],
        2,
        StandardLikelihood::Bernoulli,
        DType::F32,
    )?;
    let xs = NoiseSource::new(2).uniform((4, 8), DType::F32, &CPU)?;
    let here = vae.forward_t(&xs, &mut NoiseSource::new(3), false)?.params;
    // Shared by reference across a scoped thread (Sync), and the noise moved into it (Send).
    let noise = NoiseSource::new(3);
    let there = std::thread::scope(|s| {
        s.spawn(move || {
            let mut noise = noise;
            vae.forward_t(&xs, &mut noise, false).map(|o| o.params)
        })
        .join()
    })
    .map_err(|_| anyhow::anyhow!("thread panicked"))??;
    assert_bit_identical("params computed on another thread", &here, &there)?;
    // The store moves to another thread and its parameters are still there.
    let count = std::thread::spawn(move || store.len())
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?;
    assert_eq!(count, 10); // fc1, fc21, fc22, fc3, fc4: weight and bias each
    Ok(())
}
