//! `hush init-iptables`: install the rules that send a pod's TCP traffic through its sidecar
//! (the injected init container runs it, with NET_ADMIN, before the sidecar starts).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use hush_inject::{CaptureRules, Family};
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
    let v4 = rules.render(Family::Ipv4)?;
    let v6 = rules.render(Family::Ipv6)?;
    if args.dry_run {
        print!("# iptables-restore --noflush\n{v4}# ip6tables-restore --noflush\n{v6}");
        return Ok(());
    }
    install(Family::Ipv4, &v4)?;
    // A pod reachable over IPv6 must be captured over IPv6 too, or IPv6 traffic would reach
    // the app without mutual TLS: where the pod has IPv6, failing to capture it fails.
    let ipv6 = match ipv6_in_use() {
        Ipv6::Absent(why) => format!("IPv6 not captured: {why}"),
        Ipv6::Present => {
            install(Family::Ipv6, &v6).context(
                "this pod has IPv6, so its IPv6 traffic must be captured too, or it would reach \
                 the app without mutual TLS",
            )?;
            "IPv4 and IPv6".to_owned()
        }
    };
    println!(
        "hush init-iptables: inbound TCP -> port {}, outbound TCP -> port {}; uid {} and \
         loopback are not captured ({ipv6})",
        rules.inbound_port, rules.outbound_port, rules.proxy_uid
    );
    Ok(())
}

/// Whether this network namespace can carry IPv6 at all.
enum Ipv6 {
    Present,
    /// Why not, in words.
    Absent(&'static str),
}

fn ipv6_in_use() -> Ipv6 {
    if !std::path::Path::new("/proc/net/if_inet6").exists() {
        return Ipv6::Absent("the kernel has no IPv6");
    }
    let disabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|v| v.trim() == "1");
    if disabled {
        return Ipv6::Absent("IPv6 is disabled in this pod (net.ipv6.conf.all.disable_ipv6 = 1)");
    }
    Ipv6::Present
}

/// Installs one family's rules, replacing those of an earlier run.
fn install(family: Family, rules: &str) -> Result<()> {
    let (iptables, restore) = match family {
        Family::Ipv4 => ("iptables", "iptables-restore"),
        Family::Ipv6 => ("ip6tables", "ip6tables-restore"),
    };
    // Run again (an init container restarts), the jumps into hush's chains would be added
    // twice; take out the old ones first. The chains themselves are emptied by the restore.
    for (hook, chain) in [("PREROUTING", "HUSH_INBOUND"), ("OUTPUT", "HUSH_OUTPUT")] {
        for _ in 0..16 {
            let removed = Command::new(iptables)
                .args(["-t", "nat", "-D", hook, "-p", "tcp", "-j", chain])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !removed.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {restore} (the image running `hush init-iptables` needs the \
                 iptables package)"
            )
        })?;
    child
        .stdin
        .take()
        .with_context(|| format!("no stdin for {restore}"))?
        .write_all(rules.as_bytes())
        .with_context(|| format!("cannot send the rules to {restore}"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("{restore} did not finish"))?;
    if !output.status.success() {
        bail!(
            "{restore} refused the rules ({}): {}\n(it needs root or the NET_ADMIN \
             capability, in the pod's network namespace)",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
