//! The policy documents as written, before validation: serde types that keep the location of
//! every value the compiler may need to point at.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// What a policy does with the requests its rules match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Once any ALLOW policy applies to a workload, only what some ALLOW rule matches gets
    /// through.
    #[default]
    Allow,
    /// Matching requests are refused; DENY is checked before ALLOW.
    Deny,
    /// Matching requests are marked for the audit log; the decision is unchanged.
    Audit,
}

impl Action {
    /// `ALLOW`, `DENY` or `AUDIT`, as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDocument {
    pub(crate) api_version: Spanned<String>,
    pub(crate) kind: Spanned<String>,
    pub(crate) metadata: Spanned<RawMetadata>,
    pub(crate) spec: Spanned<RawSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetadata {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) namespace: Option<Spanned<String>>,
    // Kubernetes bookkeeping: accepted so a manifest can be used as it is, then ignored.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSpec {
    #[serde(default)]
    pub(crate) selector: Option<Spanned<RawSelector>>,
    #[serde(default)]
    pub(crate) action: Option<Spanned<Action>>,
    #[serde(default)]
    pub(crate) rules: Option<Vec<Spanned<RawRule>>>,
    #[serde(default)]
    pub(crate) dry_run: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSelector {
    pub(crate) identities: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    #[serde(default)]
    pub(crate) from: Option<Spanned<Vec<Spanned<RawSource>>>>,
    #[serde(default)]
    pub(crate) to: Option<Spanned<Vec<Spanned<RawOperation>>>>,
    #[serde(default)]
    pub(crate) when: Option<Spanned<Vec<Spanned<RawCondition>>>>,
}

/// A list field as written: where the list is, and where each item is.
pub(crate) type RawList<T> = Option<Spanned<Vec<Spanned<T>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawSource {
    #[serde(default)]
    pub(crate) principals: RawList<String>,
    #[serde(default)]
    pub(crate) not_principals: RawList<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawOperation {
    #[serde(default)]
    pub(crate) ports: RawList<RawPort>,
    #[serde(default)]
    pub(crate) not_ports: RawList<RawPort>,
    #[serde(default)]
    pub(crate) methods: RawList<String>,
    #[serde(default)]
    pub(crate) not_methods: RawList<String>,
    #[serde(default)]
    pub(crate) paths: RawList<String>,
    #[serde(default)]
    pub(crate) not_paths: RawList<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCondition {
    pub(crate) key: Spanned<String>,
    #[serde(default)]
    pub(crate) values: RawList<String>,
    #[serde(default)]
    pub(crate) not_values: RawList<String>,
}

/// A port as written: `8080` or, as Istio writes them, `"8080"`. Checked by the compiler so the
/// error can point at it.
pub(crate) struct RawPort(pub(crate) String);

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPort, E> {
                Ok(RawPort(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                Ok(RawPort(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPort, E> {
                Ok(RawPort(v.to_string()))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}
