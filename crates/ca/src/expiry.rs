//! When an active authority is due for rotation, decided in one place: the running CA's
//! warnings, `hush ca authorities` and `hush check` all ask here, so that they never disagree.
//!
//! The thresholds leave room for each rotation's own waits. An intermediate is made and
//! activated in minutes, but its certificates live up to the max TTL after it retires, and a
//! month covers holidays and change freezes. A new root must reach every sidecar (and every
//! cluster's chart values) before it signs, and replacing it is a planned change across teams:
//! a year ahead.
//!
//! Everything but the last section is pure: the time is an argument.

use std::fmt;
use std::time::Duration;

use tracing::warn;

use crate::authorities::{AuthorityEntry, AuthorityId, Kind, Manifest, State, utc};
use crate::service::CaService;

/// An active intermediate with less than this left is due for rotation.
pub const INTERMEDIATE_ROTATION_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// An active root with less than this left is due for rotation.
pub const ROOT_ROTATION_WARNING: Duration = Duration::from_secs(365 * 86_400);

/// How often a running CA repeats its warnings while a rotation is due: daily, so the warning
/// is in every day's logs without flooding them.
pub const ROTATION_REMINDER_INTERVAL: Duration = Duration::from_secs(86_400);

/// How long before its NotAfter an active authority of `kind` is due for rotation.
pub fn rotation_warning(kind: Kind) -> Duration {
    match kind {
        // A JWT authority is rotated on the intermediate's rhythm, and made with its lifetime.
        Kind::Intermediate | Kind::Jwt => INTERMEDIATE_ROTATION_WARNING,
        Kind::Root => ROOT_ROTATION_WARNING,
    }
}

/// Whether an active authority of `kind` that expires at `not_after` is due for rotation at
/// `now` (Unix seconds both).
pub fn is_rotation_due(kind: Kind, not_after: i64, now: i64) -> bool {
    not_after.saturating_sub(now) < seconds(rotation_warning(kind))
}

/// An active authority due for rotation, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationDue {
    /// The authority.
    pub id: AuthorityId,
    /// Root or intermediate.
    pub kind: Kind,
    /// Its NotAfter (Unix seconds).
    pub not_after: i64,
    /// What it had left when judged (negative once expired).
    pub seconds_left: i64,
    /// What the operator should do.
    pub next_step: NextStep,
}

/// What ends a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Nothing is staged: make a successor of this kind (`hush ca rotate …`).
    Rotate(Kind),
    /// A successor is staged already: put it in force (`hush ca activate`).
    Activate {
        /// The staged authority.
        id: AuthorityId,
        /// Its kind.
        kind: Kind,
    },
}

/// Every active authority due for rotation at `now`: the intermediate first, then the root,
/// then the JWT authority.
pub fn rotations_due(manifest: &Manifest, now: i64) -> Vec<RotationDue> {
    let active = |kind| {
        manifest
            .authorities
            .iter()
            .find(|a| a.kind == kind && a.state == State::Active)
    };
    [Kind::Intermediate, Kind::Root, Kind::Jwt]
        .into_iter()
        .filter_map(active)
        .filter_map(|entry| rotation_due(manifest, entry, now))
        .collect()
}

/// The rotation `entry` is due for at `now`: `None` unless it is active and close to its end.
pub fn rotation_due(manifest: &Manifest, entry: &AuthorityEntry, now: i64) -> Option<RotationDue> {
    if entry.state != State::Active || !is_rotation_due(entry.kind, entry.not_after, now) {
        return None;
    }
    let staged = |kind| {
        manifest
            .authorities
            .iter()
            .find(|a| a.kind == kind && a.state == State::Prepared)
    };
    let next_step = match (entry.kind, staged(entry.kind)) {
        (kind, Some(successor)) => NextStep::Activate {
            id: successor.id.clone(),
            kind,
        },
        // An intermediate never outlives its root: when the root ends within the
        // intermediate's warning too, only a new root brings a lasting intermediate.
        (Kind::Intermediate, None)
            if root_ends_within_intermediate_warning(manifest, entry, now) =>
        {
            NextStep::Rotate(Kind::Root)
        }
        (kind, None) => NextStep::Rotate(kind),
    };
    Some(RotationDue {
        id: entry.id.clone(),
        kind: entry.kind,
        not_after: entry.not_after,
        seconds_left: entry.not_after.saturating_sub(now),
        next_step,
    })
}

