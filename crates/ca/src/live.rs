//! The authorities a running CA signs with, and how it follows its directory without a
//! restart.
//!
//! The CA polls: every `--reload-interval` it reads the manifest and the files it names and
//! compares a hash of them with what it loaded last. Polling rather than inotify, because a
//! Kubernetes Secret volume changes by swapping a `..data` link (no event on the files a CA
//! watches, and mtimes that mean nothing), inotify misses changes on network and overlay file
//! systems, and reading a few kilobytes every few seconds costs nothing.
//!
//! A new set is checked as fully as the first one (the intermediate chains to a trusted root,
//! matches its key, has not expired) and must not go back: a manifest of a lower generation
//! than the one in force (say, a restored backup of the Secret) is refused, so that a revoked
//! root never comes back by accident, and so are revocations of a lower generation, so that a
//! revoked identity never does. A refused set leaves the one in force signing.
//!
//! An intermediate whose key is in a PKCS#11 token is opened (a login and a test signature)
//! only when the files read differ from those in force: an unchanged directory costs the token
//! nothing. A changed one opens the key anew even when the same intermediate stays active, since
//! the set in force shares its open key with requests in flight; a key that cannot be opened
//! then (a wrong PIN, a missing label) is a refused reload like any other.

use std::time::Duration;

use tracing::{info, warn};

use crate::audit::{AuditEvent, AuditRecord};
use crate::authorities::{AuthorityId, Manifest};
use crate::authority::{Authority, AuthorityError, IssuancePolicy};
use crate::jwt::JwtMaterial;
use crate::revocations::Revocations;
use crate::service::CaService;
use crate::store::{CaDir, LoadedAuthorities, StoreError};

/// The API name of the CA's own audit lines about its authorities.
const RELOAD_API: &str = "hush.ca.reload";

/// The authorities in force: the signing intermediate, the trust bundle, the JWT authorities,
/// and the manifest they came from; and the revocations read with them.
pub struct AuthoritySet {
    authority: Authority,
    jwt: JwtMaterial,
    manifest: Manifest,
    intermediate_id: AuthorityId,
    revocations: Revocations,
    fingerprint: [u8; 32],
    /// Every authority this CA has seen revoked since it started, in this set or one before
    /// it: a later set that trusts one again is refused, whatever its generation.
    revoked: std::collections::BTreeSet<AuthorityId>,
}

/// Why a set of authorities was not taken; the one in force keeps signing.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A file is missing, unreadable or malformed (perhaps half copied: the next poll retries).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The active intermediate cannot sign (not chained, wrong key, expired).
    #[error("the active intermediate cannot sign: {0}")]
    Authority(#[from] AuthorityError),
    /// The manifest is older than the one in force.
    #[error(
        "the authorities manifest has generation {found}, older than the {loaded} in force: a restored or stale copy? Refused, so that nothing revoked comes back"
    )]
    OlderGeneration {
        /// The generation read.
        found: u64,
        /// The generation in force.
        loaded: u64,
    },
    /// The manifest has the generation in force but other contents.
    #[error(
        "the authorities manifest has generation {generation}, the one in force, but other contents: two copies of the CA directory were changed apart; apply the copy that holds every change (`hush ca authorities` on each shows them)"
    )]
    Diverged {
        /// The generation both share.
        generation: u64,
    },
    /// The manifest trusts an authority this CA has seen revoked.
    #[error(
        "the authorities manifest says {id} is {state}, but this CA has seen it revoked: a copy of the CA directory from before the revocation? Refused, so that nothing revoked comes back"
    )]
    Unrevoked {
        /// The authority.
        id: AuthorityId,
        /// What the refused manifest says it is.
        state: &'static str,
    },
    /// The directory now holds a CA of another trust domain.
    #[error("the directory now holds a CA for trust domain {found}, but this CA serves {expected}")]
    OtherTrustDomain {
        /// The trust domain in force.
        expected: String,
        /// The one read.
        found: String,
    },
    /// The TLS side cannot use the new roots.
    #[error("the reloaded roots cannot verify client certificates: {0}")]
    Trust(String),
    /// The revocations are older than the ones in force.
    #[error(
        "revocations.json has generation {found}, older than the {loaded} in force: a restored or stale copy? Refused, so that no revoked identity comes back (lift a revocation with `hush ca revoke-identity --lift`)"
    )]
    OlderRevocations {
        /// The generation read.
        found: u64,
        /// The generation in force.
        loaded: u64,
    },
    /// The manifest allows shorter certificates than this CA grants.
    #[error(
        "the manifest's max_ttl_seconds ({manifest} s) is below this CA's --max-ttl ({serving} s): a retired authority could be revoked while certificates under it live"
    )]
    MaxTtl {
        /// The manifest's bound.
        manifest: u64,
        /// The CA's --max-ttl.
        serving: u64,
    },
}

