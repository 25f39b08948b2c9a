//! Observation models p(x|z): values against hand-computed log-densities, stability at
//! extreme logits, the continuous-Bernoulli normaliser and mean against numerical
//! integration, and gradients against their closed forms.

mod common;

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor, Var};
use candle_vae::{GaussianMean, Likelihood, ParamStore, StandardLikelihood};
use common::{assert_all_close, assert_close, dev, tensor, tensor_f32, values};

/// f64 through a handful of operations on values ≤ 100: rounding stays below 1e-13.
const F64_TOL: f64 = 1e-12;

fn sigmoid(l: f64) -> f64 {
    1.0 / (1.0 + (-l).exp())
}

/// log(1 + eˡ) without overflow.
fn softplus(l: f64) -> f64 {
    l.max(0.0) + (-l.abs()).exp().ln_1p()
}

/// Bernoulli log p(x) = x·l − softplus(l) (x ∈ [0, 1] gives the cross-entropy).
fn bernoulli_ref(x: f64, l: f64) -> f64 {
    x * l - softplus(l)
}

/// log C(l) of the continuous Bernoulli, from its definition C(λ) = 2 artanh(1 − 2λ) /
/// (1 − 2λ) with λ = σ(l) (Loaiza-Ganem & Cunningham 2019, eq. 7), C(½) = 2. For moderate
/// l this is evaluated exactly as written; for |l| > 15, where 1 − 2λ rounds badly, through
/// the equivalent l / tanh(l/2).
fn cb_log_norm_ref(l: f64) -> f64 {
    if l == 0.0 {
        return std::f64::consts::LN_2;
    }
    if l.abs() > 15.0 {
        return (l / (l / 2.0).tanh()).ln();
    }
    let lambda = sigmoid(l);
    let t = 1.0 - 2.0 * lambda;
    (2.0 * t.atanh() / t).ln()
}

fn cb_ref(x: f64, l: f64) -> f64 {
    bernoulli_ref(x, l) + cb_log_norm_ref(l)
}

/// Per-element log p for `x` and logits `l` (both flat, laid out as one example).
fn log_prob_elements(
    lik: &StandardLikelihood,
    x: &[f64],
    l: &[f64],
    dtype: DType,
) -> Result<Vec<f64>> {
    let n = x.len();
    let xs = tensor(x, &[1, n])?.to_dtype(dtype)?;
    let ls = tensor(l, &[1, n])?.to_dtype(dtype)?;
    values(&lik.log_prob_elements(&xs, &ls)?)
}

/// Every combination of the extreme and central logits with x ∈ {0, ½, 1}.
fn extreme_grid() -> (Vec<f64>, Vec<f64>) {
    let mut x = Vec::new();
    let mut l = Vec::new();
    for logit in [-100.0, -20.0, -1.0, 0.0, 0.3, 20.0, 100.0] {
        for xv in [0.0, 0.5, 1.0] {
            x.push(xv);
            l.push(logit);
        }
    }
    (x, l)
}

/// Absolute tolerance for an f32 result of magnitude `v`: 16 f32 ulps (ε = 1.2·10⁻⁷)
/// relative to max(1, |v|), which covers the few rounding steps of the stable forms.
fn f32_tol(v: f64) -> f64 {
    16.0 * f64::from(f32::EPSILON) * v.abs().max(1.0)
}

device_test!(bernoulli_is_finite_and_correct_at_extreme_logits);
fn bernoulli_is_finite_and_correct_at_extreme_logits() -> Result<()> {
    let (x, l) = extreme_grid();
    for dtype in [DType::F32, DType::F64] {
        let got = log_prob_elements(&StandardLikelihood::Bernoulli, &x, &l, dtype)?;
        for i in 0..x.len() {
            ensure!(
                got[i].is_finite(),
                "{dtype:?} Bernoulli at x={}, l={}: {}",
                x[i],
                l[i],
                got[i]
            );
            let want = bernoulli_ref(x[i], l[i]);
            let tol = if dtype == DType::F64 {
                F64_TOL
            } else {
                f32_tol(want)
            };
            assert_close(
                &format!("{dtype:?} Bernoulli x={} l={}", x[i], l[i]),
                got[i],
                want,
                tol,
            )?;
        }
    }
    // Spot values by hand: a confident right answer costs nothing, a confident wrong one
    // costs |l| nats, x = ½ costs half of that, l = 0 costs ln 2 for any x.
    let got = log_prob_elements(
        &StandardLikelihood::Bernoulli,
        &[1.0, 0.0, 0.5, 0.0, 1.0, 0.5],
        &[100.0, 100.0, 100.0, -100.0, -100.0, 0.0],
        DType::F32,
    )?;
    let want = [0.0, -100.0, -50.0, 0.0, -100.0, -std::f64::consts::LN_2];
    for (g, w) in got.iter().zip(want) {
        assert_close("Bernoulli by hand", *g, w, f32_tol(w))?;
    }
    Ok(())
}

