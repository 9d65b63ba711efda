//! Binding call arguments to parameter names, Python style, and converting them with messages
//! that name the function, the parameter and what it expected.

use super::builtins::usage;
use super::error::{type_err, value_err, ReplError, Result};
use super::suggest::suggest;
use super::value::{ModuleRef, Value};
use super::{limits, MAX_HYPER};
use tensor::Tensor;

/// The evaluated arguments of a call.
#[derive(Default)]
pub(crate) struct CallArgs {
    pub pos: Vec<Value>,
    pub kw: Vec<(String, Value)>,
}

impl CallArgs {
    /// Removes and returns the first argument: the first positional one, or the keyword `name`.
    pub(crate) fn take_first(&mut self, func: &'static str, name: &str) -> Result<Value> {
        if !self.pos.is_empty() {
            return Ok(self.pos.remove(0));
        }
        if let Some(i) = self.kw.iter().position(|(k, _)| k == name) {
            return Ok(self.kw.remove(i).1);
        }
        Err(type_err(format!("{func}() missing required argument `{name}`; usage: {}", usage(func))))
    }
}

/// Arguments bound to a function's parameters.
pub(crate) struct Bound {
    func: &'static str,
    names: &'static [&'static str],
    vals: Vec<Option<Value>>,
}

/// Binds positional arguments in order and keywords by name; the first `required` parameters
/// must be given.
pub(crate) fn bind(
    func: &'static str,
    params: &'static [&'static str],
    required: usize,
    args: CallArgs,
) -> Result<Bound> {
    if args.pos.len() > params.len() {
        return Err(type_err(format!(
            "{func}() takes {} positional argument{} but {} were given; usage: {}",
            if params.len() == required { format!("{}", params.len()) } else { format!("at most {}", params.len()) },
            if params.len() == 1 { "" } else { "s" },
            args.pos.len(),
            usage(func)
        )));
    }
    let mut vals: Vec<Option<Value>> = vec![None; params.len()];
    for (slot, v) in vals.iter_mut().zip(args.pos) {
        *slot = Some(v);
    }
    for (k, v) in args.kw {
        let Some(i) = params.iter().position(|p| *p == k) else {
            return Err(ReplError::UnknownKeyword {
                func: func.to_string(),
                suggestion: suggest(&k, params.iter().copied()),
                keyword: k,
                usage: usage(func).to_string(),
            });
        };
        if vals[i].is_some() {
            return Err(type_err(format!("{func}() got multiple values for argument `{k}`")));
        }
        vals[i] = Some(v);
    }
    if let Some(i) = (0..required).find(|&i| vals[i].is_none()) {
        return Err(type_err(format!("{func}() missing required argument `{}`; usage: {}", params[i], usage(func))));
    }
    Ok(Bound { func, names: params, vals })
}

/// Binds a `*args` function: every positional argument is returned as it is, keywords bind to
/// `keywords`.
pub(crate) fn bind_varargs(
    func: &'static str,
    keywords: &'static [&'static str],
    mut args: CallArgs,
) -> Result<(Vec<Value>, Bound)> {
    let pos = std::mem::take(&mut args.pos);
    Ok((pos, bind(func, keywords, 0, args)?))
}

impl Bound {
    fn slot(&mut self, name: &str) -> Option<Value> {
        let i = self.names.iter().position(|n| *n == name).expect("parameter names are static");
        // An explicit None means "the default", as it does for Python's `=None` parameters.
        match self.vals[i].take() {
            Some(Value::None) | None => None,
            Some(v) => Some(v),
        }
    }

    fn wrong(&self, name: &str, expected: &str, got: &Value) -> ReplError {
        type_err(format!("{}(): argument `{name}` must be {expected}, got {}", self.func, got.type_name()))
    }

    /// The raw value, if given.
    pub(crate) fn value(&mut self, name: &str) -> Option<Value> {
        self.slot(name)
    }

    /// Whether the argument was given (and not None).
    pub(crate) fn has(&self, name: &str) -> bool {
        let i = self.names.iter().position(|n| *n == name).expect("parameter names are static");
        !matches!(self.vals[i], None | Some(Value::None))
    }

