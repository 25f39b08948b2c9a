//! Helpers shared by the integration tests: tensor ↔ `f64` conversions, tolerance checks
//! that say what failed, small dense linear algebra in `f64` for closed forms, and
//! throw-away directories.
//!
//! Every test binary compiles this module but uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};

/// The CPU, for the tests that are about the CPU (fused kernels, threads, data files).
pub const CPU: Device = Device::Cpu;

thread_local! {
    /// The device of the test running on this thread (each test has its own thread).
    static DEVICE: std::cell::RefCell<Device> = const { std::cell::RefCell::new(Device::Cpu) };
}

/// The device the current test body runs on: the CPU, or the GPU of [`device_test!`]'s
/// `cuda`/`metal` variant.
pub fn dev() -> Device {
    DEVICE.with(|d| d.borrow().clone())
}

/// Runs `body` with [`dev`] returning `device`.
pub fn run_on(device: Device, body: fn() -> Result<()>) -> Result<()> {
    DEVICE.with(|d| *d.borrow_mut() = device);
    body()
}

/// candle's `test_device!` pattern: `device_test!(name)` beside `fn name() -> Result<()>`
/// makes the tests `name::cpu`, and `name::cuda` / `name::metal` when the crate is built
/// with that feature (then the device must be present: a build with `--features cuda`
/// is a claim that a GPU is there, as in candle's own tests). The body reads its device
/// from [`dev`], which every helper here uses.
#[macro_export]
macro_rules! device_test {
    ($name:ident) => {
        mod $name {
            #[test]
            fn cpu() -> anyhow::Result<()> {
                $crate::common::run_on(candle_core::Device::Cpu, super::$name)
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() -> anyhow::Result<()> {
                $crate::common::run_on(candle_core::Device::new_cuda(0)?, super::$name)
            }

            #[cfg(feature = "metal")]
            #[test]
            fn metal() -> anyhow::Result<()> {
                $crate::common::run_on(candle_core::Device::new_metal(0)?, super::$name)
            }
        }
    };
}

/// ln(2π).
pub const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// All values of a tensor, flattened, as `f64`.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// A scalar (rank-0 or one-element) tensor as `f64`.
pub fn scalar(t: &Tensor) -> Result<f64> {
    let v = values(t)?;
    ensure!(
        v.len() == 1,
        "expected one value, found shape {:?}",
        t.dims()
    );
    Ok(v[0])
}

/// An `f64` tensor of `shape` from `data`.
pub fn tensor(data: &[f64], shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data.to_vec(), shape, &dev())?)
}

/// An `f32` tensor of `shape` from `data`.
pub fn tensor_f32(data: &[f64], shape: &[usize]) -> Result<Tensor> {
    Ok(tensor(data, shape)?.to_dtype(DType::F32)?)
}

/// Fails unless |actual − expected| ≤ tol, saying what was compared.
pub fn assert_close(what: &str, actual: f64, expected: f64, tol: f64) -> Result<()> {
    ensure!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual:.12e}, expected {expected:.12e} (|diff| {:.3e} > tol {tol:.3e})",
        (actual - expected).abs()
    );
    Ok(())
}

/// [`assert_close`] element-wise.
pub fn assert_all_close(what: &str, actual: &[f64], expected: &[f64], tol: f64) -> Result<()> {
    ensure!(
        actual.len() == expected.len(),
        "{what}: {} values, expected {}",
        actual.len(),
        expected.len()
    );
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_close(&format!("{what}[{i}]"), *a, *e, tol)?;
    }
    Ok(())
}

/// max |actual − reference| / max |reference| over all elements: the error relative to the
/// reference's largest magnitude (so that near-zero elements do not dominate).
pub fn max_rel_err(actual: &Tensor, reference: &Tensor) -> Result<f64> {
    ensure!(
        actual.dims() == reference.dims(),
        "shapes differ: {:?} against {:?}",
        actual.dims(),
        reference.dims()
    );
    let a = actual.to_dtype(DType::F64)?.flatten_all()?;
    let b = reference.to_dtype(DType::F64)?.flatten_all()?;
    let diff = (&a - &b)?.abs()?.max(0)?.to_scalar::<f64>()?;
    let scale = b.abs()?.max(0)?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-30))
}

