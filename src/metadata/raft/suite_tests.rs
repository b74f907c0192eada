//! openraft's own storage test suite, run against the real log and state-machine stores
//! (files in a temporary directory), so the glue meets every contract openraft relies on.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

use super::*;

struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStores {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let io = |e: io::Error| StorageError::from(openraft::StorageIOError::read(&e));
        let dir = tempfile::tempdir().map_err(io)?;
        let glue = |e: RaftGlueError| io(io::Error::other(e.to_string()));
        let log = LogStore::open(dir.path()).map_err(glue)?;
        let (sm, _state, _applied) = StateMachineStore::open(dir.path()).map_err(glue)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Ok(Suite::test_all(TempStores)?)
}
