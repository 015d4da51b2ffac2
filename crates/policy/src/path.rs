//! How a request path is read before policy judges it.
//!
//! App servers do not agree on what a path names. Tomcat, Jetty and Spring cut `;parameters`
//! from each segment, so `/public/..;/admin` is `/admin` to them; Go, nginx and Tomcat resolve
//! `.` and `..` segments while Express and other routers that match the path as sent do not;
//! some decode `%2F` into a separator, others keep it inside a segment. The sidecar forwards a
//! request as it came, so it cannot choose one of these for the app: it judges the path under
//! every reading that can differ ([`PathReadings`]) and lets the rules lean the safe way (a
//! DENY matches if any reading matches, an ALLOW only if every reading does).
//!
//! What no reading can be trusted for is refused ([`AmbiguousPath`]): backslashes (a separator
//! to some servers), encoded control characters, double encoding (`%252e` is `.` to an app
//! that decodes twice), malformed escapes and escapes that are not UTF-8, and dot segments
//! together with an encoded slash, a path parameter or an empty segment, which servers resolve
//! in different orders.

use std::borrow::Cow;
use std::fmt;

/// Why a path cannot be judged: every reading of it could be wrong for some app server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmbiguousPath {
    /// `\` or `%5C`: a separator to some servers (IIS, some Node and Java setups), a character
    /// to others.
    Backslash,
    /// `%00`–`%1F` or `%7F` (or, from a tool, a raw control character).
    ControlCharacter,
    /// `%25` followed by two hex digits: an app that decodes twice reads another character.
    DoubleEncoding,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// Percent-encoded bytes that are not UTF-8, such as the overlong `%C0%AE` (a `.`).
    NotUtf8,
    /// A `.` or `..` segment and an encoded slash (`%2F`): whether `%2F` separates decides
    /// what `..` removes.
    DotSegmentAndEncodedSlash,
    /// A `.` or `..` segment and a path parameter (`;`): servers that cut parameters see
    /// dot segments (`..;`) that others do not.
    DotSegmentAndParameter,
    /// A `.` or `..` segment and an empty segment (`//`): merging slashes before or after
    /// resolving gives different paths.
    DotSegmentAndEmptySegment,
}

impl fmt::Display for AmbiguousPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Backslash => {
                "the path holds a backslash (`\\` or `%5C`), which some servers read as `/`; \
                 send `/`"
            }
            Self::ControlCharacter => {
                "the path holds a control character (such as `%00`, `%0A` or `%7F`), which \
                 servers cut, refuse or pass on differently"
            }
            Self::DoubleEncoding => {
                "the path holds a percent-encoded `%` followed by hex digits (`%25XX`), which an \
                 app that decodes twice reads as another character; encode the path once"
            }
            Self::BadEscape => {
                "the path holds a `%` that is not followed by two hex digits; write a `%` as \
                 `%25`"
            }
            Self::NotUtf8 => {
                "the path's percent-encoded bytes are not UTF-8 (such as the overlong `%C0%AE`)"
            }
            Self::DotSegmentAndEncodedSlash => {
                "the path has a `.` or `..` segment and an encoded slash (`%2F`), which servers \
                 resolve differently; send the resolved path"
            }
            Self::DotSegmentAndParameter => {
                "the path has a `.` or `..` segment and a path parameter (`;`), which servers \
                 resolve differently; send the resolved path"
            }
            Self::DotSegmentAndEmptySegment => {
                "the path has a `.` or `..` segment and an empty segment (`//`), which servers \
                 resolve differently; send the resolved path"
            }
        })
    }
}

impl std::error::Error for AmbiguousPath {}

