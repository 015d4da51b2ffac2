//! A fake CA for the identity manager's unit tests, and the wall clock they run on.
//!
//! [`FakeCa`] really issues certificates: for the key of the CSR it is sent, signed by the
//! intermediate of an in-memory root, so what it hands out passes the manager's own checks
//! against a real trust bundle. It can be told to refuse, to be unreachable, to never answer, to
//! name another workload, to send a chain that does not verify, to hand out another bundle, to
//! taint an authority or to revoke certificates; and it records every call, with the tokio time it came at and the certificate a renewal
//! presented.
//!
//! [`TestClock`] is a wall clock that follows tokio's paused clock from a fixed time, so that
//! certificate validity, half-life renewal and backoff all run in paused time and nothing depends
//! on the machine's clock or speed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hush_tls::CredentialStore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Clock;
use super::certifier::{BundleUpdate, CaError, Certifier, Issued};

/// Where the fake CA says it is (in its words when it cannot be reached).
pub(super) const ADDRESS: &str = "https://ca.test:8443";
/// The trust domain of the fake CA.
pub(super) const TRUST_DOMAIN: &str = "test.example";
/// The workload the fake CA certifies.
pub(super) const WORKLOAD: &str = "spiffe://test.example/ns/shop/sa/backend";

/// A wall clock that reads a fixed time (in 2030) plus however far tokio's clock has moved since
/// the clock was made. With tokio's clock paused, it moves only when tokio's does.
#[derive(Clone, Copy, Debug)]
pub(super) struct TestClock {
    start: Instant,
}

// === impl TestClock ===

impl TestClock {
    /// What the wall clock reads when the clock is made: 2030-03-17, fixed, so that no test
    /// depends on the machine's clock.
    pub(super) fn base() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
    }

    /// A clock reading [`Self::base`] now. Must be called inside the (paused) runtime.
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        Self::base() + self.start.elapsed()
    }
}

