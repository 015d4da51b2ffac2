//! End-to-end tests of the CA: `hush ca …` run as real processes and called with real gRPC
//! clients, over TLS, through both of its APIs.
//!
//! Every test makes its own CA directory in a temporary folder and starts its own
//! `hush ca serve` on port 0, so the tests run in parallel. Readiness is the CA's own "serving"
//! line, never a sleep. Assertions check gRPC codes *and* the words of the message, because the
//! message is what an operator reads.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hush_ca::istio_proto::istio_certificate_service_client::IstioCertificateServiceClient;
use hush_ca::istio_proto::{IstioCertificateRequest, IstioCertificateResponse};
use hush_ca::proto::certificate_authority_client::CertificateAuthorityClient;
use hush_ca::proto::{CertifyRequest, CertifyResponse, GetTrustBundleRequest};
use hush_ca_client::{CaClient, with_bearer};
use hush_identity::{
    CertificateSummary, TrustBundle, check_leaf_svid, check_signing_cert, parse_pem_certificates,
};
use hush_test_support::{
    CaProcess, CertFacts, CsrKeyKind, FORGED_CN, FORGED_DNS_NAME, FORGED_SPIFFE_ID, FakeApiServer,
    OpensslKey, SoftHsmToken, TestCa, Usage, csr_altered_after_signing, csr_claiming_another_key,
    csr_with_broken_signature, describe_output, empty_csr, expired_leaf_from_ca_dir, forbidden,
    forged_csr, garbage_csr, mint_token, openssl_csr, openssl_csr_with_digest, oversized_csr,
    pem_certificates, plain_csr, private_key_pem_instead_of_csr, require_openssl, run_hush,
    run_hush_ok, run_hush_with_env, token_review_authenticated, token_review_rejected,
    verify_chain,
};
use hush_tls::CredentialStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::mesh::promtool::assert_promtool_accepts;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");
const TD: &str = "e2e.test";
const FRONTEND: &str = "spiffe://e2e.test/ns/shop/sa/frontend";
const BACKEND: &str = "spiffe://e2e.test/ns/shop/sa/backend";
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;
/// Allowance for the seconds between the CA's clock reading and the test's.
const SLACK: i64 = 60;

// === Fixture: a CA directory and a running `hush ca serve` ===

struct Ca {
    temp: TempDir,
    dir: PathBuf,
    server: CaProcess,
    bundle: TrustBundle,
}

impl Ca {
    /// `hush ca init` in a fresh temporary directory, then `hush ca serve EXTRA…`.
    fn start(extra: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("cannot create a temporary directory");
        let dir = temp.path().join("ca");
        init_ca(&dir, &[]);
        let server = CaProcess::start(HUSH, &dir, extra);
        Self::around(temp, dir, server)
    }

    fn around(temp: TempDir, dir: PathBuf, server: CaProcess) -> Self {
        assert_eq!(
            server.trust_domain(),
            TD,
            "the readiness line names the trust domain"
        );
        let bundle = bundle_of(&dir);
        Self {
            temp,
            dir,
            server,
            bundle,
        }
    }

    fn url(&self) -> &str {
        self.server.url()
    }

    fn roots(&self) -> &[CertificateDer<'static>] {
        self.bundle.roots()
    }

    fn token(&self, spiffe_id: &str, extra: &[&str]) -> String {
        mint_token(HUSH, &self.dir, spiffe_id, extra)
    }

    fn client(&self) -> CaClient {
        CaClient::new(self.url(), self.roots()).expect("a client for the CA")
    }

    fn raw_client(&self) -> CertificateAuthorityClient<Channel> {
        CertificateAuthorityClient::new(
            hush_ca_client::channel(self.url(), self.roots()).expect("a channel to the CA"),
        )
    }

    fn istio(&self) -> IstioCertificateServiceClient<Channel> {
        IstioCertificateServiceClient::new(
            hush_ca_client::channel(self.url(), self.roots()).expect("a channel to the CA"),
        )
    }

    fn intermediate(&self) -> CertificateDer<'static> {
        let pem = fs::read(self.dir.join("intermediate.pem")).expect("intermediate.pem");
        let mut certs = parse_pem_certificates(&pem).expect("intermediate.pem is PEM");
        assert_eq!(certs.len(), 1);
        certs.remove(0)
    }

    fn audit(&self) -> Vec<Value> {
        read_audit(&self.dir.join("audit.log"))
    }
}

/// `hush ca token create --dir DIR --spiffe-id ID EXTRA…`, for tests that look at the outcome.
fn token_create(dir: &Path, spiffe_id: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "ca",
        "token",
        "create",
        "--dir",
        path_str(dir),
        "--spiffe-id",
        spiffe_id,
    ];
    args.extend_from_slice(extra);
    run_hush(HUSH, &args)
}

fn init_ca(dir: &Path, extra: &[&str]) {
    let mut args = vec!["ca", "init", "--dir", path_str(dir), "--trust-domain", TD];
    args.extend_from_slice(extra);
    run_hush_ok(HUSH, &args);
}

fn bundle_of(dir: &Path) -> TrustBundle {
    let pem = run_hush_ok(HUSH, &["ca", "bundle", "--dir", path_str(dir)]);
    TrustBundle::from_pem(pem.as_bytes(), None).expect("`hush ca bundle` prints a trust bundle")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn read_audit(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the audit log {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"))
        })
        .collect()
}

// === Helpers ===

/// Bounds every call to the CA, so a hung CA fails the test instead of hanging it.
async fn within<F: std::future::Future>(call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the CA did not answer within 30 s")
}

fn now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_secs()).expect("the time fits in i64")
}

fn chain_of(response: &CertifyResponse) -> Vec<CertificateDer<'static>> {
    response
        .cert_chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect()
}

fn summary(der: &[u8]) -> CertificateSummary {
    CertificateSummary::from_der(der).expect("the CA issued a parseable certificate")
}

/// Asserts a refusal: the code, and every needle in the message.
#[track_caller]
fn assert_refused<T>(result: Result<T, Status>, code: Code, needles: &[&str]) -> Status {
    let status = match result {
        Ok(_) => panic!("expected {code:?} with {needles:?}, but the CA issued a certificate"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {:?}",
        status.message()
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "the {code:?} message should mention {needle:?}: {:?}",
            status.message()
        );
    }
    status
}

fn istio_request(csr_pem: &str, validity_duration: i64) -> IstioCertificateRequest {
    let string = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    };
    IstioCertificateRequest {
        csr: csr_pem.to_string(),
        validity_duration,
        // What an Istio agent sends; istiod uses ImpersonatedIdentity for its own callers. hush
        // must ignore it: the identity comes from the token only.
        metadata: Some(prost_types::Struct {
            fields: BTreeMap::from([
                ("ClusterID".to_string(), string("Kubernetes")),
                (
                    "ImpersonatedIdentity".to_string(),
                    string("spiffe://e2e.test/ns/istio-system/sa/istiod"),
                ),
            ]),
        }),
    }
}

async fn istio_create(
    ca: &Ca,
    token: &str,
    request: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, Status> {
    let request = with_bearer(request, token)?;
    within(ca.istio().create_certificate(request))
        .await
        .map(tonic::Response::into_inner)
}

// === 1. Certify through hush's own API ===

/// The core promise: the certificate names the token's identity, whatever the CSR asked for,
/// over the CSR's own key, signed by the intermediate, verifiable with the bundle.
#[tokio::test]
async fn certify_issues_a_leaf_first_chain_for_the_token_identity() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let csr = forged_csr(CsrKeyKind::EcdsaP256);
    let asked_at = now();
    let response = within(ca.client().certify(&token, csr.der.clone(), None))
        .await
        .expect("the CA issues for a fresh join token");

    assert_eq!(response.spiffe_id, FRONTEND);
    let chain = chain_of(&response);
    assert_eq!(
        chain.len(),
        2,
        "leaf then intermediate; the root is not in the chain"
    );

    // The leaf: an X.509-SVID for the token's identity, nothing the CSR asked for.
    let leaf = &chain[0];
    let id = check_leaf_svid(leaf).expect("the leaf passes the X.509-SVID leaf rules");
    assert_eq!(id.to_string(), FRONTEND);
    let leaf_summary = summary(leaf);
    assert_eq!(leaf_summary.uri_sans, vec![FRONTEND.to_string()]);
    assert!(
        leaf_summary.dns_sans.is_empty() && leaf_summary.ip_sans.is_empty(),
        "the CSR's DNS/IP names must not be copied: {leaf_summary:?}"
    );
    assert!(!leaf_summary.uri_sans.iter().any(|u| u == FORGED_SPIFFE_ID));
    assert!(
        !leaf_summary.subject.contains(FORGED_CN)
            && !leaf_summary.subject.contains(FORGED_DNS_NAME),
        "the CSR's subject must not be copied: {}",
        leaf_summary.subject
    );
    let facts = CertFacts::from_der(leaf);
    assert!(
        !facts.is_ca && !facts.key_cert_sign,
        "the CSR asked for CA=true; it must not get it"
    );
    assert!(
        facts.eku_server_auth,
        "an X.509-SVID leaf needs EKU serverAuth"
    );
    assert!(
        facts.eku_client_auth,
        "an X.509-SVID leaf needs EKU clientAuth"
    );
    assert!(!facts.eku_other, "no other EKU purposes");
    assert_eq!(
        facts.public_key_info,
        csr.public_key_info(),
        "the leaf certifies the CSR's key"
    );

    // The intermediate, exactly as on disk, is what signed the leaf.
    assert_eq!(chain[1], ca.intermediate());
    check_signing_cert(&chain[1]).expect("the intermediate is a valid signing certificate");
    assert_eq!(leaf_summary.issuer, summary(&chain[1]).subject);

    // The bundle in the response, from GetTrustBundle and from `hush ca bundle` agree.
    let response_roots: Vec<_> = response
        .trust_bundle
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    assert_eq!(response_roots, ca.roots());
    let fetched = within(ca.client().trust_bundle())
        .await
        .expect("GetTrustBundle");
    assert_eq!(fetched.trust_domain, TD);
    let fetched: Vec<_> = fetched
        .roots
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    assert_eq!(fetched, ca.roots());
    let root_pem = fs::read(ca.dir.join("bundle.pem")).expect("bundle.pem");
    assert_eq!(
        parse_pem_certificates(&root_pem).expect("bundle.pem"),
        ca.roots()
    );

    // The chain verifies against the bundle, for both directions of mTLS.
    verify_chain(&chain, ca.roots(), Usage::ServerAuth).expect("verifies for serverAuth");
    verify_chain(&chain, ca.roots(), Usage::ClientAuth).expect("verifies for clientAuth");

    // Lifetime: the default (24 h), back-dated NotBefore, and the response says what the
    // certificate says.
    assert_eq!(response.expires_at_unix, leaf_summary.not_after);
    assert_eq!(response.not_before_unix, leaf_summary.not_before);
    let after = now();
    assert!(
        response.expires_at_unix >= asked_at + DAY - SLACK
            && response.expires_at_unix <= after + DAY + SLACK,
        "default lifetime is 24 h: expires {} s from now",
        response.expires_at_unix - after
    );
    assert!(
        response.not_before_unix <= asked_at - 4 * 60,
        "NotBefore is back-dated by about 5 min for clock skew: {} s before now",
        asked_at - response.not_before_unix
    );
    assert!(response.not_before_unix >= asked_at - 5 * 60 - SLACK);

    // The serial in the response is the certificate's, and long enough to be random.
    assert_eq!(response.serial, leaf_summary.serial_hex);
    assert!(
        response.serial.len() >= 32,
        "serials carry at least 128 bits: {}",
        response.serial
    );
}

#[tokio::test]
async fn certify_clamps_long_lifetimes_and_honours_short_ones() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &["--reusable"]);
    let client = ca.client();
    let certify = |ttl: Option<Duration>| {
        let client = client.clone();
        let token = token.clone();
        async move {
            within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, ttl))
                .await
                .expect("the CA issues")
        }
    };

    let asked = now();
    let long = certify(Some(Duration::from_secs(1000 * 3600))).await;
    assert!(
        long.expires_at_unix <= now() + DAY + SLACK,
        "1000 h is clamped to the 24 h maximum, got {} s",
        long.expires_at_unix - asked
    );
    assert!(long.expires_at_unix >= asked + DAY - SLACK);

    let asked = now();
    let hour = certify(Some(Duration::from_secs(3600))).await;
    assert!(
        (hour.expires_at_unix - asked - HOUR).abs() <= SLACK,
        "a requested hour is granted: {} s",
        hour.expires_at_unix - asked
    );
    assert_eq!(summary(&hour.cert_chain[0]).not_after, hour.expires_at_unix);

    let asked = now();
    let tiny = certify(Some(Duration::from_secs(1))).await;
    assert!(
        (tiny.expires_at_unix - asked - 60).abs() <= SLACK / 2,
        "a 1 s request is lengthened to the 60 s minimum: {} s",
        tiny.expires_at_unix - asked
    );
}

#[tokio::test]
async fn serve_max_ttl_flag_lowers_the_ceiling() {
    let ca = Ca::start(&["--max-ttl", "2h"]);
    let token = ca.token(FRONTEND, &["--reusable"]);
    let asked = now();
    let default = within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("issued");
    assert!(
        (default.expires_at_unix - asked - 2 * HOUR).abs() <= SLACK,
        "without --default-ttl the default is --max-ttl: {} s",
        default.expires_at_unix - asked
    );
    let long = within(ca.client().certify(
        &token,
        plain_csr(CsrKeyKind::EcdsaP256).der,
        Some(Duration::from_secs(DAY as u64)),
    ))
    .await
    .expect("issued");
    assert!(
        long.expires_at_unix <= now() + 2 * HOUR + SLACK,
        "clamped to --max-ttl 2h"
    );
}

