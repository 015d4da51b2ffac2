//! The sidecar's configuration: YAML parsed once into typed structs, then validated; and the
//! same structs written back as YAML.
//!
//! Unknown keys are refused (a misspelt `handshake_timout` must not silently fall back to a
//! default), and every error names the field and the value that is wrong. When written, a
//! configuration names only what differs from the defaults, so what the injector puts in a
//! pod's annotation stays short enough to read.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hush_identity::SpiffeId;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration;

/// The longest duration any setting accepts.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most connections a listener may be allowed (far above what file descriptors allow).
const MAX_CONNECTIONS: usize = 1_000_000;

/// The prefix of every rewritten probe's path.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The whole sidecar configuration (`hush proxy --config FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where the sidecar gets its identity.
    pub ca: CaConfig,
    /// mTLS from other sidecars to the local app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundConfig>,
    /// Plaintext from the app to named upstream sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<OutboundConfig>,
    /// Connections redirected by iptables, dialled at their original destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<TransparentConfig>,
    /// Who may call the app: identity policy for inbound connections and requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// Health, readiness, metrics and certificate status.
    #[serde(default, skip_serializing_if = "is_default")]
    pub admin: AdminConfig,
    /// Timeouts and caps.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
    /// Which requests and connections get an access-log line: `denied` (the default: those
    /// refused by policy or failed, dry-run would-denials and AUDIT-marked ones), `all`, or
    /// `off`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub access_log: AccessLog,
    /// Where spans are exported. The `--otlp-endpoint` flag and the standard `OTEL_*`
    /// environment variables take precedence.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tracing: TracingConfig,
    /// The SPIFFE Workload API served to the app on a Unix socket: its X.509-SVID (with a key
    /// of its own, never the sidecar's), trust bundles, and JWT-SVIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_api: Option<WorkloadApiConfig>,
    /// On SIGTERM (or `POST /shutdown`), how long in-flight requests and connections get to
    /// finish before the sidecar exits anyway.
    #[serde(
        default = "defaults::shutdown_grace",
        skip_serializing_if = "defaults::is_shutdown_grace",
        with = "duration"
    )]
    pub shutdown_grace: Duration,
}

/// The SPIFFE Workload API (`workload_api`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadApiConfig {
    /// The Unix socket the API is served on. Its directory is created when missing; a socket
    /// left there by an earlier run is replaced (anything else that is not a socket is
    /// refused); it is made mode 0666, since who may reach it is decided by who may enter its
    /// directory, and removed at shutdown.
    pub socket: PathBuf,
}

// === impl WorkloadApiConfig ===

impl WorkloadApiConfig {
    /// The API served on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }
}

/// The CA the sidecar attests to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// `https://host:port` of `hush ca serve`.
    pub address: String,
    /// PEM file with the trust bundle that verifies the CA (and, at first, every peer).
    pub trust_bundle: PathBuf,
    /// File holding the join token (or, on Kubernetes, a projected service-account token). It
    /// is read again before every attestation, so a rotated token is picked up.
    pub token_file: PathBuf,
    /// Lifetime to ask for; the CA may shorten it. Default: the CA's default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::optional"
    )]
    pub certificate_ttl: Option<Duration>,
    /// How often the trust bundle is fetched from the CA (it also comes with every renewal).
    #[serde(
        default = "defaults::bundle_refresh",
        skip_serializing_if = "defaults::is_bundle_refresh",
        with = "duration"
    )]
    pub bundle_refresh: Duration,
    /// A file the sidecar keeps the last bundle it took from the CA in, and starts from
    /// instead of `trust_bundle` when it is there: a restarted sidecar then trusts the roots
    /// of the last rotation rather than those its pod was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_cache: Option<PathBuf>,
    /// When renewals present the token as well as the certificate. Unset: `always` when the
    /// token file holds a Kubernetes service-account token (the kubelet keeps one fresh), and
    /// `when_asked` when it holds a join token (typically used once). Read each time, like the
    /// token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reattest: Option<Reattest>,
}

/// When a sidecar sends its token with a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reattest {
    /// Every renewal attests with the token, as Istio's agents do: the CA's TokenReview
    /// confirms the service account still exists each time.
    Always,
    /// Renewals prove identity with the current certificate; the token is sent only when the
    /// CA refuses that (its `--reattest-after` has passed, or the certificate was revoked).
    WhenAsked,
}

// === impl Reattest ===

impl Reattest {
    /// What an unset `ca.reattest` means for a token file holding `token`: `always` for a
    /// Kubernetes token, `when_asked` for a join token (`hushjt.…`, the prefix `hush ca token
    /// create` gives every join token).
    pub fn for_token(token: &str) -> Self {
        if token.trim_start().starts_with("hushjt.") {
            Self::WhenAsked
        } else {
            Self::Always
        }
    }
}

/// The inbound listener: mutual TLS from other sidecars, plaintext to the app.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Address other sidecars connect to.
    pub listen: SocketAddr,
    /// The local app, reached in plaintext.
    pub app: SocketAddr,
    /// How to treat connections from clients that do not announce their protocol with ALPN
    /// (hush sidecars always do); `detect` (the default) tells HTTP/1.1, HTTP/2 and opaque TCP
    /// apart by their first bytes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// Connections are redirected here by iptables (`hush init-iptables`): each goes to the
    /// pod's own address at the port the caller dialled (never loopback, never one of the
    /// sidecar's ports), and policy judges that port. `app` still serves connections made to
    /// this listener directly.
    #[serde(default, skip_serializing_if = "is_default")]
    pub captured: bool,
    /// Request headers the app trusts to come from this sidecar, besides
    /// `x-hush-peer-identity` and `x-forwarded-client-cert` (always protected): removed from
    /// every request, in any spelling (any case, `_` or `.` for `-`), before it reaches the
    /// app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protected_headers: Vec<String>,
}

