//! The reparameterization trick z = μ + σ·ε: Monte-Carlo gradients of E[Σ z²] against
//! their closed forms, seeded determinism, the deterministic twin, shapes, and the noise
//! source's checkpointable state.

mod common;

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor, Var};
use candle_vae::{DiagonalGaussian, NoiseSource, NoiseState, Reparameterize};
use common::{
    assert_all_close, assert_bit_identical, assert_close, assert_within_se, dev, mean_and_se,
    tensor, values,
};

/// Samples for the Monte-Carlo gradients.
const SAMPLES: usize = 200_000;

/// A correct estimator lands outside ±4 standard errors with probability 6·10⁻⁵ (normal
/// approximation, fine at 2·10⁵ samples of these polynomial integrands); with a fixed
/// seed the test is deterministic.
const SE_MULTIPLE: f64 = 4.0;

const MU: [f64; 3] = [0.5, -1.0, 2.0];
const LOG_VAR: [f64; 3] = [0.0, -1.0, 0.8];

device_test!(monte_carlo_gradients_of_sum_of_squares_match_closed_form);
fn monte_carlo_gradients_of_sum_of_squares_match_closed_form() -> Result<()> {
    // E_q[Σ z²] = Σ μ² + σ², so ∂/∂μ = 2μ and ∂/∂log σ² = σ².
    let mu = Var::from_tensor(&tensor(&MU, &[1, 3])?)?;
    let log_var = Var::from_tensor(&tensor(&LOG_VAR, &[1, 3])?)?;
    let q = DiagonalGaussian::new(mu.as_tensor().clone(), log_var.as_tensor().clone())?;
    let z = q.rsample_n(SAMPLES, &mut NoiseSource::new(2024))?;
    assert_eq!(z.dims(), &[SAMPLES, 1, 3]);
    let objective = (z.sqr()?.sum_all()? / SAMPLES as f64)?;
    let grads = objective.backward()?;
    let g_mu = values(
        grads
            .get(mu.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no ∂/∂μ"))?,
    )?;
    let g_lv = values(
        grads
            .get(log_var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no ∂/∂log σ²"))?,
    )?;

    // Per-sample gradients, to measure the standard error: ∂(Σz²)/∂μ_d = 2z_d and, with
    // z_d − μ_d = σ_d ε_d and ∂z_d/∂log σ²_d = ½σ_d ε_d, ∂(Σz²)/∂log σ²_d = z_d (z_d − μ_d).
    let zs = z.squeeze(1)?.t()?.contiguous()?.to_vec2::<f64>()?;
    for d in 0..3 {
        let per_mu: Vec<f64> = zs[d].iter().map(|z| 2.0 * z).collect();
        let per_lv: Vec<f64> = zs[d].iter().map(|z| z * (z - MU[d])).collect();
        let (m_mu, se_mu) = mean_and_se(&per_mu);
        let (m_lv, se_lv) = mean_and_se(&per_lv);
        // Autograd computes exactly the sample mean of the per-sample gradients (up to
        // summation order: 2·10⁵ f64 terms, relative error < 1e-11).
        assert_close(
            &format!("autograd ∂/∂μ[{d}]"),
            g_mu[d],
            m_mu,
            1e-11 * m_mu.abs().max(1.0),
        )?;
        assert_close(
            &format!("autograd ∂/∂logσ²[{d}]"),
            g_lv[d],
            m_lv,
            1e-11 * m_lv.abs().max(1.0),
        )?;
        assert_within_se(
            &format!("∂E/∂μ[{d}] = 2μ"),
            g_mu[d],
            se_mu,
            2.0 * MU[d],
            SE_MULTIPLE,
        )?;
        assert_within_se(
            &format!("∂E/∂logσ²[{d}] = σ²"),
            g_lv[d],
            se_lv,
            LOG_VAR[d].exp(),
            SE_MULTIPLE,
        )?;
    }
    Ok(())
}

device_test!(samples_have_the_distributions_moments);
fn samples_have_the_distributions_moments() -> Result<()> {
    let q = DiagonalGaussian::new(tensor(&MU, &[1, 3])?, tensor(&LOG_VAR, &[1, 3])?)?;
    let z = q.rsample_n(SAMPLES, &mut NoiseSource::new(5))?;
    let zs = z.squeeze(1)?.t()?.contiguous()?.to_vec2::<f64>()?;
    for d in 0..3 {
        let (mean, se) = mean_and_se(&zs[d]);
        assert_within_se(&format!("mean[{d}]"), mean, se, MU[d], SE_MULTIPLE)?;
        // (z − μ)² has mean σ² and standard deviation √2·σ².
        let sq: Vec<f64> = zs[d].iter().map(|z| (z - MU[d]).powi(2)).collect();
        let (var, se) = mean_and_se(&sq);
        assert_within_se(
            &format!("variance[{d}]"),
            var,
            se,
            LOG_VAR[d].exp(),
            SE_MULTIPLE,
        )?;
    }
    Ok(())
}

fn posterior(dtype: DType) -> Result<DiagonalGaussian> {
    let mean: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
    let log_var: Vec<f64> = (0..12).map(|i| (i as f64 * 0.91).cos() - 0.5).collect();
    Ok(DiagonalGaussian::new(
        tensor(&mean, &[4, 3])?.to_dtype(dtype)?,
        tensor(&log_var, &[4, 3])?.to_dtype(dtype)?,
    )?)
}

device_test!(same_seed_gives_bit_identical_samples);
fn same_seed_gives_bit_identical_samples() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let q = posterior(dtype)?;
        let a = q.rsample(&mut NoiseSource::new(99))?;
        let b = q.rsample(&mut NoiseSource::new(99))?;
        assert_bit_identical(&format!("{dtype:?} rsample"), &a, &b)?;
        let a = q.rsample_n(5, &mut NoiseSource::new(99))?;
        let b = q.rsample_n(5, &mut NoiseSource::new(99))?;
        assert_bit_identical(&format!("{dtype:?} rsample_n"), &a, &b)?;
        let c = q.rsample(&mut NoiseSource::new(100))?;
        ensure!(
            values(&a.get(0)?)? != values(&c)?,
            "seeds 99 and 100 gave the same z"
        );
        // Consecutive draws from one source differ.
        let mut noise = NoiseSource::new(99);
        let first = q.rsample(&mut noise)?;
        let second = q.rsample(&mut noise)?;
        ensure!(
            values(&first)? != values(&second)?,
            "a source repeated itself"
        );
    }
    Ok(())
}

