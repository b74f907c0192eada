//! Cluster membership in the metadata state: which brokers exist, which are alive, and
//! from that, which broker is preferred for each partition and which coordinates each
//! group. Pure, like the rest of the state machine: liveness is judged from the times
//! carried in commands, never from a clock read here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// A broker starts (or restarts) and announces where clients reach it.
    Register {
        id: u64,
        host: String,
        port: i32,
        rack: Option<String>,
        now_ms: i64,
    },
    /// A broker renews its lease.
    Heartbeat { id: u64, now_ms: i64 },
    /// Proposed by the Raft leader on a timer: brokers silent for `lease_ms` are dead.
    Expire { now_ms: i64, lease_ms: i64 },
    /// A broker leaves gracefully.
    Deregister { id: u64 },
    /// Proposed by the Raft leader (format 3), replacing `Expire`: these brokers, whose
    /// heartbeat value the leader saw unchanged for a lease by its own monotonic clock,
    /// are dead, unless a heartbeat came in since (the value differs). No wall clock is
    /// compared across brokers, so clock skew cannot make a broker flap.
    ExpireSilent { brokers: Vec<(u64, i64)> },
    /// Proposed by the Raft leader (format 8): these dead brokers, silent for longer than
    /// `--broker-forget-after-ms` as seen by their heartbeat value, leave the state, so a
    /// fleet that starts every machine with a new id does not grow it without bound. One
    /// that heartbeated since (the value differs) or lives again is kept.
    Forget { brokers: Vec<(u64, i64)> },
    /// A broker started with `--node-id auto` (format 8): it is given the next id at or
    /// above `floor` (which the proposer sets above every Raft member) that no
    /// registered broker has, and is registered under it at once, so that no other
    /// allocation can hand the same id out.
    Allocate {
        floor: u64,
        host: String,
        port: i32,
        rack: Option<String>,
        now_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub last_heartbeat_ms: i64,
    pub alive: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    brokers: BTreeMap<u64, BrokerInfo>,
    /// Bumped whenever the set of live brokers changes; served as every partition's
    /// leader epoch, so clients notice that preferred brokers may have moved.
    epoch: i32,
}

impl ClusterState {
    pub fn apply(&mut self, cmd: &ClusterCommand) {
        match cmd {
            ClusterCommand::Register {
                id,
                host,
                port,
                rack,
                now_ms,
            } => {
                let info = BrokerInfo {
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    last_heartbeat_ms: *now_ms,
                    alive: true,
                };
                let changed = self.brokers.get(id).is_none_or(|old| {
                    !old.alive
                        || old.host != info.host
                        || old.port != info.port
                        || old.rack != info.rack
                });
                self.brokers.insert(*id, info);
                if changed {
                    self.epoch += 1;
                }
            }
            ClusterCommand::Heartbeat { id, now_ms } => {
                if let Some(broker) = self.brokers.get_mut(id) {
                    broker.last_heartbeat_ms = broker.last_heartbeat_ms.max(*now_ms);
                    if !broker.alive {
                        broker.alive = true;
                        self.epoch += 1;
                    }
                }
            }
            ClusterCommand::Expire { now_ms, lease_ms } => {
                let mut changed = false;
                for broker in self.brokers.values_mut() {
                    if broker.alive && now_ms - broker.last_heartbeat_ms > *lease_ms {
                        broker.alive = false;
                        changed = true;
                    }
                }
                if changed {
                    self.epoch += 1;
                }
            }
            ClusterCommand::ExpireSilent { brokers } => {
                let mut changed = false;
                for (id, seen) in brokers {
                    if let Some(broker) = self.brokers.get_mut(id) {
                        if broker.alive && broker.last_heartbeat_ms == *seen {
                            broker.alive = false;
                            changed = true;
                        }
                    }
                }
                if changed {
                    self.epoch += 1;
                }
            }
            ClusterCommand::Allocate { .. } => {
                self.allocate(cmd, 0);
            }
            ClusterCommand::Forget { brokers } => {
                for (id, seen) in brokers {
                    // Dead brokers are not in the live set: the epoch does not move.
                    if self
                        .brokers
                        .get(id)
                        .is_some_and(|b| !b.alive && b.last_heartbeat_ms == *seen)
                    {
                        self.brokers.remove(id);
                    }
                }
            }
            ClusterCommand::Deregister { id } => {
                if self.brokers.remove(id).is_some_and(|b| b.alive) {
                    self.epoch += 1;
                }
            }
        }
    }

