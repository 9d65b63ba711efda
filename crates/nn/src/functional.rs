//! Differentiable versions of the `tensor` kernels (like `torch.nn.functional`): each function
//! runs the forward kernel and records what the backward rule in `autograd.rs` needs.

use crate::autograd::{class_targets, Op, Reduction, Var};
use crate::{NnError, Result};
use tensor::{Conv2dParams, Pool2dParams, Rng, Tensor};

/// 2-D convolution.
pub fn conv2d(input: &Var, weight: &Var, bias: Option<&Var>, params: Conv2dParams) -> Result<Var> {
    let b = bias.map(Var::value);
    let y = tensor::conv2d(&input.value(), &weight.value(), b.as_ref(), params)?;
    let mut inputs = vec![input, weight];
    inputs.extend(bias);
    Ok(Var::record(y, &inputs, || Op::Conv2d {
        input: input.clone(),
        weight: weight.clone(),
        bias: bias.cloned(),
        params,
    }))
}

/// `input @ weight^T + bias` for a 2-D input `[batch, in]` and weight `[out, in]`.
pub fn linear(input: &Var, weight: &Var, bias: Option<&Var>) -> Result<Var> {
    let (x, w) = (input.value(), weight.value());
    if x.rank() != 2 || w.rank() != 2 || x.shape()[1] != w.shape()[1] {
        return Err(NnError::Shape(format!(
            "linear: input {:?} does not fit weight {:?} (expected [batch, {}])",
            x.shape(),
            w.shape(),
            w.shape().get(1).copied().unwrap_or(0)
        )));
    }
    let mut y = x.matmul(&w.t()?)?;
    if let Some(b) = bias {
        y = y.add(&b.value())?;
    }
    let mut inputs = vec![input, weight];
    inputs.extend(bias);
    Ok(Var::record(y, &inputs, || Op::Linear { input: input.clone(), weight: weight.clone(), bias: bias.cloned() }))
}

/// Max pooling.
pub fn max_pool2d(input: &Var, params: Pool2dParams) -> Result<Var> {
    if !Var::records(&[input]) {
        // Nothing will need the indices for a backward pass.
        return Ok(Var::constant(tensor::max_pool2d_values(&input.value(), params)?));
    }
    let (y, indices) = tensor::max_pool2d(&input.value(), params)?;
    Ok(Var::record(y, &[input], || Op::MaxPool2d { input: input.edge(), indices }))
}

/// Average pooling.
pub fn avg_pool2d(input: &Var, params: Pool2dParams, count_include_pad: bool) -> Result<Var> {
    let y = tensor::avg_pool2d(&input.value(), params, count_include_pad)?;
    Ok(Var::record(y, &[input], || Op::AvgPool2d { input: input.edge(), params, count_include_pad }))
}

/// Adaptive average pooling to `[oh, ow]`.
pub fn adaptive_avg_pool2d(input: &Var, output: [usize; 2]) -> Result<Var> {
    let y = tensor::adaptive_avg_pool2d(&input.value(), output)?;
    Ok(Var::record(y, &[input], || Op::AdaptiveAvgPool2d(input.edge())))
}

