//! `hush ca authorities`, `rotate`, `activate`, `taint`, `revoke`: the CA's roots and
//! intermediates over the years.
//!
//! Every command that changes the directory writes one audit line per authority it changed
//! to `DIR/audit.log` and prints what to do next, so that a rotation can be followed from
//! the terminal alone.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hush_ca::{
    AuditEvent, AuditLog, AuditRecord, AuthorityEntry, AuthorityKind, AuthorityState, CaDir,
    Change, Manifest, RotateOptions,
};
use serde_json::json;

use super::KeyAlgorithm;
use crate::parse_duration;
use crate::times::{span, utc_second};

/// The API name audit lines of these commands carry.
pub(super) const ADMIN_API: &str = "hush.ca.admin";
/// An active intermediate with less left than this is due for rotation.
const INTERMEDIATE_WARNING: i64 = 30 * 86_400;
/// An active root with less left than this is due for rotation.
const ROOT_WARNING: i64 = 365 * 86_400;

#[derive(Debug, Subcommand)]
pub(crate) enum RotateCommand {
    /// Sign a new intermediate with the active root and stage it (`prepared`). This is the one
    /// command that needs the root's key: DIR/root-<id>.key, or the file given with --root-key.
    Intermediate(RotateIntermediateArgs),
    /// Make a new root and an intermediate under it and stage both: the root is in the trust
    /// bundle at once and signs only after `hush ca activate`, once sidecars have fetched it.
    Root(RotateRootArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RotateIntermediateArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The active root's key, when it is kept outside DIR.
    #[arg(long)]
    root_key: Option<PathBuf>,
    /// Lifetime of the new intermediate (never past its root).
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    lifetime: Duration,
    /// Key algorithm of the new intermediate.
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::EcdsaP256)]
    key_algorithm: KeyAlgorithm,
}

#[derive(Debug, Args)]
pub(crate) struct RotateRootArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// Lifetime of the new root.
    #[arg(long, default_value = "3650d", value_parser = parse_duration)]
    root_lifetime: Duration,
    /// Lifetime of the new intermediate.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    intermediate_lifetime: Duration,
    /// Key algorithm of the new root and intermediate.
    #[arg(long, value_enum, default_value_t = KeyAlgorithm::EcdsaP256)]
    key_algorithm: KeyAlgorithm,
}

#[derive(Debug, Args)]
pub(crate) struct ActivateArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// Activate a new root before its publish wait is over: only when every sidecar is known
    /// to trust it already (or none runs yet).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TaintArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The authority's ID (at least 6 hex digits; see `hush ca authorities`).
    #[arg(long)]
    authority: String,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The authority's ID (at least 6 hex digits; see `hush ca authorities`).
    #[arg(long)]
    authority: String,
    /// Revoke even though certificates issued under it may still be in use: they stop being
    /// trusted as soon as sidecars fetch the new bundle.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SecretArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The Secret's name (the chart's `ca.secret.name`).
    #[arg(long, default_value = "hush-ca")]
    name: String,
    /// The Secret's namespace (where the chart is installed).
    #[arg(long, default_value = "hush")]
    namespace: String,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// Print JSON: every manifest field, plus `seconds_left`, `live_until` and
    /// `activate_after`.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn rotate(command: RotateCommand) -> Result<()> {
    match command {
        RotateCommand::Intermediate(args) => {
            let dir = CaDir::new(&args.dir);
            let options = RotateOptions {
                key_algorithm: args.key_algorithm.into(),
                intermediate_lifetime: args.lifetime,
                root_key: args.root_key,
                ..RotateOptions::default()
            };
            let change = dir.rotate_intermediate(&options)?;
            record(&dir, &change, AuditEvent::AuthorityPrepared, None).await?;
            let entry = entry(&change.manifest, 0, &change);
            eprintln!(
                "prepared intermediate {} (valid until {}), signed by root {}",
                entry.id,
                at(entry.not_after),
                entry.issuer.as_ref().map(|i| i.as_str()).unwrap_or("?")
            );
            eprintln!(
                "Next: `hush ca activate --dir {}` makes it sign (copy the directory first to \
                 wherever a CA reads another copy of it).",
                args.dir.display()
            );
            Ok(())
        }
        RotateCommand::Root(args) => {
            let dir = CaDir::new(&args.dir);
            let options = RotateOptions {
                key_algorithm: args.key_algorithm.into(),
                root_lifetime: args.root_lifetime,
                intermediate_lifetime: args.intermediate_lifetime,
                root_key: None,
            };
            let change = dir.rotate_root(&options)?;
            record(&dir, &change, AuditEvent::AuthorityPrepared, None).await?;
            let root = entry(&change.manifest, 0, &change);
            let intermediate = entry(&change.manifest, 1, &change);
            let after = change.manifest.activate_after().unwrap_or_default();
            eprintln!(
                "prepared root {} and intermediate {} under it; the trust bundle now holds {} roots",
                root.id,
                intermediate.id,
                change.manifest.trusted_roots().len()
            );
            eprintln!(
                "Next: publish the new bundle (copy the directory to wherever a CA reads another \
                 copy of it; on Kubernetes also update the chart's trustBundle), then after {} (publish wait {}) run \
                 `hush ca activate --dir {}`. {} is needed only to make its next intermediate: \
                 keep it offline.",
                at(after),
                span(seconds(change.manifest.publish_wait_seconds)),
                args.dir.display(),
                root.key.as_deref().unwrap_or("the root key"),
            );
            Ok(())
        }
    }
}

