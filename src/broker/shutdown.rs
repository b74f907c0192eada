//! A graceful stop: the listener has stopped taking requests; what was buffered is
//! flushed and committed (within a bound), the background work stops, the broker
//! deregisters so its partitions and groups move at once, and the bucket gets the latest
//! metadata snapshot so a replacement starts from exactly here.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::start::BrokerTasks;
use super::Broker;
use crate::metadata::{shipping, MetadataError};

/// The longest a stop waits for buffered requests to be committed. Every acknowledged
/// record is in the store already; this only gives the last requests their answer.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

impl Broker {
    /// Stops the broker once the listener has stopped; `loops` are the liveness and
    /// transaction loops started after registration.
    pub async fn shutdown(
        &self,
        tasks: BrokerTasks,
        loops: Vec<JoinHandle<()>>,
    ) -> Result<(), MetadataError> {
        if !self.buffer.drain(DRAIN_BOUND).await {
            warn!(bound = ?DRAIN_BOUND, "buffered requests not all committed before the stop");
        }
        tasks.abort_chores();
        for task in &loops {
            task.abort();
        }
        // Hand partitions and groups to the others now rather than after the lease.
        self.deregister().await;
        tasks.abort();
        if let Err(e) = shipping::ship_snapshot(&self.metadata, &self.storage).await {
            warn!(error = %e, "could not ship the final metadata snapshot");
        }
        let counters = self.storage.counters();
        info!(
            puts = counters.puts.load(Ordering::Relaxed),
            gets = counters.gets.load(Ordering::Relaxed),
            lists = counters.lists.load(Ordering::Relaxed),
            deletes = counters.deletes.load(Ordering::Relaxed),
            "object_store_requests"
        );
        self.groups.shutdown();
        self.cache.close().await;
        self.metadata.shutdown().await
    }
}
