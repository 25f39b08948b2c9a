//! Trains a convolutional VQ-VAE (van den Oord et al. 2017) on MNIST or the Olivetti
//! faces, with the gradient or the EMA codebook, and reports the test reconstruction
//! error, codebook usage and perplexity per epoch. See README.md beside this file.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_vae::data::{
    DataLoader, DataLoaderConfig, ImageDataset, Layout, Mnist, Olivetti, Order,
};
use candle_vae::discrete::perplexity;
use candle_vae::viz::{self, GridConfig};
use candle_vae::{
    Adam, AdamConfig, Checkpoint, CodebookUpdate, DeadCodes, ImageShape, NoiseSource, ParamStore,
    StandardLikelihood, VectorQuantizer, VectorQuantizerConfig, VqConvConfig, VqDecoder, VqEncoder,
    VqVae, parse_device,
};
use clap::{Parser, ValueEnum};
use indicatif::ProgressBar;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatasetArg {
    /// MNIST, 28 × 28 (grayscale pixels, Bernoulli likelihood).
    Mnist,
    /// Olivetti faces, 64 × 64 (320 train, 80 test images).
    Olivetti,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CodebookArg {
    /// The codebook loss ‖sg(z_e) − e‖², by gradient descent.
    Gradient,
    /// Exponential moving averages (Razavi et al. 2019), γ = --decay.
    Ema,
}

/// Train a convolutional VQ-VAE and draw its reconstructions and what each code decodes to.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The dataset.
    #[arg(long, value_enum, default_value_t = DatasetArg::Mnist)]
    dataset: DatasetArg,
    /// The data directory (else $CANDLE_VAE_DATA/<dataset>, else ./data/<dataset>).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to write the pictures, history and model.
    #[arg(long, default_value = "runs/vqvae")]
    out: PathBuf,
    /// Epochs.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Training images used (the first N of the training set; 0 for all).
    #[arg(long, default_value_t = 20_000)]
    train_size: usize,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// K, codes in the codebook.
    #[arg(long, default_value_t = 64)]
    codes: usize,
    /// D, the width of each code.
    #[arg(long, default_value_t = 16)]
    dim: usize,
    /// Channels of the stride-2 stages (the latent grid is the image side / 2^stages).
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    channels: Vec<usize>,
    /// How the codebook learns.
    #[arg(long, value_enum, default_value_t = CodebookArg::Ema)]
    codebook: CodebookArg,
    /// γ of the EMA codebook.
    #[arg(long, default_value_t = 0.99)]
    decay: f64,
    /// β, the weight of the commitment loss.
    #[arg(long, default_value_t = 0.25)]
    beta: f64,
    /// Restart codes unused for this many steps (0: never).
    #[arg(long, default_value_t = 0)]
    restart_after: usize,
    /// Seed of the parameters, the batch order and the restarts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
}

struct Data {
    train: ImageDataset,
    test: ImageDataset,
    shape: ImageShape,
}

fn load(cli: &Cli) -> Result<Data> {
    match cli.dataset {
        DatasetArg::Mnist => {
            let dir = Mnist::locate(cli.data.as_deref())?;
            let mnist = Mnist::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
            let train = if cli.train_size > 0 {
                mnist.train.take(cli.train_size)
            } else {
                mnist.train
            };
            Ok(Data {
                train,
                test: mnist.test,
                shape: ImageShape::new(1, 28, 28),
            })
        }
        DatasetArg::Olivetti => {
            let dir = Olivetti::locate(cli.data.as_deref())?;
            let faces =
                Olivetti::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
            Ok(Data {
                train: faces.train,
                test: faces.test,
                shape: ImageShape::new(1, 64, 64),
            })
        }
    }
}

