//! Batch normalisation over the channel dimension of `[N, C, ...]`: training (batch statistics,
//! running-stat update with the unbiased variance), evaluation (running statistics), both
//! backwards, and folding an eval-mode batch-norm into the preceding conv for inference.
//!
//! Statistics are accumulated in f64 per channel; channels are the unit of parallel work.

use super::matmul::SyncPtr;
use super::written_by;
use crate::backend::{backend_for, Host, NormOps};
use crate::error::{bad_shape, invalid, mismatch, Result};
use crate::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `(batch, channels, elements per channel per sample)` of an `[N, C, ...]` tensor.
fn layout(op: &'static str, shape: &[usize]) -> Result<(usize, usize, usize)> {
    if shape.len() < 2 {
        return Err(bad_shape(op, shape, "batch norm needs an input of at least 2 dimensions [N, C, ...]"));
    }
    Ok((shape[0], shape[1], shape[2..].iter().product()))
}

fn channel_vec(op: &'static str, t: Option<&Tensor>, c: usize, default: f32) -> Result<Vec<f32>> {
    match t {
        None => Ok(vec![default; c]),
        Some(t) if t.shape() == [c] => Ok(t.to_vec_f32()?),
        Some(t) => Err(bad_shape(op, t.shape(), format!("a per-channel parameter must be [{c}]"))),
    }
}

/// Accumulators per sum: independent chains, so the additions vectorise (two AVX-512 registers
/// of f64) instead of waiting on one another; a fixed order, so results are deterministic.
const LANES: usize = 16;

/// Adds `fs(a[i], b[i])` into `s` and `fq(a[i], b[i])` into `q` for every `i`, lane
/// `i % LANES` (the tail into the first lanes): both sums in one pass over the data, over
/// fixed-size chunks, one plain loop per sum (so that the loads and the conversions to f64
/// vectorise; with both terms from one closure, or indexed through it, they stayed scalar).
#[inline(always)]
fn accumulate(
    (s, q): (&mut [f64; LANES], &mut [f64; LANES]),
    a: &[f32],
    b: &[f32],
    fs: impl Fn(f32, f32) -> f64,
    fq: impl Fn(f32, f32) -> f64,
) {
    let b = &b[..a.len()];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    // Local accumulators: held in registers through the loop.
    let (mut ls, mut lq) = (*s, *q);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            ls[l] += fs(xa[l], xb[l]);
        }
        for l in 0..LANES {
            lq[l] += fq(xa[l], xb[l]);
        }
    }
    (*s, *q) = (ls, lq);
    for (l, (&va, &vb)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        s[l] += fs(va, vb);
        q[l] += fq(va, vb);
    }
}

/// The lanes' total, added pairwise.
#[inline(always)]
fn total(acc: &[f64; LANES]) -> f64 {
    let mut v = *acc;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

/// Two sums, each still split over its [`LANES`] accumulators. The lanes are added up by the
/// caller, outside the vectorised function: with the final additions in the same function the
/// compiler vectorised those and left the loop over the data scalar.
type Lanes2 = ([f64; LANES], [f64; LANES]);

/// `(Σ d, Σ d²)` of `d = x - pivot` in f64: a channel's shifted sums, from which its mean and
/// variance follow in one pass over the data (with the pivot a value of the channel, the
/// subtraction `Σd²/n - (Σd/n)²` stays well conditioned).
#[inline(always)]
fn shifted_sums_impl<const FMA: bool>(x: &[f32], pivot: f32) -> Lanes2 {
    let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
    let p = pivot as f64;
    let shifted = |v: f32| v as f64 - p;
    accumulate((&mut s, &mut q), x, x, |v, _| shifted(v), |v, _| shifted(v) * shifted(v));
    (s, q)
}

/// `(Σ dy, Σ dy (x - mean))` in f64: the two sums of batch norm's backward pass.
#[inline(always)]
fn grad_sums_impl<const FMA: bool>(dy: &[f32], x: &[f32], mean: f64) -> Lanes2 {
    let (mut s, mut q) = ([0f64; LANES], [0f64; LANES]);
    accumulate((&mut s, &mut q), dy, x, |g, _| g as f64, |g, v| g as f64 * (v as f64 - mean));
    (s, q)
}

/// `out = x * scale + shift`.
#[inline(always)]
fn affine_impl<const FMA: bool>(out: &mut [MaybeUninit<f32>], x: &[f32], scale: f32, shift: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        o.write(v * scale + shift);
    }
}

