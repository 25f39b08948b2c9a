//! Priors and the flow posterior against hand computations: the mixture and VampPrior
//! densities as a log-sum-exp written out here, their sample moments against the
//! mixture's mean and covariance, closed-form KLs against Monte-Carlo, and the planar
//! flow's log-determinant against a finite-difference Jacobian.

mod common;

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor};
use candle_vae::{
    DiagonalGaussian, ElboLoss, ElboLossConfig, Encoder, Error, FlowEncoder, GaussianPrior,
    KlEstimator, MixturePrior, MixturePriorConfig, MlpDecoder, MlpDecoderConfig, MlpEncoder,
    MlpEncoderConfig, NoiseSource, ParamStore, PlanarFlow, PlanarFlowConfig, Prior, Reparameterize,
    StandardLikelihood, StandardNormal, Vae, VampPrior, VampPriorConfig,
};
use common::{LN_2PI, assert_all_close, assert_close, dev, mean_and_se, tensor, values};

/// log N(z; m, diag v) for one point, written out.
fn gaussian_log_density(z: &[f64], m: &[f64], log_var: &[f64]) -> f64 {
    z.iter()
        .zip(m)
        .zip(log_var)
        .map(|((z, m), lv)| -0.5 * (LN_2PI + lv + (z - m).powi(2) / lv.exp()))
        .sum()
}

