//! How many connections each listener serves at once: `limits.max_connections` when set, else
//! an even share among the listeners of as many as fit in the memory limit of the container the
//! process runs in (its cgroup's), so that a sidecar under load refuses connections instead of
//! being killed for memory. Each listener keeps slots of its own, so a flood on one (the
//! inbound port is open to the network) cannot take the app's outbound connections.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Connections served at once when neither the configuration nor a memory limit says.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// What one open connection may cost, counted generously: an idle HTTP/1.1 connection over
/// mutual TLS holds about 19 KiB in a release build (rustls' record buffer and keys, the
/// connection's task; docs/performance.md), a request in flight about 23 KiB more (hyper's
/// read and write buffers, given back once the connection is parked) and its head and body
/// chunks.
pub const BYTES_PER_CONNECTION: u64 = 64 * 1024;

/// Memory set aside for everything that is not a connection: the executable's pages, the
/// runtime, certificates, policy, connection pools, metrics, and the large buffers connections
/// moving bulk data share (8 MiB at most, `bulk::PROCESS_BUDGET`; a connection without a share
/// moves its bytes a TLS record at a time, within its own budget).
pub const RESERVED_BYTES: u64 = 24 * 1024 * 1024;

/// The fewest connections a memory limit is allowed to leave.
const MIN_CONNECTIONS: usize = 16;

/// The cap in force and where it came from, for the log line at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectionCap {
    pub(crate) connections: usize,
    pub(crate) source: CapSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CapSource {
    /// `limits.max_connections`.
    Configured,
    /// The cgroup's memory limit, in bytes.
    MemoryLimit(u64),
    /// No limit found: [`DEFAULT_MAX_CONNECTIONS`].
    Default,
}

impl ConnectionCap {
    /// The cap of each of `listeners` listeners for `configured` (the configuration's value, if
    /// any), in the cgroup of this process.
    pub(crate) fn of(configured: Option<usize>, listeners: usize) -> Self {
        Self::with_limit(configured, memory_limit(Path::new("/")), listeners)
    }

    fn with_limit(configured: Option<usize>, limit: Option<u64>, listeners: usize) -> Self {
        if let Some(connections) = configured {
            return Self {
                connections,
                source: CapSource::Configured,
            };
        }
        match limit {
            Some(bytes) => Self {
                connections: (fitting(bytes) / listeners.max(1)).max(MIN_CONNECTIONS),
                source: CapSource::MemoryLimit(bytes),
            },
            None => Self {
                connections: DEFAULT_MAX_CONNECTIONS,
                source: CapSource::Default,
            },
        }
    }
}

impl fmt::Display for ConnectionCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.connections;
        match self.source {
            CapSource::Configured => write!(
                f,
                "{n} connections at once per listener (limits.max_connections)"
            ),
            CapSource::MemoryLimit(bytes) => write!(
                f,
                "{n} connections at once per listener: its share of what fits in the \
                 container's memory limit of {} MiB ({} MiB reserved, {} KiB per connection; \
                 set limits.max_connections to choose)",
                bytes / (1024 * 1024),
                RESERVED_BYTES / (1024 * 1024),
                BYTES_PER_CONNECTION / 1024
            ),
            CapSource::Default => write!(
                f,
                "{n} connections at once per listener (no memory limit found; \
                 limits.max_connections sets it)"
            ),
        }
    }
}

/// Connections that fit in `limit` bytes.
fn fitting(limit: u64) -> usize {
    let fit = limit.saturating_sub(RESERVED_BYTES) / BYTES_PER_CONNECTION;
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)
}

