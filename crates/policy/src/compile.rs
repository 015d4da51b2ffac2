//! From YAML text to a [`PolicySet`]: parsing, validation with locations, and compilation of
//! every pattern into the matchers of [`crate::pattern`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use hush_identity::TrustDomain;
use serde_saphyr::{Location, Spanned};

use crate::model::{
    Action, RawCondition, RawDocument, RawList, RawOperation, RawPort, RawRule, RawSource,
};
use crate::pattern::{MethodSet, PrincipalPattern, StrMatch, parse_header_key, parse_path};

/// The only `apiVersion` hush reads.
pub const API_VERSION: &str = "hush.dev/v1alpha1";
/// The only `kind` hush reads.
pub const KIND: &str = "AuthorizationPolicy";
/// The largest policy text accepted from one source.
pub const MAX_SOURCE_BYTES: usize = 4 * 1024 * 1024;

/// Policy text and where it came from (a file name, for errors).
#[derive(Clone, Debug)]
pub struct Source {
    /// Named in errors: `policies/backend.yaml`.
    pub origin: String,
    /// The YAML, one or several documents.
    pub text: String,
}

/// Why policy text was refused, with where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The file (or other source) the text came from.
    pub origin: String,
    /// 1-based line; 0 when the error concerns the whole source.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.origin, self.message),
            (line, 0) => write!(f, "{}:{line}: {}", self.origin, self.message),
            (line, column) => write!(f, "{}:{line}:{column}: {}", self.origin, self.message),
        }
    }
}

/// The facts about one policy that decisions, logs and metrics name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// `metadata.name`, unique in a set.
    pub name: Arc<str>,
    /// `metadata.namespace`: the policy applies only to workloads of that namespace.
    pub namespace: Option<Box<str>>,
    /// ALLOW, DENY or AUDIT.
    pub action: Action,
    /// Evaluated and reported, never enforced.
    pub dry_run: bool,
    /// The file it came from.
    pub origin: Arc<str>,
    /// Line of its `metadata` in that file.
    pub line: u64,
}

/// A compiled policy.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) info: PolicyInfo,
    /// Workload identities it applies to; all workloads when absent.
    pub(crate) selector: Option<Vec<PrincipalPattern>>,
    pub(crate) rules: Vec<Rule>,
}

/// One rule: it matches when a `from` entry, a `to` entry and every `when` condition match.
/// An empty list matches anything.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) from: Vec<SourceMatch>,
    pub(crate) to: Vec<Operation>,
    pub(crate) when: Vec<Condition>,
    pub(crate) line: u64,
    pub(crate) column: u64,
}

#[derive(Debug)]
pub(crate) struct SourceMatch {
    pub(crate) principals: Option<Vec<PrincipalPattern>>,
    pub(crate) not_principals: Option<Vec<PrincipalPattern>>,
}

#[derive(Debug, Default)]
pub(crate) struct Operation {
    pub(crate) ports: Option<Box<[u16]>>,
    pub(crate) not_ports: Option<Box<[u16]>>,
    pub(crate) methods: Option<MethodSet>,
    pub(crate) not_methods: Option<MethodSet>,
    pub(crate) paths: Option<Vec<StrMatch>>,
    pub(crate) not_paths: Option<Vec<StrMatch>>,
}

#[derive(Debug)]
pub(crate) struct Condition {
    pub(crate) header: Box<str>,
    pub(crate) values: Option<Vec<StrMatch>>,
    pub(crate) not_values: Option<Vec<StrMatch>>,
}

