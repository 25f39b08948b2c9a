//! The ELBO alone, forward and backward: Bernoulli log-likelihood of 784 logits per image
//! plus the analytic KL of 20 latent dimensions, gradients to the logits and the posterior.

use candle_core::{DType, Var};
use candle_vae::{
    DiagonalGaussian, ElboLoss, ElboLossConfig, NoiseSource, StandardLikelihood, StandardNormal,
    VaeOutput,
};
use criterion::{BenchmarkId, Criterion, Throughput};

use super::common::{batches, criterion, device, timed};

fn elbo(c: &mut Criterion) {
    let (device, prefix) = device();
    let mut group = c.benchmark_group(format!("{prefix}/elbo_fwd_bwd"));
    for batch in [128usize, 1024] {
        group.throughput(Throughput::Elements(batch as u64));
        let mut noise = NoiseSource::new(4);
        let xs = &batches(1, &[batch, 784], &device)[0];
        let var = |shape: (usize, usize), noise: &mut NoiseSource| {
            Var::from_tensor(
                &noise
                    .standard_normal(shape, DType::F32, &device)
                    .expect("t"),
            )
            .expect("var")
        };
        let logits = var((batch, 784), &mut noise);
        let mean = var((batch, 20), &mut noise);
        let log_var = var((batch, 20), &mut noise);
        let posterior =
            DiagonalGaussian::new(mean.as_tensor().clone(), log_var.as_tensor().clone())
                .expect("posterior");
        let prior = StandardNormal::new(20).expect("prior");
        let out = VaeOutput {
            z: posterior.mean().clone(),
            eps: posterior.mean().zeros_like().expect("eps"),
            posterior,
            params: logits.as_tensor().clone(),
            likelihood: &StandardLikelihood::Bernoulli,
            prior: &prior,
        };
        let loss = ElboLoss::new(ElboLossConfig::default()).expect("loss");
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| {
                timed(iters, &device, |_| {
                    loss.forward(&out, xs)?.loss.backward().map(|_| ())
                })
            })
        });
    }
    group.finish();
}

criterion::criterion_group! {
    name = benches;
    config = criterion();
    targets = elbo
}
