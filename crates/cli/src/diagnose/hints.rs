//! Why a step failed, as a stable reason for scripts, and what to do about it.
//!
//! Every reason has a hint, and the compiler checks it: [`Reason::hint`] matches every reason
//! of `hush diagnose`'s own and, through [`handshake_hint`], every [`FailureReason`] the
//! handshake can name, with no catch-all. A reason added to either enum does not build until
//! someone has said here what a user should do about it.

use hush_tls::FailureReason;
use serde::{Serialize, Serializer};

/// Why a step failed. The labels ([`Reason::as_str`]) are what `--json` prints as
/// `failure.reason`; several steps may share a label (`timeout`, say), the step tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    // Step 1, the connection.
    /// Nothing listens on the address.
    ConnectionRefused,
    /// Connecting failed for another reason (no route, bad address…).
    ConnectFailed,
    /// Connecting took longer than `--timeout`.
    ConnectTimeout,

    // Step 2, the hellos.
    /// hush could not build its own TLS client.
    ClientConfig,
    /// The server answered our ClientHello with an alert (not about its TLS version).
    HelloRefused,

    // Step 3, the server's certificate, when the chain itself tells more than rustls' error.
    /// The server sent its certificate without the certificate of its issuer, which the bundle
    /// does not hold either.
    IncompleteChain,
    /// The server's certificate is self-signed.
    SelfSigned,
    /// The chain names a CA of the bundle, but another key signed it: a second CA with the
    /// same name.
    SameNameOtherCa,
    /// A certificate of the chain was not signed by the certificate sent as its issuer.
    ChainMismatch,
    /// The server presents a CA certificate (CA=true) as its own.
    CaAsLeaf,
    /// The server's certificate is valid, an intermediate it sent has expired.
    IntermediateExpired,
    /// The handshake worked, but no `--bundle` was given to verify the server with.
    NotVerified,

    // Step 4, our certificate.
    /// The server did not ask for a client certificate.
    NoClientAuth,
    /// The server asked for a client certificate and we had none.
    NoCredentials,
    /// The server hung up right after the handshake, without a TLS alert.
    ClosedAfterHandshake,

    /// As the handshake named it (the same reasons the sidecar counts in its metrics).
    Handshake(FailureReason),
    /// Of `hush diagnose --public`, whose server is not a sidecar (see [`PublicReason`]).
    Public(PublicReason),
}

/// Why a step of `hush diagnose --public` failed: a public TLS server (a gateway, or any HTTPS
/// server) judged as a browser would, so the hints speak of certificates from public CAs and of
/// web servers, not of sidecars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublicReason {
    // Step 1, the connection.
    /// Nothing listens.
    Refused,
    /// No answer to the TCP connection within the timeout.
    ConnectTimeout,
    /// Connecting failed otherwise.
    ConnectFailed,

    // Step 2, the hello.
    /// The server answered the ClientHello with plaintext HTTP.
    PlaintextHttp,
    /// The server answered with something that is neither TLS nor HTTP.
    NotTls,
    /// The server closed the connection without answering the ClientHello.
    Closed,
    /// The server did not answer the ClientHello within the timeout.
    HelloTimeout,

    // Step 3, the versions.
    /// The server accepts neither TLS 1.3 nor TLS 1.2.
    NoModernVersion,
    /// A handshake of an accepted version failed for another reason.
    HandshakeFailed,

    // Step 4, the chain.
    /// The server presented no certificate.
    NoCertificate,
    /// The chain leads to no trusted root, and the chain does not tell why.
    UnknownIssuer,
    /// The server did not send the intermediate between its certificate and a root.
    IncompleteChain,
    /// The server's certificate is self-signed.
    SelfSigned,
    /// An intermediate the server sent has expired.
    IntermediateExpired,
    /// An intermediate the server sent is not valid yet.
    IntermediateNotYetValid,
    /// A certificate was not signed by the one sent as its issuer.
    ChainMismatch,
    /// The certificate's extended key usage does not allow a TLS server.
    WrongUsage,
    /// A CA certificate presented as the server's own.
    CaAsLeaf,
    /// Anything else webpki refused, in its words.
    InvalidCertificate,

    // Step 5, the name.
    /// The certificate does not cover the server name asked for.
    WrongName,

    // Step 6, the dates.
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
}

