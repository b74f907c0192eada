//! DescribeConfigs: topic configs (what was set, then the dynamic broker configs, then
//! the static broker defaults, then Kafka's defaults, each with its source) and broker
//! configs; AlterConfigs and IncrementalAlterConfigs for topic configs and dynamic broker
//! configs (cluster-wide defaults or one broker's, kept in the Raft state), validated by
//! type; a consumer group's own configs (GROUP resources, KIP-848), within Kafka's bounds.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalAlterConfigsResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};

use kafka_protocol::protocol::StrBytes;

use super::authz::Authz;
use super::str_bytes;
use crate::broker::Broker;
use crate::group::consumer::{HEARTBEAT_INTERVAL_CONFIG, SESSION_TIMEOUT_CONFIG};
use crate::metadata::state::{Command, MetadataState, Response, StateError};
use crate::security::acl::Operation;
use crate::topic_config::{
    kafka_default, kind, stored_broker_config_kind, validate, Kind, TopicDefaults, DEFAULT_CONFIG,
    DYNAMIC_BROKER_CONFIG, DYNAMIC_BROKER_CONFIGS, DYNAMIC_DEFAULT_BROKER_CONFIG, GROUP_CONFIG,
    MAX_PARTITIONS, STATIC_BROKER_CONFIG, TOPIC_CONFIG, TOPIC_DEFAULTS,
};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const BROKER_LOGGER: i8 = 8;
const GROUP: i8 = 32;
/// A group's configs, with Kafka's bounds on them (`group.consumer.min/max.*`): a
/// broker configured outside them widens them to its own value.
const GROUP_CONFIGS: &[(&str, i64, i64)] = &[
    (SESSION_TIMEOUT_CONFIG, 45_000, 60_000),
    (HEARTBEAT_INTERVAL_CONFIG, 5_000, 15_000),
];
/// Broker configs described but fixed at start-up (flags, variables, file).
const STATIC_BROKER_KEYS: &[&str] = &[
    "auto.create.topics.enable",
    "socket.request.max.bytes",
    "advertised.listeners",
    "listeners",
    "listener.security.protocol.map",
    "broker.id",
];

/// Which configs a resource has: a topic's, or a broker's dynamic ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Topic,
    Broker,
    Group,
}

impl Scope {
    fn kind(self, key: &str) -> Result<Kind, String> {
        match self {
            Scope::Topic => kind(key).ok_or_else(|| format!("Unknown topic config name: {key}")),
            Scope::Broker => {
                if let Some((_, kind, _, _)) =
                    DYNAMIC_BROKER_CONFIGS.iter().find(|(k, ..)| *k == key)
                {
                    Ok(*kind)
                } else if let Some(kind) = stored_broker_config_kind(key) {
                    Ok(kind)
                } else if STATIC_BROKER_KEYS.contains(&key) {
                    Err(format!(
                        "Cannot update these configs dynamically: Set({key})"
                    ))
                } else {
                    Err(format!("Unknown or read-only broker config name: {key}"))
                }
            }
            Scope::Group => GROUP_CONFIGS
                .iter()
                .any(|(k, ..)| *k == key)
                .then_some(Kind::Long { min: 1 })
                .ok_or_else(|| format!("Unknown group config name: {key}")),
        }
    }

    fn default(self, key: &str) -> Option<&'static str> {
        match self {
            Scope::Topic => kafka_default(key),
            Scope::Broker => DYNAMIC_BROKER_CONFIGS
                .iter()
                .find(|(k, ..)| *k == key)
                .map(|(_, _, v, _)| *v),
            Scope::Group => None,
        }
    }
}

/// A topic's DescribeConfigs entries: every config with a default, as it takes effect,
/// then any other config set on the topic. None if there is no such topic.
fn topic_entries(
    state: &MetadataState,
    node: u64,
    defaults: &TopicDefaults,
    name: &str,
) -> Option<Vec<(String, String, i8)>> {
    let set = &state.topic(name)?.configs;
    let mut entries: Vec<_> = TOPIC_DEFAULTS
        .iter()
        .filter_map(|(k, _)| {
            let (value, source) = state.config_layers(node, defaults).value(set, k)?;
            Some((k.to_string(), value, source))
        })
        .collect();
    for (k, v) in set {
        if !TOPIC_DEFAULTS.iter().any(|(d, _)| d == k) {
            entries.push((k.clone(), v.clone(), TOPIC_CONFIG));
        }
    }
    Some(entries)
}