    /// Applies [`ClusterCommand::Allocate`] with no id below `at_least` (the state's
    /// record of ids given out): the id given (0 for any other command).
    pub fn allocate(&mut self, cmd: &ClusterCommand, at_least: u64) -> u64 {
        let ClusterCommand::Allocate {
            floor,
            host,
            port,
            rack,
            now_ms,
        } = cmd
        else {
            return 0;
        };
        let above = self.brokers.keys().next_back().map_or(0, |id| id + 1);
        let id = (*floor).max(above).max(at_least);
        self.apply(&ClusterCommand::Register {
            id,
            host: host.clone(),
            port: *port,
            rack: rack.clone(),
            now_ms: *now_ms,
        });
        id
    }

    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    pub fn broker(&self, id: u64) -> Option<&BrokerInfo> {
        self.brokers.get(&id)
    }

    /// Every registered broker, live or not, by id.
    pub fn brokers(&self) -> impl Iterator<Item = (u64, &BrokerInfo)> {
        self.brokers.iter().map(|(id, b)| (*id, b))
    }

    /// Live brokers, by id.
    pub fn live(&self) -> impl Iterator<Item = (u64, &BrokerInfo)> {
        self.brokers
            .iter()
            .filter(|(_, b)| b.alive)
            .map(|(id, b)| (*id, b))
    }

    /// The broker a partition's producers and consumers should meet on: rendezvous
    /// hashing over live brokers, so a broker joining or leaving moves only its share.
    pub fn preferred_broker(&self, topic: &str, partition: i32) -> Option<u64> {
        self.preferred_broker_excluding(topic, partition, None, None)
    }

    /// [`Self::preferred_broker`], unless `hint` (a manual replica assignment's first
    /// replica) names a live broker: then that one.
    pub fn preferred_broker_hinted(
        &self,
        topic: &str,
        partition: i32,
        hint: Option<u64>,
    ) -> Option<u64> {
        self.preferred_broker_excluding(topic, partition, hint, None)
    }

    /// [`Self::preferred_broker_hinted`] as if `excluded` were dead: what a fenced broker
    /// tells clients, which is what the others decide once its lease expires.
    pub fn preferred_broker_excluding(
        &self,
        topic: &str,
        partition: i32,
        hint: Option<u64>,
        excluded: Option<u64>,
    ) -> Option<u64> {
        match hint {
            Some(id) if Some(id) != excluded && self.brokers.get(&id).is_some_and(|b| b.alive) => {
                Some(id)
            }
            _ => self.pick_among(
                |id, _| Some(id) != excluded,
                |h| {
                    h.write(topic.as_bytes());
                    h.write(&partition.to_be_bytes());
                },
            ),
        }
    }

    /// The broker coordinating a consumer group.
    pub fn coordinator(&self, group: &str) -> Option<u64> {
        self.coordinator_excluding(group, None)
    }

    /// [`Self::coordinator`] as if `excluded` were dead.
    pub fn coordinator_excluding(&self, group: &str, excluded: Option<u64>) -> Option<u64> {
        self.pick_among(
            |id, _| Some(id) != excluded,
            |h| {
                h.write(b"group:");
                h.write(group.as_bytes());
            },
        )
    }

    /// Where a consumer in `rack` should read a partition (KIP-392): the preferred
    /// broker if it is in that rack, else a live broker of that rack picked the same
    /// way; None when the rack has no live broker. Every broker serves every partition,
    /// so reading in-zone costs nothing but saves cross-zone traffic.
    pub fn read_replica(
        &self,
        topic: &str,
        partition: i32,
        rack: &str,
        hint: Option<u64>,
    ) -> Option<u64> {
        self.in_rack_broker(topic, partition, rack, hint, None)
    }

    /// [`Self::read_replica`] as if `excluded` were dead: the broker a client in `rack`
    /// should produce to and fetch from (a `strata_az=` client id), as a fenced broker
    /// tells it too.
    pub fn in_rack_broker(
        &self,
        topic: &str,
        partition: i32,
        rack: &str,
        hint: Option<u64>,
        excluded: Option<u64>,
    ) -> Option<u64> {
        let in_rack = |b: &BrokerInfo| b.rack.as_deref() == Some(rack);
        let preferred = self.preferred_broker_excluding(topic, partition, hint, excluded)?;
        if self.brokers.get(&preferred).is_some_and(in_rack) {
            return Some(preferred);
        }
        self.pick_among(
            |id, b| Some(id) != excluded && in_rack(b),
            |h| {
                h.write(topic.as_bytes());
                h.write(&partition.to_be_bytes());
            },
        )
    }

