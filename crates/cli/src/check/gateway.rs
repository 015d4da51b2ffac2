//! `hush check --gateway gateway.yaml`: is this edge gateway's installation sound?
//!
//! Its mesh side is a sidecar's and is checked by the same code: the trust bundle, the CA, its
//! intermediate, the clocks, the token file. Then its public side: each certificate from files
//! (readable, the key its leaf's, covering its hosts, and its dates: a warning 14 days ahead, as
//! the gateway warns); for ACME, the state directory's modes and the ACME directory's answer;
//! and the running gateway's public listener, host by host, by `hush diagnose --public` with that
//! host as the server name, summed up in one line each.
//!
//! A flag rather than guessing the kind of file: a sidecar configuration with a typo would
//! otherwise be reported against the gateway's fields, a misleading explanation.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hush_config::{AcmeConfig, CertificateConfig, CertificateFiles, GatewayConfig};
use hush_gateway::certs::{CertError, Origin, Served};
use hush_identity::{CertificateSummary, TrustBundle};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::{
    Check, CheckArgs, Report, Verdict, check_ca, check_token_file, describe_bundle, reachable,
    unix_now,
};
use crate::diagnose::public::{self, PublicTrust, Summary};
use crate::times::span;

/// A public certificate with less than this left gets a warning (the gateway's own rule).
const EXPIRY_WARNING: i64 = 14 * 86_400;

/// The largest ACME directory read: a directory is a few hundred bytes of JSON.
const DIRECTORY_LIMIT: usize = 64 * 1024;

pub(super) async fn check(path: &Path, args: &CheckArgs) -> Report {
    let mut report = Report {
        config: path.display().to_string(),
        ok: false,
        checks: Vec::new(),
    };
    let config = match GatewayConfig::load(path) {
        Ok(config) => {
            report.add(
                "configuration",
                Verdict::Ok,
                format!(
                    "valid: {} certificate{}, {} route{}",
                    config.certificates.len(),
                    plural(config.certificates.len()),
                    config.routes.len(),
                    plural(config.routes.len())
                ),
                "",
            );
            config
        }
        Err(e) => {
            report.add(
                "configuration",
                Verdict::Failed,
                format!("{e:#}"),
                "fix the field the message names",
            );
            return report;
        }
    };

    match read_bundle(&config.ca.trust_bundle) {
        Ok(bundle) => {
            let (verdict, message, hint) = describe_bundle(&bundle);
            report.add("trust bundle", verdict, message, &hint);
            check_ca(&mut report, &config.ca.address, &bundle, args.timeout).await;
        }
        Err(message) => {
            report.add(
                "trust bundle",
                Verdict::Failed,
                message,
                "point ca.trust_bundle at the mesh's bundle.pem (`hush ca bundle`)",
            );
            report.add("CA", Verdict::Skipped, "needs the trust bundle".into(), "");
        }
    }
    check_token_file(&mut report, &config.ca.token_file);

    for (index, certificate) in config.certificates.iter().enumerate() {
        let (verdict, message, hint) = match &certificate.files {
            Some(files) => check_files(certificate, files, unix_now()),
            // Nothing on disk to check here: the ACME lines and the listener's below say more.
            None => (
                Verdict::Skipped,
                "from ACME: obtained and renewed by the running gateway (its listener is \
                 checked below)"
                    .into(),
                String::new(),
            ),
        };
        add_about(
            &mut report,
            "certificate",
            format!("certificates[{index}] {}", certificate.hosts.join(", ")),
            verdict,
            message,
            &hint,
        );
    }
    if let Some(acme) = &config.acme {
        let (verdict, message, hint) = check_state_dir(&acme.state_dir);
        report.add("ACME state", verdict, message, hint);
        let (verdict, message, hint) = check_directory(acme, args.timeout).await;
        report.add("ACME directory", verdict, message, &hint);
    }
    check_listener(&mut report, &config, args).await;

    report.ok = report.checks.iter().all(|c| c.verdict != Verdict::Failed);
    report
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn add_about(
    report: &mut Report,
    name: &'static str,
    subject: String,
    verdict: Verdict,
    message: String,
    hint: &str,
) {
    report.checks.push(Check {
        name,
        subject: Some(subject.clone()),
        verdict,
        message: format!("{subject}: {message}"),
        hint: hint.to_string(),
    });
}

fn read_bundle(path: &Path) -> Result<TrustBundle, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    TrustBundle::from_pem(&pem, None).map_err(|e| format!("{}: {e}", path.display()))
}

// === certificates from files ===

