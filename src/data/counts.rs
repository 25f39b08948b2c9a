//! Count matrices (cells × genes) from gzipped (or plain) CSV: single-cell RNA-seq UMI
//! counts for the [count likelihoods](crate::likelihood).
//!
//! The format is that of `$CANDLE_VAE_DATA/counts/` (see its README): a header row of
//! gene names, then one row per cell of comma-separated non-negative integer counts, no
//! index column; labels, when there are any, in a second file with the header `label`
//! and one name per cell in the same order. Reading is strict: a short or long row, a
//! field that is not a non-negative integer, an empty file or a label file of another
//! length is an [`Error::Data`] naming the file, the line and (for a field) the column.
//!
//! * [`CountDataset`] holds the matrix, the gene names and optional labels, and turns any
//!   subset of cells into a tensor; split it with [`Split`] and
//!   [`CountDataset::split`].
//! * [`Pbmc68kReduced`] loads the 700 labelled blood cells × 765 genes;
//!   [`CelltypistSample`] the 559 unlabelled cells × 32,786 genes.
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_vae::data::CountDataset;
//! use candle_vae::data::split::Split;
//!
//! let genes = vec!["CD3E".to_string(), "LYZ".to_string()];
//! let data = CountDataset::new(genes, vec![0, 5, 2, 0, 1, 1], None)?;
//! let (train, test) = data.split(&Split::random(data.len(), 1, 7)?)?;
//! assert_eq!((train.len(), test.len()), (2, 1));
//! let xs = data.to_tensor(&[0, 2], DType::F32, &Device::Cpu)?;
//! assert_eq!(xs.to_vec2::<f32>()?, vec![vec![0.0, 5.0], vec![1.0, 1.0]]);
//! # Ok::<(), candle_vae::Error>(())
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use flate2::read::MultiGzDecoder;

use super::split::Split;
use super::{DatasetFiles, resolve_data_dir};
use crate::error::{Error, Result};

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The 700-cell labelled set (`$CANDLE_VAE_DATA/counts`).
pub const PBMC68K_FILES: DatasetFiles = DatasetFiles {
    name: "counts",
    stems: &["counts.csv", "labels.csv"],
    source: "the scanpy 1.9.8 wheel (scanpy/datasets/10x_pbmc68k_reduced.h5ad), converted \
             by make.py in the shared datasets folder",
};

/// The 559-cell unlabelled set (`$CANDLE_VAE_DATA/counts/celltypist_sample`).
pub const CELLTYPIST_FILES: DatasetFiles = DatasetFiles {
    name: "counts/celltypist_sample",
    stems: &["counts.csv"],
    source: "the celltypist 1.7.1 wheel (celltypist/data/samples/sample_cell_by_gene.csv), \
             converted by make.py in the shared datasets folder",
};

/// A cells × genes count matrix in memory, with the gene names and optional cell labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountDataset {
    genes: Vec<String>,
    /// Row-major, one row of `genes.len()` counts per cell.
    counts: Vec<u32>,
    /// One label index per cell, into `label_names`.
    labels: Option<Vec<u8>>,
    label_names: Vec<String>,
}

/// A reason at a line (and column) of `path`.
fn data_error(path: &Path, line: usize, reason: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        reason: format!("line {line}: {reason}"),
    }
}

/// The lines of a plain or gzipped text file.
fn open_lines(path: &Path) -> Result<impl Iterator<Item = (usize, std::io::Result<String>)>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if head.starts_with(&GZIP_MAGIC) {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    Ok(BufReader::new(reader)
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line)))
}

/// A line's text, or an error naming the line (a corrupt gzip stream or bad UTF-8 shows
/// up here).
fn line_text(path: &Path, line: usize, text: std::io::Result<String>) -> Result<String> {
    text.map_err(|e| data_error(path, line, format!("cannot be read ({e})")))
}

impl CountDataset {
    /// A dataset of `counts.len() / genes.len()` cells, row-major, with optional
    /// `(labels, label_names)`: one label index per cell into the names.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if there are no genes, the counts are not a whole number of
    /// rows, or the labels are not one per cell with every index naming a label.
    pub fn new(
        genes: Vec<String>,
        counts: Vec<u32>,
        labels: Option<(Vec<u8>, Vec<String>)>,
    ) -> Result<Self> {
        crate::error::ensure(
            !genes.is_empty(),
            "CountDataset",
            "genes",
            genes.len(),
            "must not be empty",
        )?;
        crate::error::ensure(
            counts.len() % genes.len() == 0,
            "CountDataset",
            "counts",
            (counts.len(), genes.len()),
            "must hold a whole number of rows of one count per gene",
        )?;
        let cells = counts.len() / genes.len();
        let (labels, label_names) = match labels {
            None => (None, Vec::new()),
            Some((labels, names)) => {
                crate::error::ensure(
                    labels.len() == cells,
                    "CountDataset",
                    "labels",
                    (labels.len(), cells),
                    "must hold one label per cell",
                )?;
                crate::error::ensure(
                    labels.iter().all(|&l| usize::from(l) < names.len()),
                    "CountDataset",
                    "labels",
                    names.len(),
                    "every label must index the label names",
                )?;
                (Some(labels), names)
            }
        };
        Ok(Self {
            genes,
            counts,
            labels,
            label_names,
        })
    }

