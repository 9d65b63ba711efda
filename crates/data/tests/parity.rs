//! The transforms against torchvision 0.14 / Pillow 9.4 on real photos: fixtures made by
//! `fixtures/gen_data_fixtures.py` (see its docstring), listed in `fixtures/expected/cases.json`.
//!
//! PNG inputs decode identically here and in PIL, so on them every geometric and colour
//! transform must match to the bit. JPEG inputs go through different decoders (the `image`
//! crate's vs libjpeg-turbo), which differ by a grey level or two on some pixels; for those the
//! test bounds the error and prints it (`cargo test -p data --test parity -- --nocapture`).

use data::transforms::{functional as F, Jitter};
use data::{ColorJitter, Resize, RgbImage, DEFAULT_MAX_PIXELS};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn open(rel: &str) -> RgbImage {
    RgbImage::open(fixtures().join(rel), DEFAULT_MAX_PIXELS).unwrap_or_else(|e| panic!("{e}"))
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("expected/cases.json")).expect("cases.json");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    v.as_array().expect("a list").iter().filter(|c| c.get("kind").is_some()).cloned().collect()
}

fn u(v: &Value) -> usize {
    v.as_u64().expect("an integer") as usize
}

/// `(max |diff| in grey levels, fraction of values within one level, count)`.
fn compare(ours: &[u8], theirs: &[u8]) -> (u8, f64, usize) {
    assert_eq!(ours.len(), theirs.len());
    let diffs: Vec<u8> = ours.iter().zip(theirs).map(|(a, b)| a.abs_diff(*b)).collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let within = diffs.iter().filter(|d| **d <= 1).count() as f64 / diffs.len().max(1) as f64;
    (max, within, diffs.len())
}

fn apply_steps(mut img: RgbImage, steps: &[Value]) -> RgbImage {
    for s in steps {
        let s = s.as_array().expect("a step");
        img = match s[0].as_str().expect("a step name") {
            "resize" => Resize::new(u(&s[1])).unwrap().resize(&img).unwrap(),
            "resize_hw" => Resize::exact(u(&s[1]), u(&s[2])).unwrap().resize(&img).unwrap(),
            "center_crop" => F::center_crop(&img, u(&s[2]), u(&s[1])).unwrap(),
            "resized_crop" => {
                F::resized_crop(&img, u(&s[1]), u(&s[2]), u(&s[3]), u(&s[4]), u(&s[6]), u(&s[5])).unwrap()
            }
            other => panic!("unknown step {other}"),
        };
    }
    img
}

#[test]
fn geometric_transforms_match_torchvision() {
    let mut jpeg_stats = Vec::new();
    for case in cases().iter().filter(|c| c["kind"] == "geometric") {
        let photo = case["photo"].as_str().unwrap();
        let expected = open(&format!("expected/{}", case["expected"].as_str().unwrap()));
        let ours = apply_steps(open(&format!("photos/{photo}")), case["steps"].as_array().unwrap());
        assert_eq!((ours.width(), ours.height()), (expected.width(), expected.height()), "{case}");
        let (max, within, n) = compare(ours.as_raw(), expected.as_raw());
        if photo.ends_with(".png") {
            assert_eq!(max, 0, "{case}: PNG input must match to the bit");
        } else {
            eprintln!(
                "{photo} {}: max error {max}/255, {:.2}% of {n} values within 1/255",
                case["expected"],
                within * 100.0
            );
            jpeg_stats.push((max, within));
        }
    }
    assert!(!jpeg_stats.is_empty());
    for (max, within) in jpeg_stats {
        // Decoder differences only (the resampling itself is exact, as the PNG cases show).
        assert!(max <= 3 && within >= 0.99, "JPEG parity too weak: max {max}, within {within}");
    }
}

