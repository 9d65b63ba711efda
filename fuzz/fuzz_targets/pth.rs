//! The `.pth` reader on arbitrary bytes: zip archives and legacy pickle streams (the reader
//! picks by content). Any input must give `Ok` or an error: no panic, hang or huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = resnet::weights::read_pth_bytes(data, Path::new("fuzz.pth"));
});