/// The readings of one request path that policy judges, each in the same canonical spelling
/// as path patterns: escapes of characters that mean the same encoded or not are decoded
/// (`%61` is `a`, `%2C` is `,`, `%C3%A9` is `é`), the escapes that stay (`%2F`, `%25`, `%20`,
/// `%3F`…) are upper-case.
///
/// 1. **As sent**: nothing resolved, `%2F` kept (routers that match the path as sent, such
///    as Express).
/// 2. **Resolved**: `%2F` decoded into a separator, `//` merged, `.` and `..` resolved
///    (RFC 3986 5.2.4; Go, nginx, Tomcat).
/// 3. **Without path parameters**: `;…` cut from every segment, then resolved as in 2
///    (Tomcat, Jetty, Spring).
///
/// Most paths read the same in all three and are kept once, without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathReadings<'a> {
    as_sent: Cow<'a, str>,
    /// The readings that differ from `as_sent` and from each other (at most two).
    others: Vec<String>,
}

impl PathReadings<'_> {
    /// Every distinct reading, the path as sent first.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.as_sent).chain(self.others.iter().map(String::as_str))
    }

    /// The path as sent, in canonical spelling.
    pub fn as_sent(&self) -> &str {
        &self.as_sent
    }

    /// Whether every reading is the same.
    pub fn is_single(&self) -> bool {
        self.others.is_empty()
    }
}

impl fmt::Display for PathReadings<'_> {
    /// The readings, `, `-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, reading) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(reading)?;
        }
        Ok(())
    }
}

/// Reads a request path (without its query string) the ways app servers do, or says why it
/// cannot be judged. See [`PathReadings`] for the readings.
pub fn read_path(path: &str) -> Result<PathReadings<'_>, AmbiguousPath> {
    if is_plain(path) {
        return Ok(PathReadings {
            as_sent: Cow::Borrowed(path),
            others: Vec::new(),
        });
    }
    // The path as sent, canonical, and where each raw segment sits in it: (start, where its
    // first raw `;` is or its end, end).
    let mut as_sent = String::with_capacity(path.len());
    let mut segments = Vec::new();
    for (i, raw) in path.split('/').enumerate() {
        if i > 0 {
            as_sent.push('/');
        }
        let start = as_sent.len();
        let parameters = canonical_into(raw, &mut as_sent)?;
        segments.push((start, parameters.unwrap_or(as_sent.len()), as_sent.len()));
    }
    let has_parameters = segments.iter().any(|&(_, cut, end)| cut != end);
    // The segments of the resolved reading (`%2F` separates) and of the one without
    // parameters.
    let resolved_pieces: Vec<&str> = segments
        .iter()
        .flat_map(|&(start, _, end)| as_sent[start..end].split(ENCODED_SLASH))
        .collect();
    let bare_pieces: Vec<&str> = if has_parameters {
        segments
            .iter()
            .flat_map(|&(start, cut, _)| as_sent[start..cut].split(ENCODED_SLASH))
            .collect()
    } else {
        Vec::new()
    };
    let is_dot = |piece: &&str| matches!(*piece, "." | "..");
    if resolved_pieces.iter().any(is_dot) || bare_pieces.iter().any(is_dot) {
        if as_sent.contains(ENCODED_SLASH) {
            return Err(AmbiguousPath::DotSegmentAndEncodedSlash);
        }
        if has_parameters {
            return Err(AmbiguousPath::DotSegmentAndParameter);
        }
        if has_empty_segment(&resolved_pieces) {
            return Err(AmbiguousPath::DotSegmentAndEmptySegment);
        }
    }
    let absolute = path.starts_with('/');
    let mut others = Vec::with_capacity(2);
    let mut add = |reading: String| {
        if reading != as_sent && !others.contains(&reading) {
            others.push(reading);
        }
    };
    add(resolve(&resolved_pieces, absolute));
    if has_parameters {
        add(resolve(&bare_pieces, absolute));
    }
    Ok(PathReadings {
        as_sent: Cow::Owned(as_sent),
        others,
    })
}

/// `%2F` as the canonical spelling writes it: the only way a `/` can stand inside a segment.
const ENCODED_SLASH: &str = "%2F";

