//! SASL on a connection: SaslHandshake and SaslAuthenticate are answered here, in the
//! connection's request order, because they change who the connection is. Until a
//! SASL listener's client has authenticated, only ApiVersions may come before them, as
//! in Kafka; anything else closes the connection. KIP-368: with
//! `connections_max_reauth_ms` a session expires, the client re-authenticates on the
//! same connection (as the same principal), and a request after expiry closes it. An
//! OAUTHBEARER session also ends when its token expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::protocol::{self, str_bytes, ProtocolError};
use crate::security::oauth::JwtValidator;
use crate::security::sasl::{CredentialLookup, SaslExchange, SaslMechanism, SaslStep};
use crate::security::scram::{Mechanism, ScramCredential};
use crate::telemetry;

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

/// Credentials from the applied metadata state, OAUTHBEARER's current keys (only
/// looked up for an OAUTHBEARER exchange) and the wall clock.
struct StateCredentials<'a> {
    broker: &'a Broker,
    jwt: Option<Arc<JwtValidator>>,
}

impl CredentialLookup for StateCredentials<'_> {
    fn credential(&self, user: &str, mechanism: Mechanism) -> Option<ScramCredential> {
        self.broker
            .read(|s| s.access().credential(user, mechanism).cloned())
    }

    fn jwt(&self) -> Option<&JwtValidator> {
        self.jwt.as_deref()
    }

    fn now_s(&self) -> i64 {
        wall_clock_ms() / 1000
    }
}

fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long a session lasts: `reauth` (KIP-368) and, for a credential that expires
/// (an OAUTHBEARER token), no longer than it, as Kafka does. None: forever.
fn session_lifetime(
    reauth: Option<Duration>,
    credential_expires_at_s: Option<i64>,
    now_ms: i64,
) -> Option<Duration> {
    let credential = credential_expires_at_s.map(|exp| {
        let left_ms = exp.saturating_mul(1000).saturating_sub(now_ms);
        // At least 1 ms: a zero lifetime would tell the client "never expires".
        Duration::from_millis(u64::try_from(left_ms).unwrap_or(0).max(1))
    });
    match (reauth, credential) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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
        let enabled = &self.broker.security().sasl_mechanisms;
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
        let credentials = StateCredentials {
            broker: &self.broker,
            jwt: match mechanism {
                SaslMechanism::OauthBearer => {
                    self.broker.security().oauth.as_ref().map(|f| f.current())
                }
                _ => None,
            },
        };
        let step = exchange.step(token, &credentials);
        let credential_expires_at_s = exchange.credential_expires_at_s();
        match step {
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
                    telemetry::record_sasl(mechanism.name(), "failed");
                    return failed("Cannot change principals during re-authentication".into());
                }
                let reauth = session_lifetime(
                    self.broker.security().reauth,
                    credential_expires_at_s,
                    wall_clock_ms(),
                );
                if self.user.is_none() {
                    info!(user, mechanism = mechanism.name(), "SASL authenticated");
                    telemetry::record_sasl(mechanism.name(), "ok");
                } else {
                    debug!(user, mechanism = mechanism.name(), "SASL re-authenticated");
                    telemetry::record_sasl(mechanism.name(), "reauthenticated");
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
                telemetry::record_sasl(mechanism.name(), "failed");
                failed(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_does_not_outlive_its_token() {
        let min = Duration::from_secs(60);
        assert_eq!(session_lifetime(None, None, 5_000), None);
        assert_eq!(session_lifetime(Some(min), None, 5_000), Some(min));
        assert_eq!(
            session_lifetime(None, Some(20), 5_000),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            session_lifetime(Some(min), Some(20), 5_000),
            Some(Duration::from_secs(15))
        );
        assert_eq!(session_lifetime(Some(min), Some(1_000), 5_000), Some(min));
        // A token within the clock skew of its expiry: the shortest session.
        assert_eq!(
            session_lifetime(None, Some(1), 5_000),
            Some(Duration::from_millis(1))
        );
    }
}
