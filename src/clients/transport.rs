//! The HTTP clients heistd calls with, and their TLS: every build speaks
//! HTTPS (rustls with `ring`), trusting the system's CA store plus the CA
//! files a client is given (`llm.ca_file` and the model endpoints'). There
//! is no way to turn certificate checking off.
//!
//! [`HttpClients`] builds one client (one connection pool) per set of CA
//! files, so the services that trust the same set share it. [`builder`]
//! is the only way the crate starts a reqwest client: reqwest is built
//! without a crypto provider of its own (`rustls-no-provider`), so a bare
//! `reqwest::Client::new()` panics; every client gets its TLS from here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::error::error_chain;
use super::ClientBuildError;
use crate::config::tls;

/// A reqwest client builder whose TLS trusts the system's CA store and
/// `ca_files` (PEM). The error names a CA file that cannot be read.
pub fn builder(ca_files: &[PathBuf]) -> Result<reqwest::ClientBuilder, ClientBuildError> {
    let config = tls::client_config(ca_files).map_err(|message| ClientBuildError { message })?;
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
}

/// The services' client trusting the system's CA store only.
pub fn http_client() -> Result<reqwest::Client, ClientBuildError> {
    http_client_trusting(&[])
}

/// The services' client trusting `ca_files` too: heistd's user agent and
/// a 30 s idle-connection timeout. Fails where the TLS setup or the
/// resolver cannot be built (where `reqwest::Client::new()` would panic).
pub fn http_client_trusting(ca_files: &[PathBuf]) -> Result<reqwest::Client, ClientBuildError> {
    builder(ca_files)?
        .user_agent(concat!("heistd/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| ClientBuildError {
            message: error_chain(&error),
        })
}

/// The services' clients, one per set of CA files: services trusting the
/// same CAs share a client and its connection pool.
#[derive(Default)]
pub struct HttpClients {
    built: parking_lot::Mutex<HashMap<Vec<PathBuf>, reqwest::Client>>,
}

impl HttpClients {
    /// The client trusting the system's CA store and `ca_files` (in any
    /// order, repeats ignored), built on first use.
    pub fn client(&self, ca_files: &[PathBuf]) -> Result<reqwest::Client, ClientBuildError> {
        let mut key = ca_files.to_vec();
        key.sort();
        key.dedup();
        let mut built = self.built.lock();
        if let Some(client) = built.get(&key) {
            return Ok(client.clone());
        }
        let client = http_client_trusting(&key)?;
        built.insert(key, client.clone());
        Ok(client)
    }

    /// How many distinct clients (connection pools) were built.
    pub fn len(&self) -> usize {
        self.built.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_trusting_the_same_cas_share_one_client() {
        let clients = HttpClients::default();
        clients.client(&[]).expect("system roots only");
        clients.client(&[]).expect("again");
        assert_eq!(clients.len(), 1);
        let error = clients
            .client(&[PathBuf::from("/nonexistent/ca.pem")])
            .expect_err("a missing CA file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        assert_eq!(clients.len(), 1, "a failed build is not kept");
    }
}
