//! The group coordinator.

use std::time::Duration;

use super::{millis, ConfigError, FileConfig};
use crate::cli::ServeArgs;

/// The server-side assignors Strata has (`group::consumer::assign::ASSIGNORS`, which a
/// test there keeps equal to this).
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group_initial_rebalance_delay_ms`: how long a new group waits for more members
    /// before its first rebalance (Kafka's `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
    /// `group_consumer_session_timeout_ms`: a consumer-protocol member silent this long
    /// is fenced (Kafka's `group.consumer.session.timeout.ms`).
    pub consumer_session_timeout: Duration,
    /// `group_consumer_heartbeat_interval_ms`: the interval told to consumer-protocol
    /// members (Kafka's `group.consumer.heartbeat.interval.ms`); below the session timeout.
    pub consumer_heartbeat_interval: Duration,
    /// `group_consumer_assignors`: the assignors members may ask for, the default first
    /// (Kafka's `group.consumer.assignors`).
    pub consumer_assignors: Vec<String>,
}

impl GroupConfig {
    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let initial_rebalance_delay = millis(
            "group_initial_rebalance_delay_ms",
            args.group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .unwrap_or(300),
            0..=300_000,
            "use 0 to 300000 milliseconds",
        )?;
        let consumer_session_timeout = millis(
            "group_consumer_session_timeout_ms",
            args.group_consumer_session_timeout_ms
                .or(file.group_consumer_session_timeout_ms)
                .unwrap_or(45_000),
            1_000..=1_800_000,
            "use 1000 to 1800000 milliseconds",
        )?;
        let interval_ms = args
            .group_consumer_heartbeat_interval_ms
            .or(file.group_consumer_heartbeat_interval_ms)
            .unwrap_or(5_000);
        let consumer_heartbeat_interval = millis(
            "group_consumer_heartbeat_interval_ms",
            interval_ms,
            100..=(consumer_session_timeout.as_millis() as u64).saturating_sub(1),
            "use at least 100 milliseconds and less than group_consumer_session_timeout_ms",
        )?;
        let assignors_text = args
            .group_consumer_assignors
            .clone()
            .or_else(|| file.group_consumer_assignors.clone())
            .unwrap_or_else(|| "uniform,range".to_owned());
        let consumer_assignors: Vec<String> = assignors_text
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        let known = |a: &String| ASSIGNORS.contains(&a.as_str());
        if consumer_assignors.is_empty() || !consumer_assignors.iter().all(known) {
            return Err(super::invalid(
                "group_consumer_assignors",
                &assignors_text,
                "use a comma-separated list of uniform and range, the default first",
            ));
        }
        Ok(Self {
            initial_rebalance_delay,
            consumer_session_timeout,
            consumer_heartbeat_interval,
            consumer_assignors,
        })
    }
}
