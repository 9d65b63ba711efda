//! Building modules (the zoo, custom ResNets, blocks, layers) and working with them: forward,
//! summary, parameter counts, weight files, freezing, modes and prediction.

use super::args::{bind, bind_varargs, CallArgs};
use super::builtins::{thousands, usage};
use super::error::{type_err, value_err, ReplError, Result};
use super::ops::topk;
use super::value::{ModuleRef, Prediction, RootModule, Value};
use super::{check_file_access, limits, Session, MAX_CHANNELS, MAX_MODULE_DEPTH};
use nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Flatten, Linear, MaxPool2d, Module,
    ModuleExt, Sequential, Var,
};
use resnet::{Arch, BasicBlock, Block, BlockKind, Bottleneck, Downsample, Init, ResNetConfig};
use std::collections::HashMap;
use std::path::Path;
use tensor::{Conv2dParams, DType, FanMode, Nonlinearity, Pool2dParams, Tensor};

use crate::model_io::{meta, metadata_for};

// ---------------------------------------------------------------------------------------------
// Size guards
// ---------------------------------------------------------------------------------------------

fn check_params(func: &str, count: u128) -> Result<()> {
    if count > limits().max_params as u128 {
        return Err(ReplError::Limit(format!(
            "{func}(): the model would have about {count} parameters, above this REPL's limit of {}",
            thousands(limits().max_params)
        )));
    }
    Ok(())
}

/// The parameter count of a ResNet configuration, computed before building it (saturating,
/// so absurd configurations are refused instead of overflowing or exhausting memory).
fn estimate_params(c: &ResNetConfig) -> u128 {
    let m = |a: usize, b: usize| (a as u128).saturating_mul(b as u128);
    let bp = c.base_planes;
    let mut total = m(3 * 49, bp).saturating_add(m(2, bp));
    let mut inplanes = bp as u128;
    for (i, &blocks) in c.layers.iter().enumerate() {
        let planes = (bp as u128).saturating_mul(1 << i);
        let out = planes.saturating_mul(c.block.expansion() as u128);
        let block = |inp: u128| -> u128 {
            match c.block {
                BlockKind::Basic => inp
                    .saturating_mul(planes)
                    .saturating_mul(9)
                    .saturating_add(planes.saturating_mul(planes).saturating_mul(9))
                    .saturating_add(planes.saturating_mul(4)),
                BlockKind::Bottleneck => {
                    let w = planes.saturating_mul(c.width_per_group as u128) / 64 * c.groups as u128;
                    inp.saturating_mul(w)
                        .saturating_add(w.saturating_mul(w / (c.groups.max(1) as u128)).saturating_mul(9))
                        .saturating_add(w.saturating_mul(out))
                        .saturating_add(w.saturating_mul(4))
                        .saturating_add(out.saturating_mul(2))
                }
            }
        };
        total =
            total.saturating_add(block(inplanes)).saturating_add(inplanes.saturating_mul(out)).saturating_add(out * 2);
        total = total.saturating_add(block(out).saturating_mul(blocks.saturating_sub(1) as u128));
        inplanes = out;
    }
    if c.include_top {
        total = total.saturating_add(inplanes.saturating_mul(c.num_classes as u128 + 1));
    }
    total
}

fn module_depth(m: &dyn Module) -> usize {
    1 + m.children().into_iter().map(|(_, c)| module_depth(c)).max().unwrap_or(0)
}

