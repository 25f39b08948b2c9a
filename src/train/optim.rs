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
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, ensure};
use crate::finite;
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
///
/// # State by name
/// [`save_state`](Self::save_state) and [`load_state`](Self::load_state) key the moments
/// and step counts by parameter name, and loading checks that the names match exactly.
/// [`Adam::new`], [`Adam::from_store`] and [`Adam::from_varmap`] know the names; an `Adam`
/// built through `candle_nn::Optimizer::new` gets bare `Var`s, in an order that is not
/// stable across processes (`VarMap::all_vars` is a `HashMap`'s), so it refuses to save
/// or load state ([`Error::UnnamedParameters`]) until [`name_vars`](Self::name_vars)
/// has matched its `Var`s to their names in a `VarMap`.
///
/// # Non-finite values
/// A step looks at every gradient before it changes anything: one that holds a NaN or an
/// infinity refuses the whole step ([`Error::NonFiniteGradient`]); so does a learning
/// rate that is not finite and positive (set through `candle_nn::Optimizer::set_learning_rate`,
/// which cannot return an error). See [`finite`].
#[derive(Debug)]
pub struct Adam {
    slots: Vec<Slot>,
    /// Whether the slots carry positional names (`param.<i>`) only.
    unnamed: bool,
    config: AdamConfig,
    /// Where [`backward_step`](Self::backward_step) has the fused kernels write gradients.
    sink: GradSink,
}

/// Metadata key under which [`Adam::save_state`] stores per-parameter step counts.
const STEPS_KEY: &str = "optimizer.adam.steps";
/// Prefix of the first moments' tensor names in a checkpoint.
const MOMENT_M: &str = "optimizer.adam.m.";
/// Prefix of the second moments' tensor names in a checkpoint.
const MOMENT_V: &str = "optimizer.adam.v.";

/// The rule of `AdamConfig.lr`, checked at every step.
fn check_lr(lr: f64) -> crate::Result<()> {
    ensure(
        lr.is_finite() && lr > 0.0,
        "AdamConfig",
        "lr",
        lr,
        "must be finite and > 0",
    )
}

