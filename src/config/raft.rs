//! The metadata Raft: the voters, how peers authenticate, how often the log is
//! snapshotted and shipped, how long a broker's lease lasts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::{in_range, millis, split_host_port, ConfigError, FileConfig, NodeConfig};
use crate::cli::ServeArgs;
use crate::security::secret::ClusterSecret;
use crate::tls::TlsSettings;

#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// `raft_listen`: where peers' Raft traffic arrives; None for a lone broker.
    pub listen: Option<String>,
    /// `raft_advertise`: where peers reach this broker's Raft port (its entry among the
    /// voters, the address a learner joins with); the listen address unless set.
    pub advertise: Option<String>,
    /// `controllers`: the Raft voters by node id and Raft address.
    pub controllers: BTreeMap<u64, String>,
    /// The secret that authenticates the Raft port (read from `cluster_secret_file`).
    pub cluster_secret: Option<ClusterSecret>,
    /// `raft_tls`: TLS on the Raft port and to peers' Raft ports, with the listener's
    /// certificate, key and CA; None: plain TCP.
    pub tls: Option<TlsSettings>,
    /// `snapshot_every`: log entries between two snapshots of the metadata.
    pub snapshot_every: u64,
    /// `store_snapshot_interval_ms`: how often the metadata snapshot is copied to the
    /// object store.
    pub store_snapshot_interval: Duration,
    /// `broker_lease_ms`: a broker whose heartbeats stop this long is expired.
    pub broker_lease: Duration,
    /// `broker_forget_after_ms`: a dead broker silent this long is forgotten.
    pub broker_forget_after: Duration,
    /// `unsafe_ack_before_shipping`: acknowledge without waiting for the metadata to
    /// reach the bucket (unsafe).
    pub unsafe_ack_before_shipping: bool,
}

impl RaftConfig {
    /// The voters default to this node alone; `raft_tls` takes the listener's TLS files.
    pub fn load(
        args: &ServeArgs,
        file: &FileConfig,
        node: &NodeConfig,
        tls: Option<&TlsSettings>,
    ) -> Result<Self, ConfigError> {
        let tls = raft_tls(args.raft_tls.or(file.raft_tls).unwrap_or(false), tls)?;
        let snapshot_every = in_range(
            "snapshot_every",
            args.snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(10_000),
            1..=u64::MAX,
            "use a positive number of log entries",
        )?;
        let Voters {
            listen,
            advertise,
            controllers,
        } = voters(args, file, node.id)?;
        if node.auto_id && controllers.contains_key(&node.id) {
            return Err(ConfigError::Invalid {
                key: "node_id",
                value: "auto".into(),
                hint: "an automatic id is for a broker that joins a cluster: give --controllers \
                       (the voters keep explicit ids)",
            });
        }
        let cluster_secret = args
            .cluster_secret_file
            .clone()
            .or(file.cluster_secret_file.clone())
            .map(|path| load_secret(&path))
            .transpose()?;
        let broker_lease = millis(
            "broker_lease_ms",
            args.broker_lease_ms
                .or(file.broker_lease_ms)
                .unwrap_or(5000),
            500..=600_000,
            "use 500 to 600000 milliseconds",
        )?;
        let broker_forget_after = millis(
            "broker_forget_after_ms",
            args.broker_forget_after_ms
                .or(file.broker_forget_after_ms)
                .unwrap_or(3_600_000),
            1000..=31_536_000_000,
            "use 1000 milliseconds to a year",
        )?;
        if broker_forget_after < broker_lease {
            return Err(ConfigError::Invalid {
                key: "broker_forget_after_ms",
                value: broker_forget_after.as_millis().to_string(),
                hint: "use at least broker_lease_ms: a broker is forgotten only once it is dead",
            });
        }
        let store_snapshot_interval = millis(
            "store_snapshot_interval_ms",
            args.store_snapshot_interval_ms
                .or(file.store_snapshot_interval_ms)
                .unwrap_or(60_000),
            100..=86_400_000,
            "use 100 to 86400000 milliseconds",
        )?;
        Ok(Self {
            listen,
            advertise,
            controllers,
            cluster_secret,
            tls,
            snapshot_every,
            store_snapshot_interval,
            broker_lease,
            broker_forget_after,
            unsafe_ack_before_shipping: args.unsafe_ack_before_shipping
                || file.unsafe_ack_before_shipping.unwrap_or(false),
        })
    }
}

