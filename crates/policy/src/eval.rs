//! Decisions: the policies that apply to one workload, indexed by caller, and the evaluation
//! of a request against them.
//!
//! Evaluation allocates nothing for an ordinary request: the caller's SPIFFE ID is looked up
//! in a map from exact principals to the rules that name them, and only those rules and the
//! ones written with wildcards are checked, in the order they were written. (Paths that need
//! normalizing and headers sent more than once are copied.)

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hush_identity::SpiffeId;

use crate::compile::{
    Condition, IndexKey, Operation, Policy, PolicyError, PolicyInfo, PolicySet, Rule,
};
use crate::model::Action;
use crate::pattern::{MethodSet, PrincipalPattern, normalize_path};

/// What happens to a request no policy speaks about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultAction {
    /// Any authenticated mesh identity gets through (until an ALLOW policy applies).
    #[default]
    Allow,
    /// Nothing gets through that an ALLOW policy does not allow.
    Deny,
}

/// Allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request goes to the app.
    Allow,
    /// The request is refused.
    Deny,
}

impl Verdict {
    /// `allow` or `deny`, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// Request headers, looked up by lower-case name. Several values of one header are joined
/// with `, ` (as HTTP allows), so a condition sees the whole field.
pub trait Headers {
    /// The value of `name` (lower case), or `None` when the request does not carry it.
    fn get(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl Headers for &[(&str, &str)] {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        join_values(
            self.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v),
        )
    }
}

impl Headers for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        join_values(
            self.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
        )
    }
}

/// One value as it is, several joined with `, `.
pub fn join_values<'v>(mut values: impl Iterator<Item = &'v str>) -> Option<Cow<'v, str>> {
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first}, {second}");
            for value in values {
                joined.push_str(", ");
                joined.push_str(value);
            }
            Some(Cow::Owned(joined))
        }
    }
}

/// What is being decided: a connection (TCP) or an HTTP request, from a verified caller.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The caller's verified SPIFFE ID.
    pub principal: &'a str,
    /// The destination port: the port of the app the sidecar forwards to.
    pub port: u16,
    /// The HTTP request, or `None` for an opaque TCP connection.
    pub http: Option<HttpRequest<'a>>,
}

/// The parts of an HTTP request a policy can look at.
#[derive(Clone, Copy)]
pub struct HttpRequest<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path; a query string, if present, is ignored.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a dyn Headers,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Request");
        s.field("principal", &self.principal)
            .field("port", &self.port);
        if let Some(http) = &self.http {
            s.field("method", &http.method).field("path", &http.path);
        }
        s.finish()
    }
}

/// A rule that matched, with the policy it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRef<'p> {
    /// The policy.
    pub policy: &'p PolicyInfo,
    /// The rule's index in `spec.rules` (0-based).
    pub rule: usize,
    /// The rule's line in the policy file.
    pub line: u64,
}

/// Why a request was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason<'p> {
    /// A DENY rule (when denied) or an ALLOW rule (when allowed) matched.
    Rule(RuleRef<'p>),
    /// ALLOW policies apply to the workload and none of their rules matched.
    NoAllowRuleMatched {
        /// The ALLOW policies that applied, comma-separated.
        policies: &'p str,
    },
    /// No ALLOW or DENY policy applies; the default decided.
    Default(DefaultAction),
}

/// A decision and what led to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'p> {
    /// Allowed or denied.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason<'p>,
    /// The first AUDIT rule that matched, if one did: the request belongs in the audit log.
    pub audit: Option<RuleRef<'p>>,
    /// What dry-run policies would have changed, if anything.
    pub dry_run: Option<DryRun<'p>>,
}

/// A dry-run policy would have decided otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DryRun<'p> {
    /// The dry-run policy responsible.
    pub policy: &'p PolicyInfo,
    /// What the decision would have been with dry-run policies enforced.
    pub verdict: Verdict,
    /// Why it would have been so.
    pub reason: Reason<'p>,
}

impl Decision<'_> {
    /// Whether the request goes through.
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// The deciding policy's name, or `None` when no policy rule decided.
    pub fn policy_name(&self) -> Option<&str> {
        match self.reason {
            Reason::Rule(rule) => Some(&rule.policy.name),
            _ => None,
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule(rule) => write!(
                f,
                "{} policy {:?}, rule {} ({}:{})",
                rule.policy.action, rule.policy.name, rule.rule, rule.policy.origin, rule.line
            ),
            Self::NoAllowRuleMatched { policies } => {
                write!(f, "no ALLOW rule matched (policies: {policies})")
            }
            Self::Default(DefaultAction::Allow) => {
                f.write_str("no policy applies and the default is allow")
            }
            Self::Default(DefaultAction::Deny) => {
                f.write_str("no policy allows it and the default is deny")
            }
        }
    }
}

impl fmt::Display for Decision<'_> {
    /// `denied by DENY policy "x", rule 0 (file:line)`: the sentence a refused caller reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.verdict {
            Verdict::Allow => "allowed",
            Verdict::Deny => "denied",
        };
        match self.reason {
            Reason::Rule(_) => write!(f, "{verb} by {}", self.reason),
            _ => write!(f, "{verb}: {}", self.reason),
        }
    }
}

