//! Shared helpers: an in-process stack and a scratch audit database.

use heistd::cli::LocalStack;
use heistd::config::{self, Config, Synchronous};
use heistd::services::token::{unix_now, Claims, SigningKey, ISSUER};
use heistd::store::StoreHandle;

/// Runs `future` to its end on a runtime of its own: how a synchronous
/// test (one that runs the `heistd` binary) reads a store through its
/// async [`StoreHandle`].
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// A config with built-in defaults only (no file, no environment).
pub fn base_config() -> Config {
    config::load(None, Vec::new()).expect("built-in defaults are valid")
}

/// Every companion on loopback, a fresh audit database, and their config.
pub struct TestStack {
    pub stack: LocalStack,
    pub store: StoreHandle,
    _directory: tempfile::TempDir,
}

impl TestStack {
    pub async fn start() -> Self {
        Self::start_with(base_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::start_with_model(config, None).await
    }

    /// The companions, with the heist talking to the model server at
    /// `model` (base URL, model name) instead of the rehearsal model.
    pub async fn start_with_model(config: Config, model: Option<(String, String)>) -> Self {
        let stack = LocalStack::start(config, model)
            .await
            .expect("companions start");
        let directory = tempfile::tempdir().expect("temp dir");
        let store =
            StoreHandle::open_sqlite(&directory.path().join("audit.db"), Synchronous::Normal)
                .await
                .expect("store opens");
        Self {
            stack,
            store,
            _directory: directory,
        }
    }

    pub fn url(&self, service: &str) -> String {
        self.stack.companions.url(service).expect("service runs")
    }

    /// Sets a fault on one companion (cleared with `Fault::default()`).
    pub fn set_fault(&self, service: &str, fault: heistd::config::Fault) {
        self.stack
            .companions
            .get(service)
            .expect("service runs")
            .fault
            .set(fault);
    }

    pub fn signing_key(&self) -> SigningKey {
        self.stack.companions.signing_key().clone()
    }
}

/// A token signed with `key` for `scope` that expires `ttl_seconds` from now
/// (negative: already expired).
pub fn token(key: &SigningKey, scope: &str, ttl_seconds: i64) -> String {
    let now = unix_now();
    key.sign(&Claims {
        iss: ISSUER.into(),
        sub: "test".into(),
        scope: scope.into(),
        iat: now - 10,
        exp: now + ttl_seconds,
    })
    .expect("a test token is signed")
}

/// A `memory:admin` token for `stack`'s memory service, as heistd's own
/// client holds.
pub fn memory_admin_token(stack: &TestStack) -> String {
    token(&stack.signing_key(), "memory:admin", 300)
}

/// A plain reqwest client for the tests' own requests, with heistd's TLS
/// (reqwest is built without a crypto provider of its own, so
/// `reqwest::Client::new()` would panic).
pub fn http() -> reqwest::Client {
    heistd::clients::http_builder(&[])
        .expect("TLS roots")
        .build()
        .expect("HTTP client")
}

/// `promtool` (Debian's `prometheus` package), which the tests that check
/// the alert rules and `/metrics` with it need. Those tests are
/// `#[ignore = "needs promtool ..."]`, so a plain `cargo test` lists them as
/// ignored; run with `--include-ignored` (as `.ci/run` does) they fail here,
/// naming the package, when promtool is missing: never a silent pass.
pub fn promtool(test: &str) -> &'static str {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "{test} needs promtool on PATH: install Debian's `prometheus` package \
         (.ci/run does), or leave out the ignored tests (plain `cargo test`)"
    );
    "promtool"
}

/// Runs `promtool check metrics` on an exposition and returns what it said
/// when it found anything (a lint warning or an error).
pub fn promtool_check_metrics(promtool: &str, exposition: &str) -> Option<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write the exposition");
    let output = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (!output.status.success() || !said.trim().is_empty()).then_some(said)
}
