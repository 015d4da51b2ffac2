//! gRPC clients over a Unix socket send `:authority` values that are no authority: grpc-core
//! (Python, Ruby, C++ ≥ 1.57) sends the socket's path percent-encoded (`%2Frun%2F…`),
//! grpc-java the path itself. h2, under tonic, refuses such a request with a stream reset, so
//! py-spiffe could not call the Workload API at all. The authority means nothing on a Unix
//! socket; this rewrites it, in the client's bytes, before h2 reads them.
//!
//! Only header blocks are touched: HEADERS and CONTINUATION frames are gathered into one block,
//! and in it a literal `:authority` field (static name index 1, or the name written out) whose
//! value is not a plain, valid authority gets the value `localhost` (or `x` when the original
//! might be shorter). Everything else is copied as it is. The replacement is never longer than
//! the value it replaces, so an entry the client adds to the HPACK dynamic table is never
//! larger on h2's side than on the client's: h2 never evicts an entry the client still refers
//! to, and every index means the same on both sides. Header blocks are bounded; a client that
//! breaks the framing is cut off (h2 would end the connection for it anyway).

use std::io;

/// The connection preface every HTTP/2 client sends first.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
/// The largest frame h2 accepts from a client by default (SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME_LEN: usize = 16_384;
/// The largest header block gathered; h2 refuses far smaller header lists.
const MAX_BLOCK_LEN: usize = 64 * 1024;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The HTTP/2 stream from a client, with its authorities made valid.
#[derive(Debug, Default)]
pub(crate) struct AuthorityRewriter {
    /// Bytes read and not yet framed.
    input: Vec<u8>,
    /// Bytes ready for h2.
    output: Vec<u8>,
    preface_seen: bool,
    /// A header block waiting for its CONTINUATION frames: stream, END_STREAM, the block.
    pending: Option<(u32, bool, Vec<u8>)>,
}

impl AuthorityRewriter {
    /// Takes bytes the client sent; what can be passed on is then in [`Self::output`].
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        if !self.preface_seen {
            if self.input.len() < PREFACE_LEN {
                return Ok(());
            }
            // h2 checks it.
            self.output.extend_from_slice(&self.input[..PREFACE_LEN]);
            self.preface_seen = true;
            at = PREFACE_LEN;
        }
        while self.input.len() - at >= FRAME_HEADER_LEN {
            let header = &self.input[at..at + FRAME_HEADER_LEN];
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if len > MAX_FRAME_LEN {
                return Err(refused("a frame larger than the connection allows"));
            }
            if self.input.len() - at < FRAME_HEADER_LEN + len {
                break;
            }
            let kind = header[3];
            let flags = header[4];
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let end = at + FRAME_HEADER_LEN + len;
            let payload = self.input[at + FRAME_HEADER_LEN..end].to_vec();
            let frame = self.input[at..end].to_vec();
            at = end;
            self.frame(kind, flags, stream, &payload, &frame)?;
        }
        self.input.drain(..at);
        Ok(())
    }

    /// The bytes ready for h2, taken.
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        frame: &[u8],
    ) -> io::Result<()> {
        match (kind, self.pending.take()) {
            (HEADERS, None) => {
                let fragment = headers_fragment(flags, payload)?;
                let end_stream = flags & END_STREAM != 0;
                if flags & END_HEADERS != 0 {
                    self.emit(stream, end_stream, &rewrite_block(fragment)?);
                } else {
                    self.pending = Some((stream, end_stream, fragment.to_vec()));
                }
            }
            (CONTINUATION, Some((pending_stream, end_stream, mut block)))
                if pending_stream == stream =>
            {
                block.extend_from_slice(payload);
                if block.len() > MAX_BLOCK_LEN {
                    return Err(refused("a header block larger than the sidecar reads"));
                }
                if flags & END_HEADERS != 0 {
                    self.emit(stream, end_stream, &rewrite_block(&block)?);
                } else {
                    self.pending = Some((stream, end_stream, block));
                }
            }
            (_, Some(_)) => return Err(refused("a frame inside a header block")),
            (_, None) => self.output.extend_from_slice(frame),
        }
        Ok(())
    }

    /// Writes `block` as a HEADERS frame and as many CONTINUATION frames as it needs.
    fn emit(&mut self, stream: u32, end_stream: bool, block: &[u8]) {
        let mut chunks = block.chunks(MAX_FRAME_LEN).peekable();
        let mut first = true;
        if block.is_empty() {
            self.frame_header(
                0,
                HEADERS,
                END_HEADERS | if end_stream { END_STREAM } else { 0 },
                stream,
            );
            return;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let (kind, mut flags) = if first {
                (HEADERS, if end_stream { END_STREAM } else { 0 })
            } else {
                (CONTINUATION, 0)
            };
            if last {
                flags |= END_HEADERS;
            }
            self.frame_header(chunk.len(), kind, flags, stream);
            self.output.extend_from_slice(chunk);
            first = false;
        }
    }

    fn frame_header(&mut self, len: usize, kind: u8, flags: u8, stream: u32) {
        let len = u32::try_from(len).unwrap_or(0).to_be_bytes();
        self.output.extend_from_slice(&len[1..]);
        self.output.push(kind);
        self.output.push(flags);
        self.output.extend_from_slice(&stream.to_be_bytes());
    }
}

