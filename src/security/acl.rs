//! Kafka ACLs: bindings, filters (DescribeAcls / DeleteAcls) and the authorizer decision.
//!
//! Wire codes are Kafka's (`org.apache.kafka.common.resource.ResourceType`,
//! `PatternType`, `acl.AclOperation`, `acl.AclPermissionType`).
//!
//! The rules follow Kafka's KRaft `StandardAuthorizer` and `AclControlManager`:
//! super users may do everything; the ACLs of a resource are the LITERAL ones with its
//! exact name, the LITERAL `*` ones and the PREFIXED ones whose name is a prefix of the
//! resource name; an applicable DENY for the operation (or `All`) refuses; an applicable
//! ALLOW for the operation, `All`, or an implying operation allows (implications apply to
//! ALLOW only, as in Kafka); no ACL at all on the resource gives `allow_if_no_acl`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only valid resource name of a Cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// The authorized operations of a resource when the request did not ask for them:
/// Kafka's `Int32.MIN_VALUE`, which clients read as "not included".
pub const NOT_REQUESTED: i32 = i32::MIN;
/// The resource name (LITERAL) matching every resource of a type.
pub const WILDCARD_RESOURCE: &str = "*";
/// The principal matching every principal.
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The host matching every host.
pub const WILDCARD_HOST: &str = "*";

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

/// Kafka's wire code for ANY in every ACL enum.
pub const ANY_CODE: i8 = 1;
/// Kafka's wire code for the MATCH pattern type (filters only).
pub const MATCH_CODE: i8 = 2;

/// The name Kafka prints for a wire code of an ACL enum (`UNKNOWN`, `ANY`, `MATCH` for the
/// filter-only and unknown codes).
fn special_name(code: i8, has_match: bool) -> &'static str {
    match code {
        ANY_CODE => "ANY",
        MATCH_CODE if has_match => "MATCH",
        _ => "UNKNOWN",
    }
}

impl ResourceType {
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::TransactionalId,
        ResourceType::DelegationToken,
        ResourceType::User,
    ];

    /// The type of a wire code; None for UNKNOWN (0), ANY (1) and unknown codes.
    pub fn from_code(code: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    pub fn code(self) -> i8 {
        self as i8
    }

    /// Kafka's name (`TOPIC`).
    pub fn kafka_name(self) -> &'static str {
        match self {
            ResourceType::Topic => "TOPIC",
            ResourceType::Group => "GROUP",
            ResourceType::Cluster => "CLUSTER",
            ResourceType::TransactionalId => "TRANSACTIONAL_ID",
            ResourceType::DelegationToken => "DELEGATION_TOKEN",
            ResourceType::User => "USER",
        }
    }
}

impl PatternType {
    pub const ALL: [PatternType; 2] = [PatternType::Literal, PatternType::Prefixed];

    /// The pattern type of a wire code; None for UNKNOWN, ANY, MATCH and unknown codes.
    pub fn from_code(code: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    pub fn code(self) -> i8 {
        self as i8
    }

    /// Kafka's name (`LITERAL`).
    pub fn kafka_name(self) -> &'static str {
        match self {
            PatternType::Literal => "LITERAL",
            PatternType::Prefixed => "PREFIXED",
        }
    }
}

impl Operation {
    pub const ALL: [Operation; 13] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
        Operation::CreateTokens,
        Operation::DescribeTokens,
    ];

    /// The operation of a wire code; None for UNKNOWN, ANY and unknown codes.
    pub fn from_code(code: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.code() == code)
    }

    pub fn code(self) -> i8 {
        self as i8
    }

    /// Kafka's name (`READ`).
    pub fn kafka_name(self) -> &'static str {
        match self {
            Operation::All => "ALL",
            Operation::Read => "READ",
            Operation::Write => "WRITE",
            Operation::Create => "CREATE",
            Operation::Delete => "DELETE",
            Operation::Alter => "ALTER",
            Operation::Describe => "DESCRIBE",
            Operation::ClusterAction => "CLUSTER_ACTION",
            Operation::DescribeConfigs => "DESCRIBE_CONFIGS",
            Operation::AlterConfigs => "ALTER_CONFIGS",
            Operation::IdempotentWrite => "IDEMPOTENT_WRITE",
            Operation::CreateTokens => "CREATE_TOKENS",
            Operation::DescribeTokens => "DESCRIBE_TOKENS",
        }
    }

    /// Does an ALLOW for `self` also allow `requested`? (`All` allows everything;
    /// Read, Write, Delete and Alter imply Describe; AlterConfigs implies DescribeConfigs.)
    pub fn allow_implies(self, requested: Operation) -> bool {
        self == requested
            || self == Operation::All
            || match requested {
                Operation::Describe => matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ),
                Operation::DescribeConfigs => self == Operation::AlterConfigs,
                _ => false,
            }
    }

    /// Does a DENY for `self` refuse `requested`? (Only the operation itself or `All`:
    /// Kafka applies no implication to DENY.)
    pub fn deny_implies(self, requested: Operation) -> bool {
        self == requested || self == Operation::All
    }
}

impl Permission {
    pub const ALL: [Permission; 2] = [Permission::Deny, Permission::Allow];

    /// The permission of a wire code; None for UNKNOWN, ANY and unknown codes.
    pub fn from_code(code: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code() == code)
    }

    pub fn code(self) -> i8 {
        self as i8
    }

    /// Kafka's name (`ALLOW`).
    pub fn kafka_name(self) -> &'static str {
        match self {
            Permission::Deny => "DENY",
            Permission::Allow => "ALLOW",
        }
    }
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

