//! hush on Kubernetes: how a pod's traffic reaches its sidecar, and (to come) the admission
//! webhook that adds the sidecar to pods.
//!
//! [`CaptureRules`] renders the iptables rules the injected init container installs
//! (`hush init-iptables`): inbound TCP to the pod goes to the sidecar's inbound port, outbound
//! TCP from the app goes to its transparent port, and the sidecar's own traffic, loopback and
//! configured ports and address ranges are left alone. Rendering is pure; applying the rules
//! (through `iptables-restore`) is the command's job.

mod iptables;

pub use self::iptables::{CHAINS, CaptureError, CaptureRules};
