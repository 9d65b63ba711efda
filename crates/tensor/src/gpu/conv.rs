//! The convolution family: im2col into a column buffer (or none for 1x1 stride-1 convs) feeding
//! the matrix-product kernel, col2im as a gather for the input gradient, and the weight gradient
//! as one product over images folded into k. Images go in chunks so the column buffer stays
//! under 64 Mi floats.

use super::batch_norm::channel_affine;
use super::elementwise::{binary, BinaryMap};
use super::matmul::{cubek_enabled, cubek_matmul, launch_matmul, MatmulLayout, Operand};
use super::runtime::{arg, client, f32_buffer, grid_1d, new_array, u32_of, zeros, GpuRuntime};
use super::view::strided_copy;
use super::{Gpu, GpuArray};
use crate::backend::ConvOps;
use crate::error::Result;
use crate::kernels::conv::{ConvEpilogue, ConvGeom, WeightCache};
use crate::{DType, Tensor};
use cubecl::prelude::*;
use cubecl::server::Handle;

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
    pub(super) fn gpu_chunk(&self) -> usize {
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
/// The per-channel scale and bias, residual and ReLU a convolution applies to its output.
#[derive(Clone, Copy, Default)]
struct GpuEpilogue<'a> {
    scale: Option<&'a GpuArray>,
    bias: Option<&'a GpuArray>,
    residual: Option<&'a GpuArray>,
    relu: bool,
}

#[allow(clippy::too_many_arguments)]
fn conv2d(x: &GpuArray, w: &GpuArray, epi: GpuEpilogue<'_>, s: &ConvGeom, images_per_chunk: usize) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.n * s.cout * p;
        let out = f32_buffer(&client, len)?;
        let nb = images_per_chunk;
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
            // Per image and group: out[n, g] (og x p) = w[g] (og x kg) @ col[n, g] (kg x p), the
            // weights broadcast over the images.
            let g = s.p.groups;
            let weights = Operand::contiguous(&w.handle, 0, vec![1, g, og, kg]);
            let dst = Operand::contiguous(&out, l.c_off, vec![nb, g, og, p]);
            match &col {
                Some(col) => {
                    im2col::<R>(&client, x, s, n0, nb, col)?;
                    if !cubek_matmul::<R>(&client, &weights, &Operand::contiguous(col, 0, vec![nb, g, kg, p]), &dst)? {
                        launch_matmul::<R>(&client, &w.handle, w.numel(), col, nb * g * kg * p, &out, len, &l, false)?;
                    }
                }
                None => {
                    l.b_off = n0 * s.cin * p;
                    let input = Operand::contiguous(&x.handle, l.b_off, vec![nb, g, kg, p]);
                    if !cubek_matmul::<R>(&client, &weights, &input, &dst)? {
                        launch_matmul::<R>(&client, &w.handle, w.numel(), &x.handle, x.numel(), &out, len, &l, false)?;
                    }
                }
            }
        }
        let out = new_array::<R>(out, &[s.n, s.cout, s.oh, s.ow], DType::F32);
        if epi.scale.is_none() && epi.bias.is_none() && epi.residual.is_none() && !epi.relu {
            return Ok(out);
        }
        channel_affine(&out, epi.scale, epi.bias, epi.residual, epi.relu)
    })
}