#[tokio::test]
async fn serials_differ_between_issuances() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &["--reusable"]);
    let client = ca.client();
    let mut serials = Vec::new();
    for _ in 0..3 {
        let response = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
            .await
            .expect("issued");
        serials.push(response.serial);
    }
    serials.sort();
    serials.dedup();
    assert_eq!(
        serials.len(),
        3,
        "every certificate gets its own random serial"
    );
}

#[tokio::test]
async fn certify_accepts_pem_csrs_and_every_rcgen_key_kind() {
    let ca = Ca::start(&[]);
    let token = ca.token(BACKEND, &["--reusable"]);
    let client = ca.client();
    for kind in CsrKeyKind::ALL {
        for pem in [false, true] {
            let csr = forged_csr(kind);
            let bytes = if pem {
                csr.pem.clone().into_bytes()
            } else {
                csr.der.clone()
            };
            let response = within(client.certify(&token, bytes, None))
                .await
                .unwrap_or_else(|s| panic!("{kind:?} (pem: {pem}) refused: {s:?}"));
            let leaf = &response.cert_chain[0];
            assert_eq!(check_leaf_svid(leaf).expect("leaf").to_string(), BACKEND);
            assert_eq!(summary(leaf).key_algorithm, kind.display_name());
            assert_eq!(
                CertFacts::from_der(leaf).public_key_info,
                csr.public_key_info()
            );
            verify_chain(&chain_of(&response), ca.roots(), Usage::ClientAuth)
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        }
    }
}

// === 2. The Istio-compatible API, wire-exact ===

#[tokio::test]
async fn istio_api_returns_a_pem_chain_leaf_first_root_last() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let csr = forged_csr(CsrKeyKind::EcdsaP256);
    let asked = now();
    let response = istio_create(&ca, &token, istio_request(&csr.pem, 3600))
        .await
        .expect("the Istio API issues for a join token");

    assert_eq!(response.cert_chain.len(), 3, "leaf, intermediate, root");
    let mut chain = Vec::new();
    for (i, pem) in response.cert_chain.iter().enumerate() {
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE-----\n")
                && pem.ends_with("-----END CERTIFICATE-----\n"),
            "entry {i} is one PEM certificate: {pem:?}"
        );
        let mut certs = pem_certificates(pem);
        assert_eq!(certs.len(), 1, "entry {i} holds exactly one certificate");
        chain.push(certs.remove(0));
    }
    let leaf = &chain[0];
    assert_eq!(
        check_leaf_svid(leaf).expect("leaf").to_string(),
        FRONTEND,
        "neither the CSR's names nor metadata ImpersonatedIdentity decide the identity"
    );
    assert_eq!(
        CertFacts::from_der(leaf).public_key_info,
        csr.public_key_info()
    );
    assert_eq!(chain[1], ca.intermediate());
    assert_eq!(
        &chain[2],
        &ca.roots()[0],
        "the last entry is the bundle's root"
    );
    verify_chain(&chain[..2], &chain[2..], Usage::ServerAuth).expect("the chain verifies");
    let not_after = summary(leaf).not_after;
    assert!(
        (not_after - asked - HOUR).abs() <= SLACK,
        "validity_duration 3600 gives an hour: {} s",
        not_after - asked
    );

    let audit = ca.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["api"], "istio.v1.auth");
    assert_eq!(audit[0]["event"], "issued");
}

#[tokio::test]
async fn istio_api_refuses_like_the_hush_api() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let csr = plain_csr(CsrKeyKind::EcdsaP256);

    let no_token = within(
        ca.istio()
            .create_certificate(tonic::Request::new(istio_request(&csr.pem, 3600))),
    )
    .await;
    assert_refused(no_token, Code::Unauthenticated, &["authorization"]);

    let negative = istio_create(&ca, &token, istio_request(&csr.pem, -5)).await;
    assert_refused(negative, Code::InvalidArgument, &["-5", "negative"]);

    let der_as_text = istio_create(&ca, &token, istio_request("MIIB not pem", 3600)).await;
    assert_refused(der_as_text, Code::InvalidArgument, &["invalid CSR"]);

    // Neither refusal used up the single-use token.
    let issued = istio_create(&ca, &token, istio_request(&csr.pem, 0))
        .await
        .expect("the token still works after refused requests");
    let not_after = summary(&pem_certificates(&issued.cert_chain[0])[0]).not_after;
    assert!(
        (not_after - now() - DAY).abs() <= SLACK,
        "validity_duration 0 asks for the default"
    );
    let again = istio_create(&ca, &token, istio_request(&csr.pem, 0)).await;
    assert_refused(again, Code::Unauthenticated, &["already used"]);
}

// === 3. Refusals ===

#[tokio::test]
async fn refuses_a_request_without_authorization() {
    let ca = Ca::start(&[]);
    let request = tonic::Request::new(CertifyRequest {
        csr: plain_csr(CsrKeyKind::EcdsaP256).der,
        ttl_seconds: 0,
    });
    let result = within(ca.raw_client().certify(request)).await;
    assert_refused(result, Code::Unauthenticated, &["authorization", "Bearer"]);

    // GetTrustBundle needs no token.
    let bundle = within(
        ca.raw_client()
            .get_trust_bundle(tonic::Request::new(GetTrustBundleRequest {})),
    )
    .await
    .expect("the bundle is public")
    .into_inner();
    assert_eq!(bundle.trust_domain, TD);
}

#[tokio::test]
async fn refuses_authorization_that_is_not_a_bearer_token() {
    let ca = Ca::start(&[]);
    let mut request = tonic::Request::new(CertifyRequest {
        csr: plain_csr(CsrKeyKind::EcdsaP256).der,
        ttl_seconds: 0,
    });
    request.metadata_mut().insert(
        "authorization",
        "Basic dXNlcjpwYXNz".parse().expect("a header value"),
    );
    let result = within(ca.raw_client().certify(request)).await;
    assert_refused(result, Code::Unauthenticated, &["Bearer <token>"]);
}

#[tokio::test]
async fn refuses_unknown_and_malformed_tokens() {
    let ca = Ca::start(&[]);
    let client = ca.client();
    let csr = || plain_csr(CsrKeyKind::EcdsaP256).der;

    let unknown = within(client.certify("hushjt.0123456789abcdef.c2VjcmV0", csr(), None)).await;
    assert_refused(
        unknown,
        Code::Unauthenticated,
        &["unknown join token 0123456789abcdef"],
    );

    // A real token's id with a guessed secret is just as unknown.
    let real = ca.token(FRONTEND, &[]);
    let id = real.split('.').nth(1).expect("hushjt.<id>.<secret>");
    let guessed = format!("hushjt.{id}.{}", "A".repeat(43));
    let wrong_secret = within(client.certify(&guessed, csr(), None)).await;
    assert_refused(
        wrong_secret,
        Code::Unauthenticated,
        &["unknown join token", id],
    );

    let malformed = within(client.certify("hushjt.not-hex.secret", csr(), None)).await;
    assert_refused(
        malformed,
        Code::Unauthenticated,
        &["malformed join token", "hushjt.<16 hex digits>"],
    );

    // The guessed secret did not burn the real token.
    within(client.certify(&real, csr(), None))
        .await
        .expect("the real token still works");
}

/// Without the secret, a caller must learn nothing about a token, including whether it has
/// been used; and the audit log must not record a guess as a replay of the real token.
#[tokio::test]
async fn a_wrong_secret_for_a_used_token_is_unknown_not_already_used() {
    let ca = Ca::start(&[]);
    let client = ca.client();
    let token = ca.token(FRONTEND, &[]);
    within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("first use");
    let id = token.split('.').nth(1).expect("id");
    let guessed = format!("hushjt.{id}.{}", "C".repeat(43));
    let result = within(client.certify(&guessed, plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert_refused(result, Code::Unauthenticated, &["unknown join token"]);
}

#[tokio::test]
async fn refuses_a_jwt_when_kubernetes_attestation_is_off() {
    let ca = Ca::start(&[]);
    let result = within(ca.client().certify(
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        plain_csr(CsrKeyKind::EcdsaP256).der,
        None,
    ))
    .await;
    assert_refused(
        result,
        Code::Unauthenticated,
        &[
            "not a hush join token",
            "Kubernetes service-account attestation is not enabled",
        ],
    );
}

#[test]
fn token_create_refuses_a_token_that_could_never_be_used() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let output = token_create(&dir, FRONTEND, &["--ttl", "0s"]);
    assert!(!output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("more than zero"), "{stderr}");
}

#[tokio::test]
async fn refuses_a_token_once_its_ttl_has_passed() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &["--ttl", "1s"]);
    // Poll the clock, not a fixed sleep: the record stores whole seconds, so two seconds after
    // minting the token is certainly past its expiry.
    let deadline = now() + 2;
    while now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await;
    assert_refused(result, Code::Unauthenticated, &["expired", "ago"]);
}

#[tokio::test]
async fn single_use_token_works_once() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let client = ca.client();
    within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("first use");
    let again = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert_refused(
        again,
        Code::Unauthenticated,
        &["already used", "single-use", "--reusable"],
    );
}

#[tokio::test]
async fn reusable_token_works_many_times() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &["--reusable"]);
    let client = ca.client();
    for i in 0..3 {
        let response = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
            .await
            .unwrap_or_else(|s| panic!("use {} of a reusable token refused: {s:?}", i + 1));
        assert_eq!(response.spiffe_id, FRONTEND);
    }
}

/// There is no `hush ca token revoke`; removing the token's record is the only way to withdraw
/// a leaked reusable token, so a running CA must stop honouring it.
#[tokio::test]
async fn deleting_a_reusable_tokens_record_withdraws_it() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &["--reusable"]);
    let client = ca.client();
    within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("first use");
    let id = token.split('.').nth(1).expect("id");
    fs::remove_file(ca.dir.join("tokens").join(format!("{id}.json"))).expect("remove the record");
    let result = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert_refused(result, Code::Unauthenticated, &["unknown join token", id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uses_of_a_single_use_token_issue_exactly_once() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let client = ca.client();
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let token = token.clone();
            let csr = plain_csr(CsrKeyKind::EcdsaP256).der;
            tokio::spawn(async move { within(client.certify(&token, csr, None)).await })
        })
        .collect();
    let mut issued = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => issued += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(status.message().contains("already used"), "{status:?}");
            }
        }
    }
    assert_eq!(
        issued, 1,
        "a single-use token issues exactly one certificate"
    );
    let audit = ca.audit();
    assert_eq!(audit.iter().filter(|l| l["event"] == "issued").count(), 1);
    assert_eq!(audit.iter().filter(|l| l["event"] == "refused").count(), 7);
}

/// Every bad CSR is INVALID_ARGUMENT with a reason, and none of them uses up the token: the
/// workload fixes its CSR and tries again with the same token.
#[tokio::test]
async fn bad_csrs_are_refused_without_burning_the_token() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let client = ca.client();
    let (claiming, _) = csr_claiming_another_key(CsrKeyKind::EcdsaP256);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "garbage",
            garbage_csr(),
            vec!["invalid CSR", "not a valid PKCS#10 request"],
        ),
        ("empty", empty_csr(), vec!["invalid CSR", "no CSR"]),
        (
            "altered after signing",
            csr_altered_after_signing(CsrKeyKind::EcdsaP256),
            vec!["signature does not verify", "proof of possession"],
        ),
        (
            "broken Ed25519 signature",
            csr_with_broken_signature(CsrKeyKind::Ed25519),
            vec!["signature does not verify", "proof of possession"],
        ),
        (
            "someone else's key",
            claiming,
            vec!["signature does not verify", "proof of possession"],
        ),
        (
            "a private key instead of a CSR",
            private_key_pem_instead_of_csr().into_bytes(),
            vec!["expected a CERTIFICATE REQUEST block", "PRIVATE KEY"],
        ),
        (
            "32 KiB, under the message limit but over the CSR limit",
            oversized_csr(32 * 1024),
            vec!["the CSR is", "at most 16384"],
        ),
    ];
    for (what, csr, needles) in cases {
        let result = within(client.certify(&token, csr, None)).await;
        let status = result
            .err()
            .unwrap_or_else(|| panic!("{what}: the CA issued a certificate"));
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        for needle in needles {
            assert!(
                status.message().contains(needle),
                "{what}: expected {needle:?} in {:?}",
                status.message()
            );
        }
    }

    let request = with_bearer(
        CertifyRequest {
            csr: plain_csr(CsrKeyKind::EcdsaP256).der,
            ttl_seconds: -60,
        },
        &token,
    )
    .expect("a request");
    let negative = within(ca.raw_client().certify(request)).await;
    assert_refused(negative, Code::InvalidArgument, &["-60", "negative"]);

    within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("after refusals for bad requests, the single-use token still works");
    let replay = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert_refused(replay, Code::Unauthenticated, &["already used"]);
}

/// The documented promise (`ServeOptions::max_request_bytes`: "Requests larger than this are
/// refused with RESOURCE_EXHAUSTED") for both APIs.
#[tokio::test]
async fn oversized_requests_are_resource_exhausted() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let result = within(ca.client().certify(&token, oversized_csr(1 << 20), None)).await;
    assert_refused(
        result,
        Code::ResourceExhausted,
        &["request too large", "at most 65536 bytes"],
    );
    let istio = istio_create(&ca, &token, istio_request(&oversized_pem(), 0)).await;
    assert_refused(istio, Code::ResourceExhausted, &["request too large"]);
}

