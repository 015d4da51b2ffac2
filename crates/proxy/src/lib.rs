//! The hush data plane: a sidecar that makes every connection between services mutual TLS 1.3
//! between SPIFFE identities, and tells the app who is calling.
//!
//! A sidecar gets its own X.509-SVID from the hush CA (a key made in memory, a join token or a
//! service-account token to prove who it is), renews it at about half its life, and swaps it in
//! without dropping a connection. Its listeners:
//!
//! * **inbound** — mutual TLS from other sidecars. The caller's certificate must chain to the
//!   trust bundle, be valid now and carry a SPIFFE ID of the trust domain; anything else is
//!   refused during the handshake, with the failed step logged and counted. HTTP requests reach
//!   the app with the caller's verified identity in `x-hush-peer-identity` and
//!   `x-forwarded-client-cert` (spoofed copies removed).
//! * **outbound** — plaintext from the app to a named upstream sidecar, which must prove one
//!   of the configured SPIFFE IDs.
//! * **transparent** — connections redirected by iptables, dialled at their original
//!   destination, or passed through when the destination is outside the mesh.
//! * **admin** — `/live`, `/ready`, `/metrics`, `/certs`, `POST /shutdown`.
//!
//! HTTP/1.1 (with upgrades such as WebSocket), HTTP/2 (gRPC) and opaque TCP are told apart by
//! their first bytes ([`detect`]) or set per listener.
//!
//! Inbound connections and requests are decided by identity policy ([`hush_policy`]) when
//! the configuration names one; the policy is reloaded when its files change.
//!
//! * [`ProxyConfig`] — the YAML configuration (from [`hush_config`], re-exported).
//! * [`Proxy`] — bind, then run until shutdown.
//! * [`Metrics`] — the Prometheus metrics.

mod access;
mod admin;
mod clock;
// The configuration types live in hush-config, so that the injector, `hush up` and the tests
// write the very type the sidecar reads; `crate::config` names them here as it always has.
use hush_config as config;
mod connect;
mod detect;
mod ending;
mod errors;
#[doc(hidden)]
pub mod fuzzing;
mod headers;
mod http;
mod identity;
mod inbound;
mod io;
mod metrics;
mod orig_dst;
mod outbound;
mod policy;
mod probe;
mod proxy;
mod serve;
mod tls;
mod trace;

pub use self::admin::LogControl;
pub use self::detect::{Detected, detect};
pub use self::headers::{PEER_IDENTITY_HEADER, XFCC_HEADER};
pub use self::identity::{IdentityStatus, Svid};
pub use self::metrics::Metrics;
pub use self::policy::{PolicyLoadError, load_policy, read_policy_sources};
pub use self::proxy::{Proxy, ProxyAddresses, ProxyError, check_policy, load_trust_bundle};
pub use hush_config::{
    APP_HEALTH_PREFIX, AccessLog, AdminConfig, AppProbe, CaConfig, ConfigError, DefaultPolicy,
    DestinationRule, Identities, InboundConfig, Limits, OutboundConfig, Passthrough, PolicyConfig,
    Protocol, ProxyConfig, TracingConfig, TransparentConfig,
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The modules from the bottom up: each may use only those listed before it. Shared
    /// helpers first, then HTTP forwarding, the accept loops, the two sides, and the proxy
    /// that assembles them. A module added to the crate must be placed here.
    #[rustfmt::skip]
    const LAYERS: &[&str] = &[
        // Shared helpers, with no knowledge of listeners.
        "clock", "errors", "headers", "orig_dst", "probe", "tls", "metrics", "io", "trace",
        "policy", "access", "detect", "ending", "connect", "identity",
        // Forwarding requests, then serving connections.
        "http", "serve",
        // The two sides, which know nothing of each other.
        "inbound", "outbound",
        // What puts them together.
        "admin", "proxy", "fuzzing",
    ];

    /// The crate modules a module's code (its unit tests aside) names as `crate::module`.
    fn uses(source: &str) -> BTreeSet<String> {
        let code = source
            .split("\n#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let mut used = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c};`
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for path in group.split(',') {
                    let name = path.trim().split("::").next().unwrap_or_default();
                    used.insert(name.to_owned());
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                used.insert(name);
            }
        }
        used
    }

    fn sources(dir: &Path, into: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                into.push((path.display().to_string(), text));
            }
        }
    }

    #[test]
    fn modules_depend_in_one_direction() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut problems = Vec::new();
        for (path, text) in &files {
            let relative = path.strip_prefix(&format!("{}/", src.display())).unwrap();
            let module = relative.split('/').next().unwrap().trim_end_matches(".rs");
            if module == "lib" {
                continue;
            }
            let Some(level) = LAYERS.iter().position(|m| *m == module) else {
                problems.push(format!(
                    "{relative}: module `{module}` is not placed in LAYERS"
                ));
                continue;
            };
            for used in uses(text) {
                // `config` is hush-config, re-exported at the crate root.
                if used == module || used == "config" {
                    continue;
                }
                match LAYERS.iter().position(|m| *m == used) {
                    Some(at) if at < level => {}
                    Some(_) => problems.push(format!(
                        "{relative}: `{module}` uses `{used}`, which is listed after it"
                    )),
                    None => problems.push(format!(
                        "{relative}: uses `crate::{used}`, which is not placed in LAYERS"
                    )),
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
