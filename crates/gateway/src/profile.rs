//! Public TLS as Mozilla's server-side TLS recommendations describe it.
//!
//! * **intermediate** (the default): TLS 1.3, and TLS 1.2 with ECDHE key exchange and AEAD
//!   ciphers only (AES-GCM, ChaCha20-Poly1305) — what every browser and HTTP library of the
//!   last decade speaks. rustls has no CBC, RC4, 3DES, static-RSA or DHE suites at all, so
//!   there is nothing weaker to switch off.
//! * **modern**: TLS 1.3 only.
//!
//! TLS 1.0 and 1.1 are refused by both: rustls does not implement them. Key exchange offers
//! X25519MLKEM768 (post-quantum hybrid), X25519, P-256 and P-384. The server's cipher order
//! decides (AES-256-GCM, AES-128-GCM, then ChaCha20-Poly1305): every suite offered is strong,
//! so Mozilla leaves the choice to clients, but scanners (testssl.sh) count a server without an
//! order of its own as a finding, and hardware AES is the common case. Sessions resume by
//! tickets, whose keys rotate every six hours, so a returning client skips the signature.

use std::sync::Arc;

use hush_config::TlsProfile;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;

use crate::certs::ACME_TLS_ALPN;

/// The ALPN protocols the public listener offers, HTTP/2 first; with `acme_tls_alpn`, also
/// ACME's validation protocol (which the certificate resolver answers specially).
fn alpn(acme_tls_alpn: bool) -> Vec<Vec<u8>> {
    let mut protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_tls_alpn {
        protocols.push(ACME_TLS_ALPN.to_vec());
    }
    protocols
}

/// The TLS versions of `profile`.
pub fn versions(profile: TlsProfile) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static INTERMEDIATE: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static MODERN: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match profile {
        TlsProfile::Intermediate => &INTERMEDIATE,
        TlsProfile::Modern => &MODERN,
    }
}

/// The public listener's TLS configuration.
pub fn server_config(
    profile: TlsProfile,
    certificates: Arc<dyn ResolvesServerCert>,
    acme_tls_alpn: bool,
) -> Result<ServerConfig, rustls::Error> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // aws-lc-rs's defaults are the profile's: TLS 1.3's three suites and, for 1.2, ECDHE with
    // AES-GCM or ChaCha20-Poly1305, ECDSA or RSA. Listed to keep it so if a default changes.
    let provider = CryptoProvider {
        cipher_suites: provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|suite| is_aead_ecdhe(*suite))
            .collect(),
        ..provider
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions(profile))?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = alpn(acme_tls_alpn);
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(config)
}

/// TLS 1.3 suites (all AEAD with ephemeral key exchange), and TLS 1.2 suites with ECDHE and
/// AES-GCM or ChaCha20-Poly1305.
fn is_aead_ecdhe(suite: rustls::SupportedCipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite.suite(),
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoCertificates;

    impl ResolvesServerCert for NoCertificates {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }

    /// Runs a handshake between `client` and `server` in memory; the negotiated version.
    fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: rustls_pki_types::ServerName<'static>,
    ) -> Result<rustls::ProtocolVersion, rustls::Error> {
        let mut server = rustls::ServerConnection::new(server)?;
        let mut client = rustls::ClientConnection::new(client, name)?;
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(client.protocol_version().unwrap());
            }
        }
        panic!("the handshake did not finish");
    }

    fn store_with(names: &[&str]) -> (Arc<crate::certs::CertStore>, rustls::RootCertStore) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
        .self_signed(&key)
        .unwrap();
        let config = hush_config::CertificateConfig {
            hosts: names.iter().map(|s| (*s).to_string()).collect(),
            files: None,
            acme: true,
        };
        let store = Arc::new(crate::certs::CertStore::new(&[config]));
        let hosts: Vec<String> = names.iter().map(|s| (*s).to_string()).collect();
        store.install(
            crate::certs::Served::from_pem(
                names[0],
                &hosts,
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
                crate::certs::Origin::Files,
            )
            .unwrap(),
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        (store, roots)
    }

    #[test]
    fn tls_1_2_and_1_3_clients_with_and_without_sni_are_served() {
        let (store, roots) = store_with(&["shop.test"]);
        let server = Arc::new(server_config(TlsProfile::Intermediate, store, false).unwrap());
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let client = Arc::new(
                rustls::ClientConfig::builder_with_protocol_versions(&[version])
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            );
            let name = rustls_pki_types::ServerName::try_from("shop.test").unwrap();
            assert_eq!(
                handshake(server.clone(), client.clone(), name).unwrap(),
                version.version
            );
            // A client that dialled an address sends no SNI: it gets the first certificate
            // (and, here, finds that it does not name the address).
            let no_sni = rustls_pki_types::ServerName::IpAddress(
                std::net::IpAddr::from([127, 0, 0, 1]).into(),
            );
            let refused = handshake(server.clone(), client, no_sni).unwrap_err();
            assert!(
                matches!(refused, rustls::Error::InvalidCertificate(_)),
                "{version:?}: {refused:?}"
            );
        }
    }

    #[test]
    fn profiles_offer_their_suites_and_protocols() {
        let intermediate =
            server_config(TlsProfile::Intermediate, Arc::new(NoCertificates), false).unwrap();
        let suites = &intermediate.crypto_provider().cipher_suites;
        assert_eq!(suites.len(), 9, "{suites:?}");
        assert!(
            intermediate.ignore_client_order,
            "the server's order decides"
        );
        assert_eq!(
            intermediate.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let modern = server_config(TlsProfile::Modern, Arc::new(NoCertificates), true).unwrap();
        assert_eq!(modern.alpn_protocols.last().unwrap(), ACME_TLS_ALPN);
    }

    #[test]
    fn only_a_hello_offering_acme_tls_alone_gets_a_challenge_certificate() {
        let (store, roots) = store_with(&["shop.test"]);
        // A pending TLS-ALPN-01 challenge, with a certificate the client does not trust.
        let (other, _) = store_with(&["shop.test"]);
        let challenge = other.current("shop.test").unwrap().key.clone();
        store.set_alpn_challenge("shop.test", challenge);
        let server = Arc::new(server_config(TlsProfile::Intermediate, store, true).unwrap());
        let client = |alpn: &[&[u8]]| {
            let mut config = rustls::ClientConfig::builder()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        let name = || rustls_pki_types::ServerName::try_from("shop.test").unwrap();
        // A client that lists acme-tls/1 among its protocols is served the real certificate.
        handshake(server.clone(), client(&[ACME_TLS_ALPN, b"h2"]), name()).unwrap();
        // The validation's hello gets the challenge certificate (untrusted here).
        let refused = handshake(server, client(&[ACME_TLS_ALPN]), name()).unwrap_err();
        assert!(
            matches!(refused, rustls::Error::InvalidCertificate(_)),
            "{refused:?}"
        );
    }

    #[test]
    fn the_modern_profile_refuses_tls_1_2() {
        let (store, roots) = store_with(&["shop.test"]);
        let server = Arc::new(server_config(TlsProfile::Modern, store, false).unwrap());
        let client = Arc::new(
            rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let name = rustls_pki_types::ServerName::try_from("shop.test").unwrap();
        let refused = handshake(server, client, name).unwrap_err();
        assert!(
            matches!(
                refused,
                rustls::Error::PeerIncompatible(_) | rustls::Error::AlertReceived(_)
            ),
            "{refused:?}"
        );
    }
}
