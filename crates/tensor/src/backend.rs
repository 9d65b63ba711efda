//! Where an op's device is chosen: [`backend_for`], and nowhere else.
//!
//! Every public op validates its arguments (shapes, dtypes, hyper-parameters) once, asks
//! [`backend_for`] for the backend of its operands' device, and makes one call. The backend is
//! a set of traits, one per kernel family, each implemented by [`Host`] (in the file of that
//! family's host kernels) and, with a GPU feature, by `gpu::Gpu` (in the family's file under
//! `gpu/`, beside its `#[cube]` kernels). A kernel a GPU lacks is a compile error, not a
//! run-time surprise: the GPU implementation must say what it does for every method, if only
//! that it refuses.
//!
//! To add an op: declare it in its family's trait here, implement it for [`Host`] and for
//! `gpu::Gpu`, and write the public function (validate, `backend_for`, call). To add a device:
//! implement every family for it and return it from [`backend_for`].

use crate::error::{Result, TensorError};
use crate::kernels::batch_norm::{BatchNormGrads, BatchNormTrain};
use crate::kernels::conv::{ConvEpilogue, ConvGeom, WeightCache};
use crate::kernels::optim::{AdamScalars, SgdScalars};
use crate::kernels::pool::PoolGeom;
use crate::tensor::{BinaryOp, UnaryOp};
use crate::{Device, Pool2dParams, Tensor};

