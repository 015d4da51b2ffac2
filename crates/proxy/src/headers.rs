//! What the app is told about its caller, and what no caller may tell it.
//!
//! The inbound side hands each request to the app with the caller's verified SPIFFE ID in
//! `x-hush-peer-identity` and Envoy's `x-forwarded-client-cert`. Whatever the caller wrote in
//! those headers (or in headers the configuration protects: `inbound.protected_headers`) is a
//! claim, not a proof, so it never reaches the app, in any spelling an app server might read
//! as the same header: any letter case, and any punctuation for `-` (CGI, WSGI and PHP turn
//! `-`, `_` and `.` alike into `_`), in the head and in trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The header carrying the caller's verified SPIFFE ID to the app.
pub const PEER_IDENTITY_HEADER: &str = "x-hush-peer-identity";
/// Envoy's header describing the caller's client certificate (`By=…;Hash=…;URI=…`).
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// The identity headers an inbound connection adds to each request, made once per connection.
#[derive(Clone, Debug)]
pub(crate) struct IdentityHeaders {
    pub(crate) peer: HeaderValue,
    pub(crate) xfcc: HeaderValue,
}

impl IdentityHeaders {
    /// `peer_id` is the caller's verified SPIFFE ID, `own_id` this sidecar's, `peer_leaf` the
    /// caller's certificate (DER), whose SHA-256 goes into the XFCC `Hash` field.
    pub(crate) fn new(peer_id: &str, own_id: &str, peer_leaf: &[u8]) -> Option<Self> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, peer_leaf);
        let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(Self {
            peer: HeaderValue::from_str(peer_id).ok()?,
            xfcc: HeaderValue::from_str(&format!("By={own_id};Hash={hash};URI={peer_id}")).ok()?,
        })
    }

    /// Puts the sidecar's own values in place of whatever the caller sent.
    pub(crate) fn insert(&self, headers: &mut HeaderMap) {
        headers.insert(PEER_IDENTITY_HEADER, self.peer.clone());
        headers.insert(XFCC_HEADER, self.xfcc.clone());
    }
}

/// Headers only the sidecar may set: the identity headers and those the configuration names.
#[derive(Clone, Debug)]
pub(crate) struct ProtectedHeaders {
    /// Lower case, as `http` stores names: removed directly.
    names: Vec<HeaderName>,
}

impl ProtectedHeaders {
    /// The identity headers and `extra` (names checked by the configuration).
    pub(crate) fn new(extra: &[String]) -> Self {
        let mut names = vec![
            HeaderName::from_static(PEER_IDENTITY_HEADER),
            HeaderName::from_static(XFCC_HEADER),
        ];
        for name in extra {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
        Self { names }
    }

    /// Removes every protected header from `headers`, in every spelling.
    pub(crate) fn strip(&self, headers: &mut HeaderMap) {
        for name in &self.names {
            headers.remove(name);
        }
        // Other spellings need a name with punctuation other than `-`; most requests have none,
        // and then nothing is allocated.
        let respelt = |name: &HeaderName| {
            name.as_str()
                .bytes()
                .any(|b| !b.is_ascii_alphanumeric() && b != b'-')
                && self
                    .names
                    .iter()
                    .any(|protected| same_header(protected, name))
        };
        if headers.keys().any(respelt) {
            let doomed: Vec<HeaderName> = headers.keys().filter(|n| respelt(n)).cloned().collect();
            for name in doomed {
                headers.remove(name);
            }
        }
    }
}

impl ProtectedHeaders {
    /// A scanner of relayed bytes for lines naming these headers.
    pub(crate) fn scanner(&self) -> HeaderLineScanner {
        HeaderLineScanner {
            names: self
                .names
                .iter()
                .map(|name| {
                    name.as_str()
                        .as_bytes()
                        .iter()
                        .map(|b| spelled(*b))
                        .collect()
                })
                .collect(),
            line: Line::Start,
        }
    }
}

/// How a header-name byte reads to a server that maps punctuation alike: letters in lower
/// case, digits as they are, anything else as `-`.
fn spelled(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() {
        b.to_ascii_lowercase()
    } else {
        b'-'
    }
}

/// Finds, in bytes relayed as opaque TCP, a line that names a protected header: a line break
/// (CR or LF: Python's header parser breaks lines at a lone CR too), then optional whitespace
/// or control bytes, a name any spelling of a protected one, optional spaces, and `:`.
///
/// This is what holds the guarantee whatever an app's HTTP parser accepts as a request line:
/// some take a line without a version (Python's HTTP/0.9 `GET /x`, which still reads
/// headers), some skip leading control bytes (Netty), some take any bytes for a method
/// (wsgiref, the JDK's server). No such parser can read a protected header from a stream in
/// which no line names one. The scan looks at the few bytes after each line break, so binary
/// streams cost a `memchr` pass.
#[derive(Debug)]
pub(crate) struct HeaderLineScanner {
    /// The protected names, spelled.
    names: Vec<Vec<u8>>,
    line: Line,
}

/// Where the scan is in the current line.
#[derive(Clone, Copy, Debug)]
enum Line {
    /// After a line break (or at the start): whitespace and control bytes may come first.
    Start,
    /// `len` bytes of a name read; `alive` has a bit for each protected name they still spell.
    Name { len: usize, alive: u64 },
    /// A whole protected name read, then spaces: a `:` makes it a header line.
    Colon,
    /// This line names no protected header.
    Dead,
}

impl HeaderLineScanner {
    /// Reads the next bytes of the stream; returns the index in `bytes` of the `:` that
    /// completes a protected header line, if one does. Bytes before it are harmless to relay:
    /// without the colon, no parser reads a header.
    pub(crate) fn find(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if let Line::Dead = self.line {
                // Only a line break can bring the scan back.
                i += memchr::memchr2(b'\n', b'\r', &bytes[i..])?;
            }
            let b = bytes[i];
            if b == b'\n' || b == b'\r' {
                self.line = Line::Start;
                i += 1;
                continue;
            }
            self.line = match self.line {
                Line::Start if b < 0x21 || b == 0x7f => Line::Start,
                Line::Start => self.name_byte(0, self.all(), b),
                Line::Name { len, alive } if b == b':' => {
                    if self.ends_here(len, alive) {
                        return Some(i);
                    }
                    Line::Dead
                }
                Line::Name { len, alive } if b == b' ' || b == b'\t' => {
                    if self.ends_here(len, alive) {
                        Line::Colon
                    } else {
                        Line::Dead
                    }
                }
                Line::Name { len, alive } => self.name_byte(len, alive, b),
                Line::Colon if b == b':' => return Some(i),
                Line::Colon if b == b' ' || b == b'\t' => Line::Colon,
                Line::Colon | Line::Dead => Line::Dead,
            };
            i += 1;
        }
        None
    }

