//! The PKCS#11 key against a real token: SoftHSM2.
//!
//! SoftHSM2 finds its configuration (and so its token directory) through `SOFTHSM2_CONF`, read
//! when the module is initialised, once per process. Setting an environment variable inside a
//! multi-threaded test process races with every other thread reading the environment, C code
//! included, so each test runs its body in a child process of its own: the test binary again,
//! filtered to that one test, with `SOFTHSM2_CONF` pointing at a fresh token directory. Each
//! test also gets a module that has never been initialised, as a CA process does.
//!
//! Where SoftHSM2 is not installed the tests say "skipped" and pass, unless
//! `HUSH_REQUIRE_SOFTHSM` is set (CI sets it).
//!
//! Other modules' token tests (the CA directory's, in `store`) use [`SoftHsm::run_in`].

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SigningKey,
};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use super::uri::default_module_paths;
use super::*;

/// Names the test body to run in the child, and tells a child from its parent.
const CHILD: &str = "HUSH_SOFTHSM_CHILD";
/// The child writes it once the body has returned, so that a child that ran no test (a filter
/// that matched nothing) is not taken for a success.
const DONE: &str = "HUSH_SOFTHSM_DONE";

pub(crate) const TOKEN: &str = "hush test";
pub(crate) const PIN: &str = "1234";
const SO_PIN: &str = "5678";

/// A token initialised for one test, in the child process.
pub(crate) struct SoftHsm {
    pub(crate) module: PathBuf,
    /// The test's own directory (the token directory's parent), for PIN files and the like.
    pub(crate) dir: PathBuf,
}

impl SoftHsm {
    /// Runs `body` against a fresh token, in a child process (see the module comment). `name`
    /// is the test function's name.
    fn run(name: &str, body: impl FnOnce(&SoftHsm)) {
        Self::run_in(module_path!(), name, body)
    }

    /// [`Self::run`] for a test of another module: `test_module` is its `module_path!()`, from
    /// which the child is told which test to run.
    pub(crate) fn run_in(test_module: &str, name: &str, body: impl FnOnce(&SoftHsm)) {
        let Some(module) = default_module_paths().into_iter().find(|p| p.exists()) else {
            return skip();
        };
        let util = Command::new("softhsm2-util").arg("--version").output();
        if !util.is_ok_and(|o| o.status.success()) {
            return skip();
        }
        if std::env::var(CHILD).as_deref() == Ok(name) {
            let conf = std::env::var_os("SOFTHSM2_CONF").expect("the parent sets SOFTHSM2_CONF");
            let dir = Path::new(&conf).parent().unwrap().to_path_buf();
            let hsm = SoftHsm { module, dir };
            hsm.init_token();
            body(&hsm);
            std::fs::write(std::env::var_os(DONE).unwrap(), "").unwrap();
            return;
        }

        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let done = dir.path().join("done");
        // libtest names a test by its path without the crate.
        let test = format!("{}::{name}", test_module.split_once("::").unwrap().1);
        let output = Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, name)
            .env(DONE, &done)
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        let report = format!(
            "{test} in a child process:\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{report}");
        assert!(done.exists(), "the body did not run: {report}");
    }

    fn init_token(&self) {
        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", TOKEN])
            .args(["--pin", PIN, "--so-pin", SO_PIN])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A URI for `object` in the test's token, with `pin` (a query attribute, or "").
    pub(crate) fn uri_with(&self, object: &str, pin: &str) -> String {
        let mut uri = format!(
            "pkcs11:token=hush%20test;object={object}?module-path={}",
            self.module.display()
        );
        if !pin.is_empty() {
            uri.push('&');
            uri.push_str(pin);
        }
        uri
    }

    /// A URI for `object` with the right PIN, in a file as in production.
    pub(crate) fn uri(&self, object: &str) -> String {
        let pin_file = self.dir.join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        self.uri_with(object, &format!("pin-source=file:{}", pin_file.display()))
    }
}

