//! Routing a decoded request to its handler: the gates every request passes (a fenced
//! broker's InitProducerId, group authorization, NOT_COORDINATOR), then one function per
//! API family, each handing back what is not its own.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, DescribeClientQuotasResponse, DescribeLogDirsResponse, ElectLeadersResponse,
    ListPartitionReassignmentsResponse, RequestKind, ResponseKind, SaslAuthenticateResponse,
    SaslHandshakeResponse,
};
use tracing::debug;

use super::authz::{Authz, RequestContext};
use super::{
    acls, api_versions, cluster, configs, consumer_groups, elect_leaders, fetch, group_gate,
    groups, list_offsets, log_dirs, metadata, offsets, partitions, produce, producer_id, producers,
    quotas, reassignments, records, scram, str_bytes, topic_partitions, topics, transactions,
    ProtocolError,
};
use crate::broker::Broker;
use crate::security::acl::{Operation, ResourceType};

pub(super) async fn dispatch(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    request: RequestKind,
    version: i16,
    client_id: &str,
) -> Result<Option<ResponseKind>, ProtocolError> {
    if matches!(request, RequestKind::InitProducerId(_)) && broker.fenced() {
        return Err(ProtocolError::Fenced(ApiKey::InitProducerId));
    }
    let authz = Authz::new(broker, ctx);
    if let Some(refused) = group_gate::refuse_unauthorized(&authz, &request, version) {
        return Ok(Some(refused));
    }
    if let Some(redirect) = group_gate::redirect(broker, &request, version) {
        return Ok(Some(redirect));
    }
    if let RequestKind::Produce(req) = request {
        let pending = produce::enqueue(broker, ctx, req, version).await;
        return Ok(pending.finish().await.map(ResponseKind::Produce));
    }
    let request = match data_request(broker, &authz, request, version, client_id).await {
        Ok(response) => return Ok(Some(response)),
        Err(request) => request,
    };
    let request = match group_request(broker, &authz, request, version, client_id).await {
        Ok(response) => return Ok(Some(response)),
        Err(request) => request,
    };
    let request = match transaction_request(broker, &authz, request, version).await {
        Ok(response) => return Ok(Some(response)),
        Err(request) => request,
    };
    match admin_request(broker, &authz, request, version).await {
        Ok(response) => Ok(Some(response)),
        Err(other) => {
            debug!(?other, "request for an API missing from the dispatch table");
            Err(ProtocolError::UnsupportedVersion {
                key: ApiKey::ApiVersions,
                version,
            })
        }
    }
}

/// Metadata, fetches, offsets and cluster description; any other request is handed back.
async fn data_request(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    request: RequestKind,
    version: i16,
    client_id: &str,
) -> Result<ResponseKind, RequestKind> {
    // A client naming its zone is sent to that zone's brokers (parsed only where used:
    // Fetch passes through here too).
    let zone = || crate::broker::client_zone(client_id);
    Ok(match request {
        RequestKind::ApiVersions(req) => {
            ResponseKind::ApiVersions(api_versions::handle(req, version))
        }
        RequestKind::Metadata(req) => {
            ResponseKind::Metadata(metadata::handle(broker, authz, req, version, zone()).await)
        }
        RequestKind::Fetch(req) => {
            ResponseKind::Fetch(fetch::handle(broker, authz, req, version).await)
        }
        RequestKind::ListOffsets(req) => {
            ResponseKind::ListOffsets(list_offsets::handle(broker, authz, req, version).await)
        }
        RequestKind::DescribeCluster(req) => {
            ResponseKind::DescribeCluster(cluster::describe(broker, authz, req, version))
        }
        RequestKind::OffsetForLeaderEpoch(req) => ResponseKind::OffsetForLeaderEpoch(
            cluster::offset_for_leader_epoch(broker, authz, req, version).await,
        ),
        RequestKind::DescribeTopicPartitions(req) => ResponseKind::DescribeTopicPartitions(
            topic_partitions::describe(broker, authz, req, version, zone()),
        ),
        other => return Err(other),
    })
}

