//! hush as it runs on a cluster, without a cluster: the CA serving from a Secret volume and
//! checking service-account tokens with TokenReview (against a fake API server), a sidecar that
//! follows the kubelet's rotation of its projected token, and the Helm chart, rendered by a real
//! Helm, validated against the Kubernetes schema, and run: the rendered CA arguments and Secret
//! start a real CA, the rendered webhook certificate and configuration serve a real injection,
//! and the rendered gateway configuration is read by `hush gateway` and, with its projected
//! token, gets the gateway's SPIFFE ID from the rendered CA.
//!
//! Helm and `kubernetes-validate` come from PyPI (`.ci/run` installs both and names them in
//! `HUSH_HELM` and `HUSH_KUBERNETES_VALIDATE`); elsewhere the tests that need them say they were
//! skipped.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hush_ca_client::CaClient;
use hush_test_support::{
    CaProcess, CsrKeyKind, FakeApiServer, GatewayProcess, HushProcess, ProxyProcess, ReviewRequest,
    describe_output, http_request, plain_csr, run_hush, run_hush_ok, token_review_authenticated,
    token_review_rejected,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use crate::mesh::kube;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/hush");
const NAMESPACE: &str = "hush-system";
/// A service-account token for shop/frontend that the API server no longer accepts (the kubelet
/// has rotated it), and the one that replaced it.
const OLD_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpmcm9udGVuZCIsImV4cCI6MX0.b2xkLXNpZ25hdHVyZQ";
const NEW_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpmcm9udGVuZCIsImV4cCI6OX0.bmV3LXNpZ25hdHVyZQ";
/// The CA's own service-account token, which it presents to the API server.
const CA_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6aHVzaC1zeXN0ZW06aHVzaC1jYSJ9.Y2Etc2lnbmF0dXJl";
const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

/// An API server that knows one valid token, for `shop/frontend` with audience `hush-ca`.
fn api_server() -> FakeApiServer {
    FakeApiServer::start(|request: &ReviewRequest| {
        let body = if request.token() == Some(NEW_TOKEN) {
            token_review_authenticated(
                request,
                "system:serviceaccount:shop:frontend",
                "8d4c2b1a-0f9e-4d7c-a6b5-3e2f1a0b9c8d",
                &["hush-ca"],
            )
        } else {
            token_review_rejected(request, "[invalid bearer token, token has expired]")
        };
        (201, body)
    })
}

/// `--k8s-api-server …` for the fake, with its CA and the CA's own token written under `temp`.
fn api_args(api: &FakeApiServer, temp: &Path) -> Vec<String> {
    let ca_file = temp.join("kube-ca.crt");
    let token_file = temp.join("kube-token");
    fs::write(&ca_file, api.ca_pem()).expect("write the API server's CA");
    fs::write(&token_file, CA_TOKEN).expect("write the CA's token");
    vec![
        "--k8s-api-server".into(),
        api.url().into(),
        "--k8s-ca-file".into(),
        path_str(&ca_file).into(),
        "--k8s-token-file".into(),
        path_str(&token_file).into(),
    ]
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `hush ca init` in `temp/ca-init`; returns the files the chart's Secret holds.
fn ca_secret_files(temp: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let dir = temp.join("ca-init");
    run_hush_ok(
        HUSH,
        &[
            "ca",
            "init",
            "--dir",
            path_str(&dir),
            "--trust-domain",
            "cluster.local",
        ],
    );
    ["bundle.pem", "intermediate.pem", "intermediate.key"]
        .into_iter()
        .map(|name| (name, fs::read(dir.join(name)).expect("CA file")))
        .collect()
}

/// The Secret volume as the kubelet mounts it with `defaultMode: 0400` for a pod with an
/// `fsGroup`: group-readable (0440) links into `..data`.
fn mount_secret(dir: &Path, files: &[(&str, Vec<u8>)]) {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    kube::write_kubelet_volume(dir, &files, 0o440);
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === the CA and the sidecar, as on a cluster ===

#[test]
fn a_sidecar_follows_the_kubelets_token_rotation_to_its_certificate() {
    let temp = tempfile::tempdir().expect("temp dir");
    let api = api_server();
    let secret = temp.path().join("secret");
    mount_secret(&secret, &ca_secret_files(temp.path()));
    let mut args = api_args(&api, temp.path());
    args.extend(
        ["--trust-domain", "cluster.local", "--audit-log"]
            .map(String::from)
            .into_iter()
            .chain([path_str(&temp.path().join("audit.log")).to_string()]),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ca = CaProcess::start(HUSH, &secret, &args);

    // The projected token the kubelet wrote at start, already stale.
    let token_dir = temp.path().join("token");
    kube::write_kubelet_volume(&token_dir, &[("token", OLD_TOKEN.as_bytes())], 0o600);
    let config = temp.path().join("sidecar.yaml");
    let mut sidecar = hush_proxy::ProxyConfig::new(hush_proxy::CaConfig::new(
        ca.url(),
        secret.join("bundle.pem"),
        token_dir.join("token"),
    ));
    sidecar.inbound = Some(hush_proxy::InboundConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    ));
    sidecar.admin.listen = "127.0.0.1:0".parse().unwrap();
    hush_test_support::write_config(&config, &sidecar);
    let starting = std::thread::spawn(move || ProxyProcess::try_start(HUSH, &config, &[]));

    // The CA asks the API server about the stale token and refuses it; the sidecar retries.
    let asked_about = |token: &str| api.requests().iter().any(|r| r.token() == Some(token));
    wait_until("the stale token to be reviewed", || asked_about(OLD_TOKEN));
    // The kubelet rotates the token: a new `..data`, swapped in one rename.
    kube::write_kubelet_volume(&token_dir, &[("token", NEW_TOKEN.as_bytes())], 0o600);

    let sidecar = starting
        .join()
        .expect("the starting thread")
        .unwrap_or_else(|e| panic!("the sidecar never got a certificate: {e}"));
    assert_eq!(sidecar.spiffe_id(), FRONTEND);
    assert!(asked_about(NEW_TOKEN));
    let stderr = sidecar.stderr();
    assert!(
        stderr.contains("token has expired"),
        "the refusal of the stale token is reported:\n{stderr}"
    );
}

#[test]
fn the_ca_refuses_to_start_without_its_secret_or_for_another_trust_domain() {
    let temp = tempfile::tempdir().expect("temp dir");
    let api = api_server();
    let api_args = api_args(&api, temp.path());
    let start = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "ca",
            "serve",
            "--dir",
            path_str(dir),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend(api_args.iter().map(String::as_str));
        args.extend(extra);
        let output = Command::new(HUSH).args(&args).output().expect("run hush");
        assert!(!output.status.success(), "{}", describe_output(&output));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    // The Secret does not exist: the optional volume is an empty directory.
    let empty = temp.path().join("empty");
    fs::create_dir(&empty).expect("empty dir");
    let stderr = start(&empty, &[]);
    assert!(
        stderr.contains("create the Secret") && stderr.contains("never makes a new root"),
        "{stderr}"
    );
    assert!(stderr.contains("bundle.pem is missing"), "{stderr}");

    let files = ca_secret_files(temp.path());
    let secret = temp.path().join("secret");
    mount_secret(&secret, &files);
    let stderr = start(&secret, &["--trust-domain", "prod.example.com"]);
    assert!(
        stderr.contains(
            "is for trust domain cluster.local, but --trust-domain says prod.example.com"
        ),
        "{stderr}"
    );

    // A Secret mounted readable by everyone (defaultMode 0444).
    let careless = temp.path().join("careless");
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    kube::write_kubelet_volume(&careless, &files, 0o444);
    let stderr = start(&careless, &[]);
    assert!(stderr.contains("defaultMode 0400"), "{stderr}");
    assert!(
        !stderr.contains("create the Secret"),
        "the Secret exists; only its mode is wrong: {stderr}"
    );
}

// === the Helm chart ===

/// `helm template` of the chart as release `hush` in `hush-system` with `args`.
fn render(helm: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(helm)
        .args(["template", "hush", CHART, "--namespace", NAMESPACE])
        .args(args)
        .output()
        .expect("run helm");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The rendered documents, as JSON.
fn documents(rendered: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in rendered.lines().chain(["---"]) {
        if line == "---" {
            let doc: Option<Value> = serde_saphyr::from_str(&current).unwrap_or_else(|e| {
                panic!("helm rendered YAML that does not parse: {e}\n{current}")
            });
            docs.extend(doc.filter(|d| !d.is_null()));
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} was rendered"))
}

fn container_args(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("a string argument").to_string())
        .collect()
}

fn secret_data(secret: &Value, key: &str) -> Vec<u8> {
    let data = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in the Secret"));
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64 Secret data")
}

/// Writes the values files the tests install the chart with; returns (minimal, full) args.
fn values(temp: &Path, files: &[(&str, Vec<u8>)]) -> (Vec<String>, Vec<String>) {
    let file = |name: &str| -> String {
        let path = temp.join(name);
        let content = &files.iter().find(|(n, _)| *n == name).expect("CA file").1;
        fs::write(&path, content).expect("write a CA file");
        format!("{}", path.display())
    };
    let bundle = format!("trustBundle={}", file("bundle.pem"));
    let minimal = vec!["--set-file".into(), bundle.clone()];
    let policy =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernetes/shop-policy.yaml");
    let overrides = temp.join("values.yaml");
    fs::write(
        &overrides,
        "ca:\n  replicas: 3\n  antiAffinity: hard\n  certificateLifetime: 1h\n  maxCertificateLifetime: 12h\n  secret:\n    create: true\n\
         injector:\n  failurePolicy: Ignore\n  namespaceSelector:\n    matchLabels: null\n    matchExpressions:\n      - {key: team, operator: In, values: [shop, pay]}\n\
         proxy:\n  excludeOutboundCIDRs: [10.96.0.1/32]\n  memory: 96Mi\n\
         tracing:\n  otlpEndpoint: http://otel-agent.observability:4317\n\
         imagePullSecrets: [{name: regcred}]\n",
    )
    .expect("write values");
    let full = vec![
        "-f".into(),
        path_str(&overrides).into(),
        "--set-file".into(),
        bundle,
        "--set-file".into(),
        format!("ca.secret.intermediateCert={}", file("intermediate.pem")),
        "--set-file".into(),
        format!("ca.secret.intermediateKey={}", file("intermediate.key")),
        "--set-file".into(),
        format!("policies.shop={}", policy.display()),
    ];
    (minimal, full)
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn the_chart_lints_and_every_rendered_manifest_is_valid() {
    let Some(helm) = kube::helm() else { return };
    let temp = tempfile::tempdir().expect("temp dir");
    let files = ca_secret_files(temp.path());
    let (minimal, full) = values(temp.path(), &files);
    for args in [&minimal, &full] {
        let mut lint = Command::new(&helm);
        lint.args(["lint", "--strict", CHART, "--namespace", NAMESPACE])
            .args(args);
        let output = lint.output().expect("run helm lint");
        assert!(output.status.success(), "{}", describe_output(&output));
    }

    let validator = kube::validator();
    for (name, args) in [("minimal", &minimal), ("full", &full)] {
        let rendered = render(&helm, &strs(args)).unwrap_or_else(|e| panic!("{e}"));
        let docs = documents(&rendered);
        let kinds: Vec<String> = docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or(""),
                    d["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect();
        for expected in [
            "ServiceAccount/hush-ca",
            "ClusterRole/hush-ca-tokenreview",
            "ClusterRoleBinding/hush-ca-tokenreview",
            "Deployment/hush-ca",
            "Service/hush-ca",
            "PodDisruptionBudget/hush-ca",
            "ConfigMap/hush-trust-bundle",
            "ConfigMap/hush-injector",
            "Secret/hush-injector-tls",
            "Deployment/hush-injector",
            "Service/hush-injector",
            "PodDisruptionBudget/hush-injector",
            "MutatingWebhookConfiguration/hush-injector",
        ] {
            assert!(
                kinds.iter().any(|k| k == expected),
                "{name}: no {expected} in {kinds:?}"
            );
        }
        if let Some(validator) = &validator {
            let file = temp.path().join(format!("{name}.yaml"));
            fs::write(&file, &rendered).expect("write the rendered chart");
            kube::validate(validator, &file);
        }
    }

    // What the minimal install does, in the words of the issue.
    let docs = documents(&render(&helm, &strs(&minimal)).unwrap_or_else(|e| panic!("{e}")));
    let role = find(&docs, "ClusterRole", "hush-ca-tokenreview");
    assert_eq!(role["rules"][0]["resources"][0], "tokenreviews");
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["create"]));
    let ca = find(&docs, "Deployment", "hush-ca");
    assert_eq!(ca["spec"]["replicas"], 2);
    let pod = &ca["spec"]["template"]["spec"];
    assert!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array(),
        "{pod}"
    );
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "hush-ca");
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "hush-ca")["spec"]["minAvailable"],
        1
    );
    // Metrics on their own port, where Prometheus's pod discovery looks.
    let args = container_args(ca).join(" ");
    assert!(args.contains("--metrics-listen 0.0.0.0:9090"), "{args}");
    assert_eq!(
        pod["containers"][0]["ports"][1],
        serde_json::json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"})
    );
    let annotations = &ca["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        *annotations,
        serde_json::json!({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9090",
            "prometheus.io/path": "/metrics",
        })
    );
    // And none with `ca.metrics.port: 0`.
    let mut off = strs(&minimal);
    off.extend(["--set", "ca.metrics.port=0"]);
    let docs_off = documents(&render(&helm, &off).unwrap_or_else(|e| panic!("{e}")));
    let ca_off = find(&docs_off, "Deployment", "hush-ca");
    let rendered_off = ca_off.to_string();
    assert!(
        !rendered_off.contains("metrics") && !rendered_off.contains("prometheus.io"),
        "{rendered_off}"
    );
    // Federation: the bundle endpoint on a port of the Service, partners' flags, and the
    // https_spiffe partners' bootstrap bundles in a ConfigMap the CA mounts.
    assert!(
        !args.contains("federate") && !args.contains("bundle-endpoint"),
        "{args}"
    );
    let partner_bundle = String::from_utf8_lossy(&files[0].1).to_string();
    let federation = temp.path().join("federation.yaml");
    fs::write(
        &federation,
        serde_json::json!({"ca": {"federation": {
            "bundleEndpointPort": 8444,
            "refreshHint": "1m",
            "partners": [
                {"trustDomain": "partner.example", "url": "https://bundle.partner.example:8444",
                 "endpointId": "spiffe://partner.example/hush/bundle-endpoint",
                 "bundle": partner_bundle},
                {"trustDomain": "web.example", "url": "https://web.example/bundle"},
            ],
        }}})
        .to_string(),
    )
    .expect("write federation values");
    let mut federated = strs(&minimal);
    federated.extend(["-f", path_str(&federation)]);
    let docs_federated = documents(&render(&helm, &federated).unwrap_or_else(|e| panic!("{e}")));
    let ca_federated = find(&docs_federated, "Deployment", "hush-ca");
    let args_federated = container_args(ca_federated).join(" ");
    for expected in [
        "--bundle-endpoint-listen 0.0.0.0:8444 --bundle-refresh-hint 1m",
        "--federate-with partner.example=https://bundle.partner.example:8444,endpoint-id=spiffe://partner.example/hush/bundle-endpoint,bundle=/etc/hush/federation/partner.example.pem",
        "--federate-with web.example=https://web.example/bundle",
    ] {
        assert!(
            args_federated.contains(expected),
            "{expected}: {args_federated}"
        );
    }
    let mounted = find(&docs_federated, "ConfigMap", "hush-ca-federation");
    assert_eq!(
        mounted["data"]["partner.example.pem"].as_str(),
        Some(partner_bundle.as_str())
    );
    assert!(mounted["data"]["web.example.pem"].is_null(), "{mounted}");
    let service = find(&docs_federated, "Service", "hush-ca");
    assert_eq!(service["spec"]["ports"][1]["port"], 8444, "{service}");
    if let Some(validator) = kube::validator() {
        let file = temp.path().join("federated.yaml");
        fs::write(
            &file,
            render(&helm, &federated).unwrap_or_else(|e| panic!("{e}")),
        )
        .expect("write the rendered chart");
        kube::validate(&validator, &file);
    }
    let bundle = &files[0].1;
    assert_eq!(
        find(&docs, "ConfigMap", "hush-trust-bundle")["data"]["bundle.pem"].as_str(),
        Some(String::from_utf8_lossy(bundle).as_ref())
    );
    let webhook = find(&docs, "MutatingWebhookConfiguration", "hush-injector");
    let hooks = webhook["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 2);
    assert_eq!(
        hooks[0]["namespaceSelector"]["matchLabels"]["hush.dev/inject"],
        "enabled"
    );
    assert_eq!(
        hooks[1]["objectSelector"]["matchLabels"]["hush.dev/inject"],
        "enabled"
    );
    for hook in hooks {
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
        let excluded = &hook["namespaceSelector"]["matchExpressions"];
        assert!(
            excluded.to_string().contains("\"hush-system\""),
            "{excluded}"
        );
    }
    // The user's overrides reach the manifests.
    let docs = documents(&render(&helm, &strs(&full)).unwrap_or_else(|e| panic!("{e}")));
    let ca = find(&docs, "Deployment", "hush-ca");
    assert_eq!(ca["spec"]["replicas"], 3);
    assert!(
        ca["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );
    let args = container_args(ca).join(" ");
    assert!(args.contains("--default-ttl 1h --max-ttl 12h"), "{args}");
    let env = ca["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains(
            "\"OTEL_EXPORTER_OTLP_ENDPOINT\",\"value\":\"http://otel-agent.observability:4317\""
        ),
        "{env}"
    );
    let injector_config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "hush-injector")
        .expect("the injector's ConfigMap");
    assert!(
        injector_config
            .to_string()
            .contains("otlp_endpoint: \\\"http://otel-agent.observability:4317\\\""),
        "{injector_config}"
    );
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["namespace"] == "shop")
        .expect("the shop namespace's policy ConfigMap");
    assert_eq!(policy["metadata"]["name"], "hush-policy");
    assert!(
        policy["data"]["policy.yaml"]
            .as_str()
            .unwrap_or("")
            .contains("AuthorizationPolicy")
    );
    let hook = &find(&docs, "MutatingWebhookConfiguration", "hush-injector")["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert!(hook["namespaceSelector"]["matchLabels"].is_null(), "{hook}");
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][0]["key"],
        "team"
    );
}

