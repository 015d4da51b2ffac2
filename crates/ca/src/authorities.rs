//! The CA's authorities over its lifetime: every root, intermediate and JWT signing key it has
//! had, and the state of each (the model behind `hush ca authorities`, `rotate`, `activate`,
//! `taint` and `revoke`).
//!
//! A JWT authority (kind `jwt`) is a key of its own that signs JWT-SVIDs, never the
//! intermediate's (decision 38, `docs/decisions/0038-jwt-authorities.md`). It has no
//! certificate: its public key is published in the JWT keys of the trust bundle from the
//! moment it is prepared, and it follows the same states as the X.509 authorities, on a
//! rotation of its own: a prepared JWT authority neither waits for nor blocks an X.509 one.
//!
//! An authority is named by the first 16 hex digits of the SHA-256 of its public key
//! (SubjectPublicKeyInfo): stable across re-issuance of the same key, short enough to type, and
//! the same on every replica that reads the directory. A directory written before authorities
//! existed (one root, one intermediate, no manifest) is read as a manifest with both active.
//!
//! Everything here is pure: the transitions take the time as an argument and change only the
//! [`Manifest`] value, so every rule and refusal is tested without files or clocks. The
//! directory ([`crate::CaDir`]) makes the keys and certificates and writes the result.
//!
//! The life of an authority:
//!
//! ```text
//! prepared ──activate──▶ active ──(a successor is activated)──▶ old ──taint──▶ tainted
//!     │                                                          │               │
//!     └──────────────────────────revoke──────────────────────────┴───────────────┴──▶ revoked
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::signing_key::{Pkcs11Error, Pkcs11Uri};

/// The manifest's schema version.
pub const MANIFEST_VERSION: u32 = 1;

/// The shortest prefix of an ID the commands accept: long enough that a typo does not name
/// another authority by chance.
pub const MIN_ID_PREFIX: usize = 6;

/// How long a new root is published before it may sign, unless the manifest says otherwise:
/// two of a sidecar's default 5-minute bundle refreshes, plus a replica's reload and a
/// kubelet's Secret sync (a minute or two).
pub const DEFAULT_PUBLISH_WAIT_SECONDS: u64 = 15 * 60;

/// The longest workload certificate lifetime, unless the manifest says otherwise (the same as
/// `hush ca serve --max-ttl`'s default).
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 24 * 3600;

/// An authority's name: 16 lower-case hex digits of SHA-256 over its SubjectPublicKeyInfo.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthorityId(String);

impl AuthorityId {
    /// The ID of the key `certificate` (DER) certifies.
    pub fn of_certificate(certificate: &[u8]) -> Result<Self, AuthoritiesError> {
        Ok(Self::of_public_key(parse(certificate)?.public_key().raw))
    }

    /// The ID of a SubjectPublicKeyInfo (DER).
    pub fn of_public_key(spki: &[u8]) -> Self {
        Self(hush_identity::authority_id_of_public_key(spki))
    }

    /// The 16 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 8 digits, enough to tell authorities apart in a log line.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(8)]
    }
}

impl fmt::Display for AuthorityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A root (self-signed, in the trust bundle), an intermediate (signs workload certificates) or
/// a JWT authority (signs JWT-SVIDs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Self-signed; in the trust bundle.
    Root,
    /// Issued by a root; signs workload certificates.
    Intermediate,
    /// A P-256 key that signs JWT-SVIDs (ES256); its public key is in the bundle's JWT keys.
    Jwt,
}

impl Kind {
    /// `root`, `intermediate` or `jwt`, as the manifest and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Intermediate => "intermediate",
            Self::Jwt => "jwt",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where an authority is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Staged: a root is already in the trust bundle; nothing is signed with it yet.
    Prepared,
    /// Signs (the one active intermediate, and its root).
    Active,
    /// Replaced by a successor; still trusted while certificates under it live.
    Old,
    /// Still trusted, but sidecars renew away from certificates under it at once.
    Tainted,
    /// Out of the trust bundle; its key is deleted.
    Revoked,
}

