//! Identity policy in the sidecar: reading the policy file or directory, keeping the last
//! good policy in force through reloads, and deciding each inbound connection and request.
//!
//! The file (or directory) is read again every second and on SIGHUP. A change that parses and
//! validates replaces the policy for the next request; a change that does not is logged with
//! its `file:line:column` errors and counted, and the previous policy stays in force. Files
//! that hold no policy at all (an emptied directory, a deleted ConfigMap) are such a change
//! unless one of them says `[]`: an empty policy would let every caller in. At start they are
//! refused too, unless the configuration says the policy is `optional`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderMap;
use hush_identity::{SpiffeId, TrustDomain};
use hush_policy::{
    DefaultAction, HttpRequest, MAX_SOURCE_BYTES, PolicyError, PolicySet, Reason, Request, Source,
    Verdict, WorkloadPolicy,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{AccessLog, DefaultPolicy, PolicyConfig, Protocol};
use crate::metrics::Metrics;

/// How often the policy file or directory is read again.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// The most policy files one directory may hold.
const MAX_FILES: usize = 1000;

/// Reads the policy sources at `path`: the file itself, or every `*.yaml` / `*.yml` file of
/// the directory in name order. Hidden entries are skipped: a mounted ConfigMap keeps its
/// versions in `..data` and `..2024_…` folders and links each file to them.
pub fn read_policy_sources(path: &Path) -> Result<Vec<Source>, PolicyError> {
    let whole = |message: String| PolicyError {
        origin: path.display().to_string(),
        line: 0,
        column: 0,
        message,
    };
    let metadata = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    let files = if metadata.is_dir() {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|e| whole(format!("cannot list: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| whole(format!("cannot list: {e}")))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if name.starts_with('.') || !is_yaml {
                continue;
            }
            // A directory named `x.yaml` is not a policy file.
            if entry.path().is_file() {
                files.push(entry.path());
            }
        }
        if files.len() > MAX_FILES {
            return Err(whole(format!(
                "{} policy files is more than hush reads from one directory ({MAX_FILES})",
                files.len()
            )));
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|file| {
            let origin = file.display().to_string();
            let unreadable = |message: String| PolicyError {
                origin: origin.clone(),
                line: 0,
                column: 0,
                message,
            };
            let len = std::fs::metadata(&file)
                .map_err(|e| unreadable(format!("cannot read: {e}")))?
                .len();
            if len > MAX_SOURCE_BYTES as u64 {
                return Err(unreadable(format!(
                    "{len} bytes is more policy text than hush reads from one file \
                     ({MAX_SOURCE_BYTES})"
                )));
            }
            let bytes =
                std::fs::read(&file).map_err(|e| unreadable(format!("cannot read: {e}")))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| unreadable("is not UTF-8 text".to_string()))?;
            Ok(Source { origin, text })
        })
        .collect()
}

/// Reads and validates the policy at `path`: what `hush policy check` and `hush proxy
/// --check` do.
pub fn load_policy(path: &Path) -> Result<PolicySet, Vec<PolicyError>> {
    let sources = read_policy_sources(path).map_err(|e| vec![e])?;
    PolicySet::parse(&sources)
}

/// A decision, as the access line, the span and a refused caller need it.
#[derive(Clone, Debug)]
pub(crate) struct Judgement {
    pub(crate) allowed: bool,
    /// Refused because the path cannot be judged (a `400`, not a `403`).
    pub(crate) ambiguous_path: bool,
    /// The policy whose rule decided, if one did.
    pub(crate) policy: Option<Arc<str>>,
    /// The AUDIT policy that marked the request, if one did.
    pub(crate) audit: Option<Arc<str>>,
    /// `denied by DENY policy "x", rule 0 (file:line)`: made for denials, audited requests
    /// and when every request is logged.
    pub(crate) sentence: Option<String>,
}

impl Judgement {
    /// `allow` or `deny`.
    pub(crate) fn verdict(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }

    /// Why a caller was refused, as sent back to it.
    pub(crate) fn refusal(&self) -> &str {
        self.sentence.as_deref().unwrap_or("denied")
    }
}

/// The policy in force and how the sidecar applies it.
pub(crate) struct PolicyEnforcer {
    path: PathBuf,
    default: DefaultAction,
    /// `policy.optional`: files without a policy are accepted while none is in force.
    optional: bool,
    access_log: AccessLog,
    checks: SidecarChecks,
    metrics: Metrics,
    loaded: ArcSwap<Loaded>,
    /// The loaded set narrowed to this workload; rebuilt when either changes.
    view: ArcSwapOption<View>,
    /// What the last look at the files found, so an unchanged file (good or broken) is not
    /// parsed, logged and counted every second.
    last_seen: Mutex<Seen>,
}

/// What a policy is checked against beyond its own rules: this sidecar's trust domain and port.
struct SidecarChecks {
    trust_domain: TrustDomain,
    /// The inbound listener serves opaque TCP only, so rules naming HTTP fields are errors.
    opaque: bool,
    /// The configured app's port: what such rules are checked against.
    app_port: u16,
}

impl SidecarChecks {
    /// Parses `sources` (read from `path`) and checks them against this sidecar: no policy at
    /// all without saying so (unless `may_be_empty`), principals of another trust domain, and
    /// HTTP rules on an opaque TCP port.
    fn validate(
        &self,
        path: &Path,
        sources: &[Source],
        may_be_empty: bool,
        own: Option<&SpiffeId>,
    ) -> Result<PolicySet, Vec<PolicyError>> {
        let set = PolicySet::parse(sources)?;
        if set.is_empty() && !set.declares_no_policy() && !may_be_empty {
            let found = if sources.is_empty() {
                "no policy file (*.yaml, *.yml)"
            } else {
                "no policy"
            };
            return Err(vec![PolicyError {
                origin: path.display().to_string(),
                line: 0,
                column: 0,
                message: format!(
                    "{found} here; hush takes that for a mistake (a deleted or emptied \
                     ConfigMap), not for \"no policy\": restore the policy, or to run without \
                     one on purpose write a file holding `[]`"
                ),
            }]);
        }
        let mut errors = set.foreign_principals(&self.trust_domain);
        if self.opaque {
            errors.extend(set.http_rules_on_tcp_port(own, self.app_port));
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }
}

struct Loaded {
    generation: u64,
    set: PolicySet,
    sources: Vec<Source>,
    loaded_at: SystemTime,
}

struct View {
    generation: u64,
    own: Box<str>,
    policy: WorkloadPolicy,
}

#[derive(Default)]
struct Seen {
    sources: Option<Vec<Source>>,
    read_error: Option<String>,
    /// The errors that keep the files on disk from being used, when they do.
    refused: Option<Vec<String>>,
}

/// The policy was refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("the policy at {} was refused:\n  {}", path.display(), errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct PolicyLoadError {
    /// `policy.path`.
    pub path: PathBuf,
    /// Every problem found, with its location.
    pub errors: Vec<PolicyError>,
}

impl PolicyEnforcer {
    /// Reads and validates the policy; an error here stops the sidecar from starting.
    pub(crate) fn load(
        config: &PolicyConfig,
        access_log: AccessLog,
        app: SocketAddr,
        protocol: Protocol,
        trust_domain: TrustDomain,
        metrics: Metrics,
    ) -> Result<Self, PolicyLoadError> {
        let refused = |errors| PolicyLoadError {
            path: config.path.clone(),
            errors,
        };
        let sources = read_policy_sources(&config.path).map_err(|e| refused(vec![e]))?;
        let checks = SidecarChecks {
            trust_domain,
            opaque: protocol == Protocol::Tcp,
            app_port: app.port(),
        };
        let set = checks
            .validate(&config.path, &sources, config.optional, None)
            .map_err(refused)?;
        if set.is_empty() && !set.declares_no_policy() {
            warn!(
                path = %config.path.display(),
                "no policy yet (`policy.optional`): requests are decided by the default until a \
                 policy file appears"
            );
        }
        metrics.policies_loaded(set.len());
        Ok(Self {
            path: config.path.clone(),
            optional: config.optional,
            default: match config.default {
                DefaultPolicy::Allow => DefaultAction::Allow,
                DefaultPolicy::Deny => DefaultAction::Deny,
            },
            access_log,
            checks,
            metrics,
            loaded: ArcSwap::from_pointee(Loaded {
                generation: 1,
                set,
                sources: sources.clone(),
                loaded_at: SystemTime::now(),
            }),
            view: ArcSwapOption::empty(),
            last_seen: Mutex::new(Seen {
                sources: Some(sources),
                ..Seen::default()
            }),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A one-line description for the start-up banner.
    pub(crate) fn describe(&self) -> String {
        let loaded = self.loaded.load();
        format!(
            "{} ({} policies, {} rules; default {})",
            self.path.display(),
            loaded.set.len(),
            loaded.set.rule_count(),
            match self.default {
                DefaultAction::Allow => "allow",
                DefaultAction::Deny => "deny",
            }
        )
    }

    /// Watches the policy until `stop`: reads it every second and at once on SIGHUP.
    pub(crate) async fn watch(self: Arc<Self>, stop: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; the policy is still reloaded when its files change");
                None
            }
        };
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(hangup) => hangup.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
                () = stop.cancelled() => return,
            };
            let this = self.clone();
            // Reading files blocks; keep it off the thread that serves connections.
            let _ = tokio::task::spawn_blocking(move || this.reload(forced)).await;
        }
    }

    /// Reads the policy again and puts it in force if it changed and is valid. `forced`
    /// (SIGHUP) reports on an unchanged policy too.
    pub(crate) fn reload(&self, forced: bool) {
        let path = self.path.display();
        let sources = match read_policy_sources(&self.path) {
            Ok(sources) => sources,
            Err(e) => {
                let message = e.to_string();
                let mut seen = self.seen();
                if forced || seen.read_error.as_deref() != Some(message.as_str()) {
                    seen.read_error = Some(message.clone());
                    seen.sources = None;
                    drop(seen);
                    self.metrics.policy_reload(false);
                    error!("policy reload failed, the previous policy stays in force: {message}");
                }
                return;
            }
        };
        let recovered = {
            let mut seen = self.seen();
            let unchanged = seen
                .sources
                .as_deref()
                .is_some_and(|last| same_sources(last, &sources));
            if !forced && seen.read_error.is_none() && unchanged {
                return;
            }
            seen.sources = Some(sources.clone());
            seen.read_error.take().is_some()
        };
        let loaded = self.loaded.load_full();
        if same_sources(&loaded.sources, &sources) {
            let was_refused = self.seen().refused.take().is_some();
            if was_refused || recovered {
                info!(%path, "the policy files are back to the policy in force");
            } else if forced {
                info!(%path, generation = loaded.generation, "SIGHUP: the policy is unchanged");
            }
            return;
        }
        let own = self
            .view
            .load()
            .as_ref()
            .and_then(|view| view.own.parse::<SpiffeId>().ok());
        // Losing every policy is refused once one is in force; before that, an optional policy
        // may stay empty.
        let may_be_empty = self.optional && loaded.set.is_empty();
        match self
            .checks
            .validate(&self.path, &sources, may_be_empty, own.as_ref())
        {
            Ok(set) => {
                let generation = loaded.generation + 1;
                info!(
                    %path,
                    generation,
                    policies = set.len(),
                    rules = set.rule_count(),
                    "policy reloaded; new requests are decided by it"
                );
                self.metrics.policies_loaded(set.len());
                self.loaded.store(Arc::new(Loaded {
                    generation,
                    set,
                    sources,
                    loaded_at: SystemTime::now(),
                }));
                self.metrics.policy_reload(true);
                self.seen().refused = None;
            }
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                self.metrics.policy_reload(false);
                error!(
                    %path,
                    "policy reload refused, the previous policy (generation {}) stays in force:\n  {}",
                    loaded.generation,
                    errors.join("\n  ")
                );
                self.seen().refused = Some(errors);
            }
        }
    }

    /// The policy for this workload, narrowed from the loaded set once per change.
    fn view(&self, own: &str) -> Arc<View> {
        let generation = self.loaded.load().generation;
        if let Some(view) = self.view.load_full()
            && view.generation == generation
            && &*view.own == own
        {
            return view;
        }
        let loaded = self.loaded.load_full();
        let workload = own.parse::<SpiffeId>().ok();
        if let Some(workload) = &workload
            && self.checks.opaque
        {
            // Known only now that the workload's identity is: namespaced and selected policies
            // could not be checked at load. Such rules still fail closed (a DENY rule naming
            // HTTP fields refuses the connection) until the policy is fixed.
            for error in loaded
                .set
                .http_rules_on_tcp_port(Some(workload), self.checks.app_port)
            {
                error!("policy error for this workload: {error}");
            }
        }
        let view = Arc::new(View {
            generation: loaded.generation,
            own: own.into(),
            policy: loaded.set.for_workload(workload.as_ref(), self.default),
        });
        self.view.store(Some(view.clone()));
        view
    }

    /// Decides an HTTP request.
    pub(crate) fn check_request(
        &self,
        caller: &Caller,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        authority: Option<&str>,
    ) -> Judgement {
        let view = self.view(&caller.own);
        let headers = RequestHeaders { headers, authority };
        let request = Request {
            principal: &caller.peer,
            port: caller.port,
            http: Some(HttpRequest {
                method,
                path,
                headers: &headers,
            }),
        };
        let decision = view.policy.evaluate(&request);
        self.judge(caller, Some((method, path)), &decision)
    }

    /// Decides an opaque TCP connection.
    pub(crate) fn check_connection(&self, caller: &Caller) -> Judgement {
        let view = self.view(&caller.own);
        let request = Request {
            principal: &caller.peer,
            port: caller.port,
            http: None,
        };
        let decision = view.policy.evaluate(&request);
        self.judge(caller, None, &decision)
    }

    /// Counts the decision, logs a dry run's different verdict, and keeps what the access line
    /// and the span need. The decision's sentence is made only when someone will read it.
    fn judge(
        &self,
        caller: &Caller,
        http: Option<(&str, &str)>,
        decision: &hush_policy::Decision<'_>,
    ) -> Judgement {
        self.metrics.policy_decision(decision);
        if let Some(dry) = &decision.dry_run {
            let (method, path) = http.unwrap_or(("-", "-"));
            let what = match http {
                Some((method, path)) => Cow::Owned(format!("{method} {path}")),
                None => Cow::Borrowed("TCP connection"),
            };
            info!(
                target: "hush::access",
                caller = %caller.peer,
                peer = %caller.addr,
                method,
                path,
                dry_run_policy = %dry.policy.name,
                would = dry.verdict.as_str(),
                "dry run: {what} from {} would be {} ({}), is {}",
                caller.peer,
                match dry.verdict {
                    Verdict::Allow => "allowed",
                    Verdict::Deny => "denied",
                },
                dry.reason,
                decision.verdict.as_str()
            );
        }
        let allowed = decision.allowed();
        let audit = decision.audit.map(|rule| rule.policy.name.clone());
        let explained = !allowed || self.access_log == AccessLog::All || audit.is_some();
        Judgement {
            allowed,
            ambiguous_path: matches!(decision.reason, Reason::AmbiguousPath(_)),
            policy: match decision.reason {
                Reason::Rule(rule) => Some(rule.policy.name.clone()),
                _ => None,
            },
            audit,
            sentence: explained.then(|| decision.to_string()),
        }
    }

    /// What `GET /policy` on the admin port shows.
    pub(crate) fn status(&self, own: Option<&str>) -> PolicyStatus {
        let loaded = self.loaded.load_full();
        let applies: Option<Vec<String>> = own.map(|own| {
            self.view(own)
                .policy
                .policies()
                .map(|p| p.name.to_string())
                .collect()
        });
        let seen = self.seen();
        PolicyStatus {
            path: self.path.display().to_string(),
            default: match self.default {
                DefaultAction::Allow => "allow",
                DefaultAction::Deny => "deny",
            },
            generation: loaded.generation,
            loaded_at: crate::clock::unix_seconds(loaded.loaded_at),
            policies: loaded
                .set
                .policies()
                .map(|p| PolicySummary {
                    name: p.name.to_string(),
                    action: p.action.as_str(),
                    dry_run: p.dry_run,
                    origin: format!("{}:{}", p.origin, p.line),
                    applies: applies
                        .as_ref()
                        .map(|names| names.iter().any(|n| **n == *p.name)),
                })
                .collect(),
            refused: seen
                .read_error
                .clone()
                .map(|e| vec![e])
                .or_else(|| seen.refused.clone()),
        }
    }
}