/// Every variable of `varmap` with its name, sorted by name.
fn named_vars(varmap: &candle_nn::VarMap) -> crate::Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

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
            unnamed: false,
            config,
            sink,
        })
    }

    /// An optimiser over every parameter of `varmap`, named as in it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the config breaks a rule.
    pub fn from_varmap(varmap: &candle_nn::VarMap, config: AdamConfig) -> crate::Result<Self> {
        Self::new(named_vars(varmap)?, config)
    }

    /// Names the parameters of an optimiser built through `candle_nn::Optimizer::new` by
    /// finding each of its `Var`s (by identity, not value) in `varmap`, so that its state
    /// can be saved and restored by name. On error nothing changes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying how many of the optimiser's `Var`s `varmap` lacks.
    pub fn name_vars(&mut self, varmap: &candle_nn::VarMap) -> crate::Result<()> {
        let by_id: std::collections::HashMap<_, _> = named_vars(varmap)?
            .into_iter()
            .map(|(name, var)| (var.as_tensor().id(), name))
            .collect();
        let names = self
            .slots
            .iter()
            .map(|slot| by_id.get(&slot.var.as_tensor().id()).cloned())
            .collect::<Vec<_>>();
        let unknown = names.iter().filter(|n| n.is_none()).count();
        ensure(
            unknown == 0,
            "Adam::name_vars",
            "varmap",
            format!(
                "{unknown} of the optimiser's {} Vars missing",
                self.slots.len()
            ),
            "must hold every Var the optimiser was built with",
        )?;
        for (slot, name) in self.slots.iter_mut().zip(names.into_iter().flatten()) {
            slot.name = name;
        }
        self.unnamed = false;
        Ok(())
    }

    /// Sets the learning rate, refusing one that is not finite and positive (the rule of
    /// [`AdamConfig::validate`]); the rate is unchanged on error.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for `AdamConfig.lr`.
    pub fn try_set_learning_rate(&mut self, lr: f64) -> crate::Result<()> {
        check_lr(lr)?;
        self.config.lr = lr;
        Ok(())
    }

    /// [`Error::UnnamedParameters`] unless every parameter has a name.
    fn ensure_named(&self) -> crate::Result<()> {
        if self.unnamed {
            Err(Error::UnnamedParameters {
                count: self.slots.len(),
            })
        } else {
            Ok(())
        }
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
    /// [`Error::InvalidConfig`] for a learning rate that is not finite and positive,
    /// [`Error::NonFiniteGradient`] for a gradient holding a NaN or an infinity (inside
    /// candle's error); nothing changes then.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        finite::clear_refusal();
        check_lr(self.config.lr).map_err(finite::refuse)?;
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
    /// As [`step`](Self::step); the learning rate is checked before `backward` runs.
    pub fn backward_step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        finite::clear_refusal();
        check_lr(self.config.lr).map_err(finite::refuse)?;
        let grads = self.sink.collect(|| loss.backward())?;
        update(&mut self.slots, &self.config, &grads, Some(&self.sink))
    }

    /// Writes the moments (as tensors `optimizer.adam.m.<name>`, `optimizer.adam.v.<name>`)
    /// and step counts (metadata) into `checkpoint`.
    ///
    /// # Errors
    /// [`Error::UnnamedParameters`] for an optimiser built through
    /// `candle_nn::Optimizer::new` whose `Var`s were not named ([`name_vars`](Self::name_vars));
    /// serialisation errors.
    pub fn save_state(&self, checkpoint: &mut Checkpoint) -> crate::Result<()> {
        self.ensure_named()?;
        let mut steps = BTreeMap::new();
        for slot in &self.slots {
            // Copies: the fused step changes the moments in place.
            checkpoint.insert(format!("{MOMENT_M}{}", slot.name), slot.m.copy()?);
            checkpoint.insert(format!("{MOMENT_V}{}", slot.name), slot.v.copy()?);
            steps.insert(slot.name.clone(), slot.step);
        }
        checkpoint.set_json(STEPS_KEY, &steps)
    }

    /// Restores what [`save_state`](Self::save_state) wrote, matching parameters by name;
    /// nothing changes unless the saved state covers exactly this optimiser's parameters,
    /// each with the right shape.
    ///
    /// # Errors
    /// [`Error::UnnamedParameters`] as for [`save_state`](Self::save_state);
    /// [`Error::OptimizerStateMismatch`] listing the parameters without saved state and
    /// the saved ones this optimiser does not hold; [`Error::MissingTensor`],
    /// [`Error::TensorShape`] or [`Error::Metadata`] naming the entry at fault.
    pub fn load_state(&mut self, checkpoint: &Checkpoint) -> crate::Result<()> {
        let restored = self.restored_slots(checkpoint)?;
        for (slot, (m, v, step)) in self.slots.iter_mut().zip(restored) {
            slot.m = m;
            slot.v = v;
            slot.step = step;
        }
        Ok(())
    }

    /// The moments and step counts [`load_state`](Self::load_state) would set, every
    /// rule checked, nothing changed.
    fn restored_slots(&self, checkpoint: &Checkpoint) -> crate::Result<Vec<(Tensor, Tensor, u64)>> {
        self.ensure_named()?;
        let steps: BTreeMap<String, u64> = checkpoint.json(STEPS_KEY)?;
        let ours: std::collections::BTreeSet<&str> =
            self.slots.iter().map(|s| s.name.as_str()).collect();
        let saved: std::collections::BTreeSet<&str> = steps
            .keys()
            .map(String::as_str)
            .chain(checkpoint.tensors().keys().filter_map(|k| {
                k.strip_prefix(MOMENT_M)
                    .or_else(|| k.strip_prefix(MOMENT_V))
            }))
            .collect();
        if ours != saved {
            return Err(Error::OptimizerStateMismatch {
                path: checkpoint.source().to_path_buf(),
                missing: ours.difference(&saved).map(|s| s.to_string()).collect(),
                unexpected: saved.difference(&ours).map(|s| s.to_string()).collect(),
            });
        }
        let mut restored = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let m = checkpoint
                .tensor_like(&format!("{MOMENT_M}{}", slot.name), slot.var.as_tensor())?;
            let v = checkpoint
                .tensor_like(&format!("{MOMENT_V}{}", slot.name), slot.var.as_tensor())?;
            let step = *steps.get(&slot.name).ok_or_else(|| Error::Metadata {
                path: checkpoint.source().to_path_buf(),
                key: STEPS_KEY.to_string(),
                reason: format!("no step count for `{}`", slot.name),
            })?;
            // The bias corrections raise β to the power t = step + 1 as an i32.
            if step >= i32::MAX as u64 {
                return Err(Error::Metadata {
                    path: checkpoint.source().to_path_buf(),
                    key: STEPS_KEY.to_string(),
                    reason: format!(
                        "step count {step} for `{}` is beyond the {} steps Adam can count",
                        slot.name,
                        i32::MAX - 1
                    ),
                });
            }
            // Own buffers, not views of the checkpoint's (the fused step writes in place).
            restored.push((m.copy()?, v.copy()?, step));
        }
        Ok(restored)
    }
}

