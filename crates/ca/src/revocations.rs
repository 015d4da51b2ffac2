//! Identity revocation: what `hush ca revoke-identity` records in `DIR/revocations.json`, what
//! a serving CA refuses because of it, and the deny-list it pushes to sidecars with the bundle.
//!
//! Three things can be revoked:
//!
//! * a **SPIFFE ID**: the CA issues and renews nothing for it until the revocation is lifted,
//!   and sidecars refuse every certificate for it issued before the revocation;
//! * a **serial**: that certificate, and every certificate renewed from it (the attestation
//!   record's origin serial), can no longer renew and is refused by sidecars;
//! * a **join token**: every certificate whose identity was attested with it, renewals
//!   included, since each carries the token's id in its attestation record.
//!
//! Like the authorities manifest, the file has a generation, up by one on every change, and a
//! CA never takes a lower one: a restored copy must not lift a revocation by accident.
//!
//! **Back-dating.** The CA back-dates a certificate's notBefore (`--backdate`, 5 min) for clock
//! skew, and sidecars refuse a revoked SPIFFE ID's certificates by comparing notBefore with the
//! revocation time. Every certificate issued before the revocation has a notBefore before it,
//! back-dated or not, so all of them are refused. A lifted revocation stays on the pushed list
//! until the certificates it covers have expired, so that lifting it lets the workload attest
//! again without bringing its old (perhaps stolen) certificates back to life; and the CA never
//! back-dates a certificate for that ID past the revocation time, so that one issued after the
//! lift, however soon, is not refused with the old ones.
//!
//! **How long an entry is pushed.** A revoked serial or token can match only certificates
//! issued before the revocation (and, on a replica that has not yet read the change, for a
//! publish wait after it), none of which lives longer than the manifest's `max_ttl_seconds`. So
//! serial and token entries leave the pushed list `publish_wait + max_ttl` after they were
//! revoked, and a lifted SPIFFE ID that long after it was lifted; a SPIFFE ID that is not
//! lifted stays. The same entries are dropped from the file whenever it is next written.
//!
//! Everything here is pure: times are arguments, so every rule is tested without files or
//! clocks. [`crate::CaDir`] reads and writes the file.

use std::fmt;

use hush_identity::{DenyList, DenyListError, SpiffeId, normalize_serial_hex, serial_hex};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::authorities::Manifest;
use crate::lineage::PresentedCertificate;

/// The schema version of `revocations.json`.
pub const REVOCATIONS_VERSION: u32 = 1;

/// Everything `hush ca revoke-identity` has revoked, as `DIR/revocations.json` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// [`REVOCATIONS_VERSION`].
    pub version: u32,
    /// Up by one on every change; a CA never goes back to a lower one.
    pub generation: u64,
    /// Revoked SPIFFE IDs, lifted ones included while they are still pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe_ids: Vec<RevokedId>,
    /// Revoked certificates, by serial.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serials: Vec<RevokedSerial>,
    /// Revoked join tokens, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join_tokens: Vec<RevokedToken>,
}

/// A revoked SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedId {
    /// The identity.
    pub id: SpiffeId,
    /// When it was revoked (Unix seconds): certificates for it issued before are refused.
    pub revoked_at: i64,
    /// When the revocation was lifted (Unix seconds): the CA issues for it again, and its
    /// certificates issued before `revoked_at` stay refused until they have expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted_at: Option<i64>,
    /// Why, in the operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSerial {
    /// Lowercase hex without leading zero bytes, as `hush cert inspect` prints it.
    pub serial: String,
    /// When it was revoked (Unix seconds).
    pub revoked_at: i64,
    /// Why, in the operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A revoked join token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedToken {
    /// The token's id (never its secret).
    pub id: String,
    /// When it was revoked (Unix seconds).
    pub revoked_at: i64,
    /// Why, in the operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What `hush ca revoke-identity` acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevocationTarget {
    /// Every certificate for this identity, and any new one.
    SpiffeId(SpiffeId),
    /// This certificate and its renewals (the serial, normalized).
    Serial(String),
    /// Every certificate attested with this join token (its id).
    JoinToken(String),
}

