//! Validating a JWT-SVID by the SPIFFE JWT-SVID standard.
//!
//! The order of the checks matters. Everything read before the signature is checked (the
//! header, and `sub` to find the trust domain's keys) only chooses the key; the claims that
//! decide whether the token is good now (`exp`, `nbf`, `aud`) are judged only once the
//! signature proved who wrote them, so a forged token learns nothing from its refusal but
//! "bad signature".

use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::keys::{JwtKeyType, JwtKeys, allowed_algorithm};
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The longest token read, in bytes. A JWT-SVID is a few hundred bytes; a bound this low
/// keeps a hostile caller from making the validator decode and parse megabytes.
pub const MAX_JWT_SVID_LEN: usize = 16 * 1024;

/// How far clocks may disagree, in seconds: a token is still accepted this long after its
/// `exp` and this long before its `nbf`. Small, because JWT-SVIDs live minutes and a bearer
/// token should not outlive what its issuer said.
pub const JWT_SVID_LEEWAY_SECS: i64 = 30;

/// The algorithms a JWT-SVID may be signed with: the SPIFFE JWT-SVID list, less ES512, which
/// the JOSE library hush uses cannot verify.
pub const JWT_SVID_ALGORITHMS: [&str; 8] = [
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

/// What a valid JWT-SVID says.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedJwtSvid {
    /// The workload it names (`sub`).
    pub spiffe_id: SpiffeId,
    /// Every audience it is for (`aud`), the one it was validated for among them.
    pub audience: Vec<String>,
    /// When it expires (`exp`), Unix seconds.
    pub expires_at_unix: i64,
    /// All of its claims, as signed.
    pub claims: Map<String, Value>,
}

/// Why a JWT-SVID was refused. Each variant is one rule of the standard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidError {
    /// The token is longer than [`MAX_JWT_SVID_LEN`].
    #[error("token is {len} bytes; a JWT-SVID is at most {MAX_JWT_SVID_LEN} bytes")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
    },

    /// The token is not a compact JWS: three base64url parts of a JSON header, JSON claims and
    /// a signature.
    #[error("token is malformed: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },

    /// The header says `alg: none`: an unsigned token.
    #[error("token is unsigned (\"alg\": \"none\"); a JWT-SVID must be signed")]
    Unsigned,

    /// The header names an HMAC algorithm: a shared secret, which a trust domain's public keys
    /// are not (the classic attack signs with the public key as the secret).
    #[error(
        "token is signed with {alg:?}, a shared-secret (HMAC) algorithm; a JWT-SVID must be \
         signed with a private key"
    )]
    SharedSecretAlgorithm {
        /// The header's `alg`.
        alg: String,
    },

    /// The header names an algorithm outside [`JWT_SVID_ALGORITHMS`].
    #[error(
        "token is signed with {alg:?}; a JWT-SVID must use ES256, ES384, RS256, RS384, RS512, \
         PS256, PS384 or PS512"
    )]
    AlgorithmNotAllowed {
        /// The header's `alg`.
        alg: String,
    },

    /// The header's `typ` is neither `JWT` nor `JOSE`.
    #[error("token has type {typ:?}; a JWT-SVID's \"typ\", when present, is \"JWT\" or \"JOSE\"")]
    WrongType {
        /// The header's `typ`.
        typ: String,
    },

    /// The header has `crit` extensions, none of which hush implements.
    #[error("token has critical header extensions (\"crit\"), which hush does not implement")]
    CriticalExtension,

    /// The header has no `kid`, so no key can be chosen.
    #[error("token has no key ID (\"kid\" in its header); a JWT-SVID must name its key")]
    MissingKeyId,

    /// A required claim is absent.
    #[error("token has no {claim:?} claim; a JWT-SVID must have \"sub\", \"aud\" and \"exp\"")]
    MissingClaim {
        /// The claim's name.
        claim: &'static str,
    },

    /// A claim has the wrong JSON type or an impossible value.
    #[error("token's {claim:?} claim is invalid: {reason}")]
    InvalidClaim {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// `sub` is not the SPIFFE ID of a workload.
    #[error("token's subject {sub:?} is not a workload's SPIFFE ID: {reason}")]
    SubjectNotSpiffeId {
        /// The `sub` claim.
        sub: String,
        /// Why it is not one.
        reason: String,
    },

    /// `sub` is in a trust domain that is neither the mesh's nor federated with it.
    #[error(
        "token is from trust domain \"{trust_domain}\", which is not this mesh's nor federated \
         with it"
    )]
    UnknownTrustDomain {
        /// The trust domain of `sub`.
        trust_domain: TrustDomain,
    },

    /// The trust domain has no key with the header's `kid`.
    #[error(
        "token's key {kid:?} is not among trust domain \"{trust_domain}\"'s JWT keys (revoked, \
         not yet published, or from elsewhere)"
    )]
    UnknownKeyId {
        /// The header's `kid`.
        kid: String,
        /// The trust domain of `sub`.
        trust_domain: TrustDomain,
    },

    /// The key named by `kid` is not of the kind the algorithm needs.
    #[error("token's algorithm {alg:?} cannot be used with key {kid:?}, a {key_type:?} key")]
    KeyAlgorithmMismatch {
        /// The header's `kid`.
        kid: String,
        /// The header's `alg`.
        alg: String,
        /// The key's type.
        key_type: JwtKeyType,
    },

    /// The signature does not verify with the key.
    #[error("token's signature does not verify with key {kid:?}")]
    BadSignature {
        /// The header's `kid`.
        kid: String,
    },

    /// `exp` has passed (beyond the leeway).
    #[error("token expired at {expires_at_unix} (Unix seconds), {ago} s ago; fetch a new one")]
    Expired {
        /// `exp`, Unix seconds.
        expires_at_unix: i64,
        /// How long ago, in seconds.
        ago: i64,
    },

    /// `nbf` is still ahead (beyond the leeway).
    #[error("token is not valid before {not_before_unix} (Unix seconds); check the clocks")]
    NotYetValid {
        /// `nbf`, Unix seconds.
        not_before_unix: i64,
    },

    /// The audience asked for is not among the token's `aud`.
    #[error("token is for {found:?}, not for {expected:?}")]
    WrongAudience {
        /// The audience the validator identifies itself with.
        expected: String,
        /// The token's `aud` values.
        found: Vec<String>,
    },
}

