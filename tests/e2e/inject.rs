//! End-to-end tests of the sidecar injector through the binary (`hush inject review`): an
//! AdmissionReview shaped as the API server sends it goes in, the JSONPatch that comes out is
//! applied the way the API server applies it, and the resulting Pod is checked against the
//! Kubernetes schema with `kubernetes-validate` (from PyPI; `.ci/run` installs it, elsewhere the
//! schema check says it was skipped).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use hush_test_support::describe_output;
use serde_json::Value;

use crate::mesh::kube;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../inject/tests/fixtures/pod-create.json")
}

/// Runs `hush inject review` on `review`; returns the answer.
fn answer(config: &Path, review: &Value, dir: &Path) -> Value {
    let input = dir.join("review.json");
    std::fs::write(&input, serde_json::to_vec(review).expect("JSON")).expect("write the review");
    let output = Command::new(HUSH)
        .args(["inject", "review", "--config"])
        .arg(config)
        .arg("--input")
        .arg(&input)
        .output()
        .expect("run hush");
    assert!(output.status.success(), "{}", describe_output(&output));
    serde_json::from_slice(&output.stdout).expect("an AdmissionReview")
}

/// Applies the answer's patch to the review's pod, as the API server does.
fn patched(review: &Value, answer: &Value) -> Option<Value> {
    let patch = answer["response"]["patch"].as_str()?;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSONPatch");
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    Some(pod)
}

