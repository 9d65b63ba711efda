//! Reverse-mode automatic differentiation.
//!
//! A [`Var`] is a tensor that remembers the [`Op`] that made it. `backward()` on a scalar walks
//! the graph in reverse creation order (every node is created after its inputs, so decreasing
//! ids are a topological order), applies each op's backward rule — one exhaustive `match`, each
//! rule beside the forward that saved what it needs — and accumulates gradients into the leaves.
//! A value used twice (the residual `out += identity`) receives the sum of both gradients.
//!
//! Each op is released as soon as its gradient has been propagated: after `backward()` the
//! graph and its saved activations are gone, so memory does not grow across training steps.

use crate::{NnError, Result};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tensor::{Conv2dParams, DType, Pool2dParams, Tensor};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether operations on this thread are recorded for backward.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// While alive, nothing is recorded on this thread (like `torch.no_grad()`); from
/// [`enable_grad`], everything is. Dropping it restores the state it found.
#[must_use = "the previous recording state returns when the guard is dropped"]
pub struct NoGradGuard {
    previous: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Stops recording until the returned guard is dropped.
pub fn no_grad() -> NoGradGuard {
    NoGradGuard { previous: GRAD_ENABLED.with(|g| g.replace(false)) }
}

/// Runs `f` without recording (inference mode).
pub fn with_no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = no_grad();
    f()
}

/// Records again until the returned guard is dropped, even inside [`no_grad`]
/// (`torch.enable_grad()`): for code that needs a gradient whatever its caller disabled.
pub fn enable_grad() -> NoGradGuard {
    NoGradGuard { previous: GRAD_ENABLED.with(|g| g.replace(true)) }
}

/// The processes whose batch statistics SyncBatchNorm sums (data-parallel training): the
/// `train` crate adapts its collective operations to this.
pub trait ProcessGroup {
    /// How many processes take part.
    fn world_size(&self) -> usize;
    /// Sums `values` elementwise over every process, in place.
    fn all_reduce_sum(&self, values: &mut [f32]) -> std::result::Result<(), String>;
}

thread_local! {
    static SYNC_GROUP: std::cell::RefCell<Option<std::rc::Rc<dyn ProcessGroup>>> = const { std::cell::RefCell::new(None) };
}

/// Makes every training-mode `BatchNorm2d` on this thread a SyncBatchNorm over `group`
/// (`torch.nn.SyncBatchNorm.convert_sync_batchnorm`): the batch statistics are those of the
/// processes' batches together. `None` goes back to per-process statistics.
pub fn set_sync_batch_norm(group: Option<std::rc::Rc<dyn ProcessGroup>>) {
    SYNC_GROUP.with(|g| *g.borrow_mut() = group);
}

/// The SyncBatchNorm group of this thread, when one with more than one process is set.
pub(crate) fn sync_group() -> Option<std::rc::Rc<dyn ProcessGroup>> {
    SYNC_GROUP.with(|g| g.borrow().clone()).filter(|g| g.world_size() > 1)
}

fn all_reduce(group: &dyn ProcessGroup, t: &Tensor) -> Result<Tensor> {
    let mut values = t.to_vec_f32()?;
    group.all_reduce_sum(&mut values).map_err(|e| NnError::Config(format!("all-reduce: {e}")))?;
    Ok(Tensor::from_vec(values, t.shape())?.to_device(t.device())?)
}

enum Origin {
    /// Created by the user (parameters, inputs, constants).
    Leaf,
    /// Created by an op; the op holds its inputs and what its backward needs.
    Op(Box<Op>),
    /// Its op has been consumed by a backward pass.
    Released,
}

struct Node {
    id: u64,
    value: RwLock<Slot>,
    grad: Mutex<Option<Tensor>>,
    requires_grad: AtomicBool,
    origin: Mutex<Origin>,
}

/// A node's value, or once an op's result is released (see [`Owner`]) its shape, which backward
/// rules that read no value may still need.
enum Slot {
    Held(Tensor),
    Released(Vec<usize>),
}

