//! `hush`: the one binary of the hush mesh — the CA, the sidecar proxy, certificate tools, and
//! `hush up`.

mod ca;
mod capture;
mod cert;
mod check;
mod diagnose;
mod echo;
mod gateway;
mod inject;
mod policy;
mod proxy;
mod shutdown;
mod telemetry;
mod times;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use telemetry::LogFormat;

/// hush — a small, clear mTLS service-mesh security core.
///
/// The CA issues short-lived SPIFFE workload certificates (X.509-SVIDs) over gRPC to callers that
/// prove who they are with a join token or a Kubernetes service-account token; the sidecar proxy
/// makes every connection between services mutual TLS 1.3 and tells the app who is calling.
#[derive(Debug, Parser)]
#[command(name = "hush", version, propagate_version = true)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `hush_ca=debug` (or set RUST_LOG). Default: `info`
    /// for `hush ca serve`, `error` for `hush up`, `warn` for one-shot commands.
    #[arg(long, global = true, env = "HUSH_LOG")]
    log_level: Option<String>,
    /// Log lines as readable text, or as one JSON object per line (for log pipelines).
    #[arg(long, global = true, env = "HUSH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector, e.g. `http://127.0.0.1:4317`. Without
    /// it, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT` and then the
    /// sidecar configuration's `tracing.otlp_endpoint` are used; with none, nothing is exported.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run and manage the certificate authority (init, serve, bundle, tokens).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Look at certificates, or ask a CA for one.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Run the sidecar: mutual TLS 1.3 between services, with identities from the CA.
    Proxy(proxy::ProxyArgs),
    /// Run the edge gateway: public TLS (certificates from files or ACME), routes into the
    /// mesh with mutual TLS.
    Gateway(gateway::GatewayArgs),
    /// The sidecar injector for Kubernetes (mutating admission webhook).
    #[command(subcommand)]
    Inject(inject::InjectCommand),
    /// Install the iptables rules that send a pod's TCP traffic through its sidecar (run by
    /// the injected init container).
    InitIptables(capture::InitIptablesArgs),
    /// Check identity policy files, and explain the decision for a request.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Start a whole mesh on this machine in one command: a CA, and demo services each behind
    /// its own sidecar, all on loopback.
    Up(up::UpArgs),
    /// Check a sidecar's installation: configuration, trust bundle, CA, clocks, policy, token,
    /// and the running sidecar's certificate.
    Check(check::CheckArgs),
    /// Connect to a TLS port as a sidecar would and tell the handshake step by step; when it
    /// fails, name the step and the reason, and say what to do.
    Diagnose(diagnose::DiagnoseArgs),
    /// The demo app alone: an HTTP server that answers with its name and the caller's verified
    /// identity (the app of the Kubernetes walkthrough).
    DemoApp(echo::DemoAppArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        Command::Ca(ca::CaCommand::Serve(_))
        | Command::Proxy(_)
        | Command::Gateway(_)
        | Command::Inject(inject::InjectCommand::Serve(_)) => "info",
        // `hush up` tells its own story on stdout; the CA's refusal warnings would repeat it.
        Command::Up(_) => "error",
        _ => "warn",
    };
    // The sidecar's configuration is read first: it may name the trace collector.
    let proxy_config = match &cli.command {
        Command::Proxy(args) => match hush_proxy::ProxyConfig::load(&args.config) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let gateway_config = match &cli.command {
        Command::Gateway(args) => match hush_gateway::GatewayConfig::load(&args.config) {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let export = match telemetry::TraceExport::resolve(
        cli.otlp_endpoint.as_deref(),
        proxy_config
            .as_ref()
            .map(|c| &c.tracing)
            .or(gateway_config.as_ref().map(|c| &c.tracing)),
        service_name(&cli.command),
        |name| std::env::var(name).ok(),
    ) {
        Ok(export) => export,
        Err(e) => {
            eprintln!("error: traces: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = match &cli.command {
        // A sidecar on one thread does no cross-thread hand-offs: measured, it needs about a
        // third less CPU per request than on two (see docs/performance.md).
        Command::Proxy(args) if args.threads == 1 => tokio::runtime::Builder::new_current_thread(),
        Command::Proxy(args) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(args.threads));
            builder
        }
        Command::Gateway(args) if args.threads > 0 => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(args.threads));
            builder
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the exporter's gRPC channel lives on it.
    let telemetry = {
        let _runtime = runtime.enter();
        let level = cli.log_level.as_deref().unwrap_or(default_level);
        match telemetry::Telemetry::init(level, cli.log_format, export.as_ref()) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: traces: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    };
    let logging = telemetry.logs.clone();
    let result = runtime.block_on(async {
        let result = match cli.command {
            Command::Ca(cmd) => ca::run(cmd).await,
            Command::Cert(cmd) => cert::run(cmd).await,
            Command::Proxy(args) => match proxy_config {
                Some(config) => proxy::run(args, config, logging).await,
                // Loaded above for every `hush proxy`.
                None => Err(anyhow::anyhow!("the sidecar configuration was not loaded")),
            },
            Command::Gateway(args) => match gateway_config {
                Some(config) => gateway::run(args, config, logging).await,
                None => Err(anyhow::anyhow!("the gateway configuration was not loaded")),
            },
            Command::Policy(cmd) => policy::run(cmd),
            Command::InitIptables(args) => capture::run(args),
            Command::Inject(cmd) => inject::run(cmd).await,
            Command::Up(args) => up::run(args).await,
            Command::DemoApp(args) => echo::run(args).await,
            Command::Diagnose(args) => reported(diagnose::run(args).await),
            Command::Check(args) => reported(check::run(args).await),
        };
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The report said what failed; the exit status says that something did.
        Err(e) if e.is::<ReportedFailure>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `service.name` of each long-running command's spans, unless `OTEL_SERVICE_NAME` or the
/// sidecar configuration says otherwise.
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Ca(_) => "hush-ca",
        Command::Proxy(_) => "hush-proxy",
        Command::Gateway(_) => "hush-gateway",
        Command::Inject(_) => "hush-injector",
        Command::Up(_) => "hush-up",
        _ => "hush",
    }
}

/// A command printed a report that found a failure: nothing more to say, but exit 1.
#[derive(Debug)]
struct ReportedFailure;

impl std::fmt::Display for ReportedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the report found a failure")
    }
}

impl std::error::Error for ReportedFailure {}

/// The outcome of a command that prints a report and says whether all was well.
fn reported(outcome: anyhow::Result<bool>) -> anyhow::Result<()> {
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(ReportedFailure.into()),
        Err(e) => Err(e),
    }
}

/// Parses durations such as `90s`, `15m`, `24h`, `7d`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 15m, 24h, 7d)"))
}
