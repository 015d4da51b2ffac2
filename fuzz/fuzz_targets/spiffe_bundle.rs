//! SPIFFE bundles come from other trust domains' bundle endpoints, which hush does not control:
//! reading one must never panic, and what it accepts must write back to a bundle it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(trust_domain) = hush_identity::TrustDomain::new("partner.example") else {
        return;
    };
    if let Ok(bundle) = hush_identity::SpiffeBundle::parse(&trust_domain, data) {
        let again = hush_identity::SpiffeBundle::parse(&trust_domain, &bundle.to_json());
        assert!(again.is_ok(), "a bundle read once must read again: {again:?}");
    }
});
