//! The group coordinator.

use std::time::Duration;

use super::{millis, ConfigError, FileConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `group_initial_rebalance_delay_ms`: how long a new group waits for more members
    /// before its first rebalance (Kafka's `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
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
        Ok(Self {
            initial_rebalance_delay,
        })
    }
}
