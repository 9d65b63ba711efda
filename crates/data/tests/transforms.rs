//! Transforms: the random ones statistically (against a naive transcription of torchvision's
//! Python), the resampler against a naive float implementation of Pillow's algorithm, and
//! properties (proptest). Exactness against torchvision itself is in parity.rs.

use data::transforms::{functional as F, sample_rng, Jitter, Rng};
use data::{
    CenterCrop, ColorJitter, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, RandomVerticalFlip, Resize,
    RgbImage, Sample, ToTensor, Transform,
};
use proptest::prelude::*;

fn noise_image(w: usize, h: usize, seed: u64) -> RgbImage {
    let mut rng = Rng::seed(seed);
    RgbImage::from_raw(w, h, (0..w * h * 3).map(|_| rng.below(256) as u8).collect()).unwrap()
}

/// torchvision's `RandomResizedCrop.get_params`, transcribed naively from the Python (with
/// Python's round-half-even), drawing from its own generator.
fn reference_params(width: usize, height: usize, rng: &mut Rng) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let log_ratio = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform_range(0.08, 1.0);
        let aspect_ratio = rng.uniform_range(log_ratio.0, log_ratio.1).exp();
        let w = (target_area * aspect_ratio).sqrt().round_ties_even() as i64;
        let h = (target_area / aspect_ratio).sqrt().round_ties_even() as i64;
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let i = rng.below(height - h as usize + 1);
            let j = rng.below(width - w as usize + 1);
            return (i, j, h as usize, w as usize);
        }
    }
    unreachable!("the statistical test uses an image where a try always succeeds eventually")
}

#[test]
fn random_resized_crop_samples_like_torchvision() {
    let t = RandomResizedCrop::new(224).unwrap();
    let (w, h) = (500usize, 375usize);
    let n = 20_000;
    let mut rng = Rng::seed(1);
    let mut ref_rng = Rng::seed(2);
    let stats = |boxes: &[(usize, usize, usize, usize)]| {
        let n = boxes.len() as f64;
        let area = boxes.iter().map(|b| (b.2 * b.3) as f64 / (w * h) as f64).sum::<f64>() / n;
        let log_ratio = boxes.iter().map(|b| (b.3 as f64 / b.2 as f64).ln()).sum::<f64>() / n;
        let centre_x = boxes.iter().map(|b| (b.1 as f64 + b.3 as f64 / 2.0) / w as f64).sum::<f64>() / n;
        let full = boxes.iter().filter(|b| b.2 * b.3 > w * h * 9 / 10).count() as f64 / n;
        [area, log_ratio, centre_x, full]
    };
    let ours: Vec<_> = (0..n)
        .map(|_| {
            let b = t.get_params(w, h, &mut rng);
            assert!(b.top + b.height <= h && b.left + b.width <= w && b.height > 0 && b.width > 0);
            (b.top, b.left, b.height, b.width)
        })
        .collect();
    let theirs: Vec<_> = (0..n).map(|_| reference_params(w, h, &mut ref_rng)).collect();
    let (a, b) = (stats(&ours), stats(&theirs));
    // Sampling error of each mean over 20,000 draws is well under these bounds.
    for (k, tol) in [0.01, 0.01, 0.01, 0.01].iter().enumerate() {
        assert!((a[k] - b[k]).abs() < *tol, "statistic {k}: ours {} vs reference {}", a[k], b[k]);
    }
    // Area fraction: (0.08 + 1) / 2 = 0.54 less the large crops that do not fit; centres centred.
    assert!((0.40..0.50).contains(&a[0]), "{a:?}");
    assert!((a[2] - 0.5).abs() < 0.01, "{a:?}");
}

#[test]
fn random_resized_crop_falls_back_to_a_clamped_centre_crop() {
    let t = RandomResizedCrop::new(8).unwrap();
    let mut rng = Rng::seed(0);
    // No try can fit a 10-pixel-high image: the fallback clamps the ratio to 4/3.
    let b = t.get_params(1000, 10, &mut rng);
    assert_eq!((b.top, b.left, b.height, b.width), (0, 493, 10, 13));
    let b = t.get_params(10, 1000, &mut rng);
    assert_eq!((b.top, b.left, b.height, b.width), (493, 0, 13, 10));
    // A 1x1 image is the whole image.
    let b = t.get_params(1, 1, &mut rng);
    assert_eq!((b.top, b.left, b.height, b.width), (0, 0, 1, 1));
    let out = t.apply(Sample::Image(noise_image(1000, 10, 3)), &mut rng).unwrap();
    assert!(matches!(out, Sample::Image(i) if i.width() == 8 && i.height() == 8));
}

