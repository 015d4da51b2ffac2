//! The TLS load the benchmarks share: a request on a new connection each time, and reading an
//! answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Reads one response (head and a Content-Length body) from `io`, keeping what follows.
pub(crate) async fn read_response<S: AsyncReadExt + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Result<()> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("a response head")?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("unexpected response: {}", head.lines().next().unwrap_or(""));
            }
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            if buf.len() >= total {
                buf.drain(..total);
                return Ok(());
            }
        }
        let mut chunk = [0u8; 8192];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection: handshake with `host` as the server name, one request for it, its answer,
/// closed.
pub(crate) async fn one_connection(
    entry: SocketAddr,
    connector: &TlsConnector,
    host: &'static str,
) -> Result<()> {
    let tcp = TcpStream::connect(entry).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(ServerName::try_from(host)?, tcp).await?;
    let request = format!("GET /bench HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    read_response(&mut tls, &mut Vec::new()).await?;
    Ok(())
}

/// Completed connections (handshake, request, answer) by `concurrency` clients in `window`,
/// after one to warm up (the server's pooled connection onwards).
pub(crate) async fn new_connections(
    entry: SocketAddr,
    connector: TlsConnector,
    host: &'static str,
    concurrency: usize,
    window: Duration,
) -> Result<u64> {
    one_connection(entry, &connector, host).await?;
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    one_connection(entry, &connector, host).await?;
                    done += 1;
                }
                Ok::<_, anyhow::Error>(done)
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    Ok(done)
}