/// Whatever the code, a 1 MiB request is refused before anyone reads it, with a message naming
/// the limit, and the CA (and the token) are fine afterwards.
#[tokio::test]
async fn oversized_requests_are_refused_before_they_are_read() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let client = ca.client();
    let hush = within(client.certify(&token, oversized_csr(1 << 20), None)).await;
    let istio = istio_create(&ca, &token, istio_request(&oversized_pem(), 0)).await;
    for result in [hush.map(|_| ()), istio.map(|_| ())] {
        let status = result.expect_err("a 1 MiB request is refused");
        assert!(
            matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
            "{status:?}"
        );
        assert!(
            status.message().contains("65536"),
            "the message names the limit: {status:?}"
        );
    }
    assert!(ca.audit().is_empty(), "nothing reached the issuance path");
    within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("the CA serves on, and the token was never looked at");
}

fn oversized_pem() -> String {
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "A".repeat(1 << 20)
    )
}

#[tokio::test]
async fn weak_rsa_keys_are_refused() {
    require_openssl!();
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let (der, _) = openssl_csr(OpensslKey::Rsa(1024));
    let result = within(ca.client().certify(&token, der, None)).await;
    assert_refused(
        result,
        Code::InvalidArgument,
        &["weak key", "RSA key of 1024 bits", "at least 2048"],
    );
}

#[tokio::test]
async fn sha1_signed_csrs_are_refused() {
    require_openssl!();
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let (der, _) = openssl_csr_with_digest(OpensslKey::Rsa(2048), Some("sha1"));
    let result = within(ca.client().certify(&token, der, None)).await;
    assert_refused(
        result,
        Code::InvalidArgument,
        &[
            "unsupported CSR signature algorithm",
            "sha1WithRSAEncryption",
            "SHA-256",
        ],
    );
}

// === 4. Key kinds from openssl ===

#[tokio::test]
async fn accepts_openssl_csrs_for_every_supported_key_kind() {
    require_openssl!();
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &["--reusable"]);
    let client = ca.client();
    for key in [
        OpensslKey::Rsa(2048),
        OpensslKey::EcP256,
        OpensslKey::EcP384,
        OpensslKey::Ed25519,
    ] {
        let (der, pem) = openssl_csr(key);
        for (form, csr) in [("DER", der), ("PEM", pem.into_bytes())] {
            let response = within(client.certify(&token, csr, None))
                .await
                .unwrap_or_else(|s| panic!("{key:?} {form} refused: {s:?}"));
            let leaf = &response.cert_chain[0];
            assert_eq!(
                check_leaf_svid(leaf).expect("leaf").to_string(),
                FRONTEND,
                "the CSR's URI SAN {FORGED_SPIFFE_ID} is ignored"
            );
            let s = summary(leaf);
            assert_eq!(s.key_algorithm, key.display_name(), "{key:?}");
            assert!(s.dns_sans.is_empty(), "{key:?}: {s:?}");
            verify_chain(&chain_of(&response), ca.roots(), Usage::ServerAuth)
                .unwrap_or_else(|e| panic!("{key:?}: {e}"));
        }
    }
}

// === 5. Restart ===

#[tokio::test]
async fn restart_keeps_the_root_and_the_intermediate() {
    let Ca {
        temp,
        dir,
        mut server,
        bundle,
    } = Ca::start(&[]);
    let token = mint_token(HUSH, &dir, FRONTEND, &["--reusable"]);
    let client = CaClient::new(server.url(), bundle.roots()).expect("client");
    let first = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("issued before the restart");

    // The client still holds its HTTP/2 connection, and this runtime keeps running it while
    // another thread waits for the CA: the CA's GOAWAY is answered and the CA can exit.
    let (status, stderr) =
        tokio::task::spawn_blocking(move || (server.terminate(), server.stderr()))
            .await
            .expect("the waiting thread");
    assert!(
        status.success(),
        "SIGTERM stops the CA cleanly, got {status}; stderr:\n{stderr}"
    );
    assert!(stderr.contains("CA stopped"), "{stderr}");
    drop(client);

    let server = CaProcess::start(HUSH, &dir, &[]);
    let ca = Ca::around(temp, dir, server);
    assert_eq!(
        ca.bundle.roots(),
        bundle.roots(),
        "the bundle survives a restart"
    );
    let second = within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("issued after the restart, with the same reusable token");

    assert_eq!(
        first.cert_chain[1], second.cert_chain[1],
        "same intermediate"
    );
    assert_eq!(
        summary(&first.cert_chain[0]).issuer,
        summary(&second.cert_chain[0]).issuer
    );
    for response in [&first, &second] {
        verify_chain(&chain_of(response), bundle.roots(), Usage::ClientAuth)
            .expect("both leaves chain to the original bundle");
    }
    assert_ne!(first.serial, second.serial);
}

/// A client process that hangs (here: this test's runtime, blocked in a synchronous wait)
/// keeps an idle HTTP/2 connection open and never answers the CA's GOAWAY. SIGTERM must still
/// stop the CA promptly; an orchestrator would otherwise SIGKILL it mid-write.
#[tokio::test]
async fn sigterm_stops_the_ca_even_while_a_hung_client_holds_a_connection() {
    let mut ca = Ca::start(&[]);
    let client = ca.client();
    within(client.trust_bundle()).await.expect("connected");
    let process = ca.server.process();
    let signalled = std::time::Instant::now();
    process.send_sigterm();
    let status = process.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the CA did not exit within 10 s of SIGTERM (after {:?}: {status:?})",
        signalled.elapsed()
    );
    drop(client);
}

// === 6. Audit log ===

#[tokio::test]
async fn audit_log_records_every_outcome_and_never_a_secret() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let audit_path = temp.path().join("custom-audit.jsonl");
    // Debug logging: even the most talkative CA must not print a token.
    let server = CaProcess::try_start_with_env(
        HUSH,
        &dir,
        &["--audit-log", path_str(&audit_path)],
        &[("HUSH_LOG", "debug")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::around(temp, dir, server);
    let token = ca.token(FRONTEND, &[]);
    let secret = token.rsplit('.').next().expect("secret").to_string();
    let token_id = token.split('.').nth(1).expect("id").to_string();
    let client = ca.client();
    let audit = || read_audit(&audit_path);

    // 1: a bad CSR, after the token was checked.
    let bad = within(client.certify(&token, garbage_csr(), None)).await;
    assert_refused(bad, Code::InvalidArgument, &[]);
    assert_eq!(audit().len(), 1, "the refusal is audited before the answer");
    // 2: issued.
    let issued = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("issued");
    assert_eq!(
        audit().len(),
        2,
        "the issuance is audited before the answer"
    );
    // 3: replayed.
    let replay = within(client.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert_refused(replay, Code::Unauthenticated, &["already used"]);
    // 4: no token at all.
    let anonymous = within(ca.raw_client().certify(tonic::Request::new(CertifyRequest {
        csr: plain_csr(CsrKeyKind::EcdsaP256).der,
        ttl_seconds: 0,
    })))
    .await;
    assert_refused(anonymous, Code::Unauthenticated, &[]);
    // 5: a wrong secret for another token's real id.
    let other = ca.token(BACKEND, &[]);
    let other_id = other.split('.').nth(1).expect("id").to_string();
    let guessed_secret = "B".repeat(43);
    let guessed = within(client.certify(
        &format!("hushjt.{other_id}.{guessed_secret}"),
        plain_csr(CsrKeyKind::EcdsaP256).der,
        None,
    ))
    .await;
    assert_refused(guessed, Code::Unauthenticated, &["unknown join token"]);

    let lines = audit();
    assert_eq!(lines.len(), 5, "one line per request: {lines:#?}");
    assert!(
        !ca.dir.join("audit.log").exists(),
        "--audit-log replaces DIR/audit.log"
    );
    for line in &lines {
        let time = line["time"].as_str().expect("time");
        time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("time {time:?} is not RFC 3339: {e}"));
        assert_eq!(line["api"], "hush.ca.v1");
        let peer = line["peer"].as_str().expect("peer");
        assert!(
            peer.starts_with("127.0.0.1:"),
            "peer is the caller's address: {peer}"
        );
    }

    let bad = &lines[0];
    assert_eq!(bad["event"], "refused");
    assert_eq!(bad["code"], "InvalidArgument");
    assert!(
        bad["reason"]
            .as_str()
            .expect("reason")
            .contains("invalid CSR")
    );
    assert_eq!(
        bad["attestation"], "join_token",
        "who was refused is recorded"
    );
    assert_eq!(bad["token_id"], token_id.as_str());
    assert_eq!(bad["spiffe_id"], FRONTEND);

    let ok = &lines[1];
    assert_eq!(ok["event"], "issued");
    assert_eq!(ok["serial"], issued.serial.as_str());
    assert_eq!(ok["spiffe_id"], FRONTEND);
    assert_eq!(ok["attestation"], "join_token");
    assert_eq!(ok["token_id"], token_id.as_str());
    let not_after = ok["not_after"].as_str().expect("not_after");
    let not_after =
        time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
            .expect("not_after is RFC 3339");
    assert_eq!(not_after.unix_timestamp(), issued.expires_at_unix);
    assert!(ok.get("code").is_none() && ok.get("reason").is_none());

    let replayed = &lines[2];
    assert_eq!(replayed["event"], "refused");
    assert_eq!(replayed["code"], "Unauthenticated");
    assert!(
        replayed["reason"]
            .as_str()
            .expect("reason")
            .contains(&token_id)
    );
    // A refused join token is audited by its id, even though it attested nobody.
    assert_eq!(replayed["token_id"], token_id.as_str());
    assert_eq!(replayed["attestation"], "join_token");
    assert!(replayed.get("serial").is_none());

    assert_eq!(lines[3]["event"], "refused");
    assert!(
        lines[3]["reason"]
            .as_str()
            .expect("reason")
            .contains("authorization")
    );
    assert!(lines[3].get("spiffe_id").is_none());

    let text = fs::read_to_string(&audit_path).expect("audit log");
    assert!(
        !text.contains(&secret),
        "the token's secret is in the audit log"
    );
    assert!(
        !text.contains(&guessed_secret),
        "a presented secret is in the audit log"
    );
    let mode = fs::metadata(&audit_path)
        .expect("audit log")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode & 0o007,
        0,
        "the audit log is not world-readable: {mode:o}"
    );

    let stderr = ca.server.stderr();
    assert!(
        stderr.contains("issued certificate"),
        "the CA logs issuances:\n{stderr}"
    );
    assert!(
        !stderr.contains(&secret),
        "the token's secret is in the CA's logs:\n{stderr}"
    );
    assert!(
        !stderr.contains(&guessed_secret),
        "a presented secret is in the CA's logs"
    );
}

// === 7. `hush ca init` ===

#[test]
fn ca_init_never_replaces_a_ca_even_with_force() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let snapshot = || {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
            .expect("CA dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().expect("name").to_string_lossy().into_owned();
                (name, fs::read(&p).expect("file"))
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot();

    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["ca", "init", "--dir", path_str(&dir), "--trust-domain", TD];
        args.extend_from_slice(extra);
        let again = run_hush(HUSH, &args);
        assert!(
            !again.status.success(),
            "a second init must fail:\n{}",
            describe_output(&again)
        );
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(
            stderr.contains("already holds a CA") && stderr.contains("hush ca rotate root"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(snapshot(), before, "a refused init changes nothing");
    }

    for (name, _) in &before {
        if name.ends_with(".key") {
            let mode = fs::metadata(dir.join(name))
                .expect(name)
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        }
    }
    let dir_mode = fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "the CA directory has mode {dir_mode:o}");
    let bundle = fs::read(dir.join("bundle.pem")).expect("bundle.pem");
    let printed = run_hush_ok(HUSH, &["ca", "bundle", "--dir", path_str(&dir)]);
    assert_eq!(
        printed.as_bytes(),
        bundle.as_slice(),
        "`hush ca bundle` prints bundle.pem"
    );
    let root = &parse_pem_certificates(&bundle).expect("root")[0];
    assert_eq!(
        check_signing_cert(root)
            .expect("the root is a signing cert")
            .map(|id| id.to_string()),
        Some(format!("spiffe://{TD}"))
    );
}

#[tokio::test]
async fn p384_ca_issues_verifiable_chains() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &["--key-algorithm", "ecdsa-p384"]);
    let server = CaProcess::start(HUSH, &dir, &[]);
    let ca = Ca::around(temp, dir, server);
    assert_eq!(summary(&ca.roots()[0]).key_algorithm, "ECDSA P-384");
    assert_eq!(summary(&ca.intermediate()).key_algorithm, "ECDSA P-384");
    let token = ca.token(FRONTEND, &[]);
    let response = within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("issued");
    assert!(
        summary(&response.cert_chain[0])
            .signature_algorithm
            .contains("SHA-384")
    );
    verify_chain(&chain_of(&response), ca.roots(), Usage::ServerAuth).expect("verifies");
}

