//! The story of a handshake, told as numbered steps from what [`super::handshake`] recorded:
//! 1 the connection, 2 the hellos, 3 the server's certificate, 4 ours. The first step that
//! failed is the report's failure, with a [`Reason`] and what we know, and nothing we do not:
//! where the recording cannot tell two causes apart, the words say so rather than pick one.

use std::time::Duration;

use hush_identity::CertificateSummary;
use hush_tls::hello::ServerFirst;
use hush_tls::{FailureReason, HandshakeFailure, HandshakeStep, SpiffeClientVerifier};
use rustls_pki_types::UnixTime;
use serde_json::{Value, json};

use super::chain::{self, Whose};
use super::handshake::{After, Chosen, Connection, Outcome, Tls};
use super::hints::Reason;
use super::report::{
    Report, chain_details, describe_chain, expected_words, now, time_left, time_words,
};
use super::setup::{Credentials, Setup};

const HELLO: &str = "hello";
const CERTIFICATE: &str = "certificate verification";
const CLIENT_CERTIFICATE: &str = "client certificate";

/// Tells what `connection` recorded about `target`.
pub(super) fn tell(
    target: &str,
    setup: &Setup,
    timeout: Duration,
    connection: Connection,
) -> Report {
    let mut report = Report::new(target);
    let (reason, message) = match connection {
        Connection::Connected { peer, took, tls } => {
            report.pass(
                1,
                "connection",
                vec![format!(
                    "connected to {peer} in {:.1} ms",
                    took.as_secs_f64() * 1000.0
                )],
                Value::Null,
            );
            Story {
                report: &mut report,
                setup,
                timeout,
            }
            .tls(*tls);
            return report;
        }
        Connection::Refused => (
            Reason::ConnectionRefused,
            format!("nothing listens on {target} (connection refused)"),
        ),
        Connection::Failed(error) => (
            Reason::ConnectFailed,
            format!("cannot connect to {target}: {error}"),
        ),
        Connection::TimedOut => (
            Reason::ConnectTimeout,
            format!(
                "no answer from {target} within {}",
                humantime::format_duration(timeout)
            ),
        ),
    };
    report.fail(1, "connection", reason, message, Vec::new());
    report
}

/// Steps 2 to 4, written into one report.
struct Story<'a> {
    report: &'a mut Report,
    setup: &'a Setup,
    timeout: Duration,
}

