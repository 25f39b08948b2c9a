//! Pictures of what a VAE learned, as PNG files, without a plotting stack.
//!
//! * [`image_grid`]: a batch of images tiled in rows, with padding; [`reconstruction_grid`]
//!   puts rows of originals above rows of their reconstructions.
//! * [`latent`]: the latent grids to decode — the 2-D manifold through the inverse Gaussian
//!   CDF (Kingma & Welling 2013, Fig. 4), interpolations, traversals — and an accurate
//!   [`inverse_normal_cdf`].
//! * [`scatter()`]: 2-D points (posterior means) coloured by label, rasterised by hand.
//!
//! Every picture is an [`RgbImage`]; [`RgbImage::save_png`] writes it (as 8-bit grayscale
//! when every pixel is gray, else RGB). Images come in as tensors of values in [0, 1],
//! laid out `(N, C·H·W)` or `(N, C, H, W)` with C = 1 (gray) or 3 (RGB), so any image size
//! works: 28×28 MNIST, 28×20 Frey Face, 64×64 Olivetti.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use candle_vae::ImageShape;
//! use candle_vae::viz::{GridConfig, image_grid};
//!
//! // Six 28×20 "faces": a gray ramp.
//! let images = Tensor::arange(0f32, 6.0, &Device::Cpu)?
//!     .affine(0.2, 0.0)?
//!     .reshape((6, 1))?
//!     .broadcast_as((6, 560))?;
//! let grid = image_grid(&images, ImageShape::new(1, 28, 20), &GridConfig::new(3))?;
//! // 3 columns × 2 rows of 20×28 tiles with 2 pixels of padding around each.
//! assert_eq!((grid.width(), grid.height()), (3 * 20 + 4 * 2, 2 * 28 + 3 * 2));
//! # Ok::<(), candle_vae::Error>(())
//! ```

pub mod latent;
pub mod scatter;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result, ensure};
use crate::shape::ImageShape;

pub use latent::{interpolation_latents, inverse_normal_cdf, manifold_latents, traversal_latents};
pub use scatter::{PALETTE, ScatterConfig, scatter};

/// An 8-bit RGB picture, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// A `width × height` picture filled with `color`.
    pub fn new(width: usize, height: usize, color: [u8; 3]) -> Self {
        Self {
            width,
            height,
            data: color.repeat(width * height),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, row-major, `[r, g, b]` each.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The colour at `(x, y)`, or `None` outside the picture.
    pub fn get(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = 3 * (y * self.width + x);
        Some([self.data[at], self.data[at + 1], self.data[at + 2]])
    }

    /// Sets the colour at `(x, y)`; outside the picture nothing happens (drawing clips).
    pub fn set(&mut self, x: usize, y: usize, color: [u8; 3]) {
        if x < self.width && y < self.height {
            let at = 3 * (y * self.width + x);
            self.data[at..at + 3].copy_from_slice(&color);
        }
    }

    /// Mixes `color` into `(x, y)` with opacity `alpha` ∈ [0, 1]; clips like [`set`](Self::set).
    pub fn blend(&mut self, x: usize, y: usize, color: [u8; 3], alpha: f32) {
        if let Some(old) = self.get(x, y) {
            let a = alpha.clamp(0.0, 1.0);
            let mix = |o: u8, c: u8| (f32::from(o) * (1.0 - a) + f32::from(c) * a).round() as u8;
            self.set(
                x,
                y,
                [
                    mix(old[0], color[0]),
                    mix(old[1], color[1]),
                    mix(old[2], color[2]),
                ],
            );
        }
    }

    /// Fills the rectangle `[x, x + w) × [y, y + h)`, clipped to the picture.
    pub fn fill_rect(&mut self, x: usize, y: usize, w: usize, h: usize, color: [u8; 3]) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                self.set(xx, yy, color);
            }
        }
    }

    /// Copies `other` with its top-left corner at `(x, y)`, clipped.
    pub fn paste(&mut self, other: &RgbImage, x: usize, y: usize) {
        for yy in 0..other.height {
            for xx in 0..other.width {
                if let Some(color) = other.get(xx, yy) {
                    self.set(x + xx, y + yy, color);
                }
            }
        }
    }

    /// Each pixel repeated `factor × factor` times (nearest neighbour); 0 acts as 1.
    pub fn upscale(&self, factor: usize) -> Self {
        let factor = factor.max(1);
        let mut out = Self::new(self.width * factor, self.height * factor, [0; 3]);
        for y in 0..out.height {
            for x in 0..out.width {
                if let Some(color) = self.get(x / factor, y / factor) {
                    out.set(x, y, color);
                }
            }
        }
        out
    }

    /// Whether every pixel has r = g = b.
    pub fn is_gray(&self) -> bool {
        self.data
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2])
    }

    /// The picture as PNG bytes: 8-bit grayscale if [`is_gray`](Self::is_gray), else RGB.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a picture with a side of 0 or over `u32::MAX`.
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        self.check_encodable()?;
        let mut bytes = Vec::new();
        self.write_png(&mut bytes).map_err(|e| {
            Error::io(
                "<in-memory PNG>",
                match e {
                    png::EncodingError::IoError(io) => io,
                    other => std::io::Error::other(other),
                },
            )
        })?;
        Ok(bytes)
    }

    fn check_encodable(&self) -> Result<()> {
        let fits = |n: usize| n > 0 && u32::try_from(n).is_ok();
        ensure(
            fits(self.width) && fits(self.height),
            "RgbImage",
            "width × height",
            (self.width, self.height),
            "a PNG needs sides in 1..=u32::MAX",
        )
    }

    /// Writes the picture to `path` as a PNG (see [`encode_png`](Self::encode_png)).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a picture with a side of 0 or over `u32::MAX`;
    /// [`Error::Io`] naming the file if it cannot be written.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        self.check_encodable()?;
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut writer = BufWriter::new(file);
        self.write_png(&mut writer).map_err(|e| match e {
            png::EncodingError::IoError(io) => Error::io(path, io),
            other => Error::io(path, std::io::Error::other(other)),
        })?;
        Ok(())
    }

    fn write_png<W: std::io::Write>(&self, writer: W) -> Result<(), png::EncodingError> {
        // Sides were checked by `check_encodable`.
        let mut encoder = png::Encoder::new(writer, self.width as u32, self.height as u32);
        encoder.set_depth(png::BitDepth::Eight);
        let gray = self.is_gray();
        encoder.set_color(if gray {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        let mut png = encoder.write_header()?;
        if gray {
            let luma: Vec<u8> = self.data.iter().step_by(3).copied().collect();
            png.write_image_data(&luma)?;
        } else {
            png.write_image_data(&self.data)?;
        }
        png.finish()
    }
}

/// Layout of an [`image_grid`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridConfig {
    /// Images per row.
    pub columns: usize,
    /// Pixels of padding around and between the tiles (before scaling).
    pub padding: usize,
    /// Gray level of the padding, in [0, 1].
    pub pad_value: f32,
    /// Integer up-scaling of the whole grid (nearest neighbour), ≥ 1.
    pub scale: usize,
}

