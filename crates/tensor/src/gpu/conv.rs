//! The convolution family: im2col into a column buffer (or none for 1x1 stride-1 convs) feeding
//! the matrix-product kernel, col2im as a gather for the input gradient, and the weight gradient
//! as one product over images folded into k. Images go in chunks so the column buffer stays
//! under 64 Mi floats.

use super::batch_norm::channel_affine;
use super::matmul::{launch_matmul, MatmulLayout};
use super::runtime::{arg, client, f32_buffer, grid_1d, new_array, u32_of, zeros, GpuRuntime};
use super::{Gpu, GpuArray};
use crate::backend::ConvOps;
use crate::error::Result;
use crate::kernels::conv::ConvGeom;
use crate::{DType, Tensor};
use cubecl::prelude::*;
use cubecl::server::Handle;
use std::sync::OnceLock;

/// A convolution's sizes as im2col and col2im read them, for the images `n0..` of one chunk.
#[derive(CubeLaunch, CubeType)]
struct ConvMeta {
    /// Input channels (all groups: a column's rows run over every channel).
    channels: u32,
    h: u32,
    w: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dilation_h: u32,
    dilation_w: u32,
    /// The chunk's first image.
    n0: u32,
}

/// im2col for the chunk's images: `col[n - n0, (ci * kh + ki) * kw + kj, oy * ow + ox]`.
#[cube(launch_unchecked)]
fn im2col_kernel(x: &Array<f32>, col: &mut Array<f32>, s: ConvMeta) {
    let i = ABSOLUTE_POS;
    if i < col.len() {
        let rows = s.channels * s.kh * s.kw;
        let p = s.oh * s.ow;
        let i = i as u32;
        let pos = i % p;
        let row = (i / p) % rows;
        let img = i / (p * rows);
        let kj = row % s.kw;
        let ki = (row / s.kw) % s.kh;
        let ci = row / (s.kw * s.kh);
        let oy = pos / s.ow;
        let ox = pos % s.ow;
        let iy = (oy * s.stride_h + ki * s.dilation_h) as i32 - s.pad_h as i32;
        let ix = (ox * s.stride_w + kj * s.dilation_w) as i32 - s.pad_w as i32;
        let mut v = f32::new(0.0);
        if iy >= 0 && iy < s.h as i32 && ix >= 0 && ix < s.w as i32 {
            v = x[((((s.n0 + img) * s.channels + ci) * s.h + iy as u32) * s.w + ix as u32) as usize];
        }
        col[i as usize] = v;
    }
}

/// col2im as a gather (no atomics): each input element of the chunk sums the im2col entries
/// that read it. `dx` covers all images; `chunk_len` is the chunk's share of it.
#[cube(launch_unchecked)]
fn col2im_kernel(col: &Array<f32>, dx: &mut Array<f32>, s: ConvMeta, chunk_len: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < chunk_len {
        let ix = i % s.w;
        let iy = (i / s.w) % s.h;
        let ci = (i / (s.w * s.h)) % s.channels;
        let img = i / (s.w * s.h * s.channels);
        let p = s.oh * s.ow;
        let mut acc = f32::new(0.0);
        for ki in 0..s.kh {
            let ty = (iy + s.pad_h) as i32 - (ki * s.dilation_h) as i32;
            if ty >= 0 && ty % s.stride_h as i32 == 0 && ty / (s.stride_h as i32) < s.oh as i32 {
                let oy = ty as u32 / s.stride_h;
                for kj in 0..s.kw {
                    let tx = (ix + s.pad_w) as i32 - (kj * s.dilation_w) as i32;
                    if tx >= 0 && tx % s.stride_w as i32 == 0 && tx / (s.stride_w as i32) < s.ow as i32 {
                        let ox = tx as u32 / s.stride_w;
                        let row = (ci * s.kh + ki) * s.kw + kj;
                        acc += col[((img * s.channels * s.kh * s.kw + row) * p + oy * s.ow + ox) as usize];
                    }
                }
            }
        }
        dx[((s.n0 + img) * s.channels * s.h * s.w + (i % (s.channels * s.h * s.w))) as usize] = acc;
    }
}

