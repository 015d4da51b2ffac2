//! Test helpers for hush: real processes, real certificates, and fixtures named for what they
//! break.
//!
//! Nothing here is used by hush itself; the crate is a dev-dependency only. Of hush's own
//! crates it knows only `hush-config` (the sidecar's configuration, which it writes, and which
//! depends on nothing but `hush-identity`), so `hush-ca`'s unit tests can use it without a
//! dependency cycle: it speaks to hush through its command line, that configuration, and plain
//! X.509, PEM and JSON.
//!
//! * [`HushProcess`], [`CaProcess`], [`ProxyProcess`], [`run_hush`] — run the `hush` binary
//!   (whose path the test passes in, `env!("CARGO_BIN_EXE_hush")`), wait for readiness lines
//!   with a bounded timeout, stop it with SIGTERM, and keep its stderr for failure messages;
//!   [`http_request`] asks an admin port; [`write_sidecar_config`] and [`write_config`] write a
//!   sidecar's configuration from a typed `ProxyConfig`.
//! * [`TestCsr`], [`forged_csr`] and the other CSR fixtures — certificate signing requests made
//!   with rcgen, including ones that ask for names they must not get or whose signature is broken.
//! * [`openssl_available`], [`openssl_csr`] — CSRs made by the `openssl` command, as operators
//!   make them (RSA, ECDSA, Ed25519, weak keys, SHA-1).
//! * [`TestCa`] — an in-memory root and intermediate that issue leaves and TLS server
//!   certificates, and deliberately broken leaves for verifier tests.
//! * [`verify_chain`], [`CertFacts`] — check what a CA handed out, independently of hush's own
//!   parsing (webpki for the chain, x509-parser for the fields).
//! * [`FakeApiServer`] — a Kubernetes API server over HTTPS that answers TokenReviews, and can
//!   hold a TokenReview client to the [`TokenReviewContract`].
//! * [`Pebble`] — Let's Encrypt's test ACME server and its fake DNS, configured and started for
//!   a test (skipped when not installed, unless `HUSH_REQUIRE_PEBBLE=1`).
//! * [`SoftHsmToken`] — a SoftHSM2 token of a test's own, for CA keys in a PKCS#11 token.
//!
//! Helpers panic with a message that says what went wrong: they run inside tests, where a panic
//! is a test failure with a readable reason.

mod ca;
mod csr;
mod fake_k8s;
mod openssl;
mod pebble;
mod process;
mod softhsm;
mod x509;
mod yaml;

pub use self::ca::{
    TestCa, TestLeaf, dns_leaf_from_ca_dir, expired_leaf_from_ca_dir, leaf_from_ca_dir,
    not_yet_valid_leaf_from_ca_dir,
};
pub use self::csr::{
    CsrKeyKind, FORGED_CN, FORGED_DNS_NAME, FORGED_SPIFFE_ID, TestCsr, csr_altered_after_signing,
    csr_claiming_another_key, csr_with_broken_signature, empty_csr, forged_csr, garbage_csr,
    oversized_csr, plain_csr, private_key_pem_instead_of_csr,
};
pub use self::fake_k8s::{
    ApiBody, FakeApiServer, FakeApiServerBuilder, ReviewRequest, ReviewResponder,
    TokenReviewContract, api_response, forbidden, json_response, status_failure, token_review,
    token_review_authenticated, token_review_rejected,
};
pub use self::openssl::{OpensslKey, openssl_available, openssl_csr, openssl_csr_with_digest};
pub use self::pebble::{Pebble, PebbleOptions};
pub use self::process::{
    CaProcess, GatewayProcess, HushProcess, ProxyProcess, READY_TIMEOUT, StartError,
    describe_output, http_request, mint_token, run_hush, run_hush_ok, run_hush_with_env,
    write_config, write_sidecar_config,
};
pub use self::softhsm::SoftHsmToken;
pub use self::x509::{CertFacts, Usage, pem_certificates, verify_chain};
pub use self::yaml::key_paths;

/// Returns early from a test, with a message on stderr, when `openssl` is not installed.
///
/// CI installs openssl, so these tests run there; a developer machine without it still passes.
#[macro_export]
macro_rules! require_openssl {
    () => {
        if !$crate::openssl_available() {
            eprintln!("skipped: openssl not installed");
            return;
        }
    };
}
