//! The open core, as a user outside the crate meets it: a new prior (Laplace), a new
//! likelihood (Laplace noise) and a new posterior family (a diagonal logistic, drawn from
//! uniform noise), each in a few dozen lines over the public traits only, composed into a
//! `Vae`, trained with `ElboLoss` through the library's trainer, scored with the IWAE bound
//! and `estimate::log_likelihood`, checkpointed and restored, and drawn as a picture.
//!
//! The log importance weights of the composed model are checked against the same terms
//! written out here in f64, so the composition is exact, not only runnable.

mod common;

use std::any::TypeId;

use anyhow::{Result, ensure};
use candle_core::{D, DType, Device, Tensor};
use candle_vae::data::{DataLoader, DataLoaderConfig, ImageDataset};
use candle_vae::estimate::{iwae_bound, log_importance_weights, log_likelihood};
use candle_vae::train::{Objective, TrainingState, evaluate, train_epoch};
use candle_vae::viz::{GridConfig, image_grid};
use candle_vae::{
    Adam, AdamConfig, Checkpoint, Dims, ElboLossConfig, Encoder, Error, ImageShape,
    ImportanceSamplingConfig, KlEstimator, Likelihood, MlpDecoder, MlpDecoderConfig, MlpEncoder,
    MlpEncoderConfig, NoiseSource, ParamStore, Prior, Reparameterize, Vae, likelihood,
};
use common::{TempDir, assert_all_close, dev, values};

// ---- A user's prior: p(z) = Π_d Laplace(z_d; 0, b) ----------------------------------

#[derive(Debug, Clone)]
struct LaplacePrior {
    dim: usize,
    scale: f64,
}

impl Prior for LaplacePrior {
    fn latent_dim(&self) -> usize {
        self.dim
    }
    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let b = self.scale;
        z.abs()?
            .sum(D::Minus1)?
            .affine(-1.0 / b, -(self.dim as f64) * (2.0 * b).ln())
    }
    fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        // Inverse CDF: z = −b·sign(u)·ln(1 − 2|u|), u ~ U(−½, ½).
        let u = (noise.uniform((n, self.dim), DType::F64, &Device::Cpu)? - 0.5)?;
        let magnitude = (u.abs()?.affine(-2.0, 1.0)?.log()? * -self.scale)?;
        (u.sign()? * magnitude)?.to_dtype(dtype)?.to_device(device)
    }
}

// ---- A user's likelihood: x | z ~ Laplace(μ(z), b), one parameter per element ---------

#[derive(Debug, Clone)]
struct LaplaceNoise {
    scale: f64,
}

impl Likelihood for LaplaceNoise {
    fn params_per_element(&self) -> usize {
        1
    }
    fn name(&self) -> &str {
        "laplace"
    }
    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let mu = &likelihood::split_params(self.name(), x, params, 1)?[0];
        let b = self.scale;
        let per_element = mu
            .broadcast_sub(x)?
            .abs()?
            .affine(-1.0 / b, -(2.0 * b).ln())?;
        likelihood::sum_per_example(&per_element, x.rank())
    }
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        Ok(likelihood::split_channels(params, channel_axis, 1)?.remove(0))
    }
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let mu = self.mean(params, channel_axis)?;
        let prior = LaplacePrior {
            dim: 1,
            scale: self.scale,
        };
        let e = prior
            .sample(mu.elem_count(), mu.dtype(), mu.device(), noise)?
            .reshape(mu.shape())?;
        mu + e
    }
}

// ---- A user's posterior family: independent logistics, z = μ + s·logit(u) -------------

#[derive(Debug, Clone)]
struct LogisticPosterior {
    loc: Tensor,
    log_scale: Tensor,
}

impl Reparameterize for LogisticPosterior {
    fn latent_dim(&self) -> usize {
        self.loc.dim(D::Minus1).unwrap_or(0)
    }
    fn draw_noise(
        &self,
        samples: Option<usize>,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let mut shape: Vec<usize> = samples.into_iter().collect();
        shape.extend_from_slice(self.loc.dims());
        // u in (0, 1), away from the ends; ε = logit(u) is standard logistic.
        let u = noise
            .uniform(shape, self.loc.dtype(), self.loc.device())?
            .affine(1.0 - 2e-6, 1e-6)?;
        u.log()? - u.affine(-1.0, 1.0)?.log()?
    }
    fn rsample_with(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        eps.broadcast_mul(&self.log_scale.exp()?)?
            .broadcast_add(&self.loc)
    }
    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        // log f = −t − log s − 2 log(1 + e^{−t}), t = (z − μ)/s; stable via softplus.
        let t = z
            .broadcast_sub(&self.loc)?
            .broadcast_div(&self.log_scale.exp()?)?;
        let softplus = candle_vae::ops::softplus(&t.neg()?)?;
        ((t.neg()? - (softplus * 2.0)?)?.broadcast_sub(&self.log_scale))?.sum(D::Minus1)
    }
    fn location(&self) -> candle_core::Result<Tensor> {
        Ok(self.loc.clone())
    }
}

