//! The view family: permuted, narrowed and broadcast views materialised by a strided copy,
//! concatenation, and `gather` / `index_select` along one axis. Shapes and strides travel as
//! device arrays of one `u32` per dimension (their length is the rank).

use super::runtime::{arg, client, dims_array, f32_buffer, gpu_err, grid_1d, new_array, u32_of};
use super::{Gpu, GpuArray};
use crate::backend::ViewOps;
use crate::error::{Result, TensorError};
use crate::{DType, Tensor};
use cubecl::prelude::*;

/// `base + sum_d idx_d * strides_d`, where `idx` is row-major position `pos` in `shape`.
#[cube]
fn strided_position(pos: u32, shape: &Array<u32>, strides: &Array<u32>, base: u32) -> u32 {
    let rank = shape.len();
    let mut rem = pos;
    let mut at = base;
    for d in 0..rank {
        let dim = rank - 1 - d;
        let size = shape[dim];
        at += (rem % size) * strides[dim];
        rem /= size;
    }
    at
}

/// `out[i] = src[offset + sum_d idx_d * strides_d]`, `idx` being `i` in `shape` (the output's):
/// materialises a permuted, narrowed or broadcast view (of f32 data, or the i32 that holds i64).
#[cube(launch_unchecked)]
fn strided_copy_kernel<T: CubePrimitive>(
    src: &Array<T>,
    out: &mut Array<T>,
    shape: &Array<u32>,
    strides: &Array<u32>,
    offset: u32,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = src[strided_position(i as u32, shape, strides, offset) as usize];
    }
}

/// `out[base + sum_d idx_d * out_strides_d] = src[i]`, `idx` being `i` in `src_shape`: writes
/// one part of a concatenation into its place.
#[cube(launch_unchecked)]
fn copy_into_kernel<T: CubePrimitive>(
    src: &Array<T>,
    out: &mut Array<T>,
    src_shape: &Array<u32>,
    out_strides: &Array<u32>,
    base: u32,
) {
    let i = ABSOLUTE_POS;
    if i < src.len() {
        out[strided_position(i as u32, src_shape, out_strides, base) as usize] = src[i];
    }
}

/// Sizes of a gather along the middle axis of `[outer, axis, inner]` into `[outer, picks, inner]`.
#[derive(CubeLaunch, CubeType)]
struct GatherMeta {
    axis: u32,
    picks: u32,
    inner: u32,
}

/// Picks `x[.., index[..], ..]` along the middle axis: `gather` (an index of the output's
/// shape) or, with `one_d`, `index_select` (a 1-D index of `picks` entries, the same for every
/// outer and inner position).
#[cube(launch_unchecked)]
fn gather_kernel<T: CubePrimitive>(
    x: &Array<T>,
    index: &Array<i32>,
    out: &mut Array<T>,
    meta: GatherMeta,
    #[comptime] one_d: bool,
) {
    let o = ABSOLUTE_POS;
    if o < out.len() {
        let o = o as u32;
        let outer = o / (meta.picks * meta.inner);
        let within = o % meta.inner;
        let mut at = o;
        if comptime![one_d] {
            at = (o / meta.inner) % meta.picks;
        }
        let k = index[at as usize];
        // The host checked the indices; one out of range would read past the row, so it is
        // clamped into it instead.
        let kk = select(k < 0, 0u32, min(k as u32, meta.axis - 1));
        out[o as usize] = x[(outer * meta.axis * meta.inner + kk * meta.inner + within) as usize];
    }
}

pub(super) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Row-major strides of `shape` aligned to the right of `out_shape`, 0 where broadcast.
pub(super) fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let own = contiguous_strides(shape);
    let lead = out_shape.len() - shape.len();
    (0..out_shape.len()).map(|d| if d < lead || shape[d - lead] == 1 { 0 } else { own[d - lead] }).collect()
}

/// Materialises the view `out[idx] = x[offset + sum idx_d * strides_d]` of shape `out_shape`.
pub(super) fn strided_copy(x: &GpuArray, out_shape: &[usize], strides: &[usize], offset: usize) -> Result<GpuArray> {
    const OP: &str = "strided_copy";
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let rank = out_shape.len();
            let (shape, strides) = (dims_array(&client, OP, out_shape)?, dims_array(&client, OP, strides)?);
            let (count, dim) = grid_1d(n);
            let (src, dst) = (arg(&x.handle, x.numel()), arg(&out, n));
            let (shape, strides) = (arg(&shape, rank), arg(&strides, rank));
            let offset = u32_of(OP, offset)?;
            unsafe {
                match x.dtype {
                    DType::F32 => strided_copy_kernel::launch_unchecked::<f32, R>(&client, count, dim, src, dst, shape, strides, offset),
                    DType::I64 => strided_copy_kernel::launch_unchecked::<i32, R>(&client, count, dim, src, dst, shape, strides, offset),
                }
            };
        }
        Ok(new_array::<R>(out, out_shape, x.dtype))
    })
}