/// Validates a JWT-SVID for `audience` at `now_unix` (seconds since the Unix epoch).
///
/// The trust domain comes from the token's `sub`, and `keys_for` gives that trust domain's
/// JWT keys, or `None` when the mesh neither is nor federates with it. The header must name
/// an algorithm from [`JWT_SVID_ALGORITHMS`] and a `kid` of that set, whose key suits the
/// algorithm; the signature must verify; `exp` must not have passed nor `nbf` be ahead by more
/// than [`JWT_SVID_LEEWAY_SECS`]; and `audience` must be one of `aud`.
pub fn validate_jwt_svid<'k>(
    token: &str,
    audience: &str,
    keys_for: impl Fn(&TrustDomain) -> Option<&'k JwtKeys>,
    now_unix: i64,
) -> Result<ValidatedJwtSvid, JwtSvidError> {
    if token.len() > MAX_JWT_SVID_LEN {
        return Err(JwtSvidError::TooLarge { len: token.len() });
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "a JWT-SVID is three base64url parts separated by '.'",
        ));
    };
    let header = json_object(header, "header")?;
    let (alg, alg_name) = algorithm(&header)?;
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
        Some(typ) => {
            return Err(JwtSvidError::WrongType { typ: plain(typ) });
        }
    }
    if header.contains_key("crit") {
        return Err(JwtSvidError::CriticalExtension);
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) if !kid.is_empty() => kid.clone(),
        _ => return Err(JwtSvidError::MissingKeyId),
    };

    let claims = json_object(payload, "claims")?;
    let spiffe_id = subject(&claims)?;
    let trust_domain = spiffe_id.trust_domain();
    let Some(keys) = keys_for(trust_domain) else {
        return Err(JwtSvidError::UnknownTrustDomain {
            trust_domain: trust_domain.clone(),
        });
    };
    let Some(key) = keys.get(&kid) else {
        return Err(JwtSvidError::UnknownKeyId {
            kid,
            trust_domain: trust_domain.clone(),
        });
    };
    if !key.accepts(alg) {
        return Err(JwtSvidError::KeyAlgorithmMismatch {
            kid,
            alg: alg_name,
            key_type: key.key_type(),
        });
    }
    verify_signature(token, alg, key, &kid)?;

    let expires_at_unix =
        numeric_date(&claims, "exp")?.ok_or(JwtSvidError::MissingClaim { claim: "exp" })?;
    if now_unix > expires_at_unix.saturating_add(JWT_SVID_LEEWAY_SECS) {
        return Err(JwtSvidError::Expired {
            expires_at_unix,
            ago: now_unix.saturating_sub(expires_at_unix),
        });
    }
    if let Some(not_before_unix) = numeric_date(&claims, "nbf")?
        && now_unix.saturating_add(JWT_SVID_LEEWAY_SECS) < not_before_unix
    {
        return Err(JwtSvidError::NotYetValid { not_before_unix });
    }
    let found = audiences(&claims)?;
    if !found.iter().any(|a| a == audience) {
        return Err(JwtSvidError::WrongAudience {
            expected: audience.to_owned(),
            found,
        });
    }
    Ok(ValidatedJwtSvid {
        spiffe_id,
        audience: found,
        expires_at_unix,
        claims,
    })
}