/// `out = relu?(x * scale + shift + residual?)`: a training-mode batch norm's output with what
/// follows it in a ResNet block (the residual add, the ReLU) in the same pass, in the order and
/// with the rounding of the separate ops.
#[inline(always)]
fn affine_finish_impl<const RESIDUAL: bool, const RELU: bool, const FMA: bool>(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    residual: &[f32],
    scale: f32,
    shift: f32,
) {
    let residual = if RESIDUAL { &residual[..x.len()] } else { residual };
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let mut y = v * scale + shift;
        if RESIDUAL {
            y += residual[i];
        }
        o.write(if RELU { super::relu(y) } else { y });
    }
}

/// `dy` where the forward output `y` is positive, else 0 (ReLU's backward), into `out`.
#[inline(always)]
fn relu_mask_impl<const FMA: bool>(out: &mut [f32], dy: &[f32], y: &[f32]) {
    let y = &y[..dy.len()];
    for ((o, &g), &v) in out.iter_mut().zip(dy).zip(y) {
        *o = if v > 0.0 { g } else { 0.0 };
    }
}

/// [`relu_mask_impl`] with the forward output recomputed from the input, `y = x * scale +
/// shift` (the very operations of [`affine_finish_impl`] without a residual, so the same
/// values): one stream fewer to read than the output itself.
#[inline(always)]
fn relu_mask_from_input_impl<const FMA: bool>(out: &mut [f32], dy: &[f32], x: &[f32], scale: f32, shift: f32) {
    let x = &x[..dy.len()];
    for ((o, &g), &v) in out.iter_mut().zip(dy).zip(x) {
        *o = if v * scale + shift > 0.0 { g } else { 0.0 };
    }
}

/// `dx = k (dy - a - (x - mean) invstd b)` with `[mean, invstd, k, a, b]`: batch norm's input
/// gradient in training mode (`a` the mean of `dy`, `b` that of `dy x̂`, `k = gamma invstd`).
#[inline(always)]
fn train_grad_impl<const FMA: bool>(dx: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], coefficients: [f32; 5]) {
    let [mean, invstd, k, a, b] = coefficients;
    let x = &x[..dy.len()];
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        let xhat = (v - mean) * invstd;
        o.write(k * (g - a - xhat * b));
    }
}

crate::multiversion! {
    /// [`shifted_sums_impl`] for the CPU's vector extension.
    unsafe fn shifted_sum_lanes(x: &[f32], pivot: f32) -> Lanes2 = shifted_sums_impl;
}
crate::multiversion! {
    /// [`grad_sums_impl`] for the CPU's vector extension.
    unsafe fn grad_sum_lanes(dy: &[f32], x: &[f32], mean: f64) -> Lanes2 = grad_sums_impl;
}
crate::multiversion! {
    /// [`affine_impl`] for the CPU's vector extension.
    unsafe fn affine(out: &mut [MaybeUninit<f32>], x: &[f32], scale: f32, shift: f32) = affine_impl;
}
crate::multiversion! {
    /// [`affine_finish_impl`] for the CPU's vector extension.
    unsafe fn affine_finish<const RESIDUAL: bool, const RELU: bool>(
        out: &mut [MaybeUninit<f32>],
        x: &[f32],
        residual: &[f32],
        scale: f32,
        shift: f32,
    ) = affine_finish_impl;
}
crate::multiversion! {
    /// [`relu_mask_impl`] for the CPU's vector extension.
    unsafe fn relu_mask(out: &mut [f32], dy: &[f32], y: &[f32]) = relu_mask_impl;
}
crate::multiversion! {
    /// [`relu_mask_from_input_impl`] for the CPU's vector extension.
    unsafe fn relu_mask_from_input(out: &mut [f32], dy: &[f32], x: &[f32], scale: f32, shift: f32) =
        relu_mask_from_input_impl;
}
crate::multiversion! {
    /// [`train_grad_impl`] for the CPU's vector extension.
    unsafe fn train_grad(dx: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], coefficients: [f32; 5]) = train_grad_impl;
}

