//! TLS records by hand, for hostile-input tests: ClientHellos that no TLS library would send
//! (TLS 1.2 only, no cipher suite or key-exchange group in common, cut short). What the server
//! answers is read with `hush_tls::hello::server_first`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The TLS record content type of handshake messages.
pub(crate) const HANDSHAKE: u8 = 22;

/// Cipher suites.
pub(crate) const TLS_AES_128_GCM_SHA256: u16 = 0x1301;
pub(crate) const TLS_AES_128_CCM_SHA256: u16 = 0x1304;
pub(crate) const TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: u16 = 0xc02b;
pub(crate) const TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: u16 = 0xc02f;

/// Named groups.
pub(crate) const X25519: u16 = 0x001d;
pub(crate) const SECP256R1: u16 = 0x0017;

/// What a hand-made ClientHello offers.
#[derive(Clone, Debug)]
pub(crate) struct Hello {
    /// `supported_versions`; empty: no such extension, a TLS 1.2 hello.
    pub(crate) versions: Vec<u16>,
    pub(crate) ciphers: Vec<u16>,
    pub(crate) groups: Vec<u16>,
    /// One key share: (group, public key bytes).
    pub(crate) key_share: Option<(u16, Vec<u8>)>,
    pub(crate) alpn: Vec<&'static [u8]>,
}

impl Hello {
    /// A hello any TLS 1.3 server accepts, up to its certificate: X25519, AES-128-GCM.
    pub(crate) fn tls13() -> Self {
        Self {
            versions: vec![0x0304],
            ciphers: vec![TLS_AES_128_GCM_SHA256],
            groups: vec![X25519],
            // Any 32 bytes are an X25519 public key.
            key_share: Some((X25519, vec![9; 32])),
            alpn: vec![b"h2"],
        }
    }

    /// A hello of a client that speaks TLS 1.2 at most.
    pub(crate) fn tls12_only() -> Self {
        Self {
            versions: Vec::new(),
            ciphers: vec![
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ],
            groups: vec![X25519, SECP256R1],
            key_share: None,
            alpn: Vec::new(),
        }
    }

    /// The handshake message (type, length, body), without the record header.
    pub(crate) fn message(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0x03, 0x03]); // legacy_version: TLS 1.2
        body.extend_from_slice(&[0x42; 32]); // random
        body.push(32); // legacy_session_id, as middlebox-compatible clients send one
        body.extend_from_slice(&[0x24; 32]);
        body.extend(u16_list(&self.ciphers, 2));
        body.extend_from_slice(&[1, 0]); // compression: null only

        let mut extensions = Vec::new();
        if !self.versions.is_empty() {
            extension(&mut extensions, 0x002b, &u16_list(&self.versions, 1));
        }
        extension(&mut extensions, 0x000a, &u16_list(&self.groups, 2));
        // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, ed25519, rsa_pkcs1_sha256
        extension(
            &mut extensions,
            0x000d,
            &u16_list(&[0x0403, 0x0804, 0x0807, 0x0401], 2),
        );
        extension(&mut extensions, 0x000b, &[1, 0]); // ec_point_formats: uncompressed
        if let Some((group, key)) = &self.key_share {
            let mut share = Vec::new();
            share.extend_from_slice(&group.to_be_bytes());
            share.extend_from_slice(&len16(key.len()));
            share.extend_from_slice(key);
            let mut shares = len16(share.len()).to_vec();
            shares.extend(share);
            extension(&mut extensions, 0x0033, &shares);
        }
        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for protocol in &self.alpn {
                list.push(u8::try_from(protocol.len()).expect("a short ALPN name"));
                list.extend_from_slice(protocol);
            }
            let mut alpn = len16(list.len()).to_vec();
            alpn.extend(list);
            extension(&mut extensions, 0x0010, &alpn);
        }
        body.extend_from_slice(&len16(extensions.len()));
        body.extend(extensions);

        let mut message = vec![1]; // client_hello
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    /// The hello in one handshake record.
    pub(crate) fn record(&self) -> Vec<u8> {
        record(HANDSHAKE, &self.message())
    }
}

/// A TLS record of `content_type` carrying `payload` (record version 0x0301, as hellos use).
pub(crate) fn record(content_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type, 0x03, 0x01];
    out.extend_from_slice(&len16(payload.len()));
    out.extend_from_slice(payload);
    out
}

/// A record header announcing `len` bytes, and none of them.
pub(crate) fn record_header(content_type: u8, len: u16) -> Vec<u8> {
    let mut out = vec![content_type, 0x03, 0x01];
    out.extend_from_slice(&len.to_be_bytes());
    out
}

fn len16(len: usize) -> [u8; 2] {
    u16::try_from(len).expect("under 64 KiB").to_be_bytes()
}

/// A list of u16 values behind a length of `len_bytes` bytes.
fn u16_list(values: &[u16], len_bytes: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let len = values.len() * 2;
    if len_bytes == 1 {
        out.push(u8::try_from(len).expect("a short list"));
    } else {
        out.extend_from_slice(&len16(len));
    }
    for value in values {
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len16(data.len()));
    out.extend_from_slice(data);
}

/// Everything the server sends until it closes the connection (or `patience` passes: then
/// `None`). Read it with `hush_tls::hello::server_first`.
pub(crate) async fn until_closed<S: AsyncRead + Unpin>(
    io: &mut S,
    patience: Duration,
) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}
