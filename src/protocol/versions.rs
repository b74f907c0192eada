//! The one table of Kafka APIs Strata serves, and the versions of each.
//!
//! Ranges cover what kafkajs 2.2, librdkafka 2.x and kafka-python negotiate, capped below
//! versions whose semantics we don't implement yet (Fetch v13+ addresses topics by id,
//! OffsetFetch v8+ batches groups, OffsetCommit v10 addresses topics by id). Each range is
//! also clipped to what the kafka-protocol crate can decode.

use kafka_protocol::messages::ApiKey;

const TABLE: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    // KIP-848: v1 brings member ids chosen by the client and subscriptions by pattern.
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    // After a v0 SaslHandshake the tokens go raw, unframed by Kafka headers
    // (`server/sasl.rs`); librdkafka wants v0 listed before it uses v1.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // Transactions, below KIP-890 part 2 (EndTxn v5 and friends bump the epoch per
    // transaction, which Strata's coordinator does not do).
    (ApiKey::AddPartitionsToTxn, 0, 4),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
];

/// Every supported API with its (min, max) version.
pub fn supported() -> impl Iterator<Item = (ApiKey, i16, i16)> {
    TABLE.iter().filter_map(|&(key, min, max)| {
        let valid = key.valid_versions();
        let (min, max) = (min.max(valid.min), max.min(valid.max));
        (min <= max).then_some((key, min, max))
    })
}

/// The supported range of `key`, or None when Strata doesn't serve it.
pub fn range(key: ApiKey) -> Option<(i16, i16)> {
    supported()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_in_the_table_survives_clipping() {
        assert_eq!(supported().count(), TABLE.len());
        assert_eq!(range(ApiKey::Produce), Some((3, 9)));
        assert_eq!(range(ApiKey::EndTxn), Some((0, 3)));
        assert_eq!(range(ApiKey::WriteTxnMarkers), None);
    }

    /// docs/compatibility.md lists every API with exactly the versions served here.
    #[test]
    fn compatibility_doc_matches_the_table() {
        let doc = include_str!("../../docs/compatibility.md");
        for (key, min, max) in supported() {
            let row = format!("| {key:?} | {} | {min}–{max} |", key as i16);
            assert!(doc.contains(&row), "docs/compatibility.md lacks {row}");
        }
    }
}
