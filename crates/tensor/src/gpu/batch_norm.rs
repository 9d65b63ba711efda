//! The batch-norm family: per-channel statistics and gradient sums (one cube per channel, a
//! shared-memory tree, so sums repeat bit for bit), the per-channel affine map that applies a
//! norm (and serves as the conv epilogue: bias, residual, ReLU), and the training-mode input
//! gradient. The per-channel arithmetic between them is tensor ops on the device.

use super::elementwise::{unary, UnaryMap};
use super::runtime::{arg, client, f32_buffer, grid_1d, new_array, u32_of, BLOCK};
use super::{Gpu, GpuArray};
use crate::backend::NormOps;
use crate::error::{bad_shape, Result};
use crate::kernels::batch_norm::{BatchNormGrads, BatchNormTrain};
use crate::{DType, Tensor};
use cubecl::prelude::*;

/// `out[n, c, ..] = x[n, c, ..] * scale[c] + shift[c]` (+ residual) (then ReLU), each part
/// optional (a comptime flag; an absent array is never read): batch norm's normalisation, a
/// conv's bias, and the fused conv + BN (+ add) + ReLU epilogue.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn channel_affine_kernel(
    x: &Array<f32>,
    scale: &Array<f32>,
    shift: &Array<f32>,
    residual: &Array<f32>,
    out: &mut Array<f32>,
    channels: u32,
    spatial: u32,
    #[comptime] has_scale: bool,
    #[comptime] has_shift: bool,
    #[comptime] has_residual: bool,
    #[comptime] relu: bool,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let ch = ((i as u32 / spatial) % channels) as usize;
        let mut v = x[i];
        if comptime![has_scale] {
            v *= scale[ch];
        }
        if comptime![has_shift] {
            v += shift[ch];
        }
        if comptime![has_residual] {
            v += residual[i];
        }
        if comptime![relu] {
            v = select(v < 0.0, 0.0, v);
        }
        out[i] = v;
    }
}

/// Per-channel mean and biased variance of `[n, c, spatial]` (two passes, one cube per channel).
#[cube(launch_unchecked)]
fn channel_stats_kernel(
    x: &Array<f32>,
    mean: &mut Array<f32>,
    var: &mut Array<f32>,
    n: u32,
    channels: u32,
    spatial: u32,
) {
    let ch = CUBE_POS as u32;
    let t = UNIT_POS;
    let count = n * spatial;
    let mut shared = SharedMemory::<f32>::new(256usize);
    let mut acc = f32::new(0.0);
    let mut j = t;
    while j < count {
        acc += x[((j / spatial) * channels * spatial + ch * spatial + j % spatial) as usize];
        j += BLOCK;
    }
    let mu = block_sum(acc, &mut shared, t) / f32::cast_from(count);
    let mut sq = f32::new(0.0);
    let mut j = t;
    while j < count {
        let d = x[((j / spatial) * channels * spatial + ch * spatial + j % spatial) as usize] - mu;
        sq += d * d;
        j += BLOCK;
    }
    let v = block_sum(sq, &mut shared, t) / f32::cast_from(count);
    if t == 0 {
        mean[ch as usize] = mu;
        var[ch as usize] = v;
    }
}

/// Per-channel `sum(dy)` and `sum(dy * (x - mean) * invstd)` of `[n, c, spatial]`.
#[cube(launch_unchecked)]
fn channel_grad_sums_kernel(
    dy: &Array<f32>,
    x: &Array<f32>,
    mean: &Array<f32>,
    invstd: &Array<f32>,
    sum_dy: &mut Array<f32>,
    sum_dy_xhat: &mut Array<f32>,
    n: u32,
    channels: u32,
    spatial: u32,
) {
    let ch = CUBE_POS as u32;
    let t = UNIT_POS;
    let count = n * spatial;
    let mu = mean[ch as usize];
    let is = invstd[ch as usize];
    let mut shared = SharedMemory::<f32>::new(256usize);
    let mut a = f32::new(0.0);
    let mut b = f32::new(0.0);
    let mut j = t;
    while j < count {
        let at = ((j / spatial) * channels * spatial + ch * spatial + j % spatial) as usize;
        let g = dy[at];
        a += g;
        b += g * (x[at] - mu);
        j += BLOCK;
    }
    let sa = block_sum(a, &mut shared, t);
    let sb = block_sum(b, &mut shared, t);
    if t == 0 {
        sum_dy[ch as usize] = sa;
        sum_dy_xhat[ch as usize] = sb * is;
    }
}

