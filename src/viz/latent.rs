//! Latent codes worth decoding: the 2-D manifold grid, interpolations and traversals.
//!
//! Each function returns a `(M, D)` tensor of latent codes laid out so that decoding it
//! and tiling the images with [`image_grid`](super::image_grid) gives the picture:
//! one row of the grid per row of the layout described.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result, ensure};

/// Φ⁻¹(p), the quantile function of the standard normal distribution.
///
/// Wichura's algorithm AS241 (PPND16, *Applied Statistics* 37(3), 1988): rational
/// approximations on three ranges of p, with a relative error below 10⁻¹⁶ — the algorithm
/// behind Python's `statistics.NormalDist.inv_cdf` and R's `qnorm`.
///
/// Returns −∞ at 0, +∞ at 1 and NaN outside [0, 1] or for NaN.
///
/// ```
/// # use candle_vae::viz::inverse_normal_cdf;
/// assert!((inverse_normal_cdf(0.975) - 1.959_963_984_540_054).abs() < 1e-15);
/// assert_eq!(inverse_normal_cdf(0.5), 0.0);
/// ```
// The coefficients are printed as published (20 significant digits).
#[allow(clippy::excessive_precision)]
pub fn inverse_normal_cdf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        let num = poly(
            r,
            &[
                3.387_132_872_796_366_608_0,
                1.331_416_678_917_843_774_5e2,
                1.971_590_950_306_551_442_7e3,
                1.373_169_376_550_946_112_5e4,
                4.592_195_393_154_987_145_7e4,
                6.726_577_092_700_870_085_3e4,
                3.343_057_558_358_812_810_5e4,
                2.509_080_928_730_122_672_7e3,
            ],
        );
        let den = poly(
            r,
            &[
                1.0,
                4.231_333_070_160_091_125_2e1,
                6.871_870_074_920_579_083_0e2,
                5.394_196_021_424_751_107_7e3,
                2.121_379_430_158_659_586_7e4,
                3.930_789_580_009_271_061_0e4,
                2.872_908_573_572_194_267_4e4,
                5.226_495_278_852_854_561_0e3,
            ],
        );
        return q * num / den;
    }
    let tail = if q < 0.0 { p } else { 1.0 - p };
    let r = (-tail.ln()).sqrt();
    let value = if r <= 5.0 {
        let r = r - 1.6;
        poly(
            r,
            &[
                1.423_437_110_749_683_577_34,
                4.630_337_846_156_545_295_90,
                5.769_497_221_460_691_405_50,
                3.647_848_324_763_204_605_04,
                1.270_458_252_452_368_382_58,
                2.417_807_251_774_506_117_70e-1,
                2.272_384_498_926_918_458_33e-2,
                7.745_450_142_783_414_076_40e-4,
            ],
        ) / poly(
            r,
            &[
                1.0,
                2.053_191_626_637_758_821_87,
                1.676_384_830_183_803_849_40,
                6.897_673_349_851_000_045_50e-1,
                1.481_039_764_274_800_745_90e-1,
                1.519_866_656_361_645_719_66e-2,
                5.475_938_084_995_344_946_00e-4,
                1.050_750_071_644_416_843_24e-9,
            ],
        )
    } else {
        let r = r - 5.0;
        poly(
            r,
            &[
                6.657_904_643_501_103_777_20,
                5.463_784_911_164_114_369_90,
                1.784_826_539_917_291_335_80,
                2.965_605_718_285_048_912_30e-1,
                2.653_218_952_657_612_309_30e-2,
                1.242_660_947_388_078_438_60e-3,
                2.711_555_568_743_487_578_15e-5,
                2.010_334_399_292_288_132_65e-7,
            ],
        ) / poly(
            r,
            &[
                1.0,
                5.998_322_065_558_879_376_90e-1,
                1.369_298_809_227_358_053_10e-1,
                1.487_536_129_085_061_485_25e-2,
                7.868_691_311_456_132_591_00e-4,
                1.846_318_317_510_054_681_80e-5,
                1.421_511_758_316_445_888_70e-7,
                2.044_263_103_389_939_785_64e-15,
            ],
        )
    };
    if q < 0.0 { -value } else { value }
}

/// c₀ + c₁x + … by Horner's rule.
fn poly(x: f64, coefficients: &[f64]) -> f64 {
    coefficients.iter().rev().fold(0.0, |acc, &c| acc * x + c)
}

