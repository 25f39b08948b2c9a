//! Count likelihoods for single-cell RNA-seq and other count data: Poisson, negative
//! binomial and zero-inflated negative binomial, in the parameterisation of scVI
//! (Lopez et al. 2018, "Deep generative modeling for single-cell transcriptomics",
//! Nature Methods 15:1053).
//!
//! Every log-density is written with the stable forms below, so it is finite (and its
//! gradient is finite) for counts from 0 to well beyond 10⁵, log-means and
//! log-dispersions anywhere in ±60 in `f32` (tested; wider in `f64`), and zero-inflation logits of
//! any finite size:
//!
//! * **log-gamma.** Candle has no `lgamma` op, so [`lgamma`] is built from candle ops:
//!   Stirling's series ln Γ(w) = (w − ½) ln w − w + ½ ln 2π + 1/(12w) − 1/(360w³) +
//!   1/(1260w⁵) − 1/(1680w⁷) + 1/(1188w⁹) (Abramowitz & Stegun 6.1.41), used for w ≥ 8
//!   where its truncation error is below 691/(360360·8¹¹) ≈ 2·10⁻¹³, and for 0 < z < 8 the recurrence
//!   ln Γ(z) = ln Γ(z + 8) − ln[z(z + 1)…(z + 7)].
//! * **ln Γ(x + θ) − ln Γ(θ).** For θ ≥ 10 it is the difference of the two Stirling
//!   series, x ln(x + θ) + (θ − ½) log1p(x/θ) − x + S(x + θ) − S(θ), which does not
//!   cancel catastrophically when θ ≫ x (in `f32`, ln Γ(10⁸) alone has an error of ~100
//!   nats); below it, ln Γ(x + θ) − ln Γ(θ + 1) + ln θ, with ln θ taken from the decoder's
//!   log θ so that a θ that underflows to 0 stays finite; x = 0 gives exactly 0.
//! * **θ ln(1 + μ/θ)**, the NB's log-probability of a zero, is μ · log1p(r)/r with
//!   r = μ/θ when μ ≤ θ (a plain θ·softplus(ln μ − ln θ) is 0 in `f32` once
//!   μ/θ < 10⁻⁸, whatever μ), and θ·softplus(ln μ − ln θ) otherwise.
//! * log1p(u) uses Goldberg's identity log1p(u) = ln(w)·u/(w − 1), w = 1 + u (exact to
//!   a few ulps in IEEE arithmetic; Goldberg 1991, "What every computer scientist should
//!   know about floating-point arithmetic", Theorem 4), and softplus is
//!   relu(a) + log1p(e^{−|a|}).

mod kernel;
mod ops;
mod sample;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{Likelihood, split_channels, split_params, sum_per_example};
use crate::error::Error;
use crate::noise::NoiseSource;
use kernel::{CountKind, kernel_log_prob, use_kernel};
use ops::{broadcast_all, lgamma, nb_log_prob, zinb_log_prob};
pub(crate) use ops::{log1p, softplus};
use sample::{draw_nb, draw_poisson, host_values, tensor_like};

/// Below this argument [`lgamma`] shifts by the recurrence before Stirling's series.
const STIRLING_FROM: f64 = 8.0;
/// From this θ on, ln Γ(x + θ) − ln Γ(θ) is the difference of two Stirling series.
const STIRLING_DIFF_FROM: f64 = 10.0;

// ---------------------------------------------------------------------------------------
// The likelihoods.

/// Where the NB's inverse dispersion θ comes from.
#[derive(Debug, Clone)]
pub enum Dispersion {
    /// The decoder predicts log θ for every element (scVI's `dispersion="gene-cell"`).
    PerElement,
    /// One learned log θ per gene (feature), shared by all cells: a parameter of shape
    /// `(C,)` (scVI's `dispersion="gene"`, its default).
    PerGene(Tensor),
}

impl Dispersion {
    /// A learned log θ per gene, created (initialised to `init_log_theta`) as the parameter
    /// `log_theta` of shape `(genes,)` under `vb`.
    ///
    /// # Errors
    /// If the parameter cannot be created (e.g. it exists in `vb` with another shape).
    pub fn per_gene(genes: usize, init_log_theta: f64, vb: VarBuilder) -> crate::Result<Self> {
        crate::error::ensure(
            genes > 0,
            "Dispersion::per_gene",
            "genes",
            genes,
            "must be > 0",
        )?;
        let log_theta =
            vb.get_with_hints(genes, "log_theta", candle_nn::Init::Const(init_log_theta))?;
        Ok(Dispersion::PerGene(log_theta))
    }

