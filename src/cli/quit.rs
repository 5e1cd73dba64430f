//! What Ctrl-C asks of a one-shot heist (`run`, `demo`): the first ends it
//! after its turn (the runner watches `stop`), the second quits at once,
//! and the session it was playing is marked `interrupted` on the way out.
//! A session that could not be marked (the process was killed, or the
//! store did not answer in time) is found by the next `run` or `demo` on
//! that store ([`end_stale_sessions`]): on SQLite each holds the store's
//! lock, so no one else is playing a session still `active`.
//!
//! `main` owns the signals: [`Interrupts::listen`] is given its listener.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;

use super::{output, CliError};
use crate::store::{SessionStatus, StoreHandle};

/// What `main` heard: each becomes true once.
pub struct Interrupts {
    /// The first Ctrl-C or SIGTERM: end the heist after its turn.
    pub stop: watch::Receiver<bool>,
    /// The second: quit now.
    pub quit: watch::Receiver<bool>,
}

impl Interrupts {
    /// The first signal `listen` hears sets `stop`; the second sets `quit`,
    /// and if the command has not ended within [`QUIT_WITHIN`] the process
    /// exits all the same (130). `listen` is `main`'s: it installs the
    /// handlers at once and resolves on the next SIGINT or SIGTERM.
    pub fn listen<F>(
        listen: impl Fn() -> Result<F, CliError> + Send + 'static,
    ) -> Result<Self, CliError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop_sender, stop) = watch::channel(false);
        let (quit_sender, quit) = watch::channel(false);
        let first = listen()?;
        tokio::spawn(async move {
            first.await;
            // Listening anew before saying so: a signal sent on reading
            // the line is heard, and only one after the first quits.
            let second = listen();
            output::write_stderr(format_args!(
                "heistd: stopping after this turn (the session will be marked interrupted); again to quit now\n"
            ));
            // An error: the heist has already ended, nothing to stop.
            let _ = stop_sender.send(true);
            if let Ok(second) = second {
                second.await;
                let _ = quit_sender.send(true);
                tokio::time::sleep(QUIT_WITHIN).await;
                std::process::exit(130);
            }
        });
        Ok(Self { stop, quit })
    }
}

/// How long a quitting command may take to mark its session and exit;
/// after it `main` exits all the same (code 130).
pub const QUIT_WITHIN: Duration = Duration::from_secs(5);

/// The part of [`QUIT_WITHIN`] the mark may take: a store that does not
/// answer by then leaves the session to the next run.
const MARK_WITHIN: Duration = Duration::from_secs(3);

/// The session a command is playing, once it has started one, for the
/// quit to mark.
#[derive(Default)]
pub(crate) struct InPlay(OnceLock<(StoreHandle, String)>);

impl InPlay {
    pub(crate) fn started(&self, store: &StoreHandle, session_id: &str) {
        let _ = self.0.set((store.clone(), session_id.to_string()));
    }
}

/// Runs `body` to its end, unless a quit comes first: then `body` is
/// dropped where it is (a turn in flight is cut), the session it started
/// is marked `interrupted`, and the command fails with exit code 130.
pub(crate) async fn unless_quit<T>(
    in_play: &InPlay,
    mut quit: watch::Receiver<bool>,
    body: impl Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    let requested = async move {
        // A sender gone without a quit (no signals here): never.
        if quit.wait_for(|quit| *quit).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        outcome = body => outcome,
        () = requested => Err(CliError::Quit(mark_interrupted(in_play).await)),
    }
}

/// Marks the session in play `interrupted`; says what became of it.
async fn mark_interrupted(in_play: &InPlay) -> String {
    let Some((store, session_id)) = in_play.0.get() else {
        return "quit before any session started".to_string();
    };
    let reason = "quit at once by a second Ctrl-C or SIGTERM";
    let marked = tokio::time::timeout(
        MARK_WITHIN,
        store.finish_session(session_id, SessionStatus::Interrupted, Some(reason)),
    )
    .await;
    match marked {
        Ok(Ok(true)) => format!("quit at once: session {session_id} marked interrupted"),
        Ok(Ok(false)) => format!("quit at once: session {session_id} had already ended"),
        Ok(Err(error)) => left_to_the_next_run(session_id, &error.to_string()),
        Err(_) => left_to_the_next_run(
            session_id,
            &format!(
                "the store did not answer within {} s",
                MARK_WITHIN.as_secs()
            ),
        ),
    }
}

fn left_to_the_next_run(session_id: &str, why: &str) -> String {
    format!(
        "quit at once: session {session_id} could not be marked interrupted ({why}); \
         the next `heistd run` or `heistd demo` on this store marks it"
    )
}

