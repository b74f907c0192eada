//! Who sent a request, and what they may do: the ACL checks every handler makes, and
//! the authorized-operations fields (KIP-430) that Metadata, DescribeCluster and
//! DescribeGroups return.
//!
//! The decision itself is pure (`security::acl::authorize`); this reads the ACLs from
//! the metadata state and the broker's `super_users` and
//! `allow_everyone_if_no_acl_found`.

use std::sync::Arc;

use crate::broker::Broker;
use crate::config::Listener;
use crate::security::acl::{self, Operation, Requester, ResourceType};

pub use crate::security::acl::{CLUSTER_NAME, NOT_REQUESTED};

/// The connection a request came in on, once authenticated.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// `User:<name>` (SASL), `User:<subject DN>` (client certificate) or
    /// `User:ANONYMOUS`.
    pub principal: String,
    /// The client's IP address, as ACL hosts name it.
    pub host: String,
    pub listener: Arc<Listener>,
}

/// The authorizer, bound to one request.
pub struct Authz<'a> {
    broker: &'a Broker,
    ctx: &'a RequestContext,
}

impl<'a> Authz<'a> {
    pub fn new(broker: &'a Broker, ctx: &'a RequestContext) -> Self {
        Self { broker, ctx }
    }

    /// The client's IP address.
    pub fn host(&self) -> &str {
        &self.ctx.host
    }

    pub fn allowed(&self, op: Operation, resource_type: ResourceType, name: &str) -> bool {
        let settings = &self.broker.security().authorizer;
        let who = Requester {
            principal: &self.ctx.principal,
            host: &self.ctx.host,
        };
        if settings.is_super_user(who.principal) {
            return true;
        }
        self.broker
            .read(|s| acl::authorize(s.access().acls(), settings, who, op, resource_type, name))
    }

    /// [`Self::allowed`] for many resources of one type, under one read of the state.
    pub fn allowed_each(
        &self,
        op: Operation,
        resource_type: ResourceType,
        names: &[&str],
    ) -> Vec<bool> {
        let settings = &self.broker.security().authorizer;
        let who = Requester {
            principal: &self.ctx.principal,
            host: &self.ctx.host,
        };
        if settings.is_super_user(who.principal) {
            return vec![true; names.len()];
        }
        self.broker.read(|s| {
            names
                .iter()
                .map(|name| {
                    acl::authorize(s.access().acls(), settings, who, op, resource_type, name)
                })
                .collect()
        })
    }

    /// Kafka's `authorizeByResourceType(WRITE, TOPIC)` (KIP-679, for idempotent
    /// producers): some ALLOW for WRITE (or ALL) on a topic applies to the principal and
    /// host, or the authorizer allows resources without ACLs.
    pub fn may_write_some_topic(&self) -> bool {
        let settings = &self.broker.security().authorizer;
        if settings.allow_if_no_acl || settings.is_super_user(&self.ctx.principal) {
            return true;
        }
        let filter = acl::AclFilter {
            resource_type: Some(ResourceType::Topic),
            resource_name: None,
            pattern: acl::PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: Some(acl::Permission::Allow),
        };
        self.broker.read(|s| {
            s.access().acls().matching(&filter).any(|b| {
                matches!(b.operation, Operation::Write | Operation::All)
                    && (b.principal == self.ctx.principal || b.principal == "User:*")
                    && (b.host == self.ctx.host || b.host == "*")
            })
        })
    }

    /// The listener the request came in on, for the addresses to answer with.
    pub fn listener(&self) -> &str {
        &self.ctx.listener.name
    }

    pub fn topic(&self, op: Operation, name: &str) -> bool {
        self.allowed(op, ResourceType::Topic, name)
    }

    pub fn group(&self, op: Operation, name: &str) -> bool {
        self.allowed(op, ResourceType::Group, name)
    }

    pub fn transactional_id(&self, op: Operation, id: &str) -> bool {
        self.allowed(op, ResourceType::TransactionalId, id)
    }

    pub fn cluster(&self, op: Operation) -> bool {
        self.allowed(op, ResourceType::Cluster, CLUSTER_NAME)
    }

    /// The KIP-430 field for a resource, when the request asked for it.
    pub fn reported(&self, requested: bool, resource_type: ResourceType, name: &str) -> i32 {
        if !requested {
            return NOT_REQUESTED;
        }
        let settings = &self.broker.security().authorizer;
        let who = Requester {
            principal: &self.ctx.principal,
            host: &self.ctx.host,
        };
        // Every supported operation under one read of the state, not one read each.
        let ops = self.broker.read(|s| {
            acl::authorized_operations(
                s.access().acls(),
                settings,
                who,
                resource_type,
                name,
                supported(resource_type),
            )
        });
        bits(&ops)
    }
}

/// The operations each resource type supports, as Kafka 3.x lists them
/// (`kafka.security.authorizer.AclEntry.supportedOperations`).
pub fn supported(resource_type: ResourceType) -> &'static [Operation] {
    use Operation::*;
    match resource_type {
        ResourceType::Topic => &[
            Read,
            Write,
            Create,
            Describe,
            Delete,
            Alter,
            DescribeConfigs,
            AlterConfigs,
        ],
        ResourceType::Group => &[Read, Describe, Delete],
        ResourceType::Cluster => &[
            Create,
            ClusterAction,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
            Alter,
            Describe,
        ],
        ResourceType::TransactionalId => &[Describe, Write],
        ResourceType::DelegationToken => &[Describe],
        ResourceType::User => &[CreateTokens, DescribeTokens],
    }
}

/// Operations as Kafka's 32-bit field: bit `code` set for each.
pub fn bits(ops: &[Operation]) -> i32 {
    ops.iter().fold(0, |field, op| field | 1 << (*op as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_kafka() {
        // Bits 3,4,5,6,7,8,10,11 / 3,6,8 / 5,7,8,9,10,11,12.
        assert_eq!(bits(supported(ResourceType::Topic)), 0b1101_1111_1000);
        assert_eq!(bits(supported(ResourceType::Group)), 0b1_0100_1000);
        assert_eq!(bits(supported(ResourceType::Cluster)), 0b1_1111_1010_0000);
    }
}