    /// Reads a counts CSV (plain or gzip): a header of gene names, then one row of
    /// non-negative integer counts per cell.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened; [`Error::Data`] naming the line (and
    /// column) if it is empty, a row has another number of fields than the header, a field
    /// is not a non-negative integer that fits in `u32`, or the gzip stream is corrupt.
    pub fn from_csv(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut lines = open_lines(path)?;
        let genes: Vec<String> = match lines.next() {
            None => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    reason: "the file is empty: expected a header row of gene names".into(),
                });
            }
            Some((line, text)) => line_text(path, line, text)?
                .trim_end_matches('\r')
                .split(',')
                .map(str::to_string)
                .collect(),
        };
        if genes.iter().any(String::is_empty) {
            return Err(data_error(path, 1, "the header has an empty gene name"));
        }
        let mut counts = Vec::new();
        for (line, text) in lines {
            let text = line_text(path, line, text)?;
            let text = text.trim_end_matches('\r');
            if text.is_empty() {
                return Err(data_error(path, line, "empty row"));
            }
            let fields: Vec<&str> = text.split(',').collect();
            if fields.len() != genes.len() {
                return Err(data_error(
                    path,
                    line,
                    format!(
                        "{} fields, but the header names {} genes",
                        fields.len(),
                        genes.len()
                    ),
                ));
            }
            for (column, (field, gene)) in fields.iter().zip(&genes).enumerate() {
                let value = field.parse::<u32>().map_err(|_| {
                    data_error(
                        path,
                        line,
                        format!(
                            "column {} ({gene}): `{field}` is not a non-negative integer count",
                            column + 1
                        ),
                    )
                })?;
                counts.push(value);
            }
        }
        if counts.is_empty() {
            return Err(data_error(path, 1, "a header but no cells"));
        }
        Self::new(genes, counts, None)
    }

    /// The same cells with labels read from `path` (plain or gzip): the header `label`,
    /// then one label name per cell, in the order of the counts. Label indices follow the
    /// names sorted alphabetically ([`label_names`](Self::label_names)).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened; [`Error::Data`] naming the line if the
    /// header is not `label`, a name is empty, there are more than 256 distinct names, or
    /// the file does not hold one label per cell.
    pub fn with_labels_csv(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut names = Vec::new();
        for (line, text) in open_lines(path)? {
            let text = line_text(path, line, text)?;
            let text = text.trim_end_matches('\r');
            if line == 1 {
                if text != "label" {
                    return Err(data_error(
                        path,
                        1,
                        format!("header `{text}`, expected `label`"),
                    ));
                }
                continue;
            }
            if text.is_empty() {
                return Err(data_error(path, line, "empty label"));
            }
            names.push(text.to_string());
        }
        if names.len() != self.len() {
            return Err(data_error(
                path,
                names.len() + 1,
                format!(
                    "{} labels, but the counts hold {} cells",
                    names.len(),
                    self.len()
                ),
            ));
        }
        let mut distinct = names.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() > 256 {
            return Err(Error::Data {
                path: path.to_path_buf(),
                reason: format!("{} distinct labels, at most 256 fit in u8", distinct.len()),
            });
        }
        let labels = names
            .iter()
            .map(|n| distinct.binary_search(n).map_or(0, |i| i as u8))
            .collect();
        Self::new(self.genes, self.counts, Some((labels, distinct)))
    }

    /// Cells.
    pub fn len(&self) -> usize {
        self.counts.len() / self.genes.len()
    }

    /// Whether there is no cell.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Genes (columns).
    pub fn genes(&self) -> usize {
        self.genes.len()
    }

    /// The gene names, in column order.
    pub fn gene_names(&self) -> &[String] {
        &self.genes
    }

    /// All counts, row-major (cells × genes).
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The counts of cell `i`, or `None` out of range.
    pub fn cell(&self, i: usize) -> Option<&[u32]> {
        let g = self.genes.len();
        self.counts.get(i * g..(i + 1) * g)
    }

    /// One label index per cell (into [`label_names`](Self::label_names)), if labelled.
    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }

    /// The label names, indexed by label (empty without labels).
    pub fn label_names(&self) -> &[String] {
        &self.label_names
    }

    /// The fraction of counts that are 0.
    pub fn zero_fraction(&self) -> f64 {
        let zeros = self.counts.iter().filter(|&&c| c == 0).count();
        zeros as f64 / self.counts.len().max(1) as f64
    }

    /// The cells `indices`, in that order, with their labels.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        let g = self.genes.len();
        let mut counts = Vec::with_capacity(indices.len() * g);
        for &i in indices {
            let row = self.cell(i).ok_or_else(|| {
                Error::config(
                    "CountDataset::subset",
                    "indices",
                    (i, self.len()),
                    "every index must be < the number of cells",
                )
            })?;
            counts.extend_from_slice(row);
        }
        let labels = self.labels.as_ref().map(|labels| {
            (
                indices.iter().map(|&i| labels[i]).collect(),
                self.label_names.clone(),
            )
        });
        Self::new(self.genes.clone(), counts, labels)
    }

    /// The two parts of a [`Split`] (e.g. [`Split::random`] over [`len`](Self::len)):
    /// `(train, test)`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the split was made for more cells.
    pub fn split(&self, split: &Split) -> Result<(Self, Self)> {
        Ok((self.subset(&split.train)?, self.subset(&split.test)?))
    }

    /// The counts of cells `indices` as a `(len, genes)` tensor of `dtype` on `device`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if an index is out of range; candle's error if the tensor
    /// cannot be created.
    pub fn to_tensor(&self, indices: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let rows = self.subset(indices)?;
        let values: Vec<f32> = rows.counts.iter().map(|&c| c as f32).collect();
        Ok(
            Tensor::from_vec(values, (indices.len(), self.genes()), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
        )
    }

    /// Every cell as a `(len, genes)` tensor.
    ///
    /// # Errors
    /// As [`to_tensor`](Self::to_tensor).
    pub fn all_tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.to_tensor(&all, dtype, device)
    }
}