impl Story<'_> {
    fn tls(mut self, tls: Tls) {
        let mut hello_lines = Vec::new();
        if let Some(offer) = &tls.offer {
            hello_lines.push(format!(
                "we offered: {}; cipher suites {}; groups {}; key shares {}; ALPN {}",
                offer.versions.join(", "),
                offer.cipher_suites.join(", "),
                offer.groups.join(", "),
                offer.key_shares.join(", "),
                offer.alpn.join(", ")
            ));
        }
        let details = json!({ "offered": tls.offer });
        match &tls.outcome {
            Outcome::Config(error) => self.report.fail(
                2,
                HELLO,
                Reason::ClientConfig,
                format!("cannot build a TLS client: {error}"),
                Vec::new(),
            ),
            Outcome::TimedOut => {
                let waited = humantime::format_duration(self.timeout);
                let message = match tls.server_first {
                    ServerFirst::Nothing => {
                        format!("the server did not answer our ClientHello within {waited}")
                    }
                    _ => format!("the handshake did not finish within {waited}"),
                };
                let reason = Reason::Handshake(FailureReason::Timeout);
                self.report.fail(2, HELLO, reason, message, hello_lines);
            }
            Outcome::Failed { failure, version } => {
                self.failed(&tls, failure, version.as_deref(), hello_lines, details);
            }
            Outcome::Done { chosen, after } => {
                self.finished(&tls, chosen, after, hello_lines, details);
            }
        }
    }

    /// A handshake that failed: at the hello, at the server's chain, or at ours.
    fn failed(
        &mut self,
        tls: &Tls,
        failure: &HandshakeFailure,
        version: Option<&str>,
        mut hello_lines: Vec<String>,
        mut details: Value,
    ) {
        // Hello problems first: was it TLS at all, and which version?
        let refused = server_first(tls, version, &mut hello_lines, &mut details);
        if let Some((reason, message)) = refused {
            let reason = Reason::Handshake(reason);
            self.report.fail(2, HELLO, reason, message, hello_lines);
            return;
        }
        // A refused hello (an alert before any certificate) ends the story at step 2.
        if failure.step == HandshakeStep::Hello && tls.chain.is_none() {
            let reason = match failure.reason {
                FailureReason::RefusedByPeer => Reason::HelloRefused,
                other => Reason::Handshake(other),
            };
            let message = Whose::Server.words(&failure.message);
            self.report.fail(2, HELLO, reason, message, hello_lines);
            return;
        }
        self.report.pass(2, HELLO, hello_lines, details);
        if !self.server_chain(tls, failure) {
            return;
        }
        // Our certificate, refused during the handshake.
        let reason = Reason::Handshake(failure.reason);
        let (reason, message) = match (tls.asked, &self.setup.credentials) {
            (true, None) => (
                Reason::NoCredentials,
                "the server requires a client certificate and we presented none".into(),
            ),
            (true, Some(_)) => (reason, self.refusal_of_ours(failure)),
            // Not about our certificate, which nobody asked for: the server's words alone.
            (false, _) => (reason, Whose::Server.words(&failure.message)),
        };
        self.report
            .fail(4, CLIENT_CERTIFICATE, reason, message, Vec::new());
    }

    /// Step 3 after a failed handshake, from what the verifier saw. Returns whether the story
    /// goes on (the chain was not what failed).
    fn server_chain(&mut self, tls: &Tls, failure: &HandshakeFailure) -> bool {
        let Some(chain) = &tls.chain else {
            // The hellos went through, then the handshake broke before any certificate.
            self.report.fail(
                3,
                CERTIFICATE,
                Reason::Handshake(failure.reason),
                Whose::Server.words(&failure.message),
                vec!["the handshake failed before the server presented a certificate".into()],
            );
            return false;
        };
        let mut lines = describe_chain(chain);
        let details = json!({ "chain": chain_details(chain) });
        match (&tls.chain_error, &self.setup.trust) {
            (Some(error), trust) => {
                let roots = trust.as_ref().map(|t| t.bundle().roots().to_vec());
                let explained = chain::explain(
                    Whose::Server,
                    chain,
                    roots.as_deref().unwrap_or_default(),
                    error,
                    now(),
                );
                lines.push(format!("{}: FAILED", explained.step));
                self.report
                    .fail(3, CERTIFICATE, explained.reason, explained.message, lines);
                if let Some(step) = self.report.steps.last_mut() {
                    step.details = details;
                }
                false
            }
            (None, Some(_)) => {
                lines.push("verified".into());
                self.report.pass(3, CERTIFICATE, lines, details);
                true
            }
            (None, None) => {
                lines.push("not verified: no --bundle given".into());
                self.report.skip(3, CERTIFICATE, lines, details);
                true
            }
        }
    }

    /// A finished handshake: steps 2 to 4.
    fn finished(
        &mut self,
        tls: &Tls,
        chosen: &Chosen,
        after: &After,
        mut hello_lines: Vec<String>,
        mut details: Value,
    ) {
        let Chosen {
            version,
            suite,
            group,
            alpn,
        } = chosen;
        hello_lines.push(format!(
            "the server chose: {version}, {suite}, key exchange {group}, ALPN {alpn}"
        ));
        details["chosen"] =
            json!({"version": version, "cipher_suite": suite, "group": group, "alpn": alpn});
        self.report.pass(2, HELLO, hello_lines, details);
        let verified = self.verified_chain(tls);
        self.our_certificate(after);
        if !verified {
            self.report.failed(
                3,
                CERTIFICATE,
                Reason::NotVerified,
                "the server's certificate was not verified: no --bundle was given".into(),
            );
        }
    }

    /// Step 3 after a finished handshake: returns whether the chain was verified.
    fn verified_chain(&mut self, tls: &Tls) -> bool {
        let Some(chain) = &tls.chain else {
            let lines = vec!["the server presented no certificate".to_string()];
            self.report.skip(3, CERTIFICATE, lines, Value::Null);
            return false;
        };
        let mut lines = describe_chain(chain);
        let details = json!({ "chain": chain_details(chain) });
        let Some(trust) = &self.setup.trust else {
            lines.push("not verified: no --bundle given".into());
            self.report.skip(3, CERTIFICATE, lines, details);
            return false;
        };
        lines.push(format!(
            "chain: ok, to a root of the bundle (trust domain {})",
            trust.bundle().trust_domain()
        ));
        if let Some(summary) = chain
            .first()
            .and_then(|c| CertificateSummary::from_der(c).ok())
        {
            lines.push(format!(
                "validity: ok, {} left",
                time_left(summary.not_after)
            ));
            let expected = match expected_words(&self.setup.expected) {
                Some(ids) => format!("expected {ids}"),
                None => "any of the trust domain".into(),
            };
            lines.push(format!(
                "SPIFFE ID: ok, {} ({expected})",
                summary
                    .spiffe_id
                    .map_or_else(|| "?".into(), |id| id.to_string())
            ));
        }
        self.report.pass(3, CERTIFICATE, lines, details);
        true
    }

    /// Step 4 after a finished handshake, from what the server did next.
    fn our_certificate(&mut self, after: &After) {
        if let After::NotAsked = after {
            self.report.fail(
                4,
                CLIENT_CERTIFICATE,
                Reason::NoClientAuth,
                "the server did not ask for a client certificate: it does not do mutual TLS".into(),
                vec!["the server did not send a CertificateRequest".into()],
            );
            return;
        }
        let Some(ours) = &self.setup.credentials else {
            let line = "the server asked for our certificate; we had none to present";
            self.report.fail(
                4,
                CLIENT_CERTIFICATE,
                Reason::NoCredentials,
                without_ours(after),
                vec![line.into()],
            );
            return;
        };
        let line = format!(
            "the server asked for our certificate; we presented {}",
            ours.identity
        );
        let (reason, message) = match after {
            // (`NotAsked` was told above.)
            After::NotAsked | After::Kept => {
                let lines = vec![format!("{line}, and it accepted it")];
                self.report.pass(4, CLIENT_CERTIFICATE, lines, Value::Null);
                return;
            }
            After::Closed => (Reason::ClosedAfterHandshake, hung_up("closed")),
            After::Failed(failure) => match failure.reason {
                FailureReason::Closed => (Reason::ClosedAfterHandshake, hung_up("closed")),
                FailureReason::Reset => (Reason::ClosedAfterHandshake, hung_up("reset")),
                other => (Reason::Handshake(other), self.refusal_of_ours(failure)),
            },
        };
        self.report
            .fail(4, CLIENT_CERTIFICATE, reason, message, vec![line]);
    }

    /// The server's refusal of our certificate, and what we see of it from here: the server
    /// says little (an alert), but our certificate can be checked against `--bundle`.
    fn refusal_of_ours(&self, failure: &HandshakeFailure) -> String {
        let refusal = Whose::Server.words(&failure.message);
        match (&self.setup.trust, &self.setup.credentials) {
            (Some(trust), Some(ours)) => {
                format!("{refusal}. {}", check_ours(trust, ours, failure.step))
            }
            (None, Some(_)) => {
                format!("{refusal}. Without --bundle, our certificate was not checked here")
            }
            (_, None) => refusal,
        }
    }
}

