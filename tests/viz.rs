//! Pictures: PNGs decode back to the expected size and pixels; the latent grids hold the
//! codes they promise; Φ⁻¹ against high-precision values.

use std::io::BufReader;
use std::path::Path;

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_vae::viz::latent::normal_quantiles;
use candle_vae::viz::{
    GridConfig, PALETTE, ScatterConfig, image_grid, interpolation_latents, inverse_normal_cdf,
    manifold_latents, reconstruction_grid, save_grid, scatter, traversal_latents,
};
use candle_vae::{Error, ImageShape};

/// Decodes a PNG file: (width, height, colour type, bytes).
fn decode_png(path: &Path) -> Result<(u32, u32, png::ColorType, Vec<u8>)> {
    let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(path)?));
    let mut reader = decoder.read_info()?;
    let Some(size) = reader.output_buffer_size() else {
        bail!("PNG too large");
    };
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf)?;
    buf.truncate(info.buffer_size());
    Ok((info.width, info.height, info.color_type, buf))
}

/// Five 3×2 gray images; pixel k of image i is (10·i + k) / 60.
fn five_images() -> Result<Tensor> {
    let values: Vec<f32> = (0..5)
        .flat_map(|i| (0..6).map(move |k| (10 * i + k) as f32 / 60.0))
        .collect();
    Ok(Tensor::from_vec(values, (5, 6), &Device::Cpu)?)
}

fn byte(v: f32) -> u8 {
    (v * 255.0).round() as u8
}

#[test]
fn grid_png_decodes_to_the_expected_size_and_pixels() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("grid.png");
    let shape = ImageShape::new(1, 3, 2);
    let config = GridConfig::new(2).with_padding(1, 1.0);
    save_grid(&path, &five_images()?, shape, &config)?;

    let (width, height, color, bytes) = decode_png(&path)?;
    // 2 columns of width 2 and 3 rows of height 3, 1 pixel of padding around each tile.
    assert_eq!((width, height), (2 * 2 + 3, 3 * 3 + 4));
    assert_eq!(color, png::ColorType::Grayscale);
    let at = |x: usize, y: usize| bytes[y * width as usize + x];
    for i in 0..5 {
        let (x0, y0) = (1 + (i % 2) * 3, 1 + (i / 2) * 4);
        for row in 0..3 {
            for col in 0..2 {
                let expected = byte((10 * i + 2 * row + col) as f32 / 60.0);
                assert_eq!(at(x0 + col, y0 + row), expected, "image {i} ({row}, {col})");
            }
        }
    }
    // Padding is white; so is the empty sixth cell.
    assert_eq!(at(0, 0), 255);
    assert_eq!(at(3, 5), 255);
    assert_eq!(at(4, 9), 255);
    assert_eq!(at(5, 10), 255);
    Ok(())
}

#[test]
fn rgb_images_and_scaling() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rgb.png");
    // One 1×2 RGB image: a red pixel and a blue one, as (N, C, H, W).
    let image = Tensor::from_vec(
        vec![1f32, 0.0, 0.0, 0.0, 0.0, 1.0],
        (1, 3, 1, 2),
        &Device::Cpu,
    )?;
    let config = GridConfig::new(1).with_padding(0, 0.0).with_scale(3);
    save_grid(&path, &image, ImageShape::new(3, 1, 2), &config)?;
    let (width, height, color, bytes) = decode_png(&path)?;
    assert_eq!((width, height, color), (6, 3, png::ColorType::Rgb));
    for y in 0..3 {
        for x in 0..6 {
            let at = 3 * (y * 6 + x);
            let expected = if x < 3 { [255, 0, 0] } else { [0, 0, 255] };
            assert_eq!(&bytes[at..at + 3], &expected, "({x}, {y})");
        }
    }
    Ok(())
}

#[test]
fn values_are_clamped_and_shapes_checked() -> Result<()> {
    let images = Tensor::from_vec(vec![-0.5f32, 1.5, f32::NAN, 0.5], (1, 4), &Device::Cpu)?;
    let grid = image_grid(
        &images,
        ImageShape::new(1, 2, 2),
        &GridConfig::new(1).with_padding(0, 0.0),
    )?;
    let gray: Vec<u8> = grid.data().iter().step_by(3).copied().collect();
    assert_eq!(gray, vec![0, 255, 0, 128]);
    let wrong = image_grid(&images, ImageShape::new(1, 3, 3), &GridConfig::new(1));
    assert!(matches!(wrong, Err(Error::Shape { .. })), "{wrong:?}");
    let bad = image_grid(&images, ImageShape::new(1, 2, 2), &GridConfig::new(0));
    assert!(matches!(bad, Err(Error::InvalidConfig { .. })), "{bad:?}");
    Ok(())
}

