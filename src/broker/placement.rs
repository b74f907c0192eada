//! Where clients should go: the live brokers a listener names, each partition's
//! preferred broker (its "leader" in Metadata), KIP-392 read replicas by rack, and the
//! coordinator of each group and transactional id. A fenced broker names others, so
//! clients go where the cluster is.
//!
//! Metadata may present a broker under several ids (`leader_ids`), all at its address:
//! any broker serves any partition, and a client's in-flight cap is per connection, so
//! spreading leadership over more ids buys concurrency where each request waits for
//! the object store. The other APIs (DescribeCluster, FindCoordinator, read replicas)
//! name brokers by their own ids.

use super::Broker;

/// A broker's extra leader ids (`leader_ids`) are its own id plus multiples of this:
/// real ids stay below it, and an id is never taken for another broker's.
pub const LEADER_ID_STRIDE: i32 = 1 << 20;

/// The `k`th leader id of broker `real` (0: its own id); None past what an i32 holds or
/// for a real id too large to share the space.
pub fn leader_id(real: i32, k: i32) -> Option<i32> {
    if k == 0 {
        return Some(real);
    }
    if !(0..LEADER_ID_STRIDE).contains(&real) {
        return None;
    }
    k.checked_mul(LEADER_ID_STRIDE)?.checked_add(real)
}

/// Which of its leader ids a broker leads `partition` of `topic` as: every broker
/// computes the same, so Metadata agrees wherever it is asked.
fn spread(topic: &str, partition: i32, per_broker: i32) -> i32 {
    let h = crc32c::crc32c(topic.as_bytes()).wrapping_add(partition as u32);
    (h % per_broker.max(1) as u32) as i32
}

/// The client-id field that names a client's zone, as WarpStream's `ws_az=`: a client
/// whose `client.id` holds `strata_az=us-east-1a` is sent to brokers with that `--rack`.
const ZONE_HINT: &str = "strata_az=";

/// The zone a client names in its client id: what follows `strata_az=`, up to the first
/// character that is not a letter, digit, `-` or `.` (so `app,strata_az=eu-1b;v2` names
/// `eu-1b`). None without the hint or with an empty zone.
pub fn client_zone(client_id: &str) -> Option<&str> {
    let start = client_id.find(ZONE_HINT)? + ZONE_HINT.len();
    let rest = &client_id[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|z| !z.is_empty())
}

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

    /// How many leader ids each live broker answers as: `leader_ids` spread over the
    /// live brokers.
    fn ids_per_broker(&self) -> i32 {
        let live = self.metadata.read(|s| s.cluster().live().count()).max(1);
        let wanted = self.config.placement.leader_ids as usize;
        i32::try_from(wanted.div_ceil(live))
            .unwrap_or(1)
            .clamp(1, i32::MAX / LEADER_ID_STRIDE)
    }

    /// `live_brokers` with every leader id of each, for Metadata: a client opens a
    /// connection per id, and with each connection capping its requests in flight
    /// (an idempotent producer: 5), more ids keep more in flight when every request
    /// waits for the object store. All ids of a broker are its one address.
    pub fn leader_brokers(&self, listener: &str) -> Vec<LiveBroker> {
        let per = self.ids_per_broker();
        self.live_brokers(listener)
            .into_iter()
            .flat_map(|b| {
                (0..per).filter_map(move |k| {
                    let id = leader_id(b.id, k)?;
                    Some(LiveBroker { id, ..b.clone() })
                })
            })
            .collect()
    }

    /// The leader id Metadata names for a partition (one of its preferred broker's
    /// leader ids; None: no live broker but a fenced self), and the leader epoch. A
    /// client in `zone` is named a broker of that zone when the zone has a live one.
    pub fn partition_leader(
        &self,
        topic: &str,
        partition: i32,
        zone: Option<&str>,
    ) -> (Option<i32>, i32) {
        let (leader, epoch) = self.preferred_broker(topic, partition, zone);
        let k = spread(topic, partition, self.ids_per_broker());
        (leader.map(|id| leader_id(id, k).unwrap_or(id)), epoch)
    }

    /// The broker clients should use for a partition (None: no live broker but a fenced
    /// self), and the leader epoch to report. Clients in `zone` (a `strata_az=` client
    /// id) get that zone's broker by the same placement, or everyone's when the zone has
    /// no live broker.
    pub fn preferred_broker(
        &self,
        topic: &str,
        partition: i32,
        zone: Option<&str>,
    ) -> (Option<i32>, i32) {
        let fenced = self.fenced();
        let own = Some(self.config.node.id);
        self.metadata.read(|s| {
            let epoch = s.cluster().epoch();
            let excluded = if fenced { own } else { None };
            if let Some(id) = zone.and_then(|z| s.zone_broker(topic, partition, z, excluded)) {
                return (Some(id as i32), epoch);
            }
            if fenced {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_ids_are_distinct_across_brokers() {
        let mut seen = std::collections::BTreeSet::new();
        for real in [1, 2, 3, 1000] {
            for k in 0..16 {
                let id = leader_id(real, k).expect("fits");
                assert!(seen.insert(id), "{id} twice");
                assert_eq!(id % LEADER_ID_STRIDE, real);
            }
        }
        assert_eq!(leader_id(7, 0), Some(7));
        // A real id beyond the stride has only itself; the i32 range is never passed.
        assert_eq!(leader_id(LEADER_ID_STRIDE, 1), None);
        assert_eq!(leader_id(5, 2048), None);
    }

    #[test]
    fn the_zone_hint_is_read_out_of_the_client_id() {
        assert_eq!(client_zone("strata_az=us-east-1a"), Some("us-east-1a"));
        assert_eq!(client_zone("app,strata_az=eu-1b;v2"), Some("eu-1b"));
        assert_eq!(client_zone("rdkafka strata_az=zone.2 x"), Some("zone.2"));
        assert_eq!(client_zone("app_strata_az=az1_worker"), Some("az1"));
        assert_eq!(client_zone("strata_az="), None);
        assert_eq!(client_zone("strata_az=,x"), None);
        assert_eq!(client_zone("ws_az=us-east-1a"), None);
        assert_eq!(client_zone(""), None);
    }

    #[test]
    fn a_topic_spreads_over_every_leader_id() {
        let used: std::collections::BTreeSet<_> = (0..64).map(|p| spread("t", p, 8)).collect();
        assert_eq!(used, (0..8).collect());
        assert!((0..64).all(|p| spread("t", p, 1) == 0));
    }
}
