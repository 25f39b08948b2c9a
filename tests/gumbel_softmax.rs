//! The relaxed categorical posterior (Gumbel-softmax / Concrete): samples on the simplex,
//! the τ → 0 limit, class frequencies, the straight-through estimator, the KL to the
//! uniform categorical, the Concrete density against the binary closed form and numeric
//! integration, the temperature schedule, the composition with `ElboLoss`, typed errors
//! and seeded runs.

mod common;

use anyhow::{Result, ensure};
use candle_core::{D, DType, Device, Tensor, Var};
use candle_vae::discrete::{concrete_log_density, gumbel_noise};
use candle_vae::{
    Adam, AdamConfig, CategoricalEncoder, CategoricalEncoderConfig, ElboLossConfig, Encoder, Error,
    GumbelEstimator, MlpDecoder, MlpDecoderConfig, NoiseSource, ParamStore, Prior,
    RelaxedCategorical, Reparameterize, StandardLikelihood, TemperatureSchedule,
    UniformCategorical, Vae,
};
use common::{assert_all_close, assert_close, assert_within_se, scalar, values};

const CPU: Device = Device::Cpu;

fn logits(n: usize, width: usize, seed: u64) -> Result<Tensor> {
    Ok((NoiseSource::new(seed).standard_normal((n, width), DType::F64, &CPU)? * 1.5)?)
}

fn softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn relaxed_samples_lie_on_the_simplex_of_each_group() -> Result<()> {
    let (m, c) = (5, 7);
    for tau in [0.1, 0.5, 1.0, 3.0] {
        let q = RelaxedCategorical::new(logits(8, m * c, 1)?, m, c, tau, GumbelEstimator::Relaxed)?;
        let z = q.rsample_n(3, &mut NoiseSource::new(2))?;
        assert_eq!(z.dims(), &[3, 8, m * c]);
        let v = values(&z)?;
        ensure!(
            v.iter().all(|&y| (0.0..=1.0).contains(&y)),
            "τ={tau}: outside [0, 1]"
        );
        let sums = values(&z.reshape((3, 8, m, c))?.sum(D::Minus1)?)?;
        assert_all_close(
            &format!("τ={tau}: group sums"),
            &sums,
            &vec![1.0; 3 * 8 * m],
            1e-12,
        )?;
    }
    Ok(())
}

#[test]
fn as_the_temperature_falls_the_sample_is_the_one_hot_argmax_of_the_same_noise() -> Result<()> {
    let (n, m, c) = (16, 30, 10);
    let l = logits(n, m * c, 3)?;
    let g = gumbel_noise((n, m * c), DType::F64, &CPU, &mut NoiseSource::new(4))?;
    let shifted = (&l + &g)?.reshape((n * m, c))?.to_vec2::<f64>()?;
    let mut one_hot = vec![0.0; n * m * c];
    let mut clear = Vec::new();
    for (r, row) in shifted.iter().enumerate() {
        let best = (0..c).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        one_hot[r * c + best] = 1.0;
        let mut sorted = row.clone();
        sorted.sort_by(f64::total_cmp);
        clear.push(sorted[c - 1] - sorted[c - 2] > 1e-2);
    }
    ensure!(clear.iter().filter(|&&x| x).count() > n * m * 9 / 10);
    let mut last_err = f64::INFINITY;
    for tau in [1.0, 0.1, 1e-2, 1e-4] {
        let q = RelaxedCategorical::new(l.clone(), m, c, tau, GumbelEstimator::Relaxed)?;
        let y = values(&q.rsample_with(&g)?)?;
        // The largest deviation from the one-hot over groups with a clear winner.
        let err = (0..n * m)
            .filter(|&r| clear[r])
            .flat_map(|r| (0..c).map(move |j| r * c + j))
            .map(|i| (y[i] - one_hot[i]).abs())
            .fold(0.0, f64::max);
        ensure!(err <= last_err, "τ={tau}: error {err} grew from {last_err}");
        last_err = err;
    }
    // At τ = 1e-4 a gap of 1e-2 is e^{-100} away from the one-hot.
    ensure!(last_err < 1e-30, "τ = 1e-4: max deviation {last_err}");
    // The straight-through sample is exactly the one-hot, at any τ.
    let st = RelaxedCategorical::new(l, m, c, 1.0, GumbelEstimator::StraightThrough)?;
    assert_all_close(
        "straight-through",
        &values(&st.rsample_with(&g)?)?,
        &one_hot,
        0.0,
    )?;
    Ok(())
}

