//! Adam and AdamW with PyTorch's semantics and a state that checkpoints can hold.
//!
//! candle-nn's `AdamW` defaults to a weight decay of 0.01 and keeps its moments private;
//! PyTorch's `Adam`, which the reference VAE trains with, has no weight decay. [`Adam`]
//! follows `torch.optim.Adam` step for step (per-parameter step counts, bias corrections,
//! ε added after the square root) and exposes its moments for [`Checkpoint`]s.
//!
//! [`Checkpoint`]: crate::Checkpoint

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, ensure};
use crate::fused::{self, adam::AdamScalars, sink::GradSink};
use crate::params::ParamStore;

/// How weight decay enters an [`Adam`] step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WeightDecay {
    /// L2 penalty added to the gradient (`torch.optim.Adam`'s `weight_decay`).
    #[default]
    L2,
    /// Decoupled decay θ ← θ(1 − lr·λ) before the step (`torch.optim.AdamW`,
    /// Loshchilov & Hutter 2019).
    Decoupled,
}

/// Configuration of [`Adam`]; the default is `torch.optim.Adam()`'s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate (1e-3).
    pub lr: f64,
    /// Decay of the first moment (0.9).
    pub beta1: f64,
    /// Decay of the second moment (0.999).
    pub beta2: f64,
    /// Added to √v̂ (1e-8).
    pub eps: f64,
    /// Weight decay λ (0).
    pub weight_decay: f64,
    /// How λ is applied.
    pub decay_mode: WeightDecay,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_mode: WeightDecay::L2,
        }
    }
}

impl AdamConfig {
    /// PyTorch's defaults with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            ..Self::default()
        }
    }

    /// Sets the moment decays.
    #[must_use]
    pub fn with_betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// Sets ε.
    #[must_use]
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets weight decay λ and how it applies.
    #[must_use]
    pub fn with_weight_decay(mut self, weight_decay: f64, mode: WeightDecay) -> Self {
        self.weight_decay = weight_decay;
        self.decay_mode = mode;
        self
    }

    /// Checks every rule; [`Adam::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> crate::Result<()> {
        ensure(
            self.lr.is_finite() && self.lr > 0.0,
            "AdamConfig",
            "lr",
            self.lr,
            "must be finite and > 0",
        )?;
        ensure(
            (0.0..1.0).contains(&self.beta1),
            "AdamConfig",
            "beta1",
            self.beta1,
            "must be in [0, 1)",
        )?;
        ensure(
            (0.0..1.0).contains(&self.beta2),
            "AdamConfig",
            "beta2",
            self.beta2,
            "must be in [0, 1)",
        )?;
        ensure(
            self.eps.is_finite() && self.eps > 0.0,
            "AdamConfig",
            "eps",
            self.eps,
            "must be finite and > 0",
        )?;
        ensure(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "AdamConfig",
            "weight_decay",
            self.weight_decay,
            "must be finite and ≥ 0",
        )
    }
}

/// One parameter and its optimiser state.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    step: u64,
}

/// Adam (Kingma & Ba 2015) as `torch.optim.Adam`/`AdamW` computes it:
///
/// m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
/// θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε).
///
/// On the CPU in `f32` the update runs as one fused kernel ([`fused`]), which stores a
/// moment that has decayed into the subnormal range (below 1.2·10⁻³⁸) as 0: the CPU
/// computes with subnormals some hundred times slower, and the step they would change
/// moves a parameter by ~10⁻³³.
#[derive(Debug)]
pub struct Adam {
    slots: Vec<Slot>,
    config: AdamConfig,
    /// Where [`backward_step`](Self::backward_step) has the fused kernels write gradients.
    sink: GradSink,
}

/// Metadata key under which [`Adam::save_state`] stores per-parameter step counts.
const STEPS_KEY: &str = "optimizer.adam.steps";