    /// Parameters this dispersion takes from the decoder per element (1 or 0).
    fn decoder_params(&self) -> usize {
        match self {
            Dispersion::PerElement => 1,
            Dispersion::PerGene(_) => 0,
        }
    }

    /// The per-gene log θ, if learned per gene.
    fn log_theta(&self) -> Option<&Tensor> {
        match self {
            Dispersion::PerElement => None,
            Dispersion::PerGene(t) => Some(t),
        }
    }
}

/// The per-gene log θ, checked against data of shape `(N, C)`.
fn gene_log_theta<'a>(
    name: &str,
    log_theta: &'a Tensor,
    x_dims: &[usize],
) -> candle_core::Result<&'a Tensor> {
    if x_dims.len() != 2 || log_theta.dims() != [x_dims[1]] {
        return Err(Error::shape(
            "Likelihood::log_prob",
            format!(
                "data of shape (N, {}) for the {name} likelihood with one θ per gene",
                log_theta.dims().first().copied().unwrap_or(0)
            ),
            x_dims,
        )
        .into());
    }
    Ok(log_theta)
}

/// Poisson counts: p(x|z) = Poisson(x; μ) with μ = e^{m}, m the decoder output (P = 1).
///
/// # Math
/// ln p(x) = x·m − eᵐ − ln Γ(x + 1), summed over the elements of an example; E\[x\] = μ,
/// Var\[x\] = μ. ln Γ is computed as in [`NegativeBinomial`] (see its `# Numerics`).
///
/// # Shapes
/// `x`: `(N, C, …)` counts (non-negative; integers for a probability mass); parameters
/// `(N, C, …)` or `(K, N, C, …)` log-rates.
///
/// # Errors
/// [`Error::Shape`] if the parameters do not fit the data.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use candle_vae::{Likelihood, Poisson};
/// let x = Tensor::new(&[[0f64, 3.0]], &Device::Cpu)?;
/// let log_rate = Tensor::new(&[[0f64, 2f64.ln()]], &Device::Cpu)?;
/// let lp = Poisson.log_prob(&x, &log_rate)?.to_vec1::<f64>()?[0];
/// // ln Poisson(0; 1) + ln Poisson(3; 2) = −1 + (3 ln 2 − 2 − ln 6)
/// assert!((lp - (-1.0 + 3.0 * 2f64.ln() - 2.0 - 6f64.ln())).abs() < 1e-9);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Poisson;

impl Poisson {
    /// ln p(x) for every element.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, C, …)` → `(N, C, …)`, `(K, N, C, …)` → `(K, N, C, …)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `params` does not fit `x`.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let groups = split_params(self.name(), x, params, 1)?;
        let m = &groups[0];
        if use_kernel(m) {
            let all = broadcast_all(&[x, m])?;
            return kernel_log_prob(CountKind::Poisson, &all[0], &[&all[1]]);
        }
        let log_x_fact = lgamma(&x.affine(1.0, 1.0)?)?;
        (m.broadcast_mul(x)? - m.exp()?)?.broadcast_sub(&log_x_fact)
    }
}

impl Likelihood for Poisson {
    fn params_per_element(&self) -> usize {
        1
    }

    fn name(&self) -> &str {
        "poisson"
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// μ = eᵐ.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        split_channels(params, channel_axis, 1)?[0].exp()
    }

    /// x ~ Poisson(eᵐ), drawn on the host with `rand_distr`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (in candle's error) if a rate is not finite or above
    /// `rand_distr`'s limit 1.844·10¹⁹.
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let mu = self.mean(params, channel_axis)?;
        let rates = host_values(&mu, &[&mu])?;
        let values = rates[0]
            .iter()
            .map(|&rate| draw_poisson(rate, noise, "Poisson::sample"))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        tensor_like(values, &mu)
    }
}