#[test]
fn flips_happen_with_their_probability() {
    let img = noise_image(5, 3, 1);
    let mut flipped = img.clone();
    F::hflip(&mut flipped);
    let mut rng = Rng::seed(4);
    let n = 10_000;
    let t = RandomHorizontalFlip::new(0.3).unwrap();
    let k = (0..n)
        .filter(|_| t.apply(Sample::Image(img.clone()), &mut rng).unwrap() == Sample::Image(flipped.clone()))
        .count();
    // Binomial(10000, 0.3): standard deviation 46.
    assert!((k as i64 - 3000).abs() < 250, "{k}");
    for (p, want) in [(0.0, 0), (1.0, n)] {
        let t = RandomVerticalFlip::new(p).unwrap();
        let mut v = img.clone();
        F::vflip(&mut v);
        let k = (0..n)
            .filter(|_| t.apply(Sample::Image(img.clone()), &mut rng).unwrap() == Sample::Image(v.clone()))
            .count();
        assert_eq!(k, want);
    }
    assert!(RandomHorizontalFlip::new(1.5).is_err());
    assert!(RandomVerticalFlip::new(-0.1).is_err());
    // Pixel (x, y) goes to (w - 1 - x, y).
    assert_eq!(flipped.pixel(4, 2), img.pixel(0, 2));
}

#[test]
fn color_jitter_draws_orders_and_factors_like_torchvision() {
    let t = ColorJitter::new(0.4, 0.3, 0.2, 0.1).unwrap();
    let mut rng = Rng::seed(5);
    let n = 24_000;
    let mut orders = std::collections::HashMap::new();
    let mut sums = [0f64; 4];
    for _ in 0..n {
        let p = t.get_params(&mut rng);
        assert_eq!(p.len(), 4);
        let key: Vec<u8> = p
            .iter()
            .map(|j| match j {
                Jitter::Brightness(f) => {
                    assert!((0.6..=1.4).contains(f));
                    sums[0] += f;
                    0
                }
                Jitter::Contrast(f) => {
                    assert!((0.7..=1.3).contains(f));
                    sums[1] += f;
                    1
                }
                Jitter::Saturation(f) => {
                    assert!((0.8..=1.2).contains(f));
                    sums[2] += f;
                    2
                }
                Jitter::Hue(f) => {
                    assert!((-0.1..=0.1).contains(f));
                    sums[3] += f;
                    3
                }
            })
            .collect();
        *orders.entry(key).or_insert(0usize) += 1;
    }
    // All 24 orders, each about 1000 times (standard deviation 31).
    assert_eq!(orders.len(), 24);
    assert!(orders.values().all(|&c| (800..1200).contains(&c)), "{orders:?}");
    for (k, centre) in [1.0, 1.0, 1.0, 0.0].iter().enumerate() {
        assert!((sums[k] / n as f64 - centre).abs() < 0.01, "factor {k}");
    }
    // Zero disables an adjustment; out-of-range arguments are refused.
    let none = ColorJitter::new(0.0, 0.0, 0.0, 0.0).unwrap();
    assert!(none.get_params(&mut rng).is_empty());
    assert_eq!(ColorJitter::new(0.0, 0.5, 0.0, 0.0).unwrap().get_params(&mut rng).len(), 1);
    assert!(ColorJitter::new(0.0, 0.0, 0.0, 0.6).is_err());
    assert!(ColorJitter::new(-1.0, 0.0, 0.0, 0.0).is_err());
    assert!(ColorJitter::ranges(Some((1.5, 1.2)), None, None, None).is_err());
    assert!(ColorJitter::ranges(None, None, None, Some((-0.2, 0.7))).is_err());
    // Brightness 1.5 on a mid-grey: PIL's blend with black, truncated.
    let mut grey = RgbImage::from_raw(1, 1, vec![100, 171, 0]).unwrap();
    data::adjust_brightness(&mut grey, 1.5);
    assert_eq!(grey.as_raw(), &[150, 255, 0]);
}

