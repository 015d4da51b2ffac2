//! The public certificates the gateway serves, chosen by the name the client asks for (SNI),
//! and the ACME challenges in flight.
//!
//! The set of certificates is fixed by the configuration: one slot per `certificates[]` entry,
//! named by its first host. What fills a slot changes while the gateway runs (a file reloaded,
//! an ACME renewal) and is swapped in atomically: a handshake sees the old certificate or the
//! new one, never half of each. A slot is filled only by a [`Served`], which has been checked
//! to be usable — its key matches its leaf, and its leaf names every host of the slot — so a
//! broken file or order never replaces a working certificate.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use hush_config::CertificateConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Read as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::PathBuf;

use tracing::{debug, warn};

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where a certificate came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// PEM files (`files:`).
    Files,
    /// An ACME order.
    Acme,
}

impl Origin {
    /// `files` or `acme`, for metrics and messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Acme => "acme",
        }
    }
}

/// A certificate chain and key, checked and ready to serve.
pub struct Served {
    /// The certificate's name: the first host of its `certificates[]` entry.
    pub name: Arc<str>,
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's notBefore and notAfter.
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// Where it came from.
    pub origin: Origin,
    /// The leaf's DNS names.
    pub dns_names: Vec<String>,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("name", &self.name)
            .field(
                "not_after",
                &humantime::format_rfc3339_seconds(self.not_after),
            )
            .field("origin", &self.origin)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

/// Why a certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The chain has no certificate in it.
    #[error("no certificate in the chain's PEM")]
    NoCertificate,
    /// The chain's PEM is unreadable.
    #[error("the chain's PEM is unreadable: {0}")]
    ChainPem(String),
    /// The key's PEM is unreadable or holds no key.
    #[error("no private key in the key's PEM ({0})")]
    KeyPem(String),
    /// The key is of a kind rustls cannot sign with.
    #[error("the private key cannot be used: {0}")]
    Key(String),
    /// The key is not the leaf's.
    #[error("the private key does not belong to the first certificate of the chain")]
    KeyMismatch,
    /// The leaf is not an X.509 certificate.
    #[error("the first certificate of the chain is not X.509: {0}")]
    Leaf(String),
    /// The leaf does not name a host it is to be served for.
    #[error("the certificate does not cover {host} (it names: {names})")]
    NameNotCovered {
        /// The host.
        host: String,
        /// The leaf's DNS names, comma-separated.
        names: String,
    },
    /// The leaf has expired.
    #[error("the certificate expired at {0}")]
    Expired(String),
}

impl Served {
    /// Reads a chain and key from PEM and checks that they are usable for `hosts`: the key
    /// matches the leaf, the leaf is unexpired and names every host (exactly, or by a
    /// wildcard of one label).
    pub fn from_pem(
        name: &str,
        hosts: &[String],
        chain_pem: &[u8],
        key_pem: &[u8],
        origin: Origin,
    ) -> Result<Self, CertError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::ChainPem(e.to_string()))?;
        if chain.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::KeyPem(e.to_string()))?;
        Self::from_der(name, hosts, chain, key, origin)
    }

    /// As [`Self::from_pem`], from DER.
    pub fn from_der(
        name: &str,
        hosts: &[String],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        origin: Origin,
    ) -> Result<Self, CertError> {
        let Some(leaf) = chain.first() else {
            return Err(CertError::NoCertificate);
        };
        let (not_before, not_after, dns_names) = leaf_facts(leaf)?;
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch,
            other => CertError::Key(other.to_string()),
        })?;
        if not_after <= SystemTime::now() {
            return Err(CertError::Expired(
                humantime::format_rfc3339_seconds(not_after).to_string(),
            ));
        }
        for host in hosts {
            if !dns_names.iter().any(|n| name_covers(n, host)) {
                return Err(CertError::NameNotCovered {
                    host: host.clone(),
                    names: dns_names.join(", "),
                });
            }
        }
        Ok(Self {
            name: name.into(),
            key: Arc::new(certified),
            not_before,
            not_after,
            origin,
            dns_names,
        })
    }

    /// The time left until notAfter (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

/// notBefore, notAfter and the DNS names of a leaf.
fn leaf_facts(
    leaf: &CertificateDer<'_>,
) -> Result<(SystemTime, SystemTime, Vec<String>), CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertError::Leaf(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((at(validity.not_before), at(validity.not_after), names))
}

