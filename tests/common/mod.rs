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

/// An empty folder of this test process: `<temp>/resnet-<tag>-<pid>`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
