//! Convolutional encoder and decoder: stage geometry against PyTorch's size formulas,
//! round-trip shapes for several image sizes, values against PyTorch for an odd size that
//! needs output padding and a crop, and finite-difference gradients through both (which
//! checks candle's conv-transpose backward with output padding, and our crop).

mod common;

use anyhow::{Result, ensure};
use candle_core::{DType, Module, Tensor};
use candle_vae::{
    Activation, ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEncoderConfig, Dims, ElboLoss,
    ElboLossConfig, Encoder, GaussianMean, ImageShape, NoiseSource, ParamStore, StandardLikelihood,
    Vae,
};
use common::{assert_close, dev, scalar, tensor, values};

/// PyTorch's `Conv2d` output size: ⌊(s + 2p − d(k − 1) − 1)/stride⌋ + 1.
fn torch_conv_out(s: usize, k: usize, stride: usize, p: usize) -> usize {
    (s + 2 * p - (k - 1) - 1) / stride + 1
}

/// PyTorch's `ConvTranspose2d` output size: (s − 1)·stride − 2p + d(k − 1) + output_padding + 1.
fn torch_deconv_out(s: usize, k: usize, stride: usize, p: usize, output_padding: usize) -> usize {
    (s - 1) * stride + (k - 1) + output_padding + 1 - 2 * p
}

/// (channels, height, width, stage widths) covering even, odd and mixed sides.
const GEOMETRIES: [(usize, usize, usize, &[usize]); 5] = [
    (1, 28, 20, &[8, 16]),
    (1, 28, 28, &[8, 16, 16]),
    (3, 64, 64, &[4, 8, 8, 8]),
    (1, 7, 5, &[2, 3]),
    (2, 9, 14, &[3, 4, 5]),
];