impl State {
    /// The state as the manifest and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Old => "old",
            Self::Tainted => "tainted",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One authority as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityEntry {
    /// Its name.
    pub id: AuthorityId,
    /// Root, intermediate or JWT authority.
    pub kind: Kind,
    /// Where it is in its life.
    pub state: State,
    /// The certificate's file name in the CA directory; for a JWT authority, which has no
    /// certificate, its public key's (PEM `PUBLIC KEY`).
    pub cert: String,
    /// The key's file name in the CA directory, while there is one (a root's key may be kept
    /// elsewhere; a revoked authority's is deleted). `None` when the key is in a token.
    pub key: Option<String>,
    /// Where the key is when it is not a file: a `pkcs11:` URI naming the token and the key's
    /// label, with its PIN in a file (`pin-source=file:`), never in the URI. Kept after
    /// revocation, to say which token object to delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_uri: Option<String>,
    /// The issuing root of an intermediate.
    pub issuer: Option<AuthorityId>,
    /// The certificate's NotBefore (Unix seconds); for a JWT authority, when it was made.
    pub not_before: i64,
    /// The certificate's NotAfter (Unix seconds); for a JWT authority, the end of its
    /// lifetime, past which the CA signs no token with it.
    pub not_after: i64,
    /// When it was staged (Unix seconds).
    pub prepared_at: Option<i64>,
    /// When it began to sign (or, for a root, to be the active root).
    pub activated_at: Option<i64>,
    /// When a successor replaced it.
    pub retired_at: Option<i64>,
    /// When it was tainted.
    pub tainted_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

impl AuthorityEntry {
    /// A freshly made authority, `prepared` at `now`, stored under the conventional names
    /// `<kind>-<id>.pem` and `<kind>-<id>.key`.
    pub fn prepared(
        kind: Kind,
        certificate: &[u8],
        issuer: Option<AuthorityId>,
        now: i64,
    ) -> Result<Self, AuthoritiesError> {
        let parsed = parse(certificate)?;
        let id = AuthorityId::of_public_key(parsed.public_key().raw);
        Ok(Self {
            cert: format!("{kind}-{id}.pem"),
            key: Some(format!("{kind}-{id}.key")),
            key_uri: None,
            id,
            kind,
            state: State::Prepared,
            issuer,
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
            prepared_at: Some(now),
            activated_at: None,
            retired_at: None,
            tainted_at: None,
            revoked_at: None,
        })
    }

    /// A freshly made JWT authority for the key whose SubjectPublicKeyInfo (DER) is `spki`,
    /// `prepared` at `now` and usable until `not_after`, stored as `jwt-<id>.pem` (its public
    /// key) and `jwt-<id>.key`.
    pub fn prepared_jwt(spki: &[u8], now: i64, not_after: i64) -> Self {
        let id = AuthorityId::of_public_key(spki);
        Self {
            cert: format!("jwt-{id}.pem"),
            key: Some(format!("jwt-{id}.key")),
            key_uri: None,
            id,
            kind: Kind::Jwt,
            state: State::Prepared,
            issuer: None,
            not_before: now,
            not_after,
            prepared_at: Some(now),
            activated_at: None,
            retired_at: None,
            tainted_at: None,
            revoked_at: None,
        }
    }

    /// Whether it is in the trust bundle (every state but revoked): a root among the roots,
    /// a JWT authority among the JWT keys.
    pub fn is_trusted(&self) -> bool {
        self.state != State::Revoked
    }

    fn activate(&mut self, now: i64) {
        self.state = State::Active;
        self.activated_at = Some(now);
    }

    fn retire(&mut self, now: i64) {
        self.state = State::Old;
        self.retired_at = Some(now);
    }
}

/// Every authority of the CA, the rules its commands follow, and the generation of this
/// record (up by one on every change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The trust domain every authority serves.
    pub trust_domain: String,
    /// Up by one on every change; a CA never goes back to a lower one.
    pub generation: u64,
    /// How long a change to the directory may take to reach every CA replica and every
    /// sidecar: a new root is published this long before it may sign, and a retired
    /// intermediate may still be signing for this long on a replica that has not reloaded.
    pub publish_wait_seconds: u64,
    /// The longest lifetime of a workload certificate; `hush ca serve` refuses a longer
    /// `--max-ttl`, so that "nothing under a retired authority lives past this" holds.
    pub max_ttl_seconds: u64,
    /// Every authority, in the order they were made.
    pub authorities: Vec<AuthorityEntry>,
}

/// Why authorities cannot be read or changed. Each message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum AuthoritiesError {
    /// A file that should hold a certificate does not.
    #[error("not an X.509 certificate: {0}")]
    Certificate(String),
    /// The manifest breaks a rule that every manifest keeps.
    #[error("the authorities manifest is inconsistent: {0}")]
    Inconsistent(String),
    /// The manifest was written by a newer hush.
    #[error(
        "the authorities manifest has version {0}, but this hush reads version {MANIFEST_VERSION}: upgrade hush"
    )]
    Version(u32),
    /// The ID given is too short to be safe.
    #[error("authority ID {0:?} is too short: give at least {MIN_ID_PREFIX} hex digits")]
    ShortId(String),
    /// No authority has that ID.
    #[error("no authority has an ID starting with {0:?} (see `hush ca authorities`)")]
    NotFound(String),
    /// Several authorities share the prefix.
    #[error("{prefix:?} names several authorities ({}); give more digits", .matches.join(", "))]
    Ambiguous {
        /// What was given.
        prefix: String,
        /// The IDs it matches.
        matches: Vec<String>,
    },
    /// A staged authority is waiting already.
    #[error(
        "{kind} {id} is already prepared: activate it (`hush ca activate`) or revoke it (`hush ca revoke --authority {id}`) first"
    )]
    AlreadyPrepared {
        /// The waiting authority.
        id: AuthorityId,
        /// Its kind.
        kind: Kind,
    },
    /// `activate` with nothing staged.
    #[error(
        "nothing is prepared: stage an intermediate with `hush ca rotate intermediate` or `hush ca rotate root`, or a JWT authority with `hush ca rotate jwt`"
    )]
    NothingPrepared,
    /// A new root (or JWT authority) has not been published long enough for every sidecar to
    /// trust it.
    #[error(
        "{kind} {id} was published at {}, and sidecars may not all trust it before {} (publish wait {}): activate then, or pass --force if every sidecar already has it",
        utc(*.published_at), utc(*.activate_after), seconds(*.publish_wait)
    )]
    NotPublishedLongEnough {
        /// Root or JWT authority.
        kind: Kind,
        /// The new authority.
        id: AuthorityId,
        /// When it entered the bundle.
        published_at: i64,
        /// When it may sign.
        activate_after: i64,
        /// The manifest's publish wait.
        publish_wait: u64,
    },
    /// The certificate to activate is not valid now.
    #[error("{kind} {id} is not valid now (valid {} to {}): make a new one", utc(*.not_before), utc(*.not_after))]
    NotValidNow {
        /// The authority.
        id: AuthorityId,
        /// Its kind.
        kind: Kind,
        /// Its NotBefore.
        not_before: i64,
        /// Its NotAfter.
        not_after: i64,
    },
    /// A command that does not apply to the authority's state.
    #[error("{kind} {id} is {state}: {hint}")]
    WrongState {
        /// The authority.
        id: AuthorityId,
        /// Its kind.
        kind: Kind,
        /// Its state.
        state: State,
        /// What to do instead.
        hint: &'static str,
    },
    /// Revoking the last trusted root would leave the mesh with nothing to trust.
    #[error("root {0} is the last root in the trust bundle; it cannot be revoked")]
    LastRoot(AuthorityId),
    /// A certificate issued under the authority may still be in use.
    #[error(
        "certificates under {kind} {id} may live until {} (retired at {} + publish wait + max TTL): wait until then, or pass --force to cut them off now",
        utc(*.live_until), utc(*.retired_at)
    )]
    StillLive {
        /// The authority.
        id: AuthorityId,
        /// Its kind.
        kind: Kind,
        /// When it was retired.
        retired_at: i64,
        /// Until when certificates under it may live.
        live_until: i64,
    },
}

/// What [`Manifest::activate_jwt`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtActivation {
    /// The JWT authority that signs from now on.
    pub jwt: AuthorityId,
    /// The one it replaced, now `old`.
    pub retired: Option<AuthorityId>,
    /// Whether the publish wait was skipped with `--force`.
    pub forced: bool,
}

/// What [`Manifest::activate`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// The intermediate that signs from now on.
    pub intermediate: AuthorityId,
    /// The root that became active with it, when it was a new root.
    pub root: Option<AuthorityId>,
    /// The authorities that became `old`.
    pub retired: Vec<AuthorityId>,
    /// Whether the publish wait was skipped with `--force`.
    pub forced: bool,
}

impl Manifest {
    /// A manifest for a new CA: `root` and `intermediate` (made by `hush ca init`) active from
    /// `now`.
    pub fn new(
        trust_domain: &str,
        mut root: AuthorityEntry,
        mut intermediate: AuthorityEntry,
        now: i64,
    ) -> Self {
        root.activate(now);
        intermediate.activate(now);
        Self {
            version: MANIFEST_VERSION,
            trust_domain: trust_domain.to_owned(),
            generation: 1,
            publish_wait_seconds: DEFAULT_PUBLISH_WAIT_SECONDS,
            max_ttl_seconds: DEFAULT_MAX_TTL_SECONDS,
            authorities: vec![root, intermediate],
        }
    }

    /// The manifest a directory written before authorities existed stands for, read from its
    /// `bundle.pem` (`roots`) and `intermediate.pem`: the root that signed the intermediate and
    /// the intermediate are active, any other root of the bundle is old. Generation 0, so any
    /// manifest written later supersedes it.
    pub fn legacy(
        trust_domain: &str,
        roots: &[&[u8]],
        intermediate: &[u8],
    ) -> Result<Self, AuthoritiesError> {
        let intermediate_cert = parse(intermediate)?;
        let mut authorities = Vec::with_capacity(roots.len() + 1);
        let mut issuer = None;
        for der in roots {
            let root = parse(der)?;
            let signed_it = intermediate_cert
                .verify_signature(Some(root.public_key()))
                .is_ok();
            let mut entry = legacy_entry(Kind::Root, &root, "bundle.pem", None);
            if signed_it && issuer.is_none() {
                issuer = Some(entry.id.clone());
            } else {
                entry.state = State::Old;
                entry.retired_at = entry.activated_at;
            }
            authorities.push(entry);
        }
        let Some(issuer) = issuer else {
            return Err(AuthoritiesError::Inconsistent(
                "intermediate.pem is not signed by any root of bundle.pem".into(),
            ));
        };
        authorities.push(legacy_entry(
            Kind::Intermediate,
            &intermediate_cert,
            "intermediate.pem",
            Some(issuer),
        ));
        Ok(Self {
            version: MANIFEST_VERSION,
            trust_domain: trust_domain.to_owned(),
            generation: 0,
            publish_wait_seconds: DEFAULT_PUBLISH_WAIT_SECONDS,
            max_ttl_seconds: DEFAULT_MAX_TTL_SECONDS,
            authorities,
        })
    }

