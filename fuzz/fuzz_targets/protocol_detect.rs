//! Protocol detection reads the first bytes of every connection, from peers and from apps: it
//! must never panic, and its verdict must be final — once a prefix decides, more bytes never
//! change the decision (the sidecar acts on the first decision it gets).
#![no_main]

use hush_proxy::{Detected, detect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(4096)];
    let whole = detect(data);
    let mut decided = None;
    for cut in 0..=data.len() {
        match (detect(&data[..cut]), decided) {
            (Detected::NeedMore, None) => {}
            (Detected::NeedMore, Some(first)) => {
                panic!("undecided again after {first:?} at {cut} bytes")
            }
            (verdict, None) => decided = Some(verdict),
            (verdict, Some(first)) => assert_eq!(verdict, first, "changed its mind at {cut} bytes"),
        }
    }
    if let Some(first) = decided {
        assert_eq!(whole, first);
    }
});
