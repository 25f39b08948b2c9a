//! `ElboLoss`: every part against a hand computation, β, free bits, warm-up schedules and
//! reductions changing the loss exactly as their formulas say, the Monte-Carlo KL against
//! the analytic one, and a finite-difference check of the gradient of the whole objective.

mod common;

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor, Var};
use candle_vae::{
    Activation, DiagonalGaussian, ElboLoss, ElboLossConfig, GaussianMean, KlEstimator, KlSchedule,
    Likelihood, MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, NoiseSource,
    ParamStore, Reduction, Reparameterize, StandardLikelihood, StandardNormal, Vae, VaeOutput,
};
use common::{
    LN_2PI, assert_all_close, assert_close, assert_within_se, dev, mean_and_se, scalar, tensor,
    values,
};

/// f64 through a few dozen operations on values of order 10: rounding stays below 1e-13.
const TOL: f64 = 1e-12;

const N: usize = 3;
const D: usize = 4;
const P: usize = 5;

/// The per-dimension KL, which a Gaussian posterior and N(0, I) always have.
fn per_dim(elbo: &candle_vae::Elbo) -> Result<&Tensor> {
    elbo.kl_per_dim
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no per-dimension KL for a Gaussian pair"))
}

/// Hand-chosen posterior, data and decoder logits; the KL per dimension spans 0.002 to 2.
struct Case {
    mean: Vec<f64>,
    log_var: Vec<f64>,
    x: Vec<f64>,
    logits: Vec<f64>,
    prior: StandardNormal,
}

fn case() -> Case {
    Case {
        mean: vec![
            0.1, -1.5, 0.0, 0.8, //
            -0.2, 1.0, 0.05, -0.6, //
            0.0, -2.0, -0.1, 1.2,
        ],
        log_var: vec![
            -0.1, -2.0, 0.05, -1.0, //
            0.0, -1.5, -0.02, 0.4, //
            0.1, -0.5, 0.0, -0.7,
        ],
        x: vec![
            1.0, 0.0, 1.0, 1.0, 0.0, //
            0.0, 0.0, 1.0, 0.0, 1.0, //
            1.0, 1.0, 0.0, 0.5, 0.2,
        ],
        logits: vec![
            2.0, -1.0, 0.5, 3.0, -2.5, //
            -0.3, -4.0, 1.5, 0.0, 2.2, //
            1.0, 0.7, -0.9, 0.1, -1.3,
        ],
        prior: StandardNormal::new(D).unwrap_or_else(|e| panic!("{e}")),
    }
}

impl Case {
    fn posterior(&self) -> Result<DiagonalGaussian> {
        Ok(DiagonalGaussian::new(
            tensor(&self.mean, &[N, D])?,
            tensor(&self.log_var, &[N, D])?,
        )?)
    }