/// One explicit outbound listener: the app connects in plaintext, the sidecar dials a peer
/// sidecar with mutual TLS and checks who answers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Address the app connects to.
    pub listen: SocketAddr,
    /// The peer sidecar's inbound address, `host:port`.
    pub upstream: String,
    /// The SPIFFE ID (or list of IDs) the peer must prove.
    pub identity: Identities,
    /// The protocol the app speaks here; `detect` by default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
}

/// The transparent listener: connections the pod's iptables rules redirected here.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransparentConfig {
    /// Address the REDIRECT rule points at.
    pub listen: SocketAddr,
    /// Destinations outside the mesh, passed through untouched (no TLS).
    #[serde(default, skip_serializing_if = "is_default")]
    pub passthrough: Passthrough,
    /// Destination ports whose protocol is never sniffed (server-first protocols such as
    /// MySQL or SMTP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
    /// Which identity must answer at which destination; the first match wins. A destination
    /// no rule names must present some SPIFFE ID of the trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationRule>,
}

/// Destinations outside the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Passthrough {
    /// Address ranges, e.g. `10.96.0.0/12`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<IpNet>,
    /// Destination ports, e.g. `53`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// The identity expected at some destinations of the transparent listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationRule {
    /// Destination addresses, e.g. `10.1.2.0/24` or `10.1.2.3/32`.
    pub cidr: IpNet,
    /// Destination port; any port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The SPIFFE ID (or IDs) that must answer there.
    pub identity: Identities,
}

/// Identity policy for the inbound listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A policy file, or a directory whose `*.yaml` / `*.yml` files are read (a mounted
    /// ConfigMap). It is watched: valid changes apply within about a second, and on SIGHUP.
    pub path: PathBuf,
    /// What happens to a request no ALLOW or DENY policy applies to: `allow` (the default:
    /// any authenticated mesh identity gets through) or `deny`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub default: DefaultPolicy,
    /// Whether the sidecar may start while the path holds no policy (the injector's choice: it
    /// mounts the namespace's policy ConfigMap as optional). Then no policy applies until one
    /// appears. Without it, files that hold no policy are refused at start unless one says
    /// `[]`; either way, once a policy is in force, losing every policy is refused.
    #[serde(default, skip_serializing_if = "is_default")]
    pub optional: bool,
}

/// The decision when no ALLOW or DENY policy applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Any authenticated mesh identity may call.
    #[default]
    Allow,
    /// Only what an ALLOW rule allows.
    Deny,
}

/// Which requests and connections get an access-log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// Requests and connections refused by policy or failed (the sidecar answered with its
    /// own error), dry-run would-denials, and requests an AUDIT rule marks.
    #[default]
    Denied,
    /// Every request and connection.
    All,
    /// None (dry-run would-denials are still logged: that is what a dry run is for).
    Off,
}

/// Where the sidecar's spans go (OTLP over gRPC). Without an endpoint, nothing is exported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector, e.g. `http://otel-collector.observability:4317`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans (default `hush-proxy`; `OTEL_SERVICE_NAME` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}

/// The admin server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/live`, `/ready`, `/metrics`, `/certs` and `POST /shutdown`.
    #[serde(
        default = "defaults::admin_listen",
        skip_serializing_if = "defaults::is_admin_listen"
    )]
    pub listen: SocketAddr,
    /// The app's kubelet probes, rewritten to this port by the injector: each path answers
    /// with the outcome of the original check against the app on 127.0.0.1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<AppProbe>,
    /// Connections the admin server serves at once, and an eighth of that (at least one)
    /// from any one address; more are closed at once. Each must send its request head within
    /// `limits.header_timeout`.
    #[serde(
        default = "defaults::admin_max_connections",
        skip_serializing_if = "defaults::is_admin_max_connections"
    )]
    pub max_connections: usize,
}

/// One rewritten probe: the admin path the kubelet calls, and the check it stands for.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppProbe {
    /// The admin path, `/app-health/<container>/<liveness|readiness|startup>`.
    pub path: String,
    /// The app's port.
    pub port: u16,
    /// For an HTTP probe, the path to GET on the app; a TCP probe has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
}

/// Timeouts and caps, with defaults meant for production.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// A peer that has not finished its TLS handshake by then is dropped, so a slow or silent
    /// client cannot hold a connection slot.
    #[serde(
        default = "defaults::handshake_timeout",
        skip_serializing_if = "defaults::is_handshake_timeout",
        with = "duration"
    )]
    pub handshake_timeout: Duration,
    /// How long protocol detection waits for the client's first bytes before treating the
    /// connection as opaque TCP (so server-first protocols are not stalled for long).
    #[serde(
        default = "defaults::detect_timeout",
        skip_serializing_if = "defaults::is_detect_timeout",
        with = "duration"
    )]
    pub detect_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    #[serde(
        default = "defaults::idle_timeout",
        skip_serializing_if = "defaults::is_idle_timeout",
        with = "duration"
    )]
    pub idle_timeout: Duration,
    /// Dialling the app or an upstream sidecar gives up after this long.
    #[serde(
        default = "defaults::connect_timeout",
        skip_serializing_if = "defaults::is_connect_timeout",
        with = "duration"
    )]
    pub connect_timeout: Duration,
    /// An HTTP/1 request head (request line and headers) must arrive whole within this long
    /// of its first byte; a client that trickles it is cut off. A keep-alive connection
    /// waiting for its next request is not timed (`idle_timeout` is).
    #[serde(
        default = "defaults::header_timeout",
        skip_serializing_if = "defaults::is_header_timeout",
        with = "duration"
    )]
    pub header_timeout: Duration,
    /// Largest HTTP request head (request line and headers) accepted, in bytes.
    #[serde(
        default = "defaults::max_header_bytes",
        skip_serializing_if = "defaults::is_max_header_bytes"
    )]
    pub max_header_bytes: usize,
    /// Connections the process serves at once, over all its listeners (the admin port has its
    /// own cap); more are refused. Unset: as many as fit in the container's memory limit
    /// (docs/sidecar.md, "Connections and memory"), and 10,000 without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Concurrent HTTP/2 streams (requests) one connection may carry. A sidecar sends all its
    /// app's requests to one peer over one connection, so this is also how many of them can be
    /// in flight to that peer at once; each may hold up to `max_header_bytes` of headers.
    #[serde(
        default = "defaults::max_concurrent_streams",
        skip_serializing_if = "defaults::is_max_concurrent_streams"
    )]
    pub max_concurrent_streams: usize,
    /// TLS handshakes one client address may have in progress at once on the inbound
    /// listener; more are closed at once, so a client that opens connections and never
    /// finishes its handshake cannot take every connection slot.
    #[serde(
        default = "defaults::max_handshakes_per_address",
        skip_serializing_if = "defaults::is_max_handshakes_per_address"
    )]
    pub max_handshakes_per_address: usize,
}

