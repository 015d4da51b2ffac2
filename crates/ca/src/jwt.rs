//! JWT-SVIDs at the CA: the JWT authorities a running CA holds (every published public key,
//! and the active key that signs), and the rules of a `MintJwtSvid` request.
//!
//! Who the caller is, is decided elsewhere (the client certificate of the connection, checked
//! like a renewal); here a token is made for that identity, for audiences the caller chose
//! within bounds, for a lifetime clamped to the CA's maximum and never past the signing key's
//! own end.

use std::time::Duration;

use hush_identity::{JwtKeys, JwtSigningKey, SpiffeId, sign_jwt_svid};

use crate::authorities::AuthorityId;

/// A token's lifetime when the caller asks for none (`ttl_seconds: 0`).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);

/// The longest lifetime `hush ca serve` grants unless `--jwt-max-ttl` says otherwise. A
/// JWT-SVID is a bearer token: whoever holds a copy can replay it until it expires.
pub const DEFAULT_JWT_MAX_TTL: Duration = Duration::from_secs(3600);

/// The most audiences one token may name: a token for many services is a token any of them
/// can replay against the others.
pub const MAX_AUDIENCES: usize = 16;

/// The longest audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// What a running CA knows of its JWT authorities: the public keys it publishes, and the key
/// that signs, when it has one.
#[derive(Debug, Default)]
pub struct JwtMaterial {
    /// Every JWT authority not revoked, by ID.
    pub keys: JwtKeys,
    /// The active JWT authority; `None` in a CA made before JWT-SVIDs.
    pub signer: Option<JwtSigner>,
}

/// The active JWT authority: its ID, its key and the end of its lifetime.
#[derive(Debug)]
pub struct JwtSigner {
    /// Its ID, the `kid` of what it signs.
    pub id: AuthorityId,
    /// Its private key.
    pub key: JwtSigningKey,
    /// The end of its lifetime (Unix seconds); no token outlives it.
    pub not_after: i64,
}

/// A JWT-SVID the CA signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedJwt {
    /// The compact JWS.
    pub token: String,
    /// Its `iat`, Unix seconds.
    pub issued_at: i64,
    /// Its `exp`, Unix seconds.
    pub expires_at: i64,
    /// The JWT authority that signed it.
    pub key_id: AuthorityId,
}

/// Why a JWT-SVID was not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtMintError {
    /// The CA has no active JWT authority.
    #[error(
        "this CA has no active JWT authority, so it signs no JWT-SVIDs: make one with `hush ca \
         rotate jwt`, then `hush ca activate <id>` (the first one may be activated at once)"
    )]
    NoAuthority,
    /// The active JWT authority's lifetime is over.
    #[error(
        "the active JWT authority {id} reached the end of its lifetime: rotate it with `hush ca \
         rotate jwt` and `hush ca activate <id>`"
    )]
    Expired {
        /// The authority.
        id: AuthorityId,
    },
    /// The audiences asked for break a rule.
    #[error("{0}")]
    Audience(String),
    /// Signing failed.
    #[error("cannot sign the JWT-SVID: {0}")]
    Sign(String),
}

// === impl JwtMaterial ===

impl JwtMaterial {
    /// Signs a JWT-SVID for `spiffe_id` at `now` (Unix seconds): `ttl` (or
    /// [`DEFAULT_JWT_TTL`]) clamped to `max_ttl` and to the signing key's end.
    pub fn mint(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Option<Duration>,
        max_ttl: Duration,
        now: i64,
    ) -> Result<MintedJwt, JwtMintError> {
        check_audiences(audiences).map_err(JwtMintError::Audience)?;
        let signer = self.signer.as_ref().ok_or(JwtMintError::NoAuthority)?;
        let ttl = ttl.unwrap_or(DEFAULT_JWT_TTL).min(max_ttl);
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(ttl).min(signer.not_after);
        if expires_at <= now {
            return Err(JwtMintError::Expired {
                id: signer.id.clone(),
            });
        }
        let token = sign_jwt_svid(&signer.key, spiffe_id, audiences, now, expires_at)
            .map_err(|e| JwtMintError::Sign(e.to_string()))?;
        Ok(MintedJwt {
            token,
            issued_at: now,
            expires_at,
            key_id: signer.id.clone(),
        })
    }
}

