//! torchvision's transforms, with the same names, defaults and arithmetic.
//!
//! A [`Transform`] maps a [`Sample`] (an 8-bit [`RgbImage`] before [`ToTensor`], a CHW
//! [`FloatImage`] after it) to another, drawing any randomness from the [`Rng`] it is given. The
//! loader gives each sample its own generator, seeded from `(seed, epoch, sample index)`
//! ([`sample_rng`]), so augmentations are reproducible whatever the number of worker threads.
//!
//! Exactness: the geometric and colour transforms reproduce torchvision on PIL images bit for
//! bit (Pillow's fixed-point resampling, its blend and HSV arithmetic: the crate's `resize` and
//! `color` modules), checked against fixtures made by torchvision. What cannot match is the
//! random stream: we draw from ChaCha8, torchvision from torch's Mersenne twister, so the same
//! seed gives the same *distribution* of crops, flips and jitters, not the same ones.

use crate::color;
use crate::error::{DataError, Result};
use crate::image::{FloatImage, RgbImage, DEFAULT_MAX_PIXELS};
use crate::resize::{self, Rect};
pub use tensor::Rng;

/// What flows through a pipeline: an image before `ToTensor`, a float tensor after.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// An 8-bit RGB image (PIL's `"RGB"` mode).
    Image(RgbImage),
    /// A CHW float image.
    Tensor(FloatImage),
}

impl Sample {
    /// The image, or an error naming `transform` when this is already a tensor.
    pub fn into_image(self, transform: &'static str) -> Result<RgbImage> {
        match self {
            Sample::Image(i) => Ok(i),
            Sample::Tensor(t) => Err(DataError::Transform {
                transform,
                msg: format!(
                    "expects an 8-bit image (place it before ToTensor), got a float tensor of shape {:?}",
                    t.shape()
                ),
            }),
        }
    }

    /// The float tensor, or an error naming `transform` when this is still an image.
    pub fn into_tensor(self, transform: &'static str) -> Result<FloatImage> {
        match self {
            Sample::Tensor(t) => Ok(t),
            Sample::Image(i) => Err(DataError::Transform {
                transform,
                msg: format!(
                    "expects a float tensor (place it after ToTensor), got a {}x{} image",
                    i.width(),
                    i.height()
                ),
            }),
        }
    }
}

/// One step of a pipeline. Implement it for your own transforms; draw randomness only from
/// `rng` so that the loader's reproducibility holds.
pub trait Transform: Send + Sync + std::fmt::Debug {
    /// Applies the transform.
    fn apply(&self, input: Sample, rng: &mut Rng) -> Result<Sample>;

    /// The concrete transform, for [`Compose`] to recognise steps it can run as one (`Resize`
    /// then `CenterCrop`); `None` (the default) keeps a step to itself.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

impl<T: Transform + ?Sized> Transform for Box<T> {
    fn apply(&self, input: Sample, rng: &mut Rng) -> Result<Sample> {
        (**self).apply(input, rng)
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        (**self).as_any()
    }
}

impl<T: Transform + ?Sized> Transform for std::sync::Arc<T> {
    fn apply(&self, input: Sample, rng: &mut Rng) -> Result<Sample> {
        (**self).apply(input, rng)
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        (**self).as_any()
    }
}

/// The generator the loader gives sample `index` of `epoch` under `seed`: a pure function of the
/// three (SplitMix64 mixing into a ChaCha8 seed), independent of threads and batch composition.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> Rng {
    Rng::seed(mix(&[seed, epoch, index]))
}

