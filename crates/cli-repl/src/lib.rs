//! # cli-repl
//!
//! The `resnet` command (train, predict, infer, summary, convert) and its interactive REPL.
//!
//! **Status:** only the entry point exists; the commands arrive with the `cli-repl` issue.
//! The binary in the root package is a thin `main` over [`run`].
#![deny(missing_docs)]

use std::process::ExitCode;

/// The commands the tool will offer, in the order of the help text.
pub const COMMANDS: &[&str] = &["train", "predict", "infer", "summary", "convert", "repl"];

/// Runs the command line `args` (without the program name) and returns the process exit code.
pub fn run(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            println!(
                "resnet {}\n\nUsage: resnet <COMMAND>\n\nCommands: {}",
                env!("CARGO_PKG_VERSION"),
                COMMANDS.join(", ")
            );
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("resnet {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(cmd) if COMMANDS.contains(&cmd) => {
            eprintln!("error: `resnet {cmd}` is not implemented in this build yet");
            ExitCode::from(2)
        }
        Some(other) => {
            eprintln!("error: unknown command `{other}`; the commands are: {}", COMMANDS.join(", "));
            ExitCode::from(2)
        }
    }
}
