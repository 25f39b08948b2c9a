//! A normalising-flow posterior: planar flows on top of a diagonal Gaussian.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;

use crate::component::{Dims, EncoderT};
use crate::distribution::DiagonalGaussian;
use crate::error::{Error, ensure};
use crate::noise::NoiseSource;
use crate::reparameterize::Reparameterize;

/// Configuration of a [`PlanarFlow`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlanarFlowConfig {
    /// D, the latent width (> 0).
    pub latent_dim: usize,
    /// Number of planar steps (> 0).
    pub steps: usize,
    /// Standard deviation of the initial w (> 0).
    pub init_w_std: f64,
}

impl PlanarFlowConfig {
    /// `steps` planar steps over `latent_dim` dimensions.
    pub fn new(latent_dim: usize, steps: usize) -> Self {
        Self {
            latent_dim,
            steps,
            init_w_std: 0.1,
        }
    }

    /// Checks every rule; [`PlanarFlow::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.latent_dim > 0,
            "PlanarFlowConfig",
            "latent_dim",
            self.latent_dim,
            "must be > 0",
        )?;
        ensure(
            self.steps > 0,
            "PlanarFlowConfig",
            "steps",
            self.steps,
            "must be > 0",
        )?;
        ensure(
            self.init_w_std.is_finite() && self.init_w_std > 0.0,
            "PlanarFlowConfig",
            "init_w_std",
            self.init_w_std,
            "must be finite and > 0",
        )
    }
}

/// A stack of planar flows (Rezende & Mohamed 2015, §4.1) with learned parameters shared
/// by every example:
///
/// f(z) = z + û · tanh(wᵀz + b), log |det ∂f/∂z| = log (1 + tanh′(wᵀz + b) · wᵀû).
///
/// # Invertibility
/// f is invertible when wᵀû ≥ −1. The paper maps u to û = u + [m(wᵀu) − wᵀu] w / ‖w‖²
/// with m(x) = −1 + softplus(x); here m is ELU, m(x) = x for x ≥ 0 and eˣ − 1 below, which
/// also lies in (−1, ∞) and is smooth, and leaves û = u whenever wᵀu ≥ 0. With u
/// initialised to 0 the flow starts as the identity, exactly.
///
/// # Parameters
/// Under its `VarBuilder`, per step i: `step{i}.u` `(D,)` (0), `step{i}.w` `(D,)`
/// (N(0, s²)), `step{i}.b` `(1,)` (0).
#[derive(Debug, Clone)]
pub struct PlanarFlow {
    steps: Vec<PlanarStep>,
    latent_dim: usize,
}

#[derive(Debug, Clone)]
struct PlanarStep {
    u: Tensor,
    w: Tensor,
    b: Tensor,
}

/// One step with its constrained û and wᵀû, computed once per forward pass.
#[derive(Debug, Clone)]
struct ConstrainedStep {
    u_hat: Tensor,
    w: Tensor,
    b: Tensor,
    w_dot_u_hat: Tensor,
}

