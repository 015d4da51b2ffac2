//! The hellos of a TLS handshake, read from the bytes on the wire.
//!
//! In TLS 1.3 only the ClientHello and the ServerHello (or an alert) travel in the clear; they
//! hold what a client offered and what the server chose. rustls does not expose the offer, so
//! `hush diagnose` records the bytes as they pass and reads them here. The parser reads only
//! what it needs, checks every length, and gives up (`None`, [`ServerFirst::Unreadable`]) on
//! anything it does not understand; it never panics, whatever the bytes (fuzzed in
//! `fuzz/fuzz_targets/tls_hello.rs`).

use serde::Serialize;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;
/// The ServerHello random that marks a HelloRetryRequest (RFC 8446, 4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What a ClientHello offered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Offer {
    /// Protocol versions (`TLS 1.3`), from `supported_versions`.
    pub versions: Vec<String>,
    /// Cipher suites, in the client's order of preference.
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups, from `supported_groups`.
    pub groups: Vec<String>,
    /// The groups a key share was sent for, ready for the server to pick.
    pub key_shares: Vec<String>,
    /// Application protocols (ALPN).
    pub alpn: Vec<String>,
    /// The server name (SNI), if one was sent.
    pub server_name: Option<String>,
}

/// What a ServerHello chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// The version chosen (`supported_versions`, or the legacy field without it).
    pub version: String,
    /// The cipher suite chosen.
    pub cipher_suite: String,
    /// The key-exchange group of the server's key share.
    pub group: Option<String>,
    /// A HelloRetryRequest: the server wants a key share for `group` first.
    pub retry: bool,
}

/// The first thing the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFirst {
    /// Nothing at all.
    Nothing,
    /// A ServerHello (or a HelloRetryRequest).
    Hello(Choice),
    /// A TLS alert in the clear: the server refused the ClientHello.
    Alert(String),
    /// Bytes that are not a TLS record, shown as text where printable.
    NotTls(String),
    /// A TLS record, but not one this parser reads.
    Unreadable,
}