/// How a listener treats the bytes the client sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Look at the first bytes: HTTP/2 preface, an HTTP/1.x request line, or anything else
    /// (opaque TCP). Waits at most `limits.detect_timeout`.
    #[default]
    Detect,
    /// HTTP/1.1 (WebSocket and other upgrades pass through).
    Http1,
    /// HTTP/2, gRPC included.
    Http2,
    /// Opaque bytes, never looked at: for server-first protocols.
    #[serde(alias = "opaque")]
    Tcp,
}

/// One SPIFFE ID or a list of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identities(pub Vec<SpiffeId>);

/// The configuration was refused, or could not be written.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not describe a configuration (syntax, unknown key, wrong type).
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// serde-saphyr's explanation, with line and column.
        message: String,
    },
    /// A field holds a value that cannot work.
    #[error("{origin}: {field}: {problem}")]
    Invalid {
        /// Where the text came from.
        origin: String,
        /// The field, e.g. `outbound[1].listen`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The configuration cannot be written as YAML (a path that is not UTF-8).
    #[error("cannot write the configuration as YAML: {message}; use UTF-8 paths")]
    Write {
        /// serde-saphyr's explanation.
        message: String,
    },
}

/// Whether a field holds its type's default, which a written configuration leaves out.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

// === impl ProxyConfig ===

impl ProxyConfig {
    /// A configuration of the sidecar that gets its identity from `ca`, with every other
    /// section absent or at its default. It proxies nothing yet: a writer adds the listeners.
    pub fn new(ca: CaConfig) -> Self {
        Self {
            ca,
            inbound: None,
            outbound: Vec::new(),
            transparent: None,
            policy: None,
            admin: AdminConfig::default(),
            limits: Limits::default(),
            access_log: AccessLog::default(),
            tracing: TracingConfig::default(),
            workload_api: None,
            shutdown_grace: defaults::shutdown_grace(),
        }
    }

    /// Reads and validates the configuration in `path`. Relative paths inside it (trust
    /// bundle, token file) are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, base) = read_config(path)?;
        Self::from_yaml(&text, &path.display().to_string(), base)
    }

    /// Parses and validates YAML `text`; `origin` names it in errors and relative paths are
    /// resolved against `base`.
    pub fn from_yaml(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = parse_yaml(text, origin)?;
        config.validate(origin)?;
        config.ca.resolve_paths(base);
        if let Some(policy) = &mut config.policy {
            policy.path = base.join(&policy.path);
        }
        if let Some(api) = &mut config.workload_api {
            api.socket = base.join(&api.socket);
        }
        Ok(config)
    }

    /// The configuration as YAML that [`Self::from_yaml`] reads back equal (given the same
    /// base for relative paths). Absent sections, empty lists and values equal to their
    /// default are left out; durations are written as `10s`, `500ms`, `1h`. Nothing is
    /// validated here: the sidecar validates what it reads.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        write_yaml(self)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            problem,
        };
        check_shared(
            origin,
            &self.ca,
            &self.admin,
            &self.limits,
            self.shutdown_grace,
        )?;
        if self.inbound.is_none() && self.outbound.is_empty() && self.transparent.is_none() {
            return Err(invalid(
                "inbound",
                "nothing to proxy: configure inbound, outbound or transparent".to_string(),
            ));
        }

        if let Some(api) = &self.workload_api {
            check_socket_path(&api.socket).map_err(|p| invalid("workload_api.socket", p))?;
        }

        for (i, probe) in self.admin.probes.iter().enumerate() {
            let field = format!("admin.probes[{i}]");
            if !probe.path.starts_with(APP_HEALTH_PREFIX) {
                return Err(invalid(
                    &format!("{field}.path"),
                    format!("{:?} must start with {APP_HEALTH_PREFIX}", probe.path),
                ));
            }
            if probe.port == 0 {
                return Err(invalid(
                    &format!("{field}.port"),
                    "must not be 0".to_string(),
                ));
            }
            if probe
                .http_path
                .as_ref()
                .is_some_and(|p| !p.starts_with('/'))
            {
                return Err(invalid(
                    &format!("{field}.http_path"),
                    "must start with /".to_string(),
                ));
            }
            if self.admin.probes[..i].iter().any(|p| p.path == probe.path) {
                return Err(invalid(
                    &format!("{field}.path"),
                    format!("{:?} is listed twice", probe.path),
                ));
            }
        }
        if self.policy.is_some() && self.inbound.is_none() {
            return Err(invalid(
                "policy",
                "policy decides who may call the app on the inbound listener; configure inbound"
                    .to_string(),
            ));
        }

        let mut listeners: Vec<(String, SocketAddr)> =
            vec![("admin.listen".to_string(), self.admin.listen)];
        if let Some(inbound) = &self.inbound {
            listeners.push(("inbound.listen".to_string(), inbound.listen));
            for (i, name) in inbound.protected_headers.iter().enumerate() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(invalid(
                        &format!("inbound.protected_headers[{i}]"),
                        format!("{name:?} is not an HTTP header name"),
                    ));
                }
            }
            if inbound.app == inbound.listen {
                return Err(invalid(
                    "inbound.app",
                    format!(
                        "{} is the inbound listener itself; the app must listen elsewhere",
                        inbound.app
                    ),
                ));
            }
        }
        for (i, outbound) in self.outbound.iter().enumerate() {
            let field = format!("outbound[{i}]");
            listeners.push((format!("{field}.listen"), outbound.listen));
            check_host_port(&outbound.upstream)
                .map_err(|p| invalid(&format!("{field}.upstream"), p))?;
            if outbound.identity.0.is_empty() {
                return Err(invalid(
                    &format!("{field}.identity"),
                    "name at least one SPIFFE ID the upstream must prove".to_string(),
                ));
            }
        }
        if let Some(transparent) = &self.transparent {
            listeners.push(("transparent.listen".to_string(), transparent.listen));
            for (i, rule) in transparent.destinations.iter().enumerate() {
                if rule.identity.0.is_empty() {
                    return Err(invalid(
                        &format!("transparent.destinations[{i}].identity"),
                        "name at least one SPIFFE ID".to_string(),
                    ));
                }
            }
        }
        // Port 0 asks the system for a free port, so two of them never clash.
        for (i, (field, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err(invalid(field, format!("{addr} is already used by {other}")));
            }
        }

        Ok(())
    }
}