/// A revocation could not be recorded or read. Each message says what to do instead.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The target is revoked already.
    #[error("{target} is already revoked (since {}); nothing changed", at(*since))]
    AlreadyRevoked {
        /// What was asked for, in words.
        target: String,
        /// When it was revoked.
        since: i64,
    },
    /// `--lift` of something that is not revoked.
    #[error(
        "{target} is not revoked, so there is nothing to lift (`hush ca revocations` lists what is)"
    )]
    NotRevoked {
        /// What was asked for, in words.
        target: String,
    },
    /// A serial or token id that cannot be one.
    #[error(transparent)]
    Entry(#[from] DenyListError),
    /// `--join-token` with something that is not a join token's id.
    #[error(
        "{id:?} is not a join token id: an id is the 16 hex digits after `hushjt.` (`hush ca \
         token list` shows them)"
    )]
    NotATokenId {
        /// What was given.
        id: String,
    },
    /// A SPIFFE ID of another trust domain: this CA never issued for it.
    #[error("{id} is not in this CA's trust domain {trust_domain}: it never issued for it")]
    ForeignIdentity {
        /// The identity given.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The file is of a version this hush does not read.
    #[error("revocations.json is version {found}, but this hush reads version 1 only")]
    UnsupportedVersion {
        /// The version the file says it is.
        found: u32,
    },
    /// The file contradicts itself.
    #[error("revocations.json: {0}")]
    Invalid(String),
}

// === impl Revocations ===

impl Default for Revocations {
    /// Nothing revoked, generation 0: what a directory without the file stands for.
    fn default() -> Self {
        Self {
            version: REVOCATIONS_VERSION,
            generation: 0,
            spiffe_ids: Vec::new(),
            serials: Vec::new(),
            join_tokens: Vec::new(),
        }
    }
}

impl Revocations {
    /// Checks what a file holds: its version, each entry as a deny-list would take it, no
    /// entry twice, and no revocation lifted before it was made.
    pub fn validate(&self) -> Result<(), RevocationError> {
        if self.version != REVOCATIONS_VERSION {
            return Err(RevocationError::UnsupportedVersion {
                found: self.version,
            });
        }
        let mut ids = std::collections::BTreeSet::new();
        for entry in &self.spiffe_ids {
            if !ids.insert(&entry.id) {
                return Err(RevocationError::Invalid(format!(
                    "{} is listed twice",
                    entry.id
                )));
            }
            if entry
                .lifted_at
                .is_some_and(|lifted| lifted < entry.revoked_at)
            {
                return Err(RevocationError::Invalid(format!(
                    "{} is lifted before it was revoked",
                    entry.id
                )));
            }
        }
        let mut serials = std::collections::BTreeSet::new();
        for entry in &self.serials {
            if normalize_serial_hex(&entry.serial)? != entry.serial {
                return Err(RevocationError::Invalid(format!(
                    "serial {:?} is not written as hush writes serials (lowercase hex, no \
                     leading zero bytes, no colons)",
                    entry.serial
                )));
            }
            if !serials.insert(&entry.serial) {
                return Err(RevocationError::Invalid(format!(
                    "serial {} is listed twice",
                    entry.serial
                )));
            }
        }
        let mut tokens = std::collections::BTreeSet::new();
        let mut check = DenyList::new();
        for entry in &self.join_tokens {
            check.deny_token_id(&entry.id)?;
            if !tokens.insert(&entry.id) {
                return Err(RevocationError::Invalid(format!(
                    "join token {} is listed twice",
                    entry.id
                )));
            }
        }
        Ok(())
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.spiffe_ids.is_empty() && self.serials.is_empty() && self.join_tokens.is_empty()
    }

