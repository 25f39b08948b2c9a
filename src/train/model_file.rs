//! Model-only files: the weights of a trained VAE and, for one built from the crate's
//! networks, its architecture, so that it loads for inference without the code that
//! built it.
//!
//! A model file is a safetensors file of the parameters alone (no optimiser state), so
//! PyTorch's `load_state_dict(strict=True)` accepts one of the pytorch/examples
//! architecture as it is (`benches/compare/pytorch_roundtrip.py`). Its metadata entry
//! [`ARCHITECTURE_KEY`] holds the architecture as JSON; PyTorch ignores it.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checkpoint::Checkpoint;
use super::params::Parameters;
use crate::component::{Decoder, Dims, EncoderT};
use crate::error::{Error, Result};
use crate::likelihood::{GaussianMean, GaussianVariance, StandardLikelihood};
use crate::networks::architecture::{Architecture, at_prefix};
use crate::prior::StandardNormal;
use crate::vae::Vae;

/// Metadata key of a model file's architecture.
pub const ARCHITECTURE_KEY: &str = "model.architecture";

/// One network of a stored architecture: its kind, prefix and spec.
#[derive(Debug, Serialize, Deserialize)]
struct StoredNetwork<S> {
    kind: String,
    prefix: String,
    spec: S,
}

/// A [`StandardLikelihood`], as data: a learned variance is named by its tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum StoredLikelihood {
    Bernoulli,
    ContinuousBernoulli,
    GaussianFixed { mean: GaussianMean, std: f64 },
    GaussianPerElement { mean: GaussianMean },
    GaussianShared { mean: GaussianMean, tensor: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredVae<ES, DS> {
    encoder: StoredNetwork<ES>,
    decoder: StoredNetwork<DS>,
    likelihood: StoredLikelihood,
}

impl<E, D> Vae<E, D, StandardLikelihood, StandardNormal>
where
    E: EncoderT + Dims + Architecture,
    D: Decoder + Dims + Architecture,
{
    /// A model-only checkpoint of this VAE: every parameter of `params` (the store the
    /// model was built on) and the architecture under [`ARCHITECTURE_KEY`]. Add metadata
    /// of your own, then [`save`](Checkpoint::save) it; [`save_model`](Self::save_model)
    /// does both.
    ///
    /// # Errors
    /// [`Error::Metadata`] if a learned variance of the likelihood is not among `params`.
    pub fn model_checkpoint<P: Parameters + ?Sized>(&self, params: &P) -> Result<Checkpoint> {
        let mut checkpoint = Checkpoint::from_params(params)?;
        let likelihood = match self.likelihood() {
            StandardLikelihood::Bernoulli => StoredLikelihood::Bernoulli,
            StandardLikelihood::ContinuousBernoulli => StoredLikelihood::ContinuousBernoulli,
            StandardLikelihood::Gaussian { mean, variance } => match variance {
                GaussianVariance::Fixed { std } => StoredLikelihood::GaussianFixed {
                    mean: *mean,
                    std: *std,
                },
                GaussianVariance::PerElement => {
                    StoredLikelihood::GaussianPerElement { mean: *mean }
                }
                GaussianVariance::Shared(log_var) => {
                    let tensor = params
                        .named_parameters()?
                        .into_iter()
                        .find(|(_, var)| var.as_tensor().id() == log_var.id())
                        .map(|(name, _)| name)
                        .ok_or_else(|| Error::Metadata {
                            path: Default::default(),
                            key: ARCHITECTURE_KEY.to_string(),
                            reason: "the likelihood's learned log σ² is not among the \
                                     parameters given"
                                .to_string(),
                        })?;
                    StoredLikelihood::GaussianShared {
                        mean: *mean,
                        tensor,
                    }
                }
            },
        };
        let stored = StoredVae {
            encoder: stored_network(self.encoder()),
            decoder: stored_network(self.decoder()),
            likelihood,
        };
        checkpoint.set_json(ARCHITECTURE_KEY, &stored)?;
        Ok(checkpoint)
    }

    /// Writes [`model_checkpoint`](Self::model_checkpoint) to `path`, atomically.
    ///
    /// # Errors
    /// As [`model_checkpoint`](Self::model_checkpoint) and [`Checkpoint::save`].
    pub fn save_model<P: Parameters + ?Sized>(
        &self,
        params: &P,
        path: impl AsRef<Path>,
    ) -> Result<()> {
        self.model_checkpoint(params)?.save(path)
    }

    /// Builds the VAE a model file describes and loads its weights, on `device`, into a
    /// new `VarMap` (returned beside the model, to train it further or save it again).
    /// Training checkpoints load too when they carry the architecture; their optimiser
    /// state is ignored.
    ///
    /// ```
    /// use candle_core::{DType, Device};
    /// use candle_vae::*;
    ///
    /// let params = ParamStore::new(1);
    /// let vb = params.var_builder(DType::F32, &Device::Cpu);
    /// let enc = MlpEncoder::new(&MlpEncoderConfig::new(16, &[8], 2), vb.pp("enc"))?;
    /// let dec = MlpDecoder::new(&MlpDecoderConfig::new(2, &[8], 16), vb.pp("dec"))?;
    /// let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
    /// let dir = tempfile::tempdir()?;
    /// vae.save_model(&params, dir.path().join("model.safetensors"))?;
    ///
    /// // Elsewhere: only the types are named, not the widths.
    /// let (loaded, _vars) = Vae::<MlpEncoder, MlpDecoder>::from_checkpoint(
    ///     dir.path().join("model.safetensors"),
    ///     &Device::Cpu,
    /// )?;
    /// assert_eq!(loaded.latent_dim(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Metadata`] if the file has no architecture; [`Error::ArchitectureMismatch`]
    /// if it describes other networks than `E` and `D`; [`Error::CheckpointMismatch`] if
    /// its tensors are not exactly the model's; I/O errors naming the file.
    pub fn from_checkpoint(path: impl AsRef<Path>, device: &Device) -> Result<(Self, VarMap)> {
        let path = path.as_ref();
        let checkpoint = Checkpoint::load(path, device)?;
        let value: Value = checkpoint.json(ARCHITECTURE_KEY)?;
        for (part, expected) in [("encoder", E::KIND), ("decoder", D::KIND)] {
            let found = value[part]["kind"].as_str().unwrap_or("(no kind)");
            if found != expected {
                return Err(Error::ArchitectureMismatch {
                    path: path.to_path_buf(),
                    expected: format!("{part} {expected}"),
                    found: format!("{part} {found}"),
                });
            }
        }
        let stored: StoredVae<E::Spec, D::Spec> =
            serde_json::from_value(value).map_err(|e| Error::Metadata {
                path: path.to_path_buf(),
                key: ARCHITECTURE_KEY.to_string(),
                reason: e.to_string(),
            })?;
        let dtype = checkpoint
            .tensors()
            .values()
            .next()
            .map_or(DType::F32, |t| t.dtype());
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, dtype, device);
        let encoder = E::build(&stored.encoder.spec, at_prefix(&vb, &stored.encoder.prefix))?;
        let decoder = D::build(&stored.decoder.spec, at_prefix(&vb, &stored.decoder.prefix))?;
        let likelihood = match stored.likelihood {
            StoredLikelihood::Bernoulli => StandardLikelihood::Bernoulli,
            StoredLikelihood::ContinuousBernoulli => StandardLikelihood::ContinuousBernoulli,
            StoredLikelihood::GaussianFixed { mean, std } => StandardLikelihood::Gaussian {
                mean,
                variance: GaussianVariance::Fixed { std },
            },
            StoredLikelihood::GaussianPerElement { mean } => {
                StandardLikelihood::gaussian_per_element(mean)
            }
            StoredLikelihood::GaussianShared { mean, tensor } => StandardLikelihood::Gaussian {
                mean,
                variance: GaussianVariance::Shared(vb.get_with_hints(
                    1,
                    &tensor,
                    Init::Const(0.0),
                )?),
            },
        };
        let vae = Vae::new(encoder, decoder, likelihood)?;
        checkpoint.restore(&vars)?;
        Ok((vae, vars))
    }
}

fn stored_network<N: Architecture>(network: &N) -> StoredNetwork<N::Spec> {
    StoredNetwork {
        kind: N::KIND.to_string(),
        prefix: network.prefix().to_string(),
        spec: network.spec(),
    }
}
