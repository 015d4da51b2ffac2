//! A client of the hush CA's gRPC API (`hush.ca.v1`): certificates for a join token or a
//! service-account token, renewal over mutual TLS with the current certificate, JWT-SVIDs for
//! that certificate's identity, and the trust bundle, all over TLS 1.3 verified against the
//! mesh's trust bundle.
//!
//! It is a crate of its own, apart from the CA (`hush-ca`), because every sidecar links it:
//! the sidecar needs these few calls, not the CA's Kubernetes types, TokenReview, CSR checks or
//! signing code. Keys and CSRs are the caller's business; this crate only carries them.
//!
//! * [`CaClient`] — `certify`, `renew`, `trust_bundle`, `mint_jwt_svid`;
//!   [`trust_bundle_jwt_keys`] reads the JWT keys of a bundle answer.
//! * [`channel`], [`channel_with_identity`] — the TLS channel to the CA, for other clients of
//!   the generated API (such as tests of the Istio-compatible service).
//! * [`with_bearer`] — the `authorization: Bearer …` header on a request.
//! * [`proto`] — the generated messages of `hush.ca.v1`.

mod client;

pub use self::client::{
    CaClient, ClientError, channel, channel_with_identity, trust_bundle_jwt_keys, with_bearer,
};
pub use hush_proto::hush::ca::v1 as proto;