    /// Revokes `target` at `now`. A SPIFFE ID whose revocation was lifted is revoked anew from
    /// `now` (which covers everything issued since the lift as well).
    pub fn revoke(
        &mut self,
        target: &RevocationTarget,
        now: i64,
        reason: Option<String>,
    ) -> Result<(), RevocationError> {
        let already = |since| RevocationError::AlreadyRevoked {
            target: target.to_string(),
            since,
        };
        match target {
            RevocationTarget::SpiffeId(id) => {
                match self.spiffe_ids.iter_mut().find(|e| &e.id == id) {
                    Some(entry) if entry.lifted_at.is_none() => {
                        return Err(already(entry.revoked_at));
                    }
                    Some(entry) => {
                        entry.revoked_at = now;
                        entry.lifted_at = None;
                        entry.reason = reason;
                    }
                    None => self.spiffe_ids.push(RevokedId {
                        id: id.clone(),
                        revoked_at: now,
                        lifted_at: None,
                        reason,
                    }),
                }
            }
            RevocationTarget::Serial(serial) => {
                if let Some(entry) = self.serial(serial) {
                    return Err(already(entry.revoked_at));
                }
                self.serials.push(RevokedSerial {
                    serial: serial.clone(),
                    revoked_at: now,
                    reason,
                });
            }
            RevocationTarget::JoinToken(token_id) => {
                if let Some(entry) = self.token(token_id) {
                    return Err(already(entry.revoked_at));
                }
                self.join_tokens.push(RevokedToken {
                    id: token_id.clone(),
                    revoked_at: now,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Lifts the revocation of `target` at `now`. A serial or token entry is removed, so what
    /// it covered is accepted again (a revoked join token's record stays deleted). A SPIFFE
    /// ID may be issued for again, while its certificates from before the revocation stay
    /// refused until they have expired.
    pub fn lift(&mut self, target: &RevocationTarget, now: i64) -> Result<(), RevocationError> {
        let not_revoked = || RevocationError::NotRevoked {
            target: target.to_string(),
        };
        match target {
            RevocationTarget::SpiffeId(id) => {
                let entry = self
                    .spiffe_ids
                    .iter_mut()
                    .find(|e| &e.id == id && e.lifted_at.is_none())
                    .ok_or_else(not_revoked)?;
                entry.lifted_at = Some(now.max(entry.revoked_at));
            }
            RevocationTarget::Serial(serial) => {
                let before = self.serials.len();
                self.serials.retain(|e| &e.serial != serial);
                if self.serials.len() == before {
                    return Err(not_revoked());
                }
            }
            RevocationTarget::JoinToken(token_id) => {
                let before = self.join_tokens.len();
                self.join_tokens.retain(|e| &e.id != token_id);
                if self.join_tokens.len() == before {
                    return Err(not_revoked());
                }
            }
        }
        Ok(())
    }

    /// Drops the entries that no longer match any live certificate at `now` (see the module
    /// documentation); `retention` is [`retention`] of the manifest. Returns how many went.
    pub fn prune(&mut self, now: i64, retention: i64) -> usize {
        let before = self.spiffe_ids.len() + self.serials.len() + self.join_tokens.len();
        self.spiffe_ids.retain(|e| e.pushed_at(now, retention));
        self.serials
            .retain(|e| still_pushed(e.revoked_at, now, retention));
        self.join_tokens
            .retain(|e| still_pushed(e.revoked_at, now, retention));
        before - (self.spiffe_ids.len() + self.serials.len() + self.join_tokens.len())
    }

    /// The deny-list sidecars apply at `now`: every entry still pushed (see [`Self::prune`]),
    /// a SPIFFE ID refusing the certificates issued before its revocation.
    pub fn deny_list(&self, now: i64, retention: i64) -> DenyList {
        let mut deny = DenyList::new();
        for entry in &self.spiffe_ids {
            if entry.pushed_at(now, retention) {
                deny.deny_spiffe_id(entry.id.clone(), entry.revoked_at);
            }
        }
        for entry in &self.serials {
            // Validated when read: a serial that fails here cannot be in a loaded file.
            if still_pushed(entry.revoked_at, now, retention) {
                let _ = deny.deny_serial_hex(&entry.serial);
            }
        }
        for entry in &self.join_tokens {
            if still_pushed(entry.revoked_at, now, retention) {
                let _ = deny.deny_token_id(&entry.id);
            }
        }
        deny
    }

    /// The revocation of `id` in force (not lifted), if any.
    pub fn revoked_id(&self, id: &SpiffeId) -> Option<&RevokedId> {
        self.spiffe_ids
            .iter()
            .find(|e| &e.id == id && e.lifted_at.is_none())
    }

    /// The entry of a serial (normalized), if it is revoked.
    pub fn serial(&self, serial: &str) -> Option<&RevokedSerial> {
        self.serials.iter().find(|e| e.serial == serial)
    }

    /// The entry of a join token id, if it is revoked.
    pub fn token(&self, token_id: &str) -> Option<&RevokedToken> {
        self.join_tokens.iter().find(|e| e.id == token_id)
    }

    /// The earliest notBefore the CA may give a new certificate for `id` (Unix seconds): the
    /// time of its revocation, lifted or not, so that back-dating never puts a certificate
    /// issued after a lift among the ones sidecars refuse. `None` when `id` was never revoked.
    pub fn not_before_floor(&self, id: &SpiffeId) -> Option<i64> {
        self.spiffe_ids
            .iter()
            .find(|e| &e.id == id)
            .map(|e| e.revoked_at)
    }

    /// Why the CA must refuse a request, in the words of the refusal, or `None`.
    ///
    /// `attested` is who the caller proved to be; `token_id` the id of the join token it
    /// presented, if any; `presented` the certificate it renews with, if any. Checked: the
    /// presented certificate's serial, the serial it was renewed from and the join token it
    /// was attested with; the identity; the join token presented.
    pub(crate) fn refusal(
        &self,
        attested: &SpiffeId,
        token_id: Option<&str>,
        presented: Option<&PresentedCertificate>,
    ) -> Option<String> {
        if let Some(presented) = presented
            && let Some(words) = self.refuse_presented(attested, presented)
        {
            return Some(words);
        }
        if let Some(entry) = self.revoked_id(attested) {
            return Some(format!(
                "{attested} is revoked ({}); no certificate is issued or renewed for it until \
                 the revocation is lifted (hush ca revoke-identity --lift)",
                on(entry.revoked_at, entry.reason.as_deref())
            ));
        }
        token_id.and_then(|token_id| self.token_refusal(token_id))
    }

    /// Why the CA must refuse a caller presenting the join token `token_id`, if it is revoked:
    /// checked before the token is, so that the caller is told why rather than that the token
    /// is unknown (its record is deleted when it is revoked).
    pub(crate) fn token_refusal(&self, token_id: &str) -> Option<String> {
        let entry = self.token(token_id)?;
        Some(format!(
            "join token {token_id} is revoked ({}); ask for a new token (hush ca token create)",
            on(entry.revoked_at, entry.reason.as_deref())
        ))
    }

    fn refuse_presented(
        &self,
        attested: &SpiffeId,
        presented: &PresentedCertificate,
    ) -> Option<String> {
        let serial = &presented.serial;
        let get_a_new_one = "it cannot be renewed: present a token for a new certificate";
        if let Some(entry) = self.serial(serial) {
            return Some(format!(
                "certificate {serial} is revoked ({}); {get_a_new_one}",
                on(entry.revoked_at, entry.reason.as_deref())
            ));
        }
        let origin = serial_hex(&presented.record.origin_serial);
        if let Some(entry) = self.serial(&origin) {
            return Some(format!(
                "certificate {serial} was renewed from certificate {origin}, which is revoked \
                 ({}); {get_a_new_one}",
                on(entry.revoked_at, entry.reason.as_deref())
            ));
        }
        if let Some(token_id) = &presented.record.token_id
            && let Some(entry) = self.token(token_id)
        {
            return Some(format!(
                "certificate {serial} was attested with join token {token_id}, which is revoked \
                 ({}); it cannot be renewed: present another token",
                on(entry.revoked_at, entry.reason.as_deref())
            ));
        }
        // A lifted revocation: the certificates from before it stay refused by sidecars, so
        // they must not renew either, or the lift would bring them back.
        if let Some(entry) = self.spiffe_ids.iter().find(|e| &e.id == attested)
            && entry.lifted_at.is_some()
            && presented.not_before < entry.revoked_at
        {
            return Some(format!(
                "certificate {serial} for {attested} was issued before {attested} was revoked \
                 ({}) and stays revoked after the lift; {get_a_new_one}",
                on(entry.revoked_at, entry.reason.as_deref())
            ));
        }
        None
    }
}

/// How long after it was revoked (or, for a SPIFFE ID, lifted) an entry is still pushed: the
/// manifest's publish wait (a replica may sign for that long before it reads the change) plus
/// its longest certificate lifetime.
pub fn retention(manifest: &Manifest) -> i64 {
    let seconds = manifest
        .publish_wait_seconds
        .saturating_add(manifest.max_ttl_seconds);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

fn still_pushed(since: i64, now: i64, retention: i64) -> bool {
    now < since.saturating_add(retention)
}

// === impl RevokedId ===

impl RevokedId {
    /// Whether sidecars are still told of it at `now`: until it is lifted, then for
    /// [`retention`] more.
    fn pushed_at(&self, now: i64, retention: i64) -> bool {
        match self.lifted_at {
            None => true,
            Some(lifted) => still_pushed(lifted, now, retention),
        }
    }
}

// === impl RevocationTarget ===

impl RevocationTarget {
    /// A serial as people copy it (hex, either case, colons allowed), normalized.
    pub fn serial(text: &str) -> Result<Self, RevocationError> {
        Ok(Self::Serial(normalize_serial_hex(text)?))
    }

    /// A join token by its id (the 16 hex digits after `hushjt.`, never the token itself).
    pub fn join_token(id: &str) -> Result<Self, RevocationError> {
        if !crate::tokens::is_token_id(id) {
            return Err(RevocationError::NotATokenId { id: id.to_owned() });
        }
        Ok(Self::JoinToken(id.to_owned()))
    }
}

impl fmt::Display for RevocationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpiffeId(id) => write!(f, "{id}"),
            Self::Serial(serial) => write!(f, "certificate {serial}"),
            Self::JoinToken(id) => write!(f, "join token {id}"),
        }
    }
}

/// "hush ca revoke-identity on <time>[: <reason>]".
fn on(revoked_at: i64, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("hush ca revoke-identity on {}: {reason}", at(revoked_at)),
        None => format!("hush ca revoke-identity on {}", at(revoked_at)),
    }
}

/// A Unix time as RFC 3339 in UTC, or as seconds if it cannot be written so.
pub(crate) fn at(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix} (Unix seconds)"))
}

#[cfg(test)]
mod tests {
    use hush_identity::{AttestationMethod, AttestationRecord};
    use rcgen::{CertificateParams, KeyPair, SanType, SerialNumber};

