//! Why a certificate chain was refused, told from the chain itself.
//!
//! rustls (through webpki) names what failed — `UnknownIssuer`, `BadSignature`, `Expired`,
//! `CaUsedAsEndEntity` — but not the story behind it, and its first guess is often the wrong
//! story for a person: a leaf sent without its intermediate is `UnknownIssuer`, exactly like a
//! certificate of another CA. The chain that was refused says more. The certificates are
//! linked by name from the leaf up; where that path stops, whether its end is self-signed or a
//! name the bundle holds, and which link's signature fails, tell an incomplete chain from
//! another CA, and another CA from one that took this mesh's names. Where the chain cannot tell,
//! rustls' own words stand: nothing here guesses.

use hush_identity::CertificateSummary;
use hush_tls::rustls::client::verify_server_cert_signed_by_trust_anchor;
use hush_tls::rustls::server::ParsedCertificate;
use hush_tls::rustls::{self, CertificateError, RootCertStore};
use hush_tls::{FailureReason, HandshakeFailure, HandshakeStep};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::hints::Reason;
use super::report::{label, time_words};
use crate::times::span;

/// Whose chain is explained: the server's (step 3) or ours (when the server refused it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Whose {
    Server,
    Ours,
}

/// A refused chain, explained.
#[derive(Debug)]
pub(super) struct Explained {
    pub(super) step: HandshakeStep,
    pub(super) reason: Reason,
    pub(super) message: String,
}

/// Explains why `chain` (leaf first, as it was sent) was refused with `error` by a verifier
/// trusting `roots`, at `now` (Unix seconds).
pub(super) fn explain(
    whose: Whose,
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    error: &rustls::Error,
    now: i64,
) -> Explained {
    let failure = HandshakeFailure::from_tls(error);
    let plain = Explained {
        step: failure.step,
        reason: Reason::Handshake(failure.reason),
        message: whose.words(&failure.message),
    };
    let chain = Chain::read(chain, roots);
    let Some(leaf) = chain.certs.first() else {
        return plain;
    };
    use FailureReason as R;
    let told = match failure.reason {
        // webpki refuses a CA certificate as an end entity before anything else; say so
        // rather than its `CaUsedAsEndEntity`.
        R::InvalidCertificate | R::NotAnSvid if leaf.is_ca => Some(ca_as_leaf(whose, leaf)),
        R::UnknownIssuer => Some(chain.unknown_issuer(whose, &plain.message)),
        R::BadSignature => chain.bad_signature(whose),
        R::Expired => chain.expired_intermediate(whose, now),
        R::NotYetValid => chain.intermediate_not_yet_valid(whose, now),
        R::NotAnSvid => {
            dns_names(whose, leaf).map(|more| (plain.reason, format!("{} ({more})", plain.message)))
        }
        _ => None,
    };
    match told {
        Some((reason, message)) => Explained {
            reason,
            message,
            ..plain
        },
        None => plain,
    }
}

// === impl Whose ===

impl Whose {
    /// A [`HandshakeFailure`] message (which says "the peer") from our side.
    pub(super) fn words(self, message: &str) -> String {
        match self {
            Self::Server => message
                .replace("the peer's", "the server's")
                .replace("the peer", "the server")
                .replace("this side's", "our")
                .replace("this side", "we"),
            Self::Ours => message
                .replace("the peer's", "our")
                .replace("the peer", "we"),
        }
    }

    /// Who sent the chain: "the server sent", "we sent".
    fn sent(self) -> &'static str {
        match self {
            Self::Server => "the server sent",
            Self::Ours => "we sent",
        }
    }

    /// Whose certificate: "the server's", "our".
    fn possessive(self) -> &'static str {
        match self {
            Self::Server => "the server's",
            Self::Ours => "our",
        }
    }

    /// Whose certificate, once named: "its", "our".
    fn own(self) -> &'static str {
        match self {
            Self::Server => "its",
            Self::Ours => "our",
        }
    }

    /// Whose chain: "the chain", "our chain".
    fn chain(self) -> &'static str {
        match self {
            Self::Server => "the chain",
            Self::Ours => "our chain",
        }
    }
}

// === the chain, linked by name ===

/// A chain as sent, read, with the bundle's roots.
struct Chain<'a> {
    ders: &'a [CertificateDer<'a>],
    /// The readable certificates of the chain, in order; reading stops at the first that is
    /// not (nothing after it could be linked reliably).
    certs: Vec<CertificateSummary>,
    roots: Vec<CertificateSummary>,
    root_ders: &'a [CertificateDer<'a>],
    /// Indexes into `certs` from the leaf up, each the issuer of the one before by name.
    path: Vec<usize>,
}

