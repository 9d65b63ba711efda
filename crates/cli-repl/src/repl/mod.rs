//! The `resnet repl`: an interactive session in a small Python-like language, in which a
//! torchvision user builds, inspects and runs ResNets as they would in Python.
//!
//! ```text
//! >>> net = resnet18(num_classes=5)
//! >>> eval(net)
//! >>> y = net(randn(2, 3, 64, 64))
//! >>> y.shape
//! torch.Size([2, 5])
//! ```
//!
//! **Design.** [`Session::execute`] takes one line and returns an [`Output`] (text, an error
//! with an optional "did you mean", `Quit`, or `Incomplete` when brackets are open or the line
//! ends with `\`). It never touches the terminal, so the whole language is tested without one;
//! [`run_repl`] is a thin rustyline front end over it, and [`run_lines`] the front end for
//! piped input. Nothing typed can end the session: inputs are validated (sizes, dimensions,
//! shapes by inference before a forward), and a panic is caught at `execute` as a last resort.
//!
//! Modules are shared, not copied: `b = net.layer1[0]` refers into `net`'s tree (a root held
//! in an `Arc` plus a dotted path), so `freeze(b)` freezes `net`'s weights, as in PyTorch.

mod args;
mod builtins;
mod complete;
mod error;
mod eval;
mod help;
mod lexer;
mod models;
mod ops;
mod parser;
mod suggest;
mod terminal;
mod value;

pub use terminal::{run_lines, run_repl};

use error::ReplError;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use tensor::{Rng, Tensor};
use value::Value;

/// Largest tensor the REPL creates or lets a forward produce, in elements (1 GiB of f32).
const MAX_ELEMENTS: usize = 1 << 28;
/// Largest model or layer the REPL builds, in parameters.
const MAX_PARAMS: usize = 1 << 28;
/// Largest channel count of a layer.
pub(crate) const MAX_CHANNELS: usize = 1 << 20;
/// Largest kernel size, stride, padding or dilation.
pub(crate) const MAX_HYPER: usize = 1 << 12;
/// Deepest nesting of modules built with `Sequential`.
pub(crate) const MAX_MODULE_DEPTH: usize = 64;
/// Most dimensions of a tensor (PyTorch's limit too).
pub(crate) const MAX_RANK: usize = 64;
/// Deepest nesting of lists and tuples.
pub(crate) const MAX_LIST_DEPTH: usize = 64;
/// Longest string or list built by `+`.
pub(crate) const MAX_SEQUENCE: usize = 1 << 24;
/// Longest input accepted, in bytes (including continuation lines).
const MAX_INPUT: usize = 1 << 20;

/// What a session may build and touch. [`Limits::DEFAULT`] is the interactive REPL's;
/// [`Limits::SANDBOX`] is for input nobody vouches for (the fuzzer): small tensors and models, a
/// bound on the arithmetic of each forward, and no file access at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest tensor created or produced by a forward, in elements.
    pub max_elements: usize,
    /// Largest model or layer built, in parameters.
    pub max_params: usize,
    /// Most multiply-adds one forward may take (torchinfo's count, found by shape inference
    /// before anything runs).
    pub max_mult_adds: u64,
    /// Whether the functions that read or write files (`load`, `save`, `image`, `weights=`,
    /// a `classes=` file) are available.
    pub files: bool,
}

impl Limits {
    /// The interactive REPL's: tensors up to 1 GiB, any forward, files allowed.
    pub const DEFAULT: Limits =
        Limits { max_elements: MAX_ELEMENTS, max_params: MAX_PARAMS, max_mult_adds: u64::MAX, files: true };
    /// For untrusted input: every line finishes in well under a second and touches no file.
    pub const SANDBOX: Limits =
        Limits { max_elements: 1 << 16, max_params: 1 << 16, max_mult_adds: 1 << 26, files: false };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

thread_local! {
    /// The limits of the session executing on this thread (set for the duration of
    /// [`Session::execute`], so the checks deep in the evaluator need no session handle).
    static ACTIVE: Cell<Limits> = const { Cell::new(Limits::DEFAULT) };
}

/// The limits in force.
pub(crate) fn limits() -> Limits {
    ACTIVE.with(Cell::get)
}

/// Puts a session's limits in force until dropped (restoring the previous ones, also when a
/// panic unwinds).
struct ActiveLimits(Limits);

impl ActiveLimits {
    fn enter(l: Limits) -> ActiveLimits {
        ActiveLimits(ACTIVE.with(|a| a.replace(l)))
    }
}

impl Drop for ActiveLimits {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Refuses `func` when the session may not touch files.
pub(crate) fn check_file_access(func: &str) -> Result<(), ReplError> {
    if limits().files {
        Ok(())
    } else {
        Err(ReplError::Limit(format!("{func}(): this session is sandboxed and has no file access")))
    }
}

/// What executing a line produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Nothing to print (an assignment, or a value of `None`).
    Empty,
    /// Text to print.
    Text(String),
    /// The line failed; the session goes on.
    Error {
        /// What went wrong (without an `error:` prefix).
        message: String,
        /// A likely intended name, for unknown names, attributes, keywords and commands.
        suggestion: Option<String>,
        /// What earlier statements of the same line printed before the failing one.
        printed: String,
    },
    /// The user asked to leave (`:quit`, `exit()`).
    Quit,
    /// The input continues on the next line (open brackets, or a trailing `\`).
    Incomplete,
}

impl Output {
    fn error(e: &ReplError, printed: String) -> Output {
        Output::Error { message: e.to_string(), suggestion: e.suggestion().map(str::to_string), printed }
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        matches!(self, Output::Error { .. })
    }
}

/// How the REPL prints an output: text as it is, errors as `error: ...` with the suggestion.
impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Empty | Output::Quit | Output::Incomplete => Ok(()),
            Output::Text(t) => f.write_str(t),
            Output::Error { message, suggestion, printed } => {
                if !printed.is_empty() {
                    writeln!(f, "{printed}")?;
                }
                write!(f, "error: {message}")?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")?;
                }
                Ok(())
            }
        }
    }
}

