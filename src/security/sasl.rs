//! The server side of a SASL exchange: which mechanisms exist, and one exchange's state.

use std::sync::OnceLock;

use crate::security::oauth::JwtValidator;
use crate::security::scram::{
    base64_decode, base64_encode, constant_time_eq, Mechanism, ScramCredential, MIN_ITERATIONS,
};

/// The SASL mechanisms Strata serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
    /// RFC 7628 with a JWT checked against a JWKS (`security::oauth`).
    OauthBearer,
}

impl SaslMechanism {
    pub const ALL: [SaslMechanism; 4] = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
        SaslMechanism::OauthBearer,
    ];

    /// The IANA name, as SaslHandshake carries it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Looks up a user's stored credential for a SCRAM mechanism, and what OAUTHBEARER
/// checks tokens with.
pub trait CredentialLookup {
    fn credential(&self, user: &str, mechanism: Mechanism) -> Option<ScramCredential>;

    /// The keys and settings OAUTHBEARER tokens are checked against; None refuses
    /// every token.
    fn jwt(&self) -> Option<&JwtValidator> {
        None
    }

    /// The time tokens are checked at, in seconds since the epoch. The default is the
    /// end of time, so a lookup that forgets it accepts no token.
    fn now_s(&self) -> i64 {
        i64::MAX
    }
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

/// The longest client token accepted: SCRAM and PLAIN messages are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The longest username accepted (after SCRAM's `=2C`/`=3D` unescaping).
pub const MAX_USERNAME_BYTES: usize = 1024;

const PLAIN_FAILED: &str = "Authentication failed: Invalid username or password";

fn scram_failed(mechanism: Mechanism) -> SaslError {
    SaslError::Failed(format!(
        "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
        mechanism.name()
    ))
}

fn malformed(message: &str) -> SaslError {
    SaslError::Malformed(message.to_owned())
}

/// Where an exchange is.
enum Stage {
    /// PLAIN: waiting for the single `authzid NUL user NUL password` token.
    Plain,
    /// SCRAM: waiting for client-first-message.
    ScramFirst { server_nonce: Option<String> },
    /// OAUTHBEARER: waiting for the client initial response.
    OauthBearer,
    /// SCRAM: server-first-message sent, waiting for client-final-message.
    ScramFinal(Box<ScramPending>),
    /// Authenticated or failed: any further token is out of sequence.
    Finished,
}

struct ScramPending {
    user: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    credential: ScramCredential,
    /// False when `credential` is the stand-in for a user that does not exist.
    known: bool,
}

/// One authentication exchange on one connection.
pub struct SaslExchange {
    mechanism: SaslMechanism,
    stage: Stage,
    /// When the credential stops being valid (OAUTHBEARER: the token's `exp`).
    credential_expires_at_s: Option<i64>,
}

// By hand: the derived form would print stored keys and nonces into logs.
impl std::fmt::Debug for SaslExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match self.stage {
            Stage::Plain => "plain",
            Stage::OauthBearer => "oauthbearer",
            Stage::ScramFirst { .. } => "scram-first",
            Stage::ScramFinal(_) => "scram-final",
            Stage::Finished => "finished",
        };
        f.debug_struct("SaslExchange")
            .field("mechanism", &self.mechanism)
            .field("stage", &stage)
            .finish()
    }
}

impl SaslExchange {
    pub fn new(mechanism: SaslMechanism) -> Self {
        let stage = match mechanism {
            SaslMechanism::Plain => Stage::Plain,
            SaslMechanism::OauthBearer => Stage::OauthBearer,
            _ => Stage::ScramFirst { server_nonce: None },
        };
        Self {
            mechanism,
            stage,
            credential_expires_at_s: None,
        }
    }

