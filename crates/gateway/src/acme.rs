//! Certificates from an ACME CA (RFC 8555): obtained when missing, renewed at two thirds of
//! their life, kept in a state directory, served through the [`CertStore`].
//!
//! [`AcmeManager`] looks after every `certificates[]` entry that says `acme: true`, each in a
//! loop of its own:
//!
//! * **At start** [`AcmeManager::load_stored`] installs what the state directory holds, so a
//!   restarted gateway serves at once, without asking the CA. A stored file that cannot be
//!   served (unreadable, expired, no longer naming every configured host) is reported and
//!   ordered again; it never stops the gateway.
//! * **When to order**: at once when nothing usable is served; otherwise at two thirds of the
//!   certificate's lifetime (notBefore to notAfter) plus a random few percent of it, so that
//!   certificates and replicas do not all renew together.
//! * **An order** uses the account in `state_dir/account.json`, created once (terms agreed,
//!   contacts given) and reused; a new ECDSA P-256 key; the configured challenge: HTTP-01
//!   (the plaintext listener answers `/.well-known/acme-challenge/<token>` from the store) or
//!   TLS-ALPN-01 (the TLS listener answers `acme-tls/1` handshakes with a challenge
//!   certificate from the store). Answers are in the store during validation only. The new
//!   key and chain are written to the state directory (0600, atomically) and then served.
//! * **Failures** are logged with the host, the challenge and what the CA said, and retried
//!   after 30 s doubling to an hour (less a random quarter). The certificate being served
//!   stays served: a CA outage never takes a certificate away, and a third of the lifetime
//!   is left for it to end.
//! * **Every network step** has a deadline (each request, and the validation as a whole), so
//!   a CA that stalls fails an attempt instead of stalling the manager.
//!
//! # Replicas
//!
//! Replicas of the gateway may share `state_dir` (a shared volume). A lock file per
//! certificate (`<name>.lock`, an advisory `flock`) lets one replica order while the others
//! wait; they notice the new file (its modification time, checked every minute and when
//! their own renewal time comes) and serve it too. The account is created under
//! `account.lock` in the same way. Replicas that do **not** share `state_dir` each order
//! their own certificates and keep their own accounts: ACME CAs rate-limit orders per
//! domain and per account, so share the directory or let one replica do ACME. The lock
//! needs a file system whose `flock` is honoured across the hosts that share it (local
//! volumes and NFSv4 do; some network file systems do not).
//!
//! What happens is sent as [`AcmeEvent`]s for whoever counts it (metrics, tests).

mod client;
mod order;
mod schedule;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hush_config::{AcmeChallenge, AcmeConfig, CertificateConfig};
use instant_acme::{Account, AccountCredentials, NewAccount};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::client::TimedClient;
use self::order::OrderError;
use self::state::{FileStamp, StateDir};
use crate::certs::{CertStore, Origin, Served, certificate_name};

/// How long the manager waits for each step. The defaults suit a public CA; tests shorten
/// them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AcmeTimings {
    /// Each HTTP request to the CA, from connecting to the end of the body.
    pub request: Duration,
    /// The CA's validation of the challenges, and its issuing after finalization.
    pub validation: Duration,
    /// A whole order, from the new order to the certificate.
    pub order: Duration,
    /// The first wait after a failure; it doubles with each failure in a row.
    pub backoff_min: Duration,
    /// The longest wait after failures.
    pub backoff_max: Duration,
    /// How often the state directory is checked for a certificate another replica wrote.
    pub poll: Duration,
}

impl Default for AcmeTimings {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(30),
            validation: Duration::from_secs(120),
            order: Duration::from_secs(300),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            poll: Duration::from_secs(60),
        }
    }
}

/// Where an installed certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Ordered from the CA by this manager.
    Ordered,
    /// Read from the state directory: stored by an earlier run, or by another replica.
    Stored,
}

