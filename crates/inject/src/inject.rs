//! The admission webhook's work: which pods get a sidecar, the Pod they become, and the
//! AdmissionReview answer that says so as a JSONPatch.
//!
//! The API server's webhook selectors decide which pods are sent here (namespaces or pods
//! labelled `hush.dev/inject: enabled`); a pod can still opt out with `hush.dev/inject:
//! disabled`. A pod that already has the sidecar, or that uses the node's network, is left
//! alone. What is added:
//!
//! * `hush-init`, an init container that runs `hush init-iptables` with `NET_ADMIN`;
//! * `hush-proxy`, a native sidecar (an init container with `restartPolicy: Always` and a
//!   startup probe on `/ready`), so it is ready before the app starts and stops after it;
//! * volumes: a projected service-account token for the CA (audience `hush-ca`), the trust
//!   bundle, the policy ConfigMap, and the sidecar's configuration, which is the
//!   `hush.dev/proxy-config` annotation projected as a file (so `kubectl get pod -o yaml`
//!   shows exactly what the sidecar runs with). The bundle travels the same way, as the
//!   `hush.dev/trust-bundle` annotation, when the injector's configuration carries it (the
//!   chart's way: no copy of the bundle is needed in every namespace); otherwise a ConfigMap of
//!   the pod's namespace is mounted. An `emptyDir` keeps the last bundle the sidecar took from
//!   the CA (`ca.bundle_cache`), so that a sidecar restarted after a root rotation does not
//!   fall back to the pod's frozen annotation.
//! * the SPIFFE Workload API, unless the pod says `hush.dev/workload-api: disabled`: an
//!   `emptyDir` (`hush-workload`) the sidecar serves the API's socket in, mounted read-only
//!   into every app container at `/run/hush/workload`, and `SPIFFE_ENDPOINT_SOCKET` set in
//!   each one that does not set it, so SPIFFE client libraries find it unconfigured.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use hush_config::{
    APP_HEALTH_PREFIX, AppProbe, CaConfig, InboundConfig, PolicyConfig, ProxyConfig,
    TransparentConfig, WorkloadApiConfig,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::Deserialize;

use crate::iptables::CaptureRules;

/// Opt in (`enabled`) or out (`disabled`), as a label or an annotation.
pub const INJECT_KEY: &str = "hush.dev/inject";
/// Set on injected pods (`injected`).
pub const STATUS_ANNOTATION: &str = "hush.dev/status";
/// The sidecar's configuration, projected into it as `/etc/hush/proxy.yaml`.
pub const CONFIG_ANNOTATION: &str = "hush.dev/proxy-config";
/// The trust bundle (PEM) of an injected pod, when the injector's configuration carries one.
pub const BUNDLE_ANNOTATION: &str = "hush.dev/trust-bundle";
/// More inbound ports to leave uncaptured, comma-separated.
pub const EXCLUDE_INBOUND_PORTS: &str = "hush.dev/exclude-inbound-ports";
/// Outbound ports to leave uncaptured, comma-separated.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "hush.dev/exclude-outbound-ports";
/// The sidecar's CPU request (e.g. `100m`).
pub const PROXY_CPU: &str = "hush.dev/proxy-cpu";
/// The sidecar's memory request and limit (e.g. `128Mi`).
pub const PROXY_MEMORY: &str = "hush.dev/proxy-memory";
/// The sidecar's log filter (e.g. `debug`).
pub const LOG_LEVEL: &str = "hush.dev/log-level";
/// Whether the sidecar serves the SPIFFE Workload API to the pod's containers: `enabled` or
/// `disabled`; without it, the injector's `workload_api` (true unless configured otherwise).
pub const WORKLOAD_API: &str = "hush.dev/workload-api";
/// Where the Workload API's socket is, in the sidecar and in every app container.
pub const WORKLOAD_API_DIR: &str = "/run/hush/workload";
/// The variable SPIFFE client libraries read the Workload API's address from.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";
/// The sidecar container's name.
pub const PROXY_CONTAINER: &str = "hush-proxy";
/// The capture init container's name.
pub const INIT_CONTAINER: &str = "hush-init";

const CONFIG_DIR: &str = "/etc/hush";
const TOKEN_DIR: &str = "/var/run/secrets/hush/token";
const BUNDLE_DIR: &str = "/var/run/secrets/hush/bundle";
const POLICY_DIR: &str = "/etc/hush/policy";
/// The sidecar's own writable state (the bundle cache), an `emptyDir`: it survives a restart of
/// the container, not of the pod.
const STATE_DIR: &str = "/var/run/hush/state";

