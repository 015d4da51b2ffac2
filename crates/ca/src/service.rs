//! The gRPC services: hush's own `hush.ca.v1.CertificateAuthority` and the Istio-compatible
//! `istio.v1.auth.IstioCertificateService`. Both run the same issuance path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hush_identity::{SpiffeBundle, SpiffeBundleError, SpiffeId, TrustDomain};
use hush_tls::{SpiffeClientVerifier, TlsConfigError, TrustStore};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::UnixTime;
use tokio::sync::watch;

use hush_proto::hush::ca::v1 as pb;
use hush_proto::istio::v1::auth as istio;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataMap};
use tonic::{Request, Response, Status};
use tracing::field::Empty;
use tracing::{Instrument, Span, info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::attest::{AttestError, AttestationKind, Attested, Attestor, bearer_token};
use crate::audit::{AuditEvent, AuditLog, AuditRecord, rfc3339};
use crate::authorities::State as AuthorityState;
use crate::authority::IssuedSvid;
use crate::csr::VerifiedCsr;
use crate::federation::FetchedBundle;
use crate::jwt::{DEFAULT_JWT_MAX_TTL, JwtMintError, MintedJwt};
use crate::lineage::{DEFAULT_REATTEST_AFTER, Lineage, PresentedCertificate, check_reattestation};
use crate::live::{AuthoritySet, Reload, ReloadError};
use crate::metrics::CaMetrics;
use crate::revocations::retention;
use crate::server::PeerInfo;
use crate::store::CaDir;
use crate::tokens::join_token_id;

/// The name of hush's own API in logs and the audit log.
pub const HUSH_API: &str = "hush.ca.v1";
/// The name of the Istio-compatible API in logs and the audit log.
pub const ISTIO_API: &str = "istio.v1.auth";
/// The name of `MintJwtSvid` in logs, the audit log and the refusal metrics.
pub const JWT_API: &str = "hush.ca.v1.MintJwtSvid";

/// Everything an issuance needs; shared by both services.
#[derive(Debug, Clone)]
pub struct CaService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Read once per request, so that a request never mixes two sets.
    authorities: ArcSwap<AuthoritySet>,
    /// The roots in force, for client certificates: at the handshake, and again at each
    /// renewal, since a connection may outlive a root.
    trust: TrustStore,
    client_verifier: Arc<SpiffeClientVerifier>,
    /// Told the generation each time another set is put in force.
    changes: watch::Sender<u64>,
    /// Serialises reloads, so that two never race to put their set in force.
    reloading: std::sync::Mutex<()>,
    /// Forced renewals after a taint are spread over this many seconds (`--taint-spread`).
    renew_spread_seconds: std::sync::atomic::AtomicI64,
    /// A renewal with a certificate whose identity was attested longer ago than this many
    /// seconds is refused (`--reattest-after`).
    reattest_after_seconds: std::sync::atomic::AtomicU64,
    /// The longest JWT-SVID lifetime granted, in seconds (`--jwt-max-ttl`).
    jwt_max_ttl_seconds: std::sync::atomic::AtomicU64,
    attestor: Attestor,
    audit: AuditLog,
    /// Counted where issuances are audited and reloads decided.
    metrics: CaMetrics,
    /// The bundles of the federated trust domains, as last fetched (`--federate-with`).
    federated: ArcSwap<BTreeMap<TrustDomain, FetchedBundle>>,
}

/// The default `--taint-spread`: on a cluster every renewal is also a TokenReview, so a taint
/// must not make every sidecar call at once.
pub const DEFAULT_TAINT_SPREAD: Duration = Duration::from_secs(60);

// === impl CaService ===

