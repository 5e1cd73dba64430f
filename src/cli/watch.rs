//! `heistd sessions watch ID` and `heistd runs start [--follow]`: a
//! session followed on a running daemon through its event stream
//! (`GET /api/v1/sessions/{id}/events`), printed as the demo prints a run,
//! and the exit code the run's ending gives (0 completed, 3 otherwise). A
//! dropped connection, or a stream the daemon closed (it lasted its
//! longest, the daemon restarts), is resumed with `Last-Event-ID`, so no
//! turn is printed twice or missed; a few attempts in a row that bring
//! nothing new end the watch with an error.
//!
//! It reads the daemon's API and prints; it starts nothing but the run
//! `runs start` asks for.

use std::time::Duration;

use serde::Deserialize;

use super::remote::Remote;
use super::{args, print_notice, print_turn_of, CliError, TurnHeading};
use crate::heist::RunNotice;
use crate::store::ToolCallRecord;
use crate::wire::events::{self as wire, Decoder, Frame};

/// Connection attempts in a row that bring no new event before the watch
/// gives up.
const MAX_RECONNECTS: u32 = 5;
/// The wait before a reconnection (doubled each time, from this).
const RECONNECT_WAIT: Duration = Duration::from_millis(250);

/// `heistd sessions watch ID`.
pub async fn watch(remote: &Remote, session_id: &str) -> Result<(), CliError> {
    let path = format!("/api/v1/sessions/{session_id}/events");
    let mut last_id: Option<String> = None;
    let mut fruitless = 0;
    loop {
        let before = last_id.clone();
        let broken = match follow_once(remote, &path, &mut last_id).await {
            Ok(Some(ended)) => return ended.exit(session_id),
            // The daemon refused (unknown session, token): no use retrying.
            Err(error @ CliError::Usage(_)) => return Err(error),
            Ok(None) => None,
            Err(error) => Some(error),
        };
        fruitless = if last_id == before { fruitless + 1 } else { 0 };
        if fruitless >= MAX_RECONNECTS {
            let why = broken.map_or(
                "the stream kept closing with no new event".into(),
                |error| error.to_string(),
            );
            return Err(CliError::Remote(format!(
                "lost session {session_id}'s event stream after {MAX_RECONNECTS} attempts: {why}"
            )));
        }
        let wait = RECONNECT_WAIT * 2u32.pow(fruitless.min(4));
        super::output::write_stderr(format_args!(
            "heistd: reconnecting to {session_id}'s events{}\n",
            last_id
                .as_deref()
                .map_or(String::new(), |id| format!(" after turn {id}"))
        ));
        tokio::time::sleep(wait).await;
    }
}

/// `heistd runs start`: asks the daemon for a run; with `--follow`, watches
/// it. Returns what to print when not following.
pub async fn runs(action: args::RunsAction) -> Result<String, CliError> {
    let args::RunsAction::Start {
        turns,
        seed,
        follow,
        daemon,
    } = action;
    let remote = Remote::from_config(daemon.config.as_deref(), daemon.admin_address.as_deref())?;
    #[derive(Deserialize)]
    struct Accepted {
        session_id: String,
    }
    let body = serde_json::json!({ "turns": turns, "seed": seed });
    let accepted: Accepted = remote.post("/api/v1/runs", &body).await?;
    if !follow {
        return Ok(format!("{}\n", accepted.session_id));
    }
    out!("session {} started\n", accepted.session_id);
    watch(&remote, &accepted.session_id).await?;
    Ok(String::new())
}

/// How a session ended, as its `ended` event says.
#[derive(Debug, Deserialize)]
struct Ended {
    status: String,
    reason: Option<String>,
    turns: Option<i64>,
}

impl Ended {
    fn exit(self, session_id: &str) -> Result<(), CliError> {
        let turns = self.turns.unwrap_or_default();
        let reason = self.reason.unwrap_or_default();
        out!("session {session_id} {} after {turns} turns", self.status);
        if !reason.is_empty() {
            out!("  reason: {reason}");
        }
        let status = match self.status.as_str() {
            "completed" => return Ok(()),
            "failed" => "failed",
            "interrupted" => "interrupted",
            "cancelled" => "cancelled",
            _ => "ended",
        };
        Err(CliError::NotCompleted {
            session_id: session_id.to_string(),
            status,
            reason,
        })
    }
}