/// Negative binomial counts with mean μ and inverse dispersion θ, as in scVI (Lopez et al.
/// 2018): the decoder outputs m = ln μ and, with [`Dispersion::PerElement`], t = ln θ
/// (P = 2, in that order); with [`Dispersion::PerGene`] θ is a learned `(C,)` parameter
/// and the decoder outputs only ln μ (P = 1).
///
/// # Math
/// NB(x; μ, θ) = Γ(x + θ) / (Γ(θ) x!) · (θ/(θ + μ))^θ · (μ/(θ + μ))^x (Hilbe 2011,
/// "Negative Binomial Regression", NB2), so
///
/// ln p = ln Γ(x + θ) − ln Γ(θ) − ln Γ(x + 1) − θ ln(1 + μ/θ) − x·softplus(t − m),
///
/// with E\[x\] = μ and Var\[x\] = μ + μ²/θ (θ → ∞ is the Poisson).
///
/// # Numerics
/// Finite, with finite gradients, for counts from 0 to beyond 10⁵ and ln μ, ln θ anywhere
/// in ±60 (`f32`, tested; wider in `f64`):
/// * ln Γ: candle has no `lgamma` op, so it is Stirling's series with five correction
///   terms (Abramowitz & Stegun 6.1.41) for z ≥ 8, and ln Γ(z + 8) − ln ∏_{k<8}(z + k)
///   below: error < 10⁻¹² in `f64`.
/// * ln Γ(x + θ) − ln Γ(θ): for θ ≥ 10 the difference of the two series,
///   x ln(x + θ) + (θ − ½) log1p(x/θ) − x + S(x + θ) − S(θ), which does not cancel when
///   θ ≫ x; below, ln Γ(x + θ) − ln Γ(θ + 1) + ln θ with ln θ the decoder's output; 0 at
///   x = 0.
/// * θ ln(1 + μ/θ) = μ·log1p(r)/r with r = μ/θ when μ ≤ θ, else θ·softplus(ln μ − ln θ);
///   log1p by Goldberg's identity, softplus as relu(a) + log1p(e^{−|a|}).
///
/// On the CPU (`f32`, `f64`) an element-wise kernel computes the same forms in `f64` with
/// closed-form gradients (∂/∂ln μ = θ(x − μ)/(θ + μ); ∂/∂ln θ through a digamma difference
/// that does not cancel either), about ten times faster than the candle ops, which run
/// everywhere else and under
/// [`with_fused_kernels`](crate::fused::with_fused_kernels)`(FusedKernels::NONE, …)`.
///
/// # Shapes
/// `x`: `(N, C, …)` counts (`(N, C)` with a per-gene θ); parameters `(N, P·C, …)` or
/// `(K, N, P·C, …)`.
///
/// # Errors
/// [`Error::Shape`] if the parameters do not fit the data, or a per-gene θ does not have
/// one entry per column of `(N, C)` data.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use candle_vae::{Likelihood, NegativeBinomial};
/// // μ = 2, θ = 1 (a geometric distribution): NB(0) = 1/3.
/// let x = Tensor::new(&[[0f64]], &Device::Cpu)?;
/// let params = Tensor::new(&[[2f64.ln(), 0.0]], &Device::Cpu)?;
/// let lp = NegativeBinomial::new().log_prob(&x, &params)?.to_vec1::<f64>()?[0];
/// assert!((lp - (1.0f64 / 3.0).ln()).abs() < 1e-12);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NegativeBinomial {
    dispersion: Dispersion,
}

impl Default for NegativeBinomial {
    /// [`NegativeBinomial::new`]: θ per element from the decoder.
    fn default() -> Self {
        Self::new()
    }
}

impl NegativeBinomial {
    /// The decoder predicts ln μ and ln θ for every element (P = 2).
    pub fn new() -> Self {
        Self {
            dispersion: Dispersion::PerElement,
        }
    }

    /// With the given dispersion (e.g. [`Dispersion::per_gene`]).
    pub fn with_dispersion(dispersion: Dispersion) -> Self {
        Self { dispersion }
    }

    /// The learned per-gene ln θ, `(C,)`, if the dispersion is [`Dispersion::PerGene`].
    pub fn gene_log_theta(&self) -> Option<&Tensor> {
        self.dispersion.log_theta()
    }

