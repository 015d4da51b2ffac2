//! What one decision costs against a large policy set: 1,000 rules, generated here in the shape
//! a mesh of 100 namespaces would write them, and requests that take each of the evaluator's
//! paths (an indexed ALLOW, no rule at all, a DENY rule, TCP, a path that needs normalizing).
//! Also what reading and compiling that set costs.
//!
//! `cargo bench -p hush-policy --bench evaluate`
//!
//! Every request's verdict (and the rule that decides it) is checked before it is measured, so
//! a change to the generated policies or to the evaluator cannot quietly make a bench time a
//! different path than its name says.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hush_identity::SpiffeId;
use hush_policy::{
    DefaultAction, HttpRequest, PolicySet, Reason, Request, Source, Verdict, WorkloadPolicy,
};

/// ALLOW policies, one per namespace `ns0` … `ns99`.
const NAMESPACES: usize = 100;
/// Rules in each ALLOW policy: 7 HTTP rules and a TCP rule naming exact principals, and one
/// rule with a wildcard principal.
const ALLOW_RULES: usize = 9;
/// Rules in each of the four DENY policies.
const DENY_RULES: usize = 10;
/// Rules in the AUDIT policy.
const AUDIT_RULES: usize = 60;
/// 100 × 9 + 4 × 10 + 60.
const TOTAL_RULES: usize = 1_000;

const TD: &str = "spiffe://cluster.local";
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const HTTP_PORT: u16 = 8080;
const DB_PORT: u16 = 5432;

fn header(name: &str, action: &str) -> String {
    format!(
        "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n\
         spec:\n  action: {action}\n  rules:\n"
    )
}

/// `allow-nsN`: the callers of each namespace's API. Rule `r` (0-6) lets `saR*2` and `saR*2+1`
/// call `/api/v1/itemsR/*`; rule 7 lets three of them reach the database port over TCP; rule
/// 8 lets a whole group (the ops namespace, or the policy's own namespace) read health and
/// metrics endpoints, and is the kind of rule the principal index cannot hold.
fn allow_policy(n: usize) -> String {
    let mut text = header(&format!("allow-ns{n}"), "ALLOW");
    for r in 0..7_usize {
        let (a, b) = (2 * r, 2 * r + 1);
        let methods = if r.is_multiple_of(2) {
            format!("[GET, HEAD, {}]", METHODS[1 + r % 3])
        } else {
            "[GET, POST, PUT, PATCH, DELETE]".to_string()
        };
        text.push_str(&format!(
            "    - from:\n        - principals: [\"{TD}/ns/ns{n}/sa/sa{a}\", \"{TD}/ns/ns{n}/sa/sa{b}\"]\n      \
             to:\n        - ports: [{HTTP_PORT}, 8443]\n          methods: {methods}\n          \
             paths: [\"/api/v1/items{r}/*\", \"/api/v1/items{r}\"]\n"
        ));
    }
    text.push_str(&format!(
        "    - from:\n        - principals: [\"{TD}/ns/ns{n}/sa/sa0\", \"{TD}/ns/ns{n}/sa/sa2\", \
         \"{TD}/ns/ns{n}/sa/sa4\"]\n      to:\n        - ports: [{DB_PORT}]\n"
    ));
    let group = if n.is_multiple_of(2) {
        format!("{TD}/ns/ops/*")
    } else {
        format!("{TD}/ns/ns{n}/*")
    };
    text.push_str(&format!(
        "    - from:\n        - principals: [\"{group}\"]\n      to:\n        - ports: [{HTTP_PORT}, 9090]\n          \
         methods: [GET]\n          paths: [\"/healthz\", \"/metrics\", \"/debug/ns{n}/*\"]\n"
    ));
    text
}

