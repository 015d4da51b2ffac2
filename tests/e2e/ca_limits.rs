//! End-to-end tests of what a client without credentials can do to `hush ca serve`, and of the
//! bounds that stop it: the TLS handshake timeout, the first-request and idle timeouts, the
//! per-address connection cap, the cap on unauthenticated requests in flight, and hyper/h2's own
//! HTTP/2 abuse limits.
//!
//! The hostile client is `ca_hostile_client.py`, beside this file (the system Python, standard
//! library only), which writes HTTP/2 frames by hand so it can send what no library would, and
//! reports what the CA did as JSON. Every check ends with a real client (`hush cert request`,
//! or hush's own gRPC client for renewals) getting a certificate: the CA must keep serving.
//!
//! Waits are bounded (the probe's `--wait`, the client's deadline); none asserts how fast
//! anything is. The flood test prints its figures (run it with `--nocapture` to see them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hush_ca_client::CaClient;
use hush_identity::TrustBundle;
use hush_test_support::{
    CaProcess, CsrKeyKind, FakeApiServer, HushProcess, ReviewRequest, mint_token, plain_csr,
    run_hush_ok, token_review_authenticated,
};
use hush_tls::CredentialStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tempfile::TempDir;
use tonic::Code;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");
/// The system Python: the hostile client needs nothing but its standard library.
const PYTHON: &str = "/usr/bin/python3";
const TD: &str = "e2e.test";
const FRONTEND: &str = "spiffe://e2e.test/ns/shop/sa/frontend";
/// A Kubernetes token the fake API server vouches for (when it answers at all).
const FRONTEND_JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpmcm9udGVuZCJ9.ZnJvbnRlbmQtc2lnbmF0dXJl";
const OWN_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6Imh1c2gtY2EifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6aHVzaDpodXNoLWNhIn0.b3duLXRva2VuLXNpZ25hdHVyZQ";
/// Where the attacks come from; real clients come from 127.0.0.1.
const ATTACKER: &str = "127.0.0.2";
/// The log line of refused connections, and of refused unauthenticated requests.
const CROWDED_LINE: &str = "refused connections from an address that already holds";
const BUSY_LINE: &str = "refused requests without a client certificate";

/// Returns early, saying so, where the system Python is missing (CI installs it).
macro_rules! require_python {
    () => {
        if !Path::new(PYTHON).exists() {
            eprintln!("SKIPPED: {PYTHON} is needed for the hostile client");
            return;
        }
    };
}

// === Fixture: a CA started with its file-descriptor limit raised ===

struct Ca {
    temp: TempDir,
    dir: PathBuf,
    process: HushProcess,
    url: String,
    port: u16,
}

impl Ca {
    /// `hush ca init`, then `hush ca serve EXTRA…` through `sh` raising `ulimit -n`, so that
    /// only hush's own limits decide what it accepts.
    fn start(extra: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let dir = temp.path().join("ca");
        run_hush_ok(
            HUSH,
            &["ca", "init", "--dir", path_str(&dir), "--trust-domain", TD],
        );
        let mut args = vec![
            "-c",
            r#"ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#,
            HUSH,
            "ca",
            "serve",
            "--dir",
            path_str(&dir),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut process = HushProcess::spawn("sh", &args);
        let ready = process
            .wait_until_ready(CaProcess::READY_PREFIX)
            .unwrap_or_else(|e| panic!("{e}"));
        let url = ready
            .strip_prefix(CaProcess::READY_PREFIX)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the readiness line names the URL")
            .to_string();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the URL has a port");
        Self {
            temp,
            dir,
            process,
            url,
            port,
        }
    }

    fn bundle_path(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        let pem = std::fs::read(self.bundle_path()).expect("bundle.pem");
        TrustBundle::from_pem(&pem, None)
            .expect("a trust bundle")
            .roots()
            .to_vec()
    }

    fn client(&self) -> CaClient {
        CaClient::new(&self.url, &self.roots()).expect("a client for the CA")
    }

    /// A real `hush cert request` from 127.0.0.1 with a fresh join token; how long it took.
    fn issue_with_hush_cert(&self, name: &str) -> Duration {
        let token_file = self.temp.path().join(format!("{name}.token"));
        let token = mint_token(HUSH, &self.dir, FRONTEND, &[]);
        std::fs::write(&token_file, token).expect("write the token");
        let out = self.temp.path().join(name);
        let started = Instant::now();
        let mut client = HushProcess::spawn(
            HUSH,
            &[
                "cert",
                "request",
                "--ca",
                &self.url,
                "--bundle",
                path_str(&self.bundle_path()),
                "--token-file",
                path_str(&token_file),
                "--out-dir",
                path_str(&out),
            ],
        );
        let status = client.wait_exit(Duration::from_secs(60));
        let took = started.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "`hush cert request` did not get a certificate within 60 s ({status:?}):\n{}\n--- CA ---\n{}",
            client.stderr(),
            self.process.stderr()
        );
        assert!(out.join("svid.pem").exists(), "the certificate was written");
        took
    }