#[test]
fn bad_values_are_refused_with_the_field_named() {
    let Some(helm) = kube::helm() else { return };
    let temp = tempfile::tempdir().expect("temp dir");
    let files = ca_secret_files(temp.path());
    let (minimal, _) = values(temp.path(), &files);
    let err = render(&helm, &[]).expect_err("no trust bundle");
    assert!(err.contains("trustBundle is required"), "{err}");
    for (set, expected) in [
        ("ca.replicas=0", "ca.replicas"),
        ("ca.certificateLifetime=forever", "ca.certificateLifetime"),
        ("ca.replica=2", "replica"),
        ("ca.metrics.port=70000", "ca.metrics.port"),
        ("ca.metrics.port=8443", "ca.metrics.port"),
        (
            "ca.federation.bundleEndpointPort=9090",
            "ca.federation.bundleEndpointPort",
        ),
        (
            "ca.federation.partners[0].trustDomain=partner.example,ca.federation.partners[0].url=http://x",
            "url",
        ),
        (
            "ca.federation.partners[0].trustDomain=partner.example,ca.federation.partners[0].url=https://x,ca.federation.partners[0].endpointId=spiffe://partner.example/e",
            "bundle",
        ),
        ("injector.failurePolicy=Maybe", "injector.failurePolicy"),
        ("injector.timeoutSeconds=60", "injector.timeoutSeconds"),
        ("proxy.uid=0", "proxy.uid"),
        ("proxy.memory=lots", "proxy.memory"),
        (
            "tracing.otlpEndpoint=https://collector:4317",
            "tracing.otlpEndpoint",
        ),
        ("trustDomain=Cluster Local", "trustDomain"),
        ("trustBundle=not a certificate", "trustBundle"),
        ("ca.secret.create=true", "ca.secret.intermediateCert"),
        (
            "injector.tls.secretName=webhook-tls",
            "injector.tls.caBundle",
        ),
    ] {
        let mut args = strs(&minimal);
        // A later --set-file would win over --set for trustBundle; keep the bad one last.
        if set.starts_with("trustBundle") {
            args.clear();
        }
        args.extend(["--set", set]);
        let err = render(&helm, &args).expect_err(set);
        assert!(err.contains(expected), "{set}: {err}");
    }

    // The gateway's values, over a valid gateway.
    let gateway = gateway_values(temp.path());
    let mut with_gateway = strs(&minimal);
    with_gateway.extend(["-f", path_str(&gateway)]);
    assert!(render(&helm, &with_gateway).is_ok());
    for (set, expected) in [
        ("gateway.replicas=0", "gateway.replicas"),
        ("gateway.tls.profile=old", "gateway.tls.profile"),
        ("gateway.service.type=External", "gateway.service.type"),
        (
            "gateway.service.externalTrafficPolicy=Nearest",
            "gateway.service.externalTrafficPolicy",
        ),
        ("gateway.acme.challenge=dns-01", "gateway.acme.challenge"),
        (
            "gateway.acme.directory=http://acme.test",
            "gateway.acme.directory",
        ),
        ("gateway.acme.email=mailto:ops", "gateway.acme.email"),
        (
            "gateway.acme.acceptTermsOfService=false",
            "gateway.acme.acceptTermsOfService",
        ),
        ("gateway.acme.persistence.accessMode=Shared", "accessMode"),
        ("gateway.hsts.maxAge=forever", "gateway.hsts.maxAge"),
        ("gateway.adminPort=8443", "gateway.adminPort"),
        ("gateway.accessLog=some", "gateway.accessLog"),
        ("gateway.certificates=null", "gateway.certificates"),
        (
            "gateway.certificates[0].hosts[0]=shop.example.com:443",
            "gateway.certificates.0.hosts.0",
        ),
        (
            "gateway.certificates[1].hosts[0]=*.*.example.com",
            "gateway.certificates.1.hosts.0",
        ),
        // ACME and a Secret both (a certificate with neither is below).
        (
            "gateway.certificates[1].secretName=api-tls",
            "gateway.certificates.1",
        ),
        ("gateway.certificates[0].keyFile=x", "keyFile"),
        ("gateway.routes=null", "gateway.routes"),
        (
            "gateway.routes[0].host=shop_example.com",
            "gateway.routes.0.host",
        ),
        (
            "gateway.routes[0].pathPrefix=api",
            "gateway.routes.0.pathPrefix",
        ),
        (
            "gateway.routes[0].pathPrefix=/api/",
            "gateway.routes.0.pathPrefix",
        ),
        (
            "gateway.routes[0].upstream=api.shop",
            "gateway.routes.0.upstream",
        ),
        (
            "gateway.routes[0].upstream=http://api.shop:8080",
            "gateway.routes.0.upstream",
        ),
        (
            "gateway.routes[0].identity=cluster.local/ns/shop/sa/api",
            "gateway.routes.0.identity",
        ),
        (
            "gateway.routes[1].identity[0]=https://cluster.local/ns/shop/sa/web",
            "gateway.routes.1.identity",
        ),
    ] {
        let mut args = with_gateway.clone();
        args.extend(["--set", set]);
        let err = render(&helm, &args).expect_err(set);
        assert!(err.contains(expected), "{set}: {err}");
    }
    let mut args = with_gateway.clone();
    args.extend([
        "--set-json",
        r#"gateway.certificates=[{"hosts":["shop.example.com"]}]"#,
    ]);
    let err = render(&helm, &args).expect_err("a certificate with neither Secret nor ACME");
    assert!(
        err.contains("gateway.certificates.0") && err.contains("secretName"),
        "{err}"
    );
}