/// The rules of one action, with the index that finds a caller's candidates.
#[derive(Debug, Default)]
struct RuleIndex {
    /// (policy, rule) positions, in the order they were written.
    rules: Vec<(u32, u32)>,
    /// Exact principal → positions in `rules` of the rules that name it. Hashed with
    /// foldhash rather than SipHash: the keys are the operator's, so there is no flooding to
    /// defend against, and a decision makes several lookups.
    by_principal: HashMap<Box<str>, Vec<u32>, RandomState>,
    /// Principal prefix ending in `/` (`spiffe://td/ns/ops/`) → positions of the rules that
    /// name it with a wildcard.
    by_prefix: HashMap<Box<str>, Vec<u32>, RandomState>,
    /// Positions of every other rule: these are tried for every caller.
    unindexed: Vec<u32>,
}

/// The most position lists one lookup merges; a caller whose ID has more `/`-prefixes than
/// fit is checked against every rule instead (slower, same answer).
const MAX_CANDIDATE_LISTS: usize = 16;

impl RuleIndex {
    fn add(&mut self, policy: u32, rule_index: u32, rule: &Rule) {
        let position = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        self.rules.push((policy, rule_index));
        let Some(keys) = rule.index_keys() else {
            self.unindexed.push(position);
            return;
        };
        for key in keys {
            let (map, key) = match key {
                IndexKey::Exact(id) => (&mut self.by_principal, id),
                IndexKey::Prefix(prefix) => (&mut self.by_prefix, prefix),
            };
            let entry = map.entry(key.into()).or_default();
            if entry.last() != Some(&position) {
                entry.push(position);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule (in written order) that matches.
    fn first_match<'s>(
        &'s self,
        policies: &[Arc<Policy>],
        ctx: &Context<'_>,
        tcp_matches_http_rules: bool,
    ) -> Option<(u32, u32)> {
        if self.rules.is_empty() {
            return None;
        }
        let matches = |position: u32| {
            let (policy, rule) = self.rules[position as usize];
            let compiled = &policies[policy as usize].rules[rule as usize];
            rule_matches(compiled, ctx, tcp_matches_http_rules, &mut NoTrace)
                .then_some((policy, rule))
        };
        // The candidate lists: the caller's exact ID, each of its prefixes ending in `/`, and
        // the rules no key describes. Each list is in written order.
        let mut lists: [&'s [u32]; MAX_CANDIDATE_LISTS] = [&[]; MAX_CANDIDATE_LISTS];
        let mut count = 0;
        let mut push = |list: &'s [u32]| -> bool {
            if list.is_empty() {
                return true;
            }
            if count == MAX_CANDIDATE_LISTS {
                return false;
            }
            lists[count] = list;
            count += 1;
            true
        };
        let mut fits = push(&self.unindexed);
        if let Some(list) = self.by_principal.get(ctx.principal) {
            fits &= push(list);
        }
        if !self.by_prefix.is_empty() {
            let after_scheme = ctx.principal.find("://").map_or(0, |i| i + 3);
            for (i, byte) in ctx.principal.bytes().enumerate().skip(after_scheme) {
                if byte == b'/'
                    && let Some(list) = self.by_prefix.get(&ctx.principal[..=i])
                {
                    fits &= push(list);
                }
            }
        }
        if !fits {
            return (0..u32::try_from(self.rules.len()).unwrap_or(u32::MAX)).find_map(matches);
        }
        // Walk the lists together, smallest position first, so the first match found is the
        // first written. A rule filed under two of the caller's keys is tried once.
        let lists = &mut lists[..count];
        let mut last = None;
        loop {
            let (which, position) = lists
                .iter()
                .enumerate()
                .filter_map(|(i, list)| list.first().map(|p| (i, *p)))
                .min_by_key(|(_, p)| *p)?;
            lists[which] = &lists[which][1..];
            if last == Some(position) {
                continue;
            }
            last = Some(position);
            if let Some(found) = matches(position) {
                return Some(found);
            }
        }
    }
}

/// The policies that apply to one workload, compiled for its decisions.
#[derive(Debug)]
pub struct WorkloadPolicy {
    policies: Vec<Arc<Policy>>,
    default: DefaultAction,
    deny: RuleIndex,
    allow: RuleIndex,
    audit: RuleIndex,
    dry_deny: RuleIndex,
    dry_allow: RuleIndex,
    has_allow: bool,
    /// The first dry-run ALLOW policy: the one named when dry-run ALLOW policies would deny.
    first_dry_allow: Option<u32>,
    /// Names of the ALLOW policies, for "no ALLOW rule matched"; made once.
    allow_names: Box<str>,
    allow_names_with_dry_run: Box<str>,
}

impl PolicySet {
    /// The policies that apply to `workload` (its `metadata.namespace` and `spec.selector`
    /// match it), ready to decide. With no workload, every policy applies.
    pub fn for_workload(
        &self,
        workload: Option<&SpiffeId>,
        default: DefaultAction,
    ) -> WorkloadPolicy {
        let policies: Vec<Arc<Policy>> = self
            .policies
            .iter()
            .filter(|p| workload.is_none_or(|w| applies_to(p, w).is_ok()))
            .cloned()
            .collect();
        let mut compiled = WorkloadPolicy {
            policies: Vec::new(),
            default,
            deny: RuleIndex::default(),
            allow: RuleIndex::default(),
            audit: RuleIndex::default(),
            dry_deny: RuleIndex::default(),
            dry_allow: RuleIndex::default(),
            has_allow: false,
            first_dry_allow: None,
            allow_names: Box::default(),
            allow_names_with_dry_run: Box::default(),
        };
        for (p, policy) in policies.iter().enumerate() {
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            let info = &policy.info;
            let index = match (info.action, info.dry_run) {
                (Action::Deny, false) => &mut compiled.deny,
                (Action::Deny, true) => &mut compiled.dry_deny,
                (Action::Allow, false) => {
                    compiled.has_allow = true;
                    &mut compiled.allow
                }
                (Action::Allow, true) => {
                    compiled.first_dry_allow.get_or_insert(p);
                    &mut compiled.dry_allow
                }
                (Action::Audit, _) => &mut compiled.audit,
            };
            for (r, rule) in policy.rules.iter().enumerate() {
                index.add(p, u32::try_from(r).unwrap_or(u32::MAX), rule);
            }
        }
        let names = |with_dry_run: bool| -> Box<str> {
            let names: Vec<&str> = policies
                .iter()
                .filter(|p| p.info.action == Action::Allow && (with_dry_run || !p.info.dry_run))
                .map(|p| &*p.info.name)
                .collect();
            names.join(", ").into_boxed_str()
        };
        compiled.allow_names = names(false);
        compiled.allow_names_with_dry_run = names(true);
        compiled.policies = policies;
        compiled
    }
}

impl PolicySet {
    /// Rules that name HTTP fields and could apply to `port`, reported as errors for a port
    /// the sidecar serves as opaque TCP: such a rule could never match there (ALLOW) or would
    /// refuse every connection (DENY).
    ///
    /// With a workload, the policies that apply to it are checked; without one, only those
    /// that apply to every workload (no selector, no namespace).
    pub fn http_rules_on_tcp_port(
        &self,
        workload: Option<&SpiffeId>,
        port: u16,
    ) -> Vec<PolicyError> {
        let mut errors = Vec::new();
        let applies = |policy: &Policy| match workload {
            Some(workload) => applies_to(policy, workload).is_ok(),
            None => policy.selector.is_none() && policy.info.namespace.is_none(),
        };
        for policy in self.policies.iter().filter(|p| applies(p)) {
            for (index, rule) in policy.rules.iter().enumerate() {
                if !rule.needs_http() {
                    continue;
                }
                let fields = rule.http_fields();
                let reaches_port =
                    rule.to.is_empty() || rule.to.iter().any(|op| port_matches(op, port));
                if reaches_port {
                    errors.push(PolicyError {
                        origin: policy.info.origin.to_string(),
                        line: rule.line,
                        column: rule.column,
                        message: format!(
                            "policy {:?}, rule {index} names HTTP fields ({}) but port {port} \
                             is served as opaque TCP, where requests have no method, path or \
                             headers; limit the rule to HTTP ports with `ports`, or set the \
                             inbound protocol",
                            policy.info.name,
                            fields.join(", ")
                        ),
                    });
                }
            }
        }
        errors
    }
}

/// Whether a policy applies to a workload, or why not.
pub(crate) fn applies_to(policy: &Policy, workload: &SpiffeId) -> Result<(), String> {
    if let Some(namespace) = &policy.info.namespace {
        let in_namespace = workload
            .path()
            .strip_prefix("/ns/")
            .and_then(|rest| rest.split('/').next())
            == Some(&**namespace);
        if !in_namespace {
            return Err(format!(
                "its namespace is {namespace:?} and {workload} is not in it (/ns/{namespace}/…)"
            ));
        }
    }
    if let Some(selector) = &policy.selector
        && !selector
            .iter()
            .any(|s| s.matcher.matches(workload.as_str()))
    {
        return Err(format!(
            "its selector names {} and {workload} is not among them",
            list(selector.iter().map(|s| &s.matcher))
        ));
    }
    Ok(())
}

impl WorkloadPolicy {
    /// Decides a request.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision<'_> {
        let path = request.http.map(|http| request_path_for(http.path));
        let ctx = Context::new(request, path.as_deref());
        let (verdict, reason) = self.decide(&ctx, false);
        let audit = self
            .audit
            .first_match(&self.policies, &ctx, false)
            .map(|(p, r)| self.rule_ref(p, r));
        let dry_run = if self.dry_deny.is_empty() && self.dry_allow.is_empty() {
            None
        } else {
            let (would, why) = self.decide(&ctx, true);
            (would != verdict).then(|| DryRun {
                policy: match why {
                    Reason::Rule(rule) => rule.policy,
                    _ => self.first_dry_allow.map_or_else(
                        || &self.policies[0].info,
                        |p| &self.policies[p as usize].info,
                    ),
                },
                verdict: would,
                reason: why,
            })
        };
        Decision {
            verdict,
            reason,
            audit,
            dry_run,
        }
    }

    fn decide(&self, ctx: &Context<'_>, with_dry_run: bool) -> (Verdict, Reason<'_>) {
        // A DENY rule naming HTTP fields denies a TCP connection as a whole: it cannot tell
        // what the connection will carry, and letting it through could let that through.
        let deny = self
            .deny
            .first_match(&self.policies, ctx, true)
            .or_else(|| {
                with_dry_run
                    .then(|| self.dry_deny.first_match(&self.policies, ctx, true))
                    .flatten()
            });
        if let Some((p, r)) = deny {
            return (Verdict::Deny, Reason::Rule(self.rule_ref(p, r)));
        }
        let allow_applies = self.has_allow || (with_dry_run && self.first_dry_allow.is_some());
        if allow_applies {
            let allow = self
                .allow
                .first_match(&self.policies, ctx, false)
                .or_else(|| {
                    with_dry_run
                        .then(|| self.dry_allow.first_match(&self.policies, ctx, false))
                        .flatten()
                });
            return match allow {
                Some((p, r)) => (Verdict::Allow, Reason::Rule(self.rule_ref(p, r))),
                None => (
                    Verdict::Deny,
                    Reason::NoAllowRuleMatched {
                        policies: if with_dry_run {
                            &self.allow_names_with_dry_run
                        } else {
                            &self.allow_names
                        },
                    },
                ),
            };
        }
        let verdict = match self.default {
            DefaultAction::Allow => Verdict::Allow,
            DefaultAction::Deny => Verdict::Deny,
        };
        (verdict, Reason::Default(self.default))
    }

    fn rule_ref(&self, policy: u32, rule: u32) -> RuleRef<'_> {
        let policy = &self.policies[policy as usize];
        RuleRef {
            policy: &policy.info,
            rule: rule as usize,
            line: policy.rules[rule as usize].line,
        }
    }

