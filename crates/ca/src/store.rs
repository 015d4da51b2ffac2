//! The CA's directory: creating a root and an intermediate, and loading them back.
//!
//! ```text
//! DIR/
//!   root.pem            root certificate
//!   root.key            root private key (0600) — never read by `hush ca serve`; keep it offline
//!   intermediate.pem    intermediate certificate, signed by the root
//!   intermediate.key    intermediate private key (0600) — signs workload certificates
//!   bundle.pem          the trust bundle handed to workloads (the root)
//!   tokens/             join tokens, by id, hashes only
//!   audit.log           one JSON line per issuance or refusal
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hush_identity::{TrustBundle, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::authority::CaMaterial;

const ROOT_CERT: &str = "root.pem";
const ROOT_KEY: &str = "root.key";
const INTERMEDIATE_CERT: &str = "intermediate.pem";
const INTERMEDIATE_KEY: &str = "intermediate.key";
const BUNDLE: &str = "bundle.pem";

/// Signature algorithm of the CA's own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaKeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default: fast, universally supported).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
}

impl CaKeyAlgorithm {
    pub(crate) fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

/// Options of `hush ca init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The trust domain the CA issues for.
    pub trust_domain: TrustDomain,
    /// Key algorithm of the root and the intermediate.
    pub key_algorithm: CaKeyAlgorithm,
    /// Lifetime of the root (default 10 years).
    pub root_lifetime: Duration,
    /// Lifetime of the intermediate (default 1 year).
    pub intermediate_lifetime: Duration,
    /// Replace an existing CA in the directory.
    pub force: bool,
}

impl InitOptions {
    /// Defaults for `trust_domain`: ECDSA P-256, root 10 years, intermediate 1 year.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            key_algorithm: CaKeyAlgorithm::default(),
            root_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            intermediate_lifetime: Duration::from_secs(365 * 24 * 3600),
            force: false,
        }
    }
}

/// The CA directory could not be created or read.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A CA already exists and `--force` was not given.
    #[error("a CA already exists in {0} (found {1}); pass --force to replace it")]
    AlreadyExists(PathBuf, String),
    /// A file is missing.
    #[error("{path} is missing: is {dir} a hush CA directory? (create one with `hush ca init`)")]
    Missing {
        /// The missing file.
        path: PathBuf,
        /// The CA directory.
        dir: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file's content is wrong.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key or certificate could not be made.
    #[error("cannot create the CA certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What `init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// The root certificate (DER).
    pub root: CertificateDer<'static>,
    /// The intermediate certificate (DER).
    pub intermediate: CertificateDer<'static>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// A hush CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    path: PathBuf,
}

// === impl CaDir ===

impl CaDir {
    /// A handle on `path`; nothing is read until asked.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where join tokens are kept.
    pub fn tokens_dir(&self) -> PathBuf {
        self.path.join("tokens")
    }

