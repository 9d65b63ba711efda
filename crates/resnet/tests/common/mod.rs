//! Helpers: fixture paths, the reduced-width configurations of the fixture generator, and a
//! tiny pickle assembler for hostile files.
#![allow(dead_code)]

use resnet::{BlockKind, ResNetConfig};
use std::io::Write;
use std::path::PathBuf;
use tensor::Tensor;

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch").join(name)
}

pub fn npy(name: &str) -> Tensor {
    tensor::read_npy(fixture_path(&format!("{name}.npy"))).unwrap()
}

/// The reduced-width configurations of `fixtures/gen_resnet_fixtures.py` (`REDUCED`).
pub fn reduced(name: &str) -> ResNetConfig {
    use BlockKind::*;
    let (block, layers, base, groups, wpg, dilation) = match name {
        "resnet18" => (Basic, [2, 2, 2, 2], 4, 1, 64, [false; 3]),
        "resnet34" => (Basic, [3, 4, 6, 3], 4, 1, 64, [false; 3]),
        "resnet50" => (Bottleneck, [3, 4, 6, 3], 4, 1, 64, [false; 3]),
        "resnet101" => (Bottleneck, [3, 4, 23, 3], 2, 1, 64, [false; 3]),
        "resnet152" => (Bottleneck, [3, 8, 36, 3], 2, 1, 64, [false; 3]),
        "resnext50_32x4d" => (Bottleneck, [3, 4, 6, 3], 2, 4, 32, [false; 3]),
        "resnext101_32x8d" => (Bottleneck, [3, 4, 23, 3], 2, 2, 64, [false; 3]),
        "resnext101_64x4d" => (Bottleneck, [3, 4, 23, 3], 2, 4, 32, [false; 3]),
        "wide_resnet50_2" => (Bottleneck, [3, 4, 6, 3], 2, 1, 128, [false; 3]),
        "wide_resnet101_2" => (Bottleneck, [3, 4, 23, 3], 2, 1, 128, [false; 3]),
        "resnet50_dilated" => (Bottleneck, [3, 4, 6, 3], 2, 1, 64, [false, true, true]),
        other => panic!("no reduced configuration for {other}"),
    };
    ResNetConfig {
        groups,
        width_per_group: wpg,
        base_planes: base,
        replace_stride_with_dilation: dilation,
        ..ResNetConfig::new(block, layers, 10)
    }
}

pub const REDUCED: [&str; 11] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnet50_dilated",
];

/// `max |a - b| <= tol * max(1, max |b|)`.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{what}[{i}]: {a} vs {b}");
    }
}

/// A minimal pickle assembler (protocol 2 opcodes).
#[derive(Default)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    pub fn op(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    pub fn str(mut self, s: &str) -> Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(mut self, v: i64) -> Self {
        self.0.push(0x8a);
        self.0.push(8);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn mark(self) -> Self {
        self.op(b"(")
    }
    pub fn tuple(self) -> Self {
        self.op(b"t")
    }
    pub fn reduce(self) -> Self {
        self.op(b"R")
    }
    pub fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
    /// `('storage', torch.<class>, key, 'cpu', numel)` followed by BINPERSID.
    pub fn storage(self, class: &str, key: &str, numel: i64) -> Self {
        self.mark().str("storage").global("torch", class).str(key).str("cpu").int(numel).tuple().op(b"Q")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    pub fn tensor(self, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
        let mut p =
            self.global("torch._utils", "_rebuild_tensor_v2").mark().storage("FloatStorage", key, numel).int(offset);
        p = p.mark();
        for &s in size {
            p = p.int(s);
        }
        p = p.tuple().mark();
        for &s in stride {
            p = p.int(s);
        }
        p.tuple().op(b"\x89").global("collections", "OrderedDict").op(b")").reduce().tuple().reduce()
    }
}

/// A zip `.pth` with `archive/data.pkl` and the given storages.
pub fn zip_pth(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pickle).unwrap();
        for (k, data) in storages {
            z.start_file(format!("archive/data/{k}"), opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// Writes bytes to a fresh temporary file and returns its path.
pub fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
