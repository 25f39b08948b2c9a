//! Checkpoints: named tensors plus string metadata in one safetensors file, written
//! atomically.
//!
//! A checkpoint holds the model's parameters under their [`ParamStore`](crate::ParamStore) names, optionally
//! the optimiser's state (see [`Adam::save_state`](crate::Adam::save_state)), and metadata:
//! the model's configuration as JSON, the epoch, the noise state — whatever the caller
//! stores with [`Checkpoint::set_json`]. Because the format is plain safetensors, a PyTorch
//! `state_dict` saved with `safetensors.torch.save_file` is a checkpoint too: with the
//! pytorch/examples layer names (see [`mlp`](crate::mlp)) it restores directly.
//!
//! Saving writes a temporary file beside the target, flushes it to disk, and renames it
//! over the target, so a crash leaves either the old checkpoint or the new one, never a
//! torn file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::params::Parameters;

/// Named tensors and metadata, saved to and loaded from safetensors.
#[derive(Debug, Clone, Default)]
pub struct Checkpoint {
    tensors: BTreeMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
    source: PathBuf,
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// A checkpoint holding every parameter of `store` (a [`ParamStore`](crate::ParamStore), a `VarMap`, or
    /// anything that implements [`Parameters`]).
    ///
    /// # Errors
    /// If the store's lock is poisoned.
    pub fn from_params<P: Parameters + ?Sized>(store: &P) -> Result<Self> {
        let mut checkpoint = Self::new();
        for (name, var) in store.named_parameters()? {
            checkpoint.insert(name, var.as_tensor().clone());
        }
        Ok(checkpoint)
    }

    /// The file this checkpoint was loaded from (empty for a new one).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// All tensors, by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Sets a metadata entry.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// A metadata entry.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// All metadata entries.
    pub fn metadata_entries(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Stores `value` as JSON under `key` (e.g. a model configuration).
    ///
    /// # Errors
    /// [`Error::Metadata`] if `value` does not serialise.
    pub fn set_json<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let json =
            serde_json::to_string(value).map_err(|e| self.metadata_error(key, e.to_string()))?;
        self.set_metadata(key, json);
        Ok(())
    }