/// A `files` certificate: readable, its key, its hosts, its dates at `now`.
fn check_files(
    certificate: &CertificateConfig,
    files: &CertificateFiles,
    now: i64,
) -> (Verdict, String, String) {
    let read = |path: &Path, field: &str| {
        std::fs::read(path).map_err(|e| {
            (
                Verdict::Failed,
                format!("cannot read {field} {}: {e}", path.display()),
                "the gateway must be able to read it (path, and permissions for its user)"
                    .to_string(),
            )
        })
    };
    let (chain_pem, key_pem) = match (
        read(&files.cert, "files.cert"),
        read(&files.key, "files.key"),
    ) {
        (Ok(chain), Ok(key)) => (chain, key),
        (Err(failed), _) | (_, Err(failed)) => return failed,
    };
    let leaf = CertificateDer::pem_slice_iter(&chain_pem)
        .next()
        .and_then(Result::ok)
        .and_then(|der| CertificateSummary::from_der(&der).ok());
    // The dates first: the gateway's own check stops at an expired leaf, before its names.
    if let Some(leaf) = &leaf {
        if leaf.not_after <= now {
            return (
                Verdict::Failed,
                format!(
                    "{} expired {} ago",
                    files.cert.display(),
                    span(now - leaf.not_after)
                ),
                "renew it and replace the files: the gateway reloads them by itself".into(),
            );
        }
        if leaf.not_before > now {
            return (
                Verdict::Failed,
                format!(
                    "{} is not valid for {} more (is this clock behind?)",
                    files.cert.display(),
                    span(leaf.not_before - now)
                ),
                "compare `date -u` with real time; else the certificate was dated ahead".into(),
            );
        }
    }
    let name = certificate.hosts.first().map_or("", String::as_str);
    let served = match Served::from_pem(
        name,
        &certificate.hosts,
        &chain_pem,
        &key_pem,
        Origin::Files,
    ) {
        Ok(served) => served,
        Err(e) => {
            let hint = match &e {
                CertError::KeyMismatch => {
                    "files.key must be the key of the first certificate of files.cert (the leaf \
                     comes first, its intermediates after it)"
                }
                CertError::NameNotCovered { .. } => {
                    "issue a certificate that names every host of the entry, or move the host to \
                     an entry of its own"
                }
                _ => "the gateway refuses these files and keeps serving what it had",
            };
            return (Verdict::Failed, e.to_string(), hint.to_string());
        }
    };
    let not_after = served
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let left = not_after - now;
    let chain_length = served.key.cert.len();
    let message = format!(
        "{}: the key matches, it covers every host, {} left (chain of {chain_length} \
         certificate{})",
        files.cert.display(),
        span(left),
        plural(chain_length)
    );
    if left < EXPIRY_WARNING {
        (
            Verdict::Warning,
            message,
            "it expires within 14 days: renew it and replace the files (the gateway reloads \
             them)"
                .into(),
        )
    } else {
        (Verdict::Ok, message, String::new())
    }
}

// === ACME ===

/// The state directory: 0700, its files 0600, since it holds the account key and the
/// certificates' keys.
fn check_state_dir(dir: &Path) -> (Verdict, String, &'static str) {
    let metadata = match std::fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (
                Verdict::Warning,
                format!("{} does not exist yet", dir.display()),
                "the gateway makes it (0700) at its first start; it must be able to write its \
                 parent",
            );
        }
        Err(e) => {
            return (
                Verdict::Warning,
                format!("cannot read {}: {e}", dir.display()),
                "run hush check as the gateway's user",
            );
        }
    };
    if !metadata.is_dir() {
        return (
            Verdict::Failed,
            format!("{} is not a directory", dir.display()),
            "point acme.state_dir at a directory",
        );
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return (
            Verdict::Warning,
            format!(
                "{} is mode {mode:04o}: others can list the account's and certificates' keys",
                dir.display()
            ),
            "chmod 700 the directory (the gateway makes it so)",
        );
    }
    let mut open = Vec::new();
    let mut count = 0;
    let mut unreadable = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let entries = match std::fs::read_dir(&at) {
            Ok(entries) => entries,
            Err(e) => {
                unreadable = Some(format!("{}: {e}", at.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else if metadata.is_file() {
                count += 1;
                let mode = metadata.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    open.push(format!("{} ({mode:04o})", entry.path().display()));
                }
            }
        }
    }
    if let Some(unreadable) = unreadable {
        return (
            Verdict::Warning,
            format!("cannot read {unreadable}"),
            "run hush check as the gateway's user",
        );
    }
    if !open.is_empty() {
        open.truncate(3);
        return (
            Verdict::Warning,
            format!("files others can read: {}", open.join(", ")),
            "chmod 600 them: they hold private keys (the gateway writes its files 0600)",
        );
    }
    (
        Verdict::Ok,
        format!(
            "{} is 0700, its {count} file{} 0600 or stricter",
            dir.display(),
            plural(count)
        ),
        "",
    )
}