/// With `raft_tls`, the listener's TLS settings, which must include a CA to check
/// peers' certificates against.
fn raft_tls(enabled: bool, tls: Option<&TlsSettings>) -> Result<Option<TlsSettings>, ConfigError> {
    if !enabled {
        return Ok(None);
    }
    match tls {
        None => Err(ConfigError::Invalid {
            key: "raft_tls",
            value: "true".into(),
            hint: "TLS on the Raft port needs a certificate: set tls_cert_file, tls_key_file and tls_ca_file too",
        }),
        Some(t) if t.ca_file.is_none() => Err(ConfigError::Invalid {
            key: "tls_ca_file",
            value: String::new(),
            hint: "raft_tls checks peers' certificates against it: set it to the PEM CA bundle the brokers' certificates chain to",
        }),
        Some(t) => Ok(Some(t.clone())),
    }
}

/// `raft_listen`, `raft_advertise` and `controllers`, checked together: a broker in a
/// cluster needs a Raft address, and its own entry among the voters must be the address
/// it is reached at (`raft_advertise`, by default the listen address).
fn voters(args: &ServeArgs, file: &FileConfig, node_id: u64) -> Result<Voters, ConfigError> {
    let raft_listen = args.raft_listen.clone().or(file.raft_listen.clone());
    if let Some(addr) = &raft_listen {
        if split_host_port(addr).is_none() {
            return Err(ConfigError::Invalid {
                key: "raft_listen",
                value: addr.clone(),
                hint: "use HOST:PORT that the other brokers can reach, e.g. 10.0.0.5:9093",
            });
        }
    }
    let raft_advertise = args.raft_advertise.clone().or(file.raft_advertise.clone());
    if let Some(addr) = &raft_advertise {
        if split_host_port(addr).is_none() {
            return Err(ConfigError::Invalid {
                key: "raft_advertise",
                value: addr.clone(),
                hint: "use HOST:PORT that the other brokers reach this broker's Raft port at, e.g. strata-1.strata:9093",
            });
        }
        if raft_listen.is_none() {
            return Err(ConfigError::Invalid {
                key: "raft_advertise",
                value: addr.clone(),
                hint: "it is the address of the Raft port: set --raft-listen too",
            });
        }
    }
    let advertise = raft_advertise.or(raft_listen.clone());
    let controllers = match args.controllers.clone().or(file.controllers.clone()) {
        Some(list) => parse_controllers(&list)?,
        None => BTreeMap::from([(node_id, advertise.clone().unwrap_or_default())]),
    };
    let lone_voter = controllers.len() == 1 && controllers.contains_key(&node_id);
    if !lone_voter && raft_listen.is_none() {
        return Err(ConfigError::Invalid {
            key: "raft_listen",
            value: String::new(),
            hint:
                "a broker in a cluster needs --raft-listen HOST:PORT for the metadata Raft traffic",
        });
    }
    if let (Some(reached), Some(mine)) = (&advertise, controllers.get(&node_id)) {
        if reached != mine {
            return Err(ConfigError::Invalid {
                key: "controllers",
                value: format!("{node_id}@{mine}"),
                hint: "this broker's entry must be the address it is reached at: --raft-advertise, else --raft-listen",
            });
        }
    }
    Ok(Voters {
        listen: raft_listen,
        advertise,
        controllers,
    })
}

/// What `voters` checked: this broker's Raft addresses and the voters.
struct Voters {
    listen: Option<String>,
    advertise: Option<String>,
    controllers: BTreeMap<u64, String>,
}

/// `1@host:port,2@host:port`: the Raft voters.
fn parse_controllers(list: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let invalid = || {
        ConfigError::Invalid {
        key: "controllers",
        value: list.to_owned(),
        hint: "use ID@HOST:PORT entries separated by commas, e.g. 1@10.0.0.1:9093,2@10.0.0.2:9093,3@10.0.0.3:9093",
    }
    };
    let mut voters = BTreeMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry.split_once('@').ok_or_else(invalid)?;
        let id: u64 = id.parse().map_err(|_| invalid())?;
        split_host_port(addr).ok_or_else(invalid)?;
        if voters.insert(id, addr.to_owned()).is_some() {
            return Err(invalid());
        }
    }
    if voters.is_empty() {
        return Err(invalid());
    }
    Ok(voters)
}

