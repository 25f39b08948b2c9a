//! What a model is scored by: the ELBO loss for training, and the estimators for honest
//! evaluation.
//!
//! * [`loss`]: [`ElboLoss`](crate::ElboLoss) (β, free bits, KL warm-up; analytic or
//!   Monte-Carlo KL).
//! * [`estimate`]: the IWAE bound, the importance-sampled log-likelihood and active units.

pub mod estimate;
pub mod loss;
