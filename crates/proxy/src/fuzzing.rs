//! Entry points for the fuzz targets (`fuzz/`): the inbound side's decisions about a
//! connection's bytes, run on in-memory streams, and the gateway's choice of a route. Not part
//! of hush's API.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::detect::{FirstLine, Prefixed, hold_first_line};
use crate::edge::{Matcher, pick};
use crate::headers::{IdentityHeaders, ProtectedHeaders, Scanned};

/// What the inbound side did with a connection it relays as opaque TCP.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Served as HTTP: hyper parses every request.
    Http,
    /// Relayed: the bytes the app received, all of them.
    Opaque(Vec<u8>),
    /// Refused: an HTTP request after the app had spoken.
    Refused,
    /// Nothing reached the app.
    Gone,
}

/// Runs a connection relayed as opaque TCP: the client sends `chunks` (one write each), then
/// closes; the app says `greeting` first when there is one. Returns what reached the app,
/// through the relay's scan for lines naming the identity headers.
pub fn opaque_connection(chunks: &[&[u8]], greeting: Option<&[u8]>) -> Relayed {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (mut client, mut sidecar_client) = tokio::io::duplex(64 * 1024);
        let (mut sidecar_app, mut app) = tokio::io::duplex(64 * 1024);
        if let Some(greeting) = greeting {
            app.write_all(greeting).await.expect("the greeting");
            // Let the greeting be read before the client's first bytes.
        }
        let writer = async {
            if greeting.is_some() {
                // The greeting is relayed before the client speaks, as a server-first
                // protocol's client waits for it.
                let mut seen = vec![0u8; greeting.map_or(0, <[u8]>::len)];
                let _ = client.read_exact(&mut seen).await;
            }
            for chunk in chunks {
                if client.write_all(chunk).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = client.shutdown().await;
            client
        };
        let hour = Duration::from_secs(3600);
        let holding = hold_first_line(&mut sidecar_client, &mut sidecar_app, hour, hour);
        let (_client, first) = tokio::join!(writer, holding);
        match first {
            FirstLine::Http(..) => Relayed::Http,
            FirstLine::HttpAfterApp => Relayed::Refused,
            FirstLine::Gone | FirstLine::TooSlow | FirstLine::Silent => Relayed::Gone,
            FirstLine::Opaque(prefix) => {
                // The relay sends what was held back, then the rest, through the scan of
                // lines naming protected headers.
                let scanner = ProtectedHeaders::new(&[]).scanner();
                let mut relayed =
                    Scanned::new(Prefixed::new(prefix, sidecar_client), Some(scanner));
                let mut reached = Vec::new();
                let _ = relayed.read_to_end(&mut reached).await;
                drop(sidecar_app);
                Relayed::Opaque(reached)
            }
        }
    })
}

/// The request headers the app receives when a caller sent `headers` (name, value; those the
/// `http` crate refuses are left out, as hyper refuses the request) to a sidecar protecting
/// `protected` besides the identity headers, for a caller proven to be `peer_id`.
pub fn headers_for_app(
    headers: &[(Vec<u8>, Vec<u8>)],
    protected: &[String],
    peer_id: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    ProtectedHeaders::new(protected).strip(&mut map);
    if let Some(identity) = IdentityHeaders::new(
        peer_id,
        "spiffe://cluster.local/ns/fuzz/sa/backend",
        b"leaf",
    ) {
        identity.insert(&mut map);
    }
    map.iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// Runs the Workload API's `:authority` rewriter over what an app sends, written in `chunks`:
/// the bytes h2 would read, or why the connection was cut off.
pub fn rewrite_authorities(chunks: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut rewriter = crate::workload_api::authority::AuthorityRewriter::default();
    let mut out = Vec::new();
    for chunk in chunks {
        rewriter.feed(chunk).map_err(|e| e.to_string())?;
        out.append(rewriter.output());
    }
    Ok(out)
}

/// The gateway's routes for `(host pattern, path prefix)` pairs, matching as its listener does.
pub struct EdgeRoutes(Vec<Matcher>);

impl EdgeRoutes {
    /// Routes in order, as `routes[]` would list them.
    pub fn new(routes: &[(&str, &str)]) -> Self {
        Self(
            routes
                .iter()
                .map(|(host, prefix)| Matcher::new(host, prefix))
                .collect(),
        )
    }

    /// The route the listener picks for a request for `host` (lowercase, no port) at `path`,
    /// or the status it answers with instead.
    pub fn pick(&self, host: &str, path: &str) -> Result<usize, u16> {
        pick(&self.0, host, path).map_err(|(status, _)| status.as_u16())
    }

    /// Whether route `index` serves `host` at `path`, read one way.
    pub fn matches(&self, index: usize, host: &str, path: &str) -> bool {
        self.0.get(index).is_some_and(|m| m.matches(host, path))
    }
}