/// A BROKER resource's name: "" for the cluster-wide defaults, else a broker id.
fn broker_scope(name: &str) -> Result<Option<u64>, (ResponseError, String)> {
    if name.is_empty() {
        return Ok(None);
    }
    name.parse::<u64>().map(Some).map_err(|_| {
        (
            ResponseError::InvalidRequest,
            format!("Invalid broker id in a BROKER resource: {name}"),
        )
    })
}

/// DESCRIBE_CONFIGS on the topic or the cluster, else TOPIC_AUTHORIZATION_FAILED or
/// CLUSTER_AUTHORIZATION_FAILED for that resource (Kafka's rule).
fn config_access(
    authz: &Authz<'_>,
    op: Operation,
    resource_type: i8,
    name: &str,
) -> Result<(), (ResponseError, String)> {
    match resource_type {
        TOPIC if !authz.topic(op, name) => Err((
            ResponseError::TopicAuthorizationFailed,
            format!("Authorization failed: {op:?} on topic {name}"),
        )),
        BROKER | BROKER_LOGGER if !authz.cluster(op) => Err((
            ResponseError::ClusterAuthorizationFailed,
            format!("Authorization failed: {op:?} on the cluster"),
        )),
        GROUP if !authz.group(op, name) => Err((
            ResponseError::GroupAuthorizationFailed,
            format!("Authorization failed: {op:?} on group {name}"),
        )),
        _ => Ok(()),
    }
}

pub fn describe(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|resource| {
            let keys = resource.configuration_keys.as_ref();
            let wanted = |name: &str| keys.is_none_or(|k| k.iter().any(|k| k.as_str() == name));
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            if let Err((code, message)) = config_access(
                authz,
                Operation::DescribeConfigs,
                resource.resource_type,
                resource.resource_name.as_str(),
            ) {
                return result
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message)));
            }
            let node = broker.id();
            let is_broker = resource.resource_type == BROKER;
            let read_only = |key: &str| is_broker && STATIC_BROKER_KEYS.contains(&key);
            let entries: Vec<(String, String, i8)> = match resource.resource_type {
                TOPIC => {
                    let defaults = &broker.topic_defaults();
                    let name = resource.resource_name.as_str();
                    let found = broker.read(|s| topic_entries(s, node, defaults, name));
                    let Some(entries) = found else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    entries
                }
                BROKER => {
                    let scope = match broker_scope(resource.resource_name.as_str()) {
                        Ok(scope) => scope,
                        Err((code, message)) => {
                            return result
                                .with_error_code(code.code())
                                .with_error_message(Some(str_bytes(&message)))
                        }
                    };
                    match scope {
                        // The cluster-wide default resource holds only what was set there.
                        None => broker
                            .read(|s| s.broker_configs("").cloned())
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v, DYNAMIC_DEFAULT_BROKER_CONFIG))
                            .collect(),
                        Some(id) => broker_entries(broker, id),
                    }
                }
                GROUP => {
                    let name = resource.resource_name.as_str();
                    let set = broker
                        .read(|s| s.group_configs(name).cloned())
                        .unwrap_or_default();
                    group_entries(&broker_group_defaults(broker), &set)
                }
                _ => return result.with_error_code(ResponseError::InvalidRequest.code()),
            };
            let configs = entries
                .into_iter()
                .filter(|(k, _, _)| wanted(k))
                .map(|(name, value, source)| {
                    // Kafka never describes a password's value (PASSWORD-typed configs).
                    let sensitive = is_sensitive(&name);
                    DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(&name))
                        .with_value((!sensitive).then(|| str_bytes(&value)))
                        .with_is_sensitive(sensitive)
                        .with_config_source(source)
                        .with_read_only(read_only(&name))
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Broker `id`'s dynamic configs (except `num.partitions`) as they take effect: set
/// dynamically, else the static default of the topic config each stands for, else Kafka's.
fn dynamic_broker_entries(
    state: &MetadataState,
    id: u64,
    defaults: &TopicDefaults,
) -> Vec<(String, String, i8)> {
    DYNAMIC_BROKER_CONFIGS
        .iter()
        .filter(|(k, ..)| *k != "num.partitions")
        .map(|(k, _, default, topic_key)| {
            let (value, source) = state
                .config_layers(id, defaults)
                .broker_value(k)
                .or_else(|| {
                    let value = defaults.get((*topic_key)?)?;
                    Some((value.to_owned(), STATIC_BROKER_CONFIG))
                })
                .unwrap_or_else(|| (default.to_string(), DEFAULT_CONFIG));
            (k.to_string(), value, source)
        })
        .chain(stored_broker_entries(state, id))
        .collect()
}

/// Kafka's PASSWORD-typed broker configs, per listener too.
fn is_sensitive(name: &str) -> bool {
    name.ends_with(".password")
        || name.ends_with("sasl.jaas.config")
        || name.ends_with("ssl.keystore.key")
}

/// The stored (no-effect) dynamic broker configs set on this broker or cluster-wide.
fn stored_broker_entries(state: &MetadataState, id: u64) -> Vec<(String, String, i8)> {
    let own = state.broker_configs(&id.to_string());
    let cluster = state.broker_configs("");
    let mut keys: Vec<&String> = own
        .into_iter()
        .chain(cluster)
        .flat_map(|m| m.keys())
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| stored_broker_config_kind(k).is_some())
        .filter_map(|k| {
            own.and_then(|m| m.get(k))
                .map(|v| (k.clone(), v.clone(), DYNAMIC_BROKER_CONFIG))
                .or_else(|| {
                    cluster
                        .and_then(|m| m.get(k))
                        .map(|v| (k.clone(), v.clone(), DYNAMIC_DEFAULT_BROKER_CONFIG))
                })
        })
        .collect()
}

