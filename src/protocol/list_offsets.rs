//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3) and by timestamp.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::broker::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub fn handle(broker: &Arc<Broker>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let topics =
        req.topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        let found = broker.metadata.read(|s| {
                            let part = s.partition(topic.name.as_str(), p.partition_index)?;
                            Some(match p.timestamp {
                                LATEST => (-1, part.next_offset),
                                EARLIEST => (-1, part.log_start_offset),
                                MAX_TIMESTAMP => part.max_timestamp().unwrap_or((-1, -1)),
                                ts => match part.offset_for_timestamp(ts) {
                                    Some(offset) => (ts, offset),
                                    // Kafka answers "no such record" with offset -1.
                                    None => (-1, -1),
                                },
                            })
                        });
                        let response = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index);
                        match found {
                            Some((timestamp, offset)) => response
                                .with_timestamp(timestamp)
                                .with_offset(offset)
                                .with_leader_epoch(if version >= 4 { 0 } else { -1 }),
                            None => response
                                .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
