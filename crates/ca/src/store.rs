//! The CA's directory: its authorities (roots and intermediates) on disk, creating and rotating
//! them, and loading what `hush ca serve` signs with.
//!
//! ```text
//! DIR/
//!   authorities.json             every root and intermediate, its state and times (the truth)
//!   root-<id>.pem  .key          a root; its key (0600) is read only by `rotate intermediate`:
//!                                keep it offline
//!   intermediate-<id>.pem  .key  an intermediate; the active one signs workload certificates
//!   jwt-<id>.pem  .key           a JWT authority: its public key (PEM `PUBLIC KEY`) and its
//!                                PKCS#8 P-256 key (0600); the active one signs JWT-SVIDs
//!   bundle.pem                   derived: every root that is not revoked (the trust bundle)
//!   intermediate.pem  .key       derived: the active intermediate, for readers of the old layout
//!                                (no .key when that intermediate's key is in a token)
//!   revocations.json             revoked SPIFFE IDs, serials and join tokens (`revoke-identity`)
//!   tokens/                      join tokens, by id, hashes only
//!   audit.log                    one JSON line per issuance, refusal or change of authorities
//!   .lock                        held by every command that changes the directory
//! ```
//!
//! Certificate and key files are never rewritten: a new authority gets new files, named by its
//! ID. A change writes the new files first, then the manifest, then the derived files, each
//! through a temporary file and a rename, so a reader that sees a manifest finds every file it
//! names. Every name is a valid Kubernetes Secret key, so the directory can be a Secret.
//!
//! A directory written before authorities existed (`root.pem`, `root.key`, `intermediate.*`,
//! `bundle.pem`, no manifest) still loads; the first command that changes it migrates it.
//!
//! A key may live in a PKCS#11 token instead of a file (`--key-uri`, `--root-key-uri`): the
//! manifest then records its `pkcs11:` URI (`key_uri`, never with the PIN) and the directory
//! holds no file for it. Such a key is made in the token by the command that makes its
//! authority, and is opened by label whenever it signs. JWT authorities' keys are always files.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hush_identity::{JwtKeys, JwtSigningKey, TrustBundle, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::authorities::{
    Activation, AuthoritiesError, AuthorityEntry, AuthorityId, DEFAULT_MAX_TTL_SECONDS,
    DEFAULT_PUBLISH_WAIT_SECONDS, JwtActivation, Kind, Manifest, State, check_stored_key_uri,
};
use crate::authority::CaMaterial;
use crate::jwt::{JwtMaterial, JwtSigner};
use crate::revocations::{RevocationError, RevocationTarget, Revocations, retention};
use crate::signing_key::{CaKey, Pkcs11Error, Pkcs11Uri};
use crate::tokens::{JoinTokenStore, TokenError};

/// The old layout's root files, replaced by `root-<id>.*` at migration.
const LEGACY_ROOT_CERT: &str = "root.pem";
const LEGACY_ROOT_KEY: &str = "root.key";
const INTERMEDIATE_CERT: &str = "intermediate.pem";
const INTERMEDIATE_KEY: &str = "intermediate.key";
const BUNDLE: &str = "bundle.pem";
const MANIFEST: &str = "authorities.json";
const REVOCATIONS: &str = "revocations.json";
const LOCK: &str = ".lock";
/// CA certificates start this far in the past, so that a sidecar whose clock runs behind
/// still sees a root activated a moment ago as valid.
const CA_BACKDATE: time::Duration = time::Duration::hours(1);

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
    /// Replace an existing CA of the old layout (a directory with authorities is never
    /// replaced: rotate its root instead).
    pub force: bool,
    /// How long a change to the directory may take to reach every replica and sidecar
    /// ([`Manifest::publish_wait_seconds`]).
    pub publish_wait: Duration,
    /// The longest workload certificate lifetime `hush ca serve` may grant
    /// ([`Manifest::max_ttl_seconds`]).
    pub max_ttl: Duration,
    /// Make the intermediate's key in the PKCS#11 token this `pkcs11:` URI names, labelled by
    /// its `object=`, instead of a key file. The URI is stored in the manifest as given, so it
    /// must name its PIN by file (`pin-source=file:`), never carry it (`pin-value=`).
    pub key_uri: Option<String>,
    /// Make the root's key in a PKCS#11 token, as [`Self::key_uri`] does the intermediate's.
    pub root_key_uri: Option<String>,
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
            publish_wait: Duration::from_secs(DEFAULT_PUBLISH_WAIT_SECONDS),
            max_ttl: Duration::from_secs(DEFAULT_MAX_TTL_SECONDS),
            key_uri: None,
            root_key_uri: None,
        }
    }
}

/// Options of `hush ca rotate intermediate` and `hush ca rotate root`.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Key algorithm of the new authorities.
    pub key_algorithm: CaKeyAlgorithm,
    /// Lifetime of a new root.
    pub root_lifetime: Duration,
    /// Lifetime of a new intermediate (never past its root's expiry).
    pub intermediate_lifetime: Duration,
    /// The active root's key, for `rotate intermediate`, when it is not in the directory.
    pub root_key: Option<PathBuf>,
    /// Make the new intermediate's key in the PKCS#11 token this `pkcs11:` URI names (see
    /// [`InitOptions::key_uri`]; the label must be new).
    pub key_uri: Option<String>,
    /// For `rotate intermediate`, the active root's key in a PKCS#11 token (instead of
    /// [`Self::root_key`]; by default, the active root's own `key_uri` if it has one). For
    /// `rotate root`, make the new root's key in that token.
    pub root_key_uri: Option<String>,
}

impl Default for RotateOptions {
    /// The same as `hush ca init`'s: ECDSA P-256, root 10 years, intermediate 1 year.
    fn default() -> Self {
        Self {
            key_algorithm: CaKeyAlgorithm::default(),
            root_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            intermediate_lifetime: Duration::from_secs(365 * 24 * 3600),
            root_key: None,
            key_uri: None,
            root_key_uri: None,
        }
    }
}

/// What a command changed in the directory.
#[derive(Debug, Clone)]
pub struct Change {
    /// The manifest as written (its generation is the new one).
    pub manifest: Manifest,
    /// The authorities the command acted on.
    pub authorities: Vec<AuthorityId>,
    /// Whether a directory of the old layout was migrated first.
    pub migrated: bool,
}

/// What [`CaDir::load_authorities`] read.
pub struct LoadedAuthorities {
    /// The manifest (generation 0 for the old layout).
    pub manifest: Manifest,
    /// The trusted roots and the active intermediate with its key.
    pub material: CaMaterial,
    /// The JWT authorities' public keys and the active one's key (none in the old layout).
    pub jwt: JwtMaterial,
    /// What is revoked (nothing, generation 0, without `revocations.json`).
    pub revocations: Revocations,
    /// SHA-256 over every file read: equal fingerprints, equal authorities and revocations.
    pub fingerprint: [u8; 32],
}

/// What `hush ca revoke-identity` changed.
#[derive(Debug, Clone)]
pub struct RevocationChange {
    /// The revocations as written (its generation is the new one).
    pub revocations: Revocations,
    /// Entries dropped on the way because nothing they cover can be alive any more.
    pub pruned: usize,
    /// For a join token: whether its record was deleted too (false when it was already used,
    /// expired and cleaned up, or withdrawn).
    pub token_record_deleted: Option<bool>,
}

impl std::fmt::Debug for LoadedAuthorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAuthorities")
            .field("generation", &self.manifest.generation)
            .finish_non_exhaustive()
    }
}

/// What the directory holds for a CA to sign with, its key not opened yet.
struct ReadAuthorities {
    manifest: Manifest,
    bundle: TrustBundle,
    intermediate: CertificateDer<'static>,
    key: KeySource,
    jwt: JwtMaterial,
    revocations: Revocations,
    fingerprint: [u8; 32],
}

/// Where the active intermediate's key is.
enum KeySource {
    /// Read from its file.
    File(KeyPair),
    /// In a token, by the URI the manifest gives.
    Token { authority: AuthorityId, uri: String },
}

impl ReadAuthorities {
    /// Opens the key (a token key is found, logged in to and test-signed with).
    fn open_key(self) -> Result<LoadedAuthorities, StoreError> {
        let intermediate_key = match self.key {
            KeySource::File(key) => CaKey::from(key),
            KeySource::Token { authority, uri } => {
                CaKey::from_uri(&uri).map_err(|cause| StoreError::Pkcs11 {
                    action: format!("cannot open the key of intermediate {authority}"),
                    cause,
                })?
            }
        };
        Ok(LoadedAuthorities {
            manifest: self.manifest,
            material: CaMaterial {
                bundle: self.bundle,
                intermediate: self.intermediate,
                intermediate_key,
            },
            jwt: self.jwt,
            revocations: self.revocations,
            fingerprint: self.fingerprint,
        })
    }
}