device_test!(continuous_bernoulli_is_finite_and_correct_at_extreme_logits);
fn continuous_bernoulli_is_finite_and_correct_at_extreme_logits() -> Result<()> {
    let (x, l) = extreme_grid();
    for dtype in [DType::F32, DType::F64] {
        let got = log_prob_elements(&StandardLikelihood::ContinuousBernoulli, &x, &l, dtype)?;
        for i in 0..x.len() {
            ensure!(
                got[i].is_finite(),
                "{dtype:?} CB at x={}, l={}: {}",
                x[i],
                l[i],
                got[i]
            );
            let want = cb_ref(x[i], l[i]);
            // The f64 reference goes through artanh(t) for |l| ≤ 15, where 1 + |t| ≈ e^{−|l|}
            // carries an absolute rounding of ~1e-16, i.e. a relative error up to
            // 1e-16·e^15 ≈ 3·10⁻¹⁰ that reaches log C at about that size; 1e-9 covers it.
            let tol = if dtype == DType::F64 {
                1e-9
            } else {
                f32_tol(want)
            };
            assert_close(
                &format!("{dtype:?} CB x={} l={}", x[i], l[i]),
                got[i],
                want,
                tol,
            )?;
        }
    }
    // By hand: at l = ±100, C = 100 / tanh(50) = 100 (tanh(50) = 1 to 43 digits), so the
    // density is the Bernoulli's times 100; at l = 0 it is the uniform density, log 1 = 0.
    let ln100 = 100f64.ln();
    let got = log_prob_elements(
        &StandardLikelihood::ContinuousBernoulli,
        &[1.0, 0.0, 0.5, 0.0, 0.3],
        &[100.0, 100.0, 100.0, -100.0, 0.0],
        DType::F64,
    )?;
    let want = [ln100, ln100 - 100.0, ln100 - 50.0, ln100, 0.0];
    assert_all_close("CB by hand", &got, &want, F64_TOL)?;
    Ok(())
}

device_test!(continuous_bernoulli_taylor_branch_meets_closed_form);
fn continuous_bernoulli_taylor_branch_meets_closed_form() -> Result<()> {
    // |l| < 0.1 uses log C = log 2 + l²/12 − 7l⁴/1440; the first omitted term is
    // 31·l⁶/362880 < 1e-10 at |l| = 0.1, so 1e-9 in f64. Both sides of the switch, and
    // zero itself, must agree with the reference.
    let logits = [
        0.0, 1e-6, -1e-3, 0.05, -0.0999, 0.0999, 0.1, -0.1, 0.1001, 0.2,
    ];
    let x = vec![0.7; logits.len()];
    let got = log_prob_elements(
        &StandardLikelihood::ContinuousBernoulli,
        &x,
        &logits,
        DType::F64,
    )?;
    for (i, l) in logits.iter().enumerate() {
        assert_close(&format!("CB l={l}"), got[i], cb_ref(0.7, *l), 1e-9)?;
    }
    let got32 = log_prob_elements(
        &StandardLikelihood::ContinuousBernoulli,
        &x,
        &logits,
        DType::F32,
    )?;
    for (i, l) in logits.iter().enumerate() {
        assert_close(
            &format!("f32 CB l={l}"),
            got32[i],
            cb_ref(0.7, *l),
            f32_tol(1.0),
        )?;
    }
    Ok(())
}