/// Gradient of the convolution with respect to its input.
fn conv2d_backward_input(dy: &GpuArray, w: &GpuArray, s: &ConvGeom, images_per_chunk: usize) -> Result<GpuArray> {
    on_runtime!(dy.device, R => {
        let client = client::<R>()?;
        let (kg, og, p) = (s.k(), s.cout_g, s.out_hw());
        let len = s.n * s.cin * s.h * s.w;
        let dx = f32_buffer(&client, len)?;
        let nb = images_per_chunk;
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
            // Per image and group: col[n, g] (kg x p) = w[g]^T (kg x og) @ dy[n, g] (og x p).
            let g = s.p.groups;
            let weights_t = Operand { handle: &w.handle, offset: 0, shape: vec![1, g, kg, og], strides: vec![g * og * kg, og * kg, 1, kg] };
            let grad = Operand::contiguous(&dy.handle, l.b_off, vec![nb, g, og, p]);
            if !cubek_matmul::<R>(&client, &weights_t, &grad, &Operand::contiguous(&col, 0, vec![nb, g, kg, p]))? {
                launch_matmul::<R>(&client, &w.handle, w.numel(), &dy.handle, dy.numel(), &col, col_len, &l, false)?;
            }
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

/// Gradient of the convolution with respect to its weight: per group, `dw[g] = sum over images
/// of dy[n, g] (og x p) @ col[n, g]^T (p x kg)`, images folded into the k axis. cubek's products
/// take k as one strided axis, so the chunk's gradient and columns are first copied to
/// `[g, og, nb * p]` and `[g, kg, nb * p]` (one image per chunk needs no copy), and chunks after
/// the first add their product; our own kernel reads the folded axis in place and accumulates.
fn conv2d_backward_weight(x: &GpuArray, dy: &GpuArray, s: &ConvGeom, images_per_chunk: usize) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (kg, og, p, g) = (s.k(), s.cout_g, s.out_hw(), s.p.groups);
        let shape = [s.cout, s.cin / g, s.kh, s.kw];
        if s.n == 0 {
            return zeros(&shape, R::DEVICE);
        }
        let len = s.cout * kg;
        let mut dw = new_array::<R>(f32_buffer(&client, len)?, &shape, DType::F32);
        let nb = images_per_chunk;
        let col = if s.pointwise() { None } else { Some(f32_buffer(&client, nb * g * kg * p)?) };
        for (index, n0) in (0..s.n).step_by(nb).enumerate() {
            let nb = nb.min(s.n - n0);
            // The columns of this chunk: the im2col buffer, or the input itself for 1x1 convs.
            let (cols, cols_off) = match &col {
                Some(col) => {
                    im2col::<R>(&client, x, s, n0, nb, col)?;
                    (GpuArray { handle: col.clone(), shape: vec![nb * g * kg * p], dtype: DType::F32, device: R::DEVICE }, 0)
                }
                None => (x.clone(), n0 * s.cin * p),
            };
            if cubek_enabled() {
                let part = if index == 0 { dw.handle.clone() } else { f32_buffer(&client, len)? };
                let ran = if nb == 1 {
                    let grad = Operand::contiguous(&dy.handle, n0 * s.cout * p, vec![g, og, p]);
                    let cols_t = Operand { handle: &cols.handle, offset: cols_off, shape: vec![g, p, kg], strides: vec![kg * p, 1, p] };
                    cubek_matmul::<R>(&client, &grad, &cols_t, &Operand::contiguous(&part, 0, vec![g, og, kg]))?
                } else {
                    let (gp, cp) = (
                        strided_copy(dy, &[g, og, nb, p], &[og * p, p, s.cout * p, 1], n0 * s.cout * p)?,
                        strided_copy(&cols, &[g, kg, nb, p], &[kg * p, p, g * kg * p, 1], cols_off)?,
                    );
                    let grad = Operand::contiguous(&gp.handle, 0, vec![g, og, nb * p]);
                    let cols_t = Operand { handle: &cp.handle, offset: 0, shape: vec![g, nb * p, kg], strides: vec![kg * nb * p, 1, nb * p] };
                    cubek_matmul::<R>(&client, &grad, &cols_t, &Operand::contiguous(&part, 0, vec![g, og, kg]))?
                };
                if ran {
                    if index > 0 {
                        let part = new_array::<R>(part, &shape, DType::F32);
                        dw = binary(&dw, &part, &shape, BinaryMap::Add)?;
                    }
                    continue;
                }
            }
            let l = MatmulLayout {
                m: og,
                n: kg,
                k: nb * p,
                k_inner: p,
                batches: g,
                a_mod: g,
                a_off: n0 * s.cout * p,
                a_zs: og * p,
                a_rs: p,
                a_kos: s.cout * p,
                a_ks: 1,
                b_off: cols_off,
                b_zs: kg * p,
                b_kos: g * kg * p,
                b_ks: 1,
                b_cs: p,
                c_zs: og * kg,
                c_rs: kg,
                ..Default::default()
            };
            launch_matmul::<R>(&client, &dy.handle, dy.numel(), &cols.handle, cols.numel(), &dw.handle, len, &l, index > 0)?;
        }
        Ok(dw)
    })
}

