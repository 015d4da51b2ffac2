//! hush on Kubernetes: the admission webhook's decision to add a sidecar to a pod, and how a
//! pod's traffic reaches that sidecar.
//!
//! [`review`] answers an AdmissionReview v1 with a JSONPatch built by [`mutate`]: the capture
//! init container, the sidecar as a native sidecar, and the volumes it needs.
//!
//! [`CaptureRules`] renders the iptables rules the injected init container installs
//! (`hush init-iptables`): inbound TCP to the pod goes to the sidecar's inbound port, outbound
//! TCP from the app goes to its transparent port, and the sidecar's own traffic, loopback and
//! configured ports and address ranges are left alone. Rendering is pure; applying the rules
//! (through `iptables-restore`) is the command's job.

mod inject;
mod iptables;

pub use self::inject::{
    BUNDLE_ANNOTATION, CONFIG_ANNOTATION, EXCLUDE_INBOUND_PORTS, EXCLUDE_OUTBOUND_PORTS,
    INIT_CONTAINER, INJECT_KEY, InjectError, InjectorConfig, InjectorConfigError, LOG_LEVEL,
    Outcome, PROXY_CONTAINER, PROXY_CPU, PROXY_MEMORY, SPIFFE_ENDPOINT_SOCKET, STATUS_ANNOTATION,
    WORKLOAD_API, WORKLOAD_API_DIR, mutate, review,
};
pub use self::iptables::{CHAINS, CaptureError, CaptureRules, Family};
