//! Trust bundles and certificates are read from files users hand to hush: PEM parsing, the
//! X.509-SVID checks and the certificate summary must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hush_identity::TrustBundle::from_pem(data, None);
    let _ = hush_identity::check_leaf_svid(data);
    let _ = hush_identity::check_signing_cert(data);
    let _ = hush_identity::CertificateSummary::from_der(data);
});
