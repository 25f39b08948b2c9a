//! The fused kernels on a single thread (`CANDLE_NUM_THREADS=1`: candle's pool without
//! workers), where every kernel runs inline on the caller, against the plain candle path.
//! A binary of its own: the pool's size is read once per process.

mod common;

#[test]
fn fused_step_on_one_thread_matches_the_plain_step() -> anyhow::Result<()> {
    // SAFETY: the only test of this binary, run before anything reads the environment.
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    anyhow::ensure!(
        candle_core::utils::barrier_pool().n_workers() == 0,
        "candle's pool has workers although CANDLE_NUM_THREADS=1"
    );
    common::assert_fused_mnist_sized_step_matches_plain(1e-5)
}
