//! `hush cert …`: read certificates in plain words, and ask a CA for one.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use hush_ca::pem_certificate;
use hush_ca_client::CaClient;
use hush_ca_client::proto::CertifyResponse;
use hush_identity::{CertificateSummary, TrustBundle, check_leaf_svid, check_signing_cert};
use hush_tls::CredentialStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use time::OffsetDateTime;

use crate::parse_duration;

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Print a certificate (or a chain) in plain words: SPIFFE ID, issuer, validity and time
    /// left, key type, and whether it passes the X.509-SVID rules.
    Inspect(InspectArgs),
    /// Ask a CA for a certificate: make a key, send a CSR with a join token, write the result.
    Request(RequestArgs),
    /// Renew a certificate before it expires: prove identity with the current one (mTLS, no
    /// token), get a new certificate for a new key, replace the files.
    Renew(RenewArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RenewArgs {
    /// The CA, e.g. https://localhost:8443.
    #[arg(long)]
    ca: String,
    /// The trust bundle (PEM) that verifies the CA.
    #[arg(long)]
    bundle: PathBuf,
    /// Directory holding svid.pem and svid.key (as written by `hush cert request`); the renewed
    /// files replace them.
    #[arg(long)]
    dir: PathBuf,
    /// Lifetime to ask for (the CA may shorten it).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Key type of the new key.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    key_type: KeyType,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// PEM file with one or more certificates (leaf first).
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The CA, e.g. https://localhost:8443.
    #[arg(long)]
    ca: String,
    /// The trust bundle (PEM) that verifies the CA.
    #[arg(long)]
    bundle: PathBuf,
    /// File holding the join token (or a Kubernetes service-account token).
    #[arg(long)]
    token_file: PathBuf,
    /// Directory to write svid.pem, svid.key (mode 0600) and bundle.pem into.
    #[arg(long)]
    out_dir: PathBuf,
    /// Lifetime to ask for (the CA may shorten it).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// Key type of the new key.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    key_type: KeyType,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl KeyType {
    pub(crate) fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

pub(crate) async fn run(command: CertCommand) -> Result<()> {
    match command {
        CertCommand::Inspect(args) => inspect(args),
        CertCommand::Request(args) => request(args).await,
        CertCommand::Renew(args) => renew(args).await,
    }
}

/// One certificate of a chain, as `inspect` reports it.
#[derive(Debug, Serialize)]
pub(crate) struct Inspected {
    #[serde(flatten)]
    summary: CertificateSummary,
    /// `leaf` or `signing`.
    role: &'static str,
    /// Seconds until NotAfter (negative once expired).
    seconds_left: i64,
    /// Whether the certificate passes the X.509-SVID rules for its role.
    svid_ok: bool,
    /// Why not, when it does not.
    svid_error: Option<String>,
}

pub(crate) fn inspect_chain(chain: &[CertificateDer<'_>]) -> Result<Vec<Inspected>> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let summary = CertificateSummary::from_der(der)
                .with_context(|| format!("certificate {} cannot be read", i + 1))?;
            let (role, check) = if summary.is_ca {
                ("signing", check_signing_cert(der).map(|_| ()))
            } else {
                ("leaf", check_leaf_svid(der).map(|_| ()))
            };
            Ok(Inspected {
                seconds_left: summary.not_after - now,
                role,
                svid_ok: check.is_ok(),
                svid_error: check.err().map(|e| e.to_string()),
                summary,
            })
        })
        .collect()
}

fn inspect(args: InspectArgs) -> Result<()> {
    let pem =
        fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let chain = hush_identity::parse_pem_certificates(&pem)
        .with_context(|| format!("{} is not a PEM certificate file", args.file.display()))?;
    let report = inspect_chain(&chain)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", render(&report))?;
    }
    Ok(())
}

pub(crate) fn render(report: &[Inspected]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let total = report.len();
    for (i, cert) in report.iter().enumerate() {
        let c = &cert.summary;
        let kind = match (cert.role, i) {
            ("leaf", _) => "workload certificate (X.509-SVID leaf)",
            (_, _) if c.subject == c.issuer => "root CA",
            _ => "intermediate CA",
        };
        let _ = writeln!(s, "certificate {} of {total}: {kind}", i + 1);
        match &c.spiffe_id {
            Some(id) => {
                let _ = writeln!(s, "  SPIFFE ID:  {id}");
            }
            None if !c.uri_sans.is_empty() => {
                let _ = writeln!(s, "  URI SANs:   {}", c.uri_sans.join(", "));
            }
            None => {}
        }
        if !c.dns_sans.is_empty() || !c.ip_sans.is_empty() {
            let names: Vec<_> = c.dns_sans.iter().chain(c.ip_sans.iter()).cloned().collect();
            let _ = writeln!(s, "  names:      {}", names.join(", "));
        }
        let _ = writeln!(s, "  subject:    {}", c.subject);
        let _ = writeln!(s, "  issuer:     {}", c.issuer);
        let _ = writeln!(s, "  serial:     {}", c.serial_hex);
        let _ = writeln!(
            s,
            "  valid:      {} → {} ({})",
            date(c.not_before),
            date(c.not_after),
            time_left(cert.seconds_left)
        );
        let _ = writeln!(s, "  key:        {}", c.key_algorithm);
        let _ = writeln!(s, "  signature:  {}", c.signature_algorithm);
        let verdict = match (&cert.svid_error, cert.role) {
            (None, "leaf") => "ok, a valid X.509-SVID leaf".to_string(),
            (None, _) => "ok, a valid X.509-SVID signing certificate".to_string(),
            (Some(e), _) => format!("FAILS: {e}"),
        };
        let _ = writeln!(s, "  SVID check: {verdict}");
    }
    s
}