/// Reads a configuration file: its text, and the directory its relative paths are taken from.
pub(crate) fn read_config(path: &Path) -> Result<(String, &Path), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text, path.parent().unwrap_or_else(|| Path::new("."))))
}

/// Parses YAML `text` from `origin` as a `T`, with serde-saphyr's line and column in the error.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| {
        let message = e.to_string();
        ConfigError::Parse {
            origin: origin.to_string(),
            message: message
                .strip_prefix("error: ")
                .unwrap_or(&message)
                .to_string(),
        }
    })
}

/// `value` as short YAML, lists indented under their key, as in the examples people read next
/// to it.
pub(crate) fn write_yaml<T: Serialize>(value: &T) -> Result<String, ConfigError> {
    let options = serde_saphyr::ser_options! { compact_list_indent: false };
    serde_saphyr::to_string_with_options(value, options).map_err(|e| ConfigError::Write {
        message: e.to_string(),
    })
}

/// Checks what the sidecar's and the gateway's configurations share: the CA, durations the
/// clock must be able to add, and the limits.
pub(crate) fn check_shared(
    origin: &str,
    ca: &CaConfig,
    admin: &AdminConfig,
    limits: &Limits,
    shutdown_grace: Duration,
) -> Result<(), ConfigError> {
    let invalid = |field: &str, problem: String| ConfigError::Invalid {
        origin: origin.to_string(),
        field: field.to_string(),
        problem,
    };
    check_ca_address(&ca.address).map_err(|p| invalid("ca.address", p))?;
    if ca.bundle_refresh < Duration::from_secs(1) {
        return Err(invalid(
            "ca.bundle_refresh",
            "must be at least 1s".to_string(),
        ));
    }
    // Deadlines are computed by adding these to the clock; a duration of centuries would
    // overflow it.
    for (field, value) in [
        ("ca.bundle_refresh", Some(ca.bundle_refresh)),
        ("ca.certificate_ttl", ca.certificate_ttl),
        ("shutdown_grace", Some(shutdown_grace)),
        ("limits.handshake_timeout", Some(limits.handshake_timeout)),
        ("limits.detect_timeout", Some(limits.detect_timeout)),
        ("limits.idle_timeout", Some(limits.idle_timeout)),
        ("limits.connect_timeout", Some(limits.connect_timeout)),
        ("limits.header_timeout", Some(limits.header_timeout)),
    ] {
        if value.is_some_and(|v| v > MAX_DURATION) {
            return Err(invalid(
                field,
                format!(
                    "longer than the most hush accepts, {}",
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
    }
    for (field, value) in [
        ("limits.handshake_timeout", limits.handshake_timeout),
        ("limits.detect_timeout", limits.detect_timeout),
        ("limits.idle_timeout", limits.idle_timeout),
        ("limits.connect_timeout", limits.connect_timeout),
        ("limits.header_timeout", limits.header_timeout),
    ] {
        if value.is_zero() {
            return Err(invalid(field, "must be longer than 0".to_string()));
        }
    }
    // hyper cannot read a request head into a smaller buffer.
    if limits.max_header_bytes < 8192 {
        return Err(invalid(
            "limits.max_header_bytes",
            format!("{} is below the minimum of 8192", limits.max_header_bytes),
        ));
    }
    for (field, value) in [
        (
            "limits.max_connections",
            limits.max_connections.unwrap_or(1),
        ),
        (
            "limits.max_concurrent_streams",
            limits.max_concurrent_streams,
        ),
        (
            "limits.max_handshakes_per_address",
            limits.max_handshakes_per_address,
        ),
        ("admin.max_connections", admin.max_connections),
    ] {
        if !(1..=MAX_CONNECTIONS).contains(&value) {
            return Err(invalid(
                field,
                format!("{value} is not between 1 and {MAX_CONNECTIONS}"),
            ));
        }
    }
    Ok(())
}

/// The longest path a Unix socket can be bound at (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

fn check_socket_path(path: &Path) -> Result<(), String> {
    if path.file_name().is_none() {
        return Err(format!("{} names no file", path.display()));
    }
    let length = path.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        return Err(format!(
            "{} is {length} bytes long; a Unix socket's path may be at most {MAX_SOCKET_PATH}",
            path.display()
        ));
    }
    Ok(())
}

pub(crate) fn check_ca_address(address: &str) -> Result<(), String> {
    let uri: http::Uri = address
        .parse()
        .map_err(|_| format!("{address:?} is not a URL (expected https://host:port)"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "{address:?}: the CA is only reachable over TLS, so the scheme must be https"
        ));
    }
    if uri.port_u16().is_none() {
        return Err(format!(
            "{address:?} has no port (expected https://host:port)"
        ));
    }
    Ok(())
}

pub(crate) fn check_host_port(value: &str) -> Result<(), String> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{value:?} has no valid port")),
        Ok(_) => Ok(()),
    }
}

