//! `cargo xtask book`: builds the mdBook in `book/` with mdBook used as a library (from
//! crates.io; nothing is downloaded at run time).

use std::path::{Path, PathBuf};

pub const USAGE: &str = "usage: cargo xtask book [--out DIR]

Builds the user and contributor book in book/ (mdBook as a library, nothing downloaded).

options:
  --out DIR   write the HTML into DIR instead of book/book";

pub fn run(args: &[String]) -> Result<(), String> {
    let out = match args {
        [] => None,
        [flag, dir] if flag == "--out" => Some(PathBuf::from(dir)),
        _ => return Err(USAGE.into()),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").join("book");
    let dest = build(&root, out)?;
    println!("book written to {}", dest.display());
    Ok(())
}

/// Builds the book at `root` into `out` (default: `root/book`) and returns the output folder.
pub fn build(root: &Path, out: Option<PathBuf>) -> Result<PathBuf, String> {
    let mut book = mdbook::MDBook::load(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if let Some(out) = out {
        book.config.build.build_dir = out;
    }
    let dest = root.join(&book.config.build.build_dir);
    book.build().map_err(|e| format!("building the book failed: {e:#}"))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_book_builds_and_has_every_chapter() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("book");
        let out = std::env::temp_dir().join(format!("book-test-{}", std::process::id()));
        let dest = super::build(&root, Some(out.clone())).unwrap();
        for page in [
            "getting-started",
            "tutorial",
            "repl",
            "library",
            "formats",
            "architecture",
            "benchmarks",
            "troubleshooting",
        ] {
            assert!(dest.join(format!("{page}.html")).is_file(), "{page}.html missing");
        }
        std::fs::remove_dir_all(out).unwrap();
    }
}
