//! Fetching a federated trust domain's bundle from its endpoint, at its refresh hint.
//!
//! A fetch is one HTTP/1.1 GET on a fresh TLS connection, every step bounded by
//! [`FETCH_TIMEOUT`] and the body by [`MAX_SPIFFE_BUNDLE_BYTES`]. Redirects are not followed
//! (the standard says a client SHOULD; hush asks the operator to name the final URL, so that
//! where trust comes from is written in the CA's flags). A bundle is refused when it does not
//! read as a SPIFFE bundle of the configured trust domain, holds no X.509 root, or carries a
//! `spiffe_sequence` lower than the last one accepted; a refused or failed fetch keeps the
//! last good bundle and is retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hush_identity::{MAX_SPIFFE_BUNDLE_BYTES, SpiffeBundle, SpiffeBundleError, TrustBundle};
use hush_tls::{SpiffeServerVerifier, rustls};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::{Auth, Federation, FetchedBundle};
use crate::service::CaService;

/// Each step of a fetch (connect, TLS handshake, response head, body) must finish within this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest refresh interval, whatever the bundle's hint says.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest refresh interval, whatever the bundle's hint says.
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The refresh interval of a bundle without a hint (the standard's recommendation).
const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Retries after failures back off up to this (and never beyond the refresh interval).
const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// Why one fetch failed, by step; the words say what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No TCP connection.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// host:port.
        address: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed: for https_spiffe, usually the endpoint's certificate.
    #[error("TLS handshake with the endpoint failed ({expected}): {reason}")]
    Tls {
        /// What the endpoint had to prove.
        expected: String,
        /// What went wrong, in words.
        reason: String,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The endpoint answered with another status than 200.
    #[error("the endpoint answered {status}{location} instead of 200 with a bundle")]
    Status {
        /// The status.
        status: StatusCode,
        /// For a redirect, where to (not followed).
        location: String,
    },
    /// A step took longer than [`FETCH_TIMEOUT`].
    #[error("{step} took longer than {limit:?}")]
    Timeout {
        /// Which step.
        step: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// The body is larger than a bundle may be.
    #[error("the answer is larger than {limit} bytes, more than a SPIFFE bundle may be")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body is not a SPIFFE bundle of the trust domain.
    #[error("the answer is not a usable bundle: {0}")]
    Parse(#[from] SpiffeBundleError),
    /// The bundle reads, but goes back in sequence.
    #[error(
        "the bundle's spiffe_sequence {got} is lower than {last}, the last one accepted \
         (an old bundle served again?)"
    )]
    Rollback {
        /// The sequence fetched.
        got: u64,
        /// The last accepted.
        last: u64,
    },
}

// === impl FetchError ===

impl FetchError {
    /// The step, for the failure metric: a closed set.
    pub(crate) fn step(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Tls { .. } => "tls",
            Self::Http(_) | Self::Status { .. } | Self::TooLarge { .. } => "http",
            Self::Timeout { step, .. } => step,
            Self::Parse(_) => "parse",
            Self::Rollback { .. } => "sequence",
        }
    }
}

/// How long to wait before the next fetch after one that brought `bundle`: its hint clamped to
/// [[`MIN_REFRESH_INTERVAL`], [`MAX_REFRESH_INTERVAL`]], five minutes without one.
pub fn refresh_interval(bundle: Option<&SpiffeBundle>) -> Duration {
    bundle
        .and_then(SpiffeBundle::refresh_hint)
        .unwrap_or(DEFAULT_REFRESH_INTERVAL)
        .clamp(MIN_REFRESH_INTERVAL, MAX_REFRESH_INTERVAL)
}

