//! DescribeConfigs: topic configs (what was set, then broker defaults) and broker configs;
//! AlterConfigs and IncrementalAlterConfigs for topic configs, validated by type.

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

use super::str_bytes;
use crate::broker::Broker;
use crate::metadata::state::{Command, Response, StateError};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
/// Kafka's config sources.
const TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// Topic-level defaults a client may ask about, as Kafka names them.
pub const TOPIC_DEFAULTS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("compression.type", "producer"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("min.insync.replicas", "1"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
];

pub fn describe(
    broker: &Arc<Broker>,
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
            let entries: Vec<(String, String, i8)> = match resource.resource_type {
                TOPIC => {
                    let set = broker.metadata.read(|s| {
                        s.topic(resource.resource_name.as_str())
                            .map(|t| t.configs.clone())
                    });
                    let Some(set) = set else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let mut entries: Vec<_> = TOPIC_DEFAULTS
                        .iter()
                        .map(|(k, v)| match set.get(*k) {
                            Some(value) => (k.to_string(), value.clone(), TOPIC_CONFIG),
                            None => (k.to_string(), v.to_string(), DEFAULT_CONFIG),
                        })
                        .collect();
                    for (k, v) in &set {
                        if !TOPIC_DEFAULTS.iter().any(|(d, _)| d == k) {
                            entries.push((k.clone(), v.clone(), TOPIC_CONFIG));
                        }
                    }
                    entries
                }
                BROKER => {
                    let c = &broker.config;
                    vec![
                        (
                            "auto.create.topics.enable".into(),
                            c.auto_create_topics.to_string(),
                            STATIC_BROKER_CONFIG,
                        ),
                        (
                            "num.partitions".into(),
                            c.default_partitions.to_string(),
                            STATIC_BROKER_CONFIG,
                        ),
                        (
                            "socket.request.max.bytes".into(),
                            c.max_request_bytes.to_string(),
                            STATIC_BROKER_CONFIG,
                        ),
                        (
                            "advertised.listeners".into(),
                            format!("PLAINTEXT://{}:{}", c.advertise_host, c.advertise_port),
                            STATIC_BROKER_CONFIG,
                        ),
                        (
                            "broker.id".into(),
                            c.node_id.to_string(),
                            STATIC_BROKER_CONFIG,
                        ),
                    ]
                }
                _ => return result.with_error_code(ResponseError::InvalidRequest.code()),
            };
            let configs = entries
                .into_iter()
                .filter(|(k, _, _)| wanted(k))
                .map(|(name, value, source)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(&name))
                        .with_value(Some(str_bytes(&value)))
                        .with_config_source(source)
                        .with_read_only(resource.resource_type == BROKER)
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// How a topic config's value is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Long { min: i64 },
    Double,
    Bool,
    OneOf(&'static [&'static str]),
    List(&'static [&'static str]),
    Text,
}

/// Every topic config Kafka knows, with the type of its value. Strata stores them all;
/// the ones it honours are `max.message.bytes` and `message.timestamp.type`.
const TOPIC_CONFIGS: &[(&str, Kind)] = &[
    ("cleanup.policy", Kind::List(&["compact", "delete"])),
    (
        "compression.type",
        Kind::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
    ),
    ("delete.retention.ms", Kind::Long { min: 0 }),
    ("file.delete.delay.ms", Kind::Long { min: 0 }),
    ("flush.messages", Kind::Long { min: 1 }),
    ("flush.ms", Kind::Long { min: 0 }),
    ("follower.replication.throttled.replicas", Kind::List(&[])),
    ("index.interval.bytes", Kind::Long { min: 0 }),
    ("leader.replication.throttled.replicas", Kind::List(&[])),
    ("local.retention.bytes", Kind::Long { min: -2 }),
    ("local.retention.ms", Kind::Long { min: -2 }),
    ("max.compaction.lag.ms", Kind::Long { min: 1 }),
    ("max.message.bytes", Kind::Long { min: 0 }),
    ("message.downconversion.enable", Kind::Bool),
    ("message.format.version", Kind::Text),
    ("message.timestamp.after.max.ms", Kind::Long { min: 0 }),
    ("message.timestamp.before.max.ms", Kind::Long { min: 0 }),
    ("message.timestamp.difference.max.ms", Kind::Long { min: 0 }),
    (
        "message.timestamp.type",
        Kind::OneOf(&["CreateTime", "LogAppendTime"]),
    ),
    ("min.cleanable.dirty.ratio", Kind::Double),
    ("min.compaction.lag.ms", Kind::Long { min: 0 }),
    ("min.insync.replicas", Kind::Long { min: 1 }),
    ("preallocate", Kind::Bool),
    ("remote.storage.enable", Kind::Bool),
    ("retention.bytes", Kind::Long { min: -1 }),
    ("retention.ms", Kind::Long { min: -1 }),
    ("segment.bytes", Kind::Long { min: 14 }),
    ("segment.index.bytes", Kind::Long { min: 4 }),
    ("segment.jitter.ms", Kind::Long { min: 0 }),
    ("segment.ms", Kind::Long { min: 1 }),
    ("unclean.leader.election.enable", Kind::Bool),
];