// === impl PublicReason ===

impl PublicReason {
    /// The stable label for scripts.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::ConnectTimeout | Self::HelloTimeout => "timeout",
            Self::ConnectFailed => "connect_error",
            Self::PlaintextHttp => "plaintext_http",
            Self::NotTls => "not_tls",
            Self::Closed => "closed",
            Self::NoModernVersion => "tls_version",
            Self::HandshakeFailed => "handshake",
            Self::NoCertificate => "no_certificate",
            Self::UnknownIssuer => "unknown_issuer",
            Self::IncompleteChain => "incomplete_chain",
            Self::SelfSigned => "self_signed",
            Self::IntermediateExpired => "intermediate_expired",
            Self::IntermediateNotYetValid => "intermediate_not_yet_valid",
            Self::ChainMismatch => "chain_mismatch",
            Self::WrongUsage => "wrong_usage",
            Self::CaAsLeaf => "ca_as_leaf",
            Self::InvalidCertificate => "invalid_certificate",
            Self::WrongName => "wrong_name",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
        }
    }

    /// What to do, in one sentence or two. Never empty.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Self::Refused => {
                "is the server running, and is this its HTTPS port (gateway: https.listen)?"
            }
            Self::ConnectTimeout => "is a firewall dropping the packets, or the address wrong?",
            Self::ConnectFailed => {
                "check the address: the host name must resolve and the network reach it"
            }
            Self::PlaintextHttp => {
                "this port serves plain HTTP: dial the HTTPS port instead (a gateway's \
                 https.listen, not http.listen), or configure TLS on this one (nginx: `listen \
                 443 ssl`)"
            }
            Self::NotTls => "this port speaks another protocol than TLS: check the port",
            Self::Closed => {
                "the server hung up on a TLS ClientHello: it may not speak TLS on this port, or \
                 it refuses the name asked for (try --server-name); its log says why"
            }
            Self::HelloTimeout => {
                "the server took the connection but never answered the ClientHello: it may wait \
                 for a plaintext protocol, or be stuck"
            }
            Self::NoModernVersion => {
                "enable TLS 1.2 and 1.3 on the server (nginx: `ssl_protocols TLSv1.2 \
                 TLSv1.3;`; a hush gateway always offers them), and turn TLS 1.0 and 1.1 off"
            }
            Self::HandshakeFailed => {
                "the message says what the server answered: an alert about the name \
                 (UnrecognisedName, AccessDenied) usually means it has no certificate for this \
                 name (a gateway: the host is not in certificates[], or its ACME order has not \
                 completed; its log says which); otherwise its TLS settings share nothing a \
                 current client offers (use Mozilla's intermediate profile)"
            }
            Self::NoCertificate => "configure a certificate for this name on the server",
            Self::UnknownIssuer => {
                "the certificate comes from a CA that is not trusted here: use one from a public \
                 CA (or ACME), or pass --ca-file with the private CA's root"
            }
            Self::IncompleteChain => {
                "serve the full chain, the certificate followed by its intermediate(s): the \
                 fullchain.pem of an ACME client, nginx `ssl_certificate` with the intermediate \
                 appended, a gateway's `files.cert` with the intermediate after the leaf; \
                 browsers that cached the intermediate hide this, other clients fail"
            }
            Self::SelfSigned => {
                "replace the self-signed certificate with one from a public CA (a gateway can \
                 get one by ACME: `acme: true`), or pass --ca-file if it is meant for a private \
                 audience"
            }
            Self::IntermediateExpired => {
                "the server sends a stale intermediate: replace it with the CA's current one \
                 (download the chain again from the CA, or renew the certificate)"
            }
            Self::IntermediateNotYetValid => {
                "compare this machine's clock (`date -u`) with real time; otherwise the CA \
                 issued an intermediate dated ahead"
            }
            Self::ChainMismatch => {
                "the certificate and the chain sent with it do not belong together: take the \
                 intermediate from the CA that issued this very certificate"
            }
            Self::WrongUsage => {
                "the certificate was issued for another purpose (client or e-mail): get one \
                 with serverAuth"
            }
            Self::CaAsLeaf => "configure the server with its own certificate and key, not its CA's",
            Self::InvalidCertificate => {
                "the message is webpki's; `openssl x509 -text -noout` on the certificate shows \
                 what it holds"
            }
            Self::WrongName => {
                "the certificate was issued for other names: issue one that covers this name \
                 (a gateway: add it to the certificate's hosts, ACME orders it), or check \
                 --server-name"
            }
            Self::Expired => {
                "renew the certificate and reload the server (a gateway reloads its files by \
                 itself, and renews ACME certificates at two thirds of their life: its log says \
                 why it did not)"
            }
            Self::NotYetValid => {
                "this machine's clock is behind, or the certificate was dated ahead: compare \
                 `date -u` with real time"
            }
        }
    }

    /// Every reason, for the tests.
    #[cfg(test)]
    pub(crate) const ALL: [Self; 22] = [
        Self::Refused,
        Self::ConnectTimeout,
        Self::ConnectFailed,
        Self::PlaintextHttp,
        Self::NotTls,
        Self::Closed,
        Self::HelloTimeout,
        Self::NoModernVersion,
        Self::HandshakeFailed,
        Self::NoCertificate,
        Self::UnknownIssuer,
        Self::IncompleteChain,
        Self::SelfSigned,
        Self::IntermediateExpired,
        Self::IntermediateNotYetValid,
        Self::ChainMismatch,
        Self::WrongUsage,
        Self::CaAsLeaf,
        Self::InvalidCertificate,
        Self::WrongName,
        Self::Expired,
        Self::NotYetValid,
    ];
}

