//! Operators, attributes, indexing and methods: what `a + b`, `x.shape`, `net.layer1[0]` and
//! `x.mean(dim=1)` do for each kind of value.

use super::args::{bind, bind_varargs, check_numel, int_list, norm_dim, CallArgs};
use super::builtins::{self, dtype_constant, thousands};
use super::error::{type_err, value_err, ReplError, Result};
use super::parser::BinOp;
use super::suggest::suggest;
use super::value::{f32_to_f64, ModuleRef, Value};
use super::{limits, models, MAX_SEQUENCE};
use tensor::{broadcast_shapes, BinaryOp, DType, Tensor};

/// Tensor properties (no call needed).
const TENSOR_ATTRS: [&str; 7] = ["shape", "dtype", "ndim", "T", "device", "requires_grad", "data"];

/// Tensor methods: name and usage.
const TENSOR_METHODS: &[(&str, &str)] = &[
    ("size", "x.size(dim=None)"),
    ("dim", "x.dim()"),
    ("numel", "x.numel()"),
    ("item", "x.item()"),
    ("tolist", "x.tolist()"),
    ("mean", "x.mean(dim=None, keepdim=False)"),
    ("sum", "x.sum(dim=None, keepdim=False)"),
    ("std", "x.std(dim=None, unbiased=True, keepdim=False)"),
    ("var", "x.var(dim=None, unbiased=True, keepdim=False)"),
    ("max", "x.max(dim=None, keepdim=False)"),
    ("min", "x.min(dim=None, keepdim=False)"),
    ("argmax", "x.argmax(dim=None, keepdim=False)"),
    ("softmax", "x.softmax(dim)"),
    ("log_softmax", "x.log_softmax(dim)"),
    ("topk", "x.topk(k, dim=-1)"),
    ("reshape", "x.reshape(*shape)"),
    ("view", "x.view(*shape)"),
    ("flatten", "x.flatten(start_dim=0, end_dim=-1)"),
    ("unsqueeze", "x.unsqueeze(dim)"),
    ("squeeze", "x.squeeze(dim=None)"),
    ("permute", "x.permute(*dims)"),
    ("transpose", "x.transpose(dim0, dim1)"),
    ("t", "x.t()"),
    ("narrow", "x.narrow(dim, start, length)"),
    ("matmul", "x.matmul(other)"),
    ("exp", "x.exp()"),
    ("log", "x.log()"),
    ("sqrt", "x.sqrt()"),
    ("abs", "x.abs()"),
    ("relu", "x.relu()"),
    ("clamp", "x.clamp(min=None, max=None)"),
    ("float", "x.float()"),
    ("long", "x.long()"),
    ("clone", "x.clone()"),
    ("detach", "x.detach()"),
    ("cpu", "x.cpu()"),
    ("contiguous", "x.contiguous()"),
];

/// Module methods: name and usage.
const MODULE_METHODS: &[(&str, &str)] = &[
    ("eval", "model.eval()"),
    ("train", "model.train(mode=True)"),
    ("forward", "model.forward(input)"),
    ("state_dict", "model.state_dict()"),
    ("freeze", "model.freeze()"),
    ("unfreeze", "model.unfreeze()"),
    ("parameters_count", "model.parameters_count()"),
];

/// The usage line of a method, for messages.
pub(crate) fn method_usage(name: &str) -> Option<&'static str> {
    TENSOR_METHODS.iter().chain(MODULE_METHODS).find(|(n, _)| *n == name).map(|(_, u)| *u)
}

fn static_name(table: &[(&'static str, &'static str)], name: &str) -> Option<&'static str> {
    table.iter().find(|(n, _)| *n == name).map(|(n, _)| *n)
}

/// The attribute and method names of a value (for `dir` and completion).
pub(crate) fn attribute_names(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = match v {
        Value::Tensor(_) => {
            TENSOR_ATTRS.iter().chain(TENSOR_METHODS.iter().map(|(n, _)| n)).map(|s| s.to_string()).collect()
        }
        Value::Module(m) => match m.get() {
            Ok(module) => {
                let mut n: Vec<String> = module.children().into_iter().map(|(n, _)| n).collect();
                n.extend(module.own_parameters().into_iter().map(|(n, _)| n.to_string()));
                n.extend(module.own_buffers().into_iter().map(|(n, _)| n.to_string()));
                n.push("training".into());
                n.extend(MODULE_METHODS.iter().map(|(n, _)| n.to_string()));
                n
            }
            Err(_) => Vec::new(),
        },
        Value::Namespace(_) => {
            let mut n: Vec<String> = builtins::BUILTINS.iter().map(|b| b.name.to_string()).collect();
            n.extend(["float32", "float", "int64", "long", "nn", "functional", "models", "resnet"].map(String::from));
            n
        }
        Value::Size(_) => vec!["numel".into()],
        _ => Vec::new(),
    };
    names.sort();
    names.dedup();
    names
}

