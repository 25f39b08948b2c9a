//! Count likelihoods (Poisson, NB, ZINB), the discretised logistic and the count-matrix
//! loader: log-probabilities against closed-form values (SciPy, and mpmath where SciPy
//! loses digits), normalisation over the support, sample moments within Monte-Carlo
//! standard errors, finite gradients at extreme parameters, gradients against their
//! closed form, and strict CSV parsing.

// The golden values are pasted as Python printed them (ln 2, ln 10 among the inputs, 17
// significant digits), so that they can be checked against the script's output.
#![allow(clippy::approx_constant, clippy::excessive_precision)]

use std::io::Write;

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor, Var};
use candle_vae::data::split::Split;
use candle_vae::data::{CelltypistSample, CountDataset, Pbmc68kReduced};
use candle_vae::fused::{FusedKernels, with_fused_kernels};
use candle_vae::{
    DiscretizedLogistic, Dispersion, Error, Likelihood, NegativeBinomial, NoiseSource, ParamStore,
    Poisson, ZeroInflatedNegativeBinomial,
};

const CPU: Device = Device::Cpu;

/// |got − want| ≤ tol·max(1, |want|).
fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1.0)
}

/// The per-element log-probabilities of one row of data `xs` under one row of parameter
/// groups `groups` (each the length of `xs`), in `dtype`.
fn row_log_probs<L: Likelihood>(
    lik: &L,
    xs: &[f64],
    groups: &[&[f64]],
    dtype: DType,
) -> Result<Vec<f64>> {
    let n = xs.len();
    let x = Tensor::new(xs, &CPU)?.reshape((n, 1))?.to_dtype(dtype)?;
    let params: Vec<Tensor> = groups
        .iter()
        .map(|g| Tensor::new(*g, &CPU)?.reshape((n, 1))?.to_dtype(dtype))
        .collect::<candle_core::Result<_>>()?;
    let params = Tensor::cat(&params, 1)?;
    // One element per example, so log_prob gives the per-element values.
    Ok(lik
        .log_prob(&x, &params)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

// Reference values. Produced by this script (SciPy 1.17.1, mpmath 1.3.0, Python 3.11):
//
// ```python
// import numpy as np, mpmath as mp
// from scipy import stats, special
// mp.mp.dps = 60
// pois = [(0, 0.0), (0, -30.0), (0, 30.0), (3, float(np.log(2.0))), (7, 30.0),
//         (1e5, float(np.log(1e5))), (1e5, -30.0), (1, -30.0)]
// for x, m in pois:   # POISSON: (x, log mu, scipy logpmf)
//     s = stats.poisson.logpmf(x, np.exp(m))
//     e = x*mp.mpf(m) - mp.e**mp.mpf(m) - mp.loggamma(x+1)
//     print(float(x), m, float(s), "mpmath", mp.nstr(e, 17))
// def nb_mp(x, m, t):
//     m, t = mp.mpf(m), mp.mpf(t); mu, th = mp.e**m, mp.e**t
//     return (mp.loggamma(x+th) - mp.loggamma(th) - mp.loggamma(x+1)
//             + th*mp.log(th/(th+mu)) + x*mp.log(mu/(th+mu)))
// nb = [(0, 0.0, 0.0), (5, float(np.log(3.0)), float(np.log(0.5))),
//       (0, 30.0, float(np.log(1e-8))), (2, float(np.log(5.0)), float(np.log(1e-8))),
//       (1e5, float(np.log(1e5)), float(np.log(10.0))), (1e5, float(np.log(1e5)), float(np.log(1e8))),
//       (3, -30.0, 0.0), (0, -30.0, 30.0), (10, float(np.log(10.0)), 30.0), (1e5, 30.0, -18.0),
//       (0, 30.0, 30.0), (12, float(np.log(7.0)), float(np.log(9.99)))]
// for x, m, t in nb:   # NB: (x, log mu, log theta, mpmath), scipy beside
//     mu, th = np.exp(m), np.exp(t)
//     print(float(x), m, t, float(nb_mp(x, m, t)), "scipy", stats.nbinom.logpmf(x, th, th/(th+mu)))
// zinb = [(0, float(np.log(5.0)), 0.0, 0.0), (0, 30.0, float(np.log(1e-8)), -30.0),
//         (0, -30.0, 30.0, 30.0), (4, float(np.log(5.0)), float(np.log(2.0)), -1.5),
//         (1e5, float(np.log(1e5)), float(np.log(10.0)), 30.0),
//         (0, float(np.log(5.0)), float(np.log(2.0)), 2.0), (3, float(np.log(5.0)), float(np.log(2.0)), -30.0)]
// for x, m, t, p in zinb:   # ZINB: (x, log mu, log theta, logit pi, mpmath), scipy beside
//     pi = 1/(1+mp.e**(-mp.mpf(p)))
//     e = mp.log(pi + (1-pi)*mp.e**nb_mp(0, m, t)) if x == 0 else mp.log(1-pi) + nb_mp(x, m, t)
//     mu, th = np.exp(m), np.exp(t); pis = special.expit(p)
//     s = (np.log(pis + (1-pis)*stats.nbinom.pmf(0, th, th/(th+mu))) if x == 0
//          else np.log1p(-pis) + stats.nbinom.logpmf(x, th, th/(th+mu)))
//     print(float(x), m, t, p, float(e), "scipy", float(s))
// for mu, s in [(0.5, -3.0), (0.1, -6.0), (0.9, 0.0), (-0.5, -2.0), (0.3, -10.0)]:
//     k = np.arange(256); x = k/255   # LOGISTIC: bin masses from scipy's logistic CDF
//     hi = np.where(k == 255, 1.0, stats.logistic.cdf(x + 1/510, loc=mu, scale=np.exp(s)))
//     lo = np.where(k == 0, 0.0, stats.logistic.cdf(x - 1/510, loc=mu, scale=np.exp(s)))
//     print(mu, s, [float((hi - lo)[i]) for i in [0, 1, 50, 76, 127, 128, 200, 229, 254, 255]])
// mp.mp.dps = 6000   # LOGISTIC TAILS: exact log bin masses where the CDF difference underflows
// def dl_mp(k, mu, s):
//     x = mp.mpf(k)/255; sc = mp.e**mp.mpf(s); mu = mp.mpf(mu); sig = lambda a: 1/(1+mp.e**(-a))
//     hi = mp.mpf(1) if k == 255 else sig((x + mp.mpf(1)/510 - mu)/sc)
//     lo = mp.mpf(0) if k == 0 else sig((x - mp.mpf(1)/510 - mu)/sc)
//     return mp.log(hi - lo)
// for k, mu, s in [(200, 0.1, -6.0), (0, 0.9, -6.0), (255, 0.1, -6.0), (128, 0.3, -10.0),
//                  (3, 0.3, -10.0), (100, 0.5, 8.0)]:
//     print(k, mu, s, float(dl_mp(k, mu, s)))
// ```
//
// Where SciPy and mpmath (60 digits, the closed form as written) differ, SciPy's nbinom
// has lost digits: at θ = 1e8 (−6.6759017599 vs −6.6759018492), θ = e³⁰ (−2.0991 vs
// Poisson(10; 10) = −2.0786), μ = e⁻³⁰ (−90.0031 vs −90.0000); the mpmath values are used.

/// (x, log μ, ln Poisson(x; μ)), SciPy's `poisson.logpmf` (equal to mpmath's to 1e-15
/// except at x = 1e5, μ = 1e5, where mpmath gives −6.6754020990231203).
const POISSON_REF: [(f64, f64, f64); 8] = [
    (0.0, 0.0, -1.0),
    (0.0, -30.0, -9.357622968840175e-14),
    (0.0, 30.0, -10686474581524.463),
    (3.0, 0.6931471805599453, -1.7123179275482192),
    (7.0, 30.0, -10686474581322.988),
    (100000.0, 11.512925464970229, -6.6754020990231203),
    (100000.0, -30.0, -4051299.221899122),
    (1.0, -30.0, -30.000000000000092),
];

/// (x, log μ, log θ, ln NB(x; μ, θ)), mpmath (SciPy beside it in the script).
const NB_REF: [(f64, f64, f64, f64); 12] = [
    (0.0, 0.0, 0.0, -0.6931471805599453),
    (
        5.0,
        1.0986122886681098,
        -0.6931471805599453,
        -3.145751191751978,
    ),
    (0.0, 30.0, -18.420680743952367, -4.842068074395228e-07),
    (
        2.0,
        1.6094379124341003,
        -18.420680743952367,
        -19.113828118813498,
    ),
    (
        100000.0,
        11.512925464970229,
        2.302585092994046,
        -11.288952012694732,
    ),
    (
        100000.0,
        11.512925464970229,
        18.420680743952367,
        -6.6759018491904945,
    ),
    (3.0, -30.0, 0.0, -90.00000000000037),
    (0.0, -30.0, 30.0, -9.357622968840175e-14),
    (10.0, 2.302585092994046, 30.0, -2.0785616431355263),
    (100000.0, 30.0, -18.0, -29.51292601187673),
    (0.0, 30.0, 30.0, -7407299726309.202),
    (
        12.0,
        1.9459101490553132,
        2.301584592660462,
        -3.3627403827567566,
    ),
];

/// (x, log μ, log θ, logit π, ln ZINB(x)), mpmath (SciPy beside it in the script).
const ZINB_REF: [(f64, f64, f64, f64, f64); 7] = [
    (0.0, 1.6094379124341003, 0.0, 0.0, -0.538996500732687),
    (
        0.0,
        30.0,
        -18.420680743952367,
        -30.0,
        -4.842068074394775e-07,
    ),
    (0.0, -30.0, 30.0, 30.0, -8.756510762695292e-27),
    (
        4.0,
        1.6094379124341003,
        0.6931471805599453,
        -1.5,
        -2.44339024902424,
    ),
    (
        100000.0,
        11.512925464970229,
        2.302585092994046,
        30.0,
        -41.28895201269483,
    ),
    (
        0.0,
        1.6094379124341003,
        0.6931471805599453,
        2.0,
        -0.11594081374007653,
    ),
    (
        3.0,
        1.6094379124341003,
        0.6931471805599453,
        -30.0,
        -2.128648285734578,
    ),
];

/// The bins k of [`LOGISTIC_REF`]'s masses.
const LOGISTIC_BINS: [usize; 10] = [0, 1, 50, 76, 127, 128, 200, 229, 254, 255];

/// (μ, log-scale, bin masses at [`LOGISTIC_BINS`]), SciPy's logistic CDF differences.
const LOGISTIC_REF: [(f64, f64, [f64; 10]); 5] = [
    (
        0.5,
        -3.0,
        [
            4.524446112686138e-05,
            3.7076922915810597e-06,
            0.00017514483023928652,
            0.0013177297804811972,
            0.01968152822243502,
            0.019681528222435074,
            0.0002591212502772722,
            2.6549192518543485e-05,
            3.7076922915213473e-06,
            4.524446112685876e-05,
        ],
    ),
    (
        0.1,
        -6.0,
        [
            6.650480944973798e-18,
            2.5704334828359835e-17,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ],
    ),
    (
        0.9,
        0.0,
        [
            0.28945360576124796,
            0.0008072153268772753,
            0.0008683129373524556,
            0.0008966797661236758,
            0.0009418332965830944,
            0.0009425625765089873,
            0.0009771189257562485,
            0.000980390900434891,
            0.0009781328060789463,
            0.47550980894267725,
        ],
    ),
    (
        -0.5,
        -2.0,
        [
            0.976084360370563,
            0.0006671720910862433,
            0.00016721428050414655,
            7.920470794553491e-05,
            1.8146187988676843e-05,
            1.762854770626099e-05,
            2.1907952221233984e-06,
            9.45564224474893e-07,
            4.5824234795599494e-07,
            1.558640668930522e-05,
        ],
    ),
    (
        0.3,
        -10.0,
        [0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ),
];

/// (k, μ, log-scale, ln p(k/255)) in the far tails, mpmath at 6000 digits.
const LOGISTIC_TAILS: [(usize, f64, f64, f64); 6] = [
    (200, 0.1, -6.0, -275.51092702157723),
    (0, 0.9, -6.0, -362.29487729347585),
    (255, 0.1, -6.0, -362.29487729347585),
    (128, 0.3, -10.0, -4405.293158961344),
    (3, 0.3, -10.0, -6305.615698121138),
    (100, 0.5, 8.0, -14.927557906605553),
];

/// Runs `check` with the CPU count kernel and with the plain candle ops
/// ([`with_fused_kernels`]): both must pass.
fn on_both_paths(check: fn() -> Result<()>) -> Result<()> {
    for kernels in [FusedKernels::ALL, FusedKernels::NONE] {
        with_fused_kernels(kernels, check).with_context(|| format!("with {kernels:?}"))?;
    }
    Ok(())
}

/// The CPU kernel's closed-form gradients against candle's autograd of the candle-op
/// forms, and its values against theirs, over a grid that crosses every branch (x = 0,
/// θ on both sides of 10, μ ≶ θ, extreme logits), in f64.
#[test]
fn kernel_matches_the_candle_op_forms_and_their_gradients() -> Result<()> {
    let mut rows = Vec::new();
    for x in [0.0f64, 1.0, 3.0, 17.0, 1e5] {
        for m in [-30.0f64, -2.0, 0.5, 2.3, 9.0, 30.0] {
            for t in [-18.4f64, -1.0, 2.2, 2.31, 5.0, 25.0] {
                for p in [-30.0f64, -1.0, 0.7, 30.0] {
                    rows.push([x, m, t, p]);
                }
            }
        }
    }
    let n = rows.len();
    let col = |j: usize| -> Result<Tensor> {
        Ok(Tensor::new(rows.iter().map(|r| r[j]).collect::<Vec<f64>>(), &CPU)?.reshape((n, 1))?)
    };
    let x = col(0)?;
    let eval = |kernels: FusedKernels, arity: usize| -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        with_fused_kernels(kernels, || {
            let vars: Vec<Var> = (1..=arity)
                .map(|j| Ok(Var::from_tensor(&col(j)?)?))
                .collect::<Result<_>>()?;
            let params = Tensor::cat(&vars.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(), 1)?;
            let lp = match arity {
                1 => Poisson.log_prob(&x, &params)?,
                2 => NegativeBinomial::new().log_prob(&x, &params)?,
                _ => ZeroInflatedNegativeBinomial::new().log_prob(&x, &params)?,
            };
            let grads = finite_grads(&lp.sum_all()?, &vars.iter().collect::<Vec<_>>())?;
            Ok((lp.to_vec1::<f64>()?, grads))
        })
    };
    for arity in 1..=3 {
        let (kv, kg) = eval(FusedKernels::ALL, arity)?;
        let (ov, og) = eval(FusedKernels::NONE, arity)?;
        for i in 0..n {
            let scale =
                rows[i][0] * (rows[i][0] + 1.0).ln() + rows[i][1].exp() + rows[i][2].exp().min(1e6);
            ensure!(
                (kv[i] - ov[i]).abs() <= 1e-12 * scale.max(1.0),
                "arity {arity} value at {:?}: {} vs {}",
                rows[i],
                kv[i],
                ov[i]
            );
            for (j, (a, b)) in kg.iter().zip(&og).enumerate() {
                let tol = 1e-7 * b[i].abs().max(1.0) + 1e-13 * scale;
                ensure!(
                    (a[i] - b[i]).abs() <= tol,
                    "arity {arity} ∂{j} at {:?}: kernel {} vs autograd {}",
                    rows[i],
                    a[i],
                    b[i]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn poisson_log_prob_matches_scipy() -> Result<()> {
    on_both_paths(poisson_log_prob_matches_scipy_on)
}

fn poisson_log_prob_matches_scipy_on() -> Result<()> {
    let xs: Vec<f64> = POISSON_REF.iter().map(|r| r.0).collect();
    let m: Vec<f64> = POISSON_REF.iter().map(|r| r.1).collect();
    // The terms x·log μ, μ and ln x! are each rounded to the dtype's precision; the result
    // cannot be more accurate than the largest of them (x = μ = 1e5: terms of 1e6, and
    // SciPy is off by 2e-10 there too).
    let scale = |r: (f64, f64, f64)| (r.0 * r.1).abs() + r.1.exp() + r.0 * (r.0 + 1.0).ln();
    let got = row_log_probs(&Poisson, &xs, &[&m], DType::F64)?;
    for (g, r) in got.iter().zip(POISSON_REF) {
        let tol = 1e-15 * scale(r) + 1e-12 * r.2.abs().max(1.0);
        ensure!((g - r.2).abs() <= tol, "Poisson{r:?}: {g}");
    }
    // f32: finite everywhere, and to f32 rounding of the largest term.
    let got32 = row_log_probs(&Poisson, &xs, &[&m], DType::F32)?;
    for (g, r) in got32.iter().zip(POISSON_REF) {
        ensure!(
            g.is_finite() && (g - r.2).abs() <= 1e-6 * scale(r).max(10.0),
            "f32 Poisson{r:?}: {g}"
        );
    }
    Ok(())
}

#[test]
fn negative_binomial_log_prob_matches_closed_form() -> Result<()> {
    on_both_paths(negative_binomial_log_prob_matches_closed_form_on)
}

fn negative_binomial_log_prob_matches_closed_form_on() -> Result<()> {
    let xs: Vec<f64> = NB_REF.iter().map(|r| r.0).collect();
    let m: Vec<f64> = NB_REF.iter().map(|r| r.1).collect();
    let t: Vec<f64> = NB_REF.iter().map(|r| r.2).collect();
    let nb = NegativeBinomial::new();
    let got = row_log_probs(&nb, &xs, &[&m, &t], DType::F64)?;
    for (g, r) in got.iter().zip(NB_REF) {
        ensure!(close(*g, r.3, 1e-9), "NB{r:?}: got {g}");
    }
    let got32 = row_log_probs(&nb, &xs, &[&m, &t], DType::F32)?;
    for (g, r) in got32.iter().zip(NB_REF) {
        // The terms of ln NB reach x·ln(x + θ) + μ; f32 keeps ~1e-7 of them.
        let scale = r.0 * (r.0 + r.2.exp()).ln().abs() + r.1.exp() + r.0 * (r.0 + 1.0).ln();
        ensure!(
            g.is_finite() && (g - r.3).abs() <= 2e-6 * scale.max(10.0),
            "f32 NB{r:?}: {g}"
        );
    }
    Ok(())
}

#[test]
fn zinb_log_prob_matches_closed_form() -> Result<()> {
    on_both_paths(zinb_log_prob_matches_closed_form_on)
}

fn zinb_log_prob_matches_closed_form_on() -> Result<()> {
    let xs: Vec<f64> = ZINB_REF.iter().map(|r| r.0).collect();
    let m: Vec<f64> = ZINB_REF.iter().map(|r| r.1).collect();
    let t: Vec<f64> = ZINB_REF.iter().map(|r| r.2).collect();
    let p: Vec<f64> = ZINB_REF.iter().map(|r| r.3).collect();
    let zinb = ZeroInflatedNegativeBinomial::new();
    let got = row_log_probs(&zinb, &xs, &[&m, &t, &p], DType::F64)?;
    for (g, r) in got.iter().zip(ZINB_REF) {
        ensure!(close(*g, r.4, 1e-9), "ZINB{r:?}: got {g}");
    }
    let got32 = row_log_probs(&zinb, &xs, &[&m, &t, &p], DType::F32)?;
    for (g, r) in got32.iter().zip(ZINB_REF) {
        let scale = r.0 * (r.0 + 1.0).ln() + r.1.exp().min(1e6) + r.3.abs();
        ensure!(
            g.is_finite() && (g - r.4).abs() <= 2e-6 * scale.max(10.0),
            "f32 ZINB{r:?}: {g}"
        );
    }
    Ok(())
}

/// Σ_{x=0}^{M} p(x) for a likelihood with one parameter row `groups`, in f64.
fn total_mass<L: Likelihood>(lik: &L, max: usize, groups: &[f64]) -> Result<f64> {
    let xs: Vec<f64> = (0..=max).map(|x| x as f64).collect();
    let cols: Vec<Vec<f64>> = groups.iter().map(|&g| vec![g; xs.len()]).collect();
    let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
    Ok(row_log_probs(lik, &xs, &refs, DType::F64)?
        .iter()
        .map(|l| l.exp())
        .sum())
}

#[test]
fn count_probabilities_sum_to_one() -> Result<()> {
    on_both_paths(count_probabilities_sum_to_one_on)
}

fn count_probabilities_sum_to_one_on() -> Result<()> {
    let ln = f64::ln;
    let poisson = [(60, ln(3.7)), (400, ln(150.0)), (40, -30.0)];
    for (max, m) in poisson {
        let s = total_mass(&Poisson, max, &[m])?;
        ensure!((s - 1.0).abs() < 1e-10, "Poisson log μ = {m}: Σ p = {s}");
    }
    // NB: heavy tails (θ = 0.5), near-Poisson (θ = 1e6), θ ≥ 10 (Stirling difference).
    let nb = [
        (2_000, ln(5.0), ln(0.5)),
        (300, ln(20.0), ln(1e6)),
        (5_000, ln(1e3), ln(50.0)),
        (200, ln(30.0), ln(9.9)),
    ];
    for (max, m, t) in nb {
        let s = total_mass(&NegativeBinomial::new(), max, &[m, t])?;
        ensure!(
            (s - 1.0).abs() < 1e-9,
            "NB (log μ, log θ) = ({m}, {t}): Σ p = {s}"
        );
    }
    let zinb = [
        (400, ln(10.0), ln(2.0), -0.85),
        (400, ln(10.0), ln(15.0), 3.0),
    ];
    for (max, m, t, p) in zinb {
        let s = total_mass(&ZeroInflatedNegativeBinomial::new(), max, &[m, t, p])?;
        ensure!((s - 1.0).abs() < 1e-9, "ZINB ({m}, {t}, {p}): Σ p = {s}");
    }
    Ok(())
}

/// Mean, variance and the standard errors of both, from samples.
fn moments(values: &[f64]) -> (f64, f64, f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let m4 = values.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n;
    (mean, var, (var / n).sqrt(), ((m4 - var * var) / n).sqrt())
}

/// `n` samples of a likelihood with the parameter row `groups` (as `(n, P)`).
fn samples<L: Likelihood>(lik: &L, n: usize, groups: &[f64], seed: u64) -> Result<Vec<f64>> {
    let row: Vec<f64> = groups.to_vec();
    let params = Tensor::new(row.as_slice(), &CPU)?
        .reshape((1, groups.len()))?
        .repeat((n, 1))?;
    let draws = lik.sample(&params, 1, &mut NoiseSource::new(seed))?;
    ensure!(draws.dims() == [n, 1], "sample shape {:?}", draws.dims());
    Ok(draws.flatten_all()?.to_vec1::<f64>()?)
}

#[test]
fn sample_moments_match_mean_and_variance() -> Result<()> {
    let n = 200_000;
    let (mu, theta, pi) = (4.0f64, 2.0f64, 0.3f64);
    let cases: Vec<(&str, Vec<f64>, f64, f64)> = vec![
        ("Poisson", samples(&Poisson, n, &[mu.ln()], 1)?, mu, mu),
        (
            "NB",
            samples(&NegativeBinomial::new(), n, &[mu.ln(), theta.ln()], 2)?,
            mu,
            mu + mu * mu / theta,
        ),
        (
            "NB θ = 0.1",
            samples(&NegativeBinomial::new(), n, &[mu.ln(), 0.1f64.ln()], 3)?,
            mu,
            mu + mu * mu / 0.1,
        ),
        (
            "ZINB",
            samples(
                &ZeroInflatedNegativeBinomial::new(),
                n,
                &[mu.ln(), theta.ln(), (pi / (1.0 - pi)).ln()],
                4,
            )?,
            (1.0 - pi) * mu,
            (1.0 - pi) * mu * (1.0 + mu / theta + pi * mu),
        ),
    ];
    for (name, draws, want_mean, want_var) in cases {
        ensure!(
            draws.iter().all(|d| *d >= 0.0 && d.fract() == 0.0),
            "{name}: non-count draw"
        );
        let (mean, var, se_mean, se_var) = moments(&draws);
        ensure!(
            (mean - want_mean).abs() < 4.0 * se_mean,
            "{name}: mean {mean} vs {want_mean} (se {se_mean})"
        );
        ensure!(
            (var - want_var).abs() < 4.0 * se_var,
            "{name}: var {var} vs {want_var} (se {se_var})"
        );
    }
    // The ZINB's zeros: π + (1 − π)·NB(0) = 0.3 + 0.7·(θ/(θ + μ))^θ.
    let zinb = samples(
        &ZeroInflatedNegativeBinomial::new(),
        n,
        &[mu.ln(), theta.ln(), (pi / (1.0 - pi)).ln()],
        5,
    )?;
    let zeros = zinb.iter().filter(|&&d| d == 0.0).count() as f64 / n as f64;
    let want = pi + (1.0 - pi) * (theta / (theta + mu)).powf(theta);
    let se = (want * (1.0 - want) / n as f64).sqrt();
    ensure!(
        (zeros - want).abs() < 4.0 * se,
        "ZINB zero fraction {zeros} vs {want}"
    );
    Ok(())
}

#[test]
fn means_are_mu_and_one_minus_pi_mu() -> Result<()> {
    let params = Tensor::new(&[[2f64.ln(), 0.0, 1.0]], &CPU)?;
    let zinb = ZeroInflatedNegativeBinomial::new()
        .mean(&params, 1)?
        .to_vec2::<f64>()?[0][0];
    let want = 2.0 / (1.0 + 1f64.exp());
    ensure!((zinb - want).abs() < 1e-12, "ZINB mean {zinb} vs {want}");
    let nb = NegativeBinomial::new()
        .mean(&params.narrow(1, 0, 2)?, 1)?
        .to_vec2::<f64>()?[0][0];
    ensure!((nb - 2.0).abs() < 1e-12, "NB mean {nb}");
    let poisson = Poisson
        .mean(&params.narrow(1, 0, 1)?, 1)?
        .to_vec2::<f64>()?[0][0];
    ensure!((poisson - 2.0).abs() < 1e-12, "Poisson mean {poisson}");
    Ok(())
}

/// Every gradient of `loss` with respect to `vars` is finite; returns them.
fn finite_grads(loss: &Tensor, vars: &[&Var]) -> Result<Vec<Vec<f64>>> {
    let grads = loss.backward()?;
    let mut out = Vec::new();
    for v in vars {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no gradient"))?;
        let g = g.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        ensure!(g.iter().all(|v| v.is_finite()), "non-finite gradient {g:?}");
        out.push(g);
    }
    Ok(out)
}

#[test]
fn gradients_are_finite_at_extreme_parameters() -> Result<()> {
    on_both_paths(gradients_are_finite_at_extreme_parameters_on)
}

fn gradients_are_finite_at_extreme_parameters_on() -> Result<()> {
    // Every combination of x ∈ {0, 1, 1e5}, log μ, log θ ∈ {±60, ±30, 0} (and θ = 1e-8),
    // logit π ∈ {±30}, in f32, the dtype of training.
    let mut rows = Vec::new();
    for x in [0.0f32, 1.0, 1e5] {
        for m in [-60.0f32, -30.0, 0.0, 30.0, 60.0] {
            for t in [-60.0f32, -30.0, -18.4, 0.0, 30.0, 60.0] {
                for p in [-30.0f32, 30.0] {
                    rows.push([x, m, t, p]);
                }
            }
        }
    }
    let n = rows.len();
    let col = |j: usize| {
        Tensor::new(rows.iter().map(|r| r[j]).collect::<Vec<f32>>(), &CPU)?.reshape((n, 1))
    };
    let x = col(0)?;
    let (m, t, p) = (
        Var::from_tensor(&col(1)?)?,
        Var::from_tensor(&col(2)?)?,
        Var::from_tensor(&col(3)?)?,
    );
    let nb_params = Tensor::cat(&[m.as_tensor(), t.as_tensor()], 1)?;
    let nb = NegativeBinomial::new().log_prob(&x, &nb_params)?;
    ensure!(
        nb.to_vec1::<f32>()?.iter().all(|v| v.is_finite()),
        "NB log-prob not finite"
    );
    finite_grads(&nb.sum_all()?, &[&m, &t])?;
    let zinb_params = Tensor::cat(&[m.as_tensor(), t.as_tensor(), p.as_tensor()], 1)?;
    let zinb = ZeroInflatedNegativeBinomial::new().log_prob(&x, &zinb_params)?;
    ensure!(
        zinb.to_vec1::<f32>()?.iter().all(|v| v.is_finite()),
        "ZINB log-prob not finite"
    );
    finite_grads(&zinb.sum_all()?, &[&m, &t, &p])?;
    let poisson = Poisson.log_prob(&x, m.as_tensor())?;
    ensure!(
        poisson.to_vec1::<f32>()?.iter().all(|v| v.is_finite()),
        "Poisson log-prob not finite"
    );
    finite_grads(&poisson.sum_all()?, &[&m])?;
    Ok(())
}

/// ∂ ln NB/∂ log μ = θ(x − μ)/(θ + μ) in closed form, also at extreme parameters; and
/// ∂/∂ log θ against a central finite difference.
#[test]
fn nb_gradients_match_closed_form() -> Result<()> {
    on_both_paths(nb_gradients_match_closed_form_on)
}

fn nb_gradients_match_closed_form_on() -> Result<()> {
    let cases = [
        (0.0f64, 30.0f64, -18.4f64),
        (3.0, -30.0, 0.0),
        (12.0, 7f64.ln(), 9.99f64.ln()),
        (12.0, 7f64.ln(), 10.01f64.ln()),
        (1e5, 1e5f64.ln(), 1e8f64.ln()),
        (5.0, 3f64.ln(), -0.7),
    ];
    for (x, m0, t0) in cases {
        let xs = Tensor::new(&[[x]], &CPU)?;
        let m = Var::new(&[[m0]], &CPU)?;
        let t = Var::new(&[[t0]], &CPU)?;
        let params = Tensor::cat(&[m.as_tensor(), t.as_tensor()], 1)?;
        let lp = NegativeBinomial::new().log_prob(&xs, &params)?.sum_all()?;
        let g = finite_grads(&lp, &[&m, &t])?;
        let (mu, theta) = (m0.exp(), t0.exp());
        let want_m = theta * (x - mu) / (theta + mu);
        ensure!(
            close(g[0][0], want_m, 1e-8),
            "∂/∂log μ at {x}, {m0}, {t0}: {} vs {want_m}",
            g[0][0]
        );
        let h = 1e-4;
        let at = |dt: f64| -> Result<f64> {
            let p = Tensor::new(&[[m0, t0 + dt]], &CPU)?;
            Ok(NegativeBinomial::new()
                .log_prob(&xs, &p)?
                .to_vec1::<f64>()?[0])
        };
        let fd = (at(h)? - at(-h)?) / (2.0 * h);
        ensure!(
            (g[1][0] - fd).abs() < 1e-5 * fd.abs().max(1.0),
            "∂/∂log θ at {x}, {m0}, {t0}: {} vs {fd}",
            g[1][0]
        );
    }
    Ok(())
}

#[test]
fn per_gene_dispersion_equals_the_broadcast_per_element_one() -> Result<()> {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F64, &CPU);
    let gene = Dispersion::per_gene(3, 0.0, vb.pp("nb"))?;
    let log_theta = match &gene {
        Dispersion::PerGene(t) => t.clone(),
        Dispersion::PerElement => anyhow::bail!("per_gene made a per-element dispersion"),
    };
    ensure!(log_theta.to_vec1::<f64>()? == vec![0.0; 3], "initial log θ");
    // Set log θ = (−1, 0.5, 3) through the store's variable.
    let vars = store.named_vars()?;
    let (name, var) = vars.first().ok_or_else(|| anyhow::anyhow!("no variable"))?;
    ensure!(name == "nb.log_theta", "parameter name {name}");
    var.set(&Tensor::new(&[-1.0f64, 0.5, 3.0], &CPU)?)?;
    let x = Tensor::new(&[[0f64, 4.0, 17.0], [2.0, 0.0, 1.0]], &CPU)?;
    let log_mu = Tensor::new(&[[0.3f64, 1.2, 2.5], [-1.0, 0.0, 4.0]], &CPU)?;
    let t = Tensor::new(&[[-1.0f64, 0.5, 3.0], [-1.0, 0.5, 3.0]], &CPU)?;
    let logit = Tensor::new(&[[0.2f64, -1.0, 2.0], [0.0, 0.0, -3.0]], &CPU)?;
    let nb_gene = NegativeBinomial::with_dispersion(gene.clone());
    ensure!(nb_gene.params_per_element() == 1, "P of NB with θ per gene");
    let a = nb_gene.log_prob(&x, &log_mu)?.to_vec1::<f64>()?;
    let b = NegativeBinomial::new()
        .log_prob(&x, &Tensor::cat(&[&log_mu, &t], 1)?)?
        .to_vec1::<f64>()?;
    ensure!(
        a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-12),
        "NB {a:?} vs {b:?}"
    );
    let zinb_gene = ZeroInflatedNegativeBinomial::with_dispersion(gene);
    ensure!(
        zinb_gene.params_per_element() == 2,
        "P of ZINB with θ per gene"
    );
    let a = zinb_gene
        .log_prob(&x, &Tensor::cat(&[&log_mu, &logit], 1)?)?
        .to_vec1::<f64>()?;
    let b = ZeroInflatedNegativeBinomial::new()
        .log_prob(&x, &Tensor::cat(&[&log_mu, &t, &logit], 1)?)?
        .to_vec1::<f64>()?;
    ensure!(
        a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-12),
        "ZINB {a:?} vs {b:?}"
    );
    // A sample axis (K = 2) broadcasts against the per-gene θ.
    let k2 = nb_gene.log_prob(&x, &Tensor::stack(&[&log_mu, &log_mu], 0)?)?;
    ensure!(k2.dims() == [2, 2], "K-sample shape {:?}", k2.dims());
    // The gradient reaches the per-gene parameter.
    let grads = nb_gene.log_prob(&x, &log_mu)?.sum_all()?.backward()?;
    ensure!(
        grads.get(var.as_tensor()).is_some(),
        "no gradient for log θ"
    );
    // Data with another number of genes is a shape error naming the likelihood.
    let wrong = Tensor::zeros((2, 4), DType::F64, &CPU)?;
    let err = nb_gene
        .log_prob(&wrong, &wrong)
        .err()
        .ok_or_else(|| anyhow::anyhow!("4 genes accepted"))?;
    ensure!(
        err.to_string().contains("negative-binomial-gene"),
        "error: {err}"
    );
    Ok(())
}

#[test]
fn parameter_layout_mismatch_is_a_shape_error() -> Result<()> {
    let x = Tensor::zeros((2, 5), DType::F32, &CPU)?;
    let one = Tensor::zeros((2, 5), DType::F32, &CPU)?;
    for (name, err) in [
        (
            "negative-binomial",
            NegativeBinomial::new().log_prob(&x, &one).err(),
        ),
        (
            "zinb",
            ZeroInflatedNegativeBinomial::new().log_prob(&x, &one).err(),
        ),
        (
            "discretized-logistic",
            DiscretizedLogistic.log_prob(&x, &one).err(),
        ),
    ] {
        let err = err.ok_or_else(|| anyhow::anyhow!("{name}: (2, 5) parameters accepted"))?;
        let text = err.to_string();
        let want = if name == "zinb" { "[2, 15]" } else { "[2, 10]" };
        ensure!(text.contains(name) && text.contains(want), "{name}: {err}");
    }
    Ok(())
}

/// ln p of all 256 bins for one (μ, log-scale) in `dtype`.
fn logistic_bins(mu: f64, s: f64, dtype: DType) -> Result<Vec<f64>> {
    let xs: Vec<f64> = (0..256).map(|k| k as f64 / 255.0).collect();
    row_log_probs(&DiscretizedLogistic, &xs, &[&[mu; 256], &[s; 256]], dtype)
}

#[test]
fn discretized_logistic_matches_scipy_and_sums_to_one() -> Result<()> {
    for (mu, s, want) in LOGISTIC_REF {
        let lp = logistic_bins(mu, s, DType::F64)?;
        let total: f64 = lp.iter().map(|l| l.exp()).sum();
        ensure!(
            (total - 1.0).abs() < 1e-12,
            "(μ, s) = ({mu}, {s}): Σ p = {total}"
        );
        for (k, w) in LOGISTIC_BINS.iter().zip(want) {
            let p = lp[*k].exp();
            ensure!(
                (p - w).abs() <= 1e-12 * w.max(1e-3),
                "(μ, s) = ({mu}, {s}) bin {k}: {p} vs {w}"
            );
        }
        // f32: finite, and the same masses to f32 precision.
        let lp32 = logistic_bins(mu, s, DType::F32)?;
        ensure!(
            lp32.iter().all(|l| !l.is_nan() && *l < f64::INFINITY),
            "f32 NaN at ({mu}, {s})"
        );
        let total32: f64 = lp32.iter().map(|l| l.exp()).sum();
        ensure!(
            (total32 - 1.0).abs() < 1e-4,
            "f32 (μ, s) = ({mu}, {s}): Σ p = {total32}"
        );
    }
    for (k, mu, s, want) in LOGISTIC_TAILS {
        let lp = logistic_bins(mu, s, DType::F64)?[k];
        ensure!(
            close(lp, want, 1e-10),
            "tail bin {k} at ({mu}, {s}): {lp} vs {want}"
        );
        let lp32 = logistic_bins(mu, s, DType::F32)?[k];
        ensure!(
            close(lp32, want, 1e-5),
            "f32 tail bin {k} at ({mu}, {s}): {lp32} vs {want}"
        );
    }
    Ok(())
}

#[test]
fn discretized_logistic_gradients_are_finite_and_samples_are_on_the_grid() -> Result<()> {
    let mut xs = Vec::new();
    let mut mus = Vec::new();
    let mut ss = Vec::new();
    for k in [0u32, 1, 128, 254, 255] {
        for mu in [-50.0f32, 0.0, 0.5, 1.0, 50.0] {
            for s in [-15.0f32, -5.0, 0.0, 10.0] {
                xs.push(k as f32 / 255.0);
                mus.push(mu);
                ss.push(s);
            }
        }
    }
    let n = xs.len();
    let x = Tensor::new(xs, &CPU)?.reshape((n, 1))?;
    let mu = Var::from_tensor(&Tensor::new(mus, &CPU)?.reshape((n, 1))?)?;
    let s = Var::from_tensor(&Tensor::new(ss, &CPU)?.reshape((n, 1))?)?;
    let params = Tensor::cat(&[mu.as_tensor(), s.as_tensor()], 1)?;
    let lp = DiscretizedLogistic.log_prob(&x, &params)?;
    ensure!(
        lp.to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite() && *v <= 0.0),
        "log-prob not finite"
    );
    finite_grads(&lp.sum_all()?, &[&mu, &s])?;
    // Samples: on the grid, in [0, 1], with the bin frequencies of the mass function.
    let draws = 100_000;
    let p = Tensor::new(&[[0.4f64, -3.0]], &CPU)?.repeat((draws, 1))?;
    let xs = DiscretizedLogistic
        .sample(&p, 1, &mut NoiseSource::new(9))?
        .flatten_all()?
        .to_vec1::<f64>()?;
    ensure!(
        xs.iter()
            .all(|x| (0.0..=1.0).contains(x) && ((x * 255.0).round() - x * 255.0).abs() < 1e-9),
        "off-grid sample"
    );
    let bin = 102; // 0.4 = 102/255: the modal bin
    let freq = xs
        .iter()
        .filter(|x| (*x * 255.0).round() as usize == bin)
        .count() as f64
        / draws as f64;
    let want = logistic_bins(0.4, -3.0, DType::F64)?[bin].exp();
    let se = (want * (1.0 - want) / draws as f64).sqrt();
    ensure!(
        (freq - want).abs() < 4.0 * se,
        "bin {bin} frequency {freq} vs {want}"
    );
    Ok(())
}

// ------------------------------------------------------------------ the count loader

/// A temporary file holding `text`, gzipped if `gzip`.
fn temp_file(text: &str, gzip: bool) -> Result<tempfile::NamedTempFile> {
    let mut file = tempfile::NamedTempFile::new()?;
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes())?;
        file.write_all(&enc.finish()?)?;
    } else {
        file.write_all(text.as_bytes())?;
    }
    file.flush()?;
    Ok(file)
}

#[test]
fn csv_counts_and_labels_parse_plain_and_gzip() -> Result<()> {
    let text = "A,B,C\n0,1,2\n3,0,40\n";
    for gzip in [false, true] {
        let file = temp_file(text, gzip)?;
        let labels = temp_file("label\nT cell\nB cell\n", gzip)?;
        let data = CountDataset::from_csv(file.path())?.with_labels_csv(labels.path())?;
        ensure!((data.len(), data.genes()) == (2, 3), "shape");
        ensure!(
            data.counts() == [0, 1, 2, 3, 0, 40],
            "counts {:?}",
            data.counts()
        );
        ensure!(data.gene_names() == ["A", "B", "C"], "genes");
        ensure!(
            data.label_names() == ["B cell", "T cell"],
            "names sorted: {:?}",
            data.label_names()
        );
        ensure!(
            data.labels() == Some(&[1u8, 0][..]),
            "labels {:?}",
            data.labels()
        );
        ensure!(
            (data.zero_fraction() - 2.0 / 6.0).abs() < 1e-12,
            "zero fraction"
        );
    }
    Ok(())
}

/// The reason of an [`Error::Data`] for `path`, or a failure.
fn data_reason(result: candle_vae::Result<CountDataset>, path: &std::path::Path) -> Result<String> {
    match result {
        Err(Error::Data { path: p, reason }) if p == path => Ok(reason),
        Err(other) => anyhow::bail!("expected Error::Data for {}, got {other}", path.display()),
        Ok(_) => anyhow::bail!("malformed {} accepted", path.display()),
    }
}

#[test]
fn malformed_csv_is_a_typed_error_naming_file_line_and_column() -> Result<()> {
    let cases = [
        ("A,B\n1,2\n3,x\n", vec!["line 3", "column 2 (B)", "`x`"]),
        ("A,B\n1,2\n3,-1\n", vec!["line 3", "column 2", "`-1`"]),
        ("A,B\n1,2.5\n", vec!["line 2", "column 2", "`2.5`"]),
        ("A,B\n1,2\n3\n", vec!["line 3", "1 fields", "2 genes"]),
        ("A,B\n1,2,3\n", vec!["line 2", "3 fields"]),
        ("A,B\n1,2\n\n", vec!["line 3", "empty row"]),
        ("A,,B\n1,2,3\n", vec!["line 1", "empty gene name"]),
        ("A,B\n", vec!["no cells"]),
        ("", vec!["empty"]),
    ];
    for (text, needles) in cases {
        let file = temp_file(text, true)?;
        let reason = data_reason(CountDataset::from_csv(file.path()), file.path())?;
        for needle in needles {
            ensure!(
                reason.contains(needle),
                "{text:?}: `{reason}` lacks `{needle}`"
            );
        }
    }
    // Labels: wrong header, wrong count.
    let counts = temp_file("A\n1\n2\n", false)?;
    for (text, needle) in [
        ("name\nx\ny\n", "expected `label`"),
        ("label\nx\n", "1 labels, but the counts hold 2"),
    ] {
        let labels = temp_file(text, false)?;
        let data = CountDataset::from_csv(counts.path())?;
        let reason = data_reason(data.with_labels_csv(labels.path()), labels.path())?;
        ensure!(
            reason.contains(needle),
            "{text:?}: `{reason}` lacks `{needle}`"
        );
    }
    // A corrupt gzip stream (valid magic, garbage after it) names the file too.
    let mut bytes = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    bytes.extend_from_slice(b"not deflate data at all");
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(&bytes)?;
    file.flush()?;
    data_reason(CountDataset::from_csv(file.path()), file.path())?;
    // A missing file is an I/O error naming it.
    let missing = std::env::temp_dir().join("candle-vae-no-such-counts.csv.gz");
    match CountDataset::from_csv(&missing) {
        Err(Error::Io { path, .. }) if path == missing => {}
        other => anyhow::bail!("missing file: {other:?}"),
    }
    Ok(())
}

#[test]
fn subsets_splits_and_tensors_keep_rows_and_labels() -> Result<()> {
    let genes: Vec<String> = ["g0", "g1"].iter().map(|s| s.to_string()).collect();
    let counts: Vec<u32> = (0..10).collect();
    let data = CountDataset::new(
        genes,
        counts,
        Some((vec![0, 1, 0, 1, 1], vec!["a".into(), "b".into()])),
    )?;
    let split = Split::random(data.len(), 2, 3)?;
    let (train, test) = data.split(&split)?;
    ensure!((train.len(), test.len()) == (3, 2), "split sizes");
    for (part, idx) in [(&train, &split.train), (&test, &split.test)] {
        for (row, &i) in idx.iter().enumerate() {
            ensure!(part.cell(row) == data.cell(i), "row {row} is not cell {i}");
            ensure!(
                part.labels().map(|l| l[row]) == data.labels().map(|l| l[i]),
                "label of {i}"
            );
        }
    }
    let xs = data
        .to_tensor(&[4, 0], DType::F32, &CPU)?
        .to_vec2::<f32>()?;
    ensure!(xs == vec![vec![8.0, 9.0], vec![0.0, 1.0]], "tensor {xs:?}");
    ensure!(data.subset(&[5]).is_err(), "out-of-range index accepted");
    ensure!(
        CountDataset::new(
            vec!["a".into()],
            vec![1, 2],
            Some((vec![0], vec!["x".into()]))
        )
        .is_err(),
        "short labels accepted"
    );
    Ok(())
}

/// The shared datasets folder, or `None` (with a note) when `CANDLE_VAE_DATA` is unset.
fn data_root() -> Option<std::path::PathBuf> {
    match std::env::var_os("CANDLE_VAE_DATA") {
        Some(dir) if !dir.is_empty() => Some(dir.into()),
        _ => {
            eprintln!(
                "CANDLE_VAE_DATA is not set: skipping the real count data (set it to the shared datasets folder)"
            );
            None
        }
    }
}

#[test]
fn real_pbmc_counts_match_the_readme() -> Result<()> {
    let Some(root) = data_root() else {
        return Ok(());
    };
    let data = Pbmc68kReduced::load(root.join("counts"))?;
    ensure!(
        (data.len(), data.genes()) == (700, 765),
        "shape {} × {}",
        data.len(),
        data.genes()
    );
    ensure!(
        (data.zero_fraction() - 0.6743).abs() < 5e-5,
        "zero fraction {}",
        data.zero_fraction()
    );
    ensure!(data.counts().iter().max() == Some(&259), "max count");
    ensure!(
        data.gene_names()[..3] == ["HES4", "TNFRSF4", "SSU72"],
        "first genes {:?}",
        &data.gene_names()[..3]
    );
    ensure!(
        data.label_names().len() == 10,
        "{} labels",
        data.label_names().len()
    );
    let labels = data.labels().ok_or_else(|| anyhow::anyhow!("no labels"))?;
    let count = |name: &str| -> Result<usize> {
        let i = data
            .label_names()
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| anyhow::anyhow!("no label {name}"))?;
        Ok(labels.iter().filter(|&&l| usize::from(l) == i).count())
    };
    // The README's counts per type.
    for (name, n) in [
        ("Dendritic", 240),
        ("CD14+ Monocyte", 129),
        ("CD19+ B", 95),
        ("CD4+/CD45RA+/CD25- Naive T", 8),
    ] {
        ensure!(
            count(name)? == n,
            "{name}: {} cells, README says {n}",
            count(name)?
        );
    }
    // The first cell is a CD14+ Monocyte (labels.csv.gz).
    ensure!(
        data.label_names()[usize::from(labels[0])] == "CD14+ Monocyte",
        "first label"
    );
    Ok(())
}

