//! SASL and authorization settings: Kafka's `sasl.enabled.mechanisms`, `super.users`,
//! `allow.everyone.if.no.acl.found` and `connections.max.reauth.ms`, the OAUTHBEARER
//! keys, and the bootstrap admin, checked into one shape.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{invalid, ConfigError, FileConfig, Listener, ListenerConfig};
use crate::cli::ServeArgs;
use crate::security::acl::AuthorizerSettings;
use crate::security::jwks::JwksFile;
use crate::security::oauth::JwtSettings;
use crate::security::sasl::SaslMechanism;
use crate::tls::ClientAuth;

/// The bootstrap admin: SCRAM credentials created at first start, and a super user.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminUser {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for AdminUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminUser")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct SecurityConfig {
    pub sasl_mechanisms: Vec<SaslMechanism>,
    pub authorizer: AuthorizerSettings,
    pub admin: Option<AdminUser>,
    /// KIP-368: a SASL session lasts this long, then the client must re-authenticate
    /// (`connections.max.reauth.ms`); None: sessions never expire.
    pub reauth: Option<Duration>,
    /// OAUTHBEARER's keys (`sasl_oauthbearer_jwks_file`), loaded; set whenever
    /// OAUTHBEARER is enabled.
    pub oauth: Option<Arc<JwksFile>>,
}

/// The raw values, flags and variables over the file.
#[derive(Debug, Default)]
pub struct SecurityInput {
    pub sasl_enabled_mechanisms: Option<String>,
    pub super_users: Option<String>,
    pub allow_everyone_if_no_acl_found: Option<bool>,
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    pub connections_max_reauth_ms: Option<u64>,
    pub sasl_oauthbearer_jwks_file: Option<PathBuf>,
    pub sasl_oauthbearer_expected_issuer: Option<String>,
    pub sasl_oauthbearer_expected_audience: Option<String>,
    pub sasl_oauthbearer_sub_claim_name: Option<String>,
    /// Client certificates are checked (mTLS principals).
    pub client_auth: bool,
}

impl SecurityConfig {
    /// Whether clients authenticate follows the listeners (SASL, or mTLS on a TLS one).
    pub fn load(
        args: &ServeArgs,
        file: &FileConfig,
        listener: &ListenerConfig,
    ) -> Result<Self, ConfigError> {
        security(
            &SecurityInput::new(args, file, listener),
            &listener.listeners,
        )
    }
}

impl SecurityInput {
    fn new(args: &ServeArgs, file: &FileConfig, listener: &ListenerConfig) -> Self {
        Self {
            sasl_enabled_mechanisms: args
                .sasl_enabled_mechanisms
                .clone()
                .or(file.sasl_enabled_mechanisms.clone()),
            super_users: args.super_users.clone().or(file.super_users.clone()),
            allow_everyone_if_no_acl_found: args
                .allow_everyone_if_no_acl_found
                .or(file.allow_everyone_if_no_acl_found),
            admin_user: args.admin_user.clone().or(file.admin_user.clone()),
            admin_password: args.admin_password.clone().or(file.admin_password.clone()),
            connections_max_reauth_ms: args
                .connections_max_reauth_ms
                .or(file.connections_max_reauth_ms),
            sasl_oauthbearer_jwks_file: args
                .sasl_oauthbearer_jwks_file
                .clone()
                .or(file.sasl_oauthbearer_jwks_file.clone()),
            sasl_oauthbearer_expected_issuer: args
                .sasl_oauthbearer_expected_issuer
                .clone()
                .or(file.sasl_oauthbearer_expected_issuer.clone()),
            sasl_oauthbearer_expected_audience: args
                .sasl_oauthbearer_expected_audience
                .clone()
                .or(file.sasl_oauthbearer_expected_audience.clone()),
            sasl_oauthbearer_sub_claim_name: args
                .sasl_oauthbearer_sub_claim_name
                .clone()
                .or(file.sasl_oauthbearer_sub_claim_name.clone()),
            client_auth: listener
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth != ClientAuth::None),
        }
    }
}