fn refused(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from the app: {what}"),
    )
}

/// The header block fragment of a HEADERS frame's payload, without padding and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    let mut fragment = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad, rest) = fragment
            .split_first()
            .ok_or_else(|| refused("a padded frame without its padding length"))?;
        padding = usize::from(pad);
        fragment = rest;
    }
    if flags & PRIORITY != 0 {
        fragment = fragment
            .get(5..)
            .ok_or_else(|| refused("a short priority"))?;
    }
    let end = fragment
        .len()
        .checked_sub(padding)
        .ok_or_else(|| refused("more padding than payload"))?;
    Ok(&fragment[..end])
}

/// Reads an HPACK integer with an `n`-bit prefix at `at` (RFC 7541, 5.1): its value and where
/// it ends.
fn integer(block: &[u8], at: usize, n: u32) -> io::Result<(usize, usize)> {
    let bad = || refused("a malformed header block");
    let max = (1usize << n) - 1;
    let mut value = usize::from(*block.get(at).ok_or_else(bad)?) & max;
    let mut at = at + 1;
    if value < max {
        return Ok((value, at));
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(at).ok_or_else(bad)?;
        at += 1;
        // Four continuation bytes are more than any length or index a header block has.
        if shift > 21 {
            return Err(bad());
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok((value, at));
        }
    }
}

/// Writes `value` as an HPACK integer with an `n`-bit prefix whose other bits are `high`.
fn write_integer(out: &mut Vec<u8>, high: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A string literal at `at`: (Huffman-coded, its bytes, where it ends).
fn string(block: &[u8], at: usize) -> io::Result<(bool, &[u8], usize)> {
    let huffman = block
        .get(at)
        .ok_or_else(|| refused("a malformed header block"))?
        & 0x80
        != 0;
    let (len, start) = integer(block, at, 7)?;
    let end = start
        .checked_add(len)
        .filter(|end| *end <= block.len())
        .ok_or_else(|| refused("a malformed header block"))?;
    Ok((huffman, &block[start..end], end))
}

/// Whether `value`, written plainly, is an authority h2 accepts as it is: a host (and port).
fn plain_authority(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]".contains(b))
}

