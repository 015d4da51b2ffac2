//! SPIFFE IDs arrive from certificates, tokens and configuration: parsing must never panic, and
//! whatever parses must print back to exactly the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = hush_identity::SpiffeId::new(text) {
            assert_eq!(id.to_string(), text);
            assert!(id.as_str().len() <= 2048);
        }
        let _ = hush_identity::TrustDomain::new(text);
    }
});
