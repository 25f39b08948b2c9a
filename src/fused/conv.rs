//! 2-D convolutions and transposed convolutions (`f32`, CPU) as im2col/col2im plus matrix
//! products, forward and backward.
//!
//! candle 0.11 runs `conv2d` forward as im2col + gemm, but `conv_transpose2d` forward as a
//! direct, single-threaded loop over every output element and kernel tap; the input
//! gradient of `conv2d` is a `conv_transpose2d`, and the weight gradients of both are
//! convolutions with the output gradient as a `Ho × Wo` kernel dilated by the stride, which
//! take the direct path too. A step of the convolutional VAE spent most of its time there.
//!
//! Here, with a kernel of `K₁ × K₂`, stride s and padding p, one image `(C, H, W)` and a
//! grid of `G₁ × G₂` kernel positions, `im2col` lays out the `(C·K₁·K₂, G₁·G₂)` matrix of
//! the patches and `col2im` scatter-adds such a matrix back onto an image. Then, per image
//! (`W` read as a matrix, `X`, `Y` as `(channels, pixels)`):
//!
//! | | forward | ∂X | ∂W (summed over the batch) |
//! |---|---|---|---|
//! | conv2d, `W: (O, C·K₁·K₂)` | `Y = W·im2col(X) + b` | `col2im(Wᵀ·∂Y)` | `∂Y·im2col(X)ᵀ` |
//! | conv_transpose2d, `W: (C, O·K₁·K₂)` | `Y = col2im(Wᵀ·X) + b` | `W·im2col(∂Y)` | `X·im2col(∂Y)ᵀ` |
//!
//! and `∂b` is the sum of `∂Y` over images and pixels. (The two operations are each
//! other's adjoint, which is why the same two layouts serve both.) Both copies go through
//! the image's rows split by column phase (columns φ, φ + s, … of each padded row), so
//! that every segment of the patch matrix is a contiguous run instead of a strided one.
//! A fused ReLU's mask is applied where the backward pass first reads ∂Y. The batch is cut
//! into blocks, four per thread, that the threads take one at a time as they get to them
//! (`super::parallel`); each block reuses one patch buffer and, in the backward pass, sums
//! its own partial ∂W and ∂b, added up at the end in block order (the same bits whichever
//! thread took which block). Within a block, the images of a small map are side by side
//! in one product (at least 64 columns: 4 images of a 4×4 map), so that the product is not
//! one thin matrix per image and ∂W is not read and written once per image. Up to 1,024
//! patch rows, ∂W is summed as its transpose (`add_weight_gradient`), and during
//! `Adam::backward_step` ∂W and ∂b go straight into the optimiser's buffers
//! (`super::sink`). The gradient of an input that needs none (data) is not computed.
//!
//! Dilation other than 1, groups other than 1, a missing bias, other dtypes and devices
//! take candle's path.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Module, Shape, Tensor, bail};
use candle_nn::{Conv2d, ConvTranspose2d};

use super::gemm::{MatMut, MatRef, matmul};
use super::math::relu_gradient;
use super::parallel::{blocks_for, for_each, map_all, run_all};
use super::sink;
use super::storage::{is_cpu_f32, slice, with_slice};
use crate::ops::Activation;

/// Columns (images × pixels) per matrix product, at least. Wider products keep more
/// images' patch matrices at once: at 256 columns the 3×64×64 VAE's deepest layers held
/// 1–2 MiB of them, past a 1 MiB L2, and its step was 1.10× faster at 64 (at 128, 1.02×;
/// 32 and 16 were 3–6 % slower than 64; the 28×28 VAE the same at 64, 128 and 256;
/// docs/PERFORMANCE.md §2c).
const MIN_COLS: usize = 64;

/// Blocks of images per thread: four, so that a thread that another process slows hands the
/// rest of its images to the others instead of holding up the step (the threads take blocks
/// as they get to them). In the backward each block sums its own ∂W and the blocks' sums are
/// added in block order, so the gradients do not depend on which thread took which block.
/// With a busy loop on one core, 3×64×64 steps 1.12× and 28×28 steps 1.22× faster than with
/// one block per thread; on an idle machine 0.990–1.014 as fast (docs/PERFORMANCE.md §2j).
const IMAGE_BLOCKS_PER_THREAD: usize = 4;

/// A backward whose ∂W has more values than this takes one block per thread: zeroing and
/// adding four blocks' sums of the 3×64×64 VAE's two 524,288-value gradients cost its step
/// about 1 % on an idle machine (§2j).
const FINE_BLOCKS_MAX_WEIGHTS: usize = 1 << 17;

/// Weight gradients of at most this many patch rows (`C·K₁·K₂` of a convolution,
/// `O·K₁·K₂` of a transposed one) are summed transposed (`add_weight_gradient`). Measured
/// on the 3×64×64 VAE's layers: 48, 512 and 1,024 rows faster that way (the 48-row first
/// layer's ∂W 6.9 → 4.4 ms a step), 2,048 rows 1.4 ms slower (docs/PERFORMANCE.md §2d).
const TRANSPOSED_DW_MAX_ROWS: usize = 1024;

