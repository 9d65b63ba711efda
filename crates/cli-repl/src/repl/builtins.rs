//! The builtin functions and classes: their registry (names, usage lines and one-line docs,
//! used by `:help`, completion and "did you mean"), and dispatch by name.

use super::args::{bind, bind_varargs, shape_arg, CallArgs};
use super::error::{type_err, value_err, ReplError, Result};
use super::value::{f32_to_f64, Value};
use super::{limits, models, ops, Session};
use resnet::Arch;
use tensor::{DType, Rng, Tensor};

/// A builtin's registry entry.
pub(crate) struct Info {
    pub name: &'static str,
    pub usage: &'static str,
    pub doc: &'static str,
    pub group: &'static str,
}

const fn b(name: &'static str, usage: &'static str, doc: &'static str, group: &'static str) -> Info {
    Info { name, usage, doc, group }
}

const ZOO_USAGE: &str = "NAME(num_classes=1000, weights=None, zero_init_residual=False, base_planes=64, seed=None)";

/// The groups of `:help`, in order.
pub(crate) const GROUPS: [(&str, &str); 6] = [
    ("models", "Models"),
    ("layers", "Layers (torch.nn)"),
    ("tensors", "Creating tensors"),
    ("functions", "Tensor functions (also methods: x.softmax(dim=1))"),
    ("tools", "Working with models"),
    ("other", "Other"),
];