/// SASL mechanisms, principals and the bootstrap admin.
pub fn security(
    input: &SecurityInput,
    listeners: &[Listener],
) -> Result<SecurityConfig, ConfigError> {
    let sasl_listener = listeners.iter().any(|l| l.protocol.sasl());
    let sasl_mechanisms = sasl_mechanisms(input, sasl_listener)?;
    let oauth = oauth(input, &sasl_mechanisms)?;
    let mut super_users = super_users(input)?;
    let admin = admin(input)?;
    if let Some(admin) = &admin {
        super_users.push(format!("User:{}", admin.user));
    }
    let authenticated =
        sasl_listener || (input.client_auth && listeners.iter().any(|l| l.protocol.tls()));
    Ok(SecurityConfig {
        sasl_mechanisms,
        authorizer: AuthorizerSettings {
            super_users,
            allow_if_no_acl: input
                .allow_everyone_if_no_acl_found
                .unwrap_or(!authenticated),
        },
        admin,
        reauth: input
            .connections_max_reauth_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        oauth,
    })
}

/// `sasl_enabled_mechanisms`, each once; a SASL listener needs one at least.
fn sasl_mechanisms(
    input: &SecurityInput,
    sasl_listener: bool,
) -> Result<Vec<SaslMechanism>, ConfigError> {
    let mechanisms_text = input
        .sasl_enabled_mechanisms
        .as_deref()
        .unwrap_or("SCRAM-SHA-256,SCRAM-SHA-512");
    let mut sasl_mechanisms = Vec::new();
    for name in mechanisms_text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let mechanism = SaslMechanism::parse(&name.to_ascii_uppercase()).ok_or_else(|| {
            invalid(
                "sasl_enabled_mechanisms",
                name,
                "Strata serves PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER",
            )
        })?;
        if !sasl_mechanisms.contains(&mechanism) {
            sasl_mechanisms.push(mechanism);
        }
    }
    if sasl_listener && sasl_mechanisms.is_empty() {
        return Err(invalid(
            "sasl_enabled_mechanisms",
            mechanisms_text,
            "a SASL listener needs at least one mechanism, e.g. SCRAM-SHA-512",
        ));
    }
    Ok(sasl_mechanisms)
}

/// `super_users`: principals separated by semicolons.
fn super_users(input: &SecurityInput) -> Result<Vec<String>, ConfigError> {
    let mut super_users = Vec::new();
    for principal in input
        .super_users
        .as_deref()
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match principal.split_once(':') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                super_users.push(principal.to_owned())
            }
            _ => {
                return Err(invalid(
                    "super_users",
                    principal,
                    "use principals separated by semicolons, e.g. User:admin;User:ops",
                ))
            }
        }
    }
    Ok(super_users)
}

/// The bootstrap admin: `admin_user` and `admin_password` together, or neither.
fn admin(input: &SecurityInput) -> Result<Option<AdminUser>, ConfigError> {
    match (&input.admin_user, &input.admin_password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
            if user.len() > 256 || user.contains(['\0', ',', '=']) {
                return Err(invalid(
                    "admin_user",
                    user,
                    "use a user name of up to 256 characters without NUL, ',' or '='",
                ));
            }
            Ok(Some(AdminUser {
                user: user.clone(),
                password: password.clone(),
            }))
        }
        (Some(user), _) if user.is_empty() => Err(invalid(
            "admin_user",
            "",
            "set STRATA_ADMIN_USER to the admin's name (or unset it and STRATA_ADMIN_PASSWORD)",
        )),
        (Some(_), _) => Err(invalid(
            "admin_password",
            "",
            "STRATA_ADMIN_USER is set: set STRATA_ADMIN_PASSWORD to its password too",
        )),
        (None, Some(_)) => Err(invalid(
            "admin_user",
            "",
            "STRATA_ADMIN_PASSWORD is set: set STRATA_ADMIN_USER to the admin's name too",
        )),
    }
}