thread_local! {
    /// Each thread's patch-matrix, channel-matrix and phase-row buffers, kept from call to
    /// call: a step of a convolutional VAE otherwise allocates and frees them in every
    /// layer, forward and backward, and each fresh allocation of that size costs the
    /// kernel's page faults (it zeroes every page on first touch).
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

/// A thread's buffers for the patch matrix, a channel matrix and an image's phase rows.
struct Scratch {
    col: Vec<f32>,
    mat: Vec<f32>,
    phases: Vec<f32>,
}

impl Scratch {
    const fn new() -> Self {
        Self {
            col: Vec::new(),
            mat: Vec::new(),
            phases: Vec::new(),
        }
    }
}

/// Runs `f` on this thread's scratch buffers, grown to `col_len`, `mat_len` and
/// `phases_len` elements. Their contents are left from earlier calls: `f` must write
/// every element it reads.
fn with_scratch<T>(
    col_len: usize,
    mat_len: usize,
    phases_len: usize,
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> T,
) -> T {
    // Taken out for the call and put back after, so that a nested call (none today) would
    // get fresh buffers instead of a borrow error.
    let mut scratch = SCRATCH.with(|s| std::mem::replace(&mut *s.borrow_mut(), Scratch::new()));
    for (buffer, len) in [
        (&mut scratch.col, col_len),
        (&mut scratch.mat, mat_len),
        (&mut scratch.phases, phases_len),
    ] {
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
    }
    let out = f(
        &mut scratch.col[..col_len],
        &mut scratch.mat[..mat_len],
        &mut scratch.phases[..phases_len],
    );
    SCRATCH.with(|s| *s.borrow_mut() = scratch);
    out
}

/// `layer(x)`: the fused kernel where it applies (enabled, CPU, `f32`, rank 4, a bias,
/// dilation 1, one group), candle's `Conv2d` elsewhere.
///
/// # Shapes
/// `x`: `(N, C, H, W)` → `(N, O, (H + 2p − K₁)/s + 1, (W + 2p − K₂)/s + 1)`.
///
/// # Errors
/// If `x` does not fit the layer.
pub fn conv2d(x: &Tensor, layer: &Conv2d) -> candle_core::Result<Tensor> {
    conv2d_fused(x, layer, false)?.map_or_else(|| layer.forward(x), Ok)
}

/// `activation(layer(x))`. A ReLU runs inside the fused kernel where that applies (see
/// [`conv2d`]): the forward pass clamps the product's output as it adds the bias, and the
/// backward pass masks the output gradient where the output is 0, in place of candle's
/// element-wise passes each way between the convolutions. As in PyTorch, the ReLU's
/// gradient at exactly 0 is 0 (candle's own `relu` takes 1 there). Other activations, and
/// everything the kernel does not take, run as `activation.forward(conv2d(x))`.
///
/// # Shapes
/// As [`conv2d`].
///
/// # Errors
/// If `x` does not fit the layer.
pub fn conv2d_activated(
    x: &Tensor,
    layer: &Conv2d,
    activation: Activation,
) -> candle_core::Result<Tensor> {
    activated(
        activation,
        |relu| conv2d_fused(x, layer, relu),
        || layer.forward(x),
    )
}

/// `activation(y)` of the fused layer's output `fused(relu)` (a ReLU inside it if
/// `relu`), or of candle's `plain()` where the fused kernel does not apply.
fn activated(
    activation: Activation,
    fused: impl FnOnce(bool) -> candle_core::Result<Option<Tensor>>,
    plain: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let relu = activation == Activation::Relu;
    match fused(relu)? {
        Some(y) if relu => Ok(y),
        Some(y) => activation.forward(&y),
        None => activation.forward(&plain()?),
    }
}

/// The fused `conv2d` (with a ReLU if `relu`), or `None` where it does not apply.
fn conv2d_fused(x: &Tensor, layer: &Conv2d, relu: bool) -> candle_core::Result<Option<Tensor>> {
    let config = layer.config();
    let w = layer.weight();
    let op = ConvOp {
        kind: Kind::Conv,
        stride: config.stride,
        padding: config.padding,
        output_padding: 0,
        relu,
    };
    match layer.bias() {
        Some(b)
            if config.dilation == 1
                && config.groups == 1
                && op.fits(x, w, b)?
                && x.dim(2)? + 2 * config.padding >= w.dim(2)?
                && x.dim(3)? + 2 * config.padding >= w.dim(3)? =>
        {
            op.apply(x, w, b).map(Some)
        }
        _ => Ok(None),
    }
}

/// `layer(x)`: the fused kernel where it applies (enabled, CPU, `f32`, rank 4, a bias,
/// dilation 1), candle's `ConvTranspose2d` elsewhere.
///
/// # Shapes
/// `x`: `(N, C, H, W)` → `(N, O, (H − 1)·s − 2p + K₁ + q, (W − 1)·s − 2p + K₂ + q)`
/// (q the output padding).
///
/// # Errors
/// If `x` does not fit the layer.
pub fn conv_transpose2d(x: &Tensor, layer: &ConvTranspose2d) -> candle_core::Result<Tensor> {
    conv_transpose2d_fused(x, layer, false)?.map_or_else(|| layer.forward(x), Ok)
}

/// `activation(layer(x))`, a ReLU inside the fused kernel where that applies, as
/// [`conv2d_activated`] does for [`conv2d`].
///
/// # Shapes
/// As [`conv_transpose2d`].
///
/// # Errors
/// If `x` does not fit the layer.
pub fn conv_transpose2d_activated(
    x: &Tensor,
    layer: &ConvTranspose2d,
    activation: Activation,
) -> candle_core::Result<Tensor> {
    activated(
        activation,
        |relu| conv_transpose2d_fused(x, layer, relu),
        || layer.forward(x),
    )
}

/// The fused `conv_transpose2d` (with a ReLU if `relu`), or `None` where it does not apply.
fn conv_transpose2d_fused(
    x: &Tensor,
    layer: &ConvTranspose2d,
    relu: bool,
) -> candle_core::Result<Option<Tensor>> {
    let config = layer.config();
    let w = layer.weight();
    let op = ConvOp {
        kind: Kind::Transposed,
        stride: config.stride,
        padding: config.padding,
        output_padding: config.output_padding,
        relu,
    };
    let grows = |side: usize, k: usize| (side - 1) * config.stride + k + config.output_padding;
    match layer.bias() {
        Some(b)
            if config.dilation == 1
                && op.fits(x, w, b)?
                && grows(x.dim(2)?, w.dim(2)?) > 2 * config.padding
                && grows(x.dim(3)?, w.dim(3)?) > 2 * config.padding =>
        {
            op.apply(x, w, b).map(Some)
        }
        _ => Ok(None),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `conv2d`, weight `(O, C, K₁, K₂)`.
    Conv,
    /// `conv_transpose2d`, weight `(C, O, K₁, K₂)`.
    Transposed,
}

/// The patches of one image `(channels, height, width)` taken by a `k_h × k_w` kernel at
/// the `grid_h × grid_w` positions (gy·s − p, gx·s − p), as a `(channels·k_h·k_w,
/// grid_h·grid_w)` matrix; positions outside the image read as zero.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    k_h: usize,
    k_w: usize,
    stride: usize,
    padding: usize,
    grid_h: usize,
    grid_w: usize,
}

impl Geometry {
    fn rows(&self) -> usize {
        self.channels * self.k_h * self.k_w
    }

    fn cols(&self) -> usize {
        self.grid_h * self.grid_w
    }

    /// The grid positions g in `lo..hi` (of `0..grid`) whose tap `k` lands inside
    /// `0..extent`: 0 ≤ g·s + k − p < extent.
    fn valid(&self, k: usize, extent: usize, grid: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
        let hi = if extent + p > k {
            ((extent - 1 + p - k) / s + 1).min(grid)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Width of a phase row (see [`split_phases`](Self::split_phases)): the grid's width
    /// plus the kernel's reach in whole strides.
    fn phase_width(&self) -> usize {
        self.grid_w + (self.k_w - 1) / self.stride
    }

    /// Length of an image's phase rows: `stride` of them per image row.
    fn phases_len(&self) -> usize {
        self.channels * self.height * self.stride * self.phase_width()
    }

    /// Splits every row of `image` by column phase, zero-padded: phase row `(c, r, φ)`
    /// holds the padded row's columns φ, φ + s, φ + 2s, …, so that a kernel tap `k₂`
    /// reads `phase_width()`-long contiguous runs at phase `k₂ mod s`, offset `k₂ div s`,
    /// where the image itself would be read with a stride. (For a 4×4 kernel of stride 2
    /// this is the space-to-depth view in which the convolution is a 2×2 one of stride 1.)
    ///
    /// With `relu_output`, the values are `image` where `relu_output` > 0 and 0 elsewhere:
    /// a gradient through the ReLU whose output that is.
    fn split_phases(&self, image: &[f32], relu_output: Option<&[f32]>, phases: &mut [f32]) {
        let (w, s, pw) = (self.width, self.stride, self.phase_width());
        let inside = self.phases_inside();
        for (r, out) in phases.chunks_exact_mut(s * pw).enumerate() {
            let row = &image[r * w..(r + 1) * w];
            let mask = relu_output.map(|y| &y[r * w..(r + 1) * w]);
            for (phase, &(lo, hi, first)) in inside.iter().enumerate() {
                let out = &mut out[phase * pw..(phase + 1) * pw];
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                let mask = mask.map(|m| &m[first..]);
                take_every(s, &row[first..], mask, &mut out[lo..hi]);
            }
        }
    }

    /// The adjoint of [`split_phases`](Self::split_phases): `image` += the phase rows put
    /// back in place (padding dropped).
    fn merge_phases_add(&self, phases: &[f32], image: &mut [f32]) {
        let (w, s, pw) = (self.width, self.stride, self.phase_width());
        let inside = self.phases_inside();
        let rows = image.chunks_exact_mut(w).zip(phases.chunks_exact(s * pw));
        for (row, from) in rows {
            for (phase, &(lo, hi, first)) in inside.iter().enumerate() {
                let from = &from[phase * pw..(phase + 1) * pw];
                add_every(s, &from[lo..hi], &mut row[first..]);
            }
        }
    }

    /// [`phase_inside`](Self::phase_inside) of each phase: once per image rather than per
    /// row and phase, for each takes integer divisions by the stride.
    fn phases_inside(&self) -> Vec<(usize, usize, usize)> {
        (0..self.stride)
            .map(|phase| self.phase_inside(phase))
            .collect()
    }

    /// The positions `lo..hi` of a phase row whose padded column v·s + `phase` lies inside
    /// the image, and the image column of the first (0 when there is none).
    fn phase_inside(&self, phase: usize) -> (usize, usize, usize) {
        let (w, s, p, pw) = (self.width, self.stride, self.padding, self.phase_width());
        let lo = p.saturating_sub(phase).div_ceil(s);
        let hi = (w + p).saturating_sub(phase).div_ceil(s).min(pw);
        if lo >= hi {
            return (0, 0, 0);
        }
        (lo, hi, lo * s + phase - p)
    }

    /// Calls `f(patch row, grid rows lo..hi, start, step)` for every kernel tap (c, k₁, k₂),
    /// in the order of the patch matrix's rows: the patch row's segment of `grid_w` values
    /// for grid row gy ∈ lo..hi is the run of the phase rows at `start + (gy − lo)·step`;
    /// outside lo..hi the tap's image row is outside the image and the segment is zero.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
        let (h, s, p, pw) = (self.height, self.stride, self.padding, self.phase_width());
        // Consecutive grid rows are s image rows apart, each of s phase rows.
        let step = s * s * pw;
        // Computed once rather than per channel and tap, as they take divisions by the
        // stride (docs/PERFORMANCE.md §2i): per kernel row the valid grid rows and the image
        // row the first of them reads, per kernel column its runs' offset among an image
        // row's phase rows.
        let kernel_rows: Vec<_> = (0..self.k_h)
            .map(|ki| {
                let (lo, hi) = self.valid(ki, h, self.grid_h);
                (lo, hi, if lo < hi { lo * s + ki - p } else { 0 })
            })
            .collect();
        let kernel_cols: Vec<_> = (0..self.k_w).map(|kj| (kj % s) * pw + kj / s).collect();
        let mut row = 0;
        for c in 0..self.channels {
            for &(lo, hi, image_row) in &kernel_rows {
                let row_start = (c * h + image_row) * s * pw;
                for &col_start in &kernel_cols {
                    let start = if lo < hi { row_start + col_start } else { 0 };
                    f(row, lo, hi, start, step);
                    row += 1;
                }
            }
        }
    }

    /// Columns `offset..offset + cols()` of the row-major matrix `col` with rows of `ld`
    /// ← the patch matrix of `image`, masked by `relu_output` as in
    /// [`split_phases`](Self::split_phases) (`phases`: scratch of `phases_len()`).
    fn im2col(
        &self,
        image: &[f32],
        relu_output: Option<&[f32]>,
        phases: &mut [f32],
        col: &mut [f32],
        ld: usize,
        offset: usize,
    ) {
        self.split_phases(image, relu_output, phases);
        let gw = self.grid_w;
        let phases = &*phases;
        self.for_each_tap(|row, lo, hi, start, step| {
            let at = row * ld + offset;
            let out = &mut col[at..at + self.cols()];
            out[..lo * gw].fill(0.0);
            out[hi * gw..].fill(0.0);
            copy_runs(&mut out[lo * gw..hi * gw], gw, &phases[start..], step);
        });
    }

    /// `image` ← `image` + the patches in columns `offset..offset + cols()` of `col` (rows
    /// of `ld`) put back in place (the adjoint of [`im2col`](Self::im2col); `phases`:
    /// scratch of `phases_len()`).
    fn col2im_add(
        &self,
        col: &[f32],
        ld: usize,
        offset: usize,
        phases: &mut [f32],
        image: &mut [f32],
    ) {
        phases.fill(0.0);
        let gw = self.grid_w;
        self.for_each_tap(|row, lo, hi, start, step| {
            let at = row * ld + offset;
            add_runs(
                &col[at + lo * gw..at + hi * gw],
                gw,
                &mut phases[start..],
                step,
            );
        });
        self.merge_phases_add(phases, image);
    }
}

/// Evaluates `$body` with `$name` bound to `$value`: as a literal when it is 1..=32, so
/// that the loops of `copy_runs` and `add_runs` over runs of that length are compiled
/// for it (a copy of 4–32 values of unknown length is a call to `memcpy`).
macro_rules! with_width {
    ($name:ident = $value:expr, $body:expr) => {
        with_width!(@ $name, $value, $body,
            1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
    };
    (@ $name:ident, $value:expr, $body:expr, $($w:literal)*) => {
        match $value {
            $($w => {
                let $name: usize = $w;
                $body
            })*
            other => {
                let $name = other;
                $body
            }
        }
    };
}

/// `out[i]` ← `from[i·s]`, or `relu_gradient(from[i·s], mask[i·s])` with a mask, for
/// every i of `out` that `from` reaches (`split_phases`' copy). A strided iterator is
/// copied one scalar at a time; at stride 2 (every shipped network) the loop runs over
/// pairs, which the compiler vectorises as a deinterleave.
fn take_every(s: usize, from: &[f32], mask: Option<&[f32]>, out: &mut [f32]) {
    let pairs = if s == 2 {
        (from.len() / 2).min(out.len())
    } else {
        0
    };
    match mask {
        None => {
            for (o, pair) in out[..pairs].iter_mut().zip(from.chunks_exact(2)) {
                *o = pair[0];
            }
            let rest = from[2 * pairs..].iter().step_by(s);
            for (o, v) in out[pairs..].iter_mut().zip(rest) {
                *o = *v;
            }
        }
        Some(mask) => {
            let both = from.chunks_exact(2).zip(mask.chunks_exact(2));
            for (o, (pair, open)) in out[..pairs].iter_mut().zip(both) {
                *o = relu_gradient(pair[0], open[0]);
            }
            let rest = from[2 * pairs..].iter().step_by(s);
            let open = mask[(2 * pairs).min(mask.len())..].iter().step_by(s);
            for ((o, v), m) in out[pairs..].iter_mut().zip(rest).zip(open) {
                *o = relu_gradient(*v, *m);
            }
        }
    }
}

/// The adjoint of [`take_every`] without a mask: `to[i·s]` += `from[i]`.
fn add_every(s: usize, from: &[f32], to: &mut [f32]) {
    let pairs = if s == 2 {
        (to.len() / 2).min(from.len())
    } else {
        0
    };
    for (pair, v) in to.chunks_exact_mut(2).zip(&from[..pairs]) {
        pair[0] += *v;
    }
    let rest = to[2 * pairs..].iter_mut().step_by(s);
    for (d, v) in rest.zip(&from[pairs..]) {
        *d += *v;
    }
}

/// `out`'s consecutive `width`-long segments ← the runs of `width` values that start
/// `step` apart in `from` (`im2col`'s inner copy). A grid row of the shipped networks is
/// 4 to 32 values wide (7 and 14 in the 28×28 VAE); `with_width!` compiles the copy for
/// each such width. The runs are found by index rather than by `zip(from.chunks(step))`,
/// whose length costs a division per call, one per kernel tap and image
/// (docs/PERFORMANCE.md §2h).
fn copy_runs(out: &mut [f32], width: usize, from: &[f32], step: usize) {
    with_width!(w = width, {
        for (i, segment) in out.chunks_exact_mut(w).enumerate() {
            segment.copy_from_slice(&from[i * step..i * step + w]);
        }
    })
}

/// The adjoint of [`copy_runs`]: the runs of `width` values that start `step` apart in
/// `to` += `from`'s consecutive `width`-long segments.
fn add_runs(from: &[f32], width: usize, to: &mut [f32], step: usize) {
    with_width!(w = width, {
        for (i, segment) in from.chunks_exact(w).enumerate() {
            let run = &mut to[i * step..i * step + w];
            for (d, v) in run.iter_mut().zip(segment) {
                *d += *v;
            }
        }
    })
}

/// The sizes of one call: `x (n, in_c, x_h, x_w)`, `y (n, out_c, y_h, y_w)`.
#[derive(Debug, Clone, Copy)]
struct Problem {
    kind: Kind,
    n: usize,
    in_c: usize,
    out_c: usize,
    x_hw: (usize, usize),
    y_hw: (usize, usize),
    geometry: Geometry,
}

impl Problem {
    fn new(
        op: &ConvOp,
        x: (usize, usize, usize, usize),
        w: (usize, usize, usize, usize),
    ) -> candle_core::Result<Self> {
        let (n, in_c, x_h, x_w) = x;
        let (s, p) = (op.stride, op.padding);
        let (w_in, out_c, k_h, k_w) = match op.kind {
            Kind::Conv => (w.1, w.0, w.2, w.3),
            Kind::Transposed => w,
        };
        if w_in != in_c || s == 0 {
            bail!("candle-vae-conv: input {x:?} does not fit weight {w:?} (stride {s})")
        }
        let y_hw = match op.kind {
            Kind::Conv => {
                let side = |x: usize, k: usize| (x + 2 * p).checked_sub(k).map(|d| d / s + 1);
                side(x_h, k_h).zip(side(x_w, k_w))
            }
            Kind::Transposed => {
                let side = |x: usize, k: usize| {
                    ((x.max(1) - 1) * s + k + op.output_padding).checked_sub(2 * p)
                };
                side(x_h, k_h).zip(side(x_w, k_w))
            }
        };
        let Some((y_h, y_w)) = y_hw.filter(|&(h, w)| h > 0 && w > 0) else {
            bail!("candle-vae-conv: input {x:?} too small for weight {w:?}")
        };
        // The image side of im2col: the input of a convolution, the output of a transposed
        // one; the grid is the other side.
        let (channels, (height, width), (grid_h, grid_w)) = match op.kind {
            Kind::Conv => (in_c, (x_h, x_w), (y_h, y_w)),
            Kind::Transposed => (out_c, (y_h, y_w), (x_h, x_w)),
        };
        Ok(Self {
            kind: op.kind,
            n,
            in_c,
            out_c,
            x_hw: (x_h, x_w),
            y_hw: (y_h, y_w),
            geometry: Geometry {
                channels,
                height,
                width,
                k_h,
                k_w,
                stride: s,
                padding: p,
                grid_h,
                grid_w,
            },
        })
    }

    fn x_len(&self) -> usize {
        self.in_c * self.x_hw.0 * self.x_hw.1
    }

    fn y_len(&self) -> usize {
        self.out_c * self.y_hw.0 * self.y_hw.1
    }

    /// The weight as a matrix: `(O, C·K₁·K₂)` for a convolution, `(C, O·K₁·K₂)` for a
    /// transposed one.
    fn weight<'a>(&self, w: &'a [f32]) -> candle_core::Result<MatRef<'a>> {
        let rows = match self.kind {
            Kind::Conv => self.out_c,
            Kind::Transposed => self.in_c,
        };
        MatRef::row_major(w, rows, self.geometry.rows())
    }

    /// Multiply-adds of one pass (the forward, or either product of the backward) over the
    /// batch: `rows` is `C·K₁·K₂` of a convolution, `O·K₁·K₂` of a transposed one, and the
    /// product's other side `O` or `C`. (Counted with `O` for both until §2j, which kept the
    /// 28×28 decoder's 32→1 layer, 12.8 M multiply-adds, on one thread.)
    fn flops(&self) -> usize {
        let channels = match self.kind {
            Kind::Conv => self.out_c,
            Kind::Transposed => self.in_c,
        };
        self.n * channels * self.geometry.rows() * self.geometry.cols()
    }

    /// How the batch is cut: images per block (the unit a thread takes; up to `per_thread`
    /// blocks per thread) and images per matrix product within a block. A product takes
    /// enough images for `MIN_COLS` columns (one image of a small map gives a thin product
    /// that runs far below the FMA peak, and a weight gradient that is read and written
    /// once per image), but no more than a thread's share of the batch, so that every
    /// thread has a block; a block is a whole number of products.
    fn cut(&self, per_thread: usize) -> (usize, usize) {
        let flops = self.flops();
        let share = self.n.div_ceil(blocks_for(flops, self.n, 1));
        let group = MIN_COLS
            .div_ceil(self.geometry.cols().max(1))
            .clamp(1, share.max(1));
        let blocks = blocks_for(flops, self.n, per_thread);
        let per_block = (self.n.div_ceil(blocks).div_ceil(group) * group).max(1);
        (per_block, group)
    }

    fn forward(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        relu: bool,
    ) -> candle_core::Result<Vec<f32>> {
        let (x_len, y_len) = (self.x_len(), self.y_len());
        if x.len() != self.n * x_len || b.len() != self.out_c {
            bail!("candle-vae-conv: {} inputs, {} biases", x.len(), b.len())
        }
        let w = self.weight(w)?;
        let g = self.geometry;
        let (rows, cols) = (g.rows(), g.cols());
        let pixels = self.y_hw.0 * self.y_hw.1;
        let mut y = vec![0f32; self.n * y_len];
        let (per_block, group) = self.cut(IMAGE_BLOCKS_PER_THREAD);
        let tasks: Vec<_> = y.chunks_mut(per_block * y_len).enumerate().collect();
        let mat_len = self.out_c.max(self.in_c) * group * cols;
        run_all(tasks, |(block, y_block)| {
            with_scratch(
                rows * group * cols,
                mat_len,
                g.phases_len(),
                |col_buf, mat_buf, phases| {
                    for (i, y_group) in y_block.chunks_mut(group * y_len).enumerate() {
                        let images = y_group.len() / y_len;
                        let first = block * per_block + i * group;
                        let x_group = &x[first * x_len..(first + images) * x_len];
                        let ld = images * cols;
                        let col = &mut col_buf[..rows * ld];
                        match self.kind {
                            Kind::Conv => {
                                // Y = W·col, then bias + Y into each image's (O, pixels).
                                for (j, x_img) in x_group.chunks_exact(x_len).enumerate() {
                                    g.im2col(x_img, None, phases, col, ld, j * cols);
                                }
                                let y_mat = &mut mat_buf[..self.out_c * ld];
                                let mut dst = MatMut::row_major(y_mat, self.out_c, ld)?;
                                matmul(&mut dst, w, MatRef::row_major(col, rows, ld)?, false)?;
                                for (j, y_img) in y_group.chunks_exact_mut(y_len).enumerate() {
                                    let planes = y_img.chunks_exact_mut(pixels).zip(b).enumerate();
                                    for (o, (plane, &bias)) in planes {
                                        let at = o * ld + j * cols;
                                        let src = &y_mat[at..at + pixels];
                                        if relu {
                                            for (d, v) in plane.iter_mut().zip(src) {
                                                *d = (v + bias).max(0.0);
                                            }
                                        } else {
                                            for (d, v) in plane.iter_mut().zip(src) {
                                                *d = v + bias;
                                            }
                                        }
                                    }
                                }
                            }
                            Kind::Transposed => {
                                // col = Wᵀ·X, then bias + col2im(col) into each image.
                                let x_ref = MatRef::row_major(
                                    side_by_side(x_group, None, self.in_c, cols, mat_buf),
                                    self.in_c,
                                    ld,
                                )?;
                                let mut dst = MatMut::row_major(col, rows, ld)?;
                                matmul(&mut dst, w.t(), x_ref, false)?;
                                for (j, y_img) in y_group.chunks_exact_mut(y_len).enumerate() {
                                    for (plane, &bias) in y_img.chunks_exact_mut(pixels).zip(b) {
                                        plane.fill(bias);
                                    }
                                    g.col2im_add(col, ld, j * cols, phases, y_img);
                                    if relu {
                                        y_img.iter_mut().for_each(|v| *v = v.max(0.0));
                                    }
                                }
                            }
                        }
                    }
                    Ok(())
                },
            )
        })?;
        Ok(y)
    }

    /// (∂x if `need_x`, ∂w, ∂b) from the output gradient `dy`; with `relu_output` (the
    /// output of a fused ReLU), from `dy` where that output is > 0 and 0 elsewhere, the
    /// mask applied as `dy` is first read.
    fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        relu_output: Option<&[f32]>,
        need_x: bool,
    ) -> candle_core::Result<Gradients> {
        let (x_len, y_len) = (self.x_len(), self.y_len());
        let outputs_fit = relu_output.is_none_or(|y| y.len() == dy.len());
        if x.len() != self.n * x_len || dy.len() != self.n * y_len || !outputs_fit {
            bail!(
                "candle-vae-conv: {} inputs, {} gradients",
                x.len(),
                dy.len()
            )
        }
        let w_mat = self.weight(w)?;
        let g = self.geometry;
        let (rows, cols) = (g.rows(), g.cols());
        let w_len = w.len();
        let pixels = self.y_hw.0 * self.y_hw.1;
        let per_thread = if w_len <= FINE_BLOCKS_MAX_WEIGHTS {
            IMAGE_BLOCKS_PER_THREAD
        } else {
            1
        };
        let (per_block, group) = self.cut(per_thread);
        let mut dx = if need_x {
            vec![0f32; self.n * x_len]
        } else {
            Vec::new()
        };
        let blocks = self.n.div_ceil(per_block);
        let mut dx_blocks: Vec<Option<&mut [f32]>> = if need_x {
            dx.chunks_mut(per_block * x_len).map(Some).collect()
        } else {
            Vec::new()
        };
        dx_blocks.resize_with(blocks, || None);
        let tasks: Vec<_> = dx_blocks.into_iter().enumerate().collect();
        // Each block sums ∂W, or its transpose if `transposed_dw` (transposed back once the
        // blocks' sums are added, in block order).
        let transposed_dw = rows <= TRANSPOSED_DW_MAX_ROWS;
        let partials = map_all(tasks, |(block, mut dx_block)| {
            let mut dw = vec![0f32; w_len];
            let mut db = vec![0f32; self.out_c];
            let mat_len = self.out_c.max(self.in_c) * group * cols;
            with_scratch(
                rows * group * cols,
                mat_len,
                g.phases_len(),
                |col_buf, mat_buf, phases| {
                    let start = block * per_block;
                    let end = (start + per_block).min(self.n);
                    let mut first = start;
                    while first < end {
                        let images = group.min(end - first);
                        let ld = images * cols;
                        let x_group = &x[first * x_len..(first + images) * x_len];
                        let dy_group = &dy[first * y_len..(first + images) * y_len];
                        let y_group =
                            relu_output.map(|y| &y[first * y_len..(first + images) * y_len]);
                        let dx_group = match dx_block.as_deref_mut() {
                            Some(d) => {
                                let at = (first - start) * x_len;
                                Some(&mut d[at..at + images * x_len])
                            }
                            None => None,
                        };
                        let col = &mut col_buf[..rows * ld];
                        match self.kind {
                            Kind::Conv => {
                                // ∂W += ∂Y·colᵀ; ∂X = col2im(Wᵀ·∂Y).
                                for (j, x_img) in x_group.chunks_exact(x_len).enumerate() {
                                    g.im2col(x_img, None, phases, col, ld, j * cols);
                                }
                                let dy_mat =
                                    side_by_side(dy_group, y_group, self.out_c, cols, mat_buf);
                                add_row_sums(dy_mat, ld, &mut db);
                                let dy_ref = MatRef::row_major(dy_mat, self.out_c, ld)?;
                                let col_ref = MatRef::row_major(col, rows, ld)?;
                                let a = (dy_ref, self.out_c);
                                add_weight_gradient(&mut dw, transposed_dw, a, (col_ref, rows))?;
                                if let Some(dx_group) = dx_group {
                                    let mut col_mat = MatMut::row_major(col, rows, ld)?;
                                    matmul(&mut col_mat, w_mat.t(), dy_ref, false)?;
                                    for (j, dx_img) in dx_group.chunks_exact_mut(x_len).enumerate()
                                    {
                                        g.col2im_add(col, ld, j * cols, phases, dx_img);
                                    }
                                }
                            }
                            Kind::Transposed => {
                                // col = im2col(∂Y); ∂W += X·colᵀ; ∂X = W·col.
                                for (j, dy_img) in dy_group.chunks_exact(y_len).enumerate() {
                                    let y_img = y_group.map(|y| &y[j * y_len..(j + 1) * y_len]);
                                    add_plane_sums(dy_img, y_img, pixels, &mut db);
                                    g.im2col(dy_img, y_img, phases, col, ld, j * cols);
                                }
                                let col_ref = MatRef::row_major(col, rows, ld)?;
                                let x_ref = MatRef::row_major(
                                    side_by_side(x_group, None, self.in_c, cols, mat_buf),
                                    self.in_c,
                                    ld,
                                )?;
                                let a = (x_ref, self.in_c);
                                add_weight_gradient(&mut dw, transposed_dw, a, (col_ref, rows))?;
                                if let Some(dx_group) = dx_group {
                                    if images == 1 {
                                        let mut dx_mat =
                                            MatMut::row_major(dx_group, self.in_c, ld)?;
                                        matmul(&mut dx_mat, w_mat, col_ref, false)?;
                                    } else {
                                        let x_mat = &mut mat_buf[..self.in_c * ld];
                                        let mut dx_mat = MatMut::row_major(x_mat, self.in_c, ld)?;
                                        matmul(&mut dx_mat, w_mat, col_ref, false)?;
                                        scatter(x_mat, self.in_c, cols, dx_group);
                                    }
                                }
                            }
                        }
                        first += images;
                    }
                    candle_core::Result::Ok(())
                },
            )?;
            Ok((dw, db))
        })?;
        let (mut dw, db) = sum_in_order(partials)?;
        if transposed_dw {
            dw = transpose(&dw, rows, w_len / rows);
        }
        Ok((need_x.then_some(dx), dw, db))
    }
}

