//! The compressed memory of one agent in one session: recent turns
//! verbatim, older ones cut to their first sentence, within a token budget.

use super::held::MemoryEntry;

/// Builds the compressed memory of `entries` (oldest first): the last
/// `recent_count` verbatim, older ones as first sentences, newest kept first
/// when the budget (about four characters a token) runs out.
pub fn compress(
    entries: &[MemoryEntry],
    max_tokens: usize,
    recent_count: usize,
) -> (String, usize) {
    let budget_chars = max_tokens.saturating_mul(4);
    let split = entries.len().saturating_sub(recent_count);
    let mut recent_lines: Vec<String> = Vec::new();
    let mut used = 0;
    for entry in entries[split..].iter().rev() {
        let line = format!("Turn {}: {}", entry.turn_id, entry.message.trim());
        if used + line.len() > budget_chars {
            break;
        }
        used += line.len();
        recent_lines.push(line);
    }
    recent_lines.reverse();
    let mut older_lines: Vec<String> = Vec::new();
    let mut compressed_count = 0;
    for entry in entries[..split].iter().rev() {
        let line = format!(
            "Turn {}: {}",
            entry.turn_id,
            first_sentence(&entry.message, 120)
        );
        if used + line.len() > budget_chars {
            break;
        }
        used += line.len();
        older_lines.push(line);
        compressed_count += 1;
    }
    older_lines.reverse();
    let mut summary = String::new();
    if !older_lines.is_empty() {
        summary.push_str("Earlier (compressed):\n");
        summary.push_str(&older_lines.join("\n"));
        summary.push('\n');
    }
    if !recent_lines.is_empty() {
        summary.push_str("Recent:\n");
        summary.push_str(&recent_lines.join("\n"));
    }
    (summary.trim_end().to_string(), compressed_count)
}

fn first_sentence(message: &str, max_chars: usize) -> String {
    let trimmed = message.trim();
    let end = trimmed
        .find(['.', '!', '?'])
        .map_or(trimmed.len(), |index| index + 1);
    let sentence = &trimmed[..end];
    if sentence.chars().count() <= max_chars {
        sentence.to_string()
    } else {
        format!(
            "{}...",
            sentence.chars().take(max_chars).collect::<String>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: i64) -> Vec<MemoryEntry> {
        (1..=count)
            .map(|turn_id| MemoryEntry {
                agent_id: "mole".into(),
                turn_id,
                message: format!("Point {turn_id} about the vault. And a long tail that compression drops entirely."),
                client_id: "heistd".into(),
                by_admin: true,
                content_hash: String::new(),
            })
            .collect()
    }

    #[test]
    fn recent_verbatim_older_compressed() {
        let (summary, compressed) = compress(&entries(5), 1000, 2);
        assert_eq!(compressed, 3);
        assert!(summary.contains("Turn 5: Point 5 about the vault. And a long tail"));
        assert!(summary.contains("Turn 1: Point 1 about the vault.\n"));
        assert!(!summary.contains("Turn 1: Point 1 about the vault. And"));
    }

    #[test]
    fn budget_is_respected() {
        for max_tokens in [0, 10, 30, 80] {
            let (summary, _) = compress(&entries(20), max_tokens, 3);
            let body_chars: usize = summary
                .lines()
                .filter(|line| line.starts_with("Turn"))
                .map(str::len)
                .sum();
            assert!(body_chars <= max_tokens * 4, "{max_tokens}: {summary}");
        }
    }
}