/// Reads the cluster secret (also for `strata voters`).
pub fn load_secret(path: &Path) -> Result<ClusterSecret, ConfigError> {
    ClusterSecret::load(path).map_err(|source| ConfigError::Secret {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn cluster_secret_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let toml = dir.path().join("strata.toml");
        std::fs::write(
            &toml,
            format!("cluster_secret_file = {:?}\n", path.display().to_string()),
        )
        .unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(toml),
            ..Default::default()
        })
        .unwrap();
        assert!(c.raft.cluster_secret.is_some());
        assert!(Config::load(&ServeArgs::default())
            .unwrap()
            .raft
            .cluster_secret
            .is_none());
        let refused = |file: &Path| {
            Config::load(&ServeArgs {
                cluster_secret_file: Some(file.to_path_buf()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string()
        };
        std::fs::write(&path, "tooshort\n").unwrap();
        let e = refused(&path);
        assert!(
            e.starts_with("cluster_secret_file ") && e.contains("8 bytes"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = refused(&dir.path().join("missing"));
        assert!(e.contains("cannot read it"), "{e}");
    }

    #[test]
    fn raft_tls_needs_the_tls_files_and_a_ca() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let e = refused(ServeArgs {
            raft_tls: Some(true),
            ..Default::default()
        });
        assert!(e.starts_with("raft_tls = \"true\" is not valid"), "{e}");
        let e = refused(ServeArgs {
            raft_tls: Some(true),
            tls_cert_file: Some("c.pem".into()),
            tls_key_file: Some("k.pem".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("tls_ca_file = \"\" is not valid: raft_tls"),
            "{e}"
        );
    }

    #[test]
    fn the_own_controllers_entry_is_the_advertised_raft_address() {
        let load = |args: ServeArgs| Config::load(&args).map_err(|e| e.to_string());
        let cluster = |advertise: Option<&str>| ServeArgs {
            node_id: Some(crate::cli::NodeIdArg::Id(2)),
            raft_listen: Some("0.0.0.0:9093".into()),
            raft_advertise: advertise.map(str::to_owned),
            controllers: Some("1@strata-1:9093,2@strata-2:9093".into()),
            ..Default::default()
        };
        // Without --raft-advertise the entry must be the listen address.
        let e = load(cluster(None)).unwrap_err();
        assert!(e.starts_with("controllers = \"2@strata-2:9093\""), "{e}");
        let c = load(cluster(Some("strata-2:9093"))).unwrap();
        assert_eq!(c.raft.listen.as_deref(), Some("0.0.0.0:9093"));
        assert_eq!(c.raft.advertise.as_deref(), Some("strata-2:9093"));
        let e = load(cluster(Some("strata-3:9093"))).unwrap_err();
        assert!(e.starts_with("controllers = "), "{e}");
        // Its default is the listen address; it needs one, and HOST:PORT.
        let c = load(ServeArgs {
            raft_listen: Some("127.0.0.1:9093".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.raft.advertise.as_deref(), Some("127.0.0.1:9093"));
        let e = load(ServeArgs {
            raft_advertise: Some("strata-1:9093".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.starts_with("raft_advertise = "), "{e}");
        let e = load(ServeArgs {
            raft_listen: Some("127.0.0.1:9093".into()),
            raft_advertise: Some("strata-1".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.starts_with("raft_advertise = \"strata-1\""), "{e}");
    }

    #[test]
    fn store_snapshot_interval_out_of_range_is_refused_not_clamped() {
        let refused = |args: ServeArgs| Config::load(&args).unwrap_err().to_string();
        let e = refused(ServeArgs {
            store_snapshot_interval_ms: Some(5),
            ..Default::default()
        });
        assert!(
            e.starts_with("store_snapshot_interval_ms = \"5\" is not valid"),
            "{e}"
        );
        let c = Config::load(&ServeArgs {
            store_snapshot_interval_ms: Some(100),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.raft.store_snapshot_interval, Duration::from_millis(100));
    }
}
