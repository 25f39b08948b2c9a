//! The variational auto-encoder: an encoder, a decoder, a likelihood and a prior, composed.

use candle_core::{D, DType, Device, Tensor};

use crate::component::{Decoder, Dims, EncoderT};
use crate::distribution::DiagonalGaussian;
use crate::error::Error;
use crate::likelihood::{Likelihood, StandardLikelihood};
use crate::noise::NoiseSource;
use crate::prior::{Prior, StandardNormal};
use crate::reparameterize::Reparameterize;

/// A VAE (Kingma & Welling 2013): q(z|x) from the encoder (any [`Reparameterize`]
/// family), p(x|z) from the decoder and the [`Likelihood`], and a [`Prior`] p(z)
/// ([`StandardNormal`] unless [`with_prior`](Self::with_prior) sets another).
///
/// `forward_t` runs the whole model on a batch and returns a [`VaeOutput`], which
/// [`ElboLoss`](crate::objective::loss::ElboLoss) and the [`estimate`](crate::estimate) functions score.
///
/// ```
/// # use candle_vae::*;
/// # use candle_core::{DType, Device, Tensor};
/// let params = ParamStore::new(0);
/// let vb = params.var_builder(DType::F32, &Device::Cpu);
/// let enc = MlpEncoder::new(&MlpEncoderConfig::new(6, &[8], 2), vb.pp("enc"))?;
/// let dec = MlpDecoder::new(&MlpDecoderConfig::new(2, &[8], 6), vb.pp("dec"))?;
/// let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
/// let xs = Tensor::ones((4, 6), DType::F32, &Device::Cpu)?;
/// let out = vae.forward_t(&xs, &mut NoiseSource::new(1), true)?;
/// assert_eq!(out.z.dims(), &[4, 2]);
/// assert_eq!(out.params.dims(), &[4, 6]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Vae<E, D, L = StandardLikelihood, P = StandardNormal> {
    encoder: E,
    decoder: D,
    likelihood: L,
    prior: P,
    condition: Option<Condition>,
}

/// How a conditional VAE feeds its condition to the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConditionLayout {
    /// Appended to the flattened example (MLP encoders).
    Flat,
    /// Broadcast to constant planes after the image channels (convolutional encoders).
    Planes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Condition {
    dim: usize,
    layout: ConditionLayout,
}

/// Everything one forward pass computes, with the model's likelihood and prior at hand so
/// that [`ElboLoss`](crate::objective::loss::ElboLoss) and the estimators can score it.
#[derive(Debug, Clone)]
pub struct VaeOutput<'m, Q = DiagonalGaussian, L = StandardLikelihood, P = StandardNormal> {
    /// The approximate posterior q(z|x), over `(N, D)`.
    pub posterior: Q,
    /// The base noise ε the samples were drawn from, the shape of `z`.
    pub eps: Tensor,
    /// The reparameterized latent samples: `(N, D)`, or `(K, N, D)` for K samples each.
    pub z: Tensor,
    /// The decoder's likelihood parameters in the data's layout: `(N, P·C, …)`, or
    /// `(K, N, P·C, …)` (see [`Likelihood`]).
    pub params: Tensor,
    /// The likelihood that scores `params`.
    pub likelihood: &'m L,
    /// The prior p(z).
    pub prior: &'m P,
}

impl<Q: Reparameterize, L: Likelihood, P: Prior> VaeOutput<'_, Q, L, P> {
    /// K, the number of posterior samples per example (1 for `forward_t`).
    pub fn samples(&self) -> usize {
        if self.z.rank() == 3 {
            self.z.dims()[0]
        } else {
            1
        }
    }

    /// log p(x|z) per example (and per sample).
    ///
    /// # Shapes
    /// `xs`: `(N, C, …)` → `(N,)`, or `(K, N)` for K samples.
    ///
    /// # Errors
    /// If `xs` is not the batch this output was computed from.
    pub fn reconstruction_log_prob(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.likelihood.log_prob(xs, &self.params)
    }

    /// log p(z) under the prior: `(N,)` or `(K, N)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn prior_log_prob(&self) -> candle_core::Result<Tensor> {
        self.prior.log_prob(&self.z)
    }

    /// log q(z|x) of the samples (through
    /// [`Reparameterize::log_prob_of_sample`]): `(N,)` or `(K, N)`.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn posterior_log_prob(&self) -> candle_core::Result<Tensor> {
        self.posterior.log_prob_of_sample(&self.eps, &self.z)
    }

    /// E[x|z] for every sample, in the data layout without the parameter groups.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn mean(&self) -> candle_core::Result<Tensor> {
        let channel_axis = if self.z.rank() == 3 { 2 } else { 1 };
        self.likelihood.mean(&self.params, channel_axis)
    }
}

