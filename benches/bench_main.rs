//! Criterion benches of candle-vae's hot paths (CPU unless a GPU feature is built).
//!
//! `cargo bench --bench bench_main` runs them all; `cargo bench --bench bench_main -- cpu/train_step`
//! runs one group. Throughput is reported in images (examples) per second. See
//! `docs/PERFORMANCE.md` for the figures and `benches/compare/` for the side-by-side runs
//! against PyTorch.

mod benchmarks;

criterion::criterion_main!(
    benchmarks::train_step::benches,
    benchmarks::breakdown::benches,
    benchmarks::encode_decode::benches,
    benchmarks::elbo::benches,
    benchmarks::nll::benches,
    benchmarks::conv::benches,
);
