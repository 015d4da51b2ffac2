//! The sidecar's and the gateway's YAML configurations come from people and ConfigMaps: any
//! text must give a configuration or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hush_proxy::ProxyConfig::from_yaml(text, "fuzz.yaml", std::path::Path::new("/"));
        let _ = hush_config::GatewayConfig::from_yaml(text, "fuzz.yaml", std::path::Path::new("/"));
    }
});
