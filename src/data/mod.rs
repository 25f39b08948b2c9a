//! Image datasets: IDX files, binarization, seeded shuffling and batching.
//!
//! * [`idx`] reads the IDX format of MNIST (plain or gzip), strictly.
//! * [`ImageDataset`] holds 8-bit grayscale images (and optional labels) in memory and
//!   turns any subset into a tensor in [0, 1].
//! * [`Binarization`] makes binary data for a Bernoulli likelihood: a threshold, one fixed
//!   seeded draw, or a fresh draw every epoch (Burda et al. 2015).
//! * [`DataLoader`] cuts an epoch into batches, shuffled from a [`NoiseSource`] and keeping
//!   the last partial batch.
//! * [`mnist`] loads MNIST; [`faces`] loads Frey Face and Olivetti with the seeded
//!   splits of [`split`]; [`resolve_data_dir`] finds a dataset's directory.
//!
//! ```
//! use candle_core::Device;
//! use candle_vae::NoiseSource;
//! use candle_vae::data::{Binarization, DataLoader, DataLoaderConfig, ImageDataset};
//!
//! // Five 2×2 images with values 0, 51, 102, 153, 204 (= 0, 0.2, …, 0.8).
//! let pixels: Vec<u8> = (0..5u8).flat_map(|i| [i * 51; 4]).collect();
//! let data = ImageDataset::new(pixels, 2, 2, Some(vec![0, 1, 2, 3, 4]))?;
//! let loader = DataLoader::new(
//!     data,
//!     DataLoaderConfig::new(2).with_binarization(Binarization::Threshold(0.5)),
//! )?;
//! let mut noise = NoiseSource::new(0);
//! let batches = loader
//!     .epoch(&mut noise, &Device::Cpu)
//!     .collect::<candle_vae::Result<Vec<_>>>()?;
//! assert_eq!(batches.len(), 3); // 2 + 2 + 1: the last partial batch is kept
//! assert_eq!(batches[2].images.dims(), &[1, 4]);
//! # Ok::<(), candle_vae::Error>(())
//! ```

pub mod faces;
pub mod idx;
pub mod mnist;
pub mod split;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::conv::ImageShape;
use crate::error::{Error, IdxProblem, Result, ensure};
use crate::noise::NoiseSource;

pub use faces::{FreyFace, Olivetti};
pub use mnist::Mnist;

/// The environment variable naming the directory that holds one folder per dataset.
pub const DATA_ENV: &str = "CANDLE_VAE_DATA";

/// 8-bit grayscale images of one size, with optional labels, held in memory.
///
/// Pixels are stored as in the IDX files (0 = black … 255 = white) and become
/// `value / 255` in tensors, the values torchvision's `ToTensor` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDataset {
    pixels: Vec<u8>,
    labels: Option<Vec<u8>>,
    height: usize,
    width: usize,
}

/// How a batch of images is laid out as a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Layout {
    /// `(N, H·W)`: flattened, for fully connected models.
    #[default]
    Flat,
    /// `(N, 1, H, W)`: one channel, for convolutional models.
    Image,
}

/// How grayscale pixels p ∈ [0, 1] become the data a model sees.
///
/// A Bernoulli likelihood is a proper likelihood only on binary data; on grayscale
/// pixels it is the cross-entropy that pytorch/examples trains with, whose "NLL" is not
/// comparable with the literature's. The literature's numbers on MNIST use binarized
/// data: dynamically binarized for training and one fixed draw for testing (Burda et al.
/// 2015), or a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum Binarization {
    /// Grayscale values in [0, 1].
    #[default]
    None,
    /// x = 1 if p > t else 0, for the threshold t ∈ [0, 1).
    Threshold(f32),
    /// x ~ Bernoulli(p), drawn once from `seed` and the same every epoch (a fixed
    /// binarized test set).
    Fixed {
        /// Seed of the one draw.
        seed: u64,
    },
    /// x ~ Bernoulli(p), drawn afresh each time a batch is built, so every epoch sees new
    /// binary images (Burda et al. 2015): a regulariser, and the model of the data
    /// the literature's likelihoods refer to.
    Dynamic,
}

impl Binarization {
    /// Whether the data is binarized once, before training ([`Threshold`](Self::Threshold),
    /// [`Fixed`](Self::Fixed)), rather than per batch or not at all.
    pub fn is_static(&self) -> bool {
        matches!(
            self,
            Binarization::Threshold(_) | Binarization::Fixed { .. }
        )
    }
}

impl ImageDataset {
    /// A dataset of `pixels.len() / (height · width)` images, row-major, with one label
    /// per image if `labels` is given.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if a side is 0, `pixels` does not hold a whole number of
    /// images, or the labels are not one per image.
    pub fn new(
        pixels: Vec<u8>,
        height: usize,
        width: usize,
        labels: Option<Vec<u8>>,
    ) -> Result<Self> {
        ensure(
            height > 0 && width > 0,
            "ImageDataset",
            "height × width",
            (height, width),
            "both sides must be > 0",
        )?;
        let size = height.checked_mul(width).ok_or_else(|| {
            Error::config(
                "ImageDataset",
                "height × width",
                (height, width),
                "overflows usize",
            )
        })?;
        ensure(
            pixels.len() % size == 0,
            "ImageDataset",
            "pixels.len()",
            pixels.len(),
            "must be a multiple of height × width",
        )?;
        if let Some(labels) = &labels {
            ensure(
                labels.len() == pixels.len() / size,
                "ImageDataset",
                "labels.len()",
                labels.len(),
                "must equal the number of images",
            )?;
        }
        Ok(Self {
            pixels,
            labels,
            height,
            width,
        })
    }