    fn output(&self, posterior: DiagonalGaussian, z: Tensor) -> Result<VaeOutput<'_>> {
        Ok(VaeOutput {
            eps: z.zeros_like()?,
            posterior,
            z,
            params: tensor(&self.logits, &[N, P])?,
            likelihood: &StandardLikelihood::Bernoulli,
            prior: &self.prior,
        })
    }

    fn xs(&self) -> Result<Tensor> {
        tensor(&self.x, &[N, P])
    }

    /// log p(x_n|z) = Σ_j x·l − log(1 + eˡ).
    fn log_lik(&self) -> Vec<f64> {
        (0..N)
            .map(|n| {
                (0..P)
                    .map(|j| {
                        let (x, l) = (self.x[n * P + j], self.logits[n * P + j]);
                        x * l - (1.0 + l.exp()).ln()
                    })
                    .sum()
            })
            .collect()
    }

    /// KL_{n,d} = ½(μ² + σ² − 1 − log σ²).
    fn kl_nd(&self) -> Vec<f64> {
        (0..N * D)
            .map(|i| 0.5 * (self.mean[i].powi(2) + self.log_var[i].exp() - 1.0 - self.log_var[i]))
            .collect()
    }

    fn kl_n(&self) -> Vec<f64> {
        self.kl_nd().chunks(D).map(|c| c.iter().sum()).collect()
    }

    fn kl_per_dim(&self) -> Vec<f64> {
        let kl = self.kl_nd();
        (0..D)
            .map(|d| (0..N).map(|n| kl[n * D + d]).sum::<f64>() / N as f64)
            .collect()
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn zeros_z() -> Result<Tensor> {
    Ok(Tensor::zeros((N, D), DType::F64, &dev())?)
}

device_test!(parts_match_hand_computation);
fn parts_match_hand_computation() -> Result<()> {
    let c = case();
    let out = c.output(c.posterior()?, zeros_z()?)?;
    let elbo = ElboLoss::new(ElboLossConfig::default())?.forward(&out, &c.xs()?)?;
    let (ll, kl_n) = (c.log_lik(), c.kl_n());
    let recon = -mean(&ll);
    let kl = mean(&kl_n);
    assert_close("reconstruction", scalar(&elbo.reconstruction)?, recon, TOL)?;
    assert_close("kl", scalar(&elbo.kl)?, kl, TOL)?;
    assert_close("loss", scalar(&elbo.loss)?, recon + kl, TOL)?;
    assert_all_close(
        "kl_per_dim",
        &values(per_dim(&elbo)?)?,
        &c.kl_per_dim(),
        TOL,
    )?;
    let per_example: Vec<f64> = (0..N).map(|n| kl_n[n] - ll[n]).collect();
    assert_all_close(
        "per_example",
        &values(&elbo.per_example)?,
        &per_example,
        TOL,
    )?;
    // Sanity of the hand numbers themselves: x = 1 at l = 2 costs log(1 + e⁻²) = 0.126928.
    assert_close(
        "one BCE term",
        (1.0 + (-2f64).exp()).ln(),
        0.126_928_011_042_972_6,
        TOL,
    )?;
    Ok(())
}

device_test!(beta_scales_only_the_kl_term);
fn beta_scales_only_the_kl_term() -> Result<()> {
    let c = case();
    let out = c.output(c.posterior()?, zeros_z()?)?;
    let (recon, kl) = (-mean(&c.log_lik()), mean(&c.kl_n()));
    for beta in [0.0, 0.5, 1.0, 4.0] {
        let loss = ElboLoss::new(ElboLossConfig::default().with_beta(beta))?;
        let elbo = loss.forward(&out, &c.xs()?)?;
        assert_close(
            &format!("β={beta} loss"),
            scalar(&elbo.loss)?,
            recon + beta * kl,
            TOL,
        )?;
        // The reported parts are β-free.
        assert_close(&format!("β={beta} kl"), scalar(&elbo.kl)?, kl, TOL)?;
        assert_close(
            &format!("β={beta} recon"),
            scalar(&elbo.reconstruction)?,
            recon,
            TOL,
        )?;
    }
    Ok(())
}

device_test!(reductions_sum_and_batch_mean);
fn reductions_sum_and_batch_mean() -> Result<()> {
    let c = case();
    let out = c.output(c.posterior()?, zeros_z()?)?;
    let (ll, kl_n) = (c.log_lik(), c.kl_n());
    let beta = 2.0;
    let sum = ElboLoss::new(
        ElboLossConfig::default()
            .with_beta(beta)
            .with_reduction(Reduction::Sum),
    )?
    .forward(&out, &c.xs()?)?;
    let recon_sum = -ll.iter().sum::<f64>();
    let kl_sum: f64 = kl_n.iter().sum();
    assert_close(
        "Sum reconstruction",
        scalar(&sum.reconstruction)?,
        recon_sum,
        TOL,
    )?;
    assert_close("Sum kl", scalar(&sum.kl)?, kl_sum, TOL)?;
    assert_close(
        "Sum loss",
        scalar(&sum.loss)?,
        recon_sum + beta * kl_sum,
        TOL,
    )?;
    let batch_mean = ElboLoss::new(
        ElboLossConfig::default()
            .with_beta(beta)
            .with_reduction(Reduction::BatchMean),
    )?
    .forward(&out, &c.xs()?)?;
    assert_close(
        "BatchMean loss",
        scalar(&batch_mean.loss)?,
        (recon_sum + beta * kl_sum) / N as f64,
        TOL,
    )?;
    // Diagnostics do not depend on the reduction.
    assert_all_close(
        "kl_per_dim",
        &values(per_dim(&sum)?)?,
        &values(per_dim(&batch_mean)?)?,
        0.0,
    )?;
    assert_all_close(
        "per_example",
        &values(&sum.per_example)?,
        &values(&batch_mean.per_example)?,
        0.0,
    )?;
    assert_eq!(Reduction::default(), Reduction::BatchMean);
    Ok(())
}

device_test!(free_bits_clamp_each_dimensions_batch_mean_kl);
fn free_bits_clamp_each_dimensions_batch_mean_kl() -> Result<()> {
    let c = case();
    let kl_d = c.kl_per_dim();
    // λ = 0.3 lies strictly between the per-dimension KLs, so some are clamped and some not.
    let lambda = 0.3;
    ensure!(
        kl_d.iter().any(|&k| k < lambda - 0.05) && kl_d.iter().any(|&k| k > lambda + 0.05),
        "test case does not straddle λ: {kl_d:?}"
    );
    let clamped: f64 = kl_d.iter().map(|&k| k.max(lambda)).sum();
    let recon = -mean(&c.log_lik());
    let beta = 1.5;
    let mean_var = Var::from_tensor(&tensor(&c.mean, &[N, D])?)?;
    let posterior =
        DiagonalGaussian::new(mean_var.as_tensor().clone(), tensor(&c.log_var, &[N, D])?)?;
    let out = c.output(posterior, zeros_z()?)?;
    for reduction in [Reduction::BatchMean, Reduction::Sum] {
        let scale = if reduction == Reduction::Sum {
            N as f64
        } else {
            1.0
        };
        let loss = ElboLoss::new(
            ElboLossConfig::default()
                .with_beta(beta)
                .with_free_bits(lambda)
                .with_reduction(reduction),
        )?;
        let elbo = loss.forward(&out, &c.xs()?)?;
        // Kingma et al. (2016): Σ_d max(λ, batch-mean KL_d), per example.
        assert_close(
            &format!("{reduction:?} free-bits loss"),
            scalar(&elbo.loss)?,
            scale * (recon + beta * clamped),
            TOL,
        )?;
        assert_close(
            &format!("{reduction:?} kl unclamped"),
            scalar(&elbo.kl)?,
            scale * mean(&c.kl_n()),
            TOL,
        )?;
        // Dimensions under λ get no gradient from the KL term; the others get
        // β·scale·∂(batch-mean KL_d)/∂μ_{n,d} = β·scale·μ_{n,d}/N.
        let grads = elbo.loss.backward()?;
        let g = values(
            grads
                .get(mean_var.as_tensor())
                .ok_or_else(|| anyhow::anyhow!("no ∂/∂μ"))?,
        )?;
        for n in 0..N {
            for d in 0..D {
                let want = if kl_d[d] > lambda {
                    beta * scale * c.mean[n * D + d] / N as f64
                } else {
                    0.0
                };
                assert_close(
                    &format!("{reduction:?} ∂loss/∂μ[{n},{d}]"),
                    g[n * D + d],
                    want,
                    TOL,
                )?;
            }
        }
    }
    // λ = 0 is the plain objective.
    let plain =
        ElboLoss::new(ElboLossConfig::default().with_free_bits(0.0))?.forward(&out, &c.xs()?)?;
    assert_close("λ=0", scalar(&plain.loss)?, recon + mean(&c.kl_n()), TOL)?;
    // λ above every dimension's KL makes the KL term the constant β·D·λ.
    let high =
        ElboLoss::new(ElboLossConfig::default().with_free_bits(5.0))?.forward(&out, &c.xs()?)?;
    assert_close("λ=5", scalar(&high.loss)?, recon + D as f64 * 5.0, TOL)?;
    Ok(())
}

device_test!(linear_warm_up_weights_the_kl_by_min_1_t_over_w);
fn linear_warm_up_weights_the_kl_by_min_1_t_over_w() -> Result<()> {
    let c = case();
    let out = c.output(c.posterior()?, zeros_z()?)?;
    let (recon, kl) = (-mean(&c.log_lik()), mean(&c.kl_n()));
    let beta = 2.0;
    let loss = ElboLoss::new(
        ElboLossConfig::default()
            .with_beta(beta)
            .with_kl_schedule(KlSchedule::Linear { warmup_steps: 1000 }),
    )?;
    for (step, weight) in [
        (0, 0.0),
        (1, 0.001),
        (250, 0.25),
        (999, 0.999),
        (1000, 1.0),
        (5000, 1.0),
    ] {
        assert_close(
            &format!("kl_weight({step})"),
            loss.kl_weight(step),
            beta * weight,
            TOL,
        )?;
        let elbo = loss.forward_at_step(&out, &c.xs()?, step)?;
        assert_close(
            &format!("loss at step {step}"),
            scalar(&elbo.loss)?,
            recon + beta * weight * kl,
            TOL,
        )?;
        assert_close(&format!("kl at step {step}"), scalar(&elbo.kl)?, kl, TOL)?;
    }
    // forward() is the end of the schedule: full β.
    assert_close(
        "forward",
        scalar(&loss.forward(&out, &c.xs()?)?.loss)?,
        recon + beta * kl,
        TOL,
    )?;
    Ok(())
}

device_test!(cyclical_schedule_rises_over_the_ramp_and_holds);
fn cyclical_schedule_rises_over_the_ramp_and_holds() -> Result<()> {
    let c = case();
    let out = c.output(c.posterior()?, zeros_z()?)?;
    let (recon, kl) = (-mean(&c.log_lik()), mean(&c.kl_n()));
    let schedule = KlSchedule::Cyclical {
        period: 100,
        ramp: 0.5,
    };
    let loss = ElboLoss::new(ElboLossConfig::default().with_kl_schedule(schedule))?;
    // τ = (t mod 100)/100, w = min(1, τ/0.5) (Fu et al. 2019).
    for (step, weight) in [
        (0, 0.0),
        (10, 0.2),
        (25, 0.5),
        (50, 1.0),
        (99, 1.0),
        (100, 0.0),
        (125, 0.5),
        (260, 1.0),
        (310, 0.2),
    ] {
        assert_close(&format!("w({step})"), schedule.weight(step), weight, TOL)?;
        let elbo = loss.forward_at_step(&out, &c.xs()?, step)?;
        assert_close(
            &format!("loss at {step}"),
            scalar(&elbo.loss)?,
            recon + weight * kl,
            TOL,
        )?;
    }
    assert_eq!(KlSchedule::Constant.weight(12345), 1.0);
    Ok(())
}

device_test!(warm_up_combines_with_free_bits);
fn warm_up_combines_with_free_bits() -> Result<()> {
    let c = case();
    let out = c.output(c.posterior()?, zeros_z()?)?;
    let recon = -mean(&c.log_lik());
    let clamped: f64 = c.kl_per_dim().iter().map(|&k| k.max(0.3)).sum();
    let loss = ElboLoss::new(
        ElboLossConfig::default()
            .with_beta(3.0)
            .with_free_bits(0.3)
            .with_kl_schedule(KlSchedule::Linear { warmup_steps: 10 }),
    )?;
    let elbo = loss.forward_at_step(&out, &c.xs()?, 4)?;
    assert_close(
        "β·w·Σ max(λ, KL_d)",
        scalar(&elbo.loss)?,
        recon + 3.0 * 0.4 * clamped,
        TOL,
    )?;
    Ok(())
}

/// log q(z) − log p(z) for one example, written out per dimension.
fn log_ratio(c: &Case, n: usize, z: &[f64]) -> f64 {
    (0..D)
        .map(|d| {
            let (m, lv) = (c.mean[n * D + d], c.log_var[n * D + d]);
            let log_q = -0.5 * (LN_2PI + lv + (z[d] - m).powi(2) / lv.exp());
            let log_p = -0.5 * (LN_2PI + z[d] * z[d]);
            log_q - log_p
        })
        .sum()
}

device_test!(monte_carlo_kl_with_one_sample_is_the_log_ratio);
fn monte_carlo_kl_with_one_sample_is_the_log_ratio() -> Result<()> {
    let c = case();
    let z: Vec<f64> = (0..N * D).map(|i| (i as f64 * 1.3).sin() * 1.5).collect();
    let out = c.output(c.posterior()?, tensor(&z, &[N, D])?)?;
    let elbo = ElboLoss::new(ElboLossConfig::default().with_kl_estimator(KlEstimator::MonteCarlo))?
        .forward(&out, &c.xs()?)?;
    let per_n: Vec<f64> = (0..N)
        .map(|n| log_ratio(&c, n, &z[n * D..(n + 1) * D]))
        .collect();
    assert_close("MC kl", scalar(&elbo.kl)?, mean(&per_n), TOL)?;
    let ll = c.log_lik();
    let per_example: Vec<f64> = (0..N).map(|n| per_n[n] - ll[n]).collect();
    assert_all_close(
        "MC per_example",
        &values(&elbo.per_example)?,
        &per_example,
        TOL,
    )?;
    Ok(())
}

device_test!(monte_carlo_kl_agrees_with_analytic_kl_in_expectation);
fn monte_carlo_kl_agrees_with_analytic_kl_in_expectation() -> Result<()> {
    const K: usize = 100_000;
    let c = case();
    let posterior = c.posterior()?;
    let z = posterior.rsample_n(K, &mut NoiseSource::new(77))?;
    let params = tensor(&c.logits, &[1, N, P])?
        .broadcast_as((K, N, P))?
        .contiguous()?;
    let out = VaeOutput {
        posterior,
        eps: z.zeros_like()?,
        z: z.clone(),
        params,
        likelihood: &StandardLikelihood::Bernoulli,
        prior: &c.prior,
    };
    let mc = ElboLoss::new(ElboLossConfig::default().with_kl_estimator(KlEstimator::MonteCarlo))?
        .forward(&out, &c.xs()?)?;
    let analytic = ElboLoss::new(ElboLossConfig::default())?.forward(&out, &c.xs()?)?;
    // Per-sample batch-mean log ratios, for the standard error.
    let zs = values(&z)?;
    let per_sample: Vec<f64> = (0..K)
        .map(|k| {
            (0..N)
                .map(|n| log_ratio(&c, n, &zs[(k * N + n) * D..(k * N + n + 1) * D]))
                .sum::<f64>()
                / N as f64
        })
        .collect();
    let (mc_mean, se) = mean_and_se(&per_sample);
    // The loss averages exactly these samples (10⁵ f64 terms: rounding < 1e-10).
    assert_close("MC kl = sample mean", scalar(&mc.kl)?, mc_mean, 1e-10)?;
    // Unbiased: within 4 standard errors of the closed form (probability of a false alarm
    // 6·10⁻⁵; fixed seed).
    assert_within_se(
        "MC KL vs analytic",
        scalar(&mc.kl)?,
        se,
        scalar(&analytic.kl)?,
        4.0,
    )?;
    assert_close("analytic kl", scalar(&analytic.kl)?, mean(&c.kl_n()), TOL)?;
    // Per dimension too (kl_per_dim averages the samples per dimension).
    for (d, (m, a)) in values(per_dim(&mc)?)?
        .iter()
        .zip(values(per_dim(&analytic)?)?)
        .enumerate()
    {
        // Each dimension's SE is below the total's; 4·(total SE) is a looser bound.
        ensure!(
            (m - a).abs() < 4.0 * se,
            "kl_per_dim[{d}]: MC {m} vs analytic {a} (se {se})"
        );
    }
    // A multi-sample pass averages the reconstruction over its K samples: with the same
    // logits for every sample it equals the one-sample value.
    assert_close(
        "K-sample reconstruction",
        scalar(&mc.reconstruction)?,
        -mean(&c.log_lik()),
        TOL,
    )?;
    Ok(())
}

device_test!(multi_sample_reconstruction_is_the_mean_over_samples);
fn multi_sample_reconstruction_is_the_mean_over_samples() -> Result<()> {
    let c = case();
    let second: Vec<f64> = c.logits.iter().map(|l| -0.5 * l + 0.3).collect();
    let mut both = c.logits.clone();
    both.extend_from_slice(&second);
    let out = VaeOutput {
        posterior: c.posterior()?,
        eps: Tensor::zeros((2, N, D), DType::F64, &dev())?,
        z: Tensor::zeros((2, N, D), DType::F64, &dev())?,
        params: tensor(&both, &[2, N, P])?,
        likelihood: &StandardLikelihood::Bernoulli,
        prior: &c.prior,
    };
    let elbo = ElboLoss::new(ElboLossConfig::default())?.forward(&out, &c.xs()?)?;
    let other = Case {
        logits: second,
        ..case()
    };
    let recon = -(mean(&c.log_lik()) + mean(&other.log_lik())) / 2.0;
    assert_close("mean over K", scalar(&elbo.reconstruction)?, recon, TOL)?;
    Ok(())
}

/// A small smooth (tanh) VAE in f64 for finite differences.
fn small_vae(
    likelihood: StandardLikelihood,
    store: &ParamStore,
) -> Result<Vae<MlpEncoder, MlpDecoder>> {
    let vb = store.var_builder(DType::F64, &dev());
    let enc = MlpEncoder::new(
        &MlpEncoderConfig::new(P, &[4], 2).with_activation(Activation::Tanh),
        vb.pp("enc"),
    )?;
    let dec = MlpDecoder::new(
        &MlpDecoderConfig::new(2, &[4], P)
            .with_activation(Activation::Tanh)
            .with_params_per_element(likelihood.params_per_element()),
        vb.pp("dec"),
    )?;
    Ok(Vae::new(enc, dec, likelihood)?)
}

device_test!(elbo_gradient_matches_finite_differences);
fn elbo_gradient_matches_finite_differences() -> Result<()> {
    let c = case();
    let xs = c.xs()?;
    let eps = tensor(&[0.3, -1.1, 0.8, 0.2, -0.5, 1.7], &[N, 2])?;
    let configs = [
        (
            StandardLikelihood::Bernoulli,
            ElboLossConfig::default().with_beta(1.5),
        ),
        (
            StandardLikelihood::ContinuousBernoulli,
            ElboLossConfig::default()
                .with_kl_estimator(KlEstimator::MonteCarlo)
                .with_reduction(Reduction::Sum),
        ),
        (
            StandardLikelihood::gaussian_per_element(GaussianMean::Sigmoid),
            ElboLossConfig::default().with_beta(0.7),
        ),
    ];
    for (case_index, (likelihood, config)) in configs.into_iter().enumerate() {
        let store = ParamStore::new(10 + case_index as u64);
        let vae = small_vae(likelihood, &store)?;
        // With free bits on the first case, put λ between the two dimensions' KLs so one
        // is clamped and one is not (and neither within a step of the kink).
        let config = if case_index == 0 {
            let out = vae.forward_with_noise_t(&xs, &eps, true)?;
            let kl_d = values(per_dim(
                &ElboLoss::new(config.clone())?.forward(&out, &xs)?,
            )?)?;
            let lambda = 0.5 * (kl_d[0] + kl_d[1]);
            ensure!(
                (kl_d[0] - kl_d[1]).abs() > 1e-3,
                "KLs too close for a free-bits check: {kl_d:?}"
            );
            config.with_free_bits(lambda)
        } else {
            config
        };
        let loss = ElboLoss::new(config)?;
        let eval = || -> Result<f64> {
            let out = vae.forward_with_noise_t(&xs, &eps, true)?;
            scalar(&loss.forward(&out, &xs)?.loss)
        };
        let out = vae.forward_with_noise_t(&xs, &eps, true)?;
        let grads = loss.forward(&out, &xs)?.loss.backward()?;
        let mut checked = 0;
        for (name, var) in store.named_vars()? {
            let grad = values(
                grads
                    .get(var.as_tensor())
                    .ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?,
            )?;
            let original = values(var.as_tensor())?;
            for i in 0..original.len() {
                // Central differences with h = 1e-5: truncation h²/6·|f‴| ≈ 1e-10 and
                // rounding ε·|f|/h ≈ 1e-10 for |f| ~ 10, so 1e-6 (relative to max(1, |g|))
                // is ~10⁴ times the expected error.
                let h = 1e-5;
                let mut plus = original.clone();
                plus[i] += h;
                var.set(&Tensor::from_vec(plus, var.shape(), &dev())?)?;
                let f_plus = eval()?;
                let mut minus = original.clone();
                minus[i] -= h;
                var.set(&Tensor::from_vec(minus, var.shape(), &dev())?)?;
                let f_minus = eval()?;
                var.set(&Tensor::from_vec(original.clone(), var.shape(), &dev())?)?;
                let fd = (f_plus - f_minus) / (2.0 * h);
                assert_close(
                    &format!("case {case_index}: ∂loss/∂{name}[{i}]"),
                    grad[i],
                    fd,
                    1e-6 * grad[i].abs().max(1.0),
                )?;
                checked += 1;
            }
        }
        ensure!(checked > 80, "only {checked} parameters checked");
    }
    Ok(())
}

device_test!(mlp_vae_on_image_shaped_data_scores_like_flat_data);
fn mlp_vae_on_image_shaped_data_scores_like_flat_data() -> Result<()> {
    // An MLP VAE takes (N, 1, 4, 5) images as 20-wide rows; with two parameters per pixel
    // the decoder's first 20 outputs are the means and the next 20 the log-variances, in
    // both layouts. The loss must not depend on the layout (f32 through identical ops:
    // bit-identical).
    let store = ParamStore::new(3);
    let vae = common::mlp_vae(
        &store,
        20,
        &[8],
        2,
        StandardLikelihood::gaussian_per_element(GaussianMean::Sigmoid),
        DType::F32,
    )?;
    let flat = NoiseSource::new(1).uniform((3, 20), DType::F32, &dev())?;
    let image = flat.reshape((3, 1, 4, 5))?;
    let eps = NoiseSource::new(2).standard_normal((3, 2), DType::F32, &dev())?;
    let loss = ElboLoss::new(ElboLossConfig::default())?;
    let a = loss.forward(&vae.forward_with_noise_t(&flat, &eps, true)?, &flat)?;
    let out = vae.forward_with_noise_t(&image, &eps, true)?;
    assert_eq!(out.params.dims(), &[3, 2, 4, 5]);
    assert_eq!(out.mean()?.dims(), &[3, 1, 4, 5]);
    let b = loss.forward(&out, &image)?;
    common::assert_bit_identical("loss", &a.loss, &b.loss)?;
    common::assert_bit_identical("per_example", &a.per_example, &b.per_example)?;
    Ok(())
}

device_test!(an_empty_batch_is_an_error_not_nan);
fn an_empty_batch_is_an_error_not_nan() -> Result<()> {
    let prior = StandardNormal::new(D)?;
    let empty = Tensor::zeros((0, D), DType::F64, &dev())?;
    let posterior = DiagonalGaussian::new(empty.clone(), empty.clone())?;
    let out = VaeOutput {
        posterior,
        eps: empty.clone(),
        z: empty,
        params: Tensor::zeros((0, P), DType::F64, &dev())?,
        likelihood: &StandardLikelihood::Bernoulli,
        prior: &prior,
    };
    let xs = Tensor::zeros((0, P), DType::F64, &dev())?;
    for reduction in [Reduction::BatchMean, Reduction::Sum] {
        let err = ElboLoss::new(ElboLossConfig::default().with_reduction(reduction))?
            .forward(&out, &xs)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        ensure!(err.contains("at least one example"), "{reduction:?}: {err}");
    }
    Ok(())
}
