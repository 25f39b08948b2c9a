//! Host-side sampling with `rand_distr`: Poisson and the Gamma–Poisson NB.

use candle_core::{DType, Tensor};
use rand_distr::Distribution;

use crate::error::Error;
use crate::noise::NoiseSource;

/// The parameter tensors flattened to `f64` on the host, all broadcast to `shape_of`'s
/// shape.
pub(super) fn host_values(
    shape_of: &Tensor,
    tensors: &[&Tensor],
) -> candle_core::Result<Vec<Vec<f64>>> {
    tensors
        .iter()
        .map(|t| {
            t.broadcast_as(shape_of.shape())?
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()
        })
        .collect()
}

/// A tensor of `values` in the shape, dtype and device of `like`.
pub(super) fn tensor_like(values: Vec<f64>, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, like.shape(), &candle_core::Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())
}

/// x ~ Poisson(λ) on the host; λ = 0 gives 0.
pub(super) fn draw_poisson(
    rate: f64,
    noise: &mut NoiseSource,
    op: &'static str,
) -> candle_core::Result<f64> {
    if rate == 0.0 {
        return Ok(0.0);
    }
    let dist = rand_distr::Poisson::new(rate).map_err(|_| {
        Error::config(
            op,
            "rate",
            rate,
            "must be finite, ≥ 0 and ≤ 1.844e19 (rand_distr's Poisson limit)",
        )
    })?;
    Ok(dist.sample(noise.rng()))
}

/// x ~ NB(μ, θ) on the host as the Gamma–Poisson mixture λ ~ Gamma(θ, μ/θ), x ~ Poisson(λ)
/// (θ = ∞ is the Poisson).
pub(super) fn draw_nb(
    mu: f64,
    theta: f64,
    noise: &mut NoiseSource,
    op: &'static str,
) -> candle_core::Result<f64> {
    if mu == 0.0 {
        return Ok(0.0);
    }
    let rate = if theta.is_infinite() {
        mu
    } else {
        let gamma = rand_distr::Gamma::new(theta, mu / theta).map_err(|_| {
            Error::config(
                op,
                "theta",
                theta,
                "must be finite and > 0 (with μ/θ finite and > 0)",
            )
        })?;
        gamma.sample(noise.rng())
    };
    draw_poisson(rate, noise, op)
}