    /// The default audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.path.join("audit.log")
    }

    /// The trust bundle file.
    pub fn bundle_path(&self) -> PathBuf {
        self.path.join(BUNDLE)
    }

    /// Creates a root and an intermediate. Refuses to replace an existing CA unless `force`.
    pub fn init(&self, options: &InitOptions) -> Result<InitReport, StoreError> {
        if !options.force {
            for name in [
                ROOT_CERT,
                ROOT_KEY,
                INTERMEDIATE_CERT,
                INTERMEDIATE_KEY,
                BUNDLE,
            ] {
                if self.path.join(name).exists() {
                    return Err(StoreError::AlreadyExists(self.path.clone(), name.into()));
                }
            }
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;

        let td = &options.trust_domain;
        let alg = options.key_algorithm.rcgen();
        let now = OffsetDateTime::now_utc();

        let root_key = KeyPair::generate_for(alg)?;
        let mut root_params = ca_params(td, &format!("hush root CA ({td})"));
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.not_before = now - time::Duration::minutes(5);
        root_params.not_after = now + options.root_lifetime;
        let root = root_params.self_signed(&root_key)?;

        let intermediate_key = KeyPair::generate_for(alg)?;
        let mut int_params = ca_params(td, &format!("hush intermediate CA ({td})"));
        // The intermediate signs only leaves.
        int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int_params.not_before = now - time::Duration::minutes(5);
        int_params.not_after = (now + options.intermediate_lifetime).min(root_params.not_after);
        int_params.use_authority_key_identifier_extension = true;
        let root_issuer = Issuer::from_params(&root_params, &root_key);
        let intermediate = int_params.signed_by(&intermediate_key, &root_issuer)?;

        let files = vec![
            self.write(ROOT_KEY, root_key.serialize_pem().as_bytes(), 0o600)?,
            self.write(
                INTERMEDIATE_KEY,
                intermediate_key.serialize_pem().as_bytes(),
                0o600,
            )?,
            self.write(ROOT_CERT, root.pem().as_bytes(), 0o644)?,
            self.write(INTERMEDIATE_CERT, intermediate.pem().as_bytes(), 0o644)?,
            self.write(BUNDLE, root.pem().as_bytes(), 0o644)?,
        ];
        Ok(InitReport {
            trust_domain: td.clone(),
            root: root.der().clone(),
            intermediate: intermediate.der().clone(),
            files,
        })
    }

    /// Reads the trust bundle.
    pub fn load_bundle(&self) -> Result<TrustBundle, StoreError> {
        let path = self.bundle_path();
        let pem = self.read(&path)?;
        TrustBundle::from_pem(&pem, None).map_err(|e| StoreError::Invalid {
            path,
            reason: e.to_string(),
        })
    }

    /// Reads what `hush ca serve` needs: the bundle and the intermediate with its key. The root
    /// key is never read.
    pub fn load(&self) -> Result<CaMaterial, StoreError> {
        let bundle = self.load_bundle()?;
        let cert_path = self.path.join(INTERMEDIATE_CERT);
        let mut certs =
            hush_identity::parse_pem_certificates(&self.read(&cert_path)?).map_err(|e| {
                StoreError::Invalid {
                    path: cert_path.clone(),
                    reason: e.to_string(),
                }
            })?;
        if certs.len() != 1 {
            return Err(StoreError::Invalid {
                path: cert_path,
                reason: format!("expected one certificate, found {}", certs.len()),
            });
        }
        let intermediate = certs.remove(0);
        let key_path = self.path.join(INTERMEDIATE_KEY);
        check_key_mode(&key_path)?;
        let key_pem = self.read(&key_path)?;
        let key_text = std::str::from_utf8(&key_pem).map_err(|_| StoreError::Invalid {
            path: key_path.clone(),
            reason: "not a PEM text file".into(),
        })?;
        let intermediate_key = KeyPair::from_pem(key_text).map_err(|e| StoreError::Invalid {
            path: key_path,
            reason: format!("not a usable private key: {e}"),
        })?;
        Ok(CaMaterial {
            bundle,
            intermediate,
            intermediate_key,
        })
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, StoreError> {
        fs::read(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                StoreError::Missing {
                    path: path.to_path_buf(),
                    dir: self.path.clone(),
                }
            } else {
                StoreError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })
    }

    /// Writes `name` through a temporary file and a rename, so a crash never leaves half a key,
    /// and with `mode` from the start, so a key is never readable by others even for a moment.
    fn write(&self, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, StoreError> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err)?;
        file.write_all(contents).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        fs::rename(&tmp, &path).map_err(io_err)?;
        Ok(path)
    }
}

fn ca_params(td: &TrustDomain, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hush");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // A signing certificate names its trust domain as a SPIFFE ID with no path, so that a bundle
    // says which trust domain it belongs to.
    if let Ok(uri) = td.id().as_str().try_into() {
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A private key readable by other users is refused: someone may already have copied it.
///
/// One exception, for Kubernetes: in a volume the kubelet manages (a Secret mount, recognisable
/// by its `..data` link), the pod's `fsGroup` is what lets a non-root CA read the key, and the
/// kubelet makes the file group-readable for it (0440). That group belongs to the pod, whose
/// containers alone see the volume, so group read is accepted there; group write and anything
/// for others are still refused.
fn check_key_mode(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    let kubelet_volume = in_kubelet_volume(path);
    let forbidden = if kubelet_volume { 0o037 } else { 0o077 };
    if mode & forbidden != 0 {
        let reason = if kubelet_volume {
            format!(
                "private key in a Kubernetes volume is writable by its group or readable by \
                 others (mode {mode:03o}); mount the Secret with defaultMode 0400 (the pod's \
                 fsGroup adds group read)"
            )
        } else {
            format!(
                "private key is readable by group or others (mode {mode:03o}); run `chmod 600 {}`",
                path.display()
            )
        };
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason,
        });
    }
    Ok(())
}

