//! JWT-SVIDs: the JWT keys of a trust domain, validating a JWT-SVID, and signing one.
//!
//! A JWT-SVID is a compact JWS whose `sub` is a SPIFFE ID (the SPIFFE JWT-SVID standard). The
//! trust domain of that ID says whose keys verify it, so validation takes the keys of every
//! trust domain it may accept through a function: the mesh's own and those it federates with.
//!
//! The JOSE work (decoding the compact serialization for the signature, verifying and making
//! signatures) is done by the `jsonwebtoken` crate. hush reads the header and the claims
//! itself before that, because the crate's errors do not say which rule a token broke, and
//! because the crate reads the system clock for `exp`, where everything in this crate takes
//! the time from its caller.
//!
//! - [`JwtKeys`] is a JWK Set (RFC 7517) of one trust domain's public keys, each with a `kid`.
//! - [`validate_jwt_svid`] checks a token against those keys, an audience and a time.
//! - [`JwtSigningKey`] and [`sign_jwt_svid`] are the CA's side: ES256 with a P-256 key.

mod keys;
mod sign;
mod svid;

pub use self::{
    keys::{JwtBundleError, JwtKey, JwtKeyType, JwtKeys, MAX_JWKS_LEN, MAX_JWT_KEYS},
    sign::{JwtSignError, JwtSigningKey, sign_jwt_svid},
    svid::{
        JWT_SVID_ALGORITHMS, JWT_SVID_LEEWAY_SECS, JwtSvidError, MAX_JWT_SVID_LEN,
        ValidatedJwtSvid, validate_jwt_svid,
    },
};

#[cfg(test)]
pub(crate) mod test_keys {
    //! Keys and hand-made tokens shared by this module's tests.

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData};

    use super::JwtSigningKey;

    /// A fresh P-256 signing key.
    pub(crate) fn p256() -> JwtSigningKey {
        let key = rcgen::KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        JwtSigningKey::from_pkcs8_der(&key.serialize_der()).unwrap()
    }

    /// The SPKI DER and PKCS#8 DER of a fresh P-384 key (which `JwtSigningKey` does not take).
    pub(crate) fn p384_spki_and_pkcs8() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        (key.subject_public_key_info(), key.serialize_der())
    }

    /// base64url without padding, as JOSE writes everything.
    pub(crate) fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `header.claims.` encoded, ready for a signature to be appended.
    pub(crate) fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        format!(
            "{}.{}",
            b64(&serde_json::to_vec(header).unwrap()),
            b64(&serde_json::to_vec(claims).unwrap())
        )
    }
}