#[test]
fn class_frequencies_match_softmax_of_the_logits() -> Result<()> {
    let row = [1.0, 0.0, -0.5, 2.0, 0.3];
    let c = row.len();
    let l = Tensor::from_vec(row.to_vec(), (1, c), &CPU)?;
    let q = RelaxedCategorical::new(l, 1, c, 0.5, GumbelEstimator::StraightThrough)?;
    let k = 40_000;
    let z = q.rsample_n(k, &mut NoiseSource::new(5))?; // (k, 1, C), one-hot
    let counts = values(&z.sum(0)?)?;
    let p = softmax(&row);
    for j in 0..c {
        let freq = counts[j] / k as f64;
        let se = (p[j] * (1.0 - p[j]) / k as f64).sqrt();
        assert_within_se(&format!("class {j}"), freq, se, p[j], 4.0)?;
    }
    // probs() is softmax per group.
    assert_all_close("probs", &values(&q.probs()?)?, &p, 1e-12)?;
    Ok(())
}

#[test]
fn straight_through_gradient_is_the_relaxed_gradient() -> Result<()> {
    let (m, c) = (4, 6);
    let l = Var::from_tensor(&logits(3, m * c, 6)?)?;
    let g = gumbel_noise((3, m * c), DType::F64, &CPU, &mut NoiseSource::new(7))?;
    let w = NoiseSource::new(8).standard_normal((m * c, 2), DType::F64, &CPU)?;
    let grad = |estimator| -> Result<Vec<f64>> {
        let q = RelaxedCategorical::new(l.as_tensor().clone(), m, c, 0.7, estimator)?;
        let z = q.rsample_with(&g)?;
        let f = z.matmul(&w)?.sum_all()?;
        values(
            f.backward()?
                .get(l.as_tensor())
                .ok_or(anyhow::anyhow!("no grad"))?,
        )
    };
    let relaxed = grad(GumbelEstimator::Relaxed)?;
    let st = grad(GumbelEstimator::StraightThrough)?;
    assert_all_close("∂/∂ℓ", &st, &relaxed, 1e-12)?;
    ensure!(
        relaxed.iter().any(|v| v.abs() > 1e-3),
        "the gradient is zero"
    );
    Ok(())
}

#[test]
fn kl_to_the_uniform_categorical_matches_its_closed_form() -> Result<()> {
    let (n, m, c) = (4, 3, 5);
    let l = logits(n, m * c, 9)?;
    let q = RelaxedCategorical::new(l.clone(), m, c, 1.0, GumbelEstimator::Relaxed)?;
    let kl = values(&q.kl_uniform_per_dim()?.sum(D::Minus1)?)?;
    let rows = l.to_vec2::<f64>()?;
    for (i, row) in rows.iter().enumerate() {
        let expected: f64 = row
            .chunks(c)
            .map(|group| {
                softmax(group)
                    .iter()
                    .map(|p| p * (p * c as f64).ln())
                    .sum::<f64>()
            })
            .sum();
        assert_close(&format!("KL row {i}"), kl[i], expected, 1e-12)?;
    }
    // Uniform logits: 0. Near one-hot logits: M ln C.
    let uniform = RelaxedCategorical::new(
        Tensor::zeros((1, m * c), DType::F64, &CPU)?,
        m,
        c,
        1.0,
        GumbelEstimator::Relaxed,
    )?;
    assert_close(
        "KL at uniform",
        scalar(&uniform.kl_uniform_per_dim()?.sum_all()?)?,
        0.0,
        1e-14,
    )?;
    let mut peaked = vec![0.0; m * c];
    for g in 0..m {
        peaked[g * c + 1] = 60.0;
    }
    let peaked = RelaxedCategorical::new(
        Tensor::from_vec(peaked, (1, m * c), &CPU)?,
        m,
        c,
        1.0,
        GumbelEstimator::Relaxed,
    )?;
    assert_close(
        "KL at one-hot",
        scalar(&peaked.kl_uniform_per_dim()?.sum_all()?)?,
        m as f64 * (c as f64).ln(),
        1e-12,
    )?;

    // The prior offers it to ElboLoss as the analytic KL.
    let prior = UniformCategorical::new(m, c)?;
    let per_dim = prior
        .analytic_kl_per_dim(&q)
        .ok_or(anyhow::anyhow!("no analytic KL"))??;
    assert_all_close(
        "prior's analytic KL",
        &values(&per_dim.sum(D::Minus1)?)?,
        &kl,
        1e-12,
    )?;
    // Another M × C is a typed error.
    let other = UniformCategorical::new(c, m)?;
    ensure!(matches!(other.analytic_kl_per_dim(&q), Some(Err(_))));
    Ok(())
}