impl ConvOps for Gpu {
    fn conv2d(
        &self,
        g: &ConvGeom,
        input: &Tensor,
        weight: &Tensor,
        epilogue: ConvEpilogue<'_>,
        _cache: Option<&WeightCache>,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        fn on_gpu(t: Option<&Tensor>) -> Result<Option<&GpuArray>> {
            t.map(|t| t.gpu_f32(OP)).transpose()
        }
        let epi = GpuEpilogue {
            scale: on_gpu(epilogue.scale)?,
            bias: on_gpu(epilogue.bias)?,
            residual: on_gpu(epilogue.residual)?,
            relu: epilogue.relu,
        };
        let out = conv2d(input.gpu_f32(OP)?, weight.gpu_f32(OP)?, epi, g, g.gpu_chunk())?;
        Ok(Tensor::from_gpu(out))
    }
    fn conv2d_backward_input(&self, g: &ConvGeom, grad_output: &Tensor, weight: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_input";
        let dx = conv2d_backward_input(grad_output.gpu_f32(OP)?, weight.gpu_f32(OP)?, g, g.gpu_chunk())?;
        Ok(Tensor::from_gpu(dx))
    }
    fn conv2d_backward_weight(&self, g: &ConvGeom, input: &Tensor, grad_output: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv2d_backward_weight";
        let dw = conv2d_backward_weight(input.gpu_f32(OP)?, grad_output.gpu_f32(OP)?, g, g.gpu_chunk())?;
        Ok(Tensor::from_gpu(dw))
    }
    fn conv2d_backward_bias(&self, grad_output: &Tensor) -> Result<Tensor> {
        grad_output.sum(&[0, 2, 3], false)
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    //! The chunked paths (images in several im2col chunks, which only inputs of 64 Mi column
    //! floats reach through the public API) against the host, with one and two images per chunk.
    use super::*;
    use crate::{Conv2dParams, Device};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, &mut crate::Rng::seed(seed))
    }

    fn close(got: &Tensor, want: &Tensor, what: &str) {
        let (g, w) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
        assert_eq!(g.len(), w.len(), "{what}");
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!((a - b).abs() <= 1e-4 * b.abs() + 1e-5 * scale, "{what}: element {i} is {a}, not {b}");
        }
    }

    #[test]
    fn chunked_convolutions_match_the_host() {
        if let Err(e) = Device::Wgpu.check() {
            assert!(std::env::var("RESNET_REQUIRE_GPU").as_deref() != Ok("1"), "RESNET_REQUIRE_GPU=1 but {e}");
            eprintln!("skipped: {e}");
            return;
        }
        for (ksize, groups) in [(3, 1), (1, 2), (3, 2)] {
            let p = Conv2dParams::new().padding(ksize / 2).groups(groups);
            let (xs, ws) = ([5, 2 * groups, 6, 5], [3 * groups, 2, ksize, ksize]);
            let geom = ConvGeom::new("conv2d", &xs, &ws, p).unwrap();
            let (x, w) = (randn(&xs, 1), randn(&ws, 2));
            let dy = randn(&[5, 3 * groups, 6, 5], 3);
            let on_gpu = |t: &Tensor| t.to_device(Device::Wgpu).unwrap();
            let (gx, gw, gdy) = (on_gpu(&x), on_gpu(&w), on_gpu(&dy));
            let (gx, gw, gdy) = (gx.gpu_f32("t").unwrap(), gw.gpu_f32("t").unwrap(), gdy.gpu_f32("t").unwrap());
            for images in [1, 2] {
                let what = format!("{ksize}x{ksize}, {groups} groups, {images} images per chunk");
                let out = conv2d(gx, gw, GpuEpilogue::default(), &geom, images).unwrap();
                close(&Tensor::from_gpu(out), &crate::conv2d(&x, &w, None, p).unwrap(), &format!("forward, {what}"));
                let dx = conv2d_backward_input(gdy, gw, &geom, images).unwrap();
                close(
                    &Tensor::from_gpu(dx),
                    &crate::conv2d_backward_input(&dy, &w, &xs, p).unwrap(),
                    &format!("input gradient, {what}"),
                );
                let dw = conv2d_backward_weight(gx, gdy, &geom, images).unwrap();
                close(
                    &Tensor::from_gpu(dw),
                    &crate::conv2d_backward_weight(&x, &dy, &ws, p).unwrap(),
                    &format!("weight gradient, {what}"),
                );
            }
        }
    }
}
