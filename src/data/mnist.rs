//! MNIST (LeCun, Cortes & Burges): 60,000 training and 10,000 test digits, 28×28.

use std::path::{Path, PathBuf};

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
    /// The directory holding MNIST: `explicit`, else `$CANDLE_VAE_DATA/mnist`, else
    /// `./data/mnist` (see [`resolve_data_dir`]).
    ///
    /// # Errors
    /// [`Error::DataNotFound`] saying which files to put where.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        resolve_data_dir(explicit, &FILES)
    }

    /// Loads the four files from `dir` (either spelling of the names, plain or `.gz`).
    ///
    /// # Errors
    /// [`Error::DataNotFound`] if a file is missing; [`Error::Io`] or [`Error::Idx`] if
    /// one cannot be read or is malformed.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut paths = Vec::with_capacity(FILES.stems.len());
        for stem in FILES.stems {
            let path = idx::find(dir, stem).ok_or_else(|| Error::DataNotFound {
                dataset: FILES.name.to_string(),
                searched: vec![dir.to_path_buf()],
                files: FILES.stems.iter().map(|s| s.to_string()).collect(),
                hint: format!(
                    "{stem} (or {stem}.gz, or spelled with .idx) is missing; on a machine \
                     with internet, download the files from {}",
                    FILES.source
                ),
            })?;
            paths.push(path);
        }
        Ok(Self {
            train: ImageDataset::from_idx(&paths[0], Some(&paths[1]))?,
            test: ImageDataset::from_idx(&paths[2], Some(&paths[3]))?,
        })
    }
}
