//! The crate's one error type.
//!
//! Tensor-to-tensor code (forward passes, losses, log-densities) returns
//! [`candle_core::Result`] so it composes with candle; our typed errors travel inside it
//! through `From<Error> for candle_core::Error`. Constructors, checkpoints and data
//! loading return [`Result`], whose error says what was expected and what was found.

use std::path::PathBuf;

/// Everything that can go wrong in this crate, typed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value breaks one of its rules.
    #[error("invalid {config}.{field} = {value}: {rule}")]
    InvalidConfig {
        /// The config type, e.g. `MlpEncoderConfig`.
        config: &'static str,
        /// The field that holds the bad value.
        field: &'static str,
        /// The bad value, formatted.
        value: String,
        /// The rule it breaks, e.g. "must be > 0".
        rule: &'static str,
    },

    /// A tensor reached an operation with a shape it cannot take.
    #[error("{op}: expected {expected}, found shape {found:?}")]
    Shape {
        /// The operation, e.g. `MlpEncoder::encode`.
        op: &'static str,
        /// The shape that was expected, in words.
        expected: String,
        /// The shape that arrived.
        found: Vec<usize>,
    },

    /// The encoder's latent width (plus the condition) is not what the decoder takes.
    #[error(
        "the encoder produces a latent of width {encoder} (+ {condition} condition) \
         but the decoder takes {decoder}"
    )]
    LatentMismatch {
        /// Width of z produced by the encoder.
        encoder: usize,
        /// Width of the decoder's input.
        decoder: usize,
        /// Width of the condition concatenated to z (0 for a plain VAE).
        condition: usize,
    },

    /// The decoder's output does not fit the encoder's input and the likelihood.
    #[error(
        "the encoder reads examples of shape {encoder:?}, so with a likelihood of \
         {params_per_element} parameter(s) per element the decoder must produce {expected:?}, \
         but it produces {decoder:?}"
    )]
    DataShapeMismatch {
        /// Shape of one example as the encoder reads it (condition included).
        encoder: Vec<usize>,
        /// Shape of one example as the decoder produces it.
        decoder: Vec<usize>,
        /// What the decoder should produce.
        expected: Vec<usize>,
        /// Parameters per data element of the likelihood.
        params_per_element: usize,
    },

    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint {path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },

    /// A checkpoint holds a tensor of another shape than the model's.
    #[error("checkpoint {path}: tensor `{name}` has shape {found:?}, the model needs {expected:?}")]
    TensorShape {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A checkpoint's metadata lacks an entry or holds one that does not parse.
    #[error("checkpoint {path}: metadata `{key}`: {reason}")]
    Metadata {
        /// The checkpoint file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A data file is malformed (bad magic, truncated, trailing bytes, …).
    #[error("{path}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// The rule it breaks, with the values found.
        reason: String,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error from the safetensors format.
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafeTensorError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for candle_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Candle(inner) => inner,
            other => candle_core::Error::wrap(other),
        }
    }
}

impl Error {
    /// An [`Error::InvalidConfig`].
    pub(crate) fn config(
        config: &'static str,
        field: &'static str,
        value: impl std::fmt::Debug,
        rule: &'static str,
    ) -> Self {
        Error::InvalidConfig {
            config,
            field,
            value: format!("{value:?}"),
            rule,
        }
    }

    /// An [`Error::Shape`].
    pub(crate) fn shape(op: &'static str, expected: impl Into<String>, found: &[usize]) -> Self {
        Error::Shape {
            op,
            expected: expected.into(),
            found: found.to_vec(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for rules checked in configs' `validate`.
pub(crate) fn ensure(
    ok: bool,
    config: &'static str,
    field: &'static str,
    value: impl std::fmt::Debug,
    rule: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::config(config, field, value, rule))
    }
}
