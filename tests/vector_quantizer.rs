//! The vector quantiser of VQ-VAE: the straight-through gradient, the nearest code (ties
//! to the lowest index), the losses' gradients, the EMA update against a hand
//! computation, dead-code restarts, the diagnostics, checkpoints, typed errors and a
//! seeded training run.

mod common;

use std::collections::HashMap;

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use candle_vae::discrete::perplexity;
use candle_vae::{
    Adam, AdamConfig, Checkpoint, CodebookUpdate, DeadCodes, Error, ImageShape, NoiseSource,
    ParamStore, StandardLikelihood, VectorQuantizer, VectorQuantizerConfig, VqConvConfig,
    VqDecoder, VqEncoder, VqVae,
};
use common::{TempDir, assert_all_close, assert_bit_identical, assert_close, values};

const CPU: Device = Device::Cpu;

/// A quantiser whose codebook is `codebook` (K × D, row-major, f32), from a store that
/// holds exactly the given tensors (a fresh EMA state when `ema` is set).
fn with_codebook(
    codebook: &[f64],
    k: usize,
    d: usize,
    config: VectorQuantizerConfig,
) -> Result<(VectorQuantizer, HashMap<String, Tensor>)> {
    let mut tensors = HashMap::new();
    tensors.insert(
        "codebook".to_string(),
        // A variable, as in a VarMap, so the codebook loss has a gradient to give it.
        Var::from_tensor(
            &Tensor::from_vec(codebook.to_vec(), (k, d), &CPU)?.to_dtype(DType::F32)?,
        )?
        .as_tensor()
        .clone(),
    );
    tensors.insert("ema_count".to_string(), Tensor::zeros(k, DType::F32, &CPU)?);
    tensors.insert(
        "ema_sum".to_string(),
        Tensor::zeros((k, d), DType::F32, &CPU)?,
    );
    tensors.insert(
        "idle_steps".to_string(),
        Tensor::zeros(k, DType::F32, &CPU)?,
    );
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &CPU);
    Ok((VectorQuantizer::new(&config, vb)?, tensors))
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

#[test]
fn forward_value_is_the_selected_code_and_the_gradient_passes_straight_through() -> Result<()> {
    let params = ParamStore::new(3);
    let vb = params.var_builder(DType::F32, &CPU);
    let vq = VectorQuantizer::new(&VectorQuantizerConfig::new(8, 3), vb.pp("vq"))?;
    let mut noise = NoiseSource::new(11);
    let z_e = Var::from_tensor(&(noise.standard_normal((6, 3), DType::F32, &CPU)? * 0.2)?)?;
    let q = vq.quantize(z_e.as_tensor())?;

    // The value: exactly the selected rows of the codebook.
    let selected = vq.codebook().index_select(&q.codes, 0)?;
    assert_bit_identical("z_q vs e_k", &q.z_q, &selected)?;
    assert_bit_identical("embed(codes)", &vq.embed(&q.codes)?, &selected)?;

    // The gradient of a decoder-like f(z) = Σ tanh(z W) through z_q, against the gradient
    // of f at a free variable holding the same values.
    let w = noise.standard_normal((3, 5), DType::F32, &CPU)?;
    let f = |z: &Tensor| -> candle_core::Result<Tensor> { z.matmul(&w)?.tanh()?.sum_all() };
    let grads = f(&q.z_q)?.backward()?;
    let through = grads
        .get(z_e.as_tensor())
        .ok_or(anyhow::anyhow!("no grad for z_e"))?;
    ensure!(
        grads.get(vq.codebook()).is_none(),
        "the decoder's gradient must not reach the codebook"
    );
    let free = Var::from_tensor(&q.z_q.detach().copy()?)?;
    let direct = f(free.as_tensor())?.backward()?;
    let at_zq = direct
        .get(free.as_tensor())
        .ok_or(anyhow::anyhow!("no grad"))?;
    assert_bit_identical("∂f/∂z_e vs ∂f/∂z_q", through, at_zq)?;
    // And it is not the gradient at z_e (which differs, since z_e ≠ z_q).
    let at_ze = {
        let v = Var::from_tensor(&z_e.as_tensor().copy()?)?;
        f(v.as_tensor())?.backward()?.get(v.as_tensor()).cloned()
    }
    .ok_or(anyhow::anyhow!("no grad"))?;
    ensure!(common::max_rel_err(&at_ze, at_zq)? > 1e-3);
    Ok(())
}