/// What the manager did, for metrics and tests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AcmeEvent {
    /// A certificate is served from now on.
    Installed {
        /// The certificate's name.
        name: Arc<str>,
        /// Where it came from.
        source: Source,
        /// Its notAfter.
        not_after: SystemTime,
        /// When it will be renewed.
        renew_at: SystemTime,
    },
    /// An order failed; the served certificate, if any, stays.
    Failed {
        /// The certificate's name.
        name: Arc<str>,
        /// What went wrong, in words.
        error: String,
        /// When the next attempt is.
        retry_in: Duration,
    },
    /// The stored file of a certificate cannot be served; it will be ordered again.
    StoredUnusable {
        /// The certificate's name.
        name: Arc<str>,
        /// What is wrong with it.
        error: String,
    },
}

/// What [`AcmeManager::load_stored`] found for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Nothing stored yet.
    Missing,
    /// Installed; valid until the time given.
    Installed(SystemTime),
    /// Stored but unusable, for the reason given; it will be ordered again.
    Unusable(String),
}

/// Why the manager cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The state directory cannot be created or opened.
    #[error("cannot use the ACME state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `directory_ca` cannot be used.
    #[error("acme.directory_ca: {0}")]
    DirectoryCa(String),
    /// A wildcard host, which HTTP-01 and TLS-ALPN-01 cannot validate.
    #[error(
        "{host}: an ACME CA validates a wildcard by DNS-01 only, which hush does not do; give the \
         certificate from files"
    )]
    Wildcard {
        /// The host.
        host: String,
    },
}

/// One certificate the manager looks after.
struct Managed {
    name: Arc<str>,
    hosts: Vec<String>,
    file: PathBuf,
    /// The stamp of the file as last read or written, to notice another replica's.
    seen: Option<FileStamp>,
    /// When what is served is to be renewed; `None` when nothing usable is served.
    renew_at: Option<SystemTime>,
    /// Failed orders in a row, and when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
}

/// What the certificates' loops share.
struct Shared {
    config: AcmeConfig,
    store: Arc<CertStore>,
    state: StateDir,
    tls: Arc<rustls::ClientConfig>,
    timings: AcmeTimings,
    account: Mutex<Option<Account>>,
    /// The ID of an account the CA said it does not know: not to be read back from disk.
    gone_account: std::sync::Mutex<Option<String>>,
    events: broadcast::Sender<AcmeEvent>,
}

/// Obtains and renews the ACME certificates. See the [module docs](self).
pub struct AcmeManager {
    shared: Arc<Shared>,
    certificates: Vec<Managed>,
}

impl std::fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("directory", &self.shared.config.directory)
            .field(
                "certificates",
                &self
                    .certificates
                    .iter()
                    .map(|c| &c.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl AcmeManager {
    /// A manager for the entries of `certificates` that say `acme: true`, serving through
    /// `store` (which must have been made from the same `certificates`). Creates the state
    /// directory (0700) if needed; reads nothing else and contacts no one.
    pub fn new(
        config: &AcmeConfig,
        certificates: &[CertificateConfig],
        store: Arc<CertStore>,
    ) -> Result<Self, AcmeError> {
        let state = StateDir::open(&config.state_dir).map_err(|source| AcmeError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let tls =
            client::tls_config(config.directory_ca.as_deref()).map_err(AcmeError::DirectoryCa)?;
        let mut managed = Vec::new();
        for certificate in certificates.iter().filter(|c| c.acme) {
            if let Some(host) = certificate.hosts.iter().find(|h| h.starts_with("*.")) {
                return Err(AcmeError::Wildcard { host: host.clone() });
            }
            let name: Arc<str> = certificate_name(certificate).into();
            managed.push(Managed {
                file: state.certificate(&name),
                hosts: certificate
                    .hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                name,
                seen: None,
                renew_at: None,
                failures: 0,
                retry_at: None,
            });
        }
        let (events, _) = broadcast::channel(64);
        Ok(Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                store,
                state,
                tls,
                timings: AcmeTimings::default(),
                account: Mutex::new(None),
                gone_account: std::sync::Mutex::new(None),
                events,
            }),
            certificates: managed,
        })
    }

    /// Replaces the default timings (before [`Self::run`]).
    pub fn with_timings(mut self, timings: AcmeTimings) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.timings = timings;
        }
        self
    }

    /// What the manager does from now on.
    pub fn events(&self) -> broadcast::Receiver<AcmeEvent> {
        self.shared.events.subscribe()
    }

    /// Installs the certificates stored in the state directory, so they are served before
    /// [`Self::run`] has contacted the CA. Each certificate's outcome is logged and returned;
    /// an unusable one is ordered again by `run`. Calling it is optional: `run` reads the
    /// directory first too.
    pub fn load_stored(&mut self) -> Vec<(Arc<str>, Stored)> {
        let shared = &self.shared;
        self.certificates
            .iter_mut()
            .map(|c| (c.name.clone(), c.reload(shared)))
            .collect()
    }

    /// Looks after every certificate until `shutdown` is cancelled. An order in flight is
    /// abandoned (its challenge answers withdrawn, its lock released).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for certificate in self.certificates {
            tasks.spawn(keep(self.shared.clone(), certificate, shutdown.clone()));
        }
        while let Some(ended) = tasks.join_next().await {
            if let Err(e) = ended
                && e.is_panic()
            {
                error!("an ACME certificate's loop panicked: {e}");
            }
        }
    }
}

