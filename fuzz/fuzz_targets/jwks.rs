//! JWK Sets come from the CA's bundle answer and from other trust domains' bundle endpoints:
//! reading one must never panic, and what is read must survive its own round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = hush_identity::JwtKeys::from_json(data) {
        let again = hush_identity::JwtKeys::from_json(&keys.to_json())
            .expect("a set hush wrote is a set hush reads");
        assert_eq!(again, keys);
        assert_eq!(keys.key_ids().count(), keys.len());
    }
});