    use super::*;

    const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
    const BACKEND: &str = "spiffe://example.org/ns/shop/sa/backend";
    const TOKEN: &str = "0123456789abcdef";
    /// 2025-06-15T15:06:40Z.
    const T0: i64 = 1_750_000_000;
    /// A publish wait of 15 min and certificates of at most a day.
    const RETENTION: i64 = 15 * 60 + 86_400;

    fn id(text: &str) -> SpiffeId {
        text.parse().unwrap()
    }

    fn frontend() -> RevocationTarget {
        RevocationTarget::SpiffeId(id(FRONTEND))
    }

    /// A certificate for `spiffe_id` with `serial`, valid from `not_before`.
    fn leaf(spiffe_id: &str, serial: &[u8], not_before: i64) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params.not_before = OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = OffsetDateTime::from_unix_timestamp(not_before + 3600).unwrap();
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    fn record(origin: &[u8], token_id: Option<&str>) -> AttestationRecord {
        AttestationRecord {
            attested_at: T0,
            method: AttestationMethod::JoinToken,
            origin_serial: origin.to_vec(),
            token_id: token_id.map(str::to_owned),
        }
    }

    fn presented(serial: &str, not_before: i64, record: AttestationRecord) -> PresentedCertificate {
        PresentedCertificate {
            serial: serial.to_owned(),
            not_before,
            record,
            recorded: true,
        }
    }

