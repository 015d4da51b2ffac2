//! `hush diagnose --public HOST:PORT`: a public TLS server (a hush gateway, or any HTTPS
//! server) judged as a browser would judge it, step by step, in the same report as the mesh
//! diagnosis: 1 the TCP connection; 2 the hello (does it answer TLS at all, or plaintext HTTP);
//! 3 the versions (TLS 1.3 and 1.2 by separate rustls handshakes, TLS 1.1 and 1.0 by
//! hand-built hellos, see [`legacy`]); 4 the chain, up to Mozilla's roots or `--ca-file`; 5 the
//! name; 6 the dates (a warning under 14 days); 7 OCSP stapling (informational).
//!
//! The first failure stops the story, with what to do; a warning (an old TLS version accepted,
//! a certificate close to its end, a revoked stapled status) does not. Each step says only what
//! it saw: a chain refused is not reported as an expired certificate, an expired certificate
//! not as a broken chain (see [`certs`]).
//!
//! * [`probe`] makes the connections and records what they saw;
//! * [`certs`] judges the chain, the name, the dates and the OCSP response;
//! * this module tells it, and sums it up for `hush check --gateway`.

mod certs;
mod legacy;
mod probe;

use std::time::Duration;

use hush_identity::CertificateSummary;
use hush_tls::hello::ServerFirst;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};

pub(crate) use self::certs::PublicTrust;
use self::certs::{ChainVerdict, Expiry};
use self::legacy::Answer;
use self::probe::{Agreed, Attempt, Connect, Observation};
use super::hints::{PublicReason as R, Reason};
#[cfg(test)]
use super::report::Status;
use super::report::{Report, chain_details, describe_chain, now, time_words};

const CONNECTION: &str = "connection";
const HELLO: &str = "hello";
const VERSIONS: &str = "versions";
const CHAIN: &str = "chain";
const NAME: &str = "name";
const EXPIRY: &str = "expiry";
const OCSP: &str = "OCSP stapling";

/// A public server, diagnosed.
pub(crate) struct Diagnosis {
    pub(super) report: Report,
    /// The first line's words: the name asked for, and the roots trusted.
    pub(super) expected: String,
    /// The last line's words when nothing failed.
    pub(super) works: String,
}

/// How `hush check` sums up a diagnosis in one line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Summary {
    /// Every step passed.
    Ok(String),
    /// Nothing failed, something is worth fixing: the message and the hint.
    Warning(String, &'static str),
    /// A step failed: the message (naming the step) and the hint.
    Failed(String, &'static str),
    /// Nothing could be asked: the connection failed (the message says how).
    Unreachable(String),
}

/// The server name `target` is asked for: `server_name`, else the target's host.
pub(crate) fn server_name_for(
    target: &str,
    server_name: Option<&str>,
) -> anyhow::Result<ServerName<'static>> {
    let host = server_name
        .map(str::to_string)
        .unwrap_or_else(|| super::host_of(target).to_string());
    ServerName::try_from(host.clone())
        .map_err(|_| anyhow::anyhow!("{host:?} cannot be sent as a TLS server name"))
}

/// Diagnoses the public TLS server at `target`, asking for `server_name`.
pub(crate) async fn diagnose(
    target: &str,
    server_name: ServerName<'static>,
    trust: &PublicTrust,
    timeout: Duration,
) -> Diagnosis {
    let observation = probe::observe(target, &server_name, timeout).await;
    let name = name_words(&server_name);
    let mut report = Report::new(target);
    Story {
        report: &mut report,
        server_name: &server_name,
        name: &name,
        trust,
        timeout,
    }
    .tell(&observation);
    report.ok = report.failure.is_none();
    Diagnosis {
        report,
        expected: format!("public TLS server {name}, trusting {}", trust.words),
        works: format!("{name} is served over TLS with a trusted, valid certificate for its name"),
    }
}

