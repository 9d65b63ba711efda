//! A built-in, deterministic demo dataset: procedural pictures of shapes, written on request as
//! `train/` and `val/` ImageFolders of JPEGs, so that the whole workflow runs without
//! downloading anything.
//!
//! Each class is a shape (circle, square, triangle, cross, ring, star, hexagon, crescent). Colour
//! carries no information: the shape's and the background's colours are drawn independently
//! for every picture, as are its position, size and rotation, the background (gradient, blotchy
//! noise or stripes), the shape's fill (plain, striped or speckled), a few distracting lines and
//! pixel noise. A classifier must therefore learn shape, which takes a convolutional network a
//! few epochs; at the default size (6 classes, 60 + 20 pictures each, 80x80) a small ResNet
//! trains on it in minutes on two cores.
//!
//! Every picture is a pure function of `(seed, split, class, number)`, so the same
//! configuration gives the same files on every machine.

use crate::error::{DataError, Result};
use crate::image::RgbImage;
use crate::transforms::mix;
use rayon::prelude::*;
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use tensor::Rng;

/// The class names, in class-index order (ImageFolder sorts them: keep this list sorted).
pub const DEMO_CLASSES: [&str; 8] = ["circle", "crescent", "cross", "hexagon", "ring", "square", "star", "triangle"];

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConfig {
    /// Number of classes, 2 to 8 (the first names of [`DEMO_CLASSES`]).
    pub classes: usize,
    /// Training pictures per class.
    pub train_per_class: usize,
    /// Validation pictures per class.
    pub val_per_class: usize,
    /// Picture width in pixels (>= 16).
    pub width: usize,
    /// Picture height in pixels (>= 16).
    pub height: usize,
    /// JPEG quality, 1 to 100.
    pub jpeg_quality: u8,
    /// Seeds every picture.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            classes: 6,
            train_per_class: 60,
            val_per_class: 20,
            width: 80,
            height: 80,
            jpeg_quality: 90,
            seed: 0,
        }
    }
}

impl DemoConfig {
    fn validate(&self) -> Result<()> {
        if !(2..=DEMO_CLASSES.len()).contains(&self.classes) {
            return Err(DataError::invalid("DemoConfig", format!("classes = {} is not in 2..=8", self.classes)));
        }
        if self.width < 16 || self.height < 16 || self.width > 4096 || self.height > 4096 {
            return Err(DataError::invalid(
                "DemoConfig",
                format!("picture size {}x{} is not within 16..=4096", self.width, self.height),
            ));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(DataError::invalid(
                "DemoConfig",
                format!("jpeg_quality = {} is not in 1..=100", self.jpeg_quality),
            ));
        }
        if self.train_per_class == 0 {
            return Err(DataError::invalid("DemoConfig", "train_per_class must be positive"));
        }
        Ok(())
    }

    fn marker(&self) -> serde_json::Value {
        serde_json::json!({
            "generator": format!("{GENERATOR} v1"),
            "classes": self.classes,
            "train_per_class": self.train_per_class,
            "val_per_class": self.val_per_class,
            "width": self.width,
            "height": self.height,
            "jpeg_quality": self.jpeg_quality,
            "seed": self.seed,
        })
    }
}

/// Where a demo dataset was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoDataset {
    /// The folder holding `train/`, `val/` and `demo.json`.
    pub root: PathBuf,
    /// The training ImageFolder.
    pub train: PathBuf,
    /// The validation ImageFolder.
    pub val: PathBuf,
    /// The class names, by index.
    pub classes: Vec<String>,
    /// Number of training pictures.
    pub train_images: usize,
    /// Number of validation pictures.
    pub val_images: usize,
    /// Whether an identical dataset was already there (nothing was written).
    pub reused: bool,
}

const MARKER: &str = "demo.json";
/// The marker's `generator`, before its version.
const GENERATOR: &str = "resnet-rs demo dataset";

