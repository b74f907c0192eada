//! CreateAcls, DescribeAcls and DeleteAcls: the cluster's ACLs live in the metadata
//! state, so every broker enforces the same ones as soon as it has applied them.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};

use super::authz::Authz;
use super::str_bytes;
use crate::broker::Broker;
use crate::metadata::state::{Command, Response};
use crate::security::acl::{AclBinding, AclError, AclFilter, Operation};

const REFUSED: &str = "Authorization failed: ALTER on the cluster";

/// One creation or filter of a request that may ALTER the cluster (`allowed`), parsed.
fn checked<T>(
    allowed: bool,
    parse: impl FnOnce() -> Result<T, AclError>,
) -> Result<T, (ResponseError, String)> {
    if !allowed {
        return Err((
            ResponseError::ClusterAuthorizationFailed,
            REFUSED.to_owned(),
        ));
    }
    parse().map_err(|e| (ResponseError::InvalidRequest, e.to_string()))
}

/// ALTER on the cluster; each creation is validated as Kafka does (INVALID_REQUEST with
/// its message), the valid ones are created in one proposal.
pub async fn create(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: CreateAclsRequest,
    _version: i16,
) -> CreateAclsResponse {
    let allowed = authz.cluster(Operation::Alter);
    let parsed: Vec<Result<AclBinding, (ResponseError, String)>> = req
        .creations
        .iter()
        .map(|c| {
            checked(allowed, || {
                AclBinding::from_wire(
                    c.resource_type,
                    c.resource_name.as_str(),
                    c.resource_pattern_type,
                    c.principal.as_str(),
                    c.host.as_str(),
                    c.operation,
                    c.permission_type,
                )
            })
        })
        .collect();
    let bindings: Vec<AclBinding> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .cloned()
        .collect();
    let failure = if bindings.is_empty() {
        None
    } else {
        match broker.propose(Command::CreateAcls { bindings }).await {
            Ok(Response::Access(Ok(()))) => None,
            Ok(Response::Access(Err(e))) => Some((ResponseError::InvalidRequest, e.to_string())),
            Ok(other) => Some((ResponseError::UnknownServerError, format!("{other:?}"))),
            Err(e) => Some((ResponseError::RequestTimedOut, e.to_string())),
        }
    };
    let results = parsed
        .into_iter()
        .map(|r| match r.err().or_else(|| failure.clone()) {
            None => AclCreationResult::default(),
            Some((code, message)) => AclCreationResult::default()
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&message))),
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

/// DESCRIBE on the cluster; the matching bindings grouped by resource pattern.
pub fn describe(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DescribeAclsRequest,
    _version: i16,
) -> DescribeAclsResponse {
    let response = DescribeAclsResponse::default();
    if !authz.cluster(Operation::Describe) {
        return response
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
            .with_error_message(Some(str_bytes(
                "Authorization failed: DESCRIBE on the cluster",
            )));
    }
    let filter = match AclFilter::from_wire(
        req.resource_type_filter,
        req.resource_name_filter.as_ref().map(|s| s.as_str()),
        req.pattern_type_filter,
        req.principal_filter.as_ref().map(|s| s.as_str()),
        req.host_filter.as_ref().map(|s| s.as_str()),
        req.operation,
        req.permission_type,
    ) {
        Ok(filter) => filter,
        Err(e) => {
            return response
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(str_bytes(&e.to_string())))
        }
    };
    let matching: Vec<AclBinding> =
        broker.read(|s| s.access().acls().matching(&filter).cloned().collect());
    // Grouped by resource pattern, as Kafka answers.
    let mut resources: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for b in matching {
        resources
            .entry((
                b.resource_type.code(),
                b.resource_name.clone(),
                b.pattern_type.code(),
            ))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(str_bytes(&b.principal))
                    .with_host(str_bytes(&b.host))
                    .with_operation(b.operation.code())
                    .with_permission_type(b.permission.code()),
            );
    }
    let resources = resources
        .into_iter()
        .map(|((resource_type, name, pattern_type), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(str_bytes(&name))
                .with_pattern_type(pattern_type)
                .with_acls(acls)
        })
        .collect();
    response.with_error_message(None).with_resources(resources)
}

/// ALTER on the cluster; each filter's matches (read here) are deleted in one proposal,
/// and each filter answers with the bindings it matched that were still there.
pub async fn delete(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DeleteAclsRequest,
    _version: i16,
) -> DeleteAclsResponse {
    let allowed = authz.cluster(Operation::Alter);
    let filters: Vec<Result<AclFilter, (ResponseError, String)>> = req
        .filters
        .iter()
        .map(|f| {
            checked(allowed, || {
                AclFilter::from_wire(
                    f.resource_type_filter,
                    f.resource_name_filter.as_ref().map(|s| s.as_str()),
                    f.pattern_type_filter,
                    f.principal_filter.as_ref().map(|s| s.as_str()),
                    f.host_filter.as_ref().map(|s| s.as_str()),
                    f.operation,
                    f.permission_type,
                )
            })
        })
        .collect();
    let matched: Vec<Vec<AclBinding>> = broker.read(|s| {
        filters
            .iter()
            .map(|f| match f {
                Ok(filter) => s.access().acls().matching(filter).cloned().collect(),
                Err(_) => Vec::new(),
            })
            .collect()
    });
    let mut all: Vec<AclBinding> = matched.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    let outcome = if all.is_empty() {
        Ok(Vec::new())
    } else {
        match broker.propose(Command::DeleteAcls { bindings: all }).await {
            Ok(Response::AclsDeleted(deleted)) => Ok(deleted),
            Ok(other) => Err((ResponseError::UnknownServerError, format!("{other:?}"))),
            Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
        }
    };
    let results = filters
        .into_iter()
        .zip(matched)
        .map(|(filter, matched)| {
            let failure = filter.err().or_else(|| outcome.as_ref().err().cloned());
            if let Some((code, message)) = failure {
                return DeleteAclsFilterResult::default()
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message)));
            }
            let deleted = outcome.as_deref().unwrap_or_default();
            let acls = matched
                .into_iter()
                .filter(|b| deleted.contains(b))
                .map(|b| {
                    DeleteAclsMatchingAcl::default()
                        .with_resource_type(b.resource_type.code())
                        .with_resource_name(str_bytes(&b.resource_name))
                        .with_pattern_type(b.pattern_type.code())
                        .with_principal(str_bytes(&b.principal))
                        .with_host(str_bytes(&b.host))
                        .with_operation(b.operation.code())
                        .with_permission_type(b.permission.code())
                        .with_error_message(None)
                })
                .collect();
            DeleteAclsFilterResult::default()
                .with_error_message(None)
                .with_matching_acls(acls)
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