// === impl Reason ===

impl Reason {
    /// The stable label for scripts.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionRefused => "refused",
            Self::ConnectFailed => "connect_error",
            Self::ConnectTimeout => "timeout",
            Self::ClientConfig => "config",
            Self::HelloRefused => "refused_by_peer",
            Self::IncompleteChain => "incomplete_chain",
            Self::SelfSigned => "self_signed",
            Self::SameNameOtherCa => "same_name_other_ca",
            Self::ChainMismatch => "chain_mismatch",
            Self::CaAsLeaf => "ca_as_leaf",
            Self::IntermediateExpired => "intermediate_expired",
            Self::NotVerified => "not_verified",
            Self::NoClientAuth => "no_client_auth",
            Self::NoCredentials => "no_credentials",
            Self::ClosedAfterHandshake => "closed_after_handshake",
            Self::Handshake(reason) => reason.as_str(),
            Self::Public(reason) => reason.as_str(),
        }
    }

    /// What to do, in one sentence or two. Never empty.
    pub(super) fn hint(self) -> &'static str {
        match self {
            Self::ConnectionRefused => "is the sidecar running, and is this its inbound port?",
            Self::ConnectFailed => {
                "check the address: the host name must resolve and the network reach it"
            }
            Self::ConnectTimeout => "is a firewall dropping the packets, or the address wrong?",
            Self::ClientConfig => {
                "hush could not set up its own TLS client (the message says why): this is a bug, \
                 please report it with the message"
            }
            Self::HelloRefused => {
                "the server speaks TLS but refused what hush offered (the alert names why); its \
                 log says more: hush offers TLS 1.3 only, with the groups and suites above"
            }
            Self::IncompleteChain => {
                "configure the server to send its full chain, its certificate followed by the \
                 intermediate's (e.g. `openssl s_server -cert leaf.pem -cert_chain \
                 intermediate.pem`: s_server sends only the first certificate of -cert; nginx: \
                 `ssl_certificate` with the intermediate appended; a hush sidecar sends its \
                 chain itself), then run diagnose again to see where that chain leads"
            }
            Self::SelfSigned => {
                "the server uses a certificate it made itself, not one from this mesh's CA: give \
                 it an X.509-SVID (`hush cert request`), or put a hush sidecar in front of it"
            }
            Self::SameNameOtherCa => {
                "two CAs go by the same name: this mesh's root was rotated (`hush ca rotate \
                 root` makes a new root under the same name; `hush ca bundle` then holds both \
                 while the rotation lasts), this mesh's CA was re-created (`hush ca init \
                 --force` on a directory of the old layout), or the server's CA is another \
                 mesh's of the same trust domain; check that --bundle is the current bundle of \
                 the CA that issued the server's certificate (`hush ca bundle`)"
            }
            Self::ChainMismatch => {
                "the server's certificate and the chain sent with it do not belong together (a \
                 chain file from another or an older CA): send the intermediate that issued \
                 this certificate"
            }
            Self::CaAsLeaf => {
                "configure the server with its own workload certificate and key (a sidecar's \
                 svid.pem and svid.key), not with a CA's (intermediate.pem, root.pem)"
            }
            Self::IntermediateExpired => {
                "the server sends a stale intermediate, or the CA's intermediate has expired: \
                 send the CA's current intermediate.pem with the certificate; if that one has \
                 expired too, the CA needs a new intermediate, and hush can only make one with a \
                 new CA (`hush ca init --force`)"
            }
            Self::NotVerified => "pass --bundle with this mesh's bundle.pem to verify the server",
            Self::NoClientAuth => {
                "this is not a hush sidecar's inbound port (an app, or a TLS server that does not \
                 check its clients?)"
            }
            Self::NoCredentials => {
                "present an identity as a sidecar would: --cert and --key, or --token-file with \
                 --ca"
            }
            Self::ClosedAfterHandshake => {
                "the handshake finished, so the server speaks TLS 1.3; its log says why it hung \
                 up (a server that refuses certificates without an alert, or one that closes \
                 every connection at once)"
            }
            Self::Handshake(reason) => handshake_hint(reason),
            Self::Public(reason) => reason.hint(),
        }
    }
}

