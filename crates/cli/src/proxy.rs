//! `hush proxy`: run the sidecar.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use hush_proxy::{Proxy, ProxyConfig};

use crate::shutdown;
use crate::times::utc_second;

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The sidecar's YAML configuration (see examples/proxy/).
    #[arg(long, env = "HUSH_PROXY_CONFIG")]
    pub(crate) config: PathBuf,
    /// Check the configuration and the trust bundle, bind nothing, and exit.
    #[arg(long)]
    check: bool,
    /// Threads serving connections. One (the default) is the most CPU-efficient: no
    /// hand-offs between threads; raise it when one core cannot keep up with the traffic.
    #[arg(long, env = "HUSH_PROXY_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) threads: u16,
}

/// The line printed once the sidecar holds its certificate and accepts connections.
pub(crate) const READY_PREFIX: &str = "hush proxy: ready as ";

pub(crate) async fn run(
    args: ProxyArgs,
    config: ProxyConfig,
    logging: std::sync::Arc<dyn hush_proxy::LogControl>,
) -> Result<()> {
    if args.check {
        let bundle = hush_proxy::load_trust_bundle(&config)?;
        if let Some(policy) = hush_proxy::check_policy(&config, bundle.trust_domain().clone())? {
            println!("policy: {policy}");
        }
        println!("{}: the configuration is valid", args.config.display());
        return Ok(());
    }
    let proxy = Proxy::bind(config)
        .await
        .with_context(|| format!("cannot start the sidecar of {}", args.config.display()))?
        .with_log_control(logging);
    let shutdown = shutdown::signal();
    print_listeners(&proxy)?;
    let mut status = proxy.status();
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
    proxy.run(shutdown).await?;
    Ok(())
}

fn print_listeners(proxy: &Proxy) -> Result<()> {
    let addresses = proxy.addresses();
    let config = proxy.config();
    let mut out = std::io::stdout().lock();
    writeln!(out, "hush proxy: admin       http://{}", addresses.admin)?;
    if let (Some(addr), Some(inbound)) = (addresses.inbound, &config.inbound) {
        writeln!(
            out,
            "hush proxy: inbound     {addr} (mutual TLS) -> app {} ({})",
            inbound.app, inbound.protocol
        )?;
    }
    for (addr, outbound) in addresses.outbound.iter().zip(&config.outbound) {
        writeln!(
            out,
            "hush proxy: outbound    {addr} -> {} ({}), which must prove {}",
            outbound.upstream, outbound.protocol, outbound.identity
        )?;
    }
    if let Some(addr) = addresses.transparent {
        writeln!(out, "hush proxy: transparent {addr} (redirected traffic)")?;
    }
    match proxy.policy_summary() {
        Some(policy) => writeln!(out, "hush proxy: policy      {policy}")?,
        None if config.inbound.is_some() => writeln!(
            out,
            "hush proxy: policy      none: any authenticated mesh identity may call the app"
        )?,
        None => {}
    }
    writeln!(
        out,
        "hush proxy: trust domain {}; asking the CA at {} for a certificate",
        proxy.trust_domain(),
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
