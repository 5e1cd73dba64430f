//! systemd notification (`sd_notify`): readiness, status text, reload and
//! stop announcements, and the watchdog keep-alive. The protocol is one
//! datagram of `KEY=VALUE` lines sent to one Unix socket, about fifty lines
//! of code, so it is written here rather than taken from a crate: the
//! `sd-notify` crate reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the
//! environment itself, and in heistd only `config` reads the environment.
//! The socket path and the watchdog values are therefore passed in
//! ([`Notifier::from_values`]). Without a socket the [`Notifier`] is a no-op
//! and heistd runs the same in the foreground. This module must never stop
//! the daemon: sending never panics or blocks, and a failure is logged once
//! and otherwise ignored.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Sends state changes to the service manager that started heistd.
#[derive(Debug)]
pub struct Notifier {
    /// Where notifications go; `None` when heistd was not started by a
    /// service manager that listens, which makes every method a no-op.
    socket_address: Option<SocketAddr>,
    /// How often to ping the watchdog; `None` when the unit has no
    /// `WatchdogSec=` or the watchdog is meant for another process.
    watchdog_interval: Option<Duration>,
    /// Set after the first failed send, so that a broken socket logs one
    /// warning rather than one every watchdog period.
    warned_about_send_failure: AtomicBool,
}

impl Notifier {
    /// Builds a notifier from the values of `NOTIFY_SOCKET`, `WATCHDOG_USEC`
    /// and `WATCHDOG_PID`, read by `config`. A socket starting with `@` is in
    /// the abstract namespace; one starting with `/` is a path. Anything else
    /// (absent, empty, relative, or `vsock:`, which heistd does not support)
    /// gives a disabled notifier.
    pub fn from_values(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        let socket_address = notify_socket.and_then(parse_socket_address);
        let watchdog_interval = match socket_address {
            Some(_) => parse_watchdog_interval(watchdog_usec, watchdog_pid),
            None => None,
        };
        Notifier {
            socket_address,
            watchdog_interval,
            warned_about_send_failure: AtomicBool::new(false),
        }
    }

    /// A notifier that sends nothing, for runs outside systemd and tests.
    pub fn disabled() -> Notifier {
        Notifier::from_values(None, None, None)
    }

    /// Whether a service manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.socket_address.is_some()
    }

    /// Start-up (or a reload) is complete: `READY=1`.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line status shown by `systemctl status`: `STATUS=...`. Newlines
    /// would end the field early, so each becomes a space.
    pub fn status(&self, text: &str) {
        let one_line: String = text
            .chars()
            .map(|character| {
                if character == '\n' || character == '\r' {
                    ' '
                } else {
                    character
                }
            })
            .collect();
        self.send(&format!("STATUS={one_line}"));
    }

    /// A reload has begun: `RELOADING=1`. Call [`Notifier::ready`] when it
    /// has finished. `MONOTONIC_USEC=` is not sent: std offers no safe way to
    /// read `CLOCK_MONOTONIC` (unsafe code is forbidden here and neither libc
    /// nor rustix is a dependency), and systemd needs the timestamp only to
    /// match reloads to requests under `Type=notify-reload`, which heistd's
    /// unit does not use (it has `Type=notify` and `ExecReload=kill -HUP`).
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// Shutdown has begun: `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// How often to call [`Notifier::ping_watchdog`]: half of
    /// `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)` advises, so one late ping
    /// does not get heistd killed.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// Tells systemd heistd is alive: `WATCHDOG=1`. Does nothing when the
    /// watchdog is off.
    pub fn ping_watchdog(&self) {
        if self.watchdog_interval.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    fn send(&self, message: &str) {
        let Some(socket_address) = &self.socket_address else {
            return;
        };
        if let Err(error) = send_datagram(socket_address, message) {
            if !self.warned_about_send_failure.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, message, "systemd notification failed; later failures are logged at debug level");
            } else {
                tracing::debug!(%error, message, "systemd notification failed");
            }
        }
    }
}

