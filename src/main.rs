//! The `resnet` command: a thin `main` over the `cli-repl` crate.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    cli_repl::run(&args)
}
