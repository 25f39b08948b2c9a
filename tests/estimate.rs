//! Estimators on a model whose likelihood is known exactly: probabilistic PCA (a linear
//! decoder with fixed Gaussian noise), where p(x) = N(b, WWᵀ + σ²I) and the posterior is
//! Gaussian in closed form (Tipping & Bishop 1999). The importance-sampled log-likelihood
//! must find log p(x); the IWAE bound must rise with k and stay below it.

mod common;

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor};
use candle_vae::estimate::{
    iwae_bound, log_importance_weights, log_likelihood, log_likelihood_with,
};
use candle_vae::{
    ActiveUnits, DiagonalGaussian, Dims, ElboLoss, ElboLossConfig, Encoder, GaussianPrior,
    ImportanceSamplingConfig, KlEstimator, MlpDecoder, MlpDecoderConfig, NoiseSource, ParamStore,
    StandardLikelihood, Vae,
};
use common::{
    Matrix, assert_all_close, assert_close, dev, mean_and_se, mvn_log_density, tensor, values,
};

const DATA: usize = 4;
const LATENT: usize = 2;
const SIGMA: f64 = 0.5;

/// A probabilistic-PCA model: z ~ N(0, I₂), x | z ~ N(Wz + b, σ²I₄).
struct Ppca {
    /// W, row-major 4 × 2.
    w: [f64; DATA * LATENT],
    b: [f64; DATA],
}

impl Ppca {
    fn general() -> Self {
        Self {
            w: [1.0, 0.5, -0.3, 0.8, 0.6, -0.7, 0.2, 0.4],
            b: [0.1, -0.2, 0.3, 0.0],
        }
    }

    /// Orthogonal columns, so WᵀW and hence the posterior covariance are diagonal.
    fn orthogonal() -> Self {
        Self {
            w: [1.0, 0.5, 0.5, -1.0, -0.5, 0.0, 0.2, 0.0],
            b: [0.1, -0.2, 0.3, 0.0],
        }
    }

    fn wt(&self, i: usize, j: usize) -> f64 {
        self.w[i * LATENT + j]
    }

    /// The marginal covariance WWᵀ + σ²I.
    fn marginal_cov(&self) -> Matrix {
        let mut c = vec![0.0; DATA * DATA];
        for i in 0..DATA {
            for j in 0..DATA {
                c[i * DATA + j] = (0..LATENT)
                    .map(|k| self.wt(i, k) * self.wt(j, k))
                    .sum::<f64>()
                    + if i == j { SIGMA * SIGMA } else { 0.0 };
            }
        }
        Matrix::new(DATA, c)
    }

    /// log p(x) = log N(x; b, WWᵀ + σ²I), by Cholesky.
    fn log_px(&self, x: &[f64]) -> Result<f64> {
        mvn_log_density(x, &self.b, &self.marginal_cov())
    }

    /// M = WᵀW + σ²I (2 × 2).
    fn m(&self) -> Matrix {
        let mut m = vec![0.0; LATENT * LATENT];
        for i in 0..LATENT {
            for j in 0..LATENT {
                m[i * LATENT + j] = (0..DATA)
                    .map(|k| self.wt(k, i) * self.wt(k, j))
                    .sum::<f64>()
                    + if i == j { SIGMA * SIGMA } else { 0.0 };
            }
        }
        Matrix::new(LATENT, m)
    }

    /// The exact posterior p(z|x) = N(M⁻¹Wᵀ(x − b), σ²M⁻¹): the matrix M⁻¹Wᵀ (2 × 4,
    /// row-major) and the covariance.
    fn posterior_map(&self) -> Result<(Vec<f64>, Matrix)> {
        let m_inv = self.m().inverse_spd()?;
        let mut a = vec![0.0; LATENT * DATA];
        for i in 0..LATENT {
            for j in 0..DATA {
                a[i * DATA + j] = (0..LATENT).map(|k| m_inv.at(i, k) * self.wt(j, k)).sum();
            }
        }
        let cov = Matrix::new(
            LATENT,
            m_inv.data.iter().map(|v| SIGMA * SIGMA * v).collect(),
        );
        Ok((a, cov))
    }

