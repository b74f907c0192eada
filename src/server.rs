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

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::protocol::{start_request, ProtocolError, Started};

/// Responses a connection may owe (produces waiting for their commit, answers not yet
/// written); past this, reading pauses (backpressure).
const MAX_INFLIGHT_PER_CONNECTION: usize = 64;

pub async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let broker = broker.clone();
                    tokio::spawn(async move {
                        debug!(%peer, "connection opened");
                        if let Err(e) = connection(broker, stream).await {
                            debug!(%peer, error = %e, "connection closed");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "accept failed"),
            },
            _ = &mut shutdown => {
                info!("no longer accepting connections");
                return;
            }
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
}

/// A response the writer waits for, in request order.
type Answer = BoxFuture<'static, Result<Option<Bytes>, ConnectionError>>;

async fn connection(broker: Arc<Broker>, stream: TcpStream) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Answer>(MAX_INFLIGHT_PER_CONNECTION);
    let max_frame = broker.config.max_request_bytes;

    let read_loop = async move {
        loop {
            let size = match reader.read_i32().await {
                Ok(size) => size,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(ConnectionError::Io(e)),
            };
            let size = usize::try_from(size)
                .ok()
                .filter(|s| *s <= max_frame)
                .ok_or(ConnectionError::FrameSize(i64::from(size)))?;
            let mut frame = BytesMut::zeroed(size);
            reader.read_exact(&mut frame).await?;
            let answer: Answer = match start_request(broker.clone(), frame.freeze()).await {
                // Already in the write buffer: only the wait for its commit runs on.
                Ok(Started::Produce(waiting)) => {
                    let waiting = tokio::spawn(waiting);
                    async move { joined(waiting.await) }.boxed()
                }
                // Handled to completion before the next request is read. Its own task,
                // so that it runs alongside the writer (and a panic is only an error).
                Ok(Started::Other(handler)) => {
                    let result = joined(tokio::spawn(handler).await);
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
            }
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
