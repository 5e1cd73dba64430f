//! Throwaway PostgreSQL databases for tests: one fresh database with a
//! random name per test, on the server `HEISTD_TEST_POSTGRES_URL` names,
//! dropped when the test ends, so tests run in parallel without seeing
//! each other's rows. Every test that needs a server is `#[ignore = "needs
//! PostgreSQL ..."]`: a plain `cargo test` lists it as ignored, and
//! `cargo test -- --include-ignored` (`.ci/run`) runs it, failing, never
//! skipping, when the variable or the server is missing.

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
    /// A fresh database; fails the test, naming the variable, when
    /// `HEISTD_TEST_POSTGRES_URL` is unset. Always `Some`: the `Option`
    /// only keeps the callers' `let ... else` compiling.
    pub async fn create(test: &str) -> Option<Self> {
        let admin_url = std::env::var(URL_VARIABLE).unwrap_or_else(|_| {
            panic!(
                "{test} needs PostgreSQL: set {URL_VARIABLE} (e.g. \
                 postgres://postgres@127.0.0.1:5432/test; .ci/run does), or leave out the \
                 ignored tests (plain `cargo test`)"
            )
        });
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
        Self::store_config_for(&self.url)
    }

    /// A `[store]` for the database at `url`.
    pub fn store_config_for(url: &str) -> StoreConfig {
        StoreConfig {
            backend: StoreBackend::Postgres,
            url: url.to_string(),
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

/// Where Debian installs PostgreSQL's server programs.
const SERVER_PROGRAMS: &str = "/usr/lib/postgresql";

/// A PostgreSQL server of the test's own, for tests that restart it (the
/// machine's server is shared by every test): Debian's `initdb` and
/// `pg_ctl`, run as the `postgres` user, on a free loopback port, its data
/// and socket in a temporary directory. Stopped on drop.
pub struct ThrowawayServer {
    directory: tempfile::TempDir,
    programs: std::path::PathBuf,
    port: u16,
}

impl ThrowawayServer {
    /// A running server; fails the test, saying what is missing, where
    /// this is not root or PostgreSQL's server programs are not installed.
    pub fn start(test: &str) -> Self {
        Self::start_with(test, |_| {})
    }

    /// As [`Self::start`], with `setup` run on the new cluster's data
    /// directory (owned by `postgres`) before the server starts: its
    /// `postgresql.conf`, `pg_hba.conf`, certificates.
    pub fn start_with(test: &str, setup: impl FnOnce(&std::path::Path)) -> Self {
        // PostgreSQL runs as `postgres`, which only root can switch to.
        let root = run_command("id", &["-u"]).trim() == "0";
        let programs = server_programs().filter(|_| root).unwrap_or_else(|| {
            panic!(
                "{test} needs root and PostgreSQL's server programs under {SERVER_PROGRAMS} \
                 (Debian's postgresql package; .ci/run installs it and runs as root), or leave \
                 out the ignored tests (plain `cargo test`)"
            )
        });
        let directory = tempfile::tempdir().expect("temp dir");
        let uid = run_as_postgres("id", &["-u"])
            .trim()
            .parse()
            .expect("postgres uid");
        std::os::unix::fs::chown(directory.path(), Some(uid), None).expect("chown to postgres");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let server = Self {
            directory,
            programs,
            port,
        };
        let data = server.data();
        run_as_postgres(
            &server.program("initdb"),
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        setup(std::path::Path::new(&data));
        server.pg_ctl(&["start", "-w"]);
        server
    }

    /// The server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: sessions are cut) and starts it again.
    pub fn restart(&self) {
        self.pg_ctl(&["restart", "-w", "-m", "fast"]);
    }

    fn data(&self) -> String {
        self.directory.path().join("data").display().to_string()
    }

    fn program(&self, name: &str) -> String {
        self.programs.join(name).display().to_string()
    }

    fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.directory.path().display()
        );
        let log = self
            .directory
            .path()
            .join("server.log")
            .display()
            .to_string();
        let data = self.data();
        let mut arguments = vec!["-D", &data, "-o", &options, "-l", &log];
        arguments.extend_from_slice(action);
        run_as_postgres(&self.program("pg_ctl"), &arguments);
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        let data = self.data();
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", &self.program("pg_ctl"), "-D", &data])
            .args(["stop", "-m", "immediate"])
            .output();
    }
}

/// The newest installed server's `bin` directory.
fn server_programs() -> Option<std::path::PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir(SERVER_PROGRAMS)
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let bin = std::path::Path::new(SERVER_PROGRAMS)
        .join(versions.last()?.to_string())
        .join("bin");
    bin.join("initdb").is_file().then_some(bin)
}

/// Runs a program and returns what it printed (empty when it cannot run).
fn run_command(program: &str, arguments: &[&str]) -> String {
    std::process::Command::new(program)
        .args(arguments)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// Runs a program as `postgres` (PostgreSQL refuses to run as root) and
/// returns its output; a failure fails the test with what it said.
fn run_as_postgres(program: &str, arguments: &[&str]) -> String {
    let output = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", program])
        .args(arguments)
        .output()
        .expect("runuser runs");
    assert!(
        output.status.success(),
        "{program} {arguments:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
