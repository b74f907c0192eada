//! The TCP listener and per-connection loop.
//!
//! A connection handles its requests one at a time, in request order, as Kafka does: a
//! request's effect (an offset commit, a join, a topic creation) happens before the next
//! request of that connection is looked at. One exception keeps produce fast without
//! giving that up: a produce enters the write buffer here, in order (which is what orders
//! its effect, the offsets it gets), and only its wait for the commit runs concurrently
//! with the requests behind it. Responses are written in request order. Each connection
//! is its own task, so a slow request (a long-poll fetch, a join waiting for a rebalance)
//! holds up only the requests behind it on its own connection.
//!
//! What bounds it (`limits.rs`): connections over `max_connections` in all or
//! `max_connections_per_ip` from one address are accepted and closed at once. Every frame
//! is charged, from its size prefix on, to one budget over all connections
//! (`max_inflight_request_bytes`) until its handler is done with it; a connection whose
//! next frame does not fit waits, without reading its socket, so memory for requests
//! stays bounded however many clients send large frames. A frame must arrive whole
//! within `frame_read_timeout_ms` of its size, and a connection with nothing in flight
//! and nothing arriving for `connections_max_idle_ms` is closed.
//!
//! Each listener (`listeners`) has its own accept loop; the limits and the request budget
//! are shared. SSL and SASL_SSL listeners speak TLS (`tls.rs`): the handshake must finish
//! within `frame_read_timeout_ms`, then the connection runs the same loop as a plaintext
//! one, over the decrypted stream. On SASL listeners the client authenticates first
//! (`sasl.rs`); the principal (SASL user, client certificate subject or ANONYMOUS) and
//! the listener go with every request, for ACLs and for the addresses Metadata returns.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::broker::Broker;
use crate::config::{Listener, ListenerConfig};
use crate::protocol::{start_request, ProtocolError, RequestContext, Started};

pub mod http;
mod limits;
mod sasl;
mod scrape;

use crate::tls::{Principal, TlsAcceptor};
use limits::{ConnectionLimits, RequestBudget, Throttle};
use sasl::{Intercept, SaslSession};

/// Responses a connection may owe (produces waiting for their commit, answers not yet
/// written); past this, reading pauses (backpressure). Their bytes are bounded by the
/// request budget; this bounds their count. It must cover a client's request rate times
/// the produce latency on S3: librdkafka sends one partition per request with no cap on
/// requests in flight, so 1,000 partitions at one request a second, answered in 250 ms,
/// owe 250 answers on one connection. With 64 the connection served 256 a second and
/// the rest queued in the client for seconds.
const MAX_INFLIGHT_PER_CONNECTION: usize = 1024;

/// Refused connections are logged at most this often (a flood must not flood the log).
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(10);
/// A frame's body that stops arriving for this long is given up (within the frame read
/// timeout): its budget goes to senders that are sending.
const FRAME_STALL: Duration = Duration::from_secs(5);
/// After the grace period, a frame's body must average at least this rate. Far below any
/// network a Kafka client runs on (a 1 MB produce over a 1 Mbit/s link still passes);
/// what it catches is a sender that trickles to hold budget.
const MIN_FRAME_BYTES_PER_SEC: u64 = 64 * 1024;
const FRAME_RATE_GRACE: Duration = Duration::from_secs(5);

/// What every connection shares: the request budget and the rules for frames.
struct Shared {
    budget: RequestBudget,
    limits: ListenerConfig,
}

/// A bound listener socket and what it serves.
pub struct Endpoint {
    pub socket: TcpListener,
    pub listener: Arc<Listener>,
}

