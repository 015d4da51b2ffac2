//! `hush ca revoke-identity` and `hush ca revocations`: revoking a workload's identity, one
//! certificate and its renewals, or everything a join token attested.
//!
//! The command writes `DIR/revocations.json` and one audit line; a running CA reading DIR puts
//! it in force at its next poll and pushes the deny-list to sidecars with the trust bundle.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use hush_ca::{
    AuditEvent, AuditLog, AuditRecord, CaDir, RevocationChange, RevocationTarget, Revocations,
    revocation_retention,
};
use hush_identity::SpiffeId;
use serde_json::json;

use super::authorities::{ADMIN_API, actor, at};
use crate::times::span;

/// The longest `--reason`: it travels in every refusal the CA sends.
const MAX_REASON: usize = 200;

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["spiffe_id", "serial", "join_token"])
))]
pub(crate) struct RevokeIdentityArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// Revoke an identity: the CA issues and renews nothing for it until --lift, and sidecars
    /// refuse every certificate for it issued before now.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Revoke one certificate by serial (hex, as `hush cert inspect` prints it; colons
    /// allowed), and every certificate renewed from it. The serial on a token issuance's audit
    /// line covers every renewal since.
    #[arg(long)]
    serial: Option<String>,
    /// Revoke a join token by id: every certificate attested with it, renewals included, is
    /// refused, and its record is deleted so it attests nothing more.
    #[arg(long)]
    join_token: Option<String>,
    /// Why, in a few words: kept in revocations.json and the audit log, and told to every
    /// caller the CA refuses because of it.
    #[arg(long, conflicts_with = "lift")]
    reason: Option<String>,
    /// Lift the revocation instead. A lifted identity may be issued for again (it attests with
    /// a token); its certificates from before the revocation stay refused until they expire.
    #[arg(long)]
    lift: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// The CA directory.
    #[arg(long, env = "HUSH_CA_DIR")]
    dir: PathBuf,
    /// Print JSON: every entry with its `state` and `pushed_until` (Unix seconds; null while a
    /// revoked identity is not lifted).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn revoke_identity(args: RevokeIdentityArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let target = target(&args)?;
    if let Some(reason) = &args.reason
        && (reason.chars().any(char::is_control) || reason.chars().count() > MAX_REASON)
    {
        bail!(
            "--reason must be one line of at most {MAX_REASON} characters: it is sent with every \
             refusal"
        );
    }
    let (change, event) = if args.lift {
        let change = dir.lift_revocation(&target)?;
        (change, AuditEvent::IdentityRevocationLifted)
    } else {
        let change = dir.revoke_identity(&target, args.reason.clone())?;
        (change, AuditEvent::IdentityRevoked)
    };
    record(&dir, &target, event, &change, args.reason).await?;

    let generation = change.revocations.generation;
    match (&target, args.lift) {
        (RevocationTarget::SpiffeId(id), false) => eprintln!(
            "revoked {id} (revocations generation {generation}): the CA issues and renews nothing \
             for it, and sidecars refuse every certificate for it issued until now"
        ),
        (RevocationTarget::Serial(serial), false) => eprintln!(
            "revoked certificate {serial} and every certificate renewed from it (revocations \
             generation {generation}): they cannot renew, and sidecars refuse them"
        ),
        (RevocationTarget::JoinToken(id), false) => eprintln!(
            "revoked join token {id} (revocations generation {generation}): every certificate \
             attested with it cannot renew, and sidecars refuse them; its record {}",
            if change.token_record_deleted == Some(true) {
                "was deleted, so it attests nothing more"
            } else {
                "was already gone (used, or withdrawn)"
            }
        ),
        (RevocationTarget::SpiffeId(id), true) => eprintln!(
            "lifted the revocation of {id} (revocations generation {generation}): the CA issues \
             for it again once it presents a token; its certificates from before the revocation \
             stay refused until they have expired"
        ),
        (target, true) => eprintln!(
            "lifted the revocation of {target} (revocations generation {generation}): what it \
             covered is accepted again"
        ),
    }
    if change.pruned > 0 {
        eprintln!(
            "dropped {} older entries that no longer cover a live certificate",
            change.pruned
        );
    }
    eprintln!(
        "A running CA reading this directory puts it in force at its next reload \
         (--reload-interval), and sidecars within one trust bundle refresh \
         (ca.bundle_refresh) after that; connections already open stay open. On Kubernetes, \
         apply the Secret again: hush ca secret --dir {} | kubectl apply -f -",
        args.dir.display()
    );
    Ok(())
}

