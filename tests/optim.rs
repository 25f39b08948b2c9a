//! `Adam` against `torch.optim.Adam`/`AdamW`, step for step, in f64.

mod common;

use anyhow::{Result, ensure};
use candle_core::{Tensor, Var};
use candle_vae::{Adam, AdamConfig, WeightDecay};
use common::{assert_all_close, tensor, values};

// Produced by PyTorch 2.15 (`$HOME/torch-venv/bin/python adam_golden.py`), adam_golden.py:
//
// import torch
//
// t = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
// c = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
//
//
// def run(opt_class, **kw):
//     p = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
//     opt = opt_class([p], **kw)
//     for _ in range(5):
//         opt.zero_grad()
//         loss = (c * (p - t) ** 2).sum() + 0.1 * (p ** 4).sum()
//         loss.backward()
//         opt.step()
//     return p.detach()
//
//
// for label, p in [
//     ("ADAM", run(torch.optim.Adam, lr=0.1)),
//     ("ADAM_L2", run(torch.optim.Adam, lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
//     ("ADAMW", run(torch.optim.AdamW, lr=0.1, weight_decay=0.1)),
// ]:
//     print(f"const {label}: [f64; 3] = [" + ", ".join(repr(v) for v in p.tolist()) + "];")

const ADAM: [f64; 3] = [0.9493401337247371, -0.5089080711164786, 1.505871494126982];
const ADAM_L2: [f64; 3] = [0.9209810896056042, -0.5143986715621366, 1.5097626026529876];
const ADAMW: [f64; 3] = [0.9223373500253598, -0.47100255754202264, 1.4191813890620513];

fn objective(p: &Tensor) -> Result<Tensor> {
    let t = tensor(&[1.0, 0.0, -1.0], &[3])?;
    let c = tensor(&[1.0, 3.0, 0.5], &[3])?;
    let quadratic = ((p - t)?.sqr()? * c)?.sum_all()?;
    Ok((quadratic + (p.sqr()?.sqr()?.sum_all()? * 0.1)?)?)
}

fn run(config: AdamConfig) -> Result<Vec<f64>> {
    let p = Var::from_tensor(&tensor(&[0.5, -1.0, 2.0], &[3])?)?;
    let mut opt = Adam::new(vec![("p".to_string(), p.clone())], config)?;
    for _ in 0..5 {
        opt.backward_step(&objective(p.as_tensor())?)?;
    }
    assert_eq!(opt.steps(), 5);
    values(p.as_tensor())
}

#[test]
fn adam_matches_pytorch_step_for_step() -> Result<()> {
    // Both sides in f64 with the same operations up to ordering: agreement to ~1e-15;
    // 1e-12 leaves room for a differently ordered sum.
    assert_all_close("Adam", &run(AdamConfig::new(0.1))?, &ADAM, 1e-12)?;
    let l2 = AdamConfig::new(0.1)
        .with_betas(0.8, 0.99)
        .with_eps(1e-6)
        .with_weight_decay(0.1, WeightDecay::L2);
    assert_all_close("Adam + L2", &run(l2)?, &ADAM_L2, 1e-12)?;
    let decoupled = AdamConfig::new(0.1).with_weight_decay(0.1, WeightDecay::Decoupled);
    assert_all_close("AdamW", &run(decoupled)?, &ADAMW, 1e-12)?;
    Ok(())
}

#[test]
fn parameters_without_gradient_are_left_alone() -> Result<()> {
    let used = Var::from_tensor(&tensor(&[0.5, -1.0, 2.0], &[3])?)?;
    let unused = Var::from_tensor(&tensor(&[7.0], &[1])?)?;
    let mut opt = Adam::new(
        vec![
            ("used".to_string(), used.clone()),
            ("unused".to_string(), unused.clone()),
        ],
        AdamConfig::new(0.1),
    )?;
    for _ in 0..3 {
        opt.backward_step(&objective(used.as_tensor())?)?;
    }
    assert_eq!(values(unused.as_tensor())?, vec![7.0]);
    ensure!(
        values(used.as_tensor())? != vec![0.5, -1.0, 2.0],
        "the used parameter did not move"
    );
    // As in PyTorch, a parameter that later gets gradients starts its own step count at 1:
    // one step of lr 0.1 moves it by lr·g/(|g| + ε) (m̂ = g, √v̂ = |g| at t = 1), i.e. by
    // 0.1 to within 0.1·ε/|g| = 5·10⁻¹⁰; with the step at 3 it would move by ~0.1·0.7.
    let both = (objective(used.as_tensor())? + (unused.as_tensor() * 2.0)?.sum_all()?)?;
    opt.backward_step(&both)?;
    assert_all_close(
        "first step of a late parameter",
        &values(unused.as_tensor())?,
        &[6.9],
        1e-9,
    )?;
    Ok(())
}