/// Every builtin.
pub(crate) const BUILTINS: &[Info] = &[
    b("resnet18", ZOO_USAGE, "torchvision's ResNet-18 (random weights unless `weights` names a file)", "models"),
    b("resnet34", ZOO_USAGE, "torchvision's ResNet-34", "models"),
    b("resnet50", ZOO_USAGE, "torchvision's ResNet-50", "models"),
    b("resnet101", ZOO_USAGE, "torchvision's ResNet-101", "models"),
    b("resnet152", ZOO_USAGE, "torchvision's ResNet-152", "models"),
    b("resnext50_32x4d", ZOO_USAGE, "torchvision's ResNeXt-50 32x4d", "models"),
    b("resnext101_32x8d", ZOO_USAGE, "torchvision's ResNeXt-101 32x8d", "models"),
    b("resnext101_64x4d", ZOO_USAGE, "torchvision's ResNeXt-101 64x4d", "models"),
    b("wide_resnet50_2", ZOO_USAGE, "torchvision's Wide ResNet-50-2", "models"),
    b("wide_resnet101_2", ZOO_USAGE, "torchvision's Wide ResNet-101-2", "models"),
    b(
        "ResNet",
        "ResNet(block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64, replace_stride_with_dilation=None, base_planes=64, seed=None)",
        "a custom ResNet: block is BasicBlock or Bottleneck, layers the 4 stage depths",
        "models",
    ),
    b(
        "BasicBlock",
        "BasicBlock(inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1)",
        "two 3x3 convs with a residual connection (downsample added automatically when shapes change)",
        "models",
    ),
    b(
        "Bottleneck",
        "Bottleneck(inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1)",
        "1x1, 3x3 (stride, groups), 1x1 (x4) with a residual connection; width_per_group= is accepted for base_width=",
        "models",
    ),
    b("Sequential", "Sequential(*modules)", "modules applied in order (children 0, 1, ...)", "layers"),
    b(
        "Conv2d",
        "Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True)",
        "2-D convolution; sizes are an int or a pair, padding may be 'same' or 'valid'",
        "layers",
    ),
    b(
        "BatchNorm2d",
        "BatchNorm2d(num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)",
        "batch normalisation over channels",
        "layers",
    ),
    b("ReLU", "ReLU(inplace=False)", "max(x, 0)", "layers"),
    b("MaxPool2d", "MaxPool2d(kernel_size, stride=None, padding=0, ceil_mode=False)", "max pooling", "layers"),
    b(
        "AvgPool2d",
        "AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)",
        "average pooling",
        "layers",
    ),
    b("AdaptiveAvgPool2d", "AdaptiveAvgPool2d(output_size)", "average pooling to a fixed output size", "layers"),
    b("Linear", "Linear(in_features, out_features, bias=True)", "fully connected layer", "layers"),
    b("Flatten", "Flatten(start_dim=1, end_dim=-1)", "flattens dimensions from start_dim on", "layers"),
    b("Dropout", "Dropout(p=0.5, inplace=False)", "zeroes elements with probability p in training mode", "layers"),
    b("Identity", "Identity()", "passes its input through", "layers"),
    b("tensor", "tensor(data, dtype=None)", "a tensor from (nested) lists of numbers; ints give int64", "tensors"),
    b("randn", "randn(*size)", "standard normal samples", "tensors"),
    b("rand", "rand(*size)", "uniform samples in [0, 1)", "tensors"),
    b("zeros", "zeros(*size, dtype=None)", "a tensor of zeros", "tensors"),
    b("ones", "ones(*size, dtype=None)", "a tensor of ones", "tensors"),
    b("full", "full(size, fill_value)", "a tensor filled with one value", "tensors"),
    b("arange", "arange(end) or arange(start, end, step=1)", "evenly spaced values (int64 for int arguments)", "tensors"),
    b("cat", "cat(tensors, dim=0)", "concatenates tensors along an existing dimension", "tensors"),
    b("stack", "stack(tensors, dim=0)", "stacks tensors along a new dimension", "tensors"),
    b("manual_seed", "manual_seed(seed)", "reseeds the generator of randn, rand, dropout and new models", "tensors"),
    b(
        "image",
        "image(path, size=224, resize=256)",
        "an image file as a [1, 3, size, size] batch with the ImageNet eval transforms",
        "tensors",
    ),
    b("softmax", "softmax(input, dim)", "exp(x) / sum(exp(x)) along dim", "functions"),
    b("log_softmax", "log_softmax(input, dim)", "log of softmax, computed stably", "functions"),
    b("argmax", "argmax(input, dim=None, keepdim=False)", "index of the maximum (of all elements without dim)", "functions"),
    b("topk", "topk(input, k, dim=-1)", "the k largest values and their indices, as a tuple", "functions"),
    b("mean", "mean(input, dim=None, keepdim=False)", "mean of all elements, or along dim", "functions"),
    b("sum", "sum(input, dim=None, keepdim=False)", "sum of all elements, or along dim", "functions"),
    b("relu", "relu(input)", "max(x, 0)", "functions"),
    b("exp", "exp(input)", "e^x", "functions"),
    b("log", "log(input)", "natural logarithm", "functions"),
    b("sqrt", "sqrt(input)", "square root", "functions"),
    b("abs", "abs(input)", "absolute value (of a tensor or a number)", "functions"),
    b("matmul", "matmul(input, other)", "matrix product (also `a @ b`)", "functions"),
    b("flatten", "flatten(input, start_dim=0, end_dim=-1)", "collapses dimensions into one", "functions"),
    b("reshape", "reshape(input, shape)", "the same elements in a new shape (one size may be -1)", "functions"),
    b("narrow", "narrow(input, dim, start, length)", "length elements of dim from start (a slice)", "functions"),
    b(
        "summary",
        "summary(model, input_size=(1, 3, 224, 224), depth=3)",
        "torchinfo's table: output shapes, parameters and mult-adds per layer",
        "tools",
    ),
    b("params", "params(model)", "total, trainable and non-trainable parameter counts", "tools"),
    b("state_dict", "state_dict(model)", "the state-dict keys with their shapes", "tools"),
    b(
        "load",
        "load(model, path, strict=True)",
        "loads .pth or .safetensors weights; a ResNet keeps its own head when only the head differs",
        "tools",
    ),
    b("save", "save(model, path)", "writes the weights as .safetensors (or .pth by extension)", "tools"),
    b("freeze", "freeze(module)", "stops gradients to every parameter of the module (requires_grad=False)", "tools"),
    b("unfreeze", "unfreeze(module)", "lets gradients flow to the module's parameters again", "tools"),
    b("train", "train(model, mode=True)", "training mode: BatchNorm uses batch statistics, Dropout is active", "tools"),
    b("eval", "eval(model)", "evaluation mode: BatchNorm uses running statistics; needed for inference", "tools"),
    b(
        "predict",
        "predict(model, input, k=5, classes=None)",
        "eval mode, softmax and the top-k classes; classes is a list of names or a class_indices.json path",
        "tools",
    ),
    b(
        "cam",
        "cam(model, input, class=None)",
        "Grad-CAM heatmaps [N, H, W] in [0, 1] of a ResNet's layer4 for a class (default: the predicted one)",
        "tools",
    ),
    b("len", "len(obj)", "length of a list, tuple, string, shape, tensor (first dimension) or Sequential", "other"),
    b("print", "print(*values)", "prints values (strings without quotes)", "other"),
    b("type", "type(obj)", "the type of a value", "other"),
    b("dir", "dir(obj)", "the attributes and methods of a value", "other"),
    b("help", "help(obj)", "help on a builtin, or the overview", "other"),
    b("exit", "exit()", "ends the session (also :quit or Ctrl-D)", "other"),
    b("quit", "quit()", "ends the session", "other"),
];

