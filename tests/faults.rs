//! Numerical and dataset faults in `resnet train` (the reliability issue, items 5 and 6): a
//! non-finite loss stops the run naming the epoch and batch and keeps the last checkpoint, or is
//! skipped when asked; corrupt images stop the run naming every one of them, or are skipped and
//! counted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn dataset(root: &Path, train_per_class: usize, val_per_class: usize, size: usize) -> PathBuf {
    let config =
        data::DemoConfig { train_per_class, val_per_class, width: size, height: size, ..data::DemoConfig::default() };
    data::write_demo_dataset(root, &config).unwrap().root
}

/// A narrow ResNet-18 on 24px crops, 6 batches of 8 per epoch.
fn args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        epochs,
        "--base-planes",
        "8",
        "--image-size",
        "24",
        "--batch-size",
        "8",
        "--seed",
        "3",
        "--workers",
        "2",
    ]
}

fn weights(path: &Path) -> Vec<(String, Vec<u32>)> {
    let sd = resnet::read_weights(path).unwrap();
    sd.entries
        .into_iter()
        .filter(|(_, t)| t.dtype() == tensor::DType::F32)
        .map(|(k, t)| (k, t.to_vec_f32().unwrap().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

#[test]
fn a_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_the_last_checkpoint() {
    let dir = temp_dir("nan");
    let data = dataset(&dir.join("data"), 8, 2, 32);
    let data = data.to_str().unwrap();
    let (one, stopped, skipped, diverged) =
        (dir.join("one"), dir.join("stopped"), dir.join("skipped"), dir.join("diverged"));

    // The same run for one epoch, as the reference for what the stopped run must keep.
    let o = resnet(&args(data, one.to_str().unwrap(), "1"));
    assert!(o.status.success(), "{}", text(&o.stderr));

    let mut a = args(data, stopped.to_str().unwrap(), "3");
    a.extend(["--inject-nonfinite", "2:3"]);
    let o = resnet(&a);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("the loss became NaN in epoch 2, batch 3"), "{err}");
    assert!(err.contains("keeps the last good state") && err.contains("--on-nonfinite skip"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(text(&o.stdout).contains("epoch 1/3"), "{}", text(&o.stdout));
    // Nothing of the failed epoch was saved: the checkpoint is epoch 1's.
    let ck = |d: &Path| weights(&d.join("checkpoint.safetensors"));
    assert!(ck(&stopped) == ck(&one), "the checkpoint is not the last good one");
    assert!(weights(&stopped.join("best.safetensors")) == weights(&one.join("best.safetensors")));

    // Asked to skip: the run finishes, each skipped batch is counted in its epoch.
    let mut a = args(data, skipped.to_str().unwrap(), "2");
    a.extend(["--on-nonfinite", "skip", "--inject-nonfinite", "1:2,2:5,2:6"]);
    let o = resnet(&a);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("epoch 1: skipped 1 batch(es) with a non-finite loss"), "{out}");
    assert!(out.contains("epoch 2: skipped 2 batch(es) with a non-finite loss"), "{out}");
    assert!(text(&o.stderr).contains("warning: the loss became NaN in epoch 2, batch 5: no update from it"));
    assert!(weights(&skipped.join("last.safetensors"))
        .iter()
        .all(|(_, w)| w.iter().all(|b| f32::from_bits(*b).is_finite())));

    // A real divergence, not an injected one: a learning rate of 1e30 overflows at once.
    let mut a = args(data, diverged.to_str().unwrap(), "1");
    a.extend(["--optimizer", "sgd", "--lr", "1e30"]);
    let o = resnet(&a);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("in epoch 1, batch ") && err.contains("non-finite") || err.contains("the loss became"),
        "{err}"
    );
    assert!(err.contains("no checkpoint had been written yet"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_images_among_thousands_are_all_named_or_skipped_and_counted() {
    let dir = temp_dir("bad-images");
    // 6 classes x 330 training pictures, 6 x 20 validation pictures: 2100 files.
    let root = dataset(&dir.join("data"), 330, 20, 16);
    let bad = [
        root.join("train/circle/circle_0007.jpg"),
        root.join("train/hexagon/hexagon_0300.jpg"),
        root.join("train/square/square_0123.jpg"),
        root.join("val/cross/cross_0004.jpg"),
    ];
    for (i, f) in bad.iter().enumerate() {
        assert!(f.is_file(), "{} is not in the demo dataset", f.display());
        let good = std::fs::read(f).unwrap();
        // Garbage, an empty file, a truncated JPEG, a PNG signature over a JPEG body.
        let broken: Vec<u8> = match i {
            0 => b"this is not an image".to_vec(),
            1 => Vec::new(),
            2 => good[..good.len() / 3].to_vec(),
            _ => [b"\x89PNG\r\n\x1a\n".as_slice(), &good[8..]].concat(),
        };
        std::fs::write(f, broken).unwrap();
    }
    let data = root.to_str().unwrap();
    let out = dir.join("run");
    let common = ["--image-size", "16", "--batch-size", "64", "--base-planes", "8", "--epochs", "1"];

    let mut a = vec!["train", "--data", data, "--out", out.to_str().unwrap()];
    a.extend(common);
    let o = resnet(&a);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("4 unreadable image(s); training stopped"), "{err}");
    for f in &bad {
        assert!(err.contains(f.to_str().unwrap()), "{} is not named: {err}", f.display());
    }
    assert!(err.contains("--skip-bad-images") && !err.contains("panicked"), "{err}");

    let out = dir.join("skipping");
    let mut a = vec!["train", "--data", data, "--out", out.to_str().unwrap(), "--skip-bad-images"];
    a.extend(common);
    let o = resnet(&a);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(s.contains("epoch 1: skipped 4 unreadable image(s) (3 in training, 1 in validation)"), "{s}");
    let _ = std::fs::remove_dir_all(&dir);
}