/// Every value of `var`, as bits (NaN compares equal to itself here).
fn bits(var: &Var) -> Result<Vec<u64>> {
    Ok(values(var.as_tensor())?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

#[test]
fn a_bad_learning_rate_set_through_the_candle_trait_fails_the_next_step() -> Result<()> {
    for bad in [f64::NAN, 0.0, -1e-3, f64::INFINITY] {
        let p = Var::from_tensor(&tensor(&[0.5, -1.0, 2.0], &[3])?)?;
        let mut opt = Adam::new(vec![("p".to_string(), p.clone())], AdamConfig::new(0.1))?;
        opt.backward_step(&objective(p.as_tensor())?)?;
        let before = bits(&p)?;
        // `set_learning_rate` cannot return an error: the next step must.
        candle_nn::Optimizer::set_learning_rate(&mut opt, bad);
        let result = opt.backward_step(&objective(p.as_tensor())?);
        let Err(err) = result else {
            anyhow::bail!(
                "lr {bad}: the step was taken, p = {:?}",
                values(p.as_tensor())?
            );
        };
        let message = err.to_string();
        ensure!(
            message.contains("lr") && message.contains(&format!("{bad:?}")),
            "lr {bad}: the message names neither the rate nor its value: {message}"
        );
        ensure!(bits(&p)? == before, "lr {bad}: the failed step moved p");
        // Through `step(&grads)` too.
        let grads = objective(p.as_tensor())?.backward()?;
        ensure!(
            opt.step(&grads).is_err(),
            "lr {bad}: step(&grads) was taken"
        );
        ensure!(
            bits(&p)? == before,
            "lr {bad}: the failed step(&grads) moved p"
        );
    }
    Ok(())
}

#[test]
fn a_non_finite_gradient_is_an_error_and_changes_no_parameter() -> Result<()> {
    // d√p/dp = 1/(2√p) is +∞ at p = 0 while the loss √0 + … is finite; q's gradient is
    // finite. Neither parameter may move: a step would write NaN into p (m/√v = ∞/∞).
    let p = Var::from_tensor(&tensor(&[0.0, 1.0, 4.0], &[3])?)?;
    let q = Var::from_tensor(&tensor(&[0.5, -1.0, 2.0], &[3])?)?;
    let mut opt = Adam::new(
        vec![("p".to_string(), p.clone()), ("q".to_string(), q.clone())],
        AdamConfig::new(0.1),
    )?;
    let (p0, q0) = (bits(&p)?, bits(&q)?);
    let loss = (p.as_tensor().sqrt()?.sum_all()? + objective(q.as_tensor())?)?;
    ensure!(values(&loss)?[0].is_finite(), "premise: the loss is finite");
    let Err(err) = opt.backward_step(&loss) else {
        anyhow::bail!(
            "the step was taken: p = {:?}, q = {:?}",
            values(p.as_tensor())?,
            values(q.as_tensor())?
        );
    };
    ensure!(
        err.to_string().contains("`p`"),
        "the message does not name the parameter: {err}"
    );
    ensure!(bits(&p)? == p0 && bits(&q)? == q0, "a parameter moved");
    ensure!(
        opt.steps() == 0,
        "the step count advanced to {}",
        opt.steps()
    );
    Ok(())
}

#[test]
fn a_non_finite_gradient_of_a_fused_layer_changes_no_parameter() -> Result<()> {
    // f32 linear layers on the CPU write their gradients into Adam's own buffers (the
    // fused path); a NaN among them must stop the step as well.
    use candle_core::{DType, Device};
    use candle_vae::{MlpDecoder, MlpDecoderConfig, ParamStore};
    let store = ParamStore::new(3);
    let decoder = MlpDecoder::new(
        &MlpDecoderConfig::new(2, &[4], 3),
        store.var_builder(DType::F32, &Device::Cpu),
    )?;
    let mut opt = Adam::from_store(&store, AdamConfig::new(0.1))?;
    let before: Vec<Vec<u64>> = store.vars()?.iter().map(bits).collect::<Result<_>>()?;
    let z = Tensor::new(&[[0.5f32, f32::NAN], [1.0, -1.0]], &Device::Cpu)?;
    let loss = candle_core::Module::forward(&decoder, &z)?
        .sqr()?
        .sum_all()?;
    ensure!(
        opt.backward_step(&loss).is_err(),
        "a step with NaN gradients was taken"
    );
    let after: Vec<Vec<u64>> = store.vars()?.iter().map(bits).collect::<Result<_>>()?;
    ensure!(after == before, "a parameter moved");
    Ok(())
}
