//! End-to-end tests of `hush init-iptables`: the rules are installed in a network namespace of
//! their own (a "pod"), and a connection from the app is shown to land on the sidecar's
//! transparent port while the sidecar's own connections do not.
//!
//! Creating namespaces needs root and `ip`, `iptables`, `setpriv` and the system's
//! `/usr/bin/python3` (readable by any uid, unlike a per-user Python); where they are missing the
//! namespace test says so and passes without running (CI installs them).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use hush_proxy::{
    AppProbe, Identities, InboundConfig, OutboundConfig, PolicyConfig, TransparentConfig,
};
use hush_test_support::{
    CaProcess, HushProcess, ProxyProcess, describe_output, write_sidecar_config,
};

const HUSH: &str = env!("CARGO_BIN_EXE_hush");
/// The system's Python: the test's clients run as other uids, which must be able to run it.
const PYTHON: &str = "/usr/bin/python3";

/// `[::]:PORT`, where the injector puts the sidecar's listeners.
fn every_address(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
}

#[test]
fn dry_run_prints_the_rules_without_touching_anything() {
    let output = Command::new(HUSH)
        .args([
            "init-iptables",
            "--dry-run",
            "--exclude-inbound-ports",
            "15020,22",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe_output(&output));
    let rules = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "-A HUSH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A HUSH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A HUSH_INBOUND -p tcp --dport 15020 -j RETURN",
        "-A HUSH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A HUSH_OUTPUT -d 10.96.0.0/12 -j RETURN",
    ] {
        assert!(rules.contains(needle), "missing {needle:?} in\n{rules}");
    }
    let output = Command::new(HUSH)
        .args(["init-iptables", "--dry-run", "--outbound-port", "15006"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("both 15006"),
        "{}",
        describe_output(&output)
    );
}

/// A network namespace, deleted when dropped.
struct Netns(String);

/// Two "pods" joined by a veth pair: 10.200.0.1 and 10.200.0.2. `None` (with the reason
/// printed) where namespaces cannot be made, unless `HUSH_REQUIRE_NETNS` is set (CI sets it):
/// then that is a failure.
fn two_pods() -> Option<(Netns, Netns)> {
    let pods = make_two_pods();
    assert!(
        pods.is_some() || std::env::var_os("HUSH_REQUIRE_NETNS").is_none(),
        "HUSH_REQUIRE_NETNS is set but the network namespaces cannot be made (see above)"
    );
    pods
}

fn make_two_pods() -> Option<(Netns, Netns)> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    for tool in [
        "ip",
        "iptables",
        "iptables-save",
        "ip6tables",
        "ip6tables-save",
        PYTHON,
        "setpriv",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("SKIPPED: {tool} is not installed");
            return None;
        }
    }
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let name = |pod: &str| format!("hush-{pod}-{}-{n}", std::process::id());
    let created = |name: &str| {
        Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if o.status.success() {
                    Ok(Netns(name.to_string()))
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            })
    };
    let (a, b) = match (created(&name("a")), created(&name("b"))) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            eprintln!(
                "SKIPPED: cannot create network namespaces (root needed): {:?}",
                a.err().or(b.err())
            );
            return None;
        }
    };
    let veth = Command::new("ip")
        .args([
            "link", "add", "eth0", "netns", &a.0, "type", "veth", "peer", "name", "eth0",
        ])
        .args(["netns", &b.0])
        .output()
        .expect("ip link add");
    assert!(veth.status.success(), "{}", describe_output(&veth));
    // Dual-stack pods: an IPv4 and an IPv6 address each (no duplicate address detection,
    // so the IPv6 address is usable at once).
    for (pod, v4, v6) in [
        (&a, "10.200.0.1/24", "fd00:200::1/64"),
        (&b, "10.200.0.2/24", "fd00:200::2/64"),
    ] {
        pod.run_ok(&["ip", "link", "set", "lo", "up"]);
        pod.run_ok(&["ip", "addr", "add", v4, "dev", "eth0"]);
        pod.run_ok(&["ip", "-6", "addr", "add", v6, "dev", "eth0", "nodad"]);
        pod.run_ok(&["ip", "link", "set", "eth0", "up"]);
    }
    Some((a, b))
}

