//! End-to-end tests of identity policy: a real `hush ca serve` and two real `hush proxy`
//! processes on loopback, the backend sidecar enforcing a policy it reads from a directory laid
//! out like a mounted Kubernetes ConfigMap, and the `hush policy` commands.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use hush_proxy::{InboundConfig, PolicyConfig, Protocol, ProxyConfig};
use hush_test_support::{describe_output, http_request, run_hush, run_hush_ok};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

use crate::mesh::apps;
use crate::mesh::sidecars::*;

/// The backend answers the frontend's GET requests under /api/ and /admin/, but a DENY
/// policy, checked first, keeps everyone out of /admin/.
const API_POLICY: &str = r#"apiVersion: hush.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: backend-api
spec:
  selector:
    identities: ["spiffe://cluster.local/ns/shop/sa/backend"]
  rules:
    - from:
        - principals: ["spiffe://cluster.local/ns/shop/sa/frontend"]
      to:
        - methods: [GET]
          paths: ["/api/*", "/admin/*"]
---
apiVersion: hush.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
spec:
  action: DENY
  rules:
    - to:
        - paths: ["/admin/*"]
"#;

/// Only the ops team may call: the frontend is not among the callers.
fn ops_only(dry_run: bool) -> String {
    format!(
        "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: ops-only\nspec:\n  dryRun: {dry_run}\n  rules:\n    - from:\n        - principals: [\"spiffe://cluster.local/ns/ops/*\"]\n"
    )
}

/// Keeps everyone out of the admin pages and away from the `evil` role; everything else is
/// allowed (no ALLOW policy applies), so a request that slips past the DENY reaches the app.
const DENY_ADMIN_POLICY: &str = r#"apiVersion: hush.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
spec:
  action: DENY
  rules:
    - to:
        - paths: ["/admin", "/admin/*"]
    - when:
        - key: request.headers[x-role]
          values: ["evil"]
"#;

const LOG_PATIENCE: Duration = Duration::from_secs(20);

/// Request headers, as name and value.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Sends each GET with Python's `http.client`, which puts the path on the request line exactly
/// as given (no dot-segment removal, no re-encoding) and each header on its own line; one
/// connection per request. Returns (status, body) for each.
async fn raw_gets(
    addr: std::net::SocketAddr,
    requests: &[(&str, Headers<'_>)],
) -> Vec<(u16, String)> {
    const CLIENT: &str = r#"
import http.client, json, sys
answers = []
for path, headers in json.load(sys.stdin):
    connection = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
    connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", "backend.shop")
    for name, value in headers:
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    answers.append([response.status, response.read().decode("utf-8", "replace")])
    connection.close()
json.dump(answers, sys.stdout)
"#;
    let input = serde_json::to_vec(requests).expect("requests as JSON");
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("python3")
            .args(["-c", CLIENT, &host, &port])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (the raw HTTP client)");
        child
            .stdin
            .take()
            .expect("python3's stdin")
            .write_all(&input)
            .expect("the requests written to python3");
        child.wait_with_output().expect("python3 ran")
    })
    .await
    .expect("the client's thread");
    assert!(output.status.success(), "{}", describe_output(&output));
    serde_json::from_slice(&output.stdout).expect("the answers as JSON")
}

/// Runs `hush` from the workspace root, so paths read as the README writes them
/// (`examples/policy`).
fn hush_at_root(args: &[&str]) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new(HUSH)
        .args(args)
        .current_dir(root)
        .output()
        .expect("run hush")
}

