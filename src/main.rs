//! The `resnet` command: a thin `main` over the `cli-repl` crate.

// Training allocates and frees the same large buffers every step: mimalloc reuses their pages
// where the system allocator returns them to the kernel and faults them in again.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same position in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the kernel: a training step frees and reallocates the same
/// gigabyte of activations each time, and mimalloc's default (purge after 10 ms) made the
/// kernel zero those pages again every step (a quarter of `train-resnet50-b8`'s time).
fn keep_freed_pages() {
    // SAFETY: setting an option is allowed at any time; it affects only later purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`resnet predict dir | head`) fails,
/// and `println!` panics on the failure. The default disposition ends the process quietly
/// instead, as `cat` or `grep` end; every file the tool writes is written atomically, so an
/// interrupted run leaves no half-written file.
#[cfg(unix)]
fn end_quietly_on_closed_pipes() {
    // SAFETY: called first in main, before any thread exists; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn main() -> std::process::ExitCode {
    #[cfg(unix)]
    end_quietly_on_closed_pipes();
    keep_freed_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    cli_repl::run(&args)
}