#[test]
fn losses_and_their_gradients_match_the_closed_forms() -> Result<()> {
    // Codes (0,0) and (1,1); z_e rows near each.
    let (vq, _) = with_codebook(
        &[0.0, 0.0, 1.0, 1.0],
        2,
        2,
        VectorQuantizerConfig::new(2, 2).with_beta(0.25),
    )?;
    let z = [0.1, -0.2, 0.9, 1.3, 0.3, 0.1];
    let z_e = Var::from_tensor(&Tensor::from_vec(z.to_vec(), (3, 2), &CPU)?.to_dtype(DType::F32)?)?;
    let q = vq.quantize(z_e.as_tensor())?;
    assert_eq!(q.indices, vec![0, 1, 0]);
    // ‖z − e‖² per example.
    let expected = [0.01 + 0.04, 0.01 + 0.09, 0.09 + 0.01];
    assert_all_close("codebook loss", &values(&q.codebook_loss)?, &expected, 1e-6)?;
    assert_all_close("commitment", &values(&q.commitment_loss)?, &expected, 1e-6)?;
    let total: Vec<f64> = expected.iter().map(|v| v * 1.25).collect();
    assert_all_close(
        "loss = codebook + β commitment",
        &values(&q.loss)?,
        &total,
        1e-6,
    )?;

    let grads = q.loss.sum_all()?.backward()?;
    // ∂/∂z_e of β‖z_e − sg[e]‖² = 2β (z_e − e).
    let gz = values(
        grads
            .get(z_e.as_tensor())
            .ok_or(anyhow::anyhow!("no grad"))?,
    )?;
    let e = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
    let expect_z: Vec<f64> = z.iter().zip(e).map(|(z, e)| 0.5 * (z - e)).collect();
    assert_all_close("∂/∂z_e", &gz, &expect_z, 1e-6)?;
    // ∂/∂e_k of Σ ‖sg[z_e] − e_k‖² = Σ_{rows at k} 2 (e_k − z).
    let ge = values(grads.get(vq.codebook()).ok_or(anyhow::anyhow!("no grad"))?)?;
    let expect_e = [
        2.0 * (0.0 - 0.1) + 2.0 * (0.0 - 0.3),
        2.0 * (0.0 + 0.2) + 2.0 * (0.0 - 0.1),
        2.0 * (1.0 - 0.9),
        2.0 * (1.0 - 1.3),
    ];
    assert_all_close("∂/∂e", &ge, &expect_e, 1e-6)?;

    // With EMA the codebook term leaves the objective (it is still reported).
    let (ema, _) = with_codebook(
        &[0.0, 0.0, 1.0, 1.0],
        2,
        2,
        VectorQuantizerConfig::new(2, 2).with_update(CodebookUpdate::ema()),
    )?;
    let q = ema.quantize(z_e.as_tensor())?;
    let beta_only: Vec<f64> = expected.iter().map(|v| v * 0.25).collect();
    assert_all_close(
        "EMA loss = β commitment",
        &values(&q.loss)?,
        &beta_only,
        1e-6,
    )?;
    assert_all_close(
        "EMA codebook loss",
        &values(&q.codebook_loss)?,
        &expected,
        1e-6,
    )?;
    Ok(())
}