    #[test]
    fn a_spiffe_id_is_revoked_lifted_and_revoked_again() {
        let mut r = Revocations::default();
        r.revoke(&frontend(), T0, Some("laptop stolen".into()))
            .unwrap();
        assert_eq!(r.revoked_id(&id(FRONTEND)).unwrap().revoked_at, T0);
        assert_eq!(r.not_before_floor(&id(FRONTEND)), Some(T0));
        let again = r.revoke(&frontend(), T0 + 10, None).unwrap_err();
        assert_eq!(
            again.to_string(),
            "spiffe://example.org/ns/shop/sa/frontend is already revoked (since \
             2025-06-15T15:06:40Z); nothing changed"
        );

        r.lift(&frontend(), T0 + 60).unwrap();
        assert_eq!(r.revoked_id(&id(FRONTEND)), None, "issued for again");
        assert_eq!(r.spiffe_ids[0].lifted_at, Some(T0 + 60));
        // Still pushed, with the same cutoff, and still the floor of new certificates.
        assert_eq!(r.not_before_floor(&id(FRONTEND)), Some(T0));
        let deny = r.deny_list(T0 + 61, RETENTION);
        assert_eq!(deny.spiffe_ids().next().unwrap().issued_before_unix, T0);
        let lift_again = r.lift(&frontend(), T0 + 70).unwrap_err();
        assert!(
            lift_again.to_string().contains("is not revoked"),
            "{lift_again}"
        );

        // Revoked anew: from the new time, covering what was issued since the lift.
        r.revoke(&frontend(), T0 + 3600, None).unwrap();
        let entry = r.revoked_id(&id(FRONTEND)).unwrap();
        assert_eq!((entry.revoked_at, entry.lifted_at), (T0 + 3600, None));
        assert_eq!(r.spiffe_ids.len(), 1);
    }