device_test!(rsample_is_mean_plus_std_times_the_sources_noise);
fn rsample_is_mean_plus_std_times_the_sources_noise() -> Result<()> {
    let q = posterior(DType::F64)?;
    let eps = NoiseSource::new(7).standard_normal((4, 3), DType::F64, &dev())?;
    // rsample draws exactly the ε the source would give, and applies rsample_with.
    assert_bit_identical(
        "rsample vs rsample_with",
        &q.rsample(&mut NoiseSource::new(7))?,
        &q.rsample_with(&eps)?,
    )?;
    // rsample_with(ε) = μ + exp(½ log σ²)·ε, computed here element by element (f64; the
    // exp may differ from candle's by an ulp, a few 1e-16 on these O(1) values: 1e-14).
    let (m, lv, e) = (values(q.mean())?, values(q.log_var())?, values(&eps)?);
    let want: Vec<f64> = (0..12).map(|i| m[i] + (0.5 * lv[i]).exp() * e[i]).collect();
    assert_all_close("μ + σε", &values(&q.rsample_with(&eps)?)?, &want, 1e-14)?;
    // With K samples, ε (K, N, D) broadcasts against (N, D).
    let eps_k = NoiseSource::new(8).standard_normal((2, 4, 3), DType::F64, &dev())?;
    let zk = q.rsample_with(&eps_k)?;
    assert_eq!(zk.dims(), &[2, 4, 3]);
    let ek = values(&eps_k)?;
    let want: Vec<f64> = (0..24)
        .map(|i| m[i % 12] + (0.5 * lv[i % 12]).exp() * ek[i])
        .collect();
    assert_all_close("μ + σε (K, N, D)", &values(&zk)?, &want, 1e-14)?;
    // rsample_n(k) uses a (k, N, D) draw.
    let eps_n = NoiseSource::new(9).standard_normal((6, 4, 3), DType::F64, &dev())?;
    assert_bit_identical(
        "rsample_n",
        &q.rsample_n(6, &mut NoiseSource::new(9))?,
        &q.rsample_with(&eps_n)?,
    )?;
    Ok(())
}

