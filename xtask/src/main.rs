//! `cargo xtask`: the project's own build tasks.
//!
//! - `cargo xtask bench [--filter PATTERN] [--json FILE] [--vs-torch] [--quick] [--threads N] [--device cpu|wgpu|cuda]
//!   [--python PATH]` — builds the benchmark cases in release, runs each in its own process
//!   (so peak memory is per case), interleaved with PyTorch's equivalent when asked, and prints
//!   the table (and the JSON) of medians, throughput and ratios.
//! - `cargo xtask book [--out DIR]` — builds the mdBook in `book/` with mdBook used as a library.

mod bench;
mod book;
mod stats;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::parse_args(&args[1..]).and_then(|opts| bench::run(&opts)),
        Some("book") => book::run(&args[1..]),
        _ => Err("usage: cargo xtask bench [--filter PATTERN] [--json FILE] [--vs-torch] [--quick] [--threads N] [--device cpu|wgpu|cuda] \
                  [--python PATH]\n       cargo xtask book [--out DIR]"
            .to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