    fn posterior_mean(&self, x: &[f64]) -> Result<Vec<f64>> {
        let (a, _) = self.posterior_map()?;
        Ok((0..LATENT)
            .map(|i| {
                (0..DATA)
                    .map(|j| a[i * DATA + j] * (x[j] - self.b[j]))
                    .sum()
            })
            .collect())
    }

    /// `n` examples drawn from the model.
    fn sample(&self, n: usize, seed: u64) -> Result<Vec<Vec<f64>>> {
        let mut noise = NoiseSource::new(seed);
        let z = values(&noise.standard_normal((n, LATENT), DType::F64, &dev())?)?;
        let e = values(&noise.standard_normal((n, DATA), DType::F64, &dev())?)?;
        Ok((0..n)
            .map(|r| {
                (0..DATA)
                    .map(|i| {
                        (0..LATENT)
                            .map(|k| self.wt(i, k) * z[r * LATENT + k])
                            .sum::<f64>()
                            + self.b[i]
                            + SIGMA * e[r * DATA + i]
                    })
                    .collect()
            })
            .collect())
    }

    /// The model as a VAE: a linear `MlpDecoder` (no hidden layer) with W and b, a fixed
    /// Gaussian likelihood with σ, and `encoder`.
    fn vae(&self, encoder: FixedEncoder) -> Result<Vae<FixedEncoder, MlpDecoder>> {
        let store = ParamStore::new(0);
        let dec = MlpDecoder::new(
            &MlpDecoderConfig::new(LATENT, &[], DATA),
            store.var_builder(DType::F64, &dev()).pp("dec"),
        )?;
        for (name, var) in store.named_vars()? {
            match name.as_str() {
                "dec.fc2.weight" => var.set(&tensor(&self.w, &[DATA, LATENT])?)?,
                "dec.fc2.bias" => var.set(&tensor(&self.b, &[DATA])?)?,
                other => anyhow::bail!("unexpected parameter {other}"),
            }
        }
        Ok(Vae::new(
            encoder,
            dec,
            StandardLikelihood::gaussian(SIGMA)?,
        )?)
    }
}

/// An encoder with fixed weights: q(z|x) = N(Ax + c, diag(v)), the same v for every x.
struct FixedEncoder {
    /// Aᵀ, (4, 2).
    a_t: Tensor,
    c: Tensor,
    log_var: Tensor,
}

impl FixedEncoder {
    /// From A (2 × 4 row-major), c and the variances.
    fn new(a: &[f64], c: &[f64], var: &[f64]) -> Result<Self> {
        let log_var: Vec<f64> = var.iter().map(|v| v.ln()).collect();
        Ok(Self {
            a_t: tensor(a, &[LATENT, DATA])?.t()?.contiguous()?,
            c: tensor(c, &[1, LATENT])?,
            log_var: tensor(&log_var, &[1, LATENT])?,
        })
    }

    /// The exact posterior (valid as a diagonal Gaussian only when it is diagonal).
    fn exact(model: &Ppca) -> Result<Self> {
        let (a, cov) = model.posterior_map()?;
        let c: Vec<f64> = (0..LATENT)
            .map(|i| -(0..DATA).map(|j| a[i * DATA + j] * model.b[j]).sum::<f64>())
            .collect();
        Self::new(&a, &c, &[cov.at(0, 0), cov.at(1, 1)])
    }

    /// Deliberately imperfect: the posterior mean shrunk by 10 % and shifted by
    /// (0.05, −0.05), variances 1.3 × the posterior's marginal variances, correlation
    /// ignored.
    fn imperfect(model: &Ppca) -> Result<Self> {
        let (a, cov) = model.posterior_map()?;
        let a: Vec<f64> = a.iter().map(|v| 0.9 * v).collect();
        let shift = [0.05, -0.05];
        let c: Vec<f64> = (0..LATENT)
            .map(|i| shift[i] - (0..DATA).map(|j| a[i * DATA + j] * model.b[j]).sum::<f64>())
            .collect();
        Self::new(&a, &c, &[1.3 * cov.at(0, 0), 1.3 * cov.at(1, 1)])
    }

    /// q(z|x) for one example, in f64: mean and variances.
    fn q(&self, x: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        let q = self.encode(&tensor(x, &[1, DATA])?)?;
        Ok((values(q.mean())?, values(&q.variance()?)?))
    }
}