/// The header's `alg`, if it is one a JWT-SVID may use, with its name.
fn algorithm(header: &Map<String, Value>) -> Result<(Algorithm, String), JwtSvidError> {
    let name = match header.get("alg") {
        Some(Value::String(name)) => name,
        Some(_) => return Err(malformed("the header's \"alg\" is not a string")),
        None => return Err(malformed("the header has no \"alg\"")),
    };
    if name.eq_ignore_ascii_case("none") {
        return Err(JwtSvidError::Unsigned);
    }
    // By bytes: the name may start with a character of several bytes.
    if name
        .as_bytes()
        .get(..2)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"HS"))
    {
        return Err(JwtSvidError::SharedSecretAlgorithm { alg: name.clone() });
    }
    match allowed_algorithm(name) {
        Some(alg) => Ok((alg, name.clone())),
        None => Err(JwtSvidError::AlgorithmNotAllowed { alg: name.clone() }),
    }
}

/// Has `jsonwebtoken` check the signature of the whole token with `key`, and nothing else:
/// it would judge `exp` by the system clock, and the claims are judged here afterwards.
fn verify_signature(
    token: &str,
    alg: Algorithm,
    key: &super::JwtKey,
    kid: &str,
) -> Result<(), JwtSvidError> {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding_key(), &validation) {
        Ok(_) => Ok(()),
        Err(error) => match error.kind() {
            ErrorKind::InvalidSignature => Err(JwtSvidError::BadSignature {
                kid: kid.to_owned(),
            }),
            // The header and claims were read above; what is left is the signature part's
            // base64 or something the library reads more strictly than JSON.
            _ => Err(malformed(format!(
                "the signature cannot be checked: {error}"
            ))),
        },
    }
}

/// The SPIFFE ID in `sub`, which must name a workload (a path after the trust domain).
fn subject(claims: &Map<String, Value>) -> Result<SpiffeId, JwtSvidError> {
    let sub = match claims.get("sub") {
        Some(Value::String(sub)) => sub,
        Some(_) => {
            return Err(JwtSvidError::InvalidClaim {
                claim: "sub",
                reason: "it is not a string".to_owned(),
            });
        }
        None => return Err(JwtSvidError::MissingClaim { claim: "sub" }),
    };
    let not_spiffe = |reason: String| JwtSvidError::SubjectNotSpiffeId {
        sub: sub.clone(),
        reason,
    };
    let id = sub
        .parse::<SpiffeId>()
        .map_err(|e: SpiffeIdError| not_spiffe(e.to_string()))?;
    if id.path().is_empty() {
        return Err(not_spiffe(
            "it names a trust domain, not a workload".to_owned(),
        ));
    }
    Ok(id)
}

