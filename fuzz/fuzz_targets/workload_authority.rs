//! The Workload API rewrites invalid `:authority` values in the HTTP/2 header blocks an app
//! sends before h2 reads them (gRPC clients on Unix sockets send their socket's path). It reads
//! bytes from any process that can reach the socket: it must never panic, never make the stream
//! longer (a rewrite only shortens a value), and give the same bytes however the app's writes
//! were split.
#![no_main]

use hush_proxy::fuzzing::rewrite_authorities;
use libfuzzer_sys::fuzz_target;

/// What every HTTP/2 client sends first; most inputs start with it, so the frames get read.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let input = [PREFACE, rest].concat();
    let whole = rewrite_authorities(&[&input]);
    // The same bytes in pieces of a size the input chose.
    let size = usize::from(split).max(1);
    let pieces: Vec<&[u8]> = input.chunks(size).collect();
    let split_up = rewrite_authorities(&pieces);
    match (&whole, &split_up) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the output depends on how the input was split"),
        (Err(_), Err(_)) => {}
        // Cut off part-way in one case and not the other can only come from bytes the whole
        // input never got to: the whole run stops at its first error, the split one too.
        _ => panic!("one reading failed and the other did not: {whole:?} / {split_up:?}"),
    }
    if let Ok(out) = whole {
        assert!(
            out.len() <= input.len(),
            "{} bytes out of {} in",
            out.len(),
            input.len()
        );
    }
});
