//! `resnet predict --cam OUT_DIR`: a Grad-CAM overlay per image, named after the image, drawn
//! on the picture as the model saw it — byte for byte what the library computes.

mod common;
use common::{resnet, stderr, stdout, temp_dir, torch_fixture};
use nn::ModuleExt;
use resnet::{BlockKind, Init, ResNetConfig};
use std::path::Path;

fn write_picture(path: &Path, class: usize, width: usize, height: usize, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    data::demo::render(class, width, height, &mut tensor::Rng::seed(seed)).save(path).unwrap();
}

/// What `--cam` must have drawn for `image` explaining `class`: the committed reduced resnet18,
/// the eval transform `Resize(40), CenterCrop(32)`, [`resnet::grad_cam`] and
/// [`data::overlay_heatmap`] at weight 0.5.
fn expected_overlay(image: &Path, class: usize) -> data::RgbImage {
    let config = ResNetConfig { base_planes: 4, ..ResNetConfig::new(BlockKind::Basic, [2, 2, 2, 2], 10) };
    let model = config.build(Init::Zeros).unwrap();
    resnet::load_strict(&model, &resnet::read_weights(torch_fixture("resnet18.pth")).unwrap()).unwrap();
    model.eval();
    let transform = data::presets::imagenet_eval(40, 32).unwrap();
    let (x, view) = data::load_image_tensor_and_view(image, &transform).unwrap();
    let cam = resnet::grad_cam(&model, &x.unsqueeze(0).unwrap(), Some(&[class])).unwrap();
    data::overlay_heatmap(&view, &cam.heatmaps.to_vec_f32().unwrap(), 0.5).unwrap()
}

#[test]
fn predict_writes_a_grad_cam_overlay_per_image() {
    let dir = temp_dir("cam");
    let pics = dir.join("pics");
    // Two images share a stem; one is not an image at all.
    write_picture(&pics.join("a/shape.png"), 0, 50, 40, 1);
    write_picture(&pics.join("b/shape.png"), 5, 40, 60, 2);
    std::fs::write(pics.join("bad.png"), b"not a picture").unwrap();
    write_picture(&pics.join("c.jpg"), 7, 48, 48, 3);
    let weights = torch_fixture("resnet18.pth");
    let out = dir.join("cams"); // created by the command
    let args = |extra: &[&str]| {
        let mut a = vec!["predict", "--weights", weights.to_str().unwrap(), "--resize", "40", "--crop", "32"];
        a.extend(["--batch-size", "2", "--cam", out.to_str().unwrap()]);
        a.extend(extra);
        a.push(pics.to_str().unwrap());
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };

    let o = resnet(&args(&["--json"]));
    // The unreadable image is reported and fails the run; the others are predicted and drawn.
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bad.png") && e.contains("1 image(s) could not be read"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let want = [("a/shape.png", "shape.cam.png"), ("b/shape.png", "shape-2.cam.png"), ("c.jpg", "c.cam.png")];
    assert_eq!(lines.len(), want.len(), "{lines:?}");
    for (line, (image, name)) in lines.iter().zip(want) {
        assert_eq!(line["path"].as_str().unwrap(), pics.join(image).display().to_string());
        let cam = out.join(name);
        assert_eq!(line["cam"].as_str().unwrap(), cam.display().to_string());
        let png = data::RgbImage::open(&cam, data::DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!((png.width(), png.height()), (32, 32), "{name}");
        let class = line["index"].as_u64().unwrap() as usize;
        assert!(png == expected_overlay(&pics.join(image), class), "{name}: not the library's overlay");
    }
    let written: Vec<String> = {
        let mut v: Vec<String> =
            std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(written, ["c.cam.png", "shape-2.cam.png", "shape.cam.png"], "only the overlays, no temp files");

    // The text lines name the overlay after the prediction.
    std::fs::remove_file(pics.join("bad.png")).unwrap();
    let o = resnet(&args(&["--top-k", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.starts_with("image: ") && l.contains("  top2: ") && l.contains("  cam: ")));
    assert!(text.contains(&format!("cam: {}", out.join("shape-2.cam.png").display())), "{text}");

    // An OUT_DIR that is a file is refused, naming it.
    let blocker = dir.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let o = resnet(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--cam",
        blocker.to_str().unwrap(),
        pics.join("c.jpg").to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains(blocker.to_str().unwrap()) && !e.contains("panicked"), "{e}");
}
