//! Generated gRPC code for hush, and nothing else.
//!
//! * [`hush::ca::v1`] — hush's own CA service (`Certify`, `GetTrustBundle`).
//! * [`spiffe::workload`] — the SPIFFE Workload API (`SpiffeWorkloadAPI`), served by sidecars
//!   to their apps.
//! * [`istio::v1::auth`] — the Istio-compatible `IstioCertificateService`, wire-exact, so Istio
//!   agents can use hush's CA.
//!
//! The `.proto` sources live in the repository's top-level `proto/` folder. Convert to hush's own
//! types at the edge (in `hush-ca`, `hush-ca-client` and the CLI) instead of passing these structs
//! around.

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

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`), wire-exact with the file the SPIFFE project
/// publishes. That file declares no protobuf package, so its code is generated as `_`.
pub mod spiffe {
    /// The Workload API served to apps on a Unix socket.
    pub mod workload {
        tonic::include_proto!("_");
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

#[cfg(test)]
mod tests {
    use super::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
    use prost::Message;

    /// Istio agents put the PEM CSR in field 1 (string), the lifetime in field 3 (int64) and the
    /// metadata Struct in field 4. These bytes are what such an agent sends.
    #[test]
    fn istio_request_is_wire_exact() {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "k".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("v".into())),
            },
        );
        let request = IstioCertificateRequest {
            csr: "C".into(),
            validity_duration: 300,
            metadata: Some(prost_types::Struct { fields }),
        };
        let bytes = request.encode_to_vec();
        #[rustfmt::skip]
        let expected = [
            0x0a, 0x01, b'C',                // 1: csr
            0x18, 0xac, 0x02,                // 3: validity_duration = 300
            0x22, 0x0a,                      // 4: metadata (Struct, 10 bytes)
            0x0a, 0x08,                      //   fields entry
            0x0a, 0x01, b'k',                //     key
            0x12, 0x03, 0x1a, 0x01, b'v',    //     value: string_value "v"
        ];
        assert_eq!(bytes, expected);
        assert_eq!(
            IstioCertificateRequest::decode(&expected[..]).unwrap(),
            request
        );
    }

    #[test]
    fn istio_response_is_wire_exact() {
        let response = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            response.encode_to_vec(),
            [0x0a, 0x01, b'a', 0x0a, 0x01, b'b']
        );
    }

    #[test]
    fn service_names_match_the_wire() {
        assert_eq!(
            super::istio::v1::auth::istio_certificate_service_server::SERVICE_NAME,
            "istio.v1.auth.IstioCertificateService"
        );
        assert_eq!(
            super::hush::ca::v1::certificate_authority_server::SERVICE_NAME,
            "hush.ca.v1.CertificateAuthority"
        );
        // The published workload.proto has no package: clients call `/SpiffeWorkloadAPI/...`.
        assert_eq!(
            super::spiffe::workload::spiffe_workload_api_server::SERVICE_NAME,
            "SpiffeWorkloadAPI"
        );
    }
}
