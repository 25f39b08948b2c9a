//! The fused convolution kernels against candle's `conv2d` / `conv_transpose2d`: values and
//! gradients (input, weight, bias) agree to a relative error ≤ 1e-5 (max |fused − plain|
//! over max |plain|, per tensor) for the shapes of the convolutional VAE and for other
//! strides, paddings, output paddings and odd sizes, alone and followed by an activation
//! (a ReLU inside the kernel to 1e-5, others exactly the kernel's output activated); a whole VAE step agrees with the
//! kernels on and off; Adam's `backward_step`, whose conv layers put ∂W and ∂b straight into
//! its buffers, makes the same updates as `step` after candle's `backward`; layers the
//! kernels do not handle take candle's path.

mod common;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use candle_vae::fused::{self, FusedKernels, with_fused_kernels};
use candle_vae::{
    Activation, Adam, AdamConfig, ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig,
    ElboLoss, ElboLossConfig, ImageShape, NoiseSource, ParamStore, StandardLikelihood, Vae,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOL: f64 = 1e-5;

fn assert_close(name: &str, fused: &Tensor, plain: &Tensor) -> Result {
    Ok(common::assert_rel_close(name, fused, plain, TOL)?)
}

fn var(noise: &mut NoiseSource, shape: &[usize]) -> Result<Var> {
    let t = noise.standard_normal(shape, DType::F32, &Device::Cpu)?;
    Ok(Var::from_tensor(&t)?)
}

/// One layer's output and the gradients of Σ y·r (r fixed noise) for x, weight, bias.
fn value_and_grads(
    forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    x: &Var,
    w: &Var,
    b: &Var,
    seed: u64,
) -> Result<[Tensor; 4]> {
    let y = forward(x.as_tensor())?;
    let r = NoiseSource::new(seed).standard_normal(y.dims(), DType::F32, &Device::Cpu)?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let get = |v: &Var| -> Result<Tensor> { Ok(grads.get(v).ok_or("no gradient")?.clone()) };
    Ok([y, get(x)?, get(w)?, get(b)?])
}

/// Compares the kernel with candle's layer on the same Vars: y, ∂x, ∂w, ∂b.
fn compare(
    name: &str,
    x: &Var,
    w: &Var,
    b: &Var,
    fused_forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    plain_forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result {
    let fused = value_and_grads(fused_forward, x, w, b, 99)?;
    let plain = with_fused_kernels(FusedKernels::NONE, || {
        value_and_grads(plain_forward, x, w, b, 99)
    })?;
    for (what, (f, p)) in ["y", "dx", "dw", "db"].iter().zip(fused.iter().zip(&plain)) {
        assert_eq!(f.dims(), p.dims(), "{name} {what}");
        assert_close(&format!("{name} {what}"), f, p)?;
    }
    Ok(())
}

/// The kernel alone and followed by an activation, against candle's layer: alone, and
/// with a ReLU inside the kernel (value and its masked gradient), against `compare`; with
/// any other activation, exactly the kernel's output activated.
fn compare_with_activations(
    name: &str,
    [x, w, b]: [&Var; 3],
    activated: impl Fn(&Tensor, Activation) -> candle_core::Result<Tensor>,
    fused_forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    plain_forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result {
    compare(name, x, w, b, &fused_forward, &plain_forward)?;
    compare(
        &format!("{name} + relu"),
        x,
        w,
        b,
        |x| activated(x, Activation::Relu),
        |x| plain_forward(x)?.relu(),
    )?;
    let tanh = activated(x.as_tensor(), Activation::Tanh)?;
    let after = fused_forward(x.as_tensor())?.tanh()?;
    assert_eq!(
        common::values(&tanh)?,
        common::values(&after)?,
        "{name} + tanh: not tanh of the kernel's output"
    );
    Ok(())
}

#[test]
fn fused_conv2d_matches_candle_values_and_gradients() -> Result {
    // (batch, in, height, width, out, kernel (h, w), stride, padding): the encoder stages of
    // 1×28×28, 1×28×20 and 3×64×64 with (32, 64, …) channels, then other strides, paddings,
    // odd sides and a non-square kernel.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        (usize, usize),
        usize,
        usize,
    );
    let cases: [Case; 13] = [
        (5, 1, 28, 28, 32, (4, 4), 2, 1),
        (5, 32, 14, 14, 64, (4, 4), 2, 1),
        (4, 1, 28, 20, 32, (4, 4), 2, 1),
        (4, 32, 14, 10, 64, (4, 4), 2, 1),
        (2, 3, 64, 64, 32, (4, 4), 2, 1),
        (2, 64, 16, 16, 128, (4, 4), 2, 1),
        (2, 128, 8, 8, 256, (4, 4), 2, 1),
        (3, 3, 9, 7, 5, (3, 3), 1, 0),
        (3, 2, 6, 5, 4, (3, 3), 1, 1),
        (2, 3, 9, 9, 4, (3, 3), 2, 0),
        (3, 2, 7, 5, 3, (4, 4), 2, 1),
        (2, 2, 11, 11, 3, (3, 3), 3, 1),
        (2, 2, 8, 9, 3, (3, 2), 2, 1),
    ];
    for (i, &(n, c, h, w, o, (kh, kw), stride, padding)) in cases.iter().enumerate() {
        let mut noise = NoiseSource::new(i as u64);
        let x = var(&mut noise, &[n, c, h, w])?;
        let weight = var(&mut noise, &[o, c, kh, kw])?;
        let bias = var(&mut noise, &[o])?;
        let config = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let layer = Conv2d::new(
            weight.as_tensor().clone(),
            Some(bias.as_tensor().clone()),
            config,
        );
        let name = format!("conv2d {:?}", cases[i]);
        compare_with_activations(
            &name,
            [&x, &weight, &bias],
            |x, activation| fused::conv2d_activated(x, &layer, activation),
            |x| fused::conv2d(x, &layer),
            |x| layer.forward(x),
        )?;
    }
    Ok(())
}

#[test]
fn fused_conv_transpose2d_matches_candle_values_and_gradients() -> Result {
    // (batch, in, height, width, out, kernel (h, w), stride, padding, output padding): the
    // decoder stages of 1×28×28 (3 → 7 needs output padding 1), 1×28×20 and 3×64×64, then
    // other strides, paddings, odd sides and a non-square kernel.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        (usize, usize),
        usize,
        usize,
        usize,
    );
    let cases: [Case; 13] = [
        (3, 64, 3, 3, 64, (4, 4), 2, 1, 1),
        (3, 64, 7, 7, 32, (4, 4), 2, 1, 0),
        (3, 32, 14, 14, 1, (4, 4), 2, 1, 0),
        (3, 64, 7, 5, 32, (4, 4), 2, 1, 0),
        (3, 32, 14, 10, 1, (4, 4), 2, 1, 0),
        (2, 256, 4, 4, 128, (4, 4), 2, 1, 0),
        (2, 64, 16, 16, 32, (4, 4), 2, 1, 0),
        (2, 32, 32, 32, 3, (4, 4), 2, 1, 0),
        (3, 3, 5, 7, 4, (3, 3), 1, 0, 0),
        (3, 2, 6, 5, 4, (3, 3), 1, 1, 0),
        (2, 3, 5, 5, 2, (3, 3), 2, 0, 1),
        (2, 2, 4, 3, 3, (3, 3), 3, 1, 2),
        (2, 2, 5, 6, 3, (3, 2), 2, 1, 0),
    ];
    for (i, &(n, c, h, w, o, (kh, kw), stride, padding, output_padding)) in cases.iter().enumerate()
    {
        let mut noise = NoiseSource::new(100 + i as u64);
        let x = var(&mut noise, &[n, c, h, w])?;
        let weight = var(&mut noise, &[c, o, kh, kw])?;
        let bias = var(&mut noise, &[o])?;
        let config = ConvTranspose2dConfig {
            padding,
            output_padding,
            stride,
            dilation: 1,
        };
        let layer = ConvTranspose2d::new(
            weight.as_tensor().clone(),
            Some(bias.as_tensor().clone()),
            config,
        );
        let name = format!("conv_transpose2d {:?}", cases[i]);
        compare_with_activations(
            &name,
            [&x, &weight, &bias],
            |x, activation| fused::conv_transpose2d_activated(x, &layer, activation),
            |x| fused::conv_transpose2d(x, &layer),
            |x| layer.forward(x),
        )?;
    }
    Ok(())
}

#[test]
fn unsupported_convolutions_take_candles_path() -> Result {
    // Dilation 2, two groups, no bias, f64: the result is candle's, bit for bit.
    let mut noise = NoiseSource::new(7);
    let x = noise.standard_normal(&[2, 4, 9, 9], DType::F32, &Device::Cpu)?;
    let w = noise.standard_normal(&[6, 4, 3, 3], DType::F32, &Device::Cpu)?;
    let w_grouped = noise.standard_normal(&[6, 2, 3, 3], DType::F32, &Device::Cpu)?;
    let b = noise.standard_normal(&[6], DType::F32, &Device::Cpu)?;
    let dilated = Conv2dConfig {
        padding: 1,
        stride: 2,
        dilation: 2,
        ..Default::default()
    };
    let grouped = Conv2dConfig {
        padding: 1,
        groups: 2,
        ..Default::default()
    };
    let layers = [
        Conv2d::new(w.clone(), Some(b.clone()), dilated),
        Conv2d::new(w_grouped, Some(b.clone()), grouped),
        Conv2d::new(w.clone(), None, Conv2dConfig::default()),
    ];
    for layer in &layers {
        let got = fused::conv2d(&x, layer)?;
        let want = layer.forward(&x)?;
        assert_eq!(got.dims(), want.dims());
        assert_eq!(common::max_rel_err(&got, &want)?, 0.0);
    }
    let x64 = x.to_dtype(DType::F64)?;
    let layer64 = Conv2d::new(
        w.to_dtype(DType::F64)?,
        Some(b.to_dtype(DType::F64)?),
        Conv2dConfig::default(),
    );
    let got = fused::conv2d(&x64, &layer64)?;
    assert_eq!(got.dtype(), DType::F64);
    assert_eq!(common::max_rel_err(&got, &layer64.forward(&x64)?)?, 0.0);

    let wt = noise.standard_normal(&[4, 3, 3, 3], DType::F32, &Device::Cpu)?;
    let dilated_t = ConvTranspose2dConfig {
        padding: 1,
        output_padding: 0,
        stride: 2,
        dilation: 2,
    };
    let layer = ConvTranspose2d::new(wt, Some(b.narrow(0, 0, 3)?), dilated_t);
    assert_eq!(
        common::max_rel_err(&fused::conv_transpose2d(&x, &layer)?, &layer.forward(&x)?)?,
        0.0
    );
    Ok(())
}

/// Loss and every parameter's gradient of one ELBO step of a conv VAE (no Adam: the
/// gradients are compared before any update).
fn conv_vae_step(
    kernels: FusedKernels,
    image: ImageShape,
    stages: &[usize],
    n: usize,
) -> Result<Vec<Tensor>> {
    with_fused_kernels(kernels, || -> Result<Vec<Tensor>> {
        let params = ParamStore::new(5);
        let vb = params.var_builder(DType::F32, &Device::Cpu);
        let enc = ConvEncoder::new(&ConvEncoderConfig::new(image, stages, 4), vb.pp("enc"))?;
        let dec = ConvDecoder::new(&ConvDecoderConfig::new(4, image, stages), vb.pp("dec"))?;
        let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
        let mut noise = NoiseSource::new(6);
        let dims = [n, image.channels, image.height, image.width];
        let xs = noise.uniform(&dims, DType::F32, &Device::Cpu)?;
        let eps = noise.standard_normal(&[n, 4], DType::F32, &Device::Cpu)?;
        let out = vae.forward_with_noise_t(&xs, &eps, true)?;
        let loss = ElboLoss::new(ElboLossConfig::default())?
            .forward(&out, &xs)?
            .loss;
        let grads = loss.backward()?;
        let mut tensors = vec![loss];
        for (name, v) in params.named_vars()? {
            tensors.push(
                grads
                    .get(&v)
                    .ok_or(format!("no gradient for {name}"))?
                    .clone(),
            );
        }
        Ok(tensors)
    })
}

#[test]
fn conv_vae_step_matches_with_the_conv_kernels_on_and_off() -> Result {
    for (image, stages) in [
        (ImageShape::new(1, 28, 28), &[8, 16, 16][..]),
        (ImageShape::new(1, 28, 20), &[8, 16][..]),
        (ImageShape::new(3, 64, 64), &[4, 8, 8, 8][..]),
    ] {
        let on = conv_vae_step(FusedKernels::ALL, image, stages, 6)?;
        let off = conv_vae_step(FusedKernels::ALL.with_conv(false), image, stages, 6)?;
        assert_eq!(on.len(), off.len());
        assert!(on.len() > 10);
        for (i, (a, b)) in on.iter().zip(&off).enumerate() {
            let what = if i == 0 {
                "loss".into()
            } else {
                format!("gradient {i}")
            };
            assert_close(&format!("{image:?} {what}"), a, b)?;
        }
    }
    Ok(())
}

#[test]
fn conv_gradients_repeat_bit_for_bit_whichever_thread_takes_a_block() -> Result {
    // A batch of 32 cuts every layer into blocks of a few images (4 per thread) that the
    // pool's threads take as they get to them; each block sums its own ∂W, and the sums are
    // added in block order, so the same step gives the same bits however the blocks were
    // shared out. On one thread there is nothing to share out.
    if candle_core::utils::barrier_pool().n_workers() == 0 {
        eprintln!("skipped: candle's pool has one thread (CANDLE_NUM_THREADS=1 or one core)");
        return Ok(());
    }
    let image = ImageShape::new(1, 28, 28);
    let stages = [16, 32];
    let first = conv_vae_step(FusedKernels::ALL, image, &stages, 32)?;
    assert!(first.len() > 10);
    for run in 1..5 {
        let again = conv_vae_step(FusedKernels::ALL, image, &stages, 32)?;
        for (i, (a, b)) in first.iter().zip(&again).enumerate() {
            common::assert_bit_identical(&format!("run {run}, tensor {i}"), a, b)?;
        }
    }
    Ok(())
}

/// Every parameter after `steps` Adam steps of a 3×16×16 conv VAE whose loss sums the ELBO
/// of `batches` batches of 4 through the same layers; the gradients reach Adam through
/// `backward_step` (the conv kernels write ∂W, ∂b into its buffers) if `sunk`, else
/// through candle's gradient store.
fn conv_adam_run(sunk: bool, batches: usize, steps: usize) -> Result<Vec<Tensor>> {
    let image = ImageShape::new(3, 16, 16);
    let params = ParamStore::new(8);
    let vb = params.var_builder(DType::F32, &Device::Cpu);
    let stages = [8, 16];
    let enc = ConvEncoder::new(&ConvEncoderConfig::new(image, &stages, 4), vb.pp("enc"))?;
    let dec = ConvDecoder::new(&ConvDecoderConfig::new(4, image, &stages), vb.pp("dec"))?;
    let vae = Vae::new(enc, dec, StandardLikelihood::Bernoulli)?;
    let mut opt = Adam::from_store(&params, AdamConfig::new(1e-2))?;
    let elbo = ElboLoss::new(ElboLossConfig::default())?;
    let mut noise = NoiseSource::new(9);
    for _ in 0..steps {
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
        for _ in 0..batches {
            let xs = noise.uniform(&[4, 3, 16, 16], DType::F32, &Device::Cpu)?;
            let out = vae.forward_t(&xs, &mut noise, true)?;
            loss = (loss + elbo.forward(&out, &xs)?.loss)?;
        }
        if sunk {
            opt.backward_step(&loss)?;
        } else {
            opt.step(&loss.backward()?)?;
        }
    }
    Ok(params
        .named_vars()?
        .into_iter()
        .map(|(_, v)| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

#[test]
fn backward_step_through_conv_layers_makes_the_same_updates() -> Result {
    // One batch: each conv weight's gradient is written once, the same numbers candle
    // would have stored, so the parameters agree bit for bit after 3 steps (the buffers
    // are reused, never cleared). Two batches: the second gradient is added into the
    // buffer where candle adds it to its stored one.
    for batches in [1, 2] {
        let sunk = conv_adam_run(true, batches, 3)?;
        let stored = conv_adam_run(false, batches, 3)?;
        assert_eq!(sunk.len(), stored.len());
        assert!(sunk.len() >= 8, "conv weights and biases at least");
        for (i, (a, b)) in sunk.iter().zip(&stored).enumerate() {
            let what = format!("{batches} batch(es), parameter {i}");
            if batches == 1 {
                common::assert_bit_identical(&what, a, b)?;
            } else {
                common::assert_rel_close(&what, a, b, 1e-6)?;
            }
        }
    }
    Ok(())
}
