//! Tokens of the REPL's Python-like language. Besides tokens, the lexer reports which brackets
//! are still open at the end of the input: that is how the REPL knows a line continues.

use super::error::{ReplError, Result};

/// Deepest bracket nesting accepted; deeper input would only exhaust the parser's stack.
pub(crate) const MAX_NESTING: usize = 64;

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An integer literal.
    Int(i64),
    /// A float literal.
    Float(f64),
    /// A string literal, escapes resolved.
    Str(String),
    /// A name or keyword.
    Ident(String),
    /// Punctuation or an operator.
    Op(&'static str),
    /// A statement separator: `;`, or a newline outside brackets.
    Sep,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Int(v) => write!(f, "{v}"),
            Tok::Float(v) => write!(f, "{v}"),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Ident(s) => f.write_str(s),
            Tok::Op(s) => f.write_str(s),
            Tok::Sep => f.write_str(";"),
        }
    }
}

/// The tokens of an input and the brackets left open at its end.
#[derive(Debug)]
pub(crate) struct Lexed {
    /// The tokens, in order.
    pub tokens: Vec<Tok>,
    /// Open brackets at the end of the input, innermost last.
    pub unclosed: Vec<char>,
    /// Whether the input ends with a line-continuation backslash.
    pub continued: bool,
}

// Longest first, so `**` is not read as two `*`.
const OPS: [&str; 25] = [
    "**", "//", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ",", "=", ".", "+", "-", "*", "/", "%", "@", ":",
    "<", ">", "!",
];

fn closer(open: char) -> char {
    match open {
        '(' => ')',
        '[' => ']',
        _ => '}',
    }
}

/// Splits `src` into tokens.
pub(crate) fn lex(src: &str) -> Result<Lexed> {
    let chars: Vec<char> = src.chars().collect();
    let n = chars.len();
    let mut tokens = Vec::new();
    let mut stack: Vec<char> = Vec::new();
    let mut continued = false;
    let mut i = 0;
    while i < n {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\r' | '\x0c' => i += 1,
            '\n' => {
                if stack.is_empty() {
                    tokens.push(Tok::Sep);
                }
                i += 1;
            }
            ';' => {
                tokens.push(Tok::Sep);
                i += 1;
            }
            '#' => {
                while i < n && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\\' => {
                // A backslash ends a line that continues on the next one.
                let mut j = i + 1;
                while j < n && matches!(chars[j], ' ' | '\t' | '\r') {
                    j += 1;
                }
                if j < n && chars[j] != '\n' {
                    return Err(ReplError::Syntax("unexpected `\\` (a backslash may only end a line)".into()));
                }
                if j >= n {
                    continued = true;
                }
                i = j + 1;
            }
            '"' | '\'' => {
                let (s, next) = string(&chars, i)?;
                tokens.push(Tok::Str(s));
                i = next;
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit) && !after_value(&tokens)) =>
            {
                let (t, next) = number(&chars, i)?;
                tokens.push(t);
                i = next;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < n && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            _ => {
                let op = OPS.iter().find(|op| {
                    let op: Vec<char> = op.chars().collect();
                    chars[i..].starts_with(&op)
                });
                let Some(&op) = op else {
                    return Err(ReplError::Syntax(format!("unexpected character `{c}`")));
                };
                match op {
                    "(" | "[" | "{" => {
                        stack.push(c);
                        if stack.len() > MAX_NESTING {
                            return Err(ReplError::Syntax(format!(
                                "brackets nested too deeply (more than {MAX_NESTING} levels)"
                            )));
                        }
                    }
                    ")" | "]" | "}" => match stack.pop() {
                        Some(open) if closer(open) == c => {}
                        Some(open) => {
                            return Err(ReplError::Syntax(format!("`{c}` does not match `{open}`")));
                        }
                        None => return Err(ReplError::Syntax(format!("unmatched `{c}`"))),
                    },
                    _ => {}
                }
                tokens.push(Tok::Op(op));
                i += op.len();
            }
        }
    }
    Ok(Lexed { tokens, unclosed: stack, continued })
}

