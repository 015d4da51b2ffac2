//! A raw HTTP/2 client for hostile-input tests: frames are written by hand, so a test can send
//! what no well-behaved client library would (upper-case names, pseudo-headers out of place,
//! floods of resets, CONTINUATION or SETTINGS frames), and the reader reports exactly what the
//! server sent back: a response, a reset with its error code, a GOAWAY with its code, or a
//! closed connection.
//!
//! Requests are HPACK-encoded as "literal header field without indexing, new name" (RFC 7541,
//! section 6.2.2): no Huffman coding, no table, every byte as the test wrote it. Responses are
//! decoded in full (static and dynamic table, Huffman), because servers use all of it.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113, section 6).
pub(crate) mod kind {
    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const PING: u8 = 0x6;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const WINDOW_UPDATE: u8 = 0x8;
    pub(crate) const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub(crate) mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
}

/// SETTINGS parameters (RFC 9113, section 6.5.2).
pub(crate) mod setting {
    pub(crate) const HEADER_TABLE_SIZE: u16 = 0x1;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
}

/// An HTTP/2 error code (RFC 9113, section 7), printed by name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorCode(pub(crate) u32);

impl ErrorCode {
    pub(crate) const NO_ERROR: Self = Self(0x0);
    pub(crate) const PROTOCOL_ERROR: Self = Self(0x1);
    pub(crate) const REFUSED_STREAM: Self = Self(0x7);
    pub(crate) const CANCEL: Self = Self(0x8);
    pub(crate) const ENHANCE_YOUR_CALM: Self = Self(0xb);
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            other => return write!(f, "error code {other:#x}"),
        };
        f.write_str(name)
    }
}

// === frames ===

/// One HTTP/2 frame.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.kind {
            kind::DATA => "DATA",
            kind::HEADERS => "HEADERS",
            kind::RST_STREAM => "RST_STREAM",
            kind::SETTINGS => "SETTINGS",
            kind::PING => "PING",
            kind::GOAWAY => "GOAWAY",
            kind::WINDOW_UPDATE => "WINDOW_UPDATE",
            kind::CONTINUATION => "CONTINUATION",
            _ => "frame",
        };
        write!(
            f,
            "{name}(type {}, flags {:#x}, stream {}, {} bytes",
            self.kind,
            self.flags,
            self.stream,
            self.payload.len()
        )?;
        match self.kind {
            kind::RST_STREAM | kind::GOAWAY => write!(f, ", {:?}", self.error_code())?,
            kind::SETTINGS => write!(f, ", {:?}", self.settings_values())?,
            _ => {}
        }
        f.write_str(")")
    }
}

impl Frame {
    pub(crate) fn new(kind: u8, flags: u8, stream: u32, payload: Vec<u8>) -> Self {
        Self {
            kind,
            flags,
            stream,
            payload,
        }
    }