/// The verified caller of an inbound connection, and the workload it calls.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) peer: Arc<str>,
    pub(crate) own: Arc<str>,
    pub(crate) addr: SocketAddr,
    /// The app's port this connection goes to: the destination port policies name.
    pub(crate) port: u16,
}

/// `GET /policy`: the policy in force and the last refused change.
#[derive(Debug, Serialize)]
pub(crate) struct PolicyStatus {
    path: String,
    default: &'static str,
    /// 1 at start-up, one more per reload that took effect.
    generation: u64,
    loaded_at: i64,
    policies: Vec<PolicySummary>,
    /// Why the files on disk are not in force, when they are not.
    refused: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct PolicySummary {
    name: String,
    action: &'static str,
    dry_run: bool,
    origin: String,
    /// Whether it applies to this workload (unknown before the first certificate).
    applies: Option<bool>,
}

fn same_sources(a: &[Source], b: &[Source]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.origin == b.origin && a.text == b.text)
}

/// Request headers as policy sees them. HTTP/2 carries the host in the `:authority`
/// pseudo-header, which hyper keeps in the URI, so `host` falls back to it.
struct RequestHeaders<'a> {
    headers: &'a HeaderMap,
    authority: Option<&'a str>,
}

impl hush_policy::Headers for RequestHeaders<'_> {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&str) -> ControlFlow<()>) {
        let mut values = self.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            if name == "host"
                && let Some(authority) = self.authority
            {
                let _ = visit(authority);
            }
            return;
        }
        for value in values {
            // A value that is not text cannot equal a pattern; it still counts as present.
            if visit(value.to_str().unwrap_or("\u{fffd}")).is_break() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const DENY_ADMIN: &str = "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - paths: [\"/admin\"]\n";

    #[test]
    fn a_directory_is_read_in_name_order_skipping_hidden_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yaml", "# b");
        write(dir.path(), "a.yml", "# a");
        write(dir.path(), "notes.txt", "not policy");
        write(dir.path(), ".hidden.yaml", "# hidden");
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let sources = read_policy_sources(dir.path()).unwrap();
        let names: Vec<&str> = sources
            .iter()
            .map(|s| s.origin.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["a.yml", "b.yaml"]);
        let missing = read_policy_sources(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    fn enforcer(dir: &Path, protocol: Protocol) -> Result<PolicyEnforcer, PolicyLoadError> {
        load_enforcer(dir, protocol, false)
    }

    fn load_enforcer(
        dir: &Path,
        protocol: Protocol,
        optional: bool,
    ) -> Result<PolicyEnforcer, PolicyLoadError> {
        PolicyEnforcer::load(
            &PolicyConfig {
                path: dir.to_path_buf(),
                default: DefaultPolicy::Allow,
                optional,
            },
            AccessLog::Denied,
            "127.0.0.1:8080".parse().unwrap(),
            protocol,
            "cluster.local".parse().unwrap(),
            Metrics::new(),
        )
    }

    fn caller() -> Caller {
        Caller {
            peer: "spiffe://cluster.local/ns/shop/sa/frontend".into(),
            own: "spiffe://cluster.local/ns/shop/sa/backend".into(),
            addr: "127.0.0.1:5000".parse().unwrap(),
            port: 8080,
        }
    }

    #[test]
    fn a_bad_change_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.yaml", DENY_ADMIN);
        let enforcer = enforcer(dir.path(), Protocol::Detect).unwrap();
        let headers = HeaderMap::new();
        let check = |path| {
            let judgement = enforcer.check_request(&caller(), "GET", path, &headers, None);
            if judgement.allowed {
                Ok(())
            } else {
                Err(judgement.refusal().to_string())
            }
        };
        assert!(check("/admin").unwrap_err().contains("deny-admin"));
        assert!(check("/public").is_ok());

        write(dir.path(), "p.yaml", &DENY_ADMIN.replace("DENY", "REFUSE"));
        enforcer.reload(false);
        assert!(check("/admin").is_err(), "the old policy stays");
        let status = enforcer.status(None);
        assert_eq!(status.generation, 1);
        let refused = status.refused.unwrap();
        assert!(
            refused[0].contains("p.yaml:5:11: unknown variant `REFUSE`"),
            "{refused:?}"
        );
        let metrics = enforcer.metrics.encode();
        assert!(
            metrics.contains("hush_policy_reloads_total{result=\"error\"} 1"),
            "{metrics}"
        );
        // The same broken file is not reported again every second.
        enforcer.reload(false);
        assert!(
            enforcer
                .metrics
                .encode()
                .contains("hush_policy_reloads_total{result=\"error\"} 1")
        );

        write(
            dir.path(),
            "p.yaml",
            &DENY_ADMIN.replace("/admin", "/public"),
        );
        enforcer.reload(false);
        assert!(check("/admin").is_ok());
        assert!(check("/public").is_err());
        assert_eq!(enforcer.status(None).generation, 2);
        assert!(enforcer.status(None).refused.is_none());
    }

    #[test]
    fn an_emptied_directory_keeps_the_last_good_policy_until_it_says_none() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.yaml", DENY_ADMIN);
        let enforcer = enforcer(dir.path(), Protocol::Detect).unwrap();
        let headers = HeaderMap::new();
        let admin_allowed = || {
            enforcer
                .check_request(&caller(), "GET", "/admin", &headers, None)
                .allowed
        };
        let errors = |e: &PolicyEnforcer| {
            metric_value(
                &e.metrics.encode(),
                "hush_policy_reloads_total{result=\"error\"}",
            )
        };
        assert!(!admin_allowed());

        // The ConfigMap is deleted: no policy file is left. That is refused, once.
        std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
        write(dir.path(), "notes.txt", "not policy");
        enforcer.reload(false);
        enforcer.reload(false);
        assert!(!admin_allowed(), "the last good policy stays in force");
        assert_eq!(errors(&enforcer), 1.0);
        let status = enforcer.status(None);
        assert_eq!(status.generation, 1);
        let refused = status.refused.unwrap();
        assert!(
            refused[0]
                .contains("no policy file (*.yaml, *.yml) here; hush takes that for a mistake"),
            "{refused:?}"
        );
        assert!(
            refused[0].contains("write a file holding `[]`"),
            "{refused:?}"
        );

        // A file without a policy in it is no clearer.
        write(dir.path(), "p.yaml", "# emptied\n");
        enforcer.reload(false);
        assert!(!admin_allowed());
        assert_eq!(errors(&enforcer), 2.0);
        assert!(enforcer.status(None).refused.unwrap()[0].contains(": no policy here;"));

        // Said on purpose, it is a policy like any other.
        write(
            dir.path(),
            "p.yaml",
            "# every policy removed on purpose\n[]\n",
        );
        enforcer.reload(false);
        assert!(admin_allowed());
        let status = enforcer.status(None);
        assert_eq!(status.generation, 2);
        assert!(status.refused.is_none());
        assert!(status.policies.is_empty());
    }

    #[test]
    fn an_empty_directory_at_start_is_refused_unless_it_says_none() {
        let dir = tempfile::tempdir().unwrap();
        let error = enforcer(dir.path(), Protocol::Detect).err().unwrap();
        assert!(
            error
                .to_string()
                .contains("no policy file (*.yaml, *.yml) here; hush takes that for a mistake"),
            "{error}"
        );
        write(dir.path(), "none.yaml", "[]");
        let enforcer = enforcer(dir.path(), Protocol::Detect).unwrap();
        assert_eq!(
            enforcer.describe().split(" (").nth(1),
            Some("0 policies, 0 rules; default allow)")
        );
    }

    #[test]
    fn an_optional_policy_may_start_empty_but_not_become_empty() {
        let dir = tempfile::tempdir().unwrap();
        let enforcer = load_enforcer(dir.path(), Protocol::Detect, true).unwrap();
        let headers = HeaderMap::new();
        let admin_allowed = || {
            enforcer
                .check_request(&caller(), "GET", "/admin", &headers, None)
                .allowed
        };
        assert!(admin_allowed(), "no policy yet");
        // Still none: nothing is in force, so nothing is lost.
        write(dir.path(), "p.yaml", "# soon\n");
        enforcer.reload(false);
        assert!(enforcer.status(None).refused.is_none());
        // The namespace's policy appears, then its ConfigMap is deleted.
        write(dir.path(), "p.yaml", DENY_ADMIN);
        enforcer.reload(false);
        assert!(!admin_allowed());
        std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
        enforcer.reload(false);
        assert!(!admin_allowed(), "the last good policy stays in force");
        let refused = enforcer.status(None).refused.unwrap();
        assert!(
            refused[0].contains("hush takes that for a mistake"),
            "{refused:?}"
        );
    }

    #[test]
    fn requests_are_judged_on_every_header_value_and_path_reading() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p.yaml",
            &format!(
                "{DENY_ADMIN}  - when:\n    - key: request.headers[x-role]\n      values: [evil]\n"
            ),
        );
        let enforcer = enforcer(dir.path(), Protocol::Detect).unwrap();
        let judge = |path: &str, roles: &[&str]| {
            let mut headers = HeaderMap::new();
            for role in roles {
                headers.append("x-role", role.parse().unwrap());
            }
            enforcer.check_request(&caller(), "GET", path, &headers, None)
        };
        assert!(judge("/public", &["a"]).allowed);
        assert!(!judge("/public", &["a", "evil"]).allowed, "a second line");
        assert!(
            !judge("/public", &["a, evil"]).allowed,
            "a list on one line"
        );
        let denied = judge("/admin;x=1", &[]);
        assert!(!denied.allowed && !denied.ambiguous_path, "{denied:?}");
        let refused = judge("/public/..;/admin", &[]);
        assert!(!refused.allowed && refused.ambiguous_path, "{refused:?}");
        assert!(
            refused
                .refusal()
                .starts_with("refused: the path has a `.` or `..` segment and a path parameter"),
            "{refused:?}"
        );
        let metrics = enforcer.metrics.encode();
        assert!(
            metrics.contains(
                "hush_policy_decisions_total{action=\"ambiguous_path\",policy=\"\",result=\"deny\"} 1"
            ),
            "{metrics}"
        );
        // The host a condition reads is the `:authority` of an HTTP/2 request.
        let headers = HeaderMap::new();
        let host = RequestHeaders {
            headers: &headers,
            authority: Some("api.shop"),
        };
        let mut seen = Vec::new();
        hush_policy::Headers::each_value(&host, "host", &mut |v| {
            seen.push(v.to_string());
            ControlFlow::Continue(())
        });
        assert_eq!(seen, ["api.shop"]);
    }

    #[test]
    fn a_vanished_file_keeps_the_policy_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        write(dir.path(), "p.yaml", DENY_ADMIN);
        let enforcer = enforcer(&file, Protocol::Detect).unwrap();
        std::fs::remove_file(&file).unwrap();
        enforcer.reload(false);
        enforcer.reload(false);
        let errors = |e: &PolicyEnforcer| {
            metric_value(
                &e.metrics.encode(),
                "hush_policy_reloads_total{result=\"error\"}",
            )
        };
        assert_eq!(errors(&enforcer), 1.0);
        let refused = enforcer.status(None).refused.unwrap();
        assert!(refused[0].contains("cannot read"), "{refused:?}");
        let headers = HeaderMap::new();
        assert!(
            !enforcer
                .check_request(&caller(), "GET", "/admin", &headers, None)
                .allowed,
            "the last good policy stays"
        );
        // Put back as it was: nothing to reload, nothing refused any more.
        write(dir.path(), "p.yaml", DENY_ADMIN);
        enforcer.reload(false);
        let status = enforcer.status(None);
        assert_eq!(status.generation, 1);
        assert!(status.refused.is_none());
        // SIGHUP re-reads an unchanged file without counting anything.
        enforcer.reload(true);
        assert_eq!(errors(&enforcer), 1.0);
    }

    fn metric_value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn http_rules_on_an_opaque_port_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.yaml", DENY_ADMIN);
        let error = enforcer(dir.path(), Protocol::Tcp).err().unwrap();
        let text = error.to_string();
        assert!(
            text.contains("names HTTP fields (paths) but port 8080 is served as opaque TCP"),
            "{text}"
        );
        assert!(enforcer(dir.path(), Protocol::Http1).is_ok());
    }

    #[test]
    fn foreign_selectors_are_refused_foreign_principals_are_not() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p.yaml",
            "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules:\n  - from:\n    - principals: [\"spiffe://example.org/x\"]\n",
        );
        assert!(
            enforcer(dir.path(), Protocol::Detect).is_ok(),
            "a principal of another trust domain is how a federated caller is let in"
        );
        write(
            dir.path(),
            "p.yaml",
            "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector:\n    identities: [\"spiffe://example.org/x\"]\n",
        );
        let text = enforcer(dir.path(), Protocol::Detect)
            .err()
            .unwrap()
            .to_string();
        assert!(
            text.contains(
                "p.yaml:6:18: policy \"a\": selector spiffe://example.org/x is in trust domain example.org"
            ),
            "{text}"
        );
    }
}