fn kind(key: &str) -> Option<Kind> {
    TOPIC_CONFIGS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind)
}

/// Checks one topic config as Kafka's LogConfig does: the key must be known and the
/// value must parse as its type. The error text is what the client shows.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let kind = kind(key).ok_or_else(|| format!("Unknown topic config name: {key}"))?;
    let bad = || format!("Invalid value {value} for configuration {key}");
    match kind {
        Kind::Long { min } => match value.trim().parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            Ok(_) => Err(format!("{} (must be at least {min})", bad())),
            Err(_) => Err(format!("{}: Not a number of type LONG", bad())),
        },
        Kind::Double => value.trim().parse::<f64>().map(|_| ()).map_err(|_| bad()),
        Kind::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => Err(format!(
                "{}: Expected value to be either true or false",
                bad()
            )),
        },
        Kind::OneOf(allowed) => {
            if allowed.contains(&value.trim()) {
                Ok(())
            } else {
                Err(format!("{}: must be one of {allowed:?}", bad()))
            }
        }
        Kind::List(allowed) => {
            let items = value.split(',').map(str::trim).filter(|s| !s.is_empty());
            match items
                .clone()
                .find(|i| !allowed.is_empty() && !allowed.contains(i))
            {
                Some(_) => Err(format!("{}: items must be among {allowed:?}", bad())),
                None => Ok(()),
            }
        }
        Kind::Text => Ok(()),
    }
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
    let mut changes = ConfigChanges::new();
    for (key, op, value) in configs {
        let invalid = |m: String| (ResponseError::InvalidConfig, m);
        let kind = kind(key).ok_or_else(|| invalid(format!("Unknown topic config name: {key}")))?;
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
            let value = current.get(key).map(String::as_str).or_else(|| {
                TOPIC_DEFAULTS
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| *v)
            });
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
            validate_topic_config(key, v).map_err(invalid)?;
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
        BROKER => {
            return Err((
                ResponseError::InvalidRequest,
                "broker configs are static in Strata (set them by flag, variable or file)".into(),
            ))
        }
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("unsupported resource type {other}"),
            ))
        }
    }
    let current = broker
        .metadata
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
    match broker.metadata.propose(cmd).await {
        Ok(Response::Topic(Ok(()))) => Ok(()),
        Ok(Response::Topic(Err(StateError::UnknownTopicOrPartition))) => Err((
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )),
        Ok(other) => Err((ResponseError::UnknownServerError, format!("{other:?}"))),
        Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
    }
}

/// One resource of an alter request: (resource type, name, [(key, operation, value)]).
type AlterRequest = (i8, StrBytes, Vec<(String, i8, Option<String>)>);
/// Its outcome: (resource type, name, error if any).
type AlterOutcome = (i8, StrBytes, Option<(ResponseError, String)>);

/// Applies each resource's changes in turn; shared by both alter APIs, which differ only
/// in their message types and in `replace` (whole set vs incremental operations).
async fn alter_all(
    broker: &Arc<Broker>,
    resources: Vec<AlterRequest>,
    replace: bool,
    validate_only: bool,
) -> Vec<AlterOutcome> {
    let mut outcomes = Vec::with_capacity(resources.len());
    for (resource_type, name, configs) in resources {
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
    let responses = alter_all(broker, resources, true, req.validate_only)
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
                None => resp,
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT on top of what is set.
pub async fn incremental_alter(
    broker: &Arc<Broker>,
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
    let responses = alter_all(broker, resources, false, req.validate_only)
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
                None => resp,
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_configs_are_validated_by_type() {
        assert!(validate_topic_config("retention.ms", "1000").is_ok());
        assert!(validate_topic_config("retention.ms", "-1").is_ok());
        assert!(validate_topic_config("retention.ms", "soon").is_err());
        assert!(validate_topic_config("retention.ms", "-5").is_err());
        assert!(validate_topic_config("no.such.key", "1").is_err());
        assert!(validate_topic_config("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate_topic_config("message.timestamp.type", "Wallclock").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "shred").is_err());
        assert!(validate_topic_config("preallocate", "TRUE").is_ok());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "x").is_err());
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
}
