//! `curves.png` (loss and accuracy per epoch, train and validation, in two panels) and
//! `confusion.png` (the confusion matrix, as scikit-learn's `ConfusionMatrixDisplay`). Drawn on
//! an `image` buffer; labels use the pre-rasterised Noto Sans Mono glyphs of
//! `noto-sans-mono-bitmap`, so no font files or system libraries are needed.

use image::{Rgb, RgbImage};
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

const W: u32 = 960;
const H: u32 = 400;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const BLACK: Rgb<u8> = Rgb([30, 30, 30]);
const TRAIN: Rgb<u8> = Rgb([31, 119, 180]);
const VAL: Rgb<u8> = Rgb([255, 127, 14]);

/// One epoch's figures.
#[derive(Debug, Clone, Copy)]
pub struct EpochPoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy in [0, 1].
    pub train_acc: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation accuracy in [0, 1].
    pub val_acc: f64,
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, color: Rgb<u8>) {
    let mut cx = x;
    for ch in s.chars() {
        let ch = if ch.is_ascii() && !ch.is_ascii_control() { ch } else { '?' };
        if let Some(r) = get_raster(ch, FontWeight::Regular, RasterHeight::Size16) {
            for (dy, row) in r.raster().iter().enumerate() {
                for (dx, &a) in row.iter().enumerate() {
                    if a > 60 {
                        put(img, cx + dx as i64, y + dy as i64, blend(img, cx + dx as i64, y + dy as i64, color, a));
                    }
                }
            }
        }
        cx += get_raster_width(FontWeight::Regular, RasterHeight::Size16) as i64;
    }
}

fn blend(img: &RgbImage, x: i64, y: i64, c: Rgb<u8>, alpha: u8) -> Rgb<u8> {
    let inside = x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height();
    let bg = if inside { *img.get_pixel(x as u32, y as u32) } else { WHITE };
    let a = alpha as u32;
    Rgb([0, 1, 2].map(|i| ((c.0[i] as u32 * a + bg.0[i] as u32 * (255 - a)) / 255) as u8))
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// A line two pixels wide (Bresenham).
fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(img, x + ox, y + oy, c);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// One panel: axes, a light grid, the y range, epoch ticks, two series and a legend.
fn panel(img: &mut RgbImage, left: i64, title: &str, points: &[EpochPoint], series: [fn(&EpochPoint) -> f64; 2]) {
    let (top, width, height) = (40i64, 400i64, 300i64);
    let values: Vec<f64> = points.iter().flat_map(|p| series.map(|f| f(p))).filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let ticks = nice_ticks(lo, hi, 5);
    let (lo, hi) = (ticks.lo, ticks.hi);
    let last_epoch = points.last().map_or(1, |p| p.epoch).max(2);
    let px = |epoch: usize| left + (epoch - 1) as i64 * width / (last_epoch - 1) as i64;
    let py = |v: f64| top + height - ((v - lo) / (hi - lo) * height as f64).round() as i64;
    for i in 0..=ticks.count {
        let v = lo + ticks.step * i as f64;
        let y = py(v);
        line(img, (left, y), (left + width, y), GREY);
        text(img, left - 70, y - 8, &format!("{:>8}", ticks.label(v)), BLACK);
    }
    line(img, (left, top), (left, top + height), BLACK);
    line(img, (left, top + height), (left + width, top + height), BLACK);
    let step = last_epoch.div_ceil(10).max(1);
    for e in (1..=last_epoch).step_by(step) {
        text(img, px(e) - 4, top + height + 6, &e.to_string(), BLACK);
    }
    text(img, left + width / 2 - 20, top + height + 26, "epoch", BLACK);
    text(img, left, 12, title, BLACK);
    for (f, color) in series.iter().zip([TRAIN, VAL]) {
        let pts: Vec<(i64, i64)> =
            points.iter().filter(|p| f(p).is_finite()).map(|p| (px(p.epoch), py(f(p)))).collect();
        for w in pts.windows(2) {
            line(img, w[0], w[1], color);
        }
        for &(x, y) in &pts {
            for d in -2..=2 {
                line(img, (x - 2, y + d), (x + 2, y + d), color);
            }
        }
    }
    // The legend goes in the right-hand corner the curves end away from (accuracy ends high,
    // loss low), so it never covers the last epochs.
    let ends_high = points.last().is_some_and(|p| {
        let ends: Vec<f64> = series.iter().map(|f| f(p)).filter(|v| v.is_finite()).collect();
        !ends.is_empty() && ends.iter().sum::<f64>() / ends.len() as f64 > (lo + hi) / 2.0
    });
    let legend_top = if ends_high { top + height - 48 } else { top };
    line(img, (left + width - 110, legend_top + 12), (left + width - 90, legend_top + 12), TRAIN);
    text(img, left + width - 84, legend_top + 4, "train", BLACK);
    line(img, (left + width - 110, legend_top + 32), (left + width - 90, legend_top + 32), VAL);
    text(img, left + width - 84, legend_top + 24, "val", BLACK);
}

/// A y axis whose ticks fall on round values: `count` steps of `step` (1, 2 or 5 times a power
/// of ten) from `lo` to `hi`, the smallest such range that holds the data (Heckbert's "nice
/// numbers", as matplotlib's default locator picks them).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
    count: usize,
}