    fn pick_among(
        &self,
        eligible: impl Fn(u64, &BrokerInfo) -> bool,
        key: impl Fn(&mut Fnv),
    ) -> Option<u64> {
        self.live()
            .filter(|(id, b)| eligible(*id, b))
            .map(|(id, _)| {
                let mut h = Fnv::new();
                key(&mut h);
                h.write(&id.to_be_bytes());
                (h.finish(), id)
            })
            .max()
            .map(|(_, id)| id)
    }
}

/// A partition's stable hash (the same on every broker and build), for spreading
/// per-partition work in time.
pub fn partition_hash(topic: &str, partition: i32) -> u64 {
    let mut h = Fnv::new();
    h.write(topic.as_bytes());
    h.write(&partition.to_be_bytes());
    h.finish()
}

/// FNV-1a, 64-bit: stable across builds and platforms (std's hasher is not), so every
/// replica computes the same placement.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        // A final mix so that ids differing in one bit spread well.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(id: u64, now_ms: i64) -> ClusterCommand {
        ClusterCommand::Register {
            id,
            host: "127.0.0.1".into(),
            port: 9000 + id as i32,
            rack: None,
            now_ms,
        }
    }

    #[test]
    fn silent_brokers_expire_and_come_back() {
        let mut c = ClusterState::default();
        c.apply(&register(1, 0));
        c.apply(&register(2, 0));
        let epoch = c.epoch();
        c.apply(&ClusterCommand::Heartbeat {
            id: 1,
            now_ms: 5000,
        });
        c.apply(&ClusterCommand::Expire {
            now_ms: 6000,
            lease_ms: 3000,
        });
        assert_eq!(c.live().map(|(id, _)| id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(c.epoch(), epoch + 1);
        c.apply(&ClusterCommand::Heartbeat {
            id: 2,
            now_ms: 7000,
        });
        assert_eq!(c.live().count(), 2);
        assert_eq!(c.epoch(), epoch + 2);
        // A heartbeat that changes nothing does not bump the epoch.
        c.apply(&ClusterCommand::Heartbeat {
            id: 2,
            now_ms: 8000,
        });
        assert_eq!(c.epoch(), epoch + 2);
    }

    #[test]
    fn expire_silent_spares_brokers_that_heartbeat_since() {
        let mut c = ClusterState::default();
        c.apply(&register(1, 100));
        c.apply(&register(2, 100));
        let epoch = c.epoch();
        // Broker 2 heartbeats after the leader decided; only broker 1 expires.
        c.apply(&ClusterCommand::Heartbeat { id: 2, now_ms: 90 });
        c.apply(&ClusterCommand::Heartbeat { id: 2, now_ms: 200 });
        c.apply(&ClusterCommand::ExpireSilent {
            brokers: vec![(1, 100), (2, 100), (9, 0)],
        });
        assert_eq!(c.live().map(|(id, _)| id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(c.epoch(), epoch + 1);
        // Nothing changes: no epoch bump.
        c.apply(&ClusterCommand::ExpireSilent {
            brokers: vec![(1, 100)],
        });
        assert_eq!(c.epoch(), epoch + 1);
    }

    #[test]
    fn allocated_ids_are_unique_and_above_the_floor() {
        let mut c = ClusterState::default();
        c.apply(&register(1, 0));
        c.apply(&register(2, 0));
        let allocate = |floor| ClusterCommand::Allocate {
            floor,
            host: "10.0.0.9".into(),
            port: 9092,
            rack: None,
            now_ms: 5,
        };
        let first = c.allocate(&allocate(1000), 0);
        let second = c.allocate(&allocate(1000), 0);
        assert_eq!((first, second), (1000, 1001));
        // Registered at once, alive: the next allocation cannot hand it out again.
        assert!(c.broker(first).is_some_and(|b| b.alive && b.port == 9092));
        // A floor above the brokers (a Raft member without a registration) wins, and so
        // does the record of ids given out.
        assert_eq!(c.allocate(&allocate(1500), 0), 1500);
        assert_eq!(c.allocate(&allocate(1000), 2000), 2000);
        assert_eq!(c.allocate(&register(7, 0), 0), 0);
    }

    #[test]
    fn forget_removes_only_brokers_still_dead_and_silent() {
        let mut c = ClusterState::default();
        for id in 1..=4 {
            c.apply(&register(id, 100));
        }
        c.apply(&ClusterCommand::ExpireSilent {
            brokers: vec![(3, 100), (4, 100)],
        });
        let epoch = c.epoch();
        // 4 comes back before the forget is applied; 1 is alive; 9 is unknown.
        c.apply(&ClusterCommand::Heartbeat { id: 4, now_ms: 500 });
        let epoch_after_return = c.epoch();
        assert_eq!(epoch_after_return, epoch + 1);
        c.apply(&ClusterCommand::Forget {
            brokers: vec![(1, 100), (3, 100), (4, 100), (9, 0)],
        });
        let ids: Vec<u64> = c.brokers().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2, 4]);
        // Forgetting the dead moves no partition: the epoch stays.
        assert_eq!(c.epoch(), epoch_after_return);
        // A forgotten broker that starts again registers as new.
        c.apply(&register(3, 900));
        assert!(c.broker(3).is_some_and(|b| b.alive));
    }

    #[test]
    fn a_zones_clients_get_a_broker_of_that_zone_spread_like_placement() {
        let mut c = ClusterState::default();
        for (id, zone) in [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")] {
            c.apply(&ClusterCommand::Register {
                id,
                host: "127.0.0.1".into(),
                port: 9000 + id as i32,
                rack: Some(zone.into()),
                now_ms: 0,
            });
        }
        let zone_of = |c: &ClusterState, id: u64| c.broker(id).and_then(|b| b.rack.clone());
        let mut used = std::collections::BTreeSet::new();
        for p in 0..200 {
            let id = c
                .in_rack_broker("t", p, "b", None, None)
                .expect("zone b has brokers");
            assert_eq!(zone_of(&c, id).as_deref(), Some("b"));
            used.insert(id);
            // Where placement already picks a zone-b broker, that one.
            let preferred = c.preferred_broker("t", p).expect("live");
            if zone_of(&c, preferred).as_deref() == Some("b") {
                assert_eq!(id, preferred);
            }
            // A fenced zone-b broker names the zone's other one.
            let other = c.in_rack_broker("t", p, "b", None, Some(id));
            assert_eq!(other, Some(if id == 3 { 4 } else { 3 }));
        }
        assert_eq!(used, [3, 4].into());
        // A zone without brokers, or whose only broker is excluded: none (fall back).
        assert_eq!(c.in_rack_broker("t", 0, "d", None, None), None);
        assert_eq!(c.in_rack_broker("t", 0, "c", None, Some(5)), None);
    }

    #[test]
    fn placement_excluding_a_broker_is_placement_without_it() {
        let mut c = ClusterState::default();
        for id in 1..=3 {
            c.apply(&register(id, 0));
        }
        let mut without = c.clone();
        without.apply(&ClusterCommand::Deregister { id: 2 });
        for p in 0..100 {
            assert_eq!(
                c.preferred_broker_excluding("t", p, None, Some(2)),
                without.preferred_broker("t", p)
            );
            assert_eq!(
                c.preferred_broker_excluding("t", p, Some(2), Some(2)),
                without.preferred_broker("t", p)
            );
            let g = format!("g{p}");
            assert_eq!(
                c.coordinator_excluding(&g, Some(2)),
                without.coordinator(&g)
            );
        }
    }

    #[test]
    fn consumers_read_in_their_rack() {
        let mut c = ClusterState::default();
        for (id, rack) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
            c.apply(&ClusterCommand::Register {
                id,
                host: "h".into(),
                port: 1,
                rack: Some(rack.into()),
                now_ms: 0,
            });
        }
        for p in 0..50 {
            let leader = c.preferred_broker("t", p).unwrap();
            for rack in ["a", "b"] {
                let replica = c.read_replica("t", p, rack, None).unwrap();
                assert_eq!(c.broker(replica).unwrap().rack.as_deref(), Some(rack));
                if c.broker(leader).unwrap().rack.as_deref() == Some(rack) {
                    assert_eq!(replica, leader);
                }
            }
            assert_eq!(c.read_replica("t", p, "nowhere", None), None);
        }
    }

    #[test]
    fn placement_is_balanced_and_moves_little() {
        let mut c = ClusterState::default();
        for id in 1..=3 {
            c.apply(&register(id, 0));
        }
        let before: Vec<_> = (0..300)
            .map(|p| c.preferred_broker("t", p).unwrap())
            .collect();
        for id in 1..=3 {
            let share = before.iter().filter(|b| **b == id).count();
            assert!(
                (60..=140).contains(&share),
                "broker {id} got {share} of 300"
            );
        }
        c.apply(&register(4, 0));
        let after: Vec<_> = (0..300)
            .map(|p| c.preferred_broker("t", p).unwrap())
            .collect();
        // Only partitions that went to the new broker moved.
        for (b, a) in before.iter().zip(&after) {
            assert!(a == b || *a == 4);
        }
        assert!(after.iter().filter(|a| **a == 4).count() > 40);
        c.apply(&ClusterCommand::Deregister { id: 4 });
        let back: Vec<_> = (0..300)
            .map(|p| c.preferred_broker("t", p).unwrap())
            .collect();
        assert_eq!(before, back);
        assert!(c.coordinator("g").is_some());
    }
}
