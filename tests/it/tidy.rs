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
        // The memory companion's own file is its own SQL, not the store's.
        if name.starts_with("store/")
            || name == "services/database.rs"
            || name == "services/memory_file.rs"
        {
            continue;
        }
        assert!(
            !text.contains("rusqlite"),
            "src/{name} uses rusqlite; SQL belongs in store (or the database tool, or the memory companion's own file)"
        );
    }
}

#[test]
fn only_the_store_speaks_postgresql() {
    for (name, text) in sources() {
        if name.starts_with("store/") {
            continue;
        }
        for client in ["tokio_postgres", "deadpool"] {
            assert!(
                !text.contains(client),
                "src/{name} uses {client}; PostgreSQL belongs in store::postgres"
            );
        }
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

/// The layers of the crate, lowest first: a module may use only modules on
/// lower layers (ARCHITECTURE.md, "Layering"). The companion services sit
/// beside the stack and may use only [`COMPANION_MAY_USE`].
const LAYERS: &[&[&str]] = &[
    &["wire", "metrics"],
    &["http"],
    &["config"],
    &["scenario", "store", "resilience"],
    &["clients"],
    &["heist"],
    &["health", "scheduler"],
    &["daemon"],
    &["api"],
    &["app"],
    &["cli"],
];
const COMPANION_MAY_USE: &[&str] = &["wire", "metrics", "http", "config", "scenario"];
/// Only these may start the companions (the in-process stack of `demo`).
const MAY_USE_COMPANIONS: &[&str] = &["cli"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to: `daemon/runs.rs` is in
/// `daemon`, `wire.rs` is `wire`; `lib.rs` and `main.rs` are in none.
fn module_of(name: &str) -> Option<&str> {
    let first = name.split('/').next()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(module, "lib" | "main")).then_some(module)
}

/// Every `crate::x` a file names outside comments, as `x`.
fn crate_modules_used(text: &str) -> Vec<String> {
    let mut used = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.push(name);
            }
        }
    }
    used
}

/// The edges that break the layering: (file, module it uses).
fn upward_edges() -> Vec<(String, String)> {
    let mut broken = Vec::new();
    for (name, text) in sources() {
        let Some(module) = module_of(&name) else {
            continue;
        };
        for used in crate_modules_used(&text) {
            if used == module {
                continue;
            }
            let allowed = match (module, used.as_str()) {
                (_, "services") => MAY_USE_COMPANIONS.contains(&module),
                ("services", other) => COMPANION_MAY_USE.contains(&other),
                (module, other) => match (layer_of(module), layer_of(other)) {
                    (Some(from), Some(to)) => to < from,
                    _ => false,
                },
            };
            if !allowed && !broken.contains(&(name.clone(), used.clone())) {
                broken.push((name.clone(), used));
            }
        }
    }
    broken
}

#[test]
fn dependencies_point_down_the_layers() {
    let broken = upward_edges();
    assert!(
        broken.is_empty(),
        "imports against the layering in ARCHITECTURE.md (file -> module): {broken:#?}"
    );
}

#[test]
fn the_layering_check_sees_an_upward_import() {
    let used = crate_modules_used("use crate::api::router; // crate::cli in a comment\n");
    assert_eq!(used, ["api"]);
    assert!(layer_of("api") > layer_of("store"));
    assert_eq!(module_of("daemon/runs.rs"), Some("daemon"));
    assert_eq!(module_of("wire.rs"), Some("wire"));
    assert_eq!(module_of("lib.rs"), None);
}

/// Functions longer than this need a comment saying why (`// Long because`).
const MAX_FUNCTION_LINES: usize = 80;