impl Rule {
    /// The HTTP fields the rule names, for messages; empty for a rule that works on TCP.
    pub(crate) fn http_fields(&self) -> Vec<&'static str> {
        let mut fields = Vec::new();
        for op in &self.to {
            for (present, name) in [
                (op.methods.is_some(), "methods"),
                (op.not_methods.is_some(), "notMethods"),
                (op.paths.is_some(), "paths"),
                (op.not_paths.is_some(), "notPaths"),
            ] {
                if present && !fields.contains(&name) {
                    fields.push(name);
                }
            }
        }
        if !self.when.is_empty() {
            fields.push("when");
        }
        fields
    }

    /// Whether the rule names any HTTP field (methods, paths, their not- forms, conditions).
    pub(crate) fn needs_http(&self) -> bool {
        !self.when.is_empty()
            || self.to.iter().any(|op| {
                op.methods.is_some()
                    || op.not_methods.is_some()
                    || op.paths.is_some()
                    || op.not_paths.is_some()
            })
    }

    /// Whether the rule names `paths` or `notPaths`.
    pub(crate) fn names_paths(&self) -> bool {
        self.to
            .iter()
            .any(|op| op.paths.is_some() || op.not_paths.is_some())
    }

    /// The keys under which the evaluator's index files the rule: the exact principals and
    /// the `…/`-ending prefixes its `from` entries are limited to. `None` for a rule some other
    /// caller could match (no `from`, an entry without `principals`, `*`, a suffix, or a
    /// prefix that does not end at a `/`).
    pub(crate) fn index_keys(&self) -> Option<Vec<IndexKey<'_>>> {
        if self.from.is_empty() {
            return None;
        }
        let mut keys = Vec::new();
        for source in &self.from {
            for pattern in source.principals.as_ref()? {
                keys.push(match &pattern.matcher {
                    StrMatch::Exact(id) => IndexKey::Exact(id),
                    StrMatch::Prefix(prefix) if prefix.ends_with('/') => IndexKey::Prefix(prefix),
                    _ => return None,
                });
            }
        }
        Some(keys)
    }
}

/// Where the evaluator's index files a rule.
pub(crate) enum IndexKey<'a> {
    /// Under one SPIFFE ID.
    Exact(&'a str),
    /// Under an ID prefix ending in `/`: `spiffe://td/ns/ops/`.
    Prefix(&'a str),
}

/// A validated, compiled set of policies, in the order they were read.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub(crate) policies: Vec<Arc<Policy>>,
    /// Whether a source holds `[]`: no policy, on purpose.
    declares_none: bool,
}

impl PolicySet {
    /// Parses and validates every source. All sources are read even after an error, so one
    /// run reports a problem in each broken file; the set is returned only if there is none.
    pub fn parse(sources: &[Source]) -> Result<Self, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut policies: Vec<Arc<Policy>> = Vec::new();
        let mut declares_none = false;
        for source in sources {
            if declares_no_policy(&source.text) {
                declares_none = true;
                continue;
            }
            match parse_source(source) {
                Ok(parsed) => policies.extend(parsed.into_iter().map(Arc::new)),
                Err(error) => errors.push(error),
            }
        }
        let mut seen = HashSet::new();
        for policy in &policies {
            if !seen.insert(policy.info.name.clone()) {
                let first = policies
                    .iter()
                    .find(|p| p.info.name == policy.info.name)
                    .map(|p| format!("{}:{}", p.info.origin, p.info.line))
                    .unwrap_or_default();
                errors.push(PolicyError {
                    origin: policy.info.origin.to_string(),
                    line: policy.info.line,
                    column: 0,
                    message: format!(
                        "a policy named {:?} is already defined at {first}; names identify \
                         policies in decisions and metrics, so they must be unique",
                        policy.info.name
                    ),
                });
            }
        }
        if errors.is_empty() {
            Ok(Self {
                policies,
                declares_none,
            })
        } else {
            Err(errors)
        }
    }

    /// Parses a single text (a convenience for tests and tools).
    pub fn parse_str(origin: &str, text: &str) -> Result<Self, Vec<PolicyError>> {
        Self::parse(&[Source {
            origin: origin.to_string(),
            text: text.to_string(),
        }])
    }

    /// The policies, in the order they were read.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &PolicyInfo> {
        self.policies.iter().map(|p| &p.info)
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set holds no policy at all.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether a source says, with a file holding only `[]` (an empty list of policies), that
    /// there is no policy on purpose. A sidecar takes a set that is empty without saying so
    /// for a mistake, such as a deleted ConfigMap.
    pub fn declares_no_policy(&self) -> bool {
        self.declares_none
    }

    /// Selector identities of another trust domain than `trust_domain`: a policy selects the
    /// workloads of this mesh, so such a pattern can never match (often a typo in the domain).
    ///
    /// Principals of another trust domain are not errors: they are how a policy lets in the
    /// callers of a federated trust domain (and nothing else does).
    pub fn foreign_principals(&self, trust_domain: &TrustDomain) -> Vec<PolicyError> {
        let mut errors = Vec::new();
        for policy in &self.policies {
            for pattern in policy.selector.iter().flatten() {
                if let Some(domain) = &pattern.trust_domain
                    && domain != trust_domain
                {
                    errors.push(PolicyError {
                        origin: policy.info.origin.to_string(),
                        line: pattern.at.0,
                        column: pattern.at.1,
                        message: format!(
                            "policy {:?}: selector {} is in trust domain {domain}, but this \
                             mesh's is {trust_domain}, so it can never match",
                            policy.info.name, pattern.matcher
                        ),
                    });
                }
            }
        }
        errors
    }

    /// The trust domains other than `trust_domain` that principals name: the federated
    /// domains the policy lets in (or means to).
    pub fn foreign_trust_domains(&self, trust_domain: &TrustDomain) -> Vec<TrustDomain> {
        let mut domains: Vec<TrustDomain> = self
            .policies
            .iter()
            .flat_map(|policy| policy.rules.iter().flat_map(|rule| &rule.from))
            .flat_map(|source| source.principals.iter().flatten())
            .filter_map(|pattern| pattern.trust_domain.clone())
            .filter(|domain| domain != trust_domain)
            .collect();
        domains.sort();
        domains.dedup();
        domains
    }

    /// How many rules all policies hold together.
    pub fn rule_count(&self) -> usize {
        self.policies.iter().map(|p| p.rules.len()).sum()
    }
}

