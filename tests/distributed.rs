//! Data-parallel training under `mpirun -np 2` (built with the `mpi` feature): the gradient
//! averaging against one process on the same images, a whole `resnet train` run whose
//! validation covers the whole set, and a failing rank ending every rank.
#![cfg(feature = "mpi")]

mod common;
use common::{demo_dataset, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `mpirun -np 2 PROGRAM ARGS` (as root where CI runs, with two slots on any machine).
fn mpirun(program: &Path, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(program)
        .args(args)
        .output()
        .expect("mpirun runs (Open MPI: openmpi-bin)")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(name)
}

#[test]
fn two_ranks_take_the_steps_one_process_takes_on_their_images() {
    let o = mpirun(&example("ddp_check"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ddp ok: 2 ranks x 4 images vs 1 x 8"), "{}", text(&o));
}

#[test]
fn resnet_train_under_mpirun_validates_the_whole_set_and_rank_0_alone_writes() {
    let dir = temp_dir("mpirun-train");
    let data = demo_dataset(&dir.join("data"), 6, 3, 32);
    let out = dir.join("run");
    let args = ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", "2"];
    let small =
        ["--base-planes", "4", "--image-size", "24", "--eval-resize", "24", "--batch-size", "6", "--workers", "1"];
    let o = mpirun(Path::new(env!("CARGO_BIN_EXE_resnet")), &[&args[..], &small[..]].concat());
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert_eq!(log.matches("training resnet18").count(), 1, "only rank 0 speaks: {log}");
    assert!(log.contains("data-parallel over 2 processes: a global batch of 12"), "{log}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["images"], 18, "the validation set's 6 x 3 images, split over the ranks and summed");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rank_that_fails_ends_every_rank_naming_itself() {
    let dir = temp_dir("mpirun-fail");
    let data = demo_dataset(&dir.join("data"), 6, 2, 32);
    // One unreadable picture: the rank whose shard holds it fails, and takes the other down.
    std::fs::write(data.join("train/circle/broken.jpg"), b"not a jpeg").unwrap();
    let out = dir.join("run");
    let args = ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let small = ["--epochs", "1", "--base-planes", "4", "--image-size", "24", "--batch-size", "4", "--workers", "1"];
    let started = Instant::now();
    let o = mpirun(Path::new(env!("CARGO_BIN_EXE_resnet")), &[&args[..], &small[..]].concat());
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("error in rank "), "{}", text(&o));
    assert!(text(&o).contains("broken.jpg"), "{}", text(&o));
    assert!(started.elapsed() < Duration::from_secs(60), "the other rank was left waiting");
    assert!(!dir.join("run/checkpoint.safetensors").exists(), "nothing half-written");
    std::fs::remove_dir_all(&dir).unwrap();
}
