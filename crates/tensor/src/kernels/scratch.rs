//! Scratch buffers that outlive one kernel call: each thread keeps the few buffers its last
//! calls used (im2col columns, Winograd's transformed tiles, GEMM blocks) and hands them to the
//! next call, so those megabytes are neither allocated nor zero-filled again per call.
//!
//! A buffer's contents are whatever the last user left: every user writes what it reads.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers one thread keeps between calls (a kernel uses at most two at a time).
const KEPT_PER_THREAD: usize = 4;

thread_local! {
    static KEPT: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer borrowed from this thread's keep; returned to the keep of whichever thread drops it.
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    pub(crate) fn take() -> Scratch {
        Scratch(KEPT.with(|k| k.borrow_mut().pop()).unwrap_or_default())
    }

    /// Makes the buffer at least `len` long (zero-filling only what is new); its first `len`
    /// floats are stale values from an earlier use.
    pub(crate) fn at_least(&mut self, len: usize) {
        if self.0.len() < len {
            self.0.resize(len, 0.0);
        }
    }
}

impl Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() == 0 {
            return;
        }
        // `try_with`: a buffer dropped while its thread's locals are being torn down is freed.
        let _ = KEPT.try_with(|k| {
            let mut kept = k.borrow_mut();
            if kept.len() < KEPT_PER_THREAD {
                kept.push(buf);
            }
        });
    }
}
