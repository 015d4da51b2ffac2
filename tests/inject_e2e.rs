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

const HUSH: &str = env!("CARGO_BIN_EXE_hush");
/// The Kubernetes version the manifests are checked against (native sidecars need 1.29+).
const KUBERNETES_VERSION: &str = "1.33.0";

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

/// `kubernetes-validate`, when installed (first `HUSH_KUBERNETES_VALIDATE`, then the PATH).
/// Named by `HUSH_KUBERNETES_VALIDATE` (as CI does), it must work.
fn validator() -> Option<String> {
    let required = std::env::var("HUSH_KUBERNETES_VALIDATE").ok();
    let candidate = required
        .clone()
        .unwrap_or_else(|| "kubernetes-validate".to_string());
    let found = Command::new(&candidate)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || required.is_none(),
        "HUSH_KUBERNETES_VALIDATE={candidate} does not run"
    );
    found.then_some(candidate)
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

    // Sent again (a pod re-admitted with its sidecar), nothing changes.
    let mut again = review.clone();
    again["request"]["object"] = pod.clone();
    let second = answer(&config, &again, temp.path());
    assert_eq!(second["response"]["allowed"], true);
    assert!(second["response"]["patch"].is_null(), "{second}");

    let Some(validator) = validator() else {
        eprintln!(
            "SKIPPED the schema check: kubernetes-validate is not installed (pip install \
             kubernetes-validate, or set HUSH_KUBERNETES_VALIDATE)"
        );
        return;
    };
    // The pod as it will be stored: the API server turns `generateName` into a name.
    let mut pod = pod;
    pod["metadata"]["name"] = Value::from("backend-7c9d8f6b5d-x2x9z");
    let file = temp.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&pod).unwrap()).unwrap();
    let output = Command::new(&validator)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the injected pod does not validate:\n{}\n{}",
        describe_output(&output),
        serde_json::to_string_pretty(&pod).unwrap()
    );
    // And the check is not one that passes anything: a broken sidecar is refused.
    let mut broken = pod.clone();
    broken["spec"]["initContainers"][1]["restartPolicy"] = Value::from(7);
    std::fs::write(&file, serde_json::to_vec_pretty(&broken).unwrap()).unwrap();
    let output = Command::new(&validator)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", describe_output(&output));
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
}