    /// ln p(x) for every element.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, P·C, …)` → `(N, C, …)`, `(K, N, P·C, …)` →
    /// `(K, N, C, …)`.
    ///
    /// # Errors
    /// As the type's.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let groups = split_params(self.name(), x, params, self.params_per_element())?;
        match &self.dispersion {
            Dispersion::PerElement => nb_log_prob(x, &groups[0], &groups[1]),
            Dispersion::PerGene(t) => {
                nb_log_prob(x, &groups[0], gene_log_theta(self.name(), t, x.dims())?)
            }
        }
    }
}

impl Likelihood for NegativeBinomial {
    /// 2 with θ per element, 1 with θ per gene.
    fn params_per_element(&self) -> usize {
        1 + self.dispersion.decoder_params()
    }

    fn name(&self) -> &str {
        match self.dispersion {
            Dispersion::PerElement => "negative-binomial",
            Dispersion::PerGene(_) => "negative-binomial-gene",
        }
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// μ = eᵐ.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        split_channels(params, channel_axis, self.params_per_element())?[0].exp()
    }

    /// x ~ NB(μ, θ) as the Gamma–Poisson mixture, on the host with `rand_distr`. With a
    /// per-gene θ, `channel_axis` must be the last axis.
    ///
    /// # Errors
    /// As [`Likelihood::mean`]; [`Error::InvalidConfig`] (in candle's error) for a θ or
    /// rate that `rand_distr` rejects (not finite, or a rate above 1.844·10¹⁹).
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let m = &groups[0];
        let t = match &self.dispersion {
            Dispersion::PerElement => &groups[1],
            Dispersion::PerGene(t) => t,
        };
        let host = host_values(m, &[m, t])?;
        let values = host[0]
            .iter()
            .zip(&host[1])
            .map(|(&m, &t)| draw_nb(m.exp(), t.exp(), noise, "NegativeBinomial::sample"))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        tensor_like(values, m)
    }
}

/// Zero-inflated negative binomial (scVI, Lopez et al. 2018): with probability π a
/// structural zero, else NB(μ, θ). The decoder outputs ln μ, ln θ and the logit of π
/// (P = 3, in that order), or ln μ and logit π with a [`Dispersion::PerGene`] θ (P = 2).
///
/// # Math
/// With p = logit π and NB as in [`NegativeBinomial`], in the log-sum-exp form of scVI's
/// `log_zinb_positive`:
///
/// * x = 0: ln(π + (1 − π) NB(0)) = softplus(−p + ln NB(0)) − softplus(−p), with
///   ln NB(0) = −θ ln(1 + μ/θ);
/// * x > 0: ln(1 − π) + ln NB(x) = −softplus(p) + ln NB(x).
///
/// E\[x\] = (1 − π) μ; Var\[x\] = (1 − π) μ (1 + μ/θ + π μ). Numerics as in
/// [`NegativeBinomial`].
///
/// # Shapes
/// As [`NegativeBinomial`], with P = 3 (or 2).
///
/// # Errors
/// As [`NegativeBinomial`].
#[derive(Debug, Clone)]
pub struct ZeroInflatedNegativeBinomial {
    dispersion: Dispersion,
}

impl Default for ZeroInflatedNegativeBinomial {
    /// [`ZeroInflatedNegativeBinomial::new`]: θ per element from the decoder.
    fn default() -> Self {
        Self::new()
    }
}

impl ZeroInflatedNegativeBinomial {
    /// The decoder predicts ln μ, ln θ and logit π for every element (P = 3).
    pub fn new() -> Self {
        Self {
            dispersion: Dispersion::PerElement,
        }
    }

    /// With the given dispersion (e.g. [`Dispersion::per_gene`]: P = 2).
    pub fn with_dispersion(dispersion: Dispersion) -> Self {
        Self { dispersion }
    }

    /// The learned per-gene ln θ, `(C,)`, if the dispersion is [`Dispersion::PerGene`].
    pub fn gene_log_theta(&self) -> Option<&Tensor> {
        self.dispersion.log_theta()
    }