/// Refuses forwards whose input or any intermediate activation would exceed the element limit,
/// found by shape inference before anything is allocated. Shape errors surface here too, with
/// the layer that refused the input.
fn check_forward(label: &str, module: &dyn Module, input: &[usize]) -> Result<()> {
    let mut rec = nn::ShapeRecorder::default();
    if let Err(e) = rec.child("", module, input) {
        // Rows are recorded on entry, so the last one is the innermost module that refused.
        let mut path: Vec<&str> = Vec::new();
        for r in &rec.rows {
            path.truncate(r.depth.saturating_sub(1));
            if r.depth > 0 {
                path.push(&r.name);
            }
        }
        let at = match rec.rows.last() {
            Some(r) if r.depth > 0 => format!(" at `{}` ({})", path.join("."), r.type_name),
            _ => String::new(),
        };
        let hint = if input.len() == 3 { "; a single image needs a batch dimension: x.unsqueeze(0)" } else { "" };
        return Err(ReplError::Value(format!("{label}: the input of shape {input:?} fails{at}: {e}{hint}")));
    }
    let mult_adds = rec.rows.iter().fold(0u64, |a, r| a.saturating_add(r.macs));
    if mult_adds > limits().max_mult_adds {
        return Err(ReplError::Limit(format!(
            "forward: {label} would take {} multiply-adds for an input of shape {input:?}, above this session's limit of {}",
            nn::thousands(mult_adds),
            nn::thousands(limits().max_mult_adds)
        )));
    }
    for r in &rec.rows {
        let n = r.output_shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n.is_none_or(|n| n > limits().max_elements) {
            return Err(ReplError::Limit(format!(
                "forward: the output of {} ({}) would be {:?}, more than {} elements, the limit of this REPL",
                if r.name.is_empty() { "the model".to_string() } else { format!("`{}`", r.name) },
                r.type_name,
                r.output_shape,
                thousands(limits().max_elements)
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/// Which zoo architecture a configuration is, if any.
fn arch_of(c: &ResNetConfig) -> Option<Arch> {
    Arch::ALL.into_iter().find(|a| {
        let z = a.config(c.num_classes);
        z.block == c.block && z.layers == c.layers && z.groups == c.groups && z.width_per_group == c.width_per_group
    })
}

fn build_resnet(s: &mut Session, func: &str, config: ResNetConfig, seed: Option<i64>) -> Result<ModuleRef> {
    check_params(func, estimate_params(&config))?;
    let seed = seed.map_or_else(|| s.rng.next_u64(), |v| v as u64);
    let net = config.build(Init::Torchvision(seed))?;
    let arch = arch_of(&config);
    Ok(ModuleRef::new_root(RootModule::ResNet(Box::new(net)), arch))
}

/// `resnet18(num_classes=1000, weights=None, ...)` and the rest of the zoo.
pub(crate) fn zoo(s: &mut Session, name: &'static str, arch: Arch, mut args: CallArgs) -> Result<Value> {
    // torchvision's first positional parameter is `weights`; a number is clearly num_classes.
    if let Some(Value::Str(_)) = args.pos.first() {
        let w = args.pos.remove(0);
        args.kw.push(("weights".into(), w));
    }
    let mut b = bind(
        name,
        &["num_classes", "weights", "zero_init_residual", "base_planes", "seed", "progress", "pretrained"],
        0,
        args,
    )?;
    if b.has("pretrained") {
        return Err(value_err(format!(
            "{name}(): pretrained= needs a download, which this REPL does not do; pass weights=\"path/to/file.pth\""
        )));
    }
    let weights = b.opt_str("weights")?;
    if let Some(w) = &weights {
        check_file_access(name)?;
        if !Path::new(w).exists() && !w.contains(['/', '\\', '.']) {
            return Err(value_err(format!(
                "{name}(): weights=\"{w}\" is not a file; this REPL downloads nothing, so weights= takes the path of a .pth or .safetensors file"
            )));
        }
    }
    let sd = weights.as_deref().map(resnet::read_weights).transpose()?;
    let asked = b.opt_usize("num_classes")?;
    let num_classes = asked.or_else(|| sd.as_ref().and_then(|sd| sd.num_classes())).unwrap_or(1000);
    let mut config = arch.config(num_classes);
    config.zero_init_residual = b.bool_or("zero_init_residual", false)?;
    // A foreign file records no stem width, but its conv1.weight shows it.
    let base = sd.as_ref().and_then(|sd| {
        sd.metadata
            .get(meta::BASE_PLANES)
            .and_then(|v| v.parse().ok())
            .or_else(|| resnet::Layout::of(sd).ok().map(|l| l.base_planes))
    });
    config.base_planes = match b.opt_usize("base_planes")? {
        Some(v) => v,
        None => base.unwrap_or(64),
    };
    if config.base_planes == 0 || config.base_planes > 4096 {
        return Err(value_err(format!("{name}(): base_planes must be between 1 and 4096")));
    }
    let seed = b.opt_int("seed")?;
    let _ = b.value("progress");
    let m = build_resnet(s, name, config, seed)?;
    if let Some(sd) = sd {
        load_into(&m, &sd, true)?;
        m.root.set_classes(classes_of(&sd));
    }
    Ok(Value::Module(m))
}

/// `ResNet(block, layers, num_classes=1000, ...)`
pub(crate) fn resnet_custom(s: &mut Session, args: CallArgs) -> Result<Value> {
    let func = "ResNet";
    let mut b = bind(
        func,
        &[
            "block",
            "layers",
            "num_classes",
            "zero_init_residual",
            "groups",
            "width_per_group",
            "replace_stride_with_dilation",
            "base_planes",
            "seed",
        ],
        2,
        args,
    )?;
    let block = match b.value("block") {
        Some(Value::Builtin("BasicBlock")) => BlockKind::Basic,
        Some(Value::Builtin("Bottleneck")) => BlockKind::Bottleneck,
        Some(Value::Str(s)) if s.eq_ignore_ascii_case("basic") || s == "BasicBlock" => BlockKind::Basic,
        Some(Value::Str(s)) if s.eq_ignore_ascii_case("bottleneck") => BlockKind::Bottleneck,
        Some(v) => {
            return Err(type_err(format!("ResNet(): `block` must be BasicBlock or Bottleneck, got {}", v.repr())))
        }
        None => return Err(type_err(format!("ResNet() missing required argument `block`; usage: {}", usage(func)))),
    };
    let layers = match b.value("layers") {
        Some(Value::List(items) | Value::Tuple(items)) if items.len() == 4 => {
            let mut out = [0usize; 4];
            for (o, v) in out.iter_mut().zip(&items) {
                *o = match v {
                    Value::Int(n) if (1..=1000).contains(n) => *n as usize,
                    other => {
                        return Err(value_err(format!(
                            "ResNet(): each stage needs between 1 and 1000 blocks, got {}",
                            other.repr()
                        )))
                    }
                };
            }
            out
        }
        _ => return Err(type_err("ResNet(): `layers` must be a list of 4 block counts, like [2, 2, 2, 2]")),
    };
    let mut config = ResNetConfig::new(block, layers, b.positive_or("num_classes", 1000, MAX_CHANNELS)?);
    config.zero_init_residual = b.bool_or("zero_init_residual", false)?;
    config.groups = b.positive_or("groups", 1, 4096)?;
    config.width_per_group = b.positive_or("width_per_group", 64, 1 << 16)?;
    config.base_planes = b.positive_or("base_planes", 64, 4096)?;
    if let Some(v) = b.value("replace_stride_with_dilation") {
        let items = match v {
            Value::List(items) | Value::Tuple(items) if items.len() == 3 => items,
            _ => return Err(type_err("ResNet(): `replace_stride_with_dilation` must be a list of 3 booleans")),
        };
        for (o, v) in config.replace_stride_with_dilation.iter_mut().zip(&items) {
            *o = match v {
                Value::Bool(b) => *b,
                _ => return Err(type_err("ResNet(): `replace_stride_with_dilation` must be a list of 3 booleans")),
            };
        }
    }
    let seed = b.opt_int("seed")?;
    Ok(Value::Module(build_resnet(s, func, config, seed)?))
}

/// A conv with PyTorch's default initialisation (standalone blocks are not re-initialised by a
/// ResNet constructor, exactly as in torchvision).
fn plain_conv(s: &mut Session, cfg: Conv2dConfig) -> Result<Conv2d> {
    Ok(cfg.init(&mut s.rng)?)
}

/// `BasicBlock(inplanes, planes, ...)` / `Bottleneck(inplanes, planes, ...)`
pub(crate) fn block(s: &mut Session, func: &'static str, args: CallArgs) -> Result<Value> {
    let mut b = bind(
        func,
        &["inplanes", "planes", "stride", "downsample", "groups", "base_width", "dilation", "width_per_group"],
        2,
        args,
    )?;
    let inplanes = b.positive("inplanes", 1 << 14)?;
    let planes = b.positive("planes", 1 << 14)?;
    let stride = b.positive_or("stride", 1, 64)?;
    let groups = b.positive_or("groups", 1, 4096)?;
    if b.has("base_width") && b.has("width_per_group") {
        return Err(type_err(format!("{func}(): give base_width or width_per_group, not both")));
    }
    let base_width = match b.opt_usize("width_per_group")? {
        Some(v) => v,
        None => b.usize_or("base_width", 64)?,
    };
    let dilation = b.positive_or("dilation", 1, 64)?;
    let kind = if func == "BasicBlock" { BlockKind::Basic } else { BlockKind::Bottleneck };
    let out = planes * kind.expansion();
    let downsample = match b.value("downsample") {
        None => stride != 1 || inplanes != out,
        Some(Value::Bool(v)) => v,
        Some(v) => {
            return Err(type_err(format!(
                "{func}(): `downsample` must be True, False or None (automatic), got {}",
                v.type_name()
            )))
        }
    };
    let ds = |s: &mut Session| -> Result<Option<Downsample>> {
        Ok(if downsample {
            Some(Downsample {
                conv: plain_conv(s, Conv2dConfig::new(inplanes, out, 1).stride(stride).bias(false))?,
                bn: BatchNorm2d::new(out),
            })
        } else {
            None
        })
    };
    let block = match kind {
        BlockKind::Basic => {
            if groups != 1 || base_width != 64 {
                return Err(value_err("BasicBlock only supports groups=1 and base_width=64"));
            }
            if dilation > 1 {
                return Err(value_err("BasicBlock does not support dilation > 1"));
            }
            check_params(func, 9 * (inplanes as u128 * planes as u128 + planes as u128 * planes as u128))?;
            Block::Basic(BasicBlock {
                conv1: plain_conv(s, Conv2dConfig::new(inplanes, planes, 3).stride(stride).padding(1).bias(false))?,
                bn1: BatchNorm2d::new(planes),
                conv2: plain_conv(s, Conv2dConfig::new(planes, planes, 3).padding(1).bias(false))?,
                bn2: BatchNorm2d::new(planes),
                downsample: ds(s)?,
            })
        }
        BlockKind::Bottleneck => {
            let width = planes * base_width / 64 * groups;
            if width == 0 {
                return Err(value_err(format!(
                    "Bottleneck(): planes {planes} * base_width {base_width} / 64 rounds to zero channels"
                )));
            }
            let w = width as u128;
            check_params(func, inplanes as u128 * w + 9 * w * w / groups as u128 + w * out as u128)?;
            Block::Bottleneck(Bottleneck {
                conv1: plain_conv(s, Conv2dConfig::new(inplanes, width, 1).bias(false))?,
                bn1: BatchNorm2d::new(width),
                conv2: plain_conv(
                    s,
                    Conv2dConfig::new(width, width, 3)
                        .stride(stride)
                        .padding(dilation)
                        .dilation(dilation)
                        .groups(groups)
                        .bias(false),
                )?,
                bn2: BatchNorm2d::new(width),
                conv3: plain_conv(s, Conv2dConfig::new(width, out, 1).bias(false))?,
                bn3: BatchNorm2d::new(out),
                downsample: ds(s)?,
            })
        }
    };
    Ok(Value::Module(ModuleRef::other(block)))
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// `Sequential(*modules)` (or a single list of modules).
pub(crate) fn sequential(args: CallArgs) -> Result<Value> {
    let (mut pos, _) = bind_varargs("Sequential", &[], args)?;
    if let [Value::List(items)] = pos.as_slice() {
        pos = items.clone();
    }
    let mut layers: Vec<Box<dyn Module>> = Vec::new();
    for (i, v) in pos.into_iter().enumerate() {
        match v {
            Value::Module(m) => {
                if module_depth(m.get()?) >= MAX_MODULE_DEPTH {
                    return Err(ReplError::Limit(format!(
                        "Sequential(): modules nested more than {MAX_MODULE_DEPTH} deep are not supported"
                    )));
                }
                layers.push(m.into_boxed());
            }
            Value::Builtin(name) if super::builtins::is_class(name) => {
                return Err(type_err(format!(
                    "Sequential(): argument {i} is the class {name}, not a module; did you mean {name}(...)?"
                )))
            }
            other => {
                return Err(type_err(format!("Sequential(): argument {i} must be a module, got {}", other.type_name())))
            }
        }
    }
    Ok(Value::Module(ModuleRef::other(Sequential::new(layers))))
}

/// `Conv2d(in, out, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True)`
pub(crate) fn conv2d(s: &mut Session, args: CallArgs) -> Result<Value> {
    let func = "Conv2d";
    let mut b = bind(
        func,
        &[
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
            "bias",
            "padding_mode",
        ],
        3,
        args,
    )?;
    let cin = b.positive("in_channels", MAX_CHANNELS)?;
    let cout = b.positive("out_channels", MAX_CHANNELS)?;
    let kernel = b.pair_or("kernel_size", [1, 1], 1)?;
    let stride = b.pair_or("stride", [1, 1], 1)?;
    let dilation = b.pair_or("dilation", [1, 1], 1)?;
    let padding = match b.value("padding") {
        Some(Value::Str(p)) if p == "valid" => [0, 0],
        Some(Value::Str(p)) if p == "same" => {
            if stride != [1, 1] {
                return Err(value_err("Conv2d(): padding='same' is not supported for strided convolutions"));
            }
            let mut pad = [0; 2];
            for i in 0..2 {
                let total = dilation[i] * (kernel[i] - 1);
                if total % 2 != 0 {
                    return Err(value_err("Conv2d(): padding='same' needs an odd (dilated) kernel size here"));
                }
                pad[i] = total / 2;
            }
            pad
        }
        Some(Value::Str(p)) => {
            return Err(value_err(format!("Conv2d(): padding must be an int, a pair, 'same' or 'valid', got '{p}'")))
        }
        Some(v) => {
            let mut tmp = bind(func, &["padding"], 0, CallArgs { pos: vec![v], kw: Vec::new() })?;
            tmp.pair_or("padding", [0, 0], 0)?
        }
        None => [0, 0],
    };
    let groups = b.positive_or("groups", 1, MAX_CHANNELS)?;
    let bias = b.bool_or("bias", true)?;
    if let Some(mode) = b.opt_str("padding_mode")? {
        if mode != "zeros" {
            return Err(value_err(format!("Conv2d(): padding_mode='{mode}' is not supported (only 'zeros')")));
        }
    }
    if cin % groups != 0 || cout % groups != 0 {
        return Err(value_err(format!(
            "Conv2d(): in_channels ({cin}) and out_channels ({cout}) must both be divisible by groups ({groups})"
        )));
    }
    let shape = [cout, cin / groups, kernel[0], kernel[1]];
    check_params(func, shape.iter().map(|&d| d as u128).product())?;
    // PyTorch's default: kaiming_uniform(a=sqrt(5)) weights, bias uniform in ±1/sqrt(fan_in).
    let weight = Tensor::kaiming_uniform(&shape, FanMode::FanIn, Nonlinearity::LeakyRelu(5f64.sqrt()), &mut s.rng)?;
    let fan_in = (cin / groups) * kernel[0] * kernel[1];
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let bias = bias.then(|| Var::parameter(Tensor::uniform(&[cout], -bound, bound, &mut s.rng)));
    let params = Conv2dParams { stride, padding, dilation, groups };
    Ok(Value::Module(ModuleRef::other(Conv2d { weight: Var::parameter(weight), bias, params })))
}

/// `BatchNorm2d(num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)`
pub(crate) fn batch_norm(args: CallArgs) -> Result<Value> {
    let func = "BatchNorm2d";
    let mut b = bind(func, &["num_features", "eps", "momentum", "affine", "track_running_stats"], 1, args)?;
    let c = b.positive("num_features", MAX_CHANNELS)?;
    let eps = b.float_or("eps", 1e-5)?;
    let momentum = if b.has("momentum") { b.opt_float("momentum")? } else { Some(0.1) };
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(value_err(format!("BatchNorm2d(): eps must be positive, got {eps}")));
    }
    let affine = b.bool_or("affine", true)?;
    let track = b.bool_or("track_running_stats", true)?;
    Ok(Value::Module(ModuleRef::other(BatchNorm2d::with_options(c, eps, momentum, affine, track))))
}

/// `MaxPool2d(...)` / `AvgPool2d(...)`
pub(crate) fn pool(func: &'static str, args: CallArgs) -> Result<Value> {
    let params: &'static [&'static str] = if func == "MaxPool2d" {
        &["kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"]
    } else {
        &["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]
    };
    let mut b = bind(func, params, 1, args)?;
    let kernel = b.pair_or("kernel_size", [1, 1], 1)?;
    let stride = b.pair_or("stride", kernel, 1)?;
    let padding = b.pair_or("padding", [0, 0], 0)?;
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(value_err(format!(
            "{func}(): padding should be at most half the kernel size, got {padding:?} for {kernel:?}"
        )));
    }
    let ceil_mode = b.bool_or("ceil_mode", false)?;
    let p = Pool2dParams { kernel, stride, padding, ceil_mode };
    if func == "MaxPool2d" {
        if b.usize_or("dilation", 1)? != 1 || b.bool_or("return_indices", false)? {
            return Err(value_err("MaxPool2d(): dilation and return_indices are not supported"));
        }
        return Ok(Value::Module(ModuleRef::other(MaxPool2d(p))));
    }
    if b.has("divisor_override") {
        return Err(value_err("AvgPool2d(): divisor_override is not supported"));
    }
    let count_include_pad = b.bool_or("count_include_pad", true)?;
    Ok(Value::Module(ModuleRef::other(AvgPool2d { params: p, count_include_pad })))
}

/// `AdaptiveAvgPool2d(output_size)`
pub(crate) fn adaptive_pool(args: CallArgs) -> Result<Value> {
    let mut b = bind("AdaptiveAvgPool2d", &["output_size"], 1, args)?;
    let out = b.pair_or("output_size", [1, 1], 1)?;
    Ok(Value::Module(ModuleRef::other(AdaptiveAvgPool2d(out))))
}

/// `Linear(in_features, out_features, bias=True)`
pub(crate) fn linear(s: &mut Session, args: CallArgs) -> Result<Value> {
    let func = "Linear";
    let mut b = bind(func, &["in_features", "out_features", "bias"], 2, args)?;
    let cin = b.positive("in_features", limits().max_params)?;
    let cout = b.positive("out_features", limits().max_params)?;
    let bias = b.bool_or("bias", true)?;
    check_params(func, cin as u128 * cout as u128)?;
    Ok(Value::Module(ModuleRef::other(Linear::new(cin, cout, bias, &mut s.rng)?)))
}

/// `Flatten(start_dim=1, end_dim=-1)`
pub(crate) fn flatten(args: CallArgs) -> Result<Value> {
    let mut b = bind("Flatten", &["start_dim", "end_dim"], 0, args)?;
    let start_dim = b.usize_or("start_dim", 1)?;
    if b.opt_int("end_dim")?.unwrap_or(-1) != -1 {
        return Err(value_err("Flatten(): only end_dim=-1 is supported"));
    }
    Ok(Value::Module(ModuleRef::other(Flatten { start_dim })))
}

/// `Dropout(p=0.5)`
pub(crate) fn dropout(s: &mut Session, args: CallArgs) -> Result<Value> {
    let mut b = bind("Dropout", &["p", "inplace"], 0, args)?;
    let p = b.float_or("p", 0.5)?;
    Ok(Value::Module(ModuleRef::other(Dropout::new(p, s.rng.next_u64())?)))
}

// ---------------------------------------------------------------------------------------------
// Using models
// ---------------------------------------------------------------------------------------------

/// Runs a module's forward on a tensor without recording gradients, in its current mode.
pub(crate) fn forward(m: &ModuleRef, x: &Tensor) -> Result<Tensor> {
    let module = m.get()?;
    if x.dtype() != DType::F32 {
        return Err(type_err(format!(
            "{}: expected a float32 input, got an int64 tensor (convert with x.float())",
            m.label()
        )));
    }
    check_forward(&m.label(), module, x.shape())?;
    let y = nn::with_no_grad(|| module.forward(&Var::constant(x.clone())))?;
    Ok(y.value())
}

/// `train(model, mode)` / `eval(model)`
pub(crate) fn set_mode(m: &ModuleRef, training: bool) -> Result<Value> {
    let module = m.get()?;
    if training {
        module.train();
    } else {
        module.eval();
    }
    Ok(Value::None)
}

/// `freeze(module)` / `unfreeze(module)`
pub(crate) fn freeze(m: &ModuleRef, freeze: bool) -> Result<Value> {
    let module = m.get()?;
    if freeze {
        module.freeze();
    } else {
        module.unfreeze();
    }
    let (total, _) = module.parameter_counts();
    Ok(Value::Text(format!(
        "{}: {} parameters {}",
        m.label(),
        thousands(total),
        if freeze { "frozen (requires_grad=False)" } else { "trainable again" }
    )))
}

/// `summary(model, input_size=(1, 3, 224, 224), depth=3)`
pub(crate) fn summary(args: CallArgs) -> Result<Value> {
    let mut b = bind("summary", &["model", "input_size", "depth"], 1, args)?;
    let m = b.module("model")?;
    let shape = match b.value("input_size") {
        None => vec![1, 3, 224, 224],
        Some(v) => super::args::int_list("summary", "input sizes", vec![v])?
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| value_err("summary(): sizes must not be negative")))
            .collect::<Result<Vec<usize>>>()?,
    };
    // No tensor is allocated, but the mult-add arithmetic must stay within u64.
    let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    if n.is_none_or(|n| n > 1 << 32) {
        return Err(ReplError::Limit(format!("summary(): input size {shape:?} is too large")));
    }
    let depth = b.usize_or("depth", 3)?;
    Ok(Value::Text(nn::summary(m.get()?, &shape, depth)?))
}

/// `params(model)`
pub(crate) fn params(args: CallArgs) -> Result<Value> {
    let mut b = bind("params", &["model"], 1, args)?;
    let m = b.module("model")?;
    let (total, trainable) = m.get()?.parameter_counts();
    Ok(Value::Text(format!(
        "Total params: {}\nTrainable params: {}\nNon-trainable params: {}",
        thousands(total),
        thousands(trainable),
        thousands(total - trainable)
    )))
}

/// `state_dict(model)`: keys and shapes.
pub(crate) fn state_dict(m: &ModuleRef) -> Result<Value> {
    let sd = m.get()?.state_dict();
    let width = sd.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out: Vec<String> = sd.iter().map(|(k, t)| format!("{k:<width$}  {:?} {}", t.shape(), t.dtype())).collect();
    out.push(format!("({} tensors)", sd.len()));
    Ok(Value::Text(out.join("\n")))
}

fn classes_of(sd: &resnet::StateDict) -> Option<Vec<String>> {
    let text = sd.metadata.get(meta::CLASSES)?;
    serde_json::from_str::<Vec<String>>(text).ok()
}

/// Loads a state dict into a module: strictly, or — for a whole ResNet whose only mismatch is
/// the head — the backbone, keeping the model's own head. Nothing is changed on error.
fn load_into(m: &ModuleRef, sd: &resnet::StateDict, strict: bool) -> Result<String> {
    let module = m.get()?;
    let n = sd.entries.len();
    if !strict {
        let report = module.load_state_dict(&sd.entries, false)?;
        let mut msg =
            format!("loaded {} of {n} tensors (non-strict)", n - report.unexpected.len() - report.mismatched.len());
        if !report.is_clean() {
            msg += &format!("; not loaded: {report}");
        }
        return Ok(msg);
    }
    match module.load_state_dict(&sd.entries, true) {
        Ok(_) => Ok(format!("loaded {n} tensors")),
        Err(nn::NnError::StateDict(report)) => {
            let is_head = |k: &str| k == "fc.weight" || k == "fc.bias";
            let head_only = m.resnet().is_some()
                && report.missing.iter().all(|k| is_head(k))
                && report.unexpected.iter().all(|k| is_head(k))
                && report.mismatched.iter().all(|(k, _, _)| is_head(k));
            if !head_only {
                return Err(nn::NnError::StateDict(report).into());
            }
            let report = module.load_state_dict(&sd.entries, false)?;
            let skipped: Vec<String> = report
                .mismatched
                .iter()
                .map(|(k, want, got)| format!("{k} (the model has {want:?}, the file {got:?})"))
                .chain(report.missing.iter().map(|k| format!("{k} (not in the file)")))
                .chain(report.unexpected.iter().map(|k| format!("{k} (not in the model)")))
                .collect();
            Ok(format!(
                "loaded the backbone ({} tensors); kept the model's own head, skipped: {}",
                n - report.unexpected.len() - report.mismatched.len(),
                skipped.join(", ")
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `load(model, path, strict=True)`
pub(crate) fn load(args: CallArgs) -> Result<Value> {
    let mut b = bind("load", &["model", "path", "strict"], 2, args)?;
    let m = b.module("model")?;
    let path = b.str("path")?;
    let strict = b.bool_or("strict", true)?;
    check_file_access("load")?;
    let sd = resnet::read_weights(&path)?;
    let msg = load_into(&m, &sd, strict)?;
    if m.path.is_empty() {
        if let Some(c) = classes_of(&sd) {
            m.root.set_classes(Some(c));
        }
    }
    Ok(Value::Text(format!("{path}: {msg}")))
}

/// `save(model, path)`: safetensors with the metadata `resnet infer` reads, or `.pth`.
pub(crate) fn save(args: CallArgs) -> Result<Value> {
    let mut b = bind("save", &["model", "path"], 2, args)?;
    let m = b.module("model")?;
    let path = b.str("path")?;
    check_file_access("save")?;
    let sd = m.get()?.state_dict();
    let ext = Path::new(&path).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "pth" || ext == "pt" {
        resnet::write_pth(&path, &sd)?;
    } else {
        let mut metadata: HashMap<String, String> = match (m.resnet(), m.root.arch) {
            (Some(net), Some(arch)) => metadata_for(arch, &net.config, &[]),
            _ => HashMap::from([("format".to_string(), "pt".to_string())]),
        };
        if let Some(classes) = m.root.classes().filter(|_| m.path.is_empty()) {
            if let Ok(json) = serde_json::to_string(&classes) {
                metadata.insert(meta::CLASSES.into(), json);
            }
        }
        resnet::write_safetensors(&path, &sd, &metadata)?;
    }
    Ok(Value::Text(format!("saved {} tensors to {path}", sd.len())))
}

/// `image(path, size=224, resize=256)`: torchvision's eval transforms, as a batch of one.
pub(crate) fn image(args: CallArgs) -> Result<Value> {
    let mut b = bind("image", &["path", "size", "resize"], 1, args)?;
    let path = b.str("path")?;
    check_file_access("image")?;
    let size = b.positive_or("size", 224, 8192)?;
    let resize = b.positive_or("resize", size * 256 / 224, 8192)?;
    let transform = data::presets::imagenet_eval(resize, size)?;
    let t = data::load_image_tensor(&path, &transform)?;
    Ok(Value::Tensor(t.unsqueeze(0)?))
}

/// `cam(model, input, class=None)`: Grad-CAM heatmaps `[N, H, W]` of a whole ResNet; `class` is
/// one index for every image, a list of one per image, or None for the predicted classes.
pub(crate) fn cam(args: CallArgs) -> Result<Value> {
    let mut b = bind("cam", &["model", "input", "class"], 2, args)?;
    let m = b.module("model")?;
    let net = m.resnet().ok_or_else(|| {
        type_err(format!("cam(): `model` must be a whole ResNet (Grad-CAM reads its layer4 and fc), got {}", m.label()))
    })?;
    let mut x = b.tensor("input")?;
    if x.rank() == 3 {
        x = x.unsqueeze(0)?;
    }
    if x.dtype() != DType::F32 {
        return Err(type_err("cam(): expected a float32 input, got an int64 tensor (convert with x.float())"));
    }
    check_forward(&m.label(), net, x.shape())?;
    let n = x.shape()[0];
    let index = |v: &Value| -> Result<usize> {
        match v {
            Value::Int(c) if *c >= 0 => Ok(*c as usize),
            Value::Int(c) => Err(value_err(format!("cam(): class {c} is negative"))),
            other => Err(type_err(format!("cam(): a class must be an int, got {}", other.type_name()))),
        }
    };
    let classes = match b.value("class") {
        None | Some(Value::None) => None,
        Some(v @ Value::Int(_)) => Some(vec![index(&v)?; n]),
        Some(Value::List(items) | Value::Tuple(items)) => Some(items.iter().map(index).collect::<Result<Vec<_>>>()?),
        Some(other) => {
            return Err(type_err(format!(
                "cam(): `class` must be an int, a list of ints (one per image) or None, got {}",
                other.type_name()
            )))
        }
    };
    let cam = resnet::grad_cam(net, &x, classes.as_deref())?;
    Ok(Value::Tensor(cam.heatmaps))
}

/// `predict(model, input, k=5, classes=None)`
pub(crate) fn predict(args: CallArgs) -> Result<Value> {
    let mut b = bind("predict", &["model", "input", "k", "classes"], 2, args)?;
    let m = b.module("model")?;
    let mut x = b.tensor("input")?;
    if x.rank() == 3 {
        x = x.unsqueeze(0)?;
    }
    let k = b.positive_or("k", 5, 1 << 20)?;
    let classes = match b.value("classes") {
        None => m.root.classes().filter(|_| m.path.is_empty()),
        Some(Value::List(items) | Value::Tuple(items)) => Some(
            items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.clone()),
                    other => {
                        Err(type_err(format!("predict(): class names must be strings, got {}", other.type_name())))
                    }
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(Value::Str(path)) => {
            check_file_access("predict")?;
            Some(data::read_class_indices(&path)?)
        }
        Some(other) => {
            return Err(type_err(format!(
                "predict(): `classes` must be a list of names or a class_indices.json path, got {}",
                other.type_name()
            )))
        }
    };
    m.get()?.eval();
    let logits = forward(&m, &x)?;
    if logits.rank() != 2 {
        return Err(value_err(format!(
            "predict(): the model's output has shape {:?}, not [batch, classes]",
            logits.shape()
        )));
    }
    let n = logits.shape()[1];
    if let Some(c) = &classes {
        if c.len() != n {
            return Err(value_err(format!("predict(): {} class names for a model with {n} outputs", c.len())));
        }
    }
    let probs = logits.softmax(1)?;
    let (values, indices) = topk(&probs, k.min(n), 1)?;
    let (values, indices) = (values.to_vec_f32()?, indices.to_vec_i64()?);
    let k = k.min(n);
    let rows = values
        .chunks(k)
        .zip(indices.chunks(k))
        .map(|(v, i)| {
            v.iter()
                .zip(i)
                .map(|(&p, &idx)| {
                    let index = idx as usize;
                    Prediction { index, label: classes.as_ref().map(|c| c[index].clone()), probability: p }
                })
                .collect()
        })
        .collect();
    Ok(Value::Predictions(rows))
}