/// Whether a certificate's DNS name covers `host`: the same name, or `*.parent` for a host of
/// one more label under `parent`. A configured wildcard host is covered by the same wildcard.
fn name_covers(name: &str, host: &str) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    match (name.strip_prefix("*."), host.split_once('.')) {
        (Some(parent), Some((label, rest))) => {
            label != "*" && !label.is_empty() && parent.eq_ignore_ascii_case(rest)
        }
        _ => false,
    }
}

/// What is told of each certificate installed.
type Observer = Box<dyn Fn(&Served) + Send + Sync>;

/// One `certificates[]` entry: its hosts, and what is served for them now.
struct Slot {
    name: Arc<str>,
    hosts: Vec<String>,
    current: ArcSwapOption<Served>,
}

/// The certificates the gateway serves, and the ACME challenges in flight. Shared by the TLS
/// listener (as its certificate resolver), the file watcher, the ACME manager, and the
/// plaintext listener (HTTP-01).
pub struct CertStore {
    slots: Vec<Slot>,
    /// Lowercase host (or `*.parent`) to slot.
    by_host: HashMap<String, usize>,
    /// TLS-ALPN-01: the challenge certificate for a host, while its authorization is pending.
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: token to key authorization, while its authorization is pending.
    http01: RwLock<HashMap<String, String>>,
    /// Told of every certificate installed (the gateway's metrics and expiry warnings).
    observer: OnceLock<Observer>,
    /// Where HTTP-01 answers are shared with other replicas.
    shared: OnceLock<PathBuf>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field(
                "certificates",
                &self.slots.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The name of a `certificates[]` entry: its first host, in lowercase.
pub fn certificate_name(config: &CertificateConfig) -> String {
    config
        .hosts
        .first()
        .map(|h| h.to_ascii_lowercase())
        .unwrap_or_default()
}

impl CertStore {
    /// One empty slot per configured certificate.
    pub fn new(certificates: &[CertificateConfig]) -> Self {
        let mut by_host = HashMap::new();
        let slots = certificates
            .iter()
            .enumerate()
            .map(|(i, config)| {
                let hosts: Vec<String> = config
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
                for host in &hosts {
                    by_host.entry(host.clone()).or_insert(i);
                }
                Slot {
                    name: certificate_name(config).into(),
                    hosts,
                    current: ArcSwapOption::empty(),
                }
            })
            .collect();
        Self {
            slots,
            by_host,
            alpn_challenges: RwLock::default(),
            http01: RwLock::default(),
            observer: OnceLock::new(),
            shared: OnceLock::new(),
        }
    }

    /// Calls `observer` with every certificate installed from now on (one observer; a second
    /// is ignored).
    pub fn observe(&self, observer: impl Fn(&Served) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(observer));
    }

    /// The hosts of the certificate called `name`.
    pub fn hosts(&self, name: &str) -> Option<&[String]> {
        self.slot(name).map(|s| s.hosts.as_slice())
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| &*s.name == name)
    }

    /// Serves `served` from now on for its certificate's hosts, and returns the one it
    /// replaces. `None` when no certificate of that name is configured.
    pub fn install(&self, served: Served) -> Option<Option<Arc<Served>>> {
        let slot = self.slot(&served.name)?;
        if let Some(observer) = self.observer.get() {
            observer(&served);
        }
        Some(slot.current.swap(Some(Arc::new(served))))
    }

    /// What is served for the certificate called `name`, if anything yet.
    pub fn current(&self, name: &str) -> Option<Arc<Served>> {
        self.slot(name).and_then(|s| s.current.load_full())
    }

