//! The JWT-SVID keys of one trust domain, read from and written as a JWK Set (RFC 7517).
//!
//! What a key must look like is decided here, once, when the set is read, so that validating a
//! token never meets a key it cannot use:
//!
//! - the document is a JSON object whose `keys` member is an array (other members, such as a
//!   SPIFFE bundle's `spiffe_sequence`, are ignored);
//! - a key whose `use` is neither absent, `sig` nor `jwt-svid` is skipped, not refused: a
//!   SPIFFE bundle lists its `x509-svid` roots in the same array, and they are no JWT keys;
//! - a key that holds a private member (`d`, `p`, `k`, …) refuses the whole set, skipped or
//!   not: whoever published it leaked a secret, and trusting the rest would hide that;
//! - every kept key has a `kid`, unique in the set, and is an EC key on P-256 or P-384 or an
//!   RSA key of 2048 to 8192 bits; an EC point must lie on its curve. Anything else (`OKP`,
//!   `oct`, P-521) refuses the set: a key the mesh cannot check would otherwise fail later,
//!   token by token, with a less helpful message.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value, json};
use x509_parser::{
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384},
    prelude::FromDer,
    x509::SubjectPublicKeyInfo,
};

/// The largest JWK Set document read, in bytes. A trust domain has a handful of keys; a
/// SPIFFE bundle also carries its roots' certificates, still far below this.
pub const MAX_JWKS_LEN: usize = 1024 * 1024;

/// The most JWT keys one trust domain may publish.
pub const MAX_JWT_KEYS: usize = 256;

/// The longest `kid` accepted, in bytes.
const MAX_KID_LEN: usize = 256;

/// JWK members that only a private or symmetric key has (RFC 7518 section 6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// RSA moduli accepted, in bits: below 2048 is too weak, above 8192 is a denial of service.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// The JWT-SVID public keys of one trust domain, by key ID (`kid`).
///
/// Built by [`from_json`](Self::from_json) from a JWK Set, or by
/// [`from_public_keys`](Self::from_public_keys) from the CA's own keys. Every key in it can
/// verify a token: its type and curve are supported and its point is valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwtKeys {
    keys: BTreeMap<String, JwtKey>,
}

/// One public key of a [`JwtKeys`] set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtKey {
    kid: String,
    material: Material,
    /// The JWK's own `alg`, when it names one: a token must then use exactly that algorithm.
    alg: Option<Algorithm>,
}

/// What kind of key a [`JwtKey`] is; each kind verifies its own algorithms only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtKeyType {
    /// An EC key on P-256: ES256.
    EcP256,
    /// An EC key on P-384: ES384.
    EcP384,
    /// An RSA key: RS256, RS384, RS512, PS256, PS384, PS512.
    Rsa,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Material {
    /// The affine coordinates, each exactly the curve's field size.
    Ec {
        key_type: JwtKeyType,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    /// Big-endian modulus and exponent, without leading zero bytes.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// Why a JWK Set, or a public key given to [`JwtKeys::from_public_keys`], was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtBundleError {
    /// The document is larger than [`MAX_JWKS_LEN`].
    #[error("JWK Set is {len} bytes; at most {MAX_JWKS_LEN} bytes are read")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
    },

    /// The document is not JSON, or not the shape of a JWK Set.
    #[error("not a JWK Set: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },

    /// More keys than [`MAX_JWT_KEYS`].
    #[error("JWK Set has more than {MAX_JWT_KEYS} keys")]
    TooManyKeys,

    /// A key has no `kid`, so no token could name it.
    #[error("key {index} has no \"kid\"; every JWT-SVID key needs a key ID")]
    MissingKeyId {
        /// The key's position in `keys`, from 1.
        index: usize,
    },

    /// A key's `kid` is empty or too long.
    #[error("key {index} has an unusable \"kid\": {reason}")]
    InvalidKeyId {
        /// The key's position in `keys`, from 1.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// Two keys share a `kid`, so a token naming it would be ambiguous.
    #[error("two keys have the \"kid\" {kid:?}; key IDs must be unique")]
    DuplicateKeyId {
        /// The repeated key ID.
        kid: String,
    },

    /// A key holds a private or symmetric member: a secret was published.
    #[error(
        "key {index} holds the private member {member:?}; a JWK Set must hold public keys only \
         (whoever published it leaked a secret key, which must be replaced)"
    )]
    PrivateMember {
        /// The key's position in `keys`, from 1.
        index: usize,
        /// The member's name, such as `d`.
        member: String,
    },

    /// A key's `kty` is not `EC` or `RSA`.
    #[error("key {kid:?} has key type {kty:?}; only \"EC\" and \"RSA\" keys verify JWT-SVIDs")]
    UnsupportedKeyType {
        /// The key ID.
        kid: String,
        /// Its `kty` as given.
        kty: String,
    },

    /// An EC key's `crv` is not `P-256` or `P-384`.
    #[error("key {kid:?} is on curve {crv:?}; only \"P-256\" and \"P-384\" are supported")]
    UnsupportedCurve {
        /// The key ID.
        kid: String,
        /// Its `crv` as given.
        crv: String,
    },

    /// A key's `alg` is not one a JWT-SVID may use with that key.
    #[error("key {kid:?} has \"alg\" {alg:?}, which a JWT-SVID cannot use with this key")]
    UnsupportedAlgorithm {
        /// The key ID.
        kid: String,
        /// Its `alg` as given.
        alg: String,
    },

    /// A key's public material is missing or wrong: a member is absent or not base64url, an EC
    /// point is off its curve, an RSA modulus is too short or too long.
    #[error("key {kid:?} is not a usable public key: {reason}")]
    InvalidKey {
        /// The key ID.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
}

