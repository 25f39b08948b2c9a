//! The IDX file format of MNIST, read strictly.
//!
//! An IDX file is a big-endian header — a magic number `0x0000_08DD` (`08`: the values
//! are unsigned bytes; `DD`: the number of dimensions), then one `u32` per dimension —
//! followed by the values, row-major. Image files have three dimensions (count, rows,
//! columns; magic 2051), label files one (count; magic 2049).
//!
//! Files may be plain or gzip-compressed; compression is recognised by its magic bytes,
//! not the file name. Every departure from the format is an [`Error::Idx`] naming the
//! file and the rule ([`IdxProblem`]): a file is never read short, padded, or cut.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{Error, IdxProblem, Result};

/// Magic number of an IDX file of unsigned-byte images: `(count, rows, cols)`.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte labels: `(count,)`.
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The contents of an IDX file: its dimensions and its values, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The values, `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

/// Reads an IDX file of images (magic 2051): `dims` is `[count, rows, cols]`.
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened or read; [`Error::Idx`] naming the rule if
/// it is not a valid image file.
pub fn read_images(path: impl AsRef<Path>) -> Result<IdxArray> {
    read(path.as_ref(), IMAGES_MAGIC)
}

/// Reads an IDX file of labels (magic 2049).
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened or read; [`Error::Idx`] naming the rule if
/// it is not a valid label file.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    Ok(read(path.as_ref(), LABELS_MAGIC)?.data)
}

/// Reads an IDX file of unsigned bytes whose magic number must be `magic`
/// ([`IMAGES_MAGIC`], [`LABELS_MAGIC`], or `0x0000_08DD` for `DD` dimensions).
///
/// # Errors
/// [`Error::Io`] if the file cannot be opened or read; [`Error::Idx`] naming the rule if
/// it is not a valid IDX file with that magic number.
pub fn read(path: &Path, magic: u32) -> Result<IdxArray> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().map_err(|e| Error::io(path, e))?;
    let gzip = head.starts_with(&GZIP_MAGIC);
    let mut source = Source {
        reader: if gzip {
            Box::new(MultiGzDecoder::new(buffered)) as Box<dyn Read>
        } else {
            Box::new(buffered)
        },
        gzip,
        path,
    };
    parse(&mut source, magic)
}

/// Parses the bytes of an IDX file held in memory (plain or gzip, recognised by the
/// magic bytes), with the rules of [`read`]; errors name `name` as the file.
///
/// # Errors
/// [`Error::Idx`] naming the rule if the bytes are not a valid IDX file with that magic
/// number.
pub fn parse_bytes(bytes: &[u8], magic: u32, name: &Path) -> Result<IdxArray> {
    let gzip = bytes.starts_with(&GZIP_MAGIC);
    let mut source = Source {
        reader: if gzip {
            Box::new(MultiGzDecoder::new(bytes)) as Box<dyn Read>
        } else {
            Box::new(bytes)
        },
        gzip,
        path: name,
    };
    parse(&mut source, magic)
}

/// A byte stream with the knowledge needed to blame errors on the right cause.
struct Source<'a> {
    reader: Box<dyn Read + 'a>,
    gzip: bool,
    path: &'a Path,
}

impl Source<'_> {
    fn problem(&self, problem: IdxProblem) -> Error {
        Error::Idx {
            path: self.path.to_path_buf(),
            problem,
        }
    }

    /// A read error: through a decompressor it is a corrupt stream, otherwise I/O.
    fn read_error(&self, error: io::Error) -> Error {
        if self.gzip && error.kind() != io::ErrorKind::Interrupted {
            self.problem(IdxProblem::CorruptGzip {
                message: error.to_string(),
            })
        } else {
            Error::io(self.path, error)
        }
    }

    /// Fills `buf` as far as the stream allows; returns the bytes read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(filled)
    }

    /// Reads at most `limit` bytes into a vector.
    fn read_at_most(&mut self, limit: u64) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        (&mut self.reader)
            .take(limit)
            .read_to_end(&mut data)
            .map_err(|e| self.read_error(e))?;
        Ok(data)
    }

    /// Reads to the end (checking a gzip stream's checksum); returns the bytes skipped.
    fn drain(&mut self) -> Result<u64> {
        io::copy(&mut self.reader, &mut io::sink()).map_err(|e| self.read_error(e))
    }
}

fn parse(source: &mut Source<'_>, magic: u32) -> Result<IdxArray> {
    let mut magic_bytes = [0u8; 4];
    let got = source.read_up_to(&mut magic_bytes)?;
    if got == 0 {
        return Err(source.problem(IdxProblem::Empty));
    }
    let rank = (magic & 0xff) as usize;
    let header_len = 4 + 4 * rank;
    if got < 4 {
        return Err(source.problem(IdxProblem::TruncatedHeader {
            expected: header_len,
            found: got,
        }));
    }
    let found = u32::from_be_bytes(magic_bytes);
    if found != magic {
        return Err(source.problem(IdxProblem::WrongMagic {
            expected: magic,
            found,
            what: describe_magic(magic),
        }));
    }
    let mut dim_bytes = vec![0u8; 4 * rank];
    let got = source.read_up_to(&mut dim_bytes)?;
    if got < dim_bytes.len() {
        return Err(source.problem(IdxProblem::TruncatedHeader {
            expected: header_len,
            found: 4 + got,
        }));
    }
    let raw_dims: Vec<u32> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // The leading dimension (the count) may be 0; the sides of an example may not.
    if raw_dims.iter().skip(1).any(|&d| d == 0) {
        return Err(source.problem(IdxProblem::ZeroDimension { dims: raw_dims }));
    }
    let dims: Vec<usize> = raw_dims.iter().map(|&d| d as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            source.problem(IdxProblem::DimensionsOverflow {
                dims: raw_dims.clone(),
                bits: usize::BITS,
            })
        })?;
    let data = source.read_at_most(expected)?;
    let found = data.len() as u64;
    if found < expected {
        return Err(source.problem(IdxProblem::Truncated { expected, found }));
    }
    let extra = source.drain()?;
    if extra > 0 {
        return Err(source.problem(IdxProblem::TrailingBytes { expected, extra }));
    }
    Ok(IdxArray { dims, data })
}

fn describe_magic(magic: u32) -> &'static str {
    match magic {
        IMAGES_MAGIC => "IDX unsigned-byte images",
        LABELS_MAGIC => "IDX unsigned-byte labels",
        _ => "IDX unsigned bytes",
    }
}

/// The file for `stem` in `dir`, under any of the names it is published with: the stem
/// itself, the stem with its last `-idx` spelled `.idx` (`train-images-idx3-ubyte` and
/// `train-images.idx3-ubyte`), each plain or with `.gz`. `None` if none exists.
pub fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    spellings(stem)
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// The names `find` tries for `stem`, in order.
pub(crate) fn spellings(stem: &str) -> Vec<String> {
    let mut stems = vec![stem.to_string()];
    if let Some(at) = stem.rfind("-idx") {
        stems.push(format!("{}.{}", &stem[..at], &stem[at + 1..]));
    } else if let Some(at) = stem.rfind(".idx") {
        stems.push(format!("{}-{}", &stem[..at], &stem[at + 1..]));
    }
    stems
        .into_iter()
        .flat_map(|s| [s.clone(), format!("{s}.gz")])
        .collect()
}
