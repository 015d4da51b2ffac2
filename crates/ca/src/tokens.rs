//! Join tokens: one-line secrets that let a workload prove who it is on a machine without
//! Kubernetes.
//!
//! A token looks like `hushjt.<id>.<secret>`. The CA keeps, per token, a small JSON record named
//! by its id holding the SPIFFE ID it stands for, its expiry, and the SHA-256 of the secret —
//! never the secret. A single-use token is consumed by renaming its record to `<id>.used`, which
//! the file system does at most once even with several CA processes sharing the directory.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hush_identity::SpiffeId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Every join token starts with this, so the CA can tell it from a Kubernetes JWT.
pub const TOKEN_PREFIX: &str = "hushjt.";
const ID_LEN: usize = 16;
const SECRET_BYTES: usize = 32;

/// A join token was refused, or could not be created.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The text is not shaped like a hush join token.
    #[error("malformed join token: expected hushjt.<16 hex digits>.<secret>")]
    Malformed,
    /// No such token (or the secret does not match).
    #[error("unknown join token {id}")]
    Unknown {
        /// Token id (not secret).
        id: String,
    },
    /// The token expired.
    #[error("join token {id} expired {ago} ago")]
    Expired {
        /// Token id.
        id: String,
        /// How long ago.
        ago: String,
    },
    /// The single-use token was already used.
    #[error(
        "join token {id} was already used (it is single-use; mint a new one, or use --reusable)"
    )]
    AlreadyUsed {
        /// Token id.
        id: String,
    },
    /// The token store could not be read or written.
    #[error("join token store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A token cannot be minted as asked.
    #[error("cannot mint the join token: {0}")]
    Invalid(String),
    /// A token record is damaged.
    #[error("join token record {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl TokenError {
    /// True when the caller presented a bad token (as opposed to the CA failing to check it).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Self::Malformed
                | Self::Unknown { .. }
                | Self::Expired { .. }
                | Self::AlreadyUsed { .. }
        )
    }
}

/// A token as stored: everything but the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    id: String,
    spiffe_id: SpiffeId,
    secret_sha256: String,
    created_at: i64,
    expires_at: i64,
    reusable: bool,
}

/// A record as found on disk.
enum Stored {
    /// Not used yet (or reusable).
    Active(TokenRecord),
    /// A single-use token that was consumed.
    Used(TokenRecord),
}

/// A freshly minted token. `token` is the secret: show it once, never log it.
#[derive(Clone)]
pub struct MintedToken {
    /// The public id, safe to log.
    pub id: String,
    /// The whole token, secret included.
    pub token: String,
    /// The identity it stands for.
    pub spiffe_id: SpiffeId,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// Whether it can be used more than once.
    pub reusable: bool,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("id", &self.id)
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .field("reusable", &self.reusable)
            .finish_non_exhaustive()
    }
}

/// What `hush ca token list` shows of a token: never its secret or hash.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// The identity it stands for.
    pub spiffe_id: SpiffeId,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Usable more than once.
    pub reusable: bool,
    /// A single-use token that was consumed.
    pub used: bool,
}

/// A token that checked out: who it stands for. A single-use token is not consumed until
/// [`JoinTokenStore::consume`] is called.
#[derive(Debug, Clone)]
pub struct CheckedToken {
    /// Token id, for the audit log.
    pub id: String,
    /// The identity the token stands for.
    pub spiffe_id: SpiffeId,
    /// Whether it can be used more than once.
    pub reusable: bool,
}

/// The join tokens of one CA directory.
#[derive(Debug, Clone)]
pub struct JoinTokenStore {
    dir: PathBuf,
    /// Reusable tokens already read, so a busy reusable token costs no file I/O. Single-use
    /// tokens are never cached: the file system decides their one use.
    reusable: Arc<Mutex<HashMap<String, Arc<TokenRecord>>>>,
}

// === impl JoinTokenStore ===