/// SplitMix64's finaliser, chained over the words: distinct tuples give unrelated seeds.
pub(crate) fn mix(words: &[u64]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for &w in words {
        let mut z = h ^ w.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Functional forms (torchvision.transforms.functional)
// ---------------------------------------------------------------------------------------------

/// Functional forms of the transforms, as `torchvision.transforms.functional`.
pub mod functional {
    use super::*;

    /// torchvision's output size for `Resize(size)` (an int): the shorter side becomes `size`,
    /// the longer `int(size * long / short)` (truncated). Returns `(width, height)`.
    pub fn resized_size(width: usize, height: usize, size: usize) -> (usize, usize) {
        let (short, long) = if width <= height { (width, height) } else { (height, width) };
        // Python: int * int / int is a correctly rounded float division, then truncation.
        let new_long = ((size as u128 * long as u128) as f64 / short as f64) as usize;
        if width <= height {
            (size, new_long)
        } else {
            (new_long, size)
        }
    }

    /// Refuses an empty output, or one larger than [`DEFAULT_MAX_PIXELS`] (a typo such as
    /// `Resize(100000)` must be an error, not an out-of-memory abort).
    fn check_output(what: &'static str, width: usize, height: usize) -> Result<()> {
        if width == 0 || height == 0 {
            return Err(DataError::invalid(what, format!("output size {width}x{height} is empty")));
        }
        if width as u128 * height as u128 > u128::from(DEFAULT_MAX_PIXELS) {
            return Err(DataError::invalid(
                what,
                format!("output size {width}x{height} exceeds the limit of {DEFAULT_MAX_PIXELS} pixels"),
            ));
        }
        Ok(())
    }

    /// Resizes to `width` x `height` with Pillow's antialiased bilinear filter.
    pub fn resize(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
        check_output("resize", width, height)?;
        let rect = Rect { x0: 0, y0: 0, w: img.width(), h: img.height() };
        Ok(resize::resize_bilinear(img, rect, width, height))
    }

    /// `center_crop(resize(img, width, height), crop_width, crop_height)` with the same pixels,
    /// computing only the kept window of the resize when the crop fits inside it (the eval
    /// pipeline's `Resize(256)` + `CenterCrop(224)` throws away 40% of the resized pixels).
    pub fn resize_center_crop(
        img: &RgbImage,
        width: usize,
        height: usize,
        crop_width: usize,
        crop_height: usize,
    ) -> Result<RgbImage> {
        check_output("resize", width, height)?;
        check_output("center_crop", crop_width, crop_height)?;
        if crop_width > width || crop_height > height {
            return center_crop(&resize(img, width, height)?, crop_width, crop_height);
        }
        let rect = Rect { x0: 0, y0: 0, w: img.width(), h: img.height() };
        let window = Rect {
            x0: round_half_even_half(width - crop_width),
            y0: round_half_even_half(height - crop_height),
            w: crop_width,
            h: crop_height,
        };
        Ok(resize::resize_bilinear_window(img, rect, width, height, window))
    }

    /// Crops rows `top..top + height` and columns `left..left + width` (which must lie inside the
    /// image) and resizes the crop to `out_width` x `out_height`, as `F.resized_crop`.
    pub fn resized_crop(
        img: &RgbImage,
        top: usize,
        left: usize,
        height: usize,
        width: usize,
        out_width: usize,
        out_height: usize,
    ) -> Result<RgbImage> {
        let outside = |start: usize, len: usize, size: usize| start.checked_add(len).is_none_or(|end| end > size);
        if height == 0 || width == 0 || outside(top, height, img.height()) || outside(left, width, img.width()) {
            return Err(DataError::invalid(
                "resized_crop",
                format!(
                    "crop box top={top} left={left} height={height} width={width} does not lie inside a {}x{} image",
                    img.width(),
                    img.height()
                ),
            ));
        }
        check_output("resized_crop", out_width, out_height)?;
        Ok(resize::resize_bilinear(img, Rect { x0: left, y0: top, w: width, h: height }, out_width, out_height))
    }

    /// `F.center_crop`: pads with black (split as torchvision does) where the image is smaller
    /// than the crop, then crops at `round((H - h) / 2)` (Python's round, half to even).
    pub fn center_crop(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
        check_output("center_crop", width, height)?;
        let (iw, ih) = (img.width(), img.height());
        // Left/top padding only: right/bottom padding is implied by the output size.
        let pad_l = width.saturating_sub(iw) / 2;
        let pad_t = height.saturating_sub(ih) / 2;
        let pw = if width > iw { iw + pad_l + (width - iw).div_ceil(2) } else { iw };
        let ph = if height > ih { ih + pad_t + (height - ih).div_ceil(2) } else { ih };
        let crop_left = round_half_even_half(pw - width);
        let crop_top = round_half_even_half(ph - height);
        if pad_l == 0 && pad_t == 0 && width <= iw && height <= ih {
            return Ok(resize::crop(img, Rect { x0: crop_left, y0: crop_top, w: width, h: height }));
        }
        // Output pixel (x, y) reads padded pixel (x + crop_left, y + crop_top), i.e. source pixel
        // (x + crop_left - pad_l, y + crop_top - pad_t) where that lies inside the image.
        let mut out = RgbImage::new(width, height);
        let dx = crop_left as isize - pad_l as isize;
        let dy = crop_top as isize - pad_t as isize;
        let x_lo = (-dx).clamp(0, width as isize) as usize;
        let x_hi = (iw as isize - dx).clamp(0, width as isize) as usize;
        for y in 0..height {
            let sy = y as isize + dy;
            if sy < 0 || sy >= ih as isize || x_lo >= x_hi {
                continue;
            }
            let src = img.row(sy as usize);
            let sx0 = (x_lo as isize + dx) as usize;
            let n = x_hi - x_lo;
            out.as_raw_mut()[(y * width + x_lo) * 3..(y * width + x_hi) * 3]
                .copy_from_slice(&src[sx0 * 3..(sx0 + n) * 3]);
        }
        Ok(out)
    }

    /// `int(round(d / 2.0))` for a non-negative integer `d`: halves go to the even neighbour.
    fn round_half_even_half(d: usize) -> usize {
        (d as f64 / 2.0).round_ties_even() as usize
    }

    /// Mirrors left-right.
    pub fn hflip(img: &mut RgbImage) {
        let w = img.width();
        for row in img.as_raw_mut().chunks_exact_mut(w * 3) {
            for x in 0..w / 2 {
                let (a, b) = (x * 3, (w - 1 - x) * 3);
                for c in 0..3 {
                    row.swap(a + c, b + c);
                }
            }
        }
    }

    /// Mirrors top-bottom.
    pub fn vflip(img: &mut RgbImage) {
        let (w, h) = (img.width(), img.height());
        let data = img.as_raw_mut();
        for y in 0..h / 2 {
            let (top, bottom) = data.split_at_mut((h - 1 - y) * w * 3);
            top[y * w * 3..(y + 1) * w * 3].swap_with_slice(&mut bottom[..w * 3]);
        }
    }

    /// `F.to_tensor`: HWC `u8` to CHW `f32` in `[0, 1]` (`x / 255` in `f32`).
    pub fn to_tensor(img: &RgbImage) -> FloatImage {
        let (w, h) = (img.width(), img.height());
        let plane = w * h;
        let mut data = vec![0f32; 3 * plane];
        let (r, rest) = data.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        // The 256 possible values of `v / 255` in f32, computed once: the same floats, no division.
        static LUT: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
        let lut = LUT.get_or_init(|| std::array::from_fn(|v| v as f32 / 255.0));
        for (((p, r), g), b) in img.as_raw().chunks_exact(3).zip(r).zip(g).zip(b) {
            *r = lut[usize::from(p[0])];
            *g = lut[usize::from(p[1])];
            *b = lut[usize::from(p[2])];
        }
        FloatImage { channels: 3, height: h, width: w, data }
    }

    /// `F.normalize`: `(x - mean[c]) / std[c]` in `f32`, in place. `mean` and `std` hold one value
    /// per channel, or one value for all.
    pub fn normalize(t: &mut FloatImage, mean: &[f32], std: &[f32]) -> Result<()> {
        let c = t.channels;
        let per_channel = |v: &[f32], what: &str| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; c]),
                n if n == c => Ok(v.to_vec()),
                n => Err(DataError::Transform {
                    transform: "Normalize",
                    msg: format!("{what} has {n} values for a tensor of {c} channels (shape {:?})", t.shape()),
                }),
            }
        };
        let (m, s) = (per_channel(mean, "mean")?, per_channel(std, "std")?);
        let plane = t.height * t.width;
        if plane == 0 {
            return Ok(());
        }
        for (ch, xs) in t.data.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (m[ch], s[ch]);
            for x in xs {
                *x = (*x - m) / s;
            }
        }
        Ok(())
    }
}

