//! `hush gateway`: run the edge gateway.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use hush_gateway::{Gateway, GatewayConfig};

use crate::shutdown;
use crate::times::utc_second;

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The gateway's YAML configuration (see examples/gateway/).
    #[arg(long, env = "HUSH_GATEWAY_CONFIG")]
    pub(crate) config: PathBuf,
    /// Check the configuration, the trust bundle and the certificate files, bind nothing, and
    /// exit.
    #[arg(long)]
    check: bool,
    /// Threads serving connections; 0 (the default) is one per CPU. Public TLS handshakes are
    /// the gateway's heaviest work, and they spread over threads.
    #[arg(long, env = "HUSH_GATEWAY_THREADS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub(crate) threads: u16,
}

/// The line printed once the gateway holds its mesh identity and accepts connections.
pub(crate) const READY_PREFIX: &str = "hush gateway: ready as ";

pub(crate) async fn run(
    args: GatewayArgs,
    config: GatewayConfig,
    logging: std::sync::Arc<dyn hush_proxy::LogControl>,
) -> Result<()> {
    if args.check {
        return check(&args, &config);
    }
    let gateway = Gateway::bind(config)
        .await
        .with_context(|| format!("cannot start the gateway of {}", args.config.display()))?
        .with_log_control(logging);
    print_listeners(&gateway)?;
    let mut status = gateway.status();
    tokio::spawn(async move {
        if let Ok(status) = status.wait_for(|s| s.svid.is_some()).await
            && let Some(svid) = &status.svid
        {
            say(&format!(
                "{READY_PREFIX}{} (certificate {}, expires {})",
                svid.spiffe_id,
                svid.serial,
                utc_second(svid.not_after.into())
            ));
        }
    });
    gateway.run(shutdown::signal()).await?;
    Ok(())
}

/// `--check`: what can be checked without binding anything.
fn check(args: &GatewayArgs, config: &GatewayConfig) -> Result<()> {
    let mut mesh = hush_proxy::ProxyConfig::new(config.ca.clone());
    mesh.admin = config.admin.clone();
    hush_proxy::load_trust_bundle(&mesh)?;
    let store = std::sync::Arc::new(hush_gateway::certs::CertStore::new(&config.certificates));
    hush_gateway::files::FileCertificates::load(&config.certificates, store.clone())?;
    for (name, served) in store.all() {
        if let Some(served) = served {
            println!(
                "certificate {name}: from files, expires {}",
                utc_second(served.not_after.into())
            );
        } else {
            println!("certificate {name}: by ACME (obtained when the gateway runs)");
        }
    }
    println!("{}: the configuration is valid", args.config.display());
    Ok(())
}

fn print_listeners(gateway: &Gateway) -> Result<()> {
    let addresses = gateway.addresses();
    let config = gateway.config();
    let mut out = std::io::stdout().lock();
    writeln!(out, "hush gateway: admin  http://{}", addresses.admin)?;
    writeln!(
        out,
        "hush gateway: https  {} (TLS, {:?} profile)",
        addresses.https, config.https.profile
    )?;
    if let Some(http) = addresses.http {
        writeln!(out, "hush gateway: http   {http} (redirects to HTTPS)")?;
    }
    for route in &config.routes {
        writeln!(
            out,
            "hush gateway: route  {}{} -> {}, which must prove {}",
            route.host, route.path_prefix, route.upstream, route.identity
        )?;
    }
    writeln!(
        out,
        "hush gateway: asking the CA at {} for the gateway's mesh identity",
        config.ca.address
    )?;
    out.flush()?;
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