impl Encoder for FixedEncoder {
    type Posterior = DiagonalGaussian;

    fn encode(&self, xs: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        let n = xs.dim(0)?;
        let mean = xs.matmul(&self.a_t)?.broadcast_add(&self.c)?;
        DiagonalGaussian::new(mean, self.log_var.broadcast_as((n, LATENT))?.contiguous()?)
    }
}

impl Dims for FixedEncoder {
    fn latent_dim(&self) -> usize {
        LATENT
    }

    fn data_shape(&self) -> Vec<usize> {
        vec![DATA]
    }
}

fn batch(rows: &[Vec<f64>]) -> Result<Tensor> {
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    tensor(&flat, &[rows.len(), DATA])
}

/// KL(N(m, diag v) ‖ N(μ, Σ)) for a 2-d full-covariance target.
fn kl_diag_to_full(m: &[f64], v: &[f64], mu: &[f64], sigma: &Matrix) -> Result<f64> {
    let inv = sigma.inverse_spd()?;
    let trace: f64 = (0..LATENT).map(|i| inv.at(i, i) * v[i]).sum();
    let d: Vec<f64> = (0..LATENT).map(|i| mu[i] - m[i]).collect();
    let quad: f64 = (0..LATENT)
        .flat_map(|i| (0..LATENT).map(move |j| (i, j)))
        .map(|(i, j)| d[i] * inv.at(i, j) * d[j])
        .sum();
    let log_det_q: f64 = v.iter().map(|x| x.ln()).sum();
    Ok(0.5 * (trace + quad - LATENT as f64 + sigma.log_det_spd()? - log_det_q))
}

device_test!(closed_form_is_consistent_with_bayes_rule);
fn closed_form_is_consistent_with_bayes_rule() -> Result<()> {
    // Guard on the test's own algebra: log p(x) = log p(x|z) + log p(z) − log p(z|x) for
    // any z, with every term computed independently here (1e-12: f64 on O(10) values).
    let model = Ppca::general();
    let (_, cov) = model.posterior_map()?;
    for x in model.sample(5, 1)? {
        let mean = model.posterior_mean(&x)?;
        for z in [[0.0, 0.0], [0.7, -1.2], [-2.0, 0.3]] {
            let recon: Vec<f64> = (0..DATA)
                .map(|i| (0..LATENT).map(|k| model.wt(i, k) * z[k]).sum::<f64>() + model.b[i])
                .collect();
            let log_px_z: f64 = (0..DATA)
                .map(|i| {
                    -0.5 * (common::LN_2PI
                        + (SIGMA * SIGMA).ln()
                        + ((x[i] - recon[i]) / SIGMA).powi(2))
                })
                .sum();
            let log_pz = -0.5 * (2.0 * common::LN_2PI + z[0] * z[0] + z[1] * z[1]);
            let log_post = mvn_log_density(&z, &mean, &cov)?;
            assert_close(
                "Bayes",
                log_px_z + log_pz - log_post,
                model.log_px(&x)?,
                1e-12,
            )?;
        }
    }
    Ok(())
}

device_test!(exact_posterior_gives_exact_weights);
fn exact_posterior_gives_exact_weights() -> Result<()> {
    // With orthogonal columns the true posterior is diagonal, so an encoder that outputs
    // it makes every importance weight equal p(x): log w = log p(x) for every sample, and
    // the estimate is exact with any k. Rounding only (f64, values O(10)): 1e-11.
    let model = Ppca::orthogonal();
    let vae = model.vae(FixedEncoder::exact(&model)?)?;
    let rows = model.sample(6, 2)?;
    let xs = batch(&rows)?;
    let exact: Vec<f64> = rows
        .iter()
        .map(|x| model.log_px(x))
        .collect::<Result<_>>()?;
    let out = vae.forward_samples_t(&xs, 50, &mut NoiseSource::new(3), false)?;
    let log_w = log_importance_weights(&out, &xs)?;
    assert_eq!(log_w.dims(), &[50, 6]);
    for (i, v) in values(&log_w)?.iter().enumerate() {
        assert_close(&format!("log w[{i}]"), *v, exact[i % 6], 1e-11)?;
    }
    let est = log_likelihood(
        &vae,
        &xs,
        &ImportanceSamplingConfig::new(3),
        &mut NoiseSource::new(4),
    )?;
    assert_all_close("log p(x), exact posterior", &values(&est)?, &exact, 1e-11)?;
    Ok(())
}

