//! Trains VAEs on faces and draws what they learned.
//!
//! * `--dataset frey`: Frey Face with the model of Kingma & Welling (2013): a 560-200-D
//!   tanh MLP encoder, a D-200-560 tanh MLP decoder and a Gaussian p(x|z) with a sigmoid
//!   mean and a learned log-variance per pixel. With `--latent 2`, the learned manifold
//!   of their Fig. 4(a).
//! * `--dataset olivetti`: the 64×64 Olivetti faces with strided convolutions down to 4×4
//!   and back, a continuous-Bernoulli p(x|z), KL warm-up; `--conditional` conditions on
//!   the person (a CVAE).
//!
//! See README.md beside this file for the commands and what they reach.

#[path = "../common/mod.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_vae::data::{DataLoader, DataLoaderConfig, FreyFace, ImageDataset, Layout, Olivetti};
use candle_vae::train::BatchModel;
use candle_vae::viz::{
    self, GridConfig, interpolation_latents, manifold_latents, traversal_latents,
};
use candle_vae::{
    Activation, ConditionalVae, ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig,
    Decoder, DiagonalGaussian, Dims, EncoderT, GaussianMean, ImageShape, Likelihood, MlpDecoder,
    MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, NoiseSource, ParamStore, StandardLikelihood,
    Vae,
};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use common::{ObjectiveArgs, OptimArgs, PICTURE_STREAM, RunArgs};
use serde::{Deserialize, Serialize};

/// Train a variational auto-encoder on faces — Frey Face as in Kingma & Welling (2013),
/// or the Olivetti faces with convolutions (optionally conditioned on the person) — report
/// its test ELBO and importance-sampled log-likelihood, and draw reconstructions, samples,
/// interpolations, traversals and (with --latent 2) the learned manifold.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,

    #[command(flatten)]
    optim: OptimArgs,

    #[command(flatten)]
    objective: ObjectiveArgs,

    #[command(flatten)]
    model: ModelArgs,
}

/// Everything that defines a run, stored in the checkpoint so that --resume refuses a
/// checkpoint saved with other flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunConfig {
    model: ModelArgs,
    objective: ObjectiveArgs,
    optim: OptimArgs,
    batch_size: usize,
    seed: u64,
}

/// The model and data flags; stored in the checkpoint so --resume can check them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
struct ModelArgs {
    /// Which faces: frey (28×20, one person, MLP) or olivetti (64×64, 40 people, conv).
    #[arg(long, value_enum, default_value_t = Dataset::Frey)]
    dataset: Dataset,

    /// Width of the latent code z [default: 2 (frey), 32 (olivetti)].
    #[arg(long)]
    latent: Option<usize>,

    /// Hidden width: the MLP's hidden layer (frey) or the fully connected layer between
    /// the convolutions and z (olivetti) [default: 200 (frey), 256 (olivetti)].
    #[arg(long)]
    hidden: Option<usize>,

    /// Output channels of the stride-2 convolutions, from the image inwards (olivetti;
    /// four stages take 64×64 down to 4×4).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128")]
    channels: Vec<usize>,

    /// Observation model p(x|z) [default: gaussian (frey), continuous-bernoulli (olivetti)].
    #[arg(long, value_enum)]
    likelihood: Option<LikelihoodArg>,