    /// Every certificate's name and what is served for it.
    pub fn all(&self) -> Vec<(Arc<str>, Option<Arc<Served>>)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.current.load_full()))
            .collect()
    }

    /// The certificate for a handshake that asked for `server_name` (`None`: no SNI).
    fn for_name(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let slot = match server_name {
            // A client that sends no name (one that dialled an IP address) gets the first
            // certificate, as from a default server.
            None => self.slots.iter().find(|s| s.current.load().is_some())?,
            Some(name) => {
                let name = name.to_ascii_lowercase();
                let index = self.by_host.get(&name).or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.by_host.get(&format!("*.{parent}"))
                })?;
                &self.slots[*index]
            }
        };
        slot.current.load().as_ref().map(|s| s.key.clone())
    }

    /// Serves `key` to TLS-ALPN-01 validation handshakes for `host` until cleared.
    pub fn set_alpn_challenge(&self, host: &str, key: Arc<CertifiedKey>) {
        write(&self.alpn_challenges).insert(host.to_ascii_lowercase(), key);
    }

    /// Stops answering TLS-ALPN-01 validation for `host`.
    pub fn clear_alpn_challenge(&self, host: &str) {
        write(&self.alpn_challenges).remove(&host.to_ascii_lowercase());
    }

    /// Shares HTTP-01 answers through `dir` (in the ACME state directory), so that a replica
    /// that did not order answers the CA too: behind a load balancer, the CA's validation may
    /// reach any replica. Each answer is a file `http-01.<token>` while it is in flight.
    pub fn share_challenges_in(&self, dir: PathBuf) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let _ = self.shared.set(dir);
        Ok(())
    }

    /// The shared file of `token`, when answers are shared and the token is one an ACME CA
    /// makes (base64url: nothing that could name another path).
    fn shared_answer(&self, token: &str) -> Option<PathBuf> {
        let plain = !token.is_empty()
            && token.len() <= MAX_TOKEN
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let dir = self.shared.get()?;
        plain.then(|| dir.join(format!("http-01.{token}")))
    }

    /// Answers `token` with `key_authorization` at `/.well-known/acme-challenge/<token>`
    /// until cleared.
    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        write(&self.http01).insert(token.to_string(), key_authorization.to_string());
        if let Some(path) = self.shared_answer(token)
            && let Err(e) = write_private(&path, key_authorization.as_bytes())
        {
            warn!(path = %path.display(), error = %e, "cannot share an ACME HTTP-01 answer with the other replicas");
        }
    }

    /// Stops answering `token`.
    pub fn clear_http01(&self, token: &str) {
        write(&self.http01).remove(token);
        if let Some(path) = self.shared_answer(token) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The key authorization for an HTTP-01 `token` in flight, here or (when answers are
    /// shared) at another replica.
    pub fn http01(&self, token: &str) -> Option<String> {
        let own = self
            .http01
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned();
        own.or_else(|| {
            let path = self.shared_answer(token)?;
            let mut text = String::new();
            std::io::Read::take(std::fs::File::open(path).ok()?, MAX_TOKEN as u64 * 2)
                .read_to_string(&mut text)
                .ok()?;
            Some(text)
        })
    }
}

/// Writes `path` whole (through a temporary file and a rename, so another replica never reads
/// half of it), readable by this user alone, like everything in the ACME state directory.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)?;
    file.write_all(bytes)?;
    std::fs::rename(&staged, path)
}