impl Diagnosis {
    /// The diagnosis in one line, for `hush check`.
    pub(crate) fn summary(&self) -> Summary {
        let report = &self.report;
        if let Some(failure) = &report.failure {
            let message = format!(
                "step {}, {}: {}",
                failure.step, failure.name, failure.message
            );
            if failure.step == 1 {
                return Summary::Unreachable(failure.message.clone());
            }
            return Summary::Failed(message, failure.hint);
        }
        if let Some(first) = report.warnings.first() {
            let more = match report.warnings.len() {
                1 => String::new(),
                n => format!(
                    " (and {} more warning{})",
                    n - 1,
                    if n == 2 { "" } else { "s" }
                ),
            };
            return Summary::Warning(
                format!("{}: {}{more}", first.name, first.message),
                first.hint,
            );
        }
        // The hello step's last line says what a browser's hello got.
        let agreed = report
            .steps
            .iter()
            .find(|s| s.name == HELLO)
            .and_then(|s| s.details.get("agreed"))
            .map(|a| {
                format!(
                    "{}, {}",
                    a["version"].as_str().unwrap_or("?"),
                    a["cipher_suite"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_default();
        let expiry = report
            .steps
            .iter()
            .find(|s| s.name == EXPIRY)
            .and_then(|s| s.lines.first().cloned())
            .unwrap_or_default();
        Summary::Ok(format!("{agreed}; chain trusted, name covered; {expiry}"))
    }

    /// The report for people.
    pub(super) fn render(&self) -> String {
        super::report::render(&self.report, &self.expected, &self.works)
    }
}

fn name_words(server_name: &ServerName<'_>) -> String {
    match server_name {
        ServerName::DnsName(name) => name.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "?".into(),
    }
}

/// The steps, written into one report.
struct Story<'a> {
    report: &'a mut Report,
    server_name: &'a ServerName<'static>,
    name: &'a str,
    trust: &'a PublicTrust,
    timeout: Duration,
}

impl Story<'_> {
    fn tell(mut self, seen: &Observation) {
        if !self.connection(&seen.connect) || !self.hello(seen) || !self.versions(seen) {
            return;
        }
        // The certificates, from the first handshake that finished.
        let agreed = [Some(&seen.main), seen.tls13.as_ref(), seen.tls12.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|attempt| match attempt {
                Attempt::Agreed(agreed) => Some(agreed.as_ref()),
                _ => None,
            });
        let Some(agreed) = agreed else {
            return;
        };
        if self.chain(agreed) && self.name_step(agreed) && self.expiry(agreed) {
            self.ocsp(agreed);
        }
    }

    fn fail(
        &mut self,
        number: u8,
        name: &'static str,
        reason: R,
        message: String,
        lines: Vec<String>,
    ) {
        self.report
            .fail(number, name, Reason::Public(reason), message, lines);
    }

    /// Step 1. Returns whether the story goes on.
    fn connection(&mut self, connect: &Connect) -> bool {
        let (reason, message) = match connect {
            Connect::Connected { peer, took } => {
                let line = format!(
                    "connected to {peer} in {:.1} ms",
                    took.as_secs_f64() * 1000.0
                );
                self.report.pass(1, CONNECTION, vec![line], Value::Null);
                return true;
            }
            Connect::Refused => (
                R::Refused,
                format!(
                    "nothing listens on {} (connection refused)",
                    self.report.target
                ),
            ),
            Connect::Failed(error) => (
                R::ConnectFailed,
                format!("cannot connect to {}: {error}", self.report.target),
            ),
            Connect::TimedOut => (
                R::ConnectTimeout,
                format!(
                    "no answer from {} within {}",
                    self.report.target,
                    humantime::format_duration(self.timeout)
                ),
            ),
        };
        self.fail(1, CONNECTION, reason, message, Vec::new());
        false
    }

    /// Step 2: does the server answer a TLS ClientHello at all?
    fn hello(&mut self, seen: &Observation) -> bool {
        let sni = match self.server_name {
            ServerName::DnsName(name) => format!("server name {}", name.as_ref()),
            _ => "no server name (an IP address is not sent as SNI; pass --server-name)".into(),
        };
        let mut lines = vec![format!(
            "we offered, as a browser would: TLS 1.3 and 1.2; ALPN h2, http/1.1; {sni}; OCSP \
             stapling requested"
        )];
        let mut details = json!({});
        match &seen.first {
            ServerFirst::Hello(choice) => {
                lines.push(format!(
                    "the server answered with a ServerHello: {}, {}{}",
                    choice.version,
                    choice.cipher_suite,
                    choice
                        .group
                        .as_ref()
                        .map(|g| format!(", key exchange {g}"))
                        .unwrap_or_default()
                ));
            }
            ServerFirst::Alert(alert) => lines.push(format!(
                "the server answered with the TLS alert {alert}: it speaks TLS, but refused this \
                 hello (step 3 tries each version)"
            )),
            ServerFirst::Unreadable => lines
                .push("the server answered with a TLS record this diagnosis does not read".into()),
            ServerFirst::NotTls(text) => {
                let (reason, message) = if text.starts_with("HTTP/") {
                    (
                        R::PlaintextHttp,
                        format!("the server answered in plaintext HTTP, not TLS: \"{text}\""),
                    )
                } else {
                    (
                        R::NotTls,
                        format!("the server answered with something that is not TLS: \"{text}\""),
                    )
                };
                self.fail(2, HELLO, reason, message, lines);
                return false;
            }
            ServerFirst::Nothing => {
                let (reason, message) = match seen.main {
                    Attempt::TimedOut => (
                        R::HelloTimeout,
                        format!(
                            "the server did not answer our ClientHello within {}",
                            humantime::format_duration(self.timeout)
                        ),
                    ),
                    _ => (
                        R::Closed,
                        "the server closed the connection without answering our ClientHello".into(),
                    ),
                };
                self.fail(2, HELLO, reason, message, lines);
                return false;
            }
        }
        if let Attempt::Agreed(agreed) = &seen.main {
            lines.push(format!(
                "the handshake finished: {}, {}, key exchange {}, ALPN {}",
                agreed.version,
                agreed.suite,
                agreed.group,
                agreed
                    .alpn
                    .as_deref()
                    .unwrap_or("none (HTTP/1.1 by default)")
            ));
            details["agreed"] = json!({
                "version": agreed.version,
                "cipher_suite": agreed.suite,
                "group": agreed.group,
                "alpn": agreed.alpn,
            });
        }
        self.report.pass(2, HELLO, lines, details);
        true
    }

    /// Step 3: which versions the server accepts.
    fn versions(&mut self, seen: &Observation) -> bool {
        let mut lines = Vec::new();
        let mut details = json!({});
        let mut modern = false;
        for (version, attempt) in [("TLS 1.3", &seen.tls13), ("TLS 1.2", &seen.tls12)] {
            let words = match attempt {
                Some(Attempt::Agreed(agreed)) => {
                    modern = true;
                    format!("accepted ({}, key exchange {})", agreed.suite, agreed.group)
                }
                Some(other) => format!("refused ({})", self.attempt_words(other)),
                None => "not tried".into(),
            };
            details[version] = json!(words);
            lines.push(format!("{version}: {words}"));
        }
        let mut accepted_legacy = Vec::new();
        for (version, answer) in &seen.legacy {
            let words = match answer {
                Answer::Accepted { suite } => {
                    accepted_legacy.push(version.name());
                    format!(
                        "ACCEPTED: the server answered with a {} ServerHello ({suite})",
                        version.name()
                    )
                }
                Answer::Alert(alert) => format!("refused (alert {alert})"),
                Answer::Closed => "refused (the server closed the connection)".into(),
                Answer::OtherVersion(other) => format!(
                    "not accepted (the server answered with a {other} ServerHello, a version \
                     we did not offer)"
                ),
                Answer::Silent => format!(
                    "not known (no answer within {})",
                    humantime::format_duration(self.timeout)
                ),
                Answer::Unreadable => "not known (an answer this diagnosis does not read)".into(),
                Answer::NoConnection(e) => format!("not known (cannot connect: {e})"),
            };
            details[version.name()] = json!(words);
            lines.push(format!("{}: {words}", version.name()));
        }
        if !modern {
            let refusals: Vec<String> = [&seen.tls13, &seen.tls12]
                .into_iter()
                .flatten()
                .map(|a| self.attempt_words(a))
                .collect();
            let by_version = [&seen.tls13, &seen.tls12]
                .into_iter()
                .flatten()
                .all(|a| matches!(a, Attempt::Alert(alert) if alert == "ProtocolVersion"));
            let (reason, message) = if by_version || !accepted_legacy.is_empty() {
                let only = if accepted_legacy.is_empty() {
                    String::new()
                } else {
                    format!(", only {}", accepted_legacy.join(" and "))
                };
                (
                    R::NoModernVersion,
                    format!("the server accepts neither TLS 1.3 nor TLS 1.2{only}"),
                )
            } else {
                (
                    R::HandshakeFailed,
                    format!(
                        "neither a TLS 1.3 nor a TLS 1.2 handshake finished: {}",
                        refusals.join("; ")
                    ),
                )
            };
            self.fail(3, VERSIONS, reason, message, lines);
            return false;
        }
        if !matches!(seen.tls13, Some(Attempt::Agreed(_))) {
            lines.push(
                "no TLS 1.3: clients fall back to TLS 1.2, which Mozilla's intermediate profile \
                 still allows"
                    .into(),
            );
        }
        if accepted_legacy.is_empty() {
            self.report.pass(3, VERSIONS, lines, details);
        } else {
            let message = format!(
                "the server still accepts {}, which browsers stopped speaking in 2020",
                accepted_legacy.join(" and ")
            );
            let hint = "turn TLS 1.0 and 1.1 off (nginx: `ssl_protocols TLSv1.2 TLSv1.3;`; \
                        openssl: `-no_tls1 -no_tls1_1`); a hush gateway never accepts them";
            self.report
                .warn(3, VERSIONS, lines, details, (message, hint));
        }
        true
    }

    fn attempt_words(&self, attempt: &Attempt) -> String {
        match attempt {
            Attempt::Agreed(agreed) => format!("accepted, {}", agreed.version),
            Attempt::Alert(alert) => format!("alert {alert}"),
            Attempt::Failed(words) => words.clone(),
            Attempt::TimedOut => format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ),
            Attempt::NoConnection(e) => format!("cannot connect: {e}"),
        }
    }

    /// Step 4: the chain, up to a trusted root.
    fn chain(&mut self, agreed: &Agreed) -> bool {
        let mut lines = describe_chain(&agreed.chain);
        let details = json!({ "chain": chain_details(&agreed.chain) });
        match certs::verify_chain(&agreed.chain, self.trust, now()) {
            ChainVerdict::Trusted { as_of } => {
                let when = as_of.map_or_else(String::new, |at| {
                    format!(
                        " (checked as of {}, when the certificate was valid: its dates are \
                         step 6's)",
                        time_words(at)
                    )
                });
                lines.push(format!(
                    "chain: ok, up to a root of {}{when}",
                    self.trust.words
                ));
                self.report.pass(4, CHAIN, lines, details);
                true
            }
            ChainVerdict::Refused { reason, message } => {
                lines.push("chain: FAILED".into());
                self.fail(4, CHAIN, reason, message, lines);
                if let Some(step) = self.report.steps.last_mut() {
                    step.details = details;
                }
                false
            }
        }
    }

    /// Step 5: does the leaf cover the name asked for?
    fn name_step(&mut self, agreed: &Agreed) -> bool {
        let Some(leaf) = agreed.chain.first() else {
            return false;
        };
        match certs::name_match(leaf, self.server_name) {
            Ok(names) => {
                let line = format!("{} is covered: the certificate names {names}", self.name);
                self.report.pass(5, NAME, vec![line], Value::Null);
                true
            }
            Err(names) => {
                let message = format!(
                    "the certificate does not cover {}: it names {names}",
                    self.name
                );
                self.fail(5, NAME, R::WrongName, message, Vec::new());
                false
            }
        }
    }

    /// Step 6: the leaf's dates, with a warning two weeks ahead.
    fn expiry(&mut self, agreed: &Agreed) -> bool {
        let Some(leaf) = agreed
            .chain
            .first()
            .and_then(|c| CertificateSummary::from_der(c).ok())
        else {
            return false;
        };
        let details = json!({
            "not_before": leaf.not_before,
            "not_after": leaf.not_after,
            "seconds_left": leaf.not_after - now(),
        });
        match certs::expiry(&leaf, now()) {
            Expiry::Valid { words, .. } => {
                self.report.pass(6, EXPIRY, vec![words], details);
                true
            }
            Expiry::Soon { days_left, words } => {
                let message = format!(
                    "the certificate expires in {days_left} day{} (a warning under {} days)",
                    if days_left == 1 { "" } else { "s" },
                    certs::EXPIRY_WARNING_DAYS
                );
                let hint = "renew it now (a gateway renews ACME certificates at two thirds of \
                            their life and reloads its files when they change: its log says \
                            why it has not)";
                self.report
                    .warn(6, EXPIRY, vec![words], details, (message, hint));
                true
            }
            Expiry::Expired(message) => {
                self.fail(6, EXPIRY, R::Expired, message, Vec::new());
                false
            }
            Expiry::NotYetValid(message) => {
                self.fail(6, EXPIRY, R::NotYetValid, message, Vec::new());
                false
            }
        }
    }

    /// Step 7: a stapled OCSP response, if any; its absence is no failure.
    fn ocsp(&mut self, agreed: &Agreed) {
        if agreed.ocsp.is_empty() {
            let lines = vec![
                "none stapled (we asked): allowed; clients then ask the CA themselves, or do \
                 without"
                    .to_string(),
            ];
            self.report
                .pass(7, OCSP, lines, json!({ "stapled": false }));
            return;
        }
        let read = certs::read_ocsp(&agreed.ocsp);
        let mut details = json!({ "stapled": true, "bytes": agreed.ocsp.len() });
        let words = match &read {
            Some(stapled) => {
                details["response_status"] = json!(stapled.status);
                details["cert_status"] = json!(stapled.cert_status);
                format!(
                    "a stapled OCSP response came ({} bytes): status {}{}",
                    agreed.ocsp.len(),
                    stapled.status,
                    stapled
                        .cert_status
                        .map(|s| format!(", the certificate is {s}"))
                        .unwrap_or_default()
                )
            }
            None => format!(
                "a stapled OCSP response came ({} bytes), which this diagnosis cannot read",
                agreed.ocsp.len()
            ),
        };
        let lines = vec![
            words,
            "(the response's signature is not checked here: this says what the server staples)"
                .into(),
        ];
        if read.as_ref().and_then(|s| s.cert_status) == Some("revoked") {
            let message = "the stapled OCSP response says the certificate is revoked".into();
            let hint = "replace the certificate; a client that checks the staple refuses it";
            self.report.warn(7, OCSP, lines, details, (message, hint));
        } else {
            self.report.pass(7, OCSP, lines, details);
        }
    }
}

/// Whether a step of `report` has `status` (for the tests).
#[cfg(test)]
fn status_of(report: &Report, name: &str) -> Option<Status> {
    report
        .steps
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.status)
}