/// Serves Kafka clients on every endpoint until `shutdown`; the SSL and SASL_SSL ones
/// over TLS, with `tls` (which the configuration guarantees exists for them).
pub async fn serve(
    broker: Arc<Broker>,
    endpoints: Vec<Endpoint>,
    listener_limits: ListenerConfig,
    tls: Option<Arc<TlsAcceptor>>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = ConnectionLimits::new(
        listener_limits.max_connections,
        listener_limits.max_connections_per_ip,
        broker.counters().connections.clone(),
    );
    let shared = Arc::new(Shared {
        budget: RequestBudget::new(
            listener_limits.max_inflight_request_bytes,
            listener_limits.max_request_bytes,
            broker.counters().connections.clone(),
        ),
        limits: listener_limits,
    });
    let loops = endpoints.into_iter().map(|endpoint| {
        let tls = tls.clone().filter(|_| endpoint.listener.protocol.tls());
        accept_loop(
            broker.clone(),
            endpoint,
            tls,
            limits.clone(),
            shared.clone(),
        )
    });
    tokio::select! {
        _ = futures::future::join_all(loops) => {}
        _ = shutdown => info!("no longer accepting connections"),
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    endpoint: Endpoint,
    tls: Option<Arc<TlsAcceptor>>,
    limits: Arc<ConnectionLimits>,
    shared: Arc<Shared>,
) {
    let mut refusals = Throttle::new(REFUSAL_WARNING_EVERY);
    let listener = endpoint.listener;
    loop {
        match endpoint.socket.accept().await {
            Ok((stream, peer)) => {
                let slot = match limits.try_open(peer.ip()) {
                    Ok(slot) => slot,
                    Err(refused) => {
                        // Accepted, then closed at once, as Kafka does.
                        drop(stream);
                        let now = std::time::Instant::now();
                        if let Some(refused_since_last) = refusals.note(now) {
                            let open = limits.open();
                            warn!(%peer, reason = %refused, refused_since_last, open, "connection refused");
                        }
                        continue;
                    }
                };
                let broker = broker.clone();
                let shared = shared.clone();
                let tls = tls.clone();
                let listener = listener.clone();
                let span = tracing::debug_span!("connection", %peer, listener = %listener.name);
                tokio::spawn(
                    async move {
                        let _slot = slot;
                        debug!("connection opened");
                        if let Err(e) = open(broker, shared, tls, listener, stream, peer).await {
                            debug!(error = %e, "connection closed");
                        }
                    }
                    .instrument(span),
                );
            }
            Err(e) => warn!(error = %e, "accept failed"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame size {0} is out of range")]
    FrameSize(i64),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("request handler failed")]
    Handler,
    #[error("frame of {size} bytes did not arrive within {timeout:?} ({received} received)")]
    FrameTimeout {
        size: usize,
        received: usize,
        timeout: Duration,
    },
    #[error("frame of {size} bytes not admitted within {timeout:?} (the request budget is held)")]
    BudgetTimeout { size: usize, timeout: Duration },
    #[error("frame of {size} bytes arriving too slowly: {received} received in {elapsed:?}")]
    FrameTooSlow {
        size: usize,
        received: usize,
        elapsed: Duration,
    },
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("request budget closed")]
    Budget,
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("closed: {0}")]
    Sasl(&'static str),
}

/// What a connection knows about its client, for authorization.
struct Session {
    /// The principal before SASL (a client certificate's subject, or ANONYMOUS).
    principal: Principal,
    listener: Arc<Listener>,
    peer: std::net::SocketAddr,
    /// On SASL listeners: the authentication, which names the principal instead.
    sasl: Option<SaslSession>,
}

impl Session {
    fn context(&self) -> Arc<RequestContext> {
        let principal = self
            .sasl
            .as_ref()
            .and_then(SaslSession::principal)
            .unwrap_or_else(|| self.principal.to_string());
        Arc::new(RequestContext {
            principal,
            host: self.peer.ip().to_string(),
            listener: self.listener.clone(),
        })
    }
}

/// Runs a new connection: the TLS handshake first if the listener has TLS.
async fn open(
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    tls: Option<Arc<TlsAcceptor>>,
    listener: Arc<Listener>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let sasl = listener
        .protocol
        .sasl()
        .then(|| SaslSession::new(broker.clone()));
    let Some(tls) = tls else {
        let session = Session {
            principal: Principal::anonymous(),
            listener,
            peer,
            sasl,
        };
        return connection(broker, shared, session, stream).await;
    };
    // Bounded like a frame: a client that connects and never finishes the handshake
    // must not hold a connection slot.
    let timeout = shared.limits.frame_read_timeout;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ConnectionError::Handshake(e)),
        Err(_) => return Err(ConnectionError::HandshakeTimeout(timeout)),
    };
    let session = Session {
        principal: Principal::from_peer(stream.get_ref().1.peer_certificates()),
        listener,
        peer,
        sasl,
    };
    connection(broker, shared, session, stream).await
}

/// A response the writer waits for, in request order.
type Answer = BoxFuture<'static, Result<Option<Bytes>, ConnectionError>>;

/// What the idle check needs from both halves of a connection.
struct Activity {
    opened: Instant,
    /// Answers handed to the writer and not yet written (or found empty).
    owed: AtomicUsize,
    /// When the writer last finished an answer, in ms since `opened`.
    last_write_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            owed: AtomicUsize::new(0),
            last_write_ms: AtomicU64::new(0),
        }
    }

    fn wrote(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_write_ms.store(ms, Ordering::Relaxed);
        self.owed.fetch_sub(1, Ordering::Relaxed);
    }

    fn last_write(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed))
    }
}

