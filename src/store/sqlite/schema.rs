//! The audit store's schema, as the list of migrations that build it. The
//! prototype's `sessions`, `messages` and `tool_usage` keep their names and
//! columns; new columns and tables are added, never renamed.

use rusqlite::Connection;

/// Columns heistd adds to the prototype's tables. A database the prototype
/// wrote has the tables without them, and `CREATE TABLE IF NOT EXISTS`
/// would leave it so: they are added before the first migration.
const PROTOTYPE_ADDITIONS: [(&str, &str, &str); 7] = [
    ("sessions", "seed", "INTEGER"),
    ("sessions", "scenario", "TEXT"),
    ("sessions", "planned_turns", "INTEGER"),
    ("sessions", "failure_reason", "TEXT"),
    ("messages", "error", "TEXT"),
    ("tool_usage", "error", "TEXT"),
    ("tool_usage", "duration_ms", "REAL"),
];

/// Brings a prototype database's tables up to migration 1's columns.
pub(super) fn adopt_prototype_tables(connection: &Connection) -> rusqlite::Result<()> {
    for (table, column, kind) in PROTOTYPE_ADDITIONS {
        let mut statement =
            connection.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let columns: Vec<String> = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        if !columns.is_empty() && !columns.iter().any(|existing| existing == column) {
            connection
                .execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"))?;
        }
    }
    Ok(())
}

/// Each entry moves the schema from version `index` to `index + 1`.
pub(crate) const MIGRATIONS: [&str; 7] = [
    r#"
    CREATE TABLE IF NOT EXISTS sessions (
        session_id TEXT PRIMARY KEY,
        start_time TEXT NOT NULL,
        end_time TEXT,
        num_turns INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        seed INTEGER,
        scenario TEXT,
        planned_turns INTEGER,
        failure_reason TEXT
    );
    CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(session_id),
        turn_id INTEGER NOT NULL,
        agent_name TEXT NOT NULL,
        agent_role TEXT NOT NULL,
        message TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        error TEXT
    );
    CREATE UNIQUE INDEX IF NOT EXISTS messages_session_turn ON messages(session_id, turn_id);
    CREATE TABLE IF NOT EXISTS tool_usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(session_id),
        turn_id INTEGER NOT NULL,
        agent_name TEXT NOT NULL,
        tool_name TEXT NOT NULL,
        tool_params TEXT NOT NULL,
        tool_result TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        success INTEGER NOT NULL,
        error TEXT,
        duration_ms REAL
    );
    CREATE INDEX IF NOT EXISTS tool_usage_session_turn ON tool_usage(session_id, turn_id);
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(session_id),
        turn_id INTEGER NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        delivered_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(session_id) WHERE delivered_at IS NULL;
"#,
    r#"
    CREATE TABLE IF NOT EXISTS service_calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(session_id),
        turn_id INTEGER NOT NULL,
        service TEXT NOT NULL,
        operation TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        last_error TEXT,
        duration_ms REAL NOT NULL,
        timestamp TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS service_calls_session_turn ON service_calls(session_id, turn_id);
"#,
    r#"
    ALTER TABLE sessions ADD COLUMN schedule TEXT;
    ALTER TABLE sessions ADD COLUMN scheduled_time TEXT;
    CREATE UNIQUE INDEX IF NOT EXISTS sessions_schedule_slot ON sessions(schedule, scheduled_time)
        WHERE schedule IS NOT NULL AND scheduled_time IS NOT NULL;
    CREATE INDEX IF NOT EXISTS sessions_status ON sessions(status);
    CREATE TABLE IF NOT EXISTS health_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp TEXT NOT NULL,
        service TEXT NOT NULL,
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL
    );
"#,
    r#"
    ALTER TABLE outbox ADD COLUMN abandoned_at TEXT;
"#,
    // What the model server said about each reply: its token counts (from
    // `usage`), why it stopped (`length` means cut short), and whether
    // heistd trimmed the prompt to fit the model's context window.
    r#"
    ALTER TABLE messages ADD COLUMN prompt_tokens INTEGER;
    ALTER TABLE messages ADD COLUMN completion_tokens INTEGER;
    ALTER TABLE messages ADD COLUMN finish_reason TEXT;
    ALTER TABLE messages ADD COLUMN trimmed INTEGER NOT NULL DEFAULT 0;
"#,
    // Steering (track "control"): how a schedule's run was started
    // (`trigger`: schedule, manual, backfill), operators' cancel requests
    // of sessions still playing, and paused schedules. Control state lives
    // here so it survives restarts and reloads.
    r#"
    ALTER TABLE sessions ADD COLUMN trigger TEXT;
    CREATE TABLE IF NOT EXISTS session_cancels (
        session_id TEXT PRIMARY KEY REFERENCES sessions(session_id),
        requested_at TEXT NOT NULL,
        reason TEXT NOT NULL,
        requested_by TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS schedule_pauses (
        schedule TEXT PRIMARY KEY,
        note TEXT NOT NULL,
        paused_by TEXT NOT NULL,
        paused_at TEXT NOT NULL
    );
"#,
    // Token accounting (migration 7, after steering's 6): which endpoint
    // and model answered each message, and each session's totals, kept
    // current by each turn's commit; sessions already recorded get the sums
    // of their messages' counts. The index on `start_time` keeps the day's
    // totals (GET /api/v1/status) a range read.
    r#"
    ALTER TABLE messages ADD COLUMN endpoint TEXT;
    ALTER TABLE messages ADD COLUMN model TEXT;
    ALTER TABLE sessions ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN cost REAL;
    UPDATE sessions SET
        prompt_tokens = (SELECT COALESCE(SUM(prompt_tokens), 0) FROM messages m WHERE m.session_id = sessions.session_id),
        completion_tokens = (SELECT COALESCE(SUM(completion_tokens), 0) FROM messages m WHERE m.session_id = sessions.session_id);
    CREATE INDEX IF NOT EXISTS sessions_start_time ON sessions(start_time);
"#,
];
