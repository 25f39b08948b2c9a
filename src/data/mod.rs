//! Image datasets: IDX files, binarization, seeded shuffling and batching.
//!
//! The in-memory datasets and the loader are always there; the file readers ([`idx`],
//! [`mnist`], [`faces`], [`counts`], [`resolve_data_dir`]) need the `data` feature (on by
//! default), which brings `flate2`.
//!
//! * [`idx`] reads the IDX format of MNIST (plain or gzip), strictly.
//! * [`ImageDataset`] holds 8-bit grayscale images (and optional labels) in memory and
//!   turns any subset into a tensor in [0, 1].
//! * [`Binarization`] makes binary data for a Bernoulli likelihood: a threshold, one fixed
//!   seeded draw, or a fresh draw every epoch (Burda et al. 2015).
//! * [`DataLoader`] cuts an epoch into batches, shuffled from a [`NoiseSource`](crate::NoiseSource) and keeping
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

mod dataset;
mod loader;
pub mod split;

pub use dataset::{Binarization, ImageDataset, Layout};
pub use loader::{Batch, BatchSource, DataLoader, DataLoaderConfig, Epoch, Order, TensorLoader};

// The file readers and their `flate2` dependency: the `data` feature (on by default).
#[cfg(feature = "data")]
#[cfg_attr(docsrs, doc(cfg(feature = "data")))]
pub mod counts;
#[cfg(feature = "data")]
#[cfg_attr(docsrs, doc(cfg(feature = "data")))]
pub mod faces;
#[cfg(feature = "data")]
#[cfg_attr(docsrs, doc(cfg(feature = "data")))]
pub mod idx;
#[cfg(feature = "data")]
mod location;
#[cfg(feature = "data")]
#[cfg_attr(docsrs, doc(cfg(feature = "data")))]
pub mod mnist;

#[cfg(feature = "data")]
pub use counts::{CelltypistSample, CountDataset, Pbmc68kReduced};
#[cfg(feature = "data")]
pub use faces::{FreyFace, Olivetti};
#[cfg(feature = "data")]
pub use location::{DATA_ENV, DatasetFiles, resolve_data_dir};
#[cfg(feature = "data")]
pub use mnist::Mnist;
