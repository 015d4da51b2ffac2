//! `explain`: the decision for one request and the chain of reasoning behind it, policy by
//! policy and rule by rule, in the order the evaluator works.

use std::fmt;

use hush_identity::SpiffeId;

use crate::compile::{PolicyInfo, PolicySet};
use crate::eval::{
    Context, DefaultAction, Reason, Request, Stance, Verdict, applies_to, rule_matches,
};
use crate::model::Action;
use crate::path::AmbiguousPath;

/// Why a request is allowed or denied, written out.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The request, in words: `spiffe://… → port 8080, GET /api/items`.
    pub request: String,
    /// Why the request's path cannot be judged, when it cannot: rules naming paths lean the
    /// way their action does, and an enforced DENY or ALLOW rule naming paths refuses it.
    pub ambiguous_path: Option<AmbiguousPath>,
    /// The workload whose policies were used, when one was given.
    pub workload: Option<String>,
    /// The decision.
    pub verdict: Verdict,
    /// The sentence a refused caller reads: `denied by DENY policy "x", rule 0 (file:line)`.
    pub summary: String,
    /// The AUDIT rule that marked the request, in words.
    pub audit: Option<String>,
    /// What dry-run policies would have changed, in words.
    pub dry_run: Option<String>,
    /// Every policy that applies, with each rule's outcome.
    pub policies: Vec<PolicyTrace>,
    /// Policies that do not apply to the workload, and why.
    pub not_applied: Vec<(PolicyInfo, String)>,
    /// What decides when no policy does.
    pub default: DefaultAction,
    /// Whether the request was an opaque TCP connection.
    pub tcp: bool,
}

/// One policy's rules, as the evaluator saw them.
#[derive(Clone, Debug)]
pub struct PolicyTrace {
    /// The policy.
    pub policy: PolicyInfo,
    /// Whether one of its rules names `paths` or `notPaths`.
    pub names_paths: bool,
    /// Its rules, in order.
    pub rules: Vec<RuleTrace>,
}

/// One rule's outcome.
#[derive(Clone, Debug)]
pub struct RuleTrace {
    /// Index in `spec.rules`.
    pub index: usize,
    /// Line in the policy file.
    pub line: u64,
    /// Whether it matched.
    pub matched: bool,
    /// Why it did not (the first part that failed, for each `from`/`to` entry tried).
    pub why_not: Vec<String>,
}