fn log_sum_exp(values: &[f64]) -> f64 {
    let m = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + values.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// A 3-component mixture over 2 dimensions with unequal weights, means and variances.
struct Mixture {
    logits: Vec<f64>,
    means: Vec<f64>,
    log_vars: Vec<f64>,
}

const K: usize = 3;
const D: usize = 2;

fn mixture() -> Mixture {
    Mixture {
        logits: vec![0.3, -0.5, 1.1],
        means: vec![-2.0, 0.5, 1.0, -1.0, 0.2, 2.5],
        log_vars: vec![-0.5, 0.3, 0.0, -1.2, 0.7, -0.2],
    }
}

impl Mixture {
    fn prior(&self) -> Result<MixturePrior> {
        Ok(MixturePrior::from_tensors(
            tensor(&self.logits, &[K])?,
            tensor(&self.means, &[K, D])?,
            tensor(&self.log_vars, &[K, D])?,
        )?)
    }

    fn weights(&self) -> Vec<f64> {
        let lse = log_sum_exp(&self.logits);
        self.logits.iter().map(|l| (l - lse).exp()).collect()
    }

    fn log_prob(&self, z: &[f64]) -> f64 {
        let lse = log_sum_exp(&self.logits);
        let terms: Vec<f64> = (0..K)
            .map(|k| {
                self.logits[k] - lse
                    + gaussian_log_density(
                        z,
                        &self.means[k * D..(k + 1) * D],
                        &self.log_vars[k * D..(k + 1) * D],
                    )
            })
            .collect();
        log_sum_exp(&terms)
    }
}

/// Points near and far from the components, as `(N, D)` rows.
const POINTS: [[f64; D]; 5] = [
    [0.0, 0.0],
    [-2.0, 0.5],
    [1.3, -0.9],
    [6.0, -7.0],
    [0.2, 2.4],
];

fn points() -> Result<Tensor> {
    let flat: Vec<f64> = POINTS.iter().flatten().copied().collect();
    tensor(&flat, &[POINTS.len(), D])
}

device_test!(mixture_log_prob_is_the_log_sum_exp_of_its_components);
fn mixture_log_prob_is_the_log_sum_exp_of_its_components() -> Result<()> {
    let m = mixture();
    let prior = m.prior()?;
    let expected: Vec<f64> = POINTS.iter().map(|z| m.log_prob(z)).collect();
    // (N, D) → (N,); f64 through the matrix-product form: rounding only.
    assert_all_close(
        "log p(z)",
        &values(&prior.log_prob(&points()?)?)?,
        &expected,
        1e-10,
    )?;
    // (K', N, D) → (K', N): the same values per sample.
    let stacked = Tensor::stack(&[points()?, points()?], 0)?;
    let twice: Vec<f64> = expected.iter().chain(&expected).copied().collect();
    assert_all_close(
        "log p(z), (2, N, D)",
        &values(&prior.log_prob(&stacked)?)?,
        &twice,
        1e-10,
    )?;
    Ok(())
}

/// A linear encoder on 4-wide inputs with latent width 2, its weights from `seed`.
fn linear_encoder(store: &ParamStore) -> Result<MlpEncoder> {
    Ok(MlpEncoder::new(
        &MlpEncoderConfig::new(4, &[], D),
        store.var_builder(DType::F64, &dev()).pp("enc"),
    )?)
}

const PSEUDO: [f64; 12] = [
    0.1, 0.9, 0.3, 0.5, //
    0.7, 0.2, 0.8, 0.0, //
    1.0, 0.4, 0.6, 0.9,
];

device_test!(vamp_prior_log_prob_is_the_mean_of_the_encoder_posteriors);
fn vamp_prior_log_prob_is_the_mean_of_the_encoder_posteriors() -> Result<()> {
    let store = ParamStore::new(3);
    let encoder = linear_encoder(&store)?;
    let u = tensor(&PSEUDO, &[3, 4])?;
    let q = encoder.encode(&u)?;
    let (means, log_vars) = (values(q.mean())?, values(q.log_var())?);
    let prior = VampPrior::from_pseudo_inputs(encoder, u, None)?;
    assert_eq!((prior.components(), prior.latent_dim()), (3, D));
    let expected: Vec<f64> = POINTS
        .iter()
        .map(|z| {
            let terms: Vec<f64> = (0..3)
                .map(|k| {
                    gaussian_log_density(
                        z,
                        &means[k * D..(k + 1) * D],
                        &log_vars[k * D..(k + 1) * D],
                    )
                })
                .collect();
            log_sum_exp(&terms) - 3f64.ln()
        })
        .collect();
    assert_all_close(
        "VampPrior log p(z)",
        &values(&prior.log_prob(&points()?)?)?,
        &expected,
        1e-10,
    )?;
    Ok(())
}

device_test!(vamp_prior_with_one_pseudo_input_is_the_posterior_there);
fn vamp_prior_with_one_pseudo_input_is_the_posterior_there() -> Result<()> {
    let store = ParamStore::new(4);
    let encoder = linear_encoder(&store)?;
    let u = tensor(&PSEUDO[..4], &[1, 4])?;
    let q = encoder.encode(&u)?;
    let prior = VampPrior::from_pseudo_inputs(encoder, u, None)?;
    // q is over (1, D); broadcast its log-density over the N points.
    let z = points()?;
    let direct = q.log_prob(&z)?;
    assert_all_close(
        "K = 1",
        &values(&prior.log_prob(&z)?)?,
        &values(&direct)?,
        1e-12,
    )?;
    Ok(())
}

/// A posterior family the crate does not know: a diagonal Gaussian behind a newtype, so
/// the VampPrior cannot take its Gaussian fast path and goes through the trait.
#[derive(Debug, Clone)]
struct Opaque(DiagonalGaussian);

impl Reparameterize for Opaque {
    fn latent_dim(&self) -> usize {
        self.0.dim()
    }
    fn draw_noise(
        &self,
        samples: Option<usize>,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        self.0.draw_noise(samples, noise)
    }
    fn rsample_with(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        self.0.rsample_with(eps)
    }
    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.0.log_prob(z)
    }
    fn location(&self) -> candle_core::Result<Tensor> {
        Ok(self.0.mean().clone())
    }
}

struct OpaqueEncoder(MlpEncoder);

impl Encoder for OpaqueEncoder {
    type Posterior = Opaque;
    fn encode(&self, xs: &Tensor) -> candle_core::Result<Opaque> {
        Ok(Opaque(self.0.encode(xs)?))
    }
}

device_test!(vamp_prior_of_any_family_matches_the_gaussian_fast_path);
fn vamp_prior_of_any_family_matches_the_gaussian_fast_path() -> Result<()> {
    let store = ParamStore::new(5);
    let u = tensor(&PSEUDO, &[3, 4])?;
    let fast = VampPrior::from_pseudo_inputs(linear_encoder(&store)?, u.clone(), None)?;
    let generic = VampPrior::from_pseudo_inputs(OpaqueEncoder(linear_encoder(&store)?), u, None)?;
    let z = Tensor::stack(&[points()?, points()?.affine(0.5, 0.1)?], 0)?;
    assert_all_close(
        "generic vs fast",
        &values(&generic.log_prob(&z)?)?,
        &values(&fast.log_prob(&z)?)?,
        1e-10,
    )?;
    Ok(())
}