    /// The CA's log lines containing `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        self.process
            .stderr()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits (bounded) for a log line containing every one of `needles`.
    fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self
                .process
                .stderr()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the CA never logged {needles:?}:\n{}",
                self.process.stderr()
            );
            // Polling captured output is the bounded readiness check here.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/ca_hostile_client.py")
}

fn hostile(ca: &Ca, wait_secs: u32) -> Command {
    let mut command = Command::new(PYTHON);
    command.arg(script()).args([
        "--port",
        &ca.port.to_string(),
        "--bundle",
        path_str(&ca.bundle_path()),
        "--wait",
        &wait_secs.to_string(),
    ]);
    command
}

/// Runs one probe of the hostile client and returns its report.
fn probe(ca: &Ca, kind: &str, wait_secs: u32) -> Value {
    let mut command = hostile(ca, wait_secs);
    command.args(["probe", "--kind", kind]);
    let output = run_bounded(command, Duration::from_secs(u64::from(wait_secs) + 30));
    report_of(kind, &output)
}

/// Runs `command` to completion, killing it if it outlives `bound`.
fn run_bounded(mut command: Command, bound: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let deadline = Instant::now() + bound;
    while child.try_wait().expect("wait for the child").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        // Polling the exit status is the bounded wait here.
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("the child's output")
}