impl Ticks {
    /// A tick's label with as many decimals as the step needs (0.25 -> "0.25", 0.2 -> "0.2").
    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        let decimals =
            if (self.step * 10f64.powi(decimals as i32)).fract().abs() > 1e-6 { decimals + 1 } else { decimals };
        // `+ 0.0` turns -0 into 0.
        format!("{:.*}", decimals, v + 0.0)
    }
}

/// Round ticks covering `[lo, hi]` with about `target` steps.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let rough = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= rough * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil();
    Ticks { lo: first * step, hi: last * step, step, count: (last - first).round().max(1.0) as usize }
}

/// Encodes the two panels as a PNG image.
pub fn curves_png(points: &[EpochPoint]) -> Result<Vec<u8>, image::ImageError> {
    let mut img = RgbImage::from_pixel(W, H, WHITE);
    panel(&mut img, 80, "loss", points, [|p| p.train_loss, |p| p.val_loss]);
    panel(&mut img, 550, "accuracy", points, [|p| p.train_acc, |p| p.val_acc]);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// Glyph width of the labels.
fn glyph_width() -> i64 {
    get_raster_width(FontWeight::Regular, RasterHeight::Size16) as i64
}

/// scikit-learn's "Blues" at `t` in [0, 1]: white to dark blue.
fn blues(t: f64) -> Rgb<u8> {
    const STOPS: [[f64; 3]; 5] =
        [[247.0, 251.0, 255.0], [198.0, 219.0, 239.0], [107.0, 174.0, 214.0], [33.0, 113.0, 181.0], [8.0, 48.0, 107.0]];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let (i, f) = ((x.floor() as usize).min(STOPS.len() - 2), x - x.floor().min((STOPS.len() - 2) as f64));
    Rgb([0, 1, 2].map(|c| (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f).round() as u8))
}

fn fill(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
    for yy in y..y + h {
        for xx in x..x + w {
            put(img, xx, yy, c);
        }
    }
}

/// `confusion.png`: rows are the true classes, columns the predicted ones, each cell coloured by
/// its count (scale on the right) and labelled with it when the cells are large enough; class
/// names on both axes (cut to fit; by index beyond 40 classes).
pub fn confusion_png(classes: &[String], confusion: &[Vec<usize>]) -> Result<Vec<u8>, image::ImageError> {
    let n = classes.len().max(1) as i64;
    let cell = (640 / n).clamp(6, 56);
    let gw = glyph_width();
    let by_index = n > 40;
    let names: Vec<String> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| if by_index { i.to_string() } else { c.chars().take(14).collect() })
        .collect();
    let label_chars = names.iter().map(|s| s.chars().count()).max().unwrap_or(1) as i64;
    let (left, top) = (40 + gw * label_chars + 8, 40);
    let grid = cell * n;
    // Column names run down the page below the grid, one glyph per row of 16 pixels.
    let bottom_labels = 16 * label_chars.min(14) + 40;
    let (width, height) = ((left + grid + 110) as u32, (top + grid + bottom_labels) as u32);
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    let max = confusion.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    for (r, row) in confusion.iter().enumerate().take(n as usize) {
        for (c, &count) in row.iter().enumerate().take(n as usize) {
            let t = count as f64 / max;
            let (x, y) = (left + c as i64 * cell, top + r as i64 * cell);
            fill(&mut img, x, y, cell, cell, blues(t));
            let label = count.to_string();
            let label_w = gw * label.len() as i64;
            if cell >= 22 && label_w + 4 <= cell {
                let ink = if t > 0.5 { WHITE } else { BLACK };
                text(&mut img, x + (cell - label_w) / 2, y + (cell - 16) / 2, &label, ink);
            }
        }
    }
    for i in 0..=n {
        line(&mut img, (left, top + i * cell), (left + grid, top + i * cell), GREY);
        line(&mut img, (left + i * cell, top), (left + i * cell, top + grid), GREY);
    }
    for (i, name) in names.iter().enumerate() {
        let i = i as i64;
        if cell >= 16 || i % (16 / cell + 1) == 0 {
            let w = gw * name.chars().count() as i64;
            text(&mut img, left - 8 - w, top + i * cell + (cell - 16) / 2, name, BLACK);
            for (k, ch) in name.chars().enumerate() {
                text(
                    &mut img,
                    left + i * cell + (cell - gw) / 2,
                    top + grid + 6 + 16 * k as i64,
                    &ch.to_string(),
                    BLACK,
                );
            }
        }
    }
    text(&mut img, left, 12, "rows: true class, columns: predicted class", BLACK);
    // The colour scale.
    let (sx, sy, sh) = (left + grid + 24, top, grid);
    for k in 0..sh {
        let t = 1.0 - k as f64 / (sh - 1).max(1) as f64;
        fill(&mut img, sx, sy + k, 18, 1, blues(t));
    }
    text(&mut img, sx + 24, sy - 6, &(max as usize).to_string(), BLACK);
    text(&mut img, sx + 24, sy + sh - 12, "0", BLACK);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        for (lo, hi) in [(0.132, 1.224), (0.0, 1.0), (0.41, 0.97), (2.3, 2.3), (1e-4, 3e-3), (-0.5, 12.0)] {
            let t = nice_ticks(lo, hi, 5);
            assert!(t.lo <= lo && t.hi >= hi, "{lo}..{hi}: {t:?}");
            assert!((2..=10).contains(&t.count), "{lo}..{hi}: {t:?}");
            let mantissa = t.step / 10f64.powf(t.step.log10().floor());
            assert!([1.0, 2.0, 2.5, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-9), "{t:?}");
            for i in 0..=t.count {
                let v = t.lo + t.step * i as f64;
                assert!(((v / t.step).round() - v / t.step).abs() < 1e-6, "{v} is not a multiple of {}", t.step);
            }
        }
        let t = nice_ticks(0.132, 1.224, 5);
        assert_eq!((t.lo, t.hi, t.step), (0.0, 1.25, 0.25));
        let labels: Vec<String> = (0..=t.count).map(|i| t.label(t.lo + t.step * i as f64)).collect();
        assert_eq!(labels, ["0.00", "0.25", "0.50", "0.75", "1.00", "1.25"]);
        let t = nice_ticks(0.41, 0.97, 5);
        let labels: Vec<String> = (0..=t.count).map(|i| t.label(t.lo + t.step * i as f64)).collect();
        assert_eq!(labels, ["0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(nice_ticks(0.0, 1.0, 4).step, 0.25);
        assert_eq!(nice_ticks(0.0, 1.0, 4).label(0.25), "0.25");
    }
}
