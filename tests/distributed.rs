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
    for accumulate in [1, 2] {
        let line = format!("ddp ok (accumulate {accumulate}): 2 ranks x 4 images vs 1 x 8");
        assert!(text(&o).contains(&line), "{}", text(&o));
    }
    assert!(text(&o).contains("sync-bn ok: 2 ranks x 4 images vs 1 x 8 in training mode"), "{}", text(&o));
}

#[test]
fn resnet_train_under_mpirun_validates_the_whole_set_and_rank_0_alone_writes() {
    let dir = temp_dir("mpirun-train");
    let data = demo_dataset(&dir.join("data"), 6, 3, 32);
    let out = dir.join("run");
    let args =
        ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", "2", "--sync-bn"];
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
}

/// The processes `mpirun` (`pid`) started.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// One rank killed (SIGKILL) mid-epoch: `mpirun` ends the other within seconds, the checkpoint
/// rank 0 wrote is whole, and the run resumes under `mpirun` to its end.
#[test]
fn a_killed_rank_ends_the_run_and_it_resumes() {
    let dir = temp_dir("mpirun-kill");
    let data = demo_dataset(&dir.join("data"), 12, 2, 32);
    let out = dir.join("run");
    let bin = env!("CARGO_BIN_EXE_resnet");
    let small =
        ["--base-planes", "4", "--image-size", "24", "--eval-resize", "24", "--batch-size", "4", "--workers", "1"];
    let mut args: Vec<&str> = vec!["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(["--epochs", "40", "--save-every", "2"]);
    args.extend(small);
    let mut run = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", bin])
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint was written");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let ranks = children(run.id());
    assert_eq!(ranks.len(), 2, "mpirun's processes: {ranks:?}");
    let killed = Instant::now();
    // SAFETY: a plain kill(2) of a process this test's mpirun started.
    assert_eq!(unsafe { libc::kill(ranks[1] as i32, libc::SIGKILL) }, 0);
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "the other rank was left running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let state = train::Checkpoint::read(&out).expect("the checkpoint is whole").state;
    assert!(state.epoch < 40, "the run was killed before its end");
    let mut resume: Vec<&str> = vec!["train", "--resume", out.to_str().unwrap()];
    resume.extend(small);
    let o = mpirun(Path::new(bin), &resume);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming"), "{}", text(&o));
    assert_eq!(train::Checkpoint::read(&out).unwrap().state.epoch, 40);
}

/// With `--sync-bn`, 2 processes x batch 16 train as 1 process x batch 32 (the issue's
/// equivalence): the sharded order puts the same 32 images in each global batch as one
/// process's order does, with the same augmentation, and batch norm sees all 32. After two
/// epochs of SGD with momentum the weights agree to 1e-4 relative (7.5e-6 seen) and so do the
/// metrics. At lr 0.001: at 0.01 and above this tiny network is chaotic enough that float
/// rounding (batch norm's sums in another order) grows to percents by the sixth step, while
/// at lr 0 (data and batch-norm statistics only) the runs agree to 5e-7.
#[test]
fn two_ranks_with_sync_bn_train_as_one_process_with_twice_the_batch() {
    let dir = temp_dir("mpirun-equivalence");
    // 6 classes x 16 pictures: 96, three global batches of 32, no padding.
    let data = demo_dataset(&dir.join("data"), 16, 2, 32);
    let run = |out: &str, batch: &str| {
        let mut a: Vec<String> = ["train", "--data", data.to_str().unwrap(), "--out", dir.join(out).to_str().unwrap()]
            .map(String::from)
            .to_vec();
        let opts =
            ["--epochs", "2", "--batch-size", batch, "--optimizer", "sgd", "--lr", "0.001", "--scheduler", "none"];
        let small =
            ["--base-planes", "4", "--image-size", "24", "--eval-resize", "24", "--workers", "1", "--seed", "3"];
        a.extend(opts.iter().chain(&small).map(|s| s.to_string()));
        a
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_resnet"));
    let one = Command::new(bin).args(run("one", "32")).output().unwrap();
    assert!(one.status.success(), "{}", text(&one));
    let mut two_args = run("two", "16");
    two_args.push("--sync-bn".into());
    let two = mpirun(bin, &two_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(two.status.success(), "{}", text(&two));
    let (a, b) = (
        common::read_tensors(&dir.join("one/last.safetensors")),
        common::read_tensors(&dir.join("two/last.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (k, want) in &a {
        let got = &b[k];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = got.iter().zip(want).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(err <= 1e-4, "{k}: relative difference {err:e}");
        worst = worst.max(err);
    }
    let metrics = |run: &str| -> Vec<Vec<f64>> {
        let csv = std::fs::read_to_string(dir.join(run).join("metrics.csv")).unwrap();
        csv.lines().skip(1).map(|l| l.split(',').take(5).map(|v| v.parse().unwrap()).collect()).collect()
    };
    for (x, y) in metrics("one").iter().zip(metrics("two")) {
        for (p, q) in x.iter().zip(&y) {
            assert!((p - q).abs() <= 1e-4 * p.abs().max(1.0), "metrics differ: {x:?} vs {y:?}");
        }
    }
    eprintln!("largest relative weight difference: {worst:e}");
}
