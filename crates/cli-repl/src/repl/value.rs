//! The values of the language and how the REPL prints them: numbers and strings as Python
//! does, tensors as `torch` does, modules as PyTorch's tree repr, shapes as `torch.Size`.

use super::error::{value_err, Result};
use nn::{Module, ModuleExt, ShapeRecorder, Var};
use resnet::{Arch, ResNet};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use tensor::{DType, Tensor};

/// A value.
#[derive(Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Tensor(Tensor),
    /// A shape, printed as `torch.Size([...])`.
    Size(Vec<usize>),
    Dtype(DType),
    /// A network or layer, or a sub-module of one.
    Module(ModuleRef),
    /// A builtin function or class, by name.
    Builtin(&'static str),
    /// `torch`, `torch.nn`, `torchvision.models`, ...: attribute access gives builtins.
    Namespace(&'static str),
    /// A method bound to its receiver (`x.mean`).
    Method(Box<Value>, &'static str),
    /// Text printed as it is (summaries, reports).
    Text(String),
    /// The result of `predict`.
    Predictions(Vec<Vec<Prediction>>),
    /// The value of `exit()` / `quit()`: ends the session.
    Quit,
}

/// One row of a `predict` result.
#[derive(Clone, Debug)]
pub(crate) struct Prediction {
    /// Class index.
    pub index: usize,
    /// Class name, when known.
    pub label: Option<String>,
    /// Softmax probability.
    pub probability: f32,
}

/// What a root module value owns.
pub(crate) enum RootModule {
    ResNet(Box<ResNet>),
    Other(Box<dyn Module>),
}

/// A module tree created in the session, shared by every value that refers into it.
pub(crate) struct Root {
    pub module: RootModule,
    /// The zoo architecture, when the model is exactly one (for weight-file metadata).
    pub arch: Option<Arch>,
    /// Class names, when a weight file provided them.
    pub classes: Mutex<Option<Vec<String>>>,
}

impl Root {
    pub(crate) fn new(module: RootModule, arch: Option<Arch>) -> Arc<Root> {
        Arc::new(Root { module, arch, classes: Mutex::new(None) })
    }

    pub(crate) fn module(&self) -> &dyn Module {
        match &self.module {
            RootModule::ResNet(r) => r.as_ref(),
            RootModule::Other(m) => m.as_ref(),
        }
    }

    pub(crate) fn classes(&self) -> Option<Vec<String>> {
        self.classes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_classes(&self, classes: Option<Vec<String>>) {
        *self.classes.lock().unwrap_or_else(|p| p.into_inner()) = classes;
    }
}

/// A module value: the root of its tree plus the dotted path of the module inside it, so that
/// `net.layer1[0]` shares parameters and modes with `net`.
#[derive(Clone)]
pub(crate) struct ModuleRef {
    pub root: Arc<Root>,
    pub path: String,
}

impl ModuleRef {
    pub(crate) fn new_root(module: RootModule, arch: Option<Arch>) -> ModuleRef {
        ModuleRef { root: Root::new(module, arch), path: String::new() }
    }

    pub(crate) fn other(m: impl Module + 'static) -> ModuleRef {
        ModuleRef::new_root(RootModule::Other(Box::new(m)), None)
    }

    /// The module this value refers to.
    pub(crate) fn get(&self) -> Result<&dyn Module> {
        self.root
            .module()
            .submodule(&self.path)
            .ok_or_else(|| value_err(format!("the sub-module `{}` no longer exists", self.path)))
    }

    /// The ResNet, when this value is a whole ResNet.
    pub(crate) fn resnet(&self) -> Option<&ResNet> {
        match (&self.root.module, self.path.is_empty()) {
            (RootModule::ResNet(r), true) => Some(r),
            _ => None,
        }
    }

    /// The child called `name`.
    pub(crate) fn child(&self, name: &str) -> ModuleRef {
        let path = if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        ModuleRef { root: self.root.clone(), path }
    }

    /// How to call this module in messages: its path, or its type for a root.
    pub(crate) fn label(&self) -> String {
        let ty = self.get().map_or("Module", |m| m.type_name());
        if self.path.is_empty() {
            ty.to_string()
        } else {
            format!("{ty} `{}`", self.path)
        }
    }

    /// Takes the module out when nothing else refers to it (a temporary like the argument in
    /// `Sequential(Conv2d(3, 8, 3))`); otherwise wraps a shared reference.
    pub(crate) fn into_boxed(self) -> Box<dyn Module> {
        if self.path.is_empty() {
            match Arc::try_unwrap(self.root) {
                Ok(root) => {
                    return match root.module {
                        RootModule::ResNet(r) => r,
                        RootModule::Other(m) => m,
                    }
                }
                Err(root) => return Box::new(Shared(ModuleRef { root, path: String::new() })),
            }
        }
        Box::new(Shared(self))
    }
}

/// A module that is part of another value's tree, used inside a new container (PyTorch shares
/// module objects the same way: `Sequential(net.layer1, net.layer2)` trains `net`'s weights).
pub(crate) struct Shared(pub ModuleRef);

impl Shared {
    fn inner(&self) -> Option<&dyn Module> {
        self.0.get().ok()
    }
}

impl Module for Shared {
    fn type_name(&self) -> &'static str {
        self.inner().map_or("Module", |m| m.type_name())
    }
    fn forward(&self, input: &Var) -> nn::Result<Var> {
        match self.inner() {
            Some(m) => m.forward(input),
            None => Err(nn::NnError::Config(format!("the sub-module `{}` no longer exists", self.0.path))),
        }
    }
    fn own_parameters(&self) -> Vec<(&'static str, &Var)> {
        self.inner().map(|m| m.own_parameters()).unwrap_or_default()
    }
    fn own_buffers(&self) -> Vec<(&'static str, &Var)> {
        self.inner().map(|m| m.own_buffers()).unwrap_or_default()
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.inner().map(|m| m.children()).unwrap_or_default()
    }
    fn training_flag(&self) -> Option<&std::sync::atomic::AtomicBool> {
        self.inner().and_then(|m| m.training_flag())
    }
    fn infer_shape(&self, input: &[usize], rec: &mut ShapeRecorder) -> nn::Result<Vec<usize>> {
        match self.inner() {
            Some(m) => m.infer_shape(input, rec),
            None => Err(nn::NnError::Config(format!("the sub-module `{}` no longer exists", self.0.path))),
        }
    }
    fn extra_repr(&self) -> String {
        self.inner().map(|m| m.extra_repr()).unwrap_or_default()
    }
}

impl Value {
    /// Python's name for the value's type, for messages.
    pub(crate) fn type_name(&self) -> String {
        match self {
            Value::None => "NoneType".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::List(_) => "list".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::Tensor(_) => "Tensor".into(),
            Value::Size(_) => "torch.Size".into(),
            Value::Dtype(_) => "torch.dtype".into(),
            Value::Module(m) => m.get().map_or("Module", |m| m.type_name()).into(),
            Value::Builtin(n) => {
                if super::builtins::is_class(n) {
                    "type".into()
                } else {
                    "builtin_function".into()
                }
            }
            Value::Namespace(_) => "module".into(),
            Value::Method(..) => "method".into(),
            Value::Text(_) => "str".into(),
            Value::Predictions(_) => "predictions".into(),
            Value::Quit => "NoneType".into(),
        }
    }

    /// What `print(value)` shows (strings without quotes).
    pub(crate) fn to_str(&self) -> String {
        match self {
            Value::Str(s) | Value::Text(s) => s.clone(),
            other => other.repr(),
        }
    }

    /// What the REPL shows for the value (Python's `repr`).
    pub(crate) fn repr(&self) -> String {
        match self {
            Value::None | Value::Quit => "None".into(),
            Value::Bool(b) => if *b { "True" } else { "False" }.into(),
            Value::Int(v) => v.to_string(),
            Value::Float(v) => py_float(*v),
            Value::Str(s) => py_str(s),
            Value::List(items) => format!("[{}]", items.iter().map(Value::repr).collect::<Vec<_>>().join(", ")),
            Value::Tuple(items) if items.len() == 1 => format!("({},)", items[0].repr()),
            Value::Tuple(items) => format!("({})", items.iter().map(Value::repr).collect::<Vec<_>>().join(", ")),
            Value::Tensor(t) => tensor_repr(t),
            Value::Size(s) => size_repr(s),
            Value::Dtype(d) => dtype_repr(*d).into(),
            Value::Module(m) => match m.get() {
                Ok(m) => module_repr(m),
                Err(e) => format!("<{e}>"),
            },
            Value::Builtin(n) => {
                if super::builtins::is_class(n) {
                    format!("<class '{n}'>")
                } else {
                    format!("<built-in function {n}>")
                }
            }
            Value::Namespace(n) => format!("<module '{n}'>"),
            Value::Method(recv, n) => format!("<bound method {}.{n}>", recv.type_name()),
            Value::Text(s) => s.trim_end().to_string(),
            Value::Predictions(rows) => predictions_repr(rows),
        }
    }
}

/// `torch.Size([2, 5])`
pub(crate) fn size_repr(s: &[usize]) -> String {
    format!("torch.Size([{}])", s.iter().map(usize::to_string).collect::<Vec<_>>().join(", "))
}

/// `torch.float32` / `torch.int64`
pub(crate) fn dtype_repr(d: DType) -> &'static str {
    match d {
        DType::F32 => "torch.float32",
        DType::I64 => "torch.int64",
    }
}

/// A float as Python prints it: shortest round-trip digits, exponent below 1e-4 and from 1e16.
pub(crate) fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{v}");
    if s.contains('.') {
        s
    } else {
        s + ".0"
    }
}