#[test]
fn same_seed_same_sample_whatever_else_ran() {
    let pipe = Compose::default()
        .push(RandomResizedCrop::new(16).unwrap())
        .push(ColorJitter::new(0.4, 0.4, 0.4, 0.1).unwrap())
        .push(RandomHorizontalFlip::default())
        .push(ToTensor)
        .push(Normalize::new(&data::IMAGENET_MEAN, &data::IMAGENET_STD).unwrap());
    let img = noise_image(40, 30, 9);
    let run = |seed, epoch, index| pipe.apply(Sample::Image(img.clone()), &mut sample_rng(seed, epoch, index)).unwrap();
    assert_eq!(run(1, 2, 3), run(1, 2, 3));
    assert_ne!(run(1, 2, 3), run(1, 2, 4));
    assert_ne!(run(1, 2, 3), run(1, 3, 3));
    assert_ne!(run(1, 2, 3), run(2, 2, 3));
}

#[test]
fn stage_errors_name_the_transform() {
    let mut rng = Rng::seed(0);
    let t = Sample::Tensor(F::to_tensor(&noise_image(4, 4, 0)));
    let e = Resize::new(3).unwrap().apply(t.clone(), &mut rng).unwrap_err();
    assert!(e.to_string().contains("Resize") && e.to_string().contains("before ToTensor"), "{e}");
    let e = Normalize::new(&[0.5], &[0.5]).unwrap().apply(Sample::Image(noise_image(2, 2, 0)), &mut rng).unwrap_err();
    assert!(e.to_string().contains("Normalize"), "{e}");
    let e = Normalize::new(&[0.5, 0.5], &[0.5, 0.5]).unwrap().apply(t, &mut rng).unwrap_err();
    assert!(e.to_string().contains("2 values") && e.to_string().contains("3 channels"), "{e}");
    assert!(Normalize::new(&[0.5; 3], &[0.5, 0.0, 0.5]).is_err());
    assert!(Resize::new(0).is_err() && Resize::exact(0, 3).is_err());
    assert!(CenterCrop::new(0).is_err() && RandomResizedCrop::new(0).is_err());
    assert!(RandomResizedCrop::new(4).unwrap().scale(0.5, 0.1).is_err());
    assert!(RandomResizedCrop::new(4).unwrap().ratio(0.0, 1.0).is_err());
    assert!(F::resized_crop(&noise_image(4, 4, 0), 2, 2, 3, 3, 2, 2).is_err());
    assert!(data::presets::imagenet_eval(0, 224).is_err());
}

#[test]
fn resize_sizes_follow_torchvision() {
    assert_eq!(F::resized_size(500, 375, 256), (341, 256));
    assert_eq!(F::resized_size(375, 500, 256), (256, 341));
    assert_eq!(F::resized_size(256, 256, 224), (224, 224));
    assert_eq!(F::resized_size(640, 427, 256), (383, 256));
    assert_eq!(F::resized_size(1, 1000, 3), (3, 3000));
}

#[test]
fn center_crop_rounds_half_to_even_and_pads_with_black() {
    // 7 columns to lose: round(3.5) = 4 (Python), not 7 // 2 = 3.
    let img = noise_image(12, 5, 2);
    let c = F::center_crop(&img, 5, 5).unwrap();
    assert_eq!(c.pixel(0, 0), img.pixel(4, 0));
    let c = F::center_crop(&img, 7, 2).unwrap(); // 5 columns: round(2.5) = 2; 3 rows: round(1.5) = 2
    assert_eq!(c.pixel(0, 0), img.pixel(2, 2));
    // Larger than the image: left/top padding (c - i) // 2, the rest on the right/bottom.
    let c = F::center_crop(&img, 15, 8).unwrap();
    assert_eq!(c.pixel(0, 0), [0, 0, 0]);
    assert_eq!(c.pixel(1, 1), img.pixel(0, 0));
    assert_eq!(c.pixel(12, 5), img.pixel(11, 4));
    assert_eq!(c.pixel(14, 7), [0, 0, 0]);
}