/// Batch norm's input gradient in training:
/// `dx = k * (dy - sum_dy / m - xhat * sum_dy_xhat / m)` with `k = gamma * invstd`.
#[cube(launch_unchecked)]
fn bn_backward_input_kernel(
    dy: &Array<f32>,
    x: &Array<f32>,
    mean: &Array<f32>,
    invstd: &Array<f32>,
    gamma: &Array<f32>,
    sum_dy: &Array<f32>,
    sum_dy_xhat: &Array<f32>,
    dx: &mut Array<f32>,
    channels: u32,
    spatial: u32,
    inv_count: f32,
) {
    let i = ABSOLUTE_POS;
    if i < dx.len() {
        let ch = ((i as u32 / spatial) % channels) as usize;
        let is = invstd[ch];
        let xhat = (x[i] - mean[ch]) * is;
        dx[i] = gamma[ch] * is * (dy[i] - sum_dy[ch] * inv_count - xhat * sum_dy_xhat[ch] * inv_count);
    }
}

/// Sum over a cube's units through shared memory; every unit gets the total.
#[cube]
fn block_sum(v: f32, shared: &mut SharedMemory<f32>, t: u32) -> f32 {
    shared[t as usize] = v;
    sync_cube();
    #[unroll]
    for level in 0..8u32 {
        let half = 128u32 >> level;
        if t < half {
            shared[t as usize] = shared[t as usize] + shared[(t + half) as usize];
        }
        sync_cube();
    }
    let total = shared[0];
    sync_cube();
    total
}

/// `x * scale[c] + shift[c]` (+ residual) (then ReLU) over `[n, c, ...]`, each part optional.
pub(super) fn channel_affine(
    x: &GpuArray,
    scale: Option<&GpuArray>,
    shift: Option<&GpuArray>,
    residual: Option<&GpuArray>,
    relu: bool,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = x.numel();
        let channels = x.shape.get(1).copied().unwrap_or(1);
        let spatial: usize = x.shape.iter().skip(2).product();
        let out = f32_buffer(&client, n)?;
        if n > 0 {
            let (count, dim) = grid_1d(n);
            // An absent operand is bound to `x` (never read: its flag compiles the read out).
            let or_x = |a: Option<&GpuArray>, len: usize| a.map_or_else(|| arg(&x.handle, n), |a| arg(&a.handle, len));
            unsafe {
                channel_affine_kernel::launch_unchecked::<R>(
                    &client,
                    count,
                    dim,
                    arg(&x.handle, n),
                    or_x(scale, channels),
                    or_x(shift, channels),
                    or_x(residual, n),
                    arg(&out, n),
                    u32_of("channel_affine", channels)?,
                    u32_of("channel_affine", spatial.max(1))?,
                    scale.is_some(),
                    shift.is_some(),
                    residual.is_some(),
                    relu,
                )
            };
        }
        Ok(new_array::<R>(out, &x.shape, DType::F32))
    })
}

/// Per-channel mean and biased variance of `[n, c, ...]`.
fn channel_stats(x: &GpuArray) -> Result<(GpuArray, GpuArray)> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (n, c) = (x.shape[0], x.shape[1]);
        let spatial: usize = x.shape.iter().skip(2).product();
        let (mean, var) = (f32_buffer(&client, c)?, f32_buffer(&client, c)?);
        unsafe {
            channel_stats_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(u32_of("batch_norm", c)?, 1, 1),
                CubeDim { x: BLOCK, y: 1, z: 1 },
                arg(&x.handle, x.numel()),
                arg(&mean, c),
                arg(&var, c),
                u32_of("batch_norm", n)?,
                u32_of("batch_norm", c)?,
                u32_of("batch_norm", spatial)?,
            )
        };
        Ok((new_array::<R>(mean, &[c], DType::F32), new_array::<R>(var, &[c], DType::F32)))
    })
}

