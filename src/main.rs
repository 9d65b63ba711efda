//! The `resnet` command: a thin `main` over the `cli-repl` crate.

// Training allocates and frees the same large buffers every step: mimalloc reuses their pages
// where the system allocator returns them to the kernel and faults them in again.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    cli_repl::run(&args)
}