#[test]
fn an_injected_pod_is_a_valid_pod_and_injection_is_idempotent() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("injector.yaml");
    std::fs::write(
        &config,
        "image: ghcr.io/hush-mesh/hush:0.1.0\nca_address: https://hush-ca.hush-system.svc:8443\npolicy_configmap: hush-policy\n",
    )
    .unwrap();
    let review: Value = serde_json::from_slice(&std::fs::read(fixture()).unwrap()).unwrap();
    let first = answer(&config, &review, temp.path());
    assert_eq!(first["response"]["allowed"], true, "{first}");
    assert_eq!(
        first["response"]["uid"], review["request"]["uid"],
        "the answer names the request"
    );
    let pod = patched(&review, &first).expect("a patch");
    let names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hush-init", "hush-proxy"]);

    // The sidecar's configuration, as projected from the annotation, is one it accepts.
    let proxy_yaml = pod["metadata"]["annotations"]["hush.dev/proxy-config"]
        .as_str()
        .expect("the proxy configuration annotation");
    let proxy =
        hush_proxy::ProxyConfig::from_yaml(proxy_yaml, "hush.dev/proxy-config", Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}\n{proxy_yaml}"));
    assert!(proxy.inbound.as_ref().unwrap().captured);
    assert_eq!(proxy.admin.probes.len(), 1);
    assert_eq!(proxy.admin.probes[0].path, "/app-health/backend/readiness");
    assert_eq!(proxy.admin.probes[0].http_path.as_deref(), Some("/healthz"));
    // The Workload API, served in the shared emptyDir that the app sees read-only.
    assert_eq!(
        proxy.workload_api.as_ref().unwrap().socket,
        Path::new("/run/hush/workload/socket")
    );
    let app = &pod["spec"]["containers"][0];
    assert!(
        app["volumeMounts"].as_array().unwrap().iter().any(|m| m
            == &serde_json::json!({"name": "hush-workload", "mountPath": "/run/hush/workload", "readOnly": true})),
        "{app}"
    );
    assert!(
        app["env"].as_array().unwrap().iter().any(|e| e
            == &serde_json::json!({"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///run/hush/workload/socket"})),
        "{app}"
    );

    // Sent again (a pod re-admitted with its sidecar), nothing changes.
    let mut again = review.clone();
    again["request"]["object"] = pod.clone();
    let second = answer(&config, &again, temp.path());
    assert_eq!(second["response"]["allowed"], true);
    assert!(second["response"]["patch"].is_null(), "{second}");

    let Some(validator) = kube::validator() else {
        return;
    };
    // The pod as it will be stored: the API server turns `generateName` into a name.
    let mut pod = pod;
    pod["metadata"]["name"] = Value::from("backend-7c9d8f6b5d-x2x9z");
    let file = temp.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
    kube::validate(&validator, &file);
    // And the check is not one that passes anything: a broken sidecar is refused.
    let mut broken = pod.clone();
    broken["spec"]["initContainers"][1]["restartPolicy"] = Value::from(7);
    std::fs::write(&file, serde_json::to_vec_pretty(&broken).unwrap()).unwrap();
    let output = Command::new(&validator)
        .args(["--strict", "-k", kube::KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", describe_output(&output));
}

/// Every container of a pod with several (and an init container of its own) finds the Workload
/// API, but one that names its own socket keeps it; the pod stays valid; a pod that declines
/// the API gets none of it; a value that is neither is refused, not guessed at.
#[test]
fn every_app_container_finds_the_workload_api_unless_the_pod_declines_it() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("injector.yaml");
    std::fs::write(
        &config,
        "image: ghcr.io/hush-mesh/hush:0.1.0\nca_address: https://hush-ca.hush-system.svc:8443\n",
    )
    .unwrap();
    let mut review: Value = serde_json::from_slice(&std::fs::read(fixture()).unwrap()).unwrap();
    let object = &mut review["request"]["object"];
    let mut worker = object["spec"]["containers"][0].clone();
    worker["name"] = Value::from("worker");
    worker["env"] = serde_json::json!([
        {"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///elsewhere/agent.sock"}
    ]);
    worker.as_object_mut().unwrap().remove("readinessProbe");
    worker.as_object_mut().unwrap().remove("ports");
    object["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(worker);
    object["spec"]["initContainers"] = serde_json::json!([
        {"name": "migrate", "image": "migrate:1"}
    ]);
    let first = answer(&config, &review, temp.path());
    assert_eq!(first["response"]["allowed"], true, "{first}");
    let pod = patched(&review, &first).expect("a patch");
    let endpoint = |container: &Value| -> Vec<String> {
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["name"] == "SPIFFE_ENDPOINT_SOCKET")
            .map(|e| e["value"].as_str().unwrap().to_string())
            .collect()
    };
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(
        endpoint(&containers[0]),
        ["unix:///run/hush/workload/socket"]
    );
    assert_eq!(endpoint(&containers[1]), ["unix:///elsewhere/agent.sock"]);
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["hush-init", "hush-proxy", "migrate"]);
    assert_eq!(endpoint(&init[2]), ["unix:///run/hush/workload/socket"]);
    assert!(endpoint(&init[0]).is_empty(), "not the capture container");
    if let Some(validator) = kube::validator() {
        let mut pod = pod.clone();
        pod["metadata"]["name"] = Value::from("backend-7c9d8f6b5d-x2x9z");
        let file = temp.path().join("pod.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
        kube::validate(&validator, &file);
    }

    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"hush.dev/workload-api": "disabled"});
    let declined = answer(&config, &review, temp.path());
    let pod = patched(&review, &declined).expect("a patch");
    assert!(!pod.to_string().contains("hush-workload"), "{pod}");
    assert!(!pod.to_string().contains("/run/hush/workload"), "{pod}");

    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"hush.dev/workload-api": "maybe"});
    let refused = answer(&config, &review, temp.path());
    assert_eq!(refused["response"]["allowed"], false);
    let message = refused["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("hush.dev/workload-api")
            && message.contains("neither enabled nor disabled"),
        "{message}"
    );
}

#[test]
fn garbage_gets_a_refusal_not_a_crash() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("injector.yaml");
    std::fs::write(&config, "image: hush\nca_address: https://ca:8443\n").unwrap();
    let output = Command::new(HUSH)
        .args(["inject", "review", "--config"])
        .arg(&config)
        .arg("--input")
        .arg("/dev/null")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe_output(&output));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("hush-inject: the request is not an AdmissionReview of a Pod"),
        "{answer}"
    );
    // A configuration with a mistake names it.
    std::fs::write(&config, "image: hush\nca_adress: https://ca:8443\n").unwrap();
    let output = Command::new(HUSH)
        .args(["inject", "review", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("ca_adress"),
        "{}",
        describe_output(&output)
    );
    // A reload interval of nothing would spin.
    let output = Command::new(HUSH)
        .args(["inject", "serve", "--config"])
        .arg(&config)
        .args(["--cert", "c", "--key", "k", "--reload-interval", "0s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--reload-interval must be longer"),
        "{}",
        describe_output(&output)
    );
}