/// Composite Simpson weights on n (even) intervals of [0, 1].
fn simpson(n: usize) -> (Vec<f64>, Vec<f64>) {
    let h = 1.0 / n as f64;
    let x: Vec<f64> = (0..=n).map(|i| i as f64 * h).collect();
    let w: Vec<f64> = (0..=n)
        .map(|i| {
            let c = if i == 0 || i == n {
                1.0
            } else if i % 2 == 1 {
                4.0
            } else {
                2.0
            };
            c * h / 3.0
        })
        .collect();
    (x, w)
}

/// Logits for the integration tests: both branches, both signs, near 0, and large.
const INTEGRATION_LOGITS: [f64; 14] = [
    -100.0, -20.0, -3.0, -0.5, -0.099, -0.01, 0.0, 1e-4, 0.05, 0.1, 0.5, 3.0, 20.0, 100.0,
];

/// Simpson on 20,000 intervals: the error bound h⁴/180·max|f⁗| with h = 5·10⁻⁵ and
/// f = C·e^{l(x−1)}, |f⁗| ≤ 100·100⁴ at l = 100, is 3.5·10⁻¹⁰; the Taylor branch's
/// truncation adds < 10⁻¹⁰. So 1e-8.
const INTEGRATION_TOL: f64 = 1e-8;

device_test!(continuous_bernoulli_density_integrates_to_one);
fn continuous_bernoulli_density_integrates_to_one() -> Result<()> {
    let (grid, weights) = simpson(20_000);
    for l in INTEGRATION_LOGITS {
        let logits = vec![l; grid.len()];
        let log_p = log_prob_elements(
            &StandardLikelihood::ContinuousBernoulli,
            &grid,
            &logits,
            DType::F64,
        )?;
        let integral: f64 = log_p.iter().zip(&weights).map(|(lp, w)| lp.exp() * w).sum();
        assert_close(
            &format!("∫ CB(x; l={l}) dx"),
            integral,
            1.0,
            INTEGRATION_TOL,
        )?;
    }
    // The Bernoulli "density" on [0, 1] is *not* normalised (that is the point of the
    // continuous Bernoulli): at l = 0 it is ½ everywhere.
    let log_p = log_prob_elements(
        &StandardLikelihood::Bernoulli,
        &grid,
        &vec![0.0; grid.len()],
        DType::F64,
    )?;
    let integral: f64 = log_p.iter().zip(&weights).map(|(lp, w)| lp.exp() * w).sum();
    assert_close("∫ Bernoulli(x; 0) dx", integral, 0.5, INTEGRATION_TOL)?;
    Ok(())
}

device_test!(continuous_bernoulli_mean_matches_numerical_integration);
fn continuous_bernoulli_mean_matches_numerical_integration() -> Result<()> {
    let (grid, weights) = simpson(20_000);
    let lik = StandardLikelihood::ContinuousBernoulli;
    let means = values(&lik.mean(
        &tensor(&INTEGRATION_LOGITS, &[1, INTEGRATION_LOGITS.len()])?,
        1,
    )?)?;
    for (l, mean) in INTEGRATION_LOGITS.iter().zip(&means) {
        let logits = vec![*l; grid.len()];
        let log_p = log_prob_elements(&lik, &grid, &logits, DType::F64)?;
        let integral: f64 = log_p
            .iter()
            .zip(&weights)
            .zip(&grid)
            .map(|((lp, w), x)| x * lp.exp() * w)
            .sum();
        // The Taylor mean ½ + l/12 − l³/720 omits l⁵/30240 < 4·10⁻¹⁰ at |l| < 0.1.
        assert_close(
            &format!("E[x] of CB(l={l})"),
            *mean,
            integral,
            INTEGRATION_TOL,
        )?;
    }
    // The CB mean is not σ(l): at l = 3, σ = 0.953 but E[x] = 1/(1−e⁻³) − 1/3 = 0.7191.
    let m3 = means[INTEGRATION_LOGITS
        .iter()
        .position(|&l| l == 3.0)
        .unwrap_or(0)];
    assert_close(
        "E[x] at l=3",
        m3,
        1.0 / (1.0 - (-3f64).exp()) - 1.0 / 3.0,
        F64_TOL,
    )?;
    // f32 mean finite and right at the extremes: 0.99 at 100, 0.01 at −100, ½ at 0.
    let m32 = values(&lik.mean(&tensor_f32(&[100.0, -100.0, 0.0], &[1, 3])?, 1)?)?;
    assert_all_close("f32 CB mean", &m32, &[0.99, 0.01, 0.5], f32_tol(1.0))?;
    Ok(())
}

