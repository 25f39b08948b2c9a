//! The non-finite guard: a diverging run stops with the step named, and no NaN reaches
//! the parameters.
//!
//! The rules, in the order a training step meets them:
//!
//! 1. **The loss is checked before `backward`.** [`train_epoch`](crate::train::train_epoch)
//!    reads the step's loss; if it is NaN or infinite, training stops with
//!    [`Error::NonFinite`] naming the epoch, the step and the part at fault — the
//!    reconstruction term, the KL term, or (when both are finite) the loss itself — and
//!    neither `backward` nor the optimiser step runs.
//! 2. **Every gradient is checked before any parameter changes.** A finite loss can still
//!    have a non-finite gradient (√θ at θ = 0, an overflow inside `backward`). The crate's
//!    [`Adam`](crate::Adam) looks at all gradients first and refuses the whole step with
//!    [`Error::NonFiniteGradient`] naming the parameter (inside `train_epoch`, an
//!    [`Error::NonFinite`] with [`NonFinitePart::Gradient`]); its moments and step counts
//!    do not change either. Another `candle_nn::Optimizer` gets rule 1 only.
//! 3. **The learning rate is checked at every step.** `candle_nn::Optimizer::set_learning_rate`
//!    cannot return an error, so a NaN, infinite or non-positive rate set through it makes
//!    the next step fail with [`Error::InvalidConfig`] for `AdamConfig.lr`;
//!    [`Adam::try_set_learning_rate`](crate::Adam::try_set_learning_rate) refuses it at once.
//!
//! So after any of these errors the parameters are those after the last step that was
//! taken, and a checkpoint written then holds finite weights. [`check_parameters`] lets a
//! caller make sure of it before overwriting a good checkpoint.

use std::cell::RefCell;

use candle_core::{DType, Tensor, Var};

use crate::error::{Error, NonFinitePart, Result};
use crate::loss::Elbo;

/// Whether every value is finite (no NaN, no ±∞).
pub(crate) fn all_finite_f32(values: &[f32]) -> bool {
    // The largest magnitude's bit pattern is below the exponent-all-ones patterns of ∞ and
    // NaN; an integer max reduction vectorises (for the widest SIMD the CPU has, through
    // the fused kernels' dispatch), a short-circuiting `all` does not. Measured in
    // isolation: 0.08 ms for the MNIST model's 652,824 gradients built for this CPU,
    // 0.23 ms for baseline x86-64. Large buffers are scanned in chunks by the kernels'
    // threads: the scan runs between the backward pass and the update, where the other
    // threads would wait.
    let chunk_finite = |chunk: &[f32]| {
        crate::fused::math::vectorized(|| {
            chunk
                .iter()
                .fold(0u32, |acc, v| acc.max(v.to_bits() & 0x7fff_ffff))
                < 0x7f80_0000
        })
    };
    let chunks: Vec<&[f32]> = values.chunks(FINITE_SCAN_CHUNK).collect();
    match crate::fused::parallel::map_all(chunks, |chunk| Ok(chunk_finite(chunk))) {
        Ok(finite) => finite.into_iter().all(|f| f),
        // map_all fails only if a task did not run; scan on this thread instead.
        Err(_) => chunk_finite(values),
    }
}

/// Values per task of the parallel finiteness scan (256 KiB of `f32`).
const FINITE_SCAN_CHUNK: usize = 1 << 16;

/// The first value that is not finite.
pub(crate) fn first_non_finite_f32(values: &[f32]) -> Option<f32> {
    values.iter().copied().find(|v| !v.is_finite())
}

/// The first non-finite element of `tensor`, read in `f64` (a failure path: it copies).
pub(crate) fn first_non_finite(tensor: &Tensor) -> candle_core::Result<Option<f64>> {
    let values = tensor
        .detach()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok(values.into_iter().find(|v| !v.is_finite()))
}