impl Netns {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]).args(args);
        command
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("ip netns exec");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            describe_output(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts the original-destination server on `port`, answering `LABEL addr:port`.
    fn server(&self, port: &str, label: &str) -> Server {
        self.spawn_ready(&[PYTHON, "-c", ORIGINAL_DST_SERVER, port, label])
    }

    /// Starts `args` and waits for the `ready` line it prints once it listens.
    fn spawn_ready(&self, args: &[&str]) -> Server {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn in the namespace");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("the server's first line");
        assert_eq!(ready.trim(), "ready");
        Server(child)
    }

    /// Connects to `addr:port` as `uid`; what the client saw.
    fn dial(&self, uid: &str, addr: &str, port: &str) -> String {
        self.run_ok(&as_user(uid, &[PYTHON, "-c", CLIENT, addr, port]))
            .trim()
            .to_string()
    }
}

/// `command` run as `uid` (and the same gid, no supplementary groups).
fn as_user<'a>(uid: &'a str, command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"];
    args.extend_from_slice(command);
    args
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Stands in for one of the sidecar's listeners (port in argv[1]): answers every connection
/// with its label (argv[2]) and the original destination the kernel recorded (SO_ORIGINAL_DST).
const ORIGINAL_DST_SERVER: &str = r#"
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    raw = c.getsockopt(socket.SOL_IP, 80, 16)
    port, = struct.unpack("!H", raw[2:4])
    c.sendall(f"{sys.argv[2]} {socket.inet_ntoa(raw[4:8])}:{port}\n".encode())
    c.close()
"#;

/// Connects to ADDR PORT with a one-second timeout; prints the first line received, or what
/// happened instead.
const CLIENT: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    print(c.makefile().readline().strip())
except Exception as e:
    print(f"not redirected: {type(e).__name__}")
"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_rules_install_idempotently_and_send_the_pods_traffic_to_its_sidecar() {
    let Some((pod, other)) = two_pods() else {
        return;
    };
    let install = [HUSH, "init-iptables", "--exclude-inbound-ports", "15020"];
    // Twice, as when the init container restarts: the rules must not pile up.
    for _ in 0..2 {
        let out = pod.run_ok(&install);
        assert!(out.contains("inbound TCP -> port 15006"), "{out}");
        assert!(out.contains("(IPv4 and IPv6)"), "{out}");
    }
    for (save, loopback) in [
        ("iptables-save", "127.0.0.0/8"),
        ("ip6tables-save", "::1/128"),
    ] {
        let saved = pod.run_ok(&[save, "-t", "nat"]);
        for rule in [
            "-A PREROUTING -p tcp -j HUSH_INBOUND",
            "-A OUTPUT -p tcp -j HUSH_OUTPUT",
            "-A HUSH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A HUSH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "--dport 15020 -j RETURN",
            &format!("-A HUSH_OUTPUT -d {loopback} -j RETURN"),
        ] {
            assert_eq!(saved.matches(rule).count(), 1, "{rule:?} in\n{saved}");
        }
    }

    let _transparent = pod.server("15001", "transparent");
    let _inbound = pod.server("15006", "inbound");
    // The app (any uid but the sidecar's) dials the other pod: the connection lands on the
    // transparent port, which learns where it was going.
    assert_eq!(
        pod.dial("1000", "10.200.0.2", "8080"),
        "transparent 10.200.0.2:8080"
    );
    assert_eq!(
        pod.dial("1000", "10.200.0.2", "443"),
        "transparent 10.200.0.2:443"
    );
    // The sidecar's own connections go where they were sent (nothing listens there).
    let own = pod.dial("1337", "10.200.0.2", "8080");
    assert!(own.starts_with("not redirected"), "{own}");
    // Loopback is left alone: the app reaches its sidecar's listeners directly.
    assert_eq!(
        pod.dial("1000", "127.0.0.1", "15006"),
        "inbound 127.0.0.1:15006"
    );

    // From the other pod (no rules there): connections to any port of this pod reach the
    // inbound port, except the excluded one.
    assert_eq!(
        other.dial("1000", "10.200.0.1", "8080"),
        "inbound 10.200.0.1:8080"
    );
    let excluded = other.dial("1000", "10.200.0.1", "15020");
    assert!(excluded.starts_with("not redirected"), "{excluded}");
}

/// The backend's app (address and port in argv): answers `PATH from IDENTITY at ADDRESS` with
/// the caller's verified identity header and the address it was reached at.
const APP: &str = r#"
import http.server, socket, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def answer(self):
        identity = self.headers.get('x-hush-peer-identity')
        address = self.connection.getsockname()[0].removeprefix("::ffff:")
        body = f"{self.path} from {identity} at {address}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
