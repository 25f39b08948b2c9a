//! Seeded shuffling and batching: an epoch as an iterator of tensors.

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ensure};
use crate::noise::NoiseSource;

use super::dataset::{bernoulli_in_place, check_threshold};
use super::{Binarization, ImageDataset, Layout};

/// In which order an epoch visits the examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Order {
    /// 0, 1, 2, …: for evaluation.
    Sequential,
    /// A fresh uniform permutation every epoch, drawn from the epoch's noise source.
    #[default]
    Shuffled,
}

/// Configuration of a [`DataLoader`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataLoaderConfig {
    /// Examples per batch (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Visiting order.
    pub order: Order,
    /// How pixels are binarized.
    pub binarization: Binarization,
    /// Tensor layout of a batch.
    pub layout: Layout,
    /// Floating-point type of a batch.
    pub dtype: DType,
}

impl Default for DataLoaderConfig {
    /// Batches of 128, shuffled, grayscale, flat, `f32` (the pytorch/examples VAE).
    fn default() -> Self {
        Self::new(128)
    }
}

impl DataLoaderConfig {
    /// Shuffled, grayscale, flat, `f32` batches of `batch_size`.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            order: Order::Shuffled,
            binarization: Binarization::None,
            layout: Layout::Flat,
            dtype: DType::F32,
        }
    }

    /// Sets the visiting order.
    #[must_use]
    pub fn with_order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Sets the binarization.
    #[must_use]
    pub fn with_binarization(mut self, binarization: Binarization) -> Self {
        self.binarization = binarization;
        self
    }

    /// Sets the tensor layout.
    #[must_use]
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the floating-point type.
    #[must_use]
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Checks every rule; [`DataLoader::new`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the field and the rule.
    pub fn validate(&self) -> Result<()> {
        ensure(
            self.batch_size > 0,
            "DataLoaderConfig",
            "batch_size",
            self.batch_size,
            "must be > 0",
        )?;
        ensure(
            self.dtype.is_float(),
            "DataLoaderConfig",
            "dtype",
            self.dtype,
            "must be a floating-point type",
        )?;
        if let Binarization::Threshold(t) = self.binarization {
            check_threshold(t)?;
        }
        Ok(())
    }
}

/// One batch of an epoch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The images, in [0, 1] (or {0, 1} when binarized), in the loader's layout.
    pub images: Tensor,
    /// The labels `(N,)` as `u32`, if the dataset has them.
    pub labels: Option<Tensor>,
    /// The dataset indices of the examples, in batch order.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch is empty (never, for batches from a [`DataLoader`]).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Cuts a dataset into batches, epoch after epoch.
///
/// A static binarization is applied once, when the loader is built; a dynamic one draws
/// every batch afresh. All randomness (the order, dynamic binarization) comes from the
/// [`NoiseSource`] given to [`epoch`](Self::epoch), so an epoch is a pure function of the
/// source's state: store that state in a checkpoint and a resumed run sees the same
/// batches.
#[derive(Debug, Clone)]
pub struct DataLoader {
    dataset: ImageDataset,
    config: DataLoaderConfig,
}

impl DataLoader {
    /// A loader over `dataset`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if the config breaks a rule or the dataset is empty.
    pub fn new(dataset: ImageDataset, config: DataLoaderConfig) -> Result<Self> {
        config.validate()?;
        ensure(
            !dataset.is_empty(),
            "DataLoader",
            "dataset",
            "0 images",
            "needs at least one image",
        )?;
        let dataset = if config.binarization.is_static() {
            dataset.binarized(config.binarization)?
        } else {
            dataset
        };
        Ok(Self { dataset, config })
    }

    /// The dataset, after any static binarization.
    pub fn dataset(&self) -> &ImageDataset {
        &self.dataset
    }

    /// The configuration.
    pub fn config(&self) -> &DataLoaderConfig {
        &self.config
    }

    /// Number of examples per epoch.
    pub fn examples(&self) -> usize {
        self.dataset.len()
    }

    /// Number of batches per epoch, the last partial one included.
    pub fn batches(&self) -> usize {
        self.dataset.len().div_ceil(self.config.batch_size)
    }

    /// The batches of one epoch, drawn from `noise` (the order now, dynamic binarization
    /// batch by batch as the iterator advances), on `device`.
    pub fn epoch<'a>(&'a self, noise: &'a mut NoiseSource, device: &Device) -> Epoch<'a> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.order == Order::Shuffled {
            order.shuffle(noise.rng());
        }
        Epoch {
            loader: self,
            order,
            next: 0,
            noise,
            device: device.clone(),
        }
    }

    fn batch(&self, indices: &[usize], noise: &mut NoiseSource, device: &Device) -> Result<Batch> {
        let data = &self.dataset;
        let images = if self.config.binarization == Binarization::Dynamic {
            let mut pixels = data.gather(indices);
            bernoulli_in_place(&mut pixels, noise);
            data.make_tensor(
                &pixels,
                indices.len(),
                self.config.layout,
                self.config.dtype,
                device,
            )?
        } else {
            data.to_tensor(indices, self.config.layout, self.config.dtype, device)?
        };
        Ok(Batch {
            images,
            labels: data.labels_tensor(indices, device)?,
            indices: indices.to_vec(),
        })
    }
}