device_test!(log_likelihood_in_blocks_keeps_every_example_in_place);
fn log_likelihood_in_blocks_keeps_every_example_in_place() -> Result<()> {
    // log_likelihood cuts the batch into blocks of images so that one pass holds at most
    // 2^21 likelihood parameters: with DATA = 4 values per image and 13,107 samples per
    // pass, a block is 40 images, so 100 images go through as 40 + 40 + 20. With the
    // exact posterior every weight is p(x), so each estimate must be its own image's
    // log p(x) to rounding, in the input's order.
    let model = Ppca::orthogonal();
    let vae = model.vae(FixedEncoder::exact(&model)?)?;
    let rows = model.sample(100, 21)?;
    let xs = batch(&rows)?;
    let chunk = (1 << 21) / (DATA * 40);
    let est = log_likelihood(
        &vae,
        &xs,
        &ImportanceSamplingConfig::new(chunk + 7).with_chunk_size(chunk),
        &mut NoiseSource::new(22),
    )?;
    assert_eq!(est.dims(), &[100]);
    let exact: Vec<f64> = rows
        .iter()
        .map(|x| model.log_px(x))
        .collect::<Result<_>>()?;
    assert_all_close("log p(x), in blocks", &values(&est)?, &exact, 1e-10)
}

device_test!(importance_sampling_matches_closed_form_log_likelihood);
fn importance_sampling_matches_closed_form_log_likelihood() -> Result<()> {
    let model = Ppca::general();
    let encoder = FixedEncoder::imperfect(&model)?;
    let vae = model.vae(encoder)?;
    let rows = model.sample(8, 5)?;
    let xs = batch(&rows)?;
    let k = 5000;
    let est = values(&log_likelihood(
        &vae,
        &xs,
        &ImportanceSamplingConfig::new(k),
        &mut NoiseSource::new(6),
    )?)?;
    let out = vae.forward_samples_t(&xs, k, &mut NoiseSource::new(7), false)?;
    let exact = rows
        .iter()
        .map(|x| model.log_px(x))
        .collect::<Result<Vec<_>>>()?;
    assert_estimate_within_se(
        "log p(x)",
        &est,
        &exact,
        &log_importance_weights(&out, &xs)?,
    )
}

/// Checks importance-sampled estimates `est` against the exact `exact` per example to
/// 0.05 nats, after checking that 0.05 is at least 4 standard errors of the estimator: its
/// standard error by the delta method, sd(w)/(√k·mean(w)), measured on an independent
/// `(k, N)` set of log weights `log_w`. A correct estimator then fails with probability
/// < 10⁻⁴ (fixed seeds: deterministic).
fn assert_estimate_within_se(what: &str, est: &[f64], exact: &[f64], log_w: &Tensor) -> Result<()> {
    let log_w = log_w.t()?.contiguous()?.to_vec2::<f64>()?;
    for (i, &exact) in exact.iter().enumerate() {
        let w: Vec<f64> = log_w[i].iter().map(|l| (l - exact).exp()).collect();
        let (mean_w, se_w) = mean_and_se(&w);
        let se_log = se_w / mean_w;
        ensure!(
            4.0 * se_log <= 0.05,
            "example {i}: SE {se_log:.4} too large for a 0.05 check"
        );
        assert_close(
            &format!("{what}[{i}] (SE {se_log:.4})"),
            est[i],
            exact,
            0.05,
        )?;
    }
    Ok(())
}

