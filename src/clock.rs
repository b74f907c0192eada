//! The broker's one wall clock.
//!
//! Everything that stamps or compares wall-clock time (Kafka timestamps, retention,
//! transaction timeouts, object names) reads it here, so a test can shift one broker's
//! clock and nothing keeps a second, unshifted one. Replicated logic never reads it: the
//! metadata state machine takes its time from the command that carries it.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as Kafka reports wall-clock time.
pub fn now_ms() -> i64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    wall.saturating_add(test_offset_ms())
}

/// TEST ONLY: `STRATA_TEST_CLOCK_OFFSET_MS` (signed milliseconds) shifts this broker's
/// wall clock, so tests can show that clock skew between brokers does not disturb
/// liveness (which compares no wall clocks across brokers). Never set it in production.
fn test_offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("STRATA_TEST_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}