/// Whether every reading of `path` is `path` itself: no escape, parameter, backslash,
/// character that must be escaped, empty segment inside or dot segment. Checked for every
/// request, in one pass.
fn is_plain(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if byte == b'/' {
            if !plain_segment(&bytes[start..i], start == 0) {
                return false;
            }
            start = i + 1;
        } else if !PLAIN[usize::from(byte)] {
            return false;
        }
    }
    // The last segment may be empty: a trailing `/`.
    bytes.len() == start || plain_segment(&bytes[start..], start == 0)
}

/// A segment that reads the same every way: not `.` or `..`, and not empty unless it is the
/// one before a leading `/`.
#[inline]
fn plain_segment(segment: &[u8], first: bool) -> bool {
    match segment {
        b"" => first,
        b"." | b".." => false,
        _ => true,
    }
}

/// The bytes a plain path is made of: every character that stands for itself (non-ASCII
/// bytes belong to UTF-8 characters, which do); `/` is looked at separately.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = byte >= 0x80 || matches!(ascii_form(byte as u8), AsciiForm::Itself);
        byte += 1;
    }
    table
};

/// How the canonical spelling writes an ASCII character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AsciiForm {
    /// As itself (a character an HTTP path may carry unescaped).
    Itself,
    /// As an upper-case escape (`%20`, `%3F`): it cannot stand in a path unescaped.
    Escaped,
    /// Refused wherever it appears.
    Refused(AmbiguousPath),
    /// Its own rules: `%`, `;` and `/`.
    Special,
}

const fn ascii_form(byte: u8) -> AsciiForm {
    match byte {
        b'\\' => AsciiForm::Refused(AmbiguousPath::Backslash),
        0..=0x1f | 0x7f => AsciiForm::Refused(AmbiguousPath::ControlCharacter),
        b'%' | b';' | b'/' => AsciiForm::Special,
        b' ' | b'#' | b'?' | b'<' | b'>' | b'`' => AsciiForm::Escaped,
        _ => AsciiForm::Itself,
    }
}

/// Appends `raw` (one segment, without raw `/`) in canonical spelling; returns where in `out`
/// its first raw `;` was written, if it has one.
fn canonical_into(raw: &str, out: &mut String) -> Result<Option<usize>, AmbiguousPath> {
    let bytes = raw.as_bytes();
    let mut parameters = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if !byte.is_ascii() {
            // A whole character: `raw` is a `str`, so it is valid UTF-8 already.
            let len = raw[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&raw[i..i + len]);
            i += len;
            continue;
        }
        match (byte, ascii_form(byte)) {
            (_, AsciiForm::Refused(why)) => return Err(why),
            (b'%', _) => {
                let decoded = escape_at(bytes, i).ok_or(AmbiguousPath::BadEscape)?;
                i += 3;
                if decoded.is_ascii() {
                    push_decoded_ascii(decoded, bytes, i, out)?;
                } else {
                    i = push_decoded_utf8(decoded, bytes, i, out)?;
                }
                continue;
            }
            (b';', _) => {
                parameters.get_or_insert(out.len());
                out.push(';');
            }
            (_, AsciiForm::Escaped) => push_escape(byte, out),
            _ => out.push(char::from(byte)),
        }
        i += 1;
    }
    Ok(parameters)
}

/// An escaped ASCII byte, written the canonical way. `next` is the index after its escape.
fn push_decoded_ascii(
    decoded: u8,
    bytes: &[u8],
    next: usize,
    out: &mut String,
) -> Result<(), AmbiguousPath> {
    match (decoded, ascii_form(decoded)) {
        (_, AsciiForm::Refused(why)) => Err(why),
        (b'%', _) => {
            // `%25` then two hex digits (raw or escaped themselves) decode to an escape.
            let (first, after) = unit_at(bytes, next).unwrap_or((0, next));
            let (second, _) = unit_at(bytes, after).unwrap_or((0, after));
            if first.is_ascii_hexdigit() && second.is_ascii_hexdigit() {
                return Err(AmbiguousPath::DoubleEncoding);
            }
            out.push_str("%25");
            Ok(())
        }
        // An encoded slash stays encoded: the readings differ on it.
        (b'/', _) => {
            out.push_str(ENCODED_SLASH);
            Ok(())
        }
        // An encoded `;` is a character, never a parameter, so it is written as one.
        (_, AsciiForm::Itself | AsciiForm::Special) => {
            out.push(char::from(decoded));
            Ok(())
        }
        (_, AsciiForm::Escaped) => {
            push_escape(decoded, out);
            Ok(())
        }
    }
}