fn date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// "expires in 23 h 59 min" / "expired 2 h 3 min ago", rounded to what a person needs.
pub(crate) fn time_left(seconds: i64) -> String {
    let span = human_span(seconds.unsigned_abs());
    if seconds >= 0 {
        format!("expires in {span}")
    } else {
        format!("EXPIRED {span} ago")
    }
}

fn human_span(s: u64) -> String {
    let (hours, minutes) = (s / 3600, (s % 3600) / 60);
    let (days, day_hours) = (s / 86_400, (s % 86_400) / 3600);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{minutes} min"),
        // Workload certificates live about a day: hours and minutes read best up to two days.
        3600..172_800 => format!("{hours} h {minutes} min"),
        172_800..5_184_000 => format!("{days} d {day_hours} h"),
        _ => format!("{days} days"),
    }
}

async fn request(args: RequestArgs) -> Result<()> {
    let bundle = read_bundle(&args.bundle)?;
    let token = fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read --token-file {}", args.token_file.display()))?;
    let (key, csr) = new_key_and_csr(args.key_type)?;
    let client = CaClient::new(&args.ca, bundle.roots())?;
    let response = client
        .certify(token.trim(), csr, args.ttl)
        .await
        .map_err(|status| describe_failure(&args.ca, &status))?;
    save_issued(&args.out_dir, &key, &response)?;
    eprintln!(
        "issued {} (serial {}), written to {}",
        response.spiffe_id,
        response.serial,
        args.out_dir.display()
    );
    Ok(())
}

async fn renew(args: RenewArgs) -> Result<()> {
    let bundle = read_bundle(&args.bundle)?;
    let cert_path = args.dir.join("svid.pem");
    let key_path = args.dir.join("svid.key");
    let chain = hush_identity::parse_pem_certificates(
        &fs::read(&cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?,
    )
    .with_context(|| format!("{} is not a PEM certificate file", cert_path.display()))?;
    let current_key = PrivateKeyDer::from_pem_slice(
        &fs::read(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("{} is not a PEM private key: {e}", key_path.display()))?;
    let identity = CredentialStore::new();
    identity
        .install(chain, current_key)
        .with_context(|| format!("{} and {}", cert_path.display(), key_path.display()))?;

    let (key, csr) = new_key_and_csr(args.key_type)?;
    let client = CaClient::with_identity(&args.ca, bundle.roots(), identity)?;
    let response = client
        .renew(csr, args.ttl)
        .await
        .map_err(|status| describe_failure(&args.ca, &status))?;
    save_issued(&args.dir, &key, &response)?;
    eprintln!(
        "renewed {} (serial {}), written to {}",
        response.spiffe_id,
        response.serial,
        args.dir.display()
    );
    Ok(())
}

/// A fresh key (kept in memory until it is saved beside its certificate) and a DER CSR for it.
/// The CSR names nothing: the CA writes the identity it attests.
fn new_key_and_csr(key_type: KeyType) -> Result<(rcgen::KeyPair, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(key_type.algorithm())?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

fn read_bundle(path: &Path) -> Result<TrustBundle> {
    let pem = fs::read(path).with_context(|| format!("cannot read --bundle {}", path.display()))?;
    TrustBundle::from_pem(&pem, None).with_context(|| format!("--bundle {}", path.display()))
}

/// Writes svid.pem, svid.key (0600) and bundle.pem into `dir`, each replaced atomically.
fn save_issued(dir: &Path, key: &rcgen::KeyPair, response: &CertifyResponse) -> Result<()> {
    if response.cert_chain.is_empty() {
        bail!("the CA answered with an empty certificate chain");
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let chain: String = response
        .cert_chain
        .iter()
        .map(|der| pem_certificate(der))
        .collect();
    let roots: String = response
        .trust_bundle
        .iter()
        .map(|der| pem_certificate(der))
        .collect();
    // The key first: a certificate on disk without its key would be useless.
    write_file(&dir.join("svid.key"), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join("svid.pem"), chain.as_bytes(), 0o644)?;
    write_file(&dir.join("bundle.pem"), roots.as_bytes(), 0o644)?;
    Ok(())
}

/// Tells a refusal by the CA apart from failing to reach it (connection, TLS verification).
pub(crate) fn describe_failure(ca: &str, status: &tonic::Status) -> anyhow::Error {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated
        | Code::InvalidArgument
        | Code::ResourceExhausted
        | Code::PermissionDenied
        | Code::FailedPrecondition => {
            anyhow::anyhow!("the CA refused: {} ({:?})", status.message(), status.code())
        }
        _ => anyhow::anyhow!(
            "cannot get a certificate from the CA at {ca}: {} ({:?})",
            status.message(),
            status.code()
        ),
    }
}

/// Writes through a temporary file (created with `mode`) and a rename, so readers never see
/// half a file and a key is never readable by others, even for a moment.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_naturally() {
        assert_eq!(time_left(30), "expires in 30 s");
        assert_eq!(time_left(23 * 3600 + 59 * 60 + 5), "expires in 23 h 59 min");
        assert_eq!(time_left(-(2 * 3600 + 3 * 60)), "EXPIRED 2 h 3 min ago");
        assert_eq!(time_left(24 * 3600), "expires in 24 h 0 min");
        assert_eq!(time_left(3 * 86_400 + 3600), "expires in 3 d 1 h");
        assert_eq!(time_left(3650 * 86_400), "expires in 3650 days");
    }
}