/// The blocks' weight and bias gradients added up in block order, so that the sum does
/// not depend on which thread ran which block; `dw` on the threads, in slices of 16 Ki
/// values (64 KiB: the 524,288-value gradients in 32 tasks). Every block's are of the same
/// lengths (each starts from zeros of the layer's sizes).
///
/// # Errors
/// If there are no blocks, or a slice's task did not run.
fn sum_in_order(partials: Vec<(Vec<f32>, Vec<f32>)>) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    const SLICE: usize = 1 << 14;
    let mut partials = partials.into_iter();
    let Some((mut dw, mut db)) = partials.next() else {
        bail!("candle-vae-conv: a backward pass without blocks")
    };
    let rest: Vec<_> = partials.collect();
    for (_, pb) in &rest {
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    if !rest.is_empty() {
        let slices = dw.chunks_mut(SLICE).enumerate().collect();
        for_each(slices, |(i, slice): (usize, &mut [f32])| {
            for (pw, _) in &rest {
                let part = pw.get(i * SLICE..).unwrap_or_default();
                slice.iter_mut().zip(part).for_each(|(a, b)| *a += b);
            }
        })?;
    }
    Ok((dw, db))
}

/// `∂W += A·colᵀ` for the `(channels, ·)` matrix `A` (∂Y of a convolution, X of a
/// transposed one) and the `(rows, ·)` patch matrix `col`, each given with its row count;
/// into `∂Wᵀ` (`dw` holding the `(rows, channels)` matrix) if `transposed`.
///
/// gemm packs the left operand of its column-major form, which is `col` for `∂W` and `A`
/// for `∂Wᵀ`: row-major, both need the element-by-element transposing pack, and `A` has
/// `channels` rows where `col` has `C·K₁·K₂` (8 × fewer in the 64×64 VAE's inner layers).
fn add_weight_gradient(
    dw: &mut [f32],
    transposed: bool,
    (a, channels): (MatRef<'_>, usize),
    (col, rows): (MatRef<'_>, usize),
) -> candle_core::Result<()> {
    if transposed {
        let mut dw_t = MatMut::row_major(dw, rows, channels)?;
        matmul(&mut dw_t, col, a.t(), true)
    } else {
        let mut dw = MatMut::row_major(dw, channels, rows)?;
        matmul(&mut dw, a, col.t(), true)
    }
}

/// The `(cols, rows)` transpose of the row-major `(rows, cols)` matrix `mat`, in tiles that
/// stay in L1.
fn transpose(mat: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; mat.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = mat[r * cols + c];
                }
            }
        }
    }
    out
}