/// The request loop, the same over a plaintext or a TLS stream.
async fn connection<S>(
    broker: Arc<Broker>,
    shared: Arc<Shared>,
    mut session: Session,
    stream: S,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    debug!(principal = %session.principal, "session");
    let mut ctx = session.context();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Answer>(MAX_INFLIGHT_PER_CONNECTION);
    let max_frame = shared.limits.max_request_bytes;
    let frame_timeout = shared.limits.frame_read_timeout;
    let idle = shared.limits.connections_max_idle;
    let activity = Arc::new(Activity::new());
    let written = activity.clone();
    let share = shared.budget.connection_share();

    let read_loop = async move {
        loop {
            let Some(size) = read_size(&mut reader, idle, &activity).await? else {
                return Ok::<(), ConnectionError>(());
            };
            let size = usize::try_from(size)
                .ok()
                .filter(|s| *s <= max_frame)
                .ok_or(ConnectionError::FrameSize(i64::from(size)))?;
            // Charged before a byte of the body is read or allocated; waiting here
            // leaves the body in the socket, so the client is held back by TCP. The
            // wait is bounded like the read: a frame waiting longer than a client waits
            // for its answer is given up (and a sender that only meant to hold a place
            // in the queue goes with it).
            let charge = match shared.budget.try_charge(&share, size) {
                Some(charge) => charge,
                None => {
                    debug!(
                        size,
                        available_kib = shared.budget.available_kib(),
                        "waiting for request budget"
                    );
                    let wait = shared.budget.charge(&share, size);
                    match tokio::time::timeout(frame_timeout, wait).await {
                        Ok(charge) => charge.map_err(|_| ConnectionError::Budget)?,
                        Err(_) => {
                            return Err(ConnectionError::BudgetTimeout {
                                size,
                                timeout: frame_timeout,
                            })
                        }
                    }
                }
            };
            let frame = read_frame(&mut reader, size, frame_timeout).await?;
            if let Some(sasl) = session.sasl.as_mut() {
                match sasl_step(sasl, &frame, &tx, &activity).await {
                    SaslStep::Pass => {}
                    SaslStep::Answered => {
                        drop(charge);
                        ctx = session.context();
                        continue;
                    }
                    SaslStep::Stop => return Ok(()),
                }
            }
            activity.owed.fetch_add(1, Ordering::Relaxed);
            let answer: Answer = match start_request(broker.clone(), ctx.clone(), frame).await {
                // Already in the write buffer: only the wait for its commit runs on. Its
                // batches are slices of the frame, which lives until the buffer is done
                // with them, so the frame stays charged until the answer.
                Ok(Started::Produce(waiting)) => {
                    let waiting = tokio::spawn(
                        async move {
                            let answer = waiting.await;
                            drop(charge);
                            answer
                        }
                        .in_current_span(),
                    );
                    async move { joined(waiting.await) }.boxed()
                }
                // Handled to completion before the next request is read. Its own task,
                // so that it runs alongside the writer (the binary's panic hook ends
                // the process on a panic, so none goes unnoticed); the charge goes with it, as the task outlives a closed connection.
                Ok(Started::Other(handler)) => {
                    let handler = async move {
                        let answer = handler.await;
                        drop(charge);
                        answer
                    };
                    let result = joined(tokio::spawn(handler.in_current_span()).await);
                    let failed = result.is_err();
                    if tx
                        .send(futures::future::ready(result).boxed())
                        .await
                        .is_err()
                        || failed
                    {
                        // The writer answers what came before, then stops at the error.
                        return Ok(());
                    }
                    continue;
                }
                // Answer what came before, then close: the writer stops at this error.
                Err(e) => {
                    let _ = tx.send(futures::future::ready(Err(e.into())).boxed()).await;
                    return Ok(());
                }
            };
            if tx.send(answer).await.is_err() {
                return Ok(());
            }
        }
    };
    let write_loop = async move {
        while let Some(answer) = rx.recv().await {
            if let Some(response) = answer.await? {
                writer.write_all(&response).await?;
                // TLS may hold the last record back until flushed (no-op for TCP).
                writer.flush().await?;
            }
            written.wrote();
        }
        Ok(())
    };
    tokio::pin!(read_loop);
    tokio::pin!(write_loop);
    // A protocol error on either side ends the connection; dropping both halves closes it.
    // A clean end of input still lets the responses already owed be written.
    tokio::select! {
        r = &mut read_loop => {
            r?;
            write_loop.await
        }
        w = &mut write_loop => w,
    }
}

