//! The compute kernels behind the tensor ops. Each file holds one family, forward and backward
//! side by side; every kernel validates shapes and returns `Err` before touching data.

pub mod batch_norm;
pub mod conv;
mod direct;
pub(crate) mod matmul;
pub mod optim;
pub mod pool;
mod scratch;
mod small_gemm;
pub(crate) mod winograd;
