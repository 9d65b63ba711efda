//! ImageFolder against torchvision's listing of a fixture tree, class_indices.json, splits, and
//! every bad input the listing and the decoder can meet.

use data::{split_indices, write_split, DataError, Dataset, ImageFolder, RgbImage, Subset};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn touch(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn png(w: usize, h: usize, seed: u8) -> Vec<u8> {
    let data = (0..w * h * 3).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    RgbImage::from_raw(w, h, data).unwrap().to_png().unwrap()
}

#[test]
fn listing_matches_torchvision() {
    // folder.json was written by torchvision's ImageFolder over the same tree (zero-byte files:
    // listing never decodes). It covers case-insensitive extensions, non-image files, hidden
    // files and folders, nested folders ordered by path ("sub" < "sub-2" < "sub/deeper"),
    // spaces and non-ASCII class names, and sorting by code point ("B" < "Z_upper" < "a").
    let root = fixtures().join("folder");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("folder.json")).unwrap()).unwrap();
    let folder = ImageFolder::new(&root).unwrap();
    let classes: Vec<&str> = expected["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(folder.classes(), classes);
    for (name, idx) in expected["class_to_idx"].as_object().unwrap() {
        assert_eq!(folder.class_to_idx()[name], idx.as_u64().unwrap() as usize);
    }
    let samples: Vec<(String, usize)> = folder
        .samples()
        .iter()
        .map(|(p, i)| (p.strip_prefix(&root).unwrap().to_str().unwrap().to_string(), *i))
        .collect();
    let want: Vec<(String, usize)> = expected["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_u64().unwrap() as usize))
        .collect();
    assert_eq!(samples, want);
    assert_eq!(folder.len(), want.len());
    assert_eq!(folder.targets(), want.iter().map(|s| s.1).collect::<Vec<_>>());
}

#[test]
fn folder_errors_name_the_folder_or_classes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = ImageFolder::new(&missing).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }) && e.to_string().contains("nope"), "{e}");

    // Files but no class folder.
    touch(&dir.path().join("flat/a.jpg"), b"");
    let e = ImageFolder::new(dir.path().join("flat")).unwrap_err();
    assert!(matches!(e, DataError::NoClassFolders { .. }) && e.to_string().contains("flat"), "{e}");

    // A class folder with only non-images (or nothing) is refused, naming it.
    touch(&dir.path().join("mixed/cats/a.png"), b"");
    touch(&dir.path().join("mixed/dogs/notes.txt"), b"");
    std::fs::create_dir_all(dir.path().join("mixed/.ipynb_checkpoints")).unwrap();
    let e = ImageFolder::new(dir.path().join("mixed")).unwrap_err();
    match &e {
        DataError::EmptyClasses { classes, .. } => assert_eq!(classes, &[".ipynb_checkpoints", "dogs"]),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("dogs") && e.to_string().contains(".jpg"), "{e}");
}

#[test]
fn samples_decode_to_rgb_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    touch(&root.join("a/good.png"), &png(5, 4, 0));
    touch(&root.join("a/empty.jpg"), b"");
    touch(&root.join("a/text.jpg"), b"this is not an image at all");
    let mut truncated = png(40, 30, 1);
    truncated.truncate(truncated.len() / 2);
    touch(&root.join("b/truncated.png"), &truncated);
    // A JPEG with a PNG's content: the format is sniffed from the bytes, as PIL does.
    touch(&root.join("b/really_png.jpg"), &png(3, 2, 2));
    let folder = ImageFolder::new(root).unwrap();
    let by_name = |n: &str| folder.samples().iter().position(|(p, _)| p.ends_with(n)).unwrap();

    let ok = folder.get(by_name("good.png")).unwrap();
    assert_eq!((ok.image.width(), ok.image.height(), ok.label), (5, 4, 0));
    assert_eq!(folder.get(by_name("really_png.jpg")).unwrap().image.width(), 3);
    for bad in ["empty.jpg", "text.jpg", "truncated.png"] {
        let e = folder.get(by_name(bad)).unwrap_err();
        assert!(e.is_bad_image(), "{e}");
        assert!(e.to_string().contains(bad), "error must name the file: {e}");
    }
    let e = folder.get(99).unwrap_err();
    assert!(e.to_string().contains("99"), "{e}");
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose (valid, checksummed) header announces `w` x `h` RGB pixels, followed by a
/// scrap of compressed data (a real bomb would hold a megabyte of compressed zeros).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], body: &[u8]| {
        let mut c = kind.to_vec();
        c.extend_from_slice(body);
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(&c);
        v.extend_from_slice(&crc32(&c).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0x60, 0x00, 0x00]);
    chunk(b"IEND", &[]);
    v
}

