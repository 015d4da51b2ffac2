//! The sidecar's Prometheus metrics, served on the admin port at `/metrics`.
//!
//! Every metric is prefixed `hush_`. Labels are small closed sets (direction, protocol, the
//! failed handshake step and its reason), so the series count stays bounded whatever the
//! traffic.

use std::sync::Arc;
use std::time::Duration;

use hush_policy::{Decision, Reason, Verdict};
use hush_tls::HandshakeFailure;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which way a connection goes, as seen from the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// From another sidecar to the local app.
    Inbound,
    /// From the local app to another sidecar (or, passed through, outside the mesh).
    Outbound,
    /// From a public client, through the gateway, to a sidecar of the mesh.
    Gateway,
}

/// The protocol a connection was served as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ProtocolLabel {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 (gRPC included).
    Http2,
    /// Opaque TCP.
    Tcp,
    /// Passed through without TLS (a destination outside the mesh).
    Passthrough,
}

impl Direction {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Gateway => "gateway",
        }
    }
}

impl ProtocolLabel {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tcp => "tcp",
            Self::Passthrough => "passthrough",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GatewayCertificateLabels {
    certificate: String,
    source: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GatewayUpdateLabels {
    certificate: String,
    source: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    direction: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    protocol: &'static str,
    code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    direction: &'static str,
    step: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    direction: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BytesLabels {
    direction: &'static str,
    flow: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ForcedRenewalLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    /// `ALLOW` or `DENY` (the kind of policy that decided) or `default`.
    action: &'static str,
    /// The deciding policy; empty when none did (the default, or no ALLOW rule matched).
    policy: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyResultLabels {
    policy: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabels {
    policy: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectFailureLabels {
    direction: &'static str,
    target: &'static str,
}

/// The sidecar's metrics; cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Upper bounds of the request-duration buckets, in seconds: from half a millisecond (a
/// request through two sidecars on one machine) to ten seconds.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the handshake-duration buckets, in seconds.
const HANDSHAKE_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// One series per direction, taken from its family at start (so both exist from the first
/// scrape, at zero). The gateway's is made on its first use: only a gateway has one, and
/// every sidecar of a mesh scraped with a series it never fills would be so many series more.
struct ByDirection<T> {
    inbound: T,
    outbound: T,
    gateway: std::sync::OnceLock<T>,
    make_gateway: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T> std::fmt::Debug for ByDirection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByDirection").finish_non_exhaustive()
    }
}

impl<T: Clone + Send + Sync + 'static> ByDirection<T> {
    fn of<C: Fn() -> T + Send + Sync + Clone + 'static>(
        family: &Family<DirectionLabels, T, C>,
    ) -> Self {
        let get = |family: &Family<DirectionLabels, T, C>, direction: Direction| {
            family
                .get_or_create(&DirectionLabels {
                    direction: direction.as_str(),
                })
                .clone()
        };
        let gateway_family = family.clone();
        Self {
            inbound: get(family, Direction::Inbound),
            outbound: get(family, Direction::Outbound),
            gateway: std::sync::OnceLock::new(),
            make_gateway: Box::new(move || get(&gateway_family, Direction::Gateway)),
        }
    }

    fn get(&self, direction: Direction) -> &T {
        match direction {
            Direction::Inbound => &self.inbound,
            Direction::Outbound => &self.outbound,
            Direction::Gateway => self.gateway.get_or_init(|| (self.make_gateway)()),
        }
    }
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    connections_open: Family<DirectionLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    /// Resolved once: observing a request looks nothing up.
    request_duration: ByDirection<Histogram>,
    handshakes: Family<DirectionLabels, Counter>,
    handshake_duration: ByDirection<Histogram>,
    handshake_failures: Family<FailureLabels, Counter>,
    connect_failures: Family<ConnectFailureLabels, Counter>,
    connections_refused: Family<RefusalLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    detect_timeouts: Family<DirectionLabels, Counter>,
    certificate_expiry: Gauge,
    certificate_expires_in: Gauge,
    renewals: Family<OutcomeLabels, Counter>,
    forced_renewals: Family<ForcedRenewalLabels, Counter>,
    bundle_updates: Counter,
    policy_decisions: Family<DecisionLabels, Counter>,
    policy_dry_run: Family<PolicyResultLabels, Counter>,
    policy_audits: Family<PolicyLabels, Counter>,
    policy_reloads: Family<OutcomeLabels, Counter>,
    policies_loaded: Gauge,
    gateway_certificate_expiry: Family<GatewayCertificateLabels, Gauge>,
    gateway_certificate_updates: Family<GatewayUpdateLabels, Counter>,
    /// The `policy` label of decisions no policy made, made once.
    no_policy: Arc<str>,
}

/// Byte counters of one direction, resolved once per connection.
#[derive(Clone, Debug)]
pub(crate) struct ByteCounters {
    pub(crate) received: Counter,
    pub(crate) sent: Counter,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hush");
        let connections = Family::default();
        registry.register(
            "connections",
            "Connections accepted, by direction and the protocol they were served as",
            connections.clone(),
        );
        let connections_open = Family::default();
        registry.register(
            "connections_open",
            "Connections open now",
            connections_open.clone(),
        );
        let requests = Family::default();
        registry.register(
            "requests",
            "HTTP requests proxied, by direction, protocol and response status code",
            requests.clone(),
        );
        let request_duration: Histograms<DirectionLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register_with_unit(
            "request_duration",
            "Time from an HTTP request's arrival to its response's head, by direction",
            prometheus_client::registry::Unit::Seconds,
            request_duration.clone(),
        );
        let handshakes = Family::default();
        registry.register(
            "handshakes",
            "Mutual TLS handshakes completed",
            handshakes.clone(),
        );
        let handshake_duration: Histograms<DirectionLabels> =
            Family::new_with_constructor(|| Histogram::new(HANDSHAKE_BUCKETS));
        registry.register_with_unit(
            "handshake_duration",
            "Time the completed mutual TLS handshakes took, by direction",
            prometheus_client::registry::Unit::Seconds,
            handshake_duration.clone(),
        );
        let handshake_failures = Family::default();
        registry.register(
            "handshake_failures",
            "TLS handshakes refused or failed, by the step that failed and why",
            handshake_failures.clone(),
        );
        let connect_failures = Family::default();
        registry.register(
            "connect_failures",
            "Connections the sidecar could not open, to the local app or to an upstream",
            connect_failures.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "Connections accepted and then refused before any byte reached the app or an \
             upstream, by direction and reason (own_port, not_local, http_on_opaque, \
             forged_header, slow_first_line, silent, handshakes_per_address, loop, \
             not_redirected)",
            connections_refused.clone(),
        );
        let bytes = Family::default();
        registry.register(
            "bytes",
            "Bytes received from and sent to the client side of proxied connections",
            bytes.clone(),
        );
        let detect_timeouts = Family::default();
        registry.register(
            "protocol_detect_timeouts",
            "Connections whose client sent nothing within the detection timeout, served as TCP",
            detect_timeouts.clone(),
        );
        let gateway_certificate_expiry = Family::default();
        registry.register(
            "gateway_certificate_expiry_timestamp_seconds",
            "Gateway only: NotAfter of each public certificate served, in Unix seconds, by certificate (its first host) and source (files or acme)",
            gateway_certificate_expiry.clone(),
        );
        let gateway_certificate_updates = Family::default();
        registry.register(
            "gateway_certificate_updates",
            "Gateway only: public certificates loaded from files or obtained by ACME, by certificate, source and result (ok, failed)",
            gateway_certificate_updates.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "NotAfter of the workload certificate in use, in Unix seconds (0 before the first)",
            certificate_expiry.clone(),
        );
        let certificate_expires_in = Gauge::default();
        registry.register(
            "certificate_expires_in_seconds",
            "Seconds until the workload certificate in use expires, as of this scrape (negative once expired, 0 before the first)",
            certificate_expires_in.clone(),
        );
        let renewals = Family::default();
        registry.register(
            "certificate_renewals",
            "Attempts to obtain or renew the workload certificate, by result",
            renewals.clone(),
        );
        let forced_renewals = Family::default();
        registry.register(
            "certificate_forced_renewals",
            "Renewals of the workload certificate brought forward from half its life, by reason \
             (tainted: the CA tainted an authority of its chain; revoked: the CA's deny-list \
             names it)",
            forced_renewals.clone(),
        );
        let bundle_updates = Counter::default();
        registry.register(
            "trust_bundle_updates",
            "Times the trust bundle in force changed",
            bundle_updates.clone(),
        );
        let policy_decisions = Family::default();
        registry.register(
            "policy_decisions",
            "Inbound connections and requests decided by identity policy, by the kind of policy \
             that decided (ALLOW, DENY or default), the policy, and the result",
            policy_decisions.clone(),
        );
        let policy_dry_run = Family::default();
        registry.register(
            "policy_dry_run",
            "Decisions a dry-run policy would have changed (would_deny, would_allow), by policy",
            policy_dry_run.clone(),
        );
        let policy_audits = Family::default();
        registry.register(
            "policy_audits",
            "Requests an AUDIT policy marked for the audit log, by policy",
            policy_audits.clone(),
        );
        let policy_reloads = Family::default();
        registry.register(
            "policy_reloads",
            "Policy loads after start-up, by result (an error keeps the last good policy)",
            policy_reloads.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "policies",
            "Policies in force (all of the loaded set, before selectors)",
            policies_loaded.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                connections,
                connections_open,
                requests,
                request_duration: ByDirection::of(&request_duration),
                handshakes,
                handshake_duration: ByDirection::of(&handshake_duration),
                handshake_failures,
                connect_failures,
                connections_refused,
                bytes,
                detect_timeouts,
                certificate_expiry,
                certificate_expires_in,
                renewals,
                forced_renewals,
                bundle_updates,
                policy_decisions,
                policy_dry_run,
                policy_audits,
                policy_reloads,
                policies_loaded,
                gateway_certificate_expiry,
                gateway_certificate_updates,
                no_policy: Arc::from(""),
            }),
        }
    }

