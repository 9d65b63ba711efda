//! Reproducible train/validation splits, in memory ([`split_indices`], then [`crate::Subset`]) or
//! written out as two ImageFolders ([`write_split`]), as the tutorial's `split_data.py` does.

use crate::error::{DataError, Result};
use crate::folder::ImageFolder;
use crate::transforms::mix;
use std::path::{Path, PathBuf};
use tensor::Rng;

/// Indices of the training and validation samples, each sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training samples.
    pub train: Vec<usize>,
    /// Validation samples.
    pub val: Vec<usize>,
}

/// Splits samples class by class (stratified, as `split_data.py`): of a class's `n` samples,
/// `floor(n * val_fraction)` chosen at random go to validation. `targets[i]` is sample `i`'s
/// class. The split depends only on `(targets, val_fraction, seed)`.
pub fn split_indices(targets: &[usize], val_fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(DataError::invalid("split_indices", format!("val_fraction {val_fraction} is not in [0, 1)")));
    }
    let classes = targets.iter().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &t) in targets.iter().enumerate() {
        by_class[t].push(i);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (c, members) in by_class.iter().enumerate() {
        // One stream per class: adding samples to one class leaves the others' splits alone.
        let mut rng = Rng::seed(mix(&[seed, 0x5311_7000, c as u64]));
        let k = (members.len() as f64 * val_fraction) as usize;
        let perm = rng.permutation(members.len());
        let mut is_val = vec![false; members.len()];
        for &p in &perm[..k] {
            is_val[p] = true;
        }
        for (j, &i) in members.iter().enumerate() {
            if is_val[j] {
                val.push(i);
            } else {
                train.push(i);
            }
        }
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok(Split { train, val })
}

/// Copies `folder`'s samples into `out/train/<class>/...` and `out/val/<class>/...` following
/// `split` (each file keeps its path relative to its class folder). Refuses to write into an
/// existing non-empty `out/train` or `out/val`, so nothing is ever overwritten; each file is
/// copied through a temporary sibling and a rename. Returns the two folders.
pub fn write_split(folder: &ImageFolder, split: &Split, out: impl AsRef<Path>) -> Result<(PathBuf, PathBuf)> {
    let out = out.as_ref();
    let (train_dir, val_dir) = (out.join("train"), out.join("val"));
    for d in [&train_dir, &val_dir] {
        if let Ok(mut entries) = std::fs::read_dir(d) {
            if entries.next().is_some() {
                return Err(DataError::io(
                    d,
                    std::io::Error::new(std::io::ErrorKind::AlreadyExists, "folder exists and is not empty"),
                ));
            }
        }
    }
    let n = folder.len();
    if let Some(&bad) = split.train.iter().chain(&split.val).find(|&&i| i >= n) {
        return Err(DataError::invalid("write_split", format!("index {bad} is out of range for {n} samples")));
    }
    for (dir, indices) in [(&train_dir, &split.train), (&val_dir, &split.val)] {
        // Every class gets its folder, even one the split leaves empty, so that both halves
        // list the same classes.
        for class in folder.classes() {
            let d = dir.join(class);
            std::fs::create_dir_all(&d).map_err(|e| DataError::io(&d, e))?;
        }
        for &i in indices {
            let (src, label) = &folder.samples()[i];
            let class_root = folder.root().join(&folder.classes()[*label]);
            let rel = src.strip_prefix(&class_root).unwrap_or(src.as_path());
            let dst = dir.join(&folder.classes()[*label]).join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
            }
            copy_atomic(src, &dst)?;
        }
    }
    Ok((train_dir, val_dir))
}

fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|e| DataError::io(src, e))?;
    crate::image::write_file(dst, &bytes)
}
