//! The report: numbered steps, each with what was seen, and the first failure in one line with
//! a hint; printed for people or as JSON for scripts.

use std::fmt::Write as _;
use std::time::SystemTime;

use hush_identity::CertificateSummary;
use hush_tls::ExpectedServer;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde_json::{Value, json};

use super::hints::Reason;
use crate::times::{span, utc_second};

/// The whole story.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) target: String,
    /// No step failed (set from `failure` once the story is told).
    pub(super) ok: bool,
    pub(super) steps: Vec<Step>,
    /// The first step that failed, in one line, with what to do.
    pub(super) failure: Option<Failure>,
    /// What is worth fixing though nothing failed (`hush diagnose --public` only: a sidecar's
    /// handshake works or it does not).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) warnings: Vec<Warning>,
}

/// A step that passed with something worth fixing.
#[derive(Debug, Serialize)]
pub(super) struct Warning {
    pub(super) step: u8,
    pub(super) name: &'static str,
    pub(super) message: String,
    pub(super) hint: &'static str,
}

#[derive(Debug, Serialize)]
pub(super) struct Step {
    pub(super) number: u8,
    pub(super) name: &'static str,
    pub(super) status: Status,
    pub(super) lines: Vec<String>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub(super) details: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Status {
    Ok,
    Warning,
    Failed,
    Skipped,
}

#[derive(Debug, Serialize)]
pub(super) struct Failure {
    pub(super) step: u8,
    pub(super) name: &'static str,
    pub(super) reason: Reason,
    pub(super) message: String,
    pub(super) hint: &'static str,
}

// === impl Report ===

impl Report {
    pub(super) fn new(target: &str) -> Self {
        Self {
            target: target.to_string(),
            ok: false,
            steps: Vec::new(),
            failure: None,
            warnings: Vec::new(),
        }
    }

    /// A step that passed with a warning: `message` says what, `hint` what to do.
    pub(super) fn warn(
        &mut self,
        number: u8,
        name: &'static str,
        lines: Vec<String>,
        details: Value,
        (message, hint): (String, &'static str),
    ) {
        self.push(number, name, Status::Warning, lines, details);
        self.warnings.push(Warning {
            step: number,
            name,
            message,
            hint,
        });
    }

    pub(super) fn pass(
        &mut self,
        number: u8,
        name: &'static str,
        lines: Vec<String>,
        details: Value,
    ) {
        self.push(number, name, Status::Ok, lines, details);
    }

    pub(super) fn skip(
        &mut self,
        number: u8,
        name: &'static str,
        lines: Vec<String>,
        details: Value,
    ) {
        self.push(number, name, Status::Skipped, lines, details);
    }

    /// A failed step; the first one is the report's failure.
    pub(super) fn fail(
        &mut self,
        number: u8,
        name: &'static str,
        reason: Reason,
        message: String,
        lines: Vec<String>,
    ) {
        self.push(number, name, Status::Failed, lines, Value::Null);
        self.failed(number, name, reason, message);
    }

    /// The report's failure, if it has none yet, without a step of its own.
    pub(super) fn failed(
        &mut self,
        number: u8,
        name: &'static str,
        reason: Reason,
        message: String,
    ) {
        if self.failure.is_none() {
            self.failure = Some(Failure {
                step: number,
                name,
                reason,
                message,
                hint: reason.hint(),
            });
        }
    }

    fn push(
        &mut self,
        number: u8,
        name: &'static str,
        status: Status,
        lines: Vec<String>,
        details: Value,
    ) {
        self.steps.push(Step {
            number,
            name,
            status,
            lines,
            details,
        });
    }
}

/// The report for people. `expected` is what the server must prove, said in the first line;
/// `works` what the last line says when nothing failed.
pub(super) fn render(report: &Report, expected: &str, works: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "hush diagnose {} ({expected})", report.target);
    for step in &report.steps {
        let status = match step.status {
            Status::Ok => "ok",
            Status::Warning => "WARNING",
            Status::Failed => "FAILED",
            Status::Skipped => "not checked",
        };
        let _ = writeln!(out, "step {}, {}: {status}", step.number, step.name);
        for line in &step.lines {
            let _ = writeln!(out, "  {line}");
        }
    }
    for warning in &report.warnings {
        let _ = writeln!(
            out,
            "warning at step {}, {}: {}",
            warning.step, warning.name, warning.message
        );
        let _ = writeln!(out, "hint: {}", warning.hint);
    }
    match &report.failure {
        None if report.warnings.is_empty() => {
            let _ = writeln!(out, "result: ok, {works}");
        }
        None => {
            let _ = writeln!(
                out,
                "result: ok with {} warning{}, {works}",
                report.warnings.len(),
                if report.warnings.len() == 1 { "" } else { "s" }
            );
        }
        Some(failure) => {
            let _ = writeln!(
                out,
                "result: FAILED at step {}, {}: {}",
                failure.step, failure.name, failure.message
            );
            let _ = writeln!(out, "hint: {}", failure.hint);
        }
    }
    out
}

/// The identities `expected` names, in words.
pub(super) fn expected_words(expected: &ExpectedServer) -> Option<String> {
    match expected {
        ExpectedServer::OneOf(ids) => Some(
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        ),
        ExpectedServer::AnyInTrustDomain => None,
    }
}

// === certificates in words ===

/// How a certificate is named in the report: a workload by its SPIFFE ID, a CA (which names its
/// trust domain as a SPIFFE ID) or anything else by its subject, which says more.
pub(super) fn label(summary: &CertificateSummary) -> String {
    match (&summary.spiffe_id, summary.is_ca) {
        (Some(id), false) => id.to_string(),
        _ => summary.subject.clone(),
    }
}

pub(super) fn describe_chain(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let mut lines = vec![format!(
        "the server presented {} certificate{}:",
        chain.len(),
        if chain.len() == 1 { "" } else { "s" }
    )];
    for (index, cert) in chain.iter().enumerate() {
        let line = match CertificateSummary::from_der(cert) {
            Ok(summary) => format!(
                "  {}. {} — issued by {}; valid {} to {} ({})",
                index + 1,
                label(&summary),
                summary.issuer,
                utc_second(timestamp(summary.not_before)),
                utc_second(timestamp(summary.not_after)),
                validity_words(summary.not_before, summary.not_after),
            ),
            Err(e) => format!("  {}. cannot be read: {e}", index + 1),
        };
        lines.push(line);
    }
    lines
}

pub(super) fn chain_details(chain: &[CertificateDer<'_>]) -> Value {
    chain
        .iter()
        .map(|cert| match CertificateSummary::from_der(cert) {
            Ok(s) => json!({
                "subject": s.subject,
                "issuer": s.issuer,
                "spiffe_id": s.spiffe_id.map(|id| id.to_string()),
                "not_before": s.not_before,
                "not_after": s.not_after,
                "seconds_left": s.not_after - now(),
            }),
            Err(e) => json!({ "error": e.to_string() }),
        })
        .collect()
}

/// Now, in Unix seconds.
pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn timestamp(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A Unix time as hush prints times (`2026-11-28T09:42:10Z`).
pub(super) fn time_words(seconds: i64) -> String {
    utc_second(timestamp(seconds))
}

fn validity_words(not_before: i64, not_after: i64) -> String {
    let now = now();
    if now > not_after {
        format!("expired {} ago", span(now - not_after))
    } else if now < not_before {
        format!("not valid for {} more", span(not_before - now))
    } else {
        format!("{} left", span(not_after - now))
    }
}

pub(super) fn time_left(not_after: i64) -> String {
    span((not_after - now()).max(0))
}
