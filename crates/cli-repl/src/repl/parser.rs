//! The statements and expressions of the REPL's language, parsed by recursive descent.
//!
//! ```text
//! line       := statement (';' statement)*
//! statement  := 'import' dotted ('as' NAME)? | 'from' dotted 'import' NAME ('as' NAME)? (',' ...)*
//!             | NAME (',' NAME)* '=' exprs | exprs
//! exprs      := expr (',' expr)* ','?                   (two or more make a tuple)
//! expr       := term (('+' | '-') term)*
//! term       := unary (('*' | '/' | '//' | '%' | '@') unary)*
//! unary      := ('-' | '+') unary | power
//! power      := postfix ('**' unary)?
//! postfix    := atom ('(' args ')' | '.' NAME | '[' exprs ']')*
//! args       := (arg (',' arg)* ','?)?      arg := NAME '=' expr | expr
//! atom       := INT | FLOAT | STRING | NAME | True | False | None
//!             | '(' ')' | '(' exprs ')' | '[' (expr (',' expr)* ','?)? ']'
//! ```

use super::error::{ReplError, Result};
use super::lexer::{Tok, MAX_NESTING};

/// A statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stmt {
    /// An expression whose value is printed.
    Expr(Expr),
    /// `name = expr`, or `a, b = expr` (unpacking).
    Assign(Vec<String>, Expr),
    /// `import a.b.c as x`: binds `x` (or `a`) to a known namespace.
    Import { path: Vec<String>, alias: Option<String> },
    /// `from a.b import c as d, e`.
    FromImport { path: Vec<String>, names: Vec<(String, Option<String>)> },
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    MatMul,
}

impl BinOp {
    /// The operator as typed.
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Mod => "%",
            BinOp::Pow => "**",
            BinOp::MatMul => "@",
        }
    }
}

/// A call argument, positional or keyword.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Arg {
    /// The keyword, for `k=v`.
    pub name: Option<String>,
    /// The value.
    pub value: Expr,
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    Name(String),
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    /// `value.name`
    Attr(Box<Expr>, String),
    /// `value[index]`
    Index(Box<Expr>, Box<Expr>),
    /// `callee(args)`
    Call(Box<Expr>, Vec<Arg>),
    /// `-x` (`negate == true`) or `+x`.
    Unary {
        negate: bool,
        operand: Box<Expr>,
    },
    /// `lhs op rhs`
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// Python statements this language does not have, with what to do instead.
const UNSUPPORTED_KEYWORDS: [&str; 20] = [
    "def", "class", "for", "while", "if", "elif", "else", "lambda", "return", "with", "try", "except", "del", "global",
    "pass", "yield", "assert", "raise", "async", "await",
];

/// Parses one input (possibly several statements) from its tokens.
pub(crate) fn parse(tokens: &[Tok]) -> Result<Vec<Stmt>> {
    tokens.split(|t| *t == Tok::Sep).filter(|s| !s.is_empty()).map(statement).collect()
}

/// Parses tokens that must form exactly one expression (used by completion).
pub(crate) fn parse_expr(tokens: &[Tok]) -> Result<Expr> {
    let mut p = Parser { tokens, pos: 0, depth: 0 };
    let e = p.expr()?;
    p.finish()?;
    Ok(e)
}

