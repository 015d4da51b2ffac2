//! A CA key that lives in a PKCS#11 token and never leaves it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use aws_lc_rs::{digest, signature};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::der;
use super::{Pkcs11Error, Pkcs11Uri};
use crate::store::CaKeyAlgorithm;

/// Sessions kept open between signatures. More are opened when more threads sign at once, and
/// closed when they come back to a full pool: a busy CA does not pay a session per signature,
/// and an idle one does not hold many of a token's (sometimes scarce) sessions.
const MAX_IDLE_SESSIONS: usize = 4;

/// An ECDSA P-256 or P-384 private key in a PKCS#11 token; signing happens in the token.
///
/// Opening logs in once with the user PIN. Sessions are pooled, so that several threads can
/// sign at once (a PKCS#11 session serves one thread at a time). If the token forgets the login
/// (a restarted HSM, or another program logging the token out), the next signature logs in again
/// with the PIN read at open, once.
///
/// A token keeps one login per application: a second key opened on the same token in the same
/// process shares the first one's login, whatever its own PIN.
pub struct Pkcs11Key {
    token: String,
    object: String,
    algorithm: CaKeyAlgorithm,
    /// The uncompressed point `04 ‖ x ‖ y`, what rcgen's `der_bytes` wants for EC keys.
    point: Vec<u8>,
    /// `CKA_ID` of the private key, to find it again by label and ID.
    id: Vec<u8>,
    module: Pkcs11,
    slot: Slot,
    /// The private key's handle. A token may give it a new one after a new login (SoftHSM2 does),
    /// so it is looked up again then.
    key: Mutex<ObjectHandle>,
    pin: Option<AuthPin>,
    /// Never used to sign: it holds the login, which a token drops when the application's last
    /// session on it closes (say, when the pool happens to be empty).
    login: Mutex<Session>,
    idle: Mutex<Vec<Session>>,
}

// === impl Pkcs11Key ===

