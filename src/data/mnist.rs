//! MNIST (LeCun, Cortes & Burges): 60,000 training and 10,000 test digits, 28×28.

use std::path::{Path, PathBuf};

use super::faces::check_size;
use super::{DatasetFiles, ImageDataset, idx, resolve_data_dir};
use crate::error::{Error, Result};

/// The MNIST files and where to get them.
pub const FILES: DatasetFiles = DatasetFiles {
    name: "mnist",
    stems: &[
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ],
    source: "https://ossci-datasets.s3.amazonaws.com/mnist/ (the mirror torchvision uses; \
             the original is http://yann.lecun.com/exdb/mnist/)",
};

/// The MNIST training and test sets, with labels.
///
/// ```no_run
/// let mnist = candle_vae::data::Mnist::load(candle_vae::data::Mnist::locate(None)?)?;
/// assert_eq!((mnist.train.len(), mnist.test.len()), (60_000, 10_000));
/// # Ok::<(), candle_vae::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// 60,000 training images and labels.
    pub train: ImageDataset,
    /// 10,000 test images and labels.
    pub test: ImageDataset,
}

impl Mnist {
    /// Image height (rows).
    pub const HEIGHT: usize = 28;
    /// Image width (columns).
    pub const WIDTH: usize = 28;

    /// The directory holding MNIST: `explicit`, else `$CANDLE_VAE_DATA/mnist`, else
    /// `./data/mnist` (see [`resolve_data_dir`]).
    ///
    /// # Errors
    /// [`Error::DataNotFound`] saying which files to put where.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        resolve_data_dir(explicit, &FILES)
    }

    /// Loads the four files from `dir` (either spelling of the names, plain or `.gz`),
    /// checking that every image is [`HEIGHT`](Self::HEIGHT) × [`WIDTH`](Self::WIDTH),
    /// the size the MNIST models are built for (784 inputs, or a 1 × 28 × 28 image), and
    /// that neither set is empty: a file of another size would otherwise train silently
    /// (14 × 56 is also 784 pixels) or fail an epoch later without naming the file.
    ///
    /// # Errors
    /// [`Error::DataNotFound`] listing the files `dir` lacks; [`Error::Io`] or
    /// [`Error::Idx`] if one cannot be read or is malformed; [`Error::Data`] naming the
    /// image file that holds images of another size, or none.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let paths = FILES
            .stems
            .iter()
            .map(|stem| idx::find(dir, stem))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| FILES.not_found_in(dir))?;
        let load = |images: &PathBuf, labels: &PathBuf| -> Result<ImageDataset> {
            let data = ImageDataset::from_idx(images, Some(labels))?;
            check_size(images, &data, None, Self::HEIGHT, Self::WIDTH)?;
            if data.is_empty() {
                return Err(Error::Data {
                    path: images.clone(),
                    reason: "holds 0 images; expected at least one".to_string(),
                });
            }
            Ok(data)
        };
        Ok(Self {
            train: load(&paths[0], &paths[1])?,
            test: load(&paths[2], &paths[3])?,
        })
    }
}
