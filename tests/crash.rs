//! Crash safety of `resnet train` (the reliability issue, items 3 and 4): a run killed with
//! SIGKILL at random moments, many times, leaves every output file complete, and resuming after
//! each kill ends with exactly the weights of an uninterrupted run; a full file system and a
//! read-only folder fail with a clear error and leave the previous files as they were.

mod common;
use common::{demo_dataset, resnet, temp_dir, tensor_bits};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const OUTPUTS: [&str; 9] = [
    "class_indices.json",
    "checkpoint.safetensors",
    "best.safetensors",
    "last.safetensors",
    "metrics.csv",
    "curves.png",
    "run.json",
    "report.json",
    "confusion.png",
];

/// 6 classes x 16 training and 4 validation pictures of 32x32: 12 batches of 8 per epoch.
fn small_dataset(root: &Path) -> PathBuf {
    demo_dataset(root, 16, 4, 32)
}

/// The run every test here trains: a narrow ResNet-18 for `epochs` epochs, checkpointed every
/// `save_every` batches too.
fn train_args(data: &Path, epochs: usize, save_every: usize) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--base-planes",
        "8",
        "--image-size",
        "24",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--seed",
        "7",
        "--workers",
        "2",
    ]
    .map(String::from)
    .to_vec();
    args.extend(["--epochs".into(), epochs.to_string(), "--save-every".into(), save_every.to_string()]);
    args
}