    /// The policies that apply, in the order they were read.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &PolicyInfo> {
        self.policies.iter().map(|p| &p.info)
    }

    /// What happens when no policy speaks.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }
}

/// The path a request is judged on: without its query string, normalized.
pub(crate) fn request_path_for(path: &str) -> Cow<'_, str> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    normalize_path(&path[..end])
}

/// A request prepared for matching.
pub(crate) struct Context<'a> {
    pub(crate) principal: &'a str,
    pub(crate) port: u16,
    pub(crate) http: Option<HttpContext<'a>>,
}

pub(crate) struct HttpContext<'a> {
    pub(crate) method: &'a str,
    pub(crate) method_bit: u16,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a dyn Headers,
}

impl<'a> Context<'a> {
    pub(crate) fn new(request: &Request<'a>, path: Option<&'a str>) -> Self {
        Self {
            principal: request.principal,
            port: request.port,
            http: request.http.map(|http| HttpContext {
                method: http.method,
                method_bit: MethodSet::bit(http.method),
                path: path.unwrap_or(http.path),
                headers: http.headers,
            }),
        }
    }
}

/// Collects why a rule did not match, for `explain`. The evaluator passes [`NoTrace`], whose
/// closures are never called.
pub(crate) trait Trace {
    fn note(&mut self, why: impl FnOnce() -> String);
}

