//! The access log: one line per request or connection, written when it is done, with who
//! called whom, what the policy decided, how it ended and how long it took.
//!
//! Lines go to the `hush::access` log target (text or JSON, like every log line). Which ones
//! are written is the configuration's `access_log`: by default only requests and connections
//! that were refused or failed, or that an AUDIT rule marked; `all` writes every one.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::info;

use crate::config::AccessLog;
use crate::metrics::Direction;
use crate::policy::Judgement;
use crate::trace::current_trace_id;

/// What went through: an HTTP exchange or an opaque TCP connection.
#[derive(Debug)]
pub(crate) enum Exchange<'a> {
    Http {
        method: &'a str,
        path: &'a str,
        /// The status the client received (the sidecar's own, when it answered itself).
        status: u16,
        /// The gRPC status the response ended with: from its trailers, or from the head of a
        /// trailers-only answer.
        grpc_status: Option<i32>,
        /// From the request to the response head; the line's `duration` runs to the end of
        /// the body. `None` when no head was sent: the caller left first (`status` is then 0).
        head: Option<Duration>,
        /// Whether the whole body was delivered: false when the far side broke it off (the
        /// line's `error` says why) or the caller left before its end.
        complete: bool,
    },
    Tcp {
        /// Bytes from the client, and to it; `None` when the connection never got as far as
        /// relaying.
        bytes: Option<(u64, u64)>,
    },
}

/// One access-log line.
#[derive(Debug)]
pub(crate) struct AccessLine<'a> {
    pub(crate) direction: Direction,
    /// Where the connection came from.
    pub(crate) client: SocketAddr,
    /// This sidecar's SPIFFE ID.
    pub(crate) local_id: &'a str,
    /// The other sidecar's verified SPIFFE ID, when a mesh connection was made.
    pub(crate) peer_id: Option<&'a str>,
    pub(crate) exchange: Exchange<'a>,
    /// The policy's decision (inbound, with a policy).
    pub(crate) judgement: Option<&'a Judgement>,
    /// Why the sidecar could not complete it, in words.
    pub(crate) error: Option<&'a str>,
    /// From the request (or connection) to the end of the response body (or of the
    /// connection).
    pub(crate) duration: Duration,
}

impl AccessLine<'_> {
    /// Whether `mode` wants this line.
    pub(crate) fn wanted(&self, mode: AccessLog) -> bool {
        match mode {
            AccessLog::Off => false,
            AccessLog::All => true,
            AccessLog::Denied => {
                self.error.is_some()
                    || self
                        .judgement
                        .is_some_and(|j| !j.allowed || j.audit.is_some())
            }
        }
    }

    /// How it ended, in words: `200 in 2.00 ms`, `no response in 1.5 s; the caller left …`,
    /// with the policy's sentence and the error.
    fn outcome(&self) -> String {
        let mut outcome = match &self.exchange {
            Exchange::Http {
                status,
                grpc_status,
                head,
                complete,
                ..
            } => {
                let mut outcome = match head {
                    Some(_) => status.to_string(),
                    None => "no response".to_owned(),
                };
                if let Some(code) = grpc_status {
                    outcome.push_str(&format!(" (gRPC {code} {})", grpc_code_name(*code)));
                }
                outcome.push_str(&format!(" in {}", Millis(self.duration)));
                // A stream or a download: how long the far side took to start answering.
                if let Some(head) = head
                    && self.duration.saturating_sub(*head) >= Duration::from_millis(1)
                {
                    outcome.push_str(&format!(" (head after {})", Millis(*head)));
                }
                if !complete && self.error.is_none() {
                    outcome.push_str(match head {
                        Some(_) => "; the caller left before the response ended",
                        None => "; the caller left before the response head",
                    });
                }
                outcome
            }
            Exchange::Tcp {
                bytes: Some((received, sent)),
            } => format!(
                "{received} bytes in, {sent} out, in {}",
                Millis(self.duration)
            ),
            Exchange::Tcp { bytes: None } => format!("closed after {}", Millis(self.duration)),
        };
        if let Some(sentence) = self.judgement.and_then(|j| j.sentence.as_deref()) {
            outcome.push_str("; ");
            outcome.push_str(sentence);
        }
        if let Some(error) = self.error {
            outcome.push_str("; ");
            outcome.push_str(error);
        }
        outcome
    }

    /// Writes the line if `mode` wants it.
    pub(crate) fn write(&self, mode: AccessLog) {
        if !self.wanted(mode) {
            return;
        }
        let direction = self.direction.as_str();
        let peer_id = self.peer_id.unwrap_or("-");
        let duration_ms = self.duration.as_secs_f64() * 1000.0;
        let (decision, policy, audit) = match self.judgement {
            Some(j) => (
                j.verdict(),
                j.policy.as_deref().unwrap_or("-"),
                j.audit.as_deref().unwrap_or("-"),
            ),
            None => ("-", "-", "-"),
        };
        let trace_id = current_trace_id();
        let trace_id = trace_id.as_deref().unwrap_or("-");
        // Inbound, the peer is the caller; outbound, the callee.
        let parties = match self.direction {
            Direction::Inbound => format!("from {peer_id} ({})", self.client),
            Direction::Outbound | Direction::Gateway => {
                format!("from {} to {peer_id}", self.client)
            }
        };
        let outcome = self.outcome();
        match &self.exchange {
            Exchange::Http {
                method,
                path,
                status,
                grpc_status,
                head,
                complete,
            } => info!(
                target: "hush::access",
                direction,
                protocol = "http",
                local_id = self.local_id,
                peer_id,
                client = %self.client,
                method,
                path,
                status = i64::from(*status),
                grpc_status = grpc_status.map(i64::from),
                complete,
                decision,
                policy,
                audit,
                error = self.error.unwrap_or("-"),
                duration_ms,
                response_head_ms = head.map(|head| head.as_secs_f64() * 1000.0),
                trace_id,
                "access: {direction} {method} {path} {parties}: {outcome}"
            ),
            Exchange::Tcp { bytes } => {
                let (received, sent) = bytes.unwrap_or_default();
                // Signed, as OpenTelemetry span events want their integers.
                let (received, sent) = (
                    i64::try_from(received).unwrap_or(i64::MAX),
                    i64::try_from(sent).unwrap_or(i64::MAX),
                );
                info!(
                    target: "hush::access",
                    direction,
                    protocol = "tcp",
                    local_id = self.local_id,
                    peer_id,
                    client = %self.client,
                    bytes_received = received,
                    bytes_sent = sent,
                    decision,
                    policy,
                    audit,
                    error = self.error.unwrap_or("-"),
                    duration_ms,
                    trace_id,
                    "access: {direction} TCP connection {parties}: {outcome}"
                );
            }
        }
    }
}