    /// A required tensor.
    pub(crate) fn tensor(&mut self, name: &str) -> Result<Tensor> {
        match self.slot(name) {
            Some(Value::Tensor(t)) => Ok(t),
            Some(v) => Err(self.wrong(name, "a Tensor", &v)),
            None => Err(self.missing(name)),
        }
    }

    /// A required module.
    pub(crate) fn module(&mut self, name: &str) -> Result<ModuleRef> {
        match self.slot(name) {
            Some(Value::Module(m)) => Ok(m),
            Some(v) => Err(self.wrong(name, "a module (a network or layer)", &v)),
            None => Err(self.missing(name)),
        }
    }

    fn missing(&self, name: &str) -> ReplError {
        type_err(format!("{}() missing required argument `{name}`; usage: {}", self.func, usage(self.func)))
    }

    /// An optional integer.
    pub(crate) fn opt_int(&mut self, name: &str) -> Result<Option<i64>> {
        match self.slot(name) {
            None => Ok(None),
            Some(Value::Int(v)) => Ok(Some(v)),
            Some(Value::Bool(b)) => Ok(Some(i64::from(b))),
            Some(v) => Err(self.wrong(name, "an int", &v)),
        }
    }

    /// A required integer.
    pub(crate) fn int(&mut self, name: &str) -> Result<i64> {
        self.opt_int(name)?.ok_or_else(|| self.missing(name))
    }

    /// An optional non-negative integer.
    pub(crate) fn opt_usize(&mut self, name: &str) -> Result<Option<usize>> {
        match self.opt_int(name)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| value_err(format!("{}(): argument `{name}` must not be negative, got {v}", self.func))),
        }
    }

    /// A non-negative integer with a default.
    pub(crate) fn usize_or(&mut self, name: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(name)?.unwrap_or(default))
    }

    /// A required non-negative integer.
    pub(crate) fn usize(&mut self, name: &str) -> Result<usize> {
        self.opt_usize(name)?.ok_or_else(|| self.missing(name))
    }

    /// A positive integer no larger than `max`, with a default.
    pub(crate) fn positive_or(&mut self, name: &str, default: usize, max: usize) -> Result<usize> {
        let v = self.usize_or(name, default)?;
        self.check_positive(name, v, max)
    }

    /// A required positive integer no larger than `max`.
    pub(crate) fn positive(&mut self, name: &str, max: usize) -> Result<usize> {
        let v = self.usize(name)?;
        self.check_positive(name, v, max)
    }

    fn check_positive(&self, name: &str, v: usize, max: usize) -> Result<usize> {
        if v == 0 {
            return Err(value_err(format!("{}(): argument `{name}` must be positive, got 0", self.func)));
        }
        if v > max {
            return Err(ReplError::Limit(format!(
                "{}(): argument `{name}` = {v} is above this REPL's limit of {max}",
                self.func
            )));
        }
        Ok(v)
    }

    /// An optional number.
    pub(crate) fn opt_float(&mut self, name: &str) -> Result<Option<f64>> {
        match self.slot(name) {
            None => Ok(None),
            Some(Value::Int(v)) => Ok(Some(v as f64)),
            Some(Value::Float(v)) => Ok(Some(v)),
            Some(v) => Err(self.wrong(name, "a number", &v)),
        }
    }

    /// A number with a default.
    pub(crate) fn float_or(&mut self, name: &str, default: f64) -> Result<f64> {
        Ok(self.opt_float(name)?.unwrap_or(default))
    }

    /// A boolean with a default.
    pub(crate) fn bool_or(&mut self, name: &str, default: bool) -> Result<bool> {
        match self.slot(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(b),
            Some(Value::Int(v @ (0 | 1))) => Ok(v == 1),
            Some(v) => Err(self.wrong(name, "True or False", &v)),
        }
    }

    /// An optional string.
    pub(crate) fn opt_str(&mut self, name: &str) -> Result<Option<String>> {
        match self.slot(name) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(name, "a string", &v)),
        }
    }

    /// A required string.
    pub(crate) fn str(&mut self, name: &str) -> Result<String> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    /// An int or a pair of ints (`3` or `(3, 5)`), each in `lo..=MAX_HYPER`, with a default.
    pub(crate) fn pair_or(&mut self, name: &str, default: [usize; 2], lo: usize) -> Result<[usize; 2]> {
        let func = self.func;
        let check = |v: i64| -> Result<usize> {
            usize::try_from(v).ok().filter(|&v| v >= lo && v <= MAX_HYPER).ok_or_else(|| {
                value_err(format!("{func}(): argument `{name}` must be between {lo} and {MAX_HYPER}, got {v}"))
            })
        };
        match self.slot(name) {
            None => Ok(default),
            Some(Value::Int(v)) => {
                let v = check(v)?;
                Ok([v, v])
            }
            Some(Value::Tuple(items) | Value::List(items)) if items.len() == 2 => {
                let mut out = [0; 2];
                for (o, item) in out.iter_mut().zip(&items) {
                    match item {
                        Value::Int(v) => *o = check(*v)?,
                        other => return Err(self.wrong(name, "an int or a pair of ints", other)),
                    }
                }
                Ok(out)
            }
            Some(v) => Err(self.wrong(name, "an int or a pair of ints", &v)),
        }
    }

    /// A dimension list: an int or a tuple/list of ints (for `mean(dim=(2, 3))`).
    pub(crate) fn opt_dims(&mut self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.slot(name) {
            None => Ok(None),
            Some(Value::Int(v)) => Ok(Some(vec![v])),
            Some(Value::Tuple(items) | Value::List(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Int(v) => Ok(*v),
                    other => Err(self.wrong(name, "an int or a tuple of ints", other)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.wrong(name, "an int or a tuple of ints", &v)),
        }
    }
}

/// The integer value, for the shape, dims and index arguments of `*args` functions.
pub(crate) fn as_int(func: &str, what: &str, v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(type_err(format!("{func}(): {what} must be ints, got {}", other.type_name()))),
    }
}