impl Pkcs11Key {
    /// Opens the private key labelled `uri.object()` in the token labelled `uri.token()`, and its
    /// public key (same label, or same `CKA_ID`). One test signature, verified with the public
    /// key, proves the two belong together before the CA signs anything with them.
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, Pkcs11Error> {
        let conn = Connection::open(uri, false)?;
        let session = &conn.session;
        let label = || Attribute::Label(uri.object().as_bytes().to_vec());
        let key = find_private_key(session, uri.token(), uri.object(), &[])?;
        let attributes = session
            .get_attributes(key, &[AttributeType::KeyType, AttributeType::Id])
            .map_err(failed("reading the private key's attributes"))?;
        let (mut key_type, mut id) = (None, Vec::new());
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Id(i) => id = i,
                _ => {}
            }
        }
        if key_type != Some(KeyType::EC) {
            return Err(Pkcs11Error::NotEcKey {
                token: uri.token().into(),
                object: uri.object().into(),
            });
        }

        // The public half by label; among several, the one with the private key's CKA_ID; by
        // CKA_ID alone where the label was not copied to it.
        let public_class = || Attribute::Class(ObjectClass::PUBLIC_KEY);
        let mut public = session
            .find_objects(&[public_class(), label()])
            .map_err(failed("looking for the public key"))?;
        if public.len() > 1 && !id.is_empty() {
            public = session
                .find_objects(&[public_class(), label(), Attribute::Id(id.clone())])
                .map_err(failed("looking for the public key"))?;
        }
        if public.is_empty() && !id.is_empty() {
            public = session
                .find_objects(&[public_class(), Attribute::Id(id.clone())])
                .map_err(failed("looking for the public key"))?;
        }
        let public = match public.len() {
            1 => public.remove(0),
            _ => {
                return Err(Pkcs11Error::PublicKeyNotFound {
                    token: uri.token().into(),
                    object: uri.object().into(),
                });
            }
        };
        Self::assemble(uri, conn, key, id, public)
    }

    /// Creates an EC key pair for `algorithm` in the token, labelled `uri.object()`, and opens
    /// it. The private key is a token object that is sensitive and not extractable: it can sign,
    /// and can never be read out, not even wrapped. Refuses if any object in the token already
    /// has that label, so that a key is never shadowed by a twin.
    pub fn generate(uri: &Pkcs11Uri, algorithm: CaKeyAlgorithm) -> Result<Self, Pkcs11Error> {
        let conn = Connection::open(uri, true)?;
        let session = &conn.session;
        let label = uri.object().as_bytes().to_vec();
        let existing = session
            .find_objects(&[Attribute::Label(label.clone())])
            .map_err(failed("looking for objects with the same label"))?;
        if !existing.is_empty() {
            return Err(Pkcs11Error::AlreadyExists {
                token: uri.token().into(),
                object: uri.object().into(),
            });
        }
        // A shared CKA_ID ties the two halves together for other tools (p11tool, OpenSSL),
        // which pair keys by ID rather than by label.
        let id = session
            .generate_random_vec(16)
            .map_err(failed("drawing a random CKA_ID"))?;
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(ec_params(algorithm).to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Label(label),
            Attribute::Id(id.clone()),
        ];
        let (public, private) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(failed("generating the key pair"))?;
        Self::assemble(uri, conn, private, id, public)
    }

    fn assemble(
        uri: &Pkcs11Uri,
        conn: Connection,
        key: ObjectHandle,
        id: Vec<u8>,
        public: ObjectHandle,
    ) -> Result<Self, Pkcs11Error> {
        let attributes = conn
            .session
            .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(failed("reading the public key"))?;
        let (mut params, mut point) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                _ => {}
            }
        }
        let params = params.unwrap_or_default();
        let algorithm = algorithm_for(&params).ok_or_else(|| Pkcs11Error::UnsupportedCurve {
            token: uri.token().into(),
            object: uri.object().into(),
            ec_params: hex(&params),
        })?;
        let point = point
            .as_deref()
            .and_then(|p| der::ec_point_from_attribute(p, field_len(algorithm)))
            .ok_or_else(|| Pkcs11Error::BadPublicKey {
                token: uri.token().into(),
                object: uri.object().into(),
            })?
            .to_vec();
        let key = Self {
            token: uri.token().into(),
            object: uri.object().into(),
            algorithm,
            point,
            id,
            module: conn.module,
            slot: conn.slot,
            key: Mutex::new(key),
            pin: conn.pin,
            login: Mutex::new(conn.session),
            idle: Mutex::new(Vec::new()),
        };
        key.check_pair()?;
        Ok(key)
    }

    /// Signs a fixed message and verifies it with the public key.
    fn check_pair(&self) -> Result<(), Pkcs11Error> {
        const PROBE: &[u8] = b"hush: does this private key match its public key?";
        let signature = self.sign_message(PROBE)?;
        self.verify(PROBE, &signature)
    }

    fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), Pkcs11Error> {
        signature::UnparsedPublicKey::new(verification(self.algorithm), &self.point)
            .verify(msg, signature)
            .map_err(|_| Pkcs11Error::KeyMismatch {
                token: self.token.clone(),
                object: self.object.clone(),
            })
    }

    /// The token's label.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The key's label.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The key's curve and hash.
    pub fn key_algorithm(&self) -> CaKeyAlgorithm {
        self.algorithm
    }

    /// An `ECDSA-Sig-Value` (DER) over `msg`, hashed here and signed in the token.
    pub(crate) fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        // CKM_ECDSA signs a digest: every token has it, unlike the hash-and-sign mechanisms.
        let digest = digest::digest(digest_algorithm(self.algorithm), msg);
        let (raw, found_again) = self.sign_digest(digest.as_ref())?;
        if raw.len() != 2 * field_len(self.algorithm) {
            return Err(Pkcs11Error::Unexpected(format!(
                "a {}-byte ECDSA signature from a {} key",
                raw.len(),
                curve_name(self.algorithm)
            )));
        }
        let signature = der::ecdsa_signature_to_der(&raw)
            .ok_or_else(|| Pkcs11Error::Unexpected("an empty ECDSA signature".into()))?;
        if found_again {
            // The label may have moved to another key since the open: the key found must be
            // the one whose public key goes into certificates.
            self.verify(msg, &signature)?;
        }
        Ok(signature)
    }

    /// The token's signature over `digest`, and whether the key had to be found again.
    fn sign_digest(&self, digest: &[u8]) -> Result<(Vec<u8>, bool), Pkcs11Error> {
        let session = self.session()?;
        let key = *lock(&self.key);
        match session.sign(&Mechanism::Ecdsa, key, digest) {
            Ok(signature) => {
                self.put_back(session);
                Ok((signature, false))
            }
            Err(e) if lost_login(&e) => {
                drop(session);
                tracing::warn!(
                    token = %self.token, object = %self.object, error = %e,
                    "the token forgot the login; logging in again"
                );
                Ok((self.recover(digest)?, true))
            }
            // A failed C_Sign ends the operation, but the session is dropped all the same: a
            // fresh one costs little next to a session in a state nobody checked.
            Err(e) => Err(failed("signing")(e)),
        }
    }

    /// Logs in again, with a new anchor session, finds the key again and signs `digest` with
    /// it. The pooled sessions are dropped, since what made the token forget the login may
    /// have closed them too.
    fn recover(&self, digest: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let anchor = self
            .module
            .open_ro_session(self.slot)
            .map_err(failed("opening a session"))?;
        login(&anchor, self.pin.as_ref(), &self.token)?;
        lock(&self.idle).clear();
        *lock(&self.login) = anchor;
        let session = self.session()?;
        let key = find_private_key(&session, &self.token, &self.object, &self.id)?;
        *lock(&self.key) = key;
        let raw = session
            .sign(&Mechanism::Ecdsa, key, digest)
            .map_err(failed("signing"))?;
        self.put_back(session);
        Ok(raw)
    }

    /// Logs the application out of the token, as a restarted HSM would forget it.
    #[cfg(test)]
    pub(super) fn forget_login(&self) -> Result<(), cryptoki::error::Error> {
        lock(&self.login).logout()
    }

    fn session(&self) -> Result<Session, Pkcs11Error> {
        if let Some(session) = lock(&self.idle).pop() {
            return Ok(session);
        }
        self.module
            .open_ro_session(self.slot)
            .map_err(failed("opening a session"))
    }

    fn put_back(&self, session: Session) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(session);
        }
    }
}

