//! Two meshes of two trust domains, federated: each CA serves its SPIFFE bundle endpoint and
//! fetches the other's, and each mesh's sidecars call the other's with mutual TLS, verified
//! against the other domain's roots and let in by a policy naming the other domain.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hush_proxy::{InboundConfig, OutboundConfig, PolicyConfig, WorkloadApiConfig};
use hush_test_support::{CaProcess, ProxyProcess, run_hush_ok};
use spiffe::BundleSource;

use crate::mesh::apps;
use crate::mesh::sidecars::{
    FRONTEND, HUSH, PATIENCE, TRUST_DOMAIN, get, json, loopback, metric, metrics_of, path_str,
    sidecar_config, spiffe_id, within, write_configmap,
};

const PARTNER_DOMAIN: &str = "partner.test";
const PARTNER_FRONTEND: &str = "spiffe://partner.test/ns/shop/sa/frontend";
const PARTNER_BACKEND: &str = "spiffe://partner.test/ns/shop/sa/backend";
const OWN_BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";

/// Each sidecar's Workload API socket, next to its configuration file.
const SOCKET: &str = "workload.sock";

/// What `hush ca serve --bundle-endpoint-listen` prints before its readiness line.
const ENDPOINT_PREFIX: &str = "hush ca: SPIFFE bundle endpoint (";

/// The address of the bundle endpoint a CA printed.
fn bundle_endpoint(ca: &mut CaProcess) -> String {
    ca.process()
        .stdout_lines()
        .iter()
        .find_map(|line| {
            let rest = line.strip_prefix(ENDPOINT_PREFIX)?;
            let url = rest.split(" on ").nth(1)?;
            Some(url.trim().to_string())
        })
        .expect("the CA printed its bundle endpoint")
}

fn init_ca(dir: &Path, trust_domain: &str) {
    run_hush_ok(
        HUSH,
        &[
            "ca",
            "init",
            "--dir",
            path_str(dir),
            "--trust-domain",
            trust_domain,
        ],
    );
}

/// `--federate-with` for the https_spiffe endpoint of `trust_domain` at `url`, bootstrapped
/// with the bundle in `ca_dir`.
fn federation(trust_domain: &str, url: &str, ca_dir: &Path) -> String {
    format!(
        "{trust_domain}={url},endpoint-id=spiffe://{trust_domain}/hush/bundle-endpoint,bundle={}",
        path_str(&ca_dir.join("bundle.pem"))
    )
}

/// One side of the federation: a backend sidecar in front of the echo app, with a policy, and
/// a frontend sidecar whose one outbound listener leads to the other side's backend.
struct Side {
    backend: ProxyProcess,
    frontend: ProxyProcess,
}