fn unknown_attr(v: &Value, attr: &str) -> ReplError {
    let names = attribute_names(v);
    let owner = match v {
        Value::Module(m) => m.label(),
        Value::Namespace(n) => format!("module `{n}`"),
        other => format!("'{}' object", other.type_name()),
    };
    ReplError::UnknownAttribute {
        owner,
        attr: attr.to_string(),
        suggestion: suggest(attr, names.iter().map(String::as_str)),
    }
}

/// `value.attr`
pub(crate) fn get_attr(v: Value, attr: &str) -> Result<Value> {
    match &v {
        Value::Tensor(t) => {
            let out = match attr {
                "shape" => Value::Size(t.shape().to_vec()),
                "dtype" => Value::Dtype(t.dtype()),
                "ndim" => Value::Int(t.rank() as i64),
                "T" => {
                    let dims: Vec<usize> = (0..t.rank()).rev().collect();
                    Value::Tensor(t.permute(&dims)?)
                }
                "device" => Value::Str("cpu".into()),
                "requires_grad" => Value::Bool(false),
                "data" => v.clone(),
                _ => match static_name(TENSOR_METHODS, attr) {
                    Some(m) => Value::Method(Box::new(v.clone()), m),
                    None => return Err(unknown_attr(&v, attr)),
                },
            };
            Ok(out)
        }
        Value::Module(m) => {
            let module = m.get()?;
            if module.children().iter().any(|(n, _)| n == attr) {
                return Ok(Value::Module(m.child(attr)));
            }
            let own = module.own_parameters().into_iter().chain(module.own_buffers());
            if let Some((_, var)) = own.into_iter().find(|(n, _)| *n == attr) {
                return Ok(Value::Tensor(var.value()));
            }
            if attr == "training" {
                return Ok(Value::Bool(nn::ModuleExt::is_training(module)));
            }
            match static_name(MODULE_METHODS, attr) {
                Some(name) => Ok(Value::Method(Box::new(v.clone()), name)),
                None => Err(unknown_attr(&v, attr)),
            }
        }
        Value::Namespace(ns) => {
            let path = format!("{ns}.{attr}");
            if let Some(p) = builtins::MODULE_PATHS.iter().find(|p| **p == path) {
                return Ok(Value::Namespace(p));
            }
            if let Some(d) = dtype_constant(attr) {
                return Ok(Value::Dtype(d));
            }
            match builtins::lookup(attr) {
                Some(name) => Ok(Value::Builtin(name)),
                None => Err(unknown_attr(&v, attr)),
            }
        }
        Value::Size(_) if attr == "numel" => Ok(Value::Method(Box::new(v.clone()), "numel")),
        _ => Err(unknown_attr(&v, attr)),
    }
}

fn index_of(len: usize, i: i64, what: &str) -> Result<usize> {
    let n = len as i64;
    let j = if i < 0 { i + n } else { i };
    if j < 0 || j >= n {
        return Err(ReplError::Value(format!("{what} index {i} is out of range (length {len})")));
    }
    Ok(j as usize)
}

