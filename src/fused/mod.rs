//! Fused CPU kernels for the hot paths of training and evaluation.
//!
//! Plain candle runs a training step of the MNIST VAE as some hundred small operations,
//! most of them single-threaded passes over memory that allocate their result. The kernels
//! here replace the costly chains with one pass each:
//!
//! * **Adam**: the whole update θ, m, v ← Adam(θ, m, v, g) in place, one pass over the four
//!   buffers, threaded ([`Adam::step`](crate::Adam::step)). Moments that decay below
//!   `f32::MIN_POSITIVE` are stored as 0 rather than as subnormals, which the CPU handles
//!   some hundred times slower (the update is unchanged to `f32` precision).
//! * **ELBO**: the Bernoulli log-likelihood of the logits and the analytic KL, their
//!   reductions and their gradients, as one candle `CustomOp` with its own backward
//!   ([`ElboLoss::forward`](crate::ElboLoss::forward)); the Bernoulli log-likelihood alone
//!   for [`Likelihood::log_prob`](crate::Likelihood::log_prob) (importance sampling).
//! * **Linear**: `act(x·Wᵀ + b)` with the bias and ReLU fused into one pass over the
//!   product, and a backward that masks, sums the bias gradient and calls the matrix
//!   products on transposed *views* (no transposed copies), skipping the gradient of an
//!   input that needs none ([`MlpEncoder`](crate::MlpEncoder),
//!   [`MlpDecoder`](crate::MlpDecoder)).
//! * **Gradients into the optimiser**: during
//!   [`Adam::backward_step`](crate::Adam::backward_step), the linear layers write their
//!   weight and bias gradients into buffers the optimiser keeps from step to step, instead
//!   of the fresh zero-filled tensors candle accumulates every gradient into (one
//!   allocation, zero-fill and addition fewer per parameter and step).
//! * **Convolutions**: 2-D convolutions and transposed convolutions as im2col/col2im and
//!   matrix products, forward and backward (candle 0.11 runs transposed convolutions, and
//!   so every convolution's backward, as direct loops), threaded over the batch, a ReLU
//!   after them fused into the same op ([`conv2d_activated`]; used by
//!   [`ConvEncoder`](crate::ConvEncoder) and [`ConvDecoder`](crate::ConvDecoder)).
//!
//! Every kernel is chosen transparently: it runs where it applies (CPU, `f32`, the layouts
//! it handles) and the plain candle ops run everywhere else (CUDA, Metal, other dtypes),
//! with the same results up to floating-point rounding. The tests compare the two paths
//! value for value and gradient for gradient.
//!
//! [`with_fused_kernels`] turns kernels off on the current thread, for those comparisons
//! and for measuring what each kernel is worth (see `docs/PERFORMANCE.md`).
//!
//! The kernels split their work on candle's own thread pool, the one its element-wise ops
//! use: `CANDLE_NUM_THREADS` threads (else `RAYON_NUM_THREADS`, else one per core), the
//! calling thread among them; `CANDLE_NUM_THREADS=1` runs every kernel on the caller.
//!
//! ```
//! use candle_vae::fused::{FusedKernels, fused_kernels, with_fused_kernels};
//!
//! assert_eq!(fused_kernels(), FusedKernels::ALL);
//! let inside = with_fused_kernels(FusedKernels::NONE.with_adam(true), fused_kernels);
//! assert!(inside.adam && !inside.elbo && !inside.linear);
//! assert_eq!(fused_kernels(), FusedKernels::ALL); // restored
//! ```

use std::cell::Cell;

pub use conv::{conv_transpose2d, conv_transpose2d_activated, conv2d, conv2d_activated};

pub(crate) mod adam;
mod conv;
pub(crate) mod elbo;
mod gemm;
pub(crate) mod linear;
pub(crate) mod math;
pub(crate) mod parallel;
pub(crate) mod sink;
mod storage;

/// Which fused kernels may run on the current thread (all, by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FusedKernels {
    /// The in-place Adam update.
    pub adam: bool,
    /// The ELBO (Bernoulli logits + analytic KL) and the Bernoulli log-likelihood.
    pub elbo: bool,
    /// Linear layers with fused bias and ReLU.
    pub linear: bool,
    /// 2-D convolutions and transposed convolutions as im2col/col2im and matrix products.
    pub conv: bool,
}

impl FusedKernels {
    /// Every kernel on: the default.
    pub const ALL: Self = Self {
        adam: true,
        elbo: true,
        linear: true,
        conv: true,
    };

    /// Every kernel off: plain candle ops only.
    pub const NONE: Self = Self {
        adam: false,
        elbo: false,
        linear: false,
        conv: false,
    };

    /// Sets whether the Adam kernel runs.
    #[must_use]
    pub const fn with_adam(mut self, on: bool) -> Self {
        self.adam = on;
        self
    }

    /// Sets whether the ELBO kernels run.
    #[must_use]
    pub const fn with_elbo(mut self, on: bool) -> Self {
        self.elbo = on;
        self
    }

    /// Sets whether the linear-layer kernel runs.
    #[must_use]
    pub const fn with_linear(mut self, on: bool) -> Self {
        self.linear = on;
        self
    }

    /// Sets whether the convolution kernels run.
    #[must_use]
    pub const fn with_conv(mut self, on: bool) -> Self {
        self.conv = on;
        self
    }
}

impl Default for FusedKernels {
    fn default() -> Self {
        Self::ALL
    }
}

/// Allocates and frees one buffer just under 32 MiB, once per process (called when an
/// [`Adam`] is built and when a fused linear or conv layer first runs).
///
/// [`Adam`]: crate::Adam
///
/// A training step allocates and frees megabytes of gradients and activations (some 10 MiB
/// for the MNIST MLP, over 100 MiB for the 3×64×64 conv VAE). glibc's malloc gives freed
/// memory at the top of its heap back to the OS once more than its trim threshold is free
/// (2 × its mmap threshold, which starts at 128 KiB and grows to the largest mmap-ed block
/// freed so far, up to 32 MiB), so by default every step gives megabytes back and faults
/// them in again (~1,500 page faults per MNIST step, about a quarter of its CPU time).
/// Freeing one block of just under 32 MiB raises the thresholds to 32 and 64 MiB, the
/// most this can reach, after which the step's memory is mostly reused instead. Against
/// a 16 MiB block (which gave the MNIST step's ~20 faults), the 64×64 conv VAE takes 84k
/// page faults over 20 steps instead of 311k and runs 1.16× faster; an MNIST epoch is
/// unchanged (63.9k against 63.6k faults, most of them loading the data;
/// docs/PERFORMANCE.md §2d). The process may keep up to 64 MiB of freed memory. Other
/// allocators are unaffected; no setting is changed and everything allocated is freed.
pub(crate) fn prime_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let block: Vec<u8> = Vec::with_capacity((32 << 20) - (64 << 10));
        drop(std::hint::black_box(block));
    });
}

thread_local! {
    static ENABLED: Cell<FusedKernels> = const { Cell::new(FusedKernels::ALL) };
}

/// The kernels enabled on the current thread.
pub fn fused_kernels() -> FusedKernels {
    ENABLED.with(Cell::get)
}

/// Runs `f` with only `kernels` enabled on the current thread, then restores the previous
/// setting (also if `f` panics). Other threads are not affected.
pub fn with_fused_kernels<T>(kernels: FusedKernels, f: impl FnOnce() -> T) -> T {
    struct Restore(FusedKernels);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENABLED.with(|e| e.set(self.0));
        }
    }
    let _restore = Restore(ENABLED.with(|e| e.replace(kernels)));
    f()
}