class Server(http.server.HTTPServer):
    # "::" takes IPv4 connections too.
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = Server((sys.argv[1], int(sys.argv[2])), Echo)
print("ready", flush=True)
server.serve_forever()
"#;

/// Sends METHOD to URL; prints the status and the body, whatever the status, or what
/// happened instead.
const REQUEST: &str = r#"
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(urllib.request.Request(sys.argv[2], method=sys.argv[1]), timeout=10)
    print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())
except Exception as e:
    print("failed:", type(e).__name__, e)
"#;

/// Two pods with capture on, a CA in the backend pod (the sidecars reach it directly, as a
/// cluster service), a sidecar in each, and the backend's app (uid 1000) on 0.0.0.0:8080.
struct CapturedPods {
    frontend: Netns,
    backend: Netns,
    _ca: HushProcess,
    backend_sidecar: ProxyProcess,
    frontend_sidecar: ProxyProcess,
    _app: Server,
    _temp: tempfile::TempDir,
}

impl CapturedPods {
    fn start() -> Option<Self> {
        let (frontend, backend) = two_pods()?;
        let temp = tempfile::tempdir().expect("a temporary directory");
        let ca_dir = temp.path().join("ca");
        hush_test_support::run_hush_ok(
            HUSH,
            &[
                "ca",
                "init",
                "--dir",
                ca_dir.to_str().expect("a UTF-8 path"),
                "--trust-domain",
                "cluster.local",
            ],
        );
        // Each pod: capture everything but the sidecar's own traffic (it runs as root here,
        // the apps as uid 1000), the admin port (as the injector leaves it, for the kubelet)
        // and, in the backend pod, the CA's port (the CA stands in for a cluster service the
        // sidecars reach directly).
        for pod in [&frontend, &backend] {
            pod.run_ok(&[
                HUSH,
                "init-iptables",
                "--proxy-uid",
                "0",
                "--exclude-inbound-ports",
                "7443,15020",
            ]);
        }
        let mut ca = HushProcess::spawn(
            "ip",
            &[
                "netns",
                "exec",
                &backend.0,
                HUSH,
                "ca",
                "serve",
                "--dir",
                ca_dir.to_str().expect("a UTF-8 path"),
                "--listen",
                "0.0.0.0:7443",
                "--san",
                "10.200.0.2",
            ],
        );
        ca.wait_until_ready(CaProcess::READY_PREFIX)
            .unwrap_or_else(|e| panic!("the CA does not start in the backend pod: {e}"));

        let policy = temp.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: backend-api}\nspec:\n  rules:\n    - from: [{principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}]\n      to: [{ports: [8080], methods: [GET], paths: [\"/hello\"]}]\n    - from: [{principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}]\n      to: [{notPorts: [8080]}]\n",
        )
        .expect("write the policy");
        let backend_config = write_sidecar_config(
            HUSH,
            &temp.path().join("backend"),
            &ca_dir,
            "https://127.0.0.1:7443",
            "spiffe://cluster.local/ns/shop/sa/backend",
            // The listeners are laid out as the injector lays them out (the admin port on
            // every address, with the app's rewritten probe), plus an explicit outbound
            // listener on every address, which a pod's address reaches.
            |c| {
                c.admin.listen = every_address(15020);
                c.admin.probes = vec![AppProbe {
                    path: "/app-health/app/readiness".into(),
                    port: 8080,
                    http_path: Some("/hello".into()),
                }];
                c.inbound = Some(InboundConfig {
                    captured: true,
                    ..InboundConfig::new(
                        every_address(15006),
                        "127.0.0.1:9".parse().expect("an address"),
                    )
                });
                c.transparent = Some(TransparentConfig::new(every_address(15001)));
                c.outbound = vec![OutboundConfig::new(
                    "0.0.0.0:15011".parse().expect("an address"),
                    "10.200.0.1:15006",
                    Identities(vec![
                        "spiffe://cluster.local/ns/shop/sa/frontend"
                            .parse()
                            .expect("a SPIFFE ID"),
                    ]),
                )];
                c.policy = Some(PolicyConfig::new(&policy));
            },
        );
        let frontend_config = write_sidecar_config(
            HUSH,
            &temp.path().join("frontend"),
            &ca_dir,
            "https://10.200.0.2:7443",
            "spiffe://cluster.local/ns/shop/sa/frontend",
            |c| c.transparent = Some(TransparentConfig::new(every_address(15001))),
        );
        let backend_sidecar = ProxyProcess::start_wrapped(
            &["ip", "netns", "exec", &backend.0],
            HUSH,
            &backend_config,
        );
        let frontend_sidecar = ProxyProcess::start_wrapped(
            &["ip", "netns", "exec", &frontend.0],
            HUSH,
            &frontend_config,
        );
        let app = backend.spawn_ready(&as_user("1000", &[PYTHON, "-c", APP, "::", "8080"]));
        Some(Self {
            frontend,
            backend,
            _ca: ca,
            backend_sidecar,
            frontend_sidecar,
            _app: app,
            _temp: temp,
        })
    }

    /// A request from the frontend's app (uid 1000) or another uid; prints the status and
    /// the body, or what happened instead.
    fn request_as(&self, uid: &str, method: &str, url: &str) -> String {
        self.frontend
            .run_ok(&as_user(uid, &[PYTHON, "-c", REQUEST, method, url]))
            .trim()
            .to_string()
    }

    fn get(&self, url: &str) -> String {
        self.request_as("1000", "GET", url)
    }

    /// A sidecar's metrics, read from inside its pod.
    fn metrics(pod: &Netns, sidecar: &ProxyProcess) -> String {
        pod.run_ok(&[
            PYTHON,
            "-c",
            "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
            &format!("http://{}/metrics", sidecar.admin()),
        ])
    }
}

#[test]
fn two_pods_talk_through_their_sidecars_with_mutual_tls_and_policy() {
    let Some(pods) = CapturedPods::start() else {
        return;
    };
    // The app calls the other pod's address and port, unchanged: its sidecar captures the
    // connection, dials the backend pod with mutual TLS, and the backend's sidecar hands the
    // request to its app, at the address and port the caller dialled (the configured `app` is
    // a decoy), with the caller's verified identity.
    assert_eq!(
        pods.get("http://10.200.0.2:8080/hello"),
        "200 /hello from spiffe://cluster.local/ns/shop/sa/frontend at 10.200.0.2"
    );
    // The same over IPv6: a dual-stack pod is captured on both families.
    assert_eq!(
        pods.get("http://[fd00:200::2]:8080/hello"),
        "200 /hello from spiffe://cluster.local/ns/shop/sa/frontend at fd00:200::2"
    );
    // Policy is enforced on the captured port.
    let denied = pods.get("http://10.200.0.2:8080/admin");
    assert!(
        denied.starts_with("403 hush: denied: no ALLOW rule matched (policies: backend-api)"),
        "{denied}"
    );
    // A process that is not captured (root, like the sidecar) reaches the backend pod in
    // plaintext: its sidecar captures that too and refuses it, so nothing bypasses mTLS.
    for url in [
        "http://10.200.0.2:8080/hello",
        "http://[fd00:200::2]:8080/hello",
    ] {
        let plaintext = pods.request_as("0", "GET", url);
        assert!(
            plaintext.starts_with("400 hush: this port only accepts mutual TLS 1.3"),
            "{url}: {plaintext}"
        );
    }

    // The kubelet's probe, rewritten to the admin port (never captured), is checked by the
    // sidecar against the app.
    let probe = pods.backend.run_ok(&[
        PYTHON,
        "-c",
        REQUEST,
        "GET",
        &format!(
            "http://{}/app-health/app/readiness",
            pods.backend_sidecar.admin()
        ),
    ]);
    assert_eq!(probe.trim(), "200 ok: the app answered 200 OK");

    let metrics = CapturedPods::metrics(&pods.backend, &pods.backend_sidecar);
    assert!(
        metrics.contains("hush_handshakes_total{direction=\"inbound\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hush_policy_decisions_total{action=\"ALLOW\",policy=\"backend-api\",result=\"allow\"} 2"),
        "{metrics}"
    );
}

/// A mesh identity reaches only what the pod serves on its own address: never a service bound
/// to loopback alone, never the sidecar's admin or outbound listeners; and an app that dials
/// its own sidecar's transparent port does not make it dial itself forever.
#[test]
fn captured_connections_reach_neither_loopback_nor_the_sidecar_itself() {
    let Some(pods) = CapturedPods::start() else {
        return;
    };
    // A debug server the backend's app bound to loopback only.
    let _debug = pods
        .backend
        .spawn_ready(&as_user("1000", &[PYTHON, "-c", APP, "127.0.0.1", "6060"]));
    let _debug6 = pods
        .backend
        .spawn_ready(&as_user("1000", &[PYTHON, "-c", APP, "::1", "6061"]));
    for (url, app) in [
        ("http://10.200.0.2:6060/debug/pprof", "10.200.0.2:6060"),
        (
            "http://[fd00:200::2]:6061/debug/pprof",
            "[fd00:200::2]:6061",
        ),
    ] {
        let debug = pods.get(url);
        assert!(
            debug.starts_with(&format!("502 hush: cannot connect to the app at {app}")),
            "a loopback-only service answered the mesh: {debug}"
        );
    }

    // The sidecar's own listeners, bound to every address: its transparent listener would
    // dial wherever the caller says as the backend, its explicit outbound listener would call
    // upstreams with the backend's identity.
    for port in ["15001", "15011"] {
        let answer = pods.get(&format!("http://10.200.0.2:{port}/"));
        assert!(
            answer.starts_with(&format!("502 hush: refused upstream 10.200.0.2:{port}")),
            "the backend's listener on {port} answered the mesh: {answer}"
        );
    }
    let backend_metrics = CapturedPods::metrics(&pods.backend, &pods.backend_sidecar);
    assert!(
        backend_metrics.contains(
            "hush_connections_refused_total{direction=\"inbound\",reason=\"own_port\"} 2"
        ),
        "{backend_metrics}"
    );

    // The frontend's app dials its own pod's transparent port (the route to the pod's own
    // address is loopback, which the rules leave alone, so the connection arrives as it was
    // made): the listener, bound to 0.0.0.0, must not take 10.200.0.1:15001 for somewhere
    // else and dial itself again and again.
    let own = pods.get("http://10.200.0.1:15001/");
    assert!(
        own.starts_with("failed:"),
        "dialling the sidecar's own port: {own}"
    );
    let frontend_metrics = CapturedPods::metrics(&pods.frontend, &pods.frontend_sidecar);
    assert!(
        frontend_metrics.contains(
            "hush_connections_refused_total{direction=\"outbound\",reason=\"not_redirected\"} 1"
        ),
        "{frontend_metrics}"
    );
    assert!(
        frontend_metrics
            .contains("hush_connections_total{direction=\"outbound\",protocol=\"http1\"} 4"),
        "one connection from the app per request above, none of the sidecar's own: {frontend_metrics}"
    );

    // Both sidecars still serve.
    assert_eq!(
        pods.get("http://10.200.0.2:8080/hello"),
        "200 /hello from spiffe://cluster.local/ns/shop/sa/frontend at 10.200.0.2"
    );
}

/// The admin port is open to the cluster for the kubelet and Prometheus (health, readiness,
/// metrics, the app's rewritten probes) and for nothing else: the certificates, the policy,
/// the log filter and shutdown are the pod's own.
#[test]
fn the_admin_port_serves_the_cluster_health_and_metrics_only() {
    let Some(pods) = CapturedPods::start() else {
        return;
    };
    // From the other pod, uncaptured (root), as the kubelet and Prometheus reach it.
    let from_node = |method: &str, path: &str| {
        pods.request_as("0", method, &format!("http://10.200.0.2:15020{path}"))
    };
    for path in ["/live", "/ready", "/metrics", "/app-health/app/readiness"] {
        let answer = from_node("GET", path);
        assert!(answer.starts_with("200 "), "{path}: {answer}");
    }
    for (method, path) in [
        ("GET", "/certs"),
        ("GET", "/policy"),
        ("GET", "/logging"),
        ("POST", "/logging?filter=trace"),
        ("POST", "/shutdown"),
    ] {
        let answer = from_node(method, path);
        assert!(
            answer.starts_with("403 ") && answer.contains("only served to this pod"),
            "{method} {path}: {answer}"
        );
    }
    // The pod itself still has them.
    let certs =
        pods.backend
            .run_ok(&[PYTHON, "-c", REQUEST, "GET", "http://127.0.0.1:15020/certs"]);
    assert!(certs.starts_with("200 "), "{certs}");
    // And the sidecar still runs: the shutdown above was refused.
    assert!(from_node("GET", "/ready").starts_with("200 ready"));
}