/// A named statistic f(z) and its value under the mixture.
type Statistic = (&'static str, Box<dyn Fn(&[f64]) -> f64>, f64);

/// Checks E[f(z)] for f = z_1, z_2, z_1², z_2², z_1 z_2 against the mixture's moments,
/// each within 4.5 standard errors of its Monte-Carlo estimate.
fn check_mixture_moments(
    samples: &[f64],
    weights: &[f64],
    means: &[f64],
    vars: &[f64],
) -> Result<()> {
    let n = samples.len() / D;
    let stats: [Statistic; 5] = {
        let ex = |d: usize| {
            (0..weights.len())
                .map(|k| weights[k] * means[k * D + d])
                .sum::<f64>()
        };
        let ex2 = |d: usize| {
            (0..weights.len())
                .map(|k| weights[k] * (vars[k * D + d] + means[k * D + d].powi(2)))
                .sum::<f64>()
        };
        let exy = (0..weights.len())
            .map(|k| weights[k] * means[k * D] * means[k * D + 1])
            .sum::<f64>();
        [
            ("E[z1]", Box::new(|z: &[f64]| z[0]), ex(0)),
            ("E[z2]", Box::new(|z: &[f64]| z[1]), ex(1)),
            ("E[z1²]", Box::new(|z: &[f64]| z[0] * z[0]), ex2(0)),
            ("E[z2²]", Box::new(|z: &[f64]| z[1] * z[1]), ex2(1)),
            ("E[z1 z2]", Box::new(|z: &[f64]| z[0] * z[1]), exy),
        ]
    };
    for (name, f, truth) in stats {
        let draws: Vec<f64> = (0..n).map(|i| f(&samples[i * D..(i + 1) * D])).collect();
        let (mean, se) = mean_and_se(&draws);
        ensure!(
            (mean - truth).abs() <= 4.5 * se,
            "{name}: Monte-Carlo {mean:.4} vs mixture {truth:.4} (SE {se:.4})"
        );
    }
    Ok(())
}

device_test!(mixture_samples_have_the_mixture_moments);
fn mixture_samples_have_the_mixture_moments() -> Result<()> {
    let m = mixture();
    let samples =
        values(
            &m.prior()?
                .sample(40_000, DType::F64, &dev(), &mut NoiseSource::new(11))?,
        )?;
    let vars: Vec<f64> = m.log_vars.iter().map(|v| v.exp()).collect();
    check_mixture_moments(&samples, &m.weights(), &m.means, &vars)
}

device_test!(vamp_samples_have_the_mixture_moments);
fn vamp_samples_have_the_mixture_moments() -> Result<()> {
    let store = ParamStore::new(6);
    let encoder = linear_encoder(&store)?;
    let u = tensor(&PSEUDO, &[3, 4])?;
    let q = encoder.encode(&u)?;
    let (means, vars) = (values(q.mean())?, values(&q.variance()?)?);
    let prior = VampPrior::from_pseudo_inputs(encoder, u, None)?;
    let samples = values(&prior.sample(40_000, DType::F64, &dev(), &mut NoiseSource::new(12))?)?;
    check_mixture_moments(&samples, &[1.0 / 3.0; 3], &means, &vars)
}

device_test!(vamp_prior_clamps_and_learns_its_pseudo_inputs);
fn vamp_prior_clamps_and_learns_its_pseudo_inputs() -> Result<()> {
    let store = ParamStore::new(7);
    let encoder = linear_encoder(&store)?;
    let config = VampPriorConfig::new(5, &[4]).with_init(0.5, 2.0);
    let prior = VampPrior::new(
        encoder,
        &config,
        store.var_builder(DType::F64, &dev()).pp("prior"),
    )?;
    let u = values(&prior.pseudo_inputs()?)?;
    ensure!(
        u.iter().all(|v| (0.0..=1.0).contains(v)),
        "pseudo-inputs outside [0, 1]: {u:?}"
    );
    ensure!(
        u.iter().any(|&v| v == 0.0 || v == 1.0),
        "N(0.5, 2²) draws should hit the clamp"
    );
    let names: Vec<String> = store.named_vars()?.into_iter().map(|(n, _)| n).collect();
    ensure!(
        names.iter().any(|n| n == "prior.pseudo_inputs"),
        "pseudo-inputs not in the store: {names:?}"
    );
    Ok(())
}

device_test!(gaussian_prior_closed_form_kl_matches_monte_carlo);
fn gaussian_prior_closed_form_kl_matches_monte_carlo() -> Result<()> {
    let prior = GaussianPrior::new(tensor(&[0.5, -1.0], &[D])?, tensor(&[0.4, -0.6], &[D])?)?;
    let q = DiagonalGaussian::new(
        tensor(&[0.0, 0.3, -1.2, -0.8], &[2, D])?,
        tensor(&[-0.3, 0.2, -1.0, 0.1], &[2, D])?,
    )?;
    let analytic = values(
        &prior
            .analytic_kl_per_dim(&q)
            .ok_or_else(|| anyhow::anyhow!("no closed form"))??
            .sum(1)?,
    )?;
    let z = q.rsample_n(50_000, &mut NoiseSource::new(13))?;
    let log_ratio = (q.log_prob(&z)? - prior.log_prob(&z)?)?
        .t()?
        .contiguous()?
        .to_vec2::<f64>()?;
    for (i, row) in log_ratio.iter().enumerate() {
        let (mean, se) = mean_and_se(row);
        ensure!(
            (mean - analytic[i]).abs() <= 4.5 * se,
            "example {i}: MC KL {mean:.4} vs closed form {:.4} (SE {se:.4})",
            analytic[i]
        );
    }
    // The standard normal is the special case m = 0, s = 1.
    let standard = GaussianPrior::new(
        Tensor::zeros(D, DType::F64, &dev())?,
        Tensor::zeros(D, DType::F64, &dev())?,
    )?;
    let a = standard
        .analytic_kl_per_dim(&q)
        .ok_or_else(|| anyhow::anyhow!("no closed form"))??;
    let b = StandardNormal::new(D)?
        .analytic_kl_per_dim(&q)
        .ok_or_else(|| anyhow::anyhow!("no closed form"))??;
    assert_all_close(
        "N(0, I) as GaussianPrior",
        &values(&a)?,
        &values(&b)?,
        1e-14,
    )?;
    Ok(())
}

/// A small MLP VAE on 4-wide data, in f64.
fn small_vae(store: &ParamStore) -> Result<Vae<MlpEncoder, MlpDecoder>> {
    let vb = store.var_builder(DType::F64, &dev());
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(4, &[6], D), vb.pp("enc"))?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(D, &[6], 4), vb.pp("dec"))?;
    Ok(Vae::new(enc, dec, StandardLikelihood::Bernoulli)?)
}

