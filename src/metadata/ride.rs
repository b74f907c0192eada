//! The metadata log riding in data objects: on the Raft leader, a flush of the write
//! buffer carries the committed entries not yet in the bucket, so that at a trickle a
//! produce round costs one PUT (data and log together) instead of two.
//!
//! Whoever PUTs next ships the entries: the write buffer, if a round of data is forming,
//! else the shipper on its own. Both take a *claim* on a range of entries, and the
//! shipped mark (what acknowledgements wait for) advances only across ranges whose PUT
//! finished, in index order. A failed PUT hands its range back; a range in flight too
//! long (a data PUT stuck retrying) is claimed again by the shipper, since two copies of
//! committed entries are harmless to recovery and a stuck one would hold every
//! acknowledgement.
//!
//! [`RideState`] is the pure bookkeeping (times are passed in); [`LogRide`] wraps it for
//! the shipper and the write buffer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A range of log entries someone has taken to ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The leadership this claim belongs to: a claim of an earlier term is ignored.
    pub term: u64,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Default)]
pub struct RideState {
    /// Claims are taken only while this broker leads and has shipped a snapshot.
    open: bool,
    term: u64,
    /// Every entry up to here is in the bucket.
    shipped: u64,
    /// Every entry up to here is shipped or claimed.
    claimed: u64,
    /// Claims in flight: first → (last, since).
    in_flight: BTreeMap<u64, (u64, Instant)>,
    /// Finished claims past a gap: first → last.
    done: BTreeMap<u64, u64>,
    /// Claims whose PUT failed, shipped again by the next claimer: first → last.
    failed: BTreeMap<u64, u64>,
}

impl RideState {
    /// Opens claims after this broker, newly leader, shipped a snapshot up to `shipped`.
    pub fn open(&mut self, shipped: u64) {
        *self = Self {
            open: true,
            term: self.term + 1,
            shipped,
            claimed: shipped,
            ..Self::default()
        };
    }

    /// Stops claims (leadership lost); claims in flight are forgotten.
    pub fn close(&mut self) {
        *self = Self {
            term: self.term + 1,
            ..Self::default()
        };
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn shipped(&self) -> u64 {
        self.shipped
    }

    /// Whether entries up to `applied` are waiting for a claim.
    pub fn pending(&self, applied: u64) -> bool {
        self.open && (applied > self.claimed || !self.failed.is_empty())
    }

    /// Takes the next range to ship: a failed one first, then (if `stale_after` is given)
    /// one in flight for longer than that, then the entries after everything claimed, up
    /// to `applied`.
    pub fn claim(
        &mut self,
        applied: u64,
        now: Instant,
        stale_after: Option<Duration>,
    ) -> Option<Claim> {
        if !self.open {
            return None;
        }
        let (first, last) = if let Some((first, last)) = self.failed.pop_first() {
            (first, last)
        } else if let Some((&first, &(last, _))) = stale_after.and_then(|age| {
            self.in_flight
                .iter()
                .find(|(_, (_, since))| now.saturating_duration_since(*since) >= age)
        }) {
            (first, last)
        } else if applied > self.claimed {
            let range = (self.claimed + 1, applied);
            self.claimed = applied;
            range
        } else {
            return None;
        };
        self.in_flight.insert(first, (last, now));
        Some(Claim {
            term: self.term,
            first,
            last,
        })
    }

    /// Records how a claim's PUT ended; returns the new shipped mark if it advanced.
    pub fn finish(&mut self, claim: Claim, ok: bool) -> Option<u64> {
        if claim.term != self.term || !self.open {
            return None;
        }
        // A stale claim shipped again by someone else finishes twice: only the first
        // finish of a range in flight counts.
        if self.in_flight.get(&claim.first).map(|(last, _)| *last) == Some(claim.last) {
            self.in_flight.remove(&claim.first);
        } else if !ok || claim.last <= self.shipped {
            return None;
        }
        if !ok {
            if claim.last > self.shipped {
                self.failed
                    .insert(claim.first.max(self.shipped + 1), claim.last);
            }
            return None;
        }
        self.done.insert(claim.first, claim.last);
        self.advance()
    }

    /// A snapshot up to `applied` is in the bucket.
    pub fn cover(&mut self, applied: u64) -> Option<u64> {
        if !self.open || applied <= self.shipped {
            return None;
        }
        self.shipped = applied;
        self.claimed = self.claimed.max(applied);
        self.failed = std::mem::take(&mut self.failed)
            .into_iter()
            .filter(|(_, last)| *last > applied)
            .map(|(first, last)| (first.max(applied + 1), last))
            .collect();
        self.advance();
        Some(self.shipped)
    }

    fn advance(&mut self) -> Option<u64> {
        let before = self.shipped;
        while let Some((&first, &last)) = self.done.first_key_value() {
            if first > self.shipped + 1 {
                break;
            }
            self.done.pop_first();
            self.shipped = self.shipped.max(last);
        }
        (self.shipped > before).then_some(self.shipped)
    }
}

/// The claims, shared by the shipper and the write buffer, and a signal that a round of
/// data is forming (so the shipper waits for it a little instead of PUTting alone).
#[derive(Debug, Default)]
pub struct LogRide {
    state: Mutex<RideState>,
    /// Rounds of the write buffer gathering requests, not yet uploading.
    forming: AtomicUsize,
    /// Woken when a round takes a claim or stops forming.
    claimed: Notify,
}

impl LogRide {
    pub fn with<T>(&self, f: impl FnOnce(&mut RideState) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    /// A round's claim, taken as it starts its upload.
    pub fn claim_for_round(&self, applied: u64) -> Option<Claim> {
        let claim = self.with(|s| s.claim(applied, Instant::now(), None));
        if claim.is_some() {
            self.claimed.notify_waiters();
        }
        claim
    }

    /// While the guard lives, a round of data is forming.
    pub fn forming(&self) -> FormingGuard<'_> {
        self.forming.fetch_add(1, Ordering::AcqRel);
        FormingGuard(self)
    }