/// Fails unless [`max_rel_err`]`(actual, reference) ≤ tol`, saying what was compared.
pub fn assert_rel_close(what: &str, actual: &Tensor, reference: &Tensor, tol: f64) -> Result<()> {
    let err = max_rel_err(actual, reference)?;
    ensure!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
    Ok(())
}

/// Fails unless the two tensors hold bit-identical values of the same shape and dtype.
pub fn assert_bit_identical(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    ensure!(
        a.dims() == b.dims() && a.dtype() == b.dtype(),
        "{what}: {:?} {:?} vs {:?} {:?}",
        a.dims(),
        a.dtype(),
        b.dims(),
        b.dtype()
    );
    let (va, vb) = (values(a)?, values(b)?);
    for (i, (x, y)) in va.iter().zip(&vb).enumerate() {
        ensure!(x.to_bits() == y.to_bits(), "{what}[{i}]: {x:e} != {y:e}");
    }
    Ok(())
}

/// Sample mean and standard error of the mean.
pub fn mean_and_se(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Fails unless `estimate` is within `multiple` standard errors of `truth`.
pub fn assert_within_se(
    what: &str,
    estimate: f64,
    se: f64,
    truth: f64,
    multiple: f64,
) -> Result<()> {
    ensure!(
        (estimate - truth).abs() <= multiple * se,
        "{what}: estimate {estimate:.6} vs truth {truth:.6}: off by {:.2} standard errors \
         (se {se:.3e}, allowed {multiple})",
        (estimate - truth).abs() / se
    );
    Ok(())
}

/// A dense square matrix in `f64`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub n: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn new(n: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), n * n, "matrix data");
        Self { n, data }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.n + j]
    }

    /// The lower Cholesky factor L with LLᵀ = self (self symmetric positive definite).
    pub fn cholesky(&self) -> Result<Matrix> {
        let n = self.n;
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let mut s = self.at(i, j);
                for k in 0..j {
                    s -= l[i * n + k] * l[j * n + k];
                }
                if i == j {
                    ensure!(s > 0.0, "matrix is not positive definite");
                    l[i * n + i] = s.sqrt();
                } else {
                    l[i * n + j] = s / l[j * n + j];
                }
            }
        }
        Ok(Matrix::new(n, l))
    }

    /// log det of a symmetric positive definite matrix.
    pub fn log_det_spd(&self) -> Result<f64> {
        let l = self.cholesky()?;
        Ok((0..self.n).map(|i| 2.0 * l.at(i, i).ln()).sum())
    }

    /// Solves self·x = b for symmetric positive definite self.
    pub fn solve_spd(&self, b: &[f64]) -> Result<Vec<f64>> {
        let n = self.n;
        let l = self.cholesky()?;
        // L y = b
        let mut y = vec![0.0; n];
        for i in 0..n {
            let s: f64 = (0..i).map(|k| l.at(i, k) * y[k]).sum();
            y[i] = (b[i] - s) / l.at(i, i);
        }
        // Lᵀ x = y
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l.at(k, i) * x[k]).sum();
            x[i] = (y[i] - s) / l.at(i, i);
        }
        Ok(x)
    }

    /// The inverse of a symmetric positive definite matrix.
    pub fn inverse_spd(&self) -> Result<Matrix> {
        let n = self.n;
        let mut inv = vec![0.0; n * n];
        for j in 0..n {
            let mut e = vec![0.0; n];
            e[j] = 1.0;
            let col = self.solve_spd(&e)?;
            for i in 0..n {
                inv[i * n + j] = col[i];
            }
        }
        Ok(Matrix::new(n, inv))
    }
}

/// log N(x; μ, Σ) of a multivariate Gaussian with full covariance, in `f64`.
pub fn mvn_log_density(x: &[f64], mean: &[f64], cov: &Matrix) -> Result<f64> {
    let d = x.len();
    let diff: Vec<f64> = x.iter().zip(mean).map(|(a, b)| a - b).collect();
    let solved = cov.solve_spd(&diff)?;
    let quad: f64 = diff.iter().zip(&solved).map(|(a, b)| a * b).sum();
    Ok(-0.5 * (d as f64 * LN_2PI + cov.log_det_spd()? + quad))
}

