//! The CA directory with its keys in a real token (SoftHSM2): `init`, `rotate`, `load` and the
//! reload of a running CA, as `hush ca …` runs them. Each test runs in a child process of its
//! own, for the reason `signing_key::softhsm_tests` gives.

use std::fs;
use std::path::Path;

use hush_identity::TrustDomain;
use rcgen::{CertificateParams, KeyPair, SanType};

use super::*;
use crate::csr::VerifiedCsr;
use crate::live::{AuthoritySet, Reload, ReloadError};
use crate::signing_key::softhsm_tests::{PIN, SoftHsm, TOKEN};
use crate::{Authority, IssuancePolicy};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn csr() -> VerifiedCsr {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://example.org/ns/shop/sa/web".try_into().unwrap(),
    )];
    VerifiedCsr::parse(params.serialize_request(&key).unwrap().der()).unwrap()
}

/// Issues a workload certificate with what `ca` serves and checks it with webpki against the
/// directory's trust bundle.
fn issue_and_verify(ca: &CaDir) {
    let authority = Authority::new(ca.load().unwrap(), IssuancePolicy::default()).unwrap();
    let id = "spiffe://example.org/ns/shop/sa/web".parse().unwrap();
    let svid = authority
        .issue(
            &csr(),
            &id,
            None,
            &crate::lineage::Lineage::Attested {
                method: hush_identity::AttestationMethod::JoinToken,
                token_id: None,
            },
            None,
        )
        .unwrap();
    hush_test_support::verify_chain(
        &svid.chain,
        ca.load_bundle().unwrap().roots(),
        hush_test_support::Usage::ClientAuth,
    )
    .unwrap();
    // The CA's own server certificate is signed in the token too.
    let (chain, _) = authority
        .issue_server_certificate(
            &["localhost".into()],
            &[],
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    hush_test_support::verify_chain(
        &chain,
        ca.load_bundle().unwrap().roots(),
        hush_test_support::Usage::ServerAuth,
    )
    .unwrap();
}

fn key_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".key"))
        .collect();
    names.sort();
    names
}

#[test]
fn init_with_both_keys_in_the_token_serves_from_it() {
    SoftHsm::run_in(
        module_path!(),
        "init_with_both_keys_in_the_token_serves_from_it",
        |hsm| {
            let dir = tempfile::tempdir().unwrap();
            let ca = CaDir::new(dir.path().join("ca"));
            let (root_uri, int_uri) = (hsm.uri("root1"), hsm.uri("int1"));
            let mut options = InitOptions::new(td());
            options.key_algorithm = CaKeyAlgorithm::EcdsaP384;
            options.root_key_uri = Some(root_uri.clone());
            options.key_uri = Some(int_uri.clone());
            ca.init(&options).unwrap();

            // The manifest names the keys by URI, as given; no key is a file.
            let manifest = ca.authorities().unwrap();
            let (root, intermediate) = manifest.active();
            assert_eq!(
                (root.key.as_deref(), root.key_uri.as_deref()),
                (None, Some(root_uri.as_str()))
            );
            assert_eq!(
                (intermediate.key.as_deref(), intermediate.key_uri.as_deref()),
                (None, Some(int_uri.as_str()))
            );
            // The JWT authority's key is a file whatever the X.509 keys are (no PKCS#11 for
            // JWT keys yet).
            let jwt_key = format!(
                "{}.key",
                manifest.active_jwt().unwrap().cert.trim_end_matches(".pem")
            );
            assert_eq!(key_files(ca.path()), vec![jwt_key.clone()]);
            let served: Vec<String> = ca
                .serving_files()
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert!(
                !served.iter().any(|n| n.ends_with(".key") && *n != jwt_key),
                "{served:?}"
            );

            let material = ca.load().unwrap();
            assert!(material.intermediate_key.is_in_token());
            drop(material);
            issue_and_verify(&ca);

            // A wrong PIN stops the load, naming the token and never the PIN. (Every key of
            // this process is closed by now, so the token holds no login.)
            let pin_file = hsm.dir.join("pin");
            fs::write(&pin_file, "97531\n").unwrap();
            let err = ca.load_authorities().unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(
                    err,
                    StoreError::Pkcs11 {
                        cause: Pkcs11Error::LoginFailed { .. },
                        ..
                    }
                ),
                "{message}"
            );
            assert!(message.contains(&format!("{TOKEN:?}")), "{message}");
            assert!(message.contains(intermediate.id.as_str()), "{message}");
            assert!(
                !message.contains("97531") && !message.contains(PIN),
                "{message}"
            );
        },
    );
}

