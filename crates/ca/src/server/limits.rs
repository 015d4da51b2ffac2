//! The CA's bounds on what one client can hold: connections per address, unauthenticated
//! requests in flight, and refusals reported at a bounded rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;

/// At most one log line per kind of refusal in this interval.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Counts open connections per client address and refuses one over the limit.
///
/// Addresses are exact (IPv4-mapped IPv6 is read as IPv4): many sidecars behind one node
/// address share a count, so the limit must be generous, and an attacker with many addresses
/// is bounded by the global connection cap instead.
#[derive(Debug)]
pub(crate) struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    counts: Arc<PerAddress>,
    address: IpAddr,
}

// === impl PerAddress ===

impl PerAddress {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `address`, or `None` when it already holds the limit.
    pub(crate) fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        let address = address.to_canonical();
        let mut open = lock(&self.open);
        // Checked before inserting, so refused addresses leave no entry behind.
        if open.get(&address).is_some_and(|count| *count >= self.limit) || self.limit == 0 {
            return None;
        }
        *open.entry(address).or_insert(0) += 1;
        Some(AddressSlot {
            counts: self.clone(),
            address,
        })
    }

    /// How many connections `address` holds now.
    #[cfg(test)]
    fn open_from(&self, address: IpAddr) -> usize {
        lock(&self.open)
            .get(&address.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// How many addresses hold at least one connection (the map never keeps empty entries).
    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.open).len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.counts.open);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// Refusals of one kind, reported in at most one log line per interval: a flood of refused
/// connections must not become a flood of log lines.
#[derive(Debug)]
pub(crate) struct Refusals {
    kind: RefusalKind,
    interval: Duration,
    state: Mutex<RefusalState>,
}

/// What was refused, and the limit that refused it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RefusalKind {
    /// A connection from an address that already holds `limit`.
    ConnectionsPerAddress { limit: usize },
    /// A request without a verified client certificate while `limit` such are in flight.
    UnauthenticatedRequests { limit: usize },
}

#[derive(Debug, Default)]
struct RefusalState {
    last_report: Option<Instant>,
    unreported: u64,
    latest: Option<IpAddr>,
}

/// What one log line says: how many were refused since the last line, and the latest address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefusalReport {
    pub(crate) refused: u64,
    pub(crate) latest: IpAddr,
}

// === impl Refusals ===

impl Refusals {
    pub(crate) fn new(kind: RefusalKind) -> Self {
        Self {
            kind,
            interval: REPORT_INTERVAL,
            state: Mutex::default(),
        }
    }

    /// Counts a refusal of `address`, and logs when a line is due.
    pub(crate) fn refuse(&self, address: IpAddr) {
        if let Some(report) = self.record(address, Instant::now()) {
            self.kind.log(report);
        }
    }

    /// Logs the refusals not yet reported, if a line is due.
    pub(crate) fn report_pending(&self) {
        if let Some(report) = self.flush(Instant::now()) {
            self.kind.log(report);
        }
    }

    /// Logs the refusals not yet reported, due or not: the CA is stopping.
    pub(crate) fn report_remaining(&self) {
        let mut state = lock(&self.state);
        if let (Some(latest), refused @ 1..) = (state.latest, state.unreported) {
            state.unreported = 0;
            self.kind.log(RefusalReport { refused, latest });
        }
    }

    /// Counts a refusal of `address` at `now`; returns a report when a line is due (the first
    /// refusal, then at most once per interval).
    pub(crate) fn record(&self, address: IpAddr, now: Instant) -> Option<RefusalReport> {
        let mut state = lock(&self.state);
        state.unreported += 1;
        state.latest = Some(address.to_canonical());
        self.due(&mut state, now)
    }

    /// The refusals not yet reported, once the interval since the last line has passed: called
    /// periodically, so the tail of a flood that stopped is reported too.
    pub(crate) fn flush(&self, now: Instant) -> Option<RefusalReport> {
        let mut state = lock(&self.state);
        self.due(&mut state, now)
    }

