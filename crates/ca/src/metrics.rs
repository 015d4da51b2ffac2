//! The CA's Prometheus metrics, and the small HTTP server that serves them at `/metrics`
//! (`hush ca serve --metrics-listen`).
//!
//! Every metric is prefixed `hush_ca_`. Labels are closed sets (the two APIs, gRPC code names,
//! `loaded`/`refused`) or bounded by the CA's own authorities, so the series count stays small
//! whatever callers send. The authorities' expiry is exported twice, as the sidecar's
//! certificate is (decision 30): as a timestamp, which alerts compare with `time()`, and as
//! seconds left, computed when scraped, which dashboards want.
//!
//! The server is plain HTTP/1 on its own listener, like the sidecar's admin port, but serves
//! nothing else: no state of the CA beyond these numbers is reachable through it. It faces
//! the cluster (Prometheus scrapes it), so what a client can hold is bounded: a few
//! connections at once, one request each, a short life.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::authorities::{AuthorityEntry, Manifest};
use crate::service::{HUSH_API, ISTIO_API};

/// The CA's metrics; cloning shares them.
#[derive(Clone, Debug)]
pub struct CaMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    authorities: Arc<AuthorityExpiry>,
    generation: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    issued: Family<ApiLabels, Counter>,
    jwt_issued: Counter,
    refused: Family<RefusalLabels, Counter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    api: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthorityLabels {
    authority: String,
    kind: &'static str,
    state: &'static str,
}

/// One authority's series: its labels and NotAfter.
#[derive(Debug)]
struct AuthoritySeries {
    labels: AuthorityLabels,
    not_after: i64,
}

/// The expiry gauges of the authorities in force, written at each scrape from the last set
/// put in force: "seconds left" is a matter of when one asks, and an authority revoked or
/// replaced since leaves no stale series behind.
#[derive(Debug, Default)]
struct AuthorityExpiry {
    series: ArcSwap<Vec<AuthoritySeries>>,
}

const RELOAD_LOADED: &str = "loaded";
const RELOAD_REFUSED: &str = "refused";

// === impl CaMetrics ===

impl CaMetrics {
    /// A fresh set of metrics, all at zero, with no authorities yet.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("hush_ca");
        let authorities = Arc::new(AuthorityExpiry::default());
        registry.register_collector(Box::new(authorities.clone()));
        let generation = Gauge::default();
        registry.register(
            "authorities_generation",
            "Generation of the authorities manifest in force (0 for a directory without one)",
            generation.clone(),
        );
        let reloads: Family<ReloadLabels, Counter> = Family::default();
        registry.register(
            "reloads",
            "Reads of the CA directory that found it changed, by result: loaded (put in force) \
             or refused (the set in force keeps signing); a change that stays refused counts \
             at every poll",
            reloads.clone(),
        );
        let issued: Family<ApiLabels, Counter> = Family::default();
        registry.register(
            "certificates_issued",
            "Certificates issued (and audited), by API",
            issued.clone(),
        );
        let jwt_issued = Counter::default();
        registry.register(
            "jwt_svids_issued",
            "JWT-SVIDs issued (and audited) through MintJwtSvid",
            jwt_issued.clone(),
        );
        let refused = Family::default();
        registry.register(
            "requests_refused",
            "Certificate and JWT-SVID requests refused (and audited), by API (JWT-SVIDs: \
             hush.ca.v1.MintJwtSvid) and gRPC code",
            refused.clone(),
        );
        // Present from the first scrape, so that `increase()` sees the first change.
        for result in [RELOAD_LOADED, RELOAD_REFUSED] {
            drop(reloads.get_or_create(&ReloadLabels { result }));
        }
        for api in [HUSH_API, ISTIO_API] {
            drop(issued.get_or_create(&ApiLabels { api }));
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                authorities,
                generation,
                reloads,
                issued,
                jwt_issued,
                refused,
            }),
        }
    }

    /// Takes the authorities of `manifest` as the ones in force: every one but the revoked.
    pub(crate) fn authorities_in_force(&self, manifest: &Manifest) {
        let series = manifest
            .authorities
            .iter()
            .filter(|a| a.is_trusted())
            .map(AuthoritySeries::of)
            .collect();
        self.inner.authorities.series.store(Arc::new(series));
        self.inner
            .generation
            .set(i64::try_from(manifest.generation).unwrap_or(i64::MAX));
    }

    /// A read of the directory found it changed, and put it in force or not.
    pub(crate) fn reload(&self, loaded: bool) {
        let result = if loaded {
            RELOAD_LOADED
        } else {
            RELOAD_REFUSED
        };
        self.inner
            .reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// A certificate left through `api`.
    pub(crate) fn issued(&self, api: &'static str) {
        self.inner.issued.get_or_create(&ApiLabels { api }).inc();
    }

    /// A JWT-SVID left through `MintJwtSvid`.
    pub(crate) fn jwt_issued(&self) {
        self.inner.jwt_issued.inc();
    }

    /// A request through `api` was refused with `code`.
    pub(crate) fn refused(&self, api: &'static str, code: tonic::Code) {
        self.inner
            .refused
            .get_or_create(&RefusalLabels {
                api,
                code: code_name(code),
            })
            .inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
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
}

// === impl AuthorityExpiry ===

impl AuthoritySeries {
    fn of(entry: &AuthorityEntry) -> Self {
        Self {
            labels: AuthorityLabels {
                authority: entry.id.to_string(),
                kind: entry.kind.as_str(),
                state: entry.state.as_str(),
            },
            not_after: entry.not_after,
        }
    }
}

impl Collector for AuthorityExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let series = self.series.load();
        if series.is_empty() {
            return Ok(());
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        gauges(
            &mut encoder,
            "authority_expiry_timestamp_seconds",
            "NotAfter of each authority the CA trusts or signs with (every state but revoked), \
             in Unix seconds.",
            &series,
            |s| s.not_after,
        )?;
        gauges(
            &mut encoder,
            "authority_expires_in_seconds",
            "Seconds until each authority the CA trusts or signs with expires, as of this \
             scrape (negative once expired).",
            &series,
            |s| s.not_after.saturating_sub(now),
        )
    }
}

