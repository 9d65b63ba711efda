//! Weight files by content (`read_weights_bytes`), seeded with safetensors files: the
//! safetensors header and data checks, and the conversion of every dtype to tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = resnet::read_weights_bytes(data, Path::new("fuzz.safetensors"));
});
