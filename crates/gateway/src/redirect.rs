//! The plaintext listener: every request is sent to HTTPS with a permanent redirect, except
//! ACME's HTTP-01 validation requests, answered with the key authorization of a challenge in
//! flight.
//!
//! Nothing is proxied here, so nothing of the mesh is reachable without TLS. The redirect
//! keeps the host the client asked for (any other would make the gateway an open redirector)
//! and its path and query; `308` keeps the method and body, where `301` lets clients turn a
//! POST into a GET. Each connection carries one request, whose head must arrive within
//! `limits.header_timeout`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::certs::CertStore;

/// Where HTTP-01 tokens are served (RFC 8555, section 8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The plaintext listener.
#[derive(Debug)]
pub struct Redirector {
    /// The HTTPS port redirects name (left out of the URL when 443).
    pub https_port: u16,
    /// Where HTTP-01 key authorizations come from.
    pub store: Arc<CertStore>,
    /// A request head must arrive within this long.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Redirector {
    /// Serves `listener` until `stop`.
    pub async fn run(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.max_connections));
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = stop.cancelled() => break,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "plaintext listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                let service = service_fn(|request| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.answer(&request, peer)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(this.header_timeout)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tcp), service);
                // A client that never reads its answer is cut off after the same time.
                tokio::select! {
                    result = tokio::time::timeout(this.header_timeout * 2, connection) => {
                        if let Ok(Err(e)) = result {
                            debug!(%peer, error = %e, "plaintext connection failed");
                        }
                    }
                    () = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    /// The answer to one request.
    fn answer(&self, request: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX)
            && matches!(*request.method(), Method::GET | Method::HEAD)
        {
            return match self.store.http01(token) {
                Some(key_authorization) => {
                    debug!(%peer, "answered an ACME HTTP-01 validation");
                    text(StatusCode::OK, key_authorization)
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "no such ACME challenge\n".to_string(),
                ),
            };
        }
        let Some(host) = host_of(request) else {
            return text(
                StatusCode::BAD_REQUEST,
                "hush: this is the HTTPS redirector; the request names no valid host\n".into(),
            );
        };
        let port = match self.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("https://{host}{port}{target}");
        let Ok(location) = HeaderValue::from_str(&location) else {
            return text(
                StatusCode::BAD_REQUEST,
                "hush: unusable request target\n".into(),
            );
        };
        let mut response = text(StatusCode::PERMANENT_REDIRECT, String::new());
        response.headers_mut().insert(header::LOCATION, location);
        response
    }
}

/// The host (without port) the request names, when it is a valid one.
fn host_of(request: &Request<Incoming>) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request
            .headers()
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<Authority>()
            .ok()?,
    };
    let host = authority.host();
    // `Authority` takes userinfo (`evil@host`); a host is letters, digits, `-`, `.`, or an
    // IPv6 literal.
    let plain = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    (plain && !host.is_empty() && !authority.as_str().contains('@')).then(|| host.to_string())
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