pub(crate) struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn note(&mut self, _: impl FnOnce() -> String) {}
}

impl Trace for Vec<String> {
    fn note(&mut self, why: impl FnOnce() -> String) {
        self.push(why());
    }
}

/// Whether `rule` matches. On a TCP connection, a rule naming HTTP fields matches when
/// `tcp_matches_http_rules` (DENY: fail closed) and does not otherwise (ALLOW, AUDIT).
pub(crate) fn rule_matches(
    rule: &Rule,
    ctx: &Context<'_>,
    tcp_matches_http_rules: bool,
    trace: &mut impl Trace,
) -> bool {
    if !rule.from.is_empty() {
        let mut matched = false;
        for source in &rule.from {
            let principals_ok = source.principals.as_ref().is_none_or(|patterns| {
                let ok = any_principal(patterns, ctx.principal);
                if !ok {
                    trace.note(|| {
                        format!(
                            "from: {} is not among principals {}",
                            ctx.principal,
                            list(patterns.iter().map(|p| &p.matcher))
                        )
                    });
                }
                ok
            });
            let not_ok = principals_ok
                && source.not_principals.as_ref().is_none_or(|patterns| {
                    let hit = any_principal(patterns, ctx.principal);
                    if hit {
                        trace.note(|| {
                            format!(
                                "from: {} matches notPrincipals {}",
                                ctx.principal,
                                list(patterns.iter().map(|p| &p.matcher))
                            )
                        });
                    }
                    !hit
                });
            if principals_ok && not_ok {
                matched = true;
                break;
            }
        }
        if !matched {
            return false;
        }
    }
    // On TCP, a rule naming HTTP fields is checked on its ports alone when it fails closed.
    if ctx.http.is_none() && !tcp_matches_http_rules && rule.needs_http() {
        trace.note(|| {
            format!(
                "the rule names HTTP fields ({}), which an opaque TCP connection does not have",
                rule.http_fields().join(", ")
            )
        });
        return false;
    }
    if !rule.to.is_empty() {
        let mut matched = false;
        for op in &rule.to {
            if operation_matches(op, ctx, trace) {
                matched = true;
                break;
            }
        }
        if !matched {
            return false;
        }
    }
    if let Some(http) = &ctx.http {
        for condition in &rule.when {
            if !condition_matches(condition, http, trace) {
                return false;
            }
        }
    }
    true
}

