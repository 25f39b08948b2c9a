//! The discretised logistic likelihood for 8-bit images (Kingma et al. 2016, "Improved
//! variational inference with inverse autoregressive flow"; Salimans et al. 2017,
//! "PixelCNN++"), one logistic component per pixel.

use candle_core::Tensor;

use super::count::{log1p, softplus};
use super::{Likelihood, split_channels, split_params, sum_per_example};
use crate::noise::NoiseSource;

/// Levels of an 8-bit pixel.
const LEVELS: f64 = 256.0;
/// The grid step 1/255 of pixels k/255.
const STEP: f64 = 1.0 / (LEVELS - 1.0);

/// A discretised logistic per pixel: the decoder outputs the mean μ and the log-scale s of
/// a logistic (P = 2, in that order), and a pixel x = k/255 (k = 0…255) gets the logistic
/// mass of its bin [x − 1/510, x + 1/510], the two edge bins extended to −∞ and +∞, as
/// in PixelCNN++ (there on [−1, 1], here on [0, 1]).
///
/// # Math
/// With a = (x − μ + 1/510)·e^{−s} and b = (x − μ − 1/510)·e^{−s} (so a − b = e^{−s}/255):
///
/// * x = 0: ln σ(a) = −softplus(−a);
/// * x = 1: ln(1 − σ(b)) = −softplus(b);
/// * otherwise ln(σ(a) − σ(b)), computed through the identity
///   σ(a) − σ(b) = σ(a)·σ(−b)·(1 − e^{−(a − b)}) as
///   −softplus(−a) − softplus(b) + ln(1 − e^{−(a−b)}), the last term as
///   ln(−expm1(−δ)) for δ ≤ ln 2 and log1p(−e^{−δ}) above (Mächler 2012, "Accurately
///   computing log(1 − exp(−|a|))").
///
/// The difference of CDFs is never formed in probability space, so it never underflows
/// or cancels: PixelCNN++'s fallback to the mid-bin density (used there when the CDF
/// difference drops below 10⁻⁵) is not needed, and the result stays exact in the far
/// tails and for very small scales. The 256 bin masses sum to 1.
///
/// # Shapes
/// `x`: `(N, C, …)` in [0, 1] on the grid k/255 (an off-grid value is scored by the bin
/// centred on it); parameters `(N, 2·C, …)` or `(K, N, 2·C, …)`.
///
/// # Errors
/// [`Error::Shape`](crate::Error::Shape) (in candle's error) if the parameters do not fit
/// the data.
///
/// ```
/// # use candle_core::{Device, Tensor};
/// # use candle_vae::{DiscretizedLogistic, Likelihood};
/// // By symmetry the two edge bins of a logistic centred at ½ (scale e⁻⁵) hold the same
/// // mass, σ(−(½ − 1/510)·e⁵).
/// let x = Tensor::new(&[[0f64, 1.0]], &Device::Cpu)?;
/// let params = Tensor::new(&[[0.5f64, 0.5, -5.0, -5.0]], &Device::Cpu)?;
/// let lp = DiscretizedLogistic.log_prob(&x, &params)?.to_vec1::<f64>()?[0];
/// let half = 1.0 / (1.0 + ((0.5 - 1.0 / 510.0) / (-5f64).exp()).exp());
/// assert!((lp - 2.0 * half.ln()).abs() < 1e-9);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscretizedLogistic;

/// e^y − 1, accurate for small |y| (Kahan's trick: (u − 1)·y / ln u with u = eʸ, and y
/// itself where u rounds to 1). Both branches are finite, so the gradient is too.
fn expm1(y: &Tensor) -> candle_core::Result<Tensor> {
    let u = y.exp()?;
    let u_minus_1 = u.affine(1.0, -1.0)?;
    let exact = u_minus_1.eq(0.0)?;
    let log_u = u.log()?;
    let safe_log = exact.where_cond(&u.ones_like()?, &log_u)?;
    let general = ((u_minus_1 * y)? / safe_log)?;
    exact.where_cond(y, &general)
}

/// ln(1 − e^{−δ}) for δ > 0 (Mächler 2012).
fn log1mexp(delta: &Tensor) -> candle_core::Result<Tensor> {
    let small = delta.le(std::f64::consts::LN_2)?;
    let ln2 = (delta.ones_like()? * std::f64::consts::LN_2)?;
    let d_small = small.where_cond(delta, &ln2)?;
    let d_large = small.where_cond(&ln2, delta)?;
    let near = expm1(&d_small.neg()?)?.neg()?.log()?;
    let far = log1p(&d_large.neg()?.exp()?.neg()?)?;
    small.where_cond(&near, &far)
}

impl DiscretizedLogistic {
    /// ln p(x) for every pixel.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, 2·C, …)` → `(N, C, …)`, `(K, N, 2·C, …)` →
    /// `(K, N, C, …)`.
    ///
    /// # Errors
    /// As the type's.
    pub fn log_prob_elements(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        let groups = split_params(self.name(), x, params, 2)?;
        let (mu, log_scale) = (&groups[0], &groups[1]);
        let inv_scale = log_scale.neg()?.exp()?;
        let centred = mu.broadcast_sub(x)?.neg()?.contiguous()?;
        let a = ((&centred + 0.5 * STEP)? * &inv_scale)?;
        let b = ((&centred - 0.5 * STEP)? * &inv_scale)?;
        let log_cdf_a = softplus(&a.neg()?)?.neg()?;
        let log_sf_b = softplus(&b)?.neg()?;
        let delta = (&inv_scale * STEP)?;
        let interior = ((&log_cdf_a + &log_sf_b)? + log1mexp(&delta)?)?;
        let xb = x.broadcast_as(a.shape())?.contiguous()?;
        let first = xb.lt(0.5 * STEP)?;
        let last = xb.gt(1.0 - 0.5 * STEP)?;
        first.where_cond(&log_cdf_a, &last.where_cond(&log_sf_b, &interior)?)
    }
}

impl Likelihood for DiscretizedLogistic {
    fn params_per_element(&self) -> usize {
        2
    }

    fn name(&self) -> &str {
        "discretized-logistic"
    }

    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        sum_per_example(&self.log_prob_elements(x, params)?, x.rank())
    }

    /// The location μ clamped to [0, 1]: what reconstructions show. (The exact mean of
    /// the discretised, edge-clipped distribution differs from it by the mass piled on
    /// the edge bins.)
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor> {
        split_channels(params, channel_axis, 2)?[0].clamp(0.0, 1.0)
    }

    /// A logistic draw μ + e^s·(ln u − ln(1 − u)), u ~ U(0, 1), rounded to the grid k/255
    /// and clamped to [0, 1] — exactly a draw of the discretised distribution.
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let groups = split_channels(params, channel_axis, 2)?;
        let (mu, log_scale) = (&groups[0], &groups[1]);
        // u in (0, 1): the draws are in [0, 1), so shift by half a step of 2⁻²⁴.
        let u = noise
            .uniform(mu.shape(), mu.dtype(), mu.device())?
            .affine(1.0 - 2f64.powi(-23), 2f64.powi(-24))?;
        let logit = (u.log()? - u.affine(-1.0, 1.0)?.log()?)?;
        let draw = (mu + (log_scale.exp()? * logit)?)?;
        (draw * (LEVELS - 1.0))?
            .round()?
            .clamp(0.0, LEVELS - 1.0)?
            .affine(STEP, 0.0)
    }
}