/// The memory limit of this process's cgroup, in bytes, read under `root` (`/` but in tests):
/// cgroup v2's `memory.max`, else cgroup v1's `memory.limit_in_bytes`. None when there is no
/// limit ("max", or v1's "unlimited", a number near 2^63) or nothing can be read: the cap then
/// falls back to the default rather than guessing.
pub(crate) fn memory_limit(root: &Path) -> Option<u64> {
    let cgroups = fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let mut candidates: Vec<PathBuf> = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: one hierarchy. In a container with its own cgroup namespace the path
            // is "/", and the container's group is the mount's root.
            let base = root.join("sys/fs/cgroup");
            candidates.push(base.join(path).join("memory.max"));
            candidates.push(base.join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = root.join("sys/fs/cgroup/memory");
            candidates.push(base.join(path).join("memory.limit_in_bytes"));
            candidates.push(base.join("memory.limit_in_bytes"));
        }
    }
    candidates
        .iter()
        .filter_map(|file| fs::read_to_string(file).ok())
        .find_map(|text| {
            let bytes: u64 = text.trim().parse().ok()?;
            // cgroup v1 writes "no limit" as the largest page-aligned i64.
            (bytes < 1 << 62).then_some(bytes)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_configuration_wins() {
        let cap = ConnectionCap::with_limit(Some(7), Some(64 * MIB), 2);
        assert_eq!(cap.connections, 7);
        assert_eq!(cap.source, CapSource::Configured);
    }

    #[test]
    fn a_memory_limit_leaves_room_for_every_connection_it_allows() {
        // The chart's default sidecar: 64 MiB, an inbound and a transparent listener.
        let cap = ConnectionCap::with_limit(None, Some(64 * MIB), 2);
        assert_eq!(cap.connections, 320);
        assert!(
            RESERVED_BYTES + 2 * cap.connections as u64 * BYTES_PER_CONNECTION <= 64 * MIB,
            "{cap}"
        );
        let alone = ConnectionCap::with_limit(None, Some(64 * MIB), 1);
        assert_eq!(alone.connections, 640);
        assert!(cap.to_string().contains("memory limit of 64 MiB"), "{cap}");
        // A tiny limit still serves a few; a huge one is held to the default.
        assert_eq!(fitting(8 * MIB), MIN_CONNECTIONS);
        assert_eq!(fitting(1 << 40), DEFAULT_MAX_CONNECTIONS);
        let none = ConnectionCap::with_limit(None, None, 3);
        assert_eq!(none.connections, DEFAULT_MAX_CONNECTIONS);
    }

    fn fake_root(cgroup: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("proc/self")).unwrap();
        fs::write(root.path().join("proc/self/cgroup"), cgroup).unwrap();
        for (path, text) in files {
            let path = root.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        root
    }

    #[test]
    fn limits_are_read_from_cgroup_v2_and_v1() {
        let v2 = fake_root(
            "0::/kubepods/pod1/c1\n",
            &[("sys/fs/cgroup/kubepods/pod1/c1/memory.max", "67108864\n")],
        );
        assert_eq!(memory_limit(v2.path()), Some(64 * MIB));
        // A namespaced container sees "/" and its own group at the mount's root.
        let namespaced = fake_root("0::/\n", &[("sys/fs/cgroup/memory.max", "134217728\n")]);
        assert_eq!(memory_limit(namespaced.path()), Some(128 * MIB));
        let unlimited = fake_root("0::/\n", &[("sys/fs/cgroup/memory.max", "max\n")]);
        assert_eq!(memory_limit(unlimited.path()), None);
        let v1 = fake_root(
            "5:cpu,cpuacct:/x\n4:memory:/kubepods/c1\n",
            &[(
                "sys/fs/cgroup/memory/kubepods/c1/memory.limit_in_bytes",
                "268435456\n",
            )],
        );
        assert_eq!(memory_limit(v1.path()), Some(256 * MIB));
        let v1_unlimited = fake_root(
            "4:memory:/\n",
            &[(
                "sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            )],
        );
        assert_eq!(memory_limit(v1_unlimited.path()), None);
        let unreadable = fake_root("garbage\n", &[]);
        assert_eq!(memory_limit(unreadable.path()), None);
    }
}