/// Owns the value of an op's result for as long as a handle to it exists — the user's, or an op
/// whose backward rule reads it. The graph's other links to the node are edges without an
/// owner (PyTorch's autograd graph likewise holds no reference to its tensors' data, only what
/// each node saved): when the last owning handle goes, the value is released, so a batch
/// norm's output (read by no backward rule) does not live until the backward pass as the
/// following ReLU's input. Leaves (parameters, inputs, constants) have no owner: they are never
/// released.
struct Owner(Arc<Node>);

impl Drop for Owner {
    fn drop(&mut self) {
        let mut slot = self.0.value.write().unwrap_or_else(|p| p.into_inner());
        if let Slot::Held(v) = &*slot {
            *slot = Slot::Released(v.shape().to_vec());
        }
    }
}

/// A tensor in the autograd graph. Cloning shares the node (like a Python reference).
#[derive(Clone)]
pub struct Var {
    node: Arc<Node>,
    /// Held, never read: `None` for leaves, and for the graph's edges to an input whose value its
    /// op does not read.
    _owner: Option<Arc<Owner>>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (id, grad) = (self.node.id, self.requires_grad());
        match &*self.node.slot() {
            Slot::Held(value) => write!(f, "Var(#{id}, {value:?}, requires_grad={grad})"),
            Slot::Released(shape) => write!(f, "Var(#{id}, released, shape {shape:?}, requires_grad={grad})"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Node {
    fn slot(&self) -> std::sync::RwLockReadGuard<'_, Slot> {
        self.value.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Var {
    fn make(value: Tensor, requires_grad: bool, origin: Origin) -> Var {
        let is_op = matches!(origin, Origin::Op(_));
        let node = Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            value: RwLock::new(Slot::Held(value)),
            grad: Mutex::new(None),
            requires_grad: AtomicBool::new(requires_grad),
            origin: Mutex::new(origin),
        });
        Var { _owner: is_op.then(|| Arc::new(Owner(node.clone()))), node }
    }

    /// A link to this node that does not keep its value alive: for ops whose backward rule
    /// needs at most the input's shape.
    pub(crate) fn edge(&self) -> Var {
        Var { node: self.node.clone(), _owner: None }
    }

    /// A constant (an input): no gradient is computed for it.
    pub fn constant(value: Tensor) -> Var {
        Var::make(value, false, Origin::Leaf)
    }

    /// A trainable leaf (a parameter): gradients accumulate into [`Var::grad`].
    pub fn parameter(value: Tensor) -> Var {
        Var::make(value, true, Origin::Leaf)
    }

    /// The node's identity (creation order).
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// The current value (a cheap handle).
    pub fn value(&self) -> Tensor {
        // Only the graph's edges can point at a released value, and no backward rule reads the
        // value of an input it holds by an edge.
        match &*self.node.slot() {
            Slot::Held(v) => v.clone(),
            Slot::Released(_) => panic!("the value of an op's result read after its last handle was dropped"),
        }
    }

    /// Replaces the value in place (optimizer steps, loading weights).
    pub fn set_value(&self, value: Tensor) {
        *self.node.value.write().unwrap_or_else(|p| p.into_inner()) = Slot::Held(value);
    }

    /// The shape of the value.
    pub fn shape(&self) -> Vec<usize> {
        match &*self.node.slot() {
            Slot::Held(v) => v.shape().to_vec(),
            Slot::Released(shape) => shape.clone(),
        }
    }

    /// The accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Tensor> {
        lock(&self.node.grad).clone()
    }

    /// Sets or clears the gradient.
    pub fn set_grad(&self, grad: Option<Tensor>) {
        *lock(&self.node.grad) = grad;
    }

    /// Clears the gradient (`zero_grad(set_to_none=True)`, PyTorch's default).
    pub fn zero_grad(&self) {
        self.set_grad(None);
    }

    /// Whether gradients flow to this value.
    pub fn requires_grad(&self) -> bool {
        self.node.requires_grad.load(Ordering::Relaxed)
    }

    /// Freezes (`false`) or unfreezes (`true`) a leaf.
    pub fn set_requires_grad(&self, on: bool) {
        self.node.requires_grad.store(on, Ordering::Relaxed);
    }

    /// Whether this was created by the user rather than by an op.
    pub fn is_leaf(&self) -> bool {
        matches!(*lock(&self.node.origin), Origin::Leaf)
    }

    /// The same value, cut from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.value())
    }

