//! Decisions: the policies that apply to one workload, indexed by caller, and the evaluation
//! of a request against them.
//!
//! Evaluation allocates nothing for an ordinary request: the caller's SPIFFE ID is looked up
//! in a map from exact principals to the rules that name them, and only those rules and the
//! ones written with wildcards are checked, in the order they were written. (A path that
//! reads more than one way is copied once per reading.)
//!
//! A request can read more than one way: its path ([`crate::path`]), a header sent on several
//! lines or as a list, the case of a method. Each field leans the safe way for its rule: a
//! DENY (or AUDIT) field holds when any reading satisfies it and its `not…` form excludes only
//! what every reading falls in; an ALLOW field holds only when every reading satisfies it and
//! its `not…` form excludes what any reading falls in. Patterns ignore ASCII case where that
//! makes a rule match more (DENY and AUDIT patterns, ALLOW `not…` patterns) and respect it
//! where that makes it match less.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use foldhash::fast::RandomState;
use hush_identity::{SpiffeId, TrustDomain};

use crate::compile::{
    Condition, IndexKey, Operation, Policy, PolicyError, PolicyInfo, PolicySet, Rule,
};
use crate::model::Action;
use crate::path::{AmbiguousPath, PathReadings, read_path};
use crate::pattern::{MethodSet, PrincipalPattern, StrMatch};

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

/// Request headers, looked up by lower-case name. A `when` condition judges every element of
/// a header: each field line, split at the commas of an HTTP list (RFC 9110, 5.6.1), so
/// `X: a` and `X: evil` on two lines, or `X: a, evil` on one, are the values `a` and `evil`.
pub trait Headers {
    /// Calls `visit` with the value of every field line named `name` (lower case), in the
    /// order they came, until it breaks. A value that is not text should be passed as
    /// U+FFFD, which no pattern but `*` matches.
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&str) -> ControlFlow<()>);
}

impl Headers for &[(&str, &str)] {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&str) -> ControlFlow<()>) {
        for (_, value) in self.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
            if visit(value).is_break() {
                return;
            }
        }
    }
}

impl Headers for Vec<(String, String)> {
    fn each_value(&self, name: &str, visit: &mut dyn FnMut(&str) -> ControlFlow<()>) {
        for (_, value) in self.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
            if visit(value).is_break() {
                return;
            }
        }
    }
}