/// How the injector builds sidecars (the injector's own configuration file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectorConfig {
    /// The hush image, for both the sidecar and the capture init container.
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`; the cluster's default when absent.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// The CA, `https://host:port`, as the sidecars reach it.
    pub ca_address: String,
    /// The trust bundle (PEM). Each injected pod carries it in an annotation, projected as the
    /// sidecar's bundle file. When absent, `trust_bundle_configmap` is mounted instead.
    #[serde(default)]
    pub trust_bundle: Option<String>,
    /// The ConfigMap of the pod's namespace holding the trust bundle (key `bundle.pem`), used
    /// when `trust_bundle` is absent.
    #[serde(default = "defaults::bundle_configmap")]
    pub trust_bundle_configmap: String,
    /// The ConfigMap holding policy files; none when absent.
    #[serde(default)]
    pub policy_configmap: Option<String>,
    /// The audience of the projected service-account token the CA checks with TokenReview.
    #[serde(default = "defaults::token_audience")]
    pub token_audience: String,
    /// The uid (and gid) the sidecar runs as; its traffic is never captured.
    #[serde(default = "defaults::proxy_uid")]
    pub proxy_uid: u32,
    /// The sidecar's inbound (mutual TLS) port.
    #[serde(default = "defaults::inbound_port")]
    pub inbound_port: u16,
    /// The sidecar's transparent (outbound) port.
    #[serde(default = "defaults::outbound_port")]
    pub outbound_port: u16,
    /// The sidecar's admin port (probes, metrics); never captured.
    #[serde(default = "defaults::admin_port")]
    pub admin_port: u16,
    /// Outbound destinations never captured (e.g. the API server's range).
    #[serde(default)]
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// The sidecar's log filter.
    #[serde(default = "defaults::log_level")]
    pub log_level: String,
    /// Where the sidecars send their spans (OTLP/gRPC, `http://collector:4317`); none when
    /// absent. Each sidecar also names its pod and namespace in its resource attributes.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The sidecar's CPU request.
    #[serde(default = "defaults::cpu")]
    pub cpu_request: String,
    /// The sidecar's memory request (and limit).
    #[serde(default = "defaults::memory")]
    pub memory: String,
    /// Whether sidecars serve the SPIFFE Workload API to their pods unless a pod says
    /// otherwise (`hush.dev/workload-api`). Default: true.
    #[serde(default = "defaults::workload_api")]
    pub workload_api: bool,
}

mod defaults {
    pub(super) fn workload_api() -> bool {
        true
    }
    pub(super) fn bundle_configmap() -> String {
        "hush-trust-bundle".into()
    }
    pub(super) fn token_audience() -> String {
        "hush-ca".into()
    }
    pub(super) fn proxy_uid() -> u32 {
        1337
    }
    pub(super) fn inbound_port() -> u16 {
        15006
    }
    pub(super) fn outbound_port() -> u16 {
        15001
    }
    pub(super) fn admin_port() -> u16 {
        15020
    }
    pub(super) fn log_level() -> String {
        "info".into()
    }
    pub(super) fn cpu() -> String {
        "50m".into()
    }
    pub(super) fn memory() -> String {
        "64Mi".into()
    }
}

/// The injector's configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum InjectorConfigError {
    /// The YAML does not describe a configuration (syntax, unknown key, wrong type).
    #[error("{0}")]
    Yaml(#[from] serde_saphyr::Error),
    /// The trust bundle it carries does not parse or holds no usable root.
    #[error("trust_bundle: {0}")]
    TrustBundle(#[from] hush_identity::BundleError),
    /// The collector's address is not one a sidecar can send spans to.
    #[error(
        "otlp_endpoint: `{0}` is not an http://host:port URL (sidecars send spans in plaintext \
         OTLP/gRPC to a collector agent, e.g. http://otel-collector:4317)"
    )]
    OtlpEndpoint(String),
}

impl InjectorConfig {
    /// Parses the injector's YAML configuration and checks the trust bundle it carries.
    pub fn from_yaml(text: &str) -> Result<Self, InjectorConfigError> {
        let config: Self = serde_saphyr::from_str(text)?;
        if let Some(pem) = &config.trust_bundle {
            hush_identity::TrustBundle::from_pem(pem.as_bytes(), None)?;
        }
        // The sidecar checks it again, fully, when it starts; this catches what would make
        // every injected pod fail to start.
        let has_host = |endpoint: &str| {
            endpoint.strip_prefix("http://").is_some_and(|rest| {
                !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace)
            })
        };
        if let Some(endpoint) = &config.otlp_endpoint
            && !has_host(endpoint)
        {
            return Err(InjectorConfigError::OtlpEndpoint(endpoint.clone()));
        }
        Ok(config)
    }
}

/// What the injector did with a pod.
#[derive(Debug)]
pub enum Outcome {
    /// Left alone, and why.
    Skipped(String),
    /// The pod with its sidecar.
    Injected(Box<Pod>),
}