device_test!(means_of_the_other_likelihoods);
fn means_of_the_other_likelihoods() -> Result<()> {
    let l = [-100.0, -2.0, 0.0, 0.7, 100.0];
    let params = tensor(&l, &[1, 5])?;
    let sig: Vec<f64> = l.iter().map(|&v| sigmoid(v)).collect();
    assert_all_close(
        "Bernoulli mean",
        &values(&StandardLikelihood::Bernoulli.mean(&params, 1)?)?,
        &sig,
        F64_TOL,
    )?;
    assert_all_close(
        "Gaussian mean",
        &values(&StandardLikelihood::gaussian(0.3)?.mean(&params, 1)?)?,
        &l,
        0.0,
    )?;
    // Per-element Gaussian: (K, N, 2C, …) with the channel axis 2; the mean is the first C
    // channels, through the sigmoid.
    let raw: Vec<f64> = (0..2 * 3 * 4).map(|i| i as f64 * 0.1 - 1.0).collect();
    // K = 1, N = 2, P·C = 4 (C = 2), 3 elements per channel.
    let params = tensor(&raw, &[1, 2, 4, 3])?;
    let lik = StandardLikelihood::gaussian_per_element(GaussianMean::Sigmoid);
    let mean = lik.mean(&params, 2)?;
    assert_eq!(mean.dims(), &[1, 2, 2, 3]);
    let expected: Vec<f64> = (0..2)
        .flat_map(|n| (0..6).map(move |j| n * 12 + j))
        .map(|i| sigmoid(raw[i]))
        .collect();
    assert_all_close(
        "per-element Gaussian mean",
        &values(&mean)?,
        &expected,
        F64_TOL,
    )?;
    Ok(())
}

/// log N(x; μ, σ²) written with σ, as a textbook would.
fn normal_ref(x: f64, mu: f64, sigma: f64) -> f64 {
    -((x - mu) / sigma).powi(2) / 2.0 - sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
}

device_test!(gaussian_fixed_std_matches_hand_computation);
fn gaussian_fixed_std_matches_hand_computation() -> Result<()> {
    // One example of 4 elements, σ = 0.5.
    let x = [0.2, -1.0, 3.0, 0.0];
    let mu = [0.0, -0.5, 2.0, 0.0];
    let lik = StandardLikelihood::gaussian(0.5)?;
    let got = values(&lik.log_prob(&tensor(&x, &[1, 4])?, &tensor(&mu, &[1, 4])?)?)?;
    // By hand: Σ −(x−μ)²/(2·0.25) − 4·ln 0.5 − 4·½ ln 2π
    //        = −(0.04 + 0.25 + 1 + 0)·2 + 4 ln 2 − 2 ln 2π = −2.58 + 2.772588722 − 3.675754133.
    let by_hand = -2.58 + 4.0 * std::f64::consts::LN_2 - 2.0 * (2.0 * std::f64::consts::PI).ln();
    assert_close("fixed σ log p", got[0], by_hand, F64_TOL)?;
    let sum: f64 = (0..4).map(|i| normal_ref(x[i], mu[i], 0.5)).sum();
    assert_close("fixed σ log p vs reference", got[0], sum, F64_TOL)?;
    Ok(())
}