/// OAUTHBEARER's JWKS and claim settings, loaded when a JWKS file is set (which
/// OAUTHBEARER requires).
fn oauth(
    input: &SecurityInput,
    mechanisms: &[SaslMechanism],
) -> Result<Option<Arc<JwksFile>>, ConfigError> {
    let Some(path) = &input.sasl_oauthbearer_jwks_file else {
        if mechanisms.contains(&SaslMechanism::OauthBearer) {
            return Err(invalid(
                "sasl_oauthbearer_jwks_file",
                "",
                "OAUTHBEARER is in sasl_enabled_mechanisms: set sasl_oauthbearer_jwks_file (--sasl-oauthbearer-jwks-file) to the identity provider's JWKS file, or remove OAUTHBEARER",
            ));
        }
        return Ok(None);
    };
    let non_empty = |key: &'static str, value: &Option<String>| match value.as_deref() {
        Some("") => Err(invalid(key, "", "leave it unset, or set a non-empty value")),
        v => Ok(v.map(str::to_owned)),
    };
    let defaults = JwtSettings::default();
    let settings = JwtSettings {
        expected_issuer: non_empty(
            "sasl_oauthbearer_expected_issuer",
            &input.sasl_oauthbearer_expected_issuer,
        )?,
        expected_audience: non_empty(
            "sasl_oauthbearer_expected_audience",
            &input.sasl_oauthbearer_expected_audience,
        )?,
        sub_claim_name: non_empty(
            "sasl_oauthbearer_sub_claim_name",
            &input.sasl_oauthbearer_sub_claim_name,
        )?
        .unwrap_or(defaults.sub_claim_name),
        ..defaults
    };
    JwksFile::load(path.clone(), settings)
        .map(|file| Some(Arc::new(file)))
        .map_err(ConfigError::Jwks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::listener::{listeners, ListenerInput};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn input() -> SecurityInput {
        SecurityInput::default()
    }

    #[test]
    fn authorizer_defaults_follow_authentication() -> TestResult {
        let plain = listeners(&ListenerInput::default())?;
        let s = security(&input(), &plain)?;
        assert!(s.authorizer.allow_if_no_acl);
        assert_eq!(
            s.sasl_mechanisms,
            [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512]
        );
        let sasl = listeners(&ListenerInput {
            listeners: Some("SASL_PLAINTEXT://127.0.0.1:9092".into()),
            ..ListenerInput::default()
        })?;
        let i = SecurityInput {
            sasl_enabled_mechanisms: Some("plain, SCRAM-SHA-512".into()),
            super_users: Some("User:ops; User:CN=x,O=y".into()),
            admin_user: Some("admin".into()),
            admin_password: Some("secret".into()),
            ..input()
        };
        let s = security(&i, &sasl)?;
        assert!(!s.authorizer.allow_if_no_acl);
        assert_eq!(
            s.sasl_mechanisms,
            [SaslMechanism::Plain, SaslMechanism::ScramSha512]
        );
        assert_eq!(
            s.authorizer.super_users,
            ["User:ops", "User:CN=x,O=y", "User:admin"]
        );
        assert!(!format!("{:?}", s.admin).contains("secret"));
        let bad = SecurityInput {
            super_users: Some("admin".into()),
            ..input()
        };
        assert!(security(&bad, &plain).is_err());
        let half = SecurityInput {
            admin_user: Some("admin".into()),
            ..input()
        };
        let e = security(&half, &plain)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("STRATA_ADMIN_PASSWORD"), "{e}");
        let gssapi = SecurityInput {
            sasl_enabled_mechanisms: Some("GSSAPI".into()),
            ..input()
        };
        assert!(security(&gssapi, &plain).is_err());
        Ok(())
    }

    #[test]
    fn oauthbearer_needs_a_usable_jwks_file() -> TestResult {
        let plain = listeners(&ListenerInput::default())?;
        let oauth = |file: Option<PathBuf>| SecurityInput {
            sasl_enabled_mechanisms: Some("OAUTHBEARER,SCRAM-SHA-512".into()),
            sasl_oauthbearer_jwks_file: file,
            ..input()
        };
        let e = security(&oauth(None), &plain)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("sasl_oauthbearer_jwks_file"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("jwks.json");
        let e = security(&oauth(Some(path.clone())), &plain)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(&path, r#"{"keys":[]}"#)?;
        let e = security(&oauth(Some(path.clone())), &plain)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no usable signing key"), "{e}");
        std::fs::write(&path, r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#)?;
        let s = security(&oauth(Some(path)), &plain)?;
        assert_eq!(
            s.sasl_mechanisms,
            [SaslMechanism::OauthBearer, SaslMechanism::ScramSha512]
        );
        assert!(s.oauth.is_some());
        Ok(())
    }
}