    /// Condition encoder and decoder on the person (olivetti only): a conditional VAE
    /// (Sohn et al. 2015) whose condition is a one-hot label, fed to the encoder as 40
    /// constant image planes and to the decoder beside z.
    #[arg(long)]
    conditional: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum Dataset {
    /// Frey Face: 1,965 frames of one face, 28×20 (1,765 train / 200 test).
    Frey,
    /// Olivetti: 40 people × 10 images, 64×64 (8 train / 2 test per person).
    Olivetti,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum LikelihoodArg {
    /// Gaussian with a sigmoid mean and a learned log-variance per pixel (Kingma &
    /// Welling 2013): a density, so the ELBO may be positive.
    Gaussian,
    /// Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a density on [0, 1].
    ContinuousBernoulli,
    /// Bernoulli (binary cross-entropy on grayscale pixels): not a likelihood of
    /// grayscale data, for comparison only.
    Bernoulli,
}

/// The example's name (its default output directory is `runs/faces-<dataset>`).
const EXAMPLE: &str = "faces";
/// Examples per batch of the evaluation passes.
const TEST_BATCH: usize = 100;
/// Pictures are rewritten every this many epochs (and after the last).
const PICTURE_EVERY: usize = 10;

/// The defaults that differ between the datasets.
struct Defaults {
    epochs: usize,
    batch_size: usize,
    warmup_steps: usize,
    latent: usize,
    hidden: usize,
    likelihood: LikelihoodArg,
    /// Posterior samples per pass of the final evaluation: memory grows with this times
    /// the test batch times the decoder's activations per sample.
    eval_chunk: usize,
}

impl Dataset {
    fn name(self) -> &'static str {
        match self {
            Dataset::Frey => "frey",
            Dataset::Olivetti => "olivetti",
        }
    }

    fn defaults(self) -> Defaults {
        match self {
            // Kingma & Welling (2013): minibatches of 100, 200 hidden units.
            Dataset::Frey => Defaults {
                epochs: 500,
                batch_size: 100,
                warmup_steps: 0,
                latent: 2,
                hidden: 200,
                likelihood: LikelihoodArg::Gaussian,
                eval_chunk: 100,
            },
            Dataset::Olivetti => Defaults {
                epochs: 200,
                batch_size: 32,
                warmup_steps: 500,
                latent: 32,
                hidden: 256,
                likelihood: LikelihoodArg::ContinuousBernoulli,
                // The conv decoder's feature maps are large: 100 samples of the 80 test
                // faces per pass peaked at 5.8 GB, 10 at 0.6 GB (same estimates, faster).
                eval_chunk: 10,
            },
        }
    }
}

/// The flags whose defaults depend on --dataset; their help says so.
const PER_DATASET: [(&str, &str); 4] = [
    (
        "epochs",
        "Training epochs, in total (a resumed run continues up to this number) [default: \
         500 (frey), 200 (olivetti)]",
    ),
    (
        "batch_size",
        "Examples per training batch, the last partial batch kept [default: 100 (frey), 32 \
         (olivetti)]",
    ),
    (
        "warmup_steps",
        "Steps of linear KL warm-up from 0 to β [default: 0 (frey), 500 (olivetti)]",
    ),
    (
        "out",
        "Directory for the pictures, history.csv and (by default) the checkpoint \
         [default: runs/faces-<dataset>]",
    ),
];

/// Parses the command line, filling the flags the user did not give with the dataset's
/// defaults.
fn parse() -> Result<Cli> {
    let mut command = Cli::command();
    for (id, help) in PER_DATASET {
        command = command.mut_arg(id, |arg| arg.hide_default_value(true).help(help));
    }
    let matches = command.get_matches();
    let mut cli = Cli::from_arg_matches(&matches)?;
    let given = |m: &ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let dataset = cli.model.dataset;
    let defaults = dataset.defaults();
    if !given(&matches, "epochs") {
        cli.run.epochs = defaults.epochs;
    }
    if !given(&matches, "batch_size") {
        cli.run.batch_size = defaults.batch_size;
    }
    if !given(&matches, "warmup_steps") {
        cli.objective.warmup_steps = defaults.warmup_steps;
    }
    if cli.run.out.is_none() {
        cli.run.out = Some(Path::new("runs").join(format!("faces-{}", dataset.name())));
    }
    let model = &mut cli.model;
    model.latent = Some(model.latent.unwrap_or(defaults.latent));
    model.hidden = Some(model.hidden.unwrap_or(defaults.hidden));
    model.likelihood = Some(model.likelihood.unwrap_or(defaults.likelihood));
    if model.conditional && dataset != Dataset::Olivetti {
        bail!("--conditional needs labels: use it with --dataset olivetti");
    }
    Ok(cli)
}

/// The training and test sets, and the shape of an image.
struct Data {
    train: ImageDataset,
    test: ImageDataset,
    shape: ImageShape,
    layout: Layout,
}

fn load(cli: &Cli) -> Result<Data> {
    let explicit = cli.run.data.as_deref();
    let data = match cli.model.dataset {
        Dataset::Frey => {
            let dir = FreyFace::locate(explicit)?;
            let frey = FreyFace::load(&dir)
                .with_context(|| format!("loading Frey Face from {}", dir.display()))?;
            println!(
                "Frey Face from {}: {} train, {} test frames (seeded split, seed {})",
                dir.display(),
                frey.train.len(),
                frey.test.len(),
                FreyFace::SPLIT_SEED
            );
            Data {
                shape: frey.train.image_shape(),
                train: frey.train,
                test: frey.test,
                layout: Layout::Flat,
            }
        }
        Dataset::Olivetti => {
            let dir = Olivetti::locate(explicit)?;
            let faces = Olivetti::load(&dir)
                .with_context(|| format!("loading Olivetti from {}", dir.display()))?;
            println!(
                "Olivetti from {}: {} train, {} test images ({} people; {} test images each, \
                 seed {})",
                dir.display(),
                faces.train.len(),
                faces.test.len(),
                Olivetti::PEOPLE,
                Olivetti::TEST_PER_PERSON,
                Olivetti::SPLIT_SEED
            );
            Data {
                shape: faces.train.image_shape(),
                train: faces.train,
                test: faces.test,
                layout: Layout::Image,
            }
        }
    };
    Ok(data)
}

fn main() -> Result<()> {
    let cli = parse()?;
    let model = cli.model.clone();
    let device = cli.run.device()?;
    let data = load(&cli)?;
    println!("device {device:?}");
    let out = cli.run.out_dir(EXAMPLE);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let latent = model.latent.unwrap_or_default();
    let hidden = model.hidden.unwrap_or_default();
    let (likelihood, params_per_element) = match model.likelihood {
        Some(LikelihoodArg::Gaussian) => (
            StandardLikelihood::gaussian_per_element(GaussianMean::Sigmoid),
            2,
        ),
        Some(LikelihoodArg::ContinuousBernoulli) => (StandardLikelihood::ContinuousBernoulli, 1),
        Some(LikelihoodArg::Bernoulli) | None => (StandardLikelihood::Bernoulli, 1),
    };
    let params = ParamStore::new(cli.run.seed);
    let vb = params.var_builder(DType::F32, &device);
    let pixels = data.shape.elem_count();
    match model.dataset {
        Dataset::Frey => {
            // Kingma & Welling (2013), appendix C: tanh hidden layers. Built on the root,
            // so the tensors are named fc1, fc21, fc22, fc3, fc4 as in pytorch/examples.
            let encoder = MlpEncoder::new(
                &MlpEncoderConfig::new(pixels, &[hidden], latent).with_activation(Activation::Tanh),
                vb.clone(),
            )?;
            let decoder = MlpDecoder::new(
                &MlpDecoderConfig::new(latent, &[hidden], pixels)
                    .with_params_per_element(params_per_element)
                    .with_activation(Activation::Tanh),
                vb.clone(),
            )?;
            let vae = Vae::new(encoder, decoder, likelihood)?;
            run(&cli, &vae, &params, &data, device)
        }
        Dataset::Olivetti => {
            let people = if model.conditional {
                Olivetti::PEOPLE
            } else {
                0
            };
            let input = ImageShape::new(1 + people, data.shape.height, data.shape.width);
            let encoder = ConvEncoder::new(
                &ConvEncoderConfig::new(input, &model.channels, latent).with_hidden(hidden),
                vb.pp("encoder"),
            )?;
            let decoder = ConvDecoder::new(
                &ConvDecoderConfig::new(latent + people, data.shape, &model.channels)
                    .with_hidden(hidden)
                    .with_params_per_element(params_per_element),
                vb.pp("decoder"),
            )?;
            if model.conditional {
                let cvae = ConditionalVae::new(encoder, decoder, likelihood, people)?;
                run(&cli, &cvae, &params, &data, device)
            } else {
                let vae = Vae::new(encoder, decoder, likelihood)?;
                run(&cli, &vae, &params, &data, device)
            }
        }
    }
}

/// What the pictures need from a model, conditional or not. `cond` holds one one-hot
/// person label per row (ignored by an unconditional model).
trait FaceModel: BatchModel {
    fn latent(&self) -> usize;
    fn conditional(&self) -> bool;
    fn likelihood_name(&self) -> String;
    fn posterior(&self, xs: &Tensor, cond: &Tensor) -> candle_core::Result<DiagonalGaussian>;
    fn decode_mean(&self, z: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor>;
}

impl<E: EncoderT<Posterior = DiagonalGaussian> + Dims, Dec: Decoder + Dims> FaceModel
    for Vae<E, Dec>
{
    fn latent(&self) -> usize {
        self.latent_dim()
    }
    fn conditional(&self) -> bool {
        false
    }
    fn likelihood_name(&self) -> String {
        self.likelihood().name().to_string()
    }
    fn posterior(&self, xs: &Tensor, _cond: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        self.encode(xs)
    }
    fn decode_mean(&self, z: &Tensor, _cond: &Tensor) -> candle_core::Result<Tensor> {
        self.generate(z)
    }
}

impl<E: EncoderT<Posterior = DiagonalGaussian> + Dims, Dec: Decoder + Dims> FaceModel
    for ConditionalVae<E, Dec>
{
    fn latent(&self) -> usize {
        self.latent_dim()
    }
    fn conditional(&self) -> bool {
        true
    }
    fn likelihood_name(&self) -> String {
        self.likelihood().name().to_string()
    }
    fn posterior(&self, xs: &Tensor, cond: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        self.encode(xs, cond)
    }
    fn decode_mean(&self, z: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        self.generate(z, cond)
    }
}

fn run<M: FaceModel>(
    cli: &Cli,
    vae: &M,
    params: &ParamStore,
    data: &Data,
    device: Device,
) -> Result<()> {
    let model = &cli.model;
    let train = DataLoader::new(
        data.train.clone(),
        DataLoaderConfig::new(cli.run.batch_size).with_layout(data.layout),
    )?;
    let test = DataLoader::new(
        data.test.clone(),
        DataLoaderConfig::new(TEST_BATCH)
            .with_order(candle_vae::data::Order::Sequential)
            .with_layout(data.layout),
    )?;
    let architecture = match model.dataset {
        Dataset::Frey => format!(
            "MLP {}-{}-{} (tanh)",
            data.shape.elem_count(),
            model.hidden.unwrap_or_default(),
            vae.latent()
        ),
        Dataset::Olivetti => format!(
            "conv {}×{} → {} → fc {} → {}{}",
            data.shape.height,
            data.shape.width,
            model
                .channels
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("-"),
            model.hidden.unwrap_or_default(),
            vae.latent(),
            if vae.conditional() {
                ", conditioned on the person"
            } else {
                ""
            }
        ),
    };
    println!(
        "model: {architecture}, {} likelihood, {} parameters; objective: {}; batch {}, Adam lr {} ({:?})",
        vae.likelihood_name(),
        params.num_parameters(),
        cli.objective.describe(),
        cli.run.batch_size,
        cli.optim.lr,
        cli.optim.lr_schedule
    );
    if vae.likelihood_name() != "bernoulli" {
        println!(
            "(continuous pixels: −ELBO and NLL are negative log-densities in nats per image, \
             and may be negative)"
        );
    }
    let config = RunConfig {
        model: model.clone(),
        objective: cli.objective.clone(),
        optim: cli.optim.clone(),
        batch_size: cli.run.batch_size,
        seed: cli.run.seed,
    };
    let objective = cli.objective.objective(cli.objective.kl_estimator(true)?)?;
    let mut trainer = common::trainer(
        vae, params, &cli.optim, objective, train, test, &cli.run, EXAMPLE, &config,
    )?;
    let checkpoint = cli.run.checkpoint(EXAMPLE);
    let out = cli.run.out_dir(EXAMPLE);
    let pictures = Pictures {
        test: &data.test,
        shape: data.shape,
        layout: data.layout,
        seed: cli.run.seed,
        out: &out,
        device: &device,
    };
    let epochs = cli.run.epochs;
    let start = Instant::now();
    common::fit(&mut trainer, |vae, record| {
        if record.epoch % PICTURE_EVERY == 0 || record.epoch == epochs {
            pictures.epoch(vae)?;
        }
        Ok(())
    })?;
    let history = &trainer.state().history;
    let total: f64 = history.iter().map(|r| r.seconds).sum();
    println!(
        "trained {} epochs: {:.1} s of training passes in all ({:.1} s wall in this process)",
        trainer.state().epoch,
        total,
        start.elapsed().as_secs_f64()
    );
    println!("checkpoint: {}", checkpoint.display());
    common::save_training_curve(&out.join("curve.png"), history)?;

    pictures.last(vae)?;
    println!("pictures, history.csv and curve.png: {}", out.display());
    if cli.run.eval_k > 0 {
        let chunk = cli.model.dataset.defaults().eval_chunk;
        common::final_evaluation(&trainer, cli.run.eval_k, cli.objective.bound_k(), chunk)?;
    }
    Ok(())
}

/// Where and how the pictures are drawn.
struct Pictures<'a> {
    test: &'a ImageDataset,
    shape: ImageShape,
    layout: Layout,
    seed: u64,
    out: &'a Path,
    device: &'a Device,
}

impl Pictures<'_> {
    /// Integer up-scaling: small Frey frames are drawn larger.
    fn scale(&self) -> usize {
        if self.shape.height < 48 { 3 } else { 1 }
    }

