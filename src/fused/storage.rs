//! Safe access to the `f32` buffers behind CPU tensors.

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, bail};

/// Whether `t` is an `f32` tensor on the CPU.
pub(crate) fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The elements of a contiguous `f32` CPU storage under `layout`.
pub(crate) fn slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused kernel: expected a contiguous layout, got {layout:?}")
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// The elements of a contiguous `f32` CPU storage under `layout`, mutably.
pub(crate) fn slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused kernel: expected a contiguous layout, got {layout:?}")
    };
    match storage {
        CpuStorage::F32(values) => Ok(&mut values[start..end]),
        _ => bail!("fused kernel: expected an f32 storage"),
    }
}

/// Runs `f` on the elements of a contiguous `f32` CPU tensor.
pub(crate) fn with_slice<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (guard, layout) = t.storage_and_layout();
    match &*guard {
        Storage::Cpu(cpu) => f(slice(cpu, layout)?),
        _ => bail!("fused kernel: expected a CPU tensor"),
    }
}

/// Whether two tensors are views of the same buffer (in-place kernels must not alias).
pub(crate) fn shares_storage(a: &Tensor, b: &Tensor) -> bool {
    let pa: *const Storage = &*a.storage_and_layout().0;
    let pb: *const Storage = &*b.storage_and_layout().0;
    std::ptr::addr_eq(pa, pb)
}
