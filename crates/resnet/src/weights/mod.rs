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
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;
use tensor::{DType, Tensor};

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
    // safetensors: an 8-byte header length, then the JSON header. A header length can start
    // with byte 0x80 too, so the JSON brace decides before the pickle's PROTO opcode does.
    let sd = if bytes.get(8) == Some(&b'{') && !bytes.starts_with(b"PK\x03\x04") {
        read_safetensors_bytes(bytes, path)?
    } else {
        read_pth_bytes(bytes, path)?
    };
    Ok(StateDict { entries: strip_module_prefix(sd.entries), metadata: sd.metadata })
}

/// Reads a PyTorch `.pth` image (zip, PyTorch >= 1.6, or the legacy stream of pickles) through
/// the restricted unpickler; `path` only names it in errors. The state dict is the root dict or
/// the dict under `state_dict` / `model` of a checkpoint; non-tensor entries are skipped.
pub fn read_pth_bytes(bytes: &[u8], path: &Path) -> Result<StateDict> {
    Ok(StateDict { entries: pth::read_pth_bytes(bytes, path)?, metadata: HashMap::new() })
}

/// Little-endian elements of `N` bytes each, converted by `conv` (statically dispatched, so the
/// f32 case compiles to a plain copy: a per-element `dyn Fn` made loading resnet50 2.3x slower
/// than `torch.load`).
pub(crate) fn decode<T, const N: usize>(bytes: &[u8], conv: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| conv(c.try_into().expect("chunks of N bytes"))).collect()
}

/// Parses a safetensors image.
pub fn read_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let bad = |msg: String| ResnetError::Format { path: path.to_path_buf(), msg };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("neither a PyTorch file nor a readable safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let mut views = st.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut entries = Vec::with_capacity(views.len());
    for (name, v) in views {
        let shape = v.shape().to_vec();
        let d = v.data();
        let t = match v.dtype() {
            Dtype::F32 => Tensor::from_vec(decode(d, f32::from_le_bytes), &shape),
            Dtype::F64 => Tensor::from_vec(decode(d, |b| f64::from_le_bytes(b) as f32), &shape),
            Dtype::F16 => Tensor::from_vec(decode(d, |b| half::f16::from_le_bytes(b).to_f32()), &shape),
            Dtype::BF16 => Tensor::from_vec(decode(d, |b| half::bf16::from_le_bytes(b).to_f32()), &shape),
            Dtype::I64 => Tensor::from_vec_i64(decode(d, i64::from_le_bytes), &shape),
            Dtype::I32 => Tensor::from_vec_i64(decode(d, |b| i32::from_le_bytes(b) as i64), &shape),
            Dtype::I16 => Tensor::from_vec_i64(decode(d, |b| i16::from_le_bytes(b) as i64), &shape),
            Dtype::I8 => Tensor::from_vec_i64(decode(d, |[b]: [u8; 1]| b as i8 as i64), &shape),
            Dtype::U8 | Dtype::BOOL => Tensor::from_vec_i64(decode(d, |[b]: [u8; 1]| b as i64), &shape),
            other => return Err(bad(format!("tensor {name}: unsupported dtype {other:?}"))),
        }
        .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        entries.push((name, t));
    }
    Ok(StateDict { entries, metadata: meta.metadata().clone().unwrap_or_default() })
}

/// Writes tensors (and string metadata) as safetensors, atomically.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    entries: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut raw: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(entries.len());
    for (k, t) in entries {
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (Dtype::F32, t.to_vec_f32()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::I64 => (Dtype::I64, t.to_vec_i64()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        raw.push((k.clone(), dtype, t.shape().to_vec(), bytes));
    }
    let views = raw
        .iter()
        .map(|(k, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (k.as_str(), v))
                .map_err(|e| ResnetError::Format { path: path.to_path_buf(), msg: format!("tensor {k}: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = if metadata.is_empty() { None } else { Some(metadata.clone()) };
    let bytes = safetensors::serialize(views, meta)
        .map_err(|e| ResnetError::Format { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok(tensor::write_atomic(path, &bytes)?)
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