/// Φ⁻¹((j + ½) / steps) for j = 0 … steps − 1: `steps` equally likely points of N(0, 1),
/// the values along one axis of the manifold grid (±1.96 at the ends for 20 steps).
pub fn normal_quantiles(steps: usize) -> Vec<f64> {
    (0..steps)
        .map(|j| inverse_normal_cdf((j as f64 + 0.5) / steps as f64))
        .collect()
}

/// The latent codes of the learned 2-D manifold (Kingma & Welling 2013, Fig. 4): a
/// `steps × steps` grid of equally spaced points on the unit square, mapped through the
/// inverse Gaussian CDF so that each covers equal prior mass.
///
/// Row r (top to bottom) holds z₂ = Φ⁻¹(1 − (r + ½)/steps), column c (left to right)
/// z₁ = Φ⁻¹((c + ½)/steps): z₁ grows to the right and z₂ upwards, as on a plot.
///
/// # Shapes
/// → `(steps², 2)`, row-major over the grid.
///
/// # Errors
/// [`Error::InvalidConfig`] if `steps` is 0; candle's error for a bad `dtype`/`device`.
pub fn manifold_latents(steps: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    ensure(steps > 0, "manifold_latents", "steps", steps, "must be > 0")?;
    let axis = normal_quantiles(steps);
    let mut values = Vec::with_capacity(2 * steps * steps);
    for r in 0..steps {
        for &z1 in &axis {
            values.push(z1);
            values.push(axis[steps - 1 - r]);
        }
    }
    Ok(Tensor::from_vec(values, (steps * steps, 2), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// Straight lines in latent space: row p goes from `from[p]` to `to[p]` in `steps`
/// equal steps, both ends included: z = (1 − t)·from + t·to, t = j / (steps − 1).
///
/// # Shapes
/// `from`, `to`: `(P, D)` → `(P·steps, D)`.
///
/// # Errors
/// [`Error::Shape`] if the two differ in shape or are not rank 2;
/// [`Error::InvalidConfig`] if `steps` < 2.
pub fn interpolation_latents(from: &Tensor, to: &Tensor, steps: usize) -> Result<Tensor> {
    ensure(
        steps >= 2,
        "interpolation_latents",
        "steps",
        steps,
        "must be ≥ 2",
    )?;
    if from.rank() != 2 || from.dims() != to.dims() {
        return Err(Error::shape(
            "interpolation_latents",
            format!("`to` of the same (P, D) shape as `from` {:?}", from.dims()),
            to.dims(),
        ));
    }
    let (p, d) = from.dims2()?;
    let t: Vec<f64> = (0..steps).map(|j| j as f64 / (steps - 1) as f64).collect();
    let t = Tensor::from_vec(t, (1, steps, 1), &Device::Cpu)?
        .to_dtype(from.dtype())?
        .to_device(from.device())?;
    let a = from.unsqueeze(1)?;
    let b = to.unsqueeze(1)?;
    // a + t·(b − a), broadcast to (P, steps, D).
    let line = a.broadcast_add(&(b - &a)?.broadcast_mul(&t)?)?;
    Ok(line.reshape((p * steps, d))?)
}

/// Traversals of single latent dimensions: row i holds `base` with dimension `dims[i]`
/// set to each of `values` in turn (Higgins et al. 2017, Fig. 7).
///
/// # Shapes
/// `base`: `(D,)` or `(1, D)` → `(dims.len()·values.len(), D)`.
///
/// # Errors
/// [`Error::Shape`] if `base` is not one code; [`Error::InvalidConfig`] if a dimension is
/// out of range or `values` is empty.
pub fn traversal_latents(base: &Tensor, dims: &[usize], values: &[f64]) -> Result<Tensor> {
    let d = base.elem_count();
    if !(base.rank() == 1 || (base.rank() == 2 && base.dims()[0] == 1)) {
        return Err(Error::shape(
            "traversal_latents",
            "one latent code (D,) or (1, D)",
            base.dims(),
        ));
    }
    ensure(
        !values.is_empty(),
        "traversal_latents",
        "values",
        values,
        "must not be empty",
    )?;
    if let Some(&bad) = dims.iter().find(|&&k| k >= d) {
        return Err(Error::config(
            "traversal_latents",
            "dims",
            bad,
            "every dimension must be < the latent width",
        ));
    }
    let host: Vec<f64> = base
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let mut rows = Vec::with_capacity(dims.len() * values.len() * d);
    for &k in dims {
        for &v in values {
            let mut z = host.clone();
            z[k] = v;
            rows.extend(z);
        }
    }
    Ok(
        Tensor::from_vec(rows, (dims.len() * values.len(), d), &Device::Cpu)?
            .to_dtype(base.dtype())?
            .to_device(base.device())?,
    )
}
