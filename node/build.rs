//! Embeds the module versions of `schemas/modules` in the binary: writes
//! `$OUT_DIR/embedded_modules.rs` with every file's path (relative to the
//! modules root, with `/`) and its bytes, sorted by path. Hidden files (a
//! name starting with `.`) are left out, as `modules::read_dir` leaves them.
//!
//! Every path the script prints or writes is relative to the package
//! (`../schemas/modules/…`, resolved against `CARGO_MANIFEST_DIR` when the
//! crate compiles), never absolute: two checkouts that share one target
//! directory share this script's output, and each must embed its own files.

use std::path::{Path, PathBuf};

/// The modules root, relative to this package.
const ROOT: &str = "../schemas/modules";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join(ROOT);
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files.sort();
    let mut out = String::from("pub const EMBEDDED: &[(&str, &[u8])] = &[\n");
    for rel in &files {
        println!("cargo:rerun-if-changed={ROOT}/{rel}");
        out.push_str(&format!(
            "    ({rel:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?}))),\n",
            format!("/{ROOT}/{rel}")
        ));
    }
    out.push_str("];\n");
    let target = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded_modules.rs");
    std::fs::write(&target, out).unwrap_or_else(|e| panic!("writing {}: {e}", target.display()));
}

/// Every file under `dir`, as its path relative to `root` with `/`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let rel = relative(root, dir);
    println!("cargo:rerun-if-changed={ROOT}{}", if rel.is_empty() { String::new() } else { format!("/{rel}") });
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            out.push(relative(root, &path));
        }
    }
}

/// `path` relative to `root`, joined by `/`.
fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).expect("under the root");
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    parts.join("/")
}
