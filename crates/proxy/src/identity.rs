//! The sidecar's own identity: obtained from the CA at start, renewed at about half its life,
//! swapped in without touching live connections.
//!
//! The private key is made here, in memory, for every certificate, and never written anywhere.
//! The first certificate is attested with the token file (a join token, or a Kubernetes
//! service-account token); renewals prove identity with the current certificate over mutual
//! TLS, which is what lets a single-use join token start a sidecar that runs for months. While
//! the CA is unreachable the sidecar keeps serving with the certificate it has, retrying with
//! backoff, until that certificate expires.
//!
//! When the CA taints an authority (`hush ca taint`), the bundle refresh learns of it and a
//! certificate issued under that authority is renewed at once — after a random wait up to the
//! CA's spread, so that a whole mesh does not call the CA in the same second.
//!
//! The bundle refresh also brings the CA's deny-list (`hush ca revoke-identity`), applied with
//! the roots in one swap so that both verifiers refuse a revoked peer from the next handshake.
//! A sidecar whose own certificate the list names renews at once: the CA refuses the
//! certificate, so the token is tried, which gets a new certificate unless the identity or the
//! token is revoked too (then the sidecar keeps serving with what it has until it expires).
//!
//! With `ca.reattest: always` (the default with a Kubernetes token) every renewal attests with
//! the token instead of the certificate, as Istio's agents do; otherwise the token is sent only
//! when the CA refuses the certificate, which it does once the identity was last attested
//! longer ago than its `--reattest-after`.
//!
//! When the sidecar serves the SPIFFE Workload API, the manager also keeps the app's own
//! X.509-SVID: after each certificate of its own, a second one for the same SPIFFE ID with a
//! key of its own (made here, in memory, handed to the app and to nobody else), renewed with
//! the sidecar's certificate over mutual TLS. It publishes that, and the bundles the app is
//! told of, on [`WorkloadFeed`]'s `watch` channels.

mod certifier;
mod error;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod lifecycle_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hush_identity::{CertificateSummary, Denial, DenyList, SpiffeId, TrustBundle};
use hush_tls::rustls::client::danger::ServerCertVerifier;
use hush_tls::{CredentialStore, ExpectedServer, SpiffeServerVerifier, TrustStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument, debug, info, warn};

use self::certifier::{BundleUpdate, Certifier, FederatedDomain, Issued};
pub(crate) use self::certifier::{CaCertifier, CaError, MintedJwt};
use self::error::AttemptError;
use crate::clock::{system_time, unix_seconds};
use crate::config::{CaConfig, Reattest};
use crate::metrics::Metrics;

/// First retry after a failed attempt; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest a taint may make a renewal wait, whatever spread the CA asks for.
const MAX_TAINT_SPREAD: Duration = Duration::from_secs(3600);

/// What the CA last said that can bring a renewal forward, passed from the bundle refresh to
/// the renewal loop: tainted authorities, and the deny-list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Advice {
    /// IDs of tainted authorities.
    tainted: Arc<BTreeSet<String>>,
    /// Forced renewals wait a random time up to this first.
    spread: Duration,
    /// The certificates the CA has revoked.
    deny: Arc<DenyList>,
}

// === impl Advice ===

impl Advice {
    /// Why `svid` must be renewed now, if it must: the reason for the metric, and the words.
    fn renew_now(&self, svid: &Svid) -> Option<(&'static str, String)> {
        if let Some(authority) = self.tainted_authority(svid) {
            return Some((
                "tainted",
                format!("the CA tainted authority {authority} of its chain"),
            ));
        }
        let denial = self.revoked(svid)?;
        Some((
            "revoked",
            format!(
                "the CA revoked it ({denial}); the CA refuses to renew it, so the token is tried"
            ),
        ))
    }

    /// Why the deny-list refuses `svid`, if it does.
    fn revoked(&self, svid: &Svid) -> Option<Denial> {
        self.deny.denies(svid.chain.first()?)
    }

    /// The tainted authority `svid` was issued under, if any: an ID of a CA certificate of its
    /// chain.
    fn tainted_authority(&self, svid: &Svid) -> Option<String> {
        if self.tainted.is_empty() {
            return None;
        }
        svid.chain
            .iter()
            .skip(1)
            .filter_map(|ca| hush_identity::authority_id(ca))
            .find(|id| self.tainted.contains(id))
    }

    /// How long to wait before a forced renewal: uniform in [0, spread), at least `floor`. The
    /// spread comes from the CA; a sidecar bounds it, so that no answer can put a renewal off
    /// for longer than an hour (or overflow a timer).
    fn delay(&self, floor: Duration) -> Duration {
        let spread = self.spread.min(MAX_TAINT_SPREAD);
        round_to_millis(spread.mul_f64(random_unit())).max(floor)
    }
}

