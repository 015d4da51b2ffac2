//! The admin server: liveness, readiness, metrics, certificate status and shutdown.
//!
//! | route | answer |
//! |---|---|
//! | `GET /live` | 200 while the process runs |
//! | `GET /ready` | 200 only while a valid workload certificate is held and the sidecar is not draining; 503 with the reason otherwise |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `GET /certs` | the workload certificate and the trust bundle, as JSON |
//! | `GET /policy` | the identity policy in force, and why changed files were refused, as JSON |
//! | `POST /shutdown` | drain and exit, as on SIGTERM (for Jobs, whose app exits first) |
//! | `GET /app-health/…` | the app's kubelet probes, as configured in `admin.probes` |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hush_identity::CertificateSummary;
use hush_tls::TrustStore;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::unix_seconds;
use crate::config::AppProbe;
use crate::identity::IdentityStatus;
use crate::metrics::Metrics;
use crate::policy::PolicyEnforcer;
use crate::serve::PerAddress;

/// Changes the process's log filter while it runs. The binary owns the log subscriber; the
/// admin port only asks it (`GET /logging`, `POST /logging?filter=…`).
pub trait LogControl: Send + Sync {
    /// The filter in force (`info`, `hush_proxy=debug,info`…).
    fn filter(&self) -> String;
    /// Replaces the filter; an invalid one is refused with the reason and changes nothing.
    fn set_filter(&self, filter: &str) -> Result<(), String>;
}

pub(crate) struct Admin {
    pub(crate) metrics: Metrics,
    /// Run-time log filter changes, when the binary offers them.
    pub(crate) logging: Option<Arc<dyn LogControl>>,
    pub(crate) status: watch::Receiver<IdentityStatus>,
    pub(crate) trust: TrustStore,
    pub(crate) draining: CancellationToken,
    pub(crate) shutdown_requested: CancellationToken,
    pub(crate) policy: Option<Arc<PolicyEnforcer>>,
    /// The app's rewritten kubelet probes.
    pub(crate) probes: Vec<AppProbe>,
    /// Connections served at once (an eighth of them from any one address).
    pub(crate) max_connections: usize,
    /// A connection's request head must arrive within this long.
    pub(crate) header_timeout: std::time::Duration,
}

impl Admin {
    /// Serves until `stop` is cancelled. The admin server outlives draining, so that `/ready`
    /// can say "draining" while connections finish.
    ///
    /// Connections beyond the cap are closed at once rather than left waiting: the kubelet's
    /// probes must not queue behind whoever holds the slots, and a client that holds a slot
    /// without sending a request loses it after `header_timeout`.
    pub(crate) async fn run(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let per_address = PerAddress::new((self.max_connections / 8).max(1));
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let (Ok(slot), Some(address_slot)) = (
                slots.clone().try_acquire_owned(),
                per_address.take(peer.ip()),
            ) else {
                if per_address.log.allows() {
                    warn!(
                        %peer,
                        limit = self.max_connections,
                        "refusing admin connections: too many open (admin.max_connections, an \
                         eighth of it per address; logged once every 10 s)"
                    );
                }
                continue;
            };
            let this = self.clone();
            let stop = stop.clone();
            let header_timeout = self.header_timeout;
            // One request per connection, and a bounded life: a client that sends requests
            // and never reads the answers cannot keep a slot (hyper's header timeout does not
            // run while it writes). Probes, scrapers and the CLI open a connection per call.
            let lifetime = header_timeout + crate::probe::PROBE_TIMEOUT;
            tokio::spawn(async move {
                let _slots = (slot, address_slot);
                let service = service_fn(move |request| {
                    let this = this.clone();
                    async move {
                        let probe = (request.method() == Method::GET)
                            .then(|| this.probes.iter().find(|p| p.path == request.uri().path()))
                            .flatten();
                        Ok::<_, Infallible>(match probe {
                            Some(probe) => crate::probe::check(probe).await,
                            None => this.answer(&request, peer),
                        })
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    // A connection that sends no request head in time gives its slot back.
                    .header_read_timeout(header_timeout)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::select! {
                    _ = connection => {}
                    () = tokio::time::sleep(lifetime) => debug!(%peer, "closed an admin connection that outlived its time"),
                    () = stop.cancelled() => {}
                }
            });
        }
    }

    /// `POST /logging?filter=FILTER`: the filter is in the query, so nothing is read from the
    /// body.
    fn set_logging(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(logging) = &self.logging else {
            return text(
                StatusCode::NOT_FOUND,
                "log filter changes are not offered\n".into(),
            );
        };
        let filter = request.uri().query().and_then(|query| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "filter")
                .map(|(_, value)| value.into_owned())
        });
        let Some(filter) = filter else {
            return text(
                StatusCode::BAD_REQUEST,
                "say which filter: POST /logging?filter=debug (or hush_proxy=debug,info)\n".into(),
            );
        };
        let before = logging.filter();
        match logging.set_filter(&filter) {
            Ok(()) => {
                info!(from = %before, to = %filter, "log filter changed on the admin port");
                text(
                    StatusCode::OK,
                    format!("log filter: {filter} (was {before})\n"),
                )
            }
            Err(reason) => text(
                StatusCode::BAD_REQUEST,
                format!("log filter {filter:?} refused, {before} stays: {reason}\n"),
            ),
        }
    }