/// Per-channel `sum(dy)` and `sum(dy * xhat)`.
fn channel_grad_sums(dy: &GpuArray, x: &GpuArray, mean: &GpuArray, invstd: &GpuArray) -> Result<(GpuArray, GpuArray)> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let (n, c) = (x.shape[0], x.shape[1]);
        let spatial: usize = x.shape.iter().skip(2).product();
        let (sdy, sdyx) = (f32_buffer(&client, c)?, f32_buffer(&client, c)?);
        unsafe {
            channel_grad_sums_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(u32_of("batch_norm", c)?, 1, 1),
                CubeDim { x: BLOCK, y: 1, z: 1 },
                arg(&dy.handle, dy.numel()),
                arg(&x.handle, x.numel()),
                arg(&mean.handle, c),
                arg(&invstd.handle, c),
                arg(&sdy, c),
                arg(&sdyx, c),
                u32_of("batch_norm", n)?,
                u32_of("batch_norm", c)?,
                u32_of("batch_norm", spatial)?,
            )
        };
        Ok((new_array::<R>(sdy, &[c], DType::F32), new_array::<R>(sdyx, &[c], DType::F32)))
    })
}

#[allow(clippy::too_many_arguments)]
fn bn_backward_input(
    dy: &GpuArray,
    x: &GpuArray,
    mean: &GpuArray,
    invstd: &GpuArray,
    gamma: &GpuArray,
    sum_dy: &GpuArray,
    sum_dy_xhat: &GpuArray,
) -> Result<GpuArray> {
    on_runtime!(x.device, R => {
        let client = client::<R>()?;
        let n = x.numel();
        let c = x.shape[1];
        let spatial: usize = x.shape.iter().skip(2).product();
        let count = x.shape[0] * spatial;
        let dx = f32_buffer(&client, n)?;
        let (cc, dim) = grid_1d(n);
        unsafe {
            bn_backward_input_kernel::launch_unchecked::<R>(
                &client,
                cc,
                dim,
                arg(&dy.handle, n),
                arg(&x.handle, n),
                arg(&mean.handle, c),
                arg(&invstd.handle, c),
                arg(&gamma.handle, c),
                arg(&sum_dy.handle, c),
                arg(&sum_dy_xhat.handle, c),
                arg(&dx, n),
                u32_of("batch_norm", c)?,
                u32_of("batch_norm", spatial.max(1))?,
                1.0 / count as f32,
            )
        };
        Ok(new_array::<R>(dx, &x.shape, DType::F32))
    })
}

impl NormOps for Gpu {
    fn batch_norm_eval_scale_shift(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        c: usize,
    ) -> Result<(Tensor, Tensor)> {
        eval_affine("batch_norm_eval_scale_shift", c, weight, bias, running_mean, running_var, eps)
    }
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
        let out = channel_affine(input.gpu_f32(OP)?, Some(scale.gpu_f32(OP)?), Some(shift.gpu_f32(OP)?), None, false)?;
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
    Ok(Tensor::from_gpu(unary(var.gpu_f32(op)?, UnaryMap::RsqrtEps, eps as f32, 0.0)?))
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
    let (mean, var) = channel_stats(x)?;
    let (mean, var) = (Tensor::from_gpu(mean), Tensor::from_gpu(var));
    let invstd = rsqrt_eps(OP, &var, eps)?;
    let gamma = channel(OP, weight, c, 1.0, device)?;
    let beta = channel(OP, bias, c, 0.0, device)?;
    let scale = gamma.mul(&invstd)?;
    let shift = beta.sub(&mean.mul(&scale)?)?;
    let output = Tensor::from_gpu(channel_affine(x, Some(scale.gpu_f32(OP)?), Some(shift.gpu_f32(OP)?), None, false)?);
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
    let (sum_dy, sum_dy_xhat) = channel_grad_sums(dy, x, m, is)?;
    let dx = bn_backward_input(dy, x, m, is, gamma.gpu_f32(OP)?, &sum_dy, &sum_dy_xhat)?;
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
    let dx = channel_affine(dy, Some(scale.gpu_f32(OP)?), None, None, false)?;
    let (sum_dy, sum_dy_xhat) = channel_grad_sums(dy, input.gpu_f32(OP)?, mean.gpu_f32(OP)?, invstd.gpu_f32(OP)?)?;
    Ok(BatchNormGrads {
        input: Tensor::from_gpu(dx),
        weight: Tensor::from_gpu(sum_dy_xhat),
        bias: Tensor::from_gpu(sum_dy),
    })
}
