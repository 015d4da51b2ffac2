//! TLS for hush: one place that decides how hush speaks TLS.
//!
//! Everything here builds on rustls with the aws-lc-rs provider. hush speaks **TLS 1.3 only**,
//! with AEAD cipher suites only and the hybrid post-quantum group X25519MLKEM768 preferred
//! (X25519 accepted). Certificates live in a [`CredentialStore`] that can be swapped while
//! connections are open: new handshakes see the new certificate, live connections keep theirs.
//!
//! * [`provider`] — the crypto provider with hush's algorithm choices.
//! * [`server_config`] / [`client_config`] — configurations built from those choices.
//! * [`CredentialStore`] — a hot-swappable certificate and key, usable as the server's and the
//!   client's certificate resolver.
//! * [`SpiffeClientVerifier`] — requires client certificates to be X.509-SVIDs of a trust domain.
//! * [`SpiffeServerVerifier`] — pins a server to the SPIFFE IDs it must prove (workload
//!   certificates carry no DNS names, so host-name checks cannot apply).
//! * [`TrustStore`] — the trust bundle in force, swappable like the credentials; both
//!   verifiers follow it.
//! * [`HandshakeFailure`] — a failed handshake explained: which step (hello, certificate chain,
//!   validity, SPIFFE ID), a short reason for metrics ([`FailureReason`]), and plain words for
//!   people.

mod config;
mod credentials;
mod explain;
pub mod hello;
mod trust;
mod verify;

pub use self::config::{
    ALPN_H2, TlsConfigError, client_config, client_config_with_roots, provider, server_config,
};
pub use self::credentials::{CredentialError, CredentialStore};
pub use self::explain::{
    FailureReason, HandshakeFailure, HandshakeStep, explain_io_error, explain_tls_error,
};
pub use self::trust::{TrustStore, TrustUpdateError};
pub use self::verify::{
    ExpectedServer, PeerIdentityError, SpiffeClientVerifier, SpiffeServerVerifier, peer_spiffe_id,
};
pub use rustls;
