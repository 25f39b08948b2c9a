//! The fused CPU kernels against the plain candle path: values and gradients agree to a
//! relative error ≤ 1e-5 (max |fused − plain| over max |plain|, per tensor), and inputs
//! the kernels do not handle take the plain path.

mod common;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_vae::fused::{FusedKernels, with_fused_kernels};
use candle_vae::{
    Activation, Adam, AdamConfig, Checkpoint, DiagonalGaussian, Elbo, ElboLoss, ElboLossConfig,
    Encoder, KlSchedule, Likelihood, MlpDecoder, MlpDecoderConfig, MlpEncoder, MlpEncoderConfig,
    NoiseSource, ParamStore, Reduction, StandardLikelihood, StandardNormal, Vae, VaeOutput,
    WeightDecay,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOL: f64 = 1e-5;

fn assert_close(name: &str, fused: &Tensor, plain: &Tensor) -> Result {
    Ok(common::assert_rel_close(name, fused, plain, TOL)?)
}

fn var(noise: &mut NoiseSource, shape: &[usize], scale: f64) -> Result<Var> {
    let t = (noise.standard_normal(shape, DType::F32, &Device::Cpu)? * scale)?;
    Ok(Var::from_tensor(&t)?)
}

/// The per-dimension KL, which a Gaussian posterior and N(0, I) always have.
fn per_dim(elbo: &candle_vae::Elbo) -> Result<&Tensor> {
    elbo.kl_per_dim
        .as_ref()
        .ok_or_else(|| "no per-dimension KL for a Gaussian pair".into())
}

/// A hand-made VAE output over Vars, so gradients reach the logits and the posterior.
struct Pass {
    logits: Var,
    mean: Var,
    log_var: Var,
    xs: Tensor,
    prior: StandardNormal,
}

impl Pass {
    fn new(n: usize, p: usize, d: usize, seed: u64) -> Result<Self> {
        let mut noise = NoiseSource::new(seed);
        let logits = var(&mut noise, &[n, p], 3.0)?;
        // Extreme logits: the stable forms stay finite and exact.
        let mut l = logits.as_tensor().to_vec2::<f32>()?;
        l[0][0] = 100.0;
        l[0][1] = -100.0;
        l[n - 1][p - 1] = 40.0;
        logits.set(&Tensor::new(l, &Device::Cpu)?)?;
        Ok(Self {
            logits,
            mean: var(&mut noise, &[n, d], 1.0)?,
            log_var: var(&mut noise, &[n, d], 0.7)?,
            xs: noise.uniform((n, p), DType::F32, &Device::Cpu)?,
            prior: StandardNormal::new(d)?,
        })
    }

    fn output(&self) -> Result<VaeOutput<'_>> {
        let posterior = DiagonalGaussian::new(
            self.mean.as_tensor().clone(),
            self.log_var.as_tensor().clone(),
        )?;
        Ok(VaeOutput {
            z: posterior.mean().clone(),
            eps: posterior.mean().zeros_like()?,
            posterior,
            params: self.logits.as_tensor().clone(),
            likelihood: &StandardLikelihood::Bernoulli,
            prior: &self.prior,
        })
    }

    fn grads(&self, objective: &Tensor) -> Result<Vec<Tensor>> {
        let grads = objective.backward()?;
        [&self.logits, &self.mean, &self.log_var]
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .ok_or_else(|| "missing gradient".into())
            })
            .collect()
    }
}

/// An objective that weighs every output of the ELBO, so the backward of each is checked.
fn all_terms(elbo: &Elbo, n: usize, d: usize) -> Result<Tensor> {
    let w_example = Tensor::arange(0f32, n as f32, &Device::Cpu)?.affine(0.01, -0.2)?;
    let w_dim = Tensor::arange(0f32, d as f32, &Device::Cpu)?.affine(-0.1, 0.5)?;
    let total = ((&elbo.loss + (&elbo.reconstruction * 0.3)?)? + (&elbo.kl * -0.7)?)?;
    let total = (total + (&elbo.per_example * &w_example)?.sum_all()?)?;
    Ok((total + (per_dim(elbo)? * &w_dim)?.sum_all()?)?)
}