    /// A SCRAM exchange with a fixed server nonce instead of a random one, to replay
    /// published test vectors. Never use it on a real connection.
    pub fn with_server_nonce(mechanism: SaslMechanism, server_nonce: &str) -> Self {
        let mut exchange = Self::new(mechanism);
        if let Stage::ScramFirst { server_nonce: n } = &mut exchange.stage {
            *n = Some(server_nonce.to_owned());
        }
        exchange
    }

    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }

    /// After `Done`: when the credential expires (seconds since the epoch), which the
    /// session must not outlive; None when it does not (PLAIN, SCRAM).
    pub fn credential_expires_at_s(&self) -> Option<i64> {
        self.credential_expires_at_s
    }

    /// Feeds the client's next token. After an error or `Done`, every further token
    /// is `Malformed`: a failed exchange cannot be resumed.
    pub fn step(
        &mut self,
        token: &[u8],
        credentials: &dyn CredentialLookup,
    ) -> Result<SaslStep, SaslError> {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("SASL token too large"));
        }
        let scram = match self.mechanism {
            SaslMechanism::ScramSha256 => Mechanism::Sha256,
            _ => Mechanism::Sha512,
        };
        match stage {
            Stage::Plain => plain(token, credentials),
            Stage::OauthBearer => {
                let (user, expires_at_s) = oauth_bearer(token, credentials)?;
                self.credential_expires_at_s = Some(expires_at_s);
                Ok(SaslStep::Done {
                    user,
                    token: Vec::new(),
                })
            }
            Stage::ScramFirst { server_nonce } => {
                let pending = scram_first(scram, token, server_nonce, credentials)?;
                let challenge = pending.server_first.clone().into_bytes();
                self.stage = Stage::ScramFinal(Box::new(pending));
                Ok(SaslStep::Challenge(challenge))
            }
            Stage::ScramFinal(pending) => scram_final(scram, token, &pending),
            Stage::Finished => Err(malformed("SASL token after the exchange ended")),
        }
    }
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`, checked against the user's stored
/// SCRAM credential so PLAIN and SCRAM share one password store.
fn plain(token: &[u8], credentials: &dyn CredentialLookup) -> Result<SaslStep, SaslError> {
    let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
    let [authzid, user, password] = parts[..] else {
        return Err(SaslError::Malformed(format!(
            "Invalid SASL/PLAIN response: expected 3 tokens, got {}",
            parts.len()
        )));
    };
    fn text(b: &[u8]) -> Result<&str, SaslError> {
        std::str::from_utf8(b).map_err(|_| malformed("Invalid SASL/PLAIN response: not UTF-8"))
    }
    let (authzid, user, password) = (text(authzid)?, text(user)?, text(password)?);
    if user.is_empty() {
        return Err(malformed("Authentication failed: username not specified"));
    }
    if password.is_empty() {
        return Err(malformed("Authentication failed: password not specified"));
    }
    if user.len() > MAX_USERNAME_BYTES {
        return Err(malformed("Authentication failed: username too long"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::Failed(
            "Authentication failed: Client requested an authorization id that is different from username"
                .into(),
        ));
    }
    let found = [Mechanism::Sha512, Mechanism::Sha256]
        .into_iter()
        .find_map(|m| credentials.credential(user, m).map(|c| (m, c)));
    // An unknown user costs the same work as a wrong password, so timing does not
    // reveal which users exist.
    let (mechanism, credential, known) = match found {
        Some((m, c)) => (m, c, true),
        None => (
            Mechanism::Sha512,
            fake_credential(Mechanism::Sha512, user),
            false,
        ),
    };
    if credential.verify_password(mechanism, password.as_bytes()) && known {
        Ok(SaslStep::Done {
            user: user.to_owned(),
            token: Vec::new(),
        })
    } else {
        Err(SaslError::Failed(PLAIN_FAILED.into()))
    }
}

/// The parts of an RFC 7628 client initial response.
#[derive(Debug, PartialEq, Eq)]
pub struct OauthBearerResponse<'a> {
    pub authzid: Option<&'a str>,
    pub token: &'a str,
    /// `key=value` extensions other than `auth` (KIP-342), in order.
    pub extensions: Vec<(&'a str, &'a str)>,
}

/// RFC 7628 §3.1: `n,[a=authzid],` `\x01auth=Bearer <token>\x01` `*(key=value\x01)`
/// `\x01`, as Kafka's OAuthBearerClientInitialResponse reads it.
pub fn parse_oauth_bearer(token: &[u8]) -> Result<OauthBearerResponse<'_>, SaslError> {
    let bad = |what: &str| {
        SaslError::Malformed(format!("Invalid OAUTHBEARER client first message: {what}"))
    };
    let message = std::str::from_utf8(token).map_err(|_| bad("not UTF-8"))?;
    let rest = message
        .strip_prefix("n,")
        .ok_or_else(|| bad("expected the GS2 header n,"))?;
    let (authzid, rest) = rest
        .split_once(',')
        .ok_or_else(|| bad("expected the GS2 header n,[a=authzid],"))?;
    let authzid = match authzid {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad("invalid authzid"))?,
        ),
    };
    let pairs = rest
        .strip_prefix('\x01')
        .and_then(|r| r.strip_suffix("\x01\x01"))
        .ok_or_else(|| bad("expected key=value pairs between \\x01 separators"))?;
    let mut auth = None;
    let mut extensions = Vec::new();
    for pair in pairs.split('\x01') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| bad("a pair without ="))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(bad("an invalid key"));
        }
        if key == "auth" {
            if auth.replace(value).is_some() {
                return Err(bad("auth appears twice"));
            }
        } else {
            extensions.push((key, value));
        }
    }
    let auth = auth.ok_or_else(|| bad("no auth value"))?;
    let (scheme, token) = auth
        .split_once(' ')
        .ok_or_else(|| bad("auth is not 'Bearer <token>'"))?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(bad("auth is not 'Bearer <token>'"));
    }
    Ok(OauthBearerResponse {
        authzid,
        token,
        extensions,
    })
}

/// OAUTHBEARER: the token must pass `credentials.jwt()`; an authzid must name the
/// token's principal. Extensions are accepted and ignored, as Kafka's default
/// validator does.
fn oauth_bearer(
    token: &[u8],
    credentials: &dyn CredentialLookup,
) -> Result<(String, i64), SaslError> {
    let response = parse_oauth_bearer(token)?;
    let validator = credentials.jwt().ok_or_else(|| {
        SaslError::Failed("Authentication failed: OAUTHBEARER is not configured".into())
    })?;
    let validated = validator
        .validate(response.token, credentials.now_s())
        .map_err(|e| SaslError::Failed(format!("Authentication failed: {e}")))?;
    if response
        .authzid
        .is_some_and(|a| a != validated.principal_name)
    {
        return Err(SaslError::Failed(
            "Authentication failed: the authorization id is not the token's principal".into(),
        ));
    }
    Ok((validated.principal_name, validated.expires_at_s))
}

/// A stand-in credential for a user that does not exist, stable per user within this
/// process so repeated probes see the same salt, as they would for a real user.
fn fake_credential(mechanism: Mechanism, user: &str) -> ScramCredential {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        // Without randomness the salt is merely predictable; it never authenticates.
        let _ = getrandom::fill(&mut s);
        s
    });
    let mut salt = mechanism.hmac(secret, user.as_bytes());
    salt.truncate(32);
    let key = mechanism.hmac(secret, &salt);
    ScramCredential {
        salt,
        stored_key: key.clone(),
        server_key: key,
        iterations: MIN_ITERATIONS,
    }
}

/// A fresh printable server nonce: 24 random bytes in base64 (no `,`).
fn random_nonce() -> Result<String, SaslError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|_| SaslError::Failed("Authentication failed: no random source".into()))?;
    Ok(base64_encode(&bytes))
}

/// RFC 5802 `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=` is invalid.
fn unescape_saslname(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find(['=', ',']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return None;
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Some(out)
}

/// RFC 5802 `printable`: 0x21..=0x7E except `,`.
fn is_printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn scram_first(
    mechanism: Mechanism,
    token: &[u8],
    server_nonce: Option<String>,
    credentials: &dyn CredentialLookup,
) -> Result<ScramPending, SaslError> {
    let bad = || malformed("Invalid SCRAM client first message");
    let message = std::str::from_utf8(token).map_err(|_| bad())?;
    // gs2-header = cbind-flag "," [authzid] ","
    let (flag, rest) = message.split_once(',').ok_or_else(bad)?;
    match flag {
        // `y`: the client could bind but believes we cannot; we offer no -PLUS
        // mechanism, so that is true and there is no downgrade.
        "n" | "y" => {}
        _ if flag.starts_with("p=") => {
            return Err(malformed(
                "Authentication failed: channel binding is not supported",
            ))
        }
        _ => return Err(bad()),
    }
    let (authzid, bare) = rest.split_once(',').ok_or_else(bad)?;
    let gs2_header = message[..message.len() - bare.len()].to_owned();
    let authzid = match authzid {
        "" => None,
        a => Some(
            a.strip_prefix("a=")
                .and_then(unescape_saslname)
                .ok_or_else(bad)?,
        ),
    };
    let mut attrs = bare.split(',');
    if bare.starts_with("m=") {
        return Err(malformed(
            "Invalid SCRAM client first message: mandatory extension",
        ));
    }
    let user = attrs
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .and_then(unescape_saslname)
        .ok_or_else(bad)?;
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| is_printable_nonce(n))
        .ok_or_else(bad)?;
    // Extensions: Kafka's only one is `tokenauth` (delegation tokens), which Strata
    // has not got; others are ignored as Kafka does.
    for ext in attrs {
        let (key, _) = ext.split_once('=').ok_or_else(bad)?;
        if key.is_empty() {
            return Err(bad());
        }
        if key == "tokenauth" {
            return Err(malformed(
                "Authentication failed: delegation tokens are not supported",
            ));
        }
    }
    if user.is_empty() || user.len() > MAX_USERNAME_BYTES {
        return Err(bad());
    }
    if authzid.is_some_and(|a| a != user) {
        return Err(SaslError::Failed(
            "Authentication failed: Client requested an authorization id that is different from username"
                .into(),
        ));
    }
    let server_nonce = match server_nonce {
        Some(n) => n,
        None => random_nonce()?,
    };
    let nonce = format!("{client_nonce}{server_nonce}");
    // Unknown users get a stand-in so the reply looks like a real user's; the
    // exchange then fails at client-final with the wrong-password error.
    let (credential, known) = match credentials.credential(&user, mechanism) {
        Some(c) => (c, true),
        None => (fake_credential(mechanism, &user), false),
    };
    let server_first = format!(
        "r={nonce},s={},i={}",
        base64_encode(&credential.salt),
        credential.iterations
    );
    Ok(ScramPending {
        user,
        gs2_header,
        client_first_bare: bare.to_owned(),
        server_first,
        nonce,
        credential,
        known,
    })
}

fn scram_final(
    mechanism: Mechanism,
    token: &[u8],
    pending: &ScramPending,
) -> Result<SaslStep, SaslError> {
    let bad = || malformed("Invalid SCRAM client final message");
    let message = std::str::from_utf8(token).map_err(|_| bad())?;
    // client-final-message = without-proof "," "p=" proof; the proof is last.
    let (without_proof, proof) = message.rsplit_once(",p=").ok_or_else(bad)?;
    let mut attrs = without_proof.split(',');
    let binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .and_then(|c| base64_decode(c.as_bytes()))
        .ok_or_else(bad)?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(bad)?;
    if attrs.any(|ext| !ext.contains('=')) {
        return Err(bad());
    }
    // Without channel binding, c= carries exactly the gs2 header of client-first.
    if binding != pending.gs2_header.as_bytes() {
        return Err(malformed("Invalid SCRAM channel binding"));
    }
    // Kafka checks only that the nonce ends with the server-first one, and librdkafka
    // (as Debian ships it) sends the client nonce twice: "c r" where r already starts
    // with c. The proof covers what the client sent, so this loosens nothing.
    if !nonce.ends_with(&pending.nonce) {
        return Err(malformed(
            "Invalid client nonce in the final client message",
        ));
    }
    let proof = base64_decode(proof.as_bytes()).ok_or_else(bad)?;
    let auth_message = format!(
        "{},{},{}",
        pending.client_first_bare, pending.server_first, without_proof
    );
    let credential = &pending.credential;
    let client_signature = mechanism.hmac(&credential.stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Err(scram_failed(mechanism));
    }
    let client_key: Vec<u8> = proof
        .iter()
        .zip(&client_signature)
        .map(|(p, s)| p ^ s)
        .collect();
    let matches = constant_time_eq(&mechanism.hash(&client_key), &credential.stored_key);
    if !(matches && pending.known) {
        return Err(scram_failed(mechanism));
    }
    let server_signature = mechanism.hmac(&credential.server_key, auth_message.as_bytes());
    Ok(SaslStep::Done {
        user: pending.user.clone(),
        token: format!("v={}", base64_encode(&server_signature)).into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[derive(Default)]
    struct Store(HashMap<(String, Mechanism), ScramCredential>);

    impl Store {
        fn with(mut self, user: &str, mechanism: Mechanism, password: &str) -> Self {
            let cred = ScramCredential::from_password(mechanism, password, MIN_ITERATIONS);
            self.0.insert((user.to_owned(), mechanism), cred);
            self
        }
    }

    impl CredentialLookup for Store {
        fn credential(&self, user: &str, mechanism: Mechanism) -> Option<ScramCredential> {
            self.0.get(&(user.to_owned(), mechanism)).cloned()
        }
    }

    /// A minimal SCRAM client: builds client-final from server-first and returns it
    /// with the server signature the client expects.
    fn client_final(
        mechanism: Mechanism,
        password: &str,
        gs2_header: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> Result<(String, String), Box<dyn std::error::Error>> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_at(2) {
                ("r=", v) => nonce = Some(v.to_owned()),
                ("s=", v) => salt = base64_decode(v.as_bytes()),
                ("i=", v) => iterations = Some(v.parse::<u32>()?),
                _ => return Err(format!("unexpected attribute {attr}").into()),
            }
        }
        let (nonce, salt, iterations) = (
            nonce.ok_or("no nonce")?,
            salt.ok_or("no salt")?,
            iterations.ok_or("no iterations")?,
        );
        let salted = mechanism.hi(password.as_bytes(), &salt, iterations);
        let client_key = mechanism.hmac(&salted, b"Client Key");
        let stored_key = mechanism.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", base64_encode(gs2_header.as_bytes()));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = mechanism.hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = mechanism.hmac(&salted, b"Server Key");
        let server_signature = mechanism.hmac(&server_key, auth.as_bytes());
        Ok((
            format!("{without_proof},p={}", base64_encode(&proof)),
            format!("v={}", base64_encode(&server_signature)),
        ))
    }

    fn challenge(step: SaslStep) -> Result<String, Box<dyn std::error::Error>> {
        match step {
            SaslStep::Challenge(c) => Ok(String::from_utf8(c)?),
            other => Err(format!("expected a challenge, got {other:?}").into()),
        }
    }

    /// Runs a whole SCRAM exchange as `user` with `password`.
    fn scram_login(
        mechanism: SaslMechanism,
        store: &Store,
        user: &str,
        password: &str,
    ) -> Result<Result<SaslStep, SaslError>, Box<dyn std::error::Error>> {
        let scram = match mechanism {
            SaslMechanism::ScramSha256 => Mechanism::Sha256,
            _ => Mechanism::Sha512,
        };
        let mut exchange = SaslExchange::new(mechanism);
        let bare = format!("n={user},r=clientnonce123");
        let server_first = challenge(exchange.step(format!("n,,{bare}").as_bytes(), store)?)?;
        assert!(server_first.starts_with("r=clientnonce123"));
        let (final_msg, _) = client_final(scram, password, "n,,", &bare, &server_first)?;
        Ok(exchange.step(final_msg.as_bytes(), store))
    }

    fn scram_fail_message(mechanism: &str) -> SaslError {
        SaslError::Failed(format!(
            "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
        ))
    }

    #[test]
    fn rfc7677_sha256_example() -> TestResult {
        let salt = base64_decode(b"W22ZaJ0SNY7soEsUEjb6gQ==").ok_or("salt")?;
        let salted = Mechanism::Sha256.hi(b"pencil", &salt, 4096);
        let cred = ScramCredential::from_salted_password(Mechanism::Sha256, &salted, &salt, 4096);
        let mut store = Store::default();
        store.0.insert(("user".into(), Mechanism::Sha256), cred);
        let mut exchange = SaslExchange::with_server_nonce(
            SaslMechanism::ScramSha256,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        let first = exchange.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &store)?;
        assert_eq!(
            challenge(first)?,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let done = exchange.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            &store,
        )?;
        assert_eq!(
            done,
            SaslStep::Done {
                user: "user".into(),
                token: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec(),
            }
        );
        // Nothing may follow Done.
        assert!(matches!(
            exchange.step(b"c=biws", &store),
            Err(SaslError::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn sha512_round_trip_with_escaped_name_and_authzid() -> TestResult {
        let store = Store::default().with("a,b=c", Mechanism::Sha512, "s3cret");
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha512);
        let gs2 = "n,a=a=2Cb=3Dc,";
        let bare = "n=a=2Cb=3Dc,r=fyko+d2lbbFgONRv9qkxdawL";
        let server_first = challenge(exchange.step(format!("{gs2}{bare}").as_bytes(), &store)?)?;
        let (final_msg, server_sig) =
            client_final(Mechanism::Sha512, "s3cret", gs2, bare, &server_first)?;
        assert_eq!(
            exchange.step(final_msg.as_bytes(), &store)?,
            SaslStep::Done {
                user: "a,b=c".into(),
                token: server_sig.into_bytes(),
            }
        );
        Ok(())
    }

    #[test]
    fn server_nonces_are_fresh_and_printable() -> TestResult {
        let store = Store::default().with("u", Mechanism::Sha256, "p");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
            let first = challenge(exchange.step(b"n,,n=u,r=abc", &store)?)?;
            let nonce = first
                .strip_prefix("r=abc")
                .and_then(|r| r.split(',').next())
                .ok_or("nonce")?
                .to_owned();
            assert!(nonce.len() >= 16 && is_printable_nonce(&nonce));
            seen.push(nonce);
        }
        assert_ne!(seen[0], seen[1]);
        Ok(())
    }

    #[test]
    fn wrong_password_fails() -> TestResult {
        let store = Store::default().with("alice", Mechanism::Sha256, "right");
        let result = scram_login(SaslMechanism::ScramSha256, &store, "alice", "wrong")?;
        assert_eq!(result, Err(scram_fail_message("SCRAM-SHA-256")));
        let ok = scram_login(SaslMechanism::ScramSha256, &store, "alice", "right")?;
        assert!(matches!(ok, Ok(SaslStep::Done { user, .. }) if user == "alice"));
        Ok(())
    }

    #[test]
    fn unknown_user_fails_like_a_wrong_password() -> TestResult {
        // alice has only a SHA-256 credential: SHA-512 for her is "unknown" too.
        let store = Store::default().with("alice", Mechanism::Sha256, "right");
        let result = scram_login(SaslMechanism::ScramSha512, &store, "alice", "right")?;
        assert_eq!(result, Err(scram_fail_message("SCRAM-SHA-512")));
        let result = scram_login(SaslMechanism::ScramSha256, &store, "nobody", "right")?;
        assert_eq!(result, Err(scram_fail_message("SCRAM-SHA-256")));
        // The stand-in salt is stable per user, as a real one would be.
        let salt_of = |user: &str| -> Result<String, Box<dyn std::error::Error>> {
            let mut ex = SaslExchange::new(SaslMechanism::ScramSha256);
            let first = challenge(ex.step(format!("n,,n={user},r=x").as_bytes(), &store)?)?;
            Ok(first.split(',').nth(1).ok_or("salt")?.to_owned())
        };
        assert_eq!(salt_of("nobody")?, salt_of("nobody")?);
        assert_ne!(salt_of("nobody")?, salt_of("someone")?);
        Ok(())
    }

    /// Starts an exchange for alice and returns it with the pieces for client-final.
    fn started(store: &Store) -> Result<(SaslExchange, String), Box<dyn std::error::Error>> {
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
        let first = challenge(exchange.step(b"n,,n=alice,r=cn", store)?)?;
        Ok((exchange, first))
    }

    #[test]
    fn bad_nonce_and_channel_binding_are_refused() -> TestResult {
        let store = Store::default().with("alice", Mechanism::Sha256, "pw");
        let (mut exchange, first) = started(&store)?;
        let (good, _) = client_final(Mechanism::Sha256, "pw", "n,,", "n=alice,r=cn", &first)?;
        let bad_nonce = good.replacen(",r=cn", ",r=cX", 1);
        assert!(matches!(
            exchange.step(bad_nonce.as_bytes(), &store),
            Err(SaslError::Malformed(m)) if m.contains("nonce")
        ));
        // The exchange is over after a failure, even with the right message now.
        assert!(matches!(
            exchange.step(good.as_bytes(), &store),
            Err(SaslError::Malformed(_))
        ));

        let (mut exchange, first) = started(&store)?;
        // c= claims a header the client did not send (`y,,` instead of `n,,`).
        let (lying, _) = client_final(Mechanism::Sha256, "pw", "y,,", "n=alice,r=cn", &first)?;
        assert!(matches!(
            exchange.step(lying.as_bytes(), &store),
            Err(SaslError::Malformed(m)) if m.contains("channel binding")
        ));

        // `p=`: the client wants channel binding, which is not offered.
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
        assert!(matches!(
            exchange.step(b"p=tls-unique,,n=alice,r=cn", &store),
            Err(SaslError::Malformed(_))
        ));
        // `y` is fine: the client could bind but sees that the server does not.
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
        let first = challenge(exchange.step(b"y,,n=alice,r=cn", &store)?)?;
        let (fin, _) = client_final(Mechanism::Sha256, "pw", "y,,", "n=alice,r=cn", &first)?;
        assert!(matches!(
            exchange.step(fin.as_bytes(), &store),
            Ok(SaslStep::Done { .. })
        ));
        Ok(())
    }

    #[test]
    fn authzid_must_match_username() -> TestResult {
        let store = Store::default().with("alice", Mechanism::Sha256, "pw");
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
        assert!(matches!(
            exchange.step(b"n,a=admin,n=alice,r=cn", &store),
            Err(SaslError::Failed(m)) if m.contains("authorization id")
        ));
        let mut plain = SaslExchange::new(SaslMechanism::Plain);
        assert!(matches!(
            plain.step(b"admin\0alice\0pw", &store),
            Err(SaslError::Failed(m)) if m.contains("authorization id")
        ));
        Ok(())
    }

    #[test]
    fn out_of_order_and_malformed_tokens() -> TestResult {
        let store = Store::default().with("alice", Mechanism::Sha256, "pw");
        let cases: &[&[u8]] = &[
            b"c=biws,r=cn,p=AAAA",             // client-final first
            b"",                               // empty
            b"n,,r=cn,n=alice",                // attributes swapped
            b"n,,n=alice",                     // no nonce
            b"n,,n=alice,r=",                  // empty nonce
            b"n,,n=al=ice,r=cn",               // bad saslname escape
            b"n,,n=,r=cn",                     // empty username
            b"n,,m=ext,n=alice,r=cn",          // mandatory extension
            b"n,,n=alice,r=cn,tokenauth=true", // delegation token
            b"x,,n=alice,r=cn",                // bad gs2 flag
            b"n,,n=alice,r=c\xffn",            // not UTF-8
        ];
        for case in cases {
            let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
            assert!(
                matches!(exchange.step(case, &store), Err(SaslError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        // client-first twice: the second is not a client-final.
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
        challenge(exchange.step(b"n,,n=alice,r=cn", &store)?)?;
        assert!(matches!(
            exchange.step(b"n,,n=alice,r=cn", &store),
            Err(SaslError::Malformed(_))
        ));
        // Unknown extensions are ignored.
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha256);
        challenge(exchange.step(b"n,,n=alice,r=cn,foo=bar", &store)?)?;
        Ok(())
    }

    #[test]
    fn oversized_inputs_are_malformed() {
        let store = Store::default();
        let long_user = "u".repeat(MAX_USERNAME_BYTES + 1);
        let mut exchange = SaslExchange::new(SaslMechanism::ScramSha512);
        let token = format!("n,,n={long_user},r=cn");
        assert!(matches!(
            exchange.step(token.as_bytes(), &store),
            Err(SaslError::Malformed(_))
        ));
        let mut plain = SaslExchange::new(SaslMechanism::Plain);
        let token = format!("\0{long_user}\0pw");
        assert!(matches!(
            plain.step(token.as_bytes(), &store),
            Err(SaslError::Malformed(_))
        ));
        let huge = vec![b'a'; MAX_TOKEN_BYTES + 1];
        let mut plain = SaslExchange::new(SaslMechanism::Plain);
        assert!(matches!(
            plain.step(&huge, &store),
            Err(SaslError::Malformed(_))
        ));
    }

    #[test]
    fn plain_checks_the_scram_credential() -> TestResult {
        let store = Store::default()
            .with("alice", Mechanism::Sha256, "pw256")
            .with("bob", Mechanism::Sha512, "pw512")
            .with("bob", Mechanism::Sha256, "old");
        let login = |token: &[u8]| SaslExchange::new(SaslMechanism::Plain).step(token, &store);
        assert_eq!(
            login(b"\0alice\0pw256")?,
            SaslStep::Done {
                user: "alice".into(),
                token: Vec::new()
            }
        );
        assert!(matches!(
            login(b"alice\0alice\0pw256"),
            Ok(SaslStep::Done { .. })
        ));
        // SHA-512 is preferred when both exist.
        assert!(matches!(login(b"\0bob\0pw512"), Ok(SaslStep::Done { .. })));
        let failed = Err(SaslError::Failed(
            "Authentication failed: Invalid username or password".into(),
        ));
        assert_eq!(login(b"\0bob\0old"), failed);
        assert_eq!(login(b"\0alice\0wrong"), failed);
        assert_eq!(login(b"\0nobody\0pw256"), failed);
        for bad in [
            &b"alice\0pw256"[..],
            b"\0alice\0pw\0extra",
            b"\0\0pw",
            b"\0alice\0",
            b"\0al\xffice\0pw",
        ] {
            assert!(
                matches!(login(bad), Err(SaslError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // One token only.
        let mut exchange = SaslExchange::new(SaslMechanism::Plain);
        exchange.step(b"\0alice\0pw256", &store)?;
        assert!(matches!(
            exchange.step(b"\0alice\0pw256", &store),
            Err(SaslError::Malformed(_))
        ));
        Ok(())
    }

    #[test]
    fn oauth_bearer_initial_response_is_parsed() -> TestResult {
        let r = parse_oauth_bearer(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01")?;
        assert_eq!(
            r,
            OauthBearerResponse {
                authzid: None,
                token: "abc.def.ghi",
                extensions: vec![]
            }
        );
        let r = parse_oauth_bearer(b"n,a=alice,\x01auth=bearer  tok\x01traceId=42\x01x=\x01\x01")?;
        assert_eq!(r.authzid, Some("alice"));
        assert_eq!(r.token, "tok");
        assert_eq!(r.extensions, vec![("traceId", "42"), ("x", "")]);
        for bad in [
            &b""[..],
            b"y,,\x01auth=Bearer t\x01\x01",
            b"p=tls-unique,,\x01auth=Bearer t\x01\x01",
            b"n,alice,\x01auth=Bearer t\x01\x01",
            b"n\x01auth=Bearer t\x01\x01",
            b"n,,\x01\x01",
            b"n,,\x01x=y\x01\x01",
            b"n,,\x01auth=Bearer t\x01",
            b"n,,auth=Bearer t\x01\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
            b"n,,\x01auth=Bearer t\x01novalue\x01\x01",
            b"n,,\x01auth=Bearer t\x01k-1=v\x01\x01",
            b"n,,\x01auth=Bearer \xff\x01\x01",
        ] {
            assert!(
                matches!(parse_oauth_bearer(bad), Err(SaslError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        Ok(())
    }

    #[test]
    fn oauth_bearer_exchange_checks_the_token() -> TestResult {
        use crate::security::oauth::{JwtSettings, JwtValidator};
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

        fn b64url(data: &[u8]) -> String {
            base64_encode(data)
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_")
        }
        struct Jwt(JwtValidator, i64);
        impl CredentialLookup for Jwt {
            fn credential(&self, _: &str, _: Mechanism) -> Option<ScramCredential> {
                None
            }
            fn jwt(&self) -> Option<&JwtValidator> {
                Some(&self.0)
            }
            fn now_s(&self) -> i64 {
                self.1
            }
        }
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)?;
        let point = pair.public_key().as_ref();
        let jwks = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k","x":"{}","y":"{}"}}]}}"#,
            b64url(&point[1..33]),
            b64url(&point[33..65])
        );
        let validator = JwtValidator::from_jwks(jwks.as_bytes(), JwtSettings::default())?;
        let input = format!(
            "{}.{}",
            b64url(br#"{"alg":"ES256","kid":"k"}"#),
            b64url(br#"{"sub":"alice","exp":1000}"#)
        );
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes())?;
        let jwt = format!("{input}.{}", b64url(sig.as_ref()));
        let response = |authzid: &str| format!("n,{authzid},\x01auth=Bearer {jwt}\x01\x01");
        let mut exchange = SaslExchange::new(SaslMechanism::OauthBearer);
        assert_eq!(
            exchange.step(response("").as_bytes(), &Jwt(validator.clone(), 900))?,
            SaslStep::Done {
                user: "alice".into(),
                token: Vec::new()
            }
        );
        assert_eq!(exchange.credential_expires_at_s(), Some(1000));
        // One token only.
        assert!(matches!(
            exchange.step(response("").as_bytes(), &Jwt(validator.clone(), 900)),
            Err(SaslError::Malformed(_))
        ));
        let login = |authzid: &str, lookup: &dyn CredentialLookup| {
            SaslExchange::new(SaslMechanism::OauthBearer).step(response(authzid).as_bytes(), lookup)
        };
        assert!(login("a=alice", &Jwt(validator.clone(), 900)).is_ok());
        assert!(matches!(
            login("a=bob", &Jwt(validator.clone(), 900)),
            Err(SaslError::Failed(_))
        ));
        assert_eq!(
            login("", &Jwt(validator.clone(), 2000)),
            Err(SaslError::Failed(
                "Authentication failed: token expired".into()
            ))
        );
        // Without a validator (or a clock) nothing is accepted.
        assert!(matches!(
            login("", &Store::default()),
            Err(SaslError::Failed(_))
        ));
        Ok(())
    }

    #[test]
    fn mechanism_names() {
        for m in SaslMechanism::ALL {
            assert_eq!(SaslMechanism::parse(m.name()), Some(m));
        }
        assert_eq!(SaslMechanism::parse("GSSAPI"), None);
    }
}
