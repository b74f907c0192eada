//! Listeners, SASL and authorization settings: Kafka's `listeners`,
//! `advertised.listeners`, `listener.security.protocol.map`, `sasl.enabled.mechanisms`,
//! `super.users` and `allow.everyone.if.no.acl.found`, checked into one shape.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{split_host_port, ConfigError};
use crate::security::acl::AuthorizerSettings;
use crate::security::jwks::JwksFile;
use crate::security::oauth::JwtSettings;
use crate::security::sasl::SaslMechanism;
use crate::security::SecurityProtocol;

/// One listener: where it binds, what it speaks, and what clients are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub protocol: SecurityProtocol,
    pub bind: SocketAddr,
    pub advertise_host: String,
    pub advertise_port: i32,
}

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
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub listeners: Option<String>,
    pub advertised_listeners: Option<String>,
    pub protocol_map: Option<String>,
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
    /// TLS certificate and key are configured.
    pub tls: bool,
    /// Client certificates are checked (mTLS principals).
    pub client_auth: bool,
}

fn invalid(key: &'static str, value: &str, hint: &'static str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        hint,
    }
}

/// `NAME:PROTOCOL,...` over the four standard names.
fn protocol_map(text: Option<&str>) -> Result<Vec<(String, SecurityProtocol)>, ConfigError> {
    let mut map: Vec<(String, SecurityProtocol)> = SecurityProtocol::ALL
        .into_iter()
        .map(|p| (p.name().to_owned(), p))
        .collect();
    let hint = "use NAME:PROTOCOL entries separated by commas, PROTOCOL one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, e.g. INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_SSL";
    for entry in text
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (name, protocol) = entry
            .split_once(':')
            .ok_or_else(|| invalid("listener_security_protocol_map", entry, hint))?;
        let protocol: SecurityProtocol = protocol
            .trim()
            .parse()
            .map_err(|()| invalid("listener_security_protocol_map", entry, hint))?;
        let name = name.trim().to_ascii_uppercase();
        map.retain(|(n, _)| *n != name);
        map.push((name, protocol));
    }
    Ok(map)
}

/// `NAME://HOST:PORT,...` as (name, host, port), names upper-cased.
fn endpoints(key: &'static str, text: &str) -> Result<Vec<(String, String, i32)>, ConfigError> {
    let hint = "use NAME://HOST:PORT entries separated by commas, e.g. SASL_SSL://0.0.0.0:9093,PLAINTEXT://127.0.0.1:9092";
    let mut out: Vec<(String, String, i32)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, address) = entry
            .split_once("://")
            .ok_or_else(|| invalid(key, entry, hint))?;
        let name = name.trim().to_ascii_uppercase();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let address = if address.starts_with(':') {
            format!("0.0.0.0{address}")
        } else {
            address.to_owned()
        };
        let (host, port) = split_bind(&address)
            .filter(|_| valid_name)
            .ok_or_else(|| invalid(key, entry, hint))?;
        if out.iter().any(|(n, _, _)| *n == name) {
            return Err(invalid(key, entry, "each listener name may appear once"));
        }
        out.push((name, host, port));
    }
    if out.is_empty() {
        return Err(invalid(key, text, hint));
    }
    Ok(out)
}

/// HOST:PORT where port 0 (any free port, for tests) is allowed.
fn split_bind(s: &str) -> Option<(String, i32)> {
    match s.rsplit_once(':') {
        Some((host, "0")) => split_host_port(&format!("{host}:1")).map(|(h, _)| (h, 0)),
        _ => split_host_port(s),
    }
}

fn wildcard(host: &str) -> bool {
    host == "0.0.0.0" || host == "::"
}