    /// Whether an op on `inputs` is recorded: gradients are enabled and wanted through one of
    /// them (an op may skip work that only its backward needs when not).
    pub(crate) fn records(inputs: &[&Var]) -> bool {
        is_grad_enabled() && inputs.iter().any(|v| v.requires_grad())
    }

    /// Records the result of an op when gradients are wanted through any of `inputs`.
    pub(crate) fn record(value: Tensor, inputs: &[&Var], op: impl FnOnce() -> Op) -> Var {
        if Var::records(inputs) {
            Var::make(value, true, Origin::Op(Box::new(op())))
        } else {
            Var::constant(value)
        }
    }

    /// Computes the gradient of this scalar with respect to every leaf that requires one and
    /// adds it to the leaf's `grad`, like `loss.backward()`. The graph is released afterwards.
    pub fn backward(&self) -> Result<()> {
        self.backward_with_hook(&mut |_| Ok(()))
    }

    /// [`Var::backward`], calling `on_leaf_ready` with each leaf as soon as its gradient for this
    /// pass is final (every op that used it has propagated; its `grad` already holds the sum),
    /// while the rest of the backward pass still runs — what PyTorch's gradient hooks give
    /// DistributedDataParallel, which starts all-reducing a bucket of gradients while the
    /// earlier layers' gradients are still being computed. Each leaf that receives a gradient
    /// is reported once; an error from the hook ends the pass.
    pub fn backward_with_hook(&self, on_leaf_ready: &mut dyn FnMut(&Var) -> Result<()>) -> Result<()> {
        let value = self.value();
        if value.numel() != 1 {
            return Err(NnError::Autograd(format!(
                "backward() needs a scalar, got a tensor of shape {:?}",
                value.shape()
            )));
        }
        if !self.requires_grad() {
            return Err(NnError::Autograd("backward(): this value does not require grad (nothing recorded it)".into()));
        }
        // Every node reachable through nodes that require grad.
        let mut nodes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // How many recorded ops still have to propagate into each node: a leaf whose count
        // reaches zero has its final gradient.
        let mut consumers: HashMap<u64, usize> = HashMap::new();
        let mut stack = vec![self.clone()];
        while let Some(v) = stack.pop() {
            if !seen.insert(v.id()) {
                continue;
            }
            match &*lock(&v.node.origin) {
                Origin::Op(op) => {
                    for input in distinct_grad_inputs(op) {
                        *consumers.entry(input.id()).or_insert(0) += 1;
                        stack.push(input.clone());
                    }
                }
                Origin::Released => {
                    return Err(NnError::Autograd(
                        "backward() through a graph that was already released by an earlier backward()".into(),
                    ))
                }
                Origin::Leaf => {}
            }
            nodes.push(v);
        }
        nodes.sort_by_key(|v| std::cmp::Reverse(v.id()));
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.id(), Tensor::ones(value.shape()).to_device(value.device())?);
        for v in nodes {
            let Some(g) = grads.remove(&v.id()) else { continue };
            let origin = std::mem::replace(&mut *lock(&v.node.origin), Origin::Released);
            match origin {
                Origin::Leaf => {
                    *lock(&v.node.origin) = Origin::Leaf;
                    v.accumulate_grad(g)?;
                    on_leaf_ready(&v)?;
                }
                Origin::Op(op) => {
                    for (input, grad) in op.backward(&g)? {
                        if !input.requires_grad() {
                            continue;
                        }
                        match grads.remove(&input.id()) {
                            Some(acc) => grads.insert(input.id(), acc.add(&grad)?),
                            None => grads.insert(input.id(), grad),
                        };
                    }
                    // Leaves are the oldest nodes, last in the walk: hand each over as soon as
                    // its last consumer is done instead.
                    for input in distinct_grad_inputs(&op) {
                        let left = consumers.get_mut(&input.id()).map(|c| {
                            *c -= 1;
                            *c
                        });
                        if left == Some(0) && input.is_leaf() {
                            if let Some(g) = grads.remove(&input.id()) {
                                input.accumulate_grad(g)?;
                                on_leaf_ready(input)?;
                            }
                        }
                    }
                }
                Origin::Released => unreachable!("rejected while collecting the graph"),
            }
        }
        Ok(())
    }

    /// Adds `g` to this leaf's gradient.
    fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let mut slot = lock(&self.node.grad);
        *slot = Some(match slot.take() {
            Some(old) => old.add(&g)?,
            None => g,
        });
        Ok(())
    }
}