#[cfg(test)]
mod tests {
    use super::legacy::LegacyVersion;
    use super::*;

    fn agreed(version: &str) -> Attempt {
        Attempt::Agreed(Box::new(Agreed {
            version: version.into(),
            suite: "TLS13_AES_128_GCM_SHA256".into(),
            group: "X25519".into(),
            alpn: Some("h2".into()),
            chain: Vec::new(),
            ocsp: Vec::new(),
        }))
    }

    fn observation(tls13: Attempt, tls12: Attempt, legacy: [Answer; 2]) -> Observation {
        let [tls11, tls10] = legacy;
        Observation {
            connect: Connect::Connected {
                peer: "127.0.0.1:443".into(),
                took: Duration::from_millis(1),
            },
            first: ServerFirst::Alert("ProtocolVersion".into()),
            main: tls12.clone(),
            tls13: Some(tls13),
            tls12: Some(tls12),
            legacy: vec![(LegacyVersion::Tls11, tls11), (LegacyVersion::Tls10, tls10)],
        }
    }

    fn tell(seen: &Observation) -> Report {
        let mut report = Report::new("127.0.0.1:443");
        let name = ServerName::try_from("shop.example.com").unwrap();
        Story {
            report: &mut report,
            server_name: &name,
            name: "shop.example.com",
            trust: &PublicTrust::mozilla(),
            timeout: Duration::from_secs(1),
        }
        .tell(seen);
        report
    }