#[test]
fn nearest_code_matches_a_brute_force_search_for_vectors_and_grids() -> Result<()> {
    let params = ParamStore::new(5);
    let vq = VectorQuantizer::new(
        &VectorQuantizerConfig::new(16, 4),
        params.var_builder(DType::F32, &CPU),
    )?;
    let codebook = rows(vq.codebook())?;
    let mut noise = NoiseSource::new(8);
    // (N, D, H, W) = (3, 4, 5, 6): 90 positions.
    let z_e = (noise.standard_normal((3, 4, 5, 6), DType::F32, &CPU)? * 0.07)?;
    let q = vq.quantize(&z_e)?;
    assert_eq!(q.codes.dims(), &[3, 5, 6]);
    let codes = q
        .codes
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let zv = values(&z_e)?;
    let zq = values(&q.z_q)?;
    let mut decided = 0;
    for n in 0..3 {
        for h in 0..5 {
            for w in 0..6 {
                let at = |c: usize| ((n * 4 + c) * 5 + h) * 6 + w;
                let x: Vec<f64> = (0..4).map(|c| zv[at(c)]).collect();
                let d: Vec<f64> = codebook.iter().map(|e| sq_dist(&x, e)).collect();
                let best = (0..16).fold(0, |b, j| if d[j] < d[b] { j } else { b });
                let chosen = codes[(n * 5 + h) * 6 + w] as usize;
                ensure!(
                    d[chosen] <= d[best] + 1e-6,
                    "({n},{h},{w}): chose {chosen} at {}, best {best} at {}",
                    d[chosen],
                    d[best]
                );
                let mut sorted = d.clone();
                sorted.sort_by(f64::total_cmp);
                if sorted[1] - sorted[0] > 1e-5 {
                    ensure!(chosen == best, "({n},{h},{w}): {chosen} != {best}");
                    decided += 1;
                }
                for c in 0..4 {
                    ensure!(zq[at(c)] == codebook[chosen][c], "z_q at ({n},{c},{h},{w})");
                }
            }
        }
    }
    ensure!(
        decided > 80,
        "only {decided} of 90 positions had a clear nearest code"
    );
    // The vector layout (N, D) gives the same codes for the same rows.
    let flat = z_e.permute((0, 2, 3, 1))?.contiguous()?.reshape((90, 4))?;
    let q2 = vq.quantize(&flat)?;
    assert_eq!(q2.indices, q.indices);
    Ok(())
}

#[test]
fn ties_go_to_the_lowest_index() -> Result<()> {
    // Codes 1 and 3 are equal; every point below is equidistant from several codes, and
    // all distances are small integers, exact in f32.
    let (vq, _) = with_codebook(
        &[0.0, 0.0, 2.0, 0.0, 0.0, 2.0, 2.0, 0.0],
        4,
        2,
        VectorQuantizerConfig::new(4, 2),
    )?;
    let z = Tensor::from_vec(
        vec![1f32, 0.0, 2.0, 0.0, 1.0, 1.0, 2.0, 1.0, 1.0, 2.0],
        (5, 2),
        &CPU,
    )?;
    let q = vq.quantize(&z)?;
    // (1,0): codes 0, 1, 3 at 1 → 0. (2,0): 1 and 3 at 0 → 1. (1,1): all at 2 → 0.
    // (2,1): 1 and 3 at 1 → 1. (1,2): 2 at 1 → 2.
    assert_eq!(q.indices, vec![0, 1, 0, 1, 2]);
    // Diagnostics: counts (2, 2, 1, 0): usage 3, perplexity exp(H).
    assert_eq!(q.counts, vec![2, 2, 1, 0]);
    assert_eq!(q.usage(), 3);
    let h: f64 = -(2.0 * 0.4 * 0.4f64.ln() + 0.2 * 0.2f64.ln());
    assert_close("perplexity", q.perplexity(), h.exp(), 1e-12)?;
    assert_close("perplexity uniform", perplexity(&[5, 5, 5, 5]), 4.0, 1e-12)?;
    assert_close("perplexity one code", perplexity(&[0, 9, 0]), 1.0, 1e-12)?;
    Ok(())
}