// === the gateway ===

/// The SPIFFE ID of the gateway the chart installs as release `hush` in `hush-system`.
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/hush-system/sa/hush-gateway";

/// A values file that installs the gateway: one certificate from a Secret, one by ACME, two
/// routes.
fn gateway_values(temp: &Path) -> std::path::PathBuf {
    let file = temp.join("gateway-values.yaml");
    fs::write(
        &file,
        "gateway:\n  enabled: true\n  tls:\n    profile: modern\n  hsts:\n    maxAge: 8760h\n    includeSubdomains: true\n\
         \x20 certificates:\n    - hosts: [shop.example.com, \"*.shop.example.com\"]\n      secretName: shop-tls\n\
         \x20   - hosts: [api.example.com]\n      acme: true\n\
         \x20 acme:\n    directory: https://acme.example.net/directory\n    email: ops@example.com\n    acceptTermsOfService: true\n    challenge: tls-alpn-01\n\
         \x20 routes:\n    - host: shop.example.com\n      pathPrefix: /api\n      upstream: api.shop.svc.cluster.local:8080\n      identity: spiffe://cluster.local/ns/shop/sa/api\n\
         \x20   - host: \"*\"\n      upstream: web.shop.svc.cluster.local:8080\n      identity: [spiffe://cluster.local/ns/shop/sa/web, spiffe://cluster.local/ns/shop/sa/web-canary]\n",
    )
    .expect("write the gateway's values");
    file
}

