//! What the webhook's work costs per pod, without the network: parsing the AdmissionReview the
//! API server sends, building the injected Pod, diffing it into a JSONPatch and encoding the
//! answer; and the cheaper answers for a pod already injected and for garbage.
//!
//! `cargo bench -p hush-inject --bench review`
//!
//! Each answer is checked before it is timed, so a bench cannot quietly measure another path
//! than its name says.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hush_inject::{InjectorConfig, review};
use serde_json::Value;

const POD_CREATE: &str = include_str!("../tests/fixtures/pod-create.json");

fn config() -> InjectorConfig {
    let bundle = hush_test_support::TestCa::new("cluster.local").root_pem();
    let mut config = InjectorConfig::from_yaml(
        "image: ghcr.io/hush-mesh/hush:0.1.0\nca_address: https://hush-ca.hush-system.svc:8443\n\
         policy_configmap: hush-policy\nexclude_outbound_cidrs: [10.96.0.1/32]\n",
    )
    .expect("a configuration");
    config.trust_bundle = Some(bundle);
    config
}

fn answer(body: &[u8], config: &InjectorConfig) -> Value {
    serde_json::from_slice(&review(body, config)).expect("an AdmissionReview")
}

fn bench(c: &mut Criterion) {
    let config = config();
    let fresh = POD_CREATE.as_bytes().to_vec();
    let first = answer(&fresh, &config);
    assert_eq!(first["response"]["allowed"], true);
    assert!(first["response"]["patch"].is_string(), "injected");

    // The same pod sent back with its sidecar: left alone.
    let patch = base64_decode(first["response"]["patch"].as_str().unwrap_or_default());
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSONPatch");
    let mut sent: Value = serde_json::from_str(POD_CREATE).expect("JSON");
    json_patch::patch(&mut sent["request"]["object"], &patch).expect("applies");
    let injected = serde_json::to_vec(&sent).expect("JSON");
    let again = answer(&injected, &config);
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"]["patch"].is_null(), "left alone");

    let garbage = b"{\"kind\": \"AdmissionReview\", \"request\": 7}".to_vec();
    assert_eq!(answer(&garbage, &config)["response"]["allowed"], false);

    c.bench_function("inject a pod", |b| {
        b.iter(|| review(black_box(&fresh), &config))
    });
    c.bench_function("leave an injected pod alone", |b| {
        b.iter(|| review(black_box(&injected), &config))
    });
    c.bench_function("refuse garbage", |b| {
        b.iter(|| review(black_box(&garbage), &config))
    });
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

criterion_group!(benches, bench);
criterion_main!(benches);
