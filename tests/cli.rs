//! End-to-end tests of the `resnet` binary: each runs the real executable.

mod common;
use common::{resnet, stderr, stdout, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    common::torch_fixture(name)
}

/// A failure: non-zero exit, a one-paragraph error containing `needle`, no panic or backtrace.
fn assert_clean_failure(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {e}");
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
    assert!(!e.contains("panicked") && !e.contains("RUST_BACKTRACE"), "a panic reached the user: {e}");
}

#[test]
fn summary_of_resnet50_shows_torchvisions_parameter_count() {
    let o = resnet(&["summary", "resnet50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("Total params: 25,557,032"), "{s}");
    assert!(s.contains("Layer (type:depth-idx)") && s.contains("Mult-Adds"), "{s}");
    let o = resnet(&["summary", "resnet18", "--num-classes", "5", "--input", "2,3,64,64", "--depth", "1"]);
    assert!(stdout(&o).contains("[2, 5]"), "{}", stdout(&o));
}

#[test]
fn infer_matches_a_pytorch_fixture() {
    let (got, want, scale) = common::infer_resnet18_fixture("infer", &[]);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
    }
}

/// A foreign file records no architecture: its keys and shapes tell it (and the stem width),
/// so `infer` needs neither `--arch` nor `--base-planes`.
#[test]
fn infer_reads_the_architecture_off_the_weights() {
    let (got, want, scale) = common::infer_fixture_without_arch("infer-no-arch");
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
    }
}

/// Output into a pipe whose reader has gone (`resnet ... | head`) ends the process quietly, as
/// Unix tools end, instead of a panic about a broken pipe.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let dir = temp_dir("pipe");
    let err = dir.join("stderr.txt");
    // `true` has exited long before the command prints its first line.
    let script = format!("(sleep 0.5; exec \"$0\" summary resnet50) 2>\"{}\" | true", err.display());
    let status = Command::new("sh").arg("-c").arg(&script).arg(env!("CARGO_BIN_EXE_resnet")).status().unwrap();
    assert!(status.success());
    let e = std::fs::read_to_string(&err).unwrap();
    assert!(!e.contains("panicked") && !e.contains("Broken pipe"), "{e}");
}

/// The default demo folder is the tool's own cache: a demo dataset an older version wrote there
/// (other sizes) is replaced; a `--demo-dir` of the user's is never touched.
#[test]
fn an_older_demo_dataset_in_the_default_folder_is_replaced() {
    let cwd = temp_dir("old-demo");
    common::demo_dataset(&cwd.join("runs/demo-data"), 2, 1, 16);
    let train = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_resnet"));
        c.current_dir(&cwd).args(["train", "--epochs", "0", "--out", "o"]).args(extra);
        c.output().unwrap()
    };
    let mine = cwd.join("mine");
    common::demo_dataset(&mine, 2, 1, 16);
    let o = train(&["--demo-dir", mine.to_str().unwrap()]);
    assert_clean_failure(&o, "holds a demo dataset of another configuration");
    let o = train(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("replacing the demo dataset in runs/demo-data"), "{}", stdout(&o));
    assert!(stdout(&o).contains("generated the demo dataset in runs/demo-data (9000 training"), "{}", stdout(&o));
    assert_eq!(std::fs::read_dir(mine.join("train/circle")).unwrap().count(), 2, "the user's folder is untouched");
}