/// What a reload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing read differs from what is in force.
    Unchanged,
    /// A new set is in force.
    Loaded {
        /// The generation before.
        previous: u64,
        /// The generation now.
        generation: u64,
        /// Whether another intermediate signs now.
        intermediate_changed: bool,
        /// Whether the trust bundle changed.
        roots_changed: bool,
        /// Whether anything about the authorities changed (not only the revocations).
        authorities_changed: bool,
        /// Whether the revocations changed.
        revocations_changed: bool,
        /// The revocations' generation now.
        revocations_generation: u64,
    },
}

// === impl AuthoritySet ===

impl AuthoritySet {
    /// Checks what `loaded` holds and prepares to sign with it under `policy`.
    pub fn new(loaded: LoadedAuthorities, policy: IssuancePolicy) -> Result<Self, ReloadError> {
        let LoadedAuthorities {
            manifest,
            material,
            jwt,
            revocations,
            fingerprint,
        } = loaded;
        if manifest.generation > 0 && policy.max_ttl.as_secs() > manifest.max_ttl_seconds {
            return Err(ReloadError::MaxTtl {
                manifest: manifest.max_ttl_seconds,
                serving: policy.max_ttl.as_secs(),
            });
        }
        let intermediate_id = AuthorityId::of_certificate(&material.intermediate)
            .map_err(|e| AuthorityError::BadIntermediate(e.to_string()))?;
        let authority = Authority::new(material, policy)?;
        let revoked = manifest
            .authorities
            .iter()
            .filter(|a| a.state == crate::authorities::State::Revoked)
            .map(|a| a.id.clone())
            .collect();
        Ok(Self {
            authority,
            jwt,
            manifest,
            intermediate_id,
            revocations,
            fingerprint,
            revoked,
        })
    }

    /// Loads `dir` and prepares to sign with it.
    pub fn load(dir: &CaDir, policy: IssuancePolicy) -> Result<Self, ReloadError> {
        Self::new(dir.load_authorities()?, policy)
    }

    /// Loads `dir` and prepares to sign with it under the same policy, unless the files read
    /// are those in force: then `None`, and no token key is opened.
    pub fn load_if_changed(&self, dir: &CaDir) -> Result<Option<Self>, ReloadError> {
        match dir.load_authorities_if_changed(&self.fingerprint)? {
            Some(loaded) => Self::new(loaded, *self.authority.policy()).map(Some),
            None => Ok(None),
        }
    }

    /// The signing core.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The manifest in force.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's generation (0 for a directory of the old layout).
    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// The JWT authorities: the published keys, and the one that signs.
    pub fn jwt(&self) -> &JwtMaterial {
        &self.jwt
    }

    /// The intermediate that signs.
    pub fn intermediate_id(&self) -> &AuthorityId {
        &self.intermediate_id
    }

    /// Carries what this CA has seen revoked into `self`, the set that succeeds `previous`.
    pub(crate) fn remember(&mut self, previous: &Self) {
        self.revoked.extend(previous.revoked.iter().cloned());
    }