#[test]
fn eval_pipeline_tensors_match_torchvision() {
    for case in cases().iter().filter(|c| c["kind"] == "eval_tensor") {
        let photo = case["photo"].as_str().unwrap();
        let expected = tensor::read_npy(fixtures().join("expected").join(case["expected"].as_str().unwrap())).unwrap();
        let pipe = data::presets::imagenet_eval(u(&case["resize"]), u(&case["crop"])).unwrap();
        let ours = data::load_image_tensor(fixtures().join("photos").join(photo), &pipe).unwrap();
        assert_eq!(ours.shape(), expected.shape());
        let (a, b) = (ours.to_vec_f32().unwrap(), expected.to_vec_f32().unwrap());
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // In [0, 1] units: the largest normalised error times the largest std.
        let max_01 = max * data::IMAGENET_STD.iter().copied().fold(0f32, f32::max);
        eprintln!(
            "{photo} eval({}, {}) tensor: max |diff| {max:e} (normalised), {max_01:e} in [0, 1] units",
            case["resize"], case["crop"]
        );
        if photo.ends_with(".png") {
            // Same bytes in, same f32 arithmetic: identical floats.
            assert_eq!(max, 0.0, "{photo}");
        } else {
            assert!(max_01 <= 12.0 / 255.0, "{photo}: {max_01}");
        }
    }
}

#[test]
fn colour_adjustments_match_torchvision() {
    let src = open("photos/jitter_src.png");
    let mut n = 0;
    for case in cases().iter().filter(|c| c["kind"] == "jitter") {
        let f = case["factor"].as_f64().unwrap();
        let op = match case["op"].as_str().unwrap() {
            "brightness" => Jitter::Brightness(f),
            "contrast" => Jitter::Contrast(f),
            "saturation" => Jitter::Saturation(f),
            "hue" => Jitter::Hue(f),
            other => panic!("unknown op {other}"),
        };
        let mut ours = src.clone();
        ColorJitter::apply_params(&mut ours, &[op]);
        let expected = open(&format!("expected/{}", case["expected"].as_str().unwrap()));
        let (max, _, _) = compare(ours.as_raw(), expected.as_raw());
        assert_eq!(max, 0, "{case}");
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn the_tutorial_eval_size_on_a_photo() {
    // The one full-size case: Resize(256) + CenterCrop(224) on a 400x267 JPEG, as predict.py does.
    let case = cases().into_iter().find(|c| c["expected"] == "china__eval256_224.png").expect("case");
    let ours = apply_steps(open("photos/china.jpg"), case["steps"].as_array().unwrap());
    assert_eq!((ours.width(), ours.height()), (224, 224));
    let (max, within, _) = compare(ours.as_raw(), open("expected/china__eval256_224.png").as_raw());
    eprintln!("tutorial eval(256, 224) on china.jpg: max error {max}/255, {:.3}% within 1/255", within * 100.0);
    assert!(max <= 3 && within >= 0.99, "the issue asks 99% within 1/255 and nothing over 3/255");
}

#[test]
fn colour_modes_convert_to_rgb_as_pil_does() {
    // ImageFolder's loader is `Image.open(f).convert("RGB")`: 16-bit grayscale (PIL mode I) is
    // clipped at 255, not scaled; 16-bit RGB keeps the high byte; grey + alpha drops the alpha;
    // CMYK is `(255 - k) - c * (255 - k) / 255` per channel.
    let modes: Vec<Value> = cases().into_iter().filter(|c| c["kind"] == "colour_mode").collect();
    assert_eq!(modes.len(), 4, "cmyk, gray16, rgb16, la");
    for case in &modes {
        let photo = case["photo"].as_str().unwrap();
        let ours = open(&format!("photos/{photo}"));
        let theirs = open(&format!("expected/{}", case["expected"].as_str().unwrap()));
        assert_eq!((ours.width(), ours.height()), (theirs.width(), theirs.height()), "{photo}");
        let (max, within, n) = compare(ours.as_raw(), theirs.as_raw());
        println!(
            "{photo} (PIL mode {}): max diff {max}, {:.2}% of {n} within one level",
            case["pil_mode"],
            within * 100.0
        );
        if photo.ends_with(".png") {
            assert_eq!(max, 0, "{photo}: PNG decoding must match PIL exactly");
        } else {
            // A JPEG: libjpeg-turbo's IDCT and ours differ by a level here and there.
            assert!(max <= 3 && within >= 0.99, "{photo}: max diff {max}, {within} within one level");
        }
    }
}
