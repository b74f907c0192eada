//! Self-fencing: a broker that cannot show it is still part of the metadata cluster
//! stops acting as a partition leader, group coordinator or producer-id source.
//!
//! The Raft leader expires a broker whose heartbeat it has not seen applied for a lease,
//! by its own monotonic clock (`ClusterCommand::ExpireSilent`). A broker counts its lease
//! from the moment it *started* proposing its last heartbeat that it then saw applied:
//! that heartbeat reached the leader later than that, so the leader cannot expire the
//! broker before the broker has fenced itself. A follower or learner also fences itself
//! when no leader has replicated to it for a lease. Only durations on each broker's own
//! monotonic clock are compared, never wall clocks of two brokers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether a broker is fenced at `now`: its lease was never renewed, or not within
/// `lease`; or, not being the Raft leader, it heard from none for longer than `lease`.
/// A leader's renewal needs a quorum (the heartbeat commits), so it covers the leader.
pub fn is_fenced(
    now: Instant,
    lease: Duration,
    renewed: Option<Instant>,
    leader_contact: Option<Instant>,
    is_leader: bool,
) -> bool {
    fence_cause(now, lease, renewed, leader_contact, is_leader).is_some()
}

/// Why a broker is fenced (see [`is_fenced`]); None while it is not.
pub fn fence_cause(
    now: Instant,
    lease: Duration,
    renewed: Option<Instant>,
    leader_contact: Option<Instant>,
    is_leader: bool,
) -> Option<FenceCause> {
    let age = |t: Instant| now.saturating_duration_since(t);
    match renewed {
        None => return Some(FenceCause::NeverRenewed),
        Some(t) if age(t) > lease => return Some(FenceCause::LeaseNotRenewed(age(t))),
        Some(_) => {}
    }
    if is_leader {
        return None;
    }
    match leader_contact {
        None => Some(FenceCause::NoLeaderContact(None)),
        Some(t) if age(t) > lease => Some(FenceCause::NoLeaderContact(Some(age(t)))),
        Some(_) => None,
    }
}

/// Why a broker fenced itself, for its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceCause {
    /// No heartbeat (nor the registration) has committed yet.
    NeverRenewed,
    /// The last heartbeat that committed started this long ago.
    LeaseNotRenewed(Duration),
    /// No leader has replicated to this follower for this long (None: ever).
    NoLeaderContact(Option<Duration>),
}

impl std::fmt::Display for FenceCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NeverRenewed => write!(f, "lease never renewed"),
            Self::LeaseNotRenewed(age) => {
                write!(f, "lease last renewed {} ms ago", age.as_millis())
            }
            Self::NoLeaderContact(None) => write!(f, "no metadata leader has replicated here"),
            Self::NoLeaderContact(Some(age)) => write!(
                f,
                "no metadata leader has replicated here for {} ms",
                age.as_millis()
            ),
        }
    }
}

/// The last lease renewal, shared between the heartbeat loop and request handlers.
#[derive(Debug)]
pub struct Lease {
    lease: Duration,
    started: Instant,
    /// Milliseconds after `started` plus one; 0: never renewed.
    renewed: AtomicU64,
}

impl Lease {
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            started: Instant::now(),
            renewed: AtomicU64::new(0),
        }
    }

    pub fn duration(&self) -> Duration {
        self.lease
    }

    /// A heartbeat proposed at `at` was committed and applied here.
    pub fn renew(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.started).as_millis() as u64 + 1;
        self.renewed.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn renewed(&self) -> Option<Instant> {
        match self.renewed.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.started + Duration::from_millis(ms - 1)),
        }
    }
}

/// The Raft leader's view of heartbeats, by its monotonic clock: for each broker, the
/// heartbeat value last seen in the state and when it was first seen. A broker whose
/// value has not changed for longer than the lease is silent. A node that just became
/// leader knows no history, so it gives every broker a full lease from then.
#[derive(Debug, Default)]
pub struct ExpiryTracker {
    seen: BTreeMap<u64, (i64, Instant)>,
}

