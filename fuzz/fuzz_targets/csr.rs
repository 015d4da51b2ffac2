//! CSRs arrive over the network from anyone who can reach the CA: parsing and signature checking
//! must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hush_ca::VerifiedCsr::parse(data);
});