/// Test reconstruction error (nats per image, Bernoulli), mean squared error per pixel of
/// E[x|z_q], and the codebook counts over the whole test set.
fn evaluate(
    vae: &VqVae<VqEncoder, VqDecoder, StandardLikelihood>,
    test: &DataLoader,
    device: &Device,
) -> Result<(f64, f64, Vec<u32>)> {
    let mut noise = NoiseSource::new(0);
    let (mut rec, mut se, mut n, mut pixels) = (0.0, 0.0, 0usize, 0usize);
    let mut counts = vec![0u32; vae.quantizer().config().codes];
    for batch in test.epoch(&mut noise, device) {
        let xs = batch?.images;
        let out = vae.forward_t(&xs, false)?;
        let loss = out.loss(&xs)?;
        let b = xs.dim(0)?;
        rec += loss.reconstruction.to_scalar::<f32>()? as f64 * b as f64;
        se += (out.mean()? - &xs)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        n += b;
        pixels += xs.elem_count();
        for (c, q) in counts.iter_mut().zip(&out.quantized.counts) {
            *c += q;
        }
    }
    Ok((rec / n as f64, se / pixels as f64, counts))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let device = parse_device(&cli.device)?;
    let data = load(&cli)?;
    println!(
        "{:?}: {} train, {} test images of {}×{}; device {device:?}",
        cli.dataset,
        data.train.len(),
        data.test.len(),
        data.shape.height,
        data.shape.width
    );
    fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;

    let params = ParamStore::new(cli.seed);
    let vb = params.var_builder(DType::F32, &device);
    let conv = VqConvConfig::new(data.shape, &cli.channels, cli.dim);
    let update = match cli.codebook {
        CodebookArg::Gradient => CodebookUpdate::Gradient,
        CodebookArg::Ema => CodebookUpdate::Ema {
            decay: cli.decay,
            epsilon: 1e-5,
        },
    };
    let dead = if cli.restart_after > 0 {
        DeadCodes::Restart {
            after_steps: cli.restart_after,
        }
    } else {
        DeadCodes::Keep
    };
    let vq_config = VectorQuantizerConfig::new(cli.codes, cli.dim)
        .with_beta(cli.beta)
        .with_update(update)
        .with_dead_codes(dead);
    let vae = VqVae::new(
        VqEncoder::new(&conv, vb.pp("enc"))?,
        VectorQuantizer::new(&vq_config, vb.pp("vq"))?,
        VqDecoder::new(&conv, vb.pp("dec"))?,
        StandardLikelihood::Bernoulli,
    );
    let (gh, gw) = conv.grid();
    println!(
        "model: conv {:?} → {gh}×{gw} grid of D = {} → K = {} codes ({:?}, β = {}, dead codes {:?}); {} parameters",
        cli.channels,
        cli.dim,
        cli.codes,
        update,
        cli.beta,
        dead,
        params.num_parameters()
    );

    let train = DataLoader::new(
        data.train.clone(),
        DataLoaderConfig::new(cli.batch_size).with_layout(Layout::Image),
    )?;
    let test = DataLoader::new(
        data.test.clone(),
        DataLoaderConfig::new(500)
            .with_order(Order::Sequential)
            .with_layout(Layout::Image),
    )?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(cli.lr))?;
    let mut data_noise = NoiseSource::new(cli.seed).substream(1);
    let mut model_noise = NoiseSource::new(cli.seed).substream(2);
    let mut history = String::from(
        "epoch,train_loss,train_rec,test_rec,test_mse,train_usage,train_perplexity,test_usage,test_perplexity,seconds\n",
    );
    println!(
        "epoch | train loss | train rec | test rec (nats) | test mse | usage train/test | perplexity train/test | s"
    );
    let start = Instant::now();
    for epoch in 1..=cli.epochs {
        let bar = ProgressBar::new(train.batches() as u64);
        let (mut loss_sum, mut rec_sum, mut n) = (0.0, 0.0, 0usize);
        let mut counts = vec![0u32; cli.codes];
        for batch in train.epoch(&mut data_noise, &device) {
            let xs = batch?.images;
            let out = vae.forward_t(&xs, true)?;
            let loss = out.loss(&xs)?;
            opt.backward_step(&loss.loss)?;
            vae.update(&out, &mut model_noise)?;
            let b = xs.dim(0)?;
            loss_sum += loss.loss.to_scalar::<f32>()? as f64 * b as f64;
            rec_sum += loss.reconstruction.to_scalar::<f32>()? as f64 * b as f64;
            n += b;
            for (c, q) in counts.iter_mut().zip(&out.quantized.counts) {
                *c += q;
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let (rec, mse, test_counts) = evaluate(&vae, &test, &device)?;
        let used = |c: &[u32]| c.iter().filter(|&&x| x > 0).count();
        let line = format!(
            "{epoch:>5} | {:>10.3} | {:>9.3} | {:>15.3} | {:>8.5} | {:>7}/{:<8} | {:>10.2}/{:<10.2} | {:.0}",
            loss_sum / n as f64,
            rec_sum / n as f64,
            rec,
            mse,
            used(&counts),
            used(&test_counts),
            perplexity(&counts),
            perplexity(&test_counts),
            start.elapsed().as_secs_f64()
        );
        println!("{line}");
        history.push_str(&format!(
            "{epoch},{},{},{rec},{mse},{},{},{},{},{:.1}\n",
            loss_sum / n as f64,
            rec_sum / n as f64,
            used(&counts),
            perplexity(&counts),
            used(&test_counts),
            perplexity(&test_counts),
            start.elapsed().as_secs_f64()
        ));
        fs::write(cli.out.join("history.csv"), &history)?;
    }

    // Pictures: test reconstructions, and what each code decodes to (every position of
    // the grid set to that code).
    let idx: Vec<usize> = (0..30.min(data.test.len())).collect();
    let xs = data
        .test
        .to_tensor(&idx, Layout::Image, DType::F32, &device)?;
    let scale = if data.shape.height < 40 { 2 } else { 1 };
    viz::reconstruction_grid(
        &xs,
        &vae.reconstruct(&xs)?,
        data.shape,
        &GridConfig::new(10).with_scale(scale),
    )?
    .save_png(cli.out.join("reconstructions.png"))?;
    let codes: Vec<u32> = (0..cli.codes as u32)
        .flat_map(|k| std::iter::repeat_n(k, gh * gw))
        .collect();
    let codes = Tensor::from_vec(codes, (cli.codes, gh, gw), &device)?;
    viz::image_grid(
        &vae.decode_codes(&codes)?,
        data.shape,
        &GridConfig::new(16).with_scale(scale),
    )?
    .save_png(cli.out.join("codes.png"))?;
    Checkpoint::from_params(&params)?.save(cli.out.join("model.safetensors"))?;
    println!("wrote {}", cli.out.display());
    Ok(())
}
