//! torchvision's colour adjustments on PIL images, bit for bit: `ImageEnhance.Brightness`,
//! `Contrast` and `Color` (saturation) are `Image.blend` with a degenerate image, computed in
//! `f32` and truncated; hue goes through Pillow's 8-bit HSV conversion and numpy's `uint8`
//! wrap-around. (Pillow: `libImaging/Blend.c`, `Convert.c`; `PIL/ImageEnhance.py`;
//! torchvision: `transforms/functional_pil.py`.)

use crate::image::RgbImage;

/// Pillow's `ImagingBlend(degenerate, image, alpha)`: `degenerate + alpha * (image - degenerate)`
/// in `f32`, truncated toward zero, clipped to `0..=255` when extrapolating.
#[inline]
fn blend(degenerate: u8, pixel: u8, alpha: f32) -> u8 {
    let d = i32::from(degenerate);
    let v = d as f32 + alpha * (i32::from(pixel) - d) as f32;
    if (0.0..=1.0).contains(&alpha) {
        v as u8
    } else if v <= 0.0 {
        0
    } else if v >= 255.0 {
        255
    } else {
        v as u8
    }
}

/// Pillow's RGB to `L`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
#[inline]
pub(crate) fn luma(p: &[u8]) -> u8 {
    ((u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16) as u8
}

/// `F.adjust_brightness`: blend with black.
pub fn adjust_brightness(img: &mut RgbImage, factor: f64) {
    let a = factor as f32;
    if a == 1.0 {
        return;
    }
    for v in img.as_raw_mut() {
        *v = blend(0, *v, a);
    }
}

/// `F.adjust_contrast`: blend with the image's mean luma (rounded to an integer grey).
pub fn adjust_contrast(img: &mut RgbImage, factor: f64) {
    let a = factor as f32;
    if a == 1.0 {
        return;
    }
    let data = img.as_raw_mut();
    let n = data.len() / 3;
    if n == 0 {
        return;
    }
    let sum: u64 = data.chunks_exact(3).map(|p| u64::from(luma(p))).sum();
    // ImageStat's mean is a float division; `int(mean + 0.5)` rounds half up.
    let mean = (sum as f64 / n as f64 + 0.5) as u8;
    for v in data {
        *v = blend(mean, *v, a);
    }
}

/// `F.adjust_saturation`: blend with the image's own grey (`convert("L").convert("RGB")`).
pub fn adjust_saturation(img: &mut RgbImage, factor: f64) {
    let a = factor as f32;
    if a == 1.0 {
        return;
    }
    for p in img.as_raw_mut().chunks_exact_mut(3) {
        let g = luma(p);
        for v in p {
            *v = blend(g, *v, a);
        }
    }
}

/// `F.adjust_hue` (`factor` in `[-0.5, 0.5]`, checked by the caller): shifts Pillow's 8-bit
/// hue by `uint8(factor * 255)` with wrap-around.
pub fn adjust_hue(img: &mut RgbImage, factor: f64) {
    // numpy's float -> uint8 cast truncates toward zero and wraps negatives (-76.5 -> 180).
    let shift = (factor * 255.0) as i32 as u8;
    for p in img.as_raw_mut().chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv(p[0], p[1], p[2]);
        let rgb = hsv_to_rgb(h.wrapping_add(shift), s, v);
        p.copy_from_slice(&rgb);
    }
}

/// Pillow's `rgb2hsv_row`, with its mix of `float` and `double` arithmetic kept.
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    let rc = f32::from(maxc - r) / cr;
    let gc = f32::from(maxc - g) / cr;
    let bc = f32::from(maxc - b) / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    let h = ((f64::from(h) / 6.0 + 1.0) % 1.0) as f32;
    let uh = ((f64::from(h) * 255.0) as i32).clamp(0, 255) as u8;
    let us = ((f64::from(s) * 255.0) as i32).clamp(0, 255) as u8;
    [uh, us, maxc]
}

/// Pillow's `hsv2rgb`.
fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hd = f64::from(h) * 6.0 / 255.0;
    let i = hd.floor() as i32;
    let f = (hd - f64::from(i)) as f32;
    let fs = (f64::from(s) / 255.0) as f32;
    let vd = f64::from(v);
    let round8 = |x: f64| (x.round() as i32).clamp(0, 255) as u8;
    let p = round8(vd * (1.0 - f64::from(fs)));
    let q = round8(vd * (1.0 - f64::from(fs * f)));
    let t = round8(vd * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip_is_close() {
        for r in (0..=255).step_by(15) {
            for g in (0..=255).step_by(15) {
                for b in (0..=255).step_by(15) {
                    let [h, s, v] = rgb_to_hsv(r as u8, g as u8, b as u8);
                    let back = hsv_to_rgb(h, s, v);
                    for (x, y) in back.iter().zip([r, g, b]) {
                        // 8-bit hue and saturation lose a few levels.
                        assert!((i32::from(*x) - y).abs() <= 8, "{r},{g},{b} -> {back:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn luma_matches_pillow_examples() {
        assert_eq!(luma(&[255, 255, 255]), 255);
        assert_eq!(luma(&[0, 0, 0]), 0);
        assert_eq!(luma(&[255, 0, 0]), 76);
        assert_eq!(luma(&[0, 255, 0]), 150);
        assert_eq!(luma(&[0, 0, 255]), 29);
    }
}