// === impl JwtKeys ===

impl JwtKeys {
    /// Reads a JWK Set, following the rules in this module's documentation.
    pub fn from_json(json: &[u8]) -> Result<Self, JwtBundleError> {
        if json.len() > MAX_JWKS_LEN {
            return Err(JwtBundleError::TooLarge { len: json.len() });
        }
        let document: Value = serde_json::from_slice(json).map_err(|e| malformed(e.to_string()))?;
        let Value::Object(document) = document else {
            return Err(malformed("the document is not a JSON object"));
        };
        let Some(keys) = document.get("keys") else {
            return Err(malformed("it has no \"keys\" member"));
        };
        let Value::Array(keys) = keys else {
            return Err(malformed("\"keys\" is not an array"));
        };
        let mut set = Self::default();
        for (position, key) in keys.iter().enumerate() {
            let index = position + 1;
            let Value::Object(key) = key else {
                return Err(malformed(format!("key {index} is not a JSON object")));
            };
            // Before anything else, even for a key that is skipped: a published secret must be
            // seen.
            if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| key.contains_key(**m)) {
                return Err(JwtBundleError::PrivateMember {
                    index,
                    member: (*member).to_owned(),
                });
            }
            match key.get("use") {
                None => {}
                Some(Value::String(usage)) if usage == "sig" || usage == "jwt-svid" => {}
                Some(Value::String(_)) => continue,
                Some(_) => return Err(malformed(format!("key {index}'s \"use\" is not a string"))),
            }
            let key = JwtKey::from_jwk(index, key)?;
            set.insert(key)?;
        }
        Ok(set)
    }

    /// The set of the CA's own keys: each is a key ID and the SubjectPublicKeyInfo (DER) of
    /// an EC key on P-256 or P-384.
    pub fn from_public_keys<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, JwtBundleError> {
        let mut set = Self::default();
        for (position, (kid, spki)) in keys.into_iter().enumerate() {
            check_kid(position + 1, kid)?;
            let key = JwtKey::from_spki(kid, spki)?;
            set.insert(key)?;
        }
        Ok(set)
    }

    /// The set as a JWK Set document: `{"keys": [...]}`, each key with `"use": "jwt-svid"`
    /// (the value a SPIFFE bundle gives JWT keys), in `kid` order.
    pub fn to_json(&self) -> Vec<u8> {
        let keys: Vec<Value> = self.keys.values().map(JwtKey::to_jwk).collect();
        // A `Value` always serializes.
        serde_json::to_vec(&json!({ "keys": keys })).unwrap_or_default()
    }

    /// Whether the set has no key: nothing signed in this trust domain can be validated.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key IDs, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&JwtKey> {
        self.keys.get(kid)
    }

    /// Every key, in `kid` order.
    pub fn iter(&self) -> impl Iterator<Item = &JwtKey> {
        self.keys.values()
    }

    fn insert(&mut self, key: JwtKey) -> Result<(), JwtBundleError> {
        if self.keys.contains_key(&key.kid) {
            return Err(JwtBundleError::DuplicateKeyId { kid: key.kid });
        }
        if self.keys.len() >= MAX_JWT_KEYS {
            return Err(JwtBundleError::TooManyKeys);
        }
        self.keys.insert(key.kid.clone(), key);
        Ok(())
    }
}