    /// The frame on the wire: a 9-byte header, then the payload.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let len = u32::try_from(self.payload.len()).expect("a frame under 16 MiB");
        assert!(len < 1 << 24, "a frame under 16 MiB");
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub(crate) fn settings(values: &[(u16, u32)]) -> Self {
        let mut payload = Vec::with_capacity(values.len() * 6);
        for (id, value) in values {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        Self::new(kind::SETTINGS, 0, 0, payload)
    }

    pub(crate) fn settings_ack() -> Self {
        Self::new(kind::SETTINGS, flag::ACK, 0, Vec::new())
    }

    /// A HEADERS frame carrying `block` (already HPACK-encoded).
    pub(crate) fn headers(stream: u32, block: Vec<u8>, flags: u8) -> Self {
        Self::new(kind::HEADERS, flags, stream, block)
    }

    pub(crate) fn continuation(stream: u32, block: Vec<u8>, end_headers: bool) -> Self {
        let flags = if end_headers { flag::END_HEADERS } else { 0 };
        Self::new(kind::CONTINUATION, flags, stream, block)
    }

    pub(crate) fn data(stream: u32, data: &[u8], end_stream: bool) -> Self {
        let flags = if end_stream { flag::END_STREAM } else { 0 };
        Self::new(kind::DATA, flags, stream, data.to_vec())
    }

    pub(crate) fn rst_stream(stream: u32, code: ErrorCode) -> Self {
        Self::new(kind::RST_STREAM, 0, stream, code.0.to_be_bytes().to_vec())
    }

    pub(crate) fn ping(payload: [u8; 8]) -> Self {
        Self::new(kind::PING, 0, 0, payload.to_vec())
    }

    pub(crate) fn window_update(stream: u32, increment: u32) -> Self {
        Self::new(
            kind::WINDOW_UPDATE,
            0,
            stream,
            increment.to_be_bytes().to_vec(),
        )
    }

    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub(crate) fn error_code(&self) -> ErrorCode {
        let at = if self.kind == kind::GOAWAY { 4 } else { 0 };
        let code = self
            .payload
            .get(at..at + 4)
            .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        ErrorCode(code)
    }

    /// The parameters of a SETTINGS frame.
    pub(crate) fn settings_values(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// Several frames as one write, so the server reads them together.
pub(crate) fn wire(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(Frame::encode).collect()
}

// === HPACK, by hand ===

/// An HPACK integer with an `n`-bit prefix, whose other bits in the first byte are `high`
/// (RFC 7541, section 5.1).
fn hpack_int(value: u64, n: u32, high: u8) -> Vec<u8> {
    let max = (1u64 << n) - 1;
    if value < max {
        return vec![high | value as u8];
    }
    let mut out = vec![high | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// One "literal header field without indexing, new name", with both strings as raw bytes.
pub(crate) fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_int(name.len() as u64, 7, 0));
    out.extend_from_slice(name);
    out.extend(hpack_int(value.len() as u64, 7, 0));
    out.extend_from_slice(value);
    out
}

/// A header block of literal fields, in the order given: pseudo-headers are whatever the test
/// puts where it likes.
pub(crate) fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    fields
        .iter()
        .flat_map(|(name, value)| literal(name.as_bytes(), value.as_bytes()))
        .collect()
}

/// A "dynamic table size update" to `size` (RFC 7541, section 6.3), allowed only at the start
/// of a header block.
pub(crate) fn table_size_update(size: u64) -> Vec<u8> {
    hpack_int(size, 5, 0x20)
}

/// The pseudo-headers of an ordinary GET for `path`.
pub(crate) fn get<'a>(path: &'a str, authority: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
    ]
}

// === HPACK decoding, for what servers send ===

/// HPACK's static table (RFC 7541, appendix A).
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The length in bits of each byte's Huffman code (RFC 7541, appendix B). The code is
/// canonical, so the codes themselves follow from the lengths; EOS is 30 ones.
const HUFFMAN_CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// The canonical Huffman code of each byte: (code, length), sorted by length then symbol.
fn huffman_codes() -> Vec<(u32, u8, u8)> {
    let mut symbols: Vec<(u8, u8)> = (0..=255u8)
        .map(|s| (HUFFMAN_CODE_LENGTHS[usize::from(s)], s))
        .collect();
    symbols.sort();
    let mut codes = Vec::with_capacity(256);
    let mut code: u32 = 0;
    let mut previous_len = symbols[0].0;
    for (i, (len, symbol)) in symbols.iter().enumerate() {
        if i > 0 {
            code = (code + 1) << (len - previous_len);
        }
        previous_len = *len;
        codes.push((code, *len, *symbol));
    }
    codes
}

/// Decodes a Huffman-coded string; the padding must be the start of EOS (all ones, < 8 bits).
pub(crate) fn huffman_decode(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let codes = huffman_codes();
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u8);
    for byte in bytes {
        for i in (0..8).rev() {
            acc = (acc << 1) | u32::from((byte >> i) & 1);
            bits += 1;
            if let Some((_, _, symbol)) = codes.iter().find(|(c, l, _)| *l == bits && *c == acc) {
                out.push(*symbol);
                acc = 0;
                bits = 0;
            } else if bits >= 30 {
                return Err("a Huffman code longer than 30 bits (EOS in a string)".into());
            }
        }
    }
    if bits >= 8 || acc != (1 << bits) - 1 {
        return Err(format!("bad Huffman padding ({bits} bits)"));
    }
    Ok(out)
}

