//! What bounds the front end: connections open (in all and per client IP address, as
//! Kafka's `max.connections` and `max.connections.per.ip`) and the bytes of requests
//! being read or handled over all connections (`max_inflight_request_bytes`), shared so
//! that no client's large frames hold back everyone's small ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::telemetry::ConnectionGauges;

/// Why a new connection is closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("max_connections ({0}) reached")]
    Total(usize),
    #[error("max_connections_per_ip ({0}) reached for this address")]
    PerIp(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only addresses with a connection open: the map cannot grow past the total.
    per_ip: HashMap<IpAddr, usize>,
}

/// Connections open, in all and per IP address.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
    gauges: Arc<ConnectionGauges>,
}

/// One open connection's place in the counts, given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize, gauges: Arc<ConnectionGauges>) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
            gauges,
        })
    }

    /// Counts a new connection from `ip`, unless that would pass a limit.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        // The counts stay consistent whatever panicked while holding the lock: every
        // change under it is a single step.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refused::Total(self.max_total));
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refused::PerIp(self.max_per_ip));
        }
        *from_ip += 1;
        counts.total += 1;
        self.gauges
            .open
            .store(counts.total as u64, Ordering::Relaxed);
        Ok(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut counts = limits.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
        limits
            .gauges
            .open
            .store(counts.total as u64, Ordering::Relaxed);
    }
}

/// Frames up to this size are small: ApiVersions, Metadata, heartbeats, offset commits,
/// fetch requests and most produce requests (a producer's default `max.request.size` is
/// 1 MB). Only they may draw on the reserve, so they get through while large ones wait.
pub const SMALL_FRAME: usize = 1 << 20;

/// The budget of request bytes being read or handled, over all connections, counted in
/// KiB so that a large budget fits a semaphore's u32 permit count.
///
/// Three rules keep one client's large frames from starving everyone else:
/// - A shared pool, first come first served, so a large frame is not starved by small
///   ones.
/// - A reserve (an eighth of the budget) only small frames may use: when large frames
///   hold the shared pool, a Metadata request, a heartbeat or a small produce still gets
///   through.
/// - A connection holds at most a quarter of the budget (or one largest frame) at once;
///   past that it reads nothing more until its own requests are answered.
#[derive(Debug)]
pub struct RequestBudget {
    shared: Pool,
    reserve: Pool,
    per_connection_kib: u32,
    gauges: Arc<ConnectionGauges>,
}

#[derive(Debug)]
struct Pool {
    permits: Arc<Semaphore>,
    capacity_kib: u32,
}

impl Pool {
    fn new(kib: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(kib as usize)),
            capacity_kib: kib,
        }
    }

    /// Never more than the whole pool, so that any frame is admitted once everything
    /// else is given back (config already keeps frames within the budget).
    fn cost(&self, bytes: usize) -> u32 {
        kib(bytes).clamp(1, self.capacity_kib)
    }

    fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .try_acquire_many_owned(self.cost(bytes))
            .ok()
    }

    async fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, AcquireError> {
        self.permits
            .clone()
            .acquire_many_owned(self.cost(bytes))
            .await
    }
}

/// One connection's part of the budget: what its frames in flight may hold at once.
#[derive(Debug)]
pub struct ConnectionShare(Pool);

/// Bytes of one request charged to the budget, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    _own: OwnedSemaphorePermit,
    _pool: OwnedSemaphorePermit,
    bytes: u64,
    gauges: Arc<ConnectionGauges>,
}

impl RequestBudget {
    /// A budget of `bytes`, of which frames are at most `max_frame`.
    pub fn new(bytes: usize, max_frame: usize, gauges: Arc<ConnectionGauges>) -> Self {
        let capacity_kib = kib(bytes).max(2);
        let reserve_kib = (capacity_kib / 8).max(1);
        let shared_kib = capacity_kib - reserve_kib;
        Self {
            shared: Pool::new(shared_kib),
            reserve: Pool::new(reserve_kib),
            per_connection_kib: (capacity_kib / 4).max(kib(max_frame)).max(1),
            gauges,
        }
    }

    /// The share a new connection's frames draw on before the pools.
    pub fn connection_share(&self) -> ConnectionShare {
        ConnectionShare(Pool::new(self.per_connection_kib))
    }

    /// Charges `bytes` if the budget has room now and nobody is waiting before us.
    pub fn try_charge(&self, share: &ConnectionShare, bytes: usize) -> Option<Charge> {
        let own = share.0.try_take(bytes)?;
        let pool = self.shared.try_take(bytes).or_else(|| {
            (bytes <= SMALL_FRAME)
                .then(|| self.reserve.try_take(bytes))
                .flatten()
        })?;
        Some(self.charged(own, pool, bytes))
    }

    /// Waits until `bytes` fit: this connection's share, then the shared pool (or, for
    /// a small frame, the reserve, whichever frees first). Fails only if a semaphore
    /// was closed, which never happens while the budget exists.
    pub async fn charge(
        &self,
        share: &ConnectionShare,
        bytes: usize,
    ) -> Result<Charge, AcquireError> {
        let own = share.0.take(bytes).await?;
        let pool = if bytes <= SMALL_FRAME {
            tokio::select! {
                shared = self.shared.take(bytes) => shared?,
                reserve = self.reserve.take(bytes) => reserve?,
            }
        } else {
            self.shared.take(bytes).await?
        };
        Ok(self.charged(own, pool, bytes))
    }

    fn charged(
        &self,
        own: OwnedSemaphorePermit,
        pool: OwnedSemaphorePermit,
        bytes: usize,
    ) -> Charge {
        let bytes = bytes as u64;
        self.gauges
            .inflight_request_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        Charge {
            _own: own,
            _pool: pool,
            bytes,
            gauges: self.gauges.clone(),
        }
    }

