//! `hush ca authorities`, `rotate`, `activate`, `taint`, `revoke`: the CA's roots,
//! intermediates and JWT authorities over the years.
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
    Change, Manifest, Pkcs11Uri, RotateOptions,
};
use serde_json::json;

use super::{KeyAlgorithm, in_token};
use crate::parse_duration;
use crate::times::{span, utc_second};

/// The API name audit lines of these commands carry.
pub(super) const ADMIN_API: &str = "hush.ca.admin";

#[derive(Debug, Subcommand)]
pub(crate) enum RotateCommand {
    /// Sign a new intermediate with the active root and stage it (`prepared`). This is the one
    /// command that needs the root's key: DIR/root-<id>.key, the file given with --root-key,
    /// or a key in a PKCS#11 token (--root-key-uri, else the root's own key URI).
    Intermediate(RotateIntermediateArgs),
    /// Make a new root and an intermediate under it and stage both: the root is in the trust
    /// bundle at once and signs only after `hush ca activate`, once sidecars have fetched it.
    Root(RotateRootArgs),
    /// Make a new JWT authority (a P-256 key file that signs JWT-SVIDs) and stage it: its
    /// public key is in the bundle's JWT keys at once, and it signs only after `hush ca
    /// activate <id>`, once validators have fetched it.
    Jwt(RotateJwtArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RotateJwtArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// Lifetime of the new JWT authority: the CA signs no token with it after that.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    lifetime: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct RotateIntermediateArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The active root's key, when it is kept outside DIR.
    #[arg(long, conflicts_with = "root_key_uri")]
    root_key: Option<PathBuf>,
    /// The active root's key in a PKCS#11 token (a `pkcs11:` URI; see `hush ca init
    /// --key-uri`). By default, the URI the manifest records for the root, if any. Not stored,
    /// so it may give its PIN with pin-value, though a PIN file keeps it out of process lists.
    #[arg(long, value_name = "URI")]
    root_key_uri: Option<String>,
    /// Make the new intermediate's key in a PKCS#11 token instead of a key file:
    /// `pkcs11:token=LABEL;object=NEW-KEY-LABEL?pin-source=file:/PIN`. Each key needs a label
    /// no other key of this CA has (it is refused otherwise). Stored in authorities.json as
    /// given, so never with pin-value.
    #[arg(long, value_name = "URI")]
    key_uri: Option<String>,
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
    /// Make the new intermediate's key in a PKCS#11 token instead of a key file (the form of
    /// `hush ca rotate intermediate --key-uri`; a new label).
    #[arg(long, value_name = "URI")]
    key_uri: Option<String>,
    /// Make the new root's key in a PKCS#11 token instead of a key file (a new label, not the
    /// intermediate's).
    #[arg(long, value_name = "URI")]
    root_key_uri: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ActivateArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// The prepared authority to activate (at least 6 hex digits). Without it: the prepared
    /// intermediate (with its new root, if any), else the prepared JWT authority.
    id: Option<String>,
    /// Activate a new root or JWT authority before its publish wait is over: only when every
    /// sidecar is known to trust it already (or none runs yet).
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
        RotateCommand::Jwt(args) => {
            let dir = CaDir::new(&args.dir);
            let change = dir.rotate_jwt(args.lifetime)?;
            record(&dir, &change, AuditEvent::AuthorityPrepared, None).await?;
            let entry = entry(&change.manifest, 0, &change);
            let after = change.manifest.jwt_activate_after().unwrap_or_default();
            eprintln!(
                "prepared JWT authority {} (usable until {}, its key {}); its public key is in \
                 the bundle's JWT keys from now on",
                entry.id,
                at(entry.not_after),
                key_place(entry),
            );
            eprintln!(
                "Next: after {} (publish wait {}; at once for a CA's first JWT authority) run \
                 `hush ca activate --dir {} {}`.",
                at(after),
                span(seconds(change.manifest.publish_wait_seconds)),
                args.dir.display(),
                entry.id.short(),
            );
            Ok(())
        }
        RotateCommand::Intermediate(args) => {
            let dir = CaDir::new(&args.dir);
            let options = RotateOptions {
                key_algorithm: args.key_algorithm.into(),
                intermediate_lifetime: args.lifetime,
                root_key: args.root_key,
                root_key_uri: args.root_key_uri,
                key_uri: args.key_uri,
                ..RotateOptions::default()
            };
            let change = dir.rotate_intermediate(&options)?;
            record(&dir, &change, AuditEvent::AuthorityPrepared, None).await?;
            let entry = entry(&change.manifest, 0, &change);
            eprintln!(
                "prepared intermediate {} (valid until {}, its key {}), signed by root {}",
                entry.id,
                at(entry.not_after),
                key_place(entry),
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
                root_key_uri: args.root_key_uri,
                key_uri: args.key_uri,
            };
            let change = dir.rotate_root(&options)?;
            record(&dir, &change, AuditEvent::AuthorityPrepared, None).await?;
            let root = entry(&change.manifest, 0, &change);
            let intermediate = entry(&change.manifest, 1, &change);
            let after = change.manifest.activate_after().unwrap_or_default();
            eprintln!(
                "prepared root {} (its key {}) and intermediate {} under it (its key {}); the \
                 trust bundle now holds {} roots",
                root.id,
                key_place(root),
                intermediate.id,
                key_place(intermediate),
                change.manifest.trusted_roots().len()
            );
            let root_key = if root.key_uri.is_some() {
                "The root's key is needed only to make its next intermediate.".to_owned()
            } else {
                format!(
                    "{} is needed only to make its next intermediate: keep it offline.",
                    root.key.as_deref().unwrap_or("The root key")
                )
            };
            eprintln!(
                "Next: publish the new bundle (copy the directory to wherever a CA reads another \
                 copy of it; on Kubernetes also update the chart's trustBundle), then after {} (publish wait {}) run \
                 `hush ca activate --dir {}`. {root_key}",
                at(after),
                span(seconds(change.manifest.publish_wait_seconds)),
                args.dir.display(),
            );
            Ok(())
        }
    }
}