device_test!(importance_sampling_with_a_shifted_scaled_prior_matches_closed_form);
fn importance_sampling_with_a_shifted_scaled_prior_matches_closed_form() -> Result<()> {
    // z ~ N(m, diag s²), x | z ~ N(Wz + b, σ²I): with z = m + s·z′ this is the pPCA model
    // with W′ = W diag(s) and b′ = Wm + b, so log p(x) = log N(x; b′, W′W′ᵀ + σ²I). The
    // VAE keeps W, b and takes the prior through `with_prior`; the encoder is the
    // imperfect one of the standardised model, mapped back to z.
    let model = Ppca::general();
    let (m, s) = ([0.4, -0.3], [1.5, 0.6]);
    let mut w = [0.0; DATA * LATENT];
    let mut b = model.b;
    for i in 0..DATA {
        for k in 0..LATENT {
            w[i * LATENT + k] = model.wt(i, k) * s[k];
            b[i] += model.wt(i, k) * m[k];
        }
    }
    let standardised = Ppca { w, b };
    let (a, cov) = standardised.posterior_map()?;
    let c: Vec<f64> = (0..LATENT)
        .map(|i| {
            -(0..DATA)
                .map(|j| a[i * DATA + j] * standardised.b[j])
                .sum::<f64>()
        })
        .collect();
    // q(z′|x) = N(0.9(A x + c) + δ, 1.3 v); in z: mean m + s·(…), variance s²·(…).
    let shift = [0.05, -0.05];
    let a_z: Vec<f64> = (0..LATENT * DATA)
        .map(|ij| s[ij / DATA] * 0.9 * a[ij])
        .collect();
    let c_z: Vec<f64> = (0..LATENT)
        .map(|i| m[i] + s[i] * (0.9 * c[i] + shift[i]))
        .collect();
    let v_z: Vec<f64> = (0..LATENT)
        .map(|i| s[i] * s[i] * 1.3 * cov.at(i, i))
        .collect();
    let prior = GaussianPrior::new(
        tensor(&m, &[LATENT])?,
        tensor(&[2.0 * s[0].ln(), 2.0 * s[1].ln()], &[LATENT])?,
    )?;
    let vae = model
        .vae(FixedEncoder::new(&a_z, &c_z, &v_z)?)?
        .with_prior(prior)?;
    let rows = standardised.sample(8, 15)?;
    let xs = batch(&rows)?;
    let k = 5000;
    let est = values(&log_likelihood(
        &vae,
        &xs,
        &ImportanceSamplingConfig::new(k),
        &mut NoiseSource::new(16),
    )?)?;
    let out = vae.forward_samples_t(&xs, k, &mut NoiseSource::new(17), false)?;
    let exact = rows
        .iter()
        .map(|x| standardised.log_px(x))
        .collect::<Result<Vec<_>>>()?;
    assert_estimate_within_se(
        "log p(x), N(m, s²) prior",
        &est,
        &exact,
        &log_importance_weights(&out, &xs)?,
    )?;
    // The same model with the standard prior is a different model: its estimate is off.
    let standard = values(&log_likelihood(
        &model.vae(FixedEncoder::new(&a_z, &c_z, &v_z)?)?,
        &xs,
        &ImportanceSamplingConfig::new(k),
        &mut NoiseSource::new(16),
    )?)?;
    let gap: f64 = rows
        .iter()
        .zip(&standard)
        .map(|(x, l)| Ok((standardised.log_px(x)? - l).abs()))
        .sum::<Result<f64>>()?
        / rows.len() as f64;
    ensure!(
        gap > 0.2,
        "the prior made no difference: mean gap {gap:.3} nats"
    );
    Ok(())
}