    /// KiB not charged now (the shared pool and the reserve).
    pub fn available_kib(&self) -> usize {
        self.shared.permits.available_permits() + self.reserve.permits.available_permits()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.gauges
            .inflight_request_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// At most one warning per period; says how many events it stands for.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    unreported: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            unreported: 0,
        }
    }

    /// Records one event; Some(events since the last warning, this one included) when a
    /// warning is due.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;

    impl ConnectionLimits {
        fn open_from(&self, ip: IpAddr) -> usize {
            let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            counts.per_ip.get(&ip).copied().unwrap_or(0)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test setup")
    }

    #[test]
    fn per_ip_limit_counts_each_address_alone() -> TestResult {
        let limits = ConnectionLimits::new(10, 2, Arc::default());
        let a1 = limits.try_open(ip("10.0.0.1"))?;
        let a2 = limits.try_open(ip("10.0.0.1"))?;
        assert_eq!(
            limits.try_open(ip("10.0.0.1")).unwrap_err(),
            Refused::PerIp(2)
        );
        // Another address is not held back by the first one's connections.
        let b1 = limits.try_open(ip("::1"))?;
        assert_eq!((limits.open(), limits.open_from(ip("10.0.0.1"))), (3, 2));
        drop(a1);
        let a3 = limits.try_open(ip("10.0.0.1"))?;
        drop((a2, a3, b1));
        assert_eq!(limits.open(), 0);
        // Addresses with nothing open are forgotten.
        assert!(limits
            .counts
            .lock()
            .map_err(|_| "poisoned")?
            .per_ip
            .is_empty());
        Ok(())
    }

    #[test]
    fn total_limit_applies_over_all_addresses() -> TestResult {
        let gauges = Arc::new(ConnectionGauges::default());
        let limits = ConnectionLimits::new(3, 2, gauges.clone());
        let held: Vec<_> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|a| limits.try_open(ip(a)))
            .collect::<Result<_, _>>()?;
        assert_eq!(gauges.open.load(Ordering::Relaxed), 3);
        assert_eq!(
            limits.try_open(ip("10.0.0.4")).unwrap_err(),
            Refused::Total(3)
        );
        // A refusal leaves no trace in the counts.
        assert_eq!(limits.open_from(ip("10.0.0.4")), 0);
        drop(held);
        assert_eq!(gauges.open.load(Ordering::Relaxed), 0);
        assert!(limits.try_open(ip("10.0.0.4")).is_ok());
        Ok(())
    }

    #[tokio::test]
    async fn budget_waits_then_admits_in_order() -> TestResult {
        let gauges = Arc::new(ConnectionGauges::default());
        // 16 KiB: 14 shared, 2 reserved for small frames; a connection holds at most 4.
        let budget = Arc::new(RequestBudget::new(16 * 1024, 4 * 1024, gauges.clone()));
        let shares: Vec<_> = (0..6).map(|_| budget.connection_share()).collect();
        let held: Vec<_> = (0..3)
            .map(|i| budget.try_charge(&shares[i], 4 * 1024).ok_or("no budget"))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            gauges.inflight_request_bytes.load(Ordering::Relaxed),
            12 * 1024
        );
        // 3 KiB do not fit beside 12 in the shared pool; small frames may use the reserve.
        let small = budget.try_charge(&shares[3], 1).ok_or("no budget")?;
        assert_eq!(budget.available_kib(), 3);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move {
                let share = budget.connection_share();
                budget.charge(&share, 3 * 1024).await.map(|c| c.bytes)
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiting.await??, 3 * 1024);
        drop(small);
        assert_eq!(budget.available_kib(), 16);
        assert_eq!(gauges.inflight_request_bytes.load(Ordering::Relaxed), 0);
        Ok(())
    }

    #[tokio::test]
    async fn small_frames_pass_large_ones_that_wait() -> TestResult {
        let budget = Arc::new(RequestBudget::new(64 << 20, 60 << 20, Arc::default()));
        let big = budget.connection_share();
        // One large frame holds the shared pool; the next waits for it.
        let first = budget.try_charge(&big, 55 << 20).ok_or("no budget")?;
        let other = budget.connection_share();
        assert!(budget.try_charge(&other, 55 << 20).is_none());
        // A small frame of a third connection still gets in, from the reserve.
        let third = budget.connection_share();
        let small = tokio::time::timeout(Duration::from_secs(1), budget.charge(&third, 10_000))
            .await
            .map_err(|_| "a small frame waited behind a large one")??;
        drop((first, small));
        Ok(())
    }

    #[test]
    fn a_connection_holds_at_most_its_share() -> TestResult {
        let budget = RequestBudget::new(16 * 1024, 1024, Arc::default());
        let share = budget.connection_share();
        let held: Vec<_> = (0..4)
            .map(|_| budget.try_charge(&share, 1024).ok_or("no budget"))
            .collect::<Result<_, _>>()?;
        // A quarter of the budget: the fifth frame of this connection waits for its own.
        assert!(budget.try_charge(&share, 1024).is_none());
        // Another connection is not held back by it.
        assert!(budget
            .try_charge(&budget.connection_share(), 1024)
            .is_some());
        drop(held);
        assert!(budget.try_charge(&share, 1024).is_some());
        Ok(())
    }

    #[test]
    fn budget_beyond_u32_kib_is_capped_not_wrapped() -> TestResult {
        assert_eq!(kib(usize::MAX), u32::MAX);
        assert_eq!(kib(1025), 2);
        Ok(())
    }

    #[test]
    fn throttle_reports_once_per_period_with_a_count() -> TestResult {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.note(t0), Some(1));
        assert_eq!(t.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.note(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.note(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(t.note(t0 + Duration::from_secs(11)), None);
        Ok(())
    }
}
