//! The state machine side of the Raft glue: applying entries, building, installing and
//! reading snapshots.

use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::super::codec::{self, Kind};
use super::super::state::{MetadataState, Response};
use super::files::*;
use super::*;

/// `meta` comes first so that [`read_current_snapshot`] can stop after it.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub(super) meta: SnapshotMeta<NodeId, BasicNode>,
    pub(super) state: MetadataState,
}

pub(super) fn read_snapshot(path: &Path) -> Result<Option<SnapshotFile>, RaftGlueError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    codec::decode(Kind::LocalSnapshot, &bytes)
        .map(Some)
        .map_err(|e| RaftGlueError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The snapshot's meta and its whole encoded bytes, without decoding the state: openraft
/// asks for the current snapshot to send it to a follower, which only needs the bytes.
pub(super) fn read_current_snapshot(path: &Path) -> io::Result<Option<Snapshot<TypeConfig>>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (meta, _) = codec::decode_prefix(Kind::LocalSnapshot, &bytes).map_err(io::Error::other)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(bytes)),
    }))
}

/// Runs blocking work (encoding, decoding, fsync) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

pub(super) struct StateMachineStore {
    pub(super) dir: PathBuf,
    pub(super) state: Arc<RwLock<MetadataState>>,
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) last_membership: StoredMembership<NodeId, BasicNode>,
    pub(super) applied_tx: watch::Sender<u64>,
}

pub(super) type SmParts = (
    StateMachineStore,
    Arc<RwLock<MetadataState>>,
    watch::Receiver<u64>,
);

impl StateMachineStore {
    pub(super) fn open(dir: &Path) -> Result<SmParts, RaftGlueError> {
        let snap = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
        let (meta, state) = snap.map(|s| (s.meta, s.state)).unwrap_or_default();
        let state = Arc::new(RwLock::new(state));
        let (applied_tx, applied_rx) =
            watch::channel(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        let sm = Self {
            dir: dir.to_path_buf(),
            state: state.clone(),
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership,
            applied_tx,
        };
        Ok((sm, state, applied_rx))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let resp = match entry.payload {
                    EntryPayload::Normal(cmd) => state.apply(&cmd),
                    EntryPayload::Membership(m) => {
                        self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::default()
                    }
                    EntryPayload::Blank => Response::default(),
                };
                responses.push(resp);
            }
            // Under the lock, so that a reader holding it sees the state and its index
            // together (a shipped snapshot must say exactly which entries it holds).
            if let Some(l) = self.last_applied {
                self.applied_tx.send_replace(l.index);
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copy now: the builder may run while later entries are being applied.
        SnapshotBuilder {
            dir: self.dir.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            state: self
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let len = bytes.len();
        let path = self.dir.join(SNAPSHOT_FILE);
        // Decoded before it is written: a snapshot that does not decode must not replace
        // the good one on disk.
        let decoded = blocking(move || {
            let snap: SnapshotFile =
                codec::decode(Kind::LocalSnapshot, &bytes).map_err(io::Error::other)?;
            Ok((snap, bytes))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let (snap, bytes) = decoded;
        blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = len,
            "installed a metadata snapshot from the leader"
        );
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        *state = snap.state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.applied_tx
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        drop(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let path = self.dir.join(SNAPSHOT_FILE);
        Ok(blocking(move || read_current_snapshot(&path))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?)
    }
}

pub(super) struct SnapshotBuilder {
    pub(super) dir: PathBuf,
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) last_membership: StoredMembership<NodeId, BasicNode>,
    pub(super) state: MetadataState,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            state: std::mem::take(&mut self.state),
        };
        let path = self.dir.join(SNAPSHOT_FILE);
        // A large state takes a while to encode and write; keep it off the async workers
        // that serve clients. Must be durable before returning: openraft purges the log up
        // to this point next.
        let bytes = blocking(move || {
            let bytes = codec::encode(Kind::LocalSnapshot, &file).map_err(io::Error::other)?;
            write_atomic(&path, &bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