#[test]
fn reconstructions_sit_under_their_originals() -> Result<()> {
    let shape = ImageShape::new(1, 1, 1);
    let originals = Tensor::new(&[[0.2f32], [0.4], [0.6]], &Device::Cpu)?;
    let recons = Tensor::new(&[[0.3f32], [0.5], [0.7]], &Device::Cpu)?;
    let config = GridConfig::new(2).with_padding(0, 1.0);
    let grid = reconstruction_grid(&originals, &recons, shape, &config)?;
    assert_eq!((grid.width(), grid.height()), (2, 4));
    let rows: Vec<Vec<u8>> = (0..4)
        .map(|y| (0..2).map(|x| grid.get(x, y).map_or(0, |c| c[0])).collect())
        .collect();
    let b = |v: f32| byte(v);
    assert_eq!(
        rows,
        vec![
            vec![b(0.2), b(0.4)],
            vec![b(0.3), b(0.5)],
            vec![b(0.6), 255],
            vec![b(0.7), 255]
        ]
    );
    let mismatch = reconstruction_grid(&originals, &recons.narrow(0, 0, 2)?, shape, &config);
    assert!(matches!(mismatch, Err(Error::Shape { .. })));
    Ok(())
}

#[test]
#[allow(clippy::excessive_precision)] // golden values as printed
fn inverse_normal_cdf_matches_high_precision_values() {
    // Golden values from mpmath at 40-50 digits:
    //   import mpmath; mpmath.mp.dps = 40
    //   ppf = lambda p: mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p) - 1)
    //   for p in ['1e-20', '1e-10', '0.001', '0.025', '0.05', '0.2', '0.6', '0.9',
    //             '0.975', '0.999', '0.9999999']: print(p, mpmath.nstr(ppf(p), 20))
    //   # 1e-300 and 1e-100 (erfinv loses them) by root-finding, mp.dps = 50:
    //   mpmath.findroot(lambda x: mpmath.log(mpmath.ncdf(x)) - mpmath.log(p), -30)
    let golden = [
        (1e-300, -37.047_096_299_361_199),
        (1e-100, -21.273_453_560_965_324),
        (1e-20, -9.262_340_089_798_407_6),
        (1e-10, -6.361_340_902_404_056_2),
        (0.001, -3.090_232_306_167_813_5),
        (0.025, -1.959_963_984_540_054_2),
        (0.05, -1.644_853_626_951_472_7),
        (0.2, -0.841_621_233_572_914_2),
        (0.5, 0.0),
        (0.6, 0.253_347_103_135_799_8),
        (0.9, 1.281_551_565_544_600_5),
        (0.975, 1.959_963_984_540_054_2),
        (0.999, 3.090_232_306_167_813_5),
        (0.999_999_9, 5.199_337_582_192_816_9),
    ];
    for (p, expected) in golden {
        let got = inverse_normal_cdf(p);
        // 1 − p loses digits for p near 1: allow for the rounding of p itself there.
        let tolerance = if p > 0.99999 { 1e-9 } else { 1e-14 };
        assert!(
            (got - expected).abs() <= tolerance * expected.abs().max(1.0),
            "Φ⁻¹({p}) = {got}, expected {expected}"
        );
    }
    assert_eq!(inverse_normal_cdf(0.0), f64::NEG_INFINITY);
    assert_eq!(inverse_normal_cdf(1.0), f64::INFINITY);
    assert!(inverse_normal_cdf(-0.1).is_nan());
    assert!(inverse_normal_cdf(1.1).is_nan());
    assert!(inverse_normal_cdf(f64::NAN).is_nan());
    // Odd symmetry and strict monotonicity across the three branches.
    let mut last = f64::NEG_INFINITY;
    for k in 1..10_000 {
        let p = k as f64 / 10_000.0;
        let x = inverse_normal_cdf(p);
        assert!(x > last, "not increasing at p = {p}");
        assert!(
            (x + inverse_normal_cdf(1.0 - p)).abs() < 1e-12,
            "asymmetric at {p}"
        );
        last = x;
    }
}