fn skip() {
    assert!(
        std::env::var_os("HUSH_REQUIRE_SOFTHSM").is_none(),
        "HUSH_REQUIRE_SOFTHSM is set but softhsm2 is not installed (softhsm2-util and its module)"
    );
    eprintln!("skipped: softhsm2 not installed");
}

fn ca_params(name: &str, constraint: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(constraint);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

/// A root (P-256) and an intermediate (P-384), both in the token, and a leaf the intermediate
/// signs through `Issuer<'static, CaKey>` as the CA does: every signature on the chain is made
/// in the token and checked by x509-parser and by webpki, which proves the conversion of the
/// token's `r ‖ s` to DER end to end, on both curves.
#[test]
fn keys_in_the_token_sign_a_chain_that_verifies() {
    SoftHsm::run("keys_in_the_token_sign_a_chain_that_verifies", |hsm| {
        let root_key =
            CaKey::generate_in_token(&hsm.uri("root"), CaKeyAlgorithm::EcdsaP256).unwrap();
        let int_key =
            CaKey::generate_in_token(&hsm.uri("intermediate"), CaKeyAlgorithm::EcdsaP384).unwrap();
        assert!(root_key.is_in_token());
        assert_eq!(root_key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(int_key.algorithm(), &rcgen::PKCS_ECDSA_P384_SHA384);

        let root_params = ca_params("hush test root", BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::from_params(&root_params, &root_key);
        let int_params = ca_params("hush test intermediate", BasicConstraints::Constrained(0));
        let intermediate = int_params.signed_by(&int_key, &root_issuer).unwrap();

        // The key's SPKI is the certificate's, as the CA checks at start.
        assert_eq!(
            parse(root.der()).public_key().raw,
            root_key.public_key_der()
        );
        assert_eq!(
            parse(intermediate.der()).public_key().raw,
            int_key.public_key_der()
        );

        // As the CA signs: the key, reopened from its URI, behind an Issuer made from the
        // intermediate's certificate.
        drop(int_key);
        let int_key = CaKey::from_uri(&hsm.uri("intermediate")).unwrap();
        let issuer: Issuer<'static, CaKey> =
            Issuer::from_ca_cert_der(intermediate.der(), int_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::default();
        leaf_params.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/ns/shop/sa/web".try_into().unwrap(),
        )];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let (root_cert, int_cert, leaf_cert) = (
            parse(root.der()),
            parse(intermediate.der()),
            parse(leaf.der()),
        );
        root_cert.verify_signature(None).unwrap();
        int_cert
            .verify_signature(Some(root_cert.public_key()))
            .unwrap();
        leaf_cert
            .verify_signature(Some(int_cert.public_key()))
            .unwrap();
        hush_test_support::verify_chain(
            &[leaf.der().clone(), intermediate.der().clone()],
            &[CertificateDer::from(root.der().to_vec())],
            hush_test_support::Usage::ClientAuth,
        )
        .unwrap();
    });
}

#[test]
fn a_wrong_pin_is_a_login_error_that_does_not_show_the_pin() {
    SoftHsm::run(
        "a_wrong_pin_is_a_login_error_that_does_not_show_the_pin",
        |hsm| {
            // Dropped at once: its sessions held the login, which a wrong PIN would not undo.
            CaKey::generate_in_token(&hsm.uri("key"), CaKeyAlgorithm::EcdsaP256).unwrap();

            let wrong = "97531-wrong";
            let pin_file = hsm.dir.join("wrong-pin");
            std::fs::write(&pin_file, wrong).unwrap();
            for pin in [
                format!("pin-value={wrong}"),
                format!("pin-source=file:{}", pin_file.display()),
            ] {
                let err = CaKey::from_uri(&hsm.uri_with("key", &pin)).unwrap_err();
                assert!(matches!(err, Pkcs11Error::LoginFailed { .. }), "{err:?}");
                let message = err.to_string();
                assert!(message.contains("PIN is incorrect"), "{message}");
                assert!(message.contains("hush test"), "{message}");
                for shown in [message, format!("{err:?}"), format!("{:?}", err.source())] {
                    assert!(!shown.contains(wrong), "{shown}");
                    assert!(!shown.contains(PIN), "{shown}");
                }
            }

            let err = CaKey::from_uri(&hsm.uri_with("key", "")).unwrap_err();
            assert!(matches!(err, Pkcs11Error::PinRequired { .. }), "{err:?}");
            assert!(err.to_string().contains("pin-source="), "{err}");
            // The right PIN still opens it: the failures locked nothing.
            CaKey::from_uri(&hsm.uri("key")).unwrap();
        },
    );
}

#[test]
fn unknown_labels_say_what_was_not_found() {
    SoftHsm::run("unknown_labels_say_what_was_not_found", |hsm| {
        let err = CaKey::from_uri(&hsm.uri("no-such-key")).unwrap_err();
        assert!(matches!(err, Pkcs11Error::KeyNotFound { .. }), "{err:?}");
        assert!(err.to_string().starts_with("key not found"), "{err}");
        assert!(err.to_string().contains("no-such-key"), "{err}");

        let uri = hsm.uri("key").replace("hush%20test", "other");
        let err = CaKey::from_uri(&uri).unwrap_err();
        assert!(matches!(err, Pkcs11Error::TokenNotFound { .. }), "{err:?}");
        assert!(
            err.to_string().contains(r#"tokens present: "hush test""#),
            "{err}"
        );

        let uri = hsm.uri("key").replace(
            &hsm.module.display().to_string(),
            "/nonexistent/libpkcs11.so",
        );
        let err = CaKey::from_uri(&uri).unwrap_err();
        assert!(matches!(err, Pkcs11Error::ModuleLoad { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/libpkcs11.so"),
            "{err}"
        );

        // A label is never given twice.
        let _key = CaKey::generate_in_token(&hsm.uri("key"), CaKeyAlgorithm::EcdsaP256).unwrap();
        let err = CaKey::generate_in_token(&hsm.uri("key"), CaKeyAlgorithm::EcdsaP384).unwrap_err();
        assert!(matches!(err, Pkcs11Error::AlreadyExists { .. }), "{err:?}");
    });
}

/// Many threads sign at once through one key: the session pool hands each its own session.
/// Every signature is checked, so a conversion that fails for some values (a high bit, a
/// leading zero) is caught too.
#[test]
fn many_threads_sign_at_once() {
    SoftHsm::run("many_threads_sign_at_once", |hsm| {
        let key = Arc::new(
            CaKey::generate_in_token(&hsm.uri("busy"), CaKeyAlgorithm::EcdsaP256).unwrap(),
        );
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let key = Arc::clone(&key);
                std::thread::spawn(move || {
                    let public = aws_lc_rs::signature::UnparsedPublicKey::new(
                        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                        key.der_bytes().to_vec(),
                    );
                    for i in 0..25u8 {
                        let msg = [t, i];
                        let signature = key.sign(&msg).unwrap();
                        public
                            .verify(&msg, &signature)
                            .unwrap_or_else(|_| panic!("thread {t}, signature {i} is wrong"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    });
}

#[test]
fn signing_logs_in_again_when_the_token_forgets_the_login() {
    SoftHsm::run(
        "signing_logs_in_again_when_the_token_forgets_the_login",
        |hsm| {
            let key =
                Pkcs11Key::generate(&hsm.uri("key").parse().unwrap(), CaKeyAlgorithm::EcdsaP384)
                    .unwrap();
            assert_eq!(key.token(), TOKEN);
            assert_eq!(key.object(), "key");
            key.forget_login().unwrap();
            let signature = key.sign_message(b"after the logout").unwrap();
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
                key.der_bytes(),
            )
            .verify(b"after the logout", &signature)
            .unwrap();
        },
    );
}