fn hush_at_root_ok(args: &[&str]) -> String {
    let output = hush_at_root(args);
    assert!(output.status.success(), "{}", describe_output(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Repeats a request (bounded) until its status is `status`: a policy change applies within
/// about a second, and the test waits for it rather than sleeping.
async fn eventually_status(addr: std::net::SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (got, body) = get(addr, path, &[]).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}; last: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_allowed_or_denied_with_the_deciding_policy_named() {
    let mesh = Mesh::start(MeshSpec {
        backend_policy: Some(API_POLICY.to_string()),
        ..MeshSpec::default()
    })
    .await;
    let to_backend = mesh.to_backend();

    let (status, body) = get(to_backend, "/api/items", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["peer_identity"], serde_json::json!([FRONTEND]));

    // A DENY rule names itself, with the file and line it was written at.
    for path in [
        "/admin/users",
        "/api/../admin/users",
        "//admin/users",
        "/admin%2Fusers",
    ] {
        let (status, body) = get(to_backend, path, &[]).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.starts_with("hush: denied by DENY policy \"deny-admin\", rule 0 ("),
            "{path}: {body}"
        );
        assert!(body.contains("policy.yaml:22)"), "{body}");
    }
    // Nothing else is allowed once an ALLOW policy applies: another path, another method.
    let (status, body) = get(to_backend, "/other", &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body.trim(),
        "hush: denied: no ALLOW rule matched (policies: backend-api)"
    );
    let tcp = TcpStream::connect(to_backend).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let post = http::Request::post("/api/items")
        .header("host", "backend")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = within(sender.send_request(post)).await.unwrap();
    assert_eq!(response.status(), 403);

    // gRPC clients read the status from the trailers: PERMISSION_DENIED, with the reason.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{to_backend}"))
        .unwrap()
        .connect()
        .await
        .expect("a gRPC channel through the mesh");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let denied = within(health.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    }))
    .await
    .expect_err("the health service is not allowed");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("no ALLOW rule matched (policies: backend-api)"),
        "{denied:?}"
    );

    // The access log records who asked for what, the answer, the decision and the policy.
    let line = mesh
        .backend
        .wait_for_log(
            &[
                "access: inbound GET /admin/users from spiffe://cluster.local/ns/shop/sa/frontend (",
                ": 403 in ",
                "; denied by DENY policy \"deny-admin\"",
                "decision=\"deny\"",
                "policy=\"deny-admin\"",
            ],
            LOG_PATIENCE,
        )
        .unwrap();
    assert!(
        line.contains("peer_id=\"spiffe://cluster.local/ns/shop/sa/frontend\""),
        "{line}"
    );
    assert!(line.contains("duration_ms="), "{line}");
    mesh.backend
        .wait_for_log(
            &[
                "access: inbound POST /api/items from",
                "no ALLOW rule matched",
            ],
            LOG_PATIENCE,
        )
        .unwrap();

    let metrics = metrics_of(&mesh.backend);
    for (series, expected) in [
        (
            "hush_policy_decisions_total{action=\"DENY\",policy=\"deny-admin\",result=\"deny\"}",
            4.0,
        ),
        (
            "hush_policy_decisions_total{action=\"ALLOW\",policy=\"backend-api\",result=\"allow\"}",
            1.0,
        ),
        (
            "hush_policy_decisions_total{action=\"ALLOW\",policy=\"\",result=\"deny\"}",
            3.0,
        ),
        (
            "hush_requests_total{direction=\"inbound\",protocol=\"http1\",code=\"403\"}",
            6.0,
        ),
        ("hush_policies", 2.0),
    ] {
        assert_eq!(metric(&metrics, series), expected, "{series}\n{metrics}");
    }

    // The admin port shows the policy in force and which of it applies here.
    let (status, body) = http_request(mesh.backend.admin(), "GET", "/policy");
    assert_eq!(status, 200, "{body}");
    let report = json(&body);
    assert_eq!(report["generation"], 1);
    assert_eq!(report["default"], "allow");
    assert_eq!(report["policies"][0]["name"], "backend-api");
    assert_eq!(report["policies"][0]["applies"], true);
    assert_eq!(report["policies"][1]["action"], "DENY");
    assert!(report["refused"].is_null(), "{body}");
    // The frontend has no policy: its admin port says what that means.
    let (status, body) = http_request(mesh.frontend.admin(), "GET", "/policy");
    assert_eq!(status, 404);
    assert!(
        body.contains("any authenticated mesh identity may call"),
        "{body}"
    );
}

