//! candle-vae's side of the side-by-side speed comparison with PyTorch (see `README.md`
//! beside this file; `compare.py` runs both alternately). Not an example of how to use the
//! crate: a timing harness that mirrors `peer_torch_vae.py` and `peer_torch_extra.py` step
//! for step and prints one JSON line.
//!
//! ```text
//! compare_vae train --data DIR [--epochs 1] [--batch-size 128] [--plain]
//! compare_vae nll   --data DIR [--images 1000] [--samples 1000] [--chunk 100] [--plain]
//! compare_vae conv  [--data DIR] --size 28|64 [--steps 40] [--batch-size 128] [--plain]
//!                   [--no-fused-conv]
//! compare_vae steps [--batch-size 128] [--steps 200] [--plain]
//! ```
//! `DIR` holds the uncompressed MNIST IDX files (`compare.py` unpacks the `.gz` ones);
//! `--plain` turns the fused kernels off; `--no-fused-conv` only the convolution kernels;
//! `--device cuda` (or `metal`, built with that feature) runs on the GPU, where every step
//! ends with the loss read back to the host, which waits for the device.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_vae::estimate::log_likelihood;
use candle_vae::fused::{FusedKernels, with_fused_kernels};
use candle_vae::{
    Adam, AdamConfig, ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig, ElboLoss,
    ElboLossConfig, ImageShape, ImportanceSamplingConfig, MlpDecoder, MlpDecoderConfig, MlpEncoder,
    MlpEncoderConfig, NoiseSource, ParamStore, Reduction, StandardLikelihood, Vae,
};
use rand::seq::SliceRandom;

/// Reads an IDX image file (magic 2051) as `(n, rows·cols)` values in [0, 1].
fn read_idx_images(path: &std::path::Path) -> Result<(Vec<f32>, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 16 {
        bail!("{}: too short for an IDX header", path.display());
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (magic, n, rows, cols) = (word(0), word(4), word(8), word(12));
    if magic != 2051 {
        bail!("{}: IDX image magic {magic}, expected 2051", path.display());
    }
    let len = n as usize * rows as usize * cols as usize;
    let pixels = bytes.get(16..16 + len).context("truncated IDX file")?;
    Ok((
        pixels.iter().map(|&b| f32::from(b) / 255.0).collect(),
        n as usize,
    ))
}

struct Args {
    mode: String,
    flags: HashMap<String, String>,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut it = std::env::args().skip(1);
        let mode = it
            .next()
            .context("usage: compare_vae train|nll|conv [--flag value]…")?;
        let mut flags = HashMap::new();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .context("flags start with --")?
                .to_string();
            if name == "plain" || name == "no-fused-conv" {
                flags.insert(name, "1".into());
            } else {
                flags.insert(name, it.next().context("flag without value")?);
            }
        }
        Ok(Self { mode, flags })
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.flags.get(name) {
            Some(v) => v.parse().ok().with_context(|| format!("bad --{name} {v}")),
            None => Ok(default),
        }
    }

    fn device(&self) -> Result<Device> {
        Ok(candle_vae::parse_device(
            self.flags.get("device").map_or("cpu", String::as_str),
        )?)
    }

    fn data(&self) -> Result<std::path::PathBuf> {
        Ok(self
            .flags
            .get("data")
            .context("--data DIR is required")?
            .into())
    }
}

fn mnist_vae(params: &ParamStore, device: &Device) -> Result<Vae<MlpEncoder, MlpDecoder>> {
    let vb = params.var_builder(DType::F32, device);
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(784, &[400], 20), vb.pp("enc"))?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(20, &[400], 784), vb.pp("dec"))?;
    Ok(Vae::new(enc, dec, StandardLikelihood::Bernoulli)?)
}