/// One gauge family with a sample per authority.
fn gauges(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[AuthoritySeries],
    value: impl Fn(&AuthoritySeries) -> i64,
) -> Result<(), fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for s in series {
        ConstGauge::new(value(s)).encode(family.encode_family(&s.labels)?)?;
    }
    Ok(())
}

/// A gRPC code as the audit log spells it (`Unauthenticated`), from a closed set.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4. For what the CA exports they differ
/// only in naming a counter family (`# TYPE x counter` over samples `x_total`, where the
/// Prometheus format names the family `x_total`), in `# UNIT` lines, and in the closing
/// `# EOF`.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let counter_header = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, tail) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(counter_header.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

// === The metrics server ===

/// Connections served at once; more are closed at once. Prometheus holds one per scrape.
const MAX_CONNECTIONS: usize = 16;
/// A connection must send its request head within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it was accepted, answered or not: hyper's header
/// timeout does not run while it writes, so a client that never reads must not keep its slot.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);

/// Serves `metrics` at `GET /metrics` on `listener` until dropped: Prometheus text, or
/// OpenMetrics when the scraper asks for it in `Accept` (Prometheus does).
pub async fn serve_metrics(listener: TcpListener, metrics: CaMetrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, limit = MAX_CONNECTIONS, "closed a metrics connection: too many open");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            if tokio::time::timeout(CONNECTION_LIFETIME, connection)
                .await
                .is_err()
            {
                debug!(%peer, "closed a metrics connection that outlived its time");
            }
        });
    }
}