// === impl JwtKey ===

impl JwtKey {
    /// Its key ID.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// What kind of key it is.
    pub fn key_type(&self) -> JwtKeyType {
        match &self.material {
            Material::Ec { key_type, .. } => *key_type,
            Material::Rsa { .. } => JwtKeyType::Rsa,
        }
    }

    /// Whether a token signed with `alg` may be verified with this key: the algorithm must
    /// suit the key's type (and curve), and the JWK's own `alg`, when it has one.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        algorithm_suits(self.key_type(), alg)
    }

    /// The key in the form `jsonwebtoken` verifies with.
    pub(crate) fn decoding_key(&self) -> DecodingKey {
        match &self.material {
            Material::Ec { x, y, .. } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                DecodingKey::from_ec_der(&point)
            }
            Material::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
        }
    }

    fn from_jwk(index: usize, jwk: &Map<String, Value>) -> Result<Self, JwtBundleError> {
        let kid = match jwk.get("kid") {
            None => return Err(JwtBundleError::MissingKeyId { index }),
            Some(Value::String(kid)) => kid.clone(),
            Some(_) => {
                return Err(JwtBundleError::InvalidKeyId {
                    index,
                    reason: "it is not a string".to_owned(),
                });
            }
        };
        check_kid(index, &kid)?;
        let kty = string_member(&kid, jwk, "kty")?;
        let material = match kty {
            "EC" => {
                let crv = string_member(&kid, jwk, "crv")?;
                let key_type = match crv {
                    "P-256" => JwtKeyType::EcP256,
                    "P-384" => JwtKeyType::EcP384,
                    _ => {
                        return Err(JwtBundleError::UnsupportedCurve {
                            kid,
                            crv: crv.to_owned(),
                        });
                    }
                };
                let x = base64_member(&kid, jwk, "x")?;
                let y = base64_member(&kid, jwk, "y")?;
                ec_material(&kid, key_type, x, y)?
            }
            "RSA" => {
                let n = strip_leading_zeros(base64_member(&kid, jwk, "n")?);
                let e = strip_leading_zeros(base64_member(&kid, jwk, "e")?);
                rsa_material(&kid, n, e)?
            }
            _ => {
                return Err(JwtBundleError::UnsupportedKeyType {
                    kid,
                    kty: kty.to_owned(),
                });
            }
        };
        let mut key = Self {
            kid,
            material,
            alg: None,
        };
        match jwk.get("alg") {
            None => {}
            Some(Value::String(alg)) => {
                let parsed = allowed_algorithm(alg).filter(|a| algorithm_suits(key.key_type(), *a));
                let Some(parsed) = parsed else {
                    return Err(JwtBundleError::UnsupportedAlgorithm {
                        kid: key.kid,
                        alg: alg.clone(),
                    });
                };
                key.alg = Some(parsed);
            }
            Some(_) => return Err(invalid_key(&key.kid, "\"alg\" is not a string")),
        }
        Ok(key)
    }

    fn from_spki(kid: &str, spki: &[u8]) -> Result<Self, JwtBundleError> {
        let parsed = match SubjectPublicKeyInfo::from_der(spki) {
            Ok(([], parsed)) => parsed,
            _ => return Err(invalid_key(kid, "not a DER SubjectPublicKeyInfo")),
        };
        if parsed.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
            return Err(invalid_key(kid, "not an EC public key"));
        }
        let curve = parsed
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let key_type = match curve {
            Some(oid) if oid == OID_EC_P256 => JwtKeyType::EcP256,
            Some(oid) if oid == OID_NIST_EC_P384 => JwtKeyType::EcP384,
            _ => return Err(invalid_key(kid, "not on P-256 or P-384")),
        };
        let point = &parsed.subject_public_key.data;
        let size = field_size(key_type);
        if point.len() != 1 + 2 * size || point.first() != Some(&0x04) {
            return Err(invalid_key(kid, "not an uncompressed EC point"));
        }
        let (x, y) = point[1..].split_at(size);
        let material = ec_material(kid, key_type, x.to_vec(), y.to_vec())?;
        Ok(Self {
            kid: kid.to_owned(),
            material,
            alg: None,
        })
    }

    fn to_jwk(&self) -> Value {
        let mut jwk = match &self.material {
            Material::Ec { key_type, x, y } => json!({
                "kty": "EC",
                "crv": if *key_type == JwtKeyType::EcP384 { "P-384" } else { "P-256" },
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }),
            Material::Rsa { n, e } => json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(n),
                "e": URL_SAFE_NO_PAD.encode(e),
            }),
        };
        if let Value::Object(members) = &mut jwk {
            members.insert("kid".to_owned(), Value::String(self.kid.clone()));
            members.insert("use".to_owned(), Value::String("jwt-svid".to_owned()));
            if let Some(alg) = self.alg {
                members.insert(
                    "alg".to_owned(),
                    Value::String(algorithm_name(alg).to_owned()),
                );
            }
        }
        jwk
    }
}

