//! A convolutional VAE's training step: MNIST-sized 1×28×28 images (stages 32, 64) and
//! 3×64×64 images (stages 32, 64, 128, 256), Bernoulli likelihood, Adam.

use candle_core::{DType, Tensor};
use candle_vae::{
    Adam, AdamConfig, ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig, ElboLoss,
    ElboLossConfig, ImageShape, NoiseSource, ParamStore, Reduction, StandardLikelihood, Vae,
};
use criterion::{BenchmarkId, Criterion, Throughput};

use super::common::{batches, criterion, device, timed};

fn conv(c: &mut Criterion) {
    let (device, prefix) = device();
    let mut group = c.benchmark_group(format!("{prefix}/conv_train_step"));
    let cases: [(&str, ImageShape, &[usize], usize, usize); 2] = [
        ("28x28", ImageShape::new(1, 28, 28), &[32, 64], 20, 128),
        (
            "64x64",
            ImageShape::new(3, 64, 64),
            &[32, 64, 128, 256],
            32,
            64,
        ),
    ];
    for (name, image, channels, latent, batch) in cases {
        group.throughput(Throughput::Elements(batch as u64));
        let params = ParamStore::new(1);
        let vb = params.var_builder(DType::F32, &device);
        let enc = ConvEncoder::new(
            &ConvEncoderConfig::new(image, channels, latent),
            vb.pp("enc"),
        )
        .expect("encoder");
        let dec = ConvDecoder::new(
            &ConvDecoderConfig::new(latent, image, channels),
            vb.pp("dec"),
        )
        .expect("decoder");
        let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli).expect("vae");
        let loss =
            ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum)).expect("loss");
        let mut opt = Adam::from_store(&params, AdamConfig::new(1e-3)).expect("adam");
        let mut noise = NoiseSource::new(2);
        let data: Vec<Tensor> = batches(
            4,
            &[batch, image.channels, image.height, image.width],
            &device,
        );
        group.bench_function(BenchmarkId::new(name, batch), |b| {
            b.iter_custom(|iters| {
                timed(iters, &device, |i| {
                    let xs = &data[i as usize % data.len()];
                    let out = vae.forward_t(xs, &mut noise, true)?;
                    opt.backward_step(&loss.forward(&out, xs)?.loss)
                })
            })
        });
    }
    group.finish();
}

criterion::criterion_group! {
    name = benches;
    config = criterion();
    targets = conv
}
