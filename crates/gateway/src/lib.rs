//! The hush edge gateway: public TLS for browsers and API clients, and routes into the mesh.
//!
//! `hush gateway` terminates TLS 1.2 and 1.3 with certificates chosen by SNI, from PEM files
//! (reloaded when they change) or from an ACME CA (RFC 8555, HTTP-01 or TLS-ALPN-01), renewed
//! at two thirds of their life. Each request is routed by host and path prefix to a mesh
//! service and sent there with mutual TLS from the gateway's own SPIFFE identity, pinning the
//! identity the route names, so the service's policy decides on `spiffe://…/gateway`.
//!
//! * [`Gateway`] — bind, then run until shutdown; [`GatewayConfig`] is its configuration.
//! * [`acme`] — certificates from an ACME CA ([`acme::AcmeManager`]): stored, ordered,
//!   renewed, shared between replicas through the state directory.
//! * [`certs`] — the certificates served, by name ([`certs::CertStore`], rustls's resolver),
//!   and the ACME challenges in flight.
//! * [`files`] — certificates from PEM files, reloaded when they change.
//! * [`profile`] — public TLS: Mozilla's intermediate and modern profiles.
//! * [`redirect`] — the plaintext listener: HTTPS redirects and HTTP-01 answers.
//!
//! The forwarding into the mesh is the sidecar's ([`hush_proxy::Edge`]): the gateway is a
//! sidecar whose "app" is the Internet.

pub mod acme;
pub mod certs;
pub mod files;
mod gateway;
pub mod profile;
pub mod redirect;

pub use self::gateway::{EXPIRY_WARNING, Gateway, GatewayAddresses, GatewayError};
pub use hush_config::GatewayConfig;
