//! Topics in the state machine: creating, deleting and growing them, their configs, the
//! dynamic broker configs a topic's configs resolve through, and the manual assignment
//! hints that pin a partition to a broker while it is alive.
//!
//! A topic's partitions are only ever added; a deleted topic's objects are released and
//! its committed offsets forgotten, so a topic re-created under the same name (with a new
//! id) starts from offset zero.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::partition::Partition;
use super::{Command, MetadataState, Response, StateError};
use crate::topic_config::{ConfigLayers, TopicDefaults, MAX_PARTITIONS};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    pub id: [u8; 16],
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
    pub partitions: Vec<Arc<Partition>>,
}

/// Kafka's legal topic names: up to 249 of `[a-zA-Z0-9._-]`, not "." or "..".
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl MetadataState {
    /// The topic and config commands, as routed by [`MetadataState::apply`].
    pub(super) fn apply_topics(&mut self, cmd: &Command) -> Response {
        match cmd {
            Command::CreateTopic {
                name,
                topic_id,
                partitions,
                configs,
                now_ms,
                preferred,
            } => Response::Topic(self.create_topic(
                name,
                *topic_id,
                *partitions,
                configs,
                *now_ms,
                preferred,
            )),
            Command::DeleteTopic { name } => Response::Topic(self.delete_topic(name)),
            Command::CreatePartitions {
                name,
                count,
                preferred,
            } => Response::Topic(self.create_partitions(name, *count, preferred)),
            Command::AlterTopicConfigs {
                name,
                replace,
                changes,
            } => Response::Topic(self.alter_topic_configs(name, *replace, changes)),
            Command::AlterBrokerConfigs {
                broker,
                replace,
                changes,
            } => {
                self.alter_broker_configs(*broker, *replace, changes);
                Response::Empty
            }
            Command::AlterGroupConfigs {
                group,
                replace,
                changes,
            } => {
                let configs = self.group_configs.entry(group.clone()).or_default();
                patch(configs, *replace, changes);
                if configs.is_empty() {
                    self.group_configs.remove(group);
                }
                Response::Empty
            }
            // `apply` routes no other command here.
            _ => Response::Empty,
        }
    }

    fn create_topic(
        &mut self,
        name: &str,
        id: [u8; 16],
        partitions: i32,
        configs: &BTreeMap<String, String>,
        now_ms: i64,
        preferred: &[u64],
    ) -> Result<(), StateError> {
        if !valid_topic_name(name) {
            return Err(StateError::InvalidTopic);
        }
        if self.topics.contains_key(name) {
            return Err(StateError::TopicAlreadyExists);
        }
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(StateError::InvalidPartitions);
        }
        self.check_preferred(preferred, partitions as usize)?;
        let mut hints = preferred.iter();
        let topic = Topic {
            id,
            configs: configs.clone(),
            created_ms: now_ms,
            partitions: (0..partitions)
                .map(|_| {
                    Arc::new(Partition {
                        preferred: hints.next().copied(),
                        ..Partition::default()
                    })
                })
                .collect(),
        };
        self.topics.insert(name.to_owned(), topic);
        Ok(())
    }

    fn delete_topic(&mut self, name: &str) -> Result<(), StateError> {
        let topic = self
            .topics
            .remove(name)
            .ok_or(StateError::UnknownTopicOrPartition)?;
        let now_ms = self.clock_ms;
        for entry in topic.partitions.iter().flat_map(|p| p.index.iter()) {
            self.objects.release(entry.object, now_ms);
        }
        self.forget_topic_offsets(name);
        Ok(())
    }

    fn create_partitions(
        &mut self,
        name: &str,
        count: i32,
        preferred: &[u64],
    ) -> Result<(), StateError> {
        let current = self
            .topics
            .get(name)
            .ok_or(StateError::UnknownTopicOrPartition)?
            .partitions
            .len();
        let wanted = usize::try_from(count).map_err(|_| StateError::InvalidPartitions)?;
        if wanted <= current || count > MAX_PARTITIONS {
            return Err(StateError::InvalidPartitions);
        }
        self.check_preferred(preferred, wanted - current)?;
        let topic = self
            .topics
            .get_mut(name)
            .ok_or(StateError::UnknownTopicOrPartition)?;
        let mut hints = preferred.iter();
        topic.partitions.resize_with(wanted, || {
            Arc::new(Partition {
                preferred: hints.next().copied(),
                ..Partition::default()
            })
        });
        Ok(())
    }

    /// A manual assignment's hints are valid when there is none, or one per partition,
    /// each naming a registered broker (alive or not).
    fn check_preferred(&self, preferred: &[u64], partitions: usize) -> Result<(), StateError> {
        if preferred.is_empty() {
            return Ok(());
        }
        if preferred.len() != partitions
            || preferred
                .iter()
                .any(|id| self.cluster.broker(*id).is_none())
        {
            return Err(StateError::InvalidReplicaAssignment);
        }
        Ok(())
    }

    fn alter_topic_configs(
        &mut self,
        name: &str,
        replace: bool,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<(), StateError> {
        let topic = self
            .topics
            .get_mut(name)
            .ok_or(StateError::UnknownTopicOrPartition)?;
        patch(&mut topic.configs, replace, changes);
        Ok(())
    }

    fn alter_broker_configs(
        &mut self,
        broker: Option<u64>,
        replace: bool,
        changes: &BTreeMap<String, Option<String>>,
    ) {
        let scope = broker.map_or_else(String::new, |id| id.to_string());
        let configs = self.broker_configs.entry(scope.clone()).or_default();
        patch(configs, replace, changes);
        if configs.is_empty() {
            self.broker_configs.remove(&scope);
        }
    }

    pub fn topics(&self) -> &BTreeMap<String, Topic> {
        &self.topics
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&Partition> {
        let index = usize::try_from(partition).ok()?;
        self.topics
            .get(topic)?
            .partitions
            .get(index)
            .map(Arc::as_ref)
    }

    pub(super) fn partition_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        let index = usize::try_from(partition).ok()?;
        self.topics
            .get_mut(topic)?
            .partitions
            .get_mut(index)
            .map(Arc::make_mut)
    }

    /// Dynamic broker configs: cluster-wide defaults ("") or one broker's (its id).
    pub fn broker_configs(&self, scope: &str) -> Option<&BTreeMap<String, String>> {
        self.broker_configs.get(scope)
    }

    /// What was set on the GROUP resource `group`.
    pub fn group_configs(&self, group: &str) -> Option<&BTreeMap<String, String>> {
        self.group_configs.get(group)
    }

    /// What topic configs resolve through for broker `node`, below a topic's own values:
    /// its dynamic configs, the cluster-wide ones, then its static `defaults`.
    pub fn config_layers<'a>(&'a self, node: u64, defaults: &'a TopicDefaults) -> ConfigLayers<'a> {
        ConfigLayers {
            broker: self.broker_configs(&node.to_string()),
            cluster: self.broker_configs(""),
            defaults,
        }
    }

    /// The dynamic value of a broker config for broker `id`: its own, else the
    /// cluster-wide default.
    pub fn broker_config(&self, id: u64, key: &str) -> Option<&str> {
        self.broker_configs
            .get(&id.to_string())
            .and_then(|c| c.get(key))
            .or_else(|| self.broker_configs.get("").and_then(|c| c.get(key)))
            .map(String::as_str)
    }

    /// The broker clients should use for a partition: its manual assignment's hint when
    /// that broker is alive, else rendezvous hashing over the live brokers.
    pub fn preferred_broker(&self, topic: &str, partition: i32) -> Option<u64> {
        let hint = self.partition(topic, partition).and_then(|p| p.preferred);
        self.cluster.preferred_broker_hinted(topic, partition, hint)
    }

    /// [`Self::preferred_broker`] as if `excluded` were dead (a fenced broker's answer).
    pub fn preferred_broker_excluding(
        &self,
        topic: &str,
        partition: i32,
        excluded: Option<u64>,
    ) -> Option<u64> {
        let hint = self.partition(topic, partition).and_then(|p| p.preferred);
        self.cluster
            .preferred_broker_excluding(topic, partition, hint, excluded)
    }

    /// KIP-392: where a consumer in `rack` should read a partition.
    pub fn read_replica(&self, topic: &str, partition: i32, rack: &str) -> Option<u64> {
        let hint = self.partition(topic, partition).and_then(|p| p.preferred);
        self.cluster.read_replica(topic, partition, rack, hint)
    }

    /// The broker a client in `zone` should use for a partition, as if `excluded` were
    /// dead; None when the zone has no live broker.
    pub fn zone_broker(
        &self,
        topic: &str,
        partition: i32,
        zone: &str,
        excluded: Option<u64>,
    ) -> Option<u64> {
        let hint = self.partition(topic, partition).and_then(|p| p.preferred);
        self.cluster
            .in_rack_broker(topic, partition, zone, hint, excluded)
    }
}

