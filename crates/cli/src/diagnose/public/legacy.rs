//! Does a server still accept TLS 1.0 or 1.1? rustls cannot speak them, so the question is
//! asked with a hand-built ClientHello of that version alone, and only the first answer is
//! read: a ServerHello of that version (it accepts), an alert (it refuses), or a hang-up. No
//! key is ever derived; the connection is dropped after the answer.
//!
//! The hello offers what servers that still take these versions choose from (ECDHE and RSA
//! key exchange with CBC suites, ECDSA and RSA certificates), and no `TLS_FALLBACK_SCSV`: that
//! would make a server that speaks newer versions refuse *because* it could do better, and hide
//! whether it takes the old version at all.

use std::time::Duration;

use hush_tls::hello::{self, ServerFirst};
use serde::Serialize;

use super::probe::{read_answer, send_to};

/// The versions probed by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(super) enum LegacyVersion {
    #[serde(rename = "TLS 1.1")]
    Tls11,
    #[serde(rename = "TLS 1.0")]
    Tls10,
}

impl LegacyVersion {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Tls11 => "TLS 1.1",
            Self::Tls10 => "TLS 1.0",
        }
    }

    fn wire(self) -> [u8; 2] {
        match self {
            Self::Tls11 => [0x03, 0x02],
            Self::Tls10 => [0x03, 0x01],
        }
    }
}

/// The server's answer to a hello of one old version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// A ServerHello of that very version: it accepts it.
    Accepted { suite: String },
    /// A ServerHello of another version (a server must not choose a newer one than offered).
    OtherVersion(String),
    /// An alert: it refuses.
    Alert(String),
    /// It closed the connection without a word (how many servers refuse).
    Closed,
    /// Nothing within the timeout: we cannot tell.
    Silent,
    /// Something that is not a TLS answer we read.
    Unreadable,
    /// The connection for the probe failed.
    NoConnection(String),
}

/// Sends a `version` hello to `target` and reads the answer.
pub(super) async fn probe(
    target: &str,
    version: LegacyVersion,
    server_name: Option<&str>,
    timeout: Duration,
) -> Answer {
    let hello = client_hello(version, server_name);
    let mut tcp = match send_to(target, &hello, timeout).await {
        Ok(tcp) => tcp,
        Err(e) => return Answer::NoConnection(e),
    };
    let (received, closed) = read_answer(&mut tcp, timeout, |bytes| {
        !matches!(hello::server_first(bytes), ServerFirst::Unreadable)
    })
    .await;
    classify(version, &received, closed)
}

/// What `received` (and whether the server then closed) says about `version`.
fn classify(version: LegacyVersion, received: &[u8], closed: bool) -> Answer {
    match hello::server_first(received) {
        ServerFirst::Hello(choice) if choice.version == version.name() => Answer::Accepted {
            suite: choice.cipher_suite,
        },
        ServerFirst::Hello(choice) => Answer::OtherVersion(choice.version),
        ServerFirst::Alert(alert) => Answer::Alert(alert),
        ServerFirst::Nothing if closed => Answer::Closed,
        ServerFirst::Nothing => Answer::Silent,
        ServerFirst::NotTls(_) | ServerFirst::Unreadable => Answer::Unreadable,
    }
}

/// A ClientHello offering `version` alone (RFC 2246 / 4346 layout, with the SNI and elliptic
/// curve extensions servers of that age understand).
pub(super) fn client_hello(version: LegacyVersion, server_name: Option<&str>) -> Vec<u8> {
    fn with_length_u16(bytes: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(bytes.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(bytes);
        out
    }
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend(with_length_u16(data));
        out
    }
    let suites: [u16; 9] = [
        0xc009, 0xc00a, // ECDHE-ECDSA with AES-CBC-SHA
        0xc013, 0xc014, // ECDHE-RSA with AES-CBC-SHA
        0x002f, 0x0035, // RSA with AES-CBC-SHA
        0x0033, 0x0039, // DHE-RSA with AES-CBC-SHA
        0x00ff, // the empty renegotiation info signal
    ];
    let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    let mut extensions = Vec::new();
    if let Some(name) = server_name {
        let mut entry = vec![0u8];
        entry.extend(with_length_u16(name.as_bytes()));
        extensions.extend(extension(0, &with_length_u16(&entry)));
    }
    // supported_groups: x25519, secp256r1, secp384r1; ec_point_formats: uncompressed.
    extensions.extend(extension(
        10,
        &with_length_u16(&[0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]),
    ));
    extensions.extend(extension(11, &[1, 0]));

    let mut body = version.wire().to_vec();
    body.extend_from_slice(&random());
    body.push(0); // no session id
    body.extend(with_length_u16(&suites));
    body.extend_from_slice(&[1, 0]); // null compression only
    body.extend(with_length_u16(&extensions));

    let length = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    let mut message = vec![1, length[1], length[2], length[3]]; // client_hello
    message.extend(body);
    // The record layer says TLS 1.0 whatever the version, as clients of the time did.
    let mut record = vec![22, 0x03, 0x01];
    record.extend(with_length_u16(&message));
    record
}

fn random() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // A failure leaves zeros, which still make a well-formed hello (nothing is derived from it).
    let _ = hush_tls::provider().secure_random.fill(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_offer_the_one_version_and_the_name() {
        for version in [LegacyVersion::Tls10, LegacyVersion::Tls11] {
            let bytes = client_hello(version, Some("shop.example.com"));
            assert_eq!(&bytes[..3], &[22, 3, 1], "a handshake record");
            assert_eq!(
                usize::from(u16::from_be_bytes([bytes[3], bytes[4]])),
                bytes.len() - 5
            );
            assert_eq!(&bytes[9..11], &version.wire(), "client_version");
            let offer = hello::client_hello(&bytes).expect("our own parser reads it");
            assert!(offer.versions.is_empty(), "no supported_versions extension");
            assert_eq!(offer.server_name.as_deref(), Some("shop.example.com"));
            assert!(
                !offer.cipher_suites.iter().any(|s| s.contains("FALLBACK")),
                "{:?}",
                offer.cipher_suites
            );
        }
    }

    /// A ServerHello record of `version` choosing suite 0xc013.
    fn server_hello(version: [u8; 2]) -> Vec<u8> {
        let mut body = version.to_vec();
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0xc0, 0x13, 0]);
        let mut message = vec![2, 0, 0, u8::try_from(body.len()).unwrap()];
        message.extend(body);
        let mut record = vec![22, 3, 1, 0, u8::try_from(message.len()).unwrap()];
        record.extend(message);
        record
    }

    #[test]
    fn answers_are_told_apart() {
        let v10 = LegacyVersion::Tls10;
        assert!(matches!(
            classify(v10, &server_hello([3, 1]), false),
            Answer::Accepted { .. }
        ));
        assert_eq!(
            classify(LegacyVersion::Tls11, &server_hello([3, 1]), false),
            Answer::OtherVersion("TLS 1.0".into())
        );
        assert_eq!(
            classify(v10, &[21, 3, 1, 0, 2, 2, 70], true),
            Answer::Alert("ProtocolVersion".into())
        );
        assert_eq!(classify(v10, &[], true), Answer::Closed);
        assert_eq!(classify(v10, &[], false), Answer::Silent);
        assert_eq!(classify(v10, b"HTTP/1.1 400 Bad", true), Answer::Unreadable);
    }
}