    /// Images `indices` of the test set and their one-hot person labels (zeros without
    /// labels).
    fn test_images(&self, indices: &[usize]) -> Result<(Tensor, Tensor)> {
        let xs = self
            .test
            .to_tensor(indices, self.layout, DType::F32, self.device)?;
        let labels: Vec<u8> = match self.test.labels() {
            Some(labels) => indices.iter().map(|&i| labels[i]).collect(),
            None => vec![0; indices.len()],
        };
        Ok((xs, one_hot(&labels, self.device)?))
    }

    fn save(&self, name: &str, images: &Tensor, config: GridConfig) -> Result<()> {
        viz::save_grid(self.out.join(name), images, self.shape, &config)?;
        Ok(())
    }

    /// Reconstructions of test images and samples, rewritten during training.
    fn epoch<M: FaceModel>(&self, vae: &M) -> Result<()> {
        let shown = 30.min(self.test.len());
        let (xs, cond) = self.test_images(&(0..shown).collect::<Vec<_>>())?;
        let recon = vae.decode_mean(vae.posterior(&xs, &cond)?.mode(), &cond)?;
        viz::reconstruction_grid(
            &xs,
            &recon,
            self.shape,
            &GridConfig::new(10).with_scale(self.scale()),
        )?
        .save_png(self.out.join("reconstructions.png"))?;

        let mut noise = NoiseSource::new(self.seed).substream(PICTURE_STREAM);
        if vae.conditional() {
            // One row per person, the same 8 draws of z in every column: the condition
            // fixes who, z the pose, expression and lighting.
            let (people, columns) = (8, 8);
            let z = noise.standard_normal((columns, vae.latent()), DType::F32, self.device)?;
            let z = z.repeat((people, 1))?;
            let labels: Vec<u8> = (0..people as u8).flat_map(|p| [p * 5; 8]).collect();
            let samples = vae.decode_mean(&z, &one_hot(&labels, self.device)?)?;
            self.save(
                "samples.png",
                &samples,
                GridConfig::new(columns).with_scale(self.scale()),
            )?;
        } else {
            let n = if self.scale() > 1 { 100 } else { 40 };
            let z = noise.standard_normal((n, vae.latent()), DType::F32, self.device)?;
            let cond = Tensor::zeros((n, Olivetti::PEOPLE), DType::F32, self.device)?;
            let samples = vae.decode_mean(&z, &cond)?;
            self.save(
                "samples.png",
                &samples,
                GridConfig::new(10).with_scale(self.scale().min(2)),
            )?;
        }
        Ok(())
    }