impl<'a> Chain<'a> {
    fn read(ders: &'a [CertificateDer<'a>], root_ders: &'a [CertificateDer<'a>]) -> Self {
        let certs: Vec<_> = ders
            .iter()
            .map_while(|der| CertificateSummary::from_der(der).ok())
            .collect();
        let roots = root_ders
            .iter()
            .filter_map(|der| CertificateSummary::from_der(der).ok())
            .collect();
        let path = path_by_name(&certs);
        Self {
            ders,
            certs,
            roots,
            root_ders,
            path,
        }
    }

    /// The last certificate of the path up from the leaf.
    fn top(&self) -> Option<&CertificateSummary> {
        self.path.last().and_then(|&i| self.certs.get(i))
    }

    fn root_named(&self, name: &str) -> Option<&CertificateSummary> {
        self.roots.iter().find(|root| root.subject == name)
    }

    fn root_names(&self) -> String {
        let names: Vec<&str> = self.roots.iter().map(|r| r.subject.as_str()).collect();
        names.join("; ")
    }

    /// `UnknownIssuer`: the path stops somewhere the bundle does not reach. Where it stops
    /// says whether anything is missing, or the chain is of another CA.
    fn unknown_issuer(&self, whose: Whose, plain: &str) -> (Reason, String) {
        let Some(top) = self.top() else {
            return (FailureReason::UnknownIssuer.into(), plain.to_string());
        };
        let issuer = &top.issuer;
        let unknown = (FailureReason::UnknownIssuer.into(), plain.to_string());
        // The handshake's words leave both causes open; the chain decides between them below.
        let first = plain.split(": it was issued by").next().unwrap_or(plain);
        if self.root_named(issuer).is_some() {
            // The names reach the bundle, yet webpki found no path: no story to add, and "another
            // CA" would be a guess.
            return (
                unknown.0,
                format!("{first}, though its chain names {issuer}, which --bundle holds"),
            );
        }
        let self_signed = top.subject == top.issuer;
        match (self.path.len(), self_signed) {
            (1, true) => (
                Reason::SelfSigned,
                format!(
                    "{} certificate is self-signed ({}): no CA issued it, so it cannot chain to \
                     --bundle",
                    whose.possessive(),
                    label(top)
                ),
            ),
            (1, false) => (
                Reason::IncompleteChain,
                format!(
                    "{} is incomplete: {} {} issued by {issuer}, but not {issuer}'s certificate, \
                     and --bundle does not hold it either{}",
                    whose.chain(),
                    whose.sent(),
                    label(top),
                    self.strays(),
                ),
            ),
            (_, true) => (
                unknown.0,
                format!(
                    "{first}: it was issued by another CA; its root {} is not in --bundle \
                     (which holds {})",
                    top.subject,
                    self.root_names()
                ),
            ),
            (_, false) => (
                unknown.0,
                format!(
                    "{first}: it was issued by another CA; its chain goes up to {}, issued by \
                     {issuer}, which --bundle does not hold (it holds {})",
                    top.subject,
                    self.root_names()
                ),
            ),
        }
    }

    /// What else was sent, when the path stopped at the leaf though more was sent.
    fn strays(&self) -> String {
        match self.ders.len() {
            0 | 1 => String::new(),
            2 => " (the other certificate sent is not it)".into(),
            n => format!(" (none of the {} other certificates sent is it)", n - 1),
        }
    }

    /// `BadSignature`: find the link whose signature fails. Only a link found to fail while
    /// every link below it verified is named; anything less certain keeps rustls' words.
    fn bad_signature(&self, whose: Whose) -> Option<(Reason, String)> {
        let (&leaf_index, uppers) = self.path.split_first()?;
        let leaf = self.ders.get(leaf_index)?;
        let ders: Vec<&CertificateDer<'_>> =
            uppers.iter().filter_map(|&i| self.ders.get(i)).collect();
        // Link k: is the certificate below `ders[k]` signed by it? Checked with `ders[k]` as the
        // only trust anchor and the certificates between it and the leaf as intermediates.
        for (k, anchor) in ders.iter().enumerate() {
            match signed_under(leaf, &ders[..k], &[*anchor]) {
                Ok(()) => continue,
                Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)) => {
                    let below = self.certs.get(self.path[k])?;
                    return Some((
                        Reason::ChainMismatch,
                        format!(
                            "{} does not hold together: {} names {} as its issuer, and {} a \
                             certificate of that name, but not the one whose key signed it",
                            whose.chain(),
                            label(below),
                            below.issuer,
                            whose.sent()
                        ),
                    ));
                }
                Err(_) => return None,
            }
        }
        // Every link sent verifies: the break is between the top and the bundle's certificate
        // of the name it gives. Confirmed, not assumed: the top must fail against that one.
        let top = self.top()?;
        let root = self
            .root_ders
            .iter()
            .zip(&self.roots)
            .find(|(_, root)| root.subject == top.issuer)
            .map(|(der, _)| der)?;
        match signed_under(leaf, &ders, &[root]) {
            Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature)) => Some((
                Reason::SameNameOtherCa,
                format!(
                    "{} certificate was issued by another CA with the same name: {} names {} as \
                     its issuer, and --bundle holds a certificate of that name, but not the key \
                     that signed it",
                    whose.possessive(),
                    label(top),
                    top.issuer
                ),
            )),
            _ => None,
        }
    }

    /// `Expired`: when the leaf is still valid, the expired one is a CA certificate sent with
    /// it, and the remedy is another.
    fn expired_intermediate(&self, whose: Whose, now: i64) -> Option<(Reason, String)> {
        let (leaf, rest) = self.certs.split_first()?;
        if leaf.not_after < now {
            return None;
        }
        let expired = rest.iter().find(|c| c.not_after < now)?;
        Some((
            Reason::IntermediateExpired,
            format!(
                "the CA certificate {} with {} certificate, {}, expired at {} ({} ago); {} \
                 certificate itself is still valid",
                whose.sent(),
                whose.own(),
                expired.subject,
                time_words(expired.not_after),
                span(now - expired.not_after),
                whose.possessive(),
            ),
        ))
    }

    /// `NotYetValid`: which certificate, when it is not the leaf.
    fn intermediate_not_yet_valid(&self, whose: Whose, now: i64) -> Option<(Reason, String)> {
        let (leaf, rest) = self.certs.split_first()?;
        if leaf.not_before > now {
            return None;
        }
        let early = rest.iter().find(|c| c.not_before > now)?;
        Some((
            FailureReason::NotYetValid.into(),
            format!(
                "the CA certificate {} with {} certificate, {}, is not valid until {} (in {}; is \
                 a clock wrong?)",
                whose.sent(),
                whose.own(),
                early.subject,
                time_words(early.not_before),
                span(early.not_before - now),
            ),
        ))
    }
}