/// The gateway's files where the rendered Deployment mounts them, under `root`: the trust
/// bundle, the projected token, and the certificate Secret `certificates[0]` names (as the
/// kubelet writes a Secret volume with the chart's mode, 0440). Returns the rendered
/// `gateway.yaml` with its paths moved under `root`, where the gateway can read them.
fn mount_gateway(docs: &[Value], root: &Path, bundle: &[u8], token: &str) -> String {
    let pod = &find(docs, "Deployment", "hush-gateway")["spec"]["template"]["spec"];
    let mounts = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volume mounts");
    let mount_of = |volume: &str| -> std::path::PathBuf {
        let path = mounts
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of {volume}: {mounts:?}"))["mountPath"]
            .as_str()
            .expect("a mount path");
        root.join(path.trim_start_matches('/'))
    };
    kube::write_kubelet_volume(&mount_of("hush-bundle"), &[("bundle.pem", bundle)], 0o644);
    kube::write_kubelet_volume(
        &mount_of("hush-token"),
        &[("token", token.as_bytes())],
        0o600,
    );
    let public_ca = hush_test_support::TestCa::new("public.test");
    let (cert, key) = (root.join("pair.crt"), root.join("pair.key"));
    crate::gateway::write_pair(
        &public_ca,
        &["shop.example.com", "*.shop.example.com"],
        &cert,
        &key,
    );
    let (cert, key) = (fs::read(cert).expect("cert"), fs::read(key).expect("key"));
    kube::write_kubelet_volume(
        &mount_of("certificate-0"),
        &[("tls.crt", cert.as_slice()), ("tls.key", key.as_slice())],
        0o440,
    );
    let config = find(docs, "ConfigMap", "hush-gateway")["data"]["gateway.yaml"]
        .as_str()
        .expect("gateway.yaml");
    // Every path in it is under one of the Deployment's mounts.
    let root = root.to_str().expect("a UTF-8 path");
    config
        .replace(" /var/run/secrets/", &format!(" {root}/var/run/secrets/"))
        .replace(
            " /var/lib/hush-gateway/",
            &format!(" {root}/var/lib/hush-gateway/"),
        )
}

