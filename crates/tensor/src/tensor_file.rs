//! Named-tensor files: safetensors read and write, and the little-endian element decoding that
//! every weight format shares. Weights, optimizer state and checkpoints are all "named tensors
//! plus string metadata", so the format sits here, below every crate that saves state: `nn`
//! saves an optimizer and `train` a checkpoint without going through the model zoo. Formats that
//! are about one framework's conventions (PyTorch's `.pth` pickles, torchvision's names) stay in
//! the `resnet` crate.

use crate::error::{Result, TensorError};
use crate::{write_atomic, DType, Tensor};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

/// The tensors of a file in file order, and its string metadata.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    /// `(name, tensor)` pairs; floats as f32, integers as i64.
    pub entries: Vec<(String, Tensor)>,
    /// Free-form string metadata (safetensors' `__metadata__`).
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, t)| t)
    }
}

/// An element type as weight files store it. Reading converts floats to f32 and integers (and
/// booleans) to i64, the two dtypes a [`Tensor`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    /// 32-bit float.
    F32,
    /// 64-bit float (narrowed to f32).
    F64,
    /// IEEE half (widened to f32).
    F16,
    /// bfloat16 (widened to f32).
    BF16,
    /// 64-bit integer.
    I64,
    /// 32-bit integer.
    I32,
    /// 16-bit integer.
    I16,
    /// 8-bit integer.
    I8,
    /// Unsigned byte.
    U8,
    /// Boolean, one byte.
    Bool,
}

impl StoredDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StoredDType::F64 | StoredDType::I64 => 8,
            StoredDType::F32 | StoredDType::I32 => 4,
            StoredDType::F16 | StoredDType::BF16 | StoredDType::I16 => 2,
            StoredDType::I8 | StoredDType::U8 | StoredDType::Bool => 1,
        }
    }

    /// Whether it reads as an f32 tensor (else i64).
    pub fn is_float(self) -> bool {
        matches!(self, StoredDType::F32 | StoredDType::F64 | StoredDType::F16 | StoredDType::BF16)
    }

    /// The tensor of `shape` whose little-endian elements are `bytes`.
    pub fn decode(self, bytes: &[u8], shape: &[usize]) -> Result<Tensor> {
        use StoredDType as D;
        match self {
            D::F32 => Tensor::from_vec(decode(bytes, f32::from_le_bytes), shape),
            D::F64 => Tensor::from_vec(decode(bytes, |b| f64::from_le_bytes(b) as f32), shape),
            D::F16 => Tensor::from_vec(decode(bytes, |b| half::f16::from_le_bytes(b).to_f32()), shape),
            D::BF16 => Tensor::from_vec(decode(bytes, |b| half::bf16::from_le_bytes(b).to_f32()), shape),
            D::I64 => Tensor::from_vec_i64(decode(bytes, i64::from_le_bytes), shape),
            D::I32 => Tensor::from_vec_i64(decode(bytes, |b| i32::from_le_bytes(b) as i64), shape),
            D::I16 => Tensor::from_vec_i64(decode(bytes, |b| i16::from_le_bytes(b) as i64), shape),
            D::I8 => Tensor::from_vec_i64(decode(bytes, |[b]: [u8; 1]| b as i8 as i64), shape),
            D::U8 | D::Bool => Tensor::from_vec_i64(decode(bytes, |[b]: [u8; 1]| b as i64), shape),
        }
    }
}

/// Little-endian elements of `N` bytes each, converted by `conv` (statically dispatched, so the
/// f32 case compiles to a plain copy: a per-element `dyn Fn` made loading resnet50 2.3x slower
/// than `torch.load`).
fn decode<T, const N: usize>(bytes: &[u8], conv: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|c| conv(c.try_into().expect("chunks of N bytes"))).collect()
}

fn format_err(path: &Path, msg: impl Into<String>) -> TensorError {
    TensorError::Format { path: path.to_path_buf(), msg: msg.into() }
}

/// Whether `bytes` look like a safetensors image: an 8-byte header length, then the JSON
/// header's brace. (A header length can start with 0x80 as a pickle does, and a zip's first
/// bytes are `PK`, so the brace decides.)
pub fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.get(8) == Some(&b'{') && !bytes.starts_with(b"PK\x03\x04")
}

/// Reads a safetensors file.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<TensorFile> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io { path: path.to_path_buf(), source })?;
    read_safetensors_bytes(&bytes, path)
}