/// An optimiser whose state can go into a [`Checkpoint`], so that a resumed run repeats
/// the uninterrupted one bit for bit.
///
/// Implemented for this crate's [`Adam`] (its moments and step counts, keyed by
/// parameter name) and for candle's `SGD` (which has no state). candle-nn 0.11's `AdamW`
/// keeps its moments private, so it cannot implement it: train with it, but resume with
/// [`Adam`] configured as AdamW ([`WeightDecay::Decoupled`]) where resumes must be exact.
pub trait OptimizerState {
    /// Writes the state into `checkpoint`.
    ///
    /// # Errors
    /// If the state cannot be written.
    fn save_state(&self, checkpoint: &mut Checkpoint) -> crate::Result<()>;

    /// Checks that `checkpoint` holds a state this optimiser can load, changing nothing.
    ///
    /// # Errors
    /// Naming what does not fit.
    fn check_state(&self, checkpoint: &Checkpoint) -> crate::Result<()>;

    /// Restores the state; nothing changes on error.
    ///
    /// # Errors
    /// As [`check_state`](Self::check_state).
    fn load_state(&mut self, checkpoint: &Checkpoint) -> crate::Result<()>;
}

impl OptimizerState for Adam {
    fn save_state(&self, checkpoint: &mut Checkpoint) -> crate::Result<()> {
        Adam::save_state(self, checkpoint)
    }

    fn check_state(&self, checkpoint: &Checkpoint) -> crate::Result<()> {
        self.restored_slots(checkpoint).map(|_| ())
    }

    fn load_state(&mut self, checkpoint: &Checkpoint) -> crate::Result<()> {
        Adam::load_state(self, checkpoint)
    }
}

impl OptimizerState for candle_nn::SGD {
    fn save_state(&self, _checkpoint: &mut Checkpoint) -> crate::Result<()> {
        Ok(())
    }

    fn check_state(&self, _checkpoint: &Checkpoint) -> crate::Result<()> {
        Ok(())
    }

    fn load_state(&mut self, _checkpoint: &Checkpoint) -> crate::Result<()> {
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
    check_gradients(slots, grads, sink)?;
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

/// Looks at every gradient an [`update`] would apply, before it changes anything:
/// [`Error::NonFiniteGradient`] for the first parameter whose gradient (in `grads`, in
/// `sink`, or their sum) holds a NaN or an infinity.
fn check_gradients(
    slots: &[Slot],
    grads: &GradStore,
    sink: Option<&GradSink>,
) -> candle_core::Result<()> {
    let bad = |slot: &Slot, value: f64| -> candle_core::Error {
        finite::refuse(Error::NonFiniteGradient {
            parameter: slot.name.clone(),
            value,
        })
    };
    // Buffers of the fused layers: a scan of host memory each.
    for slot in slots {
        if let Some(sunk) = sink.and_then(|sink| sink.gradient(slot.var.as_tensor())) {
            if !finite::all_finite_f32(sunk) {
                let value = finite::first_non_finite_f32(sunk).unwrap_or(f32::NAN);
                return Err(bad(slot, f64::from(value)));
            }
        }
    }
    // candle's gradients: Σ g·0 is NaN exactly when g holds a NaN or an infinity; one
    // read for all of them (one device sync), then a search only if one is bad.
    let stored: Vec<(&Slot, &Tensor)> = slots
        .iter()
        .filter_map(|slot| grads.get(&slot.var).map(|g| (slot, g)))
        .collect();
    if stored.is_empty() {
        return Ok(());
    }
    let probes = stored
        .iter()
        .map(|(_, g)| (g.detach() * 0.0)?.sum_all()?.to_dtype(DType::F64))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let sums = Tensor::stack(&probes, 0)?.to_vec1::<f64>()?;
    for ((slot, grad), sum) in stored.iter().zip(sums) {
        if !sum.is_finite() {
            let value = finite::first_non_finite(grad)?.unwrap_or(f64::NAN);
            return Err(bad(slot, value));
        }
    }
    Ok(())
}

impl candle_nn::Optimizer for Adam {
    type Config = AdamConfig;

    /// The parameters have no names: they are called `param.<index>` in the order given,
    /// which is not stable across processes, so the state cannot be saved or loaded until
    /// [`Adam::name_vars`] names them (see [State by name](Adam#state-by-name)).
    fn new(vars: Vec<Var>, config: AdamConfig) -> candle_core::Result<Self> {
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("param.{i}"), v))
            .collect();
        let mut adam = Adam::new(named, config)?;
        adam.unnamed = true;
        Ok(adam)
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

    /// Sets the rate as given: this method cannot return an error, so a rate that is not
    /// finite and positive makes the next step fail instead ([`Adam::try_set_learning_rate`]
    /// refuses it at once).
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
