//! The NAT rules that send a pod's TCP traffic through its sidecar, in `iptables-restore`
//! format.
//!
//! Four chains of hush's own, hooked into `PREROUTING` (traffic arriving at the pod) and
//! `OUTPUT` (traffic its processes send):
//!
//! ```text
//! PREROUTING -p tcp -> HUSH_INBOUND   skip listed ports, else -> HUSH_IN_REDIRECT -> inbound port
//! OUTPUT     -p tcp -> HUSH_OUTPUT    skip the proxy's uid/gid, loopback, listed ports and
//!                                     ranges, else -> HUSH_REDIRECT -> transparent port
//! ```
//!
//! The sidecar's own connections are recognised by its uid (and gid), so what it dials is never
//! captured again; loopback stays untouched, so the app reaches its sidecar's outbound
//! listeners directly.
//!
//! The same rules are written for IPv4 (`iptables`) and IPv6 (`ip6tables`): a dual-stack pod
//! captured over IPv4 only would be reachable over IPv6 without mutual TLS.

use std::fmt::Write as _;

use ipnet::IpNet;

/// hush's chains, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    "HUSH_INBOUND",
    "HUSH_IN_REDIRECT",
    "HUSH_OUTPUT",
    "HUSH_REDIRECT",
];

/// What to capture and where to send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRules {
    /// The uid the sidecar runs as; its traffic is never redirected.
    pub proxy_uid: u32,
    /// The gid the sidecar runs as (defaults to the uid).
    pub proxy_gid: u32,
    /// The sidecar's inbound (mutual TLS) port.
    pub inbound_port: u16,
    /// The sidecar's transparent (outbound) port.
    pub outbound_port: u16,
    /// Inbound destination ports left alone (the sidecar's admin port, SSH, …).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone.
    pub exclude_outbound_cidrs: Vec<IpNet>,
}

/// The rules cannot work as asked.
#[non_exhaustive]
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// A port is 0, or two roles share a port.
    #[error("{0}")]
    Ports(String),
}

/// Which table the rules are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `iptables-restore`.
    Ipv4,
    /// `ip6tables-restore`.
    Ipv6,
}

impl Family {
    /// The loopback range, left alone.
    fn loopback(self) -> &'static str {
        match self {
            Self::Ipv4 => "127.0.0.0/8",
            Self::Ipv6 => "::1/128",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Self::Ipv4, IpNet::V4(_)) | (Self::Ipv6, IpNet::V6(_))
        )
    }
}

impl CaptureRules {
    /// Checks the ports before anything is written: a redirect to port 0, or an inbound port
    /// that is also excluded, would cut the pod off.
    pub fn validate(&self) -> Result<(), CaptureError> {
        for (name, port) in [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
        ] {
            if port == 0 {
                return Err(CaptureError::Ports(format!("{name} cannot be 0")));
            }
        }
        if self.inbound_port == self.outbound_port {
            return Err(CaptureError::Ports(format!(
                "--inbound-port and --outbound-port are both {}; the sidecar listens on two \
                 different ports",
                self.inbound_port
            )));
        }
        for port in self
            .exclude_inbound_ports
            .iter()
            .chain(&self.exclude_outbound_ports)
        {
            if *port == 0 {
                return Err(CaptureError::Ports(
                    "an excluded port cannot be 0".to_string(),
                ));
            }
        }
        if self.exclude_inbound_ports.contains(&self.inbound_port) {
            return Err(CaptureError::Ports(format!(
                "port {} is the inbound port; excluding it would leave nothing to redirect to",
                self.inbound_port
            )));
        }
        Ok(())
    }

