//! Shared helpers: an in-process stack and a scratch audit database.

use std::sync::Arc;

use heistd::cli::LocalStack;
use heistd::config::{self, Config, Synchronous};
use heistd::services::token::{unix_now, Claims, SigningKey, ISSUER};
use heistd::store::Store;

/// A config with built-in defaults only (no file, no environment).
pub fn base_config() -> Config {
    config::load(None, Vec::new()).expect("built-in defaults are valid")
}

/// Every companion on loopback, a fresh audit database, and their config.
pub struct TestStack {
    pub stack: LocalStack,
    pub store: Arc<Store>,
    _directory: tempfile::TempDir,
}

impl TestStack {
    pub async fn start() -> Self {
        Self::start_with(base_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let stack = LocalStack::start(config, None)
            .await
            .expect("companions start");
        let directory = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            Store::open(&directory.path().join("audit.db"), Synchronous::Normal)
                .expect("store opens"),
        );
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

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}