impl AclBinding {
    /// A binding from a CreateAcls creation, validated as Kafka does (`AclApis` and
    /// `AclControlManager.validateNewAcl`); the error is Kafka's INVALID_REQUEST message.
    pub fn from_wire(
        resource_type: i8,
        name: &str,
        pattern_type: i8,
        principal: &str,
        host: &str,
        operation: i8,
        permission: i8,
    ) -> Result<AclBinding, AclError> {
        let resource_type = ResourceType::from_code(resource_type).ok_or_else(|| {
            AclError::Invalid(format!(
                "Invalid resourceType {}",
                special_name(resource_type, false)
            ))
        })?;
        let pattern_type = PatternType::from_code(pattern_type).ok_or_else(|| {
            AclError::Invalid(format!(
                "Invalid patternType {}",
                special_name(pattern_type, true)
            ))
        })?;
        let operation = Operation::from_code(operation).ok_or_else(|| {
            AclError::Invalid(format!(
                "Invalid operation {}",
                special_name(operation, false)
            ))
        })?;
        let permission = Permission::from_code(permission).ok_or_else(|| {
            AclError::Invalid(format!(
                "Invalid permissionType {}",
                special_name(permission, false)
            ))
        })?;
        if resource_type == ResourceType::Cluster && name != CLUSTER_NAME {
            return Err(AclError::Invalid(format!(
                "The only valid name for the CLUSTER resource is {CLUSTER_NAME}"
            )));
        }
        if name.is_empty() {
            return Err(AclError::Invalid(
                "Resource name should not be empty".to_string(),
            ));
        }
        validate_principal(principal)?;
        if host.is_empty() {
            return Err(AclError::Invalid("Host should not be empty".to_string()));
        }
        Ok(AclBinding {
            resource_type,
            resource_name: name.to_string(),
            pattern_type,
            principal: principal.to_string(),
            host: host.to_string(),
            operation,
            permission,
        })
    }
}

/// `Type:name`, both non-empty (Kafka's `SecurityUtils.parseKafkaPrincipal`).
fn validate_principal(principal: &str) -> Result<(), AclError> {
    match principal.split_once(':') {
        None => Err(AclError::Invalid(format!(
            "Could not parse principal from `{principal}` (no colon is present separating \
             the principal type from the principal name)"
        ))),
        Some((kind, name)) if kind.is_empty() || name.is_empty() => Err(AclError::Invalid(
            format!("expected a string in format principalType:principalName but got {principal}"),
        )),
        Some(_) => Ok(()),
    }
}

fn principal_applies(principal: &str, who: Requester<'_>) -> bool {
    principal == who.principal || principal == WILDCARD_PRINCIPAL
}