device_test!(analytic_kl_without_a_closed_form_is_a_typed_error);
fn analytic_kl_without_a_closed_form_is_a_typed_error() -> Result<()> {
    let store = ParamStore::new(8);
    let prior = MixturePrior::new(
        &MixturePriorConfig::new(4, D),
        store.var_builder(DType::F64, &dev()).pp("prior"),
    )?;
    let vae = small_vae(&store)?.with_prior(prior)?;
    // At construction, through the model.
    match vae.elbo_loss(ElboLossConfig::default()) {
        Err(Error::NoAnalyticKl { prior, posterior }) => {
            ensure!(
                prior.contains("MixturePrior") && posterior.contains("DiagonalGaussian"),
                "{prior} / {posterior}"
            );
        }
        other => anyhow::bail!("expected NoAnalyticKl, got {other:?}"),
    }
    // And at the first batch for a loss built without the model: an error, not a fallback.
    let xs = tensor(&PSEUDO, &[3, 4])?;
    let out = vae.forward_t(&xs, &mut NoiseSource::new(1), true)?;
    let err = ElboLoss::new(ElboLossConfig::default())?
        .forward(&out, &xs)
        .err();
    ensure!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("no closed-form KL")),
        "expected the analytic-KL error, got {err:?}"
    );
    // Monte-Carlo works; free bits need a per-dimension KL the mixture does not have.
    let mc = vae.elbo_loss(ElboLossConfig::default().with_kl_estimator(KlEstimator::MonteCarlo))?;
    let elbo = mc.forward(&out, &xs)?;
    ensure!(
        elbo.kl_per_dim.is_none() && elbo.loss.to_scalar::<f64>()?.is_finite(),
        "MC ELBO"
    );
    let free_bits = ElboLoss::new(
        ElboLossConfig::default()
            .with_kl_estimator(KlEstimator::MonteCarlo)
            .with_free_bits(0.1),
    )?;
    let err = free_bits.forward(&out, &xs).err();
    ensure!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("free_bits")),
        "expected the per-dimension error, got {err:?}"
    );
    Ok(())
}

