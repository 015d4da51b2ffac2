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

/// How far detection reads looking for the version of an HTTP/1 request line. A line still
/// undecided this far in is taken for HTTP, and hyper answers 414 or 431 itself.
pub(crate) const MAX_DETECT_BYTES: usize = 8 * 1024;

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// The HTTP/2 preface.
    Http2,
    /// A request line some HTTP/1 server would accept.
    Http1,
    /// Anything else.
    Tcp,
    /// Not enough bytes to tell yet.
    NeedMore,
}

/// Classifies a connection by the bytes it started with.
///
/// The question is not "is this well-formed HTTP" but "could any HTTP/1 server take this for
/// a request", because an app behind the sidecar that reads a request from bytes hush relayed
/// as opaque TCP would also read any identity header the caller wrote into it. So the request
/// line is read as leniently as the most lenient servers do (Python's `http.server` splits it
/// on any whitespace; Node, Go and hyper skip leading empty lines; Go takes lower-case
/// methods): leading whitespace and empty lines are skipped, the method is any HTTP token, the
/// parts are separated by any run of whitespace (CR, tabs, form feeds included), and the
/// version only has to start with `HTTP/`, in any case.
///
/// A line with no version (`GET key`, memcached's and Redis' inline commands) is not HTTP: an
/// HTTP/0.9 request carries no headers, so it cannot carry a forged identity either. Nor is a
/// text protocol with a verb and two arguments (`SET key value`).
pub fn detect(prefix: &[u8]) -> Detected {
    // Only the first bytes are looked at, so the verdict never changes once the window is
    // full: a request line still undecided by then is HTTP-shaped, and hyper refuses it
    // properly (414 or 431).
    let prefix = &prefix[..prefix.len().min(MAX_DETECT_BYTES)];
    let full = prefix.len() == MAX_DETECT_BYTES;
    let compared = prefix.len().min(H2_PREFACE.len());
    if !prefix.is_empty() && prefix[..compared] == H2_PREFACE[..compared] {
        return if prefix.len() >= H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    match request_line(prefix) {
        Detected::NeedMore if full => Detected::Http1,
        verdict => verdict,
    }
}

/// What the bytes are when no more will come (the client closed): [`detect`], except that
/// what is still undecided is `Tcp` unless its request line already has its version (the start
/// of the HTTP/2 preface, `PRI * HTTP/2`, is such a line).
pub(crate) fn detect_final(prefix: &[u8]) -> Detected {
    match detect(prefix) {
        Detected::NeedMore => match request_line(prefix) {
            Detected::Http1 => Detected::Http1,
            _ => Detected::Tcp,
        },
        decided => decided,
    }
}

/// Where [`request_line`] is in `METHOD WS TARGET WS HTTP/`.
#[derive(Clone, Copy)]
enum Part {
    Lead,
    Method,
    AfterMethod,
    Target,
    AfterTarget,
}

/// The HTTP/1 part of [`detect`]: `NeedMore` until a byte decides.
fn request_line(prefix: &[u8]) -> Detected {
    const VERSION: &[u8] = b"HTTP/";
    let mut part = Part::Lead;
    for (i, &b) in prefix.iter().enumerate() {
        part = match part {
            Part::Lead if is_space(b) || b == b'\n' => Part::Lead,
            Part::Lead | Part::Method if is_token_char(b) => Part::Method,
            // A method, then anything but whitespace (a TLS record, a binary header).
            Part::Lead | Part::Method if !is_space(b) => return Detected::Tcp,
            Part::Method | Part::AfterMethod if is_space(b) => Part::AfterMethod,
            Part::AfterMethod | Part::Target if b != b'\n' && !is_space(b) => Part::Target,
            Part::Target | Part::AfterTarget if is_space(b) => Part::AfterTarget,
            Part::AfterTarget => {
                let version = &prefix[i..];
                let compared = version.len().min(VERSION.len());
                return if version[..compared].eq_ignore_ascii_case(&VERSION[..compared]) {
                    if compared == VERSION.len() {
                        Detected::Http1
                    } else {
                        Detected::NeedMore
                    }
                } else {
                    Detected::Tcp
                };
            }
            // A line break before the version: no request line an HTTP/1.x server reads
            // headers after.
            _ => return Detected::Tcp,
        };
    }
    Detected::NeedMore
}

/// Whitespace as the most lenient request-line parsers see it (Python's `str.split` on a
/// latin-1 line), except LF, which ends the line.
fn is_space(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f | 0x85 | 0xa0
    )
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
                // The client closed its side: nothing more will tell.
                return Ok(Sniffed {
                    protocol: detect_final(&prefix),
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

/// How the first line of a connection relayed as opaque TCP turned out.
#[derive(Debug)]
pub(crate) enum FirstLine {
    /// Not an HTTP request: relay the bytes held back, then everything else.
    Opaque(BytesMut),
    /// An HTTP request before the app said anything: it can still be served as HTTP, from
    /// the bytes held back.
    Http(BytesMut, Detected),
    /// An HTTP request after the app had spoken first (a server-first protocol): it can
    /// neither be served as HTTP nor relayed.
    HttpAfterApp,
    /// The first line was still undecided `line_timeout` after its first byte: a client that
    /// trickles it is cut off, as a trickled request head is.
    TooSlow,
    /// Neither side said anything for `line_timeout`: a connection opened and left idle holds
    /// the app's connection no longer.
    Silent,
    /// The connection failed, or the client stopped reading the app's greeting, before its
    /// first line decided.
    Gone,
}

/// Relays what the app sends to the client (a server-first protocol speaks first) while
/// holding back what the client sends until [`detect`] can say whether it is an HTTP
/// request. Nothing the client sent reaches the app before that.
///
/// This keeps a connection relayed as opaque TCP (a detection that timed out, a peer that
/// announced `hush/tcp`, a port declared `tcp`) from carrying a request line that an HTTP app
/// reads the way hush's parser does; what the most lenient parsers take for a request beyond
/// that is covered by [`crate::headers::HeaderLineScanner`] on the relay itself. A client that
/// closes before its first line decides is judged by what it sent ([`detect_final`]).
///
/// Bounded by `line_timeout` twice over: from the start, until either side speaks; from the
/// client's first byte, until its line decides. A client that waits after the app's greeting is
/// bounded by `idle`, and writing that greeting to a client that does not read it by
/// `line_timeout`.
pub(crate) async fn hold_first_line<C, A>(
    client: &mut C,
    app: &mut A,
    line_timeout: Duration,
    idle: Duration,
) -> FirstLine
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    use tokio::time::{Instant, sleep_until, timeout};

    let mut held = BytesMut::with_capacity(1024);
    let mut greeting = [0u8; 4096];
    let mut app_spoke = false;
    let mut app_done = false;
    // Silence on both sides first; then the client's line, from its first byte. Once the app
    // has spoken first, the client may take its time: the connection's idle time bounds it.
    let mut deadline = Instant::now().checked_add(line_timeout);
    loop {
        match detect(&held) {
            Detected::NeedMore => {}
            Detected::Tcp => return FirstLine::Opaque(held),
            Detected::Http1 | Detected::Http2 if app_spoke => return FirstLine::HttpAfterApp,
            http => return FirstLine::Http(held, http),
        }
        held.reserve(1024);
        let started = !held.is_empty();
        tokio::select! {
            read = client.read_buf(&mut held) => match read {
                // The client closed: nothing more will tell.
                Ok(0) => {
                    return match detect_final(&held) {
                        Detected::Tcp => FirstLine::Opaque(held),
                        _ if app_spoke => FirstLine::HttpAfterApp,
                        http => FirstLine::Http(held, http),
                    };
                }
                Ok(_) if !started => deadline = Instant::now().checked_add(line_timeout),
                Ok(_) => {}
                Err(_) => return FirstLine::Gone,
            },
            () = async {
                match deadline {
                    Some(deadline) => sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => {
                return match (started, app_spoke) {
                    (true, _) => FirstLine::TooSlow,
                    (false, false) => FirstLine::Silent,
                    (false, true) => FirstLine::Gone,
                };
            }
            read = app.read(&mut greeting), if !app_done => match read {
                Ok(0) => {
                    // The app closed: the relay carries that to the client once the first
                    // line decides.
                    app_done = true;
                }
                Ok(n) => {
                    if !started {
                        deadline = Instant::now().checked_add(idle);
                    }
                    app_spoke = true;
                    match timeout(line_timeout, client.write_all(&greeting[..n])).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) | Err(_) => return FirstLine::Gone,
                    }
                }
                Err(_) => return FirstLine::Gone,
            },
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
            if this.prefix.is_empty() {
                // An emptied buffer still holds its allocation, for the connection's life.
                this.prefix = BytesMut::new();
            }
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
            (b"GET / HTTP/1.", Http1),
            (b"GET / HTTP", NeedMore),
            (b"GET / HTTP/1.1\r\n", Http1),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Http1),
            (b"POST /api?q=1 HTTP/1.0\r\n", Http1),
            (b"OPTIONS * HTTP/1.1\r\n", Http1),
            (b"CONNECT db:5432 HTTP/1.1\r\n", Http1),
            (b"M-SEARCH * HTTP/1.1\r\n", Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", Http2),
            // What lenient servers accept is HTTP too: an app behind the sidecar would read
            // it as a request, headers and all.
            (b"GET / HTTP/1.1\nHost: x\n\n", Http1),
            (b"\r\n\r\nGET / HTTP/1.1\r\n", Http1),
            (b"\n GET / HTTP/1.1\r\n", Http1),
            (b" GET / HTTP/1.1\r\n", Http1),
            (b"get / HTTP/1.1\r\n", Http1),
            (b"GET / http/1.1\r\n", Http1),
            (b"GET  / HTTP/1.1\r\n", Http1),
            (b"GET\t/\tHTTP/1.1\r\n", Http1),
            (b"GET\x0b/\x0cHTTP/1.1\r\n", Http1),
            (b"GET / HTTP/2.0\r\n", Http1),
            (b"GET / HTTP/9\r\n", Http1),
            (b"PRI * HTTP/2.0\r\n\r\nXX", Http1),
            // Text protocols that look like a verb and arguments.
            (b"SET key value\r\n", Tcp),
            (b"PING\r\n", Tcp),
            (b"get key\r\n", Tcp),
            (b"GET key \r\n", Tcp),
            (b"EHLO mail.example\r\n", Tcp),
            (b"GET / SPDY/3\r\n", Tcp),
            (b"*2\r\n$3\r\nGET\r\n", Tcp),
            // TLS, SSH, binary protocols, garbage.
            (b"\x16\x03\x01\x02\x00\x01", Tcp),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Tcp),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Tcp),
            (b"GET /\x00 HTTP/1.1\r\n", Http1),
            (b"G\x00T / HTTP/1.1\r\n", Tcp),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                detect(bytes),
                *expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A method or target as long as the window is still HTTP-shaped: hyper refuses it.
        assert_eq!(detect(&[b'A'; 40]), NeedMore);
        assert_eq!(detect(&[b'A'; MAX_DETECT_BYTES]), Http1);
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(detect(&long), Http1);
        // Whatever follows the window changes nothing.
        long.extend_from_slice(b"\r\n");
        assert_eq!(detect(&long), Http1);
        assert_eq!(detect(&[b' '; MAX_DETECT_BYTES + 1]), Http1);
    }

    #[test]
    fn what_is_undecided_when_the_client_closes() {
        use Detected::*;
        for (bytes, expected) in [
            (&b""[..], Tcp),
            (b"GET / HT", Tcp),
            (b"GET key", Tcp),
            (b"PRI * HTTP/2", Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http2),
            (b"\x00", Tcp),
        ] {
            assert_eq!(detect_final(bytes), expected, "{bytes:?}");
        }
    }

    /// Once the bytes decide, more bytes never change the verdict (the sidecar acts on the
    /// first one): checked for every cut of every row above and of a few longer inputs.
    #[test]
    fn a_verdict_is_final() {
        let inputs: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n  get\t/a\x0bhttp/1.0\n\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nXX",
            b"SET key value\r\nGET / HTTP/1.1\r\n",
            b"\x16\x03\x01GET / HTTP/1.1",
        ];
        for input in inputs {
            let mut decided = None;
            for cut in 0..=input.len() {
                match (detect(&input[..cut]), decided) {
                    (Detected::NeedMore, None) => {}
                    (verdict, None) => decided = Some(verdict),
                    (verdict, Some(first)) => assert_eq!(verdict, first, "{input:?} at {cut}"),
                }
            }
        }
    }

    /// Holds the first line of a relayed connection whose client sends `sent` (and keeps its
    /// side open) and whose app says `greeting` first.
    async fn first_line_of(sent: &[u8], greeting: Option<&[u8]>, line: Duration) -> FirstLine {
        let (mut client, mut near_client) = tokio::io::duplex(1024);
        let (mut near_app, mut app) = tokio::io::duplex(1024);
        if let Some(greeting) = greeting {
            app.write_all(greeting).await.unwrap();
        }
        // A server-first protocol's client speaks once it has the greeting.
        let expected = greeting.map_or(0, <[u8]>::len);
        let sent = sent.to_vec();
        let client = tokio::spawn(async move {
            let mut heard = vec![0u8; expected];
            client.read_exact(&mut heard).await.unwrap();
            client.write_all(&sent).await.unwrap();
            client
        });
        let first = hold_first_line(&mut near_client, &mut near_app, line, line * 360).await;
        drop((client.await.unwrap(), app));
        first
    }

    #[tokio::test(start_paused = true)]
    async fn a_relayed_first_line_is_held_until_it_decides() {
        let line = Duration::from_secs(10);
        assert!(matches!(
            first_line_of(b"\x00\x01binary", None, line).await,
            FirstLine::Opaque(held) if &held[..] == b"\x00\x01binary"
        ));
        assert!(matches!(
            first_line_of(b"GET / HTTP/1.1\r\n", None, line).await,
            FirstLine::Http(held, Detected::Http1) if &held[..] == b"GET / HTTP/1.1\r\n"
        ));
        assert!(matches!(
            first_line_of(b"GET / HTTP/1.1\r\n", Some(b"220 hello\r\n"), line).await,
            FirstLine::HttpAfterApp
        ));
        assert!(matches!(
            first_line_of(b"EHLO me\r\n", Some(b"220 hello\r\n"), line).await,
            FirstLine::Opaque(_)
        ));
        // A line still undecided `line` after its first byte is cut off.
        let started = tokio::time::Instant::now();
        assert!(matches!(
            first_line_of(b"GET / HT", None, line).await,
            FirstLine::TooSlow
        ));
        assert_eq!(started.elapsed(), line);
    }

    /// A relay on which nobody speaks is given up after the line time: it held an app
    /// connection for `idle_timeout` before.
    #[tokio::test(start_paused = true)]
    async fn a_relay_on_which_nobody_speaks_is_given_up() {
        let line = Duration::from_secs(10);
        let (_client, mut near_client) = tokio::io::duplex(1024);
        let (mut near_app, _app) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let first = tokio::time::timeout(
            line * 3600,
            hold_first_line(&mut near_client, &mut near_app, line, line * 360),
        )
        .await
        .expect("the silent relay was given up");
        assert!(matches!(first, FirstLine::Silent));
        assert_eq!(started.elapsed(), line);
    }

    /// A client that never reads cannot hold the relay by leaving a greeting unwritten.
    #[tokio::test(start_paused = true)]
    async fn a_greeting_the_client_never_reads_is_given_up() {
        let line = Duration::from_secs(10);
        let (_client, mut near_client) = tokio::io::duplex(64);
        let (mut near_app, mut app) = tokio::io::duplex(64 * 1024);
        app.write_all(&[b'*'; 16 * 1024]).await.unwrap();
        let first = tokio::time::timeout(
            line * 3600,
            hold_first_line(&mut near_client, &mut near_app, line, line * 360),
        )
        .await
        .expect("the stalled greeting was given up");
        assert!(matches!(first, FirstLine::Gone));
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
