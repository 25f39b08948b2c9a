//! `DiagonalGaussian`: densities, entropy and KL divergences against closed forms computed
//! here in `f64`, and against Monte-Carlo estimates whose standard error is measured from
//! the samples.

mod common;

use anyhow::Result;
use candle_core::{DType, Tensor};
use candle_vae::{DiagonalGaussian, NoiseSource, Reparameterize};
use common::{assert_all_close, assert_close, assert_within_se, dev, mean_and_se, tensor, values};

/// Monte-Carlo samples per distribution (the issue asks for ≥ 10⁵).
const MC_SAMPLES: usize = 200_000;

/// Allowed distance of a Monte-Carlo mean from the truth, in standard errors: a correct
/// estimator lands outside ±4 SE with probability 6·10⁻⁵ per comparison (normal tails,
/// valid at n = 2·10⁵ for these light-tailed integrands), and the seed is fixed, so the
/// test is deterministic; a wrong formula is off by hundreds of SE at this sample size.
const SE_MULTIPLE: f64 = 4.0;

/// f64 arithmetic on O(1) values through a handful of operations: rounding errors are a
/// few ulps, far below this.
const F64_TOL: f64 = 1e-12;

/// Three distributions over four dimensions (rows), chosen to cover small and large
/// variances, negative means and a dimension at the prior.
fn q_params() -> (Vec<f64>, Vec<f64>) {
    let mean = vec![
        0.0, 0.5, -1.2, 2.0, //
        -0.3, 0.0, 0.8, 0.1, //
        1.5, -2.0, 0.0, 0.4,
    ];
    let log_var = vec![
        0.0, -1.0, 0.7, -2.5, //
        0.3, 0.0, -0.4, 1.2, //
        -0.2, 0.9, 0.0, -3.0,
    ];
    (mean, log_var)
}

fn p_params() -> (Vec<f64>, Vec<f64>) {
    let mean = vec![
        0.2, -0.5, -1.0, 1.0, //
        0.0, 0.3, 0.8, -0.6, //
        1.0, -1.0, 0.5, 0.0,
    ];
    let log_var = vec![
        0.5, 0.2, 0.0, -1.0, //
        -0.3, 0.4, 0.1, 0.6, //
        0.3, 1.5, -0.5, -1.0,
    ];
    (mean, log_var)
}

fn gaussian(mean: &[f64], log_var: &[f64]) -> Result<DiagonalGaussian> {
    Ok(DiagonalGaussian::new(
        tensor(mean, &[3, 4])?,
        tensor(log_var, &[3, 4])?,
    )?)
}

/// KL(N(m1, v1) ‖ N(m2, v2)) for one dimension, written from variances (not log-variances)
/// as in any textbook: ln(σ2/σ1) + (σ1² + (m1 − m2)²) / (2σ2²) − ½.
fn kl_1d(m1: f64, v1: f64, m2: f64, v2: f64) -> f64 {
    (v2.sqrt() / v1.sqrt()).ln() + (v1 + (m1 - m2).powi(2)) / (2.0 * v2) - 0.5
}

/// log N(z; m, v) for one dimension.
fn log_density_1d(z: f64, m: f64, v: f64) -> f64 {
    -(z - m).powi(2) / (2.0 * v) - 0.5 * (2.0 * std::f64::consts::PI * v).ln()
}

device_test!(kl_between_diagonal_gaussians_matches_closed_form);
fn kl_between_diagonal_gaussians_matches_closed_form() -> Result<()> {
    let (mq, sq) = q_params();
    let (mp, sp) = p_params();
    let q = gaussian(&mq, &sq)?;
    let p = gaussian(&mp, &sp)?;
    let expected: Vec<f64> = (0..12)
        .map(|i| kl_1d(mq[i], sq[i].exp(), mp[i], sp[i].exp()))
        .collect();
    assert_all_close(
        "kl_per_dim",
        &values(&q.kl_per_dim(&p)?)?,
        &expected,
        F64_TOL,
    )?;
    let kl = q.kl(&p)?;
    assert_eq!(kl.dims(), &[3]);
    let sums: Vec<f64> = expected.chunks(4).map(|c| c.iter().sum()).collect();
    assert_all_close("kl", &values(&kl)?, &sums, F64_TOL)?;
    // KL is not symmetric: the reverse direction is a different number.
    let reverse = values(&p.kl(&q)?)?;
    anyhow::ensure!((reverse[0] - sums[0]).abs() > 0.1, "KL(p‖q) ≈ KL(q‖p)?");
    Ok(())
}

