//! The edge gateway's configuration (`hush gateway --config FILE`).
//!
//! The gateway terminates public TLS (browsers, API clients) with certificates from files or
//! from an ACME CA, and sends each request into the mesh with mutual TLS, to the upstream
//! sidecar its route names, which must prove the SPIFFE ID the route pins. It has a mesh
//! identity of its own from the hush CA (the `ca` section, as a sidecar's), which the
//! backends' policies name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;
use crate::proxy::{
    AccessLog, AdminConfig, CaConfig, ConfigError, Identities, Limits, MAX_DURATION, TracingConfig,
    check_host_port, check_shared, defaults, is_default, parse_yaml, read_config, write_yaml,
};

/// The whole gateway configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the gateway gets its mesh identity, as a sidecar does.
    pub ca: CaConfig,
    /// The public TLS listener.
    pub https: HttpsConfig,
    /// The plaintext listener: redirects to HTTPS, and answers ACME HTTP-01 challenges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpConfig>,
    /// The public certificates, each for a list of host names.
    pub certificates: Vec<CertificateConfig>,
    /// The ACME account and CA, for the certificates that say `acme: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
    /// Where requests go, by host and path prefix; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// Health, readiness, metrics and certificate status.
    #[serde(default, skip_serializing_if = "is_default")]
    pub admin: AdminConfig,
    /// Timeouts and caps (those of a sidecar; `max_handshakes_per_address` applies to the
    /// public listener).
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
    /// Which requests get an access-log line (`denied`, the default: failed ones; `all`;
    /// `off`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub access_log: AccessLog,
    /// Where spans are exported.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tracing: TracingConfig,
    /// On SIGTERM, how long in-flight requests get to finish.
    #[serde(
        default = "defaults::shutdown_grace",
        skip_serializing_if = "defaults::is_shutdown_grace",
        with = "duration"
    )]
    pub shutdown_grace: Duration,
}

/// The public TLS listener (`https`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    /// The address, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// Which TLS versions and cipher suites are offered.
    #[serde(default, skip_serializing_if = "is_default")]
    pub profile: TlsProfile,
    /// `Strict-Transport-Security` on every response; `max_age: 0s` turns it off.
    #[serde(default, skip_serializing_if = "is_default")]
    pub hsts: Hsts,
}

/// The TLS profiles of Mozilla's server-side TLS recommendations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    /// TLS 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20-Poly1305 only: for general-purpose
    /// servers with a variety of clients.
    #[default]
    Intermediate,
    /// TLS 1.3 only: for services whose clients are all recent.
    Modern,
}

/// `Strict-Transport-Security`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    /// How long browsers remember to use HTTPS only (default one year; `0s` sends no header).
    #[serde(default = "default_hsts_max_age", with = "duration")]
    pub max_age: Duration,
    /// Subdomains too.
    #[serde(default, skip_serializing_if = "is_default")]
    pub include_subdomains: bool,
    /// Asks to be put on the browsers' preload list (needs `include_subdomains` and a year).
    #[serde(default, skip_serializing_if = "is_default")]
    pub preload: bool,
}

fn default_hsts_max_age() -> Duration {
    Duration::from_secs(365 * 24 * 3600)
}

impl Default for Hsts {
    fn default() -> Self {
        Self {
            max_age: default_hsts_max_age(),
            include_subdomains: false,
            preload: false,
        }
    }
}

impl Hsts {
    /// The header's value, or `None` when it is turned off.
    pub fn header_value(&self) -> Option<String> {
        if self.max_age.is_zero() {
            return None;
        }
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        Some(value)
    }
}

/// The plaintext listener (`http`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The address, e.g. `0.0.0.0:80`.
    pub listen: SocketAddr,
    /// The HTTPS port the redirects name, when clients reach the public listener on another
    /// port than the one it binds (a Service or load balancer in front). Default: the port of
    /// `https.listen`, left out of the URL when it is 443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port: Option<u16>,
}