/// Namespaces bound at start, so `torch.randn`, `nn.Conv2d`, `F.softmax` and
/// `models.resnet50` work as they do in Python.
pub(crate) const NAMESPACES: [(&str, &str); 5] = [
    ("torch", "torch"),
    ("nn", "torch.nn"),
    ("F", "torch.nn.functional"),
    ("torchvision", "torchvision"),
    ("models", "torchvision.models"),
];

/// Importable module paths, and the namespace value each one is.
pub(crate) const MODULE_PATHS: [&str; 8] = [
    "torch",
    "torch.nn",
    "torch.nn.functional",
    "torchvision",
    "torchvision.models",
    "torchvision.models.resnet",
    "torch.optim",
    "torchvision.transforms",
];

/// The registry entry of a builtin or method name.
pub(crate) fn info(name: &str) -> Option<&'static Info> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The static name of a builtin, if `name` is one.
pub(crate) fn lookup(name: &str) -> Option<&'static str> {
    info(name).map(|b| b.name)
}

/// The usage line of a builtin or method, for messages.
pub(crate) fn usage(func: &str) -> String {
    if let Some(i) = info(func) {
        if i.usage.starts_with("NAME") {
            return i.usage.replacen("NAME", func, 1);
        }
        return i.usage.to_string();
    }
    if let Some(m) = ops::method_usage(func) {
        return m.to_string();
    }
    format!("{func}(...)")
}

/// Whether a builtin is a class (its name is capitalised), for repr and `type`.
pub(crate) fn is_class(name: &str) -> bool {
    name.chars().next().is_some_and(char::is_uppercase)
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: usize) -> String {
    nn::thousands(n as u64)
}

