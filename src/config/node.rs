//! The node: who this broker is and where it keeps its local state.

use std::path::PathBuf;
use std::time::Duration;

use super::{millis, ConfigError, FileConfig};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `node_id`: this broker's id.
    pub id: u64,
    /// `data_dir`: the metadata log, its snapshots, the cache's disk tier, the stats file.
    pub data_dir: PathBuf,
    /// `rack`: this broker's rack (availability zone), shown to clients.
    pub rack: Option<String>,
    /// `shutdown_timeout_ms`: the longest a graceful stop (SIGTERM) drains.
    pub shutdown_timeout: Duration,
}

impl NodeConfig {
    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let shutdown_timeout = millis(
            "shutdown_timeout_ms",
            args.shutdown_timeout_ms
                .or(file.shutdown_timeout_ms)
                .unwrap_or(30_000),
            1000..=3_600_000,
            "use 1000 to 3600000 milliseconds",
        )?;
        Ok(Self {
            id: args.node_id.or(file.node_id).unwrap_or(1),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from("./data")),
            rack: args.rack.clone().or(file.rack.clone()),
            shutdown_timeout,
        })
    }
}