/// Runs `f(channel, values of that channel in sample n)` for every sample, channels in parallel.
fn per_channel<T: Send>(
    c: usize,
    s: usize,
    f: impl Fn(usize, &dyn Fn(usize) -> std::ops::Range<usize>) -> T + Sync,
) -> Vec<T> {
    (0..c).into_par_iter().map(|ci| f(ci, &|ni| (ni * c + ci) * s..(ni * c + ci + 1) * s)).collect()
}

/// Elements `r` of the buffer behind `ptr`, as slots to write.
///
/// # Safety
/// `r` lies inside the buffer, and no other live slice overlaps it.
unsafe fn uninit_range<'a>(ptr: SyncPtr, r: std::ops::Range<usize>) -> &'a mut [MaybeUninit<f32>] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(ptr.get().add(r.start).cast(), r.len()) }
}

/// How batch norm's backward finds where the ReLU after it passed the gradient.
#[derive(Clone, Copy)]
enum ReluMask<'a> {
    /// No ReLU followed.
    None,
    /// Where the forward output (with the residual in it) is positive.
    Output(&'a [f32]),
    /// Where `x * scale + shift` is, per channel: the output recomputed, when no residual was
    /// added (`(scale, shift)` per channel, as the forward pass used them).
    Input(&'a [(f32, f32)]),
}

/// Channel `ci`'s gradient over range `r`: `dy`, or `dy` masked by the ReLU (into `buf`).
fn through_relu<'a>(
    dy: &'a [f32],
    x: &[f32],
    mask: ReluMask<'_>,
    ci: usize,
    r: std::ops::Range<usize>,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let dy = &dy[r.clone()];
    match mask {
        ReluMask::None => dy,
        ReluMask::Output(y) => {
            buf.resize(dy.len(), 0.0);
            // SAFETY: plain slice arithmetic; the features are the dispatcher's.
            unsafe { relu_mask(buf, dy, &y[r]) };
            buf
        }
        ReluMask::Input(coefficients) => {
            let (scale, shift) = coefficients[ci];
            buf.resize(dy.len(), 0.0);
            // SAFETY: as above.
            unsafe { relu_mask_from_input(buf, dy, &x[r], scale, shift) };
            buf
        }
    }
}

/// Whether every tensor given is on the host: where the fused kernels run (elsewhere the
/// fused functions compose the device's separate ops).
fn all_on_host(tensors: &[Option<&Tensor>]) -> bool {
    tensors.iter().flatten().all(|t| t.device() == crate::Device::Cpu)
}

/// A training-mode batch norm's per-channel `(scale, shift)`, `y = x * scale + shift`, from
/// the saved (f32) statistics, in f64: the forward pass and the ReLU mask of the backward
/// pass compute the same values from them.
fn affine_coefficients(gamma: f32, beta: f32, mean: f32, invstd: f32) -> (f32, f32) {
    let k = gamma as f64 * invstd as f64;
    (k as f32, (beta as f64 - mean as f64 * k) as f32)
}

/// What a training-mode batch norm returns.
#[derive(Debug, Clone)]
pub struct BatchNormTrain {
    /// The normalised output.
    pub output: Tensor,
    /// Batch mean per channel (saved for backward).
    pub mean: Tensor,
    /// `1 / sqrt(biased batch variance + eps)` per channel (saved for backward).
    pub invstd: Tensor,
    /// `(1 - momentum) * running_mean + momentum * mean`, when running stats were given.
    pub running_mean: Option<Tensor>,
    /// `(1 - momentum) * running_var + momentum * unbiased_var`, when running stats were given.
    pub running_var: Option<Tensor>,
}