/// What the GPU convolutions derive from a validated [`ConvGeom`].
impl ConvGeom {
    /// Images per im2col chunk: the column buffer stays under 64 Mi floats.
    fn gpu_chunk(&self) -> usize {
        let per_image = (self.p.groups * self.k() * self.out_hw()).max(1);
        // At most 65,535 (image, group) batches per product (the grid's limit); at least one image.
        ((64usize << 20) / per_image).clamp(1, self.n.max(1)).min((65_535 / self.p.groups).max(1))
    }
    fn gpu_meta<R: Runtime>(&self, n0: usize) -> Result<ConvMetaLaunch<R>> {
        let u = |v: usize| u32_of("conv2d", v);
        let p = &self.p;
        Ok(ConvMetaLaunch::new(
            u(self.cin)?,
            u(self.h)?,
            u(self.w)?,
            u(self.kh)?,
            u(self.kw)?,
            u(self.oh)?,
            u(self.ow)?,
            u(p.stride[0])?,
            u(p.stride[1])?,
            u(p.padding[0])?,
            u(p.padding[1])?,
            u(p.dilation[0])?,
            u(p.dilation[1])?,
            u(n0)?,
        ))
    }
}

fn im2col<R: GpuRuntime>(
    client: &ComputeClient<R>,
    x: &GpuArray,
    s: &ConvGeom,
    n0: usize,
    nb: usize,
    col: &Handle,
) -> Result<()> {
    let len = nb * s.cin * s.kh * s.kw * s.out_hw();
    let (count, dim) = grid_1d(len);
    let meta = s.gpu_meta::<R>(n0)?;
    unsafe { im2col_kernel::launch_unchecked::<R>(client, count, dim, arg(&x.handle, x.numel()), arg(col, len), meta) };
    Ok(())
}

/// Convolution forward, then the optional per-channel bias, residual and ReLU.
fn conv2d(
    x: &GpuArray,
    w: &GpuArray,
    bias: Option<&GpuArray>,
    residual: Option<&GpuArray>,
    relu: bool,
    s: &ConvGeom,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.n * s.cout * p;
        let out = f32_buffer(&client, len)?;
        let nb = s.gpu_chunk();
        let col = if s.pointwise() { None } else { Some(f32_buffer(&client, nb * s.p.groups * kg * p)?) };
        for n0 in (0..s.n).step_by(nb) {
            let nb = nb.min(s.n - n0);
            let mut l = MatmulLayout {
                m: og,
                n: p,
                k: kg,
                k_inner: kg,
                batches: nb * s.p.groups,
                a_mod: s.p.groups,
                a_zs: og * kg,
                a_rs: kg,
                a_ks: 1,
                b_zs: kg * p,
                b_ks: p,
                b_cs: 1,
                c_zs: og * p,
                c_rs: p,
                c_off: n0 * s.cout * p,
                ..Default::default()
            };
            match &col {
                Some(col) => {
                    im2col::<R>(&client, x, s, n0, nb, col)?;
                    launch_matmul::<R>(&client, &w.handle, w.numel(), col, nb * s.p.groups * kg * p, &out, len, &l, false)?;
                }
                None => {
                    l.b_off = n0 * s.cin * p;
                    launch_matmul::<R>(&client, &w.handle, w.numel(), &x.handle, x.numel(), &out, len, &l, false)?;
                }
            }
        }
        let out = new_array::<R>(out, &[s.n, s.cout, s.oh, s.ow], DType::F32);
        if bias.is_none() && residual.is_none() && !relu {
            return Ok(out);
        }
        channel_affine(&out, None, bias, residual, relu)
    })
}