use functional as F;

// ---------------------------------------------------------------------------------------------
// Transform types
// ---------------------------------------------------------------------------------------------

/// Runs transforms in order (`transforms.Compose`).
#[derive(Debug, Default)]
pub struct Compose {
    steps: Vec<Box<dyn Transform>>,
}

impl Compose {
    /// A pipeline of `steps`.
    pub fn new(steps: Vec<Box<dyn Transform>>) -> Compose {
        Compose { steps }
    }

    /// Appends a step.
    pub fn push(mut self, t: impl Transform + 'static) -> Compose {
        self.steps.push(Box::new(t));
        self
    }

    /// The steps.
    pub fn steps(&self) -> &[Box<dyn Transform>] {
        &self.steps
    }
}

impl Transform for Compose {
    fn apply(&self, mut x: Sample, rng: &mut Rng) -> Result<Sample> {
        let mut i = 0;
        while i < self.steps.len() {
            // `Resize` then `CenterCrop` on an image: one pass that resamples only the kept
            // window (the same pixels; neither step draws from `rng`).
            let step = |j: usize| self.steps.get(j).and_then(|t| t.as_any());
            let resize = step(i).and_then(|a| a.downcast_ref::<Resize>());
            let crop = step(i + 1).and_then(|a| a.downcast_ref::<CenterCrop>());
            if let (Some(resize), Some(crop), Sample::Image(img)) = (resize, crop, &x) {
                x = Sample::Image(resize.resize_center_crop(img, crop)?);
                i += 2;
                continue;
            }
            x = self.steps[i].apply(x, rng)?;
            i += 1;
        }
        Ok(x)
    }
}