/// `torch.nn.functional.batch_norm(training=True)`. `weight`/`bias` default to 1/0; the
/// running statistics, when given, are returned updated (PyTorch updates them in place).
pub fn batch_norm_train(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: Option<(&Tensor, &Tensor)>,
    momentum: f64,
    eps: f64,
) -> Result<BatchNormTrain> {
    const OP: &str = "batch_norm_train";
    let (n, c, s) = layout(OP, input.shape())?;
    let count = n * s;
    if count <= 1 {
        return Err(bad_shape(OP, input.shape(), "training needs more than one value per channel"));
    }
    backend_for(OP, &[Some(input), weight, bias, running.map(|r| r.0), running.map(|r| r.1)])?.batch_norm_train(
        input,
        weight,
        bias,
        running,
        momentum,
        eps,
        (n, c, s),
    )
}

/// [`batch_norm_train`] followed by `+ residual` (same shape as the input) and ReLU, each
/// optional, as a ResNet block applies them: `relu(bn(x) + residual)`. On the host the three
/// are one pass over the output (the separate ops read and wrote it two more times); the
/// result is bitwise that of the separate ops. Backward: [`batch_norm_train_finish_backward`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_finish(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running: Option<(&Tensor, &Tensor)>,
    momentum: f64,
    eps: f64,
    residual: Option<&Tensor>,
    relu: bool,
) -> Result<BatchNormTrain> {
    const OP: &str = "batch_norm_train_finish";
    if let Some(r) = residual {
        if r.shape() != input.shape() {
            return Err(mismatch("batch_norm_train_finish residual", r.shape(), input.shape()));
        }
    }
    if !all_on_host(&[Some(input), weight, bias, running.map(|r| r.0), running.map(|r| r.1), residual]) {
        let mut out = batch_norm_train(input, weight, bias, running, momentum, eps)?;
        if let Some(r) = residual {
            out.output = out.output.add(r)?;
        }
        if relu {
            out.output = out.output.relu()?;
        }
        return Ok(out);
    }
    let (n, c, s) = layout(OP, input.shape())?;
    if n * s <= 1 {
        return Err(bad_shape(OP, input.shape(), "training needs more than one value per channel"));
    }
    let r = residual.map(|r| r.f32_data(OP)).transpose()?;
    Host.train_forward(OP, input, weight, bias, running, momentum, eps, (n, c, s), r.as_deref(), relu)
}

/// The backward of [`batch_norm_train_finish`], from the saved batch `mean` and `invstd` and
/// the forward `output`: the gradients of batch norm's input, weight and bias, and (when a
/// `residual` was added) of the residual. On the host the ReLU's mask is applied on the fly
/// inside batch norm's two passes over the data — recomputed from the input when there was no
/// residual — and the residual's gradient is written in the first of them; bitwise the
/// separate ops' gradients.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_finish_backward(
    grad_output: &Tensor,
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
    output: &Tensor,
    residual: bool,
    relu: bool,
) -> Result<(BatchNormGrads, Option<Tensor>)> {
    const OP: &str = "batch_norm_train_finish_backward";
    for t in [grad_output, output] {
        if t.shape() != input.shape() {
            return Err(mismatch(OP, t.shape(), input.shape()));
        }
    }
    let host = all_on_host(&[Some(grad_output), Some(input), weight, bias, Some(mean), Some(invstd), Some(output)]);
    if !host || !relu {
        let g = if relu { grad_output.relu_backward(output)? } else { grad_output.clone() };
        let grads = batch_norm_train_backward(&g, input, weight, mean, invstd)?;
        return Ok((grads, residual.then_some(g)));
    }
    let (n, c, s) = layout(OP, input.shape())?;
    let (y, coefficients);
    let mask = if residual {
        y = output.f32_data(OP)?;
        ReluMask::Output(&y)
    } else {
        let (gamma, beta) = (channel_vec(OP, weight, c, 1.0)?, channel_vec(OP, bias, c, 0.0)?);
        let (m, is) = (channel_vec(OP, Some(mean), c, 0.0)?, channel_vec(OP, Some(invstd), c, 1.0)?);
        coefficients = (0..c).map(|i| affine_coefficients(gamma[i], beta[i], m[i], is[i])).collect::<Vec<_>>();
        ReluMask::Input(&coefficients)
    };
    Host.train_backward(OP, grad_output, input, weight, mean, invstd, (n, c, s), mask, residual)
}

