//! Image decoding through the data crate (format sniffed from the content: JPEG, PNG, BMP,
//! PNM, TIFF, WebP), with a pixel limit of one megapixel so that legitimately large images
//! are refused from their header instead of being slow to decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

const MAX_PIXELS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = data::RgbImage::decode(data, Path::new("fuzz.img"), MAX_PIXELS) {
        assert_eq!(img.as_raw().len(), img.width() * img.height() * 3);
        assert!((img.width() * img.height()) as u64 <= MAX_PIXELS);
    }
});