/// Where the reparameterization noise comes from.
enum Eps<'a> {
    Draw {
        samples: Option<usize>,
        noise: &'a mut NoiseSource,
    },
    Given(&'a Tensor),
}

impl<E, Dec, L> Vae<E, Dec, L, StandardNormal>
where
    E: EncoderT + Dims,
    Dec: Decoder + Dims,
    L: Likelihood,
{
    /// Composes a VAE with the prior N(0, I), checking that the parts fit.
    ///
    /// # Errors
    /// [`Error::LatentMismatch`] if the decoder does not take the encoder's latent width;
    /// [`Error::DataShapeMismatch`] if the decoder does not produce the encoder's data
    /// shape with the likelihood's parameters per element.
    pub fn new(encoder: E, decoder: Dec, likelihood: L) -> crate::Result<Self> {
        Self::build(encoder, decoder, likelihood, 0)
    }

    fn build(encoder: E, decoder: Dec, likelihood: L, condition_dim: usize) -> crate::Result<Self> {
        if encoder.latent_dim() + condition_dim != decoder.latent_dim() {
            return Err(Error::LatentMismatch {
                encoder: encoder.latent_dim(),
                decoder: decoder.latent_dim(),
                condition: condition_dim,
            });
        }
        let encoder_shape = encoder.data_shape();
        let decoder_shape = decoder.data_shape();
        let groups = likelihood.params_per_element();
        let mut expected = encoder_shape.clone();
        let fits = match expected.first_mut() {
            Some(first) if *first > condition_dim => {
                *first = (*first - condition_dim) * groups;
                expected == decoder_shape && (encoder_shape.len() == 1 || encoder_shape.len() == 3)
            }
            _ => false,
        };
        if !fits {
            return Err(Error::DataShapeMismatch {
                encoder: encoder_shape,
                decoder: decoder_shape,
                expected,
                params_per_element: groups,
            });
        }
        let condition = (condition_dim > 0).then_some(Condition {
            dim: condition_dim,
            layout: if encoder_shape.len() == 1 {
                ConditionLayout::Flat
            } else {
                ConditionLayout::Planes
            },
        });
        let prior = StandardNormal::new(encoder.latent_dim())?;
        Ok(Self {
            encoder,
            decoder,
            likelihood,
            prior,
            condition,
        })
    }
}

