//! Checkpoints: named tensors plus string metadata in one safetensors file, written
//! atomically.
//!
//! A checkpoint holds the model's parameters under their [`ParamStore`] names, optionally
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
use crate::params::ParamStore;

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

    /// A checkpoint holding every parameter of `store`.
    ///
    /// # Errors
    /// If the store's lock is poisoned.
    pub fn from_params(store: &ParamStore) -> Result<Self> {
        let mut checkpoint = Self::new();
        for (name, var) in store.named_vars()? {
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
    /// before any is changed, so on error the store is untouched. Tensors the store does
    /// not have (optimiser state, say) are ignored.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] or [`Error::TensorShape`] naming the first tensor at fault.
    pub fn restore(&self, store: &ParamStore) -> Result<()> {
        let vars = store.named_vars()?;
        let values = vars
            .iter()
            .map(|(name, var)| self.tensor_like(name, var.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        for ((_, var), value) in vars.iter().zip(values) {
            var.set(&value)?;
        }
        Ok(())
    }

    /// Writes the checkpoint to `path` atomically (temporary file, fsync, rename).
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
        write_atomically(path, &bytes)
    }

    /// Reads a checkpoint from `path`, placing its tensors on `device`.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::Safetensors`] if it is not a
    /// valid safetensors file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let metadata = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)?
            .into_iter()
            .collect();
        Ok(Self {
            tensors,
            metadata,
            source: path.to_path_buf(),
        })
    }

    fn metadata_error(&self, key: &str, reason: String) -> Error {
        Error::Metadata {
            path: self.source.clone(),
            key: key.to_string(),
            reason,
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so readers
/// see the old content or the new, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);

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