/// The batches of one epoch (see [`DataLoader::epoch`]).
#[derive(Debug)]
pub struct Epoch<'a> {
    loader: &'a DataLoader,
    order: Vec<usize>,
    next: usize,
    noise: &'a mut NoiseSource,
    device: Device,
}

impl Epoch<'_> {
    /// The visiting order of the whole epoch.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl Iterator for Epoch<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.loader.config.batch_size).min(self.order.len());
        let indices = &self.order[self.next..end];
        self.next = end;
        Some(self.loader.batch(indices, self.noise, &self.device))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.next).div_ceil(self.loader.config.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Epoch<'_> {}

/// Anything that cuts an epoch into [`Batch`]es: what [`train_epoch`](crate::train::train_epoch),
/// [`evaluate`](crate::train::evaluate), [`importance_sampled`](crate::train::importance_sampled)
/// and the [`Trainer`](crate::train::Trainer) read. [`DataLoader`] (images) and
/// [`TensorLoader`] (any in-memory tensor: counts, features) implement it; so can a
/// user's own source (streamed from disk, generated).
pub trait BatchSource {
    /// Examples per epoch.
    fn examples(&self) -> usize;

    /// Batches per epoch, the last partial one included.
    fn batches(&self) -> usize;

    /// The batches of one epoch on `device`, any randomness (the order, a binarization)
    /// drawn from `noise`, so that a resumed run sees the same batches.
    fn epoch<'a>(
        &'a self,
        noise: &'a mut NoiseSource,
        device: &Device,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + 'a>;
}

impl BatchSource for DataLoader {
    fn examples(&self) -> usize {
        DataLoader::examples(self)
    }

    fn batches(&self) -> usize {
        DataLoader::batches(self)
    }

    fn epoch<'a>(
        &'a self,
        noise: &'a mut NoiseSource,
        device: &Device,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + 'a> {
        Box::new(DataLoader::epoch(self, noise, device))
    }
}

/// Batches of the rows of a tensor held in memory (on the CPU): count matrices, feature
/// vectors, anything that is not an 8-bit image. Shuffled like [`DataLoader`]: a fresh
/// permutation per epoch from the epoch's noise, the last partial batch kept.
///
/// # Shapes
/// `data`: `(N, …)`, batches `(B, …)`; `labels`: `(N,)`, batches `(B,)`.
#[derive(Debug, Clone)]
pub struct TensorLoader {
    data: Tensor,
    labels: Option<Tensor>,
    batch_size: usize,
    order: Order,
}

impl TensorLoader {
    /// Batches of `batch_size` rows of `data` (and `labels`), visited in `order`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a batch size of 0, an
    /// empty or rank-0 `data`, or labels that are not one per row.
    pub fn new(
        data: Tensor,
        labels: Option<Tensor>,
        batch_size: usize,
        order: Order,
    ) -> Result<Self> {
        ensure(
            batch_size > 0,
            "TensorLoader",
            "batch_size",
            batch_size,
            "must be > 0",
        )?;
        let rows = data.dims().first().copied().unwrap_or(0);
        ensure(
            rows > 0,
            "TensorLoader",
            "data",
            format!("{:?}", data.dims()),
            "needs at least one row",
        )?;
        if let Some(labels) = &labels {
            ensure(
                labels.dims() == [rows],
                "TensorLoader",
                "labels",
                format!("{:?}", labels.dims()),
                "must have shape (N,), one per row of data",
            )?;
        }
        Ok(Self {
            data,
            labels,
            batch_size,
            order,
        })
    }

    /// The data.
    pub fn data(&self) -> &Tensor {
        &self.data
    }
}

impl BatchSource for TensorLoader {
    fn examples(&self) -> usize {
        self.data.dims().first().copied().unwrap_or(0)
    }

    fn batches(&self) -> usize {
        self.examples().div_ceil(self.batch_size)
    }

    fn epoch<'a>(
        &'a self,
        noise: &'a mut NoiseSource,
        device: &Device,
    ) -> Box<dyn Iterator<Item = Result<Batch>> + 'a> {
        let mut order: Vec<usize> = (0..self.examples()).collect();
        if self.order == Order::Shuffled {
            order.shuffle(noise.rng());
        }
        let device = device.clone();
        let chunks: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        Box::new(chunks.into_iter().map(move |indices| {
            let index: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
            let index = Tensor::new(index.as_slice(), self.data.device())?;
            let images = self.data.index_select(&index, 0)?.to_device(&device)?;
            let labels = match &self.labels {
                Some(labels) => Some(labels.index_select(&index, 0)?.to_device(&device)?),
                None => None,
            };
            Ok(Batch {
                images,
                labels,
                indices,
            })
        }))
    }
}
