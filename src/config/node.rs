//! The node: who this broker is and where it keeps its local state.

use std::path::PathBuf;
use std::time::Duration;

use super::{millis, ConfigError, FileConfig};
use crate::cli::{NodeIdArg, ServeArgs};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `node_id`: this broker's id (0 until an automatic one is known).
    pub id: u64,
    /// `node_id = "auto"`: the id comes from the metadata leader at the first start and
    /// is kept in the data directory ([`NodeConfig::AUTO_ID_FILE`]).
    pub auto_id: bool,
    /// `data_dir`: the metadata log, its snapshots, the cache's disk tier, the stats file.
    pub data_dir: PathBuf,
    /// `rack`: this broker's rack (availability zone), shown to clients.
    pub rack: Option<String>,
    /// `shutdown_timeout_ms`: the longest a graceful stop (SIGTERM) drains.
    pub shutdown_timeout: Duration,
}

impl NodeConfig {
    /// Where an automatic node id is kept, in the data directory.
    pub const AUTO_ID_FILE: &'static str = "node_id";

    pub fn load(args: &ServeArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let shutdown_timeout = millis(
            "shutdown_timeout_ms",
            args.shutdown_timeout_ms
                .or(file.shutdown_timeout_ms)
                .unwrap_or(30_000),
            1000..=3_600_000,
            "use 1000 to 3600000 milliseconds",
        )?;
        let node_id = args.node_id.or(file.node_id).unwrap_or(NodeIdArg::Id(1));
        Ok(Self {
            id: match node_id {
                NodeIdArg::Id(id) => id,
                NodeIdArg::Auto => 0,
            },
            auto_id: node_id == NodeIdArg::Auto,
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