// === impl Managed ===

impl Managed {
    /// Reads the stored file if it changed since last seen, and installs it when it is usable
    /// and not older than what is served.
    fn reload(&mut self, shared: &Shared) -> Stored {
        let read = match shared.state.read(&self.file) {
            Ok(Some(read)) => read,
            Ok(None) => return Stored::Missing,
            Err(e) => return self.unusable(shared, format!("cannot read it: {e}")),
        };
        let (contents, stamp) = read;
        if self.seen == Some(stamp) {
            return match shared.store.current(&self.name) {
                Some(served) => Stored::Installed(served.not_after),
                None => Stored::Missing,
            };
        }
        self.seen = Some(stamp);
        match Served::from_pem(&self.name, &self.hosts, &contents, &contents, Origin::Acme) {
            Ok(served) => {
                if let Some(current) = shared.store.current(&self.name)
                    && current.origin == Origin::Acme
                    && current.not_after > served.not_after
                {
                    // Someone wrote an older certificate than the one served: keep ours.
                    return Stored::Installed(current.not_after);
                }
                let not_after = served.not_after;
                self.install(shared, served, Source::Stored);
                Stored::Installed(not_after)
            }
            Err(e) => self.unusable(shared, e.to_string()),
        }
    }

    fn unusable(&mut self, shared: &Shared, error: String) -> Stored {
        warn!(
            certificate = %self.name,
            file = %self.file.display(),
            "the stored ACME certificate cannot be served ({error}); it will be ordered again"
        );
        let _ = shared.events.send(AcmeEvent::StoredUnusable {
            name: self.name.clone(),
            error: error.clone(),
        });
        Stored::Unusable(error)
    }

    fn install(&mut self, shared: &Shared, served: Served, source: Source) {
        let renew_at =
            schedule::renewal_time(served.not_before, served.not_after, schedule::draw());
        let not_after = served.not_after;
        shared.store.install(served);
        self.renew_at = Some(renew_at);
        self.failures = 0;
        self.retry_at = None;
        info!(
            certificate = %self.name,
            source = ?source,
            not_after = %humantime::format_rfc3339_seconds(not_after),
            renew_at = %humantime::format_rfc3339_seconds(renew_at),
            "ACME certificate installed"
        );
        let _ = shared.events.send(AcmeEvent::Installed {
            name: self.name.clone(),
            source,
            not_after,
            renew_at,
        });
    }

    /// How long until the next attempt is due (zero: now).
    fn due_in(&self) -> Duration {
        let renewal = match self.renew_at {
            None => Duration::ZERO,
            Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
        };
        let retry = self
            .retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        renewal.max(retry)
    }