    /// Reads images (and labels) from IDX files, plain or gzipped.
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be read; [`Error::Idx`] if one is malformed or the
    /// label file does not hold one label per image ([`IdxProblem::CountMismatch`]).
    pub fn from_idx(images: impl AsRef<Path>, labels: Option<&Path>) -> Result<Self> {
        let images = images.as_ref();
        let array = idx::read_images(images)?;
        let (count, height, width) = (array.dims[0], array.dims[1], array.dims[2]);
        let labels = match labels {
            Some(path) => {
                let labels = idx::read_labels(path)?;
                if labels.len() != count {
                    return Err(Error::Idx {
                        path: path.to_path_buf(),
                        problem: IdxProblem::CountMismatch {
                            labels: labels.len(),
                            images: count,
                            images_path: images.to_path_buf(),
                        },
                    });
                }
                Some(labels)
            }
            None => None,
        };
        Self::new(array.data, height, width, labels)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.height * self.width)
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Pixels per image, `height · width`.
    pub fn image_size(&self) -> usize {
        self.height * self.width
    }

    /// The shape of one image: one channel, `height × width`.
    pub fn image_shape(&self) -> ImageShape {
        ImageShape::new(1, self.height, self.width)
    }

    /// All pixels, image after image, row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixels of image `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.image_size();
        self.pixels.get(i * size..(i + 1) * size)
    }

    /// The labels, one per image, if the dataset has them.
    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }

    /// The images at `indices`, in that order (indices may repeat).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        self.check_indices(indices)?;
        let size = self.image_size();
        let mut pixels = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * size..(i + 1) * size]);
        }
        let labels = self
            .labels
            .as_ref()
            .map(|l| indices.iter().map(|&i| l[i]).collect());
        Ok(Self {
            pixels,
            labels,
            height: self.height,
            width: self.width,
        })
    }

    /// The first `n` images (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            pixels: self.pixels[..n * self.image_size()].to_vec(),
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
            height: self.height,
            width: self.width,
        }
    }

    /// A copy binarized by a static rule ([`Binarization::Threshold`] or
    /// [`Binarization::Fixed`]); pixels become 0 or 255. [`Binarization::None`] returns a
    /// copy.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for [`Binarization::Dynamic`], which happens per batch (see
    /// [`DataLoader`]), or a threshold outside [0, 1).
    pub fn binarized(&self, binarization: Binarization) -> Result<Self> {
        let pixels = match binarization {
            Binarization::None => self.pixels.clone(),
            Binarization::Threshold(t) => {
                check_threshold(t)?;
                self.pixels
                    .iter()
                    .map(|&p| if f32::from(p) / 255.0 > t { 255 } else { 0 })
                    .collect()
            }
            Binarization::Fixed { seed } => {
                let mut noise = NoiseSource::new(seed);
                let mut pixels = self.pixels.clone();
                bernoulli_in_place(&mut pixels, &mut noise);
                pixels
            }
            Binarization::Dynamic => {
                return Err(Error::config(
                    "ImageDataset::binarized",
                    "binarization",
                    binarization,
                    "only a static binarization applies to a whole dataset; \
                     Dynamic happens per batch in a DataLoader",
                ));
            }
        };
        Ok(Self {
            pixels,
            labels: self.labels.clone(),
            height: self.height,
            width: self.width,
        })
    }

    /// The images at `indices` as a tensor of values in [0, 1].
    ///
    /// # Shapes
    /// `(indices.len(), H·W)` for [`Layout::Flat`], `(indices.len(), 1, H, W)` for
    /// [`Layout::Image`].
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if an index is out of range; candle's error if the tensor
    /// cannot be made in `dtype` on `device`.
    pub fn to_tensor(
        &self,
        indices: &[usize],
        layout: Layout,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.check_indices(indices)?;
        self.make_tensor(&self.gather(indices), indices.len(), layout, dtype, device)
    }

    /// The pixels of the images at `indices` (checked by the caller), concatenated.
    fn gather(&self, indices: &[usize]) -> Vec<u8> {
        let size = self.image_size();
        let mut pixels = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * size..(i + 1) * size]);
        }
        pixels
    }

    /// The labels at `indices` as a `u32` tensor `(indices.len(),)`, or `None` for a
    /// dataset without labels.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if an index is out of range.
    pub fn labels_tensor(&self, indices: &[usize], device: &Device) -> Result<Option<Tensor>> {
        self.check_indices(indices)?;
        let Some(labels) = &self.labels else {
            return Ok(None);
        };
        let values: Vec<u32> = indices.iter().map(|&i| u32::from(labels[i])).collect();
        Ok(Some(Tensor::from_vec(values, indices.len(), device)?))
    }

    /// `pixels / 255` as a tensor; the division happens in `f64` for `F64` and in `f32`
    /// otherwise (the values of torchvision's `ToTensor`).
    fn make_tensor(
        &self,
        pixels: &[u8],
        n: usize,
        layout: Layout,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape: candle_core::Shape = match layout {
            Layout::Flat => (n, self.image_size()).into(),
            Layout::Image => (n, 1, self.height, self.width).into(),
        };
        let tensor = if dtype == DType::F64 {
            let values: Vec<f64> = pixels.iter().map(|&p| f64::from(p) / 255.0).collect();
            Tensor::from_vec(values, shape, &Device::Cpu)?
        } else {
            let values: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
            Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)?
        };
        Ok(tensor.to_device(device)?)
    }

    fn check_indices(&self, indices: &[usize]) -> Result<()> {
        let len = self.len();
        match indices.iter().find(|&&i| i >= len) {
            Some(&i) => Err(Error::config(
                "ImageDataset",
                "index",
                i,
                "must be < the number of images",
            )),
            None => Ok(()),
        }
    }
}