/// Fetches the bundle of `federation` until the task is dropped, and hands each accepted one to
/// `service` (GetTrustBundle.federated). Every change and every failure is logged.
pub async fn follow_federation(service: CaService, federation: Federation) {
    let td = federation.trust_domain().clone();
    let url = federation.url().to_string();
    let mut last: Option<FetchedBundle> = None;
    let mut failures: u32 = 0;
    loop {
        let outcome = fetch(&federation, last.as_ref().map(|l| &l.bundle)).await;
        let outcome = outcome.and_then(|bundle| {
            match (
                bundle.sequence(),
                last.as_ref().and_then(|l| l.bundle.sequence()),
            ) {
                (Some(got), Some(last)) if got < last => Err(FetchError::Rollback { got, last }),
                _ => Ok(bundle),
            }
        });
        let wait = match outcome {
            Ok(bundle) => {
                failures = 0;
                report_change(&td, last.as_ref().map(|l| &l.bundle), &bundle);
                let fetched = FetchedBundle {
                    bundle,
                    fetched_at_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
                };
                service.set_federated(fetched.clone());
                service
                    .metrics()
                    .federation_fetched(&td, fetched.fetched_at_unix);
                let wait = refresh_interval(Some(&fetched.bundle));
                last = Some(fetched);
                wait
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                service.metrics().federation_failed(&td, error.step());
                let interval = refresh_interval(last.as_ref().map(|l| &l.bundle));
                let wait = backoff(failures).min(interval);
                let keeping = match &last {
                    Some(last) => format!(
                        "keeping the bundle fetched at {} (sequence {})",
                        crate::audit::rfc3339(
                            time::OffsetDateTime::from_unix_timestamp(last.fetched_at_unix)
                                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
                        ),
                        sequence_words(last.bundle.sequence())
                    ),
                    None => "no bundle of it yet: sidecars cannot trust its workloads".into(),
                };
                warn!(
                    trust_domain = %td,
                    %url,
                    step = error.step(),
                    %error,
                    failures,
                    retry_in = ?wait,
                    "cannot fetch the bundle of federated trust domain {td}; {keeping}"
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

fn sequence_words(sequence: Option<u64>) -> String {
    sequence.map_or_else(|| "none".into(), |s| s.to_string())
}

fn report_change(
    td: &hush_identity::TrustDomain,
    before: Option<&SpiffeBundle>,
    after: &SpiffeBundle,
) {
    let roots = after.x509_roots().len();
    let jwt_keys = after.jwt_key_count();
    let sequence = sequence_words(after.sequence());
    match before {
        None => info!(
            trust_domain = %td, roots, jwt_keys, %sequence,
            refresh_in = ?refresh_interval(Some(after)),
            "fetched the bundle of federated trust domain {td} for the first time"
        ),
        Some(before)
            if before.x509_roots() != after.x509_roots()
                || before.jwt_keys_json() != after.jwt_keys_json() =>
        {
            let added = after
                .x509_roots()
                .iter()
                .filter(|r| !before.x509_roots().contains(r))
                .count();
            let removed = before
                .x509_roots()
                .iter()
                .filter(|r| !after.x509_roots().contains(r))
                .count();
            info!(
                trust_domain = %td, roots, roots_added = added, roots_removed = removed,
                jwt_keys, jwt_keys_before = before.jwt_key_count(), %sequence,
                "the bundle of federated trust domain {td} changed"
            );
        }
        Some(_) => {
            debug!(trust_domain = %td, %sequence, "the bundle of federated trust domain {td} is unchanged")
        }
    }
}

/// One fetch: connect, TLS, GET, read the body (bounded), parse.
async fn fetch(
    federation: &Federation,
    last: Option<&SpiffeBundle>,
) -> Result<SpiffeBundle, FetchError> {
    let url = federation.url();
    let host = url
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_u16().unwrap_or(443);
    let address = format!("{host}:{port}");
    let (tls, expected) = tls_config(federation, last)?;
    let server_name = ServerName::try_from(host.clone()).map_err(|_| FetchError::Connect {
        address: address.clone(),
        reason: "the URL's host is not a valid DNS name or IP address".into(),
    })?;

    let tcp = step("connect", TcpStream::connect((host.as_str(), port)))
        .await?
        .map_err(|e| FetchError::Connect {
            address: address.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let tls = step(
        "TLS handshake",
        TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await?
    .map_err(|e| FetchError::Tls {
        expected: expected.clone(),
        reason: hush_tls::explain_io_error(&e),
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, url.authority().map_or("", |a| a.as_str()))
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "hush-ca")
            .body(Empty::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let response = step("response", sender.send_request(request))
            .await?
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if response.status() != StatusCode::OK {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| {
                    format!(
                        " (a redirect to {:?}, which hush does not follow: name the final URL)",
                        l.chars().take(200).collect::<String>()
                    )
                })
                .unwrap_or_default();
            return Err(FetchError::Status {
                status: response.status(),
                location,
            });
        }
        let body = step(
            "body",
            Limited::new(response.into_body(), MAX_SPIFFE_BUNDLE_BYTES).collect(),
        )
        .await?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                FetchError::TooLarge {
                    limit: MAX_SPIFFE_BUNDLE_BYTES,
                }
            } else {
                FetchError::Http(e.to_string())
            }
        })?;
        Ok(SpiffeBundle::parse(
            federation.trust_domain(),
            &body.to_bytes(),
        )?)
    }
    .await;
    driver.abort();
    result
}

async fn step<T>(name: &'static str, future: impl Future<Output = T>) -> Result<T, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, future)
        .await
        .map_err(|_| FetchError::Timeout {
            step: name,
            limit: FETCH_TIMEOUT,
        })
}

/// The TLS client of one fetch, and what the endpoint must prove, in words.
fn tls_config(
    federation: &Federation,
    last: Option<&SpiffeBundle>,
) -> Result<(Arc<rustls::ClientConfig>, String), FetchError> {
    let config_error = |e: String| FetchError::Tls {
        expected: "a usable TLS configuration".into(),
        reason: e,
    };
    match &federation.auth {
        Auth::Web(roots) => {
            let mut store = rustls::RootCertStore::empty();
            let expected = match roots {
                Some(roots) => {
                    for root in roots {
                        store
                            .add(root.clone())
                            .map_err(|e| config_error(format!("a ca-file root: {e}")))?;
                    }
                    format!(
                        "https_web: a certificate for {} from the ca-file's CA",
                        federation.url().host().unwrap_or_default()
                    )
                }
                None => {
                    store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                    format!(
                        "https_web: a certificate for {} from a public CA",
                        federation.url().host().unwrap_or_default()
                    )
                }
            };
            // The Web profile follows the Web's rules: TLS 1.2 and 1.3, rustls' defaults.
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok((Arc::new(config), expected))
        }
        Auth::Spiffe {
            endpoint_id,
            bootstrap,
        } => {
            // The standard: the configured bundle verifies the first fetch, the latest fetched
            // bundle every later one, so the partner can rotate its roots.
            let (trust, whose): (&TrustBundle, &str) = match last {
                Some(last) => (last.trust_bundle(), "the last fetched bundle"),
                None => (bootstrap, "the bundle= file"),
            };
            let verifier = SpiffeServerVerifier::new(trust, vec![endpoint_id.clone()])
                .map_err(|e| config_error(e.to_string()))?;
            let config = hush_tls::client_config(verifier, None, &[b"http/1.1"])
                .map_err(|e| config_error(e.to_string()))?;
            Ok((
                Arc::new(config),
                format!("https_spiffe: an X.509-SVID for {endpoint_id} under the roots of {whose}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_hint_within_bounds() {
        assert_eq!(refresh_interval(None), Duration::from_secs(300));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
