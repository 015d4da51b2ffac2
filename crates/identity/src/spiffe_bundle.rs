//! SPIFFE bundles: the JWK Set a trust domain publishes at its bundle endpoint (SPIFFE Trust
//! Domain and Bundle, section 4), read and written.
//!
//! A bundle's `keys` hold the trust domain's X.509 roots (`use: "x509-svid"`, the certificate
//! in `x5c`) and its JWT-SVID keys (`use: "jwt-svid"`, named by `kid`). Reading follows the
//! standard where it says "ignore" — a key without `use`, of an unknown `use` or of an unknown
//! `kty` is skipped — and refuses everything it does not understand as a whole otherwise: a
//! bundle that reads only half is a trust decision made on half the facts. The roots go
//! through [`TrustBundle`]'s rules, so a root naming another trust domain refuses the bundle,
//! and a bundle with no X.509 root at all is refused (hush trusts peers by their roots; the
//! standard's empty bundle, "every key revoked", is for the operator to act on, by removing
//! the federation).

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};
use x509_parser::public_key::PublicKey;

use crate::bundle::{BundleError, TrustBundle};
use crate::spiffe_id::TrustDomain;

/// The largest bundle read: far above any real one (a root is about 1 KiB), small enough that
/// a hostile endpoint cannot make a reader hold much.
pub const MAX_SPIFFE_BUNDLE_BYTES: usize = 1024 * 1024;

/// The `use` of a JWK holding an X.509 root.
const USE_X509: &str = "x509-svid";
/// The `use` of a JWK holding a JWT-SVID signing key.
const USE_JWT: &str = "jwt-svid";
/// JWK members that only a private key has (RFC 7518 section 6): a bundle never carries them.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// The SPIFFE bundle of one trust domain: its X.509 roots, its JWT-SVID keys, and the
/// publisher's sequence number and refresh hint.
#[derive(Clone, Debug)]
pub struct SpiffeBundle {
    x509: TrustBundle,
    /// A JWK Set (`{"keys":[...]}`) of the `jwt-svid` keys, as they were published.
    jwt_keys_json: Vec<u8>,
    sequence: Option<u64>,
    refresh_hint: Option<Duration>,
}

/// Why a SPIFFE bundle was refused. Keys are numbered from 1, in the order of `keys`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeBundleError {
    /// The bundle is larger than [`MAX_SPIFFE_BUNDLE_BYTES`].
    #[error("the bundle is {size} bytes, more than the {limit} a SPIFFE bundle may be")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bundle is not a JSON object of the expected shape.
    #[error("the bundle is not a SPIFFE bundle (a JSON JWK Set): {reason}")]
    NotJson {
        /// What the JSON reader said.
        reason: String,
    },
    /// `spiffe_sequence` or `spiffe_refresh_hint` is not a non-negative integer.
    #[error("{member} must be a non-negative integer, not {found}")]
    BadNumber {
        /// The member.
        member: &'static str,
        /// What it held.
        found: String,
    },
    /// An element of `keys` is not a JSON object.
    #[error("key {index} is not a JSON object")]
    KeyNotAnObject {
        /// The key's position, from 1.
        index: usize,
    },
    /// An `x509-svid` key's `x5c` does not hold exactly one certificate.
    #[error("key {index} (x509-svid) must hold exactly one certificate in x5c, but holds {count}")]
    X5cCount {
        /// The key's position, from 1.
        index: usize,
        /// How many it holds (0 when `x5c` is missing or not an array).
        count: usize,
    },
    /// An `x509-svid` key's certificate is not standard base64.
    #[error("key {index} (x509-svid): x5c is not base64 ({reason})")]
    X5cBase64 {
        /// The key's position, from 1.
        index: usize,
        /// What the decoder said.
        reason: String,
    },
    /// An `x509-svid` key's certificate cannot be a root of this trust domain.
    #[error("key {index} (x509-svid): {error}")]
    BadRoot {
        /// The key's position, from 1.
        index: usize,
        /// Why the trust bundle rules refuse it.
        error: BundleError,
    },
    /// An `x509-svid` key's public key members say something other than its certificate.
    #[error("key {index} (x509-svid): its {member:?} does not match the certificate in x5c")]
    KeyMismatch {
        /// The key's position, from 1.
        index: usize,
        /// The first member that differs.
        member: String,
    },
    /// A `jwt-svid` key has no `kid` (the JWT-SVID standard requires one).
    #[error("key {index} (jwt-svid) has no kid")]
    MissingKid {
        /// The key's position, from 1.
        index: usize,
    },
    /// Two `jwt-svid` keys have the same `kid`.
    #[error("key {index} (jwt-svid) has kid {kid:?}, which an earlier key already has")]
    DuplicateKid {
        /// The key's position, from 1.
        index: usize,
        /// The repeated key ID.
        kid: String,
    },
    /// A key carries private key material.
    #[error(
        "key {index} carries private key material ({member:?}); a bundle holds public keys only"
    )]
    PrivateKey {
        /// The key's position, from 1.
        index: usize,
        /// The private member found.
        member: String,
    },
    /// No `x509-svid` key survived: the bundle has no X.509 root.
    #[error("the bundle has no X.509 root (no key with use \"x509-svid\")")]
    NoX509Roots,
}