/// `value[index]`
pub(crate) fn index(v: Value, idx: Value) -> Result<Value> {
    match (v, idx) {
        (Value::List(items), Value::Int(i)) => Ok(items[index_of(items.len(), i, "list")?].clone()),
        (Value::Tuple(items), Value::Int(i)) => Ok(items[index_of(items.len(), i, "tuple")?].clone()),
        (Value::Size(s), Value::Int(i)) => Ok(Value::Int(s[index_of(s.len(), i, "torch.Size")?] as i64)),
        (Value::Str(s), Value::Int(i)) => {
            let chars: Vec<char> = s.chars().collect();
            Ok(Value::Str(chars[index_of(chars.len(), i, "string")?].to_string()))
        }
        (Value::Tensor(t), Value::Int(i)) => Ok(Value::Tensor(select(&t, i)?)),
        (Value::Tensor(t), Value::Tuple(items)) => {
            if items.len() > t.rank() {
                return Err(value_err(format!("too many indices ({}) for a tensor of rank {}", items.len(), t.rank())));
            }
            let mut t = t;
            // Selecting dim 0 repeatedly walks the indices left to right.
            for item in items {
                match item {
                    Value::Int(i) => t = select(&t, i)?,
                    other => {
                        return Err(type_err(format!("tensor indices must be ints, got {}", other.type_name())));
                    }
                }
            }
            Ok(Value::Tensor(t))
        }
        (Value::Module(m), Value::Int(i)) => {
            let module = m.get()?;
            let children = module.children();
            let sequential = children.iter().enumerate().all(|(k, (n, _))| *n == k.to_string());
            if !sequential || children.is_empty() {
                let names: Vec<&str> = children.iter().map(|(n, _)| n.as_str()).collect();
                return Err(type_err(format!(
                    "{} is not subscriptable by position; use its children by name ({})",
                    m.label(),
                    if names.is_empty() { "it has none".to_string() } else { names.join(", ") }
                )));
            }
            let k = index_of(children.len(), i, module.type_name())?;
            Ok(Value::Module(m.child(&k.to_string())))
        }
        (Value::Module(m), Value::Str(name)) => get_attr(Value::Module(m), &name),
        (Value::Predictions(rows), Value::Int(i)) => {
            let row = &rows[index_of(rows.len(), i, "predictions")?];
            Ok(Value::List(
                row.iter()
                    .map(|p| {
                        let label = p.label.clone().map_or(Value::Int(p.index as i64), Value::Str);
                        Value::Tuple(vec![label, Value::Float(f32_to_f64(p.probability))])
                    })
                    .collect(),
            ))
        }
        (v, i) => Err(type_err(format!("'{}' object cannot be indexed by {}", v.type_name(), i.type_name()))),
    }
}

/// Element `i` of dimension 0 (a view of one fewer dimension).
fn select(t: &Tensor, i: i64) -> Result<Tensor> {
    let Some(&len) = t.shape().first() else {
        return Err(value_err("a 0-d tensor cannot be indexed"));
    };
    let k = index_of(len, i, "tensor")?;
    Ok(t.narrow(0, k, 1)?.squeeze(0)?)
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------

fn unsupported(op: &str, a: &Value, b: &Value) -> ReplError {
    type_err(format!("unsupported operand types for {op}: '{}' and '{}'", a.type_name(), b.type_name()))
}

fn overflow(op: BinOp) -> ReplError {
    value_err(format!("integer overflow in `{}`", op.symbol()))
}

/// `-v` / `+v`
pub(crate) fn unary(negate: bool, v: Value) -> Result<Value> {
    match v {
        Value::Int(i) if negate => i.checked_neg().map(Value::Int).ok_or_else(|| value_err("integer overflow in `-`")),
        Value::Bool(b) if negate => Ok(Value::Int(-i64::from(b))),
        Value::Float(f) if negate => Ok(Value::Float(-f)),
        Value::Tensor(t) if negate => match t.dtype() {
            DType::F32 => Ok(Value::Tensor(t.neg()?)),
            DType::I64 => Ok(Value::Tensor(t.binary(&Tensor::from_vec_i64(vec![-1], &[])?, BinaryOp::Mul)?)),
        },
        v @ (Value::Int(_) | Value::Float(_) | Value::Tensor(_)) => Ok(v),
        Value::Bool(b) => Ok(Value::Int(i64::from(b))),
        other => Err(type_err(format!(
            "bad operand type for unary {}: '{}'",
            if negate { "-" } else { "+" },
            other.type_name()
        ))),
    }
}

/// `a op b`
pub(crate) fn binary(op: BinOp, a: Value, b: Value) -> Result<Value> {
    let a = if let Value::Bool(x) = a { Value::Int(i64::from(x)) } else { a };
    let b = if let Value::Bool(x) = b { Value::Int(i64::from(x)) } else { b };
    match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => int_op(op, *x, *y),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => float_op(op, num(&a), num(&b)),
        (Value::Str(x), Value::Str(y)) if op == BinOp::Add => {
            check_sequence(x.len() + y.len())?;
            Ok(Value::Str(format!("{x}{y}")))
        }
        (Value::List(x), Value::List(y)) if op == BinOp::Add => {
            check_sequence(x.len() + y.len())?;
            Ok(Value::List([x.clone(), y.clone()].concat()))
        }
        (Value::Tuple(x), Value::Tuple(y)) if op == BinOp::Add => {
            check_sequence(x.len() + y.len())?;
            Ok(Value::Tuple([x.clone(), y.clone()].concat()))
        }
        (Value::Tensor(_), _) | (_, Value::Tensor(_)) => tensor_op(op, &a, &b),
        _ => Err(unsupported(op.symbol(), &a, &b)),
    }
}

