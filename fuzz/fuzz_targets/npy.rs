//! The `.npy` reader on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = tensor::read_npy_bytes(data, Path::new("fuzz.npy"));
});