/// Paths that Tomcat, Spring, Express, IIS or an app that decodes twice would read as
/// `/admin`, sent as they are by a client that does not normalize, through the real mesh: each
/// is denied, or refused as a path that cannot be judged; ordinary paths still get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_headers_that_could_read_as_denied_ones_are_denied_or_refused() {
    let mesh = Mesh::start(MeshSpec {
        backend_policy: Some(DENY_ADMIN_POLICY.to_string()),
        ..MeshSpec::default()
    })
    .await;
    let none: &[(&str, &str)] = &[];
    let denied = "hush: denied by DENY policy \"deny-admin\", rule 0 (";
    let denied_role = "hush: denied by DENY policy \"deny-admin\", rule 1 (";
    // (path, headers, status, start of the body)
    type Case<'a> = (&'a str, Headers<'a>, u16, &'a str);
    let cases: &[Case<'_>] = &[
        // Ordinary requests reach the app.
        ("/api/items", none, 200, ""),
        ("/api/items;v=2", none, 200, ""),
        ("/api/items", &[("x-role", "reader")], 200, ""),
        ("/admin", none, 403, denied),
        // Path parameters, cut by Tomcat, Jetty and Spring.
        ("/admin;x=1", none, 403, denied),
        ("/admin;jsessionid=0/users", none, 403, denied),
        (
            "/public/..;/admin",
            none,
            400,
            "hush: refused: the path has a `.` or `..` segment and a path parameter (`;`)",
        ),
        // Case, ignored by Express, ASP.NET and IIS.
        ("/ADMIN/users", none, 403, denied),
        // Backslashes, a separator to IIS and some Node and Java setups.
        (
            "/admin\\users",
            none,
            400,
            "hush: refused: the path holds a backslash",
        ),
        (
            "/admin%5Cusers",
            none,
            400,
            "hush: refused: the path holds a backslash",
        ),
        // Double encoding, `.` to an app that decodes twice.
        (
            "/public/%252e%252e/admin",
            none,
            400,
            "hush: refused: the path holds a percent-encoded `%`",
        ),
        // Dot segments with encoded slashes: `/public` once `%2F` separates.
        (
            "/admin/a%2F..%2F..%2Fpublic",
            none,
            400,
            "hush: refused: the path has a `.` or `..` segment and an encoded slash",
        ),
        ("/admin%2Fusers", none, 403, denied),
        // Encoded dots, resolved.
        ("/public/%2e%2e/admin", none, 403, denied),
        ("/public/.%2E/admin/users", none, 403, denied),
        // A NUL, where C code stops reading; an overlong `.`.
        (
            "/admin%00",
            none,
            400,
            "hush: refused: the path holds a control character",
        ),
        (
            "/%C0%AE%C0%AE/admin",
            none,
            400,
            "hush: refused: the path's percent-encoded bytes are not UTF-8",
        ),
        // A repeated header, on two lines or as a list on one.
        (
            "/api/items",
            &[("x-role", "reader"), ("X-Role", "evil")],
            403,
            denied_role,
        ),
        (
            "/api/items",
            &[("x-role", "reader, evil")],
            403,
            denied_role,
        ),
    ];
    let requests: Vec<(&str, Headers<'_>)> = cases
        .iter()
        .map(|(path, headers, _, _)| (*path, *headers))
        .collect();
    let answers = raw_gets(mesh.to_backend(), &requests).await;
    // Every answer is checked before the test fails, so a failure lists each path that got
    // through.
    let mut wrong = Vec::new();
    for ((path, headers, status, start), (got, body)) in cases.iter().zip(&answers) {
        // An app's answer shows the request as it arrived: the sidecar judges, it does not
        // rewrite.
        let as_sent = *status != 200 || json(body)["path"] == serde_json::json!(path);
        if got != status || !body.starts_with(start) || !as_sent {
            wrong.push(format!(
                "{path} {headers:?}: expected {status} {start:?}, got {got} {body}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let refusals = cases.iter().filter(|case| case.2 == 400).count();
    let metrics = metrics_of(&mesh.backend);
    assert_eq!(
        metric(
            &metrics,
            "hush_policy_decisions_total{action=\"ambiguous_path\",policy=\"\",result=\"deny\"}"
        ),
        refusals as f64,
        "{metrics}"
    );
    mesh.backend
        .wait_for_log(
            &[
                "access: inbound GET /public/..;/admin from spiffe://cluster.local/ns/shop/sa/frontend (",
                ": 400 in ",
                "refused: the path has a `.` or `..` segment and a path parameter",
            ],
            LOG_PATIENCE,
        )
        .unwrap();
}

/// A deleted ConfigMap must not become "no policy": the last good policy stays in force, the
/// sidecar says why and what to do, until the directory says `[]` on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_policy_directory_keeps_the_last_good_policy() {
    let mesh = Mesh::start(MeshSpec {
        backend_policy: Some(API_POLICY.to_string()),
        ..MeshSpec::default()
    })
    .await;
    let to_backend = mesh.to_backend();
    assert_eq!(get(to_backend, "/admin/users", &[]).await.0, 403);

    mesh.empty_policy();
    let line = mesh
        .backend
        .wait_for_log(
            &["policy reload refused, the previous policy (generation 1) stays in force"],
            LOG_PATIENCE,
        )
        .unwrap();
    let stderr = mesh.backend.stderr();
    assert!(
        stderr.contains("no policy file (*.yaml, *.yml) here; hush takes that for a mistake"),
        "{line}\n{stderr}"
    );
    assert!(stderr.contains("write a file holding `[]`"), "{stderr}");
    assert_eq!(get(to_backend, "/admin/users", &[]).await.0, 403);
    assert_eq!(get(to_backend, "/other", &[]).await.0, 403);
    assert_eq!(get(to_backend, "/api/items", &[]).await.0, 200);
    let metrics = metrics_of(&mesh.backend);
    assert_eq!(
        metric(&metrics, "hush_policy_reloads_total{result=\"error\"}"),
        1.0,
        "{metrics}"
    );
    let (_, body) = http_request(mesh.backend.admin(), "GET", "/policy");
    let report = json(&body);
    assert_eq!(report["generation"], 1);
    assert_eq!(
        report["policies"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    assert!(
        report["refused"][0]
            .as_str()
            .is_some_and(|e| e.contains("no policy file")),
        "{body}"
    );

    // Removing every policy on purpose: a file that holds `[]`.
    mesh.edit_policy("# no policy on purpose: any caller of the mesh may call\n[]\n");
    eventually_status(to_backend, "/other", 200).await;
    assert_eq!(get(to_backend, "/admin/users", &[]).await.0, 200);
    let (_, body) = http_request(mesh.backend.admin(), "GET", "/policy");
    let report = json(&body);
    assert_eq!(report["generation"], 2);
    assert!(report["refused"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lets_a_would_deny_through_and_reports_it() {
    let mesh = Mesh::start(MeshSpec {
        backend_policy: Some(ops_only(true)),
        ..MeshSpec::default()
    })
    .await;

    let (status, body) = get(mesh.to_backend(), "/api/items", &[]).await;
    assert_eq!(status, 200, "the dry run enforces nothing: {body}");
    mesh.backend
        .wait_for_log(
            &[
                "dry run: GET /api/items from spiffe://cluster.local/ns/shop/sa/frontend would be denied (no ALLOW rule matched (policies: ops-only)), is allow",
                "dry_run_policy=ops-only",
            ],
            LOG_PATIENCE,
        )
        .unwrap();
    let metrics = metrics_of(&mesh.backend);
    assert_eq!(
        metric(
            &metrics,
            "hush_policy_dry_run_total{policy=\"ops-only\",result=\"would_deny\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "hush_policy_decisions_total{action=\"default\",policy=\"\",result=\"allow\"}"
        ),
        1.0,
        "{metrics}"
    );

    // Enforced, the same policy bites.
    mesh.edit_policy(ops_only(false));
    let body = eventually_status(mesh.to_backend(), "/api/items", 403).await;
    assert!(
        body.contains("no ALLOW rule matched (policies: ops-only)"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_edits_apply_and_a_broken_edit_keeps_the_last_good_policy() {
    let mut mesh = Mesh::start(MeshSpec {
        backend_policy: Some(API_POLICY.to_string()),
        ..MeshSpec::default()
    })
    .await;
    let to_backend = mesh.to_backend();
    assert_eq!(get(to_backend, "/reports/1", &[]).await.0, 403);

    // A valid edit, swapped in the way the kubelet updates a ConfigMap.
    mesh.edit_policy(API_POLICY.replace(
        "paths: [\"/api/*\", \"/admin/*\"]",
        "paths: [\"/api/*\", \"/admin/*\", \"/reports/*\"]",
    ));
    eventually_status(to_backend, "/reports/1", 200).await;
    mesh.backend
        .wait_for_log(
            &[
                "policy reloaded; new requests are decided by it",
                "generation=2",
            ],
            LOG_PATIENCE,
        )
        .unwrap();

    // A broken edit is refused with its location; the previous policy stays in force.
    let broken = API_POLICY.replace("methods: [GET]", "methods: [GTE]");
    mesh.edit_policy(&broken);
    let line = mesh
        .backend
        .wait_for_log(
            &["policy reload refused, the previous policy (generation 2) stays in force"],
            LOG_PATIENCE,
        )
        .unwrap();
    assert!(line.contains("policy reload refused"), "{line}");
    let stderr = mesh.backend.stderr();
    assert!(
        stderr.contains("policy.yaml:12:21: methods: unknown method \"GTE\""),
        "{stderr}"
    );
    assert_eq!(get(to_backend, "/reports/1", &[]).await.0, 200);
    assert_eq!(get(to_backend, "/admin/x", &[]).await.0, 403);
    let metrics = metrics_of(&mesh.backend);
    assert_eq!(
        metric(&metrics, "hush_policy_reloads_total{result=\"error\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "hush_policy_reloads_total{result=\"ok\"}"),
        1.0,
        "{metrics}"
    );
    let (_, body) = http_request(mesh.backend.admin(), "GET", "/policy");
    let report = json(&body);
    assert_eq!(report["generation"], 2);
    assert!(
        report["refused"][0]
            .as_str()
            .is_some_and(|e| e.contains("unknown method \"GTE\"")),
        "{body}"
    );

    // SIGHUP reads the files at once, even unchanged: the refusal is reported again, and the
    // sidecar keeps serving.
    let hup = Command::new("kill")
        .args(["-HUP", &mesh.backend.process().pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    wait_until("the SIGHUP reload", || {
        metric(
            &metrics_of(&mesh.backend),
            "hush_policy_reloads_total{result=\"error\"}",
        ) == 2.0
    });
    assert_eq!(get(to_backend, "/reports/1", &[]).await.0, 200);

    // Fixed, the edit applies, and the refusal is gone.
    mesh.edit_policy(API_POLICY);
    eventually_status(to_backend, "/reports/1", 403).await;
    let (_, body) = http_request(mesh.backend.admin(), "GET", "/policy");
    let report = json(&body);
    assert_eq!(report["generation"], 3);
    assert!(report["refused"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_tcp_connection_is_closed_after_the_handshake() {
    let greeter = apps::start_greeter().await;
    let mesh = Mesh::start(MeshSpec {
        app: Some(greeter),
        backend_inbound: edit(|i: &mut InboundConfig| i.protocol = Protocol::Tcp),
        backend_policy: Some(ops_only(false)),
        more_outbound: vec![(BACKEND, Protocol::Tcp)],
        ..MeshSpec::default()
    })
    .await;
    let tcp_listener = mesh.frontend.outbound(1);

    // Denied: the connection closes before the server-first app says a word.
    let tcp = TcpStream::connect(tcp_listener).await.unwrap();
    let mut lines = BufReader::new(tcp).lines();
    let end = within(lines.next_line()).await;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    mesh.backend
        .wait_for_log(
            &[
                "access: inbound TCP connection from spiffe://cluster.local/ns/shop/sa/frontend (",
                "; denied: no ALLOW rule matched (policies: ops-only)",
            ],
            LOG_PATIENCE,
        )
        .unwrap();

    // Allowed once the policy names the frontend too.
    mesh.edit_policy(ops_only(false).replace(
        "[\"spiffe://cluster.local/ns/ops/*\"]",
        "[\"spiffe://cluster.local/ns/ops/*\", \"spiffe://cluster.local/ns/shop/sa/frontend\"]",
    ));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let tcp = TcpStream::connect(tcp_listener).await.unwrap();
        let mut lines = BufReader::new(tcp).lines();
        if let Ok(Some(greeting)) = within(lines.next_line()).await {
            assert_eq!(greeting, apps::GREETING);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit never let the frontend in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = metrics_of(&mesh.backend);
    assert!(
        metric(
            &metrics,
            "hush_policy_decisions_total{action=\"ALLOW\",policy=\"ops-only\",result=\"allow\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn policy_check_and_explain_work_as_documented() {
    // The example policies are valid, and their errors would be reported with locations.
    let ok = hush_at_root_ok(&["policy", "check", "examples/policy"]);
    assert!(ok.contains("ok: 6 policies, 7 rules in 5 files"), "{ok}");
    hush_at_root_ok(&["policy", "check", "examples/quickstart/policy.yaml"]);

    let temp = tempfile::tempdir().unwrap();
    let broken = temp.path().join("broken.yaml");
    fs::write(
        &broken,
        "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: a\nspec:\n  rules:\n    - to:\n        - ports: [0]\n",
    )
    .unwrap();
    let garbage = temp.path().join("garbage.yaml");
    fs::write(&garbage, "\u{1}\u{2}: [unclosed\n").unwrap();
    let output = hush_at_root(&[
        "policy",
        "check",
        path_str(&broken),
        path_str(&garbage),
        "examples/policy",
    ]);
    assert!(!output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:8:19: ports: \"0\" is not a port (1-65535)",
            broken.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:", garbage.display())),
        "{stderr}"
    );
    assert!(stderr.contains("error: 2 errors in the policy"), "{stderr}");

    // explain: the decision and the reasoning, rule by rule.
    let explained = hush_at_root_ok(&[
        "policy",
        "explain",
        "--policy",
        "examples/policy",
        "--from",
        FRONTEND,
        "--port",
        "8080",
        "--method",
        "GET",
        "--path",
        "/api/../admin",
        "--workload",
        BACKEND,
    ]);
    for needle in [
        "GET /api/../admin (read as /api/../admin, /admin)",
        "decision: DENY, denied by DENY policy \"deny-admin\", rule 0 (examples/policy/deny-admin.yaml:17)",
        "rule 0 (line 13): no match: to: path /admin matches none of paths [/api/*, /healthz]",
        "inventory-only-backend (examples/policy/inventory-dry-run.yaml:8): its selector names",
    ] {
        assert!(
            explained.contains(needle),
            "expected {needle:?} in:\n{explained}"
        );
    }
    let tcp = hush_at_root_ok(&[
        "policy",
        "explain",
        "--policy",
        "examples/policy",
        "--from",
        BACKEND,
        "--port",
        "5432",
        "--workload",
        "spiffe://cluster.local/ns/shop/sa/orders-db",
    ]);
    assert!(
        tcp.contains("decision: ALLOW, allowed by ALLOW policy \"orders-db-clients\", rule 0"),
        "{tcp}"
    );
}

#[test]
fn the_sidecar_refuses_a_policy_that_cannot_work_on_its_port() {
    let (temp, ca_dir) = new_ca();
    let policy = temp.path().join("policy.yaml");
    fs::write(&policy, API_POLICY).unwrap();
    let guarded = |app: &str, protocol: Protocol| {
        let policy = policy.clone();
        let app = app.parse().unwrap();
        move |c: &mut ProxyConfig| {
            c.inbound = Some(InboundConfig {
                protocol,
                ..InboundConfig::new(loopback(), app)
            });
            c.policy = Some(PolicyConfig::new(policy));
        }
    };
    let config = sidecar_config(
        temp.path(),
        "db",
        "https://127.0.0.1:1",
        &ca_dir,
        BACKEND,
        guarded("127.0.0.1:5432", Protocol::Tcp),
    );
    let output = run_hush(HUSH, &["proxy", "--config", path_str(&config), "--check"]);
    assert!(!output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy.yaml:22:7: policy \"deny-admin\", rule 0 names HTTP fields (paths) but port 5432 is served as opaque TCP"),
        "{stderr}"
    );

    // With an HTTP app the same policy is fine, and `--check` says what it loaded.
    let config = sidecar_config(
        temp.path(),
        "web",
        "https://127.0.0.1:1",
        &ca_dir,
        BACKEND,
        guarded("127.0.0.1:8080", Protocol::Detect),
    );
    let checked = run_hush_ok(HUSH, &["proxy", "--config", path_str(&config), "--check"]);
    assert!(
        checked.contains("(2 policies, 2 rules; default allow)"),
        "{checked}"
    );
}

#[test]
fn the_sidecar_refuses_to_start_on_an_empty_policy_directory() {
    let (temp, ca_dir) = new_ca();
    let policy = temp.path().join("policy");
    fs::create_dir(&policy).unwrap();
    let config = sidecar_config(
        temp.path(),
        "web",
        "https://127.0.0.1:1",
        &ca_dir,
        BACKEND,
        |c| {
            c.inbound = Some(InboundConfig::new(
                loopback(),
                "127.0.0.1:8080".parse().unwrap(),
            ));
            c.policy = Some(PolicyConfig::new(&policy));
        },
    );
    let output = run_hush(HUSH, &["proxy", "--config", path_str(&config), "--check"]);
    assert!(!output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: no policy file (*.yaml, *.yml) here; hush takes that for a mistake",
            policy.display()
        )),
        "{stderr}"
    );

    // Said on purpose, it is a policy.
    fs::write(policy.join("none.yaml"), "[]\n").unwrap();
    let checked = run_hush_ok(HUSH, &["proxy", "--config", path_str(&config), "--check"]);
    assert!(
        checked.contains("(0 policies, 0 rules; default allow)"),
        "{checked}"
    );
}