fn statement(tokens: &[Tok]) -> Result<Stmt> {
    if let Some(Tok::Ident(first)) = tokens.first() {
        match first.as_str() {
            "import" => return import(&tokens[1..]),
            "from" => return from_import(&tokens[1..]),
            k if UNSUPPORTED_KEYWORDS.contains(&k) => {
                return Err(ReplError::Syntax(format!(
                    "`{k}` is not supported: this REPL evaluates expressions and assignments, one statement at a time"
                )));
            }
            _ => {}
        }
    }
    // An `=` outside brackets makes an assignment (`=` inside brackets is a keyword argument).
    let mut depth = 0usize;
    let mut eq = None;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Tok::Op("(" | "[" | "{") => depth += 1,
            Tok::Op(")" | "]" | "}") => depth = depth.saturating_sub(1),
            Tok::Op("=") if depth == 0 => {
                eq = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(eq) = eq else {
        let mut p = Parser { tokens, pos: 0, depth: 0 };
        let e = p.exprs()?;
        p.finish()?;
        return Ok(Stmt::Expr(e));
    };
    let targets = assignment_targets(&tokens[..eq])?;
    let rhs = &tokens[eq + 1..];
    if rhs.is_empty() {
        return Err(ReplError::Syntax("expected a value after `=`".into()));
    }
    let mut p = Parser { tokens: rhs, pos: 0, depth: 0 };
    let e = p.exprs()?;
    p.finish()?;
    Ok(Stmt::Assign(targets, e))
}

fn assignment_targets(lhs: &[Tok]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut expect_name = true;
    for t in lhs {
        match (t, expect_name) {
            (Tok::Ident(n), true) if !is_literal_keyword(n) => {
                names.push(n.clone());
                expect_name = false;
            }
            (Tok::Op(","), false) => expect_name = true,
            _ => {
                let text: Vec<String> = lhs.iter().map(Tok::to_string).collect();
                let text = text.join("");
                let hint = if lhs.iter().any(|t| matches!(t, Tok::Op("." | "["))) {
                    "; attributes and items cannot be assigned (to change a model's head, build it with num_classes=..., then load(net, path) keeps the backbone)"
                } else {
                    ""
                };
                return Err(ReplError::Syntax(format!("cannot assign to `{text}`: only names can be assigned{hint}")));
            }
        }
    }
    if names.is_empty() {
        return Err(ReplError::Syntax("expected a name before `=`".into()));
    }
    Ok(names)
}

fn is_literal_keyword(n: &str) -> bool {
    matches!(n, "True" | "False" | "None")
}

fn dotted(tokens: &[Tok], pos: &mut usize) -> Result<Vec<String>> {
    let mut path = Vec::new();
    loop {
        match tokens.get(*pos) {
            Some(Tok::Ident(n)) => path.push(n.clone()),
            _ => return Err(ReplError::Syntax("expected a module name".into())),
        }
        *pos += 1;
        if tokens.get(*pos) == Some(&Tok::Op(".")) {
            *pos += 1;
        } else {
            return Ok(path);
        }
    }
}

fn alias(tokens: &[Tok], pos: &mut usize) -> Result<Option<String>> {
    if tokens.get(*pos) == Some(&Tok::Ident("as".into())) {
        *pos += 1;
        match tokens.get(*pos) {
            Some(Tok::Ident(n)) => {
                *pos += 1;
                Ok(Some(n.clone()))
            }
            _ => Err(ReplError::Syntax("expected a name after `as`".into())),
        }
    } else {
        Ok(None)
    }
}

fn import(tokens: &[Tok]) -> Result<Stmt> {
    let mut pos = 0;
    let path = dotted(tokens, &mut pos)?;
    let alias = alias(tokens, &mut pos)?;
    if let Some(t) = tokens.get(pos) {
        return Err(ReplError::Syntax(format!("unexpected `{t}` in import")));
    }
    Ok(Stmt::Import { path, alias })
}

fn from_import(tokens: &[Tok]) -> Result<Stmt> {
    let mut pos = 0;
    let path = dotted(tokens, &mut pos)?;
    if tokens.get(pos) != Some(&Tok::Ident("import".into())) {
        return Err(ReplError::Syntax("expected `import` after `from ...`".into()));
    }
    pos += 1;
    let mut names: Vec<(String, Option<String>)> = Vec::new();
    loop {
        match tokens.get(pos) {
            Some(Tok::Ident(n)) => names.push((n.clone(), None)),
            Some(Tok::Op("*")) => names.push(("*".to_string(), None)),
            _ => return Err(ReplError::Syntax("expected a name to import".into())),
        }
        pos += 1;
        let a = alias(tokens, &mut pos)?;
        if let Some(last) = names.last_mut() {
            last.1 = a;
        }
        match tokens.get(pos) {
            Some(Tok::Op(",")) => pos += 1,
            None => break,
            Some(t) => return Err(ReplError::Syntax(format!("unexpected `{t}` in import"))),
        }
    }
    Ok(Stmt::FromImport { path, names })
}

struct Parser<'a> {
    tokens: &'a [Tok],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn peek_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(o)) if *o == op)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.peek_op(op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<()> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("expected `{op}`")))
        }
    }

    fn unexpected(&self, context: &str) -> ReplError {
        match self.peek() {
            Some(Tok::Op(op @ ("==" | "!=" | "<" | ">" | "<=" | ">="))) => {
                ReplError::Syntax(format!("comparison operators such as `{op}` are not supported"))
            }
            Some(Tok::Op(":")) => ReplError::Syntax(
                "slices (`:`) are not supported; use narrow(x, dim, start, length) or x.narrow(...)".into(),
            ),
            Some(Tok::Op("{")) => ReplError::Syntax("dictionaries and sets (`{...}`) are not supported".into()),
            Some(t) => ReplError::Syntax(format!("unexpected `{t}` ({context})")),
            None => ReplError::Syntax(format!("unexpected end of input ({context})")),
        }
    }

    fn finish(&self) -> Result<()> {
        if self.pos < self.tokens.len() {
            return Err(self.unexpected("expected the end of the statement"));
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        // Each bracket level costs a few parser frames; unary chains count too.
        if self.depth > MAX_NESTING * 2 {
            return Err(ReplError::Syntax("expression nested too deeply".into()));
        }
        Ok(())
    }

    /// One or more comma-separated expressions; two or more (or a trailing comma) make a tuple.
    fn exprs(&mut self) -> Result<Expr> {
        let first = self.expr()?;
        if !self.peek_op(",") {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_op(",") {
            if self.peek().is_none() || self.peek_op(")") || self.peek_op("]") {
                break;
            }
            items.push(self.expr()?);
        }
        Ok(Expr::Tuple(items))
    }

    fn expr(&mut self) -> Result<Expr> {
        let mut lhs = self.term()?;
        loop {
            let op = if self.eat_op("+") {
                BinOp::Add
            } else if self.eat_op("-") {
                BinOp::Sub
            } else {
                return Ok(lhs);
            };
            let rhs = self.term()?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn term(&mut self) -> Result<Expr> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("*")) => BinOp::Mul,
                Some(Tok::Op("/")) => BinOp::Div,
                Some(Tok::Op("//")) => BinOp::FloorDiv,
                Some(Tok::Op("%")) => BinOp::Mod,
                Some(Tok::Op("@")) => BinOp::MatMul,
                _ => return Ok(lhs),
            };
            self.pos += 1;
            let rhs = self.unary()?;
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs));
        }
    }

    fn unary(&mut self) -> Result<Expr> {
        self.enter()?;
        let e = if self.eat_op("-") {
            let operand = self.unary()?;
            // Fold literals so that `-5` is the number -5 (and i64::MIN is reachable).
            match operand {
                Expr::Int(v) => Expr::Int(v.wrapping_neg()),
                Expr::Float(v) => Expr::Float(-v),
                other => Expr::Unary { negate: true, operand: Box::new(other) },
            }
        } else if self.eat_op("+") {
            Expr::Unary { negate: false, operand: Box::new(self.unary()?) }
        } else {
            self.power()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn power(&mut self) -> Result<Expr> {
        let base = self.postfix()?;
        if self.eat_op("**") {
            let exp = self.unary()?;
            return Ok(Expr::Binary(BinOp::Pow, Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn postfix(&mut self) -> Result<Expr> {
        let mut e = self.atom()?;
        loop {
            if self.eat_op("(") {
                self.enter()?;
                let args = self.args()?;
                self.expect_op(")")?;
                self.depth -= 1;
                e = Expr::Call(Box::new(e), args);
            } else if self.eat_op(".") {
                match self.peek() {
                    Some(Tok::Ident(n)) => {
                        let n = n.clone();
                        self.pos += 1;
                        e = Expr::Attr(Box::new(e), n);
                    }
                    _ => return Err(self.unexpected("expected an attribute name after `.`")),
                }
            } else if self.eat_op("[") {
                self.enter()?;
                if self.peek_op("]") {
                    return Err(ReplError::Syntax("expected an index inside `[]`".into()));
                }
                let index = self.exprs()?;
                self.expect_op("]")?;
                self.depth -= 1;
                e = Expr::Index(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn args(&mut self) -> Result<Vec<Arg>> {
        let mut args: Vec<Arg> = Vec::new();
        while !self.peek_op(")") {
            if self.peek_op("*") || self.peek_op("**") {
                return Err(ReplError::Syntax("`*args` and `**kwargs` unpacking are not supported".into()));
            }
            let keyword = match (self.tokens.get(self.pos), self.tokens.get(self.pos + 1)) {
                (Some(Tok::Ident(n)), Some(Tok::Op("="))) => Some(n.clone()),
                _ => None,
            };
            if let Some(k) = keyword {
                self.pos += 2;
                if args.iter().any(|a| a.name.as_deref() == Some(k.as_str())) {
                    return Err(ReplError::Syntax(format!("keyword argument `{k}` repeated")));
                }
                args.push(Arg { name: Some(k), value: self.expr()? });
            } else {
                if args.iter().any(|a| a.name.is_some()) {
                    return Err(ReplError::Syntax("positional argument follows keyword argument".into()));
                }
                args.push(Arg { name: None, value: self.expr()? });
            }
            if !self.eat_op(",") {
                break;
            }
        }
        Ok(args)
    }

    fn atom(&mut self) -> Result<Expr> {
        let Some(t) = self.peek().cloned() else {
            return Err(self.unexpected("expected a value"));
        };
        self.pos += 1;
        Ok(match t {
            Tok::Int(v) => Expr::Int(v),
            Tok::Float(v) => Expr::Float(v),
            Tok::Str(mut s) => {
                // Adjacent literals concatenate, as in Python.
                while let Some(Tok::Str(more)) = self.peek() {
                    s.push_str(more);
                    self.pos += 1;
                }
                Expr::Str(s)
            }
            Tok::Ident(n) => match n.as_str() {
                "True" => Expr::Bool(true),
                "False" => Expr::Bool(false),
                "None" => Expr::None,
                k if UNSUPPORTED_KEYWORDS.contains(&k) || k == "import" || k == "from" => {
                    return Err(ReplError::Syntax(format!("`{k}` is not supported in an expression")));
                }
                _ => Expr::Name(n),
            },
            Tok::Op("(") => {
                self.enter()?;
                let e = if self.peek_op(")") {
                    Expr::Tuple(Vec::new())
                } else {
                    let first = self.expr()?;
                    if self.peek_op(",") {
                        let mut items = vec![first];
                        while self.eat_op(",") {
                            if self.peek_op(")") {
                                break;
                            }
                            items.push(self.expr()?);
                        }
                        Expr::Tuple(items)
                    } else {
                        first
                    }
                };
                self.expect_op(")")?;
                self.depth -= 1;
                e
            }
            Tok::Op("[") => {
                self.enter()?;
                let mut items = Vec::new();
                while !self.peek_op("]") {
                    items.push(self.expr()?);
                    if !self.eat_op(",") {
                        break;
                    }
                }
                self.expect_op("]")?;
                self.depth -= 1;
                Expr::List(items)
            }
            _ => {
                self.pos -= 1;
                return Err(self.unexpected("expected a value"));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::lexer::lex;
    use super::*;

    fn p(s: &str) -> Result<Vec<Stmt>> {
        parse(&lex(s)?.tokens)
    }

    #[test]
    fn statements() {
        let s = p("y = net(x)").unwrap();
        assert!(matches!(&s[0], Stmt::Assign(n, Expr::Call(..)) if n == &["y".to_string()]));
        let s = p("softmax(y, dim=-1)").unwrap();
        let Stmt::Expr(Expr::Call(_, args)) = &s[0] else { panic!("{s:?}") };
        assert_eq!(args[1].name.as_deref(), Some("dim"));
        assert_eq!(args[1].value, Expr::Int(-1));
        assert_eq!(
            p("-2 ** 2").unwrap()[0],
            Stmt::Expr(Expr::Unary {
                negate: true,
                operand: Box::new(Expr::Binary(BinOp::Pow, Box::new(Expr::Int(2)), Box::new(Expr::Int(2))))
            })
        );
        assert!(matches!(&p("net.layer1[0]").unwrap()[0], Stmt::Expr(Expr::Index(..))));
        assert!(matches!(&p("a, b = topk(y, 2)").unwrap()[0], Stmt::Assign(n, _) if n.len() == 2));
        assert!(matches!(&p("(1,)").unwrap()[0], Stmt::Expr(Expr::Tuple(v)) if v.len() == 1));
        assert_eq!(p("a = 1; b = 2").unwrap().len(), 2);
        assert!(p("net.fc = 1").is_err());
        assert!(p("f(a=1, 2)").is_err());
        assert!(p("1 +").is_err());
        assert!(p("for x in y").is_err());
        assert!(p(&"-".repeat(10_000)).is_err());
        assert!(matches!(&p("import torch.nn as nn").unwrap()[0], Stmt::Import { alias: Some(a), .. } if a == "nn"));
        assert!(matches!(&p("from torchvision.models import resnet18, resnet50 as r").unwrap()[0],
            Stmt::FromImport { names, .. } if names.len() == 2));
    }
}