/// The binary Concrete density of X = y_1 (Maddison et al. 2017, eq. 12):
/// p(x) = τ α x^{−τ−1} (1 − x)^{−τ−1} / (α x^{−τ} + (1 − x)^{−τ})², α = e^{ℓ₁ − ℓ₂},
/// and its distribution function P(X ≤ x) = σ(τ logit(x) − ln α).
fn binary_concrete(x: f64, log_alpha: f64, tau: f64) -> (f64, f64) {
    let a = log_alpha.exp();
    let density = tau * a * x.powf(-tau - 1.0) * (1.0 - x).powf(-tau - 1.0)
        / (a * x.powf(-tau) + (1.0 - x).powf(-tau)).powi(2);
    let cdf = 1.0 / (1.0 + (-(tau * (x / (1.0 - x)).ln() - log_alpha)).exp());
    (density, cdf)
}

#[test]
fn concrete_density_for_two_classes_is_the_binary_concrete_and_integrates_to_one() -> Result<()> {
    let (l1, l2) = (0.9, 0.2);
    for tau in [0.5, 1.0, 2.0] {
        // Pointwise against the closed form.
        let xs: Vec<f64> = (1..100).map(|i| i as f64 / 100.0).collect();
        let y: Vec<f64> = xs.iter().flat_map(|&x| [x, 1.0 - x]).collect();
        let log_y = Tensor::from_vec(y, (xs.len(), 1, 2), &CPU)?.log()?;
        let lg = Tensor::from_vec(vec![l1, l2], (1, 1, 2), &CPU)?;
        let got = values(&concrete_log_density(&lg, &log_y, tau)?)?;
        for (i, &x) in xs.iter().enumerate() {
            let (p, _) = binary_concrete(x, l1 - l2, tau);
            assert_close(&format!("τ={tau} log p({x})"), got[i], p.ln(), 1e-10)?;
        }
        // The mass of [a, b] by the midpoint rule against F(b) − F(a) (away from the
        // integrable singularities at 0 and 1 for τ < 1).
        let (a, b, steps) = (0.05, 0.95, 20_000);
        let h = (b - a) / steps as f64;
        let mids: Vec<f64> = (0..steps).map(|i| a + (i as f64 + 0.5) * h).collect();
        let y: Vec<f64> = mids.iter().flat_map(|&x| [x, 1.0 - x]).collect();
        let log_y = Tensor::from_vec(y, (steps, 1, 2), &CPU)?.log()?;
        let dens = values(&concrete_log_density(&lg, &log_y, tau)?.exp()?)?;
        let mass: f64 = dens.iter().sum::<f64>() * h;
        let exact = binary_concrete(b, l1 - l2, tau).1 - binary_concrete(a, l1 - l2, tau).1;
        assert_close(&format!("τ={tau} mass of [0.05, 0.95]"), mass, exact, 1e-7)?;
    }
    // τ = 2: smooth on [0, 1], the whole mass is 1.
    let steps = 20_000;
    let h = 1.0 / steps as f64;
    let y: Vec<f64> = (0..steps)
        .flat_map(|i| {
            let x = (i as f64 + 0.5) * h;
            [x, 1.0 - x]
        })
        .collect();
    let log_y = Tensor::from_vec(y, (steps, 1, 2), &CPU)?.log()?;
    let lg = Tensor::from_vec(vec![l1, l2], (1, 1, 2), &CPU)?;
    let mass = values(&concrete_log_density(&lg, &log_y, 2.0)?.exp()?)?
        .iter()
        .sum::<f64>()
        * h;
    assert_close("τ=2 total mass", mass, 1.0, 1e-7)?;
    Ok(())
}