    pub fn is_forming(&self) -> bool {
        self.forming.load(Ordering::Acquire) > 0
    }

    /// Waits until a round takes a claim or stops forming, or `timeout`.
    pub async fn wait_claimed(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.claimed.notified()).await;
    }
}

pub struct FormingGuard<'a>(&'a LogRide);

impl Drop for FormingGuard<'_> {
    fn drop(&mut self) {
        self.0.forming.fetch_sub(1, Ordering::AcqRel);
        // A shipper waiting for this round looks again at once.
        self.0.claimed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn nothing_is_claimed_before_the_first_snapshot_or_after_leadership_is_lost() {
        let mut s = RideState::default();
        assert_eq!(s.claim(5, now(), None), None);
        s.open(3);
        let c = s.claim(5, now(), None).expect("claim");
        assert_eq!((c.first, c.last), (4, 5));
        s.close();
        assert_eq!(s.claim(9, now(), None), None);
        assert_eq!(
            s.finish(c, true),
            None,
            "a claim of an earlier term is ignored"
        );
    }

    #[test]
    fn the_mark_advances_only_across_finished_ranges_in_order() {
        let mut s = RideState::default();
        s.open(0);
        let a = s.claim(3, now(), None).expect("a");
        let b = s.claim(5, now(), None).expect("b");
        assert_eq!(
            s.finish(b, true),
            None,
            "b finished first: 1..=3 are not shipped"
        );
        assert_eq!(s.shipped(), 0);
        assert_eq!(s.finish(a, true), Some(5));
    }

    #[test]
    fn a_failed_range_is_claimed_again_first() {
        let mut s = RideState::default();
        s.open(0);
        let a = s.claim(3, now(), None).expect("a");
        assert!(s.finish(a, false).is_none());
        assert!(s.pending(3));
        let again = s.claim(7, now(), None).expect("again");
        assert_eq!((again.first, again.last), (1, 3));
        let next = s.claim(7, now(), None).expect("next");
        assert_eq!((next.first, next.last), (4, 7));
        assert_eq!(s.finish(next, true), None);
        assert_eq!(s.finish(again, true), Some(7));
    }

    #[test]
    fn a_stuck_range_is_taken_over_and_finishes_once() {
        let mut s = RideState::default();
        s.open(0);
        let t0 = now();
        let stuck = s.claim(4, t0, None).expect("stuck");
        assert_eq!(s.claim(4, t0, Some(Duration::from_secs(2))), None);
        let later = t0 + Duration::from_secs(3);
        let taken = s
            .claim(4, later, Some(Duration::from_secs(2)))
            .expect("taken");
        assert_eq!((taken.first, taken.last), (1, 4));
        assert_eq!(s.finish(taken, true), Some(4));
        assert_eq!(
            s.finish(stuck, false),
            None,
            "the late failure changes nothing"
        );
        assert!(!s.pending(4));
    }

    #[test]
    fn a_snapshot_covers_what_is_in_flight_or_failed() {
        let mut s = RideState::default();
        s.open(0);
        let a = s.claim(4, now(), None).expect("a");
        assert!(s.finish(a, false).is_none());
        assert_eq!(s.cover(6), Some(6));
        assert!(!s.pending(6));
        let b = s.claim(8, now(), None).expect("b");
        assert_eq!((b.first, b.last), (7, 8));
    }

    proptest! {
        /// Whatever order claims finish in, and however many fail, the shipped mark never
        /// passes an entry whose range has not finished well, and once every claim has
        /// finished well (failed ones claimed again) everything applied is shipped.
        #[test]
        fn the_mark_never_passes_an_unshipped_entry(
            steps in proptest::collection::vec((0u8..4, 0usize..8, any::<bool>()), 1..80)
        ) {
            let mut s = RideState::default();
            s.open(0);
            let mut applied = 0u64;
            let mut outstanding: Vec<Claim> = Vec::new();
            let mut in_bucket = std::collections::BTreeSet::new();
            for (op, pick, ok) in steps {
                match op {
                    0 => applied += 1 + pick as u64,
                    1 => outstanding.extend(s.claim(applied, now(), None)),
                    _ if !outstanding.is_empty() => {
                        let c = outstanding.remove(pick % outstanding.len());
                        if ok {
                            in_bucket.extend(c.first..=c.last);
                        }
                        s.finish(c, ok);
                    }
                    _ => {}
                }
                prop_assert!((1..=s.shipped()).all(|i| in_bucket.contains(&i)));
            }
            for c in outstanding.drain(..) {
                in_bucket.extend(c.first..=c.last);
                s.finish(c, true);
            }
            while let Some(c) = s.claim(applied, now(), None) {
                in_bucket.extend(c.first..=c.last);
                s.finish(c, true);
            }
            prop_assert_eq!(s.shipped(), applied);
            prop_assert!((1..=applied).all(|i| in_bucket.contains(&i)));
        }
    }
}