/// Four DENY policies: quarantined identities (exact principals), ports nobody outside ops may
/// reach, internal paths (`paths` and `notPaths`), and request headers (`when`). Every rule
/// naming HTTP fields is limited to the HTTP ports, so a TCP connection to the database port
/// is not refused whole.
fn deny_policies() -> Vec<String> {
    let mut quarantine = header("deny-quarantine", "DENY");
    for i in 0..DENY_RULES {
        quarantine.push_str(&format!(
            "    - from:\n        - principals: [\"{TD}/ns/quarantine/sa/svc{i}\"]\n"
        ));
    }

    let mut ports = header("deny-ports", "DENY");
    for i in 0..DENY_RULES {
        if i == 0 {
            ports.push_str(&format!(
                "    - from:\n        - notPrincipals: [\"{TD}/ns/ops/*\"]\n      \
                 to:\n        - notPorts: [{HTTP_PORT}, 8443, 9090, {DB_PORT}]\n"
            ));
        } else {
            let port = 2000 + i;
            ports.push_str(&format!(
                "    - from:\n        - principals: [\"{TD}/ns/ns{}/*\"]\n      to:\n        - ports: [{port}]\n",
                i * 10
            ));
        }
    }

    let mut paths = header("deny-internal-paths", "DENY");
    for i in 0..DENY_RULES {
        if i < 5 {
            paths.push_str(&format!(
                "    - from:\n        - notPrincipals: [\"{TD}/ns/ops/*\"]\n      \
                 to:\n        - ports: [{HTTP_PORT}, 8443]\n          paths: [\"/internal/svc{i}/*\", \"/admin{i}\"]\n"
            ));
        } else {
            paths.push_str(&format!(
                "    - to:\n        - ports: [8443]\n          methods: [{}]\n          \
                 notPaths: [\"/api/*\", \"/healthz\", \"/metrics\"]\n",
                METHODS[i % 4]
            ));
        }
    }

    let mut headers = header("deny-headers", "DENY");
    let conditions = [
        ("x-debug", "values: [\"true\", \"1\"]"),
        ("x-canary", "values: [\"force*\"]"),
        (
            "x-env",
            "values: [\"*\"]\n          notValues: [\"prod\", \"production\", \"staging\"]",
        ),
        ("x-legacy-auth", "values: [\"*\"]"),
        ("x-forwarded-host", "values: [\"*.internal\"]"),
        ("x-original-url", "values: [\"/admin*\"]"),
        ("x-rewrite-url", "values: [\"/internal*\"]"),
        ("authorization", "values: [\"Basic *\"]"),
        ("x-hush-bypass", "values: [\"*\"]"),
        (
            "user-agent",
            "values: [\"sqlmap*\", \"nikto*\", \"masscan*\"]",
        ),
    ];
    for (name, condition) in conditions {
        headers.push_str(&format!(
            "    - to:\n        - ports: [{HTTP_PORT}, 8443]\n      \
             when:\n        - key: request.headers[{name}]\n          {condition}\n"
        ));
    }
    vec![quarantine, ports, paths, headers]
}

/// `audit-writes`: writes to sensitive collections, by named callers (54 rules the index
/// holds) and by any admin service account (6 that it cannot).
fn audit_policy() -> String {
    let mut text = header("audit-writes", "AUDIT");
    for i in 0..AUDIT_RULES {
        let from = if i % 10 == 9 {
            "*/sa/admin".to_string()
        } else {
            format!("{TD}/ns/ns{i}/sa/sa{}", i % 14)
        };
        text.push_str(&format!(
            "    - from:\n        - principals: [\"{from}\"]\n      \
             to:\n        - methods: [POST, PUT, PATCH, DELETE]\n          paths: [\"/api/v1/items{}/*\"]\n",
            i % 7
        ));
    }
    text
}

/// The generated policies, split over files as an operator would keep them.
fn sources() -> Vec<Source> {
    let allow: Vec<String> = (0..NAMESPACES).map(allow_policy).collect();
    let mut deny = deny_policies();
    deny.push(audit_policy());
    vec![
        Source {
            origin: "policies/allow.yaml".to_string(),
            text: allow.join("---\n"),
        },
        Source {
            origin: "policies/guardrails.yaml".to_string(),
            text: deny.join("---\n"),
        },
    ]
}

fn parse(sources: &[Source]) -> PolicySet {
    match PolicySet::parse(sources) {
        Ok(set) => set,
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!(
                "the generated policies do not parse:\n{}",
                errors.join("\n")
            )
        }
    }
}

/// Headers an ordinary request carries; the ones the DENY conditions read are absent.
const HEADERS: &[(&str, &str)] = &[
    ("host", "api.ns99.svc.cluster.local"),
    ("user-agent", "hush-bench/1.0"),
    ("accept", "application/json"),
    ("x-request-id", "6f1c1a52-2f6b-4b4e-9a8e-3d2b3f7f2a10"),
    ("x-env", "prod"),
];

/// The same, with a scanner's user agent (the last rule of the last DENY policy).
const SCANNER_HEADERS: &[(&str, &str)] = &[
    ("host", "api.ns99.svc.cluster.local"),
    ("user-agent", "sqlmap/1.7.2#stable"),
    ("accept", "*/*"),
    ("x-request-id", "0d6f5b1e-7c9a-4f3e-8d2c-5b1a9e0c7f44"),
    ("x-env", "prod"),
];

fn http<'a>(
    principal: &'a str,
    method: &'a str,
    path: &'a str,
    headers: &'a &'a [(&'a str, &'a str)],
) -> Request<'a> {
    Request {
        principal,
        port: HTTP_PORT,
        http: Some(HttpRequest {
            method,
            path,
            headers,
        }),
    }
}