    fn answer(&self, request: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let method = request.method();
        let path = request.uri().path();
        if !served_to(peer, path) {
            let mut response = text(
                StatusCode::FORBIDDEN,
                format!(
                    "{path} is only served to this pod (a loopback address); the cluster is \
                     served {}. Ask from inside the pod (kubectl exec … -- hush check)\n",
                    OPEN_TO_THE_CLUSTER.join(", ")
                ),
            );
            response
                .headers_mut()
                .insert("x-hush-error", header::HeaderValue::from_static("1"));
            return response;
        }
        match path {
            "/live" if method == Method::GET => text(StatusCode::OK, "live\n".to_string()),
            "/ready" if method == Method::GET => self.ready(),
            "/metrics" if method == Method::GET => {
                // Prometheus asks for OpenMetrics in its Accept header; anything else (curl,
                // promtool, older scrapers) gets the Prometheus text format.
                let openmetrics = request
                    .headers()
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let (body, content_type) = if openmetrics {
                    (
                        self.metrics.encode(),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                } else {
                    (
                        self.metrics.encode_prometheus_text(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                };
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                response
            }
            "/certs" if method == Method::GET => self.certs(),
            "/policy" if method == Method::GET => self.policy(),
            "/logging" if method == Method::GET => match &self.logging {
                Some(logging) => text(StatusCode::OK, format!("{}\n", logging.filter())),
                None => text(
                    StatusCode::NOT_FOUND,
                    "log filter changes are not offered\n".into(),
                ),
            },
            "/logging" if method == Method::POST && !from_this_pod(peer) => text(
                StatusCode::FORBIDDEN,
                "the log filter is only changed from this pod (a loopback address)\n".to_string(),
            ),
            "/logging" if method == Method::POST => self.set_logging(request),
            "/shutdown" if method == Method::POST && !from_this_pod(peer) => text(
                StatusCode::FORBIDDEN,
                "shutdown is only taken from this pod (a loopback address)\n".to_string(),
            ),
            "/shutdown" if method == Method::POST => {
                info!("shutdown requested on the admin port");
                self.shutdown_requested.cancel();
                text(
                    StatusCode::OK,
                    "shutting down: draining connections\n".to_string(),
                )
            }
            "/live" | "/ready" | "/metrics" | "/certs" | "/policy" | "/shutdown" | "/logging" => {
                let mut response = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} is not allowed here\n"),
                );
                let allow = match request.uri().path() {
                    "/shutdown" => "POST",
                    "/logging" => "GET, POST",
                    _ => "GET",
                };
                response
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
                response
            }
            other => text(
                StatusCode::NOT_FOUND,
                format!(
                    "no such page: {other}; try /live, /ready, /metrics, /certs, /policy, \
                     /logging, POST /shutdown\n"
                ),
            ),
        }
    }

    fn ready(&self) -> Response<Full<Bytes>> {
        if self.draining.is_cancelled() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: draining for shutdown\n".to_string(),
            );
        }
        let status = self.status.borrow().clone();
        let now = SystemTime::now();
        match (status.not_ready_reason(now), &status.svid) {
            (None, Some(svid)) => {
                let left = svid.not_after.duration_since(now).unwrap_or_default();
                text(
                    StatusCode::OK,
                    format!(
                        "ready: {} (certificate expires in {})\n",
                        svid.spiffe_id,
                        humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
                    ),
                )
            }
            (reason, _) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: {}\n",
                    reason.unwrap_or_else(|| "no certificate".to_string())
                ),
            ),
        }
    }

    fn policy(&self) -> Response<Full<Bytes>> {
        let Some(policy) = &self.policy else {
            return text(
                StatusCode::NOT_FOUND,
                "no policy is configured: any authenticated mesh identity may call the app \
                 (set `policy: {path: …}` in the sidecar configuration)\n"
                    .to_string(),
            );
        };
        let own = self
            .status
            .borrow()
            .svid
            .as_ref()
            .map(|svid| svid.spiffe_id.to_string());
        let report = policy.status(own.as_deref());
        json(&report)
    }

    fn certs(&self) -> Response<Full<Bytes>> {
        let status = self.status.borrow().clone();
        let now = SystemTime::now();
        let bundle = self.trust.bundle();
        let report = CertsReport {
            ready: status.is_valid_at(now) && !self.draining.is_cancelled(),
            spiffe_id: status.svid.as_ref().map(|s| s.spiffe_id.to_string()),
            certificate: status.svid.as_ref().map(|svid| CertificateReport {
                serial: svid.serial.clone(),
                not_before: unix_seconds(svid.not_before),
                not_after: unix_seconds(svid.not_after),
                seconds_left: unix_seconds(svid.not_after) - unix_seconds(now),
                renew_at: unix_seconds(svid.renew_at),
                chain: svid
                    .chain
                    .iter()
                    .filter_map(|der| CertificateSummary::from_der(der).ok())
                    .collect(),
            }),
            last_error: status.last_error.clone(),
            trust_bundle: BundleReport {
                trust_domain: bundle.trust_domain().to_string(),
                roots: bundle
                    .roots()
                    .iter()
                    .filter_map(|der| CertificateSummary::from_der(der).ok())
                    .collect(),
            },
        };
        json(&report)
    }
}