/// The header block with every literal `:authority` made valid.
fn rewrite_block(block: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let start = at;
        if first & 0x80 != 0 {
            // Indexed field.
            at = integer(block, at, 7)?.1;
            out.extend_from_slice(&block[start..at]);
            continue;
        }
        if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            at = integer(block, at, 5)?.1;
            out.extend_from_slice(&block[start..at]);
            continue;
        }
        // A literal: with incremental indexing (01), or without / never indexed (0000, 0001).
        let (high, n) = if first & 0xc0 == 0x40 {
            (first & 0xc0, 6)
        } else {
            (first & 0xf0, 4)
        };
        let (index, after_index) = integer(block, at, n)?;
        let (is_authority, after_name) = if index == 0 {
            let (huffman, name, end) = string(block, after_index)?;
            (!huffman && name == b":authority", end)
        } else {
            (index == 1, after_index)
        };
        let (huffman, value, end) = string(block, after_name)?;
        at = end;
        if !is_authority || (!huffman && plain_authority(value)) {
            out.extend_from_slice(&block[start..at]);
            continue;
        }
        // Never longer than the original, decoded: a Huffman symbol is at most 30 bits.
        let shortest = if huffman {
            (value.len() * 8).saturating_sub(7).div_ceil(30)
        } else {
            value.len()
        };
        let replacement: &[u8] = if shortest >= b"localhost".len() {
            b"localhost"
        } else {
            b"x"
        };
        if shortest == 0 {
            // An empty value stays as it was; h2 says what it thinks of it.
            out.extend_from_slice(&block[start..at]);
            continue;
        }
        write_integer(&mut out, high, n, 1);
        write_integer(&mut out, 0, 7, replacement.len());
        out.extend_from_slice(replacement);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// `:method GET`, `:scheme http`, `:path /`, then `:authority` as a literal with
    /// incremental indexing of static name 1 (RFC 7541, C.3.1).
    fn block(authority: &[u8]) -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x84, 0x41];
        write_integer(&mut block, 0, 7, authority.len());
        block.extend_from_slice(authority);
        block
    }

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut rewriter = AuthorityRewriter::default();
        for chunk in chunks {
            rewriter.feed(chunk).unwrap();
        }
        std::mem::take(rewriter.output())
    }

    #[test]
    fn a_valid_authority_and_other_frames_pass_unchanged() {
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let headers = frame(HEADERS, END_HEADERS, 1, &block(b"www.example.com"));
        let data = frame(0x0, END_STREAM, 1, b"hello");
        let wire = [PREFACE, &settings, &headers, &data].concat();
        assert_eq!(run(&[&wire]), wire);
        // However the bytes arrive.
        let pieces: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(run(&pieces), wire);
    }

    #[test]
    fn a_socket_path_becomes_localhost() {
        for (sent, now) in [
            (&b"%2Frun%2Fhush%2Fworkload%2Fsocket"[..], &b"localhost"[..]),
            (b"/run/hush/workload/socket", b"localhost"),
            (b"%2Fs", b"x"),
        ] {
            let headers = frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(sent));
            let out = run(&[PREFACE, &headers]);
            let expected = frame(HEADERS, END_HEADERS | END_STREAM, 3, &block(now));
            assert_eq!(out, [PREFACE, &expected[..]].concat(), "{sent:?}");
        }
    }

    #[test]
    fn huffman_coded_names_and_values_literal_names_and_continuations() {
        // `:authority` written out as a literal name, never indexed, with a Huffman-coded
        // value of 12 bytes (at least 3 characters: replaced by `x`).
        let mut block = vec![0x82, 0x10];
        write_integer(&mut block, 0, 7, 10);
        block.extend_from_slice(b":authority");
        write_integer(&mut block, 0x80, 7, 12);
        block.extend_from_slice(&[0xaa; 12]);
        let mut expected_block = vec![0x82, 0x11, 0x01, b'x'];
        expected_block.truncate(4);
        // Split over HEADERS (padded, with priority) and a CONTINUATION.
        let (one, two) = block.split_at(5);
        let mut payload = vec![2];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(one);
        payload.extend_from_slice(&[0, 0]);
        let headers = frame(HEADERS, PADDED | PRIORITY, 5, &payload);
        let continuation = frame(CONTINUATION, END_HEADERS, 5, two);
        let out = run(&[PREFACE, &headers, &continuation]);
        let expected = frame(HEADERS, END_HEADERS, 5, &expected_block);
        assert_eq!(out, [PREFACE, &expected[..]].concat());
    }

    #[test]
    fn broken_framing_is_refused_not_buffered() {
        let mut rewriter = AuthorityRewriter::default();
        rewriter.feed(PREFACE).unwrap();
        // A frame header announcing 16 MiB.
        assert!(
            rewriter
                .feed(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1])
                .is_err()
        );

        let mut rewriter = AuthorityRewriter::default();
        let open = frame(HEADERS, 0, 1, &[0x82]);
        let data = frame(0x0, 0, 1, b"x");
        rewriter.feed(&[PREFACE, &open].concat()).unwrap();
        assert!(
            rewriter.feed(&data).is_err(),
            "a frame inside a header block"
        );

        // Endless CONTINUATIONs stop at the bound.
        let mut rewriter = AuthorityRewriter::default();
        rewriter.feed(&[PREFACE, &open].concat()).unwrap();
        let more = frame(CONTINUATION, 0, 1, &[0x82; MAX_FRAME_LEN]);
        let mut refused = false;
        for _ in 0..10 {
            if rewriter.feed(&more).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);

        // Garbage inside a block is refused, and so is an integer that never ends.
        assert!(rewrite_block(&[0x41, 0x7f]).is_err());
        assert!(rewrite_block(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn integers_round_trip() {
        for value in [0, 1, 14, 15, 16, 126, 127, 128, 300, 16_384, 1 << 20] {
            for n in [4, 5, 6, 7] {
                let mut out = Vec::new();
                write_integer(&mut out, 0, n, value);
                assert_eq!(
                    integer(&out, 0, n).unwrap(),
                    (value, out.len()),
                    "{value} {n}"
                );
            }
        }
    }
}