/// A broker's configs: the static ones, then the dynamic ones with their sources.
fn broker_entries(broker: &Broker, id: u64) -> Vec<(String, String, i8)> {
    let defaults = broker.topic_defaults();
    let dynamic = broker.read(|s| dynamic_broker_entries(s, id, defaults));
    let partitions = broker
        .read(|s| s.config_layers(id, defaults).broker_value("num.partitions"))
        .unwrap_or_else(|| {
            let partitions = broker.static_default_partitions();
            (partitions.to_string(), STATIC_BROKER_CONFIG)
        });
    let mut entries: Vec<(String, String, i8)> = broker
        .static_broker_configs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v, STATIC_BROKER_CONFIG))
        .collect();
    // Kafka lists it second, after auto.create.topics.enable.
    entries.insert(1, ("num.partitions".into(), partitions.0, partitions.1));
    entries.extend(dynamic);
    entries
}

/// The broker's own values of a group's configs (`--group-consumer-*`).
fn broker_group_defaults(broker: &Broker) -> BTreeMap<&'static str, i64> {
    let settings = broker.groups().consumer().settings();
    BTreeMap::from([
        (SESSION_TIMEOUT_CONFIG, settings.session_timeout_ms),
        (
            HEARTBEAT_INTERVAL_CONFIG,
            i64::from(settings.heartbeat_interval_ms),
        ),
    ])
}

/// A GROUP resource's entries: what was set on it, else the broker's value, as Kafka
/// describes a group's configs.
fn group_entries(
    defaults: &BTreeMap<&'static str, i64>,
    set: &BTreeMap<String, String>,
) -> Vec<(String, String, i8)> {
    GROUP_CONFIGS
        .iter()
        .map(|(key, ..)| match set.get(*key) {
            Some(v) => ((*key).to_owned(), v.clone(), GROUP_CONFIG),
            None => (
                (*key).to_owned(),
                defaults.get(key).copied().unwrap_or_default().to_string(),
                DEFAULT_CONFIG,
            ),
        })
        .collect()
}

/// Checks a group's configs as they would be after a change: each within Kafka's bounds
/// (widened to the broker's own value), and the interval below the session timeout.
fn check_group_configs(
    defaults: &BTreeMap<&'static str, i64>,
    after: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut effective = BTreeMap::new();
    for (key, min, max) in GROUP_CONFIGS {
        let own = defaults.get(key).copied().unwrap_or(*min);
        let (min, max) = ((*min).min(own), (*max).max(own));
        let value = match after.get(*key) {
            Some(v) => {
                let n = v.trim().parse::<i64>().map_err(|_| {
                    format!("Invalid value {v} for configuration {key}: Not a number of type INT")
                })?;
                if !(min..=max).contains(&n) {
                    return Err(format!(
                        "Invalid value {v} for configuration {key}: must be between {min} and {max}"
                    ));
                }
                n
            }
            None => own,
        };
        effective.insert(*key, value);
    }
    let interval = effective
        .get(HEARTBEAT_INTERVAL_CONFIG)
        .copied()
        .unwrap_or(0);
    let session = effective.get(SESSION_TIMEOUT_CONFIG).copied().unwrap_or(0);
    if interval >= session {
        return Err(format!(
            "{HEARTBEAT_INTERVAL_CONFIG} ({interval}) must be less than {SESSION_TIMEOUT_CONFIG} ({session})"
        ));
    }
    Ok(())
}

