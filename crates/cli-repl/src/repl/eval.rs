//! Running statements and evaluating expressions.

use super::args::CallArgs;
use super::builtins::{self, MODULE_PATHS, NAMESPACES};
use super::error::{type_err, ReplError, Result};
use super::lexer::Tok;
use super::parser::{parse, Expr, Stmt};
use super::suggest::suggest;
use super::value::Value;
use super::{models, ops, Output, Session, MAX_LIST_DEPTH, MAX_RANK};

/// What a statement did.
enum Done {
    Nothing,
    Print(String),
    Quit,
}

impl Session {
    /// Parses and runs the statements of one complete input.
    pub(crate) fn run(&mut self, tokens: &[Tok]) -> Output {
        let stmts = match parse(tokens) {
            Ok(s) => s,
            Err(e) => return Output::error(&e, String::new()),
        };
        let mut printed: Vec<String> = Vec::new();
        for st in stmts {
            self.printed.clear();
            let done = self.run_stmt(st);
            // `print` output comes first: it was written while the statement ran.
            printed.append(&mut self.printed);
            match done {
                Ok(Done::Nothing) => {}
                Ok(Done::Print(t)) => printed.push(t),
                Ok(Done::Quit) => return Output::Quit,
                Err(e) => return Output::error(&e, printed.join("\n")),
            }
        }
        if printed.is_empty() {
            Output::Empty
        } else {
            Output::Text(printed.join("\n"))
        }
    }

    fn run_stmt(&mut self, st: Stmt) -> Result<Done> {
        match st {
            Stmt::Expr(e) => {
                let v = self.eval(&e)?;
                match v {
                    Value::None => Ok(Done::Nothing),
                    Value::Quit => Ok(Done::Quit),
                    // `print` output and reports are not results to keep in `_`.
                    Value::Text(t) => Ok(Done::Print(t.trim_end().to_string())),
                    v => {
                        let text = v.repr();
                        self.vars.insert("_".into(), v);
                        Ok(Done::Print(text))
                    }
                }
            }
            Stmt::Assign(names, e) => {
                let v = self.eval(&e)?;
                if matches!(v, Value::Quit) {
                    return Ok(Done::Quit);
                }
                if names.len() == 1 {
                    self.vars.insert(names[0].clone(), v);
                    return Ok(Done::Nothing);
                }
                let items = match v {
                    Value::List(items) | Value::Tuple(items) => items,
                    Value::Size(s) => s.into_iter().map(|d| Value::Int(d as i64)).collect(),
                    other => {
                        return Err(type_err(format!(
                            "cannot unpack a {} into {} names",
                            other.type_name(),
                            names.len()
                        )))
                    }
                };
                if items.len() != names.len() {
                    return Err(ReplError::Value(format!(
                        "cannot unpack {} values into {} names",
                        items.len(),
                        names.len()
                    )));
                }
                for (n, v) in names.into_iter().zip(items) {
                    self.vars.insert(n, v);
                }
                Ok(Done::Nothing)
            }
            Stmt::Import { path, alias } => {
                let joined = path.join(".");
                let known = |p: &str| MODULE_PATHS.iter().find(|m| **m == p).copied();
                let Some(full) = known(&joined) else { return Err(no_module(&joined)) };
                match alias {
                    Some(a) => {
                        self.vars.insert(a, Value::Namespace(full));
                    }
                    None => {
                        let top = known(&path[0]).ok_or_else(|| no_module(&path[0]))?;
                        self.vars.insert(path[0].clone(), Value::Namespace(top));
                    }
                }
                Ok(Done::Nothing)
            }
            Stmt::FromImport { path, names } => {
                let joined = path.join(".");
                let Some(full) = MODULE_PATHS.iter().find(|m| **m == joined).copied() else {
                    return Err(no_module(&joined));
                };
                for (name, alias) in names {
                    if name == "*" {
                        continue;
                    }
                    let v = ops::get_attr(Value::Namespace(full), &name).map_err(|e| match e {
                        ReplError::UnknownAttribute { suggestion, .. } => ReplError::Type(format!(
                            "cannot import name `{name}` from `{joined}`{}",
                            suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
                        )),
                        other => other,
                    })?;
                    self.vars.insert(alias.unwrap_or(name), v);
                }
                Ok(Done::Nothing)
            }
        }
    }