/// The consumer group APIs; any other request is handed back.
async fn group_request(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    request: RequestKind,
    version: i16,
    client_id: &str,
) -> Result<ResponseKind, RequestKind> {
    Ok(match request {
        RequestKind::FindCoordinator(req) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(broker, authz, req, version))
        }
        RequestKind::JoinGroup(req) => ResponseKind::JoinGroup(
            broker
                .groups()
                .join_group(req, version, client_id, "")
                .await,
        ),
        RequestKind::SyncGroup(req) => {
            ResponseKind::SyncGroup(broker.groups().sync_group(req, version).await)
        }
        RequestKind::Heartbeat(req) => {
            ResponseKind::Heartbeat(broker.groups().heartbeat(req, version).await)
        }
        RequestKind::ConsumerGroupHeartbeat(req) => ResponseKind::ConsumerGroupHeartbeat(
            consumer_groups::heartbeat(broker, authz, client_id, req, version).await,
        ),
        RequestKind::ConsumerGroupDescribe(req) => ResponseKind::ConsumerGroupDescribe(
            consumer_groups::describe(broker, authz, req, version),
        ),
        RequestKind::LeaveGroup(req) => {
            ResponseKind::LeaveGroup(broker.groups().leave_group(req, version).await)
        }
        RequestKind::DescribeGroups(req) => {
            // v3+ (KIP-430): the caller's operations on each group it may describe.
            let ops = version >= 3 && req.include_authorized_operations;
            ResponseKind::DescribeGroups(broker.groups().describe_groups(
                req,
                version,
                |group| {
                    authz
                        .group(Operation::Describe, group)
                        .then(|| authz.reported(ops, ResourceType::Group, group))
                },
                |group| broker.read(|s| s.group_offsets(group).is_some()),
            ))
        }
        RequestKind::ListGroups(req) => {
            ResponseKind::ListGroups(groups::list_groups(broker, authz, req, version))
        }
        RequestKind::OffsetCommit(req) => {
            ResponseKind::OffsetCommit(offsets::commit(broker, authz, req, version).await)
        }
        RequestKind::OffsetFetch(req) => {
            ResponseKind::OffsetFetch(offsets::fetch(broker, authz, req, version))
        }
        RequestKind::OffsetDelete(req) => {
            ResponseKind::OffsetDelete(offsets::delete(broker, authz, req, version).await)
        }
        RequestKind::DeleteGroups(req) => {
            ResponseKind::DeleteGroups(groups::delete_groups(broker, authz, req, version).await)
        }
        other => return Err(other),
    })
}

/// The idempotence and transaction APIs; any other request is handed back.
async fn transaction_request(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    request: RequestKind,
    version: i16,
) -> Result<ResponseKind, RequestKind> {
    Ok(match request {
        RequestKind::InitProducerId(req) => {
            ResponseKind::InitProducerId(producer_id::init(broker, authz, req, version).await)
        }
        RequestKind::AddPartitionsToTxn(req) => ResponseKind::AddPartitionsToTxn(
            transactions::add_partitions(broker, authz, req, version).await,
        ),
        RequestKind::AddOffsetsToTxn(req) => ResponseKind::AddOffsetsToTxn(
            transactions::add_offsets(broker, authz, req, version).await,
        ),
        RequestKind::EndTxn(req) => {
            ResponseKind::EndTxn(transactions::end(broker, authz, req, version).await)
        }
        RequestKind::TxnOffsetCommit(req) => ResponseKind::TxnOffsetCommit(
            transactions::offset_commit(broker, authz, req, version).await,
        ),
        RequestKind::DescribeTransactions(req) => ResponseKind::DescribeTransactions(
            transactions::describe::describe(broker, authz, req, version),
        ),
        RequestKind::ListTransactions(req) => ResponseKind::ListTransactions(
            transactions::describe::list(broker, authz, req, version),
        ),
        RequestKind::DescribeProducers(req) => {
            ResponseKind::DescribeProducers(producers::describe(broker, authz, req, version))
        }
        other => return Err(other),
    })
}

