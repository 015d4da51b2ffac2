//! The webhook answers whatever is POSTed to it: any body must get an AdmissionReview answer,
//! never a panic, and when it carries a patch, that patch must apply to the pod that was sent
//! and give a Pod again.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn config() -> hush_inject::InjectorConfig {
    hush_inject::InjectorConfig::from_yaml(
        "image: hush:fuzz\nca_address: https://hush-ca.hush-system.svc:8443\n\
         policy_configmap: hush-policy\nexclude_outbound_cidrs: [10.96.0.1/32]\n",
    )
    .expect("the fuzz configuration")
}

fuzz_target!(|data: &[u8]| {
    let answer: Value =
        serde_json::from_slice(&hush_inject::review(data, &config())).expect("an answer in JSON");
    let response = &answer["response"];
    assert!(response["allowed"].is_boolean(), "{answer}");
    let Some(patch) = response["patch"].as_str() else {
        return;
    };
    assert_eq!(response["allowed"], true, "a patch on a refusal: {answer}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("a base64 patch");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSONPatch");
    let sent: Value = serde_json::from_slice(data).expect("a patch only for JSON");
    let mut pod = sent["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod sent");
    let _: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pod).expect("the patched pod is a Pod");
});
