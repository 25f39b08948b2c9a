//! A scatter plot of 2-D points coloured by label, rasterised by hand: axes with numbered
//! ticks, translucent discs, and a legend, in a few hundred pixels and no font files (the
//! digits come from a 3×5 bitmap font).

use candle_core::{DType, Device, Tensor};

use super::RgbImage;
use crate::error::{Error, Result, ensure};

/// Ten distinguishable colours, one per label 0–9 (matplotlib's `tab10`); label l uses
/// `PALETTE[l % 10]`.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

const WHITE: [u8; 3] = [255, 255, 255];
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];
const GLYPH_SCALE: usize = 2;
const MARGIN_LEFT: usize = 56;
const MARGIN_BOTTOM: usize = 30;
const MARGIN_TOP: usize = 12;
const MARGIN_RIGHT: usize = 52;

/// Layout of a [`scatter`] plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScatterConfig {
    /// Side of the square plotting area in pixels (the picture adds margins for the
    /// ticks and the legend).
    pub size: usize,
    /// Radius of a point in pixels.
    pub radius: f32,
    /// Opacity of a point in (0, 1]: overlapping points darken, showing density.
    pub alpha: f32,
    /// The axes' extent `[x_min, x_max, y_min, y_max]`; `None` fits the points with a 5%
    /// margin.
    pub range: Option<[f32; 4]>,
}

impl Default for ScatterConfig {
    /// A 600-pixel plot of 2-pixel points at 50% opacity, fitted to the points.
    fn default() -> Self {
        Self {
            size: 600,
            radius: 2.0,
            alpha: 0.5,
            range: None,
        }
    }
}

impl ScatterConfig {
    /// Sets the plotting area's side in pixels.
    #[must_use]
    pub fn with_size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// Sets the axes' extent `[x_min, x_max, y_min, y_max]`.
    #[must_use]
    pub fn with_range(mut self, range: [f32; 4]) -> Self {
        self.range = Some(range);
        self
    }

    /// Sets the radius and opacity of the points.
    #[must_use]
    pub fn with_points(mut self, radius: f32, alpha: f32) -> Self {
        self.radius = radius;
        self.alpha = alpha;
        self
    }

    /// Checks every rule.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and rule.
    pub fn validate(&self) -> Result<()> {
        ensure(
            self.size >= 50,
            "ScatterConfig",
            "size",
            self.size,
            "must be ≥ 50 pixels",
        )?;
        ensure(
            self.radius.is_finite() && self.radius > 0.0,
            "ScatterConfig",
            "radius",
            self.radius,
            "must be finite and > 0",
        )?;
        ensure(
            self.alpha > 0.0 && self.alpha <= 1.0,
            "ScatterConfig",
            "alpha",
            self.alpha,
            "must be in (0, 1]",
        )?;
        if let Some([x0, x1, y0, y1]) = self.range {
            ensure(
                [x0, x1, y0, y1].iter().all(|v| v.is_finite()) && x0 < x1 && y0 < y1,
                "ScatterConfig",
                "range",
                self.range,
                "must be finite with min < max on both axes",
            )?;
        }
        Ok(())
    }
}