/// An interactive session: variables, the random generator, and input still being continued.
pub struct Session {
    pub(crate) vars: BTreeMap<String, Value>,
    pub(crate) rng: Rng,
    /// What `print` wrote while the current statement ran.
    pub(crate) printed: Vec<String>,
    pending: String,
    limits: Limits,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

impl Session {
    /// A new session: no variables, the generator seeded with 0 (`manual_seed` reseeds it).
    pub fn new() -> Session {
        Session::with_limits(Limits::DEFAULT)
    }

    /// A new session under `limits` (see [`Limits::SANDBOX`] for untrusted input).
    pub fn with_limits(limits: Limits) -> Session {
        Session { vars: BTreeMap::new(), rng: Rng::seed(0), printed: Vec::new(), pending: String::new(), limits }
    }

    /// A session for input nobody vouches for: [`Limits::SANDBOX`].
    pub fn sandboxed() -> Session {
        Session::with_limits(Limits::SANDBOX)
    }

    /// The session's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Executes one line of input. Open brackets or a trailing `\` make it
    /// [`Output::Incomplete`]: the next call continues the same input.
    pub fn execute(&mut self, line: &str) -> Output {
        if self.pending.is_empty() {
            let t = line.trim();
            if let Some(cmd) = t.strip_prefix(':') {
                return self.meta(cmd);
            }
        }
        let mut src = std::mem::take(&mut self.pending);
        if !src.is_empty() {
            src.push('\n');
        }
        src.push_str(line);
        if src.len() > MAX_INPUT {
            return Output::error(&ReplError::Limit(format!("input longer than {MAX_INPUT} bytes")), String::new());
        }
        let lexed = match lexer::lex(&src) {
            Ok(l) => l,
            Err(e) => return Output::error(&e, String::new()),
        };
        if !lexed.unclosed.is_empty() || lexed.continued {
            self.pending = src;
            return Output::Incomplete;
        }
        let _active = ActiveLimits::enter(self.limits);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&lexed.tokens)));
        run.unwrap_or_else(|payload| {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Output::Error {
                message: format!("internal error: {msg} (this is a bug in the REPL; the session goes on)"),
                suggestion: None,
                printed: String::new(),
            }
        })
    }

    /// Whether earlier lines left input that is still open (the prompt should be `...`).
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Drops input still being continued (Ctrl-C at a `...` prompt).
    pub fn cancel_pending(&mut self) {
        self.pending.clear();
    }

    /// Called at the end of the input: an error if an expression was left open.
    pub fn end_of_input(&mut self) -> Output {
        if self.pending.is_empty() {
            return Output::Empty;
        }
        let src = std::mem::take(&mut self.pending);
        let what = match lexer::lex(&src) {
            Ok(l) if !l.unclosed.is_empty() => {
                format!("unclosed `{}`", l.unclosed.iter().map(char::to_string).collect::<Vec<_>>().join("`, `"))
            }
            _ => "a line ending with `\\`".into(),
        };
        Output::error(&ReplError::Syntax(format!("unexpected end of input: {what}")), String::new())
    }

    /// The tensor bound to `name`, if any (for programs embedding a session, and tests).
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        match self.vars.get(name) {
            Some(Value::Tensor(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// The names of the session's variables, sorted.
    pub fn variable_names(&self) -> Vec<String> {
        self.vars.keys().cloned().collect()
    }

    /// Completions for the word before byte `pos` of `line`: the byte offset where the word
    /// starts and the candidates (variables, builtins, `:commands`, or the attributes of the
    /// value before a `.`).
    pub fn complete(&self, line: &str, pos: usize) -> (usize, Vec<String>) {
        complete::complete(self, line, pos)
    }

    fn meta(&mut self, cmd: &str) -> Output {
        let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let rest = rest.trim();
        match name {
            "help" | "h" | "?" => {
                if rest.is_empty() {
                    Output::Text(help::overview())
                } else {
                    match help::topic(rest.trim_start_matches(':')) {
                        Some(t) => Output::Text(t),
                        None => Output::error(
                            &ReplError::UnknownName {
                                name: rest.to_string(),
                                suggestion: suggest::suggest(rest, help::topics()),
                            },
                            String::new(),
                        ),
                    }
                }
            }
            "quit" | "q" | "exit" => Output::Quit,
            "vars" => Output::Text(self.vars_listing()),
            "reset" => {
                *self = Session::with_limits(self.limits);
                Output::Text("all variables removed; the generator is reseeded with 0".into())
            }
            _ => Output::error(
                &ReplError::UnknownCommand {
                    command: name.to_string(),
                    suggestion: suggest::suggest(name, help::COMMANDS.iter().map(|(c, _)| *c)).map(|c| format!(":{c}")),
                },
                String::new(),
            ),
        }
    }

    fn vars_listing(&self) -> String {
        if self.vars.is_empty() {
            return "no variables yet (try `net = resnet18()`)".into();
        }
        let rows: Vec<(String, String, String)> =
            self.vars.iter().map(|(k, v)| (k.clone(), v.type_name(), help::describe(v))).collect();
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        rows.iter()
            .map(|(n, t, d)| format!("{n:<w0$}  {t:<w1$}  {d}").trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