/// The listeners, from `listeners` or else from the `listen`/`advertise` shorthands
/// (one listener: SSL when TLS is configured, else PLAINTEXT).
pub fn listeners(input: &SecurityInput) -> Result<Vec<Listener>, ConfigError> {
    let map = protocol_map(input.protocol_map.as_deref())?;
    let binds = match &input.listeners {
        Some(text) => {
            if input.listen.is_some() || input.advertise.is_some() {
                return Err(invalid(
                    "listeners",
                    text,
                    "listen and advertise are shorthands for one listener: set listeners and advertised_listeners instead, not both",
                ));
            }
            endpoints("listeners", text)?
        }
        None => {
            let listen = input.listen.as_deref().unwrap_or("127.0.0.1:9092");
            let (host, port) = split_bind(listen).ok_or_else(|| {
                invalid(
                    "listen",
                    listen,
                    "use HOST:PORT with a numeric IP, e.g. 127.0.0.1:9092 or 0.0.0.0:9092",
                )
            })?;
            let name = if input.tls { "SSL" } else { "PLAINTEXT" };
            vec![(name.to_owned(), host, port)]
        }
    };
    let advertised = match (&input.advertised_listeners, &input.advertise) {
        (Some(text), _) => endpoints("advertised_listeners", text)?,
        (None, Some(one)) => {
            let (host, port) = split_host_port(one).ok_or_else(|| {
                invalid(
                    "advertise",
                    one,
                    "use HOST:PORT that clients can reach, e.g. broker1.example.com:9092",
                )
            })?;
            vec![(binds[0].0.clone(), host, port)]
        }
        (None, None) => Vec::new(),
    };
    if let Some((name, _, _)) = advertised
        .iter()
        .find(|(name, _, _)| !binds.iter().any(|(n, _, _)| n == name))
    {
        return Err(invalid(
            "advertised_listeners",
            name,
            "every advertised listener must be one of listeners (by name)",
        ));
    }
    let mut out = Vec::with_capacity(binds.len());
    for (name, host, port) in binds {
        let key = if input.listeners.is_some() {
            "listeners"
        } else {
            "listen"
        };
        let bind: SocketAddr = format!("{}:{port}", if host.contains(':') { format!("[{host}]") } else { host.clone() })
            .parse()
            .map_err(|_| {
                invalid(
                    key,
                    &format!("{name}://{host}:{port}"),
                    "bind to a numeric IP, e.g. 0.0.0.0:9092 or 127.0.0.1:9092 (advertise a host name with advertised_listeners)",
                )
            })?;
        let protocol = map
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                invalid(
                    "listener_security_protocol_map",
                    &name,
                    "a listener whose name is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL needs an entry NAME:PROTOCOL here",
                )
            })?;
        let (advertise_host, advertise_port) = advertised
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, h, p)| (h.clone(), *p))
            .unwrap_or((host, port));
        if wildcard(&advertise_host) {
            return Err(invalid(
                if input.listeners.is_some() { "advertised_listeners" } else { "advertise" },
                &format!("{name}://{advertise_host}:{advertise_port}"),
                "clients cannot connect to a wildcard address; advertise a reachable HOST:PORT for this listener",
            ));
        }
        if protocol.tls() && !input.tls {
            return Err(invalid(
                "listeners",
                &name,
                "an SSL or SASL_SSL listener needs tls_cert_file and tls_key_file",
            ));
        }
        out.push(Listener {
            name,
            protocol,
            bind,
            advertise_host,
            advertise_port,
        });
    }
    Ok(out)
}

