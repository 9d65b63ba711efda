//! The reduction family: sum and max over axes, argmax, and what is composed from them on the
//! device (mean, variance, softmax). A reduction views its input as `[outer, axis, inner]`
//! and reduces the middle axis, one axis at a time.
//!
//! Outputs that are many over a short axis get one unit each; few outputs over a long axis
//! get one cube each, whose units fold strided shares of the axis and then combine them in a
//! shared-memory tree. Either way the summation order is fixed by the shape, so results
//! repeat bit for bit.

use super::runtime::{arg, client, f32_buffer, grid_1d, new_array, u32_of, zeros, BLOCK};
use super::{Gpu, GpuArray};
use crate::backend::ReduceOps;
use crate::error::{bad_shape, Result, TensorError};
use crate::{DType, Tensor};
use cubecl::prelude::*;

/// What a reduction computes.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Reduction {
    Sum,
    /// The maximum, NaN if any element is NaN (torch.max).
    Max,
}

/// The sizes of `[outer, axis, inner]`, reduced over `axis`.
#[derive(CubeLaunch, CubeType)]
struct AxisMeta {
    axis: u32,
    inner: u32,
}

#[cube]
fn combine(acc: f32, v: f32, #[comptime] op: Reduction) -> f32 {
    if comptime![op == Reduction::Sum] {
        acc + v
    } else {
        select(v > acc || v.is_nan(), v, acc)
    }
}

/// The first element of output `o`'s run along the axis.
#[cube]
fn axis_start(o: u32, meta: &AxisMeta) -> u32 {
    (o / meta.inner) * meta.axis * meta.inner + o % meta.inner
}

/// One unit per output.
#[cube(launch_unchecked)]
fn reduce_unit_kernel(x: &Array<f32>, out: &mut Array<f32>, meta: AxisMeta, #[comptime] op: Reduction) {
    let o = ABSOLUTE_POS;
    if o < out.len() {
        let base = axis_start(o as u32, &meta);
        let mut acc = x[base as usize];
        for r in 1..meta.axis {
            acc = combine(acc, x[(base + r * meta.inner) as usize], op);
        }
        out[o] = acc;
    }
}

/// One cube of `BLOCK` units per output.
#[cube(launch_unchecked)]
fn reduce_cube_kernel(x: &Array<f32>, out: &mut Array<f32>, meta: AxisMeta, #[comptime] op: Reduction) {
    let o = CUBE_POS as u32;
    let t = UNIT_POS;
    let mut shared = SharedMemory::<f32>::new(256usize);
    let base = axis_start(o, &meta);
    let mut acc = f32::new(0.0);
    if comptime![op == Reduction::Max] {
        acc = x[base as usize];
    }
    let mut r = t;
    while r < meta.axis {
        acc = combine(acc, x[(base + r * meta.inner) as usize], op);
        r += BLOCK;
    }
    shared[t as usize] = acc;
    sync_cube();
    // Unrolled at compile time, so every barrier sits in uniform control flow (WGSL's rule).
    #[unroll]
    for level in 0..8u32 {
        let half = 128u32 >> level;
        if t < half {
            shared[t as usize] = combine(shared[t as usize], shared[(t + half) as usize], op);
        }
        sync_cube();
    }
    if t == 0 {
        out[o as usize] = shared[0];
    }
}

/// Index of the first maximum along the axis (NaN counts as the maximum, as in torch.argmax).
#[cube(launch_unchecked)]
fn argmax_kernel(x: &Array<f32>, out: &mut Array<i32>, meta: AxisMeta) {
    let o = ABSOLUTE_POS;
    if o < out.len() {
        let base = axis_start(o as u32, &meta);
        let mut best = x[base as usize];
        let mut arg = 0u32;
        for r in 1..meta.axis {
            let v = x[(base + r * meta.inner) as usize];
            if (v > best || v.is_nan()) && !best.is_nan() {
                best = v;
                arg = r;
            }
        }
        out[o] = arg as i32;
    }
}

fn axis_meta<R: Runtime>(op: &'static str, axis: usize, inner: usize) -> Result<AxisMetaLaunch<R>> {
    Ok(AxisMetaLaunch::new(u32_of(op, axis)?, u32_of(op, inner)?))
}

/// Reduces `x` viewed as `[outer, axis, inner]` over the middle axis (`axis >= 1`).
fn reduce_axis(
    x: &GpuArray,
    (outer, axis, inner): (usize, usize, usize),
    op: Reduction,
    out_shape: &[usize],
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = outer * inner;
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let meta = axis_meta::<R>("reduce", axis, inner)?;
            let (src, dst) = (arg(&x.handle, x.numel()), arg(&out, n));
            if axis >= 1024 && n <= 65_535 {
                let count = CubeCount::Static(n as u32, 1, 1);
                let dim = CubeDim { x: BLOCK, y: 1, z: 1 };
                unsafe { reduce_cube_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, meta, op) };
            } else {
                let (count, dim) = grid_1d(n);
                unsafe { reduce_unit_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, meta, op) };
            }
        }
        Ok(new_array::<R>(out, out_shape, DType::F32))
    })
}

fn argmax_axis(x: &GpuArray, (outer, axis, inner): (usize, usize, usize), out_shape: &[usize]) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = outer * inner;
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            let meta = axis_meta::<R>("argmax", axis, inner)?;
            unsafe { argmax_kernel::launch_unchecked::<R>(&client, count, dim, arg(&x.handle, x.numel()), arg(&out, n), meta) };
        }
        Ok(new_array::<R>(out, out_shape, DType::I64))
    })
}

/// Sums (or takes the maximum) over `dims`, one axis at a time.
fn reduce(x: &Tensor, name: &'static str, dims: &[usize], keepdim: bool, op: Reduction) -> Result<Tensor> {
    let g = x.gpu_of(name)?;
    if g.dtype != DType::F32 {
        return Err(TensorError::DType { op: name, expected: DType::F32, got: g.dtype });
    }
    let mut cur = g.clone();
    let mut shape = g.shape.clone();
    for &d in dims.iter().rev() {
        let (outer, axis, inner) = (shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product());
        shape[d] = 1;
        cur = match axis {
            0 if op == Reduction::Sum => zeros(&shape, g.device)?,
            0 => return Err(bad_shape(name, x.shape(), format!("cannot reduce the empty dimension {d}"))),
            1 => cur.reshaped(&shape),
            _ => reduce_axis(&cur, (outer, axis, inner), op, &shape)?,
        };
    }
    if !keepdim {
        let kept: Vec<usize> = shape.iter().enumerate().filter(|(d, _)| !dims.contains(d)).map(|(_, &s)| s).collect();
        cur = cur.reshaped(&kept);
    }
    Ok(Tensor::from_gpu(cur))
}

impl ReduceOps for Gpu {
    fn sum(&self, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        reduce(x, "sum", dims, keepdim, Reduction::Sum)
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
        reduce(x, "max", &[dim], keepdim, Reduction::Max)
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
        let (outer, axis, inner) = (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product());
        if keepdim {
            shape[dim] = 1;
        } else {
            shape.remove(dim);
        }
        Ok(Tensor::from_gpu(argmax_axis(g, (outer, axis, inner), &shape)?))
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
