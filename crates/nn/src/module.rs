//! The [`Module`] trait and what every module gets from it: named parameters and buffers in
//! PyTorch's order, `state_dict` / `load_state_dict`, `train()` / `eval()`, freezing, parameter
//! counts, and shape inference with mult-adds for the summary.
//!
//! A module declares only its *own* parameters, buffers and children; the walks over the tree
//! live here, once, so their order is PyTorch's everywhere: a module's own parameters, then its
//! own buffers, then each child in registration order.

use crate::autograd::Var;
use crate::{NnError, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tensor::{DType, Tensor};

/// A layer or a network, like `torch.nn.Module`.
pub trait Module: Send + Sync {
    /// The class name shown in summaries (`Conv2d`, `BatchNorm2d`, `Sequential`, ...).
    fn type_name(&self) -> &'static str;

    /// The forward pass. Layers whose behaviour depends on the mode (batch norm, dropout) read
    /// their own training flag, set by [`ModuleExt::train`] / [`ModuleExt::eval`].
    fn forward(&self, input: &Var) -> Result<Var>;

    /// Own parameters, in registration order (`weight` before `bias`).
    fn own_parameters(&self) -> Vec<(&'static str, &Var)> {
        Vec::new()
    }

    /// Own buffers (running statistics), in registration order.
    fn own_buffers(&self) -> Vec<(&'static str, &Var)> {
        Vec::new()
    }

    /// Direct sub-modules with their attribute names (`"conv1"`, or `"0"` in a `Sequential`).
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }

    /// The training flag of a module whose forward depends on the mode.
    fn training_flag(&self) -> Option<&AtomicBool> {
        None
    }

    /// Output shape for an input shape, recording each child through `rec` (for summaries).
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> Result<Vec<usize>>;

    /// The arguments shown after the type in a printed tree, like PyTorch's `extra_repr`.
    fn extra_repr(&self) -> String {
        String::new()
    }
}

/// What a non-strict `load_state_dict` did not load (strict loading fails with all of it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Keys the module has that the state dict lacks.
    pub missing: Vec<String>,
    /// Keys the state dict has that the module lacks.
    pub unexpected: Vec<String>,
    /// Keys present on both sides with different shapes: (key, module's shape, file's shape).
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    /// Whether everything matched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", self.unexpected.join(", ")));
        }
        for (k, want, got) in &self.mismatched {
            parts.push(format!("size mismatch for {k}: the model has {want:?}, the state dict {got:?}"));
        }
        f.write_str(&parts.join("; "))
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Everything a module tree offers, for every [`Module`] (including `dyn Module`).
pub trait ModuleExt: Module {
    /// Every module of the tree in pre-order with its dotted path (`""` for the root).
    fn named_modules(&self) -> Vec<(String, &dyn Module)> {
        named_modules_dyn(self.as_dyn())
    }