/// A running hash of the files a load read, each framed by its name and length.
#[derive(Default)]
struct Fingerprint {
    bytes: Vec<u8>,
}

impl Fingerprint {
    fn add(&mut self, name: &str, contents: &[u8]) {
        for part in [name.as_bytes(), contents] {
            self.bytes
                .extend_from_slice(&(part.len() as u64).to_be_bytes());
            self.bytes.extend_from_slice(part);
        }
    }

    fn finish(self) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.bytes);
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }
}

/// Holds `DIR/.lock`, so that two commands never change the directory at once.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
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
    /// The authorities refuse the change, or their manifest is wrong.
    #[error(transparent)]
    Authorities(#[from] AuthoritiesError),
    /// The revocation refuses the change, or `revocations.json` is wrong.
    #[error(transparent)]
    Revocations(#[from] RevocationError),
    /// A join token's record could not be withdrawn.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// `init` on a directory whose CA has authorities.
    #[error(
        "{0} already holds a CA with authorities; `hush ca init` never replaces one, even with --force: rotate its root with `hush ca rotate root` (sidecars keep working), or delete the directory to start over"
    )]
    Managed(PathBuf),
    /// `rotate intermediate` needs the root's key, which is not where it was looked for.
    #[error(
        "`hush ca rotate intermediate` signs with the active root's key and cannot find it at {0}: pass --root-key with the file you keep offline, or --root-key-uri for a key in a PKCS#11 token"
    )]
    RootKeyMissing(PathBuf),
    /// The active root's key was given both as a file and as a token URI.
    #[error(
        "give the active root's key either as a file (--root-key) or in a PKCS#11 token (--root-key-uri), not both"
    )]
    TwoRootKeys,
    /// The root key given does not belong to the active root.
    #[error("{key} is not the key of the active root {root}")]
    RootKeyMismatch {
        /// The key: a file, or a token object.
        key: String,
        /// The active root.
        root: AuthorityId,
    },
    /// A key URI that would be written to the manifest is unfit for it.
    #[error("the new {kind}'s key URI cannot be written to authorities.json: {reason}")]
    KeyUri {
        /// Whose key.
        kind: Kind,
        /// Why (never the URI itself, which may hold a PIN).
        reason: String,
    },
    /// Two new keys of one command would have the same label.
    #[error(
        "the new root and intermediate keys would both be labelled {object:?} in PKCS#11 token {token:?}: give each key an object= label of its own"
    )]
    SameKeyLabel {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// A new key would take the label of an authority's key.
    #[error(
        "{object:?} in PKCS#11 token {token:?} is the key of {kind} {authority} ({state}): give the new key an object= label of its own (hush never reuses a label, so that a URI in the manifest names one key for good)"
    )]
    KeyLabelInUse {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
        /// The authority whose key it is.
        authority: AuthorityId,
        /// Its kind.
        kind: Kind,
        /// Its state.
        state: State,
    },
    /// A key in a PKCS#11 token could not be made or opened.
    #[error("{action}: {cause}")]
    Pkcs11 {
        /// What hush was doing, and for which authority.
        action: String,
        /// Why (it names the token and the key, never the PIN).
        cause: Pkcs11Error,
    },
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
    /// The JWT authority, active from the start.
    pub jwt: AuthorityId,
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

    /// Creates a root and an intermediate, both active, their keys in files or in PKCS#11
    /// tokens. Refuses to replace an existing CA unless `force`, and a CA with authorities
    /// always.
    pub fn init(&self, options: &InitOptions) -> Result<InitReport, StoreError> {
        // A quick refusal before anything is made; checked again under the lock below.
        if self.path.join(MANIFEST).exists() {
            return Err(StoreError::Managed(self.path.clone()));
        }
        check_new_key_uris(
            None,
            options.root_key_uri.as_deref(),
            options.key_uri.as_deref(),
        )?;
        if !options.force {
            for name in [
                LEGACY_ROOT_CERT,
                LEGACY_ROOT_KEY,
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
        let _lock = self.lock()?;
        // Two `init`s at once: the second to take the lock finds the first one's CA.
        if self.path.join(MANIFEST).exists() {
            return Err(StoreError::Managed(self.path.clone()));
        }

        let td = &options.trust_domain;
        let now = OffsetDateTime::now_utc();
        let rotate = RotateOptions {
            key_algorithm: options.key_algorithm,
            root_lifetime: options.root_lifetime,
            intermediate_lifetime: options.intermediate_lifetime,
            root_key: None,
            key_uri: options.key_uri.clone(),
            root_key_uri: options.root_key_uri.clone(),
        };
        let root_key = new_key(Kind::Root, rotate.root_key_uri.as_deref(), &rotate)?;
        let root = make_root(td, &rotate, &root_key, now)?;
        let mut root_entry =
            AuthorityEntry::prepared(Kind::Root, root.der(), None, now.unix_timestamp())?;
        place_key(&mut root_entry, rotate.root_key_uri.as_deref());
        let intermediate_key = new_key(Kind::Intermediate, rotate.key_uri.as_deref(), &rotate)?;
        let intermediate =
            make_intermediate(td, &rotate, root.der(), &root_key, &intermediate_key, now)?;
        let mut intermediate_entry = AuthorityEntry::prepared(
            Kind::Intermediate,
            intermediate.der(),
            Some(root_entry.id.clone()),
            now.unix_timestamp(),
        )?;
        place_key(&mut intermediate_entry, rotate.key_uri.as_deref());
        let (jwt_entry, jwt_key) = make_jwt(options.intermediate_lifetime, now)?;
        let mut files = self.write_authority(&root_entry, &root.pem(), Some(&root_key))?;
        files.extend(self.write_authority(
            &intermediate_entry,
            &intermediate.pem(),
            Some(&intermediate_key),
        )?);
        files.extend(self.write_jwt_authority(&jwt_entry, &jwt_key)?);
        let jwt_id = jwt_entry.id.clone();
        let mut manifest = Manifest::new(
            td.as_str(),
            root_entry,
            intermediate_entry,
            now.unix_timestamp(),
        );
        manifest.publish_wait_seconds = options.publish_wait.as_secs();
        manifest.max_ttl_seconds = options.max_ttl.as_secs();
        // A new CA has no token out yet: its first JWT authority signs at once.
        manifest.stage_jwt(jwt_entry)?;
        manifest.activate_jwt(now.unix_timestamp(), false)?;
        manifest.generation = 0;
        files.extend(self.commit(&mut manifest)?);
        // A forced init over the old layout leaves no stale root behind.
        for name in [LEGACY_ROOT_CERT, LEGACY_ROOT_KEY] {
            let _ = fs::remove_file(self.path.join(name));
        }
        Ok(InitReport {
            trust_domain: td.clone(),
            root: root.der().clone(),
            intermediate: intermediate.der().clone(),
            jwt: jwt_id,
            files,
        })
    }

    /// Takes `DIR/.lock`, waiting for another command that holds it.
    pub fn lock(&self) -> Result<DirLock, StoreError> {
        let path = self.path.join(LOCK);
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        file.lock().map_err(io_err)?;
        Ok(DirLock { _file: file })
    }

    /// The directory's authorities: its manifest, checked, or — in a directory of the old
    /// layout — what its files stand for (generation 0).
    pub fn authorities(&self) -> Result<Manifest, StoreError> {
        let path = self.path.join(MANIFEST);
        if path.exists() {
            return parse_manifest(&self.read(&path)?, &path);
        }
        let bundle = self.load_bundle()?;
        let intermediate = self.read_one_certificate(&self.path.join(INTERMEDIATE_CERT))?;
        let roots: Vec<&[u8]> = bundle.roots().iter().map(|r| r.as_ref()).collect();
        Ok(Manifest::legacy(
            bundle.trust_domain().as_str(),
            &roots,
            &intermediate,
        )?)
    }

    /// Gives a directory of the old layout a manifest: each certificate and key is copied to
    /// its `<kind>-<id>` name, `root.pem` and `root.key` are removed (the bundle and the new
    /// names hold them), and the manifest is written. Returns whether anything changed. The
    /// caller holds the lock.
    fn migrate(&self, _lock: &DirLock) -> Result<bool, StoreError> {
        if self.path.join(MANIFEST).exists() {
            return Ok(false);
        }
        let mut manifest = self.authorities()?;
        let bundle = self.load_bundle()?;
        let legacy_root_key = self.path.join(LEGACY_ROOT_KEY);
        for entry in &mut manifest.authorities {
            let (pem, key) = match entry.kind {
                Kind::Root => {
                    let der = bundle
                        .roots()
                        .iter()
                        .find(|r| AuthorityId::of_certificate(r).ok().as_ref() == Some(&entry.id))
                        .ok_or_else(|| StoreError::Invalid {
                            path: self.bundle_path(),
                            reason: format!("root {} vanished while migrating", entry.id),
                        })?;
                    let key = match fs::read_to_string(&legacy_root_key) {
                        Ok(text) => KeyPair::from_pem(&text).ok().filter(|k| {
                            AuthorityId::of_public_key(&k.subject_public_key_info()) == entry.id
                        }),
                        Err(_) => None,
                    };
                    (pem_of(der), key)
                }
                Kind::Intermediate => {
                    let der = self.read_one_certificate(&self.path.join(INTERMEDIATE_CERT))?;
                    (
                        pem_of(&der),
                        Some(self.read_key(&self.path.join(INTERMEDIATE_KEY))?),
                    )
                }
                // The old layout predates JWT authorities: its manifest names none.
                Kind::Jwt => continue,
            };
            entry.cert = format!("{}-{}.pem", entry.kind, entry.id);
            entry.key = key
                .is_some()
                .then(|| format!("{}-{}.key", entry.kind, entry.id));
            self.write_authority(entry, &pem, key.map(CaKey::from).as_ref())?;
        }
        self.commit(&mut manifest)?;
        let _ = fs::remove_file(self.path.join(LEGACY_ROOT_CERT));
        // The old root key goes only when it was copied to its new name: one that could not be
        // read, or is not the active root's, is left where the operator put it.
        let root_key_kept = manifest
            .authorities
            .iter()
            .any(|a| a.kind == Kind::Root && a.key.is_some());
        if root_key_kept {
            let _ = fs::remove_file(self.path.join(LEGACY_ROOT_KEY));
        }
        Ok(true)
    }

    /// The active root's key for `rotate intermediate`, checked to be that root's: the file or
    /// token key the options name, else the root's own `key_uri`, else its key file.
    fn active_root_key(
        &self,
        root: &AuthorityEntry,
        options: &RotateOptions,
    ) -> Result<CaKey, StoreError> {
        let token_uri = match (&options.root_key, &options.root_key_uri) {
            (Some(_), Some(_)) => return Err(StoreError::TwoRootKeys),
            (Some(_), None) => None,
            (None, Some(uri)) => Some(uri.as_str()),
            (None, None) => root.key_uri.as_deref(),
        };
        let (key, name) = match token_uri {
            Some(uri) => {
                let key = CaKey::from_uri(uri).map_err(|cause| StoreError::Pkcs11 {
                    action: format!("cannot open the key of root {}", root.id),
                    cause,
                })?;
                (key, describe_token_key(uri))
            }
            None => {
                let path = match &options.root_key {
                    Some(path) => path.clone(),
                    None => self
                        .path
                        .join(root.key.as_deref().unwrap_or(LEGACY_ROOT_KEY)),
                };
                if !path.exists() {
                    return Err(StoreError::RootKeyMissing(path));
                }
                let key = CaKey::from(self.read_key(&path)?);
                (key, path.display().to_string())
            }
        };
        if AuthorityId::of_public_key(&key.public_key_der()) != root.id {
            return Err(StoreError::RootKeyMismatch {
                key: name,
                root: root.id.clone(),
            });
        }
        Ok(key)
    }

    /// Root keys lying in the directory. A CA serving from it never needs one, and whoever
    /// takes over the CA's host takes them too: the CA warns.
    pub fn root_keys(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut keys: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n == LEGACY_ROOT_KEY || (n.starts_with("root-") && n.ends_with(".key")))
            .map(|n| self.path.join(n))
            .collect();
        keys.sort();
        keys
    }

    /// Every file a serving CA reads, by name, for a Kubernetes Secret (`hush ca secret`): the
    /// manifest, every certificate it names, the intermediates' key files, the old layout's
    /// names of the active pair, and the revocations. Never a root key: a CA does not need one.
    /// A key in a token is no file, and neither is the PIN file its URI names: those reach the
    /// CA another way.
    pub fn serving_files(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut names: Vec<String> = Vec::new();
        let mut active_key_file = true;
        if self.path.join(MANIFEST).exists() {
            let manifest = self.authorities()?;
            names.push(MANIFEST.into());
            for a in &manifest.authorities {
                names.push(a.cert.clone());
                // A JWT authority's key too: a replica activating one needs it, as it needs
                // a prepared intermediate's.
                if matches!(a.kind, Kind::Intermediate | Kind::Jwt)
                    && let Some(key) = &a.key
                {
                    names.push(key.clone());
                }
            }
            active_key_file = manifest.active().1.key.is_some();
        }
        names.extend([BUNDLE, INTERMEDIATE_CERT].map(String::from));
        if active_key_file {
            names.push(INTERMEDIATE_KEY.into());
        }
        if self.path.join(REVOCATIONS).exists() {
            names.push(REVOCATIONS.into());
        }
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let contents = self.read(&self.path.join(&name))?;
                Ok((name, contents))
            })
            .collect()
    }

    /// `hush ca rotate intermediate`: signs a new intermediate with the active root's key and
    /// stages it. The only operation that reads a root key: a file (`root_key`, else the one
    /// the manifest names) or a key in a token (`root_key_uri`, else the root's `key_uri`).
    pub fn rotate_intermediate(&self, options: &RotateOptions) -> Result<Change, StoreError> {
        let lock = self.lock()?;
        let migrated = self.migrate(&lock)?;
        let mut manifest = self.authorities()?;
        // Refusals first, before a key is made in a token, where it would stay.
        manifest.refuse_if_prepared()?;
        check_new_key_uris(Some(&manifest), None, options.key_uri.as_deref())?;
        let td = self.trust_domain_of(&manifest)?;
        let (root_entry, _) = manifest.active();
        let root_entry = root_entry.clone();
        let root_key = self.active_root_key(&root_entry, options)?;
        let root_der = self.read_one_certificate(&self.path.join(&root_entry.cert))?;
        let now = OffsetDateTime::now_utc();
        let key = new_key(Kind::Intermediate, options.key_uri.as_deref(), options)?;
        let intermediate = make_intermediate(&td, options, &root_der, &root_key, &key, now)?;
        let mut entry = AuthorityEntry::prepared(
            Kind::Intermediate,
            intermediate.der(),
            Some(root_entry.id.clone()),
            now.unix_timestamp(),
        )?;
        place_key(&mut entry, options.key_uri.as_deref());
        let id = entry.id.clone();
        manifest.stage_intermediate(entry.clone())?;
        self.write_authority(&entry, &intermediate.pem(), Some(&key))?;
        self.commit(&mut manifest)?;
        Ok(Change {
            manifest,
            authorities: vec![id],
            migrated,
        })
    }

    /// `hush ca rotate root`: makes a new root and an intermediate under it and stages both;
    /// the root is in the trust bundle from now on. Their keys are made in tokens when
    /// `root_key_uri` and `key_uri` say so.
    pub fn rotate_root(&self, options: &RotateOptions) -> Result<Change, StoreError> {
        let lock = self.lock()?;
        let migrated = self.migrate(&lock)?;
        let mut manifest = self.authorities()?;
        manifest.refuse_if_prepared()?;
        check_new_key_uris(
            Some(&manifest),
            options.root_key_uri.as_deref(),
            options.key_uri.as_deref(),
        )?;
        let td = self.trust_domain_of(&manifest)?;
        let now = OffsetDateTime::now_utc();
        let root_key = new_key(Kind::Root, options.root_key_uri.as_deref(), options)?;
        let root = make_root(&td, options, &root_key, now)?;
        let mut root_entry =
            AuthorityEntry::prepared(Kind::Root, root.der(), None, now.unix_timestamp())?;
        place_key(&mut root_entry, options.root_key_uri.as_deref());
        let key = new_key(Kind::Intermediate, options.key_uri.as_deref(), options)?;
        let intermediate = make_intermediate(&td, options, root.der(), &root_key, &key, now)?;
        let mut intermediate_entry = AuthorityEntry::prepared(
            Kind::Intermediate,
            intermediate.der(),
            Some(root_entry.id.clone()),
            now.unix_timestamp(),
        )?;
        place_key(&mut intermediate_entry, options.key_uri.as_deref());
        let ids = vec![root_entry.id.clone(), intermediate_entry.id.clone()];
        manifest.stage_root(root_entry.clone(), intermediate_entry.clone())?;
        self.write_authority(&root_entry, &root.pem(), Some(&root_key))?;
        self.write_authority(&intermediate_entry, &intermediate.pem(), Some(&key))?;
        self.commit(&mut manifest)?;
        Ok(Change {
            manifest,
            authorities: ids,
            migrated,
        })
    }

    /// `hush ca activate`: the prepared intermediate (and its new root) sign from now on.
    pub fn activate(&self, force: bool) -> Result<(Change, Activation), StoreError> {
        let lock = self.lock()?;
        let migrated = self.migrate(&lock)?;
        let mut manifest = self.authorities()?;
        let activation = manifest.activate(unix_now(), force)?;
        self.commit(&mut manifest)?;
        let mut ids = vec![activation.intermediate.clone()];
        ids.extend(activation.root.clone());
        Ok((
            Change {
                manifest,
                authorities: ids,
                migrated,
            },
            activation,
        ))
    }

    /// `hush ca rotate jwt`: makes a new JWT authority (a P-256 key file, living `lifetime`)
    /// and stages it; its public key is in the bundle's JWT keys from now on.
    pub fn rotate_jwt(&self, lifetime: Duration) -> Result<Change, StoreError> {
        let lock = self.lock()?;
        let migrated = self.migrate(&lock)?;
        let mut manifest = self.authorities()?;
        if let Some(waiting) = manifest.prepared_jwt() {
            return Err(AuthoritiesError::AlreadyPrepared {
                id: waiting.id.clone(),
                kind: waiting.kind,
            }
            .into());
        }
        let (entry, key) = make_jwt(lifetime, OffsetDateTime::now_utc())?;
        let id = entry.id.clone();
        manifest.stage_jwt(entry.clone())?;
        self.write_jwt_authority(&entry, &key)?;
        self.commit(&mut manifest)?;
        Ok(Change {
            manifest,
            authorities: vec![id],
            migrated,
        })
    }

    /// `hush ca activate` of a JWT authority: the prepared one signs JWT-SVIDs from now on.
    pub fn activate_jwt(&self, force: bool) -> Result<(Change, JwtActivation), StoreError> {
        let lock = self.lock()?;
        let migrated = self.migrate(&lock)?;
        let mut manifest = self.authorities()?;
        let activation = manifest.activate_jwt(unix_now(), force)?;
        self.commit(&mut manifest)?;
        Ok((
            Change {
                manifest,
                authorities: vec![activation.jwt.clone()],
                migrated,
            },
            activation,
        ))
    }

    /// `hush ca taint`: sidecars renew away from certificates under the authority at once.
    pub fn taint(&self, authority: &str) -> Result<Change, StoreError> {
        let lock = self.lock()?;
        let migrated = self.migrate(&lock)?;
        let mut manifest = self.authorities()?;
        let tainted = manifest.taint(authority, unix_now())?;
        self.commit(&mut manifest)?;
        Ok(Change {
            manifest,
            authorities: tainted,
            migrated,
        })
    }

    /// `hush ca revoke`: the authority leaves the trust bundle and its key file is deleted.
    pub fn revoke(&self, authority: &str, force: bool) -> Result<Change, StoreError> {
        let lock = self.lock()?;
        let migrated = self.migrate(&lock)?;
        let mut manifest = self.authorities()?;
        let revoked = manifest.revoke(authority, unix_now(), force)?;
        let mut dropped_keys = Vec::new();
        for entry in &mut manifest.authorities {
            if revoked.contains(&entry.id)
                && let Some(key) = entry.key.take()
            {
                dropped_keys.push(key);
            }
        }
        // The manifest stops naming the keys before they go, so no reader looks for one.
        self.commit(&mut manifest)?;
        for key in dropped_keys {
            let path = self.path.join(&key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { path, source }),
            }
        }
        Ok(Change {
            manifest,
            authorities: revoked,
            migrated,
        })
    }

    /// What is revoked: `revocations.json`, checked, or nothing (generation 0) without it.
    pub fn revocations(&self) -> Result<Revocations, StoreError> {
        let path = self.path.join(REVOCATIONS);
        if !path.exists() {
            return Ok(Revocations::default());
        }
        parse_revocations(&self.read(&path)?, &path)
    }

    /// `hush ca revoke-identity`: revokes `target` now. A join token's record is deleted too,
    /// so it cannot attest again. Entries that no longer cover a live certificate are dropped
    /// on the way.
    pub fn revoke_identity(
        &self,
        target: &RevocationTarget,
        reason: Option<String>,
    ) -> Result<RevocationChange, StoreError> {
        let _lock = self.lock()?;
        let manifest = self.authorities()?;
        if let RevocationTarget::SpiffeId(id) = target
            && id.trust_domain().as_str() != manifest.trust_domain
        {
            return Err(RevocationError::ForeignIdentity {
                id: id.clone(),
                trust_domain: manifest.trust_domain.clone(),
            }
            .into());
        }
        let now = unix_now();
        let mut revocations = self.revocations()?;
        let pruned = revocations.prune(now, retention(&manifest));
        revocations.revoke(target, now, reason)?;
        self.commit_revocations(&mut revocations)?;
        // After the revocation is on disk: a crash in between leaves the token revoked anyway.
        let token_record_deleted = match target {
            RevocationTarget::JoinToken(id) => {
                match JoinTokenStore::new(self.tokens_dir()).revoke(id) {
                    Ok(()) => Some(true),
                    Err(TokenError::Unknown { .. }) => Some(false),
                    Err(e) => return Err(e.into()),
                }
            }
            _ => None,
        };
        Ok(RevocationChange {
            revocations,
            pruned,
            token_record_deleted,
        })
    }

    /// `hush ca revoke-identity --lift`: lifts the revocation of `target` now.
    pub fn lift_revocation(
        &self,
        target: &RevocationTarget,
    ) -> Result<RevocationChange, StoreError> {
        let _lock = self.lock()?;
        let manifest = self.authorities()?;
        let now = unix_now();
        let mut revocations = self.revocations()?;
        let pruned = revocations.prune(now, retention(&manifest));
        revocations.lift(target, now)?;
        self.commit_revocations(&mut revocations)?;
        Ok(RevocationChange {
            revocations,
            pruned,
            token_record_deleted: None,
        })
    }

    /// Writes the revocations with the next generation. The caller holds the lock.
    fn commit_revocations(&self, revocations: &mut Revocations) -> Result<(), StoreError> {
        revocations.generation += 1;
        revocations.validate()?;
        let mut text =
            serde_json::to_vec_pretty(&revocations).map_err(|e| StoreError::Invalid {
                path: self.path.join(REVOCATIONS),
                reason: e.to_string(),
            })?;
        text.push(b'\n');
        self.write(REVOCATIONS, &text, 0o644)?;
        Ok(())
    }

    /// Writes the manifest with the next generation, then the files derived from it: the trust
    /// bundle, and the active intermediate under its old-layout names.
    fn commit(&self, manifest: &mut Manifest) -> Result<Vec<PathBuf>, StoreError> {
        manifest.generation += 1;
        manifest.validate()?;
        let mut text = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Invalid {
            path: self.path.join(MANIFEST),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        let mut files = vec![self.write(MANIFEST, &text, 0o644)?];

        let mut bundle = String::new();
        for root in manifest.trusted_roots() {
            let der = self.read_one_certificate(&self.path.join(&root.cert))?;
            bundle.push_str(&pem_of(&der));
        }
        files.push(self.write(BUNDLE, bundle.as_bytes(), 0o644)?);
        let (_, active) = manifest.active();
        let cert = self.read(&self.path.join(&active.cert))?;
        files.push(self.write(INTERMEDIATE_CERT, &cert, 0o644)?);
        match &active.key {
            Some(key) => {
                let key = self.read(&self.path.join(key))?;
                files.push(self.write(INTERMEDIATE_KEY, &key, 0o600)?);
            }
            // A key in a token has no file to copy. The previous intermediate's key must go:
            // next to the new certificate it would be a pair that does not belong together.
            // Without it, a hush that reads only the old layout says what is missing.
            None => {
                let path = self.path.join(INTERMEDIATE_KEY);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
            }
        }
        Ok(files)
    }

    /// Writes a new authority's certificate and key file under the names its entry gives (a
    /// key in a token has no file).
    fn write_authority(
        &self,
        entry: &AuthorityEntry,
        cert_pem: &str,
        key: Option<&CaKey>,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::with_capacity(2);
        if let (Some(name), Some(key)) = (&entry.key, key.and_then(CaKey::as_key_pair)) {
            files.push(self.write(name, key.serialize_pem().as_bytes(), 0o600)?);
        }
        files.push(self.write(&entry.cert, cert_pem.as_bytes(), 0o644)?);
        Ok(files)
    }

    /// Writes a new JWT authority's key (0600) and public key under the names its entry gives.
    fn write_jwt_authority(
        &self,
        entry: &AuthorityEntry,
        key: &KeyPair,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::with_capacity(2);
        if let Some(name) = &entry.key {
            files.push(self.write(name, key.serialize_pem().as_bytes(), 0o600)?);
        }
        let public = pem_config(&pem::Pem::new(
            PUBLIC_KEY_LABEL,
            key.subject_public_key_info(),
        ));
        files.push(self.write(&entry.cert, public.as_bytes(), 0o644)?);
        Ok(files)
    }

    /// Reads the JWT authorities' public keys (every one not revoked) and the active one's key,
    /// adding each file to `fingerprint`. Each file must hold the key its entry names.
    fn read_jwt(
        &self,
        manifest: &Manifest,
        fingerprint: &mut Fingerprint,
    ) -> Result<JwtMaterial, StoreError> {
        let mut public_keys: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in manifest.trusted_jwt() {
            let path = self.path.join(&entry.cert);
            let text = self.read(&path)?;
            fingerprint.add(&entry.cert, &text);
            let spki = parse_public_key(&text, &path)?;
            let found = AuthorityId::of_public_key(&spki);
            if found != entry.id {
                return Err(StoreError::Invalid {
                    path,
                    reason: format!(
                        "holds the public key of authority {found}, but the manifest names it for {}",
                        entry.id
                    ),
                });
            }
            public_keys.push((entry.id.to_string(), spki));
        }
        let keys = JwtKeys::from_public_keys(
            public_keys
                .iter()
                .map(|(id, spki)| (id.as_str(), spki.as_slice())),
        )
        .map_err(|e| StoreError::Invalid {
            path: self.path.join(MANIFEST),
            reason: format!("JWT authorities: {e}"),
        })?;
        let signer = match manifest.active_jwt() {
            None => None,
            Some(entry) => {
                let name = entry.key.as_deref().ok_or_else(|| StoreError::Invalid {
                    path: self.path.join(MANIFEST),
                    reason: format!("the active JWT authority {} has no key file", entry.id),
                })?;
                let path = self.path.join(name);
                check_key_mode(&path)?;
                let text = self.read(&path)?;
                fingerprint.add(name, &text);
                let key =
                    JwtSigningKey::from_pkcs8_pem(&text).map_err(|e| StoreError::Invalid {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if key.key_id() != entry.id.as_str() {
                    return Err(StoreError::Invalid {
                        path,
                        reason: format!(
                            "holds the key of authority {}, but the manifest names it for {}",
                            key.key_id(),
                            entry.id
                        ),
                    });
                }
                Some(JwtSigner {
                    id: entry.id.clone(),
                    key,
                    not_after: entry.not_after,
                })
            }
        };
        Ok(JwtMaterial { keys, signer })
    }

    fn trust_domain_of(&self, manifest: &Manifest) -> Result<TrustDomain, StoreError> {
        TrustDomain::new(&manifest.trust_domain).map_err(|e| StoreError::Invalid {
            path: self.path.join(MANIFEST),
            reason: format!("trust domain: {e}"),
        })
    }

    fn read_one_certificate(&self, path: &Path) -> Result<CertificateDer<'static>, StoreError> {
        parse_one_certificate(&self.read(path)?, path)
    }

    /// Reads a private key, refusing one that others can read.
    fn read_key(&self, path: &Path) -> Result<KeyPair, StoreError> {
        check_key_mode(path)?;
        parse_key(&self.read(path)?, path)
    }

    /// Reads the trust bundle.
    pub fn load_bundle(&self) -> Result<TrustBundle, StoreError> {
        // With a manifest, the bundle is what it says: `bundle.pem` is derived from it and may
        // lag behind after a command was interrupted between the two.
        let manifest_path = self.path.join(MANIFEST);
        if manifest_path.exists() {
            let manifest = parse_manifest(&self.read(&manifest_path)?, &manifest_path)?;
            let mut roots = Vec::new();
            for root in manifest.trusted_roots() {
                let path = self.path.join(&root.cert);
                let pem = self.read(&path)?;
                check_names(&pem, &path, &root.id)?;
                roots.push(parse_one_certificate(&pem, &path)?);
            }
            let trust_domain =
                TrustDomain::new(&manifest.trust_domain).map_err(|e| StoreError::Invalid {
                    path: manifest_path.clone(),
                    reason: format!("trust domain: {e}"),
                })?;
            return TrustBundle::new(trust_domain, roots).map_err(|e| StoreError::Invalid {
                path: manifest_path,
                reason: e.to_string(),
            });
        }
        let path = self.bundle_path();
        let pem = self.read(&path)?;
        TrustBundle::from_pem(&pem, None).map_err(|e| StoreError::Invalid {
            path,
            reason: e.to_string(),
        })
    }

    /// Reads what a CA signs with, as the directory says now: the manifest (or the old
    /// layout's files), every trusted root, the active intermediate with its key, from its file
    /// or opened in its token, and the revocations. Also a fingerprint of everything read, so
    /// that a CA polling the directory rebuilds only when something changed. The root keys are
    /// never read.
    pub fn load_authorities(&self) -> Result<LoadedAuthorities, StoreError> {
        self.read_authorities()?.open_key()
    }

    /// [`Self::load_authorities`], unless what the directory holds has `fingerprint`: then
    /// `None`, and a key in a token is not opened again (a login and a test signature per poll
    /// would be wasted on a CA that already holds it open).
    pub fn load_authorities_if_changed(
        &self,
        fingerprint: &[u8; 32],
    ) -> Result<Option<LoadedAuthorities>, StoreError> {
        let read = self.read_authorities()?;
        if read.fingerprint == *fingerprint {
            return Ok(None);
        }
        read.open_key().map(Some)
    }

    /// Reads and checks every file [`Self::load_authorities`] needs, and says where the key
    /// is, without opening a token.
    fn read_authorities(&self) -> Result<ReadAuthorities, StoreError> {
        let mut fingerprint = Fingerprint::default();
        let manifest_path = self.path.join(MANIFEST);
        let managed = manifest_path.exists();
        // The manifest is read once: what is hashed is what is parsed.
        let manifest = if managed {
            let text = self.read(&manifest_path)?;
            fingerprint.add(MANIFEST, &text);
            parse_manifest(&text, &manifest_path)?
        } else {
            self.authorities()?
        };
        let (roots, intermediate_pem, key_name) = if managed {
            let mut roots = Vec::new();
            for root in manifest.trusted_roots() {
                let path = self.path.join(&root.cert);
                let pem = self.read(&path)?;
                fingerprint.add(&root.cert, &pem);
                // A file that holds another authority's certificate (a hand edit, a copy gone
                // wrong) must not put that one in the bundle under this one's name.
                check_names(&pem, &path, &root.id)?;
                roots.push(pem);
            }
            let (_, active) = manifest.active();
            let path = self.path.join(&active.cert);
            let pem = self.read(&path)?;
            fingerprint.add(&active.cert, &pem);
            check_names(&pem, &path, &active.id)?;
            (roots, pem, active.key.clone())
        } else {
            let bundle = self.read(&self.bundle_path())?;
            fingerprint.add(BUNDLE, &bundle);
            let pem = self.read(&self.path.join(INTERMEDIATE_CERT))?;
            fingerprint.add(INTERMEDIATE_CERT, &pem);
            (vec![bundle], pem, Some(INTERMEDIATE_KEY.to_owned()))
        };
        let key = match key_name {
            Some(name) => {
                let path = self.path.join(&name);
                check_key_mode(&path)?;
                let pem = self.read(&path)?;
                fingerprint.add(&name, &pem);
                KeySource::File(parse_key(&pem, &path)?)
            }
            // The URI is in the manifest, and so in the fingerprint already.
            None => {
                let (_, active) = manifest.active();
                let uri = active.key_uri.clone().ok_or_else(|| StoreError::Invalid {
                    path: manifest_path.clone(),
                    reason: format!(
                        "the active intermediate {} has neither a key file nor a key_uri",
                        active.id
                    ),
                })?;
                KeySource::Token {
                    authority: active.id.clone(),
                    uri,
                }
            }
        };

        let bundle =
            TrustBundle::from_pem(&roots.concat(), None).map_err(|e| StoreError::Invalid {
                path: self.bundle_path(),
                reason: e.to_string(),
            })?;
        if bundle.trust_domain().as_str() != manifest.trust_domain {
            return Err(StoreError::Invalid {
                path: manifest_path,
                reason: format!(
                    "the roots are for trust domain {}, the manifest says {}",
                    bundle.trust_domain(),
                    manifest.trust_domain
                ),
            });
        }
        let intermediate =
            parse_one_certificate(&intermediate_pem, &self.path.join(INTERMEDIATE_CERT))?;
        let jwt = if managed {
            self.read_jwt(&manifest, &mut fingerprint)?
        } else {
            JwtMaterial::default()
        };
        let revocations_path = self.path.join(REVOCATIONS);
        let revocations = if revocations_path.exists() {
            let text = self.read(&revocations_path)?;
            fingerprint.add(REVOCATIONS, &text);
            parse_revocations(&text, &revocations_path)?
        } else {
            Revocations::default()
        };
        Ok(ReadAuthorities {
            manifest,
            bundle,
            intermediate,
            key,
            jwt,
            revocations,
            fingerprint: fingerprint.finish(),
        })
    }

    /// Reads what `hush ca serve` signs with: the trusted roots and the active intermediate
    /// with its key ([`Self::load_authorities`] without the rest).
    pub fn load(&self) -> Result<CaMaterial, StoreError> {
        Ok(self.load_authorities()?.material)
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

/// Checks the `pkcs11:` URIs of the keys a command is about to make, before it makes any: each
/// is fit to be stored in the manifest, and each names a label no other key of the CA has, so
/// that a URI in the manifest names one key for good. Nothing is derived: the label the
/// operator gives is the one stored and shown by the token's own tools.
fn check_new_key_uris(
    manifest: Option<&Manifest>,
    root: Option<&str>,
    intermediate: Option<&str>,
) -> Result<(), StoreError> {
    let mut labels: Vec<(String, String)> = Vec::new();
    for (kind, uri) in [(Kind::Root, root), (Kind::Intermediate, intermediate)] {
        let Some(uri) = uri else { continue };
        let parsed =
            check_stored_key_uri(uri).map_err(|reason| StoreError::KeyUri { kind, reason })?;
        let (token, object) = (parsed.token().to_owned(), parsed.object().to_owned());
        if labels.iter().any(|(t, o)| *t == token && *o == object) {
            return Err(StoreError::SameKeyLabel { token, object });
        }
        // A revoked authority's label may be reused once its object is deleted from the token;
        // while the object is there, the token refuses the label itself.
        let live = manifest
            .into_iter()
            .flat_map(|m| &m.authorities)
            .filter(|a| a.state != State::Revoked);
        for a in live {
            let used = a
                .key_uri
                .as_deref()
                .and_then(|u| u.parse::<Pkcs11Uri>().ok());
            if used.is_some_and(|u| u.token() == token && u.object() == object) {
                return Err(StoreError::KeyLabelInUse {
                    token,
                    object,
                    authority: a.id.clone(),
                    kind: a.kind,
                    state: a.state,
                });
            }
        }
        labels.push((token, object));
    }
    Ok(())
}

/// A new key for a `kind` authority: in the token `uri` names, or in memory, for a key file.
fn new_key(kind: Kind, uri: Option<&str>, options: &RotateOptions) -> Result<CaKey, StoreError> {
    match uri {
        None => Ok(CaKey::from(KeyPair::generate_for(
            options.key_algorithm.rcgen(),
        )?)),
        Some(uri) => CaKey::generate_in_token(uri, options.key_algorithm).map_err(|cause| {
            StoreError::Pkcs11 {
                action: format!("cannot make the new {kind}'s key in its PKCS#11 token"),
                cause,
            }
        }),
    }
}

/// Records where a new authority's key is: with a token URI, there and in no key file.
fn place_key(entry: &mut AuthorityEntry, uri: Option<&str>) {
    if let Some(uri) = uri {
        entry.key = None;
        entry.key_uri = Some(uri.to_owned());
    }
}

/// A token key in words, from its URI (never with the PIN).
fn describe_token_key(uri: &str) -> String {
    match uri.parse::<Pkcs11Uri>() {
        Ok(uri) => format!(
            "the key {:?} in PKCS#11 token {:?}",
            uri.object(),
            uri.token()
        ),
        Err(_) => "the key in the PKCS#11 token".into(),
    }
}

/// A new JWT authority, prepared at `now` and living `lifetime`, with its P-256 key (ES256 is
/// what every JWT-SVID validator supports, whatever the X.509 authorities use).
fn make_jwt(
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<(AuthorityEntry, KeyPair), StoreError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let not_after = (now + lifetime).unix_timestamp();
    let entry = AuthorityEntry::prepared_jwt(
        &key.subject_public_key_info(),
        now.unix_timestamp(),
        not_after,
    );
    Ok((entry, key))
}

/// A new self-signed root for `key`, valid from an hour ago for `options.root_lifetime`.
fn make_root(
    td: &TrustDomain,
    options: &RotateOptions,
    key: &CaKey,
    now: OffsetDateTime,
) -> Result<rcgen::Certificate, StoreError> {
    let mut params = ca_params(td, &format!("hush root CA ({td})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = now - CA_BACKDATE;
    params.not_after = now + options.root_lifetime;
    Ok(params.self_signed(key)?)
}

/// A new intermediate for `key`, signed by `root` (DER) with `root_key`, valid from an hour ago
/// for `options.intermediate_lifetime` but never past the root.
fn make_intermediate(
    td: &TrustDomain,
    options: &RotateOptions,
    root: &CertificateDer<'_>,
    root_key: &CaKey,
    key: &CaKey,
    now: OffsetDateTime,
) -> Result<rcgen::Certificate, StoreError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(root).map_err(|e| StoreError::Invalid {
            path: PathBuf::from("root certificate"),
            reason: e.to_string(),
        })?;
    let root_not_after = OffsetDateTime::from_unix_timestamp(
        parsed.validity().not_after.timestamp(),
    )
    .map_err(|e| StoreError::Invalid {
        path: PathBuf::from("root certificate"),
        reason: e.to_string(),
    })?;
    let mut params = ca_params(td, &format!("hush intermediate CA ({td})"));
    // The intermediate signs only leaves.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.not_before = now - CA_BACKDATE;
    params.not_after = (now + options.intermediate_lifetime).min(root_not_after);
    // Several roots may share a name during a rotation: the key identifier tells verifiers
    // which one signed.
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_der(root, root_key)?;
    Ok(params.signed_by(key, &issuer)?)
}

/// Parses and checks a manifest read from `path`.
fn parse_manifest(text: &[u8], path: &Path) -> Result<Manifest, StoreError> {
    let manifest: Manifest = serde_json::from_slice(text).map_err(|e| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    manifest.validate()?;
    TrustDomain::new(&manifest.trust_domain).map_err(|e| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: format!("trust domain: {e}"),
    })?;
    Ok(manifest)
}

/// Checks that `pem`, read from `path`, is the one certificate of authority `id`.
fn check_names(pem: &[u8], path: &Path, id: &AuthorityId) -> Result<(), StoreError> {
    let der = parse_one_certificate(pem, path)?;
    let found = AuthorityId::of_certificate(&der)?;
    if found != *id {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "holds the certificate of authority {found}, but the manifest names it for {id}"
            ),
        });
    }
    Ok(())
}

fn parse_one_certificate(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, StoreError> {
    let mut certs =
        hush_identity::parse_pem_certificates(pem).map_err(|e| StoreError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.len() != 1 {
        return Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("expected one certificate, found {}", certs.len()),
        });
    }
    Ok(certs.remove(0))
}

fn parse_revocations(text: &[u8], path: &Path) -> Result<Revocations, StoreError> {
    let revocations: Revocations =
        serde_json::from_slice(text).map_err(|e| StoreError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    revocations.validate()?;
    Ok(revocations)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<KeyPair, StoreError> {
    let text = std::str::from_utf8(pem).map_err(|_| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: "not a PEM text file".into(),
    })?;
    KeyPair::from_pem(text).map_err(|e| StoreError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not a usable private key: {e}"),
    })
}

/// PEM with LF line endings, as `hush ca bundle` prints and every other file of the directory
/// is written.
fn pem_of(der: &[u8]) -> String {
    pem_config(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn pem_config(section: &pem::Pem) -> String {
    pem::encode_config(
        section,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The label of a JWT authority's public key file.
const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

/// The SubjectPublicKeyInfo (DER) in a JWT authority's public key file.
fn parse_public_key(text: &[u8], path: &Path) -> Result<Vec<u8>, StoreError> {
    match pem::parse(text) {
        Ok(section) if section.tag() == PUBLIC_KEY_LABEL => Ok(section.into_contents()),
        Ok(section) => Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("holds a {:?}, not a \"PUBLIC KEY\"", section.tag()),
        }),
        Err(e) => Err(StoreError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not a PEM public key: {e}"),
        }),
    }
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
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

// Two attributes, not cfg(all(..)): clippy recognises test code by a plain #[cfg(test)].
#[cfg(test)]
#[cfg(feature = "pkcs11")]
mod softhsm_tests;

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
        let manifest = read_manifest(&ca);
        for entry in &manifest.authorities {
            assert_eq!(mode(&ca.path().join(entry.key.as_ref().unwrap())), 0o600);
        }
        assert_eq!(mode(&ca.path().join(INTERMEDIATE_KEY)), 0o600);
        assert_eq!(mode(ca.path()), 0o700);
        hush_identity::check_signing_cert(&report.root).unwrap();
        hush_identity::check_signing_cert(&report.intermediate).unwrap();

        let err = ca.init(&InitOptions::new(td())).unwrap_err();
        assert!(err.to_string().contains("rotate root"), "{err}");
        // The refused init changed nothing.
        assert_eq!(ca.load_bundle().unwrap().roots()[0], report.root);
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
        let manifest = read_manifest(&ca);
        fs::remove_file(ca.path().join(manifest.active().0.key.as_ref().unwrap())).unwrap();
        ca.load().unwrap();
    }

    #[test]
    fn load_refuses_a_key_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        let manifest = read_manifest(&ca);
        let key = ca.path().join(manifest.active().1.key.as_ref().unwrap());
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
        let manifest = read_manifest(&CaDir::new(&files));
        fs::set_permissions(
            files.join(manifest.active().1.key.as_ref().unwrap()),
            fs::Permissions::from_mode(0o440),
        )
        .unwrap();
        let err = CaDir::new(&files).load().err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    fn read_manifest(ca: &CaDir) -> Manifest {
        ca.authorities().unwrap()
    }

    fn bundle_ids(ca: &CaDir) -> Vec<AuthorityId> {
        ca.load_bundle()
            .unwrap()
            .roots()
            .iter()
            .map(|r| AuthorityId::of_certificate(r).unwrap())
            .collect()
    }

    #[test]
    fn init_writes_a_manifest_and_refuses_a_managed_directory_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        let manifest = read_manifest(&ca);
        assert_eq!(manifest.generation, 1);
        let (root, intermediate) = manifest.active();
        assert_eq!(mode(&ca.path().join(root.key.as_ref().unwrap())), 0o600);
        assert_eq!(bundle_ids(&ca), vec![root.id.clone()]);
        // The old layout's names still hold the active intermediate, for older readers.
        assert_eq!(
            AuthorityId::of_certificate(&ca.load().unwrap().intermediate).unwrap(),
            intermediate.id
        );
        let mut force = InitOptions::new(td());
        force.force = true;
        let err = ca.init(&force).unwrap_err();
        assert!(err.to_string().contains("hush ca rotate root"), "{err}");
        assert_eq!(read_manifest(&ca), manifest, "the refusal changed nothing");
    }

    #[test]
    fn a_directory_of_the_old_layout_is_migrated_by_its_first_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        let manifest = read_manifest(&ca);
        let (root, intermediate) = manifest.active();
        // Rebuild what an older `hush ca init` wrote.
        let pem = |name: &str| fs::read(ca.path().join(name)).unwrap();
        let old = dir.path().join("old");
        fs::create_dir(&old).unwrap();
        let copy = |from: &str, to: &str, mode: u32| {
            fs::write(old.join(to), pem(from)).unwrap();
            fs::set_permissions(old.join(to), fs::Permissions::from_mode(mode)).unwrap();
        };
        copy(&root.cert, LEGACY_ROOT_CERT, 0o644);
        copy(root.key.as_ref().unwrap(), LEGACY_ROOT_KEY, 0o600);
        copy(&root.cert, BUNDLE, 0o644);
        copy(&intermediate.cert, INTERMEDIATE_CERT, 0o644);
        copy(intermediate.key.as_ref().unwrap(), INTERMEDIATE_KEY, 0o600);
        let old = CaDir::new(&old);
        let legacy = read_manifest(&old);
        assert_eq!(legacy.generation, 0);
        assert_eq!(legacy.active().1.id, intermediate.id);

        let change = old.rotate_intermediate(&RotateOptions::default()).unwrap();
        assert!(change.migrated);
        let (new_root, _) = change.manifest.active();
        assert_eq!(new_root.id, root.id);
        // The root key moved to its ID name: `rotate intermediate` found it there.
        assert!(!old.path().join(LEGACY_ROOT_KEY).exists());
        assert!(!old.path().join(LEGACY_ROOT_CERT).exists());
        assert_eq!(
            fs::read(old.path().join(new_root.key.as_ref().unwrap())).unwrap(),
            pem(root.key.as_ref().unwrap())
        );
        old.load().unwrap();
    }

    #[test]
    fn rotating_the_intermediate_needs_the_root_key_and_only_that_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        let manifest = read_manifest(&ca);
        let root_key = ca.path().join(manifest.active().0.key.as_ref().unwrap());
        let offline = dir.path().join("offline.key");
        fs::rename(&root_key, &offline).unwrap();

        let err = ca
            .rotate_intermediate(&RotateOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("--root-key"), "{err}");
        let wrong = RotateOptions {
            root_key: Some(ca.path().join(INTERMEDIATE_KEY)),
            ..RotateOptions::default()
        };
        let err = ca.rotate_intermediate(&wrong).unwrap_err();
        assert!(
            err.to_string().contains("not the key of the active root"),
            "{err}"
        );
        assert_eq!(read_manifest(&ca), manifest, "refusals changed nothing");

        let options = RotateOptions {
            root_key: Some(offline),
            ..RotateOptions::default()
        };
        let change = ca.rotate_intermediate(&options).unwrap();
        let (_, activation) = ca.activate(false).unwrap();
        assert_eq!(activation.intermediate, change.authorities[0]);
        // The new intermediate chains to the root, and `load` serves it.
        let material = ca.load().unwrap();
        crate::Authority::new(material, crate::IssuancePolicy::default()).unwrap();
    }

    #[test]
    fn a_root_rotation_publishes_first_and_a_revoked_root_leaves_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        let mut options = InitOptions::new(td());
        options.publish_wait = Duration::ZERO;
        options.max_ttl = Duration::ZERO;
        ca.init(&options).unwrap();
        let first = read_manifest(&ca);
        let (old_root, old_intermediate) = first.active();

        let change = ca.rotate_root(&RotateOptions::default()).unwrap();
        let [new_root, new_intermediate] = change.authorities.as_slice() else {
            panic!("{:?}", change.authorities)
        };
        assert_eq!(bundle_ids(&ca), vec![old_root.id.clone(), new_root.clone()]);
        // Still signing with the old pair until activation.
        assert_eq!(
            AuthorityId::of_certificate(&ca.load().unwrap().intermediate).unwrap(),
            old_intermediate.id
        );
        ca.activate(false).unwrap();
        assert_eq!(bundle_ids(&ca), vec![new_root.clone(), old_root.id.clone()]);
        let material = ca.load().unwrap();
        assert_eq!(
            AuthorityId::of_certificate(&material.intermediate).unwrap(),
            *new_intermediate
        );
        crate::Authority::new(material, crate::IssuancePolicy::default()).unwrap();

        let old_key = ca.path().join(old_root.key.as_ref().unwrap());
        assert!(old_key.exists());
        let change = ca.revoke(&old_root.id.as_str()[..8], false).unwrap();
        assert_eq!(
            change.authorities,
            vec![old_root.id.clone(), old_intermediate.id.clone()]
        );
        assert!(!old_key.exists(), "a revoked authority keeps no key");
        assert!(
            !ca.path()
                .join(old_intermediate.key.as_ref().unwrap())
                .exists()
        );
        assert_eq!(bundle_ids(&ca), vec![new_root.clone()]);
        assert_eq!(read_manifest(&ca).generation, first.generation + 3);
    }

    #[test]
    fn a_certificate_file_must_hold_the_authority_its_entry_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        ca.rotate_root(&RotateOptions::default()).unwrap();
        let manifest = read_manifest(&ca);
        let roots: Vec<&AuthorityEntry> = manifest.trusted_roots();
        // The new root's file now holds the old root: the bundle would trust the wrong one.
        fs::copy(
            ca.path().join(&roots[0].cert),
            ca.path().join(&roots[1].cert),
        )
        .unwrap();
        let err = ca.load_authorities().err().unwrap();
        assert!(
            err.to_string()
                .contains("holds the certificate of authority"),
            "{err}"
        );
    }

    #[test]
    fn the_serving_files_hold_no_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        ca.rotate_root(&RotateOptions::default()).unwrap();
        let files = ca.serving_files().unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&MANIFEST) && names.contains(&BUNDLE),
            "{names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("root") && n.ends_with(".key")),
            "{names:?}"
        );
        let manifest = read_manifest(&ca);
        for a in &manifest.authorities {
            assert!(names.contains(&a.cert.as_str()), "{} missing", a.cert);
        }
        // A directory made of exactly those files serves.
        let copy = dir.path().join("secret");
        fs::create_dir(&copy).unwrap();
        for (name, contents) in &files {
            fs::write(copy.join(name), contents).unwrap();
            fs::set_permissions(copy.join(name), fs::Permissions::from_mode(0o400)).unwrap();
        }
        CaDir::new(&copy).load_authorities().unwrap();
    }

    #[test]
    fn init_makes_an_active_jwt_authority_whose_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path().join("ca"));
        let report = ca.init(&InitOptions::new(td())).unwrap();
        let manifest = read_manifest(&ca);
        let jwt = manifest.active_jwt().unwrap();
        assert_eq!(jwt.id, report.jwt);
        assert_eq!(
            jwt.key.as_deref(),
            Some(format!("jwt-{}.key", jwt.id).as_str())
        );
        assert_eq!(mode(&ca.path().join(jwt.key.as_ref().unwrap())), 0o600);
        assert_eq!(mode(&ca.path().join(&jwt.cert)), 0o644);
        let loaded = ca.load_authorities().unwrap();
        assert_eq!(
            loaded.jwt.keys.key_ids().collect::<Vec<_>>(),
            [jwt.id.as_str()]
        );
        assert_eq!(loaded.jwt.signer.as_ref().unwrap().id, jwt.id);
        // A replica needs the JWT key as it needs the intermediate's.
        let served: Vec<String> = ca
            .serving_files()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(served.contains(jwt.key.as_ref().unwrap()), "{served:?}");
    }

    #[test]
    fn a_rotated_jwt_authority_is_published_at_once_and_its_revocation_takes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path().join("ca"));
        let mut options = InitOptions::new(td());
        options.publish_wait = Duration::from_secs(3600);
        ca.init(&options).unwrap();
        let first = read_manifest(&ca).active_jwt().unwrap().id.clone();
        let change = ca.rotate_jwt(Duration::from_secs(86_400)).unwrap();
        let second = change.authorities[0].clone();
        let loaded = ca.load_authorities().unwrap();
        assert_eq!(loaded.jwt.keys.len(), 2, "published before it signs");
        assert_eq!(loaded.jwt.signer.as_ref().unwrap().id, first);
        // A second rotation waits for the first; an X.509 rotation does not.
        assert!(ca.rotate_jwt(Duration::from_secs(86_400)).is_err());
        let err = ca.activate_jwt(false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        let (_, activation) = ca.activate_jwt(true).unwrap();
        assert!(activation.forced);
        assert_eq!(activation.retired, Some(first.clone()));
        assert_eq!(
            ca.load_authorities().unwrap().jwt.signer.unwrap().id,
            second
        );
        ca.revoke(first.as_str(), true).unwrap();
        assert!(!ca.path().join(format!("jwt-{first}.key")).exists());
        let keys = ca.load_authorities().unwrap().jwt.keys;
        assert_eq!(keys.key_ids().collect::<Vec<_>>(), [second.as_str()]);
    }

    #[test]
    fn a_ca_made_before_jwt_authorities_keeps_working_and_gets_one_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path().join("ca"));
        let mut options = InitOptions::new(td());
        options.publish_wait = Duration::from_secs(3600);
        ca.init(&options).unwrap();
        // What an older hush wrote: no JWT authority in the manifest, no JWT files.
        let mut manifest = read_manifest(&ca);
        let jwt = manifest.active_jwt().unwrap().clone();
        manifest.authorities.retain(|a| a.kind != Kind::Jwt);
        fs::remove_file(ca.path().join(&jwt.cert)).unwrap();
        fs::remove_file(ca.path().join(jwt.key.as_ref().unwrap())).unwrap();
        let text = serde_json::to_vec_pretty(&manifest).unwrap();
        fs::write(ca.path().join(MANIFEST), text).unwrap();

        let loaded = ca.load_authorities().unwrap();
        assert!(loaded.jwt.keys.is_empty() && loaded.jwt.signer.is_none());
        ca.rotate_jwt(Duration::from_secs(86_400)).unwrap();
        // The first JWT authority signs at once, publish wait or not.
        let (_, activation) = ca.activate_jwt(false).unwrap();
        assert!(!activation.forced && activation.retired.is_none());
        assert!(ca.load_authorities().unwrap().jwt.signer.is_some());
    }

    #[test]
    fn a_jwt_key_file_must_hold_the_key_its_entry_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path().join("ca"));
        ca.init(&InitOptions::new(td())).unwrap();
        ca.rotate_jwt(Duration::from_secs(86_400)).unwrap();
        let manifest = read_manifest(&ca);
        let active = manifest.active_jwt().unwrap();
        let prepared = manifest.prepared_jwt().unwrap();
        let (active_pub, prepared_pub) =
            (ca.path().join(&active.cert), ca.path().join(&prepared.cert));
        let saved = fs::read(&active_pub).unwrap();
        fs::copy(&prepared_pub, &active_pub).unwrap();
        let err = ca.load_authorities().unwrap_err();
        assert!(
            err.to_string()
                .contains("holds the public key of authority"),
            "{err}"
        );
        fs::write(&active_pub, saved).unwrap();
        let key = ca.path().join(active.key.as_ref().unwrap());
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        fs::write(&key, other.serialize_pem()).unwrap();
        let err = ca.load_authorities().unwrap_err();
        assert!(
            err.to_string().contains("holds the key of authority"),
            "{err}"
        );
    }

    #[test]
    fn load_of_an_empty_directory_says_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = CaDir::new(dir.path()).load().err().unwrap();
        assert!(err.to_string().contains("hush ca init"), "{err}");
    }

    #[test]
    fn revocations_are_written_with_a_generation_and_carried_by_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        ca.init(&InitOptions::new(td())).unwrap();
        assert_eq!(ca.revocations().unwrap(), Revocations::default());
        let before = ca.load_authorities().unwrap();
        assert_eq!(before.revocations, Revocations::default());

        // A join token: revoked, and its record deleted so it attests nothing more.
        let frontend: hush_identity::SpiffeId =
            "spiffe://example.org/ns/shop/sa/frontend".parse().unwrap();
        let tokens = JoinTokenStore::new(ca.tokens_dir());
        let minted = tokens
            .mint(&frontend, Duration::from_secs(3600), false)
            .unwrap();
        let token = RevocationTarget::join_token(&minted.id).unwrap();
        let change = ca.revoke_identity(&token, Some("leaked".into())).unwrap();
        assert_eq!(change.revocations.generation, 1);
        assert_eq!(change.token_record_deleted, Some(true));
        assert!(matches!(
            tokens.check(&minted.token),
            Err(TokenError::Unknown { .. })
        ));
        // Twice is refused, and changes nothing.
        let again = ca.revoke_identity(&token, None).unwrap_err();
        assert!(again.to_string().contains("already revoked"), "{again}");
        assert_eq!(ca.revocations().unwrap().generation, 1);

        // An identity of another trust domain was never issued for.
        let foreign = RevocationTarget::SpiffeId("spiffe://other.org/a".parse().unwrap());
        let error = ca.revoke_identity(&foreign, None).unwrap_err();
        assert!(
            error.to_string().contains("not in this CA's trust domain"),
            "{error}"
        );

        let id = RevocationTarget::SpiffeId(frontend.clone());
        ca.revoke_identity(&id, None).unwrap();
        let lifted = ca.lift_revocation(&id).unwrap();
        assert_eq!(lifted.revocations.generation, 3);
        assert!(lifted.revocations.spiffe_ids[0].lifted_at.is_some());

        // A running CA sees the change, and `hush ca secret` carries it.
        let after = ca.load_authorities().unwrap();
        assert_eq!(after.revocations, ca.revocations().unwrap());
        assert_ne!(after.fingerprint, before.fingerprint);
        let files = ca.serving_files().unwrap();
        assert!(files.iter().any(|(name, _)| name == REVOCATIONS));

        // A damaged file is refused, with its name.
        fs::write(dir.path().join(REVOCATIONS), b"{\"version\":1}").unwrap();
        let error = ca.load_authorities().unwrap_err().to_string();
        assert!(error.contains("revocations.json"), "{error}");
    }
}