/// A decoder for the header blocks a server sends, with its dynamic table.
#[derive(Debug)]
pub(crate) struct Decoder {
    dynamic: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            dynamic: VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }
}

impl Decoder {
    /// Decodes one whole header block into (name, value) pairs, in order.
    pub(crate) fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut fields = Vec::new();
        let mut at = 0;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                let index = read_int(block, &mut at, 7)?;
                let (name, value) = self.entry(index)?;
                fields.push((name, value));
            } else if first & 0xc0 == 0x40 {
                let (name, value) = self.read_literal(block, &mut at, 6)?;
                self.insert(name.clone(), value.clone());
                fields.push((name, value));
            } else if first & 0xe0 == 0x20 {
                let size = read_int(block, &mut at, 5)?;
                self.max = usize::try_from(size).map_err(|e| e.to_string())?;
                self.evict(0);
            } else {
                // Without indexing (0000) or never indexed (0001): both 4-bit prefixes.
                let field = self.read_literal(block, &mut at, 4)?;
                fields.push(field);
            }
        }
        Ok(fields
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(&n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    fn entry(&self, index: u64) -> Result<(Vec<u8>, Vec<u8>), String> {
        let index = usize::try_from(index).map_err(|e| e.to_string())?;
        match index {
            0 => Err("HPACK index 0".into()),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            }
            _ => self
                .dynamic
                .get(index - 62)
                .cloned()
                .ok_or_else(|| format!("HPACK index {index} is not in the table")),
        }
    }

    fn read_literal(
        &self,
        block: &[u8],
        at: &mut usize,
        prefix: u32,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let index = read_int(block, at, prefix)?;
        let name = if index == 0 {
            read_string(block, at)?
        } else {
            self.entry(index)?.0
        };
        let value = read_string(block, at)?;
        Ok((name, value))
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        if size <= self.max {
            self.size += size;
            self.dynamic.push_front((name, value));
        }
    }

    /// Evicts until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((n, v)) = self.dynamic.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

fn read_int(block: &[u8], at: &mut usize, prefix: u32) -> Result<u64, String> {
    let max = (1u64 << prefix) - 1;
    let first = *block.get(*at).ok_or("HPACK integer cut short")?;
    *at += 1;
    let mut value = u64::from(first) & max;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or("HPACK integer cut short")?;
        *at += 1;
        value += u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        if shift > 56 {
            return Err("HPACK integer too long".into());
        }
    }
}

