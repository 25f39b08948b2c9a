//! The networks: MLP and convolutional encoders and decoders built from PyTorch-initialised
//! layers, implementing the [`Encoder`](crate::Encoder)/[`Decoder`](crate::Decoder)
//! interfaces of [`component`](crate::component).
//!
//! * [`architecture`]: the [`Architecture`](crate::Architecture) trait of networks that can
//!   be rebuilt from a description stored in a model file.
//! * [`layers`]: linear and (transposed) convolution layers initialised as PyTorch does.
//! * [`mlp`]: [`MlpEncoder`](crate::MlpEncoder) and [`MlpDecoder`](crate::MlpDecoder).
//! * [`conv`]: [`ConvEncoder`](crate::ConvEncoder) and [`ConvDecoder`](crate::ConvDecoder).

pub mod architecture;
pub mod conv;
pub mod layers;
pub mod mlp;