/// A float from an f32 by its shortest decimal form, so that `0.1f32` shows as `0.1`.
pub(crate) fn f32_to_f64(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

/// A string as Python's `repr` writes it.
pub(crate) fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// PyTorch's module repr: `Type(extra)` for a leaf, the children indented in brackets otherwise.
pub(crate) fn module_repr(m: &dyn Module) -> String {
    let children = m.children();
    let extra = m.extra_repr();
    if children.is_empty() {
        return format!("{}({extra})", m.type_name());
    }
    let mut lines: Vec<String> = extra.lines().map(str::to_string).collect();
    for (name, child) in children {
        let child = module_repr(child).replace('\n', "\n  ");
        lines.push(format!("({name}): {child}"));
    }
    format!("{}(\n  {}\n)", m.type_name(), lines.join("\n  "))
}

fn predictions_repr(rows: &[Vec<Prediction>]) -> String {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        if rows.len() > 1 {
            let _ = writeln!(out, "image {i}:");
        }
        let labels: Vec<String> =
            row.iter().map(|p| p.label.clone().unwrap_or_else(|| format!("class {}", p.index))).collect();
        let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        for (rank, (p, label)) in row.iter().zip(&labels).enumerate() {
            let _ = write!(out, "{:>3}. {label:<width$}  {:>6.2}%", rank + 1, p.probability * 100.0);
            if p.label.is_some() {
                let _ = write!(out, "  (index {})", p.index);
            }
            out.push('\n');
        }
    }
    out.trim_end().to_string()
}

