//! # tensor
//!
//! Host tensors over `ndarray` and the CPU kernels a ResNet needs, forward and backward.
//!
//! **What it is for.** [`Tensor`] is an n-dimensional array of `f32` (or `i64` for labels and
//! indices) on a [`Device`]: creation, cheap views, numpy broadcasting, reductions, softmax and
//! matmul. The free functions are the neural-network kernels as plain tensor functions —
//! [`conv2d`] and its two backwards, pooling, batch norm — plus the fused conv + batch-norm +
//! ReLU path of inference ([`fold_batch_norm`], [`conv2d_fused`]), and `.npy` interop.
//!
//! With the `wgpu` or `cuda` feature, a tensor can also live on a GPU ([`Device::Wgpu`],
//! [`Device::Cuda`]): every op above then runs as a cubecl kernel on the device, and only
//! explicit transfers (`to_device`, `to_vec_f32`, `item`) come back to the host.
//!
//! **What it is not.** There is no autograd here: the `nn` crate records operations and calls
//! the backward kernels of this crate. Its only I/O is tensor files: `.npy`, safetensors
//! (named tensors with string metadata: weights, optimizer state, checkpoints) and the atomic
//! writer they share.
//!
//! **Key design choice.** Speed comes from a few big kernels, not from many small ones:
//! convolution is im2col + the `gemm` crate's packed, runtime-dispatched SIMD GEMM, with
//! cache-sized tiles, one im2col buffer shared by all groups, a copy-free path for 1x1 convs,
//! and rayon across (image, tile) work items. Every fast path is tested against the direct-loop
//! oracle in [`reference`](mod@reference) and against PyTorch fixtures.
//!
//! ```
//! use tensor::{conv2d, Conv2dParams, Rng, Tensor};
//! let mut rng = Rng::seed(0);
//! let x = Tensor::randn(&[1, 3, 8, 8], &mut rng);
//! let w = Tensor::randn(&[4, 3, 3, 3], &mut rng);
//! let y = conv2d(&x, &w, None, Conv2dParams::new().padding(1))?;
//! assert_eq!(y.shape(), &[1, 4, 8, 8]);
//! # Ok::<(), tensor::TensorError>(())
//! ```
#![deny(missing_docs)]

mod backend;
mod device;
mod dtype;
mod error;
#[cfg(gpu)]
mod gpu;
mod kernels;
mod npy;
pub mod reference;
mod rng;
mod shape;
pub mod simd;
mod tensor;
mod tensor_file;
mod workers;

pub use device::Device;
pub use dtype::DType;
pub use error::{Result, TensorError};
pub use kernels::batch_norm::{
    batch_norm_eval, batch_norm_eval_backward, batch_norm_eval_scale_shift, batch_norm_train,
    batch_norm_train_backward, batch_norm_train_finish, batch_norm_train_finish_backward, fold_batch_norm,
    BatchNormGrads, BatchNormTrain,
};
pub use kernels::conv::{
    conv2d, conv2d_affine, conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight, conv2d_fused,
    conv2d_macs, conv2d_output_shape, Conv2dParams, PreparedConv,
};
pub use kernels::optim::{adam_step, sgd_step, AdamStep, SgdStep};
pub use kernels::pool::{
    adaptive_avg_pool2d, adaptive_avg_pool2d_backward, avg_pool2d, avg_pool2d_backward, max_pool2d,
    max_pool2d_backward, max_pool2d_values, pool2d_output_shape, Pool2dParams,
};
pub use npy::{npy_bytes, read_npy, read_npy_bytes, write_atomic, write_npy};
pub use rng::{fans, FanMode, Nonlinearity, Rng};
pub use shape::broadcast_shapes;
pub use tensor::{BinaryOp, Tensor};
pub use tensor_file::{
    is_safetensors, read_safetensors, read_safetensors_bytes, safetensors_bytes, write_safetensors, StoredDType,
    TensorFile,
};
pub use workers::with_workers_awake;