    /// (ln μ, ln θ, logit π) from the parameter groups, ln θ per gene if so.
    fn parts<'a>(&'a self, groups: &'a [Tensor]) -> (&'a Tensor, &'a Tensor, &'a Tensor) {
        match &self.dispersion {
            Dispersion::PerElement => (&groups[0], &groups[1], &groups[2]),
            Dispersion::PerGene(t) => (&groups[0], t, &groups[1]),
        }
    }

    /// ln p(x) for every element.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, P·C, …)` → `(N, C, …)`, `(K, N, P·C, …)` →
    /// `(K, N, C, …)`.
    ///
    /// # Errors
    /// As the type's.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let groups = split_params(self.name(), x, params, self.params_per_element())?;
        let (m, t, p) = self.parts(&groups);
        if let Dispersion::PerGene(t) = &self.dispersion {
            gene_log_theta(self.name(), t, x.dims())?;
        }
        zinb_log_prob(x, m, t, p)
    }
}

impl Likelihood for ZeroInflatedNegativeBinomial {
    /// 3 with θ per element, 2 with θ per gene.
    fn params_per_element(&self) -> usize {
        2 + self.dispersion.decoder_params()
    }

    fn name(&self) -> &str {
        match self.dispersion {
            Dispersion::PerElement => "zinb",
            Dispersion::PerGene(_) => "zinb-gene",
        }
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// (1 − π) μ = σ(−p)·eᵐ.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let (m, _, p) = self.parts(&groups);
        m.exp()? * crate::ops::sigmoid(&p.neg()?)?
    }

    /// 0 with probability π, else x ~ NB(μ, θ), on the host with `rand_distr`.
    ///
    /// # Errors
    /// As [`NegativeBinomial`]'s `sample`.
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, self.params_per_element())?;
        let (m, t, p) = self.parts(&groups);
        let pi = crate::ops::sigmoid(p)?;
        let host = host_values(m, &[m, t, &pi])?;
        let mut values = Vec::with_capacity(host[0].len());
        for ((&m, &t), &pi) in host[0].iter().zip(&host[1]).zip(&host[2]) {
            let u: f64 = rand::Rng::random(noise.rng());
            values.push(if u < pi {
                0.0
            } else {
                draw_nb(
                    m.exp(),
                    t.exp(),
                    noise,
                    "ZeroInflatedNegativeBinomial::sample",
                )?
            });
        }
        tensor_like(values, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// ln Γ against closed forms (Γ(½) = √π, Γ(n) = (n − 1)!) and at
    /// 7.9, 100.5 and 1e-8 against SciPy's `gammaln`
    /// (`python -c "from scipy.special import gammaln; print(gammaln(7.9), gammaln(100.5), gammaln(1e-8))"`).
    #[test]
    fn lgamma_matches_closed_forms() -> candle_core::Result<()> {
        let z = Tensor::new(
            &[0.5f64, 1.0, 2.0, 5.0, 7.9, 8.0, 100.5, 1e-8],
            &Device::Cpu,
        )?;
        let got = lgamma(&z)?.to_vec1::<f64>()?;
        let want = [
            0.5 * std::f64::consts::PI.ln(),
            0.0,
            0.0,
            24f64.ln(),
            // scipy.special.gammaln(7.9)
            8.324_265_868_008_81,
            5040f64.ln(),
            // scipy.special.gammaln(100.5)
            361.435_540_467_777_57,
            // scipy.special.gammaln(1e-8)
            18.420_680_738_180_21,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9 * w.abs().max(1.0), "lgamma {g} vs {w}");
        }
        Ok(())
    }

    /// log1p and softplus keep their precision where the naive forms round to 0.
    #[test]
    fn log1p_and_softplus_are_accurate_when_tiny() -> candle_core::Result<()> {
        let u = Tensor::new(&[1e-10f32, 1e-3, 0.0, 3.0], &Device::Cpu)?;
        let got = log1p(&u)?.to_vec1::<f32>()?;
        let want = [1e-10f64, 1e-3f64.ln_1p(), 0.0, 3f64.ln_1p()];
        for (g, w) in got.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1e-30),
                "{g} vs {w}"
            );
        }
        let a = Tensor::new(&[-30f32], &Device::Cpu)?;
        let sp = f64::from(softplus(&a)?.to_vec1::<f32>()?[0]);
        assert!(
            (sp / (-30f64).exp() - 1.0).abs() < 1e-5,
            "softplus(-30) = {sp}"
        );
        Ok(())
    }
}
