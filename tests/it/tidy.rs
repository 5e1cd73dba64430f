//! Tidy checks on the source tree: the conventions ARCHITECTURE.md states.

use std::path::{Path, PathBuf};

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory)
        .expect("readable source tree")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .strip_prefix(&root)
                .expect("under src")
                .display()
                .to_string();
            (name, std::fs::read_to_string(&path).expect("readable"))
        })
        .collect()
}

#[test]
fn every_module_opens_with_a_doc_paragraph() {
    for (name, text) in sources() {
        assert!(
            text.starts_with("//!"),
            "src/{name} must open with a `//!` paragraph saying what it owns"
        );
    }
}

#[test]
fn only_the_store_and_the_database_tool_use_sqlite() {
    for (name, text) in sources() {
        if name.starts_with("store/") || name == "services/database.rs" {
            continue;
        }
        assert!(
            !text.contains("rusqlite"),
            "src/{name} uses rusqlite; SQL belongs in store (or the database tool)"
        );
    }
}

#[test]
fn only_config_reads_the_environment() {
    for (name, text) in sources() {
        if name.starts_with("config/") {
            continue;
        }
        assert!(
            !text.contains("std::env::var"),
            "src/{name} reads the environment; that is config's job"
        );
    }
}