impl<E, Dec, L, P> Vae<E, Dec, L, P>
where
    E: EncoderT,
    Dec: Decoder,
    L: Likelihood,
    P: Prior,
{
    /// Composes a VAE from any parts, with no width checks before the first batch: for
    /// encoders and decoders that do not implement [`Dims`] (a `candle_nn::seq()`, a
    /// closure). Candle reports a mismatch at the first forward pass.
    pub fn from_parts(encoder: E, decoder: Dec, likelihood: L, prior: P) -> Self {
        Self {
            encoder,
            decoder,
            likelihood,
            prior,
            condition: None,
        }
    }

    /// The same VAE with another prior.
    ///
    /// # Errors
    /// [`Error::LatentMismatch`] if `prior` is not over the model's latent width.
    pub fn with_prior<P2: Prior>(self, prior: P2) -> crate::Result<Vae<E, Dec, L, P2>> {
        if prior.latent_dim() != self.prior.latent_dim() {
            return Err(Error::PriorMismatch {
                model: self.prior.latent_dim(),
                prior: prior.latent_dim(),
            });
        }
        Ok(Vae {
            encoder: self.encoder,
            decoder: self.decoder,
            likelihood: self.likelihood,
            prior,
            condition: self.condition,
        })
    }

    /// The prior p(z).
    pub fn prior(&self) -> &P {
        &self.prior
    }

    /// The encoder.
    pub fn encoder(&self) -> &E {
        &self.encoder
    }

    /// The decoder.
    pub fn decoder(&self) -> &Dec {
        &self.decoder
    }

    /// The likelihood p(x|z).
    pub fn likelihood(&self) -> &L {
        &self.likelihood
    }

    /// Width D of the latent code (the prior's).
    pub fn latent_dim(&self) -> usize {
        self.prior.latent_dim()
    }

    /// q(z|x) in evaluation mode.
    ///
    /// # Shapes
    /// `xs`: `(N, …)` → over `(N, D)`.
    ///
    /// # Errors
    /// If `xs` does not fit the encoder.
    pub fn encode(&self, xs: &Tensor) -> candle_core::Result<E::Posterior> {
        self.encoder.encode_t(xs, false)
    }

    /// The decoder's raw output (likelihood parameters) for `z`, evaluation mode.
    ///
    /// # Shapes
    /// `z`: `(N, D)` → the decoder's output, e.g. `(N, P·784)` or `(N, P·C, H, W)`.
    ///
    /// # Errors
    /// If `z` does not fit the decoder.
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.decoder.forward_t(z, false)
    }

    /// E[x|z]: the images a latent code stands for.
    ///
    /// # Shapes
    /// `z`: `(N, D)` → `(N, C·…)` in the decoder's layout without parameter groups.
    ///
    /// # Errors
    /// If `z` does not fit the decoder.
    pub fn generate(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        self.likelihood.mean(&self.decode(z)?, 1)
    }

    /// `n` draws z ~ p(z) from the prior (in `dtype` on `device`, where the model's
    /// parameters live), decoded to E[x|z].
    ///
    /// # Errors
    /// If `dtype` or `device` is not the model's.
    pub fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let z = self.prior.sample(n, dtype, device, noise)?;
        self.generate(&z)
    }

    /// E[x | z = location of q(z|x)]: the reconstruction at the posterior mean (see
    /// [`Reparameterize::location`]).
    ///
    /// # Errors
    /// If `xs` does not fit the encoder.
    pub fn reconstruct(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.generate(&self.encode(xs)?.location()?)
    }

    /// One forward pass: encode, draw one z per example, decode.
    ///
    /// # Shapes
    /// `xs`: `(N, C, …)` (or `(N, D)`) → a [`VaeOutput`] with `z` `(N, D)`.
    ///
    /// # Errors
    /// If `xs` does not fit the encoder, or the decoder output does not hold as many
    /// values as the data with the likelihood's parameters.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        noise: &mut NoiseSource,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        self.run(
            xs,
            None,
            Eps::Draw {
                samples: None,
                noise,
            },
            train,
        )
    }

    /// A forward pass with `k` posterior samples per example (IWAE, importance sampling).
    ///
    /// # Shapes
    /// `xs`: `(N, …)` → `z` `(k, N, D)`, `params` `(k, N, P·C, …)`.
    ///
    /// # Errors
    /// As [`forward_t`](Self::forward_t); also if `k` is 0.
    pub fn forward_samples_t(
        &self,
        xs: &Tensor,
        k: usize,
        noise: &mut NoiseSource,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        self.run(
            xs,
            None,
            Eps::Draw {
                samples: Some(k),
                noise,
            },
            train,
        )
    }

    /// The deterministic twin of [`forward_t`](Self::forward_t): the noise ε is given.
    ///
    /// # Shapes
    /// `eps`: `(N, D)` or `(K, N, D)`.
    ///
    /// # Errors
    /// As [`forward_t`](Self::forward_t); also if `eps` has the wrong shape.
    pub fn forward_with_noise_t(
        &self,
        xs: &Tensor,
        eps: &Tensor,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        self.run(xs, None, Eps::Given(eps), train)
    }

    fn encoder_input(&self, xs: &Tensor, cond: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (Some(cond), Some(condition)) = (cond, self.condition) else {
            return Ok(xs.clone());
        };
        let n = xs.dim(0)?;
        let k = condition.dim;
        if cond.dims() != [n, k] {
            return Err(Error::shape(
                "ConditionalVae",
                format!("a condition of shape ({n}, {k})"),
                cond.dims(),
            )
            .into());
        }
        let cond = cond.to_dtype(xs.dtype())?;
        match condition.layout {
            ConditionLayout::Flat => Tensor::cat(&[&xs.flatten_from(1)?, &cond], 1),
            ConditionLayout::Planes => {
                let (_, _, h, w) = xs.dims4()?;
                let planes = cond.reshape((n, k, 1, 1))?.broadcast_as((n, k, h, w))?;
                Tensor::cat(&[xs, &planes.contiguous()?], 1)
            }
        }
    }

    fn run(
        &self,
        xs: &Tensor,
        cond: Option<&Tensor>,
        eps: Eps<'_>,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        let posterior = self
            .encoder
            .encode_t(&self.encoder_input(xs, cond)?, train)?;
        let eps = match eps {
            Eps::Draw { samples, noise } => posterior.draw_noise(samples, noise)?,
            Eps::Given(eps) => eps.clone(),
        };
        let z = posterior.rsample_with(&eps)?;
        let params = self.decode_samples(&z, xs, cond, train)?;
        Ok(VaeOutput {
            posterior,
            eps,
            z,
            params,
            likelihood: &self.likelihood,
            prior: &self.prior,
        })
    }

    /// The likelihood parameters of the samples `z` (`(N, D)` or `(K, N, D)`) of a
    /// posterior over `xs`, in the data's layout (see [`VaeOutput::params`]).
    pub(crate) fn decode_samples(
        &self,
        z: &Tensor,
        xs: &Tensor,
        cond: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let samples = if z.rank() == 3 { Some(z.dim(0)?) } else { None };
        let flat_z = match samples {
            Some(k) => z.reshape((k * z.dim(1)?, z.dim(D::Minus1)?))?,
            None => z.clone(),
        };
        let decoder_input = match cond {
            Some(cond) => {
                let cond = cond.to_dtype(z.dtype())?;
                let cond = match samples {
                    Some(k) => cond.unsqueeze(0)?.repeat((k, 1, 1))?.flatten_to(1)?,
                    None => cond,
                };
                Tensor::cat(&[&flat_z, &cond], 1)?
            }
            None => flat_z,
        };
        let raw = self.decoder.forward_t(&decoder_input, train)?;
        self.to_data_layout(&raw, xs, samples)
    }

    /// Reshapes the decoder output to `([K,] N, P·C, …)` for data `xs` of shape `(N, C, …)`.
    fn to_data_layout(
        &self,
        raw: &Tensor,
        xs: &Tensor,
        samples: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let mut shape: Vec<usize> = samples.into_iter().collect();
        shape.extend_from_slice(xs.dims());
        let channel_axis = shape.len() + 1 - xs.rank();
        if xs.rank() >= 2 {
            shape[channel_axis] *= self.likelihood.params_per_element();
        }
        if raw.elem_count() != shape.iter().product::<usize>() || xs.rank() < 2 {
            return Err(Error::shape(
                "Vae::forward_t",
                format!(
                    "decoder output with as many values as {shape:?} (data {:?})",
                    xs.dims()
                ),
                raw.dims(),
            )
            .into());
        }
        if raw.dims() == shape.as_slice() {
            // Already in place: a reshape would add a graph node whose backward allocates
            // and adds a full-size gradient.
            return Ok(raw.clone());
        }
        raw.reshape(shape)
    }
}

