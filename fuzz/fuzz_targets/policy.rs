//! Authorization policies come from operators and ConfigMaps: any text must give a policy set or
//! errors that render, never a panic. What parses must decide as `explain` says: its rule-by-rule
//! trace (every rule checked, no index) must lead to the evaluator's verdict, deciding rule,
//! audit mark and dry-run verdict. The fuzzed text is also read as a request path: its readings
//! or its refusal must be stable, and a refusal must be what the evaluator says.
#![no_main]

use hush_identity::{SpiffeId, TrustDomain};
use hush_policy::{
    Action, DefaultAction, Explanation, Headers, HttpRequest, PolicySet, Reason, Request, Verdict,
    WorkloadPolicy, read_path,
};
use libfuzzer_sys::fuzz_target;

const PLAIN: &[(&str, &str)] = &[
    ("host", "api.shop.svc"),
    ("user-agent", "curl/8.5.0"),
    ("x-env", "prod"),
];
const ODD: &[(&str, &str)] = &[
    ("X-Env", "staging"),
    ("x-env", "prod, \"a,b\""),
    ("x-debug", "1"),
    ("authorization", "Basic Zm9vOmJhcg=="),
];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        read_as_path(text);
        match PolicySet::parse_str("fuzz.yaml", text) {
            Ok(set) => check(&set),
            Err(errors) => {
                assert!(!errors.is_empty());
                for error in &errors {
                    let _ = error.to_string();
                }
            }
        }
    }
});

/// A path reads the same every time; each reading is in canonical spelling, so reading it again
/// changes nothing and refuses nothing.
fn read_as_path(text: &str) {
    let Ok(readings) = read_path(text) else {
        return;
    };
    let _ = readings.to_string();
    for reading in readings.iter() {
        let again = read_path(reading)
            .unwrap_or_else(|why| panic!("{text:?} read as {reading:?}, which is refused: {why}"));
        assert_eq!(again.as_sent(), reading, "{text:?}");
    }
}

fn check(set: &PolicySet) {
    let domain = TrustDomain::new("cluster.local").expect("a valid trust domain");
    for error in set.foreign_principals(&domain) {
        let _ = error.to_string();
    }
    let workload =
        SpiffeId::new("spiffe://cluster.local/ns/shop/sa/backend").expect("a valid SPIFFE ID");
    let owned: Vec<(String, String)> = ODD
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let (plain, odd): (&[(&str, &str)], &dyn Headers) = (PLAIN, &owned);
    let frontend = "spiffe://cluster.local/ns/shop/sa/frontend";
    let admin = "spiffe://cluster.local/ns/ops/sa/admin";
    let stranger = "spiffe://example.org/ns/shop/sa/frontend";
    let requests = [
        http(frontend, 8080, "GET", "/api/items", &plain),
        http(admin, 8443, "POST", "/api/../admin//x/./%61?q=1#f", odd),
        http(stranger, 8080, "PROPFIND", "", &plain),
        http(frontend, 9090, "DELETE", "/%2e%2e/healthz/..", odd),
        http(frontend, 8080, "get", "/Admin;x=1/%2Fa", odd),
        http(admin, 8080, "GET", "/public/..;/admin", &plain),
        tcp(frontend, 8080),
        tcp(stranger, 5432),
    ];
    for (workload, default) in [
        (None, DefaultAction::Deny),
        (Some(&workload), DefaultAction::Allow),
    ] {
        let policy = set.for_workload(workload, default);
        for port in [80, 5432, 8080] {
            for error in set.http_rules_on_tcp_port(workload, port) {
                let _ = error.to_string();
            }
        }
        for request in &requests {
            let explanation = set.explain(workload, default, request);
            // With a workload, a caller of another trust domain is a federated one: no default
            // admits it.
            let foreign = workload.is_some() && !request.principal.starts_with("spiffe://cluster.local/");
            agree(&policy, &explanation, default, request, foreign);
        }
    }
}

