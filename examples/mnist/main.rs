//! Trains a VAE on MNIST, evaluates its likelihood, and draws what it learned.
//!
//! The defaults are the pytorch/examples VAE: 784-400-20 MLP, Bernoulli (BCE) on
//! grayscale pixels summed over the batch, Adam 1e-3, batch 128, 10 epochs.
//! See README.md beside this file for the commands and what they reach.

#[path = "../common/mod.rs"]
mod common;

use std::any::TypeId;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_vae::Checkpoint;
use candle_vae::data::{
    Binarization, DataLoader, DataLoaderConfig, ImageDataset, Layout, Mnist, Order,
};
use candle_vae::train::{CONFIG_KEY, TEST_STREAM, evaluate};
use candle_vae::viz::{
    self, GridConfig, ScatterConfig, interpolation_latents, manifold_latents, traversal_latents,
};
use candle_vae::{
    Activation, ActiveUnits, ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig,
    Decoder, Dims, EncoderT, FlowEncoder, GaussianMean, ImageShape, Likelihood, MixturePrior,
    MixturePriorConfig, MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, NoiseSource,
    ParamStore, PlanarFlow, PlanarFlowConfig, Prior, Reparameterize, StandardLikelihood, Vae,
    VampPrior, VampPriorConfig,
};
use clap::{Parser, ValueEnum};
use common::{ObjectiveArgs, OptimArgs, PICTURE_STREAM, RunArgs, download};
use serde::{Deserialize, Serialize};

/// Train a variational auto-encoder on MNIST (Kingma & Welling 2013), report its test
/// −ELBO, IWAE bound and importance-sampled log-likelihood, and draw reconstructions,
/// samples, interpolations, traversals and (with --latent 2) the learned manifold.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,

    #[command(flatten)]
    optim: OptimArgs,

    #[command(flatten)]
    objective: ObjectiveArgs,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    fetch: download::FetchArgs,

    /// Evaluate a trained model instead of training: a checkpoint or model file of this
    /// example (its settings are read from the file), or any model-only safetensors file
    /// of the architecture the flags describe (a PyTorch state_dict of pytorch/examples'
    /// VAE). Prints the test −ELBO, the IWAE bound and the NLL at --eval-k.
    #[arg(long, value_name = "PATH", conflicts_with = "sample")]
    eval: Option<PathBuf>,

    /// Draw --n samples from a trained model (a file as for --eval) into
    /// <out>/samples-<n>.png, instead of training.
    #[arg(long, value_name = "PATH")]
    sample: Option<PathBuf>,

    /// How many samples --sample draws.
    #[arg(long, default_value_t = 64)]
    n: usize,
}

/// What a run does.
#[derive(Debug, Clone)]
enum Mode {
    /// Train, evaluate, export.
    Train,
    /// Evaluate the model in the file.
    Eval(PathBuf),
    /// Sample from the model in the file.
    Sample(PathBuf, usize),
}

impl Cli {
    fn mode(&self) -> Mode {
        match (&self.eval, &self.sample) {
            (Some(path), _) => Mode::Eval(path.clone()),
            (None, Some(path)) => Mode::Sample(path.clone(), self.n),
            (None, None) => Mode::Train,
        }
    }
}

/// The model and data flags; stored in the checkpoint so --resume can check them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
struct ModelArgs {
    /// Width of the latent code z.
    #[arg(long, default_value_t = 20)]
    latent: usize,

    /// Hidden layer widths, comma-separated (mlp: e.g. 200,200 for Burda et al.'s
    /// 784-200-200-50); conv: the width of the fully connected layer before the heads.
    #[arg(long, value_delimiter = ',', default_value = "400")]
    hidden: Vec<usize>,

    /// Non-linearity of the hidden layers (Burda et al. 2015 use tanh).
    #[arg(long, value_enum, default_value_t = ActivationArg::Relu)]
    activation: ActivationArg,

    /// How training pixels are binarized: none (grayscale, as pytorch/examples),
    /// threshold (> 0.5), fixed (one seeded Bernoulli draw) or dynamic (a fresh draw every
    /// epoch, Burda et al. 2015). The test set is grayscale, thresholded, or one fixed
    /// Bernoulli draw (seed 2015, whatever --seed) respectively.
    #[arg(long, value_enum, default_value_t = BinarizeArg::None)]
    binarize: BinarizeArg,

    /// Observation model p(x|z).
    #[arg(long, value_enum, default_value_t = LikelihoodArg::Bernoulli)]
    likelihood: LikelihoodArg,