/// The kubelet writes Secret and ConfigMap volumes as links into a `..data` directory it swaps
/// atomically; a key reached through such a link is in one.
fn in_kubelet_volume(path: &Path) -> bool {
    let is_link = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    is_link(path)
        && path
            .parent()
            .is_some_and(|dir| is_link(&dir.join("..data")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_keys_private_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path().join("ca"));
        let report = ca.init(&InitOptions::new(td())).unwrap();
        assert_eq!(mode(&ca.path().join(ROOT_KEY)), 0o600);
        assert_eq!(mode(&ca.path().join(INTERMEDIATE_KEY)), 0o600);
        assert_eq!(mode(ca.path()), 0o700);
        hush_identity::check_signing_cert(&report.root).unwrap();
        hush_identity::check_signing_cert(&report.intermediate).unwrap();

        let err = ca.init(&InitOptions::new(td())).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        // The refused init changed nothing.
        assert_eq!(ca.load_bundle().unwrap().roots()[0], report.root);

        let mut force = InitOptions::new(td());
        force.force = true;
        let again = ca.init(&force).unwrap();
        assert_ne!(again.root, report.root);
    }

    #[test]
    fn load_reads_back_what_init_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        let report = ca.init(&InitOptions::new(td())).unwrap();
        let material = ca.load().unwrap();
        assert_eq!(material.intermediate, report.intermediate);
        assert_eq!(material.bundle.trust_domain(), &td());
        // The root key is not needed to serve.
        fs::remove_file(ca.path().join(ROOT_KEY)).unwrap();
        ca.load().unwrap();
    }

    #[test]
    fn load_refuses_a_key_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        let key = ca.path().join(INTERMEDIATE_KEY);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ca.load().err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    /// The layout the kubelet gives a Secret volume: files are links into `..data`, itself a
    /// link to a timestamped directory.
    fn kubelet_secret_volume(files: &Path, key_mode: u32) -> PathBuf {
        let mount = files.parent().unwrap().join("mount");
        let stamped = mount.join("..2026_11_28_14_00_00.000000001");
        fs::create_dir_all(&stamped).unwrap();
        for name in [BUNDLE, INTERMEDIATE_CERT, INTERMEDIATE_KEY] {
            fs::copy(files.join(name), stamped.join(name)).unwrap();
            std::os::unix::fs::symlink(format!("..data/{name}"), mount.join(name)).unwrap();
        }
        std::os::unix::fs::symlink("..2026_11_28_14_00_00.000000001", mount.join("..data"))
            .unwrap();
        fs::set_permissions(
            stamped.join(INTERMEDIATE_KEY),
            fs::Permissions::from_mode(key_mode),
        )
        .unwrap();
        mount
    }

    #[test]
    fn a_secret_volume_may_give_the_pods_group_read_but_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("ca");
        CaDir::new(&files).init(&InitOptions::new(td())).unwrap();
        let mount = kubelet_secret_volume(&files, 0o440);
        CaDir::new(&mount).load().unwrap();

        for mode in [0o444, 0o460] {
            fs::set_permissions(
                mount.join("..data").join(INTERMEDIATE_KEY),
                fs::Permissions::from_mode(mode),
            )
            .unwrap();
            let err = CaDir::new(&mount).load().err().unwrap();
            assert!(err.to_string().contains("defaultMode 0400"), "{err}");
        }
        // The same group read outside a kubelet volume is refused.
        fs::set_permissions(
            files.join(INTERMEDIATE_KEY),
            fs::Permissions::from_mode(0o440),
        )
        .unwrap();
        let err = CaDir::new(&files).load().err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn load_of_an_empty_directory_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = CaDir::new(dir.path()).load().err().unwrap();
        assert!(err.to_string().contains("hush ca init"), "{err}");
    }
}