/// The pod cannot be injected as its annotations ask; the pod is refused with this message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{annotation}: {message}")]
pub struct InjectError {
    /// The annotation at fault.
    pub annotation: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Decides whether `pod` gets a sidecar and builds the injected pod.
pub fn mutate(pod: &Pod, config: &InjectorConfig) -> Result<Outcome, InjectError> {
    let meta = &pod.metadata;
    let setting = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .or_else(|| meta.labels.as_ref().and_then(|l| l.get(key)))
            .map(String::as_str)
    };
    if matches!(setting(INJECT_KEY), Some("disabled" | "false")) {
        return Ok(Outcome::Skipped(format!("{INJECT_KEY} is disabled")));
    }
    let Some(spec) = &pod.spec else {
        return Ok(Outcome::Skipped("the pod has no spec".into()));
    };
    let has_sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| c.name == PROXY_CONTAINER);
    if has_sidecar || setting(STATUS_ANNOTATION) == Some("injected") {
        return Ok(Outcome::Skipped(
            "the pod already has a hush sidecar".into(),
        ));
    }
    if spec.host_network == Some(true) {
        return Ok(Outcome::Skipped(
            "the pod uses the node's network; capturing its traffic would capture the node's"
                .into(),
        ));
    }

    let ports = |annotation: &'static str| -> Result<Vec<u16>, InjectError> {
        let Some(value) = setting(annotation) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(InjectError {
                    annotation,
                    message: format!("{p:?} is not a port (1-65535) in {value:?}"),
                }),
            })
            .collect()
    };
    let mut exclude_inbound = vec![config.admin_port];
    exclude_inbound.extend(ports(EXCLUDE_INBOUND_PORTS)?);
    let capture = CaptureRules {
        proxy_uid: config.proxy_uid,
        proxy_gid: config.proxy_uid,
        inbound_port: config.inbound_port,
        outbound_port: config.outbound_port,
        exclude_inbound_ports: exclude_inbound,
        exclude_outbound_ports: ports(EXCLUDE_OUTBOUND_PORTS)?,
        exclude_outbound_cidrs: config.exclude_outbound_cidrs.clone(),
    };
    capture.validate().map_err(|e| InjectError {
        annotation: EXCLUDE_INBOUND_PORTS,
        message: e.to_string(),
    })?;
    let cpu = setting(PROXY_CPU)
        .unwrap_or(&config.cpu_request)
        .to_string();
    let memory = setting(PROXY_MEMORY).unwrap_or(&config.memory).to_string();
    for (annotation, value) in [(PROXY_CPU, &cpu), (PROXY_MEMORY, &memory)] {
        if !is_quantity(value) {
            return Err(InjectError {
                annotation,
                message: format!("{value:?} is not a Kubernetes quantity (e.g. 100m, 128Mi)"),
            });
        }
    }
    let log_level = setting(LOG_LEVEL).unwrap_or(&config.log_level).to_string();
    let workload_api = match setting(WORKLOAD_API) {
        None => config.workload_api,
        Some("enabled") => true,
        Some("disabled") => false,
        Some(other) => {
            return Err(InjectError {
                annotation: WORKLOAD_API,
                message: format!("{other:?} is neither enabled nor disabled"),
            });
        }
    };

    // The app's first declared port serves connections made to the inbound port directly.
    let app_port = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find_map(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080);
    let mut injected = pod.clone();
    let spec = injected.spec.get_or_insert_with(Default::default);
    let probes = rewrite_probes(&mut spec.containers, config.admin_port);
    if workload_api {
        share_workload_api(&mut spec.containers);
        // The pod's own init containers run once the sidecar is ready: they may use it too.
        if let Some(init) = &mut spec.init_containers {
            share_workload_api(init);
        }
    }
    let proxy_config = proxy_config(config, app_port, probes, workload_api)
        .to_yaml()
        .map_err(|e| InjectError {
            annotation: CONFIG_ANNOTATION,
            message: e.to_string(),
        })?;
    let meta = &mut injected.metadata;
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(STATUS_ANNOTATION.into(), "injected".into());
    annotations.insert(CONFIG_ANNOTATION.into(), proxy_config);
    if let Some(bundle) = &config.trust_bundle {
        annotations.insert(BUNDLE_ANNOTATION.into(), bundle.clone());
    }
    let spec = injected.spec.get_or_insert_with(Default::default);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.extend(sidecar_volumes(config, workload_api));
    let init = spec.init_containers.get_or_insert_with(Vec::new);
    // First the capture rules, then the sidecar, then the pod's own init containers (which
    // may already need the mesh).
    init.insert(0, init_container(config, &capture));
    init.insert(
        1,
        proxy_container(config, &cpu, &memory, &log_level, workload_api),
    );
    Ok(Outcome::Injected(Box::new(injected)))
}