#[test]
fn fused_elbo_matches_plain_values_and_gradients() -> Result {
    let (n, p, d) = (37, 784, 20);
    for (reduction, schedule, step) in [
        (Reduction::Sum, KlSchedule::Constant, 0),
        (
            Reduction::BatchMean,
            KlSchedule::Linear { warmup_steps: 10 },
            3,
        ),
    ] {
        let pass = Pass::new(n, p, d, 11)?;
        let out = pass.output()?;
        let loss = ElboLoss::new(
            ElboLossConfig::default()
                .with_beta(1.5)
                .with_reduction(reduction)
                .with_kl_schedule(schedule),
        )?;
        let fused = loss.forward_at_step(&out, &pass.xs, step)?;
        let plain = with_fused_kernels(FusedKernels::NONE, || {
            loss.forward_at_step(&out, &pass.xs, step)
        })?;
        assert_close("loss", &fused.loss, &plain.loss)?;
        assert_close(
            "reconstruction",
            &fused.reconstruction,
            &plain.reconstruction,
        )?;
        assert_close("kl", &fused.kl, &plain.kl)?;
        assert_close("kl_per_dim", per_dim(&fused)?, per_dim(&plain)?)?;
        assert_close("per_example", &fused.per_example, &plain.per_example)?;
        assert_eq!(fused.loss.dims(), plain.loss.dims());
        assert_eq!(fused.per_example.dims(), plain.per_example.dims());

        for (name, f, q) in [
            ("loss", &fused.loss, &plain.loss),
            (
                "all terms",
                &all_terms(&fused, n, d)?,
                &all_terms(&plain, n, d)?,
            ),
        ] {
            let gf = pass.grads(f)?;
            let gp = pass.grads(q)?;
            for (which, (a, b)) in ["logits", "mean", "log_var"].iter().zip(gf.iter().zip(&gp)) {
                assert_close(&format!("∂{name}/∂{which}"), a, b)?;
            }
        }
    }
    Ok(())
}

#[test]
fn fused_elbo_gradient_matches_finite_differences() -> Result {
    // Independent of candle's autograd: central differences of the fused loss in f64.
    let (n, p, d) = (3, 5, 2);
    let pass = Pass::new(n, p, d, 5)?;
    let loss = ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum))?;
    let grads = pass.grads(&loss.forward(&pass.output()?, &pass.xs)?.loss)?;
    let h = 1e-2f32;
    for (k, v) in [&pass.logits, &pass.mean, &pass.log_var].iter().enumerate() {
        let base = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let analytic = grads[k].flatten_all()?.to_vec1::<f32>()?;
        for i in [1, base.len() - 1] {
            let at = |delta: f32| -> Result<f64> {
                let mut moved = base.clone();
                moved[i] += delta;
                v.set(&Tensor::from_vec(moved, v.shape(), &Device::Cpu)?)?;
                let value = loss.forward(&pass.output()?, &pass.xs)?.loss;
                Ok(f64::from(value.to_scalar::<f32>()?))
            };
            let numeric = (at(h)? - at(-h)?) / (2.0 * f64::from(h));
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu)?)?;
            let err = (numeric - f64::from(analytic[i])).abs();
            assert!(
                err < 2e-2 * (1.0 + numeric.abs()),
                "tensor {k} element {i}: numeric {numeric}, analytic {}",
                analytic[i]
            );
        }
    }
    Ok(())
}

#[test]
fn fused_bernoulli_log_prob_matches_plain_with_and_without_samples() -> Result {
    let mut noise = NoiseSource::new(3);
    let xs = noise.uniform((9, 1, 4, 7), DType::F32, &Device::Cpu)?;
    for shape in [vec![9, 1, 4, 7], vec![5, 9, 1, 4, 7]] {
        let logits = var(&mut noise, &shape, 4.0)?;
        let fused = StandardLikelihood::Bernoulli.log_prob(&xs, logits.as_tensor())?;
        let plain = with_fused_kernels(FusedKernels::NONE, || {
            StandardLikelihood::Bernoulli.log_prob(&xs, logits.as_tensor())
        })?;
        assert_eq!(fused.dims(), plain.dims());
        assert_close("log p", &fused, &plain)?;
        let weights = noise.standard_normal(fused.shape(), DType::F32, &Device::Cpu)?;
        let gf = (&fused * &weights)?.sum_all()?.backward()?;
        let gp = (&plain * &weights)?.sum_all()?.backward()?;
        let (gf, gp) = (
            gf.get(&logits).ok_or("no grad")?,
            gp.get(&logits).ok_or("no grad")?,
        );
        assert_close("∂log p/∂logits", gf, gp)?;
    }
    Ok(())
}

