//! The compute kernels behind the tensor ops. Each file holds one family, forward and backward
//! side by side; every kernel validates shapes and returns `Err` before touching data.

pub mod batch_norm;
pub mod conv;
mod dense;
mod direct;
mod few_inputs;
pub(crate) mod matmul;
pub mod optim;
mod packed;
pub mod pool;
mod scratch;
pub(crate) mod small_gemm;
pub(crate) mod winograd;

/// ReLU of one value, as `torch.relu`: NaN stays NaN (`f32::max` would make it 0).
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// A vector of `len` values that `init` writes, without zero-filling it first: for a large
/// output that zeroing is a whole extra pass over memory (several percent of a training step,
/// counting the batch norms' outputs and Winograd's transformed kernels).
///
/// # Safety
/// `init` must write every element of the slice it is given.
pub(crate) unsafe fn written_by<T>(len: usize, init: impl FnOnce(&mut [std::mem::MaybeUninit<T>])) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    init(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's contract: `init` initialised all `len` elements.
    unsafe { v.set_len(len) };
    v
}
