//! Workload identity for hush: SPIFFE IDs, trust domains, the X.509-SVID rules and trust
//! bundles.
//!
//! Everything here is pure: no files, no network, no clock. A [`SpiffeId`] or
//! [`TrustDomain`] can only exist if it follows the SPIFFE-ID standard, so code that holds one
//! never re-checks it. [`check_leaf_svid`] and [`check_signing_cert`] judge what a single
//! certificate says against the X.509-SVID rules (chain and signature checks belong to the
//! TLS verifier); [`TrustBundle`] holds the roots of one trust domain; and
//! [`CertificateSummary`] turns a certificate into plain fields for people to read. An
//! [`AttestationRecord`], which the CA writes into every workload certificate, says when and
//! how its identity was last attested, and a [`DenyList`] says which certificates the CA has
//! revoked (by serial, by SPIFFE ID up to a time, or by join token). [`JwtKeys`] holds a trust
//! domain's JWT-SVID keys (a JWK Set), [`validate_jwt_svid`] checks a JWT-SVID by the SPIFFE
//! rules against them, and [`sign_jwt_svid`] is the CA's side. The CA, the proxy and the CLI
//! all build on these types.
//!
//! ```
//! use hush_identity::{SpiffeId, TrustDomain};
//!
//! let td: TrustDomain = "cluster.local".parse()?;
//! let id = SpiffeId::from_segments(&td, &["ns", "shop", "sa", "frontend"])?;
//! assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/frontend");
//! assert!(id.is_member_of(&td));
//! assert!("spiffe://Cluster.local/x".parse::<SpiffeId>().is_err());
//! # Ok::<(), hush_identity::SpiffeIdError>(())
//! ```

mod attestation;
mod authority_id;
mod bundle;
mod deny;
mod jwt;
mod spiffe_id;
mod summary;
mod svid;
#[cfg(test)]
mod test_util;

pub use self::{
    attestation::{
        ATTESTATION_OID_ARCS, ATTESTATION_OID_ENCODED, AttestationError, AttestationMethod,
        AttestationRecord,
    },
    authority_id::{authority_id, authority_id_of_public_key},
    bundle::{BundleError, TrustBundle, parse_pem_certificates},
    deny::{Denial, DeniedId, DenyList, DenyListError, normalize_serial_hex},
    jwt::{
        JWT_SVID_ALGORITHMS, JWT_SVID_LEEWAY_SECS, JwtBundleError, JwtKey, JwtKeyType, JwtKeys,
        JwtSignError, JwtSigningKey, JwtSvidError, MAX_JWKS_LEN, MAX_JWT_KEYS, MAX_JWT_SVID_LEN,
        ValidatedJwtSvid, sign_jwt_svid, validate_jwt_svid,
    },
    spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain},
    summary::{CertificateSummary, rsa_modulus_bits, serial_hex},
    svid::{SvidError, check_leaf_svid, check_signing_cert},
};