fn root_ends_within_intermediate_warning(
    manifest: &Manifest,
    intermediate: &AuthorityEntry,
    now: i64,
) -> bool {
    intermediate
        .issuer
        .as_ref()
        .and_then(|root| manifest.get(root))
        .is_some_and(|root| is_rotation_due(Kind::Intermediate, root.not_after, now))
}

/// `21 d`, `5 h`, `12 min`: the largest whole unit, as an operator reads a deadline.
fn left(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match (seconds / 86_400, seconds / 3_600, seconds / 60) {
        (0, 0, minutes) => format!("{minutes} min"),
        (0, hours, _) => format!("{hours} h"),
        (days, _, _) => format!("{days} d"),
    }
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

impl fmt::Display for NextStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rotate(kind) => write!(f, "run `hush ca rotate {kind}`"),
            Self::Activate { id, kind } => write!(
                f,
                "activate the prepared {kind} {} (`hush ca activate`)",
                id.short()
            ),
        }
    }
}

impl fmt::Display for RotationDue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, id) = (self.kind, self.id.short());
        if self.seconds_left <= 0 {
            write!(f, "the active {kind} {id} has expired: {}", self.next_step)
        } else {
            write!(
                f,
                "the active {kind} {id} expires in {}: {}",
                left(self.seconds_left),
                self.next_step
            )
        }
    }
}

// === Warnings in the CA's log ===

/// Logs one warning per active authority of `manifest` due for rotation at `now`; returns how
/// many.
pub fn warn_of_rotations_due(manifest: &Manifest, now: i64) -> usize {
    let due = rotations_due(manifest, now);
    for rotation in &due {
        warn!(
            authority = %rotation.id,
            kind = %rotation.kind,
            not_after = %utc(rotation.not_after),
            seconds_left = rotation.seconds_left,
            "{rotation}"
        );
    }
    due.len()
}

