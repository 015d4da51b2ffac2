//! The ACME manager against pebble, Let's Encrypt's test CA: HTTP-01 and TLS-ALPN-01 orders,
//! a restart that reuses what is stored, renewal at two thirds of the lifetime, a CA outage,
//! and two replicas sharing a state directory.
//!
//! Pebble validates challenges by connecting to 127.0.0.1 on the ports the test gives it; a
//! small server here answers them from the `CertStore`, as the gateway's listeners do. The
//! tests skip when pebble is not installed, unless `HUSH_REQUIRE_PEBBLE=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use hush_config::{AcmeChallenge, AcmeConfig, CertificateConfig};
use hush_gateway::acme::{AcmeEvent, AcmeManager, AcmeTimings, Source, Stored};
use hush_gateway::certs::{ACME_TLS_ALPN, CertStore};
use hush_test_support::{Pebble, PebbleOptions};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

const HOST: &str = "shop.example.com";

// === the challenge server ===

/// Answers pebble's validations from the stores, as the gateway's listeners do: HTTP-01 on
/// one port, TLS (with `acme-tls/1`) on another, resolving from the first store.
struct ChallengeServer {
    stores: Stores,
    http_port: u16,
    tls_port: u16,
    /// Every HTTP-01 token pebble asked for.
    tokens: Arc<Mutex<Vec<String>>>,
    /// Every server name of an `acme-tls/1` handshake.
    alpn: Arc<Mutex<Vec<String>>>,
    shutdown: CancellationToken,
}

impl ChallengeServer {
    async fn start(stores: Vec<Arc<CertStore>>) -> Self {
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let tls = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let stores = Stores(Arc::new(Mutex::new(stores)));
        let server = Self {
            stores: stores.clone(),
            http_port: http.local_addr().expect("a loopback port").port(),
            tls_port: tls.local_addr().expect("a loopback port").port(),
            tokens: Arc::default(),
            alpn: Arc::default(),
            shutdown: CancellationToken::new(),
        };
        let (tokens, shutdown) = (server.tokens.clone(), server.shutdown.clone());
        let http_stores = stores.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = tokio::select! {
                    accepted = http.accept() => accepted.expect("accepting on loopback"),
                    () = shutdown.cancelled() => return,
                };
                let stores = http_stores.clone();
                let tokens = tokens.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or_default();
                    let answer =
                        path.strip_prefix("/.well-known/acme-challenge/")
                            .and_then(|token| {
                                tokens
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push(token.to_string());
                                stores.all().iter().find_map(|s| s.http01(token))
                            });
                    let response = match answer {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("test setup")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(stores));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (alpn, shutdown) = (server.alpn.clone(), server.shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (socket, _) = tokio::select! {
                    accepted = tls.accept() => accepted.expect("accepting on loopback"),
                    () = shutdown.cancelled() => return,
                };
                let acceptor = acceptor.clone();
                let alpn = alpn.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(socket).await {
                        let (_, connection) = stream.get_ref();
                        if connection.alpn_protocol() == Some(ACME_TLS_ALPN) {
                            let name = connection.server_name().unwrap_or_default().to_string();
                            alpn.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(name);
                        }
                    }
                });
            }
        });
        server
    }

    /// Answers from `stores` from now on (a restarted gateway's).
    fn serve(&self, stores: Vec<Arc<CertStore>>) {
        *self.stores.0.lock().unwrap_or_else(PoisonError::into_inner) = stores;
    }

    /// The distinct tokens pebble asked for (it may ask for one more than once).
    fn tokens(&self) -> Vec<String> {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tokens.sort();
        tokens.dedup();
        tokens
    }
}

/// The stores the challenge server answers from; TLS resolves from the first.
#[derive(Clone, Debug)]
struct Stores(Arc<Mutex<Vec<Arc<CertStore>>>>);

impl Stores {
    fn all(&self) -> Vec<Arc<CertStore>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for Stores {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let first = self.all().first()?.clone();
        first.resolve(hello)
    }
}