/// Other values of the gateway: a name, `--set` flags, and what their render must hold.
type Variant = (&'static str, &'static [&'static str], fn(&[Value]));

#[test]
fn the_chart_installs_a_gateway_whose_configuration_the_gateway_reads() {
    let Some(helm) = kube::helm() else { return };
    let temp = tempfile::tempdir().expect("temp dir");
    let files = ca_secret_files(temp.path());
    let (minimal, _) = values(temp.path(), &files);
    let gateway = gateway_values(temp.path());
    let mut args = strs(&minimal);
    args.extend(["-f", path_str(&gateway)]);
    let output = Command::new(&helm)
        .args(["lint", "--strict", CHART, "--namespace", NAMESPACE])
        .args(&args)
        .output()
        .expect("run helm lint");
    assert!(output.status.success(), "{}", describe_output(&output));

    // Off by default: nothing of it is rendered.
    let default = render(&helm, &strs(&minimal)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!default.contains("gateway"), "{default}");

    let validator = kube::validator();
    let validate = |name: &str, rendered: &str| {
        if let Some(validator) = &validator {
            let file = temp.path().join(format!("{name}.yaml"));
            fs::write(&file, rendered).expect("write the rendered chart");
            kube::validate(validator, &file);
        }
    };
    let rendered = render(&helm, &args).unwrap_or_else(|e| panic!("{e}"));
    validate("gateway", &rendered);
    let docs = documents(&rendered);
    for (kind, name) in [
        ("ServiceAccount", "hush-gateway"),
        ("ConfigMap", "hush-gateway"),
        ("Deployment", "hush-gateway"),
        ("Service", "hush-gateway"),
        ("PodDisruptionBudget", "hush-gateway"),
        ("PersistentVolumeClaim", "hush-gateway-acme"),
    ] {
        find(&docs, kind, name);
    }

    // The Deployment: hardened like the chart's other pods, the hush image, its configuration.
    let deployment = find(&docs, "Deployment", "hush-gateway");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container_args(deployment),
        ["gateway", "--config", "/etc/hush-gateway/gateway.yaml"]
    );
    assert_eq!(
        container["image"],
        find(&docs, "Deployment", "hush-ca")["spec"]["template"]["spec"]["containers"][0]["image"]
    );
    assert_eq!(
        container["securityContext"],
        serde_json::json!({
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(pod["serviceAccountName"], "hush-gateway");
    assert_eq!(pod["automountServiceAccountToken"], false);
    // The token the CA reviews: projected with the audience the injector gives sidecars.
    let injector: Value = serde_saphyr::from_str(
        find(&docs, "ConfigMap", "hush-injector")["data"]["injector.yaml"]
            .as_str()
            .expect("injector.yaml"),
    )
    .expect("the injector's configuration");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}: {volumes:?}"))
    };
    let projection = &volume("hush-token")["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projection["audience"], injector["token_audience"]);
    assert_eq!(projection["path"], "token");
    assert_eq!(
        volume("hush-bundle")["configMap"]["name"],
        "hush-trust-bundle"
    );
    assert_eq!(volume("config")["configMap"]["name"], "hush-gateway");
    assert_eq!(volume("certificate-0")["secret"]["secretName"], "shop-tls");
    assert_eq!(
        volume("acme")["persistentVolumeClaim"]["claimName"],
        "hush-gateway-acme"
    );
    // Probes and Prometheus on the admin port, which the configuration binds on every address.
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(
        container["ports"],
        serde_json::json!([
            {"name": "https", "containerPort": 8443, "protocol": "TCP"},
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "admin", "containerPort": 15000, "protocol": "TCP"},
        ])
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15000");
    // The public ports map to the pod's unprivileged ones.
    let service = find(&docs, "Service", "hush-gateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    let ports: Vec<(u64, &str)> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap_or(0),
                p["targetPort"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(ports, [(443, "https"), (80, "http")]);
    let claim = find(&docs, "PersistentVolumeClaim", "hush-gateway-acme");
    assert_eq!(
        claim["spec"]["accessModes"],
        serde_json::json!(["ReadWriteMany"])
    );

    // The rendered gateway.yaml, as the gateway reads it: the same CA as the sidecars', the
    // values' routes and certificates, and the files where the pod has them.
    let config_text = find(&docs, "ConfigMap", "hush-gateway")["data"]["gateway.yaml"]
        .as_str()
        .expect("gateway.yaml");
    let config = hush_config::GatewayConfig::from_yaml(config_text, "gateway.yaml", Path::new("/"))
        .unwrap_or_else(|e| panic!("{e}\n{config_text}"));
    assert_eq!(
        Some(config.ca.address.as_str()),
        injector["ca_address"].as_str()
    );
    assert_eq!(config.https.profile, hush_config::TlsProfile::Modern);
    assert_eq!(
        config.https.hsts.header_value().as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(
        config.http.as_ref().and_then(|h| h.redirect_port),
        Some(443)
    );
    assert_eq!(config.certificates.len(), 2);
    assert!(config.certificates[1].acme);
    let acme = config.acme.as_ref().expect("the acme section");
    assert_eq!(acme.contact, ["mailto:ops@example.com"]);
    assert_eq!(acme.challenge, hush_config::AcmeChallenge::TlsAlpn01);
    assert!(acme.state_dir.starts_with("/var/lib/hush-gateway/acme"));
    let routes: Vec<String> = config
        .routes
        .iter()
        .map(|r| {
            format!(
                "{}{} -> {} as {}",
                r.host, r.path_prefix, r.upstream, r.identity
            )
        })
        .collect();
    assert_eq!(
        routes,
        [
            "shop.example.com/api -> api.shop.svc.cluster.local:8080 as spiffe://cluster.local/ns/shop/sa/api",
            "*/ -> web.shop.svc.cluster.local:8080 as spiffe://cluster.local/ns/shop/sa/web, spiffe://cluster.local/ns/shop/sa/web-canary",
        ]
    );
    // And `hush gateway --check` reads it with the files mounted as the kubelet would.
    let root = temp.path().join("pod");
    let moved = mount_gateway(&docs, &root, &files[0].1, NEW_TOKEN);
    let config_file = root.join("etc/hush-gateway/gateway.yaml");
    fs::create_dir_all(config_file.parent().expect("a folder")).expect("mkdir");
    fs::write(&config_file, moved).expect("write gateway.yaml");
    let output = run_hush_ok(
        HUSH,
        &["gateway", "--config", path_str(&config_file), "--check"],
    );
    for expected in [
        "certificate shop.example.com: from files, expires",
        "certificate api.example.com: by ACME",
        "the configuration is valid",
    ] {
        assert!(output.contains(expected), "{expected}: {output}");
    }

    // Other shapes: one replica (no budget, a ReadWriteOnce claim), a NodePort Service keeping
    // the client's address, an existing claim, ACME state in an emptyDir, a ConfigMap of
    // one's own.
    let variants: [Variant; 4] =
        [
            (
                "single",
                &[
                    "gateway.replicas=1",
                    "gateway.service.type=NodePort",
                    "gateway.service.externalTrafficPolicy=Local",
                    "gateway.service.httpsNodePort=30443",
                ],
                |docs| {
                    assert!(!docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"
                        && d["metadata"]["name"] == "hush-gateway"));
                    let claim = find(docs, "PersistentVolumeClaim", "hush-gateway-acme");
                    assert_eq!(
                        claim["spec"]["accessModes"],
                        serde_json::json!(["ReadWriteOnce"])
                    );
                    let service = &find(docs, "Service", "hush-gateway")["spec"];
                    assert_eq!(service["type"], "NodePort");
                    assert_eq!(service["externalTrafficPolicy"], "Local");
                    assert_eq!(service["ports"][0]["nodePort"], 30443);
                },
            ),
            (
                "claimed",
                &[
                    "gateway.acme.persistence.existingClaim=acme-state",
                    "gateway.service.type=ClusterIP",
                ],
                |docs| {
                    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
                    let pod = &find(docs, "Deployment", "hush-gateway")["spec"]["template"]["spec"];
                    assert!(
                        pod["volumes"]
                            .to_string()
                            .contains("\"claimName\":\"acme-state\"")
                    );
                    let service = &find(docs, "Service", "hush-gateway")["spec"];
                    assert!(service["externalTrafficPolicy"].is_null(), "{service}");
                },
            ),
            (
                "ephemeral",
                &["gateway.acme.persistence.enabled=false"],
                |docs| {
                    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
                    let pod = &find(docs, "Deployment", "hush-gateway")["spec"]["template"]["spec"];
                    let acme = pod["volumes"]
                        .as_array()
                        .expect("volumes")
                        .iter()
                        .find(|v| v["name"] == "acme")
                        .expect("the acme volume");
                    assert!(acme["emptyDir"].is_object(), "{acme}");
                },
            ),
            (
                "own-configmap",
                &[
                    "gateway.existingConfigMap=edge-routes",
                    "gateway.routes=null",
                ],
                |docs| {
                    assert!(!docs.iter().any(
                        |d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "hush-gateway"
                    ));
                    let deployment = find(docs, "Deployment", "hush-gateway");
                    let template = &deployment["spec"]["template"];
                    assert!(template["metadata"]["annotations"]["checksum/config"].is_null());
                    assert!(
                        template["spec"]["volumes"]
                            .to_string()
                            .contains("\"name\":\"edge-routes\"")
                    );
                },
            ),
        ];
    for (name, sets, check) in variants {
        let mut variant = args.clone();
        for set in sets {
            variant.extend(["--set", *set]);
        }
        let rendered = render(&helm, &variant).unwrap_or_else(|e| panic!("{name}: {e}"));
        validate(name, &rendered);
        check(&documents(&rendered));
    }
}

/// The CA, from the rendered Secret mounted as the rendered Deployment says, with the rendered
/// arguments. Only what a laptop cannot have is swapped: the Secret's mount point, the
/// listening address, and the in-cluster API server for the fake. Returns it and the Secret's
/// files.
fn rendered_ca(docs: &[Value], temp: &Path, api: &FakeApiServer) -> RenderedCa {
    let secret = find(docs, "Secret", "hush-ca");
    let deployment = find(docs, "Deployment", "hush-ca");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["defaultMode"], 0o400);
    assert!(pod["securityContext"]["fsGroup"].is_u64(), "{pod}");
    let keys: Vec<(&str, Vec<u8>)> = ["bundle.pem", "intermediate.pem", "intermediate.key"]
        .into_iter()
        .map(|k| (k, secret_data(secret, k)))
        .collect();
    let mount = temp.join("secret");
    mount_secret(&mount, &keys);
    let mut args = container_args(deployment);
    assert_eq!(args[..2], ["ca", "serve"]);
    let mut serve_args = Vec::new();
    let mut rest = args.drain(2..);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--dir" | "--listen" => {
                rest.next();
            }
            // The chart's port faces the cluster; here any free one on loopback will do.
            "--metrics-listen" => {
                rest.next();
                serve_args.extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
            }
            "--k8s" => serve_args.extend(api_args(api, temp)),
            _ => serve_args.push(arg),
        }
    }
    drop(rest);
    RenderedCa {
        mount,
        args: serve_args,
        keys,
    }
}

/// How the rendered chart runs a CA replica, here.
struct RenderedCa {
    /// Where its Secret is mounted.
    mount: std::path::PathBuf,
    /// `hush ca serve …` without `--dir`.
    args: Vec<String>,
    /// The Secret's files.
    keys: Vec<(&'static str, Vec<u8>)>,
}

// === impl RenderedCa ===

impl RenderedCa {
    fn start(&self) -> CaProcess {
        CaProcess::start(HUSH, &self.mount, &strs(&self.args))
    }
}

#[test]
fn the_rendered_chart_runs_a_ca_and_an_injector_that_work_together() {
    let Some(helm) = kube::helm() else { return };
    let temp = tempfile::tempdir().expect("temp dir");
    let files = ca_secret_files(temp.path());
    let (_, full) = values(temp.path(), &files);
    let docs = documents(&render(&helm, &strs(&full)).unwrap_or_else(|e| panic!("{e}")));

    let api = api_server();
    let rendered = rendered_ca(&docs, temp.path(), &api);
    let keys = &rendered.keys;
    let mut ca = rendered.start();
    let roots = CertificateDer::pem_slice_iter(&keys[0].1)
        .collect::<Result<Vec<_>, _>>()
        .expect("the bundle");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let csr = plain_csr(CsrKeyKind::EcdsaP256);
    let response = runtime
        .block_on(async {
            let client = CaClient::new(ca.url(), &roots).expect("a CA client");
            client.certify(NEW_TOKEN, csr.der.clone(), None).await
        })
        .unwrap_or_else(|s| panic!("{s:?}\n{}", ca.stderr()));
    assert_eq!(response.spiffe_id, FRONTEND);
    let scrape = ca.scrape();
    assert!(
        scrape.contains("hush_ca_certificates_issued_total{api=\"hush.ca.v1\"} 1"),
        "{scrape}"
    );

    // A second replica shares nothing with the first but the Secret: it renews, with mutual
    // TLS, a certificate the first one issued.
    let second = rendered.start();
    let identity = hush_tls::CredentialStore::new();
    identity
        .install(
            response
                .cert_chain
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect(),
            rustls_pki_types::PrivateKeyDer::Pkcs8(csr.key.serialize_der().into()),
        )
        .expect("the issued certificate and its key");
    let renewed = runtime
        .block_on(async {
            let client = CaClient::with_identity(second.url(), &roots, identity)
                .expect("a CA client with an identity");
            client
                .renew(plain_csr(CsrKeyKind::EcdsaP256).der, None)
                .await
        })
        .unwrap_or_else(|s| panic!("{s:?}\n{}", second.stderr()));
    assert_eq!(renewed.spiffe_id, FRONTEND);
    assert_ne!(renewed.serial, response.serial);
    // The audit line went to stdout, the container's log.
    let process = ca.process();
    let audit = process
        .wait_for_line(|l| l.contains("\"spiffe_id\""), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    let audit: Value = serde_json::from_str(&audit).expect("an audit record");
    assert_eq!(audit["attestation"], "k8s_service_account");

    // The injector, with the rendered configuration and webhook certificate, answering the
    // API server's request over TLS for the name the API server dials.
    let config = temp.path().join("injector.yaml");
    fs::write(
        &config,
        find(&docs, "ConfigMap", "hush-injector")["data"]["injector.yaml"]
            .as_str()
            .expect("injector.yaml"),
    )
    .expect("write the injector's configuration");
    let tls = find(&docs, "Secret", "hush-injector-tls");
    fs::write(temp.path().join("tls.crt"), secret_data(tls, "tls.crt")).expect("tls.crt");
    fs::write(temp.path().join("tls.key"), secret_data(tls, "tls.key")).expect("tls.key");
    let webhook_args = container_args(find(&docs, "Deployment", "hush-injector"));
    assert_eq!(webhook_args[..2], ["inject", "serve"]);
    let mut webhook = HushProcess::spawn(
        HUSH,
        &[
            "inject",
            "serve",
            "--config",
            path_str(&config),
            "--cert",
            path_str(&temp.path().join("tls.crt")),
            "--key",
            path_str(&temp.path().join("tls.key")),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let ready = webhook
        .wait_until_ready("hush inject: serving AdmissionReview on ")
        .unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = ready
        .trim_start_matches("hush inject: serving AdmissionReview on https://")
        .trim_end_matches("/inject")
        .parse()
        .expect("the webhook's address");
    let hook = &find(&docs, "MutatingWebhookConfiguration", "hush-injector")["webhooks"][0];
    let ca_bundle = base64::engine::general_purpose::STANDARD
        .decode(hook["clientConfig"]["caBundle"].as_str().expect("caBundle"))
        .expect("base64 caBundle");
    let webhook_roots = CertificateDer::pem_slice_iter(&ca_bundle)
        .collect::<Result<Vec<_>, _>>()
        .expect("the caBundle");
    let service = hook["clientConfig"]["service"].clone();
    let host = format!(
        "{}.{}.svc",
        service["name"].as_str().unwrap_or(""),
        service["namespace"].as_str().unwrap_or("")
    );
    let fixture: Value = serde_json::from_slice(
        &fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../inject/tests/fixtures/pod-create.json"),
        )
        .expect("the AdmissionReview fixture"),
    )
    .expect("JSON");
    let walkthrough = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernetes/shop.yaml"),
    )
    .expect("examples/kubernetes/shop.yaml");
    let mut pods = vec![fixture["request"]["object"].clone()];
    for deployment in documents(&walkthrough)
        .into_iter()
        .filter(|d| d["kind"] == "Deployment")
    {
        // The pod the ReplicaSet controller creates from the template.
        let template = &deployment["spec"]["template"];
        let mut pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": template["metadata"].clone(),
            "spec": template["spec"].clone(),
        });
        pod["metadata"]["generateName"] = format!(
            "{}-5d8f7c9b6-",
            deployment["metadata"]["name"].as_str().unwrap_or("")
        )
        .into();
        pod["metadata"]["namespace"] = deployment["metadata"]["namespace"].clone();
        pods.push(pod);
    }
    assert_eq!(
        pods.len(),
        3,
        "the fixture and the walkthrough's two deployments"
    );
    let validator = kube::validator();
    for (index, object) in pods.into_iter().enumerate() {
        let mut review = fixture.clone();
        review["request"]["uid"] = format!("0000000{index}-6393-11e8-b7cc-42010a800002").into();
        review["request"]["namespace"] = object["metadata"]["namespace"].clone();
        review["request"]["object"] = object;
        let body = serde_json::to_vec(&review).expect("JSON");
        let answer = runtime
            .block_on(kube::post_to_webhook(
                addr,
                &webhook_roots,
                &host,
                "/inject",
                body,
            ))
            .unwrap_or_else(|e| {
                panic!("the API server could not reach the webhook as {host}: {e}")
            });
        let (status, answer) = answer;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_slice(&answer).expect("an AdmissionReview");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        let patch = answer["response"]["patch"]
            .as_str()
            .unwrap_or_else(|| panic!("not injected: {answer}"));
        let patch: json_patch::Patch = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(patch)
                .expect("base64"),
        )
        .expect("a JSONPatch");
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch applies");
        check_injected_pod(&pod, &keys[0].1, &roots, ca.url(), &runtime);
        if let Some(validator) = &validator {
            pod["metadata"]["name"] = Value::from(format!("pod-{index}"));
            let file = temp.path().join(format!("pod-{index}.json"));
            fs::write(&file, serde_json::to_vec_pretty(&pod).expect("JSON"))
                .expect("write the pod");
            kube::validate(validator, &file);
        }
    }
}