#[derive(Serialize)]
struct CertsReport {
    ready: bool,
    spiffe_id: Option<String>,
    certificate: Option<CertificateReport>,
    last_error: Option<String>,
    trust_bundle: BundleReport,
}

#[derive(Serialize)]
struct CertificateReport {
    serial: String,
    not_before: i64,
    not_after: i64,
    seconds_left: i64,
    renew_at: i64,
    chain: Vec<CertificateSummary>,
}

#[derive(Serialize)]
struct BundleReport {
    trust_domain: String,
    roots: Vec<CertificateSummary>,
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The routes the admin port serves to other hosts: what the kubelet (liveness, readiness,
/// the app's rewritten probes, whose paths are checked against the configuration) and
/// Prometheus need. Everything else (certificates, the policy, the log filter, shutdown) is
/// served to the pod itself only.
const OPEN_TO_THE_CLUSTER: [&str; 3] = ["/live", "/ready", "/metrics"];

/// Whether `peer` may have `path` (the app's probes are answered before this is asked).
fn served_to(peer: SocketAddr, path: &str) -> bool {
    from_this_pod(peer) || OPEN_TO_THE_CLUSTER.contains(&path)
}

/// In a pod the admin port listens on the pod's address, for the kubelet's probes, and is not
/// captured; only the pod itself (a Job's app, on loopback) may stop the sidecar, change its
/// log filter, or read its certificates and policy.
fn from_this_pod(peer: SocketAddr) -> bool {
    peer.ip().is_loopback()
        || matches!(peer.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// A report as pretty JSON.
fn json(report: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the report: {e}\"}}"));
    let mut response = text(StatusCode::OK, body + "\n");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per route: what another host (the kubelet, Prometheus, any pod) gets.
    #[test]
    fn the_cluster_gets_health_and_metrics_only() {
        let pod: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let node: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        for (path, open) in [
            ("/live", true),
            ("/ready", true),
            ("/metrics", true),
            ("/certs", false),
            ("/policy", false),
            ("/logging", false),
            ("/shutdown", false),
            ("/metrics/", false),
            ("/nothing", false),
        ] {
            assert_eq!(served_to(node, path), open, "{path}");
            assert!(served_to(pod, path), "{path}");
        }
    }

    #[test]
    fn only_loopback_may_shut_the_sidecar_down() {
        for peer in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert!(from_this_pod(peer.parse().unwrap()), "{peer}");
        }
        for peer in ["10.1.2.3:5000", "[fd00::1]:5000", "[::ffff:10.1.2.3]:5000"] {
            assert!(!from_this_pod(peer.parse().unwrap()), "{peer}");
        }
    }
}