/// Calls the builtin `name`.
pub(crate) fn call(s: &mut Session, name: &'static str, mut args: CallArgs) -> Result<Value> {
    if let Ok(arch) = Arch::from_name(name) {
        if arch.name() == name {
            return models::zoo(s, name, arch, args);
        }
    }
    match name {
        "ResNet" => models::resnet_custom(s, args),
        "BasicBlock" | "Bottleneck" => models::block(s, name, args),
        "Sequential" => models::sequential(args),
        "Conv2d" => models::conv2d(s, args),
        "BatchNorm2d" => models::batch_norm(args),
        "ReLU" => {
            bind(name, &["inplace"], 0, args)?;
            Ok(Value::Module(super::value::ModuleRef::other(nn::ReLU)))
        }
        "MaxPool2d" | "AvgPool2d" => models::pool(name, args),
        "AdaptiveAvgPool2d" => models::adaptive_pool(args),
        "Linear" => models::linear(s, args),
        "Flatten" => models::flatten(args),
        "Dropout" => models::dropout(s, args),
        "Identity" => Ok(Value::Module(super::value::ModuleRef::other(nn::Identity))),
        "tensor" => tensor_literal(args),
        "randn" | "rand" => {
            let (pos, _) = bind_varargs(name, &[], args)?;
            let shape = shape_arg(name, pos)?;
            Ok(Value::Tensor(if name == "randn" {
                Tensor::randn(&shape, &mut s.rng)
            } else {
                Tensor::rand(&shape, &mut s.rng)
            }))
        }
        "zeros" | "ones" => {
            let (pos, mut kw) = bind_varargs(name, &["dtype"], args)?;
            let shape = shape_arg(name, pos)?;
            let t = if name == "zeros" { Tensor::zeros(&shape) } else { Tensor::ones(&shape) };
            Ok(Value::Tensor(with_dtype(name, t, kw.value("dtype"))?))
        }
        "full" => {
            let mut b = bind(name, &["size", "fill_value"], 2, args)?;
            let size = b.value("size").unwrap_or(Value::None);
            let shape = shape_arg(name, vec![size])?;
            let v = b.opt_float("fill_value")?.unwrap_or(0.0);
            Ok(Value::Tensor(Tensor::full(&shape, v as f32)))
        }
        "arange" => arange(args),
        "cat" | "stack" => {
            let mut b = bind(name, &["tensors", "dim"], 1, args)?;
            let list = match b.value("tensors") {
                Some(Value::List(v) | Value::Tuple(v)) => v,
                Some(other) => {
                    return Err(type_err(format!(
                        "{name}(): argument `tensors` must be a list of tensors, got {}",
                        other.type_name()
                    )))
                }
                None => Vec::new(),
            };
            let dim = b.opt_int("dim")?.unwrap_or(0);
            ops::cat(name, &list, dim)
        }
        "manual_seed" => {
            let mut b = bind(name, &["seed"], 1, args)?;
            let seed = b.int("seed")?;
            s.rng = Rng::seed(seed as u64);
            Ok(Value::None)
        }
        "image" => models::image(args),
        "abs" if matches!(args.pos.first(), Some(Value::Int(_) | Value::Float(_))) => {
            let mut b = bind(name, &["x"], 1, args)?;
            match b.value("x") {
                Some(Value::Int(v)) => {
                    Ok(Value::Int(v.checked_abs().ok_or_else(|| value_err("abs(): integer overflow"))?))
                }
                Some(Value::Float(v)) => Ok(Value::Float(v.abs())),
                _ => Ok(Value::None),
            }
        }
        "softmax" | "log_softmax" | "argmax" | "topk" | "mean" | "sum" | "relu" | "exp" | "log" | "sqrt" | "abs"
        | "matmul" | "flatten" | "reshape" | "narrow" => {
            let input = args.take_first(name, "input")?;
            match input {
                Value::Tensor(t) => ops::tensor_method(name, &t, args),
                other => Err(type_err(format!(
                    "{name}(): argument `input` must be a Tensor, got {}; usage: {}",
                    other.type_name(),
                    usage(name)
                ))),
            }
        }
        "summary" => models::summary(args),
        "params" => models::params(args),
        "state_dict" => {
            let mut b = bind(name, &["model"], 1, args)?;
            models::state_dict(&b.module("model")?)
        }
        "load" => models::load(args),
        "save" => models::save(args),
        "freeze" | "unfreeze" => {
            let mut b = bind(name, &["module"], 1, args)?;
            models::freeze(&b.module("module")?, name == "freeze")
        }
        "train" => {
            let mut b = bind(name, &["model", "mode"], 1, args)?;
            let m = b.module("model")?;
            let mode = b.bool_or("mode", true)?;
            models::set_mode(&m, mode)
        }
        "eval" => {
            let mut b = bind(name, &["model"], 1, args)?;
            models::set_mode(&b.module("model")?, false)
        }
        "predict" => models::predict(args),
        "cam" => models::cam(args),
        "len" => {
            let mut b = bind(name, &["obj"], 1, args)?;
            len(b.value("obj").unwrap_or(Value::None))
        }
        "print" => {
            let (pos, mut kw) = bind_varargs(name, &["sep"], args)?;
            let sep = kw.opt_str("sep")?.unwrap_or_else(|| " ".into());
            let text = pos.iter().map(Value::to_str).collect::<Vec<_>>().join(&sep);
            s.printed.push(text);
            Ok(Value::None)
        }
        "type" => {
            let mut b = bind(name, &["obj"], 1, args)?;
            let v = b.value("obj").unwrap_or(Value::None);
            Ok(Value::Text(format!("<class '{}'>", v.type_name())))
        }
        "dir" => {
            let mut b = bind(name, &["obj"], 0, args)?;
            let names = match b.value("obj") {
                Some(v) => ops::attribute_names(&v),
                None => s.vars.keys().cloned().collect(),
            };
            Ok(Value::List(names.into_iter().map(Value::Str).collect()))
        }
        "help" => {
            let mut b = bind(name, &["obj"], 0, args)?;
            Ok(Value::Text(match b.value("obj") {
                None => super::help::overview(),
                Some(Value::Builtin(n)) => super::help::topic(n).unwrap_or_default(),
                Some(Value::Method(_, n)) => super::help::topic(n).unwrap_or_default(),
                Some(Value::Str(n)) => super::help::topic(&n).unwrap_or_else(|| format!("no help on `{n}`")),
                Some(v) => super::help::for_value(&v),
            }))
        }
        "exit" | "quit" => {
            bind(name, &["code"], 0, args)?;
            Ok(Value::Quit)
        }
        _ => Err(type_err(format!("{name} is not callable"))),
    }
}