    /// The rules of one family, for `iptables-restore --noflush` or `ip6tables-restore
    /// --noflush` (nat table only). Each gets the excluded ranges of its own family.
    pub fn render(&self, family: Family) -> Result<String, CaptureError> {
        self.validate()?;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let mut line = |text: &str| {
            let _ = writeln!(out, "{text}");
        };
        line("*nat");
        for chain in CHAINS {
            line(&format!(":{chain} - [0:0]"));
        }
        line(&format!(
            "-A HUSH_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        line(&format!(
            "-A HUSH_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));

        line("-A PREROUTING -p tcp -j HUSH_INBOUND");
        for port in sorted(&self.exclude_inbound_ports) {
            line(&format!("-A HUSH_INBOUND -p tcp --dport {port} -j RETURN"));
        }
        line("-A HUSH_INBOUND -p tcp -j HUSH_IN_REDIRECT");

        line("-A OUTPUT -p tcp -j HUSH_OUTPUT");
        // The sidecar's own connections: to the app, to the CA, to other sidecars.
        line(&format!(
            "-A HUSH_OUTPUT -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        ));
        line(&format!(
            "-A HUSH_OUTPUT -m owner --gid-owner {} -j RETURN",
            self.proxy_gid
        ));
        // Loopback: the app talking to itself or to its sidecar's explicit listeners.
        line("-A HUSH_OUTPUT -o lo -j RETURN");
        line(&format!(
            "-A HUSH_OUTPUT -d {} -j RETURN",
            family.loopback()
        ));
        for cidr in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| family.holds(c))
        {
            line(&format!("-A HUSH_OUTPUT -d {} -j RETURN", cidr.trunc()));
        }
        for port in sorted(&self.exclude_outbound_ports) {
            line(&format!("-A HUSH_OUTPUT -p tcp --dport {port} -j RETURN"));
        }
        line("-A HUSH_OUTPUT -j HUSH_REDIRECT");
        line("COMMIT");
        Ok(out)
    }
}

fn sorted(ports: &[u16]) -> Vec<u16> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> CaptureRules {
        CaptureRules {
            proxy_uid: 1337,
            proxy_gid: 1337,
            inbound_port: 15006,
            outbound_port: 15001,
            exclude_inbound_ports: vec![15020, 22, 15020],
            exclude_outbound_ports: vec![53],
            exclude_outbound_cidrs: vec![
                "10.96.0.1/12".parse().unwrap(),
                "fd00:96::1/108".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn the_rules_redirect_both_ways_and_skip_the_proxy_and_loopback() {
        let text = rules().render(Family::Ipv4).unwrap();
        let expected = "\
*nat
:HUSH_INBOUND - [0:0]
:HUSH_IN_REDIRECT - [0:0]
:HUSH_OUTPUT - [0:0]
:HUSH_REDIRECT - [0:0]
-A HUSH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A HUSH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j HUSH_INBOUND
-A HUSH_INBOUND -p tcp --dport 22 -j RETURN
-A HUSH_INBOUND -p tcp --dport 15020 -j RETURN
-A HUSH_INBOUND -p tcp -j HUSH_IN_REDIRECT
-A OUTPUT -p tcp -j HUSH_OUTPUT
-A HUSH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A HUSH_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A HUSH_OUTPUT -o lo -j RETURN
-A HUSH_OUTPUT -d 127.0.0.0/8 -j RETURN
-A HUSH_OUTPUT -d 10.96.0.0/12 -j RETURN
-A HUSH_OUTPUT -p tcp --dport 53 -j RETURN
-A HUSH_OUTPUT -j HUSH_REDIRECT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn rules_that_would_cut_the_pod_off_are_refused() {
        let mut same = rules();
        same.outbound_port = 15006;
        assert!(
            same.render(Family::Ipv4)
                .unwrap_err()
                .to_string()
                .contains("both 15006")
        );
        let mut zero = rules();
        zero.inbound_port = 0;
        assert!(
            zero.render(Family::Ipv4)
                .unwrap_err()
                .to_string()
                .contains("cannot be 0")
        );
        let mut excluded = rules();
        excluded.exclude_inbound_ports.push(15006);
        assert!(
            excluded
                .render(Family::Ipv4)
                .unwrap_err()
                .to_string()
                .contains("is the inbound port")
        );
    }

    /// IPv6 gets the same capture, with its own loopback and only its own excluded ranges.
    #[test]
    fn ipv6_is_captured_the_same_way() {
        let v4 = rules().render(Family::Ipv4).unwrap();
        let v6 = rules().render(Family::Ipv6).unwrap();
        assert_eq!(
            v6,
            v4.replace("-d 127.0.0.0/8", "-d ::1/128")
                .replace("-d 10.96.0.0/12", "-d fd00:96::/108")
        );
        assert!(!v4.contains("fd00"), "{v4}");
    }
}
