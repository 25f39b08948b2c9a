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
