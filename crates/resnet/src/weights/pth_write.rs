//! Writing PyTorch's zip `.pth` format, so `torch.load` reads our checkpoints: `data.pkl` (an
//! `OrderedDict` of `_rebuild_tensor_v2` calls, pickle protocol 2), one uncompressed entry per
//! storage, and the `version` / `byteorder` records.

use crate::{ResnetError, Result};
use std::io::Write;
use std::path::Path;
use tensor::{DType, Tensor};

/// Pickle opcodes used by the writer (names as in Python's `pickletools`).
struct Pickler(Vec<u8>);

impl Pickler {
    fn op(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(format!("c{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.op(b"X");
        self.op(&(s.len() as u32).to_le_bytes());
        self.op(s.as_bytes());
    }
    fn int(&mut self, v: usize) {
        match u32::try_from(v) {
            Ok(v) if v <= i32::MAX as u32 => {
                self.op(b"J");
                self.op(&(v as i32).to_le_bytes());
            }
            _ => {
                self.op(&[0x8a, 8]);
                self.op(&(v as i64).to_le_bytes());
            }
        }
    }
    fn ints(&mut self, v: &[usize]) {
        self.op(b"(");
        v.iter().for_each(|&x| self.int(x));
        self.op(b"t");
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b")R");
    }
}

/// The `.pth` image of a state dict (f32 tensors as `FloatStorage`, i64 as `LongStorage`).
pub fn pth_bytes(entries: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut p = Pickler(vec![0x80, 2]);
    p.empty_ordered_dict();
    p.op(b"(");
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (key, t) in entries {
        let (class, bytes): (&str, Vec<u8>) = match t.dtype() {
            DType::F32 => ("FloatStorage", t.to_vec_f32()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DType::I64 => ("LongStorage", t.to_vec_i64()?.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        let shape = t.shape();
        let mut strides = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        p.str(key);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b"(");
        p.op(b"(");
        p.str("storage");
        p.global("torch", class);
        p.str(&storages.len().to_string());
        p.str("cpu");
        p.int(t.numel());
        p.op(b"tQ");
        p.int(0);
        p.ints(shape);
        p.ints(&strides);
        p.op(&[0x89]);
        p.empty_ordered_dict();
        p.op(b"tR");
        storages.push(bytes);
    }
    p.op(b"u.");

    let mut buf = std::io::Cursor::new(Vec::new());
    let err = |e: &dyn std::fmt::Display| ResnetError::Config(format!("writing the .pth archive: {e}"));
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        // PyTorch aligns storages to 64 bytes so they can be memory-mapped.
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let mut entry = |name: &str, data: &[u8]| -> Result<()> {
            z.start_file(format!("archive/{name}"), opts).map_err(|e| err(&e))?;
            z.write_all(data).map_err(|e| err(&e))
        };
        entry("data.pkl", &p.0)?;
        entry("byteorder", b"little")?;
        for (i, s) in storages.iter().enumerate() {
            entry(&format!("data/{i}"), s)?;
        }
        entry("version", b"3\n")?;
        z.finish().map_err(|e| err(&e))?;
    }
    Ok(buf.into_inner())
}

/// Writes a state dict as a zip `.pth` (readable by `torch.load`), atomically.
pub fn write_pth(path: impl AsRef<Path>, entries: &[(String, Tensor)]) -> Result<()> {
    Ok(tensor::write_atomic(path.as_ref(), &pth_bytes(entries)?)?)
}
