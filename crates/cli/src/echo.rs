//! The demo app `hush up` runs behind each sidecar, and `hush demo-app` runs in the Kubernetes
//! walkthrough: an HTTP server (HTTP/1.1 and HTTP/2) that answers every request with who it is
//! and who its sidecar says is calling.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hush_proxy::{PEER_IDENTITY_HEADER, XFCC_HEADER};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `hush demo-app`: the demo app on its own, until SIGTERM or Ctrl-C.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoAppArgs {
    /// The name it answers with.
    #[arg(long, default_value = "demo")]
    name: String,
    /// Address to listen on (port 0 picks a free port; the address is printed on stdout).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
}

pub(crate) async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let stop = CancellationToken::new();
    let addr = start_on(args.listen, args.name.clone(), stop.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = crate::shutdown::signal();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "hush demo-app: {} answering on http://{addr}",
            args.name
        )?;
        out.flush()?;
    }
    shutdown.await;
    stop.cancel();
    Ok(())
}

/// Starts the echo app for `name` on a free loopback port; it stops with `stop`.
pub(crate) async fn start(name: String, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), name, stop).await
}

async fn start_on(
    listen: SocketAddr,
    name: String,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
                () = stop.cancelled() => return,
            };
            let name = name.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(answer(&name, &request)) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(tcp), service);
                tokio::select! {
                    _ = connection => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(addr)
}

fn answer(name: &str, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header_text = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none: the caller did not come through the mesh)")
            .to_string()
    };
    let mut body = format!(
        "hello from {name}\n\
         request: {} {}\n\
         {PEER_IDENTITY_HEADER}: {}\n\
         {XFCC_HEADER}: {}\n",
        request.method(),
        request.uri().path(),
        header_text(PEER_IDENTITY_HEADER),
        header_text(XFCC_HEADER),
    );
    // Set by the gateway for a caller from outside the mesh.
    for forwarded in ["x-forwarded-for", "x-forwarded-proto"] {
        if let Some(value) = request
            .headers()
            .get(forwarded)
            .and_then(|v| v.to_str().ok())
        {
            body.push_str(&format!("{forwarded}: {value}\n"));
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