/// The target size of [`Resize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `Resize(int)`: the shorter side becomes this, keeping the aspect ratio (truncated).
    Shorter(usize),
    /// `Resize((h, w))`: exactly this size.
    Exact {
        /// Output height.
        height: usize,
        /// Output width.
        width: usize,
    },
}

/// `transforms.Resize(size)` with bilinear interpolation and antialiasing (as on PIL images).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    size: Size,
}

impl Resize {
    /// `Resize(size)`: the shorter side becomes `size`.
    pub fn new(size: usize) -> Result<Resize> {
        if size == 0 {
            return Err(DataError::invalid("Resize", "size must be positive"));
        }
        Ok(Resize { size: Size::Shorter(size) })
    }

    /// `Resize((height, width))`.
    pub fn exact(height: usize, width: usize) -> Result<Resize> {
        if height == 0 || width == 0 {
            return Err(DataError::invalid("Resize", format!("size ({height}, {width}) must be positive")));
        }
        Ok(Resize { size: Size::Exact { height, width } })
    }

    /// The target size.
    pub fn size(&self) -> Size {
        self.size
    }

    /// Resizes one image.
    pub fn resize(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = self.output_size(img)?;
        if (w, h) == (img.width(), img.height()) {
            return Ok(img.clone());
        }
        F::resize(img, w, h)
    }

    /// `crop` applied to this resize of `img`, resampling only the pixels the crop keeps.
    pub fn resize_center_crop(&self, img: &RgbImage, crop: &CenterCrop) -> Result<RgbImage> {
        let (w, h) = self.output_size(img)?;
        F::resize_center_crop(img, w, h, crop.width, crop.height)
    }

    /// The output size for `img`, refused when empty or over the pixel limit.
    fn output_size(&self, img: &RgbImage) -> Result<(usize, usize)> {
        let (w, h) = match self.size {
            Size::Shorter(s) => F::resized_size(img.width(), img.height(), s),
            Size::Exact { height, width } => (width, height),
        };
        if w == 0 || h == 0 || w as u128 * h as u128 > u128::from(DEFAULT_MAX_PIXELS) {
            return Err(DataError::Transform {
                transform: "Resize",
                msg: format!(
                    "{}x{} image would become {w}x{h} (empty or over {DEFAULT_MAX_PIXELS} pixels)",
                    img.width(),
                    img.height()
                ),
            });
        }
        Ok((w, h))
    }
}

impl Transform for Resize {
    fn apply(&self, x: Sample, _: &mut Rng) -> Result<Sample> {
        let img = x.into_image("Resize")?;
        Ok(Sample::Image(self.resize(&img)?))
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// `transforms.CenterCrop(size)`, padding with black where the image is smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CenterCrop {
    height: usize,
    width: usize,
}

impl CenterCrop {
    /// A square crop.
    pub fn new(size: usize) -> Result<CenterCrop> {
        CenterCrop::rect(size, size)
    }

