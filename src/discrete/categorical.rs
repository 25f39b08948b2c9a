//! The categorical VAE's parts: an MLP encoder to relaxed categorical posteriors and the
//! uniform categorical prior (Jang et al. 2017).

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, VarBuilder};
use rand::Rng;

use crate::component::{Dims, Encoder};
use crate::discrete::gumbel::{
    GumbelEstimator, RelaxedCategorical, check_temperature, concrete_log_density,
};
use crate::error::{Error, ensure, ensure_layer};
use crate::fused::linear as fused;
use crate::layers::linear;
use crate::networks::mlp::{hidden_layers, through_hidden};
use crate::noise::NoiseSource;
use crate::ops::Activation;
use crate::prior::{Prior, check_latent};

/// Configuration of a [`CategoricalEncoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct CategoricalEncoderConfig {
    /// Elements per example (784 for MNIST).
    pub input_dim: usize,
    /// Widths of the hidden layers.
    pub hidden: Vec<usize>,
    /// M, the number of categorical variables (> 0).
    pub groups: usize,
    /// C, the classes of each (> 0).
    pub classes: usize,
    /// τ at construction (finite, > 0); [`CategoricalEncoder::set_temperature`] anneals it.
    pub temperature: f64,
    /// Relaxed or straight-through samples.
    pub estimator: GumbelEstimator,
    /// Activation of the hidden layers.
    pub activation: Activation,
}

impl CategoricalEncoderConfig {
    /// `input_dim` → `hidden` → M·C logits; τ = 1, relaxed samples, ReLU.
    pub fn new(input_dim: usize, hidden: &[usize], groups: usize, classes: usize) -> Self {
        Self {
            input_dim,
            hidden: hidden.to_vec(),
            groups,
            classes,
            temperature: 1.0,
            estimator: GumbelEstimator::Relaxed,
            activation: Activation::Relu,
        }
    }

    /// Sets τ.
    #[must_use]
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    /// Sets the estimator.
    #[must_use]
    pub fn with_estimator(mut self, estimator: GumbelEstimator) -> Self {
        self.estimator = estimator;
        self
    }