/// Copies the images `(channels, pixels)` held one after another in `images` into the
/// `(channels, B·pixels)` matrix `mat` (image b in columns b·pixels..); with
/// `relu_output`, the gradients through the ReLU whose outputs those are.
fn gather(
    images: &[f32],
    relu_output: Option<&[f32]>,
    channels: usize,
    pixels: usize,
    mat: &mut [f32],
) {
    let ld = images.len() / channels.max(1);
    for (b, image) in images.chunks_exact(channels * pixels).enumerate() {
        for (c, plane) in image.chunks_exact(pixels).enumerate() {
            let at = c * ld + b * pixels;
            let out = &mut mat[at..at + pixels];
            match relu_output {
                None => out.copy_from_slice(plane),
                Some(y) => {
                    let y = &y[(b * channels + c) * pixels..][..pixels];
                    for ((o, &g), &y) in out.iter_mut().zip(plane).zip(y) {
                        *o = relu_gradient(g, y);
                    }
                }
            }
        }
    }
}

/// The inverse of [`gather`]: the `(channels, B·pixels)` matrix `mat` into the images.
fn scatter(mat: &[f32], channels: usize, pixels: usize, images: &mut [f32]) {
    let ld = images.len() / channels.max(1);
    for (b, image) in images.chunks_exact_mut(channels * pixels).enumerate() {
        for (c, plane) in image.chunks_exact_mut(pixels).enumerate() {
            let at = c * ld + b * pixels;
            plane.copy_from_slice(&mat[at..at + pixels]);
        }
    }
}

