//! The CLI's client of a running daemon's admin API: the commands that
//! steer a daemon (`sessions cancel`, `schedules ...`, `sessions watch`,
//! `status`) find it at the config's `daemon.admin_address` and send the
//! admin token the daemon itself reads (`daemon.admin_token_file`, the
//! `credentials` folder beside the config, `daemon.admin_token_env`), so an
//! operator never pastes a token.
//!
//! It only speaks HTTP to the daemon; what a command prints is its own.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::CliError;

/// How long one admin request may take (an event stream sets its own).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon's admin API, as the config names it.
pub struct Remote {
    /// `http://ADDRESS`, no trailing slash.
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Remote {
    /// The daemon the config at `path` (or the system config, or the
    /// built-in defaults) describes; `admin_address` overrides the config's.
    pub fn from_config(path: Option<&Path>, admin_address: Option<&str>) -> Result<Self, CliError> {
        let (config, _) = super::load_config(path)?;
        let address = admin_address.map_or(config.daemon.admin_address.clone(), str::to_string);
        let token = config
            .daemon
            .admin_token
            .as_ref()
            .map(|token| token.expose().to_string());
        Self::new(&address, token)
    }

    /// The daemon at `address` (`host:port`), with `token` as the bearer.
    pub fn new(address: &str, token: Option<String>) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| CliError::Remote(format!("cannot build an HTTP client: {error}")))?;
        Ok(Self {
            base: format!("http://{}", address.trim_end_matches('/')),
            token,
            http,
        })
    }

    /// The full URL of an admin API `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, with the bearer token when there is one; the
    /// caller sets a timeout (a stream's is its own).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET path`, read as JSON.
    pub async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, CliError> {
        let request = self.request(reqwest::Method::GET, path);
        self.send(path, request).await
    }

    /// `POST path` with a JSON body, the answer read as JSON.
    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, CliError> {
        let request = self.request(reqwest::Method::POST, path).json(body);
        self.send(path, request).await
    }

    /// `GET path` as a server-sent event stream, resuming after
    /// `last_event_id`: the response, once its status is a success, for
    /// the caller to read as it comes (no overall timeout: a stream lasts).
    pub async fn stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, CliError> {
        let url = self.url(path);
        let mut request = self
            .request(reqwest::Method::GET, path)
            .header(reqwest::header::ACCEPT, crate::wire::events::CONTENT_TYPE);
        if let Some(id) = last_event_id {
            request = request.header(crate::wire::events::LAST_EVENT_ID, id);
        }
        let response = request
            .send()
            .await
            .map_err(|error| CliError::Remote(format!("no heistd answers at {url}: {error}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(refusal(&url, status, &body, self.token.is_some()));
        }
        Ok(response)
    }

    async fn send<R: DeserializeOwned>(
        &self,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<R, CliError> {
        let url = self.url(path);
        let response = request
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|error| CliError::Remote(format!("no heistd answers at {url}: {error}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| CliError::Remote(format!("{url}: reading the answer: {error}")))?;
        if !status.is_success() {
            return Err(refusal(&url, status, &body, self.token.is_some()));
        }
        serde_json::from_slice(&body)
            .map_err(|error| CliError::Remote(format!("{url}: unreadable answer: {error}")))
    }
}

/// The daemon's `{"error": ".."}` as a CLI error, with a hint when the
/// refusal is about the token.
fn refusal(url: &str, status: reqwest::StatusCode, body: &[u8], had_token: bool) -> CliError {
    let said = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let hint = match (status.as_u16(), had_token) {
        (401 | 403, false) => {
            " (no admin token found: set daemon.admin_token_file or the variable daemon.admin_token_env names)"
        }
        _ => "",
    };
    let message = format!("{url}: {status}: {said}{hint}");
    match status.as_u16() {
        400 | 401 | 403 | 404 | 409 | 429 => CliError::Usage(message),
        _ => CliError::Remote(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_url_status_and_the_daemons_reason() {
        let body = br#"{"error":"session s-1 has ended"}"#;
        let error = refusal("http://a/x", reqwest::StatusCode::CONFLICT, body, true);
        assert!(matches!(error, CliError::Usage(_)));
        let text = error.to_string();
        assert!(
            text.contains("http://a/x") && text.contains("409") && text.contains("has ended"),
            "{text}"
        );
        let error = refusal(
            "http://a/x",
            reqwest::StatusCode::UNAUTHORIZED,
            b"{}",
            false,
        );
        assert!(error.to_string().contains("admin_token_file"), "{error}");
        let error = refusal(
            "http://a/x",
            reqwest::StatusCode::BAD_GATEWAY,
            b"down",
            true,
        );
        assert!(matches!(error, CliError::Remote(_)) && error.to_string().contains("down"));
    }
}