impl Drop for ChallengeServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts any certificate: the test looks at what it is given, not whether it is trusted.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    // Signatures are not checked either: webpki would refuse to parse a TLS-ALPN-01
    // challenge certificate (its critical acmeIdentifier extension), which the test wants to
    // see served or not.
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf served on `port` for `host` with `alpn`, or `None` when the handshake fails.
async fn served_leaf(port: u16, host: &str, alpn: &[u8]) -> Option<CertificateDer<'static>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("test setup")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("test setup");
    let name = ServerName::try_from(host.to_string()).expect("test setup");
    let stream = connector.connect(name, socket).await.ok()?;
    stream.get_ref().1.peer_certificates()?.first().cloned()
}

// === helpers ===

fn certificate(hosts: &[&str]) -> CertificateConfig {
    CertificateConfig {
        hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
        files: None,
        acme: true,
    }
}

fn acme_config(pebble: &Pebble, state_dir: &Path, challenge: AcmeChallenge) -> AcmeConfig {
    AcmeConfig {
        directory: pebble.directory_url(),
        contact: vec!["mailto:ops@example.com".to_string()],
        accept_terms_of_service: true,
        challenge,
        state_dir: state_dir.to_path_buf(),
        directory_ca: Some(pebble.root_ca_pem().to_path_buf()),
    }
}

fn timings() -> AcmeTimings {
    let mut timings = AcmeTimings::default();
    timings.request = Duration::from_secs(10);
    timings.validation = Duration::from_secs(30);
    timings.order = Duration::from_secs(60);
    timings.backoff_min = Duration::from_millis(200);
    timings.backoff_max = Duration::from_secs(1);
    timings.poll = Duration::from_millis(200);
    timings
}

struct Running {
    store: Arc<CertStore>,
    events: Receiver<AcmeEvent>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(
        config: &AcmeConfig,
        certificates: &[CertificateConfig],
        store: Arc<CertStore>,
    ) -> Self {
        let mut manager = AcmeManager::new(config, certificates, store.clone())
            .expect("test setup")
            .with_timings(timings());
        let events = manager.events();
        manager.load_stored();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(manager.run(shutdown.clone()));
        Self {
            store,
            events,
            shutdown,
            task,
        }
    }

    /// The next event, within `within`.
    async fn next(&mut self, within: Duration, pebble: &Pebble) -> AcmeEvent {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => panic!("events: {e}"),
            Err(_) => panic!("no ACME event within {within:?}\n{}", pebble.log()),
        }
    }

    /// Waits for the next installation, failing on a failed order.
    async fn installed(&mut self, pebble: &Pebble) -> (Source, SystemTime, SystemTime) {
        let (_, source, not_after, renew_at) = self.installed_named(pebble).await;
        (source, not_after, renew_at)
    }

    /// As [`Self::installed`], with the certificate's name.
    async fn installed_named(
        &mut self,
        pebble: &Pebble,
    ) -> (String, Source, SystemTime, SystemTime) {
        loop {
            match self.next(Duration::from_secs(60), pebble).await {
                AcmeEvent::Installed {
                    name,
                    source,
                    not_after,
                    renew_at,
                } => return (name.to_string(), source, not_after, renew_at),
                AcmeEvent::Failed { error, .. } => {
                    panic!("the order failed: {error}\n{}", pebble.log())
                }
                _ => {}
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the manager stops on shutdown")
            .expect("test setup");
    }
}

/// Issuer and DNS names of a DER certificate.
fn facts(der: &[u8]) -> (String, Vec<String>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("test setup");
    let names = cert
        .subject_alternative_name()
        .expect("test setup")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (cert.issuer().to_string(), names)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("test setup")
        .permissions()
        .mode()
        & 0o777
}

/// The served leaf for `name` in `store`, as DER.
fn store_leaf(store: &CertStore, name: &str) -> CertificateDer<'static> {
    store.current(name).expect("served").key.cert[0].clone()
}

