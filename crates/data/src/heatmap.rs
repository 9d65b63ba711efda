//! Heatmaps drawn over pictures (Grad-CAM's overlays): the jet colour map, and the blend of
//! pytorch-grad-cam's `show_cam_on_image(img, mask, use_rgb=True, image_weight=0.5)`.
//!
//! The blend follows `show_cam_on_image` step for step — the mask quantised to 8 bits
//! (`np.uint8(255 * mask)`), coloured, `(1 - w) * colour + w * image` in `[0, 1]`, the result
//! divided by its largest value, then truncated to 8 bits — except for the colour map: OpenCV's
//! `COLORMAP_JET` is a table interpolated from control points, this is the classic piecewise
//! linear jet (MATLAB's and matplotlib's, dark blue - cyan - yellow - dark red), which differs
//! from it by a few levels.

use crate::error::{DataError, Result};
use crate::image::RgbImage;

/// The jet colour of `v` in `[0, 1]` (clamped; NaN is 0): dark blue at 0, through blue, cyan,
/// yellow and red, to dark red at 1.
pub fn jet(v: f32) -> [u8; 3] {
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let ramp = |centre: f32| ((1.5 - (4.0 * v - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// `img` with `heatmap` (row-major, `img.height() * img.width()` values in `[0, 1]`; others are
/// clamped) blended over it in jet colours, as pytorch-grad-cam's `show_cam_on_image` draws it:
/// `image_weight` of the picture (0.5 there) and `1 - image_weight` of the colours.
///
/// # Errors
/// [`DataError::InvalidArgument`] when the heatmap's length does not match the image or
/// `image_weight` is outside `[0, 1]`.
pub fn overlay_heatmap(img: &RgbImage, heatmap: &[f32], image_weight: f32) -> Result<RgbImage> {
    let (w, h) = (img.width(), img.height());
    if heatmap.len() != w * h {
        return Err(DataError::invalid(
            "overlay_heatmap",
            format!("a heatmap of {} values for a {w}x{h} image (needs {})", heatmap.len(), w * h),
        ));
    }
    if !(0.0..=1.0).contains(&image_weight) {
        return Err(DataError::invalid("overlay_heatmap", format!("image_weight {image_weight} is not in [0, 1]")));
    }
    let blended: Vec<f32> = img
        .as_raw()
        .chunks_exact(3)
        .zip(heatmap)
        .flat_map(|(px, &m)| {
            // np.uint8(255 * mask): truncation (NaN and out-of-range values clamped first).
            let level = (255.0 * if m.is_nan() { 0.0 } else { m.clamp(0.0, 1.0) }) as u8;
            let colour = jet(f32::from(level) / 255.0);
            (0..3).map(move |c| {
                (1.0 - image_weight) * f32::from(colour[c]) / 255.0 + image_weight * f32::from(px[c]) / 255.0
            })
        })
        .collect();
    // cam / np.max(cam), then np.uint8(255 * cam).
    let max = blended.iter().copied().fold(0f32, f32::max);
    let bytes = blended.iter().map(|&v| if max > 0.0 { (255.0 * (v / max)) as u8 } else { 0 }).collect();
    RgbImage::from_raw(w, h, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_from_dark_blue_to_dark_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(0.125), [0, 0, 255]);
        assert_eq!(jet(0.375), [0, 255, 255]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(0.625), [255, 255, 0]);
        assert_eq!(jet(0.875), [255, 0, 0]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(f32::NAN), jet(0.0));
        assert_eq!(jet(7.0), jet(1.0));
    }

    #[test]
    fn overlay_blends_and_rescales_as_show_cam_on_image() {
        // A white pixel under mask 1 (dark red) and a black pixel under mask 0 (dark blue).
        let img = RgbImage::from_raw(2, 1, vec![255, 255, 255, 0, 0, 0]).unwrap();
        let out = overlay_heatmap(&img, &[1.0, 0.0], 0.5).unwrap();
        // Blend: [0.5 + 0.5*128/255, 0.5, 0.5] and [0, 0, 0.5*128/255]; the largest value
        // (0.751) becomes 255.
        let max = 0.5 + 0.5 * 128.0 / 255.0;
        let px = |v: f32| (255.0 * (v / max)) as u8;
        assert_eq!(out.as_raw(), &[255, px(0.5), px(0.5), 0, 0, px(0.5 * 128.0 / 255.0)]);
        assert!(overlay_heatmap(&img, &[1.0], 0.5).unwrap_err().to_string().contains("2x1"));
        assert!(overlay_heatmap(&img, &[1.0, 0.0], 1.5).is_err());
    }
}
