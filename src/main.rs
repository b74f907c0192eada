//! The `strata` binary: parse the command line, start the broker, stop on a signal.

use std::process::ExitCode;
use std::sync::Arc;
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

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them). Without a background thread, freed pages go back to the OS only
/// when some thread allocates again: an idle broker after a burst kept ~180 MiB it no
/// longer used. With one, and dirty pages returned after 1 s instead of 10 s, RSS after
/// the default benchmark fell from 526 to 353 MiB and the peak during compaction by ~30 %;
/// throughput did not move.
// The one way to hand jemalloc options before its first allocation is this symbol,
// which it reads at start; nothing else in the program names it.
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The config says how to log, so it is read first; its errors go to stderr as one
    // line whatever the format.
    let result = match cli.command {
        Command::Serve(args) => match Config::load(&args) {
            Ok(config) => {
                logs::init(config.telemetry.log_format);
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
    let result = runtime.block_on(async move {
        // Certificates are read before anything starts: a bad file stops start-up.
        let tls = match &config.listener.tls {
            Some(settings) => Some(Arc::new(strata::tls::TlsAcceptor::load(settings.clone())?)),
            None => None,
        };
        let endpoints = bind_listeners(&config).await?;
        // Bound before the broker starts, so that `/ready` says "starting" (503) until
        // it has caught up and registered.
        let started = strata::server::http::Started::default();
        if let Some(addr) = config.telemetry.metrics_listen {
            serve_metrics(addr, started.clone()).await?;
        }
        let limits = config.listener.clone();
        let serving = config.clone();
        let (broker, tasks) = Broker::start(config).await?;
        broker.register().await?;
        let _ = started.set(broker.clone());
        // Said only once the broker serves: tests and operators wait for this line.
        log_serving(&serving);
        let loops = vec![broker.spawn_liveness(), broker.spawn_transactions()];
        if strata::failpoint::on("panic-in-task") {
            // Test switch: a background task panics, as a bug would make one.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                panic!("failpoint panic-in-task");
            });
        }
        let stop = stop_signal(broker.clone())?;
        // The listener keeps serving through the drain: requests in flight are answered
        // and new ones are sent to the other brokers.
        let draining = broker.clone();
        let bound = serving.node.shutdown_timeout;
        let shutdown = async move {
            stop.await;
            draining.drain(bound).await;
        };
        strata::server::serve(broker.clone(), endpoints, limits, tls, shutdown).await;
        broker.shutdown(tasks, loops).await?;
        info!("stopped");
        Ok(())
    });
    // Dropping the runtime would wait for every blocking-pool task still running, however
    // long: a churn run once saw a drained broker log "stopped" and then not exit for a
    // minute. Everything that matters is done by now.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Binds every Kafka listener, or says in one line why one cannot be.
async fn bind_listeners(config: &Config) -> anyhow::Result<Vec<strata::server::Endpoint>> {
    let listeners = &config.listener.listeners;
    let mut endpoints = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let bind = listener.bind;
        let socket = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                "another process is using it; stop it or change --listen / --listeners"
            } else {
                "use an address of this machine in --listen / --listeners"
            };
            anyhow::anyhow!(
                "cannot listen on {bind} ({} listener {}): {e} ({hint})",
                listener.protocol,
                listener.name
            )
        })?;
        endpoints.push(strata::server::Endpoint {
            socket,
            listener: Arc::new(listener.clone()),
        });
    }
    Ok(endpoints)
}

/// Serves `/metrics`, `/health` and `/ready` on `addr`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    started: strata::server::http::Started,
) -> anyhow::Result<()> {
    let metrics = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "another process is using it; stop it or pass --metrics-listen HOST:PORT (or none)"
        } else {
            "pass --metrics-listen with an address of this machine, or none"
        };
        anyhow::anyhow!("cannot listen for metrics on {addr}: {e} ({hint})")
    })?;
    strata::telemetry::install()?;
    tokio::spawn(strata::server::http::serve(metrics, started));
    tokio::spawn(strata::telemetry::upkeep());
    info!(%addr, "serving /metrics, /health and /ready");
    Ok(())
}

fn log_serving(config: &Config) {
    let authorizer = &config.security.authorizer;
    info!(super_users = ?authorizer.super_users, allow_everyone_if_no_acl_found = authorizer.allow_if_no_acl, "authorization");
    for l in &config.listener.listeners {
        info!(listener = %l.name, protocol = %l.protocol, listen = %l.bind, advertise = %format!("{}:{}", l.advertise_host, l.advertise_port), "strata is serving");
    }
}

/// Resolves on SIGTERM or SIGINT. If the metadata Raft stops by itself meanwhile, the
/// process exits at once so that it is restarted clean (its data directory is intact).
fn stop_signal(broker: Arc<Broker>) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
            reason = broker.fatal() => {
                tracing::error!(%reason, "the metadata raft stopped");
                eprintln!(
                    "strata: the metadata raft stopped: {reason}; exiting so that the broker is \
                     restarted clean (its data directory is intact)"
                );
                std::process::exit(EXIT_FATAL);
            }
        }
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
            let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            println!("voters: {}", list(&voters));
            // An older broker does not know this request and hangs up: voters only.
            let members = runtime.block_on(call_once(
                &args.raft,
                &auth,
                &RaftRequest::Members,
                Duration::from_secs(30),
            ));
            if let Ok(RaftReply::Members(Ok((_, learners)))) = members {
                if learners.is_empty() {
                    println!("learners: none");
                } else {
                    println!("learners: {}", list(&learners));
                }
            }
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