    /// Checks the rules every manifest keeps: the version; unique IDs; safe file names; exactly
    /// one active root and one active intermediate, the latter issued by the former; every
    /// intermediate's issuer is a root of the manifest; at most one prepared intermediate.
    pub fn validate(&self) -> Result<(), AuthoritiesError> {
        if self.version != MANIFEST_VERSION {
            return Err(AuthoritiesError::Version(self.version));
        }
        let bad = |what: String| Err(AuthoritiesError::Inconsistent(what));
        for (i, a) in self.authorities.iter().enumerate() {
            // IDs are what every command and log line prints and shortens: only the form
            // hush writes is taken from a file.
            let well_formed = a.id.0.len() == 16
                && a.id
                    .0
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !well_formed {
                return bad(format!(
                    "authority ID {:?} is not 16 lower-case hex digits",
                    a.id.0
                ));
            }
            if self.authorities[..i].iter().any(|b| b.id == a.id) {
                return bad(format!("authority {} is listed twice", a.id));
            }
            for name in std::iter::once(&a.cert).chain(a.key.iter()) {
                if !is_plain_file_name(name) {
                    return bad(format!(
                        "authority {} names file {name:?}, which is not a plain file name in the directory",
                        a.id
                    ));
                }
            }
            if let Some(uri) = &a.key_uri {
                if a.key.is_some() {
                    return bad(format!(
                        "authority {} has both a key file and a key_uri; its key is in one place",
                        a.id
                    ));
                }
                if let Err(reason) = check_stored_key_uri(uri) {
                    return bad(format!("authority {}'s key_uri: {reason}", a.id));
                }
            }
            match (a.kind, &a.issuer) {
                (Kind::Root, Some(_)) => return bad(format!("root {} has an issuer", a.id)),
                (Kind::Jwt, Some(_)) => {
                    return bad(format!("JWT authority {} has an issuer", a.id));
                }
                (Kind::Jwt, None) => {
                    if a.key_uri.is_some() {
                        return bad(format!(
                            "JWT authority {} has a key_uri; JWT keys are files",
                            a.id
                        ));
                    }
                }
                (Kind::Intermediate, None) => {
                    return bad(format!("intermediate {} has no issuer", a.id));
                }
                (Kind::Intermediate, Some(issuer)) => {
                    if !self
                        .authorities
                        .iter()
                        .any(|r| r.kind == Kind::Root && &r.id == issuer)
                    {
                        return bad(format!(
                            "intermediate {}'s issuer {issuer} is not a root of the manifest",
                            a.id
                        ));
                    }
                }
                (Kind::Root, None) => {}
            }
        }
        let count = |kind, state| {
            self.authorities
                .iter()
                .filter(|a| a.kind == kind && a.state == state)
                .count()
        };
        for kind in [Kind::Root, Kind::Intermediate] {
            let active = count(kind, State::Active);
            if active != 1 {
                return bad(format!("{active} active {kind}s; exactly one is needed"));
            }
        }
        if count(Kind::Intermediate, State::Prepared) > 1 {
            return bad("more than one prepared intermediate".into());
        }
        // None is fine: a CA made before JWT-SVIDs has none until `hush ca rotate jwt`.
        if count(Kind::Jwt, State::Active) > 1 {
            return bad("more than one active JWT authority".into());
        }
        if count(Kind::Jwt, State::Prepared) > 1 {
            return bad("more than one prepared JWT authority".into());
        }
        let (root, intermediate) = self.active();
        if intermediate.issuer.as_ref() != Some(&root.id) {
            return bad(format!(
                "the active intermediate {} is not issued by the active root {}",
                intermediate.id, root.id
            ));
        }
        Ok(())
    }

    /// The active root and intermediate. Call on a validated manifest.
    ///
    /// # Panics
    ///
    /// On a manifest that [`Self::validate`] refuses.
    pub fn active(&self) -> (&AuthorityEntry, &AuthorityEntry) {
        let find = |kind| {
            self.authorities
                .iter()
                .find(|a| a.kind == kind && a.state == State::Active)
                .expect("a validated manifest has an active root and intermediate")
        };
        (find(Kind::Root), find(Kind::Intermediate))
    }

    /// The authority that signs workload certificates.
    pub fn active_intermediate(&self) -> Option<&AuthorityEntry> {
        self.authorities
            .iter()
            .find(|a| a.kind == Kind::Intermediate && a.state == State::Active)
    }

    /// The JWT authority that signs JWT-SVIDs; `None` in a CA that has none yet.
    pub fn active_jwt(&self) -> Option<&AuthorityEntry> {
        self.authorities
            .iter()
            .find(|a| a.kind == Kind::Jwt && a.state == State::Active)
    }

    /// The JWT authority waiting for `activate`, if any.
    pub fn prepared_jwt(&self) -> Option<&AuthorityEntry> {
        self.authorities
            .iter()
            .find(|a| a.kind == Kind::Jwt && a.state == State::Prepared)
    }

    /// The JWT authorities whose public keys are published: every one not revoked.
    pub fn trusted_jwt(&self) -> impl Iterator<Item = &AuthorityEntry> {
        self.authorities
            .iter()
            .filter(|a| a.kind == Kind::Jwt && a.is_trusted())
    }

    /// When the prepared JWT authority may be activated: after the publish wait, so that
    /// every validator holds its public key before a token signed with it reaches one; at
    /// once when the CA has no active JWT authority (a directory made before JWT-SVIDs), since
    /// no token of this CA exists yet that a validator could be asked to accept. `None` when
    /// none is prepared.
    pub fn jwt_activate_after(&self) -> Option<i64> {
        let prepared = self.prepared_jwt()?;
        Some(match self.active_jwt() {
            Some(_) => self.publish_deadline(prepared),
            None => prepared.prepared_at.unwrap_or(prepared.not_before),
        })
    }

    /// The authority with this exact ID.
    pub fn get(&self, id: &AuthorityId) -> Option<&AuthorityEntry> {
        self.authorities.iter().find(|a| &a.id == id)
    }