/// AlterConfigs (`replace`: the set becomes exactly `changes`) or IncrementalAlterConfigs
/// (`changes` on top; None deletes a key).
fn patch(
    configs: &mut BTreeMap<String, String>,
    replace: bool,
    changes: &BTreeMap<String, Option<String>>,
) {
    if replace {
        configs.clear();
    }
    for (key, value) in changes {
        match value {
            Some(v) => configs.insert(key.clone(), v.clone()),
            None => configs.remove(key),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::cluster::ClusterCommand;
    use super::super::fixtures::{commit, create, entry, one_segment};
    use super::super::OffsetCommit;
    use super::*;

    #[test]
    fn topics_are_validated() {
        let mut s = MetadataState::default();
        assert_eq!(
            s.apply(&create("t", 0)),
            Response::Topic(Err(StateError::InvalidPartitions))
        );
        assert_eq!(
            s.apply(&create("bad name", 1)),
            Response::Topic(Err(StateError::InvalidTopic))
        );
        assert_eq!(s.apply(&create("t", 1)), Response::Topic(Ok(())));
        assert_eq!(
            s.apply(&create("t", 1)),
            Response::Topic(Err(StateError::TopicAlreadyExists))
        );
        assert_eq!(
            s.apply(&Command::DeleteTopic { name: "x".into() }),
            Response::Topic(Err(StateError::UnknownTopicOrPartition))
        );
    }

    #[test]
    fn delete_topic_drops_index_offsets_and_refs() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        s.apply(&one_segment("a".into(), vec![entry("t", 0, 1)]));
        s.apply(&Command::CommitOffsets {
            group: "g".into(),
            offsets: vec![OffsetCommit {
                topic: "t".into(),
                partition: 0,
                offset: 1,
                leader_epoch: -1,
                metadata: None,
                commit_ms: 5,
            }],
        });
        assert_eq!(s.committed_offset("g", "t", 0).map(|c| c.offset), Some(1));
        s.apply(&Command::DeleteTopic { name: "t".into() });
        assert_eq!(s.object_refs("a"), 0);
        assert!(s.committed_offset("g", "t", 0).is_none());
        // A re-created topic starts from offset zero.
        s.apply(&create("t", 1));
        assert_eq!(s.partition("t", 0).unwrap().next_offset, 0);
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 2));
        let grow = |name: &str, count| Command::CreatePartitions {
            name: name.into(),
            count,
            preferred: Vec::new(),
        };
        assert_eq!(
            s.apply(&grow("t", 2)),
            Response::Topic(Err(StateError::InvalidPartitions))
        );
        assert_eq!(
            s.apply(&grow("x", 3)),
            Response::Topic(Err(StateError::UnknownTopicOrPartition))
        );
        assert_eq!(s.apply(&grow("t", 5)), Response::Topic(Ok(())));
        assert_eq!(s.topic("t").unwrap().partitions.len(), 5);
        assert_eq!(
            s.apply(&grow("t", MAX_PARTITIONS + 1)),
            Response::Topic(Err(StateError::InvalidPartitions))
        );
        // New partitions take writes from offset zero.
        assert_eq!(commit(&mut s, entry("t", 4, 2)), Ok(0));
    }

    #[test]
    fn manual_assignments_hint_the_preferred_broker() {
        let mut s = MetadataState::default();
        for id in [1, 2] {
            s.apply(&Command::Cluster(ClusterCommand::Register {
                id,
                host: "h".into(),
                port: 9092,
                rack: None,
                now_ms: 0,
            }));
        }
        let create = |name: &str, preferred: Vec<u64>| Command::CreateTopic {
            name: name.into(),
            topic_id: [2; 16],
            partitions: preferred.len().max(1) as i32,
            configs: BTreeMap::new(),
            now_ms: 0,
            preferred,
        };
        // Unknown broker ids and a count that disagrees are refused, and nothing is created.
        assert_eq!(
            s.apply(&create("bad", vec![1, 9])),
            Response::Topic(Err(StateError::InvalidReplicaAssignment))
        );
        assert!(s.topic("bad").is_none());
        let mut wrong_count = create("bad", vec![1, 2]);
        if let Command::CreateTopic { partitions, .. } = &mut wrong_count {
            *partitions = 3;
        }
        assert_eq!(
            s.apply(&wrong_count),
            Response::Topic(Err(StateError::InvalidReplicaAssignment))
        );
        // Every partition of "a" is pinned to broker 1, of "b" to broker 2.
        assert_eq!(s.apply(&create("a", vec![1; 8])), Response::Topic(Ok(())));
        assert_eq!(s.apply(&create("b", vec![2; 8])), Response::Topic(Ok(())));
        for p in 0..8 {
            assert_eq!(s.partition("a", p).unwrap().preferred, Some(1));
            assert_eq!(s.preferred_broker("a", p), Some(1));
            assert_eq!(s.preferred_broker("b", p), Some(2));
        }
        // Hashing alone spreads 8 partitions over both brokers; the hints override it.
        assert_eq!(s.apply(&create("c", Vec::new())), Response::Topic(Ok(())));
        assert_eq!(s.partition("c", 0).unwrap().preferred, None);
        // New partitions take their own hints; the old ones keep theirs.
        let grow = |count, preferred| Command::CreatePartitions {
            name: "a".into(),
            count,
            preferred,
        };
        assert_eq!(
            s.apply(&grow(10, vec![2])),
            Response::Topic(Err(StateError::InvalidReplicaAssignment))
        );
        assert_eq!(
            s.apply(&grow(10, vec![2, 7])),
            Response::Topic(Err(StateError::InvalidReplicaAssignment))
        );
        assert_eq!(s.topic("a").unwrap().partitions.len(), 8);
        assert_eq!(s.apply(&grow(10, vec![2, 2])), Response::Topic(Ok(())));
        assert_eq!(s.preferred_broker("a", 0), Some(1));
        assert_eq!(s.preferred_broker("a", 9), Some(2));
        // A hint to a dead broker falls back to hashing over the live ones.
        s.apply(&Command::Cluster(ClusterCommand::Heartbeat {
            id: 1,
            now_ms: 100,
        }));
        s.apply(&Command::Cluster(ClusterCommand::Expire {
            now_ms: 100,
            lease_ms: 50,
        }));
        assert_eq!(s.preferred_broker("a", 9), Some(1));
        assert_eq!(s.preferred_broker("b", 0), Some(1));
        assert_eq!(s.partition("b", 0).unwrap().preferred, Some(2));
        // It comes back when the broker does, and survives a snapshot round trip.
        s.apply(&Command::Cluster(ClusterCommand::Heartbeat {
            id: 2,
            now_ms: 200,
        }));
        assert_eq!(s.preferred_broker("b", 0), Some(2));
        let restored: MetadataState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(restored.preferred_broker("b", 3), Some(2));
    }

    #[test]
    fn group_configs_are_patched_per_group_and_kept_in_snapshots() {
        let mut s = MetadataState::default();
        let alter =
            |group: &str, replace, kv: &[(&str, Option<&str>)]| Command::AlterGroupConfigs {
                group: group.to_owned(),
                replace,
                changes: kv
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                    .collect(),
            };
        let hb = "consumer.heartbeat.interval.ms";
        let session = "consumer.session.timeout.ms";
        s.apply(&alter("g", false, &[(hb, Some("6000"))]));
        s.apply(&alter("g", false, &[(session, Some("50000"))]));
        s.apply(&alter("h", false, &[(session, Some("46000"))]));
        let g = s.group_configs("g").unwrap();
        assert_eq!(g.get(hb).map(String::as_str), Some("6000"));
        assert_eq!(g.get(session).map(String::as_str), Some("50000"));
        let restored: MetadataState =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(restored.group_configs("g"), s.group_configs("g"));
        // A whole set replaces; deleting the last one forgets the group's entry.
        s.apply(&alter("g", true, &[(session, Some("47000"))]));
        assert_eq!(s.group_configs("g").unwrap().len(), 1);
        s.apply(&alter("g", false, &[(session, None)]));
        assert!(s.group_configs("g").is_none());
        assert!(s.group_configs("h").is_some());
    }

    #[test]
    fn broker_configs_are_set_per_scope_and_fall_back_to_the_default() {
        let mut s = MetadataState::default();
        let alter = |broker, replace, kv: &[(&str, Option<&str>)]| Command::AlterBrokerConfigs {
            broker,
            replace,
            changes: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        };
        s.apply(&alter(
            None,
            false,
            &[
                ("num.partitions", Some("3")),
                ("log.retention.ms", Some("5")),
            ],
        ));
        s.apply(&alter(Some(2), false, &[("num.partitions", Some("7"))]));
        assert_eq!(s.broker_config(1, "num.partitions"), Some("3"));
        assert_eq!(s.broker_config(2, "num.partitions"), Some("7"));
        assert_eq!(s.broker_config(2, "log.retention.ms"), Some("5"));
        assert_eq!(s.broker_config(2, "message.max.bytes"), None);
        s.apply(&alter(None, false, &[("log.retention.ms", None)]));
        assert_eq!(s.broker_config(1, "log.retention.ms"), None);
        s.apply(&alter(None, true, &[("message.max.bytes", Some("10"))]));
        assert_eq!(s.broker_config(1, "num.partitions"), None);
        assert_eq!(s.broker_config(1, "message.max.bytes"), Some("10"));
        s.apply(&alter(Some(2), true, &[]));
        assert!(s.broker_configs("2").is_none());
        assert_eq!(s.broker_config(2, "num.partitions"), None);
    }

    #[test]
    fn topic_configs_are_replaced_or_patched() {
        let mut s = MetadataState::default();
        s.apply(&create("t", 1));
        let alter = |replace, kv: &[(&str, Option<&str>)]| Command::AlterTopicConfigs {
            name: "t".into(),
            replace,
            changes: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        };
        s.apply(&alter(false, &[("a", Some("1")), ("b", Some("2"))]));
        s.apply(&alter(false, &[("a", None), ("c", Some("3"))]));
        let configs = &s.topic("t").unwrap().configs;
        assert_eq!(
            configs.iter().collect::<Vec<_>>(),
            vec![
                (&"b".to_string(), &"2".to_string()),
                (&"c".to_string(), &"3".to_string())
            ]
        );
        s.apply(&alter(true, &[("d", Some("4"))]));
        assert_eq!(s.topic("t").unwrap().configs.len(), 1);
        assert_eq!(
            s.apply(&Command::AlterTopicConfigs {
                name: "x".into(),
                replace: true,
                changes: BTreeMap::new()
            }),
            Response::Topic(Err(StateError::UnknownTopicOrPartition))
        );
    }
}
