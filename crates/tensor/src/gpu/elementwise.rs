//! The elementwise family: unary maps, binary ops with numpy broadcasting, and what is built
//! from them (ReLU's backward mask, one-hot, the finiteness check). Each op is a comptime
//! parameter, so every op compiles to its own kernel.

use super::runtime::{arg, client, dims_array, f32_buffer, grid_1d, new_array};
use super::view::broadcast_strides;
use super::{Gpu, GpuArray};
use crate::backend::ElementwiseOps;
use crate::error::{Result, TensorError};
use crate::tensor::{BinaryOp, UnaryOp};
use crate::{DType, Tensor};
use cubecl::prelude::*;

/// The unary maps the kernels know; `a` and `b` are their scalar operands where they take any.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum UnaryMap {
    Neg,
    Exp,
    Log,
    Sqrt,
    Relu,
    Abs,
    /// `clamp(v, a, b)`
    Clamp,
    /// `v ^ a`
    Powf,
    /// `v + a`
    AddScalar,
    /// `v * a`
    MulScalar,
    /// `1 / sqrt(v + a)`: batch norm's inverse standard deviation.
    RsqrtEps,
}

/// The binary ops the kernels know.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum BinaryMap {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    /// 1 where equal, else 0.
    Eq,
    /// ReLU's backward: the gradient `x` where the forward output `y` was positive.
    ReluMask,
}

#[cube]
fn apply_unary(v: f32, a: f32, b: f32, #[comptime] op: UnaryMap) -> f32 {
    let mut r = v;
    if comptime![op == UnaryMap::Neg] {
        r = -v;
    } else if comptime![op == UnaryMap::Exp] {
        r = v.exp();
    } else if comptime![op == UnaryMap::Log] {
        r = v.ln();
    } else if comptime![op == UnaryMap::Sqrt] {
        r = v.sqrt();
    } else if comptime![op == UnaryMap::Relu] {
        // As the host kernel and PyTorch: NaN stays NaN.
        r = select(v < 0.0, 0.0, v);
    } else if comptime![op == UnaryMap::Abs] {
        r = v.abs();
    } else if comptime![op == UnaryMap::Clamp] {
        r = select(v < a, a, select(v > b, b, v));
    } else if comptime![op == UnaryMap::Powf] {
        r = v.powf(a);
    } else if comptime![op == UnaryMap::AddScalar] {
        r = v + a;
    } else if comptime![op == UnaryMap::MulScalar] {
        r = v * a;
    } else if comptime![op == UnaryMap::RsqrtEps] {
        r = 1.0 / (v + a).sqrt();
    }
    r
}

#[cube]
fn apply_binary(x: f32, y: f32, #[comptime] op: BinaryMap) -> f32 {
    let mut r = x;
    if comptime![op == BinaryMap::Add] {
        r = x + y;
    } else if comptime![op == BinaryMap::Sub] {
        r = x - y;
    } else if comptime![op == BinaryMap::Mul] {
        r = x * y;
    } else if comptime![op == BinaryMap::Div] {
        r = x / y;
    } else if comptime![op == BinaryMap::Max] {
        // torch.maximum propagates NaN from either side.
        r = select(x > y || x.is_nan(), x, y);
    } else if comptime![op == BinaryMap::Min] {
        r = select(x < y || x.is_nan(), x, y);
    } else if comptime![op == BinaryMap::Eq] {
        r = select(x == y, 1.0, 0.0);
    } else if comptime![op == BinaryMap::ReluMask] {
        r = select(y > 0.0, x, 0.0);
    }
    r
}

#[cube(launch_unchecked)]
fn unary_kernel(x: &Array<f32>, out: &mut Array<f32>, a: f32, b: f32, #[comptime] op: UnaryMap) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = apply_unary(x[i], a, b, op);
    }
}

/// `out = lhs op rhs` where both operands already have the output's shape.
#[cube(launch_unchecked)]
fn binary_same_kernel(lhs: &Array<f32>, rhs: &Array<f32>, out: &mut Array<f32>, #[comptime] op: BinaryMap) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = apply_binary(lhs[i], rhs[i], op);
    }
}

/// Broadcasting `out = lhs op rhs`: `shape` is the output's, and each operand's strides are 0
/// along the dimensions it is broadcast in (all three arrays of rank length).
#[cube(launch_unchecked)]
fn binary_bcast_kernel(
    lhs: &Array<f32>,
    rhs: &Array<f32>,
    out: &mut Array<f32>,
    shape: &Array<u32>,
    lhs_strides: &Array<u32>,
    rhs_strides: &Array<u32>,
    #[comptime] op: BinaryMap,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let rank = shape.len();
        let mut rem = i as u32;
        let mut li = 0u32;
        let mut ri = 0u32;
        for d in 0..rank {
            let dim = rank - 1 - d;
            let size = shape[dim];
            let idx = rem % size;
            rem /= size;
            li += idx * lhs_strides[dim];
            ri += idx * rhs_strides[dim];
        }
        out[i] = apply_binary(lhs[li as usize], rhs[ri as usize], op);
    }
}