#[test]
fn rotating_the_intermediate_signs_with_the_root_key_in_the_token() {
    SoftHsm::run_in(
        module_path!(),
        "rotating_the_intermediate_signs_with_the_root_key_in_the_token",
        |hsm| {
            let dir = tempfile::tempdir().unwrap();
            let ca = CaDir::new(dir.path());
            let mut options = InitOptions::new(td());
            options.root_key_uri = Some(hsm.uri("root1"));
            ca.init(&options).unwrap();
            let first = ca.authorities().unwrap();
            // The intermediate's key is a file, with its old-layout copy.
            assert!(ca.path().join(INTERMEDIATE_KEY).exists());

            // A label already taken, or a PIN in the URI, is refused before anything is made.
            let refusals: [(&str, &[&str]); 3] = [
                (
                    &hsm.uri("root1"),
                    &["\"root1\"", "is the key of root", "label of its own"],
                ),
                (
                    &hsm.uri_with("int2", "pin-value=97531"),
                    &["no place for a secret", "pin-source=file:"],
                ),
                (
                    &hsm.uri_with("int2", "pin-source=file:pin"),
                    &["relative path"],
                ),
            ];
            for (uri, words) in refusals {
                let err = ca
                    .rotate_intermediate(&RotateOptions {
                        key_uri: Some(uri.to_string()),
                        ..RotateOptions::default()
                    })
                    .unwrap_err()
                    .to_string();
                for word in words {
                    assert!(err.contains(word), "{word}: {err}");
                }
                assert!(!err.contains("97531"), "{err}");
            }
            assert_eq!(ca.authorities().unwrap(), first, "refusals changed nothing");

            // Another token key is not the root's.
            let err = ca
                .rotate_intermediate(&RotateOptions {
                    root_key_uri: Some(hsm.uri("stray")),
                    ..RotateOptions::default()
                })
                .unwrap_err();
            assert!(matches!(err, StoreError::Pkcs11 { .. }), "{err}");
            CaKey::generate_in_token(&hsm.uri("stray"), CaKeyAlgorithm::EcdsaP256).unwrap();
            let err = ca
                .rotate_intermediate(&RotateOptions {
                    root_key_uri: Some(hsm.uri("stray")),
                    ..RotateOptions::default()
                })
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains("the key \"stray\" in PKCS#11 token \"hush test\" is not the key of the active root"),
                "{err}"
            );

            // With no root key named, the manifest's root key_uri signs.
            let int_uri = hsm.uri("int2");
            let change = ca
                .rotate_intermediate(&RotateOptions {
                    key_uri: Some(int_uri.clone()),
                    ..RotateOptions::default()
                })
                .unwrap();
            let staged = change.manifest.get(&change.authorities[0]).unwrap();
            assert_eq!(staged.key_uri.as_deref(), Some(int_uri.as_str()));
            assert_eq!(staged.key, None);
            ca.activate(false).unwrap();
            // The previous intermediate's key is not left next to the new certificate.
            assert!(!ca.path().join(INTERMEDIATE_KEY).exists());
            assert!(ca.load().unwrap().intermediate_key.is_in_token());
            issue_and_verify(&ca);

            // The label of an authority's key is never given to another.
            let err = ca
                .rotate_intermediate(&RotateOptions {
                    key_uri: Some(int_uri),
                    ..RotateOptions::default()
                })
                .unwrap_err();
            assert!(matches!(err, StoreError::KeyLabelInUse { .. }), "{err}");
        },
    );
}

/// A polling CA opens a token key when the directory changes, not at every poll: with the
/// module's path gone, an unchanged directory still reloads as unchanged, and a changed one is
/// refused while the set in force keeps signing.
#[test]
fn a_reload_opens_the_token_only_when_the_directory_changed() {
    SoftHsm::run_in(
        module_path!(),
        "a_reload_opens_the_token_only_when_the_directory_changed",
        |hsm| {
            let link = hsm.dir.join("module.so");
            std::os::unix::fs::symlink(&hsm.module, &link).unwrap();
            let uri = hsm.uri("int1").replace(
                &hsm.module.display().to_string(),
                &link.display().to_string(),
            );
            let dir = tempfile::tempdir().unwrap();
            let ca = CaDir::new(dir.path());
            let mut options = InitOptions::new(td());
            options.key_uri = Some(uri);
            ca.init(&options).unwrap();
            let policy = IssuancePolicy::default();
            let set = AuthoritySet::load(&ca, policy).unwrap();

            fs::remove_file(&link).unwrap();
            assert!(set.load_if_changed(&ca).unwrap().is_none());

            // A new root staged: the manifest changed, the same intermediate signs.
            ca.rotate_root(&RotateOptions::default()).unwrap();
            let err = set.load_if_changed(&ca).unwrap_err();
            assert!(
                matches!(
                    err,
                    ReloadError::Store(StoreError::Pkcs11 {
                        cause: Pkcs11Error::ModuleLoad { .. },
                        ..
                    })
                ),
                "{err}"
            );
            let id = "spiffe://example.org/ns/shop/sa/web".parse().unwrap();
            set.authority()
                .issue(
                    &csr(),
                    &id,
                    None,
                    &crate::lineage::Lineage::Attested {
                        method: hush_identity::AttestationMethod::JoinToken,
                        token_id: None,
                    },
                    None,
                )
                .unwrap();

            std::os::unix::fs::symlink(&hsm.module, &link).unwrap();
            let next = set.load_if_changed(&ca).unwrap().expect("changed");
            match set.check_successor(&next).unwrap() {
                Reload::Loaded {
                    intermediate_changed,
                    roots_changed,
                    ..
                } => assert!(!intermediate_changed && roots_changed),
                Reload::Unchanged => panic!("the manifest changed"),
            }
            next.authority()
                .issue(
                    &csr(),
                    &id,
                    None,
                    &crate::lineage::Lineage::Attested {
                        method: hush_identity::AttestationMethod::JoinToken,
                        token_id: None,
                    },
                    None,
                )
                .unwrap();
        },
    );
}
