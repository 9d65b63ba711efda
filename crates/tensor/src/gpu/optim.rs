//! The optimizer family: one SGD step and one Adam / AdamW step per parameter, elementwise, in
//! torch's order of operations, into new buffers (the inputs are left as they are).

use super::runtime::{arg, client, f32_buffer, grid_1d, new_array};
use super::{Gpu, GpuArray};
use crate::backend::OptimOps;
use crate::error::Result;
use crate::kernels::optim::{AdamScalars, SgdScalars};
use crate::{DType, Tensor};
use cubecl::prelude::*;

/// SGD's hyper-parameters, as [`SgdScalars`] names them.
#[derive(CubeLaunch, CubeType)]
struct SgdMeta {
    lr: f32,
    wd: f32,
    /// The momentum factor.
    m: f32,
    /// `1 - dampening`.
    damp: f32,
}

/// Adam's hyper-parameters for one step, as [`AdamScalars`] names them.
#[derive(CubeLaunch, CubeType)]
struct AdamMeta {
    b1: f32,
    b2: f32,
    one_b1: f32,
    one_b2: f32,
    eps: f32,
    /// Adam's L2 penalty (0 for AdamW).
    l2: f32,
    /// AdamW's decoupled decay factor (1 for Adam).
    shrink: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    bc2: f32,
}

/// One SGD step (torch.optim.SGD's order of operations). `first`: a parameter's first step
/// with momentum (the buffer starts as the direction).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn sgd_kernel(
    param: &Array<f32>,
    grad: &Array<f32>,
    buf: &Array<f32>,
    out_param: &mut Array<f32>,
    out_buf: &mut Array<f32>,
    s: SgdMeta,
    #[comptime] has_momentum: bool,
    #[comptime] nesterov: bool,
    #[comptime] first: bool,
) {
    let i = ABSOLUTE_POS;
    if i < out_param.len() {
        let p = param[i];
        let mut d = select(s.wd != 0.0, grad[i] + s.wd * p, grad[i]);
        if comptime![has_momentum] {
            let mut b = d;
            if comptime![!first] {
                b = buf[i] * s.m + s.damp * d;
            }
            out_buf[i] = b;
            if comptime![nesterov] {
                d += s.m * b;
            } else {
                d = b;
            }
        }
        out_param[i] = p - s.lr * d;
    }
}

/// One Adam / AdamW step (torch's single-tensor order: decay, moments, `addcdiv`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn adam_kernel(
    param: &Array<f32>,
    grad: &Array<f32>,
    m1: &Array<f32>,
    m2: &Array<f32>,
    out_param: &mut Array<f32>,
    out_m1: &mut Array<f32>,
    out_m2: &mut Array<f32>,
    s: AdamMeta,
) {
    let i = ABSOLUTE_POS;
    if i < out_param.len() {
        let p = select(s.shrink != 1.0, param[i] * s.shrink, param[i]);
        let g = select(s.l2 != 0.0, grad[i] + s.l2 * p, grad[i]);
        let a = m1[i] * s.b1 + s.one_b1 * g;
        let b = m2[i] * s.b2 + s.one_b2 * (g * g);
        out_m1[i] = a;
        out_m2[i] = b;
        let denom = b.sqrt() / s.bc2 + s.eps;
        out_param[i] = p + (-s.step_size) * (a / denom);
    }
}

/// The new parameter and, with momentum, the new buffer.
fn sgd_step(
    param: &GpuArray,
    grad: &GpuArray,
    buf: Option<&GpuArray>,
    s: &SgdScalars,
) -> Result<(GpuArray, Option<GpuArray>)> {
    on_runtime!(param.device, R => {
        let client = client::<R>()?;
        let n = param.numel();
        let has_momentum = s.m != 0.0;
        let buf_len = if has_momentum { n } else { 1 };
        let (out_p, out_b) = (f32_buffer(&client, n)?, f32_buffer(&client, buf_len)?);
        if n > 0 {
            let (count, dim) = grid_1d(n);
            // Without a buffer the kernel never reads one; the parameter stands in.
            let old_b = buf.map_or(&param.handle, |b| &b.handle);
            let meta = SgdMetaLaunch::new(s.lr, s.wd, s.m, s.damp);
            unsafe {
                sgd_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&param.handle, n),
                    arg(&grad.handle, n),
                    arg(old_b, n),
                    arg(&out_p, n),
                    arg(&out_b, buf_len),
                    meta,
                    has_momentum,
                    s.nesterov,
                    buf.is_none(),
                )
            };
        }
        let new_buf = has_momentum.then(|| new_array::<R>(out_b, &param.shape, DType::F32));
        Ok((new_array::<R>(out_p, &param.shape, DType::F32), new_buf))
    })
}

/// The new parameter and both new moments.
fn adam_step(
    param: &GpuArray,
    grad: &GpuArray,
    m1: &GpuArray,
    m2: &GpuArray,
    s: &AdamScalars,
) -> Result<(GpuArray, GpuArray, GpuArray)> {
    on_runtime!(param.device, R => {
        let client = client::<R>()?;
        let n = param.numel();
        let (p, a, b) = (f32_buffer(&client, n)?, f32_buffer(&client, n)?, f32_buffer(&client, n)?);
        if n > 0 {
            let (count, dim) = grid_1d(n);
            let meta = AdamMetaLaunch::new(s.b1, s.b2, s.one_b1, s.one_b2, s.eps, s.l2, s.shrink, s.step_size, s.bc2);
            unsafe {
                adam_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&param.handle, n),
                    arg(&grad.handle, n),
                    arg(&m1.handle, n),
                    arg(&m2.handle, n),
                    arg(&p, n),
                    arg(&a, n),
                    arg(&b, n),
                    meta,
                )
            };
        }
        let shape = &param.shape;
        Ok((new_array::<R>(p, shape, DType::F32), new_array::<R>(a, shape, DType::F32), new_array::<R>(b, shape, DType::F32)))
    })
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
        let b = buf.as_ref().map(|b| b.gpu_f32(OP)).transpose()?;
        let (p, b) = sgd_step(param.gpu_f32(OP)?, grad.gpu_f32(OP)?, b, s)?;
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
        let (m1, m2) = match (m1, m2) {
            (Some(a), Some(b)) => (a, b),
            (a, b) => {
                let zeros = Tensor::zeros_on(param.shape(), param.device())?;
                (a.unwrap_or_else(|| zeros.clone()), b.unwrap_or(zeros))
            }
        };
        let (p, a, b) = adam_step(param.gpu_f32(OP)?, grad.gpu_f32(OP)?, m1.gpu_f32(OP)?, m2.gpu_f32(OP)?, s)?;
        Ok((Tensor::from_gpu(p), Tensor::from_gpu(a), Tensor::from_gpu(b)))
    }
}