    /// Parameters of the whole tree with dotted names, like `named_parameters()`.
    fn named_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        walk(self.as_dyn(), "", &mut |prefix, m| {
            out.extend(m.own_parameters().into_iter().map(|(n, v)| (join(prefix, n), v.clone())));
        });
        out
    }

    /// Buffers of the whole tree with dotted names, like `named_buffers()`.
    fn named_buffers(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        walk(self.as_dyn(), "", &mut |prefix, m| {
            out.extend(m.own_buffers().into_iter().map(|(n, v)| (join(prefix, n), v.clone())));
        });
        out
    }

    /// The parameters an optimizer should update: those that require grad
    /// (`[p for p in net.parameters() if p.requires_grad]`).
    fn trainable_parameters(&self) -> Vec<Var> {
        self.named_parameters().into_iter().map(|(_, v)| v).filter(Var::requires_grad).collect()
    }

    /// The state dict in PyTorch's order: per module, own parameters, own buffers, children.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        walk(self.as_dyn(), "", &mut |prefix, m| {
            for (n, v) in m.own_parameters().into_iter().chain(m.own_buffers()) {
                out.push((join(prefix, n), v.value()));
            }
        });
        out
    }

    /// Loads a state dict. Strict: every key must match in name and shape, or nothing is loaded
    /// and the error lists every missing, unexpected and mismatched key. Non-strict: what
    /// matches is loaded and the rest is reported.
    fn load_state_dict(&self, entries: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
        let given: HashMap<&str, &Tensor> = entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut mine: Vec<(String, Var)> = self.named_parameters();
        mine.extend(self.named_buffers());
        let mut report = LoadReport::default();
        let mut to_load = Vec::new();
        for (k, var) in &mine {
            match given.get(k.as_str()) {
                None if k.ends_with("num_batches_tracked") => {} // absent from older files
                None => report.missing.push(k.clone()),
                Some(t) => {
                    let want = var.shape();
                    if t.shape() != want.as_slice() {
                        report.mismatched.push((k.clone(), want, t.shape().to_vec()));
                    } else {
                        // Loaded values land where the module lives (`load_state_dict` after
                        // `to_device` keeps the model on its GPU).
                        let value = var.value();
                        to_load.push((var.clone(), t.to_dtype(value.dtype()).to_device(value.device())?));
                    }
                }
            }
        }
        let known: std::collections::HashSet<&str> = mine.iter().map(|(k, _)| k.as_str()).collect();
        report.unexpected = entries.iter().map(|(k, _)| k).filter(|k| !known.contains(k.as_str())).cloned().collect();
        if strict && !report.is_clean() {
            return Err(NnError::StateDict(report));
        }
        for (var, t) in to_load {
            var.set_value(t);
        }
        Ok(report)
    }

    /// Moves every f32 parameter and buffer, and their gradients, to `device` (`net.to(device)`).
    /// Integer buffers (`num_batches_tracked`) stay on the host: they are counters the host reads
    /// every step, and reading them from a GPU would wait for it each time.
    fn to_device(&self, device: tensor::Device) -> Result<()> {
        let mut vars = self.named_parameters();
        vars.extend(self.named_buffers());
        let mut moved = Vec::with_capacity(vars.len());
        for (_, var) in &vars {
            let value = var.value();
            if value.dtype() == tensor::DType::F32 {
                let grad = var.grad().map(|g| g.to_device(device)).transpose()?;
                moved.push((var, value.to_device(device)?, grad));
            }
        }
        // Every transfer succeeded before anything changes: a failure leaves the model whole.
        for (var, value, grad) in moved {
            var.set_value(value);
            var.set_grad(grad);
        }
        Ok(())
    }

    /// Where the parameters live (the first parameter's device; the host for a module without
    /// parameters).
    fn device(&self) -> tensor::Device {
        self.named_parameters().first().map_or(tensor::Device::Cpu, |(_, v)| v.value().device())
    }

    /// Sets training mode on the whole tree (`net.train()`).
    fn train(&self) {
        set_training(self.as_dyn(), true);
    }

    /// Sets evaluation mode on the whole tree (`net.eval()`).
    fn eval(&self) {
        set_training(self.as_dyn(), false);
    }

    /// Whether the root (or its first mode-dependent module) is in training mode.
    fn is_training(&self) -> bool {
        let mut mode = None;
        walk(self.as_dyn(), "", &mut |_, m| {
            if mode.is_none() {
                mode = m.training_flag().map(|f| f.load(Ordering::Relaxed));
            }
        });
        mode.unwrap_or(true)
    }

    /// Stops gradients to every parameter of the tree (`requires_grad_(False)`).
    fn freeze(&self) {
        self.named_parameters().iter().for_each(|(_, v)| v.set_requires_grad(false));
    }

    /// Lets gradients flow to every parameter of the tree again.
    fn unfreeze(&self) {
        self.named_parameters().iter().for_each(|(_, v)| v.set_requires_grad(true));
    }

    /// `(total, trainable)` parameter counts.
    fn parameter_counts(&self) -> (usize, usize) {
        self.named_parameters().iter().fold((0, 0), |(t, tr), (_, v)| {
            let n = v.value().numel();
            (t + n, tr + if v.requires_grad() { n } else { 0 })
        })
    }

    /// Clears the gradient of every parameter.
    fn zero_grad(&self) {
        self.named_parameters().iter().for_each(|(_, v)| v.zero_grad());
    }

    /// The sub-module at a dotted path (`"layer1.0"`), like `get_submodule`.
    fn submodule(&self, path: &str) -> Option<&dyn Module> {
        let mut current = self.as_dyn();
        for part in path.split('.').filter(|p| !p.is_empty()) {
            current = current.children().into_iter().find(|(n, _)| n == part)?.1;
        }
        Some(current)
    }

    /// Output shape and total mult-adds for an input shape, without running the network.
    fn output_shape(&self, input: &[usize]) -> Result<(Vec<usize>, u64)> {
        let mut rec = ShapeRecorder::default();
        let out = rec.child("", self.as_dyn(), input)?;
        let macs = rec.rows.iter().map(|r| r.macs).sum();
        Ok((out, macs))
    }

    /// This module as a trait object.
    fn as_dyn(&self) -> &dyn Module;
}

