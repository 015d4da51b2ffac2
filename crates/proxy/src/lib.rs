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
//! * **workload API** — the SPIFFE Workload API on a Unix socket, for an app that does its own
//!   mTLS or wants JWT-SVIDs: the app's X.509-SVID (a key of its own), bundles, JWT-SVIDs.
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
mod bulk;
mod capacity;
mod clock;
// The configuration types live in hush-config, so that the injector, `hush up` and the tests
// write the very type the sidecar reads; `crate::config` names them here as it always has.
use hush_config as config;
mod connect;
mod detect;
mod edge;
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
mod workload_api;

pub use self::admin::LogControl;
pub use self::capacity::{BYTES_PER_CONNECTION, RESERVED_BYTES};
pub use self::detect::{Detected, detect};
pub use self::edge::{Edge, EdgeRoute};
pub use self::headers::{PEER_IDENTITY_HEADER, XFCC_HEADER};
pub use self::identity::{IdentityStatus, Svid};
pub use self::metrics::Metrics;
pub use self::policy::{PolicyLoadError, load_policy, read_policy_sources};
pub use self::proxy::{Proxy, ProxyAddresses, ProxyError, check_policy, load_trust_bundle};
pub use hush_config::{
    APP_HEALTH_PREFIX, AccessLog, AdminConfig, AppProbe, CaConfig, ConfigError, DefaultPolicy,
    DestinationRule, Identities, InboundConfig, Limits, OutboundConfig, Passthrough, PolicyConfig,
    Protocol, ProxyConfig, Reattest, TracingConfig, TransparentConfig, WorkloadApiConfig,
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use syn::visit::Visit;

    /// The modules in layers, from the bottom up. A module may use the modules of the layers
    /// before its own, never one of its own layer or a later one. Shared helpers first, then
    /// HTTP forwarding, the accept loops, the two sides, and what assembles them. A module
    /// added to the crate must be placed here.
    const LAYERS: &[&[&str]] = &[
        &["bulk"],
        &[
            "capacity", "clock", "errors", "headers", "orig_dst", "probe", "tls",
        ],
        &["metrics"],
        &["io", "trace", "policy"],
        &["access", "detect", "ending", "connect", "identity"],
        &["http", "workload_api"],
        &["serve"],
        // The two sides know nothing of each other.
        &["inbound", "outbound"],
        // The gateway's public listener forwards as an outbound listener does.
        &["edge"],
        &["admin", "fuzzing"],
        &["proxy"],
    ];

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// The crate's top-level modules a file's code (its `#[cfg(test)]` items aside) names,
    /// by `crate::` paths and by `super::` paths that climb out of its own module.
    struct Uses {
        /// The module path of what is being read: `["http", "exchange"]`.
        at: Vec<String>,
        used: BTreeSet<String>,
    }

    impl Uses {
        /// A path's segments, the first of them resolved against where it appears.
        fn record(&mut self, segments: &[String]) {
            let mut at = self.at.clone();
            let mut rest = segments;
            match rest.first().map(String::as_str) {
                Some("crate") => {
                    at.clear();
                    rest = &rest[1..];
                }
                Some("super") => {
                    while rest.first().map(String::as_str) == Some("super") {
                        at.pop();
                        rest = &rest[1..];
                    }
                }
                // A name in scope, a crate, or `self::`: nothing climbs out of the module.
                _ => return,
            }
            let top = at.first().or(rest.first());
            if let Some(top) = top {
                self.used.insert(top.clone());
            }
        }

        fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
            match tree {
                syn::UseTree::Path(path) => {
                    prefix.push(path.ident.to_string());
                    self.use_tree(prefix, &path.tree);
                    prefix.pop();
                }
                syn::UseTree::Group(group) => {
                    for tree in &group.items {
                        self.use_tree(prefix, tree);
                    }
                }
                syn::UseTree::Name(name) => {
                    prefix.push(name.ident.to_string());
                    self.record(prefix);
                    prefix.pop();
                }
                syn::UseTree::Rename(rename) => {
                    prefix.push(rename.ident.to_string());
                    self.record(prefix);
                    prefix.pop();
                }
                syn::UseTree::Glob(_) => self.record(prefix),
            }
        }
    }

    fn is_test_only(attrs: &[syn::Attribute]) -> bool {
        attrs.iter().any(|attr| {
            attr.path().is_ident("cfg")
                && attr
                    .parse_args::<syn::Ident>()
                    .is_ok_and(|ident| ident == "test")
        })
    }

    impl<'ast> Visit<'ast> for Uses {
        fn visit_item(&mut self, item: &'ast syn::Item) {
            let attrs = match item {
                syn::Item::Mod(item) => &item.attrs,
                syn::Item::Use(item) => &item.attrs,
                syn::Item::Fn(item) => &item.attrs,
                syn::Item::Impl(item) => &item.attrs,
                _ => return syn::visit::visit_item(self, item),
            };
            if !is_test_only(attrs) {
                syn::visit::visit_item(self, item);
            }
        }

        fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
            // An inline module: paths inside it start from it.
            self.at.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.at.pop();
        }

        fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
            self.use_tree(&mut Vec::new(), &item.tree);
        }

        fn visit_path(&mut self, path: &'ast syn::Path) {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.record(&segments);
            syn::visit::visit_path(self, path);
        }

        fn visit_macro(&mut self, mac: &'ast syn::Macro) {
            // Paths inside a macro's tokens (`tokio::select!`, `format!`) are not parsed; a
            // `crate::` path there is caught by its text.
            let tokens = mac.tokens.to_string().replace(' ', "");
            for (at, _) in tokens.match_indices("crate::") {
                let name: String = tokens[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                self.used.insert(name);
            }
            syn::visit::visit_macro(self, mac);
        }
    }

    /// Every source file of the crate, with its module path.
    fn sources(dir: &Path, module: &[String], into: &mut Vec<(Vec<String>, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut inner = module.to_vec();
            if path.is_dir() {
                inner.push(name);
                sources(&path, &inner, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if name != "mod" && name != "lib" {
                    inner.push(name);
                }
                into.push((inner, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }

    fn problems_in(files: &[(Vec<String>, String)]) -> Vec<String> {
        let mut problems = Vec::new();
        for (at, text) in files {
            let Some(module) = at.first() else { continue };
            let file = at.join("::");
            let Some(level) = layer_of(module) else {
                problems.push(format!("{file}: module `{module}` is not placed in LAYERS"));
                continue;
            };
            let mut uses = Uses {
                at: at.clone(),
                used: BTreeSet::new(),
            };
            uses.visit_file(&syn::parse_file(text).unwrap());
            for used in uses.used {
                // `config` is hush-config, named at the crate root.
                if used == *module || used == "config" {
                    continue;
                }
                match layer_of(&used) {
                    Some(at) if at < level => {}
                    Some(_) => problems.push(format!(
                        "{file}: `{module}` uses `{used}`, which is not in an earlier layer"
                    )),
                    None => problems.push(format!(
                        "{file}: uses `{used}`, which is not placed in LAYERS"
                    )),
                }
            }
        }
        problems
    }

    #[test]
    fn modules_depend_in_one_direction() {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &[],
            &mut files,
        );
        let problems = problems_in(&files);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// The ways a module can name another, each caught.
    #[test]
    fn every_way_of_naming_a_module_is_seen() {
        let file = |at: &[&str], text: &str| {
            (
                at.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                text.to_owned(),
            )
        };
        let cases = [
            file(
                &["http"],
                "use crate::{metrics::{Metrics}, inbound::Inbound};",
            ),
            file(
                &["http", "exchange"],
                "fn f() { super::super::outbound::run(); }",
            ),
            file(&["http"], "fn f(throttle: crate::serve::Throttle) {}"),
            file(
                &["inbound"],
                "fn f() { tokio::select! { _ = crate::outbound::x() => {} } }",
            ),
            file(
                &["http"],
                "mod inner { fn f() { super::super::proxy::run(); } }",
            ),
        ];
        for case in cases {
            assert_eq!(
                problems_in(std::slice::from_ref(&case)).len(),
                1,
                "{}",
                case.1
            );
        }
        let allowed = [
            file(
                &["http"],
                "// crate::outbound in a comment\nuse crate::metrics::Metrics;",
            ),
            file(
                &["http"],
                "#[cfg(test)]\nmod tests { use crate::outbound::X; }",
            ),
            file(&["http", "exchange"], "use super::HttpContext;"),
        ];
        for case in allowed {
            assert_eq!(
                problems_in(std::slice::from_ref(&case)),
                Vec::<String>::new()
            );
        }
    }
}
