//! A parameter store whose initial values are reproducible.
//!
//! Candle's [`VarMap`] draws initial weights from candle's own random generator, which
//! cannot be seeded on the CPU, so two runs never start from the same weights.
//! [`ParamStore`] is a `VarMap` behind a [`VarBuilder`] backend that draws each new
//! parameter from a ChaCha stream keyed by the store's seed and the parameter's *name*:
//! the same seed gives the same weights whatever order the layers are built in.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use std::collections::HashMap;

use crate::noise::NoiseSource;

/// Trainable parameters by name, initialised from a seed.
///
/// Cloning is cheap and shares the parameters (like [`VarMap`]).
///
/// ```
/// # use candle_vae::ParamStore;
/// # use candle_core::{DType, Device};
/// let a = ParamStore::new(42);
/// let b = ParamStore::new(42);
/// let wa = candle_nn::linear(3, 2, a.var_builder(DType::F32, &Device::Cpu))?;
/// let wb = candle_nn::linear(3, 2, b.var_builder(DType::F32, &Device::Cpu))?;
/// assert_eq!(wa.weight().to_vec2::<f32>()?, wb.weight().to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone)]
pub struct ParamStore {
    varmap: VarMap,
    seed: u64,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("seed", &self.seed)
            .field("tensors", &self.len())
            .finish()
    }
}

impl ParamStore {
    /// An empty store whose parameters will be drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            seed,
        }
    }

    /// The seed new parameters are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A [`VarBuilder`] that creates missing parameters in this store (seeded) and returns
    /// existing ones, as [`VarBuilder::from_varmap`] does.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// The underlying candle [`VarMap`].
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// All parameters with their names, sorted by name.
    ///
    /// # Errors
    /// If another thread panicked while holding the store's lock.
    pub fn named_vars(&self) -> candle_core::Result<Vec<(String, Var)>> {
        self.varmap.named_parameters()
    }

    /// All parameters, sorted by name (the order optimizers see them in).
    ///
    /// # Errors
    /// If another thread panicked while holding the store's lock.
    pub fn vars(&self) -> candle_core::Result<Vec<Var>> {
        Ok(self.named_vars()?.into_iter().map(|(_, v)| v).collect())
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        lock(self.varmap.data()).map(|d| d.len()).unwrap_or(0)
    }

    /// Whether the store holds no parameter yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        lock(self.varmap.data())
            .map(|d| d.values().map(|v| v.elem_count()).sum())
            .unwrap_or(0)
    }

    /// The parameters' current values by name (detached copies share storage, as
    /// `Var::as_tensor` does).
    ///
    /// # Errors
    /// If another thread panicked while holding the store's lock.
    pub fn tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        Ok(self
            .named_vars()?
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect())
    }

    fn create(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Var> {
        if crate::error::elements(shape.dims()).is_none() {
            return Err(crate::error::too_large("ParamStore::get", shape.dims()));
        }
        let mut noise = NoiseSource::new(self.seed).substream(name_stream(name));
        let host = match init {
            // In f64 so an f64 parameter gets exactly `value`; `to_dtype` below rounds it
            // for f32 as `value as f32` would.
            Init::Const(value) => Tensor::full(value, shape, &Device::Cpu)?,
            Init::Uniform { lo, up } => noise
                .uniform(shape, DType::F32, &Device::Cpu)?
                .affine(up - lo, lo)?,
            Init::Randn { mean, stdev } => noise
                .standard_normal(shape, DType::F32, &Device::Cpu)?
                .affine(stdev, mean)?,
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(&shape) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        noise
                            .uniform(shape, DType::F32, &Device::Cpu)?
                            .affine(2.0 * bound, -bound)?
                    }
                    NormalOrUniform::Normal => noise
                        .standard_normal(shape, DType::F32, &Device::Cpu)?
                        .affine(std, 0.0)?,
                }
            }
        };
        Var::from_tensor(&host.to_dtype(dtype)?.to_device(device)?)
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = lock(self.varmap.data())?;
        if let Some(var) = data.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "parameter `{name}` exists with shape {:?}, asked for {:?}",
                    var.dims(),
                    shape.dims()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let var = self.create(shape, name, init, dtype, device)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _device: &Device,
    ) -> candle_core::Result<Tensor> {
        match lock(self.varmap.data())?.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("parameter `{name}` is not in the store"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        lock(self.varmap.data())
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> candle_core::Result<MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| candle_core::Error::Msg("parameter store lock poisoned".into()))
}

/// FNV-1a hash of a parameter name: its ChaCha stream number.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A named set of trainable parameters: what [`Checkpoint`](crate::Checkpoint)s save and
/// restore and [`TrainingState`](crate::train::TrainingState) resumes.
///
/// Implemented for this crate's [`ParamStore`] and for candle's own `VarMap`, so a candle
/// user's parameters checkpoint as they are. (A `VarMap` initialises from candle's
/// unseeded generator: use a `ParamStore`, which is a `VarMap` with seeded initial values,
/// where runs must repeat.)
pub trait Parameters {
    /// Every parameter with its name, sorted by name.
    ///
    /// # Errors
    /// If the parameters cannot be read (a poisoned lock).
    fn named_parameters(&self) -> candle_core::Result<Vec<(String, Var)>>;
}

impl Parameters for ParamStore {
    fn named_parameters(&self) -> candle_core::Result<Vec<(String, Var)>> {
        self.named_vars()
    }
}

impl Parameters for VarMap {
    fn named_parameters(&self) -> candle_core::Result<Vec<(String, Var)>> {
        let data = lock(self.data())?;
        let mut vars: Vec<(String, Var)> = data
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(vars)
    }
}