device_test!(bad_prior_configs_are_typed_errors);
fn bad_prior_configs_are_typed_errors() -> Result<()> {
    let store = ParamStore::new(9);
    let vb = store.var_builder(DType::F64, &dev());
    for (what, result) in [
        (
            "mixture K = 0",
            MixturePrior::new(&MixturePriorConfig::new(0, 2), vb.pp("a")).err(),
        ),
        (
            "mixture D = 0",
            MixturePrior::new(&MixturePriorConfig::new(3, 0), vb.pp("b")).err(),
        ),
    ] {
        ensure!(
            matches!(
                result,
                Some(Error::InvalidConfig {
                    config: "MixturePriorConfig",
                    ..
                })
            ),
            "{what}: {result:?}"
        );
    }
    let vamp = VampPrior::new(
        linear_encoder(&store)?,
        &VampPriorConfig::new(0, &[4]),
        vb.pp("c"),
    )
    .err();
    ensure!(
        matches!(
            vamp,
            Some(Error::InvalidConfig {
                config: "VampPriorConfig",
                field: "components",
                ..
            })
        ),
        "vamp K = 0: {vamp:?}"
    );
    // Pseudo-inputs the encoder cannot read: candle's shape error, at construction.
    let wrong = VampPrior::new(
        linear_encoder(&store)?,
        &VampPriorConfig::new(3, &[5]),
        vb.pp("d"),
    );
    ensure!(
        wrong.is_err(),
        "pseudo-inputs of width 5 for a 4-wide encoder were accepted"
    );
    // A prior over another width than the model's latent code.
    let err = small_vae(&store)?.with_prior(StandardNormal::new(3)?).err();
    ensure!(
        matches!(err, Some(Error::PriorMismatch { model: 2, prior: 3 })),
        "{err:?}"
    );
    let err = StandardNormal::new(0).err();
    ensure!(
        matches!(err, Some(Error::InvalidConfig { field: "dim", .. })),
        "{err:?}"
    );
    Ok(())
}

