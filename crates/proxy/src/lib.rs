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
mod detect;
mod ending;
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