impl JoinTokenStore {
    /// The store kept in `dir` (created on first mint).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            reusable: Arc::default(),
        }
    }

    /// The directory holding the token records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a token for `spiffe_id`, valid for `ttl`.
    pub fn mint(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        reusable: bool,
    ) -> Result<MintedToken, TokenError> {
        if ttl.is_zero() {
            return Err(TokenError::Invalid(
                "its lifetime must be more than zero".into(),
            ));
        }
        if spiffe_id.path().is_empty() {
            return Err(TokenError::Invalid(format!(
                "{spiffe_id} names a whole trust domain; a workload's SPIFFE ID needs a path, \
                 e.g. {spiffe_id}/ns/default/sa/my-app"
            )));
        }
        // The CA would refuse it at issuance anyway; a token that can never work is a mistake.
        if crate::authority::is_reserved_id(spiffe_id) {
            return Err(TokenError::Invalid(format!(
                "{spiffe_id} is reserved for hush's own components (every SPIFFE ID under \
                 spiffe://{}/hush); choose another path",
                spiffe_id.trust_domain()
            )));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| self.io(&self.dir, source))?;
        let mut id_bytes = [0u8; ID_LEN / 2];
        crate::random::fill(&mut id_bytes);
        let id = crate::authority::hex(&id_bytes);
        let mut secret = [0u8; SECRET_BYTES];
        crate::random::fill(&mut secret);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let now = OffsetDateTime::now_utc();
        let expires_at = now + ttl;
        let record = TokenRecord {
            id: id.clone(),
            spiffe_id: spiffe_id.clone(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            created_at: now.unix_timestamp(),
            expires_at: expires_at.unix_timestamp(),
            reusable,
        };
        let path = self.record_path(&id);
        let json = serde_json::to_vec_pretty(&record).map_err(|e| TokenError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| self.io(&path, source))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|source| self.io(&path, source))?;
        Ok(MintedToken {
            token: format!("{TOKEN_PREFIX}{id}.{secret}"),
            id,
            spiffe_id: spiffe_id.clone(),
            expires_at,
            reusable,
        })
    }

    /// Withdraws a token by id: it stops working at once, even on a running CA.
    pub fn revoke(&self, id: &str) -> Result<(), TokenError> {
        if !is_token_id(id) {
            return Err(TokenError::Malformed);
        }
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(TokenError::Unknown { id: id.to_string() })
            }
            Err(source) => Err(self.io(&path, source)),
        }
    }

    /// Every token on record, used ones included, sorted by creation time.
    pub fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io(&self.dir, source)),
        };
        let mut tokens = Vec::new();
        for entry in entries {
            let path = entry.map_err(|source| self.io(&self.dir, source))?.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let used = match ext {
                "json" => false,
                "used" => true,
                _ => continue,
            };
            if let Some(record) = self.read_record_file(&path, stem)? {
                tokens.push(TokenInfo {
                    id: record.id,
                    spiffe_id: record.spiffe_id,
                    created_at: record.created_at,
                    expires_at: record.expires_at,
                    reusable: record.reusable,
                    used,
                });
            }
        }
        tokens.sort_by_key(|t| t.created_at);
        Ok(tokens)
    }

    /// Checks a presented token without consuming it. May read the token's record from disk.
    pub fn check(&self, token: &str) -> Result<CheckedToken, TokenError> {
        let (id, secret) = split_token(token)?;
        let record = match self.cached(id) {
            Some(record) => record,
            None => match self.read_record(id)? {
                Stored::Active(record) => Arc::new(record),
                Stored::Used(record) => {
                    // Only someone holding the secret learns that the token was used; anyone
                    // else is told it is unknown.
                    self.verify_secret(&record, secret)?;
                    return Err(TokenError::AlreadyUsed { id: id.to_string() });
                }
            },
        };
        self.verify(&record, secret)
    }

    /// Checks a token against the in-memory cache of reusable tokens only, without any I/O.
    /// `None` means the answer needs [`Self::check`].
    pub fn check_cached(&self, token: &str) -> Option<Result<CheckedToken, TokenError>> {
        let (id, secret) = match split_token(token) {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e)),
        };
        let record = self.cached(id)?;
        Some(self.verify(&record, secret))
    }

    /// A cached reusable token, as long as its record still exists: deleting the record
    /// (`hush ca token revoke`) withdraws the token at once. The check is one `stat` of a small
    /// local file, far cheaper than reading and parsing the record again.
    fn cached(&self, id: &str) -> Option<Arc<TokenRecord>> {
        let mut cache = self.reusable.lock().unwrap_or_else(|p| p.into_inner());
        let record = cache.get(id)?.clone();
        if self.record_path(id).exists() {
            Some(record)
        } else {
            cache.remove(id);
            None
        }
    }

    fn verify_secret(&self, record: &TokenRecord, secret: &str) -> Result<(), TokenError> {
        // Compare digests in constant time so the comparison leaks nothing about the secret.
        let presented = sha256_hex(secret.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            record.secret_sha256.as_bytes(),
        )
        .map_err(|_| TokenError::Unknown {
            id: record.id.clone(),
        })
    }

    fn verify(&self, record: &Arc<TokenRecord>, secret: &str) -> Result<CheckedToken, TokenError> {
        let id = &record.id;
        self.verify_secret(record, secret)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if record.expires_at <= now {
            let ago = humantime::format_duration(Duration::from_secs(
                (now - record.expires_at).unsigned_abs(),
            ));
            return Err(TokenError::Expired {
                id: id.clone(),
                ago: ago.to_string(),
            });
        }
        if record.reusable {
            self.reusable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), record.clone());
        }
        Ok(CheckedToken {
            id: id.clone(),
            spiffe_id: record.spiffe_id.clone(),
            reusable: record.reusable,
        })
    }

    /// Uses up a single-use token (a no-op for a reusable one). Fails if another request used it
    /// first.
    pub fn consume(&self, token: &CheckedToken) -> Result<(), TokenError> {
        if token.reusable {
            return Ok(());
        }
        let from = self.record_path(&token.id);
        let to = self.used_path(&token.id);
        match fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TokenError::AlreadyUsed {
                id: token.id.clone(),
            }),
            Err(source) => Err(self.io(&from, source)),
        }
    }

    fn read_record(&self, id: &str) -> Result<Stored, TokenError> {
        match self.read_record_file(&self.record_path(id), id)? {
            Some(record) => Ok(Stored::Active(record)),
            None => match self.read_record_file(&self.used_path(id), id)? {
                Some(record) => Ok(Stored::Used(record)),
                None => Err(TokenError::Unknown { id: id.into() }),
            },
        }
    }

    fn read_record_file(&self, path: &Path, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.io(path, source)),
        };
        let record: TokenRecord =
            serde_json::from_slice(&bytes).map_err(|e| TokenError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if record.id != id {
            return Err(TokenError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("record names id {}", record.id),
            });
        }
        Ok(Some(record))
    }

    fn used_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.used"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn io(&self, path: &Path, source: io::Error) -> TokenError {
        TokenError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Splits `hushjt.<id>.<secret>`; the id is checked to be exactly 16 lowercase hex digits, which