    /// The value of a name: a variable, then a builtin, then a namespace.
    pub(crate) fn lookup(&self, name: &str) -> Result<Value> {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.clone());
        }
        if let Some(b) = builtins::lookup(name) {
            return Ok(Value::Builtin(b));
        }
        if let Some((_, path)) = NAMESPACES.iter().find(|(n, _)| *n == name) {
            return Ok(Value::Namespace(path));
        }
        let candidates = self
            .vars
            .keys()
            .map(String::as_str)
            .chain(builtins::BUILTINS.iter().map(|b| b.name))
            .chain(NAMESPACES.iter().map(|(n, _)| *n));
        let suggestion = suggest(name, candidates);
        // Python names a few things differently; point at ours.
        let suggestion = suggestion.or_else(|| match name {
            "true" => Some("True".into()),
            "false" => Some("False".into()),
            "null" | "none" | "nil" => Some("None".into()),
            _ => None,
        });
        Err(ReplError::UnknownName { name: name.to_string(), suggestion })
    }

    pub(crate) fn eval(&mut self, e: &Expr) -> Result<Value> {
        let v = self.eval_inner(e)?;
        match &v {
            Value::Tensor(t) if t.rank() > MAX_RANK => {
                Err(ReplError::Limit(format!("tensors have at most {MAX_RANK} dimensions, this one has {}", t.rank())))
            }
            Value::List(_) | Value::Tuple(_) if nesting(&v) > MAX_LIST_DEPTH => {
                Err(ReplError::Limit(format!("lists and tuples nest at most {MAX_LIST_DEPTH} deep")))
            }
            _ => Ok(v),
        }
    }

    fn eval_inner(&mut self, e: &Expr) -> Result<Value> {
        Ok(match e {
            Expr::Int(v) => Value::Int(*v),
            Expr::Float(v) => Value::Float(*v),
            Expr::Str(s) => Value::Str(s.clone()),
            Expr::Bool(b) => Value::Bool(*b),
            Expr::None => Value::None,
            Expr::Name(n) => self.lookup(n)?,
            Expr::List(items) => Value::List(items.iter().map(|i| self.eval(i)).collect::<Result<_>>()?),
            Expr::Tuple(items) => Value::Tuple(items.iter().map(|i| self.eval(i)).collect::<Result<_>>()?),
            Expr::Attr(obj, name) => {
                let v = self.eval(obj)?;
                ops::get_attr(v, name)?
            }
            Expr::Index(obj, idx) => {
                let v = self.eval(obj)?;
                let i = self.eval(idx)?;
                ops::index(v, i)?
            }
            Expr::Unary { negate, operand } => {
                let v = self.eval(operand)?;
                ops::unary(*negate, v)?
            }
            Expr::Binary(op, a, b) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                ops::binary(*op, a, b)?
            }
            Expr::Call(callee, args) => {
                let f = self.eval(callee)?;
                let mut call = CallArgs::default();
                for a in args {
                    let v = self.eval(&a.value)?;
                    match &a.name {
                        Some(k) => call.kw.push((k.clone(), v)),
                        None => call.pos.push(v),
                    }
                }
                self.call(f, call)?
            }
        })
    }

    fn call(&mut self, f: Value, args: CallArgs) -> Result<Value> {
        match f {
            Value::Builtin(name) => builtins::call(self, name, args),
            Value::Method(recv, name) => ops::call_method(*recv, name, args),
            Value::Module(m) => {
                let n = args.pos.len() + args.kw.len();
                match (args.pos.into_iter().next(), n) {
                    (Some(Value::Tensor(x)), 1) => Ok(Value::Tensor(models::forward(&m, &x)?)),
                    (Some(other), 1) => {
                        Err(type_err(format!("calling {} needs a Tensor input, got {}", m.label(), other.type_name())))
                    }
                    _ => Err(type_err(format!("calling {} takes one input tensor, got {n} arguments", m.label()))),
                }
            }
            Value::Namespace(n) => Err(type_err(format!("module `{n}` is not callable"))),
            other => Err(type_err(format!("'{}' object is not callable", other.type_name()))),
        }
    }

    /// Evaluates an expression made only of names, attributes and literal indices (no calls):
    /// safe to run while completing.
    pub(crate) fn eval_path(&self, e: &Expr) -> Option<Value> {
        match e {
            Expr::Name(n) => self.lookup(n).ok(),
            Expr::Attr(obj, name) => ops::get_attr(self.eval_path(obj)?, name).ok(),
            Expr::Index(obj, idx) => {
                let i = match idx.as_ref() {
                    Expr::Int(i) => Value::Int(*i),
                    Expr::Str(s) => Value::Str(s.clone()),
                    _ => return None,
                };
                ops::index(self.eval_path(obj)?, i).ok()
            }
            _ => None,
        }
    }
}

/// How deeply lists and tuples nest in a value (values already bound never exceed the limit,
/// so this recursion is bounded).
fn nesting(v: &Value) -> usize {
    match v {
        Value::List(items) | Value::Tuple(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

fn no_module(name: &str) -> ReplError {
    ReplError::Type(format!("no module named `{name}` (this REPL provides {})", MODULE_PATHS.join(", ")))
}
