//! TLS from the default build, against servers with a private CA made in
//! the test (rcgen): an `https://` model endpoint (the model double behind
//! a TLS-terminating front, as a reverse proxy fronts llama.cpp) reached
//! with the CA in `llm.ca_file` and refused without it, naming the key;
//! and a throwaway PostgreSQL server with `ssl = on` that accepts TLS only,
//! reached with `store.tls = "verify-full"` and refused without the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heistd::config::{StoreBackend, StoreConfig, StoreTls};
use heistd::heist::RunOptions;
use heistd::store::{NewSession, SessionStatus, StoreHandle};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::model_double::{Behaviour, ModelDouble, MODEL};
use crate::support::{base_config, TestStack};

/// A CA of the test's own and a server certificate it signed for
/// `127.0.0.1` and `localhost`, written as PEM files in a temp directory.
struct TestPki {
    directory: tempfile::TempDir,
    server_certificate: CertificateDer<'static>,
    server_key: KeyPair,
}

impl TestPki {
    fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "heistd test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server_key = KeyPair::generate().expect("server key");
        let server_certificate = server
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let directory = tempfile::tempdir().expect("temp dir");
        std::fs::write(directory.path().join("ca.pem"), ca.pem()).expect("write CA");
        std::fs::write(
            directory.path().join("server.crt"),
            server_certificate.pem(),
        )
        .expect("write certificate");
        std::fs::write(
            directory.path().join("server.key"),
            server_key.serialize_pem(),
        )
        .expect("write key");
        Self {
            directory,
            server_certificate: server_certificate.der().clone(),
            server_key,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.directory.path().join("ca.pem")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    fn server_config(&self) -> rustls::ServerConfig {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.serialize_der()));
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![self.server_certificate.clone()], key)
        .expect("server certificate and key")
    }
}

/// A TLS-terminating front on 127.0.0.1 for the plain HTTP server at
/// `upstream` (`host:port`): each connection's handshake is real rustls,
/// its bytes are passed through. Returns the front's `host:port`.
async fn tls_front(config: rustls::ServerConfig, upstream: String) -> String {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // A refused handshake (the client distrusts the
                // certificate) ends here, as at a real front.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    address
}

/// The model double behind a TLS front: its `https://` base URL.
async fn https_model(pki: &TestPki) -> (ModelDouble, String) {
    let double = ModelDouble::start(Behaviour::default()).await;
    let upstream = double
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let front = tls_front(pki.server_config(), upstream).await;
    (double, format!("https://{front}/v1"))
}

#[tokio::test]
async fn an_https_model_with_its_ca_in_llm_ca_file_plays_a_whole_heist() {
    let pki = TestPki::new();
    let (double, url) = https_model(&pki).await;
    let mut config = base_config();
    config.llm.ca_file = Some(pki.ca_file());
    let stack = TestStack::start_with_model(config, Some((url, MODEL.to_string()))).await;
    let report = stack
        .stack
        .runner(stack.store.clone())
        .expect("runner")
        .run(RunOptions::new(4, 7), None)
        .await
        .expect("run finishes");
    assert_eq!(
        report.status,
        SessionStatus::Completed,
        "{:?}",
        report.failure_reason
    );
    assert_eq!(report.failed_turns, 0);
    assert!(
        double.chat_calls() >= 4,
        "every turn reached the model through TLS: {} calls",
        double.chat_calls()
    );
}

#[tokio::test]
async fn an_https_model_whose_ca_is_not_trusted_is_refused_naming_llm_ca_file() {
    let pki = TestPki::new();
    let (double, url) = https_model(&pki).await;
    let mut config = base_config();
    config.llm.base_url = url;
    config.llm.model = MODEL.into();
    config.llm.policy.max_attempts = 1;
    let llm = heistd::clients::Clients::from_config(&config)
        .expect("clients")
        .llm;
    let error = llm
        .preflight_chat()
        .await
        .expect_err("an unknown CA is refused")
        .to_string();
    assert!(
        error.contains("not trusted") && error.contains("add its CA with llm.ca_file"),
        "{error}"
    );
    assert_eq!(
        double.chat_calls(),
        0,
        "nothing was sent to an unverified server"
    );
}

/// Certificate, key and a `hostssl`-only `pg_hba.conf` for a throwaway
/// server's data directory: it then accepts TLS connections only.
fn serve_tls_only(pki: &TestPki, data: &Path) {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(data).expect("data directory").uid();
    for (name, mode) in [("server.crt", 0o644), ("server.key", 0o600)] {
        let target = data.join(name);
        std::fs::copy(pki.file(name), &target).expect("copy into the data directory");
        chown(&target, Some(owner), None).expect("chown to postgres");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
    conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(data.join("postgresql.conf"), conf).expect("postgresql.conf");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .expect("pg_hba.conf");
}

fn postgres_store(url: &str, tls: StoreTls, ca_file: Option<PathBuf>) -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Postgres,
        url: url.to_string(),
        tls: Some(tls),
        ca_file,
        pool_size: 2,
        ..StoreConfig::default()
    }
}

#[tokio::test]
#[ignore = "needs root and PostgreSQL's server programs (initdb; Debian's postgresql package)"]
async fn postgres_with_verify_full_checks_the_servers_certificate() {
    let pki = TestPki::new();
    let server = crate::postgres::ThrowawayServer::start_with("postgres_tls", |data| {
        serve_tls_only(&pki, data)
    });
    let cluster = crate::postgres::TestDatabase::cluster_config("tls", 15_000);

    let verified = postgres_store(&server.url(), StoreTls::VerifyFull, Some(pki.ca_file()));
    verified.validate().expect("a valid [store]");
    let store = StoreHandle::open_configured(&verified, &cluster)
        .await
        .expect("verify-full with the CA opens the store");
    let session_id = store
        .create_session(NewSession {
            scenario: "bank".into(),
            seed: 1,
            planned_turns: 2,
            schedule: None,
            scheduled_time: None,
            trigger: None,
        })
        .await
        .expect("writes over TLS");
    let detail = store.session(&session_id).await.expect("reads it back");
    assert_eq!(detail.session.session_id, session_id);

    // Without the CA the certificate is refused, saying what to set.
    let unverified = postgres_store(&server.url(), StoreTls::VerifyFull, None);
    let error = StoreHandle::open_configured(&unverified, &cluster)
        .await
        .err()
        .expect("an unknown CA is refused")
        .to_string();
    assert!(
        error.contains("not trusted") && error.contains("store.ca_file"),
        "{error}"
    );

    // `require` encrypts without checking the chain, as libpq's does.
    let required = postgres_store(&server.url(), StoreTls::Require, None);
    StoreHandle::open_configured(&required, &cluster)
        .await
        .expect("require opens without the CA");

    // The server takes TLS only, so the connections above were encrypted.
    let plain = postgres_store(&server.url(), StoreTls::Disable, None);
    let error = StoreHandle::open_configured(&plain, &cluster)
        .await
        .err()
        .expect("plain TCP is refused by a hostssl-only server")
        .to_string();
    assert!(error.contains("no encryption"), "{error}");
}