/// Gradient of the convolution with respect to its input.
fn conv2d_backward_input(dy: &GpuArray, w: &GpuArray, s: &ConvGeom) -> Result<GpuArray> {
    on_runtime!(dy.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.n * s.cin * s.h * s.w;
        let dx = f32_buffer(&client, len)?;
        let nb = s.gpu_chunk();
        let col = f32_buffer(&client, nb * s.p.groups * kg * p)?;
        for n0 in (0..s.n).step_by(nb) {
            let nb = nb.min(s.n - n0);
            let col_len = nb * s.p.groups * kg * p;
            let l = MatmulLayout {
                m: kg,
                n: p,
                k: og,
                k_inner: og,
                batches: nb * s.p.groups,
                a_mod: s.p.groups,
                a_zs: og * kg,
                a_rs: 1,
                a_ks: kg,
                b_off: n0 * s.cout * p,
                b_zs: og * p,
                b_ks: p,
                b_cs: 1,
                c_zs: kg * p,
                c_rs: p,
                ..Default::default()
            };
            launch_matmul::<R>(&client, &w.handle, w.numel(), &dy.handle, dy.numel(), &col, col_len, &l, false)?;
            let chunk_len = nb * s.cin * s.h * s.w;
            let (count, dim) = grid_1d(chunk_len);
            let (meta, chunk) = (s.gpu_meta::<R>(n0)?, u32_of("col2im", chunk_len)?);
            unsafe {
                col2im_kernel::launch_unchecked::<R>(&client, count, dim, arg(&col, col_len), arg(&dx, len), meta, chunk)
            };
        }
        Ok(new_array::<R>(dx, &[s.n, s.cin, s.h, s.w], DType::F32))
    })
}

/// Gradient of the convolution with respect to its weight (images folded into the k axis).
fn conv2d_backward_weight(x: &GpuArray, dy: &GpuArray, s: &ConvGeom) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.cout * kg;
        let dw = f32_buffer(&client, len)?;
        let nb = s.gpu_chunk();
        let col = if s.pointwise() { None } else { Some(f32_buffer(&client, nb * s.p.groups * kg * p)?) };
        for (chunk, n0) in (0..s.n).step_by(nb).enumerate() {
            let nb = nb.min(s.n - n0);
            let mut l = MatmulLayout {
                m: og,
                n: kg,
                k: nb * p,
                k_inner: p,
                batches: s.p.groups,
                a_mod: s.p.groups,
                a_off: n0 * s.cout * p,
                a_zs: og * p,
                a_rs: p,
                a_kos: s.cout * p,
                a_ks: 1,
                b_zs: kg * p,
                b_kos: s.p.groups * kg * p,
                b_ks: 1,
                b_cs: p,
                c_zs: og * kg,
                c_rs: kg,
                ..Default::default()
            };
            match &col {
                Some(col) => {
                    im2col::<R>(&client, x, s, n0, nb, col)?;
                    launch_matmul::<R>(&client, &dy.handle, dy.numel(), col, nb * s.p.groups * kg * p, &dw, len, &l, chunk > 0)?;
                }
                None => {
                    l.b_off = n0 * s.cin * p;
                    launch_matmul::<R>(&client, &dy.handle, dy.numel(), &x.handle, x.numel(), &dw, len, &l, chunk > 0)?;
                }
            }
        }
        if s.n == 0 {
            return zeros(&[s.cout, s.cin / s.p.groups, s.kh, s.kw], R::DEVICE);
        }
        Ok(new_array::<R>(dw, &[s.cout, s.cin / s.p.groups, s.kh, s.kw], DType::F32))
    })
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
        let out = conv2d(
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
        let dx = conv2d_backward_input(grad_output.gpu_f32(OP)?, weight.gpu_f32(OP)?, g)?;
        Ok(Tensor::from_gpu(dx))
    }
    fn conv2d_backward_weight(&self, g: &ConvGeom, input: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_weight";
        let dw = conv2d_backward_weight(input.gpu_f32(OP)?, grad_output.gpu_f32(OP)?, g)?;
        Ok(Tensor::from_gpu(dw))
    }
    fn conv2d_backward_bias(&self, grad_output: &Tensor) -> Result<Tensor> {
        grad_output.sum(&[0, 2, 3], false)
    }
}