impl ExpiryTracker {
    /// Records the brokers `(id, heartbeat value, alive)` as seen at `now` and returns
    /// the live ones silent for longer than `lease`, with the value they were silent at.
    pub fn observe(
        &mut self,
        now: Instant,
        lease: Duration,
        is_leader: bool,
        brokers: impl IntoIterator<Item = (u64, i64, bool)>,
    ) -> Vec<(u64, i64)> {
        if !is_leader {
            self.seen.clear();
            return Vec::new();
        }
        let mut silent = Vec::new();
        let mut seen = BTreeMap::new();
        for (id, value, alive) in brokers {
            let since = match self.seen.get(&id) {
                Some((v, t)) if *v == value => *t,
                _ => now,
            };
            seen.insert(id, (value, since));
            if alive && now.saturating_duration_since(since) > lease {
                silent.push((id, value));
            }
        }
        self.seen = seen;
        silent
    }
}

/// Logs a repeated warning once, then at most one summary per period with how many
/// were held back (a peer that stays unreachable must not fill the log).
#[derive(Debug)]
pub struct WarnLimiter {
    period: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl WarnLimiter {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            held_back: 0,
        }
    }

    /// Whether to log now, and how many occurrences were held back since the last line.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.period => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }

    /// The condition cleared: the next occurrence is logged at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.held_back = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_brokers_are_found_by_the_leaders_clock() {
        let lease = Duration::from_secs(5);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = ExpiryTracker::default();
        // Wall-clock values are only compared for change: broker 2's clock is far ahead.
        assert!(t
            .observe(
                at(0),
                lease,
                true,
                [(1, 1000), (2, 99_000)].map(|(i, v)| (i, v, true))
            )
            .is_empty());
        assert!(t
            .observe(at(4000), lease, true, [(1, 2000, true), (2, 99_000, true)])
            .is_empty());
        assert_eq!(
            t.observe(at(5001), lease, true, [(1, 2000, true), (2, 99_000, true)]),
            vec![(2, 99_000)]
        );
        // Dead brokers are not expired again; a heartbeat restarts the count.
        assert!(t
            .observe(at(9500), lease, true, [(1, 3000, true), (2, 99_000, false)])
            .is_empty());
        // Losing leadership forgets everything: a new term gives a full lease.
        assert!(t
            .observe(at(9600), lease, false, [(1, 3000, true)])
            .is_empty());
        assert!(t
            .observe(at(20_000), lease, true, [(1, 3000, true)])
            .is_empty());
        assert_eq!(
            t.observe(at(25_001), lease, true, [(1, 3000, true)]),
            vec![(1, 3000)]
        );
    }

    #[test]
    fn warnings_are_limited_with_a_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = WarnLimiter::new(Duration::from_secs(10));
        assert_eq!(w.hit(at(0)), Some(0));
        for ms in 1..100 {
            assert_eq!(w.hit(at(ms)), None);
        }
        assert_eq!(w.hit(at(10_000)), Some(99));
        assert_eq!(w.hit(at(10_001)), None);
        w.reset();
        assert_eq!(w.hit(at(10_002)), Some(0));
    }

    #[test]
    fn fenced_without_a_recent_renewal_or_leader_contact() {
        let lease = Duration::from_secs(5);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Never renewed: fenced.
        assert!(is_fenced(at(1), lease, None, Some(at(1)), false));
        // Renewed and in contact: not fenced.
        assert!(!is_fenced(at(5), lease, Some(at(1)), Some(at(4)), false));
        // Renewal older than the lease: fenced even with contact.
        assert!(is_fenced(at(7), lease, Some(at(1)), Some(at(7)), false));
        // A follower without leader contact for a lease: fenced.
        assert!(is_fenced(at(7), lease, Some(at(6)), Some(at(1)), false));
        // The leader needs only its renewals (they took a quorum).
        assert!(!is_fenced(at(7), lease, Some(at(6)), None, true));
    }

    #[test]
    fn renewals_only_move_forward() {
        let lease = Lease::new(Duration::from_secs(5));
        assert_eq!(lease.renewed(), None);
        let t = Instant::now() + Duration::from_millis(1500);
        lease.renew(t);
        lease.renew(t - Duration::from_millis(1000));
        let got = lease.renewed().map(|r| r.saturating_duration_since(t));
        assert_eq!(got, Some(Duration::ZERO));
    }
}