/// The workload certificate in use.
#[derive(Clone, Debug)]
pub struct Svid {
    /// The identity it proves.
    pub spiffe_id: SpiffeId,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// When the sidecar plans to renew it.
    pub renew_at: SystemTime,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
}

/// The app's own X.509-SVID, handed out by the Workload API: the sidecar's SPIFFE ID, another
/// key. A key the app holds can leak with the app; it never was the sidecar's.
#[derive(Clone)]
pub(crate) struct AppSvid {
    /// The identity it proves (the sidecar's).
    pub(crate) spiffe_id: SpiffeId,
    /// Serial number, lowercase hex (logged; the key never is).
    pub(crate) serial: String,
    /// End of validity.
    pub(crate) not_after: SystemTime,
    /// Leaf first, then intermediates.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The private key, PKCS#8 DER.
    pub(crate) key: Arc<PrivatePkcs8KeyDer<'static>>,
}

impl std::fmt::Debug for AppSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("AppSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// The bundles the Workload API hands out: the mesh's own trust domain's, and (once
/// federation lands) those of the federated trust domains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkloadBundles {
    /// The mesh's trust domain.
    pub(crate) trust_domain: hush_identity::TrustDomain,
    /// Its X.509 roots.
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// Its JWT keys; `None` until the CA sent any.
    pub(crate) jwt_keys: Option<hush_identity::JwtKeys>,
    /// The federated trust domains' bundles, by trust domain name: those the trust store
    /// holds (`TrustStore::federate`), with the JWT keys the CA sent for each.
    pub(crate) federated: BTreeMap<String, FederatedBundle>,
}

/// A federated trust domain's bundle, as the Workload API hands it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FederatedBundle {
    /// Its X.509 roots.
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// Its JWT keys, when it has any.
    pub(crate) jwt_keys: Option<hush_identity::JwtKeys>,
}

/// What the identity manager tells the Workload API, on `watch` channels: every change is
/// seen by every stream, and a stream that starts reads the latest at once.
#[derive(Clone, Debug)]
pub(crate) struct WorkloadFeed {
    /// The app's X.509-SVID; `None` until the first one is issued.
    pub(crate) svid: watch::Sender<Option<Arc<AppSvid>>>,
    /// The bundles.
    pub(crate) bundles: watch::Sender<Arc<WorkloadBundles>>,
}

// === impl WorkloadFeed ===

impl WorkloadFeed {
    /// A feed with no SVID yet and the bundle `trust` holds now.
    pub(crate) fn new(trust: &TrustStore) -> Self {
        let bundle = trust.bundle();
        let (svid, _) = watch::channel(None);
        let (bundles, _) = watch::channel(Arc::new(WorkloadBundles {
            trust_domain: bundle.trust_domain().clone(),
            roots: bundle.roots().to_vec(),
            jwt_keys: None,
            federated: Default::default(),
        }));
        Self { svid, bundles }
    }

    /// Publishes the roots `trust` holds now and, when given, the JWT keys; streams hear of it
    /// only when something changed.
    fn publish_bundles(
        &self,
        trust: &TrustStore,
        jwt_keys: Option<hush_identity::JwtKeys>,
        federated_jwt: Option<&BTreeMap<String, hush_identity::JwtKeys>>,
    ) {
        let roots = trust.bundle().roots().to_vec();
        let federated_roots = trust.federated_bundles();
        self.bundles.send_if_modified(|current| {
            // The federated domains in force in the trust store (those the verifiers accept),
            // with the JWT keys the CA sent for each (those already published, for `None`).
            let federated: BTreeMap<String, FederatedBundle> = federated_roots
                .iter()
                .map(|bundle| {
                    let name = bundle.trust_domain().to_string();
                    let jwt_keys = match federated_jwt {
                        Some(sent) => sent.get(&name).cloned(),
                        None => current
                            .federated
                            .get(&name)
                            .and_then(|known| known.jwt_keys.clone()),
                    };
                    let roots = bundle.roots().to_vec();
                    (name, FederatedBundle { roots, jwt_keys })
                })
                .collect();
            let jwt_keys = jwt_keys.or_else(|| current.jwt_keys.clone());
            if current.roots == roots
                && current.jwt_keys == jwt_keys
                && current.federated == federated
            {
                return false;
            }
            let mut next = WorkloadBundles::clone(current);
            next.roots = roots;
            next.jwt_keys = jwt_keys;
            next.federated = federated;
            *current = Arc::new(next);
            true
        });
    }
}

