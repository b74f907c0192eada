//! The metrics listener: `GET /metrics`, `/health` and `/ready` over plain HTTP/1.1.
//!
//! Hand-written rather than a web framework: three fixed paths, one request per
//! connection (`Connection: close`), a request head bounded in size and in time, and a
//! cap on connections, so that a stuck or hostile client cannot hold the broker's memory
//! or tasks.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::broker::Broker;

/// The largest request head read; Prometheus and load balancers send a few hundred bytes.
const MAX_HEAD: usize = 8 << 10;
/// A request must arrive, and its answer be written, within this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes and probes served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// How long `/ready` waits for its store probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The broker, once started and registered; before that `/ready` answers 503.
pub type Started = Arc<OnceLock<Arc<Broker>>>;

pub async fn serve(listener: TcpListener, broker: Started) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics listener busy: connection closed");
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT, handle(stream, &broker)).await {
                debug!(%peer, error = %e, "metrics request timed out");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, broker: &Started) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let (status, content_type, body) = match parse_request_line(&head) {
        Some(("GET" | "HEAD", path)) => route(path, broker).await,
        Some(_) => (405, "text/plain", "only GET is served\n".to_owned()),
        None => (400, "text/plain", "bad request\n".to_owned()),
    };
    let head_only = head.starts_with(b"HEAD ");
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends the head; None if it is too long or never comes.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

/// `GET /metrics?x HTTP/1.1` → ("GET", "/metrics").
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn route(path: &str, broker: &Started) -> (u16, &'static str, String) {
    match path {
        "/health" => (200, TEXT, "ok\n".to_owned()),
        "/ready" => match broker.get() {
            None => (503, TEXT, "not ready: starting\n".to_owned()),
            Some(broker) => match readiness(broker).await {
                Ok(()) => (200, TEXT, "ready\n".to_owned()),
                Err(reason) => (503, TEXT, format!("not ready: {reason}\n")),
            },
        },
        "/metrics" => {
            let mut body = crate::telemetry::render_recorded();
            if let Some(broker) = broker.get() {
                let broker = broker.clone();
                // Walking the state for lag can take a while on a large cluster: off the
                // runtime's worker threads.
                match tokio::task::spawn_blocking(move || super::scrape::render_state(&broker))
                    .await
                {
                    Ok(state) => body.push_str(&state),
                    Err(e) => warn!(error = %e, "metrics: rendering the state failed"),
                }
            }
            (200, PROMETHEUS, body)
        }
        _ => (
            404,
            TEXT,
            "not found: try /metrics, /health or /ready\n".to_owned(),
        ),
    }
}

/// Ready: a metadata leader is known, this node has applied what it knows is committed,
/// it is not fenced, and the object store answers.
pub async fn readiness(broker: &Broker) -> Result<(), String> {
    let raft = broker.raft_status();
    if raft.leader.is_none() {
        return Err("no metadata leader known".into());
    }
    if raft.applied < raft.committed {
        return Err(format!(
            "catching up with the metadata (applied {} of {})",
            raft.applied, raft.committed
        ));
    }
    if broker.draining() {
        return Err("draining: stopping, clients are sent to the other brokers".into());
    }
    if broker.fenced() {
        return Err("fenced: cut off from the metadata cluster".into());
    }
    let counters = broker.storage().counters();
    if counters
        .last_failed
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        // The last request failed: one cheap read says whether the store is back (its
        // outcome also resets the flag for the next probe).
        let probe = broker.storage().get_opt("_strata/probe");
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("object store unreachable: {e}")),
            Err(_) => return Err("object store unreachable: probe timed out".into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    type TestResult = Result<(), Box<dyn std::error::Error>>;

    use super::*;

    #[test]
    fn request_lines_are_parsed_strictly() -> TestResult {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line(b"HEAD /ready HTTP/1.0\r\n\r\n"),
            Some(("HEAD", "/ready"))
        );
        assert_eq!(parse_request_line(b"\x16\x03\x01 tls hello"), None);
        assert_eq!(parse_request_line(b"GET /\r\n\r\n"), None);
        Ok(())
    }

    #[tokio::test]
    async fn health_is_up_and_ready_waits_for_start() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(listener, Started::default()));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        assert!(get("/health").await?.starts_with("HTTP/1.1 200 OK\r\n"));
        let ready = get("/ready").await?;
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        assert!(ready.ends_with("not ready: starting\n"), "{ready}");
        assert!(get("/nope").await?.starts_with("HTTP/1.1 404 "));
        // A head that never ends is cut off at the size bound.
        let mut s = TcpStream::connect(addr).await?;
        let _ = s.write_all(&vec![b'a'; MAX_HEAD * 2]).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(out.is_empty());
        Ok(())
    }
}
