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

const USAGE: &str = "usage: cargo xtask <task> [options]

tasks:
  bench   run the benchmark cases, optionally beside PyTorch's (cargo xtask bench --help)
  book    build the mdBook in book/ (cargo xtask book --help)";

/// Whether a task's arguments ask for help: `-h` or `--help` anywhere, or `help` first (not as
/// an option's value: `--filter help` filters).
pub(crate) fn wants_help(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "help") || args.iter().any(|a| matches!(a.as_str(), "-h" | "--help"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") if wants_help(&args[1..]) => {
            println!("{}", bench::USAGE);
            Ok(())
        }
        Some("book") if wants_help(&args[1..]) => {
            println!("{}", book::USAGE);
            Ok(())
        }
        Some("bench") => bench::parse_args(&args[1..]).and_then(|opts| bench::run(&opts)),
        Some("book") => book::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?}\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