// === helpers shared with validation ===

/// The algorithm a JWT-SVID header may name, by its JOSE name: the SPIFFE JWT-SVID list less
/// ES512, which the JOSE library hush uses cannot verify.
pub(crate) fn allowed_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        _ => return None,
    })
}

/// The JOSE name of an algorithm [`allowed_algorithm`] returns.
fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        // Never stored: `allowed_algorithm` returns none of the others.
        _ => "unsupported",
    }
}

/// Whether a key of this type verifies `alg`: an ECDSA algorithm only on its own curve, an
/// RSA one only with an RSA key.
fn algorithm_suits(key_type: JwtKeyType, alg: Algorithm) -> bool {
    match key_type {
        JwtKeyType::EcP256 => alg == Algorithm::ES256,
        JwtKeyType::EcP384 => alg == Algorithm::ES384,
        JwtKeyType::Rsa => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
    }
}

fn field_size(key_type: JwtKeyType) -> usize {
    if key_type == JwtKeyType::EcP384 {
        48
    } else {
        32
    }
}

fn ec_material(
    kid: &str,
    key_type: JwtKeyType,
    x: Vec<u8>,
    y: Vec<u8>,
) -> Result<Material, JwtBundleError> {
    let size = field_size(key_type);
    if x.len() != size || y.len() != size {
        return Err(invalid_key(
            kid,
            format!("\"x\" and \"y\" must be {size} bytes each on this curve"),
        ));
    }
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let algorithm = if key_type == JwtKeyType::EcP384 {
        &ECDSA_P384_SHA384_FIXED
    } else {
        &ECDSA_P256_SHA256_FIXED
    };
    // Parsing checks that the point lies on the curve, which a signature check would only
    // reveal as a "bad signature" much later.
    if ParsedPublicKey::new(algorithm, &point).is_err() {
        return Err(invalid_key(kid, "the point is not on its curve"));
    }
    Ok(Material::Ec { key_type, x, y })
}

fn rsa_material(kid: &str, n: Vec<u8>, e: Vec<u8>) -> Result<Material, JwtBundleError> {
    // Leading zeros are stripped, so the first byte, if any, has at most 7 leading zero bits.
    let bits = match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    if !RSA_BITS.contains(&bits) {
        return Err(invalid_key(
            kid,
            format!("an RSA modulus of {bits} bits; 2048 to 8192 bits are accepted"),
        ));
    }
    // Exponents are small (65537 is three bytes); an even or huge one is no RSA key.
    if e.is_empty() || e.len() > 8 || e.last().is_some_and(|b| b % 2 == 0) {
        return Err(invalid_key(kid, "an unusable RSA exponent"));
    }
    Ok(Material::Rsa { n, e })
}

fn check_kid(index: usize, kid: &str) -> Result<(), JwtBundleError> {
    let reason = if kid.is_empty() {
        "it is empty"
    } else if kid.len() > MAX_KID_LEN {
        "it is longer than 256 bytes"
    } else if kid.chars().any(char::is_control) {
        "it has a control character"
    } else {
        return Ok(());
    };
    Err(JwtBundleError::InvalidKeyId {
        index,
        reason: reason.to_owned(),
    })
}