/// A BMP header announcing `w` x `h` 24-bit pixels, with no pixel data.
fn bmp_header(w: i32, h: i32) -> Vec<u8> {
    let mut v = b"BM".to_vec();
    v.extend_from_slice(&(54u32 + 3 * (w as u32).wrapping_mul(h as u32)).to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&54u32.to_le_bytes());
    v.extend_from_slice(&40u32.to_le_bytes());
    v.extend_from_slice(&w.to_le_bytes());
    v.extend_from_slice(&h.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&24u16.to_le_bytes());
    v.extend_from_slice(&[0; 24]);
    v
}

#[test]
fn huge_headers_are_refused_before_decoding() {
    let p = Path::new("bomb.png");
    let e = RgbImage::decode(&png_header(20_000, 20_000), p, data::DEFAULT_MAX_PIXELS).unwrap_err();
    match &e {
        DataError::ImageTooLarge { width, height, .. } => assert_eq!((*width, *height), (20_000, 20_000)),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("bomb.png") && e.to_string().contains("20000x20000"), "{e}");
    let e = RgbImage::decode(&bmp_header(30_000, 30_000), Path::new("bomb.bmp"), data::DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(e, DataError::ImageTooLarge { .. }), "{e}");
    // The limit is configurable, and applies through ImageFolder.
    let dir = tempfile::tempdir().unwrap();
    touch(&dir.path().join("c/big.png"), &png(64, 64, 3));
    let folder = ImageFolder::new(dir.path()).unwrap().with_max_pixels(1000);
    assert!(matches!(folder.get(0).unwrap_err(), DataError::ImageTooLarge { .. }));
    // A header under the limit but without pixel data is an ordinary decode error.
    let e = RgbImage::decode(&png_header(10, 10), p, data::DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(e, DataError::Decode { .. }), "{e}");
}

#[test]
fn decoding_converts_like_pil() {
    // Grayscale replicated, alpha dropped (not composited): PIL's convert("RGB").
    let dir = tempfile::tempdir().unwrap();
    let gray = dir.path().join("g.png");
    let luma = image::GrayImage::from_raw(2, 1, vec![7, 250]).unwrap();
    luma.save(&gray).unwrap();
    assert_eq!(RgbImage::open(&gray, 100).unwrap().as_raw(), &[7, 7, 7, 250, 250, 250]);
    let rgba = dir.path().join("a.png");
    image::RgbaImage::from_raw(2, 1, vec![10, 20, 30, 0, 40, 50, 60, 128]).unwrap().save(&rgba).unwrap();
    assert_eq!(RgbImage::open(&rgba, 100).unwrap().as_raw(), &[10, 20, 30, 40, 50, 60]);
}

