#![allow(dead_code)] // each test binary that includes this file uses part of it
//! A toy problem shared by the training tests: blob "images" and a VAE of candle_nn layers
//! on a `VarMap` (no `ParamStore`, no `Dims`), seeded from the crate's noise.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use candle_vae::data::ImageDataset;
use candle_vae::{
    DiagonalGaussian, Encoder, NoiseSource, Parameters, StandardLikelihood, StandardNormal, Vae,
};

/// `count` synthetic 6×6 "images": blobs whose position depends on the index.
pub fn synthetic(count: usize) -> Result<ImageDataset> {
    let mut pixels = Vec::with_capacity(count * 36);
    for i in 0..count {
        let (cx, cy) = ((i % 6) as f32, ((i / 6) % 6) as f32);
        for y in 0..6 {
            for x in 0..6 {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                pixels.push((255.0 * (-d2 / 3.0).exp()).round() as u8);
            }
        }
    }
    Ok(ImageDataset::new(pixels, 6, 6, None)?)
}

/// An encoder of candle_nn layers.
pub struct CandleEncoder {
    trunk: candle_nn::Sequential,
    mean: candle_nn::Linear,
    log_var: candle_nn::Linear,
}

impl Encoder for CandleEncoder {
    type Posterior = DiagonalGaussian;
    fn encode(&self, xs: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        use candle_core::Module;
        let h = self.trunk.forward(xs)?;
        DiagonalGaussian::new(self.mean.forward(&h)?, self.log_var.forward(&h)?)
    }
}

pub type CandleVae = Vae<CandleEncoder, candle_nn::Sequential, StandardLikelihood, StandardNormal>;

/// A 36-16-3-16-36 VAE of candle_nn layers on `varmap`, every parameter drawn from
/// U(−0.3, 0.3) with `seed` in name order (a VarMap's own initialisation cannot be seeded).
pub fn candle_vae_on(varmap: &VarMap, seed: u64) -> Result<CandleVae> {
    use candle_nn::{Activation, linear, seq};
    let vb = candle_nn::VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    let encoder = CandleEncoder {
        trunk: seq()
            .add(linear(36, 16, vb.pp("enc.fc1"))?)
            .add(Activation::Relu),
        mean: linear(16, 3, vb.pp("enc.mean"))?,
        log_var: linear(16, 3, vb.pp("enc.log_var"))?,
    };
    let decoder = seq()
        .add(linear(3, 16, vb.pp("dec.fc1"))?)
        .add(Activation::Relu)
        .add(linear(16, 36, vb.pp("dec.fc2"))?);
    let mut noise = NoiseSource::new(seed);
    for (_, var) in varmap.named_parameters()? {
        let t = var.as_tensor();
        var.set(
            &noise
                .uniform(t.shape(), DType::F32, &Device::Cpu)?
                .affine(0.6, -0.3)?,
        )?;
    }
    Ok(Vae::from_parts(
        encoder,
        decoder,
        StandardLikelihood::Bernoulli,
        StandardNormal::new(3)?,
    ))
}

/// Every parameter's name and bits.
pub type Bits = Vec<(String, Vec<u32>)>;

/// The name and bits of every parameter of `params` (a `VarMap`, a `ParamStore`, …).
pub fn bits<P: Parameters + ?Sized>(params: &P) -> Result<Bits> {
    params
        .named_parameters()?
        .into_iter()
        .map(|(name, var)| {
            let values = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            Ok((name, values.into_iter().map(f32::to_bits).collect()))
        })
        .collect()
}
