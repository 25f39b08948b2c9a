//! A fully connected layer `act(x·Wᵀ + b)` with the bias and ReLU fused, and a backward
//! without transposed copies.
//!
//! Plain candle computes `x.matmul(W.t()).broadcast_add(b).relu()` (three allocations and
//! passes) and, backwards, multiplies the gradient by a relu mask built in three more ops,
//! reduces the bias gradient in a separate pass, takes the product for W's gradient in the
//! transposed `(in, out)` layout and then adds that transposed view into W's gradient
//! (a strided, scalar copy), and computes the gradient of the input even when the input is
//! data. Here:
//!
//! * forward: one matrix product (candle's, on a transposed view), then one pass that adds
//!   the bias and applies ReLU;
//! * backward: one pass that masks the gradient and sums the bias gradient; ∂W = gᵀ·x
//!   straight into W's `(out, in)` layout; ∂x = g·W only if x needs a gradient.
//!
//! The ReLU gradient is taken as 0 where the output is 0, as PyTorch does (candle's
//! `relu` passes the gradient at exactly 0; the two differ only on that measure-zero set).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Module, Shape, Tensor, bail};
use candle_nn::Linear;

use super::math::vectorized;
use super::storage::{is_cpu_f32, slice, with_slice};
use crate::layers::Activation;

/// `activation(layer(x))`: the fused kernel where it applies (enabled, CPU, `f32`, `x` of
/// rank 2, a bias), candle's ops elsewhere. ReLU is fused; any other activation is applied
/// after the fused affine map.
///
/// # Shapes
/// `x`: `(N, in)` → `(N, out)` (other ranks take candle's path).
///
/// # Errors
/// If `x` does not fit the layer.
pub(crate) fn linear(
    x: &Tensor,
    layer: &Linear,
    activation: Option<Activation>,
) -> candle_core::Result<Tensor> {
    let w = layer.weight();
    let fused = match layer.bias() {
        Some(b)
            if super::fused_kernels().linear
                && x.rank() == 2
                && w.rank() == 2
                && b.rank() == 1
                && x.dim(1)? == w.dim(1)?
                && b.dim(0)? == w.dim(0)?
                && b.dim(0)? > 0
                && [x, w, b].iter().all(|t| is_cpu_f32(t)) =>
        {
            Some(b)
        }
        _ => None,
    };
    let Some(b) = fused else {
        let y = layer.forward(x)?;
        return match activation {
            Some(act) => act.forward(&y),
            None => Ok(y),
        };
    };
    let relu = activation == Some(Activation::Relu);
    let product = x.detach().matmul(&w.detach().t()?)?;
    let y = x.apply_op3(
        w,
        b,
        LinearOp {
            product: Mutex::new(Some(product)),
            relu,
        },
    )?;
    match activation {
        Some(act) if !relu => act.forward(&y),
        _ => Ok(y),
    }
}

/// `act(x·Wᵀ + b)` given the product x·Wᵀ, computed before the op runs.
struct LinearOp {
    /// x·Wᵀ, `(N, out)`, taken by the forward pass.
    product: Mutex<Option<Tensor>>,
    relu: bool,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "candle-vae-linear"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _x_l: &Layout,
        _w: &CpuStorage,
        _w_l: &Layout,
        b: &CpuStorage,
        b_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let product = match self.product.lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => bail!("candle-vae-linear: lock poisoned"),
        };
        let Some(product) = product else {
            bail!("candle-vae-linear: the forward pass ran twice")
        };
        let shape = product.shape().clone();
        let bias = slice(b, b_l)?;
        let out = with_slice(&product.contiguous()?, |xw| {
            Ok(bias_activation(xw, bias, self.relu))
        })?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (n, out) = grad.dims2()?;
        // One pass: the gradient before the activation, and its column sums (∂b).
        let (grad_pre, grad_b) = with_slice(&grad, |g| {
            if self.relu {
                with_slice(y, |y| {
                    let (masked, bias) = relu_backward(g, y, out);
                    Ok((Some(masked), bias))
                })
            } else {
                Ok((None, column_sums(g, out)))
            }
        })?;
        let grad_pre = match grad_pre {
            Some(masked) => Tensor::from_vec(masked, (n, out), &Device::Cpu)?,
            None => grad,
        };
        let grad_b = Tensor::from_vec(grad_b, out, &Device::Cpu)?;
        // ∂W = gᵀ·x lands in W's own (out, in) layout: no transposed copy to add.
        let grad_w = grad_pre.t()?.matmul(&x.detach())?;
        let grad_x = if x.track_op() {
            Some(grad_pre.matmul(&w.detach())?)
        } else {
            None
        };
        Ok((grad_x, Some(grad_w), Some(grad_b)))
    }
}

/// act(xw + b) row by row, `xw` `(N, out)` row-major, `bias` `(out,)`.
fn bias_activation(xw: &[f32], bias: &[f32], relu: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(xw.len());
    vectorized(
        #[inline(always)]
        || {
            for row in xw.chunks_exact(bias.len()) {
                let biased = row.iter().zip(bias).map(|(v, b)| v + b);
                if relu {
                    out.extend(biased.map(|v| v.max(0.0)));
                } else {
                    out.extend(biased);
                }
            }
        },
    );
    out
}

/// The gradient before a ReLU (zero where the output is zero) and its column sums.
fn relu_backward(grad: &[f32], y: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    let mut masked = vec![0f32; grad.len()];
    let mut sums = vec![0f32; width];
    vectorized(
        #[inline(always)]
        || {
            let rows = masked
                .chunks_exact_mut(width)
                .zip(grad.chunks_exact(width))
                .zip(y.chunks_exact(width));
            for ((m_row, g_row), y_row) in rows {
                let lanes = m_row.iter_mut().zip(g_row).zip(y_row).zip(sums.iter_mut());
                for (((m, &g), &y), sum) in lanes {
                    let g = if y > 0.0 { g } else { 0.0 };
                    *m = g;
                    *sum += g;
                }
            }
        },
    );
    (masked, sums)
}

/// Σ over rows of a row-major `(N, width)` matrix.
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    let mut sums = vec![0f32; width];
    vectorized(
        #[inline(always)]
        || {
            for row in values.chunks_exact(width) {
                for (sum, &v) in sums.iter_mut().zip(row) {
                    *sum += v;
                }
            }
        },
    );
    sums
}