    #[test]
    fn serials_and_tokens_are_revoked_once_and_lifted_by_removal() {
        let mut r = Revocations::default();
        let serial = RevocationTarget::serial("00:47:B0").unwrap();
        assert_eq!(serial, RevocationTarget::Serial("47b0".into()));
        r.revoke(&serial, T0, None).unwrap();
        assert!(matches!(
            r.revoke(&RevocationTarget::serial("47b0").unwrap(), T0, None),
            Err(RevocationError::AlreadyRevoked { .. })
        ));
        let token = RevocationTarget::join_token(TOKEN).unwrap();
        r.revoke(&token, T0, None).unwrap();
        assert!(r.token(TOKEN).is_some());
        r.validate().unwrap();

        r.lift(&serial, T0 + 1).unwrap();
        r.lift(&token, T0 + 1).unwrap();
        assert!(r.is_empty());
        assert!(matches!(
            r.lift(&token, T0 + 2),
            Err(RevocationError::NotRevoked { .. })
        ));
        assert!(RevocationTarget::serial("xyz").is_err());
        assert!(RevocationTarget::join_token("a\nb").is_err());
        assert_eq!(
            RevocationTarget::join_token("hushjt.0123456789abcdef")
                .unwrap_err()
                .to_string(),
            "\"hushjt.0123456789abcdef\" is not a join token id: an id is the 16 hex digits \
             after `hushjt.` (`hush ca token list` shows them)"
        );
    }

