//! The CA's signing key: a key file in memory, or a key in a PKCS#11 token (an HSM, SoftHSM2).
//!
//! [`CaKey`] is what an `rcgen::Issuer<'static, CaKey>` signs with. A token key is named by a
//! `pkcs11:` URI ([`Pkcs11Uri`]) and never leaves the token: rcgen hands over the bytes to sign,
//! they are hashed here and signed there.
//!
//! PKCS#11 support is the cargo feature `pkcs11` (on by default). Without it the URI is still
//! parsed, so that a bad one is reported as such, and opening it says what is missing.

// Pure and tested in every build, though only a token key uses it.
#[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
mod der;
#[cfg(feature = "pkcs11")]
mod pkcs11;
mod uri;

use std::fmt;
use std::path::PathBuf;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};

use crate::store::CaKeyAlgorithm;

#[cfg(feature = "pkcs11")]
pub use self::pkcs11::Pkcs11Key;
pub use self::uri::Pkcs11Uri;

/// The key a CA signs certificates with.
///
/// It implements rcgen's [`SigningKey`] and [`PublicKeyData`], so it serves as an
/// `rcgen::Issuer<'static, CaKey>`, and
/// [`subject_public_key_info`](PublicKeyData::subject_public_key_info) gives the same SPKI as
/// the key's certificate, to check that the two belong together.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hush_ca::{CaKey, CaKeyAlgorithm};
///
/// let uri = "pkcs11:token=hush;object=intermediate?pin-source=file:/run/secrets/hsm-pin";
/// // Once, when the CA is created:
/// let key = CaKey::generate_in_token(uri, CaKeyAlgorithm::EcdsaP256)?;
/// // The certificate for the key is made with it (rcgen), and later compared with it:
/// let spki: Vec<u8> = key.public_key_der();
/// // Every time the CA starts:
/// let key = CaKey::from_uri(uri)?;
/// # let _ = (key, spki);
/// # Ok(())
/// # }
/// ```
#[non_exhaustive] // An OS keystore or a cloud KMS may come next.
pub enum CaKey {
    /// A key held in memory, read from a file (`intermediate.key`).
    File(KeyPair),
    /// A key in a PKCS#11 token.
    #[cfg(feature = "pkcs11")]
    Pkcs11(Pkcs11Key),
}

// The CA shares its issuer between tasks: a key that could not be shared would be found out only
// where it is used, by someone else.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<CaKey>();
};

// === impl CaKey ===

impl CaKey {
    /// Opens the key a `pkcs11:` URI names (see [`Pkcs11Uri`] for the form).
    pub fn from_uri(uri: &str) -> Result<Self, Pkcs11Error> {
        open_pkcs11(&uri.parse()?)
    }

    /// Creates a key in the token a `pkcs11:` URI names, labelled by its `object=`, and opens
    /// it. Refuses to replace an object with that label.
    pub fn generate_in_token(uri: &str, algorithm: CaKeyAlgorithm) -> Result<Self, Pkcs11Error> {
        generate_pkcs11(&uri.parse()?, algorithm)
    }

    /// The key's SubjectPublicKeyInfo (DER): equal to the SPKI of the key's certificate when
    /// the two belong together.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }

    /// Whether the key is in a token rather than in memory.
    pub fn is_in_token(&self) -> bool {
        match self {
            Self::File(_) => false,
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(_) => true,
        }
    }

    /// The key in memory, to be written to a key file; `None` for a key in a token, which
    /// has no file.
    pub fn as_key_pair(&self) -> Option<&KeyPair> {
        match self {
            Self::File(key) => Some(key),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(_) => None,
        }
    }
}

#[cfg(feature = "pkcs11")]
fn open_pkcs11(uri: &Pkcs11Uri) -> Result<CaKey, Pkcs11Error> {
    Ok(CaKey::Pkcs11(Pkcs11Key::open(uri)?))
}

#[cfg(feature = "pkcs11")]
fn generate_pkcs11(uri: &Pkcs11Uri, algorithm: CaKeyAlgorithm) -> Result<CaKey, Pkcs11Error> {
    Ok(CaKey::Pkcs11(Pkcs11Key::generate(uri, algorithm)?))
}

