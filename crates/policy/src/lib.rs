//! Identity policy for hush: who may call which port, method and path.
//!
//! Operators write `AuthorizationPolicy` documents in YAML, in the shape Istio users know:
//!
//! ```yaml
//! apiVersion: hush.dev/v1alpha1
//! kind: AuthorizationPolicy
//! metadata:
//!   name: backend-api
//! spec:
//!   action: ALLOW            # ALLOW | DENY | AUDIT
//!   rules:
//!     - from:
//!         - principals: ["spiffe://cluster.local/ns/shop/sa/frontend"]
//!       to:
//!         - ports: [8080]
//!           methods: ["GET"]
//!           paths: ["/api/*"]
//! ```
//!
//! [`PolicySet::parse`] validates the text, reporting every problem with file, line and
//! column, and compiles it. [`PolicySet::for_workload`] keeps the policies that apply to one
//! workload and indexes their rules by caller, and [`WorkloadPolicy::evaluate`] decides a
//! request without allocating: DENY rules first, then ALLOW rules (once any ALLOW policy
//! applies, anything no rule allows is denied), then the default. AUDIT rules mark requests
//! for the audit log and dry-run policies report what they would have decided; neither
//! changes a decision. [`PolicySet::explain`] writes out the reasoning for one request.
//!
//! The crate does no I/O: callers hand it the text and the request.
//!
//! ```
//! use hush_policy::{DefaultAction, HttpRequest, PolicySet, Request, Verdict};
//!
//! let text = r#"
//! apiVersion: hush.dev/v1alpha1
//! kind: AuthorizationPolicy
//! metadata: {name: backend-api}
//! spec:
//!   rules:
//!     - from: [{principals: ["spiffe://cluster.local/ns/shop/sa/frontend"]}]
//!       to: [{ports: [8080], methods: [GET], paths: ["/api/*"]}]
//! "#;
//! let set = PolicySet::parse_str("backend.yaml", text).map_err(|e| e[0].to_string())?;
//! let policy = set.for_workload(None, DefaultAction::Allow);
//! let headers: &[(&str, &str)] = &[];
//! let request = |path| Request {
//!     principal: "spiffe://cluster.local/ns/shop/sa/frontend",
//!     port: 8080,
//!     http: Some(HttpRequest { method: "GET", path, headers: &headers }),
//! };
//! assert_eq!(policy.evaluate(&request("/api/items")).verdict, Verdict::Allow);
//! let denied = policy.evaluate(&request("/admin"));
//! assert_eq!(denied.to_string(), "denied: no ALLOW rule matched (policies: backend-api)");
//! # Ok::<(), String>(())
//! ```

mod compile;
mod eval;
mod explain;
mod model;
mod path;
mod pattern;

pub use self::compile::{
    API_VERSION, KIND, MAX_SOURCE_BYTES, PolicyError, PolicyInfo, PolicySet, Source,
};
pub use self::eval::{
    Decision, DefaultAction, DryRun, Headers, HttpRequest, Reason, Request, RuleRef, Verdict,
    WorkloadPolicy,
};
pub use self::explain::{Explanation, PolicyTrace, RuleTrace};
pub use self::model::Action;
pub use self::path::{AmbiguousPath, PathReadings, read_path};
