//! The pooling family: max pooling with PyTorch's flat `h * w` argmax indices and its backward,
//! average pooling (with or without the padding counted) and adaptive average pooling, forward
//! and in gather form backward (each input element sums the outputs that read it: no atomics).

use super::runtime::{arg, client, f32_buffer, grid_1d, new_array, u32_of};
use super::{Gpu, GpuArray};
use crate::backend::PoolOps;
use crate::error::Result;
use crate::kernels::pool::PoolGeom;
use crate::{DType, Pool2dParams, Tensor};
use cubecl::prelude::*;

/// A pooling over planes `[planes, h, w]` into `[planes, oh, ow]`. Adaptive pooling reads only
/// h, w, oh and ow.
#[derive(CubeLaunch, CubeType)]
struct PoolMeta {
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    /// Average pooling divides by the padded window (1) or by the part inside the input (0).
    count_include_pad: u32,
}

#[cube(launch_unchecked)]
fn max_pool_kernel(x: &Array<f32>, out: &mut Array<f32>, idx: &mut Array<i32>, s: PoolMeta) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let iv = i as u32;
        let ox = iv % s.ow;
        let oy = (iv / s.ow) % s.oh;
        let plane = iv / (s.ow * s.oh);
        let y0 = (oy * s.stride_h) as i32 - s.pad_h as i32;
        let x0 = (ox * s.stride_w) as i32 - s.pad_w as i32;
        let mut best = f32::new(0.0);
        let mut arg = i32::new(-1);
        for ki in 0..s.kh {
            let y = y0 + ki as i32;
            if y >= 0 && y < s.h as i32 {
                for kj in 0..s.kw {
                    let xx = x0 + kj as i32;
                    if xx >= 0 && xx < s.w as i32 {
                        let at = y * s.w as i32 + xx;
                        let v = x[(plane * s.h * s.w + at as u32) as usize];
                        if arg < 0 || ((v > best || v.is_nan()) && !best.is_nan()) {
                            best = v;
                            arg = at;
                        }
                    }
                }
            }
        }
        out[i] = best;
        idx[i] = arg;
    }
}

/// Max pooling's backward: each output gradient goes to the input element its index names.
/// One unit per plane walks the plane's outputs in order (no float atomics in WGSL, and the
/// sums repeat bit for bit).
#[cube(launch_unchecked)]
fn max_pool_backward_kernel(dy: &Array<f32>, idx: &Array<i32>, dx: &mut Array<f32>, planes: u32, ihw: u32, ohw: u32) {
    let plane = ABSOLUTE_POS as u32;
    if plane < planes {
        let base = plane * ihw;
        for j in 0..ihw {
            dx[(base + j) as usize] = 0.0;
        }
        for j in 0..ohw {
            let at = (plane * ohw + j) as usize;
            let k = idx[at];
            // An index outside the plane (only a hand-made one can be) is skipped, never written.
            if k >= 0 && (k as u32) < ihw {
                let target = (base + k as u32) as usize;
                dx[target] += dy[at];
            }
        }
    }
}

/// The divisor of average-pooling output `(oy, ox)`.
#[cube]
fn avg_pool_divisor(oy: u32, ox: u32, s: &PoolMeta) -> f32 {
    let h = s.h as i32;
    let w = s.w as i32;
    let y0 = (oy * s.stride_h) as i32 - s.pad_h as i32;
    let x0 = (ox * s.stride_w) as i32 - s.pad_w as i32;
    // The window clipped to the padded input (ceil_mode windows can run past it) ...
    let y1 = min(y0 + s.kh as i32, h + s.pad_h as i32);
    let x1 = min(x0 + s.kw as i32, w + s.pad_w as i32);
    let mut count = (y1 - y0) * (x1 - x0);
    if s.count_include_pad == 0 {
        // ... or to the input itself when padding does not count.
        count = (min(y1, h) - max(y0, 0)) * (min(x1, w) - max(x0, 0));
    }
    f32::cast_from(count)
}

#[cube(launch_unchecked)]
fn avg_pool_kernel(x: &Array<f32>, out: &mut Array<f32>, s: PoolMeta) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let iv = i as u32;
        let ox = iv % s.ow;
        let oy = (iv / s.ow) % s.oh;
        let plane = iv / (s.ow * s.oh);
        let y0 = (oy * s.stride_h) as i32 - s.pad_h as i32;
        let x0 = (ox * s.stride_w) as i32 - s.pad_w as i32;
        let mut acc = f32::new(0.0);
        for ki in 0..s.kh {
            let y = y0 + ki as i32;
            if y >= 0 && y < s.h as i32 {
                for kj in 0..s.kw {
                    let xx = x0 + kj as i32;
                    if xx >= 0 && xx < s.w as i32 {
                        acc += x[(plane * s.h * s.w + y as u32 * s.w + xx as u32) as usize];
                    }
                }
            }
        }
        out[i] = acc / avg_pool_divisor(oy, ox, &s);
    }
}