impl PlanarFlow {
    /// A planar flow with its parameters created under `vb`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config; candle's error if the parameters cannot
    /// be created.
    pub fn new(config: &PlanarFlowConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let d = config.latent_dim;
        let steps = (0..config.steps)
            .map(|i| {
                let vb = vb.pp(format!("step{i}"));
                Ok(PlanarStep {
                    u: vb.get_with_hints(d, "u", candle_nn::Init::Const(0.0))?,
                    w: vb.get_with_hints(
                        d,
                        "w",
                        candle_nn::Init::Randn {
                            mean: 0.0,
                            stdev: config.init_w_std,
                        },
                    )?,
                    b: vb.get_with_hints(1, "b", candle_nn::Init::Const(0.0))?,
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Self {
            steps,
            latent_dim: d,
        })
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the flow has no step (never, for a flow built by [`new`](Self::new)).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The flow posterior: `base` pushed through every step.
    ///
    /// # Errors
    /// If `base` is not over the flow's latent width.
    pub fn posterior(&self, base: DiagonalGaussian) -> candle_core::Result<FlowPosterior> {
        if base.dim() != self.latent_dim {
            return Err(Error::shape(
                "PlanarFlow::posterior",
                format!("a base posterior over {} dimensions", self.latent_dim),
                base.mean().dims(),
            )
            .into());
        }
        let steps = self
            .steps
            .iter()
            .map(|step| {
                let w_dot_u = (&step.w * &step.u)?.sum_all()?;
                let correction = (w_dot_u.elu(1.0)? - &w_dot_u)?;
                let norm_sq = step.w.sqr()?.sum_all()?;
                let u_hat = (&step.u + step.w.broadcast_mul(&(correction / norm_sq)?)?)?;
                let w_dot_u_hat = (&step.w * &u_hat)?.sum_all()?;
                Ok(ConstrainedStep {
                    u_hat,
                    w: step.w.clone(),
                    b: step.b.clone(),
                    w_dot_u_hat,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(FlowPosterior { base, steps })
    }
}

/// q(z|x) of a normalising flow: z = f_T ∘ … ∘ f_1(z₀), z₀ ~ N(μ, diag σ²), with
/// log q(z) = log N(z₀; μ, σ²) − Σ_t log |det ∂f_t/∂z_{t−1}| (Rezende & Mohamed 2015,
/// eq. 13).
///
/// Planar steps have no closed-form inverse, so the density is known along a sample's
/// path from its noise ([`Reparameterize::log_prob_of_sample`], all that the ELBO and
/// importance sampling need), and [`Reparameterize::log_prob`] at an arbitrary z is an
/// error.
#[derive(Debug, Clone)]
pub struct FlowPosterior {
    base: DiagonalGaussian,
    steps: Vec<ConstrainedStep>,
}

impl FlowPosterior {
    /// The base distribution N(μ, diag σ²).
    pub fn base(&self) -> &DiagonalGaussian {
        &self.base
    }

    /// Pushes z₀ through the steps; returns z_T and Σ_t log |det J_t| (shape of z₀ without
    /// its last axis).
    ///
    /// # Errors
    /// Only candle's own.
    pub fn forward_with_log_det(&self, z0: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut z = z0.clone();
        let mut log_det: Option<Tensor> = None;
        for step in &self.steps {
            let a = z
                .broadcast_mul(&step.w)?
                .sum_keepdim(D::Minus1)?
                .broadcast_add(&step.b)?;
            let h = a.tanh()?;
            // tanh′(a) = 1 − tanh²(a)
            let slope = h.sqr()?.affine(-1.0, 1.0)?;
            let ld = slope
                .broadcast_mul(&step.w_dot_u_hat)?
                .affine(1.0, 1.0)?
                .log()?
                .squeeze(D::Minus1)?;
            z = (z + h.broadcast_mul(&step.u_hat)?)?;
            log_det = Some(match log_det {
                None => ld,
                Some(sum) => (sum + ld)?,
            });
        }
        let log_det = match log_det {
            Some(l) => l,
            None => z.sum(D::Minus1)?.zeros_like()?,
        };
        Ok((z, log_det))
    }
}

impl Reparameterize for FlowPosterior {
    fn latent_dim(&self) -> usize {
        self.base.dim()
    }

    fn draw_noise(
        &self,
        samples: Option<usize>,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        self.base.draw_noise(samples, noise)
    }

    fn rsample_with(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        let z0 = self.base.rsample_with(eps)?;
        Ok(self.forward_with_log_det(&z0)?.0)
    }

    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        Err(Error::shape(
            "FlowPosterior::log_prob",
            "a sample's noise: planar flows have no closed-form inverse, use log_prob_of_sample(eps, z)",
            z.dims(),
        )
        .into())
    }

    fn log_prob_of_sample(&self, eps: &Tensor, z: &Tensor) -> candle_core::Result<Tensor> {
        let z0 = self.base.rsample_with(eps)?;
        let (z_t, log_det) = self.forward_with_log_det(&z0)?;
        if z_t.dims() != z.dims() {
            return Err(Error::shape(
                "FlowPosterior::log_prob_of_sample",
                format!("z of the noise's shape {:?}", z_t.dims()),
                z.dims(),
            )
            .into());
        }
        self.base.log_prob(&z0)? - log_det
    }

    fn location(&self) -> candle_core::Result<Tensor> {
        Ok(self.forward_with_log_det(self.base.mean())?.0)
    }
}

/// An encoder whose diagonal Gaussian posterior is pushed through a [`PlanarFlow`]:
/// any Gaussian encoder becomes a flow encoder.
#[derive(Debug, Clone)]
pub struct FlowEncoder<E> {
    encoder: E,
    flow: PlanarFlow,
}

impl<E> FlowEncoder<E>
where
    E: EncoderT<Posterior = DiagonalGaussian>,
{
    /// Wraps `encoder` with `flow`.
    pub fn new(encoder: E, flow: PlanarFlow) -> Self {
        Self { encoder, flow }
    }

    /// The wrapped Gaussian encoder.
    pub fn inner(&self) -> &E {
        &self.encoder
    }

    /// The flow.
    pub fn flow(&self) -> &PlanarFlow {
        &self.flow
    }
}

impl<E> EncoderT for FlowEncoder<E>
where
    E: EncoderT<Posterior = DiagonalGaussian>,
{
    type Posterior = FlowPosterior;

    fn encode_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<FlowPosterior> {
        self.flow.posterior(self.encoder.encode_t(xs, train)?)
    }
}

impl<E: Dims> Dims for FlowEncoder<E> {
    fn latent_dim(&self) -> usize {
        self.encoder.latent_dim()
    }

    fn data_shape(&self) -> Vec<usize> {
        self.encoder.data_shape()
    }
}