fn check_sequence(len: usize) -> Result<()> {
    if len > MAX_SEQUENCE {
        return Err(ReplError::Limit(format!(
            "`+` would build a sequence of {len} items, above the limit of {MAX_SEQUENCE}"
        )));
    }
    Ok(())
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    }
}

fn int_op(op: BinOp, x: i64, y: i64) -> Result<Value> {
    let r = match op {
        BinOp::Add => x.checked_add(y),
        BinOp::Sub => x.checked_sub(y),
        BinOp::Mul => x.checked_mul(y),
        BinOp::Div => return float_op(op, x as f64, y as f64),
        BinOp::FloorDiv | BinOp::Mod => {
            if y == 0 {
                return Err(ReplError::ZeroDivision);
            }
            let (q, r) = (x.checked_div(y).ok_or_else(|| overflow(op))?, x % y);
            // Python rounds toward negative infinity, and the remainder takes the divisor's sign.
            let adjust = r != 0 && ((r < 0) != (y < 0));
            if op == BinOp::FloorDiv {
                Some(if adjust { q - 1 } else { q })
            } else {
                Some(if adjust { r + y } else { r })
            }
        }
        BinOp::Pow => {
            if y < 0 {
                return float_op(op, x as f64, y as f64);
            }
            u32::try_from(y).ok().and_then(|y| x.checked_pow(y))
        }
        BinOp::MatMul => return Err(unsupported("@", &Value::Int(x), &Value::Int(y))),
    };
    r.map(Value::Int).ok_or_else(|| overflow(op))
}

fn float_op(op: BinOp, x: f64, y: f64) -> Result<Value> {
    let zero_div = matches!(op, BinOp::Div | BinOp::FloorDiv | BinOp::Mod) && y == 0.0;
    if zero_div || (op == BinOp::Pow && x == 0.0 && y < 0.0) {
        return Err(ReplError::ZeroDivision);
    }
    Ok(Value::Float(match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => x / y,
        BinOp::FloorDiv => (x / y).floor(),
        BinOp::Mod => x - y * (x / y).floor(),
        BinOp::Pow => {
            if x < 0.0 && y.fract() != 0.0 {
                return Err(value_err("a negative number cannot be raised to a fractional power"));
            }
            x.powf(y)
        }
        BinOp::MatMul => return Err(unsupported("@", &Value::Float(x), &Value::Float(y))),
    }))
}

/// A tensor operand: numbers become 0-d tensors of a matching dtype.
fn operand(v: &Value, other_is_float: bool) -> Option<Tensor> {
    match v {
        Value::Tensor(t) => Some(t.clone()),
        Value::Int(i) if !other_is_float => Tensor::from_vec_i64(vec![*i], &[]).ok(),
        Value::Int(i) => Some(Tensor::scalar(*i as f32)),
        Value::Float(f) => Some(Tensor::scalar(*f as f32)),
        _ => None,
    }
}

fn is_float(v: &Value) -> bool {
    match v {
        Value::Tensor(t) => t.dtype() == DType::F32,
        Value::Float(_) => true,
        _ => false,
    }
}

fn tensor_op(op: BinOp, a: &Value, b: &Value) -> Result<Value> {
    let float = is_float(a) || is_float(b) || op == BinOp::Div;
    let (Some(x), Some(y)) = (operand(a, float), operand(b, float)) else {
        return Err(unsupported(op.symbol(), a, b));
    };
    // torch promotes int64 to float32 when either side is floating (and for true division).
    let (x, y) = if float { (x.to_dtype(DType::F32), y.to_dtype(DType::F32)) } else { (x, y) };
    let name = op.symbol();
    let out = match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
            let shape = broadcast_shapes("broadcast", x.shape(), y.shape())?;
            check_numel(name, &shape)?;
            let bop = match op {
                BinOp::Add => BinaryOp::Add,
                BinOp::Sub => BinaryOp::Sub,
                BinOp::Mul => BinaryOp::Mul,
                _ => BinaryOp::Div,
            };
            x.binary(&y, bop)?
        }
        BinOp::MatMul => return matmul(&x, &y),
        BinOp::Pow => match b {
            Value::Int(_) | Value::Float(_) if x.dtype() == DType::F32 => x.powf(num(b) as f32)?,
            _ => return Err(unsupported("**", a, b)),
        },
        BinOp::FloorDiv | BinOp::Mod => return Err(unsupported(name, a, b)),
    };
    Ok(Value::Tensor(out))
}

