//! The front ends: rustyline on a terminal (prompts, history, completion, `...` continuation
//! prompts), plain line-by-line execution when stdin is piped.

use super::{Output, Session};
use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};
use std::cell::RefCell;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

/// Runs the REPL on this process's stdin and stdout: interactive with line editing on a
/// terminal, line by line without prompts when stdin is piped. Exits 0 at the end of input or
/// on `:quit`, whatever errors the lines produced (they are printed as `error: ...`).
pub fn run_repl() -> ExitCode {
    // Panics are caught at `Session::execute` and reported as errors; the default hook would
    // also print them raw to stderr in the middle of the session.
    std::panic::set_hook(Box::new(|_| {}));
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let stdout = std::io::stdout();
        return match run_lines(stdin.lock(), &mut stdout.lock()) {
            Ok(()) => ExitCode::SUCCESS,
            // Output closed early (`resnet repl < script | head`): nothing more to do.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("resnet repl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    interactive()
}

/// Executes every line of `input`, writing each output to `output` (errors as `error: ...`),
/// without prompts or escape codes: the front end for piped input. Stops at `:quit` or the end
/// of the input; an expression left open at the end is reported as an error.
pub fn run_lines(mut input: impl BufRead, output: &mut impl Write) -> std::io::Result<()> {
    let mut session = Session::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        match session.execute(line) {
            Output::Quit => return output.flush(),
            Output::Empty | Output::Incomplete => {}
            out => writeln!(output, "{out}")?,
        }
        output.flush()?;
    }
    let end = session.end_of_input();
    if end.is_error() {
        writeln!(output, "{end}")?;
    }
    output.flush()
}

/// Where the history lives: `$RESNET_HISTORY` (empty to disable), else
/// `$XDG_DATA_HOME/resnet/history`, else `~/.resnet_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RESNET_HISTORY") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("resnet").join("history"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".resnet_history"))
}

struct ReplHelper {
    session: Rc<RefCell<Session>>,
}

impl Completer for ReplHelper {
    type Candidate = String;
    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        // The session is only borrowed mutably between reads, never while completing.
        Ok(self.session.try_borrow().map(|s| s.complete(line, pos)).unwrap_or((pos, Vec::new())))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

fn interactive() -> ExitCode {
    let session = Rc::new(RefCell::new(Session::new()));
    let config = Config::builder().auto_add_history(false).completion_type(CompletionType::List).build();
    let mut rl: Editor<ReplHelper, DefaultHistory> = match Editor::with_config(config) {
        Ok(rl) => rl,
        Err(e) => {
            eprintln!("resnet repl: cannot use the terminal ({e}); reading lines without editing");
            let stdin = std::io::stdin();
            return match run_lines(stdin.lock(), &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            };
        }
    };
    rl.set_helper(Some(ReplHelper { session: session.clone() }));
    let history = history_path();
    if let Some(p) = &history {
        // A missing or unreadable history is not worth a message.
        let _ = rl.load_history(p);
    }
    println!(
        "resnet {} REPL: PyTorch-style expressions over torchvision's ResNets.\n\
         Type :help for help, :quit or Ctrl-D to leave. Models start in training mode: eval(net) before inference.",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        let prompt = if session.borrow().is_pending() { "... " } else { ">>> " };
        match rl.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                }
                let out = session.borrow_mut().execute(&line);
                match out {
                    Output::Quit => break,
                    Output::Empty | Output::Incomplete => {}
                    out => println!("{out}"),
                }
            }
            Err(ReadlineError::Interrupted) => {
                // Ctrl-C abandons the current input, as in Python.
                session.borrow_mut().cancel_pending();
                println!("KeyboardInterrupt");
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("resnet repl: {e}");
                break;
            }
        }
    }
    if let Some(p) = &history {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // History that cannot be written (read-only home, ...) is silently given up.
        let _ = rl.save_history(p);
    }
    ExitCode::SUCCESS
}
