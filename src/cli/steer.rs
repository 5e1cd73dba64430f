//! The steering commands: `heistd sessions cancel ID [--reason ..]` and
//! `heistd schedules list | pause NAME [--note ..] | resume NAME |
//! trigger NAME | backfill NAME --from T --to T`. Each is one request to
//! the running daemon's admin API through `remote` (the config's admin
//! address and admin token; the daemon's refusals exit 1 for 4xx, 2 when
//! it cannot be reached), printed for a person.
//!
//! It decides nothing: what a request does is the daemon's.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use super::args::{ScheduleOutput, SchedulesAction, SchedulesArgs};
use super::remote::Remote;
use super::CliError;

#[derive(Debug, Deserialize)]
struct CancelAnswer {
    session_id: String,
    status: String,
}

#[derive(Debug, Deserialize)]
struct ScheduleList {
    schedules: Vec<ScheduleView>,
}

#[derive(Debug, Deserialize)]
struct ScheduleView {
    name: String,
    trigger: String,
    enabled: bool,
    next_slot: Option<String>,
    last_slot: Option<String>,
    paused: bool,
    note: Option<String>,
    paused_by: Option<String>,
    paused_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PauseAnswer {
    schedule: String,
    was_paused: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct TriggerAnswer {
    schedule: String,
    session_id: String,
}

#[derive(Debug, Deserialize)]
struct BackfillAnswer {
    schedule: String,
    slots: Vec<String>,
    already_ran: usize,
}

/// `heistd sessions cancel`.
pub async fn cancel(
    config: Option<&Path>,
    admin_address: Option<&str>,
    session_id: &str,
    reason: Option<String>,
) -> Result<String, CliError> {
    let remote = Remote::from_config(config, admin_address)?;
    let path = format!("/api/v1/sessions/{}/cancel", path_segment(session_id));
    let answer: CancelAnswer = remote.post(&path, &json!({ "reason": reason })).await?;
    Ok(match answer.status.as_str() {
        "cancelled" => format!(
            "session {}: cancelled before it started\n",
            answer.session_id
        ),
        _ => format!(
            "session {}: cancelling; it stops after its current turn\n",
            answer.session_id
        ),
    })
}

/// `heistd schedules ...`.
pub async fn schedules(args: SchedulesArgs) -> Result<String, CliError> {
    let remote = Remote::from_config(args.config.as_deref(), args.admin_address.as_deref())?;
    let at =
        |name: &str, action: &str| format!("/api/v1/schedules/{}/{action}", path_segment(name));
    Ok(match args.action {
        SchedulesAction::List {
            output: ScheduleOutput::Json,
        } => {
            let list: serde_json::Value = remote.get("/api/v1/schedules").await?;
            format!("{list:#}\n")
        }
        SchedulesAction::List {
            output: ScheduleOutput::Text,
        } => {
            let list: ScheduleList = remote.get("/api/v1/schedules").await?;
            schedule_table(&list.schedules)
        }
        SchedulesAction::Pause { name, note } => {
            let answer: PauseAnswer = remote
                .post(&at(&name, "pause"), &json!({ "note": note }))
                .await?;
            format!(
                "schedule {}: paused on every node until resumed\n",
                answer.schedule
            )
        }
        SchedulesAction::Resume { name } => {
            let answer: PauseAnswer = remote.post(&at(&name, "resume"), &json!({})).await?;
            match answer.was_paused {
                Some(false) => format!("schedule {}: was not paused\n", answer.schedule),
                _ => format!(
                    "schedule {}: resumed; its next slot runs\n",
                    answer.schedule
                ),
            }
        }
        SchedulesAction::Trigger { name } => {
            let answer: TriggerAnswer = remote.post(&at(&name, "trigger"), &json!({})).await?;
            format!(
                "schedule {}: triggered, session {}\n",
                answer.schedule, answer.session_id
            )
        }
        SchedulesAction::Backfill { name, from, to } => {
            let body = json!({ "from": from, "to": to });
            let answer: BackfillAnswer = remote.post(&at(&name, "backfill"), &body).await?;
            backfill_summary(&answer)
        }
    })
}

fn schedule_table(schedules: &[ScheduleView]) -> String {
    if schedules.is_empty() {
        return "no schedules configured\n".to_string();
    }
    let mut text = format!(
        "{:<20} {:<30} {:<26} {:<26} {}\n",
        "NAME", "TRIGGER", "NEXT SLOT", "LAST SLOT", "STATE"
    );
    for schedule in schedules {
        let state = if schedule.paused {
            format!(
                "paused by {} at {}{}",
                schedule.paused_by.as_deref().unwrap_or("?"),
                schedule.paused_at.as_deref().unwrap_or("?"),
                match schedule.note.as_deref() {
                    Some(note) if !note.is_empty() => format!(": {note}"),
                    _ => String::new(),
                }
            )
        } else if schedule.enabled {
            "active".to_string()
        } else {
            "disabled".to_string()
        };
        let _ = writeln!(
            text,
            "{:<20} {:<30} {:<26} {:<26} {state}",
            schedule.name,
            schedule.trigger,
            schedule.next_slot.as_deref().unwrap_or("-"),
            schedule.last_slot.as_deref().unwrap_or("-"),
        );
    }
    text
}

fn backfill_summary(answer: &BackfillAnswer) -> String {
    match (answer.slots.first(), answer.slots.last()) {
        (Some(first), Some(last)) => format!(
            "schedule {}: running {} missed slots, {first} to {last} ({} in the range already ran)\n",
            answer.schedule,
            answer.slots.len(),
            answer.already_ran
        ),
        _ => format!(
            "schedule {}: nothing to run; the {} slots in the range already ran\n",
            answer.schedule, answer.already_ran
        ),
    }
}

/// A name or id as one URL path segment: unreserved characters as they
/// are, every other byte percent-encoded (RFC 3986).
fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_one_path_segment() {
        assert_eq!(path_segment("heist_20261207_1"), "heist_20261207_1");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("../x"), "..%2Fx");
    }
}