#[test]
fn class_indices_round_trip_in_the_tutorials_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("class_indices.json");
    let classes: Vec<String> = ["daisy", "dandelion", "roses", "sunflowers", "tulips", "x", "y", "z", "w", "v", "u"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    data::write_class_indices(&path, &classes).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    // What `json.dumps(dict((i, c) for i, c in enumerate(classes)), indent=4)` writes.
    assert!(text.starts_with("{\n    \"0\": \"daisy\",\n    \"1\": \"dandelion\",\n"), "{text}");
    assert!(text.ends_with("    \"10\": \"u\"\n}"), "{text}");
    assert_eq!(data::read_class_indices(&path).unwrap(), classes);
    // Python escapes non-ASCII; both forms read back.
    assert_eq!(data::class_indices::class_indices_json(&["é\"".into()]), "{\n    \"0\": \"\\u00e9\\\"\"\n}");
    let p = Path::new("ci.json");
    let parse = |t: &str| data::class_indices::parse_class_indices(t, p);
    assert_eq!(parse("{\"1\": \"b\", \"0\": \"\u{e9}\"}").unwrap(), ["é", "b"]);
    assert_eq!(parse("{}").unwrap(), Vec::<String>::new());
    for (bad, needle) in [
        ("not json", "not valid JSON"),
        ("[\"a\", \"b\"]", "expected an object"),
        ("{\"0\": \"a\", \"x\": \"b\"}", "\"x\""),
        ("{\"0\": \"a\", \"2\": \"b\"}", "\"2\""),
        ("{\"00\": \"a\"}", "\"00\""),
        ("{\"0\": 3}", "\"0\""),
    ] {
        let e = parse(bad).unwrap_err();
        assert!(e.to_string().contains("ci.json") && e.to_string().contains(needle), "{bad}: {e}");
    }
    let e = data::read_class_indices(dir.path().join("missing.json")).unwrap_err();
    assert!(e.to_string().contains("missing.json"), "{e}");
}

#[test]
fn splits_are_stratified_reproducible_and_complete() {
    let targets: Vec<usize> = (0..103).map(|i| [0, 0, 1, 2, 2, 2, 1][i % 7]).collect();
    let s = split_indices(&targets, 0.2, 7).unwrap();
    assert_eq!(s, split_indices(&targets, 0.2, 7).unwrap());
    assert_ne!(s, split_indices(&targets, 0.2, 8).unwrap());
    let mut all: Vec<usize> = s.train.iter().chain(&s.val).copied().collect();
    all.sort();
    assert_eq!(all, (0..103).collect::<Vec<_>>());
    for c in 0..3 {
        let n = targets.iter().filter(|t| **t == c).count();
        let v = s.val.iter().filter(|&&i| targets[i] == c).count();
        assert_eq!(v, (n as f64 * 0.2) as usize, "class {c}");
    }
    assert!(split_indices(&targets, 1.0, 0).is_err());
    assert!(split_indices(&targets, -0.1, 0).is_err());
    assert_eq!(split_indices(&targets, 0.0, 0).unwrap().val, Vec::<usize>::new());
}

#[test]
fn write_split_copies_into_two_image_folders() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("photos");
    for c in ["cat", "dog"] {
        for i in 0..5 {
            touch(&src.join(c).join(format!("{i}.png")), &png(2, 2, i));
        }
    }
    touch(&src.join("dog/nested/x.png"), &png(2, 2, 9));
    let folder = ImageFolder::new(&src).unwrap();
    let split = split_indices(&folder.targets(), 0.4, 1).unwrap();
    let out = dir.path().join("split");
    let (train, val) = write_split(&folder, &split, &out).unwrap();
    let (t, v) = (ImageFolder::new(&train).unwrap(), ImageFolder::new(&val).unwrap());
    assert_eq!(t.classes(), folder.classes());
    assert_eq!(v.classes(), folder.classes());
    assert_eq!((t.len(), v.len()), (split.train.len(), split.val.len()));
    assert_eq!(v.len(), 2 + 2);
    // Files keep their bytes and relative path.
    for &i in &split.train {
        let (p, c) = &folder.samples()[i];
        let rel = p.strip_prefix(src.join(&folder.classes()[*c])).unwrap();
        assert_eq!(std::fs::read(train.join(&folder.classes()[*c]).join(rel)).unwrap(), std::fs::read(p).unwrap());
    }
    // Never writes into a non-empty target.
    let e = write_split(&folder, &split, &out).unwrap_err();
    assert!(e.to_string().contains("train"), "{e}");
    // The in-memory alternative.
    let sub = Subset::new(folder.clone(), split.val.clone()).unwrap();
    assert_eq!(sub.len(), split.val.len());
    assert_eq!(sub.get(0).unwrap().path, folder.samples()[split.val[0]].0);
    assert!(Subset::new(folder, vec![999]).is_err());
}