/// Answers an AdmissionReview (the request body the API server POSTs) with the JSON the API
/// server expects back. Never fails: a body that is not an AdmissionReview of a Pod gets a
/// review that refuses with the reason.
pub fn review(body: &[u8], config: &InjectorConfig) -> Vec<u8> {
    let mut answer = match serde_json::to_value(decide(body, config)) {
        Ok(answer) => answer,
        Err(e) => {
            return format!(
                "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\
                 \"response\":{{\"uid\":\"\",\"allowed\":false,\"status\":{{\"message\":\
                 \"hush-inject: cannot encode the answer: {e}\"}}}}}}"
            )
            .into_bytes();
        }
    };
    // The patch is a `[]byte` in the API's Go types: base64 in JSON, as webhooks send it.
    if let Some(patch) = answer.pointer_mut("/response/patch")
        && let Some(bytes) = patch.as_array()
    {
        let bytes: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect();
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    serde_json::to_vec(&answer).unwrap_or_default()
}

fn decide(body: &[u8], config: &InjectorConfig) -> AdmissionReview<DynamicObject> {
    let sent: serde_json::Value = match serde_json::from_slice(body) {
        Ok(sent) => sent,
        Err(e) => {
            return AdmissionResponse::invalid(format!(
                "hush-inject: the request is not an AdmissionReview of a Pod: {e}"
            ))
            .into_review();
        }
    };
    let review: AdmissionReview<Pod> = match AdmissionReview::deserialize(&sent) {
        Ok(review) => review,
        Err(e) => {
            return AdmissionResponse::invalid(format!(
                "hush-inject: the request is not an AdmissionReview of a Pod: {e}"
            ))
            .into_review();
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(_) => {
            return AdmissionResponse::invalid("hush-inject: the AdmissionReview has no request")
                .into_review();
        }
    };
    let response = AdmissionResponse::from(&request);
    let Some(pod) = &request.object else {
        return response.into_review();
    };
    match mutate(pod, config) {
        Ok(Outcome::Skipped(_)) => response.into_review(),
        Ok(Outcome::Injected(injected)) => {
            let patch = match (serde_json::to_value(pod), serde_json::to_value(&injected)) {
                (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
                _ => {
                    return response
                        .deny("hush-inject: cannot encode the pod")
                        .into_review();
                }
            };
            // The patch is computed between typed Pods, which leave out what they do not know
            // (fields of a newer Kubernetes stay untouched that way); it must still apply to
            // the object exactly as it was sent, or the API server would fail the request
            // with a less helpful message.
            let mut applied = sent["request"]["object"].clone();
            if let Err(e) = json_patch::patch(&mut applied, &patch) {
                return response
                    .deny(format!(
                        "hush-inject: the pod as sent does not have the shape of a Pod: {e}"
                    ))
                    .into_review();
            }
            match response.clone().with_patch(patch) {
                Ok(patched) => patched.into_review(),
                Err(e) => response
                    .deny(format!("hush-inject: cannot encode the patch: {e}"))
                    .into_review(),
            }
        }
        Err(e) => response
            .deny(format!("hush-inject: cannot add the sidecar: {e}"))
            .into_review(),
    }
}

/// Points the app containers' HTTP and TCP probes at the sidecar's admin port, which is never
/// captured, and returns what the sidecar must check in their place. Under strict mutual TLS
/// the kubelet's plaintext probes could not reach the app otherwise. HTTPS, gRPC and exec
/// probes are left as they are.
fn rewrite_probes(containers: &mut [Container], admin_port: u16) -> Vec<AppProbe> {
    let mut moved = Vec::new();
    for container in containers {
        let ports: Vec<ContainerPort> = container.ports.clone().unwrap_or_default();
        let resolve = |port: &IntOrString| match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        };
        let name = container.name.clone();
        for (kind, probe) in [
            ("liveness", &mut container.liveness_probe),
            ("readiness", &mut container.readiness_probe),
            ("startup", &mut container.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let path = format!("{APP_HEALTH_PREFIX}{name}/{kind}");
            let target = match (&probe.http_get, &probe.tcp_socket) {
                (Some(get), _) if get.scheme.as_deref().is_none_or(|s| s == "HTTP") => {
                    resolve(&get.port)
                        .map(|port| (port, Some(get.path.clone().unwrap_or_else(|| "/".into()))))
                }
                (None, Some(tcp)) => resolve(&tcp.port).map(|port| (port, None)),
                _ => None,
            };
            let Some((port, http_path)) = target else {
                continue;
            };
            probe.tcp_socket = None;
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(admin_port)),
                ..Default::default()
            });
            moved.push(AppProbe {
                path,
                port,
                http_path,
            });
        }
    }
    moved
}

/// The sidecar's configuration (see `examples/proxy/reference.yaml`): its listeners on every
/// address at the injector's ports, the token and bundle where the pod's volumes put them, and
/// the policy ConfigMap when there is one.
fn proxy_config(
    config: &InjectorConfig,
    app_port: u16,
    probes: Vec<AppProbe>,
    workload_api: bool,
) -> ProxyConfig {
    let every_address = |port: u16| SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let mut proxy = ProxyConfig::new(CaConfig {
        // The annotation's bundle is frozen when the pod is made; after a root rotation a
        // restarted sidecar starts from the last bundle it took from the CA instead.
        bundle_cache: Some(format!("{STATE_DIR}/bundle.pem").into()),
        ..CaConfig::new(
            config.ca_address.clone(),
            format!("{BUNDLE_DIR}/bundle.pem"),
            format!("{TOKEN_DIR}/token"),
        )
    });
    proxy.inbound = Some(InboundConfig {
        captured: true,
        ..InboundConfig::new(
            every_address(config.inbound_port),
            SocketAddr::from((Ipv4Addr::LOCALHOST, app_port)),
        )
    });
    proxy.transparent = Some(TransparentConfig::new(every_address(config.outbound_port)));
    proxy.admin.listen = every_address(config.admin_port);
    proxy.admin.probes = probes;
    if config.policy_configmap.is_some() {
        // The ConfigMap is mounted as optional: a namespace may have none yet.
        proxy.policy = Some(PolicyConfig {
            optional: true,
            ..PolicyConfig::new(POLICY_DIR)
        });
    }
    if workload_api {
        proxy.workload_api = Some(WorkloadApiConfig::new(format!("{WORKLOAD_API_DIR}/socket")));
    }
    proxy
}

