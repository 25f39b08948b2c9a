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

    /// A prior is over another latent width than the model's encoder.
    #[error("the prior is over {prior} latent dimensions but the model's latent code has {model}")]
    PriorMismatch {
        /// Latent width of the model.
        model: usize,
        /// Latent width of the prior.
        prior: usize,
    },

    /// The analytic KL was asked for a pair of posterior family and prior that has no
    /// closed form; use `KlEstimator::MonteCarlo`.
    #[error(
        "KlEstimator::Analytic: the prior {prior} has no closed-form KL from the posterior \
         family {posterior}; use KlEstimator::MonteCarlo"
    )]
    NoAnalyticKl {
        /// The prior's type.
        prior: &'static str,
        /// The posterior family's type.
        posterior: &'static str,
    },

    /// A setting needs a per-dimension KL, which this pair of posterior and prior does not
    /// factorise into.
    #[error(
        "{setting} needs the KL per latent dimension, but the prior {prior} and the \
         posterior family {posterior} do not both factorise over dimensions"
    )]
    NoPerDimensionKl {
        /// The setting, e.g. `free_bits`.
        setting: &'static str,
        /// The prior's type.
        prior: &'static str,
        /// The posterior family's type.
        posterior: &'static str,
    },

    /// A categorical latent's width is not groups × classes (M·C).
    #[error(
        "{op}: a latent of {groups} categorical variables with {classes} classes each \
         has width {groups}·{classes} = {expected}, found width {found}"
    )]
    CategoricalWidth {
        /// The operation, e.g. `RelaxedCategorical::new`.
        op: &'static str,
        /// M, the number of categorical variables.
        groups: usize,
        /// C, the classes of each.
        classes: usize,
        /// M·C.
        expected: usize,
        /// The width that arrived.
        found: usize,
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

    /// An IDX file (the MNIST format) breaks a rule of the format.
    #[error("{path}: {problem}")]
    Idx {
        /// The file.
        path: PathBuf,
        /// The rule it breaks, with the values found.
        problem: IdxProblem,
    },

    /// A dataset's files are in none of the places they were looked for.
    #[error(
        "no {dataset} data found; looked in {}.\n\
         Put these files (plain or .gz) in one of those directories: {}.\n{hint}",
        display_paths(searched),
        files.join(", ")
    )]
    DataNotFound {
        /// The dataset, e.g. `mnist`.
        dataset: String,
        /// The directories searched, in order.
        searched: Vec<PathBuf>,
        /// The files each directory must hold.
        files: Vec<String>,
        /// Where to get them.
        hint: String,
    },

    /// A file could not be read or written.
    ///
    /// The message names the file; the cause is the [`source`](std::error::Error::source),
    /// so that a report that prints the chain (anyhow's `{:?}`) prints it once.
    #[error("I/O error on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint and the model it is restored into hold different tensors: the model
    /// would keep random weights where the file has none, or the file holds weights the
    /// model has no place for (another model, another naming).
    #[error(
        "checkpoint {path} does not match the model: {}",
        describe_mismatch(
            missing,
            unexpected,
            "in the model but not in the file",
            "in the file but not in the model"
        )
    )]
    CheckpointMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// Tensors the model has and the file lacks, sorted.
        missing: Vec<String>,
        /// Tensors the file holds and the model lacks (optimiser state aside), sorted.
        unexpected: Vec<String>,
    },

    /// Saved optimiser state and the optimiser it is loaded into cover different
    /// parameters.
    #[error(
        "checkpoint {path}: the optimiser state does not match the optimiser's parameters: {}",
        describe_mismatch(
            missing,
            unexpected,
            "the optimiser has no saved state for",
            "the file has state for parameters the optimiser does not hold"
        )
    )]
    OptimizerStateMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// Parameters of the optimiser without saved state, sorted.
        missing: Vec<String>,
        /// Parameters with saved state that the optimiser does not hold, sorted.
        unexpected: Vec<String>,
    },

    /// An optimiser built from unnamed variables (`candle_nn::Optimizer::new`) was asked
    /// to save or load its state, which is keyed by parameter name.
    #[error(
        "this Adam was built through candle_nn::Optimizer::new from {count} unnamed Vars: \
         their order (VarMap::all_vars is a HashMap's) changes from process to process, so \
         their state cannot be saved or restored by position; name them with \
         Adam::name_vars(&varmap), or build the optimiser with Adam::from_varmap, \
         Adam::from_store or Adam::new"
    )]
    UnnamedParameters {
        /// Parameters without a name.
        count: usize,
    },

    /// A gradient holds a NaN or an infinity; the optimiser step was not taken and no
    /// parameter changed.
    #[error(
        "the gradient of `{parameter}` holds {value} (every gradient must be finite); the \
         optimiser step was not taken and no parameter changed"
    )]
    NonFiniteGradient {
        /// The parameter's name (`param.<i>` for an unnamed one).
        parameter: String,
        /// The first non-finite value found.
        value: f64,
    },

    /// A parameter holds a NaN or an infinity (see [`finite::check_parameters`](crate::finite::check_parameters)).
    #[error("parameter `{name}` holds {value} (every parameter must be finite)")]
    NonFiniteParameter {
        /// The parameter's name.
        name: String,
        /// The first non-finite value found.
        value: f64,
    },

    /// Training met a NaN or an infinity (a diverging run: a learning rate too high, a
    /// poisoned input); it stopped before the optimiser step, so the parameters are those
    /// after the last good step (see [`finite`](crate::finite)).
    #[error(
        "training stopped at epoch {epoch}, step {step}: {part} is {value} (it must be \
         finite); the step was not taken, the parameters are those after step {}; lower the \
         learning rate or check the data",
        step.saturating_sub(1)
    )]
    NonFinite {
        /// The epoch, counted from 1.
        epoch: usize,
        /// The optimiser step that was refused, counted from 1 over the whole run.
        step: usize,
        /// What was not finite.
        part: NonFinitePart,
        /// The value (the first non-finite element for a gradient).
        value: f64,
    },

    /// A run was resumed with other settings than the checkpoint was saved with; every
    /// setting that differs is named with both values.
    #[error(
        "checkpoint {path} was saved by a run with other settings: {}",
        differences.join("; ")
    )]
    RunConfigMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// One entry per differing setting: `latent: saved 20, now 10`.
        differences: Vec<String>,
    },

    /// A model-only file describes another architecture than the one asked for.
    #[error("{path} holds a {found}, not a {expected}")]
    ArchitectureMismatch {
        /// The model file.
        path: PathBuf,
        /// The architecture asked for (the Rust type).
        expected: String,
        /// The architecture the file describes.
        found: String,
    },

    /// A training hook ([`TrainerHooks`](crate::train::TrainerHooks)) failed; the run
    /// stopped after the epoch's checkpoint was written.
    #[error("a training hook failed after epoch {epoch}")]
    Hook {
        /// The epoch the hook was called after.
        epoch: usize,
        /// The hook's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error from the safetensors format.
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafeTensorError),
}