/// A scalar tensor as `f64`.
fn scalar(value: &Tensor) -> candle_core::Result<f64> {
    value.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Rule 1 for one step: `Ok` if `loss` is finite; otherwise [`Error::NonFinite`] for
/// `epoch` and `step` (both counted from 1), blaming the reconstruction or KL term of
/// `parts()` (an ELBO of the same pass, computed only on this failure path) when one of
/// them is not finite, else the loss.
///
/// # Errors
/// [`Error::NonFinite`]; candle's error if `loss` cannot be read.
pub(crate) fn guard_step(
    loss: &Tensor,
    parts: impl FnOnce() -> candle_core::Result<Elbo>,
    epoch: usize,
    step: usize,
) -> Result<()> {
    let value = scalar(loss)?;
    if value.is_finite() {
        return Ok(());
    }
    let blame = |part, value| Error::NonFinite {
        epoch,
        step,
        part,
        value,
    };
    if let Ok(elbo) = parts() {
        for (part, tensor) in [
            (NonFinitePart::Reconstruction, &elbo.reconstruction),
            (NonFinitePart::Kl, &elbo.kl),
        ] {
            match scalar(tensor) {
                Ok(v) if !v.is_finite() => return Err(blame(part, v)),
                _ => {}
            }
        }
    }
    Err(blame(NonFinitePart::Loss, value))
}

thread_local! {
    /// Why this thread's last optimiser step was refused, typed. candle's error keeps
    /// only the message of an error it wraps (`Error::Wrapped` holds a `Display`), so
    /// [`refuse`] leaves the typed error here for [`step_error`] to pick up.
    static REFUSED: RefCell<Option<(String, Error)>> = const { RefCell::new(None) };
}

/// Forgets any refusal recorded on this thread (at the start of a step).
pub(crate) fn clear_refusal() {
    REFUSED.with(|r| r.borrow_mut().take());
}

/// The candle error an optimiser step returns when it refuses to run for `error`; the
/// typed error is kept for [`step_error`].
pub(crate) fn refuse(error: Error) -> candle_core::Error {
    let message = error.to_string();
    REFUSED.with(|r| *r.borrow_mut() = Some((message.clone(), error)));
    candle_core::Error::Msg(message)
}

/// The error of a refused optimiser step at `epoch`, `step` (both counted from 1): a
/// non-finite gradient becomes [`Error::NonFinite`] naming them, another refusal of this
/// crate's [`Adam`](crate::Adam) (a bad learning rate) comes out typed, anything else
/// stays candle's.
pub(crate) fn step_error(error: candle_core::Error, epoch: usize, step: usize) -> Error {
    let refused = REFUSED.with(|r| r.borrow_mut().take());
    match refused {
        Some((message, typed)) if error.to_string().contains(&message) => match typed {
            Error::NonFiniteGradient { parameter, value } => Error::NonFinite {
                epoch,
                step,
                part: NonFinitePart::Gradient { parameter },
                value,
            },
            other => other,
        },
        _ => Error::Candle(error),
    }
}

/// Checks that every parameter holds finite values, e.g. before a checkpoint replaces
/// the last good one.
///
/// # Errors
/// [`Error::NonFiniteParameter`] naming the first parameter at fault and a bad value;
/// candle's error if a tensor cannot be read.
pub fn check_parameters<'a>(params: impl IntoIterator<Item = (&'a str, &'a Var)>) -> Result<()> {
    for (name, var) in params {
        // One reduction per tensor: NaN·0 and ∞·0 are NaN, every finite x·0 is 0.
        let probe = (var.as_tensor().detach() * 0.0)?.sum_all()?;
        if !scalar(&probe)?.is_finite() {
            let value = first_non_finite(var.as_tensor())?.unwrap_or(f64::NAN);
            return Err(Error::NonFiniteParameter {
                name: name.to_string(),
                value,
            });
        }
    }
    Ok(())
}