    /// Each row: the entries pushed at a time after revoking at T0 (and lifting the SPIFFE ID
    /// at T0 + 100 where it says so).
    #[test]
    fn entries_are_pushed_until_what_they_cover_has_expired() {
        let mut r = Revocations::default();
        r.revoke(&frontend(), T0, None).unwrap();
        r.revoke(&RevocationTarget::SpiffeId(id(BACKEND)), T0, None)
            .unwrap();
        r.lift(&RevocationTarget::SpiffeId(id(BACKEND)), T0 + 100)
            .unwrap();
        r.revoke(&RevocationTarget::serial("47b0").unwrap(), T0, None)
            .unwrap();
        r.revoke(&RevocationTarget::join_token(TOKEN).unwrap(), T0, None)
            .unwrap();
        let rows = [
            (T0, 4),
            (T0 + RETENTION - 1, 4),
            // Serial and token are gone; the lifted ID stays until a retention after its lift.
            (T0 + RETENTION, 2),
            (T0 + 100 + RETENTION - 1, 2),
            // The revocation in force stays for ever.
            (T0 + 100 + RETENTION, 1),
            (T0 + 100 * RETENTION, 1),
        ];
        for (now, pushed) in rows {
            assert_eq!(
                r.deny_list(now, RETENTION).len(),
                pushed,
                "at T0 + {}",
                now - T0
            );
            let mut pruned = r.clone();
            let dropped = pruned.prune(now, RETENTION);
            assert_eq!(dropped, 4 - pushed, "at T0 + {}", now - T0);
            assert_eq!(
                pruned.deny_list(now, RETENTION),
                r.deny_list(now, RETENTION)
            );
        }
    }

    /// The back-dating rule, with the deny-list sidecars apply: a 5-minute back-dated
    /// certificate issued before the revocation is refused, one issued after the lift is not,
    /// however soon after.
    #[test]
    fn back_dated_certificates_are_refused_before_the_revocation_and_not_after_the_lift() {
        const BACKDATE: i64 = 300;
        let mut r = Revocations::default();
        r.revoke(&frontend(), T0, None).unwrap();
        // What the CA does: back-date, but never past the floor.
        let issued_at = |r: &Revocations, t: i64| {
            let floor = r.not_before_floor(&id(FRONTEND)).unwrap_or(i64::MIN);
            (t - BACKDATE).max(floor)
        };
        // Issued a second before the revocation: back-dated, and refused.
        let before = leaf(FRONTEND, &[0x11], T0 - 1 - BACKDATE);
        assert!(r.deny_list(T0, RETENTION).denies(&before).is_some());
        // Lifted ten seconds later; a certificate issued right after starts at the floor.
        r.lift(&frontend(), T0 + 10).unwrap();
        let not_before = issued_at(&r, T0 + 11);
        assert_eq!(not_before, T0, "not back-dated past the revocation");
        let after = leaf(FRONTEND, &[0x12], not_before);
        let deny = r.deny_list(T0 + 11, RETENTION);
        assert_eq!(deny.denies(&after), None);
        assert!(deny.denies(&before).is_some(), "the old one stays refused");
        // Without the floor, back-dating would have put it among the refused.
        let unfloored = leaf(FRONTEND, &[0x13], T0 + 11 - BACKDATE);
        assert!(deny.denies(&unfloored).is_some());
        // Long after the lift, back-dating is back to normal: the floor is far behind.
        assert_eq!(issued_at(&r, T0 + 3600), T0 + 3600 - BACKDATE);
    }

