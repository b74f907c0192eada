//! The Kafka protocol front end: request frames in, response frames out, one handler
//! file per API family.

mod acls;
mod api_versions;
pub mod authz;
pub mod bounds;
mod cluster;
pub(crate) mod configs;
mod consumer_groups;
mod dispatch;
mod elect_leaders;
mod fetch;
mod group_gate;
mod groups;
mod list_offsets;
mod log_dirs;
mod metadata;
mod offsets;
mod partitions;
mod produce;
mod producer_id;
mod producers;
mod quotas;
mod reassignments;
mod records;
mod scram;
mod topic_partitions;
mod topics;
mod transactions;
pub mod versions;

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tracing::Instrument;

pub use self::authz::RequestContext;
use crate::broker::Broker;
use crate::telemetry;

/// Errors after which the connection is closed, as Kafka does for requests it can't parse.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("request frame shorter than a request header")]
    Truncated,
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("API {key:?} version {version} is not supported")]
    UnsupportedVersion { key: ApiKey, version: i16 },
    #[error("cannot decode {key:?} v{version}: {message}")]
    Decode {
        key: ApiKey,
        version: i16,
        message: String,
    },
    #[error("refused {key:?} v{version} before decoding: {source}")]
    Bounds {
        key: ApiKey,
        version: i16,
        source: bounds::BoundsError,
    },
    #[error("cannot encode response to {key:?} v{version}: {message}")]
    Encode {
        key: ApiKey,
        version: i16,
        message: String,
    },
    /// InitProducerId on a fenced broker: the connection is closed unanswered. librdkafka
    /// sends its retries to the broker it used last, so an error answer would bring it
    /// straight back; a closed connection makes it pick another broker.
    #[error("fenced: closing the connection instead of answering {0:?}")]
    Fenced(ApiKey),
}

/// A request's response frame (with its size prefix), or None when the request wants no
/// answer (acks=0).
pub type ResponseFuture = BoxFuture<'static, Result<Option<Bytes>, ProtocolError>>;

/// A request once decoded, as the connection must run it.
pub enum Started {
    /// A produce already in the write buffer (which orders its effect): what is left is
    /// the wait for its commit, which may run concurrently with the requests behind it.
    Produce(ResponseFuture),
    /// Any other request: the whole handler, to run to completion before the next
    /// request of the connection is handled.
    Other(ResponseFuture),
}

/// Starts one request frame (without its size prefix): decodes it and, for a produce,
/// enters its batches into the write buffer, so that this part happens in request order.
pub async fn start_request(
    broker: Arc<Broker>,
    ctx: Arc<RequestContext>,
    frame: Bytes,
) -> Result<Started, ProtocolError> {
    let started = std::time::Instant::now();
    let result = decode_and_start(broker, ctx, frame, started).await;
    if let Err(e) = &result {
        if let Some(key) = e.api_key() {
            telemetry::record_refused(telemetry::api_name(key));
        }
    }
    result
}

impl ProtocolError {
    /// The API of the request that failed, when it got that far.
    fn api_key(&self) -> Option<ApiKey> {
        match self {
            Self::Truncated | Self::UnknownApiKey(_) => None,
            Self::UnsupportedVersion { key, .. }
            | Self::Decode { key, .. }
            | Self::Bounds { key, .. }
            | Self::Encode { key, .. }
            | Self::Fenced(key) => Some(*key),
        }
    }
}

/// The one topic (and partition) a produce or fetch is about, for its span; None when
/// it names several.
fn single_target(request: &RequestKind) -> (Option<String>, Option<i32>) {
    let one = |topics: Vec<(&str, Vec<i32>)>| match topics.as_slice() {
        [(topic, partitions)] => (
            Some((*topic).to_owned()),
            match partitions.as_slice() {
                [p] => Some(*p),
                _ => None,
            },
        ),
        _ => (None, None),
    };
    match request {
        RequestKind::Produce(r) => one(r
            .topic_data
            .iter()
            .map(|t| {
                let partitions = t.partition_data.iter().map(|p| p.index).collect();
                (t.name.as_str(), partitions)
            })
            .collect()),
        RequestKind::Fetch(r) => one(r
            .topics
            .iter()
            .map(|t| {
                let partitions = t.partitions.iter().map(|p| p.partition).collect();
                (t.topic.as_str(), partitions)
            })
            .collect()),
        _ => (None, None),
    }
}