#[test]
fn real_celltypist_counts_match_the_readme() -> Result<()> {
    let Some(root) = data_root() else {
        return Ok(());
    };
    let data = CelltypistSample::load(root.join("counts/celltypist_sample"))?;
    ensure!((data.len(), data.genes()) == (559, 32_786), "shape");
    ensure!(
        (data.zero_fraction() - 0.9439).abs() < 5e-5,
        "zero fraction {}",
        data.zero_fraction()
    );
    ensure!(data.counts().iter().max() == Some(&1448), "max count");
    let totals: Vec<u64> = (0..data.len())
        .map(|i| {
            data.cell(i)
                .map_or(0, |c| c.iter().map(|&v| u64::from(v)).sum())
        })
        .collect();
    ensure!(
        totals.iter().min() == Some(&945) && totals.iter().max() == Some(&39_886),
        "library sizes"
    );
    ensure!(data.labels().is_none(), "unexpected labels");
    Ok(())
}

/// The count likelihoods compose into a `Vae`: a decoder with P·C outputs fits, one with
/// the wrong P is refused at construction, and a training step and the IS log-likelihood
/// are finite (a ZINB decoder of 3·C outputs is an `MlpDecoder` with P = 1, since its
/// config takes P ≤ 2).
#[test]
fn count_likelihoods_compose_into_a_vae() -> Result<()> {
    use candle_vae::estimate::{self, ImportanceSamplingConfig};
    use candle_vae::{
        Adam, AdamConfig, ElboLoss, ElboLossConfig, MlpDecoder, MlpDecoderConfig, MlpEncoder,
        MlpEncoderConfig, Vae,
    };
    let genes = 6;
    let store = ParamStore::new(3);
    let vb = store.var_builder(DType::F32, &CPU);
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(genes, &[8], 2), vb.pp("enc"))?;
    let wrong = MlpDecoder::new(&MlpDecoderConfig::new(2, &[8], genes), vb.pp("wrong"))?;
    match Vae::new(enc.clone(), wrong, NegativeBinomial::new()) {
        Err(Error::DataShapeMismatch {
            params_per_element: 2,
            ..
        }) => {}
        other => anyhow::bail!("NB with a P = 1 decoder: {:?}", other.err()),
    }
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(2, &[8], 3 * genes), vb.pp("dec"))?;
    let vae = Vae::new(enc, dec, ZeroInflatedNegativeBinomial::new())?;
    let mut noise = NoiseSource::new(1);
    let xs = noise
        .uniform((16, genes), DType::F32, &CPU)?
        .affine(6.0, 0.0)?
        .floor()?;
    let mut adam = Adam::from_store(&store, AdamConfig::new(1e-2))?;
    let loss = ElboLoss::new(ElboLossConfig::default())?;
    let first = loss
        .forward(&vae.forward_t(&xs, &mut noise, true)?, &xs)?
        .loss
        .to_scalar::<f32>()?;
    for _ in 0..50 {
        let elbo = loss.forward(&vae.forward_t(&xs, &mut noise, true)?, &xs)?;
        adam.backward_step(&elbo.loss)?;
    }
    let last = loss
        .forward(&vae.forward_t(&xs, &mut noise, true)?, &xs)?
        .loss
        .to_scalar::<f32>()?;
    ensure!(
        first.is_finite() && last.is_finite() && last < first,
        "−ELBO {first} → {last}"
    );
    let ll = estimate::log_likelihood(&vae, &xs, &ImportanceSamplingConfig::new(64), &mut noise)?;
    let ll = ll.to_vec1::<f64>()?;
    // log p(x) ≥ the ELBO in expectation, and ≤ 0 for a probability mass.
    ensure!(
        ll.iter().all(|l| l.is_finite() && *l <= 0.0),
        "IS log p(x) {ll:?}"
    );
    let mean = ll.iter().sum::<f64>() / ll.len() as f64;
    ensure!(
        mean >= -f64::from(last) - 1.0,
        "IS {mean} below −ELBO {last}"
    );
    Ok(())
}
