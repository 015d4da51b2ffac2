//! Signing JWT-SVIDs: the CA's side, ES256 with a P-256 key.

use std::fmt;

use aws_lc_rs::{
    encoding::AsDer,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::{authority_id::authority_id_of_public_key, spiffe_id::SpiffeId};

/// The PEM label of a PKCS#8 private key.
const PKCS8_LABEL: &str = "PRIVATE KEY";

/// A P-256 private key that signs JWT-SVIDs (ES256).
///
/// Its key ID, the `kid` of every token it signs, is the first 16 hex digits of the SHA-256 of
/// its SubjectPublicKeyInfo: the ID the CA gives every authority.
pub struct JwtSigningKey {
    encoding: EncodingKey,
    spki: Vec<u8>,
    kid: String,
}

/// Why a key could not be read or a token could not be signed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSignError {
    /// The bytes are not a PKCS#8 P-256 private key.
    #[error("not a PKCS#8 P-256 private key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },

    /// A token needs at least one audience, and none may be empty.
    #[error("a JWT-SVID needs at least one audience, and none may be empty")]
    NoAudience,

    /// The token would expire before, or when, it was issued.
    #[error(
        "a JWT-SVID must expire after it is issued (iat {issued_at_unix}, exp {expires_at_unix})"
    )]
    BadLifetime {
        /// `iat`, Unix seconds.
        issued_at_unix: i64,
        /// `exp`, Unix seconds.
        expires_at_unix: i64,
    },

    /// The JOSE library failed to sign.
    #[error("signing the JWT-SVID failed: {reason}")]
    Signing {
        /// The library's words.
        reason: String,
    },
}

/// The claims the CA writes: who, for whom, until when, since when. Nothing else, and nothing
/// secret: a JWT-SVID is readable by whoever holds it.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    aud: &'a [String],
    exp: i64,
    iat: i64,
}

// === impl JwtSigningKey ===

impl JwtSigningKey {
    /// Reads a PKCS#8 (DER) P-256 private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JwtSignError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|e| {
                JwtSignError::InvalidKey {
                    reason: e.to_string(),
                }
            })?;
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| JwtSignError::InvalidKey {
                reason: "its public key cannot be encoded".to_owned(),
            })?
            .as_ref()
            .to_vec();
        let kid = authority_id_of_public_key(&spki);
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der),
            spki,
            kid,
        })
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8) P-256 private key.
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, JwtSignError> {
        let parsed = pem::parse(pem).map_err(|e| JwtSignError::InvalidKey {
            reason: e.to_string(),
        })?;
        if parsed.tag() != PKCS8_LABEL {
            return Err(JwtSignError::InvalidKey {
                reason: format!("the PEM label is {:?}, not \"PRIVATE KEY\"", parsed.tag()),
            });
        }
        Self::from_pkcs8_der(parsed.contents())
    }

    /// The SubjectPublicKeyInfo (DER) of its public key, for [`JwtKeys`](super::JwtKeys).
    pub fn public_key_spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Its key ID: the `kid` of the tokens it signs.
    pub fn key_id(&self) -> &str {
        &self.kid
    }
}

impl fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("JwtSigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Signs a JWT-SVID for `spiffe_id`: header `{"alg": "ES256", "kid": <the key's ID>, "typ":
/// "JWT"}`, claims `sub`, `aud` (always an array), `exp` and `iat` (Unix seconds).
///
/// The caller decides who `spiffe_id` is and checks the audiences' contents; this only refuses
/// what would make a token no validator accepts.
pub fn sign_jwt_svid(
    key: &JwtSigningKey,
    spiffe_id: &SpiffeId,
    audiences: &[String],
    issued_at_unix: i64,
    expires_at_unix: i64,
) -> Result<String, JwtSignError> {
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(JwtSignError::NoAudience);
    }
    if expires_at_unix <= issued_at_unix || issued_at_unix < 0 {
        return Err(JwtSignError::BadLifetime {
            issued_at_unix,
            expires_at_unix,
        });
    }
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("JWT".to_owned());
    header.kid = Some(key.kid.clone());
    let claims = Claims {
        sub: spiffe_id.as_str(),
        aud: audiences,
        exp: expires_at_unix,
        iat: issued_at_unix,
    };
    jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(|e| JwtSignError::Signing {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use serde_json::{Value, json};

    use super::*;
    use crate::jwt::test_keys::{p256, p384_spki_and_pkcs8};

    fn part(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn a_token_has_the_spiffe_header_and_claims() {
        let key = p256();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let token = sign_jwt_svid(&key, &id, &["a".to_owned(), "b".to_owned()], 100, 400).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(
            part(&token, 0),
            json!({"alg": "ES256", "kid": key.key_id(), "typ": "JWT"})
        );
        assert_eq!(
            part(&token, 1),
            json!({"sub": "spiffe://example.org/web", "aud": ["a", "b"], "exp": 400, "iat": 100})
        );
        assert_eq!(
            key.key_id(),
            authority_id_of_public_key(key.public_key_spki_der())
        );
        assert!(!format!("{key:?}").contains("encoding"));
    }

    #[test]
    fn nonsense_tokens_are_not_signed() {
        let key = p256();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        assert_eq!(
            sign_jwt_svid(&key, &id, &[], 1, 2),
            Err(JwtSignError::NoAudience)
        );
        assert_eq!(
            sign_jwt_svid(&key, &id, &[String::new()], 1, 2),
            Err(JwtSignError::NoAudience)
        );
        assert!(matches!(
            sign_jwt_svid(&key, &id, &["a".to_owned()], 2, 2),
            Err(JwtSignError::BadLifetime { .. })
        ));
    }

    #[test]
    fn only_p256_pkcs8_keys_are_read() {
        let (_, p384) = p384_spki_and_pkcs8();
        assert!(matches!(
            JwtSigningKey::from_pkcs8_der(&p384),
            Err(JwtSignError::InvalidKey { .. })
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let read = JwtSigningKey::from_pkcs8_pem(key.serialize_pem().as_bytes()).unwrap();
        assert_eq!(
            read.public_key_spki_der(),
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
        let certificate = pem::encode(&pem::Pem::new("CERTIFICATE", key.serialize_der()));
        assert!(matches!(
            JwtSigningKey::from_pkcs8_pem(certificate.as_bytes()),
            Err(JwtSignError::InvalidKey { .. })
        ));
    }
}