    fn refused() -> Attempt {
        Attempt::Alert("ProtocolVersion".into())
    }

    #[test]
    fn old_versions_accepted_are_a_warning_and_never_a_failure() {
        let seen = observation(
            refused(),
            agreed("TLS 1.2"),
            [Answer::Closed, Answer::Accepted { suite: "x".into() }],
        );
        let report = tell(&seen);
        assert_eq!(status_of(&report, VERSIONS), Some(Status::Warning));
        assert_eq!(
            report.warnings[0].message,
            "the server still accepts TLS 1.0, which browsers stopped speaking in 2020"
        );
        // The chain step follows (it fails here: the fake handshake presented none).
        assert_eq!(report.failure.as_ref().map(|f| f.step), Some(4));
    }

    #[test]
    fn refused_modern_versions_fail_naming_what_the_server_said() {
        let report = tell(&observation(
            refused(),
            refused(),
            [
                Answer::Alert("ProtocolVersion".into()),
                Answer::Accepted { suite: "x".into() },
            ],
        ));
        let failure = report.failure.expect("a failure");
        assert_eq!((failure.step, failure.reason.as_str()), (3, "tls_version"));
        assert_eq!(
            failure.message,
            "the server accepts neither TLS 1.3 nor TLS 1.2, only TLS 1.0"
        );

        // Refused for another reason than the version: not said to be about versions.
        let other = Attempt::Alert("HandshakeFailure".into());
        let report = tell(&observation(
            other.clone(),
            other,
            [Answer::Closed, Answer::Closed],
        ));
        let failure = report.failure.expect("a failure");
        assert_eq!((failure.step, failure.reason.as_str()), (3, "handshake"));
        assert!(
            !failure.message.contains("accepts neither"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_silent_legacy_probe_is_not_called_a_refusal() {
        let report = tell(&observation(
            agreed("TLS 1.3"),
            agreed("TLS 1.2"),
            [Answer::Silent, Answer::Closed],
        ));
        let versions = report.steps.iter().find(|s| s.name == VERSIONS).unwrap();
        assert_eq!(versions.status, Status::Ok);
        assert!(
            versions
                .lines
                .iter()
                .any(|l| l.starts_with("TLS 1.1: not known"))
        );
        assert!(
            versions
                .lines
                .iter()
                .any(|l| l.starts_with("TLS 1.0: refused"))
        );
    }

    #[test]
    fn plaintext_http_fails_at_the_hello() {
        let mut seen = observation(refused(), refused(), [Answer::Closed, Answer::Closed]);
        seen.first = ServerFirst::NotTls("HTTP/1.1 400 Bad Request".into());
        let failure = tell(&seen).failure.expect("a failure");
        assert_eq!(
            (failure.step, failure.reason.as_str()),
            (2, "plaintext_http")
        );
        seen.first = ServerFirst::NotTls("SSH-2.0-OpenSSH_9.2".into());
        let failure = tell(&seen).failure.expect("a failure");
        assert_eq!((failure.step, failure.reason.as_str()), (2, "not_tls"));
    }
}