/// The API key, version and correlation id at the start of a frame.
pub(crate) fn peek(frame: &[u8]) -> Result<(ApiKey, i16, i32), ProtocolError> {
    let Some(head) = frame.get(..8) else {
        return Err(ProtocolError::Truncated);
    };
    let raw_key = i16::from_be_bytes([head[0], head[1]]);
    let version = i16::from_be_bytes([head[2], head[3]]);
    let correlation_id = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| ProtocolError::UnknownApiKey(raw_key))?;
    Ok((key, version, correlation_id))
}

/// A request frame, decoded.
pub(crate) struct Decoded {
    pub key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub request: RequestKind,
}

/// Decodes a whole request frame of a served API and version, bounded (`bounds.rs`).
pub(crate) fn decode(mut frame: Bytes) -> Result<Decoded, ProtocolError> {
    let (key, version, _) = peek(&frame)?;
    let Some((min, max)) = versions::range(key) else {
        return Err(ProtocolError::UnknownApiKey(key as i16));
    };
    if version < min || version > max {
        return Err(ProtocolError::UnsupportedVersion { key, version });
    }
    let decode_err = |e: anyhow::Error| ProtocolError::Decode {
        key,
        version,
        message: e.to_string(),
    };
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(decode_err)?;
    // The crate sizes arrays from the wire before reading them: walk the body first so
    // that nothing it decodes can allocate more than the frame justifies.
    bounds::check(key, version, &frame).map_err(|source| ProtocolError::Bounds {
        key,
        version,
        source,
    })?;
    let request = RequestKind::decode(key, &mut frame, version).map_err(decode_err)?;
    Ok(Decoded {
        key,
        version,
        header,
        request,
    })
}

async fn decode_and_start(
    broker: Arc<Broker>,
    ctx: Arc<RequestContext>,
    frame: Bytes,
    started: std::time::Instant,
) -> Result<Started, ProtocolError> {
    let (key, version, correlation_id) = peek(&frame)?;
    if key == ApiKey::ApiVersions
        && versions::range(key).is_some_and(|(min, max)| version < min || version > max)
    {
        // KIP-511: answer in v0 so any client can read which versions we speak.
        let response = api_versions::unsupported_version(correlation_id);
        return Ok(Started::Other(Box::pin(async move { Ok(Some(response)) })));
    }
    let Decoded {
        header, request, ..
    } = decode(frame)?;
    let client_id = header
        .client_id
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    let span = tracing::debug_span!(
        "request",
        api = ?key,
        version,
        correlation_id,
        %client_id,
        topic = tracing::field::Empty,
        partition = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let (topic, partition) = single_target(&request);
        if let Some(topic) = topic {
            span.record("topic", topic.as_str());
        }
        if let Some(partition) = partition {
            span.record("partition", partition);
        }
    }
    let api = telemetry::api_name(key);
    let respond = move |response: Option<ResponseKind>| {
        telemetry::record_request(api, started.elapsed(), response.as_ref());
        match response {
            Some(response) => encode_response(key, version, correlation_id, &response)
                .inspect_err(|_| telemetry::record_protocol_error(api))
                .map(Some),
            None => Ok(None),
        }
    };
    if let RequestKind::Produce(req) = request {
        let pending = produce::enqueue(&broker, &ctx, req, version)
            .instrument(span.clone())
            .await;
        return Ok(Started::Produce(Box::pin(
            async move { respond(pending.finish().await.map(ResponseKind::Produce)) }
                .instrument(span),
        )));
    }
    Ok(Started::Other(Box::pin(
        async move {
            let response = dispatch::dispatch(&broker, &ctx, request, version, &client_id)
                .await
                .inspect_err(|_| telemetry::record_refused(api))?;
            respond(response)
        }
        .instrument(span),
    )))
}

pub(crate) fn encode_response(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &ResponseKind,
) -> Result<Bytes, ProtocolError> {
    let encode_err = |e: anyhow::Error| ProtocolError::Encode {
        key,
        version,
        message: e.to_string(),
    };
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // size, filled in below
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, key.response_header_version(version))
        .map_err(encode_err)?;
    response.encode(&mut buf, version).map_err(encode_err)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads the size prefix of a frame, if four bytes are there.
pub fn frame_size(buf: &[u8]) -> Option<i32> {
    (buf.len() >= 4).then(|| (&buf[..4]).get_i32())
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}
