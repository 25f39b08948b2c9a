//! Seeded train/test splits of datasets that come without one (Frey Face, Olivetti).
//!
//! Both functions return index lists into the original dataset, each sorted ascending, so
//! a split is a pure function of the dataset's size (or labels), the sizes asked for and
//! the seed: [`Split::apply`] turns it into two [`ImageDataset`]s.
//!
//! ```
//! use candle_vae::data::split::Split;
//!
//! let split = Split::random(10, 3, 7)?;
//! assert_eq!((split.train.len(), split.test.len()), (7, 3));
//! // Every index is in exactly one part.
//! let mut all: Vec<usize> = split.train.iter().chain(&split.test).copied().collect();
//! all.sort();
//! assert_eq!(all, (0..10).collect::<Vec<_>>());
//! # Ok::<(), candle_vae::Error>(())
//! ```

use rand::seq::SliceRandom;

use super::ImageDataset;
use crate::error::{Result, ensure};
use crate::noise::NoiseSource;

/// A partition of a dataset's indices into a training and a test part, each ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Indices of the training examples, ascending.
    pub train: Vec<usize>,
    /// Indices of the test examples, ascending.
    pub test: Vec<usize>,
}

impl Split {
    /// `test_len` of the indices `0..len` drawn uniformly without replacement for the test
    /// part, the rest for training: the indices are shuffled (Fisher–Yates, from a
    /// [`NoiseSource`] of `seed`) and the first `test_len` of the shuffle are the test set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) unless
    /// `0 < test_len < len` (both parts must be non-empty).
    pub fn random(len: usize, test_len: usize, seed: u64) -> Result<Self> {
        ensure(
            test_len > 0 && test_len < len,
            "Split::random",
            "test_len",
            (test_len, len),
            "must be > 0 and < the number of examples",
        )?;
        let mut order: Vec<usize> = (0..len).collect();
        order.shuffle(NoiseSource::new(seed).rng());
        let mut test = order[..test_len].to_vec();
        let mut train = order[test_len..].to_vec();
        test.sort_unstable();
        train.sort_unstable();
        Ok(Self { train, test })
    }

    /// A split stratified by label: for every label, in ascending order of the label, its
    /// examples (in dataset order) are shuffled from one [`NoiseSource`] of `seed` and the
    /// first `test_per_label` go to the test part. Every label then appears
    /// `test_per_label` times in the test part and the rest of its examples in training.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if `test_per_label` is 0 or
    /// some label has no more than `test_per_label` examples.
    pub fn stratified(labels: &[u8], test_per_label: usize, seed: u64) -> Result<Self> {
        ensure(
            test_per_label > 0,
            "Split::stratified",
            "test_per_label",
            test_per_label,
            "must be > 0",
        )?;
        let mut by_label: Vec<Vec<usize>> = vec![Vec::new(); 256];
        for (i, &label) in labels.iter().enumerate() {
            by_label[usize::from(label)].push(i);
        }
        let smallest = by_label
            .iter()
            .filter(|members| !members.is_empty())
            .map(Vec::len)
            .min()
            .unwrap_or(0);
        ensure(
            smallest > test_per_label,
            "Split::stratified",
            "test_per_label",
            (test_per_label, smallest),
            "every label needs more examples than test_per_label (the smallest class is shown)",
        )?;
        let mut noise = NoiseSource::new(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for mut members in by_label.into_iter().filter(|m| !m.is_empty()) {
            members.shuffle(noise.rng());
            test.extend_from_slice(&members[..test_per_label]);
            train.extend_from_slice(&members[test_per_label..]);
        }
        test.sort_unstable();
        train.sort_unstable();
        Ok(Self { train, test })
    }

    /// The two parts of `dataset`: `(train, test)`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if an index is out of range
    /// (the split was made for another dataset).
    pub fn apply(&self, dataset: &ImageDataset) -> Result<(ImageDataset, ImageDataset)> {
        Ok((dataset.subset(&self.train)?, dataset.subset(&self.test)?))
    }
}