/// The intermediate's key made in a SoftHSM2 token by `hush ca init --key-uri`: the directory
/// holds no key file, `hush ca serve` signs in the token (the environment variable that finds
/// the token is handed to it, as an operator's unit file would), and a wrong PIN stops it at
/// start with an error that names the token and shows no PIN.
#[tokio::test]
async fn a_ca_signs_with_its_intermediate_key_in_a_pkcs11_token() {
    const PIN: &str = "e2e-pin-4821";
    const WRONG_PIN: &str = "e2e-wrong-7395";
    let Some(hsm) = SoftHsmToken::init("hush", PIN) else {
        return;
    };
    let pin_file = hsm.pin_file("pin", PIN);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    let uri = format!(
        "pkcs11:token=hush;object=int1?pin-source=file:{}",
        pin_file.display()
    );
    let init = run_hush_with_env(
        HUSH,
        &[
            "ca",
            "init",
            "--dir",
            path_str(&dir),
            "--trust-domain",
            TD,
            "--key-uri",
            &uri,
        ],
        &hsm.env(),
    );
    assert!(init.status.success(), "{}", describe_output(&init));
    let keys: Vec<String> = fs::read_dir(&dir)
        .expect("the CA directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.starts_with("intermediate") && name.ends_with(".key"))
        .collect();
    assert_eq!(
        keys,
        Vec::<String>::new(),
        "the intermediate's key is in the token"
    );
    let listed = ca_command(&dir, &["authorities"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains("pkcs11 token=hush object=int1"),
        "{}",
        describe_output(&listed)
    );

    let server = CaProcess::try_start_with_env(HUSH, &dir, &[], &hsm.env())
        .unwrap_or_else(|e| panic!("{e}"));
    let ca = Ca::around(temp, dir, server);
    let token = ca.token(FRONTEND, &[]);
    let response = within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("issued");
    let chain = chain_of(&response);
    assert_eq!(chain[1], ca.intermediate());
    verify_chain(&chain, ca.roots(), Usage::ClientAuth).expect("verifies");

    fs::write(&pin_file, format!("{WRONG_PIN}\n")).expect("a wrong PIN");
    let error = CaProcess::try_start_with_env(HUSH, &ca.dir, &[], &hsm.env())
        .expect_err("the CA must not start with a wrong PIN");
    assert!(
        error.status.is_some_and(|s| !s.success()),
        "it exits with failure: {error}"
    );
    assert!(
        error.stderr.contains("PKCS#11 token \"hush\"")
            && error.stderr.contains("the PIN is incorrect"),
        "{}",
        error.stderr
    );
    assert!(
        !error.stderr.contains(WRONG_PIN) && !error.stderr.contains(PIN),
        "{}",
        error.stderr
    );
}

#[test]
fn ca_serve_refuses_a_group_readable_intermediate_key() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    // The key the CA signs with, under its ID name.
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("authorities.json")).expect("manifest"))
            .expect("JSON");
    let active = manifest["authorities"]
        .as_array()
        .expect("authorities")
        .iter()
        .find(|a| a["kind"] == "intermediate" && a["state"] == "active")
        .expect("an active intermediate");
    let key = dir.join(active["key"].as_str().expect("a key file"));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod");
    let error = CaProcess::try_start_with_env(HUSH, &dir, &[], &[])
        .expect_err("the CA must not serve with a group-readable key");
    assert!(
        error.status.is_some_and(|s| !s.success()),
        "it exits with failure: {error}"
    );
    assert!(
        error.stderr.contains("readable by group or others") && error.stderr.contains("chmod 600"),
        "{}",
        error.stderr
    );
}

#[test]
fn ca_serve_names_an_address_it_cannot_listen_on() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let mut process = hush_test_support::HushProcess::spawn(
        HUSH,
        &["ca", "serve", "--dir", path_str(&dir), "--listen", &address],
    );
    let status = process
        .wait_exit(Duration::from_secs(30))
        .expect("the CA exits when its port is taken");
    assert!(!status.success());
    let stderr = process.stderr();
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "{stderr}"
    );
}

#[test]
fn ca_commands_on_a_missing_directory_say_how_to_make_one() {
    let temp = tempfile::tempdir().expect("temp dir");
    let missing = temp.path().join("nope");
    let output = run_hush(HUSH, &["ca", "bundle", "--dir", path_str(&missing)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is missing") && stderr.contains("hush ca init"),
        "{stderr}"
    );
    let output = token_create(&missing, FRONTEND, &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("hush ca init"));
}

// === 8. `hush ca token create` ===

#[test]
fn token_create_prints_the_token_last_and_stores_only_a_hash() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let output = token_create(&dir, FRONTEND, &[]);
    assert!(output.status.success(), "{}", describe_output(&output));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let token = stdout.lines().last().expect("a token line").trim();
    let parts: Vec<&str> = token.splitn(3, '.').collect();
    assert_eq!(parts[0], "hushjt", "{token}");
    assert_eq!(parts[1].len(), 16);
    assert!(
        parts[1]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(
        parts[2].len() >= 40,
        "the secret has at least 240 bits: {token}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(parts[2]), "the secret is only on stdout");
    assert!(
        stderr.contains(FRONTEND) && stderr.contains("single use"),
        "{stderr}"
    );

    let record_path = dir.join("tokens").join(format!("{}.json", parts[1]));
    let record = fs::read_to_string(&record_path).expect("the token record");
    assert!(
        !record.contains(parts[2]),
        "the record holds the secret: {record}"
    );
    let record: Value = serde_json::from_str(&record).expect("the record is JSON");
    assert_eq!(record["spiffe_id"], FRONTEND);
    assert_eq!(record["secret_sha256"].as_str().map(str::len), Some(64));
    let mode = fs::metadata(&record_path)
        .expect("record")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the token record has mode {mode:o}");
}

#[test]
fn token_create_refuses_foreign_and_invalid_spiffe_ids() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let rows: [(&str, &[&str]); 8] = [
        (
            "spiffe://other.test/ns/shop/sa/frontend",
            &["not in this CA's trust domain", TD],
        ),
        (
            "spiffe://e2e.test/ns//sa",
            &["invalid --spiffe-id", "empty segment"],
        ),
        (
            "https://e2e.test/ns/shop",
            &["invalid --spiffe-id", "does not start with \"spiffe://\""],
        ),
        (
            "spiffe://E2E.test/ns/shop",
            &["invalid --spiffe-id", "invalid character 'E'"],
        ),
        (
            "spiffe://e2e.test/ns/../sa",
            &["invalid --spiffe-id", "'..' segments are not allowed"],
        ),
        (
            "spiffe://e2e.test/ns/shop?x=1",
            &["invalid --spiffe-id", "query"],
        ),
        (
            "spiffe://e2e.test/ns/shop/",
            &["invalid --spiffe-id", "trailing slash"],
        ),
        ("", &["invalid --spiffe-id", "empty"]),
    ];
    for (id, needles) in rows {
        let output = token_create(&dir, id, &[]);
        assert!(
            !output.status.success(),
            "{id:?} was accepted:\n{}",
            describe_output(&output)
        );
        assert!(output.stdout.is_empty(), "{id:?}: no token is printed");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{id:?}: expected {needle:?} in {stderr}"
            );
        }
    }
    let minted = fs::read_dir(dir.join("tokens"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(minted, 0, "no token record was written");
}

/// X.509-SVID §3.1: "Leaf certificate SPIFFE IDs MUST have a non-root path component." A token
/// for the bare trust-domain ID would yield a leaf naming the trust domain itself — the name
/// hush's own root and intermediate carry.
#[tokio::test]
async fn a_leaf_for_the_bare_trust_domain_id_is_never_issued() {
    let ca = Ca::start(&[]);
    let trust_domain_id = format!("spiffe://{TD}");
    let output = token_create(&ca.dir, &trust_domain_id, &[]);
    if output.status.success() {
        let token = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        let result = within(ca.client().certify(
            &token,
            plain_csr(CsrKeyKind::EcdsaP256).der,
            None,
        ))
        .await;
        if let Ok(response) = &result {
            panic!(
                "the CA issued a leaf for {:?} (token create accepted the bare trust-domain ID)",
                summary(&response.cert_chain[0]).uri_sans
            );
        }
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("path"),
            "the refusal explains the path rule: {stderr}"
        );
    }
}

// === 9. Kubernetes TokenReview through the real process ===

const OWN_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6Imh1c2gtY2EifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6aHVzaDpodXNoLWNhIn0.b3duLXRva2VuLXNpZ25hdHVyZQ";
const FRONTEND_JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpmcm9udGVuZCJ9.ZnJvbnRlbmQtc2lnbmF0dXJl";
const REVOKED_JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpvbGQifQ.cmV2b2tlZC1zaWduYXR1cmU";
const ECHOED_JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDplY2hvIn0.ZWNoby1zaWduYXR1cmU";
const VAULT_JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDp2YXVsdCJ9.dmF1bHQtc2lnbmF0dXJl";
const USER_JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJqYW5lQGV4YW1wbGUuY29tIn0.dXNlci1zaWduYXR1cmU";
/// A token an audience-unaware authenticator vouches for: no audiences come back.
const LEGACY_JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpsZWdhY3kifQ.bGVnYWN5LXNpZ25hdHVyZQ";
const SA_UID: &str = "4f1c2b7e-9a0d-4e3f-8b6a-5c7d8e9f0a1b";
const REVOKED_ERROR: &str = "[invalid bearer token, service account token has been invalidated]";

/// Answers like an API server that knows a handful of tokens.
fn review(request: &hush_test_support::ReviewRequest) -> (u16, Value) {
    let body = match request.token() {
        Some(FRONTEND_JWT) => token_review_authenticated(
            request,
            "system:serviceaccount:shop:frontend",
            SA_UID,
            &["hush-ca"],
        ),
        Some(VAULT_JWT) => token_review_authenticated(
            request,
            "system:serviceaccount:shop:vault",
            SA_UID,
            &["vault"],
        ),
        Some(USER_JWT) => {
            token_review_authenticated(request, "jane@example.com", SA_UID, &["hush-ca"])
        }
        Some(LEGACY_JWT) => {
            token_review_authenticated(request, "system:serviceaccount:shop:legacy", SA_UID, &[])
        }
        // A careless API server that quotes the token in its error.
        Some(ECHOED_JWT) => token_review_rejected(
            request,
            &format!("token {ECHOED_JWT} is bound to a pod that no longer exists"),
        ),
        _ => token_review_rejected(request, REVOKED_ERROR),
    };
    (201, body)
}

fn k8s_args<'a>(api: &'a FakeApiServer, files: &'a (PathBuf, PathBuf)) -> Vec<&'a str> {
    vec![
        "--k8s-api-server",
        api.url(),
        "--k8s-ca-file",
        path_str(&files.0),
        "--k8s-token-file",
        path_str(&files.1),
        "--k8s-audience",
        "hush-ca",
    ]
}