#[test]
fn ema_update_matches_a_hand_computation() -> Result<()> {
    let (decay, eps) = (0.5, 0.1);
    let (vq, store) = with_codebook(
        &[0.0, 0.0, 10.0, 10.0],
        2,
        2,
        VectorQuantizerConfig::new(2, 2).with_update(CodebookUpdate::Ema {
            decay,
            epsilon: eps,
        }),
    )?;
    // A fresh state starts as N = 1, m = e (in the store the quantiser was built from).
    assert_all_close("fresh N", &values(&store["ema_count"])?, &[1.0, 1.0], 0.0)?;
    assert_all_close(
        "fresh m",
        &values(&store["ema_sum"])?,
        &[0.0, 0.0, 10.0, 10.0],
        0.0,
    )?;

    let z = Tensor::from_vec(vec![1f32, 0.0, 0.0, 1.0, 9.0, 11.0], (3, 2), &CPU)?;
    let q = vq.quantize(&z)?;
    assert_eq!(q.indices, vec![0, 0, 1]);
    vq.update(&q, &mut NoiseSource::new(0))?;
    // n = (2, 1), s_0 = (1, 1), s_1 = (9, 11).
    // N = 0.5·1 + 0.5·n = (1.5, 1.0); m_0 = 0.5·(0,0) + 0.5·(1,1) = (0.5, 0.5);
    // m_1 = 0.5·(10,10) + 0.5·(9,11) = (9.5, 10.5).
    // ΣN = 2.5; Ñ_i = (N_i + 0.1)/(2.5 + 0.2)·2.5 = (1.6/2.7·2.5, 1.1/2.7·2.5).
    let n0 = 1.6 / 2.7 * 2.5;
    let n1 = 1.1 / 2.7 * 2.5;
    let (count, sum) = vq.ema_state().ok_or(anyhow::anyhow!("no EMA state"))?;
    assert_all_close("N", &values(count)?, &[1.5, 1.0], 1e-6)?;
    assert_all_close("m", &values(sum)?, &[0.5, 0.5, 9.5, 10.5], 1e-6)?;
    let expected = [0.5 / n0, 0.5 / n0, 9.5 / n1, 10.5 / n1];
    assert_all_close("e = m / Ñ", &values(vq.codebook())?, &expected, 1e-5)?;
    // The store's tensors are the ones updated (what a checkpoint saves).
    assert_all_close(
        "store codebook",
        &values(&store["codebook"])?,
        &expected,
        1e-5,
    )?;

    // A second step with no row at code 1: N_1 and m_1 decay, code 1 moves by the smoothing.
    let z = Tensor::from_vec(vec![0.0f32, 0.0], (1, 2), &CPU)?;
    let q = vq.quantize(&z)?;
    assert_eq!(q.indices, vec![0]);
    vq.update(&q, &mut NoiseSource::new(0))?;
    let n = [0.5 * 1.5 + 0.5, 0.5 * 1.0];
    let m = [0.25, 0.25, 4.75, 5.25];
    let total = n[0] + n[1];
    let s = [
        (n[0] + eps) / (total + 2.0 * eps) * total,
        (n[1] + eps) / (total + 2.0 * eps) * total,
    ];
    assert_all_close("N step 2", &values(count)?, &n, 1e-6)?;
    assert_all_close(
        "e step 2",
        &values(vq.codebook())?,
        &[m[0] / s[0], m[1] / s[0], m[2] / s[1], m[3] / s[1]],
        1e-5,
    )?;
    Ok(())
}