/// How the fake CA answers a kind of call.
#[derive(Clone, Debug)]
pub(super) enum Answer {
    /// As a CA should: a certificate for the workload (or the bundle).
    Issue,
    /// With an error status (the CA refuses).
    Refuse(tonic::Code, &'static str),
    /// It cannot be reached (connection refused).
    Unreachable,
    /// It ends the TLS handshake refusing the client certificate (`bad_certificate`).
    RefuseCertificate,
    /// Never.
    Hang,
    /// A certificate for this other SPIFFE ID.
    OtherIdentity(&'static str),
    /// No certificate at all.
    EmptyChain,
    /// A certificate from a CA outside the trust bundle.
    ForeignChain,
}

/// The calls the fake CA got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallKind {
    /// [`Certifier::renew`].
    Renew,
    /// [`Certifier::certify`].
    Certify,
    /// [`Certifier::trust_bundle`].
    Bundle,
}

/// One call the fake CA got.
#[derive(Clone, Debug)]
pub(super) struct Call {
    /// Which.
    pub(super) kind: CallKind,
    /// When, on tokio's clock.
    pub(super) at: Instant,
    /// For a renewal: the leaf the sidecar presented (what its credential store held).
    pub(super) presented: Option<CertificateDer<'static>>,
    /// For a certification: the token.
    pub(super) token: Option<String>,
}

/// A CA in memory, shared between a test and the manager under test.
#[derive(Clone)]
pub(super) struct FakeCa {
    shared: Arc<Shared>,
}

struct Shared {
    clock: TestClock,
    /// What a renewal presents, as the TLS handshake would read it.
    credentials: CredentialStore,
    state: Mutex<State>,
    calls: watch::Sender<Vec<Call>>,
}

struct State {
    /// The root and intermediate that sign now.
    authority: Authority,
    /// The roots handed out, with certificates and on their own.
    bundle: Vec<CertificateDer<'static>>,
    lifetime: Duration,
    next_serial: u64,
    renew: Answer,
    certify: Answer,
    trust_bundle: Answer,
    /// What `GetTrustBundle` says besides the roots.
    generation: u64,
    tainted: std::collections::BTreeSet<String>,
    renew_spread: Duration,
    /// The deny-list `GetTrustBundle` sends (`None`: a CA older than revocations).
    deny: Option<hush_identity::DenyList>,
    deny_generation: u64,
}

/// A root and its intermediate.
struct Authority {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

// === impl FakeCa ===

impl FakeCa {
    /// A CA for [`TRUST_DOMAIN`] whose clock is `clock`, issuing certificates for an hour.
    /// Renewals present what `credentials` holds.
    pub(super) fn new(clock: TestClock, credentials: CredentialStore) -> Self {
        let authority = Authority::new(TRUST_DOMAIN, "fake", clock.now());
        let bundle = vec![authority.root.der().clone()];
        Self {
            shared: Arc::new(Shared {
                clock,
                credentials,
                state: Mutex::new(State {
                    authority,
                    bundle,
                    lifetime: Duration::from_secs(3600),
                    next_serial: 1,
                    renew: Answer::Issue,
                    certify: Answer::Issue,
                    trust_bundle: Answer::Issue,
                    generation: 1,
                    tainted: Default::default(),
                    renew_spread: Duration::ZERO,
                    deny: None,
                    deny_generation: 0,
                }),
                calls: watch::Sender::new(Vec::new()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The roots it hands out now.
    pub(super) fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.state().bundle.clone()
    }

    /// Certificates it issues from now on are valid for `lifetime`.
    pub(super) fn set_lifetime(&self, lifetime: Duration) {
        self.state().lifetime = lifetime;
    }

    /// How it answers renewals from now on.
    pub(super) fn answer_renewals(&self, answer: Answer) {
        self.state().renew = answer;
    }

    /// How it answers attestations with a token from now on.
    pub(super) fn answer_tokens(&self, answer: Answer) {
        self.state().certify = answer;
    }

    /// How it answers requests for the trust bundle from now on.
    pub(super) fn answer_bundle_requests(&self, answer: Answer) {
        self.state().trust_bundle = answer;
    }

    /// Hands out `roots` as its bundle from now on (with certificates and on their own).
    pub(super) fn hand_out_bundle(&self, roots: Vec<CertificateDer<'static>>) {
        self.state().bundle = roots;
    }

    /// The ID of the intermediate that signs now.
    pub(super) fn signing_intermediate(&self) -> String {
        hush_identity::authority_id(self.state().authority.intermediate.der())
            .expect("the fake intermediate is a certificate")
    }

    /// Taints `authority` (next generation): bundle requests say so, with `spread`.
    pub(super) fn taint(&self, authority: &str, spread: Duration) {
        let mut state = self.state();
        state.tainted.insert(authority.to_string());
        state.renew_spread = spread;
        state.generation += 1;
    }

    /// Sets the generation bundle requests report (a lagging replica reports an older one).
    pub(super) fn set_generation(&self, generation: u64) {
        self.state().generation = generation;
    }

    /// Bundle requests send `deny` as the deny-list of `generation` from now on.
    pub(super) fn deny(&self, deny: hush_identity::DenyList, generation: u64) {
        let mut state = self.state();
        state.deny = Some(deny);
        state.deny_generation = generation;
    }

    /// An intermediate rotation: signs with a new intermediate under the same root from now on.
    /// Returns the new intermediate's ID.
    pub(super) fn rotate_intermediate(&self) -> String {
        let now = self.shared.clock.now();
        let mut state = self.state();
        state.authority.rotate_intermediate(TRUST_DOMAIN, now);
        hush_identity::authority_id(state.authority.intermediate.der())
            .expect("the fake intermediate is a certificate")
    }

    /// A root rotation: signs with a new root from now on, and hands out both roots. Returns
    /// the new root.
    pub(super) fn rotate(&self) -> CertificateDer<'static> {
        let authority = Authority::new(TRUST_DOMAIN, "rotated", self.shared.clock.now());
        let root = authority.root.der().clone();
        let mut state = self.state();
        state.authority = authority;
        state.bundle.push(root.clone());
        root
    }

    /// Every call so far.
    pub(super) fn calls(&self) -> Vec<Call> {
        self.shared.calls.borrow().clone()
    }

    /// The calls of `kind` so far.
    pub(super) fn calls_of(&self, kind: CallKind) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.kind == kind)
            .collect()
    }

    /// Waits (in tokio time) until it has had `count` calls of `kind`.
    pub(super) async fn wait_for_calls(&self, kind: CallKind, count: usize) -> Vec<Call> {
        let mut calls = self.shared.calls.subscribe();
        let enough = calls
            .wait_for(|calls| calls.iter().filter(|c| c.kind == kind).count() >= count)
            .await;
        // The sender lives in `self`, so the channel cannot close.
        drop(enough);
        self.calls_of(kind)
    }

    fn record(&self, kind: CallKind, token: Option<&str>) {
        let presented = (kind == CallKind::Renew)
            .then(|| self.shared.credentials.current())
            .flatten()
            .and_then(|current| current.cert.first().cloned());
        let call = Call {
            kind,
            at: Instant::now(),
            presented,
            token: token.map(str::to_string),
        };
        self.shared.calls.send_modify(|calls| calls.push(call));
    }

    async fn answer(&self, answer: Answer, csr: &[u8]) -> Result<Issued, CaError> {
        let spiffe_id = match answer {
            Answer::Issue => WORKLOAD,
            Answer::OtherIdentity(other) => other,
            Answer::Refuse(code, message) => return Err(refused(code, message)),
            Answer::Unreachable => return Err(unreachable()),
            Answer::RefuseCertificate => return Err(certificate_refused()),
            Answer::Hang => std::future::pending().await,
            Answer::EmptyChain => {
                return Ok(Issued {
                    chain: Vec::new(),
                    bundle: self.bundle(),
                });
            }
            Answer::ForeignChain => {
                let foreign = Authority::new(TRUST_DOMAIN, "foreign", self.shared.clock.now());
                let lifetime = self.state().lifetime;
                return Ok(Issued {
                    chain: foreign.issue(csr, WORKLOAD, 0, self.shared.clock.now(), lifetime),
                    bundle: self.bundle(),
                });
            }
        };
        let now = self.shared.clock.now();
        let mut state = self.state();
        let serial = state.next_serial;
        state.next_serial += 1;
        Ok(Issued {
            chain: state
                .authority
                .issue(csr, spiffe_id, serial, now, state.lifetime),
            bundle: state.bundle.clone(),
        })
    }
}

impl Certifier for FakeCa {
    async fn renew(&self, csr: Vec<u8>) -> Result<Issued, CaError> {
        self.record(CallKind::Renew, None);
        let answer = self.state().renew.clone();
        self.answer(answer, &csr).await
    }

