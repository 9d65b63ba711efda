//! The GPU backend: every kernel family of [`crate::backend`] on a cubecl runtime. The
//! launchers and kernels live in `gpu/mod.rs` and `gpu/kernels.rs`; this file is the glue from
//! tensors to launches, and the compositions (mean, variance, softmax, batch norm's per-channel
//! arithmetic) that reuse other ops on the device.

use super::{self as gpu, PoolSizes};
use crate::backend::{ConvOps, ElementwiseOps, MatmulOps, NormOps, OptimOps, PoolOps, ReduceOps, ViewOps};
use crate::error::{bad_shape, mismatch, Result, TensorError};
use crate::kernels::batch_norm::{BatchNormGrads, BatchNormTrain};
use crate::kernels::conv::ConvGeom;
use crate::kernels::optim::{AdamScalars, SgdScalars};
use crate::kernels::pool::PoolGeom;
use crate::op_codes as k;
use crate::op_codes::U_RSQRT_EPS;
use crate::shape::broadcast_shapes;
use crate::tensor::{BinaryOp, UnaryOp};
use crate::{DType, Pool2dParams, Tensor};
use std::sync::OnceLock;

/// Tensors on a cubecl device (wgpu or CUDA).
pub(crate) struct Gpu;

/// Sums (or takes the maximum, `code` = `R_MAX`) over `dims` on a GPU, one axis at a time.
fn reduce(x: &Tensor, op: &'static str, dims: &[usize], keepdim: bool, code: u32) -> Result<Tensor> {
    let g = x.gpu_of(op)?;
    if g.dtype != DType::F32 {
        return Err(TensorError::DType { op, expected: DType::F32, got: g.dtype });
    }
    let mut cur = g.clone();
    let mut shape = g.shape.clone();
    for &d in dims.iter().rev() {
        let (outer, red, inner) = (shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product());
        shape[d] = 1;
        cur = match red {
            0 if code == k::R_SUM => gpu::zeros(&shape, g.device)?,
            0 => return Err(bad_shape(op, x.shape(), format!("cannot reduce the empty dimension {d}"))),
            1 => cur.reshaped(&shape),
            _ => gpu::reduce(&cur, outer, red, inner, code, &shape)?,
        };
    }
    if !keepdim {
        let kept: Vec<usize> = shape.iter().enumerate().filter(|(d, _)| !dims.contains(d)).map(|(_, &s)| s).collect();
        cur = cur.reshaped(&kept);
    }
    Ok(Tensor::from_gpu(cur))
}

/// A pooling's sizes for the kernels.
fn pool_sizes(g: &PoolGeom, p: &Pool2dParams, count_include_pad: bool) -> PoolSizes {
    PoolSizes {
        h: g.h,
        w: g.w,
        oh: g.oh,
        ow: g.ow,
        kernel: p.kernel,
        stride: p.stride,
        padding: p.padding,
        count_include_pad,
    }
}

/// Adaptive pooling's sizes for the kernels (which read only h, w, oh, ow).
fn adaptive_sizes(h: usize, w: usize, oh: usize, ow: usize) -> PoolSizes {
    PoolSizes { h, w, oh, ow, kernel: [1, 1], stride: [1, 1], padding: [0, 0], count_include_pad: true }
}