pub(crate) async fn activate(args: ActivateArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let (change, activation) = dir.activate(args.force)?;
    record(
        &dir,
        &change,
        AuditEvent::AuthorityActivated,
        Some(activation.forced),
    )
    .await?;
    eprintln!(
        "intermediate {} signs from now on{}",
        activation.intermediate,
        match &activation.root {
            Some(root) => format!(", under the new root {root}"),
            None => String::new(),
        }
    );
    if activation.forced {
        eprintln!("the publish wait was skipped (--force)");
    }
    for retired in &activation.retired {
        if let Some(entry) = change.manifest.get(retired) {
            eprintln!(
                "{} {} is old: still trusted; sidecars renew away from it by half-life, or at \
                 once after `hush ca taint --authority {}`",
                entry.kind,
                entry.id,
                entry.id.short()
            );
        }
    }
    eprintln!(
        "A running CA reading this directory picks the change up by itself, without a restart."
    );
    Ok(())
}

pub(crate) async fn taint(args: TaintArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let change = dir.taint(&args.authority)?;
    record(&dir, &change, AuditEvent::AuthorityTainted, None).await?;
    for id in &change.authorities {
        eprintln!("tainted {id}: sidecars holding certificates under it renew now");
    }
    Ok(())
}

pub(crate) async fn revoke(args: RevokeArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let change = dir.revoke(&args.authority, args.force)?;
    record(
        &dir,
        &change,
        AuditEvent::AuthorityRevoked,
        Some(args.force),
    )
    .await?;
    for id in &change.authorities {
        eprintln!("revoked {id}: it leaves the trust bundle and its key file is deleted");
    }
    eprintln!(
        "the trust bundle holds {} root(s); on Kubernetes update the chart's trustBundle with DIR/bundle.pem",
        change.manifest.trusted_roots().len()
    );
    Ok(())
}

/// Prints the Secret a CA on Kubernetes mounts, for `kubectl apply -f -`: every file a CA
/// reads, no root key, and the manifest's generation as an annotation.
pub(crate) fn secret(args: SecretArgs) -> Result<()> {
    use base64::Engine as _;
    let dir = CaDir::new(&args.dir);
    let generation = dir.authorities()?.generation;
    let data: serde_json::Map<String, serde_json::Value> = dir
        .serving_files()?
        .into_iter()
        .map(|(name, contents)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(contents);
            (name, json!(encoded))
        })
        .collect();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": args.name,
            "namespace": args.namespace,
            "labels": {"app.kubernetes.io/part-of": "hush"},
            "annotations": {"hush.dev/ca-generation": generation.to_string()},
        },
        "type": "Opaque",
        "data": data,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&secret)?)?;
    Ok(())
}