/// What the sidecar knows of its identity, published to the admin server and the listeners.
#[derive(Clone, Debug, Default)]
pub struct IdentityStatus {
    /// The certificate in use, once there is one.
    pub svid: Option<Arc<Svid>>,
    /// Why the last attempt to obtain or renew failed, until one succeeds.
    pub last_error: Option<String>,
}

// === impl IdentityStatus ===

impl IdentityStatus {
    /// Whether the sidecar holds a certificate valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.svid
            .as_ref()
            .is_some_and(|svid| svid.not_before <= now && now < svid.not_after)
    }

    /// Why the sidecar is not ready, in words; `None` when it is.
    pub fn not_ready_reason(&self, now: SystemTime) -> Option<String> {
        let last_error = self
            .last_error
            .as_deref()
            .map(|e| format!(" (last attempt: {e})"))
            .unwrap_or_default();
        match &self.svid {
            None => Some(format!(
                "no workload certificate yet: waiting for the CA{last_error}"
            )),
            Some(svid) if now >= svid.not_after => Some(format!(
                "the workload certificate expired at {} and could not be renewed{last_error}",
                humantime::format_rfc3339_seconds(svid.not_after)
            )),
            Some(svid) if now < svid.not_before => Some(format!(
                "the workload certificate is not valid until {} (is the clock right?)",
                humantime::format_rfc3339_seconds(svid.not_before)
            )),
            Some(_) => None,
        }
    }
}

/// The wall clock the manager reads.
///
/// Certificates' validity and the time to renew are wall-clock times, while the manager waits
/// with tokio's clock. The unit tests pause tokio's clock, which does not move the system's, so
/// they give the manager a wall clock that follows tokio's.
pub(crate) trait Clock: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock: the sidecar's.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Obtains and renews the workload certificate, and keeps the trust bundle fresh.
///
/// The CA is reached through a [`Certifier`] (the real CA's gRPC API in the sidecar, a fake in
/// the unit tests) and the wall clock through a [`Clock`].
pub(crate) struct IdentityManager<C = CaCertifier, K = SystemClock> {
    ca: CaConfig,
    /// Shared with the bundle refresh task.
    certifier: Arc<C>,
    clock: K,
    trust: TrustStore,
    credentials: CredentialStore,
    status: watch::Sender<IdentityStatus>,
    metrics: Metrics,
    /// Where the app's SVID and bundles go, when the sidecar serves the Workload API.
    workload: Option<WorkloadFeed>,
}

// === impl IdentityManager ===

impl IdentityManager {
    /// The sidecar's manager: the CA of `ca`, the system's clock.
    pub(crate) fn new(
        ca: CaConfig,
        trust: TrustStore,
        credentials: CredentialStore,
        status: watch::Sender<IdentityStatus>,
        metrics: Metrics,
    ) -> Self {
        let certifier = CaCertifier::new(&ca, trust.clone(), credentials.clone());
        Self::with_certifier(
            certifier,
            SystemClock,
            ca,
            trust,
            credentials,
            status,
            metrics,
        )
    }
}

impl<C: Certifier, K: Clock> IdentityManager<C, K> {
    /// A manager that asks `certifier` for certificates and reads the time from `clock`. Of
    /// `ca`, only the token file and the bundle refresh interval are read here; the certifier
    /// knows where the CA is. Private: the clock decides when a certificate is checked as
    /// valid, so outside this module (and its tests) only [`IdentityManager::new`]'s system
    /// clock exists.
    fn with_certifier(
        certifier: C,
        clock: K,
        ca: CaConfig,
        trust: TrustStore,
        credentials: CredentialStore,
        status: watch::Sender<IdentityStatus>,
        metrics: Metrics,
    ) -> Self {
        Self {
            ca,
            certifier: Arc::new(certifier),
            clock,
            trust,
            credentials,
            status,
            metrics,
            workload: None,
        }
    }

    /// Also obtains the app's X.509-SVID after each certificate of the sidecar's, and
    /// publishes it and the bundles on `feed`.
    pub(crate) fn with_workload_feed(mut self, feed: WorkloadFeed) -> Self {
        self.workload = Some(feed);
        self
    }