impl Default for GridConfig {
    /// 10 columns, 2 pixels of white padding, no scaling.
    fn default() -> Self {
        Self::new(10)
    }
}

impl GridConfig {
    /// `columns` per row, 2 pixels of white padding, no scaling.
    pub fn new(columns: usize) -> Self {
        Self {
            columns,
            padding: 2,
            pad_value: 1.0,
            scale: 1,
        }
    }

    /// Sets the padding (pixels) and its gray level.
    #[must_use]
    pub fn with_padding(mut self, padding: usize, pad_value: f32) -> Self {
        self.padding = padding;
        self.pad_value = pad_value;
        self
    }

    /// Sets the up-scaling factor.
    #[must_use]
    pub fn with_scale(mut self, scale: usize) -> Self {
        self.scale = scale;
        self
    }

    /// Checks every rule.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `columns` or `scale` is 0 or `pad_value` is outside
    /// [0, 1].
    pub fn validate(&self) -> Result<()> {
        ensure(
            self.columns > 0,
            "GridConfig",
            "columns",
            self.columns,
            "must be > 0",
        )?;
        ensure(
            self.scale > 0,
            "GridConfig",
            "scale",
            self.scale,
            "must be > 0",
        )?;
        ensure(
            (0.0..=1.0).contains(&self.pad_value),
            "GridConfig",
            "pad_value",
            self.pad_value,
            "must be in [0, 1]",
        )
    }
}

