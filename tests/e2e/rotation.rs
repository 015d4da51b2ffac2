//! The CA rotated, root included, under continuous traffic: no failed request, no refused
//! handshake, no process restarted.
//!
//! One CA and three sidecars: a frontend, a backend in front of the echo app (HTTP/1.1, HTTP/2,
//! WebSocket) and a TCP backend in front of a line-echo app. Traffic runs from before the first
//! rotation to after the last revocation, on new connections and on connections held open all
//! along. Then, in order: an intermediate rotation, a root rotation, a taint of the old
//! authorities, and the revocation of the old root, each run with the real `hush ca` commands on
//! the CA's directory, which the running CA polls.
//!
//! Test-only settings, all real flags: certificates live 1 minute (`--max-ttl 1m`, so sidecars
//! renew every ~30 s), the CA reads its directory every second, a new root is published 5 s
//! before it may sign (`hush ca init --publish-wait 5s`), taint renewals are spread over 3 s,
//! and sidecars fetch the bundle every second. With these, the revocation waits about 65 s
//! (retirement + publish wait + max TTL), and the whole test about two minutes.
//!
//! It prints the figures of the run: requests per stream, failures, seconds per phase.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hush_ca_client::CaClient;
use hush_proxy::{InboundConfig, OutboundConfig, Protocol, ProxyConfig};
use hush_test_support::{CaProcess, ProxyProcess, http_request, run_hush, run_hush_ok};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::mesh::apps;
use crate::mesh::sidecars::{
    BACKEND, FRONTEND, HUSH, TRUST_DOMAIN, json, loopback, metric, path_str, sidecar_config,
    spiffe_id,
};

const TCP_BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/ledger";
/// How long the test waits for something the mesh does by itself.
const PATIENCE: Duration = Duration::from_secs(150);
/// How long one request may take before it counts as failed.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

// === traffic ===

/// One stream of traffic: what succeeded, what failed, and how.
struct Stream {
    name: &'static str,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Stream {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        })
    }

    fn count(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("{}: FAILED: {why}", self.name);
                if let Ok(mut failures) = self.failures.lock() {
                    failures.push(why);
                }
            }
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

async fn bounded<T>(what: &str, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(REQUEST_LIMIT, f)
        .await
        .map_err(|_| format!("{what}: no answer within {REQUEST_LIMIT:?}"))?
}

/// Reads `response` whole and checks it is the echo app's answer.
async fn expect_echo_response(
    response: http::Response<hyper::body::Incoming>,
) -> Result<(), String> {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    expect_echo(status, &body)
}

fn expect_echo(status: u16, body: &[u8]) -> Result<(), String> {
    if status == 200 {
        Ok(())
    } else {
        Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(body)
        ))
    }
}

fn request(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(path)
        .header("host", "backend.shop")
        .body(Empty::new())
        .expect("a request")
}

