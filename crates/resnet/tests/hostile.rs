//! Hostile and broken weight files: each is refused with a clear error naming the file, without
//! running anything and without panicking.

mod common;
use common::*;
use resnet::read_weights;

fn load_err(name: &str, bytes: &[u8]) -> String {
    let path = temp_file(name, bytes);
    let e = read_weights(&path).expect_err("must be refused").to_string();
    assert!(e.contains(name), "the error must name the file: {e}");
    e
}

/// A valid one-tensor state dict `{"w": tensor}` as a zip `.pth`.
fn valid(numel: i64, offset: i64, size: &[i64], stride: &[i64], data_floats: usize) -> Vec<u8> {
    let pickle = Pickle::new()
        .global("collections", "OrderedDict")
        .op(b")")
        .reduce()
        .str("w")
        .tensor("0", numel, offset, size, stride)
        .op(b"s")
        .stop();
    zip_pth(&pickle, &[("0", vec![0u8; data_floats * 4])])
}

#[test]
fn a_well_formed_crafted_file_loads() {
    let path = temp_file("ok.pth", &valid(6, 0, &[2, 3], &[3, 1], 6));
    let sd = read_weights(&path).unwrap();
    assert_eq!(sd.entries[0].0, "w");
    assert_eq!(sd.entries[0].1.shape(), &[2, 3]);
    // A transposed (strided) view is gathered correctly.
    let path = temp_file("t.pth", &valid(6, 0, &[3, 2], &[1, 3], 6));
    assert_eq!(read_weights(&path).unwrap().entries[0].1.shape(), &[3, 2]);
}

#[test]
fn globals_that_would_run_code_are_refused() {
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
        ("builtins", "getattr"),
        ("torch", "load"),
    ] {
        let pickle = Pickle::new().global(module, name).mark().str("echo pwned").tuple().reduce().stop();
        let e = load_err(&format!("evil_{name}.pth"), &zip_pth(&pickle, &[]));
        assert!(e.contains(&format!("{module}.{name}")) && e.contains("refusing"), "{e}");
        // The same in a legacy-format stream.
        let e = load_err(&format!("evil_legacy_{name}.pth"), &pickle);
        assert!(e.contains(&format!("{module}.{name}")), "{e}");
    }
}

#[test]
fn object_construction_opcodes_are_refused() {
    let pickle = Pickle::new().global("collections", "OrderedDict").op(b")").op(b"\x81").stop();
    let e = load_err("newobj.pth", &zip_pth(&pickle, &[]));
    assert!(e.contains("arbitrary class"), "{e}");
}

#[test]
fn broken_archives_and_views_are_errors() {
    let good = std::fs::read(fixture_path("resnet18.pth")).unwrap();
    let e = load_err("truncated.pth", &good[..good.len() / 2]);
    assert!(e.contains("zip"), "{e}");
    let e = load_err("offset.pth", &valid(6, 4, &[2, 3], &[3, 1], 6));
    assert!(e.contains("reads past its storage"), "{e}");
    let e = load_err("huge.pth", &valid(1_000_000_000_000, 0, &[1_000_000, 1_000_000], &[1_000_000, 1], 6));
    assert!(e.contains("claims 1000000000000 elements but holds 6"), "{e}");
    let e = load_err("broadcast.pth", &valid(6, 0, &[1_000_000_000_000], &[0], 6));
    assert!(e.contains("claims 1000000000000 elements from a storage of 6"), "{e}");
    let e = load_err("negative.pth", &valid(6, -1, &[2, 3], &[3, 1], 6));
    assert!(e.contains("non-negative"), "{e}");
    let e = load_err("overflow.pth", &valid(6, 0, &[2, 3], &[i64::MAX, 1], 6));
    assert!(e.contains("overflow") || e.contains("past its storage"), "{e}");
    let e = load_err(
        "missing-storage.pth",
        &zip_pth(
            &Pickle::new()
                .global("collections", "OrderedDict")
                .op(b")")
                .reduce()
                .str("w")
                .tensor("7", 6, 0, &[6], &[1])
                .op(b"s")
                .stop(),
            &[],
        ),
    );
    assert!(e.contains("storage 7 is missing"), "{e}");
    let e = load_err("text.pth", b"this is not a weight file at all");
    assert!(e.contains("neither"), "{e}");
    let e = load_err("empty.safetensors", b"");
    assert!(!e.is_empty());
    let e = load_err("memo.pth", &zip_pth(&Pickle::new().op(b"h\x05").stop(), &[]));
    assert!(e.contains("memo"), "{e}");
    let e = load_err("underflow.pth", &zip_pth(&Pickle::new().op(b"s").stop(), &[]));
    assert!(e.contains("underflow"), "{e}");
    let e = load_err("unterminated.pth", &zip_pth(&Pickle::new().op(b"X\xff\xff\xff\x7f").stop(), &[]));
    assert!(e.contains("truncated"), "{e}");
    let missing = read_weights("/nonexistent/w.pth").unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/w.pth"), "{missing}");
}

#[test]
fn a_self_referencing_memo_does_not_hang() {
    // d = {}; d["x"] = d  (a dict containing itself): no tensors, so it is refused, quickly.
    let pickle = Pickle::new().op(b"}q\x00").str("x").op(b"h\x00s").stop();
    let e = load_err("recursive.pth", &zip_pth(&pickle, &[]));
    assert!(e.contains("no tensors"), "{e}");
}