    /// A `height` x `width` crop.
    pub fn rect(height: usize, width: usize) -> Result<CenterCrop> {
        if height == 0 || width == 0 {
            return Err(DataError::invalid("CenterCrop", format!("size ({height}, {width}) must be positive")));
        }
        Ok(CenterCrop { height, width })
    }
}

impl Transform for CenterCrop {
    fn apply(&self, x: Sample, _: &mut Rng) -> Result<Sample> {
        let img = x.into_image("CenterCrop")?;
        Ok(Sample::Image(F::center_crop(&img, self.width, self.height)?))
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// A crop box in pixels, as `RandomResizedCrop.get_params` returns `(i, j, h, w)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row (`i`).
    pub top: usize,
    /// First column (`j`).
    pub left: usize,
    /// Rows (`h`).
    pub height: usize,
    /// Columns (`w`).
    pub width: usize,
}

/// `transforms.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3))`, bilinear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomResizedCrop {
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// A square output of `size` with torchvision's default scale and ratio ranges.
    pub fn new(size: usize) -> Result<RandomResizedCrop> {
        if size == 0 {
            return Err(DataError::invalid("RandomResizedCrop", "size must be positive"));
        }
        Ok(RandomResizedCrop { height: size, width: size, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) })
    }

    /// A `height` x `width` output.
    pub fn rect(height: usize, width: usize) -> Result<RandomResizedCrop> {
        if height == 0 || width == 0 {
            return Err(DataError::invalid("RandomResizedCrop", format!("size ({height}, {width}) must be positive")));
        }
        Ok(RandomResizedCrop { height, width, ..RandomResizedCrop::new(1)? })
    }

    /// The range of the crop's area as a fraction of the image's.
    pub fn scale(mut self, lo: f64, hi: f64) -> Result<RandomResizedCrop> {
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(DataError::invalid(
                "RandomResizedCrop",
                format!("scale ({lo}, {hi}) must satisfy 0 < lo <= hi"),
            ));
        }
        self.scale = (lo, hi);
        Ok(self)
    }

    /// The range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub fn ratio(mut self, lo: f64, hi: f64) -> Result<RandomResizedCrop> {
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(DataError::invalid(
                "RandomResizedCrop",
                format!("ratio ({lo}, {hi}) must satisfy 0 < lo <= hi"),
            ));
        }
        self.ratio = (lo, hi);
        Ok(self)
    }

    /// torchvision's `get_params` for a `width` x `height` image: up to ten draws of an area
    /// fraction `U(scale)` and a log-uniform aspect ratio, `w = round(sqrt(area * r))`,
    /// `h = round(sqrt(area / r))` (half to even), accepted if they fit, placed uniformly; else
    /// a centred crop with the ratio clamped into range, or the whole image.
    pub fn get_params(&self, width: usize, height: usize, rng: &mut Rng) -> CropBox {
        let area = (width * height) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform_range(self.scale.0, self.scale.1);
            let aspect = rng.uniform_range(log_lo, log_hi).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
                let (w, h) = (w as usize, h as usize);
                let top = rng.below(height - h + 1);
                let left = rng.below(width - w + 1);
                return CropBox { top, left, height: h, width: w };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.ratio.0 {
            (width, ((width as f64 / self.ratio.0).round_ties_even() as usize).clamp(1, height))
        } else if in_ratio > self.ratio.1 {
            (((height as f64 * self.ratio.1).round_ties_even() as usize).clamp(1, width), height)
        } else {
            (width, height)
        };
        CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
    }
}

impl Transform for RandomResizedCrop {
    fn apply(&self, x: Sample, rng: &mut Rng) -> Result<Sample> {
        let img = x.into_image("RandomResizedCrop")?;
        let b = self.get_params(img.width(), img.height(), rng);
        Ok(Sample::Image(F::resized_crop(&img, b.top, b.left, b.height, b.width, self.width, self.height)?))
    }
}

fn check_probability(what: &'static str, p: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(DataError::invalid(what, format!("probability {p} is not in [0, 1]")))
    }
}