impl rcgen::PublicKeyData for Pkcs11Key {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm.rcgen()
    }
}

impl rcgen::SigningKey for Pkcs11Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.sign_message(msg).map_err(|e| {
            // rcgen's error has no room for the cause: it is logged here or lost.
            tracing::error!(token = %self.token, object = %self.object, error = %e, "PKCS#11 signing failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token", &self.token)
            .field("object", &self.object)
            .field("algorithm", &self.algorithm)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// A logged-in session on the token a URI names.
struct Connection {
    module: Pkcs11,
    slot: Slot,
    session: Session,
    pin: Option<AuthPin>,
}

impl Connection {
    fn open(uri: &Pkcs11Uri, read_write: bool) -> Result<Self, Pkcs11Error> {
        let module = load_module(&uri.resolve_module()?)?;
        let slot = find_token(&module, uri.token())?;
        let info = module
            .get_token_info(slot)
            .map_err(failed("reading the token's information"))?;
        let pin = uri
            .read_pin()?
            .map(|pin| AuthPin::new(Box::from(pin.as_str())));
        let session = if read_write {
            module.open_rw_session(slot)
        } else {
            module.open_ro_session(slot)
        }
        .map_err(failed("opening a session"))?;
        if info.login_required() {
            // Without a PIN, only a token with its own PIN pad can log in.
            if pin.is_none() && !info.protected_authentication_path() {
                return Err(Pkcs11Error::PinRequired {
                    token: uri.token().into(),
                });
            }
            login(&session, pin.as_ref(), uri.token())?;
        }
        Ok(Self {
            module,
            slot,
            session,
            pin,
        })
    }
}

/// Modules loaded so far, by canonical path. A module is initialised once per process
/// (`C_Initialize` a second time is an error) and shared by every key in it; it is never
/// finalised, since another key may still use it.
static MODULES: LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> = LazyLock::new(Default::default);

fn load_module(path: &Path) -> Result<Pkcs11, Pkcs11Error> {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut modules = lock(&MODULES);
    if let Some(module) = modules.get(&key) {
        return Ok(module.clone());
    }
    let load_error = |source| Pkcs11Error::ModuleLoad {
        path: path.to_path_buf(),
        source,
    };
    let module = Pkcs11::new(&key).map_err(load_error)?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in the process (another library) may have initialised it already.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(load_error(e)),
    }
    modules.insert(key, module.clone());
    Ok(module)
}

fn find_token(module: &Pkcs11, label: &str) -> Result<Slot, Pkcs11Error> {
    let slots = module
        .get_slots_with_token()
        .map_err(failed("listing the slots"))?;
    let (mut found, mut present) = (Vec::new(), Vec::new());
    for slot in slots {
        let info = module
            .get_token_info(slot)
            .map_err(failed("reading a token's information"))?;
        // SoftHSM2 always shows one blank token, waiting to be initialised.
        if !info.token_initialized() {
            continue;
        }
        if info.label() == label {
            found.push(slot);
        }
        present.push(info.label().to_owned());
    }
    match found.len() {
        0 => Err(Pkcs11Error::TokenNotFound {
            label: label.into(),
            present,
        }),
        1 => Ok(found.remove(0)),
        _ => Err(Pkcs11Error::AmbiguousToken {
            label: label.into(),
        }),
    }
}

fn login(session: &Session, pin: Option<&AuthPin>, token: &str) -> Result<(), Pkcs11Error> {
    match session.login(UserType::User, pin) {
        // The login is the application's, not the session's: another key on this token may
        // have logged in already.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(source) => {
            let reason = match &source {
                CkError::Pkcs11(RvError::PinIncorrect, _) => "the PIN is incorrect",
                CkError::Pkcs11(RvError::PinLocked, _) => {
                    "the PIN is locked after too many wrong attempts; unlock it with the SO PIN"
                }
                CkError::Pkcs11(RvError::PinExpired, _) => "the PIN has expired",
                CkError::Pkcs11(RvError::UserPinNotInitialized, _) => {
                    "the token has no user PIN yet; set one with the SO PIN"
                }
                _ => "the token refused the login",
            };
            Err(Pkcs11Error::LoginFailed {
                token: token.into(),
                reason,
                source,
            })
        }
    }
}

