//! The inbound side's decision about a connection's bytes, bytes in to what reaches the app:
//! a forged identity header must never get through.
//!
//! Three properties, each against a model written here rather than hush's own code:
//!
//! 1. Detection never takes a request for opaque bytes: whenever a lenient HTTP/1 server
//!    (Python's `http.server`, llhttp, Go) would read the bytes' first line as a request line
//!    with a version, `detect` does not answer `Tcp`.
//! 2. A connection relayed as opaque TCP never carries a request to the app, nor a line that
//!    names an identity header (whatever else a parser more lenient than the model takes for a
//!    request), however the client cuts its writes and whether or not the app speaks first:
//!    the bytes that reach the app are what the client sent, cut short only at the colon of
//!    such a line.
//! 3. Whatever headers a caller sends, the app gets exactly one `x-hush-peer-identity` and one
//!    `x-forwarded-client-cert`, the sidecar's, and no protected header, in any spelling.
#![no_main]

use hush_proxy::fuzzing::{Relayed, headers_for_app, opaque_connection};
use hush_proxy::{Detected, detect};
use libfuzzer_sys::fuzz_target;

const PEER: &str = "spiffe://cluster.local/ns/fuzz/sa/frontend";

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let bytes = &bytes[..bytes.len().min(2048)];

    if reads_a_request(bytes) {
        assert_ne!(detect(bytes), Detected::Tcp, "{:?}", String::from_utf8_lossy(bytes));
    }

    // The low bits of the control byte cut the bytes into writes; the high bit makes the app
    // greet first.
    let step = usize::from(control & 0x3f) + 1;
    let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
    let greeting = (control & 0x80 != 0).then_some(&b"220 ready\r\n"[..]);
    match opaque_connection(&chunks, greeting) {
        Relayed::Opaque(reached) => {
            assert!(bytes.starts_with(&reached), "the relay changed the bytes");
            assert!(
                !reads_a_request(&reached),
                "a request reached the app as opaque bytes: {:?}",
                String::from_utf8_lossy(&reached)
            );
            assert!(
                !names_a_protected_header(&reached),
                "a line naming an identity header reached the app: {:?}",
                String::from_utf8_lossy(&reached)
            );
            if reached.len() < bytes.len() {
                // Cut short only at the colon of such a line.
                assert_eq!(bytes[reached.len()], b':');
                assert!(names_a_protected_header(&bytes[..=reached.len()]));
            }
        }
        Relayed::Http => assert!(greeting.is_none(), "served as HTTP after the app spoke"),
        Relayed::Refused => assert!(greeting.is_some(), "refused though the app was silent"),
        Relayed::Gone => {}
    }

    let sent: Vec<(Vec<u8>, Vec<u8>)> = bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            Some((line[..colon].to_vec(), line[colon + 1..].trim_ascii().to_vec()))
        })
        .collect();
    let received = headers_for_app(&sent, &["X-Auth-User".to_owned()], PEER);
    let mut peer = 0;
    let mut xfcc = 0;
    for (name, value) in &received {
        match spelled(name).as_str() {
            "x-hush-peer-identity" => {
                peer += 1;
                assert_eq!(value, PEER.as_bytes(), "{name}");
            }
            "x-forwarded-client-cert" => {
                xfcc += 1;
                assert!(value.ends_with(format!(";URI={PEER}").as_bytes()), "{name}");
            }
            "x-auth-user" => panic!("a protected header reached the app: {name}"),
            _ => {}
        }
    }
    assert_eq!((peer, xfcc), (1, 1), "{received:?}");
});

/// How an app server that maps punctuation to one character (CGI, WSGI, PHP) reads a name.
fn spelled(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b.to_ascii_lowercase())
            } else {
                '-'
            }
        })
        .collect()
}

/// The model: whether some lenient HTTP/1 server reads the start of `bytes` as a request line
/// with a version, after which it reads headers. Blank lines before it are skipped (llhttp and
/// hyper skip empty ones); the line is split on whitespace as Python's `str.split` does; the
/// method must be an HTTP token (every server but Python's checks it, and Python dispatches
/// only to the methods an app defines); the third word must start with `HTTP/`, in any case.
fn reads_a_request(bytes: &[u8]) -> bool {
    for line in bytes.split(|b| *b == b'\n') {
        let words: Vec<&[u8]> = line
            .split(|b| is_space(*b))
            .filter(|word| !word.is_empty())
            .collect();
        if words.is_empty() {
            continue;
        }
        return words.len() >= 3
            && words[0].iter().all(|b| is_token_char(*b))
            && words[2].len() >= 5
            && words[2][..5].eq_ignore_ascii_case(b"HTTP/");
    }
    false
}

/// Whether some line of `bytes` (lines end at CR or LF, as Python's header parser has it)
/// is, after leading whitespace and control bytes, a protected header's name in any spelling,
/// optional spaces, and a colon: what any HTTP parser could read as that header.
fn names_a_protected_header(bytes: &[u8]) -> bool {
    const PROTECTED: [&str; 2] = ["x-hush-peer-identity", "x-forwarded-client-cert"];
    bytes.split(|b| *b == b'\n' || *b == b'\r').any(|line| {
        let line = match line.iter().position(|b| *b > 0x20 && *b != 0x7f) {
            Some(start) => &line[start..],
            None => return false,
        };
        // The name runs to a space, a tab or the colon; only spaces and tabs may follow it.
        let end = line
            .iter()
            .position(|b| matches!(b, b' ' | b'\t' | b':'))
            .unwrap_or(line.len());
        let (name, rest) = line.split_at(end);
        let gap = rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
        if rest.get(gap) != Some(&b':') {
            return false;
        }
        let spelled: String = name
            .iter()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b.to_ascii_lowercase())
                } else {
                    '-'
                }
            })
            .collect();
        PROTECTED.contains(&spelled.as_str())
    })
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f | 0x85 | 0xa0)
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