/// `transforms.RandomHorizontalFlip(p)`: mirrors left-right with probability `p` (one uniform
/// draw per sample, flipped when it is below `p`). Works on images and tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomHorizontalFlip {
    p: f64,
}

impl RandomHorizontalFlip {
    /// Flips with probability `p`.
    pub fn new(p: f64) -> Result<RandomHorizontalFlip> {
        Ok(RandomHorizontalFlip { p: check_probability("RandomHorizontalFlip", p)? })
    }
}

impl Default for RandomHorizontalFlip {
    fn default() -> Self {
        RandomHorizontalFlip { p: 0.5 }
    }
}

/// `transforms.RandomVerticalFlip(p)`: mirrors top-bottom with probability `p`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomVerticalFlip {
    p: f64,
}

impl RandomVerticalFlip {
    /// Flips with probability `p`.
    pub fn new(p: f64) -> Result<RandomVerticalFlip> {
        Ok(RandomVerticalFlip { p: check_probability("RandomVerticalFlip", p)? })
    }
}

impl Default for RandomVerticalFlip {
    fn default() -> Self {
        RandomVerticalFlip { p: 0.5 }
    }
}

fn flip_tensor(t: &mut FloatImage, horizontal: bool) {
    let (w, h) = (t.width, t.height);
    if w == 0 || h == 0 {
        return;
    }
    for plane in t.data.chunks_exact_mut(w * h) {
        if horizontal {
            plane.chunks_exact_mut(w).for_each(<[f32]>::reverse);
        } else {
            for y in 0..h / 2 {
                let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
                top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
            }
        }
    }
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, x: Sample, rng: &mut Rng) -> Result<Sample> {
        if f64::from(rng.uniform()) >= self.p {
            return Ok(x);
        }
        Ok(match x {
            Sample::Image(mut i) => {
                F::hflip(&mut i);
                Sample::Image(i)
            }
            Sample::Tensor(mut t) => {
                flip_tensor(&mut t, true);
                Sample::Tensor(t)
            }
        })
    }
}

impl Transform for RandomVerticalFlip {
    fn apply(&self, x: Sample, rng: &mut Rng) -> Result<Sample> {
        if f64::from(rng.uniform()) >= self.p {
            return Ok(x);
        }
        Ok(match x {
            Sample::Image(mut i) => {
                F::vflip(&mut i);
                Sample::Image(i)
            }
            Sample::Tensor(mut t) => {
                flip_tensor(&mut t, false);
                Sample::Tensor(t)
            }
        })
    }
}

/// `transforms.ColorJitter(brightness, contrast, saturation, hue)` on 8-bit images.
///
/// As torchvision: a value `v` means the factor range `[max(0, 1 - v), 1 + v]` (for hue,
/// `[-v, v]` with `v <= 0.5`); zero disables that adjustment. Per sample, the four adjustments
/// run in a random order (a permutation of 4), each with a factor drawn uniformly from its range.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ColorJitter {
    brightness: Option<(f64, f64)>,
    contrast: Option<(f64, f64)>,
    saturation: Option<(f64, f64)>,
    hue: Option<(f64, f64)>,
}

/// The factors one application of [`ColorJitter`] drew, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// `adjust_brightness(factor)`.
    Brightness(f64),
    /// `adjust_contrast(factor)`.
    Contrast(f64),
    /// `adjust_saturation(factor)`.
    Saturation(f64),
    /// `adjust_hue(factor)`.
    Hue(f64),
}