/// Starts a backend sidecar for `backend_id` under `root`, with the policy `policy` (the text of
/// a ConfigMap-mounted file), bundles refreshed every second.
fn start_backend(
    root: &Path,
    ca: &CaProcess,
    ca_dir: &Path,
    backend_id: &str,
    app: SocketAddr,
    policy: &str,
) -> ProxyProcess {
    write_configmap(&root.join("policy"), "policy.yaml", policy);
    let config = sidecar_config(root, "backend", ca.url(), ca_dir, backend_id, |config| {
        config.inbound = Some(InboundConfig::new(loopback(), app));
        config.policy = Some(PolicyConfig::new("../policy"));
        config.ca.bundle_refresh = Duration::from_secs(1);
        config.workload_api = Some(WorkloadApiConfig::new(SOCKET));
    });
    ProxyProcess::try_start(HUSH, &config, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn start_frontend(
    root: &Path,
    ca: &CaProcess,
    ca_dir: &Path,
    frontend_id: &str,
    upstream: SocketAddr,
    upstream_id: &str,
) -> ProxyProcess {
    let config = sidecar_config(root, "frontend", ca.url(), ca_dir, frontend_id, |config| {
        config.outbound = vec![OutboundConfig::new(
            loopback(),
            upstream.to_string(),
            spiffe_id(upstream_id),
        )];
        config.ca.bundle_refresh = Duration::from_secs(1);
        config.workload_api = Some(WorkloadApiConfig::new(SOCKET));
    });
    ProxyProcess::try_start(HUSH, &config, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn allow_policy(principal: &str) -> String {
    format!(
        "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-partner\nspec:\n  rules:\n  - from:\n    - principals: [\"{principal}\"]\n"
    )
}

/// GET / through `outbound` until it answers 200 (the sidecars learn the other domain's roots
/// at their next bundle refresh after their CA's next fetch), then returns what the app saw.
async fn until_ok(outbound: SocketAddr) -> serde_json::Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(outbound, "/federated", &[]).await;
        if status == 200 {
            return json(&body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 200 through {outbound} in {PATIENCE:?}; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_meshs_sidecars_call_the_others_let_in_by_policy() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own_dir = temp.path().join("own-ca");
    let partner_dir = temp.path().join("partner-ca");
    init_ca(&own_dir, TRUST_DOMAIN);
    init_ca(&partner_dir, PARTNER_DOMAIN);

    // The partner's endpoint first, then ours federating with it, then the partner again on
    // the same endpoint address, now federating with ours.
    let serve_endpoint = ["--bundle-endpoint-listen", "127.0.0.1:0"];
    let fast_hint = ["--bundle-refresh-hint", "1s", "--reload-interval", "1s"];
    let mut first_partner = CaProcess::start(
        HUSH,
        &partner_dir,
        &[serve_endpoint.as_slice(), &fast_hint].concat(),
    );
    let partner_url = bundle_endpoint(&mut first_partner);
    let to_partner = federation(PARTNER_DOMAIN, &partner_url, &partner_dir);
    let mut own_ca = CaProcess::start(
        HUSH,
        &own_dir,
        &[
            serve_endpoint.as_slice(),
            &fast_hint,
            &["--federate-with", &to_partner],
        ]
        .concat(),
    );
    let own_url = bundle_endpoint(&mut own_ca);
    first_partner.terminate();
    let partner_endpoint = partner_url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let to_own = federation(TRUST_DOMAIN, &own_url, &own_dir);
    let partner_ca = CaProcess::start(
        HUSH,
        &partner_dir,
        &[
            &["--bundle-endpoint-listen", partner_endpoint.as_str()],
            fast_hint.as_slice(),
            &["--federate-with", &to_own],
        ]
        .concat(),
    );

    let app = apps::start_app().await;
    let own_root = temp.path().join("own");
    let partner_root = temp.path().join("partner");
    fs::create_dir_all(&own_root).unwrap();
    fs::create_dir_all(&partner_root).unwrap();
    let own_backend = start_backend(
        &own_root,
        &own_ca,
        &own_dir,
        OWN_BACKEND,
        app,
        &allow_policy("spiffe://partner.test/ns/shop/*"),
    );
    let partner_backend = start_backend(
        &partner_root,
        &partner_ca,
        &partner_dir,
        PARTNER_BACKEND,
        app,
        &allow_policy(FRONTEND),
    );
    let own = Side {
        frontend: start_frontend(
            &own_root,
            &own_ca,
            &own_dir,
            FRONTEND,
            partner_backend.inbound(),
            PARTNER_BACKEND,
        ),
        backend: own_backend,
    };
    let partner = Side {
        frontend: start_frontend(
            &partner_root,
            &partner_ca,
            &partner_dir,
            PARTNER_FRONTEND,
            own.backend.inbound(),
            OWN_BACKEND,
        ),
        backend: partner_backend,
    };

    // Each way, the app behind the backend sees the caller's identity of the other domain.
    let seen = until_ok(own.frontend.outbound(0)).await;
    assert_eq!(seen["peer_identity"], serde_json::json!([FRONTEND]));
    let seen = until_ok(partner.frontend.outbound(0)).await;
    assert_eq!(seen["peer_identity"], serde_json::json!([PARTNER_FRONTEND]));

    // The Workload API hands the app both trust domains' bundles (the `spiffe` crate reads
    // them), and a JWT-SVID of the partner's validates at our sidecar, with the partner's JWT
    // keys the CA fetched.
    let own_socket = format!("unix:{}", own_root.join("backend").join(SOCKET).display());
    let partner_socket = format!(
        "unix:{}",
        partner_root.join("frontend").join(SOCKET).display()
    );
    let x509 = within(spiffe::X509Source::builder().endpoint(&own_socket).build())
        .await
        .expect("an X509Source on our backend's socket");
    let partner_td = spiffe::TrustDomain::new(PARTNER_DOMAIN).unwrap();
    // The sidecar publishes the bundles to its app just after it trusts them: poll, bounded.
    let deadline = std::time::Instant::now() + PATIENCE;
    let bundle = loop {
        if let Some(bundle) = x509
            .bundle_for_trust_domain(&partner_td)
            .expect("the bundle source answers")
        {
            break bundle;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the partner's X.509 bundle never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        bundle.authorities().len(),
        1,
        "the partner's root, as its CA published it"
    );
    let jwt = within(
        spiffe::JwtSource::builder()
            .endpoint(&partner_socket)
            .build(),
    )
    .await
    .expect("a JwtSource on the partner frontend's socket");
    let token = within(jwt.fetch_jwt_svid(["orders"]))
        .await
        .expect("a JWT-SVID of the partner's frontend");
    let at_own = spiffe::WorkloadApiClient::connect_to(&own_socket)
        .await
        .expect("a client of our backend's socket");
    let validated = at_own
        .validate_jwt_token("orders", token.token())
        .await
        .expect("our sidecar validates a federated domain's JWT-SVID");
    assert_eq!(validated.spiffe_id().to_string(), PARTNER_FRONTEND);
    x509.shutdown().await;
    jwt.shutdown().await;

    // A policy that lets in "anyone" does not let in a federated caller: only a rule naming
    // its trust domain does.
    write_configmap(&own_root.join("policy"), "policy.yaml", allow_policy("*"));
    let refused = wait_for_status(partner.frontend.outbound(0), 403).await;
    assert!(
        refused.contains("another trust domain"),
        "the refusal says why: {refused}"
    );
    let scraped = metrics_of(&own.backend);
    assert!(
        metric(
            &scraped,
            "hush_policy_decisions_total{action=\"foreign_not_named\",policy=\"\",result=\"deny\"}"
        ) >= 1.0,
        "{scraped}"
    );
    // The partner's sidecars still reach ours the other way.
    let seen = until_ok(own.frontend.outbound(0)).await;
    assert_eq!(seen["peer_identity"], serde_json::json!([FRONTEND]));
    drop(partner);
    drop(partner_ca);
}

/// Calls GET / through `outbound` until it answers `status`; returns the body.
async fn wait_for_status(outbound: SocketAddr, status: u16) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (got, body) = get(outbound, "/federated", &[]).await;
        if got == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {status} through {outbound} in {PATIENCE:?}; last answer {got}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
