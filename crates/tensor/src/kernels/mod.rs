//! The compute kernels behind the tensor ops. Each file holds one family, forward and backward
//! side by side; every kernel validates shapes and returns `Err` before touching data.

pub mod batch_norm;
pub mod conv;
mod direct;
pub(crate) mod matmul;
pub mod optim;
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
