//! Numerical and dataset faults in `resnet train` (the reliability issue, items 5 and 6): a
//! non-finite loss stops the run naming the epoch and batch and keeps the last checkpoint, or is
//! skipped when asked; corrupt images stop the run naming every one of them, or are skipped and
//! counted.

mod common;
use common::{demo_dataset, resnet, stderr, stdout, temp_dir, tensor_bits};
use std::path::Path;

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

#[test]
fn a_non_finite_loss_stops_naming_epoch_and_batch_and_keeps_the_last_checkpoint() {
    let dir = temp_dir("nan");
    let data = demo_dataset(&dir.join("data"), 8, 2, 32);
    let data = data.to_str().unwrap();
    let (one, stopped, skipped, diverged) =
        (dir.join("one"), dir.join("stopped"), dir.join("skipped"), dir.join("diverged"));

    // The same run for one epoch, as the reference for what the stopped run must keep.
    let o = resnet(&args(data, one.to_str().unwrap(), "1"));
    assert!(o.status.success(), "{}", stderr(&o));

    let mut a = args(data, stopped.to_str().unwrap(), "3");
    a.extend(["--inject-nonfinite", "2:3"]);
    let o = resnet(&a);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("the loss became NaN in epoch 2, batch 3"), "{err}");
    assert!(err.contains("keeps the last good state") && err.contains("--on-nonfinite skip"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(stdout(&o).contains("epoch 1/3"), "{}", stdout(&o));
    // Nothing of the failed epoch was saved: the checkpoint is epoch 1's. (Its learning rate for
    // the next epoch differs: the cosine schedule spans 3 epochs here and 1 in the reference.)
    let ck = |d: &Path| {
        let mut t = tensor_bits(&d.join("checkpoint.safetensors"));
        t.retain(|k, _| !k.ends_with("lr_bits"));
        t
    };
    assert!(ck(&stopped) == ck(&one), "the checkpoint is not the last good one");
    assert!(tensor_bits(&stopped.join("best.safetensors")) == tensor_bits(&one.join("best.safetensors")));

    // Asked to skip: the run finishes, each skipped batch is counted in its epoch.
    let mut a = args(data, skipped.to_str().unwrap(), "2");
    a.extend(["--on-nonfinite", "skip", "--inject-nonfinite", "1:2,2:5,2:6"]);
    let o = resnet(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("epoch 1: skipped 1 batch(es) with a non-finite loss"), "{out}");
    assert!(out.contains("epoch 2: skipped 2 batch(es) with a non-finite loss"), "{out}");
    assert!(stderr(&o).contains("warning: the loss became NaN in epoch 2, batch 5: no update from it"));
    let last = resnet::read_weights(skipped.join("last.safetensors")).unwrap();
    for (k, t) in last.entries.iter().filter(|(_, t)| t.dtype() == tensor::DType::F32) {
        assert!(t.to_vec_f32().unwrap().iter().all(|v| v.is_finite()), "{k} is not finite");
    }

    // A real divergence, not an injected one: a learning rate of 1e30 overflows at once.
    let mut a = args(data, diverged.to_str().unwrap(), "1");
    a.extend(["--optimizer", "sgd", "--lr", "1e30"]);
    let o = resnet(&a);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("in epoch 1, batch ") && (err.contains("non-finite") || err.contains("the loss became")),
        "{err}"
    );
    assert!(err.contains("no checkpoint had been written yet"), "{err}");
}

#[test]
fn corrupt_images_among_thousands_are_all_named_or_skipped_and_counted() {
    let dir = temp_dir("bad-images");
    // 6 classes x 330 training pictures, 6 x 20 validation pictures: 2100 files.
    let root = demo_dataset(&dir.join("data"), 330, 20, 16);
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
    let err = stderr(&o);
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
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("epoch 1: skipped 4 unreadable image(s) (3 in training, 1 in validation)"), "{s}");
}