fn matmul(x: &Tensor, y: &Tensor) -> Result<Value> {
    if x.rank() < 2 || y.rank() < 2 {
        return Err(value_err(format!(
            "matmul: both operands need at least 2 dimensions, got {:?} and {:?}",
            x.shape(),
            y.shape()
        )));
    }
    let (ra, rb) = (x.rank(), y.rank());
    let mut shape = broadcast_shapes("matmul", &x.shape()[..ra - 2], &y.shape()[..rb - 2])?;
    shape.extend([x.shape()[ra - 2], y.shape()[rb - 1]]);
    check_numel("matmul", &shape)?;
    Ok(Value::Tensor(x.matmul(y)?))
}

/// `cat` / `stack` of a list of tensors.
pub(crate) fn cat(func: &'static str, list: &[Value], dim: i64) -> Result<Value> {
    let tensors: Vec<&Tensor> = list
        .iter()
        .map(|v| match v {
            Value::Tensor(t) => Ok(t),
            other => Err(type_err(format!("{func}(): expected a list of tensors, got a {} in it", other.type_name()))),
        })
        .collect::<Result<_>>()?;
    let Some(first) = tensors.first() else {
        return Err(value_err(format!("{func}(): expected a non-empty list of tensors")));
    };
    let total = tensors.iter().try_fold(0usize, |acc, t| acc.checked_add(t.numel()));
    if total.is_none_or(|n| n > limits().max_elements) {
        return Err(ReplError::Limit(format!(
            "{func}(): the result would have more than {} elements",
            thousands(limits().max_elements)
        )));
    }
    let out = if func == "stack" {
        Tensor::stack(&tensors, norm_dim(func, dim, first.rank() + 1)?)?
    } else {
        Tensor::cat(&tensors, norm_dim(func, dim, first.rank())?)?
    };
    Ok(Value::Tensor(out))
}

// ---------------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------------

/// Calls a bound method.
pub(crate) fn call_method(recv: Value, name: &'static str, args: CallArgs) -> Result<Value> {
    match recv {
        Value::Tensor(t) => tensor_method(name, &t, args),
        Value::Module(m) => module_method(&m, name, args),
        Value::Size(shape) if name == "numel" => {
            bind("numel", &[], 0, args)?;
            Ok(Value::Int(shape.iter().try_fold(1i64, |a, &d| a.checked_mul(d as i64)).unwrap_or(i64::MAX)))
        }
        other => Err(type_err(format!("'{}' object has no method {name}", other.type_name()))),
    }
}

fn module_method(m: &ModuleRef, name: &'static str, args: CallArgs) -> Result<Value> {
    match name {
        "eval" => {
            bind(name, &[], 0, args)?;
            models::set_mode(m, false)
        }
        "train" => {
            let mut b = bind(name, &["mode"], 0, args)?;
            let mode = b.bool_or("mode", true)?;
            models::set_mode(m, mode)
        }
        "forward" => {
            let mut b = bind(name, &["input"], 1, args)?;
            let x = b.tensor("input")?;
            Ok(Value::Tensor(models::forward(m, &x)?))
        }
        "state_dict" => {
            bind(name, &[], 0, args)?;
            models::state_dict(m)
        }
        "freeze" | "unfreeze" => {
            bind(name, &[], 0, args)?;
            models::freeze(m, name == "freeze")
        }
        "parameters_count" => {
            bind(name, &[], 0, args)?;
            let (total, _) = nn::ModuleExt::parameter_counts(m.get()?);
            Ok(Value::Int(total as i64))
        }
        _ => Err(type_err(format!("{} has no method {name}", m.label()))),
    }
}

