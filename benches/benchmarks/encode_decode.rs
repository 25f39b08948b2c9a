//! The MNIST VAE's encoder and decoder alone (evaluation mode, no backward).

use candle_core::DType;
use candle_vae::NoiseSource;
use criterion::{BenchmarkId, Criterion, Throughput};

use super::common::{MnistVae, batches, criterion, device, timed};

fn encode_decode(c: &mut Criterion) {
    let (device, prefix) = device();
    let model = MnistVae::new(&device);
    for batch in [128usize, 1024] {
        let data = batches(4, &[batch, 784], &device);
        let z = NoiseSource::new(5)
            .standard_normal((batch, 20), DType::F32, &device)
            .expect("z");
        let mut group = c.benchmark_group(format!("{prefix}/encode"));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| {
                timed(iters, &device, |i| {
                    model.vae.encode(&data[i as usize % data.len()]).map(|_| ())
                })
            })
        });
        group.finish();
        let mut group = c.benchmark_group(format!("{prefix}/decode"));
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| timed(iters, &device, |_| model.vae.decode(&z).map(|_| ())))
        });
        group.finish();
    }
}

criterion::criterion_group! {
    name = benches;
    config = criterion();
    targets = encode_decode
}
