//! Authorized operations (KIP-430): the ACL operations a principal may perform on a
//! topic, group or the cluster, as the bit field that Metadata, DescribeCluster and
//! DescribeGroups return when the request sets `include_*_authorized_operations`.
//!
//! Strata has no authorizer yet, and Kafka without one grants every operation the
//! resource type supports (`AclEntry.supportedOperations`). When ACLs arrive,
//! [`authorized`] is the one place that narrows this to the principal's own.

/// Kafka's `AclOperation` codes (the bit positions of the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclOperation {
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
}

/// The resource types that report authorized operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Topic,
    Group,
    Cluster,
}

/// What the request gets when it did not ask: Kafka's `Int32.MIN_VALUE`, which clients
/// read as "not included".
pub const NOT_REQUESTED: i32 = i32::MIN;

/// The operations each resource type supports, as Kafka 3.x lists them
/// (`kafka.security.authorizer.AclEntry.supportedOperations`).
pub fn supported(resource: Resource) -> &'static [AclOperation] {
    use AclOperation::*;
    match resource {
        Resource::Topic => &[
            Read,
            Write,
            Create,
            Describe,
            Delete,
            Alter,
            DescribeConfigs,
            AlterConfigs,
        ],
        Resource::Group => &[Read, Describe, Delete],
        Resource::Cluster => &[
            Create,
            ClusterAction,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
            Alter,
            Describe,
        ],
    }
}

/// Operations as Kafka's 32-bit field: bit `code` set for each.
pub fn bits(ops: &[AclOperation]) -> i32 {
    ops.iter().fold(0, |field, op| field | 1 << (*op as i32))
}

/// The field for a resource of this type: every supported operation (no authorizer).
pub fn authorized(resource: Resource) -> i32 {
    bits(supported(resource))
}

/// The field when the request asked for it, else [`NOT_REQUESTED`].
pub fn reported(requested: bool, resource: Resource) -> i32 {
    if requested {
        authorized(resource)
    } else {
        NOT_REQUESTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_kafka_without_an_authorizer() {
        // Bits 3,4,5,6,7,8,10,11 / 3,6,8 / 5,7,8,9,10,11,12.
        assert_eq!(authorized(Resource::Topic), 0b1101_1111_1000);
        assert_eq!(authorized(Resource::Group), 0b1_0100_1000);
        assert_eq!(authorized(Resource::Cluster), 0b1_1111_1010_0000);
        assert_eq!(reported(false, Resource::Topic), i32::MIN);
    }
}