/// The sidecar the chart's injector made trusts the chart's bundle, dials the CA at a name the
/// CA's certificate carries, and runs with the chart's proxy values.
fn check_injected_pod(
    pod: &Value,
    bundle: &[u8],
    roots: &[CertificateDer<'static>],
    ca_url: &str,
    runtime: &tokio::runtime::Runtime,
) {
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["hush.dev/trust-bundle"]
            .as_str()
            .map(str::as_bytes),
        Some(bundle)
    );
    let proxy = hush_proxy::ProxyConfig::from_yaml(
        annotations["hush.dev/proxy-config"]
            .as_str()
            .expect("proxy config"),
        "hush.dev/proxy-config",
        Path::new("/"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ca_host = proxy
        .ca
        .address
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(host, _)| host.to_string())
        .expect("host:port");
    assert_eq!(ca_host, "hush-ca.hush-system.svc");
    let ca_port: u16 = ca_url
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("port");
    runtime
        .block_on(kube::tls_connect(
            SocketAddr::from(([127, 0, 0, 1], ca_port)),
            roots,
            &ca_host,
            b"h2",
        ))
        .unwrap_or_else(|e| panic!("a sidecar could not verify the CA as {ca_host}: {e}"));
    let init = &pod["spec"]["initContainers"];
    assert_eq!(init[1]["name"], "hush-proxy");
    assert_eq!(init[1]["resources"]["limits"]["memory"], "96Mi");
    assert!(
        init[0]["args"].to_string().contains("10.96.0.1/32"),
        "{}",
        init[0]["args"]
    );
    // Plaintext kubelet probes now ask the sidecar's admin port.
    for container in pod["spec"]["containers"].as_array().expect("containers") {
        if let Some(probe) = container["readinessProbe"]["httpGet"].as_object() {
            assert_eq!(probe["port"], 15020, "{probe:?}");
        }
    }
}

/// The Secret `hush ca secret` prints for `dir`, checked against the Kubernetes schema when
/// kubernetes-validate is there, as (file name, contents).
fn printed_secret(temp: &Path, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let printed = run_hush_ok(
        HUSH,
        &[
            "ca",
            "secret",
            "--dir",
            path_str(dir),
            "--namespace",
            NAMESPACE,
        ],
    );
    if let Some(validator) = kube::validator() {
        let file = temp.join("secret.json");
        fs::write(&file, &printed).expect("write the Secret");
        kube::validate(&validator, &file);
    }
    let secret: Value = serde_json::from_str(&printed).expect("`hush ca secret` prints JSON");
    assert_eq!(secret["kind"], "Secret");
    secret["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(name, value)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().expect("base64"))
                .expect("base64");
            (name.clone(), bytes)
        })
        .collect()
}