/// The file `name` (plain or `.gz`) in `dir`.
fn find_csv(files: &DatasetFiles, dir: &Path, name: &str) -> Result<PathBuf> {
    super::idx::find(dir, name).ok_or_else(|| Error::DataNotFound {
        dataset: files.name.to_string(),
        searched: vec![dir.to_path_buf()],
        files: files.stems.iter().map(|s| format!("{s}.gz")).collect(),
        hint: format!("{name}.gz is missing; rebuild it from {}", files.source),
    })
}

/// Checks a loaded matrix's size against the documented one.
fn check_shape(path: &Path, data: &CountDataset, cells: usize, genes: usize) -> Result<()> {
    if (data.len(), data.genes()) == (cells, genes) {
        Ok(())
    } else {
        Err(Error::Data {
            path: path.to_path_buf(),
            reason: format!(
                "expected {cells} cells × {genes} genes, found {} × {}",
                data.len(),
                data.genes()
            ),
        })
    }
}

/// 700 peripheral blood mononuclear cells × 765 highly variable genes with 10 cell-type
/// labels: scanpy's `pbmc68k_reduced` (a subset of 10x's Fresh 68k PBMCs, Zheng et al.
/// 2017), with its UMI counts recovered as the folder's README explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pbmc68kReduced;

impl Pbmc68kReduced {
    /// Cells.
    pub const CELLS: usize = 700;
    /// Genes.
    pub const GENES: usize = 765;

    /// The directory: `explicit`, else `$CANDLE_VAE_DATA/counts`, else `./data/counts`.
    ///
    /// # Errors
    /// [`Error::DataNotFound`] saying which files to put where.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        resolve_data_dir(explicit, &PBMC68K_FILES)
    }

    /// The 700 labelled cells in `dir` (`counts.csv.gz`, `labels.csv.gz`).
    ///
    /// # Errors
    /// [`Error::DataNotFound`] if a file is missing; as [`CountDataset::from_csv`] and
    /// [`CountDataset::with_labels_csv`]; [`Error::Data`] if it is not 700 × 765.
    pub fn load(dir: impl AsRef<Path>) -> Result<CountDataset> {
        let dir = dir.as_ref();
        let counts = find_csv(&PBMC68K_FILES, dir, "counts.csv")?;
        let labels = find_csv(&PBMC68K_FILES, dir, "labels.csv")?;
        let data = CountDataset::from_csv(&counts)?.with_labels_csv(labels)?;
        check_shape(&counts, &data, Self::CELLS, Self::GENES)?;
        Ok(data)
    }
}

/// 559 unlabelled cells × 32,786 genes (all genes, most of them zero): celltypist's
/// sample matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelltypistSample;

impl CelltypistSample {
    /// Cells.
    pub const CELLS: usize = 559;
    /// Genes.
    pub const GENES: usize = 32_786;

    /// The directory: `explicit`, else `$CANDLE_VAE_DATA/counts/celltypist_sample`, else
    /// `./data/counts/celltypist_sample`.
    ///
    /// # Errors
    /// [`Error::DataNotFound`] saying which file to put where.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        resolve_data_dir(explicit, &CELLTYPIST_FILES)
    }

    /// The 559 cells in `dir` (`counts.csv.gz`).
    ///
    /// # Errors
    /// As [`CountDataset::from_csv`]; [`Error::Data`] if it is not 559 × 32,786.
    pub fn load(dir: impl AsRef<Path>) -> Result<CountDataset> {
        let counts = find_csv(&CELLTYPIST_FILES, dir.as_ref(), "counts.csv")?;
        let data = CountDataset::from_csv(&counts)?;
        check_shape(&counts, &data, Self::CELLS, Self::GENES)?;
        Ok(data)
    }
}