    /// The authority whose ID starts with `prefix` (at least [`MIN_ID_PREFIX`] hex digits).
    pub fn find(&self, prefix: &str) -> Result<&AuthorityEntry, AuthoritiesError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < MIN_ID_PREFIX {
            return Err(AuthoritiesError::ShortId(prefix));
        }
        let matches: Vec<&AuthorityEntry> = self
            .authorities
            .iter()
            .filter(|a| a.id.as_str().starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [] => Err(AuthoritiesError::NotFound(prefix)),
            [one] => Ok(one),
            many => Err(AuthoritiesError::Ambiguous {
                prefix,
                matches: many.iter().map(|a| a.id.to_string()).collect(),
            }),
        }
    }

    /// Every root in the trust bundle: the active root first, then the others in the order
    /// they were made.
    pub fn trusted_roots(&self) -> Vec<&AuthorityEntry> {
        let mut roots: Vec<&AuthorityEntry> = self
            .authorities
            .iter()
            .filter(|a| a.kind == Kind::Root && a.is_trusted())
            .collect();
        roots.sort_by_key(|a| a.state != State::Active);
        roots
    }

    /// The intermediates a root issued.
    pub fn issued_by<'a>(
        &'a self,
        root: &'a AuthorityId,
    ) -> impl Iterator<Item = &'a AuthorityEntry> + 'a {
        self.authorities
            .iter()
            .filter(move |a| a.issuer.as_ref() == Some(root))
    }

    /// The staged authority waiting for `activate`, if any: the prepared root when a root
    /// rotation is staged, else the prepared intermediate.
    pub fn prepared(&self) -> Option<&AuthorityEntry> {
        let prepared = |kind| {
            self.authorities
                .iter()
                .find(|a| a.kind == kind && a.state == State::Prepared)
        };
        prepared(Kind::Root).or_else(|| prepared(Kind::Intermediate))
    }

    /// When the prepared intermediate may be activated: at once for one under the active root,
    /// after the publish wait for one under a new root. `None` when nothing is prepared.
    pub fn activate_after(&self) -> Option<i64> {
        let intermediate = self
            .authorities
            .iter()
            .find(|a| a.kind == Kind::Intermediate && a.state == State::Prepared)?;
        let root = intermediate.issuer.as_ref().and_then(|id| self.get(id))?;
        Some(match root.state {
            State::Prepared => self.publish_deadline(root),
            _ => intermediate.prepared_at.unwrap_or(intermediate.not_before),
        })
    }

    fn publish_deadline(&self, root: &AuthorityEntry) -> i64 {
        root.prepared_at
            .unwrap_or(root.not_before)
            .saturating_add(seconds_i64(self.publish_wait_seconds))
    }

    /// Until when a certificate issued under `entry` may still be in use: for a retired
    /// intermediate, its retirement plus the publish wait (a replica that has not reloaded may
    /// sign until then) plus the longest workload lifetime, capped by its own expiry; for a
    /// root, the latest of its intermediates. `None` while nothing bounds it (active) or when
    /// nothing was ever issued under it (prepared).
    pub fn live_until(&self, entry: &AuthorityEntry) -> Option<i64> {
        match entry.kind {
            // A JWT authority bounds its tokens as an intermediate its certificates: they live
            // no longer than the CA's longest lifetime, which `hush ca serve` keeps
            // `--jwt-max-ttl` under.
            Kind::Intermediate | Kind::Jwt => {
                entry.activated_at?;
                let retired = entry.retired_at?;
                let bound = retired
                    .saturating_add(seconds_i64(self.publish_wait_seconds))
                    .saturating_add(seconds_i64(self.max_ttl_seconds));
                Some(bound.min(entry.not_after))
            }
            Kind::Root => {
                let mut latest: Option<i64> = None;
                for intermediate in self.issued_by(&entry.id) {
                    if intermediate.activated_at.is_none() {
                        continue;
                    }
                    if intermediate.state == State::Active {
                        return None;
                    }
                    let until = self.live_until(intermediate);
                    latest = latest.max(until);
                }
                latest
            }
        }
    }

    /// Stages a new intermediate (made by the caller, signed by the active root).
    pub fn stage_intermediate(&mut self, entry: AuthorityEntry) -> Result<(), AuthoritiesError> {
        self.refuse_if_prepared()?;
        let (root, _) = self.active();
        if entry.kind != Kind::Intermediate || entry.issuer.as_ref() != Some(&root.id) {
            return Err(AuthoritiesError::Inconsistent(format!(
                "a new intermediate must be issued by the active root {}",
                root.id
            )));
        }
        self.add(entry)
    }

    /// Stages a new root and an intermediate under it. The root enters the trust bundle now;
    /// the pair signs only after [`Self::activate`].
    pub fn stage_root(
        &mut self,
        root: AuthorityEntry,
        intermediate: AuthorityEntry,
    ) -> Result<(), AuthoritiesError> {
        self.refuse_if_prepared()?;
        if root.kind != Kind::Root || intermediate.issuer.as_ref() != Some(&root.id) {
            return Err(AuthoritiesError::Inconsistent(
                "a new root must come with an intermediate it issued".into(),
            ));
        }
        self.add(root)?;
        self.add(intermediate)
    }

    /// Stages a new JWT authority: its public key is published from now on; it signs only
    /// after [`Self::activate_jwt`].
    pub fn stage_jwt(&mut self, entry: AuthorityEntry) -> Result<(), AuthoritiesError> {
        if let Some(waiting) = self.prepared_jwt() {
            return Err(AuthoritiesError::AlreadyPrepared {
                id: waiting.id.clone(),
                kind: waiting.kind,
            });
        }
        if entry.kind != Kind::Jwt || entry.issuer.is_some() {
            return Err(AuthoritiesError::Inconsistent(
                "a new JWT authority has no issuer".into(),
            ));
        }
        self.add(entry)
    }

    /// Makes the prepared JWT authority the one that signs JWT-SVIDs; the one before it
    /// becomes `old` (its public key stays published, so tokens it signed still validate). It
    /// must have been published for the publish wait first, unless `force` or the CA had no
    /// active JWT authority ([`Self::jwt_activate_after`]).
    pub fn activate_jwt(
        &mut self,
        now: i64,
        force: bool,
    ) -> Result<JwtActivation, AuthoritiesError> {
        let Some(next) = self
            .authorities
            .iter()
            .position(|a| a.kind == Kind::Jwt && a.state == State::Prepared)
        else {
            return Err(AuthoritiesError::NothingPrepared);
        };
        let entry = &self.authorities[next];
        if now < entry.not_before || now >= entry.not_after {
            return Err(AuthoritiesError::NotValidNow {
                id: entry.id.clone(),
                kind: entry.kind,
                not_before: entry.not_before,
                not_after: entry.not_after,
            });
        }
        let mut forced = false;
        if let Some(activate_after) = self.jwt_activate_after()
            && now < activate_after
        {
            if !force {
                let entry = &self.authorities[next];
                return Err(AuthoritiesError::NotPublishedLongEnough {
                    kind: Kind::Jwt,
                    id: entry.id.clone(),
                    published_at: entry.prepared_at.unwrap_or(entry.not_before),
                    activate_after,
                    publish_wait: self.publish_wait_seconds,
                });
            }
            forced = true;
        }
        let mut retired = None;
        for a in &mut self.authorities {
            if a.kind == Kind::Jwt && a.state == State::Active {
                a.retire(now);
                retired = Some(a.id.clone());
            }
        }
        self.authorities[next].activate(now);
        Ok(JwtActivation {
            jwt: self.authorities[next].id.clone(),
            retired,
            forced,
        })
    }

    /// Refuses to stage anything while an authority is prepared already.
    pub(crate) fn refuse_if_prepared(&self) -> Result<(), AuthoritiesError> {
        match self.prepared() {
            Some(waiting) => Err(AuthoritiesError::AlreadyPrepared {
                id: waiting.id.clone(),
                kind: waiting.kind,
            }),
            None => Ok(()),
        }
    }

    fn add(&mut self, entry: AuthorityEntry) -> Result<(), AuthoritiesError> {
        if let Some(existing) = self.get(&entry.id) {
            return Err(AuthoritiesError::Inconsistent(format!(
                "the new {} has the key of {} {}, which is {}",
                entry.kind, existing.kind, existing.id, existing.state
            )));
        }
        self.authorities.push(entry);
        Ok(())
    }

    /// Makes the prepared intermediate the one that signs, and its root the active root when it
    /// is a new one; their predecessors become `old`. A new root must have been published for
    /// the publish wait first, unless `force`.
    pub fn activate(&mut self, now: i64, force: bool) -> Result<Activation, AuthoritiesError> {
        let Some(next) = self
            .authorities
            .iter()
            .position(|a| a.kind == Kind::Intermediate && a.state == State::Prepared)
        else {
            return Err(match self.prepared() {
                // A prepared root whose intermediate was revoked cannot sign anything.
                Some(root) => AuthoritiesError::WrongState {
                    id: root.id.clone(),
                    kind: root.kind,
                    state: root.state,
                    hint: "it has no prepared intermediate left to activate; revoke it and run `hush ca rotate root` again",
                },
                None => AuthoritiesError::NothingPrepared,
            });
        };
        let issuer = self.authorities[next].issuer.clone().ok_or_else(|| {
            AuthoritiesError::Inconsistent("an intermediate has no issuer".into())
        })?;
        let root_index = self
            .authorities
            .iter()
            .position(|a| a.id == issuer)
            .ok_or_else(|| {
                AuthoritiesError::Inconsistent(format!("issuer {issuer} is not in the manifest"))
            })?;
        let new_root = self.authorities[root_index].state == State::Prepared;
        if self.authorities[root_index].state != State::Active && !new_root {
            let root = &self.authorities[root_index];
            return Err(AuthoritiesError::WrongState {
                id: root.id.clone(),
                kind: root.kind,
                state: root.state,
                hint: "the prepared intermediate's root no longer signs; revoke the intermediate and rotate again",
            });
        }
        for index in [next, root_index] {
            let a = &self.authorities[index];
            if now < a.not_before || now >= a.not_after {
                return Err(AuthoritiesError::NotValidNow {
                    id: a.id.clone(),
                    kind: a.kind,
                    not_before: a.not_before,
                    not_after: a.not_after,
                });
            }
        }
        let mut forced = false;
        if new_root {
            let root = &self.authorities[root_index];
            let activate_after = self.publish_deadline(root);
            if now < activate_after {
                if !force {
                    return Err(AuthoritiesError::NotPublishedLongEnough {
                        kind: root.kind,
                        id: root.id.clone(),
                        published_at: root.prepared_at.unwrap_or(root.not_before),
                        activate_after,
                        publish_wait: self.publish_wait_seconds,
                    });
                }
                forced = true;
            }
        }
        let mut retired = Vec::new();
        for a in &mut self.authorities {
            let replaced = a.state == State::Active
                && (a.kind == Kind::Intermediate || (new_root && a.kind == Kind::Root));
            if replaced {
                a.retire(now);
                retired.push(a.id.clone());
            }
        }
        self.authorities[next].activate(now);
        if new_root {
            self.authorities[root_index].activate(now);
        }
        Ok(Activation {
            intermediate: self.authorities[next].id.clone(),
            root: new_root.then(|| self.authorities[root_index].id.clone()),
            retired,
            forced,
        })
    }

    /// Taints an old authority: sidecars holding certificates under it renew at once rather
    /// than at half-life. A root's intermediates are tainted with it. Returns every ID tainted.
    pub fn taint(&mut self, prefix: &str, now: i64) -> Result<Vec<AuthorityId>, AuthoritiesError> {
        let target = self.find(prefix)?.clone();
        match target.state {
            State::Old => {}
            State::Active => {
                return Err(wrong_state(
                    &target,
                    "activate a successor first (`hush ca rotate …`, then `hush ca activate`)",
                ));
            }
            State::Prepared => {
                return Err(wrong_state(
                    &target,
                    "nothing was issued under it; revoke it instead",
                ));
            }
            State::Tainted => return Err(wrong_state(&target, "it is tainted already")),
            State::Revoked => return Err(wrong_state(&target, "it is no longer trusted at all")),
        }
        let mut tainted = Vec::new();
        for a in &mut self.authorities {
            let under = a.id == target.id || a.issuer.as_ref() == Some(&target.id);
            if under && a.state == State::Old {
                a.state = State::Tainted;
                a.tainted_at = Some(now);
                tainted.push(a.id.clone());
            }
        }
        Ok(tainted)
    }

    /// Revokes an authority: a root leaves the trust bundle, and its key file is to be
    /// deleted; a root's intermediates are revoked with it. Refused for the active authorities,
    /// for the last trusted root, and — unless `force` — while a certificate issued under it
    /// may still be in use. Returns every ID revoked.
    pub fn revoke(
        &mut self,
        prefix: &str,
        now: i64,
        force: bool,
    ) -> Result<Vec<AuthorityId>, AuthoritiesError> {
        let target = self.find(prefix)?.clone();
        match target.state {
            State::Active => {
                return Err(wrong_state(
                    &target,
                    "a CA cannot stop trusting what it signs with; rotate, activate the successor, then revoke",
                ));
            }
            State::Revoked => return Err(wrong_state(&target, "it is revoked already")),
            State::Prepared | State::Old | State::Tainted => {}
        }
        if target.kind == Kind::Root
            && !self
                .authorities
                .iter()
                .any(|a| a.kind == Kind::Root && a.is_trusted() && a.id != target.id)
        {
            return Err(AuthoritiesError::LastRoot(target.id));
        }
        if !force
            && let Some(live_until) = self.live_until(&target)
            && now < live_until
        {
            let retired_at = match target.kind {
                Kind::Intermediate | Kind::Jwt => target.retired_at,
                Kind::Root => self
                    .issued_by(&target.id)
                    .filter_map(|a| a.retired_at)
                    .max(),
            };
            return Err(AuthoritiesError::StillLive {
                id: target.id,
                kind: target.kind,
                retired_at: retired_at.unwrap_or(now),
                live_until,
            });
        }
        let mut revoked = Vec::new();
        for a in &mut self.authorities {
            let under = a.id == target.id || a.issuer.as_ref() == Some(&target.id);
            if under && a.state != State::Revoked {
                a.state = State::Revoked;
                a.revoked_at = Some(now);
                revoked.push(a.id.clone());
            }
        }
        Ok(revoked)
    }
}