/// Topic, config, ACL, credential and cluster administration; any other request is handed back.
async fn admin_request(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    request: RequestKind,
    version: i16,
) -> Result<ResponseKind, RequestKind> {
    let cluster_refused = ResponseError::ClusterAuthorizationFailed.code();
    Ok(match request {
        RequestKind::CreateTopics(req) => {
            ResponseKind::CreateTopics(topics::create(broker, authz, req, version).await)
        }
        RequestKind::DeleteTopics(req) => {
            ResponseKind::DeleteTopics(topics::delete(broker, authz, req, version).await)
        }
        RequestKind::DescribeConfigs(req) => {
            ResponseKind::DescribeConfigs(configs::describe(broker, authz, req, version))
        }
        RequestKind::AlterConfigs(req) => {
            ResponseKind::AlterConfigs(configs::alter(broker, authz, req, version).await)
        }
        RequestKind::IncrementalAlterConfigs(req) => ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter(broker, authz, req, version).await,
        ),
        RequestKind::CreatePartitions(req) => {
            ResponseKind::CreatePartitions(partitions::create(broker, authz, req, version).await)
        }
        RequestKind::DeleteRecords(req) => {
            ResponseKind::DeleteRecords(records::delete(broker, authz, req, version).await)
        }
        RequestKind::DescribeLogDirs(req) => {
            ResponseKind::DescribeLogDirs(if authz.cluster(Operation::Describe) {
                log_dirs::describe(broker, req, version)
            } else {
                DescribeLogDirsResponse::default().with_error_code(cluster_refused)
            })
        }
        RequestKind::ListPartitionReassignments(req) => {
            ResponseKind::ListPartitionReassignments(if authz.cluster(Operation::Describe) {
                reassignments::list(req, version)
            } else {
                ListPartitionReassignmentsResponse::default().with_error_code(cluster_refused)
            })
        }
        RequestKind::ElectLeaders(req) => {
            ResponseKind::ElectLeaders(if authz.cluster(Operation::Alter) {
                elect_leaders::elect(broker, req, version)
            } else {
                ElectLeadersResponse::default().with_error_code(cluster_refused)
            })
        }
        RequestKind::DescribeClientQuotas(req) => {
            ResponseKind::DescribeClientQuotas(if authz.cluster(Operation::DescribeConfigs) {
                quotas::describe(req, version)
            } else {
                DescribeClientQuotasResponse::default().with_error_code(cluster_refused)
            })
        }
        RequestKind::CreateAcls(req) => {
            ResponseKind::CreateAcls(acls::create(broker, authz, req, version).await)
        }
        RequestKind::DescribeAcls(req) => {
            ResponseKind::DescribeAcls(acls::describe(broker, authz, req, version))
        }
        RequestKind::DeleteAcls(req) => {
            ResponseKind::DeleteAcls(acls::delete(broker, authz, req, version).await)
        }
        RequestKind::DescribeUserScramCredentials(req) => {
            ResponseKind::DescribeUserScramCredentials(scram::describe(broker, authz, req, version))
        }
        RequestKind::AlterUserScramCredentials(req) => {
            ResponseKind::AlterUserScramCredentials(scram::alter(broker, authz, req, version).await)
        }
        // The connection answers these itself (`server::sasl`); here only when they come
        // on a listener without SASL.
        RequestKind::SaslHandshake(_) => ResponseKind::SaslHandshake(
            SaslHandshakeResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code()),
        ),
        RequestKind::SaslAuthenticate(_) => ResponseKind::SaslAuthenticate(
            SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(str_bytes("this listener does not use SASL"))),
        ),

        other => return Err(other),
    })
}