fn dims_of(func: &str, dims: Vec<i64>, rank: usize) -> Result<Vec<usize>> {
    let mut out = dims.into_iter().map(|d| norm_dim(func, d, rank)).collect::<Result<Vec<usize>>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A reshape target with at most one `-1`, resolved against `numel`.
fn reshape_target(func: &str, dims: &[i64], numel: usize) -> Result<Vec<usize>> {
    let mut known = 1usize;
    let mut infer = None;
    for (i, &d) in dims.iter().enumerate() {
        match d {
            -1 if infer.is_none() => infer = Some(i),
            -1 => return Err(value_err(format!("{func}(): only one dimension can be -1, got {dims:?}"))),
            d if d < 0 => return Err(value_err(format!("{func}(): invalid size {d} in {dims:?}"))),
            d => {
                known = known
                    .checked_mul(d as usize)
                    .ok_or_else(|| value_err(format!("{func}(): {dims:?} is too large")))?
            }
        }
    }
    let mut shape: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(value_err(format!("{func}(): shape {dims:?} is invalid for a tensor of {numel} elements")));
        }
        shape[i] = numel / known;
    } else if known != numel {
        return Err(value_err(format!("{func}(): shape {dims:?} is invalid for a tensor of {numel} elements")));
    }
    Ok(shape)
}

fn need_f32(func: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(type_err(format!("{func}(): expected a float32 tensor, got int64 (convert with x.float())")));
    }
    Ok(())
}

/// A 0-d tensor holding `v`.
fn scalar(v: f32) -> Value {
    Value::Tensor(Tensor::scalar(v))
}

/// `x.max(dim)` / `x.min(dim)`: a (values, indices) tuple.
fn max_along(t: &Tensor, dim: usize, keepdim: bool, min: bool) -> Result<Value> {
    let src = if min { t.neg()? } else { t.clone() };
    let values = src.max(dim, keepdim)?;
    let values = if min { values.neg()? } else { values };
    let indices = src.argmax(dim, keepdim)?;
    Ok(Value::Tuple(vec![Value::Tensor(values), Value::Tensor(indices)]))
}