pub(crate) fn list(args: ListArgs) -> Result<()> {
    let manifest = CaDir::new(&args.dir).authorities()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = std::io::stdout().lock();
    if args.json {
        let authorities: Vec<_> = manifest
            .authorities
            .iter()
            .map(|a| {
                let mut value = serde_json::to_value(a).unwrap_or_default();
                value["seconds_left"] = json!(a.not_after - now);
                value["live_until"] = json!(manifest.live_until(a));
                value["note"] = json!(note(&manifest, a, now));
                value
            })
            .collect();
        let document = json!({
            "version": manifest.version,
            "trust_domain": manifest.trust_domain,
            "generation": manifest.generation,
            "publish_wait_seconds": manifest.publish_wait_seconds,
            "max_ttl_seconds": manifest.max_ttl_seconds,
            "activate_after": manifest.activate_after(),
            "authorities": authorities,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "trust domain {}, generation {}{}",
        manifest.trust_domain,
        manifest.generation,
        if manifest.generation == 0 {
            " (no authorities.json yet: the first change writes it)"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "{:<16}  {:<12}  {:<8}  {:<20}  {:<11}  NOTE",
        "ID", "KIND", "STATE", "NOT AFTER", "LEFT"
    )?;
    for a in &manifest.authorities {
        writeln!(
            out,
            "{:<16}  {:<12}  {:<8}  {:<20}  {:<11}  {}",
            a.id,
            a.kind,
            a.state,
            at(a.not_after),
            span(a.not_after - now),
            note(&manifest, a, now)
        )?;
    }
    Ok(())
}

/// What to know about `a` now, in a few words.
fn note(manifest: &Manifest, a: &AuthorityEntry, now: i64) -> String {
    let left = a.not_after - now;
    match (a.state, a.kind) {
        (AuthorityState::Active, kind) => {
            let (role, warning) = match kind {
                AuthorityKind::Intermediate => {
                    ("signs workload certificates", INTERMEDIATE_WARNING)
                }
                AuthorityKind::Root => ("the root of the signing intermediate", ROOT_WARNING),
            };
            if left < warning {
                format!(
                    "{role}; expires in {}: run `hush ca rotate {kind}`",
                    span(left)
                )
            } else {
                role.into()
            }
        }
        (AuthorityState::Prepared, AuthorityKind::Root) => {
            let published = now - a.prepared_at.unwrap_or(a.not_before);
            match manifest.activate_after() {
                Some(after) if after > now => format!(
                    "published {} ago; activate after {} (publish wait {}: hush does not track \
                     which sidecars fetched it, so it waits)",
                    span(published),
                    at(after),
                    span(seconds(manifest.publish_wait_seconds))
                ),
                _ => format!(
                    "published {} ago; ready: `hush ca activate`",
                    span(published)
                ),
            }
        }
        (AuthorityState::Prepared, AuthorityKind::Intermediate) => {
            let new_root = a
                .issuer
                .as_ref()
                .and_then(|i| manifest.get(i))
                .is_some_and(|r| r.state == AuthorityState::Prepared);
            if new_root {
                "activates with its new root".into()
            } else {
                "ready: `hush ca activate`".into()
            }
        }
        (AuthorityState::Old | AuthorityState::Tainted, _) => match manifest.live_until(a) {
            Some(until) if until > now => format!(
                "certificates under it may live until {}; revoke after that",
                at(until)
            ),
            _ => "nothing issued under it is alive: it can be revoked".into(),
        },
        (AuthorityState::Revoked, _) => match a.revoked_at {
            Some(when) => format!("out of the trust bundle since {}", at(when)),
            None => "out of the trust bundle".into(),
        },
    }
}

/// The authority `change` acted on, by position.
fn entry<'a>(manifest: &'a Manifest, index: usize, change: &Change) -> &'a AuthorityEntry {
    change
        .authorities
        .get(index)
        .and_then(|id| manifest.get(id))
        .expect("a change names the authorities it made")
}

/// Appends one audit line per authority changed (and one for a migration) to DIR/audit.log.
async fn record(
    dir: &CaDir,
    change: &Change,
    event: AuditEvent,
    forced: Option<bool>,
) -> Result<()> {
    let path = dir.audit_log();
    let log = AuditLog::open(&path)
        .with_context(|| format!("cannot open the audit log {}", path.display()))?;
    let actor = actor();
    let mut records = Vec::new();
    if change.migrated {
        let mut line = AuditRecord::new(AuditEvent::Migrated, ADMIN_API);
        line.reason = Some("authorities.json written for a directory of the old layout".into());
        records.push(line);
    }
    for id in &change.authorities {
        let mut line = AuditRecord::new(event, ADMIN_API);
        line.authority = Some(id.to_string());
        line.kind = change.manifest.get(id).map(|a| a.kind.as_str());
        line.forced = forced;
        records.push(line);
    }
    for mut line in records {
        line.generation = Some(change.manifest.generation);
        line.actor = Some(actor.clone());
        log.append(&line).await?;
    }
    Ok(())
}

/// `user@host` of whoever runs the command.
pub(super) fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

/// A Unix time as the commands print it (`2026-11-26T23:21:22Z`).
pub(super) fn at(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(utc_second)
        .unwrap_or_else(|_| unix.to_string())
}

fn seconds(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}
