//! Tab completion: variables, builtins and `:commands`, or the attributes of the value before a
//! `.` (evaluated without calling anything).

use super::builtins::{BUILTINS, NAMESPACES};
use super::help::COMMANDS;
use super::lexer::lex;
use super::ops::attribute_names;
use super::parser::parse_expr;
use super::Session;

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

pub(crate) fn complete(s: &Session, line: &str, pos: usize) -> (usize, Vec<String>) {
    let pos = pos.min(line.len());
    if !line.is_char_boundary(pos) {
        return (pos, Vec::new());
    }
    let before = &line[..pos];
    let trimmed = before.trim_start();
    if let Some(cmd) = trimmed.strip_prefix(':') {
        if !s.is_pending() && !cmd.contains(char::is_whitespace) {
            let start = pos - trimmed.len();
            let c = COMMANDS.iter().filter(|(c, _)| c.starts_with(cmd)).map(|(c, _)| format!(":{c}")).collect();
            return (start, c);
        }
    }
    let start = before.char_indices().rev().find(|(_, c)| !is_word(*c)).map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[start..];
    let mut out: Vec<String> = if before[..start].ends_with('.') {
        let obj_end = start - 1;
        let obj_start = before[..obj_end]
            .char_indices()
            .rev()
            .find(|(_, c)| !(is_word(*c) || matches!(c, '.' | '[' | ']' | '-' | '\'' | '"')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let obj_src = &before[obj_start..obj_end];
        let Some(value) = lex(obj_src).ok().and_then(|l| parse_expr(&l.tokens).ok()).and_then(|e| s.eval_path(&e))
        else {
            return (start, Vec::new());
        };
        attribute_names(&value).into_iter().filter(|n| n.starts_with(word)).collect()
    } else {
        if word.is_empty() || word.starts_with(|c: char| c.is_ascii_digit()) {
            return (start, Vec::new());
        }
        let mut names: Vec<String> = s.vars.keys().filter(|k| k.starts_with(word)).cloned().collect();
        for b in BUILTINS.iter().filter(|b| b.name.starts_with(word)) {
            // Functions complete with their opening bracket, as Python's completer does.
            names.push(if s.vars.contains_key(b.name) { b.name.to_string() } else { format!("{}(", b.name) });
        }
        names.extend(NAMESPACES.iter().filter(|(n, _)| n.starts_with(word)).map(|(n, _)| n.to_string()));
        names.extend(["True", "False", "None"].iter().filter(|k| k.starts_with(word)).map(|k| k.to_string()));
        names
    };
    out.sort();
    out.dedup();
    (start, out)
}
