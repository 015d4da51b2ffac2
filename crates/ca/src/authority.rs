//! The signing core: turns a verified CSR and an attested SPIFFE ID into an X.509-SVID.

use std::net::IpAddr;
use std::time::Duration;

use hush_identity::{
    ATTESTATION_OID_ARCS, AttestationError, AttestationRecord, SpiffeId, TrustBundle, TrustDomain,
};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::csr::VerifiedCsr;
use crate::lineage::Lineage;
use crate::signing_key::CaKey;

/// The first path segment of the SPIFFE IDs reserved for hush's own components: no workload
/// certificate names `spiffe://<trust domain>/hush` or anything under it, so that no workload
/// can pass for one of them (the bundle endpoint, to a partner CA).
pub const RESERVED_SEGMENT: &str = "hush";

/// Whether `id` lies in the part of its trust domain reserved for hush itself.
pub fn is_reserved_id(id: &SpiffeId) -> bool {
    let path = id.path();
    path.strip_prefix('/')
        .and_then(|rest| rest.strip_prefix(RESERVED_SEGMENT))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The SPIFFE ID of the CA's bundle endpoint (`spiffe://<trust domain>/hush/bundle-endpoint`),
/// which partners name as the endpoint's ID in the `https_spiffe` profile.
pub fn bundle_endpoint_id(trust_domain: &TrustDomain) -> SpiffeId {
    // Two valid segments always make a valid ID; the fallback is never taken.
    SpiffeId::from_segments(trust_domain, &[RESERVED_SEGMENT, "bundle-endpoint"])
        .unwrap_or_else(|_| trust_domain.id())
}

/// How long the certificates the CA issues live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuancePolicy {
    /// Lifetime given when the caller does not ask for one.
    pub default_ttl: Duration,
    /// The longest lifetime the CA grants; longer requests are shortened to this.
    pub max_ttl: Duration,
    /// The shortest lifetime the CA grants; shorter requests are lengthened to this.
    pub min_ttl: Duration,
    /// How far NotBefore is set in the past, so that a peer whose clock runs a little behind
    /// still accepts a certificate issued a moment ago.
    pub backdate: Duration,
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(24 * 3600),
            min_ttl: Duration::from_secs(60),
            backdate: Duration::from_secs(5 * 60),
        }
    }
}

impl IssuancePolicy {
    /// The lifetime granted for a request of `requested` (None: the default).
    pub fn lifetime_for(&self, requested: Option<Duration>) -> Duration {
        requested
            .unwrap_or(self.default_ttl)
            .clamp(self.min_ttl, self.max_ttl)
    }
}

/// The CA's signing material: the trust bundle and the intermediate that signs workloads.
pub struct CaMaterial {
    /// The roots of the trust domain.
    pub bundle: TrustBundle,
    /// The intermediate certificate (DER).
    pub intermediate: CertificateDer<'static>,
    /// The intermediate's private key: from its file, or in a PKCS#11 token.
    pub intermediate_key: CaKey,
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The identity written into the certificate.
    pub spiffe_id: SpiffeId,
    /// The leaf first, then the intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    /// Start of validity (already back-dated).
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// The attestation record written into it.
    pub attestation: AttestationRecord,
}

