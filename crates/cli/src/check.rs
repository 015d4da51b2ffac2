//! `hush check --config sidecar.yaml`: is this sidecar's installation sound? Each check says
//! ok, a warning, or what failed and what to do: the configuration, the trust bundle, the CA
//! (reachable, and serving the same bundle), the clocks (against the CA's), the policy files,
//! the token file, and the running sidecar's certificate (valid, not about to expire).
//!
//! `hush check --gateway gateway.yaml` does the same for an edge gateway ([`gateway`]): its
//! mesh side as a sidecar's, then its public side.

mod gateway;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hush_ca::AuthorityKind;
use hush_identity::{CertificateSummary, TrustBundle};
use hush_proxy::ProxyConfig;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;

use crate::parse_duration;
use crate::times::span;

/// Clocks further apart than this are worth a warning; past the CA's back-dating (5 min by
/// default) new certificates would look not valid yet to the fast side.
const SKEW_WARNING: Duration = Duration::from_secs(30);
const SKEW_FAILURE: Duration = Duration::from_secs(4 * 60);

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The sidecar's configuration.
    #[arg(long, env = "HUSH_PROXY_CONFIG", required_unless_present = "gateway")]
    config: Option<PathBuf>,
    /// Check an edge gateway's configuration instead (`hush gateway --config`): its CA side as
    /// a sidecar's, its certificates, ACME, and its public listener host by host. Taken over
    /// --config (and HUSH_PROXY_CONFIG) when both are given.
    #[arg(long, value_name = "FILE")]
    gateway: Option<PathBuf>,
    /// With --gateway: the running gateway's public address, when it is not `https.listen`.
    #[arg(long, requires = "gateway")]
    https: Option<SocketAddr>,
    /// With --gateway: the roots (PEM) the public certificates must chain to, instead of
    /// Mozilla's (a private CA).
    #[arg(long, requires = "gateway")]
    ca_file: Option<PathBuf>,
    /// The running sidecar's admin address, when it is not the configuration's `admin.listen`
    /// (a sidecar started on port 0 prints the one it got).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// How long each network check may take.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// A certificate with less than this left is reported as about to expire.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    expiry_warning: Duration,
    /// Print the report as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    Warning,
    Failed,
    Skipped,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    /// What the check is about, when one name covers several (a gateway's certificates, its
    /// hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    verdict: Verdict,
    message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    hint: String,
}

#[derive(Debug, Serialize)]
struct Report {
    config: String,
    ok: bool,
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: &'static str, verdict: Verdict, message: String, hint: &str) {
        self.checks.push(Check {
            name,
            subject: None,
            verdict,
            message,
            hint: hint.to_string(),
        });
    }
}

/// Runs every check; returns whether none failed (warnings do not fail).
pub(crate) async fn run(args: CheckArgs) -> Result<bool> {
    let report = check(&args).await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&report).as_bytes())?;
    }
    out.flush()?;
    Ok(report.ok)
}

async fn check(args: &CheckArgs) -> Report {
    match (&args.gateway, &args.config) {
        (Some(path), _) => gateway::check(path, args).await,
        (None, Some(path)) => check_sidecar(path, args).await,
        // clap requires one of them.
        (None, None) => Report {
            config: String::new(),
            ok: false,
            checks: Vec::new(),
        },
    }
}

