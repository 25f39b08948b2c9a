//! What every bench shares: the pytorch/examples MNIST VAE, random batches, the device,
//! and the fused-kernel switch.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_vae::{
    Adam, AdamConfig, ElboLoss, ElboLossConfig, MlpDecoder, MlpDecoderConfig, MlpEncoder,
    MlpEncoderConfig, NoiseSource, ParamStore, Reduction, StandardLikelihood, Vae,
};
use criterion::Criterion;

/// The device the benches run on, and its name as the group prefix.
pub fn device() -> (Device, &'static str) {
    match candle_vae::best_device(0).expect("a device") {
        d @ Device::Cuda(_) => (d, "cuda"),
        d @ Device::Metal(_) => (d, "metal"),
        d => (d, "cpu"),
    }
}

/// A criterion tuned for a shared 2-core machine: few, short samples.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

/// The pytorch/examples VAE: 784-400-20-400-784, ReLU, Bernoulli logits.
pub struct MnistVae {
    pub vae: Vae<MlpEncoder, MlpDecoder>,
    pub loss: ElboLoss,
    pub opt: Adam,
    pub noise: NoiseSource,
}

impl MnistVae {
    pub fn new(device: &Device) -> Self {
        let params = ParamStore::new(1);
        let vb = params.var_builder(DType::F32, device);
        let enc = MlpEncoder::new(&MlpEncoderConfig::new(784, &[400], 20), vb.pp("enc"))
            .expect("encoder");
        let dec = MlpDecoder::new(&MlpDecoderConfig::new(20, &[400], 784), vb.pp("dec"))
            .expect("decoder");
        let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli).expect("vae");
        let loss =
            ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum)).expect("loss");
        let opt = Adam::from_store(&params, AdamConfig::new(1e-3)).expect("adam");
        Self {
            vae,
            loss,
            opt,
            noise: NoiseSource::new(2),
        }
    }

    /// One training step: forward, loss, backward, Adam.
    pub fn step(&mut self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let out = self.vae.forward_t(xs, &mut self.noise, true)?;
        let elbo = self.loss.forward(&out, xs)?;
        self.opt.backward_step(&elbo.loss)?;
        Ok(elbo.loss)
    }
}

/// `count` batches of uniform [0, 1) "images" of `shape`, as PyTorch's step bench uses.
pub fn batches(count: usize, shape: &[usize], device: &Device) -> Vec<Tensor> {
    let mut noise = NoiseSource::new(3);
    (0..count)
        .map(|_| noise.uniform(shape, DType::F32, device).expect("batch"))
        .collect()
}

/// Times `iters` calls of `f`, synchronising the device before the clock stops.
pub fn timed<F>(iters: u64, device: &Device, mut f: F) -> Duration
where
    F: FnMut(u64) -> candle_core::Result<()>,
{
    device.synchronize().expect("sync");
    let start = Instant::now();
    for i in 0..iters {
        f(i).expect("bench step");
    }
    device.synchronize().expect("sync");
    start.elapsed()
}