    /// Orders the certificate, with this manager holding its lock, and installs it.
    async fn order(&mut self, shared: &Shared) {
        let challenge = shared.config.challenge;
        info!(certificate = %self.name, hosts = ?self.hosts, "ordering a certificate from the ACME CA");
        let attempt = async {
            let account = shared.account().await?;
            let issued = order::obtain(
                &account,
                &self.hosts,
                challenge,
                &shared.store,
                shared.timings.validation,
            )
            .await;
            if let Err(e) = &issued
                && e.account_is_gone()
            {
                shared.forget_account(&account).await;
            }
            issued
        };
        let issued = match tokio::time::timeout(shared.timings.order, attempt).await {
            Ok(issued) => issued,
            Err(_) => Err(OrderError::Unreachable {
                step: "complete the order",
                error: format!(
                    "it took longer than {}",
                    humantime::format_duration(shared.timings.order)
                ),
            }),
        };
        let result = issued.and_then(|issued| {
            let served = Served::from_der(
                &self.name,
                &self.hosts,
                issued.chain,
                issued.key,
                Origin::Acme,
            )
            .map_err(|e| OrderError::Local(format!("the CA's certificate cannot be served: {e}")))?;
            // Stored first, then served: a restart or a replica finds what is served.
            let mut contents = issued.key_pem.into_bytes();
            contents.extend_from_slice(issued.chain_pem.as_bytes());
            match shared.state.write_private(&self.file, &contents) {
                Ok(()) => self.seen = shared.state.stamp(&self.file).ok().flatten(),
                Err(e) => error!(
                    certificate = %self.name,
                    file = %self.file.display(),
                    "cannot store the new certificate ({e}); serving it anyway, the next start will order again"
                ),
            }
            Ok(served)
        });
        match result {
            Ok(served) => self.install(shared, served, Source::Ordered),
            Err(e) => self.failed(shared, challenge, &e),
        }
    }

    fn failed(&mut self, shared: &Shared, challenge: AcmeChallenge, error: &OrderError) {
        self.failures = self.failures.saturating_add(1);
        let retry_in = schedule::backoff(
            self.failures,
            shared.timings.backoff_min,
            shared.timings.backoff_max,
            schedule::draw(),
        );
        self.retry_at = Some(Instant::now() + retry_in);
        let serving = match shared.store.current(&self.name) {
            Some(served) => format!(
                "still serving the certificate valid until {}",
                humantime::format_rfc3339_seconds(served.not_after)
            ),
            None => "nothing is served for these hosts yet".to_string(),
        };
        warn!(
            certificate = %self.name,
            hosts = ?self.hosts,
            challenge = ?challenge,
            failures = self.failures,
            "could not obtain a certificate from the ACME CA: {error}; {serving}; trying again in {}",
            humantime::format_duration(Duration::from_secs(retry_in.as_secs()))
        );
        let _ = shared.events.send(AcmeEvent::Failed {
            name: self.name.clone(),
            error: error.to_string(),
            retry_in,
        });
    }
}