/// Mounts the Workload API's directory read-only into `containers` and points
/// `SPIFFE_ENDPOINT_SOCKET` at its socket. Read-only: an app can connect to the socket (a
/// socket is not written through its file), but cannot replace it with one of its own for
/// the pod's other containers. A container that mounts something at that path already, or
/// sets the variable itself, keeps its own.
fn share_workload_api(containers: &mut [Container]) {
    for container in containers {
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        if !mounts
            .iter()
            .any(|m| m.mount_path.trim_end_matches('/') == WORKLOAD_API_DIR)
        {
            mounts.push(VolumeMount {
                name: "hush-workload".into(),
                mount_path: WORKLOAD_API_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        let env = container.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == SPIFFE_ENDPOINT_SOCKET) {
            env.push(EnvVar {
                name: SPIFFE_ENDPOINT_SOCKET.into(),
                value: Some(format!("unix://{WORKLOAD_API_DIR}/socket")),
                ..Default::default()
            });
        }
    }
}

fn sidecar_volumes(config: &InjectorConfig, workload_api: bool) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "hush-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(config.token_audience.clone()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        match &config.trust_bundle {
            Some(_) => annotation_file("hush-bundle", BUNDLE_ANNOTATION, "bundle.pem"),
            None => Volume {
                name: "hush-bundle".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config.trust_bundle_configmap.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        },
        annotation_file("hush-config", CONFIG_ANNOTATION, "proxy.yaml"),
        Volume {
            name: "hush-state".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                // A few kilobytes of PEM; the limit keeps a bug from filling the node.
                size_limit: Some(Quantity("1Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if workload_api {
        volumes.push(Volume {
            name: "hush-workload".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                // Only a socket lives here.
                size_limit: Some(Quantity("1Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(policy) = &config.policy_configmap {
        volumes.push(Volume {
            name: "hush-policy".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: policy.clone(),
                // A cluster without policy yet: the sidecar reads an empty directory.
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

/// A volume holding one file, `path`, whose content is the pod's annotation `annotation`.
fn annotation_file(volume: &str, annotation: &str, path: &str) -> Volume {
    Volume {
        name: volume.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: path.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{annotation}']"),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn init_container(config: &InjectorConfig, capture: &CaptureRules) -> Container {
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut args = vec![
        "init-iptables".to_string(),
        "--proxy-uid".into(),
        capture.proxy_uid.to_string(),
        "--inbound-port".into(),
        capture.inbound_port.to_string(),
        "--outbound-port".into(),
        capture.outbound_port.to_string(),
        "--exclude-inbound-ports".into(),
        list(&capture.exclude_inbound_ports),
    ];
    if !capture.exclude_outbound_ports.is_empty() {
        args.push("--exclude-outbound-ports".into());
        args.push(list(&capture.exclude_outbound_ports));
    }
    if !capture.exclude_outbound_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".into());
        let cidrs: Vec<String> = capture
            .exclude_outbound_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        args.push(cidrs.join(","));
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(args),
        resources: Some(resources("10m", "16Mi")),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            // iptables takes its lock in /run/xtables.lock.
            read_only_root_filesystem: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The sidecar's environment: its log filter, and where its spans go.
fn proxy_env(config: &InjectorConfig, log_level: &str) -> Vec<EnvVar> {
    let value = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![value("HUSH_LOG", log_level)];
    if let Some(endpoint) = &config.otlp_endpoint {
        env.extend([
            value("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            field("HUSH_POD_NAME", "metadata.name"),
            field("HUSH_POD_NAMESPACE", "metadata.namespace"),
            // Kubernetes expands $(VAR) from the variables defined before it.
            value(
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=$(HUSH_POD_NAME),k8s.namespace.name=$(HUSH_POD_NAMESPACE)",
            ),
        ]);
    }
    env
}

fn proxy_container(
    config: &InjectorConfig,
    cpu: &str,
    memory: &str,
    log_level: &str,
    workload_api: bool,
) -> Container {
    let admin_probe = |path: &str, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(config.admin_port)),
            ..Default::default()
        }),
        period_seconds: Some(1),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut mounts = vec![
        mount("hush-config", CONFIG_DIR),
        mount("hush-token", TOKEN_DIR),
        mount("hush-bundle", BUNDLE_DIR),
        VolumeMount {
            read_only: Some(false),
            ..mount("hush-state", STATE_DIR)
        },
    ];
    if config.policy_configmap.is_some() {
        mounts.push(mount("hush-policy", POLICY_DIR));
    }
    if workload_api {
        // The sidecar makes the socket here.
        mounts.push(VolumeMount {
            read_only: Some(false),
            ..mount("hush-workload", WORKLOAD_API_DIR)
        });
    }
    let uid = i64::from(config.proxy_uid);
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec![
            "proxy".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/proxy.yaml"),
        ]),
        env: Some(proxy_env(config, log_level)),
        // A native sidecar: started before the app, stopped after it.
        restart_policy: Some("Always".into()),
        ports: Some(vec![
            ContainerPort {
                name: Some("hush-inbound".into()),
                container_port: i32::from(config.inbound_port),
                ..Default::default()
            },
            ContainerPort {
                name: Some("hush-admin".into()),
                container_port: i32::from(config.admin_port),
                ..Default::default()
            },
        ]),
        // The app starts only once the sidecar holds its certificate.
        startup_probe: Some(admin_probe("/ready", 120)),
        readiness_probe: Some(admin_probe("/ready", 3)),
        liveness_probe: Some(Probe {
            period_seconds: Some(10),
            ..admin_probe("/live", 3)
        }),
        resources: Some(resources(cpu, memory)),
        security_context: Some(SecurityContext {
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn resources(cpu: &str, memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory.into()),
        )])),
        ..Default::default()
    }
}

/// A Kubernetes resource quantity: a decimal number and an optional suffix.
fn is_quantity(value: &str) -> bool {
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use serde_json::Value;

    const POD_CREATE: &str = include_str!("../tests/fixtures/pod-create.json");

    fn config() -> InjectorConfig {
        InjectorConfig::from_yaml(
            "image: ghcr.io/hush-mesh/hush:0.1.0\nca_address: https://hush-ca.hush-system.svc:8443\npolicy_configmap: hush-policy\nexclude_outbound_cidrs: [10.96.0.1/32]\n",
        )
        .unwrap()
    }

    /// The AdmissionReview as the API server sends it, with `edit` applied to its pod.
    fn request(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut review: Value = serde_json::from_str(POD_CREATE).unwrap();
        edit(&mut review["request"]["object"]);
        serde_json::to_vec(&review).unwrap()
    }

    /// The pod of the fixture, as the webhook receives it.
    fn fixture_pod() -> Pod {
        let review: Value = serde_json::from_str(POD_CREATE).unwrap();
        serde_json::from_value(review["request"]["object"].clone()).unwrap()
    }

    /// Runs the webhook and applies its patch the way the API server does.
    fn admit(body: &[u8]) -> (Value, Option<Pod>) {
        let answer: Value = serde_json::from_slice(&review(body, &config())).unwrap();
        let response = &answer["response"];
        let Some(patch) = response["patch"].as_str() else {
            return (answer.clone(), None);
        };
        assert_eq!(response["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("a base64 patch");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let sent: Value = serde_json::from_slice(body).unwrap();
        let mut pod = sent["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap();
        (answer.clone(), Some(serde_json::from_value(pod).unwrap()))
    }

    #[test]
    fn a_pod_gets_the_capture_rules_and_a_native_sidecar() {
        let (answer, pod) = admit(&request(|_| {}));
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(answer["response"]["allowed"], true);
        let pod = pod.expect("a patch");
        let spec = pod.spec.as_ref().unwrap();
        let init = spec.init_containers.as_ref().unwrap();
        assert_eq!(init[0].name, INIT_CONTAINER);
        let args = init[0].args.as_ref().unwrap().join(" ");
        assert_eq!(
            args,
            "init-iptables --proxy-uid 1337 --inbound-port 15006 --outbound-port 15001 \
             --exclude-inbound-ports 15020 --exclude-outbound-cidrs 10.96.0.1/32"
        );
        let caps = init[0]
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(
            caps.add.as_deref(),
            Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
        );

        let proxy = &init[1];
        assert_eq!(proxy.name, PROXY_CONTAINER);
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        let startup = proxy
            .startup_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(startup.path.as_deref(), Some("/ready"));
        assert_eq!(startup.port, IntOrString::Int(15020));
        let security = proxy.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_user, Some(1337));
        assert_eq!(security.run_as_non_root, Some(true));
        // The app container keeps everything but its probe, which now asks the sidecar.
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].name, "backend");
        let readiness = spec.containers[0].readiness_probe.as_ref().unwrap();
        let get = readiness.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/app-health/backend/readiness"));
        assert_eq!(get.port, IntOrString::Int(15020));
        assert_eq!(readiness.period_seconds, Some(10), "timings are kept");

        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            volumes,
            [
                "kube-api-access-x7k2p",
                "hush-token",
                "hush-bundle",
                "hush-config",
                "hush-state",
                "hush-workload",
                "hush-policy"
            ]
        );
        let token = spec.volumes.as_ref().unwrap()[1]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .service_account_token
            .as_ref()
            .unwrap();
        assert_eq!(token.audience.as_deref(), Some("hush-ca"));

        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[STATUS_ANNOTATION], "injected");
        // What the sidecar will read, as it reads it.
        let proxy_yaml = &annotations[CONFIG_ANNOTATION];
        let proxy = ProxyConfig::from_yaml(proxy_yaml, CONFIG_ANNOTATION, Path::new(CONFIG_DIR))
            .unwrap_or_else(|e| panic!("{e}\n{proxy_yaml}"));
        assert_eq!(proxy.ca.address, "https://hush-ca.hush-system.svc:8443");
        assert_eq!(
            proxy.ca.token_file,
            Path::new("/var/run/secrets/hush/token/token")
        );
        let inbound = proxy.inbound.as_ref().unwrap();
        assert_eq!(inbound.app, "127.0.0.1:8080".parse().unwrap());
        assert!(inbound.captured);
        assert_eq!(
            proxy.transparent.as_ref().unwrap().listen,
            "[::]:15001".parse().unwrap()
        );
        assert_eq!(proxy.admin.listen, "[::]:15020".parse().unwrap());
        assert_eq!(
            proxy.admin.probes,
            [AppProbe {
                path: "/app-health/backend/readiness".into(),
                port: 8080,
                http_path: Some("/healthz".into()),
            }]
        );
        let policy = proxy.policy.as_ref().unwrap();
        assert_eq!(policy.path, Path::new("/etc/hush/policy"));
        assert!(policy.optional);

        // The Workload API: the sidecar serves it in the shared directory, the app finds it.
        assert_eq!(
            proxy.workload_api.as_ref().unwrap().socket,
            Path::new("/run/hush/workload/socket")
        );
        let sidecar_mount = init[1]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "hush-workload")
            .unwrap();
        assert_eq!(sidecar_mount.mount_path, WORKLOAD_API_DIR);
        assert_eq!(sidecar_mount.read_only, Some(false));
        let app = &spec.containers[0];
        let app_mount = app
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "hush-workload")
            .unwrap();
        assert_eq!(app_mount.mount_path, WORKLOAD_API_DIR);
        assert_eq!(
            app_mount.read_only,
            Some(true),
            "the app cannot replace the socket"
        );
        let endpoint = app
            .env
            .iter()
            .flatten()
            .find(|e| e.name == SPIFFE_ENDPOINT_SOCKET)
            .unwrap();
        assert_eq!(
            endpoint.value.as_deref(),
            Some("unix:///run/hush/workload/socket")
        );
    }

    #[test]
    fn the_workload_api_can_be_declined_and_an_apps_own_settings_are_kept() {
        let (_, pod) = admit(&request(|object| {
            object["metadata"]["annotations"] = serde_json::json!({WORKLOAD_API: "disabled"});
        }));
        let pod = pod.unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert!(
            !spec
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == "hush-workload")
        );
        assert!(
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .all(|m| m.name != "hush-workload")
        );
        assert!(
            spec.containers[0]
                .env
                .iter()
                .flatten()
                .all(|e| e.name != SPIFFE_ENDPOINT_SOCKET)
        );
        let yaml = &pod.metadata.annotations.as_ref().unwrap()[CONFIG_ANNOTATION];
        let proxy = ProxyConfig::from_yaml(yaml, CONFIG_ANNOTATION, Path::new(CONFIG_DIR)).unwrap();
        assert_eq!(proxy.workload_api, None);

        // A container that sets the variable, or mounts the path, keeps its own.
        let (_, pod) = admit(&request(|object| {
            let app = &mut object["spec"]["containers"][0];
            app["env"] = serde_json::json!([
                {"name": SPIFFE_ENDPOINT_SOCKET, "value": "unix:///elsewhere/socket"}
            ]);
            app["volumeMounts"] = serde_json::json!([
                {"name": "own", "mountPath": "/run/hush/workload/"}
            ]);
        }));
        let pod = pod.unwrap();
        let app = &pod.spec.as_ref().unwrap().containers[0];
        let env: Vec<_> = app
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == SPIFFE_ENDPOINT_SOCKET)
            .collect();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].value.as_deref(), Some("unix:///elsewhere/socket"));
        let mounts: Vec<_> = app
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, ["own"]);

        // A cluster that serves it only where asked: the pod's annotation decides.
        let mut off = config();
        off.workload_api = false;
        let fixture = fixture_pod();
        let Outcome::Injected(pod) = mutate(&fixture, &off).unwrap() else {
            panic!("injected")
        };
        assert!(
            !serde_json::to_string(&pod)
                .unwrap()
                .contains("hush-workload")
        );
        let mut asking = fixture;
        asking
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(WORKLOAD_API.into(), "enabled".into());
        let Outcome::Injected(pod) = mutate(&asking, &off).unwrap() else {
            panic!("injected")
        };
        assert!(
            serde_json::to_string(&pod)
                .unwrap()
                .contains("hush-workload")
        );
    }

    #[test]
    fn a_bundle_in_the_configuration_travels_with_the_pod() {
        let root = hush_test_support::TestCa::new("cluster.local").root_pem();
        let mut with_bundle = config();
        with_bundle.trust_bundle = Some(root.clone());
        let Outcome::Injected(pod) = mutate(&fixture_pod(), &with_bundle).unwrap() else {
            panic!("not injected");
        };
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[BUNDLE_ANNOTATION],
            root
        );
        let volume = pod
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "hush-bundle")
            .unwrap();
        assert!(volume.config_map.is_none(), "{volume:?}");
        let item = &volume
            .downward_api
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()[0];
        assert_eq!(item.path, "bundle.pem");
        assert_eq!(
            item.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['hush.dev/trust-bundle']"
        );

        // Without it, the namespace's ConfigMap is mounted and nothing is annotated.
        let Outcome::Injected(pod) = mutate(&fixture_pod(), &config()).unwrap() else {
            panic!("not injected");
        };
        assert!(
            !pod.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(BUNDLE_ANNOTATION)
        );
    }

    #[test]
    fn a_configuration_with_a_broken_bundle_is_refused() {
        let base = "image: hush:1\nca_address: https://hush-ca:8443\n";
        for (bundle, expected) in [
            ("\"not a certificate\"", "trust_bundle"),
            (
                "\"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"",
                "trust_bundle",
            ),
        ] {
            let err = InjectorConfig::from_yaml(&format!("{base}trust_bundle: {bundle}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_pod_without_metadata_is_refused_not_patched_blindly() {
        let (answer, pod) = admit(&request(|object| {
            let metadata = object["metadata"].take();
            object.as_object_mut().unwrap().remove("metadata");
            object["mutadata"] = metadata;
        }));
        assert!(pod.is_none(), "{answer}");
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("does not have the shape of a Pod"),
            "{message}"
        );
    }

    #[test]
    fn an_injected_pod_is_not_injected_twice() {
        let (_, pod) = admit(&request(|_| {}));
        let injected = serde_json::to_value(pod.unwrap()).unwrap();
        let (answer, again) = admit(&request(|object| *object = injected));
        assert!(again.is_none(), "{answer}");
        assert_eq!(answer["response"]["allowed"], true);
    }

    #[test]
    fn opted_out_and_host_network_pods_are_left_alone() {
        let (_, pod) = admit(&request(|object| {
            object["metadata"]["annotations"] = serde_json::json!({INJECT_KEY: "disabled"});
        }));
        assert!(pod.is_none());
        let (_, pod) = admit(&request(|object| {
            object["spec"]["hostNetwork"] = true.into()
        }));
        assert!(pod.is_none());
    }

    #[test]
    fn annotations_override_ports_resources_and_log_level() {
        let (_, pod) = admit(&request(|object| {
            object["metadata"]["annotations"] = serde_json::json!({
                EXCLUDE_INBOUND_PORTS: "22, 9090",
                EXCLUDE_OUTBOUND_PORTS: "5432",
                PROXY_CPU: "200m",
                PROXY_MEMORY: "256Mi",
                LOG_LEVEL: "debug",
            });
        }));
        let pod = pod.unwrap();
        let init = pod.spec.unwrap().init_containers.unwrap();
        let args = init[0].args.as_ref().unwrap().join(" ");
        assert!(
            args.contains("--exclude-inbound-ports 15020,22,9090"),
            "{args}"
        );
        assert!(args.contains("--exclude-outbound-ports 5432"), "{args}");
        let proxy = &init[1];
        let requests = proxy.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "200m");
        assert_eq!(requests["memory"].0, "256Mi");
        assert_eq!(
            proxy.env.as_ref().unwrap()[0].value.as_deref(),
            Some("debug")
        );
    }

    #[test]
    fn a_collector_reaches_the_sidecar_with_the_pod_named() {
        let env = |config: &InjectorConfig| proxy_env(config, "info");
        assert_eq!(
            env(&config()).len(),
            1,
            "no collector, no tracing variables"
        );
        let traced = InjectorConfig::from_yaml(
            "image: i\nca_address: https://ca:8443\notlp_endpoint: http://otel-agent.observability:4317\n",
        )
        .unwrap();
        let env = env(&traced);
        let named = |name: &str| env.iter().find(|v| v.name == name).unwrap();
        assert_eq!(
            named("OTEL_EXPORTER_OTLP_ENDPOINT").value.as_deref(),
            Some("http://otel-agent.observability:4317")
        );
        let pod_name = named("HUSH_POD_NAME").value_from.as_ref().unwrap();
        assert_eq!(
            pod_name.field_ref.as_ref().unwrap().field_path,
            "metadata.name"
        );
        // $(HUSH_POD_NAME) expands only from variables defined before it.
        let position = |name: &str| env.iter().position(|v| v.name == name).unwrap();
        assert!(position("HUSH_POD_NAME") < position("OTEL_RESOURCE_ATTRIBUTES"));
        assert!(
            named("OTEL_RESOURCE_ATTRIBUTES")
                .value
                .as_deref()
                .unwrap()
                .contains("k8s.namespace.name=$(HUSH_POD_NAMESPACE)")
        );
        for bad in [
            "https://collector:4317",
            "http://",
            "collector:4317",
            "http://a b",
        ] {
            let refused = InjectorConfig::from_yaml(&format!(
                "image: i\nca_address: https://ca:8443\notlp_endpoint: \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(
                matches!(&refused, InjectorConfigError::OtlpEndpoint(e) if e == bad),
                "{bad}: {refused}"
            );
            assert!(refused.to_string().contains("otlp_endpoint"), "{refused}");
        }
    }

    #[test]
    fn bad_annotations_refuse_the_pod_with_the_reason() {
        for (annotation, value, words) in [
            (EXCLUDE_INBOUND_PORTS, "22,ssh", "\"ssh\" is not a port"),
            (EXCLUDE_INBOUND_PORTS, "15006", "is the inbound port"),
            (PROXY_MEMORY, "lots", "not a Kubernetes quantity"),
            (WORKLOAD_API, "yes please", "neither enabled nor disabled"),
        ] {
            let (answer, pod) = admit(&request(|object| {
                object["metadata"]["annotations"] = serde_json::json!({annotation: value});
            }));
            assert!(pod.is_none());
            assert_eq!(answer["response"]["allowed"], false);
            let message = answer["response"]["status"]["message"].as_str().unwrap();
            assert!(
                message.contains(annotation) && message.contains(words),
                "{message}"
            );
        }
    }

    #[test]
    fn malformed_reviews_get_an_answer_not_a_crash() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"{\"kind\":\"AdmissionReview\",\"apiVersion\":\"admission.k8s.io/v1\"}",
            b"[1,2]",
        ] {
            let answer: Value = serde_json::from_slice(&review(body, &config())).unwrap();
            assert_eq!(answer["response"]["allowed"], false, "{answer}");
            assert!(
                answer["response"]["status"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("hush-inject:")),
                "{answer}"
            );
        }
    }

    #[test]
    fn tcp_and_named_port_probes_move_and_others_stay() {
        let (_, pod) = admit(&request(|object| {
            let app = &mut object["spec"]["containers"][0];
            app["livenessProbe"] = serde_json::json!({"tcpSocket": {"port": "http"}});
            app["startupProbe"] = serde_json::json!({"exec": {"command": ["true"]}});
            app["readinessProbe"] =
                serde_json::json!({"httpGet": {"port": 8443, "scheme": "HTTPS"}});
        }));
        let pod = pod.unwrap();
        let app = &pod.spec.as_ref().unwrap().containers[0];
        let liveness = app.liveness_probe.as_ref().unwrap();
        assert!(liveness.tcp_socket.is_none());
        assert_eq!(
            liveness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/app-health/backend/liveness")
        );
        assert!(app.startup_probe.as_ref().unwrap().exec.is_some());
        assert_eq!(
            app.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .port,
            IntOrString::Int(8443)
        );
        let proxy_yaml = &pod.metadata.annotations.as_ref().unwrap()[CONFIG_ANNOTATION];
        let probes = ProxyConfig::from_yaml(proxy_yaml, CONFIG_ANNOTATION, Path::new(CONFIG_DIR))
            .unwrap_or_else(|e| panic!("{e}\n{proxy_yaml}"))
            .admin
            .probes;
        assert!(
            probes
                .iter()
                .any(|p| p.path == "/app-health/backend/liveness" && p.port == 8080),
            "{proxy_yaml}"
        );
        assert!(!proxy_yaml.contains("readiness"), "{proxy_yaml}");
    }

    #[test]
    fn quantities_are_checked() {
        for good in ["50m", "1", "0.5", "128Mi", "1Gi", "2k"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "12 Mi", "lots", "1.2.3", "5MiB"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
