//! A value built from files and rebuilt when they change on disk: the TLS certificate
//! (`tls.rs`) and the OAUTHBEARER JWKS (`jwks.rs`). A new connection or authentication
//! asks for the current value; at most once per [`RELOAD_CHECK_EVERY`] that looks at
//! the files' modification times and lengths (a few `stat`s, short enough to make on
//! the caller's task) and, when they changed, rebuilds the value and swaps it in. A
//! rebuild that fails keeps the previous value; the caller logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

/// The files are looked at no more often than this.
pub const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What tells a changed file: its modification time and length.
type Stamp = (SystemTime, u64);

pub struct Reloading<T> {
    paths: Vec<PathBuf>,
    current: ArcSwap<T>,
    watch: Mutex<Watch>,
}

struct Watch {
    checked: Instant,
    stamps: Vec<Option<Stamp>>,
}

impl<T> Reloading<T> {
    /// Builds the first value; the files' stamps are taken before, so a change made
    /// while it is read is picked up by the next check.
    pub fn load<E>(
        paths: Vec<PathBuf>,
        build: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Self, E> {
        let stamps = stamps(&paths);
        let value = build()?;
        Ok(Self {
            paths,
            current: ArcSwap::new(value),
            watch: Mutex::new(Watch {
                checked: Instant::now(),
                stamps,
            }),
        })
    }

    /// The current value, without looking at the files.
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Rebuilds with `build` if a file changed since the last check (made at most once
    /// per [`RELOAD_CHECK_EVERY`], and by one caller at a time): None when it did not
    /// try, else whether the new value is in use.
    pub fn reload_if_changed<E>(
        &self,
        now: Instant,
        build: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Option<Result<(), E>> {
        // Another caller is checking: it swaps the value if needed.
        let Ok(mut watch) = self.watch.try_lock() else {
            return None;
        };
        if now < watch.checked + RELOAD_CHECK_EVERY {
            return None;
        }
        watch.checked = now;
        let stamps = stamps(&self.paths);
        if stamps == watch.stamps {
            return None;
        }
        // Noted before reading: a write that lands after it changes the stamps again
        // and is picked up by the next check (so is a key written after its cert).
        watch.stamps = stamps;
        Some(build().map(|value| self.current.store(value)))
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    paths.iter().map(|p| stamp(p)).collect()
}