/// Incremental operations (KIP-339).
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

type ConfigChanges = BTreeMap<String, Option<String>>;

/// Turns one resource's config changes into the state command's form, or the error
/// (code, message) for the whole resource, as Kafka answers per resource.
fn topic_changes(
    current: &BTreeMap<String, String>,
    configs: &[(String, i8, Option<String>)],
) -> Result<ConfigChanges, (ResponseError, String)> {
    config_changes(Scope::Topic, current, configs)
}

fn config_changes(
    scope: Scope,
    current: &BTreeMap<String, String>,
    configs: &[(String, i8, Option<String>)],
) -> Result<ConfigChanges, (ResponseError, String)> {
    let mut changes = ConfigChanges::new();
    for (key, op, value) in configs {
        let invalid = |m: String| (ResponseError::InvalidConfig, m);
        let kind = scope.kind(key).map_err(invalid)?;
        if changes.contains_key(key) {
            return Err((
                ResponseError::InvalidRequest,
                format!("Duplicate config key: {key}"),
            ));
        }
        let list_op = |value: &Option<String>| -> Result<Vec<String>, (ResponseError, String)> {
            if !matches!(kind, Kind::List(_)) {
                return Err(invalid(format!(
                    "Config value append/subtract is not allowed for config key: {key}"
                )));
            }
            let value = value.as_deref().ok_or_else(|| {
                (
                    ResponseError::InvalidRequest,
                    format!("Null value not supported for: {key}"),
                )
            })?;
            Ok(value
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect())
        };
        // APPEND/SUBTRACT work on what is set, else on Kafka's default.
        let existing = || -> Vec<String> {
            let value = current
                .get(key)
                .map(String::as_str)
                .or_else(|| scope.default(key));
            value
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let new_value = match *op {
            OP_SET => Some(value.clone().ok_or_else(|| {
                (
                    ResponseError::InvalidRequest,
                    format!("Null value not supported for: {key}"),
                )
            })?),
            OP_DELETE => None,
            OP_APPEND => {
                let mut items = existing();
                for item in list_op(value)? {
                    if !items.contains(&item) {
                        items.push(item);
                    }
                }
                Some(items.join(","))
            }
            OP_SUBTRACT => {
                let remove = list_op(value)?;
                let items: Vec<String> = existing()
                    .into_iter()
                    .filter(|i| !remove.contains(i))
                    .collect();
                Some(items.join(","))
            }
            other => {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("Unknown config operation {other}"),
                ))
            }
        };
        if let Some(v) = &new_value {
            validate(kind, key, v).map_err(invalid)?;
            if key == "num.partitions"
                && v.trim()
                    .parse::<i64>()
                    .is_ok_and(|n| n > i64::from(MAX_PARTITIONS))
            {
                return Err(invalid(format!(
                    "Invalid value {v} for configuration {key}: at most {MAX_PARTITIONS}"
                )));
            }
        }
        changes.insert(key.clone(), new_value);
    }
    Ok(changes)
}

/// One resource of an AlterConfigs or IncrementalAlterConfigs request.
async fn alter_resource(
    broker: &Arc<Broker>,
    resource_type: i8,
    name: &str,
    replace: bool,
    configs: &[(String, i8, Option<String>)],
    validate_only: bool,
) -> Result<(), (ResponseError, String)> {
    match resource_type {
        TOPIC => {}
        BROKER | GROUP => {
            let alter = Alter {
                name,
                replace,
                configs,
                validate_only,
            };
            return if resource_type == BROKER {
                alter_broker(broker, alter).await
            } else {
                alter_group(broker, alter).await
            };
        }
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("unsupported resource type {other}"),
            ))
        }
    }
    let current = broker
        .read(|s| s.topic(name).map(|t| t.configs.clone()))
        .ok_or_else(|| {
            (
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} does not exist"),
            )
        })?;
    let changes = topic_changes(&current, configs)?;
    if validate_only {
        return Ok(());
    }
    let cmd = Command::AlterTopicConfigs {
        name: name.to_owned(),
        replace,
        changes,
    };
    match broker.propose(cmd).await {
        Ok(Response::Topic(Ok(()))) => Ok(()),
        Ok(Response::Topic(Err(StateError::UnknownTopicOrPartition))) => Err((
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )),
        Ok(other) => Err((ResponseError::UnknownServerError, format!("{other:?}"))),
        Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
    }
}

