//! A fully connected layer `act(x·Wᵀ + b)` with the bias and ReLU fused, and a backward
//! without transposed copies.
//!
//! Plain candle computes `x.matmul(W.t()).broadcast_add(b).relu()` (three allocations and
//! passes, one of them zero-filling the product) and, backwards, multiplies the gradient
//! by a relu mask built in three more ops, reduces the bias gradient in a separate pass,
//! takes the product for W's gradient in the transposed `(in, out)` layout and then adds
//! that transposed view into W's gradient (a strided, scalar copy), and computes the
//! gradient of the input even when the input is data. Here:
//!
//! * forward: the output buffer is filled with the bias rows and the product `x·Wᵀ` is
//!   accumulated onto it, then ReLU applied, block by block of output columns;
//! * backward: one pass masks the gradient and sums the bias gradient; ∂W = gᵀ·x is
//!   written straight in W's `(out, in)` layout; ∂x = g·W only if x needs a gradient.
//!
//! The products run in blocks (of output columns forwards, of rows backwards) that the
//! threads take one at a time (`super::parallel`), each block one single-threaded `gemm`.
//!
//! The ReLU gradient is taken as 0 where the output is 0, as PyTorch does (candle's
//! `relu` passes the gradient at exactly 0; the two differ only on that measure-zero set).

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Module, Shape, Tensor, bail};
use candle_nn::Linear;

use super::gemm::{MatMut, MatRef, matmul};
use super::math::{relu_gradient, vectorized};
use super::parallel::{PRODUCT_BLOCKS_PER_THREAD, blocks_for, run_all};
use super::sink;
use super::storage::{is_cpu_f32, slice, with_slice};
use crate::ops::Activation;

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
                && w.is_contiguous()
                && b.is_contiguous()
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
    super::prime_allocator();
    let relu = activation == Some(Activation::Relu);
    let y = x.contiguous()?.apply_op3(w, b, LinearOp { relu })?;
    match activation {
        Some(act) if !relu => act.forward(&y),
        _ => Ok(y),
    }
}

/// Width of the blocks to cut `extent` rows or columns of a product of `flops`
/// multiply-adds into: a multiple of 16 (one AVX-512 register of `f32`), all of `extent`
/// on a single thread or for a small product.
fn block_width(flops: usize, extent: usize) -> usize {
    let blocks = blocks_for(flops, extent.div_ceil(16), PRODUCT_BLOCKS_PER_THREAD);
    extent.div_ceil(blocks).div_ceil(16) * 16
}