/// The ACME directory: a GET, trusting `directory_ca` or Mozilla's roots, within `timeout`.
async fn check_directory(acme: &AcmeConfig, timeout: Duration) -> (Verdict, String, String) {
    let url = &acme.directory;
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, get_directory(acme)).await;
    let took = started.elapsed();
    let hint_reach = "is the ACME CA up, and reachable from here (proxy, firewall, DNS)?";
    match answer {
        Err(_) => (
            Verdict::Failed,
            format!(
                "{url} did not answer within {}",
                humantime::format_duration(timeout)
            ),
            hint_reach.into(),
        ),
        Ok(Err(DirectoryError::Tls(e))) => (
            Verdict::Failed,
            format!("{url}: TLS failed: {e}"),
            match &acme.directory_ca {
                Some(_) => "check that acme.directory_ca holds the root of the ACME server's \
                            certificate"
                    .into(),
                None => "a private ACME CA needs acme.directory_ca with its root".into(),
            },
        ),
        Ok(Err(DirectoryError::Other(e))) => {
            (Verdict::Failed, format!("{url}: {e}"), hint_reach.into())
        }
        Ok(Ok((status, body))) => {
            let reached = format!("{url} answered in {:.0} ms", took.as_secs_f64() * 1000.0);
            let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
            let urls = ["newNonce", "newAccount", "newOrder"];
            let has_all = json
                .as_ref()
                .is_some_and(|j| urls.iter().all(|k| j[k].is_string()));
            if status != 200 {
                (
                    Verdict::Failed,
                    format!("{reached} with HTTP {status}"),
                    "check acme.directory: it is the directory URL, ending in /directory for \
                     most CAs"
                        .into(),
                )
            } else if !has_all {
                (
                    Verdict::Failed,
                    format!(
                        "{reached}, but not with an ACME directory (no newNonce, newAccount and newOrder)"
                    ),
                    "check acme.directory: it is the directory URL, not the CA's home page".into(),
                )
            } else {
                (
                    Verdict::Ok,
                    format!("{reached} with an ACME directory"),
                    String::new(),
                )
            }
        }
    }
}

enum DirectoryError {
    Tls(String),
    Other(String),
}

