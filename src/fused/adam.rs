//! The Adam update in place: one threaded pass over θ, g, m and v.
//!
//! candle's in-place ops give mutable access to one tensor at a time, and Adam changes
//! three (θ, m, v). The kernel nests three of them: the op on θ runs the op on m, which
//! runs the op on v, which finally holds the three buffers and the gradient (read from its
//! tensor, or from the optimiser's own buffer, `super::sink`) and updates them together.
//! Each tensor is locked once, in a fixed order, and the four are checked to be distinct
//! buffers first, so the nesting cannot deadlock or alias.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor, Var};

use super::math::vectorized;
use super::parallel::for_each;
use super::storage::{is_cpu_f32, shares_storage, slice_mut, with_slice};

/// Elements per parallel task: 16 KiB of each buffer, so that the MNIST model's 8,000-value
/// layers are split over two threads too.
const CHUNK: usize = 1 << 12;

/// The scalars of one Adam step for one parameter, as `f32`s rounded the way the plain
/// candle path rounds them (its `tensor * f64` multiplies by the `f32` of the factor).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamScalars {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// 1 / √(1 − β₂ᵗ).
    inv_sqrt_bias2: f32,
    eps: f32,
    /// lr / (1 − β₁ᵗ).
    step_size: f32,
    /// λ of the L2 penalty added to the gradient, if any.
    l2: Option<f32>,
    /// 1 − lr·λ of decoupled decay, if any.
    decay: Option<f32>,
}

impl AdamScalars {
    /// The scalars of step `t` (counted from 1). `l2` and `decoupled` are the weight decay
    /// λ of either mode (at most one is non-zero).
    pub(crate) fn new(
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        l2: Option<f64>,
        decoupled: Option<f64>,
        t: i32,
    ) -> Self {
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - beta2.powi(t)).sqrt()) as f32,
            eps: eps as f32,
            step_size: (lr / (1.0 - beta1.powi(t))) as f32,
            l2: l2.map(|wd| wd as f32),
            decay: decoupled.map(|wd| (1.0 - lr * wd) as f32),
        }
    }
}

/// Applies one Adam step to `var` with gradient `grad` and moments `m`, `v`, in place, if
/// the fused kernel applies (enabled, CPU, `f32`, contiguous, distinct buffers). Returns
/// `false`, changing nothing, where it does not.
///
/// # Errors
/// Only candle's own.
pub(crate) fn try_step(
    var: &Var,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    scalars: &AdamScalars,
) -> candle_core::Result<bool> {
    let theta = var.as_tensor();
    if !applies(theta, m, v) || !is_cpu_f32(grad) || grad.shape() != theta.shape() {
        return Ok(false);
    }
    let grad = grad.contiguous()?;
    if [theta, m, v].iter().any(|t| shares_storage(t, &grad)) {
        return Ok(false);
    }
    with_slice(&grad, |grad| step_in_place(theta, m, v, grad, scalars))?;
    Ok(true)
}

/// [`try_step`] with the gradient in a buffer of its own (a [`GradSink`]'s).
///
/// [`GradSink`]: super::sink::GradSink
///
/// # Errors
/// Only candle's own.
pub(crate) fn try_step_with_buffer(
    var: &Var,
    m: &Tensor,
    v: &Tensor,
    grad: &[f32],
    scalars: &AdamScalars,
) -> candle_core::Result<bool> {
    let theta = var.as_tensor();
    if !applies(theta, m, v) || grad.len() != theta.elem_count() {
        return Ok(false);
    }
    step_in_place(theta, m, v, grad, scalars)?;
    Ok(true)
}

/// Whether the kernel can update θ, m and v: enabled, CPU `f32`, contiguous, one shape,
/// three distinct buffers.
fn applies(theta: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    super::fused_kernels().adam
        && [theta, m, v]
            .iter()
            .all(|t| is_cpu_f32(t) && t.is_contiguous() && t.shape() == theta.shape())
        && !shares_storage(theta, m)
        && !shares_storage(theta, v)
        && !shares_storage(m, v)
}

fn step_in_place(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &[f32],
    scalars: &AdamScalars,
) -> candle_core::Result<()> {
    theta.inplace_op1(&OnParam {
        grad,
        m,
        v,
        scalars: *scalars,
    })
}

/// Holds θ (mutably) and g; runs [`OnFirstMoment`] on m.
struct OnParam<'a> {
    grad: &'a [f32],
    m: &'a Tensor,
    v: &'a Tensor,
    scalars: AdamScalars,
}

impl InplaceOp1 for OnParam<'_> {
    fn name(&self) -> &'static str {
        "candle-vae-adam"
    }

    fn cpu_fwd(&self, theta: &mut CpuStorage, theta_l: &Layout) -> candle_core::Result<()> {
        self.m.inplace_op1(&OnFirstMoment {
            theta: RefCell::new(slice_mut(theta, theta_l)?),
            grad: self.grad,
            v: self.v,
            scalars: self.scalars,
        })
    }
}

