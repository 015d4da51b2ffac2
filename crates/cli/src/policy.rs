//! `hush policy`: check policy files, and explain the decision for one request.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use hush_identity::SpiffeId;
use hush_policy::{DefaultAction, HttpRequest, PolicySet, Request, Source};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate policy files or directories; every error is printed as FILE:LINE:COLUMN and
    /// the exit status is non-zero if there is one.
    Check(CheckArgs),
    /// Decide one request the way a sidecar would, and print the chain of reasoning.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Policy files, or directories of `*.yaml` / `*.yml` files.
    #[arg(required = true, value_name = "FILE_OR_DIR")]
    paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// The policy file or directory.
    #[arg(long, value_name = "FILE_OR_DIR")]
    policy: PathBuf,
    /// The caller's SPIFFE ID.
    #[arg(long, value_name = "SPIFFE_ID")]
    from: SpiffeId,
    /// The destination port (the app's port behind the sidecar).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The HTTP method; without --method and --path the request is a TCP connection.
    #[arg(long)]
    method: Option<String>,
    /// The HTTP path (a query string is ignored).
    #[arg(long)]
    path: Option<String>,
    /// A request header, NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The workload being called, to apply selectors and namespaces; without it every
    /// policy applies.
    #[arg(long, value_name = "SPIFFE_ID")]
    workload: Option<SpiffeId>,
    /// The decision when no ALLOW or DENY policy applies (the sidecar's `policy.default`).
    #[arg(long, value_enum, default_value_t = Default::Allow)]
    default: Default,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Default {
    Allow,
    Deny,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{text:?} has no header name"));
    }
    Ok((name.to_ascii_lowercase(), value.to_string()))
}

pub(crate) fn run(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Check(args) => check(&args),
        PolicyCommand::Explain(args) => explain(args),
    }
}

fn check(args: &CheckArgs) -> Result<()> {
    let mut sources: Vec<Source> = Vec::new();
    let mut errors = Vec::new();
    for path in &args.paths {
        match hush_proxy::read_policy_sources(path) {
            Ok(read) => sources.extend(read),
            Err(e) => errors.push(e),
        }
    }
    // Parsed together, as a sidecar given these files would: names must be unique across them.
    match PolicySet::parse(&sources) {
        Ok(set) if errors.is_empty() => {
            let mut out = String::new();
            for policy in set.policies() {
                out.push_str(&format!(
                    "{}:{}: {} {}{}\n",
                    policy.origin,
                    policy.line,
                    policy.action,
                    policy.name,
                    if policy.dry_run { " (dry run)" } else { "" }
                ));
            }
            out.push_str(&format!(
                "ok: {} policies, {} rules in {} files\n",
                set.len(),
                set.rule_count(),
                sources.len()
            ));
            emit(&out)
        }
        Ok(_) => report(&errors),
        Err(parse_errors) => {
            errors.extend(parse_errors);
            report(&errors)
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn report(errors: &[hush_policy::PolicyError]) -> Result<()> {
    for error in errors {
        eprintln!("{error}");
    }
    bail!(
        "{} error{} in the policy",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    )
}

fn explain(args: ExplainArgs) -> Result<()> {
    let set = match hush_proxy::load_policy(&args.policy) {
        Ok(set) => set,
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            bail!("the policy at {} has errors", args.policy.display());
        }
    };
    let http = match (&args.method, &args.path) {
        (None, None) => None,
        (method, path) => {
            let method = method.as_deref().unwrap_or("GET");
            let path = path.as_deref().unwrap_or("/");
            if !path.starts_with('/') {
                bail!("--path {path:?} must start with /");
            }
            Some((method, path))
        }
    };
    let request = Request {
        principal: args.from.as_str(),
        port: args.port,
        http: http.map(|(method, path)| HttpRequest {
            method,
            path,
            headers: &args.headers,
        }),
    };
    let default = match args.default {
        Default::Allow => DefaultAction::Allow,
        Default::Deny => DefaultAction::Deny,
    };
    let explanation = set.explain(args.workload.as_ref(), default, &request);
    emit(&explanation.to_string())
}