/// Views and copies: reshaping, permuting, slicing, joining and indexing.
pub(crate) trait ViewOps {
    /// The same elements in `shape` (already checked to hold as many).
    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// The dimensions in the order `dims` (a checked permutation).
    fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor>;
    /// Dimensions `d0` and `d1` swapped.
    fn transpose(&self, x: &Tensor, d0: usize, d1: usize) -> Result<Tensor>;
    /// `len` elements of `dim` from `start` (checked to fit).
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor>;
    /// A dimension of size 1 inserted at `dim`.
    fn unsqueeze(&self, x: &Tensor, dim: usize) -> Result<Tensor>;
    /// Dimension `dim` (of size 1) removed.
    fn squeeze(&self, x: &Tensor, dim: usize) -> Result<Tensor>;
    /// A copy broadcast to `shape` (checked).
    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor>;
    /// `parts` (checked to agree except along `dim`) joined into `shape`.
    fn cat(&self, parts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor>;
    /// The slices `indices` (checked against the size of `dim`; `index` holds them too) of `dim`.
    fn index_select(&self, x: &Tensor, dim: usize, index: &Tensor, indices: &[usize]) -> Result<Tensor>;
    /// `torch.gather` along `dim` (the shapes checked; the index values not yet).
    fn gather(&self, x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor>;
}

/// Elementwise arithmetic and the checks and encodings built on it.
pub(crate) trait ElementwiseOps {
    /// `op` with broadcasting to `shape` (the operands' broadcast shape).
    fn binary(&self, a: &Tensor, b: &Tensor, op: BinaryOp, shape: &[usize]) -> Result<Tensor>;
    /// `grad` where `output > 0`, else 0 (same shapes, checked).
    fn relu_backward(&self, grad: &Tensor, output: &Tensor) -> Result<Tensor>;
    /// A named unary op on every element.
    fn unary(&self, x: &Tensor, op: UnaryOp) -> Result<Tensor>;
    /// One-hot rows of `classes` for i64 `targets`, of `shape` (the targets' shape + classes).
    fn one_hot(&self, targets: &Tensor, classes: usize, shape: &[usize]) -> Result<Tensor>;
    /// Whether every element of every f32 tensor is finite.
    fn all_finite(&self, tensors: &[&Tensor]) -> Result<bool>;
}

/// Reductions over dimensions, and softmax.
pub(crate) trait ReduceOps {
    /// Sum over `dims` (sorted, deduplicated, checked).
    fn sum(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor>;
    /// Mean over `dims` (sorted, deduplicated, checked).
    fn mean(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor>;
    /// Variance over `dims` (sorted, deduplicated, checked).
    fn var(&self, x: &Tensor, dims: &[usize], unbiased: bool, keepdim: bool) -> Result<Tensor>;
    /// Maximum along `dim` (checked).
    fn max(&self, x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor>;
    /// Index of the first maximum along `dim` (checked).
    fn argmax(&self, x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor>;
    /// Softmax, or log-softmax, along `dim` (checked).
    fn softmax(&self, x: &Tensor, dim: usize, log: bool) -> Result<Tensor>;
}

/// Matrix products.
pub(crate) trait MatmulOps {
    /// `torch.matmul` for operands of rank >= 2 (validated by the backend, which reads shapes
    /// in its own layout).
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
}

/// Convolution, forward and backward.
pub(crate) trait ConvOps {
    /// The convolution of `g` (shapes checked), then its epilogue (`* scale + bias`,
    /// `+ residual`, ReLU). A prepared convolution passes what it keeps derived from its
    /// weights.
    fn conv2d(
        &self,
        g: &ConvGeom,
        input: &Tensor,
        weight: &Tensor,
        epilogue: ConvEpilogue<'_>,
        cache: Option<&WeightCache>,
    ) -> Result<Tensor>;
    /// The input's gradient.
    fn conv2d_backward_input(&self, g: &ConvGeom, grad_output: &Tensor, weight: &Tensor) -> Result<Tensor>;
    /// The weight's gradient.
    fn conv2d_backward_weight(&self, g: &ConvGeom, input: &Tensor, grad_output: &Tensor) -> Result<Tensor>;
    /// The bias's gradient: `grad_output` `[n, c, h, w]` summed over all but `c`.
    fn conv2d_backward_bias(&self, grad_output: &Tensor) -> Result<Tensor>;
}

/// Batch normalisation; `layout` is the input's checked `(batch, channels, values per plane)`.
pub(crate) trait NormOps {
    /// Evaluation mode as the per-channel `(scale, shift)` of `x * scale + shift` over `c`
    /// channels (the statistics' shapes not yet checked).
    fn batch_norm_eval_scale_shift(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        c: usize,
    ) -> Result<(Tensor, Tensor)>;
    /// Training mode: batch statistics (over `count` values per channel), updated running ones.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train(
        &self,
        input: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running: Option<(&Tensor, &Tensor)>,
        momentum: f64,
        eps: f64,
        layout: (usize, usize, usize),
    ) -> Result<BatchNormTrain>;
    /// Eval mode: the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        input: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        layout: (usize, usize, usize),
    ) -> Result<Tensor>;
    /// Training mode's gradients, from the saved batch `mean` and `invstd`.
    fn batch_norm_train_backward(
        &self,
        grad_output: &Tensor,
        input: &Tensor,
        weight: Option<&Tensor>,
        mean: &Tensor,
        invstd: &Tensor,
        layout: (usize, usize, usize),
    ) -> Result<BatchNormGrads>;
    /// Eval mode's gradients.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval_backward(
        &self,
        grad_output: &Tensor,
        input: &Tensor,
        weight: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        layout: (usize, usize, usize),
    ) -> Result<BatchNormGrads>;
}

/// Pooling, forward and backward; `g` is the checked geometry.
pub(crate) trait PoolOps {
    /// Max pooling's values and flat indices.
    fn max_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<(Tensor, Tensor)>;
    /// Max pooling's values alone.
    fn max_pool2d_values(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<Tensor>;
    /// Max pooling's input gradient (indices checked to be i64 of the gradient's shape).
    fn max_pool2d_backward(&self, grad_output: &Tensor, indices: &Tensor, input_shape: &[usize]) -> Result<Tensor>;
    /// Average pooling.
    fn avg_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom, count_include_pad: bool) -> Result<Tensor>;
    /// Average pooling's input gradient.
    fn avg_pool2d_backward(
        &self,
        grad_output: &Tensor,
        p: &Pool2dParams,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<Tensor>;
    /// Adaptive average pooling of `g` (its kernel and stride unused).
    fn adaptive_avg_pool2d(&self, input: &Tensor, g: &PoolGeom) -> Result<Tensor>;
    /// Adaptive average pooling's input gradient.
    fn adaptive_avg_pool2d_backward(&self, grad_output: &Tensor, g: &PoolGeom) -> Result<Tensor>;
}

/// The optimizers' fused per-parameter steps (shapes and dtypes checked).
pub(crate) trait OptimOps {
    /// SGD: the new parameter and momentum buffer.
    fn sgd_step(
        &self,
        param: &Tensor,
        grad: &Tensor,
        buf: Option<Tensor>,
        s: &SgdScalars,
    ) -> Result<(Tensor, Option<Tensor>)>;
    /// Adam / AdamW: the new parameter and moments.
    fn adam_step(
        &self,
        param: &Tensor,
        grad: &Tensor,
        moments: (Option<Tensor>, Option<Tensor>),
        s: &AdamScalars,
    ) -> Result<(Tensor, Tensor, Tensor)>;
}

/// Every kernel family: what a device must implement.
pub(crate) trait Backend:
    ViewOps + ElementwiseOps + ReduceOps + MatmulOps + ConvOps + NormOps + PoolOps + OptimOps + Sync
{
}

impl<B: ViewOps + ElementwiseOps + ReduceOps + MatmulOps + ConvOps + NormOps + PoolOps + OptimOps + Sync> Backend
    for B
{
}

/// The CPU: ndarray storage and the kernels of `kernels/`.
pub(crate) struct Host;

/// The backend that runs `op` on `operands` (absent optional operands skipped): the host when
/// all are on it, the GPU when all are on the same GPU, an error naming the devices otherwise.
pub(crate) fn backend_for(op: &'static str, operands: &[Option<&Tensor>]) -> Result<&'static dyn Backend> {
    // Called by every op: no allocation unless the devices differ.
    let mut devices = operands.iter().flatten().map(|t| t.device());
    let first = devices.next().unwrap_or(Device::Cpu);
    if devices.any(|d| d != first) {
        let names: Vec<String> = operands.iter().flatten().map(|t| t.device().to_string()).collect();
        return Err(TensorError::DeviceMismatch { op, devices: names.join(", ") });
    }
    match first {
        Device::Cpu => Ok(&Host),
        #[cfg(gpu)]
        _ => Ok(&crate::gpu::Gpu),
        #[cfg(not(gpu))]
        gpu => Err(TensorError::Unsupported { op, device: gpu.to_string() }),
    }
}

/// [`backend_for`] one operand.
pub(crate) fn backend_of(op: &'static str, x: &Tensor) -> Result<&'static dyn Backend> {
    backend_for(op, &[Some(x)])
}