impl ColorJitter {
    /// torchvision's `ColorJitter(brightness, contrast, saturation, hue)` with scalar arguments.
    pub fn new(brightness: f64, contrast: f64, saturation: f64, hue: f64) -> Result<ColorJitter> {
        let centred = |name: &'static str, v: f64| -> Result<Option<(f64, f64)>> {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(DataError::invalid("ColorJitter", format!("{name} = {v} must be non-negative")));
            }
            let r = ((1.0 - v).max(0.0), 1.0 + v);
            Ok(if r == (1.0, 1.0) { None } else { Some(r) })
        };
        if !(0.0..=0.5).contains(&hue) {
            return Err(DataError::invalid("ColorJitter", format!("hue = {hue} must be in [0, 0.5]")));
        }
        Ok(ColorJitter {
            brightness: centred("brightness", brightness)?,
            contrast: centred("contrast", contrast)?,
            saturation: centred("saturation", saturation)?,
            hue: if hue == 0.0 { None } else { Some((-hue, hue)) },
        })
    }

    /// Sets the factor ranges explicitly (`(min, max)` tuples as torchvision accepts); `None`
    /// disables an adjustment.
    pub fn ranges(
        brightness: Option<(f64, f64)>,
        contrast: Option<(f64, f64)>,
        saturation: Option<(f64, f64)>,
        hue: Option<(f64, f64)>,
    ) -> Result<ColorJitter> {
        let check = |name: &str, r: Option<(f64, f64)>, lo: f64, hi: f64| -> Result<()> {
            match r {
                Some((a, b)) if !(lo <= a && a <= b && b <= hi) => Err(DataError::invalid(
                    "ColorJitter",
                    format!("{name} range ({a}, {b}) must be ordered and within [{lo}, {hi}]"),
                )),
                _ => Ok(()),
            }
        };
        check("brightness", brightness, 0.0, f64::MAX)?;
        check("contrast", contrast, 0.0, f64::MAX)?;
        check("saturation", saturation, 0.0, f64::MAX)?;
        check("hue", hue, -0.5, 0.5)?;
        Ok(ColorJitter { brightness, contrast, saturation, hue })
    }

    /// torchvision's `get_params`: a permutation of the four adjustments, then one factor per
    /// enabled adjustment (brightness, contrast, saturation, hue in that order of drawing).
    pub fn get_params(&self, rng: &mut Rng) -> Vec<Jitter> {
        let order = rng.permutation(4);
        let mut draw = |r: Option<(f64, f64)>| r.map(|(a, b)| rng.uniform_range(a, b));
        let (b, c, s, h) = (draw(self.brightness), draw(self.contrast), draw(self.saturation), draw(self.hue));
        order
            .into_iter()
            .filter_map(|i| match i {
                0 => b.map(Jitter::Brightness),
                1 => c.map(Jitter::Contrast),
                2 => s.map(Jitter::Saturation),
                _ => h.map(Jitter::Hue),
            })
            .collect()
    }

    /// Applies fixed adjustments in order (what one random draw of this transform does).
    pub fn apply_params(img: &mut RgbImage, params: &[Jitter]) {
        for p in params {
            match *p {
                Jitter::Brightness(f) => color::adjust_brightness(img, f),
                Jitter::Contrast(f) => color::adjust_contrast(img, f),
                Jitter::Saturation(f) => color::adjust_saturation(img, f),
                Jitter::Hue(f) => color::adjust_hue(img, f),
            }
        }
    }
}

impl Transform for ColorJitter {
    fn apply(&self, x: Sample, rng: &mut Rng) -> Result<Sample> {
        let mut img = x.into_image("ColorJitter")?;
        let params = self.get_params(rng);
        ColorJitter::apply_params(&mut img, &params);
        Ok(Sample::Image(img))
    }
}

/// `transforms.ToTensor()`: HWC `u8` to CHW `f32` in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ToTensor;

impl Transform for ToTensor {
    fn apply(&self, x: Sample, _: &mut Rng) -> Result<Sample> {
        let img = x.into_image("ToTensor")?;
        Ok(Sample::Tensor(F::to_tensor(&img)))
    }
}

/// `transforms.Normalize(mean, std)`: `(x - mean[c]) / std[c]` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// Per-channel (or single) mean and standard deviation; a zero std is refused.
    pub fn new(mean: &[f32], std: &[f32]) -> Result<Normalize> {
        if mean.is_empty() || std.is_empty() {
            return Err(DataError::invalid("Normalize", "mean and std must not be empty"));
        }
        if let Some(s) = std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
            return Err(DataError::invalid("Normalize", format!("std {std:?} holds {s}, which would divide by zero")));
        }
        Ok(Normalize { mean: mean.to_vec(), std: std.to_vec() })
    }
}

impl Transform for Normalize {
    fn apply(&self, x: Sample, _: &mut Rng) -> Result<Sample> {
        let mut t = x.into_tensor("Normalize")?;
        F::normalize(&mut t, &self.mean, &self.std)?;
        Ok(Sample::Tensor(t))
    }
}
