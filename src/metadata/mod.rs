//! Metadata: the pure state machine and the Raft log that orders its commands.

pub mod raft;
pub mod shipping;
pub mod state;

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use self::raft::{MetadataRaft, RaftGlueError};
use self::state::{Command, MetadataState, Response};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Raft(#[from] RaftGlueError),
}

/// The broker's view of the metadata: propose through Raft, read the local replica.
pub struct Metadata {
    raft: MetadataRaft,
    state: Arc<RwLock<MetadataState>>,
}

impl Metadata {
    pub async fn open(
        node_id: u64,
        dir: &Path,
        snapshot_every: u64,
    ) -> Result<Self, MetadataError> {
        let raft = MetadataRaft::start(node_id, dir, snapshot_every).await?;
        let state = raft.state();
        Ok(Self { raft, state })
    }

    pub async fn propose(&self, cmd: Command) -> Result<Response, MetadataError> {
        Ok(self.raft.propose(cmd).await?)
    }

    /// Runs `f` on the applied state. Keep `f` short: appliers wait on this lock.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// Changes whenever committed entries are applied; long-poll fetches wait on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.raft.applied()
    }

    pub async fn shutdown(&self) -> Result<(), MetadataError> {
        Ok(self.raft.shutdown().await?)
    }
}
