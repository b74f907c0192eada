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
/// How often the Raft leader looks for brokers and learners to forget.
const FORGET_POLL: Duration = Duration::from_secs(1);
/// A learner that is no registered broker for this long (or `--broker-forget-after-ms`,
/// if shorter, but at least two leases) leaves the Raft membership.
const LEARNER_GRACE: Duration = Duration::from_secs(30);
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
        let forget = Self::forget_departed(
            Arc::downgrade(self),
            lease,
            self.config.raft.broker_forget_after,
        );
        tokio::spawn(async move {
            tokio::join!(heartbeats, expiry, fence, forget);
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

    /// While this broker is the Raft leader: forgets brokers dead for `forget_after` (by
    /// their last heartbeat value, a wall-clock time: at an hour's scale skew does not
    /// matter) and removes learners that are no registered broker, so that a fleet which
    /// starts each machine with a new id keeps a state and a membership the size of the
    /// fleet, not of its history. A removed learner that comes back joins again.
    async fn forget_departed(
        broker: std::sync::Weak<Self>,
        lease: Duration,
        forget_after: Duration,
    ) {
        let mut tick = tokio::time::interval(FORGET_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A learner joins before it registers, and a broker restarting on its disk
        // deregisters first: give either time before its replication stops.
        let learner_grace = (lease * 2).max(forget_after.min(LEARNER_GRACE));
        let mut unregistered = UnregisteredLearners::default();
        let mut warn = WarnLimiter::new(WARN_EVERY);
        loop {
            tick.tick().await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            if !broker.metadata.is_leader() {
                unregistered = UnregisteredLearners::default();
                continue;
            }
            let now_ms = crate::clock::now_ms();
            let forget_ms = i64::try_from(forget_after.as_millis()).unwrap_or(i64::MAX);
            let (gone, registered): (Vec<(u64, i64)>, Vec<u64>) = broker.metadata.read(|s| {
                let cluster = s.cluster();
                let gone = cluster
                    .brokers()
                    .filter(|(_, b)| {
                        !b.alive && now_ms.saturating_sub(b.last_heartbeat_ms) > forget_ms
                    })
                    .map(|(id, b)| (id, b.last_heartbeat_ms))
                    .collect();
                (gone, cluster.brokers().map(|(id, _)| id).collect())
            });
            if !gone.is_empty() {
                tracing::info!(brokers = ?gone, ?forget_after, "forgetting brokers dead for longer than broker_forget_after_ms");
                let forget = Command::Cluster(ClusterCommand::Forget { brokers: gone });
                if let Err(e) = broker.metadata.propose(forget).await {
                    if let Some(held_back) = warn.hit(Instant::now()) {
                        tracing::warn!(error = %e, held_back, "forgetting dead brokers failed");
                    }
                }
            }
            // Another leader may have removed members this node once replicated to.
            broker.metadata.forget_departed_peers();
            let learners = broker.metadata.learners();
            let stale = unregistered.observe(Instant::now(), &learners, &registered, learner_grace);
            if !stale.is_empty() {
                if let Err(e) = broker.metadata.remove_learners(stale).await {
                    if let Some(held_back) = warn.hit(Instant::now()) {
                        tracing::warn!(error = %e, held_back, "removing departed learners failed");
                    }
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

/// Since when (on this leader) each learner has been no registered broker. Holds only
/// current learners, so it is bounded by the membership.
#[derive(Default)]
struct UnregisteredLearners {
    since: std::collections::BTreeMap<u64, Instant>,
}

impl UnregisteredLearners {
    /// The learners unregistered for `grace` or longer.
    fn observe(
        &mut self,
        now: Instant,
        learners: &[u64],
        registered: &[u64],
        grace: Duration,
    ) -> Vec<u64> {
        self.since
            .retain(|id, _| learners.contains(id) && !registered.contains(id));
        for id in learners {
            if !registered.contains(id) {
                self.since.entry(*id).or_insert(now);
            }
        }
        self.since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learner_is_stale_only_after_a_grace_unregistered() {
        let mut u = UnregisteredLearners::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        // 4 registered, 5 not yet: nothing stale at first.
        assert!(u.observe(t0, &[4, 5], &[1, 2, 3, 4], grace).is_empty());
        assert_eq!(
            u.observe(t0 + grace, &[4, 5], &[1, 2, 3, 4], grace),
            vec![5]
        );
        // 5 registers in time on another run: its clock starts again when it leaves.
        let mut u = UnregisteredLearners::default();
        u.observe(t0, &[5], &[], grace);
        assert!(u.observe(t0 + grace / 2, &[5], &[5], grace).is_empty());
        assert!(u.observe(t0 + grace, &[5], &[], grace).is_empty());
        assert_eq!(u.observe(t0 + grace * 2, &[5], &[], grace), vec![5]);
        // A removed learner is no longer tracked.
        assert!(u.observe(t0 + grace * 3, &[], &[], grace).is_empty());
        assert!(u.since.is_empty());
    }
}
