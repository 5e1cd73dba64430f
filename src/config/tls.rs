//! TLS trust for every client heistd opens (the model client, the
//! PostgreSQL store): rustls with the `ring` crypto provider, trusting the
//! system's CA store (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`)
//! plus the CA files the config names (`llm.ca_file`, `store.ca_file`),
//! added to those roots, never replacing them. There is no way to turn
//! certificate checking off.
//!
//! The config checks a CA file at load ([`read_ca_file`], so a bad one is
//! a config error naming the key and the file); `clients` and `store`
//! build their TLS from [`client_config`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

/// The crypto every TLS connection of heistd uses: `ring` (see
/// ARCHITECTURE.md's dependency notes). Passed explicitly, never installed
/// as the process default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The certificates of a PEM file (one or more `BEGIN CERTIFICATE`
/// blocks), each checked to be usable as a trust anchor. The error names
/// the file and says what is wrong with it.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|error| format!("cannot read {shown}: {error}"))?;
    let mut certificates = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(&bytes) {
        let certificate =
            certificate.map_err(|error| format!("{shown} is not a valid PEM file: {error}"))?;
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    let mut roots = RootCertStore::empty();
    for (index, certificate) in certificates.iter().enumerate() {
        roots.add(certificate.clone()).map_err(|error| {
            format!(
                "{shown}: certificate {} is not a usable CA certificate: {error}",
                index + 1
            )
        })?;
    }
    Ok(certificates)
}

/// The roots a TLS client trusts: the system's CA store, then every
/// certificate of `ca_files`. An empty system store (a minimal image
/// without `ca-certificates`) is no error: a server whose CA is in a CA
/// file is still reached, and any other is refused as untrusted.
pub fn trust_roots(ca_files: &[PathBuf]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(system_certificates().iter().cloned());
    if added == 0 {
        tracing::debug!("no CA certificates in the system store (ca-certificates not installed?)");
    }
    for path in ca_files {
        for certificate in read_ca_file(path)? {
            roots
                .add(certificate)
                .map_err(|error| format!("{}: {error}", path.display()))?;
        }
    }
    Ok(roots)
}

/// The system's CA certificates, read once per process (every file of a
/// Debian `/etc/ssl/certs` parsed takes tens of milliseconds, and tests
/// build many clients); a change to the store is seen at the next start.
fn system_certificates() -> &'static [CertificateDer<'static>] {
    static SYSTEM: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    SYSTEM.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// A rustls client config that checks the server's chain against
/// [`trust_roots`] and its name against the one dialled.
pub fn client_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, String> {
    let roots = trust_roots(ca_files)?;
    Ok(
        rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS: {error}"))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The certificate problem behind a failed connection, if that is why it
/// failed: rustls' verdict, found among the error's causes. An I/O error
/// carries it inside (tokio-rustls' in the connector's), and its
/// `source()` skips what it wraps, so I/O errors are looked into too.
pub fn certificate_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::CertificateError> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(problem) = wrapped_certificate_error(error, 4) {
            return Some(problem);
        }
        cause = error.source();
    }
    None
}

/// `error` itself as rustls' certificate verdict, or what the I/O errors
/// around it hold, `depth` of them deep at most.
fn wrapped_certificate_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
    depth: u8,
) -> Option<&'a rustls::CertificateError> {
    if let Some(rustls::Error::InvalidCertificate(problem)) = error.downcast_ref::<rustls::Error>()
    {
        return Some(problem);
    }
    let inner = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    wrapped_certificate_error(inner, depth.checked_sub(1)?)
}

/// What a refused certificate means and what fixes it, naming `ca_key`
/// (the CA file setting of the client that refused it, if it has one).
pub fn certificate_advice(problem: &rustls::CertificateError, ca_key: Option<&str>) -> String {
    use rustls::CertificateError as Problem;
    match problem {
        Problem::NotValidForName | Problem::NotValidForNameContext { .. } => format!(
            "the server's TLS certificate is not valid for the host name in the URL ({problem}): \
             use a name the certificate lists, or give the server a certificate for this one"
        ),
        Problem::Expired | Problem::ExpiredContext { .. } => {
            format!("the server's TLS certificate has expired ({problem}): renew it on the server")
        }
        Problem::NotValidYet | Problem::NotValidYetContext { .. } => {
            format!("the server's TLS certificate is not valid yet ({problem}): check the clocks")
        }
        _ => match ca_key {
            Some(ca_key) => format!(
                "the server's TLS certificate is not trusted ({problem}): its CA is in neither \
                 the system's CA store nor {ca_key}; add its CA with {ca_key} (a PEM file)"
            ),
            None => format!(
                "the server's TLS certificate is not trusted ({problem}): its CA is not in \
                 the system's CA store; add it there (update-ca-certificates)"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_empty_or_not_a_certificate_is_refused_naming_it() {
        let directory = tempfile::tempdir().expect("temp dir");
        let missing = directory.path().join("missing.pem");
        let error = read_ca_file(&missing).expect_err("missing");
        assert!(
            error.contains("missing.pem") && error.contains("cannot read"),
            "{error}"
        );

        let empty = directory.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let error = read_ca_file(&empty).expect_err("empty");
        assert!(
            error.contains("empty.pem") && error.contains("no certificate"),
            "{error}"
        );

        let garbage = directory.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let error = read_ca_file(&garbage).expect_err("not a certificate");
        assert!(error.contains("garbage.pem"), "{error}");
    }
}
