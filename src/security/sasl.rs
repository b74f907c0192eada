//! The server side of a SASL exchange: which mechanisms exist, and one exchange's state.

use crate::security::scram::{Mechanism, ScramCredential};

/// The SASL mechanisms Strata serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub const ALL: [SaslMechanism; 3] = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ];

    /// The IANA name, as SaslHandshake carries it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Looks up a user's stored credential for a SCRAM mechanism.
pub trait CredentialLookup {
    fn credential(&self, user: &str, mechanism: Mechanism) -> Option<ScramCredential>;
}

/// What one client token leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this challenge and wait for the client's next token.
    Challenge(Vec<u8>),
    /// Authenticated as `user` (the principal is `User:<user>`); send `token` (empty for
    /// PLAIN, server-final-message for SCRAM).
    Done { user: String, token: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Wrong user or password: Kafka's SASL_AUTHENTICATION_FAILED (58) with this message.
    #[error("{0}")]
    Failed(String),
    /// A token out of sequence or malformed: also SASL_AUTHENTICATION_FAILED.
    #[error("{0}")]
    Malformed(String),
}

/// One authentication exchange on one connection.
#[derive(Debug)]
pub struct SaslExchange {
    mechanism: SaslMechanism,
}

impl SaslExchange {
    pub fn new(mechanism: SaslMechanism) -> Self {
        Self { mechanism }
    }

    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }

    /// Feeds the client's next token. Stub: PLAIN only, checking the password against
    /// the stored SHA-256 credential's stub form.
    pub fn step(
        &mut self,
        token: &[u8],
        credentials: &dyn CredentialLookup,
    ) -> Result<SaslStep, SaslError> {
        let failed =
            || SaslError::Failed("Authentication failed: Invalid username or password".into());
        let mut parts = token.split(|b| *b == 0);
        let (Some(_authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslError::Malformed("Invalid SASL/PLAIN response".into()));
        };
        let user = std::str::from_utf8(user).map_err(|_| failed())?;
        let password = std::str::from_utf8(password).map_err(|_| failed())?;
        let cred = credentials
            .credential(user, Mechanism::Sha256)
            .ok_or_else(failed)?;
        let expected = ScramCredential::from_salted_password(
            Mechanism::Sha256,
            password.as_bytes(),
            &cred.salt,
            cred.iterations,
        );
        if expected.stored_key != cred.stored_key {
            return Err(failed());
        }
        Ok(SaslStep::Done {
            user: user.to_owned(),
            token: Vec::new(),
        })
    }
}
