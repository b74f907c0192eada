//! ListPartitionReassignments: storage is shared and no data ever moves, so no
//! reassignment is ever in progress.

use kafka_protocol::messages::{
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};

pub fn list(
    _req: ListPartitionReassignmentsRequest,
    _version: i16,
) -> ListPartitionReassignmentsResponse {
    ListPartitionReassignmentsResponse::default()
        .with_error_message(None)
        .with_topics(Vec::new())
}