/// SyncBatchNorm's training mode: as [`batch_norm_train`], with the mean and variance of every
/// process's batch together (two sums over `group`, differentiable, so the gradients also flow
/// through the other processes' statistics). Running statistics as PyTorch updates them, with
/// the unbiased variance of all the processes' values.
pub fn sync_batch_norm_train(
    input: &Var,
    weight: Option<&Var>,
    bias: Option<&Var>,
    running: Option<(&Tensor, &Tensor)>,
    momentum: f64,
    eps: f64,
    group: &dyn crate::ProcessGroup,
) -> Result<(Var, Option<(Tensor, Tensor)>)> {
    let shape = input.shape();
    if shape.len() != 4 {
        return Err(crate::NnError::Shape(format!("SyncBatchNorm: expected [N, C, H, W], got {shape:?}")));
    }
    let c = shape[1];
    let mut count = [(shape[0] * shape[2] * shape[3]) as f32];
    group.all_reduce_sum(&mut count).map_err(|e| crate::NnError::Config(format!("all-reduce: {e}")))?;
    let total = count[0];
    if total <= 1.0 {
        return Err(crate::NnError::Shape("SyncBatchNorm: training needs more than one value per channel".into()));
    }
    let per_channel = [1, c, 1, 1];
    let mean = input.sum(&[0, 2, 3], false)?.all_reduce_sum(group)?.mul_scalar(1.0 / total)?;
    let centered = input.sub(&mean.reshape(&per_channel)?)?;
    let var = centered.mul(&centered)?.sum(&[0, 2, 3], false)?.all_reduce_sum(group)?.mul_scalar(1.0 / total)?;
    let invstd = var.add_scalar(eps as f32)?.powf(-0.5)?;
    let mut y = centered.mul(&invstd.reshape(&per_channel)?)?;
    if let Some(w) = weight {
        y = y.mul(&w.reshape(&per_channel)?)?;
    }
    if let Some(b) = bias {
        y = y.add(&b.reshape(&per_channel)?)?;
    }
    let running = match running {
        Some((rm, rv)) => {
            let m = momentum as f32;
            let unbiased = var.value().mul_scalar(total / (total - 1.0))?;
            Some((
                rm.mul_scalar(1.0 - m)?.add(&mean.value().mul_scalar(m)?)?,
                rv.mul_scalar(1.0 - m)?.add(&unbiased.mul_scalar(m)?)?,
            ))
        }
        None => None,
    };
    Ok((y, running))
}

/// Training-mode batch norm: normalises with batch statistics and returns the updated running
/// statistics (when given) beside the output.
pub fn batch_norm_train(
    input: &Var,
    weight: Option<&Var>,
    bias: Option<&Var>,
    running: Option<(&Tensor, &Tensor)>,
    momentum: f64,
    eps: f64,
) -> Result<(Var, Option<(Tensor, Tensor)>)> {
    batch_norm_train_finish(input, weight, bias, running, momentum, eps, None, false)
}

/// [`batch_norm_train`], then `+ residual` and ReLU (each optional): `relu(bn(x) + residual)`
/// as one op, whose output is the only new tensor (the separate ops made three, and read and
/// wrote the activations twice more each way). Values and gradients are those of the separate
/// ops.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train_finish(
    input: &Var,
    weight: Option<&Var>,
    bias: Option<&Var>,
    running: Option<(&Tensor, &Tensor)>,
    momentum: f64,
    eps: f64,
    residual: Option<&Var>,
    relu: bool,
) -> Result<(Var, Option<(Tensor, Tensor)>)> {
    let (w, b) = (weight.map(Var::value), bias.map(Var::value));
    let r = residual.map(Var::value);
    let out = tensor::batch_norm_train_finish(
        &input.value(),
        w.as_ref(),
        b.as_ref(),
        running,
        momentum,
        eps,
        r.as_ref(),
        relu,
    )?;
    let running = out.running_mean.zip(out.running_var);
    let mut inputs = vec![input];
    inputs.extend(weight);
    inputs.extend(bias);
    inputs.extend(residual);
    let (mean, invstd) = (out.mean, out.invstd);
    let relu_output = relu.then(|| out.output.clone());
    let y = Var::record(out.output, &inputs, || Op::BatchNormTrain {
        input: input.clone(),
        weight: weight.cloned(),
        bias: bias.cloned(),
        mean,
        invstd,
        residual: residual.map(Var::edge),
        relu_output,
    });
    Ok((y, running))
}