#[test]
fn concrete_density_for_three_classes_integrates_to_one() -> Result<()> {
    // Over the 2-simplex {(y1, y2): y1, y2 > 0, y1 + y2 < 1}, midpoint rule on a grid of
    // triangles' bounding squares (τ = 2, where the density vanishes at the boundary).
    let steps = 600;
    let h = 1.0 / steps as f64;
    let mut y = Vec::new();
    for i in 0..steps {
        for j in 0..steps {
            let (a, b) = ((i as f64 + 0.5) * h, (j as f64 + 0.5) * h);
            if a + b < 1.0 {
                y.extend([a, b, 1.0 - a - b]);
            }
        }
    }
    let cells = y.len() / 3;
    let log_y = Tensor::from_vec(y, (cells, 1, 3), &CPU)?.log()?;
    let lg = Tensor::from_vec(vec![0.5, -0.3, 0.1], (1, 1, 3), &CPU)?;
    let mass = values(&concrete_log_density(&lg, &log_y, 2.0)?.exp()?)?
        .iter()
        .sum::<f64>()
        * h
        * h;
    assert_close("C=3 total mass", mass, 1.0, 2e-3)?;
    Ok(())
}

#[test]
fn log_prob_of_a_sample_is_the_concrete_density_at_its_relaxed_value() -> Result<()> {
    let (m, c) = (3, 4);
    let q = RelaxedCategorical::new(logits(5, m * c, 10)?, m, c, 0.8, GumbelEstimator::Relaxed)?;
    let eps = q.draw_noise(Some(2), &mut NoiseSource::new(11))?;
    let z = q.rsample_with(&eps)?;
    let at_sample = values(&q.log_prob_of_sample(&eps, &z)?)?;
    let at_z = values(&q.log_prob(&z)?)?;
    assert_all_close("log q(y) two ways", &at_sample, &at_z, 1e-9)?;
    // And the prior's relaxed density at λ = τ and zero logits is the same formula.
    let prior = UniformCategorical::new(m, c)?.with_temperature(0.8)?;
    let uniform = RelaxedCategorical::new(
        Tensor::zeros((5, m * c), DType::F64, &CPU)?,
        m,
        c,
        0.8,
        GumbelEstimator::Relaxed,
    )?;
    assert_all_close(
        "prior log p",
        &values(&prior.log_prob(&z)?)?,
        &values(&uniform.log_prob(&z)?)?,
        1e-9,
    )?;
    Ok(())
}

