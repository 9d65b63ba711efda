//! Losses as modules-like objects (`CrossEntropyLoss`, `NLLLoss`) and the usual metrics.

use crate::autograd::{Reduction, Var};
use crate::functional as F;
use crate::{NnError, Result};
use tensor::Tensor;

/// `torch.nn.CrossEntropyLoss(reduction, label_smoothing)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrossEntropyLoss {
    /// Mean (default) or sum over the batch.
    pub reduction: Reduction,
    /// Share of the target mass spread uniformly over the classes.
    pub label_smoothing: f32,
}

impl CrossEntropyLoss {
    /// The loss of logits `[batch, classes]` against i64 class indices `[batch]`.
    pub fn forward(&self, logits: &Var, targets: &Tensor) -> Result<Var> {
        F::cross_entropy(logits, targets, self.reduction, self.label_smoothing)
    }
}

/// `torch.nn.NLLLoss(reduction)` over log-probabilities.
#[derive(Debug, Clone, Copy, Default)]
pub struct NllLoss {
    /// Mean (default) or sum over the batch.
    pub reduction: Reduction,
}

impl NllLoss {
    /// The loss of log-probabilities `[batch, classes]` against i64 class indices `[batch]`.
    pub fn forward(&self, log_probs: &Var, targets: &Tensor) -> Result<Var> {
        F::nll_loss(log_probs, targets, self.reduction)
    }
}

/// The `k` best scores of each row, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// Scores, one row per input row.
    pub values: Vec<Vec<f32>>,
    /// Class indices, one row per input row.
    pub indices: Vec<Vec<usize>>,
}

/// The `k` highest scores of each row of `[batch, classes]`, like `torch.topk(x, k, dim=1)`
/// (ties keep the lower index first).
pub fn topk(scores: &Tensor, k: usize) -> Result<TopK> {
    if scores.rank() != 2 || k == 0 || k > scores.shape()[1] {
        return Err(NnError::Shape(format!("topk: cannot take the top {k} of each row of {:?}", scores.shape())));
    }
    let classes = scores.shape()[1];
    let v = scores.to_vec_f32()?;
    let mut values = Vec::new();
    let mut indices = Vec::new();
    for row in v.chunks(classes) {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.truncate(k);
        values.push(order.iter().map(|&i| row[i]).collect());
        indices.push(order);
    }
    Ok(TopK { values, indices })
}

/// Share of rows whose target is among the `k` best scores (top-k accuracy).
pub fn topk_accuracy(scores: &Tensor, targets: &Tensor, k: usize) -> Result<f64> {
    let idx = topk(scores, k)?.indices;
    let t = crate::autograd::class_targets("accuracy", targets, scores.shape()[0], scores.shape()[1])?;
    let hits = idx.iter().zip(&t).filter(|(best, t)| best.contains(t)).count();
    Ok(hits as f64 / t.len().max(1) as f64)
}

/// Top-1 accuracy.
pub fn accuracy(scores: &Tensor, targets: &Tensor) -> Result<f64> {
    if scores.rank() != 2 || scores.shape()[1] == 0 {
        return topk_accuracy(scores, targets, 1);
    }
    // The row-wise argmax (on a GPU, only it comes back, not the whole score matrix). Ties:
    // the first maximum, as topk's lower-index-first rule.
    let t = crate::autograd::class_targets("accuracy", targets, scores.shape()[0], scores.shape()[1])?;
    let best = scores.argmax(1, false)?.to_vec_i64()?;
    let hits = best.iter().zip(&t).filter(|(&b, &t)| b as usize == t).count();
    Ok(hits as f64 / t.len().max(1) as f64)
}
