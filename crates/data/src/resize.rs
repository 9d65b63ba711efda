//! Pillow's antialiased bilinear resampling, bit for bit.
//!
//! torchvision resizes PIL images with `Image.resize(size, BILINEAR)`, which is not textbook
//! bilinear interpolation: the triangle filter's support widens with the downscale factor (so
//! every source pixel contributes, which is the antialiasing), the weights are rounded to 22-bit
//! fixed point, and the image is resampled horizontally then vertically with the intermediate
//! rounded to 8 bits. Matching that exactly (Pillow's `libImaging/Resample.c`) is what makes our
//! eval pipeline reproduce torchvision's numbers; a float implementation differs by one grey
//! level on a few percent of the pixels.
//!
//! The source may be a sub-rectangle of an image (a crop that is then resized, as
//! `RandomResizedCrop` does) without copying it: the filter is clamped at the rectangle's
//! borders, exactly as if the crop had been cut out first (what torchvision does).
//!
//! Why not the `fast_image_resize` crate: its bilinear filter is not Pillow's arithmetic (on the
//! parity fixtures up to 18% of the values differ by one level). Ours runs both passes through
//! one row-accumulation kernel (the horizontal pass on a transposed block), which vectorises,
//! with AVX2 where the CPU has it; it is about 3x slower than `fast_image_resize` and still a
//! minor cost next to JPEG decoding.

use crate::image::RgbImage;