/// What the server's first answer says when the handshake failed: a reason to stop at step 2
/// (plaintext, silence, an old TLS version), or none; what it chose goes into the lines.
fn server_first(
    tls: &Tls,
    version: Option<&str>,
    hello_lines: &mut Vec<String>,
    details: &mut Value,
) -> Option<(FailureReason, String)> {
    match &tls.server_first {
        ServerFirst::NotTls(text) => Some((
            FailureReason::NotTls,
            format!("the server answered in plaintext, not TLS: \"{text}\""),
        )),
        ServerFirst::Nothing => Some((
            FailureReason::Closed,
            "the server closed the connection without answering our ClientHello".into(),
        )),
        ServerFirst::Alert(alert) => {
            hello_lines.push(format!("the server answered with the alert {alert}"));
            let version = version.filter(|v| *v != "TLS 1.3")?;
            hello_lines.push(format!(
                "offered TLS 1.2 and 1.3 on a second connection, the server chose {version}"
            ));
            Some((
                FailureReason::TlsVersion,
                format!("the server speaks {version} only; hush sidecars speak TLS 1.3 only"),
            ))
        }
        ServerFirst::Hello(choice) => {
            hello_lines.push(format!(
                "the server chose: {}, {}, key exchange {}",
                choice.version,
                choice.cipher_suite,
                choice.group.as_deref().unwrap_or("?")
            ));
            details["chosen"] = json!(choice);
            None
        }
        ServerFirst::Unreadable => None,
    }
}