fn with_dtype(func: &str, t: Tensor, dtype: Option<Value>) -> Result<Tensor> {
    match dtype {
        None => Ok(t),
        Some(Value::Dtype(d)) => Ok(t.to_dtype(d)),
        Some(Value::Str(s)) => Ok(t.to_dtype(parse_dtype(func, &s)?)),
        Some(v) => {
            Err(type_err(format!("{func}(): `dtype` must be a dtype like torch.float32, got {}", v.type_name())))
        }
    }
}

/// A dtype from its name (`float32`, `float`, `int64`, `long`, with or without `torch.`).
pub(crate) fn parse_dtype(func: &str, s: &str) -> Result<DType> {
    match s.trim_start_matches("torch.") {
        "float32" | "float" => Ok(DType::F32),
        "int64" | "long" => Ok(DType::I64),
        other => Err(value_err(format!("{func}(): unsupported dtype `{other}` (this REPL has float32 and int64)"))),
    }
}

/// The dtype constants of `torch`.
pub(crate) fn dtype_constant(name: &str) -> Option<DType> {
    match name {
        "float32" | "float" => Some(DType::F32),
        "int64" | "long" => Some(DType::I64),
        _ => None,
    }
}

fn tensor_literal(args: CallArgs) -> Result<Value> {
    let mut b = bind("tensor", &["data", "dtype"], 1, args)?;
    let data = b.value("data").unwrap_or(Value::None);
    let mut shape = Vec::new();
    let mut values = Vec::new();
    let mut any_float = false;
    flatten_nested(&data, 0, &mut shape, &mut values, &mut any_float)?;
    let t = if any_float {
        Tensor::from_vec(values.iter().map(|v| v.as_f64() as f32).collect(), &shape)?
    } else {
        Tensor::from_vec_i64(values.iter().map(Num::as_i64).collect(), &shape)?
    };
    let dtype = b.value("dtype");
    Ok(Value::Tensor(with_dtype("tensor", t, dtype)?))
}

enum Num {
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(&self) -> f64 {
        match self {
            Num::I(v) => *v as f64,
            Num::F(v) => *v,
        }
    }
    fn as_i64(&self) -> i64 {
        match self {
            Num::I(v) => *v,
            Num::F(v) => *v as i64,
        }
    }
}