    /// Encoder and decoder: fully connected, or 4×4 stride-2 convolutions (32, 64 channels).
    #[arg(long, value_enum, default_value_t = Arch::Mlp)]
    arch: Arch,

    /// The prior p(z): standard normal, a learned mixture of --components Gaussians, or
    /// the VampPrior over --components learned pseudo-inputs (Tomczak & Welling 2018).
    /// Learned priors need --arch mlp.
    #[arg(long, value_enum, default_value_t = PriorArg::Standard)]
    prior: PriorArg,

    /// Components K of a mixture or VampPrior (500 in Tomczak & Welling 2018).
    #[arg(long, default_value_t = 500)]
    components: usize,

    /// Planar-flow steps on top of the Gaussian posterior (0: none; Rezende & Mohamed
    /// 2015). Needs --arch mlp.
    #[arg(long, default_value_t = 0)]
    flow: usize,
}

/// Everything that defines a run's numbers, stored in the checkpoint so that --resume
/// refuses a checkpoint of another run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunConfig {
    model: ModelArgs,
    objective: ObjectiveArgs,
    optim: OptimArgs,
    batch_size: usize,
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum ActivationArg {
    Relu,
    Tanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum BinarizeArg {
    None,
    Threshold,
    Fixed,
    Dynamic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum LikelihoodArg {
    /// Bernoulli with logits (binary cross-entropy).
    Bernoulli,
    /// Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), for grayscale pixels.
    ContinuousBernoulli,
    /// Gaussian with a sigmoid mean and one learned variance.
    Gaussian,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum PriorArg {
    /// N(0, I).
    Standard,
    /// A learned mixture of Gaussians.
    Mog,
    /// The VampPrior.
    Vamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum Arch {
    Mlp,
    Conv,
}

/// Seed of the fixed Bernoulli draw of the test set, the same for every run so that
/// test likelihoods of different runs are comparable.
const TEST_BINARIZATION_SEED: u64 = 2015;
/// The example's name: its default output directory is `runs/mnist`.
const EXAMPLE: &str = "mnist";
/// Test batches: examples per batch of the evaluation passes.
const TEST_BATCH: usize = 100;
/// Posterior samples per pass of the final evaluation: 20 × a test batch of 100 keeps
/// each pass's buffers (6 MB of logits for 784 pixels) under the size from which glibc
/// maps fresh pages for every allocation; at 100 samples per pass the Burda et al. model's
/// K = 5000 evaluation spent ~150 s of its ~14 min in page faults. The estimates do not
/// depend on it (the samples are drawn in the same order).
const EVAL_CHUNK: usize = 20;

/// Metadata key of the model settings in the example's model file.
const MODEL_KEY: &str = "mnist.model";

/// The model settings stored in `path` by this example (in a model file, or in a training
/// checkpoint's run settings), if any.
fn stored_model_args(path: &Path) -> Result<Option<ModelArgs>> {
    let file = Checkpoint::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    if file.metadata(MODEL_KEY).is_some() {
        return Ok(Some(file.json(MODEL_KEY)?));
    }
    if file.metadata(CONFIG_KEY).is_some() {
        let run: RunConfig = file.json(CONFIG_KEY)?;
        return Ok(Some(run.model));
    }
    Ok(None)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let model = match cli.mode() {
        Mode::Train => cli.model.clone(),
        Mode::Eval(path) | Mode::Sample(path, _) => match stored_model_args(&path)? {
            Some(stored) => {
                println!("model settings from {}: {stored:?}", path.display());
                stored
            }
            None => {
                println!(
                    "{} carries no settings of this example: the flags describe the model",
                    path.display()
                );
                cli.model.clone()
            }
        },
    };

    let device = cli.run.device()?;
    // --data, $CANDLE_VAE_DATA/mnist, ./data/mnist, else the download cache (fetched
    // there unless --offline).
    let dir = download::locate_or_fetch(
        cli.run.data.as_deref(),
        &candle_vae::data::mnist::FILES,
        &download::MNIST,
        &cli.fetch,
    )?;
    let mnist =
        Mnist::load(&dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    println!(
        "MNIST from {}: {} train, {} test images; device {:?}",
        dir.display(),
        mnist.train.len(),
        mnist.test.len(),
        device
    );
    let out = cli.run.out_dir(EXAMPLE);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let params = ParamStore::new(cli.run.seed);
    let vb = params.var_builder(DType::F32, &device);
    let likelihood = match model.likelihood {
        LikelihoodArg::Bernoulli => StandardLikelihood::Bernoulli,
        LikelihoodArg::ContinuousBernoulli => StandardLikelihood::ContinuousBernoulli,
        LikelihoodArg::Gaussian => {
            // Start at σ = 0.1, a pixel-level noise scale.
            StandardLikelihood::gaussian_shared(
                GaussianMean::Sigmoid,
                (0.01f64).ln(),
                vb.pp("likelihood"),
            )?
        }
    };
    let activation = match model.activation {
        ActivationArg::Relu => Activation::Relu,
        ActivationArg::Tanh => Activation::Tanh,
    };
    let image = ImageShape::new(1, 28, 28);
    match model.arch {
        Arch::Mlp => {
            // Built on the root, so the tensors carry PyTorch's names (fc1, fc21, fc22, fc3,
            // fc4 for one hidden layer): a pytorch/examples state_dict saved as
            // safetensors loads as is.
            let encoder = MlpEncoder::new(
                &MlpEncoderConfig::new(784, &model.hidden, model.latent)
                    .with_activation(activation),
                vb.clone(),
            )?;
            let mut widths = model.hidden.clone();
            widths.reverse();
            let decoder = MlpDecoder::new(
                &MlpDecoderConfig::new(model.latent, &widths, 784).with_activation(activation),
                vb.clone(),
            )?;
            let prior_vb = vb.pp("prior");
            match model.flow {
                0 => with_prior(
                    &cli, &model, encoder, decoder, likelihood, prior_vb, &params, &mnist, device,
                ),
                steps => {
                    let flow = PlanarFlow::new(
                        &PlanarFlowConfig::new(model.latent, steps),
                        vb.pp("flow"),
                    )?;
                    let encoder = FlowEncoder::new(encoder, flow);
                    with_prior(
                        &cli, &model, encoder, decoder, likelihood, prior_vb, &params, &mnist,
                        device,
                    )
                }
            }
        }
        Arch::Conv => {
            if model.prior != PriorArg::Standard || model.flow > 0 {
                anyhow::bail!("--prior mog|vamp and --flow need --arch mlp");
            }
            let channels = [32, 64];
            let hidden = model.hidden.first().copied().unwrap_or(256);
            let encoder = ConvEncoder::new(
                &ConvEncoderConfig::new(image, &channels, model.latent)
                    .with_hidden(hidden)
                    .with_activation(activation),
                vb.pp("encoder"),
            )?;
            let decoder = ConvDecoder::new(
                &ConvDecoderConfig::new(model.latent, image, &channels)
                    .with_hidden(hidden)
                    .with_activation(activation),
                vb.pp("decoder"),
            )?;
            let vae = Vae::new(encoder, decoder, likelihood)?;
            run(&cli, &model, &vae, &params, &mnist, Layout::Image, device)
        }
    }
}

/// Composes the VAE with the prior of `--prior` and runs it.
#[allow(clippy::too_many_arguments)]
fn with_prior<E>(
    cli: &Cli,
    model: &ModelArgs,
    encoder: E,
    decoder: MlpDecoder,
    likelihood: StandardLikelihood,
    vb: VarBuilder,
    params: &ParamStore,
    mnist: &Mnist,
    device: Device,
) -> Result<()>
where
    E: EncoderT + Dims + Clone + 'static,
{
    let vae = Vae::new(encoder, decoder, likelihood)?;
    match model.prior {
        PriorArg::Standard => run(cli, model, &vae, params, mnist, Layout::Flat, device),
        PriorArg::Mog => {
            let prior =
                MixturePrior::new(&MixturePriorConfig::new(model.components, model.latent), vb)?;
            let vae = vae.with_prior(prior)?;
            run(cli, model, &vae, params, mnist, Layout::Flat, device)
        }
        PriorArg::Vamp => {
            let config = VampPriorConfig::new(model.components, &vae.encoder().data_shape());
            let prior = VampPrior::new(vae.encoder().clone(), &config, vb)?;
            let vae = vae.with_prior(prior)?;
            run(cli, model, &vae, params, mnist, Layout::Flat, device)
        }
    }
}

fn run<E: EncoderT + Dims, D: Decoder + Dims, P: Prior>(
    cli: &Cli,
    model: &ModelArgs,
    vae: &Vae<E, D, StandardLikelihood, P>,
    params: &ParamStore,
    mnist: &Mnist,
    layout: Layout,
    device: Device,
) -> Result<()> {
    let (train_bin, test_bin) = match model.binarize {
        BinarizeArg::None => (Binarization::None, Binarization::None),
        BinarizeArg::Threshold => (Binarization::Threshold(0.5), Binarization::Threshold(0.5)),
        BinarizeArg::Fixed => (
            Binarization::Fixed { seed: cli.run.seed },
            Binarization::Fixed {
                seed: TEST_BINARIZATION_SEED,
            },
        ),
        BinarizeArg::Dynamic => (
            Binarization::Dynamic,
            Binarization::Fixed {
                seed: TEST_BINARIZATION_SEED,
            },
        ),
    };
    let train = DataLoader::new(
        mnist.train.clone(),
        DataLoaderConfig::new(cli.run.batch_size)
            .with_binarization(train_bin)
            .with_layout(layout),
    )?;
    let test = DataLoader::new(
        mnist.test.clone(),
        DataLoaderConfig::new(TEST_BATCH)
            .with_order(Order::Sequential)
            .with_binarization(test_bin)
            .with_layout(layout),
    )?;
    let analytic = vae.prior().has_analytic_kl(TypeId::of::<E::Posterior>());
    let kl = cli.objective.kl_estimator(analytic)?;
    println!(
        "prior: {:?}{}; posterior: diagonal Gaussian{}; KL: {kl:?}",
        model.prior,
        if model.prior == PriorArg::Standard {
            String::new()
        } else {
            format!(", K = {}", model.components)
        },
        if model.flow > 0 {
            format!(" + {} planar steps", model.flow)
        } else {
            String::new()
        },
    );
    println!(
        "model: {:?} {} → {} → {}, {} likelihood, {} parameters; objective: {}",
        model.arch,
        784,
        model
            .hidden
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join("-"),
        model.latent,
        vae.likelihood().name(),
        params.num_parameters(),
        cli.objective.describe(),
    );
    let out = cli.run.out_dir(EXAMPLE);
    match cli.mode() {
        Mode::Train => {}
        Mode::Eval(path) => {
            restore(&path, params, &device)?;
            let mut noise = NoiseSource::new(cli.run.seed).substream(TEST_STREAM);
            let eval = evaluate(vae, &test, &mut noise, &device, |_| {})?;
            println!(
                "test ({} images): -ELBO {:.4} = reconstruction {:.4} + KL {:.4}; {} active units",
                eval.examples,
                eval.neg_elbo,
                eval.reconstruction,
                eval.kl,
                eval.active_units.count()
            );
            if cli.run.eval_k > 0 {
                common::evaluate_model(
                    vae,
                    &test,
                    cli.run.seed,
                    cli.run.eval_k,
                    cli.objective.bound_k(),
                    EVAL_CHUNK,
                    &device,
                )?;
            }
            return Ok(());
        }
        Mode::Sample(path, n) => {
            restore(&path, params, &device)?;
            let mut noise = NoiseSource::new(cli.run.seed).substream(PICTURE_STREAM);
            let samples = vae.sample(n, DType::F32, &device, &mut noise)?;
            let columns = (n as f64).sqrt().ceil() as usize;
            let file = out.join(format!("samples-{n}.png"));
            viz::save_grid(&file, &samples, shape(), &GridConfig::new(columns.max(1)))?;
            println!("{n} samples: {}", file.display());
            return Ok(());
        }
    }
    let config = RunConfig {
        model: model.clone(),
        objective: cli.objective.clone(),
        optim: cli.optim.clone(),
        batch_size: cli.run.batch_size,
        seed: cli.run.seed,
    };
    let objective = cli.objective.objective(kl)?;
    let mut trainer = common::trainer(
        vae, params, &cli.optim, objective, train, test, &cli.run, EXAMPLE, &config,
    )?;
    let checkpoint = cli.run.checkpoint(EXAMPLE);
    let test_set = trainer.test_data().dataset().clone();
    common::fit(&mut trainer, |vae, _| {
        epoch_pictures(vae, &test_set, layout, cli.run.seed, &out, &device)
    })?;
    println!("checkpoint: {}", checkpoint.display());
    common::save_training_curve(&out.join("curve.png"), &trainer.state().history)?;

    // The weights alone (PyTorch's strict load_state_dict takes them for the default
    // architecture) with this example's model settings, for --eval and --sample.
    let model_file = out.join("model.safetensors");
    let mut export = Checkpoint::from_params(params)?;
    export.set_json(MODEL_KEY, model)?;
    export.save(&model_file)?;
    println!("model only: {}", model_file.display());

    final_pictures(vae, &test_set, layout, cli.run.seed, &out, &device)?;
    println!("pictures, history.csv and curve.png: {}", out.display());
    if cli.run.eval_k > 0 {
        common::final_evaluation(
            &trainer,
            cli.run.eval_k,
            cli.objective.bound_k(),
            EVAL_CHUNK,
        )?;
    }
    Ok(())
}

/// Loads the weights of `path` into `params`, strictly: every tensor of the model must be
/// in the file and every tensor of the file (optimiser state aside) in the model.
fn restore(path: &Path, params: &ParamStore, device: &Device) -> Result<()> {
    Checkpoint::load(path, device)?
        .restore(params)
        .with_context(|| format!("loading the weights of {}", path.display()))?;
    println!("weights: {}", path.display());
    Ok(())
}

fn shape() -> ImageShape {
    ImageShape::new(1, 28, 28)
}

fn first_indices(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Reconstructions of the first 30 test digits and 100 prior samples, rewritten every
/// epoch.
fn epoch_pictures<E: EncoderT + Dims, D: Decoder + Dims, P: Prior>(
    vae: &Vae<E, D, StandardLikelihood, P>,
    test: &ImageDataset,
    layout: Layout,
    seed: u64,
    out: &Path,
    device: &Device,
) -> Result<()> {
    let xs = test.to_tensor(&first_indices(30), layout, DType::F32, device)?;
    let recon = vae.reconstruct(&xs)?;
    viz::reconstruction_grid(&xs, &recon, shape(), &GridConfig::new(10).with_scale(2))?
        .save_png(out.join("reconstructions.png"))?;
    let mut noise = NoiseSource::new(seed).substream(PICTURE_STREAM);
    let samples = vae.sample(100, DType::F32, device, &mut noise)?;
    viz::save_grid(
        out.join("samples.png"),
        &samples,
        shape(),
        &GridConfig::new(10),
    )?;
    Ok(())
}

/// The end-of-run pictures: those of [`epoch_pictures`], interpolations, traversals of
/// the most active dimensions and, for a 2-D latent space, the manifold and the scatter
/// of posterior means.
fn final_pictures<E: EncoderT + Dims, D: Decoder + Dims, P: Prior>(
    vae: &Vae<E, D, StandardLikelihood, P>,
    test: &ImageDataset,
    layout: Layout,
    seed: u64,
    out: &Path,
    device: &Device,
) -> Result<()> {
    epoch_pictures(vae, test, layout, seed, out, device)?;

    // Posterior means of the whole test set: activity per dimension, scatter.
    let mut means = Vec::new();
    for start in (0..test.len()).step_by(TEST_BATCH) {
        let idx: Vec<usize> = (start..(start + TEST_BATCH).min(test.len())).collect();
        let xs = test.to_tensor(&idx, layout, DType::F32, device)?;
        means.push(vae.encode(&xs)?.location()?.detach());
    }
    let all_means = Tensor::cat(&means, 0)?;
    let activity = ActiveUnits::from_means(means, ActiveUnits::BURDA_THRESHOLD)?;

    // Interpolations between 8 pairs of test digits (indices 0..8 and 8..16).
    let from = all_means.narrow(0, 0, 8)?;
    let to = all_means.narrow(0, 8, 8)?;
    let lines = interpolation_latents(&from, &to, 10)?;
    viz::save_grid(
        out.join("interpolation.png"),
        &vae.generate(&lines)?,
        shape(),
        &GridConfig::new(10),
    )?;

    // Traversals of up to 10 dimensions, most active first, from the first digit's code.
    let mut dims: Vec<usize> = (0..vae.latent_dim()).collect();
    dims.sort_by(|&a, &b| activity.variances[b].total_cmp(&activity.variances[a]));
    dims.truncate(10);
    let values: Vec<f64> = (0..11).map(|i| -3.0 + 0.6 * i as f64).collect();
    let base = all_means.narrow(0, 0, 1)?;
    let walks = traversal_latents(&base, &dims, &values)?;
    viz::save_grid(
        out.join("traversal.png"),
        &vae.generate(&walks)?,
        shape(),
        &GridConfig::new(values.len()),
    )?;

    if vae.latent_dim() == 2 {
        let z = manifold_latents(20, DType::F32, device)?;
        viz::save_grid(
            out.join("manifold.png"),
            &vae.generate(&z)?,
            shape(),
            &GridConfig::new(20).with_padding(0, 1.0),
        )?;
        viz::scatter(&all_means, test.labels(), &ScatterConfig::default())?
            .save_png(out.join("scatter.png"))?;
    }
    Ok(())
}