// ---------------------------------------------------------------------------------------------
// Tensor printing, after torch/_tensor_str.py
// ---------------------------------------------------------------------------------------------

/// torch summarises tensors above this many elements.
const THRESHOLD: usize = 1000;
/// Elements shown at each end of a summarised dimension.
const EDGE_ITEMS: usize = 3;
/// torch's line width.
const LINE_WIDTH: usize = 80;

/// The elements of a tensor being printed, borrowed when it is contiguous (a large tensor is
/// never copied just to show six of its numbers).
enum Cells<'a> {
    F32 { values: Cow<'a, [f32]>, mode: FloatMode },
    I64(Cow<'a, [i64]>),
}

#[derive(Clone, Copy)]
enum FloatMode {
    /// Every value is an integer: `1.`, `-3.`
    Int,
    /// Four decimals.
    Fixed,
    /// `1.0000e-05`
    Sci,
}

impl Cells<'_> {
    fn format(&self, i: usize) -> String {
        match self {
            Cells::I64(v) => v[i].to_string(),
            Cells::F32 { values, mode } => {
                let x = values[i];
                if x.is_nan() {
                    return "nan".into();
                }
                if x.is_infinite() {
                    return if x > 0.0 { "inf" } else { "-inf" }.into();
                }
                match mode {
                    FloatMode::Int => format!("{x:.0}."),
                    FloatMode::Fixed => format!("{x:.4}"),
                    FloatMode::Sci => sci(x),
                }
            }
        }
    }
}

