//! What the end-to-end tests share: the two-sidecar mesh and its clients ([`sidecars`]), the
//! apps behind it ([`apps`]; [`judges`], apps written by others), what the hostile-input
//! modules share ([`hostile`]) and their hand-written HTTP/2 frames and TLS hellos ([`h2raw`],
//! [`tlsraw`]), the Kubernetes tools and volumes ([`kube`]), the OTLP receiver ([`otlp`]), and
//! Prometheus's lint of a scrape ([`promtool`]).

pub(crate) mod apps;
pub(crate) mod h2raw;
pub(crate) mod hostile;
pub(crate) mod judges;
pub(crate) mod kube;
pub(crate) mod otlp;
pub(crate) mod promtool;
pub(crate) mod sidecars;
pub(crate) mod tlsraw;
