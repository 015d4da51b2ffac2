//! Certificates from PEM files: read at start, and read again when they change.
//!
//! The files are looked at every [`POLL`]: a change of either file's size or modification
//! time (or, for a file replaced by a rename, of its inode) reads the pair again. A pair that
//! reads and checks (key matches, unexpired, names every host) replaces the one served; a
//! broken one — half-written, mismatched, for other names — is reported, counted, and the
//! certificate in service stays. Tools that write the two files one after the other
//! (cert-manager, certbot hooks) are covered because an unmatched pair is simply retried at
//! the next change or poll.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hush_config::CertificateConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::certs::{CertError, CertStore, Origin, Served, certificate_name};

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// Why a certificate's files cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pair is unusable.
    #[error("{cert} and {key}: {source}")]
    Unusable {
        /// The chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        source: CertError,
    },
}

/// What a file looked like when last read: a change of any of these reads it again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified_ns: i128,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        inode: meta.ino(),
    })
}

/// One certificate from files.
#[derive(Debug)]
struct Watched {
    name: String,
    hosts: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    seen: (Option<Stamp>, Option<Stamp>),
}

impl Watched {
    fn read(&self) -> Result<Served, FilesError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| FilesError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let chain = read(&self.cert)?;
        let key = read(&self.key)?;
        Served::from_pem(&self.name, &self.hosts, &chain, &key, Origin::Files).map_err(|source| {
            FilesError::Unusable {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            }
        })
    }
}

/// The certificates that come from files.
#[derive(Debug)]
pub struct FileCertificates {
    watched: Vec<Watched>,
    store: Arc<CertStore>,
}

impl FileCertificates {
    /// Reads every `files` certificate of `certificates` into `store`. Any that cannot be
    /// served is an error: at start there is no older certificate to keep serving.
    pub fn load(
        certificates: &[CertificateConfig],
        store: Arc<CertStore>,
    ) -> Result<Self, FilesError> {
        let mut watched = Vec::new();
        for config in certificates {
            let Some(files) = &config.files else {
                continue;
            };
            let mut entry = Watched {
                name: certificate_name(config),
                hosts: config
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                cert: files.cert.clone(),
                key: files.key.clone(),
                seen: (stamp(&files.cert), stamp(&files.key)),
            };
            let served = entry.read()?;
            info!(
                certificate = %entry.name,
                expires = %humantime::format_rfc3339_seconds(served.not_after),
                "serving the certificate from {}",
                entry.cert.display()
            );
            store.install(served);
            entry.seen = (stamp(&entry.cert), stamp(&entry.key));
            watched.push(entry);
        }
        Ok(Self { watched, store })
    }

    /// Looks at the files every [`POLL`] until `stop`, and serves what changed.
    pub async fn watch(mut self, stop: CancellationToken, on_failure: impl Fn(&str)) {
        if self.watched.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            self.poll(&on_failure);
        }
    }

    /// Reads again the pairs whose files changed since they were last read.
    fn poll(&mut self, on_failure: &impl Fn(&str)) {
        for entry in &mut self.watched {
            let now = (stamp(&entry.cert), stamp(&entry.key));
            if now == entry.seen {
                continue;
            }
            entry.seen = now;
            match entry.read() {
                Ok(served) => {
                    info!(
                        certificate = %entry.name,
                        expires = %humantime::format_rfc3339_seconds(served.not_after),
                        "reloaded the certificate from {}",
                        entry.cert.display()
                    );
                    self.store.install(served);
                }
                Err(e) => {
                    on_failure(&entry.name);
                    warn!(
                        certificate = %entry.name,
                        "cannot reload the certificate, still serving the one loaded before: {e}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hush_config::CertificateFiles;

    use super::*;
    use crate::certs::tests::pair;

    #[test]
    fn a_broken_pair_keeps_the_one_in_service_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert, key) = pair(&["shop.example.com"]);
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let config = CertificateConfig {
            hosts: vec!["shop.example.com".into()],
            files: Some(CertificateFiles {
                cert: cert_path.clone(),
                key: key_path.clone(),
            }),
            acme: false,
        };
        let store = Arc::new(CertStore::new(std::slice::from_ref(&config)));
        let mut files = FileCertificates::load(&[config], store.clone()).unwrap();
        let first = store.current("shop.example.com").unwrap();
        let failures = AtomicUsize::new(0);
        let count = |_: &str| {
            failures.fetch_add(1, Ordering::Relaxed);
        };

        // A new certificate written before its key: the pair does not match yet.
        let (cert2, key2) = pair(&["shop.example.com"]);
        std::fs::write(&cert_path, &cert2).unwrap();
        files.poll(&count);
        assert_eq!(failures.load(Ordering::Relaxed), 1);
        assert!(Arc::ptr_eq(
            &store.current("shop.example.com").unwrap(),
            &first
        ));

        // Then the key: served.
        std::fs::write(&key_path, format!("{key2}\n")).unwrap();
        files.poll(&count);
        let second = store.current("shop.example.com").unwrap();
        assert!(!Arc::ptr_eq(&second, &first));

        // Nothing changed: nothing read.
        files.poll(&count);
        assert!(Arc::ptr_eq(
            &store.current("shop.example.com").unwrap(),
            &second
        ));

        // A certificate for other names is refused.
        let (cert3, key3) = pair(&["other.example.com"]);
        std::fs::write(&cert_path, cert3).unwrap();
        std::fs::write(&key_path, key3).unwrap();
        files.poll(&count);
        assert_eq!(failures.load(Ordering::Relaxed), 2);
        assert!(Arc::ptr_eq(
            &store.current("shop.example.com").unwrap(),
            &second
        ));
    }

    #[test]
    fn an_unusable_pair_at_start_is_an_error_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert, _) = pair(&["shop.example.com"]);
        std::fs::write(&cert_path, cert).unwrap();
        let config = CertificateConfig {
            hosts: vec!["shop.example.com".into()],
            files: Some(CertificateFiles {
                cert: cert_path,
                key: key_path.clone(),
            }),
            acme: false,
        };
        let store = Arc::new(CertStore::new(std::slice::from_ref(&config)));
        let error = FileCertificates::load(&[config], store)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!("cannot read {}", key_path.display())),
            "{error}"
        );
    }
}