/// Checks the audiences of a `MintJwtSvid` request: 1 to [`MAX_AUDIENCES`], each 1 to
/// [`MAX_AUDIENCE_LEN`] bytes without control characters (an audience is logged and audited,
/// and must not forge a line there).
pub fn check_audiences(audiences: &[String]) -> Result<(), String> {
    if audiences.is_empty() {
        return Err("a JWT-SVID needs at least one audience (the service it is for)".into());
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(format!(
            "{} audiences asked for; at most {MAX_AUDIENCES} per token",
            audiences.len()
        ));
    }
    for (index, audience) in audiences.iter().enumerate() {
        let n = index + 1;
        if audience.is_empty() || audience.len() > MAX_AUDIENCE_LEN {
            return Err(format!(
                "audience {n} is {} bytes; an audience is 1 to {MAX_AUDIENCE_LEN} bytes",
                audience.len()
            ));
        }
        if audience.chars().any(char::is_control) {
            return Err(format!("audience {n} has a control character"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_identity::validate_jwt_svid;

    const NOW: i64 = 1_800_000_000;

    fn material(not_after: i64) -> JwtMaterial {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = JwtSigningKey::from_pkcs8_der(&pair.serialize_der()).unwrap();
        let id = AuthorityId::of_public_key(key.public_key_spki_der());
        let keys = JwtKeys::from_public_keys([(id.as_str(), key.public_key_spki_der())]).unwrap();
        JwtMaterial {
            keys,
            signer: Some(JwtSigner { id, key, not_after }),
        }
    }

    fn id() -> SpiffeId {
        "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()
    }

    fn audiences(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn a_minted_token_validates_against_the_published_keys() {
        let m = material(NOW + 365 * 86_400);
        let minted = m
            .mint(&id(), &audiences(&["db"]), None, DEFAULT_JWT_MAX_TTL, NOW)
            .unwrap();
        assert_eq!(minted.expires_at, NOW + 300);
        assert_eq!(&minted.key_id, &m.signer.as_ref().unwrap().id);
        let valid = validate_jwt_svid(&minted.token, "db", |_| Some(&m.keys), NOW).unwrap();
        assert_eq!(valid.spiffe_id, id());
    }

    #[test]
    fn the_lifetime_is_clamped_to_the_maximum_and_the_keys_end() {
        let m = material(NOW + 600);
        let day = Some(Duration::from_secs(86_400));
        let minted = m
            .mint(&id(), &audiences(&["db"]), day, DEFAULT_JWT_MAX_TTL, NOW)
            .unwrap();
        assert_eq!(minted.expires_at, NOW + 600);
        let minted = m
            .mint(
                &id(),
                &audiences(&["db"]),
                day,
                Duration::from_secs(120),
                NOW,
            )
            .unwrap();
        assert_eq!(minted.expires_at, NOW + 120);
        let err = m
            .mint(
                &id(),
                &audiences(&["db"]),
                None,
                DEFAULT_JWT_MAX_TTL,
                NOW + 600,
            )
            .unwrap_err();
        assert!(matches!(err, JwtMintError::Expired { .. }), "{err}");
    }

    #[test]
    fn a_ca_without_a_jwt_authority_names_the_commands() {
        let err = JwtMaterial::default()
            .mint(&id(), &audiences(&["db"]), None, DEFAULT_JWT_MAX_TTL, NOW)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("hush ca rotate jwt") && text.contains("hush ca activate"),
            "{text}"
        );
    }

    #[test]
    fn audiences_are_bounded() {
        assert!(check_audiences(&audiences(&["a"])).is_ok());
        let sixteen: Vec<String> = (0..MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
        assert!(check_audiences(&sixteen).is_ok());
        let seventeen: Vec<String> = (0..=MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
        assert!(
            check_audiences(&seventeen)
                .unwrap_err()
                .contains("at most 16")
        );
        assert!(check_audiences(&[]).unwrap_err().contains("at least one"));
        assert!(check_audiences(&audiences(&[""])).is_err());
        assert!(check_audiences(&["x".repeat(MAX_AUDIENCE_LEN)]).is_ok());
        assert!(check_audiences(&["x".repeat(MAX_AUDIENCE_LEN + 1)]).is_err());
        for bad in ["a\nforged line", "tab\there", "nul\0"] {
            assert!(
                check_audiences(&audiences(&["ok", bad]))
                    .unwrap_err()
                    .contains("audience 2 has a control character"),
                "{bad:?}"
            );
        }
        // The check runs before anything is signed.
        let err = material(NOW + 600)
            .mint(&id(), &[], None, DEFAULT_JWT_MAX_TTL, NOW)
            .unwrap_err();
        assert!(matches!(err, JwtMintError::Audience(_)), "{err}");
    }
}