    /// What is revoked.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Compares `next` with `self` and says what taking it would change, or why not to.
    pub(crate) fn check_successor(&self, next: &Self) -> Result<Reload, ReloadError> {
        if next.fingerprint == self.fingerprint {
            return Ok(Reload::Unchanged);
        }
        if next.generation() < self.generation() {
            return Err(ReloadError::OlderGeneration {
                found: next.generation(),
                loaded: self.generation(),
            });
        }
        // The same generation with other authorities: two copies of the directory were changed
        // apart from each other, and whichever was applied last would silently undo the other.
        if next.generation() == self.generation() && next.manifest != self.manifest {
            return Err(ReloadError::Diverged {
                generation: next.generation(),
            });
        }
        // A revocation is never undone by a copy made before it, even one with more changes
        // (and so a higher generation) than the copy that revoked.
        if let Some(back) =
            next.manifest.authorities.iter().find(|a| {
                a.state != crate::authorities::State::Revoked && self.revoked.contains(&a.id)
            })
        {
            return Err(ReloadError::Unrevoked {
                id: back.id.clone(),
                state: back.state.as_str(),
            });
        }
        if next.revocations.generation < self.revocations.generation {
            return Err(ReloadError::OlderRevocations {
                found: next.revocations.generation,
                loaded: self.revocations.generation,
            });
        }
        let (expected, found) = (self.authority.trust_domain(), next.authority.trust_domain());
        if expected != found {
            return Err(ReloadError::OtherTrustDomain {
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
        let intermediate_changed = next.intermediate_id != self.intermediate_id;
        let roots_changed = next.authority.bundle().roots() != self.authority.bundle().roots();
        let revocations_changed = next.revocations != self.revocations;
        Ok(Reload::Loaded {
            previous: self.generation(),
            generation: next.generation(),
            intermediate_changed,
            roots_changed,
            // A changed key file under the same manifest counts: the fingerprint saw it.
            authorities_changed: !revocations_changed
                || next.manifest != self.manifest
                || intermediate_changed
                || roots_changed,
            revocations_changed,
            revocations_generation: next.revocations.generation,
        })
    }
}

impl std::fmt::Debug for AuthoritySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthoritySet")
            .field("generation", &self.manifest.generation)
            .field("intermediate", &self.intermediate_id)
            .finish_non_exhaustive()
    }
}

/// Polls `dir` every `interval` and puts what changed in force in `service`, until dropped.
/// Each change, and each new reason to refuse one, is logged and audited once.
pub async fn follow_directory(service: CaService, dir: CaDir, interval: Duration) {
    let mut last_refusal: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the set in force was loaded a moment ago.
    tick.tick().await;
    loop {
        tick.tick().await;
        let outcome = tokio::task::spawn_blocking({
            let (service, dir) = (service.clone(), dir.clone());
            move || service.reload_from(&dir)
        })
        .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                warn!(error = %e, "the reload task failed; trying again at the next poll");
                continue;
            }
        };
        match outcome {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Loaded {
                previous,
                generation,
                intermediate_changed,
                roots_changed,
                authorities_changed,
                revocations_changed,
                revocations_generation,
            }) => {
                last_refusal = None;
                let current = service.current();
                if revocations_changed {
                    let revocations = current.revocations();
                    info!(
                        generation = revocations_generation,
                        spiffe_ids = revocations.spiffe_ids.len(),
                        serials = revocations.serials.len(),
                        join_tokens = revocations.join_tokens.len(),
                        "revocations reloaded"
                    );
                    let mut record = AuditRecord::new(AuditEvent::RevocationsLoaded, RELOAD_API);
                    record.generation = Some(revocations_generation);
                    service.audit_record(&record).await;
                }
                if !authorities_changed {
                    continue;
                }
                let roots = current.authority().bundle().roots().len();
                let jwt = current.jwt().signer.as_ref().map(|s| s.id.to_string());
                info!(
                    previous,
                    generation,
                    intermediate = %current.intermediate_id(),
                    jwt = jwt.as_deref().unwrap_or("none"),
                    intermediate_changed,
                    roots_changed,
                    roots,
                    "authorities reloaded"
                );
                let mut record = AuditRecord::new(AuditEvent::AuthoritiesLoaded, RELOAD_API);
                record.generation = Some(generation);
                record.authority = Some(current.intermediate_id().to_string());
                record.kind = Some("intermediate");
                service.audit_record(&record).await;
            }
            Err(e) => {
                let reason = e.to_string();
                if last_refusal.as_deref() != Some(reason.as_str()) {
                    let generation = service.current().generation();
                    warn!(
                        reason = %reason,
                        generation,
                        "refused to reload the authorities; still signing with the ones in force"
                    );
                    let mut record = AuditRecord::new(AuditEvent::ReloadRefused, RELOAD_API);
                    record.generation = Some(generation);
                    record.reason = Some(reason.clone());
                    service.audit_record(&record).await;
                    last_refusal = Some(reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocations::RevocationTarget;
    use crate::store::{InitOptions, RotateOptions};
    use hush_identity::TrustDomain;

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    fn load(dir: &CaDir) -> AuthoritySet {
        AuthoritySet::load(dir, IssuancePolicy::default()).unwrap()
    }

    /// `previous` then `next`, as a running CA takes them; the set in force afterwards.
    fn take(previous: &AuthoritySet, dir: &CaDir) -> Result<AuthoritySet, ReloadError> {
        let mut next = load(dir);
        previous.check_successor(&next)?;
        next.remember(previous);
        Ok(next)
    }

    #[test]
    fn a_copy_from_before_a_revocation_never_brings_the_root_back() {
        let temp = tempfile::tempdir().unwrap();
        let live = CaDir::new(temp.path().join("live"));
        let mut options = InitOptions::new(TrustDomain::new("cluster.local").unwrap());
        options.publish_wait = Duration::ZERO;
        live.init(&options).unwrap();
        let stale = CaDir::new(temp.path().join("stale"));
        copy_dir(live.path(), stale.path());
        let first = load(&live);
        let old_root = first.manifest().active().0.id.clone();

        // The live copy rotates the root and revokes the old one (generation 4).
        live.rotate_root(&RotateOptions::default()).unwrap();
        live.activate(false).unwrap();
        live.revoke(old_root.as_str(), true).unwrap();
        let revoked = take(&first, &live).unwrap();
        assert!(!revoked.authority().bundle().roots().is_empty());

        // The stale copy makes more changes than that, so its generation is higher.
        for _ in 0..3 {
            stale
                .rotate_intermediate(&RotateOptions::default())
                .unwrap();
            stale.activate(false).unwrap();
        }
        assert!(stale.authorities().unwrap().generation > revoked.generation());
        let err = take(&revoked, &stale).expect_err("the stale copy is refused");
        assert!(
            matches!(err, ReloadError::Unrevoked { ref id, .. } if *id == old_root),
            "{err}"
        );
        assert!(err.to_string().contains("seen it revoked"), "{err}");
    }

    #[test]
    fn two_copies_changed_apart_to_the_same_generation_are_told_apart() {
        let temp = tempfile::tempdir().unwrap();
        let one = CaDir::new(temp.path().join("one"));
        one.init(&InitOptions::new(
            TrustDomain::new("cluster.local").unwrap(),
        ))
        .unwrap();
        let other = CaDir::new(temp.path().join("other"));
        copy_dir(one.path(), other.path());
        let first = load(&one);
        one.rotate_intermediate(&RotateOptions::default()).unwrap();
        other
            .rotate_intermediate(&RotateOptions::default())
            .unwrap();
        let taken = take(&first, &one).unwrap();
        let err = take(&taken, &other).expect_err("the other copy is refused");
        assert!(matches!(err, ReloadError::Diverged { .. }), "{err}");
        // Reading the same copy again is no change at all.
        assert_eq!(
            taken.check_successor(&load(&one)).unwrap(),
            Reload::Unchanged
        );
    }

    #[test]
    fn a_change_of_revocations_alone_is_loaded_and_an_older_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(TrustDomain::new("example.org").unwrap()))
            .unwrap();
        let policy = IssuancePolicy::default();
        let first = AuthoritySet::load(&ca, policy).unwrap();
        let id = RevocationTarget::SpiffeId("spiffe://example.org/a".parse().unwrap());
        ca.revoke_identity(&id, None).unwrap();
        ca.lift_revocation(&id).unwrap();
        let second = AuthoritySet::load(&ca, policy).unwrap();
        match first.check_successor(&second).unwrap() {
            Reload::Loaded {
                authorities_changed,
                revocations_changed,
                revocations_generation,
                ..
            } => {
                assert!(!authorities_changed);
                assert!(revocations_changed);
                assert_eq!(revocations_generation, 2);
            }
            Reload::Unchanged => panic!("the revocation was not seen"),
        }
        assert_eq!(second.check_successor(&second).unwrap(), Reload::Unchanged);

        // A restored copy of an older generation must not lift anything.
        let path = dir.path().join("revocations.json");
        let mut stale: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        stale["generation"] = 1.into();
        std::fs::write(&path, serde_json::to_vec(&stale).unwrap()).unwrap();
        let third = AuthoritySet::load(&ca, policy).unwrap();
        let refused = second.check_successor(&third).unwrap_err();
        assert!(
            matches!(
                refused,
                ReloadError::OlderRevocations {
                    found: 1,
                    loaded: 2
                }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("--lift"), "{refused}");
    }
}