fn check_threshold(t: f32) -> Result<()> {
    ensure(
        (0.0..1.0).contains(&t),
        "Binarization",
        "Threshold",
        t,
        "must be in [0, 1)",
    )
}

/// Replaces every pixel p by 255 with probability p / 255, else 0: one Bernoulli draw
/// per pixel from `noise`, a U[0, 1) value u compared as u < p / 255.
fn bernoulli_in_place(pixels: &mut [u8], noise: &mut NoiseSource) {
    let rng = noise.rng();
    for p in pixels.iter_mut() {
        let u: f32 = rng.random();
        *p = if u < f32::from(*p) / 255.0 { 255 } else { 0 };
    }
}

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
    /// [`Error::InvalidConfig`] naming the field and the rule.
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
    /// [`Error::InvalidConfig`] if the config breaks a rule or the dataset is empty.
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

/// Where a dataset's files are and where to get them: what [`resolve_data_dir`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetFiles {
    /// The dataset's folder name under `$CANDLE_VAE_DATA` and `./data` (e.g. `mnist`).
    pub name: &'static str,
    /// IDX file stems that must be present (each found by [`idx::find`], so either
    /// spelling, plain or `.gz`).
    pub stems: &'static [&'static str],
    /// Where to download them (shown when they are missing).
    pub source: &'static str,
}

impl DatasetFiles {
    /// Whether `dir` holds every file.
    pub fn present_in(&self, dir: &Path) -> bool {
        self.stems.iter().all(|stem| idx::find(dir, stem).is_some())
    }
}

/// The directory that holds a dataset's files: `explicit` if given; otherwise the first of
/// `$CANDLE_VAE_DATA/<name>` and `./data/<name>` that holds every file.
///
/// # Errors
/// [`Error::DataNotFound`] listing the directories searched, the files expected and
/// where to download them, if no candidate holds every file.
pub fn resolve_data_dir(explicit: Option<&Path>, files: &DatasetFiles) -> Result<PathBuf> {
    let env = std::env::var_os(DATA_ENV);
    let candidates = candidate_dirs(explicit, env, files.name);
    match candidates.iter().find(|dir| files.present_in(dir)) {
        Some(dir) => Ok(dir.clone()),
        None => Err(Error::DataNotFound {
            dataset: files.name.to_string(),
            searched: candidates,
            files: files.stems.iter().map(|s| s.to_string()).collect(),
            hint: format!(
                "Give the directory with --data DIR, or set {DATA_ENV}=DIR with a `{}` folder \
                 inside; on a machine with internet, download the files from {}",
                files.name, files.source
            ),
        }),
    }
}

/// The directories [`resolve_data_dir`] searches, in order.
pub(crate) fn candidate_dirs(
    explicit: Option<&Path>,
    env: Option<OsString>,
    name: &str,
) -> Vec<PathBuf> {
    if let Some(dir) = explicit {
        return vec![dir.to_path_buf()];
    }
    let mut dirs = Vec::new();
    if let Some(root) = env.filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(root).join(name));
    }
    dirs.push(Path::new("data").join(name));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_explicit_env_default() {
        let explicit = candidate_dirs(Some(Path::new("/x")), Some("/env".into()), "mnist");
        assert_eq!(explicit, vec![PathBuf::from("/x")]);
        let env = candidate_dirs(None, Some("/env".into()), "mnist");
        assert_eq!(
            env,
            vec![PathBuf::from("/env/mnist"), PathBuf::from("data/mnist")]
        );
        let default = candidate_dirs(None, None, "frey");
        assert_eq!(default, vec![PathBuf::from("data/frey")]);
    }

    #[test]
    fn spellings_cover_both_names_and_gzip() {
        assert_eq!(
            idx::spellings("train-images-idx3-ubyte"),
            vec![
                "train-images-idx3-ubyte",
                "train-images-idx3-ubyte.gz",
                "train-images.idx3-ubyte",
                "train-images.idx3-ubyte.gz"
            ]
        );
    }
}
