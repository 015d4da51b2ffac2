//! The issuance audit log: one JSON line per issuance or refusal.
//!
//! Lines are written in batches ("group commit"): a request adds its line to a shared buffer and
//! waits until the batch holding it has been written to the file, so a certificate never reaches
//! a caller before its audit line reached the operating system. Whichever request finds no write
//! in progress becomes the writer for everything buffered so far, so there is no writer thread
//! and no hand-off between threads; under load many lines share one `write`. Tokens are never
//! written; only their public ids.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::oneshot;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// A certificate was issued.
    Issued,
    /// A JWT-SVID was issued (`MintJwtSvid`); its refusals are `refused` lines.
    JwtIssued,
    /// A request was refused.
    Refused,
    /// A directory of the old layout was given an authorities manifest.
    Migrated,
    /// A new root or intermediate was staged (`hush ca rotate`).
    AuthorityPrepared,
    /// A prepared authority began to sign (`hush ca activate`).
    AuthorityActivated,
    /// An old authority was tainted (`hush ca taint`).
    AuthorityTainted,
    /// An authority was revoked (`hush ca revoke`).
    AuthorityRevoked,
    /// A running CA put another set of authorities in force.
    AuthoritiesLoaded,
    /// A running CA refused what its directory holds and kept the set in force.
    ReloadRefused,
    /// An identity, a certificate or a join token was revoked (`hush ca revoke-identity`).
    IdentityRevoked,
    /// A revocation was lifted (`hush ca revoke-identity --lift`).
    IdentityRevocationLifted,
    /// A running CA put another set of revocations in force.
    RevocationsLoaded,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Issued or refused.
    pub event: AuditEvent,
    /// Which API was called (`hush.ca.v1` or `istio.v1.auth`).
    pub api: &'static str,
    /// The caller's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// How the caller proved who it is (`join_token`, `k8s_service_account`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<&'static str>,
    /// The join token's public id (never the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// The identity issued (or attested before a refusal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Serial of the issued certificate, hex (or, for a revocation, of the revoked one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// When the identity of the issued certificate was last attested (RFC 3339): now for a
    /// token, copied from the certificate presented for a renewal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attested_at: Option<String>,
    /// The serial of the certificate issued at that attestation, which names the whole line
    /// of renewals since (what `hush ca revoke-identity --serial` revokes at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_serial: Option<String>,
    /// For a renewal, the serial of the certificate presented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed_from: Option<String>,
    /// NotAfter of the issued certificate, or `exp` of the issued JWT-SVID (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The audiences of a JWT-SVID asked for (the token itself is never written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<Vec<String>>,
    /// The gRPC status code of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why a request was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The authority changed (its ID), or the JWT authority that signed a JWT-SVID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// `root` or `intermediate`, with `authority`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The generation after the change: of the authorities manifest, or of the revocations
    /// for `identity_revoked`, `identity_revocation_lifted` and `revocations_loaded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Whether a safety wait was skipped with `--force`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<bool>,
    /// Who ran the command (`user@host`), for changes made from the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

impl AuditRecord {
    /// A record of `event` on `api`, stamped now.
    pub fn new(event: AuditEvent, api: &'static str) -> Self {
        Self {
            time: rfc3339(OffsetDateTime::now_utc()),
            event,
            api,
            peer: None,
            attestation: None,
            token_id: None,
            spiffe_id: None,
            serial: None,
            attested_at: None,
            origin_serial: None,
            renewed_from: None,
            not_after: None,
            audience: None,
            code: None,
            reason: None,
            authority: None,
            kind: None,
            generation: None,
            forced: None,
            actor: None,
        }
    }
}

/// Formats a time as RFC 3339 in UTC.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The audit log could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}: {reason}")]
pub struct AuditError {
    path: Arc<PathBuf>,
    reason: String,
}

/// A handle on the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Opened for appending; written only by the current batch writer.
    file: File,
    batch: Mutex<Batch>,
}

/// Lines waiting to be written, and who waits for them.
#[derive(Debug, Default)]
struct Batch {
    lines: Vec<u8>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// A request is writing a batch right now; new lines join the next one.
    writing: bool,
}

// === impl AuditLog ===

impl AuditLog {
    /// Opens (appending, creating with mode 0640) `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                file,
                batch: Mutex::default(),
            }),
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends `record` and waits until it has been written.
    pub async fn append(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(|e| self.error(e.to_string()))?;
        line.push(b'\n');
        let (done_tx, done_rx) = oneshot::channel();
        let lead = {
            let mut batch = self.lock();
            batch.lines.extend_from_slice(&line);
            batch.waiters.push(done_tx);
            !std::mem::replace(&mut batch.writing, true)
        };
        if lead {
            self.write_batches();
        }
        match done_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(self.error(reason)),
            Err(_) => Err(self.error("the batch writer stopped".into())),
        }
    }

    /// Writes what is buffered, and again what arrived meanwhile, until nothing is left.
    ///
    /// This is a blocking `write` on an async worker, on purpose: appending a few kilobytes to
    /// a local file lands in the page cache in microseconds, far less than handing the batch to
    /// another thread and waking back up would cost on every issuance.
    fn write_batches(&self) {
        loop {
            let (lines, waiters) = {
                let mut batch = self.lock();
                if batch.lines.is_empty() {
                    batch.writing = false;
                    return;
                }
                (
                    std::mem::take(&mut batch.lines),
                    std::mem::take(&mut batch.waiters),
                )
            };
            let result = (&self.inner.file)
                .write_all(&lines)
                .map_err(|e| e.to_string());
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        // The guarded data stays consistent even if a holder panicked: take it over.
        self.inner
            .batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn error(&self, reason: String) -> AuditError {
        AuditError {
            path: Arc::new(self.inner.path.clone()),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_append_is_on_disk_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut record = AuditRecord::new(AuditEvent::Issued, "hush.ca.v1");
                record.serial = Some(format!("{i:04}"));
                log.append(&record).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 200);
        assert!(lines.iter().all(|l| l["event"] == "issued"));
        let mut serials: Vec<_> = lines.iter().map(|l| l["serial"].clone()).collect();
        serials.dedup();
        assert_eq!(serials.len(), 200);
    }

    #[tokio::test]
    async fn a_line_that_cannot_be_written_is_an_error() {
        // /dev/full accepts the open and refuses every write with ENOSPC.
        let log = AuditLog::open(Path::new("/dev/full")).unwrap();
        let err = log
            .append(&AuditRecord::new(AuditEvent::Issued, "hush.ca.v1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/dev/full"), "{err}");
    }
}
