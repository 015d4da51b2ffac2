//! The hush control plane: a small certificate authority for SPIFFE workload identities.
//!
//! A caller proves who it is with a bearer token — a hush join token, or a Kubernetes
//! service-account token checked by TokenReview — and sends a CSR. The CA checks the CSR's
//! signature (proof of possession), ignores every name it asks for, and signs an X.509-SVID for
//! the attested SPIFFE ID with its intermediate. Every issuance and refusal is appended to an
//! audit log before the answer leaves.
//!
//! * [`CaDir`] — `hush ca init`, `rotate`, `activate`, `taint`, `revoke`: the authorities'
//!   files, and [`Manifest`], the pure rules of their lives.
//! * [`Authority`] — the signing core (no I/O).
//! * [`CaKey`] — the key the CA signs with: a key file, or a key in a PKCS#11 token
//!   ([`Pkcs11Uri`]).
//! * [`JoinTokenStore`], [`Attestor`] — who is calling.
//! * [`Lineage`] — the attestation record every certificate carries, and when a renewal must
//!   attest again (`--reattest-after`).
//! * [`Revocations`] — `hush ca revoke-identity`: what the CA refuses to issue and renew, and
//!   the deny-list it pushes to sidecars with the bundle.
//! * [`CaService`], [`serve`] — the gRPC services (`hush.ca.v1` and Istio's) over TLS.
//! * [`CaMetrics`], [`serve_metrics`] — Prometheus metrics; [`rotations_due`] — which active
//!   authority is due for rotation, for the CA's warnings and the CLI's.
//!
//! The client of this API is not here but in `hush-ca-client`, so that a sidecar links the
//! client without the CA.

mod attest;
mod audit;
mod authorities;
mod authority;
mod csr;
mod expiry;
mod jwt;
mod lineage;
mod live;
mod metrics;
mod random;
mod revocations;
mod server;
mod service;
mod signing_key;
mod store;
mod tokens;

pub use self::attest::{
    AttestError, AttestationKind, Attested, Attestor, ServiceAccountIdentity, TokenReviewClient,
    TokenReviewConfig, TokenReviewError,
};
pub use self::audit::{AuditError, AuditEvent, AuditLog, AuditRecord};
pub use self::authorities::{
    Activation, AuthoritiesError, AuthorityEntry, AuthorityId, DEFAULT_MAX_TTL_SECONDS,
    DEFAULT_PUBLISH_WAIT_SECONDS, JwtActivation, Kind as AuthorityKind, MANIFEST_VERSION,
    MIN_ID_PREFIX, Manifest, State as AuthorityState,
};
pub use self::authority::{Authority, AuthorityError, CaMaterial, IssuancePolicy, IssuedSvid};
pub use self::csr::{CsrError, KeyKind, MAX_CSR_BYTES, MIN_RSA_BITS, VerifiedCsr};
pub use self::expiry::{
    INTERMEDIATE_ROTATION_WARNING, NextStep, ROOT_ROTATION_WARNING, ROTATION_REMINDER_INTERVAL,
    RotationDue, is_rotation_due, keep_warning_of_rotations_due, rotation_due, rotation_warning,
    rotations_due, warn_of_rotations_due,
};
pub use self::jwt::{
    DEFAULT_JWT_MAX_TTL, DEFAULT_JWT_TTL, JwtMaterial, JwtMintError, JwtSigner, MAX_AUDIENCE_LEN,
    MAX_AUDIENCES, MintedJwt, check_audiences,
};
pub use self::lineage::{DEFAULT_REATTEST_AFTER, Lineage};
pub use self::live::{AuthoritySet, Reload, ReloadError, follow_directory};
pub use self::metrics::{CaMetrics, serve_metrics};
pub use self::revocations::{
    REVOCATIONS_VERSION, RevocationError, RevocationTarget, Revocations, RevokedId, RevokedSerial,
    RevokedToken, retention as revocation_retention,
};
pub use self::server::{PeerInfo, ServeError, ServeOptions, serve};
pub use self::service::{
    CaService, DEFAULT_TAINT_SPREAD, HUSH_API, ISTIO_API, JWT_API, pem_certificate,
};
#[cfg(feature = "pkcs11")]
pub use self::signing_key::Pkcs11Key;
pub use self::signing_key::{CaKey, Pkcs11Error, Pkcs11Uri};
pub use self::store::{
    CaDir, CaKeyAlgorithm, Change, DirLock, InitOptions, InitReport, LoadedAuthorities,
    RevocationChange, RotateOptions, StoreError,
};
pub use self::tokens::{CheckedToken, JoinTokenStore, MintedToken, TOKEN_PREFIX, TokenError};
pub use hush_proto::{hush::ca::v1 as proto, istio::v1::auth as istio_proto};
