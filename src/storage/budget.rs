//! The PUT budget (`max_puts_per_second`): S3 bills every PUT, so a broker's PUTs are
//! bounded, averaged over a minute, whatever the load shape.
//!
//! Two token buckets share the rate: the foreground's (data objects, the metadata log,
//! snapshots) gets four fifths, the background's (compaction, the cleaner, garbage
//! collection's listings) one fifth, so neither starves the other. Each holds a few
//! seconds of its rate. Every PUT takes a token whether or not one is there: what cannot
//! wait (a full object under load, the metadata log an acknowledgement waits for) is
//! never held back, and the debt it runs up is paid by what can wait. The write buffer
//! waits for a token before it uploads an object that is not full, gathering more
//! requests meanwhile, so at a trickle many requests share one PUT; compaction and the
//! cleaner start a round only when their bucket has a token. Under load, objects fill
//! before the interval and nothing changes.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Seconds of the rate the bucket holds: a burst of this many seconds' PUTs is allowed,
/// so a minute never sees more than `(60 + BURST_SECONDS) × rate`.
const BURST_SECONDS: f64 = 5.0;

/// The background's share of the rate.
const BACKGROUND_SHARE: f64 = 0.2;

/// Which bucket a PUT is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Produce and what acknowledgements wait for.
    Foreground,
    /// Work that can be put off.
    Background,
}

#[derive(Debug)]
pub struct PutBudget {
    rate: f64,
    foreground: TokenBucket,
    background: TokenBucket,
}

impl PutBudget {
    /// A budget of `rate` PUTs per second (at least one a second).
    pub fn new(rate: f64) -> Self {
        let rate = rate.max(1.0);
        Self {
            rate,
            foreground: TokenBucket::new(rate * (1.0 - BACKGROUND_SHARE)),
            background: TokenBucket::new(rate * BACKGROUND_SHARE),
        }
    }

    /// PUTs per second, both buckets together.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The PUTs per second of `class`'s share.
    pub fn class_rate(&self, class: Class) -> f64 {
        self.bucket(class).rate
    }

    fn bucket(&self, class: Class) -> &TokenBucket {
        match class {
            Class::Foreground => &self.foreground,
            Class::Background => &self.background,
        }
    }

    /// The tokens of `class` now (negative: a debt being paid back).
    pub fn available(&self, class: Class) -> f64 {
        self.bucket(class).available()
    }

    /// Takes one token of `class` for a PUT being sent, going into debt if there is none.
    pub fn charge(&self, class: Class) {
        self.bucket(class).charge();
    }

    /// Resolves once `class` has a token.
    pub async fn ready(&self, class: Class) {
        self.bucket(class).ready().await;
    }
}

/// A token bucket refilled at `rate`, holding `BURST_SECONDS` of it; its debt is bounded
/// by one bucket, so a burst of load is forgotten within a few seconds of it.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    capacity: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        let capacity = (rate * BURST_SECONDS).max(1.0);
        Self {
            rate,
            capacity,
            bucket: Mutex::new(Bucket {
                tokens: capacity,
                at: Instant::now(),
            }),
        }
    }

    fn available(&self) -> f64 {
        self.with_bucket(|b| b.tokens)
    }

    fn charge(&self) {
        let capacity = self.capacity;
        self.with_bucket(|b| b.tokens = (b.tokens - 1.0).max(-capacity));
    }

    async fn ready(&self) {
        loop {
            let missing = 1.0 - self.available();
            if missing <= 0.0 {
                return;
            }
            let wait = Duration::from_secs_f64(missing / self.rate);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    fn with_bucket<R>(&self, f: impl FnOnce(&mut Bucket) -> R) -> R {
        let mut b = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.capacity);
        b.at = now;
        f(&mut b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_minute_holds_the_rate_and_one_burst() {
        let budget = PutBudget::new(10.0);
        let start = Instant::now();
        let mut puts = 0u32;
        while start.elapsed() < Duration::from_secs(60) {
            budget.ready(Class::Foreground).await;
            budget.charge(Class::Foreground);
            puts += 1;
        }
        // The foreground's 8 a second for 60 s, plus the burst its bucket starts with.
        assert!((480..=521).contains(&puts), "{puts} PUTs in a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn what_cannot_wait_runs_a_debt_that_waiting_work_pays() {
        let budget = PutBudget::new(10.0);
        for _ in 0..200 {
            budget.charge(Class::Foreground);
        }
        // The debt is capped at one bucket: 5 s of the foreground's 8 a second.
        assert!((budget.available(Class::Foreground) + 40.0).abs() < 0.01);
        // The background's bucket is untouched by it.
        assert!(budget.available(Class::Background) >= 9.9);
        let start = Instant::now();
        budget.ready(Class::Foreground).await;
        let waited = start.elapsed().as_secs_f64();
        assert!((5.0..5.2).contains(&waited), "waited {waited} s");
    }
}