device_test!(gaussian_per_element_matches_hand_computation);
fn gaussian_per_element_matches_hand_computation() -> Result<()> {
    // Two examples of 3 elements; parameters (2, 6) = [μ raw | log σ²].
    let x = [0.1, 0.9, 0.5, 0.0, 1.0, 0.3];
    let mu_raw = [0.0, 2.0, -1.0, -3.0, 0.5, 0.2];
    let log_var = [-2.0, -1.0, 0.0, 0.5, -4.0, 1.0];
    let mut params = Vec::new();
    for n in 0..2 {
        params.extend_from_slice(&mu_raw[3 * n..3 * n + 3]);
        params.extend_from_slice(&log_var[3 * n..3 * n + 3]);
    }
    let xs = tensor(&x, &[2, 3])?;
    let ps = tensor(&params, &[2, 6])?;
    for (mean, link) in [
        (GaussianMean::Identity, (|v: f64| v) as fn(f64) -> f64),
        (GaussianMean::Sigmoid, sigmoid as fn(f64) -> f64),
    ] {
        let lik = StandardLikelihood::gaussian_per_element(mean);
        assert_eq!(lik.params_per_element(), 2);
        let got = values(&lik.log_prob(&xs, &ps)?)?;
        let want: Vec<f64> = (0..2)
            .map(|n| {
                (0..3)
                    .map(|j| {
                        let i = 3 * n + j;
                        normal_ref(x[i], link(mu_raw[i]), (log_var[i] / 2.0).exp())
                    })
                    .sum()
            })
            .collect();
        assert_all_close(&format!("per-element {mean:?}"), &got, &want, F64_TOL)?;
    }
    Ok(())
}

device_test!(gaussian_shared_variance_matches_hand_computation);
fn gaussian_shared_variance_matches_hand_computation() -> Result<()> {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F64, &dev());
    let lik = StandardLikelihood::gaussian_shared(GaussianMean::Identity, 0.3, vb.pp("lik"))?;
    // The shared log σ² is a trainable parameter named lik.log_var, initialised to 0.3.
    let vars = store.named_vars()?;
    assert_eq!(vars.len(), 1);
    assert_eq!(vars[0].0, "lik.log_var");
    // Exactly 0.3 in an f64 model (not 0.3 rounded to f32).
    assert_eq!(values(vars[0].1.as_tensor())?, vec![0.3]);
    let x = [0.2, -1.0, 3.0, 0.5, 0.5, 0.0];
    let mu = [0.0, -0.5, 2.0, 1.5, 0.5, -0.1];
    let got = values(&lik.log_prob(&tensor(&x, &[2, 3])?, &tensor(&mu, &[2, 3])?)?)?;
    let sigma = (0.3f64 / 2.0).exp();
    let want: Vec<f64> = (0..2)
        .map(|n| {
            (0..3)
                .map(|j| normal_ref(x[3 * n + j], mu[3 * n + j], sigma))
                .sum()
        })
        .collect();
    assert_all_close("shared σ", &got, &want, F64_TOL)?;
    Ok(())
}

device_test!(log_prob_sums_over_elements_and_keeps_sample_axis);
fn log_prob_sums_over_elements_and_keeps_sample_axis() -> Result<()> {
    // x (N=2, C=1, 2, 2) and params (K=3, N=2, 1, 2, 2) → (K, N).
    let x: Vec<f64> = (0..8).map(|i| (i % 3) as f64 / 2.0).collect();
    let l: Vec<f64> = (0..24).map(|i| (i as f64 * 0.9).sin() * 4.0).collect();
    let xs = tensor(&x, &[2, 1, 2, 2])?;
    let ps = tensor(&l, &[3, 2, 1, 2, 2])?;
    for lik in [
        StandardLikelihood::Bernoulli,
        StandardLikelihood::ContinuousBernoulli,
    ] {
        let got = lik.log_prob(&xs, &ps)?;
        assert_eq!(got.dims(), &[3, 2]);
        let got = values(&got)?;
        for k in 0..3 {
            for n in 0..2 {
                let want: f64 = (0..4)
                    .map(|e| {
                        let (xv, lv) = (x[n * 4 + e], l[k * 8 + n * 4 + e]);
                        match lik {
                            StandardLikelihood::Bernoulli => bernoulli_ref(xv, lv),
                            _ => cb_ref(xv, lv),
                        }
                    })
                    .sum();
                // As above: the artanh-based CB reference is good to ~1e-14 at |l| ≤ 4; 1e-9.
                assert_close(
                    &format!("{} k={k} n={n}", lik.name()),
                    got[k * 2 + n],
                    want,
                    1e-9,
                )?;
            }
        }
    }
    Ok(())
}