#[test]
fn the_ca_follows_its_secret_through_a_root_rotation_without_a_restart() {
    let temp = tempfile::tempdir().expect("temp dir");
    let operator = temp.path().join("ca-init");
    run_hush_ok(
        HUSH,
        &[
            "ca",
            "init",
            "--dir",
            path_str(&operator),
            "--trust-domain",
            "cluster.local",
            "--publish-wait",
            "1s",
        ],
    );
    let mount = temp.path().join("secret");
    let apply = |files: &[(String, Vec<u8>)]| {
        assert!(
            !files
                .iter()
                .any(|(name, _)| name.starts_with("root") && name.ends_with(".key")),
            "a root key in the Secret"
        );
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
        mount_secret(&mount, &files);
    };
    apply(&printed_secret(temp.path(), &operator));
    let mut ca = CaProcess::start(HUSH, &mount, &["--reload-interval", "1s"]);
    let first = TrustBundleFile::read(&operator);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let roots_served = |roots: &[CertificateDer<'static>]| {
        runtime.block_on(async {
            let client = CaClient::new(ca.url(), roots).ok()?;
            let bundle = client.trust_bundle().await.ok()?;
            Some(bundle.roots.len())
        })
    };
    assert_eq!(roots_served(&first.roots), Some(1));

    // The operator stages a new root and applies the Secret: the kubelet swaps the volume.
    run_hush_ok(
        HUSH,
        &["ca", "rotate", "root", "--dir", path_str(&operator)],
    );
    apply(&printed_secret(temp.path(), &operator));
    wait_until("the CA serves both roots", || {
        roots_served(&first.roots) == Some(2)
    });
    let both = TrustBundleFile::read(&operator);
    let new_root: Vec<CertificateDer<'static>> = both
        .roots
        .into_iter()
        .filter(|r| !first.roots.contains(r))
        .collect();
    assert_eq!(new_root.len(), 1);

    // Activated and applied: the CA presents a chain under the new root.
    wait_until("the publish wait is over", || {
        run_hush(HUSH, &["ca", "activate", "--dir", path_str(&operator)])
            .status
            .success()
    });
    apply(&printed_secret(temp.path(), &operator));
    wait_until("a client trusting only the new root reaches the CA", || {
        roots_served(&new_root).is_some()
    });
    assert!(
        ca.stderr().contains("authorities reloaded"),
        "{}",
        ca.stderr()
    );
    assert!(ca.process().is_running(), "the CA was not restarted");
}