fn http<'a>(
    principal: &'a str,
    port: u16,
    method: &'a str,
    path: &'a str,
    headers: &'a dyn Headers,
) -> Request<'a> {
    Request {
        principal,
        port,
        http: Some(HttpRequest {
            method,
            path,
            headers,
        }),
    }
}

fn tcp(principal: &str, port: u16) -> Request<'_> {
    Request {
        principal,
        port,
        http: None,
    }
}

/// The evaluator's decision is the one the explanation's trace leads to.
fn agree(
    policy: &WorkloadPolicy,
    explanation: &Explanation,
    default: DefaultAction,
    request: &Request<'_>,
    foreign: bool,
) {
    let decision = policy.evaluate(request);
    let _ = explanation.to_string();
    assert_eq!(decision.verdict, explanation.verdict, "{request:?}");
    assert_eq!(decision.to_string(), explanation.summary, "{request:?}");

    let first = |action: Action, dry_run: bool| {
        explanation
            .policies
            .iter()
            .filter(|p| p.policy.action == action && p.policy.dry_run == dry_run)
            .find_map(|p| {
                let rule = p.rules.iter().find(|r| r.matched)?;
                Some((p.policy.name.to_string(), rule.index))
            })
    };
    let applies = |action: Action, dry_run: bool| {
        explanation
            .policies
            .iter()
            .any(|p| p.policy.action == action && p.policy.dry_run == dry_run)
    };
    let by_default = match default {
        DefaultAction::Allow if !foreign => Verdict::Allow,
        _ => Verdict::Deny,
    };
    // A path no reading can be trusted for is refused before any rule when an enforced (or,
    // for the dry run, any) DENY or ALLOW policy names paths.
    let refuses = |with_dry_run: bool| {
        explanation.ambiguous_path.is_some()
            && explanation.policies.iter().any(|p| {
                p.names_paths && p.policy.action != Action::Audit && (with_dry_run || !p.policy.dry_run)
            })
    };
    let decide = |with_dry_run: bool| {
        if refuses(with_dry_run) {
            return (Verdict::Deny, None);
        }
        let deny = first(Action::Deny, false)
            .or_else(|| with_dry_run.then(|| first(Action::Deny, true)).flatten());
        if let Some(rule) = deny {
            return (Verdict::Deny, Some(rule));
        }
        if applies(Action::Allow, false) || (with_dry_run && applies(Action::Allow, true)) {
            let allow = first(Action::Allow, false)
                .or_else(|| with_dry_run.then(|| first(Action::Allow, true)).flatten());
            return match allow {
                Some(rule) => (Verdict::Allow, Some(rule)),
                None => (Verdict::Deny, None),
            };
        }
        (by_default, None)
    };

    let (verdict, rule) = decide(false);
    assert_eq!(decision.verdict, verdict, "{request:?}\n{explanation}");
    let decided_by = match decision.reason {
        Reason::Rule(rule) => Some((rule.policy.name.to_string(), rule.rule)),
        Reason::AmbiguousPath(why) => {
            assert!(refuses(false), "{request:?}\n{explanation}");
            assert_eq!(Some(why), explanation.ambiguous_path, "{request:?}");
            None
        }
        Reason::NoAllowRuleMatched { .. } | Reason::Default(_) => None,
        Reason::ForeignNotNamed => {
            assert!(foreign, "{request:?}\n{explanation}");
            None
        }
    };
    assert_eq!(decided_by, rule, "{request:?}\n{explanation}");
    let audit = decision
        .audit
        .map(|rule| (rule.policy.name.to_string(), rule.rule));
    assert_eq!(
        audit,
        first(Action::Audit, false),
        "{request:?}\n{explanation}"
    );
    let (would, _) = decide(true);
    let dry_run = decision.dry_run.map(|d| d.verdict);
    assert_eq!(
        dry_run,
        (would != verdict).then_some(would),
        "{request:?}\n{explanation}"
    );
}