fn flatten_nested(
    v: &Value,
    depth: usize,
    shape: &mut Vec<usize>,
    out: &mut Vec<Num>,
    any_float: &mut bool,
) -> Result<()> {
    match v {
        Value::Int(i) => push_scalar(depth, shape, out, Num::I(*i)),
        Value::Bool(b) => push_scalar(depth, shape, out, Num::I(i64::from(*b))),
        Value::Float(f) => {
            *any_float = true;
            push_scalar(depth, shape, out, Num::F(*f))
        }
        Value::Tensor(t) if t.numel() == 1 => {
            let n = match t.dtype() {
                DType::F32 => {
                    *any_float = true;
                    Num::F(f32_to_f64(t.item()?))
                }
                DType::I64 => Num::I(t.to_vec_i64()?[0]),
            };
            push_scalar(depth, shape, out, n)
        }
        Value::List(items) | Value::Tuple(items) => {
            if shape.len() == depth {
                if out.is_empty() {
                    shape.push(items.len());
                } else {
                    return Err(value_err(
                        "tensor(): the nested lists are ragged (a number where a list was expected)",
                    ));
                }
            } else if shape.len() < depth || shape[depth] != items.len() {
                return Err(value_err(format!(
                    "tensor(): expected a sequence of length {} at dimension {depth}, got {}",
                    shape.get(depth).copied().unwrap_or(0),
                    items.len()
                )));
            }
            for item in items {
                flatten_nested(item, depth + 1, shape, out, any_float)?;
            }
            Ok(())
        }
        other => Err(type_err(format!("tensor(): expected numbers or lists of numbers, got {}", other.type_name()))),
    }
}

fn push_scalar(depth: usize, shape: &[usize], out: &mut Vec<Num>, n: Num) -> Result<()> {
    if depth != shape.len() {
        return Err(value_err("tensor(): the nested lists are ragged (a list where a number was expected)"));
    }
    out.push(n);
    Ok(())
}

fn arange(args: CallArgs) -> Result<Value> {
    let (pos, mut kw) = bind_varargs("arange", &["step", "dtype"], args)?;
    let nums: Vec<f64> = pos
        .iter()
        .map(|v| match v {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            other => Err(type_err(format!("arange(): arguments must be numbers, got {}", other.type_name()))),
        })
        .collect::<Result<_>>()?;
    let all_int = pos.iter().all(|v| matches!(v, Value::Int(_)));
    let step_v = kw.value("step");
    let step_int = !matches!(step_v, Some(Value::Float(_)));
    let (start, end, step) = match nums.as_slice() {
        [end] => (0.0, *end, 1.0),
        [start, end] => (*start, *end, 1.0),
        [start, end, step] => (*start, *end, *step),
        _ => return Err(type_err(format!("arange() takes 1 to 3 positional arguments; usage: {}", usage("arange")))),
    };
    let step = match step_v {
        Some(Value::Int(i)) => i as f64,
        Some(Value::Float(f)) => f,
        Some(other) => return Err(type_err(format!("arange(): `step` must be a number, got {}", other.type_name()))),
        None => step,
    };
    if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
        return Err(value_err(format!("arange(): cannot step from {start} to {end} by {step}")));
    }
    let n = ((end - start) / step).ceil().max(0.0);
    if n > limits().max_elements as f64 {
        return Err(ReplError::Limit(format!(
            "arange(): {n} elements is above this REPL's limit of {}",
            thousands(limits().max_elements)
        )));
    }
    let n = n as usize;
    let t = if all_int && step_int {
        let (s, st) = (start as i64, step as i64);
        Tensor::from_vec_i64((0..n as i64).map(|i| s + st * i).collect(), &[n])?
    } else {
        Tensor::from_vec((0..n).map(|i| (start + step * i as f64) as f32).collect(), &[n])?
    };
    Ok(Value::Tensor(with_dtype("arange", t, kw.value("dtype"))?))
}

fn len(v: Value) -> Result<Value> {
    let n = match &v {
        Value::List(items) | Value::Tuple(items) => items.len(),
        Value::Str(s) => s.chars().count(),
        Value::Size(s) => s.len(),
        Value::Tensor(t) => match t.shape().first() {
            Some(&d) => d,
            None => return Err(type_err("len() of a 0-d tensor")),
        },
        Value::Module(m) => m.get()?.children().len(),
        other => return Err(type_err(format!("object of type '{}' has no len()", other.type_name()))),
    };
    Ok(Value::Int(n as i64))
}
