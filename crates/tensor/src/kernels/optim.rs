//! The optimizers' per-parameter updates as fused tensor functions, with torch.optim's order
//! of operations: one pass over the parameter, its gradient and its state, on the host or on
//! the parameter's GPU. The `nn` crate keeps the state and the schedule; this is the math.
//!
//! Each step returns new tensors (the parameter, the state). The state goes in by value: on
//! the host a buffer nothing else shares is updated in place, as torch does, instead of copied
//! every step.

use crate::backend::{backend_for, Host, OptimOps};
use crate::error::{mismatch, Result};
use crate::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// torch.optim.SGD's hyper-parameters for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    /// Learning rate.
    pub lr: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum factor (0: plain SGD, no buffer).
    pub momentum: f64,
    /// Dampening of the momentum.
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

/// torch.optim.Adam's (or AdamW's) hyper-parameters for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay: added to the gradient (Adam) or shrinking the parameter (AdamW).
    pub weight_decay: f64,
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
    /// The step number, from 1 (for the bias corrections).
    pub step: u64,
}

/// SGD's hyper-parameters as the kernels use them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SgdScalars {
    pub(crate) lr: f32,
    pub(crate) wd: f32,
    /// The momentum factor (0: no buffer).
    pub(crate) m: f32,
    /// `1 - dampening`.
    pub(crate) damp: f32,
    pub(crate) nesterov: bool,
}

/// Adam's hyper-parameters for one step, as the kernels use them (torch's order of operations
/// and roundings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamScalars {
    pub(crate) b1: f32,
    pub(crate) b2: f32,
    pub(crate) one_b1: f32,
    pub(crate) one_b2: f32,
    pub(crate) eps: f32,
    /// Adam's L2 penalty (0 for AdamW).
    pub(crate) l2: f32,
    /// AdamW's decoupled decay factor (1 for Adam).
    pub(crate) shrink: f32,
    /// `lr / (1 - beta1^t)`.
    pub(crate) step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub(crate) bc2: f32,
}

fn check(op: &'static str, param: &Tensor, others: &[Option<&Tensor>]) -> Result<()> {
    for t in others.iter().flatten().chain([&param]) {
        if t.dtype() != crate::DType::F32 {
            return Err(crate::TensorError::DType { op, expected: crate::DType::F32, got: t.dtype() });
        }
    }
    for t in others.iter().flatten() {
        if t.shape() != param.shape() {
            return Err(mismatch(op, param.shape(), t.shape()));
        }
    }
    Ok(())
}

/// One SGD step: the new parameter and, with momentum, the new momentum buffer (`buf` is
/// `None` on the first step, when the buffer starts as the update direction).
pub fn sgd_step(param: &Tensor, grad: &Tensor, buf: Option<Tensor>, h: SgdStep) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "sgd_step";
    check(OP, param, &[Some(grad), buf.as_ref()])?;
    let (lr, wd, m, damp) = (h.lr as f32, h.weight_decay as f32, h.momentum as f32, (1.0 - h.dampening) as f32);
    let s = SgdScalars { lr, wd, m, damp, nesterov: h.nesterov };
    backend_for(OP, &[Some(param), Some(grad), buf.as_ref()])?.sgd_step(param, grad, buf, &s)
}

/// One Adam / AdamW step: the new parameter, first moment and second moment (`None` moments
/// start at zero).
pub fn adam_step(
    param: &Tensor,
    grad: &Tensor,
    m1: Option<Tensor>,
    m2: Option<Tensor>,
    h: AdamStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "adam_step";
    check(OP, param, &[Some(grad), m1.as_ref(), m2.as_ref()])?;
    let (b1, b2) = h.betas;
    let step = h.step.max(1).min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - b1.powi(step);
    let bc2_sqrt = (1.0 - b2.powi(step)).sqrt();
    let step_size = (h.lr / bc1) as f32;
    let shrink = if h.decoupled && h.weight_decay != 0.0 { (1.0 - h.lr * h.weight_decay) as f32 } else { 1.0 };
    let l2 = if !h.decoupled { h.weight_decay as f32 } else { 0.0 };
    // torch passes `1 - beta` as a Python float (f64) cast once to f32.
    let (b1f, b2f, one_b1, one_b2) = (b1 as f32, b2 as f32, (1.0 - b1) as f32, (1.0 - b2) as f32);
    let (eps, bc2f) = (h.eps as f32, bc2_sqrt as f32);
    let s = AdamScalars { b1: b1f, b2: b2f, one_b1, one_b2, eps, l2, shrink, step_size, bc2: bc2f };
    backend_for(OP, &[Some(param), Some(grad), m1.as_ref(), m2.as_ref()])?.adam_step(param, grad, (m1, m2), &s)
}

/// Elements per parallel run of an optimizer step.
const RUN: usize = 1 << 15;

/// One SGD step over a run of elements, in torch.optim.SGD's order of operations: the new
/// parameters into `out` from `p`; with momentum (`buf` as long as `out`, else empty) the
/// buffer updated in place, or on the `first` step set to the direction itself.
#[inline(always)]
fn sgd_run_impl<const FMA: bool>(
    out: &mut [MaybeUninit<f32>],
    p: &[f32],
    g: &[f32],
    buf: &mut [f32],
    s: SgdScalars,
    first: bool,
) {
    let n = out.len();
    let (p, g) = (&p[..n], &g[..n]);
    for i in 0..n {
        let d = if s.wd != 0.0 { g[i] + s.wd * p[i] } else { g[i] };
        let dir = if s.m != 0.0 {
            let b = if first { d } else { buf[i] * s.m + s.damp * d };
            buf[i] = b;
            if s.nesterov {
                d + s.m * b
            } else {
                b
            }
        } else {
            d
        };
        out[i].write(p[i] - s.lr * dir);
    }
}

