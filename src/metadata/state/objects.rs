//! The object table: every object the index can point at, by a small numeric id, and
//! the deletion queue of objects whose last reference went.
//!
//! Index entries name objects by id (8 bytes) rather than by name (about 50 bytes), and
//! the table holds each name once. An object's life: committed (`add`), referenced by
//! index entries (`acquire`/`release`), garbage once the last reference goes (with the
//! time it became garbage), deleted from the store by the leader after a grace period
//! that covers reads in flight, then forgotten here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type ObjectId = u64;

/// What an object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// One flush of a write buffer: chunks of many partitions (the tail).
    Flush,
    /// A compacted, single-partition segment with a sparse offset and timestamp index
    /// in its footer.
    Segment,
    /// A segment written by the log cleaner (format 4): like `Segment`, but it holds only
    /// the latest record of each key, so its offsets have gaps.
    Cleaned,
    /// A shared compacted object (format 7): sections of many partitions, each with its
    /// own sparse index after its data; one reference per section indexed.
    Shared,
}

impl ObjectKind {
    /// Whether entries in it are compacted (offsets in the batch headers, read through a
    /// frame index): anything but a flush.
    pub fn is_compacted(self) -> bool {
        !matches!(self, ObjectKind::Flush)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub kind: ObjectKind,
    /// When it was uploaded (flush objects) or swapped in (segments).
    pub created_ms: i64,
    /// Index entries pointing into it.
    pub refs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    pub name: String,
    /// The state's clock when the last reference went.
    pub since_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "ObjectsRepr")]
pub struct Objects {
    next_id: ObjectId,
    live: BTreeMap<ObjectId, ObjectInfo>,
    garbage: BTreeMap<ObjectId, Garbage>,
    /// Names of live and garbage objects: an object is committed at most once, and a
    /// name still known here is never mistaken for an orphan. Derived, so not encoded:
    /// it would hold every name a second time.
    by_name: BTreeMap<String, ObjectId>,
}

/// What is encoded of [`Objects`] (field order is the format).
#[derive(Deserialize)]
struct ObjectsRepr {
    next_id: ObjectId,
    live: BTreeMap<ObjectId, ObjectInfo>,
    garbage: BTreeMap<ObjectId, Garbage>,
}

#[derive(Serialize)]
struct ObjectsRef<'a> {
    next_id: ObjectId,
    live: &'a BTreeMap<ObjectId, ObjectInfo>,
    garbage: &'a BTreeMap<ObjectId, Garbage>,
}

impl Serialize for Objects {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ObjectsRef {
            next_id: self.next_id,
            live: &self.live,
            garbage: &self.garbage,
        }
        .serialize(serializer)
    }
}

impl From<ObjectsRepr> for Objects {
    fn from(repr: ObjectsRepr) -> Self {
        let by_name = repr
            .live
            .iter()
            .map(|(id, info)| (info.name.clone(), *id))
            .chain(repr.garbage.iter().map(|(id, g)| (g.name.clone(), *id)))
            .collect();
        Self {
            next_id: repr.next_id,
            live: repr.live,
            garbage: repr.garbage,
            by_name,
        }
    }
}

impl Objects {
    /// Registers a new object with no references; None if the name is already known.
    pub(in crate::metadata) fn add(
        &mut self,
        name: &str,
        size: u64,
        kind: ObjectKind,
        created_ms: i64,
    ) -> Option<ObjectId> {
        if self.by_name.contains_key(name) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_name.insert(name.to_owned(), id);
        self.live.insert(
            id,
            ObjectInfo {
                name: name.to_owned(),
                size,
                kind,
                created_ms,
                refs: 0,
            },
        );
        Some(id)
    }

    pub(in crate::metadata) fn acquire(&mut self, id: ObjectId) {
        if let Some(info) = self.live.get_mut(&id) {
            info.refs += 1;
        }
    }

    /// Drops one reference; the last one sends the object to the deletion queue.
    pub(super) fn release(&mut self, id: ObjectId, now_ms: i64) {
        let Some(info) = self.live.get_mut(&id) else {
            return;
        };
        info.refs = info.refs.saturating_sub(1);
        if info.refs == 0 {
            self.retire(id, now_ms);
        }
    }

    /// An object nothing refers to (every entry of a commit refused, say) is garbage.
    pub(super) fn retire_if_unused(&mut self, id: ObjectId, now_ms: i64) {
        if self.live.get(&id).is_some_and(|info| info.refs == 0) {
            self.retire(id, now_ms);
        }
    }

    fn retire(&mut self, id: ObjectId, now_ms: i64) {
        if let Some(info) = self.live.remove(&id) {
            self.garbage.insert(
                id,
                Garbage {
                    name: info.name,
                    since_ms: now_ms,
                },
            );
        }
    }

    /// The store deleted these: forget them for good.
    pub(super) fn forget(&mut self, ids: &[ObjectId]) {
        for id in ids {
            if let Some(g) = self.garbage.remove(id) {
                self.by_name.remove(&g.name);
            }
        }
    }

    pub fn get(&self, id: ObjectId) -> Option<&ObjectInfo> {
        self.live.get(&id)
    }

    pub fn id_of(&self, name: &str) -> Option<ObjectId> {
        self.by_name.get(name).copied()
    }

    /// Whether the name is a live or garbage object (so not an orphan).
    pub fn is_known(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn refs(&self, name: &str) -> u32 {
        self.id_of(name)
            .and_then(|id| self.live.get(&id))
            .map_or(0, |info| info.refs)
    }

    pub fn live(&self) -> impl Iterator<Item = (ObjectId, &ObjectInfo)> {
        self.live.iter().map(|(id, info)| (*id, info))
    }

    pub fn garbage(&self) -> impl Iterator<Item = (ObjectId, &Garbage)> {
        self.garbage.iter().map(|(id, g)| (*id, g))
    }

    /// Garbage whose grace period is over at `now_ms` and that became garbage before
    /// the state's clock reached `before_ms`.
    pub fn garbage_due(
        &self,
        now_ms: i64,
        grace_ms: i64,
        before_ms: i64,
    ) -> Vec<(ObjectId, String)> {
        self.garbage
            .iter()
            .filter(|(_, g)| {
                g.since_ms.saturating_add(grace_ms) <= now_ms && g.since_ms < before_ms
            })
            .map(|(id, g)| (*id, g.name.clone()))
            .collect()
    }

    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn garbage_count(&self) -> usize {
        self.garbage.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.garbage.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_add_reference_release_forget() {
        let mut o = Objects::default();
        let a = o.add("a", 10, ObjectKind::Flush, 1).expect("new name");
        assert_eq!(o.add("a", 10, ObjectKind::Flush, 1), None);
        o.acquire(a);
        o.acquire(a);
        o.release(a, 5);
        assert_eq!(o.refs("a"), 1);
        assert_eq!(o.garbage_count(), 0);
        o.release(a, 7);
        assert_eq!(o.refs("a"), 0);
        assert!(o.get(a).is_none());
        assert!(o.is_known("a"), "garbage is still known");
        assert!(o.garbage_due(66, 60, i64::MAX).is_empty());
        assert!(
            o.garbage_due(67, 60, 7).is_empty(),
            "not yet in a shipped snapshot"
        );
        assert_eq!(o.garbage_due(67, 60, 8), vec![(a, "a".to_string())]);
        o.forget(&[a]);
        assert!(!o.is_known("a"));
        assert!(o.is_empty());
        // Ids are never reused.
        let b = o
            .add("a", 1, ObjectKind::Segment, 9)
            .expect("forgotten name");
        assert_ne!(a, b);
    }
}
