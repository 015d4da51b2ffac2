//! The apps that stand behind the sidecars in the end-to-end tests: real servers on loopback.
//!
//! * [`start_app`] — one HTTP server (HTTP/1.1 and HTTP/2 on the same port) that echoes what
//!   it received as JSON, answers gRPC health checks, upgrades `/ws` to a WebSocket echo, and
//!   answers `/slow?ms=N` after N milliseconds, and trickles a body out on `/trickle…`.
//! * [`start_greeter`] — a server-first TCP app (it speaks before the client, like SMTP or
//!   MySQL), then echoes lines.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tower::ServiceExt;

type Body = UnsyncBoxBody<Bytes, Box<dyn StdError + Send + Sync>>;

/// How many `/slow` requests have reached each echo app, by the app's address. Tests run side by
/// side in one process, so a count of every app would include other tests' requests.
static SLOW_REQUESTS_STARTED: Mutex<BTreeMap<SocketAddr, usize>> = Mutex::new(BTreeMap::new());

/// How many `/slow` requests have reached the echo app at `app`, so a test can wait until its
/// request is in flight instead of sleeping.
pub(crate) fn slow_requests_started(app: SocketAddr) -> usize {
    slow_requests().get(&app).copied().unwrap_or(0)
}

fn slow_requests() -> std::sync::MutexGuard<'static, BTreeMap<SocketAddr, usize>> {
    SLOW_REQUESTS_STARTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Starts the echo app on a free loopback port. It runs until the test's runtime ends.
pub(crate) async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the app");
    let addr = listener.local_addr().expect("app address");
    // The port may have been an earlier app's: its count is not this one's.
    slow_requests().insert(addr, 0);
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let health = health.clone();
                    async move {
                        if is_grpc(&request) {
                            let response = health
                                .oneshot(request)
                                .await
                                .unwrap_or_else(|never| match never {});
                            return Ok::<_, Infallible>(response.map(|body| {
                                body.map_err(|status| {
                                    Box::new(status) as Box<dyn StdError + Send + Sync>
                                })
                                .boxed_unsync()
                            }));
                        }
                        Ok(answer(addr, request).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn is_grpc(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

async fn answer(app: SocketAddr, mut request: Request<Incoming>) -> Response<Body> {
    match request.uri().path() {
        "/ws" => return websocket(&mut request),
        path if path.starts_with("/trickle") => return trickle(&request),
        "/slow" => {
            *slow_requests().entry(app).or_default() += 1;
            let ms: u64 = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    let all = |name: &str| -> Vec<String> {
        request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let seen = serde_json::json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "version": format!("{:?}", request.version()),
        "host": all("host"),
        "authority": request.uri().authority().map(|a| a.as_str().to_owned()),
        "peer_identity": all("x-hush-peer-identity"),
        "xfcc": all("x-forwarded-client-cert"),
        "custom": all("x-custom"),
        "traceparent": all("traceparent"),
        "tracestate": all("tracestate"),
        "x_forwarded_for": all("x-forwarded-for"),
        "x_forwarded_proto": all("x-forwarded-proto"),
        "forwarded": all("forwarded"),
    });
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut seen = seen;
    seen["body_bytes"] = body.into();
    json(StatusCode::OK, &seen)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `/trickle…?ms=N[&grpc_status=C][&break=1]`: the head and a first frame at once, the last
/// frame N milliseconds later, then trailers with `grpc-status: C`. With `break`, the body
/// fails instead of sending its last frame, as an app that crashes mid-response.
fn trickle(request: &Request<Incoming>) -> Response<Body> {
    let query = request.uri().query().unwrap_or("").to_owned();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let wait = Duration::from_millis(param("ms").and_then(|ms| ms.parse().ok()).unwrap_or(0));
    let grpc_status = param("grpc_status");
    let broken = param("break").is_some();
    let frames = futures_util::stream::unfold(0u8, move |step| {
        let grpc_status = grpc_status.clone();
        async move {
            let frame: Result<Frame<Bytes>, Box<dyn StdError + Send + Sync>> = match step {
                0 => Ok(Frame::data(Bytes::from_static(b"first\n"))),
                1 => {
                    tokio::time::sleep(wait).await;
                    if broken {
                        Err("the app crashed mid-response".into())
                    } else {
                        Ok(Frame::data(Bytes::from_static(b"last\n")))
                    }
                }
                2 => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert(
                        "grpc-status",
                        header::HeaderValue::from_str(&grpc_status?).ok()?,
                    );
                    Ok(Frame::trailers(trailers))
                }
                _ => return None,
            };
            // After a failure there is nothing more.
            let next = if frame.is_err() { u8::MAX } else { step + 1 };
            Some((frame, next))
        }
    });
    Response::new(StreamBody::new(frames).boxed_unsync())
}

/// Answers a WebSocket handshake with 101 and echoes every message on the upgraded
/// connection.
fn websocket(request: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
        let mut response = Response::new(full("not a websocket handshake".into()));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(full(String::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        "sec-websocket-accept",
        header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("a valid header"),
    );
    response
}

/// The greeting [`start_greeter`] sends before the client says anything.
pub(crate) const GREETING: &str = "220 greeter ready";

/// Starts a server-first TCP app: it sends [`GREETING`] on connect, then echoes each line.
pub(crate) async fn start_greeter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the greeter");
    let addr = listener.local_addr().expect("greeter address");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                if write
                    .write_all(format!("{GREETING}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("echo: {line}\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}