/// The crate's MLP encoder, its two heads read as location and log-scale.
#[derive(Debug, Clone)]
struct LogisticEncoder(MlpEncoder);

impl Encoder for LogisticEncoder {
    type Posterior = LogisticPosterior;
    fn encode(&self, xs: &Tensor) -> candle_core::Result<LogisticPosterior> {
        let q = self.0.encode(xs)?;
        Ok(LogisticPosterior {
            loc: q.mean().clone(),
            log_scale: (q.log_var() * 0.5)?,
        })
    }
}

impl Dims for LogisticEncoder {
    fn latent_dim(&self) -> usize {
        self.0.latent_dim()
    }
    fn data_shape(&self) -> Vec<usize> {
        self.0.data_shape()
    }
}

// ---- The composition ----------------------------------------------------------------

const DATA: usize = 16;
const LATENT: usize = 2;

type UserVae = Vae<LogisticEncoder, MlpDecoder, LaplaceNoise, LaplacePrior>;

fn user_vae(store: &ParamStore) -> Result<UserVae> {
    let vb = store.var_builder(DType::F32, &dev());
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(DATA, &[32], LATENT), vb.pp("enc"))?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(LATENT, &[32], DATA), vb.pp("dec"))?;
    let vae = Vae::new(LogisticEncoder(enc), dec, LaplaceNoise { scale: 0.1 })?;
    Ok(vae.with_prior(LaplacePrior {
        dim: LATENT,
        scale: 1.0,
    })?)
}

/// 4×4 "images" in [0, 1]: two smooth bumps whose positions are the data's 2 factors.
fn dataset(n: usize, seed: u64) -> Result<ImageDataset> {
    let mut noise = NoiseSource::new(seed);
    let pos = values(&noise.uniform((n, 2), DType::F64, &dev())?)?;
    let mut pixels = Vec::with_capacity(n * DATA);
    for i in 0..n {
        for p in 0..DATA {
            let (r, c) = ((p / 4) as f64 / 3.0, (p % 4) as f64 / 3.0);
            let v = (-((r - pos[2 * i]).powi(2) + (c - pos[2 * i + 1]).powi(2)) * 4.0).exp();
            pixels.push((v * 255.0).round() as u8);
        }
    }
    Ok(ImageDataset::new(pixels, 4, 4, None)?)
}

device_test!(user_parts_compose_and_their_log_weights_are_exact);
fn user_parts_compose_and_their_log_weights_are_exact() -> Result<()> {
    let store = ParamStore::new(1);
    let vae = user_vae(&store)?;
    let xs = NoiseSource::new(2).uniform((5, DATA), DType::F32, &dev())?;
    let out = vae.forward_samples_t(&xs, 3, &mut NoiseSource::new(3), false)?;
    let log_w = values(&log_importance_weights(&out, &xs)?)?;

    // The same three terms by hand, in f64, from the pass's own z and decoder output.
    let (q, z, mu, x) = (
        vae.encode(&xs)?,
        out.z.to_dtype(DType::F64)?.to_vec3::<f64>()?,
        out.params.to_dtype(DType::F64)?.to_vec3::<f64>()?,
        xs.to_dtype(DType::F64)?.to_vec2::<f64>()?,
    );
    let (loc, log_s) = (
        q.loc.to_dtype(DType::F64)?.to_vec2::<f64>()?,
        q.log_scale.to_dtype(DType::F64)?.to_vec2::<f64>()?,
    );
    let mut expected = Vec::new();
    for k in 0..3 {
        for n in 0..5 {
            let log_px: f64 = (0..DATA)
                .map(|j| -(x[n][j] - mu[k][n][j]).abs() / 0.1 - (0.2f64).ln())
                .sum();
            let log_pz: f64 = (0..LATENT).map(|d| -z[k][n][d].abs() - 2f64.ln()).sum();
            let log_q: f64 = (0..LATENT)
                .map(|d| {
                    let t = (z[k][n][d] - loc[n][d]) / log_s[n][d].exp();
                    -t - log_s[n][d] - 2.0 * (1.0 + (-t).exp()).ln()
                })
                .sum();
            expected.push(log_px + log_pz - log_q);
        }
    }
    // f32 model, sums of 16 terms of O(10): 1e-3 relative.
    let scale = expected.iter().map(|v| v.abs()).fold(1.0, f64::max);
    assert_all_close("log w", &log_w, &expected, 1e-4 * scale)?;
    Ok(())
}