/// A list of integers from `*args` or from a single list, tuple or `torch.Size`.
pub(crate) fn int_list(func: &str, what: &str, values: Vec<Value>) -> Result<Vec<i64>> {
    let items = match values.as_slice() {
        [Value::List(items) | Value::Tuple(items)] => items.clone(),
        [Value::Size(s)] => s.iter().map(|&d| Value::Int(d as i64)).collect(),
        _ => values,
    };
    items.iter().map(|v| as_int(func, what, v)).collect()
}

/// A shape from `*size` arguments (`randn(2, 3)`, `randn((2, 3))`, `randn(x.shape)`), refusing
/// negative sizes and anything above the session's element limit.
pub(crate) fn shape_arg(func: &str, values: Vec<Value>) -> Result<Vec<usize>> {
    let dims = int_list(func, "sizes", values)?;
    let shape = dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| value_err(format!("{func}(): sizes must not be negative, got {dims:?}")))
        })
        .collect::<Result<Vec<usize>>>()?;
    check_numel(func, &shape)?;
    Ok(shape)
}

/// Refuses shapes of more elements than the session's limit (or whose size overflows).
pub(crate) fn check_numel(func: &str, shape: &[usize]) -> Result<usize> {
    let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match n {
        Some(n) if n <= limits().max_elements => Ok(n),
        _ => Err(ReplError::Limit(format!(
            "{func}(): a tensor of shape {shape:?} has more than {} elements, the limit of this REPL",
            super::builtins::thousands(limits().max_elements)
        ))),
    }
}

/// A dimension index with Python's negative indexing, checked against the rank.
pub(crate) fn norm_dim(func: &str, dim: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r {
        let range =
            if rank == 0 { "none: the tensor is 0-dimensional".to_string() } else { format!("{} to {}", -r, r - 1) };
        return Err(ReplError::Value(format!(
            "{func}(): dimension {dim} is out of range for a tensor of rank {rank} (valid: {range})"
        )));
    }
    Ok(d as usize)
}