device_test!(log_prob_rejects_mismatched_parameters);
fn log_prob_rejects_mismatched_parameters() -> Result<()> {
    let xs = Tensor::zeros((2, 5), DType::F32, &dev())?;
    let ps = Tensor::zeros((2, 4), DType::F32, &dev())?;
    let err = StandardLikelihood::Bernoulli
        .log_prob(&xs, &ps)
        .err()
        .ok_or_else(|| anyhow::anyhow!("mismatched parameters accepted"))?;
    let msg = err.to_string();
    ensure!(
        msg.contains("[2, 4]") && msg.contains("[2, 5]"),
        "message: {msg}"
    );
    // A per-element Gaussian needs twice the channels.
    let lik = StandardLikelihood::gaussian_per_element(GaussianMean::Identity);
    ensure!(
        lik.log_prob(&xs, &Tensor::zeros((2, 5), DType::F32, &dev())?)
            .is_err()
    );
    ensure!(
        lik.log_prob(&xs, &Tensor::zeros((2, 10), DType::F32, &dev())?)
            .is_ok()
    );
    Ok(())
}

/// d/dl log C(l) = 1/l − 1/sinh(l) (derivative of log l − log tanh(l/2)), → 0 at l = 0.
fn cb_log_norm_grad(l: f64) -> f64 {
    if l == 0.0 {
        0.0
    } else {
        1.0 / l - 1.0 / l.sinh()
    }
}

device_test!(gradients_match_closed_forms_and_are_finite_at_extremes);
fn gradients_match_closed_forms_and_are_finite_at_extremes() -> Result<()> {
    let logits = [
        -100.0, -20.0, -0.5, -0.05, -1e-4, 0.0, 0.03, 0.0999, 0.1, 2.0, 100.0,
    ];
    for xv in [0.0, 0.5, 1.0] {
        for lik in [
            StandardLikelihood::Bernoulli,
            StandardLikelihood::ContinuousBernoulli,
        ] {
            for dtype in [DType::F64, DType::F32] {
                let l = Var::from_tensor(&tensor(&logits, &[1, logits.len()])?.to_dtype(dtype)?)?;
                let xs = Tensor::full(xv, (1, logits.len()), &dev())?.to_dtype(dtype)?;
                let grads = lik.log_prob(&xs, l.as_tensor())?.sum_all()?.backward()?;
                let g = grads
                    .get(l.as_tensor())
                    .ok_or_else(|| anyhow::anyhow!("no gradient"))?;
                let g = values(g)?;
                for (i, lv) in logits.iter().enumerate() {
                    let what = format!("{dtype:?} d/dl {} at x={xv}, l={lv}", lik.name());
                    ensure!(g[i].is_finite(), "{what}: {}", g[i]);
                    // d/dl [x·l − softplus(l)] = x − σ(l); the CB adds d log C / dl.
                    let mut want = xv - sigmoid(*lv);
                    if matches!(lik, StandardLikelihood::ContinuousBernoulli) {
                        want += cb_log_norm_grad(*lv);
                    }
                    // f64: the Taylor branch's derivative l/6 − 7l³/360 omits
                    // 31l⁵/15120 < 2·10⁻⁸ at |l| < 0.1; the closed form 1/l − 1/sinh l
                    // cancels to ~1e-12 at l = 0.1. f32: a few ulps of the O(1) terms, and
                    // at l ∈ (0.1, 1] the f32 closed form loses ~ε/l² to cancellation.
                    let tol = if dtype == DType::F64 { 1e-7 } else { 2e-5 };
                    assert_close(&what, g[i], want, tol)?;
                }
            }
        }
    }
    Ok(())
}

device_test!(data_of_rank_below_two_is_named_as_such);
fn data_of_rank_below_two_is_named_as_such() -> Result<()> {
    // A rank-1 batch used to be reported as "expected … shape [3] … found shape [3]".
    let x = tensor(&[0.0, 1.0, 1.0], &[3])?;
    let err = StandardLikelihood::Bernoulli
        .log_prob(&x, &x)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(err.contains("rank ≥ 2") && err.contains("[3]"), "{err}");
    Ok(())
}
