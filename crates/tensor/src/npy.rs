//! numpy `.npy` files: read f32, f64 (as f32), i64 and i32 (as i64) arrays in C or Fortran
//! order; write f32 and i64 in C order. Writing goes through a temporary file and a rename, so a
//! reader never sees half a file.

use crate::error::{Result, TensorError};
use crate::{DType, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";

fn npy_err(path: &Path, msg: impl Into<String>) -> TensorError {
    TensorError::Npy { path: path.to_path_buf(), msg: msg.into() }
}

/// Parses a `.npy` image held in memory; `path` only names it in errors.
pub fn read_npy_bytes(bytes: &[u8], path: &Path) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(npy_err(path, "missing the \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(npy_err(path, "truncated header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(npy_err(path, format!("unsupported format version {v}"))),
    };
    let end = start.checked_add(hlen).filter(|&e| e <= bytes.len()).ok_or_else(|| npy_err(path, "truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| npy_err(path, "the header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| npy_err(path, "the header has no 'descr'"))?;
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| npy_err(path, "the header has no 'fortran_order'"))?;
    let shape_s = dict_value(header, "shape").ok_or_else(|| npy_err(path, "the header has no 'shape'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = match fortran {
        "True" => true,
        "False" => false,
        other => return Err(npy_err(path, format!("bad fortran_order {other}"))),
    };
    let shape = parse_shape(shape_s).ok_or_else(|| npy_err(path, format!("bad shape {shape_s}")))?;
    // Also refuses shapes such as (0, 2**63) that hold nothing but no array can take.
    let numel = crate::shape::checked_numel("read_npy", &shape)
        .map_err(|_| npy_err(path, format!("shape {shape:?} overflows")))?;
    let (item, kind) = match descr {
        "<f4" => (4, 'f'),
        "<f8" => (8, 'f'),
        "<i8" => (8, 'i'),
        "<i4" => (4, 'i'),
        other => return Err(npy_err(path, format!("unsupported dtype {other} (expected <f4, <f8, <i8 or <i4)"))),
    };
    let data = &bytes[end..];
    let need = numel.checked_mul(item).ok_or_else(|| npy_err(path, "size overflows"))?;
    if data.len() != need {
        return Err(npy_err(path, format!("shape {shape:?} needs {need} bytes of data, the file has {}", data.len())));
    }
    // Fortran order: the data is the C-order array of the reversed shape, transposed.
    let stored: Vec<usize> = if fortran { shape.iter().rev().copied().collect() } else { shape.clone() };
    let t = match kind {
        'f' => {
            let v: Vec<f32> = if item == 4 {
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            } else {
                data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            };
            Tensor::from_vec_unchecked(v, &stored)
        }
        _ => {
            let v: Vec<i64> = if item == 8 {
                data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
            } else {
                data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()
            };
            Tensor::from_i64_vec_unchecked(v, &stored)
        }
    };
    if fortran && shape.len() > 1 {
        let rev: Vec<usize> = (0..shape.len()).rev().collect();
        Ok(t.permute(&rev)?.contiguous())
    } else {
        Ok(t)
    }
}

/// The value text of `'key': value` in a numpy header dict.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[pos + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}']).unwrap_or(rest.len()) };
    Some(rest[..end].trim())
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| p.trim_end_matches('L').parse().ok()).collect()
}

/// The `.npy` image of a tensor (C order, little endian, format 1.0).
pub fn npy_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let shape = t.shape();
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let descr = match t.dtype() {
        DType::F32 => "<f4",
        DType::I64 => "<i8",
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * t.dtype().size_in_bytes());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    // A GPU tensor is copied down first, as `numpy.save(t.cpu())` would need.
    let host = t.to_device(crate::Device::Cpu)?;
    match t.dtype() {
        DType::F32 => host.f32_data("npy_bytes")?.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::I64 => host.i64_data("npy_bytes")?.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
    }
    Ok(out)
}

/// Reads a `.npy` file (`numpy.load`).
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| TensorError::Io { path: path.to_path_buf(), source })?;
    read_npy_bytes(&bytes, path)
}

/// Writes a `.npy` file (`numpy.save`) atomically: a temporary file in the same folder, then a
/// rename over the target.
pub fn write_npy(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    let path = path.as_ref();
    let bytes = npy_bytes(t)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| TensorError::Io { path: path.to_path_buf(), source };
    let file_name = path.file_name().ok_or_else(|| io(std::io::Error::other("not a file path")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