/// Pings the watchdog every [`Notifier::watchdog_interval`] until `shutdown`
/// becomes true (or its sender is dropped). Returns at once when the watchdog
/// is off.
///
/// This runs as a task on the daemon's own runtime on purpose: if the
/// runtime is stuck (a blocked worker, a deadlock), this task stops running,
/// the pings stop, and systemd restarts heistd. A dedicated thread would
/// keep pinging for a process that no longer does any work.
pub async fn run_watchdog(notifier: Arc<Notifier>, mut shutdown: watch::Receiver<bool>) {
    let Some(watchdog_interval) = notifier.watchdog_interval() else {
        return;
    };
    if *shutdown.borrow() {
        return;
    }
    // The first tick completes at once, so systemd hears from heistd as soon
    // as the task starts. After a stall, one ping is enough: catching up with
    // a burst would not make the stall any shorter.
    let mut ticker = tokio::time::interval(watchdog_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => notifier.ping_watchdog(),
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

fn parse_socket_address(notify_socket: &str) -> Option<SocketAddr> {
    let parsed = if let Some(abstract_name) = notify_socket.strip_prefix('@') {
        SocketAddr::from_abstract_name(abstract_name.as_bytes())
    } else if notify_socket.starts_with('/') {
        SocketAddr::from_pathname(notify_socket)
    } else {
        if !notify_socket.is_empty() {
            tracing::warn!(notify_socket, "NOTIFY_SOCKET is neither a path nor an abstract socket; systemd notification is off");
        }
        return None;
    };
    match parsed {
        Ok(socket_address) => Some(socket_address),
        Err(error) => {
            tracing::warn!(%error, notify_socket, "NOTIFY_SOCKET is not a usable socket address; systemd notification is off");
            None
        }
    }
}

/// The watchdog is on when `WATCHDOG_USEC` is a positive number and
/// `WATCHDOG_PID`, if set, names this process: a child inherits the variables
/// but the watchdog belongs to the main process.
fn parse_watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
) -> Option<Duration> {
    let watchdog_usec: u64 = watchdog_usec?
        .trim()
        .parse()
        .ok()
        .filter(|usec| *usec > 0)?;
    if let Some(watchdog_pid) = watchdog_pid {
        let watchdog_pid: u32 = watchdog_pid.trim().parse().ok()?;
        if watchdog_pid != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(watchdog_usec / 2))
}

/// One datagram from a fresh unbound socket, as libsystemd does. The socket
/// is non-blocking so that a full receive queue fails fast instead of
/// stalling a runtime worker.
fn send_datagram(socket_address: &SocketAddr, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let n_bytes_sent = socket.send_to_addr(message.as_bytes(), socket_address)?;
    if n_bytes_sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram was truncated",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A listening socket in a temporary directory, standing in for systemd.
    struct FakeServiceManager {
        _directory: tempfile::TempDir,
        socket_path: String,
        socket: UnixDatagram,
    }

    impl FakeServiceManager {
        fn bind() -> FakeServiceManager {
            let directory = tempfile::tempdir().unwrap();
            let socket_path = directory.path().join("notify.sock");
            let socket = UnixDatagram::bind(&socket_path).unwrap();
            socket.set_nonblocking(true).unwrap();
            FakeServiceManager {
                socket_path: socket_path.to_str().unwrap().to_owned(),
                _directory: directory,
                socket,
            }
        }
    }

    /// Every datagram waiting on `socket`, without blocking.
    fn received_messages(socket: &UnixDatagram) -> Vec<String> {
        let mut messages = Vec::new();
        let mut buffer = [0_u8; 4096];
        loop {
            match socket.recv(&mut buffer) {
                Ok(n_bytes) => {
                    messages.push(String::from_utf8(buffer[..n_bytes].to_vec()).unwrap())
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return messages,
                Err(error) => panic!("reading the fake notify socket failed: {error}"),
            }
        }
    }

    fn this_process_id() -> String {
        std::process::id().to_string()
    }

    #[test]
    fn path_socket_receives_ready_status_reloading_and_stopping() {
        let manager = FakeServiceManager::bind();
        let notifier = Notifier::from_values(Some(&manager.socket_path), None, None);
        assert!(notifier.is_enabled());

        notifier.ready();
        notifier.status("running 2 schedules\nnext at 12:00");
        notifier.reloading();
        notifier.stopping();

        assert_eq!(
            received_messages(&manager.socket),
            [
                "READY=1",
                "STATUS=running 2 schedules next at 12:00",
                "RELOADING=1",
                "STOPPING=1"
            ]
        );
    }

    #[test]
    fn abstract_socket_receives_ready() {
        static NEXT_SOCKET: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "heistd-notify-test-{}-{}",
            std::process::id(),
            NEXT_SOCKET.fetch_add(1, Ordering::Relaxed)
        );
        let listening_address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&listening_address).unwrap();
        socket.set_nonblocking(true).unwrap();

        let notifier = Notifier::from_values(Some(&format!("@{name}")), None, None);
        assert!(notifier.is_enabled());
        notifier.ready();

        assert_eq!(received_messages(&socket), ["READY=1"]);
    }

    #[test]
    fn without_a_usable_socket_the_notifier_is_disabled() {
        for notify_socket in [
            None,
            Some(""),
            Some("relative/notify.sock"),
            Some("vsock:2:1234"),
        ] {
            let notifier = Notifier::from_values(notify_socket, Some("30000000"), None);
            assert!(!notifier.is_enabled(), "{notify_socket:?}");
            assert_eq!(notifier.watchdog_interval(), None, "{notify_socket:?}");
            // No-ops: nothing to send to, nothing to panic about.
            notifier.ready();
            notifier.status("idle");
            notifier.reloading();
            notifier.stopping();
            notifier.ping_watchdog();
        }
        assert!(!Notifier::disabled().is_enabled());
    }

    #[test]
    fn a_socket_nobody_listens_on_is_ignored() {
        let directory = tempfile::tempdir().unwrap();
        let missing_socket = directory.path().join("nobody-here.sock");
        let notifier = Notifier::from_values(
            Some(missing_socket.to_str().unwrap()),
            Some("2000000"),
            None,
        );
        assert!(notifier.is_enabled());
        notifier.ready();
        notifier.ping_watchdog();
        notifier.stopping();
        assert!(notifier.warned_about_send_failure.load(Ordering::Relaxed));
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        let manager = FakeServiceManager::bind();
        let notifier = Notifier::from_values(Some(&manager.socket_path), Some("30000000"), None);
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));

        let pid = this_process_id();
        let notifier = Notifier::from_values(Some(&manager.socket_path), Some("3"), Some(&pid));
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_micros(1)));
    }

    #[test]
    fn watchdog_is_off_unless_usec_is_positive_and_pid_is_ours() {
        let manager = FakeServiceManager::bind();
        let other_pid = (std::process::id() + 1).to_string();
        let cases: [(Option<&str>, Option<&str>); 6] = [
            (None, None),
            (Some("0"), None),
            (Some("soon"), None),
            (Some("-5"), None),
            (Some("30000000"), Some(&other_pid)),
            (Some("30000000"), Some("not-a-pid")),
        ];
        for (watchdog_usec, watchdog_pid) in cases {
            let notifier =
                Notifier::from_values(Some(&manager.socket_path), watchdog_usec, watchdog_pid);
            assert_eq!(
                notifier.watchdog_interval(),
                None,
                "{watchdog_usec:?} {watchdog_pid:?}"
            );
            notifier.ping_watchdog();
        }
        assert_eq!(received_messages(&manager.socket), Vec::<String>::new());
    }

    #[test]
    fn ping_watchdog_sends_watchdog_1() {
        let manager = FakeServiceManager::bind();
        let pid = this_process_id();
        let notifier =
            Notifier::from_values(Some(&manager.socket_path), Some("1000000"), Some(&pid));
        notifier.ping_watchdog();
        assert_eq!(received_messages(&manager.socket), ["WATCHDOG=1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn run_watchdog_pings_every_interval_and_stops_on_shutdown() {
        let manager = FakeServiceManager::bind();
        // WATCHDOG_USEC of 10 s: a ping every 5 s.
        let notifier = Arc::new(Notifier::from_values(
            Some(&manager.socket_path),
            Some("10000000"),
            None,
        ));
        let (shutdown_sender, shutdown) = watch::channel(false);
        let watchdog = tokio::spawn(run_watchdog(notifier, shutdown));

        // Pings at 0 s, 5 s and 10 s.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(received_messages(&manager.socket), ["WATCHDOG=1"; 3]);

        shutdown_sender.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), watchdog)
            .await
            .expect("run_watchdog stops on shutdown")
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(received_messages(&manager.socket), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn run_watchdog_returns_at_once_when_the_watchdog_is_off() {
        let manager = FakeServiceManager::bind();
        let notifier = Arc::new(Notifier::from_values(
            Some(&manager.socket_path),
            None,
            None,
        ));
        let (_shutdown_sender, shutdown) = watch::channel(false);
        tokio::time::timeout(Duration::from_millis(1), run_watchdog(notifier, shutdown))
            .await
            .expect("run_watchdog returns when the watchdog is off");
        assert_eq!(received_messages(&manager.socket), Vec::<String>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn run_watchdog_stops_when_the_shutdown_sender_is_dropped() {
        let manager = FakeServiceManager::bind();
        let notifier = Arc::new(Notifier::from_values(
            Some(&manager.socket_path),
            Some("10000000"),
            None,
        ));
        let (shutdown_sender, shutdown) = watch::channel(false);
        let watchdog = tokio::spawn(run_watchdog(notifier, shutdown));
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(shutdown_sender);
        tokio::time::timeout(Duration::from_secs(1), watchdog)
            .await
            .expect("run_watchdog stops when shutdown can no longer change")
            .unwrap();
        assert_eq!(received_messages(&manager.socket), ["WATCHDOG=1"]);
    }
}