fn mlp(seed: u64, activation: Activation) -> Result<(ParamStore, MlpEncoder, MlpDecoder)> {
    let params = ParamStore::new(seed);
    let vb = params.var_builder(DType::F32, &Device::Cpu);
    let enc = MlpEncoder::new(
        &MlpEncoderConfig::new(30, &[24, 16], 4).with_activation(activation),
        vb.pp("enc"),
    )?;
    let dec = MlpDecoder::new(
        &MlpDecoderConfig::new(4, &[16, 24], 30).with_activation(activation),
        vb.pp("dec"),
    )?;
    Ok((params, enc, dec))
}

#[test]
fn fused_linear_layers_match_plain_values_and_gradients() -> Result {
    for activation in [Activation::Relu, Activation::Tanh] {
        let (params, enc, dec) = mlp(4, activation)?;
        let mut noise = NoiseSource::new(8);
        // The input is a Var too, so the gradient of a layer's input is checked.
        let xs = var(&mut noise, &[6, 30], 1.0)?;
        let run = || -> candle_core::Result<Tensor> {
            let q = enc.encode(xs.as_tensor())?;
            let out = candle_core::Module::forward(&dec, q.mean())?;
            (out.sqr()?.sum_all()? + (q.log_var() * 0.5)?.sum_all()?)?.sum_all()
        };
        let fused = run()?;
        let plain = with_fused_kernels(FusedKernels::NONE, run)?;
        assert_close("objective", &fused, &plain)?;
        let gf = fused.backward()?;
        let gp = plain.backward()?;
        for (name, v) in params.named_vars()? {
            let (a, b) = (gf.get(&v).ok_or("no grad")?, gp.get(&v).ok_or("no grad")?);
            assert_close(&format!("∂/∂{name} ({activation:?})"), a, b)?;
        }
        assert_close(
            "∂/∂x",
            gf.get(&xs).ok_or("no grad")?,
            gp.get(&xs).ok_or("no grad")?,
        )?;
    }
    Ok(())
}

#[test]
fn fused_linear_skips_the_gradient_of_data_but_not_of_parameters() -> Result {
    let (params, enc, _) = mlp(4, Activation::Relu)?;
    let xs = NoiseSource::new(1).uniform((5, 30), DType::F32, &Device::Cpu)?;
    let grads = enc.encode(&xs)?.mean().sum_all()?.backward()?;
    assert!(grads.get(&xs).is_none());
    for (name, v) in params.named_vars()? {
        // The log-variance head does not enter this objective.
        if name.starts_with("enc") && !name.contains("fc32") {
            assert!(grads.get(&v).is_some(), "no gradient for {name}");
        }
    }
    Ok(())
}

fn trained(kernels: FusedKernels, config: AdamConfig, steps: usize) -> Result<Vec<Tensor>> {
    with_fused_kernels(kernels, || -> Result<Vec<Tensor>> {
        let (params, enc, dec) = mlp(21, Activation::Relu)?;
        let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
        let loss = ElboLoss::new(ElboLossConfig::default())?;
        let mut opt = Adam::from_store(&params, config)?;
        let mut noise = NoiseSource::new(4);
        let xs = noise.uniform((16, 30), DType::F32, &Device::Cpu)?;
        for _ in 0..steps {
            let out = vae.forward_t(&xs, &mut noise, true)?;
            opt.backward_step(&loss.forward(&out, &xs)?.loss)?;
        }
        let mut tensors: Vec<Tensor> = params
            .named_vars()?
            .into_iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        let mut checkpoint = Checkpoint::new();
        opt.save_state(&mut checkpoint)?;
        for (name, _) in params.named_vars()? {
            for moment in ["m", "v"] {
                let key = format!("optimizer.adam.{moment}.{name}");
                tensors.push(checkpoint.tensor(&key).ok_or("no moment")?.clone());
            }
        }
        Ok(tensors)
    })
}

