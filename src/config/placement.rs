//! Placement: how Metadata presents the brokers that lead partitions to clients.

use super::{in_range, ConfigError, FileConfig, StoreConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// `leader_ids`: broker ids Metadata spreads partition leadership over; each live
    /// broker answers as `ceil(leader_ids / live brokers)` of them, at its own address.
    pub leader_ids: u32,
}

impl PlacementConfig {
    /// The default follows the store: a client connection carries a few requests at
    /// once (idempotent producers: 5), each waiting for a PUT to S3, so more ids keep
    /// more requests in flight; against a local directory one id per broker suffices.
    pub fn load(
        args: &ServeArgs,
        file: &FileConfig,
        store: &StoreConfig,
    ) -> Result<Self, ConfigError> {
        let default = if store.url.starts_with("s3:") { 16 } else { 1 };
        let leader_ids = in_range(
            "leader_ids",
            args.leader_ids.or(file.leader_ids).unwrap_or(default),
            1..=1024,
            "use 1 to 1024",
        )?;
        Ok(Self { leader_ids })
    }
}