/// A directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name includes `tag` and the process id.
    pub fn new(tag: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("candle-vae-test-{tag}-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// File names in the directory, sorted.
    pub fn entries(&self) -> Result<Vec<String>> {
        let mut names = std::fs::read_dir(&self.0)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An MLP VAE `input → hidden → latent → hidden → input` (ReLU) in `dtype`, its parameters
/// under `enc.` and `dec.` in `store`.
pub fn mlp_vae(
    store: &candle_vae::ParamStore,
    input: usize,
    hidden: &[usize],
    latent: usize,
    likelihood: candle_vae::StandardLikelihood,
    dtype: DType,
) -> Result<candle_vae::Vae<candle_vae::MlpEncoder, candle_vae::MlpDecoder>> {
    use candle_vae::{Likelihood, MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig, Vae};
    let vb = store.var_builder(dtype, &dev());
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(input, hidden, latent), vb.pp("enc"))?;
    let dec = MlpDecoder::new(
        &MlpDecoderConfig::new(latent, hidden, input)
            .with_params_per_element(likelihood.params_per_element()),
        vb.pp("dec"),
    )?;
    Ok(Vae::new(enc, dec, likelihood)?)
}

/// `count` random binary vectors of width `dim` (each bit a fair coin), from `seed`.
pub fn binary_prototypes(count: usize, dim: usize, seed: u64) -> Result<Vec<Vec<f64>>> {
    let u =
        values(&candle_vae::NoiseSource::new(seed).uniform((count, dim), DType::F64, &dev())?)?;
    Ok(u.chunks(dim)
        .map(|row| {
            row.iter()
                .map(|&v| if v < 0.5 { 0.0 } else { 1.0 })
                .collect()
        })
        .collect())
}

/// Every parameter's values by name.
pub type Snapshot = Vec<(String, Vec<f64>)>;

/// Every parameter's current values by name, for before/after comparisons.
pub fn snapshot(store: &candle_vae::ParamStore) -> Result<Snapshot> {
    store
        .named_vars()?
        .into_iter()
        .map(|(name, var)| Ok((name, values(var.as_tensor())?)))
        .collect()
}

/// Fails unless two snapshots are bit-identical.
pub fn assert_same_snapshot(
    what: &str,
    a: &[(String, Vec<f64>)],
    b: &[(String, Vec<f64>)],
) -> Result<()> {
    ensure!(
        a.len() == b.len(),
        "{what}: {} vs {} tensors",
        a.len(),
        b.len()
    );
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        ensure!(na == nb, "{what}: tensor {na} vs {nb}");
        ensure!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: tensor {na} differs"
        );
    }
    Ok(())
}

/// The parameters after one training step (ELBO summed over the batch, Adam 1e-3) of the
/// MNIST-sized VAE, 784-400-20, on a batch of 128 uniform images: large enough that the
/// fused kernels split their work over threads.
pub fn mnist_sized_step() -> Result<Vec<Tensor>> {
    use candle_vae::{Adam, AdamConfig, ElboLoss, ElboLossConfig, NoiseSource, StandardLikelihood};
    let params = candle_vae::ParamStore::new(8);
    let vae = mlp_vae(
        &params,
        784,
        &[400],
        20,
        StandardLikelihood::Bernoulli,
        DType::F32,
    )?;
    let loss = ElboLoss::new(ElboLossConfig::default().with_reduction(candle_vae::Reduction::Sum))?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-3))?;
    let mut noise = NoiseSource::new(5);
    let xs = noise.uniform((128, 784), DType::F32, &CPU)?;
    let out = vae.forward_t(&xs, &mut noise, true)?;
    opt.backward_step(&loss.forward(&out, &xs)?.loss)?;
    Ok(params
        .named_vars()?
        .into_iter()
        .map(|(_, v)| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

/// The MNIST-sized step with every fused kernel against the plain candle step: every
/// parameter within relative error `tol`.
pub fn assert_fused_mnist_sized_step_matches_plain(tol: f64) -> Result<()> {
    use candle_vae::fused::{FusedKernels, with_fused_kernels};
    let plain = with_fused_kernels(FusedKernels::NONE, mnist_sized_step)?;
    let fused = with_fused_kernels(FusedKernels::ALL, mnist_sized_step)?;
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        assert_rel_close(&format!("parameter {i}"), a, b, tol)?;
    }
    Ok(())
}
