//! `hush diagnose` reads whatever a server sends back (and what it sent itself) as TLS hellos:
//! any bytes must be read as a hello or named as something else, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hush_tls::hello::client_hello(data);
    let _ = hush_tls::hello::server_first(data);
});