#[test]
fn manifold_grid_covers_equal_prior_mass() -> Result<()> {
    let z = manifold_latents(20, DType::F64, &Device::Cpu)?;
    assert_eq!(z.dims(), &[400, 2]);
    let z = z.to_vec2::<f64>()?;
    let q = 1.959_963_984_540_054; // Φ⁻¹(0.975): the outermost points are at (½)/20 mass.
    assert!((z[0][0] + q).abs() < 1e-12 && (z[0][1] - q).abs() < 1e-12);
    assert!((z[19][0] - q).abs() < 1e-12 && (z[19][1] - q).abs() < 1e-12);
    assert!((z[399][0] - q).abs() < 1e-12 && (z[399][1] + q).abs() < 1e-12);
    // z₁ grows along a row, z₂ falls down a column.
    assert!(z[1][0] > z[0][0] && z[1][1] == z[0][1]);
    assert!(z[20][1] < z[0][1] && z[20][0] == z[0][0]);
    let axis = normal_quantiles(20);
    assert!((axis[10] - 0.062_706_777_943_213_78).abs() < 1e-15);
    assert!(manifold_latents(0, DType::F32, &Device::Cpu).is_err());
    Ok(())
}

#[test]
fn interpolations_and_traversals_hold_the_promised_codes() -> Result<()> {
    let from = Tensor::new(&[[0f32, 0.0], [1.0, 2.0]], &Device::Cpu)?;
    let to = Tensor::new(&[[4f32, -4.0], [1.0, 2.0]], &Device::Cpu)?;
    let lines = interpolation_latents(&from, &to, 5)?.to_vec2::<f32>()?;
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0], vec![0.0, 0.0]);
    assert_eq!(lines[2], vec![2.0, -2.0]);
    assert_eq!(lines[4], vec![4.0, -4.0]);
    assert!(lines[5..].iter().all(|z| z == &vec![1.0, 2.0]));
    assert!(interpolation_latents(&from, &to, 1).is_err());

    let base = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu)?;
    let walk = traversal_latents(&base, &[2, 0], &[-1.0, 1.0])?.to_vec2::<f32>()?;
    assert_eq!(
        walk,
        vec![
            vec![0.5, -1.0, -1.0],
            vec![0.5, -1.0, 1.0],
            vec![-1.0, -1.0, 2.0],
            vec![1.0, -1.0, 2.0],
        ]
    );
    assert!(traversal_latents(&base, &[3], &[0.0]).is_err());
    Ok(())
}

#[test]
fn scatter_colours_points_by_label() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("scatter.png");
    let points = Tensor::new(&[[0f32, 0.0], [1.0, 1.0], [-1.0, -1.0]], &Device::Cpu)?;
    let config = ScatterConfig::default()
        .with_size(101)
        .with_range([-2.0, 2.0, -2.0, 2.0])
        .with_points(2.0, 1.0);
    let picture = scatter(&points, Some(&[3, 7, 3]), &config)?;
    picture.save_png(&path)?;
    let (width, height, color, bytes) = decode_png(&path)?;
    // The plot area plus fixed margins: 56 left, 52 right, 12 top, 30 bottom.
    assert_eq!((width, height), (56 + 101 + 52, 12 + 101 + 30));
    assert_eq!(color, png::ColorType::Rgb);
    let at = |x: usize, y: usize| {
        let i = 3 * (y * width as usize + x);
        [bytes[i], bytes[i + 1], bytes[i + 2]]
    };
    // (0, 0) maps to the centre of the plot; (1, 1) a quarter of the way in from the
    // top-right corner; opacity 1 paints the label's colour exactly.
    assert_eq!(at(56 + 50, 12 + 50), PALETTE[3]);
    assert_eq!(at(56 + 75, 12 + 25), PALETTE[7]);
    assert_eq!(at(56 + 25, 12 + 75), PALETTE[3]);
    // Far from every point the plot is white (or a grid line).
    let blank = at(56 + 90, 12 + 90);
    assert!(
        blank == [255, 255, 255] || blank == [225, 225, 225],
        "{blank:?}"
    );
    // The legend shows swatches for the labels present, 3 then 7.
    assert_eq!(at(56 + 101 + 12 + 5, 12 + 4 + 5), PALETTE[3]);
    assert_eq!(at(56 + 101 + 12 + 5, 12 + 4 + 18 + 5), PALETTE[7]);

    let wrong = scatter(&points, Some(&[1, 2]), &config);
    assert!(matches!(wrong, Err(Error::Shape { .. })));
    Ok(())
}