/// A 3-dimensional planar flow of two steps whose u are set away from 0, so every step
/// bends the space.
fn bent_flow(store: &ParamStore) -> Result<PlanarFlow> {
    let flow = PlanarFlow::new(
        &PlanarFlowConfig::new(3, 2),
        store.var_builder(DType::F64, &dev()).pp("flow"),
    )?;
    for (name, var) in store.named_vars()? {
        match name.as_str() {
            "flow.step0.u" => var.set(&tensor(&[0.8, -0.4, 0.3], &[3])?)?,
            "flow.step1.u" => var.set(&tensor(&[-0.6, 0.9, 0.5], &[3])?)?,
            "flow.step0.w" => var.set(&tensor(&[1.2, 0.3, -0.7], &[3])?)?,
            "flow.step1.w" => var.set(&tensor(&[-0.4, 1.1, 0.6], &[3])?)?,
            "flow.step0.b" => var.set(&tensor(&[0.2], &[1])?)?,
            "flow.step1.b" => var.set(&tensor(&[-0.3], &[1])?)?,
            _ => {}
        }
    }
    Ok(flow)
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

device_test!(planar_log_det_matches_a_finite_difference_jacobian);
fn planar_log_det_matches_a_finite_difference_jacobian() -> Result<()> {
    let store = ParamStore::new(10);
    let flow = bent_flow(&store)?;
    let base = DiagonalGaussian::new(
        Tensor::zeros((1, 3), DType::F64, &dev())?,
        Tensor::zeros((1, 3), DType::F64, &dev())?,
    )?;
    let q = flow.posterior(base)?;
    let h = 1e-6;
    for z0 in [[0.1, -0.2, 0.3], [1.5, 0.7, -1.1], [-2.0, 2.0, 0.5]] {
        let at = |z: [f64; 3]| -> Result<Vec<f64>> {
            values(&q.forward_with_log_det(&tensor(&z, &[1, 3])?)?.0)
        };
        let mut jac = [[0.0; 3]; 3];
        for j in 0..3 {
            let (mut plus, mut minus) = (z0, z0);
            plus[j] += h;
            minus[j] -= h;
            let (fp, fm) = (at(plus)?, at(minus)?);
            for i in 0..3 {
                jac[i][j] = (fp[i] - fm[i]) / (2.0 * h);
            }
        }
        let (_, log_det) = q.forward_with_log_det(&tensor(&z0, &[1, 3])?)?;
        let numeric = det3(&jac).abs().ln();
        assert_close(
            &format!("log|det J| at {z0:?}"),
            values(&log_det)?[0],
            numeric,
            1e-7,
        )?;
        ensure!(
            numeric.abs() > 0.05,
            "the flow barely bends at {z0:?}: log|det| = {numeric}"
        );
    }
    Ok(())
}

device_test!(planar_flow_stays_invertible_when_u_points_against_w);
fn planar_flow_stays_invertible_when_u_points_against_w() -> Result<()> {
    let store = ParamStore::new(11);
    let flow = PlanarFlow::new(
        &PlanarFlowConfig::new(3, 1),
        store.var_builder(DType::F64, &dev()).pp("flow"),
    )?;
    for (name, var) in store.named_vars()? {
        match name.as_str() {
            "flow.step0.w" => var.set(&tensor(&[1.0, 0.5, -0.5], &[3])?)?,
            // wᵀu = −6: the raw step would fold space; û must not.
            "flow.step0.u" => var.set(&tensor(&[-4.0, -2.0, 2.0], &[3])?)?,
            _ => {}
        }
    }
    let base = DiagonalGaussian::new(
        Tensor::zeros((64, 3), DType::F64, &dev())?,
        Tensor::zeros((64, 3), DType::F64, &dev())?,
    )?;
    let q = flow.posterior(base)?;
    let z0 = NoiseSource::new(3)
        .standard_normal((64, 3), DType::F64, &dev())?
        .affine(3.0, 0.0)?;
    let log_det = values(&q.forward_with_log_det(&z0)?.1)?;
    ensure!(
        log_det.iter().all(|v| v.is_finite()),
        "non-finite log|det|: {log_det:?}"
    );
    // With wᵀû = e^{−6} − 1, 1 + tanh′·wᵀû ≥ e^{−6}: log|det| ≥ −6.
    ensure!(
        log_det.iter().all(|&v| v >= -6.0 - 1e-12),
        "log|det| below −6: {log_det:?}"
    );
    Ok(())
}

device_test!(planar_flow_at_initialisation_is_the_diagonal_posterior);
fn planar_flow_at_initialisation_is_the_diagonal_posterior() -> Result<()> {
    let store = ParamStore::new(12);
    let vb = store.var_builder(DType::F64, &dev());
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(4, &[5], 3), vb.pp("enc"))?;
    let flow = PlanarFlow::new(&PlanarFlowConfig::new(3, 4), vb.pp("flow"))?;
    let flow_enc = FlowEncoder::new(enc.clone(), flow);
    let xs = tensor(&PSEUDO, &[3, 4])?;
    let (base, q) = (
        enc.encode(&xs)?,
        candle_vae::EncoderT::encode_t(&flow_enc, &xs, false)?,
    );
    let eps = NoiseSource::new(2).standard_normal((7, 3, 3), DType::F64, &dev())?;
    let (z_base, z_flow) = (base.rsample_with(&eps)?, q.rsample_with(&eps)?);
    ensure!(
        values(&z_base)? == values(&z_flow)?,
        "z differs at the identity initialisation"
    );
    let (lp_base, lp_flow) = (
        base.log_prob(&z_base)?,
        q.log_prob_of_sample(&eps, &z_flow)?,
    );
    ensure!(
        values(&lp_base)? == values(&lp_flow)?,
        "log q differs at the identity initialisation"
    );
    // An arbitrary z has no density without an inverse: a clear error.
    let err = q
        .log_prob(&z_flow)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(err.contains("no closed-form inverse"), "{err}");
    Ok(())
}