async fn check_sidecar(path: &std::path::Path, args: &CheckArgs) -> Report {
    let mut report = Report {
        config: path.display().to_string(),
        ok: false,
        checks: Vec::new(),
    };
    let config = match ProxyConfig::load(path) {
        Ok(config) => {
            report.add("configuration", Verdict::Ok, "valid".into(), "");
            config
        }
        Err(e) => {
            report.add(
                "configuration",
                Verdict::Failed,
                format!("{e:#}"),
                "fix the file; `hush proxy --config FILE --check` says the same",
            );
            return report;
        }
    };

    let bundle = match hush_proxy::load_trust_bundle(&config) {
        Ok(bundle) => {
            let (verdict, message, hint) = describe_bundle(&bundle);
            report.add("trust bundle", verdict, message, &hint);
            bundle
        }
        Err(e) => {
            report.add(
                "trust bundle",
                Verdict::Failed,
                format!("{e:#}"),
                "point ca.trust_bundle at the mesh's bundle.pem (`hush ca bundle`)",
            );
            return report;
        }
    };

    check_ca(&mut report, &config.ca.address, &bundle, args.timeout).await;

    match hush_proxy::check_policy(&config, bundle.trust_domain().clone()) {
        Ok(Some(summary)) => report.add("policy", Verdict::Ok, summary, ""),
        Ok(None) => report.add(
            "policy",
            Verdict::Ok,
            "none configured: any authenticated mesh identity may call the app".into(),
            "",
        ),
        Err(e) => report.add(
            "policy",
            Verdict::Failed,
            format!("{e:#}"),
            "the running sidecar keeps its last good policy until the files are fixed",
        ),
    }

    check_token_file(&mut report, &config.ca.token_file);

    check_certificate(&mut report, &config, args).await;

    report.ok = report.checks.iter().all(|c| c.verdict != Verdict::Failed);
    report
}

fn check_token_file(report: &mut Report, token_file: &std::path::Path) {
    match std::fs::read_to_string(token_file) {
        Ok(token) if !token.trim().is_empty() => report.add(
            "token file",
            Verdict::Ok,
            format!("{} is readable", token_file.display()),
            "",
        ),
        Ok(_) => report.add(
            "token file",
            Verdict::Warning,
            format!("{} is empty", token_file.display()),
            "a running sidecar renews with its certificate, but a restart needs a token",
        ),
        Err(e) => report.add(
            "token file",
            Verdict::Warning,
            format!("cannot read {}: {e}", token_file.display()),
            "a running sidecar renews with its certificate, but a restart needs a token",
        ),
    }
}

fn describe_bundle(bundle: &TrustBundle) -> (Verdict, String, String) {
    let now = unix_now();
    let not_afters: Vec<i64> = bundle
        .roots()
        .iter()
        .filter_map(|root| CertificateSummary::from_der(root).ok())
        .map(|root| root.not_after)
        .collect();
    let soonest = not_afters.iter().copied().min().unwrap_or(i64::MAX);
    let latest = not_afters.iter().copied().max().unwrap_or(i64::MAX);
    let mut message = format!(
        "trust domain {}, {} root{}, the first to expire in {}",
        bundle.trust_domain(),
        bundle.roots().len(),
        if bundle.roots().len() == 1 { "" } else { "s" },
        span(soonest - now)
    );
    if not_afters.len() > 1 {
        let _ = write!(message, ", the last in {}", span(latest - now));
    }
    let (verdict, hint) = judge_roots(&not_afters, now);
    (verdict, message, hint)
}

/// How a bundle whose roots end at `not_afters` stands at `now`.
///
/// A root is due for rotation by the rule the CA itself warns by (`hush_ca::is_rotation_due`,
/// a year ahead), applied to the root that lasts longest: the bundle does not say which root
/// signs, and the newest is either the active one or its staged successor, while an older one
/// may expire harmlessly once replaced. The CA's active intermediate is judged apart
/// ([`judge_intermediate`]), from what the CA says of its authorities.
fn judge_roots(not_afters: &[i64], now: i64) -> (Verdict, String) {
    let Some(&latest) = not_afters.iter().max() else {
        return (Verdict::Ok, String::new());
    };
    if not_afters.iter().any(|&not_after| not_after <= now) {
        (
            Verdict::Failed,
            "a root has expired: on the CA, revoke it (`hush ca revoke`) or, if it is the \
             active one, rotate the root (`hush ca rotate root`); then replace this bundle"
                .into(),
        )
    } else if hush_ca::is_rotation_due(AuthorityKind::Root, latest, now) {
        (
            Verdict::Warning,
            format!(
                "every root expires within {} days: rotate the root on the CA (`hush ca rotate \
                 root`) and publish the new bundle",
                hush_ca::ROOT_ROTATION_WARNING.as_secs() / 86_400
            ),
        )
    } else {
        (Verdict::Ok, String::new())
    }
}