/// `bundle.pem` of a CA directory.
struct TrustBundleFile {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundleFile {
    fn read(dir: &Path) -> Self {
        let pem = fs::read(dir.join("bundle.pem")).expect("bundle.pem");
        let roots = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("the bundle");
        Self { roots }
    }
}

#[test]
fn the_rendered_gateway_gets_its_identity_from_the_rendered_ca_with_its_projected_token() {
    let Some(helm) = kube::helm() else { return };
    let temp = tempfile::tempdir().expect("temp dir");
    let files = ca_secret_files(temp.path());
    let (_, full) = values(temp.path(), &files);
    let gateway = gateway_values(temp.path());
    let mut args = strs(&full);
    args.extend(["-f", path_str(&gateway)]);
    let docs = documents(&render(&helm, &args).unwrap_or_else(|e| panic!("{e}")));

    // The API server knows the token the kubelet projects for the gateway's service account,
    // with the projection's audience.
    let pod = &find(&docs, "Deployment", "hush-gateway")["spec"]["template"]["spec"];
    let account = pod["serviceAccountName"]
        .as_str()
        .expect("a service account")
        .to_string();
    let audience = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"]["audience"].as_str())
        .expect("a projected token")
        .to_string();
    let username = format!("system:serviceaccount:{NAMESPACE}:{account}");
    let claims = serde_json::json!({"sub": username, "exp": 9}).to_string();
    let token = format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.{}.Z2F0ZXdheS1zaWduYXR1cmU",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
    );
    let api = {
        let (token, audience) = (token.clone(), audience.clone());
        FakeApiServer::start(move |request: &ReviewRequest| {
            let body = if request.token() == Some(token.as_str()) {
                token_review_authenticated(
                    request,
                    &username,
                    "5b0c7e1d-2a3f-4e6b-9c8d-7f1e0a2b3c4d",
                    &[audience.as_str()],
                )
            } else {
                token_review_rejected(request, "[invalid bearer token]")
            };
            (201, body)
        })
    };
    let ca = rendered_ca(&docs, temp.path(), &api).start();

    // The rendered configuration with the pod's files; only what faces the cluster is swapped:
    // the CA's in-cluster name for its local address, the listeners for free loopback ports.
    let root = temp.path().join("pod");
    let moved = mount_gateway(&docs, &root, &files[0].1, &token);
    let mut config = hush_config::GatewayConfig::from_yaml(&moved, "gateway.yaml", &root)
        .unwrap_or_else(|e| panic!("{e}\n{moved}"));
    config.ca.address = ca.url().to_string();
    config.https.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    if let Some(http) = &mut config.http {
        http.listen = "127.0.0.1:0".parse().unwrap();
    }
    let file = root.join("gateway.yaml");
    fs::write(&file, config.to_yaml().expect("YAML")).expect("write gateway.yaml");
    let mut gateway = GatewayProcess::try_start(HUSH, &file, &[])
        .unwrap_or_else(|e| panic!("the gateway never got its identity: {e}\n{}", ca.stderr()));
    assert_eq!(gateway.spiffe_id(), GATEWAY_ID);
    let reviewed = api
        .requests()
        .into_iter()
        .find(|r| r.token() == Some(token.as_str()))
        .expect("the gateway's token was reviewed");
    assert_eq!(
        reviewed.body["spec"]["audiences"],
        serde_json::json!([audience])
    );
    // What the kubelet's probes ask.
    let container = &pod["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"]
            .as_str()
            .expect("a path");
        let (status, body) = http_request(gateway.admin(), "GET", path);
        assert_eq!(status, 200, "{probe} {path}: {body}");
    }
    let (_, metrics) = http_request(gateway.admin(), "GET", "/metrics");
    assert!(metrics.contains("hush_"), "{metrics}");
    assert!(gateway.terminate().success(), "{}", gateway.stderr());
}