/// `torch.nn.functional.batch_norm(training=False)`: normalises with the running statistics.
pub fn batch_norm_eval(
    input: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "batch_norm_eval";
    let (n, c, s) = layout(OP, input.shape())?;
    backend_for(OP, &[Some(input), weight, bias, Some(running_mean), Some(running_var)])?.batch_norm_eval(
        input,
        weight,
        bias,
        running_mean,
        running_var,
        eps,
        (n, c, s),
    )
}

/// Per-channel `y = x * scale + shift` of eval-mode batch norm.
fn eval_affine(
    op: &'static str,
    c: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let gamma = channel_vec(op, weight, c, 1.0)?;
    let beta = channel_vec(op, bias, c, 0.0)?;
    let mean = channel_vec(op, Some(running_mean), c, 0.0)?;
    let var = channel_vec(op, Some(running_var), c, 1.0)?;
    let mut scale = vec![0f32; c];
    let mut shift = vec![0f32; c];
    for i in 0..c {
        let inv = 1.0 / (var[i] as f64 + eps).sqrt();
        scale[i] = (gamma[i] as f64 * inv) as f32;
        shift[i] = (beta[i] as f64 - mean[i] as f64 * gamma[i] as f64 * inv) as f32;
    }
    Ok((scale, shift))
}

/// An evaluation-mode batch norm as the per-channel `(scale, shift)` of `y = x * scale + shift`
/// (`scale = gamma / sqrt(running_var + eps)`, `shift = beta - running_mean * scale`; on the
/// host in f64, as [`batch_norm_eval`] computes them), for [`crate::conv2d_affine`]. The
/// result lives on the statistics' device.
pub fn batch_norm_eval_scale_shift(
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "batch_norm_eval_scale_shift";
    if running_mean.rank() != 1 {
        return Err(bad_shape(OP, running_mean.shape(), "the running mean must be 1-D [channels]"));
    }
    let c = running_mean.shape()[0];
    backend_for(OP, &[weight, bias, Some(running_mean), Some(running_var)])?.batch_norm_eval_scale_shift(
        weight,
        bias,
        running_mean,
        running_var,
        eps,
        c,
    )
}

/// Gradients of a batch norm: input, weight (gamma) and bias (beta).
#[derive(Debug, Clone)]
pub struct BatchNormGrads {
    /// Gradient with respect to the input.
    pub input: Tensor,
    /// Gradient with respect to gamma.
    pub weight: Tensor,
    /// Gradient with respect to beta.
    pub bias: Tensor,
}

/// Backward of [`batch_norm_train`], from the saved batch `mean` and `invstd`:
/// `dx = gamma * invstd / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))`.
pub fn batch_norm_train_backward(
    grad_output: &Tensor,
    input: &Tensor,
    weight: Option<&Tensor>,
    mean: &Tensor,
    invstd: &Tensor,
) -> Result<BatchNormGrads> {
    const OP: &str = "batch_norm_train_backward";
    if grad_output.shape() != input.shape() {
        return Err(mismatch(OP, grad_output.shape(), input.shape()));
    }
    let (n, c, s) = layout(OP, input.shape())?;
    backend_for(OP, &[Some(grad_output), Some(input), weight, Some(mean), Some(invstd)])?.batch_norm_train_backward(
        grad_output,
        input,
        weight,
        mean,
        invstd,
        (n, c, s),
    )
}