device_test!(rsample_with_passes_gradients_to_mean_and_log_variance_only);
fn rsample_with_passes_gradients_to_mean_and_log_variance_only() -> Result<()> {
    let mu = Var::from_tensor(&tensor(&MU, &[1, 3])?)?;
    let log_var = Var::from_tensor(&tensor(&LOG_VAR, &[1, 3])?)?;
    let eps = Var::from_tensor(&tensor(&[0.3, -1.2, 2.0], &[1, 3])?)?;
    let q = DiagonalGaussian::new(mu.as_tensor().clone(), log_var.as_tensor().clone())?;
    let grads = q.rsample_with(eps.as_tensor())?.sum_all()?.backward()?;
    // ∂z/∂μ = 1 exactly; ∂z/∂log σ² = ½σε, a product of three rounded f64 values of
    // magnitude ≤ 2 on both sides (≤ 1e-15 apart).
    let g_mu = values(
        grads
            .get(mu.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no ∂/∂μ"))?,
    )?;
    assert_all_close("∂z/∂μ", &g_mu, &[1.0; 3], 0.0)?;
    let g_lv = values(
        grads
            .get(log_var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no ∂/∂logσ²"))?,
    )?;
    let want: Vec<f64> = (0..3)
        .map(|d| 0.5 * (LOG_VAR[d] / 2.0).exp() * [0.3, -1.2, 2.0][d])
        .collect();
    assert_all_close("∂z/∂logσ²", &g_lv, &want, 1e-15)?;
    // A detached posterior passes nothing back.
    let grads = q
        .detach()
        .rsample_with(eps.as_tensor())?
        .sum_all()?
        .backward()?;
    ensure!(
        grads.get(mu.as_tensor()).is_none(),
        "detach() still reaches μ"
    );
    Ok(())
}

device_test!(rsample_n_shapes_and_errors);
fn rsample_n_shapes_and_errors() -> Result<()> {
    let q = posterior(DType::F32)?;
    let mut noise = NoiseSource::new(1);
    assert_eq!(q.rsample(&mut noise)?.dims(), &[4, 3]);
    for k in [1, 2, 17] {
        assert_eq!(q.rsample_n(k, &mut noise)?.dims(), &[k, 4, 3]);
    }
    let err = q
        .rsample_n(0, &mut noise)
        .err()
        .ok_or_else(|| anyhow::anyhow!("k = 0 accepted"))?;
    ensure!(err.to_string().contains('k'), "message: {err}");
    // ε of the wrong shape is an error naming both shapes.
    let bad = Tensor::zeros((4, 2), DType::F32, &dev())?;
    let err = q
        .rsample_with(&bad)
        .err()
        .ok_or_else(|| anyhow::anyhow!("bad ε accepted"))?;
    let msg = err.to_string();
    ensure!(
        msg.contains("[4, 2]") && msg.contains("[4, 3]"),
        "message: {msg}"
    );
    Ok(())
}

device_test!(noise_state_round_trip_continues_the_same_stream);
fn noise_state_round_trip_continues_the_same_stream() -> Result<()> {
    let mut noise = NoiseSource::new(31);
    noise.standard_normal(1001, DType::F32, &dev())?; // an odd number of words consumed
    let state = noise.state();
    let expected = noise.standard_normal((3, 5), DType::F64, &dev())?;
    let expected_u = noise.uniform(7, DType::F32, &dev())?;

    // Through JSON, as a checkpoint stores it.
    let json = serde_json::to_string(&state)?;
    let restored: NoiseState = serde_json::from_str(&json)?;
    assert_eq!(restored, state);
    let mut resumed = NoiseSource::from_state(restored);
    assert_bit_identical(
        "resumed normal",
        &resumed.standard_normal((3, 5), DType::F64, &dev())?,
        &expected,
    )?;
    assert_bit_identical(
        "resumed uniform",
        &resumed.uniform(7, DType::F32, &dev())?,
        &expected_u,
    )?;

    // A substream's state resumes it too, and substreams differ from each other and the parent.
    let parent = NoiseSource::new(31);
    let mut s1 = parent.substream(1);
    let mut s2 = parent.substream(2);
    let a = s1.standard_normal(8, DType::F64, &dev())?;
    let b = s2.standard_normal(8, DType::F64, &dev())?;
    let c = NoiseSource::new(31).standard_normal(8, DType::F64, &dev())?;
    ensure!(
        values(&a)? != values(&b)? && values(&a)? != values(&c)?,
        "substreams coincide"
    );
    let mid = s1.state();
    let next = s1.standard_normal(8, DType::F64, &dev())?;
    assert_bit_identical(
        "resumed substream",
        &NoiseSource::from_state(mid).standard_normal(8, DType::F64, &dev())?,
        &next,
    )?;
    // The same substream of the same seed is the same stream.
    assert_bit_identical(
        "substream(1) twice",
        &NoiseSource::new(31)
            .substream(1)
            .standard_normal(8, DType::F64, &dev())?,
        &a,
    )?;
    Ok(())
}

device_test!(uniform_draws_are_in_unit_interval_with_right_moments);
fn uniform_draws_are_in_unit_interval_with_right_moments() -> Result<()> {
    let u = values(&NoiseSource::new(4).uniform(SAMPLES, DType::F64, &dev())?)?;
    ensure!(
        u.iter().all(|&v| (0.0..1.0).contains(&v)),
        "uniform draw outside [0, 1)"
    );
    let (mean, se) = mean_and_se(&u);
    assert_within_se("uniform mean", mean, se, 0.5, SE_MULTIPLE)?;
    let sq: Vec<f64> = u.iter().map(|v| (v - 0.5).powi(2)).collect();
    let (var, se) = mean_and_se(&sq);
    assert_within_se("uniform variance", var, se, 1.0 / 12.0, SE_MULTIPLE)?;
    Ok(())
}