/// A conditional VAE (Sohn et al. 2015): a condition y, such as a one-hot label, is
/// concatenated to the encoder's input and to z, so the model learns p(x|z, y) and
/// q(z|x, y). The encoder and decoder traits are unchanged: the parts are built wider.
///
/// * MLP encoder: `input_dim = data width + K`; the condition is appended to the flattened
///   example.
/// * Convolutional encoder: `image.channels = C + K`; the condition is broadcast to K
///   constant planes.
/// * Decoder: `latent_dim = D + K`.
///
/// ```
/// # use candle_vae::*;
/// # use candle_core::{DType, Device, Tensor};
/// let params = ParamStore::new(0);
/// let vb = params.var_builder(DType::F32, &Device::Cpu);
/// let (data, labels, latent) = (6, 3, 2);
/// let enc = MlpEncoder::new(&MlpEncoderConfig::new(data + labels, &[8], latent), vb.pp("enc"))?;
/// let dec = MlpDecoder::new(&MlpDecoderConfig::new(latent + labels, &[8], data), vb.pp("dec"))?;
/// let cvae = ConditionalVae::new(enc, dec, StandardLikelihood::Bernoulli, labels)?;
/// let xs = Tensor::ones((4, data), DType::F32, &Device::Cpu)?;
/// let ys = candle_nn::encoding::one_hot(Tensor::new(&[0u32, 1, 2, 0], &Device::Cpu)?, labels, 1f32, 0f32)?;
/// let out = cvae.forward_t(&xs, &ys, &mut NoiseSource::new(1), true)?;
/// assert_eq!(out.params.dims(), &[4, data]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConditionalVae<E, D, L = StandardLikelihood, P = StandardNormal> {
    pub(crate) inner: Vae<E, D, L, P>,
}

impl<E, Dec, L> ConditionalVae<E, Dec, L, StandardNormal>
where
    E: EncoderT + Dims,
    Dec: Decoder + Dims,
    L: Likelihood,
{
    /// Composes a conditional VAE for conditions of width `condition_dim`.
    ///
    /// # Errors
    /// As [`Vae::new`], with the condition's width taken into account; also if
    /// `condition_dim` is 0.
    pub fn new(
        encoder: E,
        decoder: Dec,
        likelihood: L,
        condition_dim: usize,
    ) -> crate::Result<Self> {
        crate::error::ensure(
            condition_dim > 0,
            "ConditionalVae",
            "condition_dim",
            condition_dim,
            "must be > 0",
        )?;
        Ok(Self {
            inner: Vae::build(encoder, decoder, likelihood, condition_dim)?,
        })
    }
}