/// Step 4 without a certificate of ours: did the server mind?
fn without_ours(after: &After) -> String {
    match after {
        After::Kept => "the server asked for a client certificate but accepted the connection \
                        without one: its client authentication is optional (a hush sidecar's \
                        inbound port refuses connections without one)"
            .into(),
        After::Failed(failure) if failure.reason == FailureReason::RefusedByPeer => {
            "the server requires a client certificate and we presented none".into()
        }
        _ => "the server closed the connection after we presented no certificate (it had asked \
              for one)"
            .into(),
    }
}

/// The server hung up after the handshake without a TLS alert (`how`: closed, reset).
fn hung_up(how: &str) -> String {
    format!(
        "the server {how} the connection right after the handshake, without a TLS alert: we \
         cannot tell whether it accepted our certificate"
    )
}

/// Our certificate against `trust`, as the server's own verifier would check it (a hush
/// sidecar's inbound side is a [`SpiffeClientVerifier`]). `step` is the step the server's
/// refusal named: an expiry refusal of a certificate valid here points at the server's clock.
fn check_ours(trust: &hush_tls::TrustStore, ours: &Credentials, step: HandshakeStep) -> String {
    let Some((leaf, intermediates)) = ours.chain.split_first() else {
        return "We had no certificate to check".into();
    };
    let verifier = SpiffeClientVerifier::with_trust(trust, true);
    use hush_tls::rustls::server::danger::ClientCertVerifier as _;
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => {
            let until = CertificateSummary::from_der(leaf)
                .map(|s| time_words(s.not_after))
                .unwrap_or_else(|_| "?".into());
            if step == HandshakeStep::Validity {
                format!(
                    "Our certificate verifies against --bundle here and is valid by this \
                     machine's clock until {until}: compare the server's clock with this one"
                )
            } else {
                format!(
                    "Our certificate verifies against --bundle here (valid until {until}), so \
                     the server trusts other roots than --bundle's, or refuses us for a reason \
                     of its own"
                )
            }
        }
        Err(error) => {
            let bundle = trust.bundle();
            let explained = chain::explain(Whose::Ours, &ours.chain, bundle.roots(), &error, now());
            format!("Checked here against --bundle, {}", explained.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hush_tls::rustls::{AlertDescription, Error as TlsError};
    use hush_tls::{CredentialStore, ExpectedServer};
    use rustls_pki_types::ServerName;

    use super::*;
    use crate::diagnose::handshake::Chosen;

    fn setup(with_credentials: bool) -> Setup {
        Setup {
            trust: None,
            expected: ExpectedServer::AnyInTrustDomain,
            credentials: with_credentials.then(|| Credentials {
                store: Arc::new(CredentialStore::new()),
                chain: Vec::new(),
                identity: "spiffe://cluster.local/ns/shop/sa/frontend".into(),
            }),
            server_name: ServerName::try_from("backend").unwrap(),
        }
    }

    fn connected(server_first: ServerFirst, outcome: Outcome) -> Connection {
        Connection::Connected {
            peer: "127.0.0.1:15006".into(),
            took: Duration::from_millis(1),
            tls: Box::new(Tls {
                offer: None,
                server_first,
                chain: None,
                chain_error: None,
                asked: true,
                outcome,
            }),
        }
    }

    fn done(after: After) -> Outcome {
        let chosen = Chosen {
            version: "TLS 1.3".into(),
            suite: "TLS13_AES_128_GCM_SHA256".into(),
            group: "X25519".into(),
            alpn: "h2".into(),
        };
        Outcome::Done { chosen, after }
    }

    /// The failure's step, label and message, and its hint.
    fn verdict(report: &Report) -> (u8, &'static str, &str, &'static str) {
        let failure = report.failure.as_ref().expect("a failure");
        (
            failure.step,
            failure.reason.as_str(),
            &failure.message,
            failure.hint,
        )
    }

    fn tell_it(with_credentials: bool, connection: Connection) -> Report {
        tell(
            "backend:15006",
            &setup(with_credentials),
            Duration::from_secs(10),
            connection,
        )
    }

    #[test]
    fn a_hang_up_after_the_handshake_is_not_a_hello_problem() {
        let closed = HandshakeFailure::from_io(&std::io::ErrorKind::UnexpectedEof.into());
        for after in [After::Closed, After::Failed(closed)] {
            let report = tell_it(true, connected(ServerFirst::Unreadable, done(after)));
            let (step, reason, message, hint) = verdict(&report);
            assert_eq!((step, reason), (4, "closed_after_handshake"));
            assert!(
                message.contains("we cannot tell whether it accepted"),
                "{message}"
            );
            assert!(!message.contains("before the TLS handshake finished"));
            assert!(!hint.contains("may not speak TLS"), "{hint}");
        }
    }

    #[test]
    fn without_a_certificate_only_a_refusal_says_required() {
        let alert = HandshakeFailure::from_tls(&TlsError::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert_eq!(
            without_ours(&After::Failed(alert)),
            "the server requires a client certificate and we presented none"
        );
        assert!(without_ours(&After::Kept).contains("optional"));
        assert!(!without_ours(&After::Kept).contains("requires"));
        assert!(!without_ours(&After::Closed).contains("requires"));
        let report = tell_it(false, connected(ServerFirst::Unreadable, done(After::Kept)));
        assert_eq!(verdict(&report).1, "no_credentials");
    }

    #[test]
    fn a_handshake_broken_before_any_certificate_fails_at_the_certificate_not_at_ours() {
        let reset = HandshakeFailure::from_io(&std::io::ErrorKind::ConnectionReset.into());
        let outcome = Outcome::Failed {
            failure: reset,
            version: None,
        };
        let report = tell_it(true, connected(ServerFirst::Unreadable, outcome));
        let (step, reason, message, _) = verdict(&report);
        assert_eq!((step, reason), (3, "reset"));
        assert_eq!(
            message,
            "the server reset the connection during the TLS handshake"
        );
    }

    #[test]
    fn hello_refusals_name_the_version_or_the_alert() {
        let alert = || Outcome::Failed {
            failure: HandshakeFailure::from_tls(&TlsError::AlertReceived(
                AlertDescription::HandshakeFailure,
            )),
            version: None,
        };
        let first = || ServerFirst::Alert("HandshakeFailure".into());
        let report = tell_it(true, connected(first(), alert()));
        assert_eq!(verdict(&report).1, "refused_by_peer");
        assert_eq!(verdict(&report).3, Reason::HelloRefused.hint());

        let old = Outcome::Failed {
            failure: HandshakeFailure::from_tls(&TlsError::AlertReceived(
                AlertDescription::ProtocolVersion,
            )),
            version: Some("TLS 1.2".into()),
        };
        let report = tell_it(true, connected(first(), old));
        let (step, reason, message, _) = verdict(&report);
        assert_eq!((step, reason), (2, "tls_version"));
        assert_eq!(
            message,
            "the server speaks TLS 1.2 only; hush sidecars speak TLS 1.3 only"
        );
    }

    #[test]
    fn connections_fail_at_step_one() {
        for (connection, label) in [
            (Connection::Refused, "refused"),
            (Connection::TimedOut, "timeout"),
            (Connection::Failed("no route".into()), "connect_error"),
        ] {
            let report = tell_it(false, connection);
            let (step, reason, _, _) = verdict(&report);
            assert_eq!((step, reason), (1, label));
        }
    }
}