/// The rule of the IDX format a file breaks (see [`Error::Idx`]).
///
/// IDX is the format of the MNIST files: a big-endian header (magic number
/// `0x0000_08DD`, where `08` says the values are unsigned bytes and `DD` is the number
/// of dimensions, then one `u32` per dimension), then the values, row-major.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdxProblem {
    /// The file holds no byte at all (after decompression).
    #[error("the file is empty")]
    Empty,
    /// The file ends inside its header.
    #[error("the file ends inside its {expected}-byte header, after {found} bytes")]
    TruncatedHeader {
        /// Bytes the header needs.
        expected: usize,
        /// Bytes the file has.
        found: usize,
    },
    /// The magic number is not the expected one.
    #[error("magic number {found} (0x{found:08x}), expected {expected} (0x{expected:08x}, {what})")]
    WrongMagic {
        /// The expected magic number (2051 for images, 2049 for labels).
        expected: u32,
        /// The magic number in the file.
        found: u32,
        /// What the expected magic number stands for.
        what: &'static str,
    },
    /// A dimension that must be positive is 0.
    #[error("dimensions {dims:?}: the image sides must be > 0")]
    ZeroDimension {
        /// The dimensions in the header.
        dims: Vec<u32>,
    },
    /// The dimensions multiply to more elements than this machine can address.
    #[error("dimensions {dims:?} overflow: their product does not fit in {bits} bits")]
    DimensionsOverflow {
        /// The dimensions in the header.
        dims: Vec<u32>,
        /// Width of `usize` on this machine.
        bits: u32,
    },
    /// The header promises more bytes of data than the file holds.
    #[error("the header promises {expected} bytes of data but the file holds only {found}")]
    Truncated {
        /// Bytes of data the header promises.
        expected: u64,
        /// Bytes of data present.
        found: u64,
    },
    /// Bytes follow the data the header promises.
    #[error("{extra} unexpected byte(s) after the {expected} bytes of data the header promises")]
    TrailingBytes {
        /// Bytes of data the header promises.
        expected: u64,
        /// Bytes beyond them.
        extra: u64,
    },
    /// The gzip stream cannot be decompressed (bad header, bad checksum, cut short).
    #[error("corrupt gzip stream: {message}")]
    CorruptGzip {
        /// The decompressor's complaint.
        message: String,
    },
    /// A label file does not hold one label per image.
    #[error("{labels} labels, but {images_path} holds {images} images")]
    CountMismatch {
        /// Number of labels in this file.
        labels: usize,
        /// Number of images in the image file.
        images: usize,
        /// The image file.
        images_path: PathBuf,
    },
}