/// Parses a safetensors image; `path` only names it in errors. Every size and offset the header
/// claims is checked against the bytes present before anything is allocated for it.
pub fn read_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<TensorFile> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(path, format!("not a readable safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| format_err(path, e.to_string()))?;
    let mut views = st.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    let mut entries = Vec::with_capacity(views.len());
    for (name, v) in views {
        let stored = match v.dtype() {
            Dtype::F32 => StoredDType::F32,
            Dtype::F64 => StoredDType::F64,
            Dtype::F16 => StoredDType::F16,
            Dtype::BF16 => StoredDType::BF16,
            Dtype::I64 => StoredDType::I64,
            Dtype::I32 => StoredDType::I32,
            Dtype::I16 => StoredDType::I16,
            Dtype::I8 => StoredDType::I8,
            Dtype::U8 => StoredDType::U8,
            Dtype::BOOL => StoredDType::Bool,
            other => return Err(format_err(path, format!("tensor {name}: unsupported dtype {other:?}"))),
        };
        let t = stored.decode(v.data(), v.shape()).map_err(|e| format_err(path, format!("tensor {name}: {e}")))?;
        entries.push((name, t));
    }
    Ok(TensorFile { entries, metadata: meta.metadata().clone().unwrap_or_default() })
}

/// The safetensors image of `entries` and `metadata`; `path` only names it in errors.
pub fn safetensors_bytes(
    entries: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut raw: Vec<(&str, Dtype, Vec<u8>)> = Vec::with_capacity(entries.len());
    for (k, t) in entries {
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (Dtype::F32, t.to_vec_f32()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::I64 => (Dtype::I64, t.to_vec_i64()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        raw.push((k, dtype, bytes));
    }
    let views = raw
        .iter()
        .zip(entries)
        .map(|((k, d, b), (_, t))| {
            safetensors::tensor::TensorView::new(*d, t.shape().to_vec(), b)
                .map(|v| (*k, v))
                .map_err(|e| format_err(path, format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = if metadata.is_empty() { None } else { Some(metadata.clone()) };
    safetensors::serialize(views, meta).map_err(|e| format_err(path, e.to_string()))
}

/// Writes tensors (and string metadata) as safetensors, atomically: a reader sees the previous
/// file or the new one, never a part.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    entries: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    write_atomic(path, &safetensors_bytes(entries, metadata, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_names_values_and_metadata() {
        let entries = vec![
            ("b.weight".to_string(), Tensor::from_vec(vec![1.5, -2.0, 3.25, 0.0], &[2, 2]).unwrap()),
            ("a.count".to_string(), Tensor::from_vec_i64(vec![7], &[]).unwrap()),
        ];
        let meta = HashMap::from([("arch".to_string(), "resnet18".to_string())]);
        let path = Path::new("<memory>");
        let bytes = safetensors_bytes(&entries, &meta, path).unwrap();
        assert!(is_safetensors(&bytes));
        let back = read_safetensors_bytes(&bytes, path).unwrap();
        // The serializer lays tensors out by alignment, then name; reading follows the file.
        assert_eq!(back.entries.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a.count", "b.weight"]);
        assert_eq!(back.get("b.weight").unwrap().to_vec_f32().unwrap(), [1.5, -2.0, 3.25, 0.0]);
        assert_eq!(back.get("a.count").unwrap().to_vec_i64().unwrap(), [7]);
        assert_eq!(back.metadata, meta);
    }

    #[test]
    fn a_truncated_file_is_an_error_naming_it() {
        let bytes = safetensors_bytes(
            &[("w".into(), Tensor::from_vec(vec![1.0; 8], &[8]).unwrap())],
            &HashMap::new(),
            Path::new("x"),
        )
        .unwrap();
        let err = read_safetensors_bytes(&bytes[..bytes.len() - 4], Path::new("cut.safetensors")).unwrap_err();
        assert!(err.to_string().starts_with("cut.safetensors: "), "{err}");
    }

    #[test]
    fn stored_types_widen_and_narrow() {
        let h = half::f16::from_f32(0.5).to_le_bytes();
        assert_eq!(StoredDType::F16.decode(&h, &[1]).unwrap().to_vec_f32().unwrap(), [0.5]);
        assert_eq!(StoredDType::I8.decode(&[0xff], &[1]).unwrap().to_vec_i64().unwrap(), [-1]);
        assert!(StoredDType::F32.decode(&[0; 8], &[3]).is_err(), "two elements for a shape of three");
    }
}