    /// Sets the hidden activation.
    #[must_use]
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Checks every rule; [`CategoricalEncoder::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        const C: &str = "CategoricalEncoderConfig";
        ensure(
            self.input_dim > 0,
            C,
            "input_dim",
            self.input_dim,
            "must be > 0",
        )?;
        ensure(
            self.hidden.iter().all(|&h| h > 0),
            C,
            "hidden",
            &self.hidden,
            "every width must be > 0",
        )?;
        ensure(self.groups > 0, C, "groups", self.groups, "must be > 0")?;
        ensure(self.classes > 0, C, "classes", self.classes, "must be > 0")?;
        let latent = self.groups.checked_mul(self.classes);
        ensure(
            latent.is_some(),
            C,
            "groups",
            self.groups,
            "groups × classes overflows",
        )?;
        check_temperature(C, self.temperature)?;
        let mut width = ("input_dim", self.input_dim);
        for &h in &self.hidden {
            ensure_layer(C, width, ("hidden", h))?;
            width = ("hidden", h);
        }
        ensure_layer(C, width, ("groups", latent.unwrap_or(usize::MAX)))
    }
}

/// An MLP x → logits ℓ `(N, M·C)` → [`RelaxedCategorical`] q(z|x) at the encoder's current
/// temperature.
///
/// # Tensor names
/// `fc1` … `fcL` (the hidden layers, as [`MlpEncoder`](crate::mlp::MlpEncoder) names
/// them), then `logits`.
#[derive(Debug)]
pub struct CategoricalEncoder {
    hidden: Vec<Linear>,
    logits: Linear,
    config: CategoricalEncoderConfig,
    temperature: AtomicU64,
}

impl CategoricalEncoder {
    /// The encoder for `config`, its parameters created under `vb`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad config (τ ≤ 0 among them); candle's if the
    /// parameters cannot be created.
    pub fn new(config: &CategoricalEncoderConfig, vb: VarBuilder) -> crate::Result<Self> {
        config.validate()?;
        let (hidden, width) = hidden_layers(config.input_dim, &config.hidden, 1, &vb)?;
        let logits = linear(width, config.groups * config.classes, vb.pp("logits"))?;
        Ok(Self {
            hidden,
            logits,
            config: config.clone(),
            temperature: AtomicU64::new(config.temperature.to_bits()),
        })
    }

    /// The configuration it was built from (its `temperature` is the initial one).
    pub fn config(&self) -> &CategoricalEncoderConfig {
        &self.config
    }

    /// The current τ.
    pub fn temperature(&self) -> f64 {
        f64::from_bits(self.temperature.load(Ordering::Relaxed))
    }

    /// Sets τ for the following passes (e.g. from a
    /// [`TemperatureSchedule`](crate::discrete::TemperatureSchedule)); takes `&self` so
    /// that it can be annealed while a training loop holds the model.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] unless τ is finite and > 0.
    pub fn set_temperature(&self, temperature: f64) -> crate::Result<()> {
        check_temperature("CategoricalEncoder", temperature)?;
        self.temperature
            .store(temperature.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    /// The logits ℓ `(N, M·C)` for a batch.
    ///
    /// # Errors
    /// [`Error::Shape`] if an example does not hold `input_dim` elements.
    pub fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let per_example: usize = xs.dims().iter().skip(1).product();
        if xs.rank() < 2 || per_example != self.config.input_dim {
            return Err(Error::shape(
                "CategoricalEncoder::encode",
                format!("(N, …) with {} elements per example", self.config.input_dim),
                xs.dims(),
            )
            .into());
        }
        let h = through_hidden(xs.flatten_from(1)?, &self.hidden, self.config.activation)?;
        fused::linear(&h, &self.logits, None)
    }
}

impl Encoder for CategoricalEncoder {
    type Posterior = RelaxedCategorical;

    /// # Shapes
    /// `xs`: `(N, input_dim)` or `(N, …)` → q(z|x) over `(N, M·C)`.
    ///
    /// # Errors
    /// [`Error::Shape`] if an example does not hold `input_dim` elements.
    fn encode(&self, xs: &Tensor) -> candle_core::Result<RelaxedCategorical> {
        Ok(RelaxedCategorical::new(
            self.logits(xs)?,
            self.config.groups,
            self.config.classes,
            self.temperature(),
            self.config.estimator,
        )?)
    }
}

impl Dims for CategoricalEncoder {
    fn latent_dim(&self) -> usize {
        self.config.groups * self.config.classes
    }

    fn data_shape(&self) -> Vec<usize> {
        vec![self.config.input_dim]
    }
}

/// The uniform prior over M categorical variables of C classes, p(z_m = c) = 1/C.
///
/// * Its analytic KL from a [`RelaxedCategorical`] is the discrete
///   KL(Categorical(π) ‖ Uniform) = Σ_m Σ_c π_mc ln(π_mc C) (Jang et al. 2017, whose
///   ELBO uses it), per column (`(N, M·C)`).
/// * [`log_prob`](Prior::log_prob) is the Concrete density with uniform α at the prior's
///   temperature λ (1 unless [`with_temperature`](Self::with_temperature)): the relaxed
///   prior of Maddison et al. (2017, §5 and appendix C), which together with the
///   posterior's Concrete density gives the Monte-Carlo relaxed KL and importance
///   weights. It is defined for relaxed samples only (a one-hot z is −∞).
/// * [`sample`](Prior::sample) draws one-hot codes (the τ → 0 limit), for generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniformCategorical {
    groups: usize,
    classes: usize,
    temperature: f64,
}

impl UniformCategorical {
    /// The uniform prior over M × C.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if M or C is 0.
    pub fn new(groups: usize, classes: usize) -> crate::Result<Self> {
        ensure(
            groups > 0,
            "UniformCategorical",
            "groups",
            groups,
            "must be > 0",
        )?;
        ensure(
            classes > 0,
            "UniformCategorical",
            "classes",
            classes,
            "must be > 0",
        )?;
        ensure(
            groups.checked_mul(classes).is_some(),
            "UniformCategorical",
            "groups",
            groups,
            "groups × classes overflows",
        )?;
        Ok(Self {
            groups,
            classes,
            temperature: 1.0,
        })
    }

    /// The same prior with relaxed temperature λ.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] unless λ is finite and > 0.
    pub fn with_temperature(mut self, temperature: f64) -> crate::Result<Self> {
        check_temperature("UniformCategorical", temperature)?;
        self.temperature = temperature;
        Ok(self)
    }

    /// M.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// C.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

impl Prior for UniformCategorical {
    fn latent_dim(&self) -> usize {
        self.groups * self.classes
    }

    fn log_prob(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        check_latent("UniformCategorical::log_prob", z, self.latent_dim())?;
        let mut dims = z.dims().to_vec();
        dims.pop();
        dims.push(self.groups);
        dims.push(self.classes);
        let log_y = z.reshape(dims)?.log()?;
        let logits = log_y.zeros_like()?;
        concrete_log_density(&logits, &log_y, self.temperature)
    }

    fn sample(
        &self,
        n: usize,
        dtype: DType,
        device: &Device,
        noise: &mut NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let width = self.latent_dim();
        let mut values = vec![0f64; n * width];
        let rng = noise.rng();
        for row in 0..n {
            for m in 0..self.groups {
                let c = rng.random_range(0..self.classes);
                values[row * width + m * self.classes + c] = 1.0;
            }
        }
        Tensor::from_vec(values, (n, width), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }

    fn has_analytic_kl(&self, posterior: TypeId) -> bool {
        posterior == TypeId::of::<RelaxedCategorical>()
    }

    fn analytic_kl_per_dim(&self, posterior: &dyn Any) -> Option<candle_core::Result<Tensor>> {
        posterior.downcast_ref::<RelaxedCategorical>().map(|q| {
            if q.groups() != self.groups || q.classes() != self.classes {
                return Err(Error::CategoricalWidth {
                    op: "UniformCategorical::analytic_kl_per_dim",
                    groups: self.groups,
                    classes: self.classes,
                    expected: self.latent_dim(),
                    found: q.groups() * q.classes(),
                }
                .into());
            }
            q.kl_uniform_per_dim()
        })
    }
}