impl ViewOps for Gpu {
    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_gpu(x.gpu_of("reshape")?.reshaped(shape)))
    }
    fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        let g = x.gpu_of("permute")?;
        let strides = gpu::contiguous_strides(&g.shape);
        let shape: Vec<usize> = dims.iter().map(|&d| g.shape[d]).collect();
        let strides: Vec<usize> = dims.iter().map(|&d| strides[d]).collect();
        Ok(Tensor::from_gpu(gpu::strided_copy(g, &shape, &strides, 0)?))
    }
    fn transpose(&self, x: &Tensor, d0: usize, d1: usize) -> Result<Tensor> {
        let mut dims: Vec<usize> = (0..x.rank()).collect();
        dims.swap(d0, d1);
        x.permute(&dims)
    }
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let g = x.gpu_of("narrow")?;
        let strides = gpu::contiguous_strides(&g.shape);
        let mut shape = g.shape.clone();
        shape[dim] = len;
        Ok(Tensor::from_gpu(gpu::strided_copy(g, &shape, &strides, start * strides[dim])?))
    }
    fn unsqueeze(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let mut shape = x.shape().to_vec();
        shape.insert(dim, 1);
        x.reshape(&shape)
    }
    fn squeeze(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let mut shape = x.shape().to_vec();
        shape.remove(dim);
        x.reshape(&shape)
    }
    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        let g = x.gpu_of("broadcast_to")?;
        let own = gpu::contiguous_strides(&g.shape);
        let lead = shape.len() - g.shape.len();
        let strides: Vec<usize> =
            (0..shape.len()).map(|d| if d < lead || g.shape[d - lead] == 1 { 0 } else { own[d - lead] }).collect();
        Ok(Tensor::from_gpu(gpu::strided_copy(g, shape, &strides, 0)?))
    }
    fn cat(&self, tensors: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        let parts = tensors.iter().map(|t| t.gpu_of("cat")).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::from_gpu(gpu::cat(&parts, dim, shape)?))
    }
    fn index_select(&self, x: &Tensor, dim: usize, index: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let (xg, ix) = (x.gpu_of("index_select")?, index.gpu_of("index_select")?);
        let mut shape = x.shape().to_vec();
        shape[dim] = idx.len();
        let inner = x.shape()[dim + 1..].iter().product();
        let out = gpu::gather(xg, ix, (x.shape()[dim], idx.len(), inner), &shape, true)?;
        Ok(Tensor::from_gpu(out))
    }
    fn gather(&self, x: &Tensor, dim: usize, index: &Tensor) -> Result<Tensor> {
        let ishape = index.shape();
        let (xg, idx) = (x.gpu_of("gather")?, index.gpu_of("gather")?);
        let same_elsewhere = ishape.iter().zip(x.shape()).enumerate().all(|(d, (i, s))| d == dim || i == s);
        if idx.dtype != DType::I64 || !same_elsewhere {
            return Err(TensorError::Unsupported {
                op: "gather with an index smaller than the input",
                device: xg.device.to_string(),
            });
        }
        // The indices are checked on the host (a copy down of the index, and a wait): a GPU
        // kernel cannot report one out of range.
        let size = x.shape()[dim];
        if let Some(&bad) = index.to_vec_i64()?.iter().find(|&&i| i < 0 || i as u64 >= size as u64) {
            return Err(TensorError::IndexOutOfRange { op: "gather", index: bad, size });
        }
        let inner: usize = x.shape()[dim + 1..].iter().product();
        let out = gpu::gather(xg, idx, (size, ishape[dim], inner), ishape, false)?;
        Ok(Tensor::from_gpu(out))
    }
}

impl ElementwiseOps for Gpu {
    fn binary(&self, x: &Tensor, rhs: &Tensor, op: BinaryOp, shape: &[usize]) -> Result<Tensor> {
        let name = op.name();
        let (a, b) = (x.gpu_of(name)?, rhs.gpu_of(name)?);
        if a.dtype != DType::F32 || b.dtype != DType::F32 {
            return Err(TensorError::Unsupported { op: name, device: format!("{} (i64 arithmetic)", a.device) });
        }
        let code = match op {
            BinaryOp::Add => k::B_ADD,
            BinaryOp::Sub => k::B_SUB,
            BinaryOp::Mul => k::B_MUL,
            BinaryOp::Div => k::B_DIV,
            BinaryOp::Maximum => k::B_MAX,
            BinaryOp::Minimum => k::B_MIN,
        };
        Ok(Tensor::from_gpu(gpu::binary(a, b, shape, code)?))
    }
    fn relu_backward(&self, x: &Tensor, output: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_backward";
        let g = gpu::binary(x.gpu_f32(OP)?, output.gpu_f32(OP)?, x.shape(), k::B_RELU_MASK)?;
        Ok(Tensor::from_gpu(g))
    }
    fn unary(&self, x: &Tensor, op: UnaryOp) -> Result<Tensor> {
        let g = x.gpu_f32(op.name())?;
        let (code, a, b) = match op {
            UnaryOp::Neg => (k::U_NEG, 0.0, 0.0),
            UnaryOp::Exp => (k::U_EXP, 0.0, 0.0),
            UnaryOp::Log => (k::U_LOG, 0.0, 0.0),
            UnaryOp::Sqrt => (k::U_SQRT, 0.0, 0.0),
            UnaryOp::Powf(p) => (k::U_POWF, p, 0.0),
            UnaryOp::Relu => (k::U_RELU, 0.0, 0.0),
            UnaryOp::Abs => (k::U_ABS, 0.0, 0.0),
            UnaryOp::Clamp(min, max) => (k::U_CLAMP, min, max),
            UnaryOp::AddScalar(s) => (k::U_ADD_SCALAR, s, 0.0),
            UnaryOp::MulScalar(s) => (k::U_MUL_SCALAR, s, 0.0),
        };
        Ok(Tensor::from_gpu(gpu::unary(g, code, a, b)?))
    }
    fn one_hot(&self, targets: &Tensor, classes: usize, shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "one_hot";
        let g = targets.gpu_of(OP)?;
        // Equality of the class index with 0..classes, broadcast; the indices are exact in
        // f32 below 2^24. Out-of-range targets give all-zero rows (the host refuses them).
        let t = Tensor::from_gpu(gpu::cast(g, DType::F32)).unsqueeze(targets.rank())?;
        let range = Tensor::arange(0.0, classes as f32, 1.0)?.to_device(g.device)?;
        let out = gpu::binary(t.gpu_f32(OP)?, range.gpu_f32(OP)?, shape, k::B_EQ)?;
        Ok(Tensor::from_gpu(out))
    }
    fn all_finite(&self, tensors: &[&Tensor]) -> Result<bool> {
        // One reduction per tensor, summed on the device, one value read back: `0 * v` is 0
        // for a finite v and NaN for an infinity or NaN.
        let mut total: Option<Tensor> = None;
        for t in tensors {
            let dims: Vec<usize> = (0..t.rank()).collect();
            let s = t.mul_scalar(0.0)?.sum(&dims, false)?;
            total = Some(match total {
                Some(acc) => acc.add(&s)?,
                None => s,
            });
        }
        Ok(total.map_or(Ok(0.0), |t| t.item())?.is_finite())
    }
}