/// Concatenation along `dim` of parts of one dtype whose shapes agree elsewhere.
fn cat(parts: &[&GpuArray], dim: usize, out_shape: &[usize]) -> Result<GpuArray> {
    const OP: &str = "cat";
    let first = parts.first().ok_or_else(|| gpu_err(OP, "needs at least one tensor"))?;
    on_runtime!(first.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        let strides = contiguous_strides(out_shape);
        let rank = out_shape.len();
        let out_strides = dims_array(&client, OP, &strides)?;
        let mut offset = 0;
        for part in parts {
            let len = part.numel();
            if len > 0 {
                let src_shape = dims_array(&client, OP, &part.shape)?;
                let (count, grid) = grid_1d(len);
                let (src, dst) = (arg(&part.handle, len), arg(&out, n));
                let (src_shape, out_strides) = (arg(&src_shape, rank), arg(&out_strides, rank));
                let base = u32_of(OP, offset * strides[dim])?;
                unsafe {
                    match part.dtype {
                        DType::F32 => copy_into_kernel::launch_unchecked::<f32, R>(&client, count, grid, src, dst, src_shape, out_strides, base),
                        DType::I64 => copy_into_kernel::launch_unchecked::<i32, R>(&client, count, grid, src, dst, src_shape, out_strides, base),
                    }
                };
            }
            offset += part.shape[dim];
        }
        Ok(new_array::<R>(out, out_shape, first.dtype))
    })
}

/// `gather` (`one_d` false: an index `[outer, picks, inner]`) or `index_select` (`one_d`
/// true: a 1-D index of `picks`) along the middle axis of `[outer, axis, inner]`.
fn gather(
    x: &GpuArray,
    index: &GpuArray,
    (axis, picks, inner): (usize, usize, usize),
    out_shape: &[usize],
    one_d: bool,
) -> Result<GpuArray> {
    const OP: &str = "gather";
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 && axis > 0 {
            let (count, dim) = grid_1d(n);
            let (src, idx, dst) = (arg(&x.handle, x.numel()), arg(&index.handle, index.numel()), arg(&out, n));
            let meta = || -> Result<GatherMetaLaunch<R>> {
                Ok(GatherMetaLaunch::new(u32_of(OP, axis)?, u32_of(OP, picks)?, u32_of(OP, inner)?))
            };
            unsafe {
                match x.dtype {
                    DType::F32 => gather_kernel::launch_unchecked::<f32, R>(&client, count, dim, src, idx, dst, meta()?, one_d),
                    DType::I64 => gather_kernel::launch_unchecked::<i32, R>(&client, count, dim, src, idx, dst, meta()?, one_d),
                }
            };
        }
        Ok(new_array::<R>(out, out_shape, x.dtype))
    })
}

impl ViewOps for Gpu {
    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_gpu(x.gpu_of("reshape")?.reshaped(shape)))
    }
    fn permute(&self, x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        let g = x.gpu_of("permute")?;
        let strides = contiguous_strides(&g.shape);
        let shape: Vec<usize> = dims.iter().map(|&d| g.shape[d]).collect();
        let strides: Vec<usize> = dims.iter().map(|&d| strides[d]).collect();
        Ok(Tensor::from_gpu(strided_copy(g, &shape, &strides, 0)?))
    }
    fn transpose(&self, x: &Tensor, d0: usize, d1: usize) -> Result<Tensor> {
        let mut dims: Vec<usize> = (0..x.rank()).collect();
        dims.swap(d0, d1);
        x.permute(&dims)
    }
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let g = x.gpu_of("narrow")?;
        let strides = contiguous_strides(&g.shape);
        let mut shape = g.shape.clone();
        shape[dim] = len;
        Ok(Tensor::from_gpu(strided_copy(g, &shape, &strides, start * strides[dim])?))
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
        Ok(Tensor::from_gpu(strided_copy(g, shape, &broadcast_strides(&g.shape, shape), 0)?))
    }
    fn cat(&self, tensors: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
        let parts = tensors.iter().map(|t| t.gpu_of("cat")).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::from_gpu(cat(&parts, dim, shape)?))
    }
    fn index_select(&self, x: &Tensor, dim: usize, index: &Tensor, idx: &[usize]) -> Result<Tensor> {
        let (xg, ix) = (x.gpu_of("index_select")?, index.gpu_of("index_select")?);
        let mut shape = x.shape().to_vec();
        shape[dim] = idx.len();
        let inner = x.shape()[dim + 1..].iter().product();
        let out = gather(xg, ix, (x.shape()[dim], idx.len(), inner), &shape, true)?;
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
        let out = gather(xg, idx, (size, ishape[dim], inner), ishape, false)?;
        Ok(Tensor::from_gpu(out))
    }
}
