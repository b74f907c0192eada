//! The `strata` binary: parse the command line, start the broker, stop on a signal.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata::broker::Broker;
use strata::cli::{Cli, Command};
use strata::config::Config;
use strata::telemetry::logs::{self, LogFormat};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The config says how to log, so it is read first; its errors go to stderr as one
    // line whatever the format.
    let result = match cli.command {
        Command::Serve(args) => match Config::load(&args) {
            Ok(config) => {
                logs::init(config.log_format);
                exit_on_panic();
                serve(config)
            }
            Err(e) => Err(e.into()),
        },
        Command::Voters(args) => {
            logs::init(LogFormat::Text);
            exit_on_panic();
            voters(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what is wrong and how to fix it.
            eprintln!("strata: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Certificates are read before anything starts: a bad file stops start-up.
        let tls = match &config.tls {
            Some(settings) => Some(std::sync::Arc::new(
                strata::tls::TlsAcceptor::load(settings.clone())?,
            )),
            None => None,
        };
        let mut endpoints = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let bind = listener.bind;
            let socket = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    "another process is using it; stop it or change --listen / --listeners"
                } else {
                    "use an address of this machine in --listen / --listeners"
                };
                anyhow::anyhow!("cannot listen on {bind} ({} listener {}): {e} ({hint})", listener.protocol, listener.name)
            })?;
            endpoints.push(strata::server::Endpoint {
                socket,
                listener: std::sync::Arc::new(listener.clone()),
            });
        }
        // Bound before the broker starts, so that `/ready` says "starting" (503) until
        // it has caught up and registered.
        let started = strata::server::http::Started::default();
        if let Some(addr) = config.metrics_listen {
            let metrics = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    "another process is using it; stop it or pass --metrics-listen HOST:PORT (or none)"
                } else {
                    "pass --metrics-listen with an address of this machine, or none"
                };
                anyhow::anyhow!("cannot listen for metrics on {addr}: {e} ({hint})")
            })?;
            strata::telemetry::install()?;
            tokio::spawn(strata::server::http::serve(metrics, started.clone()));
            tokio::spawn(strata::telemetry::upkeep());
            info!(%addr, "serving /metrics, /health and /ready");
        }
        let (broker, tasks) = Broker::start(config).await?;
        broker.register().await?;
        let _ = started.set(broker.clone());
        let liveness = broker.spawn_liveness();
        let transactions = broker.spawn_transactions();
        let authorizer = &broker.config.security.authorizer;
        info!(super_users = ?authorizer.super_users, allow_everyone_if_no_acl_found = authorizer.allow_if_no_acl, "authorization");
        for l in &broker.config.listeners {
            info!(listener = %l.name, protocol = %l.protocol, listen = %l.bind, advertise = %format!("{}:{}", l.advertise_host, l.advertise_port), "strata is serving");
        }
        let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = int.recv() => info!("SIGINT: shutting down"),
            }
        };
        if strata::failpoint::on("panic-in-task") {
            // Test switch: a background task panics, as a bug would make one.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                panic!("failpoint panic-in-task");
            });
        }
        let metadata = broker.clone();
        let fatal = async move {
            let reason = metadata.metadata.fatal().await;
            tracing::error!(%reason, "the metadata raft stopped");
            eprintln!(
                "strata: the metadata raft stopped: {reason}; exiting so that the broker is \
                 restarted clean (its data directory is intact)"
            );
            std::process::exit(EXIT_FATAL);
        };
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                () = fatal => {}
            }
        };
        strata::server::serve(broker.clone(), endpoints, tls, shutdown).await;
        // Requests already buffered finish their flush and commit; every acknowledged
        // record is in the store already, so a bounded wait is all a graceful stop needs.
        tokio::time::sleep(broker.config.flush_interval * 2 + Duration::from_millis(200)).await;
        tasks.abort_chores();
        transactions.abort();
        liveness.abort();
        // Hand partitions and groups to the others now rather than after the lease.
        broker.deregister().await;
        tasks.abort();
        // The bucket gets the latest metadata, so a replacement broker on a new machine
        // starts from exactly here.
        if let Err(e) = strata::metadata::shipping::ship_snapshot(&broker.metadata, &broker.storage).await {
            tracing::warn!(error = %e, "could not ship the final metadata snapshot");
        }
        let counters = broker.storage.counters();
        let load = std::sync::atomic::Ordering::Relaxed;
        info!(
            puts = counters.puts.load(load),
            gets = counters.gets.load(load),
            lists = counters.lists.load(load),
            deletes = counters.deletes.load(load),
            "object_store_requests"
        );
        broker.groups.shutdown();
        broker.cache.close().await;
        broker.metadata.shutdown().await?;
        info!("stopped");
        Ok(())
    })
}

/// `strata voters`: one membership request to a broker's Raft port, the voters printed.
fn voters(args: strata::cli::VotersArgs) -> anyhow::Result<()> {
    use strata::metadata::raft::auth::Identity;
    use strata::metadata::raft::network::{call_once, Auth, RaftReply, RaftRequest};
    let auth = Auth {
        secret: args
            .cluster_secret_file
            .as_deref()
            .map(strata::config::load_secret)
            .transpose()?,
        me: Identity::Operator,
        tls: voters_tls(&args)?,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let request = RaftRequest::ChangeVoters {
        add: args.add,
        remove: args.remove,
    };
    let reply = runtime
        .block_on(call_once(
            &args.raft,
            &auth,
            &request,
            Duration::from_secs(30),
        ))
        .with_context(|| {
            format!(
                "cannot reach the Raft port {} (pass a broker's --raft-listen address)",
                args.raft
            )
        })?;
    match reply {
        RaftReply::ChangeVoters(Ok(voters)) => {
            let list: Vec<String> = voters.iter().map(u64::to_string).collect();
            println!("voters: {}", list.join(","));
            Ok(())
        }
        RaftReply::ChangeVoters(Err(e)) => Err(anyhow::anyhow!("membership change refused: {e}")),
        _ => Err(anyhow::anyhow!("unexpected reply from {}", args.raft)),
    }
}

/// `strata voters`' TLS to the Raft port, with `--raft-tls true`.
fn voters_tls(
    args: &strata::cli::VotersArgs,
) -> anyhow::Result<Option<strata::metadata::raft::network::RaftTls>> {
    if args.raft_tls != Some(true) {
        return Ok(None);
    }
    let ca_file = args.tls_ca_file.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "--raft-tls needs --tls-ca-file: the PEM CA bundle the brokers' certificates chain to"
        )
    })?;
    let identity = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert-file and --tls-key-file go together: set both or neither"),
    };
    Ok(Some(strata::metadata::raft::network::RaftTls::client(
        ca_file, identity,
    )?))
}

/// Exit code when the broker stops itself on an internal failure (sysexits' EX_SOFTWARE).
const EXIT_FATAL: i32 = 70;

/// A panic anywhere ends the process with one clear line and a non-zero code: a broker
/// with a dead task (the Raft core, a flusher, a coordinator) must not stay up half-working,
/// serving stale answers; its supervisor restarts it, and its disk and the bucket hold
/// everything it acknowledged.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        tracing::error!(%message, %location, "internal panic");
        eprintln!("strata: internal error{location}: {message}; exiting (please report this)");
        std::process::exit(EXIT_FATAL);
    }));
}

/// The error and its causes on one line, skipping causes the message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