#[cube(launch_unchecked)]
fn avg_pool_backward_kernel(dy: &Array<f32>, dx: &mut Array<f32>, s: PoolMeta) {
    let i = ABSOLUTE_POS;
    if i < dx.len() {
        let iv = i as u32;
        let ix = iv % s.w;
        let iy = (iv / s.w) % s.h;
        let plane = iv / (s.w * s.h);
        let mut acc = f32::new(0.0);
        for ki in 0..s.kh {
            let ty = (iy + s.pad_h) as i32 - ki as i32;
            if ty >= 0 && ty % s.stride_h as i32 == 0 && ty / (s.stride_h as i32) < s.oh as i32 {
                let oy = ty as u32 / s.stride_h;
                for kj in 0..s.kw {
                    let tx = (ix + s.pad_w) as i32 - kj as i32;
                    if tx >= 0 && tx % s.stride_w as i32 == 0 && tx / (s.stride_w as i32) < s.ow as i32 {
                        let ox = tx as u32 / s.stride_w;
                        acc += dy[(plane * s.oh * s.ow + oy * s.ow + ox) as usize] / avg_pool_divisor(oy, ox, &s);
                    }
                }
            }
        }
        dx[i] = acc;
    }
}

/// Adaptive average pooling: output cell `o` of a size-`out` axis averages input rows
/// `floor(o * in / out) .. ceil((o + 1) * in / out)`.
#[cube(launch_unchecked)]
fn adaptive_avg_pool_kernel(x: &Array<f32>, out: &mut Array<f32>, s: PoolMeta) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let iv = i as u32;
        let ox = iv % s.ow;
        let oy = (iv / s.ow) % s.oh;
        let plane = iv / (s.ow * s.oh);
        let y0 = oy * s.h / s.oh;
        let y1 = ((oy + 1) * s.h).div_ceil(s.oh);
        let x0 = ox * s.w / s.ow;
        let x1 = ((ox + 1) * s.w).div_ceil(s.ow);
        let mut acc = f32::new(0.0);
        for y in y0..y1 {
            for xx in x0..x1 {
                acc += x[(plane * s.h * s.w + y * s.w + xx) as usize];
            }
        }
        out[i] = acc / f32::cast_from((y1 - y0) * (x1 - x0));
    }
}

#[cube(launch_unchecked)]
fn adaptive_avg_pool_backward_kernel(dy: &Array<f32>, dx: &mut Array<f32>, s: PoolMeta) {
    let i = ABSOLUTE_POS;
    if i < dx.len() {
        let iv = i as u32;
        let ix = iv % s.w;
        let iy = (iv / s.w) % s.h;
        let plane = iv / (s.w * s.h);
        let mut acc = f32::new(0.0);
        for oy in 0..s.oh {
            let y0 = oy * s.h / s.oh;
            let y1 = ((oy + 1) * s.h).div_ceil(s.oh);
            if iy >= y0 && iy < y1 {
                for ox in 0..s.ow {
                    let x0 = ox * s.w / s.ow;
                    let x1 = ((ox + 1) * s.w).div_ceil(s.ow);
                    if ix >= x0 && ix < x1 {
                        acc +=
                            dy[(plane * s.oh * s.ow + oy * s.ow + ox) as usize] / f32::cast_from((y1 - y0) * (x1 - x0));
                    }
                }
            }
        }
        dx[i] = acc;
    }
}

/// A pooling's sizes on the host, as [`PoolMeta`] names them.
#[derive(Clone, Copy, Debug)]
struct PoolSizes {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    count_include_pad: bool,
}

impl PoolSizes {
    fn of(g: &PoolGeom, p: &Pool2dParams, count_include_pad: bool) -> PoolSizes {
        let (kernel, stride, padding) = (p.kernel, p.stride, p.padding);
        PoolSizes { h: g.h, w: g.w, oh: g.oh, ow: g.ow, kernel, stride, padding, count_include_pad }
    }
    /// Adaptive pooling's sizes (its kernels read only h, w, oh, ow).
    fn adaptive(g: &PoolGeom) -> PoolSizes {
        let (kernel, stride, padding) = ([1, 1], [1, 1], [0, 0]);
        PoolSizes { h: g.h, w: g.w, oh: g.oh, ow: g.ow, kernel, stride, padding, count_include_pad: true }
    }
    fn meta<R: Runtime>(&self, op: &'static str) -> Result<PoolMetaLaunch<R>> {
        let u = |v: usize| u32_of(op, v);
        Ok(PoolMetaLaunch::new(
            u(self.h)?,
            u(self.w)?,
            u(self.oh)?,
            u(self.ow)?,
            u(self.kernel[0])?,
            u(self.kernel[1])?,
            u(self.stride[0])?,
            u(self.stride[1])?,
            u(self.padding[0])?,
            u(self.padding[1])?,
            u32::from(self.count_include_pad),
        ))
    }
}