/// Backward of [`batch_norm_eval`] (the statistics are constants).
pub fn batch_norm_eval_backward(
    grad_output: &Tensor,
    input: &Tensor,
    weight: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<BatchNormGrads> {
    const OP: &str = "batch_norm_eval_backward";
    if grad_output.shape() != input.shape() {
        return Err(mismatch(OP, grad_output.shape(), input.shape()));
    }
    let (n, c, s) = layout(OP, input.shape())?;
    backend_for(OP, &[Some(grad_output), Some(input), weight, Some(running_mean), Some(running_var)])?
        .batch_norm_eval_backward(grad_output, input, weight, running_mean, running_var, eps, (n, c, s))
}

/// Folds an eval-mode batch norm that follows a conv into the conv's weight and bias:
/// `w' = w * gamma / sqrt(var + eps)` per output channel, `b' = (b - mean) * gamma / sqrt(var +
/// eps) + beta`. The folded conv gives the same output as conv followed by batch norm.
pub fn fold_batch_norm(
    conv_weight: &Tensor,
    conv_bias: Option<&Tensor>,
    bn_weight: Option<&Tensor>,
    bn_bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "fold_batch_norm";
    let ws = conv_weight.shape();
    if ws.is_empty() || ws[0] == 0 {
        return Err(invalid(OP, format!("cannot fold into a conv weight of shape {ws:?}")));
    }
    let c = ws[0];
    // Folding happens once per model, on the host, the result moved to the weight's device
    // (for a host weight, every move is the tensor itself).
    let host = |t: &Tensor| t.to_device(crate::Device::Cpu);
    let (rm, rv) = (host(running_mean)?, host(running_var)?);
    let (bn_weight, bn_bias) = (bn_weight.map(host).transpose()?, bn_bias.map(host).transpose()?);
    let per_out = ws[1..].iter().product::<usize>();
    let (scale, shift) = eval_affine(OP, c, bn_weight.as_ref(), bn_bias.as_ref(), &rm, &rv, eps)?;
    let b = channel_vec(OP, conv_bias.map(host).transpose()?.as_ref(), c, 0.0)?;
    let w = host(conv_weight)?;
    let folded: Vec<f32> = w.f32_data(OP)?.iter().enumerate().map(|(i, &v)| v * scale[i / per_out]).collect();
    let bias: Vec<f32> = (0..c).map(|i| b[i] * scale[i] + shift[i]).collect();
    let device = conv_weight.device();
    Ok((
        Tensor::from_vec_unchecked(folded, ws).to_device(device)?,
        Tensor::from_vec_unchecked(bias, &[c]).to_device(device)?,
    ))
}

impl NormOps for Host {
    fn batch_norm_eval_scale_shift(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f64,
        c: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (scale, shift) =
            eval_affine("batch_norm_eval_scale_shift", c, weight, bias, running_mean, running_var, eps)?;
        Ok((Tensor::from_vec_unchecked(scale, &[c]), Tensor::from_vec_unchecked(shift, &[c])))
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
        self.train_forward("batch_norm_train", input, weight, bias, running, momentum, eps, layout, None, false)
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
        let (_, c, s) = layout;
        let (scale, shift) = eval_affine(OP, c, weight, bias, running_mean, running_var, eps)?;
        let x = input.f32_data(OP)?;
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(s.max(1)).enumerate().for_each(|(i, o)| {
                let ci = i % c;
                let src = &x[i * s..(i + 1) * s];
                // SAFETY: slice arithmetic; the features are the dispatcher's.
                unsafe { affine(o, src, scale[ci], shift[ci]) };
            });
        };
        // SAFETY: the chunks cover the output and every element of each is written.
        let out = unsafe { written_by(x.len(), fill) };
        Ok(Tensor::from_vec_unchecked(out, input.shape()))
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
        let op = "batch_norm_train_backward";
        Ok(self.train_backward(op, grad_output, input, weight, mean, invstd, layout, ReluMask::None, false)?.0)
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
        const OP: &str = "batch_norm_eval_backward";
        let (n, c, s) = layout;
        let gamma = channel_vec(OP, weight, c, 1.0)?;
        let mean = channel_vec(OP, Some(running_mean), c, 0.0)?;
        let var = channel_vec(OP, Some(running_var), c, 1.0)?;
        let x = input.f32_data(OP)?;
        let dy = grad_output.f32_data(OP)?;
        let mut sums = Vec::new();
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            let ptr = SyncPtr(dx.as_mut_ptr().cast());
            sums = per_channel(c, s, |ci, range| {
                let is = 1.0 / (var[ci] as f64 + eps).sqrt();
                let k = (gamma[ci] as f64 * is) as f32;
                let (mut sdy, mut sdyx) = (0f64, 0f64);
                for ni in 0..n {
                    let r = range(ni);
                    // SAFETY: each channel writes only its own ranges.
                    let o = unsafe { uninit_range(ptr, r.clone()) };
                    for ((o, &g), &v) in o.iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
                        o.write(g * k);
                        sdy += g as f64;
                        sdyx += g as f64 * (v as f64 - mean[ci] as f64) * is;
                    }
                }
                (sdyx as f32, sdy as f32)
            });
        };
        // SAFETY: the channels' ranges cover the gradient, and every element of each is written.
        let dx = unsafe { written_by(x.len(), fill) };
        Ok(BatchNormGrads {
            input: Tensor::from_vec_unchecked(dx, input.shape()),
            weight: Tensor::from_vec_unchecked(sums.iter().map(|s| s.0).collect(), &[c]),
            bias: Tensor::from_vec_unchecked(sums.iter().map(|s| s.1).collect(), &[c]),
        })
    }
}

