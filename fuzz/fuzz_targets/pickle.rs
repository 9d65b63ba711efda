//! The restricted unpickler, reached through a well-formed zip `.pth`: the input is
//! `archive/data.pkl`, beside four small storages (`data/0` .. `data/3`), so mutations explore
//! the pickle machine and the tensor views rather than the zip container.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::path::Path;

fn archive(pickle: &[u8]) -> Option<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).ok()?;
    z.write_all(pickle).ok()?;
    z.start_file("archive/byteorder", opts).ok()?;
    z.write_all(b"little").ok()?;
    for key in 0..4u8 {
        z.start_file(format!("archive/data/{key}"), opts).ok()?;
        let bytes: Vec<u8> = (0..64u32).flat_map(|i| (i as f32 + f32::from(key)).to_le_bytes()).collect();
        z.write_all(&bytes).ok()?;
    }
    z.finish().ok()?;
    Some(buf.into_inner())
}

fuzz_target!(|data: &[u8]| {
    if let Some(bytes) = archive(data) {
        let _ = resnet::weights::read_pth_bytes(&bytes, Path::new("fuzz.pth"));
    }
});