pub(super) fn unary(x: &GpuArray, op: UnaryMap, a: f32, b: f32) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = x.numel();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            unsafe { unary_kernel::launch_unchecked::<R>(&client, count, dim, arg(&x.handle, n), arg(&out, n), a, b, op) };
        }
        Ok(new_array::<R>(out, &x.shape, DType::F32))
    })
}

/// `lhs op rhs` with numpy broadcasting to `out_shape`.
pub(super) fn binary(lhs: &GpuArray, rhs: &GpuArray, out_shape: &[usize], op: BinaryMap) -> Result<GpuArray> {
    const OP: &str = "binary";
    on_runtime!(lhs.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            if lhs.shape == out_shape && rhs.shape == out_shape {
                unsafe {
                    binary_same_kernel::launch_unchecked::<R>(
                        &client, count, dim, arg(&lhs.handle, n), arg(&rhs.handle, n), arg(&out, n), op,
                    )
                };
            } else {
                let rank = out_shape.len();
                let shape = dims_array(&client, OP, out_shape)?;
                let lhs_strides = dims_array(&client, OP, &broadcast_strides(&lhs.shape, out_shape))?;
                let rhs_strides = dims_array(&client, OP, &broadcast_strides(&rhs.shape, out_shape))?;
                unsafe {
                    binary_bcast_kernel::launch_unchecked::<R>(
                        &client,
                        count,
                        dim,
                        arg(&lhs.handle, lhs.numel()),
                        arg(&rhs.handle, rhs.numel()),
                        arg(&out, n),
                        arg(&shape, rank),
                        arg(&lhs_strides, rank),
                        arg(&rhs_strides, rank),
                        op,
                    )
                };
            }
        }
        Ok(new_array::<R>(out, out_shape, DType::F32))
    })
}

impl ElementwiseOps for Gpu {
    fn binary(&self, x: &Tensor, rhs: &Tensor, op: BinaryOp, shape: &[usize]) -> Result<Tensor> {
        let name = op.name();
        let (a, b) = (x.gpu_of(name)?, rhs.gpu_of(name)?);
        if a.dtype != DType::F32 || b.dtype != DType::F32 {
            return Err(TensorError::Unsupported { op: name, device: format!("{} (i64 arithmetic)", a.device) });
        }
        let kernel = match op {
            BinaryOp::Add => BinaryMap::Add,
            BinaryOp::Sub => BinaryMap::Sub,
            BinaryOp::Mul => BinaryMap::Mul,
            BinaryOp::Div => BinaryMap::Div,
            BinaryOp::Maximum => BinaryMap::Max,
            BinaryOp::Minimum => BinaryMap::Min,
        };
        Ok(Tensor::from_gpu(binary(a, b, shape, kernel)?))
    }
    fn relu_backward(&self, x: &Tensor, output: &Tensor) -> Result<Tensor> {
        const OP: &str = "relu_backward";
        let g = binary(x.gpu_f32(OP)?, output.gpu_f32(OP)?, x.shape(), BinaryMap::ReluMask)?;
        Ok(Tensor::from_gpu(g))
    }
    fn unary(&self, x: &Tensor, op: UnaryOp) -> Result<Tensor> {
        let g = x.gpu_f32(op.name())?;
        let (kernel, a, b) = match op {
            UnaryOp::Neg => (UnaryMap::Neg, 0.0, 0.0),
            UnaryOp::Exp => (UnaryMap::Exp, 0.0, 0.0),
            UnaryOp::Log => (UnaryMap::Log, 0.0, 0.0),
            UnaryOp::Sqrt => (UnaryMap::Sqrt, 0.0, 0.0),
            UnaryOp::Powf(p) => (UnaryMap::Powf, p, 0.0),
            UnaryOp::Relu => (UnaryMap::Relu, 0.0, 0.0),
            UnaryOp::Abs => (UnaryMap::Abs, 0.0, 0.0),
            UnaryOp::Clamp(min, max) => (UnaryMap::Clamp, min, max),
            UnaryOp::AddScalar(s) => (UnaryMap::AddScalar, s, 0.0),
            UnaryOp::MulScalar(s) => (UnaryMap::MulScalar, s, 0.0),
        };
        Ok(Tensor::from_gpu(unary(g, kernel, a, b)?))
    }
    fn one_hot(&self, targets: &Tensor, classes: usize, shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "one_hot";
        let g = targets.gpu_of(OP)?;
        // Equality of the class index with 0..classes, broadcast; the indices are exact in
        // f32 below 2^24. Out-of-range targets give all-zero rows (the host refuses them).
        let t = Tensor::from_gpu(super::cast(g, DType::F32)).unsqueeze(targets.rank())?;
        let range = Tensor::arange(0.0, classes as f32, 1.0)?.to_device(g.device)?;
        let out = binary(t.gpu_f32(OP)?, range.gpu_f32(OP)?, shape, BinaryMap::Eq)?;
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