/// Whether the previous token ends a value, so that a following `.` is attribute access
/// (`x.5` is an error, `(.5)` a float).
fn after_value(tokens: &[Tok]) -> bool {
    matches!(tokens.last(), Some(Tok::Ident(_) | Tok::Int(_) | Tok::Float(_) | Tok::Str(_) | Tok::Op(")" | "]")))
}

fn string(chars: &[char], start: usize) -> Result<(String, usize)> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            c if c == quote => return Ok((out, i + 1)),
            '\n' => break,
            '\\' => {
                let Some(&e) = chars.get(i + 1) else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    '\\' | '\'' | '"' => out.push(e),
                    '\n' => {}
                    other => {
                        // Python keeps unknown escapes as written (`"C:\data"`).
                        out.push('\\');
                        out.push(other);
                    }
                }
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err(ReplError::Syntax(format!(
        "unterminated string literal (a string starting with {quote} must end on the same line)"
    )))
}

fn number(chars: &[char], start: usize) -> Result<(Tok, usize)> {
    let n = chars.len();
    let mut i = start;
    let digits = |i: &mut usize| {
        while *i < n && (chars[*i].is_ascii_digit() || chars[*i] == '_') {
            *i += 1;
        }
    };
    digits(&mut i);
    let mut is_float = false;
    if i < n && chars[i] == '.' && !chars.get(i + 1).is_some_and(|c| c.is_alphabetic() || *c == '_') {
        is_float = true;
        i += 1;
        digits(&mut i);
    }
    if i < n && (chars[i] == 'e' || chars[i] == 'E') {
        let mut j = i + 1;
        if j < n && (chars[j] == '+' || chars[j] == '-') {
            j += 1;
        }
        if j < n && chars[j].is_ascii_digit() {
            is_float = true;
            i = j;
            digits(&mut i);
        }
    }
    let text: String = chars[start..i].iter().filter(|&&c| c != '_').collect();
    if i < n && (chars[i].is_alphanumeric() || chars[i] == '_') {
        let bad: String = chars[start..=i].iter().collect();
        return Err(ReplError::Syntax(format!("invalid number literal `{bad}`")));
    }
    let tok = if is_float {
        Tok::Float(text.parse().map_err(|_| ReplError::Syntax(format!("invalid number literal `{text}`")))?)
    } else {
        Tok::Int(text.parse().map_err(|_| {
            ReplError::Syntax(format!("integer literal `{text}` is too large (the largest is {})", i64::MAX))
        })?)
    };
    Ok((tok, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_open_brackets() {
        let l = lex("net = resnet18(num_classes=5").unwrap();
        assert_eq!(l.unclosed, vec!['(']);
        assert_eq!(l.tokens[0], Tok::Ident("net".into()));
        let l = lex("x = 1.5e-3 ** 2 // 3 # comment").unwrap();
        assert!(l.unclosed.is_empty());
        assert!(l.tokens.contains(&Tok::Float(1.5e-3)));
        assert!(l.tokens.contains(&Tok::Op("//")));
        assert!(lex("f(]").is_err());
        assert!(lex("'abc").is_err());
        assert!(lex("99999999999999999999").is_err());
        assert!(lex(&"(".repeat(1000)).is_err());
        assert_eq!(lex("[1,\n2]").unwrap().tokens.iter().filter(|t| **t == Tok::Sep).count(), 0);
        assert_eq!(lex("a\nb").unwrap().tokens.iter().filter(|t| **t == Tok::Sep).count(), 1);
        assert!(lex("a.shape").unwrap().tokens.contains(&Tok::Op(".")));
        assert!(lex("x = .5").unwrap().tokens.contains(&Tok::Float(0.5)));
        assert!(lex("x = 1 + \\").unwrap().continued);
        assert!(!lex("x = 1 + \\\n 2").unwrap().continued);
    }
}
