//! Where one training step's time goes (batch 128): the forward pass, the loss, the
//! backward pass and the optimizer, each timed alone on the same model and batch, with the
//! fused kernels and with plain candle ops; and the backward pass and optimizer together
//! as a training step runs them (`Adam::backward_step`, whose fused layers write the
//! weight gradients into the optimizer's buffers).

use candle_core::Tensor;
use candle_vae::fused::{FusedKernels, with_fused_kernels};
use criterion::{BenchmarkId, Criterion, Throughput};

use super::common::{MnistVae, batches, criterion, device, timed};

const BATCH: usize = 128;

fn breakdown(c: &mut Criterion) {
    let (device, prefix) = device();
    let mut group = c.benchmark_group(format!("{prefix}/step_breakdown"));
    group.throughput(Throughput::Elements(BATCH as u64));
    let data = batches(8, &[BATCH, 784], &device);
    for (name, kernels) in [("fused", FusedKernels::ALL), ("plain", FusedKernels::NONE)] {
        with_fused_kernels(kernels, || {
            let mut model = MnistVae::new(&device);
            group.bench_function(BenchmarkId::new("forward", name), |b| {
                b.iter_custom(|iters| {
                    timed(iters, &device, |i| {
                        let xs = &data[i as usize % data.len()];
                        model.vae.forward_t(xs, &mut model.noise, true).map(|_| ())
                    })
                })
            });
            let xs = &data[0];
            let out = model
                .vae
                .forward_t(xs, &mut model.noise, true)
                .expect("forward");
            group.bench_function(BenchmarkId::new("loss", name), |b| {
                b.iter_custom(|iters| {
                    timed(iters, &device, |_| model.loss.forward(&out, xs).map(|_| ()))
                })
            });
            let loss: Tensor = model.loss.forward(&out, xs).expect("loss").loss;
            group.bench_function(BenchmarkId::new("backward", name), |b| {
                b.iter_custom(|iters| timed(iters, &device, |_| loss.backward().map(|_| ())))
            });
            let grads = loss.backward().expect("grads");
            group.bench_function(BenchmarkId::new("optimizer", name), |b| {
                b.iter_custom(|iters| timed(iters, &device, |_| model.opt.step(&grads)))
            });
            group.bench_function(BenchmarkId::new("backward_step", name), |b| {
                b.iter_custom(|iters| timed(iters, &device, |_| model.opt.backward_step(&loss)))
            });
        });
    }
    group.finish();
}

criterion::criterion_group! {
    name = benches;
    config = criterion();
    targets = breakdown
}