/// Every output present in `dir` is complete: each parses in full, as its reader expects.
/// Returns the temporary files a kill left behind (which the next run removes).
fn assert_outputs_complete(dir: &Path, context: &str) -> Vec<String> {
    let mut temporaries = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let bytes = std::fs::read(&path).unwrap();
        match name.as_str() {
            "checkpoint.safetensors" | "best.safetensors" | "last.safetensors" => {
                // safetensors checks that the header and the data cover the file exactly.
                resnet::read_weights(&path).unwrap_or_else(|e| panic!("{context}: {name} is not complete: {e}"));
            }
            "class_indices.json" | "run.json" | "report.json" => {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .unwrap_or_else(|e| panic!("{context}: {name} is not complete JSON: {e}"));
            }
            "metrics.csv" => {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.ends_with('\n'), "{context}: metrics.csv is cut short: {text:?}");
                for (i, line) in text.lines().enumerate().skip(1) {
                    let fields: Vec<&str> = line.split(',').collect();
                    assert_eq!(fields.len(), 8, "{context}: metrics.csv line {line:?}");
                    assert_eq!(fields[0], i.to_string(), "{context}: metrics.csv rows are not epochs 1, 2, ...");
                }
            }
            "curves.png" | "confusion.png" => {
                data::RgbImage::decode(&bytes, &path, data::DEFAULT_MAX_PIXELS)
                    .unwrap_or_else(|e| panic!("{context}: {name} is not complete: {e}"));
            }
            _ if name.starts_with('.') && name.ends_with(".tmp") && OUTPUTS.iter().any(|o| name.contains(o)) => {
                temporaries.push(name)
            }
            _ => panic!("{context}: unexpected file {name} in the output folder"),
        }
    }
    temporaries
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_uninterrupted_weights() {
    let dir = temp_dir("kill");
    let data = small_dataset(&dir.join("data"));
    // A checkpoint after every batch, so that kills often land inside a checkpoint write.
    let args = train_args(&data, 4, 1);

    // The reference: one uninterrupted run.
    let reference = dir.join("reference");
    let mut a = args.clone();
    a.extend(["--out".into(), reference.to_str().unwrap().into()]);
    let started = Instant::now();
    let o = resnet(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full_run = started.elapsed();
    let want = tensor_bits(&reference.join("last.safetensors"));

    // The same run, killed after a random delay again and again, each time resumed.
    let out = dir.join("killed");
    let mut rng = tensor::Rng::seed(2026);
    let (mut kills, mut mid_write, mut finished) = (0, 0, false);
    for attempt in 0..60 {
        let mut a = args.clone();
        if out.join("checkpoint.safetensors").exists() {
            a.extend(["--resume".into(), out.to_str().unwrap().into()]);
        } else {
            a.extend(["--out".into(), out.to_str().unwrap().into()]);
        }
        // After many kills, let it finish.
        let delay = (attempt < 50).then(|| full_run.mul_f32(0.01 + 0.1 * rng.uniform()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + delay.unwrap_or(Duration::from_secs(600));
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        match status {
            Some(s) => {
                let o = child.wait_with_output().unwrap();
                assert!(s.success(), "attempt {attempt}: {}", String::from_utf8_lossy(&o.stderr));
                finished = true;
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
        if out.is_dir() {
            let temporaries = assert_outputs_complete(&out, &format!("after attempt {attempt}"));
            mid_write += usize::from(!temporaries.is_empty());
        }
        if finished {
            break;
        }
    }
    assert!(finished, "the run never finished");
    assert!(kills >= 15, "only {kills} kills");
    eprintln!("{kills} kills, {mid_write} of them while a file was being written; the full run takes {full_run:?}");
    let leftovers = assert_outputs_complete(&out, "at the end");
    assert!(leftovers.is_empty(), "temporary files left after a complete run: {leftovers:?}");
    let got = tensor_bits(&out.join("last.safetensors"));
    assert_eq!(got.len(), want.len());
    for (k, v) in &want {
        assert!(got.get(k) == Some(v), "{k} differs from the uninterrupted run's");
    }
    let col = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(col(&out), col(&reference), "losses and accuracies differ from the uninterrupted run's");
}

/// Runs `script` as root of its own user and mount namespace (`unshare -rm`), where it may
/// mount a small tmpfs; the tmpfs disappears with the namespace.
fn in_mount_namespace(script: &str) -> Output {
    Command::new("unshare").args(["-rm", "sh", "-c", script]).output().expect("unshare runs")
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn a_full_disk_or_a_read_only_folder_fails_clearly_and_keeps_the_previous_files() {
    let dir = temp_dir("disk");
    let data = small_dataset(&dir.join("data"));
    let args = train_args(&data, 1, 0);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let bin = env!("CARGO_BIN_EXE_resnet");
    let first = format!("{bin} {} --out {}/run", args.join(" "), mnt.display());
    let resume = format!("{bin} train --resume {}/run --epochs 3", mnt.display());
    let d = dir.display();
    let m = mnt.display();
    let script = format!(
        "set -e
mount -t tmpfs -o size=16m tmpfs {m}
{first} > {d}/first.out
cp -r {m}/run {d}/before
# Fill the file system, then free 64 KiB: enough to start, not enough for a checkpoint.
dd if=/dev/zero of={m}/fill bs=64k 2>/dev/null || true
truncate -s -65536 {m}/fill
set +e
{resume} > {d}/full.out 2> {d}/full.err
echo $? > {d}/full.rc
set -e
cp -r {m}/run {d}/after_full
rm {m}/fill
mount -o remount,ro {m}
set +e
{resume} > {d}/ro.out 2> {d}/ro.err
echo $? > {d}/ro.rc
set -e
cp -r {m}/run {d}/after_ro
"
    );
    let o = in_mount_namespace(&script);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let before = snapshot(&dir.join("before"));
    assert!(before.contains_key("best.safetensors") && before.contains_key("checkpoint.safetensors"));

    // Full: epoch 2 trains, then its first write fails, naming the file and the cause.
    assert_ne!(read("full.rc").trim(), "0");
    let err = read("full.err");
    assert!(err.contains("No space left on device") && err.contains("saving "), "{err}");
    assert!(err.contains("previous version is intact") && !err.contains("panicked"), "{err}");
    assert_eq!(snapshot(&dir.join("after_full")), before, "a failed save changed the previous files");

    // Read-only: refused before any training, nothing changed.
    assert_ne!(read("ro.rc").trim(), "0");
    let err = read("ro.err");
    assert!(err.contains("Read-only file system") && err.contains("class_indices.json"), "{err}");
    assert!(err.contains("nothing was trained") && !err.contains("panicked"), "{err}");
    assert!(!read("ro.out").contains("epoch 2/3"), "it trained before noticing: {}", read("ro.out"));
    assert_eq!(snapshot(&dir.join("after_ro")), before);
}