/// SASL mechanisms, principals and the bootstrap admin.
pub fn security(
    input: &SecurityInput,
    listeners: &[Listener],
) -> Result<SecurityConfig, ConfigError> {
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
    let sasl_listener = listeners.iter().any(|l| l.protocol.sasl());
    if sasl_listener && sasl_mechanisms.is_empty() {
        return Err(invalid(
            "sasl_enabled_mechanisms",
            mechanisms_text,
            "a SASL listener needs at least one mechanism, e.g. SCRAM-SHA-512",
        ));
    }
    let oauth = oauth(input, &sasl_mechanisms)?;
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
    let admin =
        match (&input.admin_user, &input.admin_password) {
            (None, None) => None,
            (Some(user), Some(password)) if !user.is_empty() && !password.is_empty() => {
                if user.len() > 256 || user.contains(['\0', ',', '=']) {
                    return Err(invalid(
                        "admin_user",
                        user,
                        "use a user name of up to 256 characters without NUL, ',' or '='",
                    ));
                }
                super_users.push(format!("User:{user}"));
                Some(AdminUser {
                    user: user.clone(),
                    password: password.clone(),
                })
            }
            (Some(user), _) if user.is_empty() => return Err(invalid(
                "admin_user",
                "",
                "set STRATA_ADMIN_USER to the admin's name (or unset it and STRATA_ADMIN_PASSWORD)",
            )),
            (Some(_), _) => {
                return Err(invalid(
                    "admin_password",
                    "",
                    "STRATA_ADMIN_USER is set: set STRATA_ADMIN_PASSWORD to its password too",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "admin_user",
                    "",
                    "STRATA_ADMIN_PASSWORD is set: set STRATA_ADMIN_USER to the admin's name too",
                ))
            }
        };
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

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn input() -> SecurityInput {
        SecurityInput::default()
    }

    #[test]
    fn shorthand_is_one_plaintext_or_ssl_listener() -> TestResult {
        let l = listeners(&input())?;
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "PLAINTEXT");
        assert_eq!(l[0].bind, "127.0.0.1:9092".parse()?);
        assert_eq!(
            (l[0].advertise_host.as_str(), l[0].advertise_port),
            ("127.0.0.1", 9092)
        );
        let tls = SecurityInput {
            tls: true,
            listen: Some("0.0.0.0:9093".into()),
            advertise: Some("b1.example.com:9093".into()),
            ..input()
        };
        let l = listeners(&tls)?;
        assert_eq!(
            (l[0].name.as_str(), l[0].protocol),
            ("SSL", SecurityProtocol::Ssl)
        );
        assert_eq!(l[0].advertise_host, "b1.example.com");
        Ok(())
    }

    #[test]
    fn named_listeners_with_map_and_advertised() -> TestResult {
        let i = SecurityInput {
            listeners: Some("internal://0.0.0.0:9092,SASL_SSL://0.0.0.0:9094".into()),
            advertised_listeners: Some(
                "INTERNAL://10.0.0.1:9092,SASL_SSL://b1.example.com:9094".into(),
            ),
            protocol_map: Some("INTERNAL:SASL_PLAINTEXT".into()),
            tls: true,
            ..input()
        };
        let l = listeners(&i)?;
        assert_eq!(l[0].name, "INTERNAL");
        assert_eq!(l[0].protocol, SecurityProtocol::SaslPlaintext);
        assert_eq!(l[0].advertise_host, "10.0.0.1");
        assert_eq!(l[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(
            (l[1].advertise_host.as_str(), l[1].advertise_port),
            ("b1.example.com", 9094)
        );
        Ok(())
    }

    #[test]
    fn bad_listener_settings_say_what_to_fix() {
        let err = |i: SecurityInput| {
            listeners(&i)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err(SecurityInput {
            listeners: Some("INTERNAL://127.0.0.1:9092".into()),
            ..input()
        });
        assert!(
            e.starts_with("listener_security_protocol_map = \"INTERNAL\""),
            "{e}"
        );
        let e = err(SecurityInput {
            listeners: Some("SSL://127.0.0.1:9093".into()),
            ..input()
        });
        assert!(e.contains("needs tls_cert_file"), "{e}");
        let e = err(SecurityInput {
            listeners: Some("PLAINTEXT://0.0.0.0:9092".into()),
            ..input()
        });
        assert!(e.contains("wildcard"), "{e}");
        let e = err(SecurityInput {
            listeners: Some("PLAINTEXT://127.0.0.1:9092,PLAINTEXT://127.0.0.1:9093".into()),
            ..input()
        });
        assert!(e.contains("once"), "{e}");
        let e = err(SecurityInput {
            listeners: Some("PLAINTEXT://127.0.0.1:9092".into()),
            advertised_listeners: Some("SSL://b:9093".into()),
            ..input()
        });
        assert!(e.contains("must be one of listeners"), "{e}");
        let e = err(SecurityInput {
            listeners: Some("127.0.0.1:9092".into()),
            ..input()
        });
        assert!(e.starts_with("listeners = \"127.0.0.1:9092\""), "{e}");
        let e = err(SecurityInput {
            listeners: Some("PLAINTEXT://127.0.0.1:9092".into()),
            listen: Some("127.0.0.1:9092".into()),
            ..input()
        });
        assert!(e.contains("shorthands"), "{e}");
    }

    #[test]
    fn authorizer_defaults_follow_authentication() -> TestResult {
        let plain = listeners(&input())?;
        let s = security(&input(), &plain)?;
        assert!(s.authorizer.allow_if_no_acl);
        assert_eq!(
            s.sasl_mechanisms,
            [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512]
        );
        let i = SecurityInput {
            listeners: Some("SASL_PLAINTEXT://127.0.0.1:9092".into()),
            sasl_enabled_mechanisms: Some("plain, SCRAM-SHA-512".into()),
            super_users: Some("User:ops; User:CN=x,O=y".into()),
            admin_user: Some("admin".into()),
            admin_password: Some("secret".into()),
            ..input()
        };
        let s = security(&i, &listeners(&i)?)?;
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
        let plain = listeners(&input())?;
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
