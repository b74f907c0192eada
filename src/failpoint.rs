//! Failpoints: named places where a test makes the broker fail on purpose, chosen with
//! `STRATA_FAILPOINT=<name>` (an upload whose commit never comes, a crash between a
//! compaction's upload and its swap, a Raft disk that refuses writes).
//!
//! They exist only in builds with the `failpoints` feature, which the test command
//! enables and release builds leave off: a production binary neither reads the variable
//! nor carries the code paths.

/// Whether the failpoint `name` is switched on for this process.
#[cfg(feature = "failpoints")]
pub fn on(name: &str) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| std::env::var("STRATA_FAILPOINT").ok())
        .as_deref()
        == Some(name)
}

/// Whether the failpoint `name` is switched on: never, without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn on(_name: &str) -> bool {
    false
}