/// `aud`: a non-empty string, or a non-empty array of them.
fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtSvidError> {
    let invalid = |reason: &str| JwtSvidError::InvalidClaim {
        claim: "aud",
        reason: reason.to_owned(),
    };
    let found = match claims.get("aud") {
        None => return Err(JwtSvidError::MissingClaim { claim: "aud" }),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(values)) => {
            let mut found = Vec::with_capacity(values.len());
            for value in values {
                let Value::String(aud) = value else {
                    return Err(invalid("it holds something other than strings"));
                };
                found.push(aud.clone());
            }
            found
        }
        Some(_) => return Err(invalid("it is neither a string nor an array of strings")),
    };
    if found.is_empty() || found.iter().any(String::is_empty) {
        return Err(invalid("it is empty or holds an empty audience"));
    }
    // Duplicates say nothing more; one of each keeps what callers see short.
    let mut seen = BTreeSet::new();
    Ok(found
        .into_iter()
        .filter(|aud| seen.insert(aud.clone()))
        .collect())
}

/// A NumericDate claim (RFC 7519): seconds since the epoch, possibly fractional. Fractions
/// are dropped toward the stricter side: `exp` down, `nbf` up.
fn numeric_date(
    claims: &Map<String, Value>,
    claim: &'static str,
) -> Result<Option<i64>, JwtSvidError> {
    let Some(value) = claims.get(claim) else {
        return Ok(None);
    };
    let invalid = || JwtSvidError::InvalidClaim {
        claim,
        reason: "it is not a number of seconds since 1970".to_owned(),
    };
    let Value::Number(number) = value else {
        return Err(invalid());
    };
    if let Some(seconds) = number.as_i64() {
        return if seconds < 0 {
            Err(invalid())
        } else {
            Ok(Some(seconds))
        };
    }
    // Beyond i64 (a huge u64) or fractional.
    let seconds = number.as_f64().filter(|f| f.is_finite() && *f >= 0.0);
    let Some(seconds) = seconds else {
        return Err(invalid());
    };
    let rounded = if claim == "nbf" {
        seconds.ceil()
    } else {
        seconds.floor()
    };
    // `as` saturates: a date past i64 seconds is simply "never".
    Ok(Some(rounded as i64))
}

/// A base64url part holding a JSON object.
fn json_object(part: &str, what: &str) -> Result<Map<String, Value>, JwtSvidError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("the {what} is not base64url without padding")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(malformed(format!("the {what} is not a JSON object"))),
        Err(_) => Err(malformed(format!("the {what} is not JSON"))),
    }
}

/// A header value in an error message: the string itself, or its JSON, cut short.
fn plain(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    text.chars().take(64).collect()
}