/// Repeats [`warn_of_rotations_due`] after every change of the authorities in force and every
/// `every` ([`ROTATION_REMINDER_INTERVAL`]), until dropped. The warning at start is the
/// caller's, so that it comes before the CA says it is ready.
pub async fn keep_warning_of_rotations_due(service: CaService, every: Duration) {
    let mut changes = service.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    // The service is gone; nothing is signed any more.
                    return;
                }
            }
        }
        warn_of_rotations_due(service.current().manifest(), unix_now());
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn entry(
        kind: Kind,
        id: &str,
        state: State,
        days_left: i64,
        issuer: Option<&str>,
    ) -> AuthorityEntry {
        AuthorityEntry {
            id: id_of(id),
            kind,
            state,
            cert: format!("{kind}-{id}.pem"),
            key: None,
            key_uri: None,
            issuer: issuer.map(id_of),
            not_before: NOW - DAY,
            not_after: NOW + days_left * DAY,
            prepared_at: None,
            activated_at: None,
            retired_at: None,
            tainted_at: None,
            revoked_at: None,
        }
    }

    fn id_of(name: &str) -> AuthorityId {
        AuthorityId::of_public_key(name.as_bytes())
    }

    /// An active root and intermediate with this many days left, and whatever else is given.
    fn manifest(root_days: i64, intermediate_days: i64, more: Vec<AuthorityEntry>) -> Manifest {
        let mut authorities = vec![
            entry(Kind::Root, "r1", State::Active, root_days, None),
            entry(
                Kind::Intermediate,
                "i1",
                State::Active,
                intermediate_days,
                Some("r1"),
            ),
        ];
        authorities.extend(more);
        Manifest {
            version: crate::authorities::MANIFEST_VERSION,
            trust_domain: "cluster.local".into(),
            generation: 1,
            publish_wait_seconds: 900,
            max_ttl_seconds: 86_400,
            authorities,
        }
    }

    /// What is due, and the step that ends each warning.
    type Steps = Vec<(Kind, NextStep)>;

    fn steps(manifest: &Manifest) -> Steps {
        rotations_due(manifest, NOW)
            .into_iter()
            .map(|due| (due.kind, due.next_step))
            .collect()
    }

    #[test]
    fn the_thresholds_are_a_month_for_an_intermediate_and_a_year_for_a_root() {
        for (kind, days_left, due) in [
            (Kind::Intermediate, 31, false),
            (Kind::Intermediate, 30, false),
            (Kind::Intermediate, 29, true),
            (Kind::Intermediate, -1, true),
            (Kind::Root, 366, false),
            (Kind::Root, 365, false),
            (Kind::Root, 364, true),
            (Kind::Root, 31, true),
        ] {
            assert_eq!(
                is_rotation_due(kind, NOW + days_left * DAY, NOW),
                due,
                "{kind} with {days_left} d left"
            );
        }
    }

    /// One row per situation: what is due, and what the warning tells the operator to do.
    #[test]
    fn each_due_authority_is_named_with_the_step_that_ends_the_warning() {
        let rotate = NextStep::Rotate;
        let cases: Vec<(&str, Manifest, Steps)> = vec![
            ("a fresh CA", manifest(3650, 365, vec![]), vec![]),
            (
                "an intermediate in its last month",
                manifest(3650, 21, vec![]),
                vec![(Kind::Intermediate, rotate(Kind::Intermediate))],
            ),
            (
                "a root in its last year",
                manifest(300, 200, vec![]),
                vec![(Kind::Root, rotate(Kind::Root))],
            ),
            (
                "both, with the root outliving the intermediate's warning",
                manifest(200, 10, vec![]),
                vec![
                    (Kind::Intermediate, rotate(Kind::Intermediate)),
                    (Kind::Root, rotate(Kind::Root)),
                ],
            ),
            (
                "an intermediate under a root in its last month: only a new root helps",
                manifest(20, 10, vec![]),
                vec![
                    (Kind::Intermediate, rotate(Kind::Root)),
                    (Kind::Root, rotate(Kind::Root)),
                ],
            ),
            (
                "a successor is staged: activate it",
                manifest(
                    3650,
                    21,
                    vec![entry(
                        Kind::Intermediate,
                        "i2",
                        State::Prepared,
                        365,
                        Some("r1"),
                    )],
                ),
                vec![(
                    Kind::Intermediate,
                    NextStep::Activate {
                        id: id_of("i2"),
                        kind: Kind::Intermediate,
                    },
                )],
            ),
            (
                "a new root is staged with its intermediate",
                manifest(
                    300,
                    200,
                    vec![
                        entry(Kind::Root, "r2", State::Prepared, 3650, None),
                        entry(Kind::Intermediate, "i2", State::Prepared, 365, Some("r2")),
                    ],
                ),
                vec![(
                    Kind::Root,
                    NextStep::Activate {
                        id: id_of("r2"),
                        kind: Kind::Root,
                    },
                )],
            ),
            (
                "old, tainted and revoked authorities are nobody's concern",
                manifest(
                    3650,
                    365,
                    vec![
                        entry(Kind::Intermediate, "i0", State::Old, 3, Some("r1")),
                        entry(Kind::Root, "r0", State::Tainted, 3, None),
                        entry(Kind::Root, "rx", State::Revoked, -3, None),
                    ],
                ),
                vec![],
            ),
        ];
        for (situation, manifest, expected) in cases {
            assert_eq!(steps(&manifest), expected, "{situation}");
        }
    }

    #[test]
    fn a_warning_reads_as_a_sentence_with_the_command_to_run() {
        let m = manifest(3650, 21, vec![]);
        let due = rotations_due(&m, NOW - 3600);
        let short = id_of("i1").short().to_owned();
        assert_eq!(
            due[0].to_string(),
            format!(
                "the active intermediate {short} expires in 21 d: run `hush ca rotate intermediate`"
            )
        );
        assert_eq!(due[0].seconds_left, 21 * DAY + 3600);
        let staged = manifest(
            300,
            200,
            vec![entry(Kind::Root, "r2", State::Prepared, 3650, None)],
        );
        assert_eq!(
            rotations_due(&staged, NOW)[0].to_string(),
            format!(
                "the active root {} expires in 300 d: activate the prepared root {} (`hush ca activate`)",
                id_of("r1").short(),
                id_of("r2").short()
            )
        );
        let expired = rotations_due(&m, NOW + 22 * DAY);
        assert!(
            expired[0].to_string().contains("has expired: run"),
            "{}",
            expired[0]
        );
        assert_eq!(left(5 * 3600 + 59), "5 h");
        assert_eq!(left(600), "10 min");
    }
}
