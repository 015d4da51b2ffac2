//! A SoftHSM2 token of a test's own, for the CA's keys in a PKCS#11 token.
//!
//! SoftHSM2 keeps its tokens in the directory its configuration file names, and finds that file
//! through `SOFTHSM2_CONF`. The test never sets that variable in its own process (the
//! environment is shared by every thread of a test binary): it hands it to the `hush` processes
//! it starts, with [`SoftHsmToken::env`].

use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

/// Where Debian's softhsm2 package puts the module (one path is a link to the other), which is
/// where hush looks when a `pkcs11:` URI names no module.
fn modules() -> [PathBuf; 2] {
    [
        PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from(format!(
            "/usr/lib/{}-linux-gnu/softhsm/libsofthsm2.so",
            std::env::consts::ARCH
        )),
    ]
}

/// An initialised SoftHSM2 token in a temporary directory, deleted when dropped.
#[derive(Debug)]
pub struct SoftHsmToken {
    dir: TempDir,
    conf: String,
}

impl SoftHsmToken {
    /// Initialises a token labelled `label` with user PIN `pin`. Returns `None`, saying
    /// "skipped" on stderr, when softhsm2 is not installed; panics instead when
    /// `HUSH_REQUIRE_SOFTHSM` is set (CI installs it, so there a missing one is a failure).
    pub fn init(label: &str, pin: &str) -> Option<Self> {
        let installed = modules().iter().any(|m| m.exists())
            && Command::new("softhsm2-util")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("HUSH_REQUIRE_SOFTHSM").is_none(),
                "HUSH_REQUIRE_SOFTHSM is set but softhsm2 is not installed (softhsm2-util and its module)"
            );
            eprintln!("skipped: softhsm2 not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory for the token");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("the token directory");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("the SoftHSM2 configuration");
        let conf = conf.to_str().expect("temporary paths are UTF-8").to_owned();
        let output = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label, "--pin", pin])
            // The security officer's PIN is never used by hush; any will do.
            .args(["--so-pin", "so-pin-unused"])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util runs");
        assert!(
            output.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(Self { dir, conf })
    }

    /// The environment a process needs to see the token.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.as_str())]
    }

    /// Writes `pin` to a file of the token's directory (mode 0600, as an operator would) and
    /// returns its path, for `pin-source=file:`.
    pub fn pin_file(&self, name: &str, pin: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{pin}\n")).expect("the PIN file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("the PIN file's mode");
        path
    }
}