    /// Each row: what is revoked, what the caller presents, and the refusal's first words.
    #[test]
    fn the_ca_refuses_every_way_a_caller_is_covered() {
        let origin_serial = [0x47, 0xb0];
        let renewed = presented("5501", T0 - 60, record(&origin_serial, Some(TOKEN)));
        let revoke = |target: RevocationTarget| {
            let mut r = Revocations::default();
            r.revoke(&target, T0, Some("compromised".into())).unwrap();
            r
        };
        let lifted = {
            let mut r = revoke(frontend());
            r.lift(&frontend(), T0 + 60).unwrap();
            r
        };
        /// (what is revoked, the revocations, the token presented, the certificate
        /// presented, the refusal's first words)
        type Row<'a> = (
            &'a str,
            Revocations,
            Option<&'a str>,
            Option<&'a PresentedCertificate>,
            Option<&'a str>,
        );
        let rows: Vec<Row<'_>> = vec![
            (
                "the identity, to a token",
                revoke(frontend()),
                None,
                None,
                Some(
                    "spiffe://example.org/ns/shop/sa/frontend is revoked (hush ca \
                     revoke-identity on 2025-06-15T15:06:40Z: compromised); no certificate is \
                     issued or renewed for it until the revocation is lifted (hush ca \
                     revoke-identity --lift)",
                ),
            ),
            (
                "the identity, to a renewal",
                revoke(frontend()),
                None,
                Some(&renewed),
                Some("spiffe://example.org/ns/shop/sa/frontend is revoked"),
            ),
            (
                "the serial presented",
                revoke(RevocationTarget::serial("5501").unwrap()),
                None,
                Some(&renewed),
                Some("certificate 5501 is revoked (hush ca revoke-identity on"),
            ),
            (
                "the serial it was renewed from",
                revoke(RevocationTarget::serial("47b0").unwrap()),
                None,
                Some(&renewed),
                Some("certificate 5501 was renewed from certificate 47b0, which is revoked"),
            ),
            (
                "the token it was attested with",
                revoke(RevocationTarget::join_token(TOKEN).unwrap()),
                None,
                Some(&renewed),
                Some("certificate 5501 was attested with join token 0123456789abcdef"),
            ),
            (
                "the token presented",
                revoke(RevocationTarget::join_token(TOKEN).unwrap()),
                Some(TOKEN),
                None,
                Some("join token 0123456789abcdef is revoked"),
            ),
            (
                "another token",
                revoke(RevocationTarget::join_token(TOKEN).unwrap()),
                Some("fedcba9876543210"),
                None,
                None,
            ),
            (
                "another identity",
                revoke(RevocationTarget::SpiffeId(id(BACKEND))),
                None,
                Some(&renewed),
                None,
            ),
            (
                "a lifted identity, to a certificate from before",
                lifted.clone(),
                None,
                Some(&renewed),
                Some(
                    "certificate 5501 for spiffe://example.org/ns/shop/sa/frontend was issued before",
                ),
            ),
            (
                "a lifted identity, to a token",
                lifted.clone(),
                Some(TOKEN),
                None,
                None,
            ),
        ];
        for (name, revocations, token, presented, expected) in rows {
            let refusal = revocations.refusal(&id(FRONTEND), token, presented);
            match (expected, &refusal) {
                (None, None) => {}
                (Some(words), Some(refusal)) => {
                    assert!(refusal.starts_with(words), "{name}: {refusal}");
                }
                _ => panic!("{name}: expected {expected:?}, got {refusal:?}"),
            }
        }
        // A certificate issued after the lift renews.
        let fresh = presented("6601", T0 + 60, record(&[0x66, 0x01], None));
        assert_eq!(lifted.refusal(&id(FRONTEND), None, Some(&fresh)), None);
    }

    #[test]
    fn reads_and_writes_the_file() {
        let mut r = Revocations::default();
        r.revoke(&frontend(), T0, Some("stolen".into())).unwrap();
        r.revoke(&RevocationTarget::serial("47b0").unwrap(), T0, None)
            .unwrap();
        r.generation = 3;
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"generation":3,"spiffe_ids":[{"id":"spiffe://example.org/ns/shop/sa/frontend","revoked_at":1750000000,"reason":"stolen"}],"serials":[{"serial":"47b0","revoked_at":1750000000}]}"#
        );
        let read: Revocations = serde_json::from_str(&text).unwrap();
        assert_eq!(read, r);
        read.validate().unwrap();

        let bad = [
            (r#"{"version":2,"generation":1}"#, "version 2"),
            (
                r#"{"version":1,"generation":1,"serials":[{"serial":"0047B0","revoked_at":1}]}"#,
                "not written as hush writes serials",
            ),
            (
                r#"{"version":1,"generation":1,"join_tokens":[{"id":"a","revoked_at":1},{"id":"a","revoked_at":2}]}"#,
                "listed twice",
            ),
            (
                r#"{"version":1,"generation":1,"spiffe_ids":[{"id":"spiffe://example.org/a","revoked_at":5,"lifted_at":4}]}"#,
                "lifted before it was revoked",
            ),
        ];
        for (text, words) in bad {
            let parsed: Revocations = serde_json::from_str(text).unwrap();
            let error = parsed.validate().unwrap_err().to_string();
            assert!(error.contains(words), "{text}: {error}");
        }
        assert!(
            serde_json::from_str::<Revocations>(r#"{"version":1,"generation":1,"x":1}"#).is_err()
        );
    }
}
