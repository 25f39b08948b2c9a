//! Observation models p(x|z): how the decoder's output scores the data.
//!
//! [`Likelihood`] is the trait every observation model implements; the crate's own are
//! [`StandardLikelihood`] (Bernoulli, continuous Bernoulli, Gaussian: the image models),
//! the count models [`Poisson`], [`NegativeBinomial`] and [`ZeroInflatedNegativeBinomial`]
//! (single-cell RNA-seq), and [`DiscretizedLogistic`] for 8-bit images. A user's own
//! observation model implements the same trait and works everywhere these do.
//!
//! # Parameter layout
//! For data `x` of shape `(N, C, …)` (or `(N, D)`), the decoder produces parameters of
//! shape `(N, P·C, …)`, where `P` = [`Likelihood::params_per_element`]: the first `C`
//! channels are the first parameter of every element, the next `C` the second, and so on.
//! A leading sample axis is allowed, `(K, N, P·C, …)`, for K posterior samples per
//! example. [`split_params`] checks this layout and splits it.

mod count;
mod logistic;
mod standard;

use candle_core::{D, Tensor};

use crate::error::Error;
use crate::noise::NoiseSource;

pub use count::{Dispersion, NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial};
pub use logistic::DiscretizedLogistic;
pub use standard::{GaussianMean, GaussianVariance, StandardLikelihood};

/// An observation model p(x|z), parameterised by the decoder's output.
///
/// Implement it for a new kind of data; [`Vae`](crate::Vae), [`ElboLoss`](crate::ElboLoss),
/// the estimators and the trainer use only these methods.
///
/// # Shapes
/// See the [module docs](self) for the parameter layout `(…, P·C, …)`.
pub trait Likelihood: 'static {
    /// P, the number of parameters the decoder produces per data element.
    fn params_per_element(&self) -> usize;

    /// A short name, for logs and checkpoint metadata.
    fn name(&self) -> &str;

    /// log p(x|z), summed over every element of each example.
    ///
    /// # Shapes
    /// `x`: `(N, C, …)`; `params`: `(N, P·C, …)` → `(N,)`, or `(K, N, P·C, …)` → `(K, N)`.
    ///
    /// # Errors
    /// [`Error::Shape`] (inside candle's error) if `params` does not fit `x`.
    fn log_prob(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor>;

    /// E[x|z], what reconstructions and samples show.
    ///
    /// # Shapes
    /// `(…, P·C, …)` → `(…, C, …)`; `channel_axis` is the axis that holds `P·C` (1, or 2
    /// with a sample axis).
    ///
    /// # Errors
    /// If `params` has no axis `channel_axis` or it is not divisible by P.
    fn mean(&self, params: &Tensor, channel_axis: usize) -> candle_core::Result<Tensor>;

    /// A draw x ~ p(x|z) for every element, noise from `noise`.
    ///
    /// # Shapes
    /// As [`mean`](Self::mean).
    ///
    /// # Errors
    /// As [`mean`](Self::mean).
    fn sample(
        &self,
        params: &Tensor,
        channel_axis: usize,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor>;
}

/// Checks `params` against data `x` for a likelihood with `groups` = P parameters per
/// element and returns the P parameter tensors, each of the data's shape (with the
/// sample axis, if any).
///
/// # Shapes
/// `x`: `(N, C, …)`; `params`: `(N, P·C, …)` or `(K, N, P·C, …)` → P tensors of `(N, C, …)`
/// or `(K, N, C, …)`.
///
/// # Errors
/// [`Error::Shape`] naming `name` if the layout does not fit, including data of rank < 2.
pub fn split_params(
    name: &str,
    x: &Tensor,
    params: &Tensor,
    groups: usize,
) -> candle_core::Result<Vec<Tensor>> {
    let xd = x.dims();
    let pd = params.dims();
    if xd.len() < 2 {
        return Err(Error::shape(
            "Likelihood::log_prob",
            format!("data of shape (N, C, …) with rank ≥ 2 for the {name} likelihood"),
            xd,
        )
        .into());
    }
    let sample_axes = pd.len().wrapping_sub(xd.len());
    let fits = sample_axes <= 1
        && pd[sample_axes] == xd[0]
        && pd[sample_axes + 1] == groups * xd[1]
        && pd[sample_axes + 2..] == xd[2..];
    if !fits {
        let mut expected = xd.to_vec();
        expected[1] *= groups;
        return Err(Error::shape(
            "Likelihood::log_prob",
            format!(
                "{name} parameters of shape {expected:?} or (K, {expected:?}) for data of shape {xd:?}"
            ),
            pd,
        )
        .into());
    }
    if groups == 1 {
        return Ok(vec![params.clone()]);
    }
    let axis = sample_axes + 1;
    (0..groups)
        .map(|g| params.narrow(axis, g * xd[1], xd[1]))
        .collect()
}

/// Splits `params` on `channel_axis` into its P groups (for [`Likelihood::mean`] and
/// [`Likelihood::sample`], where no data is at hand).
///
/// # Errors
/// If `params` has no axis `channel_axis` or it is not divisible by `groups`.
pub fn split_channels(
    params: &Tensor,
    channel_axis: usize,
    groups: usize,
) -> candle_core::Result<Vec<Tensor>> {
    let channels = params.dim(channel_axis)?;
    if groups == 0 || channels % groups != 0 {
        return Err(Error::shape(
            "Likelihood::mean",
            format!("a multiple of {groups} channels on axis {channel_axis}"),
            params.dims(),
        )
        .into());
    }
    let width = channels / groups;
    (0..groups)
        .map(|g| params.narrow(channel_axis, g * width, width))
        .collect()
}

/// Sums per-element log-probabilities over every axis of an example: `(…, N, C, …)` →
/// `(…, N)`, for data of rank `data_rank`.
///
/// # Errors
/// Only candle's own.
pub fn sum_per_example(per_element: &Tensor, data_rank: usize) -> candle_core::Result<Tensor> {
    let batch_axes = per_element.rank() + 1 - data_rank;
    per_element.flatten_from(batch_axes)?.sum(D::Minus1)
}