/// One epoch (or more) of the pytorch/examples VAE: shuffled batches, BCE summed + KL,
/// Adam 1e-3. Only the training loop is timed, as in `peer_torch_vae.py`.
fn train(args: &Args) -> Result<String> {
    let (images, n) = read_idx_images(&args.data()?.join("train-images-idx3-ubyte"))?;
    let epochs: usize = args.get("epochs", 1)?;
    let batch: usize = args.get("batch-size", 128)?;
    let params = ParamStore::new(args.get("seed", 1)?);
    let device = args.device()?;
    let vae = mnist_vae(&params, &device)?;
    let loss = ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum))?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-3))?;
    let mut noise = NoiseSource::new(2);
    let mut shuffle = NoiseSource::new(3);
    let mut order: Vec<usize> = (0..n).collect();
    let mut lines = Vec::new();
    let mut total_seconds = 0.0;
    for epoch in 1..=epochs {
        order.shuffle(shuffle.rng());
        let start = Instant::now();
        let mut sum = 0.0;
        for chunk in order.chunks(batch) {
            let mut rows = Vec::with_capacity(chunk.len() * 784);
            for &i in chunk {
                rows.extend_from_slice(&images[i * 784..(i + 1) * 784]);
            }
            let xs = Tensor::from_vec(rows, (chunk.len(), 784), &device)?;
            let out = vae.forward_t(&xs, &mut noise, true)?;
            let elbo = loss.forward(&out, &xs)?;
            opt.backward_step(&elbo.loss)?;
            sum += f64::from(elbo.loss.to_scalar::<f32>()?);
        }
        let seconds = start.elapsed().as_secs_f64();
        total_seconds += seconds;
        lines.push(format!(
            "{{\"epoch\":{epoch},\"train_loss_per_example\":{:.4},\"train_seconds\":{seconds:.3},\"train_images_per_sec\":{:.1}}}",
            sum / n as f64,
            n as f64 / seconds
        ));
    }
    Ok(format!(
        "{{\"mode\":\"train\",\"images_per_sec\":{:.1},\"epochs\":[{}]}}",
        (n * epochs) as f64 / total_seconds,
        lines.join(",")
    ))
}

/// The importance-sampled log-likelihood of the first `--images` test images with
/// `--samples` samples each, in passes of `--chunk` samples (a freshly initialised model:
/// the cost does not depend on the weights).
fn nll(args: &Args) -> Result<String> {
    let (images, n) = read_idx_images(&args.data()?.join("t10k-images-idx3-ubyte"))?;
    let count: usize = args.get::<usize>("images", 1000)?.min(n);
    let samples: usize = args.get("samples", 1000)?;
    let chunk: usize = args.get("chunk", 100)?;
    let params = ParamStore::new(1);
    let device = args.device()?;
    let vae = mnist_vae(&params, &device)?;
    let xs = Tensor::from_vec(images[..count * 784].to_vec(), (count, 784), &device)?;
    let config = ImportanceSamplingConfig::new(samples).with_chunk_size(chunk);
    let start = Instant::now();
    let log_px = log_likelihood(&vae, &xs, &config, &mut NoiseSource::new(9))?;
    let mean = log_px.mean_all()?.to_scalar::<f64>()?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"mode\":\"nll\",\"images\":{count},\"samples\":{samples},\"seconds\":{seconds:.3},\"images_per_sec\":{:.2},\"mean_log_px\":{mean:.4}}}",
        count as f64 / seconds
    ))
}

