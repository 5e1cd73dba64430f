//! Adopting a prototype database whose runs collided: the prototype named
//! sessions by the second they started, so two runs started in the same
//! second wrote their turns under one session id, with duplicate turn ids
//! that heistd's unique `(session_id, turn_id)` index refuses. Rather than
//! fail the adoption, each colliding run gets its own session: the k-th
//! message with a given turn id goes to `<id>_split<k>`, each tool row
//! follows the message of its turn with the same agent and the nearest
//! timestamp, and the session row is copied. What was done is returned as
//! sentences for the log.
//!
//! It runs once, inside the adoption's transaction, before the first
//! migration; it touches nothing but colliding sessions.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};

/// One message of a colliding session, and the session it moves to.
struct Placed {
    turn_id: i64,
    agent_name: String,
    timestamp: String,
    session_id: String,
}

/// Splits every session with duplicate turn ids; returns a sentence per
/// split session.
pub(super) fn split_same_second_collisions(
    connection: &Connection,
) -> rusqlite::Result<Vec<String>> {
    if !has_table(connection, "messages")? {
        return Ok(Vec::new());
    }
    let colliding: Vec<String> = connection
        .prepare(
            "SELECT DISTINCT session_id FROM messages GROUP BY session_id, turn_id HAVING COUNT(*) > 1",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut report = Vec::new();
    for session_id in colliding {
        report.push(split_session(connection, &session_id)?);
    }
    Ok(report)
}

fn split_session(connection: &Connection, session_id: &str) -> rusqlite::Result<String> {
    let rows: Vec<(i64, i64, String, String, i64)> = connection
        .prepare(
            "SELECT id, turn_id, agent_name, timestamp,
                    ROW_NUMBER() OVER (PARTITION BY turn_id ORDER BY id)
             FROM messages WHERE session_id = ?1",
        )?
        .query_map(params![session_id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut placed = Vec::with_capacity(rows.len());
    let mut runs = BTreeMap::new();
    for (id, turn_id, agent_name, timestamp, run) in rows {
        let target = if run == 1 {
            session_id.to_string()
        } else {
            format!("{session_id}_split{run}")
        };
        if run > 1 {
            connection.execute(
                "UPDATE messages SET session_id = ?2 WHERE id = ?1",
                params![id, target],
            )?;
        }
        *runs.entry(target.clone()).or_insert(0u32) += 1;
        placed.push(Placed {
            turn_id,
            agent_name,
            timestamp,
            session_id: target,
        });
    }
    let moved_tools = move_tool_rows(connection, session_id, &placed)?;
    for target in runs.keys().filter(|target| *target != session_id) {
        connection.execute(
            "INSERT INTO sessions (session_id, start_time, end_time, num_turns, status)
             SELECT ?2, start_time, end_time, num_turns, status FROM sessions WHERE session_id = ?1",
            params![session_id, target],
        )?;
    }
    for target in runs.keys() {
        connection.execute(
            "UPDATE sessions SET num_turns = (SELECT COUNT(*) FROM messages WHERE session_id = ?1)
             WHERE session_id = ?1",
            params![target],
        )?;
    }
    let names: Vec<String> = runs
        .iter()
        .map(|(target, turns)| format!("{target} ({turns} turns)"))
        .collect();
    Ok(format!(
        "session {session_id} held {} runs started in the same second: split into {}; {moved_tools} tool rows moved with their turns",
        runs.len(),
        names.join(", ")
    ))
}

/// Moves each tool row of the colliding session to the session of the
/// message it most likely belongs to: same turn, same agent if any, then
/// the nearest timestamp. Returns how many moved.
fn move_tool_rows(
    connection: &Connection,
    session_id: &str,
    placed: &[Placed],
) -> rusqlite::Result<usize> {
    if !has_table(connection, "tool_usage")? {
        return Ok(0);
    }
    let tools: Vec<(i64, i64, String, String)> = connection
        .prepare("SELECT id, turn_id, agent_name, timestamp FROM tool_usage WHERE session_id = ?1")?
        .query_map(params![session_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut moved = 0;
    for (id, turn_id, agent_name, timestamp) in tools {
        let best = placed
            .iter()
            .filter(|message| message.turn_id == turn_id)
            .min_by_key(|message| {
                (
                    message.agent_name != agent_name,
                    distance_ms(&message.timestamp, &timestamp),
                )
            });
        if let Some(message) = best.filter(|message| message.session_id != session_id) {
            connection.execute(
                "UPDATE tool_usage SET session_id = ?2 WHERE id = ?1",
                params![id, message.session_id],
            )?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Milliseconds between two of the prototype's timestamps (ISO 8601, with
/// or without a zone); unreadable ones are far from everything.
fn distance_ms(first: &str, second: &str) -> i64 {
    let parse = |text: &str| {
        chrono::NaiveDateTime::parse_from_str(text.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
    };
    match (parse(first), parse(second)) {
        (Some(first), Some(second)) => (first - second).num_milliseconds().abs(),
        _ => i64::MAX,
    }
}

fn has_table(connection: &Connection, table: &str) -> rusqlite::Result<bool> {
    connection.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![table],
        |row| row.get(0),
    )
}