/// The lines of a file outside its `#[cfg(test)]` items: each such item (a
/// `mod tests { ... }`, a test-only function or `use`) is left out, and the
/// scan goes on after it, so code below a test module is still checked.
fn production_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        if lines[index].trim() != "#[cfg(test)]" {
            kept.push((index, lines[index]));
            index += 1;
            continue;
        }
        // The item the attribute covers: to its `;` on one line, or to the
        // closing brace at its own indentation.
        let mut item = index + 1;
        while item < lines.len() && lines[item].trim_start().starts_with("#[") {
            item += 1;
        }
        let Some(first) = lines.get(item) else { break };
        let trimmed = first.trim_start();
        let indent = &first[..first.len() - trimmed.len()];
        index = if first.trim_end().ends_with(';')
            || !first.contains('{') && trimmed.starts_with("use ")
        {
            let ends = lines[item..]
                .iter()
                .position(|line| line.trim_end().ends_with(';'))
                .unwrap_or(0);
            item + ends + 1
        } else if first.trim_end().ends_with('}') && first.contains('{') {
            item + 1
        } else {
            let closing = format!("{indent}}}");
            lines[item..]
                .iter()
                .position(|line| line.trim_end() == closing)
                .map_or(lines.len(), |end| item + end + 1)
        };
    }
    kept
}

/// Whether a line starts a function: any visibility (`pub`, `pub(crate)`,
/// `pub(super)`, `pub(in path)`) and any qualifiers (`const`, `async`,
/// `unsafe`, `extern "C"`) before `fn `.
fn starts_a_function(line: &str) -> bool {
    let mut rest = line.trim_start();
    if let Some(after) = rest.strip_prefix("pub") {
        rest = match after.strip_prefix('(') {
            Some(scope) => match scope.split_once(')') {
                Some((_, after_scope)) => after_scope,
                None => return false,
            },
            None => after,
        }
        .trim_start();
    }
    loop {
        let before = rest;
        for qualifier in ["const ", "async ", "unsafe ", "default "] {
            rest = rest.strip_prefix(qualifier).unwrap_or(rest).trim_start();
        }
        if let Some(after) = rest.strip_prefix("extern ") {
            rest = after.trim_start();
            if rest.starts_with('"') {
                rest = rest[1..]
                    .split_once('"')
                    .map_or("", |(_, after)| after)
                    .trim_start();
            }
        }
        if rest == before {
            break;
        }
    }
    rest.starts_with("fn ")
}

/// Whether a source file is test code as a whole (a sibling `tests.rs`, a
/// `*_tests.rs`, or a file under a `tests/` folder).
fn is_test_file(name: &str) -> bool {
    name.ends_with("tests.rs") || name.split('/').any(|part| part == "tests")
}

/// (file, function, lines) for every function over the limit outside tests.
fn long_functions() -> Vec<(String, String, usize)> {
    let mut long = Vec::new();
    for (name, text) in sources() {
        if is_test_file(&name) {
            continue;
        }
        long.extend(
            long_functions_in(&text)
                .into_iter()
                .map(|(function, length)| (name.clone(), function, length)),
        );
    }
    long
}

/// (function, lines) for every function over the limit in one file's
/// production lines that has no `// Long because` above it.
fn long_functions_in(text: &str) -> Vec<(String, usize)> {
    let all: Vec<&str> = text.lines().collect();
    let production = production_lines(text);
    let mut long = Vec::new();
    for (position, &(start, line)) in production.iter().enumerate() {
        if !starts_a_function(line) || line.trim_end().ends_with(';') {
            continue;
        }
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let closing = format!("{indent}}}");
        let Some(end) = production[position..]
            .iter()
            .find(|(_, candidate)| candidate.trim_end() == closing)
            .map(|(end, _)| *end)
        else {
            continue;
        };
        let length = end - start + 1;
        let explained = all[..start]
            .iter()
            .rev()
            .take_while(|above| {
                let above = above.trim_start();
                above.starts_with("//") || above.starts_with("#[")
            })
            .any(|above| above.contains("Long because"));
        if length > MAX_FUNCTION_LINES && !explained {
            let function: String = trimmed
                .split("fn ")
                .nth(1)
                .unwrap_or_default()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            long.push((function, length));
        }
    }
    long
}