/// A character whose UTF-8 bytes are escaped (`%C3%A9`), starting with `lead`; `next` is the
/// index after the lead's escape. Returns the index after the character.
fn push_decoded_utf8(
    lead: u8,
    bytes: &[u8],
    mut next: usize,
    out: &mut String,
) -> Result<usize, AmbiguousPath> {
    let len = match lead {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        // Continuation bytes alone, overlong leads (0xc0, 0xc1) and bytes no UTF-8 uses.
        _ => return Err(AmbiguousPath::NotUtf8),
    };
    let mut buffer = [lead, 0, 0, 0];
    for slot in buffer.iter_mut().take(len).skip(1) {
        if bytes.get(next) != Some(&b'%') {
            return Err(AmbiguousPath::NotUtf8);
        }
        *slot = escape_at(bytes, next).ok_or(AmbiguousPath::BadEscape)?;
        next += 3;
    }
    // `from_utf8` refuses overlong forms and surrogates as well as broken sequences.
    let text = std::str::from_utf8(&buffer[..len]).map_err(|_| AmbiguousPath::NotUtf8)?;
    out.push_str(text);
    Ok(next)
}

fn push_escape(byte: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

/// The byte `%XY` at `at` stands for, if it is a well-formed escape.
fn escape_at(bytes: &[u8], at: usize) -> Option<u8> {
    if bytes.get(at) != Some(&b'%') {
        return None;
    }
    let hi = hex(*bytes.get(at + 1)?)?;
    let lo = hex(*bytes.get(at + 2)?)?;
    Some(hi << 4 | lo)
}

/// The byte at `at` once decoded (itself, or what its escape stands for) and the index after
/// it.
fn unit_at(bytes: &[u8], at: usize) -> Option<(u8, usize)> {
    match bytes.get(at)? {
        b'%' => escape_at(bytes, at).map(|byte| (byte, at + 3)),
        &byte => Some((byte, at + 1)),
    }
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Whether an empty segment stands between two others (`a//b`); the one before a leading `/`
/// and a trailing one do not count.
fn has_empty_segment(pieces: &[&str]) -> bool {
    pieces.len() > 2 && pieces[1..pieces.len() - 1].iter().any(|p| p.is_empty())
}

/// Joins `pieces` with `//` merged and `.` and `..` resolved (a `..` at the root stays there).
/// A path that ends in `/`, `/.` or `/..` keeps a trailing `/`.
fn resolve(pieces: &[&str], absolute: bool) -> String {
    let mut kept: Vec<&str> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match *piece {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let trailing = pieces.len() > 1 && matches!(pieces.last(), Some(&("" | "." | "..")));
    let mut out = String::new();
    if absolute {
        out.push('/');
    }
    out.push_str(&kept.join("/"));
    if trailing && !kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(path: &str) -> Vec<String> {
        read_path(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .iter()
            .map(str::to_string)
            .collect()
    }

    /// One row per rule of the table in docs/policy.md.
    #[test]
    fn paths_are_read_every_way_a_server_could() {
        let cases: &[(&str, &[&str])] = &[
            // Normal paths: one reading, not copied.
            ("/api/v1/items", &["/api/v1/items"]),
            ("/", &["/"]),
            ("/a/", &["/a/"]),
            ("", &[""]),
            ("*", &["*"]),
            ("/.well-known/x", &["/.well-known/x"]),
            ("/é/x", &["/é/x"]),
            // Escapes of characters that mean the same either way are decoded; the rest are
            // upper-cased.
            ("/%61dmin", &["/admin"]),
            ("/a%2Cb%7E", &["/a,b~"]),
            ("/caf%C3%A9", &["/café"]),
            ("/a%20b%3fc", &["/a%20b%3Fc"]),
            ("/a<b", &["/a%3Cb"]),
            ("/a b", &["/a%20b"]),
            ("/100%25", &["/100%25"]),
            // Encoded slashes: kept in a segment, or a separator.
            ("/admin%2Fusers", &["/admin%2Fusers", "/admin/users"]),
            ("/a%2f%2Fb", &["/a%2F%2Fb", "/a/b"]),
            // Empty segments: kept, or merged.
            ("//admin", &["//admin", "/admin"]),
            ("/a//b/", &["/a//b/", "/a/b/"]),
            // Dot segments, raw or encoded: as sent, or resolved.
            ("/a/../admin", &["/a/../admin", "/admin"]),
            ("/%2e%2e/admin", &["/../admin", "/admin"]),
            ("/public/.%2E/admin", &["/public/../admin", "/admin"]),
            ("/a/./b/", &["/a/./b/", "/a/b/"]),
            ("/a/b/..", &["/a/b/..", "/a/"]),
            ("/..", &["/..", "/"]),
            // Path parameters: kept, or cut from each segment.
            ("/admin;x=1", &["/admin;x=1", "/admin"]),
            (
                "/admin;x=1/users;y",
                &["/admin;x=1/users;y", "/admin/users"],
            ),
            ("/;x/admin", &["/;x/admin", "/admin"]),
            ("/a%3Bb", &["/a;b"]),
            ("/a%3Bb;c", &["/a;b;c", "/a;b"]),
            // Together, without dot segments.
            (
                "/a;p/b%2Fc//d",
                &["/a;p/b%2Fc//d", "/a;p/b/c/d", "/a/b/c/d"],
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(readings(path), *expected, "{path}");
        }
        assert!(matches!(
            read_path("/api/v1/items").unwrap().as_sent,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn what_no_reading_can_be_trusted_for_is_refused() {
        use AmbiguousPath::*;
        let cases = [
            ("/admin\\users", Backslash),
            ("/admin%5Cusers", Backslash),
            ("/admin%5cusers", Backslash),
            ("/admin%00", ControlCharacter),
            ("/admin%0d%0a", ControlCharacter),
            ("/admin%7F", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/public/%252e%252e/admin", DoubleEncoding),
            ("/admin%252fusers", DoubleEncoding),
            ("/a%25%32%65", DoubleEncoding),
            ("/a%25%", BadEscape),
            ("/%", BadEscape),
            ("/%4", BadEscape),
            ("/%zz", BadEscape),
            ("/%u0061dmin", BadEscape),
            ("/%C0%AE%C0%AE/admin", NotUtf8),
            ("/%FF", NotUtf8),
            ("/%C3", NotUtf8),
            ("/%C3x", NotUtf8),
            ("/%A9", NotUtf8),
            ("/%ED%A0%80", NotUtf8),
            ("/x%2F..%2Fadmin", DotSegmentAndEncodedSlash),
            ("/admin/a%2F..%2F..%2Fpublic", DotSegmentAndEncodedSlash),
            ("/a/../b%2Fc", DotSegmentAndEncodedSlash),
            ("/public/..;/admin", DotSegmentAndParameter),
            ("/public/..;x=1/admin", DotSegmentAndParameter),
            ("/public;x/../admin", DotSegmentAndParameter),
            ("/a//../b", DotSegmentAndEmptySegment),
            ("//../admin", DotSegmentAndEmptySegment),
        ];
        for (path, why) in cases {
            assert_eq!(read_path(path), Err(why), "{path}");
        }
        // Each reason says what was wrong.
        assert!(Backslash.to_string().contains("backslash"));
        assert!(
            DotSegmentAndParameter
                .to_string()
                .contains("path parameter (`;`)")
        );
    }

    #[test]
    fn a_percent_sign_on_its_own_is_a_character() {
        assert_eq!(readings("/100%25off"), ["/100%25off"]);
        assert_eq!(readings("/a%25zz"), ["/a%25zz"]);
    }
}
