//! The probability model: posterior families, priors and likelihoods, and the traits a user
//! implements to add their own.
//!
//! * [`component`]: the interfaces a [`Vae`](crate::Vae) composes: an encoder x → q(z|x)
//!   (an amortised posterior) and a decoder z → parameters of p(x|z); [`Dims`](crate::Dims).
//! * [`reparameterize`]: the [`Reparameterize`](crate::Reparameterize) trait of a posterior
//!   family q(z|x), z = g(ε).
//! * [`distribution`]: the [`DiagonalGaussian`](crate::DiagonalGaussian) family.
//! * [`flow`]: planar normalising flows on top of any Gaussian encoder.
//! * [`prior`]: the [`Prior`](crate::Prior) trait and N(0, I), Gaussian, mixture and
//!   VampPrior priors.
//! * [`likelihood`]: the [`Likelihood`](crate::Likelihood) trait, the standard image
//!   likelihoods and those for counts.
//!
//! Randomness comes from the crate-level [`noise`](crate::noise) module.

pub mod component;
pub mod distribution;
pub mod flow;
pub mod likelihood;
pub mod prior;
pub mod reparameterize;
