//! A bounded in-memory cache of object chunks, so tail reads never touch the store.
//!
//! Keyed by (object, position): the unit the index points at. FIFO eviction is enough here;
//! the foyer hybrid cache replaces this in the performance work.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

type Key = (String, u64);

pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Bytes>,
    order: VecDeque<Key>,
    size: usize,
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, object: &str, position: u64) -> Option<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.map.get(&(object.to_owned(), position)).cloned()
    }

    pub fn insert(&self, object: &str, position: u64, data: Bytes) {
        if data.len() > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (object.to_owned(), position);
        let len = data.len();
        if let Some(old) = inner.map.insert(key.clone(), data) {
            inner.size -= old.len();
        } else {
            inner.order.push_back(key);
        }
        inner.size += len;
        while inner.size > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.size -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let cache = BlockCache::new(10);
        cache.insert("a", 0, Bytes::from_static(b"123456"));
        cache.insert("b", 0, Bytes::from_static(b"123456"));
        assert!(cache.get("a", 0).is_none());
        assert_eq!(cache.get("b", 0).as_deref(), Some(&b"123456"[..]));
        cache.insert("c", 0, Bytes::from_static(b"12345678901"));
        assert!(cache.get("c", 0).is_none());
    }
}