/// POSTs `body` to the webhook at `addr`, whose certificate `root` names `localhost`.
async fn post(
    addr: std::net::SocketAddr,
    root: &rustls_pki_types::CertificateDer<'static>,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    kube::post_to_webhook(addr, std::slice::from_ref(root), "localhost", path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_answers_over_tls() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("injector.yaml");
    std::fs::write(&config, "image: hush\nca_address: https://hush-ca:8443\n").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(temp.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(temp.path().join("tls.key"), key.serialize_pem()).unwrap();
    let mut webhook = hush_test_support::HushProcess::spawn(
        HUSH,
        &[
            "inject",
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--cert",
            temp.path().join("tls.crt").to_str().unwrap(),
            "--key",
            temp.path().join("tls.key").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--reload-interval",
            "100ms",
            "--request-timeout",
            "1s",
        ],
    );
    let ready = webhook
        .wait_until_ready("hush inject: serving AdmissionReview on ")
        .unwrap_or_else(|e| panic!("{e}"));
    let addr: std::net::SocketAddr = ready
        .trim_start_matches("hush inject: serving AdmissionReview on https://")
        .trim_end_matches("/inject")
        .parse()
        .unwrap();
    let root = cert.der().clone();

    let review = std::fs::read(fixture()).unwrap();
    let (status, body) = post(addr, &root, "/inject", review).await.unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["patch"].is_string(), "{answer}");

    let (status, body) = post(addr, &root, "/inject", b"{\"kind\":".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{answer}");

    // One byte over the limit: the webhook reads it all before refusing, so the answer is not
    // lost to a reset of unread data.
    let (status, _) = post(addr, &root, "/inject", vec![b' '; 4 * 1024 * 1024 + 1])
        .await
        .unwrap();
    assert_eq!(status, 413);
    let (status, _) = post(addr, &root, "/elsewhere", Vec::new()).await.unwrap();
    assert_eq!(status, 404);
    // Plaintext on the TLS port gets no HTTP answer (a TLS alert, then the end).
    {
        use std::io::{Read, Write};
        let mut plain = std::net::TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        let _ = plain.read_to_end(&mut reply);
        assert!(!reply.starts_with(b"HTTP/"), "{reply:?}");
    }

    // A client that trickles its review (here: stops half-way) holds the webhook only as
    // long as --request-timeout, then gets a 408 that says so.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls =
            kube::tls_connect(addr, std::slice::from_ref(&root), "localhost", b"http/1.1")
                .await
                .unwrap();
        tls.write_all(
            b"POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{\"kind\"",
        )
        .await
        .unwrap();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tls.read_to_end(&mut reply),
        )
        .await;
        assert!(read.is_ok(), "the trickled review was not cut off");
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 408")
                && reply.contains("the AdmissionReview did not arrive whole within 1s"),
            "{reply}"
        );
    }
    let review = std::fs::read(fixture()).unwrap();
    let (status, _) = post(addr, &root, "/inject", review).await.unwrap();
    assert_eq!(status, 200, "the webhook still serves");

    // A broken renewal is reported and the certificate in use stays.
    let replace = |name: &str, text: &str| {
        let staged = temp.path().join(format!("{name}.new"));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, temp.path().join(name)).unwrap();
    };
    replace(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    wait_for(&webhook, "keeping the webhook certificate in use");
    let review = std::fs::read(fixture()).unwrap();
    let (status, _) = post(addr, &root, "/inject", review).await.unwrap();
    assert_eq!(status, 200, "the old certificate still serves");

    // A renewed certificate (as cert-manager writes one) is served without a restart.
    let renewed_key = rcgen::KeyPair::generate().unwrap();
    let renewed = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&renewed_key)
        .unwrap();
    replace("tls.key", &renewed_key.serialize_pem());
    replace("tls.crt", &renewed.pem());
    wait_for(&webhook, "serving the renewed webhook certificate");
    let review = std::fs::read(fixture()).unwrap();
    let (status, _) = post(addr, renewed.der(), "/inject", review).await.unwrap();
    assert_eq!(status, 200);
    let old = post(addr, &root, "/inject", Vec::new()).await;
    assert!(old.is_err(), "the old certificate is no longer served");

    let stderr = webhook.stderr();
    assert!(
        stderr.contains("injected the sidecar into a pod"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refused a pod: hush-inject: the request is not an AdmissionReview"),
        "{stderr}"
    );
}

/// Waits until the process has logged `needle` (it polls its files every 100 ms).
fn wait_for(process: &hush_test_support::HushProcess, needle: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !process.stderr().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            process.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