/// The images `(channels, pixels)` held one after another in `images` as one
/// `(channels, B·pixels)` matrix, masked by `relu_output` as in [`gather`]: the slice
/// itself for one image without a mask, else [`gather`]'s copy in `buffer`.
fn side_by_side<'a>(
    images: &'a [f32],
    relu_output: Option<&[f32]>,
    channels: usize,
    pixels: usize,
    buffer: &'a mut [f32],
) -> &'a [f32] {
    if relu_output.is_none() && images.len() == channels * pixels {
        return images;
    }
    let mat = &mut buffer[..images.len()];
    gather(images, relu_output, channels, pixels, mat);
    mat
}

/// `sums[i]` += the sum of row i of the row-major `rows × ld` matrix `mat`.
fn add_row_sums(mat: &[f32], ld: usize, sums: &mut [f32]) {
    for (sum, row) in sums.iter_mut().zip(mat.chunks_exact(ld.max(1))) {
        *sum += row.iter().sum::<f32>();
    }
}

/// `sums[c]` += the sum of plane c of the image `grad` (planes of `pixels`), through the
/// ReLU whose output is `relu_output` if given.
fn add_plane_sums(grad: &[f32], relu_output: Option<&[f32]>, pixels: usize, sums: &mut [f32]) {
    let planes = sums.iter_mut().zip(grad.chunks_exact(pixels.max(1)));
    for (c, (sum, plane)) in planes.enumerate() {
        *sum += match relu_output {
            None => plane.iter().sum::<f32>(),
            Some(y) => plane
                .iter()
                .zip(&y[c * pixels..(c + 1) * pixels])
                .map(|(&g, &y)| relu_gradient(g, y))
                .sum::<f32>(),
        };
    }
}