/// What one resource of an alter request asks: its name, whether the given set replaces
/// what is there, the changes `(key, operation, value)`, and whether only to validate.
#[derive(Clone, Copy)]
struct Alter<'a> {
    name: &'a str,
    replace: bool,
    configs: &'a [(String, i8, Option<String>)],
    validate_only: bool,
}

/// One BROKER resource: dynamic broker configs, cluster-wide ("") or one broker's.
async fn alter_broker(
    broker: &Arc<Broker>,
    alter: Alter<'_>,
) -> Result<(), (ResponseError, String)> {
    let scope = broker_scope(alter.name)?;
    if let Some(id) = scope {
        let known = id == broker.id() || broker.read(|s| s.cluster().broker(id).is_some());
        if !known {
            return Err((
                ResponseError::InvalidRequest,
                format!("Unknown broker id {id}"),
            ));
        }
    }
    let current = broker
        .read(|s| s.broker_configs(alter.name).cloned())
        .unwrap_or_default();
    let changes = config_changes(Scope::Broker, &current, alter.configs)?;
    let cmd = Command::AlterBrokerConfigs {
        broker: scope,
        replace: alter.replace,
        changes,
    };
    propose_unless_validating(broker, cmd, alter.validate_only).await
}

/// Proposes a validated change, unless the request only validates; one that does not
/// commit is REQUEST_TIMED_OUT.
async fn propose_unless_validating(
    broker: &Arc<Broker>,
    cmd: Command,
    validate_only: bool,
) -> Result<(), (ResponseError, String)> {
    if validate_only {
        return Ok(());
    }
    broker
        .propose(cmd)
        .await
        .map(|_| ())
        .map_err(|e| (ResponseError::RequestTimedOut, e.to_string()))
}

/// One GROUP resource: a consumer group's own configs, whether or not the group exists
/// (as in Kafka); they take effect at its members' next heartbeats.
async fn alter_group(
    broker: &Arc<Broker>,
    alter: Alter<'_>,
) -> Result<(), (ResponseError, String)> {
    if alter.name.is_empty() {
        return Err((
            ResponseError::InvalidRequest,
            "A GROUP resource must name a group".into(),
        ));
    }
    let current = broker
        .read(|s| s.group_configs(alter.name).cloned())
        .unwrap_or_default();
    let changes = config_changes(Scope::Group, &current, alter.configs)?;
    let mut after = if alter.replace {
        BTreeMap::new()
    } else {
        current
    };
    for (k, v) in &changes {
        match v {
            Some(v) => after.insert(k.clone(), v.clone()),
            None => after.remove(k),
        };
    }
    check_group_configs(&broker_group_defaults(broker), &after)
        .map_err(|m| (ResponseError::InvalidConfig, m))?;
    let cmd = Command::AlterGroupConfigs {
        group: alter.name.to_owned(),
        replace: alter.replace,
        changes,
    };
    propose_unless_validating(broker, cmd, alter.validate_only).await
}

/// One resource of an alter request: (resource type, name, [(key, operation, value)]).
type AlterRequest = (i8, StrBytes, Vec<(String, i8, Option<String>)>);
/// Its outcome: (resource type, name, error if any).
type AlterOutcome = (i8, StrBytes, Option<(ResponseError, String)>);

/// Applies each resource's changes in turn; shared by both alter APIs, which differ only
/// in their message types and in `replace` (whole set vs incremental operations).
async fn alter_all(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    resources: Vec<AlterRequest>,
    replace: bool,
    validate_only: bool,
) -> Vec<AlterOutcome> {
    let mut outcomes = Vec::with_capacity(resources.len());
    for (resource_type, name, configs) in resources {
        if let Err(refused) =
            config_access(authz, Operation::AlterConfigs, resource_type, name.as_str())
        {
            outcomes.push((resource_type, name, Some(refused)));
            continue;
        }
        let outcome = alter_resource(
            broker,
            resource_type,
            name.as_str(),
            replace,
            &configs,
            validate_only,
        )
        .await;
        outcomes.push((resource_type, name, outcome.err()));
    }
    outcomes
}

fn config_value(value: &Option<StrBytes>) -> Option<String> {
    value.as_ref().map(|v| v.to_string())
}

/// AlterConfigs: the given set replaces the topic's configs entirely.
pub async fn alter(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| {
            let configs = r
                .configs
                .iter()
                .map(|c| (c.name.to_string(), OP_SET, config_value(&c.value)))
                .collect();
            (r.resource_type, r.resource_name, configs)
        })
        .collect();
    let responses = alter_all(broker, authz, resources, true, req.validate_only)
        .await
        .into_iter()
        .map(|(resource_type, name, error)| {
            let resp = AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(name);
            match error {
                Some((code, message)) => resp
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message))),
                None => resp.with_error_message(None),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on top of what is set.