/// The inputs of `op` that gradients flow to, each once (`x * x` uses `x` twice).
fn distinct_grad_inputs(op: &Op) -> Vec<&Var> {
    let mut inputs: Vec<&Var> = Vec::new();
    for input in op.inputs() {
        if input.requires_grad() && !inputs.iter().any(|v| v.id() == input.id()) {
            inputs.push(input);
        }
    }
    inputs
}

/// How a loss over a batch is reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean over the batch (PyTorch's default).
    #[default]
    Mean,
    /// The sum over the batch.
    Sum,
}

/// An operation recorded in the graph: its inputs and what its backward rule needs.
pub(crate) enum Op {
    Add(Var, Var),
    Sub(Var, Var),
    Mul(Var, Var),
    Div(Var, Var),
    AddScalar(Var),
    MulScalar(Var, f32),
    Neg(Var),
    Relu {
        input: Var,
        output: Tensor,
    },
    Exp {
        input: Var,
        output: Tensor,
    },
    Log(Var),
    Powf(Var, f32),
    Matmul(Var, Var),
    Linear {
        input: Var,
        weight: Var,
        bias: Option<Var>,
    },
    Reshape {
        input: Var,
        shape: Vec<usize>,
    },
    Transpose(Var, usize, usize),
    Sum {
        input: Var,
        dims: Vec<usize>,
        keepdim: bool,
        scale: f32,
    },
    Softmax {
        input: Var,
        output: Tensor,
        dim: usize,
    },
    LogSoftmax {
        input: Var,
        output: Tensor,
        dim: usize,
    },
    Conv2d {
        input: Var,
        weight: Var,
        bias: Option<Var>,
        params: Conv2dParams,
    },
    MaxPool2d {
        input: Var,
        indices: Tensor,
    },
    AvgPool2d {
        input: Var,
        params: Pool2dParams,
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d(Var),
    /// Training-mode batch norm, then (each optional) `+ residual` and ReLU
    /// (`relu_output`: the op's own output, which ReLU's backward masks with).
    BatchNormTrain {
        input: Var,
        weight: Option<Var>,
        bias: Option<Var>,
        mean: Tensor,
        invstd: Tensor,
        residual: Option<Var>,
        relu_output: Option<Tensor>,
    },
    BatchNormEval {
        input: Var,
        weight: Option<Var>,
        bias: Option<Var>,
        running_mean: Tensor,
        running_var: Tensor,
        eps: f64,
    },
    /// Cross-entropy against a target distribution (one-hot, or label-smoothed) held as a
    /// tensor on the logits' device: the gradient is `(probs - target) * scale * g`.
    CrossEntropy {
        logits: Var,
        probs: Tensor,
        target: Tensor,
        scale: f32,
    },
    /// NLL against a target distribution held as a tensor: the gradient is
    /// `-target * scale * g`.
    NllLoss {
        input: Var,
        target: Tensor,
        scale: f32,
    },
    Dropout {
        input: Var,
        mask: Tensor,
    },
    /// A sum over the processes of the SyncBatchNorm group; its gradient is summed the same way.
    AllReduceSum(Var),
}

/// Sums a broadcast gradient back to the shape of the operand it came from.
pub(crate) fn sum_to(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if grad.shape() == shape {
        return Ok(grad.clone());
    }
    let extra = grad.rank() - shape.len();
    let dims: Vec<usize> =
        (0..grad.rank()).filter(|&d| d < extra || (shape[d - extra] == 1 && grad.shape()[d] != 1)).collect();
    Ok(grad.sum(&dims, true)?.reshape(shape)?)
}

impl Op {
    fn inputs(&self) -> Vec<&Var> {
        match self {
            Op::Add(a, b) | Op::Sub(a, b) | Op::Mul(a, b) | Op::Div(a, b) | Op::Matmul(a, b) => vec![a, b],
            Op::AddScalar(a)
            | Op::MulScalar(a, _)
            | Op::Neg(a)
            | Op::Log(a)
            | Op::Powf(a, _)
            | Op::Transpose(a, _, _)
            | Op::AdaptiveAvgPool2d(a) => vec![a],
            Op::Relu { input, .. }
            | Op::Exp { input, .. }
            | Op::Reshape { input, .. }
            | Op::Sum { input, .. }
            | Op::Softmax { input, .. }
            | Op::LogSoftmax { input, .. }
            | Op::MaxPool2d { input, .. }
            | Op::AvgPool2d { input, .. }
            | Op::NllLoss { input, .. }
            | Op::Dropout { input, .. }
            | Op::AllReduceSum(input) => vec![input],
            Op::CrossEntropy { logits, .. } => vec![logits],
            Op::Linear { input, weight, bias } | Op::Conv2d { input, weight, bias, .. } => {
                let mut v = vec![input, weight];
                v.extend(bias.as_ref());
                v
            }
            Op::BatchNormTrain { input, weight, bias, residual, .. } => {
                let mut v = vec![input];
                v.extend(weight.as_ref());
                v.extend(bias.as_ref());
                v.extend(residual.as_ref());
                v
            }
            Op::BatchNormEval { input, weight, bias, .. } => {
                let mut v = vec![input];
                v.extend(weight.as_ref());
                v.extend(bias.as_ref());
                v
            }
        }
    }