pub(crate) async fn activate(args: ActivateArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let manifest = dir.authorities()?;
    let jwt = match args.id.as_deref() {
        Some(id) => {
            let entry = manifest.find(id)?;
            if entry.state != AuthorityState::Prepared {
                anyhow::bail!(
                    "{} {} is {}: only a prepared authority can be activated (see `hush ca \
                     authorities`)",
                    entry.kind,
                    entry.id,
                    entry.state
                );
            }
            entry.kind == AuthorityKind::Jwt
        }
        // The X.509 rotation first, as before JWT authorities existed.
        None => manifest.prepared().is_none() && manifest.prepared_jwt().is_some(),
    };
    if jwt {
        return activate_jwt(&dir, args.force).await;
    }
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

async fn activate_jwt(dir: &CaDir, force: bool) -> Result<()> {
    let (change, activation) = dir.activate_jwt(force)?;
    record(
        dir,
        &change,
        AuditEvent::AuthorityActivated,
        Some(activation.forced),
    )
    .await?;
    eprintln!(
        "JWT authority {} signs JWT-SVIDs from now on",
        activation.jwt
    );
    if activation.forced {
        eprintln!("the publish wait was skipped (--force)");
    }
    if let Some(retired) = &activation.retired {
        eprintln!(
            "jwt {retired} is old: its public key stays published while tokens it signed may \
             live; revoke it after that (`hush ca authorities` says when)"
        );
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
        if change.manifest.get(id).map(|a| a.kind) == Some(AuthorityKind::Jwt) {
            // Nothing renews a bearer token: it lives until it expires or its key is revoked.
            eprintln!(
                "tainted {id}: the bundle names it tainted; JWT-SVIDs it signed are accepted \
                 until they expire, or until `hush ca revoke --authority {}`",
                id.short()
            );
        } else {
            eprintln!("tainted {id}: sidecars holding certificates under it renew now");
        }
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
        let Some(entry) = change.manifest.get(id) else {
            continue;
        };
        // Peers trust roots: a root leaves every bundle, an intermediate only stops renewing.
        let effect = match entry.kind {
            AuthorityKind::Root => "it leaves the trust bundle, and every chain under it with it",
            AuthorityKind::Intermediate => {
                "the CA no longer renews certificates under it, and sidecars refuse them from \
                 their next bundle refresh (its root stays trusted, so the CA names it in the \
                 deny-list it sends with the bundle)"
            }
            AuthorityKind::Jwt => {
                "its public key leaves the bundle's JWT keys, and JWT-SVIDs it signed are \
                 refused from the validators' next bundle refresh"
            }
        };
        match entry.key_uri.as_deref() {
            Some(uri) => eprintln!(
                "revoked {kind} {id}: {effect}; its key stays {}: delete it with the token's own \
                 tool (hush never deletes an object from a token)",
                in_token(uri),
                kind = entry.kind,
            ),
            None => eprintln!(
                "revoked {kind} {id}: {effect}; its key file is deleted",
                kind = entry.kind
            ),
        }
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
    let manifest = dir.authorities()?;
    if let Some(uri) = manifest.active().1.key_uri.as_deref() {
        eprintln!(
            "the active intermediate's key is {}: the CA's pod needs that token and the PIN \
             file its URI names, which this Secret does not hold",
            in_token(uri)
        );
    }
    Ok(())
}

pub(crate) fn list(args: ListArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let manifest = dir.authorities()?;
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
                value["key_location"] = json!(key_location(&dir, a));
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
    let keys: Vec<String> = manifest
        .authorities
        .iter()
        .map(|a| key_location(&dir, a))
        .collect();
    let key_width = keys.iter().map(String::len).max().unwrap_or(0).max(3);
    writeln!(
        out,
        "{:<16}  {:<12}  {:<8}  {:<20}  {:<11}  {:<key_width$}  NOTE",
        "ID", "KIND", "STATE", "NOT AFTER", "LEFT", "KEY"
    )?;
    for (a, key) in manifest.authorities.iter().zip(&keys) {
        writeln!(
            out,
            "{:<16}  {:<12}  {:<8}  {:<20}  {:<11}  {key:<key_width$}  {}",
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

/// Where an authority's key is, in a few words: `file` (in DIR), `file, not in DIR` (kept
/// offline), `pkcs11 token=… object=…`, `deleted` (with its revocation), or `not recorded` (a
/// root of the old layout, until its first change).
fn key_location(dir: &CaDir, a: &AuthorityEntry) -> String {
    match (&a.key_uri, &a.key) {
        (Some(uri), _) => match uri.parse::<Pkcs11Uri>() {
            Ok(uri) => format!("pkcs11 token={} object={}", uri.token(), uri.object()),
            Err(_) => "pkcs11 (unreadable URI)".into(),
        },
        (None, Some(file)) if dir.path().join(file).exists() => "file".into(),
        (None, Some(_)) => "file, not in DIR".into(),
        (None, None) if a.state == AuthorityState::Revoked => "deleted".into(),
        (None, None) => "not recorded".into(),
    }
}

/// Where a new authority's key was put, for the commands' reports.
fn key_place(a: &AuthorityEntry) -> String {
    match (&a.key_uri, &a.key) {
        (Some(uri), _) => in_token(uri),
        (None, Some(file)) => format!("in {file}"),
        (None, None) => "nowhere".into(),
    }
}

/// What to know about `a` now, in a few words.
fn note(manifest: &Manifest, a: &AuthorityEntry, now: i64) -> String {
    match (a.state, a.kind) {
        (AuthorityState::Active, kind) => {
            let role = match kind {
                AuthorityKind::Intermediate => "signs workload certificates",
                AuthorityKind::Root => "the root of the signing intermediate",
                AuthorityKind::Jwt => "signs JWT-SVIDs",
            };
            // The running CA warns of the same rotations, judged by the same function.
            match hush_ca::rotation_due(manifest, a, now) {
                Some(due) if due.seconds_left <= 0 => format!("{role}; expired: {}", due.next_step),
                Some(due) => format!(
                    "{role}; expires in {}: {}",
                    span(due.seconds_left),
                    due.next_step
                ),
                None => role.into(),
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
        (AuthorityState::Prepared, AuthorityKind::Jwt) => {
            let published = now - a.prepared_at.unwrap_or(a.not_before);
            match manifest.jwt_activate_after() {
                Some(after) if after > now => format!(
                    "published {} ago; activate after {} (publish wait {})",
                    span(published),
                    at(after),
                    span(seconds(manifest.publish_wait_seconds))
                ),
                _ => format!(
                    "published {} ago; ready: `hush ca activate {}`",
                    span(published),
                    a.id.short()
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
        (AuthorityState::Old | AuthorityState::Tainted, kind) => match manifest.live_until(a) {
            Some(until) if until > now => format!(
                "{} may live until {}; revoke after that",
                if kind == AuthorityKind::Jwt {
                    "tokens it signed"
                } else {
                    "certificates under it"
                },
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