// === impl SpiffeBundle ===

impl SpiffeBundle {
    /// A bundle of `roots` and the JWT keys of `jwt_keys_json` (a JWK Set, as
    /// `GetTrustBundleResponse.jwt_keys` carries it; empty for none).
    pub fn new(
        roots: TrustBundle,
        jwt_keys_json: &[u8],
        sequence: Option<u64>,
        refresh_hint: Option<Duration>,
    ) -> Result<Self, SpiffeBundleError> {
        let jwt_keys = if jwt_keys_json.is_empty() {
            Vec::new()
        } else {
            let set: Value = serde_json::from_slice(jwt_keys_json).map_err(not_json)?;
            let keys = match set.get("keys") {
                Some(Value::Array(keys)) => keys.clone(),
                _ => {
                    return Err(SpiffeBundleError::NotJson {
                        reason: "the JWT keys are not a JWK Set with a \"keys\" array".into(),
                    });
                }
            };
            let mut marked = Vec::with_capacity(keys.len());
            for (index, key) in (1..).zip(keys) {
                let Value::Object(mut key) = key else {
                    return Err(SpiffeBundleError::KeyNotAnObject { index });
                };
                key.insert("use".into(), Value::String(USE_JWT.into()));
                marked.push(key);
            }
            marked
        };
        let mut kids = BTreeSet::new();
        for (index, key) in (1..).zip(&jwt_keys) {
            check_jwt_key(index, key, &mut kids)?;
        }
        Ok(Self {
            x509: roots,
            jwt_keys_json: jwk_set(&jwt_keys),
            sequence,
            refresh_hint,
        })
    }