pub(crate) fn list(args: ListArgs) -> Result<()> {
    let dir = CaDir::new(&args.dir);
    let revocations = dir.revocations()?;
    let retention = revocation_retention(&dir.authorities()?);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let entries = entries(&revocations, retention);
    let mut out = std::io::stdout().lock();
    if args.json {
        let document = json!({
            "version": revocations.version,
            "generation": revocations.generation,
            "entries": entries.iter().map(|e| json!({
                "kind": e.kind,
                "target": e.target,
                "state": e.state,
                "revoked_at": e.revoked_at,
                "lifted_at": e.lifted_at,
                "pushed_until": e.pushed_until,
                "reason": e.reason,
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        return Ok(());
    }
    writeln!(out, "revocations generation {}", revocations.generation)?;
    writeln!(
        out,
        "{:<10}  {:<8}  {:<20}  {:<44}  NOTE",
        "KIND", "STATE", "SINCE", "WHAT"
    )?;
    for e in &entries {
        let mut note = match (e.lifted_at, e.pushed_until) {
            (_, None) => "refused until lifted".to_owned(),
            (_, Some(until)) if until <= now => {
                "nothing it covers can be alive: dropped at the next change".to_owned()
            }
            (Some(lifted), Some(until)) => format!(
                "lifted {}; its certificates from before are refused until {}",
                at(lifted),
                at(until)
            ),
            (None, Some(until)) => format!("refused by sidecars for {} more", span(until - now)),
        };
        if let Some(reason) = &e.reason {
            note = format!("{note}; {reason}");
        }
        writeln!(
            out,
            "{:<10}  {:<8}  {:<20}  {:<44}  {note}",
            e.kind,
            e.state,
            at(e.revoked_at),
            e.target
        )?;
    }
    Ok(())
}

/// One line of `hush ca revocations`.
struct Entry {
    kind: &'static str,
    target: String,
    state: &'static str,
    revoked_at: i64,
    lifted_at: Option<i64>,
    /// Until when sidecars are told of it; `None` while it is in force for ever.
    pushed_until: Option<i64>,
    reason: Option<String>,
}

fn entries(revocations: &Revocations, retention: i64) -> Vec<Entry> {
    let ids = revocations.spiffe_ids.iter().map(|e| Entry {
        kind: "spiffe-id",
        target: e.id.to_string(),
        state: if e.lifted_at.is_some() {
            "lifted"
        } else {
            "revoked"
        },
        revoked_at: e.revoked_at,
        lifted_at: e.lifted_at,
        pushed_until: e.lifted_at.map(|l| l.saturating_add(retention)),
        reason: e.reason.clone(),
    });
    let serials = revocations.serials.iter().map(|e| Entry {
        kind: "serial",
        target: e.serial.clone(),
        state: "revoked",
        revoked_at: e.revoked_at,
        lifted_at: None,
        pushed_until: Some(e.revoked_at.saturating_add(retention)),
        reason: e.reason.clone(),
    });
    let tokens = revocations.join_tokens.iter().map(|e| Entry {
        kind: "join-token",
        target: e.id.clone(),
        state: "revoked",
        revoked_at: e.revoked_at,
        lifted_at: None,
        pushed_until: Some(e.revoked_at.saturating_add(retention)),
        reason: e.reason.clone(),
    });
    ids.chain(serials).chain(tokens).collect()
}

fn target(args: &RevokeIdentityArgs) -> Result<RevocationTarget> {
    Ok(match (&args.spiffe_id, &args.serial, &args.join_token) {
        (Some(id), _, _) => RevocationTarget::SpiffeId(
            id.parse::<SpiffeId>()
                .with_context(|| format!("invalid --spiffe-id {id:?}"))?,
        ),
        (_, Some(serial), _) => RevocationTarget::serial(serial)?,
        (_, _, Some(token)) => RevocationTarget::join_token(token)?,
        // clap's group requires one of them.
        (None, None, None) => bail!("say what to revoke: --spiffe-id, --serial or --join-token"),
    })
}

/// Appends the change's audit line to DIR/audit.log, with who ran it.
async fn record(
    dir: &CaDir,
    target: &RevocationTarget,
    event: AuditEvent,
    change: &RevocationChange,
    reason: Option<String>,
) -> Result<()> {
    let path = dir.audit_log();
    let log = AuditLog::open(&path)
        .with_context(|| format!("cannot open the audit log {}", path.display()))?;
    let mut line = AuditRecord::new(event, ADMIN_API);
    match target {
        RevocationTarget::SpiffeId(id) => line.spiffe_id = Some(id.to_string()),
        RevocationTarget::Serial(serial) => line.serial = Some(serial.clone()),
        RevocationTarget::JoinToken(id) => line.token_id = Some(id.clone()),
    }
    line.reason = reason;
    line.generation = Some(change.revocations.generation);
    line.actor = Some(actor());
    log.append(&line).await?;
    Ok(())
}