async fn get_directory(acme: &AcmeConfig) -> Result<(u16, Bytes), DirectoryError> {
    let other = |e: &dyn std::fmt::Display| DirectoryError::Other(e.to_string());
    let uri: http::Uri = acme.directory.parse().map_err(|e| other(&e))?;
    let host = uri
        .host()
        .ok_or_else(|| DirectoryError::Other("the URL has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    match &acme.directory_ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| other(&format!("acme.directory_ca {}: {e}", path.display())))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| other(&format!("acme.directory_ca {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| other(&e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = ServerName::try_from(host.clone()).map_err(|e| other(&e))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| other(&format!("cannot connect: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| DirectoryError::Tls(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| other(&e))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let request = http::Request::get(path)
        .header("host", authority)
        .header(
            "user-agent",
            concat!("hush-check/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| other(&e))?;
    let response = sender.send_request(request).await.map_err(|e| other(&e))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), DIRECTORY_LIMIT)
        .collect()
        .await
        .map_err(|e| other(&e))?
        .to_bytes();
    Ok((status, body))
}

// === the running gateway's public listener ===

/// Each configured host, diagnosed on the running gateway's public listener.
async fn check_listener(report: &mut Report, config: &GatewayConfig, args: &CheckArgs) {
    let address = match args.https {
        Some(address) => address,
        None if config.https.listen.port() == 0 => {
            report.add(
                "public TLS",
                Verdict::Skipped,
                "https.listen has port 0, chosen when the gateway starts".into(),
                "pass --https with the address the gateway printed",
            );
            return;
        }
        None => reachable(config.https.listen),
    };
    let trust = match &args.ca_file {
        Some(path) => match PublicTrust::from_file(path) {
            Ok(trust) => trust,
            Err(e) => {
                report.add("public TLS", Verdict::Failed, format!("{e:#}"), "");
                return;
            }
        },
        None => PublicTrust::mozilla(),
    };
    let target = address.to_string();
    for host in config.certificates.iter().flat_map(|c| &c.hosts) {
        // A wildcard is asked for with a name of its own under it.
        let asked = match host.strip_prefix("*.") {
            Some(parent) => format!("hush-check.{parent}"),
            None => host.clone(),
        };
        let Ok(server_name) = ServerName::try_from(asked.clone()) else {
            continue;
        };
        let diagnosis = public::diagnose(&target, server_name, &trust, args.timeout).await;
        let subject = if asked == *host {
            host.clone()
        } else {
            format!("{host} (as {asked})")
        };
        match diagnosis.summary() {
            Summary::Ok(message) => {
                add_about(report, "public TLS", subject, Verdict::Ok, message, "");
            }
            Summary::Warning(message, hint) => {
                add_about(
                    report,
                    "public TLS",
                    subject,
                    Verdict::Warning,
                    message,
                    hint,
                );
            }
            Summary::Failed(message, hint) => {
                add_about(
                    report,
                    "public TLS",
                    subject,
                    Verdict::Failed,
                    message,
                    hint,
                );
            }
            Summary::Unreachable(message) => {
                report.add(
                    "public TLS",
                    Verdict::Skipped,
                    format!("no gateway answers on {target}: {message}"),
                    "start it (`hush gateway --config …`) to check what it serves, or pass \
                     --https with its address",
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names` valid from `from` to `to` (Unix seconds), and a
    /// key: matching, or another one.
    fn pair(names: &[&str], from: i64, to: i64, matching: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(to).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let key_pem = if matching {
            key.serialize_pem()
        } else {
            rcgen::KeyPair::generate().unwrap().serialize_pem()
        };
        (cert.pem(), key_pem)
    }

    /// One row per state of a `files` certificate.
    #[test]
    fn file_certificates_are_judged_by_key_names_and_dates() {
        let now = unix_now();
        let day = 86_400;
        let dir = tempfile::tempdir().unwrap();
        let shop = ["shop.example.com", "www.shop.example.com"];
        for (situation, names, from, to, matching, verdict, words) in [
            (
                "sound",
                &shop[..],
                -day,
                90 * day,
                true,
                Verdict::Ok,
                "the key matches",
            ),
            (
                "in its last two weeks",
                &shop,
                -day,
                13 * day,
                true,
                Verdict::Warning,
                "left",
            ),
            (
                "expired",
                &shop,
                -9 * day,
                -2 * day,
                true,
                Verdict::Failed,
                "expired 2 d 0 h ago",
            ),
            (
                "not valid yet",
                &shop,
                2 * day,
                9 * day,
                true,
                Verdict::Failed,
                "not valid for",
            ),
            (
                "another key",
                &shop,
                -day,
                90 * day,
                false,
                Verdict::Failed,
                "does not belong",
            ),
            (
                "one host missing",
                &shop[..1],
                -day,
                90 * day,
                true,
                Verdict::Failed,
                "does not cover www.shop.example.com",
            ),
        ] {
            let (cert, key) = pair(names, now + from, now + to, matching);
            let files = CertificateFiles {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
            };
            std::fs::write(&files.cert, cert).unwrap();
            std::fs::write(&files.key, key).unwrap();
            let certificate = CertificateConfig {
                hosts: shop.iter().map(|h| h.to_string()).collect(),
                files: Some(files.clone()),
                acme: false,
            };
            let (judged, message, hint) = check_files(&certificate, &files, now);
            assert_eq!(judged, verdict, "{situation}: {message}");
            assert!(message.contains(words), "{situation}: {message}");
            assert_eq!(
                hint.is_empty(),
                verdict == Verdict::Ok,
                "{situation}: {hint}"
            );
        }
        let missing = CertificateFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("key.pem"),
        };
        let certificate = CertificateConfig {
            hosts: vec!["shop.example.com".into()],
            files: Some(missing.clone()),
            acme: false,
        };
        let (judged, message, _) = check_files(&certificate, &missing, now);
        assert_eq!(judged, Verdict::Failed);
        assert!(message.starts_with("cannot read files.cert"), "{message}");
    }

    #[test]
    fn the_acme_state_directory_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("acme");
        assert_eq!(check_state_dir(&state).0, Verdict::Warning, "missing");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (verdict, message, _) = check_state_dir(&state);
        assert_eq!(verdict, Verdict::Warning);
        assert!(message.contains("mode 0755"), "{message}");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = state.join("account.key");
        std::fs::write(&key, "secret").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (verdict, message, _) = check_state_dir(&state);
        assert_eq!(verdict, Verdict::Warning);
        assert!(message.contains("account.key (0640)"), "{message}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (verdict, message, _) = check_state_dir(&state);
        assert_eq!(verdict, Verdict::Ok, "{message}");
        assert!(
            message.ends_with("is 0700, its 1 file 0600 or stricter"),
            "{message}"
        );
    }
}
