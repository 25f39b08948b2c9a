//! Two face datasets without an official train/test split, split here once and for all.
//!
//! * [`FreyFace`]: 1,965 frames of Brendan Frey's face from a video, 28 rows × 20 columns
//!   — the continuous data of Kingma & Welling (2013, Fig. 4(a) and 2). Split at random:
//!   [`FreyFace::TEST_LEN`] = 200 test frames drawn with [`FreyFace::SPLIT_SEED`], 1,765 for
//!   training. The frames come from one video, so a test frame usually has neighbouring
//!   frames in the training set: the test ELBO measures how well the model fits this
//!   face's distribution, not generalisation to new faces.
//! * [`Olivetti`]: the AT&T (ORL) faces, 40 people × 10 images of 64×64, labelled by
//!   person. Split by image, stratified by person: [`Olivetti::TEST_PER_PERSON`] = 2 of
//!   each person's 10 images drawn with [`Olivetti::SPLIT_SEED`] for testing, 8 for
//!   training (320 / 80). Every person appears in both parts.
//!
//! Both are read from gzipped (or plain) IDX files with [`idx`]; their
//! directories are found like MNIST's ([`resolve_data_dir`]): `--data`, else
//! `$CANDLE_VAE_DATA/frey` (`…/olivetti`), else `./data/frey` (`./data/olivetti`).
//!
//! ```no_run
//! use candle_vae::data::{FreyFace, Olivetti};
//!
//! let frey = FreyFace::load(FreyFace::locate(None)?)?;
//! assert_eq!((frey.train.len(), frey.test.len()), (1_765, 200));
//! assert_eq!((frey.train.height(), frey.train.width()), (28, 20));
//! let faces = Olivetti::load(Olivetti::locate(None)?)?;
//! assert_eq!((faces.train.len(), faces.test.len()), (320, 80));
//! # Ok::<(), candle_vae::Error>(())
//! ```

use std::path::{Path, PathBuf};

use super::split::Split;
use super::{DatasetFiles, ImageDataset, idx, resolve_data_dir};
use crate::error::{Error, Result};

/// The Frey Face file and where to get it.
pub const FREY_FILES: DatasetFiles = DatasetFiles {
    name: "frey",
    stems: &["frey-images-idx3-ubyte"],
    source: "https://cs.nyu.edu/~roweis/data/frey_rawface.mat (Sam Roweis' page; convert its \
             560 × 1965 uint8 matrix `ff`, one frame per column, 28 × 20 row-major, to IDX \
             with magic 2051 and dimensions 1965, 28, 20)",
};

/// The Olivetti files and where to get them.
pub const OLIVETTI_FILES: DatasetFiles = DatasetFiles {
    name: "olivetti",
    stems: &["olivetti-images-idx3-ubyte", "olivetti-labels-idx1-ubyte"],
    source: "scikit-learn's fetch_olivetti_faces (https://ndownloader.figshare.com/files/5976027); \
             convert the 400 × 64 × 64 images (scaled to 0..=255, upright) and the person \
             targets 0..=39 to IDX (magic 2051 and 2049)",
};

/// The file for `stem` in `dir`, or [`Error::DataNotFound`] saying what is missing.
fn find_file(files: &DatasetFiles, dir: &Path, stem: &str) -> Result<PathBuf> {
    idx::find(dir, stem).ok_or_else(|| Error::DataNotFound {
        dataset: files.name.to_string(),
        searched: vec![dir.to_path_buf()],
        files: files.stems.iter().map(|s| s.to_string()).collect(),
        hint: format!(
            "{stem} (or {stem}.gz) is missing; on a machine with internet, get it from {}",
            files.source
        ),
    })
}

/// Checks that a loaded file holds `count` images (when given) of `height × width`.
pub(super) fn check_size(
    path: &Path,
    data: &ImageDataset,
    count: Option<usize>,
    height: usize,
    width: usize,
) -> Result<()> {
    let fits = (data.height(), data.width()) == (height, width)
        && count.is_none_or(|count| data.len() == count);
    if fits {
        Ok(())
    } else {
        let count = count.map_or_else(String::new, |c| format!("{c} "));
        Err(Error::Data {
            path: path.to_path_buf(),
            reason: format!(
                "expected {count}images of {height} × {width}, found {} of {} × {}",
                data.len(),
                data.height(),
                data.width()
            ),
        })
    }
}

/// Frey Face (Kingma & Welling 2013): frames of one face, 28 × 20, grayscale, split into
/// 1,765 training and 200 test frames (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreyFace {
    /// 1,765 training frames, in video order.
    pub train: ImageDataset,
    /// 200 test frames, in video order.
    pub test: ImageDataset,
    /// Which frames of the file went where.
    pub split: Split,
}