device_test!(iwae_bound_rises_with_k_and_stays_below_log_likelihood);
fn iwae_bound_rises_with_k_and_stays_below_log_likelihood() -> Result<()> {
    let model = Ppca::general();
    let encoder = FixedEncoder::imperfect(&model)?;
    // KL(q(z|x) ‖ p(z|x)) in closed form, for E[L₁] = log p(x) − KL.
    let (_, post_cov) = model.posterior_map()?;
    let rows = model.sample(8, 8)?;
    let mut exact = Vec::new();
    let mut kl = Vec::new();
    for x in &rows {
        exact.push(model.log_px(x)?);
        let (m, v) = encoder.q(x)?;
        kl.push(kl_diag_to_full(
            &m,
            &v,
            &model.posterior_mean(x)?,
            &post_cov,
        )?);
    }
    let vae = model.vae(encoder)?;
    // Each example repeated 2000 times: the gap L_k − log p(x) is averaged over 16,000
    // independent bounds so its standard error is ~10⁻³ nats.
    let repeats = 2000;
    let xs = batch(&rows)?.repeat((repeats, 1))?;
    let mut noise = NoiseSource::new(9);
    let mut gaps: Vec<(usize, f64, f64)> = Vec::new();
    for k in [1, 3, 10, 30] {
        let out = vae.forward_samples_t(&xs, k, &mut noise, false)?;
        let bound = values(&iwae_bound(&out, &xs)?)?;
        let gap: Vec<f64> = bound
            .iter()
            .enumerate()
            .map(|(r, l)| l - exact[r % 8])
            .collect();
        let (mean, se) = mean_and_se(&gap);
        // Below log p(x): the mean gap is negative by more than 4 SE.
        ensure!(
            mean < -4.0 * se,
            "k = {k}: L_k − log p(x) = {mean:.5} ± {se:.5} is not below 0"
        );
        gaps.push((k, mean, se));
    }
    // E[L₁] = log p(x) − KL(q ‖ p(z|x)): the ELBO's gap is the KL to the true posterior.
    let kl_mean = kl.iter().sum::<f64>() / kl.len() as f64;
    let (_, gap1, se1) = gaps[0];
    ensure!(
        (gap1 + kl_mean).abs() < 4.0 * se1,
        "E[L₁] − log p(x) = {gap1:.5} ± {se1:.5}, expected −KL = {:.5}",
        -kl_mean
    );
    // Strictly rising in k, each step significant at 4 SE of the difference (the runs are
    // independent, so the variances add).
    for pair in gaps.windows(2) {
        let ((k0, g0, s0), (k1, g1, s1)) = (pair[0], pair[1]);
        let se = (s0 * s0 + s1 * s1).sqrt();
        ensure!(
            g1 - g0 > 4.0 * se,
            "L_{k1} − L_{k0} = {:.5}, not > 4 × {se:.5}",
            g1 - g0
        );
    }
    Ok(())
}

device_test!(chunk_size_does_not_change_the_estimate);
fn chunk_size_does_not_change_the_estimate() -> Result<()> {
    let model = Ppca::general();
    let vae = model.vae(FixedEncoder::imperfect(&model)?)?;
    let xs = batch(&model.sample(4, 10)?)?;
    let k = 5000;
    let run = |chunk: usize, seed: u64| -> Result<Vec<f64>> {
        let config = ImportanceSamplingConfig::new(k).with_chunk_size(chunk);
        values(&log_likelihood(
            &vae,
            &xs,
            &config,
            &mut NoiseSource::new(seed),
        )?)
    };
    let reference = run(100, 11)?;
    // Same seed, same samples (the source is consumed in the same order whatever the
    // chunking); only the grouping of the log-sum-exp differs: f64 rounding, < 1e-12 on
    // values of magnitude ~5.
    for chunk in [7, 1000, 5000, 6000] {
        assert_all_close(
            &format!("chunk {chunk}"),
            &run(chunk, 11)?,
            &reference,
            1e-12,
        )?;
    }
    // A different seed gives different samples, hence a (slightly) different estimate.
    let other = run(100, 12)?;
    ensure!(
        other
            .iter()
            .zip(&reference)
            .any(|(a, b)| (a - b).abs() > 1e-6),
        "seed has no effect"
    );
    Ok(())
}

device_test!(chunked_log_sum_exp_is_exact_on_known_weights);
fn chunked_log_sum_exp_is_exact_on_known_weights() -> Result<()> {
    // log w_j = 1000 + ln j for samples j = 1…K: the estimate is 1000 + ln((K + 1)/2),
    // with no overflow although e^1000 is not representable.
    let k = 1234;
    for chunk in [1, 10, 100, 5000] {
        let mut next = 1usize;
        let est = log_likelihood_with(
            &ImportanceSamplingConfig::new(k).with_chunk_size(chunk),
            &mut NoiseSource::new(0),
            |n, _| {
                let vals: Vec<f64> = (next..next + n)
                    .flat_map(|j| [1000.0 + (j as f64).ln(), -(j as f64)])
                    .collect();
                next += n;
                Tensor::from_vec(vals, (n, 2), &dev())
            },
        )?;
        let est = values(&est)?;
        // Second example: log w_j = −j, estimate ln(Σ e^{−j} / K) = ln(e⁻¹/(1 − e⁻¹)·(1 − e^{−K})/K).
        let second = ((-1f64).exp() / (1.0 - (-1f64).exp())).ln() - (k as f64).ln();
        // f64 log-sum-exp over ≤ 1234 terms of magnitude 1000: rounding ~1e-13·1000.
        assert_all_close(
            &format!("chunk {chunk}"),
            &est,
            &[1000.0 + ((k as f64 + 1.0) / 2.0).ln(), second],
            1e-10,
        )?;
    }
    // Log weights of the wrong shape are an error.
    let bad = log_likelihood_with(
        &ImportanceSamplingConfig::new(4),
        &mut NoiseSource::new(0),
        |n, _| Tensor::zeros((n + 1, 2), DType::F64, &dev()),
    );
    ensure!(bad.is_err(), "wrong number of weights accepted");
    Ok(())
}

