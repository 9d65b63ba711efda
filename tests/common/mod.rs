//! Helpers shared by the end-to-end tests of the `resnet` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the real `resnet` executable to completion.
pub fn resnet<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("the binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An empty folder of this test process, `<temp>/resnet-<tag>-<pid>`, removed with everything in
/// it when the guard is dropped (a training run leaves about 200 MB; CI machines share a disk).
pub fn temp_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("resnet-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// See [`temp_dir`]; dereferences to the folder's path.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<OsStr> for TempDir {
    fn as_ref(&self) -> &OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A committed PyTorch fixture of the resnet crate.
pub fn torch_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/resnet/tests/fixtures/torch").join(name)
}

/// `resnet infer` on the committed ResNet-18 fixture (base width 4) with `extra` arguments; the
/// logits it wrote, and PyTorch's for the same input, with their largest magnitude (at least 1).
pub fn infer_resnet18_fixture(tag: &str, extra: &[&str]) -> (Vec<f32>, Vec<f32>, f32) {
    let mut args = vec!["--arch", "resnet18", "--base-planes", "4"];
    args.extend(extra);
    infer_fixture_with(tag, &args)
}

/// `infer` on the resnet18 fixture naming neither the architecture nor the stem width.
pub fn infer_fixture_without_arch(tag: &str) -> (Vec<f32>, Vec<f32>, f32) {
    infer_fixture_with(tag, &[])
}

fn infer_fixture_with(tag: &str, extra: &[&str]) -> (Vec<f32>, Vec<f32>, f32) {
    let dir = temp_dir(tag);
    let out = dir.join("y.npy");
    let (weights, input) = (torch_fixture("resnet18.pth"), torch_fixture("input.npy"));
    let mut args = vec!["infer", "--weights", weights.to_str().unwrap()];
    args.extend(["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    args.extend(extra);
    let o = resnet(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = tensor::read_npy(&out).unwrap().to_vec_f32().unwrap();
    let want = tensor::read_npy(torch_fixture("resnet18_logits.npy")).unwrap().to_vec_f32().unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    (got, want, scale)
}

/// The demo dataset (6 classes) with square pictures of `size` pixels, written into `root`.
pub fn demo_dataset(root: &Path, train_per_class: usize, val_per_class: usize, size: usize) -> PathBuf {
    let config =
        data::DemoConfig { train_per_class, val_per_class, width: size, height: size, ..data::DemoConfig::default() };
    data::write_demo_dataset(root, &config).unwrap().root
}

/// Every tensor of a weight file as its shape and the bits of its values, for exact comparison.
pub fn tensor_bits(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u64>)> {
    let sd = resnet::read_weights(path).unwrap_or_else(|e| panic!("{e}"));
    sd.entries
        .into_iter()
        .map(|(k, t)| {
            let bits = match t.dtype() {
                tensor::DType::F32 => t.to_vec_f32().unwrap().iter().map(|v| v.to_bits() as u64).collect(),
                tensor::DType::I64 => t.to_vec_i64().unwrap().iter().map(|&v| v as u64).collect(),
            };
            (k, (t.shape().to_vec(), bits))
        })
        .collect()
}

/// The f32 tensors of a weight file by name, flattened.
pub fn read_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let sd = resnet::read_weights(path).unwrap_or_else(|e| panic!("{e}"));
    sd.entries.into_iter().filter_map(|(k, t)| Some((k, t.to_vec_f32().ok()?))).collect()
}