/// `act(x·Wᵀ + b)`.
struct LinearOp {
    relu: bool,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "candle-vae-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
        b: &CpuStorage,
        b_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, fan_in) = x_l.shape().dims2()?;
        let (fan_out, _) = w_l.shape().dims2()?;
        let x = MatRef::row_major(slice(x, x_l)?, n, fan_in)?;
        let w = MatRef::row_major(slice(w, w_l)?, fan_out, fan_in)?;
        let bias = slice(b, b_l)?;
        if bias.len() != fan_out {
            bail!(
                "candle-vae-linear: bias of {} for {fan_out} outputs",
                bias.len()
            )
        }
        let mut out = Vec::with_capacity(n * fan_out);
        for _ in 0..n {
            out.extend_from_slice(bias);
        }
        let width = block_width(n * fan_in * fan_out, fan_out);
        let tasks = MatMut::row_major(&mut out, n, fan_out)?.col_blocks(width)?;
        let relu = self.relu;
        run_all(tasks, |(start, mut block)| {
            let cols = w.t().cols(start..start + block.cols())?;
            matmul(&mut block, x, cols, true)?;
            if relu {
                block.for_each_row(|_, row| relu_in_place(row));
            }
            Ok(())
        })?;
        Ok((CpuStorage::F32(out), Shape::from((n, fan_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (n, fan_out) = grad.dims2()?;
        let fan_in = x.dim(1)?;
        // One pass: the gradient before the activation, and its column sums (∂b).
        let (masked, grad_b) = with_slice(&grad, |g| {
            if self.relu {
                with_slice(y, |y| {
                    let (masked, sums) = relu_backward(g, y, fan_out);
                    Ok((Some(masked), sums))
                })
            } else {
                Ok((None, column_sums(g, fan_out)))
            }
        })?;
        let need_x = x.track_op();
        let need_w = w.track_op();
        // ∂W goes into the optimiser's buffer during a backward step (`super::sink`, which
        // sizes it to W), into a fresh tensor for candle otherwise.
        let mut sunk_w = if need_w { sink::take(w) } else { None };
        let mut fresh_w = if need_w && sunk_w.is_none() {
            vec![0f32; fan_out * fan_in]
        } else {
            Vec::new()
        };
        let (grad_w, accumulate_w) = match &mut sunk_w {
            Some(taken) => (taken.values.as_mut_slice(), taken.accumulate),
            None => (fresh_w.as_mut_slice(), false),
        };
        let mut grad_x = if need_x {
            vec![0f32; n * fan_in]
        } else {
            Vec::new()
        };
        with_slice(&grad, |g| {
            let g = masked.as_deref().unwrap_or(g);
            let g = MatRef::row_major(g, n, fan_out)?;
            with_slice(x, |xs| {
                with_slice(w, |ws| {
                    let xs = MatRef::row_major(xs, n, fan_in)?;
                    let ws = MatRef::row_major(ws, fan_out, fan_in)?;
                    // ∂W = gᵀ·x, by blocks of W's rows; ∂x = g·W, by blocks of x's rows.
                    let flops = n * fan_in * fan_out;
                    let rows_w = block_width(flops, fan_out);
                    let rows_x = block_width(flops, n);
                    let mut tasks: Vec<Task<'_>> = grad_w
                        .chunks_mut(rows_w * fan_in)
                        .enumerate()
                        .map(|(i, dst)| Task::Weight(i * rows_w, dst))
                        .collect();
                    tasks.extend(
                        grad_x
                            .chunks_mut(rows_x * fan_in)
                            .enumerate()
                            .map(|(i, dst)| Task::Input(i * rows_x, dst)),
                    );
                    run_all(tasks, |task| match task {
                        Task::Weight(first, dst) => {
                            let rows = dst.len() / fan_in;
                            let mut dst = MatMut::row_major(dst, rows, fan_in)?;
                            let g_rows = g.t().rows(first..first + rows)?;
                            matmul(&mut dst, g_rows, xs, accumulate_w)
                        }
                        Task::Input(first, dst) => {
                            let rows = dst.len() / fan_in;
                            let mut dst = MatMut::row_major(dst, rows, fan_in)?;
                            matmul(&mut dst, g.rows(first..first + rows)?, ws, false)
                        }
                    })
                })
            })
        })?;
        let grad_x = if need_x {
            Some(Tensor::from_vec(grad_x, (n, fan_in), &Device::Cpu)?)
        } else {
            None
        };
        let grad_w = match sunk_w {
            Some(taken) => {
                sink::give_back(taken);
                None
            }
            None if need_w => Some(Tensor::from_vec(fresh_w, (fan_out, fan_in), &Device::Cpu)?),
            None => None,
        };
        let grad_b = if b.track_op() {
            sink::deposit_or_tensor(b, grad_b)?
        } else {
            None
        };
        Ok((grad_x, grad_w, grad_b))
    }
}

/// One block of the backward products: the first row and the rows of ∂W or ∂x it fills.
enum Task<'a> {
    Weight(usize, &'a mut [f32]),
    Input(usize, &'a mut [f32]),
}

fn relu_in_place(row: &mut [f32]) {
    vectorized(
        #[inline(always)]
        || {
            for v in row.iter_mut() {
                *v = v.max(0.0);
            }
        },
    );
}

/// The gradient before a ReLU (zero where the output is zero) and its column sums.
fn relu_backward(grad: &[f32], y: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    // Collected, not written over a zero-filled buffer: one pass over memory less. The
    // sums then read the masked gradient back from cache.
    let masked: Vec<f32> = vectorized(
        #[inline(always)]
        || {
            grad.iter()
                .zip(y)
                .map(|(&g, &y)| relu_gradient(g, y))
                .collect()
        },
    );
    let sums = column_sums(&masked, width);
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