device_test!(kl_to_standard_normal_matches_closed_form_and_general_kl);
fn kl_to_standard_normal_matches_closed_form_and_general_kl() -> Result<()> {
    let (mq, sq) = q_params();
    let q = gaussian(&mq, &sq)?;
    let expected: Vec<f64> = (0..12)
        .map(|i| kl_1d(mq[i], sq[i].exp(), 0.0, 1.0))
        .collect();
    assert_all_close(
        "kl_standard_normal_per_dim",
        &values(&q.kl_standard_normal_per_dim()?)?,
        &expected,
        F64_TOL,
    )?;
    let sums: Vec<f64> = expected.chunks(4).map(|c| c.iter().sum()).collect();
    assert_all_close(
        "kl_standard_normal",
        &values(&q.kl_standard_normal()?)?,
        &sums,
        F64_TOL,
    )?;
    // The specialised formula agrees with the general one against N(0, I).
    let prior = DiagonalGaussian::standard(3, 4, DType::F64, &dev())?;
    assert_all_close("kl(q, N(0,I))", &values(&q.kl(&prior)?)?, &sums, F64_TOL)?;
    Ok(())
}

device_test!(kl_is_exactly_zero_at_the_prior);
fn kl_is_exactly_zero_at_the_prior() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let prior = DiagonalGaussian::standard(5, 7, dtype, &dev())?;
        for v in values(&prior.kl_standard_normal_per_dim()?)? {
            anyhow::ensure!(
                v == 0.0,
                "{dtype:?}: KL(N(0,I) ‖ N(0,I)) per dim = {v:e}, not 0"
            );
        }
        for v in values(&prior.kl(&prior)?)? {
            anyhow::ensure!(v == 0.0, "{dtype:?}: kl(N(0,I), N(0,I)) = {v:e}, not 0");
        }
    }
    // Any other distribution has KL > 0.
    let q = DiagonalGaussian::new(tensor(&[1e-3], &[1, 1])?, tensor(&[0.0], &[1, 1])?)?;
    anyhow::ensure!(values(&q.kl_standard_normal()?)?[0] > 0.0);
    Ok(())
}

/// Per-row Monte-Carlo mean and standard error of `log q(z) − log p(z)`, z ~ q.
fn mc_kl(q: &DiagonalGaussian, p: &DiagonalGaussian, seed: u64) -> Result<Vec<(f64, f64)>> {
    let z = q.rsample_n(MC_SAMPLES, &mut NoiseSource::new(seed))?;
    assert_eq!(z.dims(), &[MC_SAMPLES, 3, 4]);
    // (K, N) → (N, K): one row of samples per distribution.
    let log_ratio = (q.log_prob(&z)? - p.log_prob(&z)?)?.t()?.contiguous()?;
    let rows = log_ratio.to_vec2::<f64>()?;
    Ok(rows.iter().map(|r| mean_and_se(r)).collect())
}

device_test!(kl_agrees_with_monte_carlo_estimate);
fn kl_agrees_with_monte_carlo_estimate() -> Result<()> {
    let (mq, sq) = q_params();
    let (mp, sp) = p_params();
    let q = gaussian(&mq, &sq)?;
    let p = gaussian(&mp, &sp)?;
    let prior = DiagonalGaussian::standard(3, 4, DType::F64, &dev())?;
    for (other, name, seed) in [(&p, "KL(q‖p)", 1), (&prior, "KL(q‖N(0,I))", 2)] {
        let closed = values(&q.kl(other)?)?;
        for (row, (mean, se)) in mc_kl(&q, other, seed)?.into_iter().enumerate() {
            assert_within_se(
                &format!("{name} row {row}"),
                mean,
                se,
                closed[row],
                SE_MULTIPLE,
            )?;
        }
    }
    Ok(())
}

device_test!(log_prob_matches_hand_computed_values);
fn log_prob_matches_hand_computed_values() -> Result<()> {
    // log N(0; 0, 1) = −½ ln 2π, to 16 digits.
    let std_normal = DiagonalGaussian::standard(1, 1, DType::F64, &dev())?;
    let at_zero = values(&std_normal.log_prob(&tensor(&[0.0], &[1, 1])?)?)?;
    assert_close(
        "log N(0;0,1)",
        at_zero[0],
        -0.918_938_533_204_672_7,
        F64_TOL,
    )?;
    // log N(2; 1, 4) = −¼·½ − ln 2 − ½ ln 2π = −1.737085713764618.
    let q = DiagonalGaussian::new(tensor(&[1.0], &[1, 1])?, tensor(&[4f64.ln()], &[1, 1])?)?;
    let v = values(&q.log_prob(&tensor(&[2.0], &[1, 1])?)?)?;
    assert_close("log N(2;1,4)", v[0], -1.737_085_713_764_618, F64_TOL)?;

    // Per dimension and summed, for z of shape (N, D) and (K, N, D).
    let (mq, sq) = q_params();
    let q = gaussian(&mq, &sq)?;
    let z: Vec<f64> = (0..24).map(|i| (i as f64 * 0.7).sin() * 2.0).collect();
    let expected: Vec<f64> = (0..24)
        .map(|i| log_density_1d(z[i], mq[i % 12], sq[i % 12].exp()))
        .collect();
    let zt = tensor(&z, &[2, 3, 4])?;
    assert_all_close(
        "log_prob_per_dim",
        &values(&q.log_prob_per_dim(&zt)?)?,
        &expected,
        F64_TOL,
    )?;
    let lp = q.log_prob(&zt)?;
    assert_eq!(lp.dims(), &[2, 3]);
    let sums: Vec<f64> = expected.chunks(4).map(|c| c.iter().sum()).collect();
    assert_all_close("log_prob (K, N, D)", &values(&lp)?, &sums, F64_TOL)?;
    let lp2 = q.log_prob(&zt.get(1)?)?;
    assert_eq!(lp2.dims(), &[3]);
    assert_all_close("log_prob (N, D)", &values(&lp2)?, &sums[3..], F64_TOL)?;
    Ok(())
}