fn k8s_files(temp: &Path, api: &FakeApiServer) -> (PathBuf, PathBuf) {
    let ca_file = temp.join("kube-ca.crt");
    let token_file = temp.join("kube-token");
    fs::write(&ca_file, api.ca_pem()).expect("write the API server's CA");
    fs::write(&token_file, format!("{OWN_TOKEN}\n")).expect("write the CA's own token");
    (ca_file, token_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_service_account_tokens_are_checked_with_token_review() {
    let api = FakeApiServer::start(review);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let files = k8s_files(temp.path(), &api);
    let server = CaProcess::start(HUSH, &dir, &k8s_args(&api, &files));
    let ca = Ca::around(temp, dir, server);
    let client = ca.client();
    let csr = forged_csr(CsrKeyKind::EcdsaP256);

    let response = within(client.certify(FRONTEND_JWT, csr.der.clone(), None))
        .await
        .unwrap_or_else(|s| {
            panic!(
                "a valid service-account token is refused: {s:?}\n{}",
                ca.server.stderr()
            )
        });
    assert_eq!(response.spiffe_id, "spiffe://e2e.test/ns/shop/sa/frontend");
    assert_eq!(
        check_leaf_svid(&response.cert_chain[0])
            .expect("leaf")
            .to_string(),
        "spiffe://e2e.test/ns/shop/sa/frontend"
    );
    verify_chain(&chain_of(&response), ca.roots(), Usage::ClientAuth).expect("verifies");

    // What the CA sent: a TokenReview for the caller's token and the audience, authenticated
    // with the CA's own token (trimmed of the file's newline).
    let requests = api.requests();
    assert_eq!(requests.len(), 1, "one review per request: {requests:#?}");
    let sent = &requests[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {OWN_TOKEN}").as_str())
    );
    assert_eq!(sent.content_type.as_deref(), Some("application/json"));
    assert_eq!(sent.body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(sent.body["kind"], "TokenReview");
    assert_eq!(sent.body["spec"]["token"], FRONTEND_JWT);
    assert_eq!(
        sent.body["spec"]["audiences"],
        serde_json::json!(["hush-ca"])
    );

    // The Istio API attests the same way.
    let istio = istio_create(&ca, FRONTEND_JWT, istio_request(&csr.pem, 3600))
        .await
        .expect("the Istio API accepts a service-account token");
    let leaf = &pem_certificates(&istio.cert_chain[0])[0];
    assert_eq!(
        check_leaf_svid(leaf).expect("leaf").to_string(),
        "spiffe://e2e.test/ns/shop/sa/frontend"
    );

    // Refusals carry the API server's words, and never a token.
    let revoked = within(client.certify(REVOKED_JWT, csr.der.clone(), None)).await;
    assert_refused(
        revoked,
        Code::Unauthenticated,
        &["did not accept the service-account token", REVOKED_ERROR],
    );
    let echoed = within(client.certify(ECHOED_JWT, csr.der.clone(), None)).await;
    let status = assert_refused(
        echoed,
        Code::Unauthenticated,
        &["bound to a pod that no longer exists"],
    );
    assert!(
        !status.message().contains(ECHOED_JWT),
        "the caller's token is scrubbed from the API server's text: {:?}",
        status.message()
    );
    let vault = within(client.certify(VAULT_JWT, csr.der.clone(), None)).await;
    assert_refused(
        vault,
        Code::Unauthenticated,
        &["not meant for audience hush-ca", "vault"],
    );
    let user = within(client.certify(USER_JWT, csr.der.clone(), None)).await;
    assert_refused(
        user,
        Code::Unauthenticated,
        &["jane@example.com", "not a Kubernetes service account"],
    );
    // Authenticated, but no audience came back: valid for the API server only, not for the CA.
    let legacy = within(client.certify(LEGACY_JWT, csr.der.clone(), None)).await;
    let unconfirmed = [
        "did not confirm audience hush-ca",
        "status.audiences came back empty",
    ];
    assert_refused(legacy, Code::Unauthenticated, &unconfirmed);

    let audit = ca.audit();
    assert_eq!(audit.len(), 7, "{audit:#?}");
    let refused_legacy = audit.last().expect("the last refusal is audited");
    assert_eq!(refused_legacy["event"], "refused");
    assert_eq!(refused_legacy["code"], "Unauthenticated");
    let reason = refused_legacy["reason"].as_str().unwrap_or_default();
    assert!(
        unconfirmed.iter().all(|needle| reason.contains(needle)),
        "the audit line says what was asked for and what came back: {reason}"
    );
    let issued: Vec<_> = audit.iter().filter(|l| l["event"] == "issued").collect();
    assert_eq!(issued.len(), 2);
    for line in issued {
        assert_eq!(line["attestation"], "k8s_service_account");
        assert_eq!(line["spiffe_id"], "spiffe://e2e.test/ns/shop/sa/frontend");
        assert!(
            line.get("token_id").is_none(),
            "no join token id for a service account"
        );
    }
    let text = fs::read_to_string(ca.dir.join("audit.log")).expect("audit log");
    let stderr = ca.server.stderr();
    for secret in [
        FRONTEND_JWT,
        REVOKED_JWT,
        ECHOED_JWT,
        VAULT_JWT,
        USER_JWT,
        LEGACY_JWT,
        OWN_TOKEN,
    ] {
        let signature = secret.rsplit('.').next().expect("JWT signature");
        assert!(!text.contains(signature), "a token is in the audit log");
        assert!(
            !stderr.contains(signature),
            "a token is in the CA's logs:\n{stderr}"
        );
    }
}

/// HTTP 403 judges the CA's own service account, not the caller: UNAVAILABLE, naming the RBAC
/// permission to grant, rather than UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_review_forbidden_to_the_ca_is_unavailable_not_unauthenticated() {
    let api = FakeApiServer::start(|_| (403, forbidden("system:serviceaccount:hush:hush-ca")));
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let files = k8s_files(temp.path(), &api);
    let server = CaProcess::start(HUSH, &dir, &k8s_args(&api, &files));
    let ca = Ca::around(temp, dir, server);
    let result = within(ca.client().certify(
        FRONTEND_JWT,
        plain_csr(CsrKeyKind::EcdsaP256).der,
        None,
    ))
    .await;
    assert_refused(
        result,
        Code::Unavailable,
        &[
            "HTTP 403",
            "tokenreviews",
            "authentication.k8s.io",
            "system:auth-delegator",
        ],
    );
    // Join tokens keep working while Kubernetes is broken.
    let token = ca.token(FRONTEND, &[]);
    within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("join tokens do not depend on the API server");
}

// === 10. `hush cert inspect` ===

#[tokio::test]
async fn cert_inspect_reads_an_issued_chain() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let response = within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP384).der, None),
    )
    .await
    .expect("issued");
    let pem: String = response
        .cert_chain
        .iter()
        .chain(response.trust_bundle.iter())
        .map(|der| hush_ca::pem_certificate(der))
        .collect();
    let file = ca.temp.path().join("chain.pem");
    fs::write(&file, pem).expect("write chain");

    let text = run_hush_ok(HUSH, &["cert", "inspect", path_str(&file)]);
    for needle in [
        "certificate 1 of 3: workload certificate (X.509-SVID leaf)",
        &format!("SPIFFE ID:  {FRONTEND}"),
        "(expires in ",
        "key:        ECDSA P-384",
        "SVID check: ok, a valid X.509-SVID leaf",
        "certificate 2 of 3: intermediate CA",
        "certificate 3 of 3: root CA",
        "SVID check: ok, a valid X.509-SVID signing certificate",
        &format!("serial:     {}", response.serial),
    ] {
        assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
    }

    let json = run_hush_ok(HUSH, &["cert", "inspect", "--json", path_str(&file)]);
    let json: Value = serde_json::from_str(&json).expect("--json prints JSON");
    let certs = json
        .as_array()
        .expect("an array, one entry per certificate");
    assert_eq!(certs.len(), 3);
    assert_eq!(certs[0]["spiffe_id"], FRONTEND);
    assert_eq!(certs[0]["role"], "leaf");
    assert_eq!(certs[0]["svid_ok"], true);
    assert_eq!(certs[0]["key_algorithm"], "ECDSA P-384");
    assert!(
        certs[0]["seconds_left"]
            .as_i64()
            .is_some_and(|s| s > DAY - SLACK)
    );
    assert_eq!(certs[1]["role"], "signing");
    assert_eq!(certs[2]["spiffe_id"], format!("spiffe://{TD}"));
}

