//! Unique member ids, `{client_id}-{uuid-like}`, without a uuid dependency.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The counter makes ids unique within the process; the randomly keyed hash of
/// time and counter makes them unguessable and distinct across restarts.
pub(super) fn generate(client_id: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u64(n);
    let r = h.finish();
    format!(
        "{client_id}-{:08x}-{:04x}-{:04x}-{:012x}",
        (r >> 32) as u32,
        (r >> 16) as u16,
        r as u16,
        n & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_prefixed() {
        let a = super::generate("c");
        let b = super::generate("c");
        assert_ne!(a, b);
        assert!(a.starts_with("c-"));
    }
}