device_test!(stage_sizes_follow_pytorchs_formulas);
fn stage_sizes_follow_pytorchs_formulas() -> Result<()> {
    for (c, h, w, stages) in GEOMETRIES {
        let config = ConvEncoderConfig::new(ImageShape::new(c, h, w), stages, 4);
        let sizes = config.stage_sizes();
        assert_eq!(sizes.len(), stages.len() + 1);
        assert_eq!(sizes[0], (h, w));
        for i in 1..sizes.len() {
            let (ph, pw) = sizes[i - 1];
            // Each encoder stage is Conv2d(k=4, stride=2, padding=1).
            assert_eq!(
                sizes[i],
                (torch_conv_out(ph, 4, 2, 1), torch_conv_out(pw, 4, 2, 1)),
                "{h}×{w} stage {i}"
            );
            // The mirrored ConvTranspose2d(k=4, stride=2, padding=1, output_padding=op) with
            // op = 1 where either side was odd lands on the side, or one past it (then cropped).
            let op = usize::from(ph % 2 == 1 || pw % 2 == 1);
            let (dh, dw) = (
                torch_deconv_out(sizes[i].0, 4, 2, 1, op),
                torch_deconv_out(sizes[i].1, 4, 2, 1, op),
            );
            ensure!(
                dh >= ph && dh <= ph + 1 && dw >= pw && dw <= pw + 1,
                "{h}×{w} stage {i}: deconv gives {dh}×{dw} for {ph}×{pw}"
            );
        }
    }
    // The documented examples.
    let sizes = ConvEncoderConfig::new(ImageShape::new(1, 28, 28), &[1, 1, 1], 1).stage_sizes();
    assert_eq!(sizes, vec![(28, 28), (14, 14), (7, 7), (3, 3)]);
    let sizes = ConvEncoderConfig::new(ImageShape::new(1, 64, 64), &[1, 1, 1, 1], 1).stage_sizes();
    assert_eq!(sizes, vec![(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]);
    Ok(())
}

device_test!(round_trip_shapes_for_many_image_sizes);
fn round_trip_shapes_for_many_image_sizes() -> Result<()> {
    for (c, h, w, stages) in GEOMETRIES {
        for (likelihood, p) in [
            (StandardLikelihood::Bernoulli, 1),
            (
                StandardLikelihood::gaussian_per_element(GaussianMean::Sigmoid),
                2,
            ),
        ] {
            let store = ParamStore::new(1);
            let vb = store.var_builder(DType::F32, &dev());
            let image = ImageShape::new(c, h, w);
            let enc = ConvEncoder::new(
                &ConvEncoderConfig::new(image, stages, 3).with_hidden(8),
                vb.pp("enc"),
            )?;
            let dec = ConvDecoder::new(
                &ConvDecoderConfig::new(3, image, stages)
                    .with_hidden(8)
                    .with_params_per_element(p),
                vb.pp("dec"),
            )?;
            assert_eq!(enc.data_shape(), vec![c, h, w]);
            assert_eq!(dec.data_shape(), vec![p * c, h, w]);
            let xs = NoiseSource::new(2).uniform((2, c, h, w), DType::F32, &dev())?;
            let q = enc.encode(&xs)?;
            assert_eq!(q.mean().dims(), &[2, 3]);
            let out = dec.forward(q.mean())?;
            assert_eq!(out.dims(), &[2, p * c, h, w], "{c}×{h}×{w}, P = {p}");
            let vae = Vae::new(enc, dec, likelihood)?;
            let pass = vae.forward_samples_t(&xs, 2, &mut NoiseSource::new(3), true)?;
            assert_eq!(pass.params.dims(), &[2, 2, p * c, h, w]);
            let elbo = ElboLoss::new(ElboLossConfig::default())?.forward(&pass, &xs)?;
            ensure!(scalar(&elbo.loss)?.is_finite(), "{h}×{w}: loss not finite");
            // Backward works for every geometry (candle's conv2d backward fails on maps
            // whose sides differ in parity unless the encoder evens them out), and every
            // parameter gets a gradient.
            let grads = elbo.loss.backward()?;
            for (name, var) in store.named_vars()? {
                ensure!(
                    grads.get(var.as_tensor()).is_some(),
                    "{h}×{w}: no gradient for {name}"
                );
            }
            assert_eq!(vae.reconstruct(&xs)?.dims(), &[2, c, h, w]);
            assert_eq!(
                vae.sample(3, DType::F32, &dev(), &mut NoiseSource::new(4))?
                    .dims(),
                &[3, c, h, w]
            );
        }
    }
    Ok(())
}

// ---- Values against PyTorch ------------------------------------------------------------
//
// Produced by PyTorch 2.15 (`$HOME/torch-venv/bin/python conv_golden.py`), conv_golden.py:
//
// import torch
// import torch.nn.functional as F
//
//
// def sinw(shape, p, offset=0.0):
//     n = 1
//     for s in shape:
//         n *= s
//     j = torch.arange(n, dtype=torch.float64)
//     return (offset + 0.6 * torch.sin(0.53 * j + 0.9 * p)).reshape(shape).float()
//
//
// def sinb(shape, p):
//     # Biases shifted up so that few ReLUs are dead and every path carries signal.
//     return sinw(shape, p, 0.5)
//
//
// # ConvEncoder(image 1x7x5, channels [2, 3], latent 2) and ConvDecoder(latent 2, image 1x7x5,
// # channels [2, 3]): stages 7x5 -> 3x2 -> 1x1.
// enc = {
//     "conv1.weight": sinw((2, 1, 4, 4), 0), "conv1.bias": sinb((2,), 1),
//     "conv2.weight": sinw((3, 2, 4, 4), 2), "conv2.bias": sinb((3,), 3),
//     "mean.weight": sinw((2, 3), 4), "mean.bias": sinb((2,), 5),
//     "log_var.weight": sinw((2, 3), 6), "log_var.bias": sinb((2,), 7),
// }
// dec = {
//     "project.weight": sinw((3, 2), 8), "project.bias": sinb((3,), 9),
//     "deconv2.weight": sinw((3, 2, 4, 4), 10), "deconv2.bias": sinb((2,), 11),
//     "deconv1.weight": sinw((2, 1, 4, 4), 12), "deconv1.bias": sinb((1,), 13),
// }
// x = ((torch.sin(0.77 * torch.arange(70, dtype=torch.float64)) + 1) / 2).reshape(2, 1, 7, 5).float()
// z = torch.cos(1.9 * torch.arange(4, dtype=torch.float64)).reshape(2, 2).float()
// with torch.no_grad():
//     h = F.relu(F.conv2d(x, enc["conv1.weight"], enc["conv1.bias"], stride=2, padding=1))
//     assert h.shape[2:] == (3, 2)
//     h = F.relu(F.conv2d(h, enc["conv2.weight"], enc["conv2.bias"], stride=2, padding=1))
//     assert h.shape[2:] == (1, 1)
//     h = h.flatten(1)
//     mu = F.linear(h, enc["mean.weight"], enc["mean.bias"])
//     logvar = F.linear(h, enc["log_var.weight"], enc["log_var.bias"])
//
//     g = F.relu(F.linear(z, dec["project.weight"], dec["project.bias"])).reshape(2, 3, 1, 1)
//     g = F.conv_transpose2d(g, dec["deconv2.weight"], dec["deconv2.bias"], stride=2, padding=1, output_padding=1)
//     assert g.shape[2:] == (3, 3)
//     g = F.relu(g[:, :, :3, :2])
//     g = F.conv_transpose2d(g, dec["deconv1.weight"], dec["deconv1.bias"], stride=2, padding=1, output_padding=1)
//     assert g.shape[2:] == (7, 5)
// for label, t in [("ENC_MU", mu), ("ENC_LOGVAR", logvar), ("DEC_OUT", g)]:
//     print(f"const {label}: [f64; {t.numel()}] = [" + ", ".join("%.9g" % v for v in t.flatten().tolist()) + "];")

const ENC_MU: [f64; 4] = [-1.49633706, -0.635867178, -1.31094289, -1.90271139];
const ENC_LOGVAR: [f64; 4] = [0.25285399, 2.32433605, -1.01974106, 2.45528126];
const DEC_OUT: [f64; 70] = [
    0.0436326154,
    0.131130323,
    0.0418405868,
    -0.0337314904,
    -0.0996225253,
    0.117643341,
    -0.192634165,
    -0.0676068366,
    -0.104965918,
    0.104179606,
    0.169349641,
    0.322161824,
    0.336954027,
    0.438616127,
    0.349441141,
    -0.547652304,
    -0.637097597,
    -0.483812928,
    -0.322439224,
    -0.240380794,
    0.457733274,
    0.498970091,
    0.698233604,
    0.287377238,
    0.394638449,
    0.0986778587,
    0.0667213574,
    -0.241121143,
    -0.067682445,
    -0.187628776,
    -0.329556406,
    -0.483531892,
    -0.262648106,
    -0.127462775,
    0.0140665323,
    0.0526913181,
    0.115225114,
    -0.0772020817,
    -0.0751434788,
    -0.17668426,
    -0.271620125,
    -0.75319612,
    -0.505155921,
    -0.347331911,
    -0.0315411314,
    0.407023877,
    0.69257319,
    0.874187529,
    0.688964725,
    0.631636977,
    -0.280173093,
    -0.185770601,
    -0.297771126,
    -0.187736422,
    -0.289944023,
    0.0964234024,
    -0.0797477663,
    0.110463001,
    -0.0626539662,
    0.121088095,
    0.0806201771,
    0.0156026892,
    -0.158982933,
    -0.00520384312,
    -0.0573257208,
    -0.209200025,
    -0.243847966,
    -0.0997055098,
    -0.0311809927,
    0.030319633,
];

/// (name, phase index p, bias offset) as in the script.
const GOLDEN_PARAMS: [(&str, usize, f64); 14] = [
    ("enc.conv1.weight", 0, 0.0),
    ("enc.conv1.bias", 1, 0.5),
    ("enc.conv2.weight", 2, 0.0),
    ("enc.conv2.bias", 3, 0.5),
    ("enc.mean.weight", 4, 0.0),
    ("enc.mean.bias", 5, 0.5),
    ("enc.log_var.weight", 6, 0.0),
    ("enc.log_var.bias", 7, 0.5),
    ("dec.project.weight", 8, 0.0),
    ("dec.project.bias", 9, 0.5),
    ("dec.deconv2.weight", 10, 0.0),
    ("dec.deconv2.bias", 11, 0.5),
    ("dec.deconv1.weight", 12, 0.0),
    ("dec.deconv1.bias", 13, 0.5),
];

device_test!(odd_sized_conv_model_matches_pytorch);
fn odd_sized_conv_model_matches_pytorch() -> Result<()> {
    let store = ParamStore::new(0);
    let vb = store.var_builder(DType::F32, &dev());
    let image = ImageShape::new(1, 7, 5);
    let enc = ConvEncoder::new(&ConvEncoderConfig::new(image, &[2, 3], 2), vb.pp("enc"))?;
    let dec = ConvDecoder::new(&ConvDecoderConfig::new(2, image, &[2, 3]), vb.pp("dec"))?;
    let vars = store.named_vars()?;
    assert_eq!(
        vars.len(),
        GOLDEN_PARAMS.len(),
        "tensor names: {:?}",
        vars.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    for (name, var) in vars {
        let (_, p, offset) = GOLDEN_PARAMS
            .iter()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(|| anyhow::anyhow!("unexpected tensor {name}"))?;
        let data: Vec<f32> = (0..var.elem_count())
            .map(|j| (offset + 0.6 * (0.53 * j as f64 + 0.9 * *p as f64).sin()) as f32)
            .collect();
        var.set(&Tensor::from_vec(data, var.shape(), &dev())?)?;
    }
    let x: Vec<f64> = (0..70)
        .map(|i| (((0.77 * i as f64).sin() + 1.0) / 2.0) as f32 as f64)
        .collect();
    let z: Vec<f64> = (0..4)
        .map(|i| (1.9 * i as f64).cos() as f32 as f64)
        .collect();
    let q = enc.encode(&tensor(&x, &[2, 1, 7, 5])?.to_dtype(DType::F32)?)?;
    let out = dec.forward(&tensor(&z, &[2, 2])?.to_dtype(DType::F32)?)?;
    assert_eq!(out.dims(), &[2, 1, 7, 5]);
    // f32 on both sides through ≤ 3 layers with ≤ 48-term sums of O(1) values: errors of
    // a few 1e-7; golden printed to 9 digits. 1e-5 absolute.
    for (what, got, want) in [
        ("mean", values(q.mean())?, &ENC_MU[..]),
        ("log_var", values(q.log_var())?, &ENC_LOGVAR[..]),
        ("decoder", values(&out)?, &DEC_OUT[..]),
    ] {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_close(&format!("{what}[{i}]"), *g, *w, 1e-5)?;
        }
    }
    Ok(())
}

// ---- Finite differences ----------------------------------------------------------------

/// Central differences of `f` with respect to every element of every parameter in
/// `store` (and of `extra`), against autograd. f64, tanh activations (smooth), h = 1e-5:
/// truncation h²/6·|f‴| ~ 1e-10 and rounding ε|f|/h ~ 1e-10, so 1e-6·max(1, |g|) leaves a
/// margin of 10⁴.
fn check_gradients(
    what: &str,
    store: &ParamStore,
    extra: &[(&str, &candle_core::Var)],
    f: &dyn Fn() -> Result<Tensor>,
) -> Result<usize> {
    let grads = f()?.backward()?;
    let mut vars = store.named_vars()?;
    vars.extend(extra.iter().map(|(n, v)| (n.to_string(), (*v).clone())));
    let mut checked = 0;
    for (name, var) in vars {
        let g = values(
            grads
                .get(var.as_tensor())
                .ok_or_else(|| anyhow::anyhow!("{what}: no gradient for {name}"))?,
        )?;
        let original = values(var.as_tensor())?;
        for i in 0..original.len() {
            let h = 1e-5;
            let eval = |delta: f64| -> Result<f64> {
                let mut moved = original.clone();
                moved[i] += delta;
                var.set(&Tensor::from_vec(moved, var.shape(), &dev())?)?;
                scalar(&f()?)
            };
            let fd = (eval(h)? - eval(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(original.clone(), var.shape(), &dev())?)?;
            assert_close(
                &format!("{what}: ∂/∂{name}[{i}]"),
                g[i],
                fd,
                1e-6 * g[i].abs().max(1.0),
            )?;
            checked += 1;
        }
    }
    Ok(checked)
}

device_test!(conv_decoder_gradients_match_finite_differences);
fn conv_decoder_gradients_match_finite_differences() -> Result<()> {
    // 7×5: both stages use output padding, the first also crops a column (3×3 → 3×2).
    // 6×6: output padding without a crop on the inner stage, none on the outer.
    for (h, w, stages) in [(7, 5, &[2usize, 3][..]), (6, 6, &[2, 2][..])] {
        let store = ParamStore::new(5);
        let vb = store.var_builder(DType::F64, &dev());
        let image = ImageShape::new(1, h, w);
        let dec = ConvDecoder::new(
            &ConvDecoderConfig::new(2, image, stages).with_activation(Activation::Tanh),
            vb.pp("dec"),
        )?;
        let z = candle_core::Var::from_tensor(&tensor(&[0.4, -0.9, 1.3, 0.2], &[2, 2])?)?;
        // A fixed random linear functional of the output, so every output pixel matters
        // with its own weight (a crop keeping the wrong rows would change the gradient).
        let r = NoiseSource::new(6).standard_normal((2, 1, h, w), DType::F64, &dev())?;
        let f = || -> Result<Tensor> { Ok((dec.forward(z.as_tensor())? * &r)?.sum_all()?) };
        let n = check_gradients(&format!("ConvDecoder {h}×{w}"), &store, &[("z", &z)], &f)?;
        ensure!(n > 50, "only {n} gradients checked");
    }
    Ok(())
}

device_test!(conv_encoder_gradients_match_finite_differences);
fn conv_encoder_gradients_match_finite_differences() -> Result<()> {
    let store = ParamStore::new(7);
    let vb = store.var_builder(DType::F64, &dev());
    let enc = ConvEncoder::new(
        &ConvEncoderConfig::new(ImageShape::new(1, 7, 5), &[2, 3], 2)
            .with_activation(Activation::Tanh),
        vb.pp("enc"),
    )?;
    let x = candle_core::Var::from_tensor(&NoiseSource::new(8).uniform(
        (2, 1, 7, 5),
        DType::F64,
        &dev(),
    )?)?;
    let a = tensor(&[0.7, -1.1, 0.4, 0.9], &[2, 2])?;
    let b = tensor(&[-0.3, 0.5, 1.2, -0.8], &[2, 2])?;
    let f = || -> Result<Tensor> {
        let q = enc.encode(x.as_tensor())?;
        Ok(((q.mean() * &a)?.sum_all()? + (q.log_var() * &b)?.sum_all()?)?)
    };
    let n = check_gradients("ConvEncoder 7×5", &store, &[("x", &x)], &f)?;
    ensure!(n > 100, "only {n} gradients checked");
    Ok(())
}