pub async fn incremental_alter(
    broker: &Arc<Broker>,
    authz: &Authz<'_>,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| {
            let configs = r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        config_value(&c.value),
                    )
                })
                .collect();
            (r.resource_type, r.resource_name, configs)
        })
        .collect();
    let responses = alter_all(broker, authz, resources, false, req.validate_only)
        .await
        .into_iter()
        .map(|(resource_type, name, error)| {
            let resp = IncrementalAlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(name);
            match error {
                Some((code, message)) => resp
                    .with_error_code(code.code())
                    .with_error_message(Some(str_bytes(&message))),
                None => resp.with_error_message(None),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::state::topics::Topic;
    use crate::topic_config::DYNAMIC_BROKER_CONFIG;

    fn effective_topic_config(
        state: &MetadataState,
        node: u64,
        defaults: &TopicDefaults,
        topic: &Topic,
        key: &str,
    ) -> Option<String> {
        let layers = state.config_layers(node, defaults);
        layers.value(&topic.configs, key).map(|(v, _)| v)
    }

    /// A state with topic `t` (its own `configs`) and the given dynamic broker configs:
    /// (broker id or None for the cluster-wide default, key, value).
    fn state_with(
        configs: &[(&str, &str)],
        dynamic: &[(Option<u64>, &str, &str)],
    ) -> MetadataState {
        let mut s = MetadataState::default();
        s.apply(&Command::CreateTopic {
            name: "t".into(),
            topic_id: [1; 16],
            partitions: 1,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            now_ms: 0,
            preferred: Vec::new(),
        });
        for (broker, k, v) in dynamic {
            s.apply(&Command::AlterBrokerConfigs {
                broker: *broker,
                replace: false,
                changes: BTreeMap::from([(k.to_string(), Some(v.to_string()))]),
            });
        }
        s
    }

    #[test]
    fn topic_config_precedence_is_topic_dynamic_broker_cluster_static_kafka() {
        let defaults = TopicDefaults::default().with("retention.ms", "5000");
        let effective = |s: &MetadataState, node| {
            let topic = s.topic("t").expect("created");
            effective_topic_config(s, node, &defaults, topic, "retention.ms")
        };
        let value = |s: &MetadataState, node| {
            s.config_layers(node, &defaults)
                .value(&s.topic("t").expect("created").configs, "retention.ms")
        };
        // Kafka's default only without a static one.
        let s = state_with(&[], &[]);
        assert_eq!(
            effective_topic_config(
                &s,
                1,
                &TopicDefaults::default(),
                s.topic("t").expect("created"),
                "retention.ms"
            )
            .as_deref(),
            Some("604800000")
        );
        assert_eq!(value(&s, 1), Some(("5000".into(), STATIC_BROKER_CONFIG)));
        assert_eq!(effective(&s, 1).as_deref(), Some("5000"));
        // The cluster-wide dynamic default beats the static one.
        let s = state_with(&[], &[(None, "log.retention.ms", "7000")]);
        assert_eq!(
            value(&s, 1),
            Some(("7000".into(), DYNAMIC_DEFAULT_BROKER_CONFIG))
        );
        // A broker's own dynamic value beats the cluster-wide one, for that broker only.
        let s = state_with(
            &[],
            &[
                (None, "log.retention.ms", "7000"),
                (Some(1), "log.retention.ms", "8000"),
            ],
        );
        assert_eq!(value(&s, 1), Some(("8000".into(), DYNAMIC_BROKER_CONFIG)));
        assert_eq!(
            value(&s, 2),
            Some(("7000".into(), DYNAMIC_DEFAULT_BROKER_CONFIG))
        );
        // The topic's own value beats everything.
        let s = state_with(
            &[("retention.ms", "-1")],
            &[
                (None, "log.retention.ms", "7000"),
                (Some(1), "log.retention.ms", "8000"),
            ],
        );
        assert_eq!(value(&s, 1), Some(("-1".into(), TOPIC_CONFIG)));
        assert_eq!(effective(&s, 1).as_deref(), Some("-1"));
        // A config with neither a default nor a value has none.
        let s = state_with(&[], &[]);
        let topic = s.topic("t").expect("created");
        assert_eq!(
            effective_topic_config(&s, 1, &defaults, topic, "flush.ms"),
            None
        );
    }

    #[test]
    fn describe_reports_each_topic_config_with_its_source() {
        let defaults = TopicDefaults::default()
            .with("retention.ms", "5000")
            .with("cleanup.policy", "compact")
            .with("segment.bytes", "1048576");
        let s = state_with(
            &[("retention.bytes", "100"), ("preallocate", "true")],
            &[
                (None, "log.cleanup.policy", "compact,delete"),
                (Some(1), "log.segment.bytes", "2097152"),
            ],
        );
        let entries = topic_entries(&s, 1, &defaults, "t").expect("the topic exists");
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, ..)| k == key)
                .map(|(_, v, source)| (v.as_str(), *source))
        };
        assert_eq!(get("retention.bytes"), Some(("100", TOPIC_CONFIG)));
        assert_eq!(get("preallocate"), Some(("true", TOPIC_CONFIG)));
        assert_eq!(
            get("segment.bytes"),
            Some(("2097152", DYNAMIC_BROKER_CONFIG))
        );
        assert_eq!(
            get("cleanup.policy"),
            Some(("compact,delete", DYNAMIC_DEFAULT_BROKER_CONFIG))
        );
        assert_eq!(get("retention.ms"), Some(("5000", STATIC_BROKER_CONFIG)));
        assert_eq!(
            get("delete.retention.ms"),
            Some(("86400000", DEFAULT_CONFIG))
        );
        assert_eq!(entries.len(), TOPIC_DEFAULTS.len() + 1);
        // Another broker without its own value sees the static default.
        let entries = topic_entries(&s, 2, &defaults, "t").expect("the topic exists");
        assert!(entries.contains(&(
            "segment.bytes".into(),
            "1048576".into(),
            STATIC_BROKER_CONFIG
        )));
        assert!(topic_entries(&s, 1, &defaults, "missing").is_none());
    }

    #[test]
    fn describe_reports_the_broker_log_configs_with_their_source() {
        let defaults = TopicDefaults::default()
            .with("retention.ms", "5000")
            .with("delete.retention.ms", "1000");
        let s = state_with(&[], &[(Some(1), "log.cleaner.delete.retention.ms", "2000")]);
        let entries = dynamic_broker_entries(&s, 1, &defaults);
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, ..)| k == key)
                .map(|(_, v, source)| (v.as_str(), *source))
        };
        assert_eq!(
            get("log.retention.ms"),
            Some(("5000", STATIC_BROKER_CONFIG))
        );
        assert_eq!(
            get("log.cleaner.delete.retention.ms"),
            Some(("2000", DYNAMIC_BROKER_CONFIG))
        );
        assert_eq!(get("log.retention.bytes"), Some(("-1", DEFAULT_CONFIG)));
        assert_eq!(get("message.max.bytes"), Some(("1048588", DEFAULT_CONFIG)));
        assert_eq!(get("num.partitions"), None);
    }

    #[test]
    fn broker_configs_are_validated_and_static_ones_refused() {
        let set = |k: &str, v: &str| vec![(k.to_string(), OP_SET, Some(v.to_string()))];
        let none = BTreeMap::new();
        let ok = config_changes(Scope::Broker, &none, &set("num.partitions", "6"))
            .expect("a dynamic key");
        assert_eq!(ok["num.partitions"].as_deref(), Some("6"));
        // Kafka's other dynamic broker configs are stored (librdkafka's 0081_admin sets
        // this one), per listener too.
        for (key, value) in [
            ("sasl.kerberos.min.time.before.relogin", "58000"),
            ("log.cleaner.threads", "2"),
            ("listener.name.external.ssl.client.auth", "required"),
            (
                "listener.name.internal.plain.sasl.jaas.config",
                "x required;",
            ),
        ] {
            let ok = config_changes(Scope::Broker, &none, &set(key, value)).expect(key);
            assert_eq!(ok[key].as_deref(), Some(value));
        }
        for (key, value) in [
            ("num.partitions", "0"),
            ("num.partitions", "100000"),
            ("log.retention.ms", "soon"),
            ("log.cleanup.policy", "shred"),
            ("broker.id", "2"),
            ("advertised.listeners", "PLAINTEXT://x:1"),
            ("sasl.kerberos.min.time.before.relogin", "soon"),
            ("listener.name.external.ssl.client.auth", "always"),
            ("listener.name..ssl.protocol", "TLSv1.3"),
            ("no.such.key", "1"),
            // A topic config is not a broker config.
            ("retention.ms", "1"),
        ] {
            let err = config_changes(Scope::Broker, &none, &set(key, value));
            assert_eq!(
                err.unwrap_err().0,
                ResponseError::InvalidConfig,
                "{key}={value}"
            );
        }
        // APPEND works from Kafka's default of the broker key.
        let appended = config_changes(
            Scope::Broker,
            &none,
            &[(
                "log.cleanup.policy".into(),
                OP_APPEND,
                Some("compact".into()),
            )],
        )
        .expect("a list key");
        assert_eq!(
            appended["log.cleanup.policy"].as_deref(),
            Some("delete,compact")
        );
        assert_eq!(broker_scope(""), Ok(None));
        assert_eq!(broker_scope("3"), Ok(Some(3)));
        assert!(broker_scope("three").is_err());
    }

    #[test]
    fn incremental_operations_build_the_changes() {
        let mut current = BTreeMap::new();
        current.insert("cleanup.policy".to_string(), "delete".to_string());
        current.insert("retention.ms".to_string(), "5".to_string());
        let changes = topic_changes(
            &current,
            &[
                ("cleanup.policy".into(), OP_APPEND, Some("compact".into())),
                ("retention.ms".into(), OP_DELETE, None),
                ("max.message.bytes".into(), OP_SET, Some("100".into())),
            ],
        )
        .expect("valid in this test");
        assert_eq!(changes["cleanup.policy"].as_deref(), Some("delete,compact"));
        assert_eq!(changes["retention.ms"], None);
        assert_eq!(changes["max.message.bytes"].as_deref(), Some("100"));
        let err = topic_changes(
            &current,
            &[("retention.ms".into(), OP_APPEND, Some("1".into()))],
        );
        assert_eq!(err.unwrap_err().0, ResponseError::InvalidConfig);
        let err = topic_changes(
            &current,
            &[("retention.ms".into(), OP_SET, Some("x".into()))],
        );
        assert_eq!(err.unwrap_err().0, ResponseError::InvalidConfig);
        let err = topic_changes(&current, &[("bogus".into(), OP_SET, Some("1".into()))]);
        assert_eq!(err.unwrap_err().0, ResponseError::InvalidConfig);
    }

    #[test]
    fn group_configs_keep_kafkas_bounds_and_the_interval_below_the_session() {
        let defaults = BTreeMap::from([
            (SESSION_TIMEOUT_CONFIG, 45_000),
            (HEARTBEAT_INTERVAL_CONFIG, 5_000),
        ]);
        let set = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let check = |kv: &[(&str, &str)]| check_group_configs(&defaults, &set(kv));
        assert!(check(&[]).is_ok());
        assert!(check(&[(SESSION_TIMEOUT_CONFIG, "60000")]).is_ok());
        assert!(check(&[(HEARTBEAT_INTERVAL_CONFIG, "15000")]).is_ok());
        let err = check(&[(SESSION_TIMEOUT_CONFIG, "30000")]).unwrap_err();
        assert!(err.contains("must be between 45000 and 60000"), "{err}");
        assert!(check(&[(HEARTBEAT_INTERVAL_CONFIG, "20000")]).is_err());
        assert!(check(&[(HEARTBEAT_INTERVAL_CONFIG, "five")]).is_err());
        // A broker configured below Kafka's minimum (tests, demos) widens the bound.
        let short = BTreeMap::from([
            (SESSION_TIMEOUT_CONFIG, 6_000),
            (HEARTBEAT_INTERVAL_CONFIG, 1_000),
        ]);
        assert!(check_group_configs(&short, &set(&[(SESSION_TIMEOUT_CONFIG, "6000")])).is_ok());
        let err =
            check_group_configs(&short, &set(&[(HEARTBEAT_INTERVAL_CONFIG, "6000")])).unwrap_err();
        assert!(err.contains("must be less than"), "{err}");
        // Described: what was set, else the broker's value.
        let entries = group_entries(&defaults, &set(&[(SESSION_TIMEOUT_CONFIG, "50000")]));
        assert_eq!(
            entries,
            vec![
                (
                    SESSION_TIMEOUT_CONFIG.to_owned(),
                    "50000".to_owned(),
                    GROUP_CONFIG
                ),
                (
                    HEARTBEAT_INTERVAL_CONFIG.to_owned(),
                    "5000".to_owned(),
                    DEFAULT_CONFIG
                ),
            ]
        );
        let unknown = config_changes(
            Scope::Group,
            &BTreeMap::new(),
            &[("share.session.timeout.ms".into(), OP_SET, Some("1".into()))],
        );
        assert_eq!(unknown.unwrap_err().0, ResponseError::InvalidConfig);
    }
}