/// How the CA's active intermediate stands at `now`, by the rule the CA warns by (a month
/// ahead), from the authorities its GetTrustBundle lists (none from a CA older than them).
fn judge_intermediate(
    authorities: &[hush_ca::proto::Authority],
    now: i64,
) -> (Verdict, String, String) {
    if authorities.is_empty() {
        return (
            Verdict::Skipped,
            "the CA does not list its authorities (a hush older than rotation)".into(),
            String::new(),
        );
    }
    let Some(active) = authorities
        .iter()
        .find(|a| a.kind == "intermediate" && a.state == "active")
    else {
        return (
            Verdict::Warning,
            "the CA lists no active intermediate".into(),
            "run `hush ca authorities` on the CA's directory".into(),
        );
    };
    let left = active.not_after_unix - now;
    let message = format!(
        "the CA signs with intermediate {}, {} left",
        active.id,
        span(left)
    );
    if left <= 0 {
        (
            Verdict::Failed,
            message,
            "the CA's intermediate has expired: rotate it (`hush ca rotate intermediate`, then \
             `hush ca activate`)"
                .into(),
        )
    } else if hush_ca::is_rotation_due(AuthorityKind::Intermediate, active.not_after_unix, now) {
        (
            Verdict::Warning,
            message,
            format!(
                "it expires within {} days: rotate it on the CA (`hush ca rotate intermediate`, \
                 then `hush ca activate`)",
                hush_ca::INTERMEDIATE_ROTATION_WARNING.as_secs() / 86_400
            ),
        )
    } else {
        (Verdict::Ok, message, String::new())
    }
}

async fn check_ca(report: &mut Report, address: &str, bundle: &TrustBundle, timeout: Duration) {
    let client = match hush_ca_client::CaClient::new(address, bundle.roots()) {
        Ok(client) => client,
        Err(e) => {
            report.add("CA", Verdict::Failed, format!("{address}: {e}"), "");
            report.add("clocks", Verdict::Skipped, "needs the CA".into(), "");
            return;
        }
    };
    let sent = SystemTime::now();
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, client.trust_bundle()).await;
    let round_trip = started.elapsed();
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(status)) => {
            report.add(
                "CA",
                Verdict::Failed,
                format!("{address} did not answer: {}", status.message()),
                "is the CA running, reachable from here, and its certificate from this bundle?",
            );
            report.add("clocks", Verdict::Skipped, "needs the CA".into(), "");
            return;
        }
        Err(_) => {
            report.add(
                "CA",
                Verdict::Failed,
                format!(
                    "{address} did not answer within {}",
                    humantime::format_duration(timeout)
                ),
                "is the CA running and reachable from here?",
            );
            report.add("clocks", Verdict::Skipped, "needs the CA".into(), "");
            return;
        }
    };
    let theirs: Vec<&[u8]> = answer.roots.iter().map(Vec::as_slice).collect();
    let ours: Vec<&[u8]> = bundle.roots().iter().map(|r| r.as_ref()).collect();
    let reached = format!(
        "{address} answered in {:.1} ms",
        round_trip.as_secs_f64() * 1000.0
    );
    if answer.trust_domain != bundle.trust_domain().as_str() {
        report.add(
            "CA",
            Verdict::Failed,
            format!(
                "{reached}, but it serves trust domain {}, and the bundle is for {}",
                answer.trust_domain,
                bundle.trust_domain()
            ),
            "ca.address and ca.trust_bundle belong to different meshes",
        );
    } else if theirs.iter().all(|r| ours.contains(r)) && ours.iter().all(|r| theirs.contains(r)) {
        report.add(
            "CA",
            Verdict::Ok,
            format!("{reached}; its bundle is this one"),
            "",
        );
    } else if theirs.iter().any(|r| ours.contains(r)) {
        report.add(
            "CA",
            Verdict::Warning,
            format!("{reached}; its bundle and this one share some roots, not all"),
            "a root rotation is under way: update the local bundle (`hush ca bundle`)",
        );
    } else {
        report.add(
            "CA",
            Verdict::Failed,
            format!("{reached}, but its bundle shares no root with this one"),
            "the local bundle is of another CA: replace it with the CA's (`hush ca bundle`)",
        );
    }

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let (verdict, message, hint) = judge_intermediate(&answer.authorities, now);
    report.add("intermediate", verdict, message, &hint);

    // The CA's clock, read half a round trip after the request left.
    let midpoint = sent + round_trip / 2;
    let ours = midpoint
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    let skew = ours - answer.server_time_unix as f64;
    let (verdict, hint) = judge_skew(skew, answer.server_time_unix);
    let message = if answer.server_time_unix == 0 {
        "the CA does not tell its time (an older hush)".to_string()
    } else if skew.abs() < 1.0 {
        "this clock and the CA's agree to within a second".to_string()
    } else {
        format!(
            "this clock is {} {} the CA's",
            span(skew.abs().round() as i64),
            if skew > 0.0 { "ahead of" } else { "behind" }
        )
    };
    report.add("clocks", verdict, message, hint);
}