/// Reads the ClientHello at the start of what the client sent.
pub fn client_hello(sent: &[u8]) -> Option<Offer> {
    let message = handshake_message(sent, CLIENT_HELLO)?;
    let mut body = Reader::new(&message);
    body.skip(2 + 32)?; // legacy_version, random
    let session = body.u8()?;
    body.skip(usize::from(session))?;
    let mut suites = body.prefixed16()?;
    let mut offer = Offer::default();
    while !suites.is_empty() {
        offer.cipher_suites.push(suite_name(suites.u16()?));
    }
    let compression = body.u8()?;
    body.skip(usize::from(compression))?;
    let mut extensions = body.prefixed16()?;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.prefixed16()?;
        match kind {
            EXT_SUPPORTED_VERSIONS => {
                let mut list = data.prefixed8()?;
                while !list.is_empty() {
                    offer.versions.push(version_name(list.u16()?));
                }
            }
            EXT_SUPPORTED_GROUPS => {
                let mut list = data.prefixed16()?;
                while !list.is_empty() {
                    offer.groups.push(group_name(list.u16()?));
                }
            }
            EXT_KEY_SHARE => {
                let mut list = data.prefixed16()?;
                while !list.is_empty() {
                    offer.key_shares.push(group_name(list.u16()?));
                    list.prefixed16()?;
                }
            }
            EXT_ALPN => {
                let mut list = data.prefixed16()?;
                while !list.is_empty() {
                    let name = list.prefixed8()?;
                    offer
                        .alpn
                        .push(String::from_utf8_lossy(name.rest()).into_owned());
                }
            }
            EXT_SERVER_NAME => {
                let mut list = data.prefixed16()?;
                if list.u8()? == 0 {
                    let name = list.prefixed16()?;
                    offer.server_name = Some(String::from_utf8_lossy(name.rest()).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(offer)
}

/// A ClientHello offering TLS 1.2 as well as 1.3, with the suites and groups common servers
/// choose from, to learn which version a server that refused hush's hello speaks. Its key share
/// is random bytes: the connection is dropped after the ServerHello, so no key is ever derived.
pub fn hello_offering_tls12(server_name: Option<&str>) -> Vec<u8> {
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
        0x1301, 0x1302, 0x1303, // TLS 1.3 AEAD suites
        0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, // TLS 1.2 ECDHE with AEAD
    ];
    let suites: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    let mut share = 0x001d_u16.to_be_bytes().to_vec(); // x25519
    let public: [u8; 32] = rand_bytes();
    share.extend(with_length_u16(&public));
    let schemes: [u16; 8] = [
        0x0403, 0x0503, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0807,
    ];
    let schemes: Vec<u8> = schemes.iter().flat_map(|s| s.to_be_bytes()).collect();
    let mut extensions = Vec::new();
    if let Some(name) = server_name {
        let mut entry = vec![0u8];
        entry.extend(with_length_u16(name.as_bytes()));
        extensions.extend(extension(EXT_SERVER_NAME, &with_length_u16(&entry)));
    }
    extensions.extend(extension(
        EXT_SUPPORTED_GROUPS,
        &with_length_u16(&[0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]),
    ));
    extensions.extend(extension(11, &[1, 0])); // ec_point_formats: uncompressed
    extensions.extend(extension(13, &with_length_u16(&schemes))); // signature_algorithms
    extensions.extend(extension(
        EXT_SUPPORTED_VERSIONS,
        &[4, 0x03, 0x04, 0x03, 0x03],
    ));
    extensions.extend(extension(EXT_KEY_SHARE, &with_length_u16(&share)));
    extensions.extend(extension(0xff01, &[0])); // renegotiation_info, which TLS 1.2 servers expect

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&rand_bytes::<32>());
    body.push(0); // no session id
    body.extend(with_length_u16(&suites));
    body.extend_from_slice(&[1, 0]); // null compression only
    body.extend(with_length_u16(&extensions));

    let length = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    let mut message = vec![CLIENT_HELLO, length[1], length[2], length[3]];
    message.extend(body);
    let mut record = vec![CONTENT_HANDSHAKE, 0x03, 0x01];
    record.extend(with_length_u16(&message));
    record
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // A failure leaves zeros, which still make a well-formed hello.
    let _ = crate::provider().secure_random.fill(&mut bytes);
    bytes
}

/// Reads the first thing the server sent.
pub fn server_first(received: &[u8]) -> ServerFirst {
    let Some(&content) = received.first() else {
        return ServerFirst::Nothing;
    };
    if content == CONTENT_ALERT {
        return match received.get(5..7) {
            Some([_, description]) => ServerFirst::Alert(format!(
                "{:?}",
                rustls::AlertDescription::from(*description)
            )),
            _ => ServerFirst::Unreadable,
        };
    }
    if content != CONTENT_HANDSHAKE || received.get(1) != Some(&3) {
        return ServerFirst::NotTls(printable(received));
    }
    server_hello(received).map_or(ServerFirst::Unreadable, ServerFirst::Hello)
}

fn server_hello(received: &[u8]) -> Option<Choice> {
    let message = handshake_message(received, SERVER_HELLO)?;
    let mut body = Reader::new(&message);
    let legacy_version = body.u16()?;
    let random = body.take(32)?;
    let session = body.u8()?;
    body.skip(usize::from(session))?;
    let suite = body.u16()?;
    body.skip(1)?; // compression
    let mut choice = Choice {
        version: version_name(legacy_version),
        cipher_suite: suite_name(suite),
        group: None,
        retry: random == HELLO_RETRY_RANDOM,
    };
    if body.is_empty() {
        return Some(choice);
    }
    let mut extensions = body.prefixed16()?;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let mut data = extensions.prefixed16()?;
        match kind {
            EXT_SUPPORTED_VERSIONS => choice.version = version_name(data.u16()?),
            EXT_KEY_SHARE => choice.group = Some(group_name(data.u16()?)),
            _ => {}
        }
    }
    Some(choice)
}

/// The body of the first handshake message, if it is of type `kind` and whole in the bytes.
/// The handshake records at the start are joined first: a large hello may span several.
fn handshake_message(stream: &[u8], kind: u8) -> Option<Vec<u8>> {
    let mut records = Reader::new(stream);
    let mut joined: Vec<u8> = Vec::new();
    while !records.is_empty() && records.bytes[0] == CONTENT_HANDSHAKE {
        records.skip(3)?; // content type, record version
        joined.extend_from_slice(records.prefixed16()?.rest());
    }
    let mut reader = Reader::new(&joined);
    if reader.u8()? != kind {
        return None;
    }
    let length = reader.u24()?;
    reader.take(length).map(<[u8]>::to_vec)
}

fn version_name(version: u16) -> String {
    match version {
        0x0304 => "TLS 1.3".into(),
        0x0303 => "TLS 1.2".into(),
        0x0302 => "TLS 1.1".into(),
        0x0301 => "TLS 1.0".into(),
        other => format!("{:?}", rustls::ProtocolVersion::from(other)),
    }
}

fn suite_name(suite: u16) -> String {
    format!("{:?}", rustls::CipherSuite::from(suite))
}

fn group_name(group: u16) -> String {
    format!("{:?}", rustls::NamedGroup::from(group))
}

/// The start of a non-TLS answer, as text a person can read.
fn printable(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(80)];
    let text: String = String::from_utf8_lossy(head)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A cursor over bytes whose reads fail (`None`) instead of running past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn sub(&mut self, n: usize) -> Option<Reader<'a>> {
        self.take(n).map(Reader::new)
    }

    /// The bytes after a one-byte length.
    fn prefixed8(&mut self) -> Option<Reader<'a>> {
        let length = self.u8()?;
        self.sub(usize::from(length))
    }

    /// The bytes after a two-byte length.
    fn prefixed16(&mut self) -> Option<Reader<'a>> {
        let length = self.u16()?;
        self.sub(usize::from(length))
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A ClientHello (hush's client configuration) and a TLS 1.3 server's answer, as rustls
    /// writes them, over an in-memory pipe.
    fn handshake_bytes() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["backend.example.org".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let client_config = crate::client_config_with_roots(
            std::slice::from_ref(cert.der()),
            None,
            &[b"h2", b"http/1.1"],
        )
        .unwrap();
        let mut client = rustls::ClientConnection::new(
            Arc::new(client_config),
            "backend.example.org".try_into().unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        server.read_tls(&mut hello.as_slice()).unwrap();
        let _ = server.process_new_packets();
        let mut answer = Vec::new();
        server.write_tls(&mut answer).unwrap();
        (hello, answer)
    }

    #[test]
    fn the_hellos_of_a_real_handshake_are_read() {
        let (hello, answer) = handshake_bytes();

        let offer = client_hello(&hello).expect("a ClientHello");
        assert_eq!(offer.versions, ["TLS 1.3"]);
        assert!(
            offer
                .cipher_suites
                .contains(&"TLS13_AES_128_GCM_SHA256".to_string())
        );
        assert_eq!(offer.groups[0], "X25519MLKEM768", "{offer:?}");
        assert!(offer.key_shares.contains(&"X25519MLKEM768".to_string()));
        assert_eq!(offer.alpn, ["h2", "http/1.1"]);
        assert_eq!(offer.server_name.as_deref(), Some("backend.example.org"));

        let ServerFirst::Hello(choice) = server_first(&answer) else {
            panic!("no ServerHello in {answer:?}");
        };
        assert_eq!(choice.version, "TLS 1.3");
        assert!(choice.cipher_suite.starts_with("TLS13_"), "{choice:?}");
        assert_eq!(choice.group.as_deref(), Some("X25519MLKEM768"));
        assert!(!choice.retry);
    }

    #[test]
    fn the_hand_made_hello_reads_back_as_offering_both_versions() {
        let hello = hello_offering_tls12(Some("backend.example.org"));
        let offer = client_hello(&hello).expect("a ClientHello");
        assert_eq!(offer.versions, ["TLS 1.3", "TLS 1.2"]);
        assert_eq!(offer.key_shares, ["X25519"]);
        assert_eq!(offer.server_name.as_deref(), Some("backend.example.org"));
    }

    #[test]
    fn what_is_not_a_hello_is_named_not_misread() {
        assert_eq!(server_first(b""), ServerFirst::Nothing);
        assert_eq!(
            server_first(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            ServerFirst::NotTls("HTTP/1.1 400 Bad Request content-length: 0".into())
        );
        assert_eq!(
            server_first(&[21, 3, 3, 0, 2, 2, 70]),
            ServerFirst::Alert("ProtocolVersion".into())
        );
        // Truncated and lying lengths give nothing rather than a panic.
        for bytes in [
            &[22u8, 3, 3, 0, 40, 2, 0, 0, 36][..],
            &[22, 3, 3, 255, 255, 2, 0, 0, 1],
            &[22, 3, 1, 0, 4, 1, 255, 255, 255],
        ] {
            assert!(client_hello(bytes).is_none());
            assert_eq!(server_first(bytes), ServerFirst::Unreadable, "{bytes:?}");
        }
    }
}
