pub mod breakdown;
pub mod common;
pub mod conv;
pub mod elbo;
pub mod encode_decode;
pub mod nll;
pub mod train_step;