/// Longer than any token an ACME CA makes (Let's Encrypt's are 43 characters).
const MAX_TOKEN: usize = 256;

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let server_name = hello.server_name();
        // A TLS-ALPN-01 validation offers `acme-tls/1` alone (RFC 8737 §3); it gets the
        // challenge certificate and nothing else, and no other handshake ever does.
        let acme = hello.alpn().is_some_and(|mut protocols| {
            protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
        });
        if acme {
            let name = server_name?.to_ascii_lowercase();
            return self
                .alpn_challenges
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&name)
                .cloned();
        }
        let key = self.for_name(server_name);
        if key.is_none() {
            debug!(
                server_name = server_name.unwrap_or("(none)"),
                "no certificate for the name the client asked for"
            );
        }
        key
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` and its key, in PEM (for this crate's tests).
    pub(crate) fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn config(hosts: &[&str]) -> CertificateConfig {
        CertificateConfig {
            hosts: hosts.iter().map(|s| (*s).to_string()).collect(),
            files: None,
            acme: true,
        }
    }

    fn served(name: &str, hosts: &[&str], names: &[&str]) -> Result<Served, CertError> {
        let (cert, key) = pair(names);
        let hosts: Vec<String> = hosts.iter().map(|s| (*s).to_string()).collect();
        Served::from_pem(name, &hosts, cert.as_bytes(), key.as_bytes(), Origin::Files)
    }

    #[test]
    fn names_cover_hosts_exactly_or_by_one_wildcard_label() {
        assert!(name_covers("shop.example.com", "SHOP.example.com"));
        assert!(name_covers("*.example.com", "shop.example.com"));
        assert!(name_covers("*.example.com", "*.example.com"));
        assert!(!name_covers("*.example.com", "a.shop.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("shop.example.com", "*.example.com"));
    }

    #[test]
    fn unusable_pairs_are_refused_with_what_is_wrong() {
        let refused = served(
            "shop.example.com",
            &["shop.example.com", "www.example.com"],
            &["shop.example.com"],
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the certificate does not cover www.example.com (it names: shop.example.com)"
        );
        let (cert, _) = pair(&["shop.example.com"]);
        let (_, other_key) = pair(&["shop.example.com"]);
        let hosts = vec!["shop.example.com".to_string()];
        let mismatch = Served::from_pem(
            "shop.example.com",
            &hosts,
            cert.as_bytes(),
            other_key.as_bytes(),
            Origin::Files,
        )
        .unwrap_err();
        assert!(matches!(mismatch, CertError::KeyMismatch), "{mismatch}");
        let garbage = Served::from_pem(
            "shop.example.com",
            &hosts,
            b"garbage",
            other_key.as_bytes(),
            Origin::Files,
        )
        .unwrap_err();
        assert!(matches!(garbage, CertError::NoCertificate), "{garbage}");
        let no_key = Served::from_pem(
            "shop.example.com",
            &hosts,
            cert.as_bytes(),
            cert.as_bytes(),
            Origin::Files,
        )
        .unwrap_err();
        assert!(matches!(no_key, CertError::KeyPem(_)), "{no_key}");
    }

    #[test]
    fn the_store_serves_by_exact_name_then_wildcard_and_the_first_without_sni() {
        let store = CertStore::new(&[config(&["shop.example.com"]), config(&["*.example.com"])]);
        assert!(store.for_name(None).is_none(), "nothing installed yet");
        let shop = served(
            "shop.example.com",
            &["shop.example.com"],
            &["shop.example.com"],
        )
        .unwrap();
        let shop_key = shop.key.clone();
        assert!(store.install(shop).unwrap().is_none());
        let wild = served("*.example.com", &["*.example.com"], &["*.example.com"]).unwrap();
        let wild_key = wild.key.clone();
        store.install(wild).unwrap();
        let is = |a: Option<Arc<CertifiedKey>>, b: &Arc<CertifiedKey>| Arc::ptr_eq(&a.unwrap(), b);
        assert!(is(store.for_name(Some("Shop.Example.com")), &shop_key));
        assert!(is(store.for_name(Some("api.example.com")), &wild_key));
        assert!(is(store.for_name(None), &shop_key));
        assert!(store.for_name(Some("a.b.example.com")).is_none());
        assert!(store.for_name(Some("example.org")).is_none());
        let unknown = served("other", &["x.example.org"], &["x.example.org"]).unwrap();
        assert!(
            store.install(unknown).is_none(),
            "no such certificate configured"
        );
    }

    #[test]
    fn http01_answers_are_shared_with_replicas_of_the_same_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ordering = CertStore::new(&[config(&["shop.example.com"])]);
        let other = CertStore::new(&[config(&["shop.example.com"])]);
        for store in [&ordering, &other] {
            store
                .share_challenges_in(dir.path().join("challenges"))
                .unwrap();
        }
        ordering.set_http01("tok-EN_1", "tok-EN_1.thumb");
        assert_eq!(other.http01("tok-EN_1").as_deref(), Some("tok-EN_1.thumb"));
        use std::os::unix::fs::PermissionsExt as _;
        let shared = dir.path().join("challenges/http-01.tok-EN_1");
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        ordering.clear_http01("tok-EN_1");
        assert_eq!(other.http01("tok-EN_1"), None);
        // A token that could name another file is never looked up on disk.
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        assert_eq!(other.http01("../secret"), None);
        assert_eq!(other.http01(""), None);
    }

    #[test]
    fn challenges_come_and_go() {
        let store = CertStore::new(&[config(&["shop.example.com"])]);
        store.set_http01("tok", "tok.thumb");
        assert_eq!(store.http01("tok").as_deref(), Some("tok.thumb"));
        store.clear_http01("tok");
        assert_eq!(store.http01("tok"), None);
    }
}