/// What [`Error::NonFinite`] found not finite.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NonFinitePart {
    /// The objective the step minimises.
    Loss,
    /// The reconstruction term −E_q[log p(x|z)].
    Reconstruction,
    /// The KL term KL(q(z|x) ‖ p(z)).
    Kl,
    /// The gradient of one parameter (the loss was finite).
    Gradient {
        /// The parameter's name.
        parameter: String,
    },
}

impl std::fmt::Display for NonFinitePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NonFinitePart::Loss => f.write_str("the loss"),
            NonFinitePart::Reconstruction => {
                f.write_str("the reconstruction term -E_q[log p(x|z)]")
            }
            NonFinitePart::Kl => f.write_str("the KL term KL(q(z|x) || p(z))"),
            NonFinitePart::Gradient { parameter } => {
                write!(f, "the gradient of `{parameter}`")
            }
        }
    }
}

/// At most this many names of a list go into a message.
const LISTED: usize = 10;

/// Up to [`LISTED`] names, then how many more.
fn list_names(names: &[String]) -> String {
    let mut listed = names
        .iter()
        .take(LISTED)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LISTED {
        listed.push_str(&format!(" and {} more", names.len() - LISTED));
    }
    listed
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    missing_label: &str,
    unexpected_label: &str,
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} {missing_label}: {}",
            missing.len(),
            list_names(missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} {unexpected_label}: {}",
            unexpected.len(),
            list_names(unexpected)
        ));
    }
    parts.join("; ")
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
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

/// The most elements one tensor of this crate may hold: 2⁶⁰, so that even in `f64` its
/// size in bytes fits in `isize` (the most one allocation can be) with room to spare.
/// Configs check their layers' sizes against it, and [`ParamStore`](crate::ParamStore)
/// and [`NoiseSource`](crate::NoiseSource) refuse larger tensors with an error instead of
/// a `capacity overflow` panic.
pub const MAX_ELEMENTS: usize = 1 << 60;

/// The product of `dims` if it neither overflows nor exceeds [`MAX_ELEMENTS`].
pub(crate) fn elements(dims: &[usize]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// A candle error for a tensor of `dims` too large to make.
pub(crate) fn too_large(op: &'static str, dims: &[usize]) -> candle_core::Error {
    Error::shape(op, format!("at most {MAX_ELEMENTS} elements (2^60)"), dims).into()
}

/// Checks in a config's `validate` that a linear layer from `input` to `output` units has
/// at most [`MAX_ELEMENTS`] weights, blaming the wider side's field.
pub(crate) fn ensure_layer(
    config: &'static str,
    input: (&'static str, usize),
    output: (&'static str, usize),
) -> Result<()> {
    if elements(&[input.1, output.1]).is_some() {
        return Ok(());
    }
    let (field, value) = if input.1 >= output.1 { input } else { output };
    Err(Error::config(
        config,
        field,
        value,
        "too large: a layer's weights (inputs × outputs) must number at most 2^60",
    ))
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
