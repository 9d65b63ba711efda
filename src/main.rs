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

fn main() -> std::process::ExitCode {
    keep_freed_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    cli_repl::run(&args)
}
