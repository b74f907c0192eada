//! DescribeLogDirs: the log lives in the object store, so every broker reports one
//! logical log dir holding every partition, each with its bytes in the store and no lag.

use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::str_bytes;
use crate::broker::Broker;

/// The name of the one log dir reported.
pub const LOG_DIR: &str = "/strata";

pub fn describe(
    broker: &Arc<Broker>,
    req: DescribeLogDirsRequest,
    _version: i16,
) -> DescribeLogDirsResponse {
    let topics = broker.read(|s| {
        // (topic, partition indexes wanted); None asks for every partition.
        let wanted: Vec<(String, Option<Vec<i32>>)> = match &req.topics {
            None => s.topics().keys().map(|name| (name.clone(), None)).collect(),
            Some(topics) => topics
                .iter()
                .map(|t| (t.topic.as_str().to_owned(), Some(t.partitions.clone())))
                .collect(),
        };
        wanted
            .into_iter()
            .filter_map(|(name, partitions)| {
                let topic = s.topic(&name)?;
                let indexes: Vec<i32> = match partitions {
                    Some(p) => p,
                    None => (0..topic.partitions.len() as i32).collect(),
                };
                let partitions: Vec<_> = indexes
                    .into_iter()
                    .filter_map(|index| {
                        let p = topic.partitions.get(usize::try_from(index).ok()?)?;
                        Some(
                            DescribeLogDirsPartition::default()
                                .with_partition_index(index)
                                .with_partition_size(
                                    i64::try_from(p.size_bytes).unwrap_or(i64::MAX),
                                )
                                .with_offset_lag(0),
                        )
                    })
                    .collect();
                (!partitions.is_empty()).then(|| {
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(str_bytes(&name)))
                        .with_partitions(partitions)
                })
            })
            .collect::<Vec<_>>()
    });
    // The store has no size limit to report: -1 is Kafka's "unknown".
    let dir = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(LOG_DIR))
        .with_topics(topics)
        .with_total_bytes(-1)
        .with_usable_bytes(-1);
    DescribeLogDirsResponse::default().with_results(vec![dir])
}