    /// The gradient of each input, given the gradient `g` of the output.
    fn backward(&self, g: &Tensor) -> Result<Vec<(Var, Tensor)>> {
        let need = |v: &Var| v.requires_grad();
        Ok(match self {
            Op::Add(a, b) => vec![(a.clone(), sum_to(g, &a.shape())?), (b.clone(), sum_to(g, &b.shape())?)],
            Op::Sub(a, b) => vec![(a.clone(), sum_to(g, &a.shape())?), (b.clone(), sum_to(&g.neg()?, &b.shape())?)],
            Op::Mul(a, b) => vec![
                (a.clone(), sum_to(&g.mul(&b.value())?, &a.shape())?),
                (b.clone(), sum_to(&g.mul(&a.value())?, &b.shape())?),
            ],
            Op::Div(a, b) => {
                let (av, bv) = (a.value(), b.value());
                let gb = g.mul(&av)?.div(&bv.mul(&bv)?)?.neg()?;
                vec![(a.clone(), sum_to(&g.div(&bv)?, &a.shape())?), (b.clone(), sum_to(&gb, &b.shape())?)]
            }
            Op::AddScalar(a) => vec![(a.clone(), g.clone())],
            Op::MulScalar(a, s) => vec![(a.clone(), g.mul_scalar(*s)?)],
            Op::Neg(a) => vec![(a.clone(), g.neg()?)],
            Op::Relu { input, output } => {
                vec![(input.clone(), g.relu_backward(output)?)]
            }
            Op::Exp { input, output } => vec![(input.clone(), g.mul(output)?)],
            Op::Log(a) => vec![(a.clone(), g.div(&a.value())?)],
            Op::Powf(a, p) => {
                let p = *p;
                let d = a.value().powf(p - 1.0)?.mul_scalar(p)?;
                vec![(a.clone(), g.mul(&d)?)]
            }
            Op::Matmul(a, b) => {
                let (av, bv) = (a.value(), b.value());
                let last = |t: &Tensor| t.transpose(t.rank() - 2, t.rank() - 1);
                let mut out = Vec::new();
                if need(a) {
                    out.push((a.clone(), sum_to(&g.matmul(&last(&bv)?)?, av.shape())?));
                }
                if need(b) {
                    out.push((b.clone(), sum_to(&last(&av)?.matmul(g)?, bv.shape())?));
                }
                out
            }
            Op::Linear { input, weight, bias } => {
                let mut out = Vec::new();
                if need(input) {
                    out.push((input.clone(), g.matmul(&weight.value())?));
                }
                if need(weight) {
                    out.push((weight.clone(), g.t()?.matmul(&input.value())?));
                }
                if let Some(b) = bias.as_ref().filter(|b| need(b)) {
                    out.push((b.clone(), g.sum(&[0], false)?));
                }
                out
            }
            Op::Reshape { input, shape } => vec![(input.clone(), g.reshape(shape)?)],
            Op::Transpose(a, d0, d1) => vec![(a.clone(), g.transpose(*d0, *d1)?.contiguous())],
            Op::Sum { input, dims, keepdim, scale } => {
                let shape = input.shape();
                let mut kept = g.clone();
                if !keepdim {
                    for &d in dims {
                        kept = kept.unsqueeze(d)?;
                    }
                }
                vec![(input.clone(), kept.broadcast_to(&shape)?.mul_scalar(*scale)?)]
            }
            Op::Softmax { input, output, dim } => {
                let inner = g.mul(output)?.sum(&[*dim], true)?;
                vec![(input.clone(), output.mul(&g.sub(&inner)?)?)]
            }
            Op::LogSoftmax { input, output, dim } => {
                let total = g.sum(&[*dim], true)?;
                vec![(input.clone(), g.sub(&output.exp()?.mul(&total)?)?)]
            }
            Op::Conv2d { input, weight, bias, params } => {
                let (x, w) = (input.value(), weight.value());
                let mut out = Vec::new();
                if need(input) {
                    out.push((input.clone(), tensor::conv2d_backward_input(g, &w, x.shape(), *params)?));
                }
                if need(weight) {
                    out.push((weight.clone(), tensor::conv2d_backward_weight(&x, g, w.shape(), *params)?));
                }
                if let Some(b) = bias.as_ref().filter(|b| need(b)) {
                    out.push((b.clone(), tensor::conv2d_backward_bias(g)?));
                }
                out
            }
            Op::MaxPool2d { input, indices } => {
                vec![(input.clone(), tensor::max_pool2d_backward(g, indices, &input.shape())?)]
            }
            Op::AvgPool2d { input, params, count_include_pad } => {
                vec![(input.clone(), tensor::avg_pool2d_backward(g, &input.shape(), *params, *count_include_pad)?)]
            }
            Op::AdaptiveAvgPool2d(input) => {
                vec![(input.clone(), tensor::adaptive_avg_pool2d_backward(g, &input.shape())?)]
            }
            Op::BatchNormTrain { input, weight, bias, mean, invstd, residual, relu_output } => {
                let (w, b, x) = (weight.as_ref().map(Var::value), bias.as_ref().map(Var::value), input.value());
                let (grads, to_sum) = match relu_output {
                    Some(y) => tensor::batch_norm_train_finish_backward(
                        g,
                        &x,
                        w.as_ref(),
                        b.as_ref(),
                        mean,
                        invstd,
                        y,
                        residual.is_some(),
                        true,
                    )?,
                    None => {
                        let grads = tensor::batch_norm_train_backward(g, &x, w.as_ref(), mean, invstd)?;
                        (grads, residual.as_ref().map(|_| g.clone()))
                    }
                };
                let mut out = affine_grads(input, weight, bias, grads);
                if let (Some(r), Some(gr)) = (residual, to_sum) {
                    out.push((r.clone(), gr));
                }
                out
            }
            Op::BatchNormEval { input, weight, bias, running_mean, running_var, eps } => {
                let w = weight.as_ref().map(Var::value);
                let grads =
                    tensor::batch_norm_eval_backward(g, &input.value(), w.as_ref(), running_mean, running_var, *eps)?;
                affine_grads(input, weight, bias, grads)
            }
            Op::CrossEntropy { logits, probs, target, scale } => {
                // d loss / d logits = (softmax - target distribution) * scale * g
                let grad = probs.sub(target)?.mul(&g.mul_scalar(*scale)?)?;
                vec![(logits.clone(), grad)]
            }
            Op::NllLoss { input, target, scale } => {
                vec![(input.clone(), target.mul(&g.mul_scalar(-*scale)?)?)]
            }
            Op::Dropout { input, mask } => vec![(input.clone(), g.mul(mask)?)],
            // Every process's loss depends on every process's statistics: the gradients that
            // reach the sum from all of them come back to each input.
            Op::AllReduceSum(input) => {
                let group = sync_group().ok_or_else(|| {
                    NnError::Autograd("backward through a SyncBatchNorm sum outside its process group".into())
                })?;
                vec![(input.clone(), all_reduce(group.as_ref(), g)?)]
            }
        })
    }
}

fn affine_grads(
    input: &Var,
    weight: &Option<Var>,
    bias: &Option<Var>,
    grads: tensor::BatchNormGrads,
) -> Vec<(Var, Tensor)> {
    let mut out = vec![(input.clone(), grads.input)];
    if let Some(w) = weight {
        out.push((w.clone(), grads.weight));
    }
    if let Some(b) = bias {
        out.push((b.clone(), grads.bias));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Differentiable operations on Var (the forward halves of the rules above)
// ---------------------------------------------------------------------------------------------

impl Var {
    /// `self + rhs` with broadcasting.
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let v = self.value().add(&rhs.value())?;
        Ok(Var::record(v, &[self, rhs], || Op::Add(self.edge(), rhs.edge())))
    }
    /// `self - rhs` with broadcasting.
    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let v = self.value().sub(&rhs.value())?;
        Ok(Var::record(v, &[self, rhs], || Op::Sub(self.edge(), rhs.edge())))
    }
    /// `self * rhs` with broadcasting.
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let v = self.value().mul(&rhs.value())?;
        Ok(Var::record(v, &[self, rhs], || Op::Mul(self.clone(), rhs.clone())))
    }
    /// `self / rhs` with broadcasting.
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let v = self.value().div(&rhs.value())?;
        Ok(Var::record(v, &[self, rhs], || Op::Div(self.clone(), rhs.clone())))
    }
    /// The sum of this value over the processes of the SyncBatchNorm group (differentiable).
    pub(crate) fn all_reduce_sum(&self, group: &dyn ProcessGroup) -> Result<Var> {
        let v = all_reduce(group, &self.value())?;
        Ok(Var::record(v, &[self], || Op::AllReduceSum(self.edge())))
    }
    /// `self + s`
    pub fn add_scalar(&self, s: f32) -> Result<Var> {
        let v = self.value().add_scalar(s)?;
        Ok(Var::record(v, &[self], || Op::AddScalar(self.edge())))
    }
    /// `self * s`
    pub fn mul_scalar(&self, s: f32) -> Result<Var> {
        let v = self.value().mul_scalar(s)?;
        Ok(Var::record(v, &[self], || Op::MulScalar(self.edge(), s)))
    }
    /// `-self`
    pub fn neg(&self) -> Result<Var> {
        let v = self.value().neg()?;
        Ok(Var::record(v, &[self], || Op::Neg(self.edge())))
    }
    /// `max(self, 0)`
    pub fn relu(&self) -> Result<Var> {
        let v = self.value().relu()?;
        Ok(Var::record(v.clone(), &[self], || Op::Relu { input: self.edge(), output: v }))
    }
    /// `e^self`
    pub fn exp(&self) -> Result<Var> {
        let v = self.value().exp()?;
        Ok(Var::record(v.clone(), &[self], || Op::Exp { input: self.edge(), output: v }))
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Var> {
        let v = self.value().log()?;
        Ok(Var::record(v, &[self], || Op::Log(self.clone())))
    }
    /// `self^p`
    pub fn powf(&self, p: f32) -> Result<Var> {
        let v = self.value().powf(p)?;
        Ok(Var::record(v, &[self], || Op::Powf(self.clone(), p)))
    }
    /// Matrix product (batched, broadcasting), like `torch.matmul`.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let v = self.value().matmul(&rhs.value())?;
        Ok(Var::record(v, &[self, rhs], || Op::Matmul(self.clone(), rhs.clone())))
    }
    /// A new shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let old = self.shape();
        let v = self.value().reshape(shape)?;
        Ok(Var::record(v, &[self], || Op::Reshape { input: self.edge(), shape: old }))
    }
    /// Collapses dimensions `start..` into one, like `torch.flatten(x, start)`.
    pub fn flatten_from(&self, start: usize) -> Result<Var> {
        let old = self.shape();
        let end = old.len().saturating_sub(1).max(start);
        let v = self.value().flatten(start, end)?;
        Ok(Var::record(v, &[self], || Op::Reshape { input: self.edge(), shape: old }))
    }
    /// Swaps two dimensions.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Var> {
        let v = self.value().transpose(d0, d1)?;
        Ok(Var::record(v, &[self], || Op::Transpose(self.edge(), d0, d1)))
    }
    fn reduce(&self, dims: &[usize], keepdim: bool, mean: bool) -> Result<Var> {
        let value = self.value();
        let mut dims = dims.to_vec();
        dims.sort_unstable();
        dims.dedup();
        let v = if mean { value.mean(&dims, keepdim)? } else { value.sum(&dims, keepdim)? };
        let count: usize = dims.iter().map(|&d| value.shape()[d]).product();
        let scale = if mean { 1.0 / count.max(1) as f32 } else { 1.0 };
        Ok(Var::record(v, &[self], || Op::Sum { input: self.edge(), dims, keepdim, scale }))
    }
    /// Sum over `dims`.
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce(dims, keepdim, false)
    }
    /// Mean over `dims`.
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Var> {
        self.reduce(dims, keepdim, true)
    }
    /// Sum of every element (a scalar of shape `[]`).
    pub fn sum_all(&self) -> Result<Var> {
        let dims: Vec<usize> = (0..self.value().rank()).collect();
        self.reduce(&dims, false, false)
    }
    /// Mean of every element (a scalar of shape `[]`).
    pub fn mean_all(&self) -> Result<Var> {
        let dims: Vec<usize> = (0..self.value().rank()).collect();
        self.reduce(&dims, false, true)
    }
    /// Softmax along `dim`.
    pub fn softmax(&self, dim: usize) -> Result<Var> {
        let v = self.value().softmax(dim)?;
        Ok(Var::record(v.clone(), &[self], || Op::Softmax { input: self.edge(), output: v, dim }))
    }
    /// Log-softmax along `dim`.
    pub fn log_softmax(&self, dim: usize) -> Result<Var> {
        let v = self.value().log_softmax(dim)?;
        Ok(Var::record(v.clone(), &[self], || Op::LogSoftmax { input: self.edge(), output: v, dim }))
    }
}

