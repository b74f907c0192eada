//! SASL on a connection: SaslHandshake and SaslAuthenticate are answered here, in the
//! connection's request order, because they change who the connection is. Until a
//! SASL listener's client has authenticated, only ApiVersions may come before them, as
//! in Kafka; anything else closes the connection. KIP-368: with
//! `connections_max_reauth_ms` a session expires, the client re-authenticates on the
//! same connection (as the same principal), and a request after expiry closes it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::protocol::{self, str_bytes, ProtocolError};
use crate::security::sasl::{CredentialLookup, SaslExchange, SaslMechanism, SaslStep};
use crate::security::scram::{Mechanism, ScramCredential};

/// What the connection does with a frame.
pub enum Intercept {
    /// Not SASL's business: the usual request path.
    Pass,
    /// Answered here; close the connection after writing it when `close`.
    Answer { response: Bytes, close: bool },
    /// Close without an answer (a request before authentication, or after expiry).
    Close(&'static str),
}

enum State {
    /// Waiting for SaslHandshake.
    Start,
    /// Handshake done: waiting for SaslAuthenticate tokens, or (after a v0 handshake)
    /// raw tokens, each a size-prefixed frame of its own.
    Exchanging { exchange: SaslExchange, raw: bool },
    /// Authenticated as `user`.
    Done,
}

pub struct SaslSession {
    broker: Arc<Broker>,
    state: State,
    /// The authenticated user, kept through a re-authentication.
    user: Option<String>,
    /// When the session ends (KIP-368); None: never.
    expires: Option<Instant>,
}

/// Credentials from the applied metadata state.
struct StateCredentials<'a>(&'a Broker);

impl CredentialLookup for StateCredentials<'_> {
    fn credential(&self, user: &str, mechanism: Mechanism) -> Option<ScramCredential> {
        self.0
            .metadata
            .read(|s| s.access().credential(user, mechanism).cloned())
    }
}

impl SaslSession {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            state: State::Start,
            user: None,
            expires: None,
        }
    }

    /// The authenticated principal, once there is one.
    pub fn principal(&self) -> Option<String> {
        self.user.as_ref().map(|u| format!("User:{u}"))
    }

    pub fn intercept(&mut self, frame: &Bytes) -> Result<Intercept, ProtocolError> {
        if matches!(self.state, State::Exchanging { raw: true, .. }) {
            return Ok(self.raw_token(frame));
        }
        let (key, _, _) = protocol::peek(frame)?;
        match key {
            ApiKey::SaslHandshake | ApiKey::SaslAuthenticate => self.answer(frame.clone()),
            ApiKey::ApiVersions => Ok(Intercept::Pass),
            _ if self.user.is_none() => Ok(Intercept::Close(
                "a request other than ApiVersions before SASL authentication",
            )),
            _ if self.expires.is_some_and(|at| Instant::now() >= at) => {
                Ok(Intercept::Close("the SASL session expired (KIP-368)"))
            }
            _ => Ok(Intercept::Pass),
        }
    }

    fn answer(&mut self, frame: Bytes) -> Result<Intercept, ProtocolError> {
        let decoded = protocol::decode(frame)?;
        let (key, version) = (decoded.key, decoded.version);
        let correlation_id = decoded.header.correlation_id;
        let (response, close) = match decoded.request {
            RequestKind::SaslHandshake(req) => {
                let (response, close) = self.handshake(req.mechanism.as_str(), version == 0);
                (ResponseKind::SaslHandshake(response), close)
            }
            RequestKind::SaslAuthenticate(req) => {
                let (response, close) = self.authenticate(&req.auth_bytes, version);
                (ResponseKind::SaslAuthenticate(response), close)
            }
            _ => return Ok(Intercept::Pass),
        };
        let response = protocol::encode_response(key, version, correlation_id, &response)?;
        Ok(Intercept::Answer { response, close })
    }

    /// A token after a v0 handshake: the frame is the token, the answer the next one
    /// (size-prefixed, empty after PLAIN, as Kafka sends it).
    fn raw_token(&mut self, token: &[u8]) -> Intercept {
        let (response, close) = self.authenticate(token, 0);
        if close {
            return Intercept::Close("SASL authentication failed");
        }
        let mut framed = bytes::BytesMut::with_capacity(4 + response.auth_bytes.len());
        framed.extend_from_slice(&(response.auth_bytes.len() as i32).to_be_bytes());
        framed.extend_from_slice(&response.auth_bytes);
        Intercept::Answer {
            response: framed.freeze(),
            close: false,
        }
    }

    fn handshake(&mut self, mechanism: &str, raw: bool) -> (SaslHandshakeResponse, bool) {
        let enabled = &self.broker.config.security.sasl_mechanisms;
        let names = enabled.iter().map(|m| str_bytes(m.name())).collect();
        let response = SaslHandshakeResponse::default().with_mechanisms(names);
        if matches!(self.state, State::Exchanging { .. }) {
            return (
                response.with_error_code(ResponseError::IllegalSaslState.code()),
                true,
            );
        }
        match SaslMechanism::parse(mechanism).filter(|m| enabled.contains(m)) {
            Some(m) => {
                self.state = State::Exchanging {
                    exchange: SaslExchange::new(m),
                    raw,
                };
                (response, false)
            }
            None => {
                debug!(mechanism, "SASL mechanism not enabled");
                (
                    response.with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
                    true,
                )
            }
        }
    }

    fn authenticate(&mut self, token: &[u8], version: i16) -> (SaslAuthenticateResponse, bool) {
        let failed = |message: String| {
            (
                SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                    .with_error_message(Some(str_bytes(&message))),
                true,
            )
        };
        let State::Exchanging { exchange, .. } = &mut self.state else {
            return (
                SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(str_bytes("SaslAuthenticate before SaslHandshake"))),
                true,
            );
        };
        let mechanism = exchange.mechanism();
        match exchange.step(token, &StateCredentials(&self.broker)) {
            Ok(SaslStep::Challenge(challenge)) => (
                SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(challenge)),
                false,
            ),
            Ok(SaslStep::Done { user, token }) => {
                if self.user.as_ref().is_some_and(|previous| *previous != user) {
                    warn!(
                        mechanism = mechanism.name(),
                        "re-authentication as another user refused"
                    );
                    return failed("Cannot change principals during re-authentication".into());
                }
                let reauth = self.broker.config.security.reauth;
                if self.user.is_none() {
                    info!(user, mechanism = mechanism.name(), "SASL authenticated");
                } else {
                    debug!(user, mechanism = mechanism.name(), "SASL re-authenticated");
                }
                self.user = Some(user);
                self.state = State::Done;
                self.expires = reauth.map(|d| Instant::now() + d);
                let lifetime = reauth.map_or(0, |d: Duration| {
                    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
                });
                let response = SaslAuthenticateResponse::default()
                    .with_auth_bytes(Bytes::from(token))
                    .with_session_lifetime_ms(if version >= 1 { lifetime } else { 0 });
                (response, false)
            }
            Err(e) => {
                info!(mechanism = mechanism.name(), error = %e, "SASL authentication failed");
                failed(e.to_string())
            }
        }
    }
}