#[test]
fn dead_codes_restart_at_batch_rows_drawn_from_the_seed() -> Result<()> {
    let run = |seed: u64| -> Result<(Vec<f64>, Vec<f64>)> {
        let (vq, _) = with_codebook(
            &[0.0, 0.0, 100.0, 100.0, -100.0, -100.0],
            3,
            2,
            VectorQuantizerConfig::new(3, 2)
                .with_update(CodebookUpdate::ema())
                .with_dead_codes(DeadCodes::Restart { after_steps: 2 }),
        )?;
        let mut noise = NoiseSource::new(seed);
        let batch = (noise.standard_normal((16, 2), DType::F32, &CPU)? * 0.1)?;
        let q = vq.quantize(&batch)?;
        assert_eq!(q.counts, vec![16, 0, 0]);
        vq.update(&q, &mut noise)?;
        let idle = values(vq.idle_steps().ok_or(anyhow::anyhow!("no idle"))?)?;
        assert_all_close("idle after 1", &idle, &[0.0, 1.0, 1.0], 0.0)?;
        let far = &values(vq.codebook())?[2..];
        ensure!(
            far.iter().all(|v| v.abs() > 50.0),
            "restarted too early: {far:?}"
        );
        let q = vq.quantize(&batch)?;
        vq.update(&q, &mut noise)?;
        let idle = values(vq.idle_steps().ok_or(anyhow::anyhow!("no idle"))?)?;
        assert_all_close("idle after restart", &idle, &[0.0, 0.0, 0.0], 0.0)?;
        let codebook = rows(vq.codebook())?;
        let inputs = rows(&batch)?;
        for code in &codebook[1..] {
            ensure!(
                inputs.iter().any(|r| sq_dist(r, code) < 1e-12),
                "restarted code {code:?} is not a row of the batch"
            );
        }
        let (count, _) = vq.ema_state().ok_or(anyhow::anyhow!("no EMA"))?;
        assert_close("restarted N", values(count)?[1], 1.0, 0.0)?;
        Ok((values(vq.codebook())?, inputs.concat()))
    };
    let (a, _) = run(4)?;
    let (b, _) = run(4)?;
    assert_all_close("same seed, same restarts", &a, &b, 0.0)?;
    Ok(())
}

#[test]
fn bad_configs_are_typed_errors_at_construction() -> Result<()> {
    let params = ParamStore::new(0);
    let vb = params.var_builder(DType::F32, &CPU);
    let cases = [
        (VectorQuantizerConfig::new(0, 4), "codes"),
        (VectorQuantizerConfig::new(4, 0), "dim"),
        (VectorQuantizerConfig::new(4, 4).with_beta(-1.0), "beta"),
        (
            VectorQuantizerConfig::new(4, 4).with_update(CodebookUpdate::Ema {
                decay: 1.0,
                epsilon: 1e-5,
            }),
            "update.decay",
        ),
        (
            VectorQuantizerConfig::new(4, 4).with_dead_codes(DeadCodes::Restart { after_steps: 0 }),
            "dead_codes.after_steps",
        ),
    ];
    for (config, expected) in cases {
        match VectorQuantizer::new(&config, vb.clone()) {
            Err(Error::InvalidConfig { field, .. }) if field == expected => {}
            other => anyhow::bail!("{expected}: expected InvalidConfig, got {other:?}"),
        }
    }
    let msg = VectorQuantizer::new(&VectorQuantizerConfig::new(0, 4), vb.clone())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(
        msg.contains("codes") && msg.contains("> 0"),
        "message: {msg}"
    );
    // A channel axis that is not D.
    let vq = VectorQuantizer::new(&VectorQuantizerConfig::new(4, 3), vb)?;
    let err = vq.quantize(&Tensor::zeros((2, 5), DType::F32, &CPU)?);
    ensure!(
        err.is_err(),
        "a (2, 5) input to a D = 3 quantiser must fail"
    );
    Ok(())
}

fn tiny_vqvae(
    seed: u64,
    update: CodebookUpdate,
) -> Result<(ParamStore, VqVae<VqEncoder, VqDecoder, StandardLikelihood>)> {
    let params = ParamStore::new(seed);
    let vb = params.var_builder(DType::F32, &CPU);
    let conv = VqConvConfig::new(ImageShape::new(1, 8, 8), &[8], 4);
    let vq = VectorQuantizer::new(
        &VectorQuantizerConfig::new(6, 4)
            .with_update(update)
            .with_dead_codes(DeadCodes::Restart { after_steps: 5 }),
        vb.pp("vq"),
    )?;
    let vae = VqVae::new(
        VqEncoder::new(&conv, vb.pp("enc"))?,
        vq,
        VqDecoder::new(&conv, vb.pp("dec"))?,
        StandardLikelihood::Bernoulli,
    );
    Ok((params, vae))
}

