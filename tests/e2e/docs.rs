//! The docs stay true: every link points to a file (and heading) of the repository, every
//! metric a sidecar or the CA exports is in its metrics table and every row of it is exported,
//! every key of `examples/proxy/reference.yaml` is in the configuration reference and no other
//! key is, and the README's five-minute tour runs as written.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use hush_identity::TrustBundle;
use hush_test_support::{CaProcess, CsrKeyKind, mint_token, plain_csr};

use crate::mesh::sidecars::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository")
}

fn read(path: &str) -> String {
    fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every Markdown file of the repository, outside build output.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("a readable directory") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                if !["target", ".git", "node_modules"].contains(&name.as_ref()) {
                    walk(&path, found);
                }
            } else if name.ends_with(".md") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo(), &mut found);
    found
}

/// The text of a Markdown file outside fenced code blocks and inline code spans.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The targets of the inline links `[text](target)` in a file's prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut found = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        found.push(after[..end].trim().to_owned());
        rest = &after[end..];
    }
    found
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and
/// `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(slug(line.trim_start_matches('#')));
        }
    }
    found
}

#[test]
fn every_link_points_to_a_file_and_heading_of_the_repository() {
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() >= 10, "{files:?}");
    for file in &files {
        let text = fs::read_to_string(file).expect("a Markdown file");
        let shown = file
            .strip_prefix(repo())
            .unwrap_or(file)
            .display()
            .to_string();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                broken.push(format!("{shown}: {link} points outside the repository"));
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a directory").join(path)
            };
            if !target.exists() {
                broken.push(format!("{shown}: {link}: no such file"));
                continue;
            }
            if !anchor.is_empty() {
                let heads = anchors(&fs::read_to_string(&target).unwrap_or_default());
                if !heads.contains(anchor) {
                    broken.push(format!("{shown}: {link}: no such heading"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn headings_are_read_as_github_anchors() {
    assert_eq!(
        slug(" What the app is told, and what cannot reach it"),
        "what-the-app-is-told-and-what-cannot-reach-it"
    );
    assert_eq!(
        slug(" When a connection fails: `hush diagnose`"),
        "when-a-connection-fails-hush-diagnose"
    );
    assert_eq!(
        links("see [a](b.md#c) and `[not](code)`\n```\n[no](x)\n```\n"),
        ["b.md#c"]
    );
}

/// The metric names in the first column of `doc`'s metrics table: its rows that begin with a
/// name starting `prefix` (`hush_` for the sidecar's, `hush_ca_` for the CA's).
fn documented_metrics(doc: &str, prefix: &str) -> BTreeSet<String> {
    let doc = read(doc);
    let mut names = BTreeSet::new();
    for line in doc.lines() {
        let Some(first) = line.trim_start().strip_prefix(&format!("| `{prefix}")) else {
            continue;
        };
        let cell = first.split(" |").next().unwrap_or_default();
        for part in format!("`{prefix}{cell}").split('`') {
            if let Some(name) = part.strip_prefix(prefix) {
                let name = name.split('{').next().unwrap_or_default();
                names.insert(format!("{prefix}{name}"));
            }
        }
    }
    names
}

/// The metric families a scrape declares (`# TYPE name kind`), named as their samples are:
/// a counter's with `_total`.
fn exported_metrics(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            let (name, kind) = (words.next()?, words.next()?);
            Some(if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}

/// A scrape shows the families that have samples: after a request through a policy, most of
/// them. Every one is in the table; every row of the table is a family the sidecar registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_in_the_metrics_table_and_every_row_is_registered() {
    let mesh = Mesh::start(MeshSpec {
        backend_policy: Some(format!(
            "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: api}}\n\
             spec:\n  rules:\n    - from: [{{principals: [\"{FRONTEND}\"]}}]\n"
        )),
        ..MeshSpec::default()
    })
    .await;
    let (status, _) = get(mesh.to_backend(), "/", &[]).await;
    assert_eq!(status, 200);
    let exported: BTreeSet<String> = tokio::task::block_in_place(|| {
        [&mesh.backend, &mesh.frontend]
            .into_iter()
            .flat_map(|sidecar| exported_metrics(&metrics_of(sidecar)))
            .collect()
    });
    assert!(exported.len() >= 12, "{exported:?}");
    let documented = documented_metrics("docs/sidecar.md", "hush_");
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/sidecar.md's metrics table: {undocumented:?}"
    );
    // The registry names a family without its prefix, its unit or a counter's `_total`.
    let source = read("crates/proxy/src/metrics.rs");
    let stale: Vec<_> = documented
        .iter()
        .filter(|name| {
            let bare = name.trim_start_matches("hush_");
            let bare = bare.strip_suffix("_total").unwrap_or(bare);
            let unitless = bare.strip_suffix("_seconds").unwrap_or(bare);
            ![bare, unitless]
                .iter()
                .any(|bare| source.contains(&format!("\"{bare}\"")))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "in the metrics table but not registered by crates/proxy/src/metrics.rs: {stale:?}"
    );
}

/// Every family the CA exports is in `docs/ca.md`'s metrics table, and every row is exported,
/// once an issuance, a refusal and a federation fetched and one failing gave each family a
/// sample.
#[tokio::test]
async fn every_ca_metric_is_in_the_cas_metrics_table_and_every_row_is_exported() {
    let (temp, ca_dir) = new_ca();
    let partner_dir = temp.path().join("partner");
    hush_test_support::run_hush_ok(
        HUSH,
        &[
            "ca",
            "init",
            "--dir",
            path_str(&partner_dir),
            "--trust-domain",
            "partner.example",
        ],
    );
    let mut partner = CaProcess::start(
        HUSH,
        &partner_dir,
        &["--bundle-endpoint-listen", "127.0.0.1:0"],
    );
    let endpoint = crate::federation::endpoint_of(&mut partner);
    let federate = format!(
        "partner.example={endpoint},endpoint-id=spiffe://partner.example/hush/bundle-endpoint,bundle={}",
        path_str(&partner_dir.join("bundle.pem"))
    );
    let ca = CaProcess::start(
        HUSH,
        &ca_dir,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--federate-with",
            &federate,
            "--federate-with",
            "unreachable.example=https://127.0.0.1:1/",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ![
        "hush_ca_federation_last_fetch_timestamp_seconds{",
        "hush_ca_federation_fetch_failures_total{",
    ]
    .iter()
    .all(|family| ca.scrape().contains(family))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the federation metrics never got samples:\n{}\n{}",
            ca.scrape(),
            ca.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let bundle = TrustBundle::from_pem(&fs::read(ca_dir.join("bundle.pem")).expect("bundle"), None)
        .expect("the CA's bundle");
    let client = hush_ca_client::CaClient::new(ca.url(), bundle.roots()).expect("a CA client");
    let token = mint_token(HUSH, &ca_dir, FRONTEND, &[]);
    let csr = || plain_csr(CsrKeyKind::EcdsaP256).der;
    within(client.certify(&token, csr(), None))
        .await
        .expect("issued");
    within(client.certify(&token, csr(), None))
        .await
        .expect_err("a used token is refused");
    let exported = exported_metrics(&ca.scrape());
    let documented = documented_metrics("docs/ca.md", "hush_ca_");
    assert!(documented.len() >= 6, "{documented:?}");
    assert_eq!(
        exported, documented,
        "the families the CA exports (left) and the rows of docs/ca.md's metrics table (right)"
    );
}

/// The keys in the first column of `docs/sidecar.md`'s configuration reference.
fn documented_keys(path: &str) -> BTreeSet<String> {
    let doc = read(path);
    let start = doc
        .find("## Configuration reference")
        .unwrap_or_else(|| panic!("{path} has a configuration reference"));
    let section = &doc[start..];
    let end = section[3..]
        .find("\n## ")
        .map_or(section.len(), |at| at + 3);
    section[..end]
        .lines()
        .filter_map(|line| {
            let cell = line.strip_prefix("| `")?;
            Some(cell.split('`').next()?.to_owned())
        })
        .collect()
}

#[test]
fn every_key_of_the_reference_configuration_is_documented() {
    assert_reference_documented("examples/proxy/reference.yaml", "docs/sidecar.md", 40);
}

#[test]
fn every_key_of_the_gateways_reference_configuration_is_documented() {
    assert_reference_documented("examples/gateway/reference.yaml", "docs/gateway.md", 45);
    // And the gateway's examples are configurations it reads.
    for example in [
        "examples/gateway/reference.yaml",
        "examples/gateway/gateway.yaml",
    ] {
        hush_gateway::GatewayConfig::from_yaml(&read(example), example, &repo())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // The README's ACME snippet, put in place of the example's certificates and routes.
    let readme = read("README.md");
    let section = &readme[readme
        .find("## The gateway")
        .expect("the gateway's section")..];
    let snippet = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README's ACME snippet");
    let mut config: serde_json::Value =
        serde_saphyr::from_str(&read("examples/gateway/gateway.yaml")).expect("the example");
    let snippet: serde_json::Value = serde_saphyr::from_str(snippet).expect("the snippet");
    for (key, value) in snippet.as_object().expect("a mapping") {
        config[key] = value.clone();
    }
    let yaml = serde_json::to_string(&config).expect("JSON is YAML");
    let parsed = hush_gateway::GatewayConfig::from_yaml(&yaml, "README.md", &repo())
        .unwrap_or_else(|e| panic!("the README's ACME snippet: {e}"));
    assert!(parsed.certificates[0].acme && parsed.acme.is_some());
}

/// Every key of the configuration `reference` is in the configuration reference table of
/// `doc`, and every row of the table is a key of `reference` (or shown commented out there).
fn assert_reference_documented(reference_path: &str, doc: &str, at_least: usize) {
    let reference: serde_json::Value = serde_saphyr::from_str(&read(reference_path))
        .unwrap_or_else(|e| panic!("{reference_path} parses: {e}"));
    let keys = hush_test_support::key_paths(&reference);
    assert!(keys.len() >= at_least, "{keys:?}");
    let documented = documented_keys(doc);
    let undocumented: Vec<_> = keys.difference(&documented).collect();
    // A key the reference shows commented out (it has no default to write) counts as in it.
    let text = read(reference_path);
    let unknown: Vec<_> = documented
        .difference(&keys)
        .filter(|key| {
            let last = key.rsplit('.').next().unwrap_or_default();
            !text.contains(&format!("# {last}:"))
        })
        .collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "in {reference_path} but not in {doc}'s configuration reference: \
         {undocumented:?}\nin the reference table but not in {reference_path}: {unknown:?}"
    );
}

/// The README's five-minute tour, run as written in a network namespace of its own (its
/// ports are the examples' fixed ones): the built `hush` stands in for the release build.
#[test]
fn the_readme_tour_runs_as_written() {
    let readme = read("README.md");
    let tour = &readme[readme.find("## A five-minute tour").expect("the tour")..];
    let block = tour
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the tour's commands");
    let (build, commands) = block.split_once('\n').expect("more than one line");
    // The gateway's section continues the tour in the same directory.
    let gateway = &readme[readme
        .find("## The gateway")
        .expect("the gateway's section")..];
    let gateway_commands = gateway
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the gateway's commands");
    let commands = format!("{commands}\n{gateway_commands}");
    assert!(build.starts_with("cargo build --release"), "{build}");
    let temp = tempfile::tempdir().expect("a temporary directory");
    let bin = Path::new(HUSH).parent().expect("the binary's directory");
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n\
         ip link set lo up\ncd {repo}\nexport PATH={bin}:$PATH\n{commands}\n",
        repo = repo().display(),
        bin = bin.display(),
        commands = commands.replace("/tmp/tour", &temp.path().join("tour").to_string_lossy()),
    );
    let run = Command::new("unshare")
        .args(["--net", "bash", "-c", &script])
        .output();
    let output = match run {
        Ok(output)
            if !output.status.success()
                && String::from_utf8_lossy(&output.stderr).contains("unshare failed") =>
        {
            None
        }
        Ok(output) => Some(output),
        Err(_) => None,
    };
    let Some(output) = output else {
        assert!(
            std::env::var_os("HUSH_REQUIRE_NETNS").is_none(),
            "HUSH_REQUIRE_NETNS is set but `unshare --net` cannot make a namespace"
        );
        eprintln!("skipped: `unshare --net` needs root (the tour uses the examples' fixed ports)");
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the tour failed:\n{}",
        hush_test_support::describe_output(&output)
    );
    for needle in [
        "x-hush-peer-identity: spiffe://cluster.local/ns/shop/sa/frontend",
        "this port only accepts mutual TLS",
        "result: ok",
        "step 4, client certificate: ok",
        "result: ok, mutual TLS works",
        // The gateway's part: the backend's app was called by the gateway, plain HTTP is
        // redirected, and the public listener is diagnosed.
        "x-hush-peer-identity: spiffe://cluster.local/ns/edge/sa/gateway",
        "x-forwarded-proto: https",
        "HTTP/1.1 308 Permanent Redirect",
        "location: https://shop.localhost:9443/hello",
        "TLS 1.0: refused",
    ] {
        assert!(stdout.contains(needle), "expected {needle:?} in:\n{stdout}");
    }
}

/// The README's "Rotating the CA" commands are real: each names a `hush` subcommand that
/// exists and only flags it takes. (The rotation itself, run under traffic, is
/// `rotation::the_ca_rotates_root_and_all_under_traffic_with_no_failed_request`.)
#[test]
fn the_readmes_rotation_commands_exist_as_written() {
    let readme = read("README.md");
    let section = &readme[readme.find("## Rotating the CA").expect("the section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section's commands");
    let mut checked = 0;
    for line in block.lines() {
        let command = line.split('#').next().unwrap_or_default().trim();
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"hush"), "{line}");
        let subcommand: Vec<&str> = words[1..]
            .iter()
            .take_while(|w| !w.starts_with('-'))
            .copied()
            .collect();
        let mut args = subcommand.clone();
        args.push("--help");
        let help = Command::new(HUSH).args(&args).output().expect("run hush");
        assert!(help.status.success(), "hush {subcommand:?} does not exist");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(flag),
                "`hush {}` takes no {flag}:\n{help}",
                subcommand.join(" ")
            );
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} commands in the section");
}