/// Calls a tensor method (also the function forms: `softmax(x, dim=1)`).
pub(crate) fn tensor_method(name: &'static str, t: &Tensor, args: CallArgs) -> Result<Value> {
    let rank = t.rank();
    match name {
        "size" => {
            let mut b = bind(name, &["dim"], 0, args)?;
            match b.opt_int("dim")? {
                None => Ok(Value::Size(t.shape().to_vec())),
                Some(d) => Ok(Value::Int(t.shape()[norm_dim(name, d, rank)?] as i64)),
            }
        }
        "dim" => {
            bind(name, &[], 0, args)?;
            Ok(Value::Int(rank as i64))
        }
        "numel" => {
            bind(name, &[], 0, args)?;
            Ok(Value::Int(t.numel() as i64))
        }
        "item" => {
            bind(name, &[], 0, args)?;
            if t.numel() != 1 {
                return Err(value_err(format!(
                    "item(): only a tensor with one element can be converted to a number, this one has shape {:?}",
                    t.shape()
                )));
            }
            Ok(match t.dtype() {
                DType::F32 => Value::Float(f32_to_f64(t.item()?)),
                DType::I64 => Value::Int(t.to_vec_i64()?[0]),
            })
        }
        "tolist" => {
            bind(name, &[], 0, args)?;
            if t.numel() > 100_000 {
                return Err(ReplError::Limit("tolist(): more than 100,000 elements".into()));
            }
            Ok(to_list(t))
        }
        "mean" | "sum" => {
            let mut b = bind(name, &["dim", "keepdim"], 0, args)?;
            need_f32(name, t)?;
            let keepdim = b.bool_or("keepdim", false)?;
            match b.opt_dims("dim")? {
                None => Ok(scalar(if name == "mean" { t.mean_all()? } else { t.sum_all()? })),
                Some(d) => {
                    let dims = dims_of(name, d, rank)?;
                    Ok(Value::Tensor(if name == "mean" { t.mean(&dims, keepdim)? } else { t.sum(&dims, keepdim)? }))
                }
            }
        }
        "std" | "var" => {
            let mut b = bind(name, &["dim", "unbiased", "keepdim"], 0, args)?;
            need_f32(name, t)?;
            let unbiased = b.bool_or("unbiased", true)?;
            let keepdim = b.bool_or("keepdim", false)?;
            let dims = match b.opt_dims("dim")? {
                None => (0..rank).collect(),
                Some(d) => dims_of(name, d, rank)?,
            };
            let v = t.var(&dims, unbiased, keepdim)?;
            Ok(Value::Tensor(if name == "std" { v.sqrt()? } else { v }))
        }
        "max" | "min" => {
            let mut b = bind(name, &["dim", "keepdim"], 0, args)?;
            need_f32(name, t)?;
            let keepdim = b.bool_or("keepdim", false)?;
            match b.opt_int("dim")? {
                None => {
                    if t.numel() == 0 {
                        return Err(value_err(format!("{name}(): the tensor is empty")));
                    }
                    let flat = t.reshape(&[t.numel()])?;
                    let v = if name == "max" { flat.max(0, false)? } else { flat.neg()?.max(0, false)?.neg()? };
                    Ok(Value::Tensor(v))
                }
                Some(d) => max_along(t, norm_dim(name, d, rank)?, keepdim, name == "min"),
            }
        }
        "argmax" => {
            let mut b = bind(name, &["dim", "keepdim"], 0, args)?;
            need_f32(name, t)?;
            let keepdim = b.bool_or("keepdim", false)?;
            match b.opt_int("dim")? {
                None => Ok(Value::Tensor(t.reshape(&[t.numel()])?.argmax(0, false)?)),
                Some(d) => Ok(Value::Tensor(t.argmax(norm_dim(name, d, rank)?, keepdim)?)),
            }
        }
        "softmax" | "log_softmax" => {
            let mut b = bind(name, &["dim"], 1, args)?;
            need_f32(name, t)?;
            let dim = norm_dim(name, b.int("dim")?, rank)?;
            Ok(Value::Tensor(if name == "softmax" { t.softmax(dim)? } else { t.log_softmax(dim)? }))
        }
        "topk" => {
            let mut b = bind(name, &["k", "dim"], 1, args)?;
            need_f32(name, t)?;
            let k = b.usize("k")?;
            let dim = norm_dim(name, b.opt_int("dim")?.unwrap_or(-1), rank)?;
            let (values, indices) = topk(t, k, dim)?;
            Ok(Value::Tuple(vec![Value::Tensor(values), Value::Tensor(indices)]))
        }
        "reshape" | "view" => {
            let (pos, _) = bind_varargs(name, &[], args)?;
            let dims = int_list(name, "sizes", pos)?;
            let shape = reshape_target(name, &dims, t.numel())?;
            Ok(Value::Tensor(t.reshape(&shape)?))
        }
        "flatten" => {
            let mut b = bind(name, &["start_dim", "end_dim"], 0, args)?;
            if rank == 0 {
                return Ok(Value::Tensor(t.reshape(&[1])?));
            }
            let start = norm_dim(name, b.opt_int("start_dim")?.unwrap_or(0), rank)?;
            let end = norm_dim(name, b.opt_int("end_dim")?.unwrap_or(-1), rank)?;
            Ok(Value::Tensor(t.flatten(start, end)?))
        }
        "unsqueeze" => {
            let mut b = bind(name, &["dim"], 1, args)?;
            let dim = norm_dim(name, b.int("dim")?, rank + 1)?;
            Ok(Value::Tensor(t.unsqueeze(dim)?))
        }
        "squeeze" => {
            let mut b = bind(name, &["dim"], 0, args)?;
            match b.opt_int("dim")? {
                Some(d) => {
                    let d = norm_dim(name, d, rank)?;
                    // torch leaves a dimension that is not of size 1 alone.
                    Ok(Value::Tensor(if t.shape()[d] == 1 { t.squeeze(d)? } else { t.clone() }))
                }
                None => {
                    let shape: Vec<usize> = t.shape().iter().copied().filter(|&d| d != 1).collect();
                    Ok(Value::Tensor(t.reshape(&shape)?))
                }
            }
        }
        "permute" => {
            let (pos, _) = bind_varargs(name, &[], args)?;
            let dims = int_list(name, "dims", pos)?;
            let dims = dims.into_iter().map(|d| norm_dim(name, d, rank)).collect::<Result<Vec<_>>>()?;
            Ok(Value::Tensor(t.permute(&dims)?))
        }
        "transpose" => {
            let mut b = bind(name, &["dim0", "dim1"], 2, args)?;
            let d0 = norm_dim(name, b.int("dim0")?, rank)?;
            let d1 = norm_dim(name, b.int("dim1")?, rank)?;
            Ok(Value::Tensor(t.transpose(d0, d1)?))
        }
        "t" => {
            bind(name, &[], 0, args)?;
            if rank < 2 {
                return Ok(Value::Tensor(t.clone()));
            }
            Ok(Value::Tensor(t.t()?))
        }
        "narrow" => {
            let mut b = bind(name, &["dim", "start", "length"], 3, args)?;
            let dim = norm_dim(name, b.int("dim")?, rank)?;
            let size = t.shape()[dim];
            let start = b.int("start")?;
            let start = if start < 0 { start + size as i64 } else { start };
            let length = b.usize("length")?;
            let start = usize::try_from(start)
                .map_err(|_| value_err(format!("narrow(): start is out of range for a dimension of size {size}")))?;
            Ok(Value::Tensor(t.narrow(dim, start, length)?))
        }
        "matmul" => {
            let mut b = bind(name, &["other"], 1, args)?;
            let other = b.tensor("other")?;
            matmul(&t.to_dtype(DType::F32), &other.to_dtype(DType::F32))
        }
        "exp" | "log" | "sqrt" | "abs" | "relu" => {
            bind(name, &[], 0, args)?;
            if name == "abs" && t.dtype() == DType::I64 {
                let v: Vec<i64> = t.to_vec_i64()?.into_iter().map(i64::saturating_abs).collect();
                return Ok(Value::Tensor(Tensor::from_vec_i64(v, t.shape())?));
            }
            let t = t.to_dtype(DType::F32);
            Ok(Value::Tensor(match name {
                "exp" => t.exp()?,
                "log" => t.log()?,
                "sqrt" => t.sqrt()?,
                "abs" => t.abs()?,
                _ => t.relu()?,
            }))
        }
        "clamp" => {
            let mut b = bind(name, &["min", "max"], 0, args)?;
            need_f32(name, t)?;
            let lo = b.opt_float("min")?.map_or(f32::NEG_INFINITY, |v| v as f32);
            let hi = b.opt_float("max")?.map_or(f32::INFINITY, |v| v as f32);
            Ok(Value::Tensor(t.clamp(lo, hi)?))
        }
        "float" => {
            bind(name, &[], 0, args)?;
            Ok(Value::Tensor(t.to_dtype(DType::F32)))
        }
        "long" => {
            bind(name, &[], 0, args)?;
            Ok(Value::Tensor(t.to_dtype(DType::I64)))
        }
        "clone" | "detach" | "cpu" | "contiguous" => {
            bind(name, &[], 0, args)?;
            Ok(Value::Tensor(t.contiguous()))
        }
        _ => Err(type_err(format!("Tensor has no method {name}"))),
    }
}