    /// Reads the SPIFFE bundle `bytes` that the endpoint of `trust_domain` published.
    pub fn parse(trust_domain: &TrustDomain, bytes: &[u8]) -> Result<Self, SpiffeBundleError> {
        if bytes.len() > MAX_SPIFFE_BUNDLE_BYTES {
            return Err(SpiffeBundleError::TooLarge {
                size: bytes.len(),
                limit: MAX_SPIFFE_BUNDLE_BYTES,
            });
        }
        let set: Value = serde_json::from_slice(bytes).map_err(not_json)?;
        let Value::Object(set) = set else {
            return Err(SpiffeBundleError::NotJson {
                reason: "it is not a JSON object".into(),
            });
        };
        let sequence = number(&set, "spiffe_sequence")?;
        let refresh_hint = number(&set, "spiffe_refresh_hint")?.map(Duration::from_secs);
        let keys = match set.get("keys") {
            Some(Value::Array(keys)) => keys,
            Some(_) => {
                return Err(SpiffeBundleError::NotJson {
                    reason: "\"keys\" is not an array".into(),
                });
            }
            None => {
                return Err(SpiffeBundleError::NotJson {
                    reason: "it has no \"keys\" member".into(),
                });
            }
        };
        let mut roots: Vec<CertificateDer<'static>> = Vec::new();
        let mut jwt_keys = Vec::new();
        let mut kids = BTreeSet::new();
        for (index, key) in (1..).zip(keys) {
            let Value::Object(key) = key else {
                return Err(SpiffeBundleError::KeyNotAnObject { index });
            };
            if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| key.contains_key(**m)) {
                return Err(SpiffeBundleError::PrivateKey {
                    index,
                    member: (*member).into(),
                });
            }
            // The standard: a key without `use`, of an unknown `use` or `kty`, is ignored.
            let kty = key.get("kty").and_then(Value::as_str);
            if !matches!(kty, Some("EC" | "RSA")) {
                continue;
            }
            match key.get("use").and_then(Value::as_str) {
                Some(USE_X509) => {
                    let root = x509_root(trust_domain, index, key)?;
                    if !roots.contains(&root) {
                        roots.push(root);
                    }
                }
                Some(USE_JWT) => {
                    check_jwt_key(index, key, &mut kids)?;
                    jwt_keys.push(key.clone());
                }
                _ => {}
            }
        }
        if roots.is_empty() {
            return Err(SpiffeBundleError::NoX509Roots);
        }
        // Each root passed on its own; together they cannot fail, but say so if they do.
        let x509 = TrustBundle::new(trust_domain.clone(), roots)
            .map_err(|error| SpiffeBundleError::BadRoot { index: 0, error })?;
        Ok(Self {
            x509,
            jwt_keys_json: jwk_set(&jwt_keys),
            sequence,
            refresh_hint,
        })
    }

    /// The bundle as the standard's JSON: every root as an `x509-svid` key (its public key
    /// members and the certificate in `x5c`), then every JWT key as a `jwt-svid` key.
    pub fn to_json(&self) -> Vec<u8> {
        let mut keys: Vec<Value> = self
            .x509
            .roots()
            .iter()
            .map(|root| Value::Object(root_jwk(root)))
            .collect();
        if let Ok(Value::Object(set)) = serde_json::from_slice::<Value>(&self.jwt_keys_json)
            && let Some(Value::Array(jwt)) = set.get("keys")
        {
            keys.extend(jwt.iter().cloned());
        }
        let mut set = Map::new();
        set.insert("keys".into(), Value::Array(keys));
        if let Some(sequence) = self.sequence {
            set.insert("spiffe_sequence".into(), sequence.into());
        }
        if let Some(hint) = self.refresh_hint {
            set.insert("spiffe_refresh_hint".into(), hint.as_secs().into());
        }
        // Serialising a Value built of strings and integers cannot fail.
        serde_json::to_vec_pretty(&Value::Object(set)).unwrap_or_default()
    }

    /// The trust domain the bundle is for.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.x509.trust_domain()
    }

    /// The X.509 roots, as a trust bundle.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.x509
    }

    /// The X.509 roots.
    pub fn x509_roots(&self) -> &[CertificateDer<'static>] {
        self.x509.roots()
    }

    /// The `jwt-svid` keys as a JWK Set (`{"keys":[...]}`), each as published.
    pub fn jwt_keys_json(&self) -> &[u8] {
        &self.jwt_keys_json
    }

    /// How many `jwt-svid` keys the bundle holds.
    pub fn jwt_key_count(&self) -> usize {
        serde_json::from_slice::<Value>(&self.jwt_keys_json)
            .ok()
            .and_then(|set| set.get("keys").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0)
    }

    /// The publisher's `spiffe_sequence`, if it set one.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// The publisher's `spiffe_refresh_hint`, if it set one.
    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }
}

fn not_json(e: serde_json::Error) -> SpiffeBundleError {
    SpiffeBundleError::NotJson {
        reason: e.to_string(),
    }
}

fn number(
    set: &Map<String, Value>,
    member: &'static str,
) -> Result<Option<u64>, SpiffeBundleError> {
    match set.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| SpiffeBundleError::BadNumber {
                member,
                found: truncated(&value.to_string()),
            }),
    }
}