/// One connection: prints its events until the session's `ended` event
/// (returned), or the stream closes or breaks (`None`, or the error).
async fn follow_once(
    remote: &Remote,
    path: &str,
    last_id: &mut Option<String>,
) -> Result<Option<Ended>, CliError> {
    let mut response = remote.stream(path, last_id.as_deref()).await?;
    let mut decoder = Decoder::default();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|error| CliError::Remote(format!("the event stream broke: {error}")))?;
        let Some(chunk) = chunk else {
            return Ok(None);
        };
        for frame in decoder.feed(&chunk) {
            if let Some(id) = &frame.id {
                *last_id = Some(id.clone());
            }
            match show(&frame)? {
                Shown::Ended(ended) => return Ok(Some(ended)),
                Shown::Closed => return Ok(None),
                Shown::Printed => {}
            }
        }
    }
}

enum Shown {
    Printed,
    Closed,
    Ended(Ended),
}

/// A turn event's data (the fields `sessions watch` prints).
#[derive(Debug, Deserialize)]
struct TurnEvent {
    turn_id: i64,
    planned_turns: Option<i64>,
    agent: String,
    role: String,
    message: String,
    error: Option<String>,
    duration_ms: Option<f64>,
    #[serde(default)]
    tool_calls: Vec<ToolEvent>,
}

#[derive(Debug, Deserialize)]
struct ToolEvent {
    tool: String,
    params: String,
    result: String,
    success: bool,
    error: Option<String>,
    #[serde(default)]
    duration_ms: f64,
}

/// Prints one event as the demo prints a run.
fn show(frame: &Frame) -> Result<Shown, CliError> {
    let unreadable = |error: serde_json::Error| {
        CliError::Remote(format!(
            "the daemon sent a `{}` event this heistd cannot read: {error}",
            frame.event
        ))
    };
    match frame.event.as_str() {
        wire::TURN => {
            let turn: TurnEvent = serde_json::from_str(&frame.data).map_err(unreadable)?;
            let tool_calls: Vec<ToolCallRecord> = turn
                .tool_calls
                .into_iter()
                .map(|call| ToolCallRecord {
                    tool_name: call.tool,
                    tool_params: call.params,
                    tool_result: call.result,
                    success: call.success,
                    error: call.error,
                    duration_ms: call.duration_ms,
                })
                .collect();
            let heading = TurnHeading {
                turn_id: turn.turn_id,
                total_turns: turn.planned_turns,
                agent: &turn.agent,
                role: &turn.role,
                elapsed_ms: turn.duration_ms,
            };
            print_turn_of(&heading, turn.error.as_deref(), &turn.message, &tool_calls);
        }
        wire::WAITING | wire::RESUMED => {
            let data: serde_json::Value = serde_json::from_str(&frame.data).map_err(unreadable)?;
            let turn_id = data["turn_id"].as_u64().unwrap_or_default() as u32;
            let millis = |key: &str| Duration::from_millis(data[key].as_u64().unwrap_or_default());
            let notice = if frame.event == wire::WAITING {
                RunNotice::ModelPaused {
                    turn_id,
                    remaining: millis("gives_up_in_ms"),
                    last_error: data["detail"].as_str().unwrap_or_default().to_string(),
                }
            } else {
                RunNotice::ModelBack {
                    turn_id,
                    paused: millis("waited_ms"),
                }
            };
            print_notice(&notice);
        }
        wire::ENDED => {
            let ended: Ended = serde_json::from_str(&frame.data).map_err(unreadable)?;
            return Ok(Shown::Ended(ended));
        }
        wire::CLOSED => {
            let data: serde_json::Value = serde_json::from_str(&frame.data).map_err(unreadable)?;
            super::output::write_stderr(format_args!(
                "heistd: the daemon closed the event stream: {}\n",
                data["message"].as_str().unwrap_or_default()
            ));
            return Ok(Shown::Closed);
        }
        // An event a newer daemon sends: nothing to print.
        _ => {}
    }
    Ok(Shown::Printed)
}
