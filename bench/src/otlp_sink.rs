//! A collector stand-in for the traced benchmark path: it answers every OTLP/gRPC export with
//! an empty success and counts what it received, so what the sidecars pay for exporting is
//! measured without a real collector's work on the same two cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the sink has received.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) exports: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// Starts the sink on a thread of its own; returns its address and its counters.
pub(crate) fn start() -> Result<(SocketAddr, Arc<Received>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Received::default());
    let counters = received.clone();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((tcp, _)) = listener.accept().await {
                let counters = counters.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let counters = counters.clone();
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            counters.exports.fetch_add(1, Ordering::Relaxed);
                            counters
                                .bytes
                                .fetch_add(body.len() as u64, Ordering::Relaxed);
                            Ok::<_, hyper::Error>(export_answer())
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    Ok((addr, received))
}

/// An empty `ExportTraceServiceResponse` (a gRPC message of length 0), then `grpc-status: 0`.
fn export_answer() -> Response<http_body_util::combinators::WithTrailers<Full<Bytes>, TrailersReady>>
{
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

type TrailersReady = std::future::Ready<Option<Result<HeaderMap, std::convert::Infallible>>>;