// === impl CaConfig ===

impl CaConfig {
    /// Takes the section's relative paths (trust bundle, token file, bundle cache) relative to
    /// `base`, the configuration file's directory.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.trust_bundle = base.join(&self.trust_bundle);
        self.token_file = base.join(&self.token_file);
        if let Some(cache) = &mut self.bundle_cache {
            *cache = base.join(&*cache);
        }
    }

    /// The CA at `address`, with the bundle and token files named, the CA's default
    /// certificate lifetime and the default bundle refresh.
    pub fn new(
        address: impl Into<String>,
        trust_bundle: impl Into<PathBuf>,
        token_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            address: address.into(),
            trust_bundle: trust_bundle.into(),
            token_file: token_file.into(),
            certificate_ttl: None,
            bundle_refresh: defaults::bundle_refresh(),
            bundle_cache: None,
            reattest: None,
        }
    }
}

// === impl InboundConfig ===

impl InboundConfig {
    /// An inbound listener on `listen` in front of the app at `app`, detecting protocols,
    /// not captured, protecting only the identity headers.
    pub fn new(listen: SocketAddr, app: SocketAddr) -> Self {
        Self {
            listen,
            app,
            protocol: Protocol::default(),
            captured: false,
            protected_headers: Vec::new(),
        }
    }
}

// === impl OutboundConfig ===

impl OutboundConfig {
    /// An outbound listener on `listen` to the sidecar at `upstream`, which must prove
    /// `identity`; the protocol is detected.
    pub fn new(
        listen: SocketAddr,
        upstream: impl Into<String>,
        identity: impl Into<Identities>,
    ) -> Self {
        Self {
            listen,
            upstream: upstream.into(),
            identity: identity.into(),
            protocol: Protocol::default(),
        }
    }
}

// === impl TransparentConfig ===

impl TransparentConfig {
    /// A transparent listener on `listen` with no passthrough, no opaque ports and no
    /// destination rules.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            passthrough: Passthrough::default(),
            opaque_ports: Vec::new(),
            destinations: Vec::new(),
        }
    }
}

// === impl PolicyConfig ===

impl PolicyConfig {
    /// The policy at `path`, required, allowing what no policy decides.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            default: DefaultPolicy::default(),
            optional: false,
        }
    }
}

// === impl Identities ===

impl<'de> Deserialize<'de> for Identities {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parsed as strings first so that a bad ID is reported with the SPIFFE rule it
        // breaks, not as "did not match any variant".
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let raw = Raw::deserialize(deserializer)?;
        let strings = match raw {
            Raw::One(one) => vec![one],
            Raw::Many(many) => many,
        };
        let ids = strings
            .iter()
            .map(|s| {
                s.parse::<SpiffeId>()
                    .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(ids))
    }
}

impl Serialize for Identities {
    /// One ID is written as a string and several as a list, as people write them.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(serializer),
            many => many.serialize(serializer),
        }
    }
}

impl From<SpiffeId> for Identities {
    fn from(id: SpiffeId) -> Self {
        Self(vec![id])
    }
}

impl fmt::Display for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(SpiffeId::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

// === impl Protocol ===

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Detect => "detect",
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tcp => "tcp",
        })
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
            probes: Vec::new(),
            max_connections: defaults::admin_max_connections(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: defaults::handshake_timeout(),
            detect_timeout: defaults::detect_timeout(),
            idle_timeout: defaults::idle_timeout(),
            connect_timeout: defaults::connect_timeout(),
            header_timeout: defaults::header_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            max_connections: None,
            max_concurrent_streams: defaults::max_concurrent_streams(),
            max_handshakes_per_address: defaults::max_handshakes_per_address(),
        }
    }
}