fn judge_skew(skew: f64, server_time: i64) -> (Verdict, &'static str) {
    if server_time == 0 {
        return (Verdict::Skipped, "");
    }
    let skew = Duration::from_secs_f64(skew.abs());
    if skew > SKEW_FAILURE {
        (
            Verdict::Failed,
            "new certificates will look not valid yet (or expired) to one side: fix the clocks \
             (NTP)",
        )
    } else if skew > SKEW_WARNING {
        (
            Verdict::Warning,
            "the clocks drift apart: check NTP on both machines",
        )
    } else {
        (Verdict::Ok, "")
    }
}

async fn check_certificate(report: &mut Report, config: &ProxyConfig, args: &CheckArgs) {
    let admin = match args.admin {
        Some(admin) => admin,
        None if config.admin.listen.port() == 0 => {
            report.add(
                "certificate",
                Verdict::Skipped,
                "admin.listen has port 0, chosen when the sidecar starts".into(),
                "pass --admin with the address the sidecar printed",
            );
            return;
        }
        None => reachable(config.admin.listen),
    };
    let certs = match tokio::time::timeout(args.timeout, get_json(admin, "/certs")).await {
        Ok(Ok(certs)) => certs,
        Ok(Err(e)) => {
            report.add(
                "certificate",
                Verdict::Skipped,
                format!("no sidecar answers on its admin port {admin}: {e}"),
                "start it with `hush proxy --config …` to check its certificate",
            );
            return;
        }
        Err(_) => {
            report.add(
                "certificate",
                Verdict::Skipped,
                format!("the admin port {admin} did not answer"),
                "",
            );
            return;
        }
    };
    let left = certs["certificate"]["seconds_left"].as_i64();
    let identity = certs["spiffe_id"].as_str().unwrap_or("?");
    let last_error = certs["last_error"].as_str().unwrap_or("");
    match left {
        None => report.add(
            "certificate",
            Verdict::Failed,
            format!("the sidecar holds no certificate yet: {last_error}"),
            "its log says why the CA refused or could not be reached",
        ),
        Some(left) if left <= 0 => report.add(
            "certificate",
            Verdict::Failed,
            format!("{identity}: expired {} ago; {last_error}", span(-left)),
            "the sidecar cannot renew: its log says why",
        ),
        Some(left) if u64::try_from(left).unwrap_or(0) < args.expiry_warning.as_secs() => report
            .add(
                "certificate",
                Verdict::Warning,
                format!(
                    "{identity}: expires in {}{}",
                    span(left),
                    if last_error.is_empty() {
                        String::new()
                    } else {
                        format!("; renewal failing: {last_error}")
                    }
                ),
                "renewal should have happened by now: check that the CA is reachable",
            ),
        Some(left) => report.add(
            "certificate",
            Verdict::Ok,
            format!("{identity}: valid, {} left", span(left)),
            "",
        ),
    }
}

/// An address to dial for a listener: a wildcard listen address is reached on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

async fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("not the sidecar's JSON: {e}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "hush check {}", report.config);
    for check in &report.checks {
        let verdict = match check.verdict {
            Verdict::Ok => "ok",
            Verdict::Warning => "WARNING",
            Verdict::Failed => "FAILED",
            Verdict::Skipped => "not checked",
        };
        let _ = writeln!(out, "{:<14} {verdict}: {}", check.name, check.message);
        if !check.hint.is_empty() && check.verdict != Verdict::Ok {
            let _ = writeln!(out, "{:<14} hint: {}", "", check.hint);
        }
    }
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Failed)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        let _ = writeln!(out, "result: ok");
    } else {
        let _ = writeln!(out, "result: FAILED ({})", failed.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cas_intermediate_is_judged_a_month_ahead() {
        let now = 1_800_000_000;
        let day = 86_400;
        let authority = |kind: &str, state: &str, left: i64| hush_ca::proto::Authority {
            id: "0123456789abcdef".into(),
            kind: kind.into(),
            state: state.into(),
            not_after_unix: now + left,
            issuer_id: String::new(),
        };
        let judge = |list: &[hush_ca::proto::Authority]| judge_intermediate(list, now);
        assert_eq!(judge(&[]).0, Verdict::Skipped);
        let fine = [
            authority("root", "active", 3000 * day),
            authority("intermediate", "active", 200 * day),
            authority("intermediate", "old", 2 * day),
        ];
        assert_eq!(judge(&fine).0, Verdict::Ok, "{:?}", judge(&fine));
        let due = [authority("intermediate", "active", 20 * day)];
        let (verdict, message, hint) = judge(&due);
        assert_eq!(verdict, Verdict::Warning);
        assert!(message.contains("0123456789abcdef"), "{message}");
        assert!(hint.contains("hush ca rotate intermediate"), "{hint}");
        assert_eq!(
            judge(&[authority("intermediate", "active", -1)]).0,
            Verdict::Failed
        );
        assert_eq!(
            judge(&[authority("root", "active", day)]).0,
            Verdict::Warning
        );
    }

    #[test]
    fn clock_skew_is_judged_against_the_back_dating() {
        assert_eq!(judge_skew(0.4, 1).0, Verdict::Ok);
        assert_eq!(judge_skew(-12.0, 1).0, Verdict::Ok);
        assert_eq!(judge_skew(45.0, 1).0, Verdict::Warning);
        assert_eq!(judge_skew(-300.0, 1).0, Verdict::Failed);
        assert_eq!(
            judge_skew(9999.0, 0).0,
            Verdict::Skipped,
            "an older CA tells no time"
        );
    }

    /// One row per situation of the bundle's roots, a year ahead as the CA warns.
    #[test]
    fn roots_are_judged_by_the_cas_rotation_rule() {
        const DAY: i64 = 86_400;
        let now = 1_800_000_000;
        for (situation, days_left, verdict) in [
            ("a fresh root", &[3650][..], Verdict::Ok),
            ("a root with a year and a day", &[366], Verdict::Ok),
            ("a root in its last year", &[200], Verdict::Warning),
            ("a root in its last month", &[20], Verdict::Warning),
            (
                "an old root in its last year beside its successor",
                &[200, 3650],
                Verdict::Ok,
            ),
            ("an expired root", &[-1, 3650], Verdict::Failed),
            ("no root the check could read", &[], Verdict::Ok),
        ] {
            let not_afters: Vec<i64> = days_left.iter().map(|d| now + d * DAY).collect();
            let (judged, hint) = judge_roots(&not_afters, now);
            assert_eq!(judged, verdict, "{situation}: {hint}");
            if verdict == Verdict::Warning {
                assert!(
                    hint.contains("within 365 days") && hint.contains("hush ca rotate root"),
                    "{situation}: {hint}"
                );
            }
        }
    }

    #[test]
    fn wildcard_admin_addresses_are_dialled_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:15020".parse().unwrap()),
            "127.0.0.1:15020".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:15020".parse().unwrap()),
            "[::1]:15020".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("10.1.2.3:15020".parse().unwrap()),
            "10.1.2.3:15020".parse::<SocketAddr>().unwrap()
        );
    }
}
