//! The sandboxed session (`Session::sandboxed`, `Limits::SANDBOX`) that the REPL fuzzer runs:
//! no function reaches the file system, sizes are small, each forward's arithmetic is bounded,
//! and `:reset` keeps the sandbox.

use cli_repl::repl::{Limits, Output, Session};
use std::path::PathBuf;

fn ok(s: &mut Session, line: &str) -> String {
    match s.execute(line) {
        Output::Text(t) => t,
        Output::Empty => String::new(),
        other => panic!("`{line}` gave {other:?}"),
    }
}

fn err(s: &mut Session, line: &str) -> String {
    match s.execute(line) {
        Output::Error { message, .. } => {
            assert!(!message.contains("internal error"), "`{line}` panicked: {message}");
            message
        }
        other => panic!("`{line}` should fail, gave {other:?}"),
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-repl-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn a_sandboxed_session_touches_no_file() {
    let dir = temp_dir();
    let mut s = Session::sandboxed();
    assert_eq!(s.limits(), Limits::SANDBOX);
    ok(&mut s, "net = nn.Sequential(nn.Linear(4, 2))");
    let target = dir.join("out.safetensors");
    for line in [
        format!("save(net, {:?})", target.display().to_string()),
        format!("save(net, {:?})", dir.join("out.pth").display().to_string()),
        format!("load(net, {:?})", target.display().to_string()),
        "image('photo.jpg')".to_string(),
        "resnet18(weights='w.pth')".to_string(),
        "resnet18('w.pth')".to_string(),
        "predict(net, randn(1, 4), classes='class_indices.json')".to_string(),
    ] {
        let m = err(&mut s, &line);
        assert!(m.contains("sandboxed and has no file access"), "`{line}`: {m}");
    }
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "the sandbox wrote a file");
    // The same `save` works in a normal session.
    let mut normal = Session::new();
    ok(&mut normal, "net = nn.Sequential(nn.Linear(4, 2))");
    ok(&mut normal, &format!("save(net, {:?})", target.display().to_string()));
    assert!(target.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sandboxed_session_has_small_limits() {
    let mut s = Session::sandboxed();
    let m = err(&mut s, "randn(300, 300)");
    assert!(m.contains("65,536"), "{m}");
    let m = err(&mut s, "resnet18()");
    assert!(m.contains("limit of 65,536"), "{m}");
    // 32 * 32 * 49 multiply-adds per output pixel, 45 * 45 pixels: 101 million, above 2^26.
    ok(&mut s, "c = nn.Conv2d(32, 32, 7, padding=3)");
    let m = err(&mut s, "c(randn(1, 32, 45, 45))");
    assert!(m.contains("multiply-adds") && m.contains("67,108,864"), "{m}");
    // Small work still runs, and a reduced ResNet fits.
    ok(&mut s, "y = c(randn(1, 32, 8, 8))");
    ok(&mut s, "net = resnet18(num_classes=3, base_planes=2)");
    ok(&mut s, "eval(net)");
    ok(&mut s, "net(randn(1, 3, 32, 32))");
    // The normal session's limits are the REPL's (1 GiB tensors, any forward).
    assert_eq!(Session::new().limits(), Limits::DEFAULT);
    ok(&mut Session::new(), "x = zeros(300, 300)");
}

#[test]
fn reset_keeps_the_sandbox() {
    let mut s = Session::sandboxed();
    ok(&mut s, ":reset");
    assert_eq!(s.limits(), Limits::SANDBOX);
    assert!(err(&mut s, "image('x.jpg')").contains("no file access"));
}