fn malformed(reason: impl Into<String>) -> JwtSvidError {
    JwtSvidError::Malformed {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::jwt::{
        JwtSigningKey, sign_jwt_svid,
        test_keys::{b64, p256, signing_input},
    };

    const NOW: i64 = 1_800_000_000;
    const ID: &str = "spiffe://example.org/ns/shop/sa/web";

    /// The mesh's key (with its PKCS#8, for tokens made by hand) and the JWT keys of the
    /// mesh and of a federated domain.
    struct Fixture {
        pkcs8: Vec<u8>,
        key: JwtSigningKey,
        domains: HashMap<TrustDomain, JwtKeys>,
    }

    fn fixture() -> Fixture {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pkcs8 = pair.serialize_der();
        let key = JwtSigningKey::from_pkcs8_der(&pkcs8).unwrap();
        let other = p256();
        let mut domains = HashMap::new();
        domains.insert(
            "example.org".parse().unwrap(),
            JwtKeys::from_public_keys([(key.key_id(), key.public_key_spki_der())]).unwrap(),
        );
        domains.insert(
            "partner.example".parse().unwrap(),
            JwtKeys::from_public_keys([(other.key_id(), other.public_key_spki_der())]).unwrap(),
        );
        Fixture {
            pkcs8,
            key,
            domains,
        }
    }

    impl Fixture {
        fn token(&self, audiences: &[&str], exp: i64) -> String {
            let audiences: Vec<String> = audiences.iter().map(|a| (*a).to_owned()).collect();
            sign_jwt_svid(&self.key, &ID.parse().unwrap(), &audiences, NOW, exp).unwrap()
        }

        fn validate(&self, token: &str, audience: &str) -> Result<ValidatedJwtSvid, JwtSvidError> {
            validate_jwt_svid(token, audience, |td| self.domains.get(td), NOW)
        }

        /// A token with this header and these claims, signed (ES256) with the mesh's key.
        fn signed(&self, header: &Value, claims: &Value) -> String {
            let input = signing_input(header, claims);
            let key = EncodingKey::from_ec_der(&self.pkcs8);
            let signature =
                jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256).unwrap();
            format!("{input}.{signature}")
        }

        fn header(&self) -> Value {
            json!({"alg": "ES256", "kid": self.key.key_id(), "typ": "JWT"})
        }

        fn claims(&self) -> Value {
            json!({"sub": ID, "aud": ["db"], "exp": NOW + 300, "iat": NOW})
        }
    }

    #[test]
    fn a_good_token_is_accepted() {
        let f = fixture();
        let token = f.token(&["db", "cache"], NOW + 300);
        let valid = f.validate(&token, "cache").unwrap();
        assert_eq!(valid.spiffe_id.as_str(), ID);
        assert_eq!(valid.audience, ["db", "cache"]);
        assert_eq!(valid.expires_at_unix, NOW + 300);
        assert_eq!(valid.claims["iat"], json!(NOW));
        // A hand-made token with a single-string `aud`, `typ` JOSE and no `typ` at all.
        let mut claims = f.claims();
        claims["aud"] = json!("db");
        let mut header = f.header();
        header["typ"] = json!("JOSE");
        assert!(f.validate(&f.signed(&header, &claims), "db").is_ok());
        header.as_object_mut().unwrap().remove("typ");
        assert!(f.validate(&f.signed(&header, &claims), "db").is_ok());
    }

    #[test]
    fn a_token_of_a_federated_domain_needs_that_domains_keys() {
        let f = fixture();
        // Signed with the mesh's key but naming the partner's workload: the partner's keys
        // do not have this kid.
        let mut claims = f.claims();
        claims["sub"] = json!("spiffe://partner.example/api");
        let token = f.signed(&f.header(), &claims);
        assert!(matches!(
            f.validate(&token, "db"),
            Err(JwtSvidError::UnknownKeyId { trust_domain, .. })
                if trust_domain.as_str() == "partner.example"
        ));
    }

    #[test]
    fn a_token_of_another_trust_domain_is_refused() {
        let f = fixture();
        let mut claims = f.claims();
        claims["sub"] = json!("spiffe://elsewhere.example/web");
        let token = f.signed(&f.header(), &claims);
        assert_eq!(
            f.validate(&token, "db"),
            Err(JwtSvidError::UnknownTrustDomain {
                trust_domain: "elsewhere.example".parse().unwrap()
            })
        );
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let f = fixture();
        let token = "a".repeat(MAX_JWT_SVID_LEN + 1);
        assert_eq!(
            f.validate(&token, "db"),
            Err(JwtSvidError::TooLarge {
                len: MAX_JWT_SVID_LEN + 1
            })
        );
        // A real token padded past the bound is refused too, though it would verify.
        let mut claims = f.claims();
        claims["pad"] = json!("x".repeat(MAX_JWT_SVID_LEN));
        let token = f.signed(&f.header(), &claims);
        assert!(matches!(
            f.validate(&token, "db"),
            Err(JwtSvidError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let f = fixture();
        let good = f.token(&["db"], NOW + 300);
        let parts: Vec<&str> = good.split('.').collect();
        let not_json = b64(b"{not json");
        let array = b64(b"[]");
        for token in [
            String::new(),
            "abc".to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.extra"),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{not_json}.{}.{}", parts[1], parts[2]),
            format!("{array}.{}.{}", parts[1], parts[2]),
            format!("{}.{not_json}.{}", parts[0], parts[2]),
            format!("{}.{}.{}!", parts[0], parts[1], parts[2]),
        ] {
            assert!(
                matches!(
                    f.validate(&token, "db"),
                    Err(JwtSvidError::Malformed { .. })
                ),
                "{token}: {:?}",
                f.validate(&token, "db")
            );
        }
        let mut header = f.header();
        header.as_object_mut().unwrap().remove("alg");
        assert!(matches!(
            f.validate(&f.signed(&header, &f.claims()), "db"),
            Err(JwtSvidError::Malformed { .. })
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let f = fixture();
        for alg in ["none", "None", "NONE"] {
            let mut header = f.header();
            header["alg"] = json!(alg);
            let token = format!("{}.", signing_input(&header, &f.claims()));
            assert_eq!(
                f.validate(&token, "db"),
                Err(JwtSvidError::Unsigned),
                "{alg}"
            );
        }
    }

    #[test]
    fn hmac_signed_with_the_public_key_is_refused() {
        let f = fixture();
        let mut header = f.header();
        header["alg"] = json!("HS256");
        let input = signing_input(&header, &f.claims());
        // The classic confusion: the verifier's public key, used as the HMAC secret.
        for secret in [
            f.key.public_key_spki_der().to_vec(),
            f.domains[&"example.org".parse().unwrap()].to_json(),
        ] {
            let signature = jsonwebtoken::crypto::sign(
                input.as_bytes(),
                &EncodingKey::from_secret(&secret),
                Algorithm::HS256,
            )
            .unwrap();
            assert_eq!(
                f.validate(&format!("{input}.{signature}"), "db"),
                Err(JwtSvidError::SharedSecretAlgorithm {
                    alg: "HS256".to_owned()
                })
            );
        }
        header["alg"] = json!("hs512");
        let token = format!("{}.AAAA", signing_input(&header, &f.claims()));
        assert!(matches!(
            f.validate(&token, "db"),
            Err(JwtSvidError::SharedSecretAlgorithm { .. })
        ));
    }

    #[test]
    fn algorithms_outside_the_spiffe_list_are_refused() {
        let f = fixture();
        for alg in ["ES512", "EdDSA", "es256", "RS1", "", "€S256", "H"] {
            let mut header = f.header();
            header["alg"] = json!(alg);
            let token = format!("{}.AAAA", signing_input(&header, &f.claims()));
            assert_eq!(
                f.validate(&token, "db"),
                Err(JwtSvidError::AlgorithmNotAllowed {
                    alg: alg.to_owned()
                }),
                "{alg}"
            );
        }
    }

    #[test]
    fn a_key_of_the_wrong_type_for_the_algorithm_is_refused() {
        let f = fixture();
        for alg in ["ES384", "RS256", "PS256"] {
            let mut header = f.header();
            header["alg"] = json!(alg);
            let token = format!("{}.AAAA", signing_input(&header, &f.claims()));
            assert!(
                matches!(
                    f.validate(&token, "db"),
                    Err(JwtSvidError::KeyAlgorithmMismatch {
                        key_type: JwtKeyType::EcP256,
                        ..
                    })
                ),
                "{alg}"
            );
        }
    }

    #[test]
    fn typ_and_crit_are_checked() {
        let f = fixture();
        let mut header = f.header();
        header["typ"] = json!("at+jwt");
        assert_eq!(
            f.validate(&f.signed(&header, &f.claims()), "db"),
            Err(JwtSvidError::WrongType {
                typ: "at+jwt".to_owned()
            })
        );
        let mut header = f.header();
        header["crit"] = json!(["b64"]);
        header["b64"] = json!(false);
        assert_eq!(
            f.validate(&f.signed(&header, &f.claims()), "db"),
            Err(JwtSvidError::CriticalExtension)
        );
    }

    #[test]
    fn a_missing_kid_is_refused() {
        let f = fixture();
        for kid in [None, Some(json!("")), Some(json!(5))] {
            let mut header = f.header();
            match kid {
                None => {
                    header.as_object_mut().unwrap().remove("kid");
                }
                Some(kid) => header["kid"] = kid,
            }
            assert_eq!(
                f.validate(&f.signed(&header, &f.claims()), "db"),
                Err(JwtSvidError::MissingKeyId)
            );
        }
    }

    #[test]
    fn a_kid_not_in_the_bundle_is_refused() {
        let f = fixture();
        let mut header = f.header();
        header["kid"] = json!("0123456789abcdef");
        assert!(matches!(
            f.validate(&f.signed(&header, &f.claims()), "db"),
            Err(JwtSvidError::UnknownKeyId { kid, .. }) if kid == "0123456789abcdef"
        ));
    }

    #[test]
    fn a_kid_swapped_to_another_key_of_the_domain_fails_the_signature() {
        let mut f = fixture();
        // The domain publishes a second key; a token signed by the first but naming the
        // second must not verify.
        let second = p256();
        let first = &f.key;
        f.domains.insert(
            "example.org".parse().unwrap(),
            JwtKeys::from_public_keys([
                (first.key_id(), first.public_key_spki_der()),
                (second.key_id(), second.public_key_spki_der()),
            ])
            .unwrap(),
        );
        let mut header = f.header();
        header["kid"] = json!(second.key_id());
        assert_eq!(
            f.validate(&f.signed(&header, &f.claims()), "db"),
            Err(JwtSvidError::BadSignature {
                kid: second.key_id().to_owned()
            })
        );
    }

    #[test]
    fn a_tampered_token_fails_the_signature() {
        let f = fixture();
        let good = f.token(&["db"], NOW + 300);
        let parts: Vec<&str> = good.split('.').collect();
        let kid = f.key.key_id().to_owned();
        // Another subject of the same domain, with the original signature.
        let mut claims = f.claims();
        claims["sub"] = json!("spiffe://example.org/ns/shop/sa/admin");
        let payload = b64(&serde_json::to_vec(&claims).unwrap());
        assert_eq!(
            f.validate(&format!("{}.{payload}.{}", parts[0], parts[2]), "db"),
            Err(JwtSvidError::BadSignature { kid: kid.clone() })
        );
        // A longer life.
        claims = f.claims();
        claims["exp"] = json!(NOW + 86_400);
        let payload = b64(&serde_json::to_vec(&claims).unwrap());
        assert_eq!(
            f.validate(&format!("{}.{payload}.{}", parts[0], parts[2]), "db"),
            Err(JwtSvidError::BadSignature { kid: kid.clone() })
        );
        // A flipped bit in the signature.
        let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        signature[10] ^= 1;
        let token = format!("{}.{}.{}", parts[0], parts[1], b64(&signature));
        assert_eq!(
            f.validate(&token, "db"),
            Err(JwtSvidError::BadSignature { kid: kid.clone() })
        );
        // No signature at all.
        assert_eq!(
            f.validate(&format!("{}.{}.", parts[0], parts[1]), "db"),
            Err(JwtSvidError::BadSignature { kid })
        );
    }

    #[test]
    fn a_forged_expired_token_says_only_bad_signature() {
        let f = fixture();
        let good = f.token(&["db"], NOW + 300);
        let parts: Vec<&str> = good.split('.').collect();
        let mut claims = f.claims();
        claims["exp"] = json!(NOW - 3600);
        claims["aud"] = json!("other");
        let payload = b64(&serde_json::to_vec(&claims).unwrap());
        assert!(matches!(
            f.validate(&format!("{}.{payload}.{}", parts[0], parts[2]), "db"),
            Err(JwtSvidError::BadSignature { .. })
        ));
    }

    #[test]
    fn an_expired_token_is_refused_after_the_leeway() {
        let f = fixture();
        let mut claims = f.claims();
        claims["iat"] = json!(NOW - 600);
        claims["exp"] = json!(NOW - JWT_SVID_LEEWAY_SECS);
        assert!(f.validate(&f.signed(&f.header(), &claims), "db").is_ok());
        claims["exp"] = json!(NOW - JWT_SVID_LEEWAY_SECS - 1);
        assert_eq!(
            f.validate(&f.signed(&f.header(), &claims), "db"),
            Err(JwtSvidError::Expired {
                expires_at_unix: NOW - JWT_SVID_LEEWAY_SECS - 1,
                ago: JWT_SVID_LEEWAY_SECS + 1
            })
        );
    }

    #[test]
    fn exp_is_required_and_must_be_a_date() {
        let f = fixture();
        let mut claims = f.claims();
        claims.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            f.validate(&f.signed(&f.header(), &claims), "db"),
            Err(JwtSvidError::MissingClaim { claim: "exp" })
        );
        for exp in [json!("soon"), json!(-1), json!(null), json!(-0.5)] {
            claims["exp"] = exp.clone();
            assert!(
                matches!(
                    f.validate(&f.signed(&f.header(), &claims), "db"),
                    Err(JwtSvidError::InvalidClaim { claim: "exp", .. })
                ),
                "{exp}"
            );
        }
        // Fractional and huge dates are read, not refused.
        claims["exp"] = json!(NOW as f64 + 0.9);
        assert_eq!(
            f.validate(&f.signed(&f.header(), &claims), "db")
                .unwrap()
                .expires_at_unix,
            NOW
        );
        claims["exp"] = json!(u64::MAX);
        assert!(f.validate(&f.signed(&f.header(), &claims), "db").is_ok());
    }

    #[test]
    fn a_token_not_yet_valid_is_refused() {
        let f = fixture();
        let mut claims = f.claims();
        claims["nbf"] = json!(NOW + JWT_SVID_LEEWAY_SECS);
        assert!(f.validate(&f.signed(&f.header(), &claims), "db").is_ok());
        claims["nbf"] = json!(NOW + JWT_SVID_LEEWAY_SECS + 1);
        assert_eq!(
            f.validate(&f.signed(&f.header(), &claims), "db"),
            Err(JwtSvidError::NotYetValid {
                not_before_unix: NOW + JWT_SVID_LEEWAY_SECS + 1
            })
        );
        claims["nbf"] = json!("later");
        assert!(matches!(
            f.validate(&f.signed(&f.header(), &claims), "db"),
            Err(JwtSvidError::InvalidClaim { claim: "nbf", .. })
        ));
    }

    #[test]
    fn a_token_for_another_audience_is_refused() {
        let f = fixture();
        let token = f.token(&["db", "cache"], NOW + 300);
        assert_eq!(
            f.validate(&token, "payments"),
            Err(JwtSvidError::WrongAudience {
                expected: "payments".to_owned(),
                found: vec!["db".to_owned(), "cache".to_owned()]
            })
        );
        // Audiences compare exactly.
        assert!(matches!(
            f.validate(&token, "DB"),
            Err(JwtSvidError::WrongAudience { .. })
        ));
        assert!(matches!(
            f.validate(&token, ""),
            Err(JwtSvidError::WrongAudience { .. })
        ));
    }

    #[test]
    fn aud_is_required_and_must_be_strings() {
        let f = fixture();
        let mut claims = f.claims();
        claims.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            f.validate(&f.signed(&f.header(), &claims), "db"),
            Err(JwtSvidError::MissingClaim { claim: "aud" })
        );
        for aud in [
            json!([]),
            json!(""),
            json!([""]),
            json!(["db", 1]),
            json!(7),
            json!({"db": 1}),
        ] {
            claims["aud"] = aud.clone();
            assert!(
                matches!(
                    f.validate(&f.signed(&f.header(), &claims), "db"),
                    Err(JwtSvidError::InvalidClaim { claim: "aud", .. })
                ),
                "{aud}"
            );
        }
    }

    #[test]
    fn sub_must_be_a_workload_spiffe_id() {
        let f = fixture();
        let mut claims = f.claims();
        claims.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            f.validate(&f.signed(&f.header(), &claims), "db"),
            Err(JwtSvidError::MissingClaim { claim: "sub" })
        );
        claims["sub"] = json!(42);
        assert!(matches!(
            f.validate(&f.signed(&f.header(), &claims), "db"),
            Err(JwtSvidError::InvalidClaim { claim: "sub", .. })
        ));
        for sub in [
            "web",
            "https://example.org/web",
            "spiffe://example.org",
            "spiffe://EXAMPLE.org/web",
            "spiffe://example.org/web/",
        ] {
            claims["sub"] = json!(sub);
            assert!(
                matches!(
                    f.validate(&f.signed(&f.header(), &claims), "db"),
                    Err(JwtSvidError::SubjectNotSpiffeId { .. })
                ),
                "{sub}"
            );
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let expired = JwtSvidError::Expired {
            expires_at_unix: 5,
            ago: 40,
        };
        assert!(expired.to_string().contains("fetch a new one"));
        let unknown = JwtSvidError::UnknownTrustDomain {
            trust_domain: "x.example".parse().unwrap(),
        };
        assert!(
            unknown
                .to_string()
                .contains("not this mesh's nor federated")
        );
    }

    #[test]
    fn the_crate_header_type_accepts_what_is_signed() {
        // Guards the split of work: what hush signs is a header `jsonwebtoken` can read.
        let f = fixture();
        let token = f.token(&["db"], NOW + 300);
        let header: Header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(f.key.key_id()));
    }
}
