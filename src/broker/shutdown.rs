//! A graceful stop, in two steps. `drain`, while the listener still serves: the broker
//! takes nothing new (clients are sent to the others), deregisters so its partitions and
//! groups move at once, and commits and answers what it took. `shutdown`, once the
//! listener has stopped: the background work stops and the bucket gets the latest
//! metadata snapshot so a replacement starts from exactly here.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::start::BrokerTasks;
use super::Broker;
use crate::metadata::{shipping, MetadataError};

/// The longest the second step waits for buffered requests to be committed (the drain
/// has normally emptied the buffer). Every acknowledged record is in the store already;
/// this only gives the last requests their answer.
const DRAIN_BOUND: Duration = Duration::from_secs(10);

impl Broker {
    /// The first step of a graceful stop, while the listener still serves: this broker
    /// takes nothing new (Metadata, Produce, Fetch and the group APIs send clients to
    /// the others with retriable errors, `/ready` answers 503) and leaves the cluster so
    /// its partitions and coordinations move at once; then what it took is committed
    /// and answered, for `bound` at most.
    pub async fn drain(&self, bound: Duration) {
        let started = std::time::Instant::now();
        self.draining.store(true, Ordering::Release);
        info!(
            ?bound,
            "draining: no longer advertised; answering what is in flight"
        );
        if tokio::time::timeout(bound, self.deregister())
            .await
            .is_err()
        {
            warn!("leaving the cluster took longer than the drain bound");
        }
        let left = bound.saturating_sub(started.elapsed());
        if !self.buffer.drain(left).await {
            warn!(
                ?bound,
                "buffered requests not all committed within the drain bound"
            );
        }
        // Clients told to go elsewhere reconnect there; a produce still waiting for its
        // commit has its answer by now.
        info!(took = ?started.elapsed(), "drained");
    }

    /// Stops the broker once the listener has stopped; `loops` are the liveness and
    /// transaction loops started after registration.
    pub async fn shutdown(
        &self,
        tasks: BrokerTasks,
        loops: Vec<JoinHandle<()>>,
    ) -> Result<(), MetadataError> {
        let bound = DRAIN_BOUND.min(self.config.node.shutdown_timeout);
        if !self.buffer.drain(bound).await {
            warn!(
                ?bound,
                "buffered requests not all committed before the stop"
            );
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