/// ∂x (if asked for), ∂w, ∂b.
type Gradients = (Option<Vec<f32>>, Vec<f32>, Vec<f32>);

/// A convolution or transposed convolution with a bias, as one op with its own backward.
struct ConvOp {
    kind: Kind,
    stride: usize,
    padding: usize,
    output_padding: usize,
    /// A ReLU on the output (forward) and its mask on the output gradient (backward).
    relu: bool,
}

impl ConvOp {
    /// Whether the kernel may run on `x`, `w`, `b`: enabled, a stride, non-empty CPU `f32`
    /// tensors of ranks 4, 4, 1 whose channels and bias length match the weight's axes for
    /// this kind, `w` and `b` contiguous.
    fn fits(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<bool> {
        // Weight axes of the input and output channels.
        let (in_axis, out_axis) = match self.kind {
            Kind::Conv => (1, 0),
            Kind::Transposed => (0, 1),
        };
        Ok(super::fused_kernels().conv
            && self.stride > 0
            && x.rank() == 4
            && w.rank() == 4
            && b.rank() == 1
            && x.elem_count() > 0
            && w.elem_count() > 0
            && x.dim(1)? == w.dim(in_axis)?
            && b.dim(0)? == w.dim(out_axis)?
            && w.is_contiguous()
            && b.is_contiguous()
            && [x, w, b].iter().all(|t| is_cpu_f32(t)))
    }

    fn apply(self, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        super::prime_allocator();
        x.contiguous()?.apply_op3(w, b, self)
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Conv => "candle-vae-conv2d",
            Kind::Transposed => "candle-vae-conv-transpose2d",
        }
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
        let p = Problem::new(self, x_l.shape().dims4()?, w_l.shape().dims4()?)?;
        let y = p.forward(slice(x, x_l)?, slice(w, w_l)?, slice(b, b_l)?, self.relu)?;
        Ok((
            CpuStorage::F32(y),
            Shape::from((p.n, p.out_c, p.y_hw.0, p.y_hw.1)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let p = Problem::new(self, x.dims4()?, w.dims4()?)?;
        let grad = grad.contiguous()?;
        let need_x = x.track_op();
        let (dx, dw, db) = with_slice(x, |xs| {
            with_slice(w, |ws| {
                with_slice(&grad, |g| {
                    if self.relu {
                        with_slice(y, |ys| p.backward(xs, ws, g, Some(ys), need_x))
                    } else {
                        p.backward(xs, ws, g, None, need_x)
                    }
                })
            })
        })?;
        let dx = match dx {
            Some(dx) => Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?),
            None => None,
        };
        // Into the optimiser's buffers where a gradient sink holds the parameter
        // (`super::sink`), sparing candle's zero-filled tensor and addition per parameter.
        let dw = sink::deposit_or_tensor(w, dw)?;
        let db = sink::deposit_or_tensor(b, db)?;
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct values, so that a copy from the wrong place cannot pass.
    fn ramp(len: usize, from: f32) -> Vec<f32> {
        (0..len).map(|i| from + i as f32).collect()
    }

    #[test]
    fn strided_copies_match_plain_loops() {
        // Strides 1–3 (2 takes the pair loops), lengths that leave 0 or 1 value past the
        // pairs, a mask that closes every third value.
        for s in 1..=3 {
            for from_len in [0, 1, 2, 5, 8, 9] {
                for out_len in [0, 1, 3, 4, 5] {
                    let from = ramp(from_len, 1.0);
                    let mask: Vec<f32> = (0..from_len).map(|i| (i % 3) as f32 - 0.5).collect();
                    let reach = out_len.min(from_len.div_ceil(s));
                    for masked in [false, true] {
                        let mut out = vec![-1.0; out_len];
                        take_every(s, &from, masked.then_some(&mask[..]), &mut out);
                        for (i, o) in out.iter().enumerate() {
                            let want = if i >= reach {
                                -1.0
                            } else if masked {
                                relu_gradient(from[i * s], mask[i * s])
                            } else {
                                from[i * s]
                            };
                            assert_eq!(*o, want, "take s={s} {from_len}->{out_len} {masked} [{i}]");
                        }
                    }
                    // add_every's `from` is the short side, `to` the strided one.
                    let short = ramp(out_len, 100.0);
                    let mut to = ramp(from_len, 0.5);
                    add_every(s, &short, &mut to);
                    let mut want = ramp(from_len, 0.5);
                    for (d, v) in want.iter_mut().step_by(s).zip(&short) {
                        *d += v;
                    }
                    assert_eq!(to, want, "add s={s} {from_len}<-{out_len}");
                }
            }
        }
    }

    #[test]
    fn run_copies_match_plain_loops() {
        // Unrolled widths (1..=32) and the generic loop above them, each with a gap
        // between runs and without.
        for width in [1, 3, 4, 7, 8, 14, 16, 32, 33, 50] {
            for step in [width, width + 3] {
                for runs in [0, 1, 4] {
                    let len = if runs == 0 {
                        0
                    } else {
                        (runs - 1) * step + width
                    };
                    let from = ramp(len, 1.0);
                    let mut out = vec![0.0; runs * width];
                    copy_runs(&mut out, width, &from, step);
                    let mut to = ramp(len, 0.25);
                    let segments = ramp(runs * width, 1000.0);
                    add_runs(&segments, width, &mut to, step);
                    let mut want_to = ramp(len, 0.25);
                    for r in 0..runs {
                        for k in 0..width {
                            assert_eq!(
                                out[r * width + k],
                                from[r * step + k],
                                "copy {width} {step}"
                            );
                            want_to[r * step + k] += segments[r * width + k];
                        }
                    }
                    assert_eq!(to, want_to, "add {width} {step} {runs}");
                }
            }
        }
    }
}