/// HTTP/1.1, one new connection per request.
async fn http1_new_connections(to: SocketAddr, stream: Arc<Stream>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let outcome = bounded("HTTP/1.1 on a new connection", async {
            let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let response = sender
                .send_request(request("/rotation/new"))
                .await
                .map_err(|e| e.to_string())?;
            expect_echo_response(response).await
        })
        .await;
        stream.count(outcome);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// HTTP/1.1 on one keep-alive connection held all along (a new one only after a failure).
async fn http1_keep_alive(to: SocketAddr, stream: Arc<Stream>, stop: Arc<AtomicBool>) {
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        let outcome = bounded("HTTP/1.1 keep-alive", async {
            if sender.is_none() {
                let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
                let (s, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                sender = Some(s);
            }
            let s = sender.as_mut().expect("connected");
            let sent = s.send_request(request("/rotation/keep-alive")).await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    sender = None;
                    return Err(format!("the kept-alive connection broke: {e}"));
                }
            };
            expect_echo_response(response).await
        })
        .await;
        stream.count(outcome);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// HTTP/2 with prior knowledge on one connection held all along, several streams at a time.
async fn http2_multiplexed(to: SocketAddr, stream: Arc<Stream>, stop: Arc<AtomicBool>) {
    let mut sender: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        if sender.is_none() {
            let connected = bounded("HTTP/2 connection", async {
                let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
                let (s, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                Ok(s)
            })
            .await;
            match connected {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    stream.count(Err(e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let s = sender.clone().expect("connected");
        let batch: Vec<_> = (0..4)
            .map(|_| {
                let mut s = s.clone();
                tokio::spawn(bounded("HTTP/2 stream", async move {
                    let response = s
                        .send_request(request("/rotation/h2"))
                        .await
                        .map_err(|e| format!("the HTTP/2 connection failed a stream: {e}"))?;
                    expect_echo_response(response).await
                }))
            })
            .collect();
        for task in batch {
            let outcome = task.await.unwrap_or_else(|e| Err(e.to_string()));
            if outcome.is_err() {
                sender = None;
            }
            stream.count(outcome);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One TCP connection held all along: a line every 100 ms, each echoed.
async fn tcp_long_lived(to: SocketAddr, stream: Arc<Stream>, stop: Arc<AtomicBool>) {
    let connected = bounded("TCP connection", async {
        let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let (read, write) = tcp.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = lines.next_line().await.map_err(|e| e.to_string())?;
        if greeting.as_deref() != Some(apps::GREETING) {
            return Err(format!("greeting {greeting:?}"));
        }
        Ok((lines, write))
    })
    .await;
    let (mut lines, mut write) = match connected {
        Ok(halves) => halves,
        Err(e) => return stream.count(Err(e)),
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let outcome = bounded("TCP line", async {
            write
                .write_all(format!("line {n}\r\n").as_bytes())
                .await
                .map_err(|e| format!("the long-lived TCP connection broke: {e}"))?;
            let echo = lines.next_line().await.map_err(|e| e.to_string())?;
            match echo {
                Some(echo) if echo == format!("echo: line {n}") => Ok(()),
                other => Err(format!("the long-lived TCP connection answered {other:?}")),
            }
        })
        .await;
        let broken = outcome.is_err();
        stream.count(outcome);
        if broken {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One WebSocket held all along: a message every 100 ms, each echoed.
async fn websocket_long_lived(to: SocketAddr, stream: Arc<Stream>, stop: Arc<AtomicBool>) {
    let connected = bounded("WebSocket", async {
        tokio_tungstenite::connect_async(format!("ws://{to}/ws"))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let mut ws = match connected {
        Ok((ws, _)) => ws,
        Err(e) => return stream.count(Err(e)),
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let outcome = bounded("WebSocket message", async {
            ws.send(Message::text(format!("message {n}")))
                .await
                .map_err(|e| format!("the WebSocket broke: {e}"))?;
            match ws.next().await {
                Some(Ok(echo)) if echo.to_text().ok() == Some(&format!("message {n}")) => Ok(()),
                other => Err(format!("the WebSocket answered {other:?}")),
            }
        })
        .await;
        let broken = outcome.is_err();
        stream.count(outcome);
        if broken {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ws.close(None).await;
}

// === the mesh and the CA ===

/// `hush ca ARGS… --dir DIR`.
fn ca(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["ca"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", path_str(dir)]);
    run_hush(HUSH, &all)
}

#[track_caller]
fn ca_ok(dir: &Path, args: &[&str]) -> String {
    let out = ca(dir, args);
    assert!(
        out.status.success(),
        "hush ca {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `hush ca authorities --json`.
fn authorities(dir: &Path) -> Value {
    let out = run_hush_ok(
        HUSH,
        &["ca", "authorities", "--json", "--dir", path_str(dir)],
    );
    json(&out)
}

/// The IDs of the active root and intermediate.
fn active(dir: &Path) -> (String, String) {
    let all = authorities(dir);
    let find = |kind: &str| {
        all["authorities"]
            .as_array()
            .expect("authorities")
            .iter()
            .find(|a| a["kind"] == kind && a["state"] == "active")
            .and_then(|a| a["id"].as_str())
            .expect("an active authority")
            .to_string()
    };
    (find("root"), find("intermediate"))
}

/// A sidecar's view of itself: `/certs`.
fn certs(proxy: &ProxyProcess) -> Value {
    let (status, body) = http_request(proxy.admin(), "GET", "/certs");
    assert_eq!(status, 200, "{body}");
    json(&body)
}

/// The ID of the intermediate of the sidecar's certificate.
fn signed_by(proxy: &ProxyProcess) -> Option<String> {
    certs(proxy)["certificate"]["chain"][1]["authority_id"]
        .as_str()
        .map(str::to_string)
}

/// The IDs of the roots the sidecar trusts.
fn trusted(proxy: &ProxyProcess) -> Vec<String> {
    certs(proxy)["trust_bundle"]["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .filter_map(|r| r["authority_id"].as_str().map(str::to_string))
        .collect()
}

fn scrape(proxy: &ProxyProcess) -> String {
    let (status, body) = http_request(proxy.admin(), "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn forced_renewals(proxy: &ProxyProcess) -> f64 {
    metric(
        &scrape(proxy),
        "hush_certificate_forced_renewals_total{reason=\"tainted\"}",
    )
}

/// The sum of every `hush_handshake_failures_total` series.
fn handshake_failures(proxy: &ProxyProcess) -> f64 {
    scrape(proxy)
        .lines()
        .filter(|l| l.starts_with("hush_handshake_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, n| sum + n)
}

/// Polls `condition` every 200 ms, for at most [`PATIENCE`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A sidecar whose bootstrap bundle is a copy of the CA's bundle as it is now (frozen, as a
/// pod's annotation is), with a bundle cache, fetching the bundle every second.
fn sidecar(
    temp: &Path,
    name: &str,
    ca_url: &str,
    ca_dir: &Path,
    identity: &str,
    configure: impl FnOnce(&mut ProxyConfig),
) -> PathBuf {
    let dir = temp.join(name);
    std::fs::create_dir_all(&dir).expect("sidecar dir");
    std::fs::copy(ca_dir.join("bundle.pem"), dir.join("bootstrap.pem")).expect("bootstrap");
    sidecar_config(temp, name, ca_url, ca_dir, identity, |config| {
        config.ca.trust_bundle = dir.join("bootstrap.pem");
        config.ca.bundle_cache = Some(dir.join("bundle-cache.pem"));
        config.ca.bundle_refresh = Duration::from_secs(1);
        configure(config);
    })
}

#[test]
fn the_ca_rotates_root_and_all_under_traffic_with_no_failed_request() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let temp = tempfile::tempdir().expect("temp dir");
    let ca_dir = temp.path().join("ca");
    run_hush_ok(
        HUSH,
        &[
            "ca",
            "init",
            "--dir",
            path_str(&ca_dir),
            "--trust-domain",
            TRUST_DOMAIN,
            "--publish-wait",
            "5s",
            "--max-ttl",
            "1m",
        ],
    );
    let mut ca_process = CaProcess::start(
        HUSH,
        &ca_dir,
        &[
            "--max-ttl",
            "1m",
            "--reload-interval",
            "1s",
            "--taint-spread",
            "3s",
        ],
    );
    let ca_url = ca_process.url().to_string();
    let (echo, greeter) =
        runtime.block_on(async { (apps::start_app().await, apps::start_greeter().await) });

    let backend_config = sidecar(temp.path(), "backend", &ca_url, &ca_dir, BACKEND, |c| {
        c.inbound = Some(InboundConfig::new(loopback(), echo));
    });
    let mut backend = ProxyProcess::start(HUSH, &backend_config);
    let ledger_config = sidecar(temp.path(), "ledger", &ca_url, &ca_dir, TCP_BACKEND, |c| {
        c.inbound = Some(InboundConfig {
            protocol: Protocol::Tcp,
            ..InboundConfig::new(loopback(), greeter)
        });
    });
    let mut ledger = ProxyProcess::start(HUSH, &ledger_config);
    let (to_backend, to_ledger) = (backend.inbound().to_string(), ledger.inbound().to_string());
    let frontend_config = sidecar(temp.path(), "frontend", &ca_url, &ca_dir, FRONTEND, |c| {
        c.outbound = vec![
            OutboundConfig::new(loopback(), &to_backend, spiffe_id(BACKEND)),
            OutboundConfig {
                protocol: Protocol::Tcp,
                ..OutboundConfig::new(loopback(), &to_ledger, spiffe_id(TCP_BACKEND))
            },
        ];
    });
    let mut frontend = ProxyProcess::start(HUSH, &frontend_config);
    let pids = [
        ca_process.process().pid(),
        backend.process().pid(),
        ledger.process().pid(),
        frontend.process().pid(),
    ];

    // Traffic, from now to the end.
    let stop = Arc::new(AtomicBool::new(false));
    let streams = [
        Stream::new("HTTP/1.1, new connections"),
        Stream::new("HTTP/1.1, one keep-alive connection"),
        Stream::new("HTTP/2, one multiplexed connection"),
        Stream::new("TCP, one long-lived connection"),
        Stream::new("WebSocket, one long-lived connection"),
    ];
    let (http, tcp) = (frontend.outbound(0), frontend.outbound(1));
    let tasks = [
        runtime.spawn(http1_new_connections(
            http,
            streams[0].clone(),
            stop.clone(),
        )),
        runtime.spawn(http1_keep_alive(http, streams[1].clone(), stop.clone())),
        runtime.spawn(http2_multiplexed(http, streams[2].clone(), stop.clone())),
        runtime.spawn(tcp_long_lived(tcp, streams[3].clone(), stop.clone())),
        runtime.spawn(websocket_long_lived(http, streams[4].clone(), stop.clone())),
    ];
    wait_until("traffic on every stream", || {
        streams.iter().all(|s| s.ok() > 5)
    });
    let sidecars = [&frontend, &backend, &ledger];
    let (first_root, first_intermediate) = active(&ca_dir);
    let mut phases: Vec<(&str, Duration)> = Vec::new();

    // 1. Intermediate rotation, then a taint of the old intermediate.
    let started = Instant::now();
    ca_ok(&ca_dir, &["rotate", "intermediate"]);
    ca_ok(&ca_dir, &["activate"]);
    let (_, second_intermediate) = active(&ca_dir);
    ca_ok(&ca_dir, &["taint", "--authority", &first_intermediate]);
    wait_until(
        "every sidecar is under the new intermediate, by a forced renewal",
        || {
            sidecars.iter().all(|s| {
                signed_by(s).as_deref() == Some(second_intermediate.as_str())
                    && forced_renewals(s) >= 1.0
            })
        },
    );
    phases.push((
        "1. rotate intermediate, activate, taint the old one",
        started.elapsed(),
    ));

    // 2. Root rotation: published first, signing only after the publish wait.
    let started = Instant::now();
    ca_ok(&ca_dir, &["rotate", "root"]);
    let early = ca(&ca_dir, &["activate"]);
    let words = String::from_utf8_lossy(&early.stderr);
    assert!(
        !early.status.success() && words.contains("publish wait"),
        "an activation before the publish wait must be refused: {words}"
    );
    wait_until("every sidecar trusts both roots", || {
        sidecars.iter().all(|s| trusted(s).len() == 2)
    });
    wait_until("the publish wait is over", || {
        ca(&ca_dir, &["activate"]).status.success()
    });
    let (new_root, third_intermediate) = active(&ca_dir);
    assert_ne!(new_root, first_root);
    phases.push(("2. rotate root, publish, activate", started.elapsed()));

    // 3. Taint the old root (and its intermediates): every sidecar moves under the new root.
    let started = Instant::now();
    let forced_before: Vec<f64> = sidecars.iter().map(|s| forced_renewals(s)).collect();
    ca_ok(&ca_dir, &["taint", "--authority", &first_root]);
    wait_until("every sidecar is under the new root", || {
        sidecars
            .iter()
            .all(|s| signed_by(s).as_deref() == Some(third_intermediate.as_str()))
    });
    for (s, before) in sidecars.iter().zip(&forced_before) {
        assert!(
            forced_renewals(s) >= *before,
            "the forced-renewal counter went down"
        );
    }
    // A client that holds only the new root reaches the CA: its server certificate is under it.
    let new_root_der: CertificateDer<'static> = {
        let pem = std::fs::read(ca_dir.join(format!("root-{new_root}.pem"))).expect("new root");
        CertificateDer::from(hush_identity::parse_pem_certificates(&pem).expect("PEM")[0].to_vec())
    };
    runtime
        .block_on(async {
            let client = CaClient::new(&ca_url, std::slice::from_ref(&new_root_der))
                .map_err(|e| e.to_string())?;
            client.trust_bundle().await.map_err(|e| e.to_string())
        })
        .expect("a client trusting only the new root reaches the CA");
    phases.push(("3. taint the old root", started.elapsed()));

    // 4. Revoke the old root: refused while certificates under it may live, then done.
    let started = Instant::now();
    let refused = ca(&ca_dir, &["revoke", "--authority", &first_root]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("may live until"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    wait_until("no certificate under the old root can be alive", || {
        ca(&ca_dir, &["revoke", "--authority", &first_root])
            .status
            .success()
    });
    wait_until("every sidecar trusts the new root alone", || {
        sidecars.iter().all(|s| trusted(s) == [new_root.clone()])
    });
    // A few more seconds of traffic with the old root gone.
    std::thread::sleep(Duration::from_secs(3));
    phases.push(("4. revoke the old root", started.elapsed()));

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        runtime.block_on(task).expect("a traffic task");
    }

    // The figures.
    eprintln!("\n=== CA rotation under traffic ===");
    for (phase, took) in &phases {
        eprintln!("{phase}: {:.1} s", took.as_secs_f64());
    }
    for s in &streams {
        eprintln!("{}: {} ok, {} failed", s.name, s.ok(), s.failed());
    }
    let handshakes: Vec<f64> = sidecars.iter().map(|s| handshake_failures(s)).collect();
    eprintln!(
        "refused handshakes (frontend, backend, ledger): {}",
        handshakes
            .iter()
            .map(|h| format!("{h:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    for s in &streams {
        assert_eq!(
            s.failed(),
            0,
            "{} failed: {:?}",
            s.name,
            s.failures.lock().map(|f| f.clone()).unwrap_or_default()
        );
        assert!(s.ok() >= 20, "{} sent only {} requests", s.name, s.ok());
    }
    assert_eq!(handshakes, [0.0, 0.0, 0.0], "a sidecar refused a handshake");
    assert!(
        !ca_process.stderr().contains("refused a client certificate"),
        "{}",
        ca_process.stderr()
    );
    let now = [
        ca_process.process().pid(),
        backend.process().pid(),
        ledger.process().pid(),
        frontend.process().pid(),
    ];
    assert_eq!(now, pids);
    assert!(ca_process.process().is_running(), "the CA exited");
    for proxy in [&mut backend, &mut ledger, &mut frontend] {
        assert!(proxy.process().is_running(), "a sidecar exited");
    }
    let states = authorities(&ca_dir);
    let state_of = |id: &str| {
        states["authorities"]
            .as_array()
            .expect("authorities")
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["state"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(state_of(&first_root).as_deref(), Some("revoked"));
    assert_eq!(state_of(&first_intermediate).as_deref(), Some("revoked"));
    assert_eq!(state_of(&second_intermediate).as_deref(), Some("revoked"));
    assert_eq!(state_of(&new_root).as_deref(), Some("active"));

    // A container restart after all this: the sidecar's bootstrap bundle holds only the revoked
    // root, but it starts from the bundle it cached, so it still reaches the CA.
    let cached = std::fs::read_to_string(temp.path().join("ledger/bundle-cache.pem"))
        .expect("the ledger sidecar cached its bundle");
    let cached_roots: Vec<String> = hush_identity::parse_pem_certificates(cached.as_bytes())
        .expect("the cache is PEM")
        .iter()
        .filter_map(|der| hush_identity::authority_id(der))
        .collect();
    assert_eq!(
        cached_roots,
        std::slice::from_ref(&new_root),
        "the cache holds the new root alone"
    );
    ledger.terminate();
    let token = hush_test_support::mint_token(HUSH, &ca_dir, TCP_BACKEND, &[]);
    std::fs::write(temp.path().join("ledger/token"), format!("{token}\n")).expect("token");
    let restarted = ProxyProcess::try_start(HUSH, &ledger_config, &[]).unwrap_or_else(|e| {
        panic!(
            "the restarted sidecar did not start: {e}\n--- the CA's log ---\n{}",
            ca_process.stderr()
        )
    });
    wait_until(
        "the restarted sidecar has a certificate under the new root",
        || signed_by(&restarted).as_deref() == Some(third_intermediate.as_str()),
    );
}