/// Pillow's resampling in plain `f64`, without the fixed point: within one grey level of the
/// exact version per pass.
fn reference_resize(img: &RgbImage, ow: usize, oh: usize) -> Vec<f64> {
    fn weights(inp: usize, out: usize) -> Vec<Vec<(usize, f64)>> {
        let scale = inp as f64 / out as f64;
        let fs = scale.max(1.0);
        (0..out)
            .map(|o| {
                let centre = (o as f64 + 0.5) * scale;
                let taps: Vec<(usize, f64)> = (0..inp)
                    .map(|i| (i, (1.0 - ((i as f64 + 0.5 - centre) / fs).abs()).max(0.0)))
                    .filter(|t| t.1 > 0.0)
                    .collect();
                let sum: f64 = taps.iter().map(|t| t.1).sum();
                taps.into_iter().map(|(i, w)| (i, w / sum)).collect()
            })
            .collect()
    }
    let (w, h) = (img.width(), img.height());
    let (wx, wy) = (weights(w, ow), weights(h, oh));
    let mut tmp = vec![0.0; h * ow * 3];
    for y in 0..h {
        for (x, taps) in wx.iter().enumerate() {
            for c in 0..3 {
                tmp[(y * ow + x) * 3 + c] = taps.iter().map(|&(i, k)| k * f64::from(img.pixel(i, y)[c])).sum();
            }
        }
    }
    let mut out = vec![0.0; oh * ow * 3];
    for (y, taps) in wy.iter().enumerate() {
        for x in 0..ow * 3 {
            out[y * ow * 3 + x] = taps.iter().map(|&(i, k)| k * tmp[i * ow * 3 + x]).sum();
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn resize_is_within_a_level_of_the_float_oracle(w in 1usize..40, h in 1usize..40, ow in 1usize..50, oh in 1usize..50, seed in 0u64..1000) {
        let img = noise_image(w, h, seed);
        let ours = F::resize(&img, ow, oh).unwrap();
        let want = reference_resize(&img, ow, oh);
        for (a, b) in ours.as_raw().iter().zip(&want) {
            // One level for each of the two 8-bit roundings.
            prop_assert!((f64::from(*a) - b).abs() <= 1.51, "{w}x{h} -> {ow}x{oh}: {a} vs {b}");
        }
    }

    #[test]
    fn resized_crop_equals_crop_then_resize(w in 2usize..30, h in 2usize..30, ow in 1usize..20, oh in 1usize..20, seed in 0u64..1000) {
        let img = noise_image(w, h, seed);
        let mut rng = Rng::seed(seed);
        let (cw, ch) = (1 + rng.below(w), 1 + rng.below(h));
        let (left, top) = (rng.below(w - cw + 1), rng.below(h - ch + 1));
        let direct = F::resized_crop(&img, top, left, ch, cw, ow, oh).unwrap();
        let mut cropped = Vec::new();
        for y in top..top + ch {
            for x in left..left + cw {
                cropped.extend_from_slice(&img.pixel(x, y));
            }
        }
        let cropped = RgbImage::from_raw(cw, ch, cropped).unwrap();
        prop_assert_eq!(direct, F::resize(&cropped, ow, oh).unwrap());
    }

    #[test]
    fn resize_then_center_crop_in_one_pass_equals_the_two_steps(w in 1usize..40, h in 1usize..40, ow in 1usize..50, oh in 1usize..50, cw in 1usize..55, ch in 1usize..55, seed in 0u64..1000) {
        let img = noise_image(w, h, seed);
        let two_steps = F::center_crop(&F::resize(&img, ow, oh).unwrap(), cw, ch).unwrap();
        prop_assert_eq!(&F::resize_center_crop(&img, ow, oh, cw, ch).unwrap(), &two_steps);
        // Compose takes the one-pass route for the pair, including `Resize(int)`.
        let short = 1 + (seed as usize % 45);
        let pipeline = Compose::default().push(Resize::new(short).unwrap()).push(CenterCrop::rect(ch, cw).unwrap());
        let stepwise = F::center_crop(&Resize::new(short).unwrap().resize(&img).unwrap(), cw, ch).unwrap();
        let out = pipeline.apply(Sample::Image(img), &mut Rng::seed(0)).unwrap().into_image("test").unwrap();
        prop_assert_eq!(out, stepwise);
    }

    #[test]
    fn center_crop_has_the_right_size_and_content(w in 1usize..20, h in 1usize..20, cw in 1usize..25, ch in 1usize..25) {
        let img = noise_image(w, h, 7);
        let c = F::center_crop(&img, cw, ch).unwrap();
        prop_assert_eq!((c.width(), c.height()), (cw, ch));
        // Every output pixel is black padding or the source pixel at the torchvision offset.
        let (pl, pt) = (cw.saturating_sub(w) / 2, ch.saturating_sub(h) / 2);
        let padded_w = if cw > w { w + pl + (cw - w).div_ceil(2) } else { w };
        let padded_h = if ch > h { h + pt + (ch - h).div_ceil(2) } else { h };
        let left = ((padded_w - cw) as f64 / 2.0).round_ties_even() as isize - pl as isize;
        let top = ((padded_h - ch) as f64 / 2.0).round_ties_even() as isize - pt as isize;
        for y in 0..ch {
            for x in 0..cw {
                let (sx, sy) = (x as isize + left, y as isize + top);
                let want = if sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                    img.pixel(sx as usize, sy as usize)
                } else {
                    [0, 0, 0]
                };
                prop_assert_eq!(c.pixel(x, y), want);
            }
        }
    }

    #[test]
    fn flips_are_involutions_on_images_and_tensors(w in 1usize..9, h in 1usize..9, seed in 0u64..100) {
        let img = noise_image(w, h, seed);
        let mut f = img.clone();
        F::hflip(&mut f);
        F::hflip(&mut f);
        prop_assert_eq!(&f, &img);
        F::vflip(&mut f);
        F::vflip(&mut f);
        prop_assert_eq!(&f, &img);
        // On tensors the flip agrees with flipping the image first.
        let mut rng = Rng::seed(0);
        let t = RandomHorizontalFlip::new(1.0).unwrap().apply(Sample::Tensor(F::to_tensor(&img)), &mut rng).unwrap();
        let mut fi = img.clone();
        F::hflip(&mut fi);
        prop_assert_eq!(t, Sample::Tensor(F::to_tensor(&fi)));
        let t = RandomVerticalFlip::new(1.0).unwrap().apply(Sample::Tensor(F::to_tensor(&img)), &mut rng).unwrap();
        let mut fi = img.clone();
        F::vflip(&mut fi);
        prop_assert_eq!(t, Sample::Tensor(F::to_tensor(&fi)));
    }

    #[test]
    fn to_tensor_and_normalize_are_torchvisions_arithmetic(seed in 0u64..100) {
        let img = noise_image(3, 2, seed);
        let mut t = F::to_tensor(&img);
        F::normalize(&mut t, &data::IMAGENET_MEAN, &data::IMAGENET_STD).unwrap();
        for c in 0..3 {
            for y in 0..2 {
                for x in 0..3 {
                    let v = f32::from(img.pixel(x, y)[c]) / 255.0;
                    let want = (v - data::IMAGENET_MEAN[c]) / data::IMAGENET_STD[c];
                    prop_assert_eq!(t.data[(c * 2 + y) * 3 + x], want);
                }
            }
        }
    }
}

#[test]
fn absurd_sizes_are_errors_not_aborts() {
    let img = noise_image(4, 3, 0);
    let mut rng = Rng::seed(0);
    for t in [
        Box::new(Resize::new(1 << 20).unwrap()) as Box<dyn Transform>,
        Box::new(Resize::exact(100_000, 100_000).unwrap()),
        Box::new(CenterCrop::new(1 << 20).unwrap()),
        Box::new(RandomResizedCrop::new(1 << 20).unwrap()),
    ] {
        let e = t.apply(Sample::Image(img.clone()), &mut rng).unwrap_err();
        assert!(e.to_string().contains("pixels"), "{t:?}: {e}");
    }
    assert!(F::resized_crop(&img, usize::MAX, 0, 2, 2, 2, 2).is_err());
    assert!(F::resized_crop(&img, 0, 0, 3, 4, 0, 2).is_err());
}