#[test]
fn cert_inspect_explains_broken_and_unreadable_files() {
    let temp = tempfile::tempdir().expect("temp dir");
    let test_ca = TestCa::new(TD);
    let write = |name: &str, ders: &[CertificateDer<'_>]| {
        let path = temp.path().join(name);
        let pem: String = ders.iter().map(|d| hush_ca::pem_certificate(d)).collect();
        fs::write(&path, pem).expect("write");
        path
    };

    let expired = write(
        "expired-leaf.pem",
        &test_ca.expired_leaf(FRONTEND).chain[..1],
    );
    let text = run_hush_ok(HUSH, &["cert", "inspect", path_str(&expired)]);
    assert!(text.contains("EXPIRED 1 h 0 min ago"), "{text}");

    let is_ca = write("leaf-is-ca.pem", &test_ca.leaf_is_ca(FRONTEND).chain[..1]);
    let text = run_hush_ok(HUSH, &["cert", "inspect", path_str(&is_ca)]);
    assert!(
        text.contains("SVID check: FAILS") && text.contains("has a path"),
        "{text}"
    );

    let two = write(
        "leaf-with-two-spiffe-ids.pem",
        &test_ca.leaf_with_two_spiffe_ids(FRONTEND, BACKEND).chain[..1],
    );
    let text = run_hush_ok(HUSH, &["cert", "inspect", path_str(&two)]);
    assert!(
        text.contains("FAILS") && text.contains("2 URI SANs"),
        "{text}"
    );

    let garbage = temp.path().join("garbage.pem");
    fs::write(&garbage, "this is not a certificate\n").expect("write");
    let damaged = temp.path().join("damaged-der.pem");
    fs::write(
        &damaged,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let key = temp.path().join("private-key.pem");
    fs::write(&key, private_key_pem_instead_of_csr()).expect("write");
    let missing = temp.path().join("missing.pem");
    let rows: [(&Path, &[&str]); 4] = [
        (&garbage, &["is not a PEM certificate file"]),
        (&damaged, &["certificate 1 cannot be read"]),
        (&key, &["is not a PEM certificate file", "PRIVATE KEY"]),
        (&missing, &["cannot read", "missing.pem"]),
    ];
    for (file, needles) in rows {
        for json in [false, true] {
            let mut args = vec!["cert", "inspect", path_str(file)];
            if json {
                args.push("--json");
            }
            let output = run_hush(HUSH, &args);
            assert!(
                !output.status.success(),
                "{}:\n{}",
                file.display(),
                describe_output(&output)
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(stderr.starts_with("error: "), "{stderr}");
            for needle in needles {
                assert!(
                    stderr.contains(needle),
                    "{}: expected {needle:?} in {stderr}",
                    file.display()
                );
            }
        }
    }
}

// === 11. `hush up --once` ===

// === 12. `hush cert request` ===

#[test]
fn cert_request_writes_a_key_a_chain_and_the_bundle() {
    let ca = Ca::start(&[]);
    let token_file = ca.temp.path().join("token");
    fs::write(&token_file, format!("{}\n", ca.token(BACKEND, &[]))).expect("write token");
    let out = ca.temp.path().join("out");
    let bundle_path = ca.dir.join("bundle.pem");
    let args = [
        "cert",
        "request",
        "--ca",
        ca.url(),
        "--bundle",
        path_str(&bundle_path),
        "--token-file",
        path_str(&token_file),
        "--out-dir",
        path_str(&out),
        "--ttl",
        "2h",
        "--key-type",
        "ed25519",
    ];
    let output = run_hush(HUSH, &args);
    assert!(output.status.success(), "{}", describe_output(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("issued {BACKEND}")));

    let chain = pem_certificates(&fs::read_to_string(out.join("svid.pem")).expect("svid.pem"));
    assert_eq!(chain.len(), 2);
    assert_eq!(
        check_leaf_svid(&chain[0]).expect("leaf").to_string(),
        BACKEND
    );
    let leaf = summary(&chain[0]);
    assert_eq!(leaf.key_algorithm, "Ed25519");
    assert!(
        (leaf.not_after - now() - 2 * HOUR).abs() <= SLACK,
        "--ttl 2h is honoured"
    );
    verify_chain(&chain, ca.roots(), Usage::ClientAuth).expect("verifies");

    let key_path = out.join("svid.key");
    let mode = fs::metadata(&key_path)
        .expect("svid.key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "svid.key has mode {mode:o}");
    let key = rcgen::KeyPair::from_pem(&fs::read_to_string(&key_path).expect("svid.key"))
        .expect("svid.key is a PEM private key");
    assert_eq!(
        rcgen::PublicKeyData::subject_public_key_info(&key),
        CertFacts::from_der(&chain[0]).public_key_info,
        "svid.key is the key the certificate certifies"
    );
    let written = fs::read(out.join("bundle.pem")).expect("bundle.pem");
    assert_eq!(written, fs::read(&bundle_path).expect("the CA's bundle"));

    // The token was single-use: a second request fails and leaves the files alone.
    let before = fs::read(out.join("svid.pem")).expect("svid.pem");
    let output = run_hush(HUSH, &args);
    assert!(!output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the CA refused") && stderr.contains("already used"),
        "{stderr}"
    );
    assert_eq!(fs::read(out.join("svid.pem")).expect("svid.pem"), before);
}

#[test]
fn cert_request_with_the_wrong_bundle_fails_the_tls_check() {
    let ca = Ca::start(&[]);
    let token_file = ca.temp.path().join("token");
    fs::write(&token_file, ca.token(BACKEND, &[])).expect("write token");
    let stranger = ca.temp.path().join("stranger.pem");
    fs::write(&stranger, TestCa::new(TD).root_pem()).expect("write");
    let output = run_hush(
        HUSH,
        &[
            "cert",
            "request",
            "--ca",
            ca.url(),
            "--bundle",
            path_str(&stranger),
            "--token-file",
            path_str(&token_file),
            "--out-dir",
            path_str(&ca.temp.path().join("out")),
        ],
    );
    assert!(!output.status.success(), "{}", describe_output(&output));
    assert!(!ca.temp.path().join("out").exists(), "nothing is written");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The CA never saw the request: the client refused the CA's certificate, and says why.
    assert!(
        stderr.contains("invalid peer certificate") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
}

// === 13. Renewal with the current certificate ===

/// A workload's current identity, as a client would present it.
fn identity_of(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> CredentialStore {
    let store = CredentialStore::new();
    store
        .install(chain, key)
        .expect("a usable certificate and key");
    store
}

#[tokio::test]
async fn a_workload_renews_with_its_current_certificate_and_keeps_its_identity() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let first_csr = plain_csr(CsrKeyKind::EcdsaP256);
    let first = within(ca.client().certify(&token, first_csr.der.clone(), None))
        .await
        .expect("issued with the token");

    let renewing = CaClient::with_identity(
        ca.url(),
        ca.roots(),
        identity_of(
            chain_of(&first),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(first_csr.key.serialize_der())),
        ),
    )
    .expect("a client with an identity");
    let second = within(renewing.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("renewed with the certificate");
    assert_eq!(second.spiffe_id, FRONTEND);
    assert_eq!(
        check_leaf_svid(&second.cert_chain[0])
            .expect("an SVID")
            .as_str(),
        FRONTEND
    );
    assert_ne!(second.serial, first.serial);
    assert_ne!(
        CertFacts::from_der(&second.cert_chain[0]).public_key_info,
        CertFacts::from_der(&first.cert_chain[0]).public_key_info,
        "the renewed certificate is for the new key"
    );

    let audit = read_audit(&ca.dir.join("audit.log"));
    let last = audit.last().expect("audit lines");
    assert_eq!(last["event"], "issued");
    assert_eq!(last["attestation"], "x509_svid");
    assert_eq!(last["spiffe_id"], FRONTEND);
    assert!(last.get("token_id").is_none());

    // The single-use token is long gone; the certificate alone keeps the workload going.
    let third = within(renewing.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert!(third.is_ok(), "{third:?}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_cannot_renew() {
    let ca = Ca::start(&[]);
    let foreign = TestCa::new(TD).leaf(FRONTEND);
    let client = CaClient::with_identity(
        ca.url(),
        ca.roots(),
        identity_of(foreign.chain, foreign.key),
    )
    .expect("a client");
    let before = read_audit(&ca.dir.join("audit.log")).len();
    let result = within(client.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    // TLS 1.3 clients learn of a refused certificate only when the connection is torn down, so
    // the client's code varies; the CA's log says why.
    result.expect_err("the handshake must fail");
    assert_eq!(
        read_audit(&ca.dir.join("audit.log")).len(),
        before,
        "no request reached the CA"
    );
    wait_for_stderr(&ca, "refused a client certificate");
    assert!(
        ca.server.stderr().contains("certificate chain failed")
            && ca.server.stderr().contains("unknown issuer"),
        "{}",
        ca.server.stderr()
    );
    let token = ca.token(FRONTEND, &[]);
    within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("the CA serves on after refusing a foreign certificate");
}

/// Waits (bounded) until the CA has logged `needle` on stderr.
fn wait_for_stderr(ca: &Ca, needle: &str) {
    wait_for_log(&ca.server, needle);
}

/// Waits (bounded) until `server` has logged `needle` on stderr; returns the line.
fn wait_for_log(server: &CaProcess, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stderr = server.stderr();
        if let Some(line) = stderr.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the CA never logged {needle:?}; stderr:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn an_expired_certificate_cannot_renew() {
    let ca = Ca::start(&[]);
    let expired = expired_leaf_from_ca_dir(&ca.dir, FRONTEND);
    let client = CaClient::with_identity(
        ca.url(),
        ca.roots(),
        identity_of(expired.chain, expired.key),
    )
    .expect("a client");
    let result = within(client.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    result.expect_err("an expired certificate proves nothing");
    wait_for_stderr(&ca, "refused a client certificate");
    assert!(
        ca.server.stderr().contains("expired"),
        "{}",
        ca.server.stderr()
    );
}

#[tokio::test]
async fn a_client_with_neither_token_nor_certificate_is_told_both_ways() {
    let ca = Ca::start(&[]);
    let result = within(ca.raw_client().certify(tonic::Request::new(CertifyRequest {
        csr: plain_csr(CsrKeyKind::EcdsaP256).der,
        ttl_seconds: 0,
    })))
    .await;
    assert_refused(
        result,
        Code::Unauthenticated,
        &["authorization", "current certificate"],
    );
    let token = ca.token(FRONTEND, &[]);
    within(
        ca.client()
            .certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("the CA serves on after a request with no credentials at all");
}

#[test]
fn cert_renew_replaces_the_files_with_a_new_key() {
    let ca = Ca::start(&[]);
    let token = ca.token(FRONTEND, &[]);
    let token_file = ca.temp.path().join("token");
    fs::write(&token_file, &token).expect("token file");
    let bundle = ca.temp.path().join("bundle.pem");
    fs::write(&bundle, ca.bundle.to_pem()).expect("bundle file");
    let out = ca.temp.path().join("frontend");
    run_hush_ok(
        HUSH,
        &[
            "cert",
            "request",
            "--ca",
            ca.url(),
            "--bundle",
            path_str(&bundle),
            "--token-file",
            path_str(&token_file),
            "--out-dir",
            path_str(&out),
        ],
    );
    let key_before = fs::read(out.join("svid.key")).expect("svid.key");
    let cert_before = fs::read(out.join("svid.pem")).expect("svid.pem");
    run_hush_ok(
        HUSH,
        &[
            "cert",
            "renew",
            "--ca",
            ca.url(),
            "--bundle",
            path_str(&bundle),
            "--dir",
            path_str(&out),
        ],
    );
    assert_ne!(
        fs::read(out.join("svid.key")).expect("svid.key"),
        key_before
    );
    assert_ne!(
        fs::read(out.join("svid.pem")).expect("svid.pem"),
        cert_before
    );
    let mode = fs::metadata(out.join("svid.key"))
        .expect("svid.key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let chain = pem_certificates(&fs::read_to_string(out.join("svid.pem")).expect("svid.pem"));
    assert_eq!(
        check_leaf_svid(&chain[0]).expect("an SVID").as_str(),
        FRONTEND
    );
}

#[tokio::test]
async fn token_list_shows_state_and_revoke_withdraws_at_once() {
    let ca = Ca::start(&[]);
    let used = ca.token(FRONTEND, &[]);
    let kept = ca.token(FRONTEND, &["--reusable"]);
    within(
        ca.client()
            .certify(&used, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("issued");
    within(
        ca.client()
            .certify(&kept, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await
    .expect("issued");
    let id = |token: &str| token.split('.').nth(1).expect("id").to_string();
    let listing = run_hush_ok(HUSH, &["ca", "token", "list", "--dir", path_str(&ca.dir)]);
    let line_of = |id: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not listed:\n{listing}"))
            .to_string()
    };
    assert!(line_of(&id(&used)).contains("used"), "{listing}");
    assert!(line_of(&id(&kept)).contains("reusable"), "{listing}");
    assert!(!listing.contains(kept.rsplit('.').next().expect("secret")));

    run_hush_ok(
        HUSH,
        &[
            "ca",
            "token",
            "revoke",
            "--dir",
            path_str(&ca.dir),
            &id(&kept),
        ],
    );
    let result = within(
        ca.client()
            .certify(&kept, plain_csr(CsrKeyKind::EcdsaP256).der, None),
    )
    .await;
    assert_refused(result, Code::Unauthenticated, &["unknown join token"]);
}

// === 15. Authorities that rotate under a running CA ===

/// `hush ca ARGS… --dir DIR`.
fn ca_command(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["ca"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", path_str(dir)]);
    run_hush(HUSH, &all)
}

#[track_caller]
fn ca_command_ok(dir: &Path, args: &[&str]) -> String {
    let out = ca_command(dir, args);
    assert!(
        out.status.success(),
        "hush ca {args:?} failed:\n{}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn authority_id(der: &[u8]) -> String {
    hush_ca::AuthorityId::of_certificate(der)
        .expect("a CA certificate")
        .to_string()
}

/// A fresh certificate for `spiffe_id` by join token, and the key it is for.
async fn issue_with_token(
    ca: &Ca,
    client: &CaClient,
    spiffe_id: &str,
) -> (CertifyResponse, PrivateKeyDer<'static>) {
    let token = ca.token(spiffe_id, &[]);
    let csr = plain_csr(CsrKeyKind::EcdsaP256);
    let issued = within(client.certify(&token, csr.der.clone(), None))
        .await
        .expect("issued with a token");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(csr.key.serialize_der()));
    (issued, key)
}

/// Retries `check` every 100 ms until it returns `Some`, for at most 30 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_running_ca_follows_rotations_and_revocations_without_a_restart() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &["--publish-wait", "2s", "--max-ttl", "1m"]);
    let server = CaProcess::start(
        HUSH,
        &dir,
        &[
            "--reload-interval",
            "1s",
            "--max-ttl",
            "1m",
            "--taint-spread",
            "3s",
        ],
    );
    let ca = Ca::around(temp, dir, server);
    let first_roots = ca.roots().to_vec();
    let client = ca.client();
    let (first, first_key) = issue_with_token(&ca, &client, FRONTEND).await;
    let first_intermediate = authority_id(&first.cert_chain[1]);
    let under_first = CaClient::with_identity(
        ca.url(),
        &first_roots,
        identity_of(chain_of(&first), first_key),
    )
    .expect("a client with an identity");

    // 1. Intermediate rotation: the next issuance comes from the new intermediate.
    ca_command_ok(&ca.dir, &["rotate", "intermediate"]);
    ca_command_ok(&ca.dir, &["activate"]);
    let second_intermediate = eventually("the CA signs with the new intermediate", || async {
        let (issued, _) = issue_with_token(&ca, &client, FRONTEND).await;
        let id = authority_id(&issued.cert_chain[1]);
        (id != first_intermediate).then_some(id)
    })
    .await;
    wait_for_stderr(&ca, "authorities reloaded");
    wait_for_stderr(
        &ca,
        "server certificate now comes from the new intermediate",
    );
    // A certificate under the retired intermediate still renews.
    within(under_first.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("a certificate under the old intermediate renews");

    // Tainted: the bundle tells sidecars, with the spread, in a newer generation.
    let before = within(client.trust_bundle()).await.expect("the bundle");
    assert!(before.tainted_authorities.is_empty());
    assert_eq!(before.renew_spread_seconds, 3);
    let states: BTreeMap<String, String> = before
        .authorities
        .iter()
        .map(|a| (a.id.clone(), a.state.clone()))
        .collect();
    assert_eq!(states[&first_intermediate], "old");
    assert_eq!(states[&second_intermediate], "active");
    ca_command_ok(&ca.dir, &["taint", "--authority", &first_intermediate]);
    let tainted = eventually("the bundle names the tainted intermediate", || async {
        let bundle = within(client.trust_bundle()).await.expect("the bundle");
        (!bundle.tainted_authorities.is_empty()).then_some(bundle)
    })
    .await;
    assert_eq!(
        tainted.tainted_authorities,
        vec![first_intermediate.clone()]
    );
    assert!(tainted.generation > before.generation);
    // Still trusted: renewal is how a workload leaves a tainted authority.
    let renewed = within(under_first.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("a certificate under a tainted intermediate renews");
    assert_eq!(renewed.authority_id, second_intermediate);

    // 2. Root rotation: published first, signing only after the publish wait.
    ca_command_ok(&ca.dir, &["rotate", "root"]);
    let early = ca_command(&ca.dir, &["activate"]);
    let words = String::from_utf8_lossy(&early.stderr);
    assert!(
        !early.status.success() && words.contains("publish wait") && words.contains("--force"),
        "{}",
        describe_output(&early)
    );
    let roots = eventually("the CA serves both roots", || async {
        let bundle = within(client.trust_bundle()).await.expect("the bundle");
        (bundle.roots.len() == 2).then_some(bundle.roots)
    })
    .await;
    let new_root = CertificateDer::from(
        roots
            .into_iter()
            .find(|r| r.as_slice() != first_roots[0].as_ref())
            .expect("a new root"),
    );
    eventually("the publish wait is over", || async {
        ca_command(&ca.dir, &["activate"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let only_new = CaClient::new(ca.url(), std::slice::from_ref(&new_root)).expect("a client");
    let (under_new_root, _) = eventually("the CA serves and signs under the new root", || async {
        // A client that trusts only the new root reaches the CA once its server
        // certificate comes from the new intermediate.
        let token = ca.token(FRONTEND, &[]);
        let issued = within(only_new.certify(&token, plain_csr(CsrKeyKind::EcdsaP256).der, None))
            .await
            .ok()?;
        let id = authority_id(&issued.cert_chain[1]);
        (id != second_intermediate).then_some((issued, id))
    })
    .await;
    verify_chain(
        &chain_of(&under_new_root),
        std::slice::from_ref(&new_root),
        Usage::ClientAuth,
    )
    .expect("the new certificate chains to the new root");
    // Still trusted: a certificate under the old root renews.
    within(under_first.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("a certificate under the old root renews until the root is revoked");

    // 3. Revocation of the old root: refused while certificates under it may live.
    let old_root = authority_id(&first_roots[0]);
    let refused = ca_command(&ca.dir, &["revoke", "--authority", &old_root]);
    let words = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && words.contains("may live until"),
        "{}",
        describe_output(&refused)
    );
    ca_command_ok(&ca.dir, &["revoke", "--authority", &old_root, "--force"]);
    eventually("the CA serves the new root alone", || async {
        let bundle = within(client.trust_bundle()).await.expect("the bundle");
        (bundle.roots.len() == 1 && bundle.roots[0] == new_root.as_ref()).then_some(())
    })
    .await;
    // A certificate under the revoked root no longer gets through the handshake.
    let renewal = within(under_first.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert!(
        renewal.is_err(),
        "a certificate under a revoked root renewed"
    );

    // 4. A stale copy of the directory never takes over.
    let manifest = ca.dir.join("authorities.json");
    let mut stale: Value =
        serde_json::from_slice(&fs::read(&manifest).expect("manifest")).expect("JSON");
    stale["generation"] = Value::from(1);
    fs::write(&manifest, serde_json::to_vec_pretty(&stale).expect("JSON")).expect("write");
    wait_for_stderr(&ca, "older than the");
    let (still, _) = issue_with_token(&ca, &client, FRONTEND).await;
    assert_eq!(
        authority_id(&still.cert_chain[1]),
        authority_id(&under_new_root.cert_chain[1]),
        "the CA kept signing with what was in force"
    );

    let audit = ca.audit();
    let events: Vec<&str> = audit.iter().filter_map(|l| l["event"].as_str()).collect();
    for event in [
        "authority_prepared",
        "authority_activated",
        "authority_revoked",
        "authorities_loaded",
        "reload_refused",
    ] {
        assert!(
            events.contains(&event),
            "no {event} in the audit log: {events:?}"
        );
    }
    let revoked = audit
        .iter()
        .find(|l| l["event"] == "authority_revoked")
        .expect("a revocation line");
    assert_eq!(revoked["forced"], true);
    assert_eq!(revoked["authority"], old_root.as_str());
}

// === 16. Metrics and expiry warnings ===

/// The value of the one sample of `family` whose labels include `authority="ID"`, with its
/// label text.
fn authority_sample(scrape: &str, family: &str, id: &str) -> Option<(String, i64)> {
    let mut found = scrape.lines().filter_map(|line| {
        let rest = line.strip_prefix(family)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        labels
            .contains(&format!("authority=\"{id}\""))
            .then(|| (labels.to_owned(), value.parse().ok()))
    });
    let (labels, value) = found.next()?;
    assert!(
        found.next().is_none(),
        "{family} of {id} twice in\n{scrape}"
    );
    Some((
        labels,
        value.unwrap_or_else(|| panic!("not an integer in\n{scrape}")),
    ))
}

/// The value of the one sample named exactly `series` (`name{labels}` or `name`).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// `hush ca authorities --dir DIR --json`.
fn authorities_json(dir: &Path) -> Value {
    let printed = run_hush_ok(
        HUSH,
        &["ca", "authorities", "--dir", path_str(dir), "--json"],
    );
    serde_json::from_str(&printed).expect("`hush ca authorities --json` prints JSON")
}

/// The expiry gauges say what `hush ca authorities` says of every authority: its NotAfter,
/// and the time left as of the scrape, labelled with its ID, kind and state.
#[track_caller]
fn assert_expiry_gauges_match(scrape: &str, listed: &Value) {
    let now = now();
    for authority in listed["authorities"].as_array().expect("authorities") {
        let id = authority["id"].as_str().expect("an ID");
        let state = authority["state"].as_str().expect("a state");
        let expiry = authority_sample(scrape, "hush_ca_authority_expiry_timestamp_seconds", id);
        if state == "revoked" {
            assert!(expiry.is_none(), "revoked {id} still exported:\n{scrape}");
            continue;
        }
        let (labels, not_after) = expiry.unwrap_or_else(|| panic!("no gauge of {id} in\n{scrape}"));
        assert_eq!(Some(not_after), authority["not_after"].as_i64(), "{id}");
        for label in [
            format!(
                "kind=\"{}\"",
                authority["kind"].as_str().unwrap_or_default()
            ),
            format!("state=\"{state}\""),
        ] {
            assert!(labels.contains(&label), "{label} not in {labels}");
        }
        let (_, left) = authority_sample(scrape, "hush_ca_authority_expires_in_seconds", id)
            .unwrap_or_else(|| panic!("no time left of {id} in\n{scrape}"));
        assert!(
            (not_after - now - SLACK..=not_after - now + SLACK).contains(&left),
            "{id}: {left} s left, but NotAfter is {not_after} and now is {now}"
        );
    }
}

#[tokio::test]
async fn metrics_export_the_authorities_expiry_reloads_and_issuances() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let server = CaProcess::start(
        HUSH,
        &dir,
        &["--metrics-listen", "127.0.0.1:0", "--reload-interval", "1s"],
    );
    let ca = Ca::around(temp, dir, server);
    let scrape = ca.server.scrape();
    let listed = authorities_json(&ca.dir);
    // A root, an intermediate and a JWT authority.
    assert_eq!(listed["authorities"].as_array().map(Vec::len), Some(3));
    assert_expiry_gauges_match(&scrape, &listed);
    assert_eq!(
        sample(&scrape, "hush_ca_authorities_generation"),
        listed["generation"].as_f64()
    );
    let issued = "hush_ca_certificates_issued_total{api=\"hush.ca.v1\"}";
    let refused = "hush_ca_requests_refused_total{api=\"hush.ca.v1\",code=\"Unauthenticated\"}";
    assert_eq!(sample(&scrape, issued), Some(0.0), "{scrape}");
    assert_eq!(sample(&scrape, refused), None, "{scrape}");

    // One issuance and one refusal, each counted once.
    let client = ca.client();
    issue_with_token(&ca, &client, FRONTEND).await;
    let refusal = within(client.certify(
        "hushjt.0123456789abcdef.c2VjcmV0",
        plain_csr(CsrKeyKind::EcdsaP256).der,
        None,
    ))
    .await;
    assert_refused(refusal, Code::Unauthenticated, &[]);
    let scrape = ca.server.scrape();
    assert_eq!(sample(&scrape, issued), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, refused), Some(1.0), "{scrape}");
    assert_promtool_accepts(&scrape, ca.temp.path());

    // A rotation under the running CA: the new intermediate is exported as active, the one it
    // replaced as old, and the reload is counted.
    ca_command_ok(&ca.dir, &["rotate", "intermediate"]);
    ca_command_ok(&ca.dir, &["activate"]);
    let listed = authorities_json(&ca.dir);
    let scrape = eventually("the CA reloads the rotated authorities", || async {
        let scrape = ca.server.scrape();
        (sample(&scrape, "hush_ca_authorities_generation") == listed["generation"].as_f64())
            .then_some(scrape)
    })
    .await;
    assert_expiry_gauges_match(&scrape, &listed);
    assert!(scrape.contains("state=\"old\""), "{scrape}");
    // One reload, or two when a poll fell between staging and activating.
    let loaded = sample(&scrape, "hush_ca_reloads_total{result=\"loaded\"}");
    assert!(matches!(loaded, Some(1.0 | 2.0)), "{loaded:?} in\n{scrape}");
    assert_eq!(
        sample(&scrape, "hush_ca_reloads_total{result=\"refused\"}"),
        Some(0.0),
        "{scrape}"
    );

    // The port serves the metrics and nothing else.
    let (status, body) = hush_test_support::http_request(ca.server.metrics(), "GET", "/certs");
    assert_eq!(status, 404, "{body}");
}

/// An intermediate with 10 days left: the running CA warns once it has reloaded it, a restarted
/// CA at start, and `hush ca authorities` says the same.
#[test]
fn the_ca_warns_of_an_intermediate_in_its_last_month_after_a_reload_and_at_start() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let mut first = CaProcess::start(HUSH, &dir, &["--reload-interval", "1s"]);
    ca_command_ok(&dir, &["rotate", "intermediate", "--lifetime", "10d"]);
    ca_command_ok(&dir, &["activate"]);
    let listed = authorities_json(&dir);
    let intermediate = listed["authorities"]
        .as_array()
        .expect("authorities")
        .iter()
        .find(|a| a["kind"] == "intermediate" && a["state"] == "active")
        .expect("an active intermediate");
    let id = intermediate["id"].as_str().expect("an ID");
    let advice = "run `hush ca rotate intermediate`";
    // `hush ca authorities` says so, from the same rule.
    let note = intermediate["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("expires in ") && note.contains(advice),
        "{note}"
    );
    let table = run_hush_ok(HUSH, &["ca", "authorities", "--dir", path_str(&dir)]);
    assert!(table.contains(advice), "{table}");

    let warning = format!("the active intermediate {} expires in ", &id[..8]);
    let assert_warned = |line: &str| {
        assert!(
            line.contains("WARN") && line.contains(&format!(" d: {advice}")),
            "{line}"
        );
    };
    // The running CA, once it has put the new intermediate in force (it did not exist when
    // the CA started).
    assert_warned(&wait_for_log(&first, &warning));
    first.terminate();
    // A CA started on it.
    let second = CaProcess::start(HUSH, &dir, &[]);
    assert_warned(&wait_for_log(&second, &warning));
    // The root has years left: nothing to say about it.
    assert!(
        !second.stderr().contains("the active root"),
        "{}",
        second.stderr()
    );
}

#[test]
fn ca_serve_names_a_metrics_address_it_cannot_listen_on() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let mut process = hush_test_support::HushProcess::spawn(
        HUSH,
        &[
            "ca",
            "serve",
            "--dir",
            path_str(&dir),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &address,
        ],
    );
    let status = process
        .wait_exit(Duration::from_secs(30))
        .expect("the CA exits when its metrics port is taken");
    assert!(!status.success());
    let stderr = process.stderr();
    assert!(
        stderr.contains(&format!("cannot listen on {address} (--metrics-listen)")),
        "{stderr}"
    );
}
// === 17. Identity revocation and the attestation record ===

#[tokio::test]
async fn a_revoked_serial_cuts_its_renewals_and_the_deny_list_says_so() {
    let ca = Ca::start(&["--reload-interval", "1s"]);
    let client = ca.client();
    let (first, first_key) = issue_with_token(&ca, &client, FRONTEND).await;
    let token_record = hush_identity::AttestationRecord::of_certificate(&first.cert_chain[0])
        .expect("a readable record")
        .expect("every certificate carries one");
    assert_eq!(
        hush_identity::serial_hex(&token_record.origin_serial),
        first.serial
    );
    assert_eq!(
        token_record.method,
        hush_identity::AttestationMethod::JoinToken
    );

    // A renewal copies the record: the same origin, the same attestation time.
    let renewing = CaClient::with_identity(
        ca.url(),
        ca.roots(),
        identity_of(chain_of(&first), first_key),
    )
    .expect("a client with an identity");
    let csr = plain_csr(CsrKeyKind::EcdsaP256);
    let second = within(renewing.renew(csr.der.clone(), None))
        .await
        .expect("renewed");
    let renewed_record = hush_identity::AttestationRecord::of_certificate(&second.cert_chain[0])
        .expect("a readable record")
        .expect("a record");
    assert_eq!(renewed_record, token_record);
    let issued = ca.audit();
    let last = issued.last().expect("audit lines");
    assert_eq!(last["renewed_from"], first.serial.as_str());
    assert_eq!(last["origin_serial"], first.serial.as_str());
    assert!(last["attested_at"].is_string(), "{last}");

    // Revoking the first serial cuts the second, renewed from it.
    let words = ca_command_ok(
        &ca.dir,
        &[
            "revoke-identity",
            "--serial",
            &first.serial,
            "--reason",
            "key leaked",
        ],
    );
    assert!(
        words.contains("and every certificate renewed from it"),
        "{words}"
    );
    let under_second = CaClient::with_identity(
        ca.url(),
        ca.roots(),
        identity_of(
            chain_of(&second),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(csr.key.serialize_der())),
        ),
    )
    .expect("a client with an identity");
    let refusal = eventually("the CA refuses the renewal", || async {
        within(under_second.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None))
            .await
            .err()
    })
    .await;
    assert_eq!(refusal.code(), Code::PermissionDenied, "{refusal:?}");
    assert!(
        refusal.message().starts_with(&format!(
            "certificate {} was renewed from certificate {}, which is revoked (hush ca \
             revoke-identity on ",
            second.serial, first.serial
        )) && refusal.message().contains("key leaked")
            && refusal
                .message()
                .contains("present a token for a new certificate"),
        "{}",
        refusal.message()
    );
    // A token still works for the identity: only that line is revoked.
    issue_with_token(&ca, &client, FRONTEND).await;

    // The deny-list comes with the bundle, with its own generation.
    let bundle = within(client.trust_bundle()).await.expect("the bundle");
    let deny = bundle.deny.expect("a deny-list");
    assert_eq!(deny.serials, vec![first.serial.clone()]);
    assert_eq!(bundle.deny_generation, 1);

    // Listed, with why.
    let listed = ca_command(&ca.dir, &["revocations", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(listed["generation"], 1);
    assert_eq!(listed["entries"][0]["kind"], "serial");
    assert_eq!(listed["entries"][0]["target"], first.serial.as_str());
    assert_eq!(listed["entries"][0]["reason"], "key leaked");
    let table = String::from_utf8_lossy(&ca_command(&ca.dir, &["revocations"]).stdout).into_owned();
    assert!(
        table.contains(&first.serial) && table.contains("key leaked"),
        "{table}"
    );

    // Twice is refused; lifted, the line renews again.
    let twice = ca_command(&ca.dir, &["revoke-identity", "--serial", &first.serial]);
    assert!(
        !twice.status.success()
            && String::from_utf8_lossy(&twice.stderr).contains("is already revoked"),
        "{}",
        describe_output(&twice)
    );
    ca_command_ok(
        &ca.dir,
        &["revoke-identity", "--serial", &first.serial, "--lift"],
    );
    eventually("the lifted line renews", || async {
        within(under_second.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None))
            .await
            .ok()
    })
    .await;

    let audit = ca.audit();
    let revoked = audit
        .iter()
        .find(|l| l["event"] == "identity_revoked")
        .expect("a revocation line");
    assert_eq!(revoked["serial"], first.serial.as_str());
    assert_eq!(revoked["api"], "hush.ca.admin");
    assert!(revoked["actor"].as_str().is_some_and(|a| a.contains('@')));
    assert!(
        audit
            .iter()
            .any(|l| l["event"] == "identity_revocation_lifted"),
        "no lift in the audit log"
    );
    assert!(
        audit.iter().any(|l| l["event"] == "refused"
            && l["renewed_from"] == second.serial.as_str()
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("which is revoked"))),
        "no refusal naming the revoked line"
    );
}

#[test]
fn revoke_identity_refuses_what_cannot_be_revoked() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &[]);
    for (args, words) in [
        (
            vec![
                "revoke-identity",
                "--spiffe-id",
                "spiffe://elsewhere.test/a",
            ],
            "not in this CA's trust domain e2e.test",
        ),
        (
            vec!["revoke-identity", "--serial", "47g0"],
            "is not a certificate serial number",
        ),
        (
            vec![
                "revoke-identity",
                "--join-token",
                "hushjt.0123456789abcdef.secret",
            ],
            "is not a join token id",
        ),
        (
            vec!["revoke-identity", "--spiffe-id", FRONTEND, "--lift"],
            "is not revoked, so there is nothing to lift",
        ),
        (vec!["revoke-identity"], "--spiffe-id"),
        (
            vec![
                "revoke-identity",
                "--spiffe-id",
                FRONTEND,
                "--serial",
                "47b0",
            ],
            "cannot be used with",
        ),
    ] {
        let out = ca_command(&dir, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(words),
            "{args:?}: {}",
            describe_output(&out)
        );
    }
    // A join token: revoked, and its record gone.
    let token = mint_token(HUSH, &dir, FRONTEND, &[]);
    let id = token.split('.').nth(1).expect("an id");
    let words = ca_command_ok(&dir, &["revoke-identity", "--join-token", id]);
    assert!(words.contains("its record was deleted"), "{words}");
    let listed = String::from_utf8_lossy(&ca_command(&dir, &["token", "list"]).stdout).into_owned();
    assert!(!listed.contains(id), "{listed}");
}

/// An intermediate revoked while its root stays trusted: the CA names it in the deny-list it
/// sends with the bundle (so sidecars refuse chains through it) and refuses renewals under it.
#[tokio::test]
async fn a_revoked_intermediate_is_named_in_the_deny_list_and_cannot_renew() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &["--publish-wait", "1s"]);
    let server = CaProcess::start(HUSH, &dir, &["--reload-interval", "1s"]);
    let ca = Ca::around(temp, dir, server);
    let client = ca.client();
    let (first, key) = issue_with_token(&ca, &client, FRONTEND).await;
    let old = authority_id(&first.cert_chain[1]);
    let under_old =
        CaClient::with_identity(ca.url(), ca.roots(), identity_of(chain_of(&first), key))
            .expect("a client with an identity");

    ca_command_ok(&ca.dir, &["rotate", "intermediate"]);
    ca_command_ok(&ca.dir, &["activate"]);
    ca_command_ok(&ca.dir, &["revoke", "--authority", &old, "--force"]);
    let bundle = eventually("the deny-list names the revoked intermediate", || async {
        let bundle = within(client.trust_bundle()).await.expect("the bundle");
        let named = bundle
            .deny
            .as_ref()
            .is_some_and(|d| d.authorities.contains(&old));
        named.then_some(bundle)
    })
    .await;
    assert_eq!(bundle.roots.len(), 1, "the root stays trusted");
    let refused = within(under_old.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None)).await;
    assert_refused(refused, Code::Unauthenticated, &["which this CA revoked"]);
}

// === JWT-SVIDs ===

/// A client that presents a fresh certificate for `spiffe_id`, as a sidecar's mTLS channel
/// does.
async fn mtls_client(ca: &Ca, spiffe_id: &str) -> (CaClient, CertifyResponse) {
    let (issued, key) = issue_with_token(ca, &ca.client(), spiffe_id).await;
    let client = CaClient::with_identity(ca.url(), ca.roots(), identity_of(chain_of(&issued), key))
        .expect("a client with an identity");
    (client, issued)
}

/// The JWT keys GetTrustBundle sends.
async fn jwt_keys_of(ca: &Ca) -> hush_identity::JwtKeys {
    let bundle = within(ca.client().trust_bundle())
        .await
        .expect("the bundle");
    hush_ca_client::trust_bundle_jwt_keys(&bundle)
        .expect("readable JWT keys")
        .expect("JWT keys in the bundle")
}

/// Validates `token` for `audience` against the mesh's JWT keys `keys`, now.
fn validate_jwt(
    token: &str,
    audience: &str,
    keys: &hush_identity::JwtKeys,
) -> Result<hush_identity::ValidatedJwtSvid, hush_identity::JwtSvidError> {
    let td = hush_identity::TrustDomain::new(TD).expect("the test trust domain");
    hush_identity::validate_jwt_svid(token, audience, |d| (*d == td).then_some(keys), now())
}

fn jwt_authorities(dir: &Path) -> Vec<Value> {
    let listed = ca_command(dir, &["authorities", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    listed["authorities"]
        .as_array()
        .expect("authorities")
        .iter()
        .filter(|a| a["kind"] == "jwt")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_jwt_svid_is_minted_over_mutual_tls_and_validates_against_the_bundle() {
    let ca = Ca::start(&["--jwt-max-ttl", "10m"]);
    let (client, _) = mtls_client(&ca, FRONTEND).await;
    let minted = within(client.mint_jwt_svid(vec!["db".into(), "cache".into()], None))
        .await
        .expect("minted");
    assert_eq!(minted.spiffe_id, FRONTEND);
    assert_eq!(
        minted.expires_at_unix - minted.issued_at_unix,
        300,
        "5 minutes by default"
    );
    assert!((minted.issued_at_unix - now()).abs() < SLACK);

    let keys = jwt_keys_of(&ca).await;
    assert_eq!(keys.key_ids().collect::<Vec<_>>(), [minted.key_id.as_str()]);
    let valid = validate_jwt(&minted.token, "cache", &keys).expect("a valid JWT-SVID");
    assert_eq!(valid.spiffe_id.as_str(), FRONTEND);
    assert_eq!(valid.audience, ["db", "cache"]);
    assert_eq!(valid.expires_at_unix, minted.expires_at_unix);
    assert!(matches!(
        validate_jwt(&minted.token, "payments", &keys),
        Err(hush_identity::JwtSvidError::WrongAudience { .. })
    ));

    // A longer lifetime is shortened to --jwt-max-ttl.
    let long = within(client.mint_jwt_svid(vec!["db".into()], Some(Duration::from_secs(86_400))))
        .await
        .expect("minted");
    assert_eq!(long.expires_at_unix - long.issued_at_unix, 600);

    // Audiences are bounded.
    for (audiences, words) in [
        (vec![], "at least one audience"),
        (vec!["a\nb".to_owned()], "control character"),
        ((0..17).map(|i| format!("a{i}")).collect(), "at most 16"),
        (vec!["x".repeat(257)], "1 to 256 bytes"),
    ] {
        assert_refused(
            within(client.mint_jwt_svid(audiences, None)).await,
            Code::InvalidArgument,
            &[words],
        );
    }

    // Audited like a certificate, never with the token.
    let audit = ca.audit();
    let issued: Vec<&Value> = audit
        .iter()
        .filter(|l| l["event"] == "jwt_issued")
        .collect();
    assert_eq!(issued.len(), 2, "{audit:?}");
    assert_eq!(issued[0]["spiffe_id"], FRONTEND);
    assert_eq!(issued[0]["attestation"], "x509_svid");
    assert_eq!(issued[0]["audience"], serde_json::json!(["db", "cache"]));
    assert_eq!(issued[0]["authority"], minted.key_id.as_str());
    let refused = audit
        .iter()
        .filter(|l| l["event"] == "refused" && l["api"] == "hush.ca.v1.MintJwtSvid")
        .count();
    assert_eq!(refused, 4);
    let log = fs::read_to_string(ca.dir.join("audit.log")).expect("the audit log");
    assert!(!log.contains(&minted.token), "the token is never written");
}

#[tokio::test]
async fn a_jwt_svid_is_refused_without_a_client_certificate_and_to_a_revoked_identity() {
    let ca = Ca::start(&["--reload-interval", "1s"]);
    // No certificate: no identity to sign for, and a token is not read.
    assert_refused(
        within(ca.client().mint_jwt_svid(vec!["db".into()], None)).await,
        Code::Unauthenticated,
        &["this connection presented none"],
    );
    let token = ca.token(FRONTEND, &[]);
    let mut raw = ca.raw_client();
    let request = with_bearer(
        hush_ca::proto::MintJwtSvidRequest {
            audience: vec!["db".into()],
            ttl_seconds: 0,
        },
        &token,
    )
    .expect("a request");
    assert_refused(
        within(raw.mint_jwt_svid(request)).await,
        Code::Unauthenticated,
        &["client certificate"],
    );
    // A certificate from another CA does not even finish the handshake's trust.
    let foreign = TestCa::new(TD).leaf(FRONTEND);
    let stranger = CaClient::with_identity(
        ca.url(),
        ca.roots(),
        identity_of(foreign.chain, foreign.key),
    )
    .expect("a client");
    assert!(
        within(stranger.mint_jwt_svid(vec!["db".into()], None))
            .await
            .is_err()
    );

    // hush's own components (the bundle endpoint's reserved ID) get no JWT-SVID, whatever
    // certificate they present.
    let reserved = format!("spiffe://{TD}/hush/bundle-endpoint");
    let component = hush_test_support::leaf_from_ca_dir(&ca.dir, Some(&reserved));
    let component = CaClient::with_identity(
        ca.url(),
        ca.roots(),
        identity_of(component.chain, component.key),
    )
    .expect("a client");
    assert_refused(
        within(component.mint_jwt_svid(vec!["db".into()], None)).await,
        Code::PermissionDenied,
        &["reserved for hush's own components"],
    );

    let (client, _) = mtls_client(&ca, BACKEND).await;
    within(client.mint_jwt_svid(vec!["db".into()], None))
        .await
        .expect("minted before the revocation");
    ca_command_ok(&ca.dir, &["revoke-identity", "--spiffe-id", BACKEND]);
    let refusal = eventually("the CA refuses the revoked identity", || async {
        within(client.mint_jwt_svid(vec!["db".into()], None))
            .await
            .err()
    })
    .await;
    assert_eq!(refusal.code(), Code::PermissionDenied, "{refusal:?}");
    assert!(refusal.message().contains(BACKEND), "{}", refusal.message());
}

#[tokio::test]
async fn jwt_authorities_rotate_after_the_publish_wait_and_a_revoked_key_leaves_the_bundle() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &["--publish-wait", "1h"]);
    let server = CaProcess::start(HUSH, &dir, &["--reload-interval", "1s"]);
    let ca = Ca::around(temp, dir, server);
    let first = jwt_authorities(&ca.dir);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["state"], "active");
    let first = first[0]["id"].as_str().expect("an ID").to_owned();

    let (client, _) = mtls_client(&ca, FRONTEND).await;
    let before = within(client.mint_jwt_svid(vec!["db".into()], None))
        .await
        .expect("minted");
    assert_eq!(before.key_id, first);

    // Prepared: published at once, signing nothing yet.
    let words = ca_command_ok(&ca.dir, &["rotate", "jwt"]);
    let second = jwt_authorities(&ca.dir)
        .into_iter()
        .find(|a| a["state"] == "prepared")
        .expect("a prepared JWT authority");
    let second = second["id"].as_str().expect("an ID").to_owned();
    assert!(
        words.contains(&second) && words.contains("hush ca activate"),
        "{words}"
    );
    eventually("the new key is published", || async {
        (jwt_keys_of(&ca).await.len() == 2).then_some(())
    })
    .await;

    // The publish wait holds it back; --force skips it.
    let refused = ca_command(&ca.dir, &["activate", &second[..8]]);
    assert!(!refused.status.success());
    let text = describe_output(&refused);
    assert!(
        text.contains(&format!("jwt {second} was published at")) && text.contains("--force"),
        "{text}"
    );
    ca_command_ok(&ca.dir, &["activate", &second[..8], "--force"]);
    let after = eventually("the new key signs", || async {
        let minted = within(client.mint_jwt_svid(vec!["db".into()], None))
            .await
            .expect("minted");
        (minted.key_id == second).then_some(minted)
    })
    .await;
    // Both keys are published: the old token still validates.
    let keys = jwt_keys_of(&ca).await;
    validate_jwt(&before.token, "db", &keys).expect("the old key is still published");
    validate_jwt(&after.token, "db", &keys).expect("the new key is published");

    // Revoked, the old key leaves the bundle, and what it signed is refused.
    let refused = ca_command(&ca.dir, &["revoke", "--authority", &first]);
    assert!(
        describe_output(&refused).contains("--force"),
        "{}",
        describe_output(&refused)
    );
    ca_command_ok(&ca.dir, &["revoke", "--authority", &first, "--force"]);
    let keys = eventually("the revoked key leaves the bundle", || async {
        let keys = jwt_keys_of(&ca).await;
        (keys.len() == 1).then_some(keys)
    })
    .await;
    assert_eq!(keys.key_ids().collect::<Vec<_>>(), [second.as_str()]);
    assert!(matches!(
        validate_jwt(&before.token, "db", &keys),
        Err(hush_identity::JwtSvidError::UnknownKeyId { .. })
    ));
    assert!(!ca.dir.join(format!("jwt-{first}.key")).exists());
}

#[tokio::test]
async fn a_ca_without_a_jwt_authority_says_which_commands_make_one() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &["--publish-wait", "1h"]);
    // What an older hush wrote: no JWT authority.
    let path = dir.join("authorities.json");
    let mut manifest: Value =
        serde_json::from_slice(&fs::read(&path).expect("the manifest")).expect("JSON");
    let jwt = manifest["authorities"]
        .as_array()
        .expect("authorities")
        .iter()
        .find(|a| a["kind"] == "jwt")
        .cloned()
        .expect("a JWT authority");
    manifest["authorities"]
        .as_array_mut()
        .expect("authorities")
        .retain(|a| a["kind"] != "jwt");
    fs::write(&path, serde_json::to_vec_pretty(&manifest).expect("JSON")).expect("written");
    for name in ["cert", "key"] {
        fs::remove_file(dir.join(jwt[name].as_str().expect("a file"))).expect("removed");
    }
    let server = CaProcess::start(HUSH, &dir, &["--reload-interval", "1s"]);
    let ca = Ca::around(temp, dir, server);
    let (client, _) = mtls_client(&ca, FRONTEND).await;
    assert_refused(
        within(client.mint_jwt_svid(vec!["db".into()], None)).await,
        Code::FailedPrecondition,
        &["hush ca rotate jwt", "hush ca activate"],
    );
    assert!(jwt_keys_of(&ca).await.is_empty());
    // The first JWT authority of such a CA signs at once: no token of it exists yet.
    ca_command_ok(&ca.dir, &["rotate", "jwt"]);
    ca_command_ok(&ca.dir, &["activate"]);
    let minted = eventually("the CA signs JWT-SVIDs", || async {
        within(client.mint_jwt_svid(vec!["db".into()], None))
            .await
            .ok()
    })
    .await;
    validate_jwt(&minted.token, "db", &jwt_keys_of(&ca).await).expect("valid");
}

#[test]
fn ca_serve_refuses_a_jwt_max_ttl_beyond_the_manifests_max_ttl() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("ca");
    init_ca(&dir, &["--max-ttl", "1h"]);
    let mut process = hush_test_support::HushProcess::spawn(
        HUSH,
        &[
            "ca",
            "serve",
            "--dir",
            path_str(&dir),
            "--listen",
            "127.0.0.1:0",
            "--max-ttl",
            "1h",
            "--jwt-max-ttl",
            "2h",
        ],
    );
    let status = process
        .wait_exit(Duration::from_secs(30))
        .expect("the CA refuses to start");
    assert!(!status.success());
    let stderr = process.stderr();
    assert!(
        stderr.contains("--jwt-max-ttl 2h is longer than this CA's max_ttl_seconds (3600 s"),
        "{stderr}"
    );
}
