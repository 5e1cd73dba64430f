//! Printing for people: stdout and stderr written without panicking. A
//! closed stdout (`heistd run | head -1`) means "stop printing", never
//! "stop the heist": the session goes on to its end and is recorded, and
//! the process exits with the heist's own exit code. `println!` would
//! panic on `EPIPE` and leave the session `active` with no owner, so the
//! binary prints only through `out!` (in `cli`), [`write_stdout`] and
//! [`write_stderr`] (clippy bans the std print macros).
//!
//! It must not decide anything about the heist: it only writes.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to stdout fails: the reader has gone, and every later
/// write is skipped rather than tried and failed again. Stdout is one per
/// process, so this flag is too.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout, or nothing once stdout has closed.
pub fn write_stdout(text: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_fmt(text)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Prints a command's whole output as it is.
pub fn print(text: &str) {
    write_stdout(format_args!("{text}"));
}

/// Writes `text` to stderr; a closed stderr has no one left to tell.
pub fn write_stderr(text: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// Whether stdout has been found closed (tests, and the exit path).
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// `println!` that stops printing when stdout closes instead of panicking.
macro_rules! out {
    () => { $crate::cli::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// The first non-blank line of `text`, cut to `max_chars` with `...`.
pub(crate) fn first_line(text: &str, max_chars: usize) -> String {
    let line = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default()
        .trim();
    if line.chars().count() > max_chars {
        format!("{}...", line.chars().take(max_chars).collect::<String>())
    } else {
        line.to_string()
    }
}