    async fn certify(&self, token: &str, csr: Vec<u8>) -> Result<Issued, CaError> {
        self.record(CallKind::Certify, Some(token));
        let answer = self.state().certify.clone();
        self.answer(answer, &csr).await
    }

    async fn trust_bundle(&self) -> Result<BundleUpdate, CaError> {
        self.record(CallKind::Bundle, None);
        let answer = self.state().trust_bundle.clone();
        match answer {
            Answer::Refuse(code, message) => Err(refused(code, message)),
            Answer::Unreachable => Err(unreachable()),
            Answer::RefuseCertificate => Err(certificate_refused()),
            Answer::Hang => std::future::pending().await,
            _ => {
                let state = self.state();
                Ok(BundleUpdate {
                    roots: state.bundle.clone(),
                    generation: state.generation,
                    tainted: state.tainted.clone(),
                    renew_spread: state.renew_spread,
                    deny: state.deny.clone(),
                    deny_generation: state.deny_generation,
                    jwt_keys: None,
                })
            }
        }
    }
}

fn refused(code: tonic::Code, message: &str) -> CaError {
    CaError::Status {
        code,
        message: message.to_string(),
    }
}

/// What the real certifier says when the CA refuses the client certificate at the handshake.
fn certificate_refused() -> CaError {
    CaError::Tls {
        code: tonic::Code::Unavailable,
        address: ADDRESS.to_string(),
        source: hush_tls::rustls::Error::AlertReceived(
            hush_tls::rustls::AlertDescription::BadCertificate,
        ),
    }
}

/// What the real certifier says when nothing listens at the CA's address.
fn unreachable() -> CaError {
    CaError::Unreachable {
        code: tonic::Code::Unavailable,
        address: ADDRESS.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"),
    }
}

/// A certificate of another trust domain's root, for a bundle that must be refused.
pub(super) fn foreign_root(trust_domain: &str) -> CertificateDer<'static> {
    Authority::new(trust_domain, "foreign", TestClock::base())
        .root
        .der()
        .clone()
}

// === impl Authority ===

impl Authority {
    /// A root and an intermediate for `trust_domain`, valid for years around `now`, their
    /// names starting with `name` (webpki finds issuers by name, so a foreign CA named like
    /// the mesh's would fail on the signature, not on the issuer).
    fn new(trust_domain: &str, name: &str, now: SystemTime) -> Self {
        let root = CertifiedIssuer::self_signed(
            signing_params(
                trust_domain,
                &format!("{name} root"),
                BasicConstraints::Unconstrained,
                now,
            ),
            KeyPair::generate().expect("rcgen makes a key"),
        )
        .expect("rcgen makes a root");
        let intermediate = CertifiedIssuer::signed_by(
            signing_params(
                trust_domain,
                &format!("{name} intermediate"),
                BasicConstraints::Constrained(0),
                now,
            ),
            KeyPair::generate().expect("rcgen makes a key"),
            &root,
        )
        .expect("rcgen makes an intermediate");
        Self { root, intermediate }
    }

    /// Replaces the intermediate with a new one under the same root.
    fn rotate_intermediate(&mut self, trust_domain: &str, now: SystemTime) {
        self.intermediate = CertifiedIssuer::signed_by(
            signing_params(
                trust_domain,
                "rotated intermediate",
                BasicConstraints::Constrained(0),
                now,
            ),
            KeyPair::generate().expect("rcgen makes a key"),
            &self.root,
        )
        .expect("rcgen makes an intermediate");
    }

    /// An X.509-SVID for `spiffe_id` and the key of `csr`, valid from a minute before `now` to
    /// `lifetime` after it: leaf, then intermediate.
    fn issue(
        &self,
        csr: &[u8],
        spiffe_id: &str,
        serial: u64,
        now: SystemTime,
        lifetime: Duration,
    ) -> Vec<CertificateDer<'static>> {
        let csr = CertificateSigningRequestParams::from_der(&csr.to_vec().into())
            .expect("the manager sends a valid CSR");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.try_into().expect("a SPIFFE ID is a URI"),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).into();
        let leaf = params
            .signed_by(&csr.public_key, &self.intermediate)
            .expect("rcgen signs the leaf");
        vec![leaf.der().clone(), self.intermediate.der().clone()]
    }
}

fn signing_params(
    trust_domain: &str,
    role: &str,
    constraints: BasicConstraints,
    now: SystemTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("{role} ({trust_domain})"));
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .expect("a trust domain makes a URI"),
    )];
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - Duration::from_secs(24 * 3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    params
}
