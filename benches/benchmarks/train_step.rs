//! The full training step of the MNIST VAE: forward, ELBO, backward, Adam; with the fused
//! kernels (the default) and with plain candle ops, and each kernel alone at batch 128.

use candle_vae::fused::{FusedKernels, with_fused_kernels};
use criterion::{BenchmarkId, Criterion, Throughput};

use super::common::{MnistVae, batches, criterion, device, timed};

fn train_step(c: &mut Criterion) {
    let (device, prefix) = device();
    let mut group = c.benchmark_group(format!("{prefix}/train_step"));
    for batch in [64usize, 128, 256, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        let data = batches(8, &[batch, 784], &device);
        for (name, kernels) in [("fused", FusedKernels::ALL), ("plain", FusedKernels::NONE)] {
            let mut model = MnistVae::new(&device);
            group.bench_function(BenchmarkId::new(name, batch), |b| {
                b.iter_custom(|iters| {
                    with_fused_kernels(kernels, || {
                        timed(iters, &device, |i| {
                            model.step(&data[i as usize % data.len()]).map(|_| ())
                        })
                    })
                })
            });
        }
    }
    group.finish();
}

/// What each fused kernel is worth on its own, and all of them, at batch 128.
fn levers(c: &mut Criterion) {
    const BATCH: usize = 128;
    let (device, prefix) = device();
    let mut group = c.benchmark_group(format!("{prefix}/train_step_levers"));
    group.throughput(Throughput::Elements(BATCH as u64));
    let data = batches(8, &[BATCH, 784], &device);
    let none = FusedKernels::NONE;
    for (name, kernels) in [
        ("none", none),
        ("adam", none.with_adam(true)),
        ("elbo", none.with_elbo(true)),
        ("linear", none.with_linear(true)),
        ("all", FusedKernels::ALL),
    ] {
        let mut model = MnistVae::new(&device);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                with_fused_kernels(kernels, || {
                    timed(iters, &device, |i| {
                        model.step(&data[i as usize % data.len()]).map(|_| ())
                    })
                })
            })
        });
    }
    group.finish();
}

criterion::criterion_group! {
    name = benches;
    config = criterion();
    targets = train_step, levers
}
