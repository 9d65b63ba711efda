//! The layers of a ResNet, with `torch.nn`'s defaults, parameter names and initialisation:
//! Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Linear, Flatten,
//! Dropout, Identity, Sequential.

use crate::autograd::Var;
use crate::functional as F;
use crate::module::{counter_buffer, counter_value, Module, ShapeRecorder};
use crate::{NnError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tensor::{Conv2dParams, FanMode, Nonlinearity, Pool2dParams, Rng, Tensor};

fn shape_err(layer: &str, input: &[usize], msg: impl std::fmt::Display) -> NnError {
    NnError::Shape(format!("{layer}: input of shape {input:?}: {msg}"))
}

/// PyTorch's default for Conv2d and Linear weights: `kaiming_uniform_(a=sqrt(5))`, i.e.
/// uniform in `±1/sqrt(fan_in)`; biases uniform in the same bound.
fn default_init(shape: &[usize], bias: bool, rng: &mut Rng) -> Result<(Var, Option<Var>)> {
    let w = Tensor::kaiming_uniform(shape, FanMode::FanIn, Nonlinearity::LeakyRelu(5f64.sqrt()), rng)?;
    let (fan_in, _) = tensor::fans(shape)?;
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let b = bias.then(|| Var::parameter(Tensor::uniform(&shape[..1], -bound, bound, rng)));
    Ok((Var::parameter(w), b))
}

/// A 2-D convolution layer, `torch.nn.Conv2d`.
pub struct Conv2d {
    /// `[out, in / groups, kh, kw]`
    pub weight: Var,
    /// `[out]`, when the layer has a bias.
    pub bias: Option<Var>,
    /// Stride, padding, dilation, groups.
    pub params: Conv2dParams,
}

/// Builder for [`Conv2d`]: `Conv2dConfig::new(3, 64, 7).stride(2).padding(3).bias(false)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dConfig {
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 2],
    params: Conv2dParams,
    bias: bool,
}

impl Conv2dConfig {
    /// A square `kernel` conv from `in_channels` to `out_channels` (stride 1, no padding, bias).
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Conv2dConfig { in_channels, out_channels, kernel: [kernel, kernel], params: Conv2dParams::new(), bias: true }
    }
    /// Stride in both directions.
    pub fn stride(mut self, s: usize) -> Self {
        self.params.stride = [s, s];
        self
    }
    /// Zero padding on every side.
    pub fn padding(mut self, p: usize) -> Self {
        self.params.padding = [p, p];
        self
    }
    /// Dilation in both directions.
    pub fn dilation(mut self, d: usize) -> Self {
        self.params.dilation = [d, d];
        self
    }
    /// Channel groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.params.groups = g;
        self
    }
    /// Whether the layer has a bias (default `true`).
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    /// Builds the layer with PyTorch's default initialisation.
    pub fn init(self, rng: &mut Rng) -> Result<Conv2d> {
        let g = self.params.groups;
        if g == 0
            || !self.in_channels.is_multiple_of(g)
            || !self.out_channels.is_multiple_of(g)
            || self.kernel.contains(&0)
        {
            return Err(NnError::Config(format!(
                "Conv2d({}, {}, kernel_size={:?}, groups={g}): channels must be divisible by groups and sizes positive",
                self.in_channels, self.out_channels, self.kernel
            )));
        }
        let shape = [self.out_channels, self.in_channels / g, self.kernel[0], self.kernel[1]];
        let (weight, bias) = default_init(&shape, self.bias, rng)?;
        Ok(Conv2d { weight, bias, params: self.params })
    }
}

impl Module for Conv2d {
    fn type_name(&self) -> &'static str {
        "Conv2d"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        F::conv2d(input, &self.weight, self.bias.as_ref(), self.params)
    }
    fn own_parameters(&self) -> Vec<(&'static str, &Var)> {
        let mut v = vec![("weight", &self.weight)];
        v.extend(self.bias.as_ref().map(|b| ("bias", b)));
        v
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        Ok(tensor::conv2d_output_shape(input, &self.weight.shape(), self.params)?.to_vec())
    }
    fn extra_repr(&self) -> String {
        let w = self.weight.shape();
        let p = &self.params;
        let mut s = format!(
            "{}, {}, kernel_size=({}, {}), stride=({}, {})",
            w[1] * p.groups,
            w[0],
            w[2],
            w[3],
            p.stride[0],
            p.stride[1]
        );
        if p.padding != [0, 0] {
            s += &format!(", padding=({}, {})", p.padding[0], p.padding[1]);
        }
        if p.dilation != [1, 1] {
            s += &format!(", dilation=({}, {})", p.dilation[0], p.dilation[1]);
        }
        if p.groups != 1 {
            s += &format!(", groups={}", p.groups);
        }
        if self.bias.is_none() {
            s += ", bias=False";
        }
        s
    }
}