#[test]
fn temperature_schedule_follows_jang_et_al() -> Result<()> {
    let s = TemperatureSchedule::default();
    s.validate()?;
    assert_close("τ(0)", s.temperature(0), 1.0, 0.0)?;
    assert_close("τ(499)", s.temperature(499), 1.0, 0.0)?;
    assert_close(
        "τ(500)",
        s.temperature(500),
        (-1e-5f64 * 500.0).exp(),
        1e-15,
    )?;
    assert_close(
        "τ(1250)",
        s.temperature(1250),
        (-1e-5f64 * 1000.0).exp(),
        1e-15,
    )?;
    assert_close("τ(10⁶)", s.temperature(1_000_000), 0.5, 0.0)?;
    assert_close(
        "constant",
        TemperatureSchedule::constant(0.3).temperature(12345),
        0.3,
        0.0,
    )?;
    for (bad, field) in [
        (TemperatureSchedule::constant(0.0), "initial"),
        (TemperatureSchedule::constant(-1.0), "initial"),
        (TemperatureSchedule::default().with_minimum(2.0), "minimum"),
        (TemperatureSchedule::default().with_every(0), "every"),
    ] {
        match bad.validate() {
            Err(Error::InvalidConfig { field: f, .. }) if f == field => {}
            other => anyhow::bail!("{field}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn bad_input_is_a_typed_error_at_construction() -> Result<()> {
    let params = ParamStore::new(0);
    let vb = params.var_builder(DType::F32, &CPU);
    for tau in [0.0, -0.5, f64::NAN] {
        let config = CategoricalEncoderConfig::new(784, &[64], 30, 10).with_temperature(tau);
        match CategoricalEncoder::new(&config, vb.clone()) {
            Err(Error::InvalidConfig {
                field: "temperature",
                ..
            }) => {}
            other => anyhow::bail!("τ = {tau}: {other:?}"),
        }
    }
    let enc = CategoricalEncoder::new(&CategoricalEncoderConfig::new(6, &[4], 2, 3), vb.clone())?;
    ensure!(matches!(
        enc.set_temperature(0.0),
        Err(Error::InvalidConfig { .. })
    ));
    match RelaxedCategorical::new(
        Tensor::zeros((2, 29), DType::F32, &CPU)?,
        3,
        10,
        1.0,
        GumbelEstimator::Relaxed,
    ) {
        Err(Error::CategoricalWidth {
            expected: 30,
            found: 29,
            ..
        }) => {}
        other => anyhow::bail!("width 29 for 3 × 10: {other:?}"),
    }
    match RelaxedCategorical::new(
        Tensor::zeros((2, 30), DType::F32, &CPU)?,
        3,
        10,
        0.0,
        GumbelEstimator::Relaxed,
    ) {
        Err(Error::InvalidConfig {
            field: "temperature",
            ..
        }) => {}
        other => anyhow::bail!("τ = 0: {other:?}"),
    }
    let msg = RelaxedCategorical::new(
        Tensor::zeros((2, 29), DType::F32, &CPU)?,
        3,
        10,
        1.0,
        GumbelEstimator::Relaxed,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    ensure!(
        msg.contains("3·10 = 30") && msg.contains("29"),
        "message: {msg}"
    );
    ensure!(matches!(
        UniformCategorical::new(0, 10),
        Err(Error::InvalidConfig { .. })
    ));
    // A decoder of another width than M·C is refused when the VAE is built.
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(5, &[4], 6), vb.pp("dec"))?;
    ensure!(Vae::new(enc, dec, StandardLikelihood::Bernoulli).is_err());
    Ok(())
}

/// A categorical VAE on random binary data through the crate's Vae and ElboLoss.
fn categorical_run(seed: u64, estimator: GumbelEstimator, steps: usize) -> Result<Vec<f64>> {
    let params = ParamStore::new(seed);
    let vb = params.var_builder(DType::F32, &CPU);
    let (m, c) = (4, 5);
    let enc = CategoricalEncoder::new(
        &CategoricalEncoderConfig::new(20, &[32], m, c).with_estimator(estimator),
        vb.pp("enc"),
    )?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(m * c, &[32], 20), vb.pp("dec"))?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?
        .with_prior(UniformCategorical::new(m, c)?)?;
    let loss = vae.elbo_loss(ElboLossConfig::default())?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-2))?;
    let mut noise = NoiseSource::new(seed + 1);
    let schedule = TemperatureSchedule::default()
        .with_rate(1e-2)
        .with_every(10);
    let protos = (NoiseSource::new(99)
        .uniform((4, 20), DType::F32, &CPU)?
        .ge(0.5)?)
    .to_dtype(DType::F32)?;
    let mut out = Vec::new();
    for step in 0..steps {
        vae.encoder().set_temperature(schedule.temperature(step))?;
        let pick = Tensor::from_vec(
            (0..32).map(|i| (i % 4) as u32).collect::<Vec<_>>(),
            32,
            &CPU,
        )?;
        let xs = protos.index_select(&pick, 0)?;
        let pass = vae.forward_t(&xs, &mut noise, true)?;
        let elbo = loss.forward(&pass, &xs)?;
        // The KL is the closed form of the posterior's probabilities.
        let kl = pass
            .posterior
            .kl_uniform_per_dim()?
            .sum(D::Minus1)?
            .mean_all()?;
        assert_close("KL term", scalar(&elbo.kl)?, scalar(&kl)?, 1e-5)?;
        opt.backward_step(&elbo.loss)?;
        out.push(scalar(&elbo.loss)?);
    }
    ensure!((vae.encoder().temperature() - schedule.temperature(steps - 1)).abs() < 1e-15);
    Ok(out)
}

