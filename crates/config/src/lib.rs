//! The sidecar's configuration (`hush proxy --config FILE`) as typed values that can be both
//! read and written.
//!
//! The sidecar reads it; the Kubernetes injector writes it into every pod it injects, `hush up`
//! builds it for each sidecar of its local mesh, and the end-to-end tests write it for the
//! sidecars they start. One type for all of them means a field added here is known to each
//! writer at once, instead of being spelt again in YAML strings that drift apart. The crate is
//! pure (serde, YAML and the identity types; no runtime, no network), so the injector and the
//! test helpers take it without taking the sidecar.
//!
//! * [`ProxyConfig`] — the whole configuration: [`ProxyConfig::load`] and
//!   [`ProxyConfig::from_yaml`] parse and validate it (unknown keys are refused, every error
//!   names the field), [`ProxyConfig::to_yaml`] writes it back as short, readable YAML that
//!   reads back equal: durations as `10s`, `500ms`, `1h`, and absent sections, empty lists and
//!   default values left out.
//! * [`GatewayConfig`] — the edge gateway's configuration (`hush gateway --config FILE`), with
//!   the same conventions; its `ca`, `admin` and `limits` sections are the sidecar's.
//! * [`ConfigError`] — why a configuration was refused or could not be written.

mod duration;
mod gateway;
mod proxy;

pub use self::gateway::{
    AcmeChallenge, AcmeConfig, CertificateConfig, CertificateFiles, GatewayConfig, Hsts,
    HttpConfig, HttpsConfig, RouteConfig, TlsProfile,
};
pub use self::proxy::{
    APP_HEALTH_PREFIX, AccessLog, AdminConfig, AppProbe, CaConfig, ConfigError, DefaultPolicy,
    DestinationRule, Identities, InboundConfig, Limits, OutboundConfig, Passthrough, PolicyConfig,
    Protocol, ProxyConfig, Reattest, TracingConfig, TransparentConfig, WorkloadApiConfig,
};
