//! The REPL's lexer, parser and evaluator: each input line is executed in a sandboxed
//! session (`Limits::SANDBOX`: small tensors and models, bounded arithmetic per forward, no
//! file access), then the end of input. Nothing may panic (the session reports caught panics
//! as "internal error", which is a finding too), hang or touch a file.
#![no_main]

use cli_repl::repl::{Output, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut s = Session::sandboxed();
    for line in text.lines().take(64) {
        check(s.execute(line));
    }
    check(s.end_of_input());
});

fn check(out: Output) {
    if let Output::Error { message, .. } = &out {
        assert!(!message.starts_with("internal error"), "{message}");
    }
}