/// Each default twice: the value serde fills in when a key is absent, and the test that
/// leaves the key out when writing, so a written configuration names only what differs.
pub(crate) mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    macro_rules! defaults {
        ($($(#[$doc:meta])* $name:ident, $is:ident: $ty:ty = $value:expr;)*) => {$(
            $(#[$doc])*
            pub(crate) fn $name() -> $ty {
                $value
            }
            pub(crate) fn $is(value: &$ty) -> bool {
                *value == $name()
            }
        )*};
    }

    defaults! {
        shutdown_grace, is_shutdown_grace: Duration = Duration::from_secs(10);
        bundle_refresh, is_bundle_refresh: Duration = Duration::from_secs(300);
        admin_listen, is_admin_listen: SocketAddr = SocketAddr::from((Ipv4Addr::LOCALHOST, 15000));
        admin_max_connections, is_admin_max_connections: usize = 64;
        handshake_timeout, is_handshake_timeout: Duration = Duration::from_secs(10);
        detect_timeout, is_detect_timeout: Duration = Duration::from_millis(500);
        idle_timeout, is_idle_timeout: Duration = Duration::from_secs(3600);
        connect_timeout, is_connect_timeout: Duration = Duration::from_secs(5);
        max_header_bytes, is_max_header_bytes: usize = 64 * 1024;
        header_timeout, is_header_timeout: Duration = Duration::from_secs(10);
        /// Go's HTTP/2 server allows 250; a power of two near it.
        max_concurrent_streams, is_max_concurrent_streams: usize = 256;
        max_handshakes_per_address, is_max_handshakes_per_address: usize = 256;
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const MINIMAL: &str = "
ca:
  address: https://localhost:8443
  trust_bundle: ./bundle.pem
  token_file: ./frontend.token
inbound:
  listen: 127.0.0.1:15006
  app: 127.0.0.1:8080
";

    fn parse(text: &str) -> Result<ProxyConfig, String> {
        ProxyConfig::from_yaml(text, "test.yaml", Path::new("/etc/hush")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let config = parse(&format!(
            "{MINIMAL}
outbound:
  - listen: 127.0.0.1:15001
    upstream: 127.0.0.1:16006
    identity: spiffe://cluster.local/backend
admin:
  listen: 127.0.0.1:15000
"
        ))
        .unwrap();
        assert_eq!(config.ca.trust_bundle, Path::new("/etc/hush/./bundle.pem"));
        assert_eq!(
            config.ca.token_file,
            Path::new("/etc/hush/./frontend.token")
        );
        let inbound = config.inbound.unwrap();
        assert_eq!(inbound.protocol, Protocol::Detect);
        assert_eq!(config.outbound.len(), 1);
        assert_eq!(
            config.outbound[0].identity.0[0].as_str(),
            "spiffe://cluster.local/backend"
        );
        assert_eq!(config.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.detect_timeout, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn identities_may_be_one_or_a_list() {
        let config = parse(&format!(
            "{MINIMAL}
outbound:
  - listen: 127.0.0.1:15001
    upstream: backend.shop.svc:15006
    identity: [spiffe://cluster.local/a, spiffe://cluster.local/b]
    protocol: http2
"
        ))
        .unwrap();
        assert_eq!(config.outbound[0].identity.0.len(), 2);
        assert_eq!(config.outbound[0].protocol, Protocol::Http2);
    }

    #[test]
    fn policy_is_inbound_only_with_defaults_and_a_relative_path() {
        let config = parse(&format!("{MINIMAL}policy:\n  path: policy.d\n")).unwrap();
        let policy = config.policy.unwrap();
        assert_eq!(policy.path, Path::new("/etc/hush/policy.d"));
        assert_eq!(policy.default, DefaultPolicy::Allow);
        assert_eq!(config.access_log, AccessLog::Denied);
        let config = parse(&format!(
            "{MINIMAL}policy: {{path: /p, default: deny}}\naccess_log: all\n"
        ))
        .unwrap();
        assert_eq!(config.access_log, AccessLog::All);
        let policy = config.policy.unwrap();
        assert_eq!(policy.default, DefaultPolicy::Deny);
        assert!(!policy.optional);
        let outbound_only = "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
             outbound: [{listen: 127.0.0.1:1, upstream: a:1, identity: spiffe://a/b}]\n\
             policy: {path: p}";
        let error = parse(outbound_only).unwrap_err();
        assert!(
            error.contains("policy: policy decides who may call the app"),
            "{error}"
        );
        let error = parse(&format!("{MINIMAL}policy: {{path: p, default: maybe}}\n")).unwrap_err();
        assert!(error.contains("unknown variant `maybe`"), "{error}");
    }

    /// One row per mistake a user can make: the YAML, and words the error must contain.
    #[test]
    fn mistakes_are_named() {
        let long_socket = format!("/{}", "s".repeat(107));
        let long_socket = format!(
            "ca: {{address: https://localhost:8443, trust_bundle: b, token_file: t}}\n\
             inbound: {{listen: 127.0.0.1:1, app: 127.0.0.1:2}}\n\
             workload_api: {{socket: {long_socket}}}"
        );
        let cases: &[(&str, &[&str])] = &[
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n\
                 workload_api: {socket: /run/s, mode: 0600}",
                &["unknown field", "mode"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n\
                 workload_api: {socket: /}",
                &["workload_api.socket", "names no file"],
            ),
            (&long_socket, &["workload_api.socket", "at most 107"]),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t, tokn: x}",
                &["unknown field", "tokn"],
            ),
            (
                "ca: {address: http://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}",
                &["ca.address", "scheme must be https"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}",
                &["nothing to proxy"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:15000, app: 127.0.0.1:2}",
                &["inbound.listen", "already used by admin.listen"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 outbound: [{listen: 127.0.0.1:1, upstream: nowhere, identity: spiffe://a/b}]",
                &["outbound[0].upstream", "not host:port"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 outbound: [{listen: 127.0.0.1:1, upstream: h:1, identity: 'spiffe://A/b'}]",
                &["spiffe://A/b"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 outbound: [{listen: 127.0.0.1:1, upstream: h:1, identity: []}]",
                &["outbound[0].identity", "at least one"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2, protocol: quic}",
                &["quic"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n\
                 limits: {handshake_timeout: soon}",
                &["\"soon\" is not a duration"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n\
                 limits: {max_header_bytes: 100}",
                &["limits.max_header_bytes", "minimum of 8192"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 999.0.0.1:2}",
                &["999.0.0.1"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n\
                 limits: {idle_timeout: 100000000years}",
                &["limits.idle_timeout", "longer than the most hush accepts"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n\
                 limits: {max_connections: 18446744073709551615}",
                &["limits.max_connections", "not between 1 and 1000000"],
            ),
            (
                "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
                 transparent: {listen: 127.0.0.1:1, passthrough: {cidrs: [10.0.0.0/33]}}",
                &["10.0.0.0/33"],
            ),
            ("ca: [", &["test.yaml"]),
        ];
        for (yaml, words) in cases {
            let error = parse(yaml).expect_err(yaml);
            assert!(error.starts_with("test.yaml"), "{yaml}\n=> {error}");
            for word in *words {
                assert!(
                    error.contains(word),
                    "{yaml}\n=> {error}\n(missing {word:?})"
                );
            }
        }
    }

    #[test]
    fn port_zero_never_clashes() {
        parse(
            "ca: {address: https://localhost:8443, trust_bundle: b, token_file: t}\n\
             admin: {listen: 127.0.0.1:0}\n\
             inbound: {listen: 127.0.0.1:0, app: 127.0.0.1:2}\n\
             outbound: [{listen: 127.0.0.1:0, upstream: h:1, identity: spiffe://a/b}]",
        )
        .unwrap();
    }

    #[test]
    fn reattest_is_always_when_asked_or_by_the_token() {
        let with = |value: &str| {
            parse(&format!(
                "ca: {{address: https://localhost:8443, trust_bundle: b, token_file: t, \
                 reattest: {value}}}\ninbound: {{listen: 127.0.0.1:1, app: 127.0.0.1:2}}"
            ))
        };
        assert_eq!(with("always").unwrap().ca.reattest, Some(Reattest::Always));
        assert_eq!(
            with("when_asked").unwrap().ca.reattest,
            Some(Reattest::WhenAsked)
        );
        let error = with("sometimes").unwrap_err();
        assert!(
            error.contains("ca.reattest") || error.contains("reattest"),
            "{error}"
        );
        assert!(
            error.contains("always") && error.contains("when_asked"),
            "{error}"
        );
        assert_eq!(parse(MINIMAL).unwrap().ca.reattest, None);
        // Unset, the token decides: a join token is sent only when the CA asks for it.
        assert_eq!(
            Reattest::for_token("hushjt.0123.secret"),
            Reattest::WhenAsked
        );
        assert_eq!(
            Reattest::for_token("eyJhbGciOiJSUzI1NiJ9.e30.sig"),
            Reattest::Always
        );
    }

    /// Every example configuration, the reference with every key included, reads, writes and
    /// reads back to the same value; so what the injector or a test writes is what the
    /// sidecar reads.
    #[test]
    fn every_example_reads_back_as_written() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/proxy");
        let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .collect();
        examples.sort();
        assert!(
            examples.iter().any(|p| p.ends_with("reference.yaml")),
            "{examples:?}"
        );
        for example in examples {
            let read = ProxyConfig::load(&example).unwrap();
            let written = read.to_yaml().unwrap();
            // Paths were made absolute on the first read, so another base changes nothing.
            let reread = ProxyConfig::from_yaml(&written, "written", Path::new("/elsewhere"))
                .unwrap_or_else(|e| panic!("{}: {e}\n{written}", example.display()));
            assert_eq!(read, reread, "{}\n{written}", example.display());
        }
    }

    /// The reference sets almost every key away from its default, so its written form shows
    /// every way a value is written; and a key at its default is left out.
    #[test]
    fn writing_names_only_what_differs_from_the_defaults() {
        let reference =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/proxy/reference.yaml");
        let mut config = ProxyConfig::load(&reference).unwrap();
        config.ca.certificate_ttl = Some(Duration::from_secs(24 * 3600));
        config.limits.detect_timeout = Duration::from_millis(250);
        let written = config.to_yaml().unwrap();
        for needle in [
            "  certificate_ttl: 24h\n",
            "  detect_timeout: 250ms\n",
            "  protected_headers:\n    - x-auth-user\n",
            "    identity:\n      - spiffe://cluster.local/ns/shop/sa/backend\n      - spiffe://cluster.local/ns/shop/sa/backend-canary\n",
            "      identity: spiffe://cluster.local/ns/shop/sa/backend\n",
            "    cidrs:\n      - 10.96.0.0/12\n",
            "      http_path: /healthz\n",
            // Unset is a value of its own (what fits in the memory limit): a number given is
            // written back.
            "  max_connections: 10000\n",
            "tracing:\n  otlp_endpoint: http://127.0.0.1:4317\n  service_name: hush-proxy\n",
        ] {
            assert!(written.contains(needle), "{needle:?} in\n{written}");
        }
        // The reference writes these at their defaults.
        for absent in [
            "bundle_refresh",
            "protocol",
            "captured",
            "default:",
            "optional",
            "access_log",
            "handshake_timeout",
            "shutdown_grace",
        ] {
            assert!(!written.contains(absent), "{absent:?} in\n{written}");
        }

        let minimal = parse(MINIMAL).unwrap();
        assert_eq!(
            minimal.to_yaml().unwrap(),
            "ca:\n  address: https://localhost:8443\n  trust_bundle: /etc/hush/./bundle.pem\n  \
             token_file: /etc/hush/./frontend.token\ninbound:\n  listen: 127.0.0.1:15006\n  \
             app: 127.0.0.1:8080\n"
        );
    }

    /// A configuration written with relative paths is read relative to the file that holds
    /// it, as one a person wrote would be.
    #[test]
    fn relative_paths_stay_relative_to_the_file() {
        let mut config = ProxyConfig::new(CaConfig::new(
            "https://127.0.0.1:8443",
            "bundle.pem",
            "token",
        ));
        config.policy = Some(PolicyConfig::new("../policy"));
        config.inbound = Some(InboundConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        ));
        let written = config.to_yaml().unwrap();
        assert!(written.contains("  token_file: token\n"), "{written}");
        let read = ProxyConfig::from_yaml(&written, "t", Path::new("/srv/backend")).unwrap();
        assert_eq!(read.ca.trust_bundle, Path::new("/srv/backend/bundle.pem"));
        assert_eq!(read.ca.token_file, Path::new("/srv/backend/token"));
        assert_eq!(
            read.policy.unwrap().path,
            Path::new("/srv/backend/../policy")
        );
    }

    /// Strings in a written configuration may come from a pod's author (a probe's path) or
    /// an operator: however they are spelt, they read back as themselves and cannot add keys.
    #[test]
    fn any_string_reads_back_as_itself() {
        let strings = [
            "",
            "/x: y",
            "/x #y",
            "/x\npolicy:\n  path: /etc",
            "'quoted'",
            "\"double\"",
            "- item",
            "[a, b]",
            "{a: b}",
            "*alias",
            "&anchor",
            "!tag",
            "%directive",
            "@at",
            "`tick",
            "| literal",
            "> folded",
            "?",
            "~",
            "null",
            "yes",
            "Off",
            "1e3",
            "0x10",
            "12:30",
            "---",
            "...",
            " leading and trailing ",
            "tab\there",
            "back\\slash",
            "bell\u{7}",
            "ünïcödé ✓",
            "\u{feff}bom",
            "a very long path that goes on and on, well past the eighty characters where a folding \
             writer might be tempted to wrap it",
        ];
        let mut config = parse(MINIMAL).unwrap();
        for text in strings {
            config.admin.probes = vec![AppProbe {
                path: format!("{APP_HEALTH_PREFIX}{text}"),
                port: 8080,
                http_path: Some(text.to_string()),
            }];
            config.ca.address = format!("https://ca:8443/{text}");
            config.tracing.service_name = Some(text.to_string());
            let written = config.to_yaml().unwrap();
            let read: ProxyConfig = serde_saphyr::from_str(&written)
                .unwrap_or_else(|e| panic!("{text:?}: {e}\n{written}"));
            assert_eq!(read, config, "{text:?}\n{written}");
        }
    }

    /// `examples/proxy/reference.yaml` shows every key the configuration has, and
    /// `tests/e2e/docs.rs` holds the documentation to the reference. The configuration below
    /// is written out field by field, with no default, so a field added to these types does
    /// not compile here until it has a value; written, it then fails here until the reference
    /// (and so the documentation) shows it.
    #[test]
    fn the_reference_shows_every_key() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let id = || Identities(vec!["spiffe://cluster.local/a".parse().unwrap()]);
        let second = Duration::from_secs(1);
        // Every value differs from its default, so that every key is written.
        let every_key = ProxyConfig {
            ca: CaConfig {
                address: "https://ca:8443".into(),
                trust_bundle: "bundle.pem".into(),
                token_file: "token".into(),
                certificate_ttl: Some(second),
                bundle_refresh: second,
                bundle_cache: Some("bundle-cache.pem".into()),
                reattest: Some(Reattest::WhenAsked),
            },
            inbound: Some(InboundConfig {
                listen: addr(1),
                app: addr(2),
                protocol: Protocol::Tcp,
                captured: true,
                protected_headers: vec!["x-auth-user".into()],
            }),
            outbound: vec![OutboundConfig {
                listen: addr(3),
                upstream: "backend:15006".into(),
                identity: id(),
                protocol: Protocol::Http2,
            }],
            transparent: Some(TransparentConfig {
                listen: addr(4),
                passthrough: Passthrough {
                    cidrs: vec!["10.96.0.0/12".parse().unwrap()],
                    ports: vec![53],
                },
                opaque_ports: vec![25],
                destinations: vec![DestinationRule {
                    cidr: "10.1.2.0/24".parse().unwrap(),
                    port: Some(8080),
                    identity: id(),
                }],
            }),
            policy: Some(PolicyConfig {
                path: "policy".into(),
                default: DefaultPolicy::Deny,
                optional: true,
            }),
            admin: AdminConfig {
                listen: addr(5),
                probes: vec![AppProbe {
                    path: "/app-health/app/readiness".into(),
                    port: 8080,
                    http_path: Some("/healthz".into()),
                }],
                max_connections: 1,
            },
            limits: Limits {
                handshake_timeout: second,
                detect_timeout: second,
                idle_timeout: second,
                connect_timeout: second,
                header_timeout: second,
                max_header_bytes: 1,
                max_connections: Some(1),
                max_concurrent_streams: 1,
                max_handshakes_per_address: 1,
            },
            access_log: AccessLog::All,
            tracing: TracingConfig {
                otlp_endpoint: Some("http://127.0.0.1:4317".into()),
                service_name: Some("hush-proxy".into()),
            },
            workload_api: Some(WorkloadApiConfig {
                socket: "workload.sock".into(),
            }),
            shutdown_grace: second,
        };
        let written: serde_json::Value =
            serde_saphyr::from_str(&every_key.to_yaml().unwrap()).unwrap();
        let keys = hush_test_support::key_paths(&written);

        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/proxy/reference.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = hush_test_support::key_paths(&serde_saphyr::from_str(&text).unwrap());
        // A key the reference shows commented out (it has no default to write) counts, as
        // in the documentation's test.
        let missing: Vec<_> = keys
            .difference(&shown)
            .filter(|key| {
                let last = key.rsplit('.').next().unwrap_or_default();
                !text.contains(&format!("# {last}:"))
            })
            .collect();
        let unknown: Vec<_> = shown.difference(&keys).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "keys of ProxyConfig that examples/proxy/reference.yaml does not show: {missing:?}\n\
             keys of the reference this test does not set: {unknown:?}"
        );
    }
}