/// What the SASL exchange made of a frame.
enum SaslStep {
    /// Not part of the exchange: handle it as a request.
    Pass,
    /// Answered by the exchange; the session's principal may have changed.
    Answered,
    /// The connection ends (after what is owed is written).
    Stop,
}

/// Lets the SASL exchange look at a frame first (`sasl.rs`), and queues its answer.
async fn sasl_step(
    sasl: &mut SaslSession,
    frame: &Bytes,
    tx: &mpsc::Sender<Answer>,
    activity: &Activity,
) -> SaslStep {
    let intercepted = match sasl.intercept(frame) {
        Ok(intercepted) => intercepted,
        Err(e) => {
            let _ = tx.send(futures::future::ready(Err(e.into())).boxed()).await;
            return SaslStep::Stop;
        }
    };
    match intercepted {
        Intercept::Pass => SaslStep::Pass,
        Intercept::Close(reason) => {
            let failed = Err(ConnectionError::Sasl(reason));
            let _ = tx.send(futures::future::ready(failed).boxed()).await;
            SaslStep::Stop
        }
        Intercept::Answer { response, close } => {
            activity.owed.fetch_add(1, Ordering::Relaxed);
            let answered = tx
                .send(futures::future::ready(Ok(Some(response))).boxed())
                .await;
            if close {
                // Kafka closes after a failed authentication: the answer goes out
                // first, then the writer stops at this error.
                let failed = Err(ConnectionError::Sasl("SASL authentication failed"));
                let _ = tx.send(futures::future::ready(failed).boxed()).await;
                return SaslStep::Stop;
            }
            if answered.is_err() {
                return SaslStep::Stop;
            }
            SaslStep::Answered
        }
    }
}

/// The next frame's size prefix; None at a clean end of input (also one inside the
/// prefix, as before). Closes an idle connection: nothing owed to the client, and
/// neither a byte received nor an answer written for `idle`.
async fn read_size(
    reader: &mut (impl AsyncRead + Unpin),
    idle: Duration,
    activity: &Activity,
) -> Result<Option<i32>, ConnectionError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    let mut deadline = Instant::now() + idle;
    while filled < prefix.len() {
        tokio::select! {
            // `read` is cancel-safe: a byte is either in `prefix` or still in the socket.
            n = reader.read(&mut prefix[filled..]) => {
                let n = n?;
                if n == 0 {
                    return Ok(None);
                }
                filled += n;
                deadline = Instant::now() + idle;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if activity.owed.load(Ordering::Relaxed) > 0 {
                    // A produce waiting for its commit, or an answer being written.
                    deadline = now + idle;
                } else if activity.last_write() + idle > now {
                    deadline = activity.last_write() + idle;
                } else {
                    return Err(ConnectionError::Idle(idle));
                }
            }
        }
    }
    Ok(Some(i32::from_be_bytes(prefix)))
}

/// Reads a frame body of `size` (already charged to the budget, so allocating it whole
/// is bounded over all connections; the pages fill as bytes arrive). It must arrive
/// within `timeout`.
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    size: usize,
    timeout: Duration,
) -> Result<Bytes, ConnectionError> {
    let mut frame = BytesMut::with_capacity(size);
    let started = Instant::now();
    let deadline = started + timeout;
    while frame.len() < size {
        // The body must keep coming: a sender that stalls, or trickles far below any
        // network's pace, holds budget others are waiting for.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        if elapsed > FRAME_RATE_GRACE
            && (frame.len() as u64) < MIN_FRAME_BYTES_PER_SEC * elapsed.as_secs().max(1)
        {
            return Err(ConnectionError::FrameTooSlow {
                size,
                received: frame.len(),
                elapsed,
            });
        }
        let wait = FRAME_STALL.min(deadline.saturating_duration_since(now));
        let rest = (size - frame.len()) as u64;
        let mut body = (&mut *reader).take(rest);
        let read = tokio::time::timeout(wait, body.read_buf(&mut frame)).await;
        match read {
            Ok(Ok(0)) => {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) if Instant::now() >= deadline => {
                return Err(ConnectionError::FrameTimeout {
                    size,
                    received: frame.len(),
                    timeout,
                })
            }
            Err(_) => {
                return Err(ConnectionError::FrameTooSlow {
                    size,
                    received: frame.len(),
                    elapsed: Instant::now().saturating_duration_since(started),
                })
            }
        }
    }
    Ok(frame.freeze())
}

/// A handler task's outcome as the writer sees it.
fn joined(
    result: Result<Result<Option<Bytes>, ProtocolError>, tokio::task::JoinError>,
) -> Result<Option<Bytes>, ConnectionError> {
    match result {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(ConnectionError::Protocol(e)),
        Err(_) => Err(ConnectionError::Handler),
    }
}