/// Plots 2-D points (e.g. posterior means of a 2-D latent space) on white, coloured by
/// label from [`PALETTE`], with numbered axes and, for labels 0–9, a legend. Points that
/// are not finite or fall outside `config.range` are left out.
///
/// # Shapes
/// `points`: `(N, 2)`; `labels`: N labels, or `None` to draw every point in the first
/// colour.
///
/// # Errors
/// [`Error::Shape`] if `points` is not `(N, 2)` or the labels are not one per point;
/// [`Error::InvalidConfig`] for a bad `config`.
pub fn scatter(points: &Tensor, labels: Option<&[u8]>, config: &ScatterConfig) -> Result<RgbImage> {
    config.validate()?;
    if points.rank() != 2 || points.dims()[1] != 2 {
        return Err(Error::shape("viz::scatter", "points (N, 2)", points.dims()));
    }
    let xy: Vec<[f32; 2]> = points
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?
        .into_iter()
        .map(|p| [p[0], p[1]])
        .collect();
    if let Some(labels) = labels {
        if labels.len() != xy.len() {
            return Err(Error::shape(
                "viz::scatter",
                format!("{} labels, one per point", xy.len()),
                &[labels.len()],
            ));
        }
    }
    let [x0, x1, y0, y1] = config.range.unwrap_or_else(|| fit_range(&xy));
    let size = config.size;
    let mut canvas = RgbImage::new(
        MARGIN_LEFT + size + MARGIN_RIGHT,
        MARGIN_TOP + size + MARGIN_BOTTOM,
        WHITE,
    );
    let to_px = |x: f32| MARGIN_LEFT as f32 + (x - x0) / (x1 - x0) * (size - 1) as f32;
    let to_py = |y: f32| MARGIN_TOP as f32 + (y1 - y) / (y1 - y0) * (size - 1) as f32;

    // Grid lines and tick labels.
    for tick in ticks(x0, x1) {
        let px = to_px(tick).round() as usize;
        canvas.fill_rect(px, MARGIN_TOP, 1, size, GRID);
        let text = format_tick(tick, x1 - x0);
        let w = text_width(&text);
        draw_text(
            &mut canvas,
            &text,
            px.saturating_sub(w / 2),
            MARGIN_TOP + size + 6,
            BLACK,
        );
    }
    for tick in ticks(y0, y1) {
        let py = to_py(tick).round() as usize;
        canvas.fill_rect(MARGIN_LEFT, py, size, 1, GRID);
        let text = format_tick(tick, y1 - y0);
        let w = text_width(&text);
        draw_text(
            &mut canvas,
            &text,
            MARGIN_LEFT.saturating_sub(w + 6),
            py.saturating_sub(5 * GLYPH_SCALE / 2),
            BLACK,
        );
    }

    // The points.
    let reach = config.radius.ceil() as i64;
    let r2 = config.radius * config.radius;
    for (i, &[x, y]) in xy.iter().enumerate() {
        if !(x.is_finite() && y.is_finite()) || x < x0 || x > x1 || y < y0 || y > y1 {
            continue;
        }
        let color = PALETTE[labels.map_or(0, |l| usize::from(l[i])) % PALETTE.len()];
        let (cx, cy) = (to_px(x), to_py(y));
        for dy in -reach..=reach {
            for dx in -reach..=reach {
                let (px, py) = (cx.round() as i64 + dx, cy.round() as i64 + dy);
                let (ex, ey) = (px as f32 - cx, py as f32 - cy);
                if px >= 0 && py >= 0 && ex * ex + ey * ey <= r2 + 0.25 {
                    canvas.blend(px as usize, py as usize, color, config.alpha);
                }
            }
        }
    }

    // The frame.
    let (left, top) = (MARGIN_LEFT - 1, MARGIN_TOP - 1);
    canvas.fill_rect(left, top, size + 2, 1, BLACK);
    canvas.fill_rect(left, top + size + 1, size + 2, 1, BLACK);
    canvas.fill_rect(left, top, 1, size + 2, BLACK);
    canvas.fill_rect(left + size + 1, top, 1, size + 2, BLACK);

    // The legend, right of the frame, for labels 0–9.
    if let Some(labels) = labels {
        let mut present = [false; 10];
        let mut small = true;
        for &l in labels {
            match present.get_mut(usize::from(l)) {
                Some(slot) => *slot = true,
                None => small = false,
            }
        }
        if small {
            let x = MARGIN_LEFT + size + 12;
            let mut y = MARGIN_TOP + 4;
            for (label, _) in present.iter().enumerate().filter(|(_, p)| **p) {
                canvas.fill_rect(x, y, 10, 10, PALETTE[label]);
                draw_text(&mut canvas, &label.to_string(), x + 16, y, BLACK);
                y += 18;
            }
        }
    }
    Ok(canvas)
}

/// The range of the finite points with a 5% margin; [−1, 1] on an axis without spread.
fn fit_range(points: &[[f32; 2]]) -> [f32; 4] {
    let mut lo = [f32::INFINITY; 2];
    let mut hi = [f32::NEG_INFINITY; 2];
    for p in points
        .iter()
        .filter(|p| p[0].is_finite() && p[1].is_finite())
    {
        for a in 0..2 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    let mut range = [0.0; 4];
    for a in 0..2 {
        let (l, h) = if lo[a] < hi[a] {
            let pad = 0.05 * (hi[a] - lo[a]);
            (lo[a] - pad, hi[a] + pad)
        } else if lo[a].is_finite() {
            (lo[a] - 1.0, lo[a] + 1.0)
        } else {
            (-1.0, 1.0)
        };
        range[2 * a] = l;
        range[2 * a + 1] = h;
    }
    range
}

/// "Nice" tick positions (steps of 1, 2 or 5 × 10ᵏ, about six of them) within [lo, hi].
fn ticks(lo: f32, hi: f32) -> Vec<f32> {
    let step = tick_step(hi - lo);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f32 * step).collect()
}

fn tick_step(span: f32) -> f32 {
    let raw = span / 6.0;
    let magnitude = 10f32.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction < 1.5 {
        1.0
    } else if fraction < 3.5 {
        2.0
    } else if fraction < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn format_tick(value: f32, span: f32) -> String {
    let step = tick_step(span);
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let text = format!("{value:.decimals$}");
    // "-0" reads oddly on an axis.
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_string()
    } else {
        text
    }
}

/// The 3×5 glyph of `c` (rows top to bottom, 3 bits each, most significant on the left),
/// for the characters ticks and legends need.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        _ => return None,
    })
}

/// Width in pixels of `text` as [`draw_text`] draws it.
fn text_width(text: &str) -> usize {
    let n = text.chars().count();
    (4 * n).saturating_sub(1) * GLYPH_SCALE
}

/// Draws `text` with its top-left corner at `(x, y)`; unknown characters are blank.
fn draw_text(canvas: &mut RgbImage, text: &str, x: usize, y: usize, color: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let gx = x + i * 4 * GLYPH_SCALE;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    canvas.fill_rect(
                        gx + col * GLYPH_SCALE,
                        y + r * GLYPH_SCALE,
                        GLYPH_SCALE,
                        GLYPH_SCALE,
                        color,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_inside() {
        assert_eq!(ticks(-3.2, 3.1), vec![-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]);
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(format_tick(-0.0, 6.0), "0");
        assert_eq!(format_tick(0.5, 1.0), "0.5");
    }
}