/// Errors after which the token may sign again once logged in anew: it forgot the login or the
/// session, or (SoftHSM2 does, after a logout) the handle of a private object.
fn lost_login(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::UserNotLoggedIn
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid,
            _
        )
    )
}

/// The one private key labelled `object` (and with `CKA_ID` `id`, unless empty).
fn find_private_key(
    session: &Session,
    token: &str,
    object: &str,
    id: &[u8],
) -> Result<ObjectHandle, Pkcs11Error> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(object.as_bytes().to_vec()),
    ];
    if !id.is_empty() {
        template.push(Attribute::Id(id.to_vec()));
    }
    let mut found = session
        .find_objects(&template)
        .map_err(failed("looking for the private key"))?;
    match found.len() {
        0 => Err(Pkcs11Error::KeyNotFound {
            token: token.into(),
            object: object.into(),
        }),
        1 => Ok(found.remove(0)),
        count => Err(Pkcs11Error::AmbiguousKey {
            token: token.into(),
            object: object.into(),
            count,
        }),
    }
}

fn failed(operation: &'static str) -> impl Fn(CkError) -> Pkcs11Error {
    move |source| Pkcs11Error::Token { operation, source }
}

/// A poisoned lock is taken anyway: a pool of sessions or a map of modules is whole at every
/// step, whatever a panicking holder was doing.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// What each algorithm means to a token. The named-curve OIDs as DER, the form CKA_EC_PARAMS takes.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

fn ec_params(algorithm: CaKeyAlgorithm) -> &'static [u8] {
    match algorithm {
        CaKeyAlgorithm::EcdsaP256 => P256_PARAMS,
        CaKeyAlgorithm::EcdsaP384 => P384_PARAMS,
    }
}

fn algorithm_for(params: &[u8]) -> Option<CaKeyAlgorithm> {
    [CaKeyAlgorithm::EcdsaP256, CaKeyAlgorithm::EcdsaP384]
        .into_iter()
        .find(|&alg| ec_params(alg) == params)
}

fn field_len(algorithm: CaKeyAlgorithm) -> usize {
    match algorithm {
        CaKeyAlgorithm::EcdsaP256 => 32,
        CaKeyAlgorithm::EcdsaP384 => 48,
    }
}

fn digest_algorithm(algorithm: CaKeyAlgorithm) -> &'static digest::Algorithm {
    match algorithm {
        CaKeyAlgorithm::EcdsaP256 => &digest::SHA256,
        CaKeyAlgorithm::EcdsaP384 => &digest::SHA384,
    }
}

fn verification(algorithm: CaKeyAlgorithm) -> &'static signature::EcdsaVerificationAlgorithm {
    match algorithm {
        CaKeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        CaKeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
    }
}

fn curve_name(algorithm: CaKeyAlgorithm) -> &'static str {
    match algorithm {
        CaKeyAlgorithm::EcdsaP256 => "P-256",
        CaKeyAlgorithm::EcdsaP384 => "P-384",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