impl<M: Module> ModuleExt for M {
    fn as_dyn(&self) -> &dyn Module {
        self
    }
}

impl ModuleExt for dyn Module + '_ {
    fn as_dyn(&self) -> &dyn Module {
        self
    }
}

fn walk<'a>(m: &'a dyn Module, prefix: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
    f(prefix, m);
    for (name, child) in m.children() {
        walk(child, &join(prefix, &name), f);
    }
}

/// Every module of a tree in pre-order with its dotted path.
pub fn named_modules_dyn(root: &dyn Module) -> Vec<(String, &dyn Module)> {
    let mut out = Vec::new();
    walk(root, "", &mut |prefix, m| out.push((prefix.to_string(), m)));
    out
}

fn set_training(root: &dyn Module, on: bool) {
    walk(root, "", &mut |_, m| {
        if let Some(flag) = m.training_flag() {
            flag.store(on, Ordering::Relaxed);
        }
    });
}

/// One module's line in a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Nesting depth (the root is 0).
    pub depth: usize,
    /// Position among the modules at this depth so far (torchinfo's `depth-idx`).
    pub index: usize,
    /// Attribute name (`conv1`, `0`).
    pub name: String,
    /// Class name.
    pub type_name: &'static str,
    /// Output shape.
    pub output_shape: Vec<usize>,
    /// Parameters of this module alone.
    pub own_params: usize,
    /// Parameters of this module and everything under it.
    pub total_params: usize,
    /// Trainable parameters of this module and everything under it.
    pub trainable_params: usize,
    /// Mult-adds of this module alone (torchinfo's rule).
    pub macs: u64,
    /// Whether the module has no children.
    pub is_leaf: bool,
}

/// Collects one [`SummaryRow`] per module while shapes are inferred.
#[derive(Debug, Default)]
pub struct ShapeRecorder {
    /// The rows, in pre-order.
    pub rows: Vec<SummaryRow>,
    depth: usize,
    counters: Vec<usize>,
}

impl ShapeRecorder {
    /// Infers `module`'s output for `input` as the child `name` of the current module.
    pub fn child(&mut self, name: &str, module: &dyn Module, input: &[usize]) -> Result<Vec<usize>> {
        let depth = if self.rows.is_empty() { 0 } else { self.depth + 1 };
        if self.counters.len() <= depth {
            self.counters.resize(depth + 1, 0);
        }
        self.counters[depth] += 1;
        let at = self.rows.len();
        let (total, trainable) = module.parameter_counts();
        let own: usize = module.own_parameters().iter().map(|(_, v)| v.value().numel()).sum();
        self.rows.push(SummaryRow {
            depth,
            index: self.counters[depth],
            name: name.to_string(),
            type_name: module.type_name(),
            output_shape: Vec::new(),
            own_params: own,
            total_params: total,
            trainable_params: trainable,
            macs: 0,
            is_leaf: module.children().is_empty(),
        });
        let saved = self.depth;
        self.depth = depth;
        let out = module.infer_shape(input, self);
        self.depth = saved;
        let out = out?;
        // torchinfo: weight and bias count once per output position for convs (ignoring the
        // channel dimension), once per batch element otherwise.
        let batch = out.first().copied().unwrap_or(1) as u64;
        let spatial: u64 = out.iter().skip(2).map(|&d| d as u64).product();
        let per = if module.type_name().contains("Conv") { batch * spatial } else { batch };
        let counted: usize = module
            .own_parameters()
            .iter()
            .filter(|(n, _)| *n == "weight" || *n == "bias")
            .map(|(_, v)| v.value().numel())
            .sum();
        self.rows[at].macs = counted as u64 * per;
        self.rows[at].output_shape = out.clone();
        Ok(out)
    }
}

/// A buffer holding an i64 counter (`num_batches_tracked`).
pub(crate) fn counter_buffer() -> Var {
    Var::constant(Tensor::zeros_i64(&[]))
}

pub(crate) fn counter_value(v: &Var) -> i64 {
    let t = v.value();
    match t.dtype() {
        DType::I64 => t.to_vec_i64().ok().and_then(|v| v.first().copied()).unwrap_or(0),
        DType::F32 => t.item().map(|f| f as i64).unwrap_or(0),
    }
}