fn start_pebble(server: &ChallengeServer, validity: Option<Duration>) -> Option<Pebble> {
    Pebble::start(PebbleOptions {
        http_port: server.http_port,
        tls_port: server.tls_port,
        certificate_validity: validity,
    })
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_a_certificate_by_http01() {
    let certificates = [certificate(&[HOST, "www.example.com"])];
    let store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![store.clone()]).await;
    let Some(pebble) = start_pebble(&server, None) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let state_dir = root.path().join("acme");
    let config = acme_config(&pebble, &state_dir, AcmeChallenge::Http01);
    let mut running = Running::start(&config, &certificates, store.clone());
    let (source, _, _) = running.installed(&pebble).await;
    assert_eq!(source, Source::Ordered);

    let (issuer, names) = facts(&store_leaf(&store, HOST));
    assert!(issuer.contains("Pebble"), "issued by pebble: {issuer}");
    assert_eq!(names, [HOST, "www.example.com"]);
    // Pebble validated both hosts by HTTP-01, and the answers are gone.
    let tokens = server.tokens();
    assert!(tokens.len() >= 2, "one validation per host: {tokens:?}");
    for token in &tokens {
        assert_eq!(
            store.http01(token),
            None,
            "the answer to {token} is withdrawn"
        );
    }
    assert!(server.alpn.lock().unwrap().is_empty());
    // The TLS listener serves it to an ordinary client.
    let leaf = served_leaf(server.tls_port, "www.example.com", b"h2").await;
    assert_eq!(leaf, Some(store_leaf(&store, HOST)));
    // Stored privately.
    assert_eq!(mode(&state_dir), 0o700);
    assert_eq!(mode(&state_dir.join("account.json")), 0o600);
    assert_eq!(mode(&state_dir.join("shop.example.com.pem")), 0o600);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtains_a_certificate_by_tls_alpn01() {
    let certificates = [certificate(&[HOST])];
    let store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![store.clone()]).await;
    let Some(pebble) = start_pebble(&server, None) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let config = acme_config(&pebble, root.path(), AcmeChallenge::TlsAlpn01);
    let mut running = Running::start(&config, &certificates, store.clone());
    let (source, _, _) = running.installed(&pebble).await;
    assert_eq!(source, Source::Ordered);
    let (issuer, names) = facts(&store_leaf(&store, HOST));
    assert!(issuer.contains("Pebble"), "issued by pebble: {issuer}");
    assert_eq!(names, [HOST]);
    assert!(
        server.alpn.lock().unwrap().iter().any(|n| n == HOST),
        "pebble validated by acme-tls/1"
    );
    assert!(server.tokens().is_empty(), "no HTTP-01");
    // The challenge certificate is withdrawn: an acme-tls/1 handshake now gets nothing.
    assert_eq!(
        served_leaf(server.tls_port, HOST, ACME_TLS_ALPN).await,
        None
    );
    assert!(
        served_leaf(server.tls_port, HOST, b"http/1.1")
            .await
            .is_some()
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_reuses_the_stored_account_and_certificate() {
    let certificates = [certificate(&[HOST])];
    let store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![store.clone()]).await;
    let Some(pebble) = start_pebble(&server, None) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let config = acme_config(&pebble, root.path(), AcmeChallenge::Http01);
    let mut first = Running::start(&config, &certificates, store.clone());
    first.installed(&pebble).await;
    let leaf = store_leaf(&store, HOST);
    first.stop().await;
    let account = std::fs::read(root.path().join("account.json")).unwrap();
    let validations = server.tokens().len();

    // A new process: a fresh store, the same state directory, and a second certificate.
    let certificates = [certificate(&[HOST]), certificate(&["api.example.com"])];
    let store = Arc::new(CertStore::new(&certificates));
    server.serve(vec![store.clone()]);
    let mut manager = AcmeManager::new(&config, &certificates, store.clone())
        .unwrap()
        .with_timings(timings());
    let loaded = manager.load_stored();
    assert!(matches!(loaded[0].1, Stored::Installed(_)), "{loaded:?}");
    assert_eq!(loaded[1].1, Stored::Missing);
    assert_eq!(
        store_leaf(&store, HOST),
        leaf,
        "served before run, as stored"
    );
    let events = manager.events();
    let shutdown = CancellationToken::new();
    let mut second = Running {
        store: store.clone(),
        events,
        shutdown: shutdown.clone(),
        task: tokio::spawn(manager.run(shutdown)),
    };
    // The new certificate is ordered, with the stored account; the stored one is not.
    let (name, source, _, _) = second.installed_named(&pebble).await;
    assert_eq!(
        (name.as_str(), source),
        ("api.example.com", Source::Ordered)
    );
    assert_eq!(
        server.tokens().len(),
        validations + 1,
        "one more validation only"
    );
    assert_eq!(store_leaf(&second.store, HOST), leaf);
    assert_eq!(
        std::fs::read(root.path().join("account.json")).unwrap(),
        account,
        "the account is reused, not created again"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_at_two_thirds_of_the_lifetime() {
    let certificates = [certificate(&[HOST])];
    let store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![store.clone()]).await;
    let lifetime = Duration::from_secs(12);
    let Some(pebble) = start_pebble(&server, Some(lifetime)) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let config = acme_config(&pebble, root.path(), AcmeChallenge::Http01);
    let mut running = Running::start(&config, &certificates, store.clone());
    let (_, not_after, renew_at) = running.installed(&pebble).await;
    let first = store.current(HOST).unwrap();
    let life = not_after.duration_since(first.not_before).unwrap();
    assert!(
        life <= lifetime && life >= lifetime - Duration::from_secs(2),
        "{life:?}"
    );
    let two_thirds = first.not_before + life * 2 / 3;
    assert!(
        renew_at >= two_thirds && renew_at <= two_thirds + life.mul_f64(0.04),
        "renewal planned at two thirds of the lifetime plus up to 4 %"
    );

    let (source, _, _) = running.installed(&pebble).await;
    let renewed_at = SystemTime::now();
    assert_eq!(source, Source::Ordered);
    // Not before its time (x509 times are whole seconds: a second of slack), and before the
    // old certificate expired.
    assert!(
        renewed_at + Duration::from_secs(1) >= renew_at,
        "renewed {:?} early",
        renew_at.duration_since(renewed_at)
    );
    assert!(renewed_at < not_after, "renewed before expiry");
    assert_ne!(
        store_leaf(&store, HOST),
        first.key.cert[0],
        "a new certificate"
    );
    running.stop().await;
}

/// A key and self-signed certificate for `hosts`, valid from `age` ago for `lifetime`, in
/// the form the manager stores (key, then chain).
fn stored_pem(hosts: &[&str], age: Duration, lifetime: Duration) -> String {
    let key = rcgen::KeyPair::generate().expect("test setup");
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| (*h).to_string()).collect::<Vec<_>>())
            .expect("test setup");
    params.not_before = time::OffsetDateTime::now_utc() - age;
    params.not_after = params.not_before + lifetime;
    let cert = params.self_signed(&key).expect("test setup");
    format!("{}{}", key.serialize_pem(), cert.pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_keeps_the_served_certificate_until_the_ca_returns() {
    let certificates = [certificate(&[HOST])];
    let store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![store.clone()]).await;
    let Some(mut pebble) = start_pebble(&server, None) else {
        return;
    };
    pebble.stop();
    let root = tempfile::tempdir().unwrap();
    // A stored certificate 50 minutes into its hour: due for renewal.
    std::fs::write(
        root.path().join("shop.example.com.pem"),
        stored_pem(
            &[HOST],
            Duration::from_secs(50 * 60),
            Duration::from_secs(3600),
        ),
    )
    .unwrap();
    let config = acme_config(&pebble, root.path(), AcmeChallenge::Http01);
    let mut running = Running::start(&config, &certificates, store.clone());
    let stored = store_leaf(&store, HOST);
    let mut failures = 0;
    let started = Instant::now();
    while failures < 3 {
        match running.next(Duration::from_secs(30), &pebble).await {
            AcmeEvent::Failed { error, .. } => {
                assert!(error.contains("create the ACME account"), "{error}");
                failures += 1;
            }
            // What load_stored installed.
            AcmeEvent::Installed {
                source: Source::Stored,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            store_leaf(&store, HOST),
            stored,
            "the stored certificate is still served"
        );
    }
    // 200 ms, 400 ms, less up to a quarter each: the manager backs off rather than spins.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    pebble.restart();
    loop {
        match running.next(Duration::from_secs(60), &pebble).await {
            AcmeEvent::Installed { source, .. } => {
                assert_eq!(source, Source::Ordered);
                break;
            }
            AcmeEvent::Failed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let (issuer, _) = facts(&store_leaf(&store, HOST));
    assert!(issuer.contains("Pebble"), "{issuer}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_sharing_a_state_dir_order_once() {
    let certificates = [certificate(&[HOST])];
    let first_store = Arc::new(CertStore::new(&certificates));
    let second_store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![first_store.clone(), second_store.clone()]).await;
    let Some(pebble) = start_pebble(&server, None) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let config = acme_config(&pebble, root.path(), AcmeChallenge::Http01);
    let mut first = Running::start(&config, &certificates, first_store.clone());
    let mut second = Running::start(&config, &certificates, second_store.clone());
    let (a, b) = tokio::join!(first.installed(&pebble), second.installed(&pebble));
    let mut sources = [a.0, b.0];
    sources.sort_by_key(|s| *s == Source::Stored);
    assert_eq!(
        sources,
        [Source::Ordered, Source::Stored],
        "one ordered, one read its file"
    );
    assert_eq!(server.tokens().len(), 1, "one validation: one order");
    assert_eq!(
        store_leaf(&first_store, HOST),
        store_leaf(&second_store, HOST)
    );
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ca_forgot_is_created_again() {
    let certificates = [certificate(&[HOST])];
    let store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![store.clone()]).await;
    let Some(mut pebble) = start_pebble(&server, None) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let config = acme_config(&pebble, root.path(), AcmeChallenge::Http01);
    let mut first = Running::start(&config, &certificates, store.clone());
    first.installed(&pebble).await;
    first.stop().await;
    let account = std::fs::read(root.path().join("account.json")).unwrap();

    // Pebble forgets every account when it restarts, as a CA may deactivate one.
    pebble.restart();
    let certificates = [certificate(&[HOST]), certificate(&["api.example.com"])];
    let store = Arc::new(CertStore::new(&certificates));
    server.serve(vec![store.clone()]);
    let mut second = Running::start(&config, &certificates, store);
    let mut refused = None;
    loop {
        match second.next(Duration::from_secs(60), &pebble).await {
            AcmeEvent::Failed { error, .. } => refused = Some(error),
            AcmeEvent::Installed {
                name,
                source: Source::Ordered,
                ..
            } => {
                assert_eq!(&*name, "api.example.com");
                break;
            }
            _ => {}
        }
    }
    let refused = refused.expect("the stored account was tried first");
    assert!(refused.contains("accountDoesNotExist"), "{refused}");
    assert_ne!(
        std::fs::read(root.path().join("account.json")).unwrap(),
        account,
        "a new account is stored"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_certificate_is_reported_and_ordered_again() {
    let certificates = [certificate(&[HOST])];
    let store = Arc::new(CertStore::new(&certificates));
    let server = ChallengeServer::start(vec![store.clone()]).await;
    let Some(pebble) = start_pebble(&server, None) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("shop.example.com.pem");
    std::fs::write(&file, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n").unwrap();
    let config = acme_config(&pebble, root.path(), AcmeChallenge::Http01);
    let mut manager = AcmeManager::new(&config, &certificates, store.clone())
        .unwrap()
        .with_timings(timings());
    let loaded = manager.load_stored();
    assert!(matches!(&loaded[0].1, Stored::Unusable(_)), "{loaded:?}");
    let events = manager.events();
    let shutdown = CancellationToken::new();
    let mut running = Running {
        store: store.clone(),
        events,
        shutdown: shutdown.clone(),
        task: tokio::spawn(manager.run(shutdown)),
    };
    let (source, _, _) = running.installed(&pebble).await;
    assert_eq!(source, Source::Ordered);
    // The file is replaced by the new certificate, which a restart can serve.
    let stored = std::fs::read(&file).unwrap();
    let current = store.current(HOST).unwrap();
    let again = hush_gateway::certs::Served::from_pem(
        HOST,
        &[HOST.to_string()],
        &stored,
        &stored,
        hush_gateway::certs::Origin::Acme,
    )
    .unwrap();
    assert_eq!(again.key.cert[0], current.key.cert[0]);
    running.stop().await;
}