fn host_applies(host: &str, who: Requester<'_>) -> bool {
    host == who.host || host == WILDCARD_HOST
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

impl PatternFilter {
    /// The filter of a wire code; None for UNKNOWN (0) and unknown codes.
    pub fn from_code(code: i8) -> Option<Self> {
        match code {
            ANY_CODE => Some(PatternFilter::Any),
            MATCH_CODE => Some(PatternFilter::Match),
            _ => PatternType::from_code(code).map(PatternFilter::Exactly),
        }
    }

    pub fn code(self) -> i8 {
        match self {
            PatternFilter::Any => ANY_CODE,
            PatternFilter::Match => MATCH_CODE,
            PatternFilter::Exactly(p) => p.code(),
        }
    }
}

/// An optional enum from a filter's wire code: ANY is None, UNKNOWN and unknown codes are
/// errors.
fn filter_code<T>(code: i8, from: impl Fn(i8) -> Option<T>) -> Result<Option<T>, ()> {
    if code == ANY_CODE {
        Ok(None)
    } else {
        from(code).map(Some).ok_or(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// Kafka's INVALID_REQUEST (42) with this message.
    #[error("{0}")]
    Invalid(String),
}

impl AclFilter {
    /// The filter matching every binding.
    pub fn any() -> AclFilter {
        AclFilter {
            resource_type: None,
            resource_name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// The filter matching exactly this binding.
    pub fn exact(b: &AclBinding) -> AclFilter {
        AclFilter {
            resource_type: Some(b.resource_type),
            resource_name: Some(b.resource_name.clone()),
            pattern: PatternFilter::Exactly(b.pattern_type),
            principal: Some(b.principal.clone()),
            host: Some(b.host.clone()),
            operation: Some(b.operation),
            permission: Some(b.permission),
        }
    }

    /// A filter from a DescribeAcls request or a DeleteAcls filter: code 1 (ANY) and a
    /// null string are "any"; UNKNOWN or unknown codes are refused as Kafka's
    /// `AclControlManager.validateFilter` does.
    pub fn from_wire(
        resource_type: i8,
        name: Option<&str>,
        pattern: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> Result<AclFilter, AclError> {
        let unknown_pattern = || AclError::Invalid("Unknown patternFilter.".to_string());
        let unknown_entry = || AclError::Invalid("Unknown entryFilter.".to_string());
        let resource_type =
            filter_code(resource_type, ResourceType::from_code).map_err(|()| unknown_pattern())?;
        let pattern = PatternFilter::from_code(pattern).ok_or_else(unknown_pattern)?;
        let operation =
            filter_code(operation, Operation::from_code).map_err(|()| unknown_entry())?;
        let permission =
            filter_code(permission, Permission::from_code).map_err(|()| unknown_entry())?;
        Ok(AclFilter {
            resource_type,
            resource_name: name.map(str::to_string),
            pattern,
            principal: principal.map(str::to_string),
            host: host.map(str::to_string),
            operation,
            permission,
        })
    }

    /// Kafka's `AclBindingFilter.matches`: the resource pattern part as
    /// `ResourcePatternFilter.matches`, the entry part by plain equality (a `User:*` or `*`
    /// in the filter matches only bindings with exactly that principal or host).
    pub fn matches(&self, b: &AclBinding) -> bool {
        self.matches_pattern(b)
            && self.principal.as_ref().is_none_or(|p| *p == b.principal)
            && self.host.as_ref().is_none_or(|h| *h == b.host)
            && self.operation.is_none_or(|o| o == b.operation)
            && self.permission.is_none_or(|p| p == b.permission)
    }

    fn matches_pattern(&self, b: &AclBinding) -> bool {
        if self.resource_type.is_some_and(|t| t != b.resource_type) {
            return false;
        }
        if let PatternFilter::Exactly(p) = self.pattern {
            if p != b.pattern_type {
                return false;
            }
        }
        let Some(name) = &self.resource_name else {
            return true;
        };
        match self.pattern {
            PatternFilter::Any | PatternFilter::Exactly(_) => *name == b.resource_name,
            PatternFilter::Match => match b.pattern_type {
                PatternType::Literal => {
                    *name == b.resource_name || b.resource_name == WILDCARD_RESOURCE
                }
                PatternType::Prefixed => name.starts_with(b.resource_name.as_str()),
            },
        }
    }
}

/// The principal, host, operation and permission of a binding, as the index keeps them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    principal: String,
    host: String,
    operation: Operation,
    permission: Permission,
}

impl Entry {
    fn of(b: &AclBinding) -> Entry {
        Entry {
            principal: b.principal.clone(),
            host: b.host.clone(),
            operation: b.operation,
            permission: b.permission,
        }
    }

    fn applies_to(&self, who: Requester<'_>) -> bool {
        principal_applies(&self.principal, who) && host_applies(&self.host, who)
    }
}

/// The entries of one resource type, by pattern type and resource name.
#[derive(Debug, Clone, Default)]
struct TypeIndex {
    literal: BTreeMap<String, BTreeSet<Entry>>,
    prefixed: BTreeMap<String, BTreeSet<Entry>>,
    /// The longest prefixed name (bytes), to bound the prefix walk.
    max_prefix_len: usize,
}

impl TypeIndex {
    fn map_mut(&mut self, p: PatternType) -> &mut BTreeMap<String, BTreeSet<Entry>> {
        match p {
            PatternType::Literal => &mut self.literal,
            PatternType::Prefixed => &mut self.prefixed,
        }
    }

    fn insert(&mut self, b: &AclBinding) {
        if b.pattern_type == PatternType::Prefixed {
            self.max_prefix_len = self.max_prefix_len.max(b.resource_name.len());
        }
        self.map_mut(b.pattern_type)
            .entry(b.resource_name.clone())
            .or_default()
            .insert(Entry::of(b));
    }

    fn remove(&mut self, b: &AclBinding) {
        let map = self.map_mut(b.pattern_type);
        if let Some(entries) = map.get_mut(&b.resource_name) {
            entries.remove(&Entry::of(b));
            if entries.is_empty() {
                map.remove(&b.resource_name);
                if b.pattern_type == PatternType::Prefixed
                    && b.resource_name.len() == self.max_prefix_len
                {
                    self.max_prefix_len = self.prefixed.keys().map(String::len).max().unwrap_or(0);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.prefixed.is_empty()
    }

    /// Every entry that applies to the resource `name`: LITERAL `name`, LITERAL `*`, and
    /// PREFIXED with a prefix of `name` (the name itself included).
    fn applicable<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        let literal = self.literal.get(name).into_iter();
        let wildcard = (name != WILDCARD_RESOURCE)
            .then(|| self.literal.get(WILDCARD_RESOURCE))
            .flatten()
            .into_iter();
        let prefixed = (!self.prefixed.is_empty())
            .then(|| {
                name.char_indices()
                    .map(|(i, c)| i + c.len_utf8())
                    .take_while(|&end| end <= self.max_prefix_len)
                    .filter_map(|end| self.prefixed.get(&name[..end]))
            })
            .into_iter()
            .flatten();
        literal.chain(wildcard).chain(prefixed).flatten()
    }
}

/// Every ACL of the cluster, as the metadata state keeps it. Serialized as the plain
/// set of bindings (the index is rebuilt when decoded). Equality compares the bindings.
#[derive(Debug, Clone, Default)]
pub struct Acls {
    bindings: BTreeSet<AclBinding>,
    index: BTreeMap<ResourceType, TypeIndex>,
}

impl PartialEq for Acls {
    fn eq(&self, other: &Self) -> bool {
        self.bindings == other.bindings
    }
}

impl Eq for Acls {}

impl Serialize for Acls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.bindings.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Acls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeSet::<AclBinding>::deserialize(deserializer).map(Acls::from)
    }
}

impl From<BTreeSet<AclBinding>> for Acls {
    fn from(bindings: BTreeSet<AclBinding>) -> Self {
        let mut index: BTreeMap<ResourceType, TypeIndex> = BTreeMap::new();
        for b in &bindings {
            index.entry(b.resource_type).or_default().insert(b);
        }
        Acls { bindings, index }
    }
}

impl From<Acls> for BTreeSet<AclBinding> {
    fn from(acls: Acls) -> Self {
        acls.bindings
    }
}

impl Acls {
    /// Adds bindings (an existing one is left as it is).
    pub fn create(&mut self, bindings: &[AclBinding]) {
        for b in bindings {
            if self.bindings.insert(b.clone()) {
                self.index.entry(b.resource_type).or_default().insert(b);
            }
        }
    }

    /// Removes and returns the bindings the filter matches.
    pub fn delete(&mut self, filter: &AclFilter) -> Vec<AclBinding> {
        let gone: Vec<AclBinding> = self.matching(filter).cloned().collect();
        for b in &gone {
            self.bindings.remove(b);
            if let Some(ix) = self.index.get_mut(&b.resource_type) {
                ix.remove(b);
                if ix.is_empty() {
                    self.index.remove(&b.resource_type);
                }
            }
        }
        gone
    }

    /// The bindings the filter matches.
    pub fn matching<'a>(&'a self, filter: &'a AclFilter) -> impl Iterator<Item = &'a AclBinding> {
        self.bindings.iter().filter(move |b| filter.matches(b))
    }

    /// Every binding, in order.
    pub fn iter(&self) -> impl Iterator<Item = &AclBinding> {
        self.bindings.iter()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    /// The index entries applying to a resource (any principal, host, operation).
    fn applicable<'a>(
        &'a self,
        resource_type: ResourceType,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.index
            .get(&resource_type)
            .into_iter()
            .flat_map(move |ix| ix.applicable(name))
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

impl AuthorizerSettings {
    pub fn is_super_user(&self, principal: &str) -> bool {
        self.super_users.iter().any(|s| s == principal)
    }
}

/// May `who` perform `op` on the resource? As Kafka's `StandardAuthorizer`: super users
/// may; with no ACL at all on the resource, `allow_if_no_acl` decides; otherwise an
/// applicable DENY for `op` or `All` refuses, and an applicable ALLOW for `op`, `All` or
/// an implying operation allows; nothing applicable refuses.
pub fn authorize(
    acls: &Acls,
    settings: &AuthorizerSettings,
    who: Requester<'_>,
    op: Operation,
    resource_type: ResourceType,
    name: &str,
) -> bool {
    if settings.is_super_user(who.principal) {
        return true;
    }
    let mut found = false;
    let mut allowed = false;
    for e in acls.applicable(resource_type, name) {
        found = true;
        if !e.applies_to(who) {
            continue;
        }
        match e.permission {
            Permission::Deny if e.operation.deny_implies(op) => return false,
            Permission::Allow if e.operation.allow_implies(op) => allowed = true,
            _ => {}
        }
    }
    if found {
        allowed
    } else {
        settings.allow_if_no_acl
    }
}

/// The operations of `supported` that `who` may perform on the resource (KIP-430's
/// authorized operations), in the order given.
pub fn authorized_operations(
    acls: &Acls,
    settings: &AuthorizerSettings,
    who: Requester<'_>,
    resource_type: ResourceType,
    name: &str,
    supported: &[Operation],
) -> Vec<Operation> {
    supported
        .iter()
        .copied()
        .filter(|&op| authorize(acls, settings, who, op, resource_type, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const ALICE: Requester<'static> = Requester {
        principal: "User:alice",
        host: "10.0.0.1",
    };
    const BOB: Requester<'static> = Requester {
        principal: "User:bob",
        host: "10.0.0.2",
    };

    fn binding(
        resource_type: ResourceType,
        name: &str,
        pattern_type: PatternType,
        principal: &str,
        host: &str,
        operation: Operation,
        permission: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type,
            resource_name: name.to_string(),
            pattern_type,
            principal: principal.to_string(),
            host: host.to_string(),
            operation,
            permission,
        }
    }

    fn topic(
        name: &str,
        pattern: PatternType,
        who: &str,
        op: Operation,
        perm: Permission,
    ) -> AclBinding {
        binding(ResourceType::Topic, name, pattern, who, "*", op, perm)
    }

    fn acls(bindings: &[AclBinding]) -> Acls {
        let mut acls = Acls::default();
        acls.create(bindings);
        acls
    }

    fn strict() -> AuthorizerSettings {
        AuthorizerSettings::default()
    }

    fn can(acls: &Acls, who: Requester<'_>, op: Operation, name: &str) -> bool {
        authorize(acls, &strict(), who, op, ResourceType::Topic, name)
    }

    #[test]
    fn wire_codes_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_code(t.code()), Some(t));
        }
        for p in PatternType::ALL {
            assert_eq!(PatternType::from_code(p.code()), Some(p));
        }
        for o in Operation::ALL {
            assert_eq!(Operation::from_code(o.code()), Some(o));
        }
        for p in Permission::ALL {
            assert_eq!(Permission::from_code(p.code()), Some(p));
        }
        for code in [-1, 0, 1, 15, 100] {
            assert_eq!(ResourceType::from_code(code), None);
            assert_eq!(Operation::from_code(code), None);
        }
        assert_eq!(ResourceType::from_code(2), Some(ResourceType::Topic));
        assert_eq!(ResourceType::from_code(7), Some(ResourceType::User));
        assert_eq!(Operation::from_code(14), Some(Operation::DescribeTokens));
        assert_eq!(Permission::from_code(3), Some(Permission::Allow));
        assert_eq!(PatternType::from_code(2), None);
        assert_eq!(PatternFilter::from_code(1), Some(PatternFilter::Any));
        assert_eq!(PatternFilter::from_code(2), Some(PatternFilter::Match));
        assert_eq!(
            PatternFilter::from_code(4),
            Some(PatternFilter::Exactly(PatternType::Prefixed))
        );
        assert_eq!(PatternFilter::from_code(0), None);
    }

    #[test]
    fn binding_from_wire_valid() -> TestResult {
        let b = AclBinding::from_wire(2, "a", 3, "User:alice", "*", 3, 3)?;
        assert_eq!(
            b,
            topic(
                "a",
                PatternType::Literal,
                "User:alice",
                Operation::Read,
                Permission::Allow
            )
        );
        let c = AclBinding::from_wire(4, "kafka-cluster", 3, "User:*", "1.2.3.4", 5, 2)?;
        assert_eq!(c.resource_type, ResourceType::Cluster);
        assert_eq!(c.operation, Operation::Create);
        assert_eq!(c.permission, Permission::Deny);
        // Kafka has no rule against a PREFIXED `*` (it matches names starting with `*`).
        let p = AclBinding::from_wire(2, "*", 4, "User:a", "*", 2, 3)?;
        assert_eq!(p.pattern_type, PatternType::Prefixed);
        Ok(())
    }

    fn invalid(r: Result<AclBinding, AclError>) -> String {
        match r {
            Err(AclError::Invalid(m)) => m,
            Ok(b) => format!("unexpectedly valid: {b:?}"),
        }
    }

    #[test]
    fn binding_from_wire_refusals() {
        assert_eq!(
            invalid(AclBinding::from_wire(1, "a", 3, "User:a", "*", 3, 3)),
            "Invalid resourceType ANY"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(0, "a", 3, "User:a", "*", 3, 3)),
            "Invalid resourceType UNKNOWN"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(2, "a", 1, "User:a", "*", 3, 3)),
            "Invalid patternType ANY"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(2, "a", 2, "User:a", "*", 3, 3)),
            "Invalid patternType MATCH"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(2, "a", 9, "User:a", "*", 3, 3)),
            "Invalid patternType UNKNOWN"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(2, "a", 3, "User:a", "*", 1, 3)),
            "Invalid operation ANY"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(2, "a", 3, "User:a", "*", 3, 1)),
            "Invalid permissionType ANY"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(2, "a", 3, "User:a", "*", 3, 0)),
            "Invalid permissionType UNKNOWN"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(4, "other", 3, "User:a", "*", 3, 3)),
            "The only valid name for the CLUSTER resource is kafka-cluster"
        );
        assert_eq!(
            invalid(AclBinding::from_wire(2, "", 3, "User:a", "*", 3, 3)),
            "Resource name should not be empty"
        );
        assert!(
            invalid(AclBinding::from_wire(2, "a", 3, "alice", "*", 3, 3))
                .starts_with("Could not parse principal from `alice`")
        );
        for bad in [":alice", "User:", ":"] {
            assert!(
                invalid(AclBinding::from_wire(2, "a", 3, bad, "*", 3, 3))
                    .starts_with("expected a string in format principalType:principalName"),
                "{bad}"
            );
        }
        assert_eq!(
            invalid(AclBinding::from_wire(2, "a", 3, "User:a", "", 3, 3)),
            "Host should not be empty"
        );
    }

    #[test]
    fn filter_from_wire() -> TestResult {
        let f = AclFilter::from_wire(1, None, 1, None, None, 1, 1)?;
        assert_eq!(f, AclFilter::any());
        let f = AclFilter::from_wire(2, Some("a"), 2, Some("User:x"), Some("*"), 3, 2)?;
        assert_eq!(f.resource_type, Some(ResourceType::Topic));
        assert_eq!(f.resource_name.as_deref(), Some("a"));
        assert_eq!(f.pattern, PatternFilter::Match);
        assert_eq!(f.principal.as_deref(), Some("User:x"));
        assert_eq!(f.operation, Some(Operation::Read));
        assert_eq!(f.permission, Some(Permission::Deny));
        let f = AclFilter::from_wire(3, None, 4, None, None, 1, 1)?;
        assert_eq!(f.pattern, PatternFilter::Exactly(PatternType::Prefixed));
        let unknown = |r: Result<AclFilter, AclError>| match r {
            Err(AclError::Invalid(m)) => m,
            Ok(f) => format!("unexpectedly valid: {f:?}"),
        };
        assert_eq!(
            unknown(AclFilter::from_wire(0, None, 1, None, None, 1, 1)),
            "Unknown patternFilter."
        );
        assert_eq!(
            unknown(AclFilter::from_wire(1, None, 0, None, None, 1, 1)),
            "Unknown patternFilter."
        );
        assert_eq!(
            unknown(AclFilter::from_wire(1, None, 1, None, None, 0, 1)),
            "Unknown entryFilter."
        );
        assert_eq!(
            unknown(AclFilter::from_wire(1, None, 1, None, None, 1, 42)),
            "Unknown entryFilter."
        );
        Ok(())
    }

    #[test]
    fn allow_and_no_acl() {
        let a = acls(&[topic(
            "a",
            PatternType::Literal,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        )]);
        assert!(can(&a, ALICE, Operation::Read, "a"));
        assert!(!can(&a, ALICE, Operation::Write, "a"));
        assert!(!can(&a, BOB, Operation::Read, "a"));
        // No ACL on `b`: refused unless allow_if_no_acl.
        assert!(!can(&a, ALICE, Operation::Read, "b"));
        let open = AuthorizerSettings {
            super_users: vec![],
            allow_if_no_acl: true,
        };
        assert!(authorize(
            &a,
            &open,
            ALICE,
            Operation::Read,
            ResourceType::Topic,
            "b"
        ));
        assert!(authorize(
            &a,
            &open,
            BOB,
            Operation::Write,
            ResourceType::Group,
            "a"
        ));
        // An ACL exists on `a` (for alice only): bob is refused even with allow_if_no_acl.
        assert!(!authorize(
            &a,
            &open,
            BOB,
            Operation::Read,
            ResourceType::Topic,
            "a"
        ));
        assert!(!authorize(
            &a,
            &open,
            ALICE,
            Operation::Write,
            ResourceType::Topic,
            "a"
        ));
        // A DENY-only ACL on the resource also counts as "an ACL exists".
        let d = acls(&[topic(
            "c",
            PatternType::Literal,
            "User:bob",
            Operation::Write,
            Permission::Deny,
        )]);
        assert!(!authorize(
            &d,
            &open,
            ALICE,
            Operation::Read,
            ResourceType::Topic,
            "c"
        ));
        assert!(authorize(
            &d,
            &open,
            ALICE,
            Operation::Read,
            ResourceType::Topic,
            "cc"
        ));
    }

    #[test]
    fn deny_beats_allow() {
        let a = acls(&[
            topic(
                "logs-",
                PatternType::Prefixed,
                "User:bob",
                Operation::All,
                Permission::Allow,
            ),
            topic(
                "logs-secret",
                PatternType::Literal,
                "User:bob",
                Operation::Write,
                Permission::Deny,
            ),
        ]);
        assert!(can(&a, BOB, Operation::Write, "logs-app"));
        assert!(!can(&a, BOB, Operation::Write, "logs-secret"));
        assert!(can(&a, BOB, Operation::Read, "logs-secret"));
        assert!(!can(&a, BOB, Operation::Write, "other"));
        // DENY All refuses every operation, even with an exact ALLOW.
        let b = acls(&[
            topic(
                "t",
                PatternType::Literal,
                "User:alice",
                Operation::Read,
                Permission::Allow,
            ),
            topic(
                "*",
                PatternType::Literal,
                "User:*",
                Operation::All,
                Permission::Deny,
            ),
        ]);
        assert!(!can(&b, ALICE, Operation::Read, "t"));
        assert!(!can(&b, ALICE, Operation::Describe, "u"));
    }

    #[test]
    fn prefixed_matching() {
        let a = acls(&[topic(
            "logs-",
            PatternType::Prefixed,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        )]);
        assert!(can(&a, ALICE, Operation::Read, "logs-"));
        assert!(can(&a, ALICE, Operation::Read, "logs-app"));
        assert!(!can(&a, ALICE, Operation::Read, "logs"));
        assert!(!can(&a, ALICE, Operation::Read, "xlogs-app"));
        assert!(!can(&a, ALICE, Operation::Read, "other"));
        // Multi-byte names: prefixes are taken at character boundaries.
        let u = acls(&[topic(
            "é",
            PatternType::Prefixed,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        )]);
        assert!(can(&u, ALICE, Operation::Read, "été"));
        assert!(!can(&u, ALICE, Operation::Read, "e"));
        // A prefixed ACL of another resource type does not apply.
        let g = acls(&[binding(
            ResourceType::Group,
            "logs-",
            PatternType::Prefixed,
            "User:alice",
            "*",
            Operation::Read,
            Permission::Allow,
        )]);
        assert!(!can(&g, ALICE, Operation::Read, "logs-app"));
        assert!(authorize(
            &g,
            &strict(),
            ALICE,
            Operation::Read,
            ResourceType::Group,
            "logs-app"
        ));
    }

    #[test]
    fn wildcard_resource_principal_and_host() {
        let a = acls(&[topic(
            "*",
            PatternType::Literal,
            "User:*",
            Operation::Read,
            Permission::Allow,
        )]);
        assert!(can(&a, ALICE, Operation::Read, "anything"));
        assert!(can(&a, BOB, Operation::Read, "x"));
        assert!(can(
            &a,
            Requester {
                principal: "User:ANONYMOUS",
                host: "1.1.1.1"
            },
            Operation::Read,
            "x"
        ));
        assert!(!can(&a, BOB, Operation::Write, "x"));
        // A PREFIXED `*` is not a wildcard.
        let p = acls(&[topic(
            "*",
            PatternType::Prefixed,
            "User:*",
            Operation::Read,
            Permission::Allow,
        )]);
        assert!(!can(&p, ALICE, Operation::Read, "x"));
        assert!(can(&p, ALICE, Operation::Read, "*x"));
        // Host.
        let h = acls(&[binding(
            ResourceType::Topic,
            "t",
            PatternType::Literal,
            "User:alice",
            "10.0.0.1",
            Operation::Read,
            Permission::Allow,
        )]);
        assert!(can(&h, ALICE, Operation::Read, "t"));
        assert!(!can(
            &h,
            Requester {
                principal: "User:alice",
                host: "10.0.0.9"
            },
            Operation::Read,
            "t"
        ));
        // A DENY limited to another host does not apply.
        let mut hd = h.clone();
        hd.create(&[binding(
            ResourceType::Topic,
            "t",
            PatternType::Literal,
            "User:*",
            "10.0.0.9",
            Operation::All,
            Permission::Deny,
        )]);
        assert!(can(&hd, ALICE, Operation::Read, "t"));
        assert!(!can(
            &hd,
            Requester {
                principal: "User:alice",
                host: "10.0.0.9"
            },
            Operation::Read,
            "t"
        ));
    }

    #[test]
    fn implications_apply_to_allow_only() {
        for op in [
            Operation::Read,
            Operation::Write,
            Operation::Delete,
            Operation::Alter,
        ] {
            let a = acls(&[topic(
                "t",
                PatternType::Literal,
                "User:alice",
                op,
                Permission::Allow,
            )]);
            assert!(can(&a, ALICE, Operation::Describe, "t"), "{op:?}");
            assert!(!can(&a, ALICE, Operation::DescribeConfigs, "t"), "{op:?}");
        }
        for op in [
            Operation::Create,
            Operation::AlterConfigs,
            Operation::DescribeConfigs,
        ] {
            let a = acls(&[topic(
                "t",
                PatternType::Literal,
                "User:alice",
                op,
                Permission::Allow,
            )]);
            assert!(!can(&a, ALICE, Operation::Describe, "t"), "{op:?}");
        }
        let a = acls(&[topic(
            "t",
            PatternType::Literal,
            "User:alice",
            Operation::AlterConfigs,
            Permission::Allow,
        )]);
        assert!(can(&a, ALICE, Operation::DescribeConfigs, "t"));
        assert!(!can(&a, ALICE, Operation::Alter, "t"));
        // Describe does not imply Read.
        let d = acls(&[topic(
            "t",
            PatternType::Literal,
            "User:alice",
            Operation::Describe,
            Permission::Allow,
        )]);
        assert!(!can(&d, ALICE, Operation::Read, "t"));
        // DENY Read does not refuse Describe (Kafka's StandardAuthorizer).
        let dr = acls(&[
            topic(
                "t",
                PatternType::Literal,
                "User:alice",
                Operation::All,
                Permission::Allow,
            ),
            topic(
                "t",
                PatternType::Literal,
                "User:alice",
                Operation::Read,
                Permission::Deny,
            ),
        ]);
        assert!(!can(&dr, ALICE, Operation::Read, "t"));
        assert!(can(&dr, ALICE, Operation::Describe, "t"));
        assert!(can(&dr, ALICE, Operation::Write, "t"));
    }

    #[test]
    fn super_users() {
        let a = acls(&[topic(
            "*",
            PatternType::Literal,
            "User:*",
            Operation::All,
            Permission::Deny,
        )]);
        let s = AuthorizerSettings {
            super_users: vec!["User:admin".to_string(), "User:ops".to_string()],
            allow_if_no_acl: false,
        };
        let ops = Requester {
            principal: "User:ops",
            host: "1.2.3.4",
        };
        assert!(authorize(
            &a,
            &s,
            ops,
            Operation::Write,
            ResourceType::Topic,
            "t"
        ));
        assert!(authorize(
            &Acls::default(),
            &s,
            ops,
            Operation::Create,
            ResourceType::Cluster,
            CLUSTER_NAME
        ));
        assert!(!authorize(
            &a,
            &s,
            ALICE,
            Operation::Read,
            ResourceType::Topic,
            "t"
        ));
        assert!(!authorize(
            &Acls::default(),
            &s,
            ALICE,
            Operation::Read,
            ResourceType::Topic,
            "t"
        ));
    }

    #[test]
    fn authorized_operations_subset() {
        let a = acls(&[
            topic(
                "t",
                PatternType::Literal,
                "User:alice",
                Operation::Write,
                Permission::Allow,
            ),
            topic(
                "t",
                PatternType::Literal,
                "User:alice",
                Operation::Delete,
                Permission::Deny,
            ),
        ]);
        let supported = [
            Operation::Read,
            Operation::Write,
            Operation::Delete,
            Operation::Describe,
            Operation::DescribeConfigs,
        ];
        let got = authorized_operations(&a, &strict(), ALICE, ResourceType::Topic, "t", &supported);
        assert_eq!(got, vec![Operation::Write, Operation::Describe]);
        let none = authorized_operations(&a, &strict(), BOB, ResourceType::Topic, "t", &supported);
        assert!(none.is_empty());
    }

    fn sample() -> Vec<AclBinding> {
        vec![
            topic(
                "a",
                PatternType::Literal,
                "User:alice",
                Operation::Read,
                Permission::Allow,
            ),
            topic(
                "*",
                PatternType::Literal,
                "User:*",
                Operation::Describe,
                Permission::Allow,
            ),
            topic(
                "ab",
                PatternType::Literal,
                "User:bob",
                Operation::Write,
                Permission::Deny,
            ),
            topic(
                "a",
                PatternType::Prefixed,
                "User:bob",
                Operation::All,
                Permission::Allow,
            ),
            topic(
                "abc",
                PatternType::Prefixed,
                "User:alice",
                Operation::Read,
                Permission::Allow,
            ),
            topic(
                "b",
                PatternType::Prefixed,
                "User:alice",
                Operation::Read,
                Permission::Allow,
            ),
            binding(
                ResourceType::Group,
                "a",
                PatternType::Literal,
                "User:alice",
                "*",
                Operation::Read,
                Permission::Allow,
            ),
        ]
    }

    fn names(acls: &Acls, f: &AclFilter) -> Vec<(String, PatternType)> {
        acls.matching(f)
            .map(|b| (b.resource_name.clone(), b.pattern_type))
            .collect()
    }

    #[test]
    fn filter_pattern_matching() {
        let a = acls(&sample());
        let lit = PatternType::Literal;
        let pre = PatternType::Prefixed;
        let topic_filter = |name: Option<&str>, pattern: PatternFilter| AclFilter {
            resource_type: Some(ResourceType::Topic),
            resource_name: name.map(str::to_string),
            pattern,
            ..AclFilter::any()
        };
        // MATCH "abcd": literal exact (none), literal `*`, prefixes "a" and "abc".
        let mut m = names(&a, &topic_filter(Some("abcd"), PatternFilter::Match));
        m.sort();
        assert_eq!(
            m,
            vec![
                ("*".to_string(), lit),
                ("a".to_string(), pre),
                ("abc".to_string(), pre)
            ]
        );
        // MATCH "ab": literal "ab", `*`, prefix "a" (not "abc").
        let mut m = names(&a, &topic_filter(Some("ab"), PatternFilter::Match));
        m.sort();
        assert_eq!(
            m,
            vec![
                ("*".to_string(), lit),
                ("a".to_string(), pre),
                ("ab".to_string(), lit)
            ]
        );
        // ANY with a name: exactly that name, any pattern type.
        let mut m = names(&a, &topic_filter(Some("a"), PatternFilter::Any));
        m.sort();
        assert_eq!(m, vec![("a".to_string(), lit), ("a".to_string(), pre)]);
        // Exactly one pattern type.
        let m = names(&a, &topic_filter(Some("a"), PatternFilter::Exactly(pre)));
        assert_eq!(m, vec![("a".to_string(), pre)]);
        let m = names(&a, &topic_filter(Some("abcd"), PatternFilter::Exactly(pre)));
        assert!(m.is_empty());
        let m = names(&a, &topic_filter(None, PatternFilter::Exactly(pre)));
        assert_eq!(m.len(), 3);
        // No name, MATCH: every topic binding.
        assert_eq!(
            names(&a, &topic_filter(None, PatternFilter::Match)).len(),
            6
        );
        // Resource type ANY.
        assert_eq!(a.matching(&AclFilter::any()).count(), 7);
        // Entry filters are exact: `User:*` in a filter is not a wildcard.
        let star = AclFilter {
            principal: Some("User:*".to_string()),
            ..AclFilter::any()
        };
        assert_eq!(a.matching(&star).count(), 1);
        let alice_read = AclFilter {
            principal: Some("User:alice".to_string()),
            operation: Some(Operation::Read),
            permission: Some(Permission::Allow),
            host: Some("*".to_string()),
            ..AclFilter::any()
        };
        assert_eq!(a.matching(&alice_read).count(), 4);
        let deny = AclFilter {
            permission: Some(Permission::Deny),
            ..AclFilter::any()
        };
        assert_eq!(a.matching(&deny).count(), 1);
        let host = AclFilter {
            host: Some("1.1.1.1".to_string()),
            ..AclFilter::any()
        };
        assert_eq!(a.matching(&host).count(), 0);
    }

    #[test]
    fn create_is_idempotent_and_delete_updates_index() {
        let mut a = acls(&sample());
        a.create(&sample());
        assert_eq!(a.len(), 7);
        assert!(can(&a, ALICE, Operation::Read, "a"));
        let f = AclFilter {
            resource_type: Some(ResourceType::Topic),
            resource_name: Some("a".to_string()),
            pattern: PatternFilter::Exactly(PatternType::Literal),
            ..AclFilter::any()
        };
        let gone = a.delete(&f);
        assert_eq!(
            gone,
            vec![topic(
                "a",
                PatternType::Literal,
                "User:alice",
                Operation::Read,
                Permission::Allow
            )]
        );
        assert_eq!(a.len(), 6);
        assert!(!can(&a, ALICE, Operation::Read, "a"));
        // Deleting the longest prefix keeps shorter prefixes working.
        let gone = a.delete(&AclFilter::exact(&topic(
            "abc",
            PatternType::Prefixed,
            "User:alice",
            Operation::Read,
            Permission::Allow,
        )));
        assert_eq!(gone.len(), 1);
        assert!(!can(&a, ALICE, Operation::Read, "abcd"));
        assert!(can(&a, BOB, Operation::Read, "abcd"));
        let all = a.delete(&AclFilter::any());
        assert_eq!(all.len(), 5);
        assert!(a.is_empty());
        let open = AuthorizerSettings {
            super_users: vec![],
            allow_if_no_acl: true,
        };
        assert!(authorize(
            &a,
            &open,
            ALICE,
            Operation::Write,
            ResourceType::Topic,
            "ab"
        ));
        assert!(a.delete(&AclFilter::any()).is_empty());
    }

    #[test]
    fn postcard_round_trip_keeps_index() -> TestResult {
        let a = acls(&sample());
        let bytes = postcard::to_allocvec(&a)?;
        // Serialized as the plain set of bindings.
        let plain: BTreeSet<AclBinding> = postcard::from_bytes(&bytes)?;
        assert_eq!(plain.len(), 7);
        let mut b: Acls = postcard::from_bytes(&bytes)?;
        assert_eq!(a, b);
        assert!(can(&b, ALICE, Operation::Read, "a"));
        assert!(can(&b, ALICE, Operation::Read, "abcz"));
        assert!(can(&b, BOB, Operation::Write, "az"));
        assert!(!can(&b, BOB, Operation::Write, "ab"));
        assert!(can(&b, BOB, Operation::Describe, "zzz"));
        assert!(!can(&b, BOB, Operation::Read, "zzz"));
        b.delete(&AclFilter {
            permission: Some(Permission::Deny),
            ..AclFilter::any()
        });
        assert!(can(&b, BOB, Operation::Write, "ab"));
        assert_ne!(a, b);
        Ok(())
    }

    // ---- property test: the indexed authorizer against a linear scan ----

    /// Kafka's rules written as a plain scan over every binding.
    fn reference(
        bindings: &BTreeSet<AclBinding>,
        settings: &AuthorizerSettings,
        who: Requester<'_>,
        op: Operation,
        rt: ResourceType,
        name: &str,
    ) -> bool {
        if settings.super_users.iter().any(|s| s == who.principal) {
            return true;
        }
        let on_resource: Vec<&AclBinding> = bindings
            .iter()
            .filter(|b| b.resource_type == rt)
            .filter(|b| match b.pattern_type {
                PatternType::Literal => b.resource_name == name || b.resource_name == "*",
                PatternType::Prefixed => name.starts_with(b.resource_name.as_str()),
            })
            .collect();
        if on_resource.is_empty() {
            return settings.allow_if_no_acl;
        }
        let mine: Vec<&&AclBinding> = on_resource
            .iter()
            .filter(|b| b.principal == who.principal || b.principal == "User:*")
            .filter(|b| b.host == who.host || b.host == "*")
            .collect();
        let denied = mine.iter().any(|b| {
            b.permission == Permission::Deny && (b.operation == op || b.operation == Operation::All)
        });
        let implied = |granted: Operation| {
            granted == op
                || granted == Operation::All
                || (op == Operation::Describe
                    && [
                        Operation::Read,
                        Operation::Write,
                        Operation::Delete,
                        Operation::Alter,
                    ]
                    .contains(&granted))
                || (op == Operation::DescribeConfigs && granted == Operation::AlterConfigs)
        };
        let allowed = mine
            .iter()
            .any(|b| b.permission == Permission::Allow && implied(b.operation));
        !denied && allowed
    }

    const NAMES: [&str; 8] = ["a", "ab", "abc", "b", "ba", "*", "é", "éa"];
    const PRINCIPALS: [&str; 3] = ["User:alice", "User:bob", "User:*"];
    const HOSTS: [&str; 3] = ["1.1.1.1", "2.2.2.2", "*"];

    fn any_binding() -> impl Strategy<Value = AclBinding> {
        (
            prop::sample::select(vec![ResourceType::Topic, ResourceType::Group]),
            prop::sample::select(NAMES.to_vec()),
            prop::sample::select(PatternType::ALL.to_vec()),
            prop::sample::select(PRINCIPALS.to_vec()),
            prop::sample::select(HOSTS.to_vec()),
            prop::sample::select(Operation::ALL.to_vec()),
            prop::sample::select(Permission::ALL.to_vec()),
        )
            .prop_map(|(rt, name, pattern, principal, host, op, perm)| {
                binding(rt, name, pattern, principal, host, op, perm)
            })
    }

    #[derive(Debug, Clone)]
    struct Query {
        rt: ResourceType,
        name: String,
        principal: &'static str,
        host: &'static str,
        op: Operation,
    }

    fn any_query() -> impl Strategy<Value = Query> {
        (
            prop::sample::select(vec![ResourceType::Topic, ResourceType::Group]),
            prop::sample::select(vec![
                "a", "ab", "abc", "abcd", "b", "bab", "*", "é", "éab", "zz",
            ]),
            prop::sample::select(vec!["User:alice", "User:bob", "User:carol", "User:admin"]),
            prop::sample::select(vec!["1.1.1.1", "2.2.2.2", "3.3.3.3"]),
            prop::sample::select(Operation::ALL[1..].to_vec()),
        )
            .prop_map(|(rt, name, principal, host, op)| Query {
                rt,
                name: name.to_string(),
                principal,
                host,
                op,
            })
    }

    fn any_filter() -> impl Strategy<Value = AclFilter> {
        (
            prop::option::of(prop::sample::select(vec![
                ResourceType::Topic,
                ResourceType::Group,
            ])),
            prop::option::of(prop::sample::select(vec!["a", "ab", "abc", "b", "*"])),
            prop::sample::select(vec![
                PatternFilter::Any,
                PatternFilter::Match,
                PatternFilter::Exactly(PatternType::Literal),
                PatternFilter::Exactly(PatternType::Prefixed),
            ]),
            prop::option::of(prop::sample::select(PRINCIPALS.to_vec())),
            prop::option::of(prop::sample::select(Operation::ALL.to_vec())),
            prop::option::of(prop::sample::select(Permission::ALL.to_vec())),
        )
            .prop_map(|(rt, name, pattern, principal, op, perm)| AclFilter {
                resource_type: rt,
                resource_name: name.map(str::to_string),
                pattern,
                principal: principal.map(str::to_string),
                host: None,
                operation: op,
                permission: perm,
            })
    }

    fn check_all(
        acls: &Acls,
        queries: &[Query],
        settings: &AuthorizerSettings,
    ) -> Result<(), TestCaseError> {
        let plain: BTreeSet<AclBinding> = acls.iter().cloned().collect();
        for q in queries {
            let who = Requester {
                principal: q.principal,
                host: q.host,
            };
            let got = authorize(acls, settings, who, q.op, q.rt, &q.name);
            let want = reference(&plain, settings, who, q.op, q.rt, &q.name);
            prop_assert_eq!(got, want, "query {:?}", q);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn indexed_authorizer_matches_linear_scan(
            bindings in prop::collection::vec(any_binding(), 0..40),
            deletes in prop::collection::vec(any_filter(), 0..3),
            queries in prop::collection::vec(any_query(), 1..40),
            allow_if_no_acl in any::<bool>(),
            admin_is_super in any::<bool>(),
        ) {
            let settings = AuthorizerSettings {
                super_users: if admin_is_super { vec!["User:admin".to_string()] } else { vec![] },
                allow_if_no_acl,
            };
            let mut acls = Acls::default();
            acls.create(&bindings);
            check_all(&acls, &queries, &settings)?;
            for f in &deletes {
                let before: BTreeSet<AclBinding> = acls.iter().cloned().collect();
                let gone = acls.delete(f);
                for b in &gone {
                    prop_assert!(f.matches(b));
                }
                prop_assert_eq!(acls.len() + gone.len(), before.len());
                prop_assert!(acls.iter().all(|b| !f.matches(b)));
                check_all(&acls, &queries, &settings)?;
            }
            let bytes = postcard::to_allocvec(&acls).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let decoded: Acls = postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&decoded, &acls);
            check_all(&decoded, &queries, &settings)?;
        }
    }
}