/// `--steps` training steps of a convolutional VAE: MNIST at 28×28 (stages 32, 64,
/// latent 20) or uniform noise at 3×64×64 (stages 32, 64, 128, 256, latent 32).
fn conv(args: &Args) -> Result<String> {
    let size: usize = args.get("size", 28)?;
    let steps: usize = args.get("steps", 40)?;
    let (image, channels, latent, default_batch): (ImageShape, &[usize], usize, usize) = match size
    {
        28 => (ImageShape::new(1, 28, 28), &[32, 64], 20, 128),
        64 => (ImageShape::new(3, 64, 64), &[32, 64, 128, 256], 32, 64),
        _ => bail!("--size must be 28 or 64"),
    };
    let batch: usize = args.get("batch-size", default_batch)?;
    let per_image = image.elem_count();
    let (images, n) = if size == 28 {
        read_idx_images(&args.data()?.join("train-images-idx3-ubyte"))?
    } else {
        let count = 2048;
        let noise = NoiseSource::new(5).uniform((count, per_image), DType::F32, &Device::Cpu)?;
        (noise.flatten_all()?.to_vec1::<f32>()?, count)
    };
    let params = ParamStore::new(1);
    let device = args.device()?;
    let vb = params.var_builder(DType::F32, &device);
    let enc = ConvEncoder::new(
        &ConvEncoderConfig::new(image, channels, latent),
        vb.pp("enc"),
    )?;
    let dec = ConvDecoder::new(
        &ConvDecoderConfig::new(latent, image, channels),
        vb.pp("dec"),
    )?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
    let loss = ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum))?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-3))?;
    let mut noise = NoiseSource::new(2);
    let batches = n / batch;
    let start = Instant::now();
    let mut last = 0.0;
    for step in 0..steps {
        let first = (step % batches) * batch;
        let rows = images[first * per_image..(first + batch) * per_image].to_vec();
        let xs = Tensor::from_vec(
            rows,
            (batch, image.channels, image.height, image.width),
            &device,
        )?;
        let out = vae.forward_t(&xs, &mut noise, true)?;
        let elbo = loss.forward(&out, &xs)?;
        opt.backward_step(&elbo.loss)?;
        last = f64::from(elbo.loss.to_scalar::<f32>()?) / batch as f64;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"mode\":\"conv\",\"size\":{size},\"batch_size\":{batch},\"steps\":{steps},\"seconds\":{seconds:.3},\"images_per_sec\":{:.1},\"last_loss_per_example\":{last:.3}}}",
        (steps * batch) as f64 / seconds
    ))
}

/// Times `--steps` single training steps at `--batch-size` on uniform noise and prints the
/// minimum, median and 90th percentile: the minimum is the figure least disturbed by other
/// work on a shared machine, for comparing variants during development.
fn steps(args: &Args) -> Result<String> {
    let batch: usize = args.get("batch-size", 128)?;
    let steps: usize = args.get("steps", 200)?;
    let params = ParamStore::new(1);
    let device = args.device()?;
    let vae = mnist_vae(&params, &device)?;
    let loss = ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum))?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-3))?;
    let mut noise = NoiseSource::new(2);
    let data: Vec<Tensor> = (0..8)
        .map(|_| noise.uniform((batch, 784), DType::F32, &device))
        .collect::<candle_core::Result<_>>()?;
    let mut times = Vec::with_capacity(steps);
    for step in 0..steps + 10 {
        let xs = &data[step % data.len()];
        let start = Instant::now();
        let out = vae.forward_t(xs, &mut noise, true)?;
        opt.backward_step(&loss.forward(&out, xs)?.loss)?;
        if step >= 10 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    Ok(format!(
        "{{\"mode\":\"steps\",\"batch_size\":{batch},\"ms_min\":{:.3},\"ms_median\":{:.3},\"ms_p90\":{:.3},\"images_per_sec_median\":{:.1},\"images_per_sec_best\":{:.1}}}",
        at(0.0),
        at(0.5),
        at(0.9),
        batch as f64 / at(0.5) * 1e3,
        batch as f64 / at(0.0) * 1e3
    ))
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    let kernels = if args.flags.contains_key("plain") {
        FusedKernels::NONE
    } else {
        FusedKernels::ALL
    };
    let kernels = kernels.with_conv(kernels.conv && !args.flags.contains_key("no-fused-conv"));
    let line = with_fused_kernels(kernels, || match args.mode.as_str() {
        "train" => train(&args),
        "nll" => nll(&args),
        "conv" => conv(&args),
        "steps" => steps(&args),
        other => bail!("unknown mode {other}: train, nll, conv or steps"),
    })?;
    println!("{line}");
    Ok(())
}
