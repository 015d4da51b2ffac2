//! hush's end-to-end tests: one test binary, one module per subject. The tests run the real
//! `hush` binary (`hush ca serve`, `hush proxy`, `hush diagnose`, …) as processes, with real
//! apps behind the sidecars and real clients in front, on loopback port 0 or in network
//! namespaces of their own.
//!
//! The test harness runs the tests of every module side by side in this one process, so no
//! test may rely on state of the process: environment variables, the current directory,
//! statics, files or namespaces named after the process, a default crypto provider or tracing
//! subscriber. What a test needs it makes for itself (decision 33).
//!
//! One module: `cargo test -p hush --test e2e proxy::`; one test:
//! `cargo test -p hush --test e2e -- --exact proxy::http1_reaches_the_app_with_the_callers_verified_identity`.

mod ca;
mod ca_limits;
mod capture;
mod diagnose;
mod docs;
mod federation;
mod gateway;
mod hostile;
mod hostile_wire;
mod inject;
mod kubernetes;
mod memory;
mod mesh;
mod policy;
mod proxy;
mod public_tls;
mod rotation;
mod traces;
mod workload_api;