/// Batch normalisation over channels, `torch.nn.BatchNorm2d`.
pub struct BatchNorm2d {
    /// gamma `[C]` (when affine).
    pub weight: Option<Var>,
    /// beta `[C]` (when affine).
    pub bias: Option<Var>,
    /// `[C]` (when tracking running stats).
    pub running_mean: Option<Var>,
    /// `[C]` (when tracking running stats).
    pub running_var: Option<Var>,
    /// i64 scalar (when tracking running stats).
    pub num_batches_tracked: Option<Var>,
    /// Added to the variance.
    pub eps: f64,
    /// Running-average factor; `None` is a cumulative average (PyTorch's `momentum=None`).
    pub momentum: Option<f64>,
    channels: usize,
    training: AtomicBool,
}

impl BatchNorm2d {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1, affine, tracking running stats.
    pub fn new(channels: usize) -> Self {
        Self::with_options(channels, 1e-5, Some(0.1), true, true)
    }

    /// Every option of `torch.nn.BatchNorm2d`.
    pub fn with_options(
        channels: usize,
        eps: f64,
        momentum: Option<f64>,
        affine: bool,
        track_running_stats: bool,
    ) -> Self {
        let track = |t: Tensor| track_running_stats.then(|| Var::constant(t));
        BatchNorm2d {
            weight: affine.then(|| Var::parameter(Tensor::ones(&[channels]))),
            bias: affine.then(|| Var::parameter(Tensor::zeros(&[channels]))),
            running_mean: track(Tensor::zeros(&[channels])),
            running_var: track(Tensor::ones(&[channels])),
            num_batches_tracked: track_running_stats.then(counter_buffer),
            eps,
            momentum,
            channels,
            training: AtomicBool::new(true),
        }
    }

    /// `relu(self(input) + residual)`, the residual add and the ReLU each optional, as a ResNet
    /// block ends: in training (with running statistics, not synchronised across processes) one
    /// op over the activations ([`F::batch_norm_train_finish`]), otherwise the separate ops.
    pub fn forward_finish(&self, input: &Var, residual: Option<&Var>, relu: bool) -> Result<Var> {
        let shape = input.shape();
        if shape.len() < 2 || shape[1] != self.channels {
            return Err(shape_err(
                "BatchNorm2d",
                &shape,
                format!("expected {} channels in dimension 1", self.channels),
            ));
        }
        let training = self.training.load(Ordering::Relaxed);
        match (&self.running_mean, &self.running_var) {
            (Some(rm), Some(rv)) if !training => {
                let y = F::batch_norm_eval(
                    input,
                    self.weight.as_ref(),
                    self.bias.as_ref(),
                    &rm.value(),
                    &rv.value(),
                    self.eps,
                )?;
                finish(y, residual, relu)
            }
            (Some(rm), Some(rv)) => {
                let counter = self.num_batches_tracked.as_ref().expect("tracked together with the running stats");
                let count = counter_value(counter) + 1;
                counter.set_value(Tensor::from_vec_i64(vec![count], &[])?);
                let momentum = self.momentum.unwrap_or(1.0 / count as f64);
                let (rmv, rvv) = (rm.value(), rv.value());
                let (w, b, running) = (self.weight.as_ref(), self.bias.as_ref(), Some((&rmv, &rvv)));
                let (y, running) = match crate::autograd::sync_group() {
                    Some(group) => {
                        let (y, running) =
                            F::sync_batch_norm_train(input, w, b, running, momentum, self.eps, group.as_ref())?;
                        (finish(y, residual, relu)?, running)
                    }
                    None => F::batch_norm_train_finish(input, w, b, running, momentum, self.eps, residual, relu)?,
                };
                if let Some((m, v)) = running {
                    rm.set_value(m);
                    rv.set_value(v);
                }
                Ok(y)
            }
            _ => {
                let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
                Ok(F::batch_norm_train_finish(input, w, b, None, 0.0, self.eps, residual, relu)?.0)
            }
        }
    }
}

