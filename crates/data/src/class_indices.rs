//! `class_indices.json`: the class names a model was trained on, by output index.
//!
//! The tutorial's format, written by `train.py` and read by `predict.py`:
//!
//! ```json
//! {
//!     "0": "daisy",
//!     "1": "dandelion"
//! }
//! ```
//! (`json.dumps({index: name}, indent=4)`: string keys in index order.)

use crate::error::{DataError, Result};
use std::path::Path;

/// The JSON text for `classes` (index = position), byte-identical to the tutorial's
/// `json.dumps(cla_dict, indent=4)`.
pub fn class_indices_json(classes: &[String]) -> String {
    if classes.is_empty() {
        return "{}".into();
    }
    let mut s = String::from("{\n");
    for (i, name) in classes.iter().enumerate() {
        // Python's json.dumps escapes non-ASCII by default (ensure_ascii=True).
        let quoted = ascii_json_string(name);
        s.push_str(&format!("    \"{i}\": {quoted}"));
        s.push_str(if i + 1 < classes.len() { ",\n" } else { "\n" });
    }
    s.push('}');
    s
}

fn ascii_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `class_indices.json` atomically.
pub fn write_class_indices(path: impl AsRef<Path>, classes: &[String]) -> Result<()> {
    crate::image::write_file(path.as_ref(), class_indices_json(classes).as_bytes())
}

/// Reads `class_indices.json`: an object whose keys are the indices `"0"` to `"n-1"` (in any
/// order) and whose values are class names. Returns the names by index.
pub fn read_class_indices(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_class_indices(&text, path)
}

/// As [`read_class_indices`], from the text (`path` names it in errors).
pub fn parse_class_indices(text: &str, path: &Path) -> Result<Vec<String>> {
    let bad = |msg: String| DataError::BadJson { path: path.to_path_buf(), msg };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("expected an object mapping class indices (\"0\", \"1\", ...) to class names".into()))?;
    let mut classes: Vec<Option<String>> = vec![None; obj.len()];
    for (key, v) in obj {
        let idx: usize = key
            .parse()
            .ok()
            .filter(|i: &usize| i.to_string() == *key)
            .ok_or_else(|| bad(format!("key {key:?} is not a class index (\"0\" to \"{}\")", obj.len() - 1)))?;
        let slot = classes.get_mut(idx).ok_or_else(|| {
            bad(format!(
                "key {key:?} is out of range: {} classes need the keys \"0\" to \"{}\"",
                obj.len(),
                obj.len() - 1
            ))
        })?;
        let name = v.as_str().ok_or_else(|| bad(format!("the value of key {key:?} is not a string: {v}")))?;
        *slot = Some(name.to_string());
    }
    // n keys, each a distinct index below n: every slot is filled.
    Ok(classes.into_iter().map(|c| c.expect("n distinct indices below n")).collect())
}