impl PolicySet {
    /// Decides `request` for `workload` (every policy applies when it is `None`) and explains
    /// the decision.
    pub fn explain(
        &self,
        workload: Option<&SpiffeId>,
        default: DefaultAction,
        request: &Request<'_>,
    ) -> Explanation {
        let compiled = self.for_workload(workload, default);
        let decision = compiled.evaluate(request);
        let ctx = Context::new(request, compiled.is_foreign(request.principal));

        let mut policies = Vec::new();
        let mut not_applied = Vec::new();
        for policy in &self.policies {
            if let Some(workload) = workload
                && let Err(why) = applies_to(policy, workload)
            {
                not_applied.push((policy.info.clone(), why));
                continue;
            }
            let stance = Stance::of(policy.info.action);
            let rules = policy
                .rules
                .iter()
                .enumerate()
                .map(|(index, rule)| {
                    let mut why_not = Vec::new();
                    let matched = rule_matches(rule, &ctx, stance, &mut why_not);
                    RuleTrace {
                        index,
                        line: rule.line,
                        matched,
                        why_not: if matched { Vec::new() } else { why_not },
                    }
                })
                .collect();
            policies.push(PolicyTrace {
                policy: policy.info.clone(),
                names_paths: policy.rules.iter().any(|rule| rule.names_paths()),
                rules,
            });
        }

        let request_text = match (&request.http, &ctx.http) {
            (Some(http), Some(read)) => {
                let judged = match &read.path {
                    Ok(readings) if readings.is_single() && readings.as_sent() == http.path => {
                        String::new()
                    }
                    Ok(readings) => format!(" (read as {readings})"),
                    Err(_) => " (cannot be judged)".to_string(),
                };
                format!(
                    "{} → port {}, {} {}{judged}",
                    request.principal, request.port, http.method, http.path
                )
            }
            _ => format!(
                "{} → port {}, an opaque TCP connection",
                request.principal, request.port
            ),
        };
        Explanation {
            request: request_text,
            ambiguous_path: ctx.ambiguous_path(),
            workload: workload.map(ToString::to_string),
            verdict: decision.verdict,
            summary: decision.to_string(),
            audit: decision
                .audit
                .map(|rule| format!("marked for the audit log by {}", Reason::Rule(rule))),
            dry_run: decision.dry_run.map(|dry| {
                format!(
                    "dry-run policy {:?} would have {}: {}",
                    dry.policy.name,
                    match dry.verdict {
                        Verdict::Allow => "allowed it",
                        Verdict::Deny => "denied it",
                    },
                    dry.reason
                )
            }),
            policies,
            not_applied,
            default,
            tcp: request.http.is_none(),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request:  {}", self.request)?;
        match &self.workload {
            Some(workload) => writeln!(f, "workload: {workload}")?,
            None => writeln!(
                f,
                "workload: not given, so every policy is taken to apply (pass --workload to \
                 use selectors and namespaces)"
            )?,
        }
        let verdict = match self.verdict {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        };
        writeln!(f, "decision: {verdict}, {}", self.summary)?;
        if let Some(why) = &self.ambiguous_path {
            writeln!(
                f,
                "path:     {why}; rules naming paths match it if they are DENY or AUDIT rules and \
                 not if they are ALLOW rules, and an enforced DENY or ALLOW rule naming paths \
                 refuses it"
            )?;
        }
        if let Some(audit) = &self.audit {
            writeln!(f, "audit:    {audit}")?;
        }
        if let Some(dry_run) = &self.dry_run {
            writeln!(f, "dry run:  {dry_run}")?;
        }
        if self.tcp {
            writeln!(
                f,
                "note:     without --method and --path this is a TCP connection: ALLOW rules \
                 naming HTTP fields do not match it, DENY rules naming them deny it whole"
            )?;
        }

        let groups = [
            (
                "DENY policies (checked first: one matching rule denies)",
                Action::Deny,
                false,
            ),
            (
                "ALLOW policies (once any applies, only what a rule matches is allowed)",
                Action::Allow,
                false,
            ),
            (
                "AUDIT policies (a matching rule marks the request for the audit log)",
                Action::Audit,
                false,
            ),
            (
                "dry-run DENY policies (reported, not enforced)",
                Action::Deny,
                true,
            ),
            (
                "dry-run ALLOW policies (reported, not enforced)",
                Action::Allow,
                true,
            ),
        ];
        for (title, action, dry_run) in groups {
            let members: Vec<&PolicyTrace> = self
                .policies
                .iter()
                .filter(|p| p.policy.action == action && p.policy.dry_run == dry_run)
                .collect();
            if members.is_empty() {
                continue;
            }
            writeln!(f, "\n{title}:")?;
            for trace in members {
                let info = &trace.policy;
                writeln!(f, "  {} ({}:{})", info.name, info.origin, info.line)?;
                if trace.rules.is_empty() {
                    writeln!(f, "    no rules: matches nothing")?;
                }
                for rule in &trace.rules {
                    if rule.matched {
                        writeln!(f, "    rule {} (line {}): MATCH", rule.index, rule.line)?;
                    } else {
                        writeln!(
                            f,
                            "    rule {} (line {}): no match: {}",
                            rule.index,
                            rule.line,
                            rule.why_not.join("; ")
                        )?;
                    }
                }
            }
        }
        if !self.not_applied.is_empty() {
            writeln!(f, "\nnot applied to this workload:")?;
            for (info, why) in &self.not_applied {
                writeln!(f, "  {} ({}:{}): {why}", info.name, info.origin, info.line)?;
            }
        }
        let default = match self.default {
            DefaultAction::Allow => "allow",
            DefaultAction::Deny => "deny",
        };
        writeln!(
            f,
            "\ndefault:  {default} (decides when no ALLOW or DENY policy applies)"
        )
    }
}