#[test]
fn fused_adam_matches_plain_adam_in_every_mode() -> Result {
    // Only the optimiser differs: the same gradients enter both.
    let adam_only = FusedKernels::NONE.with_adam(true);
    for config in [
        AdamConfig::new(1e-2),
        AdamConfig::new(1e-2).with_weight_decay(0.1, WeightDecay::L2),
        AdamConfig::new(1e-2).with_weight_decay(0.1, WeightDecay::Decoupled),
    ] {
        let fused = trained(adam_only, config, 4)?;
        let plain = trained(FusedKernels::NONE, config, 4)?;
        for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
            assert_close(&format!("tensor {i} after 4 steps ({config:?})"), a, b)?;
        }
    }
    Ok(())
}

#[test]
fn all_fused_kernels_together_match_the_plain_training_step() -> Result {
    // One step from the same start: every parameter and moment agrees.
    let fused = trained(FusedKernels::ALL, AdamConfig::new(1e-3), 1)?;
    let plain = trained(FusedKernels::NONE, AdamConfig::new(1e-3), 1)?;
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        assert_close(&format!("tensor {i} after one step"), a, b)?;
    }
    Ok(())
}

#[test]
fn fused_mnist_sized_step_matches_the_plain_step() -> Result {
    // Large enough that products, Adam and the ELBO are split over the thread pool (on a
    // machine with more than one core; tests/fused_one_thread.rs runs them inline).
    Ok(common::assert_fused_mnist_sized_step_matches_plain(TOL)?)
}

#[test]
fn fused_kernels_called_from_two_threads_at_once_give_the_same_step() -> Result {
    // The kernels share one thread pool, which runs one job at a time: two trainings on
    // two threads take turns and neither disturbs the other.
    let alone = common::mnist_sized_step()?;
    let together = std::thread::scope(|s| {
        let other = s.spawn(common::mnist_sized_step);
        let here = common::mnist_sized_step();
        (here, other.join())
    });
    let (here, other) = (together.0?, together.1.map_err(|_| "thread panicked")??);
    for (i, a) in alone.iter().enumerate() {
        common::assert_bit_identical(&format!("parameter {i}, this thread"), &here[i], a)?;
        common::assert_bit_identical(&format!("parameter {i}, other thread"), &other[i], a)?;
    }
    Ok(())
}

/// How a test step hands its gradients to Adam.
#[derive(Clone, Copy)]
enum Update {
    /// `Adam::backward_step`: the fused linear layers write ∂W, ∂b into Adam's buffers.
    BackwardStep,
    /// `Adam::step(&loss.backward())`: every gradient goes through candle's store.
    StepAfterBackward,
}

/// Every parameter after `steps` steps of a 30-12-3 MLP VAE (batch 16) whose loss is
/// `objective(vae, params, noise)`, its gradients handed to Adam by `update`.
fn sink_run(
    kernels: FusedKernels,
    update: Update,
    steps: usize,
    objective: impl Fn(&Vae<MlpEncoder, MlpDecoder>, &ParamStore, &mut NoiseSource) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    with_fused_kernels(kernels, || {
        let (params, enc, dec) = mlp(33, Activation::Relu)?;
        let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
        let mut opt = Adam::from_store(&params, AdamConfig::new(1e-2))?;
        let mut noise = NoiseSource::new(6);
        for _ in 0..steps {
            let loss = objective(&vae, &params, &mut noise)?;
            match update {
                Update::BackwardStep => opt.backward_step(&loss)?,
                Update::StepAfterBackward => opt.step(&loss.backward()?)?,
            }
        }
        Ok(params
            .named_vars()?
            .into_iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    })
}

/// The summed ELBO loss of `batches` fresh uniform batches of 16, all through the same
/// layers: with two or more, every weight gets its gradient from several products.
fn elbo_of_batches(
    vae: &Vae<MlpEncoder, MlpDecoder>,
    noise: &mut NoiseSource,
    batches: usize,
) -> Result<Tensor> {
    let loss = ElboLoss::new(ElboLossConfig::default().with_reduction(Reduction::Sum))?;
    let mut total = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for _ in 0..batches {
        let xs = noise.uniform((16, 30), DType::F32, &Device::Cpu)?;
        let out = vae.forward_t(&xs, noise, true)?;
        total = (total + loss.forward(&out, &xs)?.loss)?;
    }
    Ok(total)
}

/// Fails unless the two runs end with the same parameters to relative error `tol` (0:
/// bit for bit).
fn assert_same_parameters(what: &str, a: &[Tensor], b: &[Tensor], tol: f64) -> Result {
    assert_eq!(a.len(), b.len());
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        let name = format!("{what}: parameter {i}");
        if tol == 0.0 {
            common::assert_bit_identical(&name, a, b)?;
        } else {
            common::assert_rel_close(&name, a, b, tol)?;
        }
    }
    Ok(())
}

