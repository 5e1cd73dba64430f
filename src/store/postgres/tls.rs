//! TLS for the PostgreSQL store's connections (`store.tls`), over rustls
//! with `tokio-postgres-rustls`, with libpq's meanings: `disable` sends
//! plain TCP; `require` encrypts and checks no certificate (the handshake's
//! signatures are still checked, so the session key is the server's);
//! `verify-full` checks the chain against the system's CA store and
//! `store.ca_file` and the certificate's name against the URL's host.
//!
//! The URL's own `sslmode` has been reconciled with `store.tls` by the
//! config's check; it is taken out of the URL here, since tokio-postgres
//! knows no `verify-full`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{tls, StoreConfig, StoreTls};

/// The connection settings `store` asks for: the URL without its
/// `sslmode`, the mode tokio-postgres negotiates, and the TLS connector.
pub(super) struct Connection {
    pub url: String,
    pub mode: StoreTls,
    pub ssl_mode: SslMode,
    pub connector: MakeRustlsConnect,
}

/// Reads `store.tls` (or what it defaults to) into a [`Connection`]. The
/// error names the key at fault.
pub(super) fn connection(store: &StoreConfig) -> Result<Connection, String> {
    let mode = store
        .tls_mode()
        .map_err(|(key, message)| format!("{key}: {message}"))?;
    let config = match mode {
        StoreTls::VerifyFull => tls::client_config(store.ca_file.as_slice())
            .map_err(|message| format!("store.ca_file: {message}"))?,
        // With `disable` no handshake happens; the connector is never used.
        StoreTls::Require | StoreTls::Disable => {
            let provider = tls::crypto_provider();
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|error| format!("TLS: {error}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        }
    };
    let ssl_mode = match mode {
        StoreTls::Disable => SslMode::Disable,
        StoreTls::Require | StoreTls::VerifyFull => SslMode::Require,
    };
    Ok(Connection {
        url: without_sslmode(&store.url),
        mode,
        ssl_mode,
        connector: MakeRustlsConnect::new(config),
    })
}

/// `url` with its `sslmode` taken out (the rest kept as written).
fn without_sslmode(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    if !parsed.query_pairs().any(|(key, _)| key == "sslmode") {
        return url.to_string();
    }
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(key, _)| key != "sslmode")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    parsed.to_string()
}

/// What a failed first connection says when a certificate was refused:
/// why, and the setting that fixes it.
pub(super) fn certificate_problem(error: &tokio_postgres::Error) -> Option<String> {
    let problem = tls::certificate_error(error)?;
    Some(format!(
        "store.tls = \"verify-full\": {}",
        tls::certificate_advice(problem, Some("store.ca_file"))
    ))
}

/// `store.tls = "require"`: any certificate, as libpq's `sslmode=require`
/// takes it; the handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url_and_the_rest_kept() {
        assert_eq!(
            without_sslmode("postgres://heistd@db:5432/heistd?sslmode=verify-full"),
            "postgres://heistd@db:5432/heistd"
        );
        assert_eq!(
            without_sslmode("postgres://heistd@db/heistd?application_name=x&sslmode=require"),
            "postgres://heistd@db/heistd?application_name=x"
        );
        assert_eq!(
            without_sslmode("postgres://heistd@db/heistd"),
            "postgres://heistd@db/heistd"
        );
    }
}