    fn due(&self, state: &mut RefusalState, now: Instant) -> Option<RefusalReport> {
        let latest = state.latest?;
        if state.unreported == 0
            || state
                .last_report
                .is_some_and(|last| now.saturating_duration_since(last) < self.interval)
        {
            return None;
        }
        let report = RefusalReport {
            refused: state.unreported,
            latest,
        };
        state.unreported = 0;
        state.last_report = Some(now);
        Some(report)
    }
}

impl RefusalKind {
    fn log(self, report: RefusalReport) {
        let RefusalReport { refused, latest } = report;
        let every = REPORT_INTERVAL.as_secs();
        match self {
            Self::ConnectionsPerAddress { limit } => warn!(
                refused,
                latest_peer = %latest,
                limit,
                "refused connections from an address that already holds the per-address limit \
                 (--max-connections-per-ip); one line at most every {every} s counts them all"
            ),
            Self::UnauthenticatedRequests { limit } => warn!(
                refused,
                latest_peer = %latest,
                limit,
                "refused requests without a client certificate: the limit in flight is reached \
                 (--max-unauthenticated-requests); one line at most every {every} s counts them all"
            ),
        }
    }
}

/// A poisoned lock only means another connection's task panicked while counting; the counts
/// themselves are still consistent (each update is one statement).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn each_address_gets_its_own_limit_and_slots_come_back() {
        let counts = PerAddress::new(2);
        let first = counts.try_acquire(A).expect("first from A");
        let second = counts.try_acquire(A).expect("second from A");
        assert!(counts.try_acquire(A).is_none(), "a third from A is over");
        let other = counts.try_acquire(B).expect("B has its own count");
        assert_eq!(counts.open_from(A), 2);

        drop(first);
        assert_eq!(counts.open_from(A), 1);
        let again = counts
            .try_acquire(A)
            .expect("a closed connection frees its place");

        drop((second, again, other));
        assert_eq!(
            counts.addresses(),
            0,
            "no entry is kept for an idle address"
        );
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_the_ipv4_address() {
        let counts = PerAddress::new(1);
        let _v4 = counts.try_acquire(A).expect("first");
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(
            counts.try_acquire(mapped).is_none(),
            "a dual-stack listener must not double the limit"
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(counts.try_acquire(v6).is_some());
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let counts = PerAddress::new(0);
        assert!(counts.try_acquire(A).is_none());
        assert_eq!(counts.addresses(), 0, "a refused address leaves no entry");
    }

    #[test]
    fn a_flood_of_refusals_is_one_line_per_interval() {
        let refusals = Refusals::new(RefusalKind::ConnectionsPerAddress { limit: 1 });
        let start = Instant::now();

        let first = refusals.record(A, start);
        assert_eq!(
            first,
            Some(RefusalReport {
                refused: 1,
                latest: A
            }),
            "the first refusal is reported at once"
        );
        let quiet: Vec<_> = (0..10_000)
            .filter_map(|i| refusals.record(if i % 2 == 0 { A } else { B }, start))
            .collect();
        assert!(quiet.is_empty(), "no line within the interval: {quiet:?}");
        assert_eq!(refusals.flush(start + Duration::from_secs(9)), None);

        let next = refusals.record(A, start + Duration::from_secs(10));
        assert_eq!(
            next,
            Some(RefusalReport {
                refused: 10_001,
                latest: A
            }),
            "the next line carries everything refused since the last"
        );
    }

    #[test]
    fn flush_reports_the_tail_of_a_flood_that_stopped() {
        let refusals = Refusals::new(RefusalKind::ConnectionsPerAddress { limit: 1 });
        let start = Instant::now();
        assert!(refusals.record(A, start).is_some());
        assert!(refusals.record(B, start).is_none());
        assert_eq!(refusals.flush(start), None, "not yet due");
        assert_eq!(
            refusals.flush(start + Duration::from_secs(10)),
            Some(RefusalReport {
                refused: 1,
                latest: B
            })
        );
        assert_eq!(
            refusals.flush(start + Duration::from_secs(60)),
            None,
            "nothing left to report"
        );
    }
}
