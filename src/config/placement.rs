//! Placement: how Metadata presents the brokers that lead partitions to clients.

use super::{in_range, ConfigError, FileConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// `leader_ids`: broker ids Metadata spreads partition leadership over; each live
    /// broker answers as `ceil(leader_ids / live brokers)` of them, at its own address.
    pub leader_ids: u32,
}

impl PlacementConfig {
    /// One id per broker unless asked: kafkajs maps every broker id that shares the
    /// seed broker's address onto one connection with one node id, and then drops the
    /// partitions of the others from its produce requests (its `brokerPool`), so more
    /// ids are for fleets whose clients are librdkafka or Java.
    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let leader_ids = in_range(
            "leader_ids",
            args.leader_ids.or(file.leader_ids).unwrap_or(1),
            1..=1024,
            "use 1 to 1024",
        )?;
        Ok(Self { leader_ids })
    }
}