/// also keeps it from ever naming a path outside the token directory.
fn split_token(token: &str) -> Result<(&str, &str), TokenError> {
    let rest = token
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::Malformed)?;
    let (id, secret) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    if !is_token_id(id) || secret.is_empty() || secret.len() > 128 {
        return Err(TokenError::Malformed);
    }
    Ok((id, secret))
}

/// The public id of a well-formed join token, for logs and the audit log.
pub(crate) fn join_token_id(token: &str) -> Option<&str> {
    split_token(token).ok().map(|(id, _)| id)
}

pub(crate) fn is_token_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `token` is shaped as a hush join token (as opposed to, say, a Kubernetes JWT).
pub(crate) fn is_join_token(token: &str) -> bool {
    token.trim_start().starts_with(TOKEN_PREFIX)
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    crate::authority::hex(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        "spiffe://cluster.local/frontend".parse().unwrap()
    }

    #[test]
    fn single_use_token_works_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let minted = store.mint(&id(), Duration::from_secs(60), false).unwrap();
        let checked = store.check(&minted.token).unwrap();
        assert_eq!(checked.spiffe_id, id());
        store.consume(&checked).unwrap();
        assert!(matches!(
            store.check(&minted.token).unwrap_err(),
            TokenError::AlreadyUsed { .. }
        ));
        // A racing second request that checked before the first consumed still loses.
        assert!(matches!(
            store.consume(&checked).unwrap_err(),
            TokenError::AlreadyUsed { .. }
        ));
    }

    #[test]
    fn refuses_to_mint_useless_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let err = store.mint(&id(), Duration::ZERO, false).unwrap_err();
        assert!(err.to_string().contains("more than zero"), "{err}");
        let bare: SpiffeId = "spiffe://cluster.local".parse().unwrap();
        let err = store
            .mint(&bare, Duration::from_secs(60), false)
            .unwrap_err();
        assert!(err.to_string().contains("needs a path"), "{err}");
        let reserved: SpiffeId = "spiffe://cluster.local/hush/bundle-endpoint"
            .parse()
            .unwrap();
        let err = store
            .mint(&reserved, Duration::from_secs(60), false)
            .unwrap_err();
        assert!(err.to_string().contains("reserved for hush"), "{err}");
    }

    #[test]
    fn a_used_token_is_reported_only_to_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let minted = store.mint(&id(), Duration::from_secs(60), false).unwrap();
        store.consume(&store.check(&minted.token).unwrap()).unwrap();
        let guess = format!("{TOKEN_PREFIX}{}.{}", minted.id, "A".repeat(43));
        assert!(matches!(
            store.check(&guess).unwrap_err(),
            TokenError::Unknown { .. }
        ));
        assert!(matches!(
            store.check(&minted.token).unwrap_err(),
            TokenError::AlreadyUsed { .. }
        ));
    }

    #[test]
    fn revoke_withdraws_a_cached_reusable_token_and_list_shows_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let reusable = store.mint(&id(), Duration::from_secs(60), true).unwrap();
        let single = store.mint(&id(), Duration::from_secs(60), false).unwrap();
        store.check(&reusable.token).unwrap();
        store.consume(&store.check(&single.token).unwrap()).unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|t| t.id == single.id && t.used));
        assert!(
            listed
                .iter()
                .any(|t| t.id == reusable.id && t.reusable && !t.used)
        );

        store.revoke(&reusable.id).unwrap();
        assert!(store.check_cached(&reusable.token).is_none());
        assert!(matches!(
            store.check(&reusable.token).unwrap_err(),
            TokenError::Unknown { .. }
        ));
        assert!(matches!(
            store.revoke(&reusable.id).unwrap_err(),
            TokenError::Unknown { .. }
        ));
        assert!(matches!(
            store.revoke("../x").unwrap_err(),
            TokenError::Malformed
        ));
    }

    #[test]
    fn reusable_token_works_many_times() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let minted = store.mint(&id(), Duration::from_secs(60), true).unwrap();
        assert!(store.check_cached(&minted.token).is_none(), "not read yet");
        for _ in 0..3 {
            let checked = store.check(&minted.token).unwrap();
            store.consume(&checked).unwrap();
        }
        let cached = store
            .check_cached(&minted.token)
            .expect("cached after first use");
        assert_eq!(cached.unwrap().spiffe_id, id());
        let forged = format!("{TOKEN_PREFIX}{}.{}", minted.id, "B".repeat(43));
        assert!(matches!(
            store.check_cached(&forged),
            Some(Err(TokenError::Unknown { .. }))
        ));
    }

    #[test]
    fn only_the_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let minted = store.mint(&id(), Duration::from_secs(60), false).unwrap();
        let secret = minted.token.rsplit('.').next().unwrap();
        let stored = fs::read_to_string(store.record_path(&minted.id)).unwrap();
        assert!(!stored.contains(secret));
        assert!(!format!("{minted:?}").contains(secret));
    }

    #[test]
    fn expired_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let minted = store.mint(&id(), Duration::from_secs(1), false).unwrap();
        // Age the record instead of waiting for it.
        let path = store.record_path(&minted.id);
        let mut record: TokenRecord = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        // Half a minute into its second hour: the words do not depend on how long the
        // check takes on a loaded machine.
        record.expires_at = OffsetDateTime::now_utc().unix_timestamp() - 3630;
        fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
        let err = store.check(&minted.token).unwrap_err();
        assert!(matches!(err, TokenError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("expired 1h"), "{err}");
    }

    #[test]
    fn wrong_secret_and_bad_shapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = JoinTokenStore::new(dir.path());
        let minted = store.mint(&id(), Duration::from_secs(60), true).unwrap();
        let forged = format!("{TOKEN_PREFIX}{}.{}", minted.id, "A".repeat(43));
        assert!(matches!(
            store.check(&forged).unwrap_err(),
            TokenError::Unknown { .. }
        ));
        for bad in [
            "",
            "hushjt.",
            "hushjt.0123456789abcdef",
            "hushjt.../../etc/passwd.x",
            "hushjt.0123456789ABCDEF.x",
            "eyJhbGciOiJSUzI1NiJ9.e30.sig",
        ] {
            assert!(
                matches!(store.check(bad).unwrap_err(), TokenError::Malformed),
                "{bad}"
            );
        }
        let unknown = format!("{TOKEN_PREFIX}0123456789abcdef.secret");
        assert!(matches!(
            store.check(&unknown).unwrap_err(),
            TokenError::Unknown { .. }
        ));
    }
}
