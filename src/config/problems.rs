//! Reporting every problem of a config file at once, with a "did you mean"
//! for misspelt keys. Deserialisation stops at its first error; this reads
//! the merged layers again with each key at fault taken out (an unknown
//! key) or put back to its default (a value of the wrong type), so one run
//! of `config check` lists every such key, not one per edit.
//!
//! It only finds and words problems; what is valid is decided by the types
//! and `validate` in `config`.

use super::ConfigError;

/// The most problems one load reports; past it, the rest follow the fixes.
const MAX_PROBLEMS: usize = 20;

/// Takes the key at fault out of `merged` (unknown) or sets it to its
/// value in `defaults` (wrong type), so the next read can go on past it.
/// `false` when the key cannot be found, and reading again would only
/// meet the same error.
pub(super) fn step_past(
    merged: &mut toml::Value,
    defaults: &toml::Value,
    error: &ConfigError,
) -> bool {
    match error {
        ConfigError::UnknownKey { key, .. } => remove(merged, key),
        ConfigError::InvalidValue { key, .. } => match find(defaults, key) {
            Some(default) => replace(merged, key, default.clone()),
            None => remove(merged, key),
        },
        _ => false,
    }
}

/// One error as it is, several as one list.
pub(super) fn combined(mut problems: Vec<ConfigError>) -> ConfigError {
    if problems.len() == 1 {
        return problems.remove(0);
    }
    ConfigError::Several {
        count: problems.len(),
        problems: problems
            .iter()
            .map(|problem| format!("\n  {problem}"))
            .collect(),
    }
}

/// Whether one more problem may be read.
pub(super) fn room_for_more(problems: &[ConfigError]) -> bool {
    problems.len() < MAX_PROBLEMS
}

/// The known field closest to a misspelt one, from serde's list of the
/// fields it expected ("expected one of `a`, `b`"), when one is close
/// enough to be what was meant.
pub(super) fn did_you_mean(field: &str, message: &str) -> Option<String> {
    let expected = message.split_once("expected one of ")?.1;
    expected
        .split(", ")
        .filter_map(|candidate| candidate.trim().strip_prefix('`')?.strip_suffix('`'))
        .map(|candidate| (edit_distance(field, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(2))
        .min()
        .map(|(_, candidate)| candidate.to_string())
}

/// The suffix of an unknown key's message: `; did you mean `x`?` or nothing.
pub(super) fn suggestion_text(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|key| format!("; did you mean `{key}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance, by characters.
fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (row, left_char) in left.chars().enumerate() {
        let mut current = vec![row + 1; right.len() + 1];
        for (column, right_char) in right.iter().enumerate() {
            let substitution = previous[column] + usize::from(left_char != *right_char);
            current[column + 1] = substitution
                .min(previous[column + 1] + 1)
                .min(current[column] + 1);
        }
        previous = current;
    }
    previous[right.len()]
}

/// A key's segments: `oauth.clients[1].scopes` is `oauth`, `clients`, 1,
/// `scopes`.
enum Segment<'a> {
    Name(&'a str),
    Index(usize),
}

fn segments(key: &str) -> Option<Vec<Segment<'_>>> {
    let mut parts = Vec::new();
    for part in key.split('.') {
        let (name, indices) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            parts.push(Segment::Name(name));
        }
        for index in indices.split('[').filter(|index| !index.is_empty()) {
            parts.push(Segment::Index(index.strip_suffix(']')?.parse().ok()?));
        }
    }
    (!parts.is_empty()).then_some(parts)
}

fn child<'a>(value: &'a toml::Value, segment: &Segment<'_>) -> Option<&'a toml::Value> {
    match segment {
        Segment::Name(name) => value.get(*name),
        Segment::Index(index) => value.get(*index),
    }
}

fn child_mut<'a>(value: &'a mut toml::Value, segment: &Segment<'_>) -> Option<&'a mut toml::Value> {
    match segment {
        Segment::Name(name) => value.get_mut(*name),
        Segment::Index(index) => value.get_mut(*index),
    }
}

fn find<'a>(value: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    segments(key)?
        .iter()
        .try_fold(value, |value, segment| child(value, segment))
}

fn parent_mut<'a, 'k>(
    value: &'a mut toml::Value,
    key: &'k str,
) -> Option<(&'a mut toml::Value, Segment<'k>)> {
    let mut parts = segments(key)?;
    let last = parts.pop()?;
    let parent = parts
        .iter()
        .try_fold(value, |value, segment| child_mut(value, segment))?;
    Some((parent, last))
}

fn remove(value: &mut toml::Value, key: &str) -> bool {
    match parent_mut(value, key) {
        Some((toml::Value::Table(table), Segment::Name(name))) => table.remove(name).is_some(),
        _ => false,
    }
}

fn replace(value: &mut toml::Value, key: &str, new: toml::Value) -> bool {
    match parent_mut(value, key) {
        Some((parent, last)) => match child_mut(parent, &last) {
            Some(slot) if *slot != new => {
                *slot = new;
                true
            }
            _ => false,
        },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_miss_gets_the_key_it_meant() {
        let message = "unknown field `base_ur`, expected one of `base_url`, `model`, `timeout_ms`";
        assert_eq!(
            did_you_mean("base_ur", message).as_deref(),
            Some("base_url")
        );
        assert_eq!(did_you_mean("flavour", message), None);
        assert_eq!(did_you_mean("x", "unknown field `x`"), None);
    }

    #[test]
    fn keys_are_found_removed_and_replaced_through_tables_and_arrays() {
        let mut value: toml::Value =
            toml::from_str("[llm]\nbase_ur = 1\n[[oauth.clients]]\nclient_id = \"a\"\nbogus = 2\n")
                .expect("toml");
        assert!(remove(&mut value, "llm.base_ur"));
        assert!(!remove(&mut value, "llm.base_ur"));
        assert!(remove(&mut value, "oauth.clients[0].bogus"));
        assert!(replace(
            &mut value,
            "oauth.clients[0].client_id",
            "b".into()
        ));
        assert_eq!(
            find(&value, "oauth.clients[0].client_id").and_then(toml::Value::as_str),
            Some("b")
        );
    }
}