/// Checks a `pkcs11:` URI that is stored in the manifest as an authority's `key_uri`, and
/// parses it. It must not carry the PIN, and its files (PIN, module) must be absolute paths,
/// since the manifest is read later by other processes, from other working directories,
/// perhaps on other hosts. The reason never repeats the URI, which may hold a PIN.
pub(crate) fn check_stored_key_uri(uri: &str) -> Result<Pkcs11Uri, String> {
    let parsed: Pkcs11Uri = uri.parse().map_err(|e: Pkcs11Error| e.to_string())?;
    if parsed.has_pin_value() {
        return Err(
            "the URI gives the PIN itself (pin-value=), and authorities.json is no place for a \
             secret: it is copied by `hush ca secret`, printed by `hush ca authorities --json` \
             and kept in backups. Put the PIN in a file only the CA can read and name it with \
             ?pin-source=file:<absolute path>"
                .into(),
        );
    }
    for (what, path) in [
        ("pin-source file", parsed.pin_file()),
        ("module-path", parsed.module_path()),
    ] {
        if let Some(path) = path
            && !path.is_absolute()
        {
            return Err(format!(
                "the {what} {} is a relative path; give an absolute one, since `hush ca serve` \
                 reads the URI from wherever it runs",
                path.display()
            ));
        }
    }
    Ok(parsed)
}

fn wrong_state(entry: &AuthorityEntry, hint: &'static str) -> AuthoritiesError {
    AuthoritiesError::WrongState {
        id: entry.id.clone(),
        kind: entry.kind,
        state: entry.state,
        hint,
    }
}