fn train(seed: u64, update: CodebookUpdate, steps: usize) -> Result<(Vec<f64>, ParamStore)> {
    let (params, vae) = tiny_vqvae(seed, update)?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-2))?;
    let mut data_noise = NoiseSource::new(seed + 1);
    let mut model_noise = NoiseSource::new(seed + 2);
    // Two prototypes (a bright top half, a bright bottom half), with noise.
    let top = Tensor::arange(0u32, 64, &CPU)?
        .lt(32u32)?
        .to_dtype(DType::F32)?;
    let protos = Tensor::stack(&[top.clone(), (1.0 - &top)?], 0)?;
    let mut losses = Vec::new();
    for _ in 0..steps {
        let jitter = (data_noise.uniform((16, 64), DType::F32, &CPU)? * 0.2)?;
        let pick = Tensor::from_vec(
            (0..16).map(|i| (i % 2) as u32).collect::<Vec<_>>(),
            16,
            &CPU,
        )?;
        let xs = (protos.index_select(&pick, 0)? * 0.8 + jitter)?.reshape((16, 1, 8, 8))?;
        let out = vae.forward_t(&xs, true)?;
        let loss = out.loss(&xs)?;
        opt.backward_step(&loss.loss)?;
        vae.update(&out, &mut model_noise)?;
        losses.push(loss.loss.to_scalar::<f32>()? as f64);
    }
    Ok((losses, params))
}

#[test]
fn seeded_training_is_reproducible_learns_and_checkpoints_the_ema_state() -> Result<()> {
    for update in [CodebookUpdate::Gradient, CodebookUpdate::ema()] {
        let (a, params) = train(9, update, 40)?;
        let (b, _) = train(9, update, 40)?;
        assert_all_close("same seed, same losses", &a, &b, 0.0)?;
        let first = a[..5].iter().sum::<f64>() / 5.0;
        let last = a[35..].iter().sum::<f64>() / 5.0;
        ensure!(
            last < first * 0.9,
            "{update:?}: loss {first} → {last}, no learning"
        );

        // The EMA state and idle counters are in the store, so a checkpoint holds them.
        let dir = TempDir::new("vq-checkpoint")?;
        let path = dir.path().join("vq.safetensors");
        Checkpoint::from_params(&params)?.save(&path)?;
        let (other, vae) = tiny_vqvae(123, update)?;
        Checkpoint::load(&path, &CPU)?.restore(&other)?;
        let saved = params.tensors()?;
        let names: Vec<&str> = match update {
            CodebookUpdate::Gradient => vec!["vq.codebook", "vq.idle_steps"],
            CodebookUpdate::Ema { .. } => {
                vec!["vq.codebook", "vq.ema_count", "vq.ema_sum", "vq.idle_steps"]
            }
        };
        for name in names {
            let t = saved
                .get(name)
                .ok_or(anyhow::anyhow!("{name} not in the store"))?;
            let restored = match name {
                "vq.codebook" => vae.quantizer().codebook().clone(),
                "vq.idle_steps" => vae
                    .quantizer()
                    .idle_steps()
                    .cloned()
                    .ok_or(anyhow::anyhow!("idle"))?,
                "vq.ema_count" => vae
                    .quantizer()
                    .ema_state()
                    .map(|s| s.0.clone())
                    .ok_or(anyhow::anyhow!("ema"))?,
                _ => vae
                    .quantizer()
                    .ema_state()
                    .map(|s| s.1.clone())
                    .ok_or(anyhow::anyhow!("ema"))?,
            };
            assert_bit_identical(name, &restored, t)?;
        }
    }
    Ok(())
}
