//! Throwaway PostgreSQL databases for tests: one fresh database with a
//! random name per test, on the server `HEISTD_TEST_POSTGRES_URL` names,
//! dropped when the test ends, so tests run in parallel without seeing
//! each other's rows. Without the variable a test is skipped and says why,
//! except under `CI=true`, where a skipped PostgreSQL test would hide a
//! broken set-up: there it fails.

use heistd::config::{ClusterConfig, StoreBackend, StoreConfig};

/// The variable `.ci/run` sets to the server the tests may use.
pub const URL_VARIABLE: &str = "HEISTD_TEST_POSTGRES_URL";

/// A database made for one test; dropped (connections and all) on drop.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// The URL of this test's own database.
    pub url: String,
}

impl TestDatabase {
    /// A fresh database, or `None` (after saying why) when no server is
    /// configured outside CI.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var(URL_VARIABLE) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: CI=true but {URL_VARIABLE} is unset: the PostgreSQL tests must run in CI (.ci/run sets it)"
            );
            // Straight to stderr: the harness captures `eprintln!`, and the
            // note must show in a plain `cargo test`.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: set {URL_VARIABLE} (e.g. postgres://postgres@127.0.0.1:5432/test) to run the PostgreSQL tests"
            );
            return None;
        };
        let suffix: u64 = rand::Rng::random(&mut rand::rng());
        let name = format!("heistd_test_{suffix:016x}");
        let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("{test}: cannot reach {admin_url}: {error}"));
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("{test}: cannot create a database: {error}"));
        let mut url = reqwest::Url::parse(&admin_url).expect("a URL");
        url.set_path(&name);
        Some(Self {
            admin_url,
            name,
            url: url.to_string(),
        })
    }

    /// A `[store]` for this database.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            backend: StoreBackend::Postgres,
            url: self.url.clone(),
            pool_size: 4,
            ..StoreConfig::default()
        }
    }

    /// A `[cluster]` with a short lease, so lease tests take milliseconds.
    pub fn cluster_config(node_id: &str, lease_ms: u64) -> ClusterConfig {
        ClusterConfig {
            node_id: node_id.to_string(),
            heartbeat_ms: lease_ms / 3,
            lease_ms,
            max_concurrent_sessions: 0,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which must not block on
        // itself: the drop gets a thread and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "cannot drop test database: {error}");
        }
    }
}
