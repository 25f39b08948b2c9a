//! The importance-sampled log-likelihood (Burda et al. 2015) with K = 1000 samples over
//! 1,000 images, 100 samples per pass: a million decoder passes per estimate.

use candle_vae::estimate::log_likelihood;
use candle_vae::{ImportanceSamplingConfig, NoiseSource};
use criterion::{Criterion, Throughput};

use super::common::{MnistVae, batches, criterion, device, timed};

const IMAGES: usize = 1000;
const SAMPLES: usize = 1000;

fn nll(c: &mut Criterion) {
    let (device, prefix) = device();
    let mut group = c.benchmark_group(format!("{prefix}/nll_k1000"));
    group.throughput(Throughput::Elements(IMAGES as u64));
    let xs = &batches(1, &[IMAGES, 784], &device)[0];
    let model = MnistVae::new(&device);
    let config = ImportanceSamplingConfig::new(SAMPLES).with_chunk_size(100);
    group.bench_function("1000_images", |b| {
        b.iter_custom(|iters| {
            timed(iters, &device, |_| {
                let mut noise = NoiseSource::new(9);
                log_likelihood(&model.vae, xs, &config, &mut noise)
                    .map(|_| ())
                    .map_err(candle_core::Error::from)
            })
        })
    });
    group.finish();
}

criterion::criterion_group! {
    name = benches;
    config = criterion().measurement_time(std::time::Duration::from_secs(20));
    targets = nll
}
