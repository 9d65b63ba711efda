//! Weight files: PyTorch `.pth` (zip and legacy, through a restricted unpickler that never runs
//! code) and safetensors (the native format), plus loading into a model — strict, or for
//! transfer learning with a new head.

mod pickle;
mod pth;
mod pth_write;

pub use pth_write::{pth_bytes, write_pth};

use crate::model::ResNet;
use crate::{ResnetError, Result};
use nn::{LoadReport, ModuleExt};
use std::collections::HashMap;
use std::path::Path;
use tensor::Tensor;

/// Metadata keys the weight files this project writes carry (readers fall back on the
/// state dict's layout for files without them).
pub mod meta {
    /// Zoo name of the architecture.
    pub const ARCH: &str = "arch";
    /// Stem width when it is not torchvision's 64 (reduced-width models).
    pub const BASE_PLANES: &str = "base_planes";
    /// Number of classes of the head.
    pub const NUM_CLASSES: &str = "num_classes";
    /// Class names as a JSON array, in index order.
    pub const CLASSES: &str = "classes";
    /// Eval transform: resize (shorter side), crop, mean and std (JSON arrays).
    pub const RESIZE: &str = "eval_resize";
    /// Eval transform: centre crop size.
    pub const CROP: &str = "eval_crop";
    /// Eval transform: normalisation mean.
    pub const MEAN: &str = "eval_mean";
    /// Eval transform: normalisation std.
    pub const STD: &str = "eval_std";
}

/// The metadata of a weight file this project writes: the architecture, class count and stem
/// width, then `extra` (classes, eval transform).
pub fn metadata_for(
    arch: crate::Arch,
    config: &crate::ResNetConfig,
    extra: &[(&str, String)],
) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert("format".into(), "pt".into());
    m.insert(meta::ARCH.into(), arch.name().into());
    m.insert(meta::NUM_CLASSES.into(), config.num_classes.to_string());
    if config.base_planes != 64 {
        m.insert(meta::BASE_PLANES.into(), config.base_planes.to_string());
    }
    for (k, v) in extra {
        m.insert(k.to_string(), v.clone());
    }
    m
}

/// The tensors of a weight file in file order, and its metadata (safetensors only).
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    /// `(key, tensor)` pairs; floats as f32, integers as i64.
    pub entries: Vec<(String, Tensor)>,
    /// Free-form string metadata (architecture, classes, transforms for files we write).
    pub metadata: HashMap<String, String>,
}

impl StateDict {
    /// The tensor under `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, t)| t)
    }

    /// The class count of a classifier's head (`fc.weight`'s first dimension).
    pub fn num_classes(&self) -> Option<usize> {
        self.get("fc.weight").and_then(|w| w.shape().first().copied())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResnetError + '_ {
    move |source| ResnetError::Io { path: path.to_path_buf(), source }
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: the map is read-only and lives only while this load runs; a file changed by
    // another process meanwhile can give wrong values (which the format checks then catch or
    // not), never memory unsafety in this process beyond what reading does.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))
}

/// Strips DataParallel's `module.` prefix when every key carries it.
fn strip_module_prefix(entries: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    if !entries.is_empty() && entries.iter().all(|(k, _)| k.starts_with("module.")) {
        entries.into_iter().map(|(k, t)| (k["module.".len()..].to_string(), t)).collect()
    } else {
        entries
    }
}

/// Reads a `.pth` (zip or legacy) or `.safetensors` file, chosen by its content.
///
/// The file may come from anyone: a pickle that names anything but the handful of globals a
/// state dict uses is refused ([`ResnetError::Refused`]) before anything runs, and every size,
/// shape, stride and offset it claims is checked against the data actually present before
/// memory is allocated for it ([`ResnetError::Format`]).
pub fn read_weights(path: impl AsRef<Path>) -> Result<StateDict> {
    let path = path.as_ref();
    let map = map_file(path)?;
    read_weights_bytes(&map, path)
}

/// As [`read_weights`], from the file's bytes (`path` only names it in errors).
pub fn read_weights_bytes(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let sd =
        if tensor::is_safetensors(bytes) { read_safetensors_bytes(bytes, path)? } else { read_pth_bytes(bytes, path)? };
    Ok(StateDict { entries: strip_module_prefix(sd.entries), metadata: sd.metadata })
}

/// Reads a PyTorch `.pth` image (zip, PyTorch >= 1.6, or the legacy stream of pickles) through
/// the restricted unpickler; `path` only names it in errors. The state dict is the root dict or
/// the dict under `state_dict` / `model` of a checkpoint; non-tensor entries are skipped.
pub fn read_pth_bytes(bytes: &[u8], path: &Path) -> Result<StateDict> {
    Ok(StateDict { entries: pth::read_pth_bytes(bytes, path)?, metadata: HashMap::new() })
}

/// Parses a safetensors image (the format itself is `tensor`'s; a malformed file is a
/// [`ResnetError::Format`] naming it).
pub fn read_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let file = tensor::read_safetensors_bytes(bytes, path).map_err(format_error)?;
    Ok(StateDict { entries: file.entries, metadata: file.metadata })
}

/// Writes tensors (and string metadata) as safetensors, atomically (see
/// [`tensor::write_safetensors`]).
pub fn write_safetensors(
    path: impl AsRef<Path>,
    entries: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    tensor::write_safetensors(path, entries, metadata).map_err(format_error)
}

/// A tensor file's format error as this crate's, so that every malformed weight file, whatever
/// its format, is one kind of error.
fn format_error(e: tensor::TensorError) -> ResnetError {
    match e {
        tensor::TensorError::Format { path, msg } => ResnetError::Format { path, msg },
        other => other.into(),
    }
}

/// Loads every key strictly: any missing, unexpected or shape-mismatched key is an error that
/// lists them all, and nothing is loaded.
pub fn load_strict(model: &ResNet, sd: &StateDict) -> Result<()> {
    model.load_state_dict(&sd.entries, true)?;
    Ok(())
}

/// Transfer learning: loads the backbone strictly and the head only if its shape fits. A head
/// of another class count (or a file without one) leaves the model's fresh head in place; the
/// report lists the skipped keys.
pub fn load_pretrained(model: &ResNet, sd: &StateDict) -> Result<LoadReport> {
    let report = model.load_state_dict(&sd.entries, false)?;
    let is_head = |k: &str| k == "fc.weight" || k == "fc.bias";
    let backbone_problem = report.missing.iter().any(|k| !is_head(k))
        || report.unexpected.iter().any(|k| !is_head(k))
        || report.mismatched.iter().any(|(k, _, _)| !is_head(k));
    if backbone_problem {
        return Err(nn::NnError::StateDict(report).into());
    }
    Ok(report)
}