    /// The metrics in the Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> String {
        // Time left is a matter of when one asks.
        let not_after = self.inner.certificate_expiry.get();
        if not_after > 0 {
            let now = crate::clock::unix_seconds(std::time::SystemTime::now());
            self.inner.certificate_expires_in.set(not_after - now);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The same metrics in the Prometheus text format (0.0.4), for scrapers and tools that do
    /// not ask for OpenMetrics (`promtool check metrics`, `curl`).
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }

    /// The gateway serves `certificate` (from `source`: `files` or `acme`) until
    /// `not_after_unix`.
    pub fn gateway_certificate(
        &self,
        certificate: &str,
        source: &'static str,
        not_after_unix: i64,
    ) {
        // One series per certificate: a certificate that moved from files to ACME (a
        // restart with another configuration) is not served twice.
        for other in ["files", "acme"] {
            if other != source {
                self.inner
                    .gateway_certificate_expiry
                    .remove(&GatewayCertificateLabels {
                        certificate: certificate.to_string(),
                        source: other,
                    });
            }
        }
        self.inner
            .gateway_certificate_expiry
            .get_or_create(&GatewayCertificateLabels {
                certificate: certificate.to_string(),
                source,
            })
            .set(not_after_unix);
    }

    /// A public certificate was loaded (or obtained), or failed to be.
    pub fn gateway_certificate_update(&self, certificate: &str, source: &'static str, ok: bool) {
        self.inner
            .gateway_certificate_updates
            .get_or_create(&GatewayUpdateLabels {
                certificate: certificate.to_string(),
                source,
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub(crate) fn connection(&self, direction: Direction, protocol: ProtocolLabel) {
        self.inner
            .connections
            .get_or_create(&ConnectionLabels {
                direction: direction.as_str(),
                protocol: protocol.as_str(),
            })
            .inc();
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub(crate) fn open_connection(&self, direction: Direction) -> OpenConnection {
        let gauge = self
            .inner
            .connections_open
            .get_or_create_owned(&DirectionLabels {
                direction: direction.as_str(),
            });
        gauge.inc();
        OpenConnection { gauge }
    }

    pub(crate) fn request(&self, direction: Direction, protocol: ProtocolLabel, code: u16) {
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                direction: direction.as_str(),
                protocol: protocol.as_str(),
                code,
            })
            .inc();
    }

    pub(crate) fn handshake(&self, direction: Direction, took: Duration) {
        let labels = DirectionLabels {
            direction: direction.as_str(),
        };
        self.inner.handshakes.get_or_create(&labels).inc();
        self.inner
            .handshake_duration
            .get(direction)
            .observe(took.as_secs_f64());
    }

    /// An HTTP request got its response head (from the far side, or the sidecar's own) after
    /// `took`.
    pub(crate) fn request_duration(&self, direction: Direction, took: Duration) {
        self.inner
            .request_duration
            .get(direction)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn handshake_failure(&self, direction: Direction, failure: &HandshakeFailure) {
        self.inner
            .handshake_failures
            .get_or_create(&FailureLabels {
                direction: direction.as_str(),
                step: failure.step.as_str(),
                reason: failure.reason.as_str(),
            })
            .inc();
    }

    /// A refusal before TLS began (plaintext HTTP on the TLS port, say), counted with the
    /// handshake failures at the hello step.
    pub(crate) fn hello_refused(&self, direction: Direction, reason: &'static str) {
        self.inner
            .handshake_failures
            .get_or_create(&FailureLabels {
                direction: direction.as_str(),
                step: hush_tls::HandshakeStep::Hello.as_str(),
                reason,
            })
            .inc();
    }

    pub(crate) fn connect_failure(&self, direction: Direction, target: &'static str) {
        self.inner
            .connect_failures
            .get_or_create(&ConnectFailureLabels {
                direction: direction.as_str(),
                target,
            })
            .inc();
    }

    /// A connection refused after it was accepted, for a reason that is not a handshake's.
    pub(crate) fn connection_refused(&self, direction: Direction, reason: &'static str) {
        self.inner
            .connections_refused
            .get_or_create(&RefusalLabels {
                direction: direction.as_str(),
                reason,
            })
            .inc();
    }

    pub(crate) fn bytes(&self, direction: Direction) -> ByteCounters {
        let get = |flow| {
            self.inner.bytes.get_or_create_owned(&BytesLabels {
                direction: direction.as_str(),
                flow,
            })
        };
        ByteCounters {
            received: get("received"),
            sent: get("sent"),
        }
    }

    pub(crate) fn detect_timeout(&self, direction: Direction) {
        self.inner
            .detect_timeouts
            .get_or_create(&DirectionLabels {
                direction: direction.as_str(),
            })
            .inc();
    }

    pub(crate) fn certificate_expiry(&self, unix_seconds: i64) {
        self.inner.certificate_expiry.set(unix_seconds);
    }

    pub(crate) fn renewal(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .renewals
            .get_or_create(&OutcomeLabels { result })
            .inc();
    }

    /// Counts a renewal brought forward, for `reason` (`tainted`, `revoked`).
    pub(crate) fn forced_renewal(&self, reason: &'static str) {
        self.inner
            .forced_renewals
            .get_or_create(&ForcedRenewalLabels { reason })
            .inc();
    }

    pub(crate) fn bundle_updated(&self) {
        self.inner.bundle_updates.inc();
    }

    /// Counts a caller of another trust domain refused because no policy is configured at all
    /// (with one, [`Self::policy_decision`] counts it as `foreign_not_named`).
    pub(crate) fn foreign_refused(&self) {
        self.inner
            .policy_decisions
            .get_or_create(&DecisionLabels {
                action: "foreign_not_named",
                policy: self.inner.no_policy.clone(),
                result: Verdict::Deny.as_str(),
            })
            .inc();
    }

    /// Counts a policy decision, what dry-run policies would have changed, and audit marks.
    pub(crate) fn policy_decision(&self, decision: &Decision<'_>) {
        let (action, policy) = match decision.reason {
            Reason::Rule(rule) => (rule.policy.action.as_str(), rule.policy.name.clone()),
            Reason::NoAllowRuleMatched { .. } => ("ALLOW", self.inner.no_policy.clone()),
            Reason::Default(_) => ("default", self.inner.no_policy.clone()),
            // No rule decided: the path could not be judged.
            Reason::AmbiguousPath(_) => ("ambiguous_path", self.inner.no_policy.clone()),
            // A federated caller no ALLOW rule names.
            Reason::ForeignNotNamed => ("foreign_not_named", self.inner.no_policy.clone()),
        };
        self.inner
            .policy_decisions
            .get_or_create(&DecisionLabels {
                action,
                policy,
                result: decision.verdict.as_str(),
            })
            .inc();
        if let Some(dry) = &decision.dry_run {
            let result = match dry.verdict {
                Verdict::Allow => "would_allow",
                Verdict::Deny => "would_deny",
            };
            self.inner
                .policy_dry_run
                .get_or_create(&PolicyResultLabels {
                    policy: dry.policy.name.clone(),
                    result,
                })
                .inc();
        }
        if let Some(audit) = &decision.audit {
            self.inner
                .policy_audits
                .get_or_create(&PolicyLabels {
                    policy: audit.policy.name.clone(),
                })
                .inc();
        }
    }

    pub(crate) fn policy_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .policy_reloads
            .get_or_create(&OutcomeLabels { result })
            .inc();
    }

    pub(crate) fn policies_loaded(&self, count: usize) {
        self.inner
            .policies_loaded
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Keeps a connection counted in `hush_connections_open` while alive.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4. The two differ, for what hush exports,
/// only in naming a counter family (`# TYPE x counter` over samples `x_total`, where Prometheus
/// text names the family `x_total`), in `# UNIT` lines, and in the closing `# EOF`.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of an unlabelled series in an exposition.
    fn metric_value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    #[test]
    fn a_sidecar_exports_no_gateway_series_until_it_is_one() {
        let metrics = Metrics::new();
        assert!(!metrics.encode().contains("direction=\"gateway\""));
        metrics.handshake(Direction::Gateway, Duration::from_millis(1));
        metrics.request_duration(Direction::Gateway, Duration::from_millis(1));
        let text = metrics.encode();
        assert!(
            text.contains("hush_handshake_duration_seconds_count{direction=\"gateway\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hush_request_duration_seconds_count{direction=\"gateway\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn prometheus_text_names_counter_families_by_their_samples() {
        let openmetrics = "# HELP hush_x Things.\n# TYPE hush_x counter\nhush_x_total{a=\"b\"} 1\n\
                           # HELP hush_open Open.\n# TYPE hush_open gauge\n# UNIT hush_open seconds\nhush_open 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(openmetrics),
            "# HELP hush_x_total Things.\n# TYPE hush_x_total counter\nhush_x_total{a=\"b\"} 1\n\
             # HELP hush_open Open.\n# TYPE hush_open gauge\nhush_open 2\n"
        );
    }

    #[test]
    fn exposition_names_every_family() {
        let metrics = Metrics::new();
        metrics.connection(Direction::Inbound, ProtocolLabel::Http1);
        metrics.request(Direction::Inbound, ProtocolLabel::Http1, 200);
        metrics.request_duration(Direction::Inbound, Duration::from_micros(700));
        metrics.handshake(Direction::Outbound, Duration::from_millis(3));
        metrics.handshake_failure(
            Direction::Inbound,
            &HandshakeFailure::from_tls(&hush_tls::rustls::Error::NoCertificatesPresented),
        );
        let open = metrics.open_connection(Direction::Outbound);
        let in_an_hour = crate::clock::unix_seconds(std::time::SystemTime::now()) + 3600;
        metrics.certificate_expiry(in_an_hour);
        metrics.renewal(true);
        let text = metrics.encode();
        let left = metric_value(&text, "hush_certificate_expires_in_seconds");
        assert!((3590.0..=3600.0).contains(&left), "{left} in\n{text}");
        for needle in [
            "hush_connections_total{direction=\"inbound\",protocol=\"http1\"} 1",
            "hush_requests_total{direction=\"inbound\",protocol=\"http1\",code=\"200\"} 1",
            "hush_handshake_failures_total{direction=\"inbound\",step=\"certificate chain\",reason=\"no_certificate\"} 1",
            "hush_connections_open{direction=\"outbound\"} 1",
            format!("hush_certificate_expiry_timestamp_seconds {in_an_hour}").as_str(),
            "hush_certificate_renewals_total{result=\"ok\"} 1",
            "# TYPE hush_request_duration_seconds histogram",
            "hush_request_duration_seconds_bucket{le=\"0.0005\",direction=\"inbound\"} 0",
            "hush_request_duration_seconds_bucket{le=\"0.001\",direction=\"inbound\"} 1",
            "hush_request_duration_seconds_count{direction=\"inbound\"} 1",
            "hush_handshake_duration_seconds_bucket{le=\"0.005\",direction=\"outbound\"} 1",
            "hush_handshakes_total{direction=\"outbound\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        drop(open);
        assert!(
            metrics
                .encode()
                .contains("hush_connections_open{direction=\"outbound\"} 0")
        );
    }
}