/// The CA could not be set up, or could not sign.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The intermediate certificate cannot be parsed.
    #[error("the intermediate certificate cannot be parsed: {0}")]
    BadIntermediate(String),
    /// The intermediate is not signed by any root of the bundle.
    #[error("the intermediate certificate is not signed by any root in the trust bundle")]
    NotChained,
    /// The intermediate's private key does not match its certificate.
    #[error("the intermediate's private key does not match the intermediate certificate")]
    KeyMismatch,
    /// The intermediate expired.
    #[error("the intermediate certificate expired at {0}; create a new CA with `hush ca init`")]
    IntermediateExpired(OffsetDateTime),
    /// The requested identity is outside the CA's trust domain.
    #[error("{id} is not in this CA's trust domain {trust_domain}")]
    ForeignIdentity {
        /// The identity that was asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// The requested identity names a whole trust domain, not a workload.
    #[error("{0} has no path: a workload certificate must name a workload, not a trust domain")]
    NoWorkloadPath(SpiffeId),
    /// The requested identity is reserved for hush's own components.
    #[error(
        "{0} is reserved for hush's own components (spiffe://<trust domain>/hush/...); \
         a workload cannot have it"
    )]
    Reserved(SpiffeId),
    /// rcgen could not build or sign the certificate.
    #[error("cannot build the certificate: {0}")]
    Sign(#[from] rcgen::Error),
    /// The attestation record cannot be written (a renewal presented one that cannot be).
    #[error("cannot write the certificate's attestation record: {0}")]
    Attestation(#[from] AttestationError),
}

/// Signs X.509-SVIDs with the intermediate. Cheap to share behind an `Arc`.
pub struct Authority {
    trust_domain: TrustDomain,
    bundle: TrustBundle,
    intermediate: CertificateDer<'static>,
    intermediate_not_after: OffsetDateTime,
    /// Signs with the intermediate's key wherever it is; only this key ever signs here.
    issuer: Issuer<'static, CaKey>,
    policy: IssuancePolicy,
}

// === impl Authority ===

impl Authority {
    /// Checks the material (the intermediate chains to the bundle and matches its key) and
    /// prepares to sign.
    pub fn new(material: CaMaterial, policy: IssuancePolicy) -> Result<Self, AuthorityError> {
        let CaMaterial {
            bundle,
            intermediate,
            intermediate_key,
        } = material;
        let (_, cert) = x509_parser::parse_x509_certificate(&intermediate)
            .map_err(|e| AuthorityError::BadIntermediate(e.to_string()))?;
        let chained = bundle.roots().iter().any(|root| {
            x509_parser::parse_x509_certificate(root)
                .map(|(_, root)| {
                    cert.verify_signature(Some(root.public_key())).is_ok()
                        && cert.issuer() == root.subject()
                })
                .unwrap_or(false)
        });
        if !chained {
            return Err(AuthorityError::NotChained);
        }
        // A token key's SPKI comes from the token's public key, which opening checked against
        // the private key with a test signature: equal SPKIs mean the pair signs for the cert.
        if cert.public_key().raw != intermediate_key.public_key_der() {
            return Err(AuthorityError::KeyMismatch);
        }
        let intermediate_not_after =
            OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
                .map_err(|e| AuthorityError::BadIntermediate(e.to_string()))?;
        if intermediate_not_after <= OffsetDateTime::now_utc() {
            return Err(AuthorityError::IntermediateExpired(intermediate_not_after));
        }
        let issuer = Issuer::from_ca_cert_der(&intermediate, intermediate_key)?;
        Ok(Self {
            trust_domain: bundle.trust_domain().clone(),
            bundle,
            intermediate,
            intermediate_not_after,
            issuer,
            policy,
        })
    }

    /// The trust domain the CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots that verify what this CA issues.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The lifetime rules.
    pub fn policy(&self) -> &IssuancePolicy {
        &self.policy
    }

    /// When the intermediate expires; nothing issued outlives it.
    pub fn intermediate_not_after(&self) -> OffsetDateTime {
        self.intermediate_not_after
    }

    /// Issues an X.509-SVID for `id` over the key of `csr`. The CSR's own names are ignored.
    ///
    /// The certificate records how its identity was attested (`lineage`, in a non-critical
    /// extension). Its notBefore is back-dated, but never before `not_before_floor` (Unix
    /// seconds): the time a revocation of `id` was made, so that a certificate issued after the
    /// revocation was lifted is not among the ones it still refuses.
    pub fn issue(
        &self,
        csr: &VerifiedCsr,
        id: &SpiffeId,
        requested_ttl: Option<Duration>,
        lineage: &Lineage,
        not_before_floor: Option<i64>,
    ) -> Result<IssuedSvid, AuthorityError> {
        if !id.is_member_of(&self.trust_domain) {
            return Err(AuthorityError::ForeignIdentity {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if id.path().is_empty() {
            return Err(AuthorityError::NoWorkloadPath(id.clone()));
        }
        if is_reserved_id(id) {
            return Err(AuthorityError::Reserved(id.clone()));
        }
        let now = OffsetDateTime::now_utc();
        let mut params = self.leaf_params(now, requested_ttl);
        if let Some(floor) =
            not_before_floor.and_then(|f| OffsetDateTime::from_unix_timestamp(f).ok())
        {
            params.not_before = params.not_before.max(floor);
        }
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes())
            .unwrap_or_default();
        let attestation = match lineage {
            Lineage::Attested { method, token_id } => AttestationRecord {
                attested_at: now.unix_timestamp(),
                method: *method,
                origin_serial: serial.clone(),
                token_id: token_id.clone(),
            },
            Lineage::Renewed(record) => record.clone(),
        };
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                ATTESTATION_OID_ARCS,
                attestation.to_der()?,
            ));
        let (not_before, not_after) = (params.not_before, params.not_after);
        let leaf = params.signed_by(csr, &self.issuer)?;
        Ok(IssuedSvid {
            spiffe_id: id.clone(),
            chain: vec![leaf.der().clone(), self.intermediate.clone()],
            not_before,
            not_after,
            serial_hex: hex(&serial),
            attestation,
        })
    }

    /// Issues the CA's own TLS server certificate (a fresh key, DNS and IP SANs, serverAuth),
    /// valid for `lifetime`. Returns the chain and the PKCS#8 key. The key is a new one in
    /// memory even when the intermediate's is in a token: rustls needs it for every handshake,
    /// and only the intermediate's signature on the certificate comes from the token.
    pub fn issue_server_certificate(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = self.leaf_params(OffsetDateTime::now_utc(), Some(lifetime));
        // The server certificate is not a workload identity; its lifetime is set by the caller.
        params.not_after = (OffsetDateTime::now_utc() + lifetime).min(self.intermediate_not_after);
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            sans.push(SanType::DnsName(name.as_str().try_into()?));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(DnType::CommonName, "hush CA server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.intermediate.clone()], key))
    }

    /// Issues the X.509-SVID the CA's SPIFFE bundle endpoint presents (the `https_spiffe`
    /// profile): [`bundle_endpoint_id`] as its one URI SAN, serverAuth only, a fresh key in
    /// memory, valid for `lifetime` (never past the intermediate). Returns the chain and the
    /// PKCS#8 key.
    pub fn issue_bundle_endpoint_certificate(
        &self,
        lifetime: Duration,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), AuthorityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = self.leaf_params(now, Some(lifetime));
        params.not_after = (now + lifetime).min(self.intermediate_not_after);
        let id = bundle_endpoint_id(&self.trust_domain);
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.intermediate.clone()], key))
    }

    fn leaf_params(
        &self,
        now: OffsetDateTime,
        requested_ttl: Option<Duration>,
    ) -> CertificateParams {
        let lifetime = self.policy.lifetime_for(requested_ttl);
        let mut params = CertificateParams::default();
        params.not_before = now - self.policy.backdate;
        params.not_after = (now + lifetime).min(self.intermediate_not_after);
        params.serial_number = Some(random_serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "hush");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("intermediate_not_after", &self.intermediate_not_after)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// 16 random bytes, top bit clear so the INTEGER stays positive without padding (RFC 5280 §4.1.2.2
/// allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    crate::random::fill(&mut bytes);
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped by DER, shrinking the serial; keep it non-zero.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CaDir, InitOptions};
    use x509_parser::extensions::ParsedExtension;

    fn authority(policy: IssuancePolicy) -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path().join("ca"));
        ca.init(&InitOptions::new(TrustDomain::new("example.org").unwrap()))
            .unwrap();
        let authority = Authority::new(ca.load().unwrap(), policy).unwrap();
        (dir, authority)
    }

    fn csr() -> VerifiedCsr {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["admin.example.org".into()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://example.org/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ));
        params.distinguished_name.push(DnType::CommonName, "root");
        VerifiedCsr::parse(params.serialize_request(&key).unwrap().der()).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn by_token() -> Lineage {
        Lineage::Attested {
            method: hush_identity::AttestationMethod::JoinToken,
            token_id: Some("0123456789abcdef".into()),
        }
    }

    #[test]
    fn every_certificate_records_its_attestation() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let who = id("spiffe://example.org/ns/shop/sa/frontend");
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let first = authority
            .issue(&csr(), &who, None, &by_token(), None)
            .unwrap();
        let record = AttestationRecord::of_certificate(&first.chain[0])
            .unwrap()
            .expect("a record");
        assert_eq!(record, first.attestation);
        assert!((before..=before + 5).contains(&record.attested_at));
        assert_eq!(hex(&record.origin_serial), first.serial_hex, "its own line");
        assert_eq!(record.token_id.as_deref(), Some("0123456789abcdef"));
        // Non-critical: it is an X.509-SVID still, for verifiers that do not know it.
        hush_identity::check_leaf_svid(&first.chain[0]).unwrap();

        let renewed = authority
            .issue(&csr(), &who, None, &Lineage::Renewed(record.clone()), None)
            .unwrap();
        assert_ne!(renewed.serial_hex, first.serial_hex);
        assert_eq!(
            AttestationRecord::of_certificate(&renewed.chain[0]).unwrap(),
            Some(record),
            "copied unchanged"
        );
    }

    #[test]
    fn back_dating_stops_at_the_floor() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let who = id("spiffe://example.org/a");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let floor = now - 60;
        let svid = authority
            .issue(&csr(), &who, None, &by_token(), Some(floor))
            .unwrap();
        assert_eq!(svid.not_before.unix_timestamp(), floor);
        let old_floor = authority
            .issue(&csr(), &who, None, &by_token(), Some(now - 3600))
            .unwrap();
        assert!(old_floor.not_before.unix_timestamp() <= now - 4 * 60);
    }

    #[test]
    fn writes_the_attested_identity_not_the_requested_names() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let svid = authority
            .issue(
                &csr(),
                &id("spiffe://example.org/ns/shop/sa/frontend"),
                None,
                &by_token(),
                None,
            )
            .unwrap();
        let leaf = &svid.chain[0];
        let checked = hush_identity::check_leaf_svid(leaf).unwrap();
        assert_eq!(checked, id("spiffe://example.org/ns/shop/sa/frontend"));
        let summary = hush_identity::CertificateSummary::from_der(leaf).unwrap();
        assert!(summary.dns_sans.is_empty(), "{:?}", summary.dns_sans);
        assert!(!summary.subject.contains("root"), "{}", summary.subject);
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let eku = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::ExtendedKeyUsage(eku) => Some(eku.clone()),
                _ => None,
            })
            .expect("EKU present");
        assert!(eku.server_auth && eku.client_auth);
        // The leaf verifies with the intermediate, which verifies with the root.
        let (_, intermediate) = x509_parser::parse_x509_certificate(&svid.chain[1]).unwrap();
        assert!(
            cert.verify_signature(Some(intermediate.public_key()))
                .is_ok()
        );
        hush_identity::check_signing_cert(&svid.chain[1]).unwrap();
    }

    #[test]
    fn lifetimes_are_clamped_and_back_dated() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let who = id("spiffe://example.org/a");
        let now = OffsetDateTime::now_utc();
        let long = authority
            .issue(
                &csr(),
                &who,
                Some(Duration::from_secs(1000 * 3600)),
                &by_token(),
                None,
            )
            .unwrap();
        assert!(long.not_after <= now + time::Duration::hours(24) + time::Duration::seconds(5));
        assert!(long.not_after >= now + time::Duration::hours(24) - time::Duration::seconds(5));
        assert!(long.not_before <= now - time::Duration::minutes(4));
        let short = authority
            .issue(
                &csr(),
                &who,
                Some(Duration::from_secs(1)),
                &by_token(),
                None,
            )
            .unwrap();
        let lived = short.not_after - now;
        assert!(lived >= time::Duration::seconds(55) && lived <= time::Duration::seconds(65));
        let hour = authority
            .issue(
                &csr(),
                &who,
                Some(Duration::from_secs(3600)),
                &by_token(),
                None,
            )
            .unwrap();
        let lived = hour.not_after - now;
        assert!((lived - time::Duration::hours(1)).abs() < time::Duration::seconds(5));
    }

    #[test]
    fn serials_are_random_and_positive() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let who = id("spiffe://example.org/a");
        let a = authority
            .issue(&csr(), &who, None, &by_token(), None)
            .unwrap();
        let b = authority
            .issue(&csr(), &who, None, &by_token(), None)
            .unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
        assert_eq!(a.serial_hex.len(), 32);
        assert!(u8::from_str_radix(&a.serial_hex[..2], 16).unwrap() < 0x80);
    }

    #[test]
    fn refuses_identities_of_another_trust_domain() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let err = authority
            .issue(&csr(), &id("spiffe://evil.org/a"), None, &by_token(), None)
            .unwrap_err();
        assert!(
            err.to_string().contains("not in this CA's trust domain"),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_trust_domain_id_as_a_workload_identity() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let err = authority
            .issue(&csr(), &id("spiffe://example.org"), None, &by_token(), None)
            .unwrap_err();
        assert!(matches!(err, AuthorityError::NoWorkloadPath(_)), "{err}");
    }

    #[test]
    fn refuses_the_identities_reserved_for_hush() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        for reserved in [
            "spiffe://example.org/hush",
            "spiffe://example.org/hush/bundle-endpoint",
            "spiffe://example.org/hush/anything/else",
        ] {
            let err = authority
                .issue(&csr(), &id(reserved), None, &by_token(), None)
                .unwrap_err();
            assert!(
                matches!(err, AuthorityError::Reserved(_)),
                "{reserved}: {err}"
            );
        }
        // Only the segment itself: a workload named hushed, or hush deeper down, is fine.
        for fine in [
            "spiffe://example.org/hushed",
            "spiffe://example.org/ns/hush/sa/hush",
        ] {
            authority
                .issue(&csr(), &id(fine), None, &by_token(), None)
                .unwrap();
        }
    }

    #[test]
    fn the_bundle_endpoint_certificate_is_an_svid_of_the_reserved_id() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let (chain, _key) = authority
            .issue_bundle_endpoint_certificate(Duration::from_secs(3600))
            .unwrap();
        let presented = hush_identity::check_leaf_svid(&chain[0]).unwrap();
        assert_eq!(
            presented.as_str(),
            "spiffe://example.org/hush/bundle-endpoint"
        );
        assert!(is_reserved_id(&presented));
        assert_eq!(chain.len(), 2);
    }

    #[test]
    fn refuses_an_intermediate_from_another_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = CaDir::new(dir.path().join("a"));
        let b = CaDir::new(dir.path().join("b"));
        let td = TrustDomain::new("example.org").unwrap();
        a.init(&InitOptions::new(td.clone())).unwrap();
        b.init(&InitOptions::new(td)).unwrap();
        let mut material = a.load().unwrap();
        material.bundle = b.load_bundle().unwrap();
        let err = Authority::new(material, IssuancePolicy::default()).unwrap_err();
        assert!(matches!(err, AuthorityError::NotChained), "{err}");
    }

    #[test]
    fn server_certificate_names_localhost() {
        let (_dir, authority) = authority(IssuancePolicy::default());
        let (chain, _key) = authority
            .issue_server_certificate(
                &["localhost".into(), "ca.hush.svc".into()],
                &["127.0.0.1".parse().unwrap()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let summary = hush_identity::CertificateSummary::from_der(&chain[0]).unwrap();
        assert_eq!(summary.dns_sans, vec!["localhost", "ca.hush.svc"]);
        assert_eq!(summary.ip_sans, vec!["127.0.0.1"]);
        assert!(!summary.is_ca);
    }
}
