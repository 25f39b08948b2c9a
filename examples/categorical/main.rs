//! A categorical VAE (Jang et al. 2017) on dynamically binarised MNIST: 30 categorical
//! variables of 10 classes, Gumbel-softmax (relaxed or straight-through), against the
//! Gaussian VAE with the same MLPs. See README.md beside this file.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{D, DType, Device, Tensor};
use candle_vae::data::{Binarization, DataLoader, DataLoaderConfig, Layout, Mnist, Order};
use candle_vae::viz::{self, GridConfig};
use candle_vae::{
    Adam, AdamConfig, CategoricalEncoder, CategoricalEncoderConfig, Dims, ElboLossConfig, EncoderT,
    GumbelEstimator, ImageShape, Likelihood, MlpDecoder, MlpDecoderConfig, MlpEncoder,
    MlpEncoderConfig, NoiseSource, ParamStore, Prior, RelaxedCategorical, Reparameterize,
    StandardLikelihood, TemperatureSchedule, UniformCategorical, Vae, parse_device,
};
use clap::{Parser, ValueEnum};
use indicatif::ProgressBar;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PosteriorArg {
    /// Gumbel-softmax samples y = softmax((ℓ + g)/τ).
    Relaxed,
    /// One-hot samples with the relaxed gradient.
    StraightThrough,
    /// A diagonal Gaussian of --gaussian-latent dimensions, the same MLPs.
    Gaussian,
}

/// Train a categorical (or Gaussian) VAE on dynamically binarised MNIST and report the test −ELBO.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The posterior family.
    #[arg(long, value_enum, default_value_t = PosteriorArg::Relaxed)]
    posterior: PosteriorArg,
    /// M, categorical variables.
    #[arg(long, default_value_t = 30)]
    groups: usize,
    /// C, classes of each.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Latent width of the Gaussian VAE.
    #[arg(long, default_value_t = 30)]
    gaussian_latent: usize,
    /// Hidden widths of the encoder (the decoder mirrors them).
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    hidden: Vec<usize>,
    /// τ₀ of the temperature schedule.
    #[arg(long, default_value_t = 1.0)]
    tau: f64,
    /// τ_min.
    #[arg(long, default_value_t = 0.5)]
    tau_min: f64,
    /// r of τ = max(τ_min, τ₀ exp(−r t)).
    #[arg(long, default_value_t = 1e-4)]
    anneal_rate: f64,
    /// Steps between temperature updates.
    #[arg(long, default_value_t = 500)]
    anneal_every: usize,
    /// Epochs.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The data directory (else $CANDLE_VAE_DATA/mnist, else ./data/mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to write the history and pictures.
    #[arg(long, default_value = "runs/categorical")]
    out: PathBuf,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The test binarisation's seed (fixed, so every run sees the same test set).