fn answer<B>(metrics: &CaMetrics, request: &Request<B>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            // Prometheus asks for OpenMetrics in its Accept header; anything else (curl,
            // promtool, older scrapers) gets the Prometheus text format.
            let openmetrics = request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if openmetrics {
                text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                )
            } else {
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.encode_prometheus_text(),
                )
            }
        }
        (method, "/metrics") => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                format!("{method} is not allowed here; GET /metrics\n"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
            response
        }
        (_, path) => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("no such page: {path}; the CA serves only /metrics here\n"),
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorities::{AuthorityId, Kind, State};

    const DAY: i64 = 86_400;

    fn entry(name: &str, kind: Kind, state: State, not_after: i64) -> AuthorityEntry {
        AuthorityEntry {
            id: AuthorityId::of_public_key(name.as_bytes()),
            kind,
            state,
            cert: format!("{kind}-{name}.pem"),
            key: None,
            key_uri: None,
            issuer: None,
            not_before: 0,
            not_after,
            prepared_at: None,
            activated_at: None,
            retired_at: None,
            tainted_at: None,
            revoked_at: None,
        }
    }

    fn id(name: &str) -> String {
        AuthorityId::of_public_key(name.as_bytes()).to_string()
    }

    /// The value of the one sample of `name` whose line contains every one of `labels`.
    fn sample(text: &str, name: &str, labels: &[&str]) -> Option<i64> {
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .find(|line| labels.iter().all(|l| line.contains(l)))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn a_set_of_authorities_renders_every_family() {
        let now = now();
        let manifest = Manifest {
            version: crate::authorities::MANIFEST_VERSION,
            trust_domain: "cluster.local".into(),
            generation: 7,
            publish_wait_seconds: 900,
            max_ttl_seconds: DAY as u64,
            authorities: vec![
                entry("root", Kind::Root, State::Active, now + 3650 * DAY),
                entry("inter", Kind::Intermediate, State::Active, now + 21 * DAY),
                entry("old", Kind::Intermediate, State::Old, now + 5 * DAY),
                entry("gone", Kind::Root, State::Revoked, now + 100 * DAY),
            ],
        };
        let metrics = CaMetrics::new();
        metrics.authorities_in_force(&manifest);
        metrics.issued(HUSH_API);
        metrics.refused(ISTIO_API, tonic::Code::Unauthenticated);
        metrics.refused(ISTIO_API, tonic::Code::Unauthenticated);
        metrics.reload(false);
        let text = metrics.encode_prometheus_text();

        let expiry = "hush_ca_authority_expiry_timestamp_seconds";
        let left = "hush_ca_authority_expires_in_seconds";
        for (name, kind, state, days) in [
            ("root", "root", "active", 3650),
            ("inter", "intermediate", "active", 21),
            ("old", "intermediate", "old", 5),
        ] {
            let labels = [
                format!("authority=\"{}\"", id(name)),
                format!("kind=\"{kind}\""),
                format!("state=\"{state}\""),
            ];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            assert_eq!(
                sample(&text, expiry, &labels),
                Some(now + days * DAY),
                "{name} in\n{text}"
            );
            let seconds_left = sample(&text, left, &labels).unwrap_or_default();
            assert!(
                (days * DAY - 60..=days * DAY).contains(&seconds_left),
                "{name}: {seconds_left} in\n{text}"
            );
        }
        assert!(!text.contains(&id("gone")), "a revoked authority:\n{text}");
        for needle in [
            "# TYPE hush_ca_authority_expiry_timestamp_seconds gauge",
            "# TYPE hush_ca_authority_expires_in_seconds gauge",
            "hush_ca_authorities_generation 7",
            "# TYPE hush_ca_reloads_total counter",
            "hush_ca_reloads_total{result=\"loaded\"} 0",
            "hush_ca_reloads_total{result=\"refused\"} 1",
            "# TYPE hush_ca_certificates_issued_total counter",
            "hush_ca_certificates_issued_total{api=\"hush.ca.v1\"} 1",
            "hush_ca_certificates_issued_total{api=\"istio.v1.auth\"} 0",
            "# TYPE hush_ca_requests_refused_total counter",
            "hush_ca_requests_refused_total{api=\"istio.v1.auth\",code=\"Unauthenticated\"} 2",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        let openmetrics = metrics.encode();
        assert!(
            openmetrics.contains("# TYPE hush_ca_reloads counter"),
            "{openmetrics}"
        );
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    }

    #[test]
    fn a_new_set_replaces_the_series_of_the_last() {
        let now = now();
        let mut manifest = Manifest {
            version: crate::authorities::MANIFEST_VERSION,
            trust_domain: "cluster.local".into(),
            generation: 1,
            publish_wait_seconds: 900,
            max_ttl_seconds: DAY as u64,
            authorities: vec![
                entry("root", Kind::Root, State::Active, now + 3650 * DAY),
                entry("i1", Kind::Intermediate, State::Active, now + 365 * DAY),
            ],
        };
        let metrics = CaMetrics::new();
        metrics.authorities_in_force(&manifest);
        manifest.generation = 2;
        manifest.authorities[1].state = State::Revoked;
        manifest.authorities.push(entry(
            "i2",
            Kind::Intermediate,
            State::Active,
            now + 365 * DAY,
        ));
        metrics.authorities_in_force(&manifest);
        let text = metrics.encode_prometheus_text();
        assert!(!text.contains(&id("i1")), "{text}");
        assert!(text.contains(&id("i2")), "{text}");
        assert!(text.contains("hush_ca_authorities_generation 2"), "{text}");
    }

    #[test]
    fn prometheus_text_names_counter_families_by_their_samples() {
        let openmetrics = "# HELP hush_ca_x Things.\n# TYPE hush_ca_x counter\nhush_ca_x_total{a=\"b\"} 1\n\
                           # HELP hush_ca_g G.\n# TYPE hush_ca_g gauge\n# UNIT hush_ca_g seconds\nhush_ca_g 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus_text(openmetrics),
            "# HELP hush_ca_x_total Things.\n# TYPE hush_ca_x_total counter\nhush_ca_x_total{a=\"b\"} 1\n\
             # HELP hush_ca_g G.\n# TYPE hush_ca_g gauge\nhush_ca_g 2\n"
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let metrics = CaMetrics::new();
        let request = |method: Method, path: &str, accept: Option<&str>| {
            let mut builder = Request::builder().method(method).uri(path);
            if let Some(accept) = accept {
                builder = builder.header(header::ACCEPT, accept);
            }
            let response = answer(&metrics, &builder.body(()).expect("a request"));
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (response.status(), content_type)
        };
        let (status, content_type) = request(Method::GET, "/metrics", None);
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let (_, content_type) = request(
            Method::GET,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        );
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert_eq!(
            request(Method::POST, "/metrics", None).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            request(Method::GET, "/certs", None).0,
            StatusCode::NOT_FOUND
        );
    }
}
