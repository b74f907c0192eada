//! Where clients should go: the live brokers a listener names, each partition's
//! preferred broker (its "leader" in Metadata), KIP-392 read replicas by rack, and the
//! coordinator of each group and transactional id. A fenced broker names others, so
//! clients go where the cluster is.

use super::Broker;

/// A live broker as a listener's clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveBroker {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl Broker {
    /// The live brokers clients of `listener` may use; this broker at least. A broker is
    /// named by its address on that listener; one that registered listeners without it
    /// is left out (as Kafka does), one that registered none (an older build) by its one
    /// address.
    pub fn live_brokers(&self, listener: &str) -> Vec<LiveBroker> {
        let me = self.node_id();
        let mut brokers: Vec<_> = self.metadata.read(|s| {
            s.cluster()
                .live()
                .filter(|(id, _)| *id as i32 != me)
                .filter_map(|(id, b)| {
                    let (host, port) = match s.access().listener(id, listener) {
                        Some((host, port)) => (host.to_owned(), port),
                        None if s.access().has_listeners(id) => return None,
                        None => (b.host.clone(), b.port),
                    };
                    Some(LiveBroker {
                        id: id as i32,
                        host,
                        port,
                        rack: b.rack.clone(),
                    })
                })
                .collect()
        });
        let own = self
            .config
            .listener
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .unwrap_or(self.config.listener.first());
        brokers.push(LiveBroker {
            id: me,
            host: own.advertise_host.clone(),
            port: own.advertise_port,
            rack: self.config.node.rack.clone(),
        });
        brokers.sort_by_key(|b| b.id);
        brokers
    }

    /// The broker clients should use for a partition (None: no live broker but a fenced
    /// self), and the leader epoch to report.
    pub fn preferred_broker(&self, topic: &str, partition: i32) -> (Option<i32>, i32) {
        let fenced = self.fenced();
        self.metadata.read(|s| {
            let epoch = s.cluster().epoch();
            if fenced {
                let own = Some(self.config.node.id);
                let id = s.preferred_broker_excluding(topic, partition, own);
                return (id.map(|id| id as i32), epoch);
            }
            let id = s
                .preferred_broker(topic, partition)
                .map_or(self.node_id(), |id| id as i32);
            (Some(id), epoch)
        })
    }

    /// KIP-392: the broker a consumer in `rack` should fetch this partition from, when
    /// that is not this broker.
    pub fn read_replica_elsewhere(&self, topic: &str, partition: i32, rack: &str) -> Option<i32> {
        if rack.is_empty() {
            return None;
        }
        let replica = self
            .metadata
            .read(|s| s.read_replica(topic, partition, rack))?;
        (replica as i32 != self.node_id()).then_some(replica as i32)
    }

    /// The broker coordinating `group`; a fenced broker names another live one (None:
    /// it knows of none).
    pub fn coordinator(&self, group: &str) -> Option<i32> {
        self.metadata
            .coordinator(group, self.config.node.id)
            .map(|id| i32::try_from(id).unwrap_or(i32::MAX))
    }

    pub fn is_coordinator(&self, group: &str) -> bool {
        self.coordinator(group) == Some(self.node_id())
    }

    /// The cluster epoch at which this broker coordinates `group`, read together with
    /// the placement; None when it does not (or is fenced). OffsetCommit proposals carry
    /// it, so the state machine refuses them if the group moved meanwhile.
    pub fn coordinator_epoch(&self, group: &str) -> Option<i32> {
        if self.fenced() {
            return None;
        }
        let id = self.config.node.id;
        self.metadata.read(|s| {
            let cluster = s.cluster();
            (cluster.coordinator(group).is_none_or(|c| c == id)).then(|| cluster.epoch())
        })
    }
}