#[test]
fn backward_step_writes_the_gradients_candle_would_have_given() -> Result {
    // `backward_step` lets the fused layers write ∂W and ∂b into Adam's own buffers
    // instead of candle's zero-filled ones: the same numbers, so the same update bit for
    // bit, step after step (the buffers are reused, never cleared).
    let one_batch = |vae: &_, _: &ParamStore, noise: &mut _| elbo_of_batches(vae, noise, 1);
    let sunk = sink_run(FusedKernels::ALL, Update::BackwardStep, 4, one_batch)?;
    let stored = sink_run(FusedKernels::ALL, Update::StepAfterBackward, 4, one_batch)?;
    assert_same_parameters("one batch", &sunk, &stored, 0.0)?;
    // With the Adam kernel off, the buffer's gradient takes candle's Adam ops.
    let no_adam = FusedKernels::ALL.with_adam(false);
    let sunk = sink_run(no_adam, Update::BackwardStep, 4, one_batch)?;
    let stored = sink_run(no_adam, Update::StepAfterBackward, 4, one_batch)?;
    assert_same_parameters("plain Adam", &sunk, &stored, 0.0)
}

#[test]
fn backward_step_adds_the_gradients_of_a_layer_used_twice() -> Result {
    // Three batches through the same layers: each weight's gradient is the sum of three
    // products, the later ones added into the buffer (candle adds them one by one).
    let three = |vae: &_, _: &ParamStore, noise: &mut _| elbo_of_batches(vae, noise, 3);
    let sunk = sink_run(FusedKernels::ALL, Update::BackwardStep, 3, three)?;
    let stored = sink_run(FusedKernels::ALL, Update::StepAfterBackward, 3, three)?;
    let plain = sink_run(FusedKernels::NONE, Update::StepAfterBackward, 3, three)?;
    assert_same_parameters("three batches, candle's sums", &sunk, &stored, 1e-6)?;
    assert_same_parameters("three batches, plain path", &sunk, &plain, TOL)
}

#[test]
fn backward_step_adds_gradients_from_other_ops_to_the_written_ones() -> Result {
    // An L2 penalty on every parameter, through candle's own ops: each weight has a part
    // of its gradient in Adam's buffer and a part in candle's store.
    let penalised = |vae: &_, params: &ParamStore, noise: &mut _| -> Result<Tensor> {
        let mut loss = elbo_of_batches(vae, noise, 1)?;
        for (_, var) in params.named_vars()? {
            loss = (loss + (var.as_tensor().sqr()?.sum_all()? * 0.5)?)?;
        }
        Ok(loss)
    };
    let sunk = sink_run(FusedKernels::ALL, Update::BackwardStep, 3, penalised)?;
    let stored = sink_run(FusedKernels::ALL, Update::StepAfterBackward, 3, penalised)?;
    let plain = sink_run(FusedKernels::NONE, Update::StepAfterBackward, 3, penalised)?;
    assert_same_parameters("penalised, candle's sums", &sunk, &stored, 1e-6)?;
    assert_same_parameters("penalised, plain path", &sunk, &plain, TOL)
}

/// θ, m and v after three Adam steps (lr 1e-3) on a parameter of ones whose gradient is
/// `gradient` at every step.
fn adam_with_gradient(kernels: FusedKernels, gradient: &[f32]) -> Result<[Vec<f32>; 3]> {
    with_fused_kernels(kernels, || {
        let n = gradient.len();
        let p = Var::from_tensor(&Tensor::ones(n, DType::F32, &Device::Cpu)?)?;
        let c = Tensor::from_slice(gradient, n, &Device::Cpu)?;
        let mut opt = Adam::new(vec![("p".to_string(), p.clone())], AdamConfig::new(1e-3))?;
        for _ in 0..3 {
            opt.backward_step(&(p.as_tensor() * &c)?.sum_all()?)?;
        }
        let mut checkpoint = Checkpoint::new();
        opt.save_state(&mut checkpoint)?;
        let moment = |name: &str| -> Result<Vec<f32>> {
            let t = checkpoint
                .tensor(&format!("optimizer.adam.{name}.p"))
                .ok_or("no moment")?;
            Ok(t.to_vec1::<f32>()?)
        };
        Ok([p.as_tensor().to_vec1::<f32>()?, moment("m")?, moment("v")?])
    })
}

