//! DescribeConfigs: topic configs (what was set, then broker defaults) and broker configs.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::str_bytes;
use crate::broker::Broker;

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