fn read_string(block: &[u8], at: &mut usize) -> Result<Vec<u8>, String> {
    let huffman = block.get(*at).ok_or("HPACK string cut short")? & 0x80 != 0;
    let len = usize::try_from(read_int(block, at, 7)?).map_err(|e| e.to_string())?;
    let bytes = block.get(*at..*at + len).ok_or("HPACK string cut short")?;
    *at += len;
    if huffman {
        huffman_decode(bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

// === the connection ===

/// What one read brought.
#[derive(Debug)]
pub(crate) enum Read {
    Frame(Frame),
    /// The server closed the connection (or reset it).
    Closed,
    /// Nothing came within the patience given.
    Quiet,
}

/// How a stream (or its connection) ended, as the server put it.
#[derive(Debug)]
pub(crate) enum Outcome {
    Response(Response),
    /// RST_STREAM on the stream.
    Reset(ErrorCode),
    /// GOAWAY with an error, before the stream was answered.
    GoAway {
        code: ErrorCode,
    },
    /// The connection closed before the stream was answered.
    Closed,
    /// Nothing decisive within the patience given.
    Silent,
}

/// A response, whole.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// How long a test waits for the server's answer to one thing it sent.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A client connection speaking HTTP/2 by hand over `S`.
pub(crate) struct Conn<S> {
    pub(crate) io: S,
    buf: Vec<u8>,
    decoder: Decoder,
    /// Every SETTINGS frame the server sent (not its ACKs), in order.
    pub(crate) server_settings: Vec<Vec<(u16, u32)>>,
    /// Every frame read so far, for failure messages and counting.
    pub(crate) seen: Vec<Frame>,
    /// Whether [`Self::read`] answers the server's SETTINGS and PINGs, as a client must.
    pub(crate) answer_control: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Sends the preface and a SETTINGS frame with `settings`; does not wait for the server.
    pub(crate) async fn open(mut io: S, settings: &[(u16, u32)]) -> std::io::Result<Self> {
        let mut hello = PREFACE.to_vec();
        hello.extend(Frame::settings(settings).encode());
        io.write_all(&hello).await?;
        Ok(Self {
            io,
            buf: Vec::new(),
            decoder: Decoder::default(),
            server_settings: Vec::new(),
            seen: Vec::new(),
            answer_control: true,
        })
    }

    /// Writes `frames` in one write.
    pub(crate) async fn send(&mut self, frames: &[Frame]) -> std::io::Result<()> {
        self.io.write_all(&wire(frames)).await
    }

    /// Reads one frame, waiting at most `patience`.
    pub(crate) async fn read(&mut self, patience: Duration) -> Read {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(frame) = self.take_frame() {
                self.note(&frame).await;
                return Read::Frame(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return Read::Quiet,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = usize::from(self.buf[0]) << 16
            | usize::from(self.buf[1]) << 8
            | usize::from(self.buf[2]);
        if self.buf.len() < 9 + len {
            return None;
        }
        let frame = Frame::new(
            self.buf[3],
            self.buf[4],
            u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff,
            self.buf[9..9 + len].to_vec(),
        );
        self.buf.drain(..9 + len);
        Some(frame)
    }

    async fn note(&mut self, frame: &Frame) {
        self.seen.push(frame.clone());
        if frame.kind == kind::SETTINGS && !frame.has(flag::ACK) {
            self.server_settings.push(frame.settings_values());
            if self.answer_control {
                let _ = self.send(&[Frame::settings_ack()]).await;
            }
        }
        if frame.kind == kind::PING && !frame.has(flag::ACK) && self.answer_control {
            let mut pong = frame.clone();
            pong.flags = flag::ACK;
            let _ = self.send(&[pong]).await;
        }
    }

    /// Reads until `stream` is answered, reset, or the connection goes away or closes. A
    /// reset read earlier (while waiting for another stream) counts.
    pub(crate) async fn outcome(&mut self, stream: u32) -> Outcome {
        if let Some(reset) = self
            .seen
            .iter()
            .find(|f| f.kind == kind::RST_STREAM && f.stream == stream)
        {
            return Outcome::Reset(reset.error_code());
        }
        let mut status: Option<u16> = None;
        let mut partial: Option<Vec<u8>> = None;
        let mut body = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let frame = match self
                .read(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Read::Frame(frame) => frame,
                Read::Closed => return Outcome::Closed,
                Read::Quiet => return Outcome::Silent,
            };
            match frame.kind {
                kind::GOAWAY if frame.error_code() != ErrorCode::NO_ERROR => {
                    return Outcome::GoAway {
                        code: frame.error_code(),
                    };
                }
                kind::RST_STREAM if frame.stream == stream => {
                    return Outcome::Reset(frame.error_code());
                }
                kind::HEADERS | kind::CONTINUATION if frame.stream == stream => {
                    let mut fragment = frame.payload.clone();
                    if frame.kind == kind::HEADERS {
                        fragment = headers_fragment(&frame);
                    }
                    let mut collected = partial.take().unwrap_or_default();
                    collected.extend(fragment);
                    if !frame.has(flag::END_HEADERS) {
                        partial = Some(collected);
                        continue;
                    }
                    let fields = self
                        .decoder
                        .decode(&collected)
                        .unwrap_or_else(|e| panic!("the server's header block: {e}"));
                    if status.is_none() {
                        status = Some(
                            fields
                                .iter()
                                .find(|(n, _)| n == ":status")
                                .and_then(|(_, v)| v.parse().ok())
                                .unwrap_or_else(|| {
                                    panic!("a response without :status: {fields:?}")
                                }),
                        );
                    }
                    // Trailers (a second block) end the stream; their fields are not needed.
                    if frame.has(flag::END_STREAM) || is_end_of(&frame, &self.seen, stream) {
                        return finish(status, body);
                    }
                }
                kind::DATA if frame.stream == stream => {
                    body.extend_from_slice(&frame.payload);
                    // Keep the windows open for bodies larger than the initial window.
                    if !frame.payload.is_empty() {
                        let n = frame.payload.len() as u32;
                        let _ = self
                            .send(&[Frame::window_update(0, n), Frame::window_update(stream, n)])
                            .await;
                    }
                    if frame.has(flag::END_STREAM) {
                        return finish(status, body);
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads until the connection closes or `patience` passes without a frame; returns every
    /// frame read meanwhile.
    pub(crate) async fn drain(&mut self, patience: Duration) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        loop {
            match self.read(patience).await {
                Read::Frame(frame) => frames.push(frame),
                Read::Closed => return (frames, true),
                Read::Quiet => return (frames, false),
            }
        }
    }
}

/// The HEADERS frame's header block fragment, without padding or priority fields.
fn headers_fragment(frame: &Frame) -> Vec<u8> {
    let mut payload = &frame.payload[..];
    let mut pad = 0;
    if frame.has(0x8) {
        pad = usize::from(payload[0]);
        payload = &payload[1..];
    }
    if frame.has(0x20) {
        payload = &payload[5..];
    }
    payload[..payload.len() - pad].to_vec()
}

/// A CONTINUATION that ends a block belongs to the HEADERS before it, which holds END_STREAM.
fn is_end_of(frame: &Frame, seen: &[Frame], stream: u32) -> bool {
    frame.kind == kind::CONTINUATION
        && seen
            .iter()
            .rev()
            .find(|f| f.kind == kind::HEADERS && f.stream == stream)
            .is_some_and(|f| f.has(flag::END_STREAM))
}

fn finish(status: Option<u16>, body: Vec<u8>) -> Outcome {
    let status = status.unwrap_or_else(|| panic!("a stream ended without a response head"));
    Outcome::Response(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7541, appendix C.4.1: "www.example.com", Huffman-coded.
    #[test]
    fn huffman_decodes_the_rfc_example() {
        let coded = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman_decode(&coded).unwrap(), b"www.example.com");
        // C.6.1: a response's `:status 302`, `private`.
        assert_eq!(huffman_decode(&[0x64, 0x02]).unwrap(), b"302");
        assert_eq!(
            huffman_decode(&[0xae, 0xc3, 0x77, 0x1a, 0x4b]).unwrap(),
            b"private"
        );
    }

    /// RFC 7541, appendix C.6.1 and C.6.2: two responses sharing the dynamic table, with a
    /// table of 256 bytes that forces an eviction.
    #[test]
    fn decodes_the_rfc_responses_with_their_dynamic_table() {
        let mut decoder = Decoder {
            max: 256,
            ..Decoder::default()
        };
        let first = [
            0x48, 0x82, 0x64, 0x02, 0x58, 0x85, 0xae, 0xc3, 0x77, 0x1a, 0x4b, 0x61, 0x96, 0xd0,
            0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b, 0x81,
            0x66, 0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff, 0x6e, 0x91, 0x9d, 0x29, 0xad, 0x17, 0x18,
            0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82, 0xae, 0x43, 0xd3,
        ];
        let fields = decoder.decode(&first).unwrap();
        assert_eq!(fields[0], (":status".into(), "302".into()));
        assert_eq!(
            fields[3],
            ("location".into(), "https://www.example.com".into())
        );
        let second = [0x48, 0x83, 0x64, 0x0e, 0xff, 0xc1, 0xc0, 0xbf];
        let fields = decoder.decode(&second).unwrap();
        assert_eq!(fields[0], (":status".into(), "307".into()));
        assert_eq!(fields[1], ("cache-control".into(), "private".into()));
        assert_eq!(
            fields[3],
            ("location".into(), "https://www.example.com".into())
        );
    }

    #[test]
    fn integers_use_their_prefix_then_continuation_bytes() {
        // RFC 7541, appendix C.1: 10 and 1337 with a 5-bit prefix, 42 with an 8-bit one.
        assert_eq!(hpack_int(10, 5, 0), [0x0a]);
        assert_eq!(hpack_int(1337, 5, 0), [0x1f, 0x9a, 0x0a]);
        let mut at = 0;
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], &mut at, 5).unwrap(), 1337);
        assert_eq!(table_size_update(u64::from(u32::MAX))[0], 0x3f);
    }
}