/// `relu(y + residual)`, each optional, as separate ops.
fn finish(y: Var, residual: Option<&Var>, relu: bool) -> Result<Var> {
    let y = match residual {
        Some(r) => y.add(r)?,
        None => y,
    };
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

impl Module for BatchNorm2d {
    fn type_name(&self) -> &'static str {
        "BatchNorm2d"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        self.forward_finish(input, None, false)
    }
    fn own_parameters(&self) -> Vec<(&'static str, &Var)> {
        let mut v = Vec::new();
        v.extend(self.weight.as_ref().map(|w| ("weight", w)));
        v.extend(self.bias.as_ref().map(|b| ("bias", b)));
        v
    }
    fn own_buffers(&self) -> Vec<(&'static str, &Var)> {
        let mut v = Vec::new();
        v.extend(self.running_mean.as_ref().map(|b| ("running_mean", b)));
        v.extend(self.running_var.as_ref().map(|b| ("running_var", b)));
        v.extend(self.num_batches_tracked.as_ref().map(|b| ("num_batches_tracked", b)));
        v
    }
    fn training_flag(&self) -> Option<&AtomicBool> {
        Some(&self.training)
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        if input.len() < 2 || input[1] != self.channels {
            return Err(shape_err("BatchNorm2d", input, format!("expected {} channels in dimension 1", self.channels)));
        }
        Ok(input.to_vec())
    }
    fn extra_repr(&self) -> String {
        format!(
            "{}, eps={:e}, momentum={}, affine={}, track_running_stats={}",
            self.channels,
            self.eps,
            self.momentum.map_or("None".into(), |m| m.to_string()),
            if self.weight.is_some() { "True" } else { "False" },
            if self.running_mean.is_some() { "True" } else { "False" }
        )
    }
}

/// `max(x, 0)`, `torch.nn.ReLU`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReLU;

impl Module for ReLU {
    fn type_name(&self) -> &'static str {
        "ReLU"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        input.relu()
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
}

/// Max pooling, `torch.nn.MaxPool2d`.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d(pub Pool2dParams);

impl Module for MaxPool2d {
    fn type_name(&self) -> &'static str {
        "MaxPool2d"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        F::max_pool2d(input, self.0)
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        Ok(tensor::pool2d_output_shape(input, self.0)?.to_vec())
    }
    fn extra_repr(&self) -> String {
        let p = &self.0;
        format!(
            "kernel_size={}, stride={}, padding={}, dilation=1, ceil_mode={}",
            p.kernel[0],
            p.stride[0],
            p.padding[0],
            if p.ceil_mode { "True" } else { "False" }
        )
    }
}

/// Average pooling, `torch.nn.AvgPool2d`.
#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d {
    /// The window.
    pub params: Pool2dParams,
    /// Whether zero padding counts in the divisor (PyTorch's default: true).
    pub count_include_pad: bool,
}

impl Module for AvgPool2d {
    fn type_name(&self) -> &'static str {
        "AvgPool2d"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        F::avg_pool2d(input, self.params, self.count_include_pad)
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        Ok(tensor::pool2d_output_shape(input, self.params)?.to_vec())
    }
}

/// Adaptive average pooling to a fixed output size, `torch.nn.AdaptiveAvgPool2d`.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveAvgPool2d(pub [usize; 2]);

impl Module for AdaptiveAvgPool2d {
    fn type_name(&self) -> &'static str {
        "AdaptiveAvgPool2d"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        F::adaptive_avg_pool2d(input, self.0)
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        if input.len() != 4 {
            return Err(shape_err("AdaptiveAvgPool2d", input, "expected [batch, channels, height, width]"));
        }
        Ok(vec![input[0], input[1], self.0[0], self.0[1]])
    }
    fn extra_repr(&self) -> String {
        format!("output_size=({}, {})", self.0[0], self.0[1])
    }
}

