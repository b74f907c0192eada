//! The TCP listener and per-connection loop.
//!
//! A connection reads frames and starts each request at once, so a slow produce (waiting
//! for its flush) doesn't hold up the requests pipelined behind it; responses are still
//! written in request order, as Kafka clients require.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::protocol::{start_request, ProtocolError};

/// Requests a connection may have in flight; past this, reading pauses (backpressure).
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

async fn connection(broker: Arc<Broker>, stream: TcpStream) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<JoinHandle<Result<Option<Bytes>, ProtocolError>>>(
        MAX_INFLIGHT_PER_CONNECTION,
    );
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
            // Started in order (a produce enters the write buffer here), finished concurrently.
            let handler = match start_request(broker.clone(), frame.freeze()).await {
                Ok(response) => tokio::spawn(response),
                // Answer what came before, then close: the writer stops at this error.
                Err(e) => {
                    let _ = tx.send(tokio::spawn(async move { Err(e) })).await;
                    return Ok(());
                }
            };
            if tx.send(handler).await.is_err() {
                return Ok(());
            }
        }
    };
    let write_loop = async move {
        while let Some(handler) = rx.recv().await {
            match handler.await {
                Ok(Ok(Some(response))) => writer.write_all(&response).await?,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(ConnectionError::Protocol(e)),
                Err(_) => return Err(ConnectionError::Handler),
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
