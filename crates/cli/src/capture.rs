//! `hush init-iptables`: install the rules that send a pod's TCP traffic through its sidecar
//! (the injected init container runs it, with NET_ADMIN, before the sidecar starts).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use hush_inject::CaptureRules;
use ipnet::IpNet;

#[derive(Debug, Args)]
pub(crate) struct InitIptablesArgs {
    /// The uid the sidecar runs as: its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The gid the sidecar runs as (default: the uid).
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Where inbound TCP goes: the sidecar's inbound (mutual TLS) port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Where outbound TCP from the app goes: the sidecar's transparent port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound ports left alone, comma-separated (the sidecar's admin port for kubelet probes,
    /// SSH, …).
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destination ranges left alone, comma-separated (e.g. the API server's).
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    exclude_outbound_cidrs: Vec<IpNet>,
    /// Print the rules (iptables-restore format) instead of installing them.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) fn run(args: InitIptablesArgs) -> Result<()> {
    let rules = CaptureRules {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid.unwrap_or(args.proxy_uid),
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs,
    };
    let text = rules.render()?;
    if args.dry_run {
        print!("{text}");
        return Ok(());
    }
    // Run again (an init container restarts), the jumps into hush's chains would be added
    // twice; take out the old ones first. The chains themselves are emptied by the restore.
    for (hook, chain) in [("PREROUTING", "HUSH_INBOUND"), ("OUTPUT", "HUSH_OUTPUT")] {
        for _ in 0..16 {
            let removed = Command::new("iptables")
                .args(["-t", "nat", "-D", hook, "-p", "tcp", "-j", chain])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !removed.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
    let mut restore = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run iptables-restore (the image running `hush init-iptables` needs the iptables package)")?;
    restore
        .stdin
        .take()
        .context("no stdin for iptables-restore")?
        .write_all(text.as_bytes())
        .context("cannot send the rules to iptables-restore")?;
    let output = restore
        .wait_with_output()
        .context("iptables-restore did not finish")?;
    if !output.status.success() {
        bail!(
            "iptables-restore refused the rules ({}): {}\n(it needs root or the NET_ADMIN \
             capability, in the pod's network namespace)",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!(
        "hush init-iptables: inbound TCP -> port {}, outbound TCP -> port {}; uid {} and \
         loopback are not captured",
        rules.inbound_port, rules.outbound_port, rules.proxy_uid
    );
    Ok(())
}