/// A value in [0, 1] (clamped; NaN is 0) as a byte.
fn to_byte(v: f32) -> u8 {
    if v.is_nan() {
        0
    } else {
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// The images of a batch as host values, checked against `shape`.
fn host_images(images: &Tensor, shape: ImageShape) -> Result<(usize, Vec<f32>)> {
    let per_image = shape.elem_count();
    let n = images.dims().first().copied().unwrap_or(0);
    let fits = images.rank() >= 2
        && per_image > 0
        && images.elem_count() == n * per_image
        && (shape.channels == 1 || shape.channels == 3);
    if !fits {
        return Err(Error::shape(
            "viz",
            format!(
                "images (N, {per_image}) or (N, {}, {}, {}) with 1 or 3 channels",
                shape.channels, shape.height, shape.width
            ),
            images.dims(),
        ));
    }
    let values = images
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((n, values))
}

/// Draws image `i` of `values` (channel-major, as in `(N, C, H, W)`) at `(x, y)`.
fn draw_tile(
    canvas: &mut RgbImage,
    values: &[f32],
    i: usize,
    shape: ImageShape,
    x: usize,
    y: usize,
) {
    let plane = shape.height * shape.width;
    let base = i * shape.elem_count();
    for row in 0..shape.height {
        for col in 0..shape.width {
            let at = base + row * shape.width + col;
            let color = if shape.channels == 3 {
                [
                    to_byte(values[at]),
                    to_byte(values[at + plane]),
                    to_byte(values[at + 2 * plane]),
                ]
            } else {
                [to_byte(values[at]); 3]
            };
            canvas.set(x + col, y + row, color);
        }
    }
}

/// Tiles a batch of images row by row, `config.columns` per row, with padding.
///
/// # Shapes
/// `images`: `(N, C·H·W)` or `(N, C, H, W)` for `shape` = (C, H, W), values in [0, 1]
/// (clamped) → a picture of `columns·W + (columns+1)·padding` by
/// `rows·H + (rows+1)·padding` pixels, times `scale`, with rows = ⌈N / columns⌉.
///
/// # Errors
/// [`Error::Shape`] if `images` does not hold whole images of `shape` with 1 or 3
/// channels; [`Error::InvalidConfig`] for a bad `config`.
pub fn image_grid(images: &Tensor, shape: ImageShape, config: &GridConfig) -> Result<RgbImage> {
    config.validate()?;
    let (n, values) = host_images(images, shape)?;
    let columns = config.columns.min(n.max(1));
    let rows = n.div_ceil(columns).max(1);
    let pad = config.padding;
    let mut canvas = RgbImage::new(
        columns * shape.width + (columns + 1) * pad,
        rows * shape.height + (rows + 1) * pad,
        [to_byte(config.pad_value); 3],
    );
    for i in 0..n {
        let (r, c) = (i / columns, i % columns);
        let x = pad + c * (shape.width + pad);
        let y = pad + r * (shape.height + pad);
        draw_tile(&mut canvas, &values, i, shape, x, y);
    }
    Ok(canvas.upscale(config.scale))
}

/// Originals above their reconstructions: for every `config.columns` examples, one row of
/// originals and, under it, the row of their reconstructions.
///
/// # Shapes
/// `originals`, `reconstructions`: the same number N of images of `shape` (as in
/// [`image_grid`]) → 2·⌈N / columns⌉ rows.
///
/// # Errors
/// [`Error::Shape`] if the two batches differ in size or do not fit `shape`.
pub fn reconstruction_grid(
    originals: &Tensor,
    reconstructions: &Tensor,
    shape: ImageShape,
    config: &GridConfig,
) -> Result<RgbImage> {
    let n = originals.dims().first().copied().unwrap_or(0);
    if reconstructions.dims().first() != Some(&n) {
        return Err(Error::shape(
            "viz::reconstruction_grid",
            format!("{n} reconstructions, one per original"),
            reconstructions.dims(),
        ));
    }
    config.validate()?;
    let per_image = shape.elem_count();
    let originals = originals.reshape((n, per_image))?;
    let reconstructions = reconstructions.reshape((n, per_image))?;
    let columns = config.columns.min(n.max(1));
    let mut rows = Vec::new();
    let mut start = 0;
    while start < n {
        let len = columns.min(n - start);
        let mut row_o = originals.narrow(0, start, len)?;
        let mut row_r = reconstructions.narrow(0, start, len)?;
        if len < columns {
            // Pad a short last pair of rows with blank tiles so the rows stay aligned.
            let blank = Tensor::full(config.pad_value, (columns - len, per_image), &Device::Cpu)?
                .to_dtype(originals.dtype())?
                .to_device(originals.device())?;
            row_o = Tensor::cat(&[&row_o, &blank], 0)?;
            row_r = Tensor::cat(&[&row_r, &blank], 0)?;
        }
        rows.push(row_o);
        rows.push(row_r);
        start += len;
    }
    if rows.is_empty() {
        return image_grid(&originals, shape, config);
    }
    let stacked = Tensor::cat(&rows, 0)?;
    image_grid(&stacked, shape, &GridConfig { columns, ..*config })
}

/// Writes [`image_grid`] of `images` to `path`.
///
/// # Errors
/// As [`image_grid`] and [`RgbImage::save_png`].
pub fn save_grid(
    path: impl AsRef<Path>,
    images: &Tensor,
    shape: ImageShape,
    config: &GridConfig,
) -> Result<()> {
    image_grid(images, shape, config)?.save_png(path)
}