#[cfg(not(feature = "pkcs11"))]
fn open_pkcs11(_: &Pkcs11Uri) -> Result<CaKey, Pkcs11Error> {
    Err(Pkcs11Error::NotBuiltIn)
}

#[cfg(not(feature = "pkcs11"))]
fn generate_pkcs11(_: &Pkcs11Uri, _: CaKeyAlgorithm) -> Result<CaKey, Pkcs11Error> {
    Err(Pkcs11Error::NotBuiltIn)
}

impl From<KeyPair> for CaKey {
    fn from(key: KeyPair) -> Self {
        Self::File(key)
    }
}

#[cfg(feature = "pkcs11")]
impl From<Pkcs11Key> for CaKey {
    fn from(key: Pkcs11Key) -> Self {
        Self::Pkcs11(key)
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::File(key) => key.der_bytes(),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(key) => key.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::File(key) => PublicKeyData::algorithm(key),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(key) => PublicKeyData::algorithm(key),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::File(key) => key.sign(msg),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(key) => key.sign(msg),
        }
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // KeyPair's Debug elides the secret.
            Self::File(key) => f.debug_tuple("File").field(key).finish(),
            #[cfg(feature = "pkcs11")]
            Self::Pkcs11(key) => f.debug_tuple("Pkcs11").field(key).finish(),
        }
    }
}

/// A PKCS#11 key could not be named, opened, created or used. No message carries the PIN.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The URI is malformed, or uses an attribute hush does not support.
    #[error("invalid PKCS#11 URI: {0}")]
    InvalidUri(String),
    /// The URI lacks `token=` or `object=`.
    #[error(
        "the PKCS#11 URI has no `{0}=`; name the key as pkcs11:token=<token label>;object=<key label>"
    )]
    MissingAttribute(&'static str),
    /// This build of hush has no PKCS#11 support.
    #[error("this hush was built without PKCS#11 support (cargo feature `pkcs11`)")]
    NotBuiltIn,
    /// The URI names no module and SoftHSM2's is not in the usual places.
    #[error(
        "no PKCS#11 module given and none found at {}; add ?module-path=<the module's .so> to the URI",
        paths(.tried)
    )]
    NoModule {
        /// Where the module was looked for.
        tried: Vec<PathBuf>,
    },
    /// The module could not be loaded or initialised.
    #[cfg(feature = "pkcs11")]
    #[error("cannot load the PKCS#11 module {path}: {source}")]
    ModuleLoad {
        /// The module's file.
        path: PathBuf,
        /// Why.
        source: cryptoki::error::Error,
    },
    /// No initialised token has the label.
    #[error("no PKCS#11 token labelled {label:?}; {}", tokens(.present))]
    TokenNotFound {
        /// The label asked for.
        label: String,
        /// The labels of the tokens present.
        present: Vec<String>,
    },
    /// Several tokens have the label.
    #[error("several PKCS#11 tokens are labelled {label:?}; relabel one of them")]
    AmbiguousToken {
        /// The label.
        label: String,
    },
    /// The PIN file could not be read.
    #[error("cannot read the PIN of the PKCS#11 token from {path}: {reason}")]
    PinFile {
        /// The file.
        path: PathBuf,
        /// Why (never the file's content).
        reason: String,
    },
    /// The token requires a PIN and the URI gives none.
    #[error("PKCS#11 token {token:?} needs a PIN: add ?pin-source=file:<path> to the URI")]
    PinRequired {
        /// The token's label.
        token: String,
    },
    /// The token refused the login.
    #[cfg(feature = "pkcs11")]
    #[error("cannot log in to PKCS#11 token {token:?}: {reason}")]
    LoginFailed {
        /// The token's label.
        token: String,
        /// What the token said, in plain words.
        reason: &'static str,
        /// The token's answer.
        source: cryptoki::error::Error,
    },
    /// No private key has the label.
    #[error(
        "key not found: no private key labelled {object:?} in PKCS#11 token {token:?} (is the \
         label right, and was the key created in this token?)"
    )]
    KeyNotFound {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// The private key has no public key next to it (same label or same `CKA_ID`), which hush
    /// needs to write the public key into certificates.
    #[error(
        "PKCS#11 token {token:?} holds the private key {object:?} but no public key with that \
         label or CKA_ID; import the public key into the token"
    )]
    PublicKeyNotFound {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// Several private keys have the label.
    #[error(
        "PKCS#11 token {token:?} holds {count} private keys labelled {object:?}; relabel all but one"
    )]
    AmbiguousKey {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
        /// How many.
        count: usize,
    },
    /// `generate` found an object with the label already.
    #[error(
        "PKCS#11 token {token:?} already holds an object labelled {object:?}; choose another \
         object= label, or delete that object first"
    )]
    AlreadyExists {
        /// The token's label.
        token: String,
        /// The label.
        object: String,
    },
    /// The key is not an EC key.
    #[error(
        "the key {object:?} in PKCS#11 token {token:?} is not an EC key; hush signs with ECDSA \
         P-256 or P-384"
    )]
    NotEcKey {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// The key is on a curve other than P-256 and P-384.
    #[error(
        "the key {object:?} in PKCS#11 token {token:?} is on an unsupported curve (CKA_EC_PARAMS \
         {ec_params}); hush signs with ECDSA P-256 or P-384"
    )]
    UnsupportedCurve {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
        /// `CKA_EC_PARAMS`, in hex.
        ec_params: String,
    },
    /// The public key's `CKA_EC_POINT` is not an uncompressed point on the key's curve.
    #[error("the public key {object:?} in PKCS#11 token {token:?} is not an uncompressed EC point")]
    BadPublicKey {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// A signature by the private key does not verify with the public key of the same label.
    #[error(
        "the private and public keys labelled {object:?} in PKCS#11 token {token:?} are not one \
         key pair; relabel or delete the stray one"
    )]
    KeyMismatch {
        /// The token's label.
        token: String,
        /// The key's label.
        object: String,
    },
    /// A PKCS#11 call failed.
    #[cfg(feature = "pkcs11")]
    #[error("PKCS#11 error while {operation}: {source}")]
    Token {
        /// What hush was doing.
        operation: &'static str,
        /// The token's answer.
        source: cryptoki::error::Error,
    },
    /// The token answered something PKCS#11 does not allow.
    #[error("the PKCS#11 token gave an unexpected answer: {0}")]
    Unexpected(String),
}

