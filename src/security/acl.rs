//! Kafka ACLs: bindings, filters (DescribeAcls / DeleteAcls) and the authorizer decision.
//!
//! Wire codes are Kafka's (`org.apache.kafka.common.resource.ResourceType`,
//! `PatternType`, `acl.AclOperation`, `acl.AclPermissionType`).

use serde::{Deserialize, Serialize};

/// Kafka's resource types (wire codes in the discriminants). ANY (1) exists only in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic = 2,
    Group = 3,
    Cluster = 4,
    TransactionalId = 5,
    DelegationToken = 6,
    User = 7,
}

/// How a binding's resource name matches (wire codes 3 and 4). ANY (1) and MATCH (2)
/// exist only in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    Literal = 3,
    Prefixed = 4,
}

/// Kafka's ACL operations (wire codes). ANY (1) exists only in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    All = 2,
    Read = 3,
    Write = 4,
    Create = 5,
    Delete = 6,
    Alter = 7,
    Describe = 8,
    ClusterAction = 9,
    DescribeConfigs = 10,
    AlterConfigs = 11,
    IdempotentWrite = 12,
    CreateTokens = 13,
    DescribeTokens = 14,
}

/// ALLOW or DENY (wire codes 3 and 2). ANY (1) exists only in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Deny = 2,
    Allow = 3,
}

/// One ACL, as CreateAcls creates it and the metadata state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    pub resource_type: ResourceType,
    /// A name, or `*` for every resource of the type (LITERAL only).
    pub resource_name: String,
    pub pattern_type: PatternType,
    /// `User:alice`, or `User:*` for every principal.
    pub principal: String,
    /// An IP address, or `*` for any host.
    pub host: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// A DescribeAcls / DeleteAcls filter: each None is Kafka's ANY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: Option<ResourceType>,
    pub resource_name: Option<String>,
    pub pattern: PatternFilter,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<Operation>,
    pub permission: Option<Permission>,
}

/// A filter's pattern type: ANY (1), MATCH (2), or one exact pattern type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternFilter {
    Any,
    Match,
    Exactly(PatternType),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// Kafka's INVALID_REQUEST (42) with this message.
    #[error("{0}")]
    Invalid(String),
}

/// Every ACL of the cluster, as the metadata state keeps it. Serialized as the plain
/// set of bindings (any index is rebuilt when decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acls {
    bindings: std::collections::BTreeSet<AclBinding>,
}

impl Acls {
    /// Adds bindings (an existing one is left as it is).
    pub fn create(&mut self, bindings: &[AclBinding]) {
        self.bindings.extend(bindings.iter().cloned());
    }

    /// Removes and returns the bindings the filter matches.
    pub fn delete(&mut self, filter: &AclFilter) -> Vec<AclBinding> {
        let gone: Vec<AclBinding> = self.matching(filter).cloned().collect();
        for b in &gone {
            self.bindings.remove(b);
        }
        gone
    }

    /// The bindings the filter matches.
    pub fn matching<'a>(&'a self, filter: &'a AclFilter) -> impl Iterator<Item = &'a AclBinding> {
        self.bindings.iter().filter(move |b| filter.matches(b))
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

impl AclFilter {
    /// Stub until the full matching rules land.
    pub fn matches(&self, b: &AclBinding) -> bool {
        self.resource_type.is_none_or(|t| t == b.resource_type)
            && self
                .resource_name
                .as_ref()
                .is_none_or(|n| *n == b.resource_name)
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && self.operation.is_none_or(|o| o == b.operation)
            && self.permission.is_none_or(|p| p == b.permission)
    }
}

/// Who asks, from where, for the authorizer.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// `User:alice`.
    pub principal: &'a str,
    /// The client's IP address as text.
    pub host: &'a str,
}

/// The broker's authorization settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerSettings {
    /// Principals allowed everything (`super.users`).
    pub super_users: Vec<String>,
    /// `allow.everyone.if.no.acl.found`.
    pub allow_if_no_acl: bool,
}

/// May `who` perform `op` on the resource? Stub until the full rules land: super users,
/// then allow-if-no-ACL, then exact ALLOW without DENY.
pub fn authorize(
    acls: &Acls,
    settings: &AuthorizerSettings,
    who: Requester<'_>,
    op: Operation,
    resource_type: ResourceType,
    name: &str,
) -> bool {
    if settings.super_users.iter().any(|s| s == who.principal) {
        return true;
    }
    let relevant: Vec<&AclBinding> = acls
        .bindings
        .iter()
        .filter(|b| {
            b.resource_type == resource_type && (b.resource_name == name || b.resource_name == "*")
        })
        .collect();
    if relevant.is_empty() {
        return settings.allow_if_no_acl;
    }
    let applies = |b: &&&AclBinding| {
        (b.principal == who.principal || b.principal == "User:*")
            && (b.host == who.host || b.host == "*")
            && (b.operation == op || b.operation == Operation::All)
    };
    !relevant
        .iter()
        .filter(applies)
        .any(|b| b.permission == Permission::Deny)
        && relevant
            .iter()
            .filter(applies)
            .any(|b| b.permission == Permission::Allow)
}
