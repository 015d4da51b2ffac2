//! The state directory: the ACME account and each certificate with its key, and the lock
//! files that let replicas sharing the directory take turns.
//!
//! ```text
//! state_dir/            0700
//!   account.json        0600  the account's key and URL (instant-acme's AccountCredentials)
//!   account.lock              held while an account is read or created
//!   <name>.pem          0600  the certificate's key, then its chain, in one file so that a
//!                             rename replaces both at once
//!   <name>.lock               held while <name> is ordered
//! ```
//!
//! Every file is written to a temporary file of mode 0600 in the same directory, synced, and
//! renamed into place, so a reader (another replica, the next start) sees the old content or
//! the new, never a part. Lock files are never removed: removing one while another process
//! waits on it would let two processes hold "the" lock.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::warn;

/// The state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

/// What identifies a version of a file: a replica that sees another stamp reads it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: SystemTime,
    len: u64,
    inode: u64,
}

impl StateDir {
    /// Opens `dir`, creating it (and its parents) with mode 0700 if it does not exist.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            // An existing directory made by an operator or a volume mount: its files are
            // 0600 anyway, so say so rather than change what someone else set up.
            warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "the ACME state directory is open to group or others; 0700 is expected"
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The file holding the account.
    pub(crate) fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The file holding certificate `name`'s key and chain.
    pub(crate) fn certificate(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.pem", file_stem(name)))
    }

    /// The lock file for `what` (`account` or a certificate's name).
    pub(crate) fn lock_path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{}.lock", file_stem(what)))
    }

    /// Takes the lock `what` if no one holds it: `None` when another process (or another
    /// manager in this one) does. The lock is released when the file is dropped.
    pub(crate) fn try_lock(&self, what: &str) -> io::Result<Option<File>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock_path(what))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Writes `contents` to `path` (in this directory) with mode 0600, atomically.
    pub(crate) fn write_private(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("no file name"))?;
        let mut suffix = [0u8; 8];
        aws_lc_rs::rand::fill(&mut suffix).map_err(|_| io::Error::other("no randomness"))?;
        let temp = self.dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            u64::from_le_bytes(suffix)
        ));
        let written = (|| {
            // create_new: never write through a file (or link) someone put there.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(contents)?;
            file.sync_all()?;
            fs::rename(&temp, path)?;
            // The rename is durable only once the directory is.
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Reads `path`, with the stamp of what was read; `None` when it does not exist.
    pub(crate) fn read(&self, path: &Path) -> io::Result<Option<(Vec<u8>, FileStamp)>> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Stamp the open file, not the path, so the stamp belongs to the bytes read.
        let stamp = stamp(&file.metadata()?)?;
        let mut contents = Vec::new();
        io::Read::read_to_end(&mut file, &mut contents)?;
        Ok(Some((contents, stamp)))
    }

    /// The stamp of `path` now; `None` when it does not exist.
    pub(crate) fn stamp(&self, path: &Path) -> io::Result<Option<FileStamp>> {
        match fs::metadata(path) {
            Ok(meta) => stamp(&meta).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn stamp(meta: &fs::Metadata) -> io::Result<FileStamp> {
    Ok(FileStamp {
        modified: meta.modified()?,
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// A certificate's name as a file name: hosts are letters, digits, dots and hyphens already;
/// anything else (a wildcard's `*`) becomes `_`, which no host name holds.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_directory_is_0700_and_files_are_0600_and_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("acme/state");
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let path = state.certificate("shop.example.com");
        assert_eq!(path, dir.join("shop.example.com.pem"));
        state.write_private(&path, b"first").unwrap();
        assert_eq!(mode(&path), 0o600);
        let (first, first_stamp) = state.read(&path).unwrap().unwrap();
        assert_eq!(first, b"first");
        state.write_private(&path, b"second, longer").unwrap();
        assert_eq!(mode(&path), 0o600);
        let (second, second_stamp) = state.read(&path).unwrap().unwrap();
        assert_eq!(second, b"second, longer");
        assert_ne!(first_stamp, second_stamp, "a replaced file has a new stamp");
        assert_eq!(state.stamp(&path).unwrap(), Some(second_stamp));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["shop.example.com.pem"]);
        assert!(state.read(&dir.join("missing.pem")).unwrap().is_none());
    }

    #[test]
    fn a_lock_is_held_by_one_holder_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::open(root.path()).unwrap();
        let first = state.try_lock("shop.example.com").unwrap();
        assert!(first.is_some());
        assert!(
            state.try_lock("shop.example.com").unwrap().is_none(),
            "a second holder is refused while the first holds it"
        );
        assert!(
            state.try_lock("api.example.com").unwrap().is_some(),
            "locks are per certificate"
        );
        drop(first);
        assert!(state.try_lock("shop.example.com").unwrap().is_some());
        assert_eq!(mode(&state.lock_path("shop.example.com")), 0o600);
    }

    #[test]
    fn names_become_safe_file_names() {
        assert_eq!(file_stem("shop.example.com"), "shop.example.com");
        assert_eq!(file_stem("*.example.com"), "_.example.com");
        assert_eq!(file_stem("../etc"), ".._etc");
    }
}