device_test!(accessors_are_consistent);
fn accessors_are_consistent() -> Result<()> {
    let (mq, sq) = q_params();
    let q = gaussian(&mq, &sq)?;
    assert_eq!(q.dim(), 4);
    assert_eq!(values(q.mode())?, mq);
    let std: Vec<f64> = sq.iter().map(|s| (s / 2.0).exp()).collect();
    assert_all_close("std", &values(&q.std()?)?, &std, F64_TOL)?;
    let var: Vec<f64> = sq.iter().map(|s| s.exp()).collect();
    assert_all_close("variance", &values(&q.variance()?)?, &var, F64_TOL)?;
    Ok(())
}

device_test!(entropy_matches_closed_form_and_monte_carlo);
fn entropy_matches_closed_form_and_monte_carlo() -> Result<()> {
    // H[N(0, 1)] = ½ ln(2πe) = 1.4189385332046727.
    let std_normal = DiagonalGaussian::standard(1, 1, DType::F64, &dev())?;
    assert_close(
        "H[N(0,1)]",
        values(&std_normal.entropy()?)?[0],
        1.418_938_533_204_672_7,
        F64_TOL,
    )?;

    let (mq, sq) = q_params();
    let q = gaussian(&mq, &sq)?;
    let expected: Vec<f64> = sq
        .chunks(4)
        .map(|row| {
            row.iter()
                .map(|s| 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * s.exp()).ln())
                .sum()
        })
        .collect();
    let h = q.entropy()?;
    assert_eq!(h.dims(), &[3]);
    assert_all_close("entropy", &values(&h)?, &expected, F64_TOL)?;

    // H = −E_q[log q(z)], estimated from 2·10⁵ samples per row.
    let z = q.rsample_n(MC_SAMPLES, &mut NoiseSource::new(3))?;
    let neg_log_q = q.log_prob(&z)?.neg()?.t()?.contiguous()?.to_vec2::<f64>()?;
    for (row, samples) in neg_log_q.iter().enumerate() {
        let (mean, se) = mean_and_se(samples);
        assert_within_se(
            &format!("entropy row {row}"),
            mean,
            se,
            expected[row],
            SE_MULTIPLE,
        )?;
    }
    Ok(())
}

device_test!(works_in_f32_too);
fn works_in_f32_too() -> Result<()> {
    // The f32 path gives the f64 answer to f32 precision: the inputs round by 6·10⁻⁸
    // relative, and ~10 operations (exp, and sums of O(1) terms of both signs) amplify it
    // to a few 10⁻⁷ of max(1, KL); 1e-5 leaves a margin of ~30.
    let (mq, sq) = q_params();
    let (mp, sp) = p_params();
    let q64 = gaussian(&mq, &sq)?;
    let p64 = gaussian(&mp, &sp)?;
    let q32 = DiagonalGaussian::new(
        q64.mean().to_dtype(DType::F32)?,
        q64.log_var().to_dtype(DType::F32)?,
    )?;
    let p32 = DiagonalGaussian::new(
        p64.mean().to_dtype(DType::F32)?,
        p64.log_var().to_dtype(DType::F32)?,
    )?;
    let kl32 = values(&q32.kl(&p32)?)?;
    let kl64 = values(&q64.kl(&p64)?)?;
    for (a, b) in kl32.iter().zip(&kl64) {
        assert_close("f32 KL", *a, *b, 1e-5 * b.abs().max(1.0))?;
    }
    Ok(())
}

device_test!(new_rejects_mismatched_shapes);
fn new_rejects_mismatched_shapes() -> Result<()> {
    let mean = Tensor::zeros((2, 3), DType::F32, &dev())?;
    let log_var = Tensor::zeros((2, 4), DType::F32, &dev())?;
    let err = DiagonalGaussian::new(mean, log_var)
        .err()
        .ok_or_else(|| anyhow::anyhow!("mismatched shapes accepted"))?;
    let msg = err.to_string();
    anyhow::ensure!(
        msg.contains("[2, 3]") && msg.contains("[2, 4]"),
        "message: {msg}"
    );
    Ok(())
}
