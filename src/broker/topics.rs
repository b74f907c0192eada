//! Topics as requests see them: look-ups, creation (Kafka's auto-create included) and
//! deletion through the metadata log, and a topic's configs as they take effect here.

use std::collections::BTreeMap;

use tracing::info;

use super::{Broker, BrokerError};
use crate::metadata::state::topics::valid_topic_name;
use crate::metadata::state::{Command, Response, StateError};
use crate::topic_config::TopicSettings;

/// What a request learns about a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicLookup {
    Found {
        id: [u8; 16],
        partitions: i32,
    },
    Missing,
    Invalid,
    /// It should exist (auto-create) but the metadata log could not be reached.
    Unavailable,
}

impl Broker {
    pub fn lookup_topic(&self, name: &str) -> TopicLookup {
        self.metadata.read(|s| match s.topic(name) {
            Some(t) => TopicLookup::Found {
                id: t.id,
                partitions: t.partitions.len() as i32,
            },
            None => TopicLookup::Missing,
        })
    }

    /// Looks a topic up, creating it with the default partition count when allowed
    /// (Kafka's auto.create.topics.enable).
    pub async fn lookup_or_create_topic(&self, name: &str, allow_create: bool) -> TopicLookup {
        match self.lookup_topic(name) {
            TopicLookup::Missing if !valid_topic_name(name) => TopicLookup::Invalid,
            TopicLookup::Missing if allow_create && self.config.topics.auto_create => {
                match self
                    .create_topic(name, self.default_partitions(), BTreeMap::new(), Vec::new())
                    .await
                {
                    Ok(_) | Err(BrokerError::State(StateError::TopicAlreadyExists)) => {
                        self.lookup_topic(name)
                    }
                    Err(BrokerError::State(_)) => TopicLookup::Invalid,
                    Err(BrokerError::Metadata(_)) => TopicLookup::Unavailable,
                }
            }
            found => found,
        }
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        preferred: Vec<u64>,
    ) -> Result<[u8; 16], BrokerError> {
        let topic_id = *uuid::Uuid::new_v4().as_bytes();
        let cmd = Command::CreateTopic {
            name: name.to_owned(),
            topic_id,
            partitions,
            configs,
            now_ms: crate::clock::now_ms(),
            preferred,
        };
        match self.metadata.propose(cmd).await? {
            Response::Topic(Ok(())) => {
                info!(topic = name, partitions, "topic created");
                Ok(topic_id)
            }
            Response::Topic(Err(e)) => Err(BrokerError::State(e)),
            _ => Err(BrokerError::State(StateError::InvalidTopic)),
        }
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        match self
            .metadata
            .propose(Command::DeleteTopic {
                name: name.to_owned(),
            })
            .await?
        {
            Response::Topic(Ok(())) => {
                info!(topic = name, "topic deleted");
                Ok(())
            }
            Response::Topic(Err(e)) => Err(BrokerError::State(e)),
            _ => Err(BrokerError::State(StateError::UnknownTopicOrPartition)),
        }
    }

    /// A topic's configs as they take effect here, read in one look-up with the
    /// effective precedence (topic, dynamic broker, static default, Kafka's default);
    /// None for an unknown topic.
    pub fn topic_settings(&self, topic: &str) -> Option<TopicSettings> {
        let node = self.config.node.id;
        self.metadata.read(|s| {
            let t = s.topic(topic)?;
            Some(
                s.config_layers(node, &self.config.topics.defaults)
                    .settings(&t.configs),
            )
        })
    }

    /// The partition count of auto-created topics (and CreateTopics without one): the
    /// dynamic broker config `num.partitions`, else the static `default_partitions`.
    pub fn default_partitions(&self) -> i32 {
        let node = self.config.node.id;
        self.metadata
            .read(|s| {
                s.broker_config(node, "num.partitions")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(self.config.topics.default_partitions)
    }
}