/// At most 40 characters of what a hostile bundle said, for an error message.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn jwk_set(keys: &[Map<String, Value>]) -> Vec<u8> {
    if keys.is_empty() {
        return Vec::new();
    }
    let keys = keys.iter().cloned().map(Value::Object).collect();
    let mut set = Map::new();
    set.insert("keys".into(), Value::Array(keys));
    serde_json::to_vec(&Value::Object(set)).unwrap_or_default()
}

fn check_jwt_key(
    index: usize,
    key: &Map<String, Value>,
    kids: &mut BTreeSet<String>,
) -> Result<(), SpiffeBundleError> {
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| key.contains_key(**m)) {
        return Err(SpiffeBundleError::PrivateKey {
            index,
            member: (*member).into(),
        });
    }
    let kid = match key.get("kid").and_then(Value::as_str) {
        Some(kid) if !kid.is_empty() => kid,
        _ => return Err(SpiffeBundleError::MissingKid { index }),
    };
    if !kids.insert(kid.to_owned()) {
        return Err(SpiffeBundleError::DuplicateKid {
            index,
            kid: truncated(kid),
        });
    }
    Ok(())
}

/// The root an `x509-svid` key holds, checked by the trust bundle rules and against the key's
/// own public key members.
fn x509_root(
    trust_domain: &TrustDomain,
    index: usize,
    key: &Map<String, Value>,
) -> Result<CertificateDer<'static>, SpiffeBundleError> {
    let encoded = match key.get("x5c") {
        Some(Value::Array(x5c)) if x5c.len() == 1 => &x5c[0],
        Some(Value::Array(x5c)) => {
            return Err(SpiffeBundleError::X5cCount {
                index,
                count: x5c.len(),
            });
        }
        _ => return Err(SpiffeBundleError::X5cCount { index, count: 0 }),
    };
    let encoded = encoded
        .as_str()
        .ok_or_else(|| SpiffeBundleError::X5cBase64 {
            index,
            reason: "not a string".into(),
        })?;
    let der = STANDARD
        .decode(encoded)
        .map_err(|e| SpiffeBundleError::X5cBase64 {
            index,
            reason: e.to_string(),
        })?;
    let root = CertificateDer::from(der);
    TrustBundle::new(trust_domain.clone(), vec![root.clone()])
        .map_err(|error| SpiffeBundleError::BadRoot { index, error })?;
    // The key members, where given, must be the certificate's: a bundle whose two halves
    // disagree was not made by anyone careful.
    let own = root_jwk(&root);
    for (member, value) in key {
        if matches!(member.as_str(), "kty" | "crv" | "x" | "y" | "n" | "e")
            && own.get(member) != Some(value)
        {
            return Err(SpiffeBundleError::KeyMismatch {
                index,
                member: member.clone(),
            });
        }
    }
    Ok(root)
}

/// The `x509-svid` JWK of a root: its public key members (RFC 7518 section 6), `use` and the
/// certificate in `x5c`. A key of a type JWK cannot express gets `x5c` alone.
fn root_jwk(root: &CertificateDer<'_>) -> Map<String, Value> {
    let mut jwk = Map::new();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(root) {
        let spki = cert.public_key();
        match spki.parsed() {
            Ok(PublicKey::EC(point)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|oid| oid.to_id_string());
                let (crv, size) = match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") => ("P-256", 32),
                    Some("1.3.132.0.34") => ("P-384", 48),
                    Some("1.3.132.0.35") => ("P-521", 66),
                    _ => ("", 0),
                };
                let data = point.data();
                if size > 0 && data.len() == 1 + 2 * size && data[0] == 4 {
                    jwk.insert("kty".into(), "EC".into());
                    jwk.insert("crv".into(), crv.into());
                    jwk.insert("x".into(), URL_SAFE_NO_PAD.encode(&data[1..=size]).into());
                    jwk.insert("y".into(), URL_SAFE_NO_PAD.encode(&data[1 + size..]).into());
                }
            }
            Ok(PublicKey::RSA(rsa)) => {
                jwk.insert("kty".into(), "RSA".into());
                jwk.insert(
                    "n".into(),
                    URL_SAFE_NO_PAD.encode(unsigned(rsa.modulus)).into(),
                );
                jwk.insert(
                    "e".into(),
                    URL_SAFE_NO_PAD.encode(unsigned(rsa.exponent)).into(),
                );
            }
            _ => {}
        }
    }
    jwk.insert("use".into(), USE_X509.into());
    jwk.insert(
        "x5c".into(),
        Value::Array(vec![Value::String(STANDARD.encode(root.as_ref()))]),
    );
    jwk
}