impl Adam {
    /// An optimiser over named parameters.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule.
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> crate::Result<Self> {
        config.validate()?;
        fused::prime_allocator();
        let slots = params
            .into_iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(name, var)| {
                // Two buffers: the fused step updates the moments in place.
                Ok(Slot {
                    name,
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    var,
                    step: 0,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let sink = GradSink::new(slots.iter().map(|slot| slot.var.as_tensor()));
        Ok(Self {
            slots,
            config,
            sink,
        })
    }

    /// An optimiser over every parameter of `store`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule.
    pub fn from_store(store: &ParamStore, config: AdamConfig) -> crate::Result<Self> {
        Self::new(store.named_vars()?, config)
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Steps taken (by the parameter updated most often).
    pub fn steps(&self) -> u64 {
        self.slots.iter().map(|s| s.step).max().unwrap_or(0)
    }

    /// Applies one update from `grads`; parameters without a gradient are left alone (and
    /// their step count does not advance), as in PyTorch.
    ///
    /// # Errors
    /// Only candle's own.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        update(&mut self.slots, &self.config, grads, None)
    }

    /// Computes the gradients of `loss` and applies one update.
    ///
    /// The same update as `step(&loss.backward()?)`, bit for bit, but faster on the CPU:
    /// the fused linear layers write their weight and bias gradients straight into
    /// buffers this optimiser keeps (one gradient's worth of memory per parameter, kept
    /// from step to step), instead of candle's fresh zero-filled tensors (`fused` module
    /// docs).
    ///
    /// # Errors
    /// Only candle's own.
    pub fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        let grads = self.sink.collect(|| loss.backward())?;
        update(&mut self.slots, &self.config, &grads, Some(&self.sink))
    }

    /// Writes the moments (as tensors `optimizer.adam.m.<name>`, `optimizer.adam.v.<name>`)
    /// and step counts (metadata) into `checkpoint`.
    ///
    /// # Errors
    /// Only serialisation errors.
    pub fn save_state(&self, checkpoint: &mut Checkpoint) -> crate::Result<()> {
        let mut steps = BTreeMap::new();
        for slot in &self.slots {
            // Copies: the fused step changes the moments in place.
            checkpoint.insert(format!("optimizer.adam.m.{}", slot.name), slot.m.copy()?);
            checkpoint.insert(format!("optimizer.adam.v.{}", slot.name), slot.v.copy()?);
            steps.insert(slot.name.clone(), slot.step);
        }
        checkpoint.set_json(STEPS_KEY, &steps)
    }

    /// Restores what [`save_state`](Self::save_state) wrote; nothing changes unless every
    /// parameter's state is present with the right shape.
    ///
    /// # Errors
    /// [`Error::MissingTensor`], [`Error::TensorShape`] or [`Error::Metadata`] naming the
    /// entry at fault.
    pub fn load_state(&mut self, checkpoint: &Checkpoint) -> crate::Result<()> {
        let steps: BTreeMap<String, u64> = checkpoint.json(STEPS_KEY)?;
        let mut restored = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let m = checkpoint.tensor_like(
                &format!("optimizer.adam.m.{}", slot.name),
                slot.var.as_tensor(),
            )?;
            let v = checkpoint.tensor_like(
                &format!("optimizer.adam.v.{}", slot.name),
                slot.var.as_tensor(),
            )?;
            let step = *steps.get(&slot.name).ok_or_else(|| Error::Metadata {
                path: checkpoint.source().to_path_buf(),
                key: STEPS_KEY.to_string(),
                reason: format!("no step count for `{}`", slot.name),
            })?;
            // Own buffers, not views of the checkpoint's (the fused step writes in place).
            restored.push((m.copy()?, v.copy()?, step));
        }
        for (slot, (m, v, step)) in self.slots.iter_mut().zip(restored) {
            slot.m = m;
            slot.v = v;
            slot.step = step;
        }
        Ok(())
    }
}

/// One Adam update of every slot with a gradient, in `grads` or written into `sink`
/// (the two added where a parameter has both); the others are left alone (and their step
/// count does not advance), as in PyTorch.
fn update(
    slots: &mut [Slot],
    config: &AdamConfig,
    grads: &GradStore,
    sink: Option<&GradSink>,
) -> candle_core::Result<()> {
    let AdamConfig {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decay_mode,
    } = *config;
    let (l2, decoupled) = match decay_mode {
        _ if weight_decay <= 0.0 => (None, None),
        WeightDecay::L2 => (Some(weight_decay), None),
        WeightDecay::Decoupled => (None, Some(weight_decay)),
    };
    for slot in slots {
        let theta = slot.var.as_tensor();
        let sunk = sink.and_then(|sink| sink.gradient(theta));
        // candle detaches the gradients of inner nodes but not of leaf variables: a
        // variable used directly by an op (a conv kernel) gets a gradient that still
        // references the forward graph. Moments built from it would chain every
        // step's graph to the next and leak it all.
        let stored = grads.get(&slot.var).map(Tensor::detach);
        let t = (slot.step + 1) as i32;
        let scalars = AdamScalars::new(lr, beta1, beta2, eps, l2, decoupled, t);
        let grad = match (sunk, stored) {
            (None, None) => continue,
            (None, Some(stored)) => stored,
            (Some(sunk), stored) => {
                if stored.is_none()
                    && fused::adam::try_step_with_buffer(
                        &slot.var, &slot.m, &slot.v, sunk, &scalars,
                    )?
                {
                    slot.step += 1;
                    continue;
                }
                let sunk = Tensor::from_slice(sunk, theta.shape(), theta.device())?;
                match stored {
                    Some(stored) => (sunk + stored)?,
                    None => sunk,
                }
            }
        };
        slot.step += 1;
        if fused::adam::try_step(&slot.var, &slot.m, &slot.v, &grad, &scalars)? {
            continue;
        }
        let grad = if let Some(l2) = l2 {
            (grad + (theta * l2)?)?
        } else {
            grad
        };
        slot.m = ((&slot.m * beta1)? + (&grad * (1.0 - beta1))?)?;
        slot.v = ((&slot.v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
        let step_size = lr / (1.0 - beta1.powi(t));
        let denom = ((slot.v.sqrt()? / (1.0 - beta2.powi(t)).sqrt())? + eps)?;
        let decayed = if let Some(decay) = decoupled {
            (theta * (1.0 - lr * decay))?
        } else {
            theta.clone()
        };
        slot.var
            .set(&(decayed - ((&slot.m / denom)? * step_size)?)?)?;
    }
    Ok(())
}

impl candle_nn::Optimizer for Adam {
    type Config = AdamConfig;

    /// Parameters are named `param.<index>` in the order given.
    fn new(vars: Vec<Var>, config: AdamConfig) -> candle_core::Result<Self> {
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("param.{i}"), v))
            .collect();
        Ok(Adam::new(named, config)?)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Adam::step(self, grads)
    }

    /// [`Adam::backward_step`], with its gradient buffers.
    fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        Adam::backward_step(self, loss)
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module};

