//! `heistd services all` in its own process, as an operator runs it: the
//! harness the hostile-client tests share. It writes a config (the test's
//! own tables, then every companion on port 0), starts the binary, reads the
//! "NAME listening on URL" line of every companion from its stdout, and keeps
//! its log (stderr) in a file of its temp directory. It measures the process
//! from /proc, stops it with SIGTERM, and kills it on drop if a failed
//! assertion left it running. It knows nothing of what a test asserts.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use serde_json::{json, Value};

/// `heistd services all` on ephemeral ports, its log (stderr) in a file.
pub struct ServicesProcess {
    child: Child,
    /// Each companion's base URL, by name, as its stdout line gave it.
    urls: BTreeMap<String, String>,
    /// Where stderr goes: complete once [`ServicesProcess::stop`] returned.
    log: PathBuf,
    /// Holds the config and the log; removed when the process is dropped.
    _directory: tempfile::TempDir,
}

impl ServicesProcess {
    /// With the default config and environment.
    pub fn start() -> Self {
        Self::start_with("", &[])
    }

    /// `config` is whole TOML tables, written before the
    /// `[companions.ports]` table; `environment` is set on the process
    /// (`RUST_LOG` is removed, so the log has its default level).
    pub fn start_with(config: &str, environment: &[(&str, &str)]) -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        let ports = heistd::wire::COMPANION_NAMES
            .map(|name| format!("{name} = 0"))
            .join("\n");
        std::fs::write(
            directory.path().join("services.toml"),
            format!("{config}\n\n[companions.ports]\n{ports}\n"),
        )
        .expect("config");
        let log = directory.path().join("services.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_heistd"))
            .args(["services", "all", "--config", "services.toml"])
            .current_dir(directory.path())
            .env_remove("RUST_LOG")
            .envs(environment.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("services start");
        // Every companion's line is read, so none is written to a closed pipe.
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut urls = BTreeMap::new();
        while urls.len() < heistd::wire::COMPANION_NAMES.len() {
            let line = lines.next().expect("a line per service").expect("utf-8");
            if let [name, "listening", "on", url, ..] =
                line.split_whitespace().collect::<Vec<_>>()[..]
            {
                urls.insert(name.to_string(), url.to_string());
            }
        }
        Self {
            child,
            urls,
            log,
            _directory: directory,
        }
    }

    /// The base URL of `service`, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self, service: &str) -> &str {
        &self.urls[service]
    }

    /// The address `service` listens on, for raw sockets.
    pub fn address(&self, service: &str) -> SocketAddr {
        self.url(service)
            .trim_start_matches("http://")
            .parse()
            .expect("ip:port")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A token for one of the built-in rehearsal clients.
    pub async fn token(&self, client_id: &str, scope: &str) -> String {
        let reply: Value = crate::support::http()
            .post(format!("{}/token", self.url("oauth")))
            .json(&json!({
                "grant_type": "client_credentials", "client_id": client_id,
                "client_secret": format!("{client_id}-rehearsal-secret"), "scope": scope,
            }))
            .send()
            .await
            .expect("token answered")
            .json()
            .await
            .expect("token JSON");
        reply["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {reply}"))
            .to_string()
    }

    /// `VmRSS` and `VmHWM` (peak) of the process, in kB.
    pub fn memory_kb(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in {status}"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// What the process logged so far; all of it after [`Self::stop`].
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).expect("log")).into_owned()
    }

    /// SIGTERM, then the exit status; the log is complete after this.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("services exit")
    }
}

impl Drop for ServicesProcess {
    fn drop(&mut self) {
        // Only if a failed assertion (or a test that never stops it) left
        // it running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
