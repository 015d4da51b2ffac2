//! JWT-SVIDs are bearer tokens any caller hands a workload: validating one must never panic,
//! and nothing but a token signed by a key of the set may pass. The set here holds public keys
//! whose private halves nobody has, so every acceptance is a bug.
#![no_main]

use hush_identity::{JwtKeys, TrustDomain, validate_jwt_svid};
use libfuzzer_sys::fuzz_target;

/// One P-256 key (its private key was thrown away) and one RSA modulus that is no real key.
const JWKS: &str = r#"{"keys": [
  {"kty": "EC", "kid": "ec", "crv": "P-256",
   "x": "NYC95RY95mZTtJj0ut8wZNjWqalaqcWmzLt7ucN5N_Y",
   "y": "fkOh-Gz09vuytPOpXQD_-etqLD5c0yJxvlx6v--Ki_0"},
  {"kty": "RSA", "kid": "rsa", "e": "AQAB",
   "n": "xcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxQ"}
]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = JwtKeys::from_json(JWKS.as_bytes()).expect("the fixed set is valid");
    let td = TrustDomain::new("example.org").expect("a trust domain");
    let result = validate_jwt_svid(
        token,
        "db",
        |domain| (*domain == td).then_some(&keys),
        1_800_000_000,
    );
    assert!(
        result.is_err(),
        "a token passed without a private key: {token}"
    );
});