fn string_member<'a>(
    kid: &str,
    jwk: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, JwtBundleError> {
    match jwk.get(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(invalid_key(kid, format!("{name:?} is not a string"))),
        None => Err(invalid_key(kid, format!("it has no {name:?}"))),
    }
}

fn base64_member(
    kid: &str,
    jwk: &Map<String, Value>,
    name: &str,
) -> Result<Vec<u8>, JwtBundleError> {
    URL_SAFE_NO_PAD
        .decode(string_member(kid, jwk, name)?)
        .map_err(|_| invalid_key(kid, format!("{name:?} is not base64url without padding")))
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn malformed(reason: impl Into<String>) -> JwtBundleError {
    JwtBundleError::Malformed {
        reason: reason.into(),
    }
}

fn invalid_key(kid: &str, reason: impl Into<String>) -> JwtBundleError {
    JwtBundleError::InvalidKey {
        kid: kid.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jwt::test_keys::{b64, p256, p384_spki_and_pkcs8};

    /// A valid P-256 JWK with this kid.
    fn ec_jwk(kid: &str) -> Value {
        let key = p256();
        let set = JwtKeys::from_public_keys([(kid, key.public_key_spki_der())]).unwrap();
        let document: Value = serde_json::from_slice(&set.to_json()).unwrap();
        document["keys"][0].clone()
    }

    fn parse(document: Value) -> Result<JwtKeys, JwtBundleError> {
        JwtKeys::from_json(&serde_json::to_vec(&document).unwrap())
    }

    fn rsa_jwk(kid: &str, modulus_bytes: usize) -> Value {
        let mut n = vec![0xc5; modulus_bytes];
        n[modulus_bytes - 1] = 0x01;
        json!({"kty": "RSA", "kid": kid, "n": b64(&n), "e": b64(&[1, 0, 1])})
    }

    #[test]
    fn a_set_round_trips_through_json() {
        let keys = parse(json!({"keys": [ec_jwk("a"), rsa_jwk("b", 256)]})).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.key_ids().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(keys.get("a").unwrap().key_type(), JwtKeyType::EcP256);
        assert_eq!(keys.get("b").unwrap().key_type(), JwtKeyType::Rsa);
        assert!(keys.get("c").is_none());
        assert_eq!(JwtKeys::from_json(&keys.to_json()).unwrap(), keys);
    }

    #[test]
    fn the_cas_keys_become_a_set() {
        let p256 = p256();
        let (p384, _) = p384_spki_and_pkcs8();
        let keys =
            JwtKeys::from_public_keys([("one", p256.public_key_spki_der()), ("two", &p384[..])])
                .unwrap();
        assert_eq!(keys.get("two").unwrap().key_type(), JwtKeyType::EcP384);
        let document: Value = serde_json::from_slice(&keys.to_json()).unwrap();
        assert_eq!(document["keys"][0]["use"], "jwt-svid");
        assert_eq!(document["keys"][0]["crv"], "P-256");
        assert!(JwtKeys::default().is_empty());
        assert_eq!(JwtKeys::default().to_json(), br#"{"keys":[]}"#);
    }

    #[test]
    fn the_cas_keys_must_be_ec_spki() {
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
        // rcgen cannot generate RSA keys with aws-lc-rs in every build; an Ed25519 key is
        // just as foreign.
        let other =
            rsa.unwrap_or_else(|_| rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap());
        let spki = rcgen::PublicKeyData::subject_public_key_info(&other);
        assert!(matches!(
            JwtKeys::from_public_keys([("k", &spki[..])]),
            Err(JwtBundleError::InvalidKey { .. })
        ));
        assert!(matches!(
            JwtKeys::from_public_keys([("k", &b"junk"[..])]),
            Err(JwtBundleError::InvalidKey { .. })
        ));
        let key = p256();
        assert!(matches!(
            JwtKeys::from_public_keys([("", key.public_key_spki_der())]),
            Err(JwtBundleError::InvalidKeyId { .. })
        ));
    }

    #[test]
    fn what_is_not_a_jwk_set_is_refused() {
        for (document, words) in [
            (&b"not json"[..], "expected"),
            (b"[]", "not a JSON object"),
            (b"{}", "no \"keys\""),
            (br#"{"keys": {}}"#, "not an array"),
            (br#"{"keys": [1]}"#, "key 1 is not a JSON object"),
            (br#"{"keys": [{"use": 1}]}"#, "not a string"),
        ] {
            let error = JwtKeys::from_json(document).unwrap_err();
            assert!(
                matches!(error, JwtBundleError::Malformed { .. })
                    && error.to_string().contains(words),
                "{error}"
            );
        }
    }

    #[test]
    fn an_oversized_document_is_refused_before_parsing() {
        let big = vec![b' '; MAX_JWKS_LEN + 1];
        assert_eq!(
            JwtKeys::from_json(&big),
            Err(JwtBundleError::TooLarge {
                len: MAX_JWKS_LEN + 1
            })
        );
    }

    #[test]
    fn a_key_without_kid_is_refused() {
        let mut key = ec_jwk("a");
        key.as_object_mut().unwrap().remove("kid");
        assert_eq!(
            parse(json!({"keys": [key]})),
            Err(JwtBundleError::MissingKeyId { index: 1 })
        );
        let mut key = ec_jwk("a");
        key["kid"] = json!(7);
        assert!(matches!(
            parse(json!({"keys": [key]})),
            Err(JwtBundleError::InvalidKeyId { index: 1, .. })
        ));
        let mut key = ec_jwk("a");
        key["kid"] = json!("");
        assert!(matches!(
            parse(json!({"keys": [key]})),
            Err(JwtBundleError::InvalidKeyId { index: 1, .. })
        ));
    }

    #[test]
    fn duplicate_kids_are_refused() {
        assert_eq!(
            parse(json!({"keys": [ec_jwk("same"), ec_jwk("same")]})),
            Err(JwtBundleError::DuplicateKeyId {
                kid: "same".to_owned()
            })
        );
    }

    #[test]
    fn private_members_refuse_the_set_even_on_a_skipped_key() {
        for member in PRIVATE_MEMBERS {
            let mut key = ec_jwk("a");
            key[member] = json!("AAAA");
            assert_eq!(
                parse(json!({"keys": [key.clone()]})),
                Err(JwtBundleError::PrivateMember {
                    index: 1,
                    member: member.to_owned()
                })
            );
            key["use"] = json!("x509-svid");
            assert!(matches!(
                parse(json!({"keys": [ec_jwk("b"), key]})),
                Err(JwtBundleError::PrivateMember { index: 2, .. })
            ));
        }
    }

    #[test]
    fn keys_for_other_uses_are_skipped() {
        let mut x509 = json!({"kty": "EC", "use": "x509-svid", "x5c": ["AAAA"]});
        let mut enc = ec_jwk("enc");
        enc["use"] = json!("enc");
        let mut sig = ec_jwk("sig");
        sig["use"] = json!("sig");
        let keys = parse(json!({
            "spiffe_sequence": 3,
            "keys": [x509.clone(), enc, sig, ec_jwk("svid")]
        }))
        .unwrap();
        assert_eq!(keys.key_ids().collect::<Vec<_>>(), ["sig", "svid"]);
        // The same key kept, it would be refused: no kid.
        x509.as_object_mut().unwrap().remove("use");
        assert_eq!(
            parse(json!({"keys": [x509]})),
            Err(JwtBundleError::MissingKeyId { index: 1 })
        );
    }

    #[test]
    fn unsupported_key_types_and_curves_are_refused() {
        let okp = json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(&[1; 32])});
        assert!(matches!(
            parse(json!({"keys": [okp]})),
            Err(JwtBundleError::UnsupportedKeyType { .. })
        ));
        // A symmetric key is refused for its secret `k` before its type is even read.
        let oct = json!({"kty": "oct", "kid": "h", "k": b64(b"secret")});
        assert!(matches!(
            parse(json!({"keys": [oct]})),
            Err(JwtBundleError::PrivateMember { .. })
        ));
        let mut p521 = ec_jwk("a");
        p521["crv"] = json!("P-521");
        assert!(matches!(
            parse(json!({"keys": [p521]})),
            Err(JwtBundleError::UnsupportedCurve { .. })
        ));
        let no_kty = json!({"kid": "a"});
        assert!(matches!(
            parse(json!({"keys": [no_kty]})),
            Err(JwtBundleError::InvalidKey { .. })
        ));
    }

    #[test]
    fn broken_public_material_is_refused() {
        // A P-256 point with one coordinate changed is off the curve.
        let mut off_curve = ec_jwk("a");
        let mut x = URL_SAFE_NO_PAD
            .decode(off_curve["x"].as_str().unwrap())
            .unwrap();
        x[31] ^= 1;
        off_curve["x"] = json!(b64(&x));
        // A P-256 key labelled P-384 has coordinates of the wrong size.
        let mut wrong_size = ec_jwk("b");
        wrong_size["crv"] = json!("P-384");
        let mut padded = ec_jwk("c");
        padded["y"] = json!(format!("{}=", padded["y"].as_str().unwrap()));
        let mut missing = ec_jwk("d");
        missing.as_object_mut().unwrap().remove("y");
        for key in [
            off_curve,
            wrong_size,
            padded,
            missing,
            rsa_jwk("short", 128),
            // A modulus of zeros is empty once its leading zeros are stripped.
            json!({"kty": "RSA", "kid": "zero", "n": "AA", "e": b64(&[3])}),
            json!({"kty": "RSA", "kid": "none", "n": "", "e": b64(&[3])}),
            rsa_jwk("long", 1025),
            json!({"kty": "RSA", "kid": "even", "n": b64(&[0xc5; 256]), "e": b64(&[2])}),
        ] {
            assert!(
                matches!(
                    parse(json!({"keys": [key.clone()]})),
                    Err(JwtBundleError::InvalidKey { .. })
                ),
                "{key}"
            );
        }
        // An RSA modulus with a leading zero byte is read as the number it is.
        let mut n = vec![0];
        n.extend_from_slice(&[0xc5; 256]);
        let padded = json!({"kty": "RSA", "kid": "ok", "n": b64(&n), "e": b64(&[3])});
        assert!(parse(json!({"keys": [padded]})).is_ok());
    }

    #[test]
    fn a_keys_alg_must_suit_it() {
        let mut key = ec_jwk("a");
        key["alg"] = json!("ES256");
        let keys = parse(json!({"keys": [key.clone()]})).unwrap();
        assert!(keys.get("a").unwrap().accepts(Algorithm::ES256));
        assert_eq!(JwtKeys::from_json(&keys.to_json()).unwrap(), keys);
        for alg in ["ES384", "RS256", "HS256", "none", "ES512"] {
            key["alg"] = json!(alg);
            assert!(
                matches!(
                    parse(json!({"keys": [key.clone()]})),
                    Err(JwtBundleError::UnsupportedAlgorithm { .. })
                ),
                "{alg}"
            );
        }
        let mut rsa = rsa_jwk("r", 256);
        rsa["alg"] = json!("PS256");
        let keys = parse(json!({"keys": [rsa]})).unwrap();
        let key = keys.get("r").unwrap();
        assert!(key.accepts(Algorithm::PS256));
        // The JWK names PS256: an RS256 token is not for this key.
        assert!(!key.accepts(Algorithm::RS256));
    }

    #[test]
    fn algorithms_suit_only_their_key_type() {
        assert!(algorithm_suits(JwtKeyType::EcP256, Algorithm::ES256));
        assert!(!algorithm_suits(JwtKeyType::EcP256, Algorithm::ES384));
        assert!(!algorithm_suits(JwtKeyType::EcP384, Algorithm::ES256));
        assert!(!algorithm_suits(JwtKeyType::EcP256, Algorithm::RS256));
        assert!(!algorithm_suits(JwtKeyType::Rsa, Algorithm::ES256));
        assert!(!algorithm_suits(JwtKeyType::Rsa, Algorithm::HS256));
        assert!(algorithm_suits(JwtKeyType::Rsa, Algorithm::PS512));
    }

    #[test]
    fn too_many_keys_are_refused() {
        let key = p256();
        let spki = key.public_key_spki_der();
        let kids: Vec<String> = (0..=MAX_JWT_KEYS).map(|i| format!("k{i}")).collect();
        let result = JwtKeys::from_public_keys(kids.iter().map(|kid| (kid.as_str(), spki)));
        assert_eq!(result, Err(JwtBundleError::TooManyKeys));
    }
}