/// Holds θ, g and m; runs [`OnSecondMoment`] on v.
struct OnFirstMoment<'a> {
    theta: RefCell<&'a mut [f32]>,
    grad: &'a [f32],
    v: &'a Tensor,
    scalars: AdamScalars,
}

impl InplaceOp1 for OnFirstMoment<'_> {
    fn name(&self) -> &'static str {
        "candle-vae-adam-m"
    }

    fn cpu_fwd(&self, m: &mut CpuStorage, m_l: &Layout) -> candle_core::Result<()> {
        let mut theta = self.theta.borrow_mut();
        self.v.inplace_op1(&OnSecondMoment {
            theta: RefCell::new(&mut **theta),
            grad: self.grad,
            m: RefCell::new(slice_mut(m, m_l)?),
            scalars: self.scalars,
        })
    }
}

/// Holds all four buffers and runs the update.
struct OnSecondMoment<'a> {
    theta: RefCell<&'a mut [f32]>,
    grad: &'a [f32],
    m: RefCell<&'a mut [f32]>,
    scalars: AdamScalars,
}

impl InplaceOp1 for OnSecondMoment<'_> {
    fn name(&self) -> &'static str {
        "candle-vae-adam-v"
    }

    fn cpu_fwd(&self, v: &mut CpuStorage, v_l: &Layout) -> candle_core::Result<()> {
        let mut theta = self.theta.borrow_mut();
        let mut m = self.m.borrow_mut();
        let v = slice_mut(v, v_l)?;
        update(&mut theta, self.grad, &mut m, v, &self.scalars)
    }
}

/// Matching chunks of θ, g, m and v.
type Chunk<'a> = ((&'a mut [f32], &'a [f32]), (&'a mut [f32], &'a mut [f32]));

/// θ, m, v ← Adam(θ, g, m, v), chunked over threads.
fn update(
    theta: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamScalars,
) -> candle_core::Result<()> {
    let run = |((theta, grad), (m, v)): Chunk<'_>| {
        vectorized(
            #[inline(always)]
            || match (s.l2, s.decay) {
                (None, None) => update_chunk::<false, false>(theta, grad, m, v, s),
                (Some(_), None) => update_chunk::<true, false>(theta, grad, m, v, s),
                (None, Some(_)) => update_chunk::<false, true>(theta, grad, m, v, s),
                (Some(_), Some(_)) => update_chunk::<true, true>(theta, grad, m, v, s),
            },
        )
    };
    // A parameter of at most one chunk is one task, which runs on the calling thread.
    let chunks = theta
        .chunks_mut(CHUNK)
        .zip(grad.chunks(CHUNK))
        .zip(m.chunks_mut(CHUNK).zip(v.chunks_mut(CHUNK)));
    for_each(chunks.collect(), run)
}

/// `x`, or 0 where `x` is subnormal (|x| < 2⁻¹²⁶ ≈ 1.2·10⁻³⁸).
///
/// A moment that stops receiving gradient decays geometrically (v by β₂ = 0.999 a step)
/// and spends thousands of steps in the subnormal range, where every multiplication by
/// it costs the CPU a microcode assist of some hundred cycles: after 3,000 MNIST steps the
/// update of the first layer's weights took 9× as long as at the start (1.23 ms instead of
/// 0.14 ms; docs/PERFORMANCE.md §5). Storing such a moment as 0 changes the next step's
/// update by at most `step_size · 1.2·10⁻³⁸ / ε`, some 10⁻³³ at the defaults: far below
/// the resolution of an `f32` parameter. This step's update uses the exact moments.
#[inline(always)]
fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

/// The update of one chunk, in the plain path's order of operations:
/// g ← g + λθ (L2); m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
/// θ ← θ(1 − lr·λ) (decoupled) − step_size · m / (√v / √(1 − β₂ᵗ) + ε).
#[inline(always)]
fn update_chunk<const L2: bool, const DECOUPLED: bool>(
    theta: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: &AdamScalars,
) {
    let l2 = s.l2.unwrap_or(0.0);
    let decay = s.decay.unwrap_or(1.0);
    let n = theta.len().min(grad.len()).min(m.len()).min(v.len());
    let (theta, grad, m, v) = (&mut theta[..n], &grad[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let p = theta[i];
        let g = if L2 { grad[i] + p * l2 } else { grad[i] };
        let mi = m[i] * s.beta1 + g * s.one_minus_beta1;
        let vi = v[i] * s.beta2 + (g * g) * s.one_minus_beta2;
        let denom = vi.sqrt() * s.inv_sqrt_bias2 + s.eps;
        let p = if DECOUPLED { p * decay } else { p };
        theta[i] = p - (mi / denom) * s.step_size;
        m[i] = flush_subnormal(mi);
        v[i] = flush_subnormal(vi);
    }
}
