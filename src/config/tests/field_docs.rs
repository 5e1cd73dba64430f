//! The `///` docs of the config structs' fields, read from the source of
//! `src/config`, for the generated reference (`reference.rs`): each `pub
//! struct` with its doc, its serde attributes that matter to a reader of
//! the file, and its `pub` fields (the `#[serde(skip)]` ones left out).

use std::collections::BTreeMap;
use std::path::Path;

/// A `pub struct` of `src/config`, with its `pub` fields.
pub(super) struct StructDoc {
    /// The struct's `///` doc.
    pub(super) doc: String,
    /// `#[serde(into = "X")]`: the struct is written as X.
    pub(super) written_as: Option<String>,
    /// `#[serde(default)]` on the struct: every field has a default.
    pub(super) defaults_all: bool,
    pub(super) fields: Vec<FieldDoc>,
}

pub(super) struct FieldDoc {
    pub(super) name: String,
    pub(super) type_name: String,
    pub(super) doc: String,
    /// `#[serde(default ...)]`: the key may be left out of an entry.
    pub(super) has_default: bool,
}

/// Every `pub struct` with named fields in the `.rs` files of `directory`.
pub(super) fn parse_config_structs(directory: &Path) -> BTreeMap<String, StructDoc> {
    let mut structs = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .expect("src/config")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "rs"))
        .collect();
    files.sort();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("read");
        parse_structs(&source, &mut structs);
    }
    structs
}

fn parse_structs(source: &str, structs: &mut BTreeMap<String, StructDoc>) {
    let mut doc: Vec<String> = Vec::new();
    let mut attributes = String::new();
    let mut current: Option<(String, StructDoc)> = None;
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(text) = trimmed.strip_prefix("///") {
            doc.push(text.strip_prefix(' ').unwrap_or(text).to_string());
        } else if trimmed.starts_with("#[") {
            attributes.push_str(trimmed);
            let mut depth = bracket_depth(trimmed);
            while depth > 0 {
                let more = lines.next().expect("an attribute's end").trim();
                attributes.push_str(more);
                depth += bracket_depth(more);
            }
        } else if let Some(rest) = line.strip_prefix("pub struct ") {
            if let Some(name) = rest.strip_suffix(" {") {
                let written_as = attributes
                    .split_once("into = \"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| name.to_string());
                let defaults_all =
                    attributes.contains("default)") || attributes.contains(", default,");
                current = Some((
                    name.to_string(),
                    StructDoc {
                        doc: first_paragraph(&doc),
                        written_as,
                        defaults_all,
                        fields: Vec::new(),
                    },
                ));
            }
            doc.clear();
            attributes.clear();
        } else if line == "}" {
            if let Some((name, parsed)) = current.take() {
                structs.insert(name, parsed);
            }
            doc.clear();
            attributes.clear();
        } else {
            if let (Some((_, parsed)), Some(rest)) = (&mut current, trimmed.strip_prefix("pub ")) {
                let skipped = ["(skip)", "(skip,", ", skip)", ", skip,"]
                    .iter()
                    .any(|skip| attributes.contains(skip));
                if let Some((name, type_name)) = rest.split_once(": ") {
                    if !skipped {
                        parsed.fields.push(FieldDoc {
                            name: name.to_string(),
                            type_name: type_name.trim_end_matches(',').to_string(),
                            doc: doc.join(" "),
                            has_default: attributes.contains("default"),
                        });
                    }
                }
            }
            doc.clear();
            attributes.clear();
        }
    }
}

/// Opened minus closed brackets, so an attribute over several lines is
/// read to its end.
fn bracket_depth(text: &str) -> i32 {
    text.chars()
        .map(|character| match character {
            '[' => 1,
            ']' => -1,
            _ => 0,
        })
        .sum()
}

/// The doc up to its first blank line: what a reader of the file needs;
/// what follows is for a reader of the code.
fn first_paragraph(doc: &[String]) -> String {
    doc.iter()
        .take_while(|line| !line.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}