/// Calls `visit` with every element of header `name` (see [`Headers`]): the comma-separated
/// parts of each line outside quoted strings, without surrounding spaces; a line with no part
/// is one empty value. Returns whether the request carries the header.
fn each_element(
    headers: &dyn Headers,
    name: &str,
    visit: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> bool {
    let mut present = false;
    headers.each_value(name, &mut |line| {
        present = true;
        split_list(line, visit)
    });
    present
}

fn split_list(line: &str, visit: &mut dyn FnMut(&str) -> ControlFlow<()>) -> ControlFlow<()> {
    fn trim(part: &str) -> &str {
        part.trim_matches([' ', '\t'])
    }
    if !line.contains(',') {
        return visit(trim(line));
    }
    let (mut start, mut quoted, mut escaped, mut any) = (0, false, false, false);
    for (i, byte) in line.bytes().enumerate() {
        if quoted {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => quoted = true,
            b',' => {
                let part = trim(&line[start..i]);
                if !part.is_empty() {
                    any = true;
                    visit(part)?;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = trim(&line[start..]);
    if !last.is_empty() || !any {
        visit(last)?;
    }
    ControlFlow::Continue(())
}

/// Which way a rule leans when a request reads more than one way (see the module
/// documentation), and what it makes of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stance {
    /// DENY: in doubt it matches; on TCP, a rule naming HTTP fields is judged on the others.
    Deny,
    /// AUDIT: in doubt it matches (marking more is the safe side of an audit log); on TCP a
    /// rule naming HTTP fields does not match.
    Audit,
    /// ALLOW: in doubt it does not match.
    Allow,
}

impl Stance {
    pub(crate) fn of(action: Action) -> Self {
        match action {
            Action::Deny => Self::Deny,
            Action::Audit => Self::Audit,
            Action::Allow => Self::Allow,
        }
    }

    fn matches_in_doubt(self) -> bool {
        self != Self::Allow
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
    /// The path cannot be judged and an enforced rule names paths: the request is refused
    /// whatever the rules say (the sidecar answers `400`).
    AmbiguousPath(AmbiguousPath),
    /// The caller is of another trust domain (a federated one), and no ALLOW rule names it:
    /// such a caller is let in only by a rule whose principals name its trust domain, never by
    /// a wildcard, a rule without `from`, or the default.
    ForeignNotNamed,
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
            Self::AmbiguousPath(why) => why.fmt(f),
            Self::ForeignNotNamed => f.write_str(
                "the caller is of another trust domain, and no ALLOW rule names it in its \
                 principals (a federated caller is never let in by a wildcard or the default)",
            ),
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
            Reason::AmbiguousPath(_) => write!(f, "refused: {}", self.reason),
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
        stance: Stance,
    ) -> Option<(u32, u32)> {
        if self.rules.is_empty() {
            return None;
        }
        let matches = |position: u32| {
            let (policy, rule) = self.rules[position as usize];
            let compiled = &policies[policy as usize].rules[rule as usize];
            rule_matches(compiled, ctx, stance, &mut NoTrace).then_some((policy, rule))
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
    /// The workload's trust domain: a caller of any other is a federated one (known only when
    /// the policy was narrowed for a workload).
    trust_domain: Option<TrustDomain>,
    deny: RuleIndex,
    allow: RuleIndex,
    audit: RuleIndex,
    dry_deny: RuleIndex,
    dry_allow: RuleIndex,
    has_allow: bool,
    /// The first dry-run ALLOW policy: the one named when dry-run ALLOW policies would deny.
    first_dry_allow: Option<u32>,
    /// Whether an enforced DENY or ALLOW rule names paths: then a path that cannot be judged
    /// is refused.
    judges_paths: bool,
    /// The first dry-run DENY or ALLOW policy naming paths: the one named when only dry-run
    /// policies would refuse a path that cannot be judged.
    dry_judges_paths: Option<u32>,
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
            trust_domain: workload.map(|w| w.trust_domain().clone()),
            deny: RuleIndex::default(),
            allow: RuleIndex::default(),
            audit: RuleIndex::default(),
            dry_deny: RuleIndex::default(),
            dry_allow: RuleIndex::default(),
            has_allow: false,
            first_dry_allow: None,
            judges_paths: false,
            dry_judges_paths: None,
            allow_names: Box::default(),
            allow_names_with_dry_run: Box::default(),
        };
        for (p, policy) in policies.iter().enumerate() {
            let p = u32::try_from(p).unwrap_or(u32::MAX);
            let info = &policy.info;
            if info.action != Action::Audit && policy.rules.iter().any(Rule::names_paths) {
                if info.dry_run {
                    compiled.dry_judges_paths.get_or_insert(p);
                } else {
                    compiled.judges_paths = true;
                }
            }
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
        let ctx = Context::new(request, self.is_foreign(request.principal));
        let (verdict, reason) = self.decide(&ctx, false);
        let audit = self
            .audit
            .first_match(&self.policies, &ctx, Stance::Audit)
            .map(|(p, r)| self.rule_ref(p, r));
        let dry_run = if self.dry_deny.is_empty() && self.dry_allow.is_empty() {
            None
        } else {
            let (would, why) = self.decide(&ctx, true);
            (would != verdict).then(|| DryRun {
                policy: match why {
                    Reason::Rule(rule) => rule.policy,
                    Reason::AmbiguousPath(_) => self.info(self.dry_judges_paths),
                    _ => self.info(self.first_dry_allow),
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

    /// Whether `principal` is of another trust domain than the workload's.
    pub(crate) fn is_foreign(&self, principal: &str) -> bool {
        self.trust_domain.as_ref().is_some_and(|own| {
            let domain = principal
                .strip_prefix("spiffe://")
                .map(|rest| rest.split_once('/').map_or(rest, |(domain, _)| domain));
            domain != Some(own.as_str())
        })
    }

    fn decide(&self, ctx: &Context<'_>, with_dry_run: bool) -> (Verdict, Reason<'_>) {
        // Rules naming paths cannot judge a path no reading can be trusted for; leaning each
        // field the safe way would deny it too, but under a rule's name, with a 403.
        if let Some(why) = ctx.ambiguous_path()
            && (self.judges_paths || (with_dry_run && self.dry_judges_paths.is_some()))
        {
            return (Verdict::Deny, Reason::AmbiguousPath(why));
        }
        // A DENY rule naming HTTP fields denies a TCP connection as a whole: it cannot tell
        // what the connection will carry, and letting it through could let that through.
        let deny = self
            .deny
            .first_match(&self.policies, ctx, Stance::Deny)
            .or_else(|| {
                with_dry_run
                    .then(|| self.dry_deny.first_match(&self.policies, ctx, Stance::Deny))
                    .flatten()
            });
        if let Some((p, r)) = deny {
            return (Verdict::Deny, Reason::Rule(self.rule_ref(p, r)));
        }
        let allow_applies = self.has_allow || (with_dry_run && self.first_dry_allow.is_some());
        if allow_applies {
            let allow = self
                .allow
                .first_match(&self.policies, ctx, Stance::Allow)
                .or_else(|| {
                    with_dry_run
                        .then(|| {
                            self.dry_allow
                                .first_match(&self.policies, ctx, Stance::Allow)
                        })
                        .flatten()
                });
            return match allow {
                Some((p, r)) => (Verdict::Allow, Reason::Rule(self.rule_ref(p, r))),
                None if ctx.foreign => (Verdict::Deny, Reason::ForeignNotNamed),
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
        if ctx.foreign {
            return (Verdict::Deny, Reason::ForeignNotNamed);
        }
        let verdict = match self.default {
            DefaultAction::Allow => Verdict::Allow,
            DefaultAction::Deny => Verdict::Deny,
        };
        (verdict, Reason::Default(self.default))
    }

    /// The policy at `index`, or the first one (a dry run names a policy even when it has to
    /// guess).
    fn info(&self, index: Option<u32>) -> &PolicyInfo {
        index.map_or_else(
            || &self.policies[0].info,
            |p| &self.policies[p as usize].info,
        )
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

/// The readings of a request's path, without its query string.
fn read_request_path(path: &str) -> Result<PathReadings<'_>, AmbiguousPath> {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    read_path(&path[..end])
}

/// A request prepared for matching.
pub(crate) struct Context<'a> {
    pub(crate) principal: &'a str,
    /// The principal is of another trust domain than the workload's (a federated one): only
    /// patterns naming its trust domain let it in.
    pub(crate) foreign: bool,
    pub(crate) port: u16,
    pub(crate) http: Option<HttpContext<'a>>,
}

pub(crate) struct HttpContext<'a> {
    pub(crate) method: &'a str,
    pub(crate) method_bit: u16,
    /// The method's bit once upper-cased: `delete` to an app that upper-cases methods.
    pub(crate) method_bit_folded: u16,
    /// The path's readings, or why it has none that can be trusted.
    pub(crate) path: Result<PathReadings<'a>, AmbiguousPath>,
    pub(crate) headers: &'a dyn Headers,
}

impl<'a> Context<'a> {
    pub(crate) fn new(request: &Request<'a>, foreign: bool) -> Self {
        Self {
            principal: request.principal,
            foreign,
            port: request.port,
            http: request.http.map(|http| {
                let method_bit = MethodSet::bit(http.method);
                HttpContext {
                    method: http.method,
                    method_bit,
                    // A method written in upper case is its own folded form.
                    method_bit_folded: if method_bit == MethodSet::OTHER {
                        MethodSet::bit_ignoring_case(http.method)
                    } else {
                        method_bit
                    },
                    path: read_request_path(http.path),
                    headers: http.headers,
                }
            }),
        }
    }

    /// Why the path cannot be judged, when it cannot.
    pub(crate) fn ambiguous_path(&self) -> Option<AmbiguousPath> {
        self.http
            .as_ref()
            .and_then(|http| http.path.as_ref().err().copied())
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

/// Whether `rule` matches, leaning as `stance` says where the request reads more than one way.
/// On a TCP connection, a rule naming HTTP fields is judged on its other fields for DENY (fail
/// closed) and does not match for ALLOW and AUDIT.
pub(crate) fn rule_matches(
    rule: &Rule,
    ctx: &Context<'_>,
    stance: Stance,
    trace: &mut impl Trace,
) -> bool {
    // A caller of another trust domain is let in only where a rule names its domain, and kept
    // out wherever a rule leans that way: wildcards (`*`, `*/sa/x`), rules without `from` and
    // sources without `principals` count for DENY and AUDIT, never for ALLOW.
    let named_only = ctx.foreign && !stance.matches_in_doubt();
    if rule.from.is_empty() && named_only {
        trace.note(|| {
            format!(
                "from: {} is of another trust domain, and this rule does not name it",
                ctx.principal
            )
        });
        return false;
    }
    if !rule.from.is_empty() {
        let mut matched = false;
        for source in &rule.from {
            let principals_ok = match &source.principals {
                None if named_only => {
                    trace.note(|| {
                        format!(
                            "from: {} is of another trust domain, and this source names no \
                             principals",
                            ctx.principal
                        )
                    });
                    false
                }
                None => true,
                Some(patterns) => {
                    let ok = any_principal(patterns, ctx.principal, named_only);
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
                }
            };
            // An exception to a DENY or AUDIT rule spares a caller of another trust domain
            // only where it names that domain.
            let exception_named_only = ctx.foreign && stance.matches_in_doubt();
            let not_ok = principals_ok
                && source.not_principals.as_ref().is_none_or(|patterns| {
                    let hit = any_principal(patterns, ctx.principal, exception_named_only);
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
    if ctx.http.is_none() && stance != Stance::Deny && rule.needs_http() {
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
            if operation_matches(op, ctx, stance, trace) {
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
            if !condition_matches(condition, http, stance, trace) {
                return false;
            }
        }
    }
    true
}

/// Whether a pattern matches `principal`; with `named_only`, only patterns limited to a trust
/// domain count (those that name the caller's, since they match it).
#[inline]
fn any_principal(patterns: &[PrincipalPattern], principal: &str, named_only: bool) -> bool {
    patterns
        .iter()
        .any(|p| (!named_only || p.trust_domain.is_some()) && p.matcher.matches(principal))
}

fn port_matches(op: &Operation, port: u16) -> bool {
    op.ports.as_ref().is_none_or(|ports| ports.contains(&port))
        && op
            .not_ports
            .as_ref()
            .is_none_or(|ports| !ports.contains(&port))
}

/// Whether some pattern matches `value`: ignoring ASCII case when `loosely` (the reading of an
/// app that routes case-insensitively), exactly otherwise.
#[inline]
fn some_pattern(patterns: &[StrMatch], value: &str, loosely: bool) -> bool {
    if loosely {
        patterns.iter().any(|p| p.matches_ignoring_case(value))
    } else {
        patterns.iter().any(|p| p.matches(value))
    }
}

fn operation_matches(
    op: &Operation,
    ctx: &Context<'_>,
    stance: Stance,
    trace: &mut impl Trace,
) -> bool {
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
    let in_doubt = stance.matches_in_doubt();
    // `delete` is DELETE to an app that upper-cases methods and something else to one that
    // does not: a positive field takes the reading that makes it hold when in doubt, a
    // negative one the reading that keeps it from excluding.
    let (loose_bit, strict_bit) = (http.method_bit_folded, http.method_bit);
    if let Some(methods) = op.methods
        && !methods.contains_bit(if in_doubt { loose_bit } else { strict_bit })
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
        && methods.contains_bit(if in_doubt { strict_bit } else { loose_bit })
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
    if op.paths.is_none() && op.not_paths.is_none() {
        return true;
    }
    let readings = match &http.path {
        Ok(readings) => readings,
        // No reading to trust: the fields lean as the rule does (the evaluator refuses such a
        // path before an enforced rule naming paths is tried; this is AUDIT and dry runs).
        Err(why) => {
            if !in_doubt {
                trace.note(|| format!("to: the path cannot be judged: {why}"));
            }
            return in_doubt;
        }
    };
    if let Some(paths) = &op.paths {
        let holds = if readings.is_single() {
            some_pattern(paths, readings.as_sent(), in_doubt)
        } else if in_doubt {
            readings.iter().any(|r| some_pattern(paths, r, true))
        } else {
            readings.iter().all(|r| some_pattern(paths, r, false))
        };
        if !holds {
            trace.note(|| {
                let missed = readings
                    .iter()
                    .filter(|r| !some_pattern(paths, r, in_doubt))
                    .collect::<Vec<_>>()
                    .join(" and ");
                format!(
                    "to: path {missed} matches none of paths {}",
                    list(paths.iter())
                )
            });
            return false;
        }
    }
    if let Some(paths) = &op.not_paths {
        let excluded = if readings.is_single() {
            some_pattern(paths, readings.as_sent(), !in_doubt)
        } else if in_doubt {
            readings.iter().all(|r| some_pattern(paths, r, false))
        } else {
            readings.iter().any(|r| some_pattern(paths, r, true))
        };
        if excluded {
            trace.note(|| {
                let hit = readings
                    .iter()
                    .filter(|r| some_pattern(paths, r, !in_doubt))
                    .collect::<Vec<_>>()
                    .join(" and ");
                format!("to: path {hit} matches notPaths {}", list(paths.iter()))
            });
            return false;
        }
    }
    true
}

/// Whether a `when` condition holds. Every element of the header is judged (see
/// [`Headers`]): in a DENY or AUDIT rule `values` holds when any element matches (ignoring
/// ASCII case) and `notValues` excludes only when every element matches exactly; in an ALLOW
/// rule `values` holds only when every element matches exactly and `notValues` excludes when
/// any element matches ignoring case. An absent header matches no `values` and no
/// `notValues`.
fn condition_matches(
    condition: &Condition,
    http: &HttpContext<'_>,
    stance: Stance,
    trace: &mut impl Trace,
) -> bool {
    let name = &condition.header;
    let in_doubt = stance.matches_in_doubt();
    if let Some(values) = &condition.values {
        // In doubt: does any element match? Otherwise: does every element match?
        let mut holds = !in_doubt;
        let present = each_element(http.headers, name, &mut |element| {
            if some_pattern(values, element, in_doubt) == in_doubt {
                holds = in_doubt;
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if !(present && holds) {
            trace.note(|| {
                if present {
                    format!(
                        "when: header {name} = {} matches none of values {}",
                        shown(http.headers, name, |e| !some_pattern(values, e, in_doubt)),
                        list(values.iter())
                    )
                } else {
                    format!(
                        "when: header {name} is absent (values {})",
                        list(values.iter())
                    )
                }
            });
            return false;
        }
    }
    if let Some(not_values) = &condition.not_values {
        // In doubt: does every element match? Otherwise: does any element match?
        let mut excluded = in_doubt;
        let present = each_element(http.headers, name, &mut |element| {
            if some_pattern(not_values, element, !in_doubt) != in_doubt {
                excluded = !in_doubt;
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if present && excluded {
            trace.note(|| {
                format!(
                    "when: header {name} = {} matches notValues {}",
                    shown(http.headers, name, |e| some_pattern(
                        not_values, e, !in_doubt
                    )),
                    list(not_values.iter())
                )
            });
            return false;
        }
    }
    true
}

/// The elements of a header that `pick` keeps, for `explain`: `"a"`, or `["a", "b"]`.
fn shown(headers: &dyn Headers, name: &str, pick: impl Fn(&str) -> bool) -> String {
    let mut picked = Vec::new();
    each_element(headers, name, &mut |element| {
        if pick(element) {
            picked.push(format!("{element:?}"));
        }
        ControlFlow::Continue(())
    });
    match picked.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", picked.join(", ")),
    }
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
            // A refusal's sentence is long: the table names its start.
            if case.expect.starts_with("refused: ") {
                assert!(got.starts_with(case.expect), "{request:?}: {got}");
            } else {
                assert_eq!(got, case.expect, "{request:?}");
            }
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

    /// What a DENY names is denied under every reading an app server could make of the path;
    /// what no reading can be trusted for is refused.
    #[test]
    fn a_deny_holds_under_every_reading_of_the_path() {
        let text = policy(
            "deny-admin",
            "  action: DENY\n  rules:\n  - to:\n    - paths: [\"/admin\", \"/admin/*\"]\n",
        );
        let denied = "denied by DENY policy \"deny-admin\", rule 0";
        let allowed = "allowed: no policy applies and the default is allow";
        let get = |path| case(FRONTEND, 80, path, "");
        let rows: &[(&'static str, &'static str)] = &[
            ("GET /admin", denied),
            ("GET /public", allowed),
            ("GET /public/admin", allowed),
            ("GET /administrator", allowed),
            // Tomcat, Jetty and Spring cut path parameters.
            ("GET /admin;x=1", denied),
            ("GET /admin;jsessionid=1/users", denied),
            ("GET /;x/admin", denied),
            // Express, ASP.NET and IIS route ignoring case.
            ("GET /ADMIN", denied),
            ("GET /Admin/Users", denied),
            // Escapes of characters that mean the same either way.
            ("GET /%61dmin", denied),
            ("GET /%41DMIN/x", denied),
            // An encoded slash as a separator; dot segments resolved or as sent; merged `//`.
            ("GET /admin%2Fusers", denied),
            ("GET /admin%2fusers", denied),
            ("GET /public/../admin", denied),
            ("GET /public/%2e%2e/admin", denied),
            ("GET /public/.%2E/admin/x", denied),
            ("GET //admin", denied),
            ("GET /./admin", denied),
            // As sent, `/admin/..` is under /admin/ (Express routes it there).
            ("GET /admin/../public", denied),
            // What no reading can be trusted for.
            (
                "GET /public/..;/admin",
                "refused: the path has a `.` or `..` segment and a path parameter",
            ),
            ("GET /admin\\users", "refused: the path holds a backslash"),
            ("GET /admin%5Cusers", "refused: the path holds a backslash"),
            (
                "GET /public/%252e%252e/admin",
                "refused: the path holds a percent-encoded `%`",
            ),
            (
                "GET /admin%00",
                "refused: the path holds a control character",
            ),
            (
                "GET /public/a%2F..%2F..%2Fadmin",
                "refused: the path has a `.` or `..` segment and an encoded slash",
            ),
            (
                "GET /public//../admin",
                "refused: the path has a `.` or `..` segment and an empty segment",
            ),
            (
                "GET /%C0%AE%C0%AE/admin",
                "refused: the path's percent-encoded bytes are not UTF-8",
            ),
            (
                "GET /%zz",
                "refused: the path holds a `%` that is not followed",
            ),
            // The query string is not part of the path.
            ("GET /public?x=/admin", allowed),
        ];
        let cases: Vec<Case> = rows
            .iter()
            .map(|&(request, expect)| Case {
                expect,
                ..get(request)
            })
            .collect();
        check(&text, DefaultAction::Allow, &cases);
    }

    /// What an ALLOW admits is admitted only when every reading of the path is inside it.
    #[test]
    fn an_allow_holds_only_under_every_reading_of_the_path() {
        let text = policy(
            "public",
            "  rules:\n  - to:\n    - paths: [\"/public/*\", \"/Docs\"]\n      notPaths: [\"/public/secret*\"]\n",
        );
        let allowed = "allowed by ALLOW policy \"public\", rule 0";
        let no_match = "denied: no ALLOW rule matched (policies: public)";
        let rows: &[(&'static str, &'static str)] = &[
            ("GET /public/x", allowed),
            ("GET /public/x;v=2", allowed),
            ("GET /public/a%2Fb", allowed),
            ("GET /public/./x", allowed),
            ("GET /public//x", allowed),
            ("GET /Docs", allowed),
            // Case is respected: a case-sensitive app reads another path.
            ("GET /PUBLIC/x", no_match),
            ("GET /docs", no_match),
            // One reading outside is enough to stay out.
            ("GET /public/../admin", no_match),
            ("GET /public%2Fx", no_match),
            ("GET /public;x/y", no_match),
            ("GET /x/../public/y", no_match),
            // notPaths excludes what any reading falls in, ignoring case.
            ("GET /public/secret", no_match),
            ("GET /public/SECRET", no_match),
            ("GET /public/secret;x", no_match),
            ("GET /public/%73ecret", no_match),
            (
                "GET /public/..;/x",
                "refused: the path has a `.` or `..` segment and a path parameter",
            ),
        ];
        let cases: Vec<Case> = rows
            .iter()
            .map(|&(request, expect)| Case {
                expect,
                ..case(FRONTEND, 80, request, "")
            })
            .collect();
        check(&text, DefaultAction::Allow, &cases);
    }

    /// A `notPaths` in a DENY excludes only what every reading falls in, exactly.
    #[test]
    fn a_deny_excludes_only_what_every_reading_falls_in() {
        let text = policy(
            "only-public",
            "  action: DENY\n  rules:\n  - to:\n    - notPaths: [\"/public/*\"]\n",
        );
        let denied = "denied by DENY policy \"only-public\", rule 0";
        let allowed = "allowed: no policy applies and the default is allow";
        check(
            &text,
            DefaultAction::Allow,
            &[
                case(FRONTEND, 80, "GET /public/x", allowed),
                case(FRONTEND, 80, "GET /public/x;y", allowed),
                case(FRONTEND, 80, "GET /PUBLIC/x", denied),
                case(FRONTEND, 80, "GET /public/../admin", denied),
                case(FRONTEND, 80, "GET /public%2Fx", denied),
                case(FRONTEND, 80, "GET /admin", denied),
            ],
        );
    }

    /// A method an app may upper-case (`delete`) is DELETE to a DENY and not GET to an ALLOW.
    #[test]
    fn methods_lean_the_way_their_rule_does() {
        let text = policy(
            "reads",
            "  rules:\n  - to:\n    - methods: [GET]\n      notMethods: [PUT]\n",
        ) + &policy(
            "no-deletes",
            "  action: DENY\n  rules:\n  - to:\n    - methods: [DELETE]\n  - to:\n    - notMethods: [GET, PATCH]\n      paths: [\"/frozen\"]\n",
        );
        let allowed = "allowed by ALLOW policy \"reads\", rule 0";
        let no_match = "denied: no ALLOW rule matched (policies: reads)";
        let denied = "denied by DENY policy \"no-deletes\", rule 0";
        let frozen = "denied by DENY policy \"no-deletes\", rule 1";
        check(
            &text,
            DefaultAction::Allow,
            &[
                case(FRONTEND, 80, "GET /x", allowed),
                case(FRONTEND, 80, "get /x", no_match),
                case(FRONTEND, 80, "DELETE /x", denied),
                case(FRONTEND, 80, "delete /x", denied),
                case(FRONTEND, 80, "Delete /x", denied),
                case(FRONTEND, 80, "GET /frozen", allowed),
                case(FRONTEND, 80, "patch /frozen", frozen),
            ],
        );
    }

    /// A header sent several times, or as a list, is judged element by element.
    #[test]
    fn repeated_headers_are_judged_value_by_value() {
        let text = policy(
            "tenants",
            "  rules:\n  - when:\n    - key: request.headers[x-tenant]\n      values: [\"acme\", \"acme-*\"]\n      notValues: [\"acme-test\"]\n",
        ) + &policy(
            "no-evil",
            "  action: DENY\n  rules:\n  - when:\n    - key: request.headers[x-role]\n      values: [evil]\n  - when:\n    - key: request.headers[x-client]\n      values: [\"*\"]\n      notValues: [\"app-*\"]\n",
        );
        let allowed = "allowed by ALLOW policy \"tenants\", rule 0";
        let no_match = "denied: no ALLOW rule matched (policies: tenants)";
        let evil = "denied by DENY policy \"no-evil\", rule 0";
        let client = "denied by DENY policy \"no-evil\", rule 1";
        type Headers = &'static [(&'static str, &'static str)];
        let rows: &[(Headers, &str)] = &[
            (&[("x-tenant", "acme")], allowed),
            (&[("x-tenant", "acme-eu")], allowed),
            (&[("x-tenant", "acme"), ("x-tenant", "acme-eu")], allowed),
            (&[("x-tenant", "acme, acme-eu")], allowed),
            (&[("x-tenant", " acme ,, acme-eu ")], allowed),
            (&[("x-tenant", "ACME")], no_match),
            // ALLOW: every value must match, and notValues excludes any, ignoring case.
            (&[("x-tenant", "acme"), ("x-tenant", "globex")], no_match),
            (&[("x-tenant", "acme, globex")], no_match),
            (&[("x-tenant", "acme-eu, acme-test")], no_match),
            (
                &[("x-tenant", "acme-eu"), ("x-tenant", "ACME-TEST")],
                no_match,
            ),
            (&[], no_match),
            (&[("x-tenant", "")], no_match),
            // A comma in a quoted string does not split.
            (&[("x-tenant", "acme-\"a,b\"")], allowed),
            // DENY: any value that matches, ignoring case, denies.
            (
                &[("x-tenant", "acme"), ("x-role", "a"), ("x-role", "evil")],
                evil,
            ),
            (&[("x-tenant", "acme"), ("x-role", "a, evil")], evil),
            (&[("x-tenant", "acme"), ("x-role", "EVIL")], evil),
            (&[("x-tenant", "acme"), ("x-role", "evilness")], allowed),
            // DENY notValues: excluded only when every value matches exactly.
            (&[("x-tenant", "acme"), ("x-client", "app-1")], allowed),
            (&[("x-tenant", "acme"), ("x-client", "app-1, curl")], client),
            (
                &[
                    ("x-tenant", "acme"),
                    ("x-client", "app-1"),
                    ("x-client", "x"),
                ],
                client,
            ),
            (&[("x-tenant", "acme"), ("x-client", "APP-1")], client),
        ];
        let cases: Vec<Case> = rows
            .iter()
            .map(|&(headers, expect)| Case {
                from: FRONTEND,
                port: 80,
                request: "GET /",
                headers,
                expect,
            })
            .collect();
        check(&text, DefaultAction::Allow, &cases);
    }

    /// A path no reading can be trusted for is refused only where a path could matter: when an
    /// enforced DENY or ALLOW rule names paths. AUDIT rules naming paths mark it; dry-run rules
    /// naming paths report that they would refuse it.
    #[test]
    fn an_ambiguous_path_is_refused_only_where_paths_are_judged() {
        let ambiguous = "/a\\b";
        let by_principal = policy(
            "callers",
            "  rules:\n  - from:\n    - principals: [\"spiffe://cluster.local/ns/shop/*\"]\n",
        );
        let audit = policy(
            "audit-admin",
            "  action: AUDIT\n  rules:\n  - to:\n    - paths: [\"/admin/*\"]\n",
        );
        let dry = policy(
            "dry-paths",
            "  dryRun: true\n  action: DENY\n  rules:\n  - to:\n    - paths: [\"/admin/*\"]\n",
        );
        let set = PolicySet::parse_str("p.yaml", &(by_principal.clone() + &audit + &dry)).unwrap();
        let compiled = set.for_workload(None, DefaultAction::Deny);
        let headers: &[(&str, &str)] = &[];
        let request = |path| Request {
            principal: FRONTEND,
            port: 80,
            http: Some(HttpRequest {
                method: "GET",
                path,
                headers: &headers,
            }),
        };
        let decision = compiled.evaluate(&request(ambiguous));
        assert!(
            decision
                .to_string()
                .starts_with("allowed by ALLOW policy \"callers\", rule 0"),
            "{decision}"
        );
        assert_eq!(&*decision.audit.unwrap().policy.name, "audit-admin");
        let dry_run = decision.dry_run.unwrap();
        assert_eq!(&*dry_run.policy.name, "dry-paths");
        assert_eq!(
            dry_run.reason,
            Reason::AmbiguousPath(AmbiguousPath::Backslash)
        );
        let explained = set.explain(None, DefaultAction::Deny, &request(ambiguous));
        assert_eq!(explained.ambiguous_path, Some(AmbiguousPath::Backslash));
        let text = explained.to_string();
        assert!(text.contains("GET /a\\b (cannot be judged)"), "{text}");
        assert!(
            text.contains("path:     the path holds a backslash"),
            "{text}"
        );

        // An enforced rule naming paths: refused, whatever the other rules say.
        let set = PolicySet::parse_str(
            "p.yaml",
            &(by_principal + &dry.replace("dryRun: true", "dryRun: false")),
        )
        .unwrap();
        let compiled = set.for_workload(None, DefaultAction::Allow);
        let decision = compiled.evaluate(&request(ambiguous));
        assert_eq!(decision.verdict, Verdict::Deny);
        assert_eq!(
            decision.reason,
            Reason::AmbiguousPath(AmbiguousPath::Backslash)
        );
        assert!(
            decision
                .to_string()
                .starts_with("refused: the path holds a backslash")
        );
        assert!(decision.policy_name().is_none());
        // A TCP connection has no path to refuse: the rules decide it as before (this DENY
        // rule names paths, so it refuses the connection whole).
        let tcp = compiled.evaluate(&Request {
            principal: FRONTEND,
            port: 80,
            http: None,
        });
        assert!(matches!(tcp.reason, Reason::Rule(_)), "{tcp}");
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
    fn selectors_of_another_trust_domain_are_reported_principals_are_not() {
        let text = policy(
            "typo",
            "  selector:\n    identities: [\"spiffe://cluster.lcoal/ns/shop/sa/backend\"]\n  rules:\n  - from:\n    - principals: [\"spiffe://partner.test/ns/shop/sa/frontend\"]\n",
        );
        let set = PolicySet::parse_str("p.yaml", &text).unwrap();
        let own: TrustDomain = "cluster.local".parse().unwrap();
        let errors = set.foreign_principals(&own);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("p.yaml:8:18: policy \"typo\": selector spiffe://cluster.lcoal/ns/shop/sa/backend is in trust domain cluster.lcoal"), "{}", errors[0]);
        assert_eq!(
            set.foreign_trust_domains(&own),
            vec!["partner.test".parse::<TrustDomain>().unwrap()]
        );
    }

    const PARTNER: &str = "spiffe://partner.test/ns/shop/sa/frontend";

    /// Decides a GET / from `principal` for the workload BACKEND of cluster.local.
    fn decide_for_backend(text: &str, default: DefaultAction, principal: &str) -> String {
        let set = PolicySet::parse_str("p.yaml", text).unwrap();
        let backend: SpiffeId = "spiffe://cluster.local/ns/shop/sa/backend".parse().unwrap();
        let compiled = set.for_workload(Some(&backend), default);
        let headers: &[(&str, &str)] = &[];
        let request = Request {
            principal,
            port: 8080,
            http: Some(HttpRequest {
                method: "GET",
                path: "/",
                headers: &headers,
            }),
        };
        let decision = compiled.evaluate(&request);
        let explained = set.explain(Some(&backend), default, &request);
        assert_eq!(explained.verdict, decision.verdict, "explain agrees");
        // A rule explain shows as matched is one the evaluator could have picked.
        if let Reason::Rule(rule) = decision.reason {
            let traced = explained
                .policies
                .iter()
                .find(|p| p.policy.name == rule.policy.name)
                .and_then(|p| p.rules.get(rule.rule));
            assert!(
                traced.is_some_and(|r| r.matched),
                "explain shows the deciding rule"
            );
        }
        decision.to_string()
    }

    /// A caller of a federated trust domain gets in only by an ALLOW rule naming its trust
    /// domain: never by the default, a wildcard, a rule without `from`, or a source with only
    /// `notPrincipals`.
    #[test]
    fn a_caller_of_another_trust_domain_needs_a_rule_naming_it() {
        let denied = "denied: the caller is of another trust domain";
        assert!(decide_for_backend("[]", DefaultAction::Allow, PARTNER).starts_with(denied));
        assert!(
            decide_for_backend("[]", DefaultAction::Allow, FRONTEND).starts_with("allowed"),
            "the mesh's own callers still get the default"
        );
        for unnamed in [
            "  rules:\n  - from:\n    - principals: [\"*\"]\n",
            "  rules:\n  - from:\n    - principals: [\"*/sa/frontend\"]\n",
            "  rules:\n  - to:\n    - ports: [8080]\n",
            "  rules:\n  - from:\n    - notPrincipals: [\"spiffe://cluster.local/ns/ops/*\"]\n",
        ] {
            let text = policy("allow", unnamed);
            let got = decide_for_backend(&text, DefaultAction::Allow, PARTNER);
            assert!(got.starts_with(denied), "{unnamed}: {got}");
            let own = decide_for_backend(&text, DefaultAction::Allow, FRONTEND);
            assert!(own.starts_with("allowed"), "{unnamed} (own caller): {own}");
        }
        for named in [
            "  rules:\n  - from:\n    - principals: [\"spiffe://partner.test/ns/shop/sa/frontend\"]\n",
            "  rules:\n  - from:\n    - principals: [\"spiffe://partner.test/*\"]\n",
            "  rules:\n  - from:\n    - principals: [\"*\", \"spiffe://partner.test/ns/shop/*\"]\n",
        ] {
            let text = policy("allow", named);
            let got = decide_for_backend(&text, DefaultAction::Deny, PARTNER);
            assert!(
                got.starts_with("allowed by ALLOW policy \"allow\""),
                "{named}: {got}"
            );
        }
        // A rule naming another federated domain does not let this one in.
        let other = policy(
            "allow",
            "  rules:\n  - from:\n    - principals: [\"spiffe://other.test/*\"]\n",
        );
        let got = decide_for_backend(&other, DefaultAction::Allow, PARTNER);
        assert!(got.starts_with(denied), "{got}");
        // A look-alike domain is another domain.
        let got = decide_for_backend(
            &policy("allow", "  rules:\n  - from:\n    - principals: [\"*\"]\n"),
            DefaultAction::Allow,
            "spiffe://cluster.local.evil/ns/shop/sa/frontend",
        );
        assert!(got.starts_with(denied), "{got}");
    }

    /// DENY rules lean the other way: their wildcards cover federated callers, and their
    /// exceptions spare one only by naming its trust domain.
    #[test]
    fn deny_rules_cover_callers_of_another_trust_domain() {
        let allow_partner = policy(
            "allow-partner",
            "  rules:\n  - from:\n    - principals: [\"spiffe://partner.test/*\"]\n",
        );
        let deny_all = allow_partner.clone()
            + &policy(
                "deny-all",
                "  action: DENY\n  rules:\n  - from:\n    - principals: [\"*\"]\n",
            );
        let got = decide_for_backend(&deny_all, DefaultAction::Allow, PARTNER);
        assert!(
            got.starts_with("denied by DENY policy \"deny-all\""),
            "{got}"
        );

        let deny_but_frontends = allow_partner.clone()
            + &policy(
                "deny-but-frontends",
                "  action: DENY\n  rules:\n  - from:\n    - notPrincipals: [\"*/sa/frontend\"]\n",
            );
        let got = decide_for_backend(&deny_but_frontends, DefaultAction::Allow, PARTNER);
        assert!(
            got.starts_with("denied by DENY policy \"deny-but-frontends\""),
            "a wildcard exception does not spare a federated caller: {got}"
        );
        let deny_but_partner = allow_partner
            + &policy(
                "deny-but-partner",
                "  action: DENY\n  rules:\n  - from:\n    - notPrincipals: [\"spiffe://partner.test/ns/shop/*\"]\n",
            );
        let got = decide_for_backend(&deny_but_partner, DefaultAction::Allow, PARTNER);
        assert!(
            got.starts_with("allowed by ALLOW policy \"allow-partner\""),
            "{got}"
        );
    }
}
