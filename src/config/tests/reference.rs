//! `docs/configuration.md`, generated from the code so it cannot drift:
//! every key's meaning is the `///` doc of its field in `src/config/*.rs`,
//! every default is the built-in one (what `heistd config defaults`
//! prints). The test fails with a diff when the file differs; run it with
//! `HEISTD_BLESS=1` to write the file again.
//!
//! The sections are found by walking the `Config` struct's fields: a field
//! whose type is another config struct is a table (`[llm.policy]`), a
//! `Vec` of one an array of tables (`[[schedule]]`), a map of one a table
//! per name (`[companions.faults.<name>]`), and a struct whose fields are
//! all one struct (`ServicesConfig`) a table per name
//! (`[services.<name>]`). A struct used in several places is one section
//! with a default column per place.

use std::collections::BTreeMap;

use super::field_docs::{parse_config_structs, FieldDoc, StructDoc};
use super::*;

/// Where the reference is written, from the repository root.
const REFERENCE_PATH: &str = "docs/configuration.md";

/// The text before the generated tables: how the layers combine.
const LAYERS: &str = r#"# Configuration reference

<!-- Generated from the field docs in src/config/*.rs by the test
config::tests::reference (`cargo test --lib config::tests::reference`);
edit those docs, not this file, then run the test with HEISTD_BLESS=1. -->

heistd reads one TOML file and `HEISTD_<SECTION>__<KEY>` environment
variables. Every key has a built-in default; a config file sets only what
differs.

## Layers

Layers, lowest first: built-in defaults, the file (`--config`, else
`/etc/heistd/heistd.toml` when it exists), then environment variables
`HEISTD_<SECTION>__<KEY>` (`HEISTD_LLM__BASE_URL` overrides `[llm]
base_url`; `HEISTD_SERVICES__MEMORY__TIMEOUT_MS` overrides
`[services.memory] timeout_ms`). An environment value takes the type of the
key it overrides. Tables merge key by key; a list of tables in the file
(`[[oauth.clients]]`, `[[schedule]]`) replaces the default list whole.

Unknown keys, wrong types and invalid values are refused at load with the
key's full path and the file or variable it came from; one load reports
every such problem at once (one per section for invalid values, and every
bad `[[schedule]]` entry), and a misspelt key gets a "did you mean" with
the key it resembles. `heist.turns` and a schedule's `turns` are 1 to 1000,
as on the command line and in `POST /api/v1/runs`.

`heistd config defaults` prints every key with its built-in default
(secrets redacted); its output loads back as the same config, and tables
such as `[[schedule]]` can be appended to it. `heistd config check` prints
the resolved config the same way. `config/heistd.toml` is the documented
install config; every key there shows its default except `store.path`.

Secrets never need to be in the file: each `*_env` key names the variable
holding one, each `*_file` key a file holding one (a relative path is a
systemd credential in `$CREDENTIALS_DIRECTORY`, or outside systemd the
`credentials` folder beside the config file), and the file wins over the
variable.

In the tables below a default is shown as TOML; "unset" means the key is
absent (and what that means is in its meaning), "required" that an entry
must give it.
"#;

/// A full `[[schedule]]` example; the test loads it, so it stays valid.
const SCHEDULE_EXAMPLE: &str = r#"# Every night at 02:00 London time.
[[schedule]]
# Unique among the schedules; with a slot's time it identifies a run, so a
# slot runs once even across restarts and several daemons.
name = "nightly"
# minute hour day-of-month month day-of-week; a sixth field in front is the
# second. Exclusive with `every`.
cron = "0 2 * * *"
# The wall clock `cron` follows (IANA name); default "UTC".
timezone = "Europe/London"
# Turns of each heist, 1 to 1000; default 12.
turns = 12
# A scenario directory for these heists; default: heist.scenario.
scenario = "/etc/heistd/scenarios/bank"
# The previous run still going at a slot: "skip" the slot (default),
# "queue" it until that run ends (one slot waits at most), or "allow" both.
overlap = "queue"
# Start each run up to 30 s late, at random; default 0.
jitter_ms = 30000
# After downtime: "skip" the missed slots (default) or "run_once": one run
# at start for the latest of them.
missed = "run_once"
# false: listed (and shown by the status API) but starts nothing.
enabled = true
# Tokens this schedule's runs may use per UTC day; its slots are skipped
# once they did, until the next UTC day. Default 0: no limit.
max_tokens_per_day = 2000000

# Every 90 minutes, on multiples of the period since the Unix epoch (so
# the slots are the same after a restart).
[[schedule]]
name = "patrol"
# Units d, h, m, s, ms, largest first, each once. Exclusive with `cron`.
every = "1h30m"
turns = 4
"#;

#[test]
fn the_configuration_reference_is_generated_from_the_field_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let structs = parse_config_structs(&root.join("src/config"));
    let (sections, undocumented) = walk_sections(&structs);
    assert!(
        undocumented.is_empty(),
        "every config key needs a `///` doc saying what it means: {undocumented:?}"
    );
    let generated = render(&sections);
    let path = root.join(REFERENCE_PATH);
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    if written == generated {
        return;
    }
    if std::env::var("HEISTD_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("docs/")).expect("docs/");
        std::fs::write(&path, &generated).expect("write the reference");
        return;
    }
    panic!(
        "{REFERENCE_PATH} is not what the field docs make; run this test with HEISTD_BLESS=1 to write it.\n{}",
        line_diff(&written, &generated)
    );
}

#[test]
fn the_schedule_example_loads_and_shows_every_key() {
    let file = write(SCHEDULE_EXAMPLE);
    let config = load(Some(file.path()), Vec::new()).expect("the example is valid");
    assert_eq!(config.schedule.len(), 2);
    assert_eq!(
        config.schedule[0].trigger().describe(),
        "cron \"0 2 * * *\" Europe/London"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let structs = parse_config_structs(&root.join("src/config"));
    let example: toml::Table = toml::from_str(SCHEDULE_EXAMPLE).expect("toml");
    let first = &example["schedule"][0];
    // `every` is shown by the second entry: it excludes `cron`.
    for field in &structs["ScheduleFields"].fields {
        assert!(
            first.get(&field.name).is_some() || field.name == "every",
            "the example leaves out `{}`",
            field.name
        );
    }
}

/// How a field's type makes it appear in the file.
enum Shape {
    Value,
    Table(String),
    ArrayOfTables(String),
    TablePerName(String),
}

/// One place a struct appears: its key path (`services.<name>.policy`)
/// and the default value at each concrete place (`services.oauth.policy`,
/// ...), labelled by the name that varies.
#[derive(Clone)]
struct Place {
    path: String,
    defaults: Vec<(String, Option<toml::Value>)>,
    /// An entry of an array of tables or of a map: its keys may be
    /// required, and the defaults are those of a fresh entry.
    entry: bool,
}

fn shape_of(type_name: &str, structs: &BTreeMap<String, StructDoc>) -> Shape {
    let known = |name: &str| {
        structs
            .get(name)
            .map(|found| found.written_as.clone().unwrap_or_else(|| name.to_string()))
    };
    let inner = |prefix: &str| {
        type_name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix('>'))
    };
    let plain = inner("Option<").unwrap_or(type_name);
    if let Some(found) = inner("Vec<").and_then(known) {
        return Shape::ArrayOfTables(found);
    }
    if let Some(found) = inner("BTreeMap<String, ").and_then(known) {
        return Shape::TablePerName(found);
    }
    match known(plain) {
        Some(found) => Shape::Table(found),
        None => Shape::Value,
    }
}

/// A fresh entry of an array of tables or map as its defaults: the keys an
/// entry must give set to something, the rest left to their defaults.
fn fresh_entry(struct_name: &str) -> toml::Value {
    let entry = |text: &str| toml::from_str::<toml::Value>(text).expect("a fresh entry");
    match struct_name {
        "ScheduleFields" => toml::Value::try_from(
            entry("name = \"fresh\"\nevery = \"1h\"")
                .try_into::<ScheduleFields>()
                .expect("a schedule"),
        ),
        "OAuthClient" => toml::Value::try_from(
            entry("client_id = \"fresh\"\nscopes = []")
                .try_into::<OAuthClient>()
                .expect("a client"),
        ),
        "Fault" => toml::Value::try_from(entry("").try_into::<Fault>().expect("a fault")),
        "ModelEndpointConfig" => toml::Value::try_from(
            entry("base_url = \"http://127.0.0.1:8080/v1\"\nmodel = \"fresh\"")
                .try_into::<ModelEndpointConfig>()
                .expect("an endpoint"),
        ),
        "NotifyConfig" => toml::Value::try_from(
            entry("url = \"http://127.0.0.1:9000/hook\"")
                .try_into::<NotifyConfig>()
                .expect("a receiver"),
        ),
        other => panic!("no fresh entry for `{other}`: add one to fresh_entry"),
    }
    .expect("serialises")
}

/// The sections in the order first met, each with every place it appears;
/// and the keys without a doc.
fn walk_sections(
    structs: &BTreeMap<String, StructDoc>,
) -> (Vec<(String, Vec<Place>)>, Vec<String>) {
    let root = Place {
        path: String::new(),
        defaults: vec![(
            String::new(),
            Some(toml::Value::try_from(Config::builtin()).expect("defaults")),
        )],
        entry: false,
    };
    let mut sections: Vec<(String, Vec<Place>)> = Vec::new();
    let mut undocumented = Vec::new();
    walk(structs, "Config", root, &mut sections, &mut undocumented);
    sections.retain(|(name, _)| name != "Config");
    (sections, undocumented)
}

fn walk(
    structs: &BTreeMap<String, StructDoc>,
    struct_name: &str,
    place: Place,
    sections: &mut Vec<(String, Vec<Place>)>,
    undocumented: &mut Vec<String>,
) {
    let parsed = &structs[struct_name];
    match sections.iter_mut().find(|(name, _)| name == struct_name) {
        Some((_, places)) => places.push(place.clone()),
        None => {
            if parsed.doc.is_empty() {
                undocumented.push(format!("struct {struct_name}"));
            }
            sections.push((struct_name.to_string(), vec![place.clone()]));
        }
    }
    for field in &parsed.fields {
        if field.doc.is_empty() {
            undocumented.push(join(&place.path, &field.name));
        }
    }
    if let Some((table, named)) = one_table_per_name(parsed, &place, structs) {
        walk(structs, &table, named, sections, undocumented);
        return;
    }
    for field in &parsed.fields {
        if let Some((name, inner)) = inner_place(field, &place, structs) {
            walk(structs, &name, inner, sections, undocumented);
        }
    }
}

/// `path.field`, or `field` at the top.
fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn value_of(value: &Option<toml::Value>, field: &str) -> Option<toml::Value> {
    value.as_ref().and_then(|value| value.get(field)).cloned()
}

/// A struct whose fields are all tables of one struct (`ServicesConfig`):
/// that struct and its place as `<name>`, with a default per name.
fn one_table_per_name(
    parsed: &StructDoc,
    place: &Place,
    structs: &BTreeMap<String, StructDoc>,
) -> Option<(String, Place)> {
    let tables: Vec<String> = parsed
        .fields
        .iter()
        .filter_map(|field| match shape_of(&field.type_name, structs) {
            Shape::Table(name) => Some(name),
            _ => None,
        })
        .collect();
    let one = tables.len() == parsed.fields.len()
        && tables.len() > 1
        && tables.iter().all(|name| *name == tables[0]);
    if !one {
        return None;
    }
    let defaults = parsed
        .fields
        .iter()
        .flat_map(|field| {
            place
                .defaults
                .iter()
                .map(|(_, value)| (field.name.clone(), value_of(value, &field.name)))
        })
        .collect();
    let named = Place {
        path: join(&place.path, "<name>"),
        defaults,
        entry: place.entry,
    };
    Some((tables[0].clone(), named))
}

/// The struct a field holds and the place it is at; none for a value.
fn inner_place(
    field: &FieldDoc,
    place: &Place,
    structs: &BTreeMap<String, StructDoc>,
) -> Option<(String, Place)> {
    let path = join(&place.path, &field.name);
    let inner = match shape_of(&field.type_name, structs) {
        Shape::Value => return None,
        Shape::Table(name) => {
            let defaults = place
                .defaults
                .iter()
                .map(|(label, value)| (label.clone(), value_of(value, &field.name)))
                .collect();
            let inner = Place {
                path,
                defaults,
                entry: place.entry,
            };
            (name, inner)
        }
        Shape::ArrayOfTables(name) => {
            let inner = Place {
                path: format!("{path}[n]"),
                defaults: vec![(String::new(), Some(fresh_entry(&name)))],
                entry: true,
            };
            (name, inner)
        }
        Shape::TablePerName(name) => {
            let inner = Place {
                path: format!("{path}.<name>"),
                defaults: vec![(String::new(), Some(fresh_entry(&name)))],
                entry: true,
            };
            (name, inner)
        }
    };
    Some(inner)
}

fn render(sections: &[(String, Vec<Place>)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let structs = parse_config_structs(&root.join("src/config"));
    let mut text = String::from(LAYERS);
    for (struct_name, places) in sections {
        let parsed = &structs[struct_name];
        let headings: Vec<String> = places.iter().map(|place| table_name(&place.path)).collect();
        text.push_str(&format!("\n## {}\n\n", headings.join(", ")));
        text.push_str(&format!("{}\n\n", meaning(&parsed.doc, true)));
        if places.len() == 1 {
            text.push_str("| key | default | meaning |\n|---|---|---|\n");
        } else {
            let columns: Vec<String> = headings
                .iter()
                .map(|heading| format!("default in {heading}"))
                .collect();
            text.push_str(&format!(
                "| key | {} | meaning |\n|---|{}---|\n",
                columns.join(" | "),
                "---|".repeat(columns.len())
            ));
        }
        for field in &parsed.fields {
            let key = match places.as_slice() {
                [place] if place.path.is_empty() => field.name.clone(),
                [place] => format!("{}.{}", place.path, field.name),
                _ => field.name.clone(),
            };
            let defaults: Vec<String> = places
                .iter()
                .map(|place| default_cell(field, parsed, place, &structs))
                .collect();
            text.push_str(&format!(
                "| `{key}` | {} | {} |\n",
                defaults.join(" | "),
                meaning(&field.doc, false)
            ));
        }
    }
    text.push_str(
        "\n## A full `[[schedule]]` example\n\n\
         Every key of an entry, each with what it does (the test that \
         generates this file loads the example, so it stays valid):\n\n```toml\n",
    );
    text.push_str(SCHEDULE_EXAMPLE);
    text.push_str("```\n");
    text
}

/// `services.<name>.policy` as `[services.<name>.policy]`, an array's
/// entry `schedule[n]` as `[[schedule]]`.
fn table_name(path: &str) -> String {
    match path.strip_suffix("[n]") {
        Some(array) => format!("`[[{array}]]`"),
        None => format!("`[{path}]`"),
    }
}

/// A doc as table text: rustdoc links as code, pipes escaped; a section's
/// doc without the table names its heading already gives.
fn meaning(doc: &str, section: bool) -> String {
    let mut text = doc
        .replace("[`", "`")
        .replace("`]", "`")
        .replace('|', "\\|");
    if section {
        if let Some((names, rest)) = text.split_once("`: ") {
            if names.starts_with("`[") {
                let mut characters = rest.chars();
                text = match characters.next() {
                    Some(first) => first.to_uppercase().chain(characters).collect(),
                    None => String::new(),
                };
            }
        }
    }
    text
}

fn default_cell(
    field: &FieldDoc,
    parsed: &StructDoc,
    place: &Place,
    structs: &BTreeMap<String, StructDoc>,
) -> String {
    let cells: Vec<(String, String)> = place
        .defaults
        .iter()
        .map(|(label, value)| {
            let value = value.as_ref().and_then(|value| value.get(&field.name));
            let cell = match (shape_of(&field.type_name, structs), value) {
                (Shape::Table(_), _) => "the table below".to_string(),
                (Shape::ArrayOfTables(_), Some(toml::Value::Array(entries)))
                    if !entries.is_empty() =>
                {
                    format!("{} built in", entries.len())
                }
                (Shape::ArrayOfTables(_) | Shape::TablePerName(_), _) => "none".to_string(),
                _ if place.entry && !field.has_default && !parsed.defaults_all => {
                    "required".to_string()
                }
                _ if place.entry && field.type_name.starts_with("Option<") => "unset".to_string(),
                (Shape::Value, Some(value)) => format!("`{value}`"),
                (Shape::Value, None) => "unset".to_string(),
            };
            (label.clone(), cell)
        })
        .collect();
    if cells.iter().all(|(_, cell)| *cell == cells[0].1) {
        return cells[0].1.clone();
    }
    cells
        .iter()
        .map(|(label, cell)| format!("{label}: {cell}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The lines that differ, between the common start and the common end.
fn line_diff(old: &str, new: &str) -> String {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    let start = old
        .iter()
        .zip(&new)
        .take_while(|(old, new)| old == new)
        .count();
    let end = old[start..]
        .iter()
        .rev()
        .zip(new[start..].iter().rev())
        .take_while(|(old, new)| old == new)
        .count();
    let mut diff = format!("@@ line {} @@\n", start + 1);
    for line in old[start..old.len() - end].iter().take(40) {
        diff.push_str(&format!("-{line}\n"));
    }
    for line in new[start..new.len() - end].iter().take(40) {
        diff.push_str(&format!("+{line}\n"));
    }
    diff
}