impl ReduceOps for Gpu {
    fn sum(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        reduce(x, "sum", dims, keepdim, k::R_SUM)
    }
    fn mean(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let count: usize = dims.iter().map(|&d| x.shape()[d]).product();
        x.sum(dims, keepdim)?.mul_scalar(1.0 / count as f32)
    }
    fn var(&self, x: &Tensor, dims: &[usize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
        let count: usize = dims.iter().map(|&d| x.shape()[d]).product();
        let centred = x.sub(&x.mean(dims, true)?)?;
        let denom = if unbiased { count.saturating_sub(1) } else { count } as f32;
        centred.mul(&centred)?.sum(dims, keepdim)?.mul_scalar(1.0 / denom)
    }
    fn max(&self, x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
        reduce(x, "max", &[dim], keepdim, k::R_MAX)
    }
    fn argmax(&self, x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
        let g = x.gpu_of("argmax")?;
        if g.shape[dim] == 0 || g.dtype != DType::F32 {
            return Err(bad_shape(
                "argmax",
                x.shape(),
                format!("cannot reduce dimension {dim} of an empty or i64 tensor"),
            ));
        }
        let mut shape = g.shape.clone();
        let (outer, red, inner) = (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product());
        if keepdim {
            shape[dim] = 1;
        } else {
            shape.remove(dim);
        }
        Ok(Tensor::from_gpu(gpu::argmax(g, outer, red, inner, &shape)?))
    }
    fn softmax(&self, x: &Tensor, dim: usize, log: bool) -> Result<Tensor> {
        let shifted = x.sub(&x.max(dim, true)?)?;
        let e = shifted.exp()?;
        let sum = e.sum(&[dim], true)?;
        if log {
            shifted.sub(&sum.log()?)
        } else {
            e.div(&sum)
        }
    }
}

impl MatmulOps for Gpu {
    fn matmul(&self, x: &Tensor, rhs: &Tensor) -> Result<Tensor> {
        let (a, b) = (x.gpu_of("matmul")?, rhs.gpu_of("matmul")?);
        if a.dtype != DType::F32 || b.dtype != DType::F32 {
            return Err(TensorError::DType { op: "matmul", expected: DType::F32, got: DType::I64 });
        }
        let (ra, rb) = (a.shape.len(), b.shape.len());
        if ra < 2 || rb < 2 || a.shape[ra - 1] != b.shape[rb - 2] {
            return Err(mismatch("matmul", &a.shape, &b.shape));
        }
        let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
        let batch = broadcast_shapes("matmul", &a.shape[..ra - 2], &b.shape[..rb - 2])?;
        let nb: usize = batch.iter().product();
        // An operand whose batch is a single matrix is read with batch stride 0; one broadcast
        // along some batch dimensions only is expanded first.
        let expand = |t: &Tensor, rows: usize, cols: usize| -> Result<(Tensor, bool)> {
            let own: usize = t.shape()[..t.rank() - 2].iter().product();
            if own == 1 {
                return Ok((t.clone(), false));
            }
            let mut full = batch.clone();
            full.extend([rows, cols]);
            Ok((if t.shape() == full.as_slice() { t.clone() } else { t.broadcast_to(&full)? }, true))
        };
        let (ta, a_batched) = expand(x, m, k)?;
        let (tb, b_batched) = expand(rhs, k, n)?;
        let mut shape = batch;
        shape.extend([m, n]);
        let out = crate::gpu::matmul(
            ta.gpu_of("matmul")?,
            tb.gpu_of("matmul")?,
            nb,
            (m, k, n),
            (a_batched, b_batched),
            &shape,
        )?;
        Ok(Tensor::from_gpu(out))
    }
}

impl ConvOps for Gpu {
    fn conv2d(
        &self,
        g: &ConvGeom,
        input: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        relu: bool,
        _winograd_cache: Option<&OnceLock<Vec<f32>>>,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let out = gpu::conv2d(
            input.gpu_f32(OP)?,
            weight.gpu_f32(OP)?,
            bias.map(|b| b.gpu_f32(OP)).transpose()?,
            residual.map(|r| r.gpu_f32(OP)).transpose()?,
            relu,
            g,
        )?;
        Ok(Tensor::from_gpu(out))
    }
    fn conv2d_backward_input(&self, g: &ConvGeom, grad_output: &Tensor, weight: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_input";
        let dx = gpu::conv2d_backward_input(grad_output.gpu_f32(OP)?, weight.gpu_f32(OP)?, g)?;
        Ok(Tensor::from_gpu(dx))
    }
    fn conv2d_backward_weight(&self, g: &ConvGeom, input: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_weight";
        let dw = gpu::conv2d_backward_weight(input.gpu_f32(OP)?, grad_output.gpu_f32(OP)?, g)?;
        Ok(Tensor::from_gpu(dw))
    }
    fn conv2d_backward_bias(&self, grad_output: &Tensor) -> Result<Tensor> {
        grad_output.sum(&[0, 2, 3], false)
    }
}

impl NormOps for Gpu {
    fn batch_norm_train(
        &self,
        input: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running: Option<(&Tensor, &Tensor)>,
        momentum: f64,
        eps: f64,
        layout: (usize, usize, usize),
    ) -> Result<BatchNormTrain> {
        let (n, _, s) = layout;
        train(input, weight, bias, running, momentum, eps, n * s)
    }
    fn batch_norm_eval(
        &self,
        input: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        layout: (usize, usize, usize),
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm_eval";
        let (_, c, _) = layout;
        let (scale, shift) = eval_affine(OP, c, weight, bias, running_mean, running_var, eps)?;
        let out =
            gpu::channel_affine(input.gpu_f32(OP)?, Some(scale.gpu_f32(OP)?), Some(shift.gpu_f32(OP)?), None, false)?;
        Ok(Tensor::from_gpu(out))
    }
    fn batch_norm_train_backward(
        &self,
        grad_output: &Tensor,
        input: &Tensor,
        weight: Option<&Tensor>,
        mean: &Tensor,
        invstd: &Tensor,
        layout: (usize, usize, usize),
    ) -> Result<BatchNormGrads> {
        let (_, c, _) = layout;
        train_backward(grad_output, input, weight, mean, invstd, c)
    }
    fn batch_norm_eval_backward(
        &self,
        grad_output: &Tensor,
        input: &Tensor,
        weight: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        layout: (usize, usize, usize),
    ) -> Result<BatchNormGrads> {
        let (_, c, _) = layout;
        eval_backward(grad_output, input, weight, running_mean, running_var, eps, c)
    }
}

// Batch norm's per-channel arithmetic, by tensor ops on the device.
/// A per-channel parameter on `device`, or `default` everywhere when absent.
fn channel(op: &'static str, t: Option<&Tensor>, c: usize, default: f32, device: crate::Device) -> Result<Tensor> {
    match t {
        None => Tensor::full(&[c], default).to_device(device),
        Some(t) if t.shape() == [c] => Ok(t.clone()),
        Some(t) => Err(bad_shape(op, t.shape(), format!("a per-channel parameter must be [{c}]"))),
    }
}

fn rsqrt_eps(op: &'static str, var: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(Tensor::from_gpu(gpu::unary(var.gpu_f32(op)?, U_RSQRT_EPS, eps as f32, 0.0)?))
}

/// `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale`.
fn eval_affine(
    op: &'static str,
    c: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let device = mean.device();
    let gamma = channel(op, weight, c, 1.0, device)?;
    let beta = channel(op, bias, c, 0.0, device)?;
    let (mean, var) = (channel(op, Some(mean), c, 0.0, device)?, channel(op, Some(var), c, 1.0, device)?);
    let scale = gamma.mul(&rsqrt_eps(op, &var, eps)?)?;
    let shift = beta.sub(&mean.mul(&scale)?)?;
    Ok((scale, shift))
}

fn train(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: Option<(&Tensor, &Tensor)>,
    momentum: f64,
    eps: f64,
    count: usize,
) -> Result<BatchNormTrain> {
    const OP: &str = "batch_norm_train";
    let x = input.gpu_f32(OP)?;
    let (c, device) = (x.shape[1], x.device);
    let (mean, var) = gpu::channel_stats(x)?;
    let (mean, var) = (Tensor::from_gpu(mean), Tensor::from_gpu(var));
    let invstd = rsqrt_eps(OP, &var, eps)?;
    let gamma = channel(OP, weight, c, 1.0, device)?;
    let beta = channel(OP, bias, c, 0.0, device)?;
    let scale = gamma.mul(&invstd)?;
    let shift = beta.sub(&mean.mul(&scale)?)?;
    let output =
        Tensor::from_gpu(gpu::channel_affine(x, Some(scale.gpu_f32(OP)?), Some(shift.gpu_f32(OP)?), None, false)?);
    let (running_mean, running_var) = match running {
        None => (None, None),
        Some((rm, rv)) => {
            let (rm, rv) = (channel(OP, Some(rm), c, 0.0, device)?, channel(OP, Some(rv), c, 1.0, device)?);
            let m = momentum as f32;
            let unbias = count as f64 / (count - 1) as f64;
            let new_mean = rm.mul_scalar(1.0 - m)?.add(&mean.mul_scalar(m)?)?;
            let new_var = rv.mul_scalar(1.0 - m)?.add(&var.mul_scalar((momentum * unbias) as f32)?)?;
            (Some(new_mean), Some(new_var))
        }
    };
    Ok(BatchNormTrain { output, mean, invstd, running_mean, running_var })
}

fn train_backward(
    grad_output: &Tensor,
    input: &Tensor,
    weight: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    c: usize,
) -> Result<BatchNormGrads> {
    const OP: &str = "batch_norm_train_backward";
    let device = input.device();
    let gamma = channel(OP, weight, c, 1.0, device)?;
    let (mean, invstd) = (channel(OP, Some(mean), c, 0.0, device)?, channel(OP, Some(invstd), c, 1.0, device)?);
    let (dy, x) = (grad_output.gpu_f32(OP)?, input.gpu_f32(OP)?);
    let (m, is) = (mean.gpu_f32(OP)?, invstd.gpu_f32(OP)?);
    let (sum_dy, sum_dy_xhat) = gpu::channel_grad_sums(dy, x, m, is)?;
    let dx = gpu::bn_backward_input(dy, x, m, is, gamma.gpu_f32(OP)?, &sum_dy, &sum_dy_xhat)?;
    Ok(BatchNormGrads {
        input: Tensor::from_gpu(dx),
        weight: Tensor::from_gpu(sum_dy_xhat),
        bias: Tensor::from_gpu(sum_dy),
    })
}

fn eval_backward(
    grad_output: &Tensor,
    input: &Tensor,
    weight: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    c: usize,
) -> Result<BatchNormGrads> {
    const OP: &str = "batch_norm_eval_backward";
    let device = input.device();
    let gamma = channel(OP, weight, c, 1.0, device)?;
    let mean = channel(OP, Some(running_mean), c, 0.0, device)?;
    let invstd = rsqrt_eps(OP, &channel(OP, Some(running_var), c, 1.0, device)?, eps)?;
    let scale = gamma.mul(&invstd)?;
    let dy = grad_output.gpu_f32(OP)?;
    let dx = gpu::channel_affine(dy, Some(scale.gpu_f32(OP)?), None, None, false)?;
    let (sum_dy, sum_dy_xhat) = gpu::channel_grad_sums(dy, input.gpu_f32(OP)?, mean.gpu_f32(OP)?, invstd.gpu_f32(OP)?)?;
    Ok(BatchNormGrads {
        input: Tensor::from_gpu(dx),
        weight: Tensor::from_gpu(sum_dy_xhat),
        bias: Tensor::from_gpu(sum_dy),
    })
}

impl PoolOps for Gpu {
    fn max_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<(Tensor, Tensor)> {
        const OP: &str = "max_pool2d";
        let shape = g.out_shape();
        let (out, idx) = gpu::max_pool2d(input.gpu_f32(OP)?, pool_sizes(g, p, true), &shape)?;
        Ok((Tensor::from_gpu(out), Tensor::from_gpu(idx)))
    }
    fn max_pool2d_values(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<Tensor> {
        Ok(self.max_pool2d(input, p, g)?.0)
    }
    fn max_pool2d_backward(&self, grad_output: &Tensor, indices: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "max_pool2d_backward";
        let idx = indices.gpu_of(OP)?;
        if idx.dtype != crate::DType::I64 {
            return Err(crate::TensorError::DType { op: OP, expected: crate::DType::I64, got: idx.dtype });
        }
        let dx = gpu::max_pool2d_backward(grad_output.gpu_f32(OP)?, idx, input_shape)?;
        Ok(Tensor::from_gpu(dx))
    }
    fn avg_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom, count_include_pad: bool) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        let shape = [input.shape()[0], input.shape()[1], g.oh, g.ow];
        let out = gpu::avg_pool2d(input.gpu_f32(OP)?, pool_sizes(g, p, count_include_pad), &shape, false, false)?;
        Ok(Tensor::from_gpu(out))
    }
    fn avg_pool2d_backward(
        &self,
        grad_output: &Tensor,
        p: &Pool2dParams,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<Tensor> {
        const OP: &str = "avg_pool2d_backward";
        let input_shape = &g.input[..];
        let s = pool_sizes(g, p, count_include_pad);
        let dx = gpu::avg_pool2d(grad_output.gpu_f32(OP)?, s, input_shape, false, true)?;
        Ok(Tensor::from_gpu(dx))
    }
    fn adaptive_avg_pool2d(&self, input: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        let s = input.shape();
        let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
        let sizes = adaptive_sizes(h, w, oh, ow);
        let out = gpu::avg_pool2d(input.gpu_f32(OP)?, sizes, &[s[0], s[1], oh, ow], true, false)?;
        Ok(Tensor::from_gpu(out))
    }
    fn adaptive_avg_pool2d_backward(&self, grad_output: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d_backward";
        let input_shape = &g.input[..];
        let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
        let dx = gpu::avg_pool2d(grad_output.gpu_f32(OP)?, adaptive_sizes(h, w, oh, ow), input_shape, true, true)?;
        Ok(Tensor::from_gpu(dx))
    }
}

impl OptimOps for Gpu {
    fn sgd_step(
        &self,
        param: &Tensor,
        grad: &Tensor,
        buf: Option<Tensor>,
        s: &SgdScalars,
    ) -> Result<(Tensor, Option<Tensor>)> {
        const OP: &str = "sgd_step";
        let SgdScalars { lr, wd, m, damp, nesterov } = *s;
        let b = buf.as_ref().map(|b| b.gpu_f32(OP)).transpose()?;
        let (p, b) = gpu::sgd_step(param.gpu_f32(OP)?, grad.gpu_f32(OP)?, b, lr, wd, m, damp, nesterov)?;
        Ok((Tensor::from_gpu(p), b.map(Tensor::from_gpu)))
    }
    fn adam_step(
        &self,
        param: &Tensor,
        grad: &Tensor,
        (m1, m2): (Option<Tensor>, Option<Tensor>),
        s: &AdamScalars,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "adam_step";
        let AdamScalars { b1: b1f, b2: b2f, one_b1, one_b2, eps, l2, shrink, step_size, bc2: bc2f } = *s;
        let device = param.device();
        let (m1, m2) = match (m1, m2) {
            (Some(a), Some(b)) => (a, b),
            (a, b) => {
                let zeros = Tensor::zeros_on(param.shape(), device)?;
                (a.unwrap_or_else(|| zeros.clone()), b.unwrap_or(zeros))
            }
        };
        let scalars = [b1f, b2f, one_b1, one_b2, eps, l2, shrink, step_size, bc2f];
        let (p, a, b) =
            gpu::adam_step(param.gpu_f32(OP)?, grad.gpu_f32(OP)?, m1.gpu_f32(OP)?, m2.gpu_f32(OP)?, scalars)?;
        Ok((Tensor::from_gpu(p), Tensor::from_gpu(a), Tensor::from_gpu(b)))
    }
}