#[inline]
fn any_principal(patterns: &[PrincipalPattern], principal: &str) -> bool {
    patterns.iter().any(|p| p.matcher.matches(principal))
}

fn port_matches(op: &Operation, port: u16) -> bool {
    op.ports.as_ref().is_none_or(|ports| ports.contains(&port))
        && op
            .not_ports
            .as_ref()
            .is_none_or(|ports| !ports.contains(&port))
}

fn operation_matches(op: &Operation, ctx: &Context<'_>, trace: &mut impl Trace) -> bool {
    if let Some(ports) = &op.ports
        && !ports.contains(&ctx.port)
    {
        trace.note(|| {
            format!(
                "to: port {} is not among ports {}",
                ctx.port,
                list(ports.iter())
            )
        });
        return false;
    }
    if let Some(ports) = &op.not_ports
        && ports.contains(&ctx.port)
    {
        trace.note(|| {
            format!(
                "to: port {} is among notPorts {}",
                ctx.port,
                list(ports.iter())
            )
        });
        return false;
    }
    // On TCP, the HTTP fields were settled by the caller.
    let Some(http) = &ctx.http else { return true };
    if let Some(methods) = op.methods
        && !methods.contains_bit(http.method_bit)
    {
        trace.note(|| {
            format!(
                "to: method {} is not among methods {}",
                http.method,
                list(methods.names().iter())
            )
        });
        return false;
    }
    if let Some(methods) = op.not_methods
        && methods.contains_bit(http.method_bit)
    {
        trace.note(|| {
            format!(
                "to: method {} is among notMethods {}",
                http.method,
                list(methods.names().iter())
            )
        });
        return false;
    }
    if let Some(paths) = &op.paths
        && !paths.iter().any(|p| p.matches(http.path))
    {
        trace.note(|| {
            format!(
                "to: path {} matches none of paths {}",
                http.path,
                list(paths.iter())
            )
        });
        return false;
    }
    if let Some(paths) = &op.not_paths
        && paths.iter().any(|p| p.matches(http.path))
    {
        trace.note(|| {
            format!(
                "to: path {} matches notPaths {}",
                http.path,
                list(paths.iter())
            )
        });
        return false;
    }
    true
}

fn condition_matches(
    condition: &Condition,
    http: &HttpContext<'_>,
    trace: &mut impl Trace,
) -> bool {
    let value = http.headers.get(&condition.header);
    let name = &condition.header;
    if let Some(values) = &condition.values {
        let ok = value
            .as_deref()
            .is_some_and(|v| values.iter().any(|p| p.matches(v)));
        if !ok {
            trace.note(|| match &value {
                None => format!(
                    "when: header {name} is absent (values {})",
                    list(values.iter())
                ),
                Some(v) => format!(
                    "when: header {name} = {v:?} matches none of values {}",
                    list(values.iter())
                ),
            });
            return false;
        }
    }
    if let Some(not_values) = &condition.not_values
        && let Some(v) = value.as_deref()
        && not_values.iter().any(|p| p.matches(v))
    {
        trace.note(|| {
            format!(
                "when: header {name} = {v:?} matches notValues {}",
                list(not_values.iter())
            )
        });
        return false;
    }
    true
}

