//! Opening, adopting, locking and pruning a store file.
use super::*;

#[test]
fn reopening_keeps_data_and_schema_version() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("audit.db");
    let session_id = {
        let store = Store::open(&path, Synchronous::Full).expect("open");
        let id = store.create_session(&new_session(9, 1)).expect("create");
        store.record_turn(&turn(&id, 1)).expect("turn");
        store
            .finish_session(&id, SessionStatus::Completed, None)
            .expect("finish");
        id
    };
    let store = Store::open(&path, Synchronous::Full).expect("reopen");
    let detail = store.session(&session_id).expect("detail");
    assert_eq!(detail.session.status, SessionStatus::Completed);
    assert_eq!(detail.session.status_text, "completed");
    assert!(detail.session.end_time.is_some());
    let version: i64 = store
        .lock()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn pruning_removes_old_ended_sessions_with_all_their_rows() {
    let (_directory, store) = open();
    let new = new_session(1, 1);
    let old = store.create_session(&new).expect("old");
    store.record_turn(&turn(&old, 1)).expect("turn");
    store
        .finish_session(&old, SessionStatus::Completed, None)
        .expect("finish");
    let active = store.create_session(&new).expect("active");
    store.record_turn(&turn(&active, 1)).expect("turn");
    let recent = store.create_session(&new).expect("recent");
    store
        .finish_session(&recent, SessionStatus::Completed, None)
        .expect("finish");
    // Everything ended before "tomorrow" is old; active sessions never are.
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        store.prune_sessions_before(tomorrow, 1).expect("prune"),
        1,
        "batch of one"
    );
    assert_eq!(store.prune_sessions_before(tomorrow, 10).expect("prune"), 1);
    assert_eq!(store.prune_sessions_before(tomorrow, 10).expect("prune"), 0);
    store.compact(64).expect("compact");
    assert!(matches!(
        store.session(&old),
        Err(StoreError::SessionNotFound(_))
    ));
    assert!(store.session(&active).is_ok(), "an active session is kept");
    let orphans: i64 = store
        .lock()
        .query_row(
            "SELECT (SELECT COUNT(*) FROM messages WHERE session_id = ?1) + (SELECT COUNT(*) FROM tool_usage WHERE session_id = ?1)
             + (SELECT COUNT(*) FROM outbox WHERE session_id = ?1) + (SELECT COUNT(*) FROM service_calls WHERE session_id = ?1)",
            [&old],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(orphans, 0);
}

#[test]
fn a_prototype_database_is_adopted_and_its_sql_still_works() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("prototype.db");
    {
        let prototype = rusqlite::Connection::open(&path).expect("open");
        prototype
            .execute_batch(
                "CREATE TABLE sessions (session_id TEXT PRIMARY KEY, start_time TEXT, end_time TEXT, num_turns INTEGER, status TEXT);
                 CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, turn_id INTEGER, agent_name TEXT,
                     agent_role TEXT, message TEXT, timestamp TEXT);
                 CREATE TABLE tool_usage (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, turn_id INTEGER, agent_name TEXT,
                     tool_name TEXT, tool_params TEXT, tool_result TEXT, timestamp TEXT, success BOOLEAN);
                 INSERT INTO sessions VALUES ('heist_20250101_120000', '2025-01-01T12:00:00', '2025-01-01T12:05:00', 1, 'completed');
                 INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp)
                     VALUES ('heist_20250101_120000', 1, 'planner', 'Mastermind', 'old words', '2025-01-01T12:00:01');",
            )
            .expect("prototype schema");
    }
    let store = Store::open(&path, Synchronous::Normal).expect("adopts the prototype's tables");
    let old = store
        .session("heist_20250101_120000")
        .expect("old session readable");
    assert_eq!(old.messages[0].message, "old words");
    let id = store
        .create_session(&new_session(3, 1))
        .expect("new sessions work");
    store.record_turn(&turn(&id, 1)).expect("and turns");
    let prototype_sql: i64 = store
        .lock()
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE session_id = ?1",
            [&id],
            |row| row.get(0),
        )
        .expect("the prototype's query");
    assert_eq!(prototype_sql, 1);
}