const TEST_SEED: u64 = 0x7e57;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let device = parse_device(&cli.device)?;
    let dir = Mnist::locate(cli.data.as_deref())?;
    let mnist = Mnist::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
    fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let train = DataLoader::new(
        mnist.train.clone(),
        DataLoaderConfig::new(cli.batch_size).with_binarization(Binarization::Dynamic),
    )?;
    let test = DataLoader::new(
        mnist.test.clone(),
        DataLoaderConfig::new(1000)
            .with_order(Order::Sequential)
            .with_binarization(Binarization::Fixed { seed: TEST_SEED }),
    )?;
    let params = ParamStore::new(cli.seed);
    let vb = params.var_builder(DType::F32, &device);
    let mut decoder_hidden = cli.hidden.clone();
    decoder_hidden.reverse();
    println!(
        "MNIST from {}, dynamically binarised (test: fixed, seed {TEST_SEED}); {:?} posterior; MLP 784-{}",
        dir.display(),
        cli.posterior,
        cli.hidden
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join("-")
    );
    match cli.posterior {
        PosteriorArg::Gaussian => {
            let enc = MlpEncoder::new(
                &MlpEncoderConfig::new(784, &cli.hidden, cli.gaussian_latent),
                vb.pp("enc"),
            )?;
            let dec = MlpDecoder::new(
                &MlpDecoderConfig::new(cli.gaussian_latent, &decoder_hidden, 784),
                vb.pp("dec"),
            )?;
            let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
            run(
                &cli,
                &vae,
                &params,
                &train,
                &test,
                &device,
                |_| Ok(()),
                |vae, xs, noise| {
                    let loss = vae.elbo_loss(ElboLossConfig::default())?;
                    Ok(loss
                        .forward(&vae.forward_t(xs, noise, false)?, xs)?
                        .per_example)
                },
            )
        }
        PosteriorArg::Relaxed | PosteriorArg::StraightThrough => {
            let estimator = if cli.posterior == PosteriorArg::Relaxed {
                GumbelEstimator::Relaxed
            } else {
                GumbelEstimator::StraightThrough
            };
            let schedule = TemperatureSchedule {
                initial: cli.tau,
                minimum: cli.tau_min,
                rate: cli.anneal_rate,
                every: cli.anneal_every,
            };
            schedule.validate()?;
            let (m, c) = (cli.groups, cli.classes);
            let enc = CategoricalEncoder::new(
                &CategoricalEncoderConfig::new(784, &cli.hidden, m, c)
                    .with_temperature(cli.tau)
                    .with_estimator(estimator),
                vb.pp("enc"),
            )?;
            let dec = MlpDecoder::new(
                &MlpDecoderConfig::new(m * c, &decoder_hidden, 784),
                vb.pp("dec"),
            )?;
            let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?
                .with_prior(UniformCategorical::new(m, c)?)?;
            run(
                &cli,
                &vae,
                &params,
                &train,
                &test,
                &device,
                |step| Ok(vae.encoder().set_temperature(schedule.temperature(step))?),
                // The discrete bound: z a one-hot draw from Categorical(π) (the
                // straight-through value), KL(Categorical(π) ‖ Uniform) in closed form.
                |vae, xs, noise| {
                    let enc = vae.encoder();
                    let q = RelaxedCategorical::new(
                        enc.logits(xs)?,
                        m,
                        c,
                        enc.temperature(),
                        GumbelEstimator::StraightThrough,
                    )?;
                    let z = q.rsample(noise)?;
                    let rec = vae.likelihood().log_prob(xs, &vae.decode(&z)?)?;
                    Ok((q.kl_uniform_per_dim()?.sum(D::Minus1)? - rec)?)
                },
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run<E: EncoderT + Dims, P: Prior>(
    cli: &Cli,
    vae: &Vae<E, MlpDecoder, StandardLikelihood, P>,
    params: &ParamStore,
    train: &DataLoader,
    test: &DataLoader,
    device: &Device,
    before_step: impl Fn(usize) -> Result<()>,
    neg_elbo: impl Fn(
        &Vae<E, MlpDecoder, StandardLikelihood, P>,
        &Tensor,
        &mut NoiseSource,
    ) -> Result<Tensor>,
) -> Result<()>
where
    E::Posterior: Reparameterize,
{
    let loss = vae.elbo_loss(ElboLossConfig::default())?;
    let mut opt = Adam::from_store(params, AdamConfig::new(cli.lr))?;
    let mut data_noise = NoiseSource::new(cli.seed).substream(1);
    let mut model_noise = NoiseSource::new(cli.seed).substream(2);
    let mut history = String::from("epoch,train_loss,train_kl,test_neg_elbo,seconds\n");
    println!("epoch | train −ELBO | train KL | test −ELBO | s");
    let start = Instant::now();
    let mut step = 0;
    for epoch in 1..=cli.epochs {
        let bar = ProgressBar::new(train.batches() as u64);
        let (mut sum, mut kl_sum, mut n) = (0.0, 0.0, 0usize);
        for batch in train.epoch(&mut data_noise, device) {
            let xs = batch?.images;
            before_step(step)?;
            let elbo = loss.forward(&vae.forward_t(&xs, &mut model_noise, true)?, &xs)?;
            opt.backward_step(&elbo.loss)?;
            let b = xs.dim(0)?;
            sum += elbo.loss.to_scalar::<f32>()? as f64 * b as f64;
            kl_sum += elbo.kl.to_scalar::<f32>()? as f64 * b as f64;
            n += b;
            step += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut eval_noise = NoiseSource::new(cli.seed).substream(3);
        let (mut test_sum, mut test_n) = (0.0, 0usize);
        for batch in test.epoch(&mut NoiseSource::new(0), device) {
            let xs = batch?.images;
            let per = neg_elbo(vae, &xs, &mut eval_noise)?;
            test_sum += per.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            test_n += xs.dim(0)?;
        }
        let test_elbo = test_sum / test_n as f64;
        println!(
            "{epoch:>5} | {:>11.2} | {:>8.2} | {:>10.2} | {:.0}",
            sum / n as f64,
            kl_sum / n as f64,
            test_elbo,
            start.elapsed().as_secs_f64()
        );
        history.push_str(&format!(
            "{epoch},{},{},{test_elbo},{:.1}\n",
            sum / n as f64,
            kl_sum / n as f64,
            start.elapsed().as_secs_f64()
        ));
        fs::write(cli.out.join("history.csv"), &history)?;
    }
    let idx: Vec<usize> = (0..30).collect();
    let xs = test
        .dataset()
        .binarized(Binarization::Fixed { seed: TEST_SEED })?
        .to_tensor(&idx, Layout::Flat, DType::F32, device)?;
    let shape = ImageShape::new(1, 28, 28);
    viz::reconstruction_grid(
        &xs,
        &vae.reconstruct(&xs)?,
        shape,
        &GridConfig::new(10).with_scale(2),
    )?
    .save_png(cli.out.join("reconstructions.png"))?;
    let samples = vae.sample(
        100,
        DType::F32,
        device,
        &mut NoiseSource::new(cli.seed).substream(4),
    )?;
    viz::image_grid(&samples, shape, &GridConfig::new(10))?
        .save_png(cli.out.join("samples.png"))?;
    println!("wrote {}", cli.out.display());
    Ok(())
}