impl FreyFace {
    /// Frame height (rows).
    pub const HEIGHT: usize = 28;
    /// Frame width (columns).
    pub const WIDTH: usize = 20;
    /// Frames in the file.
    pub const LEN: usize = 1_965;
    /// Frames held out for testing.
    pub const TEST_LEN: usize = 200;
    /// Seed of the random split ([`Split::random`]): the year of the AEVB paper.
    pub const SPLIT_SEED: u64 = 2013;

    /// The directory holding Frey Face: `explicit`, else `$CANDLE_VAE_DATA/frey`, else
    /// `./data/frey` (see [`resolve_data_dir`]).
    ///
    /// # Errors
    /// [`Error::DataNotFound`] saying which file to put where.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        resolve_data_dir(explicit, &FREY_FILES)
    }

    /// All 1,965 frames of the file in `dir`, in video order, unsplit.
    ///
    /// # Errors
    /// [`Error::DataNotFound`] if the file is missing; [`Error::Io`] or [`Error::Idx`] if
    /// it cannot be read or is malformed; [`Error::Data`] if it does not hold 1,965 frames
    /// of 28 × 20.
    pub fn load_all(dir: impl AsRef<Path>) -> Result<ImageDataset> {
        let path = find_file(&FREY_FILES, dir.as_ref(), FREY_FILES.stems[0])?;
        let all = ImageDataset::from_idx(&path, None)?;
        check_size(&path, &all, Some(Self::LEN), Self::HEIGHT, Self::WIDTH)?;
        Ok(all)
    }

    /// The frames in `dir`, split into training and test sets with [`Self::SPLIT_SEED`].
    ///
    /// # Errors
    /// As [`load_all`](Self::load_all).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let all = Self::load_all(dir)?;
        let split = Split::random(all.len(), Self::TEST_LEN, Self::SPLIT_SEED)?;
        let (train, test) = split.apply(&all)?;
        Ok(Self { train, test, split })
    }
}

/// The Olivetti (AT&T / ORL) faces: 40 people × 10 images of 64 × 64, labelled by person
/// (0..=39), split by image into 8 training and 2 test images per person (see the
/// [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Olivetti {
    /// 320 training images (8 per person) with their person labels, in file order.
    pub train: ImageDataset,
    /// 80 test images (2 per person) with their person labels, in file order.
    pub test: ImageDataset,
    /// Which images of the files went where.
    pub split: Split,
}

impl Olivetti {
    /// Image side (height and width).
    pub const SIDE: usize = 64;
    /// Images in the files.
    pub const LEN: usize = 400;
    /// People (labels 0..PEOPLE).
    pub const PEOPLE: usize = 40;
    /// Images of each person held out for testing.
    pub const TEST_PER_PERSON: usize = 2;
    /// Seed of the stratified split ([`Split::stratified`]).
    pub const SPLIT_SEED: u64 = 1994;

    /// The directory holding Olivetti: `explicit`, else `$CANDLE_VAE_DATA/olivetti`, else
    /// `./data/olivetti` (see [`resolve_data_dir`]).
    ///
    /// # Errors
    /// [`Error::DataNotFound`] saying which files to put where.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        resolve_data_dir(explicit, &OLIVETTI_FILES)
    }

    /// All 400 images and labels in `dir`, in file order, unsplit.
    ///
    /// # Errors
    /// [`Error::DataNotFound`] if a file is missing; [`Error::Io`] or [`Error::Idx`] if
    /// one cannot be read, is malformed or the counts differ; [`Error::Data`] if the files
    /// do not hold 400 images of 64 × 64 with labels below 40.
    pub fn load_all(dir: impl AsRef<Path>) -> Result<ImageDataset> {
        let dir = dir.as_ref();
        let images = find_file(&OLIVETTI_FILES, dir, OLIVETTI_FILES.stems[0])?;
        let labels = find_file(&OLIVETTI_FILES, dir, OLIVETTI_FILES.stems[1])?;
        let all = ImageDataset::from_idx(&images, Some(&labels))?;
        check_size(&images, &all, Some(Self::LEN), Self::SIDE, Self::SIDE)?;
        let out_of_range = all
            .labels()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .find(|(_, p)| usize::from(**p) >= Self::PEOPLE);
        if let Some((image, label)) = out_of_range {
            return Err(Error::Data {
                path: labels,
                reason: format!(
                    "image {image} has label {label}; expected person labels 0..{}",
                    Self::PEOPLE
                ),
            });
        }
        Ok(all)
    }

    /// The images in `dir`, split by image with [`Self::SPLIT_SEED`].
    ///
    /// # Errors
    /// As [`load_all`](Self::load_all); [`Error::InvalidConfig`] if a person has no more
    /// than [`Self::TEST_PER_PERSON`] images.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let all = Self::load_all(dir)?;
        let labels = all.labels().unwrap_or_default();
        let split = Split::stratified(labels, Self::TEST_PER_PERSON, Self::SPLIT_SEED)?;
        let (train, test) = split.apply(&all)?;
        Ok(Self { train, test, split })
    }
}
