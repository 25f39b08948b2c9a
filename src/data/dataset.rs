//! Images held in memory, and their binarization.

#[cfg(feature = "data")]
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, ensure};
use crate::noise::NoiseSource;
use crate::shape::ImageShape;

#[cfg(feature = "data")]
use super::idx;

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
    /// Needs the `data` feature (on by default).
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be read; [`Error::Idx`] if one is malformed or the
    /// label file does not hold one label per image ([`IdxProblem::CountMismatch`](crate::error::IdxProblem::CountMismatch)).
    #[cfg(feature = "data")]
    #[cfg_attr(docsrs, doc(cfg(feature = "data")))]
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
                        problem: crate::error::IdxProblem::CountMismatch {
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
    /// [`DataLoader`](super::DataLoader)), or a threshold outside [0, 1).
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
    pub(super) fn gather(&self, indices: &[usize]) -> Vec<u8> {
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
    pub(super) fn make_tensor(
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

pub(super) fn check_threshold(t: f32) -> Result<()> {
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
pub(super) fn bernoulli_in_place(pixels: &mut [u8], noise: &mut NoiseSource) {
    let rng = noise.rng();
    for p in pixels.iter_mut() {
        let u: f32 = rng.random();
        *p = if u < f32::from(*p) / 255.0 { 255 } else { 0 };
    }
}