crate::multiversion! {
    /// [`sgd_run_impl`] for the CPU's vector extension.
    unsafe fn sgd_run(
        out: &mut [MaybeUninit<f32>],
        p: &[f32],
        g: &[f32],
        buf: &mut [f32],
        s: SgdScalars,
        first: bool,
    ) = sgd_run_impl;
}

/// One Adam step over a run of elements: the new parameters into `out` from `p`, the moments
/// updated in place, in the operation order of torch's single-tensor Adam (AdamW's decay
/// first; `mul_` then `add_`, `addcdiv_`). Plain multiplies and adds (no fused multiply-add),
/// so every vector extension gives the same values.
#[inline(always)]
fn adam_run_impl<const FMA: bool>(
    out: &mut [MaybeUninit<f32>],
    p: &[f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: AdamScalars,
) {
    let n = out.len();
    let (p, g, m, v) = (&p[..n], &g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let mut param = p[i];
        if s.shrink != 1.0 {
            param *= s.shrink;
        }
        let grad = if s.l2 != 0.0 { g[i] + s.l2 * param } else { g[i] };
        m[i] = m[i] * s.b1 + s.one_b1 * grad;
        v[i] = v[i] * s.b2 + s.one_b2 * (grad * grad);
        let denom = v[i].sqrt() / s.bc2 + s.eps;
        out[i].write(param + -s.step_size * (m[i] / denom));
    }
}

crate::multiversion! {
    /// [`adam_run_impl`] for the CPU's vector extension.
    unsafe fn adam_run(
        out: &mut [MaybeUninit<f32>],
        p: &[f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        s: AdamScalars,
    ) = adam_run_impl;
}

impl OptimOps for Host {
    fn sgd_step(
        &self,
        param: &Tensor,
        grad: &Tensor,
        buf: Option<Tensor>,
        s: &SgdScalars,
    ) -> Result<(Tensor, Option<Tensor>)> {
        const OP: &str = "sgd_step";
        let s = *s;
        let n = param.numel();
        // The parameter is read, not copied (as in `adam_step`); the momentum buffer is
        // updated in place when nothing else holds it.
        let p_old = param.f32_data(OP)?;
        let g = grad.f32_data(OP)?;
        let first = buf.is_none();
        let mut b = match (s.m != 0.0, buf) {
            (false, _) => Vec::new(),
            (true, None) => vec![0.0; n],
            (true, Some(b)) => b.into_f32_vec(OP)?,
        };
        let fill = |out: &mut [MaybeUninit<f32>]| {
            let run = |i: usize, out: &mut [MaybeUninit<f32>], b: &mut [f32]| {
                let at = i * RUN..i * RUN + out.len();
                // SAFETY: plain slice arithmetic; the features are the dispatcher's.
                unsafe { sgd_run(out, &p_old[at.clone()], &g[at], b, s, first) }
            };
            if b.is_empty() {
                out.par_chunks_mut(RUN).enumerate().for_each(|(i, out)| run(i, out, &mut []));
            } else {
                out.par_chunks_mut(RUN).zip(b.par_chunks_mut(RUN)).enumerate().for_each(|(i, (out, b))| run(i, out, b));
            }
        };
        // SAFETY: the runs cover the output and `sgd_run` writes every element of each.
        let p = unsafe { super::written_by(n, fill) };
        let new_buf = (s.m != 0.0).then(|| Tensor::from_vec_unchecked(b, param.shape()));
        Ok((Tensor::from_vec_unchecked(p, param.shape()), new_buf))
    }
    fn adam_step(
        &self,
        param: &Tensor,
        grad: &Tensor,
        (m1, m2): (Option<Tensor>, Option<Tensor>),
        s: &AdamScalars,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "adam_step";
        let s = *s;
        let n = param.numel();
        // The parameter is read, not copied: the new one is written beside it (it is shared
        // with the model until the step returns).
        let p_old = param.f32_data(OP)?;
        let g = grad.f32_data(OP)?;
        let mut m = match m1 {
            Some(t) => t.into_f32_vec(OP)?,
            None => vec![0.0; n],
        };
        let mut v = match m2 {
            Some(t) => t.into_f32_vec(OP)?,
            None => vec![0.0; n],
        };
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(RUN).zip(m.par_chunks_mut(RUN)).zip(v.par_chunks_mut(RUN)).enumerate().for_each(
                |(i, ((out, m), v))| {
                    let at = i * RUN..i * RUN + out.len();
                    // SAFETY: plain slice arithmetic; the features are the dispatcher's.
                    unsafe { adam_run(out, &p_old[at.clone()], &g[at], m, v, s) }
                },
            );
        };
        // SAFETY: the runs cover the output and `adam_run` writes every element of each.
        let p = unsafe { super::written_by(n, fill) };
        let shape = param.shape();
        Ok((
            Tensor::from_vec_unchecked(p, shape),
            Tensor::from_vec_unchecked(m, shape),
            Tensor::from_vec_unchecked(v, shape),
        ))
    }
}
