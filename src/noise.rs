//! Seeded randomness: the noise ε of the reparameterization trick, and anything else
//! (shuffles, binarization draws) that must repeat bit for bit under the same seed.
//!
//! Candle's CPU random generator cannot be seeded, so every random tensor in this crate
//! comes from a [`NoiseSource`]: a ChaCha12 stream (the generator behind `rand`'s
//! `StdRng`) drawn on the host with `rand_distr` and copied to the tensor's device. Its
//! whole state is three numbers ([`NoiseState`]), so a training checkpoint can store it
//! and a resumed run continues the exact same stream.

use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// A seeded source of random tensors.
///
/// Two sources built from the same seed produce the same tensors in the same order, on
/// every platform, whatever the device: draws happen on the host.
///
/// ```
/// # use candle_vae::NoiseSource;
/// # use candle_core::{DType, Device};
/// let mut a = NoiseSource::new(7);
/// let mut b = NoiseSource::new(7);
/// let ea = a.standard_normal((2, 3), DType::F32, &Device::Cpu)?;
/// let eb = b.standard_normal((2, 3), DType::F32, &Device::Cpu)?;
/// assert_eq!(ea.to_vec2::<f32>()?, eb.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NoiseSource {
    rng: ChaCha12Rng,
}

/// The complete state of a [`NoiseSource`], for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseState {
    /// The 256-bit ChaCha key.
    pub key: [u8; 32],
    /// The ChaCha stream number.
    pub stream: u64,
    /// Position in the stream, in 32-bit words.
    pub word_pos: u128,
}

impl NoiseSource {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha12Rng::seed_from_u64(seed),
        }
    }

    /// An independent source for a sub-task: same key, stream `stream`, position 0.
    ///
    /// Use it to give, say, data shuffling and reparameterization noise separate streams,
    /// so that changing how much noise one consumes does not shift the other.
    pub fn substream(&self, stream: u64) -> Self {
        let mut rng = ChaCha12Rng::from_seed(self.rng.get_seed());
        rng.set_stream(stream);
        Self { rng }
    }

    /// The state to store in a checkpoint.
    pub fn state(&self) -> NoiseState {
        NoiseState {
            key: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// A source that continues exactly where `state` was taken.
    pub fn from_state(state: NoiseState) -> Self {
        let mut rng = ChaCha12Rng::from_seed(state.key);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        Self { rng }
    }

    /// The underlying generator, for draws that are not tensors (shuffles, indices).
    pub fn rng(&mut self) -> &mut impl Rng {
        &mut self.rng
    }

    /// A tensor of independent N(0, 1) draws.
    ///
    /// # Errors
    /// If the tensor cannot be created on `device` in `dtype`.
    pub fn standard_normal(
        &mut self,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.draw(shape.into(), dtype, device, StandardNormal)
    }

    /// A tensor of independent U[0, 1) draws.
    ///
    /// # Errors
    /// If the tensor cannot be created on `device` in `dtype`.
    pub fn uniform(
        &mut self,
        shape: impl Into<Shape>,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.draw(shape.into(), dtype, device, rand::distr::StandardUniform)
    }

    fn draw<D>(
        &mut self,
        shape: Shape,
        dtype: DType,
        device: &Device,
        dist: D,
    ) -> candle_core::Result<Tensor>
    where
        D: Distribution<f32> + Distribution<f64>,
    {
        // Checked: `Shape::elem_count` wraps around (or panics) on overflow, and a vector
        // too large to allocate would abort the process.
        let n = crate::error::elements(shape.dims())
            .ok_or_else(|| crate::error::too_large("NoiseSource", shape.dims()))?;
        let host = if dtype == DType::F64 {
            let mut values = with_capacity::<f64>(n, shape.dims())?;
            values.extend(Distribution::<f64>::sample_iter(&dist, &mut self.rng).take(n));
            Tensor::from_vec(values, shape, &Device::Cpu)?
        } else {
            let mut values = with_capacity::<f32>(n, shape.dims())?;
            values.extend(Distribution::<f32>::sample_iter(&dist, &mut self.rng).take(n));
            Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?
        };
        host.to_device(device)
    }
}

/// An empty vector with room for `n` values, or an error if the memory cannot be had.
fn with_capacity<T>(n: usize, dims: &[usize]) -> candle_core::Result<Vec<T>> {
    let mut values = Vec::new();
    values.try_reserve_exact(n).map_err(|e| {
        candle_core::Error::Msg(format!(
            "NoiseSource: cannot allocate a tensor of shape {dims:?} ({n} values): {e}"
        ))
    })?;
    Ok(values)
}