/// An ASN.1 INTEGER's bytes without the sign-padding zeros (JWK integers are unsigned).
fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TestCa;
    use serde_json::json;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn jwt_key(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "use": "jwt-svid", "kid": kid,
               "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
               "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"})
    }

    fn bundle_json(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({"keys": keys, "spiffe_sequence": 7, "spiffe_refresh_hint": 300}))
            .unwrap()
    }

    fn parse(keys: Vec<Value>) -> Result<SpiffeBundle, SpiffeBundleError> {
        SpiffeBundle::parse(&td("partner.example"), &bundle_json(keys))
    }

    fn root_key(ca: &TestCa) -> Value {
        Value::Object(root_jwk(ca.der()))
    }

    #[test]
    fn writes_and_reads_back_a_bundle() {
        let a = TestCa::new("spiffe://partner.example");
        let b = TestCa::new(None);
        let roots = TrustBundle::new(
            td("partner.example"),
            vec![a.der().clone(), b.der().clone()],
        )
        .unwrap();
        let jwks = serde_json::to_vec(&json!({"keys": [jwt_key("k1")]})).unwrap();
        let bundle =
            SpiffeBundle::new(roots, &jwks, Some(3), Some(Duration::from_secs(60))).unwrap();
        let json = bundle.to_json();

        let value: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["spiffe_sequence"], 3);
        assert_eq!(value["spiffe_refresh_hint"], 60);
        let keys = value["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0]["use"], "x509-svid");
        assert_eq!(keys[0]["kty"], "EC");
        assert_eq!(keys[0]["crv"], "P-256");
        assert_eq!(keys[0]["x5c"].as_array().unwrap().len(), 1);
        assert!(keys[0].get("kid").is_none(), "x509-svid keys have no kid");
        assert_eq!(keys[2]["use"], "jwt-svid");
        assert_eq!(keys[2]["kid"], "k1");

        let again = SpiffeBundle::parse(&td("partner.example"), &json).unwrap();
        assert_eq!(again.x509_roots(), [a.der().clone(), b.der().clone()]);
        assert_eq!(again.sequence(), Some(3));
        assert_eq!(again.refresh_hint(), Some(Duration::from_secs(60)));
        assert_eq!(again.jwt_key_count(), 1);
        let jwt: Value = serde_json::from_slice(again.jwt_keys_json()).unwrap();
        assert_eq!(jwt["keys"][0]["kid"], "k1");
        assert_eq!(again.trust_domain(), &td("partner.example"));
    }

    #[test]
    fn marks_the_cas_jwt_keys_for_jwt_svids() {
        let roots =
            TrustBundle::new(td("a.example"), vec![TestCa::new(None).der().clone()]).unwrap();
        // As GetTrustBundle carries them: maybe without `use`, or with `sig`.
        let mut key = jwt_key("k1");
        key.as_object_mut().unwrap().remove("use");
        let jwks = serde_json::to_vec(&json!({"keys": [key]})).unwrap();
        let bundle = SpiffeBundle::new(roots.clone(), &jwks, None, None).unwrap();
        let jwt: Value = serde_json::from_slice(bundle.jwt_keys_json()).unwrap();
        assert_eq!(jwt["keys"][0]["use"], "jwt-svid");
        // No JWT keys at all: nothing but the roots.
        let bare = SpiffeBundle::new(roots, b"", None, None).unwrap();
        assert!(bare.jwt_keys_json().is_empty());
        let value: Value = serde_json::from_slice(&bare.to_json()).unwrap();
        assert_eq!(value["keys"].as_array().unwrap().len(), 1);
        assert!(value.get("spiffe_sequence").is_none());
    }

    #[test]
    fn ignores_what_the_standard_says_to_ignore() {
        let ca = TestCa::new("spiffe://partner.example");
        let bundle = parse(vec![
            root_key(&ca),
            json!({"kty": "EC", "use": "something-new", "x5c": ["!!"]}),
            json!({"kty": "EC", "x5c": ["!!"]}),
            json!({"kty": "OKP", "use": "x509-svid", "x5c": []}),
            json!({"use": "jwt-svid"}),
        ])
        .unwrap();
        assert_eq!(bundle.x509_roots().len(), 1);
        assert_eq!(bundle.jwt_key_count(), 0);
        assert!(bundle.jwt_keys_json().is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_bundle() {
        let refuse = |bytes: &[u8]| SpiffeBundle::parse(&td("a.example"), bytes).unwrap_err();
        assert!(matches!(
            refuse(b"<html>"),
            SpiffeBundleError::NotJson { .. }
        ));
        assert!(matches!(refuse(b"[]"), SpiffeBundleError::NotJson { .. }));
        assert_eq!(
            refuse(b"{}").to_string(),
            "the bundle is not a SPIFFE bundle (a JSON JWK Set): it has no \"keys\" member"
        );
        assert!(matches!(
            refuse(br#"{"keys": {}}"#),
            SpiffeBundleError::NotJson { .. }
        ));
        assert_eq!(refuse(br#"{"keys": []}"#), SpiffeBundleError::NoX509Roots);
        assert_eq!(
            refuse(br#"{"keys": [1]}"#),
            SpiffeBundleError::KeyNotAnObject { index: 1 }
        );
        assert_eq!(
            refuse(br#"{"keys": [], "spiffe_sequence": -1}"#),
            SpiffeBundleError::BadNumber {
                member: "spiffe_sequence",
                found: "-1".into()
            }
        );
        assert!(matches!(
            refuse(br#"{"keys": [], "spiffe_refresh_hint": 1.5}"#),
            SpiffeBundleError::BadNumber {
                member: "spiffe_refresh_hint",
                ..
            }
        ));
        let huge = vec![b' '; MAX_SPIFFE_BUNDLE_BYTES + 1];
        assert!(matches!(refuse(&huge), SpiffeBundleError::TooLarge { .. }));
    }

    #[test]
    fn refuses_a_bundle_with_only_jwt_keys() {
        assert_eq!(
            parse(vec![jwt_key("k1")]).unwrap_err(),
            SpiffeBundleError::NoX509Roots
        );
    }

    #[test]
    fn refuses_x5c_of_other_than_one_certificate() {
        let ca = TestCa::new(None);
        let mut two = root_key(&ca);
        let cert = two["x5c"][0].clone();
        two["x5c"] = json!([cert.clone(), cert]);
        assert_eq!(
            parse(vec![two]).unwrap_err(),
            SpiffeBundleError::X5cCount { index: 1, count: 2 }
        );
        let mut none = root_key(&ca);
        none.as_object_mut().unwrap().remove("x5c");
        assert_eq!(
            parse(vec![root_key(&ca), none]).unwrap_err(),
            SpiffeBundleError::X5cCount { index: 2, count: 0 }
        );
    }

    #[test]
    fn refuses_bad_base64_or_der() {
        let ca = TestCa::new(None);
        let mut bad = root_key(&ca);
        bad["x5c"] = json!(["not base64!"]);
        assert!(matches!(
            parse(vec![bad]).unwrap_err(),
            SpiffeBundleError::X5cBase64 { index: 1, .. }
        ));
        let mut not_der = root_key(&ca);
        not_der["x5c"] = json!([STANDARD.encode(b"hello")]);
        assert!(matches!(
            parse(vec![not_der]).unwrap_err(),
            SpiffeBundleError::BadRoot {
                index: 1,
                error: BundleError::InvalidRoot { .. }
            }
        ));
        let mut number = root_key(&ca);
        number["x5c"] = json!([5]);
        assert!(matches!(
            parse(vec![number]).unwrap_err(),
            SpiffeBundleError::X5cBase64 { index: 1, .. }
        ));
    }

    #[test]
    fn refuses_a_root_of_another_trust_domain() {
        let ours = TestCa::new("spiffe://partner.example");
        let theirs = TestCa::new("spiffe://elsewhere.example");
        let err = parse(vec![root_key(&ours), root_key(&theirs)]).unwrap_err();
        assert_eq!(
            err,
            SpiffeBundleError::BadRoot {
                index: 2,
                error: BundleError::WrongTrustDomain {
                    index: 1,
                    found: td("elsewhere.example"),
                    expected: td("partner.example"),
                }
            }
        );
        assert!(
            err.to_string()
                .starts_with("key 2 (x509-svid): certificate 1 belongs")
        );
    }

    #[test]
    fn refuses_a_root_that_cannot_sign() {
        let ca = TestCa::new(None);
        let leaf = ca.sign(&crate::test_util::leaf_params(&[
            "spiffe://partner.example/x",
        ]));
        let mut key = root_jwk(&leaf);
        key.insert("use".into(), USE_X509.into());
        assert!(matches!(
            parse(vec![Value::Object(key)]).unwrap_err(),
            SpiffeBundleError::BadRoot { index: 1, .. }
        ));
    }

    #[test]
    fn refuses_key_members_that_contradict_the_certificate() {
        let a = TestCa::new(None);
        let b = TestCa::new(None);
        let mut mixed = root_key(&a);
        mixed["x"] = root_key(&b)["x"].clone();
        assert_eq!(
            parse(vec![mixed]).unwrap_err(),
            SpiffeBundleError::KeyMismatch {
                index: 1,
                member: "x".into()
            }
        );
        let mut rsa = root_key(&a);
        rsa["kty"] = json!("RSA");
        assert!(matches!(
            parse(vec![rsa]).unwrap_err(),
            SpiffeBundleError::KeyMismatch { .. }
        ));
    }

    #[test]
    fn refuses_jwt_keys_without_kid_duplicated_or_private() {
        let root = root_key(&TestCa::new(None));
        let mut no_kid = jwt_key("k");
        no_kid.as_object_mut().unwrap().remove("kid");
        assert_eq!(
            parse(vec![root.clone(), no_kid]).unwrap_err(),
            SpiffeBundleError::MissingKid { index: 2 }
        );
        assert_eq!(
            parse(vec![root.clone(), jwt_key("k"), jwt_key("k")]).unwrap_err(),
            SpiffeBundleError::DuplicateKid {
                index: 3,
                kid: "k".into()
            }
        );
        let mut private = jwt_key("k");
        private["d"] = json!("c2VjcmV0");
        assert_eq!(
            parse(vec![root.clone(), private]).unwrap_err(),
            SpiffeBundleError::PrivateKey {
                index: 2,
                member: "d".into()
            }
        );
        let mut private_root = root;
        private_root["d"] = json!("c2VjcmV0");
        assert!(matches!(
            parse(vec![private_root]).unwrap_err(),
            SpiffeBundleError::PrivateKey { index: 1, .. }
        ));
    }

    #[test]
    fn keeps_one_copy_of_a_repeated_root() {
        let ca = TestCa::new(None);
        let bundle = parse(vec![root_key(&ca), root_key(&ca)]).unwrap();
        assert_eq!(bundle.x509_roots().len(), 1);
    }

    #[test]
    fn reads_a_bundle_without_sequence_or_hint() {
        let ca = TestCa::new(None);
        let json = serde_json::to_vec(&json!({"keys": [root_key(&ca)]})).unwrap();
        let bundle = SpiffeBundle::parse(&td("a.example"), &json).unwrap();
        assert_eq!(bundle.sequence(), None);
        assert_eq!(bundle.refresh_hint(), None);
    }
}