fn sci(x: f32) -> String {
    let s = format!("{x:.4e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

fn float_mode(values: &[f32]) -> FloatMode {
    let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let nonzero: Vec<f32> = finite.iter().map(|v| v.abs()).filter(|&v| v != 0.0).collect();
    let max = nonzero.iter().copied().fold(0f32, f32::max);
    let min = nonzero.iter().copied().fold(f32::INFINITY, f32::min);
    if finite.iter().all(|v| v.fract() == 0.0) {
        if max > 1e8 {
            FloatMode::Sci
        } else {
            FloatMode::Int
        }
    } else if !nonzero.is_empty() && (max / min > 1000.0 || max > 1e8 || min < 1e-4) {
        FloatMode::Sci
    } else {
        FloatMode::Fixed
    }
}

/// The indices shown along a dimension of `size`, `None` standing for `...`.
fn shown(size: usize, summarize: bool) -> Vec<Option<usize>> {
    if summarize && size > 2 * EDGE_ITEMS {
        (0..EDGE_ITEMS).map(Some).chain([None]).chain((size - EDGE_ITEMS..size).map(Some)).collect()
    } else {
        (0..size).map(Some).collect()
    }
}

/// Flat indices of the elements that are printed (all, or the edges when summarising).
fn visible(shape: &[usize], summarize: bool) -> Vec<usize> {
    let mut out = vec![0usize];
    for &d in shape {
        let idx: Vec<usize> = shown(d, summarize).into_iter().flatten().collect();
        out = out.iter().flat_map(|&base| idx.iter().map(move |&i| base * d + i)).collect();
    }
    out
}

/// A tensor as `torch` prints it: `tensor([[ 0.1234, -1.0000], ...])`. Tensors of more than
/// 1,000 elements and rank above 2 are shown as their shape and statistics instead, since
/// even torch's summarised form of an image batch fills the screen.
pub(crate) fn tensor_repr(t: &Tensor) -> String {
    let shape = t.shape().to_vec();
    let numel = t.numel();
    let summarize = numel > THRESHOLD;
    if numel == 0 {
        let size = shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
        let dtype = if t.dtype() == DType::I64 { ", dtype=torch.int64" } else { "" };
        return if shape == [0] { format!("tensor([]{dtype})") } else { format!("tensor([], size=({size}){dtype})") };
    }
    if summarize && shape.len() > 2 {
        return tensor_stats(t);
    }
    let cells = match t.dtype() {
        DType::F32 => {
            let Ok(values) = t.f32_data("repr") else { return "tensor(?)".into() };
            let vis: Vec<f32> = visible(&shape, summarize).into_iter().map(|i| values[i]).collect();
            Cells::F32 { mode: float_mode(&vis), values }
        }
        DType::I64 => match t.i64_data("repr") {
            Ok(values) => Cells::I64(values),
            Err(_) => return "tensor(?)".into(),
        },
    };
    let width = visible(&shape, summarize).into_iter().map(|i| cells.format(i).len()).max().unwrap_or(1);
    let prefix = "tensor(";
    let body = if shape.is_empty() {
        cells.format(0)
    } else {
        let strides: Vec<usize> = (0..shape.len()).map(|d| shape[d + 1..].iter().product()).collect();
        block(&cells, &shape, &strides, 0, 0, prefix.len(), width, summarize)
    };
    format!("{prefix}{body})")
}

#[allow(clippy::too_many_arguments)]
fn block(
    cells: &Cells,
    shape: &[usize],
    strides: &[usize],
    dim: usize,
    offset: usize,
    indent: usize,
    width: usize,
    summarize: bool,
) -> String {
    let items = shown(shape[dim], summarize);
    if dim + 1 == shape.len() {
        let texts: Vec<String> = items
            .iter()
            .map(|i| match i {
                Some(i) => format!("{:>width$}", cells.format(offset + i * strides[dim])),
                None => "...".into(),
            })
            .collect();
        let per_line = ((LINE_WIDTH.saturating_sub(indent)) / (width + 2)).max(1);
        let lines: Vec<String> = texts.chunks(per_line).map(|c| c.join(", ")).collect();
        return format!("[{}]", lines.join(&format!(",\n{}", " ".repeat(indent + 1))));
    }
    let parts: Vec<String> = items
        .iter()
        .map(|i| match i {
            Some(i) => block(cells, shape, strides, dim + 1, offset + i * strides[dim], indent + 1, width, summarize),
            None => "...".into(),
        })
        .collect();
    let sep = format!(",{}{}", "\n".repeat(shape.len() - dim - 1), " ".repeat(indent + 1));
    format!("[{}]", parts.join(&sep))
}

fn tensor_stats(t: &Tensor) -> String {
    let dims = t.shape().iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
    let mut s = format!(
        "tensor(<{} elements>, size=({dims}), dtype={}",
        super::builtins::thousands(t.numel()),
        dtype_repr(t.dtype())
    );
    let (mean, var, min, max) = match t.dtype() {
        DType::F32 => match t.f32_data("repr") {
            Ok(d) => stats(d.iter().map(|&v| f64::from(v))),
            Err(_) => return s + ")",
        },
        DType::I64 => match t.i64_data("repr") {
            Ok(d) => stats(d.iter().map(|&v| v as f64)),
            Err(_) => return s + ")",
        },
    };
    let _ = write!(s, ", min={min:.4}, max={max:.4}, mean={mean:.4}, std={:.4})", var.sqrt());
    s
}

/// Mean, unbiased variance, min and max, in two passes over borrowed elements.
fn stats(values: impl Iterator<Item = f64> + Clone) -> (f64, f64, f64, f64) {
    let (mut n, mut sum, mut min, mut max) = (0f64, 0f64, f64::INFINITY, f64::NEG_INFINITY);
    for v in values.clone() {
        n += 1.0;
        sum += v;
        min = min.min(v);
        max = max.max(v);
    }
    let mean = sum / n;
    let var = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var, min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(1e20), "1e+20");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(-2.5), "-2.5");
        assert_eq!(f32_to_f64(0.1f32), 0.1);
    }

    #[test]
    fn tensors_print_like_torch() {
        let t = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        assert_eq!(tensor_repr(&t), "tensor([[1., 2.],\n        [3., 4.]])");
        let t = Tensor::from_vec(vec![0.5, -1.25], &[2]).unwrap();
        assert_eq!(tensor_repr(&t), "tensor([ 0.5000, -1.2500])");
        let t = Tensor::from_vec_i64(vec![3, 10], &[2]).unwrap();
        assert_eq!(tensor_repr(&t), "tensor([ 3, 10])");
        assert_eq!(tensor_repr(&Tensor::scalar(0.25)), "tensor(0.2500)");
        let t = Tensor::from_vec(vec![1e-6, 1.0], &[2]).unwrap();
        assert_eq!(tensor_repr(&t), "tensor([1.0000e-06, 1.0000e+00])");
        let t = Tensor::zeros(&[2, 2000]);
        let r = tensor_repr(&t);
        assert!(r.contains("..."), "{r}");
        assert!(tensor_repr(&Tensor::zeros(&[2, 3, 64, 64])).contains("size=(2, 3, 64, 64)"));
    }
}