#[test]
fn seeded_categorical_vae_runs_are_identical_and_learn() -> Result<()> {
    for estimator in [GumbelEstimator::Relaxed, GumbelEstimator::StraightThrough] {
        let a = categorical_run(3, estimator, 60)?;
        let b = categorical_run(3, estimator, 60)?;
        assert_all_close("same seed, same losses", &a, &b, 0.0)?;
        let first = a[..5].iter().sum::<f64>() / 5.0;
        let last = a[55..].iter().sum::<f64>() / 5.0;
        ensure!(last < 0.8 * first, "{estimator:?}: −ELBO {first} → {last}");
    }
    // The encoder's posterior is a RelaxedCategorical of the configured M × C.
    let params = ParamStore::new(1);
    let enc = CategoricalEncoder::new(
        &CategoricalEncoderConfig::new(6, &[], 2, 3),
        params.var_builder(DType::F32, &CPU),
    )?;
    let q = enc.encode(&Tensor::ones((4, 6), DType::F32, &CPU)?)?;
    assert_eq!(
        (q.groups(), q.classes(), q.logits().dims()),
        (2, 3, &[4usize, 6][..])
    );
    // Sampling the prior gives one-hot groups.
    let z =
        UniformCategorical::new(2, 3)?.sample(50, DType::F32, &CPU, &mut NoiseSource::new(2))?;
    assert_all_close(
        "prior samples one-hot",
        &values(&z.reshape((50, 2, 3))?.sum(D::Minus1)?)?,
        &[1.0; 100],
        0.0,
    )?;
    Ok(())
}

#[test]
fn importance_weights_of_a_relaxed_model_are_concrete_densities() -> Result<()> {
    // The relaxed model of Maddison et al. (2017): posterior Concrete(ℓ, τ), prior
    // Concrete(uniform, λ); the crate's estimators take both densities from the traits.
    let (m, c, tau, lambda) = (3, 4, 0.7, 0.5);
    let params = ParamStore::new(5);
    let vb = params.var_builder(DType::F64, &CPU);
    let enc = CategoricalEncoder::new(
        &CategoricalEncoderConfig::new(10, &[16], m, c).with_temperature(tau),
        vb.pp("enc"),
    )?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(m * c, &[16], 10), vb.pp("dec"))?;
    let prior = UniformCategorical::new(m, c)?.with_temperature(lambda)?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?.with_prior(prior)?;
    let mut noise = NoiseSource::new(6);
    let xs = noise
        .uniform((5, 10), DType::F64, &CPU)?
        .ge(0.5)?
        .to_dtype(DType::F64)?;
    let out = vae.forward_samples_t(&xs, 4, &mut noise, false)?;
    let log_w = values(&candle_vae::estimate::log_importance_weights(&out, &xs)?)?;

    // By hand: y from the noise, ln y by log-softmax, both Concrete densities.
    let logits = vae.encoder().logits(&xs)?.reshape((1, 5, m, c))?;
    let log_y = candle_nn::ops::log_softmax(
        &((out.eps.reshape((4, 5, m, c))?.broadcast_add(&logits)?) / tau)?,
        D::Minus1,
    )?;
    let log_q = concrete_log_density(&logits, &log_y, tau)?;
    let log_p = concrete_log_density(&log_y.zeros_like()?, &log_y, lambda)?;
    let rec = out.reconstruction_log_prob(&xs)?;
    let expected = values(&((rec + log_p)? - log_q)?)?;
    assert_all_close("log w", &log_w, &expected, 1e-8)?;
    ensure!(log_w.iter().all(|w| w.is_finite()));

    // The Monte-Carlo KL of ElboLoss is the mean of log q − log p over the samples.
    let loss = vae.elbo_loss(
        ElboLossConfig::default().with_kl_estimator(candle_vae::KlEstimator::MonteCarlo),
    )?;
    let elbo = loss.forward(&out, &xs)?;
    let kl_by_hand = values(&(out.posterior_log_prob()? - out.prior_log_prob()?)?.mean_all()?)?[0];
    assert_close("Monte-Carlo KL", scalar(&elbo.kl)?, kl_by_hand, 1e-8)?;
    Ok(())
}