/// The marker file of `dir`, if it holds one that parses.
fn read_marker(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `dir` holds a demo dataset written by [`write_demo_dataset`], of any configuration
/// or version (so a caller that owns the folder may replace it with another).
pub fn is_demo_dataset(dir: impl AsRef<Path>) -> bool {
    read_marker(dir.as_ref())
        .is_some_and(|v| v.get("generator").and_then(|g| g.as_str()).is_some_and(|g| g.starts_with(GENERATOR)))
}

/// Writes the demo dataset into `dir` (`dir/train/<class>/*.jpg`, `dir/val/<class>/*.jpg` and
/// `dir/demo.json`, which records the configuration).
///
/// If `dir` already holds a demo dataset of the same configuration it is reused as is; any
/// other non-empty `dir` is refused. The pictures are generated in a temporary sibling folder
/// that is renamed into place at the end, so an interrupted run never leaves a half-written
/// dataset behind.
pub fn write_demo_dataset(dir: impl AsRef<Path>, config: &DemoConfig) -> Result<DemoDataset> {
    config.validate()?;
    let dir = dir.as_ref().to_path_buf();
    let summary = |reused| DemoDataset {
        root: dir.clone(),
        train: dir.join("train"),
        val: dir.join("val"),
        classes: DEMO_CLASSES[..config.classes].iter().map(|s| s.to_string()).collect(),
        train_images: config.classes * config.train_per_class,
        val_images: config.classes * config.val_per_class,
        reused,
    };
    if existing(&dir, config)? {
        return Ok(summary(true));
    }
    let name = dir.file_name().ok_or_else(|| DataError::invalid("write_demo_dataset", "the folder has no name"))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let _ = std::fs::remove_dir_all(&tmp);
    let result = generate_into(&tmp, config).and_then(|()| {
        if dir.exists() {
            // `existing` accepted it, so it is an empty folder.
            std::fs::remove_dir(&dir).map_err(|e| DataError::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| DataError::io(&dir, e))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have finished the same dataset first.
        if let Ok(true) = existing(&dir, config) {
            return Ok(summary(true));
        }
        return Err(e);
    }
    Ok(summary(false))
}

/// Whether `dir` holds this very dataset (`false`: absent or empty); an error if it holds
/// anything else.
fn existing(dir: &Path, config: &DemoConfig) -> Result<bool> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(DataError::io(dir, e)),
    };
    if entries.next().is_none() {
        return Ok(false);
    }
    match read_marker(dir) {
        Some(v) if v == config.marker() => Ok(true),
        Some(_) => Err(DataError::invalid(
            "write_demo_dataset",
            format!("{} holds a demo dataset of another configuration; choose another folder", dir.display()),
        )),
        None => Err(DataError::invalid(
            "write_demo_dataset",
            format!("{} exists and is not a demo dataset; refusing to write into it", dir.display()),
        )),
    }
}

fn generate_into(tmp: &Path, config: &DemoConfig) -> Result<()> {
    let mut jobs = Vec::new();
    for (split, per_class) in [("train", config.train_per_class), ("val", config.val_per_class)] {
        for (class, name) in DEMO_CLASSES[..config.classes].iter().enumerate() {
            let d = tmp.join(split).join(name);
            std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
            for i in 0..per_class {
                jobs.push((split, class, i, d.join(format!("{name}_{i:04}.jpg"))));
            }
        }
    }
    jobs.par_iter().try_for_each(|(split, class, i, path)| {
        let split_id = if *split == "train" { 0 } else { 1 };
        let mut rng = Rng::seed(mix(&[config.seed, split_id, *class as u64, *i as u64]));
        let img = render(*class, config.width, config.height, &mut rng);
        // Plain writes suffice inside the private temporary folder: the rename that publishes
        // the whole folder is the atomic step.
        std::fs::write(path, img.to_jpeg(config.jpeg_quality)?).map_err(|e| DataError::io(path, e))
    })?;
    let marker = tmp.join(MARKER);
    let text = serde_json::to_string_pretty(&config.marker()).expect("a JSON value serialises");
    std::fs::write(&marker, text).map_err(|e| DataError::io(&marker, e))
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

fn rand_color(rng: &mut Rng) -> [f64; 3] {
    [rng.uniform_range(0.0, 255.0), rng.uniform_range(0.0, 255.0), rng.uniform_range(0.0, 255.0)]
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

fn lerp(a: [f64; 3], b: [f64; 3], t: f64) -> [f64; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// Signed distance (negative inside) from `p` to a polygon.
fn polygon_sdf(p: (f64, f64), verts: &[(f64, f64)]) -> f64 {
    let mut d = f64::MAX;
    let mut inside = false;
    let n = verts.len();
    for i in 0..n {
        let (a, b) = (verts[i], verts[(i + 1) % n]);
        let (ex, ey) = (b.0 - a.0, b.1 - a.1);
        let (wx, wy) = (p.0 - a.0, p.1 - a.1);
        let t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
        let (dx, dy) = (wx - ex * t, wy - ey * t);
        d = d.min(dx * dx + dy * dy);
        if (a.1 > p.1) != (b.1 > p.1) && p.0 < a.0 + (p.1 - a.1) * ex / ey {
            inside = !inside;
        }
    }
    if inside {
        -d.sqrt()
    } else {
        d.sqrt()
    }
}

fn regular(n: usize, radius: f64, phase: f64) -> Vec<(f64, f64)> {
    (0..n).map(|k| (phase + 2.0 * PI * k as f64 / n as f64).sin_cos()).map(|(s, c)| (radius * c, radius * s)).collect()
}

/// The shape of `class` as a signed distance in units of the shape's radius, in its own frame.
fn shape_sdf(class: usize, p: (f64, f64)) -> f64 {
    let len = (p.0 * p.0 + p.1 * p.1).sqrt();
    match DEMO_CLASSES[class] {
        "circle" => len - 0.9,
        "crescent" => (len - 1.0).max(-(((p.0 - 0.45).powi(2) + p.1 * p.1).sqrt() - 0.75)),
        "cross" => {
            let arm = |x: f64, y: f64| (x.abs() - 1.0).max(y.abs() - 0.3);
            arm(p.0, p.1).min(arm(p.1, p.0))
        }
        "hexagon" => polygon_sdf(p, &regular(6, 0.95, 0.0)),
        "ring" => (len - 0.72).abs() - 0.24,
        "square" => (p.0.abs() - 0.75).max(p.1.abs() - 0.75),
        "star" => {
            let verts: Vec<(f64, f64)> = (0..10)
                .map(|k| {
                    let r = if k % 2 == 0 { 1.05 } else { 0.45 };
                    let (s, c) = (PI * k as f64 / 5.0).sin_cos();
                    (r * c, r * s)
                })
                .collect();
            polygon_sdf(p, &verts)
        }
        _ => polygon_sdf(p, &regular(3, 1.05, PI / 2.0)),
    }
}

/// A straight line: its two ends, its width and its colour.
type Line = ((f64, f64), (f64, f64), f64, [f64; 3]);

/// Renders one picture of `class` (an index into [`DEMO_CLASSES`]); all variation comes from
/// `rng`.
pub fn render(class: usize, width: usize, height: usize, rng: &mut Rng) -> RgbImage {
    let class = class.min(DEMO_CLASSES.len() - 1);
    let (w, h) = (width as f64, height as f64);
    let s = w.min(h);

    // Background: two colours mixed by a gradient, blotchy value noise or soft stripes.
    let (bg1, bg2) = (rand_color(rng), rand_color(rng));
    let bg_kind = rng.below(3);
    let angle = rng.uniform_range(0.0, 2.0 * PI);
    let (ga, gb) = angle.sin_cos();
    let period = rng.uniform_range(0.15, 0.4) * s;
    let grid: Vec<f64> = (0..25).map(|_| f64::from(rng.uniform())).collect();

    // The shape: a colour far enough from the background's mean to be seen.
    let bg_mean = lerp(bg1, bg2, 0.5);
    let mut fg = rand_color(rng);
    for _ in 0..20 {
        if dist(fg, bg_mean) > 110.0 {
            break;
        }
        fg = rand_color(rng);
    }
    let fg2 = lerp(fg, rand_color(rng), 0.5);
    let fill_kind = rng.below(4); // 0, 1: plain; 2: striped; 3: speckled
    let radius = rng.uniform_range(0.22, 0.4) * s;
    let margin = radius * 1.05;
    let cx = rng.uniform_range(margin.min(w / 2.0), (w - margin).max(w / 2.0));
    let cy = rng.uniform_range(margin.min(h / 2.0), (h - margin).max(h / 2.0));
    let (rs, rc) = rng.uniform_range(0.0, 2.0 * PI).sin_cos();
    let fill_angle = rng.uniform_range(0.0, PI).sin_cos();
    let fill_period = rng.uniform_range(3.0, 7.0);

    // Distracting lines under the shape.
    let lines: Vec<Line> = (0..rng.below(3))
        .map(|_| {
            let a = (rng.uniform_range(0.0, w), rng.uniform_range(0.0, h));
            let b = (rng.uniform_range(0.0, w), rng.uniform_range(0.0, h));
            (a, b, rng.uniform_range(0.6, 1.6), rand_color(rng))
        })
        .collect();
    let noise = rng.uniform_range(4.0, 14.0);

    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = match bg_kind {
                0 => ((px - w / 2.0) * ga + (py - h / 2.0) * gb) / s + 0.5,
                1 => {
                    // Bilinear value noise on a 5x5 grid.
                    let (gx, gy) = (px / w * 4.0, py / h * 4.0);
                    let (ix, iy) = ((gx as usize).min(3), (gy as usize).min(3));
                    let (fx, fy) = (gx - ix as f64, gy - iy as f64);
                    let g = |i: usize, j: usize| grid[j * 5 + i];
                    let top = g(ix, iy) * (1.0 - fx) + g(ix + 1, iy) * fx;
                    let bottom = g(ix, iy + 1) * (1.0 - fx) + g(ix + 1, iy + 1) * fx;
                    top * (1.0 - fy) + bottom * fy
                }
                _ => 0.5 + 0.5 * (2.0 * PI * (px * ga + py * gb) / period).sin(),
            };
            let mut c = lerp(bg1, bg2, t.clamp(0.0, 1.0));
            for &(a, b, width, lc) in &lines {
                let (ex, ey) = (b.0 - a.0, b.1 - a.1);
                let len2 = (ex * ex + ey * ey).max(1e-9);
                let u = (((px - a.0) * ex + (py - a.1) * ey) / len2).clamp(0.0, 1.0);
                let d = ((px - a.0 - ex * u).powi(2) + (py - a.1 - ey * u).powi(2)).sqrt();
                c = lerp(c, lc, (width - d).clamp(0.0, 1.0));
            }
            let (dx, dy) = (px - cx, py - cy);
            if dx.abs() < radius * 1.2 + 1.0 && dy.abs() < radius * 1.2 + 1.0 {
                let local = ((dx * rc + dy * rs) / radius, (-dx * rs + dy * rc) / radius);
                // One pixel of antialiasing at the edge.
                let cover = (0.5 - shape_sdf(class, local) * radius).clamp(0.0, 1.0);
                if cover > 0.0 {
                    let f = match fill_kind {
                        2 if ((px * fill_angle.1 + py * fill_angle.0) / fill_period).rem_euclid(2.0) < 1.0 => fg2,
                        3 => lerp(fg, fg2, f64::from(rng.uniform())),
                        _ => fg,
                    };
                    c = lerp(c, f, cover);
                }
            }
            for v in c {
                let n = (f64::from(rng.uniform()) - 0.5) * 2.0 * noise;
                data.push((v + n).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    RgbImage::from_raw(width, height, data).expect("sized above")
}