#[test]
fn convert_round_trips_between_formats() {
    let dir = temp_dir("convert");
    let st = dir.join("w.safetensors");
    let pth = dir.join("w.pth");
    let o = resnet(&["convert", fixture("resnet18_legacy.pth").to_str().unwrap(), st.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = resnet(&["convert", st.to_str().unwrap(), pth.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = resnet::read_weights(fixture("resnet18_legacy.pth")).unwrap();
    let b = resnet::read_weights(&pth).unwrap();
    assert_eq!(a.entries.len(), b.entries.len());
    for (k, t) in &a.entries {
        assert_eq!(format!("{t:?}"), format!("{:?}", b.get(k).unwrap()), "{k}");
    }
}

#[test]
fn bad_inputs_fail_cleanly() {
    let o = resnet(&["summary", "resnet51"]);
    assert_clean_failure(&o, "unknown architecture `resnet51`; the architectures are: resnet18, resnet34");
    let o = resnet(&["summary", "resnet18", "--input", "1,3,x,224"]);
    assert_clean_failure(&o, "--input");
    let dir = temp_dir("bad");
    let missing = dir.join("nope.pth");
    let o = resnet(&["convert", missing.to_str().unwrap(), dir.join("o.safetensors").to_str().unwrap()]);
    assert_clean_failure(&o, "nope.pth");
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"not weights").unwrap();
    let o = resnet(&["convert", junk.to_str().unwrap(), dir.join("o.safetensors").to_str().unwrap()]);
    assert_clean_failure(&o, "junk.pth");
    // The wrong architecture: one line naming what the file holds, before any per-key details.
    let o = resnet(&[
        "infer",
        "--arch",
        "resnet34",
        "--weights",
        fixture("resnet18.pth").to_str().unwrap(),
        "--input",
        fixture("input.npy").to_str().unwrap(),
        "--output",
        dir.join("y.npy").to_str().unwrap(),
    ]);
    assert_clean_failure(
        &o,
        "the file holds resnet18 weights (basic blocks 2-2-2-2, stem 4, 10 classes), not resnet34",
    );
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    // A file that is no ResNet and records no architecture.
    let odd = dir.join("odd.safetensors");
    let entries = vec![("w".to_string(), tensor::Tensor::zeros(&[2, 2]))];
    resnet::write_safetensors(&odd, &entries, &Default::default()).unwrap();
    let o = resnet(&[
        "infer",
        "--weights",
        odd.to_str().unwrap(),
        "--input",
        fixture("input.npy").to_str().unwrap(),
        "--output",
        dir.join("y.npy").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "does not record its architecture, and its keys do not tell it (no conv1.weight");
    assert_clean_failure(&o, "pass --arch");
    let o = resnet(&["frobnicate"]);
    assert!(!o.status.success());
}

const COLOURS: [(&str, [u8; 3]); 3] = [("blue", [20, 40, 220]), ("green", [30, 200, 40]), ("red", [220, 30, 30])];

/// A tiny ImageFolder (train/ and val/) whose three classes are noisy pictures of one colour
/// each: learnable in two epochs, so the accuracy must beat chance.
fn tiny_folder(root: &Path, per_class: usize) {
    let mut rng = tensor::Rng::seed(5);
    for (split, n) in [("train", per_class), ("val", per_class / 2)] {
        for (name, rgb) in COLOURS {
            let d = root.join(split).join(name);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let px: Vec<u8> = (0..32 * 32)
                    .flat_map(|_| rgb.map(|c| (c as f32 + (rng.uniform() - 0.5) * 60.0).clamp(0.0, 255.0) as u8))
                    .collect();
                data::RgbImage::from_raw(32, 32, px).unwrap().save(d.join(format!("{i:02}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn train_writes_every_output_resumes_and_predicts() {
    let dir = temp_dir("train");
    let data_dir = dir.join("data");
    tiny_folder(&data_dir, 16);
    let out = dir.join("run");
    let common = ["--data", data_dir.to_str().unwrap(), "--image-size", "32", "--batch-size", "8", "--workers", "2"];
    // At lr 0.003 two epochs of Adam + batch norm on 48 images were chaotic: which conv
    // algorithm ran (rounding alone) decided between 1/3 and 2/3 validation accuracy.
    let mut args = vec!["train", "--epochs", "2", "--out", out.to_str().unwrap(), "--lr", "0.001"];
    args.extend(common);
    let o = resnet(&args);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    for f in [
        "class_indices.json",
        "best.safetensors",
        "last.safetensors",
        "checkpoint.safetensors",
        "metrics.csv",
        "curves.png",
        "run.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left in --out");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s");
    assert_eq!(lines.len(), 3, "{csv}");
    let best_val = lines[1..].iter().map(|l| l.split(',').nth(4).unwrap().parse::<f64>().unwrap()).fold(0.0, f64::max);
    assert!(best_val > 0.5, "validation accuracy {best_val} does not beat chance (1/3) clearly: {csv}");
    let png = std::fs::read(out.join("curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let classes = data::read_class_indices(out.join("class_indices.json")).unwrap();
    assert_eq!(classes, ["blue", "green", "red"]);

    // Resume: two more epochs continue the count.
    let mut args = vec!["train", "--epochs", "4", "--resume", out.to_str().unwrap()];
    args.extend(common);
    let o = resnet(&args);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("resuming"), "{}", stdout(&o));
    assert!(stdout(&o).contains("epoch 3/4") && stdout(&o).contains("epoch 4/4"), "{}", stdout(&o));
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");

    // Predict on a folder of 11 images with batch size 4: 11 lines, names from the metadata.
    let pics = dir.join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    let val = data_dir.join("val");
    let mut n = 0;
    'outer: for (class, _) in COLOURS {
        let mut files: Vec<_> = std::fs::read_dir(val.join(class)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            std::fs::copy(&f, pics.join(format!("{n:02}.png"))).unwrap();
            n += 1;
            if n == 11 {
                break 'outer;
            }
        }
    }
    assert_eq!(n, 11);
    let best = out.join("best.safetensors");
    let o = resnet(&["predict", "--weights", best.to_str().unwrap(), "--batch-size", "4", pics.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("image: ") && l.contains("  class: ") && l.contains("  prob: ")),
        "{lines:?}"
    );
    let o = resnet(&[
        "predict",
        "--weights",
        best.to_str().unwrap(),
        "--json",
        "--top-k",
        "2",
        pics.join("00.png").to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["topk"].as_array().unwrap().len(), 2);
    assert_eq!(v["logits"].as_array().unwrap().len(), 3);
    // Bad inputs to predict.
    let o = resnet(&["predict", "--weights", best.to_str().unwrap(), dir.join("missing.jpg").to_str().unwrap()]);
    assert_clean_failure(&o, "missing.jpg");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = resnet(&["predict", "--weights", best.to_str().unwrap(), empty.to_str().unwrap()]);
    assert_clean_failure(&o, "holds no images");
}

#[test]
fn train_bad_inputs_fail_cleanly() {
    let dir = temp_dir("train-bad");
    let o =
        resnet(&["train", "--data", dir.join("nothing").to_str().unwrap(), "--out", dir.join("o").to_str().unwrap()]);
    assert_clean_failure(&o, "nothing");
    let o = resnet(&[
        "train",
        "--arch",
        "resnet9",
        "--out",
        dir.join("o").to_str().unwrap(),
        "--demo-dir",
        dir.join("d").to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "the architectures are");
    let flat = dir.join("flat");
    std::fs::create_dir_all(flat.join("a")).unwrap();
    std::fs::create_dir_all(flat.join("b")).unwrap();
    std::fs::write(flat.join("a/readme.txt"), b"no images here").unwrap();
    let o = resnet(&[
        "train",
        "--data",
        flat.to_str().unwrap(),
        "--val-split",
        "0.2",
        "--out",
        dir.join("o").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn a_piped_repl_session_builds_inspects_runs_and_saves() {
    use std::io::Write;
    let dir = temp_dir("repl");
    let saved = dir.join("net.safetensors");
    let script = format!(
        "net = resnet18(num_classes=4)\nparams(net)\nnet.layer1[0]\neval(net)\nx = randn(2, 3, 64, 64)\ny = net(x)\ny.shape\nargmax(y, dim=1)\nresnet5()\nsave(net, \"{}\")\n:quit\n",
        saved.display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .arg("repl")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("11,178,564"), "{s}");
    assert!(s.contains("BasicBlock("), "{s}");
    assert!(s.contains("torch.Size([2, 4])"), "{s}");
    assert!(s.contains("did you mean `resnet50`"), "{s}");
    assert!(!s.contains(">>>"), "no prompts when piped: {s}");
    let sd = resnet::read_weights(&saved).unwrap();
    assert_eq!(sd.metadata.get("arch").map(String::as_str), Some("resnet18"));
}
