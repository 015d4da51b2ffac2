//! Protocol detection: HTTP/2, HTTP/1.x or opaque TCP, from a connection's first bytes.
//!
//! Detection reads what the client sends first and hands those bytes on untouched (through
//! [`Prefixed`]). It must never stall a server-first protocol (MySQL, SMTP…), whose client
//! sends nothing until the server has spoken: so it waits only a short, configurable time, and
//! a silent client is treated as opaque TCP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface every HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How far detection reads looking for the end of an HTTP/1 request line. Longer request
/// lines still get to hyper, which answers 414 or 431 itself.
pub(crate) const MAX_DETECT_BYTES: usize = 8 * 1024;

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// The HTTP/2 preface.
    Http2,
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// Anything else.
    Tcp,
    /// Not enough bytes to tell yet.
    NeedMore,
}

/// Classifies a connection by the bytes it started with.
///
/// HTTP/1 is recognised only by a whole request line (`METHOD SP target SP HTTP/1.x CRLF`), so
/// a text protocol with a verb and a space (Redis' `SET k v`) is not mistaken for HTTP.
pub fn detect(prefix: &[u8]) -> Detected {
    if prefix.is_empty() {
        return Detected::NeedMore;
    }
    let compared = prefix.len().min(H2_PREFACE.len());
    if prefix[..compared] == H2_PREFACE[..compared] {
        return if prefix.len() >= H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    detect_http1(prefix)
}

fn detect_http1(prefix: &[u8]) -> Detected {
    // The method: an HTTP token (RFC 9110) of at most 32 characters, then one space.
    let method_len = prefix.iter().take_while(|b| is_token_char(**b)).count();
    if method_len == prefix.len() {
        return if method_len <= 32 {
            Detected::NeedMore
        } else {
            Detected::Tcp
        };
    }
    if method_len == 0 || method_len > 32 || prefix[method_len] != b' ' {
        return Detected::Tcp;
    }
    // The target: visible characters up to the next space.
    let rest = &prefix[method_len + 1..];
    let target_len = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    if target_len == rest.len() {
        return need_more_unless_too_long(prefix);
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return Detected::Tcp;
    }
    let version = &rest[target_len + 1..];
    const VERSIONS: [&[u8]; 2] = [b"HTTP/1.1\r\n", b"HTTP/1.0\r\n"];
    for expected in VERSIONS {
        let compared = version.len().min(expected.len());
        if version[..compared] == expected[..compared] {
            return if version.len() >= expected.len() {
                Detected::Http1
            } else {
                need_more_unless_too_long(prefix)
            };
        }
    }
    Detected::Tcp
}

fn need_more_unless_too_long(prefix: &[u8]) -> Detected {
    if prefix.len() >= MAX_DETECT_BYTES {
        // A request line this long is still HTTP-shaped; let hyper refuse it properly.
        Detected::Http1
    } else {
        Detected::NeedMore
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The outcome of reading a connection's first bytes.
#[derive(Debug)]
pub(crate) struct Sniffed {
    /// What they are.
    pub(crate) protocol: Detected,
    /// Whether detection gave up waiting (the protocol is then `Tcp`).
    pub(crate) timed_out: bool,
    /// The bytes read, to be replayed.
    pub(crate) prefix: BytesMut,
}

/// Reads from `io` until [`detect`] decides, the client stops sending for `timeout`, or the
/// connection ends. `Detected::NeedMore` is never returned: undecided is `Tcp`.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> io::Result<Sniffed> {
    let mut prefix = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match detect(&prefix) {
            Detected::NeedMore => {}
            decided => {
                return Ok(Sniffed {
                    protocol: decided,
                    timed_out: false,
                    prefix,
                });
            }
        }
        if prefix.len() >= MAX_DETECT_BYTES {
            return Ok(Sniffed {
                protocol: Detected::Tcp,
                timed_out: false,
                prefix,
            });
        }
        prefix.reserve(1024);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut prefix)).await {
            Ok(Ok(0)) => {
                // The client closed its side: whatever it sent is opaque data.
                return Ok(Sniffed {
                    protocol: Detected::Tcp,
                    timed_out: false,
                    prefix,
                });
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Ok(Sniffed {
                    protocol: Detected::Tcp,
                    timed_out: true,
                    prefix,
                });
            }
        }
    }
}

/// A stream that first replays bytes already read from it.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

// === impl Prefixed ===

impl<S> Prefixed<S> {
    /// `inner`, preceded by `prefix`.
    pub(crate) fn new(prefix: BytesMut, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// One row per case: the first bytes, and what they must be taken for.
    #[test]
    fn first_bytes_decide_the_protocol() {
        use Detected::*;
        let cases: &[(&[u8], Detected)] = &[
            (b"", NeedMore),
            (b"G", NeedMore),
            (b"GET", NeedMore),
            (b"GET /", NeedMore),
            (b"GET / HTTP/1.", NeedMore),
            (b"GET / HTTP/1.1\r", NeedMore),
            (b"GET / HTTP/1.1\r\n", Http1),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Http1),
            (b"POST /api?q=1 HTTP/1.0\r\n", Http1),
            (b"OPTIONS * HTTP/1.1\r\n", Http1),
            (b"CONNECT db:5432 HTTP/1.1\r\n", Http1),
            (b"M-SEARCH * HTTP/1.1\r\n", Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", Http2),
            // Text protocols that look like a verb and an argument.
            (b"SET key value\r\n", Tcp),
            (b"PING\r\n", Tcp),
            (b"EHLO mail.example\r\n", Tcp),
            (b"GET / HTTP/2.0\r\n", Tcp),
            (b"GET / SPDY/3\r\n", Tcp),
            (b"GET  / HTTP/1.1\r\n", Tcp),
            (b"get / HTTP/1.1\r\n", Http1),
            // TLS, SSH, binary protocols, garbage.
            (b"\x16\x03\x01\x02\x00\x01", Tcp),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Tcp),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Tcp),
            (b" GET / HTTP/1.1\r\n", Tcp),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                detect(bytes),
                *expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A method longer than any real one is not HTTP.
        assert_eq!(detect(&[b'A'; 40]), Tcp);
        // A request line longer than the detection window is left to hyper to refuse.
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(detect(&long), Http1);
    }

    #[tokio::test]
    async fn sniffing_replays_what_it_read() {
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut server = server;
        let sniffed = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(sniffed.protocol, Detected::Http1);
        assert!(!sniffed.timed_out);
        let mut replay = Prefixed::new(sniffed.prefix, server);
        let mut all = vec![0u8; 27];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_tcp_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let sniffed = sniff(&mut server, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(sniffed.protocol, Detected::Tcp);
        assert!(sniffed.timed_out);
        assert!(sniffed.prefix.is_empty());
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_tcp() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /").await.unwrap();
        drop(client);
        let sniffed = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(sniffed.protocol, Detected::Tcp);
        assert_eq!(&sniffed.prefix[..], b"GET /");
    }
}