/// One certificate's loop.
async fn keep(shared: Arc<Shared>, mut certificate: Managed, shutdown: CancellationToken) {
    loop {
        // Another replica may have renewed it, or an earlier run stored it.
        certificate.reload(&shared);
        if certificate.due_in().is_zero() {
            match shared.state.try_lock(&certificate.name) {
                Ok(Some(lock)) => {
                    // Read again under the lock: the holder before us may just have finished.
                    certificate.reload(&shared);
                    if certificate.due_in().is_zero() {
                        tokio::select! {
                            () = certificate.order(&shared) => {}
                            () = shutdown.cancelled() => return,
                        }
                    }
                    drop(lock);
                }
                Ok(None) => debug!(
                    certificate = %certificate.name,
                    "another replica is ordering this certificate; waiting for its file"
                ),
                Err(e) => {
                    let path = shared.state.lock_path(&certificate.name);
                    error!(
                        certificate = %certificate.name,
                        "cannot take the lock {} ({e}); not ordering", path.display()
                    );
                }
            }
        }
        let wait = certificate.due_in().min(shared.timings.poll);
        // Never spin: at least a short pause when due again at once (lock held elsewhere).
        let wait = if wait.is_zero() {
            shared.timings.poll.min(Duration::from_secs(1))
        } else {
            wait
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

// === impl Shared ===

impl Shared {
    fn client(&self) -> Box<dyn instant_acme::HttpClient> {
        Box::new(TimedClient::new(&self.tls, self.timings.request))
    }

    /// The account: the one in memory, else the stored one, else a new one, stored.
    async fn account(&self) -> Result<Account, OrderError> {
        let mut slot = self.account.lock().await;
        if let Some(account) = &*slot {
            return Ok(account.clone());
        }
        let local = |e: std::io::Error| OrderError::Local(format!("ACME account: {e}"));
        // Under the account's lock, so replicas sharing the directory make one between them.
        let deadline = Instant::now() + self.timings.request;
        let _lock = loop {
            if let Some(lock) = self.state.try_lock("account").map_err(local)? {
                break lock;
            }
            if Instant::now() > deadline {
                return Err(OrderError::Local(
                    "another replica holds the ACME account's lock".to_string(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let path = self.state.account();
        if let Some(credentials) = self.stored_account(&path) {
            let account = Account::builder_with_http(self.client())
                .from_credentials(credentials)
                .await
                .map_err(|e| OrderError::from_acme("restore the ACME account", e))?;
            debug!(
                id = account.id(),
                "ACME account restored from the state directory"
            );
            *slot = Some(account.clone());
            return Ok(account);
        }
        let contacts: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(self.client())
            .create(
                &NewAccount {
                    contact: &contacts,
                    // The configuration refuses to load unless the operator agreed.
                    terms_of_service_agreed: self.config.accept_terms_of_service,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await
            .map_err(|e| OrderError::from_acme("create the ACME account", e))?;
        let json = serde_json::to_vec_pretty(&credentials)
            .map_err(|e| OrderError::Local(format!("ACME account: {e}")))?;
        self.state.write_private(&path, &json).map_err(local)?;
        info!(id = account.id(), directory = %self.config.directory, "ACME account created");
        *slot = Some(account.clone());
        Ok(account)
    }

    /// The stored account, if it is for the configured directory and not one the CA forgot.
    fn stored_account(&self, path: &std::path::Path) -> Option<AccountCredentials> {
        let (contents, _) = match self.state.read(path) {
            Ok(read) => read?,
            Err(e) => {
                warn!(file = %path.display(), "cannot read the stored ACME account ({e}); creating another");
                return None;
            }
        };
        let value: serde_json::Value = match serde_json::from_slice(&contents) {
            Ok(value) => value,
            Err(e) => {
                warn!(file = %path.display(), "the stored ACME account is unreadable ({e}); creating another");
                return None;
            }
        };
        let directory = value.get("directory").and_then(|d| d.as_str());
        if directory != Some(self.config.directory.as_str()) {
            info!(
                stored = directory.unwrap_or("(none)"),
                configured = %self.config.directory,
                "the stored ACME account is for another directory; creating one for this directory"
            );
            return None;
        }
        let id = value.get("id").and_then(|d| d.as_str());
        let gone = self
            .gone_account
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if id.is_some() && id == gone.as_deref() {
            return None;
        }
        match serde_json::from_value(value) {
            Ok(credentials) => Some(credentials),
            Err(e) => {
                warn!(file = %path.display(), "the stored ACME account is unreadable ({e}); creating another");
                None
            }
        }
    }

    /// Forgets an account the CA no longer knows, so the next attempt makes a new one.
    async fn forget_account(&self, account: &Account) {
        warn!(
            id = account.id(),
            "the ACME CA does not know the account any more; a new one will be created"
        );
        *self
            .gone_account
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(account.id().to_string());
        *self.account.lock().await = None;
    }
}

#[cfg(test)]
mod tests;
