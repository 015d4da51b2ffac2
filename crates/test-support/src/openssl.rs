//! CSRs made by the `openssl` command line, the way operators and other meshes make them.
//!
//! rcgen cannot make RSA keys, and a CA that only ever saw rcgen's CSRs could be tuned to one
//! encoder's habits; openssl's CSRs keep it honest. Every CSR here asks for forged names
//! (`CN=cluster-admin`, the URI SAN [`FORGED_SPIFFE_ID`], the DNS SAN [`FORGED_DNS_NAME`]) that a
//! CA must ignore.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::csr::{FORGED_CN, FORGED_DNS_NAME, FORGED_SPIFFE_ID};

/// Keys openssl makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpensslKey {
    /// RSA with this many bits (1024 makes a weak key on purpose).
    Rsa(u32),
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// Ed25519.
    Ed25519,
}

impl OpensslKey {
    fn newkey_args(self) -> Vec<String> {
        match self {
            Self::Rsa(bits) => vec!["-newkey".into(), format!("rsa:{bits}")],
            Self::EcP256 => ec_args("P-256"),
            Self::EcP384 => ec_args("P-384"),
            Self::Ed25519 => vec!["-newkey".into(), "ed25519".into()],
        }
    }

    /// How `hush cert inspect` and `hush_identity::CertificateSummary` name this key type.
    pub fn display_name(self) -> String {
        match self {
            Self::Rsa(bits) => format!("RSA {bits}"),
            Self::EcP256 => "ECDSA P-256".into(),
            Self::EcP384 => "ECDSA P-384".into(),
            Self::Ed25519 => "Ed25519".into(),
        }
    }
}

fn ec_args(curve: &str) -> Vec<String> {
    vec![
        "-newkey".into(),
        "ec".into(),
        "-pkeyopt".into(),
        format!("ec_paramgen_curve:{curve}"),
    ]
}

/// Whether the `openssl` command can be run.
pub fn openssl_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// An openssl CSR: `(der, pem)`.
pub fn openssl_csr(key: OpensslKey) -> (Vec<u8>, String) {
    openssl_csr_with_digest(key, None)
}

/// An openssl CSR signed with `digest` (such as `sha1`), or openssl's default when `None`.
/// Panics with openssl's stderr if openssl refuses.
pub fn openssl_csr_with_digest(key: OpensslKey, digest: Option<&str>) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let pem_path = dir.path().join("csr.pem");
    let der_path = dir.path().join("csr.der");
    let mut args: Vec<String> = vec!["req".into(), "-new".into()];
    args.extend(key.newkey_args());
    args.extend([
        "-nodes".into(),
        "-batch".into(),
        "-keyout".into(),
        path_arg(&dir.path().join("key.pem")),
        "-subj".into(),
        format!("/O=evil/CN={FORGED_CN}"),
        "-addext".into(),
        format!("subjectAltName=URI:{FORGED_SPIFFE_ID},DNS:{FORGED_DNS_NAME}"),
        "-out".into(),
        path_arg(&pem_path),
    ]);
    if let Some(digest) = digest {
        args.push(format!("-{digest}"));
    }
    openssl(&args);
    openssl(&[
        "req".into(),
        "-in".into(),
        path_arg(&pem_path),
        "-outform".into(),
        "DER".into(),
        "-out".into(),
        path_arg(&der_path),
    ]);
    let pem = std::fs::read_to_string(&pem_path).expect("openssl wrote no PEM CSR");
    let der = std::fs::read(&der_path).expect("openssl wrote no DER CSR");
    (der, pem)
}

fn path_arg(path: &Path) -> String {
    path.to_str()
        .expect("temporary paths are UTF-8")
        .to_string()
}

fn openssl(args: &[String]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("cannot run openssl (check openssl_available() first)");
    assert!(
        output.status.success(),
        "openssl {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
