//! The issuance audit log: one JSON line per issuance or refusal.
//!
//! Lines are written by one thread in batches ("group commit"): a request hands its line over
//! and waits until the batch holding it has been written to the file, so a certificate never
//! reaches a caller before its audit line reached the operating system. Tokens are never
//! written; only their public ids.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};

/// How many lines may wait for the writer before callers are slowed down.
const QUEUE: usize = 4096;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    /// A certificate was issued.
    Issued,
    /// A request was refused.
    Refused,
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
    /// Serial of the issued certificate, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// NotAfter of the issued certificate (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// The gRPC status code of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why a request was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
            not_after: None,
            code: None,
            reason: None,
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

type Pending = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// A handle on the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: Arc<PathBuf>,
    tx: mpsc::Sender<Pending>,
}

// === impl AuditLog ===

impl AuditLog {
    /// Opens (appending, creating with mode 0640) `path` and starts its writer thread. The
    /// thread ends when the last handle is dropped.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("hush-audit".into())
            .spawn(move || write_batches(BufWriter::with_capacity(64 * 1024, file), rx))?;
        Ok(Self {
            path: Arc::new(path.to_path_buf()),
            tx,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` and waits until it has been written.
    pub async fn append(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(|e| self.error(e.to_string()))?;
        line.push(b'\n');
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send((line, done_tx))
            .await
            .map_err(|_| self.error("the writer thread stopped".into()))?;
        match done_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(self.error(reason)),
            Err(_) => Err(self.error("the writer thread stopped".into())),
        }
    }

    fn error(&self, reason: String) -> AuditError {
        AuditError {
            path: self.path.clone(),
            reason,
        }
    }
}

fn write_batches(mut out: BufWriter<std::fs::File>, mut rx: mpsc::Receiver<Pending>) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut result = out.write_all(&first.0);
        waiting.push(first.1);
        // Take whatever else is already queued into the same write.
        while let Ok((line, done)) = rx.try_recv() {
            if result.is_ok() {
                result = out.write_all(&line);
            }
            waiting.push(done);
        }
        let result = result.and_then(|()| out.flush()).map_err(|e| e.to_string());
        for done in waiting.drain(..) {
            let _ = done.send(result.clone());
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
}