/// Class indices of an i64 target tensor `[batch]`, checked against `classes`.
pub(crate) fn class_targets(op: &'static str, targets: &Tensor, batch: usize, classes: usize) -> Result<Vec<usize>> {
    if targets.dtype() != DType::I64 || targets.shape() != [batch] {
        return Err(NnError::Shape(format!(
            "{op}: targets must be an i64 tensor of shape [{batch}], got {} {:?}",
            targets.dtype(),
            targets.shape()
        )));
    }
    targets
        .to_vec_i64()?
        .into_iter()
        .map(|t| {
            usize::try_from(t)
                .ok()
                .filter(|&t| t < classes)
                .ok_or_else(|| NnError::Shape(format!("{op}: target {t} is not a class index below {classes}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_held(v: &Var) -> bool {
        matches!(*v.node.slot(), Slot::Held(_))
    }

    /// A result no backward rule reads (here a ReLU's input) is freed with its last handle, as
    /// in PyTorch, while one that a rule reads (a product's operand) lives until the backward
    /// pass; the gradients are those of the whole expression either way.
    #[test]
    fn values_live_while_a_handle_or_a_backward_rule_needs_them() -> Result<()> {
        let a = Var::parameter(Tensor::from_vec(vec![-1.0, 2.0, 3.0], &[3])?);
        let doubled = a.mul_scalar(2.0)?;
        let doubled_link = doubled.edge();
        let relu = doubled.relu()?;
        let shifted = a.add_scalar(1.0)?;
        let shifted_link = shifted.edge();
        let product = relu.mul(&shifted)?;
        drop((doubled, shifted));
        assert!(!is_held(&doubled_link), "the ReLU's input is released");
        assert_eq!(doubled_link.shape(), vec![3], "its shape stays known");
        assert!(is_held(&shifted_link), "the product's operand is kept for its backward rule");
        assert!(is_held(&a), "leaves are never released");
        product.sum_all()?.backward()?;
        // d/da sum(relu(2a) * (a + 1)) = 2 [a > 0] (a + 1) + relu(2a)
        let grad = a.grad().expect("a gradient").to_vec_f32()?;
        assert_eq!(grad, vec![0.0, 2.0 * 3.0 + 4.0, 2.0 * 4.0 + 6.0]);
        drop(product);
        assert!(!is_held(&shifted_link), "released once the graph lets go");
        Ok(())
    }
}