/// The path up from the leaf (index 0): each next certificate is the first not yet on the path
/// whose subject is the issuer of the last. Stops at a self-signed certificate.
fn path_by_name(certs: &[CertificateSummary]) -> Vec<usize> {
    let mut path = Vec::new();
    let mut at = 0;
    while let Some(cert) = certs.get(at) {
        path.push(at);
        if cert.subject == cert.issuer {
            break;
        }
        match (0..certs.len()).find(|i| !path.contains(i) && certs[*i].subject == cert.issuer) {
            Some(next) => at = next,
            None => break,
        }
    }
    path
}

/// Verifies `leaf` up to one of `anchors` through `intermediates`, signatures and all, the way
/// the sidecar's verifier does (for server authentication; X.509-SVIDs allow both uses).
fn signed_under(
    leaf: &CertificateDer<'_>,
    intermediates: &[&CertificateDer<'_>],
    anchors: &[&CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots.add((*anchor).clone().into_owned())?;
    }
    let intermediates: Vec<CertificateDer<'_>> =
        intermediates.iter().map(|c| (*c).clone()).collect();
    verify_server_cert_signed_by_trust_anchor(
        &ParsedCertificate::try_from(leaf)?,
        &roots,
        &intermediates,
        UnixTime::now(),
        hush_tls::provider().signature_verification_algorithms.all,
    )
}

fn ca_as_leaf(whose: Whose, leaf: &CertificateSummary) -> (Reason, String) {
    let (subject, own) = match whose {
        Whose::Server => ("the server presents", "its own"),
        Whose::Ours => ("we present", "our own"),
    };
    (
        Reason::CaAsLeaf,
        format!(
            "{subject} a CA certificate as {own}: {} (CA=true, issued by {}); a workload's \
             certificate must be an end-entity certificate (CA=false)",
            leaf.subject, leaf.issuer
        ),
    )
}

/// For a certificate with DNS names and no URI: what it names instead of a SPIFFE ID.
fn dns_names(whose: Whose, leaf: &CertificateSummary) -> Option<String> {
    if !leaf.uri_sans.is_empty() || leaf.dns_sans.is_empty() {
        return None;
    }
    let who = match whose {
        Whose::Server => "servers",
        Whose::Ours => "workloads",
    };
    Some(format!(
        "it names DNS {} and no SPIFFE ID: a host-name certificate, and hush identifies {who} \
         by SPIFFE ID, not by host name",
        leaf.dns_sans.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    use time::{Duration, OffsetDateTime};

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/backend";

    struct Ca {
        root: CertifiedIssuer<'static, KeyPair>,
        intermediate: CertifiedIssuer<'static, KeyPair>,
    }

    fn ca_params(name: &str, from: i64, to: i64) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, from, to);
        params
    }

    fn validity(params: &mut CertificateParams, from_hours: i64, to_hours: i64) {
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::hours(from_hours);
        params.not_after = now + Duration::hours(to_hours);
    }

    /// A root and an intermediate named `prefix root` and `prefix intermediate`, the
    /// intermediate valid `from`..`to` hours from now.
    fn ca(prefix: &str, from: i64, to: i64) -> Ca {
        let root = CertifiedIssuer::self_signed(
            ca_params(&format!("{prefix} root"), -1, 100),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let intermediate = CertifiedIssuer::signed_by(
            ca_params(&format!("{prefix} intermediate"), from, to),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        Ca { root, intermediate }
    }

    fn leaf(ca: &Ca, sans: Vec<SanType>, from: i64, to: i64) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, from, to);
        params
            .signed_by(&KeyPair::generate().unwrap(), &ca.intermediate)
            .unwrap()
            .der()
            .clone()
    }

    fn svid(ca: &Ca) -> CertificateDer<'static> {
        leaf(ca, vec![SanType::URI(ID.try_into().unwrap())], -1, 1)
    }

    /// What the sidecar's verifier says about `chain` against `roots`, then explained.
    fn judge(chain: &[CertificateDer<'static>], roots: &[CertificateDer<'static>]) -> Explained {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).unwrap();
        }
        let error = verify_server_cert_signed_by_trust_anchor(
            &ParsedCertificate::try_from(&chain[0]).unwrap(),
            &store,
            &chain[1..],
            UnixTime::now(),
            hush_tls::provider().signature_verification_algorithms.all,
        )
        .expect_err("the chain must be refused");
        explain(
            Whose::Server,
            chain,
            roots,
            &error,
            super::super::report::now(),
        )
    }

    #[test]
    fn a_leaf_without_its_intermediate_is_an_incomplete_chain() {
        let ours = ca("mesh", -1, 10);
        let told = judge(&[svid(&ours)], &[ours.root.der().clone()]);
        assert_eq!(told.reason, Reason::IncompleteChain);
        assert_eq!(
            told.message,
            format!(
                "the chain is incomplete: the server sent {ID} issued by CN=mesh intermediate, \
                 but not CN=mesh intermediate's certificate, and --bundle does not hold it either"
            )
        );
        assert!(!told.message.contains("another CA"));

        // Sent with something else that is not its issuer: still incomplete, and said so.
        let other = ca("other", -1, 10);
        let told = judge(
            &[svid(&ours), other.intermediate.der().clone()],
            &[ours.root.der().clone()],
        );
        assert_eq!(told.reason, Reason::IncompleteChain);
        assert!(
            told.message
                .ends_with("(the other certificate sent is not it)")
        );
    }

    #[test]
    fn a_full_chain_of_another_ca_is_another_ca() {
        let ours = ca("mesh", -1, 10);
        let theirs = ca("elsewhere", -1, 10);
        let chain = [svid(&theirs), theirs.intermediate.der().clone()];
        let told = judge(&chain, &[ours.root.der().clone()]);
        assert_eq!(told.reason, Reason::Handshake(FailureReason::UnknownIssuer));
        assert!(
            told.message.contains("it was issued by another CA"),
            "{}",
            told.message
        );
        assert!(
            told.message.contains(
                "its chain goes up to CN=elsewhere intermediate, issued by CN=elsewhere root, \
                 which --bundle does not hold (it holds CN=mesh root)"
            ),
            "{}",
            told.message
        );

        // With its root sent too.
        let chain = [
            svid(&theirs),
            theirs.intermediate.der().clone(),
            theirs.root.der().clone(),
        ];
        let told = judge(&chain, &[ours.root.der().clone()]);
        assert!(
            told.message.ends_with(
                "its root CN=elsewhere root is not in --bundle (which holds CN=mesh root)"
            ),
            "{}",
            told.message
        );
    }

    #[test]
    fn a_self_signed_certificate_is_named_so() {
        let ours = ca("mesh", -1, 10);
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
        let cert = params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone();
        let told = judge(&[cert], &[ours.root.der().clone()]);
        assert_eq!(told.reason, Reason::SelfSigned);
        assert!(
            told.message
                .starts_with("the server's certificate is self-signed (CN=localhost)")
        );
    }

    #[test]
    fn a_ca_with_this_meshs_names_but_other_keys_is_another_ca_of_the_same_name() {
        let ours = ca("mesh", -1, 10);
        let twin = ca("mesh", -1, 10);
        let chain = [svid(&twin), twin.intermediate.der().clone()];
        let told = judge(&chain, &[ours.root.der().clone()]);
        assert_eq!(told.reason, Reason::SameNameOtherCa);
        assert_eq!(
            told.message,
            "the server's certificate was issued by another CA with the same name: CN=mesh \
             intermediate names CN=mesh root as its issuer, and --bundle holds a certificate of \
             that name, but not the key that signed it"
        );

        // The twin's leaf sent with our intermediate: the break is the leaf's own link.
        let chain = [svid(&twin), ours.intermediate.der().clone()];
        let told = judge(&chain, &[ours.root.der().clone()]);
        assert_eq!(told.reason, Reason::ChainMismatch);
        assert!(told.message.starts_with(&format!(
            "the chain does not hold together: {ID} names CN=mesh intermediate as its issuer"
        )));
    }

    #[test]
    fn a_ca_certificate_as_the_leaf_is_named() {
        let ours = ca("mesh", -1, 10);
        let told = judge(
            &[ours.intermediate.der().clone()],
            &[ours.root.der().clone()],
        );
        assert_eq!(told.reason, Reason::CaAsLeaf);
        assert!(told.message.starts_with(
            "the server presents a CA certificate as its own: CN=mesh intermediate (CA=true, \
             issued by CN=mesh root)"
        ));
    }

    #[test]
    fn the_expired_certificate_is_found_in_the_chain() {
        let stale = ca("mesh", -3, -1);
        let chain = [svid(&stale), stale.intermediate.der().clone()];
        let told = judge(&chain, &[stale.root.der().clone()]);
        assert_eq!(told.reason, Reason::IntermediateExpired, "{}", told.message);
        assert!(told.message.starts_with(
            "the CA certificate the server sent with its certificate, CN=mesh intermediate, \
             expired at"
        ));

        // The leaf itself expired: rustls' words, which name it.
        let ours = ca("mesh", -1, 10);
        let old = leaf(&ours, vec![SanType::URI(ID.try_into().unwrap())], -3, -1);
        let told = judge(
            &[old, ours.intermediate.der().clone()],
            &[ours.root.der().clone()],
        );
        assert_eq!(told.reason, Reason::Handshake(FailureReason::Expired));
        assert!(
            told.message
                .starts_with("the server's certificate expired at")
        );
    }

    #[test]
    fn a_certificate_not_valid_yet_is_found_in_the_chain() {
        let early = ca("mesh", 1, 10);
        let chain = [svid(&early), early.intermediate.der().clone()];
        let told = judge(&chain, &[early.root.der().clone()]);
        assert_eq!(told.reason, Reason::Handshake(FailureReason::NotYetValid));
        assert!(
            told.message
                .contains("CN=mesh intermediate, is not valid until")
        );
    }

    #[test]
    fn our_own_chain_is_told_as_ours() {
        let ours = ca("mesh", -1, 10);
        let error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let told = explain(
            Whose::Ours,
            &[svid(&ours)],
            &[ours.root.der().clone()],
            &error,
            super::super::report::now(),
        );
        assert_eq!(told.reason, Reason::IncompleteChain);
        assert!(
            told.message
                .starts_with(&format!("our chain is incomplete: we sent {ID} issued by"))
        );
    }

    #[test]
    fn unreadable_or_empty_chains_keep_rustls_words() {
        let error = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        for chain in [
            vec![],
            vec![CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])],
        ] {
            let told = explain(Whose::Server, &chain, &[], &error, 0);
            assert_eq!(told.reason, Reason::Handshake(FailureReason::UnknownIssuer));
            assert!(
                told.message
                    .starts_with("the server's certificate does not chain")
            );
        }
    }
}