/// Whether `text` is `[]` and nothing else but comments, blank lines and document markers.
fn declares_no_policy(text: &str) -> bool {
    let mut content = String::new();
    for line in text.lines() {
        // A `#` starts a comment at the start of a line or after a space; `[]` has no other.
        let line = match line.find('#') {
            Some(0) => "",
            Some(at) if line[..at].ends_with([' ', '\t']) => &line[..at],
            _ => line,
        };
        let line = line.trim();
        if line != "---" && line != "..." {
            content.extend(line.chars().filter(|c| !c.is_whitespace()));
        }
    }
    content == "[]"
}

fn parse_source(source: &Source) -> Result<Vec<Policy>, PolicyError> {
    let whole = |message: String| PolicyError {
        origin: source.origin.clone(),
        line: 0,
        column: 0,
        message,
    };
    if source.text.len() > MAX_SOURCE_BYTES {
        return Err(whole(format!(
            "{} bytes is more policy text than hush reads from one file ({MAX_SOURCE_BYTES})",
            source.text.len()
        )));
    }
    let documents: Vec<RawDocument> = serde_saphyr::from_multiple(&source.text).map_err(|e| {
        let location = e.location();
        PolicyError {
            origin: source.origin.clone(),
            line: location.map_or(0, |l| l.line()),
            column: location.map_or(0, |l| l.column()),
            message: yaml_message(&e),
        }
    })?;
    let origin: Arc<str> = source.origin.as_str().into();
    documents
        .into_iter()
        .map(|document| Compiler { origin: &origin }.document(document))
        .collect()
}

/// serde-saphyr's message without the location and snippet it adds (the error carries the
/// location in hush's own `file:line:column` form).
fn yaml_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "line 3 column 7: message" → "message"
    let without_location = first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(location, _)| {
            location
                .chars()
                .all(|c| c.is_ascii_digit() || c == ' ' || c.is_ascii_lowercase())
        })
        .map_or(first, |(_, message)| message);
    without_location.trim().to_string()
}

struct Compiler<'a> {
    origin: &'a Arc<str>,
}