fn max_pool2d(x: &GpuArray, s: PoolSizes, out_shape: &[usize]) -> Result<(GpuArray, GpuArray)> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let (out, idx) = (f32_buffer(&client, n)?, f32_buffer(&client, n)?);
        if n > 0 {
            let (count, dim) = grid_1d(n);
            let meta = s.meta::<R>("max_pool2d")?;
            unsafe {
                max_pool_kernel::launch_unchecked::<R>(&client, count, dim, arg(&x.handle, x.numel()), arg(&out, n), arg(&idx, n), meta)
            };
        }
        Ok((new_array::<R>(out, out_shape, DType::F32), new_array::<R>(idx, out_shape, DType::I64)))
    })
}

/// `idx` holds in-range plane indices (checked by the caller).
fn max_pool2d_backward(dy: &GpuArray, idx: &GpuArray, in_shape: &[usize]) -> Result<GpuArray> {
    const OP: &str = "max_pool2d_backward";
    on_runtime!(dy.device, R => {
        let client = client::<R>()?;
        let n: usize = in_shape.iter().product();
        let dx = f32_buffer(&client, n)?;
        let planes = in_shape[0] * in_shape[1];
        if n > 0 && planes > 0 {
            let (ihw, ohw) = (in_shape[2] * in_shape[3], dy.shape[2] * dy.shape[3]);
            let (count, dim) = grid_1d(planes);
            unsafe {
                max_pool_backward_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&dy.handle, dy.numel()),
                    arg(&idx.handle, idx.numel()),
                    arg(&dx, n),
                    u32_of(OP, planes)?,
                    u32_of(OP, ihw)?,
                    u32_of(OP, ohw)?,
                )
            };
        }
        Ok(new_array::<R>(dx, in_shape, DType::F32))
    })
}

/// Average pooling (`adaptive`: adaptive average pooling), forward (`x` = input, `out_shape` =
/// output) or backward (`x` = output gradient, `out_shape` = input shape): one kernel launch
/// over `out_shape` either way.
fn avg_pool2d(x: &GpuArray, s: PoolSizes, out_shape: &[usize], adaptive: bool, backward: bool) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n: usize = out_shape.iter().product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            let (src, dst, meta) = (arg(&x.handle, x.numel()), arg(&out, n), s.meta::<R>("avg_pool2d")?);
            unsafe {
                match (adaptive, backward) {
                    (false, false) => avg_pool_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, meta),
                    (false, true) => avg_pool_backward_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, meta),
                    (true, false) => adaptive_avg_pool_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, meta),
                    (true, true) => adaptive_avg_pool_backward_kernel::launch_unchecked::<R>(&client, count, dim, src, dst, meta),
                }
            };
        }
        Ok(new_array::<R>(out, out_shape, DType::F32))
    })
}

impl PoolOps for Gpu {
    fn max_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<(Tensor, Tensor)> {
        const OP: &str = "max_pool2d";
        let (out, idx) = max_pool2d(input.gpu_f32(OP)?, PoolSizes::of(g, p, true), &g.out_shape())?;
        Ok((Tensor::from_gpu(out), Tensor::from_gpu(idx)))
    }
    fn max_pool2d_values(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom) -> Result<Tensor> {
        Ok(self.max_pool2d(input, p, g)?.0)
    }
    fn max_pool2d_backward(&self, grad_output: &Tensor, indices: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "max_pool2d_backward";
        let idx = indices.gpu_of(OP)?;
        if idx.dtype != DType::I64 {
            return Err(crate::TensorError::DType { op: OP, expected: DType::I64, got: idx.dtype });
        }
        let dx = max_pool2d_backward(grad_output.gpu_f32(OP)?, idx, input_shape)?;
        Ok(Tensor::from_gpu(dx))
    }
    fn avg_pool2d(&self, input: &Tensor, p: &Pool2dParams, g: &PoolGeom, count_include_pad: bool) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        let out = avg_pool2d(input.gpu_f32(OP)?, PoolSizes::of(g, p, count_include_pad), &g.out_shape(), false, false)?;
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
        let s = PoolSizes::of(g, p, count_include_pad);
        let dx = avg_pool2d(grad_output.gpu_f32(OP)?, s, &g.input, false, true)?;
        Ok(Tensor::from_gpu(dx))
    }
    fn adaptive_avg_pool2d(&self, input: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        let out = avg_pool2d(input.gpu_f32(OP)?, PoolSizes::adaptive(g), &g.out_shape(), true, false)?;
        Ok(Tensor::from_gpu(out))
    }
    fn adaptive_avg_pool2d_backward(&self, grad_output: &Tensor, g: &PoolGeom) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d_backward";
        let dx = avg_pool2d(grad_output.gpu_f32(OP)?, PoolSizes::adaptive(g), &g.input, true, true)?;
        Ok(Tensor::from_gpu(dx))
    }
}
