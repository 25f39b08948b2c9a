//! Parameter gradients written straight into buffers the optimiser keeps from step to step.
//!
//! candle's backward pass gives every gradient a fresh zero-filled tensor and adds the op's
//! gradient into it (`zeros_like` + `add`): for the MNIST VAE's two 784×400 weight matrices
//! that is, every step, two allocations, a zero-fill on the calling thread and an addition,
//! on top of the fused linear layer's own fresh ∂W buffer.
//!
//! During [`Adam::backward_step`](crate::Adam::backward_step) a [`GradSink`] holding one
//! buffer per parameter is installed on the calling thread (candle runs a backward pass
//! on the thread that calls it). The fused linear layer asks it for the buffer of its
//! weight ([`take`]) and writes ∂W there — overwriting the last step's values, or adding
//! to this step's if the parameter is used twice — and puts its computed ∂b into the
//! bias's ([`deposit`]); the fused conv layers deposit both ∂W and ∂b. candle gets no
//! gradient for either. The optimiser then reads the buffer. Anywhere else (a plain
//! `loss.backward()`, a parameter the optimiser does not hold, a layer on another device)
//! nothing is installed or taken, and the gradient goes to candle as usual.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{Device, Tensor, TensorId};

thread_local! {
    static ACTIVE: RefCell<Option<GradSink>> = const { RefCell::new(None) };
}

/// One gradient buffer per parameter, and which were written in the current pass.
#[derive(Default)]
pub(crate) struct GradSink {
    slots: HashMap<TensorId, Slot>,
}

impl std::fmt::Debug for GradSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradSink")
            .field("parameters", &self.slots.len())
            .finish()
    }
}

struct Slot {
    /// Allocated (zero-filled) when first taken, then reused.
    values: Vec<f32>,
    /// The parameter's element count.
    len: usize,
    /// Whether `values` holds a gradient from the current pass.
    written: bool,
}

impl GradSink {
    /// A sink for the parameters `params` (CPU `f32` tensors; others are left out).
    pub(crate) fn new<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Self {
        let slots = params
            .into_iter()
            .filter(|t| super::storage::is_cpu_f32(t))
            .map(|t| {
                let slot = Slot {
                    values: Vec::new(),
                    len: t.elem_count(),
                    written: false,
                };
                (t.id(), slot)
            })
            .collect();
        Self { slots }
    }

    /// Runs `backward` with the sink installed on this thread, every buffer marked
    /// unwritten first; the sink is uninstalled afterwards (also if `backward` panics).
    pub(crate) fn collect<R>(&mut self, backward: impl FnOnce() -> R) -> R {
        /// Takes the sink back into its owner and reinstalls whatever was there before.
        struct Uninstall<'s> {
            owner: &'s mut GradSink,
            previous: Option<GradSink>,
        }
        impl Drop for Uninstall<'_> {
            fn drop(&mut self) {
                let ours = ACTIVE.with(|a| a.replace(self.previous.take()));
                if let Some(sink) = ours {
                    *self.owner = sink;
                }
            }
        }
        if self.slots.is_empty() {
            return backward();
        }
        for slot in self.slots.values_mut() {
            slot.written = false;
        }
        let previous = ACTIVE.with(|a| a.replace(Some(std::mem::take(self))));
        let _uninstall = Uninstall {
            owner: self,
            previous,
        };
        backward()
    }

    /// The gradient written for `param` in the last [`collect`](Self::collect), if any.
    pub(crate) fn gradient(&self, param: &Tensor) -> Option<&[f32]> {
        self.slots
            .get(&param.id())
            .filter(|slot| slot.written && slot.values.len() == slot.len)
            .map(|slot| slot.values.as_slice())
    }
}

/// A parameter's gradient buffer, taken out of the installed sink by a kernel.
pub(crate) struct Taken {
    id: TensorId,
    /// The buffer, of the parameter's element count.
    pub(crate) values: Vec<f32>,
    /// Whether it already holds a gradient from this pass (add to it) or a stale one
    /// (overwrite it).
    pub(crate) accumulate: bool,
}

/// The buffer for `param`'s gradient, if a sink is installed on this thread and holds
/// `param`. Give it back with [`give_back`] once written; a buffer not given back (an
/// error on the way) leaves the parameter without a sunk gradient this pass.
pub(crate) fn take(param: &Tensor) -> Option<Taken> {
    ACTIVE.with(|active| {
        let mut active = active.borrow_mut();
        let slot = active.as_mut()?.slots.get_mut(&param.id())?;
        let mut values = std::mem::take(&mut slot.values);
        if values.len() != slot.len {
            values = vec![0.0; slot.len];
            slot.written = false;
        }
        Some(Taken {
            id: param.id(),
            values,
            accumulate: slot.written,
        })
    })
}

/// Puts a buffer taken with [`take`] back, now holding the gradient.
pub(crate) fn give_back(taken: Taken) {
    ACTIVE.with(|active| {
        let mut active = active.borrow_mut();
        if let Some(slot) = active.as_mut().and_then(|s| s.slots.get_mut(&taken.id)) {
            slot.values = taken.values;
            slot.written = true;
        }
    });
}

/// Adds `gradient` into `param`'s buffer (copies it, if it is the first this pass), if a
/// sink is installed on this thread and holds `param`; `Ok(false)`, doing nothing, if not.
///
/// # Errors
/// If `gradient` is not of `param`'s size.
pub(crate) fn deposit(param: &Tensor, gradient: &[f32]) -> candle_core::Result<bool> {
    let Some(mut taken) = take(param) else {
        return Ok(false);
    };
    if taken.values.len() != gradient.len() {
        candle_core::bail!(
            "gradient sink: {} values for a parameter of {}",
            gradient.len(),
            taken.values.len()
        )
    }
    if taken.accumulate {
        taken
            .values
            .iter_mut()
            .zip(gradient)
            .for_each(|(s, g)| *s += g);
    } else {
        taken.values.copy_from_slice(gradient);
    }
    give_back(taken);
    Ok(true)
}

/// `gradient` into `param`'s buffer as [`deposit`] does (`Ok(None)`: candle gets no
/// gradient), or, where no sink holds `param`, the gradient as a tensor of `param`'s
/// shape for candle's store.
///
/// # Errors
/// If `gradient` is not of `param`'s size.
pub(crate) fn deposit_or_tensor(
    param: &Tensor,
    gradient: Vec<f32>,
) -> candle_core::Result<Option<Tensor>> {
    if deposit(param, &gradient)? {
        Ok(None)
    } else {
        Tensor::from_vec(gradient, param.shape(), &Device::Cpu).map(Some)
    }
}
