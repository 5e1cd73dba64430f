//! `heistd reload`: what systemd's `ExecReload=` runs. It sends SIGHUP to
//! the daemon and waits until the daemon's `GET /api/v1/status` shows the
//! reload count move, so `systemctl reload` returns when the new config is
//! applied and fails, with the daemon's reason, when it was refused. No
//! binary but heistd is needed (`/bin/kill` is not on a minimal image).
//!
//! It only signals and reads the admin API; it must not judge the config
//! itself: the daemon's own validation is the one that counts.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::args::ReloadArgs;
use super::CliError;
use crate::config;

/// How often the daemon's status is read while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Signals the daemon and waits for its verdict; the text is what to print.
pub async fn reload(args: ReloadArgs) -> Result<String, CliError> {
    let address = args.admin_address.clone().unwrap_or_else(|| {
        let path = args.config.clone().or_else(|| {
            let system = std::path::PathBuf::from(config::SYSTEM_CONFIG_PATH);
            system.is_file().then_some(system)
        });
        config::admin_address_hint(path.as_deref(), config::process_environment())
    });
    let (daemon_pid, before) = crate::api::config_status(&address)
        .await
        .map_err(CliError::ReloadFailed)?;
    let pid = args.pid.unwrap_or(daemon_pid);
    if pid != daemon_pid {
        return Err(CliError::ReloadFailed(format!(
            "the heistd answering at {address} is pid {daemon_pid}, not {pid}; \
             give the daemon's admin address with --admin-address"
        )));
    }
    let target = Pid::from_raw(
        i32::try_from(pid)
            .map_err(|_| CliError::ReloadFailed(format!("pid {pid} is out of range")))?,
    );
    kill(target, Signal::SIGHUP)
        .map_err(|error| CliError::ReloadFailed(format!("cannot signal pid {pid}: {error}")))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_seconds);
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        // A read that fails mid-reload is retried until the deadline: the
        // admin API keeps serving through a reload, but a busy daemon may
        // miss one poll.
        if let Ok((_, now)) = crate::api::config_status(&address).await {
            if now.reloads > before.reloads {
                return match now.last_reload_error {
                    Some(error) => Err(CliError::ReloadRefused(error)),
                    None => Ok(format!(
                        "heistd (pid {pid}) reloaded its config: generation {}\n",
                        now.generation
                    )),
                };
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::ReloadFailed(format!(
                "heistd (pid {pid}) did not report the reload within {} s",
                args.timeout_seconds
            )));
        }
    }
}