#[test]
fn the_long_function_check_sees_every_signature_and_code_after_tests() {
    for signature in [
        "fn f() {",
        "pub fn f() {",
        "pub(crate) async fn f() {",
        "pub(super) fn f() {",
        "pub(in crate::store) const fn f() {",
        "pub const unsafe fn f() {",
        "async fn f() {",
        "    pub(crate) fn method(&self) {",
    ] {
        assert!(starts_a_function(signature), "{signature}");
    }
    for not_one in [
        "let fn_name = 1;",
        "// fn f() {",
        "pub struct Fn;",
        "pub(crate) use x::fn_y;",
    ] {
        assert!(!starts_a_function(not_one), "{not_one}");
    }
    let body = "    x();\n".repeat(MAX_FUNCTION_LINES);
    let text = format!(
        "#[cfg(test)]\nmod tests {{\n    fn short() {{}}\n}}\n\npub(super) async fn after_tests() {{\n{body}}}\n"
    );
    assert_eq!(
        long_functions_in(&text),
        [("after_tests".to_string(), MAX_FUNCTION_LINES + 2)]
    );
    let test_only = format!("#[cfg(test)]\nfn in_a_test() {{\n{body}}}\n");
    assert!(long_functions_in(&test_only).is_empty());
}

#[test]
fn no_function_is_over_80_lines_without_a_reason() {
    let long = long_functions();
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines (file, function, lines); split them or say \
         why in a `// Long because ...` comment above: {long:#?}"
    );
}

#[test]
fn main_rs_only_parses_logs_dispatches_and_owns_signals() {
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs"))
        .expect("readable");
    let lines = main.lines().count();
    assert!(
        lines < 100,
        "src/main.rs has {lines} lines; what it does beyond parse, logs, dispatch and signals belongs in cli or app"
    );
}

/// The store's shape (ARCHITECTURE.md, `store`): each backend in its own
/// folder behind one trait, no macro that writes an operation per backend,
/// and the config's `mod.rs` only the `Config` struct and its sections'
/// re-exports, each section in a file of its own.
#[test]
fn the_store_has_a_folder_per_backend_and_the_config_a_short_mod_rs() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for backend in ["store/sqlite/mod.rs", "store/postgres/mod.rs"] {
        assert!(source.join(backend).is_file(), "src/{backend} is missing");
    }
    for (name, text) in sources() {
        assert!(
            !text.contains("macro_rules! dispatch"),
            "src/{name} dispatches by macro; a store operation belongs on the Backend trait"
        );
    }
    let config = std::fs::read_to_string(source.join("config/mod.rs")).expect("config/mod.rs");
    let lines = config.lines().count();
    assert!(
        lines < 200,
        "src/config/mod.rs has {lines} lines; a section's struct, defaults and checks belong in its own file"
    );
}

/// Production files longer than this (test items left out) need a reason
/// in their opening `//!` paragraph (`Long because ...`): past it a file
/// usually holds two ideas.
const MAX_FILE_LINES: usize = 600;

#[test]
fn no_production_file_is_over_600_lines_without_a_reason() {
    let long: Vec<(String, usize)> = sources()
        .into_iter()
        .filter(|(name, _)| !is_test_file(name))
        .filter_map(|(name, text)| {
            let lines = production_lines(&text).len();
            let opening: String = text
                .lines()
                .take_while(|line| line.starts_with("//!"))
                .collect();
            (lines > MAX_FILE_LINES && !opening.contains("Long because")).then_some((name, lines))
        })
        .collect();
    assert!(
        long.is_empty(),
        "production files over {MAX_FILE_LINES} lines (tests left out); split them or say why in \
         the opening `//!` paragraph (`Long because ...`): {long:#?}"
    );
}
