//! A small HTTP/1.1 keep-alive load generator and the app it measures against.
//!
//! The load generator runs on one thread and parses as little as it can (status line,
//! `content-length`, body), so that the machine's cores go to what is measured. Two modes:
//! closed-loop throughput (each connection sends its next request when the last answer is
//! in), and a fixed rate, where latency is measured from when a request was *due*, not when it
//! was sent, so a stall shows up in the percentiles instead of hiding them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: bench\r\n\r\n";

/// One keep-alive connection that sends [`REQUEST`] and reads whole responses.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and waits for its whole response; fails unless the status is 200.
    async fn roundtrip(&mut self) -> Result<()> {
        self.stream.write_all(REQUEST).await?;
        loop {
            if let Some(result) = take_response(&mut self.buf) {
                return result;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Removes one whole response from the front of `buf`, once it is all there: Ok for a 200.
fn take_response(buf: &mut Vec<u8>) -> Option<Result<()>> {
    let (head, body) = match parse_head(buf) {
        Ok(Some(lengths)) => lengths,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    if buf.len() < head + body {
        return None;
    }
    let ok = buf.starts_with(b"HTTP/1.1 200");
    buf.drain(..head + body);
    Some(if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("a response other than 200"))
    })
}

/// (head length, body length) once the head is complete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("a non-UTF-8 response head")?;
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .context("a response without content-length")?;
    Ok(Some((end + 4, length)))
}

/// What a closed-loop run measured.
pub(crate) struct Throughput {
    pub(crate) rate: f64,
    pub(crate) requests: u64,
}

/// `connections` connections, each sending back to back for `window` (after a warm-up).
pub(crate) async fn throughput(
    addr: SocketAddr,
    connections: usize,
    window: Duration,
) -> Result<Throughput> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut conn = Connection::open(addr).await?;
        // The first request pays for the handshakes behind it; it is not measured.
        conn.roundtrip().await.context("warm-up request failed")?;
        conns.push(conn);
    }
    let started = Instant::now();
    let deadline = started + window;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    conn.roundtrip().await?;
                    done += 1;
                }
                Ok::<_, anyhow::Error>(done)
            })
        })
        .collect();
    let mut requests = 0;
    for task in tasks {
        requests += task.await??;
    }
    Ok(Throughput {
        rate: requests as f64 / started.elapsed().as_secs_f64(),
        requests,
    })
}

/// What a fixed-rate run measured.
pub(crate) struct Latency {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
}

/// `rate` requests per second spread over `connections`, for `window`.
///
/// Each connection has its own thread, which sleeps until its next request is due (the async
/// runtime's timer has millisecond resolution, too coarse at 1,000 requests per second). A
/// request that leaves on time is timed from when it left; one held up because the previous
/// answer came late is timed from when it was due, so a stall is not hidden (coordinated
/// omission).
pub(crate) fn fixed_rate(
    addr: SocketAddr,
    connections: usize,
    rate: f64,
    window: Duration,
) -> Result<Latency> {
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut conn = BlockingConnection::open(addr)?;
        conn.roundtrip().context("warm-up request failed")?;
        conns.push(conn);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + window;
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            // Connections are staggered so that requests are evenly spaced overall.
            let mut due = start + interval.mul_f64(i as f64 / connections as f64);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut previous_done = Instant::now();
                while due < end {
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    let from = if previous_done > due { due } else { sent };
                    conn.roundtrip()?;
                    let done = Instant::now();
                    latencies.push(done - from);
                    previous_done = done;
                    due += interval;
                }
                Ok::<_, anyhow::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for thread in threads {
        let measured = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        latencies.extend(measured);
    }
    if latencies.is_empty() {
        bail!("no request was measured");
    }
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok(Latency {
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
    })
}

/// [`Connection`], blocking, for the latency runs.
struct BlockingConnection {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl BlockingConnection {
    fn open(addr: SocketAddr) -> Result<Self> {
        let stream = std::net::TcpStream::connect(addr)
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    fn roundtrip(&mut self) -> Result<()> {
        use std::io::{Read, Write};
        self.stream.write_all(REQUEST)?;
        loop {
            if let Some(result) = take_response(&mut self.buf) {
                return result;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("the connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The app behind every path: answers each request with `200 ok`. Prints `listening on
/// ADDR` once it accepts connections.
pub(crate) fn serve_app(listen: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"ok\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_are_measured() {
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(parse_head(response).unwrap(), Some((38, 3)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