#[test]
fn a_second_writer_is_refused_until_the_first_closes() {
    let directory = tempfile::tempdir().expect("temp dir");
    let config = crate::config::StoreConfig {
        path: directory.path().join("audit.db"),
        synchronous: Synchronous::Normal,
        max_size_mb: 0,
        max_outage_ms: 1_000,
        ..crate::config::StoreConfig::default()
    };
    let first = Store::open_configured(&config).expect("first writer");
    let error = Store::open_configured(&config)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("in use by another heistd") && error.contains("POST /api/v1/runs"),
        "{error}"
    );
    drop(first);
    Store::open_configured(&config).expect("free again once the first is gone");
    // Readers (sessions, the test harness) need no lock.
    Store::open(&config.path, Synchronous::Normal).expect("a reader opens beside a writer");
}

/// The audit trail holds every message and tool result: a new database,
/// its WAL and its lock file are not readable by other users, whatever
/// the umask; a clean close leaves only the database.
#[test]
fn a_new_store_is_private_and_a_clean_close_leaves_only_the_database() {
    use std::os::unix::fs::PermissionsExt as _;
    let directory = tempfile::tempdir().expect("temp dir");
    let config = crate::config::StoreConfig {
        path: directory.path().join("audit.db"),
        ..crate::config::StoreConfig::default()
    };
    let mode = |name: &str| {
        std::fs::metadata(directory.path().join(name))
            .unwrap_or_else(|error| panic!("{name}: {error}"))
            .permissions()
            .mode()
            & 0o777
    };
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(directory.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    {
        let store = Store::open_configured(&config).expect("open");
        let id = store.create_session(&new_session(1, 1)).expect("create");
        store.record_turn(&turn(&id, 1)).expect("turn");
        for name in ["audit.db", "audit.db-wal", "audit.db-shm", "audit.db.lock"] {
            assert_eq!(
                mode(name),
                super::super::maintenance::NEW_FILE_MODE,
                "{name}"
            );
        }
    }
    assert_eq!(listing(), ["audit.db"]);
    // A reader (`heistd sessions`) of the closed store leaves nothing either.
    let reader = Store::open_read_only(&config.path).expect("reader");
    assert_eq!(reader.find_sessions(None, None, 10).expect("read").len(), 1);
    drop(reader);
    assert_eq!(listing(), ["audit.db"]);
    // The next writer is in WAL mode again.
    let store = Store::open_configured(&config).expect("reopen");
    assert_eq!(store.find_sessions(None, None, 10).expect("list").len(), 1);
    let mode: String = store
        .lock()
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[test]
fn an_older_store_gets_its_sessions_token_totals_from_its_messages() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().join("older.db");
    {
        // A store as the heistd before token totals left it (version 5).
        let older = rusqlite::Connection::open(&path).expect("open");
        for migration in &schema::MIGRATIONS[..5] {
            older.execute_batch(migration).expect("migration");
        }
        older
            .execute_batch(
                "PRAGMA user_version = 5;
                 INSERT INTO sessions (session_id, start_time, num_turns, status)
                     VALUES ('heist_old', '2026-01-01T00:00:00.000000Z', 2, 'completed');
                 INSERT INTO messages (session_id, turn_id, agent_name, agent_role, message, timestamp, prompt_tokens, completion_tokens)
                     VALUES ('heist_old', 1, 'planner', 'Planner', 'm', 't', 100, 10),
                            ('heist_old', 2, 'hacker', 'Hacker', 'm', 't', NULL, NULL);",
            )
            .expect("rows");
    }
    // Read as it is (never migrated): the columns it lacks read as none.
    let reader = Store::open_read_only(&path).expect("read only");
    let detail = reader.session("heist_old").expect("detail");
    assert_eq!(
        (detail.session.prompt_tokens, detail.session.cost),
        (0, None)
    );
    assert_eq!(detail.messages[0].endpoint, None);
    drop(reader);
    // Migrated: the totals are its messages' sums.
    let store = Store::open(&path, Synchronous::Full).expect("migrates");
    let session = store.session("heist_old").expect("detail").session;
    assert_eq!(
        (
            session.prompt_tokens,
            session.completion_tokens,
            session.usage_estimated,
            session.cost
        ),
        (100, 10, 0, None)
    );
}
