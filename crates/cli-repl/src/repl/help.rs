//! `:help`, `help(...)` and the one-line descriptions of `:vars`.

use super::builtins::{self, thousands, usage, BUILTINS, GROUPS};
use super::value::{size_repr, Value};
use nn::ModuleExt;

/// The `:commands`, with what they do.
pub(crate) const COMMANDS: [(&str, &str); 4] = [
    ("help", ":help [name]   this overview, or help on one builtin"),
    ("vars", ":vars          the variables of the session"),
    ("reset", ":reset         remove every variable"),
    ("quit", ":quit          leave (also Ctrl-D or exit())"),
];

/// Everything `:help NAME` knows.
pub(crate) fn topics() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name).chain(COMMANDS.iter().map(|(c, _)| *c))
}

/// The overview printed by `:help`.
pub(crate) fn overview() -> String {
    let mut s = String::from(
        "resnet REPL: build, inspect and run torchvision ResNets with Python-like expressions.

  net = resnet18(num_classes=5)       build a model (models start in training mode)
  eval(net)                           evaluation mode: needed before inference
  x = randn(2, 3, 224, 224)           a random batch
  y = net(x)                          forward pass (no gradients are recorded)
  y.shape                             torch.Size([2, 5])
  softmax(y, dim=1).sum(dim=1)        probabilities per row sum to 1
  net.layer1[0]                       a sub-module (shares weights with net)
  summary(net, (1, 3, 224, 224))      torchinfo-style table
  load(net, \"weights.pth\")            .pth or .safetensors weights
  predict(net, image(\"cat.jpg\"))      top-5 classes of an image

Statements: `name = expr`, `a, b = expr`, `expr` (its value is printed), `import torch`,
several on one line separated by `;`. Open brackets or a trailing `\\` continue a line.
Expressions: 1, 2.5, 'text', True, False, None, [lists], (tuples,), calls f(a, k=v),
attributes net.layer1, indexing x[0], y.shape[1], negative numbers, + - * / // % ** @.
`torch.`, `nn.`, `F.` and `models.` prefixes work too (torch.randn, nn.Conv2d, F.softmax).

Commands:
",
    );
    for (_, line) in COMMANDS {
        s += &format!("  {line}\n");
    }
    for (group, title) in GROUPS {
        s += &format!("\n{title}:\n");
        let names: Vec<&str> = BUILTINS.iter().filter(|b| b.group == group).map(|b| b.name).collect();
        let mut line = String::from(" ");
        for n in names {
            if line.len() + n.len() + 1 > 92 {
                s += &line;
                s.push('\n');
                line = String::from(" ");
            }
            line.push(' ');
            line += n;
        }
        s += &line;
        s.push('\n');
    }
    s += "\nType :help NAME (or help(NAME)) for one of them.";
    s
}

/// Help on one builtin or command.
pub(crate) fn topic(name: &str) -> Option<String> {
    if let Some((_, line)) = COMMANDS.iter().find(|(c, _)| *c == name) {
        return Some(line.to_string());
    }
    let Some(b) = builtins::info(name) else {
        return super::ops::method_usage(name).map(|u| format!("{u}\n    a method (see dir(x) for a value's methods)"));
    };
    let mut s = format!("{}\n    {}", usage(b.name), b.doc);
    if b.group == "models" && b.name.chars().next().is_some_and(char::is_lowercase) {
        s += "\n    num_classes: outputs of the head; weights: a .pth/.safetensors file to load; seed: initialisation seed";
    }
    Some(s)
}

/// Help on a value: its type and what can be done with it.
pub(crate) fn for_value(v: &Value) -> String {
    let names = super::ops::attribute_names(v);
    let mut s = format!("{}: {}", v.type_name(), describe(v));
    if !names.is_empty() {
        s += &format!("\nattributes and methods: {}", names.join(", "));
    }
    s
}

/// A one-line description of a value, for `:vars`.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Tensor(t) => format!("{} {}", size_repr(t.shape()), super::value::dtype_repr(t.dtype())),
        Value::Module(m) => {
            let Ok(module) = m.get() else { return String::new() };
            let (total, trainable) = module.parameter_counts();
            let mut parts = Vec::new();
            if let (Some(net), Some(arch)) = (m.resnet(), m.root.arch) {
                parts.push(format!("{arch}, {} classes", net.config.num_classes));
            }
            if !m.path.is_empty() {
                parts.push(format!("`{}` of a {}", m.path, m.root.module().type_name()));
            }
            let mut p = format!("{} parameters", thousands(total));
            if trainable != total {
                p += &format!(" ({} trainable)", thousands(trainable));
            }
            parts.push(p);
            parts.push(if module.is_training() { "training mode" } else { "eval mode" }.into());
            parts.join(", ")
        }
        other => {
            let r = other.repr().replace('\n', " ");
            if r.chars().count() > 60 {
                format!("{}...", r.chars().take(57).collect::<String>())
            } else {
                r
            }
        }
    }
}
