//! The manager without a CA: stored certificates, failures that keep what is served, and the
//! lock between replicas. The exchanges with a real CA are in `tests/acme_pebble.rs`.

use std::path::Path;

use hush_config::{AcmeChallenge, AcmeConfig, CertificateConfig};
use tokio::sync::broadcast::Receiver;

use super::*;

const HOST: &str = "shop.example.com";

fn certificates() -> Vec<CertificateConfig> {
    vec![CertificateConfig {
        hosts: vec![HOST.to_string(), "www.example.com".to_string()],
        files: None,
        acme: true,
    }]
}

/// A CA that is not there: nothing listens on the port.
fn closed_directory() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("https://127.0.0.1:{port}/dir")
}

fn config(state_dir: &Path) -> AcmeConfig {
    AcmeConfig {
        directory: closed_directory(),
        contact: vec![],
        accept_terms_of_service: true,
        challenge: AcmeChallenge::Http01,
        state_dir: state_dir.to_path_buf(),
        directory_ca: None,
    }
}

fn quick() -> AcmeTimings {
    AcmeTimings {
        request: Duration::from_secs(2),
        validation: Duration::from_secs(2),
        order: Duration::from_secs(5),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        poll: Duration::from_millis(100),
    }
}

/// A key and self-signed chain for `names` valid from `age` ago for `lifetime`, in the
/// stored file's form (key first).
fn stored_pem(names: &[&str], age: Duration, lifetime: Duration) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| (*s).to_string()).collect::<Vec<_>>())
            .unwrap();
    let not_before = time::OffsetDateTime::now_utc() - age;
    params.not_before = not_before;
    params.not_after = not_before + lifetime;
    let cert = params.self_signed(&key).unwrap();
    format!("{}{}", key.serialize_pem(), cert.pem()).into_bytes()
}

const HOUR: Duration = Duration::from_secs(3600);

fn manager(dir: &Path) -> (AcmeManager, Arc<CertStore>) {
    let store = Arc::new(CertStore::new(&certificates()));
    let manager = AcmeManager::new(&config(dir), &certificates(), store.clone())
        .unwrap()
        .with_timings(quick());
    (manager, store)
}

async fn next_event(events: &mut Receiver<AcmeEvent>) -> AcmeEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("the manager is running")
}

#[test]
fn stored_certificates_are_installed_and_broken_ones_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut manager, store) = manager(dir.path());
    assert_eq!(
        manager.load_stored(),
        [(Arc::from(HOST), Stored::Missing)],
        "an empty directory"
    );

    let file = dir.path().join("shop.example.com.pem");
    std::fs::write(&file, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let mut events = manager.events();
    let loaded = manager.load_stored();
    assert!(
        matches!(&loaded[0].1, Stored::Unusable(e) if e.contains("PEM")),
        "{loaded:?}"
    );
    assert!(matches!(
        events.try_recv(),
        Ok(AcmeEvent::StoredUnusable { .. })
    ));
    assert!(store.current(HOST).is_none());

    // A stored certificate that no longer names every configured host is ordered again.
    std::fs::write(&file, stored_pem(&[HOST], HOUR, 24 * HOUR)).unwrap();
    let loaded = manager.load_stored();
    assert!(
        matches!(&loaded[0].1, Stored::Unusable(e) if e.contains("www.example.com")),
        "{loaded:?}"
    );

    std::fs::write(
        &file,
        stored_pem(&[HOST, "www.example.com"], HOUR, 24 * HOUR),
    )
    .unwrap();
    let loaded = manager.load_stored();
    assert!(matches!(loaded[0].1, Stored::Installed(_)), "{loaded:?}");
    let served = store.current(HOST).expect("installed");
    assert_eq!(served.origin, Origin::Acme);
    // Its renewal is at two thirds of its life plus the jitter, 16 h after its start.
    let renew_at = manager.certificates[0].renew_at.unwrap();
    let due = served.not_before + 16 * HOUR;
    assert!(renew_at >= due && renew_at <= due + (24 * HOUR).mul_f64(schedule::RENEWAL_JITTER));
    assert!(!manager.certificates[0].due_in().is_zero());

    // An expired stored certificate is reported, and the one served stays.
    std::fs::write(
        &file,
        stored_pem(&[HOST, "www.example.com"], 3 * HOUR, HOUR),
    )
    .unwrap();
    let loaded = manager.load_stored();
    assert!(
        matches!(&loaded[0].1, Stored::Unusable(e) if e.contains("expired")),
        "{loaded:?}"
    );
    assert!(Arc::ptr_eq(&store.current(HOST).unwrap(), &served));
}

#[tokio::test]
async fn a_ca_outage_keeps_the_served_certificate_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    // Due: 50 minutes into its hour.
    std::fs::write(
        dir.path().join("shop.example.com.pem"),
        stored_pem(
            &[HOST, "www.example.com"],
            50 * 60 * Duration::from_secs(1),
            HOUR,
        ),
    )
    .unwrap();
    let (mut manager, store) = manager(dir.path());
    manager.load_stored();
    let served = store
        .current(HOST)
        .expect("the stored certificate is served");
    let mut events = manager.events();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));
    let mut waits = Vec::new();
    while waits.len() < 4 {
        match next_event(&mut events).await {
            AcmeEvent::Failed {
                error, retry_in, ..
            } => {
                assert!(error.contains("ACME account"), "{error}");
                waits.push(retry_in);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Arc::ptr_eq(&store.current(HOST).unwrap(), &served),
            "a failure never removes the served certificate"
        );
    }
    // 100 ms doubling to the 400 ms cap, less up to a quarter.
    let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
    assert!((75..=100).contains(&ms[0]), "{ms:?}");
    assert!((150..=200).contains(&ms[1]), "{ms:?}");
    assert!((300..=400).contains(&ms[2]), "{ms:?}");
    assert!((300..=400).contains(&ms[3]), "{ms:?}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run ends on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_replica_holding_the_lock_orders_and_the_other_installs_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, store) = manager(dir.path());
    // The other replica is ordering.
    let state = StateDir::open(dir.path()).unwrap();
    let lock = state.try_lock(HOST).unwrap().expect("free");
    let mut events = manager.events();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(manager.run(shutdown.clone()));
    // This one does not order meanwhile (it would fail at once: no CA is listening).
    let quiet = tokio::time::timeout(Duration::from_millis(1500), events.recv()).await;
    assert!(quiet.is_err(), "ordered despite the lock: {quiet:?}");
    // The other replica writes its certificate; this one serves it.
    state
        .write_private(
            &state.certificate(HOST),
            &stored_pem(&[HOST, "www.example.com"], Duration::ZERO, 24 * HOUR),
        )
        .unwrap();
    drop(lock);
    match next_event(&mut events).await {
        AcmeEvent::Installed { source, .. } => assert_eq!(source, Source::Stored),
        other => panic!("unexpected {other:?}"),
    }
    assert!(store.current(HOST).is_some());
    shutdown.cancel();
    running.await.unwrap();
}

#[test]
fn wildcards_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = vec![CertificateConfig {
        hosts: vec!["*.example.com".to_string()],
        files: None,
        acme: true,
    }];
    let store = Arc::new(CertStore::new(&certificates));
    let err = AcmeManager::new(&config(dir.path()), &certificates, store).unwrap_err();
    assert!(err.to_string().contains("DNS-01"), "{err}");
}