    use super::*;
    use crate::layers::conv2d;

    /// A conv kernel's gradient references the forward graph (candle does not detach leaf
    /// gradients); the moments must not keep it, or memory grows with every step.
    #[test]
    fn moments_hold_no_graph_after_a_conv_step() -> crate::Result<()> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let config = candle_nn::Conv2dConfig::default();
        let first = conv2d(1, 2, 3, config, vb.pp("a"))?;
        let second = conv2d(2, 1, 3, config, vb.pp("b"))?;
        let xs = Tensor::ones((1, 1, 8, 8), DType::F32, &Device::Cpu)?;
        let loss = second
            .forward(&first.forward(&xs)?.relu()?)?
            .sqr()?
            .sum_all()?;
        let grads = loss.backward()?;
        let kernel = store
            .named_vars()?
            .into_iter()
            .find(|(name, _)| name == "b.weight")
            .map(|(_, var)| var)
            .ok_or_else(|| crate::Error::config("test", "b.weight", "missing", "exists"))?;
        let grad = grads
            .get(&kernel)
            .ok_or_else(|| crate::Error::config("test", "grad", "missing", "exists"))?;
        assert!(
            grad.track_op(),
            "premise: candle leaves this gradient attached"
        );

        let mut adam = Adam::from_store(&store, AdamConfig::default())?;
        adam.step(&grads)?;
        for slot in &adam.slots {
            assert!(
                !slot.m.track_op() && !slot.v.track_op(),
                "{} keeps a graph",
                slot.name
            );
        }
        Ok(())
    }
}