fn to_list(t: &Tensor) -> Value {
    let values: Vec<Value> = match t.dtype() {
        DType::F32 => t.to_vec_f32().unwrap_or_default().into_iter().map(|v| Value::Float(f32_to_f64(v))).collect(),
        DType::I64 => t.to_vec_i64().unwrap_or_default().into_iter().map(Value::Int).collect(),
    };
    fn nest(values: &[Value], shape: &[usize]) -> Value {
        match shape {
            [] => values.first().cloned().unwrap_or(Value::None),
            [_] => Value::List(values.to_vec()),
            [n, rest @ ..] => {
                let chunk = rest.iter().product::<usize>();
                if chunk == 0 {
                    return Value::List(vec![Value::List(Vec::new()); *n]);
                }
                Value::List(values.chunks(chunk).map(|c| nest(c, rest)).collect())
            }
        }
    }
    nest(&values, t.shape())
}

/// The `k` largest values along `dim` and their indices, like `torch.topk`.
pub(crate) fn topk(t: &Tensor, k: usize, dim: usize) -> Result<(Tensor, Tensor)> {
    let rank = t.rank();
    let n = t.shape()[dim];
    if k == 0 || k > n {
        return Err(value_err(format!("topk(): k = {k} is out of range for a dimension of size {n}")));
    }
    // Move `dim` last, flatten the rest into rows, take each row's top k, move it back.
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != dim).collect();
    perm.push(dim);
    let moved = t.permute(&perm)?.contiguous();
    let rows = moved.numel() / n.max(1);
    let r = nn::topk(&moved.reshape(&[rows, n])?, k)?;
    let mut out_shape: Vec<usize> = moved.shape().to_vec();
    *out_shape.last_mut().expect("rank >= 1") = k;
    let values = Tensor::from_vec(r.values.concat(), &out_shape)?;
    let indices = Tensor::from_vec_i64(r.indices.concat().into_iter().map(|i| i as i64).collect(), &out_shape)?;
    let mut inverse = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok((values.permute(&inverse)?.contiguous(), indices.permute(&inverse)?.contiguous()))
}