/// A fully connected layer, `torch.nn.Linear`.
pub struct Linear {
    /// `[out, in]`
    pub weight: Var,
    /// `[out]`
    pub bias: Option<Var>,
}

impl Linear {
    /// PyTorch's default initialisation.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng) -> Result<Linear> {
        let (weight, bias) = default_init(&[out_features, in_features], bias, rng)?;
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    fn type_name(&self) -> &'static str {
        "Linear"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        F::linear(input, &self.weight, self.bias.as_ref())
    }
    fn own_parameters(&self) -> Vec<(&'static str, &Var)> {
        let mut v = vec![("weight", &self.weight)];
        v.extend(self.bias.as_ref().map(|b| ("bias", b)));
        v
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        let w = self.weight.shape();
        if input.len() != 2 || input[1] != w[1] {
            return Err(shape_err("Linear", input, format!("expected [batch, {}]", w[1])));
        }
        Ok(vec![input[0], w[0]])
    }
    fn extra_repr(&self) -> String {
        let w = self.weight.shape();
        format!(
            "in_features={}, out_features={}, bias={}",
            w[1],
            w[0],
            if self.bias.is_some() { "True" } else { "False" }
        )
    }
}

/// Flattens dimensions from `start_dim` on, `torch.nn.Flatten` (default `start_dim = 1`).
#[derive(Debug, Clone, Copy)]
pub struct Flatten {
    /// First dimension to flatten.
    pub start_dim: usize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start_dim: 1 }
    }
}

impl Module for Flatten {
    fn type_name(&self) -> &'static str {
        "Flatten"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        input.flatten_from(self.start_dim)
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        if self.start_dim >= input.len() {
            return Err(shape_err("Flatten", input, format!("cannot flatten from dimension {}", self.start_dim)));
        }
        let mut out = input[..self.start_dim].to_vec();
        out.push(input[self.start_dim..].iter().product());
        Ok(out)
    }
}

/// Dropout, `torch.nn.Dropout`: active in training mode only.
pub struct Dropout {
    /// Probability of zeroing an element.
    pub p: f64,
    rng: Mutex<Rng>,
    training: AtomicBool,
}

impl Dropout {
    /// Dropout with probability `p`, its masks drawn from a generator seeded with `seed`.
    pub fn new(p: f64, seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(NnError::Config(format!("dropout probability must be in [0, 1), got {p}")));
        }
        Ok(Dropout { p, rng: Mutex::new(Rng::seed(seed)), training: AtomicBool::new(true) })
    }
}

impl Module for Dropout {
    fn type_name(&self) -> &'static str {
        "Dropout"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        if !self.training.load(Ordering::Relaxed) || self.p == 0.0 {
            return Ok(input.clone());
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        F::dropout(input, self.p, &mut rng)
    }
    fn training_flag(&self) -> Option<&AtomicBool> {
        Some(&self.training)
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn extra_repr(&self) -> String {
        format!("p={}", self.p)
    }
}

/// Passes its input through, `torch.nn.Identity`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Identity;

impl Module for Identity {
    fn type_name(&self) -> &'static str {
        "Identity"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        Ok(input.clone())
    }
    fn infer_shape(&self, input: &[usize], _: &mut ShapeRecorder) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
}

/// Modules applied in order, `torch.nn.Sequential`; children are named `"0"`, `"1"`, ...
#[derive(Default)]
pub struct Sequential {
    /// The modules, in order.
    pub layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// A sequence of modules.
    pub fn new(layers: Vec<Box<dyn Module>>) -> Self {
        Sequential { layers }
    }
    /// Appends a module.
    pub fn push(&mut self, m: impl Module + 'static) {
        self.layers.push(Box::new(m));
    }
}

impl Module for Sequential {
    fn type_name(&self) -> &'static str {
        "Sequential"
    }
    fn forward(&self, input: &Var) -> Result<Var> {
        self.layers.iter().try_fold(input.clone(), |x, m| m.forward(&x))
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.iter().enumerate().map(|(i, m)| (i.to_string(), m.as_ref())).collect()
    }
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> Result<Vec<usize>> {
        let mut shape = input.to_vec();
        for (i, m) in self.layers.iter().enumerate() {
            shape = rec.child(&i.to_string(), m.as_ref(), &shape)?;
        }
        Ok(shape)
    }
}
