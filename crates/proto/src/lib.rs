//! Generated gRPC code for hush, and nothing else.
//!
//! * [`hush::ca::v1`] — hush's own CA service (`Certify`, `GetTrustBundle`).
//! * [`istio::v1::auth`] — the Istio-compatible `IstioCertificateService`, wire-exact, so Istio
//!   agents can use hush's CA.
//!
//! The `.proto` sources live in the repository's top-level `proto/` folder. Convert to hush's own
//! types at the edge (in `hush-ca` and the CLI) instead of passing these structs around.

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// hush's own protocol.
pub mod hush {
    /// The certificate authority.
    pub mod ca {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("hush.ca.v1");
        }
    }
}

/// The Istio CA protocol.
pub mod istio {
    /// Version 1.
    pub mod v1 {
        /// Authentication: certificate signing.
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}