impl Host {
    /// Training-mode batch norm, then (each optional) `+ residual` and ReLU in the same pass.
    #[allow(clippy::too_many_arguments)]
    fn train_forward(
        &self,
        op: &'static str,
        input: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        running: Option<(&Tensor, &Tensor)>,
        momentum: f64,
        eps: f64,
        layout: (usize, usize, usize),
        residual: Option<&[f32]>,
        relu: bool,
    ) -> Result<BatchNormTrain> {
        let (n, c, s) = layout;
        let count = n * s;
        let gamma = channel_vec(op, weight, c, 1.0)?;
        let beta = channel_vec(op, bias, c, 0.0)?;
        let x = input.f32_data(op)?;
        let stats = per_channel(c, s, |_, range| {
            // One pass: sums of the values shifted by the channel's first value.
            let pivot = x[range(0)].first().copied().unwrap_or(0.0);
            let (mut sum, mut sq) = (0f64, 0f64);
            for ni in 0..n {
                // SAFETY: plain slice arithmetic; the features are the dispatcher's.
                let (a, b) = unsafe { shifted_sum_lanes(&x[range(ni)], pivot) };
                let (a, b) = (total(&a), total(&b));
                sum += a;
                sq += b;
            }
            let shifted_mean = sum / count as f64;
            (pivot as f64 + shifted_mean, (sq / count as f64 - shifted_mean * shifted_mean).max(0.0))
        });
        let invstd: Vec<f64> = stats.iter().map(|&(_, var)| 1.0 / (var + eps).sqrt()).collect();
        let fill = |out: &mut [MaybeUninit<f32>]| {
            let ptr = SyncPtr(out.as_mut_ptr().cast());
            per_channel(c, s, |ci, range| {
                let (scale, shift) = affine_coefficients(gamma[ci], beta[ci], stats[ci].0 as f32, invstd[ci] as f32);
                for ni in 0..n {
                    let r = range(ni);
                    // SAFETY: each channel writes only its own ranges; the rest is slice
                    // arithmetic.
                    unsafe {
                        let out = uninit_range(ptr, r.clone());
                        match (residual, relu) {
                            (None, false) => affine(out, &x[r], scale, shift),
                            (None, true) => affine_finish::<false, true>(out, &x[r], &[], scale, shift),
                            (Some(res), false) => {
                                affine_finish::<true, false>(out, &x[r.clone()], &res[r], scale, shift)
                            }
                            (Some(res), true) => affine_finish::<true, true>(out, &x[r.clone()], &res[r], scale, shift),
                        }
                    };
                }
            });
        };
        // SAFETY: the channels' ranges cover the output, and every element of each is written.
        let out = unsafe { written_by(x.len(), fill) };
        let (running_mean, running_var) = match running {
            None => (None, None),
            Some((rm, rv)) => {
                let rm_v = channel_vec(op, Some(rm), c, 0.0)?;
                let rv_v = channel_vec(op, Some(rv), c, 1.0)?;
                let unbias = count as f64 / (count - 1) as f64;
                let m = momentum;
                let new_mean = (0..c).map(|i| ((1.0 - m) * rm_v[i] as f64 + m * stats[i].0) as f32).collect();
                let new_var = (0..c).map(|i| ((1.0 - m) * rv_v[i] as f64 + m * stats[i].1 * unbias) as f32).collect();
                (Some(Tensor::from_vec_unchecked(new_mean, &[c])), Some(Tensor::from_vec_unchecked(new_var, &[c])))
            }
        };
        Ok(BatchNormTrain {
            output: Tensor::from_vec_unchecked(out, input.shape()),
            mean: Tensor::from_vec_unchecked(stats.iter().map(|s| s.0 as f32).collect(), &[c]),
            invstd: Tensor::from_vec_unchecked(invstd.iter().map(|&v| v as f32).collect(), &[c]),
            running_mean,
            running_var,
        })
    }
    /// Training-mode batch norm's backward, with the gradient first masked by `mask` (on the
    /// fly, in each pass); with `masked_out`, that masked gradient is also returned (what
    /// reaches a residual added before the ReLU).
    #[allow(clippy::too_many_arguments)]
    fn train_backward(
        &self,
        op: &'static str,
        grad_output: &Tensor,
        input: &Tensor,
        weight: Option<&Tensor>,
        mean: &Tensor,
        invstd: &Tensor,
        layout: (usize, usize, usize),
        mask: ReluMask<'_>,
        masked_out: bool,
    ) -> Result<(BatchNormGrads, Option<Tensor>)> {
        let (n, c, s) = layout;
        let m = (n * s) as f64;
        let gamma = channel_vec(op, weight, c, 1.0)?;
        let mean = channel_vec(op, Some(mean), c, 0.0)?;
        let invstd = channel_vec(op, Some(invstd), c, 1.0)?;
        let x = input.f32_data(op)?;
        let dy = grad_output.f32_data(op)?;
        let mut sums = Vec::new();
        let mut masked_all: Vec<f32> = if masked_out { Vec::with_capacity(x.len()) } else { Vec::new() };
        let masked_ptr = SyncPtr(masked_all.as_mut_ptr());
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            let ptr = SyncPtr(dx.as_mut_ptr().cast());
            sums = per_channel(c, s, |ci, range| {
                let (mu, is) = (mean[ci] as f64, invstd[ci] as f64);
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                // The masked gradient of one (sample, channel) plane at a time, in cache.
                let mut masked = Vec::new();
                for ni in 0..n {
                    let r = range(ni);
                    let g = through_relu(&dy, &x, mask, ci, r.clone(), &mut masked);
                    if masked_out {
                        // SAFETY: each channel writes only its own ranges of `masked_all`,
                        // which holds `x.len()` floats.
                        unsafe { std::ptr::copy_nonoverlapping(g.as_ptr(), masked_ptr.get().add(r.start), r.len()) };
                    }
                    // SAFETY: plain slice arithmetic; the features are the dispatcher's.
                    let (a, b) = unsafe { grad_sum_lanes(g, &x[range(ni)], mu) };
                    let (a, b) = (total(&a), total(&b));
                    sum_dy += a;
                    sum_dy_xhat += b * is;
                }
                let k = (gamma[ci] as f64 * is) as f32;
                let a = (sum_dy / m) as f32;
                let b = (sum_dy_xhat / m) as f32;
                for ni in 0..n {
                    let r = range(ni);
                    let coefficients = [mean[ci], invstd[ci], k, a, b];
                    let g = through_relu(&dy, &x, mask, ci, r.clone(), &mut masked);
                    // SAFETY: each channel writes only its own ranges; the rest is slice
                    // arithmetic.
                    unsafe { train_grad(uninit_range(ptr, r.clone()), g, &x[r], coefficients) };
                }
                (sum_dy_xhat as f32, sum_dy as f32)
            });
        };
        // SAFETY: the channels' ranges cover the gradient, and every element of each is written.
        let dx = unsafe { written_by(x.len(), fill) };
        let masked_all = masked_out.then(|| {
            // SAFETY: the first pass of every channel copied its ranges: all `x.len()` floats.
            unsafe { masked_all.set_len(x.len()) };
            Tensor::from_vec_unchecked(masked_all, input.shape())
        });
        let grads = BatchNormGrads {
            input: Tensor::from_vec_unchecked(dx, input.shape()),
            weight: Tensor::from_vec_unchecked(sums.iter().map(|s| s.0).collect(), &[c]),
            bias: Tensor::from_vec_unchecked(sums.iter().map(|s| s.1).collect(), &[c]),
        };
        Ok((grads, masked_all))
    }
}