device_test!(one_sample_iwae_bound_is_minus_the_monte_carlo_elbo);
fn one_sample_iwae_bound_is_minus_the_monte_carlo_elbo() -> Result<()> {
    let model = Ppca::general();
    let vae = model.vae(FixedEncoder::imperfect(&model)?)?;
    let xs = batch(&model.sample(5, 13)?)?;
    let out = vae.forward_samples_t(&xs, 1, &mut NoiseSource::new(14), false)?;
    let l1 = values(&iwae_bound(&out, &xs)?)?;
    let elbo = ElboLoss::new(ElboLossConfig::default().with_kl_estimator(KlEstimator::MonteCarlo))?
        .forward(&out, &xs)?;
    let neg: Vec<f64> = values(&elbo.per_example)?.iter().map(|v| -v).collect();
    // Same terms summed in a different order: f64 rounding on O(10) values.
    assert_all_close("L₁ = ELBO", &l1, &neg, 1e-12)?;
    Ok(())
}

device_test!(active_units_on_constructed_means);
fn active_units_on_constructed_means() -> Result<()> {
    // Five latent dimensions with known population variances over 8 examples split into
    // two batches: ±0.2 → 0.04 (active); constant → 0; ±0.05 → 0.0025; ±0.15 → 0.0225
    // (active); 0…7 → 5.25 (active).
    let column = |i: usize| -> [f64; 5] {
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        [0.3 + 0.2 * sign, -1.0, 0.05 * sign, 0.15 * sign, i as f64]
    };
    let rows: Vec<f64> = (0..8).flat_map(column).collect();
    let first = tensor(&rows[..15], &[3, 5])?;
    let second = tensor(&rows[15..], &[5, 5])?.to_dtype(DType::F32)?;
    let au = ActiveUnits::from_means([first, second], ActiveUnits::BURDA_THRESHOLD)?;
    // f32 storage of the second batch limits agreement to ~1e-7 relative on the squares.
    assert_all_close(
        "variances",
        &au.variances,
        &[0.04, 0.0, 0.0025, 0.0225, 5.25],
        1e-6,
    )?;
    assert_eq!(au.count(), 3);
    assert_eq!(au.threshold, 0.01);
    // A higher threshold counts fewer units.
    assert_eq!(
        ActiveUnits::from_means([tensor(&rows, &[8, 5])?], 0.03)?.count(),
        2
    );
    // Widths that disagree, or no examples, are errors.
    ensure!(
        ActiveUnits::from_means(
            [tensor(&rows[..10], &[2, 5])?, tensor(&rows[..8], &[2, 4])?],
            0.01
        )
        .is_err()
    );
    ensure!(ActiveUnits::from_means(Vec::<Tensor>::new(), 0.01).is_err());
    // A threshold that is NaN (every comparison false: 0 active units), negative or
    // infinite is an error naming it, not a count.
    for bad in [f64::NAN, -0.01, f64::INFINITY] {
        match ActiveUnits::from_means([tensor(&rows, &[8, 5])?], bad) {
            Err(err @ candle_vae::Error::InvalidConfig { .. }) => ensure!(
                err.to_string().contains("threshold"),
                "threshold {bad}: {err}"
            ),
            other => anyhow::bail!("threshold {bad}: expected InvalidConfig, got {other:?}"),
        }
    }
    Ok(())
}