fn report_of(what: &str, output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "the hostile client's {what} printed no report ({e}); status {}:\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The hostile client holding connections open until dropped.
struct Holder {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Holder {
    /// Opens `count` connections from [`ATTACKER`], alternating plain TCP and TLS-then-silence;
    /// returns once the hostile client has reported what the CA kept.
    fn start(ca: &Ca, count: usize) -> (Self, Value) {
        use std::io::BufRead;
        let mut command = hostile(ca, 30);
        command.args([
            "hold",
            "--count",
            &count.to_string(),
            "--mode",
            "mixed",
            "--source",
            ATTACKER,
        ]);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the hostile client");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut holder = Self {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        };
        let report = holder.read_report();
        (holder, report)
    }

    /// How many of the kept connections the CA still has open.
    fn still_open(&mut self) -> u64 {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "status").expect("ask the hostile client");
        stdin.flush().expect("flush");
        self.read_report()["still_open"].as_u64().expect("a count")
    }

    fn read_report(&mut self) -> Value {
        // The client's every wait is bounded (--wait 30), so this line comes or stdout closes.
        let line = self
            .lines
            .next()
            .expect("the hostile client ended without a report")
            .expect("read its report");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a report ({e}): {line}"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing stdin tells it to close every connection and exit.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// The sum of `refused=N` over the CA's refusal lines of one kind.
fn refused_in_log(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix("refused="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

// === The time limits ===

/// TLS then silence, and the HTTP/2 preface then silence: each holds a connection slot until
/// `--first-request-timeout` closes it.
#[test]
fn a_connection_without_a_request_is_closed_after_the_first_request_timeout() {
    require_python!();
    let ca = Ca::start(&["--first-request-timeout", "1s"]);

    let tls_silent = probe(&ca, "tls-silent", 15);
    assert_eq!(tls_silent["alpn"], "h2", "{tls_silent}");
    assert_eq!(
        tls_silent["closed"], true,
        "TLS then silence must not keep its slot: {tls_silent}"
    );

    let preface_silent = probe(&ca, "preface-silent", 15);
    assert_eq!(
        preface_silent["closed"], true,
        "the HTTP/2 preface then silence must not keep its slot: {preface_silent}"
    );
    assert_eq!(
        preface_silent["goaway"]["code"], 0,
        "a client that speaks HTTP/2 is told with GOAWAY (NO_ERROR): {preface_silent}"
    );

    ca.issue_with_hush_cert("after");
}

/// Idle means no request in flight, not no bytes: a client that answered one request and then
/// only sends PINGs (which the CA answers) is still closed after `--idle-timeout`.
#[test]
fn an_idle_connection_is_closed_though_it_keeps_sending_pings() {
    require_python!();
    let ca = Ca::start(&["--idle-timeout", "2s"]);

    let idle = probe(&ca, "idle-after-request", 20);
    assert_eq!(idle["request"]["stream"], "answered", "{idle}");
    assert_eq!(idle["request"]["status"], 200, "{idle}");
    assert!(
        count(&idle, "pings_answered") > 0,
        "the connection was alive and answering PINGs: {idle}"
    );
    assert_eq!(idle["closed"], true, "PINGs must not keep it open: {idle}");
    assert_eq!(idle["goaway"]["code"], 0, "closed with GOAWAY: {idle}");

    ca.issue_with_hush_cert("after");
}

// === The caps ===

/// One address cannot hold more than `--max-connections-per-ip`, handshakes included; the rest
/// are reset at once and reported in a bounded number of log lines that count every one.
#[test]
fn connections_over_the_per_address_limit_are_reset_and_counted_in_few_lines() {
    require_python!();
    // Long timeouts, so that only the cap can be what refuses.
    let mut ca = Ca::start(&[
        "--max-connections-per-ip",
        "4",
        "--handshake-timeout",
        "60s",
        "--first-request-timeout",
        "60s",
    ]);
    let started = Instant::now();

    let (mut holder, held) = Holder::start(&ca, 200);
    assert_eq!(count(&held, "kept"), 4, "{held}");
    assert_eq!(count(&held, "refused"), 196, "{held}");
    assert_eq!(count(&held, "pending"), 0, "{held}");
    assert!(
        count(&held, "kept_tcp") > 0 && count(&held, "kept_tls") > 0,
        "handshaking and handshaken connections both count: {held}"
    );
    // Another address is not affected.
    ca.issue_with_hush_cert("beside-the-flood");
    assert_eq!(holder.still_open(), 4, "the kept ones were never dropped");

    let line = ca.wait_for_log(&[CROWDED_LINE, "latest_peer=127.0.0.2", "limit=4"]);
    assert!(line.contains("WARN"), "{line}");
    drop(holder);

    // The places come back when the connections close.
    let (again, report) = Holder::start(&ca, 4);
    assert_eq!(count(&report, "kept"), 4, "{report}");
    drop(again);

    ca.process.terminate();
    let lines = ca.log_lines(CROWDED_LINE);
    // One line at once, then at most one per 10 s, and the rest at shutdown.
    let allowed = 2 + started.elapsed().as_secs() / 10;
    assert!(
        lines.len() as u64 <= allowed,
        "{} lines for one flood:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert_eq!(
        refused_in_log(&lines),
        196,
        "the lines count every refusal:\n{}",
        lines.join("\n")
    );
}

/// Each request from a client without a certificate may start a TokenReview: past
/// `--max-unauthenticated-requests` in flight, requests are answered UNAVAILABLE ("retry")
/// before any review starts, while renewals with a certificate go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_over_the_limit_are_told_to_retry_while_renewals_go_on() {
    // An API server that takes as long as the test wants to answer.
    let api = FakeApiServer::start_held(|request: &ReviewRequest| {
        (
            201,
            token_review_authenticated(
                request,
                "system:serviceaccount:shop:frontend",
                "4f1c2b7e-9a0d-4e3f-8b6a-5c7d8e9f0a1b",
                &["hush-ca"],
            ),
        )
    });
    let kube = tempfile::tempdir().expect("temp dir");
    let ca_file = kube.path().join("kube-ca.crt");
    let token_file = kube.path().join("kube-token");
    std::fs::write(&ca_file, api.ca_pem()).expect("write the API server's CA");
    std::fs::write(&token_file, OWN_TOKEN).expect("write the CA's own token");
    let ca = Ca::start(&[
        "--k8s-api-server",
        api.url(),
        "--k8s-ca-file",
        path_str(&ca_file),
        "--k8s-token-file",
        path_str(&token_file),
        "--k8s-timeout",
        "60s",
        "--max-unauthenticated-requests",
        "3",
    ]);
    let client = ca.client();

    // A workload that already holds a certificate (from a join token, before the flood).
    let token = mint_token(HUSH, &ca.dir, FRONTEND, &[]);
    let first_csr = plain_csr(CsrKeyKind::EcdsaP256);
    let first = within(client.certify(&token, first_csr.der.clone(), None))
        .await
        .expect("issued with a join token");

    // Three token requests, each waiting on the slow API server.
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .certify(FRONTEND_JWT, plain_csr(CsrKeyKind::EcdsaP256).der, None)
                    .await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.requests().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the three reviews never reached the API server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Anything else without a certificate is told to come back, and starts no review.
    for _ in 0..5 {
        let busy = within(client.certify(FRONTEND_JWT, plain_csr(CsrKeyKind::EcdsaP256).der, None))
            .await
            .expect_err("over the limit");
        assert_eq!(busy.code(), Code::Unavailable, "{busy:?}");
        for needle in [
            "busy",
            "3 requests from callers without a client certificate",
            "retry",
        ] {
            assert!(busy.message().contains(needle), "{needle}: {busy:?}");
        }
    }
    let join = within(client.certify(
        &mint_token(HUSH, &ca.dir, FRONTEND, &[]),
        plain_csr(CsrKeyKind::EcdsaP256).der,
        None,
    ))
    .await;
    assert_eq!(
        join.expect_err("join tokens are limited too").code(),
        Code::Unavailable
    );
    assert_eq!(
        api.requests().len(),
        3,
        "no review was started for a refused request"
    );

    // Renewal with the current certificate is not limited.
    let identity = CredentialStore::new();
    identity
        .install(
            first
                .cert_chain
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(first_csr.key.serialize_der())),
        )
        .expect("the issued certificate and its key");
    let renewing =
        CaClient::with_identity(&ca.url, &ca.roots(), identity).expect("a renewing client");
    let renewed = within(renewing.renew(plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("renewal goes through a full unauthenticated limit");
    assert_eq!(renewed.spiffe_id, FRONTEND);

    // Once the API server answers, the waiting requests are issued and the places come back.
    api.release();
    for task in waiting {
        let issued = within(task).await.expect("the task ran");
        assert_eq!(issued.expect("issued after the review").spiffe_id, FRONTEND);
    }
    within(client.certify(FRONTEND_JWT, plain_csr(CsrKeyKind::EcdsaP256).der, None))
        .await
        .expect("the limit is free again");

    let line = ca.wait_for_log(&[BUSY_LINE, "latest_peer=127.0.0.1", "limit=3"]);
    assert!(line.contains("WARN"), "{line}");
}

/// The proof for the issue: 5,000 connections held idle from one address (plain TCP and TLS
/// then silence, alternating) while a real `hush cert request` from another address still gets
/// its certificate. The time limits are set long, so only the per-address cap can be what keeps
/// the CA serving; every kept connection is still open after the issuance.
#[test]
fn five_thousand_idle_connections_from_one_address_do_not_stop_issuance() {
    require_python!();
    let ca = Ca::start(&[
        "--handshake-timeout",
        "120s",
        "--first-request-timeout",
        "120s",
    ]);

    let quiet: Vec<Duration> = (0..3)
        .map(|i| ca.issue_with_hush_cert(&format!("quiet-{i}")))
        .collect();
    let (mut holder, held) = Holder::start(&ca, 5000);
    let flooded: Vec<Duration> = (0..3)
        .map(|i| ca.issue_with_hush_cert(&format!("flooded-{i}")))
        .collect();
    let still_open = holder.still_open();
    eprintln!(
        "figures: {held}; still open after the issuances: {still_open}; `hush cert request` took \
         {quiet:?} without the flood and {flooded:?} under it"
    );
    let kept = count(&held, "kept");
    assert_eq!(kept, 256, "the default per-address limit: {held}");
    assert_eq!(count(&held, "refused"), 5000 - 256, "{held}");
    assert_eq!(
        count(&held, "pending"),
        0,
        "every connection was judged: {held}"
    );
    assert_eq!(still_open, kept, "the flood was held for every issuance");
}

/// What each hostile client gets: a bounded, clear refusal; and the CA serves on.
#[test]
fn hostile_clients_get_bounded_refusals_and_the_ca_serves_on() {
    require_python!();
    let ca = Ca::start(&["--handshake-timeout", "2s", "--first-request-timeout", "2s"]);

    // Not TLS: refused by the TLS layer at once.
    for kind in ["garbage", "plaintext-h2"] {
        let report = probe(&ca, kind, 15);
        assert_eq!(report["closed"], true, "{report}");
    }
    // A handshake that never finishes: closed at the handshake timeout.
    let slow = probe(&ca, "slow-handshake", 15);
    assert_eq!(slow["closed"], true, "{slow}");
    // Rapid reset (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM from h2's pending-reset limit.
    let rapid = probe(&ca, "rapid-reset", 15);
    assert_eq!(rapid["goaway"]["code"], 11, "{rapid}");
    assert_eq!(rapid["goaway"]["debug"], "too_many_resets", "{rapid}");
    assert_eq!(rapid["closed"], true, "{rapid}");
    // CONTINUATION flood: GOAWAY ENHANCE_YOUR_CALM once more frames come than a header list
    // of the allowed size needs.
    let continuation = probe(&ca, "continuation-flood", 15);
    assert_eq!(continuation["goaway"]["code"], 11, "{continuation}");
    assert_eq!(
        continuation["goaway"]["debug"], "too_many_continuations",
        "{continuation}"
    );
    // A SETTINGS flood is acknowledged frame by frame (h2 reads no further until its ACK is
    // written, so nothing queues up) and holds no slot: no request came, so the first-request
    // timeout closes it.
    let settings = probe(&ca, "settings-flood", 15);
    assert_eq!(settings["closed"], true, "{settings}");
    // Headers over 16 KiB: the stream is answered 431, the connection lives on.
    let big = probe(&ca, "big-headers", 15);
    assert_eq!(big["stream"], "answered", "{big}");
    assert_eq!(big["status"], 431, "{big}");
    assert_eq!(big["data_frames"], 0, "{big}");

    // curl, speaking cleartext HTTP/2 to the TLS port, is refused.
    if Command::new("curl").arg("--version").output().is_ok() {
        let mut curl = Command::new("curl");
        curl.args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            &format!("http://127.0.0.1:{}/", ca.port),
        ]);
        let output = run_bounded(curl, Duration::from_secs(30));
        assert!(
            !output.status.success(),
            "cleartext HTTP/2 got an answer: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    ca.issue_with_hush_cert("after");
}

/// A limit that would refuse everything is refused before the CA says it is serving.
#[test]
fn limits_of_zero_are_refused_at_start_naming_the_flag() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = temp.path().join("ca");
    run_hush_ok(
        HUSH,
        &["ca", "init", "--dir", path_str(&dir), "--trust-domain", TD],
    );
    for (flag, value, message) in [
        (
            "--max-connections-per-ip",
            "0",
            "invalid --max-connections-per-ip 0: must be at least 1",
        ),
        (
            "--max-unauthenticated-requests",
            "0",
            "invalid --max-unauthenticated-requests 0: must be at least 1",
        ),
        (
            "--first-request-timeout",
            "0s",
            "invalid --first-request-timeout 0s: must be more than zero",
        ),
    ] {
        let output = hush_test_support::run_hush(
            HUSH,
            &[
                "ca",
                "serve",
                "--dir",
                path_str(&dir),
                "--listen",
                "127.0.0.1:0",
                flag,
                value,
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} was accepted");
        assert!(stderr.contains(message), "{flag}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("serving"),
            "no readiness line for a CA that will not serve"
        );
    }
}

/// Bounds every call to the CA, so a hung CA fails the test instead of hanging it.
async fn within<F: std::future::Future>(call: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the CA did not answer within 30 s")
}