impl<E, Dec, L, P> ConditionalVae<E, Dec, L, P>
where
    E: EncoderT,
    Dec: Decoder,
    L: Likelihood,
    P: Prior,
{
    /// The same conditional VAE with another prior p(z) (the prior does not see y).
    ///
    /// # Errors
    /// As [`Vae::with_prior`].
    pub fn with_prior<P2: Prior>(self, prior: P2) -> crate::Result<ConditionalVae<E, Dec, L, P2>> {
        Ok(ConditionalVae {
            inner: self.inner.with_prior(prior)?,
        })
    }

    /// The prior p(z).
    pub fn prior(&self) -> &P {
        &self.inner.prior
    }

    /// Width K of the condition.
    pub fn condition_dim(&self) -> usize {
        self.inner.condition.map_or(0, |c| c.dim)
    }

    /// The encoder.
    pub fn encoder(&self) -> &E {
        &self.inner.encoder
    }

    /// The decoder.
    pub fn decoder(&self) -> &Dec {
        &self.inner.decoder
    }

    /// The likelihood p(x|z, y).
    pub fn likelihood(&self) -> &L {
        &self.inner.likelihood
    }

    /// Width D of the latent code (without the condition).
    pub fn latent_dim(&self) -> usize {
        self.inner.latent_dim()
    }

    /// q(z|x, y) in evaluation mode.
    ///
    /// # Shapes
    /// `xs`: `(N, …)`, `cond`: `(N, K)` → over `(N, D)`.
    ///
    /// # Errors
    /// If the shapes do not fit.
    pub fn encode(&self, xs: &Tensor, cond: &Tensor) -> candle_core::Result<E::Posterior> {
        self.inner
            .encoder
            .encode_t(&self.inner.encoder_input(xs, Some(cond))?, false)
    }

    /// E[x|z, y].
    ///
    /// # Shapes
    /// `z`: `(N, D)`, `cond`: `(N, K)` → the decoder's layout without parameter groups.
    ///
    /// # Errors
    /// If the shapes do not fit.
    pub fn generate(&self, z: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        let input = Tensor::cat(&[z, &cond.to_dtype(z.dtype())?], 1)?;
        self.inner
            .likelihood
            .mean(&self.inner.decoder.forward_t(&input, false)?, 1)
    }

    /// One prior draw z ~ p(z) per row of `cond`, decoded to E[x|z, y].
    ///
    /// # Errors
    /// If `cond` is not `(N, K)` on the model's device.
    pub fn sample(&self, cond: &Tensor, noise: &mut NoiseSource) -> candle_core::Result<Tensor> {
        let z = self
            .inner
            .prior
            .sample(cond.dim(0)?, cond.dtype(), cond.device(), noise)?;
        self.generate(&z, cond)
    }

    /// E[x | z = μ(x, y), y].
    ///
    /// # Errors
    /// If the shapes do not fit.
    pub fn reconstruct(&self, xs: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        self.generate(&self.encode(xs, cond)?.location()?, cond)
    }

    /// One forward pass with one z per example.
    ///
    /// # Shapes
    /// `xs`: `(N, C, …)`, `cond`: `(N, K)` → a [`VaeOutput`] with `z` `(N, D)`.
    ///
    /// # Errors
    /// If the shapes do not fit.
    pub fn forward_t(
        &self,
        xs: &Tensor,
        cond: &Tensor,
        noise: &mut NoiseSource,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        self.inner.run(
            xs,
            Some(cond),
            Eps::Draw {
                samples: None,
                noise,
            },
            train,
        )
    }

    /// A forward pass with `k` samples per example.
    ///
    /// # Errors
    /// If the shapes do not fit or `k` is 0.
    pub fn forward_samples_t(
        &self,
        xs: &Tensor,
        cond: &Tensor,
        k: usize,
        noise: &mut NoiseSource,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        self.inner.run(
            xs,
            Some(cond),
            Eps::Draw {
                samples: Some(k),
                noise,
            },
            train,
        )
    }

    /// The deterministic twin of [`forward_t`](Self::forward_t).
    ///
    /// # Errors
    /// If the shapes do not fit.
    pub fn forward_with_noise_t(
        &self,
        xs: &Tensor,
        cond: &Tensor,
        eps: &Tensor,
        train: bool,
    ) -> candle_core::Result<VaeOutput<'_, E::Posterior, L, P>> {
        self.inner.run(xs, Some(cond), Eps::Given(eps), train)
    }
}
