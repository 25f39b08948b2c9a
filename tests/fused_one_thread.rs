//! The fused kernels on a single thread (`CANDLE_NUM_THREADS=1`: candle's pool without
//! workers), where every kernel runs inline on the caller, against the plain candle path.
//! A binary of its own: the pool's size is read once per process.

mod common;

use candle_vae::fused::{FusedKernels, with_fused_kernels};

#[test]
fn fused_step_on_one_thread_matches_the_plain_step() -> anyhow::Result<()> {
    // SAFETY: the only test of this binary, run before anything reads the environment.
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    anyhow::ensure!(
        candle_core::utils::barrier_pool().n_workers() == 0,
        "candle's pool has workers although CANDLE_NUM_THREADS=1"
    );
    let plain = with_fused_kernels(FusedKernels::NONE, common::mnist_sized_step)?;
    let fused = with_fused_kernels(FusedKernels::ALL, common::mnist_sized_step)?;
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        common::assert_rel_close(&format!("parameter {i}"), a, b, 1e-5)?;
    }
    Ok(())
}