/// Evaluation-mode batch norm with the running statistics.
pub fn batch_norm_eval(
    input: &Var,
    weight: Option<&Var>,
    bias: Option<&Var>,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Var> {
    let (w, b) = (weight.map(Var::value), bias.map(Var::value));
    let y = tensor::batch_norm_eval(&input.value(), w.as_ref(), b.as_ref(), running_mean, running_var, eps)?;
    let mut inputs = vec![input];
    inputs.extend(weight);
    inputs.extend(bias);
    Ok(Var::record(y, &inputs, || Op::BatchNormEval {
        input: input.clone(),
        weight: weight.cloned(),
        bias: bias.cloned(),
        running_mean: running_mean.clone(),
        running_var: running_var.clone(),
        eps,
    }))
}

/// Dropout: zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
pub fn dropout(input: &Var, p: f64, rng: &mut Rng) -> Result<Var> {
    if !(0.0..1.0).contains(&p) {
        return Err(NnError::Config(format!("dropout probability must be in [0, 1), got {p}")));
    }
    let shape = input.shape();
    let keep = (1.0 / (1.0 - p)) as f32;
    let n: usize = shape.iter().product();
    let mask: Vec<f32> = (0..n).map(|_| if (rng.uniform() as f64) < p { 0.0 } else { keep }).collect();
    let mask = Tensor::from_vec(mask, &shape)?.to_device(input.value().device())?;
    let y = input.value().mul(&mask)?;
    Ok(Var::record(y, &[input], || Op::Dropout { input: input.edge(), mask }))
}

/// Cross-entropy of logits `[batch, classes]` against i64 class indices `[batch]`, with optional
/// label smoothing (PyTorch's formula: the target is `(1 - s) * onehot + s / classes`).
pub fn cross_entropy(logits: &Var, targets: &Tensor, reduction: Reduction, label_smoothing: f32) -> Result<Var> {
    let x = logits.value();
    if x.rank() != 2 || x.shape()[0] == 0 || x.shape()[1] == 0 {
        return Err(NnError::Shape(format!("cross_entropy: logits must be [batch, classes], got {:?}", x.shape())));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(NnError::Config(format!("label smoothing must be in [0, 1], got {label_smoothing}")));
    }
    let (batch, classes) = (x.shape()[0], x.shape()[1]);
    class_targets("cross_entropy", targets, batch, classes)?;
    let scale = match reduction {
        Reduction::Mean => 1.0 / batch as f32,
        Reduction::Sum => 1.0,
    };
    // The target distribution is a tensor on the logits' device and every sum is a kernel
    // there: on a GPU only the scalar loss is ever read back (by the caller).
    let target = Tensor::one_hot(&targets.to_device(x.device())?, classes)?
        .mul_scalar(1.0 - label_smoothing)?
        .add_scalar(label_smoothing / classes as f32)?;
    let logp = x.log_softmax(1)?;
    let loss = logp.mul(&target)?.sum(&[0, 1], false)?.mul_scalar(-scale)?;
    let probs = logp.exp()?;
    Ok(Var::record(loss, &[logits], || Op::CrossEntropy { logits: logits.edge(), probs, target, scale }))
}

/// Negative log-likelihood of log-probabilities `[batch, classes]`.
pub fn nll_loss(log_probs: &Var, targets: &Tensor, reduction: Reduction) -> Result<Var> {
    let x = log_probs.value();
    if x.rank() != 2 || x.shape()[0] == 0 {
        return Err(NnError::Shape(format!("nll_loss: input must be [batch, classes], got {:?}", x.shape())));
    }
    let (batch, classes) = (x.shape()[0], x.shape()[1]);
    class_targets("nll_loss", targets, batch, classes)?;
    let scale = match reduction {
        Reduction::Mean => 1.0 / batch as f32,
        Reduction::Sum => 1.0,
    };
    let target = Tensor::one_hot(&targets.to_device(x.device())?, classes)?;
    let loss = x.mul(&target)?.sum(&[0, 1], false)?.mul_scalar(-scale)?;
    Ok(Var::record(loss, &[log_probs], || Op::NllLoss { input: log_probs.edge(), target, scale }))
}