    fn all(&self) -> u64 {
        // At most 64 names are tracked (the configuration allows far fewer in practice);
        // names beyond are still stripped from HTTP requests.
        u64::MAX >> (64 - self.names.len().min(64))
    }

    fn name_byte(&self, len: usize, alive: u64, b: u8) -> Line {
        let b = spelled(b);
        let mut still = 0;
        for (n, name) in self.names.iter().enumerate().take(64) {
            if alive & (1 << n) != 0 && name.get(len) == Some(&b) {
                still |= 1 << n;
            }
        }
        if still == 0 {
            Line::Dead
        } else {
            Line::Name {
                len: len + 1,
                alive: still,
            }
        }
    }

    fn ends_here(&self, len: usize, alive: u64) -> bool {
        self.names
            .iter()
            .enumerate()
            .take(64)
            .any(|(n, name)| alive & (1 << n) != 0 && name.len() == len)
    }
}

/// The client's side of a connection relayed as opaque TCP, read through a
/// [`HeaderLineScanner`]: the bytes up to a protected header's colon pass, then reading fails
/// and the relay ends. `tripped` says it happened.
#[derive(Debug)]
pub(crate) struct Scanned<S> {
    inner: S,
    scanner: Option<HeaderLineScanner>,
    tripped: bool,
}

impl<S> Scanned<S> {
    /// `scanner`: `None` relays without looking (the app spoke first: no HTTP server does).
    pub(crate) fn new(inner: S, scanner: Option<HeaderLineScanner>) -> Self {
        Self {
            inner,
            scanner,
            tripped: false,
        }
    }

    /// Whether the client sent a protected header line (and the relay was cut there).
    pub(crate) fn tripped(&self) -> bool {
        self.tripped
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Scanned<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the client sent a line naming a protected header",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(scanner) = &mut this.scanner
            && let Some(colon) = scanner.find(&buf.filled()[before..])
        {
            this.tripped = true;
            buf.set_filled(before + colon);
            if colon == 0 {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the client sent a line naming a protected header",
                )));
            }
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Scanned<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether an app server could read `name` as `protected` (already lower case, as `http`
/// keeps names): the same letters and digits, any punctuation in place of `-`.
fn same_header(protected: &HeaderName, name: &HeaderName) -> bool {
    let (a, b) = (protected.as_str().as_bytes(), name.as_str().as_bytes());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a == b || (!a.is_ascii_alphanumeric() && !b.is_ascii_alphanumeric()))
}

/// Tells whoever serves an HTTP/1 connection that a request's body was read to its end, so
/// that the connection may be parked (see `serve::serve_http`). It travels in the request's
/// extensions to the body that reads it; a request dropped unread drops it unsignalled.
#[derive(Clone)]
pub(crate) struct BodyEnd(std::sync::Arc<dyn Fn() + Send + Sync>);

impl BodyEnd {
    pub(crate) fn new(signal: impl Fn() + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(signal))
    }

    /// The body was read to its end.
    pub(crate) fn reached(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for BodyEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyEnd")
    }
}

/// A request body on its way to the app, with protected headers removed from its trailers (an
/// app server may merge trailers into the headers it shows the app).
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Incoming,
    protected: Option<std::sync::Arc<ProtectedHeaders>>,
    /// Signalled once the body is read to its end.
    end: Option<BodyEnd>,
}