    /// The end-of-run pictures: those of [`epoch`](Self::epoch), interpolations, the
    /// traversals of the dimensions with the most KL and, for a 2-D latent space, the
    /// manifold.
    fn last<M: FaceModel>(&self, vae: &M) -> Result<()> {
        self.epoch(vae)?;
        let all: Vec<usize> = (0..self.test.len()).collect();
        let (xs, cond) = self.test_images(&all)?;
        let posterior = vae.posterior(&xs, &cond)?;
        let means = posterior.mean().clone();

        // Interpolations between 8 pairs of test images: for Olivetti, two different
        // people (test images i and i + 20, i.e. person p and p + 10); for Frey, frames
        // half the test set apart. A conditional model interpolates the condition too.
        let steps = 10;
        let pairs = 8.min(self.test.len() / 2);
        let gap = if self.test.labels().is_some() {
            20.min(self.test.len() - pairs)
        } else {
            self.test.len() / 2
        };
        let from: Vec<usize> = (0..pairs).map(|i| i * 2).collect();
        let to: Vec<usize> = from.iter().map(|&i| (i + gap) % self.test.len()).collect();
        let pick = |t: &Tensor, idx: &[usize]| -> Result<Tensor> {
            let idx = Tensor::from_vec(
                idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                idx.len(),
                self.device,
            )?;
            Ok(t.index_select(&idx, 0)?)
        };
        let z_line = interpolation_latents(&pick(&means, &from)?, &pick(&means, &to)?, steps)?;
        let c_line = interpolation_latents(&pick(&cond, &from)?, &pick(&cond, &to)?, steps)?;
        let ends_from = pick(&xs, &from)?.flatten_from(1)?;
        let ends_to = pick(&xs, &to)?.flatten_from(1)?;
        let decoded =
            vae.decode_mean(&z_line, &c_line)?
                .reshape((pairs, steps, self.shape.elem_count()))?;
        // Each row: the first original, the decoded line, the second original.
        let rows = Tensor::cat(
            &[&ends_from.unsqueeze(1)?, &decoded, &ends_to.unsqueeze(1)?],
            1,
        )?
        .reshape((pairs * (steps + 2), self.shape.elem_count()))?;
        self.save(
            "interpolation.png",
            &rows,
            GridConfig::new(steps + 2).with_scale(self.scale()),
        )?;

        // Traversals of the dimensions with the most KL on the test set, around the
        // first test image's code, most KL first.
        let kl = posterior
            .kl_standard_normal_per_dim()?
            .mean(0)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let mut dims: Vec<usize> = (0..vae.latent()).collect();
        dims.sort_by(|&a, &b| kl[b].total_cmp(&kl[a]));
        dims.truncate(8);
        println!(
            "test KL per dimension, largest first: {}",
            dims.iter()
                .map(|&d| format!("z{d} {:.2}", kl[d]))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let values: Vec<f64> = (0..9).map(|i| -2.4 + 0.6 * i as f64).collect();
        let walks = traversal_latents(&means.narrow(0, 0, 1)?, &dims, &values)?;
        let walk_cond = cond.narrow(0, 0, 1)?.repeat((walks.dim(0)?, 1))?;
        self.save(
            "traversal.png",
            &vae.decode_mean(&walks, &walk_cond)?,
            GridConfig::new(values.len()).with_scale(self.scale()),
        )?;

        if vae.latent() == 2 {
            let steps = 20;
            let z = manifold_latents(steps, DType::F32, self.device)?;
            let grid_cond = cond.narrow(0, 0, 1)?.repeat((steps * steps, 1))?;
            self.save(
                "manifold.png",
                &vae.decode_mean(&z, &grid_cond)?,
                GridConfig::new(steps).with_padding(0, 1.0),
            )?;
            // The same map, coarser and larger, to read the axes: 7×7 points.
            let z = manifold_latents(7, DType::F32, self.device)?;
            let grid_cond = cond.narrow(0, 0, 1)?.repeat((49, 1))?;
            self.save(
                "manifold-7x7.png",
                &vae.decode_mean(&z, &grid_cond)?,
                GridConfig::new(7).with_scale(self.scale()),
            )?;
        }
        Ok(())
    }
}

/// One-hot rows of width [`Olivetti::PEOPLE`] for `labels`.
fn one_hot(labels: &[u8], device: &Device) -> Result<Tensor> {
    let labels = Tensor::from_vec(labels.to_vec(), labels.len(), device)?;
    Ok(candle_nn::encoding::one_hot(
        labels,
        Olivetti::PEOPLE,
        1f32,
        0f32,
    )?)
}
