//! Liveness: a broker registers (its addresses, rack and listeners), keeps a lease with a
//! heartbeat every quarter lease, and leaves with a deregistration. The Raft leader
//! expires the brokers whose heartbeats stopped; their partitions and coordinations move.
//! Heartbeats carry a value that only has to change, so no wall clocks are compared
//! across brokers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::{Broker, BrokerError};
use crate::metadata::fence::{ExpiryTracker, WarnLimiter};
use crate::metadata::state::cluster::ClusterCommand;
use crate::metadata::state::{Command, ScramChange};
use crate::security::scram::{Mechanism, ScramCredential};

/// PBKDF2 iterations of the bootstrap admin's credentials (Kafka's minimum and the
/// default of its tools).
const ADMIN_ITERATIONS: u32 = 4096;
/// A repeated warning (a heartbeat that keeps failing) is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often the Raft leader looks for heartbeats: expiry comes at most this late.
const EXPIRY_POLL: Duration = Duration::from_millis(100);
/// How often a broker looks at its own fence, to log when it fences and unfences.
const FENCE_POLL: Duration = Duration::from_millis(50);

impl Broker {
    /// Announces this broker to the cluster and takes its lease, then its listeners and
    /// the bootstrap admin's credentials.
    pub async fn register(self: &Arc<Self>) -> Result<(), BrokerError> {
        let register = ClusterCommand::Register {
            id: self.config.node.id,
            host: self.config.listener.advertise_host().to_owned(),
            port: self.config.listener.advertise_port(),
            rack: self.config.node.rack.clone(),
            now_ms: crate::clock::now_ms(),
        };
        let started = Instant::now();
        self.metadata
            .renew_lease(Command::Cluster(register), started)
            .await?;
        let listeners = self
            .config
            .listener
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.advertise_host.clone(), l.advertise_port))
            .collect();
        self.metadata
            .propose(Command::RegisterListeners {
                id: self.config.node.id,
                listeners,
            })
            .await?;
        if let Some(admin) = &self.config.security.admin {
            // Every broker proposes it at start; the first credential of each mechanism
            // stays (a password changed later through the admin APIs is kept).
            let changes = [Mechanism::Sha256, Mechanism::Sha512]
                .into_iter()
                .map(|mechanism| ScramChange::Upsert {
                    user: admin.user.clone(),
                    mechanism,
                    credential: ScramCredential::from_password(
                        mechanism,
                        &admin.password,
                        ADMIN_ITERATIONS,
                    ),
                    only_if_missing: true,
                })
                .collect();
            self.metadata
                .propose(Command::AlterScram { changes })
                .await?;
        }
        Ok(())
    }

    /// Keeps this broker's lease (a heartbeat every quarter lease) and, while this broker
    /// is the Raft leader, expires the brokers whose heartbeats stopped.
    pub fn spawn_liveness(self: &Arc<Self>) -> JoinHandle<()> {
        let lease = self.config.raft.broker_lease;
        let heartbeats = Self::heartbeats(Arc::downgrade(self), lease);
        let expiry = Self::expire_silent(Arc::downgrade(self), lease);
        let fence = Self::log_fencing(Arc::downgrade(self));
        tokio::spawn(async move {
            tokio::join!(heartbeats, expiry, fence);
        })
    }

    /// Logs each time this broker fences itself (with why) and unfences (with how long
    /// it was fenced): requests are answered by the fence as it is at that moment, and
    /// this is the operator's record of it.
    async fn log_fencing(broker: std::sync::Weak<Self>) {
        let mut tick = tokio::time::interval(FENCE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fenced_since: Option<Instant> = None;
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            match (broker.metadata.fence_cause(), fenced_since) {
                (Some(cause), None) => {
                    fenced_since = Some(Instant::now());
                    metrics::counter!(crate::telemetry::BROKER_FENCES).increment(1);
                    tracing::warn!(%cause, "broker fenced: serving no partition, group or producer id until its lease is renewed");
                }
                (None, Some(since)) => {
                    fenced_since = None;
                    tracing::info!(
                        fenced_ms = since.elapsed().as_millis() as u64,
                        "broker unfenced: its lease is renewed"
                    );
                }
                _ => {}
            }
        }
    }

    async fn heartbeats(broker: std::sync::Weak<Self>, lease: Duration) {
        let mut tick = tokio::time::interval(lease / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warn = WarnLimiter::new(WARN_EVERY);
        // The heartbeat value only has to change at every heartbeat (the leader compares
        // it for change, never with its own clock); strictly increasing even if the wall
        // clock steps back.
        let mut last_value = i64::MIN;
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            let now_ms = crate::clock::now_ms().max(last_value.saturating_add(1));
            last_value = now_ms;
            let id = broker.config.node.id;
            let heartbeat = Command::Cluster(ClusterCommand::Heartbeat { id, now_ms });
            let started = Instant::now();
            // A heartbeat stuck for half a lease (its proposal waiting on a leader that
            // froze) can no longer keep the lease: the next one goes out instead.
            let renewal = broker.metadata.renew_lease(heartbeat, started);
            let failed = match tokio::time::timeout(lease / 2, renewal).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("not committed within {:?}", lease / 2)),
            };
            match failed {
                None => warn.reset(),
                Some(error) => {
                    if let Some(held_back) = warn.hit(Instant::now()) {
                        tracing::warn!(%error, held_back, "broker heartbeat failed");
                    }
                }
            }
        }
    }

    async fn expire_silent(broker: std::sync::Weak<Self>, lease: Duration) {
        let mut tick = tokio::time::interval(EXPIRY_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tracker = ExpiryTracker::default();
        let mut warn = WarnLimiter::new(WARN_EVERY);
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if !broker.metadata.is_leader() {
                tracker.observe(Instant::now(), lease, false, []);
                continue;
            }
            let brokers: Vec<(u64, i64, bool)> = broker.metadata.read(|s| {
                s.cluster()
                    .brokers()
                    .map(|(id, b)| (id, b.last_heartbeat_ms, b.alive))
                    .collect()
            });
            let silent = tracker.observe(Instant::now(), lease, true, brokers);
            if silent.is_empty() {
                continue;
            }
            tracing::info!(brokers = ?silent, "expiring brokers silent for a lease");
            let expire = Command::Cluster(ClusterCommand::ExpireSilent { brokers: silent });
            if let Err(e) = broker.metadata.propose(expire).await {
                if let Some(held_back) = warn.hit(Instant::now()) {
                    tracing::warn!(error = %e, held_back, "expiring broker leases failed");
                }
            }
        }
    }

    /// Leaves the cluster gracefully: its partitions and groups move at once.
    pub async fn deregister(&self) {
        let cmd = Command::Cluster(ClusterCommand::Deregister {
            id: self.config.node.id,
        });
        if let Err(e) = self.metadata.propose(cmd).await {
            tracing::warn!(error = %e, "leaving the cluster failed");
        }
    }
}
