//! Choosing where tensors live.

use candle_core::Device;
use candle_core::utils::{cuda_is_available, metal_is_available};

use crate::error::{Error, Result};

/// The fastest device this build can use: CUDA GPU `ordinal` when the crate was built with
/// the `cuda` feature and a GPU is present, else Metal likewise, else the CPU.
///
/// # Errors
/// If a GPU is present but cannot be opened.
pub fn best_device(ordinal: usize) -> Result<Device> {
    if cuda_is_available() {
        Ok(Device::new_cuda(ordinal)?)
    } else if metal_is_available() {
        Ok(Device::new_metal(ordinal)?)
    } else {
        Ok(Device::Cpu)
    }
}

/// Parses a device name as command-line tools take it: `auto`, `cpu`, `cuda`, `cuda:N`,
/// `metal`, `metal:N`.
///
/// # Errors
/// [`Error::InvalidConfig`] for an unknown name or a backend this build lacks.
pub fn parse_device(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, n)) => {
            let ordinal = n.parse::<usize>().map_err(|_| {
                Error::config("device", "ordinal", name, "must be a number, as in cuda:0")
            })?;
            (kind, ordinal)
        }
        None => (name, 0),
    };
    match kind {
        "auto" => best_device(ordinal),
        "cpu" => Ok(Device::Cpu),
        "cuda" if cuda_is_available() => Ok(Device::new_cuda(ordinal)?),
        "cuda" => Err(Error::config(
            "device",
            "name",
            name,
            "this build has no CUDA (build with --features cuda) or no GPU is present",
        )),
        "metal" if metal_is_available() => Ok(Device::new_metal(ordinal)?),
        "metal" => Err(Error::config(
            "device",
            "name",
            name,
            "this build has no Metal (build with --features metal)",
        )),
        _ => Err(Error::config(
            "device",
            "name",
            name,
            "must be auto, cpu, cuda[:N] or metal[:N]",
        )),
    }
}