impl CaService {
    /// Serves certificates of `authorities` to callers `attestor` vouches for, auditing to
    /// `audit`.
    pub fn new(
        authorities: AuthoritySet,
        attestor: Attestor,
        audit: AuditLog,
    ) -> Result<Self, TlsConfigError> {
        let (changes, _) = watch::channel(authorities.generation());
        let trust = TrustStore::new(authorities.authority().bundle().clone())?;
        let client_verifier = SpiffeClientVerifier::with_trust(&trust, false);
        let metrics = CaMetrics::new();
        metrics.authorities_in_force(authorities.manifest());
        Ok(Self {
            inner: Arc::new(Inner {
                authorities: ArcSwap::from_pointee(authorities),
                trust,
                client_verifier,
                renew_spread_seconds: std::sync::atomic::AtomicI64::new(
                    DEFAULT_TAINT_SPREAD.as_secs() as i64,
                ),
                reattest_after_seconds: std::sync::atomic::AtomicU64::new(
                    DEFAULT_REATTEST_AFTER.as_secs(),
                ),
                jwt_max_ttl_seconds: std::sync::atomic::AtomicU64::new(
                    DEFAULT_JWT_MAX_TTL.as_secs(),
                ),
                changes,
                reloading: std::sync::Mutex::new(()),
                attestor,
                audit,
                metrics,
                federated: ArcSwap::default(),
            }),
        })
    }

    /// Sidecars renewing away from a tainted authority spread their renewals over `spread`.
    pub fn set_taint_spread(&self, spread: Duration) {
        let seconds = i64::try_from(spread.as_secs()).unwrap_or(i64::MAX);
        self.inner
            .renew_spread_seconds
            .store(seconds, std::sync::atomic::Ordering::Relaxed);
    }