    /// Reads the JSON value under `key`.
    ///
    /// # Errors
    /// [`Error::Metadata`] if the entry is missing or does not parse as `T`.
    pub fn json<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let raw = self
            .metadata(key)
            .ok_or_else(|| self.metadata_error(key, "missing".to_string()))?;
        serde_json::from_str(raw).map_err(|e| self.metadata_error(key, e.to_string()))
    }

    /// The tensor `name`, checked to have `like`'s shape and moved to its dtype and device.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] or [`Error::TensorShape`] naming the tensor.
    pub fn tensor_like(&self, name: &str, like: &Tensor) -> Result<Tensor> {
        let tensor = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.source.clone(),
            name: name.to_string(),
        })?;
        if tensor.dims() != like.dims() {
            return Err(Error::TensorShape {
                path: self.source.clone(),
                name: name.to_string(),
                expected: like.dims().to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.to_dtype(like.dtype())?.to_device(like.device())?)
    }

    /// Sets every parameter of `store` from this checkpoint. All parameters are checked
    /// before any is changed, so on error the store is untouched.
    ///
    /// File and store must hold the same tensors, optimiser state aside (names under
    /// [`OPTIMIZER_PREFIX`]): a store that lacks some of the file's tensors (another
    /// model, another naming, an empty store) would otherwise keep its random weights
    /// and report success.
    ///
    /// # Errors
    /// [`Error::CheckpointMismatch`] listing the tensors the file holds and the store does
    /// not (and those the store holds and the file does not); [`Error::MissingTensor`] if
    /// the file only lacks tensors, naming the first; [`Error::TensorShape`] naming the
    /// first tensor of another shape.
    pub fn restore<P: Parameters + ?Sized>(&self, store: &P) -> Result<()> {
        let vars = store.named_parameters()?;
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|name| !name.starts_with(OPTIMIZER_PREFIX))
            .filter(|name| {
                vars.binary_search_by(|(n, _)| n.as_str().cmp(name))
                    .is_err()
            })
            .cloned()
            .collect();
        if !unexpected.is_empty() {
            let missing = vars
                .iter()
                .filter(|(name, _)| !self.tensors.contains_key(name))
                .map(|(name, _)| name.clone())
                .collect();
            return Err(Error::CheckpointMismatch {
                path: self.source.clone(),
                missing,
                unexpected,
            });
        }
        let values = vars
            .iter()
            .map(|(name, var)| self.tensor_like(name, var.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        for ((_, var), value) in vars.iter().zip(values) {
            var.set(&value)?;
        }
        Ok(())
    }

    /// Writes the checkpoint to `path` atomically (temporary file, fsync, rename), first
    /// removing stale temporary files of the same path that killed saves left behind
    /// (see [`remove_stale_temporaries`]).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file; [`Error::Safetensors`] if a tensor cannot be encoded.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        let contiguous = self
            .tensors
            .iter()
            .map(|(name, tensor)| {
                Ok((name.as_str(), tensor.to_device(&Device::Cpu)?.contiguous()?))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::tensor::serialize(contiguous, Some(metadata))?;
        remove_stale_temporaries(path);
        write_atomically(path, &bytes)
    }

    /// Reads a checkpoint from `path`, placing its tensors on `device`; also removes stale
    /// temporary files of killed saves of the same path (see [`remove_stale_temporaries`]).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::Safetensors`] if it is not a
    /// valid safetensors file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        remove_stale_temporaries(path);
        Self::from_bytes(&bytes, path, device)
    }

    /// Reads a checkpoint from the bytes of a safetensors file, placing its tensors on
    /// `device`; `source` is the name errors give it (what [`source`](Self::source)
    /// returns).
    ///
    /// # Errors
    /// [`Error::Safetensors`] if the bytes are not a valid safetensors file.
    pub fn from_bytes(bytes: &[u8], source: impl Into<PathBuf>, device: &Device) -> Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
        let metadata = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let tensors = candle_core::safetensors::load_buffer(bytes, device)?
            .into_iter()
            .collect();
        Ok(Self {
            tensors,
            metadata,
            source: source.into(),
        })
    }

    /// Checks, before a long run, that [`save`](Self::save) will be able to write `path`:
    /// it names a file (not a directory) in an existing directory where a temporary file
    /// can be created (one is created and removed).
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` and saying what is wrong.
    pub fn check_writable(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if path.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a directory; a checkpoint needs a file name",
                ),
            ));
        }
        let tmp = temporary_path(path)?;
        let result = fs::File::create(&tmp).and_then(|file| file.sync_all());
        let _ = fs::remove_file(&tmp);
        result.map_err(|e| Error::io(path, e))
    }

    fn metadata_error(&self, key: &str, reason: String) -> Error {
        Error::Metadata {
            path: self.source.clone(),
            key: key.to_string(),
            reason,
        }
    }
}

/// Name prefix of the tensors [`Checkpoint::restore`] leaves to the optimiser.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

/// The directory `path` is in (`.` for a bare file name).
fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path`'s file name, or an [`Error::Io`] saying it has none.
fn file_name(path: &Path) -> Result<&std::ffi::OsStr> {
    path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })
}

/// This process's temporary file for a save of `path`: `.<name>.<pid>.tmp` beside it.
fn temporary_path(path: &Path) -> Result<PathBuf> {
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name(path)?);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    Ok(directory(path).join(tmp_name))
}

/// Removes the temporary files `.<name>.<pid>.tmp` that saves of `path` killed before
/// their rename left behind, where `<pid>` names a process that no longer runs.
///
/// A file is removed only when it is certain that its writer is gone: its pid is not
/// this process's, and the system has a `/proc` (Linux) in which that pid has no entry.
/// Without `/proc` (macOS, Windows) nothing is removed. Another process's save in
/// progress is never touched; a pid reused by a new process keeps its file (a leftover,
/// never a loss). Failures (a read-only directory) are ignored: this is housekeeping.
/// [`Checkpoint::save`] and [`Checkpoint::load`] call it.
pub fn remove_stale_temporaries(path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(directory(path)) else {
        return;
    };
    let prefix = format!(".{name}.");
    let own = std::process::id();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != own && !proc.join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so readers
/// see the old content or the new, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = directory(path);
    let tmp = temporary_path(path)?;

    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Persist the rename itself; directories cannot be opened for syncing everywhere.
        if let Ok(dir) = fs::File::open(&dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