device_test!(user_parts_train_evaluate_checkpoint_and_draw);
fn user_parts_train_evaluate_checkpoint_and_draw() -> Result<()> {
    let store = ParamStore::new(4);
    let vae = user_vae(&store)?;
    // The analytic KL has no closed form for this pair: refused at construction.
    let refused = vae.elbo_loss(ElboLossConfig::default()).err();
    ensure!(
        matches!(refused, Some(Error::NoAnalyticKl { .. })),
        "{refused:?}"
    );
    ensure!(
        !vae.prior()
            .has_analytic_kl(TypeId::of::<LogisticPosterior>()),
        "no closed form"
    );
    let loss =
        vae.elbo_loss(ElboLossConfig::default().with_kl_estimator(KlEstimator::MonteCarlo))?;

    let train = DataLoader::new(dataset(256, 5)?, DataLoaderConfig::new(32))?;
    let test_data = dataset(64, 6)?;
    let test = DataLoader::new(test_data.clone(), DataLoaderConfig::new(64))?;
    let mut adam = Adam::from_store(&store, AdamConfig::new(3e-3))?;
    let objective = Objective::Elbo(loss);
    let mut state = TrainingState::new(7);
    let before = evaluate(&vae, &test, &mut NoiseSource::new(8), &dev(), |_| {})?;
    for _ in 0..30 {
        train_epoch(
            &vae,
            &mut adam,
            &objective,
            &train,
            &mut state,
            &dev(),
            |_, _| {},
        )?;
    }
    let after = evaluate(&vae, &test, &mut NoiseSource::new(8), &dev(), |_| {})?;
    ensure!(
        after.neg_elbo < before.neg_elbo - 50.0,
        "training barely moved the user's model: −ELBO {:.1} → {:.1}",
        before.neg_elbo,
        after.neg_elbo
    );

    // Estimators: −ELBO ≥ −L_100 ≥ −log p̂(x) on average over the test set.
    let xs = test
        .epoch(&mut NoiseSource::new(9), &dev())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no batch"))??
        .images;
    let elbo_out = vae.forward_samples_t(&xs, 100, &mut NoiseSource::new(10), false)?;
    let mean_log_w = log_importance_weights(&elbo_out, &xs)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    let bound = iwae_bound(&elbo_out, &xs)?.mean_all()?.to_scalar::<f32>()? as f64;
    let ll = log_likelihood(
        &vae,
        &xs,
        &ImportanceSamplingConfig::new(1000),
        &mut NoiseSource::new(11),
    )?;
    let ll = values(&ll)?.iter().sum::<f64>() / xs.dim(0)? as f64;
    ensure!(
        mean_log_w < bound && bound <= ll + 0.05,
        "expected ELBO {mean_log_w:.2} < L_100 {bound:.2} ≤ log p̂ {ll:.2}"
    );

    // Checkpoint the trained parameters and restore them into a fresh model.
    let dir = TempDir::new("open-core")?;
    let path = dir.path().join("user.safetensors");
    Checkpoint::from_params(&store)?.save(&path)?;
    let fresh_store = ParamStore::new(99);
    let fresh = user_vae(&fresh_store)?;
    Checkpoint::load(&path, &dev())?.restore(&fresh_store)?;
    let again = evaluate(&fresh, &test, &mut NoiseSource::new(8), &dev(), |_| {})?;
    ensure!(
        again == after,
        "restored model evaluates differently: {again:?} vs {after:?}"
    );

    // Pictures: prior samples through the user's prior and likelihood, as a grid.
    let samples = fresh.sample(8, DType::F32, &dev(), &mut NoiseSource::new(12))?;
    let grid = image_grid(
        &samples.clamp(0.0, 1.0)?,
        ImageShape::new(1, 4, 4),
        &GridConfig::new(4),
    )?;
    ensure!(grid.width() > 0 && grid.height() > 0, "empty grid");
    let drawn = fresh.likelihood().sample(
        &fresh.decode(&fresh.prior().sample(
            4,
            DType::F32,
            &dev(),
            &mut NoiseSource::new(13),
        )?)?,
        1,
        &mut NoiseSource::new(14),
    )?;
    ensure!(
        drawn.dims() == [4, DATA],
        "x ~ p(x|z) of shape {:?}",
        drawn.dims()
    );
    Ok(())
}