/// One public certificate.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The names it is served for (SNI), exact (`shop.example.com`) or one wildcard label
    /// (`*.example.com`). The first is the certificate's name in metrics and messages.
    pub hosts: Vec<String>,
    /// PEM files, reloaded when they change (a broken pair keeps the one in use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<CertificateFiles>,
    /// Obtained and renewed from the ACME CA of the `acme` section.
    #[serde(default, skip_serializing_if = "is_default")]
    pub acme: bool,
}

/// A certificate chain and its key, in PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The ACME account (`acme`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact URLs for the account, e.g. `mailto:ops@example.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    /// Agrees to the CA's terms of service; an ACME CA refuses accounts without it.
    #[serde(default)]
    pub accept_terms_of_service: bool,
    /// How the CA checks that we hold the names: `http-01` (needs the `http` listener on port
    /// 80 from the Internet) or `tls-alpn-01` (the `https` listener on port 443).
    #[serde(default, skip_serializing_if = "is_default")]
    pub challenge: AcmeChallenge,
    /// Where the account key, the certificates and the lock live (made mode 0700, files
    /// 0600). Replicas that share it order each certificate once.
    pub state_dir: PathBuf,
    /// PEM roots that verify the ACME server's own TLS, for a private ACME CA; default: the
    /// web PKI's roots (Mozilla's, built into hush).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca: Option<PathBuf>,
}

/// The ACME challenge type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AcmeChallenge {
    /// A token served at `http://<host>/.well-known/acme-challenge/<token>`.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A certificate served for the `acme-tls/1` protocol on the HTTPS port.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// One route (`routes[]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The host it serves: exact, `*.example.com` (one label), or `*` (any).
    pub host: String,
    /// The path prefix, on whole segments (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[serde(default = "default_path_prefix", skip_serializing_if = "is_root")]
    pub path_prefix: String,
    /// The upstream sidecar's inbound address, `host:port`.
    pub upstream: String,
    /// The SPIFFE ID (or IDs) the upstream must prove.
    pub identity: Identities,
}

fn default_path_prefix() -> String {
    "/".to_string()
}

fn is_root(prefix: &String) -> bool {
    prefix == "/"
}