impl From<PublicReason> for Reason {
    fn from(reason: PublicReason) -> Self {
        Self::Public(reason)
    }
}

impl From<FailureReason> for Reason {
    fn from(reason: FailureReason) -> Self {
        Self::Handshake(reason)
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What to do about a failure the handshake named, seen from `hush diagnose`: the peer is the
/// server, we are the client.
fn handshake_hint(reason: FailureReason) -> &'static str {
    use FailureReason as R;
    match reason {
        R::Timeout => {
            "the server accepted the connection but did not finish the handshake: it may not \
             speak TLS (a plaintext server waiting for more), or it is stuck"
        }
        R::Closed => "the server hung up without a word: it may not speak TLS, or its log says why",
        R::Reset => {
            "the server reset the connection during the handshake: it may not speak TLS, or \
             something between us cuts TLS connections; its log says why"
        }
        R::Io => "the connection broke during the handshake (the message says how)",
        R::NotTls => {
            "this port does not speak TLS: is it the app's own port rather than its sidecar's \
             inbound port?"
        }
        R::TlsVersion => "upgrade the server's TLS to 1.3, or put a hush sidecar in front of it",
        R::NoCommonCipher | R::NoCommonGroup | R::NoCommonSignatureScheme | R::Incompatible => {
            "the server's TLS settings share nothing with hush's; it is not a hush sidecar"
        }
        R::NoCommonAlpn => {
            "the server chose an application protocol (ALPN) hush did not offer (h2, \
             http/1.1): it is not a hush sidecar"
        }
        R::Misbehaved => {
            "the server broke the TLS protocol (the message says how): a bug in its TLS, or \
             something between us rewriting the bytes"
        }
        R::DecryptError => {
            "a record could not be decrypted: something between us alters the bytes, or the \
             server's TLS is broken"
        }
        R::Other => "TLS failed in a way hush has no words for; the message is rustls' own",
        R::NoCertificate => {
            "the server presented no certificate; a hush sidecar always presents its X.509-SVID"
        }
        R::UnknownIssuer => {
            "check that --bundle is this mesh's bundle.pem (`hush ca bundle` prints it) and that \
             the server's certificate comes from this mesh's CA"
        }
        R::BadSignature => {
            "a certificate was altered or re-signed: compare the server's certificate files \
             with what its CA issued (`hush cert inspect`)"
        }
        R::BadEncoding => {
            "the server's certificate file is damaged: `hush cert inspect` or `openssl x509 \
             -text` on it shows where"
        }
        R::Expired => {
            "the server's sidecar is not renewing its certificate: check that it reaches its CA \
             (its log says why); a server that is not a sidecar needs a new certificate (`hush \
             cert request` with a join token: an expired certificate cannot be renewed)"
        }
        R::NotYetValid => {
            "this machine's clock is behind the clock of the CA that issued the certificate by \
             at least that much, or the certificate was made to start later: compare `date -u` \
             here and on the CA's machine (`hush check` measures the gap to the CA); the \
             server's own clock plays no part"
        }
        R::WrongUsage => {
            "the certificate is not meant for TLS servers (its extended key usage lacks \
             serverAuth); hush's CA puts serverAuth and clientAuth in every X.509-SVID"
        }
        R::WrongName => "the certificate is not valid for the name asked for: check --server-name",
        R::Revoked => "the server's certificate has been revoked: it needs a new one",
        R::InvalidCertificate => {
            "the message names what is wrong with the certificate; `hush cert inspect` shows \
             what it holds"
        }
        R::NotAnSvid => {
            "a hush sidecar presents an X.509-SVID (exactly one spiffe:// URI SAN, CA=false) and \
             this server does not: give it one (`hush cert request`), or put a hush sidecar in \
             front of it"
        }
        R::UnexpectedIdentity => {
            "the server is another workload than expected: check the address and --expect-id"
        }
        R::ForeignTrustDomain => {
            "the server belongs to another trust domain: check --bundle and the address"
        }
        R::RefusedByPeer => {
            "the server's log names its reason; the result above says how our certificate fares \
             against --bundle here"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason of diagnose's own, by hand: the `match` in `hint` already refuses to build
    /// without one, this checks that none is empty and that labels stay put.
    const OWN: [Reason; 15] = [
        Reason::ConnectionRefused,
        Reason::ConnectFailed,
        Reason::ConnectTimeout,
        Reason::ClientConfig,
        Reason::HelloRefused,
        Reason::IncompleteChain,
        Reason::SelfSigned,
        Reason::SameNameOtherCa,
        Reason::ChainMismatch,
        Reason::CaAsLeaf,
        Reason::IntermediateExpired,
        Reason::NotVerified,
        Reason::NoClientAuth,
        Reason::NoCredentials,
        Reason::ClosedAfterHandshake,
    ];

    #[test]
    fn every_reason_has_a_hint_and_a_label() {
        let every = OWN
            .into_iter()
            .chain(FailureReason::ALL.into_iter().map(Reason::Handshake))
            .chain(PublicReason::ALL.into_iter().map(Reason::Public));
        for reason in every {
            assert!(!reason.hint().is_empty(), "{reason:?}");
            assert!(!reason.as_str().is_empty(), "{reason:?}");
            assert!(
                !reason.hint().ends_with('.'),
                "{reason:?}: hints are not sentences"
            );
        }
    }

    #[test]
    fn labels_scripts_rely_on_are_unchanged() {
        for (reason, label) in [
            (Reason::ConnectionRefused, "refused"),
            (Reason::ConnectTimeout, "timeout"),
            (Reason::NoClientAuth, "no_client_auth"),
            (Reason::NoCredentials, "no_credentials"),
            (Reason::NotVerified, "not_verified"),
            (Reason::HelloRefused, "refused_by_peer"),
            (
                Reason::Handshake(FailureReason::UnknownIssuer),
                "unknown_issuer",
            ),
            (Reason::Handshake(FailureReason::TlsVersion), "tls_version"),
        ] {
            assert_eq!(reason.as_str(), label);
            assert_eq!(serde_json::to_value(reason).ok(), Some(label.into()));
        }
    }
}