fn legacy_entry(
    kind: Kind,
    cert: &X509Certificate<'_>,
    file: &str,
    issuer: Option<AuthorityId>,
) -> AuthorityEntry {
    let not_before = cert.validity().not_before.timestamp();
    AuthorityEntry {
        id: AuthorityId::of_public_key(cert.public_key().raw),
        kind,
        state: State::Active,
        cert: file.into(),
        key: (kind == Kind::Intermediate).then(|| "intermediate.key".into()),
        key_uri: None,
        issuer,
        not_before,
        not_after: cert.validity().not_after.timestamp(),
        prepared_at: Some(not_before),
        activated_at: Some(not_before),
        retired_at: None,
        tainted_at: None,
        revoked_at: None,
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, AuthoritiesError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| AuthoritiesError::Certificate(e.to_string()))
}

/// A name that stays inside the directory and is a valid Kubernetes Secret key, so that the
/// directory can be a Secret volume.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn seconds_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// A Unix time as the CLI prints times (`2026-12-03T14:02:00Z`).
pub(crate) fn utc(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn seconds(s: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;
    const T0: i64 = 1_800_000_000;

    /// A CA made at `T0`: root `r1` (10 years) and intermediate `i1` (1 year).
    fn manifest() -> Manifest {
        let mut m = Manifest::new(
            "cluster.local",
            entry(Kind::Root, "r1", None, 3650 * DAY),
            entry(Kind::Intermediate, "i1", Some("r1"), 365 * DAY),
            T0,
        );
        m.publish_wait_seconds = 15 * 60;
        m.max_ttl_seconds = 24 * 3600;
        m.validate().unwrap();
        m
    }

    /// An entry whose ID is `name` padded to 16 digits, valid from `T0 - 1 h` for `life`.
    fn entry(kind: Kind, name: &str, issuer: Option<&str>, life: i64) -> AuthorityEntry {
        AuthorityEntry {
            id: id(name),
            kind,
            state: State::Prepared,
            cert: format!("{kind}-{name}.pem"),
            key: Some(format!("{kind}-{name}.key")),
            key_uri: None,
            issuer: issuer.map(id),
            not_before: T0 - HOUR,
            not_after: T0 + life,
            prepared_at: Some(T0),
            activated_at: None,
            retired_at: None,
            tainted_at: None,
            revoked_at: None,
        }
    }

    fn id(name: &str) -> AuthorityId {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        AuthorityId(format!("{hex:0<16}"))
    }

    fn state(m: &Manifest, name: &str) -> State {
        m.get(&id(name)).unwrap().state
    }

    fn stage_intermediate(m: &mut Manifest, name: &str, at: i64) {
        let mut e = entry(Kind::Intermediate, name, Some(active_root(m)), 365 * DAY);
        e.prepared_at = Some(at);
        m.stage_intermediate(e).unwrap();
    }

    fn active_root(m: &Manifest) -> &'static str {
        // The tests' names are two letters; recover them from the padded hex.
        let hex = m.active().0.id.as_str().trim_end_matches('0').to_owned();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        Box::leak(String::from_utf8(bytes).unwrap().into_boxed_str())
    }

    fn stage_root(m: &mut Manifest, root: &str, intermediate: &str, at: i64) {
        let mut r = entry(Kind::Root, root, None, 3650 * DAY);
        r.prepared_at = Some(at);
        let mut i = entry(Kind::Intermediate, intermediate, Some(root), 365 * DAY);
        i.prepared_at = Some(at);
        m.stage_root(r, i).unwrap();
    }

    fn prefix(name: &str) -> String {
        id(name).as_str()[..MIN_ID_PREFIX].to_owned()
    }

    #[test]
    fn an_authority_is_named_by_its_public_key() {
        let (_, intermediate, spki) = ca();
        let id = AuthorityId::of_certificate(&intermediate).unwrap();
        assert_eq!(id, AuthorityId::of_public_key(&spki));
        assert_eq!(id.as_str().len(), 16);
        assert!(id.as_str().chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_directory_without_a_manifest_has_its_root_and_intermediate_active() {
        let (root, intermediate, _) = ca();
        let (other_root, _, _) = ca();
        let manifest =
            Manifest::legacy("cluster.local", &[&other_root, &root], &intermediate).unwrap();
        manifest.validate().unwrap();
        let (active_root, active) = manifest.active();
        assert_eq!(active_root.id, AuthorityId::of_certificate(&root).unwrap());
        assert_eq!(active.issuer.as_ref(), Some(&active_root.id));
        // The bundle's other root is trusted, but signs nothing.
        let other = manifest
            .get(&AuthorityId::of_certificate(&other_root).unwrap())
            .unwrap();
        assert_eq!(other.state, State::Old);
        assert_eq!(manifest.generation, 0);

        let json = serde_json::to_string(&manifest).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, manifest);
        assert!(json.contains(r#""state":"active""#), "{json}");

        let (unrelated, _, _) = ca();
        let err = Manifest::legacy("cluster.local", &[&unrelated], &intermediate).unwrap_err();
        assert!(err.to_string().contains("not signed by any root"), "{err}");
    }

    #[test]
    fn intermediate_rotation_activates_at_once_and_retires_the_old_one() {
        let mut m = manifest();
        stage_intermediate(&mut m, "i2", T0 + DAY);
        assert_eq!(state(&m, "i2"), State::Prepared);
        // Staged under the active root: nothing to publish first.
        assert_eq!(m.activate_after(), Some(T0 + DAY));

        // A second rotation waits for the first.
        let mut again = entry(Kind::Intermediate, "i3", Some("r1"), 365 * DAY);
        again.prepared_at = Some(T0 + DAY);
        let err = m.stage_intermediate(again).unwrap_err();
        assert!(err.to_string().contains("already prepared"), "{err}");

        let activation = m.activate(T0 + DAY, false).unwrap();
        assert_eq!(activation.intermediate, id("i2"));
        assert_eq!(activation.root, None);
        assert_eq!(activation.retired, vec![id("i1")]);
        assert_eq!(state(&m, "i1"), State::Old);
        assert_eq!(state(&m, "i2"), State::Active);
        assert_eq!(state(&m, "r1"), State::Active);
        m.validate().unwrap();

        let err = m.activate(T0 + DAY, false).unwrap_err();
        assert!(matches!(err, AuthoritiesError::NothingPrepared), "{err}");
    }

    #[test]
    fn a_new_root_is_published_for_the_publish_wait_before_it_signs() {
        let mut m = manifest();
        stage_root(&mut m, "r2", "i2", T0 + DAY);
        // Trusted at once, active root first.
        let roots: Vec<_> = m.trusted_roots().iter().map(|r| r.id.clone()).collect();
        assert_eq!(roots, vec![id("r1"), id("r2")]);
        let after = T0 + DAY + 15 * 60;
        assert_eq!(m.activate_after(), Some(after));

        let err = m.activate(after - 1, false).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, AuthoritiesError::NotPublishedLongEnough { .. }),
            "{text}"
        );
        assert!(text.contains("--force") && text.contains("15m"), "{text}");
        assert_eq!(
            state(&m, "r2"),
            State::Prepared,
            "a refusal changes nothing"
        );

        let activation = m.activate(after, false).unwrap();
        assert_eq!(activation.root, Some(id("r2")));
        assert_eq!(activation.retired, vec![id("r1"), id("i1")]);
        assert!(!activation.forced);
        assert_eq!(m.active().0.id, id("r2"));
        assert_eq!(m.active().1.id, id("i2"));
        m.validate().unwrap();
    }

    #[test]
    fn force_skips_the_publish_wait_and_says_so() {
        let mut m = manifest();
        stage_root(&mut m, "r2", "i2", T0 + DAY);
        let activation = m.activate(T0 + DAY, true).unwrap();
        assert!(activation.forced);
    }

    #[test]
    fn an_expired_or_not_yet_valid_authority_is_not_activated() {
        let mut m = manifest();
        let mut short = entry(Kind::Intermediate, "i2", Some("r1"), DAY);
        short.prepared_at = Some(T0);
        m.stage_intermediate(short).unwrap();
        let err = m.activate(T0 + 2 * DAY, false).unwrap_err();
        assert!(matches!(err, AuthoritiesError::NotValidNow { .. }), "{err}");
        let err = m.activate(T0 - 2 * HOUR, false).unwrap_err();
        assert!(matches!(err, AuthoritiesError::NotValidNow { .. }), "{err}");
    }

    #[test]
    fn only_an_old_authority_can_be_tainted_and_a_root_takes_its_intermediates() {
        let mut m = manifest();
        for (name, words) in [
            ("r1", "activate a successor"),
            ("i1", "activate a successor"),
        ] {
            let err = m.taint(&prefix(name), T0).unwrap_err();
            assert!(err.to_string().contains(words), "{err}");
        }
        stage_root(&mut m, "r2", "i2", T0);
        let err = m.taint(&prefix("i2"), T0).unwrap_err();
        assert!(err.to_string().contains("revoke it instead"), "{err}");
        m.activate(T0 + HOUR, false).unwrap();

        let tainted = m.taint(&prefix("r1"), T0 + 2 * HOUR).unwrap();
        assert_eq!(tainted, vec![id("r1"), id("i1")]);
        assert_eq!(state(&m, "i1"), State::Tainted);
        // Still trusted: certificates under it are valid until they are replaced.
        assert_eq!(m.trusted_roots().len(), 2);
        let err = m.taint(&prefix("i1"), T0 + 2 * HOUR).unwrap_err();
        assert!(err.to_string().contains("tainted already"), "{err}");
    }

    #[test]
    fn revocation_waits_until_nothing_issued_under_it_can_be_alive() {
        let mut m = manifest();
        stage_root(&mut m, "r2", "i2", T0);
        let retired = T0 + HOUR;
        m.activate(retired, false).unwrap();
        let live_until = retired + 15 * 60 + 24 * 3600;
        let old_root = m.get(&id("r1")).unwrap().clone();
        assert_eq!(m.live_until(&old_root), Some(live_until));
        assert_eq!(m.live_until(m.active().1), None);

        for active in ["r2", "i2"] {
            let err = m.revoke(&prefix(active), live_until, true).unwrap_err();
            assert!(err.to_string().contains("cannot stop trusting"), "{err}");
        }
        let err = m.revoke(&prefix("r1"), live_until - 1, false).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, AuthoritiesError::StillLive { .. }) && text.contains("--force"),
            "{text}"
        );
        assert_eq!(state(&m, "r1"), State::Old, "a refusal changes nothing");

        let revoked = m.revoke(&prefix("r1"), live_until, false).unwrap();
        assert_eq!(revoked, vec![id("r1"), id("i1")]);
        assert_eq!(m.trusted_roots().len(), 1);
        m.validate().unwrap();
        let err = m.revoke(&prefix("r1"), live_until, false).unwrap_err();
        assert!(err.to_string().contains("revoked already"), "{err}");
    }

    #[test]
    fn force_revokes_at_once_but_never_the_last_root() {
        let mut m = manifest();
        stage_root(&mut m, "r2", "i2", T0);
        // A prepared root has nothing under it: it can go at once, with its intermediate.
        let revoked = m.revoke(&prefix("r2"), T0, false).unwrap();
        assert_eq!(revoked, vec![id("r2"), id("i2")]);
        assert!(m.prepared().is_none());

        stage_root(&mut m, "r3", "i3", T0);
        m.activate(T0 + HOUR, false).unwrap();
        m.revoke(&prefix("r1"), T0 + HOUR, true).unwrap();
        assert_eq!(state(&m, "i1"), State::Revoked);
        let err = m.revoke(&prefix("r3"), T0 + HOUR, true).unwrap_err();
        assert!(err.to_string().contains("cannot stop trusting"), "{err}");
    }

    #[test]
    fn a_prepared_root_whose_intermediate_was_revoked_cannot_be_activated() {
        let mut m = manifest();
        stage_root(&mut m, "r2", "i2", T0);
        m.revoke(&prefix("i2"), T0, false).unwrap();
        let err = m.activate(T0 + HOUR, false).unwrap_err();
        assert!(err.to_string().contains("revoke it"), "{err}");
        // Nor can another rotation start while it waits.
        let mut i3 = entry(Kind::Intermediate, "i3", Some("r1"), DAY);
        i3.prepared_at = Some(T0);
        assert!(m.stage_intermediate(i3).is_err());
    }

    #[test]
    fn an_id_is_found_by_a_unique_prefix_of_six_digits_or_more() {
        let mut m = manifest();
        // "i1" and "i2" share their first 2 bytes ("69"), so 2 digits are ambiguous anyway.
        stage_intermediate(&mut m, "i2", T0);
        assert_eq!(m.find(&prefix("i2")).unwrap().id, id("i2"));
        assert_eq!(
            m.find(&id("i2").as_str().to_uppercase()).unwrap().id,
            id("i2")
        );
        let err = m.find("6931").unwrap_err();
        assert!(matches!(err, AuthoritiesError::ShortId(_)), "{err}");
        let err = m.find("693").unwrap_err();
        assert!(err.to_string().contains("at least 6"), "{err}");
        let err = m.find("ffffff").unwrap_err();
        assert!(err.to_string().contains("hush ca authorities"), "{err}");
        // Two IDs sharing 6 digits.
        let mut twin = entry(Kind::Intermediate, "zz", Some("r1"), DAY);
        twin.id = AuthorityId(format!("{}ffffffffff", &id("i2").as_str()[..6]));
        m.authorities.push(twin);
        let err = m.find(&prefix("i2")).unwrap_err();
        assert!(matches!(err, AuthoritiesError::Ambiguous { .. }), "{err}");
    }

    #[test]
    fn validate_refuses_what_no_command_writes() {
        type Breakage = (&'static str, fn(&mut Manifest));
        let broken: [Breakage; 11] = [
            ("16 lower-case hex", |m| {
                m.authorities[1].id = AuthorityId("é".repeat(8));
            }),
            ("listed twice", |m| {
                let dup = m.authorities[1].clone();
                m.authorities.push(dup);
            }),
            ("plain file name", |m| {
                m.authorities[1].key = Some("../../etc/shadow".into());
            }),
            ("exactly one is needed", |m| {
                m.authorities[1].state = State::Old;
            }),
            ("not a root of the manifest", |m| {
                m.authorities[1].issuer = Some(id("zz"));
            }),
            ("has an issuer", |m| {
                m.authorities[0].issuer = Some(id("zz"));
            }),
            ("upgrade hush", |m| m.version = 2),
            ("both a key file and a key_uri", |m| {
                m.authorities[1].key_uri = Some("pkcs11:token=t;object=o".into());
            }),
            ("no place for a secret", |m| {
                m.authorities[1].key = None;
                m.authorities[1].key_uri = Some("pkcs11:token=t;object=o?pin-value=1234".into());
            }),
            ("pin-source file pin is a relative path", |m| {
                m.authorities[1].key = None;
                m.authorities[1].key_uri =
                    Some("pkcs11:token=t;object=o?pin-source=file:pin".into());
            }),
            ("invalid PKCS#11 URI", |m| {
                m.authorities[0].key = None;
                m.authorities[0].key_uri = Some("file:/etc/root.key".into());
            }),
        ];
        for (words, breaks) in broken {
            let mut m = manifest();
            breaks(&mut m);
            let err = m.validate().unwrap_err();
            assert!(err.to_string().contains(words), "{words}: {err}");
        }
        // The PIN is never repeated, even in the refusal.
        let mut m = manifest();
        m.authorities[1].key = None;
        m.authorities[1].key_uri = Some("pkcs11:token=t;object=o?pin-value=97531".into());
        assert!(!m.validate().unwrap_err().to_string().contains("97531"));
        // What `--key-uri` writes is valid.
        m.authorities[1].key_uri =
            Some("pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:/run/pin".into());
        m.validate().unwrap();

        let text = r#"{"version":1,"trust_domain":"td","generation":1,"publish_wait_seconds":1,
            "max_ttl_seconds":1,"authorities":[],"surprise":true}"#;
        assert!(serde_json::from_str::<Manifest>(text).is_err());
    }

    fn jwt(name: &str, at: i64) -> AuthorityEntry {
        let mut e = entry(Kind::Jwt, name, None, 365 * DAY);
        e.prepared_at = Some(at);
        e
    }

    #[test]
    fn the_first_jwt_authority_of_a_ca_may_sign_at_once() {
        // A CA made before JWT-SVIDs: valid without any JWT authority.
        let mut m = manifest();
        assert!(m.active_jwt().is_none());
        m.stage_jwt(jwt("j1", T0)).unwrap();
        m.validate().unwrap();
        // Published at once; an X.509 rotation is not blocked by it.
        assert_eq!(m.trusted_jwt().count(), 1);
        stage_intermediate(&mut m, "i2", T0);
        assert_eq!(m.jwt_activate_after(), Some(T0));
        let activation = m.activate_jwt(T0, false).unwrap();
        assert_eq!(
            activation,
            JwtActivation {
                jwt: id("j1"),
                retired: None,
                forced: false
            }
        );
        assert_eq!(m.active_jwt().unwrap().id, id("j1"));
        // The X.509 side is untouched.
        assert_eq!(state(&m, "i2"), State::Prepared);
        m.validate().unwrap();
    }

    #[test]
    fn a_new_jwt_authority_is_published_for_the_publish_wait_before_it_signs() {
        let mut m = manifest();
        m.stage_jwt(jwt("j1", T0)).unwrap();
        m.activate_jwt(T0, false).unwrap();
        m.stage_jwt(jwt("j2", T0 + DAY)).unwrap();
        let err = m.stage_jwt(jwt("j3", T0 + DAY)).unwrap_err();
        assert!(err.to_string().contains("already prepared"), "{err}");
        let after = T0 + DAY + 15 * 60;
        assert_eq!(m.jwt_activate_after(), Some(after));
        let err = m.activate_jwt(after - 1, false).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                AuthoritiesError::NotPublishedLongEnough {
                    kind: Kind::Jwt,
                    ..
                }
            ) && text.starts_with("jwt ")
                && text.contains("--force"),
            "{text}"
        );
        assert_eq!(
            state(&m, "j2"),
            State::Prepared,
            "a refusal changes nothing"
        );
        let activation = m.activate_jwt(after, false).unwrap();
        assert_eq!(activation.retired, Some(id("j1")));
        assert_eq!(state(&m, "j1"), State::Old);
        assert_eq!(m.active_jwt().unwrap().id, id("j2"));
        // The old key stays published, so the tokens it signed still validate.
        assert_eq!(m.trusted_jwt().count(), 2);
        m.validate().unwrap();

        m.stage_jwt(jwt("j3", after)).unwrap();
        assert!(m.activate_jwt(after, true).unwrap().forced);
    }

    #[test]
    fn an_old_jwt_authority_is_tainted_and_revoked_like_an_intermediate() {
        let mut m = manifest();
        m.stage_jwt(jwt("j1", T0)).unwrap();
        m.activate_jwt(T0, false).unwrap();
        let err = m.revoke(&prefix("j1"), T0, true).unwrap_err();
        assert!(err.to_string().contains("cannot stop trusting"), "{err}");
        m.stage_jwt(jwt("j2", T0)).unwrap();
        let retired = T0 + HOUR;
        m.activate_jwt(retired, false).unwrap();
        assert_eq!(m.taint(&prefix("j1"), retired).unwrap(), vec![id("j1")]);
        let live_until = retired + 15 * 60 + 24 * 3600;
        let old = m.get(&id("j1")).unwrap().clone();
        assert_eq!(m.live_until(&old), Some(live_until));
        let err = m.revoke(&prefix("j1"), live_until - 1, false).unwrap_err();
        assert!(
            matches!(
                err,
                AuthoritiesError::StillLive {
                    kind: Kind::Jwt,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            m.revoke(&prefix("j1"), live_until, false).unwrap(),
            vec![id("j1")]
        );
        assert_eq!(
            m.trusted_jwt().map(|a| a.id.clone()).collect::<Vec<_>>(),
            vec![id("j2")]
        );
        // Revoking a JWT authority touches no root, and a prepared one goes at once.
        assert_eq!(m.trusted_roots().len(), 1);
        m.stage_jwt(jwt("j3", live_until)).unwrap();
        assert_eq!(
            m.revoke(&prefix("j3"), live_until, false).unwrap(),
            vec![id("j3")]
        );
        m.validate().unwrap();
    }

    #[test]
    fn an_expired_jwt_authority_is_not_activated() {
        let mut m = manifest();
        let mut short = jwt("j1", T0);
        short.not_after = T0 + HOUR;
        m.stage_jwt(short).unwrap();
        let err = m.activate_jwt(T0 + 2 * HOUR, true).unwrap_err();
        assert!(matches!(err, AuthoritiesError::NotValidNow { .. }), "{err}");
        let err = Manifest::activate_jwt(&mut manifest(), T0, false).unwrap_err();
        assert!(err.to_string().contains("rotate jwt"), "{err}");
    }

    #[test]
    fn validate_refuses_jwt_authorities_no_command_writes() {
        type Breakage = (&'static str, fn(&mut Manifest));
        let broken: [Breakage; 4] = [
            ("JWT authority 6a31000000000000 has an issuer", |m| {
                m.authorities[2].issuer = Some(id("r1"));
            }),
            ("more than one active JWT authority", |m| {
                let mut other = m.authorities[2].clone();
                other.id = id("j2");
                m.authorities.push(other);
            }),
            ("more than one prepared JWT authority", |m| {
                for name in ["j2", "j3"] {
                    let mut other = jwt(name, T0);
                    other.state = State::Prepared;
                    m.authorities.push(other);
                }
            }),
            ("JWT keys are files", |m| {
                m.authorities[2].key = None;
                m.authorities[2].key_uri = Some("pkcs11:token=t;object=o".into());
            }),
        ];
        for (words, breaks) in broken {
            let mut m = manifest();
            m.stage_jwt(jwt("j1", T0)).unwrap();
            m.activate_jwt(T0, false).unwrap();
            m.validate().unwrap();
            breaks(&mut m);
            let err = m.validate().unwrap_err();
            assert!(err.to_string().contains(words), "{words}: {err}");
        }
    }

    fn ca() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "root");
        let root = params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(params, root_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        let intermediate = params.signed_by(&key, &issuer).unwrap();
        (
            root.der().to_vec(),
            intermediate.der().to_vec(),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }
}