/// Marks `interrupted` every unscheduled session left `active`, saying so
/// on stderr: a `run` or `demo` that was killed, or quit without its mark
/// landing (or a daemon's API-started run, if a daemon died and this
/// command came before its restart). Call with the SQLite store open (its
/// lock held): nobody else plays them. Scheduled sessions are left alone:
/// only a daemon starts them, and its crash recovery resumes them.
pub(crate) async fn end_stale_sessions(store: &StoreHandle, command: &str) -> Result<(), CliError> {
    let active = store
        .find_sessions(Some(SessionStatus::Active), None, STALE_LIMIT)
        .await?;
    let reason = format!(
        "left active by a heistd that quit without ending it; found by `{command}` at start"
    );
    for session in active.iter().filter(|session| session.schedule.is_none()) {
        let id = &session.session_id;
        if store
            .finish_session(id, SessionStatus::Interrupted, Some(&reason))
            .await?
        {
            output::write_stderr(format_args!(
                "heistd: session {id} was left active by a heistd that quit without ending it: marked interrupted\n"
            ));
        }
    }
    Ok(())
}

/// More than a store could have been left with by hand: each is one run
/// killed or quit mid-turn.
const STALE_LIMIT: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::NewSession;

    async fn open_store(directory: &tempfile::TempDir) -> StoreHandle {
        let config = Config::builtin();
        let store = crate::config::StoreConfig {
            path: directory.path().join("audit.db"),
            ..config.store.clone()
        };
        StoreHandle::open_configured(&store, &config.cluster)
            .await
            .expect("store opens")
    }

    async fn create(store: &StoreHandle, schedule: Option<&str>) -> String {
        store
            .create_session(NewSession {
                scenario: "bank".into(),
                seed: 1,
                planned_turns: 3,
                schedule: schedule.map(str::to_string),
                scheduled_time: schedule.map(|_| "2026-01-01T00:00:00Z".to_string()),
                trigger: None,
            })
            .await
            .expect("session created")
    }

    async fn status_of(store: &StoreHandle, session_id: &str) -> (String, Option<String>) {
        let session = store.session(session_id).await.expect("session").session;
        (session.status_text, session.failure_reason)
    }

    #[tokio::test]
    async fn stale_sessions_are_interrupted_and_scheduled_ones_left_to_the_daemon() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = open_store(&directory).await;
        let left = create(&store, None).await;
        let scheduled = create(&store, Some("nightly")).await;
        let ended = create(&store, None).await;
        store
            .finish_session(&ended, SessionStatus::Completed, None)
            .await
            .expect("finished");

        end_stale_sessions(&store, "heistd run")
            .await
            .expect("swept");

        let (status, reason) = status_of(&store, &left).await;
        assert_eq!(status, "interrupted");
        assert!(reason.is_some_and(|reason| reason.contains("heistd run")));
        assert_eq!(status_of(&store, &scheduled).await.0, "active");
        assert_eq!(status_of(&store, &ended).await.0, "completed");
    }

    #[tokio::test]
    async fn a_quit_cuts_the_body_and_marks_its_session_interrupted() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = open_store(&directory).await;
        let (quit_sender, quit) = watch::channel(false);
        let in_play = InPlay::default();
        let body = async {
            let session_id = create(&store, None).await;
            in_play.started(&store, &session_id);
            quit_sender.send(true).expect("sent");
            // A turn that never ends: only the quit can end the body.
            std::future::pending::<Result<String, CliError>>().await
        };
        let outcome = unless_quit(&in_play, quit, body).await;
        let Err(CliError::Quit(message)) = outcome else {
            panic!("not a quit: {outcome:?}");
        };
        assert!(message.contains("marked interrupted"), "{message}");
        assert_eq!(CliError::Quit(message).exit_code(), 130);
        let session_id = &in_play.0.get().expect("started").1;
        assert_eq!(status_of(&store, session_id).await.0, "interrupted");
    }

    #[tokio::test]
    async fn a_body_that_ends_is_not_cut_and_a_quit_before_any_session_says_so() {
        let (_quit_sender, quit) = watch::channel(false);
        let ended = unless_quit(&InPlay::default(), quit, async { Ok(7) }).await;
        assert!(matches!(ended, Ok(7)));
        let (_quit_sender, quit) = watch::channel(true);
        let quit_early = unless_quit(
            &InPlay::default(),
            quit,
            std::future::pending::<Result<(), _>>(),
        )
        .await;
        assert!(
            matches!(&quit_early, Err(CliError::Quit(message)) if message.contains("before any session")),
            "{quit_early:?}"
        );
    }
}