impl GatewayConfig {
    /// Reads and validates the configuration in `path`; relative paths in it are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, base) = read_config(path)?;
        Self::from_yaml(&text, &path.display().to_string(), base)
    }

    /// Parses and validates YAML `text`; `origin` names it in errors and relative paths are
    /// resolved against `base`.
    pub fn from_yaml(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = parse_yaml(text, origin)?;
        config.validate(origin)?;
        config.ca.resolve_paths(base);
        for certificate in &mut config.certificates {
            if let Some(files) = &mut certificate.files {
                files.cert = base.join(&files.cert);
                files.key = base.join(&files.key);
            }
        }
        if let Some(acme) = &mut config.acme {
            acme.state_dir = base.join(&acme.state_dir);
            if let Some(ca) = &mut acme.directory_ca {
                *ca = base.join(&*ca);
            }
        }
        Ok(config)
    }

    /// The configuration as YAML that [`Self::from_yaml`] reads back equal.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        write_yaml(self)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            problem,
        };
        check_shared(
            origin,
            &self.ca,
            &self.admin,
            &self.limits,
            self.shutdown_grace,
        )?;
        if self.https.hsts.max_age > MAX_DURATION * 2 {
            return Err(invalid(
                "https.hsts.max_age",
                "longer than two years, which no browser keeps".to_string(),
            ));
        }
        if self.https.hsts.preload
            && (!self.https.hsts.include_subdomains
                || self.https.hsts.max_age < default_hsts_max_age())
        {
            return Err(invalid(
                "https.hsts.preload",
                "the preload list takes only include_subdomains: true and a max_age of a year \
                 or more"
                    .to_string(),
            ));
        }

        let mut listeners = vec![
            ("admin.listen", self.admin.listen),
            ("https.listen", self.https.listen),
        ];
        if let Some(http) = &self.http {
            listeners.push(("http.listen", http.listen));
        }
        for (i, (field, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err(invalid(field, format!("{addr} is already used by {other}")));
            }
        }

        if self.certificates.is_empty() {
            return Err(invalid(
                "certificates",
                "name at least one certificate to serve".to_string(),
            ));
        }
        let mut seen: Vec<(String, String)> = Vec::new();
        for (i, certificate) in self.certificates.iter().enumerate() {
            let field = format!("certificates[{i}]");
            if certificate.hosts.is_empty() {
                return Err(invalid(
                    &format!("{field}.hosts"),
                    "name at least one host".to_string(),
                ));
            }
            for (j, host) in certificate.hosts.iter().enumerate() {
                let host_field = format!("{field}.hosts[{j}]");
                let host = check_host_pattern(host, false).map_err(|p| invalid(&host_field, p))?;
                if let Some((_, other)) = seen.iter().find(|(h, _)| *h == host) {
                    return Err(invalid(
                        &host_field,
                        format!("{host} is already served by {other}"),
                    ));
                }
                seen.push((host, host_field));
            }
            match (&certificate.files, certificate.acme) {
                (Some(_), true) => {
                    return Err(invalid(
                        &field,
                        "give either files or acme: true, not both".to_string(),
                    ));
                }
                (None, false) => {
                    return Err(invalid(
                        &field,
                        "give files (cert and key) or acme: true".to_string(),
                    ));
                }
                (None, true) => {
                    if self.acme.is_none() {
                        return Err(invalid(
                            &format!("{field}.acme"),
                            "needs the acme section (directory, state_dir)".to_string(),
                        ));
                    }
                    // A public CA issues no name of one label (and the ACME state directory
                    // names its own files so: `account`).
                    if let Some(single) = certificate.hosts.iter().find(|h| !h.contains('.')) {
                        return Err(invalid(
                            &format!("{field}.hosts"),
                            format!(
                                "{single}: an ACME CA issues only names of more than one label"
                            ),
                        ));
                    }
                    if let Some(wildcard) = certificate.hosts.iter().find(|h| h.contains('*')) {
                        return Err(invalid(
                            &format!("{field}.hosts"),
                            format!(
                                "{wildcard}: ACME issues wildcard names only by DNS-01, which \
                                 the gateway does not do; use files"
                            ),
                        ));
                    }
                }
                (Some(_), false) => {}
            }
        }
        if let Some(acme) = &self.acme {
            let uri: http::Uri = acme.directory.parse().map_err(|_| {
                invalid(
                    "acme.directory",
                    format!("{:?} is not a URL", acme.directory),
                )
            })?;
            if uri.scheme_str() != Some("https") {
                return Err(invalid(
                    "acme.directory",
                    format!("{:?}: ACME is spoken over HTTPS only", acme.directory),
                ));
            }
            if !acme.accept_terms_of_service {
                return Err(invalid(
                    "acme.accept_terms_of_service",
                    "an ACME CA opens no account without it; read the CA's terms and set it to \
                     true"
                        .to_string(),
                ));
            }
            if acme.challenge == AcmeChallenge::Http01 && self.http.is_none() {
                return Err(invalid(
                    "acme.challenge",
                    "http-01 is answered on the http listener; configure http.listen, or use \
                     tls-alpn-01"
                        .to_string(),
                ));
            }
            for (i, contact) in acme.contact.iter().enumerate() {
                if !contact.contains(':') {
                    return Err(invalid(
                        &format!("acme.contact[{i}]"),
                        format!("{contact:?} is not a URL (e.g. mailto:ops@example.com)"),
                    ));
                }
            }
        }

        if self.routes.is_empty() {
            return Err(invalid(
                "routes",
                "name at least one route into the mesh".to_string(),
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            check_host_pattern(&route.host, true)
                .map_err(|p| invalid(&format!("{field}.host"), p))?;
            check_path_prefix(&route.path_prefix)
                .map_err(|p| invalid(&format!("{field}.path_prefix"), p))?;
            check_host_port(&route.upstream)
                .map_err(|p| invalid(&format!("{field}.upstream"), p))?;
            if route.identity.0.is_empty() {
                return Err(invalid(
                    &format!("{field}.identity"),
                    "name at least one SPIFFE ID the upstream must prove".to_string(),
                ));
            }
            let host = route.host.to_ascii_lowercase();
            if let Some(j) = self.routes[..i].iter().position(|r| {
                r.host.eq_ignore_ascii_case(&host) && r.path_prefix == route.path_prefix
            }) {
                return Err(invalid(
                    &field,
                    format!(
                        "routes[{j}] has the same host and path prefix, so this one is never used"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a host name or pattern and returns it in lowercase: DNS labels of letters, digits
/// and hyphens, optionally a first label of `*`, or (for routes) `*` alone.
fn check_host_pattern(host: &str, any_allowed: bool) -> Result<String, String> {
    if any_allowed && host == "*" {
        return Ok(host.to_string());
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{host:?} is not a host name"));
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            let hint = if label.contains('*') {
                "; a wildcard is one `*` label, first, as in *.example.com"
            } else if label.contains(':') {
                "; give the name without a port"
            } else {
                ""
            };
            return Err(format!("{host:?} is not a host name{hint}"));
        }
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!(
            "{host:?} is an IP address; public certificates and routes name hosts"
        ));
    }
    Ok(lower)
}

fn check_path_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?} must start with /"));
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?}: leave out the trailing / (prefixes match whole segments)"
        ));
    }
    if prefix
        .split('/')
        .any(|segment| segment == "." || segment == "..")
        || prefix.contains("//")
        || prefix.contains('%')
        || prefix.contains('?')
        || prefix.contains('#')
    {
        return Err(format!(
            "{prefix:?} is not a plain path (no dot segments, empty segments, %-escapes, ? or #)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
ca:
  address: https://127.0.0.1:7443
  trust_bundle: bundle.pem
  token_file: token
https:
  listen: 0.0.0.0:8443
http:
  listen: 0.0.0.0:8080
certificates:
  - hosts: [shop.example.com, www.shop.example.com]
    files:
      cert: shop.pem
      key: shop.key
  - hosts: [api.example.com]
    acme: true
acme:
  directory: https://acme.example.net/directory
  contact: [mailto:ops@example.com]
  accept_terms_of_service: true
  state_dir: /var/lib/hush-gateway
routes:
  - host: shop.example.com
    path_prefix: /api
    upstream: api.shop.svc:15006
    identity: spiffe://cluster.local/ns/shop/sa/api
  - host: shop.example.com
    upstream: web.shop.svc:15006
    identity: spiffe://cluster.local/ns/shop/sa/web
";

    fn parse(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_yaml(text, "gateway.yaml", Path::new("/etc/hush"))
    }

    #[test]
    fn the_example_parses_with_defaults_and_reads_back_equal() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.https.profile, TlsProfile::Intermediate);
        assert_eq!(
            config.https.hsts.header_value().as_deref(),
            Some("max-age=31536000")
        );
        assert_eq!(config.routes[1].path_prefix, "/");
        assert_eq!(
            config.certificates[0].files.as_ref().unwrap().cert,
            Path::new("/etc/hush/shop.pem")
        );
        assert_eq!(
            config.acme.as_ref().unwrap().challenge,
            AcmeChallenge::Http01
        );
        let written = config.to_yaml().unwrap();
        let again = GatewayConfig::from_yaml(&written, "written", Path::new("/")).unwrap();
        assert_eq!(again, config);
        assert!(!written.contains("path_prefix: /\n"), "{written}");
    }

    fn refused(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_refused_naming_the_field() {
        let cases = [
            (
                EXAMPLE.replace("    acme: true\n", ""),
                "certificates[1]: give files (cert and key) or acme: true",
            ),
            (
                EXAMPLE.replace("api.example.com]", "\"*.example.com\"]"),
                "certificates[1].hosts: *.example.com: ACME issues wildcard names only by DNS-01",
            ),
            (
                EXAMPLE.replace("[api.example.com]", "[account]"),
                "certificates[1].hosts: account: an ACME CA issues only names of more than one label",
            ),
            (
                EXAMPLE.replace("www.shop.example.com", "SHOP.example.com"),
                "certificates[0].hosts[1]: shop.example.com is already served by certificates[0].hosts[0]",
            ),
            (
                EXAMPLE.replace("  accept_terms_of_service: true\n", ""),
                "acme.accept_terms_of_service: an ACME CA opens no account without it",
            ),
            (
                EXAMPLE.replace("http:\n  listen: 0.0.0.0:8080\n", ""),
                "acme.challenge: http-01 is answered on the http listener",
            ),
            (
                EXAMPLE.replace("path_prefix: /api", "path_prefix: /api/../admin"),
                "routes[0].path_prefix: \"/api/../admin\" is not a plain path",
            ),
            (
                EXAMPLE.replace("path_prefix: /api", "path_prefix: /"),
                "routes[1]: routes[0] has the same host and path prefix",
            ),
            (
                EXAMPLE.replace(
                    "host: shop.example.com\n    path",
                    "host: shop.example.com:443\n    path",
                ),
                "routes[0].host: \"shop.example.com:443\" is not a host name; give the name without a port",
            ),
            (
                EXAMPLE.replace("upstream: api.shop.svc:15006", "upstream: api.shop.svc"),
                "routes[0].upstream",
            ),
            (
                EXAMPLE.replace("directory: https://acme", "directory: http://acme"),
                "acme.directory: \"http://acme.example.net/directory\": ACME is spoken over HTTPS only",
            ),
            (
                EXAMPLE.replace("0.0.0.0:8080", "0.0.0.0:8443"),
                "http.listen: 0.0.0.0:8443 is already used by https.listen",
            ),
            (
                EXAMPLE.replace(
                    "https:\n  listen: 0.0.0.0:8443\n",
                    "https:\n  listen: 0.0.0.0:8443\n  profile: ancient\n",
                ),
                "profile",
            ),
            (
                EXAMPLE.replace(
                    "https:\n  listen: 0.0.0.0:8443\n",
                    "https:\n  listen: 0.0.0.0:8443\n  hsts:\n    max_age: 1d\n    preload: true\n",
                ),
                "https.hsts.preload: the preload list takes only include_subdomains: true",
            ),
            (EXAMPLE.replace("routes:", "route:"), "unknown field"),
        ];
        for (text, expected) in cases {
            let error = refused(&text);
            assert!(
                error.contains(expected),
                "expected {expected:?} in {error:?}"
            );
        }
    }

    #[test]
    fn hsts_can_be_turned_off_or_widened() {
        let off = Hsts {
            max_age: Duration::ZERO,
            ..Hsts::default()
        };
        assert_eq!(off.header_value(), None);
        let wide = Hsts {
            include_subdomains: true,
            preload: true,
            ..Hsts::default()
        };
        assert_eq!(
            wide.header_value().as_deref(),
            Some("max-age=31536000; includeSubDomains; preload")
        );
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            check_host_pattern("Shop.Example.COM", false).unwrap(),
            "shop.example.com"
        );
        assert_eq!(
            check_host_pattern("*.example.com", false).unwrap(),
            "*.example.com"
        );
        assert!(check_host_pattern("*", false).is_err());
        assert_eq!(check_host_pattern("*", true).unwrap(), "*");
        for bad in [
            "", "a..b", "-a.com", "a*.com", "*.*.com", "a_b.com", "10.0.0.1", "ä.com",
        ] {
            assert!(check_host_pattern(bad, true).is_err(), "{bad}");
        }
    }
}