/// `[a, b, c]` for messages.
pub(crate) fn list<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const OPS: &str = "spiffe://cluster.local/ns/ops/sa/debug";
    const STRANGER: &str = "spiffe://cluster.local/ns/other/sa/x";

    fn policy(name: &str, body: &str) -> String {
        format!(
            "---\napiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\nspec:\n{body}"
        )
    }

    /// One request of the tables: caller, port, and `METHOD /path` (or `tcp`).
    struct Case {
        from: &'static str,
        port: u16,
        request: &'static str,
        headers: &'static [(&'static str, &'static str)],
        expect: &'static str,
    }

    fn case(from: &'static str, port: u16, request: &'static str, expect: &'static str) -> Case {
        Case {
            from,
            port,
            request,
            headers: &[],
            expect,
        }
    }

    /// Runs each case and compares `decision.to_string()` (with the file name cut) and the
    /// verdict `explain` arrives at.
    fn check(text: &str, default: DefaultAction, cases: &[Case]) {
        let set = PolicySet::parse_str("p.yaml", text).unwrap_or_else(|e| panic!("{}", e[0]));
        let compiled = set.for_workload(None, default);
        for case in cases {
            let headers = case.headers;
            let http = (case.request != "tcp").then(|| {
                let (method, path) = case.request.split_once(' ').unwrap();
                HttpRequest {
                    method,
                    path,
                    headers: &headers,
                }
            });
            let request = Request {
                principal: case.from,
                port: case.port,
                http,
            };
            let decision = compiled.evaluate(&request);
            let got = decision.to_string();
            let got = match got.find(" (p.yaml") {
                Some(at) => &got[..at],
                None => &got,
            };
            assert_eq!(got, case.expect, "{request:?}");
            let explained = set.explain(None, default, &request);
            assert_eq!(
                explained.verdict, decision.verdict,
                "{request:?}\n{explained}"
            );
        }
    }

    #[test]
    fn with_no_policy_the_default_decides() {
        check(
            "",
            DefaultAction::Allow,
            &[case(
                FRONTEND,
                8080,
                "GET /",
                "allowed: no policy applies and the default is allow",
            )],
        );
        check(
            "",
            DefaultAction::Deny,
            &[case(
                FRONTEND,
                8080,
                "tcp",
                "denied: no policy allows it and the default is deny",
            )],
        );
    }

    #[test]
    fn allow_rules_match_principals_ports_methods_and_paths() {
        let text = policy(
            "backend-api",
            "  action: ALLOW\n  rules:\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\", \"spiffe://cluster.local/ns/ops/*\"]\n    to:\n    - ports: [8080]\n      methods: [GET, POST]\n      paths: [\"/api/*\", \"/healthz\", \"*.css\"]\n",
        );
        let allowed = "allowed by ALLOW policy \"backend-api\", rule 0";
        let no_match = "denied: no ALLOW rule matched (policies: backend-api)";
        check(
            &text,
            DefaultAction::Allow,
            &[
                case(FRONTEND, 8080, "GET /api/items", allowed),
                case(FRONTEND, 8080, "POST /healthz", allowed),
                case(FRONTEND, 8080, "GET /static/site.css", allowed),
                case(FRONTEND, 8080, "GET /api/items?q=1", allowed),
                case(OPS, 8080, "GET /api/x", allowed),
                case(FRONTEND, 8080, "DELETE /api/items", no_match),
                case(FRONTEND, 8080, "GET /admin", no_match),
                case(FRONTEND, 8080, "GET /api/../admin", no_match),
                case(FRONTEND, 9090, "GET /api/items", no_match),
                case(STRANGER, 8080, "GET /api/items", no_match),
                case(
                    "spiffe://cluster.local/ns/opsx/sa/y",
                    8080,
                    "GET /api/x",
                    no_match,
                ),
                // HTTP fields on a TCP connection: an ALLOW rule cannot vouch for it.
                case(FRONTEND, 8080, "tcp", no_match),
                case(FRONTEND, 8080, "PROPFIND /api/x", no_match),
            ],
        );
    }

    #[test]
    fn not_fields_exclude() {
        let text = policy(
            "most",
            "  rules:\n  - from:\n    - principals: [\"*\"]\n      notPrincipals: [\"spiffe://cluster.local/ns/other/*\"]\n    to:\n    - notPorts: [9090]\n      notMethods: [DELETE]\n      notPaths: [\"/admin/*\", \"/admin\"]\n",
        );
        let allowed = "allowed by ALLOW policy \"most\", rule 0";
        let no_match = "denied: no ALLOW rule matched (policies: most)";
        check(
            &text,
            DefaultAction::Allow,
            &[
                case(FRONTEND, 8080, "GET /x", allowed),
                case(STRANGER, 8080, "GET /x", no_match),
                case(FRONTEND, 9090, "GET /x", no_match),
                case(FRONTEND, 8080, "DELETE /x", no_match),
                case(FRONTEND, 8080, "GET /admin", no_match),
                case(FRONTEND, 8080, "GET /admin/users", no_match),
                case(FRONTEND, 8080, "GET //admin/users", no_match),
                case(FRONTEND, 8080, "GET /%61dmin", no_match),
                case(FRONTEND, 8080, "GET /administrator", allowed),
            ],
        );
    }

    #[test]
    fn deny_comes_first_and_fails_closed_on_tcp() {
        let text = policy("allow-all", "  rules:\n  - {}\n")
            + &policy(
                "deny-admin",
                "  action: DENY\n  rules:\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/shop/*\"]\n    to:\n    - paths: [\"/admin*\"]\n",
            );
        let denied = "denied by DENY policy \"deny-admin\", rule 0";
        let allowed = "allowed by ALLOW policy \"allow-all\", rule 0";
        check(
            &text,
            DefaultAction::Deny,
            &[
                case(FRONTEND, 8080, "GET /admin", denied),
                case(FRONTEND, 8080, "GET /./admin/x", denied),
                case(FRONTEND, 8080, "GET /public", allowed),
                case(OPS, 8080, "GET /admin", allowed),
                // A DENY rule naming paths cannot see inside TCP, so it refuses the whole
                // connection of a caller it names.
                case(FRONTEND, 5432, "tcp", denied),
                case(OPS, 5432, "tcp", allowed),
            ],
        );
    }

    #[test]
    fn an_allow_policy_without_rules_allows_nothing() {
        let text = policy("nothing", "  action: ALLOW\n");
        check(
            &text,
            DefaultAction::Allow,
            &[case(
                FRONTEND,
                8080,
                "GET /",
                "denied: no ALLOW rule matched (policies: nothing)",
            )],
        );
    }

    #[test]
    fn header_conditions() {
        let text = policy(
            "prod-only",
            "  rules:\n  - when:\n    - key: request.headers[X-Env]\n      values: [prod, \"canary-*\"]\n    - key: request.headers[x-debug]\n      notValues: [\"*\"]\n",
        );
        let allowed = "allowed by ALLOW policy \"prod-only\", rule 0";
        let no_match = "denied: no ALLOW rule matched (policies: prod-only)";
        let with = |headers: &'static [(&'static str, &'static str)], expect| Case {
            from: FRONTEND,
            port: 80,
            request: "GET /",
            headers,
            expect,
        };
        check(
            &text,
            DefaultAction::Allow,
            &[
                with(&[("x-env", "prod")], allowed),
                with(&[("X-ENV", "canary-3")], allowed),
                with(&[("x-env", "dev")], no_match),
                with(&[], no_match),
                with(&[("x-env", "prod"), ("x-debug", "1")], no_match),
                // A second copy of the header does not sneak past an exact value.
                with(&[("x-env", "dev"), ("x-env", "prod")], no_match),
            ],
        );
    }

    #[test]
    fn audit_marks_without_changing_the_decision() {
        let text = policy(
            "audit-writes",
            "  action: AUDIT\n  rules:\n  - to:\n    - methods: [POST, PUT, DELETE]\n",
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let compiled = set.for_workload(None, DefaultAction::Allow);
        let headers: &[(&str, &str)] = &[];
        let request = |method| Request {
            principal: FRONTEND,
            port: 80,
            http: Some(HttpRequest {
                method,
                path: "/x",
                headers: &headers,
            }),
        };
        let post = compiled.evaluate(&request("POST"));
        assert!(post.allowed());
        assert_eq!(post.reason, Reason::Default(DefaultAction::Allow));
        assert_eq!(&*post.audit.unwrap().policy.name, "audit-writes");
        assert!(compiled.evaluate(&request("GET")).audit.is_none());
    }

    #[test]
    fn dry_run_reports_without_enforcing() {
        let text = policy(
            "allow-frontend",
            "  dryRun: true\n  rules:\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]\n",
        ) + &policy(
            "deny-deletes",
            "  action: DENY\n  dryRun: true\n  rules:\n  - to:\n    - methods: [DELETE]\n",
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let compiled = set.for_workload(None, DefaultAction::Allow);
        let headers: &[(&str, &str)] = &[];
        let request = |principal, method| Request {
            principal,
            port: 80,
            http: Some(HttpRequest {
                method,
                path: "/x",
                headers: &headers,
            }),
        };
        // Allowed as before; the dry-run ALLOW policy would not have allowed it.
        let stranger = compiled.evaluate(&request(STRANGER, "GET"));
        assert!(stranger.allowed());
        let dry = stranger.dry_run.unwrap();
        assert_eq!(
            (dry.verdict, &*dry.policy.name),
            (Verdict::Deny, "allow-frontend")
        );
        assert_eq!(
            dry.reason,
            Reason::NoAllowRuleMatched {
                policies: "allow-frontend"
            }
        );
        // The dry-run DENY policy would have denied this one.
        let delete = compiled.evaluate(&request(FRONTEND, "DELETE"));
        assert!(delete.allowed());
        let dry = delete.dry_run.unwrap();
        assert_eq!(
            (dry.verdict, &*dry.policy.name),
            (Verdict::Deny, "deny-deletes")
        );
        // Nothing to report when the dry run agrees.
        assert!(
            compiled
                .evaluate(&request(FRONTEND, "GET"))
                .dry_run
                .is_none()
        );
    }

    #[test]
    fn selectors_and_namespaces_choose_workloads() {
        let text = policy(
            "backend-only",
            "  selector:\n    identities: [\"spiffe://cluster.local/ns/shop/sa/backend\"]\n  action: DENY\n  rules:\n  - {}\n",
        ) + "---\napiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: shop-wide\n  namespace: shop\nspec:\n  action: AUDIT\n  rules:\n  - {}\n";
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let names = |workload: &str| -> Vec<String> {
            let id: SpiffeId = workload.parse().unwrap();
            set.for_workload(Some(&id), DefaultAction::Allow)
                .policies()
                .map(|p| p.name.to_string())
                .collect()
        };
        assert_eq!(
            names("spiffe://cluster.local/ns/shop/sa/backend"),
            ["backend-only", "shop-wide"]
        );
        assert_eq!(
            names("spiffe://cluster.local/ns/shop/sa/cart"),
            ["shop-wide"]
        );
        assert!(names("spiffe://cluster.local/ns/shopping/sa/x").is_empty());
        let id: SpiffeId = "spiffe://cluster.local/ns/ops/sa/x".parse().unwrap();
        let explained = set.explain(
            Some(&id),
            DefaultAction::Allow,
            &Request {
                principal: FRONTEND,
                port: 1,
                http: None,
            },
        );
        let text = explained.to_string();
        assert!(text.contains("not applied to this workload"), "{text}");
        assert!(text.contains("its namespace is \"shop\""), "{text}");
    }

    #[test]
    fn the_index_keeps_written_order() {
        // Rule 0 uses a wildcard, rule 1 an exact principal: both match, rule 0 decides.
        let text = policy(
            "ordered",
            "  rules:\n  - from:\n    - principals: [\"spiffe://cluster.local/*\"]\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]\n",
        );
        check(
            &text,
            DefaultAction::Allow,
            &[case(
                FRONTEND,
                1,
                "tcp",
                "allowed by ALLOW policy \"ordered\", rule 0",
            )],
        );
    }

    #[test]
    fn indexed_prefixes_keep_written_order_and_deep_ids_fall_back() {
        // Rule 0: a prefix at a `/` (indexed), rule 1: exact (indexed), rule 2: a prefix
        // inside a segment (unindexed), rule 3: a deeper `/` prefix (indexed).
        let text = policy(
            "layers",
            "  rules:\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/ops/*\"]\n      notPrincipals: [\"spiffe://cluster.local/ns/ops/sa/*\"]\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/ops/sa/debug\"]\n    to:\n    - paths: [\"/debug\"]\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/op*\"]\n    to:\n    - paths: [\"/op\"]\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/ops/sa/*\", \"spiffe://cluster.local/ns/ops/*\"]\n",
        );
        let deep: &'static str = "spiffe://cluster.local/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s";
        // One rule per level of a deep ID: more prefixes of the caller are keys than one
        // lookup merges, so the evaluator falls back to trying every rule in order.
        let segments: Vec<&str> = deep["spiffe://cluster.local/".len()..].split('/').collect();
        let mut deep_rules = String::from("  rules:\n");
        for level in 1..segments.len() {
            deep_rules.push_str(&format!(
                "  - from:\n    - principals: [\"spiffe://cluster.local/{}/*\"]\n    to:\n    - paths: [\"/level{level}\"]\n",
                segments[..level].join("/")
            ));
        }
        assert!(segments.len() > MAX_CANDIDATE_LISTS);
        let deep_rule = policy("deep", &deep_rules);
        let layers = |rule: usize| format!("allowed by ALLOW policy \"layers\", rule {rule}");
        let cases = [
            (OPS, "GET /debug", layers(1)),
            (OPS, "GET /op", layers(2)),
            (OPS, "GET /other", layers(3)),
            ("spiffe://cluster.local/ns/opsx/sa/y", "GET /op", layers(2)),
            (
                deep,
                "GET /level1",
                "allowed by ALLOW policy \"deep\", rule 0".to_string(),
            ),
            (
                deep,
                "GET /level18",
                "allowed by ALLOW policy \"deep\", rule 17".to_string(),
            ),
        ];
        let text = text + &deep_rule;
        let set = PolicySet::parse_str("p.yaml", &text).unwrap_or_else(|e| panic!("{}", e[0]));
        let compiled = set.for_workload(None, DefaultAction::Deny);
        let headers: &[(&str, &str)] = &[];
        for (from, request, expect) in cases {
            let (method, path) = request.split_once(' ').unwrap();
            let decision = compiled.evaluate(&Request {
                principal: from,
                port: 1,
                http: Some(HttpRequest {
                    method,
                    path,
                    headers: &headers,
                }),
            });
            let got = decision.to_string();
            assert!(got.starts_with(&expect), "{from} {request}: {got}");
        }
    }

    #[test]
    fn explain_says_why_each_rule_missed() {
        let text = policy(
            "backend-api",
            "  rules:\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]\n    to:\n    - ports: [8080]\n      paths: [\"/api/*\"]\n",
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let headers: &[(&str, &str)] = &[];
        let explained = set.explain(
            None,
            DefaultAction::Allow,
            &Request {
                principal: FRONTEND,
                port: 8080,
                http: Some(HttpRequest {
                    method: "GET",
                    path: "/admin",
                    headers: &headers,
                }),
            },
        );
        let text = explained.to_string();
        assert!(
            text.contains("decision: DENY, denied: no ALLOW rule matched (policies: backend-api)"),
            "{text}"
        );
        assert!(
            text.contains(
                "rule 0 (line 8): no match: to: path /admin matches none of paths [/api/*]"
            ),
            "{text}"
        );
    }

    #[test]
    fn tcp_ports_with_http_rules_are_reported() {
        let text = policy(
            "mixed",
            "  rules:\n  - to:\n    - ports: [8080]\n      methods: [GET]\n  - to:\n    - ports: [5432]\n  - when:\n    - key: request.headers[x]\n      values: [y]\n",
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let errors = set.http_rules_on_tcp_port(None, 5432);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .starts_with("p.yaml:13:5: policy \"mixed\", rule 2 names HTTP fields (when)"),
            "{}",
            errors[0]
        );
        assert_eq!(set.http_rules_on_tcp_port(None, 8080).len(), 2);
    }

    #[test]
    fn principals_of_another_trust_domain_are_reported() {
        let text = policy(
            "typo",
            "  rules:\n  - from:\n    - principals: [\"spiffe://cluster.lcoal/ns/shop/sa/frontend\"]\n",
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let errors = set.foreign_principals(&"cluster.local".parse().unwrap());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("p.yaml:9:20: policy \"typo\": spiffe://cluster.lcoal/ns/shop/sa/frontend is in trust domain cluster.lcoal"), "{}", errors[0]);
    }
}