impl Compiler<'_> {
    fn error(&self, at: Location, message: impl Into<String>) -> PolicyError {
        PolicyError {
            origin: self.origin.to_string(),
            line: at.line(),
            column: at.column(),
            message: message.into(),
        }
    }

    fn document(&self, document: RawDocument) -> Result<Policy, PolicyError> {
        if document.api_version.value != crate::API_VERSION {
            return Err(self.error(
                document.api_version.referenced,
                format!(
                    "apiVersion {:?} is not one hush reads; write {API_VERSION:?}",
                    document.api_version.value
                ),
            ));
        }
        if document.kind.value != KIND {
            return Err(self.error(
                document.kind.referenced,
                format!(
                    "kind {:?} is not one hush reads; write {KIND:?}",
                    document.kind.value
                ),
            ));
        }
        let metadata = document.metadata.value;
        let name = &metadata.name;
        check_name(&name.value).map_err(|e| self.error(name.referenced, e))?;
        let namespace = match metadata.namespace {
            Some(ns) => {
                check_label(&ns.value)
                    .map_err(|e| self.error(ns.referenced, format!("namespace: {e}")))?;
                Some(ns.value.into_boxed_str())
            }
            None => None,
        };
        let spec = document.spec.value;
        let action = spec.action.as_ref().map_or(Action::Allow, |a| a.value);
        let dry_run = spec.dry_run.as_ref().is_some_and(|d| d.value);
        if let Some(dry) = &spec.dry_run
            && dry.value
            && action == Action::Audit
        {
            return Err(self.error(
                dry.referenced,
                "dryRun has no meaning on an AUDIT policy, which never changes a decision",
            ));
        }
        let selector = match spec.selector {
            Some(selector) => {
                let identities = selector.value.identities;
                Some(self.principals("selector.identities", identities)?)
            }
            None => None,
        };
        let rules = spec
            .rules
            .unwrap_or_default()
            .into_iter()
            .map(|rule| self.rule(rule))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            info: PolicyInfo {
                name: name.value.as_str().into(),
                namespace,
                action,
                dry_run,
                origin: self.origin.clone(),
                line: document.metadata.referenced.line(),
            },
            selector,
            rules,
        })
    }

    fn rule(&self, rule: Spanned<RawRule>) -> Result<Rule, PolicyError> {
        let at = rule.referenced;
        let raw = rule.value;
        let from = match raw.from {
            Some(list) => self
                .non_empty("from", list)?
                .into_iter()
                .map(|source| self.source(source))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let to = match raw.to {
            Some(list) => self
                .non_empty("to", list)?
                .into_iter()
                .map(|op| self.operation(op))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let when = match raw.when {
            Some(list) => self
                .non_empty("when", list)?
                .into_iter()
                .map(|condition| self.condition(condition))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Rule {
            from,
            to,
            when,
            line: at.line(),
            column: at.column(),
        })
    }

    /// An empty list is refused: in Istio it means "anything", which is rarely what someone
    /// who wrote `principals: []` (often a template with nothing filled in) meant.
    fn non_empty<T>(
        &self,
        field: &str,
        list: Spanned<Vec<Spanned<T>>>,
    ) -> Result<Vec<Spanned<T>>, PolicyError> {
        if list.value.is_empty() {
            return Err(self.error(
                list.referenced,
                format!("{field}: an empty list; remove the field to match anything, or name at least one entry"),
            ));
        }
        Ok(list.value)
    }

    fn source(&self, source: Spanned<RawSource>) -> Result<SourceMatch, PolicyError> {
        let RawSource {
            principals,
            not_principals,
        } = source.value;
        if principals.is_none() && not_principals.is_none() {
            return Err(self.error(
                source.referenced,
                "from: an entry names neither principals nor notPrincipals",
            ));
        }
        Ok(SourceMatch {
            principals: self.optional_principals("principals", principals)?,
            not_principals: self.optional_principals("notPrincipals", not_principals)?,
        })
    }

    fn optional_principals(
        &self,
        field: &str,
        list: RawList<String>,
    ) -> Result<Option<Vec<PrincipalPattern>>, PolicyError> {
        list.map(|list| self.principals(field, list)).transpose()
    }

    fn principals(
        &self,
        field: &str,
        list: Spanned<Vec<Spanned<String>>>,
    ) -> Result<Vec<PrincipalPattern>, PolicyError> {
        self.non_empty(field, list)?
            .into_iter()
            .map(|item| {
                let mut pattern = PrincipalPattern::parse(&item.value)
                    .map_err(|e| self.error(item.referenced, format!("{field}: {e}")))?;
                pattern.at = (item.referenced.line(), item.referenced.column());
                Ok(pattern)
            })
            .collect()
    }

    fn operation(&self, op: Spanned<RawOperation>) -> Result<Operation, PolicyError> {
        let RawOperation {
            ports,
            not_ports,
            methods,
            not_methods,
            paths,
            not_paths,
        } = op.value;
        let compiled = Operation {
            ports: self.ports("ports", ports)?,
            not_ports: self.ports("notPorts", not_ports)?,
            methods: self.methods("methods", methods)?,
            not_methods: self.methods("notMethods", not_methods)?,
            paths: self.paths("paths", paths)?,
            not_paths: self.paths("notPaths", not_paths)?,
        };
        let empty = compiled.ports.is_none()
            && compiled.not_ports.is_none()
            && compiled.methods.is_none()
            && compiled.not_methods.is_none()
            && compiled.paths.is_none()
            && compiled.not_paths.is_none();
        if empty {
            return Err(self.error(
                op.referenced,
                "to: an entry names no ports, methods or paths (or their not- forms)",
            ));
        }
        Ok(compiled)
    }

    fn ports(
        &self,
        field: &str,
        list: RawList<RawPort>,
    ) -> Result<Option<Box<[u16]>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        let mut ports = Vec::new();
        for item in self.non_empty(field, list)? {
            let text = item.value.0.trim();
            match text.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => {
                    return Err(self.error(
                        item.referenced,
                        format!("{field}: {text:?} is not a port (1-65535)"),
                    ));
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        Ok(Some(ports.into_boxed_slice()))
    }

    fn methods(
        &self,
        field: &str,
        list: RawList<String>,
    ) -> Result<Option<MethodSet>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        let mut set = MethodSet::default();
        for item in self.non_empty(field, list)? {
            set.parse_into(&item.value)
                .map_err(|e| self.error(item.referenced, format!("{field}: {e}")))?;
        }
        Ok(Some(set))
    }

    fn paths(
        &self,
        field: &str,
        list: RawList<String>,
    ) -> Result<Option<Vec<StrMatch>>, PolicyError> {
        let Some(list) = list else { return Ok(None) };
        self.non_empty(field, list)?
            .into_iter()
            .map(|item| {
                parse_path(&item.value)
                    .map_err(|e| self.error(item.referenced, format!("{field}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn condition(&self, condition: Spanned<RawCondition>) -> Result<Condition, PolicyError> {
        let RawCondition {
            key,
            values,
            not_values,
        } = condition.value;
        let header = parse_header_key(&key.value).map_err(|e| self.error(key.referenced, e))?;
        if values.is_none() && not_values.is_none() {
            return Err(self.error(
                condition.referenced,
                "when: a condition names neither values nor notValues",
            ));
        }
        let patterns = |field: &str, list: RawList<String>| {
            list.map(|list| {
                self.non_empty(field, list)?
                    .into_iter()
                    .map(|item| {
                        StrMatch::parse(&item.value)
                            .map_err(|e| self.error(item.referenced, format!("{field}: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
        };
        Ok(Condition {
            header,
            values: patterns("values", values)?,
            not_values: patterns("notValues", not_values)?,
        })
    }
}

/// Policy names appear in HTTP answers, logs and metric labels: a Kubernetes-style name keeps
/// them safe in all three.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "metadata.name {name:?}: a policy name is 1-253 lower-case letters, digits, `-` \
             and `.`, starting and ending with a letter or digit"
        ))
    }
}

fn check_label(label: &str) -> Result<(), String> {
    let valid = !label.is_empty()
        && label.len() <= 63
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{label:?} is not a Kubernetes namespace name (1-63 lower-case letters, digits and \
             `-`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        PolicySet::parse_str("p.yaml", text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const HEADER: &str = "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\n";

    #[test]
    fn a_policy_compiles_with_its_origin() {
        let text = format!(
            "{HEADER}metadata:\n  name: backend-api\nspec:\n  action: ALLOW\n  rules:\n  \
             - from:\n    - principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]\n    \
             to:\n    - ports: [8080, \"9090\"]\n      methods: [GET]\n"
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let info = set.policies().next().unwrap();
        assert_eq!(&*info.name, "backend-api");
        assert_eq!(info.action, Action::Allow);
        assert_eq!(info.line, 4);
        assert_eq!(set.rule_count(), 1);
        let rule = &set.policies[0].rules[0];
        assert_eq!((rule.line, rule.column), (8, 5));
        assert_eq!(rule.to[0].ports.as_deref(), Some(&[8080, 9090][..]));
    }

    #[test]
    fn errors_point_at_file_line_and_column() {
        let cases = [
            (
                "metadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - methods: [GTE]\n",
                "p.yaml:8:17: methods: unknown method \"GTE\"",
            ),
            (
                "metadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - ports: [0]\n",
                "p.yaml:8:15: ports: \"0\" is not a port",
            ),
            (
                "metadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - ports: [70000]\n",
                "p.yaml:8:15: ports: \"70000\" is not a port",
            ),
            (
                "metadata:\n  name: a\nspec:\n  rules:\n  - from:\n    - principals: [\"frontend\"]\n",
                "p.yaml:8:20: principals: \"frontend\" is not a SPIFFE ID pattern",
            ),
            (
                "metadata:\n  name: a\nspec:\n  rulez: []\n",
                "p.yaml:6:3: unknown field `rulez`",
            ),
            (
                "metadata:\n  name: a\nspec:\n  action: REJECT\n",
                "p.yaml:6:11: unknown variant `REJECT`",
            ),
            (
                "metadata:\n  name: Backend\nspec: {}\n",
                "p.yaml:4:9: metadata.name \"Backend\"",
            ),
            (
                "metadata:\n  name: a\nspec:\n  rules:\n  - when:\n    - key: source.ip\n      values: [\"1\"]\n",
                "p.yaml:8:12: unknown condition key \"source.ip\"",
            ),
            (
                "metadata:\n  name: a\nspec:\n  rules:\n  - from: []\n",
                "p.yaml:7:11: from: an empty list",
            ),
            (
                "metadata:\n  name: a\nspec:\n  rules:\n  - to:\n    - {}\n",
                "p.yaml:8:7: to: an entry names no ports",
            ),
            (
                "metadata:\n  name: a\nspec:\n  action: AUDIT\n  dryRun: true\n",
                "p.yaml:7:11: dryRun has no meaning",
            ),
        ];
        for (body, expected) in cases {
            let got = errors(&format!("{HEADER}{body}"));
            assert_eq!(got.len(), 1, "{body}: {got:?}");
            assert!(
                got[0].starts_with(expected),
                "{body}\n got: {}\nwant: {expected}",
                got[0]
            );
        }
    }

    #[test]
    fn kind_and_version_are_checked() {
        let got = errors(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n",
        );
        assert!(got[0].contains("write \"hush.dev/v1alpha1\""), "{got:?}");
        let got =
            errors("apiVersion: hush.dev/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec: {}\n");
        assert!(got[0].starts_with("p.yaml:2:7: kind \"Policy\""), "{got:?}");
    }

    #[test]
    fn broken_yaml_is_located() {
        let got = errors("apiVersion: [\n");
        assert!(got[0].starts_with("p.yaml:"), "{got:?}");
        assert!(!got[0].contains('\n'), "one line: {got:?}");
    }

    #[test]
    fn every_broken_source_is_reported_and_names_are_unique() {
        let good = format!("{HEADER}metadata: {{name: a}}\nspec: {{}}\n");
        let bad = format!("{HEADER}metadata: {{name: b}}\nspec: {{action: NOPE}}\n");
        let sources = [
            Source {
                origin: "1.yaml".into(),
                text: bad.clone(),
            },
            Source {
                origin: "2.yaml".into(),
                text: good.clone(),
            },
            Source {
                origin: "3.yaml".into(),
                text: bad,
            },
            Source {
                origin: "4.yaml".into(),
                text: good,
            },
        ];
        let got = PolicySet::parse(&sources).unwrap_err();
        let origins: Vec<&str> = got.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(origins, ["1.yaml", "3.yaml", "4.yaml"], "{got:?}");
        assert!(
            got[2].message.contains("already defined at 2.yaml:3"),
            "{got:?}"
        );
    }

    #[test]
    fn several_documents_make_several_policies() {
        let text = format!(
            "{HEADER}metadata: {{name: a}}\nspec: {{}}\n---\n{HEADER}metadata: {{name: b}}\nspec: {{action: DENY}}\n"
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let names: Vec<&str> = set.policies().map(|p| &*p.name).collect();
        assert_eq!(names, ["a", "b"]);
        let empty = PolicySet::parse_str("empty.yaml", "").unwrap();
        assert!(empty.is_empty() && !empty.declares_no_policy());
    }

    #[test]
    fn an_empty_list_says_there_is_no_policy_on_purpose() {
        for text in [
            "[]",
            "[]\n",
            "# every policy removed on purpose\n[ ]  # none\n",
            "---\n[]\n...\n",
        ] {
            let set = PolicySet::parse_str("none.yaml", text).unwrap();
            assert!(set.is_empty() && set.declares_no_policy(), "{text:?}");
        }
        for text in ["", "# nothing\n", "---\n", "[]\n---\n[]x\n", "[a]"] {
            let declared =
                PolicySet::parse_str("x.yaml", text).is_ok_and(|s| s.declares_no_policy());
            assert!(!declared, "{text:?}");
        }
        // Next to policies it changes nothing.
        let sources = [
            Source {
                origin: "none.yaml".into(),
                text: "[]".into(),
            },
            Source {
                origin: "a.yaml".into(),
                text: format!("{HEADER}metadata: {{name: a}}\nspec: {{}}\n"),
            },
        ];
        let set = PolicySet::parse(&sources).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        let text = " ".repeat(MAX_SOURCE_BYTES + 1);
        let got = errors(&text);
        assert!(
            got[0].contains("more policy text than hush reads"),
            "{got:?}"
        );
    }
}