/// What a request must come to, checked before it is measured.
fn expect_decision(
    policy: &WorkloadPolicy,
    name: &str,
    request: &Request<'_>,
    verdict: Verdict,
    rule: Option<(&str, usize)>,
) {
    let decision = policy.evaluate(request);
    assert_eq!(decision.verdict, verdict, "{name}: {decision}");
    match (rule, decision.reason) {
        (Some((policy_name, index)), Reason::Rule(matched)) => {
            assert_eq!(&*matched.policy.name, policy_name, "{name}: {decision}");
            assert_eq!(matched.rule, index, "{name}: {decision}");
        }
        (None, Reason::NoAllowRuleMatched { .. }) => {}
        _ => panic!("{name}: decided for another reason than expected: {decision}"),
    }
    assert!(
        decision.audit.is_none(),
        "{name}: unexpectedly audited: {decision:?}"
    );
    assert!(decision.dry_run.is_none(), "{name}: {decision:?}");
}

fn bench_evaluate(c: &mut Criterion) {
    let sources = sources();
    let set = parse(&sources);
    assert_eq!(set.rule_count(), TOTAL_RULES);
    assert_eq!(
        NAMESPACES * ALLOW_RULES + 4 * DENY_RULES + AUDIT_RULES,
        TOTAL_RULES
    );
    assert_eq!(set.len(), NAMESPACES + 4 + 1);
    let workload = SpiffeId::new(&format!("{TD}/ns/backend/sa/api")).expect("a valid SPIFFE ID");
    let policy = set.for_workload(Some(&workload), DefaultAction::Deny);
    // No policy has a namespace or selector: all of them, and all 1,000 rules, apply.
    assert_eq!(policy.policies().len(), set.len());

    let headers = HEADERS;
    let scanner = SCANNER_HEADERS;
    let last_caller = format!("{TD}/ns/ns99/sa/sa13");
    let stranger = format!("{TD}/ns/ns100/sa/unknown");
    let db_client = format!("{TD}/ns/ns99/sa/sa4");
    let items3_caller = format!("{TD}/ns/ns50/sa/sa7");

    // The index finds sa13's one rule, the last exact HTTP rule written; the 99 wildcard rules
    // written before it are walked too.
    let allow_exact = http(&last_caller, "GET", "/api/v1/items6/42", &headers);
    expect_decision(
        &policy,
        "allow_exact_principal",
        &allow_exact,
        Verdict::Allow,
        Some(("allow-ns99", 6)),
    );
    // No rule names this caller: every wildcard DENY, ALLOW and AUDIT rule is walked in vain.
    let no_rule = http(&stranger, "GET", "/api/v1/items0/42", &headers);
    expect_decision(
        &policy,
        "deny_no_rule_matched",
        &no_rule,
        Verdict::Deny,
        None,
    );
    // An allowed request, but for the scanner's user agent: the last DENY rule.
    let deny_rule = http(&last_caller, "GET", "/api/v1/items6/42", &scanner);
    expect_decision(
        &policy,
        "deny_rule",
        &deny_rule,
        Verdict::Deny,
        Some(("deny-headers", 9)),
    );
    // A database connection: DENY rules naming HTTP fields are limited to the HTTP ports, so
    // the TCP rule of allow-ns99 decides.
    let tcp = Request {
        principal: &db_client,
        port: DB_PORT,
        http: None,
    };
    expect_decision(
        &policy,
        "tcp",
        &tcp,
        Verdict::Allow,
        Some(("allow-ns99", 7)),
    );
    // Read two ways (as sent, `/api/v1/items3/./x/~b`, and resolved, `/api/v1/items3/x/~b`),
    // both inside the ALLOW rule: copied once per reading, and every path rule tried on both.
    let dotted = http(&items3_caller, "GET", "/api/v1/items3/./x/%7Eb", &headers);
    expect_decision(
        &policy,
        "path_needs_normalizing",
        &dotted,
        Verdict::Allow,
        Some(("allow-ns50", 3)),
    );

    let mut group = c.benchmark_group("evaluate");
    for (name, request) in [
        ("allow_exact_principal", &allow_exact),
        ("deny_no_rule_matched", &no_rule),
        ("deny_rule", &deny_rule),
        ("tcp", &tcp),
        ("path_needs_normalizing", &dotted),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(&policy).evaluate(black_box(request)).verdict)
        });
    }
    group.finish();
}

fn bench_compile(c: &mut Criterion) {
    let sources = sources();
    assert_eq!(parse(&sources).rule_count(), TOTAL_RULES);
    let workload = SpiffeId::new(&format!("{TD}/ns/backend/sa/api")).expect("a valid SPIFFE ID");
    let mut group = c.benchmark_group("compile");
    group.bench_function("1000_rules", |b| {
        b.iter(|| {
            let set = parse(black_box(&sources));
            set.for_workload(Some(&workload), DefaultAction::Deny)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_evaluate, bench_compile);
criterion_main!(benches);