/// Pillow's `PRECISION_BITS` for 8-bit images: 32 - 8 bits of result - 2 bits of headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: the first source index and the integer weights of its window.
struct Coeffs {
    /// `(first source index, number of taps)` per output position.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output position (unused tail is zero).
    weights: Vec<i32>,
    ksize: usize,
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a source of `in_size` pixels
/// resampled to `out_size` (box = the whole source).
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1.0
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncates toward zero, which `as i64` also does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = bilinear_filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = w * f64::from(1u32 << PRECISION_BITS);
            row[x] = if w < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { bounds, weights, ksize }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of a source image: columns `x0..x0 + w`, rows `y0..y0 + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
}

/// Resamples `rect` of `src` to `out_w` x `out_h` as Pillow's `Image.resize(.., BILINEAR)` would
/// after cropping to `rect`. The caller guarantees a non-empty rect inside the image and a
/// non-empty output size.
pub(crate) fn resize_bilinear(src: &RgbImage, rect: Rect, out_w: usize, out_h: usize) -> RgbImage {
    resize_bilinear_window(src, rect, out_w, out_h, Rect { x0: 0, y0: 0, w: out_w, h: out_h })
}

/// The `window` (in output pixels, inside `out_w` x `out_h`) of [`resize_bilinear`]'s result,
/// computing only that window: each output pixel depends on its own filter taps only, so the
/// pixels are those of the whole resize, cropped (`Resize` then `CenterCrop`, without the
/// pixels the crop throws away). Only the source columns and rows the window's taps read are
/// touched.
pub(crate) fn resize_bilinear_window(src: &RgbImage, rect: Rect, out_w: usize, out_h: usize, window: Rect) -> RgbImage {
    debug_assert!(rect.w > 0 && rect.h > 0 && out_w > 0 && out_h > 0 && window.w > 0 && window.h > 0);
    debug_assert!(rect.x0 + rect.w <= src.width() && rect.y0 + rect.h <= src.height());
    debug_assert!(window.x0 + window.w <= out_w && window.y0 + window.h <= out_h);
    let xs = window.x0..window.x0 + window.w;
    let ys = window.y0..window.y0 + window.h;
    // Per axis: the window's filter shifted to the span of source pixels it reads, or no filter
    // (the axis keeps its size, and the span is the window itself).
    let (horiz, xspan) = if out_w != rect.w { coeffs(rect.w, out_w).window(xs) } else { (None, xs) };
    let (vert, yspan) = if out_h != rect.h { coeffs(rect.h, out_h).window(ys) } else { (None, ys) };
    let sub = Rect { x0: rect.x0 + xspan.start, y0: rect.y0 + yspan.start, w: xspan.len(), h: yspan.len() };
    let (w, h) = (window.w, window.h);
    let resampled = horiz.map(|c| horizontal(src, sub, &c));
    let Some(vert) = vert else {
        return match resampled {
            Some(pixels) => RgbImage::from_raw(w, h, pixels).expect("sized above"),
            None => crop(src, sub),
        };
    };
    let rows: Vec<&[u8]> = match &resampled {
        Some(pixels) => pixels.chunks_exact(w * 3).collect(),
        None => (0..sub.h).map(|y| &src.row(sub.y0 + y)[sub.x0 * 3..(sub.x0 + sub.w) * 3]).collect(),
    };
    let mut out = vec![0u8; h * w * 3];
    resample_rows(&rows, &vert, &mut out);
    RgbImage::from_raw(w, h, out).expect("sized above")
}

impl Coeffs {
    /// The output positions `range` only, their taps shifted to start at the first source pixel
    /// any of them reads; with that span of source pixels.
    fn window(self, range: std::ops::Range<usize>) -> (Option<Coeffs>, std::ops::Range<usize>) {
        let bounds = &self.bounds[range.clone()];
        let first = bounds.iter().map(|&(x, _)| x).min().unwrap_or(0);
        let last = bounds.iter().map(|&(x, n)| x + n).max().unwrap_or(first);
        let window = Coeffs {
            bounds: bounds.iter().map(|&(x, n)| (x - first, n)).collect(),
            weights: self.weights[range.start * self.ksize..range.end * self.ksize].to_vec(),
            ksize: self.ksize,
        };
        (Some(window), first..last)
    }
}

/// The horizontal pass over every row of `rect`, returning them resampled to
/// `c.bounds.len()` pixels. The pass is done as a vertical one on the transposed block (each
/// source column becomes a row), where the sums run along contiguous memory and vectorise;
/// the integer sums are the same, so is the result.
fn horizontal(src: &RgbImage, rect: Rect, c: &Coeffs) -> Vec<u8> {
    let n = rect.h;
    let out_w = c.bounds.len();
    let mut columns = vec![0u8; rect.w * n * 3];
    for r in 0..n {
        let src_row = &src.row(rect.y0 + r)[rect.x0 * 3..(rect.x0 + rect.w) * 3];
        for (x, p) in src_row.chunks_exact(3).enumerate() {
            let o = (x * n + r) * 3;
            columns[o..o + 3].copy_from_slice(p);
        }
    }
    let column_rows: Vec<&[u8]> = columns.chunks_exact(n * 3).collect();
    let mut resampled = vec![0u8; out_w * n * 3];
    resample_rows(&column_rows, c, &mut resampled);
    let mut out = vec![0u8; n * out_w * 3];
    for (xx, column) in resampled.chunks_exact(n * 3).enumerate() {
        for (r, p) in column.chunks_exact(3).enumerate() {
            let o = (r * out_w + xx) * 3;
            out[o..o + 3].copy_from_slice(p);
        }
    }
    out
}

/// Pillow's vertical pass: output row `yy` is `sum_t w[yy][t] * rows[ymin + t]`, per byte, in
/// 22-bit fixed point. `out` holds `c.bounds.len()` rows of the input rows' length.
fn resample_rows(rows: &[&[u8]], c: &Coeffs, out: &mut [u8]) {
    const HALF: i32 = 1 << (PRECISION_BITS - 1);
    let Some(row_len) = rows.first().map(|r| r.len()) else { return };
    if row_len == 0 {
        return;
    }
    // One accumulator row per output row: the inner loop runs along the row, which vectorises.
    let mut acc = vec![0i32; row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(HALF);
        for (y, &w) in k.iter().enumerate() {
            accumulate(&mut acc, rows[ymin + y], w);
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// `acc[i] += row[i] * w`, compiled for the CPU's vector extension (`tensor::simd`): the
/// baseline x86-64 target has no packed 32-bit multiply; AVX2 multiplies 8 lanes, AVX-512 16.
fn accumulate(acc: &mut [i32], row: &[u8], w: i32) {
    tensor::multiversion! {
        unsafe fn dispatched(acc: &mut [i32], row: &[u8], w: i32) = accumulate_plain;
    }
    // SAFETY: slices only; no contract beyond the types.
    unsafe { dispatched(acc, row, w) }
}

#[inline(always)]
fn accumulate_plain<const FMA: bool>(acc: &mut [i32], row: &[u8], w: i32) {
    for (a, &p) in acc.iter_mut().zip(row) {
        *a += i32::from(p) * w;
    }
}

/// Copies `rect` of `src` out (the rect lies inside the image).
pub(crate) fn crop(src: &RgbImage, rect: Rect) -> RgbImage {
    let mut data = Vec::with_capacity(rect.w * rect.h * 3);
    for y in rect.y0..rect.y0 + rect.h {
        data.extend_from_slice(&src.row(y)[rect.x0 * 3..(rect.x0 + rect.w) * 3]);
    }
    RgbImage::from_raw(rect.w, rect.h, data).expect("sized above")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(10, 3), (3, 10), (500, 224), (7, 7), (1, 5), (5, 1)] {
            let c = coeffs(i, o);
            for xx in 0..o {
                let s: i32 = c.weights[xx * c.ksize..(xx + 1) * c.ksize].iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= c.ksize as i32, "{i}->{o} at {xx}: {s}");
            }
        }
    }

    #[test]
    fn dispatched_and_plain_accumulation_agree() {
        let row: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 256) as u8).collect();
        // Every vector extension this machine has: integer arithmetic, so bit for bit.
        for level in tensor::simd::available_simd_levels() {
            tensor::simd::set_simd_level(Some(level));
            for w in [0, 1, 1 << 21, (1 << 22) - 1] {
                let (mut a, mut b) = (vec![5i32; 1000], vec![5i32; 1000]);
                accumulate(&mut a, &row, w);
                accumulate_plain::<false>(&mut b, &row, w);
                assert_eq!(a, b, "{level}");
            }
        }
        tensor::simd::set_simd_level(None);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_raw(9, 5, [17u8, 200, 99].repeat(45)).unwrap();
        for (w, h) in [(4, 3), (20, 11), (9, 2), (1, 1)] {
            let out = resize_bilinear(&img, Rect { x0: 0, y0: 0, w: 9, h: 5 }, w, h);
            assert!(out.as_raw().chunks(3).all(|p| p == [17, 200, 99]), "{w}x{h}");
        }
    }
}
