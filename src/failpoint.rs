//! Failpoints: named places where a test makes the broker fail on purpose, chosen with
//! `STRATA_FAILPOINT=<name>` (an upload whose commit never comes, a crash between a
//! compaction's upload and its swap, a Raft disk that refuses writes). A crash
//! failpoint aborts the process, or waits there to be killed
//! (`STRATA_FAILPOINT_ACTION=wait`, see [`crash`]).
//!
//! A second kind is a switch file a test creates and removes while the broker runs (the
//! Raft port's `ISOLATE`: the node stops talking to its peers).
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

/// Stops the process at the failpoint `name` when it is switched on: aborts at once, or,
/// with `STRATA_FAILPOINT_ACTION=wait`, logs `failpoint <name> reached` and never
/// returns (the calling task waits forever while the rest of the broker runs on), so
/// that a test can kill the process with SIGKILL there.
#[cfg(feature = "failpoints")]
pub async fn crash(name: &str) {
    if !on(name) {
        return;
    }
    if std::env::var("STRATA_FAILPOINT_ACTION").as_deref() == Ok("wait") {
        tracing::warn!("failpoint {name} reached: waiting to be killed");
        std::future::pending::<()>().await;
    }
    tracing::warn!("failpoint {name}: aborting");
    std::process::abort();
}

/// Stops the process at the failpoint `name`: never, without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn crash(_name: &str) {}

/// Whether the switch file `path` exists now (checked on every call, so a test can flip
/// it while the broker runs).
#[cfg(feature = "failpoints")]
pub fn switch_on(path: &std::path::Path) -> bool {
    path.exists()
}

/// Whether the switch file `path` exists: never asked, without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn switch_on(_path: &std::path::Path) -> bool {
    false
}