impl RequestBody {
    /// `protected` is `None` on the outbound side, where the caller is the local app.
    pub(crate) fn new(
        inner: Incoming,
        protected: Option<std::sync::Arc<ProtectedHeaders>>,
    ) -> Self {
        Self {
            inner,
            protected,
            end: None,
        }
    }

    /// Signals `end` once the body is read to its end.
    pub(crate) fn ending(mut self, end: Option<BodyEnd>) -> Self {
        self.end = end;
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // A reader may stop at the last frame of a body of known length, without the `None`.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(end) = this.end.take() {
            end.reached();
        }
        match (polled, &this.protected) {
            (Poll::Ready(Some(Ok(frame))), Some(protected)) if frame.is_trailers() => {
                let mut trailers = frame.into_trailers().unwrap_or_default();
                protected.strip(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            (polled, _) => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_is_envoys_format() {
        let headers = IdentityHeaders::new(
            "spiffe://cluster.local/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/backend",
            b"abc",
        )
        .unwrap();
        assert_eq!(headers.peer, "spiffe://cluster.local/ns/shop/sa/frontend");
        // SHA-256("abc") is the FIPS 180-2 test vector.
        assert_eq!(
            headers.xfcc,
            "By=spiffe://cluster.local/ns/shop/sa/backend;\
             Hash=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad;\
             URI=spiffe://cluster.local/ns/shop/sa/frontend"
        );
    }

    /// One row per stream: where (if anywhere) a line naming a protected header completes.
    #[test]
    fn a_line_naming_a_protected_header_is_found_in_any_bytes() {
        let protected = ProtectedHeaders::new(&["X-Auth-User".to_string()]);
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"GET /x\r\nx-hush-peer-identity: a\r\n", Some(28)),
            (b"GET /x\nX_Hush_Peer_Identity:a", Some(27)),
            (
                b"\x00GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert : b",
                Some(50),
            ),
            (b"x-auth-user:root", Some(11)),
            (b"a\rx.auth.user\t:root", Some(14)),
            (b"a\n \x01x-auth-user:root", Some(15)),
            // Not a header line: a colon elsewhere, another name, the name mid-line.
            (b"GET /x-hush-peer-identity: HTTP/1.1\r\n", None),
            (b"x-hush-peer-identityy: a\r\nx-hush-peer-identit: b", None),
            (b"xx-auth-user: a\nx-auth user: b\nx-auth-user x: c", None),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None),
            (b"", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                protected.scanner().find(bytes),
                *expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            // Cut anywhere, the stream reads the same: the colon is found in its piece.
            for cut in 0..=bytes.len() {
                let mut scanner = protected.scanner();
                let found = scanner
                    .find(&bytes[..cut])
                    .or_else(|| scanner.find(&bytes[cut..]).map(|i| i + cut));
                assert_eq!(found, *expected, "cut at {cut}: {bytes:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_relay_stops_at_the_colon_of_a_protected_header() {
        use tokio::io::AsyncReadExt;
        let protected = ProtectedHeaders::new(&[]);
        let sent = b"GET /x\nHost: a\nx-hush-peer-identity: forged\n\n".to_vec();
        let mut scanned = Scanned::new(&sent[..], Some(protected.scanner()));
        let mut relayed = Vec::new();
        let read = scanned.read_to_end(&mut relayed).await;
        assert!(read.is_err());
        assert!(scanned.tripped());
        assert_eq!(relayed, b"GET /x\nHost: a\nx-hush-peer-identity");
        // The app spoke first: nothing is looked at.
        let mut unscanned = Scanned::new(&sent[..], None);
        let mut relayed = Vec::new();
        unscanned.read_to_end(&mut relayed).await.unwrap();
        assert_eq!(relayed, sent);
    }

    /// Every spelling an app server could read as a protected header goes; look-alikes that
    /// differ in a letter stay.
    #[test]
    fn protected_headers_go_in_every_spelling() {
        let protected = ProtectedHeaders::new(&["X-User".to_string()]);
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-hush-peer-identity", "a"),
            ("X-Hush-Peer-Identity", "b"),
            ("x_hush_peer_identity", "c"),
            ("x.hush.peer.identity", "d"),
            ("x-hush_peer~identity", "e"),
            ("X-FORWARDED-CLIENT-CERT", "f"),
            ("x_forwarded_client_cert", "g"),
            ("x-user", "h"),
            ("x_user", "i"),
            ("x-hush-peer-identityy", "kept"),
            ("x-hush-peer-identit", "kept"),
            ("xhush-peer-identity", "kept"),
            ("x-users", "kept"),
            ("x-custom_header", "kept"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        protected.strip(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "x-custom_header",
                "x-hush-peer-identit",
                "x-hush-peer-identityy",
                "x-users",
                "xhush-peer-identity",
            ]
        );
        assert!(headers.values().all(|v| v == "kept"));
    }
}