    /// A renewal with a certificate is refused, and the token asked for, once the identity
    /// was last attested longer than `limit` ago (zero: at every renewal).
    pub fn set_reattest_after(&self, limit: Duration) {
        self.inner
            .reattest_after_seconds
            .store(limit.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// JWT-SVIDs live at most `limit` (`--jwt-max-ttl`), and never longer than the manifest's
    /// `max_ttl_seconds`, which bounds when a retired JWT authority may be revoked.
    pub fn set_jwt_max_ttl(&self, limit: Duration) {
        self.inner
            .jwt_max_ttl_seconds
            .store(limit.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    fn jwt_max_ttl(&self, current: &AuthoritySet) -> Duration {
        let limit = Duration::from_secs(
            self.inner
                .jwt_max_ttl_seconds
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let manifest = current.manifest();
        if manifest.generation > 0 {
            limit.min(Duration::from_secs(manifest.max_ttl_seconds))
        } else {
            limit
        }
    }

    /// The `MintJwtSvid` path: the caller is the SPIFFE ID of its client certificate, accepted
    /// as a renewal would be (still chained to the roots in force, not under a revoked
    /// intermediate, not revoked, attested recently enough); no token is read. Every outcome
    /// is audited and counted.
    async fn mint_jwt(
        &self,
        request: &Request<pb::MintJwtSvidRequest>,
    ) -> Result<(SpiffeId, MintedJwt), Status> {
        let peer_info = request.extensions().get::<PeerInfo>();
        let peer = peer_info
            .and_then(|p| p.tcp.remote_addr)
            .or_else(|| request.remote_addr())
            .map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let body = request.get_ref();
        let current = self.current();
        let mut caller: Option<SpiffeId> = None;
        let result = (|| {
            let id = peer_info.and_then(|p| p.spiffe_id.clone()).ok_or_else(|| {
                Status::unauthenticated(
                    "a JWT-SVID is minted for the SPIFFE ID of the connection's client \
                     certificate, and this connection presented none: call over mutual TLS \
                     with an X.509-SVID of this trust domain",
                )
            })?;
            caller = Some(id.clone());
            // hush's own components (the bundle endpoint) are no workloads: they get no token.
            if crate::authority::is_reserved_id(&id) {
                return Err(Status::permission_denied(format!(
                    "{id} is reserved for hush's own components, which get no JWT-SVID"
                )));
            }
            self.still_trusted(peer_info)?;
            let presented = presented_certificate(peer_info)?;
            if let Some(words) = current.revocations().refusal(&id, None, Some(&presented)) {
                return Err(Status::permission_denied(words));
            }
            check_reattestation(
                &id,
                presented.record.attested_at,
                time::OffsetDateTime::now_utc().unix_timestamp(),
                self.reattest_after(),
            )
            .map_err(Status::unauthenticated)?;
            let ttl = requested_ttl(body.ttl_seconds)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let minted = current
                .jwt()
                .mint(&id, &body.audience, ttl, self.jwt_max_ttl(&current), now)
                .map_err(|e| match e {
                    JwtMintError::Audience(words) => Status::invalid_argument(words),
                    JwtMintError::Sign(_) => Status::internal(e.to_string()),
                    _ => Status::failed_precondition(e.to_string()),
                })?;
            Ok((id, minted))
        })();

        let mut record = AuditRecord::new(
            if result.is_ok() {
                AuditEvent::JwtIssued
            } else {
                AuditEvent::Refused
            },
            JWT_API,
        );
        record.peer = Some(peer.clone());
        record.attestation = Some(AttestationKind::X509Svid.as_str());
        record.spiffe_id = caller.as_ref().map(ToString::to_string);
        // Only audiences that passed the checks: a refused one may be anything.
        match &result {
            Ok((id, minted)) => {
                record.audience = Some(body.audience.clone());
                record.authority = Some(minted.key_id.to_string());
                record.kind = Some("jwt");
                record.not_after = time::OffsetDateTime::from_unix_timestamp(minted.expires_at)
                    .ok()
                    .map(rfc3339);
                info!(
                    api = JWT_API,
                    spiffe_id = %id,
                    audience = ?body.audience,
                    key_id = %minted.key_id,
                    expires_at = minted.expires_at,
                    %peer,
                    "issued JWT-SVID"
                );
            }
            Err(status) => {
                record.code = Some(format!("{:?}", status.code()));
                record.reason = Some(status.message().to_string());
                warn!(api = JWT_API, code = ?status.code(), reason = status.message(), %peer, "refused JWT-SVID request");
            }
        }
        let audited = self.inner.audit.append(&record).await.map_err(|e| {
            warn!(error = %e, "refusing to hand out a JWT-SVID that could not be audited");
            Status::internal(e.to_string())
        });
        match (&result, &audited) {
            (Ok(_), Ok(())) => self.inner.metrics.jwt_issued(),
            (_, Err(status)) | (Err(status), Ok(())) => {
                self.inner.metrics.refused(JWT_API, status.code());
            }
        }
        audited?;
        result
    }

    fn reattest_after(&self) -> Duration {
        Duration::from_secs(
            self.inner
                .reattest_after_seconds
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Verifies client certificates against the roots in force.
    pub(crate) fn client_verifier(&self) -> Arc<SpiffeClientVerifier> {
        self.inner.client_verifier.clone()
    }

    /// The authorities in force.
    pub fn current(&self) -> Arc<AuthoritySet> {
        self.inner.authorities.load_full()
    }

    /// The trust domain; it never changes while the CA runs.
    pub fn trust_domain(&self) -> TrustDomain {
        self.inner
            .authorities
            .load()
            .authority()
            .trust_domain()
            .clone()
    }

    /// The CA's metrics, for the metrics server.
    pub fn metrics(&self) -> &CaMetrics {
        &self.inner.metrics
    }

    /// The JWT keys of this CA's JWT authorities, as a JWK Set: what
    /// `GetTrustBundleResponse.jwt_keys` carries and the bundle endpoint publishes, made here
    /// once so that the two never disagree. Every JWT authority not revoked: the prepared one,
    /// so validators hold its key before it signs, and the old ones, while tokens they signed
    /// may be alive. Empty while the CA has no JWT authority.
    pub(crate) fn jwt_keys_json(&self, current: &AuthoritySet) -> Vec<u8> {
        current.jwt().keys.to_json()
    }

    /// The SPIFFE bundle of this CA's trust domain, as its bundle endpoint serves it: every
    /// trusted root, the JWT keys, the authorities' generation as `spiffe_sequence`, and
    /// `refresh_hint`.
    pub fn spiffe_bundle(&self, refresh_hint: Duration) -> Result<SpiffeBundle, SpiffeBundleError> {
        let current = self.current();
        SpiffeBundle::new(
            current.authority().bundle().clone(),
            &self.jwt_keys_json(&current),
            Some(current.generation()),
            Some(refresh_hint),
        )
    }

    /// The bundles of the federated trust domains, as last fetched.
    pub fn federated(&self) -> Arc<BTreeMap<TrustDomain, FetchedBundle>> {
        self.inner.federated.load_full()
    }

    /// Puts a freshly fetched bundle of a federated trust domain in force.
    pub(crate) fn set_federated(&self, fetched: FetchedBundle) {
        self.inner.federated.rcu(|all| {
            let mut all = BTreeMap::clone(all);
            all.insert(fetched.bundle.trust_domain().clone(), fetched.clone());
            all
        });
    }

    /// Changes each time another set of authorities is put in force.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Reads `dir` and puts what it holds in force if it differs from the set in force and may
    /// succeed it (blocking file I/O: call it off the async workers).
    pub fn reload_from(&self, dir: &CaDir) -> Result<Reload, ReloadError> {
        let outcome = self.try_reload_from(dir);
        match &outcome {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Loaded { .. }) => self.inner.metrics.reload(true),
            Err(_) => self.inner.metrics.reload(false),
        }
        outcome
    }

    fn try_reload_from(&self, dir: &CaDir) -> Result<Reload, ReloadError> {
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.current();
        let Some(mut next) = current.load_if_changed(dir)? else {
            return Ok(Reload::Unchanged);
        };
        let outcome = current.check_successor(&next)?;
        next.remember(&current);
        if let Reload::Loaded { generation, .. } = outcome {
            // Roots first: a certificate under a new root must not be refused at the
            // handshake while the CA already signs under it.
            self.inner
                .trust
                .replace(next.authority().bundle().clone())
                .map_err(|e| ReloadError::Trust(e.to_string()))?;
            self.inner.metrics.authorities_in_force(next.manifest());
            self.inner.authorities.store(Arc::new(next));
            self.inner.changes.send_replace(generation);
        }
        Ok(outcome)
    }

    /// Refuses a renewal whose certificate, verified when its connection began, no longer
    /// chains to a root in force (the root was revoked since).
    fn still_trusted(&self, peer: Option<&PeerInfo>) -> Result<(), Status> {
        let chain = peer.map(|p| p.certificates.as_slice()).unwrap_or_default();
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Status::unauthenticated(
                "the client certificate of this connection is unknown; present a token",
            ));
        };
        self.inner
            .client_verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| {
                Status::unauthenticated(format!(
                    "the certificate this connection presented is no longer trusted by this CA ({}): present a token to get a new one",
                    hush_tls::explain_tls_error(&e)
                ))
            })?;
        // Roots are what verifiers trust, so a revoked intermediate under a root still in the
        // bundle verifies; a renewal must not turn a certificate under it (or one forged with
        // its leaked key) into a fresh certificate from the active intermediate.
        let current = self.current();
        for ca in intermediates {
            let Some(id) = hush_identity::authority_id(ca) else {
                continue;
            };
            if let Some(revoked) = current
                .manifest()
                .authorities
                .iter()
                .find(|a| a.id.as_str() == id && a.state == AuthorityState::Revoked)
            {
                return Err(Status::unauthenticated(format!(
                    "the certificate this connection presented was issued by intermediate {}, which this CA revoked: present a token to get a new one",
                    revoked.id
                )));
            }
        }
        Ok(())
    }

    /// Appends a line about the CA itself to the audit log; a failure is logged, since there is
    /// no caller to refuse.
    pub(crate) async fn audit_record(&self, record: &AuditRecord) {
        if let Err(e) = self.inner.audit.append(record).await {
            warn!(error = %e, "cannot write to the audit log");
        }
    }

    /// hush's own gRPC service.
    pub fn hush_service(
        &self,
    ) -> pb::certificate_authority_server::CertificateAuthorityServer<Self> {
        pb::certificate_authority_server::CertificateAuthorityServer::new(self.clone())
    }

    /// The Istio-compatible gRPC service.
    pub fn istio_service(
        &self,
    ) -> istio::istio_certificate_service_server::IstioCertificateServiceServer<Self> {
        istio::istio_certificate_service_server::IstioCertificateServiceServer::new(self.clone())
    }

    /// The one issuance path: attest, check revocations and the age of the attestation, check
    /// the CSR, sign, audit. Every outcome is audited.
    async fn issue<T>(
        &self,
        api: &'static str,
        request: &Request<T>,
        csr: &[u8],
        ttl_seconds: i64,
    ) -> Result<IssuedSvid, Status> {
        let peer_info = request.extensions().get::<PeerInfo>();
        let peer = peer_info
            .and_then(|p| p.tcp.remote_addr)
            .or_else(|| request.remote_addr())
            .map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let peer_certificate_id = peer_info.and_then(|p| p.spiffe_id.clone());
        let span = issuance_span(api, &peer, request.metadata());
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().map_err(|_| AttestError::NotBearer));
        // One set of authorities and revocations for the whole request.
        let current = self.current();
        let revocations = current.revocations();
        let mut attested: Option<Attested> = None;
        let mut presented_token_id: Option<String> = None;
        let mut presented: Option<PresentedCertificate> = None;
        let result = async {
            let header = header.transpose().map_err(attest_status)?;
            let who = match (header, peer_certificate_id) {
                // A renewal: the handshake proved the current certificate, and no token
                // claims anything else. Checked again against the roots in force, since the
                // connection may have outlived the root the certificate chains to.
                (None, Some(id)) => {
                    self.still_trusted(peer_info)?;
                    presented = Some(presented_certificate(peer_info)?);
                    Attested::by_certificate(id)
                }
                (header, _) => {
                    let token = bearer_token(header).map_err(attest_status)?;
                    // Known before attestation, so that a refused join token is audited by its id.
                    presented_token_id = join_token_id(token).map(str::to_string);
                    if let Some(words) = presented_token_id
                        .as_deref()
                        .and_then(|id| revocations.token_refusal(id))
                    {
                        return Err(Status::permission_denied(words));
                    }
                    self.inner
                        .attestor
                        .attest(token)
                        .await
                        .map_err(attest_status)?
                }
            };
            attested = Some(who.clone());
            // Whatever vouched for it (a join token minted before the reservation, an
            // attestor's mapping), no workload gets an identity of hush's own components.
            if crate::authority::is_reserved_id(&who.spiffe_id) {
                return Err(Status::permission_denied(
                    crate::authority::AuthorityError::Reserved(who.spiffe_id.clone()).to_string(),
                ));
            }
            if let Some(words) =
                revocations.refusal(&who.spiffe_id, who.token_id.as_deref(), presented.as_ref())
            {
                return Err(Status::permission_denied(words));
            }
            let lineage = match &presented {
                Some(presented) => {
                    check_reattestation(
                        &who.spiffe_id,
                        presented.record.attested_at,
                        time::OffsetDateTime::now_utc().unix_timestamp(),
                        self.reattest_after(),
                    )
                    .map_err(Status::unauthenticated)?;
                    Lineage::Renewed(presented.record.clone())
                }
                None => Lineage::Attested {
                    method: who.kind.record_method().ok_or_else(|| {
                        Status::internal("a renewal without the certificate it renews")
                    })?,
                    token_id: who.token_id.clone(),
                },
            };
            let ttl = requested_ttl(ttl_seconds)?;
            let csr = VerifiedCsr::parse(csr)
                .map_err(|e| Status::invalid_argument(format!("invalid CSR: {e}")))?;
            self.inner
                .attestor
                .complete(&who)
                .await
                .map_err(attest_status)?;
            let svid = current
                .authority()
                .issue(
                    &csr,
                    &who.spiffe_id,
                    ttl,
                    &lineage,
                    revocations.not_before_floor(&who.spiffe_id),
                )
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            Ok(svid)
        }
        .instrument(span.clone())
        .await;
        let audited = self
            .audit(
                api,
                &peer,
                attested.as_ref(),
                presented_token_id,
                presented.as_ref(),
                &result,
            )
            .instrument(span.clone())
            .await;
        record_issuance(&span, attested.as_ref(), &result, audited.as_ref().err());
        // Counted as the caller is answered: a certificate that could not be audited is refused.
        match (&result, &audited) {
            (Ok(_), Ok(())) => self.inner.metrics.issued(api),
            (_, Err(status)) | (Err(status), Ok(())) => {
                self.inner.metrics.refused(api, status.code());
            }
        }
        audited?;
        result
    }

    async fn audit(
        &self,
        api: &'static str,
        peer: &str,
        attested: Option<&Attested>,
        presented_token_id: Option<String>,
        presented: Option<&PresentedCertificate>,
        result: &Result<IssuedSvid, Status>,
    ) -> Result<(), Status> {
        let event = if result.is_ok() {
            AuditEvent::Issued
        } else {
            AuditEvent::Refused
        };
        let mut record = AuditRecord::new(event, api);
        record.peer = Some(peer.to_string());
        if let Some(who) = attested {
            record.attestation = Some(who.kind.as_str());
            record.token_id = who.token_id.clone();
            record.spiffe_id = Some(who.spiffe_id.to_string());
        } else if let Some(id) = presented_token_id {
            record.attestation = Some(AttestationKind::JoinToken.as_str());
            record.token_id = Some(id);
        }
        record.renewed_from = presented.map(|p| p.serial.clone());
        // For a refused renewal, the record it presented: what a re-attestation refusal
        // judged, and the line a revocation names.
        let lineage = match result {
            Ok(svid) => Some(&svid.attestation),
            Err(_) => presented.map(|p| &p.record),
        };
        if let Some(lineage) = lineage {
            record.attested_at = time::OffsetDateTime::from_unix_timestamp(lineage.attested_at)
                .ok()
                .map(rfc3339);
            record.origin_serial = Some(hush_identity::serial_hex(&lineage.origin_serial));
        }
        match result {
            Ok(svid) => {
                record.serial = Some(svid.serial_hex.clone());
                record.not_after = Some(rfc3339(svid.not_after));
                info!(
                    api,
                    spiffe_id = %svid.spiffe_id,
                    serial = %svid.serial_hex,
                    not_after = %rfc3339(svid.not_after),
                    %peer,
                    "issued certificate"
                );
            }
            Err(status) => {
                record.code = Some(format!("{:?}", status.code()));
                record.reason = Some(status.message().to_string());
                warn!(api, code = ?status.code(), reason = status.message(), %peer, "refused certificate request");
            }
        }
        self.inner.audit.append(&record).await.map_err(|e| {
            warn!(error = %e, "refusing to hand out a certificate that could not be audited");
            Status::internal(e.to_string())
        })
    }
}

/// The span of one issuance, continuing the caller's trace when its metadata carries a W3C
/// `traceparent`.
fn issuance_span(api: &'static str, peer: &str, metadata: &MetadataMap) -> Span {
    let span = tracing::info_span!(
        target: "hush::ca",
        "issue certificate",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = api,
        client.address = peer,
        hush.attestation = Empty,
        hush.spiffe_id = Empty,
        hush.serial = Empty,
        hush.outcome = Empty,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
        if parent.span().span_context().is_valid() {
            // Fails only without an OpenTelemetry layer, when the span is disabled anyway.
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// Writes who was attested, and how the issuance ended, into its span.
fn record_issuance(
    span: &Span,
    attested: Option<&Attested>,
    result: &Result<IssuedSvid, Status>,
    audit_failure: Option<&Status>,
) {
    if span.is_disabled() {
        return;
    }
    if let Some(who) = attested {
        span.record("hush.attestation", who.kind.as_str());
        span.record("hush.spiffe_id", tracing::field::display(&who.spiffe_id));
    }
    match (result, audit_failure) {
        (Ok(svid), None) => {
            span.record("hush.outcome", "issued");
            span.record("hush.serial", svid.serial_hex.as_str());
            span.record("rpc.grpc.status_code", 0);
        }
        (_, Some(status)) | (Err(status), None) => {
            span.record("hush.outcome", "refused");
            span.record("rpc.grpc.status_code", status.code() as i32);
            span.record("error.type", tracing::field::debug(status.code()));
            span.record("otel.status_code", "error");
            span.record("otel.status_description", status.message());
        }
    }
}

/// Reads trace context from gRPC metadata.
struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

fn attest_status(e: AttestError) -> Status {
    if e.is_rejection() {
        Status::unauthenticated(e.to_string())
    } else {
        Status::unavailable(format!("cannot check the caller's token: {e}"))
    }
}

/// Reads the certificate a renewal presents; one that cannot be read cannot renew, and the
/// caller is told to use its token.
fn presented_certificate(peer: Option<&PeerInfo>) -> Result<PresentedCertificate, Status> {
    let leaf = peer.and_then(|p| p.certificates.first()).ok_or_else(|| {
        Status::unauthenticated(
            "the client certificate of this connection is unknown; present a token",
        )
    })?;
    PresentedCertificate::read(leaf).map_err(|reason| {
        Status::unauthenticated(format!(
            "the certificate this connection presented cannot be renewed ({reason}): present a \
             token to get a new one"
        ))
    })
}

/// Turns a requested lifetime in seconds into the authority's terms: 0 is "the default".
fn requested_ttl(seconds: i64) -> Result<Option<Duration>, Status> {
    match seconds {
        0 => Ok(None),
        s if s < 0 => Err(Status::invalid_argument(format!(
            "requested lifetime {s} s is negative"
        ))),
        s => Ok(Some(Duration::from_secs(s.unsigned_abs()))),
    }
}

fn unix(t: time::OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

#[tonic::async_trait]
impl pb::certificate_authority_server::CertificateAuthority for CaService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let svid = self
            .issue(
                HUSH_API,
                &request,
                &request.get_ref().csr,
                request.get_ref().ttl_seconds,
            )
            .await?;
        let current = self.current();
        let bundle = current.authority().bundle();
        Ok(Response::new(pb::CertifyResponse {
            spiffe_id: svid.spiffe_id.to_string(),
            cert_chain: svid.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle: bundle.roots().iter().map(|c| c.to_vec()).collect(),
            expires_at_unix: unix(svid.not_after),
            not_before_unix: unix(svid.not_before),
            serial: svid.serial_hex,
            authority_id: current.intermediate_id().to_string(),
        }))
    }

    async fn get_trust_bundle(
        &self,
        _request: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        let current = self.current();
        let bundle = current.authority().bundle();
        let manifest = current.manifest();
        let trusted = manifest.authorities.iter().filter(|a| a.is_trusted());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let revocations = current.revocations();
        let deny = revocations.deny_list(now, retention(manifest));
        Ok(Response::new(pb::GetTrustBundleResponse {
            trust_domain: bundle.trust_domain().to_string(),
            roots: bundle.roots().iter().map(|c| c.to_vec()).collect(),
            server_time_unix: now,
            deny: Some(pb::DenyList {
                serials: deny.serials().map(str::to_owned).collect(),
                spiffe_ids: deny
                    .spiffe_ids()
                    .map(|denied| pb::DeniedId {
                        spiffe_id: denied.id.to_string(),
                        issued_before_unix: denied.issued_before_unix,
                    })
                    .collect(),
                token_ids: deny.token_ids().map(str::to_owned).collect(),
                // Revoked intermediates whose root is still in the bundle: peers trust roots,
                // so without this they would accept what such an intermediate issued (or what
                // its leaked key forges) until it expires.
                authorities: manifest
                    .authorities
                    .iter()
                    .filter(|a| {
                        a.kind == crate::authorities::Kind::Intermediate
                            && a.state == AuthorityState::Revoked
                            && a.issuer
                                .as_ref()
                                .and_then(|root| manifest.get(root))
                                .is_some_and(|root| root.is_trusted())
                    })
                    .map(|a| a.id.to_string())
                    .collect(),
            }),
            deny_generation: revocations.generation,
            generation: manifest.generation,
            authorities: trusted
                .clone()
                .map(|a| pb::Authority {
                    id: a.id.to_string(),
                    kind: a.kind.as_str().into(),
                    state: a.state.as_str().into(),
                    not_after_unix: a.not_after,
                    issuer_id: a.issuer.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                })
                .collect(),
            tainted_authorities: trusted
                .filter(|a| a.state == AuthorityState::Tainted)
                .map(|a| a.id.to_string())
                .collect(),
            renew_spread_seconds: self
                .inner
                .renew_spread_seconds
                .load(std::sync::atomic::Ordering::Relaxed),
            jwt_keys: self.jwt_keys_json(&current),
            federated: self
                .federated()
                .values()
                .map(|fetched| pb::FederatedBundle {
                    trust_domain: fetched.bundle.trust_domain().to_string(),
                    roots: fetched
                        .bundle
                        .x509_roots()
                        .iter()
                        .map(|c| c.to_vec())
                        .collect(),
                    jwt_keys: fetched.bundle.jwt_keys_json().to_vec(),
                    sequence: fetched.bundle.sequence().unwrap_or_default(),
                    fetched_at_unix: fetched.fetched_at_unix,
                })
                .collect(),
        }))
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let (spiffe_id, minted) = self.mint_jwt(&request).await?;
        Ok(Response::new(pb::MintJwtSvidResponse {
            token: minted.token,
            spiffe_id: spiffe_id.to_string(),
            expires_at_unix: minted.expires_at,
            issued_at_unix: minted.issued_at,
            key_id: minted.key_id.to_string(),
        }))
    }
}

#[tonic::async_trait]
impl istio::istio_certificate_service_server::IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<istio::IstioCertificateRequest>,
    ) -> Result<Response<istio::IstioCertificateResponse>, Status> {
        let body = request.get_ref();
        let svid = self
            .issue(
                ISTIO_API,
                &request,
                body.csr.as_bytes(),
                body.validity_duration,
            )
            .await?;
        // Istio wants PEM, leaf first and the root last.
        let current = self.current();
        let roots = current.authority().bundle().roots();
        let cert_chain = svid
            .chain
            .iter()
            .chain(roots.iter())
            .map(|der| pem_certificate(der))
            .collect();
        Ok(Response::new(istio::IstioCertificateResponse {
            cert_chain,
        }))
    }
}

/// PEM-encodes one DER certificate.
pub fn pem_certificate(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn ttl_rules() {
        assert_eq!(requested_ttl(0).unwrap(), None);
        assert_eq!(requested_ttl(60).unwrap(), Some(Duration::from_secs(60)));
        assert_eq!(requested_ttl(-1).unwrap_err().code(), Code::InvalidArgument);
    }
}