#[test]
fn fused_adam_stores_no_subnormal_moments_and_takes_the_plain_step() -> Result {
    // Gradients whose moments fall below f32::MIN_POSITIVE: m ≈ 0.27·g ≈ 8e-39 for the
    // first, v = 0.001·g² ≈ 1e-43 for the second. Subnormals cost the CPU a microcode
    // assist per operation; the fused kernel stores them as 0, and the parameters still
    // come out bit for bit as the plain path's (the difference, ~1e-33, is far below an
    // f32 of 1).
    let gradient = [3e-38, 1e-20, 1.0, 0.0];
    let [theta, m, v] = adam_with_gradient(FusedKernels::ALL, &gradient)?;
    let [plain_theta, plain_m, plain_v] = adam_with_gradient(FusedKernels::NONE, &gradient)?;
    let subnormal = |x: &f32| x.is_subnormal();
    assert!(
        plain_m.iter().any(subnormal) && plain_v.iter().any(subnormal),
        "premise: the plain path keeps subnormal moments ({plain_m:?}, {plain_v:?})"
    );
    assert!(
        !m.iter().chain(&v).any(subnormal),
        "fused moments hold subnormals: m {m:?}, v {v:?}"
    );
    for (i, (a, b)) in theta.iter().zip(&plain_theta).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "θ[{i}]: {a} vs {b}");
    }
    // Normal moments are the plain path's, bit for bit.
    for (fused, plain) in [(&m, &plain_m), (&v, &plain_v)] {
        for (a, b) in fused.iter().zip(plain.iter()) {
            if b.is_normal() {
                assert_eq!(a.to_bits(), b.to_bits(), "moment {a} vs {b}");
            }
        }
    }
    Ok(())
}

#[test]
fn adam_state_saved_before_a_fused_step_keeps_its_values() -> Result {
    // The fused step writes the moments in place; a checkpoint taken earlier must not see it.
    let (params, enc, _) = mlp(2, Activation::Relu)?;
    let xs = NoiseSource::new(1).uniform((5, 30), DType::F32, &Device::Cpu)?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-2))?;
    opt.backward_step(&enc.encode(&xs)?.mean().sum_all()?)?;
    let mut checkpoint = Checkpoint::new();
    opt.save_state(&mut checkpoint)?;
    let key = "optimizer.adam.m.enc.fc1.weight";
    let before = checkpoint.tensor(key).ok_or("no moment")?.copy()?;
    opt.backward_step(&enc.encode(&xs)?.mean().sum_all()?)?;
    let after = checkpoint.tensor(key).ok_or("no moment")?;
    assert_eq!(common::max_rel_err(after, &before)?, 0.0);
    Ok(())
}

#[test]
fn unsupported_dtypes_take_the_plain_path() -> Result {
    // f64 everywhere: the fused kernels do not apply, and the results are the plain path's
    // exactly.
    let params = ParamStore::new(3);
    let vb = params.var_builder(DType::F64, &Device::Cpu);
    let enc = MlpEncoder::new(&MlpEncoderConfig::new(12, &[8], 3), vb.pp("enc"))?;
    let dec = MlpDecoder::new(&MlpDecoderConfig::new(3, &[8], 12), vb.pp("dec"))?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
    let xs = NoiseSource::new(1).uniform((4, 12), DType::F64, &Device::Cpu)?;
    let eps = NoiseSource::new(2).standard_normal((4, 3), DType::F64, &Device::Cpu)?;
    let loss = ElboLoss::new(ElboLossConfig::default())?;
    let fused = loss
        .forward(&vae.forward_with_noise_t(&xs, &eps, true)?, &xs)?
        .per_example;
    let plain = with_fused_kernels(FusedKernels::NONE, || {
        loss.forward(&vae.forward_with_noise_t(&xs, &eps, true)?, &xs)
    })?
    .per_example;
    assert_eq!(fused.dtype(), DType::F64);
    assert_eq!(common::max_rel_err(&fused, &plain)?, 0.0);
    let sum = fused.sum(D::Minus1)?.to_scalar::<f64>()?;
    assert!(sum.is_finite() && sum > 0.0);
    Ok(())
}