    /// Runs until `stop` is cancelled: first certificate, renewals, bundle refreshes.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let (advice_tx, mut advice) = watch::channel(Advice::default());
        let refresh = tokio::spawn(refresh_bundle(
            self.certifier.clone(),
            self.ca.clone(),
            self.trust.clone(),
            self.metrics.clone(),
            advice_tx,
            self.workload.clone(),
            stop.clone(),
        ));
        let mut backoff = MIN_BACKOFF;
        let mut next_attempt = tokio::time::Instant::now();
        // The serial whose renewal a taint or a revocation brought forward already, so that
        // each bundle refresh repeating it does not draw a new random time.
        let mut forced_for: Option<String> = None;
        // Renewals in a row that came back under a tainted authority (a replica that has not
        // reloaded): each waits twice as long as the one before, up to the usual backoff's cap.
        let mut tainted_streak: u32 = 0;
        // When the app's SVID is to be obtained again after a failure, and how long the next
        // failure waits.
        let mut app_due: Option<tokio::time::Instant> = None;
        let mut app_backoff = MIN_BACKOFF;
        loop {
            let wake = app_due.map_or(next_attempt, |due| due.min(next_attempt));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {
                    if let Some(due) = app_due
                        && due <= tokio::time::Instant::now()
                        && next_attempt > tokio::time::Instant::now()
                    {
                        let own = self.status.borrow().svid.clone();
                        if let Some(own) = own {
                            let done = tokio::select! {
                                done = self.app_svid(&own) => done,
                                () = stop.cancelled() => break,
                            };
                            app_due = (!done).then(|| tokio::time::Instant::now() + round_to_millis(jittered(app_backoff, 0.2)));
                            app_backoff = if done { MIN_BACKOFF } else { (app_backoff * 2).min(MAX_BACKOFF) };
                        } else {
                            app_due = None;
                        }
                        continue;
                    }
                }
                Ok(()) = advice.changed() => {
                    let advice = advice.borrow_and_update().clone();
                    let current = self.status.borrow().svid.clone();
                    if let Some(svid) = current
                        && forced_for.as_deref() != Some(svid.serial.as_str())
                        && let Some((reason, why)) = advice.renew_now(&svid)
                    {
                        let wait = advice.delay(Duration::ZERO);
                        let at = tokio::time::Instant::now() + wait;
                        if at < next_attempt {
                            next_attempt = at;
                            forced_for = Some(svid.serial.clone());
                            self.metrics.forced_renewal(reason);
                            info!(
                                serial = %svid.serial,
                                in_ = %humantime::format_duration(wait),
                                "renewing the workload certificate early: {why}"
                            );
                        }
                    }
                    continue;
                }
                () = stop.cancelled() => break,
            }
            let current = self.status.borrow().svid.clone();
            // An attempt can wait on an unreachable CA for a while; shutdown does not.
            let span = tracing::info_span!(
                target: "hush::proxy",
                "obtain certificate",
                otel.kind = "client",
                hush.renewal = current.is_some(),
                hush.spiffe_id = Empty,
                hush.serial = Empty,
                hush.outcome = Empty,
                otel.status_code = Empty,
                otel.status_description = Empty,
            );
            let result = tokio::select! {
                result = self.attempt(current.as_deref()).instrument(span.clone()) => result,
                () = stop.cancelled() => break,
            };
            match &result {
                Ok(svid) => {
                    span.record("hush.outcome", "issued");
                    span.record("hush.spiffe_id", svid.spiffe_id.as_str());
                    span.record("hush.serial", svid.serial.as_str());
                }
                Err(error) => {
                    span.record("hush.outcome", "failed");
                    span.record("otel.status_code", "error");
                    span.record("otel.status_description", error.to_string().as_str());
                }
            }
            drop(span);
            match result {
                Ok(svid) => {
                    backoff = MIN_BACKOFF;
                    next_attempt = instant_at(svid.renew_at, self.clock.now());
                    // A replica that has not yet noticed the taint may still sign under the
                    // tainted authority: valid, so kept, and renewed again after a spread.
                    let advice = advice.borrow().clone();
                    let still_tainted = advice.tainted_authority(&svid);
                    tainted_streak = if still_tainted.is_some() {
                        tainted_streak.saturating_add(1)
                    } else {
                        0
                    };
                    if let Some(authority) = still_tainted {
                        let floor = MIN_BACKOFF
                            .saturating_mul(1 << tainted_streak.min(5))
                            .min(MAX_BACKOFF);
                        let at = tokio::time::Instant::now() + advice.delay(floor);
                        if at < next_attempt {
                            next_attempt = at;
                            forced_for = Some(svid.serial.clone());
                            self.metrics.forced_renewal("tainted");
                            info!(%authority, serial = %svid.serial, "the new certificate is also under tainted authority {authority}; renewing again shortly");
                        }
                    }
                    self.metrics.renewal(true);
                    self.metrics
                        .certificate_expiry(unix_seconds(svid.not_after));
                    let done = if current.is_some() {
                        "renewed"
                    } else {
                        "obtained"
                    };
                    info!(
                        spiffe_id = %svid.spiffe_id,
                        serial = %svid.serial,
                        expires = %humantime::format_rfc3339_seconds(svid.not_after),
                        "{done} the workload certificate"
                    );
                    let svid = Arc::new(svid);
                    self.status.send_replace(IdentityStatus {
                        svid: Some(svid.clone()),
                        last_error: None,
                    });
                    if self.workload.is_some() {
                        // On the same schedule as the sidecar's: right after it.
                        let done = tokio::select! {
                            done = self.app_svid(&svid) => done,
                            () = stop.cancelled() => break,
                        };
                        app_backoff = MIN_BACKOFF;
                        app_due = (!done).then(|| {
                            tokio::time::Instant::now()
                                + round_to_millis(jittered(app_backoff, 0.2))
                        });
                        if !done {
                            app_backoff = (app_backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                Err(error) => {
                    self.metrics.renewal(false);
                    let wait = round_to_millis(jittered(backoff, 0.2));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    next_attempt = tokio::time::Instant::now() + wait;
                    let left = current
                        .as_ref()
                        .and_then(|svid| svid.not_after.duration_since(self.clock.now()).ok());
                    let retry_in = humantime::format_duration(wait);
                    if let Some(left) = left {
                        // Renewal starts at about half the lifetime, so this warns long before
                        // the certificate runs out, and says how long is left.
                        let expires_in =
                            humantime::format_duration(Duration::from_secs(left.as_secs()));
                        warn!(%retry_in, %expires_in, "cannot renew the workload certificate; still serving with the current one, which expires in {expires_in}: {error}");
                    } else {
                        warn!(%retry_in, "cannot obtain a workload certificate: {error}");
                    }
                    self.status.send_modify(|status| {
                        status.last_error = Some(error.to_string());
                    });
                }
            }
        }
        refresh.abort();
    }

    /// One attempt: renew with the current certificate while it is valid, otherwise (or if the
    /// CA refuses that, or `ca.reattest` says always) attest with the token.
    async fn attempt(&self, current: Option<&Svid>) -> Result<Svid, AttemptError> {
        let key = rcgen::KeyPair::generate().map_err(AttemptError::KeyPair)?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(AttemptError::Csr)?
            .der()
            .to_vec();
        let valid_now = current.is_some_and(|svid| self.clock.now() < svid.not_after);

        let issued = if valid_now && self.reattest() == Reattest::WhenAsked {
            match self.certifier.renew(csr.clone()).await {
                Ok(issued) => issued,
                Err(CaError::Client(e)) => return Err(AttemptError::Client(e)),
                // The CA is down: the token would not get through either.
                Err(e) if e.is_unavailable() => return Err(AttemptError::RenewalUnavailable(e)),
                Err(renewal) => {
                    let words = format!("renewal with the current certificate failed: {renewal}");
                    debug!(renewal = %words, "falling back to the token");
                    self.with_token(csr)
                        .await
                        .map_err(|token| AttemptError::RenewalThenToken {
                            renewal,
                            token: Box::new(token),
                        })?
                }
            }
        } else {
            self.with_token(csr).await?
        };

        if !issued.bundle.is_empty() {
            // A certificate's answer carries no generation, and may come from a replica that
            // lags behind one the bundle refresh already heard: it may add roots (the new root
            // of the certificate it brings), never take one away. Removing is the refresh's, and
            // so is the deny-list, which is kept.
            let mut roots = self.trust.bundle().roots().to_vec();
            for root in issued.bundle {
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
            apply_bundle(
                &self.trust,
                &self.metrics,
                self.ca.bundle_cache.as_deref(),
                roots,
                None,
            );
            if let Some(feed) = &self.workload {
                feed.publish_bundles(&self.trust, None, None);
            }
        }
        // The identity never changes while the sidecar runs.
        let expected = match current {
            Some(svid) => ExpectedServer::OneOf(vec![svid.spiffe_id.clone()]),
            None => ExpectedServer::AnyInTrustDomain,
        };
        let svid = check_issued(&self.trust, expected, &issued.chain, self.clock.now())?;
        self.credentials
            .install(
                issued.chain,
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(AttemptError::Unusable)?;
        Ok(svid)
    }

    /// Obtains a new X.509-SVID for the app, with a key of its own, and publishes it: whether
    /// that worked. A failure is logged; the app keeps the SVID it has until the next try.
    async fn app_svid(&self, own: &Svid) -> bool {
        let Some(feed) = &self.workload else {
            return true;
        };
        match self.app_attempt(own).await {
            Ok(svid) => {
                info!(
                    spiffe_id = %svid.spiffe_id,
                    serial = %svid.serial,
                    expires = %humantime::format_rfc3339_seconds(svid.not_after),
                    "obtained the app's X.509-SVID for the Workload API"
                );
                feed.svid.send_replace(Some(Arc::new(svid)));
                true
            }
            Err(error) => {
                warn!(
                    "cannot obtain the app's X.509-SVID for the Workload API; the app keeps the one it has: {error}"
                );
                false
            }
        }
    }

    /// One attempt at the app's SVID: a renewal with the sidecar's certificate `own` (mutual
    /// TLS), for a key made now; the token if the CA refuses the renewal.
    async fn app_attempt(&self, own: &Svid) -> Result<AppSvid, AttemptError> {
        let key = rcgen::KeyPair::generate().map_err(AttemptError::KeyPair)?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .map_err(AttemptError::Csr)?
            .der()
            .to_vec();
        let issued = match self.certifier.renew(csr.clone()).await {
            Ok(issued) => issued,
            Err(CaError::Client(e)) => return Err(AttemptError::Client(e)),
            Err(e) if e.is_unavailable() => return Err(AttemptError::RenewalUnavailable(e)),
            Err(renewal) => {
                self.with_token(csr)
                    .await
                    .map_err(|token| AttemptError::RenewalThenToken {
                        renewal,
                        token: Box::new(token),
                    })?
            }
        };
        let checked = check_issued(
            &self.trust,
            ExpectedServer::OneOf(vec![own.spiffe_id.clone()]),
            &issued.chain,
            self.clock.now(),
        )?;
        Ok(AppSvid {
            spiffe_id: checked.spiffe_id,
            serial: checked.serial,
            not_after: checked.not_after,
            chain: checked.chain,
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// Whether renewals send the token: `ca.reattest`, or when unset, what the token file
    /// holds now (a Kubernetes token: always; a join token, or none yet: when the CA asks).
    fn reattest(&self) -> Reattest {
        self.ca
            .reattest
            .unwrap_or_else(|| match read_token(&self.ca.token_file) {
                Ok(token) => Reattest::for_token(&token),
                // Nothing to send yet: the certificate is all there is.
                Err(_) => Reattest::WhenAsked,
            })
    }

    /// Attestation with the token, read from its file now: a rotated token is picked up.
    async fn with_token(&self, csr: Vec<u8>) -> Result<Issued, AttemptError> {
        let token = read_token(&self.ca.token_file)?;
        self.certifier
            .certify(&token, csr)
            .await
            .map_err(|error| match error {
                CaError::Client(e) => AttemptError::Client(e),
                error => AttemptError::Token(error),
            })
    }
}

/// Checks what the CA sent before presenting it to anyone: it must chain to the trust bundle,
/// be an X.509-SVID of the trust domain valid at `now`, and name the expected identity.
fn check_issued(
    trust: &TrustStore,
    expected: ExpectedServer,
    chain: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<Svid, AttemptError> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(AttemptError::EmptyChain);
    };
    let verifier =
        SpiffeServerVerifier::with_trust(trust, expected).map_err(AttemptError::Verifier)?;
    // The server name is not looked at: the SPIFFE ID stands in for it.
    let name = ServerName::try_from("workload.invalid").map_err(AttemptError::ServerName)?;
    let at = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], at)
        .map_err(AttemptError::rejected)?;
    let summary = CertificateSummary::from_der(leaf).map_err(AttemptError::Unreadable)?;
    let spiffe_id = summary.spiffe_id.clone().ok_or(AttemptError::NoSpiffeId)?;
    let not_before = system_time(summary.not_before);
    let not_after = system_time(summary.not_after);
    let remaining = not_after.duration_since(now).unwrap_or_default();
    Ok(Svid {
        spiffe_id,
        serial: summary.serial_hex,
        not_before,
        not_after,
        renew_at: now + renewal_delay(remaining),
        chain: chain.to_vec(),
    })
}

/// When to renew a certificate with `remaining` validity: about half-way, with ±10 % jitter
/// so that sidecars started together do not all call the CA at the same moment.
fn renewal_delay(remaining: Duration) -> Duration {
    remaining.mul_f64(0.5 + (random_unit() - 0.5) * 0.2)
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn jittered(base: Duration, spread: f64) -> Duration {
    base.mul_f64(1.0 + (random_unit() - 0.5) * 2.0 * spread)
}

/// A uniform number in [0, 1).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    // Jitter needs no secrecy; if the system's generator fails, no jitter is fine.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

fn read_token(path: &Path) -> Result<String, AttemptError> {
    let token = std::fs::read_to_string(path).map_err(|source| AttemptError::TokenUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(AttemptError::TokenEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Fetches the trust bundle every `every` until `stop` is cancelled. A bundle also comes with
/// every certificate; this keeps a sidecar whose certificate lives long up to date with a root
/// rotation, and tells the renewal loop of tainted authorities.
///
/// Replicas of the CA may briefly serve different generations of its authorities: an answer of
/// a lower generation than one already applied is ignored, so that a lagging replica never
/// takes back a new root or a taint.
async fn refresh_bundle<C: Certifier>(
    certifier: Arc<C>,
    ca: CaConfig,
    trust: TrustStore,
    metrics: Metrics,
    advice: watch::Sender<Advice>,
    workload: Option<WorkloadFeed>,
    stop: CancellationToken,
) {
    // The Workload API hands out the JWT keys, which only the bundle brings: fetched at once
    // then, not a refresh interval after the start.
    let mut wait = if workload.is_some() {
        Duration::ZERO
    } else {
        ca.bundle_refresh
    };
    let mut newest = 0;
    // The deny-list has a generation of its own: a replica can be current on one and lag on
    // the other.
    let mut newest_deny = 0;
    // The federated domains' JWT keys, for the Workload API, as the CA last sent them.
    let mut federated_jwt = BTreeMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        wait = ca.bundle_refresh;
        match certifier.trust_bundle().await {
            Ok(update) if update.generation < newest => {
                debug!(
                    generation = update.generation,
                    newest, "ignoring a trust bundle of an older generation (a lagging CA replica)"
                );
            }
            Ok(BundleUpdate {
                roots,
                generation,
                tainted,
                renew_spread,
                deny,
                deny_generation,
                jwt_keys,
                federated,
            }) => {
                newest = generation;
                let deny = match deny {
                    Some(_) if deny_generation < newest_deny => {
                        debug!(
                            deny_generation,
                            newest_deny,
                            "ignoring a deny-list of an older generation (a lagging CA replica)"
                        );
                        None
                    }
                    Some(deny) => {
                        newest_deny = deny_generation;
                        Some(deny)
                    }
                    None => None,
                };
                apply_bundle(&trust, &metrics, ca.bundle_cache.as_deref(), roots, deny);
                if let Some(federated) = federated {
                    federated_jwt = federated_jwt_keys(&federated);
                    apply_federated(&trust, federated);
                }
                if let Some(feed) = &workload {
                    feed.publish_bundles(&trust, jwt_keys, Some(&federated_jwt));
                }
                let next = Advice {
                    tainted: Arc::new(tainted),
                    spread: renew_spread,
                    deny: trust.deny_list(),
                };
                advice.send_if_modified(|current| {
                    let changed = *current != next;
                    *current = next;
                    changed
                });
            }
            Err(CaError::Client(e)) => warn!(error = %e, "cannot refresh the trust bundle"),
            Err(e) => {
                let error = format!("fetching the trust bundle failed: {e}");
                debug!(%error, "keeping the current trust bundle");
            }
        }
    }
}

/// Puts the CA's roots, and its deny-list when it sent one, in force together (both verifiers
/// see them from the next handshake on), and keeps the roots in `cache` for the next start. A
/// bundle that cannot be used leaves both as they are.
fn apply_bundle(
    trust: &TrustStore,
    metrics: &Metrics,
    cache: Option<&Path>,
    roots: Vec<CertificateDer<'static>>,
    deny: Option<DenyList>,
) {
    let bundle = match TrustBundle::new(trust.trust_domain(), roots) {
        Ok(bundle) => bundle,
        Err(e) => {
            warn!(error = %e, "the CA sent a trust bundle that cannot be used; keeping the current one");
            return;
        }
    };
    let roots_changed = bundle.roots() != trust.bundle().roots();
    let deny_changed = deny
        .as_ref()
        .is_some_and(|deny| *deny != *trust.deny_list());
    let entries = deny.as_ref().map(DenyList::len);
    let result = match deny {
        Some(deny) => trust.update(bundle, deny),
        None => trust.replace(bundle),
    };
    match result {
        Ok(true) => {
            if roots_changed {
                metrics.bundle_updated();
                info!(
                    roots = trust.bundle().roots().len(),
                    "trust bundle updated from the CA"
                );
                if let Some(cache) = cache {
                    write_bundle_cache(cache, &trust.bundle());
                }
            }
            if deny_changed {
                info!(
                    entries = entries.unwrap_or_default(),
                    "deny-list updated from the CA: new handshakes refuse what it revokes"
                );
            }
        }
        Ok(false) => {}
        Err(e) => warn!(error = %e, "refused the CA's trust bundle; keeping the current one"),
    }
}

/// The JWT keys of each federated trust domain the CA sent, by name. A domain that publishes
/// none, or whose keys cannot be read (logged), has no entry: its JWT-SVIDs are then refused.
fn federated_jwt_keys(federated: &[FederatedDomain]) -> BTreeMap<String, hush_identity::JwtKeys> {
    federated
        .iter()
        .filter(|domain| !domain.0.jwt_keys.is_empty())
        .filter_map(|domain| {
            let name = domain.0.trust_domain.to_string();
            match hush_identity::JwtKeys::from_json(&domain.0.jwt_keys) {
                Ok(keys) => Some((name, keys)),
                Err(error) => {
                    warn!(trust_domain = %name, %error, "the CA sent JWT keys of a federated trust domain that cannot be read; its JWT-SVIDs are refused");
                    None
                }
            }
        })
        .collect()
}

/// Puts the federated trust domains the CA sent in force: a peer of one of them verifies
/// against its roots from the next handshake on (and only where a policy names it). A set that
/// cannot be used leaves the current one.
fn apply_federated(trust: &TrustStore, federated: Vec<FederatedDomain>) {
    let domains: Vec<String> = federated
        .iter()
        .map(|d| d.0.trust_domain.to_string())
        .collect();
    match trust.federate(federated.into_iter().map(|d| d.0.roots).collect()) {
        Ok(true) => info!(
            domains = %domains.join(", "),
            "federated trust domains updated from the CA"
        ),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "refused the CA's federated bundles; keeping the current ones"),
    }
}

/// Writes `bundle` to `path` through a temporary file and a rename, so that a sidecar starting
/// while it is written reads the old bundle or the new one, never half of one. A failure is
/// logged: the sidecar runs on, and would start from `ca.trust_bundle` next time.
fn write_bundle_cache(path: &Path, bundle: &TrustBundle) {
    use std::io::Write;
    // A new file of a random name, never one that exists: a link planted at a predictable
    // name cannot make the sidecar write through it.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{:016x}.tmp",
        (random_unit() * (1u64 << 53) as f64) as u64
    ));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut file| file.write_all(bundle.to_pem().as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let Err(e) = written {
        warn!(cache = %path.display(), error = %e, "cannot keep the trust bundle in ca.bundle_cache; a restart would start from ca.trust_bundle");
    }
}

/// The monotonic instant at which the wall clock, reading `now` at this moment, reads `at`
/// (this moment, if that is past).
fn instant_at(at: SystemTime, now: SystemTime) -> tokio::time::Instant {
    let wait = at.duration_since(now).unwrap_or_default();
    tokio::time::Instant::now() + wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_about_half_way() {
        let lifetime = Duration::from_secs(24 * 3600);
        for _ in 0..1000 {
            let delay = renewal_delay(lifetime);
            assert!(delay >= lifetime.mul_f64(0.4), "{delay:?}");
            assert!(delay <= lifetime.mul_f64(0.6), "{delay:?}");
        }
        let spread: std::collections::HashSet<u64> = (0..100)
            .map(|_| renewal_delay(lifetime).as_secs())
            .collect();
        assert!(spread.len() > 50, "the delay is jittered");
    }

    #[test]
    fn backoff_jitter_stays_close() {
        for _ in 0..1000 {
            let wait = jittered(Duration::from_secs(10), 0.2);
            assert!(wait >= Duration::from_secs(8) && wait <= Duration::from_secs(12));
        }
    }

    #[test]
    fn readiness_needs_a_valid_certificate() {
        let now = SystemTime::now();
        let mut status = IdentityStatus::default();
        assert!(!status.is_valid_at(now));
        assert!(
            status
                .not_ready_reason(now)
                .unwrap()
                .contains("waiting for the CA")
        );
        status.last_error = Some("CA unreachable".into());
        let svid = Svid {
            spiffe_id: "spiffe://example.org/a".parse().unwrap(),
            serial: "01".into(),
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(60),
            renew_at: now,
            chain: vec![],
        };
        status.svid = Some(Arc::new(svid));
        assert!(status.is_valid_at(now));
        assert_eq!(status.not_ready_reason(now), None);
        let later = now + Duration::from_secs(120);
        assert!(!status.is_valid_at(later));
        let reason = status.not_ready_reason(later).unwrap();
        assert!(
            reason.contains("expired") && reason.contains("CA unreachable"),
            "{reason}"
        );
    }

    #[test]
    fn an_empty_token_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_token(&path)
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        std::fs::write(&path, "hushjt.abc.def\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "hushjt.abc.def");
        let missing = read_token(&dir.path().join("nope")).unwrap_err();
        assert!(
            missing.to_string().contains("cannot read the token file"),
            "{missing}"
        );
    }
}
