//! `resnet export` and `resnet evaluate` end to end: an ONNX file from a weight file, and the
//! per-class report with its confusion matrix for a model on a labelled folder.

mod common;
use common::{demo_dataset, resnet, stderr, stdout, temp_dir};
use nn::ModuleExt;
use resnet::Arch;
use std::path::{Path, PathBuf};

/// A narrow ResNet-18 for the demo's 6 classes, saved with our metadata (classes, transform).
fn weights(dir: &Path, classes: &[String]) -> PathBuf {
    let mut config = Arch::Resnet18.config(classes.len());
    config.base_planes = 4;
    let model = config.build(resnet::Init::Torchvision(1)).unwrap();
    let extra = [
        (resnet::weights::meta::CLASSES, serde_json::to_string(classes).unwrap()),
        (resnet::weights::meta::RESIZE, "32".to_string()),
        (resnet::weights::meta::CROP, "32".to_string()),
    ];
    let metadata = resnet::weights::metadata_for(Arch::Resnet18, &model.config, &extra);
    let path = dir.join("model.safetensors");
    resnet::write_safetensors(&path, &model.state_dict(), &metadata).unwrap();
    path
}

#[test]
fn evaluate_prints_the_report_and_writes_the_confusion_matrix() {
    let dir = temp_dir("evaluate");
    let data = demo_dataset(&dir.join("data"), 2, 3, 32);
    let classes = data::ImageFolder::new(data.join("val")).unwrap().classes().to_vec();
    let w = weights(&dir, &classes);
    let out = dir.join("report");
    let o = resnet(
        &["evaluate", "--weights", w.to_str().unwrap(), "--data", data.to_str().unwrap()]
            .into_iter()
            .chain(["--out", out.to_str().unwrap(), "--batch-size", "4"])
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    for header in ["precision", "recall", "f1-score", "support", "accuracy", "top-5 accuracy", "macro avg"] {
        assert!(text.contains(header), "{header}: {text}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    // val/ of the folder: 6 classes x 3 pictures, each counted once in the matrix.
    assert_eq!(report["images"], 18);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 6);
    assert!(confusion.iter().all(|row| row.iter().sum::<u64>() == 3), "{confusion:?}");
    let png = std::fs::read(out.join("confusion.png")).unwrap();
    let img = data::RgbImage::decode(&png, &out.join("confusion.png"), data::DEFAULT_MAX_PIXELS).unwrap();
    assert!(img.width() > 200 && img.height() > 200);

    // A folder of other classes is refused, naming both lists.
    let other = dir.join("other");
    for c in ["cat", "dog"] {
        std::fs::create_dir_all(other.join(c)).unwrap();
        std::fs::copy(
            data.join("val").join(&classes[0]).read_dir().unwrap().next().unwrap().unwrap().path(),
            other.join(c).join("a.jpg"),
        )
        .unwrap();
    }
    let o = resnet(&["evaluate", "--weights", w.to_str().unwrap(), "--data", other.to_str().unwrap()]);
    assert!(
        !o.status.success() && stderr(&o).contains("\"cat\", \"dog\"") && stderr(&o).contains("was trained on"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn export_writes_an_onnx_file_and_refuses_bad_options() {
    let dir = temp_dir("export");
    let classes: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let w = weights(&dir, &classes);
    let onnx = dir.join("model.onnx");
    let o = resnet(&["export", "--weights", w.to_str().unwrap(), onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The crop recorded in the weights is the input size; the batch is symbolic.
    assert!(stdout(&o).contains("input `input` [batch, 3, 32, 32] f32, output `logits`, opset 17"), "{}", stdout(&o));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 100_000);
    let o = resnet(&[
        "export",
        "--weights",
        w.to_str().unwrap(),
        "--batch",
        "4",
        "--image-size",
        "64",
        onnx.to_str().unwrap(),
    ]);
    assert!(stdout(&o).contains("[4, 3, 64, 64]"), "{}", stdout(&o));
    let o = resnet(&["export", "--weights", w.to_str().unwrap(), "--batch", "0", onnx.to_str().unwrap()]);
    assert!(
        !o.status.success() && stderr(&o).contains("expected `dynamic` or a positive batch size"),
        "{}",
        stderr(&o)
    );
    let o = resnet(&["export", "--weights", w.to_str().unwrap(), dir.join("model.bin").to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("must end in .onnx"), "{}", stderr(&o));
}