fn paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(" or ")
}

fn tokens(present: &[String]) -> String {
    if present.is_empty() {
        "the module has no initialised token (create one with `softhsm2-util --init-token` or \
         the HSM's own tool)"
            .into()
    } else {
        let quoted: Vec<String> = present.iter().map(|l| format!("{l:?}")).collect();
        format!("tokens present: {}", quoted.join(", "))
    }
}

// Two attributes, not cfg(all(..)): clippy recognises test code by a plain #[cfg(test)].
#[cfg(test)]
#[cfg(feature = "pkcs11")]
pub(crate) mod softhsm_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_signs_through_ca_key() {
        let key = CaKey::from(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap());
        assert!(!key.is_in_token());
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        parsed.verify_signature(None).unwrap();
        assert_eq!(parsed.public_key().raw, key.public_key_der());
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_bad_uri_is_reported_before_anything_is_loaded() {
        let err = CaKey::from_uri("pkcs11:object=o").unwrap_err();
        assert!(
            matches!(err, Pkcs11Error::MissingAttribute("token")),
            "{err}"
        );
        let err = CaKey::generate_in_token("file:/etc/key", CaKeyAlgorithm::EcdsaP256).unwrap_err();
        assert!(matches!(err, Pkcs11Error::InvalidUri(_)), "{err}");
    }

    #[cfg(not(feature = "pkcs11"))]
    #[test]
    fn without_the_feature_a_good_uri_says_what_is_missing() {
        let err = CaKey::from_uri("pkcs11:token=t;object=o").unwrap_err();
        assert!(err.to_string().contains("feature `pkcs11`"), "{err}");
    }

    #[test]
    fn token_errors_list_the_tokens_present() {
        let err = Pkcs11Error::TokenNotFound {
            label: "hush".into(),
            present: vec!["a".into(), "b c".into()],
        };
        assert_eq!(
            err.to_string(),
            r#"no PKCS#11 token labelled "hush"; tokens present: "a", "b c""#
        );
        let none = Pkcs11Error::TokenNotFound {
            label: "hush".into(),
            present: vec![],
        };
        assert!(none.to_string().contains("no initialised token"), "{none}");
    }
}