/// The name gRPC gives a status code (`UNAVAILABLE` for 14).
pub(crate) fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "(not a gRPC code)",
    }
}

/// A duration as a person reads it in a log line: `0.42 ms`, `12.3 ms`, `2.5 s`.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_secs_f64() * 1000.0;
        if ms < 10.0 {
            write!(f, "{ms:.2} ms")
        } else if ms < 1000.0 {
            write!(f, "{ms:.1} ms")
        } else {
            write!(f, "{:.1} s", ms / 1000.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(judgement: Option<&Judgement>, error: Option<&'static str>) -> AccessLine<'static> {
        // The judgement's lifetime is the test's; a leak keeps the helper simple.
        let judgement = judgement.map(|j| &*Box::leak(Box::new(j.clone())));
        AccessLine {
            direction: Direction::Inbound,
            client: "127.0.0.1:5000".parse().unwrap(),
            local_id: "spiffe://cluster.local/ns/shop/sa/backend",
            peer_id: Some("spiffe://cluster.local/ns/shop/sa/frontend"),
            exchange: Exchange::Http {
                method: "GET",
                path: "/api",
                status: 200,
                grpc_status: None,
                head: Some(Duration::from_micros(1400)),
                complete: true,
            },
            judgement,
            error,
            duration: Duration::from_micros(1500),
        }
    }

    fn judgement(allowed: bool, audit: bool) -> Judgement {
        Judgement {
            allowed,
            ambiguous_path: false,
            policy: Some("p".into()),
            audit: audit.then(|| "a".into()),
            sentence: None,
        }
    }

    #[test]
    fn the_default_logs_what_went_wrong_or_was_audited() {
        let mode = AccessLog::Denied;
        assert!(!line(None, None).wanted(mode));
        assert!(!line(Some(&judgement(true, false)), None).wanted(mode));
        assert!(line(Some(&judgement(false, false)), None).wanted(mode));
        assert!(line(Some(&judgement(true, true)), None).wanted(mode));
        assert!(line(None, Some("the app refused the connection")).wanted(mode));
        assert!(line(None, None).wanted(AccessLog::All));
        assert!(!line(Some(&judgement(false, false)), Some("x")).wanted(AccessLog::Off));
    }

    /// The sentence an HTTP line tells, without the parties.
    fn outcome_of(head: Option<Duration>, duration: Duration, complete: bool) -> String {
        let mut line = line(None, None);
        line.duration = duration;
        if let Exchange::Http {
            head: h,
            complete: c,
            status,
            ..
        } = &mut line.exchange
        {
            *h = head;
            *c = complete;
            if head.is_none() {
                *status = 0;
            }
        }
        line.outcome()
    }

    #[test]
    fn an_http_line_tells_how_the_exchange_ended() {
        let ms = Duration::from_millis;
        assert_eq!(outcome_of(Some(ms(2)), ms(2), true), "200 in 2.00 ms");
        assert_eq!(
            outcome_of(Some(ms(3)), ms(300), true),
            "200 in 300.0 ms (head after 3.00 ms)"
        );
        assert_eq!(
            outcome_of(Some(ms(3)), ms(300), false),
            "200 in 300.0 ms (head after 3.00 ms); the caller left before the response ended"
        );
        assert_eq!(
            outcome_of(None, ms(1500), false),
            "no response in 1.5 s; the caller left before the response head"
        );
    }

    #[test]
    fn grpc_codes_have_their_names() {
        assert_eq!(grpc_code_name(0), "OK");
        assert_eq!(grpc_code_name(14), "UNAVAILABLE");
        assert_eq!(grpc_code_name(16), "UNAUTHENTICATED");
        assert_eq!(grpc_code_name(17), "(not a gRPC code)");
        assert_eq!(grpc_code_name(-1), "(not a gRPC code)");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(Millis(Duration::from_micros(420)).to_string(), "0.42 ms");
        assert_eq!(Millis(Duration::from_micros(12_345)).to_string(), "12.3 ms");
        assert_eq!(Millis(Duration::from_millis(2500)).to_string(), "2.5 s");
    }
}
